//! Legacy group nodes (`extra.groupNodes`, frontend `extensions/core/groupNode.ts`), rebuilt as
//! subgraph definitions so one expansion handles both.
//!
//! A group definition holds copies of its inner nodes (numbered by position, which become the
//! `outer:index` ids), the links between them as `[from, from_slot, to, to_slot, from_id, type]`,
//! and `external`: the outputs also used outside. The group node's own inputs are the inner inputs
//! no inner link feeds, then the converted widgets no inner link feeds; its outputs are the inner
//! outputs not used inside (or listed in `external`); its widgets are the inner widgets, in inner
//! node order, then the converted ones. This follows `GroupNodeConfig` closely but not in every
//! corner (custom input names and hidden widgets from `config` are not read).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value as Json};

use crate::document::{
    parse_node_as, slot_index, Graph, GroupWidget, IoSlot, Link, LinkEnd, Node, Subgraph,
    SubgraphKind,
};
use crate::EditorError;
use weft_graph::spec::{InputKind, NodeSpec};
use weft_graph::validate::Catalog;

/// The type prefixes of group node instances: `workflow>` (frontend 1.2.63 on) and `workflow/`.
pub(crate) fn group_name(node_type: &str) -> Option<&str> {
    node_type
        .strip_prefix("workflow>")
        .or_else(|| node_type.strip_prefix("workflow/"))
}

