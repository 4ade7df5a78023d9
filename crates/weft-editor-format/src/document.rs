//! The editor format as written: nodes, links and subgraph definitions read into typed values,
//! accepting both the 0.4 shapes (links as arrays) and the 1 shapes (links as objects, `state`).
//! Nothing here knows about node classes.

use std::collections::HashMap;

use serde_json::{Map, Value as Json};

use crate::EditorError;

/// The node id a subgraph's links use for its input side (litegraph `SUBGRAPH_INPUT_ID`).
const SUBGRAPH_INPUT_ID: i64 = -10;
/// The node id a subgraph's links use for its output side (litegraph `SUBGRAPH_OUTPUT_ID`).
const SUBGRAPH_OUTPUT_ID: i64 = -20;

/// A whole editor document.
pub(crate) struct Document<'a> {
    pub root: Graph<'a>,
    /// Subgraph definitions by id (the type of their instance nodes).
    pub subgraphs: HashMap<String, Subgraph<'a>>,
    /// Legacy group node definitions (`extra.groupNodes`) by name, unparsed.
    pub group_nodes: Vec<(String, &'a Map<String, Json>)>,
}

/// One graph: the root, or the inside of a subgraph definition.
#[derive(Default)]
pub(crate) struct Graph<'a> {
    pub nodes: Vec<Node<'a>>,
    pub node_index: HashMap<String, usize>,
    pub links: HashMap<String, Link>,
}

/// One node as written.
pub(crate) struct Node<'a> {
    pub id: String,
    pub node_type: String,
    pub mode: i64,
    pub title: Option<String>,
    pub inputs: Vec<InputSlot>,
    pub outputs: Vec<OutputSlot>,
    pub widgets_values: WidgetValues<'a>,
    pub properties: Option<&'a Map<String, Json>>,
}

/// `mode` values (litegraph `LGraphEventMode`).
pub(crate) const MODE_MUTED: i64 = 2;
pub(crate) const MODE_BYPASS: i64 = 4;

impl Node<'_> {
    pub fn is_muted_or_bypassed(&self) -> bool {
        self.mode == MODE_MUTED || self.mode == MODE_BYPASS
    }
}

/// One entry of a node's `inputs`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputSlot {
    pub name: String,
    pub slot_type: String,
    pub link: Option<String>,
    /// The widget this input stands for (`widget: {name}`), for converted widgets.
    pub widget: Option<String>,
}

/// One entry of a node's `outputs`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputSlot {
    pub name: String,
    pub slot_type: String,
    pub links: Vec<String>,
}

/// A node's `widgets_values`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WidgetValues<'a> {
    Absent,
    List(&'a [Json]),
    /// Some custom nodes save their widgets by name.
    Named(&'a Map<String, Json>),
}

/// One link.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Link {
    pub origin: LinkEnd,
    pub origin_slot: usize,
    pub target: LinkEnd,
    pub target_slot: usize,
    pub link_type: String,
}

/// Where a link starts or ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LinkEnd {
    Node(String),
    /// The input side of the subgraph this link is in.
    SubgraphInput,
    /// The output side of the subgraph this link is in.
    SubgraphOutput,
}

/// A subgraph definition, or a legacy group node rebuilt as one.
pub(crate) struct Subgraph<'a> {
    pub id: String,
    pub graph: Graph<'a>,
    pub inputs: Vec<IoSlot>,
    pub outputs: Vec<IoSlot>,
    pub kind: SubgraphKind,
}

/// What kind of container a `Subgraph` describes.
pub(crate) enum SubgraphKind {
    /// A real subgraph: unconnected inputs that feed a widget show the instance's value.
    Subgraph,
    /// A legacy group node: the instance's widget values are written into the inner widgets.
    LegacyGroup { widgets: Vec<GroupWidget> },
}

/// One widget of a legacy group node and the inner widgets it sets.
pub(crate) struct GroupWidget {
    /// `(inner node id, widget name)`.
    pub targets: Vec<(String, String)>,
    /// Hidden slots that follow it in `widgets_values` (`control_after_generate`, ...).
    pub hidden_slots: usize,
}

