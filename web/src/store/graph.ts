// The editor document: React Flow nodes/edges holding ComfyUI editor-format data, with undo/redo,
// clipboard, local draft and conversion to and from the v0.4 workflow JSON.

import { create } from 'zustand';
import { applyEdgeChanges, applyNodeChanges } from '@xyflow/react';
import type { Connection, Edge, EdgeChange, Node, NodeChange, XYPosition } from '@xyflow/react';
import type { LinkTuple, ObjectInfo, WfGroup, WfInput, WfNode, WfOutput, Workflow } from '../lib/types';
import { defFor, emptyWorkflow, executionOrder, newNode, normalizeWorkflow, TITLE_HEIGHT } from '../lib/workflow';
import { defaultWidgetValues, nodeLayout } from '../lib/widgets';
import { typeColor, typesCompatible } from '../lib/sockets';

export type ComfyNodeData = {
  type: string;
  title?: string;
  mode: number;
  inputs: WfInput[];
  outputs: WfOutput[];
  widgets_values?: unknown[] | Record<string, unknown>;
  properties: Record<string, unknown>;
  flags: Record<string, unknown>;
  color?: string;
  bgcolor?: string;
  size: [number, number];
  rest: Record<string, unknown>;
};
export type GroupData = { title: string; color?: string; font_size?: number; rest: Record<string, unknown> };
export type CNode = Node<ComfyNodeData, 'comfy'>;
export type GNode = Node<GroupData, 'wgroup'>;
export type AnyNode = CNode | GNode;

export interface DocInfo {
  name: string;
  libraryId?: string;
  libraryVersion?: number;
}

interface Meta {
  last_node_id: number;
  last_link_id: number;
  last_group_id: number;
  top: Record<string, unknown>;
  extra: Record<string, unknown>;
  config: Record<string, unknown>;
}

export interface GraphState {
  nodes: AnyNode[];
  edges: Edge[];
  meta: Meta;
  defs: ObjectInfo;
  doc: DocInfo;
  undoStack: string[];
  redoStack: string[];
  /** Bumped whenever a whole document is loaded (the canvas fits the view). */
  loadSeq: number;
  setDefs(defs: ObjectInfo): void;
  load(wf: Workflow, doc?: DocInfo, opts?: { keepHistory?: boolean }): void;
  toWorkflow(): Workflow;
  onNodesChange(changes: NodeChange<AnyNode>[]): void;
  onEdgesChange(changes: EdgeChange[]): void;
  isValidConnection(c: Connection | Edge): boolean;
  connect(c: Connection): boolean;
  addNode(type: string, pos: XYPosition, connectFrom?: { nodeId: string; handle: string }): string | null;
  setWidget(nodeId: string, index: number, value: unknown, commit?: boolean): void;
  setWidgets(nodeId: string, values: unknown[]): void;
  patchNode(nodeId: string, patch: Partial<ComfyNodeData>): void;
  patchGroup(id: string, patch: Partial<GroupData>): void;
  convertToInput(nodeId: string, widget: string): void;
  convertToWidget(nodeId: string, input: string): void;
  setMode(mode: number, ids?: string[]): void;
  deleteSelected(): void;
  selectAll(): void;
  copy(): number;
  paste(at?: XYPosition): number;
  addGroup(pos?: XYPosition): void;
  commit(): void;
  undo(): void;
  redo(): void;
  setDoc(doc: Partial<DocInfo>): void;
  setViewport(ds: { scale: number; offset: [number, number] }): void;
}

const DRAFT_KEY = 'weft.draft.v1';
const CLIPBOARD_KEY = 'weft.clipboard.v1';
const MAX_UNDO = 100;

export const inHandle = (slot: number) => `i${slot}`;
export const outHandle = (slot: number) => `o${slot}`;
export const widgetHandle = (name: string) => `w:${name}`;
export const slotOf = (handle: string | null | undefined) => (handle && /^[io]\d+$/.test(handle) ? Number(handle.slice(1)) : -1);

