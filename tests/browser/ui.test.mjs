// The browser UI in a real browser: Debian's Chromium driven by playwright-core, against the real
// server on 127.0.0.1:0. Two pages (two browser contexts, so two clients): page 1 on WebSocket,
// page 2 on SSE. Screenshots of both pages go to test-artifacts/ at the repository root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, WAIT, startServer, launchBrowser, byId, waitLive } from './harness.mjs';

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

async function chooseTransport(page, transport) {
  const control = byId(page, 'transport');
  const tag = await control.evaluate((el) => el.tagName);
  if (tag === 'SELECT') {
    await control.selectOption(transport);
  } else {
    await control.locator(`input[value="${transport}"]`).check();
  }
}

async function open(context, transport) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(url);
  await byId(page, 'disconnect').click();
  await chooseTransport(page, transport);
  await byId(page, 'connect').click();
  await waitLive(page);
  return page;
}

const row = (page, id) => page.locator(`[data-testid="game-row"][data-id="${id}"]`);

async function createGame(page, name, gold) {
  await byId(page, 'create-name').fill(name);
  await byId(page, 'create-gold').fill(String(gold));
  await byId(page, 'create-level').fill('1');
  await byId(page, 'create-experience').fill('0');
  await byId(page, 'create-submit').click();
  const created = page.locator('[data-testid="game-row"]', { hasText: name });
  await created.first().waitFor({ timeout: WAIT });
  return created.first().getAttribute('data-id');
}

async function setGold(page, id, gold) {
  await row(page, id).click();
  await byId(page, 'detail').waitFor({ timeout: WAIT });
  await byId(page, 'update-gold').fill(String(gold));
  await byId(page, 'update-submit').click();
}

async function api(path) {
  const res = await fetch(url + path);
  return [res.status, await res.json()];
}

async function serverVersion(id) {
  const [, doc] = await api(`/api/games/${id}`);
  return doc.version;
}

