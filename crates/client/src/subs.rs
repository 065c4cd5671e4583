//! Subscriptions: the set the client follows, and its changes while it runs.
//!
//! The set lives in [`State::subscriptions`](super::State) (read by the handles, changed by the
//! task only), each subscription with whether its catch-up is applied on the current connection.
//! [`Client::subscribe`](super::Client::subscribe) and
//! [`Client::unsubscribe`](super::Client::unsubscribe) send the task a command; the task changes
//! the set at once (so that any `hello` from then on carries it) and then:
//!
//! - on a WebSocket, queues the change as a `subscribe` / `unsubscribe` message, sent once the
//!   connection is live, one at a time: a `subscribe` is answered by the scope's catch-up and a
//!   `synced` naming it, an `unsubscribe` by `removed` messages and `unsubscribed`, either by an
//!   `error` (`invalid_subscription`, `forbidden`; the change is undone). A change still queued or
//!   unanswered when the connection ends is carried by the next connection's `hello` instead;
//! - over SSE (no back channel), reopens the stream: the new registration carries the new set;
//! - while offline, leaves it to the next connection's `hello`.
//!
//! A refusal (`invalid_subscription`, `forbidden`, `invalid_message`) names the subscription it
//! refuses in its `subscription` member when there is one; one naming nothing is the answer to the
//! change in flight (changes go one at a time for that reason). A change carried by a `hello` is
//! answered by that connection's `synced` — or by a refusal naming it, or by the refusal of the
//! whole hello (over SSE, of its registration: every subscribe it carried fails, so the next
//! connection says the set that was accepted rather than being refused forever). An unsubscribe that no
//! server answers (SSE, offline) drops at once the documents of a collection no remaining
//! subscription follows (the server's catch-up only speaks of the collections it is asked about);
//! documents of a still-followed collection that left every scope come as `removed` in the next
//! catch-up.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Change, ClientError, Shared};
use eventsync_protocol::messages::{ClientMessage, Scope, Subscription};
use eventsync_protocol::model::{validate_collection, validate_id};
use eventsync_protocol::{ErrorBody, ErrorCode};

/// What [`ClientOptions::new`](super::ClientOptions::new) and
/// [`Client::subscribe`](super::Client::subscribe) take: a collection's name (`&str`, `String`,
/// ...: the whole collection, the name being the subscription's id), a [`Scope`], or a
/// [`Subscription`].
pub trait IntoSubscription {
    fn into_subscription(self) -> Subscription;
}

impl IntoSubscription for Subscription {
    fn into_subscription(self) -> Subscription {
        self
    }
}

impl IntoSubscription for &Subscription {
    fn into_subscription(self) -> Subscription {
        self.clone()
    }
}

impl IntoSubscription for Scope {
    fn into_subscription(self) -> Subscription {
        Subscription::Scope(self)
    }
}

impl IntoSubscription for &Scope {
    fn into_subscription(self) -> Subscription {
        Subscription::Scope(self.clone())
    }
}

impl IntoSubscription for &str {
    fn into_subscription(self) -> Subscription {
        Subscription::Collection(self.to_string())
    }
}

impl IntoSubscription for String {
    fn into_subscription(self) -> Subscription {
        Subscription::Collection(self)
    }
}

impl IntoSubscription for &String {
    fn into_subscription(self) -> Subscription {
        Subscription::Collection(self.clone())
    }
}

impl IntoSubscription for Box<str> {
    fn into_subscription(self) -> Subscription {
        Subscription::Collection(self.into())
    }
}

impl IntoSubscription for Cow<'_, str> {
    fn into_subscription(self) -> Subscription {
        Subscription::Collection(self.into_owned())
    }
}

/// A scope of `collection` under the id `id`, narrowed by nothing yet: set what narrows it with
/// struct update syntax —
///
/// ```
/// use eventsync_client::{scope, Scope};
/// let high = Scope {
///     filter: Some(serde_json::json!({"level": {"$gte": 5}})),
///     ..scope("high", "games")
/// };
/// let two = Scope { ids: Some(vec!["g1".into(), "g2".into()]), ..scope("two", "games") };
/// # let _ = (high, two);
/// ```
pub fn scope(id: impl Into<String>, collection: impl Into<String>) -> Scope {
    Scope {
        id: id.into(),
        collection: collection.into(),
        ids: None,
        prefix: None,
        filter: None,
        latest: None,
    }
}

