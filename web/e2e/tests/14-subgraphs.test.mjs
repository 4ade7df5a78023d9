// A ComfyUI workflow with a subgraph and a legacy group node: it opens without placeholders, the
// editor queues the editor workflow as it is and the server expands both (ids like `2:6`), the
// running inner nodes and the saved image show on their container, validation errors inside the
// subgraph land on it, and the PNG carries the workflow with its definitions back.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { WEB_DIR, api, dropFile, exportApiJson, graphState, node, openEditor, screenshot, waitFor } from '../harness.mjs';

export const name = 'subgraphs and group nodes: open, queue (server-side expansion), outputs and errors on the container, PNG round trip';
export const requires = ['StubImage', 'ImageInvert', 'ImageScale', 'SaveImage'];

const FILE = path.join(WEB_DIR, 'src/test/fixtures/subgraph-and-group-node.json');
const SUBGRAPH = 'c0ffee00-1234-4abc-8def-0123456789ab';

export async function run({ server, page }) {
  const original = JSON.parse(fs.readFileSync(FILE, 'utf8'));
  await openEditor(page, server.url);
  await page.getByTestId('import-input').setInputFiles(FILE);
  await waitFor(async () => (await graphState(page)).nodes.some((n) => n.type === SUBGRAPH), { what: 'the workflow opens' });

  // Both containers are drawn as nodes with their sockets, not as missing placeholders.
  assert.equal(await page.getByTestId('missing-banner').count(), 0, 'nothing is missing');
  assert.equal(await page.locator('.wn-missing').count(), 0);
  assert.equal(await node(page, 2).locator('.wn-title-text').innerText(), 'Invert and scale');
  assert.match(await node(page, 2).locator('.wn-container-note').innerText(), /Subgraph · 2 nodes inside/);
  assert.match(await node(page, 3).locator('.wn-container-note').innerText(), /Group node · 2 nodes inside/);
  assert.match(await node(page, 2).locator('.wn-missing-value').innerText(), /width: 48/);
  assert.equal(await node(page, 2).locator('.wn-slot-in').count(), 2, 'image, and the promoted width');
  await page.keyboard.press('.');
  await screenshot(page, '14-subgraph-opened');

  // The API prompt the server makes of the editor's document: both containers expanded.
  const exported = await exportApiJson(page);
  assert.deepEqual(Object.keys(exported).sort(), ['1', '2:5', '2:6', '3:0', '3:1']);
  assert.deepEqual(exported['2:6'].inputs, { upscale_method: 'nearest-exact', width: 48, height: 32, crop: 'disabled', image: ['2:5', 0] });
  assert.deepEqual(exported['3:1'].inputs, { filename_prefix: 'subgraph_e2e', images: ['3:0', 0] });

  // Queue: the editor posts the editor workflow; the inner SaveImage's image shows on the group node.
  await page.evaluate(() => {
    window.__running = new Set();
    window.weft.exec.subscribe((s) => s.runningNodeId && window.__running.add(s.runningNodeId));
  });
  await page.locator('.react-flow__pane').click({ position: { x: 20, y: 20 } });
  await page.keyboard.press('Control+Enter');
  const img = node(page, 3).locator('.wn-outputs img');
  await img.waitFor({ timeout: 20000 });
  assert.match(await img.getAttribute('data-filename'), /^subgraph_e2e_\d{5}_\.png$/);
  await waitFor(() => img.evaluate((el) => el.complete && el.naturalWidth > 0), { what: 'image load' });
  assert.deepEqual(await img.evaluate((el) => [el.naturalWidth, el.naturalHeight]), [48, 32], 'the promoted width reached ImageScale');
  assert.ok((await page.evaluate(() => [...window.__running])).every((id) => !id.includes(':')), 'running ids are canvas ids');
  await screenshot(page, '14-subgraph-ran');

  // The history has the expanded prompt and the editor workflow, definitions included.
  const history = (await api(server.url, '/history')).json;
  const entry = Object.values(history).find((h) => h.prompt[2]['3:1']);
  assert.ok(entry, 'the run is in the history');
  assert.deepEqual(Object.keys(entry.prompt[2]).sort(), ['1', '2:5', '2:6', '3:0', '3:1']);
  const embedded = entry.prompt[3].extra_pnginfo.workflow;
  assert.deepEqual(embedded.definitions, original.definitions);
  assert.deepEqual(embedded.extra.groupNodes, original.extra.groupNodes);

  // A validation error inside the subgraph lands on the subgraph node, naming the inner node.
  await page.evaluate(() => window.weft.graph.getState().setWidgets('2', [-5]));
  await page.getByTestId('queue-button').click();
  const err = node(page, 2).locator('.wn-errors');
  await err.waitFor({ timeout: 10000 });
  assert.match(await err.innerText(), /ImageScale 2:6: /);
  await screenshot(page, '14-subgraph-validation-error');

  // The saved PNG brings the workflow back, subgraph and group node included.
  const [image] = Object.values(entry.outputs).flatMap((o) => o.images ?? []);
  const png = Buffer.from(await (await fetch(`${server.url}/view?${new URLSearchParams(image)}`)).arrayBuffer());
  await page.getByTestId('menu-workflow').click();
  await page.getByText('New (empty)').click();
  await waitFor(async () => (await graphState(page)).nodes.length === 0, { what: 'empty' });
  await dropFile(page, png, 'subgraph.png');
  await waitFor(async () => (await graphState(page)).nodes.length === 3, { what: 'workflow from the PNG' });
  const st = await graphState(page);
  assert.deepEqual(st.nodes.map((n) => n.type), ['StubImage', SUBGRAPH, 'workflow>Finish']);
  assert.equal(await page.locator('.wn-container').count(), 2);
  assert.equal(await page.locator('.wn-missing').count(), 0);
}
