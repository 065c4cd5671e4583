//! Scopes — **what of a collection a client follows**, and the rules by which documents move in
//! and out of it. Pure (no I/O): the catch-up planner ([`crate::plan`]) and the live path
//! ([`crate::sync::session`]) ask the same [`Scopes`], so a catch-up and the live stream can never
//! disagree about what a client should hold.
//!
//! A [`Scope`] is a subscription compiled: a collection, narrowed by any of a set of ids, an id
//! prefix, a body [`filter::Filter`] and a window of the newest `latest` documents. A client's
//! scopes of one collection are [`Scopes`]; a document is *in* when any of them takes it (a
//! document two subscriptions match is sent once — the vector, per document, is the union's).
//!
//! **Moving in and out, live** ([`Scopes::live`]), from a committed event and whether the client
//! has the document:
//!
//! | event | decided by | in → | out → |
//! |---|---|---|---|
//! | any, a scope without a filter admits the id | the id alone | forward | — |
//! | create | its body (the create's patch applied to `{}`) | forward | `removed` if the client has it |
//! | delete | whether the client has it | forward the delete | nothing |
//! | update not touching any filter's paths | whether the client has it | forward | nothing |
//! | update touching a filter's paths | the body, read from the store once per event for every session ([`Live::Recheck`], `sync::recheck`) | the event, or a snapshot | `removed` if the client has it |
//!
//! A **window** (`latest: N`) is decided at each catch-up: the N newest documents of the scope by
//! `created_at` (then id) are in, older ones the client still holds are `removed`; while live,
//! documents created that match join it (the window grows until the next catch-up) and none is
//! moved out by age.

pub mod filter;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

use crate::model::{validate_collection, validate_id, Data, Event, Op};
use crate::protocol::Subscription;
use filter::Filter;

pub use filter::FilterError;

/// Most ids one scope may list.
pub const MAX_SCOPE_IDS: usize = 1000;
/// The largest window (`latest`).
pub const MAX_LATEST: u64 = 10_000;

/// A subscription, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// The client's name for it (a collection's name for a whole collection).
    pub id: String,
    pub collection: String,
    ids: Option<Arc<BTreeSet<String>>>,
    prefix: Option<String>,
    filter: Option<Arc<Filter>>,
    latest: Option<usize>,
}

impl Scope {
    /// A whole collection, under its name.
    pub fn whole(collection: &str) -> Scope {
        Scope {
            id: collection.to_string(),
            collection: collection.to_string(),
            ids: None,
            prefix: None,
            filter: None,
            latest: None,
        }
    }

    /// Compiles a subscription; the error says what is wrong with it (`invalid_subscription`).
    pub fn parse(s: &Subscription) -> Result<Scope, String> {
        let spec = match s {
            Subscription::Collection(c) => {
                validate_collection(c).map_err(|e| e.to_string())?;
                return Ok(Scope::whole(c));
            }
            Subscription::Scope(spec) => spec,
        };
        validate_id(&spec.id).map_err(|e| format!("id: {e}"))?;
        validate_collection(&spec.collection).map_err(|e| format!("{}: {e}", spec.id))?;
        let at = |what: &str| format!("{}: {what}", spec.id);
        let ids = match &spec.ids {
            None => None,
            Some(ids) if ids.len() > MAX_SCOPE_IDS => {
                return Err(at(&format!("ids: at most {MAX_SCOPE_IDS}")))
            }
            Some(ids) => {
                for id in ids {
                    validate_id(id).map_err(|e| at(&format!("ids: {id}: {e}")))?;
                }
                Some(Arc::new(ids.iter().cloned().collect()))
            }
        };
        if let Some(p) = &spec.prefix {
            if p.is_empty() || p.len() > crate::model::MAX_DOC_ID {
                return Err(at("prefix: expects 1 to 256 bytes"));
            }
        }
        let filter = match &spec.filter {
            None => None,
            Some(f) => Some(Arc::new(Filter::parse(f).map_err(|e| at(&e.to_string()))?)),
        };
        let latest = match spec.latest {
            None => None,
            Some(n) if n == 0 || n > MAX_LATEST => {
                return Err(at(&format!("latest: expects 1 to {MAX_LATEST}")))
            }
            Some(n) => Some(n as usize),
        };
        Ok(Scope {
            id: spec.id.clone(),
            collection: spec.collection.clone(),
            ids,
            prefix: spec.prefix.clone(),
            filter,
            latest,
        })
    }

    /// Whether it follows the whole collection.
    pub fn is_whole(&self) -> bool {
        self.ids.is_none() && self.prefix.is_none() && self.filter.is_none() && self.latest.is_none()
    }

    /// The documents it is limited to, if it names them (`ids`).
    pub fn ids(&self) -> Option<&BTreeSet<String>> {
        self.ids.as_deref()
    }

