// Side panels: queue (pending, running, pause, cancel, move to front), history gallery, library.

import { useCallback, useEffect, useState } from 'react';
import { api, viewUrl } from '../lib/api';
import type { LibraryItem, LibraryVersion } from '../lib/api';
import { useExec } from '../store/exec';
import { useGraph } from '../store/graph';
import { toast } from '../store/ui';
import { openFromLibrary, restoreFromHistory, saveToLibrary } from '../actions';

function short(id: string) {
  return id.slice(0, 8);
}

async function run(what: string, f: () => Promise<unknown>) {
  try {
    await f();
  } catch (e) {
    toast('error', `${what}: ${(e as Error).message}`);
  }
  await useExec.getState().refreshQueue();
}

export function QueuePanel() {
  const queue = useExec((s) => s.queue);
  const paused = useExec((s) => s.paused);
  const runningNode = useExec((s) => s.runningNodeId);
  const progress = useExec((s) => (s.runningNodeId ? s.progress[s.runningNodeId] : undefined));
  const executed = useExec((s) => Object.keys(s.executed).length);
  const cached = useExec((s) => Object.keys(s.cached).length);
  useEffect(() => {
    void useExec.getState().refreshQueue();
  }, []);
  return (
    <div className="panel queue-panel" data-testid="queue-panel">
      <div className="panel-actions">
        <button onClick={() => run('Pause', paused ? api.resume : api.pause)} data-testid="queue-pause">
          {paused ? '▶ Resume' : 'Pause'}
        </button>
        <button onClick={() => run('Interrupt', api.interrupt)}>■ Interrupt</button>
        <button onClick={() => run('Clear', api.clearQueue)}>Clear pending</button>
      </div>
      {paused && <div className="panel-note">The queue is paused: pending prompts wait.</div>}
      <h4>Running</h4>
      {queue.running.length === 0 && <div className="wn-muted-text">Nothing is running.</div>}
      {queue.running.map((q) => {
        const total = Object.keys(q.prompt).length || 1;
        const nodePct = progress ? progress.value / progress.max : 0;
        const pct = Math.min(100, (100 * (Math.max(0, executed + cached - 1) + nodePct)) / total);
        return (
          <div key={q.prompt_id} className="queue-item running" data-prompt-id={q.prompt_id}>
            <div className="queue-item-head">
              <span>
                #{q.number} · {short(q.prompt_id)}
              </span>
              <button onClick={() => run('Cancel', () => api.cancel(q.prompt_id))} data-action="cancel">
                Cancel
              </button>
            </div>
            <div className="queue-progress">
              <div style={{ width: `${pct}%` }} />
            </div>
            <div className="wn-muted-text">
              {runningNode ? `node #${runningNode}` : 'starting'}
              {progress ? ` · step ${progress.value}/${progress.max}` : ''}
            </div>
          </div>
        );
      })}
      <h4>Pending ({queue.pending.length})</h4>
      {queue.pending.map((q, i) => (
        <div key={q.prompt_id} className="queue-item" data-prompt-id={q.prompt_id}>
          <div className="queue-item-head">
            <span>
              #{q.number} · {short(q.prompt_id)} · {Object.keys(q.prompt).length} nodes
            </span>
            <span>
              {i > 0 && (
                <button onClick={() => run('Move', () => api.front(q.prompt_id))} data-action="front" title="Move to front">
                  ⤒
                </button>
              )}
              <button onClick={() => run('Cancel', () => api.cancel(q.prompt_id))} data-action="cancel" title="Cancel">
                ✕
              </button>
            </span>
          </div>
        </div>
      ))}
    </div>
  );
}

