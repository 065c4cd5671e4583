// The browser UI in a real browser: Debian's Chromium driven by playwright-core, against the real
// server on 127.0.0.1:0. Two pages (two browser contexts, so two clients): page 1 on WebSocket,
// page 2 on SSE. Screenshots of both pages go to test-artifacts/ at the repository root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER = join(ROOT, 'target', 'debug', 'eventsync');
const ARTIFACTS = join(ROOT, 'test-artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 10_000;

let server, url, dataDir, browser;

function startServer() {
  dataDir = mkdtempSync(join(tmpdir(), 'eventsync-ui-'));
  const child = spawn(SERVER, ['--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    cwd: ROOT,
    env: { ...process.env, EVENTSYNC_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error('the server printed no address in 30 s')), 30_000);
    let buffered = '';
    child.stdout.on('data', (chunk) => {
      buffered += chunk;
      const m = buffered.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolveUrl([child, m[1]]);
      }
    });
    child.on('exit', (code) => reject(new Error(`the server exited with ${code}`)));
  });
}

before(async () => {
  [server, url] = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  server?.kill('SIGKILL');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

const byId = (page, id) => page.locator(`[data-testid="${id}"]`);

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

async function waitLive(page) {
  await page.waitForFunction(
    () => document.querySelector('[data-testid="status"]')?.textContent.trim().toLowerCase().includes('live'),
    null, { timeout: WAIT },
  );
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
