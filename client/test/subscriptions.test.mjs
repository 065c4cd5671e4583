// Subscriptions: scopes in hello (and, over SSE, in a registered opening: POST /sync/sse, then
// GET ?resume=), `removed` when a document leaves every scope, `snapshot` when it enters one, and
// addSubscription / removeSubscription at runtime (live messages on a WebSocket; a reopened stream
// over SSE). Against the real server (../target/debug/eventsync), plus the pure message rules.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { WebSocket } from 'ws';
import {
  MemoryStorage, applyMessage, emptyState, validateMessage, normalizeSubscription, subscriptionId,
  subscriptionCollection,
} from '../eventsync.js';
import { startServer, testClient, waitFor } from './server.mjs';

let base;
let stopServer;
const clients = [];

before(async () => {
  ({ url: base, stop: stopServer } = await startServer());
});

after(() => {
  for (const c of clients) c.disconnect();
  if (stopServer) stopServer();
});

function client(transport, opts = {}) {
  return testClient(base, transport, opts, clients);
}

async function rest(method, path, body, headers = {}) {
  const res = await fetch(base + path, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json().catch(() => null) };
}

const merge = (c, id, patch) => rest('PATCH', `/api/${c}/${id}`, patch, { 'content-type': 'application/merge-patch+json' });

async function live(c) {
  c.connect();
  await waitFor(() => c.status === 'live', 'live');
}

let n = 0;
/** A fresh collection per test: what one test writes never reaches another's scopes. */
const coll = (p = 'sub') => `${p}${Date.now().toString(36)}x${n++}`;

/** Records the /sync/sse requests a client makes (method, url, headers, body). */
function recordingFetch(requests) {
  return (url, init = {}) => {
    if (String(url).includes('/sync/sse')) {
      requests.push({ method: init.method || 'GET', url: String(url), headers: { ...(init.headers || {}) }, body: init.body });
    }
    return fetch(url, init);
  };
}

/** A WebSocket that records what the client sends. */
function recordingWs(sent) {
  return class extends WebSocket {
    send(data) {
      sent.push(JSON.parse(String(data)));
      super.send(data);
    }
  };
}

const ids = (c, collection) => c.documents(collection).map((d) => d.id);

