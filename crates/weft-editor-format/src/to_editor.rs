//! API → editor: rebuilds nodes, sockets, widget values and links, and lays the nodes out.
//!
//! Layout: each node goes in the column of its depth (the longest chain of links leading to it),
//! columns left to right; inside a column nodes are stacked top to bottom, ordered by the mean
//! height of their sources so links mostly run straight, with ties broken by node id. Sizes are
//! estimated from the number of sockets and widgets, so stacked nodes never overlap.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value as Json};

use crate::document::compare_ids;
use crate::to_api::UNKNOWN_INPUTS_PROPERTY;
use crate::widgets::{default_value, widget_slots, WidgetSlot};
use crate::{EditorError, EditorErrorKind};
use weft_graph::spec::{InputKind, NodeSpec};
use weft_graph::validate::Catalog;

const COLUMN_GAP: f64 = 80.0;
const ROW_GAP: f64 = 50.0;
const MARGIN: f64 = 50.0;
/// litegraph draws the title above `pos`; sizes do not include it.
const TITLE_HEIGHT: f64 = 30.0;
const SLOT_HEIGHT: f64 = 20.0;
const WIDGET_HEIGHT: f64 = 24.0;
const MULTILINE_HEIGHT: f64 = 100.0;

struct ApiNode<'p> {
    id: &'p str,
    class_type: &'p str,
    spec: Option<&'p NodeSpec>,
    title: Option<&'p str>,
    meta_widgets: Option<&'p Json>,
    inputs: Vec<(&'p str, ApiInput<'p>)>,
}

