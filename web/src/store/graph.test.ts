import { beforeEach, describe, expect, it } from 'vitest';
import { useGraph } from './graph';
import type { CNode } from './graph';
import { applyControlAfterGenerate } from './exec';
import { normalizeWorkflow } from '../lib/workflow';
import { sdDefs } from '../test/fixtures/sd-defs';
import { template } from '../test/shared-fixtures';
import type { Workflow } from '../lib/types';

// A minimal localStorage for the clipboard and draft.
const mem = new Map<string, string>();
(globalThis as unknown as { localStorage: Storage }).localStorage = {
  getItem: (k: string) => mem.get(k) ?? null,
  setItem: (k: string, v: string) => void mem.set(k, String(v)),
  removeItem: (k: string) => void mem.delete(k),
  clear: () => mem.clear(),
  key: () => null,
  length: 0,
};

const g = () => useGraph.getState();
const defaultJson = template('default');

function chain(): Workflow {
  return normalizeWorkflow({
    nodes: [
      { id: 1, type: 'EmptyImage', pos: [0, 100], size: [300, 120], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [] }], widgets_values: [64, 64, 1, 0] },
      { id: 2, type: 'ImagePadForOutpaint', pos: [400, 100], size: [300, 160], inputs: [{ name: 'image', type: 'IMAGE', link: null }],
        outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [] }, { name: 'MASK', type: 'MASK', links: [] }], widgets_values: [0, 0, 0, 0, 40] },
      { id: 3, type: 'SaveImage', pos: [800, 100], size: [300, 200], inputs: [{ name: 'images', type: 'IMAGE', link: null }], widgets_values: ['x'] },
    ],
    links: [],
  });
}

beforeEach(() => {
  mem.clear();
  g().setDefs(sdDefs);
  g().load(chain(), { name: 't' });
});