describe('message rules', () => {
  test('validateMessage accepts removed, unsubscribed and synced.subscription', () => {
    assert.equal(validateMessage({ type: 'removed', collection: 'games', id: 'g1', version: 3 }), null);
    assert.equal(validateMessage({ type: 'removed', collection: 'games', id: 'g1', version: 3, seq: 9 }), null);
    assert.equal(validateMessage({ type: 'unsubscribed', id: 'one' }), null);
    assert.equal(validateMessage({ type: 'synced', seq: 1, state_vector: {}, subscription: 'one' }), null);
    assert.equal(validateMessage({ type: 'synced', seq: 1, state_vector: {} }), null);
    assert.match(validateMessage({ type: 'removed', collection: 'games', version: 3 }), /malformed removed/);
    assert.match(validateMessage({ type: 'removed', collection: 'games', id: 'g', version: -1 }), /malformed removed/);
    assert.match(validateMessage({ type: 'removed', collection: 'games', id: 'g', version: 1, seq: 'x' }), /malformed removed/);
    assert.match(validateMessage({ type: 'unsubscribed' }), /malformed unsubscribed/);
    assert.match(validateMessage({ type: 'synced', seq: 1, state_vector: {}, subscription: 5 }), /malformed synced/);
  });

  test('removed drops the document and its vector entry; it is not a delete', () => {
    const s = emptyState();
    applyMessage(s, { type: 'snapshot', collection: 'games', id: 'g1', version: 4, data: { a: 1 }, deleted: false });
    const r = applyMessage(s, { type: 'removed', collection: 'games', id: 'g1', version: 4, seq: 12 });
    assert.equal(r.kind, 'applied');
    assert.deepEqual(r.change, { collection: 'games', id: 'g1', version: 4, data: undefined, deleted: false, removed: true, source: 'removed' });
    assert.deepEqual(s.docs, {});
    assert.deepEqual(s.vector, {}, 'no vector entry left: a later match arrives as a snapshot');
    assert.equal(s.lastSeq, 12);
    // nothing of it: nothing to change
    assert.equal(applyMessage(s, { type: 'removed', collection: 'games', id: 'g9', version: 1 }).kind, 'ignored');
    // back in scope: a snapshot at any version applies
    applyMessage(s, { type: 'snapshot', collection: 'games', id: 'g1', version: 6, data: { a: 2 }, deleted: false });
    assert.deepEqual(s.docs.games.g1, { a: 2 });
  });

  test('normalizeSubscription checks shapes and copies', () => {
    assert.equal(normalizeSubscription('games'), 'games');
    const scope = { id: 'high', collection: 'games', where: { level: { $gte: 5 } }, latest: 10 };
    const copy = normalizeSubscription(scope);
    assert.deepEqual(copy, scope);
    assert.notEqual(copy, scope);
    assert.equal(subscriptionId(copy), 'high');
    assert.equal(subscriptionCollection(copy), 'games');
    assert.equal(subscriptionId('games'), 'games');
    for (const bad of ['', 5, null, [], { collection: 'games' }, { id: 'x' }, { id: 'x', collection: 'g', ids: 'a' },
      { id: 'x', collection: 'g', where: [] }, { id: 'x', collection: 'g', latest: -1 }, { id: 'x', collection: 'g', surprise: 1 }]) {
      assert.throws(() => normalizeSubscription(bad), (e) => e.code === 'invalid_subscription', JSON.stringify(bad));
    }
  });
});