async function untilEqual(fn, want, what) {
  const deadline = Date.now() + WAIT;
  let got;
  while (Date.now() < deadline) {
    got = await fn();
    if (JSON.stringify(got) === JSON.stringify(want)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(got, want, what);
}

test('two pages, WebSocket and SSE, stay in sync', { timeout: 120_000 }, async () => {
  const ctx1 = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const ctx2 = await browser.newContext({ viewport: { width: 375, height: 800 } });
  const page1 = await open(ctx1, 'ws');
  const page2 = await open(ctx2, 'sse');
  const client2 = (await byId(page2, 'client-id').textContent()).trim();
  assert.notEqual((await byId(page1, 'client-id').textContent()).trim(), client2, 'two clients');

  // A game created in page 1 appears in page 2.
  const id = await createGame(page1, 'Orc Siege', 100);
  await row(page2, id).waitFor({ timeout: WAIT });
  await page2.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes('100'), id, { timeout: WAIT });

  // An update in page 2 shows in page 1, and both event logs have it.
  await setGold(page2, id, 150);
  await page1.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes('150'), id, { timeout: WAIT });
  const updateSeq = (await api(`/api/events?collection=games&id=${id}&op=update`))[1].items[0].seq;
  for (const page of [page1, page2]) {
    await page.locator(`[data-testid="log-entry"][data-seq="${updateSeq}"]`).waitFor({ timeout: WAIT });
  }

  // Page 2 disconnects; page 1 makes several updates; page 2 reconnects and catches up.
  await byId(page2, 'disconnect').click();
  for (const gold of [200, 250, 300]) {
    await setGold(page1, id, gold);
    await page1.waitForFunction(([i, g]) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes(String(g)), [id, gold], { timeout: WAIT });
  }
  const version = await serverVersion(id);
  await byId(page2, 'connect').click();
  await waitLive(page2);
  await page2.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes('300'), id, { timeout: WAIT });
  await row(page2, id).click();
  await page2.waitForFunction((v) => document.querySelector('[data-testid="detail-version"]')?.textContent.includes(String(v)), version, { timeout: WAIT });
  // Its state vector, as shown, matches what the server remembers for it.
  await untilEqual(async () => {
    const [status, body] = await api(`/api/clients/${client2}`);
    return status === 200 ? body.state_vector.games?.[id] : undefined;
  }, version, 'the server remembers page 2 at the current version');
  const shownVector = await byId(page2, 'vector').textContent();
  assert.ok(shownVector.includes(id) && shownVector.includes(String(version)), `vector shows ${id} at ${version}: ${shownVector}`);

  // The Sync state button performs a manual sync and shows what it brought.
  await byId(page2, 'sync').click();
  await page2.waitForFunction(() => /synced/i.test(document.querySelector('[data-testid="sync-result"]')?.textContent ?? ''), null, { timeout: WAIT });

  // A conflict: page 1 opens the game, page 2 changes it, page 1's stale update is refused visibly.
  await row(page1, id).click();
  await page1.waitForFunction((v) => document.querySelector('[data-testid="detail-version"]')?.textContent.includes(String(v)), version, { timeout: WAIT });
  await setGold(page2, id, 999);
  await page1.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes('999'), id, { timeout: WAIT });
  await byId(page1, 'update-gold').fill('1');
  await byId(page1, 'update-submit').click();
  await byId(page1, 'conflict').waitFor({ state: 'visible', timeout: WAIT });
  const conflict = await byId(page1, 'conflict').textContent();
  assert.match(conflict, /conflict/i);
  assert.ok(conflict.includes('999') || conflict.includes(String(version + 1)), `the conflict shows the current value or version: ${conflict}`);
  assert.equal((await api(`/api/games/${id}`))[1].data.gold, 999, 'the stale update changed nothing');

  // Deleting a game in page 1 removes it from page 2.
  const doomed = await createGame(page1, 'Goblin Cave', 5);
  await row(page2, doomed).waitFor({ timeout: WAIT });
  await row(page1, doomed).click();
  await byId(page1, 'delete').click();
  await row(page2, doomed).waitFor({ state: 'detached', timeout: WAIT });
  assert.equal((await api(`/api/games/${doomed}`))[0], 404);

  await page1.screenshot({ path: join(ARTIFACTS, 'page1-websocket.png'), fullPage: true });
  await page2.screenshot({ path: join(ARTIFACTS, 'page2-sse.png'), fullPage: true });

  // A reload keeps the client id and resumes.
  await page2.reload();
  await waitLive(page2);
  assert.equal((await byId(page2, 'client-id').textContent()).trim(), client2, 'the client id survives a reload');
  await page2.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes('999'), id, { timeout: WAIT });
  await page2.screenshot({ path: join(ARTIFACTS, 'page2-after-reload.png'), fullPage: true });

  await ctx1.close();
  await ctx2.close();
});

/* ------------------------------------------------------------------------------------------------
 * The fixes of the UI review: console errors, event history, create form, per-tab client ids,
 * event log alignment.
 */

/** Collects console errors, page errors and failed (>= 400) responses of a page. */
function watchErrors(page) {
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()} ${JSON.stringify(m.location())}`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`); });
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  return errors;
}

