// ComfyUI's default workflow (CheckpointLoaderSimple ... KSampler ... SaveImage) end to end in the
// editor: the editor picks ComfyUI's default graph, the prompt text and sizes are edited, Ctrl+Enter
// queues it, KSampler reports progress, and the decoded image lands in SaveImage. Uses the first
// checkpoint the server lists; without one it writes a tiny random-weight SD1 checkpoint from the
// Rust test key maps (tests/fixtures/unet) into the server's models folder.
import assert from 'node:assert/strict';
import path from 'node:path';
import { graphState, node, openEditor, screenshot, setNumber, waitFor } from '../harness.mjs';
import { canMakeTinyCheckpoint, writeTinyCheckpoint } from '../tiny-checkpoint.mjs';

export const name = "default workflow: ComfyUI's default graph, new prompt, progress, image in SaveImage";
export const requires = ['CheckpointLoaderSimple', 'CLIPTextEncode', 'EmptyLatentImage', 'KSampler', 'VAEDecode', 'SaveImage'];
const checkpoints = (oi) => oi.CheckpointLoaderSimple?.input?.required?.ckpt_name?.[0] ?? [];
export const skip = (objectInfo) => {
  if (checkpoints(objectInfo).length) return null;
  if (process.env.WEFT_MODELS_DIR) return 'WEFT_MODELS_DIR has no checkpoint';
  return canMakeTinyCheckpoint() ? null : 'no checkpoint and no key maps (tests/fixtures/unet) to make a tiny one';
};

export async function run({ server, page }) {
  let ckpt = checkpoints(await (await fetch(`${server.url}/object_info/CheckpointLoaderSimple`)).json().then((o) => ({ CheckpointLoaderSimple: o.CheckpointLoaderSimple })))[0];
  if (!ckpt) {
    // Only into the run's own temp models folder, never into a WEFT_MODELS_DIR.
    assert.ok(server.modelsDir.startsWith(server.dataDir), 'WEFT_MODELS_DIR has no checkpoint');
    ckpt = writeTinyCheckpoint(path.join(server.modelsDir, 'checkpoints'));
    await waitFor(async () => checkpoints(await (await fetch(`${server.url}/object_info`)).json()).includes(ckpt), { what: 'the server lists the tiny checkpoint' });
  }

  // No configured default: the editor picks ComfyUI's default graph because the nodes exist.
  await openEditor(page, server.url);
  let st = await graphState(page);
  assert.deepEqual(st.nodes.map((n) => n.type).sort(), ['CLIPTextEncode', 'CLIPTextEncode', 'CheckpointLoaderSimple', 'EmptyLatentImage', 'KSampler', 'SaveImage', 'VAEDecode']);

  await node(page, 4).locator('[data-widget="ckpt_name"] select').selectOption(ckpt);
  await node(page, 6).locator('textarea[data-widget="text"]').fill('a red bicycle leaning on a wall, photograph');
  await setNumber(page, 5, 'width', 64);
  await setNumber(page, 5, 'height', 64);
  await setNumber(page, 3, 'steps', 4);
  await node(page, 3).locator('[data-widget="control_after_generate"] select').selectOption('increment');
  st = await graphState(page);
  assert.equal(st.nodes.find((n) => n.id === 6).widgets_values[0], 'a red bicycle leaning on a wall, photograph');
  const seed = st.nodes.find((n) => n.id === 3).widgets_values[0];

  await page.evaluate(() => {
    window.__progress = [];
    window.weft.exec.subscribe((s) => {
      const p = s.progress['3'];
      if (p && !window.__progress.includes(p.value)) window.__progress.push(p.value);
    });
  });
  await page.locator('.react-flow__pane').click({ position: { x: 20, y: 20 } });
  await page.keyboard.press('Control+Enter');
  const img = node(page, 9).locator('.wn-outputs img');
  await img.waitFor({ timeout: 300000 });
  // (64 with a real SD VAE; the tiny test VAE upscales 4x, not 8x.)
  await waitFor(() => img.evaluate((el) => el.complete && el.naturalWidth > 0 && el.naturalWidth === el.naturalHeight), { what: 'square image' });
  assert.match(await img.getAttribute('data-filename'), /^ComfyUI_\d{5}_\.png$/);
  // The sampler's previews were shown in the KSampler node.
  assert.equal(await node(page, 3).locator('img.wn-preview').count(), 1);
  assert.deepEqual(await page.evaluate(() => window.__progress), [1, 2, 3, 4], 'KSampler reported each step');
  st = await graphState(page);
  assert.equal(st.nodes.find((n) => n.id === 3).widgets_values[0], seed + 1, 'the seed was incremented after queueing');
  await page.keyboard.press('.');
  await page.waitForTimeout(200);
  await screenshot(page, '10-default-workflow-image');
}