/// The answer to a subscription change.
pub(crate) type Reply = oneshot::Sender<Result<(), ClientError>>;

/// A subscription of the current set.
#[derive(Debug, Clone)]
pub(crate) struct SubState {
    pub subscription: Subscription,
    /// Its catch-up is applied on the current connection.
    pub synced: bool,
}

/// A change to carry out with the server.
#[derive(Debug)]
pub(crate) enum SubOp {
    Subscribe(Subscription),
    Unsubscribe { id: String, collection: String },
}

/// Changes waiting for the server (they outlive a connection).
#[derive(Default)]
pub(crate) struct SubOps {
    /// To send on the current WebSocket once it is live, in order.
    queue: VecDeque<(SubOp, Reply)>,
    /// Sent, unanswered (one at a time: an `error` names no request).
    in_flight: Option<(SubOp, Reply)>,
    /// Carried by a `hello` (or an SSE registration): answered by the next `synced` that covers
    /// every subscription — or, a subscribe among them, by the hello's refusal.
    on_synced: Vec<(Option<Subscription>, Reply)>,
}

impl SubOps {
    /// Ends every waiting change: the task stops.
    pub fn close(&mut self) {
        let closed = || Err(ClientError::Closed);
        for (_, reply) in self.queue.drain(..).chain(self.in_flight.take()) {
            let _ = reply.send(closed());
        }
        for (_, reply) in self.on_synced.drain(..) {
            let _ = reply.send(closed());
        }
    }
}

/// What the client checks of a subscription before the server sees it (the server checks the
/// rest, the filter's language included).
pub(crate) fn check(s: &Subscription) -> Result<(), ClientError> {
    let bad = |m: String| Err(ClientError::subscription(m));
    match s {
        Subscription::Collection(c) => {
            if let Err(e) = validate_collection(c) {
                return bad(format!("'{c}': {e}"));
            }
        }
        Subscription::Scope(sc) => {
            if let Err(e) = validate_id(&sc.id) {
                return bad(format!("id '{}': {e}", sc.id));
            }
            if let Err(e) = validate_collection(&sc.collection) {
                return bad(format!("{}: '{}': {e}", sc.id, sc.collection));
            }
            for id in sc.ids.iter().flatten() {
                if let Err(e) = validate_id(id) {
                    return bad(format!("{}: ids: '{id}': {e}", sc.id));
                }
            }
            if sc.prefix.as_deref() == Some("") {
                return bad(format!("{}: an empty prefix", sc.id));
            }
            if sc.filter.as_ref().is_some_and(|f| !f.is_object()) {
                return bad(format!("{}: a filter ('where') is a JSON object", sc.id));
            }
            if sc.latest == Some(0) {
                return bad(format!("{}: latest must be at least 1", sc.id));
            }
        }
    }
    Ok(())
}

/// The starting set, from [`ClientOptions::subscribe`](super::ClientOptions::subscribe): each
/// checked, ids unique (a subscription given twice is kept once).
pub(crate) fn initial(subscriptions: &[Subscription]) -> Result<Vec<SubState>, ClientError> {
    let mut out: Vec<SubState> = Vec::with_capacity(subscriptions.len());
    for s in subscriptions {
        check(s).map_err(|e| ClientError::InvalidOptions(format!("subscribe: {e}")))?;
        match out.iter().find(|o| o.subscription.id() == s.id()) {
            Some(o) if o.subscription == *s => {}
            Some(_) => {
                return Err(ClientError::InvalidOptions(format!(
                    "subscribe: two different subscriptions with the id '{}'",
                    s.id()
                )))
            }
            None => out.push(SubState {
                subscription: s.clone(),
                synced: false,
            }),
        }
    }
    Ok(out)
}

