// The chat page (static/chat.html) in a real browser: Debian's Chromium via playwright-core, the real
// server on 127.0.0.1:0. Two pages in two browser contexts (two clients), A on one transport and B on
// the other, then swapped: both see each other online; A types → B sees "A is typing…" (gone when A
// sends, or 3 s after A's last keystroke); A sends → B sees the message live; closing B's tab → A sees
// B leave. And with 25 earlier messages a fresh page shows exactly the last 20, then new ones live.
// Screenshots go to test-artifacts/ at the repository root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, WAIT, startServer, launchBrowser, byId, waitLive, rest as restAt, watchErrors } from './harness.mjs';

const ARTIFACTS = join(ROOT, 'test-artifacts');

let stopServer, url, browser;

before(async () => {
  ({ url, stop: stopServer } = await startServer());
  browser = await launchBrowser();
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  stopServer?.();
});

const rest = (method, path, body, headers) => restAt(url, method, path, body, headers);


const member = (page, name) => page.locator(`[data-testid="member"][data-name="${name}"]`);
const messages = (page) => page.locator('[data-testid="message"]');
const messageTexts = (page) => page.locator('[data-testid="message"] [data-field="text"]').allTextContents();

/** A fresh page (its own browser context: its own client) signed in to the chat as `name`. */
async function openChat(name, transport) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(`${url}/chat.html`);
  await byId(page, 'transport').locator(`input[value="${transport}"]`).check();
  await byId(page, 'name').fill(name);
  await byId(page, 'sign-in-submit').click();
  await waitLive(page);
  await byId(page, 'room').waitFor({ timeout: WAIT });
  await member(page, name).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => window.eventsyncChat.client.transport), transport);
  assert.equal(await member(page, name).getAttribute('data-self'), 'true');
  return { context, page, errors };
}

