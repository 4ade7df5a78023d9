// Widget controls: numbers (drag and type), combos, text, toggles, seed control, image upload.

import { memo, useEffect, useRef, useState } from 'react';
import type { WidgetSpec } from '../lib/widgets';
import { clampNumber, CONTROL_VALUES, controlMode, numberStep } from '../lib/widgets';
import { api, parseImageValue, viewUrl } from '../lib/api';
import { useGraph } from '../store/graph';
import { toast } from '../store/ui';

export interface WidgetProps {
  spec: WidgetSpec;
  value: unknown;
  onChange(v: unknown, commit: boolean): void;
  disabled?: boolean;
  /** For UPLOAD: the combo value it fills. */
  onUpload?(name: string): void;
}

function formatNumber(spec: WidgetSpec, v: number): string {
  if (spec.kind === 'INT') return String(Math.round(v));
  const step = numberStep(spec);
  const round = typeof spec.opts.round === 'number' ? (spec.opts.round as number) : step;
  const decimals = Math.min(6, Math.max(0, Math.ceil(-Math.log10(round || 0.01))));
  return v.toFixed(decimals);
}

export const NumberWidget = memo(function NumberWidget({ spec, value, onChange, disabled }: WidgetProps) {
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState('');
  const drag = useRef<{ x: number; start: number; moved: boolean; last: number } | null>(null);
  const num = typeof value === 'number' ? value : Number(value) || 0;
  const step = numberStep(spec);

  const bump = (dir: number) => onChange(clampNumber(spec, num + dir * step), true);

  const onPointerDown = (e: React.PointerEvent) => {
    if (disabled || e.button !== 0) return;
    (e.target as HTMLElement).setPointerCapture(e.pointerId);
    drag.current = { x: e.clientX, start: num, moved: false, last: num };
  };
  const onPointerMove = (e: React.PointerEvent) => {
    const d = drag.current;
    if (!d) return;
    const dx = e.clientX - d.x;
    if (!d.moved && Math.abs(dx) < 4) return;
    d.moved = true;
    const next = clampNumber(spec, d.start + Math.round(dx / 5) * step);
    if (next !== d.last) {
      d.last = next;
      onChange(next, false);
    }
  };
  const onPointerUp = () => {
    const d = drag.current;
    drag.current = null;
    if (!d) return;
    if (d.moved) onChange(d.last, true);
    else {
      setText(formatNumber(spec, num));
      setEditing(true);
    }
  };
  const finish = (apply: boolean) => {
    setEditing(false);
    if (!apply) return;
    const parsed = Number(text.trim());
    if (text.trim() !== '' && Number.isFinite(parsed)) onChange(clampNumber(spec, parsed), true);
  };

  return (
    <div className="w-number nodrag" data-widget={spec.name}>
      <button className="w-arrow" tabIndex={-1} disabled={disabled} onClick={() => bump(-1)} aria-label={`decrease ${spec.name}`}>
        ◂
      </button>
      {editing ? (
        <input
          className="w-number-input"
          autoFocus
          value={text}
          onChange={(e) => setText(e.target.value)}
          onFocus={(e) => e.target.select()}
          onBlur={() => finish(true)}
          onKeyDown={(e) => {
            if (e.key === 'Enter') finish(true);
            else if (e.key === 'Escape') finish(false);
            e.stopPropagation();
          }}
        />
      ) : (
        <div
          className="w-number-body"
          role="spinbutton"
          aria-valuenow={num}
          aria-label={spec.name}
          onPointerDown={onPointerDown}
          onPointerMove={onPointerMove}
          onPointerUp={onPointerUp}
          title={`${spec.name}: drag to change, click to type${spec.opts.min !== undefined ? ` (min ${spec.opts.min}` : ''}${spec.opts.max !== undefined ? `, max ${spec.opts.max})` : spec.opts.min !== undefined ? ')' : ''}`}
        >
          <span className="w-label">{spec.name}</span>
          <span className="w-value">{formatNumber(spec, num)}</span>
        </div>
      )}
      <button className="w-arrow" tabIndex={-1} disabled={disabled} onClick={() => bump(1)} aria-label={`increase ${spec.name}`}>
        ▸
      </button>
    </div>
  );
});

