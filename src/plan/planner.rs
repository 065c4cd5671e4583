//! The catch-up's orchestration, written once and sans-IO: a [`Planner`] tells the backend the next
//! read it needs ([`Need`]) and is fed the answer ([`Answer`]), until it has the rows of every
//! document to send ([`CatchUpRows`]).
//!
//! The order of the reads is the plan's: a page of a collection's summaries, then per document of
//! it that needs something, the patch sizes that decide between its events and a snapshot (only
//! when a snapshot could be the cheaper), then its events or its body; then the next page. A page
//! speaks for the ids from the last page's end to its own, so what the client has there and the
//! page lacks is reset (deleted at version 0). A backend answers every read inside one
//! consistent read transaction, so the rows describe one position of the log.
//!
//! A plan cut by its byte budget says where it stopped ([`Resume`]): the next part, read at a later
//! position, asks only for the documents that *changed since* the last part's position up to that
//! point (what the client has there is current to that position, and a scope's verdict on a
//! document depends only on the document), then goes on from there. So a catch-up of N documents
//! in parts reads each summary once, not once per part before it. A collection with a window
//! (`latest`) is planned whole in every part: a window moves when other documents are created.
//!
//!
//! ```text
//! let mut planner = Planner::new(position, collections, vector);
//! while let Some(need) = planner.need() {
//!     let answer = match need { /* read it */ };
//!     planner.answer(answer);
//! }
//! let rows = planner.finish();
//! ```

use std::collections::{BTreeMap, HashSet};

use crate::model::{Data, Event, Seq, StoredDoc, Version};
use crate::protocol::StateVector;
use crate::scope::{Admit, Scopes};

use super::{in_range, plan_collection, refine, sizes_needed, step, summary_of, DocSummary, IdRange, Step};

/// Summaries per read: what a catch-up holds of a collection at once (about 100 bytes each), however
/// large the collection — but for a scope with a window, which ranks the whole collection.
pub const SUMMARY_PAGE: usize = 1000;

/// A read the planner needs answered next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'p> {
    /// The next page of `collection`'s documents (tombstones included), summarized, in id
    /// order: at most `limit` of those whose id is above `after` (from the first when `None`):
    /// [`Answer::Summaries`]. A page shorter than `limit` is the last.
    ///
    /// With `changed_after`, only the documents whose last change has a `seq` above it and whose
    /// id is at most `through` (any when `None`): such a page speaks for no other ids.
    Summaries {
        collection: &'p str,
        after: Option<&'p str>,
        limit: usize,
        changed_after: Option<Seq>,
        through: Option<&'p str>,
    },
    /// The patch sizes in bytes of one document's retained events with versions `from..=to`, in
    /// version order: [`Answer::PatchSizes`].
    PatchSizes {
        collection: &'p str,
        id: &'p str,
        from: Version,
        to: Version,
    },
    /// One document's retained events with versions `from..=to`, in version order:
    /// [`Answer::Events`].
    Events {
        collection: &'p str,
        id: &'p str,
        from: Version,
        to: Version,
    },
    /// One document as stored (live or a tombstone), for its body: [`Answer::Document`].
    Document { collection: &'p str, id: &'p str },
}

/// The answer to a [`Need`], in the same variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Summaries(Vec<DocSummary>),
    PatchSizes(Vec<u64>),
    Events(Vec<Event>),
    Document(Option<StoredDoc>),
}

/// What a catch-up sends, read at one position of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchUpRows {
    /// The log position the rows were read at.
    pub position: Seq,
    /// One entry per requested collection, in the order requested (when the plan is cut by its
    /// budget, the collections planned so far).
    pub collections: Vec<CollectionRows>,
    /// Every document was planned; `false` when the byte budget cut the plan short (see
    /// [`Planner::with_budget`]): the rows are a consistent part, and planning again from the
    /// vector they bring the client to gives the rest.
    pub complete: bool,
    /// For a part: where the next part may go on ([`Planner::resuming`]) instead of planning
    /// every document again. `None` for the last part, or when the plan was cut where it cannot
    /// say (while reading what changed since the part before: the next part starts over).
    pub resume: Option<Resume>,
}

/// Where a catch-up cut by its budget goes on. The part before was read at `position`; it (and
/// the parts before it) brought the client current there for the requested collections before
/// `collection` and, of that one, for the ids up to and including `after` (none of it when
/// `None`). The vector the next part is planned from must be the one those parts brought the
/// client to, and the collections requested the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub position: Seq,
    pub collection: String,
    pub after: Option<String>,
}

/// One collection's documents to send, in id order (documents needing nothing are left out).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRows {
    pub collection: String,
    pub documents: Vec<(String, DocRows)>,
}

/// What to send for one document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocRows {
    /// Its events with versions up to `to`, in version order.
    Events { to: Version, events: Vec<Event> },
    /// Its live body at `version`.
    Body { version: Version, data: Data },
    /// That it is deleted at `version` (0: the server never had it).
    Deleted { version: Version },
    /// That it left every scope of the client, who has it at `version`.
    Removed { version: Version },
}

/// Which documents a catch-up may plan at all (`collection`, `id`): those of others are left out of
/// the summaries, so that they neither take a part's budget nor come back in every part.
pub type Readable = dyn Fn(&str, &str) -> bool + Send + Sync;

