// A node on the canvas: title, typed sockets, widgets, live state (running, progress, previews,
// outputs, cached, errors), subgraph instances and group nodes (the server runs their inside),
// and placeholders for missing node types.

import { memo, useEffect, useMemo, useRef, useState } from 'react';
import { Handle, NodeResizer, Position, useUpdateNodeInternals } from '@xyflow/react';
import type { NodeProps } from '@xyflow/react';
import { useGraph, inHandle, outHandle, widgetHandle } from '../store/graph';
import type { CNode, ComfyNodeData, GNode } from '../store/graph';
import { useExec, primitiveSpec } from '../store/exec';
import { containerTypes, defFor, TITLE_HEIGHT } from '../lib/workflow';
import { defaultWidgetValue, nodeLayout } from '../lib/widgets';
import type { WidgetKind, WidgetSpec } from '../lib/widgets';
import { typeColor } from '../lib/sockets';
import { viewUrl } from '../lib/api';
import { ImagePreview, Widget } from './Widgets';

// The handles with a link, per target node; rebuilt once per edges array (not once per node).
let keyEdges: unknown = null;
let keyByNode = new Map<string, string>();
function connectedKey(edges: { target: string; targetHandle?: string | null }[], id: string): string {
  if (edges !== keyEdges) {
    const slots = new Map<string, string[]>();
    for (const e of edges) if (e.targetHandle) (slots.get(e.target) ?? slots.set(e.target, []).get(e.target)!).push(e.targetHandle);
    keyByNode = new Map([...slots].map(([k, v]) => [k, v.sort().join(',')]));
    keyEdges = edges;
  }
  return keyByNode.get(id) ?? '';
}

function Slot({ side, index, type, label, highlight, extra }: { side: 'in' | 'out'; index: number; type: string; label: string; highlight?: boolean; extra?: React.ReactNode }) {
  const color = typeColor(type);
  return (
    <div className={`wn-slot wn-slot-${side}${highlight ? ' wn-slot-error' : ''}`} data-slot={`${side}:${index}`} data-type={type} title={`${label}: ${type}`}>
      <Handle
        type={side === 'in' ? 'target' : 'source'}
        position={side === 'in' ? Position.Left : Position.Right}
        id={side === 'in' ? inHandle(index) : outHandle(index)}
        className="wn-handle"
        style={{ background: color, borderColor: color }}
      />
      <span className="wn-slot-label">{label}</span>
      {extra}
    </div>
  );
}

function Title({ id, data, fallback, extra }: { id: string; data: ComfyNodeData; fallback: string; extra?: React.ReactNode }) {
  const [editing, setEditing] = useState(false);
  const title = data.title ?? fallback;
  return (
    <div className="wn-title" style={data.color ? { background: data.color } : undefined} onDoubleClick={() => setEditing(true)}>
      {editing ? (
        <input
          className="nodrag wn-title-input"
          autoFocus
          defaultValue={title}
          onBlur={(e) => {
            setEditing(false);
            const v = e.target.value.trim();
            if (v && v !== title) useGraph.getState().patchNode(id, { title: v });
          }}
          onKeyDown={(e) => {
            if (e.key === 'Enter' || e.key === 'Escape') (e.target as HTMLInputElement).blur();
            e.stopPropagation();
          }}
        />
      ) : (
        <span className="wn-title-text">{title}</span>
      )}
      {extra}
    </div>
  );
}

function Outputs({ id }: { id: string }) {
  const images = useExec((s) => s.outputs[id]);
  const preview = useExec((s) => s.previews[id]);
  const text = useExec((s) => s.outputText[id]);
  if (!images?.length && !preview && !text) return null;
  return (
    <div className={`wn-outputs nodrag nowheel${preview || (images?.length ?? 0) === 1 ? ' single' : ''}`}>
      {preview ? (
        <img className="wn-preview" src={preview} alt="preview" data-preview="1" />
      ) : (
        images?.map((img, i) => (
          <a key={`${img.filename}-${i}`} href={viewUrl(img)} target="_blank" rel="noreferrer" title={img.filename}>
            <img src={viewUrl(img)} alt={img.filename} data-filename={img.filename} />
          </a>
        ))
      )}
      {text && <pre className="wn-text-output">{text}</pre>}
    </div>
  );
}

