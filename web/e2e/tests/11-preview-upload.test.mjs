// Sampler-style previews shown in the running node; LoadImage upload with preview, then its image
// runs through to a PreviewImage node.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { graphState, node, openEditor, screenshot, useDefaultGraph, waitFor } from '../harness.mjs';
import { graph } from '../graphs.mjs';

export const name = 'previews in the node, LoadImage upload with preview, PreviewImage output';
export const requires = ['StubImage', 'TestPreview', 'SaveImage', 'LoadImage', 'ImageInvert', 'PreviewImage'];

const io = (pairs) => pairs.map(([name, type]) => ({ name, type, link: null }));
const outs = (pairs) => pairs.map(([name, type], i) => ({ name, type, links: [], slot_index: i }));

export async function run({ server, page, ctx }) {
  const wf = graph(
    [
      { id: 1, type: 'StubImage', pos: [40, 80], size: [300, 130], mode: 0, inputs: [], outputs: outs([['IMAGE', 'IMAGE']]), widgets_values: ['NOISE', 96, 128, 1] },
      { id: 2, type: 'TestPreview', pos: [400, 80], size: [220, 120], mode: 0, inputs: io([['value', '*']]), outputs: outs([['value', '*']]) },
      { id: 3, type: 'SaveImage', pos: [680, 80], size: [300, 260], mode: 0, inputs: io([['images', 'IMAGE']]), outputs: [], widgets_values: ['upload_src'] },
      { id: 4, type: 'LoadImage', pos: [40, 420], size: [300, 300], mode: 0, inputs: [], outputs: outs([['IMAGE', 'IMAGE'], ['MASK', 'MASK']]), widgets_values: ['', 'image'] },
      { id: 5, type: 'ImageInvert', pos: [400, 420], size: [200, 30], mode: 0, inputs: io([['image', 'IMAGE']]), outputs: outs([['IMAGE', 'IMAGE']]) },
      { id: 6, type: 'PreviewImage', pos: [680, 420], size: [300, 260], mode: 4, inputs: io([['images', 'IMAGE']]), outputs: [] },
    ],
    [[1, 1, 0, 2, 0, '*'], [2, 2, 0, 3, 0, 'IMAGE'], [3, 4, 0, 5, 0, 'IMAGE'], [4, 5, 0, 6, 0, 'IMAGE']],
  );
  await useDefaultGraph(ctx, wf);
  await openEditor(page, server.url);

  // Run the top row (the PreviewImage branch starts bypassed, so LoadImage is not needed yet).
  await page.keyboard.press('Control+Enter');
  await node(page, 2).locator('img.wn-preview').waitFor({ timeout: 15000 });
  await waitFor(() => node(page, 2).locator('img.wn-preview').evaluate((el) => el.complete && el.naturalWidth === 4), { what: 'preview frame' });
  const out = node(page, 3).locator('.wn-outputs img');
  await out.waitFor({ timeout: 15000 });
  await screenshot(page, '11-preview-in-node');

  // Upload that output through LoadImage's upload button.
  const src = new URL(await out.getAttribute('src'), server.url);
  const bytes = Buffer.from(await (await fetch(src)).arrayBuffer());
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'weft-upload-')), 'uploaded_e2e.png');
  fs.writeFileSync(file, bytes);
  await node(page, 4).getByTestId('upload-input').setInputFiles(file);
  await waitFor(async () => (await graphState(page)).nodes.find((n) => n.id === 4).widgets_values[0] === 'uploaded_e2e.png', { what: 'combo set to the upload' });
  assert.ok((await node(page, 4).locator('[data-widget="image"] select option').allTextContents()).includes('uploaded_e2e.png'), 'the list was refreshed');
  const preview = node(page, 4).locator('.wn-loadimage img');
  await waitFor(() => preview.evaluate((el) => el.complete && el.naturalWidth > 0), { what: 'LoadImage preview' });

  // Un-bypass PreviewImage (Ctrl+B toggles) and run: the inverted upload shows in PreviewImage.
  await node(page, 6).locator('.wn-title').click();
  await page.keyboard.press('Control+b');
  await waitFor(async () => (await graphState(page)).nodes.find((n) => n.id === 6).mode === 0, { what: 'unbypassed' });
  await page.keyboard.press('Control+Enter');
  const pv = node(page, 6).locator('.wn-outputs img');
  await pv.waitFor({ timeout: 15000 });
  await waitFor(() => pv.evaluate((el) => el.complete && el.naturalWidth === 128 && el.naturalHeight === 96), { what: 'preview image' });
  await screenshot(page, '11-loadimage-upload');
}
