//! JSON without serde: a small, strict scanner that yields an object's fields as slices of the
//! text, and the writer of string literals.
//!
//! The protocol's own structures (the envelope, the `system.*` payloads) are flat objects of
//! strings, integers and booleans, and an application's payload is kept as raw text. Reading
//! them needs no tree and no generic deserializer: the scanner validates the whole text
//! (RFC 8259: no trailing commas, no comments, no control characters in strings, no lone
//! surrogates, nesting at most [`MAX_DEPTH`]) and hands back `(key, raw value)` pairs; the
//! caller decodes the scalars it wants. This is what keeps the browser build small — serde_json's
//! generic code is most of a wasm binary — and both the server and the client read the
//! protocol through it, so there is one reading of the wire.

use std::borrow::Cow;

/// How deeply arrays and objects may nest.
pub const MAX_DEPTH: usize = 128;

/// The text is not (one) valid JSON value, or not what was expected of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError;

/// An object's fields: keys unescaped, values as their raw text, in order.
pub type Fields<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// The fields of the JSON object `text` (whitespace around it allowed). `Ok(None)` when `text`
/// is valid JSON but not an object.
pub fn object_fields(text: &str) -> Result<Option<Fields<'_>>, JsonError> {
    let bytes = text.as_bytes();
    let start = skip_ws(bytes, 0);
    if bytes.get(start) != Some(&b'{') {
        let end = value_end(bytes, start, 0)?;
        return if skip_ws(bytes, end) == bytes.len() { Ok(None) } else { Err(JsonError) };
    }
    let mut fields = Vec::new();
    let mut at = skip_ws(bytes, start + 1);
    if bytes.get(at) == Some(&b'}') {
        at += 1;
    } else {
        loop {
            let key_end = string_end(bytes, at)?;
            let key = text.get(at..key_end).and_then(string).ok_or(JsonError)?;
            at = skip_ws(bytes, key_end);
            if bytes.get(at) != Some(&b':') {
                return Err(JsonError);
            }
            let value_start = skip_ws(bytes, at + 1);
            let value_end = value_end(bytes, value_start, 1)?;
            fields.push((key, text.get(value_start..value_end).ok_or(JsonError)?));
            at = skip_ws(bytes, value_end);
            match bytes.get(at) {
                Some(b',') => at = skip_ws(bytes, at + 1),
                Some(b'}') => {
                    at += 1;
                    break;
                }
                _ => return Err(JsonError),
            }
        }
    }
    if skip_ws(bytes, at) != bytes.len() {
        return Err(JsonError);
    }
    Ok(Some(fields))
}

/// The elements of the JSON array `text` (whitespace around it allowed), as their raw text.
/// `Ok(None)` when `text` is valid JSON but not an array.
pub fn array_items(text: &str) -> Result<Option<Vec<&str>>, JsonError> {
    let bytes = text.as_bytes();
    let start = skip_ws(bytes, 0);
    if bytes.get(start) != Some(&b'[') {
        return if is_valid(text) { Ok(None) } else { Err(JsonError) };
    }
    let mut items = Vec::new();
    let mut at = skip_ws(bytes, start + 1);
    if bytes.get(at) == Some(&b']') {
        at += 1;
    } else {
        loop {
            let end = value_end(bytes, at, 1)?;
            items.push(text.get(at..end).ok_or(JsonError)?);
            at = skip_ws(bytes, end);
            match bytes.get(at) {
                Some(b',') => at = skip_ws(bytes, at + 1),
                Some(b']') => {
                    at += 1;
                    break;
                }
                _ => return Err(JsonError),
            }
        }
    }
    if skip_ws(bytes, at) != bytes.len() {
        return Err(JsonError);
    }
    Ok(Some(items))
}

/// Whether `text` is exactly one valid JSON value (whitespace around it allowed).
pub fn is_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    let start = skip_ws(bytes, 0);
    value_end(bytes, start, 0).is_ok_and(|end| skip_ws(bytes, end) == bytes.len())
}

/// The value of the string literal `raw` (quotes included), unescaped; `None` if `raw` is not
/// one.
pub fn string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let high = hex4(&mut chars)?;
                match high {
                    0xD800..=0xDBFF => {
                        if chars.next()? != '\\' || chars.next()? != 'u' {
                            return None;
                        }
                        let low = hex4(&mut chars)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => char::from_u32(high)?,
                }
            }
            _ => return None,
        });
    }
    Some(Cow::Owned(out))
}