/// One input or output of a subgraph definition.
#[derive(Debug, Clone)]
pub(crate) struct IoSlot {
    pub name: String,
    pub slot_type: String,
    /// Links inside the definition that start (inputs) or end (outputs) here.
    pub link_ids: Vec<String>,
}

impl<'a> Document<'a> {
    pub fn parse(json: &'a Json) -> Result<Document<'a>, EditorError> {
        let object = json
            .as_object()
            .ok_or_else(|| EditorError::structure(None, "workflow", "must be a JSON object"))?;
        let root = parse_graph(object, "")?;
        let mut subgraphs = HashMap::new();
        collect_subgraphs(object, &mut subgraphs, 0)?;
        let mut group_nodes = Vec::new();
        if let Some(groups) = object
            .get("extra")
            .and_then(|e| e.get("groupNodes"))
            .and_then(Json::as_object)
        {
            for (name, data) in groups {
                let data = data.as_object().ok_or_else(|| {
                    EditorError::structure(
                        None,
                        format!("extra.groupNodes.{name}"),
                        "must be a JSON object",
                    )
                })?;
                group_nodes.push((name.clone(), data));
            }
        }
        Ok(Document {
            root,
            subgraphs,
            group_nodes,
        })
    }
}

/// Definitions may carry their own `definitions` (older nested saves); all share one namespace.
fn collect_subgraphs<'a>(
    object: &'a Map<String, Json>,
    out: &mut HashMap<String, Subgraph<'a>>,
    depth: usize,
) -> Result<(), EditorError> {
    let Some(definitions) = object.get("definitions") else {
        return Ok(());
    };
    // The nesting of `definitions` is bounded by serde_json's recursion limit already; this keeps
    // the walk shallow even for values built in memory.
    if depth > crate::MAX_SUBGRAPH_DEPTH {
        return Err(EditorError::new(
            None,
            "definitions",
            crate::EditorErrorKind::TooDeep,
        ));
    }
    let list = match definitions.get("subgraphs") {
        None | Some(Json::Null) => return Ok(()),
        Some(Json::Array(list)) => list,
        Some(_) => {
            return Err(EditorError::structure(
                None,
                "definitions.subgraphs",
                "must be a list",
            ))
        }
    };
    for (i, definition) in list.iter().enumerate() {
        let field = format!("definitions.subgraphs[{i}]");
        let definition = definition
            .as_object()
            .ok_or_else(|| EditorError::structure(None, &field, "must be a JSON object"))?;
        let id = definition.get("id").and_then(Json::as_str).ok_or_else(|| {
            EditorError::structure(None, format!("{field}.id"), "must be a string")
        })?;
        let graph = parse_graph(definition, &format!("{field}."))?;
        let inputs = parse_io(definition, "inputs", &graph, &field)?;
        let outputs = parse_io(definition, "outputs", &graph, &field)?;
        out.insert(
            id.to_owned(),
            Subgraph {
                id: id.to_owned(),
                graph,
                inputs,
                outputs,
                kind: SubgraphKind::Subgraph,
            },
        );
        collect_subgraphs(definition, out, depth + 1)?;
    }
    Ok(())
}

fn parse_io(
    definition: &Map<String, Json>,
    key: &str,
    graph: &Graph<'_>,
    field: &str,
) -> Result<Vec<IoSlot>, EditorError> {
    let list = match definition.get(key) {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(list)) => list,
        Some(_) => {
            return Err(EditorError::structure(
                None,
                format!("{field}.{key}"),
                "must be a list",
            ))
        }
    };
    let is_input = key == "inputs";
    let mut slots = Vec::with_capacity(list.len());
    for (index, slot) in list.iter().enumerate() {
        let name = slot
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let slot_type = slot
            .get("type")
            .map(type_name)
            .unwrap_or_else(|| "*".into());
        let mut link_ids: Vec<String> = slot
            .get("linkIds")
            .and_then(Json::as_array)
            .map(|ids| ids.iter().filter_map(id_string).collect())
            .unwrap_or_default();
        link_ids.retain(|id| graph.links.contains_key(id));
        if link_ids.is_empty() {
            // Older saves leave `linkIds` out; the links themselves say where they attach.
            let mut found: Vec<&String> = graph
                .links
                .iter()
                .filter(|(_, link)| {
                    if is_input {
                        link.origin == LinkEnd::SubgraphInput && link.origin_slot == index
                    } else {
                        link.target == LinkEnd::SubgraphOutput && link.target_slot == index
                    }
                })
                .map(|(id, _)| id)
                .collect();
            found.sort_by(|a, b| compare_ids(a, b));
            link_ids = found.into_iter().cloned().collect();
        }
        slots.push(IoSlot {
            name,
            slot_type,
            link_ids,
        });
    }
    Ok(slots)
}

