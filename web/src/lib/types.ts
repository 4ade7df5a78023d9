// ComfyUI wire formats: /object_info, editor (UI) workflow v0.4, API prompt.

export type InputSpec = unknown[];

export interface NodeDef {
  name: string;
  display_name?: string | null;
  description?: string;
  category?: string;
  python_module?: string;
  output_node?: boolean;
  input: {
    required?: Record<string, InputSpec>;
    optional?: Record<string, InputSpec>;
    hidden?: Record<string, unknown>;
  };
  input_order?: { required?: string[]; optional?: string[]; hidden?: string[] };
  output: string[];
  output_is_list?: boolean[];
  output_name?: string[];
  output_tooltips?: (string | null)[];
  deprecated?: boolean;
  experimental?: boolean;
}

export type ObjectInfo = Record<string, NodeDef>;

/** `[link_id, origin_id, origin_slot, target_id, target_slot, type]` */
export type LinkTuple = [number, number, number, number, number, string];

export interface WfInput {
  name: string;
  type: string;
  link: number | null;
  widget?: { name: string };
  label?: string;
  localized_name?: string;
  slot_index?: number;
  shape?: number;
  [k: string]: unknown;
}

export interface WfOutput {
  name: string;
  type: string;
  links: number[] | null;
  slot_index?: number;
  widget?: { name: string };
  label?: string;
  localized_name?: string;
  shape?: number;
  [k: string]: unknown;
}

export interface WfNode {
  id: number;
  type: string;
  pos: [number, number];
  size: [number, number];
  flags?: { collapsed?: boolean; pinned?: boolean; [k: string]: unknown };
  order?: number;
  mode?: number;
  inputs?: WfInput[];
  outputs?: WfOutput[];
  properties?: Record<string, unknown>;
  widgets_values?: unknown[] | Record<string, unknown>;
  title?: string;
  color?: string;
  bgcolor?: string;
  [k: string]: unknown;
}

export interface WfGroup {
  id?: number;
  title: string;
  bounding: [number, number, number, number];
  color?: string;
  font_size?: number;
  flags?: Record<string, unknown>;
  locked?: boolean;
  [k: string]: unknown;
}

export interface Workflow {
  id?: string;
  revision?: number;
  last_node_id: number;
  last_link_id: number;
  nodes: WfNode[];
  links: LinkTuple[];
  groups: WfGroup[];
  config: Record<string, unknown>;
  extra: Record<string, unknown>;
  version: number;
  [k: string]: unknown;
}

export type ApiInputValue = unknown;
export interface ApiNode {
  class_type: string;
  inputs: Record<string, ApiInputValue>;
  _meta?: { title?: string };
}
export type ApiPrompt = Record<string, ApiNode>;

export interface ImageRef {
  filename: string;
  subfolder: string;
  type: string;
}

export interface NodeErrorInfo {
  type: string;
  message: string;
  details?: string;
  extra_info?: { input_name?: string; [k: string]: unknown };
}

export interface NodeErrors {
  [nodeId: string]: {
    errors: NodeErrorInfo[];
    dependent_outputs?: string[];
    class_type?: string;
  };
}


/** A node's `output` in `executed` and in the history (`ui` of ComfyUI's nodes). */
export interface NodeOutput {
  images?: ImageRef[];
  text?: string | string[];
  [k: string]: unknown;
}

// Socket events (`/ws`), as the server sends them (src/wire/events.rs). Node ids are execution
// ids: a node inside a subgraph or group node is `<container id>:<inner id>` (nested: `12:5:3`).

export interface StatusEvent {
  type: 'status';
  data: { status: { exec_info: { queue_remaining: number } }; sid?: string };
}
export interface ExecutionStartEvent {
  type: 'execution_start';
  data: { prompt_id: string; timestamp: number };
}
export interface ExecutionCachedEvent {
  type: 'execution_cached';
  data: { prompt_id: string; nodes: string[]; timestamp: number };
}
/** `node: null` ends the prompt. */
export interface ExecutingEvent {
  type: 'executing';
  data: { prompt_id: string; node: string | null; display_node?: string };
}
export interface ProgressEvent {
  type: 'progress';
  data: { prompt_id: string; node: string; value: number; max: number };
}
export interface ExecutedEvent {
  type: 'executed';
  data: { prompt_id: string; node: string; display_node?: string; output: NodeOutput };
}
export interface ExecutionSuccessEvent {
  type: 'execution_success';
  data: { prompt_id: string; timestamp: number };
}
export interface ExecutionErrorEvent {
  type: 'execution_error';
  data: {
    prompt_id: string;
    node_id: string;
    node_type: string;
    executed: string[];
    exception_message: string;
    exception_type: string;
    traceback: string[];
    current_inputs: Record<string, unknown> | unknown[];
    current_outputs: string[];
    timestamp: number;
  };
}
export interface ExecutionInterruptedEvent {
  type: 'execution_interrupted';
  data: { prompt_id: string; node_id: string | null; node_type: string | null; executed: string[]; timestamp: number };
}
/** The server's answer to the client's `feature_flags`. */
export interface FeatureFlagsEvent {
  type: 'feature_flags';
  data: { supports_preview_metadata?: boolean; max_upload_size?: number };
}
/** A binary frame: a sampler step image (type 1, or type 4 with its metadata). */
export interface PreviewEvent {
  type: 'preview';
  data: { nodeId?: string; promptId?: string; blob: Blob };
}

export type ServerEvent =
  | StatusEvent
  | ExecutionStartEvent
  | ExecutionCachedEvent
  | ExecutingEvent
  | ProgressEvent
  | ExecutedEvent
  | ExecutionSuccessEvent
  | ExecutionErrorEvent
  | ExecutionInterruptedEvent
  | FeatureFlagsEvent
  | PreviewEvent;

export type ServerEventType = ServerEvent['type'];