/// A non-negative integer without fraction or exponent (`12`, not `12.0`), if it fits a u64.
pub fn unsigned(raw: &str) -> Option<u64> {
    if raw.is_empty()
        || !raw.bytes().all(|b| b.is_ascii_digit())
        || (raw.len() > 1 && raw.starts_with('0'))
    {
        return None;
    }
    raw.bytes().try_fold(0u64, |n, b| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
}

/// An integer, possibly negative, without fraction or exponent.
pub fn integer(raw: &str) -> Option<i64> {
    match raw.strip_prefix('-') {
        Some(digits) => unsigned(digits).and_then(|n| i64::try_from(n).ok()).map(|n| -n),
        None => unsigned(raw).and_then(|n| i64::try_from(n).ok()),
    }
}

/// `true` or `false`.
pub fn boolean(raw: &str) -> Option<bool> {
    match raw {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut at = 0;
    loop {
        let special = plain_run_end(bytes, at);
        out.extend_from_slice(&bytes[at..special]);
        let Some(&b) = bytes.get(special) else { break };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
        at = special + 1;
    }
    out.push(b'"');
}

/// A JSON object written field by field, in the order given (no serde: the browser build
/// stays small, and the encoding is exactly what is written here).
#[derive(Debug)]
pub struct ObjectWriter(Vec<u8>);

impl Default for ObjectWriter {
    fn default() -> Self {
        ObjectWriter(vec![b'{'])
    }
}

impl ObjectWriter {
    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        write_string(&mut self.0, key);
        self.0.push(b':');
    }

    /// A string field.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_string(&mut self.0, value);
        self
    }

    /// A string field, left out when `None`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(key, value);
        }
        self
    }

    /// A string field, `null` when `None`.
    pub fn str_or_null(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.raw(key, "null"),
        }
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        write_u64(&mut self.0, value);
        self
    }

    /// A signed integer field.
    pub fn i64(&mut self, key: &str, value: i64) -> &mut Self {
        self.key(key);
        if value < 0 {
            self.0.push(b'-');
        }
        write_u64(&mut self.0, value.unsigned_abs());
        self
    }

    /// An unsigned integer field, left out when `None`.
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(value) = value {
            self.u64(key, value);
        }
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// A field whose value is already JSON.
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key);
        self.0.extend_from_slice(json.as_bytes());
        self
    }

    /// The object's text.
    pub fn finish(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.0);
        bytes.push(b'}');
        // Only strings and JSON text went in.
        String::from_utf8(bytes).unwrap_or_default()
    }
}

/// Appends the decimal digits of `n`.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn hex4(chars: &mut std::str::Chars<'_>) -> Option<u32> {
    (0..4).try_fold(0u32, |n, _| Some(n * 16 + chars.next()?.to_digit(16)?))
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The end of the value starting at `at` (which is not whitespace).
fn value_end(bytes: &[u8], at: usize, depth: usize) -> Result<usize, JsonError> {
    match bytes.get(at) {
        Some(b'"') => string_end(bytes, at),
        Some(b'{') => container_end(bytes, at, depth, b'}', true),
        Some(b'[') => container_end(bytes, at, depth, b']', false),
        Some(b't') => literal_end(bytes, at, b"true"),
        Some(b'f') => literal_end(bytes, at, b"false"),
        Some(b'n') => literal_end(bytes, at, b"null"),
        Some(b'-' | b'0'..=b'9') => number_end(bytes, at),
        _ => Err(JsonError),
    }
}

fn literal_end(bytes: &[u8], at: usize, literal: &[u8]) -> Result<usize, JsonError> {
    let end = at + literal.len();
    if bytes.get(at..end) == Some(literal) { Ok(end) } else { Err(JsonError) }
}

fn number_end(bytes: &[u8], mut at: usize) -> Result<usize, JsonError> {
    let digits = |bytes: &[u8], mut at: usize| {
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start { Err(JsonError) } else { Ok(at) }
    };
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match bytes.get(at) {
        Some(b'0') => at + 1,
        Some(b'1'..=b'9') => digits(bytes, at)?,
        _ => return Err(JsonError),
    };
    if bytes.get(at) == Some(&b'.') {
        at = digits(bytes, at + 1)?;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        at = digits(bytes, at)?;
    }
    Ok(at)
}

/// The end of the string literal starting at `at`; checks escapes (and that `\u` surrogates
/// pair up) and that no control character is in it.
fn string_end(bytes: &[u8], at: usize) -> Result<usize, JsonError> {
    if bytes.get(at) != Some(&b'"') {
        return Err(JsonError);
    }
    let mut i = at + 1;
    let hex = |i: usize| -> Result<u32, JsonError> {
        let digits = bytes.get(i..i + 4).ok_or(JsonError)?;
        digits
            .iter()
            .try_fold(0u32, |n, &d| Ok(n * 16 + char::from(d).to_digit(16).ok_or(JsonError)?))
    };
    loop {
        i = plain_run_end(bytes, i);
        match *bytes.get(i).ok_or(JsonError)? {
            b'"' => return Ok(i + 1),
            0..=0x1f => return Err(JsonError),
            b'\\' => match *bytes.get(i + 1).ok_or(JsonError)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    let unit = hex(i + 2)?;
                    i += 6;
                    if (0xD800..=0xDBFF).contains(&unit) {
                        if bytes.get(i..i + 2) != Some(b"\\u") {
                            return Err(JsonError);
                        }
                        if !(0xDC00..=0xDFFF).contains(&hex(i + 2)?) {
                            return Err(JsonError);
                        }
                        i += 6;
                    } else if (0xDC00..=0xDFFF).contains(&unit) {
                        return Err(JsonError);
                    }
                }
                _ => return Err(JsonError),
            },
            _ => i += 1,
        }
    }
}

