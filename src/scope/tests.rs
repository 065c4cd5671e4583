//! The move-in and move-out rules, pure: every row of the module's table.

use serde_json::json;

use super::*;
use crate::model::Version;
use crate::protocol::Scope as Spec;
use crate::time::Timestamp;

fn spec(v: serde_json::Value) -> Subscription {
    Subscription::Scope(serde_json::from_value::<Spec>(v).unwrap())
}

fn scope(v: serde_json::Value) -> Scope {
    Scope::parse(&spec(v)).unwrap()
}

fn body(v: serde_json::Value) -> Data {
    match v {
        Value::Object(m) => m,
        _ => panic!("a body is an object"),
    }
}

fn event(id: &str, version: Version, op: Op, patch: serde_json::Value) -> Event {
    Event {
        seq: 10,
        collection: "games".into(),
        id: id.into(),
        version,
        op,
        patch: serde_json::from_value(patch).unwrap(),
        client_id: "c".into(),
        op_id: "o".into(),
        ts: Timestamp(0),
        user: None,
    }
}

fn create(id: &str, data: serde_json::Value) -> Event {
    let patch = json_patch::diff(&json!({}), &data);
    event(id, 1, Op::Create, serde_json::to_value(patch).unwrap())
}

fn set(id: &str, version: Version, path: &str, value: serde_json::Value) -> Event {
    event(
        id,
        version,
        Op::Update,
        json!([{"op": "replace", "path": path, "value": value}]),
    )
}

fn high_levels() -> Scopes {
    Scopes::new(vec![scope(
        json!({"id": "high", "collection": "games", "where": {"level": {"$gte": 5}}}),
    )])
}

#[test]
fn a_collection_name_is_the_whole_collection_under_its_name() {
    let s = Scope::parse(&Subscription::from("games")).unwrap();
    assert!(s.is_whole());
    assert_eq!((s.id.as_str(), s.collection.as_str()), ("games", "games"));
    assert!(s.matches("anything", &Data::new()));
}

#[test]
fn ids_and_prefix_narrow_by_id_alone() {
    let s = scope(json!({"id": "s", "collection": "games", "ids": ["a1", "b1"], "prefix": "a"}));
    assert!(!s.is_whole());
    assert!(s.admits_id("a1"));
    assert!(!s.admits_id("b1"), "both conditions hold");
    assert!(!s.admits_id("a2"));
    let scopes = Scopes::new(vec![s]);
    assert_eq!(scopes.admit("a1"), Admit::Yes);
    assert_eq!(scopes.admit("zz"), Admit::No);
}

#[test]
fn a_filter_leaves_the_decision_to_the_body() {
    let scopes = high_levels();
    assert_eq!(scopes.admit("g"), Admit::Body);
    assert!(scopes.admits_body("g", &body(json!({"level": 7}))));
    assert!(!scopes.admits_body("g", &body(json!({"level": 2}))));
    assert!(!scopes.admits_body("g", &body(json!({}))));
}

#[test]
fn a_create_is_decided_by_its_own_body() {
    let scopes = high_levels();
    assert_eq!(scopes.live(&create("g", json!({"level": 9})), false), Live::In);
    assert_eq!(scopes.live(&create("g", json!({"level": 1})), false), Live::Out);
    // A recreated document the client still has, no longer matching: out (removed).
    assert_eq!(scopes.live(&create("g", json!({"level": 1})), true), Live::Out);
}

#[test]
fn an_update_off_the_filter_keeps_membership() {
    let scopes = high_levels();
    let gold = set("g", 4, "/gold", json!(3));
    assert_eq!(scopes.live(&gold, true), Live::In, "in stays in");
    assert_eq!(scopes.live(&gold, false), Live::Out, "out stays out");
}

#[test]
fn an_update_on_the_filter_is_rechecked_against_the_stored_body() {
    let scopes = high_levels();
    for has in [true, false] {
        assert_eq!(scopes.live(&set("g", 4, "/level", json!(1)), has), Live::Recheck);
        // Replacing the whole body touches every path.
        let root = event(
            "g",
            4,
            Op::Update,
            json!([{"op": "replace", "path": "", "value": {}}]),
        );
        assert_eq!(scopes.live(&root, has), Live::Recheck);
    }
    // Moving a value away from the filtered path touches it too.
    let mv = event(
        "g",
        4,
        Op::Update,
        json!([{"op": "move", "from": "/level", "path": "/old"}]),
    );
    assert_eq!(scopes.live(&mv, true), Live::Recheck);
    assert!(scopes.recheck("g", true, &body(json!({"level": 5}))));
    assert!(!scopes.recheck("g", true, &body(json!({"level": 4}))));
}

