// Presence and broadcast: join (answered with the members), update, leave, broadcast, over a
// WebSocket and over SSE (whose messages go up through the stream's back channel, POST
// /sync/sse/<stream>), between the two; channels joined again after a reconnect with the last state;
// refusals tied to their join. Against the real server (../target/debug/eventsync), plus the message
// shapes.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { validateMessage, PRESENCE_LIMITS } from '../eventsync.js';
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

async function live(c) {
  c.connect();
  await waitFor(() => c.status === 'live', 'live');
  return c;
}

let n = 0;
/** A fresh channel (a collection name) per test. */
const chan = (p = 'room') => `${p}${Date.now().toString(36)}x${n++}`;

/** Records what a client emits under `name`. */
function record(c, name) {
  const seen = [];
  c.on(name, (m) => seen.push(m));
  return seen;
}

const names = (c, channel) => c.members(channel).map((m) => m.state.name).sort();

const PAIRS = [['ws', 'ws'], ['sse', 'sse'], ['ws', 'sse'], ['sse', 'ws']];

for (const [ta, tb] of PAIRS) {
  describe(`A on ${ta}, B on ${tb}`, { timeout: 30000 }, () => {
    test('join, sync, update, broadcast, leave', async () => {
      const channel = chan();
      const a = await live(client(ta));
      const b = await live(client(tb));
      const aPresence = record(a, 'presence');
      const aBroadcasts = record(a, 'broadcast');
      const bBroadcasts = record(b, 'broadcast');

      const ma = await a.join(channel, { name: 'ann' });
      assert.equal(ma.length, 1);
      assert.equal(ma[0].self, true);
      assert.equal(ma[0].client_id, a.clientId);
      assert.deepEqual(ma[0].state, { name: 'ann' });
      assert.deepEqual(a.channels(), [channel]);

      const mb = await b.join(channel, { name: 'bob' });
      assert.deepEqual(mb.map((m) => m.state.name).sort(), ['ann', 'bob']);
      assert.deepEqual(mb.filter((m) => m.self).map((m) => m.client_id), [b.clientId]);
      const bMember = mb.find((m) => m.self).member;

      // A is told of B's join.
      await waitFor(() => aPresence.some((m) => m.event === 'join' && m.member.member === bMember), 'join at A');
      assert.deepEqual(names(a, channel), ['ann', 'bob']);
      assert.equal(a.members(channel).find((m) => m.member === bMember).self, false);

      // B's new state reaches A; B's own list has it too.
      b.setPresence(channel, { name: 'bob', typing: true });
      await waitFor(() => aPresence.some((m) => m.event === 'update' && m.member.state.typing === true), 'update at A');
      assert.deepEqual(a.members(channel).find((m) => m.member === bMember).state, { name: 'bob', typing: true });
      assert.deepEqual(b.members(channel).find((m) => m.self).state, { name: 'bob', typing: true });

      // A broadcast goes to the others, not back to its sender.
      assert.equal(b.broadcast(channel, { kind: 'typing', on: true }), true);
      await waitFor(() => aBroadcasts.length === 1, 'broadcast at A');
      assert.equal(aBroadcasts[0].channel, channel);
      assert.deepEqual(aBroadcasts[0].data, { kind: 'typing', on: true });
      assert.equal(aBroadcasts[0].from.member, bMember);
      assert.equal(aBroadcasts[0].from.client_id, b.clientId);
      a.broadcast(channel, 'hello');
      await waitFor(() => bBroadcasts.length === 1, 'broadcast at B');
      assert.equal(bBroadcasts[0].data, 'hello');
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(aBroadcasts.length, 1, 'no echo of its own broadcast');

      // B leaves: A is told, B holds nothing of the channel any more.
      assert.equal(b.leave(channel), true);
      assert.equal(b.leave(channel), false);
      await waitFor(() => aPresence.some((m) => m.event === 'leave' && m.member.member === bMember), 'leave at A');
      assert.deepEqual(names(a, channel), ['ann']);
      assert.deepEqual(b.members(channel), []);
      assert.deepEqual(b.channels(), []);
      assert.throws(() => b.broadcast(channel, {}), { code: 'not_joined' });
      assert.throws(() => b.setPresence(channel, {}), { code: 'not_joined' });
      a.disconnect();
      b.disconnect();
    });

    test('a session that ends leaves; a reconnect joins again with the last state', async () => {
      const channel = chan();
      const a = await live(client(ta));
      const b = await live(client(tb));
      const aPresence = record(a, 'presence');
      const bPresence = record(b, 'presence');
      await a.join(channel, { name: 'ann' });
      const mb = await b.join(channel, { name: 'bob' });
      const first = mb.find((m) => m.self).member;
      b.setPresence(channel, { name: 'bob', mood: 'away' });
      await waitFor(() => aPresence.some((m) => m.event === 'update'), 'update at A');
      const streamBefore = b._conn.stream;

      // The connection drops under B (as the network would): the server ends its session, A sees
      // B leave; B's client reconnects and joins again, as a new member, with the state it last set.
      if (tb === 'ws') b._conn.ws.terminate();
      else b._dropped(b._conn, null);
      await waitFor(() => bPresence.some((m) => m.event === 'reset'), 'reset at B');
      await waitFor(() => aPresence.some((m) => m.event === 'leave' && m.member.member === first), 'leave of the old session');
      const rejoin = (m) => m.event === 'join' && m.member.client_id === b.clientId && m.member.member !== first;
      await waitFor(() => aPresence.some(rejoin), 'join of the new session');
      const again = aPresence.find(rejoin).member;
      assert.notEqual(again.member, first);
      assert.deepEqual(again.state, { name: 'bob', mood: 'away' });
      await waitFor(() => b.members(channel).length === 2, 'B synced again');
      assert.deepEqual(names(b, channel), ['ann', 'bob']);
      assert.equal(b.members(channel).find((m) => m.self).member, again.member);
      if (tb === 'sse') assert.notEqual(b._conn.stream, streamBefore, 'each stream has its own id');

      // disconnect() ends the session: A sees B leave.
      b.disconnect();
      await waitFor(() => aPresence.some((m) => m.event === 'leave' && m.member.member === again.member), 'leave on disconnect');
      assert.deepEqual(names(a, channel), ['ann']);
      a.disconnect();
    });
  });
}

