// The editor shell: boot (object_info, draft or default graph, live socket), canvas, panels,
// keyboard shortcuts, drag-and-drop import.

import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { Background, Controls, MiniMap, ReactFlow, ReactFlowProvider, useNodesInitialized, useReactFlow } from '@xyflow/react';
import type { Connection, Edge, FinalConnectionState, Node, Viewport } from '@xyflow/react';
import { useGraph, loadDraft, saveDraftNow } from './store/graph';
import type { AnyNode, CNode } from './store/graph';
import { useExec } from './store/exec';
import { useUi, toast } from './store/ui';
import { api, needsToken, tokenUrl } from './lib/api';
import { chooseDefaultGraph } from './lib/defaultGraph';
import { missingTypes } from './lib/workflow';
import { nodeTypes } from './components/NodeView';
import { TopBar } from './components/TopBar';
import { Palette, NODE_DRAG_MIME } from './components/Palette';
import { SearchBox } from './components/SearchBox';
import { ContextMenu } from './components/ContextMenu';
import { HistoryPanel, LibraryPanel, QueuePanel } from './components/Panels';
import { fitView, fitWhenMeasured, importFile, queue, refreshDefs, saveToLibrary, setFlowInstance } from './actions';

declare global {
  interface Window {
    weft?: Record<string, unknown>;
    __weftInteractiveAt?: number;
  }
}

function isTyping(t: EventTarget | null): boolean {
  const el = t as HTMLElement | null;
  if (!el) return false;
  return el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.isContentEditable;
}

function Toasts() {
  const toasts = useUi((s) => s.toasts);
  return (
    <div className="toasts">
      {toasts.map((t) => (
        <div key={t.id} className={`toast toast-${t.kind}`} data-kind={t.kind} onClick={() => useUi.getState().dismiss(t.id)}>
          {t.text}
        </div>
      ))}
    </div>
  );
}

function MissingBanner() {
  const nodes = useGraph((s) => s.nodes);
  const defs = useGraph((s) => s.defs);
  const definitions = useGraph((s) => s.meta.top.definitions);
  const extra = useGraph((s) => s.meta.extra);
  const missing = useMemo(() => {
    const types = new Set<string>();
    for (const n of nodes) if (n.type === 'comfy') types.add((n as CNode).data.type);
    const wfNodes = [...types].map((type, i) => ({ id: i, type, pos: [0, 0] as [number, number], size: [0, 0] as [number, number] }));
    return missingTypes({ nodes: wfNodes, definitions, extra }, defs);
  }, [nodes, defs, definitions, extra]);
  if (!missing.length) return null;
  return (
    <div className="missing-banner" data-testid="missing-banner">
      Missing node types (not on this server): {missing.join(', ')}
    </div>
  );
}

function ReadyMarker() {
  const initialized = useNodesInitialized();
  const pendingFit = useUi((s) => s.pendingFit);
  const done = useRef(false);
  useEffect(() => {
    if (pendingFit) {
      useUi.setState({ pendingFit: false });
      fitWhenMeasured(useGraph.getState().nodes.length);
    }
  }, [pendingFit]);
  useEffect(() => {
    if (initialized && !done.current) {
      done.current = true;
      requestAnimationFrame(() => {
        performance.mark('weft-interactive');
        window.__weftInteractiveAt = performance.now();
        document.documentElement.dataset.weftReady = '1';
      });
    }
  }, [initialized]);
  return null;
}

