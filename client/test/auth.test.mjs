// The client against a real server with --auth jwt: the token travels in hello (WebSocket) and in
// Authorization (SSE and REST writes); a token function is asked again before the token runs out
// (the session stays live past the first token's expiry, re-authenticated with `auth`); a refused
// fixed token stops the client until setToken(); documents outside the token are never received.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { tokenExpiry, refreshDelay } from '../eventsync.js';
import { startServer, testClient, waitFor } from './server.mjs';

const SECRET = 'client-test-secret-0123456789abcdef';
let base;
let stopServer;
const clients = [];

before(async () => {
  ({ url: base, stop: stopServer } = await startServer(['--auth', 'jwt', '--jwt-secret', SECRET, '--jwt-leeway', '0s']));
});

after(() => {
  for (const c of clients) c.disconnect();
  if (stopServer) stopServer();
});

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');

/** An HS256 token for `sub` valid `ttlS` seconds, with these patterns. */
function sign(sub, read, write, ttlS = 3600, admin = false) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + ttlS, eventsync: { read, write, admin } })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}
const ADMIN = sign('root', ['*'], ['*'], 3600, true);

async function rest(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json().catch(() => null) };
}

function client(transport, token, opts = {}) {
  return testClient(base, transport, { token, ...opts }, clients);
}


let n = 0;
const uid = (p) => `${p}-${Date.now().toString(36)}${n++}`;

test('tokenExpiry and refreshDelay', () => {
  assert.equal(tokenExpiry(sign('a', [], [], 100)), Math.floor(Date.now() / 1000) + 100);
  assert.equal(tokenExpiry('not a token'), null);
  assert.equal(refreshDelay(3_600_000), 2_880_000);
  assert.equal(refreshDelay(30_000), 20_000);
  assert.equal(refreshDelay(2_000), 1000);
});

for (const transport of ['ws', 'sse']) {
  test(`${transport}: sees only what its token may read; writes outside its grant are refused`, async () => {
    const mine = uid('alice');
    const theirs = uid('bob');
    assert.equal((await rest('POST', '/api/games', { id: mine, gold: 1 })).status, 201);
    assert.equal((await rest('POST', '/api/games', { id: theirs, gold: 1 })).status, 201);
    const alice = client(transport, sign('alice', ['games/alice-*'], ['games/alice-*']));
    alice.connect();
    await waitFor(() => alice.status === 'live', 'live');
    assert.ok(alice.document('games', mine));
    assert.equal(alice.document('games', theirs), undefined);
    // Live: bob's document changes, alice's changes; only hers arrives.
    assert.equal((await rest('PUT', `/api/games/${theirs}`, { gold: 2 })).status, 200);
    assert.equal((await rest('PUT', `/api/games/${mine}`, { gold: 2 })).status, 200);
    await waitFor(() => alice.document('games', mine)?.data.gold === 2, 'her update');
    assert.equal(alice.document('games', theirs), undefined);
    // Her writes go through with her token (hello for WS, Authorization for SSE's REST writes).
    const ok = await alice.update('games', mine, { gold: 3 });
    assert.equal(ok.ok, true, JSON.stringify(ok));
    const refused = await alice.update('games', theirs, { gold: 9 });
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, 'forbidden', JSON.stringify(refused));
    assert.equal((await rest('GET', `/api/games/${theirs}`)).json.data.gold, 2);
  });

  test(`${transport}: a token function keeps the session alive past the first token's expiry`, async () => {
    const id = uid('alice');
    assert.equal((await rest('POST', '/api/games', { id, gold: 1 })).status, 201);
    let asked = 0;
    // Three seconds each: the client must replace it (WS: an auth message; SSE: the stream ends at
    // expiry and is reopened with a fresh one) to keep receiving.
    const c = client(transport, () => {
      asked++;
      return sign('alice', ['games/alice-*'], ['games/alice-*'], 3);
    });
    const authenticated = [];
    c.on('authenticated', (m) => authenticated.push(m));
    c.connect();
    await waitFor(() => c.status === 'live', 'live');
    const statuses = [];
    c.on('status', (st) => statuses.push(st));
    await new Promise((r) => setTimeout(r, 4500));
    assert.equal((await rest('PUT', `/api/games/${id}`, { gold: 7 })).status, 200);
    await waitFor(() => c.document('games', id)?.data.gold === 7, 'the update after the first token expired');
    assert.ok(asked >= 2, `asked ${asked} times`);
    if (transport === 'ws') {
      assert.ok(authenticated.length >= 1, 'an auth message was answered');
      assert.ok(Number.isInteger(authenticated[0].expires_at));
      assert.deepEqual(statuses, [], 'the WebSocket session was replaced in place, never dropped');
    }
  });

  test(`${transport}: a refused fixed token stops the client until setToken`, async () => {
    const bad = client(transport, sign('alice', ['games'], ['games'], -60));
    const refusals = [];
    bad.on('unauthenticated', (e) => refusals.push(e));
    bad.on('error', () => {});
    bad.connect();
    await waitFor(() => refusals.length === 1 && bad.status === 'offline', 'the refusal');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(refusals.length, 1, 'no reconnect loop with a token that cannot work');
    assert.equal(refusals[0].code, 'unauthenticated');
    bad.setToken(sign('alice', ['games'], ['games']));
    await waitFor(() => bad.status === 'live', 'live with the new token');
  });
}

test('ws: setToken with a narrower token drops what it no longer covers', async () => {
  const a = uid('alice');
  const b = uid('bob');
  assert.equal((await rest('POST', '/api/games', { id: a })).status, 201);
  assert.equal((await rest('POST', '/api/games', { id: b })).status, 201);
  const c = client('ws', sign('alice', ['games'], []));
  c.connect();
  await waitFor(() => c.status === 'live' && c.document('games', b), 'live with both');
  const authenticated = new Promise((resolve) => c.on('authenticated', resolve));
  c.setToken(sign('alice', ['games/alice-*'], []));
  await authenticated;
  assert.equal((await rest('PUT', `/api/games/${b}`, { gold: 5 })).status, 200);
  assert.equal((await rest('PUT', `/api/games/${a}`, { gold: 5 })).status, 200);
  await waitFor(() => c.document('games', a)?.data.gold === 5, 'her update');
  assert.notEqual(c.document('games', b)?.data.gold, 5, 'an event of a document the new token cannot read');
});
