#!/usr/bin/env node
// Runs the browser end-to-end tests against a real Weft server.
//   npm run e2e                 all tests
//   npm run e2e -- --only=queue tests whose file name contains "queue"
// Env: WEFT_BIN (server binary; default ../target/debug/weft), CHROMIUM_BIN (/usr/bin/chromium),
//      WEFT_MODELS_DIR (models for tests that need real diffusion nodes).
// Each test file exports `name`, optional `requires` (node types the server must have; the test
// is skipped otherwise), optional `skip(objectInfo)` (a reason to skip, or null), optional
// `allowExternal` (see below) and `run(ctx)`. One server serves the run; every test gets a fresh
// browser profile.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ARTIFACTS, WEB_DIR, launchBrowser, startServer, screenshot } from './harness.mjs';

const only = process.argv.find((a) => a.startsWith('--only='))?.slice(7);
const dir = path.join(WEB_DIR, 'e2e', 'tests');
const files = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.test.mjs'))
  .filter((f) => !only || only.split(',').some((o) => f.includes(o)))
  .sort();

fs.mkdirSync(ARTIFACTS, { recursive: true });
// Old screenshots would mislead: a full run starts clean; a partial one drops its tests' failures.
for (const f of fs.readdirSync(ARTIFACTS)) {
  const stale = !only || files.some((t) => f === `FAILED-${path.basename(t, '.test.mjs')}.png`);
  if (stale && (f.endsWith('.png') || f.endsWith('.json'))) fs.rmSync(path.join(ARTIFACTS, f));
}
const server = await startServer();
const objectInfo = await (await fetch(`${server.url}/object_info`)).json();
console.log(`# weft at ${server.url} (${Object.keys(objectInfo).length} node types)`);

let failed = 0;
let passed = 0;
let skipped = 0;
const results = [];
for (const file of files) {
  const mod = await import(pathToFileURL(path.join(dir, file)).href);
  const name = mod.name ?? file;
  const missing = (mod.requires ?? []).filter((t) => !objectInfo[t]);
  const why = missing.length ? `server lacks ${missing.join(', ')}` : mod.skip?.(objectInfo);
  if (why) {
    console.log(`ok - ${name} # SKIP ${why}`);
    skipped++;
    results.push({ name, status: 'skipped', reason: why });
    continue;
  }
  const browser = await launchBrowser();
  // The editor fetches nothing from anywhere but its own server. A test may name (`allowExternal`,
  // regexps) requests it expects to outside hosts, and must block them itself (`ctx.route`); one
  // that starts a server of its own allows it at run time (`allowRequests(regexp)`).
  const external = [];
  const allowed = [...(mod.allowExternal ?? [])];
  browser.ctx.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(server.url) && !/^(data|blob):/.test(u) && !allowed.some((re) => re.test(u))) external.push(u);
  });
  const started = Date.now();
  try {
    await mod.run({ server, page: browser.page, ctx: browser.ctx, browser, objectInfo, allowRequests: (re) => allowed.push(re) });
    if (browser.errors.length) throw new Error(`errors in the page: ${browser.errors.join(' | ')}`);
    if (external.length) throw new Error(`requests outside the server: ${external.join(', ')}`);
    console.log(`ok - ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    passed++;
    results.push({ name, status: 'passed' });
  } catch (e) {
    failed++;
    console.log(`not ok - ${name}\n  ${String(e?.stack ?? e).split("\n").slice(0, 30).join("\n  ")}`);
    await screenshot(browser.page, `FAILED-${path.basename(file, '.test.mjs')}`).catch(() => {});
    results.push({ name, status: 'failed', error: String(e?.message ?? e) });
  } finally {
    await browser.close();
  }
}
await server.stop();
fs.writeFileSync(path.join(ARTIFACTS, 'results.json'), JSON.stringify(results, null, 2));
console.log(`# ${passed} passed, ${failed} failed, ${skipped} skipped; screenshots in ${path.relative(process.cwd(), ARTIFACTS) || ARTIFACTS}`);
process.exit(failed ? 1 : 0);
