// Opening dropped or chosen files (editor JSON, API JSON, PNG with metadata) and downloads.
// Converting between formats and reading PNG metadata is the server's (`POST /api/weft/convert`):
// the editor keeps no second copy of that logic.

import { api } from './api';
import type { ApiPrompt, Workflow } from './types';
import { detectJson, normalizeWorkflow } from './workflow';

export interface Opened {
  workflow: Workflow;
  source: 'workflow' | 'api' | 'png-workflow' | 'png-prompt';
  name: string;
}

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export function isPng(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

const NOT_A_WORKFLOW = 'Not a workflow: expected editor JSON, API JSON or a PNG with an embedded workflow';

/** An API prompt as an editor workflow, converted and laid out by the server. */
export async function promptToWorkflow(prompt: ApiPrompt): Promise<Workflow> {
  return normalizeWorkflow(await api.toEditor(prompt));
}

export async function openFile(file: Blob & { name?: string }): Promise<Opened> {
  const name = (file.name ?? 'workflow').replace(/\.(json|png)$/i, '');
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (isPng(bytes)) {
    let found;
    try {
      found = await api.pngDocuments(bytes);
    } catch (e) {
      throw new Error(`This PNG carries no workflow (${(e as Error).message})`);
    }
    const wf = found.workflow ? detectJson(found.workflow) : null;
    if (wf?.kind === 'workflow') return { workflow: wf.workflow, source: 'png-workflow', name };
    const prompt = found.prompt ? detectJson(found.prompt) : null;
    if (prompt?.kind === 'api') return { workflow: await promptToWorkflow(prompt.prompt), source: 'png-prompt', name };
    throw new Error('This PNG carries no workflow');
  }
  let data: unknown;
  try {
    data = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new Error(NOT_A_WORKFLOW);
  }
  const d = detectJson(data);
  if (d.kind === 'workflow') return { workflow: d.workflow, source: 'workflow', name };
  if (d.kind === 'api') return { workflow: await promptToWorkflow(d.prompt), source: 'api', name };
  throw new Error(NOT_A_WORKFLOW);
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
