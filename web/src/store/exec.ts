// Live execution state from /ws, the queue, history, and the "queue this graph" action.

import { create } from 'zustand';
import { api, ApiError } from '../lib/api';
import type { HistoryEntry, QueueItem } from '../lib/api';
import { connectWs } from '../lib/ws';
import type { ImageRef, NodeErrors, ServerEvent } from '../lib/types';
import { defFor } from '../lib/workflow';
import { applyControl, controlledWidgets, nodeLayout } from '../lib/widgets';
import { useGraph } from './graph';
import type { ComfyNodeData, CNode } from './graph';
import { toast } from './ui';

export interface NodeError {
  message: string;
  details?: string;
  input?: string;
  type?: string;
  inputs?: Record<string, unknown>;
  source: 'validation' | 'execution';
}

export interface ExecState {
  clientId: string;
  connected: boolean;
  queueRemaining: number;
  runningPromptId: string | null;
  runningNodeId: string | null;
  progress: Record<string, { value: number; max: number }>;
  outputs: Record<string, ImageRef[]>;
  outputText: Record<string, string>;
  previews: Record<string, string>;
  cached: Record<string, true>;
  executed: Record<string, true>;
  nodeErrors: Record<string, NodeError[]>;
  myPrompts: Record<string, true>;
  lastResult: { promptId: string; status: 'success' | 'error' | 'interrupted' } | null;
  queue: { running: QueueItem[]; pending: QueueItem[] };
  paused: boolean;
  history: HistoryEntry[];
  start(): void;
  refreshQueue(): Promise<void>;
  refreshHistory(): Promise<void>;
  queuePrompt(opts?: { front?: boolean; count?: number }): Promise<string | null>;
  clearErrors(): void;
}

function newClientId(): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (c?.randomUUID) return c.randomUUID().replace(/-/g, '');
  return Math.random().toString(16).slice(2) + Date.now().toString(16);
}

function storedClientId(): string {
  try {
    const v = sessionStorage.getItem('weft.clientId');
    if (v) return v;
    const id = newClientId();
    sessionStorage.setItem('weft.clientId', id);
    return id;
  } catch {
    return newClientId();
  }
}

let refreshTimer: ReturnType<typeof setTimeout> | undefined;
let started = false;

/**
 * The canvas node an execution id belongs to: the server runs the inside of subgraph instances
 * and group nodes under ids like `12:5` (`12:5:3` nested), which the editor shows on node `12`.
 */
export function canvasNodeId(execId: string): string {
  const i = execId.indexOf(':');
  return i < 0 ? execId : execId.slice(0, i);
}

/** How an inner node is named in a message shown on its container. */
function innerLabel(execId: string, type: string | null | undefined): string {
  return execId.includes(':') ? `${type ?? 'node'} ${execId}: ` : '';
}

/** Makes the switch below exhaustive: a new `ServerEvent` variant fails to type-check here. */
function unhandled(_event: never): void {}