/// The first index at or after `at` holding a quote, a backslash or a control character (or
/// `bytes.len()`). Most of a string is such plain bytes, so they are skipped a word at a time:
/// the usual bit tricks find a byte below 0x20, or equal to `"` or `\\`, in eight at once.
fn plain_run_end(bytes: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let word_at = |at: usize| bytes.get(at..at + 8)?.try_into().ok().map(u64::from_ne_bytes);
    while let Some(word) = word_at(at) {
        let special = has_zero(word ^ (ONES * u64::from(b'"')))
            | has_zero(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if special != 0 {
            break;
        }
        at += 8;
    }
    while bytes.get(at).is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20) {
        at += 1;
    }
    at
}

fn container_end(
    bytes: &[u8],
    at: usize,
    depth: usize,
    close: u8,
    object: bool,
) -> Result<usize, JsonError> {
    if depth >= MAX_DEPTH {
        return Err(JsonError);
    }
    let mut i = skip_ws(bytes, at + 1);
    if bytes.get(i) == Some(&close) {
        return Ok(i + 1);
    }
    loop {
        if object {
            i = skip_ws(bytes, string_end(bytes, i)?);
            if bytes.get(i) != Some(&b':') {
                return Err(JsonError);
            }
            i = skip_ws(bytes, i + 1);
        }
        i = skip_ws(bytes, value_end(bytes, i, depth + 1)?);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(bytes, i + 1),
            Some(&c) if c == close => return Ok(i + 1),
            _ => return Err(JsonError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_back_raw_in_order() {
        let fields =
            object_fields(r#" {"a": 1, "b" : {"x":[1,2,{"y":null}]}, "c":"d\"e", "":true} "#)
                .unwrap()
                .unwrap();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            pairs,
            [("a", "1"), ("b", r#"{"x":[1,2,{"y":null}]}"#), ("c", r#""d\"e""#), ("", "true")]
        );
        assert_eq!(object_fields("[1]"), Ok(None));
        assert_eq!(
            array_items(r#" [1, "a", {"b":[2]}, []] "#),
            Ok(Some(vec!["1", r#""a""#, r#"{"b":[2]}"#, "[]"]))
        );
        assert_eq!(array_items("[]"), Ok(Some(vec![])));
        assert_eq!(array_items("{}"), Ok(None));
        assert!(array_items("[1,]").is_err() && array_items("[1] 2").is_err());
        assert_eq!(object_fields("{}").unwrap().unwrap().len(), 0);
    }

    #[test]
    fn only_valid_json_passes() {
        for good in ["0", "-0.5e+3", "\"\\u00e9\\ud83d\\ude00\"", "[]", "{\"a\":[{}]}", " null "] {
            assert!(is_valid(good), "{good}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        for bad in [
            "",
            "01",
            "1.",
            "-",
            "+1",
            ".5",
            "1e",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "'a'",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\u{1}\"",
            "tru",
            "nul",
            "[1]x",
            "{\"a\"}",
            "\"abc",
            "[1 2]",
            &deep,
        ] {
            assert!(!is_valid(bad), "{bad:?}");
            assert!(object_fields(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scalars_decode() {
        assert_eq!(string(r#""plain""#), Some(Cow::Borrowed("plain")));
        assert_eq!(string(r#""a\nb\u00e9\ud83d\ude00\/""#).as_deref(), Some("a\nbé😀/"));
        assert_eq!(string(r#""\ud800x""#), None);
        assert_eq!(unsigned("18446744073709551615"), Some(u64::MAX));
        assert_eq!(unsigned("18446744073709551616"), None);
        assert_eq!((unsigned("01"), unsigned("1.0"), unsigned("-1")), (None, None, None));
        assert_eq!((integer("-42"), integer("7"), integer("1e3")), (Some(-42), Some(7), None));
        assert_eq!((boolean("true"), boolean("null")), (Some(true), None));
    }

    #[test]
    fn written_strings_read_back_and_agree_with_serde_json() {
        for s in ["", "plain", "q\"b\\s/", "\n\r\t\u{8}\u{c}\u{1}\u{1f}", "é😀\u{7f}"] {
            let mut out = Vec::new();
            write_string(&mut out, s);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(string(&text).as_deref(), Some(s));
            assert_eq!(serde_json::from_str::<String>(&text).unwrap(), s);
        }
    }

    /// The word-at-a-time skip finds a special byte at every offset within and across words.
    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
            for at in 0..24 {
                let s: String = "a".repeat(at) + &special.to_string() + &"é".repeat(5);
                let mut out = Vec::new();
                write_string(&mut out, &s);
                let text = String::from_utf8(out).unwrap();
                assert_eq!(text, serde_json::to_string(&s).unwrap());
                assert!(is_valid(&text), "{text:?}");
                let raw = format!("\"{s}\"");
                assert!(!is_valid(&raw), "{raw:?}");
            }
        }
    }
}
