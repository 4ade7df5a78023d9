// ComfyUI's official web frontend (the `comfyui-frontend-package` wheel from PyPI at the version
// ./run.sh pins; `./run.sh comfy-frontend-path` fetches it and prints its static folder, which
// WEFT_COMFY_FRONTEND names) against a real Weft server of its own, started with that folder as
// its web root and a models folder holding a tiny random-weight SD1 checkpoint under the name
// ComfyUI's SD1.5 template asks for. The page loads, ComfyUI's SD1.5 default template
// (tests/fixtures/editor/workflows/default.json, copied from Comfy Org's template wheel) is dropped
// on the canvas, the image is made 64×64 in 3 steps through the app's graph API, the Run button
// queues it, and the image shows in the SaveImage node and the job queue panel and lands in the
// server's output folder. After a reload the edited workflow is still open. No request the page
// made to /api/*, /internal/* or /templates/* was answered 404, and none at all 5xx.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WEB_DIR, screenshot, startServer, waitFor } from '../harness.mjs';
import { canMakeTinyCheckpoint, writeTinyCheckpoint } from '../tiny-checkpoint.mjs';

export const name = "ComfyUI's own frontend: SD1.5 default template, queued, image shown, no 404s";
export const requires = ['CheckpointLoaderSimple', 'CLIPTextEncode', 'EmptyLatentImage', 'KSampler', 'VAEDecode', 'SaveImage'];

const FRONTEND = process.env.WEFT_COMFY_FRONTEND;
const TEMPLATE = path.join(WEB_DIR, '..', 'tests', 'fixtures', 'editor', 'workflows', 'default.json');
// The checkpoint ComfyUI's SD1.5 template (and the frontend's old built-in default graph) loads.
const CKPT = 'v1-5-pruned-emaonly-fp16.safetensors';
const PROMPT = 'weft e2e: a red bicycle leaning on a wall';
// By hand: WEFT_E2E_CHECKPOINT=<file> runs the test on that checkpoint (symlinked in) instead of a
// tiny generated one.
const CHECKPOINT = process.env.WEFT_E2E_CHECKPOINT;

/** Why the test cannot run against the frontend in `dir` (named by env variable `variable`), or null. */
export const skipFor = (dir, variable) => {
  if (!dir) return `${variable} is not set (\`./run.sh comfy-frontend-path\` fetches the frontend and prints it)`;
  if (!fs.existsSync(path.join(dir, 'index.html'))) return `${variable} (${dir}) has no index.html`;
  if (!fs.existsSync(TEMPLATE)) return `no SD1.5 template at ${TEMPLATE}`;
  return canMakeTinyCheckpoint() ? null : 'no key maps (tests/fixtures/unet) to make a tiny checkpoint';
};
export const skip = () => skipFor(FRONTEND, 'WEFT_COMFY_FRONTEND');