#[test]
fn a_delete_is_a_delete_for_a_client_that_has_the_document() {
    let scopes = high_levels();
    let del = event("g", 5, Op::Delete, json!([]));
    assert_eq!(scopes.live(&del, true), Live::In);
    assert_eq!(scopes.live(&del, false), Live::Out);
}

#[test]
fn a_scope_without_a_filter_takes_the_document_whatever_the_others_say() {
    let scopes = Scopes::new(vec![
        scope(json!({"id": "high", "collection": "games", "where": {"level": {"$gte": 5}}})),
        scope(json!({"id": "mine", "collection": "games", "prefix": "ann-"})),
    ]);
    assert_eq!(scopes.admit("ann-1"), Admit::Yes);
    assert_eq!(scopes.admit("bob-1"), Admit::Body);
    assert_eq!(scopes.live(&set("ann-1", 3, "/level", json!(0)), true), Live::In);
    assert_eq!(
        scopes.live(&set("bob-1", 3, "/level", json!(0)), true),
        Live::Recheck
    );
}

#[test]
fn two_filters_one_touched_means_recheck_even_if_the_other_is_not() {
    // `has` may come from either scope: only a recheck can tell whether the document stays.
    let scopes = Scopes::new(vec![
        scope(json!({"id": "high", "collection": "games", "where": {"level": {"$gte": 5}}})),
        scope(json!({"id": "red", "collection": "games", "where": {"team": "red"}})),
    ]);
    assert_eq!(
        scopes.live(&set("g", 3, "/team", json!("blue")), true),
        Live::Recheck
    );
    assert!(scopes.recheck("g", true, &body(json!({"team": "blue", "level": 9}))));
    assert!(!scopes.recheck("g", true, &body(json!({"team": "blue", "level": 1}))));
}

#[test]
fn a_window_takes_creates_live_and_keeps_what_the_client_has() {
    let scopes = Scopes::new(vec![scope(
        json!({"id": "last", "collection": "games", "latest": 20}),
    )]);
    assert_eq!(scopes.windows().count(), 1);
    // Windows are resolved by the catch-up, not by the id.
    assert_eq!(scopes.admit("old"), Admit::No);
    assert_eq!(scopes.live(&create("new", json!({})), false), Live::In);
    assert_eq!(scopes.live(&set("held", 3, "/x", json!(1)), true), Live::In);
    assert_eq!(scopes.live(&set("old", 3, "/x", json!(1)), false), Live::Out);
    // A filtered window: creates by their body, older documents never join live.
    let filtered = Scopes::new(vec![scope(
        json!({"id": "last", "collection": "games", "latest": 20, "where": {"room": "a"}}),
    )]);
    assert_eq!(filtered.live(&create("n", json!({"room": "a"})), false), Live::In);
    assert_eq!(
        filtered.live(&create("n", json!({"room": "b"})), false),
        Live::Out
    );
    assert_eq!(
        filtered.live(&set("old", 3, "/room", json!("a")), false),
        Live::Out
    );
    assert!(!filtered.recheck("old", false, &body(json!({"room": "a"}))));
    assert!(filtered.recheck("held", true, &body(json!({"room": "a"}))));
}

#[test]
fn invalid_subscriptions_say_what_is_wrong() {
    for (bad, says) in [
        (json!({"id": "a b", "collection": "games"}), "id"),
        (json!({"id": "s", "collection": "2games"}), "s:"),
        (
            json!({"id": "s", "collection": "games", "ids": ["ok", "not ok"]}),
            "ids",
        ),
        (json!({"id": "s", "collection": "games", "prefix": ""}), "prefix"),
        (json!({"id": "s", "collection": "games", "latest": 0}), "latest"),
        (
            json!({"id": "s", "collection": "games", "latest": MAX_LATEST + 1}),
            "latest",
        ),
        (
            json!({"id": "s", "collection": "games", "where": {"level": {"$near": 1}}}),
            "where",
        ),
        (json!({"id": "s", "collection": "games", "where": 5}), "where"),
    ] {
        let err = Scope::parse(&spec(bad.clone())).unwrap_err();
        assert!(err.contains(says), "{bad}: {err}");
    }
    let many: Vec<String> = (0..=MAX_SCOPE_IDS).map(|i| format!("d{i}")).collect();
    let err = Scope::parse(&spec(json!({"id": "s", "collection": "games", "ids": many}))).unwrap_err();
    assert!(err.contains("at most"), "{err}");
    // Unknown fields and wrong types are refused by the wire type itself.
    for bad in [
        json!({"id": "s", "collection": "games", "filter": {}}),
        json!({"id": "s", "collection": "games", "latest": "20"}),
        json!({"collection": "games"}),
        json!(5),
    ] {
        assert!(
            serde_json::from_value::<Subscription>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}
