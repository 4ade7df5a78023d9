// The toolbar: document name, file menu, undo/redo, queue button and panel toggles.

import { useEffect, useRef, useState } from 'react';
import { useGraph } from '../store/graph';
import { useExec } from '../store/exec';
import { useUi } from '../store/ui';
import type { Panel } from '../store/ui';
import {
  exportApiJson,
  exportEditorJson,
  fitView,
  importFile,
  loadDefault,
  newDocument,
  queue,
  refreshDefs,
  resetDefault,
  saveToLibrary,
  setCurrentAsDefault,
} from '../actions';

function MenuButton({ label, children }: { label: string; children: React.ReactNode }) {
  const [open, setOpen] = useState(false);
  return (
    <div className="menu" onMouseLeave={() => setOpen(false)}>
      <button className="menu-button" onClick={() => setOpen(!open)} data-testid={`menu-${label.toLowerCase()}`}>
        {label} ▾
      </button>
      {open && (
        <div className="menu-items" onClick={() => setOpen(false)}>
          {children}
        </div>
      )}
    </div>
  );
}

export function TopBar() {
  const doc = useGraph((s) => s.doc);
  const canUndo = useGraph((s) => s.undoStack.length > 1);
  const canRedo = useGraph((s) => s.redoStack.length > 0);
  const connected = useExec((s) => s.connected);
  const remaining = useExec((s) => s.queueRemaining);
  const running = useExec((s) => s.runningNodeId);
  const panel = useUi((s) => s.panel);
  const fileInput = useRef<HTMLInputElement>(null);
  const [count, setCount] = useState(1);
  useEffect(() => {
    document.title = `${doc.name || 'Untitled'} · Weft`;
  }, [doc.name]);

  const tab = (p: Panel, label: string) => (
    <button className={`tab${panel === p ? ' active' : ''}`} onClick={() => useUi.getState().setPanel(p)} data-testid={`tab-${p}`}>
      {label}
    </button>
  );

  return (
    <header className="topbar">
      <span className="brand">Weft</span>
      <MenuButton label="Workflow">
        <button onClick={() => void newDocument()}>New (empty)</button>
        <button onClick={() => void loadDefault()}>Load default graph</button>
        <button onClick={() => fileInput.current?.click()}>Open file… (JSON or PNG)</button>
        <button onClick={() => void saveToLibrary(false)}>Save to library (Ctrl+S)</button>
        <button onClick={() => void saveToLibrary(true)}>Save as new</button>
        <button onClick={exportEditorJson}>Export editor JSON</button>
        <button onClick={() => void exportApiJson()}>Export API JSON</button>
        <button onClick={setCurrentAsDefault}>Use this graph as the default</button>
        <button onClick={resetDefault}>Reset the default graph</button>
      </MenuButton>
      <input
        ref={fileInput}
        type="file"
        accept=".json,application/json,image/png"
        hidden
        data-testid="import-input"
        onChange={(e) => {
          const f = e.target.files?.[0];
          if (f) void importFile(f);
          e.target.value = '';
        }}
      />
      <input
        className="doc-name"
        value={doc.name}
        onChange={(e) => useGraph.getState().setDoc({ name: e.target.value })}
        data-testid="doc-name"
        title={doc.libraryId ? `Library workflow, version ${doc.libraryVersion}` : 'Not saved to the library yet'}
      />
      {doc.libraryId && <span className="doc-version">v{doc.libraryVersion}</span>}
      <button disabled={!canUndo} onClick={() => useGraph.getState().undo()} title="Undo (Ctrl+Z)" data-testid="undo">
        ↶
      </button>
      <button disabled={!canRedo} onClick={() => useGraph.getState().redo()} title="Redo (Ctrl+Y)" data-testid="redo">
        ↷
      </button>
      <button onClick={fitView} title="Fit view (.)">
        ⤢
      </button>
      <button onClick={() => void refreshDefs()} title="Refresh node definitions and model lists (R)">
        ⟳
      </button>
      <span className="spacer" />
      <span className={`conn ${connected ? 'ok' : 'down'}`} title={connected ? 'Connected to the server' : 'Disconnected: reconnecting'} data-testid="connection">
        ●
      </span>
      <span className="status-text" data-testid="status-text">
        {running ? `running #${running}` : remaining ? `${remaining} queued` : 'idle'}
      </span>
      {tab('nodes', 'Nodes')}
      {tab('queue', `Queue${remaining ? ` (${remaining})` : ''}`)}
      {tab('history', 'History')}
      {tab('library', 'Library')}
      <input
        className="batch"
        type="number"
        min={1}
        max={100}
        value={count}
        onChange={(e) => setCount(Math.max(1, Math.min(100, Number(e.target.value) || 1)))}
        title="Batch count"
      />
      <button className="queue-button" onClick={() => void queue(false, count)} title="Queue (Ctrl+Enter)" data-testid="queue-button">
        Queue
      </button>
    </header>
  );
}