async function rest(method, path, body, headers = {}) {
  const res = await fetch(url + path, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return [res.status, await res.json()];
}

const clientIdOf = async (page) => (await byId(page, 'client-id').textContent()).trim();
const logSeqs = (page) => page.locator('[data-testid="log-entry"]').evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
const logEntry = (page, seq) => page.locator(`[data-testid="log-entry"][data-seq="${seq}"]`);

test('a page load logs no console error and asks for no missing favicon', { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  const requested = [];
  page.on('request', (r) => requested.push(new URL(r.url()).pathname));
  await page.goto(url);
  await waitLive(page);
  await page.waitForLoadState('networkidle');
  await page.waitForTimeout(500);
  assert.deepEqual(errors, [], 'no console error, page error or failed request on load');
  assert.ok(!requested.includes('/favicon.ico'), `no /favicon.ico request: ${requested.join(' ')}`);
  const icon = await page.locator('link[rel="icon"]').getAttribute('href', { timeout: 1000 });
  assert.equal(icon, '/favicon.svg');
  const res = await fetch(new URL(icon, url));
  assert.equal(res.status, 200, 'the favicon is served');
  assert.match(res.headers.get('content-type'), /^image\/svg\+xml/);
  assert.match(await res.text(), /^<svg[\s>]/);
  // a reload (the state is resumed from storage) is clean too
  await page.reload();
  await waitLive(page);
  await page.waitForTimeout(500);
  assert.ok(!requested.includes('/favicon.ico'), `no /favicon.ico request after a reload: ${requested.join(' ')}`);
  assert.deepEqual(errors, [], 'no console error, page error or failed request after a reload');
  await ctx.close();
});

test('the event log shows the recent events after a (re)load, without duplicates', { timeout: 60_000 }, async () => {
  // Events that happened before the page was ever opened.
  const [, a] = await rest('POST', '/api/games', { name: 'History A', gold: 1 });
  const [, b] = await rest('PATCH', `/api/games/${a.document.id}`, { gold: 2 }, { 'content-type': 'application/merge-patch+json' });
  const before = [a.event.seq, b.event.seq];
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  await page.goto(url);
  await waitLive(page);
  for (const seq of before) await logEntry(page, seq).waitFor({ timeout: WAIT });
  const entry = logEntry(page, a.event.seq);
  assert.equal(await entry.getAttribute('data-id'), a.document.id);
  assert.equal(await entry.getAttribute('data-op'), 'create');
  assert.equal(await entry.getAttribute('data-client-id'), 'server');

  // One write from the page (live), one while it is disconnected (it comes in the catch-up AND the history).
  const mine = await createGame(page, 'History B', 3);
  const [, mineEvents] = await api(`/api/events?collection=games&id=${mine}`);
  const mineSeq = mineEvents.items[0].seq;
  await logEntry(page, mineSeq).waitFor({ timeout: WAIT });
  await byId(page, 'disconnect').click();
  const [, c] = await rest('PATCH', `/api/games/${mine}`, { gold: 4 }, { 'content-type': 'application/merge-patch+json' });
  await page.reload();
  await waitLive(page);
  for (const seq of [...before, mineSeq, c.event.seq]) await logEntry(page, seq).waitFor({ timeout: WAIT });
  assert.match(await logEntry(page, mineSeq).getAttribute('class'), /\bmine\b/, 'its own write is marked as its own after the reload');
  // live events are appended after the history, newest first, once each
  const [, d] = await rest('PATCH', `/api/games/${mine}`, { gold: 5 }, { 'content-type': 'application/merge-patch+json' });
  await logEntry(page, d.event.seq).waitFor({ timeout: WAIT });
  await page.waitForTimeout(300);
  const seqs = await logSeqs(page);
  assert.equal(new Set(seqs).size, seqs.length, `no duplicate entries: ${seqs}`);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => y - x), 'newest first');
  for (const seq of [...before, mineSeq, c.event.seq, d.event.seq]) assert.equal(seqs.filter((s) => s === seq).length, 1, `seq ${seq} once`);
  assert.equal(Number(await byId(page, 'log-count').textContent()), seqs.length);
  assert.deepEqual(errors, []);
  await ctx.close();
});

