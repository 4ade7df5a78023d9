//! The model manager: loaded checkpoints, VAEs and control models shared by every prompt, within
//! a memory budget taken from the machine's real limit, least recently used unloaded first.
//!
//! Identity: one file under two names loads once, a replaced file loads anew. A file is known by
//! its inode, size and modification time (a symlink or hard link is the same file at no cost);
//! another file is compared by content only when it could be the same (same size, same first
//! and last MiB), and only then is its SHA-256 computed. So a multi-GB file is never read twice
//! on the way to its first load.
//!
//! Memory: before a load the model's bytes are estimated from the file's header (in the dtype
//! the weights will be kept in); least recently used models are unloaded until it fits the
//! budget, and the memory actually available (`engine::memory`, cgroup limit and `MemAvailable`)
//! is checked; if it still cannot fit, the load fails with [`OutOfMemory`] and nothing is
//! loaded. Nodes ask [`ModelManager::ensure_free`] before large activations (sampling, VAE).
//!
//! GPUs: the budget is the GPU's (`--gpu-memory`, else three quarters of its memory). A
//! checkpoint that does not fit it even after unloading the others is loaded partially, the
//! diffusion model's weights that do not fit kept in RAM and streamed per layer while sampling
//! ([`crate::load::placement`], ComfyUI's lowvram), instead of failing.

use std::any::Any;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use crate::allocator;
use crate::clip::convert::{hf_clip_from_ldm, infer_clip_config, openclip_to_hf, strip_prefix};
use crate::clip::encode::TextEncoder;
use crate::clip::model::ClipTextModel;
use crate::clip_vision::{
    clip_vision_from_weights, ClipVisionModel, StyleAdapter, UNCLIP_CHECKPOINT_PREFIX,
};
use crate::controlnet::load::{load_control, ControlModel, LoadedControl};
use crate::device::weight_dtype;
use crate::diffusion::DiffusionModel;
use crate::gligen::Gligen;
use crate::load::checkpoint::{
    clip_components, detect_unet_diffusers, diffusers_text_encoders, load_vae_diffusers,
    load_vae_file, load_vae_ldm, open_component, split_components, unet_ldm_names, ClipComponent,
    UNET_PREFIX, VAE_PREFIX,
};
use crate::load::detect::{
    detect_unet, detect_unet_diffusers_layout, detect_vae_ldm, distinguishing_keys,
    is_diffusers_unet, ModelFamily,
};
use crate::load::file::StateDict;
use crate::load::fp8::Fp8Format;
use crate::load::placement::{placed_var_builder, Placement};
use crate::load::{LoadError, LoadErrorKind};
use crate::memory::{self, MemoryProbe, MemoryReading, OutOfMemory};
use crate::ops::cast::to_dtype;
use crate::tokenizer::ClipBpe;
use crate::unet::UNet2DConditionModel;
use crate::upscale::UpscaleModel;
use crate::vae::AutoEncoderKL;

/// Everything a single-file checkpoint gives (ComfyUI's MODEL, CLIP, VAE).
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The UNet, ready to sample (MODEL).
    pub model: Arc<DiffusionModel>,
    /// The text encoder(s) (CLIP); `None` when the file has no text encoder weights.
    pub clip: Option<Arc<TextEncoder>>,
    /// The VAE; `None` when the file has no `first_stage_model.` weights.
    pub vae: Option<Arc<AutoEncoderKL>>,
    /// The CLIP vision tower of an SD2.1 unCLIP checkpoint (`embedder.model.visual.`), which
    /// unCLIPCheckpointLoader outputs; `None` for other files.
    pub clip_vision: Option<Arc<ClipVisionModel>>,
    /// Bytes of the weights in memory.
    pub bytes: usize,
    /// The fp8 format its diffusion model's weights were rounded to (UNETLoader's
    /// `weight_dtype`), `None` for the file's own precision.
    pub fp8: Option<Fp8Format>,
}

/// A file as the file system knows it: the same inode, size and time is the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
    /// Where inodes are not available, the path stands for the file.
    path: Option<PathBuf>,
}

impl FileId {
    fn of(path: &Path) -> Result<FileId, LoadError> {
        let meta =
            std::fs::metadata(path).map_err(|e| LoadError::new(path, LoadErrorKind::Io(e)))?;
        #[cfg(unix)]
        let (dev, inode, path) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), None)
        };
        #[cfg(not(unix))]
        let (dev, inode, path) = (0, 0, Some(path.to_path_buf()));
        Ok(FileId {
            dev,
            inode,
            len: meta.len(),
            modified: meta.modified().ok(),
            path,
        })
    }
}

/// A SHA-256: of the whole file, or of its size with its first and last MiB (the probe that
/// decides whether the whole needs comparing).
type Digest32 = [u8; 32];

/// Bytes read from each end of a file for its probe.
const PROBE_BYTES: u64 = 1 << 20;

fn probe_digest(path: &Path, len: u64) -> std::io::Result<Digest32> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    hasher.update(len.to_le_bytes());
    let mut buf = vec![0u8; PROBE_BYTES.min(len) as usize];
    file.read_exact(&mut buf)?;
    hasher.update(&buf);
    if len > PROBE_BYTES {
        let tail = PROBE_BYTES.min(len - PROBE_BYTES);
        file.seek(SeekFrom::Start(len - tail))?;
        buf.truncate(tail as usize);
        file.read_exact(&mut buf)?;
        hasher.update(&buf);
    }
    Ok(hasher.finalize().into())
}

