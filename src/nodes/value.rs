//! Runtime values that flow along links, and the typed view a node gets of its inputs.

use std::sync::Arc;

use candle_core::Tensor;

use crate::engine::clip::encode::TextEncoder;
use crate::engine::clip_vision::{ClipVisionModel, ClipVisionOutput, StyleAdapter};
use crate::engine::diffusion::{CondEntry, DiffusionModel};
use crate::engine::gligen::Gligen;
use crate::engine::upscale::UpscaleModel;
use crate::engine::vae::AutoEncoderKL;
use crate::graph::{ConstValue, SlotType};
use crate::nodes::NodeError;

/// ComfyUI's CLIP: a text encoder and the layer to stop at (`CLIPSetLastLayer`).
#[derive(Debug, Clone)]
pub struct Clip {
    pub encoder: Arc<TextEncoder>,
    pub clip_skip: Option<isize>,
}

/// ComfyUI's LATENT: `{"samples", "noise_mask"?, "batch_index"?}`, samples unscaled (VAE space).
#[derive(Debug, Clone)]
pub struct Latent {
    /// `[B, C, h, w]` f32.
    pub samples: Tensor,
    /// `[B or 1, 1, h', w']`; 1 where sampling may change the latent.
    pub noise_mask: Option<Tensor>,
    pub batch_index: Option<Vec<usize>>,
}

impl Latent {
    pub fn new(samples: Tensor) -> Latent {
        Latent {
            samples,
            noise_mask: None,
            batch_index: None,
        }
    }
}

/// ComfyUI's NOISE: where the initial noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseSource {
    Random(u64),
    Disabled,
}

/// ComfyUI's GUIDER: a model with its conditioning and CFG scale.
#[derive(Debug, Clone)]
pub struct Guider {
    pub model: Arc<DiffusionModel>,
    pub positive: Arc<Vec<CondEntry>>,
    pub negative: Option<Arc<Vec<CondEntry>>>,
    pub cfg: f64,
    pub kind: GuiderKind,
}

/// How a guider combines its predictions beyond plain CFG.
#[derive(Debug, Clone)]
pub enum GuiderKind {
    /// CFGGuider, BasicGuider.
    Cfg,
    /// DualCFGGuider: `cfg` is `cfg_conds`.
    Dual {
        middle: Arc<Vec<CondEntry>>,
        cfg2: f64,
        nested: bool,
    },
    /// PerpNegGuider.
    PerpNeg {
        empty: Arc<Vec<CondEntry>>,
        neg_scale: f64,
    },
}

impl GuiderKind {
    /// The engine's view, borrowing the conditionings.
    pub fn guidance(&self) -> crate::engine::diffusion::Guidance<'_> {
        use crate::engine::diffusion::Guidance;
        match self {
            GuiderKind::Cfg => Guidance::Cfg,
            GuiderKind::Dual {
                middle,
                cfg2,
                nested,
            } => Guidance::Dual {
                middle,
                cfg2: *cfg2,
                nested: *nested,
            },
            GuiderKind::PerpNeg { empty, neg_scale } => Guidance::PerpNeg {
                empty,
                neg_scale: *neg_scale,
            },
        }
    }
}

