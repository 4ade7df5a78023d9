//! Model loaders: CheckpointLoaderSimple, CheckpointLoader, VAELoader, CLIPLoader,
//! DualCLIPLoader, UNETLoader and DiffusersLoader.

use std::sync::Arc;

use crate::engine::clip::encode::TextEncoder;
use crate::engine::load::fp8::Fp8Format;
use crate::engine::manager::{bpe, clip_file, LoadedCheckpoint};
use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, FileList, Freshness, InputKind, NodeSpec, OutputSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{
    file_fingerprint, Clip, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Value,
};
use crate::paths::DataDirs;

pub fn register(registry: &mut Registry) {
    registry.add(CheckpointLoaderSimple);
    registry.add(CheckpointLoader);
    registry.add(VaeLoader);
    registry.add(ClipLoader);
    registry.add(DualClipLoader);
    registry.add(UnetLoader);
    registry.add(DiffusersLoader);
}

/// A drop-down of the files in model folder `folder`.
pub(crate) fn files(folder: &'static str) -> InputKind {
    InputKind::Combo {
        options: ComboOptions::Files(FileList::Models(folder)),
        default: None,
        image_upload: false,
    }
}

pub(crate) fn loader_spec(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    inputs: Vec<crate::graph::spec::InputSpec>,
    outputs: Vec<OutputSpec>,
    description: &'static str,
) -> NodeSpec {
    NodeSpec {
        description,
        freshness: Freshness::ReadsFiles,
        ..node(class_type, display_name, category, inputs, outputs)
    }
}

pub(crate) fn checkpoint_outputs() -> Vec<OutputSpec> {
    vec![
        OutputSpec {
            ty: SlotType::MODEL,
            name: "MODEL",
            tooltip: Some("The model used for denoising latents."),
        },
        OutputSpec {
            ty: SlotType::CLIP,
            name: "CLIP",
            tooltip: Some("The CLIP model used for encoding text prompts."),
        },
        OutputSpec {
            ty: SlotType::VAE,
            name: "VAE",
            tooltip: Some(
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
        },
    ]
}

fn load_checkpoint(ctx: &NodeContext, name: &str) -> Result<NodeOutput, NodeError> {
    let loaded = open_checkpoint(ctx, name)?;
    Ok(NodeOutput::values(checkpoint_values(name, &loaded)?))
}

/// The checkpoint `name` from `models/checkpoints`, through the model manager.
pub(crate) fn open_checkpoint(
    ctx: &NodeContext,
    name: &str,
) -> Result<Arc<LoadedCheckpoint>, NodeError> {
    let path = ctx.model_path("checkpoints", "ckpt_name", name)?;
    ctx.models
        .checkpoint(&path)
        .map_err(|e| NodeError::model_load("ckpt_name", e))
}

/// A checkpoint's MODEL, CLIP and VAE outputs.
pub(crate) fn checkpoint_values(
    name: &str,
    loaded: &LoadedCheckpoint,
) -> Result<Vec<Value>, NodeError> {
    let clip = loaded.clip.as_ref().ok_or_else(|| {
        NodeError::input("ckpt_name", format!("{name} has no text encoder weights"))
    })?;
    let vae = loaded.vae.as_ref().ok_or_else(|| {
        NodeError::input(
            "ckpt_name",
            format!("{name} has no VAE weights; load one with VAELoader"),
        )
    })?;
    Ok(vec![
        Value::Model(Arc::clone(&loaded.model)),
        Value::Clip(Clip {
            encoder: Arc::clone(clip),
            clip_skip: None,
        }),
        Value::Vae(Arc::clone(vae)),
    ])
}

/// Loads a single-file checkpoint (SD1.x, SD2.x, SDXL base or refiner, detected from its weights).
pub struct CheckpointLoaderSimple;

impl Node for CheckpointLoaderSimple {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            vec![required("ckpt_name", files("checkpoints"))],
            checkpoint_outputs(),
            "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        load_checkpoint(ctx, inputs.string("ckpt_name")?)
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "checkpoints", constants, "ckpt_name")
    }
}

/// ComfyUI's deprecated loader with a config file; Weft detects the architecture from the
/// weights, so the config is accepted and not needed.
pub struct CheckpointLoader;