test('the create form is back to its defaults after a create', { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 375, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(url);
  await waitLive(page);
  const defaults = {};
  for (const f of ['name', 'gold', 'level', 'experience', 'id']) defaults[f] = await byId(page, `create-${f}`).inputValue();
  assert.deepEqual(defaults, { name: '', gold: '0', level: '1', experience: '0', id: '' });
  await byId(page, 'create-name').fill('Dragon Lair');
  await byId(page, 'create-gold').fill('777');
  await byId(page, 'create-level').fill('12');
  await byId(page, 'create-experience').fill('3456');
  await byId(page, 'create-id').fill('dragon-lair');
  await byId(page, 'create-submit').click();
  await row(page, 'dragon-lair').waitFor({ timeout: WAIT });
  const [, doc] = await api('/api/games/dragon-lair');
  assert.deepEqual(doc.data, { name: 'Dragon Lair', gold: 777, level: 12, experience: 3456 });
  await page.waitForFunction(() => document.querySelector('[data-testid="create-gold"]').value === '0', null, { timeout: WAIT });
  const after = {};
  for (const f of ['name', 'gold', 'level', 'experience', 'id']) after[f] = await byId(page, `create-${f}`).inputValue();
  assert.deepEqual(after, defaults, 'every field is back to its default');
  await ctx.close();
});

test('two tabs of one browser are two clients; a duplicated tab gets its own id', { timeout: 90_000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  // what sessionStorage held when each page started (a duplicated tab / window.open popup gets a copy)
  await ctx.addInitScript(() => { window.__startClientId = sessionStorage.getItem('eventsync:clientId'); });
  const tab1 = await ctx.newPage();
  const tab2 = await ctx.newPage();
  const errors = [...[tab1, tab2].map(watchErrors)];
  for (const p of [tab1, tab2]) { await p.goto(url); await waitLive(p); }
  const id1 = await clientIdOf(tab1);
  const id2 = await clientIdOf(tab2);
  assert.match(id1, /^web-/);
  assert.notEqual(id1, id2, 'two tabs, two client ids');

  // each sees the other's write as another client's, and its own as its own
  const g = await createGame(tab1, 'Tab One', 10);
  const createSeq = (await api(`/api/events?collection=games&id=${g}&op=create`))[1].items[0].seq;
  await row(tab2, g).waitFor({ timeout: WAIT });
  await setGold(tab2, g, 20);
  await tab1.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"]`)?.textContent.includes('20'), g, { timeout: WAIT });
  const updateSeq = (await api(`/api/events?collection=games&id=${g}&op=update`))[1].items[0].seq;
  const [, ev] = await api(`/api/events?collection=games&id=${g}`);
  assert.deepEqual(ev.items.map((e) => e.client_id), [id1, id2], 'the server saw two clients');
  for (const [page, own, other] of [[tab1, createSeq, updateSeq], [tab2, updateSeq, createSeq]]) {
    await logEntry(page, own).waitFor({ timeout: WAIT });
    await logEntry(page, other).waitFor({ timeout: WAIT });
    assert.match(await logEntry(page, own).getAttribute('class'), /\bmine\b/);
    assert.match(await logEntry(page, own).locator('.who').textContent(), /\(you\)/);
    assert.doesNotMatch(await logEntry(page, other).getAttribute('class'), /\bmine\b/);
    assert.doesNotMatch(await logEntry(page, other).locator('.who').textContent(), /\(you\)/);
  }

  // a copy of tab 1's sessionStorage (window.open copies it, as a duplicated tab does) → a new id
  const [popup] = await Promise.all([ctx.waitForEvent('page'), tab1.evaluate(() => { window.open('/', '_blank'); })]);
  errors.push(watchErrors(popup));
  await waitLive(popup);
  assert.equal(await popup.evaluate(() => window.__startClientId), id1, "the popup started with tab 1's session copy");
  const id3 = await clientIdOf(popup);
  assert.ok(id3 !== id1 && id3 !== id2, `the copy took its own id (${id3})`);
  assert.equal(await popup.evaluate(() => sessionStorage.getItem('eventsync:clientId')), id3);

  // reloads keep each tab's id
  for (const [page, id] of [[tab1, id1], [tab2, id2], [popup, id3]]) {
    await page.reload();
    await waitLive(page);
    assert.equal(await clientIdOf(page), id, 'a reload keeps the tab\'s id');
  }
  assert.deepEqual(errors.flat(), []);
  await ctx.close();
});