function Errors({ id }: { id: string }) {
  const errors = useExec((s) => s.nodeErrors[id]);
  if (!errors?.length) return null;
  return (
    <div className="wn-errors nodrag nowheel" role="alert">
      {errors.map((e, i) => (
        <div key={i} className="wn-error">
          <div className="wn-error-message">{e.message}</div>
          {e.details && <div className="wn-error-details">{e.details}</div>}
          {e.input && <div className="wn-error-input">input: {e.input}</div>}
          {e.inputs && Object.keys(e.inputs).length > 0 && (
            <div className="wn-error-input">
              inputs:{' '}
              {Object.entries(e.inputs)
                .map(([k, v]) => `${k}=${JSON.stringify(v).slice(0, 60)}`)
                .join(', ')}
            </div>
          )}
        </div>
      ))}
    </div>
  );
}

function ExecBadges({ id }: { id: string }) {
  const cached = useExec((s) => !!s.cached[id]);
  const running = useExec((s) => s.runningNodeId === id);
  const p = useExec((s) => s.progress[id]);
  return (
    <>
      {cached && <span className="wn-badge wn-badge-cached" title="Output reused from the cache">cached</span>}
      {running && p && <span className="wn-badge wn-badge-progress">{Math.round((100 * p.value) / p.max)}%</span>}
    </>
  );
}

function ProgressBar({ id }: { id: string }) {
  const running = useExec((s) => s.runningNodeId === id);
  const p = useExec((s) => s.progress[id]);
  if (!running || !p) return null;
  return (
    <div className="wn-progress" role="progressbar" aria-valuenow={p.value} aria-valuemax={p.max}>
      <div style={{ width: `${Math.min(100, (100 * p.value) / p.max)}%` }} />
    </div>
  );
}

function useNodeClasses(id: string, data: ComfyNodeData, selected: boolean, missing: boolean, container: boolean) {
  const running = useExec((s) => s.runningNodeId === id);
  const hasError = useExec((s) => !!s.nodeErrors[id]?.length);
  const cached = useExec((s) => !!s.cached[id]);
  const executed = useExec((s) => !!s.executed[id]);
  return [
    'wn',
    selected && 'wn-selected',
    running && 'wn-running',
    hasError && 'wn-has-error',
    cached && 'wn-cached',
    executed && !running && 'wn-done',
    data.mode === 2 && 'wn-muted',
    data.mode === 4 && 'wn-bypassed',
    missing && 'wn-missing',
    container && 'wn-container',
    data.flags?.collapsed && 'wn-collapsed',
  ]
    .filter(Boolean)
    .join(' ');
}

