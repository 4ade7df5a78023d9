// Save to the library (with versions), reload the page (the draft survives), open from the
// library, restore an old version.
import assert from 'node:assert/strict';
import { graphState, node, openEditor, screenshot, useDefaultGraph, waitFor, waitReady } from '../harness.mjs';
import { sleepGraph } from '../graphs.mjs';

export const name = 'library: save, versions, reload keeps the draft, reopen, restore';
export const requires = ['StubImage', 'TestSleep', 'ImageInvert', 'SaveImage'];

const prefixOf = async (page) => (await graphState(page)).nodes.find((n) => n.type === 'SaveImage').widgets_values[0];

export async function run({ server, page, ctx }) {
  await useDefaultGraph(ctx, sleepGraph());
  await openEditor(page, server.url);

  await page.getByTestId('doc-name').fill('E2E library flow');
  await page.keyboard.press('Control+s');
  await waitFor(async () => (await graphState(page)).doc.libraryId, { what: 'saved' });
  assert.equal((await graphState(page)).doc.libraryVersion, 1);

  const prefix = node(page, 4).locator('[data-widget="filename_prefix"] input');
  await prefix.fill('second_version');
  await prefix.press('Enter');
  await page.keyboard.press('Control+s');
  await waitFor(async () => (await graphState(page)).doc.libraryVersion === 2, { what: 'version 2' });

  // Reload: the graph and the document come back from the local draft.
  await page.reload();
  await waitReady(page);
  assert.equal(await prefixOf(page), 'second_version');
  assert.equal(await page.getByTestId('doc-name').inputValue(), 'E2E library flow');
  await screenshot(page, '04-after-reload');

  // New empty document, then reopen from the library.
  await page.getByTestId('menu-workflow').click();
  await page.getByText('New (empty)').click();
  await waitFor(async () => (await graphState(page)).nodes.length === 0, { what: 'empty document' });
  await page.getByTestId('tab-library').click();
  const item = page.locator('.lib-item[data-name="E2E library flow"]');
  await item.waitFor();
  await item.locator('.lib-open').click();
  await waitFor(async () => (await graphState(page)).nodes.length === 4, { what: 'reopened' });
  assert.equal(await prefixOf(page), 'second_version');
  await screenshot(page, '04-reopened-from-library');

  // Versions: restore v1 (saved as v3).
  await item.getByText('versions').click();
  await item.locator('.lib-version').nth(1).waitFor();
  assert.equal(await item.locator('.lib-version').count(), 2);
  await item.locator('.lib-version[data-version="1"] button').click();
  await waitFor(async () => (await prefixOf(page)) === 'weft_e2e', { what: 'restored v1' });
  assert.equal((await graphState(page)).doc.libraryVersion, 3);
  await screenshot(page, '04-restored-version');
}