for (const t of ['ws', 'sse']) {
  describe(`${t}: joins`, { timeout: 30000 }, () => {
    test('a join made before connect() goes out once live; a state set before its answer arrives', async () => {
      const channel = chan();
      const watcher = await live(client('ws'));
      await watcher.join(channel, { name: 'watch' });
      const seen = record(watcher, 'presence');
      const c = client(t);
      const joined = c.join(channel, { name: 'early', n: 0 });
      assert.deepEqual(c.members(channel), []);
      c.connect();
      const members = await joined;
      assert.deepEqual(members.map((m) => m.state.name).sort(), ['early', 'watch']);
      // Several states in a row, the first before any answer: the last one wins.
      const d = chan();
      const p = c.join(d, { n: 0 });
      c.setPresence(d, { n: 1 });
      c.setPresence(d, { n: 2 });
      await watcher.join(d, { name: 'watch' });
      await p;
      await waitFor(() => watcher.members(d).some((m) => !m.self && m.state.n === 2), 'the last state');
      assert.ok(seen.some((m) => m.event === 'join' && m.member.state.name === 'early'));
      // Joining a channel already joined sets the state.
      const again = await c.join(channel, { name: 'early', n: 5 });
      assert.equal(again.find((m) => m.self).state.n, 5);
      await waitFor(() => watcher.members(channel).some((m) => m.state.n === 5), 'state by a second join');
      c.disconnect();
      watcher.disconnect();
    });

    test('bounds are checked before sending; the rate is kept with the last state', async () => {
      const channel = chan();
      const c = await live(client(t));
      const watcher = await live(client('ws'));
      await assert.rejects(c.join(channel, { big: 'x'.repeat(PRESENCE_LIMITS.stateBytes) }), { code: 'invalid_message' });
      await assert.rejects(c.join('', {}), { code: 'invalid_message' });
      await assert.rejects(c.join(channel, 'no object'), { code: 'invalid_message' });
      assert.deepEqual(c.channels(), []);
      await c.join(channel, { n: 0 });
      await watcher.join(channel, { name: 'watch' });
      assert.throws(() => c.broadcast(channel, 'x'.repeat(PRESENCE_LIMITS.dataBytes)), /at most 4096 bytes/);
      assert.throws(() => c.setPresence(channel, { big: 'x'.repeat(2000) }), /at most 1024 bytes/);
      // Over the rate (20/s, bursts of 40): the server refuses some updates; the last state is sent
      // again a second later, so the others end with it.
      const errors = record(c, 'error');
      for (let i = 1; i <= 60; i++) c.setPresence(channel, { n: i });
      await waitFor(() => errors.some((e) => e.code === 'rate_limited'), 'rate_limited', 8000);
      await waitFor(() => watcher.members(channel).some((m) => !m.self && m.state.n === 60), 'the last state', 8000);
      assert.deepEqual(c.channels(), [channel], 'a refused update does not drop the channel');
      c.disconnect();
      watcher.disconnect();
    });

    test('leave() before the answer rejects the join; disconnect() rejects it and keeps the channel', async () => {
      const c = client(t);
      const channel = chan();
      const p = c.join(channel, {});
      c.leave(channel);
      await assert.rejects(p, { code: 'left' });
      const q = c.join(channel, { name: 'kept' });
      c.connect();
      c.disconnect();
      await assert.rejects(q, { code: 'disconnected' });
      assert.deepEqual(c.channels(), [channel]);
      c.connect();
      await waitFor(() => c.members(channel).length === 1, 'joined on the next connect()');
      c.disconnect();
    });
  });
}