enum ApiInput<'p> {
    Link { source: &'p str, slot: usize },
    Const(&'p Json),
}

/// One editor input being built.
struct EditorInput<'p> {
    name: &'p str,
    slot_type: String,
    widget: bool,
    source: Option<(&'p str, usize)>,
}

pub(crate) fn convert(prompt: &Json, catalog: &dyn Catalog) -> Result<Json, EditorError> {
    let object = prompt.as_object().ok_or_else(|| {
        EditorError::structure(None, "prompt", "must be a JSON object of nodes keyed by id")
    })?;
    let mut nodes = Vec::with_capacity(object.len());
    for (id, node) in object {
        nodes.push(read_node(id, node, catalog)?);
    }
    nodes.sort_by(|a, b| compare_ids(a.id, b.id));
    let index_of: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();

    // Sockets and widget values of every node.
    let mut editor_inputs: Vec<Vec<EditorInput<'_>>> = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let inputs = editor_inputs_of(node);
        for input in &inputs {
            if let Some((source, slot)) = input.source {
                let Some(&source_index) = index_of.get(source) else {
                    return Err(EditorError::new(
                        Some(node.id),
                        format!("inputs.{}", input.name),
                        EditorErrorKind::MissingNode {
                            origin_id: source.to_owned(),
                        },
                    ));
                };
                if let Some(spec) = nodes[source_index].spec {
                    if slot >= spec.outputs.len() {
                        return Err(EditorError::structure(
                            Some(node.id),
                            format!("inputs.{}", input.name),
                            format!(
                                "links to output {slot} of node {source} ({}), which has {}",
                                spec.class_type,
                                spec.outputs.len()
                            ),
                        ));
                    }
                }
            }
        }
        editor_inputs.push(inputs);
    }

    // Output slot counts: declared, or as many as links use for unknown classes.
    let mut output_counts: Vec<usize> = nodes
        .iter()
        .map(|n| n.spec.map_or(0, |s| s.outputs.len()))
        .collect();
    for inputs in &editor_inputs {
        for (source, slot) in inputs.iter().filter_map(|i| i.source) {
            let source_index = index_of[source];
            output_counts[source_index] = output_counts[source_index].max(slot + 1);
        }
    }

    // Links, numbered in target order.
    let mut links: Vec<Json> = Vec::new();
    let mut input_links: Vec<Vec<Option<usize>>> = Vec::with_capacity(nodes.len());
    let mut output_links: Vec<Vec<Vec<usize>>> = output_counts
        .iter()
        .map(|&count| vec![Vec::new(); count])
        .collect();
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (target, inputs) in editor_inputs.iter().enumerate() {
        let mut ids = Vec::with_capacity(inputs.len());
        for (target_slot, input) in inputs.iter().enumerate() {
            let Some((source, slot)) = input.source else {
                ids.push(None);
                continue;
            };
            let source_index = index_of[source];
            let link_id = links.len() + 1;
            let link_type = output_type(&nodes[source_index], slot).unwrap_or(&input.slot_type);
            links.push(json!([
                link_id,
                editor_id(source),
                slot,
                editor_id(nodes[target].id),
                target_slot,
                link_type
            ]));
            output_links[source_index][slot].push(link_id);
            parents[target].push(source_index);
            ids.push(Some(link_id));
        }
        input_links.push(ids);
    }

    let sizes: Vec<[f64; 2]> = nodes
        .iter()
        .zip(&editor_inputs)
        .zip(&output_counts)
        .map(|((node, inputs), &outputs)| estimate_size(node, inputs.len(), outputs))
        .collect();
    let layout = lay_out(&parents, &sizes);

    let mut editor_nodes = Vec::with_capacity(nodes.len());
    for &index in &layout.order {
        let node = &nodes[index];
        let inputs: Vec<Json> = editor_inputs[index]
            .iter()
            .zip(&input_links[index])
            .map(|(input, link)| {
                let mut entry = json!({"name": input.name, "type": input.slot_type, "link": link});
                if input.widget {
                    entry["widget"] = json!({"name": input.name});
                }
                entry
            })
            .collect();
        let outputs: Vec<Json> = output_links[index]
            .iter()
            .enumerate()
            .map(|(slot, ids)| {
                let slot_type = output_type(node, slot).unwrap_or("*");
                let name = node
                    .spec
                    .and_then(|s| s.outputs.get(slot))
                    .map_or(slot_type, |o| o.name);
                json!({
                    "name": name,
                    "type": slot_type,
                    "links": if ids.is_empty() { Json::Null } else { json!(ids) },
                    "slot_index": slot,
                })
            })
            .collect();
        let mut properties = Map::new();
        properties.insert("Node name for S&R".into(), json!(node.class_type));
        let widgets_values = match node.spec {
            Some(spec) => Json::Array(widgets_values_of(node, spec, catalog)),
            None => {
                let constants: Map<String, Json> = node
                    .inputs
                    .iter()
                    .filter_map(|(name, input)| match input {
                        ApiInput::Const(value) => Some(((*name).to_owned(), (*value).clone())),
                        ApiInput::Link { .. } => None,
                    })
                    .collect();
                if !constants.is_empty() {
                    properties.insert(UNKNOWN_INPUTS_PROPERTY.into(), Json::Object(constants));
                }
                node.meta_widgets.cloned().unwrap_or(Json::Null)
            }
        };
        let [x, y] = layout.positions[index];
        let mut entry = json!({
            "id": editor_id(node.id),
            "type": node.class_type,
            "pos": [x, y],
            "size": sizes[index],
            "flags": {},
            "order": layout.rank[index],
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": properties,
        });
        if !widgets_values.is_null() {
            entry["widgets_values"] = widgets_values;
        }
        if let Some(title) = node.title {
            entry["title"] = json!(title);
        }
        editor_nodes.push(entry);
    }

    let last_node_id = nodes
        .iter()
        .filter_map(|n| n.id.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok(json!({
        "last_node_id": last_node_id,
        "last_link_id": links.len(),
        "nodes": editor_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "version": 0.4,
    }))
}

fn read_node<'p>(
    id: &'p str,
    node: &'p Json,
    catalog: &'p dyn Catalog,
) -> Result<ApiNode<'p>, EditorError> {
    let object = node
        .as_object()
        .ok_or_else(|| EditorError::structure(Some(id), "node", "must be a JSON object"))?;
    let class_type = object
        .get("class_type")
        .and_then(Json::as_str)
        .ok_or_else(|| EditorError::structure(Some(id), "class_type", "must be a string"))?;
    let mut inputs = Vec::new();
    match object.get("inputs") {
        None | Some(Json::Null) => {}
        Some(Json::Object(map)) => {
            for (name, value) in map {
                let input = match value {
                    Json::Array(items) => {
                        let link = (items.len() == 2)
                            .then(|| {
                                Some((items[0].as_str()?, crate::document::slot_index(&items[1])?))
                            })
                            .flatten();
                        let Some((source, slot)) = link else {
                            return Err(EditorError::structure(
                                Some(id),
                                format!("inputs.{name}"),
                                "a list must be a link [\"<node id>\", <output index>]; \
                                 wrap list values as {\"__value__\": [...]}",
                            ));
                        };
                        ApiInput::Link { source, slot }
                    }
                    Json::Object(wrapped)
                        if wrapped.len() == 1 && wrapped.contains_key("__value__") =>
                    {
                        ApiInput::Const(&wrapped["__value__"])
                    }
                    other => ApiInput::Const(other),
                };
                inputs.push((name.as_str(), input));
            }
        }
        Some(_) => {
            return Err(EditorError::structure(
                Some(id),
                "inputs",
                "must be a JSON object",
            ))
        }
    }
    let meta = object.get("_meta");
    Ok(ApiNode {
        id,
        class_type,
        spec: catalog.spec(class_type),
        title: meta.and_then(|m| m.get("title")).and_then(Json::as_str),
        meta_widgets: meta
            .and_then(|m| m.get("widgets_values"))
            .filter(|w| w.is_array() || w.is_object()),
        inputs,
    })
}