/** Applies one socket event to the store. */
export function handleServerEvent(e: ServerEvent): void {
  const set = useExec.setState;
  const get = useExec.getState;
  switch (e.type) {
    case 'status': {
      set({ queueRemaining: Number(e.data.status?.exec_info?.queue_remaining ?? 0) });
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => void get().refreshQueue(), 100);
      break;
    }
    case 'execution_start':
      for (const url of Object.values(get().previews)) URL.revokeObjectURL(url);
      set({
        runningPromptId: e.data.prompt_id,
        runningNodeId: null,
        progress: {},
        cached: {},
        executed: {},
        previews: {},
        // Validation errors of this prompt stay; errors of the last execution go.
        nodeErrors: Object.fromEntries(
          Object.entries(get().nodeErrors)
            .map(([id, errs]) => [id, errs.filter((x) => x.source === 'validation')] as const)
            .filter(([, errs]) => errs.length),
        ),
      });
      break;
    case 'execution_cached': {
      const cached: Record<string, true> = {};
      for (const n of e.data.nodes ?? []) cached[canvasNodeId(String(n))] = true;
      set({ cached });
      break;
    }
    case 'executing': {
      const { node: raw, display_node, prompt_id } = e.data;
      if (raw === null || raw === undefined) {
        set({ runningNodeId: null, runningPromptId: null, progress: {} });
        void get().refreshQueue();
        void get().refreshHistory();
        break;
      }
      const node = canvasNodeId(String(display_node ?? raw));
      set((s) => {
        // A container with a node that runs is no longer "all cached".
        const cached = s.cached[node] ? { ...s.cached } : s.cached;
        if (cached !== s.cached) delete cached[node];
        return { runningNodeId: node, runningPromptId: prompt_id ?? s.runningPromptId, executed: { ...s.executed, [node]: true }, cached };
      });
      break;
    }
    case 'progress': {
      const node = e.data.node !== undefined && e.data.node !== null ? canvasNodeId(String(e.data.node)) : get().runningNodeId;
      if (!node) break;
      const { value, max } = e.data;
      set((s) => ({ progress: { ...s.progress, [node]: { value: Number(value), max: Number(max) || 1 } } }));
      break;
    }
    case 'executed': {
      const node = canvasNodeId(String(e.data.display_node ?? e.data.node));
      const output = e.data.output ?? {};
      set((s) => {
        const next: Partial<ExecState> = { executed: { ...s.executed, [node]: true } };
        if (output.images) next.outputs = { ...s.outputs, [node]: output.images };
        if (output.text !== undefined) next.outputText = { ...s.outputText, [node]: [output.text].flat().join('\n') };
        if (s.previews[node]) {
          URL.revokeObjectURL(s.previews[node]);
          const previews = { ...s.previews };
          delete previews[node];
          next.previews = previews;
        }
        return next;
      });
      break;
    }
    case 'execution_success':
      set({ lastResult: { promptId: e.data.prompt_id, status: 'success' } });
      break;
    case 'execution_error': {
      const d = e.data;
      const execId = String(d.node_id ?? '');
      const node = canvasNodeId(execId);
      const inputs = d.current_inputs && !Array.isArray(d.current_inputs) ? d.current_inputs : undefined;
      const err: NodeError = {
        type: String(d.exception_type ?? 'error'),
        message: `${innerLabel(execId, d.node_type)}${d.exception_message ?? 'execution failed'}`,
        inputs,
        source: 'execution',
      };
      set((s) => ({
        nodeErrors: node ? { ...s.nodeErrors, [node]: [err] } : s.nodeErrors,
        lastResult: { promptId: d.prompt_id, status: 'error' },
        runningNodeId: null,
      }));
      toast('error', `Error in ${d.node_type ?? 'node'} #${execId}: ${d.exception_message ?? 'execution failed'}`);
      break;
    }
    case 'execution_interrupted':
      set({ lastResult: { promptId: e.data.prompt_id, status: 'interrupted' }, runningNodeId: null });
      toast('info', 'Execution interrupted');
      break;
    case 'feature_flags':
      // The server's answer to ours; nothing to change.
      break;
    case 'preview': {
      const id = e.data.nodeId ?? get().runningNodeId;
      if (!id) break;
      const node = canvasNodeId(id);
      const url = URL.createObjectURL(e.data.blob);
      set((s) => {
        if (s.previews[node]) URL.revokeObjectURL(s.previews[node]);
        return { previews: { ...s.previews, [node]: url } };
      });
      break;
    }
    default:
      unhandled(e);
  }
}

