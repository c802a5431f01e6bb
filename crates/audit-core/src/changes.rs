//! Field-level change sets, written directly as canonical JSON.
//!
//! A change set maps each field name to `{"old": v, "new": v}` (UPDATE),
//! `{"new": v}` (INSERT), `{"old": v}` (DELETE) or `{"masked": true}` for a
//! masked column. Values are the PostgreSQL text form of the column value, or
//! JSON `null` for SQL NULL. The output is canonical (see [`crate::canonical`]),
//! so it hashes identically before storage and after a round trip through `jsonb`.

use crate::canonical::push_json_string;

/// What a captured field records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldChange<'a> {
    Inserted(Option<&'a str>),
    Deleted(Option<&'a str>),
    Updated {
        old: Option<&'a str>,
        new: Option<&'a str>,
    },
    Masked,
}

/// Accumulates the changed fields of one row. Fields may be pushed in any
/// order; [`ChangeSet::finish`] sorts them canonically.
#[derive(Debug, Default)]
pub struct ChangeSet {
    /// (field name, canonical JSON of its change object)
    fields: Vec<(String, String)>,
}

fn push_value(out: &mut String, v: Option<&str>) {
    match v {
        Some(s) => push_json_string(out, s),
        None => out.push_str("null"),
    }
}

impl ChangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, field: &str, change: FieldChange<'_>) {
        let mut obj = String::new();
        match change {
            FieldChange::Inserted(v) => {
                obj.push_str("{\"new\":");
                push_value(&mut obj, v);
            }
            FieldChange::Deleted(v) => {
                obj.push_str("{\"old\":");
                push_value(&mut obj, v);
            }
            FieldChange::Updated { old, new } => {
                obj.push_str("{\"new\":");
                push_value(&mut obj, new);
                obj.push_str(",\"old\":");
                push_value(&mut obj, old);
            }
            FieldChange::Masked => obj.push_str("{\"masked\":true"),
        }
        obj.push('}');
        self.fields.push((field.to_owned(), obj));
    }

    /// The canonical JSON object, or `None` when no field changed.
    pub fn finish(mut self) -> Option<String> {
        if self.fields.is_empty() {
            return None;
        }
        self.fields
            .sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let len = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + 2;
        let mut out = String::with_capacity(len);
        out.push('{');
        for (i, (name, obj)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, name);
            out.push(':');
            out.push_str(obj);
        }
        out.push('}');
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::canonical_json_text;

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
                old: Some("Qualification"),
                new: Some("Proposal"),
            },
        );
        c.push(
            "amount",
            FieldChange::Updated {
                old: None,
                new: Some("1200.00"),
            },
        );
        assert_eq!(
            c.finish().unwrap(),
            r#"{"amount":{"new":"1200.00","old":null},"stage":{"new":"Proposal","old":"Qualification"}}"#
        );
    }

    #[test]
    fn insert_delete_and_masked_shapes() {
        let mut c = ChangeSet::new();
        c.push("b", FieldChange::Inserted(Some("x")));
        c.push("a", FieldChange::Deleted(None));
        c.push("ssn", FieldChange::Masked);
        assert_eq!(
            c.finish().unwrap(),
            r#"{"a":{"old":null},"b":{"new":"x"},"ssn":{"masked":true}}"#
        );
    }

    #[test]
    fn output_is_canonical_json() {
        let mut c = ChangeSet::new();
        c.push(
            "notes",
            FieldChange::Updated {
                old: Some("line1\nline2 \"q\""),
                new: Some("\u{1}"),
            },
        );
        c.push("Zeta", FieldChange::Inserted(Some("é")));
        let text = c.finish().unwrap();
        assert_eq!(canonical_json_text(&text).unwrap(), text);
    }
}