for (const transport of ['ws', 'sse']) {
  describe(`transport ${transport}`, { timeout: 30000 }, () => {
    test('a filtered subscription gets only matching documents; leaving → removed, entering → snapshot', async () => {
      const c = coll();
      await rest('POST', `/api/${c}`, { id: 'hi', level: 7 });
      await rest('POST', `/api/${c}`, { id: 'lo', level: 2 });
      await rest('POST', `/api/${c}`, { id: 'mid', level: 5 });
      const requests = [];
      const a = client(transport, {
        subscribe: [{ id: 'high', collection: c, where: { level: { $gte: 5 } } }],
        fetch: recordingFetch(requests),
      });
      const changes = [];
      const removed = [];
      a.on('change', (ch) => changes.push(ch));
      a.on('removed', (m) => removed.push(m));
      await live(a);
      assert.deepEqual(ids(a, c), ['hi', 'mid']);
      assert.deepEqual(Object.keys(a.vector()[c]).sort(), ['hi', 'mid']);
      if (transport === 'sse') {
        // the registration path: POST the opening, then GET ?resume= with nothing else
        assert.equal(requests[0].method, 'POST');
        assert.match(requests[0].url, /\/sync\/sse$/);
        const body = JSON.parse(requests[0].body);
        assert.deepEqual(body, { client_id: a.clientId, subscribe: a.subscriptions(), state_vector: {} });
        assert.equal(requests[1].method, 'GET');
        assert.match(requests[1].url, /\/sync\/sse\?resume=[0-9a-f]+$/);
        assert.ok(!requests[1].headers['last-event-id']);
      }
      // a write moves 'hi' out of the scope
      const r = await merge(c, 'hi', { level: 1 });
      assert.equal(r.status, 200);
      await waitFor(() => !a.document(c, 'hi'), 'hi removed');
      assert.deepEqual(ids(a, c), ['mid']);
      assert.equal(a.vector()[c].hi, undefined, 'the vector entry is dropped too');
      assert.equal(removed.length, 1);
      assert.deepEqual([removed[0].id, removed[0].version, removed[0].seq], ['hi', 2, r.json.event.seq]);
      const ch = changes.find((x) => x.id === 'hi' && x.removed);
      assert.deepEqual(ch, { collection: c, id: 'hi', version: 2, data: undefined, deleted: false, removed: true, source: 'removed' });
      // a write moves 'lo' in: it arrives whole
      await merge(c, 'lo', { level: 9 });
      await waitFor(() => a.document(c, 'lo'), 'lo enters');
      assert.deepEqual(a.document(c, 'lo'), { id: 'lo', version: 2, data: { level: 9 } });
      assert.equal(changes.at(-1).source, 'snapshot');
      // and leaves again, then comes back: still whole (no vector entry held it)
      await merge(c, 'lo', { level: 0 });
      await waitFor(() => !a.document(c, 'lo'), 'lo leaves');
      await merge(c, 'lo', { level: 6 });
      await waitFor(() => a.document(c, 'lo')?.version === 4, 'lo back');
      assert.deepEqual(a.document(c, 'lo').data, { level: 6 });
      // a change inside the scope is an ordinary event
      await merge(c, 'mid', { level: 8 });
      await waitFor(() => a.document(c, 'mid')?.version === 2, 'mid updated');
      assert.equal(changes.at(-1).source, 'event');
      if (transport === 'sse') {
        // a drop: it registers again (a resume id is single-use) with its vector, no Last-Event-ID
        const count = requests.length;
        a._dropped(a._conn, null);
        await merge(c, 'mid', { level: 9 });
        await waitFor(() => a.document(c, 'mid')?.version === 3 && a.status === 'live', 'caught up after the drop');
        const [post, get] = requests.slice(count);
        assert.equal(post.method, 'POST');
        assert.deepEqual(JSON.parse(post.body).state_vector, { [c]: { lo: 4, mid: 2 } });
        assert.match(get.url, /\?resume=[0-9a-f]+$/);
        assert.ok(!get.headers['last-event-id']);
      }
      a.disconnect();
    });

    test('a reconnect sends the vector of the scope\'s collection; what left meanwhile is removed', async () => {
      const c = coll();
      await rest('POST', `/api/${c}`, { id: 'x', team: 'red' });
      await rest('POST', `/api/${c}`, { id: 'y', team: 'blue' });
      const storage = new MemoryStorage();
      const opts = { storage, clientId: `cli-${coll()}`, subscribe: [{ id: 'reds', collection: c, where: { team: 'red' } }] };
      const a = client(transport, opts);
      await live(a);
      assert.deepEqual(ids(a, c), ['x']);
      a.disconnect();
      await merge(c, 'x', { team: 'blue' });
      await merge(c, 'y', { team: 'red' });
      // a "reload": a new client on the same storage and subscriptions
      const b = client(transport, opts);
      assert.deepEqual(ids(b, c), ['x']);
      const sent = [];
      if (transport === 'ws') b._WebSocket = recordingWs(sent);
      await live(b);
      assert.deepEqual(ids(b, c), ['y']);
      assert.equal(b.vector()[c].x, undefined);
      if (transport === 'ws') {
        assert.deepEqual(sent[0].subscribe, opts.subscribe);
        assert.deepEqual(sent[0].state_vector, { [c]: { x: 1 } });
      }
      b.disconnect();
    });

    test('addSubscription / removeSubscription', async () => {
      const c = coll();
      const other = coll('oth');
      await rest('POST', `/api/${c}`, { id: 'g1', n: 1 });
      await rest('POST', `/api/${c}`, { id: 'g2', n: 2 });
      await rest('POST', `/api/${other}`, { id: 'o1', n: 1 });
      const requests = [];
      const sent = [];
      const a = client(transport, { subscribe: [other], fetch: recordingFetch(requests), WebSocket: recordingWs(sent) });
      const statuses = [];
      a.on('status', (s) => statuses.push(s));
      const synced = [];
      a.on('synced', (m) => synced.push(m));
      const unsub = [];
      a.on('unsubscribed', (m) => unsub.push(m));
      await live(a);
      assert.deepEqual(ids(a, other), ['o1']);
      const connectings = () => statuses.filter((s) => s === 'connecting').length;
      const before = connectings();

      // add a scope
      const scope = { id: 'one', collection: c, ids: ['g1'] };
      const m = await a.addSubscription(scope);
      assert.equal(m.type, 'synced');
      assert.deepEqual(ids(a, c), ['g1']);
      assert.deepEqual(a.subscriptions(), [other, scope]);
      if (transport === 'ws') {
        assert.equal(m.subscription, 'one');
        assert.equal(m.snapshots, 1);
        assert.deepEqual(sent.filter((x) => x.type === 'subscribe').at(-1), { type: 'subscribe', subscription: scope });
        assert.equal(connectings(), before, 'live on the session: no reconnect');
        assert.equal(synced.at(-1), m);
      } else {
        assert.equal(m.subscription, undefined, 'SSE: the reopened stream\'s synced');
        assert.ok(connectings() > before, 'SSE reconnects');
        const post = requests.filter((r) => r.method === 'POST').at(-1);
        assert.deepEqual(JSON.parse(post.body).subscribe, [other, scope]);
        assert.match(requests.at(-1).url, /resume=/);
      }
      // the scope is live, and narrow
      await merge(c, 'g1', { n: 10 });
      await merge(c, 'g2', { n: 20 });
      await rest('POST', `/api/${other}`, { id: 'o2', n: 2 });
      await waitFor(() => a.document(c, 'g1')?.version === 2 && a.document(other, 'o2'), 'live');
      assert.equal(a.document(c, 'g2'), undefined);

      // a second scope on the same collection; then the first one ends: g1 leaves, g2 stays
      await a.addSubscription({ id: 'two', collection: c, prefix: 'g2' });
      assert.deepEqual(ids(a, c), ['g1', 'g2']);
      const removed = [];
      a.on('removed', (r) => removed.push(r));
      const u = await a.removeSubscription('one');
      assert.deepEqual(u, { type: 'unsubscribed', id: 'one' });
      assert.deepEqual(unsub.at(-1), u);
      await waitFor(() => !a.document(c, 'g1'), 'g1 removed');
      assert.deepEqual(ids(a, c), ['g2']);
      assert.deepEqual(removed.map((r) => r.id), ['g1']);
      assert.deepEqual(a.subscriptions().map(subscriptionId), [other, 'two']);
      // the whole collection goes: its documents and vector with it
      await a.removeSubscription('two');
      assert.deepEqual(ids(a, c), []);
      assert.equal(a.vector()[c], undefined);
      // a whole collection added by name, and removed
      await a.addSubscription(c);
      assert.deepEqual(ids(a, c), ['g1', 'g2']);
      await a.removeSubscription(c);
      assert.deepEqual(ids(a, c), []);
      assert.deepEqual(ids(a, other), ['o1', 'o2'], 'the other subscription is untouched');
      assert.equal(a.status, 'live');

      // refusals: a bad filter (by the server), a taken id and an unknown id (by the client)
      await assert.rejects(a.addSubscription({ id: 'bad', collection: c, where: { n: { $frob: 1 } } }),
        (e) => e.code === 'invalid_subscription' && /\$frob/.test(e.message));
      assert.deepEqual(a.subscriptions(), [other], 'a refused subscription is not kept');
      await assert.rejects(a.addSubscription(other), (e) => e.code === 'invalid_subscription');
      await assert.rejects(a.removeSubscription('nope'), (e) => e.code === 'invalid_subscription');
      await assert.rejects(a.addSubscription({ id: 'x' }), (e) => e.code === 'invalid_subscription');
      // still live and working
      await a.addSubscription({ id: 'three', collection: c, ids: ['g2'] });
      assert.deepEqual(ids(a, c), ['g2']);
      a.disconnect();
    });

    test('the subscription set is remembered across reconnects', async () => {
      const c = coll();
      await rest('POST', `/api/${c}`, { id: 'k1', on: true });
      const a = client(transport, { subscribe: [] });
      await live(a);
      await a.addSubscription({ id: 'ons', collection: c, where: { on: true } });
      assert.deepEqual(ids(a, c), ['k1']);
      const statuses = [];
      a.on('status', (s) => statuses.push(s));
      a._dropped(a._conn, null); // a network drop
      await waitFor(() => statuses.includes('live'), 'reconnected');
      await rest('POST', `/api/${c}`, { id: 'k2', on: true });
      await rest('POST', `/api/${c}`, { id: 'k3', on: false });
      await waitFor(() => a.document(c, 'k2'), 'k2 arrives on the new connection');
      assert.equal(a.document(c, 'k3'), undefined);
      a.disconnect();
    });

    test('before connect(), addSubscription resolves with the first synced', async () => {
      const c = coll();
      await rest('POST', `/api/${c}`, { id: 'p1', x: 1 });
      const a = client(transport, { subscribe: [] });
      const p = a.addSubscription({ id: 'p', collection: c, ids: ['p1'] });
      const q = a.removeSubscription('p').catch((e) => e);
      await assert.rejects(p, /removed before it synced/);
      assert.deepEqual(await q, { type: 'unsubscribed', id: 'p' });
      const p2 = a.addSubscription({ id: 'p', collection: c, ids: ['p1'] });
      a.connect();
      const m = await p2;
      assert.equal(m.type, 'synced');
      assert.deepEqual(ids(a, c), ['p1']);
      a.disconnect();
    });
  });
}

