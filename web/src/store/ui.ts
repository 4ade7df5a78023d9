// UI state: toasts, side panel, search box, context menu.

import { create } from 'zustand';

export interface Toast {
  id: number;
  kind: 'info' | 'error' | 'success';
  text: string;
}

export type Panel = 'nodes' | 'queue' | 'history' | 'library' | null;

export interface SearchState {
  /** Set by `openSearch`: a new box per opening, so no state survives from the last one. */
  id?: number;
  screen: { x: number; y: number };
  flow: { x: number; y: number };
  from?: { nodeId: string; handle: string };
}

export interface MenuState {
  screen: { x: number; y: number };
  flow: { x: number; y: number };
  nodeId?: string;
  items?: { label: string; action: () => void; disabled?: boolean }[];
}

interface UiState {
  toasts: Toast[];
  panel: Panel;
  search: SearchState | null;
  menu: MenuState | null;
  /** Fit the view once the loaded nodes are measured. */
  pendingFit: boolean;
  setPanel(p: Panel): void;
  openSearch(s: SearchState | null): void;
  openMenu(m: MenuState | null): void;
  dismiss(id: number): void;
}

let seq = 0;
let searchSeq = 0;

export const useUi = create<UiState>()((set) => ({
  toasts: [],
  panel: 'nodes',
  search: null,
  menu: null,
  pendingFit: false,
  setPanel: (panel) => set((s) => ({ panel: s.panel === panel ? null : panel })),
  openSearch: (search) => set({ search: search && { ...search, id: ++searchSeq }, menu: null }),
  openMenu: (menu) => set({ menu, search: null }),
  dismiss: (id) => set((s) => ({ toasts: s.toasts.filter((t) => t.id !== id) })),
}));

export function toast(kind: Toast['kind'], text: string, ms = kind === 'error' ? 8000 : 3500) {
  const id = ++seq;
  useUi.setState((s) => ({ toasts: [...s.toasts.slice(-4), { id, kind, text }] }));
  setTimeout(() => useUi.getState().dismiss(id), ms);
}