function Canvas({ initialViewport }: { initialViewport?: Viewport }) {
  const nodes = useGraph((s) => s.nodes);
  const edges = useGraph((s) => s.edges);
  const rf = useReactFlow();
  const wrapper = useRef<HTMLDivElement>(null);
  const mouse = useRef({ x: 0, y: 0 });
  const groupDrag = useRef<{ id: string; start: { x: number; y: number }; members: Map<string, { x: number; y: number }> } | null>(null);

  useEffect(() => {
    setFlowInstance(rf as never);
    return () => setFlowInstance(null);
  }, [rf]);

  useEffect(() => {
    if (!initialViewport) useUi.setState({ pendingFit: true });
  }, [initialViewport]);

  const onConnect = useCallback((c: Connection) => {
    useGraph.getState().connect(c);
  }, []);
  const isValidConnection = useCallback((c: Connection | Edge) => useGraph.getState().isValidConnection(c), []);

  const onConnectEnd = useCallback((event: MouseEvent | TouchEvent, state: FinalConnectionState) => {
    if (state.isValid || !state.fromNode || !state.fromHandle?.id) return;
    const target = event.target as Element | null;
    if (!target?.classList.contains('react-flow__pane')) return;
    const p = 'changedTouches' in event ? event.changedTouches[0] : (event as MouseEvent);
    useUi.getState().openSearch({
      screen: { x: p.clientX, y: p.clientY },
      flow: rf.screenToFlowPosition({ x: p.clientX, y: p.clientY }),
      from: { nodeId: state.fromNode.id, handle: state.fromHandle.id },
    });
  }, [rf]);

  const onNodeDragStart = useCallback((_: unknown, node: Node) => {
    if (node.type !== 'wgroup') return;
    const g = useGraph.getState();
    const w = node.measured?.width ?? node.width ?? 0;
    const h = node.measured?.height ?? node.height ?? 0;
    const members = new Map<string, { x: number; y: number }>();
    for (const n of g.nodes) {
      if (n.type !== 'comfy' || n.selected) continue;
      const { x, y } = n.position;
      if (x >= node.position.x && y >= node.position.y && x < node.position.x + w && y < node.position.y + h) members.set(n.id, { ...n.position });
    }
    groupDrag.current = { id: node.id, start: { ...node.position }, members };
  }, []);

  const onNodeDrag = useCallback((_: unknown, node: Node) => {
    const gd = groupDrag.current;
    if (!gd || gd.id !== node.id) return;
    const dx = node.position.x - gd.start.x;
    const dy = node.position.y - gd.start.y;
    useGraph.setState((s) => ({
      nodes: s.nodes.map((n) => {
        const p = gd.members.get(n.id);
        return p ? ({ ...n, position: { x: p.x + dx, y: p.y + dy } } as AnyNode) : n;
      }),
    }));
  }, []);

  const onNodeDragStop = useCallback((e: unknown, node: Node) => {
    if (groupDrag.current) {
      onNodeDrag(e, node);
      groupDrag.current = null;
      useGraph.getState().commit();
    }
  }, [onNodeDrag]);

  const onDoubleClick = (e: React.MouseEvent) => {
    const t = e.target as Element;
    if (!t.classList.contains('react-flow__pane')) return;
    useUi.getState().openSearch({ screen: { x: e.clientX, y: e.clientY }, flow: rf.screenToFlowPosition({ x: e.clientX, y: e.clientY }) });
  };

  const onDrop = (e: React.DragEvent) => {
    e.preventDefault();
    const type = e.dataTransfer.getData(NODE_DRAG_MIME);
    if (type) {
      useGraph.getState().addNode(type, rf.screenToFlowPosition({ x: e.clientX, y: e.clientY }));
      return;
    }
    const file = e.dataTransfer.files?.[0];
    if (file) void importFile(file);
  };

  return (
    <div
      className="canvas"
      ref={wrapper}
      onDoubleClick={onDoubleClick}
      onDragOver={(e) => {
        e.preventDefault();
        e.dataTransfer.dropEffect = 'copy';
      }}
      onDrop={onDrop}
      onMouseMove={(e) => (mouse.current = { x: e.clientX, y: e.clientY })}
      data-testid="canvas"
    >
      <ReactFlow<AnyNode, Edge>
        nodes={nodes}
        edges={edges}
        nodeTypes={nodeTypes}
        onNodesChange={useGraph.getState().onNodesChange}
        onEdgesChange={useGraph.getState().onEdgesChange}
        onConnect={onConnect}
        onConnectEnd={onConnectEnd}
        isValidConnection={isValidConnection}
        onNodeDragStart={onNodeDragStart}
        onNodeDrag={onNodeDrag}
        onNodeDragStop={onNodeDragStop}
        onNodeContextMenu={(e, node) => {
          e.preventDefault();
          useUi.getState().openMenu({ screen: { x: e.clientX, y: e.clientY }, flow: rf.screenToFlowPosition({ x: e.clientX, y: e.clientY }), nodeId: node.id });
        }}
        onPaneContextMenu={(e) => {
          e.preventDefault();
          useUi.getState().openMenu({ screen: { x: e.clientX, y: e.clientY }, flow: rf.screenToFlowPosition({ x: e.clientX, y: e.clientY }) });
        }}
        onPaneClick={() => useUi.setState({ menu: null })}
        onMoveEnd={(_, vp) => useGraph.getState().setViewport({ scale: vp.zoom, offset: [vp.x / vp.zoom, vp.y / vp.zoom] })}
        defaultViewport={initialViewport}
        zoomOnDoubleClick={false}
        deleteKeyCode={['Delete', 'Backspace']}
        multiSelectionKeyCode={['Control', 'Meta']}
        selectionKeyCode="Shift"
        connectionRadius={22}
        minZoom={0.05}
        maxZoom={4}
        elevateNodesOnSelect={false}
        proOptions={{ hideAttribution: true }}
        colorMode="dark"
      >
        <Background gap={20} size={1} />
        <MiniMap pannable zoomable nodeColor={(n) => (n.type === 'wgroup' ? 'rgba(63,120,158,0.35)' : '#667')} />
        <Controls />
        <ReadyMarker />
      </ReactFlow>
      <MissingBanner />
    </div>
  );
}

