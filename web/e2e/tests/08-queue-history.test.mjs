// The queue panel (pause, pending, move to front, cancel, running with progress) and the history
// gallery (outputs; click restores the workflow).
import assert from 'node:assert/strict';
import { api, graphState, node, openEditor, screenshot, useDefaultGraph, waitFor } from '../harness.mjs';
import { sleepGraph } from '../graphs.mjs';

export const name = 'queue panel and history gallery';
export const requires = ['StubImage', 'TestSleep', 'ImageInvert', 'SaveImage'];

export async function run({ server, page, ctx }) {
  await useDefaultGraph(ctx, sleepGraph({ seconds: 1.2, prefix: 'queue_panel' }));
  await openEditor(page, server.url);
  await page.getByTestId('tab-queue').click();
  const panel = page.getByTestId('queue-panel');
  await panel.getByTestId('queue-pause').click();
  await waitFor(async () => (await api(server.url, '/api/weft/queue/state')).json.paused, { what: 'paused' });

  // Three prompts (different sizes so none is cached).
  for (const size of [64, 80, 96]) {
    await page.evaluate((s) => {
      const g = window.weft.graph.getState();
      g.setWidget('1', 1, s);
    }, size);
    await page.keyboard.press('Control+Enter');
    await page.waitForTimeout(150);
  }
  const pending = panel.locator('.queue-item:not(.running)');
  await waitFor(async () => (await pending.count()) === 3, { what: '3 pending' });
  const ids = await pending.evaluateAll((els) => els.map((e) => e.dataset.promptId));

  // Move the last to the front, cancel the middle one.
  await pending.nth(2).locator('[data-action="front"]').click();
  await waitFor(async () => (await pending.first().getAttribute('data-prompt-id')) === ids[2], { what: 'moved to front' });
  await panel.locator(`.queue-item[data-prompt-id="${ids[1]}"] [data-action="cancel"]`).click();
  await waitFor(async () => (await pending.count()) === 2, { what: 'cancelled' });
  await screenshot(page, '08-queue-paused');

  // Resume: the running item shows progress.
  await panel.getByTestId('queue-pause').click();
  await panel.locator('.queue-item.running').waitFor({ timeout: 10000 });
  assert.equal(await panel.locator('.queue-item.running').getAttribute('data-prompt-id'), ids[2]);
  await waitFor(async () => /step \d+\/20/.test(await panel.locator('.queue-item.running').innerText()), { what: 'progress in the panel' });
  await screenshot(page, '08-queue-running');
  await waitFor(async () => (await panel.locator('.queue-item').count()) === 0, { timeout: 20000, what: 'queue drained' });

  // History gallery: two runs with images; clicking one restores its workflow.
  await page.getByTestId('tab-history').click();
  const items = page.locator('.gallery-item');
  await waitFor(async () => (await items.count()) >= 2, { what: 'history items' });
  await items.first().locator('.gallery-thumbs img').first().waitFor();
  await page.getByTestId('menu-workflow').click();
  await page.getByText('New (empty)').click();
  await waitFor(async () => (await graphState(page)).nodes.length === 0, { what: 'empty' });
  await items.first().locator('.gallery-thumbs').click();
  await waitFor(async () => (await graphState(page)).nodes.length === 4, { what: 'restored from history' });
  const st = await graphState(page);
  assert.ok(st.doc.name.startsWith('History #'));
  await node(page, 4).locator('.wn-outputs img').waitFor();
  await screenshot(page, '08-history-restored');
}
