//! `/object_info`: node declarations in ComfyUI's V1 `NodeInfo` shape (`comfyui-api.md` §1.5).

use serde_json::{json, Map, Value as Json};

use crate::graph::spec::{InputKind, InputSpec, NodeSpec};
use crate::nodes::combo_options;
use crate::paths::DataDirs;

/// One node's `NodeInfo`.
pub fn node_info(spec: &NodeSpec, dirs: &DataDirs) -> Json {
    let mut required = Map::new();
    let mut optional = Map::new();
    let mut hidden = Map::new();
    for input in &spec.inputs {
        let target = if input.optional {
            &mut optional
        } else {
            &mut required
        };
        target.insert(input.name.to_owned(), input_config(input, dirs, usize::MAX));
    }
    for (name, kind) in &spec.hidden {
        hidden.insert((*name).to_owned(), Json::from(kind.comfy_name()));
    }
    let order = |optional: bool| -> Vec<&str> {
        spec.inputs
            .iter()
            .filter(|i| i.optional == optional)
            .map(|i| i.name)
            .collect()
    };
    let mut input = Map::new();
    input.insert("required".into(), Json::Object(required));
    if !optional.is_empty() {
        input.insert("optional".into(), Json::Object(optional));
    }
    if !hidden.is_empty() {
        input.insert("hidden".into(), Json::Object(hidden));
    }
    let mut input_order = Map::new();
    input_order.insert("required".into(), json!(order(false)));
    if spec.inputs.iter().any(|i| i.optional) {
        input_order.insert("optional".into(), json!(order(true)));
    }
    if !spec.hidden.is_empty() {
        input_order.insert(
            "hidden".into(),
            json!(spec.hidden.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
        );
    }
    let mut info = json!({
        "input": input,
        "input_order": input_order,
        "output": spec.outputs.iter().map(|o| o.ty.0).collect::<Vec<_>>(),
        "output_is_list": (0..spec.outputs.len()).map(|slot| spec.output_is_list(slot)).collect::<Vec<_>>(),
        "output_name": spec.outputs.iter().map(|o| o.name).collect::<Vec<_>>(),
        "name": spec.class_type,
        "display_name": spec.display_name,
        "description": spec.description,
        "python_module": spec.python_module,
        "category": spec.category,
        "output_node": spec.output_node,
    });
    // ComfyUI's V3 schema reports `is_input_list`; classic nodes leave it out, as here for the
    // nodes that run element by element.
    if spec.input_is_list {
        info["is_input_list"] = Json::Bool(true);
    }
    if spec.outputs.iter().any(|o| o.tooltip.is_some()) {
        info["output_tooltips"] = json!(spec
            .outputs
            .iter()
            .map(|o| o.tooltip.unwrap_or(""))
            .collect::<Vec<_>>());
    }
    info
}

/// `[TYPE, {options}]` for one input; a combo's TYPE is its option list. Lists longer than
/// `max_list` are replaced by null, as ComfyUI's validation errors do.
pub fn input_config(input: &InputSpec, dirs: &DataDirs, max_list: usize) -> Json {
    let mut options = Map::new();
    let type_part = match &input.kind {
        InputKind::Int {
            default,
            min,
            max,
            step,
            control_after_generate,
        } => {
            options.insert("default".into(), int_json(*default));
            options.insert("min".into(), int_json(*min));
            options.insert("max".into(), int_json(*max));
            options.insert("step".into(), int_json(*step));
            if *control_after_generate {
                options.insert("control_after_generate".into(), Json::Bool(true));
            }
            Json::from("INT")
        }
        InputKind::Float {
            default,
            min,
            max,
            step,
            round,
        } => {
            options.insert("default".into(), json!(default));
            options.insert("min".into(), json!(min));
            options.insert("max".into(), json!(max));
            options.insert("step".into(), json!(step));
            if let Some(round) = round {
                options.insert("round".into(), json!(round));
            }
            Json::from("FLOAT")
        }
        InputKind::String {
            default,
            multiline,
            dynamic_prompts,
        } => {
            options.insert("default".into(), Json::from(*default));
            if *multiline {
                options.insert("multiline".into(), Json::Bool(true));
            }
            if *dynamic_prompts {
                options.insert("dynamicPrompts".into(), Json::Bool(true));
            }
            Json::from("STRING")
        }
        InputKind::Boolean { default } => {
            options.insert("default".into(), Json::Bool(*default));
            Json::from("BOOLEAN")
        }
        InputKind::Combo {
            options: list,
            default,
            image_upload,
        } => {
            if let Some(default) = default {
                options.insert("default".into(), Json::from(*default));
            }
            if *image_upload {
                options.insert("image_upload".into(), Json::Bool(true));
            }
            let values = combo_options(dirs, list);
            if values.len() > max_list {
                return Json::Null;
            }
            json!(values)
        }
        InputKind::Link(ty) => Json::from(ty.0),
    };
    if let Some(tooltip) = input.tooltip {
        options.insert("tooltip".into(), Json::from(tooltip));
    }
    if options.is_empty() {
        json!([type_part])
    } else {
        json!([type_part, options])
    }
}

fn int_json(value: i128) -> Json {
    crate::graph::ConstValue::Int(value).to_json()
}
