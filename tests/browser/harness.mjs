// What the browser tests share: the real server on 127.0.0.1:0 (any extra flags) and Debian's
// Chromium through playwright-core.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SERVER = join(ROOT, 'target', 'debug', 'eventsync');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const WAIT = 10_000;

/** Starts a server on a fresh data directory; resolves with {child, url, stop()}. */
export function startServer(args = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'eventsync-ui-'));
  const child = spawn(SERVER, ['--listen', '127.0.0.1:0', '--data-dir', dataDir, ...args], {
    cwd: ROOT,
    env: { ...process.env, EVENTSYNC_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const stop = () => {
    child.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  };
  return new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error('the server printed no address in 30 s')), 30_000);
    let buffered = '';
    child.stdout.on('data', (chunk) => {
      buffered += chunk;
      const m = buffered.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolveUrl({ child, url: m[1], stop });
      }
    });
    child.on('exit', (code) => reject(new Error(`the server exited with ${code}`)));
  });
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

export const byId = (page, id) => page.locator(`[data-testid="${id}"]`);

export async function waitLive(page) {
  await page.waitForFunction(
    () => document.querySelector('[data-testid="status"]')?.textContent.trim().toLowerCase().includes('live'),
    null, { timeout: WAIT },
  );
}

/** A JSON request to the server at `url`: `[status, body]` (the body parsed, `null` when empty). */
export async function rest(url, method, path, body, headers = {}) {
  const res = await fetch(url + path, {
    method,
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return [res.status, text ? JSON.parse(text) : null];
}

/** Collects a page's console errors, page errors, HTTP errors and failed requests — but an
 *  aborted request (ERR_ABORTED: the client aborts its SSE stream when it changes transport or
 *  subscriptions on purpose). */
export function watchErrors(page) {
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('response', (r) => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`); });
  page.on('requestfailed', (r) => {
    if (r.failure()?.errorText !== 'net::ERR_ABORTED') errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  return errors;
}
