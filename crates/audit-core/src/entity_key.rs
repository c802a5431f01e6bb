//! Text form of a record's primary key, as stored in `entity_id`.
//!
//! A single-column key is the column's text value as is (`42`, `opp_7f3a`).
//! A composite key is a JSON array of the columns' text values in key order
//! (`["acme","42"]`), which is unambiguous whatever the values contain.

use crate::canonical::push_json_string;

pub fn format_key(values: &[Option<&str>]) -> String {
    match values {
        [single] => single.unwrap_or("").to_owned(),
        many => {
            let mut out = String::from("[");
            for (i, v) in many.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match v {
                    Some(s) => push_json_string(&mut out, s),
                    None => out.push_str("null"),
                }
            }
            out.push(']');
            out
        }
    }
}

/// Splits an `entity_id` back into key column values.
pub fn parse_key(entity_id: &str, key_columns: usize) -> Result<Vec<Option<String>>, String> {
    if key_columns <= 1 {
        return Ok(vec![Some(entity_id.to_owned())]);
    }
    let parsed: Vec<Option<String>> = serde_json::from_str(entity_id).map_err(|e| {
        format!("composite entity id {entity_id:?} is not a JSON array of strings: {e}")
    })?;
    if parsed.len() != key_columns {
        return Err(format!(
            "composite entity id {entity_id:?} has {} values, the key has {key_columns} columns",
            parsed.len()
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_is_plain_text() {
        assert_eq!(format_key(&[Some("opp_1")]), "opp_1");
        assert_eq!(parse_key("a,b", 1).unwrap(), vec![Some("a,b".to_owned())]);
    }

    #[test]
    fn composite_key_round_trips() {
        let id = format_key(&[Some("acme, inc"), Some("4\"2")]);
        assert_eq!(id, r#"["acme, inc","4\"2"]"#);
        assert_eq!(
            parse_key(&id, 2).unwrap(),
            vec![Some("acme, inc".to_owned()), Some("4\"2".to_owned())]
        );
    }

    #[test]
    fn composite_key_arity_is_checked() {
        assert!(parse_key(r#"["a"]"#, 2)
            .unwrap_err()
            .contains("has 1 values"));
        assert!(parse_key("a", 2).is_err());
    }
}