fn content_digest(path: &Path) -> std::io::Result<Digest32> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}

enum Loaded {
    Checkpoint(Arc<LoadedCheckpoint>),
    Vae(Arc<AutoEncoderKL>),
    Control(Arc<LoadedControl>),
    Upscale(Arc<UpscaleModel>),
    Gligen(Arc<Gligen>),
    ClipVision(Arc<ClipVisionModel>),
    Style(Arc<StyleAdapter>),
    /// A ControlNet preprocessor's network (`crate::annotators`), of whichever type its loader built.
    Annotator(Arc<dyn Any + Send + Sync>),
}

impl Loaded {
    /// Whether anything beside the manager holds it (a running prompt, the output cache).
    fn in_use(&self) -> bool {
        match self {
            Loaded::Checkpoint(c) => {
                Arc::strong_count(c) > 1
                    || Arc::strong_count(&c.model) > 1
                    || c.clip.as_ref().is_some_and(|x| Arc::strong_count(x) > 1)
                    || c.vae.as_ref().is_some_and(|x| Arc::strong_count(x) > 1)
                    || c.clip_vision
                        .as_ref()
                        .is_some_and(|x| Arc::strong_count(x) > 1)
            }
            Loaded::Vae(v) => Arc::strong_count(v) > 1,
            Loaded::Control(c) => Arc::strong_count(c) > 1,
            Loaded::Upscale(u) => Arc::strong_count(u) > 1,
            Loaded::Gligen(g) => Arc::strong_count(g) > 1,
            Loaded::ClipVision(c) => Arc::strong_count(c) > 1,
            Loaded::Style(s) => Arc::strong_count(s) > 1,
            Loaded::Annotator(a) => Arc::strong_count(a) > 1,
        }
    }
}

struct Entry {
    loaded: Loaded,
    /// The path it was loaded from (for logs, and so a changed file drops its old entry).
    path: PathBuf,
    /// Every file identity known to hold these bytes.
    ids: Vec<FileId>,
    probe: Digest32,
    /// The whole file's SHA-256, computed only when another file's probe matched.
    digest: Option<Digest32>,
    bytes: usize,
    /// Of `bytes`, those kept in RAM by a partial load (not counted against a GPU's budget).
    offloaded: usize,
    last_used: u64,
}

impl Entry {
    /// The bytes the entry holds now: its weights, and for a Control-LoRA the ControlNet built
    /// from it on the sampled model (built later, while sampling).
    fn bytes(&self) -> usize {
        let built = match &self.loaded {
            Loaded::Control(control) => match control.model.as_ref() {
                ControlModel::ControlLora(lora) => lora.built_bytes(),
                _ => 0,
            },
            _ => 0,
        };
        self.bytes - self.offloaded + built
    }
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    /// Digests of files that were compared in full, by identity.
    digests: HashMap<FileId, Digest32>,
    clock: u64,
}

/// Asks the rest of the server to let go of model handles and cached values (the executor's
/// output cache) when memory is short; returns the bytes of values it dropped.
pub type Reclaimer = Box<dyn Fn() -> usize + Send + Sync>;

/// Loaded models by file.
pub struct ModelManager {
    budget: usize,
    device: Device,
    /// Whether a checkpoint bigger than what the budget has left loads partially (GPUs).
    offload: bool,
    /// `--dtype`: the weights' dtype, or `None` to keep each file's own precision.
    weights: Option<DType>,
    probe: MemoryProbe,
    reclaimer: OnceLock<Reclaimer>,
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

/// What the manager holds, for `/system_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelStats {
    /// Files loaded (checkpoints, VAEs, ControlNets).
    pub models: usize,
    /// Bytes of the weights of loaded models.
    pub bytes: usize,
    /// The model budget in force.
    pub budget: usize,
    /// Bytes of weights kept in RAM by partial loads and streamed to the GPU per layer.
    pub offloaded: usize,
    /// The process's memory limit and what is available now.
    pub memory: MemoryReading,
}

impl ModelManager {
    /// A manager that keeps at most `budget` bytes of weights loaded between prompts, with
    /// weights in `weights` (`None`: each file's own precision, f16 and bf16 kept), reading the
    /// machine's memory figures from the usual files.
    pub fn new(budget: usize, device: Device, weights: impl Into<Option<DType>>) -> ModelManager {
        Self::with_probe(budget, device, weights.into(), MemoryProbe::default())
    }

