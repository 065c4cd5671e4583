//! What a client following scopes should hold, decided independently of the server: a small
//! evaluator of the filter language (`docs/PROTOCOL.md` §11, "Filters") for the cases the tests
//! use, and the documents a set of subscriptions takes from a collection.
//!
//! Deliberately not the server's `scope::filter` (a test that asked the server's own code what the
//! server should have sent would check nothing). It covers `$eq $ne $gt $gte $lt $lte $in $nin
//! $exists $and $or`, implicit equality and dotted paths through objects, with arrays opened at the
//! end of a path only; anything else panics, so a test cannot silently rely on a rule this does
//! not implement. Windows (`latest`) depend on creation order and are computed by the tests that
//! use them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use eventsync_client::{Scope, Subscription};
use serde_json::{Map, Value};

/// Whether `body` matches the filter `filter` (a JSON object).
pub fn filter_matches(filter: &Value, body: &Map<String, Value>) -> bool {
    let body = Value::Object(body.clone());
    matches_value(filter, &body)
}

fn matches_value(filter: &Value, body: &Value) -> bool {
    let f = filter.as_object().expect("a filter is an object");
    f.iter().all(|(key, cond)| match key.as_str() {
        "$and" => list(cond).iter().all(|f| matches_value(f, body)),
        "$or" => list(cond).iter().any(|f| matches_value(f, body)),
        k if k.starts_with('$') => panic!("test evaluator: unknown operator {k}"),
        path => {
            let segments: Vec<&str> = path.split('.').collect();
            let resolved = resolve(body, &segments);
            match operators(cond) {
                Some(ops) => ops.iter().all(|(op, operand)| leaf(op, operand, &resolved)),
                None => leaf("$eq", cond, &resolved),
            }
        }
    })
}

fn list(v: &Value) -> &Vec<Value> {
    v.as_array()
        .filter(|a| !a.is_empty())
        .expect("$and/$or take a non-empty array")
}

/// An operator object: non-empty, every key a `$` operator.
fn operators(cond: &Value) -> Option<&Map<String, Value>> {
    let m = cond.as_object()?;
    (!m.is_empty() && m.keys().all(|k| k.starts_with('$'))).then_some(m)
}

/// The values a path resolves to; `None` is a missing value.
fn resolve<'a>(v: &'a Value, segments: &[&str]) -> Vec<Option<&'a Value>> {
    let Some((first, rest)) = segments.split_first() else {
        return match v {
            Value::Array(items) => items.iter().map(Some).chain([Some(v)]).collect(),
            _ => vec![Some(v)],
        };
    };
    match v {
        Value::Object(m) => match m.get(*first) {
            Some(x) => resolve(x, rest),
            None => vec![None],
        },
        Value::Array(_) => panic!("test evaluator: a path through an array ({first}) is not supported"),
        _ => vec![None],
    }
}

fn leaf(op: &str, operand: &Value, resolved: &[Option<&Value>]) -> bool {
    let eq = |x: &Value| {
        resolved.iter().any(|r| match r {
            Some(v) => json_eq(v, x),
            None => x.is_null(),
        })
    };
    let order = |want: &[Ordering]| {
        resolved
            .iter()
            .flatten()
            .any(|v| compare(v, operand).is_some_and(|o| want.contains(&o)))
    };
    let set = || operand.as_array().expect("$in/$nin take an array");
    match op {
        "$eq" => eq(operand),
        "$ne" => !eq(operand),
        "$in" => set().iter().any(eq),
        "$nin" => !set().iter().any(eq),
        "$gt" => order(&[Ordering::Greater]),
        "$gte" => order(&[Ordering::Greater, Ordering::Equal]),
        "$lt" => order(&[Ordering::Less]),
        "$lte" => order(&[Ordering::Less, Ordering::Equal]),
        "$exists" => resolved.iter().any(Option::is_some) == operand.as_bool().expect("$exists takes a bool"),
        other => panic!("test evaluator: unknown operator {other}"),
    }
}

/// JSON equality with numbers by value and objects whatever their key order.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Order within one type only (numbers, strings, booleans); `None` across types.
fn compare(v: &Value, operand: &Value) -> Option<Ordering> {
    match (v, operand) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Whether the scope takes the document (it must not be a window).
pub fn scope_takes(s: &Scope, id: &str, body: &Map<String, Value>) -> bool {
    assert!(s.latest.is_none(), "windows are computed by the test: {s:?}");
    s.ids.as_ref().is_none_or(|ids| ids.iter().any(|i| i == id))
        && s.prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str()))
        && s.filter.as_ref().is_none_or(|f| filter_matches(f, body))
}

/// Whether any of `subscriptions` takes `collection/id` with this body.
pub fn subscriptions_take(
    subscriptions: &[Subscription],
    collection: &str,
    id: &str,
    body: &Map<String, Value>,
) -> bool {
    subscriptions.iter().any(|s| match s {
        Subscription::Collection(c) => c == collection,
        Subscription::Scope(sc) => sc.collection == collection && scope_takes(sc, id, body),
    })
}

/// The documents (id → (version, body)) of `docs` — a collection's live documents, as
/// [`super::server_docs`] returns them — that `subscriptions` take.
pub fn taken(
    subscriptions: &[Subscription],
    collection: &str,
    docs: &BTreeMap<String, (u64, Value)>,
) -> BTreeMap<String, (u64, Value)> {
    docs.iter()
        .filter(|(id, (_, body))| {
            let body = body.as_object().expect("a document body is an object");
            subscriptions_take(subscriptions, collection, id, body)
        })
        .map(|(id, d)| (id.clone(), d.clone()))
        .collect()
}

/// A client replica's live documents of a collection, as id → (version, body).
pub fn replica_docs(r: &eventsync_client::Replica, collection: &str) -> BTreeMap<String, (u64, Value)> {
    r.collection(collection)
        .map(|docs| {
            docs.iter()
                .map(|(id, body)| {
                    (
                        id.clone(),
                        (r.version(collection, id), Value::Object(body.clone())),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
