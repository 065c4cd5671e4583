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