/// Reads `nodes` and `links` of a graph object; `prefix` locates it in errors.
pub(crate) fn parse_graph<'a>(
    object: &'a Map<String, Json>,
    prefix: &str,
) -> Result<Graph<'a>, EditorError> {
    let nodes = match object.get("nodes") {
        Some(Json::Array(nodes)) => nodes,
        _ => {
            return Err(EditorError::structure(
                None,
                format!("{prefix}nodes"),
                "must be a list of nodes",
            ))
        }
    };
    let mut graph = Graph::default();
    for (i, node) in nodes.iter().enumerate() {
        let node = parse_node(node, &format!("{prefix}nodes[{i}]"))?;
        if graph.node_index.contains_key(&node.id) {
            return Err(EditorError::structure(
                Some(&node.id),
                "id",
                "two nodes have this id",
            ));
        }
        graph.node_index.insert(node.id.clone(), graph.nodes.len());
        graph.nodes.push(node);
    }
    match object.get("links") {
        None | Some(Json::Null) => {}
        Some(Json::Array(links)) => {
            for (i, link) in links.iter().enumerate() {
                let field = format!("{prefix}links[{i}]");
                // Some frontends leave nulls behind in the list after deleting links.
                if link.is_null() {
                    continue;
                }
                let (id, link) = parse_link(link)
                    .ok_or_else(|| EditorError::structure(None, field, "is not a valid link"))?;
                graph.links.insert(id, link);
            }
        }
        // Very old files keep links as an object keyed by id.
        Some(Json::Object(links)) => {
            for (key, link) in links {
                let field = format!("{prefix}links.{key}");
                let (id, link) = parse_link(link)
                    .ok_or_else(|| EditorError::structure(None, field, "is not a valid link"))?;
                graph.links.insert(id, link);
            }
        }
        Some(_) => {
            return Err(EditorError::structure(
                None,
                format!("{prefix}links"),
                "must be a list of links",
            ))
        }
    }
    Ok(graph)
}

fn parse_node<'a>(node: &'a Json, field: &str) -> Result<Node<'a>, EditorError> {
    let id = node.get("id").and_then(id_string).ok_or_else(|| {
        EditorError::structure(None, format!("{field}.id"), "must be a number or a string")
    })?;
    parse_node_as(node, field, id)
}

/// Reads a node under the given id (legacy group nodes number their inner nodes by position).
pub(crate) fn parse_node_as<'a>(
    node: &'a Json,
    field: &str,
    id: String,
) -> Result<Node<'a>, EditorError> {
    let object = node
        .as_object()
        .ok_or_else(|| EditorError::structure(None, field, "must be a JSON object"))?;
    let node_type = object
        .get("type")
        .and_then(Json::as_str)
        .ok_or_else(|| EditorError::structure(Some(&id), "type", "must be a string"))?
        .to_owned();
    let mode = match object.get("mode") {
        None | Some(Json::Null) => 0,
        Some(mode) => mode
            .as_i64()
            .ok_or_else(|| EditorError::structure(Some(&id), "mode", "must be an integer"))?,
    };
    let title = object
        .get("title")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let inputs = match object.get("inputs") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, input)| parse_input(input, &id, i))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EditorError::structure(
                Some(&id),
                "inputs",
                "must be a list",
            ))
        }
    };
    let outputs = match object.get("outputs") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, output)| parse_output(output, &id, i))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(EditorError::structure(
                Some(&id),
                "outputs",
                "must be a list",
            ))
        }
    };
    let widgets_values = match object.get("widgets_values") {
        None | Some(Json::Null) => WidgetValues::Absent,
        Some(Json::Array(list)) => WidgetValues::List(list),
        Some(Json::Object(map)) => WidgetValues::Named(map),
        Some(_) => {
            return Err(EditorError::structure(
                Some(&id),
                "widgets_values",
                "must be a list or an object",
            ))
        }
    };
    let properties = object.get("properties").and_then(Json::as_object);
    Ok(Node {
        id,
        node_type,
        mode,
        title,
        inputs,
        outputs,
        widgets_values,
        properties,
    })
}