    /// Its window's size (`latest`), if it has one.
    pub fn latest(&self) -> Option<usize> {
        self.latest
    }

    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_deref()
    }

    /// Whether the id alone allows the document (ids and prefix).
    pub fn admits_id(&self, id: &str) -> bool {
        self.ids.as_ref().is_none_or(|ids| ids.contains(id))
            && self.prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str()))
    }

    /// Whether the document with this id and body is in the scope (its window aside).
    pub fn matches(&self, id: &str, body: &Data) -> bool {
        self.admits_id(id) && self.filter.as_ref().is_none_or(|f| f.matches(body))
    }
}

/// What the id says of a document, for a catch-up (windows aside, see [`Scopes::windows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// In, whatever its body.
    Yes,
    /// Out, whatever its body.
    No,
    /// In if its body matches ([`Scopes::admits_body`]).
    Body,
}

/// What a live event means for the client's scopes of its collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// The document is (still, or now) in: forward the event.
    In,
    /// It is (now) out: `removed` if the client has it, else nothing.
    Out,
    /// It may have moved: decide from its stored body ([`Scopes::recheck`]).
    Recheck,
}

/// A client's scopes of one collection, none of them whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scopes {
    list: Vec<Scope>,
}

impl Scopes {
    pub fn new(list: Vec<Scope>) -> Scopes {
        Scopes { list }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.list.iter()
    }

    /// A catch-up's first question about a document: the scopes without a window.
    pub fn admit(&self, id: &str) -> Admit {
        let mut body = false;
        for s in self.list.iter().filter(|s| s.latest.is_none() && s.admits_id(id)) {
            if s.filter.is_none() {
                return Admit::Yes;
            }
            body = true;
        }
        if body {
            Admit::Body
        } else {
            Admit::No
        }
    }

    /// For [`Admit::Body`]: whether a scope without a window takes this body.
    pub fn admits_body(&self, id: &str, body: &Data) -> bool {
        self.list
            .iter()
            .any(|s| s.latest.is_none() && s.matches(id, body))
    }

    /// The scopes with a window, which a catch-up resolves first (the newest documents each
    /// takes; see [`crate::plan::Planner`]).
    pub fn windows(&self) -> impl Iterator<Item = &Scope> {
        self.list.iter().filter(|s| s.latest.is_some())
    }

    /// Decides about a live event on document `e.id`, which the client has (`has`) or not.
    pub fn live(&self, e: &Event, has: bool) -> Live {
        // Windows take only what the client has from them, or what is created while live.
        let relevant = |s: &&Scope| s.admits_id(&e.id) && (s.latest.is_none() || has || e.op == Op::Create);
        let mut scopes = self.list.iter().filter(relevant).peekable();
        if scopes.peek().is_none() {
            return Live::Out;
        }
        let scopes: Vec<&Scope> = scopes.collect();
        if scopes.iter().any(|s| s.filter.is_none()) {
            return Live::In;
        }
        match e.op {
            Op::Delete => in_if(has),
            Op::Create => match created_body(e) {
                Some(body) => in_if(scopes.iter().any(|s| s.matches(&e.id, &body))),
                None => Live::Recheck,
            },
            Op::Update => {
                let touched = e.patch.0.iter().any(|op| {
                    let paths = op_paths(op);
                    scopes
                        .iter()
                        .filter_map(|s| s.filter.as_ref())
                        .any(|f| paths.iter().any(|p| f.touched_by(p)))
                });
                if touched {
                    Live::Recheck
                } else {
                    in_if(has)
                }
            }
        }
    }

    /// After [`Live::Recheck`]: whether the document, with its stored body, is in.
    pub fn recheck(&self, id: &str, has: bool, body: &Data) -> bool {
        self.list
            .iter()
            .filter(|s| s.latest.is_none() || has)
            .any(|s| s.matches(id, body))
    }
}

fn in_if(yes: bool) -> Live {
    if yes {
        Live::In
    } else {
        Live::Out
    }
}

/// A create's body: its patch (from `{}`) applied to `{}`.
fn created_body(e: &Event) -> Option<Data> {
    let mut doc = Value::Object(Data::new());
    json_patch::patch(&mut doc, &e.patch).ok()?;
    match doc {
        Value::Object(body) => Some(body),
        _ => None,
    }
}

/// The JSON pointers one patch operation changes (a move changes both ends).
fn op_paths(op: &json_patch::PatchOperation) -> Vec<String> {
    use json_patch::PatchOperation as P;
    match op {
        P::Add(o) => vec![o.path.to_string()],
        P::Remove(o) => vec![o.path.to_string()],
        P::Replace(o) => vec![o.path.to_string()],
        P::Move(o) => vec![o.from.to_string(), o.path.to_string()],
        P::Copy(o) => vec![o.path.to_string()],
        P::Test(_) => vec![],
    }
}

#[cfg(test)]
mod tests;
