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
    /// `*`: accepts and matches every type.
    pub const ANY: SlotType = SlotType("*");
    /// An integer constant (Rust `i128`, so the full `u64` seed range fits).
    pub const INT: SlotType = SlotType("INT");
    /// A floating-point constant (`f64`).
    pub const FLOAT: SlotType = SlotType("FLOAT");
    /// A text constant.
    pub const STRING: SlotType = SlotType("STRING");
    /// A true/false constant.
    pub const BOOLEAN: SlotType = SlotType("BOOLEAN");
    /// A choice from a list of strings (ComfyUI sends the list itself as the type).
    pub const COMBO: SlotType = SlotType("COMBO");
    /// A batch of images, `[B, H, W, C]` f32 in 0..1.
    pub const IMAGE: SlotType = SlotType("IMAGE");
    /// A batch of masks, `[B, H, W]` f32 in 0..1.
    pub const MASK: SlotType = SlotType("MASK");
    /// Latent samples `[B, C, h, w]`, with an optional noise mask.
    pub const LATENT: SlotType = SlotType("LATENT");
    /// A loaded diffusion model (UNet), possibly patched (LoRA, …).
    pub const MODEL: SlotType = SlotType("MODEL");
    /// A loaded text encoder with its tokenizer.
    pub const CLIP: SlotType = SlotType("CLIP");
    /// A loaded VAE that encodes images to latents and decodes them back.
    pub const VAE: SlotType = SlotType("VAE");
    /// Encoded prompts with their options (area, strength, ControlNet, …).
    pub const CONDITIONING: SlotType = SlotType("CONDITIONING");
    /// A sampling algorithm picked by name (`euler`, `dpmpp_2m`, …).
    pub const SAMPLER: SlotType = SlotType("SAMPLER");
    /// A noise schedule: the sigma of each step, descending to the last.
    pub const SIGMAS: SlotType = SlotType("SIGMAS");
    /// A source of initial noise (seeded or disabled).
    pub const NOISE: SlotType = SlotType("NOISE");
    /// What predicts the denoised latent at each step (model plus conditioning and CFG).
    pub const GUIDER: SlotType = SlotType("GUIDER");
    /// A loaded ControlNet, T2I-Adapter or Control-LoRA.
    pub const CONTROL_NET: SlotType = SlotType("CONTROL_NET");
    /// A function from latent to latent (`LatentOperationSharpen`, …), applied by
    /// `LatentApplyOperation` or inside CFG.
    pub const LATENT_OPERATION: SlotType = SlotType("LATENT_OPERATION");
    /// A loaded image upscale model (ESRGAN, Real-ESRGAN Compact, …).
    pub const UPSCALE_MODEL: SlotType = SlotType("UPSCALE_MODEL");
    /// A loaded GLIGEN model (text boxes' position net and fusers).
    pub const GLIGEN: SlotType = SlotType("GLIGEN");
    /// A loaded CLIP vision encoder.
    pub const CLIP_VISION: SlotType = SlotType("CLIP_VISION");
    /// What a CLIP vision encoder made of an image (embeddings and hidden states).
    pub const CLIP_VISION_OUTPUT: SlotType = SlotType("CLIP_VISION_OUTPUT");
    /// A loaded T2I style model.
    pub const STYLE_MODEL: SlotType = SlotType("STYLE_MODEL");
    /// Poses in the OpenPose JSON format, one frame per image (comfyui_controlnet_aux).
    pub const POSE_KEYPOINT: SlotType = SlotType("POSE_KEYPOINT");

    /// The type name as ComfyUI spells it, e.g. `"IMAGE"`.
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
    /// `.latent` files at the top level of the input folder (LoadLatent).
    InputLatents,
    /// Files of a model folder, recursively, with relative paths (`sub/x.safetensors`).
    Models(&'static str),
    /// Folders under a model folder that hold a `model_index.json` (diffusers pipelines), with
    /// relative paths (DiffusersLoader).
    Pipelines(&'static str),
}

/// What kind of value an input takes, with its widget options.
#[derive(Debug, Clone)]
pub enum InputKind {
    /// An integer widget (`INT`).
    Int {
        /// The value the editor fills in for a new node.
        default: i128,
        /// The smallest accepted value; smaller constants fail validation.
        min: i128,
        /// The largest accepted value; larger constants fail validation.
        max: i128,
        /// The widget's increment; sent to the editor, not checked by validation.
        step: i128,
        /// Adds the editor's hidden "control after generate" widget (seed inputs).
        control_after_generate: bool,
    },
    /// A floating-point widget (`FLOAT`).
    Float {
        /// The value the editor fills in for a new node.
        default: f64,
        /// The smallest accepted value; smaller constants fail validation.
        min: f64,
        /// The largest accepted value; larger constants fail validation.
        max: f64,
        /// The widget's increment; sent to the editor, not checked by validation.
        step: f64,
        /// The precision the editor rounds typed values to; None leaves the editor's default.
        round: Option<f64>,
    },
    /// A text widget (`STRING`).
    String {
        /// The text the editor fills in for a new node.
        default: &'static str,
        /// Shown as a multi-line text box rather than a one-line field.
        multiline: bool,
        /// The editor expands `{a|b}` choices in it before queueing (ComfyUI's `dynamicPrompts`).
        dynamic_prompts: bool,
    },
    /// A toggle widget (`BOOLEAN`).
    Boolean {
        /// The value the editor fills in for a new node.
        default: bool,
    },
    /// A drop-down of strings (`COMBO`); a constant outside the options fails validation.
    Combo {
        /// Where the allowed values come from.
        options: ComboOptions,
        /// The preselected option; None lets the editor pick the first.
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
    /// The input's key in the workflow's `inputs` object (`"seed"`, `"model"`).
    pub name: &'static str,
    /// The value or link type it takes, with widget options.
    pub kind: InputKind,
    /// Listed under `optional` in `/object_info`; a missing optional input is not an error.
    pub optional: bool,
    /// Hover text for the editor; None for no tooltip.
    pub tooltip: Option<&'static str>,
}

/// A hidden input the executor injects (`PROMPT`, `EXTRA_PNGINFO`, `UNIQUE_ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenInput {
    /// `PROMPT`: the whole API-format workflow being run.
    Prompt,
    /// `EXTRA_PNGINFO`: the client's `extra_data.extra_pnginfo` (usually the editor workflow).
    ExtraPngInfo,
    /// `UNIQUE_ID`: the id of the node being run.
    UniqueId,
}

impl HiddenInput {
    /// The name ComfyUI uses for it in `/object_info` (`"PROMPT"`, …).
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
    /// The type of the value this output gives.
    pub ty: SlotType,
    /// The label shown on the output socket (`/object_info`'s `output_name`).
    pub name: &'static str,
    /// Hover text for the editor (`output_tooltips`); None for no tooltip.
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
    /// The class name workflows use in `class_type` (`"KSampler"`).
    pub class_type: &'static str,
    /// The title the editor shows (`"KSampler (Advanced)"`).
    pub display_name: &'static str,
    /// The editor's menu path, `/`-separated (`"sampling/custom_sampling"`).
    pub category: &'static str,
    /// A one-paragraph explanation for the editor; may be empty.
    pub description: &'static str,
    /// Declared inputs, required and optional, in display order.
    pub inputs: Vec<InputSpec>,
    /// Hidden inputs the executor fills in, each under the name the node reads it by.
    pub hidden: Vec<(&'static str, HiddenInput)>,
    /// Declared outputs, in slot order (links address them by index).
    pub outputs: Vec<OutputSpec>,
    /// A sink such as SaveImage: validation and execution start from these nodes.
    pub output_node: bool,
    /// What besides its inputs the node's cache key must cover.
    pub freshness: Freshness,
    /// The node checks its own constants (ComfyUI's `VALIDATE_INPUTS`): range and list checks are
    /// skipped for these inputs and the node's `validate` hook runs instead.
    pub self_validated: &'static [&'static str],
    /// `"nodes"` for ComfyUI core nodes, `"comfy_extras.…"` for extras, `"weft"` for our own.
    pub python_module: &'static str,
    /// ComfyUI's `INPUT_IS_LIST`: the node runs once with every input as the whole list it was
    /// given (a plain value is a list of one), instead of once per list element.
    pub input_is_list: bool,
    /// ComfyUI's `OUTPUT_IS_LIST`, by output slot (missing slots are false): the output is a list
    /// whose elements each feed a separate run of the nodes it links to.
    pub output_is_list: &'static [bool],
}

impl NodeSpec {
    /// The declared input called `name`, or None if the class has no such input.
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Whether output `slot` is a list (`OUTPUT_IS_LIST`).
    pub fn output_is_list(&self, slot: usize) -> bool {
        self.output_is_list.get(slot).copied().unwrap_or(false)
    }
}

/// Builder helpers so node files read as a table of inputs.
pub mod build {
    use super::*;

    /// A required input with no tooltip.
    pub fn required(name: &'static str, kind: InputKind) -> InputSpec {
        InputSpec {
            name,
            kind,
            optional: false,
            tooltip: None,
        }
    }

    /// An optional input with no tooltip.
    pub fn optional(name: &'static str, kind: InputKind) -> InputSpec {
        InputSpec {
            name,
            kind,
            optional: true,
            tooltip: None,
        }
    }

    /// A socket that takes a link of type `ty`.
    pub fn link(ty: SlotType) -> InputKind {
        InputKind::Link(ty)
    }

    /// An integer widget with step 1.
    pub fn int(default: i128, min: i128, max: i128) -> InputKind {
        InputKind::Int {
            default,
            min,
            max,
            step: 1,
            control_after_generate: false,
        }
    }

    /// An integer widget with the given step.
    pub fn int_step(default: i128, min: i128, max: i128, step: i128) -> InputKind {
        InputKind::Int {
            default,
            min,
            max,
            step,
            control_after_generate: false,
        }
    }

    /// A seed widget: 0 to `u64::MAX`, default 0, with "control after generate".
    pub fn seed() -> InputKind {
        InputKind::Int {
            default: 0,
            min: 0,
            max: u64::MAX as i128,
            step: 1,
            control_after_generate: true,
        }
    }

    /// A float widget, without a `round` option.
    pub fn float(default: f64, min: f64, max: f64, step: f64) -> InputKind {
        InputKind::Float {
            default,
            min,
            max,
            step,
            round: None,
        }
    }

    /// A one-line text widget without dynamic prompts.
    pub fn string(default: &'static str) -> InputKind {
        InputKind::String {
            default,
            multiline: false,
            dynamic_prompts: false,
        }
    }

    /// A multi-line text widget with dynamic prompts, as prompt boxes use.
    pub fn multiline(default: &'static str) -> InputKind {
        InputKind::String {
            default,
            multiline: true,
            dynamic_prompts: true,
        }
    }

    /// A toggle widget.
    pub fn boolean(default: bool) -> InputKind {
        InputKind::Boolean { default }
    }

    /// A drop-down of fixed options, no default (the editor picks the first).
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
            input_is_list: false,
            output_is_list: &[],
        }
    }

    /// An output of type `ty` labelled `name`, with no tooltip.
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
