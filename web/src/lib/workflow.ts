// Editor-format (ComfyUI UI v0.4) workflows: detection, normalisation and helpers.

import type { ApiPrompt, LinkTuple, NodeDef, ObjectInfo, WfInput, WfNode, WfOutput, Workflow } from './types';
import { nodeLayout } from './widgets';

export const TITLE_HEIGHT = 30;

/** Editor-only node types, offered in the palette under "utils". */
export const VIRTUAL_DEFS: ObjectInfo = {
  Reroute: {
    name: 'Reroute', display_name: 'Reroute', category: 'utils', description: 'Passes a link through.',
    input: { required: { '': ['*'] } }, output: ['*'], output_name: [''],
  },
  PrimitiveNode: {
    name: 'PrimitiveNode', display_name: 'Primitive', category: 'utils',
    description: 'A value that feeds widgets converted to inputs.',
    input: {}, output: ['*'], output_name: ['connect to widget input'],
  },
  Note: {
    name: 'Note', display_name: 'Note', category: 'utils', description: 'A text note.',
    input: { required: { text: ['STRING', { multiline: true }] } }, output: [],
  },
  MarkdownNote: {
    name: 'MarkdownNote', display_name: 'Markdown Note', category: 'utils', description: 'A markdown note.',
    input: { required: { text: ['STRING', { multiline: true }] } }, output: [],
  },
};

export function defFor(defs: ObjectInfo, type: string): NodeDef | undefined {
  return defs[type] ?? VIRTUAL_DEFS[type];
}

/** A node type the document defines itself: a subgraph, or a legacy group node. */
export interface ContainerDef {
  kind: 'subgraph' | 'group-node';
  name: string;
  /** Nodes directly inside. */
  nodeCount: number;
}

/** Where a document keeps its own node types: `definitions.subgraphs` and `extra.groupNodes`. */
export interface ContainerSource {
  definitions?: unknown;
  extra?: Record<string, unknown>;
}

function collectSubgraphs(definitions: unknown, out: Map<string, ContainerDef>, depth: number) {
  const list = (definitions as { subgraphs?: unknown } | null | undefined)?.subgraphs;
  if (!Array.isArray(list) || depth > 32) return;
  for (const sg of list) {
    if (!sg || typeof sg !== 'object') continue;
    const o = sg as Record<string, unknown>;
    if (typeof o.id !== 'string') continue;
    out.set(o.id, { kind: 'subgraph', name: String(o.name ?? 'Subgraph'), nodeCount: Array.isArray(o.nodes) ? o.nodes.length : 0 });
    // Older saves nest definitions inside definitions; all share one namespace.
    collectSubgraphs(o.definitions, out, depth + 1);
  }
}

const NONE = {};
const containerCache = new WeakMap<object, WeakMap<object, Map<string, ContainerDef>>>();
const asKey = (v: unknown): object => (v && typeof v === 'object' ? v : NONE);

/**
 * The node types a document defines, by type: subgraph instances use the definition's id, legacy
 * group nodes `workflow>Name` (older files `workflow/Name`). The server expands both when it
 * converts; the editor shows them as nodes with the sockets the file gives them. Memoised on the
 * identity of the two sources, so store selectors can call it.
 */
export function containerTypes(doc: ContainerSource): Map<string, ContainerDef> {
  const groups = doc.extra?.groupNodes;
  const byGroups = containerCache.get(asKey(doc.definitions)) ?? new WeakMap<object, Map<string, ContainerDef>>();
  containerCache.set(asKey(doc.definitions), byGroups);
  const hit = byGroups.get(asKey(groups));
  if (hit) return hit;
  const map = new Map<string, ContainerDef>();
  collectSubgraphs(doc.definitions, map, 0);
  if (groups && typeof groups === 'object' && !Array.isArray(groups)) {
    for (const [name, g] of Object.entries(groups as Record<string, unknown>)) {
      const nodes = (g as { nodes?: unknown } | null)?.nodes;
      const info: ContainerDef = { kind: 'group-node', name, nodeCount: Array.isArray(nodes) ? nodes.length : 0 };
      map.set(`workflow>${name}`, info);
      map.set(`workflow/${name}`, info);
    }
  }
  byGroups.set(asKey(groups), map);
  return map;
}

export function emptyWorkflow(): Workflow {
  return { last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {}, extra: {}, version: 0.4 };
}

export type Detected =
  | { kind: 'workflow'; workflow: Workflow }
  | { kind: 'api'; prompt: ApiPrompt }
  | { kind: 'unknown' };

