// Drop PNGs made by Weft onto the canvas: the server reads them (POST /api/weft/convert); the
// `workflow` chunk comes back; a PNG with only a `prompt` chunk is converted from API format.
import assert from 'node:assert/strict';
import { api, dropFile, graphState, openEditor, screenshot, useDefaultGraph, waitFor } from '../harness.mjs';
import { failGraph, sleepGraph } from '../graphs.mjs';

export const name = 'png: drop a Weft PNG, get its workflow (then its prompt) back';
export const requires = ['StubImage', 'TestSleep', 'ImageInvert', 'SaveImage'];

async function makePng(server, prompt, workflow) {
  const body = { prompt, client_id: 'e2e-png' };
  if (workflow) body.extra_data = { extra_pnginfo: { workflow } };
  const res = await api(server.url, '/prompt', body);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  const id = res.json.prompt_id;
  const entry = await waitFor(async () => (await api(server.url, `/history/${id}`)).json?.[id], { what: 'history entry' });
  const img = Object.values(entry.outputs).flatMap((o) => o.images ?? [])[0];
  const q = new URLSearchParams(img);
  return Buffer.from(await (await fetch(`${server.url}/view?${q}`)).arrayBuffer());
}

export async function run({ server, page, ctx }) {
  const wf = sleepGraph({ seconds: 0.05, prefix: 'png_meta' });
  wf.nodes.find((n) => n.id === 3).title = 'Invert from the PNG';
  const prompt = {
    1: { class_type: 'StubImage', inputs: { content: 'WHITE', height: 48, width: 48, batch_size: 1 } },
    2: { class_type: 'TestSleep', inputs: { value: ['1', 0], seconds: 0.05 } },
    3: { class_type: 'ImageInvert', inputs: { image: ['2', 0] } },
    4: { class_type: 'SaveImage', inputs: { images: ['3', 0], filename_prefix: 'png_meta' } },
  };
  const withWorkflow = await makePng(server, prompt, wf);
  const promptOnly = await makePng(server, { ...prompt, 4: { class_type: 'SaveImage', inputs: { images: ['3', 0], filename_prefix: 'png_prompt_only' } } });

  await useDefaultGraph(ctx, failGraph());
  await openEditor(page, server.url);
  assert.equal((await graphState(page)).nodes.length, 3);

  await dropFile(page, withWorkflow, 'weft_output.png');
  await waitFor(async () => (await graphState(page)).nodes.some((n) => n.title === 'Invert from the PNG'), { what: 'workflow from PNG' });
  let st = await graphState(page);
  assert.equal(st.nodes.length, 4);
  assert.equal(st.groups.length, 1, 'the editor-only parts (groups) came back too');
  assert.deepEqual(st.nodes.find((n) => n.type === 'SaveImage').widgets_values, ['png_meta']);
  await screenshot(page, '06-png-workflow-restored');

  await dropFile(page, promptOnly, 'prompt_only.png');
  await waitFor(async () => (await graphState(page)).nodes.some((n) => n.widgets_values?.[0] === 'png_prompt_only'), { what: 'prompt from PNG' });
  st = await graphState(page);
  assert.deepEqual(st.nodes.map((n) => n.type).sort(), ['ImageInvert', 'SaveImage', 'StubImage', 'TestSleep']);
  assert.equal(st.links.length, 3);
  await screenshot(page, '06-png-prompt-restored');
}