export const ComfyNodeView = memo(function ComfyNodeView({ id, data, selected }: NodeProps<CNode>) {
  const defs = useGraph((s) => s.defs);
  const def = defFor(defs, data.type);
  // A subgraph instance or group node: defined by the document, not by the server.
  const container = useGraph((s) => (def ? undefined : containerTypes({ definitions: s.meta.top.definitions, extra: s.meta.extra }).get(data.type)));
  const connected = useGraph((s) => connectedKey(s.edges, id));
  const errorInputs = useExec((s) => s.nodeErrors[id]?.map((e) => e.input).filter(Boolean).join(',') ?? '');
  const updateInternals = useUpdateNodeInternals();
  const classes = useNodeClasses(id, data, !!selected, !def && !container, !!container);
  const collapsed = !!data.flags?.collapsed;

  const layout = useMemo(() => (def ? nodeLayout(def) : null), [def]);
  const converted = useMemo(() => new Set(data.inputs.filter((i) => i.widget).map((i) => i.widget!.name)), [data.inputs]);
  const slotKey = `${data.inputs.length}:${data.outputs.length}:${[...converted].join(',')}:${collapsed}`;
  // React Flow measures a new node itself; re-measure its handles only when its sockets change
  // (a forced update per node on mount costs a layout each).
  const lastSlotKey = useRef(slotKey);
  useEffect(() => {
    if (lastSlotKey.current === slotKey) return;
    lastSlotKey.current = slotKey;
    updateInternals(id);
  }, [id, slotKey, updateInternals]);

  const values = Array.isArray(data.widgets_values) ? data.widgets_values : [];
  const setWidget = (i: number, v: unknown, commit: boolean) => useGraph.getState().setWidget(id, i, v, commit);
  const connectedSet = new Set(connected.split(',').filter(Boolean));

  if (data.type === 'Reroute') {
    const type = data.outputs[0]?.type ?? '*';
    return (
      <div className={`${classes} wn-reroute`} data-node-type="Reroute" style={{ borderColor: typeColor(type) }}>
        <Handle type="target" position={Position.Left} id={inHandle(0)} className="wn-handle" style={{ background: typeColor(type) }} />
        <span className="wn-title wn-reroute-dot" style={{ background: typeColor(type) }} />
        <Handle type="source" position={Position.Right} id={outHandle(0)} className="wn-handle" style={{ background: typeColor(type) }} />
      </div>
    );
  }

  const fallbackTitle = def?.display_name || data.type;
  // A subgraph instance's values are its promoted widgets: its widget inputs, in order.
  const promoted = container?.kind === 'subgraph' ? data.inputs.filter((i) => i.widget).map((i) => i.widget!.name) : [];
  const rows = Math.max(data.inputs.length, data.outputs.length);
  const widgets: { spec: WidgetSpec; index: number }[] = [];
  let primitive: { spec: WidgetSpec } | null = null;
  if (data.type === 'PrimitiveNode') {
    const out = data.outputs[0];
    const target = out?.widget?.name;
    if (out && target && out.type !== '*') {
      const opts = primitiveSpec(id, target) ?? {};
      const kind = (['INT', 'FLOAT', 'STRING', 'BOOLEAN', 'COMBO'].includes(out.type) ? out.type : 'STRING') as WidgetKind;
      const g = useGraph.getState();
      let options: string[] | undefined;
      if (kind === 'COMBO') {
        const e = g.edges.find((x) => x.source === id);
        const t = e && (g.nodes.find((n) => n.id === e.target) as CNode | undefined);
        const tdef = t && defFor(g.defs, t.data.type);
        options = tdef ? nodeLayout(tdef).widgets.find((w) => w.name === target)?.options : undefined;
      }
      primitive = { spec: { name: target, kind, opts, options, serialize: true, optional: false } };
      widgets.push({ spec: primitive.spec, index: 0 });
      if (kind === 'INT' || kind === 'FLOAT') {
        widgets.push({ spec: { name: 'control_after_generate', kind: 'CONTROL', opts: {}, serialize: false, target, optional: false }, index: 1 });
      }
    }
  } else if (layout) {
    layout.widgets.forEach((spec, index) => {
      const owner = spec.target ?? spec.name;
      if (spec.kind === 'UPLOAD' && converted.has(owner)) return;
      if (spec.serialize && converted.has(spec.name)) return;
      widgets.push({ spec, index });
    });
  }

  const imageWidget = data.type === 'LoadImage' && !converted.has('image') ? values[0] ?? (layout ? defaultWidgetValue(layout.widgets[0]) : '') : null;

  return (
    <div
      className={classes}
      data-node-type={data.type}
      style={{ minHeight: collapsed ? undefined : data.size[1] + TITLE_HEIGHT, background: data.bgcolor }}
    >
      <NodeResizer isVisible={!!selected && !collapsed} minWidth={80} minHeight={40} lineClassName="wn-resize-line" handleClassName="wn-resize-handle" />
      <Title id={id} data={data} fallback={def ? fallbackTitle : container ? container.name : data.type} extra={<ExecBadges id={id} />} />
      <ProgressBar id={id} />
      {container && !collapsed && (
        <div className="wn-container-note" data-container={container.kind}>
          {container.kind === 'subgraph' ? 'Subgraph' : 'Group node'} · {container.nodeCount} node{container.nodeCount === 1 ? '' : 's'} inside
        </div>
      )}
      {!def && !container && !collapsed && (
        <div className="wn-missing-note">
          Missing node type <b>{data.type}</b>: not installed on this server.
        </div>
      )}
      <div className={collapsed ? 'wn-collapsed-slots' : 'wn-slots'}>
        {Array.from({ length: rows }, (_, i) => {
          const inp = data.inputs[i];
          const out = data.outputs[i];
          return (
            <div className="wn-row" key={i}>
              {inp ? (
                <Slot
                  side="in"
                  index={i}
                  type={inp.type}
                  label={inp.label ?? inp.localized_name ?? inp.name}
                  highlight={errorInputs.split(',').includes(inp.name)}
                  extra={
                    inp.widget && !container && !connectedSet.has(inHandle(i)) && !collapsed ? (
                      <button
                        className="wn-unconvert nodrag"
                        title="Convert back to a widget"
                        onClick={() => useGraph.getState().convertToWidget(id, inp.name)}
                      >
                        ⤺
                      </button>
                    ) : null
                  }
                />
              ) : (
                <span />
              )}
              {out ? <Slot side="out" index={i} type={out.type} label={out.label ?? out.localized_name ?? out.name} /> : <span />}
            </div>
          );
        })}
      </div>
      {!collapsed && (
        <div className="wn-widgets">
          {widgets.map(({ spec, index }) => (
            <div className={`wn-widget-row${errorInputs.split(',').includes(spec.name) ? ' wn-slot-error' : ''}${spec.opts.multiline ? ' wn-grow' : ''}`} key={`${spec.name}-${index}`}>
              {spec.serialize && !primitive && data.type !== 'Note' && data.type !== 'MarkdownNote' && (
                <Handle
                  type="target"
                  position={Position.Left}
                  id={widgetHandle(spec.name)}
                  className="wn-handle wn-widget-handle"
                  style={{ background: typeColor(layout?.widgetTypes[spec.name] ?? spec.kind) }}
                />
              )}
              <Widget
                spec={spec}
                value={values[index] ?? defaultWidgetValue(spec)}
                onChange={(v, commit) => setWidget(index, v, commit)}
                onUpload={(name) => {
                  const target = layout?.widgets.findIndex((w) => w.name === spec.target) ?? -1;
                  if (target >= 0) setWidget(target, name, true);
                }}
              />
            </div>
          ))}
          {!def && Array.isArray(data.widgets_values) && data.widgets_values.length > 0 && (
            <div className="wn-missing-values">
              {data.widgets_values.map((v, i) => (
                <div key={i} className="wn-missing-value" data-value-index={i}>
                  {promoted[i] ? `${promoted[i]}: ` : ''}
                  {typeof v === 'string' ? v.slice(0, 80) : JSON.stringify(v)?.slice(0, 80)}
                </div>
              ))}
            </div>
          )}
          {data.type === 'PrimitiveNode' && !primitive && <div className="wn-muted-text">Connect to a widget input</div>}
          {imageWidget !== null && <ImagePreview value={imageWidget} />}
        </div>
      )}
      {!collapsed && <Errors id={id} />}
      {!collapsed && <Outputs id={id} />}
    </div>
  );
});

export const GroupView = memo(function GroupView({ id, data, selected }: NodeProps<GNode>) {
  const [editing, setEditing] = useState(false);
  const color = data.color ?? '#3f789e';
  return (
    <div className={`wg${selected ? ' wg-selected' : ''}`} style={{ borderColor: color, background: `${color}33` }} data-group-title={data.title}>
      <NodeResizer isVisible={!!selected} minWidth={80} minHeight={60} lineClassName="wn-resize-line" handleClassName="wn-resize-handle" />
      <div className="wg-title" style={{ background: `${color}aa`, fontSize: Math.min(28, data.font_size ?? 20) }} onDoubleClick={() => setEditing(true)}>
        {editing ? (
          <input
            className="nodrag"
            autoFocus
            defaultValue={data.title}
            onBlur={(e) => {
              setEditing(false);
              useGraph.getState().patchGroup(id, { title: e.target.value || 'Group' });
            }}
            onKeyDown={(e) => {
              if (e.key === 'Enter' || e.key === 'Escape') (e.target as HTMLInputElement).blur();
              e.stopPropagation();
            }}
          />
        ) : (
          data.title
        )}
      </div>
    </div>
  );
});

export const nodeTypes = { comfy: ComfyNodeView, wgroup: GroupView };