    /// [`ModelManager::new`] with the memory figures read through `probe`.
    pub fn with_probe(
        budget: usize,
        device: Device,
        weights: Option<DType>,
        probe: MemoryProbe,
    ) -> ModelManager {
        ModelManager {
            budget,
            offload: !device.is_cpu(),
            device,
            weights,
            probe,
            reclaimer: OnceLock::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether checkpoints bigger than the budget load partially (see the module's doc): on by
    /// default on a GPU; on the CPU both halves would be in RAM, so it is bookkeeping only, which
    /// is how tests exercise it.
    pub fn with_offload(mut self, offload: bool) -> Self {
        self.offload = offload;
        self
    }

    /// Installs what is asked to drop cached values when memory is short (once).
    pub fn set_reclaimer(&self, reclaimer: Reclaimer) {
        let _ = self.reclaimer.set(reclaimer);
    }

    /// The device the models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype asked for (`None`: each file's own).
    pub fn weights(&self) -> Option<DType> {
        self.weights
    }

    /// The dtype weights stored as `stored` are kept in.
    pub fn weight_dtype(&self, stored: DType) -> DType {
        weight_dtype(self.weights, stored)
    }

    /// The dtype a checkpoint's diffusion model and text encoders are kept in. Without
    /// `--dtype`, f16 or bf16 weights on the CPU are widened to f32 once, at load, when the f32
    /// copy fits the budget beside the other models loaded and the memory free now (ComfyUI
    /// keeps f32 weights on the CPU too); else they stay as stored and each layer widens its
    /// weight on every call, which costs a full pass over the weights per model call: an SD1.5
    /// UNet call at 256x256 took 5.8 s that way against 3.2 s widened at load (2-core Xeon).
    fn checkpoint_weights(&self, sd: &StateDict, path: &Path) -> DType {
        let stored = self.weight_dtype(sd.float_dtype(UNET_PREFIX));
        if self.weights.is_some() || !self.device.is_cpu() || stored == DType::F32 {
            return stored;
        }
        let widened = sd.loaded_bytes("", |_| DType::F32);
        let others: usize = self
            .lock()
            .entries
            .iter()
            .filter(|e| e.path != path)
            .map(Entry::bytes)
            .sum();
        if others + widened <= self.budget && self.fits_now(widened as u64) {
            DType::F32
        } else {
            stored
        }
    }

    /// The dtype the weights of the file at `path` are kept in (read from its header).
    pub fn file_weight_dtype(&self, path: &Path) -> Result<DType, LoadError> {
        Ok(self.weight_dtype(StateDict::open(path)?.float_dtype("")))
    }

    /// The VAEs' dtype: f32 unless bf16 weights were asked for where bf16 arithmetic runs (a
    /// GPU, or the CPU's bf16 kernel, [`crate::ops::gemm_bf16::available`]): the SD and SDXL VAE
    /// decoders overflow f16 (black or NaN images; ComfyUI keeps VAEs out of f16 for the same
    /// reason), and VAEs are small, so on the CPU they stay in f32 even when the rest is kept in
    /// f16, or in bf16 widened per layer (slower than f32 weights, for 170 MB).
    pub fn vae_dtype(&self) -> DType {
        match self.weights {
            Some(DType::BF16) if !self.device.is_cpu() || crate::ops::gemm_bf16::available() => {
                DType::BF16
            }
            _ => DType::F32,
        }
    }

    /// The memory figures now.
    pub fn memory(&self) -> MemoryReading {
        self.probe.read()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file's identity and probe, and whether a loaded entry holds its bytes: known by
    /// identity, else by content when the probe matches (the whole file is hashed only then; a
    /// match adds this identity to the entry).
    fn find(&self, path: &Path) -> Result<(bool, FileId, Digest32), LoadError> {
        let id = FileId::of(path)?;
        let io = |e| LoadError::new(path, LoadErrorKind::Io(e));
        {
            let state = self.lock();
            if let Some(i) = state.entries.iter().position(|e| e.ids.contains(&id)) {
                let probe = state.entries[i].probe;
                return Ok((true, id, probe));
            }
        }
        let probe = probe_digest(path, id.len).map_err(io)?;
        let candidates: Vec<(PathBuf, Option<Digest32>)> = self
            .lock()
            .entries
            .iter()
            .filter(|e| e.probe == probe)
            .map(|e| (e.path.clone(), e.digest))
            .collect();
        for (other, known) in candidates {
            let mine = self.digest(path, &id)?;
            let theirs = match known {
                Some(d) => d,
                None => {
                    let other_id = FileId::of(&other)?;
                    let d = self.digest(&other, &other_id)?;
                    let mut state = self.lock();
                    if let Some(e) = state.entries.iter_mut().find(|e| e.path == other) {
                        e.digest = Some(d);
                    }
                    d
                }
            };
            if mine == theirs {
                let mut state = self.lock();
                if let Some(i) = state.entries.iter().position(|e| e.digest == Some(mine)) {
                    state.entries[i].ids.push(id.clone());
                    return Ok((true, id, probe));
                }
            }
        }
        Ok((false, id, probe))
    }

    /// The SHA-256 of a whole file, memoised by identity (outside the lock: it reads gigabytes).
    fn digest(&self, path: &Path, id: &FileId) -> Result<Digest32, LoadError> {
        if let Some(d) = self.lock().digests.get(id) {
            return Ok(*d);
        }
        let d = content_digest(path).map_err(|e| LoadError::new(path, LoadErrorKind::Io(e)))?;
        self.lock().digests.insert(id.clone(), d);
        Ok(d)
    }

    /// The loaded model of `path`, or, on a miss, `plan` (which reads the file's header once:
    /// the model's bytes and what the load needs) and then `load` after making room for them,
    /// told how many of the bytes may go on the device (all, unless it can load partially).
    /// `pick` says which loaded model serves the call (and is its typed handle): an entry of
    /// the file it does not pick is replaced.
    fn get_or_load<T: ?Sized, P>(
        &self,
        path: &Path,
        pick: impl Fn(&Loaded) -> Option<Arc<T>>,
        plan: impl FnOnce() -> Result<(usize, P), LoadError>,
        load: impl FnOnce(P, usize) -> Result<(Loaded, usize), LoadError>,
    ) -> Result<Arc<T>, LoadError> {
        let (known, id, probe) = self.find(path)?;
        if known {
            let mut state = self.lock();
            state.clock += 1;
            let now = state.clock;
            // Looked up again by identity: `/free` may have run since `find`.
            let found = state
                .entries
                .iter_mut()
                .filter(|e| e.ids.contains(&id))
                .find_map(|e| pick(&e.loaded).map(|model| (e, model)));
            if let Some((entry, model)) = found {
                entry.last_used = now;
                return Ok(model);
            }
        }
        let (bytes, planned) = plan()?;
        let what = format!("loading '{}'", path.display());
        let on_device = if self.offload {
            self.device_room(bytes, path, &what)
        } else {
            self.make_room(bytes, Some(path), &what).map(|()| bytes)
        }
        .map_err(|oom| LoadError::new(path, LoadErrorKind::OutOfMemory(oom)))?;
        let (loaded, offloaded) = load(planned, on_device)?;
        let shared = pick(&loaded).ok_or_else(|| {
            LoadError::new(
                path,
                LoadErrorKind::BadConfig("loaded as another kind of model".into()),
            )
        })?;
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        // A changed file replaces the old entry for the same path.
        state.entries.retain(|e| e.path != path);
        state.entries.push(Entry {
            loaded,
            path: path.to_path_buf(),
            ids: vec![id],
            probe,
            digest: None,
            bytes,
            offloaded,
            last_used: now,
        });
        Ok(shared)
    }

    /// Unloads least recently used models until `needed` more bytes fit the budget, then checks
    /// the memory actually available; when that is short, unloads every other model and asks the
    /// output cache to let go before giving up. `loading`: the file about to be loaded (its old
    /// entry goes anyway).
    fn make_room(
        &self,
        needed: usize,
        loading: Option<&Path>,
        what: &str,
    ) -> Result<(), OutOfMemory> {
        {
            let mut state = self.lock();
            if let Some(path) = loading {
                state.entries.retain(|e| e.path != path);
            }
            while state.entries.iter().map(Entry::bytes).sum::<usize>() + needed > self.budget
                && loading.is_some()
            {
                if !Self::unload_oldest(&mut state, |_| true) {
                    break;
                }
            }
        }
        let fits = |r: &MemoryReading| r.available.saturating_sub(memory::RESERVE) >= needed as u64;
        // Freed activations the allocator keeps for reuse are not this model's to lose to.
        allocator::release_kept();
        let mut reading = self.probe.read();
        if fits(&reading) {
            return Ok(());
        }
        // First what nobody else holds, then ask the cache to let go and unload the rest.
        loop {
            let unloaded = Self::unload_oldest(&mut self.lock(), |e| !e.loaded.in_use());
            memory::return_freed_memory();
            reading = self.probe.read();
            if fits(&reading) {
                return Ok(());
            }
            if !unloaded {
                break;
            }
        }
        if let Some(reclaim) = self.reclaimer.get() {
            reclaim();
        }
        while Self::unload_oldest(&mut self.lock(), |_| true) {}
        memory::return_freed_memory();
        reading = self.probe.read();
        if fits(&reading) {
            return Ok(());
        }
        Err(OutOfMemory {
            what: what.to_owned(),
            needed: needed as u64 + memory::RESERVE,
            available: reading.available,
            limit: reading.limit,
            limit_source: reading.source,
            advice: if loading.is_some() {
                "give the server more memory, keep fewer models in the graph, or store the \
                 weights in half precision (--dtype f16)"
                    .into()
            } else {
                "use a smaller image or batch, or give the server more memory".into()
            },
        })
    }

    /// With offloading: unloads least recently used models until `needed` bytes fit the
    /// budget, or none is left to unload, and returns how many may go on the device; the rest
    /// must fit in RAM, checked as any allocation.
    fn device_room(&self, needed: usize, loading: &Path, what: &str) -> Result<usize, OutOfMemory> {
        let on_device = {
            let mut state = self.lock();
            state.entries.retain(|e| e.path != loading);
            let used = |state: &State| state.entries.iter().map(Entry::bytes).sum::<usize>();
            while used(&state) + needed > self.budget {
                if !Self::unload_oldest(&mut state, |_| true) {
                    break;
                }
            }
            needed.min(self.budget.saturating_sub(used(&state)))
        };
        self.make_room(needed - on_device, None, what)?;
        Ok(on_device)
    }

    fn unload_oldest(state: &mut State, eligible: impl Fn(&Entry) -> bool) -> bool {
        let Some(oldest) = state
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| eligible(e))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let entry = state.entries.remove(oldest);
        tracing::info!(path = %entry.path.display(), bytes = entry.bytes(),
            "unloading model to make room");
        true
    }

    /// Makes sure `needed` bytes can be allocated for `what` (activations of a sampler or a VAE),
    /// unloading models that nothing uses and cached values if they must go; a clear error when
    /// the memory is not there even then.
    pub fn ensure_free(&self, needed: u64, what: &str) -> Result<(), OutOfMemory> {
        self.make_room(needed as usize, None, what)
    }

    /// Whether `needed` bytes are available now, without unloading anything.
    pub fn fits_now(&self, needed: u64) -> bool {
        allocator::release_kept();
        self.probe.read().available.saturating_sub(memory::RESERVE) >= needed
    }

    /// The checkpoint at `path`, loaded once while it stays unchanged on disk.
    pub fn checkpoint(&self, path: &Path) -> Result<Arc<LoadedCheckpoint>, LoadError> {
        self.checkpoint_as(path, None)
    }

    /// The checkpoint (or bare diffusion model file) at `path` with its diffusion model's
    /// weights rounded to `fp8` (UNETLoader's `weight_dtype`); one entry per format.
    pub fn checkpoint_as(
        &self,
        path: &Path,
        fp8: Option<Fp8Format>,
    ) -> Result<Arc<LoadedCheckpoint>, LoadError> {
        self.get_or_load(
            path,
            |l| match l {
                Loaded::Checkpoint(c) if c.fp8 == fp8 => Some(Arc::clone(c)),
                _ => None,
            },
            || {
                // UNet and text encoders in the weights' dtype, the VAE in its own.
                let sd = StateDict::open(path)?;
                let weights = match fp8 {
                    Some(f) => f.storage(),
                    None => self.checkpoint_weights(&sd, path),
                };
                let vae = self.vae_dtype();
                let bytes = sd.loaded_bytes(VAE_PREFIX, |_| vae) + sd.loaded_bytes("", |_| weights)
                    - sd.loaded_bytes(VAE_PREFIX, |_| weights);
                Ok((bytes, (sd, weights, bytes)))
            },
            |(sd, weights, bytes), on_device| {
                let (ckpt, offloaded) = self.load_checkpoint(sd, weights, fp8, bytes, on_device)?;
                Ok((Loaded::Checkpoint(Arc::new(ckpt)), offloaded))
            },
        )
    }

    /// A diffusers pipeline folder (DiffusersLoader): `unet/`, `vae/`, `text_encoder/` and
    /// `text_encoder_2/`, loaded once while its UNet weights file stays unchanged (that file
    /// stands for the folder), whole on the device.
    pub fn diffusers(&self, root: &Path) -> Result<Arc<LoadedCheckpoint>, LoadError> {
        let unet_dir = root.join("unet");
        let unet_file = open_component(&unet_dir, "diffusion_pytorch_model")?
            .path()
            .to_path_buf();
        self.get_or_load(
            &unet_file,
            |l| match l {
                Loaded::Checkpoint(c) => Some(Arc::clone(c)),
                _ => None,
            },
            || {
                let sd = open_component(&unet_dir, "diffusion_pytorch_model")?;
                let dtype = self.weight_dtype(sd.float_dtype(""));
                // The UNet dominates; the VAE and text encoders are counted when loaded.
                Ok((sd.loaded_bytes("", |_| dtype), (sd, dtype)))
            },
            |(sd, dtype), _| {
                let ckpt = self.load_diffusers(root, sd, dtype)?;
                Ok((Loaded::Checkpoint(Arc::new(ckpt)), 0))
            },
        )
    }

    /// A standalone VAE file, with the latent scale of the family it will be used with.
    pub fn vae(&self, path: &Path, scale: f64) -> Result<Arc<AutoEncoderKL>, LoadError> {
        let dtype = self.vae_dtype();
        self.get_or_load(
            path,
            |l| match l {
                Loaded::Vae(v) if (v.config().scaling_factor - scale).abs() < 1e-9 => {
                    Some(Arc::clone(v))
                }
                _ => None,
            },
            || Ok((StateDict::open(path)?.loaded_bytes("", |_| dtype), ())),
            // VAEs are small: always whole on the device.
            |(), _| {
                let vae = load_vae_file(path, scale, dtype, &self.device)?;
                Ok((Loaded::Vae(Arc::new(vae)), 0))
            },
        )
    }

    /// A ControlNet, T2I-Adapter or Control-LoRA file (ControlNetLoader), loaded once while it
    /// stays unchanged on disk and counted against the budget like a checkpoint.
    pub fn control(&self, path: &Path) -> Result<Arc<LoadedControl>, LoadError> {
        self.get_or_load(
            path,
            |l| match l {
                Loaded::Control(m) => Some(Arc::clone(m)),
                _ => None,
            },
            || {
                let sd = StateDict::open(path)?;
                let dtype = self.weight_dtype(sd.float_dtype(""));
                Ok((sd.loaded_bytes("", |_| dtype), dtype))
            },
            // Control models run beside the UNet on every step: whole on the device.
            |dtype, _| {
                let control = load_control(path, dtype, &self.device)?;
                Ok((Loaded::Control(Arc::new(control)), 0))
            },
        )
    }

    /// An upscale model file (UpscaleModelLoader), loaded once while it stays unchanged on disk
    /// and counted against the budget like the others.
    pub fn upscale(&self, path: &Path) -> Result<Arc<UpscaleModel>, LoadError> {
        self.get_or_load(
            path,
            |l| match l {
                Loaded::Upscale(m) => Some(Arc::clone(m)),
                _ => None,
            },
            || {
                let sd = StateDict::open(path)?;
                let dtype = self.weight_dtype(sd.float_dtype(""));
                Ok((crate::upscale::file_bytes(&sd, dtype), (sd, dtype)))
            },
            // Small, and run on every tile: whole on the device.
            |(sd, dtype), _| {
                let model = UpscaleModel::load(&Arc::new(sd), dtype, &self.device)?;
                Ok((Loaded::Upscale(Arc::new(model)), 0))
            },
        )
    }

    /// A GLIGEN file (GLIGENLoader), loaded once while it stays unchanged on disk and counted
    /// against the budget like the others.
    pub fn gligen(&self, path: &Path) -> Result<Arc<Gligen>, LoadError> {
        // Run in every transformer block while sampling: whole on the device.
        self.whole_model(
            path,
            |l| match l {
                Loaded::Gligen(m) => Some(Arc::clone(m)),
                _ => None,
            },
            |sd, dtype| {
                let model = Gligen::load(&Arc::new(sd), dtype, &self.device)?;
                Ok(Loaded::Gligen(Arc::new(model)))
            },
        )
    }

    /// A CLIP vision file (CLIPVisionLoader): HF `vision_model.*` or OpenCLIP `visual.*`.
    pub fn clip_vision(&self, path: &Path) -> Result<Arc<ClipVisionModel>, LoadError> {
        self.small_model(
            path,
            |l| match l {
                Loaded::ClipVision(m) => Some(Arc::clone(m)),
                _ => None,
            },
            |tensors, dtype| {
                let prefix = crate::clip_vision::convert::file_prefix(&tensors);
                let model = clip_vision_from_weights(&tensors, prefix, dtype, &self.device)
                    .map_err(|e| e.to_string())?;
                Ok(Loaded::ClipVision(Arc::new(model)))
            },
        )
    }

    /// A T2I style model file (StyleModelLoader).
    pub fn style_model(&self, path: &Path) -> Result<Arc<StyleAdapter>, LoadError> {
        self.small_model(
            path,
            |l| match l {
                Loaded::Style(m) => Some(Arc::clone(m)),
                _ => None,
            },
            |tensors, dtype| {
                let model = StyleAdapter::from_weights(&tensors, dtype, &self.device)
                    .map_err(|e| e.to_string())?
                    .ok_or("not a style model: no style_embedding")?;
                Ok(Loaded::Style(Arc::new(model)))
            },
        )
    }

    /// A ControlNet preprocessor's network (`crate::annotators`): `T` built by `load` from the
    /// file's tensors, always in f32 (the annotators' references run in f32, and their maps are
    /// thresholded), whole on the device, counted against the budget like the other models. The
    /// same file loaded as another type replaces it.
    pub fn annotator<T: Send + Sync + 'static>(
        &self,
        path: &Path,
        load: impl FnOnce(&Arc<StateDict>, &Device) -> Result<T, LoadError>,
    ) -> Result<Arc<T>, LoadError> {
        let as_t = |l: &Loaded| match l {
            Loaded::Annotator(a) => Arc::clone(a).downcast::<T>().ok(),
            _ => None,
        };
        self.get_or_load(
            path,
            as_t,
            || {
                let sd = StateDict::open(path)?;
                Ok((sd.loaded_bytes("", |_| DType::F32), sd))
            },
            |sd, _| {
                let model = load(&Arc::new(sd), &self.device)?;
                Ok((Loaded::Annotator(Arc::new(model)), 0))
            },
        )
    }

    /// A model built from every tensor of its file, in the file's weight dtype, run once per
    /// node call and so whole on the device; `build` says what is wrong with a file it refuses.
    fn small_model<T: ?Sized>(
        &self,
        path: &Path,
        pick: impl Fn(&Loaded) -> Option<Arc<T>>,
        build: impl FnOnce(HashMap<String, Tensor>, DType) -> Result<Loaded, String>,
    ) -> Result<Arc<T>, LoadError> {
        self.whole_model(path, pick, |sd, dtype| {
            build(sd.get_prefixed("")?, dtype)
                .map_err(|m| LoadError::new(path, LoadErrorKind::BadConfig(m)))
        })
    }

    /// A model whole on the device, in the file's weight dtype, counted at its loaded size.
    fn whole_model<T: ?Sized>(
        &self,
        path: &Path,
        pick: impl Fn(&Loaded) -> Option<Arc<T>>,
        build: impl FnOnce(StateDict, DType) -> Result<Loaded, LoadError>,
    ) -> Result<Arc<T>, LoadError> {
        self.get_or_load(
            path,
            pick,
            || {
                let sd = StateDict::open(path)?;
                let dtype = self.weight_dtype(sd.float_dtype(""));
                Ok((sd.loaded_bytes("", |_| dtype), (sd, dtype)))
            },
            |(sd, dtype), _| Ok((build(sd, dtype)?, 0)),
        )
    }

    /// Unloads every model (`POST /free` with `unload_models`).
    pub fn unload_all(&self) {
        self.lock().entries.clear();
        memory::return_freed_memory();
    }

    /// The files of the checkpoints loaded now (workers sharing a queue advertise them, so a
    /// prompt goes preferably where its checkpoint is).
    pub fn loaded_checkpoints(&self) -> Vec<PathBuf> {
        self.lock()
            .entries
            .iter()
            .filter(|e| matches!(e.loaded, Loaded::Checkpoint(_)))
            .map(|e| e.path.clone())
            .collect()
    }

    /// What is loaded, the budget and the memory figures now.
    pub fn stats(&self) -> ModelStats {
        let (models, bytes, offloaded) = {
            let state = self.lock();
            (
                state.entries.len(),
                state.entries.iter().map(|e| e.bytes() + e.offloaded).sum(),
                state.entries.iter().map(|e| e.offloaded).sum(),
            )
        };
        ModelStats {
            models,
            bytes,
            budget: self.budget,
            offloaded,
            memory: self.probe.read(),
        }
    }

    /// Builds a diffusers pipeline's models: the UNet from its map of (diffusers-named) weights,
    /// kept for LoRA and merges as a checkpoint's are.
    fn load_diffusers(
        &self,
        root: &Path,
        sd: StateDict,
        dtype: DType,
    ) -> Result<LoadedCheckpoint, LoadError> {
        let path = sd.path().to_path_buf();
        let fail = |kind: LoadErrorKind| LoadError {
            path: path.clone(),
            kind,
        };
        let detected = detect_unet_diffusers(&root.join("unet"))?;
        let mut weights = HashMap::new();
        for key in sd.shapes().keys() {
            let tensor = to_dtype(&sd.get(key)?, dtype)
                .and_then(|t| t.to_device(&self.device))
                .map_err(|e| fail(LoadErrorKind::Tensor(e)))?;
            weights.insert(key.clone(), tensor);
        }
        let vb = placed_var_builder(weights.clone(), dtype, &self.device);
        let unet = UNet2DConditionModel::new(vb, &detected.config)
            .map_err(|e| fail(LoadErrorKind::Tensor(e)))?;
        let vae = load_vae_diffusers(&root.join("vae"), self.vae_dtype(), &self.device)?;
        let family = detected.family;
        // The text encoders under the prefixes `text_encoder` looks them up by.
        let clips: Vec<ClipComponent> = diffusers_text_encoders(root)?
            .into_iter()
            .enumerate()
            .map(|(i, (name, tensors))| ClipComponent {
                prefix: match family {
                    ModelFamily::SdxlBase => format!("conditioner.embedders.{i}."),
                    _ => format!("{name}."),
                },
                tensors: prefixed(tensors, "transformer."),
            })
            .collect();
        let clip = if clips.is_empty() {
            None
        } else {
            let encoder = text_encoder(family, &clips, dtype, &self.device)
                .map_err(|m| fail(LoadErrorKind::BadConfig(m)))?;
            Some(Arc::new(encoder))
        };
        let model_bytes: usize = weights.values().map(tensor_bytes).sum();
        let model = DiffusionModel::new(unet, family, detected.prediction, model_bytes)
            .with_weights(weights);
        Ok(LoadedCheckpoint {
            model: Arc::new(model),
            clip,
            vae: Some(Arc::new(vae)),
            // A diffusers folder's image encoder is not read (no loader of ComfyUI's reads it).
            clip_vision: None,
            bytes: model_bytes,
            fp8: None,
        })
    }

    /// Builds a checkpoint's models from `sd`, tensor by tensor: each is read from the file and
    /// converted (when its dtype changes) before the next. `on_device`: how many of its `bytes`
    /// may go on the device; the UNet weights beyond that stay in RAM (a partial load). Returns
    /// the checkpoint and the bytes kept in RAM.
    fn load_checkpoint(
        &self,
        sd: StateDict,
        dtype: DType,
        fp8: Option<Fp8Format>,
        bytes: usize,
        on_device: usize,
    ) -> Result<(LoadedCheckpoint, usize), LoadError> {
        let path = sd.path().to_path_buf();
        let fail = |kind: LoadErrorKind| LoadError {
            path: path.clone(),
            kind,
        };
        let sd = Arc::new(sd);
        let components = split_components(&sd);
        // The UNet is built from a map of its diffusers-named weights, which the model keeps: a
        // LoRA patches a copy-on-write copy of that map without reading the file again.
        let (detected, names, prefix) = match components.unet.clone() {
            Some(prefix) => {
                let detected = detect_unet(&sd, &prefix).map_err(fail)?;
                let names = unet_ldm_names(&sd, &prefix, detected.config.layers_per_block);
                (detected, names, prefix)
            }
            // A bare UNet in diffusers' layout (UNETLoader reads those too): its names are ours.
            None if is_diffusers_unet(&sd) => {
                let detected = detect_unet_diffusers_layout(&sd).map_err(fail)?;
                let names = sd.shapes().keys().map(|k| (k.clone(), k.clone())).collect();
                (detected, names, String::new())
            }
            None => {
                return Err(fail(LoadErrorKind::UnknownFamily {
                    looked_for: distinguishing_keys(UNET_PREFIX),
                }))
            }
        };
        let placement = if on_device >= bytes {
            Placement::resident(bytes)
        } else {
            // The text encoders and the VAE are whole on the device; the UNet gets the rest.
            let unet_bytes = sd.loaded_bytes(&prefix, |_| dtype);
            let sizes: Vec<(&str, usize)> = names
                .iter()
                .map(|(name, key)| (name.as_str(), sd.tensor_loaded_bytes(key, |_| dtype)))
                .collect();
            Placement::plan(sizes, on_device.saturating_sub(bytes - unet_bytes))
        };
        if placement.is_partial() {
            tracing::info!(
                path = %path.display(),
                on_device = placement.device_bytes(),
                in_ram = placement.host_bytes(),
                "partial load: {} of the diffusion model on {:?}, {} kept in RAM and moved per layer while sampling",
                memory::human(placement.device_bytes() as u64),
                self.device.location(),
                memory::human(placement.host_bytes() as u64)
            );
        }
        let mut weights = HashMap::new();
        for (name, key) in names {
            let tensor = sd.get(&key)?;
            let tensor = match fp8 {
                Some(f) => f.quantize(&tensor),
                // On every core: candle's own conversion runs element by element.
                None => to_dtype(&tensor, dtype),
            };
            let tensor = tensor
                .and_then(|t| t.to_device(&placement.device_for(&name, &self.device)))
                .map_err(|e| fail(LoadErrorKind::Tensor(e)))?;
            weights.insert(name, tensor);
        }
        let vb = placed_var_builder(weights.clone(), dtype, &self.device);
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
        // fp8 is for the diffusion model only; the encoders keep the file's precision.
        let dtype = match fp8 {
            Some(_) => self.weight_dtype(sd.float_dtype("")),
            None => dtype,
        };
        let clip = if clips.is_empty() {
            None
        } else {
            let encoder = text_encoder(family, &clips, dtype, &self.device)
                .map_err(|m| fail(LoadErrorKind::BadConfig(m)))?;
            Some(Arc::new(encoder))
        };
        drop(clips);
        // Counted in `bytes` already: the estimate is of every tensor in the file.
        let clip_vision = if sd
            .shapes()
            .keys()
            .any(|k| k.starts_with(UNCLIP_CHECKPOINT_PREFIX))
        {
            let tensors = sd.get_prefixed(UNCLIP_CHECKPOINT_PREFIX)?;
            let model = clip_vision_from_weights(&tensors, "", dtype, &self.device)
                .map_err(|e| fail(LoadErrorKind::BadConfig(e.to_string())))?;
            Some(Arc::new(model))
        } else {
            None
        };
        let model_bytes: usize = weights.values().map(tensor_bytes).sum();
        let model = DiffusionModel::new(unet, family, detected.prediction, model_bytes)
            .with_weights(weights);
        let checkpoint = LoadedCheckpoint {
            model: Arc::new(model),
            clip,
            vae,
            clip_vision,
            bytes,
            fp8,
        };
        Ok((checkpoint, placement.host_bytes()))
    }
}

/// A standalone text-encoder file (ComfyUI's `models/text_encoders`): HF transformers names, with
/// or without a `text_model.` level, or OpenCLIP names.
pub fn clip_file(path: &Path, dtype: DType, device: &Device) -> Result<ClipTextModel, LoadError> {
    let fail = |message: String| LoadError {
        path: path.to_path_buf(),
        kind: LoadErrorKind::BadConfig(message),
    };
    let sd = crate::load::file::StateDict::open(path)?;
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
        .map(|(k, t)| to_dtype(&t, dtype).map(|t| (k, t)))
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
        let vae_dtype = |dtype: Option<DType>| ModelManager::new(0, Device::Cpu, dtype).vae_dtype();
        assert_eq!(vae_dtype(Some(DType::F16)), DType::F32);
        assert_eq!(vae_dtype(None), DType::F32);
        // bf16 only where the bf16 kernel runs: off until enabled, then where the CPU has it.
        let bf16_vae = || match crate::ops::gemm_bf16::available() {
            true => DType::BF16,
            false => DType::F32,
        };
        assert_eq!(vae_dtype(Some(DType::BF16)), bf16_vae());
        crate::ops::gemm_bf16::enable_in_this_test();
        assert_eq!(vae_dtype(Some(DType::BF16)), bf16_vae());
        assert_eq!(vae_dtype(Some(DType::F32)), DType::F32);
    }

    #[test]
    fn annotators_load_once_per_type_and_count_against_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.safetensors");
        let w = Tensor::zeros((16, 16), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), w)]), &path).unwrap();
        let manager = ModelManager::new(1 << 30, Device::Cpu, Some(DType::F16));
        let loads = std::sync::atomic::AtomicUsize::new(0);
        let load = |sd: &Arc<StateDict>, _: &Device| {
            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            sd.get("w")
        };
        let a = manager.annotator(&path, load).unwrap();
        let b = manager.annotator(&path, load).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Counted in f32 whatever `--dtype` says.
        assert_eq!(manager.stats().bytes, 16 * 16 * 4);
        // The same file as another type loads again, in place of the first.
        let other = manager.annotator(&path, |_, _| Ok(7u8)).unwrap();
        assert_eq!(*other, 7);
        assert_eq!(manager.stats().models, 1);
    }
}
