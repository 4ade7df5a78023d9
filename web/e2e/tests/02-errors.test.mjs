// Errors land on the failing node: an execution_error (TestFail) and a 400 validation error
// (a required input left unconnected).
import assert from 'node:assert/strict';
import { clickEdge, graphState, node, openEditor, screenshot, useDefaultGraph } from '../harness.mjs';
import { failGraph } from '../graphs.mjs';

export const name = 'errors: execution_error and validation node_errors shown on the right node';
export const requires = ['StubImage', 'TestFail', 'SaveImage'];

export async function run({ server, page, ctx }) {
  await useDefaultGraph(ctx, failGraph('boom from the e2e test'));
  await openEditor(page, server.url);

  await page.keyboard.press('Control+Enter');
  const err = node(page, 2).locator('.wn-errors');
  await err.waitFor({ timeout: 15000 });
  assert.match(await err.innerText(), /boom from the e2e test/);
  assert.match(await err.innerText(), /message=/, 'the failing inputs are listed');
  assert.ok((await node(page, 2).locator('.wn').getAttribute('class')).includes('wn-has-error'));
  assert.equal(await node(page, 1).locator('.wn-errors').count(), 0);
  assert.equal(await node(page, 3).locator('.wn-errors').count(), 0);
  await page.locator('.toast-error').first().waitFor();
  await screenshot(page, '02-execution-error');

  // Remove the link into SaveImage and queue: the server's 400 names the node and the input.
  await clickEdge(page, 2);
  await page.locator('.react-flow__edge[data-id="2"].selected').waitFor({ state: 'attached', timeout: 5000 });
  await page.keyboard.press('Delete');
  assert.equal((await graphState(page)).links.length, 1);
  await page.getByTestId('queue-button').click();
  const verr = node(page, 3).locator('.wn-errors');
  await verr.waitFor({ timeout: 10000 });
  const text = await verr.innerText();
  assert.match(text, /input: images/);
  assert.match(text, /required/i);
  assert.equal(await node(page, 3).locator('.wn-slot-error').count(), 1, 'the missing input is highlighted');
  await screenshot(page, '02-validation-error');
}