/// A value on a link or a constant input.
#[derive(Debug, Clone)]
pub enum Value {
    Int(i128),
    Float(f64),
    String(String),
    Bool(bool),
    /// `[B, H, W, C]` f32 in 0..1.
    Image(Tensor),
    /// `[B, H, W]` f32 in 0..1.
    Mask(Tensor),
    Model(Arc<DiffusionModel>),
    Clip(Clip),
    Vae(Arc<AutoEncoderKL>),
    Conditioning(Arc<Vec<CondEntry>>),
    Latent(Latent),
    /// A sampler with the options its node set.
    Sampler(Arc<crate::engine::sampling::samplers::SamplerConfig>),
    Sigmas(Arc<Vec<f32>>),
    Noise(NoiseSource),
    Guider(Arc<Guider>),
    /// A ControlNet, T2I-Adapter or Control-LoRA.
    ControlNet(Arc<crate::engine::controlnet::load::LoadedControl>),
    /// A latent operation (`LATENT_OPERATION`): a function from latent to latent.
    LatentOperation(Arc<dyn crate::engine::diffusion::LatentOperation>),
    /// ComfyUI's list of values on one output slot (`OUTPUT_IS_LIST`, or a node run once per
    /// element of a list input). Never nested and never of length 1 (that is the value itself);
    /// only the executor builds and splits these, so a node sees one only as an input of a node
    /// that declares `input_is_list` (read through [`Inputs::list`]).
    List(Arc<Vec<Value>>),
    /// An image upscale model.
    UpscaleModel(Arc<UpscaleModel>),
    /// A GLIGEN model.
    Gligen(Arc<Gligen>),
    /// A CLIP vision encoder.
    ClipVision(Arc<ClipVisionModel>),
    /// A CLIP vision encoder's output for a batch of images.
    ClipVisionOutput(Arc<ClipVisionOutput>),
    /// A T2I style model.
    StyleModel(Arc<StyleAdapter>),
    /// POSE_KEYPOINT: one OpenPose JSON frame (`people`, `canvas_height`, `canvas_width`) per
    /// image, as comfyui_controlnet_aux's pose nodes emit it.
    PoseKeypoint(Arc<Vec<serde_json::Value>>),
}

impl Value {
    /// The slot type this value satisfies.
    pub fn slot_type(&self) -> SlotType {
        match self {
            Value::Int(_) => SlotType::INT,
            Value::Float(_) => SlotType::FLOAT,
            Value::String(_) => SlotType::STRING,
            Value::Bool(_) => SlotType::BOOLEAN,
            Value::Image(_) => SlotType::IMAGE,
            Value::Mask(_) => SlotType::MASK,
            Value::Model(_) => SlotType::MODEL,
            Value::Clip(_) => SlotType::CLIP,
            Value::Vae(_) => SlotType::VAE,
            Value::Conditioning(_) => SlotType::CONDITIONING,
            Value::Latent(_) => SlotType::LATENT,
            Value::Sampler(_) => SlotType::SAMPLER,
            Value::Sigmas(_) => SlotType::SIGMAS,
            Value::Noise(_) => SlotType::NOISE,
            Value::Guider(_) => SlotType::GUIDER,
            Value::ControlNet(_) => SlotType::CONTROL_NET,
            Value::LatentOperation(_) => SlotType::LATENT_OPERATION,
            Value::UpscaleModel(_) => SlotType::UPSCALE_MODEL,
            Value::Gligen(_) => SlotType::GLIGEN,
            Value::ClipVision(_) => SlotType::CLIP_VISION,
            Value::ClipVisionOutput(_) => SlotType::CLIP_VISION_OUTPUT,
            Value::StyleModel(_) => SlotType::STYLE_MODEL,
            Value::PoseKeypoint(_) => SlotType::POSE_KEYPOINT,
            // The elements' type; an empty list matches anything.
            Value::List(items) => items.first().map_or(SlotType::ANY, Value::slot_type),
        }
    }

    /// The elements a list holds, or the value itself as a list of one.
    pub fn elements(&self) -> &[Value] {
        match self {
            Value::List(items) => items,
            single => std::slice::from_ref(single),
        }
    }

