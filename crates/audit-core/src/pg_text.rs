//! PostgreSQL's text of integers, dates and timestamps in the canonical style
//! (ISO dates, timestamps in UTC), written without calling the type's output
//! function: capture prints these on nearly every row, and `timestamptz_out`
//! alone took a tenth of a single-row INSERT's capture time. Years outside
//! 1 to 9999 are left to PostgreSQL (`push` returns false).

/// A type whose text this module writes, with the Datum's value as `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Native {
    Int2,
    Int4,
    Int8,
    /// Days since 2000-01-01.
    Date,
    /// Microseconds since 2000-01-01 00:00:00.
    Timestamp,
    /// Microseconds since 2000-01-01 00:00:00 UTC, printed in UTC.
    TimestampTz,
}

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 0000-03-01 to 2000-01-01 in the proleptic Gregorian calendar.
const DAYS_TO_PG_EPOCH: i64 = 730_425;

impl Native {
    /// Appends the text of `value`, or returns false (and appends nothing)
    /// when PostgreSQL must print it.
    pub fn push(self, out: &mut Vec<u8>, value: i64) -> bool {
        match self {
            Native::Int2 => push_int(out, i64::from(value as i16)),
            Native::Int4 => push_int(out, i64::from(value as i32)),
            Native::Int8 => push_int(out, value),
            Native::Date => match value as i32 {
                i32::MIN => out.extend_from_slice(b"-infinity"),
                i32::MAX => out.extend_from_slice(b"infinity"),
                days => return push_date(out, i64::from(days)),
            },
            Native::Timestamp | Native::TimestampTz => match value {
                i64::MIN => out.extend_from_slice(b"-infinity"),
                i64::MAX => out.extend_from_slice(b"infinity"),
                micros => {
                    if !push_date(out, micros.div_euclid(USECS_PER_DAY)) {
                        return false;
                    }
                    push_time(out, micros.rem_euclid(USECS_PER_DAY));
                    if self == Native::TimestampTz {
                        out.extend_from_slice(b"+00");
                    }
                }
            },
        }
        true
    }
}

fn push_int(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `value` zero-padded to `width` digits (`value` < 10^width).
fn push_padded(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for digit in out[start..].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `YYYY-MM-DD` of a day counted from 2000-01-01; false outside years 1 to 9999.
fn push_date(out: &mut Vec<u8>, days: i64) -> bool {
    let (year, month, day) = civil_from_days(days);
    if !(1..=9999).contains(&year) {
        return false;
    }
    push_padded(out, year as u32, 4);
    out.push(b'-');
    push_padded(out, month, 2);
    out.push(b'-');
    push_padded(out, day, 2);
    true
}

/// ` HH:MM:SS` and, when not zero, the fraction without trailing zeros.
fn push_time(out: &mut Vec<u8>, micros: i64) {
    let seconds = (micros / USECS_PER_SEC) as u32;
    out.push(b' ');
    push_padded(out, seconds / 3600, 2);
    out.push(b':');
    push_padded(out, seconds / 60 % 60, 2);
    out.push(b':');
    push_padded(out, seconds % 60, 2);
    let mut fraction = (micros % USECS_PER_SEC) as u32;
    if fraction != 0 {
        let mut width = 6;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            width -= 1;
        }
        out.push(b'.');
        push_padded(out, fraction, width);
    }
}

/// Year, month and day of a day counted from 2000-01-01 (proleptic Gregorian,
/// as PostgreSQL's Julian-day arithmetic), after H. Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + DAYS_TO_PG_EPOCH;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: Native, value: i64) -> Option<String> {
        let mut out = Vec::new();
        kind.push(&mut out, value)
            .then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn integers() {
        assert_eq!(text(Native::Int8, 0).unwrap(), "0");
        assert_eq!(text(Native::Int8, -42).unwrap(), "-42");
        assert_eq!(
            text(Native::Int8, i64::MIN).unwrap(),
            "-9223372036854775808"
        );
        assert_eq!(text(Native::Int8, i64::MAX).unwrap(), "9223372036854775807");
        assert_eq!(
            text(Native::Int4, i64::from(i32::MIN)).unwrap(),
            "-2147483648"
        );
        // Only the type's own bytes of the Datum count.
        assert_eq!(text(Native::Int2, 0x1_0000 - 1).unwrap(), "-1");
        assert_eq!(text(Native::Int2, i64::from(i16::MAX)).unwrap(), "32767");
    }

    #[test]
    fn dates() {
        assert_eq!(text(Native::Date, 0).unwrap(), "2000-01-01");
        assert_eq!(text(Native::Date, -1).unwrap(), "1999-12-31");
        assert_eq!(text(Native::Date, 59).unwrap(), "2000-02-29");
        assert_eq!(text(Native::Date, 9_470).unwrap(), "2025-12-05");
        assert_eq!(text(Native::Date, -730_119).unwrap(), "0001-01-01");
        assert_eq!(text(Native::Date, 2_921_939).unwrap(), "9999-12-31");
        assert_eq!(
            text(Native::Date, -730_120),
            None,
            "1 BC is PostgreSQL's to print"
        );
        assert_eq!(text(Native::Date, 2_921_940), None, "year 10000 too");
        assert_eq!(text(Native::Date, i64::from(i32::MAX)).unwrap(), "infinity");
        assert_eq!(
            text(Native::Date, i64::from(i32::MIN)).unwrap(),
            "-infinity"
        );
    }

    #[test]
    fn timestamps() {
        let at = |days: i64, micros: i64| days * USECS_PER_DAY + micros;
        assert_eq!(
            text(Native::TimestampTz, 0).unwrap(),
            "2000-01-01 00:00:00+00"
        );
        assert_eq!(text(Native::Timestamp, 0).unwrap(), "2000-01-01 00:00:00");
        assert_eq!(
            text(Native::TimestampTz, at(9_470, 45_296_789_000)).unwrap(),
            "2025-12-05 12:34:56.789+00"
        );
        assert_eq!(
            text(Native::Timestamp, at(0, 1)).unwrap(),
            "2000-01-01 00:00:00.000001"
        );
        assert_eq!(
            text(Native::Timestamp, -1).unwrap(),
            "1999-12-31 23:59:59.999999"
        );
        assert_eq!(
            text(Native::Timestamp, at(-730_119, 0)).unwrap(),
            "0001-01-01 00:00:00"
        );
        assert_eq!(text(Native::Timestamp, at(-730_119, 0) - 1), None);
        assert_eq!(text(Native::TimestampTz, i64::MAX).unwrap(), "infinity");
        assert_eq!(text(Native::TimestampTz, i64::MIN).unwrap(), "-infinity");
    }

    #[test]
    fn days_round_trip_through_the_calendar() {
        // Consecutive days give consecutive dates across four centuries.
        let mut previous = civil_from_days(-146_097 - 1);
        for days in -146_097..146_097 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let next_day = (y, m, d) == (py, pm, pd + 1);
            let next_month = (y, m, d) == (py, pm + 1, 1);
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} then {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }
}
