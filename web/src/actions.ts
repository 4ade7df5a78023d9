// Document-level actions shared by the toolbar, panels and keyboard shortcuts.

import type { ReactFlowInstance } from '@xyflow/react';
import { api } from './lib/api';
import type { HistoryEntry } from './lib/api';
import { chooseDefaultGraph, DEFAULT_WORKFLOW_KEY } from './lib/defaultGraph';
import { download, openFile, promptToWorkflow } from './lib/files';
import type { Workflow } from './lib/types';
import { emptyWorkflow, missingTypes, normalizeWorkflow } from './lib/workflow';
import { useGraph } from './store/graph';
import type { DocInfo } from './store/graph';
import { useExec } from './store/exec';
import { toast, useUi } from './store/ui';

let flow: ReactFlowInstance | null = null;
export function setFlowInstance(f: ReactFlowInstance | null) {
  flow = f;
}
export function getFlow() {
  return flow;
}

export function fitView() {
  flow?.fitView({ padding: 0.12, duration: 0, maxZoom: 1.2 });
}

/** Fits the view once React Flow has the loaded nodes and has measured them. */
export function fitWhenMeasured(expected: number, tries = 120) {
  const f = flow;
  const ns = f?.getNodes() ?? [];
  const ready = !!f && ns.length === expected && ns.every((n) => n.measured?.width);
  if (!ready && tries > 0) {
    requestAnimationFrame(() => fitWhenMeasured(expected, tries - 1));
    return;
  }
  fitView();
}

/** Loads a document, reports missing node types, and fits the view. */
export function loadDocument(wf: Workflow, doc: DocInfo, opts?: { keepView?: boolean }) {
  const g = useGraph.getState();
  g.load(wf, doc);
  useExec.setState({ nodeErrors: {}, outputs: {}, previews: {}, cached: {}, executed: {} });
  const missing = missingTypes(g.toWorkflow(), g.defs);
  if (missing.length) toast('error', `Missing node types: ${missing.join(', ')} (shown as placeholders)`);
  if (!opts?.keepView) useUi.setState({ pendingFit: true });
}

export async function importFile(file: File) {
  try {
    const opened = await openFile(file);
    loadDocument(opened.workflow, { name: opened.name });
    const what = { workflow: 'workflow', api: 'API prompt', 'png-workflow': 'workflow from PNG', 'png-prompt': 'prompt from PNG' }[opened.source];
    toast('success', `Opened ${what}: ${opened.name}`);
  } catch (e) {
    toast('error', (e as Error).message);
  }
}

export async function newDocument() {
  loadDocument(emptyWorkflow(), { name: 'Unsaved workflow' });
}

export async function loadDefault() {
  const wf = await chooseDefaultGraph(useGraph.getState().defs);
  loadDocument(wf, { name: 'Unsaved workflow' });
}

export function setCurrentAsDefault() {
  localStorage.setItem(DEFAULT_WORKFLOW_KEY, JSON.stringify(useGraph.getState().toWorkflow()));
  toast('success', 'This graph is now the default for new documents in this browser');
}

export function resetDefault() {
  localStorage.removeItem(DEFAULT_WORKFLOW_KEY);
  toast('info', 'The default graph is the built-in one again');
}

export async function refreshDefs() {
  try {
    useGraph.getState().setDefs(await api.objectInfo());
    toast('info', 'Node definitions and model lists refreshed');
  } catch (e) {
    toast('error', `Refresh failed: ${(e as Error).message}`);
  }
}

export async function saveToLibrary(asNew = false): Promise<boolean> {
  const g = useGraph.getState();
  const wf = g.toWorkflow();
  let name = g.doc.name?.trim() || 'Untitled';
  try {
    if (g.doc.libraryId && !asNew) {
      const row = await api.libraryUpdate(g.doc.libraryId, name, wf);
      g.setDoc({ libraryVersion: row.version, name: row.name });
      toast('success', `Saved ${row.name} (version ${row.version})`);
    } else {
      if (asNew && g.doc.libraryId) name = `${name} copy`;
      const row = await api.libraryCreate(name, wf);
      g.setDoc({ libraryId: row.id, libraryVersion: row.version, name: row.name });
      toast('success', `Saved ${row.name} to the library`);
    }
    window.dispatchEvent(new Event('weft-library-changed'));
    return true;
  } catch (e) {
    toast('error', `Save failed: ${(e as Error).message}`);
    return false;
  }
}

export async function openFromLibrary(id: string) {
  try {
    const row = await api.libraryGet(id);
    if (!row.workflow || !Array.isArray(row.workflow.nodes)) throw new Error('the stored workflow is empty');
    loadDocument(normalizeWorkflow(row.workflow), { name: row.name, libraryId: row.id, libraryVersion: row.version });
    toast('success', `Opened ${row.name} (version ${row.version})`);
  } catch (e) {
    toast('error', `Open failed: ${(e as Error).message}`);
  }
}

export function exportEditorJson() {
  const g = useGraph.getState();
  download(`${g.doc.name || 'workflow'}.json`, g.toWorkflow());
}

/** Downloads the API prompt the server makes of the graph (what queueing it would run). */
export async function exportApiJson() {
  const g = useGraph.getState();
  const name = g.doc.name || 'workflow';
  try {
    const converted = await api.toApi(g.toWorkflow());
    download(`${name}_api.json`, converted.prompt);
    if (converted.missing_node_types.length) toast('error', `Missing node types: ${converted.missing_node_types.join(', ')}`);
    for (const w of converted.warnings) toast('info', w);
  } catch (e) {
    toast('error', `Export failed: ${(e as Error).message}`);
  }
}

export async function restoreFromHistory(entry: HistoryEntry) {
  const wf = entry.extra?.extra_pnginfo?.workflow;
  let workflow: Workflow;
  try {
    workflow = wf && Array.isArray(wf.nodes) ? normalizeWorkflow(wf) : await promptToWorkflow(entry.prompt);
  } catch (e) {
    toast('error', `Restore failed: ${(e as Error).message}`);
    return;
  }
  loadDocument(workflow, { name: `History #${entry.number}` });
  // Show that run's outputs on its nodes.
  const outputs: Record<string, NonNullable<HistoryEntry['outputs'][string]['images']>> = {};
  for (const [id, o] of Object.entries(entry.outputs ?? {})) if (o.images) outputs[id] = o.images;
  useExec.setState({ outputs });
  toast('info', `Restored the workflow of run #${entry.number}`);
}

export async function queue(front = false, count = 1) {
  return useExec.getState().queuePrompt({ front, count });
}
