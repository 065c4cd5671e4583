//! Filters — a subset of **MongoDB's query language**, evaluated on a document's body (a JSON
//! object). Pure: [`Filter::parse`] validates and bounds a filter once, [`Filter::matches`] decides
//! a body, [`Filter::touched_by`] says whether a change at a JSON pointer could change that answer,
//! and [`Filter::canonical`] is a key for sharing evaluation between identical filters.
//!
//! ```text
//! {"level": {"$gte": 3}, "owner.name": "ann", "$or": [{"tags": "urgent"}, {"due": {"$exists": false}}]}
//! ```
//!
//! # The language
//!
//! A **filter** is a JSON object; its keys are ANDed and `{}` matches every document. A key is:
//!
//! * `$and` or `$or`: a non-empty array of filters (all of them / any of them must match);
//! * any other key starting with `$`: refused (`unknown operator` — there is no `$nor`, `$not`,
//!   `$expr`, `$where`, ...);
//! * anything else: a **field path**, dot-separated (`owner.name`, `tags.0`): 1 to
//!   [`MAX_PATH_SEGMENTS`] segments, none empty, none starting with `$`. A path cannot name a key
//!   that contains a dot (as in MongoDB).
//!
//! The value of a field path is an **operator object** when it is a non-empty object all of
//! whose keys start with `$`; its operators are ANDed, each one evaluated on its own (so
//! `{"n": {"$gt": 1, "$lt": 5}}` matches `{"n": [0, 9]}`: 9 is > 1 and 0 is < 5, as in MongoDB;
//! there is no `$elemMatch`). An object mixing `$` keys and other keys is refused. Any other value
//! — a scalar, an array, an object without `$` keys, and `{}` — is an implicit `$eq` with that
//! literal.
//!
//! | operator | operand | matches when |
//! |---|---|---|
//! | `$eq` | any value | some resolved value equals it (below); `null` also matches a missing field |
//! | `$ne` | any value | not `$eq` — so a missing field matches `{"$ne": 1}` |
//! | `$gt` `$gte` `$lt` `$lte` | a number, string or boolean | some resolved value of the same type compares so |
//! | `$in` | an array of at most [`MAX_IN_VALUES`] values | `$eq` matches one of them (`[]` matches nothing) |
//! | `$nin` | the same | not `$in` (`[]` matches everything) |
//! | `$exists` | `true` or `false` | the path resolves to at least one value (`null` counts) / to none |
//!
//! # Resolving a path (MongoDB's rules)
//!
//! A path yields a list of *resolved values*, some of which may be *missing*. Walking segment `s`
//! with the rest of the path `r` from a value `v`:
//!
//! * no segment left: `v` is resolved; when `v` is an array, each of its elements is resolved too,
//!   and then the array itself (one level: an element that is an array is not opened again);
//! * `v` is an object: the walk goes on into `v[s]`, or yields *missing* when there is no such key
//!   (a numeric `s` is a key like any other here: `a.0` reads `{"a": {"0": 1}}`);
//! * `v` is an array (the implicit traversal): for each element, in order,
//!   - an object element is walked with the *same* segments `s.r` (so `items.name` reads every
//!     item's name, and an item without `name` yields *missing*);
//!   - when `s` is the element's index (`0`, `1`, ... written without leading zeros), the element
//!     is walked with `r`: with nothing left it is resolved *as is* (an array reached this way is
//!     not opened), an object element is walked with `r`, an array element is traversed with `r`
//!     the same way (`a.0.1` reads `{"a": [[1, 2]]}`'s 2), a scalar yields nothing;
//!   - a scalar (or array) element that is not at index `s` yields nothing, nor does an index
//!     past the end: `{"a.b": null}` does not match `{"a": [1, 2]}` or `{"a": []}`;
//!
//!   (so, as in MongoDB, a numeric segment on an array of objects is tried both as the index and
//!   as a key of each object — and that key being absent yields *missing*: `{"a.0.b": null}`
//!   matches `{"a": [{"b": 1}]}`, because the object `{"b": 1}` has no key `0`);
//! * `v` is a scalar or `null` with segments left: *missing* (`{"a.b": null}` matches `{"a": 5}`).
//!
//! # Comparing
//!
//! **Equality** (`$eq`, `$ne`, `$in`, `$nin`) is JSON equality with two refinements: numbers are
//! compared by value, exactly (`1 == 1.0`, and 2^53 + 1 is not 2^53 as a float), and objects are
//! equal when they have the same keys with equal values, **whatever their order** — unlike
//! MongoDB, which compares BSON objects field by field in order. Arrays are equal element by
//! element, in order. A `null` operand also matches *missing*. So `{"tags": "x"}` matches
//! `{"tags": ["x", "y"]}` (an element), `{"tags": ["x", "y"]}` matches it (the whole array), and
//! `{"tags": ["x"]}` matches `{"tags": [["x"], "y"]}` (an element that is an array).
//!
//! **Order** (`$gt` ...) follows MongoDB's type bracketing: a resolved value is compared only
//! with an operand of the same type, anything else never satisfies the operator (`{"n":
//! {"$lt": 3}}` matches neither `{"n": "1"}` nor `{"n": null}` nor a missing `n`). Numbers compare
//! by value, exactly across integers (i64, u64) and floats; strings by Unicode code point (byte
//! order of UTF-8, MongoDB's default without a collation); `false < true`. The operand must be a
//! number, string or boolean: `null`, arrays and objects are refused (MongoDB accepts them, with
//! rules — `{"$gte": null}` matches missing fields — that are not worth their surprise here).
//!
//! # Bounds
//!
//! [`Filter::parse`] refuses, with a message naming where (`where.$or.1.level.$gt: expects a
//! number, string or boolean`):
//!
//! * more than [`MAX_FILTER_NODES`] nodes — each condition (a field path, `$and`, `$or`), each
//!   operator (an implicit `$eq` is one), each filter in an `$and`/`$or` and each `$in`/`$nin`
//!   value counts one (so `{"a": {"$in": [...]}}` holds at most 254 values);
//! * `$and`/`$or` nested more than [`MAX_FILTER_DEPTH`] deep;
//! * a path of more than [`MAX_PATH_SEGMENTS`] segments, an `$in`/`$nin` of more than
//!   [`MAX_IN_VALUES`] values;
//! * an operand (a literal) nested more than 64 arrays/objects deep.
//!
//! So [`Filter::matches`] costs O(nodes × the values a path resolves to) — each bounded by the
//! document — recurses at most 2 × [`MAX_PATH_SEGMENTS`] deep walking a path, 64 deep comparing
//! values and [`MAX_FILTER_DEPTH`] deep in `$and`/`$or`, and never panics.
//!
//! # Deviations from MongoDB, in one place
//!
//! * Object equality ignores key order (MongoDB compares BSON objects field by field, in order).
//! * Comparison operands are numbers, strings or booleans only; `$exists` takes a boolean only
//!   (MongoDB also takes numbers); only the operators above exist.
//!
//! Kept from MongoDB although they surprise: a numeric segment on an array of objects is also a
//! key of each object, so `{"a.0.b": null}` matches `{"a": [{"b": 1}]}` (and `{"a.0.b": {"$ne":
//! null}}` does not); an array reached by a final index from an array is not opened (`{"a.0": 1}`
//! does not match `{"a": [[1, 2]]}`, `{"a.0": [1, 2]}` does).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

/// The most nodes a filter may have: conditions, operators and array items (see the module docs).
pub const MAX_FILTER_NODES: usize = 256;
/// The deepest nesting of `$and`/`$or`.
pub const MAX_FILTER_DEPTH: usize = 8;
/// The most segments of a field path.
pub const MAX_PATH_SEGMENTS: usize = 16;
/// The most values of one `$in`/`$nin`.
pub const MAX_IN_VALUES: usize = 256;
/// The deepest nesting of arrays/objects in an operand (the documents' own limit).
const MAX_VALUE_DEPTH: usize = 64;

/// A parsed, validated filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// ANDed; sorted by key, so two filters differing only in key order are equal.
    conditions: Vec<Condition>,
}

/// Why a filter was refused; the message names where (e.g. "where.level.$gt: expects a number,
/// string or boolean" or "where.$or: expects a non-empty array of filters").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// One key of a filter.
#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Field { path: Path, ops: Vec<Op> },
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