function useShortcuts() {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const mod = e.ctrlKey || e.metaKey;
      const typing = isTyping(e.target);
      const g = useGraph.getState();
      if (mod && e.key === 'Enter') {
        e.preventDefault();
        (document.activeElement as HTMLElement | null)?.blur?.();
        void queue(e.shiftKey);
        return;
      }
      if (mod && e.key.toLowerCase() === 's') {
        e.preventDefault();
        (document.activeElement as HTMLElement | null)?.blur?.();
        void saveToLibrary(false);
        return;
      }
      if (e.key === 'Escape') {
        useUi.setState({ search: null, menu: null });
        return;
      }
      if (typing) return;
      const k = e.key.toLowerCase();
      if (mod && k === 'z' && !e.shiftKey) {
        e.preventDefault();
        g.undo();
      } else if (mod && (k === 'y' || (k === 'z' && e.shiftKey))) {
        e.preventDefault();
        g.redo();
      } else if (mod && k === 'c') {
        const n = g.copy();
        if (n) toast('info', `Copied ${n} item${n > 1 ? 's' : ''}`, 1200);
      } else if (mod && k === 'x') {
        if (g.copy()) g.deleteSelected();
      } else if (mod && k === 'v') {
        e.preventDefault();
        const at = (window as unknown as { __weftMouseFlow?: { x: number; y: number } }).__weftMouseFlow;
        g.paste(at);
      } else if (mod && k === 'a') {
        e.preventDefault();
        g.selectAll();
      } else if (mod && k === 'm') {
        e.preventDefault();
        g.setMode(2);
      } else if (mod && k === 'b') {
        e.preventDefault();
        g.setMode(4);
      } else if (mod && k === 'g') {
        e.preventDefault();
        g.addGroup();
      } else if (mod && k === 'o') {
        e.preventDefault();
        useUi.setState({ panel: 'library' });
      } else if (!mod && k === '.') {
        fitView();
      } else if (!mod && k === 'r' && !e.altKey) {
        void refreshDefs();
      } else if (!mod && k === 'q') {
        useUi.getState().setPanel('queue');
      } else if (!mod && k === 'h') {
        useUi.getState().setPanel('history');
      }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, []);
}

function MouseTracker() {
  const rf = useReactFlow();
  useEffect(() => {
    const onMove = (e: MouseEvent) => {
      if (!(e.target as Element | null)?.closest?.('.react-flow')) return;
      (window as unknown as { __weftMouseFlow?: { x: number; y: number } }).__weftMouseFlow = rf.screenToFlowPosition({ x: e.clientX, y: e.clientY });
    };
    window.addEventListener('mousemove', onMove);
    return () => window.removeEventListener('mousemove', onMove);
  }, [rf]);
  return null;
}

