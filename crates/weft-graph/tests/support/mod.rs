//! A tiny node catalog and helpers for the validation tests.
//!
//! The declarations imitate the server's real nodes (checkpoint loader, text encoder, sampler, …)
//! plus a few nodes made for testing: `Widgets` (an output node whose inputs are all optional
//! widgets, to test constants one at a time), `Pass`/`Sink` (wildcard sockets, to build arbitrary
//! graph shapes), `Checked` (an input the node validates itself) and `Choices` (combos whose
//! options look like other types or need escaping in Python's repr).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::Value as Json;
use weft_graph::spec::build::*;
use weft_graph::spec::{ComboOptions, FileList, InputKind, NodeSpec};
use weft_graph::validate::{Catalog, NodeError, NodeErrors, Validation};
use weft_graph::{validate, ConstValue, Plan, SlotType, Workflow};

/// 25 options: more than the 20 that ComfyUI lists in a `value_not_in_list` error.
pub const MANY: &[&str] = &[
    "o00", "o01", "o02", "o03", "o04", "o05", "o06", "o07", "o08", "o09", "o10", "o11", "o12",
    "o13", "o14", "o15", "o16", "o17", "o18", "o19", "o20", "o21", "o22", "o23", "o24",
];

/// Options that look like the str() of a number, a boolean, None and a list.
pub const LOOKALIKES: &[&str] = &["1", "2.5", "True", "None", "[1, 2]"];

/// Options whose Python repr needs the other quote or escapes.
pub const AWKWARD: &[&str] = &[
    "it's",
    "say \"hi\"",
    "both ' and \"",
    "back\\slash",
    "tab\there\nnew\rline",
    "bell\u{7}del\u{7f}",
    "caf\u{e9} \u{732b}",
    "nbsp\u{a0}zwsp\u{200b}soft\u{ad}",
    "private\u{e000}astral\u{1f431}tag\u{e0041}",
];

/// The catalog: specs by class name, file lists, and a log of `check_input` calls.
pub struct TestCatalog {
    specs: HashMap<&'static str, NodeSpec>,
    /// What `FileList::Models("checkpoints")` resolves to.
    pub checkpoints: Vec<String>,
    /// What `FileList::InputImages` resolves to.
    pub input_images: Vec<String>,
    /// Every `check_input` call: (class, input, value).
    pub checked: RefCell<Vec<(String, String, ConstValue)>>,
}

