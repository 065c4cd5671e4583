// Integration tests against the real server (../target/debug/eventsync, built by `cargo build`).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { MemoryStorage } from '../eventsync.js';
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

// One write over a bare WebSocket session (hello without subscriptions, then write); resolves with its result.
function rawWsWrite(clientId, write) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(base.replace(/^http/, 'ws') + '/sync/ws');
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('raw write timed out')); }, 5000);
    ws.on('open', () => {
      ws.send(JSON.stringify({ type: 'hello', client_id: clientId, subscribe: [] }));
      ws.send(JSON.stringify({ type: 'write', ...write }));
    });
    ws.on('message', (d) => {
      const m = JSON.parse(String(d));
      if (m.type === 'result') {
        clearTimeout(timer);
        ws.close();
        resolve(m);
      }
    });
    ws.on('error', reject);
  });
}

async function live(c) {
  c.connect();
  await waitFor(() => c.status === 'live', 'live');
}

let n = 0;
const uid = (p) => `${p}-${Date.now().toString(36)}-${n++}`;

for (const transport of ['ws', 'sse']) {
  describe(`transport ${transport}`, { timeout: 30000 }, () => {
    test('create / update / replace / delete reach a second client', async () => {
      const a = client(transport);
      const b = client(transport);
      const changes = [];
      b.on('change', (ch) => changes.push(ch));
      await live(a);
      await live(b);
      const id = uid('g');
      const r1 = await a.create('games', { name: 'Orc', gold: 1 }, { id });
      assert.equal(r1.ok, true, JSON.stringify(r1));
      assert.equal(r1.id, id);
      assert.equal(r1.version, 1);
      assert.ok(r1.seq > 0);
      await waitFor(() => b.document('games', id)?.version === 1, 'b sees the create');
      assert.deepEqual(b.document('games', id), { id, version: 1, data: { name: 'Orc', gold: 1 } });
      const r2 = await a.update('games', id, [{ op: 'replace', path: '/gold', value: 5 }, { op: 'add', path: '/tags', value: ['x'] }]);
      assert.equal(r2.version, 2);
      const r3 = await a.update('games', id, { gold: 6, tags: null }, { expectedVersion: 2 });
      assert.equal(r3.ok, true, JSON.stringify(r3));
      await waitFor(() => b.document('games', id)?.version === 3, 'b sees the updates');
      assert.deepEqual(b.document('games', id).data, { name: 'Orc', gold: 6 });
      await a.replace('games', id, { name: 'Troll' });
      await waitFor(() => b.document('games', id)?.version === 4, 'b sees the replace');
      assert.deepEqual(b.document('games', id).data, { name: 'Troll' });
      const r5 = await a.remove('games', id);
      assert.equal(r5.ok, true);
      assert.equal(r5.version, 5);
      await waitFor(() => b.document('games', id) === undefined, 'b sees the delete');
      assert.equal(b.vector().games[id], 5, 'the delete version stays in the vector');
      assert.ok(!b.documents('games').some((d) => d.id === id));
      assert.deepEqual(changes.filter((c) => c.id === id).map((c) => [c.version, c.deleted, c.source]),
        [[1, false, 'event'], [2, false, 'event'], [3, false, 'event'], [4, false, 'event'], [5, true, 'event']]);
      // a create without id gets the generated one
      const r6 = await a.create('games', { name: 'Anon' });
      assert.ok(r6.ok && r6.id);
      await waitFor(() => a.document('games', r6.id), 'own write comes back');
      a.disconnect();
      b.disconnect();
      assert.equal(a.status, 'offline');
    });

    test('disconnect, REST write, reconnect catches up', async () => {
      const c = client(transport);
      await live(c);
      const id = uid('d');
      await c.create('games', { v: 1 }, { id });
      await waitFor(() => c.document('games', id), 'own create');
      c.disconnect();
      await rest('PATCH', `/api/games/${id}`, { v: 2 }, { 'content-type': 'application/merge-patch+json' });
      const other = uid('o');
      await rest('POST', '/api/games', { id: other, w: 1 });
      assert.equal(c.document('games', id).version, 1);
      const synced = [];
      c.on('synced', (m) => synced.push(m));
      await live(c);
      assert.deepEqual(c.document('games', id), { id, version: 2, data: { v: 2 } });
      assert.deepEqual(c.document('games', other).data, { w: 1 });
      assert.equal(synced.length, 1);
      assert.ok(synced[0].snapshots + synced[0].events <= 2, 'only what was missed: ' + JSON.stringify(synced[0]));
      c.disconnect();
    });

    test('persisted state resumes from storage', async () => {
      const storage = new MemoryStorage();
      const c1 = client(transport, { storage, clientId: undefined });
      const clientId = c1.clientId;
      assert.match(clientId, /^web-/);
      assert.equal(storage.getItem('eventsync:clientId'), clientId);
      await live(c1);
      const id = uid('p');
      await c1.create('games', { a: 1 }, { id });
      await waitFor(() => c1.document('games', id), 'own create');
      c1.disconnect();
      assert.ok(storage.getItem(`eventsync:${clientId}:state`).includes(id));
      await rest('PATCH', `/api/games/${id}`, [{ op: 'add', path: '/b', value: 2 }], { 'content-type': 'application/json-patch+json' });
      // a "reload": a new client on the same storage
      const c2 = client(transport, { storage });
      assert.equal(c2.clientId, clientId);
      assert.deepEqual(c2.document('games', id), { id, version: 1, data: { a: 1 } });
      const synced = new Promise((r) => c2.on('synced', r));
      c2.connect();
      const m = await synced;
      assert.deepEqual(c2.document('games', id), { id, version: 2, data: { a: 1, b: 2 } });
      assert.equal(m.snapshots + m.events, 1, 'only the missed change is sent: ' + JSON.stringify(m));
      c2.disconnect();
    });

    test('a version conflict resolves ok:false and emits conflict', async () => {
      const c = client(transport);
      await live(c);
      const id = uid('c');
      await c.create('games', { a: 1 }, { id });
      await c.update('games', id, { a: 2 });
      const conflicts = [];
      c.on('conflict', (x) => conflicts.push(x));
      const r = await c.update('games', id, { a: 3 }, { expectedVersion: 1 });
      assert.equal(r.ok, false);
      assert.equal(r.error.code, 'version_conflict');
      assert.equal(r.error.current_version, 2);
      assert.equal(conflicts.length, 1);
      assert.equal(conflicts[0].collection, 'games');
      assert.equal(conflicts[0].id, id);
      assert.equal(conflicts[0].currentVersion, 2);
      assert.equal(conflicts[0].opId, r.opId);
      c.disconnect();
    });

    test('offline writes are queued, sent in order and applied once', async () => {
      const storage = new MemoryStorage();
      const c = client(transport, { storage, clientId: uid('q') });
      const id = uid('q');
      const p1 = c.create('games', { n: 0 }, { id });
      const p2 = c.update('games', id, [{ op: 'replace', path: '/n', value: 1 }]);
      const p3 = c.update('games', id, { n: 2 });
      assert.equal(c.pendingWrites().length, 3);
      assert.equal(JSON.parse(storage.getItem(`eventsync:${c.clientId}:queue`)).length, 3);
      // the first write already reached the server once (its answer was lost): same op_id
      const opId = c.pendingWrites()[0].op_id;
      // (through the transport the client itself uses: the server fingerprints REST and WS writes differently)
      if (transport === 'sse') {
        const pre = await rest('POST', '/api/games', { n: 0, id }, { 'x-client-id': c.clientId, 'idempotency-key': opId });
        assert.equal(pre.status, 201);
      } else {
        const pre = await rawWsWrite(c.clientId, { op_id: opId, op: 'create', collection: 'games', id, data: { n: 0 } });
        assert.equal(pre.ok, true);
      }
      c.connect();
      const [r1, r2, r3] = await Promise.all([p1, p2, p3]);
      assert.equal(r1.ok, true, JSON.stringify(r1));
      assert.equal(r1.replayed, true);
      assert.equal(r1.version, 1);
      assert.deepEqual([r2.version, r3.version], [2, 3]);
      await waitFor(() => c.document('games', id)?.version === 3, 'caught up');
      assert.deepEqual(c.document('games', id).data, { n: 2 });
      const events = (await rest('GET', `/api/events?collection=games&id=${id}`)).json.items;
      assert.equal(events.length, 3, 'each write applied once');
      assert.equal(JSON.parse(storage.getItem(`eventsync:${c.clientId}:queue`)).length, 0);
      c.disconnect();
    });

    test('a queue persisted before a reload is sent by the next client', async () => {
      const storage = new MemoryStorage();
      const clientId = uid('r');
      const c1 = client(transport, { storage, clientId });
      const id = uid('r');
      c1.create('games', { x: 1 }, { id }); // never connected: stays queued
      const c2 = client(transport, { storage, clientId });
      assert.equal(c2.pendingWrites().length, 1);
      const results = [];
      c2.on('result', (r) => results.push(r));
      await live(c2);
      await waitFor(() => results.length === 1, 'result');
      assert.equal(results[0].ok, true);
      await waitFor(() => c2.document('games', id), 'document');
      c2.disconnect();
    });

    test('sync() resolves with a synced message', async () => {
      const c = client(transport);
      await assert.rejects(c.sync(), /offline/);
      await live(c);
      const id = uid('s');
      await rest('POST', '/api/games', { id, z: 1 });
      const m = await c.sync();
      assert.equal(m.type, 'synced');
      assert.ok(m.state_vector.games);
      await waitFor(() => c.document('games', id), 'document');
      assert.deepEqual(c.vector().games[id], 1);
      assert.equal(c.status, 'live');
      c.disconnect();
    });

    test('a state vector claiming too much is reset by snapshots', async () => {
      const storage = new MemoryStorage();
      const clientId = uid('v');
      const id = uid('v');
      await rest('POST', '/api/games', { id, k: 1 });
      storage.setItem(`eventsync:${clientId}:state`, JSON.stringify({
        docs: { games: { [id]: { k: 99 }, ghost: { g: 1 } } },
        vector: { games: { [id]: 9, ghost: 4 } },
      }));
      const c = client(transport, { storage, clientId });
      await live(c);
      assert.deepEqual(c.document('games', id), { id, version: 1, data: { k: 1 } });
      assert.equal(c.document('games', 'ghost'), undefined);
      assert.equal(c.vector().games.ghost, undefined);
      c.disconnect();
    });
  });
}

