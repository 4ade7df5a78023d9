// The editor-format fixtures the Rust conversion is tested on (tests/fixtures/editor): ComfyUI's
// own workflow templates, and for some the API prompt ComfyUI's frontend makes of them. The editor
// reads the same files, so both sides agree on one set.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ApiPrompt } from '../lib/types';

export const EDITOR_FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../tests/fixtures/editor');

/** The template names (file names without `.json`), sorted. */
export function templateNames(): string[] {
  return fs
    .readdirSync(path.join(EDITOR_FIXTURES, 'workflows'))
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -5))
    .sort();
}

export function template(name: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(path.join(EDITOR_FIXTURES, 'workflows', `${name}.json`), 'utf8'));
}

/** ComfyUI's prompt for a template, where `expected/` has one. */
export function expectedPrompt(name: string): ApiPrompt | null {
  const file = path.join(EDITOR_FIXTURES, 'expected', `${name}.json`);
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : null;
}