for (const [ta, tb] of [['ws', 'sse'], ['sse', 'ws']]) {
  test(`A on ${ta}, B on ${tb}: online, typing, live messages, leaving`, { timeout: 90_000 }, async () => {
    const nameA = `Ann-${ta}`;
    const nameB = `Bob-${tb}`;
    const a = await openChat(nameA, ta);
    const b = await openChat(nameB, tb);

    // Both see each other online (and themselves, marked).
    await member(a.page, nameB).waitFor({ timeout: WAIT });
    await member(b.page, nameA).waitFor({ timeout: WAIT });
    assert.equal(await member(a.page, nameB).getAttribute('data-self'), null);
    assert.equal(await byId(a.page, 'online-count').textContent(), '2');
    assert.equal(await byId(b.page, 'online-count').textContent(), '2');
    assert.equal(await byId(b.page, 'typing').textContent(), '');

    // A types: B sees it.
    await byId(a.page, 'chat-input').pressSequentially('hello there', { delay: 20 });
    await b.page.waitForFunction(
      (want) => document.querySelector('[data-testid="typing"]').textContent === want,
      `${nameA} is typing…`, { timeout: WAIT },
    );
    assert.equal(await byId(a.page, 'typing').textContent(), '', 'no indicator for oneself');

    // A sends: B sees the message live, and A no longer typing.
    const text = `hi from ${nameA} at ${Date.now()}`;
    await byId(a.page, 'chat-input').fill(text);
    await byId(a.page, 'chat-input').press('Enter');
    const atB = b.page.locator('[data-testid="message"]', { hasText: text });
    await atB.waitFor({ timeout: WAIT });
    assert.equal(await atB.getAttribute('data-name'), nameA);
    assert.equal(await atB.locator('[data-field="name"]').textContent(), nameA);
    await b.page.waitForFunction(() => document.querySelector('[data-testid="typing"]').textContent === '', null, { timeout: WAIT });
    const atA = a.page.locator('[data-testid="message"]', { hasText: text });
    await a.page.waitForFunction((t) => {
      const li = [...document.querySelectorAll('[data-testid="message"]')].find((x) => x.textContent.includes(t));
      return li && !li.dataset.pending && li.classList.contains('mine');
    }, text, { timeout: WAIT });
    assert.equal(await byId(a.page, 'chat-input').inputValue(), '');
    assert.equal(await atA.count(), 1);

    // B types and stops: A's indicator goes away by itself about 3 s after B's last keystroke.
    await byId(b.page, 'chat-input').pressSequentially('wai', { delay: 20 });
    const typedAt = Date.now();
    await a.page.waitForFunction(
      (want) => document.querySelector('[data-testid="typing"]').textContent === want,
      `${nameB} is typing…`, { timeout: WAIT },
    );
    await a.page.waitForFunction(() => document.querySelector('[data-testid="typing"]').textContent === '', null, { timeout: WAIT });
    const gone = Date.now() - typedAt;
    assert.ok(gone >= 2000 && gone <= 6000, `the indicator expired ${gone} ms after the last keystroke`);

    // B answers; both lists agree.
    const answer = `and hello from ${nameB}`;
    await byId(b.page, 'chat-input').fill(answer);
    await byId(b.page, 'send').click();
    await a.page.locator('[data-testid="message"]', { hasText: answer }).waitFor({ timeout: WAIT });
    await b.page.waitForFunction((t) => [...document.querySelectorAll('[data-testid="message"]')]
      .some((x) => x.textContent.includes(t) && !x.dataset.pending), answer, { timeout: WAIT });
    const textsA = await messageTexts(a.page);
    assert.deepEqual(await messageTexts(b.page), textsA);
    assert.deepEqual(textsA.slice(-2), [text, answer]);

    await a.page.screenshot({ path: join(ARTIFACTS, `chat-A-${ta}.png`), fullPage: true });
    await b.page.screenshot({ path: join(ARTIFACTS, `chat-B-${tb}.png`), fullPage: true });

    // B closes its tab: A sees B leave within a few seconds (closing a tab closes its socket / stream).
    const closedAt = Date.now();
    await b.context.close();
    await member(a.page, nameB).waitFor({ state: 'detached', timeout: 5000 });
    assert.ok(Date.now() - closedAt < 5000);
    assert.equal(await byId(a.page, 'online-count').textContent(), '1');

    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
    await a.context.close();
  });
}

test('a fresh page shows exactly the last 20 messages, then new ones live', { timeout: 60_000 }, async () => {
  const start = Date.now();
  const all = []; // every message's text, oldest first
  for (let i = 1; i <= 25; i++) {
    const id = `seed-${String(i).padStart(2, '0')}`;
    const [status] = await rest('POST', '/api/messages', { id, text: `earlier message ${i}`, name: 'seeder', at: start + i });
    assert.equal(status, 201, `seeding ${id}`);
    all.push(`earlier message ${i}`);
  }
  for (const transport of ['ws', 'sse']) {
    // ws: earlier messages 6 to 25; sse: 7 to 25 and the one sent live to the ws page.
    const want = all.slice(-20);
    const p = await openChat(`Reader-${transport}`, transport);
    await p.page.waitForFunction(() => document.querySelectorAll('[data-testid="message"]').length >= 20, null, { timeout: WAIT });
    await p.page.waitForTimeout(300); // nothing more arrives
    assert.equal(await messages(p.page).count(), 20, `${transport}: 20 messages`);
    assert.equal(await byId(p.page, 'message-count').textContent(), '20');
    assert.deepEqual(await messageTexts(p.page), want, `${transport}: the newest 20, oldest first`);
    // A new one (here over REST) arrives live and is added at the end.
    const live = `live after the window (${transport})`;
    const [status] = await rest('POST', '/api/messages', { text: live, name: 'seeder', at: Date.now() });
    assert.equal(status, 201);
    all.push(live);
    await p.page.locator('[data-testid="message"]', { hasText: live }).waitFor({ timeout: WAIT });
    assert.equal(await messages(p.page).count(), 21);
    assert.equal((await messageTexts(p.page)).at(-1), live);
    if (transport === 'sse') {
      // The window is per catch-up: a fresh page sees the newest 20 again, the live one included.
      const q = await openChat('Reader-again', 'ws');
      await q.page.waitForFunction(() => document.querySelectorAll('[data-testid="message"]').length >= 20, null, { timeout: WAIT });
      await q.page.waitForTimeout(300);
      const texts = await messageTexts(q.page);
      assert.equal(texts.length, 20);
      assert.equal(texts.at(-1), live);
      await q.context.close();
    }
    assert.deepEqual(p.errors, []);
    await p.context.close();
  }
});