test('ws: reconnects by itself after the server drops it; status events', async () => {
  const c = client('ws');
  const statuses = [];
  c.on('status', (s) => statuses.push(s));
  await live(c);
  // Kill the socket from underneath (as a network drop would).
  c._conn.ws.terminate();
  await waitFor(() => statuses.filter((s) => s === 'live').length >= 2, 'reconnected');
  assert.deepEqual(statuses.slice(0, 3), ['connecting', 'syncing', 'live']);
  assert.ok(statuses.includes('connecting', 3));
  const id = uid('k');
  const r = await c.create('games', { a: 1 }, { id });
  assert.equal(r.ok, true);
  c.disconnect();
});

test('ws: events and acks — the server remembers the acknowledged vector', async () => {
  const clientId = uid('ack');
  const c = client('ws', { clientId });
  const events = [];
  c.on('event', (e) => events.push(e));
  await live(c);
  const id = uid('a');
  await c.create('games', { a: 1 }, { id });
  await waitFor(() => events.some((e) => e.id === id), 'event');
  await waitFor(async () => {
    const r = await rest('GET', `/api/clients/${clientId}`);
    return r.status === 200 && r.json.state_vector.games?.[id] === 1;
  }, 'acked vector', 5000);
  c.disconnect();
});

test('garbage from the server emits error and does not throw', async () => {
  const c = client('ws');
  const errors = [];
  c.on('error', (e) => errors.push(e));
  await live(c);
  const synced = new Promise((r) => c.on('synced', r));
  c._conn.ws.onmessage({ data: 'not json' });
  c._conn.ws.onmessage({ data: '{"type":"event","seq":"x"}' });
  await synced; // it resynced
  assert.ok(errors.length >= 2);
  assert.equal(c.status, 'live');
  c.disconnect();
});

test('sse: a dropped stream resumes with Last-Event-ID; sync() and gaps reopen without it', async () => {
  const requests = [];
  const recordingFetch = (url, init = {}) => {
    if (String(url).includes('/sync/sse')) requests.push({ url: String(url), headers: { ...(init.headers || {}) } });
    return fetch(url, init);
  };
  const c = client('sse', { fetch: recordingFetch });
  await live(c);
  const id = uid('l');
  const r = await c.create('games', { a: 1 }, { id });
  await waitFor(() => c.document('games', id), 'own create');
  assert.ok(!requests[0].headers['last-event-id']);
  assert.match(requests[0].url, /state_vector=/);
  // a network drop: the client reconnects by itself with the last id it saw
  c._dropped(c._conn, null);
  await rest('PATCH', `/api/games/${id}`, { a: 2 }, { 'content-type': 'application/merge-patch+json' });
  await waitFor(() => c.document('games', id)?.version === 2, 'caught up after the drop');
  assert.equal(requests[1].headers['last-event-id'], String(r.seq));
  const m = await c.sync();
  assert.equal(m.type, 'synced');
  assert.ok(!requests.at(-1).headers['last-event-id']);
  assert.equal(c.status, 'live');
  c.disconnect();
});