fn specs() -> Vec<NodeSpec> {
    vec![
        NodeSpec {
            outputs: vec![
                output(SlotType::MODEL, "MODEL"),
                output(SlotType::CLIP, "CLIP"),
                output(SlotType::VAE, "VAE"),
            ],
            ..node(
                "CheckpointLoader",
                "Load Checkpoint",
                "loaders",
                vec![required(
                    "ckpt_name",
                    InputKind::Combo {
                        options: ComboOptions::Files(FileList::Models("checkpoints")),
                        default: None,
                        image_upload: false,
                    },
                )],
                vec![],
            )
        },
        node(
            "TextEncode",
            "CLIP Text Encode",
            "conditioning",
            vec![
                required("text", multiline("")),
                required("clip", link(SlotType::CLIP)),
            ],
            vec![output(SlotType::CONDITIONING, "CONDITIONING")],
        ),
        node(
            "EmptyLatent",
            "Empty Latent Image",
            "latent",
            vec![
                required("width", int_step(512, 16, 8192, 8)),
                required("height", int_step(512, 16, 8192, 8)),
                required("batch_size", int(1, 1, 4096)),
            ],
            vec![output(SlotType::LATENT, "LATENT")],
        ),
        node(
            "Sampler",
            "KSampler",
            "sampling",
            vec![
                required("model", link(SlotType::MODEL)),
                required("seed", seed()),
                required("steps", int(20, 1, 10000)),
                required("cfg", float(8.0, 0.0, 100.0, 0.1)),
                required(
                    "sampler_name",
                    combo(&["euler", "euler_ancestral", "dpmpp_2m"]),
                ),
                required("positive", link(SlotType::CONDITIONING)),
                required("negative", link(SlotType::CONDITIONING)),
                required("latent_image", link(SlotType::LATENT)),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ],
            vec![output(SlotType::LATENT, "LATENT")],
        ),
        node(
            "Decode",
            "VAE Decode",
            "latent",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("vae", link(SlotType::VAE)),
            ],
            vec![output(SlotType::IMAGE, "IMAGE")],
        ),
        NodeSpec {
            output_node: true,
            ..node(
                "SaveImage",
                "Save Image",
                "image",
                vec![
                    required("images", link(SlotType::IMAGE)),
                    required("filename_prefix", string("Weft")),
                ],
                vec![],
            )
        },
        NodeSpec {
            self_validated: &["image"],
            ..node(
                "LoadImage",
                "Load Image",
                "image",
                vec![required(
                    "image",
                    InputKind::Combo {
                        options: ComboOptions::Files(FileList::InputImages),
                        default: None,
                        image_upload: true,
                    },
                )],
                vec![
                    output(SlotType::IMAGE, "IMAGE"),
                    output(SlotType::MASK, "MASK"),
                ],
            )
        },
        NodeSpec {
            output_node: true,
            ..node(
                "Widgets",
                "Widgets",
                "testing",
                vec![
                    optional("i", int(0, -10, 10)),
                    optional("stepped", int_step(0, 0, 64, 8)),
                    optional("seed", seed()),
                    optional("f", float(0.5, 0.0, 1.0, 0.1)),
                    optional("s", string("")),
                    optional("b", boolean(false)),
                    optional("c", combo(&["a", "b", "c"])),
                    optional("many", combo(MANY)),
                    optional("model", link(SlotType::MODEL)),
                ],
                vec![],
            )
        },
        node(
            "Pass",
            "Pass",
            "testing",
            vec![
                optional("a", link(SlotType::ANY)),
                optional("b", link(SlotType::ANY)),
            ],
            vec![output(SlotType::ANY, "out")],
        ),
        NodeSpec {
            output_node: true,
            ..node(
                "Sink",
                "Sink",
                "testing",
                vec![
                    optional("a", link(SlotType::ANY)),
                    optional("b", link(SlotType::ANY)),
                ],
                vec![output(SlotType::ANY, "out")],
            )
        },
        node(
            "ImageOrMask",
            "Image or Mask",
            "testing",
            vec![required("pixels", link(SlotType("IMAGE,MASK")))],
            vec![
                output(SlotType("IMAGE,MASK"), "out"),
                output(SlotType::FLOAT, "mean"),
            ],
        ),
        node(
            "IntConst",
            "Int",
            "testing",
            vec![required("value", int(0, -1000, 1000))],
            vec![output(SlotType::INT, "INT")],
        ),
        NodeSpec {
            output_node: true,
            ..node(
                "Choices",
                "Choices",
                "testing",
                vec![
                    optional("n", combo(LOOKALIKES)),
                    optional("q", combo(AWKWARD)),
                ],
                vec![],
            )
        },
        NodeSpec {
            output_node: true,
            self_validated: &["level"],
            ..node(
                "Checked",
                "Checked",
                "testing",
                vec![
                    required("level", int(0, 0, 10)),
                    optional("other", int(0, 0, 10)),
                ],
                vec![],
            )
        },
    ]
}

impl Default for TestCatalog {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCatalog {
    pub fn new() -> Self {
        TestCatalog {
            specs: specs().into_iter().map(|s| (s.class_type, s)).collect(),
            checkpoints: vec!["sd15.safetensors".into(), "sub/xl.safetensors".into()],
            input_images: vec!["cat.png".into(), "dog.jpg".into()],
            checked: RefCell::new(Vec::new()),
        }
    }

    /// Validates `prompt` (API format) with all outputs.
    pub fn check(&self, prompt: Json) -> Validation {
        self.check_targets(prompt, None)
    }

