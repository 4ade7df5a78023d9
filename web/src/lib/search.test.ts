import { describe, expect, it } from 'vitest';
import { categoryTree, searchNodes } from './search';
import { sdDefs } from '../test/fixtures/sd-defs';

describe('node search', () => {
  it('ranks prefix matches of display names first', () => {
    const r = searchNodes(sdDefs, 'save');
    expect(r[0].name).toBe('SaveImage');
  });
  it('finds by class name, words and category', () => {
    expect(searchNodes(sdDefs, 'KSampler').map((d) => d.name).slice(0, 2)).toEqual(['KSampler', 'KSamplerAdvanced']);
    expect(searchNodes(sdDefs, 'invert').map((d) => d.name)).toContain('ImageInvert');
    expect(searchNodes(sdDefs, 'upscaling').map((d) => d.name)).toContain('ImageScale');
    expect(searchNodes(sdDefs, 'ksadv').map((d) => d.name)).toContain('KSamplerAdvanced');
  });
  it('builds nested categories', () => {
    const t = categoryTree(sdDefs);
    const image = t.children.find((c) => c.name === 'image')!;
    expect(image.children.map((c) => c.name)).toContain('upscaling');
    expect(image.nodes.map((d) => d.name)).toContain('SaveImage');
  });
});
