import { describe, expect, it } from 'vitest';
import { apiToWorkflow, graphToPrompt } from './convert';
import { detectJson, normalizeWorkflow, missingTypes } from './workflow';
import { sdDefs } from '../test/fixtures/sd-defs';
import defaultJson from '../test/fixtures/default.json';
import loraJson from '../test/fixtures/lora.json';
import sdxlJson from '../test/fixtures/sdxl_simple_example.json';
import type { Workflow } from './types';

// ComfyUI's defaultGraph (reference §2.3) and the API prompt its frontend builds from it.
const comfyDefault = {"last_node_id":9,"last_link_id":9,"nodes":[
{"id":7,"type":"CLIPTextEncode","pos":[413,389],"size":[425.27801513671875,180.6060791015625],"flags":{},"order":3,"mode":0,"inputs":[{"name":"clip","type":"CLIP","link":5}],"outputs":[{"name":"CONDITIONING","type":"CONDITIONING","links":[6],"slot_index":0}],"properties":{},"widgets_values":["text, watermark"]},
{"id":6,"type":"CLIPTextEncode","pos":[415,186],"size":[422.84503173828125,164.31304931640625],"flags":{},"order":2,"mode":0,"inputs":[{"name":"clip","type":"CLIP","link":3}],"outputs":[{"name":"CONDITIONING","type":"CONDITIONING","links":[4],"slot_index":0}],"properties":{},"widgets_values":["beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"]},
{"id":5,"type":"EmptyLatentImage","pos":[473,609],"size":[315,106],"flags":{},"order":1,"mode":0,"outputs":[{"name":"LATENT","type":"LATENT","links":[2],"slot_index":0}],"properties":{},"widgets_values":[512,512,1]},
{"id":3,"type":"KSampler","pos":[863,186],"size":[315,262],"flags":{},"order":4,"mode":0,"inputs":[{"name":"model","type":"MODEL","link":1},{"name":"positive","type":"CONDITIONING","link":4},{"name":"negative","type":"CONDITIONING","link":6},{"name":"latent_image","type":"LATENT","link":2}],"outputs":[{"name":"LATENT","type":"LATENT","links":[7],"slot_index":0}],"properties":{},"widgets_values":[156680208700286,true,20,8,"euler","normal",1]},
{"id":8,"type":"VAEDecode","pos":[1209,188],"size":[210,46],"flags":{},"order":5,"mode":0,"inputs":[{"name":"samples","type":"LATENT","link":7},{"name":"vae","type":"VAE","link":8}],"outputs":[{"name":"IMAGE","type":"IMAGE","links":[9],"slot_index":0}],"properties":{}},
{"id":9,"type":"SaveImage","pos":[1451,189],"size":[210,26],"flags":{},"order":6,"mode":0,"inputs":[{"name":"images","type":"IMAGE","link":9}],"properties":{}},
{"id":4,"type":"CheckpointLoaderSimple","pos":[26,474],"size":[315,98],"flags":{},"order":0,"mode":0,"outputs":[{"name":"MODEL","type":"MODEL","links":[1],"slot_index":0},{"name":"CLIP","type":"CLIP","links":[3,5],"slot_index":1},{"name":"VAE","type":"VAE","links":[8],"slot_index":2}],"properties":{},"widgets_values":["v1-5-pruned-emaonly-fp16.safetensors"]}],
"links":[[1,4,0,3,0,"MODEL"],[2,5,0,3,3,"LATENT"],[3,4,1,6,0,"CLIP"],[4,6,0,3,1,"CONDITIONING"],[5,4,1,7,0,"CLIP"],[6,7,0,3,2,"CONDITIONING"],[7,3,0,8,0,"LATENT"],[8,4,2,8,1,"VAE"],[9,8,0,9,0,"IMAGE"]],
"groups":[],"config":{},"extra":{"ds":{"offset":[0,0],"scale":1}},"version":0.4};

const comfyDefaultApi = {
 "3": {"inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
                  "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
       "class_type": "KSampler", "_meta": {"title": "KSampler"}},
 "4": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}, "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
 "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"}},
 "6": {"inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]}, "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}},
 "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}},
 "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}},
 "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage", "_meta": {"title": "Save Image"}}
};

