// One client id per browser tab: the id and everything kept per client live in sessionStorage, keyed by
// the id; a copied sessionStorage (duplicated tab, window.open popup) is detected by a claim in localStorage.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { EventSyncClient, MemoryStorage, tabClientId, CLAIM_TTL_MS } from '../eventsync.js';

const copy = (from) => {
  const to = new MemoryStorage();
  for (const [k, v] of from.map) to.setItem(k, v);
  return to;
};
const owner = (shared, id) => JSON.parse(shared.getItem(`eventsync:${id}:owner`));

test('tabClientId: a new tab gets a new id, stored in its session and claimed in the shared storage', () => {
  const session = new MemoryStorage();
  const shared = new MemoryStorage();
  const r = tabClientId({ session, shared, token: 'p1', now: 1000 });
  assert.equal(r.reason, 'new');
  assert.match(r.clientId, /^web-[0-9a-f]{16}$/);
  assert.equal(session.getItem('eventsync:clientId'), r.clientId);
  assert.equal(shared.getItem('eventsync:clientId'), null, 'the id itself is not shared');
  assert.deepEqual(owner(shared, r.clientId), { token: 'p1', at: 1000 });
});

test('tabClientId: a reload (same session, claim released or of the same page) keeps the id', () => {
  const session = new MemoryStorage();
  const shared = new MemoryStorage();
  const { clientId } = tabClientId({ session, shared, token: 'p1', now: 1000 });
  session.setItem(`eventsync:${clientId}:state`, '{"docs":{},"vector":{}}');
  // released on pagehide, then the reloaded page (a new token) starts
  shared.removeItem(`eventsync:${clientId}:owner`);
  const r = tabClientId({ session, shared, token: 'p2', now: 2000 });
  assert.deepEqual(r, { clientId, reason: 'stored' });
  assert.ok(session.getItem(`eventsync:${clientId}:state`), 'its state is kept');
  assert.deepEqual(owner(shared, clientId), { token: 'p2', at: 2000 });
  // a second client in the same page (same token) keeps it too
  assert.deepEqual(tabClientId({ session, shared, token: 'p2', now: 2500 }), { clientId, reason: 'stored' });
});

test('tabClientId: a duplicated tab (copied session, the id claimed by another live page) gets its own id', () => {
  const session1 = new MemoryStorage();
  const shared = new MemoryStorage();
  const { clientId } = tabClientId({ session: session1, shared, token: 'p1', now: 1000 });
  session1.setItem(`eventsync:${clientId}:state`, '{"docs":{},"vector":{}}');
  session1.setItem(`eventsync:${clientId}:queue`, '[{"op_id":"o1"}]');
  const session2 = copy(session1); // what the browser does for a duplicated tab
  const r = tabClientId({ session: session2, shared, token: 'p2', now: 1000 + CLAIM_TTL_MS - 1 });
  assert.equal(r.reason, 'copied');
  assert.notEqual(r.clientId, clientId);
  assert.equal(session2.getItem('eventsync:clientId'), r.clientId);
  assert.equal(session2.getItem(`eventsync:${clientId}:queue`), null, "the copy does not send the original's queued writes");
  assert.equal(session2.getItem(`eventsync:${clientId}:state`), null);
  assert.equal(session1.getItem('eventsync:clientId'), clientId, 'the original keeps its id');
  assert.equal(session1.getItem(`eventsync:${clientId}:queue`), '[{"op_id":"o1"}]', '... and its queue');
  assert.deepEqual(owner(shared, clientId), { token: 'p1', at: 1000 }, "the original's claim is untouched");
  assert.deepEqual(owner(shared, r.clientId), { token: 'p2', at: 1000 + CLAIM_TTL_MS - 1 });
});

test('tabClientId: a stale claim (its page crashed long ago) does not take the id away', () => {
  const session = new MemoryStorage();
  const shared = new MemoryStorage();
  const { clientId } = tabClientId({ session, shared, token: 'p1', now: 1000 });
  const r = tabClientId({ session, shared, token: 'p2', now: 1000 + CLAIM_TTL_MS });
  assert.deepEqual(r, { clientId, reason: 'stored' });
});

test('tabClientId: without a shared storage (no claims) the stored id is used', () => {
  const session = new MemoryStorage();
  const a = tabClientId({ session, shared: null, token: 'p1' });
  const b = tabClientId({ session, shared: null, token: 'p2' });
  assert.equal(a.clientId, b.clientId);
});