/// Builds the definition of group `name`, or `None` when one of its inner node types is unknown
/// (the frontend then treats the group node itself as missing); those types go to `missing`.
pub(crate) fn build<'a>(
    name: &str,
    data: &'a Map<String, Json>,
    catalog: &dyn Catalog,
    missing: &mut BTreeSet<String>,
) -> Result<Option<Subgraph<'a>>, EditorError> {
    let field = format!("extra.groupNodes.{name}");
    let raw_nodes = match data.get("nodes") {
        Some(Json::Array(nodes)) => nodes,
        _ => {
            return Err(EditorError::structure(
                None,
                format!("{field}.nodes"),
                "must be a list of nodes",
            ))
        }
    };
    let mut nodes: Vec<Node<'a>> = raw_nodes
        .iter()
        .enumerate()
        .map(|(i, node)| parse_node_as(node, &format!("{field}.nodes[{i}]"), i.to_string()))
        .collect::<Result<_, _>>()?;

    let mut kinds = Vec::with_capacity(nodes.len());
    let mut complete = true;
    for node in &nodes {
        let kind = match node.node_type.as_str() {
            "PrimitiveNode" => Inner::Primitive,
            "Reroute" => Inner::Reroute,
            "Note" | "MarkdownNote" => Inner::Note,
            other => match catalog.spec(other) {
                Some(spec) => Inner::Known(spec),
                None => {
                    missing.insert(other.to_owned());
                    complete = false;
                    Inner::Note
                }
            },
        };
        kinds.push(kind);
    }
    if !complete {
        return Ok(None);
    }

    // Inner links: `links_to[(node, slot)]` and `links_from[(node, slot)]`.
    let mut links_to: HashMap<(usize, usize), (usize, usize, String)> = HashMap::new();
    let mut links_from: HashMap<(usize, usize), Vec<(usize, usize)>> = HashMap::new();
    if let Some(Json::Array(links)) = data.get("links") {
        for link in links {
            let Some(items) = link.as_array() else {
                continue;
            };
            let index = |i: usize| items.get(i).and_then(slot_index);
            // Links from outside the group were stored with a null origin; skip them.
            let (Some(from), Some(from_slot), Some(to), Some(to_slot)) =
                (index(0), index(1), index(2), index(3))
            else {
                continue;
            };
            if from >= nodes.len() || to >= nodes.len() {
                continue;
            }
            let link_type = items
                .get(5)
                .and_then(Json::as_str)
                .unwrap_or("*")
                .to_owned();
            links_to.insert((to, to_slot), (from, from_slot, link_type));
            links_from
                .entry((from, from_slot))
                .or_default()
                .push((to, to_slot));
        }
    }
    let external: HashSet<(usize, usize)> = match data.get("external") {
        Some(Json::Array(list)) => list
            .iter()
            .filter_map(|e| {
                let items = e.as_array()?;
                Some((slot_index(items.first()?)?, slot_index(items.get(1)?)?))
            })
            .collect(),
        _ => HashSet::new(),
    };

    let mut graph = Graph::default();
    // Rewire the copies: their link ids pointed into the graph they were copied from.
    for node in &mut nodes {
        for input in &mut node.inputs {
            input.link = None;
        }
        for output in &mut node.outputs {
            output.links.clear();
        }
    }
    let mut internal: Vec<_> = links_to.iter().collect();
    internal.sort();
    for (&(to, to_slot), (from, from_slot, link_type)) in internal {
        let id = format!("inner:{to}:{to_slot}");
        if let Some(input) = nodes[to].inputs.get_mut(to_slot) {
            input.link = Some(id.clone());
        }
        if let Some(output) = nodes[*from].outputs.get_mut(*from_slot) {
            output.links.push(id.clone());
        }
        graph.links.insert(
            id,
            Link {
                origin: LinkEnd::Node(from.to_string()),
                origin_slot: *from_slot,
                target: LinkEnd::Node(to.to_string()),
                target_slot: to_slot,
                link_type: link_type.clone(),
            },
        );
    }

    let mut inputs: Vec<IoSlot> = Vec::new();
    let mut widgets: Vec<GroupWidget> = Vec::new();
    let mut converted: Vec<(usize, usize, &InputKind, String)> = Vec::new();
    let mut upload = false;
    let mut add_input = |graph: &mut Graph<'a>,
                         nodes: &mut [Node<'a>],
                         node: usize,
                         slot: usize,
                         name: String,
                         slot_type: String| {
        let id = format!("in:{}", inputs.len());
        graph.links.insert(
            id.clone(),
            Link {
                origin: LinkEnd::SubgraphInput,
                origin_slot: inputs.len(),
                target: LinkEnd::Node(node.to_string()),
                target_slot: slot,
                link_type: slot_type.clone(),
            },
        );
        if let Some(input) = nodes[node].inputs.get_mut(slot) {
            input.link = Some(id.clone());
        }
        inputs.push(IoSlot {
            name,
            slot_type,
            link_ids: vec![id],
        });
    };

    for index in 0..nodes.len() {
        match kinds[index] {
            Inner::Known(spec) => {
                let required = spec.inputs.iter().filter(|i| !i.optional);
                let optional = spec.inputs.iter().filter(|i| i.optional);
                let mut socket_position = 0;
                for input in required.chain(optional) {
                    let editor_slot = nodes[index]
                        .inputs
                        .iter()
                        .position(|i| i.name == input.name);
                    if input.kind.is_widget() {
                        let is_converted = editor_slot.is_some_and(|s| {
                            nodes[index].inputs[s].widget.as_deref() == Some(input.name)
                        });
                        if let (true, Some(slot)) = (is_converted, editor_slot) {
                            converted.push((index, slot, &input.kind, input.name.to_owned()));
                        } else {
                            widgets.push(GroupWidget {
                                targets: vec![(index.to_string(), input.name.to_owned())],
                                hidden_slots: hidden_slots(&input.kind, input.name),
                            });
                            if matches!(
                                input.kind,
                                InputKind::Combo {
                                    image_upload: true,
                                    ..
                                }
                            ) && !input.optional
                            {
                                upload = true;
                            }
                        }
                    } else {
                        let slot = editor_slot.unwrap_or(socket_position);
                        socket_position += 1;
                        if !links_to.contains_key(&(index, slot)) {
                            add_input(
                                &mut graph,
                                &mut nodes,
                                index,
                                slot,
                                input.name.to_owned(),
                                input.kind.type_name().to_owned(),
                            );
                        }
                    }
                }
            }
            Inner::Reroute => {
                if !links_to.contains_key(&(index, 0)) && !nodes[index].inputs.is_empty() {
                    let slot_type = nodes[index].inputs[0].slot_type.clone();
                    add_input(
                        &mut graph,
                        &mut nodes,
                        index,
                        0,
                        slot_type.clone(),
                        slot_type,
                    );
                }
            }
            Inner::Primitive => {
                let Some(targets) = links_from.get(&(index, 0)) else {
                    continue;
                };
                let mut widget_targets = Vec::new();
                let mut target_kind = None;
                for &(to, to_slot) in targets {
                    let Some(input) = nodes[to].inputs.get(to_slot) else {
                        continue;
                    };
                    let widget = input.widget.clone().unwrap_or_else(|| input.name.clone());
                    if let Inner::Known(spec) = kinds[to] {
                        target_kind = target_kind.or(spec.input(&widget).map(|i| &i.kind));
                    }
                    widget_targets.push((to.to_string(), widget));
                }
                // `checkPrimitiveConnection` turns on value control for every linked primitive.
                let hidden = match target_kind {
                    Some(InputKind::Int { .. } | InputKind::Float { .. }) => 1,
                    Some(InputKind::Combo { .. }) => 2,
                    _ => 0,
                };
                widgets.push(GroupWidget {
                    targets: widget_targets,
                    hidden_slots: hidden,
                });
            }
            Inner::Note => {}
        }
    }
    // Converted widgets come after every node's own inputs, as the frontend adds them last.
    for (index, slot, kind, name) in converted {
        if links_to.contains_key(&(index, slot)) {
            continue;
        }
        add_input(
            &mut graph,
            &mut nodes,
            index,
            slot,
            name.clone(),
            kind.type_name().to_owned(),
        );
        widgets.push(GroupWidget {
            targets: vec![(index.to_string(), name.clone())],
            hidden_slots: hidden_slots(kind, &name),
        });
    }
    if upload {
        widgets.push(GroupWidget {
            targets: Vec::new(),
            hidden_slots: 0,
        });
    }

    let mut outputs = Vec::new();
    for index in 0..nodes.len() {
        let count = match kinds[index] {
            Inner::Known(spec) => spec.outputs.len(),
            Inner::Reroute => 1,
            Inner::Primitive | Inner::Note => 0,
        };
        for slot in 0..count {
            let used_inside = links_from.contains_key(&(index, slot));
            if used_inside && !external.contains(&(index, slot)) {
                continue;
            }
            let id = format!("out:{}", outputs.len());
            let slot_type = nodes[index]
                .outputs
                .get(slot)
                .map_or_else(|| "*".to_owned(), |o| o.slot_type.clone());
            graph.links.insert(
                id.clone(),
                Link {
                    origin: LinkEnd::Node(index.to_string()),
                    origin_slot: slot,
                    target: LinkEnd::SubgraphOutput,
                    target_slot: outputs.len(),
                    link_type: slot_type.clone(),
                },
            );
            if let Some(output) = nodes[index].outputs.get_mut(slot) {
                output.links.push(id.clone());
            }
            outputs.push(IoSlot {
                name: slot_type.clone(),
                slot_type,
                link_ids: vec![id],
            });
        }
    }

    for node in nodes {
        graph.node_index.insert(node.id.clone(), graph.nodes.len());
        graph.nodes.push(node);
    }
    Ok(Some(Subgraph {
        id: format!("workflow>{name}"),
        graph,
        inputs,
        outputs,
        kind: SubgraphKind::LegacyGroup { widgets },
    }))
}

/// What an inner node of a group is.
#[derive(Clone, Copy)]
enum Inner<'c> {
    Known(&'c NodeSpec),
    Primitive,
    Reroute,
    Note,
}

/// `getInputConfig` adds a control widget to `seed` and `noise_seed`; seeds declared with one keep
/// it.
fn hidden_slots(kind: &InputKind, name: &str) -> usize {
    match kind {
        InputKind::Int {
            control_after_generate,
            ..
        } if *control_after_generate || name == "seed" || name == "noise_seed" => 1,
        _ => 0,
    }
}
