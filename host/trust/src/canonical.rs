//! Canonical JSON: the one byte form of a JSON value that cmbuild signs and hashes.
//!
//! Rules (the same as the crate documentation states):
//! - objects: keys sorted by their UTF-8 bytes, each key once;
//! - no whitespace between tokens; no trailing newline (writers of files add one);
//! - strings: UTF-8, with `"` and `\` escaped as `\"` and `\\`, the control characters
//!   U+0008, U+0009, U+000A, U+000C, U+000D as `\b \t \n \f \r`, every other control
//!   character below U+0020 as `\u00XX` (lowercase hex), and nothing else escaped;
//! - numbers: integers only (no fraction, no exponent), between -2^63 and 2^64-1;
//! - `true`, `false`, `null` as themselves.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    /// A number is not an integer; canonical JSON has no floating point.
    #[error("{0} is not an integer; canonical JSON allows integers only")]
    NotAnInteger(String),
    /// The value cannot be expressed as JSON at all (e.g. a map with non-string keys).
    #[error("not expressible as JSON: {0}")]
    NotJson(String),
}

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

/// The canonical bytes of any serialisable value (through [`serde_json::Value`]).
pub fn to_vec_of<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(value).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    to_vec(&value)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::NotAnInteger(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // serde_json's Map is a BTreeMap here (no `preserve_order`), but sort explicitly so
            // the rule does not depend on a feature flag somewhere in the dependency graph.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": [1, -2, {"z": null, "a": true}], "a": "x\"\\\n\u{1}é", "B": false});
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            r#"{"B":false,"a":"x\"\\\n\u0001é","b":[1,-2,{"a":true,"z":null}]}"#
        );
    }

    #[test]
    fn floats_are_refused() {
        assert!(matches!(
            to_vec(&json!({"x": 1.5})),
            Err(CanonicalError::NotAnInteger(_))
        ));
        assert_eq!(to_vec(&json!(u64::MAX)).unwrap(), b"18446744073709551615");
    }

    #[test]
    fn round_trips_through_a_parser() {
        let v = json!({"k": ["\u{7f}", "\u{2028}", "tab\there"], "n": i64::MIN});
        let bytes = to_vec(&v).unwrap();
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, v);
        assert_eq!(to_vec(&back).unwrap(), bytes);
    }
}
