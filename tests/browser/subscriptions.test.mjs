// The UI's subscriptions in a real browser (Debian's Chromium via playwright-core, the real server on
// 127.0.0.1:0): the "level ≥ N" filter (the page's subscription to games becomes the scope
// {"id":"games-filter","collection":"games","where":{"level":{"$gte":N}}}) and "open a game by id"
// (a scope {"id":"open-<id>","collection":"games","ids":["<id>"]}). Page A watches with the filter on one
// transport, page B (on the other transport) and REST writes move games in and out of it; run once with
// page A on WebSocket and once on SSE.
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
const merge = (id, patch) => rest('PATCH', `/api/games/${id}`, patch, { 'content-type': 'application/merge-patch+json' });

async function open(context, transport) {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await page.goto(url);
  await waitLive(page);
  if ((await page.locator('input[name="transport"]:checked').getAttribute('value')) !== transport) {
    await byId(page, 'transport').locator(`input[value="${transport}"]`).check();
    await page.waitForFunction(
      (t) => window.eventsyncUI.client?.transport === t && window.eventsyncUI.client.status === 'live', transport, { timeout: WAIT },
    );
  }
  await waitLive(page);
  return { page, errors };
}

const row = (page, id) => page.locator(`[data-testid="game-row"][data-id="${id}"]`);
const appears = (page, id) => row(page, id).waitFor({ timeout: WAIT });
const disappears = (page, id) => row(page, id).waitFor({ state: 'detached', timeout: WAIT });
/** What page A's client holds of a game: {id, version, data} or null; and its vector entry. */
const held = (page, id) => page.evaluate((i) => window.eventsyncUI.client.document('games', i) ?? null, id);
const inVector = (page, id) => page.evaluate((i) => window.eventsyncUI.client.vector().games?.[i] ?? null, id);
const subscriptions = (page) => page.evaluate(() => window.eventsyncUI.client.subscriptions());

async function setFilter(page, n) {
  if (n === null) await byId(page, 'filter-clear').click();
  else {
    await byId(page, 'filter-level').fill(String(n));
    await byId(page, 'filter-level').press('Enter');
  }
  await page.waitForFunction((lvl) => {
    const s = document.querySelector('[data-testid="filter-state"]');
    return s.dataset.level === lvl && s.dataset.state === 'synced';
  }, n === null ? '' : String(n), { timeout: WAIT });
}

async function createInUi(page, id, name, level) {
  await byId(page, 'create-name').fill(name);
  await byId(page, 'create-level').fill(String(level));
  await byId(page, 'create-id').fill(id);
  await byId(page, 'create-submit').click();
  await page.waitForFunction((i) => document.querySelector('[data-testid="notice"]')?.textContent.includes(`Created game ${i}`), id, { timeout: WAIT });
}

async function setLevelInUi(page, id, level) {
  await row(page, id).click();
  await page.waitForFunction((i) => document.querySelector('[data-testid="detail-id"]')?.textContent === i, id, { timeout: WAIT });
  await byId(page, 'update-level').fill(String(level));
  await byId(page, 'update-submit').click();
  await page.waitForFunction((i) => document.querySelector('[data-testid="notice"]')?.textContent.includes(`Updated game ${i}`), id, { timeout: WAIT });
}