// The frontend asks Comfy Org's API for release notes (api.comfy.org/releases) at start-up. The
// test blocks every request to another host (below), so it needs no network; these are the ones
// it expects. Anything else outside the server still fails the test.
export const allowExternal = [/^https:\/\/api\.comfy\.org\//];

// No console error and no 404 is expected: Weft serves `/user.css`, the stylesheet the frontend's
// page links beside itself (the user's own, empty when there is none).
const harmlessConsoleErrors = () => [];
const harmless404 = [];

const appReady = (page) =>
  page.waitForFunction(() => window.app?.vueAppReady && window.app.graph && window.app.canvas && window.app.extensionManager && !window.app.extensionManager.spinner, null, { timeout: 60000 });

/**
 * Node id → widget values (name → value) of the frontend's current graph; without the widgets
 * the frontend adds to show an output (`$$canvas-image-preview`), which are not saved.
 */
const widgetValues = (page) =>
  page.evaluate(() =>
    Object.fromEntries(
      window.app.graph.nodes.map((n) => [
        String(n.id),
        { type: n.type, widgets: Object.fromEntries((n.widgets ?? []).filter((w) => !w.name.startsWith('$$')).map((w) => [w.name, w.value])) },
      ]),
    ),
  );

export const run = (context) => runFrontend(FRONTEND, context);

/** The whole test against the frontend whose static files are in `dir`. */
export async function runFrontend(dir, { page, ctx, browser, allowRequests }) {
  const models = fs.mkdtempSync(path.join(os.tmpdir(), 'weft-e2e-models-'));
  if (CHECKPOINT) {
    // A checkpoint of the user's (a full-size one, by hand), linked in from outside the models
    // folder as ComfyUI users do.
    fs.mkdirSync(path.join(models, 'checkpoints'));
    fs.symlinkSync(path.resolve(CHECKPOINT), path.join(models, 'checkpoints', CKPT));
  } else {
    writeTinyCheckpoint(path.join(models, 'checkpoints'), CKPT);
  }
  const server = await startServer({ webRoot: dir, modelsDir: models, testNodes: false });
  try {
    await runAgainst(server, { page, ctx, browser, allowRequests });
  } finally {
    // Leave the page first: requests it still makes once the server is gone would be errors.
    await page.goto('about:blank').catch(() => {});
    await server.stop();
    fs.rmSync(models, { recursive: true, force: true });
  }
}

async function runAgainst(server, { page, ctx, browser, allowRequests }) {
  const origin = server.url;
  allowRequests(new RegExp(`^${origin.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/`));
  await ctx.route(
    (u) => !u.href.startsWith(`${origin}/`) && !/^(data|blob):/.test(u.href),
    (r) => r.abort('blockedbyclient'),
  );

  // Every same-origin answer with status 404 or 5xx. Chromium drops some answers before the page
  // sees them (a stylesheet link answered with JSON and `nosniff`): Playwright reports those as
  // failed requests without a status, so failed GETs are asked again at the end for theirs.
  const bad = new Map();
  const note = (url, status) => {
    if (!url.startsWith(`${origin}/`) || (status !== 404 && status < 500)) return;
    const p = url.slice(origin.length);
    bad.set(`${status} ${p}`, { status, path: p });
  };
  ctx.on('response', (r) => note(r.url(), r.status()));
  const failedGets = new Set();
  ctx.on('requestfailed', (r) => {
    if (r.method() === 'GET' && r.url().startsWith(`${origin}/`)) failedGets.add(r.url());
  });

  // The socket messages the page receives, to see the run's progress reach it.
  const socketMessages = [];
  page.on('websocket', (ws) =>
    ws.on('framereceived', ({ payload }) => {
      if (typeof payload === 'string') socketMessages.push(JSON.parse(payload));
    }),
  );
  await page.goto(origin);
  await appReady(page);
  // A new user gets the template browser (empty: Weft has no template packages; "Get Started with
  // a Template" in early-2025 frontends, with their built-in examples); close it.
  const templates = page.getByRole('dialog').filter({ hasText: /Template/ });
  if (await templates.waitFor({ timeout: 10000 }).then(() => true, () => false)) {
    await page.keyboard.press('Escape');
    await templates.waitFor({ state: 'detached' });
  }

  // Drop ComfyUI's SD1.5 default template onto the canvas, as a user dragging the file in.
  await page.evaluate((text) => {
    const dt = new DataTransfer();
    dt.items.add(new File([text], 'default.json', { type: 'application/json' }));
    const canvas = document.querySelector('#graph-canvas');
    const r = canvas.getBoundingClientRect();
    const opts = { dataTransfer: dt, bubbles: true, cancelable: true, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2 };
    canvas.dispatchEvent(new DragEvent('dragenter', opts));
    canvas.dispatchEvent(new DragEvent('dragover', opts));
    canvas.dispatchEvent(new DragEvent('drop', opts));
  }, fs.readFileSync(TEMPLATE, 'utf8'));
  await page.waitForFunction(() => window.app.graph.nodes.some((n) => n.type === 'KSampler') && window.app.extensionManager.workflow.activeWorkflow?.filename === 'default', null, { timeout: 20000 });
  let values = await widgetValues(page);
  const types = (v) => Object.values(v).map((n) => n.type).filter((t) => t !== 'MarkdownNote').sort();
  assert.deepEqual(types(values), ['CLIPTextEncode', 'CLIPTextEncode', 'CheckpointLoaderSimple', 'EmptyLatentImage', 'KSampler', 'SaveImage', 'VAEDecode']);
  assert.equal(values['4'].widgets.ckpt_name, CKPT);
  // The server lists the checkpoint, so the frontend offers it (and flags nothing as missing).
  const offered = await page.evaluate(() => window.app.graph.getNodeById(4).widgets.find((w) => w.name === 'ckpt_name').options.values);
  assert.ok(Array.isArray(offered) && offered.includes(CKPT), `checkpoints offered: ${JSON.stringify(offered)}`);
  assert.equal(values['5'].widgets.width, 512);

  // Small and fast: 64×64, 3 steps, and a prompt of ours; then tell the frontend the graph changed
  // (ChangeTracker.checkState, what extensions call after editing the graph) so it keeps the draft.
  await page.evaluate((prompt) => {
    const node = (id) => window.app.graph.getNodeById(id);
    const set = (id, widget, value) => {
      const w = node(id).widgets.find((x) => x.name === widget);
      w.value = value;
      w.callback?.(value);
    };
    set(5, 'width', 64);
    set(5, 'height', 64);
    set(3, 'steps', 3);
    set(6, 'text', prompt);
    window.app.graph.setDirtyCanvas(true, true);
    window.app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();
  }, PROMPT);

  const queued = page.waitForResponse((r) => r.url() === `${origin}/api/prompt` && r.request().method() === 'POST');
  // The Run button (named Queue in early-2025 frontends); where a version's button cannot be
  // found by name, the frontend's own queue call, which the button makes.
  const button = page.getByRole('button', { name: /^(Run|Queue)$/ }).first();
  if (await button.isVisible().catch(() => false)) await button.click();
  const clicked = await Promise.race([queued.then(() => true), page.waitForTimeout(5000).then(() => false)]);
  if (!clicked) await page.evaluate(() => window.app.queuePrompt(0, 1));
  const queuedRes = await queued;
  assert.equal(queuedRes.status(), 200, `POST /api/prompt: ${await queuedRes.text()}`);
  const promptId = (await queuedRes.json()).prompt_id;
  assert.ok(promptId, 'a prompt id');

  // The server finishes it and saves the image in its output folder.
  const entry = await waitFor(
    async () => {
      const h = await (await fetch(`${origin}/api/history/${promptId}`)).json();
      return h[promptId]?.status?.completed ? h[promptId] : null;
    },
    { timeout: 120000, interval: 250, what: 'the prompt to finish' },
  );
  assert.equal(entry.status.status_str, 'success', JSON.stringify(entry.status));
  const [image] = entry.outputs['9'].images;
  assert.match(image.filename, /^SD1\.5_\d{5}_\.png$/);
  const file = path.join(server.dataDir, 'output', image.subfolder ?? '', image.filename);
  assert.ok(fs.existsSync(file) && fs.statSync(file).size > 0, `${file} exists`);
  assert.equal(fs.readFileSync(file).subarray(1, 4).toString(), 'PNG');

  // The page was told of every sampling step (what its progress bar shows).
  const steps = socketMessages.filter((m) => m.type === 'progress' && m.data.prompt_id === promptId && m.data.node === '3');
  assert.deepEqual(
    steps.map((m) => [m.data.value, m.data.max]),
    [
      [1, 3],
      [2, 3],
      [3, 3],
    ],
  );
  // The SaveImage node shows it (drawn on the canvas from the node's loaded image)...
  await page.waitForFunction(
    (name) => {
      const img = window.app.graph.getNodeById(9).imgs?.[0];
      return img && img.complete && img.naturalWidth > 0 && img.src.includes(`filename=${encodeURIComponent(name)}`);
    },
    image.filename,
    { timeout: 20000 },
  );
  // ...and so does the job queue panel: the "N active" button by the Run button, or in early-2025
  // frontends the Queue tab of the side bar.
  const overlay = page.getByTestId('queue-overlay-toggle');
  const newQueuePanel = await overlay.isVisible().catch(() => false);
  if (newQueuePanel) await overlay.click();
  else await page.getByRole('button', { name: /^Queue \(q\)$/ }).click();
  const list = newQueuePanel ? '[data-testid="job-assets-list"] ' : '.side-bar-panel ';
  const listed = page.locator(`${list}img[src*="filename=${encodeURIComponent(image.filename)}"]`).first();
  await listed.waitFor({ timeout: 20000 });
  await waitFor(() => listed.evaluate((el) => el.complete && el.naturalWidth > 0), { what: 'the job queue thumbnail to load' });
  await screenshot(page, '16-comfy-frontend-image');
  await page.keyboard.press('Escape');

  // Reload: the frontend restores the open workflow, edits included, from its draft in
  // localStorage (written 0.5 s after a change, and on pagehide). Wait until the draft has the
  // edits, so the reload cannot race the write.
  // (Queueing gave the KSampler a new seed: control_after_generate is "randomize".)
  values = await widgetValues(page);
  const marks = [PROMPT, String(values['3'].widgets.seed)];
  await waitFor(
    () =>
      page.evaluate(
        // `Comfy.Workflow.Draft*` keys; early-2025 frontends keep the open graph as `workflow`.
        (marks) =>
          Object.keys(localStorage).some(
            (k) => (k.startsWith('Comfy.Workflow.Draft') || k === 'workflow') && marks.every((m) => localStorage.getItem(k).includes(m)),
          ),
        marks,
      ),
    { what: 'the edited workflow to be kept as a draft' },
  );
  await page.reload();
  await appReady(page);
  await page.waitForFunction(() => window.app.extensionManager.workflow.activeWorkflow?.filename === 'default' && window.app.graph.nodes.some((n) => n.type === 'KSampler'), null, { timeout: 20000 });
  const after = await widgetValues(page);
  assert.deepEqual({ width: after['5'].widgets.width, height: after['5'].widgets.height, steps: after['3'].widgets.steps, text: after['6'].widgets.text }, { width: 64, height: 64, steps: 3, text: PROMPT });
  assert.deepEqual(after, values, 'the whole workflow is as it was before the reload');

  // Nothing the page asked of the server was missing or failed.
  for (const url of failedGets) note(url, (await fetch(url)).status);
  const failures = [...bad.values()].filter(({ status, path: p }) => status >= 500 || /^\/(api|internal|templates)\//.test(p) || !harmless404.includes(p.split('?')[0]));
  assert.deepEqual(failures.map(({ status, path: p }) => `${status} ${p}`), [], 'requests answered 404 or 5xx');

  // Drop only the known-harmless console errors (see harmlessConsoleErrors); run.mjs fails on the rest.
  const harmless = harmlessConsoleErrors(origin);
  const kept = browser.errors.filter((e) => !harmless.some((re) => re.test(e)));
  browser.errors.splice(0, browser.errors.length, ...kept);
}
