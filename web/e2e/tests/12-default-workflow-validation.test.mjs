// ComfyUI's default graph against the real diffusion nodes, without a checkpoint: the editor picks
// it as the default, converts it, and the server's validation error (the checkpoint is not in the
// list) lands on the loader node, naming ckpt_name. Everything else in the prompt must be accepted.
import assert from 'node:assert/strict';
import { graphState, node, openEditor, screenshot } from '../harness.mjs';

export const name = "default workflow without models: ComfyUI's default graph validates except the missing checkpoint";
export const requires = ['CheckpointLoaderSimple', 'CLIPTextEncode', 'EmptyLatentImage', 'KSampler', 'VAEDecode', 'SaveImage'];
export const skip = (objectInfo) => {
  const ckpts = objectInfo.CheckpointLoaderSimple?.input?.required?.ckpt_name?.[0];
  return Array.isArray(ckpts) && ckpts.includes('v1-5-pruned-emaonly-fp16.safetensors') ? 'the default checkpoint is installed' : null;
};

export async function run({ server, page }) {
  await openEditor(page, server.url);
  const st = await graphState(page);
  assert.deepEqual(st.nodes.map((n) => n.type).sort(), ['CLIPTextEncode', 'CLIPTextEncode', 'CheckpointLoaderSimple', 'EmptyLatentImage', 'KSampler', 'SaveImage', 'VAEDecode']);
  await node(page, 6).locator('textarea[data-widget="text"]').fill('a lighthouse at dusk');
  // The seed control is shown after the seed and the value is not in the prompt.
  assert.equal(await node(page, 3).locator('[data-widget="control_after_generate"] select').inputValue(), 'randomize');
  await page.keyboard.press('Control+Enter');
  const err = node(page, 4).locator('.wn-errors');
  await err.waitFor({ timeout: 10000 });
  const text = await err.innerText();
  assert.match(text, /ckpt_name/);
  for (const id of [3, 5, 6, 7, 8, 9]) assert.equal(await node(page, id).locator('.wn-errors').count(), 0, `no error on node ${id}`);
  await screenshot(page, '12-default-workflow-validation');
}