test('ws: a subscribe answered by an error while a write is in flight rejects only the subscription', async () => {
  const c = coll();
  const a = client('ws', { subscribe: [c] });
  await live(a);
  const [sub, w] = await Promise.allSettled([
    a.addSubscription({ id: 'bad', collection: c, where: { n: { $frob: 1 } } }),
    a.create(c, { v: 1 }, { id: 'w1' }),
  ]);
  assert.equal(sub.status, 'rejected');
  assert.equal(sub.reason.code, 'invalid_subscription');
  assert.equal(w.value.ok, true, JSON.stringify(w.value));
  a.disconnect();
});

test('ws: a subscription change pending when the socket drops is settled by the next hello', async () => {
  const c = coll();
  await rest('POST', `/api/${c}`, { id: 'd1', a: 1 });
  const sent = [];
  const a = client('ws', { subscribe: [], WebSocket: recordingWs(sent) });
  await live(a);
  const p = a.addSubscription({ id: 'dd', collection: c, ids: ['d1'] });
  a._conn.ws.terminate(); // the subscribe may or may not have reached the server
  const m = await p;
  assert.equal(m.type, 'synced');
  assert.deepEqual(ids(a, c), ['d1']);
  const hellos = sent.filter((x) => x.type === 'hello');
  assert.equal(hellos.length, 2);
  assert.deepEqual(hellos[1].subscribe, [{ id: 'dd', collection: c, ids: ['d1'] }]);
  a.disconnect();
});