const wf = (x: unknown) => normalizeWorkflow(x) as Workflow;

describe('graphToPrompt', () => {
  it("matches ComfyUI's frontend on its default graph", () => {
    const { output } = graphToPrompt(wf(comfyDefault), sdDefs);
    expect(output).toEqual(comfyDefaultApi);
  });

  it('converts the shipped default.json: notes skipped, control slot skipped, saved prefix kept', () => {
    const { output } = graphToPrompt(wf(defaultJson), sdDefs);
    expect(Object.keys(output).sort()).toEqual(['3', '4', '5', '6', '7', '8', '9']);
    expect(output['3'].inputs).toEqual({
      seed: 685468484323813, steps: 20, cfg: 8, sampler_name: 'euler', scheduler: 'normal', denoise: 1,
      model: ['4', 0], positive: ['6', 0], negative: ['7', 0], latent_image: ['5', 0],
    });
    expect(output['9'].inputs.filename_prefix).toBe('SD1.5');
  });

  it('splices out a bypassed LoRA by type', () => {
    const { output } = graphToPrompt(wf(loraJson), sdDefs);
    expect(output['13']).toBeUndefined();
    expect(output['3'].inputs.model).toEqual(['11', 0]);
    expect(output['6'].inputs.clip).toEqual(['11', 1]);
    expect(output['7'].inputs.clip).toEqual(['11', 1]);
    expect(output['11'].inputs).toMatchObject({ lora_name: 'blindbox_v1_mix.safetensors', strength_model: 0.75, strength_clip: 1 });
  });

  it('writes primitive values into converted widgets and skips notes', () => {
    const { output } = graphToPrompt(wf(sdxlJson), sdDefs);
    const types = new Set(Object.values(output).map((n) => n.class_type));
    expect(types.has('PrimitiveNode')).toBe(false);
    expect(types.has('Note')).toBe(false);
    expect(output['10'].inputs.steps).toBe(25);
    expect(output['10'].inputs.end_at_step).toBe(20);
    expect(output['10'].inputs.noise_seed).toBe(721897303308196);
    expect(output['10'].inputs.add_noise).toBe('enable');
    expect(output['11'].inputs.start_at_step).toBe(20);
    // The CLIP text encoders get the primitive's prompt text.
    const texts = Object.values(output).filter((n) => n.class_type === 'CLIPTextEncode').map((n) => n.inputs.text);
    expect(texts).toContain('evening sunset scenery blue sky nature, glass bottle with a galaxy in it');
  });

  it('drops muted nodes and the links into them', () => {
    const g = wf(comfyDefault);
    g.nodes.find((n) => n.id === 8)!.mode = 2;
    const { output } = graphToPrompt(g, sdDefs);
    expect(output['8']).toBeUndefined();
    expect(output['9'].inputs.images).toBeUndefined();
  });

  it('follows reroutes', () => {
    const g = wf({
      last_node_id: 3, last_link_id: 2, version: 0.4, groups: [], config: {}, extra: {},
      nodes: [
        { id: 1, type: 'EmptyImage', pos: [0, 0], size: [200, 100], mode: 0, outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [1] }], widgets_values: [64, 32, 1, 0] },
        { id: 2, type: 'Reroute', pos: [0, 0], size: [80, 30], mode: 0, inputs: [{ name: '', type: '*', link: 1 }], outputs: [{ name: '', type: 'IMAGE', links: [2] }] },
        { id: 3, type: 'SaveImage', pos: [0, 0], size: [200, 100], mode: 0, inputs: [{ name: 'images', type: 'IMAGE', link: 2 }], widgets_values: ['x'] },
      ],
      links: [[1, 1, 0, 2, 0, 'IMAGE'], [2, 2, 0, 3, 0, 'IMAGE']],
    });
    const { output } = graphToPrompt(g, sdDefs);
    expect(output['3'].inputs).toEqual({ filename_prefix: 'x', images: ['1', 0] });
    expect(output['1'].inputs).toEqual({ width: 64, height: 32, batch_size: 1, color: 0 });
  });

  it('skips the LoadImage upload slot and wraps list values', () => {
    const g = wf({
      last_node_id: 1, last_link_id: 0, version: 0.4, groups: [], config: {}, extra: {}, links: [],
      nodes: [{ id: 1, type: 'LoadImage', pos: [0, 0], size: [200, 100], mode: 0, outputs: [], widgets_values: ['example.png', 'image'] }],
    });
    expect(graphToPrompt(g, sdDefs).output['1'].inputs).toEqual({ image: 'example.png' });
  });

  it('uses the link, not the widget value, for a converted widget', () => {
    const g = wf({
      last_node_id: 2, last_link_id: 1, version: 0.4, groups: [], config: {}, extra: {},
      nodes: [
        { id: 1, type: 'PrimitiveNode', pos: [0, 0], size: [200, 80], mode: 0, outputs: [{ name: 'INT', type: 'INT', widget: { name: 'width' }, links: [1] }], widgets_values: [77, 'fixed'] },
        { id: 2, type: 'EmptyImage', pos: [0, 0], size: [200, 80], mode: 0, inputs: [{ name: 'width', type: 'INT', widget: { name: 'width' }, link: 1 }], outputs: [], widgets_values: [10, 20, 1, 0] },
      ],
      links: [[1, 1, 0, 2, 0, 'INT']],
    });
    expect(graphToPrompt(g, sdDefs).output['2'].inputs).toEqual({ width: 77, height: 20, batch_size: 1, color: 0 });
  });
});

