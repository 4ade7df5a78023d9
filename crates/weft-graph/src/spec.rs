//! Node declarations: what a node class takes and gives.
//!
//! A `NodeSpec` is written once per node class (in `nodes/`) and drives validation, `/object_info`,
//! the editor's widgets and the docs. Slot *types* live here; runtime *values* live in `nodes`.

/// A socket or widget type name as ComfyUI spells it (`"IMAGE"`, `"LATENT"`, `"INT"`, `"*"`).
///
/// A comma list (`"IMAGE,MASK"`) matches any of its members; `"*"` matches everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotType(pub &'static str);

impl SlotType {
    pub const ANY: SlotType = SlotType("*");
    pub const INT: SlotType = SlotType("INT");
    pub const FLOAT: SlotType = SlotType("FLOAT");
    pub const STRING: SlotType = SlotType("STRING");
    pub const BOOLEAN: SlotType = SlotType("BOOLEAN");
    pub const COMBO: SlotType = SlotType("COMBO");
    pub const IMAGE: SlotType = SlotType("IMAGE");
    pub const MASK: SlotType = SlotType("MASK");
    pub const LATENT: SlotType = SlotType("LATENT");
    pub const MODEL: SlotType = SlotType("MODEL");
    pub const CLIP: SlotType = SlotType("CLIP");
    pub const VAE: SlotType = SlotType("VAE");
    pub const CONDITIONING: SlotType = SlotType("CONDITIONING");
    pub const SAMPLER: SlotType = SlotType("SAMPLER");
    pub const SIGMAS: SlotType = SlotType("SIGMAS");
    pub const NOISE: SlotType = SlotType("NOISE");
    pub const GUIDER: SlotType = SlotType("GUIDER");
    pub const CONTROL_NET: SlotType = SlotType("CONTROL_NET");

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// Whether a value of type `received` may feed an input declared as `declared`
/// (`comfy_execution/validation.py validate_node_input`).
pub fn types_compatible(received: &str, declared: &str) -> bool {
    if received == declared || received == "*" || declared == "*" {
        return true;
    }
    let received: Vec<&str> = received.split(',').map(str::trim).collect();
    declared
        .split(',')
        .map(str::trim)
        .any(|d| received.contains(&d))
}

/// Where a combo's options come from.
#[derive(Debug, Clone)]
pub enum ComboOptions {
    /// A fixed list, in display order.
    Static(&'static [&'static str]),
    /// Files under a model folder (`checkpoints`, `loras`, …) or a data folder (`input`), listed at
    /// request time by whoever resolves specs (validation receives the resolved list).
    Files(FileList),
}

/// A folder whose file names form a combo's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileList {
    /// Image files at the top level of the input folder (LoadImage).
    InputImages,
    /// Files of a model folder, recursively, with relative paths (`sub/x.safetensors`).
    Models(&'static str),
}

/// What kind of value an input takes, with its widget options.
#[derive(Debug, Clone)]
pub enum InputKind {
    Int {
        default: i128,
        min: i128,
        max: i128,
        step: i128,
        /// Adds the editor's hidden "control after generate" widget (seed inputs).
        control_after_generate: bool,
    },
    Float {
        default: f64,
        min: f64,
        max: f64,
        step: f64,
        round: Option<f64>,
    },
    String {
        default: &'static str,
        multiline: bool,
        dynamic_prompts: bool,
    },
    Boolean {
        default: bool,
    },
    Combo {
        options: ComboOptions,
        default: Option<&'static str>,
        /// LoadImage's upload button.
        image_upload: bool,
    },
    /// A socket that only accepts links.
    Link(SlotType),
}

impl InputKind {
    /// The type name this input reports in `/object_info` and checks links against.
    pub fn type_name(&self) -> &'static str {
        match self {
            InputKind::Int { .. } => "INT",
            InputKind::Float { .. } => "FLOAT",
            InputKind::String { .. } => "STRING",
            InputKind::Boolean { .. } => "BOOLEAN",
            InputKind::Combo { .. } => "COMBO",
            InputKind::Link(t) => t.0,
        }
    }

    /// True for inputs the editor shows as widgets (constants), false for sockets.
    pub fn is_widget(&self) -> bool {
        !matches!(self, InputKind::Link(_))
    }
}

/// One declared input.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: &'static str,
    pub kind: InputKind,
    pub optional: bool,
    pub tooltip: Option<&'static str>,
}

/// A hidden input the executor injects (`PROMPT`, `EXTRA_PNGINFO`, `UNIQUE_ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenInput {
    Prompt,
    ExtraPngInfo,
    UniqueId,
}

