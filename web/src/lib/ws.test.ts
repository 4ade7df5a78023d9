import { describe, expect, it } from 'vitest';
import { parseBinaryFrame, parseEvent } from './ws';

describe('socket events', () => {
  it('parses the events the server sends, typed by `type`', () => {
    const e = parseEvent(JSON.stringify({ type: 'progress', data: { value: 3, max: 20, prompt_id: 'p', node: '12:5' } }));
    expect(e).toEqual({ type: 'progress', data: { value: 3, max: 20, prompt_id: 'p', node: '12:5' } });
    if (e?.type === 'progress') expect(e.data.max).toBe(20); // narrowed by the union
    expect(parseEvent('{"type":"executing","data":{"node":null,"prompt_id":"p"}}')).toEqual({ type: 'executing', data: { node: null, prompt_id: 'p' } });
    expect(parseEvent('{"type":"feature_flags","data":{"supports_preview_metadata":true}}')?.type).toBe('feature_flags');
  });

  it('drops unknown types, bad JSON and frames without a type', () => {
    expect(parseEvent('{"type":"crystools.monitor","data":{}}')).toBeNull();
    expect(parseEvent('{"type":"toString","data":{}}')).toBeNull();
    expect(parseEvent('not json')).toBeNull();
    expect(parseEvent('[1,2]')).toBeNull();
    expect(parseEvent('{"data":{}}')).toBeNull();
    // A missing data object becomes an empty one.
    expect(parseEvent('{"type":"execution_start"}')).toEqual({ type: 'execution_start', data: {} });
  });

  it('parses binary previews with and without metadata', () => {
    const image = new Uint8Array([1, 2, 3]);
    const legacy = new Uint8Array(8 + image.length);
    new DataView(legacy.buffer).setUint32(0, 1);
    new DataView(legacy.buffer).setUint32(4, 2);
    legacy.set(image, 8);
    const a = parseBinaryFrame(legacy.buffer)!;
    expect(a.type).toBe('preview');
    expect(a.data.blob.type).toBe('image/png');
    expect(a.data.nodeId).toBeUndefined();

    const meta = new TextEncoder().encode(JSON.stringify({ node_id: '12:5', display_node_id: '12:5', prompt_id: 'p', image_type: 'image/jpeg' }));
    const framed = new Uint8Array(8 + meta.length + image.length);
    new DataView(framed.buffer).setUint32(0, 4);
    new DataView(framed.buffer).setUint32(4, meta.length);
    framed.set(meta, 8);
    framed.set(image, 8 + meta.length);
    const b = parseBinaryFrame(framed.buffer)!;
    expect(b.data).toMatchObject({ nodeId: '12:5', promptId: 'p' });
    expect(b.data.blob.size).toBe(3);
    expect(parseBinaryFrame(new ArrayBuffer(4))).toBeNull();
  });
});
