import { describe, expect, it } from 'vitest';
import { typeColor, typesCompatible } from './sockets';

describe('typesCompatible (ComfyUI rule)', () => {
  it('accepts equal types', () => {
    expect(typesCompatible('IMAGE', 'IMAGE')).toBe(true);
  });
  it('refuses different types', () => {
    expect(typesCompatible('MASK', 'IMAGE')).toBe(false);
    expect(typesCompatible('LATENT', 'MODEL')).toBe(false);
  });
  it('lets * match anything on either side', () => {
    expect(typesCompatible('*', 'IMAGE')).toBe(true);
    expect(typesCompatible('IMAGE', '*')).toBe(true);
  });
  it('matches comma unions on overlap', () => {
    expect(typesCompatible('IMAGE,MASK', 'MASK')).toBe(true);
    expect(typesCompatible('INT', 'FLOAT,INT')).toBe(true);
    expect(typesCompatible('IMAGE, LATENT', 'LATENT ,MODEL')).toBe(true);
    expect(typesCompatible('IMAGE,MASK', 'LATENT,MODEL')).toBe(false);
  });
  it('gives stable colours', () => {
    expect(typeColor('IMAGE')).toBe('#64B5F6');
    expect(typeColor('FOO')).toBe(typeColor('FOO'));
  });
});
