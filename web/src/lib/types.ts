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

/** Node types that exist only in the editor (never sent to the server). */
export const VIRTUAL_TYPES = new Set(['Reroute', 'PrimitiveNode', 'Note', 'MarkdownNote']);
