import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { isPng, openFile } from './files';
import { template } from '../test/shared-fixtures';

const PNG = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 0]);
const converted = {
  last_node_id: 11, last_link_id: 1, version: 0.4, groups: [], config: {}, extra: {},
  nodes: [
    { id: 10, type: 'EmptyImage', pos: [50, 80], size: [320, 126], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [1] }], widgets_values: [96, 64, 1, 255] },
    { id: 11, type: 'ImageInvert', pos: [450, 80], size: [320, 30], inputs: [{ name: 'image', type: 'IMAGE', link: 1 }], outputs: [] },
  ],
  links: [[1, 10, 0, 11, 0, 'IMAGE']],
};
const apiPrompt = {
  10: { class_type: 'EmptyImage', inputs: { width: 96, height: 64, batch_size: 1, color: 255 } },
  11: { class_type: 'ImageInvert', inputs: { image: ['10', 0] } },
};

let requests: { url: string; body: BodyInit | null | undefined; type?: string }[] = [];
let png: { workflow: unknown; prompt: unknown } = { workflow: null, prompt: null };

beforeEach(() => {
  requests = [];
  vi.stubGlobal('fetch', async (url: string, init?: RequestInit) => {
    requests.push({ url, body: init?.body, type: (init?.headers as Record<string, string>)?.['Content-Type'] });
    const json = url === '/api/weft/convert?to=editor' ? converted : png;
    return new Response(JSON.stringify(json), { status: 200 });
  });
});
afterEach(() => vi.unstubAllGlobals());

const file = (data: BlobPart, name: string) => Object.assign(new Blob([data]), { name });

describe('opening files', () => {
  it('opens editor JSON as it is, without the server', async () => {
    const opened = await openFile(file(JSON.stringify(template('default')), 'default.json'));
    expect(opened.source).toBe('workflow');
    expect(opened.name).toBe('default');
    expect(opened.workflow.nodes).toHaveLength((template('default').nodes as unknown[]).length);
    expect(requests).toEqual([]);
  });

  it('has the server convert API JSON', async () => {
    const opened = await openFile(file(JSON.stringify(apiPrompt), 'api.json'));
    expect(opened.source).toBe('api');
    expect(requests.map((r) => r.url)).toEqual(['/api/weft/convert?to=editor']);
    expect(JSON.parse(String(requests[0].body))).toEqual(apiPrompt);
    expect(opened.workflow.nodes.map((n) => n.id)).toEqual([10, 11]);
    expect(opened.workflow.links).toEqual([[1, 10, 0, 11, 0, 'IMAGE']]);
  });

  it('has the server read a PNG: its workflow, else its prompt converted', async () => {
    expect(isPng(PNG)).toBe(true);
    png = { workflow: template('default'), prompt: apiPrompt };
    let opened = await openFile(file(PNG, 'out.png'));
    expect(opened.source).toBe('png-workflow');
    expect(requests.map((r) => [r.url, r.type])).toEqual([['/api/weft/convert', 'image/png']]);
    expect(opened.workflow.nodes).toHaveLength((template('default').nodes as unknown[]).length);

    requests = [];
    png = { workflow: null, prompt: apiPrompt };
    opened = await openFile(file(PNG, 'out.png'));
    expect(opened.source).toBe('png-prompt');
    expect(requests.map((r) => r.url)).toEqual(['/api/weft/convert', '/api/weft/convert?to=editor']);
    expect(opened.workflow.nodes).toHaveLength(2);

    png = { workflow: null, prompt: null };
    await expect(openFile(file(PNG, 'out.png'))).rejects.toThrow('This PNG carries no workflow');
  });

  it('refuses other files', async () => {
    await expect(openFile(file('{"foo": 1}', 'x.json'))).rejects.toThrow(/Not a workflow/);
    await expect(openFile(file('nope', 'x.json'))).rejects.toThrow(/Not a workflow/);
  });
});
