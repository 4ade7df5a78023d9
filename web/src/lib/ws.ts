// The /ws event stream: JSON events and binary preview frames, reconnecting when dropped.

import { apiUrl } from './api';

export type WsEvent = { type: string; data: Record<string, unknown> };
export type PreviewFrame = { nodeId?: string; promptId?: string; blob: Blob };

export interface WsHandlers {
  onEvent(e: WsEvent): void;
  onPreview(p: PreviewFrame): void;
  onOpen?(): void;
  onClose?(): void;
}

/** Parses a binary frame: type 1 (format + image) or type 4 (metadata JSON + image). */
export function parseBinaryFrame(buf: ArrayBuffer): PreviewFrame | null {
  if (buf.byteLength < 8) return null;
  const view = new DataView(buf);
  const type = view.getUint32(0);
  if (type === 1) {
    const format = view.getUint32(4);
    return { blob: new Blob([buf.slice(8)], { type: format === 2 ? 'image/png' : 'image/jpeg' }) };
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
      nodeId: meta.node_id !== undefined ? String(meta.display_node_id ?? meta.node_id) : undefined,
      promptId: meta.prompt_id !== undefined ? String(meta.prompt_id) : undefined,
      blob: new Blob([buf.slice(8 + len)], { type: String(meta.image_type ?? 'image/jpeg') }),
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
      if (typeof m.data === 'string') {
        try {
          const e = JSON.parse(m.data) as WsEvent;
          if (e && typeof e.type === 'string') h.onEvent({ type: e.type, data: e.data ?? {} });
        } catch {
          /* ignore */
        }
      } else if (m.data instanceof ArrayBuffer) {
        const p = parseBinaryFrame(m.data);
        if (p) h.onPreview(p);
      }
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
