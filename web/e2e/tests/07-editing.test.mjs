// Editing comforts: double-click search, undo/redo, copy/paste (also into another tab),
// multi-select + group, widget -> input -> widget, mute, number drag, minimap, fit view.
import assert from 'node:assert/strict';
import { graphState, node, openEditor, screenshot, useDefaultGraph, waitFor, waitReady } from '../harness.mjs';
import { sleepGraph } from '../graphs.mjs';

export const name = 'editing: search box, undo/redo, copy/paste across tabs, groups, convert widget, mute, drag numbers';
export const requires = ['StubImage', 'TestSleep', 'ImageInvert', 'SaveImage'];

const count = async (page) => (await graphState(page)).nodes.length;

export async function run({ server, page, ctx, objectInfo }) {
  await useDefaultGraph(ctx, sleepGraph());
  await openEditor(page, server.url);
  assert.equal(await page.locator('.react-flow__minimap').count(), 1);

  // Double-click the empty canvas: the search box; type, Enter adds the node there.
  const pane = page.locator('.react-flow__pane');
  const box = await pane.boundingBox();
  await page.mouse.dblclick(box.x + 120, box.y + box.height - 120);
  await page.getByTestId('searchbox').waitFor();
  await page.keyboard.type('invert image');
  await page.waitForTimeout(50);
  await screenshot(page, '07-search-box');
  await page.keyboard.press('Enter');
  await waitFor(async () => (await count(page)) === 5, { what: 'node added' });
  const added = (await graphState(page)).nodes.find((n) => n.id === 5);
  assert.equal(added.type, 'ImageInvert');

  // Drop a link from an output on empty canvas: the search box offers nodes that accept it, and
  // the chosen node comes connected.
  const out3 = page.locator('.react-flow__node[data-id="3"] .react-flow__handle[data-handleid="o0"]');
  const ob = await out3.boundingBox();
  await page.mouse.move(ob.x + ob.width / 2, ob.y + ob.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height - 60, { steps: 10 });
  await page.mouse.up();
  await page.getByTestId('searchbox').waitFor();
  assert.match(await page.getByTestId('searchbox').locator('input').getAttribute('placeholder'), /IMAGE/);
  const offered = await page.getByTestId('searchbox').locator('.searchbox-item').evaluateAll((els) => els.map((e) => e.dataset.node));
  assert.ok(offered.includes('PreviewImage') && !offered.includes('StubImage') && !offered.includes('EmptyImage'), `offered ${offered}`);
  await page.keyboard.type('preview');
  await page.keyboard.press('Enter');
  await waitFor(async () => (await graphState(page)).links.some((l) => l[1] === 3 && l[3] === 6), { what: 'new node linked' });
  await page.keyboard.press('Control+z');
  await waitFor(async () => (await count(page)) === 5, { what: 'undo the linked node' });

  // Undo / redo.
  await pane.click({ position: { x: 10, y: 10 } });
  await page.keyboard.press('Control+z');
  await waitFor(async () => (await count(page)) === 4, { what: 'undo' });
  await page.keyboard.press('Control+y');
  await waitFor(async () => (await count(page)) === 5, { what: 'redo' });

  // Copy node 1 and paste it here and in a second tab.
  await node(page, 1).locator('.wn-title').click();
  await page.keyboard.press('Control+c');
  await page.mouse.move(box.x + 300, box.y + box.height - 80);
  await page.keyboard.press('Control+v');
  await waitFor(async () => (await count(page)) === 6, { what: 'paste' });
  const pasted = (await graphState(page)).nodes.find((n) => n.id === 6);
  assert.equal(pasted.type, 'StubImage');
  const tab2 = await ctx.newPage();
  await tab2.goto(server.url);
  await waitReady(tab2);
  const before = await count(tab2);
  await tab2.locator('.react-flow__pane').click({ position: { x: 20, y: 20 } });
  await tab2.keyboard.press('Control+v');
  await waitFor(async () => (await count(tab2)) === before + 1, { what: 'paste in the second tab' });
  await tab2.close();

  // Multi-select (Ctrl+click) and group them.
  await node(page, 3).locator('.wn-title').click();
  await node(page, 4).locator('.wn-title').click({ modifiers: ['Control'] });
  await page.keyboard.press('Control+g');
  await waitFor(async () => (await graphState(page)).groups.length === 2, { what: 'group added' });

  // Mute the selection with Ctrl+M.
  await page.keyboard.press('Control+m');
  await waitFor(async () => (await graphState(page)).nodes.filter((n) => n.mode === 2).length === 2, { what: 'muted' });
  assert.equal(await page.locator('.wn.wn-muted').count(), 2);
  await page.keyboard.press('Control+m');

  // Convert a widget to an input and back.
  await node(page, 1).locator('.wn-title').click({ button: 'right' });
  await page.getByTestId('context-menu').getByText('Convert width to input').click();
  await node(page, 1).locator('.react-flow__handle[data-handleid="i0"]').waitFor();
  assert.equal(await node(page, 1).locator('[data-widget="width"]').count(), 0);
  let n1 = (await graphState(page)).nodes.find((n) => n.id === 1);
  assert.deepEqual(n1.inputs.map((i) => [i.name, i.type, i.widget?.name]), [['width', 'INT', 'width']]);
  await node(page, 1).locator('.wn-unconvert').click();
  await node(page, 1).locator('[data-widget="width"]').waitFor();
  n1 = (await graphState(page)).nodes.find((n) => n.id === 1);
  assert.deepEqual(n1.inputs, []);

  // Drag a number to the right: it grows by steps.
  const body = node(page, 1).locator('[data-widget="height"] .w-number-body');
  const b = await body.boundingBox();
  await page.mouse.move(b.x + b.width / 2, b.y + b.height / 2);
  await page.mouse.down();
  await page.mouse.move(b.x + b.width / 2 + 60, b.y + b.height / 2, { steps: 6 });
  await page.mouse.up();
  n1 = (await graphState(page)).nodes.find((n) => n.id === 1);
  assert.ok(n1.widgets_values[1] > 256, `height grew (${n1.widgets_values[1]})`);

  // Dragging a group by its title moves the nodes inside it.
  const zoom = await page.evaluate(() => {
    const t = document.querySelector('.react-flow__viewport').style.transform;
    return Number(/scale\(([^)]+)\)/.exec(t)[1]);
  });
  const posOf = async (id) => (await graphState(page)).nodes.find((n) => n.id === id).pos;
  const before1 = await posOf(1);
  const groupPos = async () => (await graphState(page)).groups.find((g) => g.title === 'Make an image').bounding;
  const g0 = await groupPos();
  const title = page.locator('.wg-title', { hasText: 'Make an image' });
  const tb = await title.boundingBox();
  await page.mouse.move(tb.x + 40, tb.y + tb.height / 2);
  await page.mouse.down();
  await page.mouse.move(tb.x + 90, tb.y + tb.height / 2 + 30, { steps: 8 });
  await page.mouse.up();
  const after1 = await posOf(1);
  const g1 = await groupPos();
  const [dx, dy] = [g1[0] - g0[0], g1[1] - g0[1]];
  assert.ok(dx > 20 / zoom && dy > 10 / zoom, `the group moved (${dx}, ${dy})`);
  assert.ok(Math.abs(after1[0] - before1[0] - dx) < 0.5 && Math.abs(after1[1] - before1[1] - dy) < 0.5, `node 1 moved with its group (${before1} -> ${after1}; group moved ${dx}, ${dy})`);

  // A toggle (BOOLEAN) widget, when the server has a node with one.
  if (objectInfo.SamplerCustom) {
    await page.mouse.dblclick(box.x + box.width / 2, box.y + 60);
    await page.getByTestId('searchbox').waitFor();
    await page.keyboard.type('SamplerCustom');
    await page.getByTestId('searchbox').locator('.searchbox-item[data-node="SamplerCustom"]').click();
    const sc = (await graphState(page)).nodes.find((n) => n.type === 'SamplerCustom');
    assert.deepEqual(sc.widgets_values.slice(0, 3), [true, 0, 'randomize']);
    await node(page, sc.id).locator('[data-widget="add_noise"]').click();
    await waitFor(async () => (await graphState(page)).nodes.find((n) => n.id === sc.id).widgets_values[0] === false, { what: 'toggle off' });
    assert.match(await node(page, sc.id).locator('[data-widget="add_noise"]').innerText(), /false/);
  }

  // Delete with the Delete key, fit view with '.'.
  await node(page, 6).locator('.wn-title').click();
  await page.keyboard.press('Delete');
  await waitFor(async () => !(await graphState(page)).nodes.some((n) => n.id === 6), { what: 'deleted' });
  await page.keyboard.press('.');
  await page.waitForTimeout(200);
  await screenshot(page, '07-editing');
}
