// Node search for the palette and the double-click search box.

import type { NodeDef, ObjectInfo } from './types';

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function subsequence(q: string, s: string): boolean {
  let i = 0;
  for (const c of s) if (c === q[i]) i++;
  return i === q.length;
}

export function displayName(def: NodeDef): string {
  return def.display_name || def.name;
}

export function searchNodes(defs: ObjectInfo, query: string, limit = 60): NodeDef[] {
  const all = Object.values(defs).filter((d) => !d.deprecated);
  const q = query.trim().toLowerCase();
  if (!q) return all.sort((a, b) => cmp(a.category ?? '', b.category ?? '') || cmp(displayName(a).toLowerCase(), displayName(b).toLowerCase())).slice(0, limit);
  const scored: [number, NodeDef][] = [];
  for (const d of all) {
    const dn = displayName(d).toLowerCase();
    const name = d.name.toLowerCase();
    const cat = (d.category ?? '').toLowerCase();
    let score = -1;
    if (dn === q || name === q) score = 0;
    else if (dn.startsWith(q) || name.startsWith(q)) score = 1;
    else if (dn.split(/[\s_()/-]+/).some((w) => w.startsWith(q))) score = 2;
    else if (dn.includes(q) || name.includes(q)) score = 3;
    else if (cat.includes(q)) score = 4;
    else if (subsequence(q.replace(/\s+/g, ''), dn) || subsequence(q.replace(/\s+/g, ''), name)) score = 5;
    if (score >= 0) scored.push([score, d]);
  }
  scored.sort((a, b) => a[0] - b[0] || displayName(a[1]).length - displayName(b[1]).length || cmp(displayName(a[1]), displayName(b[1])));
  return scored.slice(0, limit).map((x) => x[1]);
}

export interface CategoryTree {
  name: string;
  path: string;
  children: CategoryTree[];
  nodes: NodeDef[];
}

export function categoryTree(defs: ObjectInfo): CategoryTree {
  const root: CategoryTree = { name: '', path: '', children: [], nodes: [] };
  for (const d of Object.values(defs)) {
    if (d.deprecated) continue;
    let cur = root;
    for (const part of (d.category || 'uncategorized').split('/').filter(Boolean)) {
      let child = cur.children.find((c) => c.name === part);
      if (!child) {
        child = { name: part, path: cur.path ? `${cur.path}/${part}` : part, children: [], nodes: [] };
        cur.children.push(child);
      }
      cur = child;
    }
    cur.nodes.push(d);
  }
  const sort = (t: CategoryTree) => {
    t.children.sort((a, b) => cmp(a.name.toLowerCase(), b.name.toLowerCase()));
    t.nodes.sort((a, b) => cmp(displayName(a).toLowerCase(), displayName(b).toLowerCase()));
    t.children.forEach(sort);
  };
  sort(root);
  return root;
}