test('sse: plain collections with a small vector keep the GET opening; a large vector is registered', async () => {
  const c = coll();
  await rest('POST', `/api/${c}`, { id: 'real', v: 1 });
  const requests = [];
  const small = client('sse', { subscribe: [c], fetch: recordingFetch(requests) });
  await live(small);
  assert.equal(requests.length, 1);
  assert.equal(requests[0].method, 'GET');
  assert.match(requests[0].url, /client_id=.*subscribe=.*state_vector=/);
  small.disconnect();

  // a stored vector of 300 documents (> 4 KB of JSON): the opening goes in a POST body
  const storage = new MemoryStorage();
  const clientId = `big-${coll()}`;
  const vector = { [c]: { real: 1 } };
  for (let i = 0; i < 300; i++) vector[c][`ghost-${String(i).padStart(4, '0')}`] = 1;
  storage.setItem(`eventsync:${clientId}:state`, JSON.stringify({ docs: { [c]: { real: { v: 1 } } }, vector }));
  const reqs = [];
  const big = client('sse', { storage, clientId, subscribe: [c], fetch: recordingFetch(reqs) });
  await live(big);
  assert.equal(reqs[0].method, 'POST');
  assert.deepEqual(JSON.parse(reqs[0].body).state_vector, vector);
  assert.match(reqs[1].url, /\?resume=[0-9a-f]+$/);
  assert.deepEqual(Object.keys(big.vector()[c]), ['real'], 'the ghosts were reset by the catch-up');
  assert.deepEqual(big.document(c, 'real'), { id: 'real', version: 1, data: { v: 1 } });
  // the ghosts are gone, so the vector is small again: a drop reconnects by GET, with the whole
  // vector and no Last-Event-ID (a registered stream's positions are not used)
  await rest('POST', `/api/${c}`, { id: 'more', v: 2 });
  await waitFor(() => big.document(c, 'more'), 'live event');
  big._dropped(big._conn, null);
  await waitFor(() => reqs.length >= 3 && big.status === 'live', 'reconnected');
  assert.equal(reqs[2].method, 'GET');
  assert.match(reqs[2].url, /state_vector=/);
  assert.ok(!reqs[2].headers['last-event-id']);
  big.disconnect();
});

