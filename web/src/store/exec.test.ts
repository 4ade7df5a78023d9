import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { canvasNodeId, handleServerEvent, useExec, validationErrors } from './exec';
import { useGraph } from './graph';
import { useUi } from './ui';
import { normalizeWorkflow } from '../lib/workflow';
import { sdDefs } from '../test/fixtures/sd-defs';
import subgraphDoc from '../test/fixtures/subgraph-and-group-node.json';

const mem = new Map<string, string>();
(globalThis as unknown as { localStorage: Partial<Storage> }).localStorage ??= {
  getItem: (k: string) => mem.get(k) ?? null,
  setItem: (k: string, v: string) => void mem.set(k, String(v)),
  removeItem: (k: string) => void mem.delete(k),
};

const initial = useExec.getState();
const s = () => useExec.getState();
let requests: { url: string; method: string; body: unknown }[] = [];

/** Answers every request with `reply(url)` (JSON) and records it. */
function mockFetch(reply: (url: string) => { status?: number; json: unknown }) {
  vi.stubGlobal('fetch', async (url: string, init?: RequestInit) => {
    requests.push({ url, method: init?.method ?? 'GET', body: typeof init?.body === 'string' ? JSON.parse(init.body) : init?.body });
    const r = reply(url);
    return new Response(JSON.stringify(r.json), { status: r.status ?? 200, headers: { 'Content-Type': 'application/json' } });
  });
}

beforeEach(() => {
  requests = [];
  useExec.setState(initial, true);
  useUi.setState({ toasts: [] });
  mockFetch((url) => ({ json: url.startsWith('/queue') ? { queue_running: [], queue_pending: [] } : {} }));
});
afterEach(() => vi.unstubAllGlobals());

describe('socket events', () => {
  it('maps execution ids inside subgraphs and group nodes to the canvas node', () => {
    expect(canvasNodeId('12')).toBe('12');
    expect(canvasNodeId('12:5')).toBe('12');
    expect(canvasNodeId('12:5:3')).toBe('12');
  });

  it('follows a prompt that runs inside a subgraph and a group node', () => {
    handleServerEvent({ type: 'execution_start', data: { prompt_id: 'p1', timestamp: 1 } });
    expect(s().runningPromptId).toBe('p1');
    handleServerEvent({ type: 'execution_cached', data: { prompt_id: 'p1', nodes: ['1', '2:5'], timestamp: 1 } });
    expect(s().cached).toEqual({ 1: true, 2: true });
    handleServerEvent({ type: 'executing', data: { prompt_id: 'p1', node: '2:6', display_node: '2:6' } });
    expect(s().runningNodeId).toBe('2');
    expect(s().cached).toEqual({ 1: true }); // something inside 2 ran
    handleServerEvent({ type: 'progress', data: { prompt_id: 'p1', node: '2:6', value: 3, max: 4 } });
    expect(s().progress).toEqual({ 2: { value: 3, max: 4 } });
    const image = { filename: 'subgraph_e2e_00001_.png', subfolder: '', type: 'output' };
    handleServerEvent({ type: 'executed', data: { prompt_id: 'p1', node: '3:1', display_node: '3:1', output: { images: [image], text: ['a', 'b'] } } });
    expect(s().outputs['3']).toEqual([image]);
    expect(s().outputText['3']).toBe('a\nb');
    expect(s().executed).toEqual({ 2: true, 3: true });
    handleServerEvent({ type: 'execution_success', data: { prompt_id: 'p1', timestamp: 2 } });
    expect(s().lastResult).toEqual({ promptId: 'p1', status: 'success' });
    handleServerEvent({ type: 'executing', data: { prompt_id: 'p1', node: null } });
    expect([s().runningNodeId, s().runningPromptId]).toEqual([null, null]);
  });

  it('puts an execution error inside a container on the container, naming the inner node', () => {
    handleServerEvent({
      type: 'execution_error',
      data: {
        prompt_id: 'p2', node_id: '2:6', node_type: 'ImageScale', executed: [], exception_message: 'boom', exception_type: 'RuntimeError',
        traceback: [], current_inputs: { width: 48 }, current_outputs: [], timestamp: 3,
      },
    });
    expect(s().nodeErrors['2']).toEqual([{ type: 'RuntimeError', message: 'ImageScale 2:6: boom', inputs: { width: 48 }, source: 'execution' }]);
    expect(s().lastResult).toEqual({ promptId: 'p2', status: 'error' });
    expect(useUi.getState().toasts.at(-1)?.text).toBe('Error in ImageScale #2:6: boom');
  });

  it('takes the queue length from status and ignores feature flags', () => {
    handleServerEvent({ type: 'status', data: { status: { exec_info: { queue_remaining: 4 } } } });
    expect(s().queueRemaining).toBe(4);
    const before = s();
    handleServerEvent({ type: 'feature_flags', data: { supports_preview_metadata: true } });
    expect(s()).toBe(before);
    handleServerEvent({ type: 'execution_interrupted', data: { prompt_id: 'p3', node_id: null, node_type: null, executed: [], timestamp: 4 } });
    expect(s().lastResult).toEqual({ promptId: 'p3', status: 'interrupted' });
  });

  it('shows a preview on the running node, or on the node its metadata names', () => {
    useExec.setState({ runningNodeId: '7' });
    handleServerEvent({ type: 'preview', data: { blob: new Blob([new Uint8Array([1])], { type: 'image/jpeg' }) } });
    handleServerEvent({ type: 'preview', data: { nodeId: '2:6', blob: new Blob([new Uint8Array([1])], { type: 'image/jpeg' }) } });
    expect(Object.keys(s().previews).sort()).toEqual(['2', '7']);
    handleServerEvent({ type: 'executed', data: { prompt_id: 'p', node: '7', output: {} } });
    expect(Object.keys(s().previews)).toEqual(['2']);
  });
});