function edgeFor(l: LinkTuple, mode = 0): Edge {
  const color = typeColor(l[5]);
  return {
    id: String(l[0]),
    source: String(l[1]),
    sourceHandle: outHandle(l[2]),
    target: String(l[3]),
    targetHandle: inHandle(l[4]),
    data: { type: l[5] },
    style: { stroke: color, strokeWidth: 2.5, opacity: mode ? 0.45 : 1 },
  };
}

const NODE_KEYS = new Set(['id', 'type', 'pos', 'size', 'flags', 'order', 'mode', 'inputs', 'outputs', 'properties', 'widgets_values', 'title', 'color', 'bgcolor']);

export function nodeFromWf(n: WfNode): CNode {
  const rest: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(n)) if (!NODE_KEYS.has(k)) rest[k] = v;
  const data: ComfyNodeData = {
    type: n.type,
    mode: n.mode ?? 0,
    inputs: (n.inputs ?? []).map((i) => ({ ...i, link: null })),
    outputs: (n.outputs ?? []).map((o) => ({ ...o, links: [] })),
    properties: n.properties ?? {},
    flags: n.flags ?? {},
    size: [n.size[0], n.size[1]],
    rest,
  };
  if (n.widgets_values !== undefined) data.widgets_values = JSON.parse(JSON.stringify(n.widgets_values));
  if (n.title !== undefined) data.title = n.title;
  if (n.color !== undefined) data.color = n.color;
  if (n.bgcolor !== undefined) data.bgcolor = n.bgcolor;
  return {
    id: String(n.id),
    type: 'comfy',
    // ComfyUI's pos is the top-left of the body; the title bar sits above it.
    position: { x: n.pos[0], y: n.pos[1] - TITLE_HEIGHT },
    width: Math.max(60, n.size[0]),
    data,
    dragHandle: '.wn-title',
  };
}

function groupFromWf(g: WfGroup, id: number): GNode {
  const { title, bounding, color, font_size, ...rest } = g;
  return {
    id: `group:${id}`,
    type: 'wgroup',
    position: { x: bounding[0], y: bounding[1] },
    width: Math.max(80, bounding[2]),
    height: Math.max(60, bounding[3]),
    zIndex: -1,
    data: { title, color, font_size, rest },
    dragHandle: '.wg-title',
    selectable: true,
  };
}

export function flowFromWorkflow(wf: Workflow): { nodes: AnyNode[]; edges: Edge[]; meta: Meta } {
  const groups = wf.groups.map((g, i) => groupFromWf(g, Number(g.id ?? i + 1)));
  const nodes = wf.nodes.map(nodeFromWf);
  const modes = new Map(wf.nodes.map((n) => [n.id, n.mode ?? 0]));
  const edges = wf.links.map((l) => edgeFor(l, modes.get(l[1]) || modes.get(l[3])));
  const { last_node_id, last_link_id, nodes: _n, links: _l, groups: _g, extra, config, version: _v, ...top } = wf;
  return {
    nodes: [...groups, ...nodes],
    edges,
    meta: {
      last_node_id,
      last_link_id,
      last_group_id: groups.length ? Math.max(...wf.groups.map((g, i) => Number(g.id ?? i + 1))) : 0,
      top,
      extra: extra ?? {},
      config: config ?? {},
    },
  };
}

