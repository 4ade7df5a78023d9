// Right-click menus for nodes and the canvas.

import { useGraph } from '../store/graph';
import type { CNode } from '../store/graph';
import { useUi } from '../store/ui';
import { defFor } from '../lib/workflow';
import { nodeLayout } from '../lib/widgets';

const COLORS: [string, string | undefined, string | undefined][] = [
  ['default', undefined, undefined],
  ['red', '#322', '#533'],
  ['green', '#232', '#353'],
  ['blue', '#223', '#335'],
  ['purple', '#323', '#535'],
  ['yellow', '#432', '#653'],
];

export function ContextMenu() {
  const menu = useUi((s) => s.menu);
  if (!menu) return null;
  const close = () => useUi.getState().openMenu(null);
  const g = useGraph.getState();
  const items: { label: string; action: () => void; disabled?: boolean; sep?: boolean }[] = [];
  if (menu.nodeId) {
    const node = g.nodes.find((n) => n.id === menu.nodeId);
    if (node?.type === 'comfy') {
      const d = (node as CNode).data;
      const def = defFor(g.defs, d.type);
      const layout = def ? nodeLayout(def) : null;
      const converted = new Set(d.inputs.filter((i) => i.widget).map((i) => i.widget!.name));
      items.push({ label: d.mode === 2 ? 'Unmute (Ctrl+M)' : 'Mute (Ctrl+M)', action: () => g.setMode(2, [node.id]) });
      items.push({ label: d.mode === 4 ? 'Unbypass (Ctrl+B)' : 'Bypass (Ctrl+B)', action: () => g.setMode(4, [node.id]) });
      items.push({
        label: d.flags?.collapsed ? 'Expand' : 'Collapse',
        action: () => g.patchNode(node.id, { flags: { ...d.flags, collapsed: !d.flags?.collapsed } }),
      });
      for (const w of layout?.widgets ?? []) {
        if (!w.serialize) continue;
        if (converted.has(w.name)) items.push({ label: `Convert ${w.name} to widget`, action: () => g.convertToWidget(node.id, w.name), sep: true });
        else items.push({ label: `Convert ${w.name} to input`, action: () => g.convertToInput(node.id, w.name) });
      }
      for (const [name, color, bgcolor] of COLORS) {
        items.push({ label: `Colour: ${name}`, action: () => g.patchNode(node.id, { color, bgcolor }) });
      }
    }
    items.push({
      label: 'Copy (Ctrl+C)',
      action: () => {
        useGraph.setState((s) => ({ nodes: s.nodes.map((n) => ({ ...n, selected: n.id === menu.nodeId || !!n.selected })) }));
        g.copy();
      },
    });
    items.push({
      label: 'Delete (Del)',
      action: () => {
        useGraph.setState((s) => ({ nodes: s.nodes.map((n) => ({ ...n, selected: n.id === menu.nodeId })) }));
        useGraph.getState().deleteSelected();
      },
    });
  } else {
    items.push({ label: 'Add node… (double-click)', action: () => useUi.getState().openSearch({ screen: menu.screen, flow: menu.flow }) });
    items.push({ label: 'Add group (Ctrl+G)', action: () => g.addGroup(menu.flow) });
    items.push({ label: 'Paste (Ctrl+V)', action: () => g.paste(menu.flow) });
    items.push({ label: 'Select all (Ctrl+A)', action: () => g.selectAll() });
  }
  return (
    <div className="ctxmenu" style={{ left: menu.screen.x, top: menu.screen.y }} onMouseDown={(e) => e.stopPropagation()} data-testid="context-menu">
      {items.map((it, i) => (
        <div
          key={i}
          className={`ctxmenu-item${it.disabled ? ' disabled' : ''}`}
          onClick={() => {
            if (it.disabled) return;
            close();
            it.action();
          }}
        >
          {it.label}
        </div>
      ))}
    </div>
  );
}
