//! What a token allows, as data — pure, no I/O, no JWT.
//!
//! A token's permissions claim (`docs/AUTH.md`) lists patterns per right:
//!
//! ```json
//! {"read": ["games/*", "chat/{sub}-*"], "write": ["games/{sub}-*"], "admin": false}
//! ```
//!
//! A pattern is `COLLECTION/ID`: the collection a name or `*` (any), the id `*` (any), `PREFIX*`
//! (ids starting with it) or one exact id; a bare `COLLECTION` means `COLLECTION/*`. `{sub}` is
//! replaced by the token's subject before the pattern is read. `admin` reads everything and the
//! admin surface (every client's remembered vector); it does not imply write.
//!
//! Every decision is one of [`Grants::may_read`], [`Grants::may_write`], [`Grants::read_access`]:
//! the last is what a session keeps per subscribed collection, so that the live path decides an
//! event with no pattern matching when the collection is granted whole (the common case).

use crate::model::{validate_collection, validate_id};

/// Which ids of one collection a right covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl IdPattern {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdPattern::Any => true,
            IdPattern::Prefix(p) => id.starts_with(p.as_str()),
            IdPattern::Exact(e) => id == e,
        }
    }
}

/// What a right covers of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing.
    None,
    /// Every document.
    All,
    /// The documents whose id matches one of these.
    Some(Vec<IdPattern>),
}

impl Access {
    pub fn allows(&self, id: &str) -> bool {
        match self {
            Access::None => false,
            Access::All => true,
            Access::Some(ps) => ps.iter().any(|p| p.matches(id)),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Access::None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// `None`: any collection.
    collection: Option<String>,
    id: IdPattern,
}

/// One right (read or write): a list of patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule(Vec<Pattern>);

impl Rule {
    fn everything() -> Rule {
        Rule(vec![Pattern {
            collection: None,
            id: IdPattern::Any,
        }])
    }

    fn allows(&self, collection: &str, id: &str) -> bool {
        self.0
            .iter()
            .any(|p| p.collection.as_deref().is_none_or(|c| c == collection) && p.id.matches(id))
    }

    fn access(&self, collection: &str) -> Access {
        let mut ids = Vec::new();
        for p in &self.0 {
            if p.collection.as_deref().is_some_and(|c| c != collection) {
                continue;
            }
            if p.id == IdPattern::Any {
                return Access::All;
            }
            ids.push(p.id.clone());
        }
        if ids.is_empty() {
            Access::None
        } else {
            Access::Some(ids)
        }
    }
}

/// What one token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    read: Rule,
    write: Rule,
    admin: bool,
}

/// Why a permissions claim was refused (the token is then refused as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrantsError(String);

impl Grants {
    /// Everything, the admin surface included (`--auth none`).
    pub fn everything() -> Grants {
        Grants {
            read: Rule::everything(),
            write: Rule::everything(),
            admin: true,
        }
    }

    /// Nothing at all (a token without the permissions claim).
    pub fn nothing() -> Grants {
        Grants {
            read: Rule::default(),
            write: Rule::default(),
            admin: false,
        }
    }

    /// The permissions claim's value, `{sub}` replaced by `subject`. Unknown members are refused,
    /// so that a typo (`"wirte"`) does not silently grant less than meant.
    pub fn from_claim(value: &serde_json::Value, subject: &str) -> Result<Grants, GrantsError> {
        let obj = value
            .as_object()
            .ok_or_else(|| GrantsError("the permissions claim must be an object".into()))?;
        let mut g = Grants::nothing();
        for (key, v) in obj {
            match key.as_str() {
                "read" => g.read = rule(v, subject, "read")?,
                "write" => g.write = rule(v, subject, "write")?,
                "admin" => {
                    g.admin = v
                        .as_bool()
                        .ok_or_else(|| GrantsError("admin must be true or false".into()))?
                }
                other => {
                    return Err(GrantsError(format!(
                        "unknown member '{other}' in the permissions claim (read, write, admin)"
                    )))
                }
            }
        }
        Ok(g)
    }

    /// The permissions claim that grants these patterns (what `eventsync token` puts in a token).
    pub fn claim(read: &[String], write: &[String], admin: bool) -> serde_json::Value {
        serde_json::json!({ "read": read, "write": write, "admin": admin })
    }

    pub fn may_read(&self, collection: &str, id: &str) -> bool {
        self.admin || self.read.allows(collection, id)
    }

    pub fn may_write(&self, collection: &str, id: &str) -> bool {
        self.write.allows(collection, id)
    }

    /// Which documents of `collection` may be read.
    pub fn read_access(&self, collection: &str) -> Access {
        if self.admin {
            Access::All
        } else {
            self.read.access(collection)
        }
    }