function SidePanel() {
  const panel = useUi((s) => s.panel);
  if (!panel) return null;
  return (
    <aside className="side" data-panel={panel}>
      {panel === 'nodes' && <Palette />}
      {panel === 'queue' && <QueuePanel />}
      {panel === 'history' && <HistoryPanel />}
      {panel === 'library' && <LibraryPanel />}
    </aside>
  );
}

/** Shown when the server answers 401: asks for the token and reopens the page with `?token=`,
 * which makes the server set its cookie. */
function TokenForm() {
  const [token, setToken] = useState('');
  return (
    <form
      className="boot token-form"
      data-testid="token-form"
      onSubmit={(e) => {
        e.preventDefault();
        if (token.trim()) location.assign(tokenUrl(location.href, token));
      }}
    >
      <p>This Weft server asks for its access token (printed when it starts, and kept in its data folder's auth_token file).</p>
      <input type="password" aria-label="token" autoFocus autoComplete="current-password" value={token} onChange={(e) => setToken(e.target.value)} />
      <button type="submit">Open</button>
    </form>
  );
}

export function App() {
  const [phase, setPhase] = useState<{ state: 'loading' | 'ready' | 'error' | 'token'; message?: string; viewport?: Viewport }>({ state: 'loading' });
  useShortcuts();

  useEffect(() => {
    let cancelled = false;
    // Until the draft is loaded the graph is empty: saving it then would replace the draft.
    let booted = false;
    window.weft = { graph: useGraph, exec: useExec, ui: useUi };
    const boot = async () => {
      for (let attempt = 0; !cancelled; attempt++) {
        try {
          performance.mark('weft-boot');
          const defs = await api.objectInfo();
          performance.mark('weft-object-info');
          if (cancelled) return;
          const g = useGraph.getState();
          g.setDefs(defs);
          const draft = loadDraft();
          let viewport: Viewport | undefined;
          if (draft) {
            g.load(draft.workflow, draft.doc);
            const ds = draft.workflow.extra?.ds as { scale?: number; offset?: [number, number] } | undefined;
            if (ds?.scale && ds.offset) viewport = { zoom: ds.scale, x: ds.offset[0] * ds.scale, y: ds.offset[1] * ds.scale };
          } else {
            g.load(await chooseDefaultGraph(defs), { name: 'Unsaved workflow' });
          }
          performance.mark('weft-graph-loaded');
          useExec.getState().start();
          booted = true;
          setPhase({ state: 'ready', viewport });
          return;
        } catch (e) {
          // Retrying cannot help: the server wants its token (see TokenForm).
          if (needsToken(e)) return setPhase({ state: 'token' });
          setPhase({ state: 'error', message: `Cannot reach the Weft server (${(e as Error).message}); retrying…` });
          await new Promise((r) => setTimeout(r, Math.min(5000, 500 * (attempt + 1))));
        }
      }
    };
    void boot();
    const onUnload = () => booted && saveDraftNow(useGraph.getState());
    window.addEventListener('beforeunload', onUnload);
    return () => {
      cancelled = true;
      window.removeEventListener('beforeunload', onUnload);
    };
  }, []);

  return (
    <ReactFlowProvider>
      <div className="app" onMouseDown={() => useUi.getState().menu && useUi.setState({ menu: null })}>
        <TopBar />
        <div className="main">
          <SidePanel />
          {phase.state === 'ready' ? (
            <Canvas initialViewport={phase.viewport} />
          ) : phase.state === 'token' ? (
            <TokenForm />
          ) : (
            <div className="boot" data-testid="boot">
              {phase.state === 'loading' ? 'Loading node definitions…' : phase.message}
            </div>
          )}
        </div>
        <SearchBox />
        <ContextMenu />
        <Toasts />
        <MouseTracker />
      </div>
    </ReactFlowProvider>
  );
}
