// The client's message handling against a fake WebSocket (no server): gaps, acks, writes, garbage.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSyncClient, MemoryStorage } from '../eventsync.js';

class FakeWS {
  static last;
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    FakeWS.last = this;
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  recv(m) {
    this.onmessage({ data: typeof m === 'string' ? m : JSON.stringify(m) });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code });
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
const ev = (seq, id, version, op, patch) => ({ type: 'event', seq, collection: 'games', id, version, op, patch, client_id: 'x', op_id: 'o' + seq, ts: 't' });

function make(opts = {}) {
  return new EventSyncClient({ url: 'http://h:1', transport: 'ws', subscribe: ['games'], clientId: 'c1', storage: new MemoryStorage(), WebSocket: FakeWS, backoff: { initialMs: 1, maxMs: 5 }, ...opts });
}

test('hello, synced ack, gap → sync with the vector, duplicates ignored', async () => {
  const c = make();
  c.connect();
  assert.equal(c.status, 'connecting');
  await tick();
  const ws = FakeWS.last;
  assert.equal(ws.url, 'ws://h:1/sync/ws');
  assert.deepEqual(ws.sent[0], { type: 'hello', client_id: 'c1', subscribe: ['games'], state_vector: {} });
  assert.equal(c.status, 'syncing');
  ws.recv({ type: 'snapshot', collection: 'games', id: 'g1', version: 2, data: { a: 1 }, deleted: false });
  ws.recv({ type: 'synced', seq: 10, state_vector: { games: { g1: 2 } }, snapshots: 1, events: 0 });
  assert.equal(c.status, 'live');
  assert.deepEqual(ws.sent[1], { type: 'ack', seq: 10 });
  ws.recv(ev(11, 'g1', 2, 'update', [])); // duplicate
  ws.recv(ev(12, 'g1', 4, 'update', [])); // gap
  assert.deepEqual(ws.sent[2], { type: 'sync', state_vector: { games: { g1: 2 } } });
  ws.recv(ev(13, 'g1', 5, 'update', [])); // another gap while resyncing: no second sync
  assert.equal(ws.sent.length, 3);
  assert.deepEqual(c.document('games', 'g1'), { id: 'g1', version: 2, data: { a: 1 } });
  ws.recv(ev(12, 'g1', 3, 'update', [{ op: 'add', path: '/b', value: 1 }]));
  ws.recv({ type: 'synced', seq: 12, state_vector: { games: { g1: 3 } }, snapshots: 0, events: 1 });
  assert.deepEqual(ws.sent[3], { type: 'ack', seq: 12 });
  // a live event is acked within a second, once
  ws.recv(ev(14, 'g1', 4, 'update', [{ op: 'add', path: '/c', value: 1 }]));
  ws.recv(ev(15, 'g1', 5, 'update', [{ op: 'add', path: '/d', value: 1 }]));
  await tick(1100);
  assert.deepEqual(ws.sent.slice(4), [{ type: 'ack', seq: 15 }]);
  c.disconnect();
  assert.equal(c.status, 'offline');
});

test('writes: one at a time, results by op_id, resent after a drop, error answers a write', async () => {
  const c = make();
  const p1 = c.create('games', { a: 1 }, { id: 'g1' });
  const p2 = c.remove('games', 'g1', { expectedVersion: 1 });
  c.connect();
  await tick();
  let ws = FakeWS.last;
  const w1 = ws.sent[1];
  assert.deepEqual({ ...w1, op_id: undefined }, { type: 'write', op_id: undefined, op: 'create', collection: 'games', id: 'g1', data: { a: 1 } });
  assert.equal(ws.sent.length, 2, 'the second write waits for the first result');
  ws.drop();
  await tick(20);
  ws = FakeWS.last;
  assert.equal(ws.sent[1].op_id, w1.op_id, 'resent with the same op_id');
  ws.recv({ type: 'result', op_id: w1.op_id, ok: true, id: 'g1', version: 1, seq: 3, replayed: true });
  const r1 = await p1;
  assert.deepEqual([r1.ok, r1.version, r1.seq, r1.replayed], [true, 1, 3, true]);
  const w2 = ws.sent[2];
  assert.equal(w2.op, 'delete');
  assert.equal(w2.expected_version, 1);
  ws.recv({ type: 'error', code: 'invalid_message', message: 'bad' });
  const r2 = await p2;
  assert.equal(r2.ok, false);
  assert.equal(r2.error.code, 'invalid_message');
  assert.equal(c.pendingWrites().length, 0);
  // a transient refusal is retried with the same op_id
  const p3 = c.update('games', 'g1', { a: 2 });
  await tick();
  const w3 = ws.sent.at(-1);
  assert.equal(w3.op, 'merge');
  ws.recv({ type: 'result', op_id: w3.op_id, ok: false, error: { code: 'overloaded', message: 'x' } });
  await tick(30);
  assert.equal(ws.sent.at(-1).op_id, w3.op_id);
  ws.recv({ type: 'result', op_id: w3.op_id, ok: true, id: 'g1', version: 2, seq: 9 });
  assert.equal((await p3).version, 2);
  // invalid arguments resolve at once
  assert.equal((await c.update('games', 'g1', 5)).ok, false);
  assert.equal((await c.create('games', [1])).ok, false);
  c.disconnect();
});

test('garbage: errors emitted, resync requested, nothing thrown', async () => {
  const c = make();
  const errors = [];
  c.on('error', (e) => errors.push(e));
  c.connect();
  await tick();
  const ws = FakeWS.last;
  ws.recv({ type: 'synced', seq: 1, state_vector: {}, snapshots: 0, events: 0 });
  ws.recv('{{{');
  ws.recv({ type: 'wat' });
  ws.recv({ type: 'event', seq: 2, collection: 'games', id: 'g', version: 1, op: 'update', patch: [] }); // update of nothing
  assert.ok(errors.length >= 3);
  assert.equal(ws.sent.filter((m) => m.type === 'sync').length, 1);
  c.disconnect();
});

test('client id and state persist in storage', async () => {
  const storage = new MemoryStorage();
  const a = new EventSyncClient({ url: 'http://h:1', storage, WebSocket: FakeWS, subscribe: ['games'] });
  const b = new EventSyncClient({ url: 'http://h:1', storage, WebSocket: FakeWS, subscribe: ['games'] });
  assert.match(a.clientId, /^web-[0-9a-f]+$/);
  assert.equal(a.clientId, b.clientId);
  a.connect();
  await tick();
  FakeWS.last.recv({ type: 'snapshot', collection: 'games', id: 'z', version: 1, data: { q: 1 }, deleted: false });
  FakeWS.last.recv({ type: 'snapshot', collection: 'games', id: 'y', version: 3, data: null, deleted: true });
  a.disconnect();
  const c = new EventSyncClient({ url: 'http://h:1', storage, WebSocket: FakeWS, subscribe: ['games'] });
  assert.deepEqual(c.documents('games'), [{ id: 'z', version: 1, data: { q: 1 } }]);
  assert.deepEqual(c.vector(), { games: { z: 1, y: 3 } });
  c.connect();
  await tick();
  assert.deepEqual(FakeWS.last.sent[0].state_vector, { games: { z: 1, y: 3 } });
  c.disconnect();
});