test('sse: a scope refused at registration rejects its addSubscription; the stream reopens without it', async () => {
  const c = coll();
  const a = client('sse', { subscribe: [c] });
  await live(a);
  await assert.rejects(a.addSubscription({ id: 'bad', collection: c, where: { n: { $frob: 1 } } }),
    (e) => e.code === 'invalid_subscription');
  assert.deepEqual(a.subscriptions(), [c]);
  await waitFor(() => a.status === 'live', 'live again');
  await rest('POST', `/api/${c}`, { id: 'z', v: 1 });
  await waitFor(() => a.document(c, 'z'), 'still syncing');
  a.disconnect();
});

describe('with --auth jwt', { timeout: 30000 }, () => {
  const SECRET = 'client-test-secret-0123456789abcdef';
  let authBase;
  let stopAuth;
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const sign = (sub, read, write) => {
    const now = Math.floor(Date.now() / 1000);
    const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + 3600, eventsync: { read, write, admin: false } })}`;
    return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
  };
  before(async () => {
    ({ url: authBase, stop: stopAuth } = await startServer(['--auth', 'jwt', '--jwt-secret', SECRET]));
  });
  after(() => stopAuth && stopAuth());

  for (const transport of ['ws', 'sse']) {
    test(`${transport}: a subscription the token may not read is refused forbidden`, async () => {
      const requests = [];
      const a = testClient(authBase, transport, {
        token: sign('alice', ['games'], ['games']), subscribe: ['games'], fetch: recordingFetch(requests),
      }, clients);
      a.connect();
      await waitFor(() => a.status === 'live', 'live');
      await assert.rejects(a.addSubscription({ id: 's', collection: 'secret', ids: ['x'] }), (e) => e.code === 'forbidden');
      assert.deepEqual(a.subscriptions(), ['games']);
      const m = await a.addSubscription({ id: 'mine', collection: 'games', prefix: 'alice-' });
      assert.equal(m.type, 'synced');
      if (transport === 'sse') {
        const post = requests.filter((r) => r.method === 'POST').at(-1);
        assert.match(post.headers.authorization, /^Bearer /);
        assert.match(requests.at(-1).headers.authorization, /^Bearer /);
      }
      a.disconnect();
    });
  }
});
