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
