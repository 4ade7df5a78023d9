// HTTP client for Weft's ComfyUI-compatible API and its /api/weft extensions.

import type { ApiPrompt, ImageRef, NodeErrors, ObjectInfo, Workflow } from './types';

export class ApiError extends Error {
  constructor(
    message: string,
    public status: number,
    public body: unknown,
  ) {
    super(message);
  }
}

const base = (): string => {
  // Everything is relative to the page, so the editor works behind a path prefix too.
  const loc = typeof location !== 'undefined' ? location : undefined;
  if (!loc) return '';
  return loc.pathname.replace(/[^/]*$/, '').replace(/\/$/, '');
};

export function apiUrl(path: string): string {
  return `${base()}${path}`;
}

/** Whether `e` is the 401 of a server that asks for a token (none sent, or a wrong one). */
export function needsToken(e: unknown): boolean {
  return e instanceof ApiError && e.status === 401;
}

/** `href` with `?token=`: opening it makes the server keep the token in a cookie and send the
 * browser back to `href` without it. */
export function tokenUrl(href: string, token: string): string {
  const url = new URL(href);
  url.searchParams.set('token', token.trim());
  return url.toString();
}

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method, headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body instanceof Blob) {
    init.body = body;
    if (body.type) (init.headers as Record<string, string>)['Content-Type'] = body.type;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)['Content-Type'] = 'application/json';
  }
  const res = await fetch(apiUrl(path), init);
  const text = await res.text();
  let data: unknown = undefined;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    data = text;
  }
  if (!res.ok) {
    const err = data as { error?: { message?: string } | string; message?: string } | undefined;
    const msg =
      (typeof err?.error === 'object' ? err.error?.message : typeof err?.error === 'string' ? err.error : undefined) ??
      err?.message ??
      `${method} ${path}: HTTP ${res.status}`;
    throw new ApiError(msg, res.status, data);
  }
  return data as T;
}

export interface QueueItem {
  number: number;
  prompt_id: string;
  prompt: ApiPrompt;
  extra: Record<string, unknown>;
  outputs: string[];
}

function toItem(row: unknown[]): QueueItem {
  return {
    number: Number(row[0]),
    prompt_id: String(row[1]),
    prompt: (row[2] ?? {}) as ApiPrompt,
    extra: (row[3] ?? {}) as Record<string, unknown>,
    outputs: (row[4] ?? []) as string[],
  };
}

export interface HistoryEntry {
  prompt_id: string;
  number: number;
  prompt: ApiPrompt;
  extra: { extra_pnginfo?: { workflow?: Workflow }; client_id?: string };
  outputs: Record<string, { images?: ImageRef[]; [k: string]: unknown }>;
  status?: { status_str?: string; completed?: boolean; messages?: [string, Record<string, unknown>][] };
}

export interface LibraryItem {
  id: string;
  name: string;
  description: string;
  version: number;
  /** Milliseconds since the epoch. */
  created_at: number;
  updated_at: number;
  workflow?: Workflow;
}

export interface LibraryVersion {
  version: number;
  name: string;
  description: string;
  /** Milliseconds since the epoch. */
  saved_at: number;
}

export interface QueuePromptResult {
  prompt_id: string;
  number: number;
  node_errors: NodeErrors;
}

/** `POST /api/weft/convert` of an editor workflow (src/api/convert.rs). */
export interface EditorConversion {
  prompt: ApiPrompt;
  /** Node types the server lacks, inside subgraphs and group nodes too; kept in `prompt` as given. */
  missing_node_types: string[];
  /** Model-file combo values that are not among the server's files. */
  missing_models: { node_id: string; input: string; value: string }[];
  /** What was repaired or guessed, one sentence each. */
  warnings: string[];
}

/** `POST /api/weft/convert` of a PNG: its embedded `workflow` and `prompt` (either may be null). */
export interface PngDocuments {
  workflow: unknown;
  prompt: unknown;
}