/// Whether subscription `id` is synced; `None` if there is no such subscription.
pub(crate) fn synced(shared: &Shared, id: &str) -> Option<bool> {
    shared
        .state()
        .subscriptions
        .iter()
        .find(|s| s.subscription.id() == id)
        .map(|s| s.synced)
}

/// How the task can carry out a change now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// A WebSocket session: queue it as a message.
    Socket,
    /// No session, or one that cannot take messages (SSE): the next `hello` carries it.
    Hello,
}

/// A [`Client::subscribe`](super::Client::subscribe): changes the set, then queues or defers the
/// change. True when the set changed.
pub(crate) fn subscribe(shared: &Shared, ops: &mut SubOps, s: Subscription, reply: Reply, via: Via) -> bool {
    {
        let mut state = shared.state();
        match state.subscriptions.iter().find(|o| o.subscription.id() == s.id()) {
            Some(o) if o.subscription == s => {
                drop(state);
                let _ = reply.send(Ok(()));
                return false;
            }
            Some(_) => {
                drop(state);
                let m = format!("a different subscription has the id '{}'", s.id());
                let _ = reply.send(Err(ClientError::subscription(m)));
                return false;
            }
            None => state.subscriptions.push(SubState {
                subscription: s.clone(),
                synced: false,
            }),
        }
    }
    shared.bump();
    match via {
        Via::Socket => ops.queue.push_back((SubOp::Subscribe(s), reply)),
        Via::Hello => ops.on_synced.push((Some(s), reply)),
    }
    true
}

/// A [`Client::unsubscribe`](super::Client::unsubscribe): changes the set, then queues or
/// defers the change. True when the set changed.
pub(crate) fn unsubscribe(shared: &Shared, ops: &mut SubOps, id: String, reply: Reply, via: Via) -> bool {
    let removed = {
        let mut state = shared.state();
        let i = state.subscriptions.iter().position(|o| o.subscription.id() == id);
        i.map(|i| state.subscriptions.remove(i))
    };
    let Some(removed) = removed else {
        let m = format!("no subscription with the id '{id}'");
        let _ = reply.send(Err(ClientError::subscription(m)));
        return false;
    };
    shared.bump();
    let collection = removed.subscription.collection().to_string();
    match via {
        Via::Socket => ops
            .queue
            .push_back((SubOp::Unsubscribe { id, collection }, reply)),
        Via::Hello => {
            drop_unfollowed(shared, &collection);
            ops.on_synced.push((None, reply));
        }
    }
    true
}

/// A new connection is about to say `hello` with the current set: what was queued or in flight
/// is carried by it.
pub(crate) fn absorb(shared: &Shared, ops: &mut SubOps) {
    let waiting: Vec<_> = ops
        .in_flight
        .take()
        .into_iter()
        .chain(ops.queue.drain(..))
        .collect();
    for (op, reply) in waiting {
        match op {
            SubOp::Subscribe(s) => ops.on_synced.push((Some(s), reply)),
            SubOp::Unsubscribe { collection, .. } => {
                drop_unfollowed(shared, &collection);
                ops.on_synced.push((None, reply));
            }
        }
    }
}

/// A connection starts: no subscription is synced on it yet.
pub(crate) fn connection_started(shared: &Shared) {
    for s in &mut shared.state().subscriptions {
        s.synced = false;
    }
    shared.bump();
}

/// The next change to send, if the session can take one now (`live`: no catch-up running) and
/// none is unanswered.
pub(crate) fn next_to_send(ops: &mut SubOps, live: bool) -> Option<ClientMessage> {
    if !live || ops.in_flight.is_some() {
        return None;
    }
    let (op, reply) = ops.queue.pop_front()?;
    let message = match &op {
        SubOp::Subscribe(s) => ClientMessage::Subscribe {
            subscription: s.clone(),
        },
        SubOp::Unsubscribe { id, .. } => ClientMessage::Unsubscribe { id: id.clone() },
    };
    ops.in_flight = Some((op, reply));
    Some(message)
}

