import { describe, expect, it } from 'vitest';
import { applyControl, clampNumber, controlMode, defaultWidgetValues, nodeLayout } from './widgets';
import { sdDefs } from '../test/fixtures/sd-defs';

describe('nodeLayout', () => {
  it('puts a control slot after seed', () => {
    const names = nodeLayout(sdDefs.KSampler).widgets.map((w) => w.name);
    expect(names).toEqual(['seed', 'control_after_generate', 'steps', 'cfg', 'sampler_name', 'scheduler', 'denoise']);
    expect(nodeLayout(sdDefs.KSampler).sockets.map((s) => s.name)).toEqual(['model', 'positive', 'negative', 'latent_image']);
  });
  it('adds the upload slot to LoadImage', () => {
    const w = nodeLayout(sdDefs.LoadImage).widgets;
    expect(w.map((x) => [x.name, x.kind, x.serialize])).toEqual([['image', 'COMBO', true], ['upload', 'UPLOAD', false]]);
  });
  it('treats forceInput as a socket and V3 COMBO as a combo', () => {
    const def = {
      name: 'X', input: { required: { a: ['INT', { forceInput: true }], b: ['COMBO', { options: ['p', 'q'] }], noise_seed: ['INT', {}] } },
      output: [],
    };
    const l = nodeLayout(def as never);
    expect(l.sockets.map((s) => s.name)).toEqual(['a']);
    expect(l.widgets.map((w) => w.name)).toEqual(['b', 'noise_seed', 'control_after_generate']);
    expect(l.widgets[0].options).toEqual(['p', 'q']);
    expect(defaultWidgetValues(def as never)).toEqual(['p', 0, 'randomize']);
  });
});

describe('numbers and seed control', () => {
  it('clamps and rounds', () => {
    expect(clampNumber({ kind: 'INT', opts: { min: 0, max: 10 } }, 12.6)).toBe(10);
    expect(clampNumber({ kind: 'FLOAT', opts: { step: 0.1, round: 0.01 } }, 1.23456)).toBe(1.23);
    expect(clampNumber({ kind: 'FLOAT', opts: { step: 0.01 } }, 0.30000000004)).toBe(0.3);
  });
  it('increments, decrements, randomizes within range', () => {
    const w = { kind: 'INT' as const, opts: { min: 0, max: 100 } };
    expect(applyControl(w, 5, 'increment')).toBe(6);
    expect(applyControl(w, 0, 'decrement')).toBe(0);
    expect(applyControl(w, 5, 'fixed')).toBe(5);
    const r = applyControl(w, 5, 'randomize', () => 0.5) as number;
    expect(r).toBe(50);
    expect(controlMode(true)).toBe('randomize');
  });
});