test('tabClientId: the first tab adopts the id, state and queue that used to live in localStorage', () => {
  const shared = new MemoryStorage();
  shared.setItem('eventsync:clientId', 'web-old');
  shared.setItem('eventsync:web-old:state', '{"docs":{"games":{}},"vector":{}}');
  shared.setItem('eventsync:web-old:queue', '[{"op_id":"q1"}]');
  shared.setItem('eventsync.transport', 'sse');
  const session1 = new MemoryStorage();
  const r1 = tabClientId({ session: session1, shared, token: 'p1' });
  assert.deepEqual(r1, { clientId: 'web-old', reason: 'migrated' });
  assert.equal(session1.getItem('eventsync:web-old:queue'), '[{"op_id":"q1"}]');
  assert.equal(session1.getItem('eventsync:web-old:state'), '{"docs":{"games":{}},"vector":{}}');
  for (const k of ['eventsync:clientId', 'eventsync:web-old:state', 'eventsync:web-old:queue']) assert.equal(shared.getItem(k), null, k);
  assert.equal(shared.getItem('eventsync.transport'), 'sse', 'other keys are left alone');
  const r2 = tabClientId({ session: new MemoryStorage(), shared, token: 'p2' });
  assert.equal(r2.reason, 'new', 'a second tab does not get the old id');
});

// The constructor in a (simulated) browser: globalThis.sessionStorage / localStorage / addEventListener.
// Importing the module again under another URL gives a second "page" (its own page token).
const saved = {};
function fakeBrowser(session, shared) {
  const listeners = {};
  for (const k of ['sessionStorage', 'localStorage', 'addEventListener']) if (!(k in saved)) saved[k] = Object.getOwnPropertyDescriptor(globalThis, k);
  globalThis.sessionStorage = session;
  globalThis.localStorage = shared;
  globalThis.addEventListener = (name, fn) => (listeners[name] ||= []).push(fn);
  return (name, e = {}) => (listeners[name] || []).forEach((fn) => fn(e));
}
afterEach(() => {
  for (const [k, d] of Object.entries(saved)) {
    if (d) Object.defineProperty(globalThis, k, d);
    else delete globalThis[k];
    delete saved[k];
  }
});

test('EventSyncClient in a browser: per-tab ids, per-id keys in sessionStorage, claims released on pagehide', async () => {
  const shared = new MemoryStorage();
  const session1 = new MemoryStorage();
  const fire1 = fakeBrowser(session1, shared);
  const page1 = await import('../eventsync.js?page=1');
  const a = new page1.EventSyncClient({ url: 'http://h:1', subscribe: ['games'] });
  assert.equal(a.storage, session1, 'the default storage is the tab\'s sessionStorage');
  assert.equal(session1.getItem('eventsync:clientId'), a.clientId);
  assert.equal(shared.getItem('eventsync:clientId'), null);
  a.update('games', 'g1', { x: 1 }); // offline: queued
  assert.equal(JSON.parse(session1.getItem(`eventsync:${a.clientId}:queue`)).length, 1);
  // the UI re-creates its client when the transport changes: same page, same id
  const a2 = new page1.EventSyncClient({ url: 'http://h:1', transport: 'sse', subscribe: ['games'] });
  assert.equal(a2.clientId, a.clientId);

  // a second tab: its own session → its own id
  const session2 = new MemoryStorage();
  fakeBrowser(session2, shared);
  const page2 = await import('../eventsync.js?page=2');
  const b = new page2.EventSyncClient({ url: 'http://h:1', subscribe: ['games'] });
  assert.notEqual(b.clientId, a.clientId);
  assert.deepEqual(b.pendingWrites(), [], "tab 2 does not see tab 1's queue");

  // a duplicate of tab 1 (its session copied) while tab 1 is open: a new id and no queue
  const session3 = copy(session1);
  fakeBrowser(session3, shared);
  const page3 = await import('../eventsync.js?page=3');
  const c = new page3.EventSyncClient({ url: 'http://h:1', subscribe: ['games'] });
  assert.notEqual(c.clientId, a.clientId);
  assert.notEqual(c.clientId, b.clientId);
  assert.deepEqual(c.pendingWrites(), []);

  // tab 1 reloads: pagehide releases the claim, the new page keeps the id and the queue
  fire1('pagehide');
  assert.equal(shared.getItem(`eventsync:${a.clientId}:owner`), null);
  fakeBrowser(session1, shared);
  const page1b = await import('../eventsync.js?page=1b');
  const a3 = new page1b.EventSyncClient({ url: 'http://h:1', subscribe: ['games'] });
  assert.equal(a3.clientId, a.clientId);
  assert.equal(a3.pendingWrites().length, 1);
});

test('an explicit storage keeps the old behaviour: the id is stored in it and shared by its users', () => {
  const storage = new MemoryStorage();
  const a = new EventSyncClient({ url: 'http://h:1', storage });
  const b = new EventSyncClient({ url: 'http://h:1', storage });
  assert.equal(storage.getItem('eventsync:clientId'), a.clientId);
  assert.equal(b.clientId, a.clientId);
  assert.equal(new EventSyncClient({ url: 'http://h:1', storage, clientId: 'x' }).clientId, 'x');
});

test('in Node without web storage each client gets a fresh id in memory', () => {
  const a = new EventSyncClient({ url: 'http://h:1' });
  const b = new EventSyncClient({ url: 'http://h:1' });
  assert.ok(a.storage instanceof MemoryStorage);
  assert.notEqual(a.clientId, b.clientId);
});
