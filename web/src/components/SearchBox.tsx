// The floating search box opened by double-clicking the canvas (or dropping a link on it).

import { useMemo, useState } from 'react';
import { useGraph } from '../store/graph';
import type { CNode } from '../store/graph';
import { useUi } from '../store/ui';
import type { SearchState } from '../store/ui';
import { displayName, searchNodes } from '../lib/search';
import { VIRTUAL_DEFS, defFor } from '../lib/workflow';
import { typesCompatible } from '../lib/sockets';
import { nodeLayout } from '../lib/widgets';

export function SearchBox() {
  const search = useUi((s) => s.search);
  // Keyed by the opening: each box starts empty and focused on mount, with no effect that
  // clears or focuses it a moment later (keys typed in between used to be lost or wiped).
  return search ? <Box key={search.id} search={search} /> : null;
}

function Box({ search }: { search: SearchState }) {
  const defs = useGraph((s) => s.defs);
  const [q, setQ] = useState('');
  const [sel, setSel] = useState(0);

  // When opened from a dragged link, only offer nodes with a compatible socket.
  const filterType = useMemo(() => {
    if (!search.from) return null;
    const g = useGraph.getState();
    const n = g.nodes.find((x) => x.id === search.from!.nodeId) as CNode | undefined;
    if (!n) return null;
    const h = search.from.handle;
    const type = h.startsWith('o') ? n.data.outputs[Number(h.slice(1))]?.type : n.data.inputs[Number(h.slice(1))]?.type;
    return type ? { type, wantInput: h.startsWith('o') } : null;
  }, [search]);

  const resultsFor = (query: string) => {
    const all = { ...defs, ...VIRTUAL_DEFS };
    // Filtered by a dragged link's type, every match counts (the catalog passes 200 nodes with
    // the aux preprocessors); the list scrolls.
    let r = searchNodes(all, query, filterType ? Infinity : 200);
    if (filterType) {
      r = r.filter((d) => {
        if (filterType.wantInput) {
          const l = defFor(all, d.name) ? nodeLayout(d) : null;
          return !!l?.sockets.some((s) => typesCompatible(filterType.type, s.type));
        }
        return (d.output ?? []).some((t) => typesCompatible(String(t), filterType.type));
      });
    }
    return r.slice(0, filterType ? 200 : 40);
  };
  const results = useMemo(() => resultsFor(q), [defs, q, filterType]);

  // Only this opening: a blur timer of a box already closed must not close the next one.
  const close = () => {
    if (useUi.getState().search?.id === search.id) useUi.getState().openSearch(null);
  };
  const choose = (name: string) => {
    useGraph.getState().addNode(name, search.flow, search.from);
    close();
  };

  return (
    <div className="searchbox" style={{ left: search.screen.x, top: search.screen.y }} onMouseDown={(e) => e.stopPropagation()} data-testid="searchbox">
      <input
        autoFocus
        value={q}
        placeholder={filterType ? `Search nodes accepting ${filterType.type}…` : 'Search nodes…'}
        onChange={(e) => {
          setQ(e.target.value);
          setSel(0);
        }}
        onKeyDown={(e) => {
          e.stopPropagation();
          if (e.key === 'Escape') close();
          else if (e.key === 'ArrowDown') setSel((s) => Math.min(results.length - 1, s + 1));
          else if (e.key === 'ArrowUp') setSel((s) => Math.max(0, s - 1));
          else if (e.key === 'Enter') {
            // What the box holds now, even if the list has not re-rendered since the last key.
            const value = e.currentTarget.value;
            const list = value === q ? results : resultsFor(value);
            const pick = list[value === q ? sel : 0];
            if (pick) choose(pick.name);
          }
        }}
        onBlur={() => setTimeout(close, 150)}
      />
      <div className="searchbox-list">
        {results.map((d, i) => (
          <div
            key={d.name}
            className={`searchbox-item${i === sel ? ' active' : ''}`}
            data-node={d.name}
            onMouseEnter={() => setSel(i)}
            onMouseDown={(e) => {
              e.preventDefault();
              choose(d.name);
            }}
          >
            <span>{displayName(d)}</span>
            <span className="searchbox-cat">{d.category}</span>
          </div>
        ))}
        {!results.length && <div className="wn-muted-text">No match</div>}
      </div>
    </div>
  );
}
