//! The editor (UI) workflow format: conversion to the API format and back.
//!
//! `editor_to_api` does what ComfyUI's frontend does when it queues a workflow
//! (`src/utils/executionUtil.ts graphToPrompt`, with `ExecutableNodeDTO` resolving links): widget
//! values are named from the node declarations, UI-only nodes disappear, muted nodes are dropped,
//! bypassed nodes are spliced out, and subgraphs and legacy group nodes are flattened into nodes with
//! ids like `12:5`. `api_to_editor` goes the other way and lays the nodes out in columns, so a
//! converted workflow can be opened and edited.
//!
//! Both are pure functions of the JSON and the node declarations (`Catalog`). Callers refuse inputs
//! larger than `MAX_EDITOR_WORKFLOW_BYTES` before parsing them; the conversion itself caps subgraph
//! nesting and the number of nodes after expansion, so a small file cannot expand without bound.
//!
//! What is not reproduced exactly:
//! - the frontend picks one option of each dynamic prompt `{a|b}` at random; we take the first;
//! - `PrimitiveNode` text replacements (`%date%`) are left as written (with a warning);
//! - a combo's `control_after_generate` slots are only known where `NodeSpec` declares them (it has
//!   no such flag for combos today);
//! - a PrimitiveNode feeding a node of an unknown class cannot name the widget it sets, so that
//!   node's `_meta.widgets_values` keep their saved value;
//! - legacy group nodes follow `GroupNodeConfig` for the usual cases (inner widgets in order, seeds
//!   with their control slot, primitives, converted widgets, `external` outputs) but ignore
//!   renamed or hidden group inputs (`config`) and group nodes nested in group nodes;
//! - inside a muted or bypassed subgraph instance nothing is sent (the frontend leaves the inner
//!   nodes' own modes alone; a file cannot say per instance).

#![warn(missing_docs)]

mod document;
mod flatten;
mod group_nodes;
mod to_api;
mod to_editor;
mod widgets;

#[cfg(test)]
mod tests;

use serde_json::Value as Json;

use weft_graph::validate::Catalog;

/// The largest editor workflow a caller should parse (ComfyUI's own upload limit is far larger; a
/// workflow file of this size is already tens of thousands of nodes).
pub const MAX_EDITOR_WORKFLOW_BYTES: usize = 50 * 1024 * 1024;

/// How deep subgraphs (and legacy group nodes) may nest inside each other.
pub const MAX_SUBGRAPH_DEPTH: usize = 32;

/// How many nodes a workflow may have once every subgraph instance is expanded.
pub const MAX_EXPANDED_NODES: usize = 100_000;

/// The result of converting an editor workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct EditorConversion {
    /// The API-format prompt: `{"<id>": {"class_type", "inputs", "_meta"}}`.
    pub prompt: Json,
    /// Node types the catalog does not know, sorted. They are kept in `prompt` as given.
    pub missing_node_types: Vec<String>,
    /// `(node id, input, value)` for each model-file combo whose value is not among the files the
    /// catalog lists, in prompt order.
    pub missing_models: Vec<(String, String, String)>,
    /// Things that were repaired or guessed, one sentence each.
    pub warnings: Vec<String>,
}

/// Why an editor workflow (or an API prompt, for `api_to_editor`) cannot be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", describe(.node_id.as_deref(), .field, .kind))]
pub struct EditorError {
    /// The node where the problem is, as its id is written in the file (inside a subgraph, the
    /// expanded id such as `12:5`).
    pub node_id: Option<String>,
    /// Where in the node or document: `inputs[2].link`, `widgets_values`, `links[7]`.
    pub field: String,
    /// What is wrong there.
    pub kind: EditorErrorKind,
}

/// The kind of an `EditorError`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EditorErrorKind {
    /// The JSON does not have the shape of the format at all.
    InvalidStructure(String),
    /// A link comes from a node that is not in the workflow.
    MissingNode {
        /// The missing source node's id, as the link gives it (local to its subgraph).
        origin_id: String,
    },
    /// Following links through reroutes, bypassed nodes or subgraph borders comes back to where it
    /// started.
    LinkCycle,
    /// Subgraphs nest deeper than `MAX_SUBGRAPH_DEPTH`.
    TooDeep,
    /// A subgraph contains an instance of itself.
    RecursiveSubgraph {
        /// The definition's id, which its instance nodes use as `type`: a UUID for a subgraph,
        /// `workflow>Name` for a legacy group node.
        subgraph_id: String,
    },
    /// Expanding subgraphs gives more than `MAX_EXPANDED_NODES` nodes.
    TooManyNodes,
}

impl EditorError {
    pub(crate) fn new(
        node_id: Option<&str>,
        field: impl Into<String>,
        kind: EditorErrorKind,
    ) -> Self {
        EditorError {
            node_id: node_id.map(str::to_owned),
            field: field.into(),
            kind,
        }
    }

    pub(crate) fn structure(
        node_id: Option<&str>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        EditorError::new(
            node_id,
            field,
            EditorErrorKind::InvalidStructure(message.into()),
        )
    }
}

fn describe(node_id: Option<&str>, field: &str, kind: &EditorErrorKind) -> String {
    let place = match node_id {
        Some(id) => format!("node {id}: {field}"),
        None => field.to_owned(),
    };
    match kind {
        EditorErrorKind::InvalidStructure(message) => format!("{place}: {message}"),
        EditorErrorKind::MissingNode { origin_id } => {
            format!("{place}: links to node {origin_id}, which is not in the workflow")
        }
        EditorErrorKind::LinkCycle => {
            format!("{place}: links loop through reroutes, bypassed nodes or subgraphs")
        }
        EditorErrorKind::TooDeep => {
            format!("{place}: subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels")
        }
        EditorErrorKind::RecursiveSubgraph { subgraph_id } => {
            format!("{place}: subgraph {subgraph_id} contains itself")
        }
        EditorErrorKind::TooManyNodes => {
            format!("{place}: the expanded workflow has more than {MAX_EXPANDED_NODES} nodes")
        }
    }
}

/// Converts an editor workflow (format 0.4 or 1, with subgraphs and legacy group nodes) to the API
/// format, as ComfyUI's frontend does when it queues it.
///
/// Node types the catalog does not know are kept: their links are resolved as usual and their
/// widget values, which cannot be named, go to `_meta.widgets_values`.
pub fn editor_to_api(editor: &Json, specs: &dyn Catalog) -> Result<EditorConversion, EditorError> {
    to_api::convert(editor, specs)
}

/// Converts an API prompt to an editor workflow (format 0.4), laid out in columns by depth.
///
/// `editor_to_api` of the result gives the prompt back, apart from constant inputs a node does not
/// declare (ComfyUI ignores those) and widgets the prompt left out (they take their defaults).
pub fn api_to_editor(prompt: &Json, specs: &dyn Catalog) -> Result<Json, EditorError> {
    to_editor::convert(prompt, specs)
}
