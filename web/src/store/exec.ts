// Live execution state from /ws, the queue, history, and the "queue this graph" action.

import { create } from 'zustand';
import { api, ApiError } from '../lib/api';
import type { HistoryEntry, QueueItem } from '../lib/api';
import { connectWs } from '../lib/ws';
import type { PreviewFrame, WsEvent } from '../lib/ws';
import type { ImageRef, NodeErrors } from '../lib/types';
import { graphToPrompt, controlledWidgets } from '../lib/convert';
import { missingTypes, defFor } from '../lib/workflow';
import { applyControl, nodeLayout } from '../lib/widgets';
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

export const useExec = create<ExecState>()((set, get) => {
  const onEvent = (e: WsEvent) => {
    const d = e.data;
    const pid = d.prompt_id !== undefined ? String(d.prompt_id) : undefined;
    switch (e.type) {
      case 'status': {
        const remaining = Number((d.status as { exec_info?: { queue_remaining?: number } })?.exec_info?.queue_remaining ?? 0);
        set({ queueRemaining: remaining });
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(() => void get().refreshQueue(), 100);
        break;
      }
      case 'execution_start':
        for (const url of Object.values(get().previews)) URL.revokeObjectURL(url);
        set({
          runningPromptId: pid ?? null,
          runningNodeId: null,
          progress: {},
          cached: {},
          executed: {},
          previews: {},
          // Validation errors of this prompt stay; errors of the last execution go.
          nodeErrors: Object.fromEntries(
            Object.entries(get().nodeErrors)
              .map(([id, errs]) => [id, errs.filter((e) => e.source === 'validation')] as const)
              .filter(([, errs]) => errs.length),
          ),
        });
        break;
      case 'execution_cached': {
        const cached: Record<string, true> = {};
        for (const n of (d.nodes as unknown[]) ?? []) cached[String(n)] = true;
        set({ cached });
        break;
      }
      case 'executing': {
        const node = d.node === null || d.node === undefined ? null : String(d.display_node ?? d.node);
        if (node === null) {
          set({ runningNodeId: null, runningPromptId: null, progress: {} });
          void get().refreshQueue();
          void get().refreshHistory();
        } else {
          set((s) => ({ runningNodeId: node, runningPromptId: pid ?? s.runningPromptId, executed: { ...s.executed, [node]: true } }));
        }
        break;
      }
      case 'progress': {
        const node = String(d.node ?? get().runningNodeId ?? '');
        if (!node) break;
        set((s) => ({ progress: { ...s.progress, [node]: { value: Number(d.value), max: Number(d.max) || 1 } } }));
        break;
      }
      case 'executed': {
        const node = String(d.display_node ?? d.node);
        const output = (d.output ?? {}) as { images?: ImageRef[]; text?: unknown };
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
        set({ lastResult: { promptId: pid ?? '', status: 'success' } });
        break;
      case 'execution_error': {
        const node = String(d.node_id ?? '');
        const inputs = d.current_inputs && !Array.isArray(d.current_inputs) ? (d.current_inputs as Record<string, unknown>) : undefined;
        const err: NodeError = {
          type: String(d.exception_type ?? 'error'),
          message: String(d.exception_message ?? 'execution failed'),
          inputs,
          source: 'execution',
        };
        set((s) => ({
          nodeErrors: node ? { ...s.nodeErrors, [node]: [err] } : s.nodeErrors,
          lastResult: { promptId: pid ?? '', status: 'error' },
          runningNodeId: null,
        }));
        toast('error', `Error in ${String(d.node_type ?? 'node')} #${node}: ${err.message}`);
        break;
      }
      case 'execution_interrupted':
        set({ lastResult: { promptId: pid ?? '', status: 'interrupted' }, runningNodeId: null });
        toast('info', 'Execution interrupted');
        break;
    }
  };

  const onPreview = (p: PreviewFrame) => {
    const node = p.nodeId ?? get().runningNodeId;
    if (!node) return;
    const url = URL.createObjectURL(p.blob);
    set((s) => {
      if (s.previews[node]) URL.revokeObjectURL(s.previews[node]);
      return { previews: { ...s.previews, [node]: url } };
    });
  };

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
        onEvent,
        onPreview,
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
        const g = useGraph.getState();
        const wf = g.toWorkflow();
        const missing = missingTypes(wf, g.defs);
        if (missing.length) {
          toast('error', `Cannot queue: missing node types ${missing.join(', ')}`);
          return null;
        }
        const { output } = graphToPrompt(wf, g.defs);
        set({ nodeErrors: {} });
        try {
          const res = await api.queuePrompt({
            prompt: output,
            client_id: get().clientId,
            extra_data: { extra_pnginfo: { workflow: wf } },
            front: opts?.front,
          });
          last = res.prompt_id;
          set((s) => ({ myPrompts: { ...s.myPrompts, [res.prompt_id]: true } }));
          if (res.node_errors && Object.keys(res.node_errors).length) set({ nodeErrors: validationErrors(res.node_errors) });
          applyControlAfterGenerate();
        } catch (e) {
          if (e instanceof ApiError && e.body && typeof e.body === 'object') {
            const body = e.body as { error?: { message?: string; details?: string }; node_errors?: NodeErrors };
            set({ nodeErrors: validationErrors(body.node_errors ?? {}) });
            const detail = body.error?.details ? `: ${body.error.details}` : '';
            toast('error', `${body.error?.message ?? e.message}${detail}`);
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

export function validationErrors(ne: NodeErrors): Record<string, NodeError[]> {
  const out: Record<string, NodeError[]> = {};
  for (const [id, v] of Object.entries(ne ?? {})) {
    out[id] = (v.errors ?? []).map((e) => ({
      type: e.type,
      message: e.message,
      details: e.details,
      input: e.extra_info?.input_name,
      source: 'validation' as const,
    }));
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
    const wf = { id: Number(n.id), type: d.type, pos: [0, 0] as [number, number], size: d.size, widgets_values: d.widgets_values };
    const controls = controlledWidgets(wf, g.defs);
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
