// Editor graph -> API prompt (ComfyUI frontend `graphToPrompt`) and API prompt -> editor graph.

import type { ApiPrompt, LinkTuple, ObjectInfo, WfInput, WfNode, WfOutput, Workflow } from './types';
import { VIRTUAL_TYPES } from './types';
import { controlMode, defaultWidgetValue, nodeLayout } from './widgets';
import { defFor, executionOrder, normalizeWorkflow } from './workflow';
import { typesCompatible } from './sockets';

type Resolved = { kind: 'link'; id: number; slot: number } | { kind: 'value'; value: unknown } | null;

export interface PromptResult {
  output: ApiPrompt;
  workflow: Workflow;
}

function wrap(value: unknown): unknown {
  return Array.isArray(value) ? { __value__: value } : value;
}

/**
 * Builds the API prompt the way ComfyUI's frontend does: widget values in input order (skipping
 * non-serialized control/upload slots), then links as `[String(id), slot]`; editor-only nodes are
 * left out, muted (2) nodes are dropped, bypassed (4) nodes are spliced out by type, reroutes pass
 * links through and primitives write their value; finally links to absent nodes are removed.
 */
export function graphToPrompt(wf: Workflow, defs: ObjectInfo): PromptResult {
  const nodes = new Map<number, WfNode>(wf.nodes.map((n) => [n.id, n]));
  const links = new Map<number, LinkTuple>(wf.links.map((l) => [l[0], l]));
  const output: ApiPrompt = {};

  const resolve = (linkId: number, wantType: string): Resolved => {
    let link = links.get(linkId);
    for (let guard = 0; link && guard < 1000; guard++) {
      const origin = nodes.get(link[1]);
      if (!origin) return null;
      if (origin.type === 'Reroute') {
        const up = (origin.inputs ?? [])[0]?.link;
        if (up === null || up === undefined) return null;
        link = links.get(up);
        continue;
      }
      if (origin.type === 'PrimitiveNode') {
        const wv = origin.widgets_values;
        return { kind: 'value', value: Array.isArray(wv) ? wv[0] : undefined };
      }
      if (origin.mode === 4) {
        const ins = origin.inputs ?? [];
        const candidates = [link[2], ...ins.map((_, i) => i)];
        let picked = candidates.find((i) => ins[i] && ins[i].type === wantType);
        if (picked === undefined) picked = candidates.find((i) => ins[i] && typesCompatible(ins[i].type, wantType) && ins[i].type !== '*');
        if (picked === undefined) picked = candidates.find((i) => ins[i] && typesCompatible(ins[i].type, wantType));
        if (picked === undefined) return { kind: 'link', id: origin.id, slot: link[2] }; // dropped below
        const up = ins[picked].link;
        if (up === null || up === undefined) return null;
        link = links.get(up);
        continue;
      }
      return { kind: 'link', id: origin.id, slot: link[2] };
    }
    return null;
  };

  for (const id of executionOrder(wf)) {
    const node = nodes.get(id)!;
    if (VIRTUAL_TYPES.has(node.type)) continue;
    if (node.mode === 2 || node.mode === 4) continue;
    const def = defs[node.type];
    const inputs: Record<string, unknown> = {};
    if (def) {
      const layout = nodeLayout(def);
      const values = Array.isArray(node.widgets_values) ? node.widgets_values : [];
      layout.widgets.forEach((w, i) => {
        if (!w.serialize) return;
        const v = i < values.length && values[i] !== undefined && values[i] !== null ? values[i] : defaultWidgetValue(w);
        inputs[w.name] = wrap(v);
      });
    } else if (node.widgets_values && !Array.isArray(node.widgets_values)) {
      Object.assign(inputs, node.widgets_values);
    }
    for (const inp of node.inputs ?? []) {
      if (inp.link === null || inp.link === undefined) continue;
      const r = resolve(inp.link, inp.type);
      if (!r) continue;
      inputs[inp.name] = r.kind === 'value' ? wrap(r.value) : [String(r.id), r.slot];
    }
    output[String(node.id)] = {
      inputs,
      class_type: node.type,
      _meta: { title: node.title ?? (def?.display_name || node.type) },
    };
  }
  // Links to nodes that are not in the prompt (muted, missing) are removed.
  for (const n of Object.values(output)) {
    for (const [name, v] of Object.entries(n.inputs)) {
      if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && !output[v[0]]) delete n.inputs[name];
    }
  }
  return { output, workflow: wf };
}

function isLink(v: unknown): v is [string, number] {
  return Array.isArray(v) && v.length === 2 && (typeof v[0] === 'string' || typeof v[0] === 'number') && typeof v[1] === 'number';
}

function unwrap(v: unknown): unknown {
  if (v && typeof v === 'object' && !Array.isArray(v) && '__value__' in (v as object)) return (v as { __value__: unknown }).__value__;
  return v;
}