/// A `synced` covering every subscription of the session (a hello's, a `sync`'s), that left
/// nothing missing. A subscription whose `subscribe` is still queued or unanswered is not among
/// them: its own `synced` will say.
pub(crate) fn on_full_synced(shared: &Shared, ops: &mut SubOps) {
    let waiting: Vec<&str> = ops
        .queue
        .iter()
        .chain(&ops.in_flight)
        .filter_map(|(op, _)| match op {
            SubOp::Subscribe(s) => Some(s.id()),
            SubOp::Unsubscribe { .. } => None,
        })
        .collect();
    for s in &mut shared.state().subscriptions {
        if !waiting.contains(&s.subscription.id()) {
            s.synced = true;
        }
    }
    for (_, reply) in ops.on_synced.drain(..) {
        let _ = reply.send(Ok(()));
    }
}

/// A `synced` naming subscription `id`: its live catch-up is applied.
pub(crate) fn on_named_synced(shared: &Shared, ops: &mut SubOps, id: &str) {
    if let Some(s) = shared
        .state()
        .subscriptions
        .iter_mut()
        .find(|s| s.subscription.id() == id)
    {
        s.synced = true;
    }
    if matches!(&ops.in_flight, Some((SubOp::Subscribe(s), _)) if s.id() == id) {
        if let Some((_, reply)) = ops.in_flight.take() {
            let _ = reply.send(Ok(()));
        }
    }
}

/// `unsubscribed`: the server sent the `removed` messages it causes.
pub(crate) fn on_unsubscribed(shared: &Shared, ops: &mut SubOps, id: &str) {
    if !matches!(&ops.in_flight, Some((SubOp::Unsubscribe { id: i, .. }, _)) if i == id) {
        return;
    }
    if let Some((SubOp::Unsubscribe { collection, .. }, reply)) = ops.in_flight.take() {
        // Whatever the server did not speak of (it sends `removed` for every document it knew).
        drop_unfollowed(shared, &collection);
        let _ = reply.send(Ok(()));
    }
}

/// An `error`: the answer to a change when its code is one a change is refused with. One naming
/// a subscription (`subscription`) refuses that one — the `subscribe` in flight, or one a `hello`
/// carried (the hello's other subscriptions proceed); one naming none answers the change in
/// flight, or else refuses the subscribes a `hello` carried. True when it answered a change.
pub(crate) fn on_error(
    shared: &Shared,
    ops: &mut SubOps,
    code: ErrorCode,
    message: &str,
    subscription: Option<&str>,
) -> bool {
    if !is_refusal(code) {
        return false;
    }
    if let Some(id) = subscription {
        let error = || ClientError::Subscription(ErrorBody::new(code, message));
        let in_flight = matches!(&ops.in_flight, Some((SubOp::Subscribe(s), _)) if s.id() == id);
        let reply = if in_flight {
            ops.in_flight.take().map(|(_, reply)| reply)
        } else {
            let i = ops
                .on_synced
                .iter()
                .position(|(s, _)| s.as_ref().is_some_and(|s| s.id() == id));
            i.map(|i| ops.on_synced.remove(i).1)
        };
        let Some(reply) = reply else {
            return false;
        };
        shared.state().subscriptions.retain(|o| o.subscription.id() != id);
        shared.bump();
        let _ = reply.send(Err(error()));
        return true;
    }
    let Some((op, reply)) = ops.in_flight.take() else {
        return on_hello_refused(shared, ops, code, message);
    };
    match op {
        // Not subscribed after all: out of the set (nothing of it was sent).
        SubOp::Subscribe(s) => {
            shared.state().subscriptions.retain(|o| o.subscription != s);
        }
        // The server does not know it: it is out of the set all the same.
        SubOp::Unsubscribe { collection, .. } => drop_unfollowed(shared, &collection),
    }
    shared.bump();
    let _ = reply.send(Err(ClientError::Subscription(ErrorBody::new(code, message))));
    true
}

/// The codes a subscription change is refused with.
fn is_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidSubscription | ErrorCode::Forbidden | ErrorCode::InvalidMessage
    )
}

