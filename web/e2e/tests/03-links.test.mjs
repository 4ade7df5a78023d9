// Typed sockets: an incompatible link (MASK -> IMAGE) is refused, compatible ones are made, '*'
// accepts anything.
import assert from 'node:assert/strict';
import { dragLink, graphState, handle, openEditor, screenshot, useDefaultGraph } from '../harness.mjs';
import { linkGraph } from '../graphs.mjs';

export const name = 'links: invalid link refused, valid and * links made';
export const requires = ['EmptyImage', 'ImagePadForOutpaint', 'SaveImage', 'TestSleep'];

export async function run({ server, page, ctx }) {
  await useDefaultGraph(ctx, linkGraph());
  await openEditor(page, server.url);
  assert.equal((await graphState(page)).links.length, 1);

  // MASK -> IMAGE: refused. Screenshot while hovering the target with the link in hand.
  const mask = handle(page, 2, 'o1');
  const images = handle(page, 3, 'i0');
  const a = await mask.boundingBox();
  const b = await images.boundingBox();
  await page.mouse.move(a.x + a.width / 2, a.y + a.height / 2);
  await page.mouse.down();
  await page.mouse.move(b.x + b.width / 2, b.y + b.height / 2, { steps: 12 });
  await page.waitForTimeout(100);
  await screenshot(page, '03-invalid-link-dragging');
  await page.mouse.up();
  await page.waitForTimeout(150);
  assert.equal((await graphState(page)).links.length, 1, 'MASK -> IMAGE must be refused');

  // IMAGE -> IMAGE: made.
  await dragLink(page, handle(page, 2, 'o0'), images);
  let st = await graphState(page);
  assert.equal(st.links.length, 2);
  assert.deepEqual(st.links[1].slice(1), [2, 0, 3, 0, 'IMAGE']);

  // MASK -> '*': made.
  await dragLink(page, mask, handle(page, 4, 'i0'));
  st = await graphState(page);
  assert.equal(st.links.length, 3);
  assert.deepEqual(st.links[2].slice(1, 5), [2, 1, 4, 0]);
  await screenshot(page, '03-links');
}
