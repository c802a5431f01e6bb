//! Text form of a record's primary key, as stored in `entity_id`.
//!
//! A single-column key is the column's text value as is (`42`, `opp_7f3a`).
//! A composite key is a JSON array of the columns' text values in key order
//! (`["acme","42"]`), which is unambiguous whatever the values contain.
//!
//! Records are looked up through a 32-bit hash of that text (FNV-1a over its
//! UTF-8 bytes, as a signed integer): a compact index key whose matches are
//! then checked against the text itself.

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

/// FNV-1a (32 bit) of the key's bytes: fixed forever, as stored indexes depend on it.
pub fn key_hash(key: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_is_plain_text() {
        assert_eq!(format_key(&[Some("opp_1")]), "opp_1");
        assert_eq!(format_key(&[Some("a,b")]), "a,b");
    }

    #[test]
    fn key_hash_is_fnv1a() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(key_hash("") as u32, 0x811c_9dc5);
        assert_eq!(key_hash("a") as u32, 0xe40c_292c);
        assert_eq!(key_hash("foobar") as u32, 0xbf9c_f968);
        assert_ne!(key_hash("42"), key_hash("43"));
    }

    #[test]
    fn composite_key_is_an_unambiguous_json_array() {
        let id = format_key(&[Some("acme, inc"), Some("4\"2"), None]);
        assert_eq!(id, r#"["acme, inc","4\"2",null]"#);
        let parsed: Vec<Option<String>> = serde_json::from_str(&id).unwrap();
        assert_eq!(
            parsed,
            vec![Some("acme, inc".to_owned()), Some("4\"2".to_owned()), None]
        );
    }
}