/// What a catch-up covers beyond "every document of the collections": what the token may read,
/// and the client's scopes of the collections it follows only in part.
#[derive(Default)]
pub struct Selection {
    /// `None`: every document of the collections.
    pub readable: Option<Box<Readable>>,
    /// Collections followed in part, with the client's scopes of each; the others whole.
    pub scopes: BTreeMap<String, Scopes>,
}

impl Selection {
    /// Whether it selects everything (then a plan needs no check per document).
    pub fn is_everything(&self) -> bool {
        self.readable.is_none() && self.scopes.is_empty()
    }
}

/// Plans a catch-up by asking for reads; see the module docs.
pub struct Planner<'a> {
    vector: &'a StateVector,
    pending: std::slice::Iter<'a, String>,
    /// The collection being planned (`None` once every collection is done).
    current: Option<Collection<'a>>,
    waiting: Waiting,
    out: CatchUpRows,
    /// The byte budget of the rows, and what the rows taken so far count against it.
    budget: u64,
    used: u64,
    selection: Option<&'a Selection>,
    /// Where the part before was cut, if this plan goes on from it, with the index of its
    /// collection among the requested ones.
    resume: Option<(Resume, usize)>,
    collections: &'a [String],
    /// The index of the current collection among the requested ones.
    index: usize,
}

/// The collection being planned and what is known of it so far.
struct Collection<'a> {
    name: &'a str,
    /// Which of its documents are read: all, or (going on from a part before) what changed.
    phase: Phase,
    /// While reading all: the last id whose document is planned (where a cut goes on).
    covered: Option<String>,
    /// The client's scopes of it, when it follows it only in part.
    scopes: Option<&'a Scopes>,
    /// The page of summaries being planned (every summary, for a collection with windows).
    summaries: Vec<DocSummary>,
    /// The last id of the pages read so far, when a page was full (more may follow).
    after: Option<String>,
    /// Whether a page after this one may hold documents.
    more: bool,
    /// The windows being resolved (scopes with `latest`), then the ids they took.
    windows: Vec<Window>,
    taken: HashSet<String>,
    steps: std::vec::IntoIter<(String, Scoped)>,
    documents: Vec<(String, DocRows)>,
}

/// Which documents of a collection a plan reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Every one, from the page after `after`.
    All,
    /// Those changed since `since` (the position of the part before), with ids up to `through`;
    /// then every document above `through`. With `None`, all of them: the part before covered
    /// the whole collection, nothing follows.
    Changed { since: Seq, through: Option<String> },
}

/// How a collection is read when a plan goes on from `resume` and it is the `index`-th
/// requested; `windowed` ones whole, always.
fn phase(resume: Option<&(Resume, usize)>, index: usize, windowed: bool) -> Phase {
    let Some((r, at)) = resume.filter(|_| !windowed) else {
        return Phase::All;
    };
    let since = r.position;
    match (index.cmp(at), &r.after) {
        (std::cmp::Ordering::Less, _) => Phase::Changed { since, through: None },
        (std::cmp::Ordering::Equal, Some(after)) => Phase::Changed {
            since,
            through: Some(after.clone()),
        },
        _ => Phase::All,
    }
}

/// One window being resolved: the candidates (indexes into the summaries), newest first; the next
/// to look at; how many it still takes.
struct Window {
    scope: usize,
    candidates: Vec<usize>,
    next: usize,
    wanted: usize,
}

/// A document's step, and whether its body decides first if it is sent at all.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scoped {
    Plain(Step),
    /// In scope only if its body matches: read it, then this step (the client has `Some(v)`).
    Check(Step, Option<Version>),
    /// Out of every scope, and the client has it at this version: `removed`.
    Remove(Version),
}

/// Which answer the planner waits for.
enum Waiting {
    Summaries,
    /// A window candidate's body.
    WindowBody {
        id: String,
    },
    /// A body that decides whether the document is in scope.
    CheckBody {
        id: String,
        step: Step,
        has: Option<Version>,
    },
    PatchSizes {
        id: String,
        from: Version,
        to: Version,
    },
    Events {
        id: String,
        from: Version,
        to: Version,
    },
    Document {
        id: String,
        version: Version,
    },
    Nothing,
}

