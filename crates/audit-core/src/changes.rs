//! Field-level change sets.
//!
//! A change set maps each field name to `{"old": v, "new": v}` (UPDATE),
//! `{"new": v}` (INSERT), `{"old": v}` (DELETE) or `{"masked": true}` for a
//! masked column. Values are the PostgreSQL text form of the column value, or
//! JSON `null` for SQL NULL.
//!
//! The same change set is stored as `jsonb` (built member by member, without
//! going through JSON text) and hashed as canonical JSON (see
//! [`crate::canonical`]); both come from [`Changes`], so they always agree.

use std::borrow::Cow;

use crate::canonical::push_json_string;

/// A value as recorded: its text form, or None for SQL NULL. Capture owns the
/// text it printed; a decoded chunk borrows it.
pub type Value<'a> = Option<Cow<'a, str>>;

/// What a captured field records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange<'a> {
    Inserted(Value<'a>),
    Deleted(Value<'a>),
    Updated { old: Value<'a>, new: Value<'a> },
    Masked,
}

/// A member of a field's change object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member<'a> {
    Text(&'a str),
    Null,
    True,
}

impl FieldChange<'_> {
    /// The members of the change object, keys in canonical (byte) order.
    pub fn members(&self) -> impl Iterator<Item = (&'static str, Member<'_>)> {
        fn value<'v>(v: &'v Value<'_>) -> Member<'v> {
            v.as_deref().map_or(Member::Null, Member::Text)
        }
        let (first, second) = match self {
            FieldChange::Inserted(v) => (("new", value(v)), None),
            FieldChange::Deleted(v) => (("old", value(v)), None),
            FieldChange::Updated { old, new } => (("new", value(new)), Some(("old", value(old)))),
            FieldChange::Masked => (("masked", Member::True), None),
        };
        std::iter::once(first).chain(second)
    }
}

/// Accumulates the changed fields of one row, in any order.
#[derive(Debug, Default)]
pub struct ChangeSet<'a> {
    fields: Vec<(&'a str, FieldChange<'a>)>,
}

impl<'a> ChangeSet<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, field: &'a str, change: FieldChange<'a>) {
        self.fields.push((field, change));
    }

    /// The changed fields sorted by name, or `None` when no field changed.
    pub fn finish(mut self) -> Option<Changes<'a>> {
        if self.fields.is_empty() {
            return None;
        }
        // Capture pushes in name order already; sorting is for other callers.
        if !self
            .fields
            .is_sorted_by(|a, b| a.0.as_bytes() <= b.0.as_bytes())
        {
            self.fields
                .sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        }
        Some(Changes {
            fields: self.fields,
        })
    }
}

/// A finished, non-empty change set, fields sorted by their UTF-8 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<'a> {
    fields: Vec<(&'a str, FieldChange<'a>)>,
}

impl<'a> Changes<'a> {
    /// Fields already sorted by name (as a decoded chunk holds them).
    pub fn from_sorted(fields: Vec<(&'a str, FieldChange<'a>)>) -> Option<Self> {
        (!fields.is_empty()).then_some(Changes { fields })
    }

    pub fn fields(&self) -> &[(&'a str, FieldChange<'a>)] {
        &self.fields
    }

    /// Writes the canonical JSON text, as hashed, into `out` (emptied first),
    /// so that a caller hashing event after event reuses one buffer.
    pub fn write_canonical_json(&self, out: &mut String) {
        out.clear();
        out.push('{');
        for (i, (name, change)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(out, name);
            out.push_str(":{");
            for (j, (key, member)) in change.members().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                // The member keys are plain words: nothing to escape.
                out.push('"');
                out.push_str(key);
                out.push_str("\":");
                match member {
                    Member::Text(s) => push_json_string(out, s),
                    Member::Null => out.push_str("null"),
                    Member::True => out.push_str("true"),
                }
            }
            out.push('}');
        }
        out.push('}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::canonical_json_text;

    fn text(s: &str) -> Value<'static> {
        Some(Cow::Owned(s.to_owned()))
    }

    fn canonical_json(changes: &Changes<'_>) -> String {
        let mut out = String::new();
        changes.write_canonical_json(&mut out);
        out
    }

    #[test]
    fn empty_change_set_is_none() {
        assert_eq!(ChangeSet::new().finish(), None);
    }

    #[test]
    fn update_records_old_and_new_sorted_by_field() {
        let mut c = ChangeSet::new();
        c.push(
            "stage",
            FieldChange::Updated {
                old: text("Qualification"),
                new: text("Proposal"),
            },
        );
        c.push(
            "amount",
            FieldChange::Updated {
                old: None,
                new: text("1200.00"),
            },
        );
        assert_eq!(
            canonical_json(&c.finish().unwrap()),
            r#"{"amount":{"new":"1200.00","old":null},"stage":{"new":"Proposal","old":"Qualification"}}"#
        );
    }

    #[test]
    fn insert_delete_and_masked_shapes() {
        let mut c = ChangeSet::new();
        c.push("b", FieldChange::Inserted(text("x")));
        c.push("a", FieldChange::Deleted(None));
        c.push("ssn", FieldChange::Masked);
        let changes = c.finish().unwrap();
        assert_eq!(
            canonical_json(&changes),
            r#"{"a":{"old":null},"b":{"new":"x"},"ssn":{"masked":true}}"#
        );
        let names: Vec<&str> = changes.fields().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["a", "b", "ssn"]);
        let masked: Vec<_> = changes.fields()[2].1.members().collect();
        assert_eq!(masked, [("masked", Member::True)]);
    }

    #[test]
    fn members_are_in_canonical_key_order() {
        let update = FieldChange::Updated {
            old: text("o"),
            new: None,
        };
        let members: Vec<_> = update.members().collect();
        assert_eq!(members, [("new", Member::Null), ("old", Member::Text("o"))]);
    }

    #[test]
    fn output_is_canonical_json() {
        let mut c = ChangeSet::new();
        c.push(
            "notes",
            FieldChange::Updated {
                old: text("line1\nline2 \"q\""),
                new: text("\u{1}"),
            },
        );
        c.push("Zeta", FieldChange::Inserted(text("é")));
        let changes = c.finish().unwrap();
        let json = canonical_json(&changes);
        assert_eq!(canonical_json_text(&json).unwrap(), json);
        // A reused buffer holds this change set's text alone.
        let mut reused = String::from("{\"earlier\":{\"new\":\"event\"}}");
        changes.write_canonical_json(&mut reused);
        assert_eq!(reused, json);
    }
}