/// A `hello` (or an SSE registration) refused with `code`: when it carried subscribes not yet
/// answered and the code is one a subscription is refused with, they are what the server refuses
/// (the set it accepted before did not have them): each leaves the set and its
/// [`Client::subscribe`](super::Client::subscribe) fails with the server's error, so that the
/// next connection says the set that was accepted instead of being refused forever. True when
/// some were. An error names no subscription, so every carried subscribe fails with it: changes
/// made while offline go together.
pub(crate) fn on_hello_refused(shared: &Shared, ops: &mut SubOps, code: ErrorCode, message: &str) -> bool {
    if !is_refusal(code) || !ops.on_synced.iter().any(|(s, _)| s.is_some()) {
        return false;
    }
    let (refused, kept): (Vec<_>, Vec<_>) = ops.on_synced.drain(..).partition(|(s, _)| s.is_some());
    ops.on_synced = kept;
    for (s, reply) in refused {
        if let Some(s) = s {
            shared.state().subscriptions.retain(|o| o.subscription != s);
            drop_unfollowed(shared, s.collection());
        }
        let _ = reply.send(Err(ClientError::Subscription(ErrorBody::new(code, message))));
    }
    shared.bump();
    true
}

/// Drops from the replica a collection no subscription follows any more (its documents and
/// vector entries), each live document reported as [`Change::Removed`].
pub(crate) fn drop_unfollowed(shared: &Shared, collection: &str) {
    let followed = shared
        .state()
        .subscriptions
        .iter()
        .any(|s| s.subscription.collection() == collection);
    if followed {
        return;
    }
    let removed = shared.replica().forget_collection(collection);
    if removed.is_empty() {
        return;
    }
    shared.state().modified += 1;
    for r in removed {
        shared.publish(|| Some(Change::Removed(Arc::new(r))));
    }
    shared.bump();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_scopes_and_subscriptions_convert() {
        let name = String::from("chat");
        let subs: Vec<Subscription> = vec![
            "games".into_subscription(),
            name.clone().into_subscription(),
            (&name).into_subscription(),
            Cow::Borrowed("a").into_subscription(),
            scope("s", "games").into_subscription(),
        ];
        assert_eq!(
            serde_json::to_value(&subs).unwrap(),
            json!(["games", "chat", "chat", "a", {"id": "s", "collection": "games"}])
        );
        let high = Scope {
            filter: Some(json!({"level": {"$gte": 5}})),
            latest: Some(3),
            ..scope("high", "games")
        };
        assert_eq!(
            serde_json::to_value(high.into_subscription()).unwrap(),
            json!({"id": "high", "collection": "games", "where": {"level": {"$gte": 5}}, "latest": 3})
        );
    }

    #[test]
    fn subscriptions_are_checked() {
        assert!(check(&"games".into_subscription()).is_ok());
        assert!(check(&scope("a:b", "games").into_subscription()).is_ok());
        for bad in [
            "".into_subscription(),
            "events".into_subscription(),
            "a/b".into_subscription(),
            scope("", "games").into_subscription(),
            scope("x", "2games").into_subscription(),
            Scope {
                ids: Some(vec!["ok".into(), "not ok".into()]),
                ..scope("x", "games")
            }
            .into_subscription(),
            Scope {
                prefix: Some(String::new()),
                ..scope("x", "games")
            }
            .into_subscription(),
            Scope {
                filter: Some(json!([1])),
                ..scope("x", "games")
            }
            .into_subscription(),
            Scope {
                latest: Some(0),
                ..scope("x", "games")
            }
            .into_subscription(),
        ] {
            let e = check(&bad).unwrap_err();
            assert!(
                matches!(&e, ClientError::Subscription(b) if b.code == ErrorCode::InvalidSubscription),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn the_initial_set_keeps_ids_unique() {
        let s = initial(&[
            "games".into_subscription(),
            scope("one", "games").into_subscription(),
            "games".into_subscription(),
        ])
        .unwrap();
        assert_eq!(s.len(), 2, "the same subscription twice is kept once");
        assert!(matches!(
            initial(&[
                "games".into_subscription(),
                scope("games", "chat").into_subscription()
            ]),
            Err(ClientError::InvalidOptions(_))
        ));
        assert!(matches!(
            initial(&["no such/name".into_subscription()]),
            Err(ClientError::InvalidOptions(_))
        ));
    }
}