test('event log columns stay aligned with long ids (375 px and desktop)', { timeout: 90_000 }, async () => {
  const longId = '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
  for (const [width, height] of [[1280, 900], [375, 800]]) {
    const ctx = await browser.newContext({ viewport: { width, height } });
    const page = await ctx.newPage();
    await page.goto(url);
    await waitLive(page);
    // live events (not the history): a short id and a long one
    const shortId = `s${width}`;
    const [, s] = await rest('POST', '/api/games', { id: shortId, name: 'Short' });
    const [, l] = await rest('POST', '/api/games', { id: `${longId.slice(0, -4)}${width}`, name: 'Long' });
    for (const e of [s.event, l.event]) await logEntry(page, e.seq).waitFor({ timeout: WAIT });
    const boxes = async (seq) => logEntry(page, seq).evaluate((li) => {
      const out = {};
      for (const c of ['ts', 'seq', 'op', 'doc', 'who', 'patch']) {
        const r = li.querySelector(`.${c}`).getBoundingClientRect();
        out[c] = { left: r.left, right: r.right, top: r.top - li.getBoundingClientRect().top };
      }
      const doc = li.querySelector('.doc');
      out.docOverflow = doc.scrollWidth - doc.clientWidth;
      out.docTitle = doc.title;
      out.liRight = li.getBoundingClientRect().right;
      return out;
    });
    const a = await boxes(s.event.seq);
    const b = await boxes(l.event.seq);
    for (const c of ['ts', 'seq', 'op', 'doc', 'who', 'patch']) {
      assert.ok(Math.abs(a[c].left - b[c].left) < 1, `${width}px: column ${c} starts at the same x (${a[c].left} vs ${b[c].left})`);
      assert.ok(Math.abs(a[c].top - b[c].top) < 1, `${width}px: column ${c} on the same line (${a[c].top} vs ${b[c].top})`);
    }
    assert.ok(Math.abs(a.doc.right - b.doc.right) < 1, `${width}px: the id column has one width`);
    assert.ok(b.docOverflow <= 0, `${width}px: the long id does not overflow its cell`);
    assert.ok(b.doc.right <= b.liRight + 0.5, `${width}px: the id cell stays inside the row`);
    assert.equal(b.docTitle, `games/${l.event.id} v1`, 'the full id is in the title');
    assert.equal(await logEntry(page, l.event.seq).locator('.doc').textContent(), `games/${l.event.id} v1`, 'the full id is the text');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `${width}px: no horizontal page scroll (${overflow})`);
    await byId(page, 'event-log').screenshot({ path: join(ARTIFACTS, `event-log-${width}.png`) });
    await page.screenshot({ path: join(ARTIFACTS, `page-long-ids-${width}.png`), fullPage: true });
    await ctx.close();
  }
});

test('the UI satisfies its Content-Security-Policy over WebSocket and SSE', { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext();
  await ctx.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  const page = await ctx.newPage();
  const errors = watchErrors(page);
  const res = await page.goto(url);
  const headers = res.headers();
  assert.match(headers['content-security-policy'] ?? '', /default-src 'self'/);
  assert.match(headers['content-security-policy'] ?? '', /frame-ancestors 'none'/);
  assert.equal(headers['x-content-type-options'], 'nosniff');
  await waitLive(page);
  await createGame(page, 'CSP WS', 1);
  await chooseTransport(page, 'sse');
  await waitLive(page);
  await createGame(page, 'CSP SSE', 2);
  await byId(page, 'sync').click();
  await page.waitForFunction(() => /synced/i.test(document.querySelector('[data-testid="sync-result"]')?.textContent ?? ''), null, { timeout: WAIT });
  await page.waitForTimeout(300);
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'no CSP violation');
  // (Sync state on SSE reopens the stream: the old request is aborted on purpose.)
  assert.deepEqual(errors.filter((e) => !e.includes('ERR_ABORTED')), [], 'no console error');
  await ctx.close();
});
