// The editor over the shared editor-format fixtures (tests/fixtures/editor, the files the Rust
// conversion is tested on). Conversion itself is the server's; what the editor still does on its
// own must agree with it on the same files: its widget layout (which value is which widget, for
// drawing and seed control) and its document round trip (what it sends back to be converted).
import { beforeAll, describe, expect, it } from 'vitest';
import { expectedPrompt, template, templateNames } from '../test/shared-fixtures';
import { sdDefs } from '../test/fixtures/sd-defs';
import { nodeLayout } from './widgets';
import { normalizeWorkflow } from './workflow';
import type { LinkTuple, WfNode, Workflow } from './types';
import { useGraph } from '../store/graph';

const names = templateNames();

describe('shared fixtures', () => {
  it('are there', () => {
    expect(names.length).toBeGreaterThanOrEqual(18);
    expect(names.filter((n) => expectedPrompt(n)).length).toBeGreaterThanOrEqual(10);
  });
});

describe('widget layout names widget values as the server does', () => {
  for (const name of names.filter((n) => expectedPrompt(n))) {
    it(name, () => {
      const wf = template(name) as unknown as Workflow;
      const expected = expectedPrompt(name)!;
      let checked = 0;
      for (const node of wf.nodes as WfNode[]) {
        const api = expected[String(node.id)];
        const def = sdDefs[node.type];
        const values = node.widgets_values;
        if (!api || !def || !Array.isArray(values)) continue;
        expect(api.class_type).toBe(node.type);
        // Widgets fed by a link (or a primitive) take their value from elsewhere.
        const fed = new Set((node.inputs ?? []).filter((i) => i.widget && i.link !== null).map((i) => i.widget!.name));
        nodeLayout(def).widgets.forEach((w, i) => {
          if (!w.serialize || fed.has(w.name) || i >= values.length) return;
          let value = values[i];
          const sent = api.inputs[w.name];
          if (typeof value === 'string' && value.includes('{')) return; // dynamic prompts: the server picks one
          if (Array.isArray(value)) value = { __value__: value };
          expect(sent, `${name}: node ${node.id} (${node.type}) widget ${i} '${w.name}'`).toEqual(value);
          checked++;
        });
      }
      expect(checked).toBeGreaterThan(0);
    });
  }
});

// A minimal localStorage for the store's draft.
beforeAll(() => {
  const mem = new Map<string, string>();
  (globalThis as unknown as { localStorage: Partial<Storage> }).localStorage ??= {
    getItem: (k: string) => mem.get(k) ?? null,
    setItem: (k: string, v: string) => void mem.set(k, String(v)),
    removeItem: (k: string) => void mem.delete(k),
  };
});

/** Links by what they join: origin node and slot, target node and input name, type. */
function linkKeys(wf: Workflow): string[] {
  const byId = new Map(wf.nodes.map((n) => [n.id, n]));
  return (wf.links as LinkTuple[])
    .map((l) => `${l[1]}:${l[2]} -> ${l[3]}:${byId.get(l[3])?.inputs?.[l[4]]?.name} (${l[5]})`)
    .sort();
}

describe('the editor hands each template back to the server unchanged', () => {
  for (const name of names) {
    it(name, () => {
      const original = template(name);
      useGraph.getState().setDefs(sdDefs);
      useGraph.getState().load(normalizeWorkflow(original), { name });
      const out = useGraph.getState().toWorkflow();
      const src = normalizeWorkflow(original);
      expect(linkKeys(out)).toEqual(linkKeys(src));
      expect(out.links.length).toBe((original.links as unknown[]).length);
      for (const n of src.nodes) {
        const o = out.nodes.find((x) => x.id === n.id)!;
        expect([o.type, o.mode ?? 0, o.title, o.properties]).toEqual([n.type, n.mode ?? 0, n.title, n.properties]);
        expect(o.widgets_values).toEqual(n.widgets_values);
      }
      expect(out.nodes.length).toBe((original.nodes as unknown[]).length);
      expect(out.definitions).toEqual(original.definitions);
      expect(out.extra.groupNodes).toEqual((original.extra as Record<string, unknown>)?.groupNodes);
      // Loading what the editor wrote gives the same document again.
      useGraph.getState().load(out, { name });
      expect(useGraph.getState().toWorkflow()).toEqual(out);
    });
  }
});
