//! The model manager: loaded checkpoints, VAEs and control models shared by every prompt, keyed by
//! the SHA-256 of the file's content (one file under two names loads once), within a memory
//! budget, least recently used unloaded first. The hash of a file is computed once per file
//! identity (path, size, modification time), so an unchanged file is read for hashing only once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use crate::engine::clip::convert::{
    hf_clip_from_ldm, infer_clip_config, openclip_to_hf, strip_prefix,
};
use crate::engine::clip::encode::TextEncoder;
use crate::engine::clip::model::ClipTextModel;
use crate::engine::controlnet::load::{load_control, ControlModel, LoadedControl};
use crate::engine::diffusion::DiffusionModel;
use crate::engine::load::checkpoint::{
    clip_components, load_vae_file, load_vae_ldm, split_components, unet_ldm_names, ClipComponent,
    UNET_PREFIX,
};
use crate::engine::load::detect::{detect_unet, detect_vae_ldm, distinguishing_keys, ModelFamily};
use crate::engine::load::file::StateDict;
use crate::engine::load::{LoadError, LoadErrorKind};
use crate::engine::tokenizer::ClipBpe;
use crate::engine::unet::UNet2DConditionModel;
use crate::engine::vae::AutoEncoderKL;

/// Everything a single-file checkpoint gives (ComfyUI's MODEL, CLIP, VAE).
#[derive(Debug)]
pub struct LoadedCheckpoint {
    pub model: Arc<DiffusionModel>,
    pub clip: Option<Arc<TextEncoder>>,
    pub vae: Option<Arc<AutoEncoderKL>>,
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileKey {
    fn of(path: &Path) -> Result<FileKey, LoadError> {
        let meta =
            std::fs::metadata(path).map_err(|e| LoadError::new(path, LoadErrorKind::Io(e)))?;
        Ok(FileKey {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// The SHA-256 of a model file's bytes (the hash model sites publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ContentHash([u8; 32]);

impl ContentHash {
    fn of_file(path: &Path) -> Result<ContentHash, LoadError> {
        let io = |e| LoadError::new(path, LoadErrorKind::Io(e));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(io)?;
        Ok(ContentHash(hasher.finalize().into()))
    }
}

enum Loaded {
    Checkpoint(Arc<LoadedCheckpoint>),
    Vae(Arc<AutoEncoderKL>),
    Control(Arc<LoadedControl>),
}

struct Entry {
    loaded: Loaded,
    /// The path it was loaded from (for logs, and so a changed file drops its old entry).
    path: PathBuf,
    bytes: usize,
    last_used: u64,
}

impl Entry {
    /// The bytes the entry holds now: its file's weights, and for a Control-LoRA the ControlNet
    /// built from it on the sampled model (built later, while sampling).
    fn bytes(&self) -> usize {
        let built = match &self.loaded {
            Loaded::Control(control) => match control.model.as_ref() {
                ControlModel::ControlLora(lora) => lora.built_bytes(),
                _ => 0,
            },
            _ => 0,
        };
        self.bytes + built
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<ContentHash, Entry>,
    /// Hashes already computed, by file identity.
    hashes: HashMap<FileKey, ContentHash>,
    clock: u64,
}

/// Loaded models by file.
pub struct ModelManager {
    budget: usize,
    device: Device,
    dtype: DType,
    state: Mutex<State>,
}

/// The CLIP BPE vocabulary, built once (it is expensive).
pub fn bpe() -> Arc<ClipBpe> {
    static BPE: OnceLock<Arc<ClipBpe>> = OnceLock::new();
    Arc::clone(BPE.get_or_init(|| Arc::new(ClipBpe::new())))
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

impl ModelManager {
    /// A manager that keeps at most `budget` bytes of weights loaded (the model in use is never
    /// unloaded while a prompt holds it; the budget only decides what stays cached).
    pub fn new(budget: usize, device: Device, dtype: DType) -> ModelManager {
        ModelManager {
            budget,
            device,
            dtype,
            state: Mutex::new(State::default()),
        }
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype model weights are converted to at load.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The VAEs' dtype: f32 when the models run in f16, because the SD and SDXL VAE decoders
    /// overflow f16 (black or NaN images; ComfyUI keeps VAEs out of f16 for the same reason).
    pub fn vae_dtype(&self) -> DType {
        match self.dtype {
            DType::F16 => DType::F32,
            other => other,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The content hash of the file at `path`, computed on the first call for this version of the
    /// file (outside the lock: hashing a checkpoint reads gigabytes).
    fn key(&self, path: &Path) -> Result<ContentHash, LoadError> {
        let file = FileKey::of(path)?;
        if let Some(hash) = self.lock().hashes.get(&file) {
            return Ok(*hash);
        }
        let hash = ContentHash::of_file(path)?;
        let mut state = self.lock();
        state.hashes.retain(|k, _| k.path != file.path);
        state.hashes.insert(file, hash);
        Ok(hash)
    }

    /// The checkpoint at `path`, loaded once while it stays unchanged on disk.
    pub fn checkpoint(&self, path: &Path) -> Result<Arc<LoadedCheckpoint>, LoadError> {
        let key = self.key(path)?;
        if let Some(Loaded::Checkpoint(found)) = self.touch(&key) {
            return Ok(found);
        }
        let loaded = Arc::new(self.load_checkpoint(path)?);
        self.insert(
            key,
            path,
            Loaded::Checkpoint(Arc::clone(&loaded)),
            loaded.bytes,
        );
        Ok(loaded)
    }

    /// A standalone VAE file, with the latent scale of the family it will be used with.
    pub fn vae(&self, path: &Path, scale: f64) -> Result<Arc<AutoEncoderKL>, LoadError> {
        let key = self.key(path)?;
        if let Some(Loaded::Vae(found)) = self.touch(&key) {
            if (found.config().scaling_factor - scale).abs() < 1e-9 {
                return Ok(found);
            }
        }
        let vae = Arc::new(load_vae_file(path, scale, self.vae_dtype(), &self.device)?);
        let bytes = std::fs::metadata(path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        self.insert(key, path, Loaded::Vae(Arc::clone(&vae)), bytes);
        Ok(vae)
    }

    /// A ControlNet, T2I-Adapter or Control-LoRA file (ControlNetLoader), loaded once while it
    /// stays unchanged on disk and counted against the budget like a checkpoint.
    pub fn control(&self, path: &Path) -> Result<Arc<LoadedControl>, LoadError> {
        let key = self.key(path)?;
        if let Some(Loaded::Control(found)) = self.touch(&key) {
            return Ok(found);
        }
        let control = Arc::new(load_control(path, self.dtype, &self.device)?);
        // The file's size stands for the weights' (they are loaded in about the stored width).
        let bytes = std::fs::metadata(path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        self.insert(key, path, Loaded::Control(Arc::clone(&control)), bytes);
        Ok(control)
    }

    fn touch(&self, key: &ContentHash) -> Option<Loaded> {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        state.entries.get_mut(key).map(|entry| {
            entry.last_used = now;
            match &entry.loaded {
                Loaded::Checkpoint(c) => Loaded::Checkpoint(Arc::clone(c)),
                Loaded::Vae(v) => Loaded::Vae(Arc::clone(v)),
                Loaded::Control(c) => Loaded::Control(Arc::clone(c)),
            }
        })
    }

    fn insert(&self, key: ContentHash, path: &Path, loaded: Loaded, bytes: usize) {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        let entries = &mut state.entries;
        // A changed file replaces the old entry for the same path.
        entries.retain(|_, e| e.path != path);
        let mut used: usize = entries.values().map(Entry::bytes).sum();
        while used + bytes > self.budget {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(entry) = entries.remove(&oldest) {
                tracing::info!(path = %entry.path.display(), "unloading model to stay within the memory budget");
                used -= entry.bytes();
            }
        }
        entries.insert(
            key,
            Entry {
                loaded,
                path: path.to_path_buf(),
                bytes,
                last_used: now,
            },
        );
    }

    /// Unloads every model (`POST /free` with `unload_models`).
    pub fn unload_all(&self) {
        self.lock().entries.clear();
    }

    /// (number of loaded files, bytes of weights).
    pub fn stats(&self) -> (usize, usize) {
        let state = self.lock();
        (
            state.entries.len(),
            state.entries.values().map(Entry::bytes).sum(),
        )
    }

    fn load_checkpoint(&self, path: &Path) -> Result<LoadedCheckpoint, LoadError> {
        let fail = |kind: LoadErrorKind| LoadError {
            path: path.to_path_buf(),
            kind,
        };
        let sd = Arc::new(StateDict::open(path)?);
        let components = split_components(&sd);
        let prefix = components.unet.clone().ok_or_else(|| {
            fail(LoadErrorKind::UnknownFamily {
                looked_for: distinguishing_keys(UNET_PREFIX),
            })
        })?;
        let detected = detect_unet(&sd, &prefix).map_err(fail)?;
        // The UNet is built from a map of its diffusers-named weights, which the model keeps: a
        // LoRA patches a copy-on-write copy of that map without reading the file again.
        let mut weights = HashMap::new();
        for (name, key) in unet_ldm_names(&sd, &prefix, detected.config.layers_per_block) {
            let tensor = sd
                .get(&key)?
                .to_dtype(self.dtype)
                .map_err(|e| fail(LoadErrorKind::Tensor(e)))?;
            weights.insert(name, tensor);
        }
        let vb = VarBuilder::from_tensors(weights.clone(), self.dtype, &self.device);
        let unet = UNet2DConditionModel::new(vb, &detected.config)
            .map_err(|e| fail(LoadErrorKind::Tensor(e)))?;
        let vae = match &components.vae {
            Some(vae_prefix) => {
                let cfg = detect_vae_ldm(&sd, vae_prefix, detected.family.latent_scale())
                    .map_err(fail)?;
                Some(Arc::new(load_vae_ldm(
                    &sd,
                    vae_prefix,
                    &cfg,
                    self.vae_dtype(),
                    &self.device,
                )?))
            }
            None => None,
        };
        let clips = clip_components(&sd, &components)?;
        let family = detected.family;
        let clip = if clips.is_empty() {
            None
        } else {
            let encoder = text_encoder(family, &clips, self.dtype, &self.device)
                .map_err(|m| fail(LoadErrorKind::BadConfig(m)))?;
            Some(Arc::new(encoder))
        };
        let file_bytes = std::fs::metadata(path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let model_bytes: usize = weights.values().map(tensor_bytes).sum();
        let model = DiffusionModel::new(unet, family, detected.prediction, model_bytes)
            .with_weights(weights);
        Ok(LoadedCheckpoint {
            model: Arc::new(model),
            clip,
            vae,
            bytes: file_bytes,
        })
    }
}

/// A standalone text-encoder file (ComfyUI's `models/text_encoders`): HF transformers names, with
/// or without a `text_model.` level, or OpenCLIP names.
pub fn clip_file(path: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel, LoadError> {
    let fail = |message: String| LoadError {
        path: path.to_path_buf(),
        kind: LoadErrorKind::BadConfig(message),
    };
    let sd = crate::engine::load::file::StateDict::open(path)?;
    let tensors = sd.get_prefixed("")?;
    let component = if tensors
        .keys()
        .any(|k| k.starts_with("transformer.resblocks.") || k == "token_embedding.weight")
    {
        ClipComponent {
            prefix: String::new(),
            tensors: prefixed(tensors, "model."),
        }
    } else if tensors
        .keys()
        .any(|k| k.starts_with("text_model.") || k.starts_with("encoder."))
    {
        ClipComponent {
            prefix: String::new(),
            tensors: prefixed(tensors, "transformer."),
        }
    } else {
        return Err(fail(
            "no CLIP text encoder weights (text_model.* or transformer.resblocks.*)".into(),
        ));
    };
    clip_model(&component, dtype, device)
        .map(|(model, _)| model)
        .map_err(fail)
}

fn prefixed(tensors: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, t)| (format!("{prefix}{k}"), t))
        .collect()
}

/// One text encoder from a checkpoint component, converted to HF names.
fn clip_model(
    component: &ClipComponent,
    dtype: DType,
    device: &Device,
) -> Result<(ClipTextModel, HashMap<String, Tensor>), String> {
    let is_openclip = component.tensors.keys().any(|k| k.starts_with("model."));
    let hf = if is_openclip {
        openclip_to_hf(&strip_prefix(&component.tensors, "model."))
            .map_err(|e| format!("{}: {e}", component.prefix))?
    } else {
        hf_clip_from_ldm(&component.tensors, "transformer.")
    };
    let config = infer_clip_config(&hf)
        .map_err(|e| format!("text encoder under {}: {e}", component.prefix))?;
    let hf: HashMap<String, Tensor> = hf
        .into_iter()
        .map(|(k, t)| t.to_dtype(dtype).map(|t| (k, t)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| e.to_string())?;
    let vb = VarBuilder::from_tensors(hf.clone(), dtype, device);
    let model = ClipTextModel::new(vb, &config)
        .map_err(|e| format!("text encoder under {}: {e}", component.prefix))?;
    Ok((model, hf))
}

/// Builds a text model from HF-named weights (after a LoRA patched them).
pub fn clip_from_weights(
    weights: &HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<ClipTextModel, String> {
    let config = infer_clip_config(weights).map_err(|e| e.to_string())?;
    ClipTextModel::new(
        VarBuilder::from_tensors(weights.clone(), dtype, device),
        &config,
    )
    .map_err(|e| e.to_string())
}

/// Builds the family's text encoder from a checkpoint's CLIP components.
pub fn text_encoder(
    family: ModelFamily,
    components: &[ClipComponent],
    dtype: DType,
    device: &Device,
) -> Result<TextEncoder, String> {
    let find = |prefix: &str| components.iter().find(|c| c.prefix == prefix);
    let first = || {
        components
            .first()
            .ok_or_else(|| "the checkpoint has no text encoder".to_owned())
    };
    let encoder = match family {
        ModelFamily::Sd1 => {
            let (l, lw) = clip_model(first()?, dtype, device)?;
            TextEncoder::sd1(l, bpe()).with_weights(Some(lw), None)
        }
        ModelFamily::Sd2 => {
            let (h, hw) = clip_model(first()?, dtype, device)?;
            TextEncoder::sd2(h, bpe()).with_weights(None, Some(hw))
        }
        ModelFamily::SdxlBase => {
            let l = find("conditioner.embedders.0.")
                .ok_or("SDXL checkpoint lacks conditioner.embedders.0 (CLIP-L)")?;
            let g = find("conditioner.embedders.1.")
                .ok_or("SDXL checkpoint lacks conditioner.embedders.1 (OpenCLIP-bigG)")?;
            let ((l, lw), (g, gw)) = (clip_model(l, dtype, device)?, clip_model(g, dtype, device)?);
            TextEncoder::sdxl(l, g, bpe()).with_weights(Some(lw), Some(gw))
        }
        ModelFamily::SdxlRefiner => {
            let (g, gw) = clip_model(first()?, dtype, device)?;
            TextEncoder::sdxl_refiner(g, bpe()).with_weights(None, Some(gw))
        }
    };
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vaes_stay_out_of_f16() {
        let vae_dtype = |dtype| ModelManager::new(0, Device::Cpu, dtype).vae_dtype();
        assert_eq!(vae_dtype(DType::F16), DType::F32);
        assert_eq!(vae_dtype(DType::BF16), DType::BF16);
        assert_eq!(vae_dtype(DType::F32), DType::F32);
    }
}