fn parse_input(input: &Json, node_id: &str, index: usize) -> Result<InputSlot, EditorError> {
    let field = format!("inputs[{index}]");
    let object = input
        .as_object()
        .ok_or_else(|| EditorError::structure(Some(node_id), &field, "must be a JSON object"))?;
    let link = match object.get("link") {
        None | Some(Json::Null) => None,
        Some(link) => Some(id_string(link).ok_or_else(|| {
            EditorError::structure(Some(node_id), format!("{field}.link"), "must be a link id")
        })?),
    };
    Ok(InputSlot {
        name: object
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned(),
        slot_type: object
            .get("type")
            .map(type_name)
            .unwrap_or_else(|| "*".into()),
        link,
        widget: object
            .get("widget")
            .and_then(|w| w.get("name"))
            .and_then(Json::as_str)
            .map(str::to_owned),
    })
}

fn parse_output(output: &Json, node_id: &str, index: usize) -> Result<OutputSlot, EditorError> {
    let field = format!("outputs[{index}]");
    let object = output
        .as_object()
        .ok_or_else(|| EditorError::structure(Some(node_id), &field, "must be a JSON object"))?;
    Ok(OutputSlot {
        name: object
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned(),
        slot_type: object
            .get("type")
            .map(type_name)
            .unwrap_or_else(|| "*".into()),
        links: object
            .get("links")
            .and_then(Json::as_array)
            .map(|ids| ids.iter().filter_map(id_string).collect())
            .unwrap_or_default(),
    })
}

/// `[id, origin, origin_slot, target, target_slot, type]` (0.4) or
/// `{id, origin_id, origin_slot, target_id, target_slot, type}` (1).
fn parse_link(link: &Json) -> Option<(String, Link)> {
    let (id, origin, origin_slot, target, target_slot, link_type) = match link {
        Json::Array(items) if items.len() >= 5 => (
            &items[0],
            &items[1],
            &items[2],
            &items[3],
            &items[4],
            items.get(5),
        ),
        Json::Object(object) => (
            object.get("id")?,
            object.get("origin_id")?,
            object.get("origin_slot")?,
            object.get("target_id")?,
            object.get("target_slot")?,
            object.get("type"),
        ),
        _ => return None,
    };
    let link = Link {
        origin: link_end(origin)?,
        origin_slot: slot_index(origin_slot)?,
        target: link_end(target)?,
        target_slot: slot_index(target_slot)?,
        link_type: link_type.map(type_name).unwrap_or_else(|| "*".into()),
    };
    Some((id_string(id)?, link))
}

fn link_end(value: &Json) -> Option<LinkEnd> {
    match value.as_i64() {
        Some(SUBGRAPH_INPUT_ID) => Some(LinkEnd::SubgraphInput),
        Some(SUBGRAPH_OUTPUT_ID) => Some(LinkEnd::SubgraphOutput),
        _ => id_string(value).map(LinkEnd::Node),
    }
}

/// A node or link id as a string: integers (also integral floats) in decimal, strings as written.
pub(crate) fn id_string(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| (f as i64).to_string())
            }
        }
        _ => None,
    }
}

/// A slot index: a non-negative integer (integral floats accepted, as JavaScript writes them).
pub(crate) fn slot_index(value: &Json) -> Option<usize> {
    if let Some(u) = value.as_u64() {
        return usize::try_from(u).ok();
    }
    value
        .as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e9)
        .map(|f| f as usize)
}

/// A slot type as a string. Old files sometimes write a list of combo options or a number.
fn type_name(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Array(_) => "COMBO".into(),
        _ => "*".into(),
    }
}

/// Numeric ids numerically, then the rest as strings.
pub(crate) fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    weft_graph::validate::compare_node_ids(a, b)
}
