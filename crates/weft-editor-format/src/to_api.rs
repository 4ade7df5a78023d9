//! Editor → API: the prompt `graphToPrompt` builds, from the expanded nodes.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{json, Map, Value as Json};

use crate::document::{Document, WidgetValues};
use crate::flatten::{flatten, Exec, Flat, Resolved, Role};
use crate::group_nodes;
use crate::widgets::{default_value, process_dynamic_prompt, widget_slots, wrap_list, WidgetSlot};
use crate::{EditorConversion, EditorError};
use weft_graph::spec::{ComboOptions, FileList, InputKind, NodeSpec};
use weft_graph::validate::Catalog;

/// Where `api_to_editor` keeps the named constants of a node class the catalog does not know, so
/// converting back restores them.
pub(crate) const UNKNOWN_INPUTS_PROPERTY: &str = "weft_api_inputs";

pub(crate) fn convert(
    editor: &Json,
    catalog: &dyn Catalog,
) -> Result<EditorConversion, EditorError> {
    let document = Document::parse(editor)?;
    let mut missing = BTreeSet::new();
    let mut groups = HashMap::new();
    for (name, data) in &document.group_nodes {
        if let Some(definition) = group_nodes::build(name, data, catalog, &mut missing)? {
            groups.insert(name.clone(), definition);
        }
    }
    let flat = flatten(&document, &groups, catalog, &mut missing)?;
    let mut warnings = flat.warnings.clone();
    for node_type in &missing {
        if group_nodes::group_name(node_type).is_none() {
            warnings.push(format!(
                "node type {node_type} is not installed; its nodes are kept as written"
            ));
        }
    }

    let mut prompt = Map::new();
    for index in 0..flat.execs.len() {
        if !flat.is_sent(index) {
            continue;
        }
        let (id, node) = build_node(&flat, index, catalog, &mut warnings)?;
        // A node id written as "12:5" can meet the expansion of node 5 in instance 12.
        if prompt.contains_key(&id) {
            return Err(EditorError::structure(
                Some(&id),
                "id",
                "two nodes get this id once subgraphs are expanded",
            ));
        }
        prompt.insert(id, node);
    }
    drop_links_to_absent_nodes(&mut prompt, &mut warnings);
    let missing_models = find_missing_models(&flat, &prompt, catalog);
    Ok(EditorConversion {
        prompt: Json::Object(prompt),
        missing_node_types: missing.into_iter().collect(),
        missing_models,
        warnings,
    })
}

fn build_node(
    flat: &Flat<'_>,
    index: usize,
    catalog: &dyn Catalog,
    warnings: &mut Vec<String>,
) -> Result<(String, Json), EditorError> {
    let exec = &flat.execs[index];
    let node = exec.node;
    let mut inputs = Map::new();
    let mut meta = Map::new();
    match exec.role {
        Role::Known(spec) => {
            let title = node.title.clone().unwrap_or_else(|| display_name(spec));
            meta.insert("title".into(), Json::String(title));
            for (name, value) in widget_inputs(exec, spec, catalog, warnings) {
                inputs.insert(name, wrap_list(value));
            }
        }
        _ => {
            let title = node.title.clone().unwrap_or_else(|| node.node_type.clone());
            meta.insert("title".into(), Json::String(title));
            match node.widgets_values {
                WidgetValues::List(values) => {
                    meta.insert("widgets_values".into(), Json::Array(values.to_vec()));
                }
                WidgetValues::Named(values) => {
                    meta.insert("widgets_values".into(), Json::Object(values.clone()));
                }
                WidgetValues::Absent => {}
            }
            if let Some(saved) = node
                .properties
                .and_then(|p| p.get(UNKNOWN_INPUTS_PROPERTY))
                .and_then(Json::as_object)
            {
                for (name, value) in saved {
                    inputs.insert(name.clone(), wrap_list(value.clone()));
                }
            }
        }
    }
    for (slot, input) in exec.inputs.iter().enumerate() {
        match flat.resolve_input(index, slot)? {
            Resolved::Link { origin, slot } => {
                inputs.insert(
                    input.name.clone(),
                    json!([flat.execs[origin].exec_id, slot]),
                );
            }
            Resolved::Widget(value) => {
                inputs.insert(input.name.clone(), wrap_list(value));
            }
            Resolved::Unconnected => {}
        }
    }
    let body = json!({
        "inputs": inputs,
        "class_type": node.node_type,
        "_meta": meta,
    });
    Ok((exec.exec_id.clone(), body))
}