/// The editor inputs of a node: its sockets in declaration order, then widgets fed by a link
/// (converted widgets), then links to inputs the class does not declare.
fn editor_inputs_of<'p>(node: &ApiNode<'p>) -> Vec<EditorInput<'p>> {
    let link_of = |name: &str| {
        node.inputs.iter().find_map(|(n, input)| match input {
            ApiInput::Link { source, slot } if *n == name => Some((*source, *slot)),
            _ => None,
        })
    };
    let mut inputs = Vec::new();
    if let Some(spec) = node.spec {
        let ordered: Vec<_> = spec
            .inputs
            .iter()
            .filter(|i| !i.optional)
            .chain(spec.inputs.iter().filter(|i| i.optional))
            .collect();
        for input in ordered.iter().filter(|i| !i.kind.is_widget()) {
            inputs.push(EditorInput {
                name: input.name,
                slot_type: input.kind.type_name().to_owned(),
                widget: false,
                source: link_of(input.name),
            });
        }
        for input in ordered.iter().filter(|i| i.kind.is_widget()) {
            if let Some(source) = link_of(input.name) {
                inputs.push(EditorInput {
                    name: input.name,
                    slot_type: input.kind.type_name().to_owned(),
                    widget: true,
                    source: Some(source),
                });
            }
        }
    }
    for (name, input) in &node.inputs {
        let ApiInput::Link { source, slot } = input else {
            continue;
        };
        if node.spec.is_some_and(|s| s.input(name).is_some()) {
            continue;
        }
        inputs.push(EditorInput {
            name,
            slot_type: "*".into(),
            widget: false,
            source: Some((*source, *slot)),
        });
    }
    inputs
}

/// `widgets_values` for a known node. Seeds are saved as `fixed` so opening the workflow does not
/// change them; a widget fed by a link keeps its default.
fn widgets_values_of(node: &ApiNode<'_>, spec: &NodeSpec, catalog: &dyn Catalog) -> Vec<Json> {
    widget_slots(spec)
        .into_iter()
        .map(|slot| match slot {
            WidgetSlot::Value(input) => node
                .inputs
                .iter()
                .find_map(|(name, value)| match value {
                    ApiInput::Const(value) if *name == input.name => Some((*value).clone()),
                    _ => None,
                })
                .or_else(|| default_value(&input.kind, catalog))
                .unwrap_or(Json::Null),
            WidgetSlot::ControlAfterGenerate => json!("fixed"),
            WidgetSlot::ImageUpload => json!("image"),
        })
        .collect()
}

fn output_type<'n>(node: &'n ApiNode<'_>, slot: usize) -> Option<&'n str> {
    node.spec
        .and_then(|s| s.outputs.get(slot))
        .map(|o| o.ty.name())
}

/// Integer ids are written as numbers, as the editor does; others (`12:5`) stay strings.
fn editor_id(id: &str) -> Json {
    match id.parse::<u32>() {
        Ok(number) if number.to_string() == id => json!(number),
        _ => json!(id),
    }
}

