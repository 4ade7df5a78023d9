// The node palette: search and categories; click or drag a node onto the canvas.

import { useMemo, useState } from 'react';
import { useGraph } from '../store/graph';
import { categoryTree, displayName, searchNodes } from '../lib/search';
import type { CategoryTree } from '../lib/search';
import type { NodeDef } from '../lib/types';
import { VIRTUAL_DEFS } from '../lib/workflow';
import { getFlow } from '../actions';

export const NODE_DRAG_MIME = 'application/x-weft-node';

function addAtCenter(type: string) {
  const f = getFlow();
  const el = document.querySelector('.react-flow');
  const rect = el?.getBoundingClientRect();
  const pos = f && rect ? f.screenToFlowPosition({ x: rect.left + rect.width / 2 - 120, y: rect.top + rect.height / 2 - 60 }) : { x: 0, y: 0 };
  useGraph.getState().addNode(type, pos);
}

function Item({ def }: { def: NodeDef }) {
  return (
    <div
      className="pal-item"
      draggable
      data-node={def.name}
      title={`${def.name}${def.description ? ` — ${def.description}` : ''}`}
      onDragStart={(e) => {
        e.dataTransfer.setData(NODE_DRAG_MIME, def.name);
        e.dataTransfer.effectAllowed = 'copy';
      }}
      onClick={() => addAtCenter(def.name)}
    >
      {displayName(def)}
    </div>
  );
}

function Category({ tree, depth }: { tree: CategoryTree; depth: number }) {
  const [open, setOpen] = useState(depth === 0 && tree.name !== '_for_testing');
  return (
    <div className="pal-cat" data-category={tree.path}>
      <div className="pal-cat-title" onClick={() => setOpen(!open)}>
        {open ? '▾' : '▸'} {tree.name}
      </div>
      {open && (
        <div className="pal-cat-body">
          {tree.children.map((c) => (
            <Category key={c.path} tree={c} depth={depth + 1} />
          ))}
          {tree.nodes.map((d) => (
            <Item key={d.name} def={d} />
          ))}
        </div>
      )}
    </div>
  );
}

export function Palette() {
  const defs = useGraph((s) => s.defs);
  const [q, setQ] = useState('');
  const all = useMemo(() => ({ ...defs, ...VIRTUAL_DEFS }), [defs]);
  const tree = useMemo(() => categoryTree(all), [all]);
  const results = useMemo(() => (q.trim() ? searchNodes(all, q, 80) : []), [all, q]);
  return (
    <div className="palette">
      <input className="pal-search" placeholder="Search nodes…" value={q} onChange={(e) => setQ(e.target.value)} data-testid="palette-search" />
      <div className="pal-list">
        {q.trim()
          ? results.map((d) => (
              <div key={d.name} className="pal-result">
                <Item def={d} />
                <span className="pal-result-cat">{d.category}</span>
              </div>
            ))
          : tree.children.map((c) => <Category key={c.path} tree={c} depth={0} />)}
        {q.trim() && !results.length && <div className="wn-muted-text">No node matches “{q}”.</div>}
      </div>
    </div>
  );
}