for (const [transport, other] of [['ws', 'sse'], ['sse', 'ws']]) {
  test(`level filter and open by id, live, page A on ${transport}`, { timeout: 120_000 }, async () => {
    const p = `${transport}-`;
    const low = `${p}low`; const mid = `${p}mid`; const high = `${p}high`;
    for (const [id, level] of [[low, 1], [mid, 4], [high, 7]]) {
      assert.equal((await rest('POST', '/api/games', { id, name: `Game ${id}`, gold: 10, level, experience: 0 }))[0], 201);
    }
    const ctxA = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const ctxB = await browser.newContext({ viewport: { width: 375, height: 800 } });
    const { page: a, errors } = await open(ctxA, transport);
    const { page: b } = await open(ctxB, other);
    for (const id of [low, mid, high]) { await appears(a, id); await appears(b, id); }
    assert.deepEqual(await subscriptions(a), ['games'], 'the whole collection before a filter');

    // Page A's statuses and its `removed` messages from now on.
    await a.evaluate(() => {
      window.__statuses = [];
      window.__removed = [];
      window.eventsyncUI.client.on('status', (s) => window.__statuses.push(s));
      window.eventsyncUI.client.on('removed', (m) => window.__removed.push(m.id));
    });

    // Level ≥ 5: the subscription is the filter scope; what does not match leaves the client.
    await row(a, low).click(); // selected in Details: it will show that the game left, not that it was deleted
    await setFilter(a, 5);
    assert.deepEqual(await subscriptions(a), [{ id: 'games-filter', collection: 'games', where: { level: { $gte: 5 } } }]);
    await disappears(a, low);
    await disappears(a, mid);
    await appears(a, high);
    for (const id of [low, mid]) {
      assert.equal(await held(a, id), null, `${id} is no longer held`);
      assert.equal(await inVector(a, id), null, `${id} left the vector`);
    }
    assert.match(await byId(a, 'filter-state').textContent(), /level ≥ 5/);
    await byId(a, 'detail-removed').waitFor({ state: 'visible', timeout: WAIT });
    assert.equal(await byId(a, 'detail-deleted').isVisible(), false, 'a removed game is not shown as deleted');
    assert.ok((await a.evaluate(() => window.__removed)).includes(low), 'the server sent removed');
    if (transport === 'ws') {
      assert.deepEqual(await a.evaluate(() => window.__statuses), [], 'WebSocket: the filter changed without a reconnect');
    }
    // Page B still sees everything (its own subscription is the whole collection).
    for (const id of [low, mid, high]) await appears(b, id);

    // Page B creates a game inside the filter and one outside: only the first reaches A, live.
    const newIn = `${p}new-in`; const newOut = `${p}new-out`;
    await createInUi(b, newOut, 'Outside', 2);
    await createInUi(b, newIn, 'Inside', 9);
    await appears(a, newIn);
    assert.equal(await row(a, newOut).count(), 0, 'a game created outside the filter does not appear');
    assert.equal(await held(a, newOut), null);

    // Page B moves "mid" into the filter: it appears in A, live, at its new version.
    await setLevelInUi(b, mid, 6);
    await appears(a, mid);
    await a.waitForFunction((i) => document.querySelector(`[data-testid="game-row"][data-id="${i}"] [data-field="level"]`)?.textContent === '6', mid, { timeout: WAIT });
    assert.equal((await held(a, mid)).version, 2);

    // A REST write moves "high" out: it disappears from A, live.
    await merge(high, { level: 3 });
    await disappears(a, high);
    assert.equal(await held(a, high), null);
    assert.equal(await inVector(a, high), null);
    assert.equal(Number(await byId(a, 'games-count').textContent()), await a.locator('[data-testid="game-row"]').count());
    for (const id of await a.locator('[data-testid="game-row"]').evaluateAll((els) => els.map((e) => e.dataset.id))) {
      const level = Number(await a.locator(`[data-testid="game-row"][data-id="${id}"] [data-field="level"]`).textContent());
      assert.ok(level >= 5, `only games with level ≥ 5 are listed (${id}: ${level})`);
    }
    await a.screenshot({ path: join(ARTIFACTS, `filter-${transport}.png`), fullPage: true });

    // Open by id a game outside the filter: it is shown (JSON, version) but stays out of the list.
    await byId(a, 'open-id').fill(low);
    await byId(a, 'open-submit').click();
    await a.waitForFunction((i) => {
      const box = document.querySelector('[data-testid="opened"]');
      return !box.hidden && box.dataset.id === i && box.dataset.state === 'open';
    }, low, { timeout: WAIT });
    assert.equal(await byId(a, 'opened-id').textContent(), low);
    assert.equal(await byId(a, 'opened-version').textContent(), '1');
    assert.deepEqual(JSON.parse(await byId(a, 'opened-data').textContent()), { name: `Game ${low}`, gold: 10, level: 1, experience: 0 });
    assert.equal(await byId(a, 'opened-outside').isVisible(), true, 'marked as outside the filter');
    assert.equal(await row(a, low).count(), 0, 'the opened game is not in the filtered list');
    assert.ok((await subscriptions(a)).some((s) => s.id === `open-${low}` && s.ids?.[0] === low && s.collection === 'games'));
    assert.equal((await held(a, low)).version, 1, 'the client holds it');
    // It follows live changes while open.
    await merge(low, { gold: 42 });
    await a.waitForFunction(() => document.querySelector('[data-testid="opened-version"]').textContent === '2', null, { timeout: WAIT });
    assert.equal(JSON.parse(await byId(a, 'opened-data').textContent()).gold, 42);
    await a.screenshot({ path: join(ARTIFACTS, `open-by-id-${transport}.png`), fullPage: true });
    // Closing unsubscribes: the game leaves the client (it is outside every remaining scope).
    await byId(a, 'opened-close').click();
    await byId(a, 'opened').waitFor({ state: 'hidden', timeout: WAIT });
    await a.waitForFunction((i) => window.eventsyncUI.client.document('games', i) === undefined
      && !window.eventsyncUI.client.subscriptions().some((s) => s.id === `open-${i}`), low, { timeout: WAIT });
    assert.equal(await row(a, low).count(), 0);

    // An id that does not exist: a clear message, and no subscription left behind.
    await byId(a, 'open-id').fill(`${p}nope`);
    await byId(a, 'open-id').press('Enter');
    await a.waitForFunction(() => document.querySelector('[data-testid="open-message"]').dataset.kind === 'not-found', null, { timeout: WAIT });
    assert.match(await byId(a, 'open-message').textContent(), new RegExp(`No game with id "${p}nope"`));
    assert.equal(await byId(a, 'opened').isVisible(), false);
    await a.waitForFunction(() => window.eventsyncUI.client.subscriptions().length === 1, null, { timeout: WAIT });

    // Level ≥ 5 → level ≥ 3: "high" (3) comes back, what matches both never leaves.
    await a.evaluate(() => { window.__removed = []; });
    await setFilter(a, 3);
    assert.deepEqual(await subscriptions(a), [{ id: 'games-filter', collection: 'games', where: { level: { $gte: 3 } } }]);
    await appears(a, high);
    for (const id of [mid, newIn]) await appears(a, id);
    assert.equal(await row(a, low).count(), 0);
    assert.deepEqual(await a.evaluate(() => window.__removed), [], 'no game in both filters was removed on the way');

    // Clearing the filter goes back to the whole collection.
    await setFilter(a, null);
    assert.deepEqual(await subscriptions(a), ['games']);
    for (const id of [low, mid, high, newIn, newOut]) await appears(a, id);
    assert.equal((await held(a, low)).version, 2);
    assert.equal(await byId(a, 'filter-state').textContent(), 'Showing every game');
    if (transport === 'ws') {
      assert.deepEqual(await a.evaluate(() => window.__statuses), [], 'WebSocket: never reconnected');
    }

    // The writes and the event log still work with a filter on.
    await setFilter(a, 5);
    await setLevelInUi(a, newIn, 1); // page A moves a game out of its own filter
    await disappears(a, newIn);
    const [, events] = await rest('GET', `/api/events?collection=games&id=${newIn}&op=update`);
    // (its event comes as `removed`; the log shows the event, marked as having left)
    const entry = a.locator(`[data-testid="log-entry"][data-seq="${events.items[0].seq}"]`);
    await entry.waitFor({ timeout: WAIT });
    assert.equal(await entry.getAttribute('data-left'), 'true');
    assert.equal(await entry.getAttribute('data-op'), 'update');
    assert.match(await entry.getAttribute('class'), /\bmine\b/, 'its own write');
    await setFilter(a, null);
    await appears(a, newIn);

    assert.deepEqual(errors, [], 'no console error or failed request on page A');
    await ctxA.close();
    await ctxB.close();
  });
}