/// A field path: as written, and split.
#[derive(Debug, Clone, PartialEq)]
struct Path {
    dotted: String,
    segments: Vec<String>,
}

/// One operator; operands are stored with their objects' keys sorted.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(Value),
    Ne(Value),
    Cmp(Cmp, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// What walking a path reaches.
#[derive(Debug, Clone, Copy)]
enum Leaf<'a> {
    Missing,
    Value(&'a Value),
}

impl Filter {
    /// Parses `{"level": {"$gte": 3}, "owner.name": "ann", "$or": [...]}`; messages are prefixed
    /// with "where".
    pub fn parse(v: &Value) -> Result<Filter, FilterError> {
        Parser { nodes: 0 }.filter(v, "where", 0)
    }

    /// Whether a document body matches.
    pub fn matches(&self, body: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| c.matches(body))
    }

    /// Whether a change at RFC 6901 JSON pointer `pointer` (`""` is the root, `/a/b`, with `~0`
    /// `~1` escapes) could change [`Filter::matches`]: whether some path the filter reads and the
    /// pointer's segments are, segment by segment, one a prefix of the other — where a pointer
    /// segment that is an array position (digits, or `-`) may also stand for the implicit array
    /// traversal the path does not spell (`/items/3/name` touches `items.name`; `/tags/0` touches
    /// `tags.2`, as removing or inserting at 0 moves the element at 2). The root touches every
    /// path; a filter reading no path (`{}`) is touched by nothing. A pointer that is not valid
    /// RFC 6901 touches everything (the safe answer).
    pub fn touched_by(&self, pointer: &str) -> bool {
        let Some(segments) = pointer_segments(pointer) else {
            return true;
        };
        self.any_path(&mut |path| touches(path, &segments))
    }

    /// A canonical JSON form (keys sorted, implicit equality written as `{"$eq": v}`): two
    /// filters with the same canonical form always match the same documents; a key to share
    /// evaluation between sessions with identical filters. It is itself a filter, which parses
    /// back to an equal one.
    pub fn canonical(&self) -> String {
        self.canonical_value().to_string()
    }

    fn canonical_value(&self) -> Value {
        let mut out = Map::new();
        for c in &self.conditions {
            out.insert(c.key().to_owned(), c.canonical());
        }
        Value::Object(out)
    }

    /// Whether `f` holds for some field path the filter reads (through `$and`/`$or`).
    fn any_path(&self, f: &mut dyn FnMut(&[String]) -> bool) -> bool {
        self.conditions.iter().any(|c| match c {
            Condition::Field { path, .. } => f(&path.segments),
            Condition::And(fs) | Condition::Or(fs) => fs.iter().any(|sub| sub.any_path(f)),
        })
    }
}

impl Condition {
    fn key(&self) -> &str {
        match self {
            Condition::Field { path, .. } => &path.dotted,
            Condition::And(_) => "$and",
            Condition::Or(_) => "$or",
        }
    }

    fn matches(&self, body: &Map<String, Value>) -> bool {
        match self {
            Condition::Field { path, ops } => ops.iter().all(|op| op.matches(body, &path.segments)),
            Condition::And(fs) => fs.iter().all(|f| f.matches(body)),
            Condition::Or(fs) => fs.iter().any(|f| f.matches(body)),
        }
    }

    fn canonical(&self) -> Value {
        match self {
            Condition::Field { ops, .. } => {
                let mut out = Map::new();
                for op in ops {
                    out.insert(op.name().to_owned(), op.operand());
                }
                Value::Object(out)
            }
            Condition::And(fs) | Condition::Or(fs) => {
                Value::Array(fs.iter().map(Filter::canonical_value).collect())
            }
        }
    }
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Eq(_) => "$eq",
            Op::Ne(_) => "$ne",
            Op::Cmp(Cmp::Gt, _) => "$gt",
            Op::Cmp(Cmp::Gte, _) => "$gte",
            Op::Cmp(Cmp::Lt, _) => "$lt",
            Op::Cmp(Cmp::Lte, _) => "$lte",
            Op::In(_) => "$in",
            Op::Nin(_) => "$nin",
            Op::Exists(_) => "$exists",
        }
    }

    fn operand(&self) -> Value {
        match self {
            Op::Eq(v) | Op::Ne(v) | Op::Cmp(_, v) => v.clone(),
            Op::In(vs) | Op::Nin(vs) => Value::Array(vs.clone()),
            Op::Exists(b) => Value::Bool(*b),
        }
    }

    fn matches(&self, body: &Map<String, Value>, path: &[String]) -> bool {
        let any = |pred: &dyn Fn(Leaf) -> bool| resolve(body, path, &mut |leaf| pred(leaf));
        match self {
            Op::Eq(v) => any(&|leaf| leaf_equals(leaf, v)),
            Op::Ne(v) => !any(&|leaf| leaf_equals(leaf, v)),
            Op::Cmp(cmp, v) => any(&|leaf| cmp.holds(leaf, v)),
            Op::In(vs) => any(&|leaf| vs.iter().any(|v| leaf_equals(leaf, v))),
            Op::Nin(vs) => !any(&|leaf| vs.iter().any(|v| leaf_equals(leaf, v))),
            Op::Exists(wanted) => any(&|leaf| matches!(leaf, Leaf::Value(_))) == *wanted,
        }
    }
}

impl Cmp {
    fn holds(self, leaf: Leaf, operand: &Value) -> bool {
        let Leaf::Value(v) = leaf else {
            return false;
        };
        let Some(ord) = order(v, operand) else {
            return false;
        };
        match self {
            Cmp::Gt => ord == Ordering::Greater,
            Cmp::Gte => ord != Ordering::Less,
            Cmp::Lt => ord == Ordering::Less,
            Cmp::Lte => ord != Ordering::Greater,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct Parser {
    nodes: usize,
}

fn err(at: &str, what: impl std::fmt::Display) -> FilterError {
    FilterError(format!("{at}: {what}"))
}

impl Parser {
    fn count(&mut self, n: usize) -> Result<(), FilterError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_FILTER_NODES {
            return Err(err(
                "where",
                format_args!("more than {MAX_FILTER_NODES} nodes (conditions, operators and array items)"),
            ));
        }
        Ok(())
    }

    /// A filter object at `at`, inside `depth` levels of `$and`/`$or`.
    fn filter(&mut self, v: &Value, at: &str, depth: usize) -> Result<Filter, FilterError> {
        let Value::Object(obj) = v else {
            return Err(err(at, "expects an object"));
        };
        let mut conditions = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            self.count(1)?;
            conditions.push(self.condition(key, value, &format!("{at}.{key}"), depth)?);
        }
        conditions.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(Filter { conditions })
    }

    fn condition(&mut self, key: &str, v: &Value, at: &str, depth: usize) -> Result<Condition, FilterError> {
        match key {
            "$and" => Ok(Condition::And(self.filters(v, at, depth)?)),
            "$or" => Ok(Condition::Or(self.filters(v, at, depth)?)),
            _ if key.starts_with('$') => Err(err(
                at,
                "unknown operator (a filter's keys are field paths, $and and $or)",
            )),
            _ => {
                let path = Path::parse(key, at)?;
                let ops = self.ops(v, at)?;
                Ok(Condition::Field { path, ops })
            }
        }
    }

    /// The array of an `$and`/`$or`.
    fn filters(&mut self, v: &Value, at: &str, depth: usize) -> Result<Vec<Filter>, FilterError> {
        let items = match v {
            Value::Array(items) if !items.is_empty() => items,
            _ => return Err(err(at, "expects a non-empty array of filters")),
        };
        if depth >= MAX_FILTER_DEPTH {
            return Err(err(
                at,
                format_args!("$and/$or nested deeper than {MAX_FILTER_DEPTH}"),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            self.count(1)?;
            out.push(self.filter(item, &format!("{at}.{i}"), depth + 1)?);
        }
        Ok(out)
    }

    /// A field's value: an operator object, or a literal for an implicit `$eq`.
    fn ops(&mut self, v: &Value, at: &str) -> Result<Vec<Op>, FilterError> {
        let Some(obj) = operator_object(v, at)? else {
            self.count(1)?;
            return Ok(vec![Op::Eq(literal(v, at)?)]);
        };
        let mut ops = Vec::with_capacity(obj.len());
        for (name, operand) in obj {
            self.count(1)?;
            ops.push(self.op(name, operand, &format!("{at}.{name}"))?);
        }
        ops.sort_by_key(Op::name);
        Ok(ops)
    }

    fn op(&mut self, name: &str, v: &Value, at: &str) -> Result<Op, FilterError> {
        let cmp = |c: Cmp| match v {
            Value::Number(_) | Value::String(_) | Value::Bool(_) => Ok(Op::Cmp(c, v.clone())),
            _ => Err(err(at, "expects a number, string or boolean")),
        };
        match name {
            "$eq" => Ok(Op::Eq(literal(v, at)?)),
            "$ne" => Ok(Op::Ne(literal(v, at)?)),
            "$gt" => cmp(Cmp::Gt),
            "$gte" => cmp(Cmp::Gte),
            "$lt" => cmp(Cmp::Lt),
            "$lte" => cmp(Cmp::Lte),
            "$in" => Ok(Op::In(self.values(v, at)?)),
            "$nin" => Ok(Op::Nin(self.values(v, at)?)),
            "$exists" => match v {
                Value::Bool(b) => Ok(Op::Exists(*b)),
                _ => Err(err(at, "expects a boolean")),
            },
            _ => Err(err(
                at,
                "unknown operator (expected $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin or $exists)",
            )),
        }
    }

    /// The array of an `$in`/`$nin`.
    fn values(&mut self, v: &Value, at: &str) -> Result<Vec<Value>, FilterError> {
        let Value::Array(items) = v else {
            return Err(err(at, "expects an array of values"));
        };
        if items.len() > MAX_IN_VALUES {
            return Err(err(at, format_args!("expects at most {MAX_IN_VALUES} values")));
        }
        self.count(items.len())?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| literal(item, &format!("{at}.{i}")))
            .collect()
    }
}

/// `Some` when `v` is an operator object (non-empty, every key starting with `$`), `None` for a
/// literal; an error when it mixes the two.
fn operator_object<'a>(v: &'a Value, at: &str) -> Result<Option<&'a Map<String, Value>>, FilterError> {
    let Value::Object(obj) = v else {
        return Ok(None);
    };
    let operators = obj.keys().filter(|k| k.starts_with('$')).count();
    match operators {
        0 => Ok(None),
        n if n == obj.len() => Ok(Some(obj)),
        _ => Err(err(
            at,
            "mixes operators and fields (to compare with such an object, use $eq)",
        )),
    }
}

