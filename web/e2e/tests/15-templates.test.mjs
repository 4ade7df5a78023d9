// ComfyUI's workflow templates (tests/fixtures/editor, the files the Rust conversion is tested on)
// opened in the editor and exported as API JSON: the server converts what the editor hands it to
// the prompt ComfyUI's frontend makes (expected/), so the editor's loading and saving lose nothing
// the conversion needs. Templates with node types this server lacks are left out, as in the Rust
// test `weft_declarations_convert_templates_like_comfyui`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { WEB_DIR, api, exportApiJson, graphState, openEditor, waitFor } from '../harness.mjs';

export const name = "templates: ComfyUI's templates opened in the editor convert to ComfyUI's prompts";

const FIXTURES = path.join(WEB_DIR, '..', 'tests', 'fixtures', 'editor');
const withoutMeta = (prompt) => Object.fromEntries(Object.entries(prompt).map(([id, { _meta, ...rest }]) => [id, rest]));

export async function run({ server, page }) {
  await openEditor(page, server.url);
  const names = fs.readdirSync(path.join(FIXTURES, 'expected')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
  const checked = [];
  for (const name of names) {
    const file = path.join(FIXTURES, 'workflows', `${name}.json`);
    const original = JSON.parse(fs.readFileSync(file, 'utf8'));
    const direct = (await api(server.url, '/api/weft/convert', original)).json;
    if (direct.missing_node_types.length) continue;
    await page.getByTestId('import-input').setInputFiles(file);
    await waitFor(async () => (await graphState(page)).doc.name === name, { what: `${name} opens` });
    const exported = await exportApiJson(page);
    assert.deepEqual(exported, direct.prompt, `${name}: the editor's document converts like the file`);
    const expected = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'expected', `${name}.json`), 'utf8'));
    assert.deepEqual(withoutMeta(exported), withoutMeta(expected), `${name}: ComfyUI's prompt`);
    checked.push(name);
  }
  assert.ok(checked.length >= 5, `checked ${checked.join(', ')}`);
  console.log(`#   templates checked: ${checked.join(', ')}`);
}
