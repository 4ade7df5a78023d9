// Writes a tiny SD1-layout checkpoint (random weights) for the default-workflow e2e test, from the
// key maps the Rust tests use (tests/fixtures/unet/keymap_*.json): UNet and VAE in the LDM
// single-file layout, plus a 2-layer, 48-wide CLIP text encoder. The images are noise; the point
// is that the editor's prompt runs through the real loader, sampler and decoder.

import fs from 'node:fs';
import path from 'node:path';
import { WEB_DIR } from './harness.mjs';

export const FIXTURES = path.join(WEB_DIR, '..', 'tests', 'fixtures', 'unet');

export function canMakeTinyCheckpoint() {
  return fs.existsSync(path.join(FIXTURES, 'keymap_sd1_tiny.json')) && fs.existsSync(path.join(FIXTURES, 'keymap_vae_tiny.json'));
}

function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function tensorFor(name, shape, rand) {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  const last = name.split('.').slice(-2).join('.');
  const isNorm = /norm|ln_|layer_norm/.test(name);
  if (isNorm && name.endsWith('weight')) data.fill(1);
  else if (name.endsWith('bias') || isNorm) data.fill(0);
  else {
    const fanIn = shape.length > 1 ? shape.slice(1).reduce((a, b) => a * b, 1) : shape[0];
    const scale = /embedding/.test(last) ? 0.02 : 1 / Math.sqrt(fanIn);
    for (let i = 0; i < n; i++) data[i] = (rand() * 2 - 1) * scale;
  }
  return data;
}

function clipTensors(prefix, hidden = 48, layers = 2) {
  const t = [];
  const p = `${prefix}text_model.`;
  t.push([`${p}embeddings.token_embedding.weight`, [49408, hidden]]);
  t.push([`${p}embeddings.position_embedding.weight`, [77, hidden]]);
  for (let i = 0; i < layers; i++) {
    const l = `${p}encoder.layers.${i}.`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      t.push([`${l}self_attn.${proj}.weight`, [hidden, hidden]]);
      t.push([`${l}self_attn.${proj}.bias`, [hidden]]);
    }
    for (const ln of ['layer_norm1', 'layer_norm2']) {
      t.push([`${l}${ln}.weight`, [hidden]]);
      t.push([`${l}${ln}.bias`, [hidden]]);
    }
    t.push([`${l}mlp.fc1.weight`, [hidden * 2, hidden]]);
    t.push([`${l}mlp.fc1.bias`, [hidden * 2]]);
    t.push([`${l}mlp.fc2.weight`, [hidden, hidden * 2]]);
    t.push([`${l}mlp.fc2.bias`, [hidden]]);
  }
  t.push([`${p}final_layer_norm.weight`, [hidden]]);
  t.push([`${p}final_layer_norm.bias`, [hidden]]);
  return t;
}

/** Writes `<dir>/tiny_sd1.safetensors`; returns its file name. */
export function writeTinyCheckpoint(dir, file = 'tiny_sd1.safetensors') {
  const keymap = (name) => JSON.parse(fs.readFileSync(path.join(FIXTURES, `keymap_${name}.json`), 'utf8'));
  const entries = [
    ...keymap('sd1_tiny').map(([ldm, , shape]) => [`model.diffusion_model.${ldm}`, shape]),
    ...keymap('vae_tiny').map(([ldm, , shape]) => [`first_stage_model.${ldm}`, shape]),
    ...clipTensors('cond_stage_model.transformer.'),
  ];
  const rand = rng(1234);
  const header = {};
  const chunks = [];
  let offset = 0;
  for (const [name, shape] of entries) {
    const data = tensorFor(name, shape, rand);
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8) json += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, file), Buffer.concat([len, Buffer.from(json), ...chunks]));
  return file;
}