/// An operand, checked for depth, with its objects' keys sorted.
fn literal(v: &Value, at: &str) -> Result<Value, FilterError> {
    if exceeds_depth(v, MAX_VALUE_DEPTH) {
        return Err(err(
            at,
            format_args!("a value nested deeper than {MAX_VALUE_DEPTH} levels"),
        ));
    }
    Ok(sorted(v))
}

/// Whether `v` nests more than `limit` arrays/objects. Iterative: any depth is safe to ask.
fn exceeds_depth(v: &Value, limit: usize) -> bool {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth + 1 > limit {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

/// `v` with every object's keys in order (recursion bounded by [`literal`]'s depth check).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let by_key: BTreeMap<&String, &Value> = o.iter().collect();
            Value::Object(by_key.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        _ => v.clone(),
    }
}

impl Path {
    fn parse(key: &str, at: &str) -> Result<Path, FilterError> {
        if key.is_empty() {
            return Err(err(at, "a field path must not be empty"));
        }
        if key.split('.').count() > MAX_PATH_SEGMENTS {
            return Err(err(
                at,
                format_args!("a field path has more than {MAX_PATH_SEGMENTS} segments"),
            ));
        }
        let mut segments = Vec::new();
        for segment in key.split('.') {
            if segment.is_empty() {
                return Err(err(at, "a field path's segments must not be empty"));
            }
            if segment.starts_with('$') {
                return Err(err(at, "a field path's segments must not start with '$'"));
            }
            segments.push(segment.to_owned());
        }
        Ok(Path {
            dotted: key.to_owned(),
            segments,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Resolving paths (the module docs' rules). Each walker calls `f` on what it reaches and stops as
// soon as `f` returns true, returning true.

fn resolve(body: &Map<String, Value>, path: &[String], f: &mut dyn FnMut(Leaf) -> bool) -> bool {
    match path.split_first() {
        Some((first, rest)) => match body.get(first) {
            Some(v) => walk(v, rest, f),
            None => f(Leaf::Missing),
        },
        // Parsing never makes an empty path; nothing is reached.
        None => false,
    }
}

/// From any value.
fn walk(v: &Value, path: &[String], f: &mut dyn FnMut(Leaf) -> bool) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return resolved(v, f);
    };
    match v {
        Value::Object(o) => match o.get(first) {
            Some(child) => walk(child, rest, f),
            None => f(Leaf::Missing),
        },
        Value::Array(items) => traverse(items, first, rest, f),
        _ => f(Leaf::Missing),
    }
}

/// The end of a path: the value, and an array's elements first.
fn resolved(v: &Value, f: &mut dyn FnMut(Leaf) -> bool) -> bool {
    if let Value::Array(items) = v {
        if items.iter().any(|item| f(Leaf::Value(item))) {
            return true;
        }
    }
    f(Leaf::Value(v))
}

/// An array met with segments `first.rest` left: the implicit traversal and the index.
fn traverse(items: &[Value], first: &str, rest: &[String], f: &mut dyn FnMut(Leaf) -> bool) -> bool {
    let index = array_index(first);
    for (i, item) in items.iter().enumerate() {
        if let Value::Object(o) = item {
            let found = match o.get(first) {
                Some(child) => walk(child, rest, f),
                None => f(Leaf::Missing),
            };
            if found {
                return true;
            }
        }
        if index != Some(i) {
            continue;
        }
        let found = match (rest.split_first(), item) {
            (None, _) => f(Leaf::Value(item)),
            (Some(_), Value::Object(_)) => walk(item, rest, f),
            (Some((next, after)), Value::Array(inner)) => traverse(inner, next, after, f),
            (Some(_), _) => false,
        };
        if found {
            return true;
        }
    }
    false
}

/// `s` as an array index: digits without a leading zero (MongoDB compares the segment with the
/// element's position written in decimal).
fn array_index(s: &str) -> Option<usize> {
    let canonical = s == "0" || (!s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing values

fn leaf_equals(leaf: Leaf, operand: &Value) -> bool {
    match leaf {
        Leaf::Missing => operand.is_null(),
        Leaf::Value(v) => equals(v, operand),
    }
}

/// JSON equality, numbers by value and objects whatever their key order. Recursion is bounded by
/// the shallower side (an operand: 64 levels).
fn equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equals(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| equals(p, q)))
        }
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// Two values of the same ordered type (number, string, boolean); `None` across types.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Numbers by value, exactly: integers as integers (i64 and u64 both fit an i128), an integer and
/// a float without rounding the integer.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => compare_integer_float(x, b.as_f64()?),
        (None, Some(y)) => compare_integer_float(y, a.as_f64()?).map(Ordering::reverse),
        (None, None) => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn integer(n: &Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// `i` against `f`, exactly (`None` for NaN, which JSON cannot carry anyway).
fn compare_integer_float(i: i128, f: f64) -> Option<Ordering> {
    // 2^127: every float below it in magnitude truncates to an i128 exactly.
    const LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    if f.is_nan() {
        return None;
    }
    if f >= LIMIT {
        return Some(Ordering::Less);
    }
    if f < -LIMIT {
        return Some(Ordering::Greater);
    }
    let whole = f.trunc();
    // In range (checked above), so the cast is exact.
    let by_whole = i.cmp(&(whole as i128));
    if by_whole != Ordering::Equal {
        return Some(by_whole);
    }
    // The same whole part: the fraction decides.
    whole.partial_cmp(&f)
}

// ---------------------------------------------------------------------------------------------
// JSON pointers

/// A pointer's unescaped segments; `None` when it is not RFC 6901.
fn pointer_segments(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    pointer.strip_prefix('/')?.split('/').map(unescape).collect()
}

/// `~1` is `/` and `~0` is `~`; any other `~` is invalid.
fn unescape(segment: &str) -> Option<String> {
    let mut out = String::with_capacity(segment.len());
    let mut chars = segment.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a change at `pointer` can change what `path` resolves to: one is a prefix of the
/// other, segment by segment, where a pointer segment that is an array position may also be
/// skipped (an implicit array traversal, or a position whose insertion or removal moves the
/// element the path names). Tracks the set of path positions every alignment can be at, as bits
/// (a path has at most 16 segments).
fn touches(path: &[String], pointer: &[String]) -> bool {
    let n = path.len();
    let done = 1u32 << n;
    let mut at = 1u32; // position 0
    for segment in pointer {
        if at & done != 0 {
            // The whole path is consumed: the change is inside a value the filter reads.
            return true;
        }
        let position = segment == "-" || (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()));
        let mut next = 0u32;
        for (i, name) in path.iter().enumerate().filter(|(i, _)| at & (1 << i) != 0) {
            if name == segment {
                next |= 1 << (i + 1);
            }
            // The body is an object: only a value below it can be an array.
            if position && i > 0 {
                next |= 1 << i;
            }
        }
        if next == 0 {
            return false;
        }
        at = next;
    }
    // The pointer is consumed with an alignment alive: it names the path or a value above it.
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Filter {
        let v: Value = serde_json::from_str(s).expect("test filter is JSON");
        Filter::parse(&v).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn body(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s).expect("test document is JSON") {
            Value::Object(o) => o,
            _ => panic!("{s}: not an object"),
        }
    }

    /// (filter, document, expected).
    const CASES: &[(&str, &str, bool)] = &[
        // The empty filter.
        (r#"{}"#, r#"{}"#, true),
        (r#"{}"#, r#"{"a":1}"#, true),
        // Implicit equality with scalars.
        (r#"{"a":1}"#, r#"{"a":1}"#, true),
        (r#"{"a":1}"#, r#"{"a":2}"#, false),
        (r#"{"a":1}"#, r#"{"a":1.0}"#, true),
        (r#"{"a":1.0}"#, r#"{"a":1}"#, true),
        (r#"{"a":1}"#, r#"{"a":"1"}"#, false),
        (r#"{"a":1}"#, r#"{}"#, false),
        (r#"{"a":1}"#, r#"{"b":1}"#, false),
        (r#"{"a":"x"}"#, r#"{"a":"x"}"#, true),
        (r#"{"a":"x"}"#, r#"{"a":"X"}"#, false),
        (r#"{"a":true}"#, r#"{"a":true}"#, true),
        (r#"{"a":true}"#, r#"{"a":1}"#, false),
        (r#"{"a":0}"#, r#"{"a":false}"#, false),
        (r#"{"a":""}"#, r#"{"a":null}"#, false),
        (r#"{"a":-0.0}"#, r#"{"a":0}"#, true),
        // null: present as null, or missing.
        (r#"{"a":null}"#, r#"{}"#, true),
        (r#"{"a":null}"#, r#"{"a":null}"#, true),
        (r#"{"a":null}"#, r#"{"a":0}"#, false),
        (r#"{"a":null}"#, r#"{"a":[1,null]}"#, true),
        (r#"{"a":null}"#, r#"{"a":[]}"#, false),
        (r#"{"a":null}"#, r#"{"a":{}}"#, false),
        (r#"{"a.b":null}"#, r#"{"a":5}"#, true),
        (r#"{"a.b":null}"#, r#"{"a":null}"#, true),
        (r#"{"a.b":null}"#, r#"{"a":{"c":1}}"#, true),
        (r#"{"a.b":null}"#, r#"{"a":[{"b":1},{"c":2}]}"#, true),
        (r#"{"a.b":null}"#, r#"{"a":[{"b":1}]}"#, false),
        (r#"{"a.b":null}"#, r#"{"a":[1,2]}"#, false),
        (r#"{"a.b":null}"#, r#"{"a":[]}"#, false),
        (r#"{"a":{"$ne":null}}"#, r#"{}"#, false),
        (r#"{"a":{"$ne":null}}"#, r#"{"a":0}"#, true),
        (r#"{"a":{"$ne":null}}"#, r#"{"a":[1,null]}"#, false),
        (r#"{"a.b":{"$ne":null}}"#, r#"{"a":[{"b":1},{"c":2}]}"#, false),
        // Object literals: whole equality, key order ignored, numbers by value inside.
        (r#"{"a":{"x":1,"y":2}}"#, r#"{"a":{"y":2,"x":1}}"#, true),
        (r#"{"a":{"x":1}}"#, r#"{"a":{"x":1,"y":2}}"#, false),
        (r#"{"a":{"x":1,"y":2}}"#, r#"{"a":{"x":1}}"#, false),
        (r#"{"a":{}}"#, r#"{"a":{}}"#, true),
        (r#"{"a":{}}"#, r#"{"a":{"x":1}}"#, false),
        (r#"{"a":{}}"#, r#"{}"#, false),
        (r#"{"a":{"x":{"y":1.0}}}"#, r#"{"a":{"x":{"y":1}}}"#, true),
        (r#"{"a":{"x":[1,{"z":2}]}}"#, r#"{"a":{"x":[1,{"z":2.0}]}}"#, true),
        (r#"{"a":{"x":1}}"#, r#"{"a":[{"x":1}]}"#, true),
        (r#"{"a":{"x":null}}"#, r#"{"a":{}}"#, false),
        // Arrays of scalars: an element, or the whole array.
        (r#"{"tags":"x"}"#, r#"{"tags":["x","y"]}"#, true),
        (r#"{"tags":"z"}"#, r#"{"tags":["x","y"]}"#, false),
        (r#"{"tags":["x","y"]}"#, r#"{"tags":["x","y"]}"#, true),
        (r#"{"tags":["y","x"]}"#, r#"{"tags":["x","y"]}"#, false),
        (r#"{"tags":["x"]}"#, r#"{"tags":["x","y"]}"#, false),
        (r#"{"tags":["x"]}"#, r#"{"tags":[["x"],"y"]}"#, true),
        (r#"{"tags":"x"}"#, r#"{"tags":[["x"]]}"#, false),
        (r#"{"tags":[]}"#, r#"{"tags":[]}"#, true),
        (r#"{"tags":[]}"#, r#"{"tags":[[]]}"#, true),
        (r#"{"tags":[]}"#, r#"{}"#, false),
        (r#"{"tags":[1]}"#, r#"{"tags":[1.0]}"#, true),
        (r#"{"tags":"x"}"#, r#"{"tags":"x"}"#, true),
        // Nested paths.
        (r#"{"owner.name":"ann"}"#, r#"{"owner":{"name":"ann"}}"#, true),
        (r#"{"owner.name":"ann"}"#, r#"{"owner":{"name":"bob"}}"#, false),
        (r#"{"owner.name":"ann"}"#, r#"{"owner":"ann"}"#, false),
        (r#"{"owner.name":"ann"}"#, r#"{"owner.name":"ann"}"#, false),
        (r#"{"a.b.c":1}"#, r#"{"a":{"b":{"c":1}}}"#, true),
        (r#"{"a.b.c":1}"#, r#"{"a":{"b":{"c":2}}}"#, false),
        (r#"{"a.b":{"c":1}}"#, r#"{"a":{"b":{"c":1}}}"#, true),
        // Arrays of objects: the implicit traversal.
        (
            r#"{"items.name":"x"}"#,
            r#"{"items":[{"name":"y"},{"name":"x"}]}"#,
            true,
        ),
        (
            r#"{"items.name":"z"}"#,
            r#"{"items":[{"name":"y"},{"name":"x"}]}"#,
            false,
        ),
        (r#"{"items.name":"x"}"#, r#"{"items":[1,{"name":"x"}]}"#, true),
        (r#"{"items.name":"x"}"#, r#"{"items":[[{"name":"x"}]]}"#, false),
        (r#"{"items.tags":"t"}"#, r#"{"items":[{"tags":["s","t"]}]}"#, true),
        (
            r#"{"items.tags":["s","t"]}"#,
            r#"{"items":[{"tags":["s","t"]}]}"#,
            true,
        ),
        (r#"{"a.b.c":1}"#, r#"{"a":[{"b":[{"c":1}]}]}"#, true),
        (r#"{"a.b.c":1}"#, r#"{"a":[{"b":{"c":[0,1]}}]}"#, true),
        // Numeric segments.
        (r#"{"tags.0":"x"}"#, r#"{"tags":["x","y"]}"#, true),
        (r#"{"tags.1":"x"}"#, r#"{"tags":["x","y"]}"#, false),
        (r#"{"tags.1":"y"}"#, r#"{"tags":["x","y"]}"#, true),
        (r#"{"tags.5":"x"}"#, r#"{"tags":["x"]}"#, false),
        (r#"{"tags.5":null}"#, r#"{"tags":["x"]}"#, false),
        (r#"{"a.0":1}"#, r#"{"a":{"0":1}}"#, true),
        (r#"{"a.0":1}"#, r#"{"a":{"1":0}}"#, false),
        (r#"{"a.0.b":1}"#, r#"{"a":[{"b":1}]}"#, true),
        (r#"{"a.0.b":1}"#, r#"{"a":[{"b":2},{"b":1}]}"#, false),
        (r#"{"a.1.b":1}"#, r#"{"a":[{"b":2},{"b":1}]}"#, true),
        (r#"{"a.0":1}"#, r#"{"a":[{"0":1}]}"#, true),
        (r#"{"a.01":1}"#, r#"{"a":[1]}"#, false),
        (r#"{"a.01":1}"#, r#"{"a":[{"01":1}]}"#, true),
        (r#"{"a.0":1}"#, r#"{"a":[[1,2]]}"#, false),
        (r#"{"a.0":[1,2]}"#, r#"{"a":[[1,2]]}"#, true),
        (r#"{"a.0.1":2}"#, r#"{"a":[[1,2]]}"#, true),
        (r#"{"a.0.b":1}"#, r#"{"a":[[{"b":1}]]}"#, true),
        (r#"{"a.0.b":null}"#, r#"{"a":[{"b":1}]}"#, true),
        (r#"{"a.0.b":1}"#, r#"{"a":[5]}"#, false),
        (r#"{"a.1":1}"#, r#"{"a":[1]}"#, false),
        (r#"{"a.0.x":1}"#, r#"{"a":[{"x":[1,2]}]}"#, true),
        // Numbers, exactly.
        (r#"{"n":9007199254740993}"#, r#"{"n":9007199254740992.0}"#, false),
        (r#"{"n":9007199254740992}"#, r#"{"n":9007199254740992.0}"#, true),
        (
            r#"{"n":{"$gt":9007199254740992}}"#,
            r#"{"n":9007199254740993}"#,
            true,
        ),
        (
            r#"{"n":{"$gt":9007199254740992.0}}"#,
            r#"{"n":9007199254740993}"#,
            true,
        ),
        (
            r#"{"n":18446744073709551615}"#,
            r#"{"n":18446744073709551615}"#,
            true,
        ),
        (r#"{"n":{"$gt":-1}}"#, r#"{"n":18446744073709551615}"#, true),
        (r#"{"n":{"$lt":0}}"#, r#"{"n":18446744073709551615}"#, false),
        (
            r#"{"n":{"$gt":9223372036854775807}}"#,
            r#"{"n":9223372036854775808}"#,
            true,
        ),
        (r#"{"n":{"$gt":1.5}}"#, r#"{"n":2}"#, true),
        (r#"{"n":{"$gt":2.5}}"#, r#"{"n":2}"#, false),
        (r#"{"n":{"$lt":-1.5}}"#, r#"{"n":-2}"#, true),
        (r#"{"n":{"$gt":-1.5}}"#, r#"{"n":-1}"#, true),
        (r#"{"n":{"$gte":2.0}}"#, r#"{"n":2}"#, true),
        (r#"{"n":{"$lte":2}}"#, r#"{"n":2.0}"#, true),
        (r#"{"n":{"$gt":1e300}}"#, r#"{"n":9223372036854775807}"#, false),
        (r#"{"n":{"$lt":-1e300}}"#, r#"{"n":-9223372036854775808}"#, false),
        (r#"{"n":{"$lt":1e300}}"#, r#"{"n":18446744073709551615}"#, true),
        (r#"{"n":{"$gt":0.1}}"#, r#"{"n":0.2}"#, true),
        // Order, and type bracketing.
        (r#"{"level":{"$gt":3}}"#, r#"{"level":4}"#, true),
        (r#"{"level":{"$gt":3}}"#, r#"{"level":3}"#, false),
        (r#"{"level":{"$gte":3}}"#, r#"{"level":3}"#, true),
        (r#"{"level":{"$gte":3}}"#, r#"{"level":2}"#, false),
        (r#"{"level":{"$lt":3}}"#, r#"{"level":2}"#, true),
        (r#"{"level":{"$lt":3}}"#, r#"{"level":3}"#, false),
        (r#"{"level":{"$lte":3}}"#, r#"{"level":3}"#, true),
        (r#"{"level":{"$lte":3}}"#, r#"{"level":4}"#, false),
        (r#"{"level":{"$gt":3}}"#, r#"{}"#, false),
        (r#"{"level":{"$lt":3}}"#, r#"{}"#, false),
        (r#"{"level":{"$lt":3}}"#, r#"{"level":null}"#, false),
        (r#"{"level":{"$gt":3}}"#, r#"{"level":"4"}"#, false),
        (r#"{"level":{"$lt":"a"}}"#, r#"{"level":1}"#, false),
        (r#"{"name":{"$gt":"b"}}"#, r#"{"name":"c"}"#, true),
        (r#"{"name":{"$gt":"b"}}"#, r#"{"name":"B"}"#, false),
        (r#"{"name":{"$gte":"ab"}}"#, r#"{"name":"ab"}"#, true),
        (r#"{"name":{"$lt":"ab"}}"#, r#"{"name":"a"}"#, true),
        (r#"{"name":{"$gt":"z"}}"#, r#"{"name":"é"}"#, true),
        (r#"{"name":{"$lt":"2"}}"#, r#"{"name":"10"}"#, true),
        (r#"{"f":{"$gt":false}}"#, r#"{"f":true}"#, true),
        (r#"{"f":{"$lt":true}}"#, r#"{"f":false}"#, true),
        (r#"{"f":{"$gt":true}}"#, r#"{"f":true}"#, false),
        (r#"{"f":{"$gte":true}}"#, r#"{"f":true}"#, true),
        (r#"{"f":{"$gt":0}}"#, r#"{"f":true}"#, false),
        (r#"{"level":{"$gt":3}}"#, r#"{"level":[1,5]}"#, true),
        (r#"{"level":{"$gt":3}}"#, r#"{"level":[1,2]}"#, false),
        (r#"{"level":{"$gt":3,"$lt":5}}"#, r#"{"level":[1,6]}"#, true),
        (r#"{"level":{"$gt":3,"$lt":5}}"#, r#"{"level":6}"#, false),
        (r#"{"level":{"$gt":3,"$lt":5}}"#, r#"{"level":4}"#, true),
        (r#"{"level":{"$gt":3}}"#, r#"{"level":[[5]]}"#, false),
        (r#"{"level":{"$gt":3}}"#, r#"{"level":{"x":5}}"#, false),
        (
            r#"{"items.n":{"$gte":2}}"#,
            r#"{"items":[{"n":1},{"n":2}]}"#,
            true,
        ),
        (
            r#"{"items.n":{"$gt":2}}"#,
            r#"{"items":[{"n":1},{"n":2}]}"#,
            false,
        ),
        // $ne.
        (r#"{"a":{"$ne":1}}"#, r#"{"a":2}"#, true),
        (r#"{"a":{"$ne":1}}"#, r#"{"a":1}"#, false),
        (r#"{"a":{"$ne":1}}"#, r#"{}"#, true),
        (r#"{"a":{"$ne":1}}"#, r#"{"a":[1,2]}"#, false),
        (r#"{"a":{"$ne":1}}"#, r#"{"a":[2,3]}"#, true),
        (r#"{"a":{"$ne":1}}"#, r#"{"a":1.0}"#, false),
        (r#"{"a":{"$ne":[1,2]}}"#, r#"{"a":[1,2]}"#, false),
        (r#"{"a":{"$ne":{"x":1}}}"#, r#"{"a":{"x":2}}"#, true),
        (r#"{"a.b":{"$ne":1}}"#, r#"{"a":[{"b":2},{"b":1}]}"#, false),
        // $eq, written out.
        (r#"{"a":{"$eq":1}}"#, r#"{"a":1}"#, true),
        (r#"{"a":{"$eq":1}}"#, r#"{"a":[3,1]}"#, true),
        (r#"{"a":{"$eq":{"$gt":1}}}"#, r#"{"a":{"$gt":1}}"#, true),
        (r#"{"a":{"$eq":{"$gt":1}}}"#, r#"{"a":2}"#, false),
        (r#"{"a":{"$eq":null}}"#, r#"{}"#, true),
        (r#"{"a":{"$eq":[1]}}"#, r#"{"a":[1]}"#, true),
        (r#"{"a":{"$eq":{}}}"#, r#"{"a":{}}"#, true),
        // $in and $nin.
        (r#"{"a":{"$in":[1,2]}}"#, r#"{"a":2}"#, true),
        (r#"{"a":{"$in":[1,2]}}"#, r#"{"a":3}"#, false),
        (r#"{"a":{"$in":[1,2]}}"#, r#"{}"#, false),
        (r#"{"a":{"$in":[]}}"#, r#"{"a":1}"#, false),
        (r#"{"a":{"$in":[null]}}"#, r#"{}"#, true),
        (r#"{"a":{"$in":[null]}}"#, r#"{"a":null}"#, true),
        (r#"{"a":{"$in":[1]}}"#, r#"{"a":[0,1]}"#, true),
        (r#"{"a":{"$in":[[0,1]]}}"#, r#"{"a":[0,1]}"#, true),
        (r#"{"a":{"$in":["x",2.0]}}"#, r#"{"a":2}"#, true),
        (r#"{"a":{"$in":[{"k":1}]}}"#, r#"{"a":[{"k":1.0}]}"#, true),
        (r#"{"a":{"$nin":[1,2]}}"#, r#"{"a":3}"#, true),
        (r#"{"a":{"$nin":[1,2]}}"#, r#"{"a":1}"#, false),
        (r#"{"a":{"$nin":[1,2]}}"#, r#"{}"#, true),
        (r#"{"a":{"$nin":[null]}}"#, r#"{}"#, false),
        (r#"{"a":{"$nin":[]}}"#, r#"{}"#, true),
        (r#"{"a":{"$nin":[1]}}"#, r#"{"a":[2,1]}"#, false),
        (r#"{"a":{"$nin":[1]}}"#, r#"{"a":[2,3]}"#, true),
        // $exists.
        (r#"{"a":{"$exists":true}}"#, r#"{"a":null}"#, true),
        (r#"{"a":{"$exists":true}}"#, r#"{"a":0}"#, true),
        (r#"{"a":{"$exists":true}}"#, r#"{}"#, false),
        (r#"{"a":{"$exists":false}}"#, r#"{}"#, true),
        (r#"{"a":{"$exists":false}}"#, r#"{"a":null}"#, false),
        (
            r#"{"a.b":{"$exists":true}}"#,
            r#"{"a":[{"c":1},{"b":null}]}"#,
            true,
        ),
        (r#"{"a.b":{"$exists":false}}"#, r#"{"a":[{"c":1}]}"#, true),
        (r#"{"a.b":{"$exists":true}}"#, r#"{"a":5}"#, false),
        (r#"{"a.b":{"$exists":false}}"#, r#"{"a":[1,2]}"#, true),
        (r#"{"a":{"$exists":true}}"#, r#"{"a":[]}"#, true),
        (r#"{"a.0":{"$exists":true}}"#, r#"{"a":[]}"#, false),
        (r#"{"a.0":{"$exists":true}}"#, r#"{"a":[null]}"#, true),
        (r#"{"a":{"$exists":true,"$ne":null}}"#, r#"{"a":null}"#, false),
        (r#"{"a":{"$exists":true,"$ne":null}}"#, r#"{"a":1}"#, true),
        // Several keys: AND.
        (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2}"#, true),
        (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":3}"#, false),
        (r#"{"a":1,"b":2}"#, r#"{"a":1}"#, false),
        (r#"{"a":1,"a.b":null}"#, r#"{"a":1}"#, true),
        // $and, $or.
        (r#"{"$and":[{"a":1},{"b":2}]}"#, r#"{"a":1,"b":2}"#, true),
        (r#"{"$and":[{"a":1},{"b":2}]}"#, r#"{"a":1}"#, false),
        (r#"{"$or":[{"a":1},{"b":2}]}"#, r#"{"b":2}"#, true),
        (r#"{"$or":[{"a":1},{"b":2}]}"#, r#"{"a":1}"#, true),
        (r#"{"$or":[{"a":1},{"b":2}]}"#, r#"{"a":2,"b":1}"#, false),
        (r#"{"$or":[{"a":1},{"b":2}]}"#, r#"{}"#, false),
        (r#"{"$or":[{}]}"#, r#"{"z":1}"#, true),
        (r#"{"$and":[{}]}"#, r#"{}"#, true),
        (
            r#"{"$or":[{"a":1},{"$and":[{"b":2},{"c":3}]}]}"#,
            r#"{"b":2,"c":3}"#,
            true,
        ),
        (
            r#"{"$or":[{"a":1},{"$and":[{"b":2},{"c":3}]}]}"#,
            r#"{"b":2}"#,
            false,
        ),
        (r#"{"a":1,"$or":[{"b":1},{"c":1}]}"#, r#"{"a":1,"c":1}"#, true),
        (r#"{"a":1,"$or":[{"b":1},{"c":1}]}"#, r#"{"a":2,"c":1}"#, false),
        (
            r#"{"$and":[{"a":{"$gt":1}},{"a":{"$lt":3}}]}"#,
            r#"{"a":[0,5]}"#,
            true,
        ),
        (
            r#"{"$or":[{"a":{"$exists":false}},{"a":null}]}"#,
            r#"{"a":null}"#,
            true,
        ),
        (
            r#"{"$or":[{"a":{"$exists":false}},{"a":{"$gt":5}}]}"#,
            r#"{"a":3}"#,
            false,
        ),
        (
            r#"{"$and":[{"$or":[{"a":1},{"a":2}]},{"$or":[{"b":1},{"b":2}]}]}"#,
            r#"{"a":2,"b":1}"#,
            true,
        ),
        (
            r#"{"$and":[{"$or":[{"a":1},{"a":2}]},{"$or":[{"b":1},{"b":2}]}]}"#,
            r#"{"a":2,"b":3}"#,
            false,
        ),
        (r#"{"$and":[{"a":1}],"$or":[{"b":1}]}"#, r#"{"a":1,"b":1}"#, true),
    ];

    #[test]
    fn matches_the_table() {
        assert!(CASES.len() >= 120, "{} cases", CASES.len());
        let mut failures = Vec::new();
        for &(filter, doc, expected) in CASES {
            if parse(filter).matches(&body(doc)) != expected {
                failures.push(format!("{filter} on {doc}: expected {expected}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn canonical_form_matches_like_the_original() {
        for &(filter, doc, expected) in CASES {
            let f = parse(filter);
            let again = parse(&f.canonical());
            assert_eq!(again, f, "{filter}: {}", f.canonical());
            assert_eq!(again.canonical(), f.canonical(), "{filter}");
            assert_eq!(
                again.matches(&body(doc)),
                expected,
                "{filter} as {} on {doc}",
                f.canonical()
            );
        }
    }

    /// (filter, a substring its error must contain).
    const INVALID: &[(&str, &str)] = &[
        (r#"1"#, "where: expects an object"),
        (r#"[]"#, "where: expects an object"),
        (r#"null"#, "where: expects an object"),
        (r#""a""#, "where: expects an object"),
        (r#"{"$foo":1}"#, "where.$foo: unknown operator"),
        (r#"{"$nor":[{}]}"#, "where.$nor: unknown operator"),
        (r#"{"$where":"1"}"#, "unknown operator"),
        (r#"{"$":1}"#, "where.$: unknown operator"),
        (r#"{"$or":[]}"#, "where.$or: expects a non-empty array of filters"),
        (r#"{"$or":{}}"#, "where.$or: expects a non-empty array of filters"),
        (
            r#"{"$or":{"a":1}}"#,
            "where.$or: expects a non-empty array of filters",
        ),
        (
            r#"{"$and":1}"#,
            "where.$and: expects a non-empty array of filters",
        ),
        (
            r#"{"$and":null}"#,
            "where.$and: expects a non-empty array of filters",
        ),
        (r#"{"$or":[1]}"#, "where.$or.0: expects an object"),
        (r#"{"$or":[{},[]]}"#, "where.$or.1: expects an object"),
        (
            r#"{"$or":[{"a":{"$gt":null}}]}"#,
            "where.$or.0.a.$gt: expects a number, string or boolean",
        ),
        (
            r#"{"$and":[{"$or":[{"b":{"$in":3}}]}]}"#,
            "where.$and.0.$or.0.b.$in: expects an array",
        ),
        (
            r#"{"level":{"$gt":null}}"#,
            "where.level.$gt: expects a number, string or boolean",
        ),
        (
            r#"{"level":{"$gte":[1]}}"#,
            "where.level.$gte: expects a number, string or boolean",
        ),
        (
            r#"{"level":{"$lt":{}}}"#,
            "where.level.$lt: expects a number, string or boolean",
        ),
        (
            r#"{"level":{"$lte":{"a":1}}}"#,
            "where.level.$lte: expects a number, string or boolean",
        ),
        (r#"{"a":{"$in":1}}"#, "where.a.$in: expects an array"),
        (r#"{"a":{"$in":{}}}"#, "where.a.$in: expects an array"),
        (r#"{"a":{"$nin":"x"}}"#, "where.a.$nin: expects an array"),
        (r#"{"a":{"$exists":1}}"#, "where.a.$exists: expects a boolean"),
        (
            r#"{"a":{"$exists":"true"}}"#,
            "where.a.$exists: expects a boolean",
        ),
        (r#"{"a":{"$exists":null}}"#, "where.a.$exists: expects a boolean"),
        (r#"{"a":{"$regex":"x"}}"#, "where.a.$regex: unknown operator"),
        (r#"{"a":{"$not":{"$eq":1}}}"#, "where.a.$not: unknown operator"),
        (
            r#"{"a":{"$elemMatch":{}}}"#,
            "where.a.$elemMatch: unknown operator",
        ),
        (r#"{"a":{"$eq":1,"$size":2}}"#, "where.a.$size: unknown operator"),
        (r#"{"a":{"$gt":1,"b":2}}"#, "where.a: mixes operators and fields"),
        (r#"{"a":{"b":2,"$gt":1}}"#, "where.a: mixes operators and fields"),
        (
            r#"{"owner.name":{"$eq":1,"x":1}}"#,
            "where.owner.name: mixes operators and fields",
        ),
        (r#"{"":1}"#, "where.: a field path must not be empty"),
        (
            r#"{"a..b":1}"#,
            "where.a..b: a field path's segments must not be empty",
        ),
        (r#"{"a.":1}"#, "segments must not be empty"),
        (r#"{".a":1}"#, "segments must not be empty"),
        (
            r#"{"a.$b":1}"#,
            "where.a.$b: a field path's segments must not start with '$'",
        ),
        (r#"{"a.b.$":1}"#, "must not start with '$'"),
        (
            r#"{"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q":1}"#,
            "more than 16 segments",
        ),
    ];

    #[test]
    fn refuses_the_invalid_table() {
        for &(filter, expected) in INVALID {
            let v: Value = serde_json::from_str(filter).expect("test filter is JSON");
            match Filter::parse(&v) {
                Ok(f) => panic!("{filter}: accepted as {}", f.canonical()),
                Err(e) => assert!(
                    e.to_string().contains(expected),
                    "{filter}: {e} lacks {expected:?}"
                ),
            }
        }
    }

    fn nested(levels: usize) -> Value {
        let mut v = json!({"a": 1});
        for i in 0..levels {
            v = if i % 2 == 0 {
                json!({"$or": [v]})
            } else {
                json!({"$and": [v, {}]})
            };
        }
        v
    }

    #[test]
    fn bounds_the_nesting_of_and_or() {
        let deepest = Filter::parse(&nested(MAX_FILTER_DEPTH)).expect("8 levels are allowed");
        assert!(deepest.matches(&body(r#"{"a":1}"#)));
        assert!(!deepest.matches(&body(r#"{"a":2}"#)));
        let e = Filter::parse(&nested(MAX_FILTER_DEPTH + 1)).expect_err("9 levels are not");
        assert!(e.to_string().contains("nested deeper than 8"), "{e}");
        assert!(e.to_string().starts_with("where.$"), "{e}");
    }

    #[test]
    fn bounds_the_nodes() {
        // Each field condition with a literal is 2 nodes.
        let fields = |n: usize| Value::Object((0..n).map(|i| (format!("f{i}"), json!(i))).collect());
        assert!(Filter::parse(&fields(MAX_FILTER_NODES / 2)).is_ok());
        let e = Filter::parse(&fields(MAX_FILTER_NODES / 2 + 1)).expect_err("too many nodes");
        assert!(e.to_string().contains("more than 256 nodes"), "{e}");
        // A condition, its $in and 254 values: 256.
        let within = json!({"a": {"$in": (0..254).collect::<Vec<_>>()}});
        assert!(Filter::parse(&within).is_ok());
        let over = json!({"a": {"$in": (0..255).collect::<Vec<_>>()}});
        assert!(Filter::parse(&over).unwrap_err().to_string().contains("nodes"));
        // $or items count too.
        let ors = json!({"$or": vec![json!({}); MAX_FILTER_NODES]});
        assert!(Filter::parse(&ors).unwrap_err().to_string().contains("nodes"));
    }

    #[test]
    fn bounds_in_values() {
        let e = Filter::parse(&json!({"a": {"$nin": vec![0; MAX_IN_VALUES + 1]}})).unwrap_err();
        assert_eq!(e.to_string(), "where.a.$nin: expects at most 256 values");
    }

    #[test]
    fn bounds_path_segments() {
        let longest = vec!["s"; MAX_PATH_SEGMENTS].join(".");
        let f = Filter::parse(&json!({ longest.clone(): 1 })).expect("16 segments are allowed");
        let mut doc = json!(1);
        for _ in 0..MAX_PATH_SEGMENTS {
            doc = json!({ "s": doc });
        }
        let Value::Object(doc) = doc else { unreachable!() };
        assert!(f.matches(&doc));
        let longer = format!("{longest}.s");
        let e = Filter::parse(&json!({ longer: 1 })).unwrap_err();
        assert!(e.to_string().contains("more than 16 segments"), "{e}");
    }

    #[test]
    fn bounds_operand_depth_and_survives_deep_documents() {
        let deep = |levels: usize| {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "a": v });
            }
            v
        };
        let e = Filter::parse(&json!({"x": deep(65)})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("where.x: a value nested deeper than 64"),
            "{e}"
        );
        let e = Filter::parse(&json!({"x": {"$in": [1, deep(65)]}})).unwrap_err();
        assert!(
            e.to_string().starts_with("where.x.$in.1: a value nested deeper"),
            "{e}"
        );
        let f = Filter::parse(&json!({"x": deep(64)})).expect("64 levels are allowed");
        let mut doc = Map::new();
        doc.insert("x".into(), deep(64));
        assert!(f.matches(&doc));
        // A document deeper than any operand: comparing stops at the operand's depth.
        let mut v = json!([1]);
        for _ in 0..10_000 {
            v = Value::Array(vec![v]);
        }
        let mut doc = Map::new();
        doc.insert("x".into(), v);
        assert!(!f.matches(&doc));
        assert!(Filter::parse(&json!({"x": {"$exists": true}}))
            .unwrap()
            .matches(&doc));
        // Dropping a 10,000-deep Value recurses; leak it, the test only needed it once.
        std::mem::forget(doc);
    }

    #[test]
    fn error_messages_are_exact() {
        let cases = [
            (
                json!({"level": {"$gt": null}}),
                "where.level.$gt: expects a number, string or boolean",
            ),
            (
                json!({"$or": []}),
                "where.$or: expects a non-empty array of filters",
            ),
            (json!(7), "where: expects an object"),
        ];
        for (filter, message) in cases {
            assert_eq!(Filter::parse(&filter), Err(FilterError(message.into())));
        }
    }

    /// (filter, pointer, touched).
    const TOUCHED: &[(&str, &str, bool)] = &[
        (r#"{"level":{"$gt":1}}"#, "", true),
        (r#"{"level":{"$gt":1}}"#, "/level", true),
        (r#"{"level":{"$gt":1}}"#, "/lev", false),
        (r#"{"level":{"$gt":1}}"#, "/levels", false),
        (r#"{"level":{"$gt":1}}"#, "/level/x", true),
        (r#"{"level":{"$gt":1}}"#, "/level/0", true),
        (r#"{"level":{"$gt":1}}"#, "/other", false),
        (r#"{"level":{"$gt":1}}"#, "/other/level", false),
        (r#"{"level":{"$gt":1}}"#, "/0/level", false),
        (r#"{"owner.name":"ann"}"#, "/owner", true),
        (r#"{"owner.name":"ann"}"#, "/owner/name", true),
        (r#"{"owner.name":"ann"}"#, "/owner/name/first", true),
        (r#"{"owner.name":"ann"}"#, "/owner/age", false),
        (r#"{"owner.name":"ann"}"#, "/owner~1name", false),
        (r#"{"owner.name":"ann"}"#, "/name", false),
        (r#"{"items.tag":"x"}"#, "/items/3/tag", true),
        (r#"{"items.tag":"x"}"#, "/items/3", true),
        (r#"{"items.tag":"x"}"#, "/items/-", true),
        (r#"{"items.tag":"x"}"#, "/items/3/other", false),
        (r#"{"items.tag":"x"}"#, "/items/x/tag", false),
        (r#"{"items.tag":"x"}"#, "/items/3/tag/0", true),
        (r#"{"a.b.c":1}"#, "/a/0/b/1/c", true),
        (r#"{"a.b.c":1}"#, "/a/0/b/1/d", false),
        (r#"{"tags.2":"y"}"#, "/tags/2", true),
        (r#"{"tags.2":"y"}"#, "/tags/0", true),
        (r#"{"tags.2":"y"}"#, "/tags", true),
        (r#"{"tags.2":"y"}"#, "/tags/0/x", false),
        (r#"{"tags.2":"y"}"#, "/tags/2/x", true),
        (r#"{"a/b":1}"#, "/a~1b", true),
        (r#"{"a/b":1}"#, "/a/b", false),
        (r#"{"a~b":1}"#, "/a~0b", true),
        (r#"{"a~b":1}"#, "/a~1b", false),
        (r#"{"a~1b":1}"#, "/a~01b", true),
        (r#"{"a":1}"#, "a", true),
        (r#"{"a":1}"#, "/b~2", true),
        (r#"{"a":1}"#, "/b~", true),
        (r#"{"a":1}"#, "/", false),
        (r#"{"level":1}"#, "/-", false),
        (r#"{}"#, "", false),
        (r#"{}"#, "/a", false),
        (r#"{"$or":[{"x.y":1},{"z":2}]}"#, "/x", true),
        (r#"{"$or":[{"x.y":1},{"z":2}]}"#, "/z", true),
        (r#"{"$or":[{"x.y":1},{"z":2}]}"#, "/x/z", false),
        (r#"{"$and":[{"$or":[{"deep.er":1}]}]}"#, "/deep/er/est", true),
        (r#"{"a":1,"b":{"$exists":false}}"#, "/b", true),
        (r#"{"a":1,"b":{"$exists":false}}"#, "/c", false),
    ];

    #[test]
    fn touched_by_the_table() {
        let mut failures = Vec::new();
        for &(filter, pointer, expected) in TOUCHED {
            if parse(filter).touched_by(pointer) != expected {
                failures.push(format!("{filter} by {pointer:?}: expected {expected}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn canonical_is_shared_by_equivalent_writings() {
        let same = [
            (r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#),
            (r#"{"a":1}"#, r#"{"a":{"$eq":1}}"#),
            (r#"{"a":{"$gt":1,"$lt":5}}"#, r#"{"a":{"$lt":5,"$gt":1}}"#),
            (r#"{"a":{"x":1,"y":2}}"#, r#"{"a":{"y":2,"x":1}}"#),
            (
                r#"{"a":{"$in":[{"p":1,"q":2}]}}"#,
                r#"{"a":{"$in":[{"q":2,"p":1}]}}"#,
            ),
            (
                r#"{"$or":[{"a":1,"b":2}],"c":3}"#,
                r#"{"c":{"$eq":3},"$or":[{"b":2,"a":1}]}"#,
            ),
            (r#"{"a":{}}"#, r#"{"a":{"$eq":{}}}"#),
        ];
        for (x, y) in same {
            assert_eq!(parse(x).canonical(), parse(y).canonical(), "{x} / {y}");
            assert_eq!(parse(x), parse(y), "{x} / {y}");
        }
        assert_eq!(
            parse(r#"{"b":2,"a":1}"#).canonical(),
            r#"{"a":{"$eq":1},"b":{"$eq":2}}"#
        );
    }

    #[test]
    fn canonical_differs_for_different_filters() {
        let filters = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a":2}"#,
            r#"{"b":1}"#,
            r#"{"a":"1"}"#,
            r#"{"a":true}"#,
            r#"{"a":null}"#,
            r#"{"a":{}}"#,
            r#"{"a":[]}"#,
            r#"{"a":[1,2]}"#,
            r#"{"a":[2,1]}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a.b":1}"#,
            r#"{"a":{"$ne":1}}"#,
            r#"{"a":{"$gt":1}}"#,
            r#"{"a":{"$gte":1}}"#,
            r#"{"a":{"$lt":1}}"#,
            r#"{"a":{"$lte":1}}"#,
            r#"{"a":{"$in":[1]}}"#,
            r#"{"a":{"$nin":[1]}}"#,
            r#"{"a":{"$exists":true}}"#,
            r#"{"a":{"$exists":false}}"#,
            r#"{"a":{"$eq":{"$gt":1}}}"#,
            r#"{"$or":[{"a":1},{"b":1}]}"#,
            r#"{"$and":[{"a":1},{"b":1}]}"#,
            r#"{"$or":[{"a":1,"b":1}]}"#,
            r#"{"a":1,"b":1}"#,
        ];
        let forms: Vec<String> = filters.iter().map(|f| parse(f).canonical()).collect();
        for (i, x) in forms.iter().enumerate() {
            for (j, y) in forms.iter().enumerate().skip(i + 1) {
                assert_ne!(x, y, "{} / {}", filters[i], filters[j]);
            }
        }
    }

    #[test]
    fn numbers_compare_exactly() {
        use Ordering::*;
        let n = |s: &str| -> Number { serde_json::from_str(s).expect("a number") };
        let cases = [
            ("1", "1.0", Equal),
            ("-1", "-1.0", Equal),
            ("0", "-0.0", Equal),
            ("9007199254740993", "9007199254740992.0", Greater),
            ("9007199254740992", "9007199254740993", Less),
            ("18446744073709551615", "-9223372036854775808", Greater),
            ("18446744073709551615", "1.8446744073709552e19", Less),
            ("-9223372036854775808", "-9.223372036854775808e18", Equal),
            ("-9223372036854775808", "-9.3e18", Greater),
            ("2", "2.5", Less),
            ("-2", "-2.5", Greater),
            ("-2", "-1.5", Less),
            ("1", "1e300", Less),
            ("1", "-1e300", Greater),
            ("0.5", "0.25", Greater),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_numbers(&n(a), &n(b)), Some(expected), "{a} vs {b}");
            assert_eq!(
                compare_numbers(&n(b), &n(a)),
                Some(expected.reverse()),
                "{b} vs {a}"
            );
        }
    }

    #[test]
    fn array_indexes_are_canonical_decimals() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("12"), Some(12));
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index("-1"), None);
        assert_eq!(array_index("1a"), None);
        assert_eq!(array_index("+1"), None);
        assert_eq!(array_index("99999999999999999999999"), None);
    }
}
