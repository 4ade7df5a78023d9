// How a node's widgets are derived from its /object_info declaration, and how `widgets_values`
// slots line up with them (ComfyUI frontend rules: widgets in input order, control slots after
// seeds, the LoadImage upload slot).

import type { NodeDef, ObjectInfo, WfNode } from './types';

export type WidgetKind =
  | 'INT'
  | 'FLOAT'
  | 'STRING'
  | 'BOOLEAN'
  | 'COMBO'
  | 'CONTROL' // control_after_generate (not serialized)
  | 'CONTROL_FILTER' // control_filter_list after a COMBO with control (not serialized)
  | 'UPLOAD'; // image upload button (not serialized)

export interface WidgetSpec {
  name: string;
  kind: WidgetKind;
  opts: Record<string, unknown>;
  options?: string[];
  /** Whether the value goes into the API prompt. */
  serialize: boolean;
  /** For CONTROL/UPLOAD widgets: the widget they belong to. */
  target?: string;
  optional: boolean;
}

export interface SocketSpec {
  name: string;
  type: string;
  optional: boolean;
  opts: Record<string, unknown>;
}

export interface NodeLayout {
  widgets: WidgetSpec[];
  /** Inputs that are sockets by declaration (not widgets), in input order. */
  sockets: SocketSpec[];
  /** The input type of each widget-capable input, for converted widgets. */
  widgetTypes: Record<string, string>;
}

export const CONTROL_VALUES = ['fixed', 'increment', 'decrement', 'randomize'] as const;
export type ControlMode = (typeof CONTROL_VALUES)[number];

const WIDGET_TYPES = new Set(['INT', 'FLOAT', 'STRING', 'BOOLEAN', 'COMBO']);

function orderedNames(def: NodeDef, group: 'required' | 'optional'): string[] {
  const declared = Object.keys(def.input?.[group] ?? {});
  const order = def.input_order?.[group];
  if (!order) return declared;
  const rest = declared.filter((n) => !order.includes(n));
  return [...order.filter((n) => declared.includes(n)), ...rest];
}

/** The declared type of an input: a list (V1 combo) becomes 'COMBO'. */
export function inputType(spec: unknown[] | undefined): { type: string; options?: string[]; opts: Record<string, unknown> } {
  const raw = spec?.[0];
  const opts = (spec?.[1] ?? {}) as Record<string, unknown>;
  if (Array.isArray(raw)) return { type: 'COMBO', options: raw.map(String), opts };
  const type = String(raw ?? '*');
  if (type === 'COMBO') {
    const o = opts.options;
    return { type, options: Array.isArray(o) ? o.map(String) : [], opts };
  }
  return { type, opts };
}

const cache = new WeakMap<NodeDef, NodeLayout>();

export function nodeLayout(def: NodeDef): NodeLayout {
  const hit = cache.get(def);
  if (hit) return hit;
  const widgets: WidgetSpec[] = [];
  const sockets: SocketSpec[] = [];
  const widgetTypes: Record<string, string> = {};
  for (const group of ['required', 'optional'] as const) {
    const optional = group === 'optional';
    for (const name of orderedNames(def, group)) {
      const spec = def.input?.[group]?.[name] as unknown[] | undefined;
      const { type, options, opts } = inputType(spec);
      if (!WIDGET_TYPES.has(type) || opts.forceInput) {
        sockets.push({ name, type, optional, opts });
        continue;
      }
      widgetTypes[name] = type;
      widgets.push({ name, kind: type as WidgetKind, opts, options, serialize: true, optional });
      const cag = opts.control_after_generate;
      const isSeed = type === 'INT' && (name === 'seed' || name === 'noise_seed');
      if ((type === 'INT' || type === 'FLOAT') && (cag === true || (cag === undefined && isSeed))) {
        widgets.push({ name: 'control_after_generate', kind: 'CONTROL', opts: {}, serialize: false, target: name, optional });
      } else if (type === 'COMBO' && cag) {
        widgets.push({ name: 'control_after_generate', kind: 'CONTROL', opts: {}, serialize: false, target: name, optional });
        widgets.push({ name: 'control_filter_list', kind: 'CONTROL_FILTER', opts: {}, serialize: false, target: name, optional });
      }
      if (type === 'COMBO' && (opts.image_upload || opts.video_upload || opts.audio_upload)) {
        widgets.push({ name: 'upload', kind: 'UPLOAD', opts: {}, serialize: false, target: name, optional });
      }
    }
  }
  const layout = { widgets, sockets, widgetTypes };
  cache.set(def, layout);
  return layout;
}

