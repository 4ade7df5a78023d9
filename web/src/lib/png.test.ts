import { describe, expect, it } from 'vitest';
import { deflateSync } from 'node:zlib';
import { readPngText, workflowFromPng } from './png';

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  return out; // CRC left zero: readers here do not check it
}

function png(...chunks: Uint8Array[]): Uint8Array {
  const parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), ...chunks, chunk('IEND', new Uint8Array())];
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const enc = (s: string) => new TextEncoder().encode(s);
const cat = (...a: Uint8Array[]) => {
  const out = new Uint8Array(a.reduce((n, x) => n + x.length, 0));
  let o = 0;
  for (const x of a) {
    out.set(x, o);
    o += x.length;
  }
  return out;
};

describe('PNG text chunks', () => {
  it('reads tEXt, zTXt and iTXt', async () => {
    const bytes = png(
      chunk('IHDR', new Uint8Array(13)),
      chunk('tEXt', cat(enc('prompt'), new Uint8Array([0]), enc('{"1":{"class_type":"X","inputs":{}}}'))),
      chunk('zTXt', cat(enc('z'), new Uint8Array([0, 0]), deflateSync(enc('zipped')))),
      chunk('iTXt', cat(enc('workflow'), new Uint8Array([0, 0, 0]), enc('en'), new Uint8Array([0]), new Uint8Array([0]), enc('{"nodes":[],"links":[]} é'))),
    );
    const t = await readPngText(bytes);
    expect(t.prompt).toContain('class_type');
    expect(t.z).toBe('zipped');
    expect(t.workflow.endsWith('é')).toBe(true);
  });
  it('prefers workflow over prompt', async () => {
    const w = png(
      chunk('tEXt', cat(enc('prompt'), new Uint8Array([0]), enc('{"1":{"class_type":"X","inputs":{}}}'))),
      chunk('tEXt', cat(enc('workflow'), new Uint8Array([0]), enc('{"nodes":[],"links":[]}'))),
    );
    expect(await workflowFromPng(w)).toEqual({ workflow: { nodes: [], links: [] } });
    const p = png(chunk('tEXt', cat(enc('prompt'), new Uint8Array([0]), enc('{"1":{"class_type":"X","inputs":{}}}'))));
    expect(Object.keys(await workflowFromPng(p))).toEqual(['prompt']);
  });
  it('rejects non-PNG data', async () => {
    await expect(readPngText(enc('GIF89a'))).rejects.toThrow();
  });
});