    /// Which documents of `collection` may be written.
    pub fn write_access(&self, collection: &str) -> Access {
        self.write.access(collection)
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }
}

fn rule(v: &serde_json::Value, subject: &str, right: &str) -> Result<Rule, GrantsError> {
    let list: Vec<&str> = match v {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| GrantsError(format!("{right}: every pattern is a string")))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(GrantsError(format!(
                "{right} must be a pattern or a list of them"
            )))
        }
    };
    list.into_iter()
        .map(|p| pattern(p, subject).map_err(|e| GrantsError(format!("{right}: '{p}': {e}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Rule)
}

/// `COLLECTION[/ID]` with `{sub}` replaced.
fn pattern(text: &str, subject: &str) -> Result<Pattern, String> {
    let text = if text.contains("{sub}") {
        // A subject that is no valid id could widen a pattern (`*`) or match nothing sensible.
        validate_id(subject).map_err(|_| "{sub} needs a subject made of id characters".to_string())?;
        text.replace("{sub}", subject)
    } else {
        text.to_string()
    };
    let (c, id) = text.split_once('/').unwrap_or((&text, "*"));
    let collection = match c {
        "*" => None,
        c => {
            validate_collection(c).map_err(|e| e.to_string())?;
            Some(c.to_string())
        }
    };
    let id = if id == "*" {
        IdPattern::Any
    } else if let Some(prefix) = id.strip_suffix('*') {
        if prefix.contains('*') || validate_id(&format!("{prefix}x")).is_err() {
            return Err("an id pattern is *, PREFIX* or an id".into());
        }
        IdPattern::Prefix(prefix.to_string())
    } else {
        validate_id(id).map_err(|_| "an id pattern is *, PREFIX* or an id".to_string())?;
        IdPattern::Exact(id.to_string())
    };
    Ok(Pattern { collection, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grants(v: serde_json::Value) -> Grants {
        Grants::from_claim(&v, "alice").unwrap()
    }

    #[test]
    fn patterns_cover_collections_prefixes_and_ids() {
        let g = grants(json!({
            "read": ["games/*", "chat/{sub}-*", "notes/n1", "*/shared"],
            "write": "games/{sub}-*"
        }));
        assert!(g.may_read("games", "anything"));
        assert!(g.may_read("chat", "alice-1"));
        assert!(!g.may_read("chat", "bob-1"));
        assert!(!g.may_read("chat", "alice"));
        assert!(g.may_read("notes", "n1"));
        assert!(!g.may_read("notes", "n2"));
        assert!(g.may_read("other", "shared"));
        assert!(!g.may_read("other", "x"));
        assert!(g.may_write("games", "alice-7"));
        assert!(!g.may_write("games", "bob-7"));
        assert!(!g.may_write("chat", "alice-1"));
        assert!(!g.is_admin());
    }

    #[test]
    fn access_per_collection_is_what_a_session_keeps() {
        let g = grants(json!({"read": ["games", "chat/{sub}-*", "chat/lobby"]}));
        assert_eq!(g.read_access("games"), Access::All);
        assert_eq!(
            g.read_access("chat"),
            Access::Some(vec![
                IdPattern::Prefix("alice-".into()),
                IdPattern::Exact("lobby".into())
            ])
        );
        assert_eq!(g.read_access("other"), Access::None);
        assert_eq!(grants(json!({"read": "*"})).read_access("x"), Access::All);
        assert_eq!(g.write_access("games"), Access::None);
    }

    #[test]
    fn admin_reads_everything_but_writes_only_what_it_is_granted() {
        let g = grants(json!({"admin": true}));
        assert!(g.may_read("any", "thing"));
        assert_eq!(g.read_access("any"), Access::All);
        assert!(!g.may_write("any", "thing"));
        assert!(Grants::everything().may_write("any", "thing"));
    }

    #[test]
    fn no_claim_grants_nothing() {
        let g = Grants::nothing();
        assert!(!g.may_read("games", "g1"));
        assert!(!g.may_write("games", "g1"));
        assert_eq!(grants(json!({})), Grants::nothing());
    }

    #[test]
    fn malformed_claims_are_refused_with_a_reason() {
        for (bad, why) in [
            (json!([]), "must be an object"),
            (json!({"wirte": ["games"]}), "unknown member 'wirte'"),
            (json!({"read": 3}), "a pattern or a list"),
            (json!({"read": [3]}), "every pattern is a string"),
            (json!({"read": ["2games/*"]}), "'2games/*'"),
            (json!({"read": ["games/a*b*"]}), "an id pattern"),
            (json!({"read": ["games/a b"]}), "an id pattern"),
            (json!({"admin": "yes"}), "true or false"),
        ] {
            let e = Grants::from_claim(&bad, "alice").unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // A subject that is no id cannot fill {sub}: it could otherwise widen the pattern.
        let e = Grants::from_claim(&json!({"read": ["games/{sub}-*"]}), "*").unwrap_err();
        assert!(e.to_string().contains("{sub}"), "{e}");
        // ...but a token without {sub} patterns does not care what its subject looks like.
        assert!(Grants::from_claim(&json!({"read": ["games"]}), "a b").is_ok());
    }

    #[test]
    fn the_claim_written_by_the_token_command_reads_back() {
        let claim = Grants::claim(&["games/*".into()], &["games/{sub}-*".into()], false);
        let g = Grants::from_claim(&claim, "bob").unwrap();
        assert!(g.may_read("games", "x"));
        assert!(g.may_write("games", "bob-1"));
        assert!(!g.may_write("games", "alice-1"));
    }
}