export function HistoryPanel() {
  const history = useExec((s) => s.history);
  useEffect(() => {
    void useExec.getState().refreshHistory();
  }, []);
  return (
    <div className="panel history-panel" data-testid="history-panel">
      <div className="panel-actions">
        <button onClick={() => void useExec.getState().refreshHistory()}>Refresh</button>
        <button
          onClick={async () => {
            await api.clearHistory().catch(() => undefined);
            await useExec.getState().refreshHistory();
          }}
        >
          Clear
        </button>
      </div>
      {history.length === 0 && <div className="wn-muted-text">No finished prompts yet.</div>}
      <div className="gallery">
        {history.map((h) => {
          const images = Object.values(h.outputs ?? {}).flatMap((o) => o.images ?? []);
          const status = h.status?.status_str ?? '';
          return (
            <div key={h.prompt_id} className={`gallery-item status-${status}`} data-prompt-id={h.prompt_id} title="Click to restore this workflow">
              <div className="gallery-thumbs" onClick={() => void restoreFromHistory(h)}>
                {images.slice(0, 4).map((img, i) => (
                  <img key={i} src={viewUrl(img, true)} alt={img.filename} loading="lazy" />
                ))}
                {!images.length && <div className="gallery-empty">{status || 'no images'}</div>}
              </div>
              <div className="gallery-meta">
                <span>#{h.number}</span>
                <span className={`status-dot ${status}`}>{status}</span>
                <button
                  title="Queue again"
                  onClick={() =>
                    void api
                      .requeue(h.prompt_id)
                      .then(() => toast('info', 'Queued again'))
                      .catch((e) => toast('error', (e as Error).message))
                  }
                >
                  ↻
                </button>
              </div>
            </div>
          );
        })}
      </div>
    </div>
  );
}

function Versions({ id }: { id: string }) {
  const [versions, setVersions] = useState<LibraryVersion[] | null>(null);
  useEffect(() => {
    void api.libraryVersions(id).then(setVersions).catch(() => setVersions([]));
  }, [id]);
  if (!versions) return <div className="wn-muted-text">loading…</div>;
  return (
    <div className="lib-versions">
      {versions
        .slice()
        .reverse()
        .map((v) => (
          <div key={v.version} className="lib-version" data-version={v.version}>
            <span>
              v{v.version} · {new Date(v.saved_at).toLocaleString()}
            </span>
            <button
              onClick={async () => {
                try {
                  await api.libraryRestore(id, v.version);
                  await openFromLibrary(id);
                  window.dispatchEvent(new Event('weft-library-changed'));
                } catch (e) {
                  toast('error', (e as Error).message);
                }
              }}
            >
              restore
            </button>
          </div>
        ))}
    </div>
  );
}

export function LibraryPanel() {
  const [items, setItems] = useState<LibraryItem[]>([]);
  const [expanded, setExpanded] = useState<string | null>(null);
  const current = useGraph((s) => s.doc.libraryId);
  const reload = useCallback(() => {
    void api
      .library()
      .then((rows) => setItems(rows.sort((a, b) => b.updated_at - a.updated_at)))
      .catch((e) => toast('error', `Library: ${(e as Error).message}`));
  }, []);
  useEffect(() => {
    reload();
    window.addEventListener('weft-library-changed', reload);
    return () => window.removeEventListener('weft-library-changed', reload);
  }, [reload]);
  return (
    <div className="panel library-panel" data-testid="library-panel">
      <div className="panel-actions">
        <button onClick={() => void saveToLibrary(false)}>Save current</button>
        <button onClick={() => void saveToLibrary(true)}>Save as new</button>
        <button onClick={reload}>Refresh</button>
      </div>
      {items.length === 0 && <div className="wn-muted-text">The library is empty. Save a workflow with Ctrl+S.</div>}
      {items.map((w) => (
        <div key={w.id} className={`lib-item${w.id === current ? ' current' : ''}`} data-workflow-id={w.id} data-name={w.name}>
          <div className="lib-item-head">
            <button className="lib-open" onClick={() => void openFromLibrary(w.id)} title="Open">
              {w.name}
            </button>
            <span className="wn-muted-text">v{w.version}</span>
          </div>
          <div className="lib-item-actions">
            <button onClick={() => setExpanded(expanded === w.id ? null : w.id)}>versions</button>
            <button
              onClick={async () => {
                if (!confirm(`Delete ${w.name} from the library?`)) return;
                await api.libraryDelete(w.id).catch((e) => toast('error', (e as Error).message));
                if (useGraph.getState().doc.libraryId === w.id) useGraph.getState().setDoc({ libraryId: undefined, libraryVersion: undefined });
                reload();
              }}
            >
              delete
            </button>
          </div>
          {expanded === w.id && <Versions id={w.id} />}
        </div>
      ))}
    </div>
  );
}