    /// Validates `prompt` (API format) with the given targets.
    pub fn check_targets(&self, prompt: Json, targets: Option<&[&str]>) -> Validation {
        let workflow = Workflow::from_api_json(&prompt).expect("API-format prompt");
        let targets: Option<Vec<String>> =
            targets.map(|t| t.iter().map(|s| (*s).to_owned()).collect());
        validate(&workflow, self, targets.as_deref())
    }
}

impl Catalog for TestCatalog {
    fn spec(&self, class_type: &str) -> Option<&NodeSpec> {
        self.specs.get(class_type)
    }

    fn combo_options(&self, options: &ComboOptions) -> Vec<String> {
        match options {
            ComboOptions::Static(list) => list.iter().map(|s| (*s).to_owned()).collect(),
            ComboOptions::Files(FileList::InputImages) => self.input_images.clone(),
            ComboOptions::Files(FileList::InputLatents) => Vec::new(),
            ComboOptions::Files(FileList::Pipelines(_)) => Vec::new(),
            ComboOptions::Files(FileList::Models("checkpoints")) => self.checkpoints.clone(),
            ComboOptions::Files(FileList::Models(_)) => Vec::new(),
        }
    }

    fn check_input(&self, spec: &NodeSpec, input: &str, value: &ConstValue) -> Result<(), String> {
        self.checked.borrow_mut().push((
            spec.class_type.to_owned(),
            input.to_owned(),
            value.clone(),
        ));
        match (spec.class_type, input, value) {
            ("LoadImage", "image", ConstValue::String(name)) => {
                // Like ComfyUI's LoadImage, an annotated name outside the list is accepted too.
                if self.input_images.contains(name) || name.ends_with(" [output]") {
                    Ok(())
                } else {
                    Err(format!("Invalid image file: {name}"))
                }
            }
            ("Checked", "level", ConstValue::Int(level)) => {
                if level % 2 == 0 {
                    Ok(())
                } else {
                    Err(format!("level must be even, got {level}"))
                }
            }
            _ => Err(format!("unexpected check of {}.{input}", spec.class_type)),
        }
    }
}

/// The node errors reported for `id`; panics when there are none.
pub fn errors_of<'a>(validation: &'a Validation, id: &str) -> &'a NodeErrors {
    validation
        .node_errors
        .iter()
        .find(|e| e.node_id == id)
        .unwrap_or_else(|| panic!("no errors for node {id}: {:#?}", validation.node_errors))
}

/// The single error of node `id`; panics unless there is exactly one.
pub fn only_error<'a>(validation: &'a Validation, id: &str) -> &'a NodeError {
    let errors = &errors_of(validation, id).errors;
    assert_eq!(errors.len(), 1, "expected one error on {id}: {errors:#?}");
    &errors[0]
}

/// The ids of the failing nodes, in the reported order.
pub fn failing_ids(validation: &Validation) -> Vec<&str> {
    validation
        .node_errors
        .iter()
        .map(|e| e.node_id.as_str())
        .collect()
}

/// The plan; panics (showing the errors) when validation failed.
pub fn plan(validation: &Validation) -> &Plan {
    validation.plan.as_ref().unwrap_or_else(|| {
        panic!(
            "no plan: {:?} {:#?}",
            validation.failure, validation.node_errors
        )
    })
}

/// The plan's node ids, in execution order.
pub fn order(plan: &Plan) -> Vec<&str> {
    plan.nodes().iter().map(|n| n.id.as_str()).collect()
}

/// A complete text-to-image prompt with ComfyUI's default ids.
pub fn txt2img() -> Json {
    serde_json::json!({
        "3": {"class_type": "Sampler", "inputs": {
            "seed": 156680208700286u64, "steps": 20, "cfg": 8, "sampler_name": "euler",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]
        }},
        "4": {"class_type": "CheckpointLoader", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "5": {"class_type": "EmptyLatent", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "TextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "TextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "Decode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "Weft", "images": ["8", 0]}}
    })
}
