//! JSON limits that `serde_json` does not enforce the way we want: nesting depth, checked on raw bytes
//! before parsing (so a hostile body costs one linear scan) and on values a patch produced.

use serde_json::Value;

/// Deepest nesting of arrays/objects accepted in a request body or a stored document.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// The deepest `[`/`{` nesting in `bytes`, ignoring brackets inside strings. Stops counting once the
/// depth passes `limit` and returns `limit + 1`, so the scan is O(n) with no allocation.
pub fn raw_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return limit + 1;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The nesting depth of a value: 0 for a scalar, 1 for `{}` or `[1]`, and so on. Iterative, so a
/// deep value cannot overflow the stack.
pub fn value_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        max = max.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    max
}

/// A lower bound on the serialized size of `value` (strings as their UTF-8 length plus quotes, every
/// number as one byte, ...) and its nesting depth, in one iterative pass with no allocation per node
/// beyond the walk's stack. Cheap enough to run per patch operation, and never an overestimate, so a
/// limit exceeded by it is exceeded by the real size too.
pub fn measure(value: &Value) -> (usize, usize) {
    let (mut size, mut max_depth) = (0usize, 0usize);
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Null => size += 4,
            Value::Bool(b) => size += if *b { 4 } else { 5 },
            Value::Number(_) => size += 1,
            Value::String(s) => size += s.len() + 2,
            Value::Array(a) => {
                max_depth = max_depth.max(d + 1);
                size += 2 + a.len().saturating_sub(1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(o) => {
                max_depth = max_depth.max(d + 1);
                size += 2 + o.len().saturating_sub(1);
                for (k, c) in o {
                    size += k.len() + 3;
                    stack.push((c, d + 1));
                }
            }
        }
    }
    (size, max_depth)
}

