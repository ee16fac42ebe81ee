//! Canonical JSON (the job format's one JSON line): the writer emits keys sorted, no
//! whitespace, integers only, UTF-8, escaping exactly `"`, `\` and the control characters
//! (`\b \f \n \r \t`, else `\u00xx` in lowercase hex), as serde_json does; the reader
//! accepts exactly what the writer emits and nothing else (a strict, bounded parser: every
//! byte comes from the host, which the guest does not trust either).
//!
//! Self-contained (no `crate::` paths) so that the tests can include it.

use std::collections::BTreeMap;
use std::fmt;

/// The deepest nesting the reader accepts (the formats need 3).
pub const MAX_DEPTH: usize = 16;

/// A JSON value without floats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Any integer from `i64::MIN` to `u64::MAX`.
    Int(i128),
    Str(String),
    Array(Vec<Value>),
    /// Keys in byte order, unique (so the writer is canonical by construction).
    Object(BTreeMap<String, Value>),
}

/// Why a JSON line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Byte offset in the line (or 0 for a shape error).
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.what, self.offset)
    }
}

impl std::error::Error for Error {}

fn err<T>(offset: usize, what: &'static str) -> Result<T, Error> {
    Err(Error { offset, what })
}

impl Value {
    /// An object from `(key, value)` pairs (later duplicates win; the writer sorts).
    pub fn object<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    pub fn uint(n: u64) -> Value {
        Value::Int(i128::from(n))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The values of an object that has exactly the keys `keys` (in any order given here),
    /// no more, no fewer.
    pub fn exact<const N: usize>(&self, keys: [&str; N]) -> Result<[&Value; N], Error> {
        let Some(obj) = self.as_object() else {
            return err(0, "expected an object");
        };
        if obj.len() != N {
            return err(0, "unexpected or missing keys");
        }
        let mut out = [self; N];
        for (slot, key) in out.iter_mut().zip(keys) {
            match obj.get(key) {
                Some(v) => *slot = v,
                None => return err(0, "a required key is missing"),
            }
        }
        Ok(out)
    }

    /// The canonical text (no trailing newline).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        write(self, &mut out);
        out
    }

    /// The canonical text followed by `\n`: the first part of every message body.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = self.to_text();
        out.push('\n');
        out.into_bytes()
    }
}