fn display_name(spec: &NodeSpec) -> String {
    if spec.display_name.is_empty() {
        spec.class_type.to_owned()
    } else {
        spec.display_name.to_owned()
    }
}

/// The widget inputs of a known node, in widget order: `widgets_values` mapped onto the widget
/// slots, defaults where values are missing, then values set from outside (primitives, groups).
fn widget_inputs(
    exec: &Exec<'_>,
    spec: &NodeSpec,
    catalog: &dyn Catalog,
    warnings: &mut Vec<String>,
) -> Vec<(String, Json)> {
    let node = exec.node;
    let slots = widget_slots(spec);
    let place = format!("node {} ({})", exec.exec_id, node.node_type);
    if let WidgetValues::List(values) = node.widgets_values {
        if values.len() < slots.len() {
            warnings.push(format!(
                "{place}: widgets_values has {} values for {} widget slots; \
                 the missing ones take their defaults",
                values.len(),
                slots.len()
            ));
        } else if values.len() > slots.len() {
            warnings.push(format!(
                "{place}: widgets_values has {} values for {} widget slots; the extra ones are ignored",
                values.len(),
                slots.len()
            ));
        }
    }
    let mut out = Vec::new();
    for (position, slot) in slots.iter().enumerate() {
        let WidgetSlot::Value(input) = slot else {
            continue;
        };
        let written = match node.widgets_values {
            WidgetValues::List(values) => values.get(position),
            WidgetValues::Named(values) => values.get(input.name),
            WidgetValues::Absent => None,
        };
        let value = exec
            .overrides
            .get(input.name)
            .or(written)
            .cloned()
            .or_else(|| default_value(&input.kind, catalog));
        let Some(mut value) = value else {
            warnings.push(format!(
                "{place}: widget '{}' has no value and no default; it is left out",
                input.name
            ));
            continue;
        };
        if let (
            InputKind::String {
                dynamic_prompts: true,
                ..
            },
            Some(text),
        ) = (&input.kind, value.as_str())
        {
            if let Some(processed) = process_dynamic_prompt(text) {
                if text.contains('{') {
                    warnings.push(format!(
                        "{place}: '{}' has {{a|b}} choices; the first option of each was taken \
                         (the editor picks one at random)",
                        input.name
                    ));
                }
                value = Json::String(processed);
            }
        }
        out.push((input.name.to_owned(), value));
    }
    out
}

/// `graphToPrompt` finally deletes every link to a node the prompt does not contain (a muted
/// node, or a node inside a muted subgraph).
fn drop_links_to_absent_nodes(prompt: &mut Map<String, Json>, warnings: &mut Vec<String>) {
    let present: HashSet<String> = prompt.keys().cloned().collect();
    for (id, node) in prompt.iter_mut() {
        let Some(inputs) = node.get_mut("inputs").and_then(Json::as_object_mut) else {
            continue;
        };
        inputs.retain(|name, value| {
            let absent = value
                .as_array()
                .filter(|items| items.len() == 2)
                .and_then(|items| items[0].as_str())
                .filter(|source| !present.contains(*source));
            match absent {
                Some(source) => {
                    warnings.push(format!(
                        "node {id}: input '{name}' comes from node {source}, which is muted or \
                         not sent; the input was dropped"
                    ));
                    false
                }
                None => true,
            }
        });
    }
}

/// Model-file combos whose value is not among the files the catalog lists.
fn find_missing_models(
    flat: &Flat<'_>,
    prompt: &Map<String, Json>,
    catalog: &dyn Catalog,
) -> Vec<(String, String, String)> {
    let mut listed: HashMap<&str, Vec<String>> = HashMap::new();
    let mut missing = Vec::new();
    for exec in &flat.execs {
        let Role::Known(spec) = exec.role else {
            continue;
        };
        let Some(inputs) = prompt
            .get(&exec.exec_id)
            .and_then(|n| n.get("inputs"))
            .and_then(Json::as_object)
        else {
            continue;
        };
        for input in &spec.inputs {
            let InputKind::Combo {
                options: options @ ComboOptions::Files(FileList::Models(folder)),
                ..
            } = &input.kind
            else {
                continue;
            };
            let Some(value) = inputs.get(input.name).and_then(Json::as_str) else {
                continue;
            };
            let files = listed
                .entry(folder)
                .or_insert_with(|| catalog.combo_options(options));
            if !files.iter().any(|f| f == value) {
                missing.push((
                    exec.exec_id.clone(),
                    input.name.to_owned(),
                    value.to_owned(),
                ));
            }
        }
    }
    missing
}