export const ComboWidget = memo(function ComboWidget({ spec, value, onChange, disabled }: WidgetProps) {
  const options = spec.options ?? [];
  const v = value === undefined || value === null ? '' : String(value);
  const known = options.includes(v);
  return (
    <label className={`w-combo nodrag${known ? '' : ' w-invalid'}`} data-widget={spec.name}>
      <span className="w-label">{spec.name}</span>
      <select value={v} disabled={disabled} onChange={(e) => onChange(e.target.value, true)} title={known ? v : `${v} is not available on this server`}>
        {!known && <option value={v}>{v || '(none)'} ⚠</option>}
        {options.map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    </label>
  );
});

export const TextWidget = memo(function TextWidget({ spec, value, onChange, disabled }: WidgetProps) {
  const v = value === undefined || value === null ? '' : String(value);
  if (spec.opts.multiline) {
    return (
      <textarea
        className="w-text nodrag nowheel"
        data-widget={spec.name}
        placeholder={String(spec.opts.placeholder ?? spec.name)}
        value={v}
        disabled={disabled}
        spellCheck={false}
        onChange={(e) => onChange(e.target.value, false)}
        onBlur={() => onChange(v, true)}
      />
    );
  }
  return (
    <label className="w-string nodrag" data-widget={spec.name}>
      <span className="w-label">{spec.name}</span>
      <input
        value={v}
        disabled={disabled}
        spellCheck={false}
        placeholder={String(spec.opts.placeholder ?? '')}
        onChange={(e) => onChange(e.target.value, false)}
        onBlur={() => onChange(v, true)}
        onKeyDown={(e) => {
          if (e.key === 'Enter') (e.target as HTMLInputElement).blur();
        }}
      />
    </label>
  );
});

export const ToggleWidget = memo(function ToggleWidget({ spec, value, onChange, disabled }: WidgetProps) {
  const on = value === true || value === 'true';
  const label = on ? (spec.opts.label_on as string) ?? 'true' : (spec.opts.label_off as string) ?? 'false';
  return (
    <label className="w-toggle nodrag" data-widget={spec.name}>
      <span className="w-label">{spec.name}</span>
      <span className="w-toggle-value">{label}</span>
      <input type="checkbox" checked={on} disabled={disabled} onChange={(e) => onChange(e.target.checked, true)} />
      <span className={`w-switch${on ? ' on' : ''}`} />
    </label>
  );
});

export const ControlWidget = memo(function ControlWidget({ spec, value, onChange, disabled }: WidgetProps) {
  const mode = controlMode(value);
  return (
    <label className="w-combo w-control nodrag" data-widget={spec.name}>
      <span className="w-label">control after generate</span>
      <select value={mode} disabled={disabled} onChange={(e) => onChange(e.target.value, true)}>
        {CONTROL_VALUES.map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    </label>
  );
});

export function UploadWidget({ onUpload, disabled }: WidgetProps) {
  const input = useRef<HTMLInputElement>(null);
  const [busy, setBusy] = useState(false);
  const upload = async (file: File) => {
    setBusy(true);
    try {
      const res = await api.uploadImage(file, file.name);
      const name = res.subfolder ? `${res.subfolder}/${res.name}` : res.name;
      // The combo's option list comes from /object_info: refresh it so the new file is listed.
      try {
        useGraph.getState().setDefs(await api.objectInfo());
      } catch {
        /* keep old lists */
      }
      onUpload?.(name);
      toast('success', `Uploaded ${name}`);
    } catch (e) {
      toast('error', `Upload failed: ${(e as Error).message}`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="w-upload nodrag" data-widget="upload">
      <button disabled={disabled || busy} onClick={() => input.current?.click()}>
        {busy ? 'uploading…' : 'choose file to upload'}
      </button>
      <input
        ref={input}
        type="file"
        accept="image/*"
        hidden
        data-testid="upload-input"
        onChange={(e) => {
          const f = e.target.files?.[0];
          if (f) void upload(f);
          e.target.value = '';
        }}
      />
    </div>
  );
}

export function ImagePreview({ value }: { value: unknown }) {
  const [failed, setFailed] = useState(false);
  const v = typeof value === 'string' ? value : '';
  useEffect(() => setFailed(false), [v]);
  if (!v) return null;
  return (
    <div className="wn-loadimage">
      {failed ? <div className="wn-muted-text">no preview for {v}</div> : <img src={viewUrl(parseImageValue(v), true)} alt={v} onError={() => setFailed(true)} />}
    </div>
  );
}

export function Widget(props: WidgetProps) {
  switch (props.spec.kind) {
    case 'INT':
    case 'FLOAT':
      return <NumberWidget {...props} />;
    case 'COMBO':
      return <ComboWidget {...props} />;
    case 'STRING':
      return <TextWidget {...props} />;
    case 'BOOLEAN':
      return <ToggleWidget {...props} />;
    case 'CONTROL':
      return <ControlWidget {...props} />;
    case 'UPLOAD':
      return <UploadWidget {...props} />;
    case 'CONTROL_FILTER':
      return (
        <label className="w-string nodrag" data-widget={props.spec.name}>
          <span className="w-label">control filter list</span>
          <input value={String(props.value ?? '')} onChange={(e) => props.onChange(e.target.value, false)} onBlur={() => props.onChange(props.value, true)} />
        </label>
      );
  }
}