/** Builds an editor graph from an API prompt, with a simple left-to-right layered layout. */
export function apiToWorkflow(prompt: ApiPrompt, defs: ObjectInfo): Workflow {
  const keys = Object.keys(prompt);
  const numeric = keys.filter((k) => /^\d+$/.test(k)).map(Number);
  let nextId = numeric.length ? Math.max(...numeric) + 1 : 1;
  const idOf = new Map<string, number>();
  for (const k of keys) idOf.set(k, /^\d+$/.test(k) ? Number(k) : nextId++);

  const nodes: WfNode[] = [];
  const links: LinkTuple[] = [];
  let linkId = 0;
  const pending: { to: WfNode; slot: number; from: string; fromSlot: number }[] = [];

  for (const key of keys) {
    const api = prompt[key];
    const def = defFor(defs, api.class_type);
    const id = idOf.get(key)!;
    const inputs: WfInput[] = [];
    let widgets_values: unknown[] = [];
    let outputs: WfOutput[] = [];
    if (def) {
      const layout = nodeLayout(def);
      for (const s of layout.sockets) inputs.push({ name: s.name, type: s.type, link: null });
      widgets_values = layout.widgets.map((w) => {
        if (w.kind === 'CONTROL') return 'fixed';
        if (w.kind !== 'INT' && w.kind !== 'FLOAT' && w.kind !== 'STRING' && w.kind !== 'BOOLEAN' && w.kind !== 'COMBO') return defaultWidgetValue(w);
        const v = api.inputs?.[w.name];
        if (v === undefined || isLink(v)) return defaultWidgetValue(w);
        return unwrap(v);
      });
      for (const w of layout.widgets) {
        const v = api.inputs?.[w.name];
        if (w.serialize && isLink(v)) inputs.push({ name: w.name, type: layout.widgetTypes[w.name], link: null, widget: { name: w.name } });
      }
      outputs = (def.output ?? []).map((t, i) => ({ name: def.output_name?.[i] ?? String(t), type: String(t), links: [], slot_index: i }));
    } else {
      for (const [name, v] of Object.entries(api.inputs ?? {})) {
        if (isLink(v)) inputs.push({ name, type: '*', link: null });
        else widgets_values.push(unwrap(v));
      }
    }
    const node: WfNode = {
      id,
      type: api.class_type,
      pos: [0, 0],
      size: [270, 80],
      flags: {},
      order: 0,
      mode: 0,
      inputs,
      outputs,
      properties: { 'Node name for S&R': api.class_type },
      widgets_values,
    };
    const title = api._meta?.title;
    if (title && title !== (def?.display_name || api.class_type)) node.title = title;
    nodes.push(node);
    inputs.forEach((inp, slot) => {
      const v = api.inputs?.[inp.name];
      if (isLink(v)) pending.push({ to: node, slot, from: String(v[0]), fromSlot: Number(v[1]) });
    });
  }
  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const p of pending) {
    const fromId = idOf.get(p.from);
    if (fromId === undefined) continue;
    const from = byId.get(fromId)!;
    const outs = from.outputs as WfOutput[];
    while (outs.length <= p.fromSlot) outs.push({ name: '*', type: '*', links: [] });
    const type = outs[p.fromSlot].type;
    const id = ++linkId;
    links.push([id, fromId, p.fromSlot, p.to.id, p.slot, type]);
    (outs[p.fromSlot].links ??= []).push(id);
    (p.to.inputs as WfInput[])[p.slot].link = id;
  }
  const wf: Workflow = {
    last_node_id: Math.max(0, ...nodes.map((n) => n.id)),
    last_link_id: linkId,
    nodes,
    links,
    groups: [],
    config: {},
    extra: {},
    version: 0.4,
  };
  autoLayout(wf, defs);
  return normalizeWorkflow(wf);
}

/** Estimated height of a node for layout. */
export function estimateHeight(n: WfNode, defs: ObjectInfo): number {
  const def = defFor(defs, n.type);
  const widgets = def ? nodeLayout(def).widgets : [];
  const multiline = widgets.filter((w) => w.opts.multiline).length;
  const rows = Math.max((n.inputs ?? []).length, (n.outputs ?? []).length) + widgets.length;
  return 40 + rows * 26 + multiline * 70 + (def?.output_node ? 200 : 0);
}

/** Places nodes in columns by their longest distance from a source. */
export function autoLayout(wf: Workflow, defs: ObjectInfo): void {
  const depth = new Map<number, number>();
  const order = executionOrder(wf);
  for (const id of order) depth.set(id, 0);
  for (const id of order) {
    for (const l of wf.links) if (l[1] === id) depth.set(l[3], Math.max(depth.get(l[3]) ?? 0, (depth.get(id) ?? 0) + 1));
  }
  const colY = new Map<number, number>();
  const byId = new Map(wf.nodes.map((n) => [n.id, n]));
  for (const id of order) {
    const n = byId.get(id)!;
    const d = depth.get(id) ?? 0;
    const y = colY.get(d) ?? 50;
    const h = estimateHeight(n, defs);
    n.pos = [50 + d * 340, y];
    n.size = [290, h - 30];
    colY.set(d, y + h + 40);
  }
}

/** The control modes after seeds etc. in a node, as [controlled widget index, mode]. */
export function controlledWidgets(node: WfNode, defs: ObjectInfo): [number, ReturnType<typeof controlMode>, number][] {
  const def = defs[node.type];
  if (!def || !Array.isArray(node.widgets_values)) return [];
  const widgets = nodeLayout(def).widgets;
  const out: [number, ReturnType<typeof controlMode>, number][] = [];
  widgets.forEach((w, i) => {
    if (w.kind !== 'CONTROL') return;
    const target = widgets.findIndex((x) => x.name === w.target && x.serialize);
    if (target >= 0) out.push([target, controlMode((node.widgets_values as unknown[])[i]), i]);
  });
  return out;
}