impl HiddenInput {
    pub fn comfy_name(self) -> &'static str {
        match self {
            HiddenInput::Prompt => "PROMPT",
            HiddenInput::ExtraPngInfo => "EXTRA_PNGINFO",
            HiddenInput::UniqueId => "UNIQUE_ID",
        }
    }
}

/// One declared output.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub ty: SlotType,
    pub name: &'static str,
    pub tooltip: Option<&'static str>,
}

/// How a node's cache key treats the world outside its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The output depends only on the inputs.
    Pure,
    /// The node reads a file named by its inputs: the file's content hash joins the key.
    ReadsFiles,
    /// Never cached (ComfyUI's `IS_CHANGED` returning NaN).
    Always,
}

/// The whole declaration of a node class.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub class_type: &'static str,
    pub display_name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub inputs: Vec<InputSpec>,
    pub hidden: Vec<(&'static str, HiddenInput)>,
    pub outputs: Vec<OutputSpec>,
    pub output_node: bool,
    pub freshness: Freshness,
    /// The node checks its own constants (ComfyUI's `VALIDATE_INPUTS`): range and list checks are
    /// skipped for these inputs and the node's `validate` hook runs instead.
    pub self_validated: &'static [&'static str],
    /// `"nodes"` for ComfyUI core nodes, `"comfy_extras.…"` for extras, `"weft"` for our own.
    pub python_module: &'static str,
}

impl NodeSpec {
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }
}

/// Builder helpers so node files read as a table of inputs.
pub mod build {
    use super::*;

    pub fn required(name: &'static str, kind: InputKind) -> InputSpec {
        InputSpec {
            name,
            kind,
            optional: false,
            tooltip: None,
        }
    }

    pub fn optional(name: &'static str, kind: InputKind) -> InputSpec {
        InputSpec {
            name,
            kind,
            optional: true,
            tooltip: None,
        }
    }

    pub fn link(ty: SlotType) -> InputKind {
        InputKind::Link(ty)
    }

    pub fn int(default: i128, min: i128, max: i128) -> InputKind {
        InputKind::Int {
            default,
            min,
            max,
            step: 1,
            control_after_generate: false,
        }
    }

    pub fn int_step(default: i128, min: i128, max: i128, step: i128) -> InputKind {
        InputKind::Int {
            default,
            min,
            max,
            step,
            control_after_generate: false,
        }
    }

    pub fn seed() -> InputKind {
        InputKind::Int {
            default: 0,
            min: 0,
            max: u64::MAX as i128,
            step: 1,
            control_after_generate: true,
        }
    }

    pub fn float(default: f64, min: f64, max: f64, step: f64) -> InputKind {
        InputKind::Float {
            default,
            min,
            max,
            step,
            round: None,
        }
    }

    pub fn string(default: &'static str) -> InputKind {
        InputKind::String {
            default,
            multiline: false,
            dynamic_prompts: false,
        }
    }

    pub fn multiline(default: &'static str) -> InputKind {
        InputKind::String {
            default,
            multiline: true,
            dynamic_prompts: true,
        }
    }

    pub fn boolean(default: bool) -> InputKind {
        InputKind::Boolean { default }
    }

    pub fn combo(options: &'static [&'static str]) -> InputKind {
        InputKind::Combo {
            options: ComboOptions::Static(options),
            default: None,
            image_upload: false,
        }
    }

    /// A node declaration with the usual defaults: pure, not an output node, no hidden inputs,
    /// from ComfyUI's `nodes` module. Callers override fields with struct-update syntax.
    pub fn node(
        class_type: &'static str,
        display_name: &'static str,
        category: &'static str,
        inputs: Vec<InputSpec>,
        outputs: Vec<OutputSpec>,
    ) -> NodeSpec {
        NodeSpec {
            class_type,
            display_name,
            category,
            description: "",
            inputs,
            hidden: vec![],
            outputs,
            output_node: false,
            freshness: Freshness::Pure,
            self_validated: &[],
            python_module: "nodes",
        }
    }

    pub fn output(ty: SlotType, name: &'static str) -> OutputSpec {
        OutputSpec {
            ty,
            name,
            tooltip: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::types_compatible;

    #[test]
    fn type_matching_follows_comfyui() {
        assert!(types_compatible("IMAGE", "IMAGE"));
        assert!(types_compatible("*", "IMAGE"));
        assert!(types_compatible("IMAGE", "*"));
        assert!(types_compatible("IMAGE,MASK", "MASK"));
        assert!(types_compatible("MASK", "IMAGE,MASK"));
        assert!(!types_compatible("LATENT", "IMAGE"));
        assert!(!types_compatible("IMAGE,FLOAT", "LATENT,INT"));
    }
}