describe('with --auth jwt', { timeout: 30000 }, () => {
  const SECRET = 'presence-test-secret-0123456789abcdef';
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const sign = (sub, read, write = []) => {
    const now = Math.floor(Date.now() / 1000);
    const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + 3600, eventsync: { read, write } })}`;
    return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
  };
  let url;
  let stop;
  before(async () => {
    ({ url, stop } = await startServer(['--auth', 'jwt', '--jwt-secret', SECRET]));
  });
  after(() => stop && stop());

  for (const t of ['ws', 'sse']) {
    test(`${t}: a channel the token may not read is refused; members carry the token's subject`, async () => {
      const c = testClient(url, t, { subscribe: ['chat'], token: sign('alice', ['chat', 'games/g1']) }, clients);
      const other = testClient(url, 'ws', { subscribe: ['chat'], token: sign('bob', ['chat']) }, clients);
      await live(c);
      await live(other);
      const errors = record(c, 'error');
      await assert.rejects(c.join('secret', {}), { code: 'forbidden' });
      await assert.rejects(c.join('games/g2', {}), { code: 'forbidden' });
      assert.equal(errors.filter((e) => e.code === 'forbidden').length, 2);
      assert.deepEqual(c.channels(), []);
      const doc = await c.join('games/g1', { at: 1 });
      assert.equal(doc[0].user, 'alice');
      await other.join('chat', { name: 'bob' });
      const members = await c.join('chat', { name: 'alice' });
      assert.deepEqual(members.map((m) => m.user).sort(), ['alice', 'bob']);
      assert.equal(c.status, 'live');
      c.disconnect();
      other.disconnect();
    });
  }
});

test('validateMessage: presence, broadcast and stream messages', () => {
  const member = { member: 'm1', client_id: 'c1', state: { name: 'ann' } };
  assert.equal(validateMessage({ type: 'stream', stream: 'abc' }), null);
  assert.match(validateMessage({ type: 'stream' }), /malformed/);
  assert.equal(validateMessage({ type: 'presence', channel: 'chat', event: 'sync', members: [member] }), null);
  assert.equal(validateMessage({ type: 'presence', channel: 'chat', event: 'sync', members: [] }), null);
  for (const event of ['join', 'update', 'leave']) {
    assert.equal(validateMessage({ type: 'presence', channel: 'chat', event, member }), null);
    assert.equal(validateMessage({ type: 'presence', channel: 'chat', event, member: { ...member, user: 'ann' } }), null);
    assert.match(validateMessage({ type: 'presence', channel: 'chat', event }), /malformed presence/);
  }
  assert.match(validateMessage({ type: 'presence', channel: 'chat', event: 'sync' }), /malformed presence/);
  assert.match(validateMessage({ type: 'presence', channel: 'chat', event: 'sync', members: [{ member: 1 }] }), /malformed/);
  assert.match(validateMessage({ type: 'presence', channel: 'chat', event: 'wave', member }), /malformed/);
  assert.match(validateMessage({ type: 'presence', event: 'join', member }), /malformed/);
  assert.match(validateMessage({ type: 'presence', channel: 'chat', event: 'join', member: { ...member, state: 3 } }), /malformed/);
  assert.equal(validateMessage({ type: 'broadcast', channel: 'chat', from: member, data: { x: 1 } }), null);
  assert.equal(validateMessage({ type: 'broadcast', channel: 'chat', from: member, data: null }), null);
  assert.match(validateMessage({ type: 'broadcast', channel: 'chat', from: member }), /malformed broadcast/);
  assert.match(validateMessage({ type: 'broadcast', channel: 'chat', data: 1 }), /malformed broadcast/);
});

test('a malformed presence message is reported, without a resync', async () => {
  const c = await live(client('ws'));
  const errors = record(c, 'error');
  let synced = 0;
  c.on('synced', () => synced++);
  c._conn.ws.onmessage({ data: '{"type":"presence","channel":"x","event":"join"}' });
  assert.equal(errors.length, 1);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(synced, 0);
  assert.equal(c.status, 'live');
  c.disconnect();
});