export const api = {
  objectInfo: () => request<ObjectInfo>('GET', '/object_info'),
  /**
   * Queues a prompt. `prompt` may be an editor workflow: the server converts it (subgraphs, group
   * nodes, bypass, primitives) and embeds it as `extra_pnginfo.workflow` unless one is given.
   */
  queuePrompt: (body: { prompt: Workflow | ApiPrompt; client_id: string; extra_data?: Record<string, unknown>; front?: boolean }) =>
    request<QueuePromptResult>('POST', '/prompt', body),
  /** Editor workflow → API prompt, as the server would queue it. */
  toApi: (workflow: Workflow) => request<EditorConversion>('POST', '/api/weft/convert', workflow),
  /** API prompt → editor workflow, laid out in columns. */
  toEditor: (prompt: ApiPrompt) => request<Workflow>('POST', '/api/weft/convert?to=editor', prompt),
  /** The workflow and prompt a PNG carries (the prompt converted from the workflow when only that is there). */
  pngDocuments: (png: Uint8Array) =>
    request<PngDocuments>('POST', '/api/weft/convert', new Blob([png as BlobPart], { type: 'image/png' })),
  async queue(): Promise<{ running: QueueItem[]; pending: QueueItem[] }> {
    const q = await request<{ queue_running: unknown[][]; queue_pending: unknown[][] }>('GET', '/queue');
    return {
      running: (q.queue_running ?? []).map(toItem),
      pending: (q.queue_pending ?? []).map(toItem).sort((a, b) => a.number - b.number),
    };
  },
  queueState: () => request<{ paused: boolean; running: string | null; pending: string[] }>('GET', '/api/weft/queue/state'),
  pause: () => request('POST', '/api/weft/queue/pause'),
  resume: () => request('POST', '/api/weft/queue/resume'),
  cancel: (id: string) => request('POST', `/api/weft/queue/${encodeURIComponent(id)}/cancel`),
  front: (id: string) => request('POST', `/api/weft/queue/${encodeURIComponent(id)}/front`),
  requeue: (id: string) => request('POST', `/api/weft/queue/${encodeURIComponent(id)}/requeue`),
  clearQueue: () => request('POST', '/queue', { clear: true }),
  interrupt: () => request('POST', '/interrupt', {}),
  async history(max = 64): Promise<HistoryEntry[]> {
    const h = await request<Record<string, { prompt: unknown[]; outputs: HistoryEntry['outputs']; status: HistoryEntry['status'] }>>(
      'GET',
      `/history?max_items=${max}`,
    );
    return Object.entries(h ?? {})
      .map(([id, e]) => ({
        prompt_id: id,
        number: Number(e.prompt?.[0] ?? 0),
        prompt: (e.prompt?.[2] ?? {}) as ApiPrompt,
        extra: (e.prompt?.[3] ?? {}) as HistoryEntry['extra'],
        outputs: e.outputs ?? {},
        status: e.status,
      }))
      .reverse();
  },
  clearHistory: () => request('POST', '/history', { clear: true }),
  deleteHistory: (id: string) => request('POST', '/history', { delete: [id] }),
  async uploadImage(file: Blob, name: string, subfolder = ''): Promise<ImageRef & { name: string }> {
    const fd = new FormData();
    fd.append('image', file, name);
    fd.append('type', 'input');
    if (subfolder) fd.append('subfolder', subfolder);
    fd.append('overwrite', 'true');
    return request('POST', '/upload/image', fd);
  },
  library: () => request<LibraryItem[]>('GET', '/api/weft/workflows'),
  libraryGet: (id: string) => request<LibraryItem>('GET', `/api/weft/workflows/${encodeURIComponent(id)}`),
  libraryCreate: (name: string, workflow: Workflow, description = '') =>
    request<LibraryItem>('POST', '/api/weft/workflows', { name, description, workflow }),
  libraryUpdate: (id: string, name: string, workflow: Workflow, description?: string) =>
    request<LibraryItem>('PUT', `/api/weft/workflows/${encodeURIComponent(id)}`, { name, description, workflow }),
  libraryDelete: (id: string) => request('DELETE', `/api/weft/workflows/${encodeURIComponent(id)}`),
  libraryVersions: (id: string) => request<LibraryVersion[]>('GET', `/api/weft/workflows/${encodeURIComponent(id)}/versions`),
  libraryRestore: (id: string, version: number) =>
    request<LibraryItem>('POST', `/api/weft/workflows/${encodeURIComponent(id)}/versions/${version}/restore`),
};

export function viewUrl(img: ImageRef, preview = false): string {
  const p = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder ?? '', type: img.type ?? 'output' });
  if (preview) p.set('preview', 'webp;80');
  return apiUrl(`/view?${p.toString()}`);
}

/** `sub/x.png` -> {filename: 'x.png', subfolder: 'sub'}; `x.png [output]` -> type output. */
export function parseImageValue(value: string): ImageRef {
  let v = value.trim();
  let type = 'input';
  const m = /^(.*) \[(input|output|temp)\]$/.exec(v);
  if (m) {
    v = m[1];
    type = m[2];
  }
  const i = Math.max(v.lastIndexOf('/'), v.lastIndexOf('\\'));
  return { filename: i >= 0 ? v.slice(i + 1) : v, subfolder: i >= 0 ? v.slice(0, i) : '', type };
}