export const useExec = create<ExecState>()((set, get) => {
  return {
    clientId: storedClientId(),
    connected: false,
    queueRemaining: 0,
    runningPromptId: null,
    runningNodeId: null,
    progress: {},
    outputs: {},
    outputText: {},
    previews: {},
    cached: {},
    executed: {},
    nodeErrors: {},
    myPrompts: {},
    lastResult: null,
    queue: { running: [], pending: [] },
    paused: false,
    history: [],

    start() {
      if (started) return;
      started = true;
      connectWs(get().clientId, {
        onEvent: handleServerEvent,
        onOpen: () => {
          set({ connected: true });
          void get().refreshQueue();
        },
        onClose: () => set({ connected: false }),
      });
      void get().refreshHistory();
    },

    async refreshQueue() {
      try {
        const [queue, state] = await Promise.all([api.queue(), api.queueState().catch(() => null)]);
        set({ queue, paused: state?.paused ?? false });
      } catch {
        /* server away: the socket reconnects */
      }
    },

    async refreshHistory() {
      try {
        set({ history: await api.history(64) });
      } catch {
        /* ignore */
      }
    },

    clearErrors() {
      set({ nodeErrors: {} });
    },

    async queuePrompt(opts) {
      const count = Math.max(1, Math.min(100, opts?.count ?? 1));
      let last: string | null = null;
      for (let i = 0; i < count; i++) {
        // The editor workflow goes as it is: the server converts it to API format (subgraphs, group
        // nodes, bypass, primitives), refuses node types it lacks, and embeds it in the images.
        const workflow = useGraph.getState().toWorkflow();
        set({ nodeErrors: {} });
        try {
          const res = await api.queuePrompt({ prompt: workflow, client_id: get().clientId, front: opts?.front });
          last = res.prompt_id;
          set((s) => ({ myPrompts: { ...s.myPrompts, [res.prompt_id]: true } }));
          if (res.node_errors && Object.keys(res.node_errors).length) set({ nodeErrors: validationErrors(res.node_errors) });
          applyControlAfterGenerate();
        } catch (e) {
          if (e instanceof ApiError && e.body && typeof e.body === 'object') {
            const body = e.body as { error?: { message?: string; details?: string }; node_errors?: NodeErrors };
            set({ nodeErrors: validationErrors(body.node_errors ?? {}) });
            const message = body.error?.message ?? e.message;
            const details = body.error?.details;
            toast('error', details && !message.includes(details) ? `${message}: ${details}` : message);
          } else {
            toast('error', `Queue failed: ${(e as Error).message}`);
          }
          return null;
        }
      }
      void get().refreshQueue();
      return last;
    },
  };
});

/** The server's `node_errors` by canvas node; errors inside a container land on the container. */
export function validationErrors(ne: NodeErrors): Record<string, NodeError[]> {
  const out: Record<string, NodeError[]> = {};
  for (const [id, v] of Object.entries(ne ?? {})) {
    const inner = id.includes(':');
    const errors = (v.errors ?? []).map((e) => ({
      type: e.type,
      message: `${innerLabel(id, v.class_type)}${e.message}`,
      details: e.details,
      // An inner node's input is not a socket of the container.
      input: inner ? undefined : e.extra_info?.input_name,
      source: 'validation' as const,
    }));
    (out[canvasNodeId(id)] ??= []).push(...errors);
  }
  return out;
}

/** Seeds and other controlled widgets change after each queue, as in ComfyUI ("after"). */
export function applyControlAfterGenerate() {
  const g = useGraph.getState();
  for (const n of g.nodes) {
    if (n.type !== 'comfy') continue;
    const d = (n as CNode).data as ComfyNodeData;
    if (d.mode === 2 || d.mode === 4) continue;
    if (d.type === 'PrimitiveNode') {
      const v = Array.isArray(d.widgets_values) ? d.widgets_values : [];
      const type = d.outputs[0]?.type;
      if ((type === 'INT' || type === 'FLOAT') && v.length > 1) {
        const target = d.outputs[0]?.widget?.name;
        const spec = primitiveSpec(n.id, target);
        const mode = String(v[1]) as 'fixed';
        const next = applyControl({ kind: type, opts: spec ?? {} }, v[0], mode);
        if (next !== v[0]) g.setWidgets(n.id, [next, ...v.slice(1)]);
      }
      continue;
    }
    const controls = controlledWidgets(d, g.defs);
    if (!controls.length) continue;
    const def = defFor(g.defs, d.type)!;
    const widgets = nodeLayout(def).widgets;
    const values = [...(d.widgets_values as unknown[])];
    let changed = false;
    for (const [target, mode] of controls) {
      // A widget fed by a link is not changed.
      if (d.inputs.some((i) => i.widget?.name === widgets[target].name && g.edges.some((e) => e.target === n.id && e.targetHandle === `i${d.inputs.indexOf(i)}`))) continue;
      const next = applyControl(widgets[target], values[target], mode);
      if (next !== values[target]) {
        values[target] = next;
        changed = true;
      }
    }
    if (changed) g.setWidgets(n.id, values);
  }
  g.commit();
}

/** The spec of the widget a PrimitiveNode feeds (min/max/step). */
export function primitiveSpec(primitiveId: string, widgetName?: string): Record<string, unknown> | undefined {
  const g = useGraph.getState();
  const e = g.edges.find((x) => x.source === primitiveId);
  if (!e || !widgetName) return undefined;
  const t = g.nodes.find((n) => n.id === e.target) as CNode | undefined;
  const def = t && defFor(g.defs, t.data.type);
  return def ? nodeLayout(def).widgets.find((w) => w.name === widgetName)?.opts : undefined;
}
