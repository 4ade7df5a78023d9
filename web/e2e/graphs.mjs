// Editor-format graphs for the e2e tests, built from the test node pack (`--test-nodes`).

/** n(id, type, [x, y], widgets_values, inputs [[name, type]], outputs [[name, type]], extra) */
function n(id, type, pos, widgets_values, inputs = [], outputs = [], extra = {}) {
  const node = {
    id, type, pos, size: extra.size ?? [300, 110], flags: {}, order: 0, mode: 0,
    inputs: inputs.map(([name, t]) => ({ name, type: t, link: null })),
    outputs: outputs.map(([name, t], i) => ({ name, type: t, links: [], slot_index: i })),
    properties: { 'Node name for S&R': type },
    ...extra,
  };
  if (widgets_values) node.widgets_values = widgets_values;
  delete node.size_;
  return node;
}

export function graph(nodes, links, extra = {}) {
  return {
    last_node_id: Math.max(...nodes.map((x) => x.id)),
    last_link_id: links.length ? Math.max(...links.map((l) => l[0])) : 0,
    nodes, links, groups: extra.groups ?? [], config: {}, extra: {}, version: 0.4,
  };
}

/** StubImage -> TestSleep (progress) -> ImageInvert -> SaveImage: the e2e "default graph". */
export function sleepGraph({ seconds = 1.5, prefix = 'weft_e2e', size = 256 } = {}) {
  return graph(
    [
      n(1, 'StubImage', [40, 120], ['NOISE', size, size, 1], [], [['IMAGE', 'IMAGE']], { size: [300, 130] }),
      n(2, 'TestSleep', [400, 120], [seconds], [['value', '*']], [['value', '*']], { size: [260, 60] }),
      n(3, 'ImageInvert', [720, 120], undefined, [['image', 'IMAGE']], [['IMAGE', 'IMAGE']], { size: [200, 30] }),
      n(4, 'SaveImage', [980, 120], [prefix], [['images', 'IMAGE']], [], { size: [340, 340] }),
    ],
    [[1, 1, 0, 2, 0, '*'], [2, 2, 0, 3, 0, 'IMAGE'], [3, 3, 0, 4, 0, 'IMAGE']],
    { groups: [{ id: 1, title: 'Make an image', bounding: [20, 60, 660, 260], color: '#3f789e', font_size: 22 }] },
  );
}

/** StubImage -> TestFail -> SaveImage. */
export function failGraph(message = 'boom from the e2e test') {
  return graph(
    [
      n(1, 'StubImage', [40, 120], ['WHITE', 64, 64, 1], [], [['IMAGE', 'IMAGE']], { size: [300, 130] }),
      n(2, 'TestFail', [400, 120], [message], [['value', '*']], [['value', '*']], { size: [300, 60] }),
      n(3, 'SaveImage', [760, 120], ['weft_fail'], [['images', 'IMAGE']], [], { size: [300, 260] }),
    ],
    [[1, 1, 0, 2, 0, '*'], [2, 2, 0, 3, 0, 'IMAGE']],
  );
}

/** Unlinked nodes for link tests: an IMAGE+MASK source, a SaveImage and a TestSleep. */
export function linkGraph() {
  return graph(
    [
      n(1, 'EmptyImage', [40, 60], [64, 64, 1, 0], [], [['IMAGE', 'IMAGE']], { size: [300, 130] }),
      n(2, 'ImagePadForOutpaint', [400, 60], [0, 0, 0, 0, 40], [['image', 'IMAGE']], [['IMAGE', 'IMAGE'], ['MASK', 'MASK']], { size: [300, 170] }),
      n(3, 'SaveImage', [800, 60], ['weft_links'], [['images', 'IMAGE']], [], { size: [300, 200] }),
      n(4, 'TestSleep', [800, 360], [0.1], [['value', '*']], [['value', '*']], { size: [260, 60] }),
    ],
    [[1, 1, 0, 2, 0, 'IMAGE']],
  );
}

/** A graph of `count` nodes (chains of StubImage -> ImageScale -> ImageInvert -> SaveImage). */
export function bigGraph(count = 100) {
  const nodes = [];
  const links = [];
  let id = 0;
  let link = 0;
  const chains = Math.ceil(count / 4);
  for (let c = 0; c < chains && nodes.length < count; c++) {
    const y = 40 + (c % 10) * 260;
    const x0 = Math.floor(c / 10) * 1500;
    const chain = [
      n(++id, 'StubImage', [x0, y], ['BLACK', 64, 64, 1], [], [['IMAGE', 'IMAGE']], { size: [300, 130] }),
      n(++id, 'ImageScale', [x0 + 340, y], ['nearest-exact', 32, 32, 'disabled'], [['image', 'IMAGE']], [['IMAGE', 'IMAGE']], { size: [300, 150] }),
      n(++id, 'ImageInvert', [x0 + 680, y], undefined, [['image', 'IMAGE']], [['IMAGE', 'IMAGE']], { size: [200, 30] }),
      n(++id, 'SaveImage', [x0 + 920, y], [`chain${c}`], [['images', 'IMAGE']], [], { size: [300, 200] }),
    ].slice(0, count - nodes.length);
    for (let i = 1; i < chain.length; i++) links.push([++link, chain[i - 1].id, 0, chain[i].id, 0, 'IMAGE']);
    nodes.push(...chain);
  }
  return graph(nodes, links);
}