describe('apiToWorkflow', () => {
  it('round-trips the default API prompt', () => {
    const g = apiToWorkflow(comfyDefaultApi as never, sdDefs);
    expect(g.nodes).toHaveLength(7);
    const ks = g.nodes.find((n) => n.id === 3)!;
    expect(ks.widgets_values).toEqual([156680208700286, 'fixed', 20, 8, 'euler', 'normal', 1]);
    const back = graphToPrompt(g, sdDefs).output;
    expect(back).toEqual(comfyDefaultApi);
  });

  it('turns linked widget inputs into converted widgets and keeps unknown classes', () => {
    const g = apiToWorkflow({
      a: { class_type: 'StubImage', inputs: { content: 'WHITE', height: 8, width: 8, batch_size: 1 } },
      '2': { class_type: 'Mystery', inputs: { image: ['a', 0], strength: 3 } },
    }, sdDefs);
    const ids = g.nodes.map((n) => n.id).sort();
    expect(ids).toEqual([2, 3]);
    expect(missingTypes(g, sdDefs)).toEqual(['Mystery']);
    expect(g.links).toHaveLength(1);
  });
});

describe('detect / normalise', () => {
  it('detects editor and API JSON', () => {
    expect(detectJson(defaultJson).kind).toBe('workflow');
    expect(detectJson(comfyDefaultApi).kind).toBe('api');
    expect(detectJson({ foo: 1 }).kind).toBe('unknown');
  });

  it('drops unlinked widget inputs of newer frontends and renumbers slots', () => {
    const g = normalizeWorkflow({
      nodes: [
        { id: 1, type: 'EmptyImage', pos: { 0: 5, 1: 6 }, size: [1, 2], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [1] }],
          inputs: [{ name: 'width', type: 'INT', widget: { name: 'width' }, link: null }] },
        { id: 2, type: 'ImageInvert', pos: [0, 0], size: [1, 2],
          inputs: [{ name: 'x', type: 'INT', widget: { name: 'x' }, link: null }, { name: 'image', type: 'IMAGE', link: 1 }], outputs: [] },
      ],
      links: [{ id: 1, origin_id: 1, origin_slot: 0, target_id: 2, target_slot: 1, type: 'IMAGE' }],
    });
    expect(g.nodes[0].pos).toEqual([5, 6]);
    expect(g.nodes[0].inputs).toEqual([]);
    expect(g.nodes[1].inputs).toEqual([{ name: 'image', type: 'IMAGE', link: 1 }]);
    expect(g.links).toEqual([[1, 1, 0, 2, 0, 'IMAGE']]);
    expect(g.last_link_id).toBe(1);
  });

  it('keeps unknown top-level and node fields', () => {
    const g = normalizeWorkflow({ ...defaultJson, id: 'abc', revision: 3 });
    expect(g.id).toBe('abc');
    expect(g.nodes.find((n) => n.id === 7)!.bgcolor).toBe('#335');
  });
});