/// [`measure`]'s size for a document body, without wrapping it in a `Value`.
pub fn measure_data(data: &serde_json::Map<String, Value>) -> usize {
    2 + data.len().saturating_sub(1)
        + data
            .iter()
            .map(|(k, v)| k.len() + 3 + measure(v).0)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_depth_counts_nesting_outside_strings() {
        assert_eq!(raw_depth(b"1", 10), 0);
        assert_eq!(raw_depth(b"{}", 10), 1);
        assert_eq!(raw_depth(br#"{"a":[{"b":[]}]}"#, 10), 4);
        assert_eq!(raw_depth(br#"{"a":"[[[[{{{{"}"#, 10), 1);
        assert_eq!(raw_depth(br#"{"a":"\"[[[["}"#, 10), 1);
        assert_eq!(raw_depth(&b"[".repeat(1_000_000), 64), 65);
    }

    #[test]
    fn measure_is_a_lower_bound_on_size_and_exact_on_depth() {
        for v in [
            json!(null),
            json!("héllo"),
            json!({"a": [1, 2.5, true, null, {"b": "c"}], "d": {}}),
            json!([[[]], {"x": -123456}]),
        ] {
            let (size, depth) = measure(&v);
            let text = serde_json::to_string(&v).unwrap();
            assert!(size <= text.len(), "{size} > {} for {text}", text.len());
            assert_eq!(depth, value_depth(&v), "{text}");
        }
        let strings = json!({"key": "x".repeat(1000)});
        assert_eq!(
            measure(&strings).0,
            serde_json::to_string(&strings).unwrap().len()
        );
    }

    #[test]
    fn value_depth_matches_raw_depth() {
        for v in [
            json!(1),
            json!({}),
            json!({"a": [1, {"b": {"c": []}}]}),
            json!([[[]]]),
        ] {
            let text = serde_json::to_vec(&v).unwrap();
            assert_eq!(value_depth(&v), raw_depth(&text, 100), "{v}");
        }
    }
}

/// Why raw JSON was refused by [`check_strict`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Strictness {
    /// An object names a member twice (parsers disagree on which one counts; RFC 6902 calls a
    /// patch operation with a repeated member invalid).
    #[error("duplicate member {0:?} in an object")]
    DuplicateMember(String),
    /// A number that a 64-bit integer or float cannot hold exactly: storing it would change it.
    #[error("the number {0} cannot be kept exactly (integers must fit in 64 bits, other numbers in a 64-bit float without rounding)")]
    InexactNumber(String),
}

/// Refuses JSON that would be taken in a different meaning than it says: an object with a
/// repeated member, or a number that would change on the way in (`123456789012345678901234567890`
/// becoming `1.2345678901234568e29`, `1e-400` becoming `0`). One linear scan of the raw bytes
/// (keys compared after unescaping), meant to run before the parser; malformed JSON is left for
/// the parser to report.
pub fn check_strict(bytes: &[u8]) -> Result<(), Strictness> {
    use std::borrow::Cow;
    use std::collections::HashSet;
    // Per open container: the keys seen, if it is an object (borrowed from the input unless they
    // had to be unescaped).
    let mut stack: Vec<Option<HashSet<Cow<'_, [u8]>>>> = Vec::new();
    // In an object, whether the next string is a key.
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                if expect_key {
                    let raw = &bytes[i..end];
                    let key: Cow<'_, [u8]> = if raw.contains(&b'\\') {
                        Cow::Owned(
                            serde_json::from_slice::<String>(raw)
                                .unwrap_or_default()
                                .into_bytes(),
                        )
                    } else {
                        Cow::Borrowed(&raw[1..raw.len().saturating_sub(1).max(1)])
                    };
                    if let Some(Some(keys)) = stack.last_mut() {
                        if keys.contains(&key) {
                            return Err(Strictness::DuplicateMember(
                                String::from_utf8_lossy(&key).into_owned(),
                            ));
                        }
                        keys.insert(key);
                    }
                    expect_key = false;
                }
                i = end;
                continue;
            }
            b'{' => {
                stack.push(Some(HashSet::new()));
                expect_key = true;
            }
            b'[' => {
                stack.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(stack.last(), Some(Some(_))),
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(bytes.len(), |n| i + n);
                let token = std::str::from_utf8(&bytes[i..end]).unwrap_or_default();
                if !number_is_exact(token) {
                    return Err(Strictness::InexactNumber(token.to_string()));
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index just past the string starting at `start` (a `"`), or the end of the input.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut escaped = false;
    for (n, &b) in bytes[start + 1..].iter().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return start + 2 + n,
            _ => {}
        }
    }
    bytes.len()
}

/// Whether `serde_json` (without `arbitrary_precision`) keeps this number token's value: an
/// integer that fits `i64`/`u64`, or a number whose shortest `f64` rendering has the same decimal
/// value. A token that is not a number is left for the parser (`true`).
pub fn number_is_exact(token: &str) -> bool {
    let is_integer = !token.contains(['.', 'e', 'E']);
    if is_integer {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok() || token.parse::<f64>().is_err();
    }
    let Ok(f) = token.parse::<f64>() else {
        return true;
    };
    if !f.is_finite() {
        return false;
    }
    match (decimal(token), decimal(&format!("{:e}", f))) {
        (Some(written), Some(kept)) => written == kept,
        _ => true,
    }
}

/// A decimal number as (negative, significant digits without leading or trailing zeros, the power
/// of ten of the last digit); zero is `(false, "", 0)`.
fn decimal(s: &str) -> Option<(bool, String, i64)> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => (&s[..at], s[at + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{whole}{fraction}");
    let mut power = exponent.checked_sub(fraction.len() as i64)?;
    let trimmed = digits.trim_end_matches('0');
    power += (digits.len() - trimmed.len()) as i64;
    digits = trimmed.trim_start_matches('0').to_string();
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((negative, digits, power))
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused_at_any_depth_after_unescaping() {
        for ok in [
            r#"{"a":1,"b":2}"#,
            r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#,
            r#"[{"a":1},{"a":1}]"#,
            r#"{"a":"\"a\"","b":"a"}"#,
            r#"{"k":"{\"k\":1,\"k\":2}"}"#,
            r#"[["a","a"],{"x":["a","a"]}]"#,
            "{}",
            "\"a\"",
        ] {
            assert_eq!(check_strict(ok.as_bytes()), Ok(()), "{ok}");
        }
        for (bad, key) in [
            (r#"{"id":"x1","id":"x2"}"#, "id"),
            (r#"{"a":{"b":1,"b":2}}"#, "b"),
            (r#"[{"op":"add","op":"remove","path":"/a"}]"#, "op"),
            (r#"{"a":1,"\u0061":2}"#, "a"),
            (r#"{ "a" : 1 , "a" : 1 }"#, "a"),
            (r#"{"a":[1,{"c":1}],"b":{},"a":0}"#, "a"),
        ] {
            assert_eq!(
                check_strict(bad.as_bytes()),
                Err(Strictness::DuplicateMember(key.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn numbers_that_would_change_are_refused() {
        for ok in [
            "0",
            "-0",
            "1",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.10",
            "1e5",
            "1E+5",
            "2.5e-3",
            "-0.0",
            "1.7976931348623157e308",
            "5e-324",
            "123.456",
            "0.30000000000000004",
            "1e22",
        ] {
            assert!(number_is_exact(ok), "{ok}");
        }
        for bad in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "1e-400",
            "1e400",
            "0.12345678901234567890",
            "9007199254740993.0",
            "2e-324",
        ] {
            assert!(!number_is_exact(bad), "{bad}");
        }
        assert_eq!(
            check_strict(br#"{"a":[1, 2.5, {"b": 123456789012345678901234567890}]}"#),
            Err(Strictness::InexactNumber("123456789012345678901234567890".into()))
        );
        // Inside strings, digits are text.
        assert_eq!(check_strict(br#"{"a":"123456789012345678901234567890"}"#), Ok(()));
    }
}
