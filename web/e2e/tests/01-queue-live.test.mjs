// Load the default graph, change the prompt, queue with Ctrl+Enter, watch progress on the running
// node and the final image in the SaveImage node; queue again and see cached nodes marked.
import assert from 'node:assert/strict';
import { graphState, node, openEditor, screenshot, setNumber, useDefaultGraph, waitFor } from '../harness.mjs';
import { sleepGraph } from '../graphs.mjs';

export const name = 'queue: default graph, edit, Ctrl+Enter, live progress, image in SaveImage, cached marks';
export const requires = ['StubImage', 'TestSleep', 'ImageInvert', 'SaveImage'];

export async function run({ server, page, ctx }) {
  await useDefaultGraph(ctx, sleepGraph({ seconds: 2 }));
  await openEditor(page, server.url);
  assert.equal(await page.locator('.react-flow__node-comfy').count(), 4, 'the default graph has 4 nodes');
  await screenshot(page, '01-default-graph');

  // "Change the prompt": the SaveImage filename prefix (text) and the image width (number, typed).
  const prefix = node(page, 4).locator('[data-widget="filename_prefix"] input');
  await prefix.fill('e2e_live');
  await prefix.press('Enter');
  await setNumber(page, 1, 'width', 320);
  const st = await graphState(page);
  assert.deepEqual(st.nodes.find((n) => n.id === 1).widgets_values, ['NOISE', 256, 320, 1]);
  assert.deepEqual(st.nodes.find((n) => n.id === 4).widgets_values, ['e2e_live']);

  // Queue with Ctrl+Enter and watch the sleeping node run with a progress bar.
  await page.locator('.react-flow__pane').click({ position: { x: 30, y: 500 } });
  await page.keyboard.press('Control+Enter');
  await node(page, 2).locator('.wn-progress').waitFor({ timeout: 15000 });
  await node(page, 2).locator('.wn.wn-running').waitFor({ timeout: 5000 });
  await waitFor(async () => Number((await node(page, 2).locator('[role=progressbar]').getAttribute('aria-valuenow')) ?? 0) >= 3, { what: 'progress' });
  await screenshot(page, '01-running-progress');

  // The image arrives in the SaveImage node.
  const img = node(page, 4).locator('.wn-outputs img');
  await img.waitFor({ timeout: 20000 });
  const filename = await img.getAttribute('data-filename');
  assert.match(filename, /^e2e_live_\d{5}_\.png$/);
  await waitFor(() => img.evaluate((el) => el.complete && el.naturalWidth > 0), { what: 'image load' });
  assert.deepEqual(await img.evaluate((el) => [el.naturalWidth, el.naturalHeight]), [320, 256]);
  assert.equal(await node(page, 2).locator('.wn-running').count(), 0, 'nothing runs any more');
  await screenshot(page, '01-final-image');

  // Queue again unchanged: upstream nodes come from the cache and are marked.
  await page.getByTestId('queue-button').click();
  await node(page, 1).locator('.wn-badge-cached').waitFor({ timeout: 15000 });
  await node(page, 2).locator('.wn-badge-cached').waitFor({ timeout: 15000 });
  await screenshot(page, '01-cached');
}