test('a reload keeps the level filter; a filtered page switches transport', { timeout: 60_000 }, async () => {
  for (const [id, level] of [['keep-low', 1], ['keep-high', 8]]) {
    await rest('POST', '/api/games', { id, name: id, level });
  }
  const ctx = await browser.newContext();
  const { page, errors } = await open(ctx, 'ws');
  await setFilter(page, 5);
  await disappears(page, 'keep-low');
  await appears(page, 'keep-high');
  await page.reload();
  await waitLive(page);
  await page.waitForFunction(() => document.querySelector('[data-testid="filter-state"]').dataset.state === 'synced', null, { timeout: WAIT });
  assert.equal(await byId(page, 'filter-level').inputValue(), '5');
  assert.deepEqual(await subscriptions(page), [{ id: 'games-filter', collection: 'games', where: { level: { $gte: 5 } } }]);
  await appears(page, 'keep-high');
  assert.equal(await row(page, 'keep-low').count(), 0);
  // to SSE (a new client on the same id, with the filter in its opening)
  await byId(page, 'transport').locator('input[value="sse"]').check();
  await page.waitForFunction(() => window.eventsyncUI.client?.transport === 'sse' && window.eventsyncUI.client.status === 'live', null, { timeout: WAIT });
  await merge('keep-low', { level: 6 });
  await appears(page, 'keep-low');
  await merge('keep-high', { level: 0 });
  await disappears(page, 'keep-high');
  assert.deepEqual(errors, []);
  await ctx.close();
});