export function workflowFromFlow(nodes: AnyNode[], edges: Edge[], meta: Meta): Workflow {
  const links: LinkTuple[] = edges.map((e) => [
    Number(e.id),
    Number(e.source),
    slotOf(e.sourceHandle),
    Number(e.target),
    slotOf(e.targetHandle),
    String((e.data as { type?: string } | undefined)?.type ?? '*'),
  ]);
  const wfNodes: WfNode[] = [];
  const groups: WfGroup[] = [];
  for (const n of nodes) {
    if (n.type === 'wgroup') {
      const d = n.data as GroupData;
      const w = n.width ?? n.measured?.width ?? 300;
      const h = n.height ?? n.measured?.height ?? 200;
      const g: WfGroup = { id: Number(n.id.slice(6)), title: d.title, bounding: [n.position.x, n.position.y, w, h], ...d.rest };
      if (d.color) g.color = d.color;
      if (d.font_size) g.font_size = d.font_size;
      groups.push(g);
      continue;
    }
    const d = n.data as ComfyNodeData;
    const id = Number(n.id);
    const inputs = d.inputs.map((inp, slot) => ({
      ...inp,
      link: links.find((l) => l[3] === id && l[4] === slot)?.[0] ?? null,
    }));
    const outputs = d.outputs.map((out, slot) => ({
      ...out,
      links: links.filter((l) => l[1] === id && l[2] === slot).map((l) => l[0]),
      slot_index: slot,
    }));
    const width = n.width ?? d.size[0];
    const node: WfNode = {
      id,
      type: d.type,
      pos: [n.position.x, n.position.y + TITLE_HEIGHT],
      size: [width, d.size[1]],
      flags: d.flags,
      order: 0,
      mode: d.mode,
      inputs,
      outputs,
      properties: d.properties,
      ...d.rest,
    };
    if (d.widgets_values !== undefined) node.widgets_values = d.widgets_values;
    if (d.title !== undefined) node.title = d.title;
    if (d.color !== undefined) node.color = d.color;
    if (d.bgcolor !== undefined) node.bgcolor = d.bgcolor;
    wfNodes.push(node);
  }
  const wf: Workflow = {
    ...meta.top,
    last_node_id: Math.max(meta.last_node_id, ...wfNodes.map((n) => n.id), 0),
    last_link_id: Math.max(meta.last_link_id, ...links.map((l) => l[0]), 0),
    nodes: wfNodes,
    links,
    groups,
    config: meta.config,
    extra: meta.extra,
    version: 0.4,
  };
  const order = executionOrder(wf);
  const rank = new Map(order.map((id, i) => [id, i]));
  for (const n of wfNodes) n.order = rank.get(n.id) ?? 0;
  return JSON.parse(JSON.stringify(wf));
}

function snapshotOf(s: Pick<GraphState, 'nodes' | 'edges' | 'meta'>): string {
  const wf = workflowFromFlow(s.nodes, s.edges, s.meta);
  delete (wf.extra as Record<string, unknown>).ds;
  return JSON.stringify(wf);
}

let draftTimer: ReturnType<typeof setTimeout> | undefined;
function saveDraftSoon(get: () => GraphState) {
  if (typeof localStorage === 'undefined') return;
  clearTimeout(draftTimer);
  draftTimer = setTimeout(() => saveDraftNow(get()), 250);
}

export function saveDraftNow(s: GraphState) {
  if (typeof localStorage === 'undefined') return;
  try {
    localStorage.setItem(DRAFT_KEY, JSON.stringify({ workflow: s.toWorkflow(), doc: s.doc, saved: Date.now() }));
  } catch {
    /* quota: ignore */
  }
}

export function loadDraft(): { workflow: Workflow; doc: DocInfo } | null {
  if (typeof localStorage === 'undefined') return null;
  try {
    const raw = localStorage.getItem(DRAFT_KEY);
    if (!raw) return null;
    const d = JSON.parse(raw);
    if (!d?.workflow?.nodes) return null;
    return { workflow: normalizeWorkflow(d.workflow), doc: d.doc ?? { name: 'Unsaved workflow' } };
  } catch {
    return null;
  }
}

function handleType(s: GraphState, nodeId: string, handle: string | null | undefined, side: 'source' | 'target'): string | null {
  const n = s.nodes.find((x) => x.id === nodeId);
  if (!n || n.type !== 'comfy' || !handle) return null;
  const d = n.data as ComfyNodeData;
  if (side === 'source') return d.outputs[slotOf(handle)]?.type ?? null;
  if (handle.startsWith('w:')) {
    const def = defFor(s.defs, d.type);
    return def ? (nodeLayout(def).widgetTypes[handle.slice(2)] ?? null) : null;
  }
  return d.inputs[slotOf(handle)]?.type ?? null;
}