impl Node for CheckpointLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "CheckpointLoader",
            "Load Checkpoint With Config (DEPRECATED)",
            "advanced/loaders",
            vec![
                required("config_name", files("configs")),
                required("ckpt_name", files("checkpoints")),
            ],
            checkpoint_outputs(),
            "The config is ignored: the architecture is detected from the weights.",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        load_checkpoint(ctx, inputs.string("ckpt_name")?)
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "checkpoints", constants, "ckpt_name")
    }
}

/// Loads a standalone VAE (LDM or diffusers names).
pub struct VaeLoader;

impl Node for VaeLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "VAELoader",
            "Load VAE",
            "loaders",
            vec![required("vae_name", files("vae"))],
            vec![output(SlotType::VAE, "VAE")],
            "",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("vae_name")?;
        let path = ctx.model_path("vae", "vae_name", name)?;
        // Latents are stored unscaled (ComfyUI's convention), so the scale is not used here.
        let vae = ctx
            .models
            .vae(&path, 0.18215)
            .map_err(|e| NodeError::model_load("vae_name", e))?;
        Ok(NodeOutput::values(vec![Value::Vae(vae)]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "vae", constants, "vae_name")
    }
}

/// Loads a standalone text encoder (CLIP-L for SD1, OpenCLIP-H for SD2, told apart by width).
pub struct ClipLoader;

impl Node for ClipLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "CLIPLoader",
            "Load CLIP",
            "advanced/loaders",
            vec![
                required("clip_name", files("text_encoders")),
                required("type", combo(&["stable_diffusion"])),
            ],
            vec![output(SlotType::CLIP, "CLIP")],
            "Loads a text encoder file: CLIP-L for SD1.x, OpenCLIP-H for SD2.x.",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("clip_name")?;
        let path = ctx.model_path("text_encoders", "clip_name", name)?;
        let model = ctx
            .models
            .file_weight_dtype(&path)
            .and_then(|dtype| clip_file(&path, dtype, ctx.models.device()))
            .map_err(|e| NodeError::model_load("clip_name", e))?;
        // SD2's OpenCLIP-H is 1024 wide; everything else is treated as SD1's CLIP-L.
        let encoder = if model.hidden_size() == 1024 {
            TextEncoder::sd2(model, bpe())
        } else {
            TextEncoder::sd1(model, bpe())
        };
        Ok(NodeOutput::values(vec![Value::Clip(Clip {
            encoder: Arc::new(encoder),
            clip_skip: None,
        })]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "text_encoders", constants, "clip_name")
    }
}

/// Loads SDXL's two text encoders; which file is CLIP-L and which OpenCLIP-bigG is read from the
/// weights (bigG has the text projection), so the order does not matter.
pub struct DualClipLoader;

impl Node for DualClipLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "DualCLIPLoader",
            "DualCLIPLoader",
            "advanced/loaders",
            vec![
                required("clip_name1", files("text_encoders")),
                required("clip_name2", files("text_encoders")),
                required("type", combo(&["sdxl"])),
            ],
            vec![output(SlotType::CLIP, "CLIP")],
            "Loads SDXL's CLIP-L and OpenCLIP-bigG text encoders.",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let load = |input: &str| -> Result<_, NodeError> {
            let path = ctx.model_path("text_encoders", input, inputs.string(input)?)?;
            ctx.models
                .file_weight_dtype(&path)
                .and_then(|dtype| clip_file(&path, dtype, ctx.models.device()))
                .map_err(|e| NodeError::model_load(input, e))
        };
        let (first, second) = (load("clip_name1")?, load("clip_name2")?);
        let (l, g) = match (first.config().projection_dim.is_some(), second.config().projection_dim.is_some()) {
            (false, true) => (first, second),
            (true, false) => (second, first),
            _ => {
                return Err(NodeError::input(
                    "clip_name2",
                    "SDXL needs one CLIP-L (no text projection) and one OpenCLIP-bigG (with a text projection)",
                ))
            }
        };
        let encoder = TextEncoder::sdxl(l, g, bpe());
        Ok(NodeOutput::values(vec![Value::Clip(Clip {
            encoder: Arc::new(encoder),
            clip_skip: None,
        })]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        Ok(format!(
            "{}|{}",
            file_fingerprint(dirs, "text_encoders", constants, "clip_name1")?,
            file_fingerprint(dirs, "text_encoders", constants, "clip_name2")?
        ))
    }
}

