//! ComfyUI's `.latent` files: SaveLatent and LoadLatent (`nodes.py`). A `.latent` file is a
//! safetensors file holding `latent_tensor` (the samples, unscaled) and an empty
//! `latent_format_version_0` marker; files without the marker predate it and hold samples
//! scaled by 0.18215, which loading undoes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, FileList, Freshness, HiddenInput, InputKind, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::image_io::{annotated_input_file, file_sha256, metadata, SaveTarget};
use crate::nodes::latent::samples_dims;
use crate::nodes::{Inputs, Latent, Node, NodeContext, NodeError, NodeOutput, Registry, Ui, Value};
use crate::paths::{DataDirs, FolderType};

/// The tensor a `.latent` file keeps the samples under.
pub const LATENT_TENSOR: &str = "latent_tensor";
/// The marker of files that hold unscaled samples.
pub const FORMAT_VERSION_0: &str = "latent_format_version_0";
/// The scale of samples in files without the marker (SD1's latent scale).
const OLD_FORMAT_SCALE: f64 = 0.18215;

pub fn register(registry: &mut Registry) {
    registry.add(SaveLatent);
    registry.add(LoadLatent);
}

/// Writes latents to `output/` as a `.latent` file, with the prompt as metadata.
pub struct SaveLatent;

impl Node for SaveLatent {
    fn spec(&self) -> NodeSpec {
        let mut spec = node(
            "SaveLatent",
            "SaveLatent",
            "_for_testing",
            vec![
                required("samples", link(SlotType::LATENT)),
                required("filename_prefix", string("latents/ComfyUI")),
            ],
            vec![],
        );
        spec.hidden = vec![
            ("prompt", HiddenInput::Prompt),
            ("extra_pnginfo", HiddenInput::ExtraPngInfo),
        ];
        spec.output_node = true;
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let latent = inputs.latent("samples")?;
        samples_dims(latent, "samples")?;
        let target = SaveTarget::reserve(
            ctx,
            inputs.string("filename_prefix")?,
            FolderType::Output,
            0,
            0,
            1,
            "latent",
        )?;
        let filename = format!("{}_{:05}_.latent", target.name, target.first_counter);
        let path = target.path(&filename)?;
        let samples = latent.samples.to_dtype(DType::F32)?.contiguous()?;
        let bytes: Vec<u8> = samples
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let invalid = |e: safetensors::SafeTensorError| NodeError::Failed(e.to_string());
        let tensors = [
            (
                LATENT_TENSOR,
                TensorView::new(safetensors::Dtype::F32, samples.dims().to_vec(), &bytes)
                    .map_err(invalid)?,
            ),
            (
                FORMAT_VERSION_0,
                TensorView::new(safetensors::Dtype::F32, vec![0], &[]).map_err(invalid)?,
            ),
        ];
        // ComfyUI writes no metadata under --disable-metadata, else the prompt and extra info.
        let metadata: Option<HashMap<String, String>> = ctx
            .write_metadata
            .then(|| metadata(ctx).iter().cloned().collect());
        safetensors::tensor::serialize_to_file(tensors, metadata, &path)
            .map_err(|e| NodeError::file(ctx.dirs.shown(&path), e))?;
        Ok(NodeOutput {
            values: vec![],
            ui: Some(Ui {
                latents: vec![target.file_ref(filename, FolderType::Output)],
                ..Ui::default()
            }),
        })
    }
}

/// Reads a `.latent` file from the input folder.
pub struct LoadLatent;

impl LoadLatent {
    fn path(dirs: &DataDirs, name: &str) -> Result<std::path::PathBuf, String> {
        annotated_input_file(dirs, name, "Invalid latent file")
    }

    /// The samples a `.latent` file's bytes hold, as f32 (old files rescaled).
    pub fn decode(bytes: &[u8]) -> Result<Tensor, String> {
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| format!("not a latent file: {e}"))?;
        let view = file
            .tensor(LATENT_TENSOR)
            .map_err(|_| format!("the file has no '{LATENT_TENSOR}'"))?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            other => return Err(format!("'{LATENT_TENSOR}' is {other:?}, not a float type")),
        };
        let samples = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| e.to_string())?;
        if samples.rank() != 4 {
            return Err(format!(
                "'{LATENT_TENSOR}' has shape {:?}, not [B,C,h,w]",
                samples.dims()
            ));
        }
        let marked = file.names().contains(&FORMAT_VERSION_0);
        if marked {
            Ok(samples)
        } else {
            (samples * (1.0 / OLD_FORMAT_SCALE)).map_err(|e| e.to_string())
        }
    }
}

impl Node for LoadLatent {
    fn spec(&self) -> NodeSpec {
        let mut spec = node(
            "LoadLatent",
            "LoadLatent",
            "_for_testing",
            vec![required(
                "latent",
                InputKind::Combo {
                    options: ComboOptions::Files(FileList::InputLatents),
                    default: None,
                    image_upload: false,
                },
            )],
            vec![output(SlotType::LATENT, "LATENT")],
        );
        spec.freshness = Freshness::ReadsFiles;
        spec.self_validated = &["latent"];
        spec
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("latent")?;
        let path = Self::path(&ctx.dirs, name).map_err(|m| NodeError::input("latent", m))?;
        let shown = ctx.dirs.shown(&path);
        let size = std::fs::metadata(&path)
            .map_err(|e| NodeError::file(&shown, e))?
            .len();
        // The file's bytes, and the samples as f32 (at most twice that for f16 files).
        ctx.reserve_memory(
            "latent",
            size.saturating_mul(3),
            &format!("loading {shown}"),
        )?;
        let bytes = std::fs::read(&path).map_err(|e| NodeError::file(&shown, e))?;
        let samples = Self::decode(&bytes)
            .map_err(|m| NodeError::input("latent", format!("{shown}: {m}")))?;
        Ok(NodeOutput::values(vec![Value::Latent(Latent::new(
            samples,
        ))]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        let Some((_, ConstValue::String(name))) = constants.iter().find(|(n, _)| n == "latent")
        else {
            return Ok(String::new());
        };
        let path = Self::path(dirs, name).map_err(|m| NodeError::input("latent", m))?;
        file_sha256(dirs, &path)
    }

    fn check_input(&self, dirs: &DataDirs, _input: &str, value: &ConstValue) -> Result<(), String> {
        match value {
            ConstValue::String(name) => Self::path(dirs, name).map(|_| ()),
            _ => Err("latent must be a file name".into()),
        }
    }
}