describe('validation errors', () => {
  it('land on the canvas node; inner ones are named and merged on their container', () => {
    const errors = validationErrors({
      '3': { errors: [{ type: 'required_input_missing', message: 'Required input is missing', details: 'images', extra_info: { input_name: 'images' } }], class_type: 'SaveImage' },
      '2:6': { errors: [{ type: 'value_smaller_than_min', message: 'Value -1 smaller than min of 0', extra_info: { input_name: 'width' } }], class_type: 'ImageScale' },
      '2:5': { errors: [{ type: 'x', message: 'other' }], class_type: 'ImageInvert' },
    });
    expect(errors['3']).toEqual([{ type: 'required_input_missing', message: 'Required input is missing', details: 'images', input: 'images', source: 'validation' }]);
    expect(errors['2'].map((e) => [e.message, e.input])).toEqual([
      ['ImageScale 2:6: Value -1 smaller than min of 0', undefined],
      ['ImageInvert 2:5: other', undefined],
    ]);
  });
});

describe('queueing', () => {
  beforeEach(() => {
    useGraph.getState().setDefs(sdDefs);
    useGraph.getState().load(normalizeWorkflow(subgraphDoc), { name: 'subgraphs' });
  });

  it('posts the editor workflow, definitions included, for the server to convert', async () => {
    mockFetch((url) => ({ json: url === '/prompt' ? { prompt_id: 'p9', number: 1, node_errors: {} } : { queue_running: [], queue_pending: [] } }));
    expect(await s().queuePrompt({ front: true })).toBe('p9');
    const post = requests.find((r) => r.url === '/prompt')!;
    const body = post.body as { prompt: Record<string, unknown>; client_id: string; front: boolean };
    expect(post.method).toBe('POST');
    expect(body.client_id).toBe(s().clientId);
    expect(body.front).toBe(true);
    expect(body.prompt.definitions).toEqual(subgraphDoc.definitions);
    expect((body.prompt.extra as Record<string, unknown>).groupNodes).toEqual(subgraphDoc.extra.groupNodes);
    expect((body.prompt.nodes as { type: string }[]).map((n) => n.type)).toEqual(['StubImage', 'c0ffee00-1234-4abc-8def-0123456789ab', 'workflow>Finish']);
    expect(s().myPrompts).toEqual({ p9: true });
  });

  it("shows the server's refusal and its node errors", async () => {
    mockFetch(() => ({
      status: 400,
      json: {
        error: { type: 'missing_node_type', message: 'Cannot execute because this workflow uses node types Weft does not have: Mystery', details: 'Mystery' },
        node_errors: { '2:6': { errors: [{ type: 'x', message: 'bad width' }], class_type: 'ImageScale' } },
      },
    }));
    expect(await s().queuePrompt()).toBeNull();
    expect(useUi.getState().toasts.at(-1)?.text).toBe('Cannot execute because this workflow uses node types Weft does not have: Mystery');
    expect(s().nodeErrors['2'][0].message).toBe('ImageScale 2:6: bad width');
  });
});
