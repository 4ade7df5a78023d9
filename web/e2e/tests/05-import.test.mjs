// Import ComfyUI's default.json through the file input (missing node types become placeholders),
// export it again as editor JSON (round trip), import API JSON.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WEB_DIR, graphState, openEditor, screenshot, waitFor } from '../harness.mjs';
import { sleepGraph } from '../graphs.mjs';

export const name = 'import: default.json by file input, placeholders for missing nodes, export round trip, API JSON';

const shared = path.join(process.env.COMFY_WORKFLOWS_DIR ?? '/work/shared/comfy-workflows', 'default.json');
const defaultJson = fs.existsSync(shared) ? shared : path.join(WEB_DIR, '../tests/fixtures/editor/workflows/default.json');

export async function run({ server, page, objectInfo }) {
  await openEditor(page, server.url);
  await page.getByTestId('import-input').setInputFiles(defaultJson);
  await waitFor(async () => (await graphState(page)).nodes.length === 11, { what: '11 nodes' });
  const original = JSON.parse(fs.readFileSync(defaultJson, 'utf8'));
  assert.equal(await page.locator('.react-flow__node-wgroup').count(), original.groups.length);
  assert.equal(await page.locator('.react-flow__edge').count(), original.links.length);
  const missing = ['CLIPTextEncode', 'CheckpointLoaderSimple', 'EmptyLatentImage', 'KSampler', 'VAEDecode'].filter((t) => !objectInfo[t]);
  if (missing.length) {
    const banner = await page.getByTestId('missing-banner').innerText();
    for (const t of missing) assert.ok(banner.includes(t), `banner lists ${t}`);
    assert.ok((await page.locator('.wn-missing').count()) >= missing.length, 'placeholders drawn');
  }
  assert.equal(await page.getByTestId('doc-name').inputValue(), 'default');
  await page.keyboard.press('.');
  await page.waitForTimeout(200);
  await screenshot(page, '05-imported-default-json');

  // Export editor JSON: same nodes, links, widget values and groups as the file.
  await page.getByTestId('menu-workflow').click();
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByText('Export editor JSON').click()]);
  const exported = JSON.parse(fs.readFileSync(await download.path(), 'utf8'));
  assert.equal(exported.version, 0.4);
  assert.deepEqual(exported.links, original.links);
  const byId = (wf) => Object.fromEntries(wf.nodes.map((n) => [n.id, n]));
  const a = byId(original);
  const b = byId(exported);
  for (const id of Object.keys(a)) {
    assert.equal(b[id].type, a[id].type);
    assert.deepEqual(b[id].widgets_values, a[id].widgets_values, `widgets of node ${id}`);
    assert.deepEqual(b[id].pos, a[id].pos);
    assert.deepEqual(b[id].properties, a[id].properties);
    assert.deepEqual((b[id].inputs ?? []).map((i) => [i.name, i.type, i.link]), (a[id].inputs ?? []).map((i) => [i.name, i.type, i.link]));
    assert.deepEqual((b[id].outputs ?? []).map((o) => [o.name, o.type, o.links ?? []]), (a[id].outputs ?? []).map((o) => [o.name, o.type, o.links ?? []]));
  }
  assert.deepEqual(exported.groups.map((g) => [g.title, g.bounding]), original.groups.map((g) => [g.title, g.bounding]));

  // API JSON import.
  const apiPrompt = {
    10: { class_type: 'EmptyImage', inputs: { width: 96, height: 64, batch_size: 1, color: 255 } },
    11: { class_type: 'ImageInvert', inputs: { image: ['10', 0] } },
    12: { class_type: 'SaveImage', inputs: { images: ['11', 0], filename_prefix: 'from_api' } },
  };
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'weft-api-')), 'api_prompt.json');
  fs.writeFileSync(file, JSON.stringify(apiPrompt));
  await page.getByTestId('import-input').setInputFiles(file);
  await waitFor(async () => (await graphState(page)).nodes.length === 3, { what: 'API import' });
  const st = await graphState(page);
  assert.deepEqual(st.nodes.find((n) => n.id === 10).widgets_values, [96, 64, 1, 255]);
  assert.deepEqual(st.nodes.find((n) => n.id === 12).widgets_values, ['from_api']);
  assert.equal(st.links.length, 2);
  await screenshot(page, '05-imported-api-json');
  void sleepGraph;
}
