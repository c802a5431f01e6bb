//! Retention policy rules: how long each category is kept, and the range a
//! policy may be set to.

use crate::actions::Category;

/// How long events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Months(u32),
    Forever,
}

impl Keep {
    pub fn describe(self) -> String {
        match self {
            Keep::Forever => "forever".into(),
            Keep::Months(12) => "1 year".into(),
            Keep::Months(m) if m % 12 == 0 => format!("{} years", m / 12),
            Keep::Months(1) => "1 month".into(),
            Keep::Months(m) => format!("{m} months"),
        }
    }
}

/// The default and the allowed range of a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRange {
    pub category: Category,
    pub default: Keep,
    pub min_months: u32,
    /// `None`: may be kept forever.
    pub max_months: Option<u32>,
}

const fn years(n: u32) -> u32 {
    n * 12
}

pub const POLICIES: [PolicyRange; 6] = [
    PolicyRange {
        category: Category::RecordChanges,
        default: Keep::Months(years(7)),
        min_months: years(1),
        max_months: Some(years(10)),
    },
    PolicyRange {
        category: Category::Login,
        default: Keep::Months(years(2)),
        min_months: years(1),
        max_months: Some(years(7)),
    },
    PolicyRange {
        category: Category::Api,
        default: Keep::Months(years(1)),
        min_months: 6,
        max_months: Some(years(5)),
    },
    PolicyRange {
        category: Category::Export,
        default: Keep::Months(years(7)),
        min_months: years(3),
        max_months: Some(years(10)),
    },
    PolicyRange {
        category: Category::Config,
        default: Keep::Months(years(10)),
        min_months: years(5),
        max_months: None,
    },
    PolicyRange {
        category: Category::Bulk,
        default: Keep::Months(years(5)),
        min_months: years(2),
        max_months: Some(years(10)),
    },
];

pub fn range_of(category: Category) -> &'static PolicyRange {
    POLICIES
        .iter()
        .find(|p| p.category == category)
        .expect("every category has a policy")
}

impl PolicyRange {
    pub fn allowed(&self) -> String {
        let min = Keep::Months(self.min_months).describe();
        match self.max_months {
            Some(max) => format!("{min} to {}", Keep::Months(max).describe()),
            None => format!("{min} or more, or 'infinity'"),
        }
    }

    /// Checks a requested retention against the category's range.
    pub fn check(&self, keep: Keep) -> Result<(), String> {
        let name = self.category.name();
        match (keep, self.max_months) {
            (Keep::Forever, None) => Ok(()),
            (Keep::Forever, Some(_)) => Err(format!(
                "{name} events cannot be kept forever (allowed: {})",
                self.allowed()
            )),
            (Keep::Months(m), max) if m < self.min_months || max.is_some_and(|max| m > max) => {
                Err(format!(
                    "retention of {} for {name} events is out of range (allowed: {})",
                    keep.describe(),
                    self.allowed()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Whole months in an interval given as (months, days, microseconds), the way
/// PostgreSQL stores one; a day counts as 1/30 month. Errors if it is not a
/// positive whole number of months.
pub fn interval_months(months: i32, days: i32, micros: i64) -> Result<u32, String> {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    if micros % MICROS_PER_DAY != 0 || days % 30 != 0 {
        return Err(
            "retention must be whole months or years, such as '18 months' or '7 years'".into(),
        );
    }
    let total = months as i64 + (days / 30) as i64 + micros / MICROS_PER_DAY / 30;
    u32::try_from(total)
        .ok()
        .filter(|m| *m > 0)
        .ok_or_else(|| "retention must be positive".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_inside_their_ranges() {
        for p in POLICIES {
            assert!(p.check(p.default).is_ok(), "{:?}", p.category);
        }
        assert_eq!(range_of(Category::Config).default, Keep::Months(120));
    }

    #[test]
    fn ranges_are_enforced_with_the_allowed_range_in_the_message() {
        let api = range_of(Category::Api);
        assert!(api.check(Keep::Months(6)).is_ok());
        assert!(api.check(Keep::Months(60)).is_ok());
        let err = api.check(Keep::Months(5)).unwrap_err();
        assert!(err.contains("allowed: 6 months to 5 years"), "{err}");
        assert!(api.check(Keep::Months(61)).is_err());
        assert!(api
            .check(Keep::Forever)
            .unwrap_err()
            .contains("cannot be kept forever"));
        let config = range_of(Category::Config);
        assert!(config.check(Keep::Forever).is_ok());
        assert!(config.check(Keep::Months(600)).is_ok());
        assert!(config
            .check(Keep::Months(59))
            .unwrap_err()
            .contains("5 years or more, or 'infinity'"));
        assert!(range_of(Category::Login)
            .check(Keep::Months(years(8)))
            .is_err());
        assert!(range_of(Category::RecordChanges)
            .check(Keep::Months(years(11)))
            .is_err());
        assert!(range_of(Category::Export)
            .check(Keep::Months(years(2)))
            .is_err());
        assert!(range_of(Category::Bulk)
            .check(Keep::Months(years(2)))
            .is_ok());
    }

    #[test]
    fn intervals_convert_to_whole_months() {
        assert_eq!(interval_months(84, 0, 0), Ok(84));
        assert_eq!(interval_months(0, 60, 0), Ok(2));
        assert_eq!(interval_months(1, 0, 30 * 86_400_000_000), Ok(2));
        assert!(interval_months(0, 45, 0).is_err());
        assert!(interval_months(0, 0, 3_600_000_000).is_err());
        assert!(interval_months(0, 0, 0).is_err());
        assert!(interval_months(-12, 0, 0).is_err());
    }

    #[test]
    fn describe() {
        assert_eq!(Keep::Months(24).describe(), "2 years");
        assert_eq!(Keep::Months(18).describe(), "18 months");
        assert_eq!(Keep::Months(12).describe(), "1 year");
        assert_eq!(Keep::Months(1).describe(), "1 month");
        assert_eq!(Keep::Forever.describe(), "forever");
    }
}
