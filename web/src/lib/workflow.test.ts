import { describe, expect, it } from 'vitest';
import { containerTypes, detectJson, missingTypes, normalizeWorkflow } from './workflow';
import { sdDefs } from '../test/fixtures/sd-defs';
import { template } from '../test/shared-fixtures';
import subgraphDoc from '../test/fixtures/subgraph-and-group-node.json';

const defaultJson = template('default');
const SUBGRAPH = 'c0ffee00-1234-4abc-8def-0123456789ab';

describe('detect / normalise', () => {
  it('detects editor and API JSON', () => {
    expect(detectJson(defaultJson).kind).toBe('workflow');
    expect(detectJson({ workflow: defaultJson }).kind).toBe('workflow');
    expect(detectJson({ 3: { class_type: 'KSampler', inputs: {} } }).kind).toBe('api');
    expect(detectJson({ prompt: { 3: { class_type: 'KSampler', inputs: {} } } }).kind).toBe('api');
    expect(detectJson({ foo: 1 }).kind).toBe('unknown');
  });

  it('drops unlinked widget inputs of newer frontends and renumbers slots', () => {
    const g = normalizeWorkflow({
      nodes: [
        { id: 1, type: 'EmptyImage', pos: { 0: 5, 1: 6 }, size: [1, 2], outputs: [{ name: 'IMAGE', type: 'IMAGE', links: [1] }],
          inputs: [{ name: 'width', type: 'INT', widget: { name: 'width' }, link: null }] },
        { id: 2, type: 'ImageInvert', pos: [0, 0], size: [1, 2],
          inputs: [{ name: 'x', type: 'INT', widget: { name: 'x' }, link: null }, { name: 'image', type: 'IMAGE', link: 1 }], outputs: [] },
      ],
      links: [{ id: 1, origin_id: 1, origin_slot: 0, target_id: 2, target_slot: 1, type: 'IMAGE' }],
    });
    expect(g.nodes[0].pos).toEqual([5, 6]);
    expect(g.nodes[0].inputs).toEqual([]);
    expect(g.nodes[1].inputs).toEqual([{ name: 'image', type: 'IMAGE', link: 1 }]);
    expect(g.links).toEqual([[1, 1, 0, 2, 0, 'IMAGE']]);
    expect(g.last_link_id).toBe(1);
  });

  it('keeps unknown top-level and node fields', () => {
    const g = normalizeWorkflow({ ...defaultJson, id: 'abc', revision: 3 });
    expect(g.id).toBe('abc');
    expect(g.nodes.find((n) => n.id === 7)!.bgcolor).toBe('#335');
  });
});

describe('subgraphs and group nodes', () => {
  it('lists the types a document defines', () => {
    const types = containerTypes(subgraphDoc as never);
    expect([...types.keys()].sort()).toEqual([SUBGRAPH, 'workflow/Finish', 'workflow>Finish']);
    expect(types.get(SUBGRAPH)).toEqual({ kind: 'subgraph', name: 'Invert and scale', nodeCount: 2 });
    expect(types.get('workflow>Finish')).toEqual({ kind: 'group-node', name: 'Finish', nodeCount: 2 });
    // Memoised on the sources, so a store selector gets the same map back.
    expect(containerTypes(subgraphDoc as never)).toBe(types);
    expect(containerTypes({})).toEqual(new Map());
  });

  it('finds definitions nested in definitions', () => {
    const doc = { definitions: { subgraphs: [{ id: 'outer', name: 'Outer', nodes: [], definitions: { subgraphs: [{ id: 'inner', name: 'Inner', nodes: [{}] }] } }] } };
    expect(containerTypes(doc).get('inner')).toEqual({ kind: 'subgraph', name: 'Inner', nodeCount: 1 });
  });

  it('does not call subgraph instances and group nodes missing', () => {
    const wf = normalizeWorkflow(subgraphDoc);
    expect(missingTypes(wf, sdDefs)).toEqual([]);
    const { definitions: _d, ...withoutDefinitions } = wf;
    expect(missingTypes({ ...withoutDefinitions, extra: {} }, sdDefs)).toEqual([SUBGRAPH, 'workflow>Finish']);
  });

  it('keeps the definitions and a subgraph instance\'s unlinked widget inputs', () => {
    const wf = normalizeWorkflow(subgraphDoc);
    expect(wf.definitions).toEqual(subgraphDoc.definitions);
    expect(wf.extra.groupNodes).toEqual(subgraphDoc.extra.groupNodes);
    const instance = wf.nodes.find((n) => n.id === 2)!;
    expect(instance.inputs!.map((i) => [i.name, i.link])).toEqual([['image', 1], ['width', null]]);
    expect(instance.widgets_values).toEqual([48]);
  });
});
