//! The API ("prompt") format as given: node ids, class names and raw inputs, nothing checked yet.
//!
//! `{"<id>": {"class_type": "...", "inputs": {name: value | ["<src id>", slot]}, "_meta": {...}}}`

use serde_json::{Map, Value as Json};

/// One input exactly as the workflow wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawInput {
    /// `["<node id>", <output index>]`.
    Link {
        /// The id of the node the value comes from.
        node: String,
        /// The index of that node's output, from 0.
        slot: usize,
    },
    /// A list that is not a well-formed link (ComfyUI's `bad_linked_input`).
    BadLink(Json),
    /// A constant; `{"__value__": [...]}` is already unwrapped.
    Const(Json),
}

/// One node of an API-format workflow.
#[derive(Debug, Clone)]
pub struct WorkflowNode {
    /// The node's key in the workflow object (usually a number as a string, `"3"`).
    pub id: String,
    /// The node class it names; None when `class_type` is missing or not a string.
    pub class_type: Option<String>,
    /// Every input as written, declared or not, in the file's order.
    pub inputs: Vec<(String, RawInput)>,
}

impl WorkflowNode {
    /// The input called `name`, or None if the workflow does not give it.
    pub fn input(&self, name: &str) -> Option<&RawInput> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// An API-format workflow, nodes in the order the file lists them.
#[derive(Debug, Clone, Default)]
pub struct Workflow {
    /// The nodes, in the order the file lists them.
    pub nodes: Vec<WorkflowNode>,
}

/// Why a JSON document is not an API-format workflow at all.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkflowFormatError {
    /// The top level is not a JSON object.
    #[error("the prompt must be a JSON object of nodes keyed by id")]
    NotAnObject,
    /// The node with this id is not a JSON object.
    #[error("node '{0}' must be a JSON object with class_type and inputs")]
    NodeNotAnObject(String),
    /// The node with this id has an `inputs` that is neither an object nor null.
    #[error("node '{0}': inputs must be a JSON object")]
    InputsNotAnObject(String),
}

impl Workflow {
    /// Reads the API format. Only the outer shape is checked here; everything about the nodes
    /// themselves is validation's job, so it can report every problem per node.
    pub fn from_api_json(prompt: &Json) -> Result<Workflow, WorkflowFormatError> {
        let object = prompt.as_object().ok_or(WorkflowFormatError::NotAnObject)?;
        let mut nodes = Vec::with_capacity(object.len());
        for (id, node) in object {
            let node_object = node
                .as_object()
                .ok_or_else(|| WorkflowFormatError::NodeNotAnObject(id.clone()))?;
            let class_type = node_object
                .get("class_type")
                .and_then(Json::as_str)
                .map(str::to_owned);
            let inputs = match node_object.get("inputs") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Object(map)) => parse_inputs(map),
                Some(_) => return Err(WorkflowFormatError::InputsNotAnObject(id.clone())),
            };
            nodes.push(WorkflowNode {
                id: id.clone(),
                class_type,
                inputs,
            });
        }
        Ok(Workflow { nodes })
    }

    /// The node with id `id`, or None if there is none.
    pub fn node(&self, id: &str) -> Option<&WorkflowNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// True when the JSON looks like the editor (UI) format rather than the API format.
    pub fn looks_like_editor_format(json: &Json) -> bool {
        json.get("nodes").is_some_and(Json::is_array) && json.get("links").is_some()
    }
}

fn parse_inputs(map: &Map<String, Json>) -> Vec<(String, RawInput)> {
    map.iter()
        .map(|(name, value)| (name.clone(), parse_input(value)))
        .collect()
}

fn parse_input(value: &Json) -> RawInput {
    match value {
        Json::Array(items) => {
            // ComfyUI treats any list as a link; element 0 must be a node id string.
            if items.len() == 2 {
                if let (Some(node), Some(slot)) = (items[0].as_str(), slot_index(&items[1])) {
                    return RawInput::Link {
                        node: node.to_owned(),
                        slot,
                    };
                }
            }
            RawInput::BadLink(value.clone())
        }
        Json::Object(object) if object.len() == 1 && object.contains_key("__value__") => {
            RawInput::Const(object["__value__"].clone())
        }
        other => RawInput::Const(other.clone()),
    }
}

fn slot_index(value: &Json) -> Option<usize> {
    if let Some(u) = value.as_u64() {
        return usize::try_from(u).ok();
    }
    // Python clients sometimes send 0.0; accept integral floats as ComfyUI does.
    value
        .as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1e9)
        .map(|f| f as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn links_values_and_wrapped_lists() {
        let wf = Workflow::from_api_json(&json!({
            "3": {"class_type": "X", "inputs": {
                "a": ["4", 0], "b": 5, "c": {"__value__": [1, 2]}, "d": ["4", 0, 1], "e": [4, 0]
            }}
        }))
        .unwrap();
        let node = wf.node("3").unwrap();
        assert_eq!(
            node.input("a"),
            Some(&RawInput::Link {
                node: "4".into(),
                slot: 0
            })
        );
        assert_eq!(node.input("b"), Some(&RawInput::Const(json!(5))));
        assert_eq!(node.input("c"), Some(&RawInput::Const(json!([1, 2]))));
        assert!(matches!(node.input("d"), Some(RawInput::BadLink(_))));
        assert!(matches!(node.input("e"), Some(RawInput::BadLink(_))));
    }

    #[test]
    fn outer_shape_errors() {
        assert_eq!(
            Workflow::from_api_json(&json!([1])).unwrap_err(),
            WorkflowFormatError::NotAnObject
        );
        assert_eq!(
            Workflow::from_api_json(&json!({"1": 5})).unwrap_err(),
            WorkflowFormatError::NodeNotAnObject("1".into())
        );
    }
}