/// Appends the canonical text of `value` to `out`.
pub fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(n) => out.push_str(&n.to_string()),
        Value::Str(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(DIGITS[(c as usize) >> 4] as char);
                out.push(DIGITS[(c as usize) & 15] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses one canonical JSON text (no trailing newline). Accepts exactly the texts that
/// [`write`] produces: any other spelling of the same value (whitespace, unsorted or
/// duplicate keys, `\/`, `\u0041`, uppercase hex, `-0`, leading zeros, fractions,
/// exponents) is refused. Invalid UTF-8, nesting deeper than [`MAX_DEPTH`] and integers
/// outside `i64::MIN..=u64::MAX` are refused. The caller bounds the length.
pub fn parse(text: &[u8]) -> Result<Value, Error> {
    let mut p = Parser { text, pos: 0 };
    let value = p.value(0)?;
    if p.pos != text.len() {
        return err(p.pos, "trailing bytes after the value");
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), Error> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            err(self.pos, what)
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Error> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            err(self.pos, "unknown literal")
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return err(self.pos, "nested too deeply");
        }
        match self.peek() {
            None => err(self.pos, "unexpected end"),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return err(self.pos, "expected , or ]"),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                let mut last: Option<String> = None;
                loop {
                    if self.peek() != Some(b'"') {
                        return err(self.pos, "expected a key");
                    }
                    let at = self.pos;
                    let key = self.string()?;
                    if let Some(prev) = &last {
                        if prev.as_bytes() >= key.as_bytes() {
                            return err(at, "keys not sorted or not unique");
                        }
                    }
                    self.expect(b':', "expected :")?;
                    let value = self.value(depth + 1)?;
                    map.insert(key.clone(), value);
                    last = Some(key);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Value::Object(map));
                        }
                        _ => return err(self.pos, "expected , or }"),
                    }
                }
            }
            Some(_) => err(self.pos, "unexpected byte"),
        }
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
            if self.pos - digits_start > 20 {
                return err(start, "integer out of range");
            }
        }
        let digits = &self.text[digits_start..self.pos];
        if digits.is_empty() {
            return err(start, "expected digits");
        }
        if digits.len() > 1 && digits[0] == b'0' {
            return err(start, "leading zero");
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return err(self.pos, "not an integer (floats are not allowed)");
        }
        let mut n: i128 = 0;
        for &d in digits {
            n = n * 10 + i128::from(d - b'0');
        }
        if negative {
            if n == 0 {
                return err(start, "negative zero");
            }
            n = -n;
        }
        if n < i128::from(i64::MIN) || n > i128::from(u64::MAX) {
            return err(start, "integer out of range");
        }
        Ok(Value::Int(n))
    }

    fn string(&mut self) -> Result<String, Error> {
        let start = self.pos;
        self.expect(b'"', "expected a string")?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return err(start, "unterminated string");
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => {
                    let at = self.pos;
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return err(at, "unterminated escape");
                    };
                    self.pos += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            // Only `\u00xx` for a control character without a short form.
                            let hex = self.text.get(self.pos..self.pos + 4);
                            let Some(hex) = hex else {
                                return err(at, "short \\u escape");
                            };
                            let lower = |c: u8| match c {
                                b'0'..=b'9' => Some(c - b'0'),
                                b'a'..=b'f' => Some(c - b'a' + 10),
                                _ => None,
                            };
                            let (Some(h), Some(l)) = (lower(hex[2]), lower(hex[3])) else {
                                return err(at, "bad \\u escape");
                            };
                            let code = (h << 4) | l;
                            if &hex[..2] != b"00"
                                || code >= 0x20
                                || matches!(code, 8 | 9 | 10 | 12 | 13)
                            {
                                return err(at, "non-canonical \\u escape");
                            }
                            self.pos += 4;
                            out.push(code);
                        }
                        _ => return err(at, "unknown or non-canonical escape"),
                    }
                }
                0..=0x1f => return err(self.pos, "raw control character in a string"),
                _ => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| Error {
            offset: start,
            what: "string is not UTF-8",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) {
        let v = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(v.to_text(), text);
    }

    #[test]
    fn canonical_texts_round_trip() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-1",
            "18446744073709551615",
            "-9223372036854775808",
            "\"\"",
            "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0000\\u001f\u{7f}é😀/\"",
            "[]",
            "{}",
            "[1,[2,[3]],{\"a\":null}]",
            "{\"a\":1,\"b\":[true,false],\"c\":{\"\":\"x\",\"d\":\"y\"}}",
            "{\"argv\":[\"rustc\",\"--cfg\",\"feature=\\\"std\\\"\"],\"kind\":\"job\",\"v\":1}",
        ] {
            round_trip(text);
        }
    }

    #[test]
    fn writer_sorts_keys_and_escapes() {
        let v = Value::object([
            ("z", Value::uint(1)),
            ("a", Value::str("tab\there \u{1} \"q\" \\ é")),
            ("m", Value::Array(vec![Value::Null, Value::Bool(true)])),
        ]);
        assert_eq!(
            v.to_text(),
            "{\"a\":\"tab\\there \\u0001 \\\"q\\\" \\\\ é\",\"m\":[null,true],\"z\":1}"
        );
        assert_eq!(v.to_line().last(), Some(&b'\n'));
        assert_eq!(parse(v.to_text().as_bytes()).unwrap(), v);
    }

    #[test]
    fn non_canonical_and_malformed_texts_are_refused() {
        let bad: &[&[u8]] = &[
            b"",
            b" 1",
            b"1 ",
            b"{\"a\": 1}",
            b"[1, 2]",
            b"{\"b\":1,\"a\":2}",
            b"{\"a\":1,\"a\":1}",
            b"01",
            b"-0",
            b"1.0",
            b"1e3",
            b"1E3",
            b"+1",
            b"-",
            b"18446744073709551616",
            b"-9223372036854775809",
            b"123456789012345678901234567890",
            b"\"\\/\"",
            b"\"\\u0041\"",
            b"\"\\u000a\"",
            b"\"\\u001F\"",
            b"\"\\u00\"",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"a\nb\"",
            b"\"\x01\"",
            b"\"\xff\"",
            b"\"\xc3\"",
            b"\"\xed\xa0\x80\"",
            b"\"abc",
            b"[1,2",
            b"[1,]",
            b"[,1]",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{1:2}",
            b"{\"a\":1,}",
            b"nul",
            b"truex",
            b"NaN",
            b"[]]",
            b"{}{}",
            b"\"a\"\n",
        ];
        for text in bad {
            assert!(
                parse(text).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert!(parse(deep.as_bytes()).is_err());
        // A hostile depth fails fast instead of overflowing the stack.
        let hostile = "[".repeat(1_000_000);
        assert!(parse(hostile.as_bytes()).is_err());
        let objects = "{\"a\":".repeat(100_000);
        assert!(parse(objects.as_bytes()).is_err());
    }

    #[test]
    fn exact_keys() {
        let v = parse(b"{\"a\":1,\"b\":\"x\"}").unwrap();
        let [b, a] = v.exact(["b", "a"]).unwrap();
        assert_eq!(a.as_u64(), Some(1));
        assert_eq!(b.as_str(), Some("x"));
        assert!(v.exact(["a"]).is_err(), "an extra key");
        assert!(v.exact(["a", "b", "c"]).is_err(), "a missing key");
        assert!(v.exact(["a", "c"]).is_err(), "a different key");
        assert!(Value::Null.exact(["a"]).is_err());
    }

    #[test]
    fn integer_accessors() {
        let v = parse(b"[-1,0,18446744073709551615,9223372036854775807]").unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a[0].as_u64(), None);
        assert_eq!(a[0], Value::Int(-1));
        assert_eq!(a[1].as_u64(), Some(0));
        assert_eq!(a[2].as_u64(), Some(u64::MAX));
        assert_eq!(a[3].as_u64(), Some(i64::MAX as u64));
    }
}