/// Loads a diffusion model alone (ComfyUI's "Load Diffusion Model"): a UNet file in the LDM layout,
/// bare or under `model.diffusion_model.`, from `models/diffusion_models` or `models/unet`.
pub struct UnetLoader;

impl Node for UnetLoader {
    fn spec(&self) -> NodeSpec {
        loader_spec(
            "UNETLoader",
            "Load Diffusion Model",
            "advanced/loaders",
            vec![
                required("unet_name", files("diffusion_models")),
                required(
                    "weight_dtype",
                    combo(&["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]),
                ),
            ],
            vec![output(SlotType::MODEL, "MODEL")],
            "",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("unet_name")?;
        // "default" keeps the file's precision (or --dtype); the fp8 ones round the weights.
        let fp8 = Fp8Format::parse(inputs.string("weight_dtype")?);
        let path = ctx.model_path("diffusion_models", "unet_name", name)?;
        let loaded = ctx
            .models
            .checkpoint_as(&path, fp8)
            .map_err(|e| NodeError::model_load("unet_name", e))?;
        Ok(NodeOutput::values(vec![Value::Model(Arc::clone(
            &loaded.model,
        ))]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        file_fingerprint(dirs, "diffusion_models", constants, "unet_name")
    }
}

/// Loads a diffusers pipeline folder from `models/diffusers` (`unet/`, `vae/`, `text_encoder/`,
/// `text_encoder_2/`), ComfyUI's deprecated DiffusersLoader.
pub struct DiffusersLoader;

impl Node for DiffusersLoader {
    fn spec(&self) -> NodeSpec {
        let model_path = InputKind::Combo {
            options: ComboOptions::Files(FileList::Pipelines("diffusers")),
            default: None,
            image_upload: false,
        };
        loader_spec(
            "DiffusersLoader",
            "DiffusersLoader",
            "advanced/loaders/deprecated",
            vec![required("model_path", model_path)],
            vec![
                output(SlotType::MODEL, "MODEL"),
                output(SlotType::CLIP, "CLIP"),
                output(SlotType::VAE, "VAE"),
            ],
            "",
        )
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("model_path")?;
        let root = ctx
            .dirs
            .model_subfolder("diffusers", name)
            .map_err(|m| NodeError::input("model_path", m))?;
        let loaded = ctx
            .models
            .diffusers(&root)
            .map_err(|e| NodeError::model_load("model_path", e))?;
        let clip = loaded
            .clip
            .as_ref()
            .ok_or_else(|| NodeError::input("model_path", format!("{name} has no text encoder")))?;
        let vae = loaded
            .vae
            .as_ref()
            .ok_or_else(|| NodeError::input("model_path", format!("{name} has no VAE")))?;
        Ok(NodeOutput::values(vec![
            Value::Model(Arc::clone(&loaded.model)),
            Value::Clip(Clip {
                encoder: Arc::clone(clip),
                clip_skip: None,
            }),
            Value::Vae(Arc::clone(vae)),
        ]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        let Some((_, ConstValue::String(name))) = constants.iter().find(|(n, _)| n == "model_path")
        else {
            return Ok(String::new());
        };
        let root = dirs
            .model_subfolder("diffusers", name)
            .map_err(|m| NodeError::input("model_path", m))?;
        // The weight files' sizes and times stand for the folder.
        let mut parts = vec![root.display().to_string()];
        for sub in ["unet", "vae", "text_encoder", "text_encoder_2"] {
            let Ok(entries) = std::fs::read_dir(root.join(sub)) else {
                continue;
            };
            let mut files: Vec<String> = entries
                .flatten()
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    let modified = meta
                        .modified()
                        .ok()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?;
                    Some(format!(
                        "{}:{}:{}",
                        e.path().display(),
                        meta.len(),
                        modified.as_nanos()
                    ))
                })
                .collect();
            files.sort();
            parts.extend(files);
        }
        Ok(parts.join("|"))
    }
}
