// The graph a new editor starts with. Configurable, first match wins:
//   1. localStorage `weft.defaultWorkflow` (editor JSON), set from the File menu or by tests;
//   2. the editor URL's `?default=<url>` (editor JSON fetched from the same server);
//   3. ComfyUI's own default graph, when the server has all of its node types;
//   4. a small image graph built from the nodes every Weft server has.

import type { ObjectInfo, Workflow } from './types';
import { defFor, emptyWorkflow, normalizeWorkflow } from './workflow';

export const DEFAULT_WORKFLOW_KEY = 'weft.defaultWorkflow';

/** ComfyUI frontend `defaultGraph` (reference §2.3). */
export const COMFY_DEFAULT_GRAPH: Workflow = {
  last_node_id: 9, last_link_id: 9,
  nodes: [
    { id: 7, type: 'CLIPTextEncode', pos: [413, 389], size: [425.27801513671875, 180.6060791015625], flags: {}, order: 3, mode: 0, inputs: [{ name: 'clip', type: 'CLIP', link: 5 }], outputs: [{ name: 'CONDITIONING', type: 'CONDITIONING', links: [6], slot_index: 0 }], properties: {}, widgets_values: ['text, watermark'] },
    { id: 6, type: 'CLIPTextEncode', pos: [415, 186], size: [422.84503173828125, 164.31304931640625], flags: {}, order: 2, mode: 0, inputs: [{ name: 'clip', type: 'CLIP', link: 3 }], outputs: [{ name: 'CONDITIONING', type: 'CONDITIONING', links: [4], slot_index: 0 }], properties: {}, widgets_values: ['beautiful scenery nature glass bottle landscape, , purple galaxy bottle,'] },
    { id: 5, type: 'EmptyLatentImage', pos: [473, 609], size: [315, 106], flags: {}, order: 1, mode: 0, outputs: [{ name: 'LATENT', type: 'LATENT', links: [2], slot_index: 0 }], properties: {}, widgets_values: [512, 512, 1] },
    { id: 3, type: 'KSampler', pos: [863, 186], size: [315, 262], flags: {}, order: 4, mode: 0, inputs: [{ name: 'model', type: 'MODEL', link: 1 }, { name: 'positive', type: 'CONDITIONING', link: 4 }, { name: 'negative', type: 'CONDITIONING', link: 6 }, { name: 'latent_image', type: 'LATENT', link: 2 }], outputs: [{ name: 'LATENT', type: 'LATENT', links: [7], slot_index: 0 }], properties: {}, widgets_values: [156680208700286, true, 20, 8, 'euler', 'normal', 1] },
    { id: 8, type: 'VAEDecode', pos: [1209, 188], size: [210, 46], flags: {}, order: 5, mode: 0, inputs: [{ name: 'samples', type: 'LATENT', link: 7 }, { name: 'vae', type: 'VAE', link: 8 }], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [9], slot_index: 0 }], properties: {} },
    { id: 9, type: 'SaveImage', pos: [1451, 189], size: [210, 26], flags: {}, order: 6, mode: 0, inputs: [{ name: 'images', type: 'IMAGE', link: 9 }], properties: {} },
    { id: 4, type: 'CheckpointLoaderSimple', pos: [26, 474], size: [315, 98], flags: {}, order: 0, mode: 0, outputs: [{ name: 'MODEL', type: 'MODEL', links: [1], slot_index: 0 }, { name: 'CLIP', type: 'CLIP', links: [3, 5], slot_index: 1 }, { name: 'VAE', type: 'VAE', links: [8], slot_index: 2 }], properties: {}, widgets_values: ['v1-5-pruned-emaonly-fp16.safetensors'] },
  ],
  links: [[1, 4, 0, 3, 0, 'MODEL'], [2, 5, 0, 3, 3, 'LATENT'], [3, 4, 1, 6, 0, 'CLIP'], [4, 6, 0, 3, 1, 'CONDITIONING'], [5, 4, 1, 7, 0, 'CLIP'], [6, 7, 0, 3, 2, 'CONDITIONING'], [7, 3, 0, 8, 0, 'LATENT'], [8, 4, 2, 8, 1, 'VAE'], [9, 8, 0, 9, 0, 'IMAGE']],
  groups: [], config: {}, extra: { ds: { offset: [0, 0], scale: 1 } }, version: 0.4,
};

/** What every Weft server can run: an empty image, inverted, saved. */
export const BASIC_IMAGE_GRAPH: Workflow = {
  last_node_id: 3, last_link_id: 2,
  nodes: [
    { id: 1, type: 'EmptyImage', pos: [60, 120], size: [290, 130], flags: {}, order: 0, mode: 0, inputs: [], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [1], slot_index: 0 }], properties: { 'Node name for S&R': 'EmptyImage' }, widgets_values: [512, 512, 1, 3355443] },
    { id: 2, type: 'ImageInvert', pos: [420, 120], size: [220, 30], flags: {}, order: 1, mode: 0, inputs: [{ name: 'image', type: 'IMAGE', link: 1 }], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [2], slot_index: 0 }], properties: { 'Node name for S&R': 'ImageInvert' } },
    { id: 3, type: 'SaveImage', pos: [700, 120], size: [360, 360], flags: {}, order: 2, mode: 0, inputs: [{ name: 'images', type: 'IMAGE', link: 2 }], outputs: [], properties: { 'Node name for S&R': 'SaveImage' }, widgets_values: ['Weft'] },
  ],
  links: [[1, 1, 0, 2, 0, 'IMAGE'], [2, 2, 0, 3, 0, 'IMAGE']],
  groups: [], config: {}, extra: {}, version: 0.4,
};

function usable(wf: Workflow, defs: ObjectInfo): boolean {
  return wf.nodes.every((n) => defFor(defs, n.type));
}

export function configuredDefault(): Workflow | null {
  try {
    const raw = localStorage.getItem(DEFAULT_WORKFLOW_KEY);
    if (!raw) return null;
    const parsed = JSON.parse(raw);
    return parsed && Array.isArray(parsed.nodes) ? normalizeWorkflow(parsed) : null;
  } catch {
    return null;
  }
}

export async function chooseDefaultGraph(defs: ObjectInfo, fetchImpl: typeof fetch = fetch): Promise<Workflow> {
  const configured = configuredDefault();
  if (configured) return configured;
  const url = typeof location !== 'undefined' ? new URLSearchParams(location.search).get('default') : null;
  if (url) {
    try {
      const res = await fetchImpl(url, { cache: 'no-store' });
      const data = res.ok ? await res.json() : null;
      if (data && Array.isArray(data.nodes)) return normalizeWorkflow(data);
    } catch {
      /* fall through to the built-in graphs */
    }
  }
  if (usable(COMFY_DEFAULT_GRAPH, defs)) return normalizeWorkflow(COMFY_DEFAULT_GRAPH);
  if (usable(BASIC_IMAGE_GRAPH, defs)) return normalizeWorkflow(BASIC_IMAGE_GRAPH);
  return emptyWorkflow();
}
