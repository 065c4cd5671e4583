// Access control in a real browser (Debian's Chromium, playwright-core) against real servers on
// 127.0.0.1:0: the UI on a server with --auth jwt shows the refusal and works once a token is
// entered; a page on another origin reaches the API and the WebSocket only when --cors-origin lists
// it (CORS preflight included), and is refused otherwise.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { WAIT, startServer, launchBrowser, byId, waitLive } from './harness.mjs';

const SECRET = 'browser-test-secret-0123456789abcdef';
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');

function sign(sub, read, write) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + 3600, eventsync: { read, write } })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

let browser;
const stops = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const stop of stops) stop();
});

/** A plain HTTP server on 127.0.0.1:0 answering every request with an empty page; its origin. */
async function pageServer() {
  const srv = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>app</title>');
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  stops.push(() => srv.close());
  return `http://127.0.0.1:${srv.address().port}`;
}

async function server(args) {
  const s = await startServer(args);
  stops.push(s.stop);
  return s.url;
}

test('with --auth jwt the UI shows the refusal, then works with a token', { timeout: 60_000 }, async () => {
  const url = await server(['--auth', 'jwt', '--jwt-secret', SECRET]);
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(url);
  const banner = byId(page, 'auth-banner');
  await banner.waitFor({ state: 'visible', timeout: WAIT });
  assert.equal(await banner.getAttribute('data-reason'), 'unauthenticated');
  assert.notEqual(await byId(page, 'status').textContent(), 'live');

  await byId(page, 'token').fill(sign('alice', ['games'], ['games']));
  await byId(page, 'token-apply').click();
  await waitLive(page);
  await banner.waitFor({ state: 'hidden', timeout: WAIT });
  await byId(page, 'create-name').fill('Token Game');
  await byId(page, 'create-submit').click();
  await page.locator('[data-testid="game-row"]', { hasText: 'Token Game' }).first().waitFor({ timeout: WAIT });
  // The write went through with the token and is recorded as alice's.
  const res = await fetch(`${url}/api/events`, { headers: { authorization: `Bearer ${sign('alice', ['games'], [])}` } });
  const events = (await res.json()).items;
  assert.equal(events.length, 1);
  assert.equal(events[0].user, 'alice');
  // A reload keeps the tab's token.
  await page.reload();
  await waitLive(page);
  await ctx.close();
});

test('another origin reaches the API and the WebSocket only when --cors-origin lists it', { timeout: 60_000 }, async () => {
  // Two plain HTTP servers serve a page each, from two origins (not EventSync's UI, whose own
  // Content-Security-Policy would rightly keep it from calling any other origin); the API server
  // lists the first.
  const allowed = await pageServer();
  const other = await pageServer();
  const api = await server(['--auth', 'jwt', '--jwt-secret', SECRET, '--cors-origin', allowed]);
  const token = sign('app', ['games'], ['games']);
  const ctx = await browser.newContext();
  const tryFrom = async (origin) => {
    const page = await ctx.newPage();
    await page.goto(`${origin}/app.html`);
    const out = await page.evaluate(async ({ api, token }) => {
      const result = {};
      try {
        // A cross-origin PATCH with Authorization and If-Match: the browser preflights it.
        const created = await fetch(`${api}/api/games`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify({ id: `g-${location.port}`, gold: 1 }),
        });
        result.create = created.status;
        const patched = await fetch(`${api}/api/games/g-${location.port}`, {
          method: 'PATCH',
          headers: { 'content-type': 'application/merge-patch+json', authorization: `Bearer ${token}`, 'if-match': '"1"' },
          body: JSON.stringify({ gold: 2 }),
        });
        result.patch = patched.status;
        result.etag = patched.headers.get('etag');
      } catch (e) {
        result.fetchError = String(e);
      }
      result.ws = await new Promise((resolve) => {
        const ws = new WebSocket(api.replace(/^http/, 'ws') + '/sync/ws');
        ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', client_id: 'x', subscribe: ['games'], token }));
        ws.onmessage = (m) => {
          if (JSON.parse(m.data).type === 'synced') { ws.close(); resolve('synced'); }
        };
        ws.onerror = () => resolve('refused');
      });
      return result;
    }, { api, token });
    await page.close();
    return out;
  };
  const ok = await tryFrom(allowed);
  assert.deepEqual(ok, { create: 201, patch: 200, etag: '"2"', ws: 'synced' });
  const refused = await tryFrom(other);
  assert.ok(refused.fetchError, `the browser blocks the call: ${JSON.stringify(refused)}`);
  assert.equal(refused.ws, 'refused');
  // Nothing of the refused page reached the store.
  const port = new URL(other).port;
  const res = await fetch(`${api}/api/games/g-${port}`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 404);
  await ctx.close();
});
