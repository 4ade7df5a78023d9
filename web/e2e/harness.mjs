// E2E harness: starts a real Weft server on a free port with a temp data dir, drives Debian's
// Chromium through playwright-core, and writes screenshots to web/test-artifacts/.
// Installs and downloads nothing.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const WEB_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const ARTIFACTS = path.join(WEB_DIR, 'test-artifacts');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

export function weftBinary() {
  const candidates = [process.env.WEFT_BIN, path.join(WEB_DIR, '..', 'target', 'debug', 'weft'), path.join(WEB_DIR, '..', 'target', 'release', 'weft')].filter(Boolean);
  for (const c of candidates) if (fs.existsSync(c)) return c;
  throw new Error(`No Weft server binary: set WEFT_BIN (tried ${candidates.join(', ')})`);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `weft serve --test-nodes` serving `webRoot` (default web/dist, the editor), asking for
 * `token` when given (`--auth-token`); resolves when /object_info answers.
 */
export async function startServer({ testNodes = true, modelsDir, webRoot, token } = {}) {
  const bin = weftBinary();
  const dist = webRoot ?? path.join(WEB_DIR, 'dist');
  if (!fs.existsSync(path.join(dist, 'index.html'))) {
    throw new Error(webRoot ? `${webRoot} has no index.html` : 'web/dist is missing: run `npm run build` first');
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'weft-e2e-'));
  const models = modelsDir ?? process.env.WEFT_MODELS_DIR ?? path.join(dataDir, 'models');
  fs.mkdirSync(models, { recursive: true });
  const port = await freePort();
  const args = ['serve', '--listen', '127.0.0.1', '--port', String(port), '--data-dir', dataDir, '--models-dir', models, '--web-root', dist];
  if (testNodes) args.push('--test-nodes');
  if (token) args.push('--auth-token', token);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const log = fs.openSync(path.join(dataDir, 'server.log'), 'a');
  const child = spawn(bin, args, { stdio: ['ignore', log, log] });
  const url = `http://127.0.0.1:${port}`;
  let exited = null;
  child.on('exit', (code) => (exited = code));
  const deadline = Date.now() + 30000;
  for (;;) {
    if (exited !== null) throw new Error(`weft exited with ${exited}; log: ${fs.readFileSync(path.join(dataDir, 'server.log'), 'utf8').slice(-2000)}`);
    try {
      const r = await fetch(`${url}/object_info`, { headers });
      if (r.ok) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error('weft did not start within 30 s');
    await new Promise((r) => setTimeout(r, 150));
  }
  return {
    url,
    dataDir,
    modelsDir: models,
    port,
    async stop() {
      if (exited === null) {
        child.kill('SIGTERM');
        await new Promise((r) => {
          const t = setTimeout(() => {
            child.kill('SIGKILL');
            r();
          }, 5000);
          child.on('exit', () => {
            clearTimeout(t);
            r();
          });
        });
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A fresh Chromium profile (clean localStorage) per call. */
export async function launchBrowser({ viewport = { width: 1440, height: 900 } } = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'weft-chromium-'));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    acceptDownloads: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) errors.push(m.text());
  });
  return {
    ctx,
    page,
    errors,
    async close() {
      await ctx.close().catch(() => {});
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Makes `wf` the editor's default graph for this browser profile (before the page loads). */
export async function useDefaultGraph(ctx, wf) {
  await ctx.addInitScript((json) => {
    localStorage.setItem('weft.defaultWorkflow', json);
  }, JSON.stringify(wf));
}

export async function openEditor(page, url) {
  await page.goto(url);
  await waitReady(page);
}

export async function waitReady(page) {
  await page.waitForSelector('html[data-weft-ready="1"]', { timeout: 20000 });
  await page.waitForTimeout(150);
}

export async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

export const node = (page, id) => page.locator(`.react-flow__node[data-id="${id}"]`);
export const handle = (page, id, handleId) => page.locator(`.react-flow__node[data-id="${id}"] .react-flow__handle[data-handleid="${handleId}"]`);

/** Drags a link from one handle to another with the mouse. */
export async function dragLink(page, from, to) {
  const a = await from.boundingBox();
  const b = await to.boundingBox();
  if (!a || !b) throw new Error('handle not visible');
  await page.mouse.move(a.x + a.width / 2, a.y + a.height / 2);
  await page.mouse.down();
  await page.mouse.move(a.x + a.width / 2 + 20, a.y + a.height / 2 + 5, { steps: 4 });
  await page.mouse.move(b.x + b.width / 2, b.y + b.height / 2, { steps: 12 });
  await page.waitForTimeout(80);
  await page.mouse.up();
  await page.waitForTimeout(100);
}

export const graphState = (page) =>
  page.evaluate(() => {
    const g = window.weft.graph.getState();
    const wf = g.toWorkflow();
    return { nodes: wf.nodes, links: wf.links, groups: wf.groups, doc: g.doc };
  });

export async function setNumber(page, nodeId, widget, value) {
  await node(page, nodeId).locator(`[data-widget="${widget}"] .w-number-body`).click();
  const input = node(page, nodeId).locator(`[data-widget="${widget}"] input`);
  await input.fill(String(value));
  await input.press('Enter');
}

export async function waitFor(fn, { timeout = 20000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export async function api(url, p, body) {
  const res = await fetch(`${url}${p}`, body === undefined ? {} : { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

/** Clicks the middle of a link's path (selecting it). */
export async function clickEdge(page, id) {
  const p = await page.evaluate((edgeId) => {
    const path = document.querySelector(`.react-flow__edge[data-id="${edgeId}"] path.react-flow__edge-path`);
    if (!path) return null;
    const len = path.getTotalLength();
    const pt = path.getPointAtLength(len / 2);
    const m = path.getScreenCTM();
    return { x: pt.x * m.a + pt.y * m.c + m.e, y: pt.x * m.b + pt.y * m.d + m.f };
  }, String(id));
  if (!p) throw new Error(`no edge ${id}`);
  await page.mouse.click(p.x, p.y);
}

/** Drops a file (bytes) onto the canvas, as a user dragging it from the desktop. */
export async function dropFile(page, bytes, fileName, type = 'image/png') {
  await page.evaluate(
    ({ b64, fileName, type }) => {
      const bin = atob(b64);
      const arr = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) arr[i] = bin.charCodeAt(i);
      const dt = new DataTransfer();
      dt.items.add(new File([arr], fileName, { type }));
      const target = document.querySelector('.react-flow__pane');
      const r = target.getBoundingClientRect();
      const opts = { dataTransfer: dt, bubbles: true, cancelable: true, clientX: r.left + 200, clientY: r.top + 200 };
      target.dispatchEvent(new DragEvent('dragenter', opts));
      target.dispatchEvent(new DragEvent('dragover', opts));
      target.dispatchEvent(new DragEvent('drop', opts));
    },
    { b64: Buffer.from(bytes).toString('base64'), fileName, type },
  );
}

/** Clicks Workflow → Export API JSON and returns the downloaded prompt. */
export async function exportApiJson(page) {
  await page.getByTestId('menu-workflow').click();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByText('Export API JSON').click()]);
  return JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
}