impl<'a> Planner<'a> {
    /// A plan for bringing a client with `vector` current on `collections`, read at `position`.
    pub fn new(position: Seq, collections: &'a [String], vector: &'a StateVector) -> Planner<'a> {
        let mut planner = Planner {
            vector,
            pending: collections.iter(),
            current: None,
            waiting: Waiting::Nothing,
            out: CatchUpRows {
                position,
                collections: Vec::with_capacity(collections.len()),
                complete: true,
                resume: None,
            },
            budget: u64::MAX,
            used: 0,
            selection: None,
            resume: None,
            collections,
            index: 0,
        };
        planner.next_collection();
        planner
    }

    /// Goes on from where the part before was cut (`None`: plans everything): what it covered is
    /// read only where it changed since (see the module docs). Call before
    /// [`Planner::with_selection`] (which may make a collection windowed).
    ///
    /// A resume from a later position than this plan's, or of a collection not requested, is
    /// ignored (everything is planned): the part before cannot have seen what this read does not.
    pub fn resuming(mut self, resume: Option<Resume>) -> Planner<'a> {
        let collections = self.collections;
        self.resume = resume.filter(|r| r.position <= self.out.position).and_then(|r| {
            let at = collections.iter().position(|c| *c == r.collection)?;
            Some((r, at))
        });
        self.start_phase();
        self
    }

    /// Sets how the current collection is read, once its scopes and the resume are known.
    fn start_phase(&mut self) {
        let (resume, index) = (self.resume.as_ref(), self.index);
        if let Some(c) = self.current.as_mut() {
            let windowed = c.scopes.is_some_and(|s| s.windows().next().is_some());
            c.phase = phase(resume, index, windowed);
        }
    }

    /// Plans only until the rows taken reach `bytes` (at least one document is always planned,
    /// whatever its size). A document counts its body's size plus a snapshot's overhead, whether
    /// it is sent as a snapshot or as events (events are chosen only when they are the cheaper),
    /// so what the rows hold in memory stays near the budget. Summaries (ids, versions and sizes,
    /// no bodies) are read [`SUMMARY_PAGE`] at a time, so what a plan holds is the budget plus one
    /// page, whatever the collection's size — but for a scope with a window (`latest`), whose
    /// ranking reads the collection's summaries whole.
    pub fn with_budget(mut self, bytes: u64) -> Planner<'a> {
        self.budget = bytes;
        self
    }

    /// Plans only the documents `selection` selects (all without one): those it may read, in the
    /// client's scopes. Documents the client has that are out of every scope are `removed`.
    pub fn with_selection(mut self, selection: Option<&'a Selection>) -> Planner<'a> {
        self.selection = selection.filter(|s| !s.is_everything());
        if let Some(c) = self.current.as_mut() {
            c.scopes = self.selection.and_then(|s| s.scopes.get(c.name));
        }
        self.start_phase();
        self
    }

    /// Whether the budget is spent: then nothing more is planned.
    fn spent(&self) -> bool {
        self.used >= self.budget
    }

    /// Counts a document's rows against the budget.
    fn count(&mut self, id: &str) {
        let c = self.current.as_ref().expect("rows belong to a collection");
        let body = summary_of(&c.summaries, id).map_or(0, |s| s.data_bytes);
        self.used = self.used.saturating_add(body + super::SNAPSHOT_OVERHEAD);
    }

    /// Ends the plan where it is: the rows so far are the part it returns.
    fn cut(&mut self) {
        self.out.complete = false;
        self.waiting = Waiting::Nothing;
        self.out.resume = match self.current.as_ref().map(|c| &c.phase) {
            // Cut while reading what changed: the ids before the cut are current to this position,
            // those after it only to the part before's — the next part starts over.
            Some(Phase::Changed { .. }) => None,
            _ => Some(Resume {
                position: self.out.position,
                collection: self.collections[self.index].clone(),
                after: self.current.as_ref().and_then(|c| c.covered.clone()),
            }),
        };
        if let Some(done) = self.current.take() {
            self.out.collections.push(CollectionRows {
                collection: done.name.to_string(),
                documents: done.documents,
            });
        }
    }

    /// The read to answer next; `None` when the plan is complete (then [`Planner::finish`]).
    pub fn need(&self) -> Option<Need<'_>> {
        let collection = self.current.as_ref()?.name;
        Some(match &self.waiting {
            Waiting::Summaries => {
                let c = self.current.as_ref()?;
                let (changed_after, through) = match &c.phase {
                    Phase::All => (None, None),
                    Phase::Changed { since, through, .. } => (Some(*since), through.as_deref()),
                };
                Need::Summaries {
                    collection,
                    after: c.after.as_deref(),
                    limit: SUMMARY_PAGE,
                    changed_after,
                    through,
                }
            }
            Waiting::PatchSizes { id, from, to } => Need::PatchSizes {
                collection,
                id,
                from: *from,
                to: *to,
            },
            Waiting::Events { id, from, to } => Need::Events {
                collection,
                id,
                from: *from,
                to: *to,
            },
            Waiting::Document { id, .. } | Waiting::WindowBody { id } | Waiting::CheckBody { id, .. } => {
                Need::Document { collection, id }
            }
            Waiting::Nothing => return None,
        })
    }

    /// Feeds the answer to the last [`Planner::need`].
    ///
    /// # Panics
    /// If the answer is not of the kind asked for (a bug in the backend).
    pub fn answer(&mut self, answer: Answer) {
        let waiting = std::mem::replace(&mut self.waiting, Waiting::Nothing);
        let c = self
            .current
            .as_mut()
            .expect("answered after the plan was complete");
        match (waiting, answer) {
            (Waiting::Summaries, Answer::Summaries(mut page)) => {
                // The ids this page speaks for: above the last page's, up to its own last one (to
                // the end when it is the last) — what the client has there and the page lacks is
                // gone from the server.
                let from = c.after.take();
                c.more = page.len() >= SUMMARY_PAGE;
                c.after = page.last().filter(|_| c.more).map(|s| s.id.clone());
                let range = (from.as_deref(), c.after.as_deref());
                if let Some(readable) = self.selection.and_then(|s| s.readable.as_deref()) {
                    page.retain(|s| readable(c.name, &s.id));
                }
                let windowed = c.scopes.is_some_and(|s| s.windows().next().is_some());
                if windowed {
                    // A window ranks the whole collection: its pages are gathered first.
                    c.summaries.append(&mut page);
                    if c.more {
                        self.waiting = Waiting::Summaries;
                        return;
                    }
                    let scopes = c.scopes.expect("windowed");
                    c.windows = windows(scopes, &c.summaries);
                    return self.next_window();
                }
                c.summaries = page;
                let client = self.vector.get(c.name);
                // A page of changes speaks for no other ids: nothing the client has is reset.
                let range = Some(range).filter(|_| c.phase == Phase::All);
                c.steps = match c.scopes {
                    Some(scopes) => plan_scoped(client, &c.summaries, scopes, &c.taken, range),
                    None => plan_collection(client, &c.summaries, range)
                        .into_iter()
                        .map(|(id, step)| (id, Scoped::Plain(step)))
                        .collect(),
                }
                .into_iter();
            }
            (Waiting::WindowBody { id }, Answer::Document(stored)) => {
                let w = c.windows.last_mut().expect("a window is being resolved");
                let scopes = c.scopes.expect("windows belong to scopes");
                let scope = scopes.iter().nth(w.scope).expect("the window's scope");
                if let Some(s) = stored.filter(|s| !s.deleted && scope.matches(&id, &s.doc.data)) {
                    w.wanted -= 1;
                    c.taken.insert(s.doc.id);
                }
                return self.next_window();
            }
            (Waiting::CheckBody { id, step, has }, Answer::Document(stored)) => {
                let scopes = c.scopes.expect("checks belong to scopes");
                match stored.filter(|s| !s.deleted && scopes.admits_body(&id, &s.doc.data)) {
                    Some(s) => match step {
                        // The body read is the snapshot.
                        Step::Snapshot { version } if s.doc.version == version => {
                            self.count(&id);
                            let c = self.current.as_mut().expect("checked above");
                            c.documents.push((
                                id,
                                DocRows::Body {
                                    version,
                                    data: s.doc.data,
                                },
                            ));
                        }
                        step => {
                            if self.refine_and_take(id, step) {
                                return;
                            }
                        }
                    },
                    None => {
                        if let Some(version) = has {
                            self.removed(id, version);
                        }
                    }
                }
            }
            (Waiting::PatchSizes { id, from, to }, Answer::PatchSizes(sizes)) => {
                let first = Step::Events { from, to };
                let step = refine(first, summary_of(&c.summaries, &id), &sizes);
                if self.take(id, step) {
                    return;
                }
            }
            (Waiting::Events { id, to, .. }, Answer::Events(events)) => {
                self.count(&id);
                let c = self.current.as_mut().expect("checked above");
                c.documents.push((id, DocRows::Events { to, events }));
            }
            (Waiting::Document { id, version }, Answer::Document(stored)) => {
                // Not there any more at the planned version: nothing is sent for it.
                if let Some(s) = stored.filter(|s| !s.deleted && s.doc.version == version) {
                    self.count(&id);
                    let c = self.current.as_mut().expect("checked above");
                    c.documents.push((
                        id,
                        DocRows::Body {
                            version,
                            data: s.doc.data,
                        },
                    ));
                }
            }
            (_, answer) => panic!("a catch-up read answered with {answer:?} out of turn"),
        }
        self.next_document();
    }

    /// The rows, once [`Planner::need`] is `None`.
    pub fn finish(self) -> CatchUpRows {
        debug_assert!(self.current.is_none(), "finished before the plan was complete");
        self.out
    }

    /// Resolves the current collection's windows, newest candidate first; once they are, plans
    /// its documents.
    fn next_window(&mut self) {
        let c = self.current.as_mut().expect("windows belong to a collection");
        let scopes = c.scopes.expect("windows belong to scopes");
        while let Some(w) = c.windows.last_mut() {
            let scope = scopes.iter().nth(w.scope).expect("the window's scope");
            if w.wanted == 0 || w.next == w.candidates.len() {
                c.windows.pop();
                continue;
            }
            let s = &c.summaries[w.candidates[w.next]];
            w.next += 1;
            if scope.filter().is_none() {
                w.wanted -= 1;
                c.taken.insert(s.id.clone());
                continue;
            }
            self.waiting = Waiting::WindowBody { id: s.id.clone() };
            return;
        }
        let steps = plan_scoped(
            self.vector.get(c.name),
            &c.summaries,
            scopes,
            &c.taken,
            Some((None, None)),
        );
        c.steps = steps.into_iter();
        self.next_document();
    }

    /// Moves on to the next document that needs a read, finishing collections on the way.
    fn next_document(&mut self) {
        loop {
            if self.spent() && self.current.is_some() {
                return self.cut();
            }
            let Some(c) = self.current.as_mut() else {
                return;
            };
            let Some((id, scoped)) = c.steps.next() else {
                if c.more {
                    // The collection's next page of summaries is the next read.
                    self.waiting = Waiting::Summaries;
                    return;
                }
                if let Phase::Changed {
                    through: Some(after), ..
                } = &c.phase
                {
                    // The changes are read: every document after what the part before covered.
                    c.after = Some(after.clone());
                    c.covered = Some(after.clone());
                    c.phase = Phase::All;
                    self.waiting = Waiting::Summaries;
                    return;
                }
                // The next collection's summaries are the next read.
                self.next_collection();
                return;
            };
            if c.phase == Phase::All {
                c.covered = Some(id.clone());
            }
            match scoped {
                Scoped::Plain(first) => {
                    if self.refine_and_take(id, first) {
                        return;
                    }
                }
                Scoped::Check(step, has) => {
                    self.waiting = Waiting::CheckBody { id, step, has };
                    return;
                }
                Scoped::Remove(version) => self.removed(id, version),
            }
        }
    }

    /// Weighs a first step (asking for patch sizes when they decide it) and takes it: true when
    /// it waits for a read.
    fn refine_and_take(&mut self, id: String, first: Step) -> bool {
        let c = self.current.as_ref().expect("a step belongs to a collection");
        let summary = summary_of(&c.summaries, &id);
        if let Some((from, to)) = sizes_needed(&first, summary) {
            self.waiting = Waiting::PatchSizes { id, from, to };
            return true;
        }
        let step = refine(first, summary, &[]);
        self.take(id, step)
    }

    /// Records that document `id`, which the client has at `version`, is out of every scope.
    fn removed(&mut self, id: String, version: Version) {
        let c = self.current.as_mut().expect("a removal belongs to a collection");
        c.documents.push((id, DocRows::Removed { version }));
        self.used = self.used.saturating_add(super::SNAPSHOT_OVERHEAD);
    }

    /// Takes the final step for document `id`: waits for the read it needs (returns true), or
    /// records it right away.
    fn take(&mut self, id: String, step: Step) -> bool {
        let c = self.current.as_mut().expect("a step belongs to a collection");
        self.waiting = match step {
            Step::Nothing => return false,
            Step::Delete { version } => {
                c.documents.push((id, DocRows::Deleted { version }));
                self.used = self.used.saturating_add(super::SNAPSHOT_OVERHEAD);
                return false;
            }
            Step::Events { from, to } => Waiting::Events { id, from, to },
            Step::Snapshot { version } => Waiting::Document { id, version },
        };
        true
    }

    /// Closes the current collection (if any) and asks for the next one's summaries.
    fn next_collection(&mut self) {
        if let Some(done) = self.current.take() {
            self.out.collections.push(CollectionRows {
                collection: done.name.to_string(),
                documents: done.documents,
            });
        }
        // Every collection before the next one was pushed, planned or cut.
        self.index = self.out.collections.len();
        if self.spent() && self.pending.len() > 0 {
            self.out.complete = false;
            self.out.resume = Some(Resume {
                position: self.out.position,
                collection: self.collections[self.index].clone(),
                after: None,
            });
            return;
        }
        if let Some(name) = self.pending.next() {
            self.current = Some(Collection {
                name,
                phase: Phase::All,
                covered: None,
                scopes: self.selection.and_then(|s| s.scopes.get(name.as_str())),
                summaries: Vec::new(),
                after: None,
                more: false,
                windows: Vec::new(),
                taken: HashSet::new(),
                steps: Vec::new().into_iter(),
                documents: Vec::new(),
            });
            self.start_phase();
            self.waiting = Waiting::Summaries;
        }
    }
}