describe('graph store', () => {
  it('round-trips an editor workflow unchanged', () => {
    g().load(normalizeWorkflow(defaultJson), { name: 'default' });
    const out = g().toWorkflow();
    const src = normalizeWorkflow(defaultJson);
    expect(out.links).toEqual(src.links);
    for (const n of src.nodes) {
      const o = out.nodes.find((x) => x.id === n.id)!;
      expect(o.pos).toEqual(n.pos);
      expect(o.size).toEqual(n.size);
      expect(o.widgets_values).toEqual(n.widgets_values);
      expect(o.inputs).toEqual(n.inputs);
      expect(o.outputs!.map((x) => [x.name, x.type, x.links])).toEqual(n.outputs!.map((x) => [x.name, x.type, x.links]));
      expect(o.title).toEqual(n.title);
      expect(o.color).toEqual(n.color);
    }
    expect(out.groups.map((x) => x.bounding)).toEqual(src.groups.map((x) => x.bounding));
    expect(out.extra).toEqual(src.extra);
  });

  it('refuses incompatible links and makes compatible ones', () => {
    expect(g().connect({ source: '1', sourceHandle: 'o0', target: '2', targetHandle: 'i0' })).toBe(true);
    expect(g().connect({ source: '2', sourceHandle: 'o1', target: '3', targetHandle: 'i0' })).toBe(false);
    expect(g().connect({ source: '2', sourceHandle: 'o0', target: '3', targetHandle: 'i0' })).toBe(true);
    expect(g().toWorkflow().links.map((l) => l.slice(1))).toEqual([[1, 0, 2, 0, 'IMAGE'], [2, 0, 3, 0, 'IMAGE']]);
    // A second link into the same input replaces the first.
    expect(g().connect({ source: '1', sourceHandle: 'o0', target: '3', targetHandle: 'i0' })).toBe(true);
    expect(g().toWorkflow().links.map((l) => l.slice(1, 5))).toEqual([[1, 0, 2, 0], [1, 0, 3, 0]]);
  });

  it('converts a widget to an input and back, renumbering later slots', () => {
    g().convertToInput('2', 'left');
    g().convertToInput('2', 'top');
    let n2 = g().toWorkflow().nodes.find((n) => n.id === 2)!;
    expect(n2.inputs!.map((i) => i.name)).toEqual(['image', 'left', 'top']);
    // Link something into 'top' (slot 2) through the widget handle of a primitive.
    g().addNode('PrimitiveNode', { x: 0, y: 400 });
    const prim = g().toWorkflow().nodes.find((n) => n.type === 'PrimitiveNode')!;
    expect(g().connect({ source: String(prim.id), sourceHandle: 'o0', target: '2', targetHandle: 'i2' })).toBe(true);
    g().convertToWidget('2', 'left');
    const wf = g().toWorkflow();
    n2 = wf.nodes.find((n) => n.id === 2)!;
    expect(n2.inputs!.map((i) => i.name)).toEqual(['image', 'top']);
    expect(wf.links[0].slice(3, 5)).toEqual([2, 1]);
    // The primitive took the widget's type and value; the link into 'top' is typed INT.
    const p = wf.nodes.find((n) => n.type === 'PrimitiveNode')!;
    expect(p.outputs![0]).toMatchObject({ type: 'INT', widget: { name: 'top' } });
    expect(p.widgets_values).toEqual([0, 'fixed']);
    expect(wf.links[0][5]).toBe('INT');
    g().setWidget(String(p.id), 0, 24);
    expect(g().toWorkflow().nodes.find((n) => n.id === p.id)!.widgets_values).toEqual([24, 'fixed']);
  });

  it('connecting onto a widget handle converts the widget', () => {
    g().addNode('PrimitiveNode', { x: 0, y: 400 });
    const prim = g().toWorkflow().nodes.find((n) => n.type === 'PrimitiveNode')!;
    expect(g().connect({ source: String(prim.id), sourceHandle: 'o0', target: '2', targetHandle: 'w:feathering' })).toBe(true);
    const n2 = g().toWorkflow().nodes.find((n) => n.id === 2)!;
    expect(n2.inputs!.at(-1)).toMatchObject({ name: 'feathering', type: 'INT', widget: { name: 'feathering' } });
    // A primitive may not feed a plain socket.
    expect(g().isValidConnection({ source: String(prim.id), sourceHandle: 'o0', target: '3', targetHandle: 'i0' })).toBe(false);
  });

  it('undoes and redoes', () => {
    g().addNode('ImageInvert', { x: 10, y: 10 });
    expect(g().toWorkflow().nodes).toHaveLength(4);
    g().undo();
    expect(g().toWorkflow().nodes).toHaveLength(3);
    g().redo();
    expect(g().toWorkflow().nodes).toHaveLength(4);
    g().setWidget('3', 0, 'changed');
    g().undo();
    expect(g().toWorkflow().nodes.find((n) => n.id === 3)!.widgets_values).toEqual(['x']);
  });

  it('copies and pastes selected nodes with their inner links', () => {
    g().connect({ source: '1', sourceHandle: 'o0', target: '2', targetHandle: 'i0' });
    useGraph.setState((s) => ({ nodes: s.nodes.map((n) => ({ ...n, selected: n.id === '1' || n.id === '2' })) }));
    expect(g().copy()).toBe(2);
    expect(g().paste({ x: 1000, y: 1000 })).toBe(2);
    const wf = g().toWorkflow();
    expect(wf.nodes.map((n) => n.id)).toEqual([1, 2, 3, 4, 5]);
    expect(wf.links.map((l) => l.slice(1, 5))).toEqual([[1, 0, 2, 0], [4, 0, 5, 0]]);
    expect(wf.nodes.find((n) => n.id === 4)!.pos).toEqual([1000, 1000 + 30]);
  });

  it('applies control after generate to seeds', () => {
    g().load(normalizeWorkflow(defaultJson), { name: 'd' });
    g().setWidget('3', 1, 'increment');
    applyControlAfterGenerate();
    expect((g().toWorkflow().nodes.find((n) => n.id === 3)!.widgets_values as unknown[])[0]).toBe(685468484323814);
    g().setWidget('3', 1, 'fixed');
    applyControlAfterGenerate();
    expect((g().toWorkflow().nodes.find((n) => n.id === 3)!.widgets_values as unknown[])[0]).toBe(685468484323814);
    g().setWidget('3', 1, 'randomize');
    applyControlAfterGenerate();
    expect((g().toWorkflow().nodes.find((n) => n.id === 3)!.widgets_values as unknown[])[0]).not.toBe(685468484323814);
  });

  it('mutes and bypasses the selection, toggling back', () => {
    useGraph.setState((s) => ({ nodes: s.nodes.map((n) => ({ ...n, selected: n.id === '2' })) }));
    g().setMode(4);
    expect((g().nodes.find((n) => n.id === '2') as CNode).data.mode).toBe(4);
    g().setMode(4);
    expect((g().nodes.find((n) => n.id === '2') as CNode).data.mode).toBe(0);
  });
});