export function defaultWidgetValue(w: WidgetSpec): unknown {
  const d = w.opts.default;
  switch (w.kind) {
    case 'INT':
    case 'FLOAT':
      if (typeof d === 'number') return d;
      if (typeof w.opts.min === 'number') return Math.max(0, w.opts.min as number);
      return 0;
    case 'STRING':
      return typeof d === 'string' ? d : '';
    case 'BOOLEAN':
      return typeof d === 'boolean' ? d : false;
    case 'COMBO':
      if (d !== undefined && d !== null) return d;
      return w.options?.[0] ?? '';
    case 'CONTROL':
      return 'randomize';
    case 'CONTROL_FILTER':
      return '';
    case 'UPLOAD':
      return 'image';
  }
}

export function defaultWidgetValues(def: NodeDef): unknown[] {
  return nodeLayout(def).widgets.map(defaultWidgetValue);
}

/** Normalises a legacy control value (`true` in old files means randomize). */
export function controlMode(v: unknown): ControlMode {
  if (v === true) return 'randomize';
  if (v === false) return 'fixed';
  return (CONTROL_VALUES as readonly string[]).includes(String(v)) ? (v as ControlMode) : 'fixed';
}

/** Rounds and clamps a number for a widget's min/max/step/round options. */
export function clampNumber(w: Pick<WidgetSpec, 'kind' | 'opts'>, v: number): number {
  if (!Number.isFinite(v)) v = 0;
  const min = typeof w.opts.min === 'number' ? (w.opts.min as number) : -Infinity;
  const max = typeof w.opts.max === 'number' ? (w.opts.max as number) : Infinity;
  if (w.kind === 'INT') {
    v = Math.round(v);
  } else {
    const round = w.opts.round;
    const step = typeof w.opts.step === 'number' ? (w.opts.step as number) : 0;
    const r = typeof round === 'number' && round > 0 ? round : round === false ? 0 : step > 0 ? step : 0;
    if (r > 0) {
      const decimals = Math.max(0, Math.ceil(-Math.log10(r)) + 1);
      v = Number((Math.round(v / r) * r).toFixed(Math.min(10, decimals)));
    }
  }
  return Math.min(max, Math.max(min, v));
}

export function numberStep(w: Pick<WidgetSpec, 'kind' | 'opts'>): number {
  const s = w.opts.step;
  if (typeof s === 'number' && s > 0) return s;
  return w.kind === 'INT' ? 1 : 0.01;
}

/** ComfyUI's seed control, applied after a prompt is queued. */
export function applyControl(
  w: Pick<WidgetSpec, 'kind' | 'opts' | 'options'>,
  value: unknown,
  mode: ControlMode,
  random: () => number = Math.random,
): unknown {
  if (mode === 'fixed') return value;
  if (w.kind === 'COMBO') {
    const opts = w.options ?? [];
    if (!opts.length) return value;
    let i = opts.indexOf(String(value));
    if (mode === 'increment') i = Math.min(opts.length - 1, i + 1);
    else if (mode === 'decrement') i = Math.max(0, i - 1);
    else i = Math.floor(random() * opts.length);
    return opts[i];
  }
  const v = Number(value) || 0;
  const step = numberStep(w);
  const min = typeof w.opts.min === 'number' ? (w.opts.min as number) : 0;
  // ComfyUI caps randomized seeds at 2^50 (safe for JS numbers).
  const max = Math.min(typeof w.opts.max === 'number' ? (w.opts.max as number) : 1125899906842624, 1125899906842624);
  let next = v;
  if (mode === 'increment') next = v + step;
  else if (mode === 'decrement') next = v - step;
  else if (mode === 'randomize') {
    const range = (max - min) / step;
    next = Math.floor(random() * range) * step + min;
  }
  if (next < min) next = min;
  if (next > max) next = max;
  return w.kind === 'INT' ? Math.round(next) : next;
}

/**
 * The widgets of a node that have a control after generate (seeds and the like), as
 * `[controlled widget index, mode, control widget index]`; applied after each queue.
 */
export function controlledWidgets(node: Pick<WfNode, 'type' | 'widgets_values'>, defs: ObjectInfo): [number, ControlMode, number][] {
  const def = defs[node.type];
  if (!def || !Array.isArray(node.widgets_values)) return [];
  const values = node.widgets_values;
  const widgets = nodeLayout(def).widgets;
  const out: [number, ControlMode, number][] = [];
  widgets.forEach((w, i) => {
    if (w.kind !== 'CONTROL') return;
    const target = widgets.findIndex((x) => x.name === w.target && x.serialize);
    if (target >= 0) out.push([target, controlMode(values[i]), i]);
  });
  return out;
}
