// Opening dropped or chosen files (editor JSON, API JSON, PNG with metadata) and downloads.

import type { ObjectInfo, Workflow } from './types';
import { detectJson, normalizeWorkflow } from './workflow';
import { apiToWorkflow } from './convert';
import { isPng, workflowFromPng } from './png';

export interface Opened {
  workflow: Workflow;
  source: 'workflow' | 'api' | 'png-workflow' | 'png-prompt';
  name: string;
}

export async function openFile(file: Blob & { name?: string }, defs: ObjectInfo): Promise<Opened> {
  const name = (file.name ?? 'workflow').replace(/\.(json|png)$/i, '');
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (isPng(bytes)) {
    const found = await workflowFromPng(bytes);
    if (found.workflow) {
      const d = detectJson(found.workflow);
      if (d.kind === 'workflow') return { workflow: d.workflow, source: 'png-workflow', name };
    }
    if (found.prompt) {
      const d = detectJson(found.prompt);
      if (d.kind === 'api') return { workflow: apiToWorkflow(d.prompt, defs), source: 'png-prompt', name };
    }
    throw new Error('This PNG carries no workflow');
  }
  let data: unknown;
  try {
    data = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new Error('Not a workflow: expected editor JSON, API JSON or a PNG with an embedded workflow');
  }
  const d = detectJson(data);
  if (d.kind === 'workflow') return { workflow: normalizeWorkflow(d.workflow), source: 'workflow', name };
  if (d.kind === 'api') return { workflow: apiToWorkflow(d.prompt, defs), source: 'api', name };
  throw new Error('Not a workflow: expected editor JSON, API JSON or a PNG with an embedded workflow');
}

export function download(filename: string, data: unknown) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' });
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