/// The windows of `scopes` to resolve over `summaries`: per scope with `latest`, the live
/// documents its ids admit, newest by creation first (then by id, the later first).
fn windows(scopes: &Scopes, summaries: &[DocSummary]) -> Vec<Window> {
    scopes
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.latest()?, s)))
        .map(|(scope, wanted, s)| {
            let mut candidates: Vec<usize> = (0..summaries.len())
                .filter(|&k| !summaries[k].deleted && s.admits_id(&summaries[k].id))
                .collect();
            candidates.sort_by(|&a, &b| {
                let (a, b) = (&summaries[a], &summaries[b]);
                (b.created, &b.id).cmp(&(a.created, &a.id))
            });
            Window {
                scope,
                candidates,
                next: 0,
                wanted,
            }
        })
        .collect()
}

/// Plans a collection followed in part: every document the server has and every one the client
/// claims, in id order, each either planned as usual, checked against its body first, or removed.
fn plan_scoped(
    client: Option<&BTreeMap<String, Version>>,
    server: &[DocSummary],
    scopes: &Scopes,
    taken: &HashSet<String>,
    range: Option<IdRange<'_>>,
) -> Vec<(String, Scoped)> {
    let empty = BTreeMap::new();
    let client = client.unwrap_or(&empty);
    let mut out = Vec::new();
    let mut decide = |id: &str, summary: Option<&DocSummary>| {
        let has = client.get(id).copied().filter(|v| *v > 0);
        let admit = if taken.contains(id) {
            Admit::Yes
        } else {
            scopes.admit(id)
        };
        let step = step(has, summary);
        let scoped = match admit {
            Admit::Yes => Scoped::Plain(step),
            Admit::No => match has {
                Some(v) => Scoped::Remove(v),
                None => return,
            },
            // A delete is a delete, whatever the scope.
            Admit::Body if summary.is_none_or(|s| s.deleted) => Scoped::Plain(step),
            Admit::Body => Scoped::Check(step, has),
        };
        if scoped != Scoped::Plain(Step::Nothing) {
            out.push((id.to_string(), scoped));
        }
    };
    for s in server {
        decide(&s.id, Some(s));
    }
    for (id, _) in range.into_iter().flat_map(|range| in_range(client, range)) {
        if summary_of(server, id).is_none() {
            decide(id, None);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::model::{Document, Op};
    use crate::time::Timestamp;

    /// One document of the in-memory log: its record and its retained events' patch sizes.
    struct Doc {
        version: Version,
        deleted: bool,
        compacted_through: Version,
        data_bytes: u64,
        patch_bytes: u64,
        created: i64,
        /// The position of its last change.
        seq: Seq,
    }

    fn doc(version: Version, deleted: bool, compacted_through: Version, data_bytes: u64) -> Doc {
        Doc {
            version,
            deleted,
            compacted_through,
            data_bytes,
            patch_bytes: 10,
            created: 0,
            seq: 1,
        }
    }

    /// Answers every read from `db` (collection → id → document); returns the rows and the reads.
    fn run(
        db: &BTreeMap<&str, BTreeMap<&str, Doc>>,
        collections: &[&str],
        vector: &StateVector,
    ) -> (CatchUpRows, Vec<String>) {
        run_within(db, collections, vector, u64::MAX)
    }

    /// [`run`] with a byte budget.
    fn run_within(
        db: &BTreeMap<&str, BTreeMap<&str, Doc>>,
        collections: &[&str],
        vector: &StateVector,
        budget: u64,
    ) -> (CatchUpRows, Vec<String>) {
        run_from(db, 99, collections, vector, budget, None)
    }

    /// [`run_within`] at `position`, going on from `resume`.
    fn run_from(
        db: &BTreeMap<&str, BTreeMap<&str, Doc>>,
        position: Seq,
        collections: &[&str],
        vector: &StateVector,
        budget: u64,
        resume: Option<Resume>,
    ) -> (CatchUpRows, Vec<String>) {
        let collections: Vec<String> = collections.iter().map(|c| c.to_string()).collect();
        let mut planner = Planner::new(position, &collections, vector)
            .with_budget(budget)
            .resuming(resume);
        let mut reads = Vec::new();
        while let Some(need) = planner.need() {
            reads.push(format!("{need:?}"));
            let answer = match need {
                Need::Summaries {
                    collection,
                    after,
                    limit,
                    changed_after,
                    through,
                } => Answer::Summaries(
                    db.get(collection)
                        .into_iter()
                        .flatten()
                        .filter(|(id, _)| after.is_none_or(|a| **id > a))
                        .filter(|(id, d)| {
                            changed_after.is_none_or(|p| d.seq > p && through.is_none_or(|t| **id <= t))
                        })
                        .take(limit)
                        .map(|(id, d)| DocSummary {
                            id: id.to_string(),
                            version: d.version,
                            deleted: d.deleted,
                            compacted_through: d.compacted_through,
                            data_bytes: d.data_bytes,
                            created: d.created,
                        })
                        .collect(),
                ),
                Need::PatchSizes {
                    collection,
                    id,
                    from,
                    to,
                } => {
                    let d = &db[collection][id];
                    Answer::PatchSizes((from..=to).map(|_| d.patch_bytes).collect())
                }
                Need::Events {
                    collection,
                    id,
                    from,
                    to,
                } => Answer::Events((from..=to).map(|v| event(collection, id, v)).collect()),
                Need::Document { collection, id } => {
                    Answer::Document(db.get(collection).and_then(|c| c.get(id)).map(|d| StoredDoc {
                        doc: Document {
                            collection: collection.into(),
                            id: id.into(),
                            version: d.version,
                            created_at: Timestamp(0),
                            updated_at: Timestamp(0),
                            data: body(),
                        },
                        deleted: d.deleted,
                        compacted_through: d.compacted_through,
                        snapshot_version: 0,
                    }))
                }
            };
            planner.answer(answer);
        }
        (planner.finish(), reads)
    }

    /// The vector `rows` bring a client with `vector` to.
    fn applied(mut vector: StateVector, rows: &CatchUpRows) -> StateVector {
        for c in &rows.collections {
            let docs = vector.entry(c.collection.clone()).or_default();
            for (id, d) in &c.documents {
                match d {
                    DocRows::Events { to, .. } => docs.insert(id.clone(), *to),
                    DocRows::Body { version, .. } => docs.insert(id.clone(), *version),
                    DocRows::Deleted { version: 0 } | DocRows::Removed { .. } => docs.remove(id),
                    DocRows::Deleted { version } => docs.insert(id.clone(), *version),
                };
            }
        }
        vector
    }

    #[test]
    fn a_budget_cuts_the_plan_into_parts_that_together_are_the_whole() {
        let ids: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let mut db = BTreeMap::new();
        for c in ["a", "b"] {
            let docs: BTreeMap<&str, Doc> = ids
                .iter()
                .map(|id| (id.as_str(), doc(3, false, 0, 1000)))
                .collect();
            db.insert(c, docs);
        }
        // The client has a's first documents at version 2: events for those.
        let mut start = StateVector::new();
        start.insert("a".into(), [("d0".to_string(), 2), ("d1".to_string(), 2)].into());
        let (whole, _) = run(&db, &["a", "b"], &start);
        assert!(whole.complete);
        let unbudgeted_docs: usize = whole.collections.iter().map(|c| c.documents.len()).sum();
        assert_eq!(unbudgeted_docs, 20);

        for budget in [1, 2500, 3500, 9000, 30_000] {
            let mut vector = start.clone();
            let mut parts = 0;
            let mut sent = 0;
            loop {
                let (part, _) = run_within(&db, &["a", "b"], &vector, budget);
                parts += 1;
                let n: usize = part.collections.iter().map(|c| c.documents.len()).sum();
                sent += n;
                vector = applied(vector, &part);
                if part.complete {
                    break;
                }
                assert!(n > 0, "budget {budget}: a part that is not the last moves on");
                assert!(parts <= 40, "budget {budget}: the parts do not end");
            }
            assert_eq!(
                vector,
                applied(start.clone(), &whole),
                "budget {budget}: the parts are the whole"
            );
            assert_eq!(sent, 20, "budget {budget}: no document twice");
            // A part holds documents until the budget is reached: ~1080 bytes each.
            let per_part = (budget.div_ceil(1080)).max(1) as usize;
            assert!(parts >= 20 / per_part.min(20), "budget {budget}: {parts} parts");
        }
        // With room for everything, one part, the same as no budget.
        assert_eq!(run_within(&db, &["a", "b"], &start, 1 << 30).0, whole);
    }

    #[test]
    fn a_part_goes_on_from_the_cut_reading_only_what_changed_before_it() {
        let ids: Vec<String> = (0..3000).map(|i| format!("d{i:04}")).collect();
        let mut db: BTreeMap<&str, BTreeMap<&str, Doc>> = BTreeMap::new();
        for c in ["a", "b"] {
            let docs = ids
                .iter()
                .map(|id| (id.as_str(), doc(1, false, 0, 1000)))
                .collect();
            db.insert(c, docs);
        }
        let mut vector = StateVector::new();
        let (mut position, mut resume) = (10, None);
        let mut reads = Vec::new();
        let mut parts = 0;
        loop {
            let (part, r) = run_from(&db, position, &["a", "b"], &vector, 500_000, resume.take());
            reads.extend(r);
            vector = applied(vector, &part);
            parts += 1;
            if part.complete {
                break;
            }
            resume = part.resume.clone();
            let cut = resume.clone().expect("a cut while reading everything says where");
            assert_eq!(cut.position, position);
            // Between parts, the first document of `a` changes (it is always before the cut).
            position += 1;
            let d = db.get_mut("a").unwrap().get_mut("d0000").unwrap();
            (d.version, d.seq) = (d.version + 1, position);
        }
        assert!(parts >= 12, "{parts} parts");
        let all = |c: &str| db[c].iter().map(|(id, d)| (id.to_string(), d.version)).collect();
        let want: StateVector = [("a".to_string(), all("a")), ("b".to_string(), all("b"))].into();
        assert_eq!(
            vector, want,
            "the parts are the whole, with what changed between them"
        );
        // Each summary was read once (four pages a collection), besides the changes.
        let whole_pages = reads
            .iter()
            .filter(|r| r.starts_with("Summaries") && r.contains("changed_after: None"))
            .count();
        assert!(
            whole_pages <= 2 * 4 + parts,
            "{whole_pages} pages read whole in {parts} parts"
        );
        assert!(reads.iter().any(|r| r.contains("changed_after: Some")));
    }

    fn event(collection: &str, id: &str, version: Version) -> Event {
        Event {
            seq: version,
            collection: collection.into(),
            id: id.into(),
            version,
            op: Op::Update,
            patch: json_patch::Patch(vec![]),
            client_id: "x".into(),
            op_id: "o".into(),
            ts: Timestamp(0),
            user: None,
        }
    }

    fn body() -> Data {
        match json!({"n": 1}) {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn vector(entries: &[(&str, &str, Version)]) -> StateVector {
        let mut v = StateVector::new();
        for (c, id, version) in entries {
            v.entry(c.to_string())
                .or_default()
                .insert(id.to_string(), *version);
        }
        v
    }

    #[test]
    fn a_large_collection_is_read_in_pages_and_what_the_client_has_between_them_is_reset() {
        let n = 2 * SUMMARY_PAGE + 500;
        let ids: Vec<String> = (0..n).map(|i| format!("d{i:05}")).collect();
        let docs: BTreeMap<&str, Doc> = ids.iter().map(|id| (id.as_str(), doc(2, false, 0, 10))).collect();
        let db = BTreeMap::from([("a", docs)]);
        // Current on all but one; three ids the server never had: before the first page, between
        // the first two pages (after the first page's last id), past the last page.
        let last_of_first = ids[SUMMARY_PAGE - 1].clone();
        let between = format!("{last_of_first}x");
        let mut entries: Vec<(&str, &str, Version)> = ids.iter().map(|id| ("a", id.as_str(), 2)).collect();
        entries[7].2 = 1;
        entries.extend([("a", "a0", 1), ("a", between.as_str(), 3), ("a", "zz", 4)]);
        let (rows, reads) = run(&db, &["a"], &vector(&entries));
        let pages: Vec<String> = reads
            .iter()
            .filter(|r| r.starts_with("Summaries"))
            .cloned()
            .collect();
        assert_eq!(
            pages,
            [
                r#"Summaries { collection: "a", after: None, limit: 1000, changed_after: None, through: None }"#.to_string(),
                format!(r#"Summaries {{ collection: "a", after: Some("{last_of_first}"), limit: 1000, changed_after: None, through: None }}"#),
                format!(
                    r#"Summaries {{ collection: "a", after: Some("{}"), limit: 1000, changed_after: None, through: None }}"#,
                    ids[2 * SUMMARY_PAGE - 1]
                ),
            ]
        );
        let docs: Vec<(&str, &DocRows)> = rows.collections[0]
            .documents
            .iter()
            .map(|(id, r)| (id.as_str(), r))
            .collect();
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert_eq!(docs[0], ("a0", &DocRows::Deleted { version: 0 }));
        assert_eq!(docs[1].0, ids[7]);
        assert!(matches!(
            docs[1].1,
            DocRows::Events { to: 2, .. } | DocRows::Body { version: 2, .. }
        ));
        assert_eq!(docs[2], (between.as_str(), &DocRows::Deleted { version: 0 }));
        assert_eq!(docs[3], ("zz", &DocRows::Deleted { version: 0 }));
        assert!(rows.complete);
    }

    #[test]
    fn a_current_client_costs_one_read_per_collection() {
        let db = BTreeMap::from([("a", BTreeMap::from([("x", doc(3, false, 0, 10))]))]);
        let (rows, reads) = run(&db, &["a", "b"], &vector(&[("a", "x", 3)]));
        assert_eq!(
            reads,
            [
                r#"Summaries { collection: "a", after: None, limit: 1000, changed_after: None, through: None }"#,
                r#"Summaries { collection: "b", after: None, limit: 1000, changed_after: None, through: None }"#
            ]
        );
        assert_eq!(rows.position, 99);
        let names: Vec<&str> = rows.collections.iter().map(|c| c.collection.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b"],
            "every requested collection, even with nothing to send"
        );
        assert!(rows.collections.iter().all(|c| c.documents.is_empty()));
    }

    #[test]
    fn a_client_a_few_versions_behind_gets_events_after_weighing_them() {
        let db = BTreeMap::from([("a", BTreeMap::from([("x", doc(5, false, 0, 1000))]))]);
        let (rows, reads) = run(&db, &["a"], &vector(&[("a", "x", 3)]));
        assert_eq!(
            &reads[1..],
            [
                r#"PatchSizes { collection: "a", id: "x", from: 4, to: 5 }"#,
                r#"Events { collection: "a", id: "x", from: 4, to: 5 }"#,
            ]
        );
        let events = vec![event("a", "x", 4), event("a", "x", 5)];
        assert_eq!(
            rows.collections[0].documents,
            [("x".to_string(), DocRows::Events { to: 5, events })]
        );
    }

    #[test]
    fn events_larger_than_the_body_become_the_body() {
        let mut x = doc(5, false, 0, 100);
        x.patch_bytes = 500;
        let db = BTreeMap::from([("a", BTreeMap::from([("x", x)]))]);
        let (rows, reads) = run(&db, &["a"], &vector(&[("a", "x", 3)]));
        assert_eq!(reads[2], r#"Document { collection: "a", id: "x" }"#);
        assert_eq!(
            rows.collections[0].documents,
            [(
                "x".to_string(),
                DocRows::Body {
                    version: 5,
                    data: body()
                }
            )]
        );
    }

    #[test]
    fn far_behind_reads_the_body_without_weighing_events() {
        let db = BTreeMap::from([("a", BTreeMap::from([("x", doc(10_000, false, 0, 10))]))]);
        let (rows, reads) = run(&db, &["a"], &vector(&[("a", "x", 1)]));
        assert_eq!(&reads[1..], [r#"Document { collection: "a", id: "x" }"#]);
        assert!(matches!(
            rows.collections[0].documents[0].1,
            DocRows::Body { version: 10_000, .. }
        ));
    }

    #[test]
    fn deletes_and_resets_need_no_reads() {
        let db = BTreeMap::from([(
            "a",
            BTreeMap::from([("gone", doc(4, true, 4, 0)), ("live", doc(2, false, 0, 10))]),
        )]);
        let v = vector(&[("a", "gone", 1), ("a", "live", 2), ("a", "never", 7)]);
        let (rows, reads) = run(&db, &["a"], &v);
        assert_eq!(reads.len(), 1);
        assert_eq!(
            rows.collections[0].documents,
            [
                ("gone".to_string(), DocRows::Deleted { version: 4 }),
                ("never".to_string(), DocRows::Deleted { version: 0 }),
            ]
        );
    }

    #[test]
    fn a_body_no_longer_at_the_planned_version_is_not_sent() {
        let collections = vec!["a".to_string()];
        let v = StateVector::new();
        let mut planner = Planner::new(1, &collections, &v);
        planner.answer(Answer::Summaries(vec![DocSummary {
            id: "x".into(),
            version: 2,
            deleted: false,
            compacted_through: 0,
            data_bytes: 10,
            created: 0,
        }]));
        assert_eq!(
            planner.need(),
            Some(Need::Document {
                collection: "a",
                id: "x"
            })
        );
        planner.answer(Answer::Document(None));
        assert_eq!(planner.need(), None);
        assert!(planner.finish().collections[0].documents.is_empty());
    }

    #[test]
    #[should_panic(expected = "out of turn")]
    fn an_answer_out_of_turn_is_a_bug() {
        let collections = vec!["a".to_string()];
        let v = StateVector::new();
        let mut planner = Planner::new(1, &collections, &v);
        planner.answer(Answer::Events(Vec::new()));
    }
}