/** What a dropped or opened JSON document is. */
export function detectJson(data: unknown): Detected {
  if (!data || typeof data !== 'object' || Array.isArray(data)) return { kind: 'unknown' };
  const o = data as Record<string, unknown>;
  if (Array.isArray(o.nodes)) return { kind: 'workflow', workflow: normalizeWorkflow(o) };
  if (o.workflow && typeof o.workflow === 'object' && Array.isArray((o.workflow as Record<string, unknown>).nodes)) {
    return { kind: 'workflow', workflow: normalizeWorkflow(o.workflow) };
  }
  const src = (o.prompt && typeof o.prompt === 'object' && !Array.isArray(o.prompt) ? o.prompt : o) as Record<string, unknown>;
  const values = Object.values(src);
  if (values.length && values.every((v) => v && typeof v === 'object' && typeof (v as Record<string, unknown>).class_type === 'string')) {
    return { kind: 'api', prompt: src as ApiPrompt };
  }
  return { kind: 'unknown' };
}

function pair(v: unknown, fallback: [number, number]): [number, number] {
  if (Array.isArray(v)) return [Number(v[0]) || 0, Number(v[1]) || 0];
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return [Number(o['0'] ?? o.x ?? o.width) || 0, Number(o['1'] ?? o.y ?? o.height) || 0];
  }
  return fallback;
}

/**
 * Normalises an editor workflow: v1 link objects become tuples, `{0:x,1:y}` positions become
 * pairs, missing arrays are filled in, and widget inputs of newer frontends that are not linked
 * (every widget has one there) are dropped so that only converted widgets remain sockets; link
 * target slots are renumbered to match.
 */
export function normalizeWorkflow(raw: unknown): Workflow {
  const src = JSON.parse(JSON.stringify(raw ?? {})) as Record<string, unknown>;
  const state = (src.state ?? {}) as Record<string, number>;
  const links: LinkTuple[] = [];
  for (const l of (src.links as unknown[]) ?? []) {
    if (Array.isArray(l)) {
      links.push([Number(l[0]), Number(l[1]), Number(l[2]), Number(l[3]), Number(l[4]), String(l[5] ?? '*')]);
    } else if (l && typeof l === 'object') {
      const o = l as Record<string, unknown>;
      links.push([Number(o.id), Number(o.origin_id), Number(o.origin_slot), Number(o.target_id), Number(o.target_slot), String(o.type ?? '*')]);
    }
  }
  const nodes: WfNode[] = [];
  for (const n of (src.nodes as WfNode[]) ?? []) {
    if (!n || typeof n !== 'object') continue;
    const node: WfNode = {
      ...n,
      id: Number(n.id),
      type: String(n.type ?? 'Unknown'),
      pos: pair(n.pos, [0, 0]),
      size: pair(n.size, [220, 80]),
      mode: Number(n.mode ?? 0),
      inputs: Array.isArray(n.inputs) ? n.inputs.map((i) => ({ ...i })) : [],
      outputs: Array.isArray(n.outputs) ? n.outputs.map((o) => ({ ...o })) : [],
      properties: n.properties && typeof n.properties === 'object' ? n.properties : {},
      flags: n.flags && typeof n.flags === 'object' ? n.flags : {},
    };
    if (n.widgets_values === undefined) delete node.widgets_values;
    nodes.push(node);
  }
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const containers = containerTypes({ definitions: src.definitions, extra: src.extra as Record<string, unknown> | undefined });
  // Drop unlinked widget inputs (newer frontends list every widget as an input). A subgraph
  // instance keeps its inputs as written: they are its promoted widgets, in definition order.
  for (const node of nodes) {
    if (containers.has(node.type)) continue;
    const inputs = node.inputs as WfInput[];
    const keep: number[] = [];
    inputs.forEach((inp, i) => {
      const linked = inp.link !== null && inp.link !== undefined && links.some((l) => l[0] === inp.link);
      if (!inp.widget || linked) keep.push(i);
    });
    if (keep.length !== inputs.length) {
      const remap = new Map(keep.map((old, idx) => [old, idx]));
      node.inputs = keep.map((i) => inputs[i]);
      for (const l of links) if (l[3] === node.id && remap.has(l[4])) l[4] = remap.get(l[4])!;
    }
  }
  // Keep only links whose ends exist; make input/output link fields agree with the list.
  const valid = links.filter((l) => {
    const from = byId.get(l[1]);
    const to = byId.get(l[3]);
    return from && to && (to.inputs as WfInput[])[l[4]] !== undefined;
  });
  for (const node of nodes) {
    for (const inp of node.inputs as WfInput[]) inp.link = null;
    for (const out of node.outputs as WfOutput[]) out.links = [];
  }
  const seenTarget = new Set<string>();
  const finalLinks: LinkTuple[] = [];
  for (const l of valid) {
    const key = `${l[3]}:${l[4]}`;
    if (seenTarget.has(key)) continue; // one link per input
    seenTarget.add(key);
    const from = byId.get(l[1])!;
    const to = byId.get(l[3])!;
    const outs = from.outputs as WfOutput[];
    while (outs.length <= l[2]) outs.push({ name: `out${outs.length}`, type: l[5], links: [] });
    (outs[l[2]].links ??= []).push(l[0]);
    (to.inputs as WfInput[])[l[4]].link = l[0];
    finalLinks.push(l);
  }
  const maxNode = nodes.reduce((m, n) => Math.max(m, n.id), 0);
  const maxLink = finalLinks.reduce((m, l) => Math.max(m, l[0]), 0);
  const groups = Array.isArray(src.groups)
    ? (src.groups as Record<string, unknown>[]).map((g) => ({
        ...g,
        title: String(g.title ?? 'Group'),
        bounding: (Array.isArray(g.bounding) ? g.bounding.map(Number) : [0, 0, 300, 200]) as [number, number, number, number],
      }))
    : [];
  const out: Workflow = {
    ...src,
    last_node_id: Math.max(Number(src.last_node_id ?? state.lastNodeId ?? 0) || 0, maxNode),
    last_link_id: Math.max(Number(src.last_link_id ?? state.lastLinkId ?? 0) || 0, maxLink),
    nodes,
    links: finalLinks,
    groups,
    config: (src.config as Record<string, unknown>) ?? {},
    extra: (src.extra as Record<string, unknown>) ?? {},
    version: 0.4,
  };
  delete out.state;
  return out;
}