export const useGraph = create<GraphState>()((set, get) => {
  const replaceNode = (id: string, f: (d: ComfyNodeData) => ComfyNodeData) =>
    set((s) => ({
      nodes: s.nodes.map((n) => (n.id === id && n.type === 'comfy' ? ({ ...n, data: f(n.data as ComfyNodeData) } as CNode) : n)),
    }));

  return {
    nodes: [],
    edges: [],
    meta: { last_node_id: 0, last_link_id: 0, last_group_id: 0, top: {}, extra: {}, config: {} },
    defs: {},
    doc: { name: 'Unsaved workflow' },
    undoStack: [],
    redoStack: [],
    loadSeq: 0,

    setDefs: (defs) => set({ defs }),

    load(wf, doc, opts) {
      const flow = flowFromWorkflow(normalizeWorkflow(wf));
      set((s) => ({
        ...flow,
        doc: doc ?? s.doc,
        loadSeq: s.loadSeq + 1,
        undoStack: opts?.keepHistory ? [...s.undoStack] : [],
        redoStack: opts?.keepHistory ? s.redoStack : [],
      }));
      const snap = snapshotOf(get());
      set((s) => ({ undoStack: opts?.keepHistory ? [...s.undoStack, snap].slice(-MAX_UNDO) : [snap] }));
      saveDraftSoon(get);
    },

    toWorkflow: () => {
      const s = get();
      return workflowFromFlow(s.nodes, s.edges, s.meta);
    },

    onNodesChange(changes) {
      let commit = false;
      const s = get();
      const filtered: NodeChange<AnyNode>[] = [];
      const sizePatches = new Map<string, { width: number; height: number }>();
      for (const c of changes) {
        if (c.type === 'dimensions' && c.resizing !== undefined && c.dimensions) {
          // A user resize: keep the width on the node, the height in the document size.
          sizePatches.set(c.id, c.dimensions);
          if (!c.resizing) commit = true;
          continue;
        }
        if (c.type === 'position' && c.dragging === false) commit = true;
        if (c.type === 'remove') commit = true;
        filtered.push(c);
      }
      let nodes = applyNodeChanges(filtered, s.nodes);
      if (sizePatches.size) {
        nodes = nodes.map((n) => {
          const p = sizePatches.get(n.id);
          if (!p) return n;
          if (n.type === 'wgroup') return { ...n, width: p.width, height: p.height };
          const d = n.data as ComfyNodeData;
          return { ...n, width: p.width, data: { ...d, size: [p.width, Math.max(20, p.height - TITLE_HEIGHT)] } } as CNode;
        });
      }
      // Removing nodes also removes their links.
      const removed = new Set(changes.filter((c) => c.type === 'remove').map((c) => (c as { id: string }).id));
      const edges = removed.size ? s.edges.filter((e) => !removed.has(e.source) && !removed.has(e.target)) : s.edges;
      set({ nodes, edges });
      if (commit) get().commit();
    },

    onEdgesChange(changes) {
      set((s) => ({ edges: applyEdgeChanges(changes, s.edges) }));
      if (changes.some((c) => c.type === 'remove')) get().commit();
    },

    isValidConnection(c) {
      const s = get();
      if (!c.source || !c.target || c.source === c.target) return false;
      const from = handleType(s, c.source, c.sourceHandle, 'source');
      const to = handleType(s, c.target, c.targetHandle, 'target');
      if (from === null || to === null) return false;
      // A PrimitiveNode only feeds widget inputs.
      const src = s.nodes.find((n) => n.id === c.source);
      if (src?.type === 'comfy' && (src.data as ComfyNodeData).type === 'PrimitiveNode') {
        const tgt = s.nodes.find((n) => n.id === c.target) as CNode | undefined;
        const isWidget = c.targetHandle?.startsWith('w:') || !!tgt?.data.inputs[slotOf(c.targetHandle)]?.widget;
        if (!isWidget) return false;
        const pt = (src.data as ComfyNodeData).outputs[0]?.type ?? '*';
        return pt === '*' || pt === to;
      }
      return typesCompatible(from, to);
    },

    connect(c) {
      const s = get();
      if (!s.isValidConnection(c)) return false;
      let targetHandle = c.targetHandle!;
      let nodes = s.nodes;
      const target = nodes.find((n) => n.id === c.target) as CNode;
      if (targetHandle.startsWith('w:')) {
        const name = targetHandle.slice(2);
        const existing = target.data.inputs.findIndex((i) => i.widget?.name === name);
        let slot = existing;
        if (existing < 0) {
          const def = defFor(s.defs, target.data.type)!;
          const type = nodeLayout(def).widgetTypes[name];
          const inputs = [...target.data.inputs, { name, type, link: null, widget: { name } }];
          slot = inputs.length - 1;
          nodes = nodes.map((n) => (n.id === target.id ? ({ ...n, data: { ...target.data, inputs } } as CNode) : n));
        }
        targetHandle = inHandle(slot);
      }
      const source = nodes.find((n) => n.id === c.source) as CNode;
      const slot = slotOf(c.sourceHandle);
      let type = source.data.outputs[slot]?.type ?? '*';
      const tgt = nodes.find((n) => n.id === c.target) as CNode;
      const tIn = tgt.data.inputs[slotOf(targetHandle)];
      // Primitives and reroutes take the type of what they connect to.
      if (source.data.type === 'PrimitiveNode' && tIn?.widget) {
        type = tIn.type;
        const outputs = [{ ...source.data.outputs[0], name: tIn.type, type: tIn.type, widget: { name: tIn.widget.name } }];
        let widgets_values = source.data.widgets_values;
        if (!Array.isArray(widgets_values) || widgets_values.length === 0) {
          const def = defFor(s.defs, tgt.data.type);
          const idx = def ? nodeLayout(def).widgets.findIndex((w) => w.name === tIn.widget!.name) : -1;
          const cur = idx >= 0 && Array.isArray(tgt.data.widgets_values) ? tgt.data.widgets_values[idx] : undefined;
          const defaults = def ? defaultWidgetValues(def) : [];
          widgets_values = [cur ?? defaults[idx] ?? 0];
          if (tIn.type === 'INT' || tIn.type === 'FLOAT') widgets_values.push('fixed');
        }
        nodes = nodes.map((n) => (n.id === source.id ? ({ ...n, data: { ...source.data, outputs, widgets_values } } as CNode) : n));
      }
      if (type === '*' && tIn && tIn.type !== '*') type = tIn.type;
      if (tgt.data.type === 'Reroute' && type !== '*') {
        const outputs = tgt.data.outputs.map((o) => ({ ...o, type }));
        nodes = nodes.map((n) => (n.id === tgt.id ? ({ ...n, data: { ...tgt.data, outputs } } as CNode) : n));
      }
      const id = Math.max(s.meta.last_link_id, ...s.edges.map((e) => Number(e.id) || 0)) + 1;
      const edges = s.edges.filter((e) => !(e.target === c.target && e.targetHandle === targetHandle));
      edges.push(edgeFor([id, Number(c.source), slot, Number(c.target), slotOf(targetHandle), type]));
      set({ nodes, edges, meta: { ...s.meta, last_link_id: id } });
      get().commit();
      return true;
    },

    addNode(type, pos, connectFrom) {
      const s = get();
      const def = defFor(s.defs, type);
      if (!def) return null;
      const id = Math.max(s.meta.last_node_id, ...s.nodes.filter((n) => n.type === 'comfy').map((n) => Number(n.id))) + 1;
      const wf = newNode(def, id, [Math.round(pos.x), Math.round(pos.y) + TITLE_HEIGHT], defaultWidgetValues(def));
      if (type === 'PrimitiveNode') wf.widgets_values = [];
      if (type === 'Reroute') {
        wf.inputs = [{ name: '', type: '*', link: null }];
        wf.outputs = [{ name: '', type: '*', links: [] }];
        wf.size = [90, 26];
        delete wf.widgets_values;
      }
      const node = { ...nodeFromWf(wf), selected: true };
      set({
        nodes: [...s.nodes.map((n) => (n.selected ? { ...n, selected: false } : n)), node],
        meta: { ...s.meta, last_node_id: id },
      });
      if (connectFrom) {
        // Link the new node to the socket the search was opened from (first compatible slot).
        const st = get();
        const srcType = handleType(st, connectFrom.nodeId, connectFrom.handle, connectFrom.handle.startsWith('o') ? 'source' : 'target');
        if (srcType) {
          if (connectFrom.handle.startsWith('o')) {
            const slot = wf.inputs!.findIndex((i) => typesCompatible(srcType, i.type));
            if (slot >= 0) st.connect({ source: connectFrom.nodeId, sourceHandle: connectFrom.handle, target: String(id), targetHandle: inHandle(slot) });
          } else {
            const slot = wf.outputs!.findIndex((o) => typesCompatible(o.type, srcType));
            if (slot >= 0) st.connect({ source: String(id), sourceHandle: outHandle(slot), target: connectFrom.nodeId, targetHandle: connectFrom.handle });
          }
        }
      }
      get().commit();
      return String(id);
    },

    setWidget(nodeId, index, value, commit = true) {
      replaceNode(nodeId, (d) => {
        const values = Array.isArray(d.widgets_values) ? [...d.widgets_values] : [];
        const def = defFor(get().defs, d.type);
        if (def && values.length < nodeLayout(def).widgets.length) {
          const defaults = defaultWidgetValues(def);
          for (let i = values.length; i < defaults.length; i++) values[i] = defaults[i];
        }
        values[index] = value;
        return { ...d, widgets_values: values };
      });
      if (commit) get().commit();
    },

    setWidgets(nodeId, values) {
      replaceNode(nodeId, (d) => ({ ...d, widgets_values: values }));
    },

    patchNode(nodeId, patch) {
      replaceNode(nodeId, (d) => ({ ...d, ...patch }));
      get().commit();
    },

    patchGroup(id, patch) {
      set((s) => ({ nodes: s.nodes.map((n) => (n.id === id && n.type === 'wgroup' ? ({ ...n, data: { ...n.data, ...patch } } as GNode) : n)) }));
      get().commit();
    },

    convertToInput(nodeId, widget) {
      const s = get();
      const node = s.nodes.find((n) => n.id === nodeId) as CNode | undefined;
      if (!node) return;
      const def = defFor(s.defs, node.data.type);
      const type = def ? nodeLayout(def).widgetTypes[widget] : undefined;
      if (!type || node.data.inputs.some((i) => i.widget?.name === widget)) return;
      replaceNode(nodeId, (d) => ({ ...d, inputs: [...d.inputs, { name: widget, type, link: null, widget: { name: widget } }] }));
      get().commit();
    },

    convertToWidget(nodeId, inputName) {
      const s = get();
      const node = s.nodes.find((n) => n.id === nodeId) as CNode | undefined;
      if (!node) return;
      const slot = node.data.inputs.findIndex((i) => i.name === inputName && i.widget);
      if (slot < 0) return;
      // Remove the input and its link; later inputs move up one slot.
      const edges = s.edges
        .filter((e) => !(e.target === nodeId && slotOf(e.targetHandle) === slot))
        .map((e) => {
          if (e.target !== nodeId) return e;
          const t = slotOf(e.targetHandle);
          return t > slot ? { ...e, targetHandle: inHandle(t - 1) } : e;
        });
      set({ edges });
      replaceNode(nodeId, (d) => ({ ...d, inputs: d.inputs.filter((_, i) => i !== slot) }));
      get().commit();
    },

    setMode(mode, ids) {
      const s = get();
      const targets = new Set(ids ?? s.nodes.filter((n) => n.selected && n.type === 'comfy').map((n) => n.id));
      if (!targets.size) return;
      const allSame = [...targets].every((id) => (s.nodes.find((n) => n.id === id)?.data as ComfyNodeData | undefined)?.mode === mode);
      const next = allSame ? 0 : mode;
      set({
        nodes: s.nodes.map((n) => (targets.has(n.id) && n.type === 'comfy' ? ({ ...n, data: { ...n.data, mode: next } } as CNode) : n)),
        edges: s.edges.map((e) => (targets.has(e.source) || targets.has(e.target) ? { ...e, style: { ...e.style, opacity: next ? 0.45 : 1 } } : e)),
      });
      get().commit();
    },

    deleteSelected() {
      const s = get();
      const ids = new Set(s.nodes.filter((n) => n.selected).map((n) => n.id));
      set({
        nodes: s.nodes.filter((n) => !ids.has(n.id)),
        edges: s.edges.filter((e) => !e.selected && !ids.has(e.source) && !ids.has(e.target)),
      });
      get().commit();
    },

    selectAll() {
      set((s) => ({ nodes: s.nodes.map((n) => (n.type === 'comfy' ? { ...n, selected: true } : n)) }));
    },

    copy() {
      const s = get();
      const wf = s.toWorkflow();
      const selected = new Set(s.nodes.filter((n) => n.selected).map((n) => n.id));
      const nodes = wf.nodes.filter((n) => selected.has(String(n.id)));
      const groups = s.nodes
        .filter((n) => n.type === 'wgroup' && n.selected)
        .map((g) => wf.groups.find((x) => `group:${x.id}` === g.id)!)
        .filter(Boolean);
      if (!nodes.length && !groups.length) return 0;
      const ids = new Set(nodes.map((n) => n.id));
      const links = wf.links.filter((l) => ids.has(l[1]) && ids.has(l[3]));
      const clip = JSON.stringify({ weftClipboard: 1, nodes, links, groups });
      try {
        localStorage.setItem(CLIPBOARD_KEY, clip);
      } catch {
        /* ignore */
      }
      try {
        void navigator.clipboard?.writeText(clip).catch(() => {});
      } catch {
        /* ignore */
      }
      return nodes.length + groups.length;
    },

    paste(at) {
      let clip: { nodes: WfNode[]; links: LinkTuple[]; groups: WfGroup[] } | null = null;
      try {
        clip = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) ?? 'null');
      } catch {
        clip = null;
      }
      if (!clip || (!clip.nodes?.length && !clip.groups?.length)) return 0;
      const s = get();
      const xs = [...clip.nodes.map((n) => n.pos[0]), ...clip.groups.map((g) => g.bounding[0])];
      const ys = [...clip.nodes.map((n) => n.pos[1] - TITLE_HEIGHT), ...clip.groups.map((g) => g.bounding[1])];
      const minX = Math.min(...xs);
      const minY = Math.min(...ys);
      const dx = at ? at.x - minX : 40;
      const dy = at ? at.y - minY : 40;
      let nextNode = Math.max(s.meta.last_node_id, ...s.nodes.filter((n) => n.type === 'comfy').map((n) => Number(n.id)));
      let nextLink = Math.max(s.meta.last_link_id, ...s.edges.map((e) => Number(e.id) || 0));
      let nextGroup = s.meta.last_group_id;
      const idMap = new Map<number, number>();
      const newNodes: AnyNode[] = [];
      for (const n of clip.nodes) {
        const id = ++nextNode;
        idMap.set(n.id, id);
        const copy: WfNode = { ...JSON.parse(JSON.stringify(n)), id, pos: [n.pos[0] + dx, n.pos[1] + dy] };
        newNodes.push({ ...nodeFromWf(copy), selected: true });
      }
      const newEdges = clip.links.map((l) =>
        edgeFor([++nextLink, idMap.get(l[1])!, l[2], idMap.get(l[3])!, l[4], l[5]]),
      );
      const newGroups = clip.groups.map((g) => {
        const id = ++nextGroup;
        return { ...groupFromWf({ ...g, bounding: [g.bounding[0] + dx, g.bounding[1] + dy, g.bounding[2], g.bounding[3]] }, id), selected: true };
      });
      set({
        nodes: [...newGroups, ...s.nodes.map((n) => (n.selected ? { ...n, selected: false } : n)), ...newNodes],
        edges: [...s.edges.map((e) => (e.selected ? { ...e, selected: false } : e)), ...newEdges],
        meta: { ...s.meta, last_node_id: nextNode, last_link_id: nextLink, last_group_id: nextGroup },
      });
      get().commit();
      return newNodes.length + newGroups.length;
    },

    addGroup(pos) {
      const s = get();
      const sel = s.nodes.filter((n) => n.selected && n.type === 'comfy');
      let bounding: [number, number, number, number];
      if (sel.length) {
        const x0 = Math.min(...sel.map((n) => n.position.x)) - 20;
        const y0 = Math.min(...sel.map((n) => n.position.y)) - 60;
        const x1 = Math.max(...sel.map((n) => n.position.x + (n.measured?.width ?? n.width ?? 200))) + 20;
        const y1 = Math.max(...sel.map((n) => n.position.y + (n.measured?.height ?? 100))) + 20;
        bounding = [x0, y0, x1 - x0, y1 - y0];
      } else {
        bounding = [pos?.x ?? 0, pos?.y ?? 0, 400, 300];
      }
      const id = s.meta.last_group_id + 1;
      const g = groupFromWf({ title: 'Group', bounding, color: '#3f789e', font_size: 24 }, id);
      set({ nodes: [g, ...s.nodes], meta: { ...s.meta, last_group_id: id } });
      get().commit();
    },

    commit() {
      const s = get();
      const snap = snapshotOf(s);
      if (s.undoStack[s.undoStack.length - 1] !== snap) {
        set({ undoStack: [...s.undoStack, snap].slice(-MAX_UNDO), redoStack: [] });
      }
      saveDraftSoon(get);
    },

    undo() {
      const s = get();
      if (s.undoStack.length < 2) return;
      const current = s.undoStack[s.undoStack.length - 1];
      const prev = s.undoStack[s.undoStack.length - 2];
      const flow = flowFromWorkflow(normalizeWorkflow(JSON.parse(prev)));
      set({
        nodes: flow.nodes,
        edges: flow.edges,
        meta: { ...flow.meta, extra: { ...flow.meta.extra, ds: s.meta.extra.ds } },
        undoStack: s.undoStack.slice(0, -1),
        redoStack: [...s.redoStack, current],
      });
      saveDraftSoon(get);
    },

    redo() {
      const s = get();
      const next = s.redoStack[s.redoStack.length - 1];
      if (!next) return;
      const flow = flowFromWorkflow(normalizeWorkflow(JSON.parse(next)));
      set({
        nodes: flow.nodes,
        edges: flow.edges,
        meta: { ...flow.meta, extra: { ...flow.meta.extra, ds: s.meta.extra.ds } },
        undoStack: [...s.undoStack, next],
        redoStack: s.redoStack.slice(0, -1),
      });
      saveDraftSoon(get);
    },

    setDoc(doc) {
      set((s) => ({ doc: { ...s.doc, ...doc } }));
      saveDraftSoon(get);
    },

    setViewport(ds) {
      set((s) => ({ meta: { ...s.meta, extra: { ...s.meta.extra, ds } } }));
      saveDraftSoon(get);
    },
  };
});

export function emptyDoc(): Workflow {
  return emptyWorkflow();
}