    /// A list of `items`, or the one item itself (a list of one is the value, as in ComfyUI).
    pub fn list(mut items: Vec<Value>) -> Value {
        if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Value::List(Arc::new(items))
        }
    }

    /// Whether it keeps a model's weights alive (a loader's or a LoRA's output).
    pub fn holds_model(&self) -> bool {
        matches!(
            self,
            Value::Model(_)
                | Value::Clip(_)
                | Value::Vae(_)
                | Value::Guider(_)
                | Value::ControlNet(_)
                | Value::UpscaleModel(_)
                | Value::Gligen(_)
                | Value::ClipVision(_)
                | Value::StyleModel(_)
        ) || matches!(self, Value::List(items) if items.iter().any(Value::holds_model))
    }

    /// Bytes held, for the cache budget.
    pub fn byte_size(&self) -> usize {
        match self {
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => 16,
            Value::String(s) => 24 + s.len(),
            Value::Image(t) | Value::Mask(t) => tensor_bytes(t),
            // Models are owned by the model manager; a cached reference costs nothing extra.
            Value::Model(_)
            | Value::Clip(_)
            | Value::Vae(_)
            | Value::Guider(_)
            | Value::ControlNet(_)
            | Value::LatentOperation(_)
            | Value::UpscaleModel(_)
            | Value::Gligen(_)
            | Value::ClipVision(_)
            | Value::StyleModel(_) => 64,
            Value::ClipVisionOutput(o) => o.byte_size(),
            Value::List(items) => items.iter().map(Value::byte_size).sum(),
            Value::Conditioning(list) => list.iter().map(CondEntry::byte_size).sum(),
            Value::Latent(l) => {
                tensor_bytes(&l.samples) + l.noise_mask.as_ref().map_or(0, tensor_bytes)
            }
            Value::Sampler(_) | Value::Noise(_) => 32,
            Value::Sigmas(s) => s.len() * 4,
            Value::PoseKeypoint(frames) => frames.iter().map(|f| f.to_string().len()).sum(),
        }
    }

    /// A short description for error reports (`current_inputs`).
    pub fn summary(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => ConstValue::Int(*i).to_json(),
            Value::Float(f) => ConstValue::Float(*f).to_json(),
            Value::String(s) => ConstValue::String(s.clone()).summary(),
            Value::Bool(b) => serde_json::Value::from(*b),
            Value::Image(t) | Value::Mask(t) => serde_json::Value::from(format!(
                "{} {:?} {:?}",
                self.slot_type().0,
                t.dims(),
                t.dtype()
            )),
            Value::Latent(l) => serde_json::Value::from(format!("LATENT {:?}", l.samples.dims())),
            Value::Model(m) => serde_json::Value::from(format!("MODEL {:?}", m.family)),
            Value::Conditioning(c) => {
                serde_json::Value::from(format!("CONDITIONING ({} entries)", c.len()))
            }
            Value::Sampler(s) => serde_json::Value::from(format!("SAMPLER {}", s.sampler.name())),
            Value::Sigmas(s) => serde_json::Value::from(format!("SIGMAS ({} values)", s.len())),
            Value::List(items) => {
                serde_json::Value::from(format!("list of {} {}", items.len(), self.slot_type().0))
            }
            Value::UpscaleModel(m) => {
                serde_json::Value::from(format!("UPSCALE_MODEL {}", m.describe()))
            }
            other => serde_json::Value::from(other.slot_type().0),
        }
    }

    pub fn from_const(value: &ConstValue) -> Value {
        match value {
            ConstValue::Int(i) => Value::Int(*i),
            ConstValue::Float(f) => Value::Float(*f),
            ConstValue::String(s) => Value::String(s.clone()),
            ConstValue::Bool(b) => Value::Bool(*b),
        }
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// A node's inputs by name, with typed getters that name the input in their errors.
#[derive(Debug, Default)]
pub struct Inputs {
    values: Vec<(String, Value)>,
}

impl Inputs {
    pub fn new(values: Vec<(String, Value)>) -> Inputs {
        Inputs { values }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// An input of a node that declares `input_is_list`: the whole list it was given (a plain
    /// value is a list of one).
    pub fn list(&self, name: &str) -> Result<&[Value], NodeError> {
        Ok(self.required(name)?.elements())
    }

    /// Each input's first element, as ComfyUI's list nodes read their settings (`batch_size[0]`).
    pub fn firsts(&self) -> Inputs {
        Inputs::new(
            self.values
                .iter()
                .filter_map(|(n, v)| v.elements().first().map(|v| (n.clone(), v.clone())))
                .collect(),
        )
    }

    fn required(&self, name: &str) -> Result<&Value, NodeError> {
        self.get(name)
            .ok_or_else(|| NodeError::input(name, "required input is missing"))
    }

    fn wrong(name: &str, wanted: &str, got: &Value) -> NodeError {
        NodeError::input(
            name,
            format!("expected {wanted}, got {}", got.slot_type().0),
        )
    }

    pub fn int(&self, name: &str) -> Result<i128, NodeError> {
        match self.required(name)? {
            Value::Int(i) => Ok(*i),
            other => Err(Self::wrong(name, "INT", other)),
        }
    }

    /// An INT input that must fit in `usize` (sizes, counts, offsets).
    pub fn usize(&self, name: &str) -> Result<usize, NodeError> {
        let value = self.int(name)?;
        usize::try_from(value)
            .map_err(|_| NodeError::input(name, format!("{value} is not a valid size")))
    }

    pub fn float(&self, name: &str) -> Result<f64, NodeError> {
        match self.required(name)? {
            Value::Float(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(Self::wrong(name, "FLOAT", other)),
        }
    }

    pub fn string(&self, name: &str) -> Result<&str, NodeError> {
        match self.required(name)? {
            Value::String(s) => Ok(s),
            other => Err(Self::wrong(name, "STRING", other)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, NodeError> {
        match self.required(name)? {
            Value::Bool(b) => Ok(*b),
            other => Err(Self::wrong(name, "BOOLEAN", other)),
        }
    }

    pub fn image(&self, name: &str) -> Result<&Tensor, NodeError> {
        match self.required(name)? {
            Value::Image(t) => Ok(t),
            other => Err(Self::wrong(name, "IMAGE", other)),
        }
    }

    pub fn mask(&self, name: &str) -> Result<&Tensor, NodeError> {
        match self.required(name)? {
            Value::Mask(t) => Ok(t),
            other => Err(Self::wrong(name, "MASK", other)),
        }
    }
}

macro_rules! getter {
    ($name:ident, $variant:ident, $ty:ty, $type_name:literal) => {
        impl Inputs {
            pub fn $name(&self, name: &str) -> Result<&$ty, NodeError> {
                match self.required(name)? {
                    Value::$variant(v) => Ok(v),
                    other => Err(Self::wrong(name, $type_name, other)),
                }
            }
        }
    };
}

getter!(model, Model, Arc<DiffusionModel>, "MODEL");
getter!(clip, Clip, Clip, "CLIP");
getter!(vae, Vae, Arc<AutoEncoderKL>, "VAE");
getter!(
    conditioning,
    Conditioning,
    Arc<Vec<CondEntry>>,
    "CONDITIONING"
);
getter!(latent, Latent, Latent, "LATENT");
getter!(
    sampler,
    Sampler,
    Arc<crate::engine::sampling::samplers::SamplerConfig>,
    "SAMPLER"
);
getter!(sigmas, Sigmas, Arc<Vec<f32>>, "SIGMAS");
getter!(noise, Noise, NoiseSource, "NOISE");
getter!(guider, Guider, Arc<Guider>, "GUIDER");
getter!(
    latent_operation,
    LatentOperation,
    Arc<dyn crate::engine::diffusion::LatentOperation>,
    "LATENT_OPERATION"
);
getter!(
    control_net,
    ControlNet,
    Arc<crate::engine::controlnet::load::LoadedControl>,
    "CONTROL_NET"
);
getter!(clip_vision, ClipVision, Arc<ClipVisionModel>, "CLIP_VISION");
getter!(
    clip_vision_output,
    ClipVisionOutput,
    Arc<ClipVisionOutput>,
    "CLIP_VISION_OUTPUT"
);
getter!(style_model, StyleModel, Arc<StyleAdapter>, "STYLE_MODEL");
getter!(
    upscale_model,
    UpscaleModel,
    Arc<UpscaleModel>,
    "UPSCALE_MODEL"
);
getter!(gligen, Gligen, Arc<Gligen>, "GLIGEN");