/** Node ids in execution (topological) order; ties keep document order. */
export function executionOrder(wf: Workflow): number[] {
  const indeg = new Map<number, number>();
  const next = new Map<number, number[]>();
  for (const n of wf.nodes) {
    indeg.set(n.id, 0);
    next.set(n.id, []);
  }
  for (const l of wf.links) {
    if (!indeg.has(l[1]) || !indeg.has(l[3])) continue;
    indeg.set(l[3], indeg.get(l[3])! + 1);
    next.get(l[1])!.push(l[3]);
  }
  const ready = wf.nodes.filter((n) => indeg.get(n.id) === 0).map((n) => n.id);
  const order: number[] = [];
  while (ready.length) {
    const id = ready.shift()!;
    order.push(id);
    for (const t of next.get(id)!) {
      indeg.set(t, indeg.get(t)! - 1);
      if (indeg.get(t) === 0) ready.push(t);
    }
  }
  // Cycles: append what is left in document order.
  for (const n of wf.nodes) if (!order.includes(n.id)) order.push(n.id);
  return order;
}

/**
 * Node types used at the top of a workflow that neither the server, the editor nor the document
 * (subgraphs, group nodes) defines. Types missing inside subgraphs are the server's to report
 * when it converts the workflow.
 */
export function missingTypes(wf: Pick<Workflow, 'nodes'> & ContainerSource, defs: ObjectInfo): string[] {
  const containers = containerTypes(wf);
  const out = new Set<string>();
  for (const n of wf.nodes) if (!defFor(defs, n.type) && !containers.has(n.type)) out.add(n.type);
  return [...out].sort();
}

/** Fresh node in editor format for a definition. */
export function newNode(def: NodeDef, id: number, pos: [number, number], defaults: unknown[]): WfNode {
  const layout = nodeLayout(def);
  const inputs: WfInput[] = layout.sockets.map((s) => ({ name: s.name, type: s.type, link: null }));
  const outputs: WfOutput[] = (def.output ?? []).map((t, i) => ({
    name: def.output_name?.[i] ?? t,
    type: Array.isArray(t) ? 'COMBO' : String(t),
    links: [],
    slot_index: i,
  }));
  const rows = Math.max(inputs.length, outputs.length) + layout.widgets.length;
  const multiline = layout.widgets.some((w) => w.opts.multiline);
  const node: WfNode = {
    id,
    type: def.name,
    pos,
    size: [def.name === 'Reroute' ? 90 : 270, Math.max(26, rows * 24 + (multiline ? 90 : 0) + (def.output_node ? 180 : 0))],
    flags: {},
    order: 0,
    mode: 0,
    inputs,
    outputs,
    properties: { 'Node name for S&R': def.name },
    widgets_values: defaults,
  };
  return node;
}