fn estimate_size(node: &ApiNode<'_>, inputs: usize, outputs: usize) -> [f64; 2] {
    let (widgets, multiline) = match node.spec {
        Some(spec) => {
            let multiline = spec
                .inputs
                .iter()
                .filter(|i| {
                    matches!(
                        i.kind,
                        InputKind::String {
                            multiline: true,
                            ..
                        }
                    )
                })
                .count();
            (widget_slots(spec).len() - multiline, multiline)
        }
        None => (
            node.meta_widgets
                .and_then(Json::as_array)
                .map_or(0, Vec::len),
            0,
        ),
    };
    let width = if multiline > 0 { 400.0 } else { 320.0 };
    let height = inputs.max(outputs) as f64 * SLOT_HEIGHT
        + widgets as f64 * WIDGET_HEIGHT
        + multiline as f64 * MULTILINE_HEIGHT
        + 10.0;
    [width, height.max(30.0)]
}

struct Layout {
    /// Node indices in drawing order: column by column, top to bottom.
    order: Vec<usize>,
    /// Topological rank of each node (the editor's `order`).
    rank: Vec<usize>,
    positions: Vec<[f64; 2]>,
}

fn lay_out(parents: &[Vec<usize>], sizes: &[[f64; 2]]) -> Layout {
    let count = parents.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); count];
    let mut pending: Vec<usize> = vec![0; count];
    for (node, sources) in parents.iter().enumerate() {
        for &source in sources {
            children[source].push(node);
            pending[node] += 1;
        }
    }
    // Kahn's algorithm, smallest index first; nodes on a cycle are placed after their placed
    // sources once nothing else is ready.
    let mut depth = vec![0usize; count];
    let mut rank = vec![usize::MAX; count];
    let mut ready: std::collections::BTreeSet<usize> =
        (0..count).filter(|&n| pending[n] == 0).collect();
    let mut next_rank = 0;
    while next_rank < count {
        let node = match ready.pop_first() {
            Some(node) => node,
            None => match (0..count).find(|&n| rank[n] == usize::MAX) {
                Some(node) => node,
                None => break,
            },
        };
        if rank[node] != usize::MAX {
            continue;
        }
        rank[node] = next_rank;
        next_rank += 1;
        depth[node] = parents[node]
            .iter()
            .filter(|&&p| rank[p] != usize::MAX && p != node)
            .map(|&p| depth[p] + 1)
            .max()
            .unwrap_or(0);
        for &child in &children[node] {
            pending[child] = pending[child].saturating_sub(1);
            if pending[child] == 0 && rank[child] == usize::MAX {
                ready.insert(child);
            }
        }
    }

    // A node without sources sits just left of its nearest consumer rather than in column 0.
    let source_depths: Vec<Option<usize>> = (0..count)
        .map(|node| {
            let nearest = children[node].iter().map(|&child| depth[child]).min();
            nearest.filter(|_| parents[node].is_empty())
        })
        .collect();
    for (node_depth, nearest) in depth.iter_mut().zip(source_depths) {
        if let Some(nearest) = nearest {
            *node_depth = nearest.saturating_sub(1);
        }
    }

    let mut columns: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (node, &node_depth) in depth.iter().enumerate() {
        columns.entry(node_depth).or_default().push(node);
    }
    let mut positions = vec![[0.0, 0.0]; count];
    let mut placed = vec![false; count];
    let mut order = Vec::with_capacity(count);
    let mut x = MARGIN;
    for column in columns.values() {
        let mut keyed: Vec<(f64, usize)> = column
            .iter()
            .map(|&node| {
                let centers: Vec<f64> = parents[node]
                    .iter()
                    .filter(|&&p| placed[p])
                    .map(|&p| positions[p][1] + sizes[p][1] / 2.0)
                    .collect();
                let key = if centers.is_empty() {
                    f64::INFINITY
                } else {
                    centers.iter().sum::<f64>() / centers.len() as f64
                };
                (key, node)
            })
            .collect();
        // Indices are already in id order, so ties keep it.
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut y = MARGIN + TITLE_HEIGHT;
        let mut width: f64 = 0.0;
        for (_, node) in keyed {
            positions[node] = [x, y];
            placed[node] = true;
            order.push(node);
            y += sizes[node][1] + TITLE_HEIGHT + ROW_GAP;
            width = width.max(sizes[node][0]);
        }
        x += width + COLUMN_GAP;
    }
    Layout {
        order,
        rank,
        positions,
    }
}
