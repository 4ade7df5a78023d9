// The /ws event stream: JSON events and binary preview frames, as one typed union
// (`ServerEvent`), reconnecting when dropped.

import { apiUrl } from './api';
import type { PreviewEvent, ServerEvent, ServerEventType } from './types';

export interface WsHandlers {
  onEvent(e: ServerEvent): void;
  onOpen?(): void;
  onClose?(): void;
}

/** The JSON events the editor understands; a `Record` so a new event type must be listed here. */
const JSON_EVENTS: Record<Exclude<ServerEventType, 'preview'>, true> = {
  status: true,
  execution_start: true,
  execution_cached: true,
  executing: true,
  progress: true,
  executed: true,
  execution_success: true,
  execution_error: true,
  execution_interrupted: true,
  feature_flags: true,
};

/** Parses a text frame; other servers' and extensions' event types give null. */
export function parseEvent(text: string): ServerEvent | null {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return null;
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return null;
  const { type, data } = raw as { type?: unknown; data?: unknown };
  if (typeof type !== 'string' || !Object.hasOwn(JSON_EVENTS, type)) return null;
  const body = data && typeof data === 'object' && !Array.isArray(data) ? data : {};
  return { type, data: body } as ServerEvent;
}

/** Parses a binary frame: type 1 (format + image) or type 4 (metadata JSON + image). */
export function parseBinaryFrame(buf: ArrayBuffer): PreviewEvent | null {
  if (buf.byteLength < 8) return null;
  const view = new DataView(buf);
  const type = view.getUint32(0);
  if (type === 1) {
    const format = view.getUint32(4);
    return { type: 'preview', data: { blob: new Blob([buf.slice(8)], { type: format === 2 ? 'image/png' : 'image/jpeg' }) } };
  }
  if (type === 4) {
    const len = view.getUint32(4);
    if (8 + len > buf.byteLength) return null;
    let meta: Record<string, unknown> = {};
    try {
      meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, len)));
    } catch {
      /* ignore */
    }
    return {
      type: 'preview',
      data: {
        nodeId: meta.node_id !== undefined ? String(meta.display_node_id ?? meta.node_id) : undefined,
        promptId: meta.prompt_id !== undefined ? String(meta.prompt_id) : undefined,
        blob: new Blob([buf.slice(8 + len)], { type: String(meta.image_type ?? 'image/jpeg') }),
      },
    };
  }
  return null;
}

export function connectWs(clientId: string, h: WsHandlers): () => void {
  let ws: WebSocket | null = null;
  let stopped = false;
  let delay = 500;
  const open = () => {
    if (stopped) return;
    const url = new URL(apiUrl(`/ws?clientId=${encodeURIComponent(clientId)}`), location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      delay = 500;
      ws?.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
      h.onOpen?.();
    };
    ws.onmessage = (m) => {
      const e = typeof m.data === 'string' ? parseEvent(m.data) : m.data instanceof ArrayBuffer ? parseBinaryFrame(m.data) : null;
      if (e) h.onEvent(e);
    };
    ws.onclose = () => {
      h.onClose?.();
      if (!stopped) setTimeout(open, (delay = Math.min(delay * 2, 8000)));
    };
  };
  open();
  return () => {
    stopped = true;
    ws?.close();
  };
}