test('the chat page fits a phone screen; the Games page links to it', { timeout: 60_000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 360, height: 740 } });
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(url);
  await byId(page, 'chat-link').click();
  await page.waitForURL(/\/chat\.html$/, { timeout: WAIT });
  await byId(page, 'sign-in').waitFor({ timeout: WAIT });
  // An empty name is not accepted.
  await byId(page, 'sign-in-submit').click();
  assert.equal(await byId(page, 'room').isVisible(), false);
  await byId(page, 'name').fill('Phone');
  await byId(page, 'sign-in-submit').click();
  await waitLive(page);
  await member(page, 'Phone').waitFor({ timeout: WAIT });
  await byId(page, 'chat-input').fill('a long message '.repeat(20) + 'https://example.com/' + 'x'.repeat(120));
  await byId(page, 'chat-input').press('Enter');
  await page.locator('[data-testid="message"][data-name="Phone"]').first().waitFor({ timeout: WAIT });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no horizontal page scroll (${overflow})`);
  await page.screenshot({ path: join(ARTIFACTS, 'chat-360.png'), fullPage: true });
  // A reload keeps the tab signed in; signing out leaves the room.
  await page.reload();
  await waitLive(page);
  await member(page, 'Phone').waitFor({ timeout: WAIT });
  await byId(page, 'sign-out').click();
  await byId(page, 'sign-in').waitFor({ timeout: WAIT });
  assert.equal(await byId(page, 'status').textContent(), 'offline');
  assert.deepEqual(errors, []);
  await context.close();
});

test('with --auth jwt: refused without a token, signed in with one (the name defaults to its subject)', { timeout: 60_000 }, async () => {
  const { createHmac } = await import('node:crypto');
  const SECRET = 'chat-test-secret-0123456789abcdef';
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const sign = (sub) => {
    const now = Math.floor(Date.now() / 1000);
    const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: now, exp: now + 3600, eventsync: { read: ['messages'], write: ['messages'] } })}`;
    return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
  };
  const server = await startServer(['--auth', 'jwt', '--jwt-secret', SECRET]);
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${server.url}/chat.html`);
    await byId(page, 'name').fill('nobody');
    await byId(page, 'sign-in-submit').click();
    await page.waitForFunction(() => {
      const n = document.querySelector('[data-testid="notice"]');
      return n.dataset.kind === 'error' && /refused the token/.test(n.textContent);
    }, null, { timeout: WAIT });
    assert.notEqual(await byId(page, 'status').textContent(), 'live');
    await byId(page, 'sign-out').click();
    // A token entered on the Games page in this tab is filled in here.
    const token = sign('carol');
    await page.evaluate((t) => sessionStorage.setItem('eventsync.token', t), token);
    await page.reload();
    assert.equal(await byId(page, 'token').inputValue(), token);
    await byId(page, 'name').fill('');
    await byId(page, 'sign-in-submit').click();
    await waitLive(page);
    await member(page, 'carol').waitFor({ timeout: WAIT });
    assert.equal(await byId(page, 'me').textContent(), 'carol');
    await byId(page, 'chat-input').fill('signed message');
    await byId(page, 'chat-input').press('Enter');
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid="message"]')]
      .some((x) => x.textContent.includes('signed message') && !x.dataset.pending), null, { timeout: WAIT });
    await context.close();
  } finally {
    server.stop();
  }
});
