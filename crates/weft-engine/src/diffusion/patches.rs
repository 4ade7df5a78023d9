//! Model patches: the hooks ComfyUI keeps in `ModelPatcher.model_options`, applied while sampling
//! without copying a weight.
//!
//! A MODEL value is an `Arc<DiffusionModel>` whose UNet is itself shared, so a patch node clones
//! the handle ([`DiffusionModel::patched`]), adds a hook to its [`ModelPatches`] and returns the
//! clone; the input model is unchanged and both share every weight. The CFG denoiser calls the
//! hooks where ComfyUI's `sampling_function` / `cfg_function` do:
//!
//! 1. the UNet runs on the positive and (unless cfg is 1) negative conditioning, with the
//!    [`UNetPatches`] (FreeU's skip filter, attention scales) applied inside it;
//! 2. each [`PreCfg`] hook rewrites the (cond, uncond) predictions (`sampler_pre_cfg_function`:
//!    APG, TCFG, LatentApplyOperationCFG), in the order they were added;
//! 3. the [`CfgFunction`], if any, replaces `uncond + (cond - uncond) * cfg`
//!    (`sampler_cfg_function`: RescaleCFG; the last one set wins, as in ComfyUI);
//! 4. each [`PostCfg`] hook rewrites the combined prediction (`sampler_post_cfg_function`:
//!    CFGZeroStar, Epsilon Scaling, and any other post-CFG operation), in order;
//! 5. an inpainting mask is applied last, after a [`DenoiseMaskFunction`]
//!    (`denoise_mask_function`: DifferentialDiffusion) has reshaped it for this step.
//!
//! The model-sampling override (`ModelSamplingDiscrete` etc.) is not a hook: the clone simply
//! carries another [`crate::sampling::model_sampling::ModelSamplingDiscrete`].
//!
//! Every hook sees denoised predictions (`x0`), f32 on the host, `[B, C, H, W]`, and `sigma` as
//! one number, since every latent in a batch shares the step's sigma.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{Result, Tensor};

use crate::sampling::rng::TorchGenerator;

use crate::diffusion::{CondEntry, DiffusionModel};
use crate::sampling::model_sampling::ModelSamplingDiscrete;

/// Evaluates the positive conditioning at the hook's `(x, sigma)` with the model's UNet patches
/// changed by the given function (what PAG's `calc_cond_batch` with modified `model_options`
/// does).
pub type EvalPositive<'a> = dyn Fn(&dyn Fn(&mut UNetPatches)) -> Result<Tensor> + 'a;

/// Evaluates the negative conditioning at another `x` (same sigma, the model's UNet patches),
/// as a positive side (what SAG's `calc_cond_batch(model, [uncond], ...)` does).
pub type EvalNegativeAt<'a> = dyn Fn(&Tensor) -> Result<Tensor> + 'a;

/// The model evaluations a CFG-level hook may ask for; `None` where the caller cannot run the
/// model (parity tests on bare tensors).
#[derive(Clone, Copy, Default)]
pub struct Reruns<'a> {
    /// See [`EvalPositive`].
    pub positive: Option<&'a EvalPositive<'a>>,
    /// See [`EvalNegativeAt`].
    pub negative_at: Option<&'a EvalNegativeAt<'a>>,
}

/// What a CFG-level hook sees (ComfyUI's `args` dict).
#[derive(Clone, Copy)]
pub struct CfgArgs<'a> {
    /// The sampler's `x` at this call (`args["input"]`), after inpainting blends it.
    pub x: &'a Tensor,
    /// The step's sigma.
    pub sigma: f64,
    /// The CFG scale (`cond_scale`).
    pub cond_scale: f64,
    /// The positive prediction (`cond_denoised`).
    pub cond: &'a Tensor,
    /// The negative prediction (`uncond_denoised`); `None` when ComfyUI's cfg-1 shortcut skipped
    /// it (cfg 1, or no negative conditioning).
    pub uncond: Option<&'a Tensor>,
    /// The model sampling in effect (the patched one, if any).
    pub sampling: &'a ModelSamplingDiscrete,
    /// The predictions for the CFG function's [`CfgFunction::extra_conds`], in order (empty for
    /// the other hooks).
    pub extra: &'a [Tensor],
    /// Runs the model on the positive conditioning again, with other UNet patches; `None` where
    /// the caller cannot (parity tests on bare tensors).
    pub eval_positive: Option<&'a EvalPositive<'a>>,
    /// Runs the model on the negative conditioning at another `x`; `None` where the caller
    /// cannot.
    pub eval_negative_at: Option<&'a EvalNegativeAt<'a>>,
}

/// `sampler_pre_cfg_function`: rewrites the predictions before they are combined. `uncond` is
/// `None` when the negative side was skipped (ComfyUI's `conds_out` then has one entry).
pub trait PreCfg: Send + Sync + Debug {
    /// Returns the new (cond, uncond).
    fn pre_cfg(
        &self,
        args: &CfgArgs<'_>,
        cond: Tensor,
        uncond: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)>;
}
/// `sampler_cfg_function`: combines the two predictions instead of plain CFG. Runs only when the
/// negative prediction exists (with cfg 1 every ComfyUI cfg function gives the positive one).
pub trait CfgFunction: Send + Sync + Debug {
    /// The combined denoised prediction (ComfyUI's hook returns `x - that`; this returns it
    /// directly).
    fn cfg(&self, args: &CfgArgs<'_>) -> Result<Tensor>;

    /// Conditionings the function needs the model's prediction for (PerpNeg's empty prompt,
    /// evaluated as a negative); the denoiser evaluates them each step and passes the results
    /// in [`CfgArgs::extra`].
    fn extra_conds(&self) -> &[Arc<Vec<CondEntry>>] {
        &[]
    }
}

/// `sampler_post_cfg_function`: rewrites the combined prediction.
pub trait PostCfg: Send + Sync + Debug {
    /// The new combined prediction from `denoised`.
    fn post_cfg(&self, args: &CfgArgs<'_>, denoised: Tensor) -> Result<Tensor>;
}

/// `denoise_mask_function`: the inpainting mask to use at `sigma`, given the run's schedule.
pub trait DenoiseMaskFunction: Send + Sync + Debug {
    /// `mask` is the latent-shaped mask (1 = resample); `schedule` the run's sigmas.
    fn mask(
        &self,
        sigma: f64,
        mask: &Tensor,
        schedule: &[f64],
        sampling: &ModelSamplingDiscrete,
    ) -> Result<Tensor>;
}

/// A patch on one of the UNet's output (up-path) blocks, ComfyUI's `output_block_patch`: gets
/// the hidden state and the skip it is about to be concatenated with, returns both.
pub trait OutputBlockPatch: Send + Sync + Debug {
    /// `h` and `skip` are `[B, C, H, W]` in the UNet's dtype.
    fn patch(&self, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)>;
}

/// A patch on the UNet's input (down-path) blocks, ComfyUI's `input_block_patch` and
/// `input_block_patch_after_skip`.
pub trait InputBlockPatch: Send + Sync + Debug {
    /// `h` is the output of input block `block` (LDM numbering: 0 is `conv_in`, then each resnet
    /// (+ attention) and each downsampler in order) at noise level `sigma`.
    fn patch(&self, h: Tensor, block: usize, sigma: f64) -> Result<Tensor>;
}

/// A replacement for self-attention (ComfyUI's `attn1` replace patch): q, k and v are the
/// projected `[B, N, heads * head_dim]` tokens; returns the attention output before `to_out`.
pub trait AttentionReplace: Send + Sync + Debug {
    /// The attention output, `[B, N, heads * head_dim]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor>;
}

/// What a [`SelfAttentionPatch`] gives back to undo its change on the attention output.
pub type UndoAttentionPatch = Box<dyn FnOnce(Tensor) -> Result<Tensor>>;

/// ComfyUI's `attn1_patch` with its `attn1_output_patch` (HyperTile, ToMe): rewrites the
/// sources of a self-attention's queries, keys and values (the block's normed hidden states
/// `[B, N, C]`), and the attention output (after `to_out`) back. Applies to every transformer
/// block of the UNet.
pub trait SelfAttentionPatch: Send + Sync + Debug {
    /// The new (query, key, value) sources and the undo for the output; `latent_hw` is the UNet
    /// input's height and width (ComfyUI's `original_shape[-2:]`).
    fn before(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        latent_hw: (usize, usize),
    ) -> Result<(Tensor, Tensor, Tensor, UndoAttentionPatch)>;

    /// The patch's handle on the sampling run's global generator, if it draws from it (ToMe,
    /// hypernetwork dropout).
    fn global_draws(&self) -> Option<&GlobalDraws> {
        None
    }

    /// Where the patch's per-call random draws stand; `None` if it draws none. See
    /// [`UNetPatches::draw_states`].
    fn draw_state(&self) -> Option<DrawState> {
        self.global_draws()
            .map(|g| DrawState::Global(Box::new(g.with(|s| s.generator.clone()))))
    }

    /// Puts the draws back to a state [`Self::draw_state`] gave.
    fn set_draw_state(&self, state: &DrawState) {
        if let (Some(g), DrawState::Global(generator)) = (self.global_draws(), state) {
            g.with(|s| s.generator = (**generator).clone());
        }
    }
}

/// Where a [`SelfAttentionPatch`]'s random draws stand.
#[derive(Debug, Clone)]
pub enum DrawState {
    /// A draw counter (HyperTile seeds Python's `random` with it).
    Counter(u64),
    /// The global generator's whole state.
    Global(Box<TorchGenerator>),
}

/// Which share of ComfyUI's batched UNet call a Weft pass is. ComfyUI runs the negative and the
/// positive side as one batch, negative first (`calc_cond_batch`); Weft runs them one by one, so
/// a draw over the whole batch (dropout's mask) takes this pass's share and skips the others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSlot {
    /// This pass's place in ComfyUI's batch.
    pub index: usize,
    /// How many passes ComfyUI's batch holds.
    pub count: usize,
}

impl BatchSlot {
    /// A pass ComfyUI runs on its own.
    pub const ALONE: BatchSlot = BatchSlot { index: 0, count: 1 };
}

/// A sampling run's stand-in for torch's global CPU generator.
#[derive(Debug, Clone)]
pub struct GlobalStream {
    /// The generator, as ComfyUI's would stand.
    pub generator: TorchGenerator,
    /// The pass being run.
    pub slot: BatchSlot,
}

/// The global stream shared by every patch that draws from it, in the order ComfyUI's would.
pub type GlobalGenerator = Arc<Mutex<GlobalStream>>;

/// A patch's handle on the global stream: until a sampling run starts, a generator at torch's
/// startup state.
#[derive(Debug)]
pub struct GlobalDraws(Mutex<GlobalGenerator>);

impl GlobalDraws {
    /// A handle on a fresh stream.
    pub fn new() -> Self {
        GlobalDraws(Mutex::new(Arc::new(Mutex::new(GlobalStream {
            generator: TorchGenerator::torch_default(),
            slot: BatchSlot::ALONE,
        }))))
    }

    fn handle(&self) -> GlobalGenerator {
        // A poisoned lock only means another sampling panicked; the generator is still whole.
        Arc::clone(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on the stream.
    pub fn with<R>(&self, f: impl FnOnce(&mut GlobalStream) -> R) -> R {
        let handle = self.handle();
        let mut stream = handle.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut stream)
    }

    fn attach(&self, global: &GlobalGenerator) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(global);
    }
}

impl Default for GlobalDraws {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for GlobalDraws {
    /// The clone draws from the same stream.
    fn clone(&self) -> Self {
        GlobalDraws(Mutex::new(self.handle()))
    }
}

/// ComfyUI's `middle_patch`: rewrites a transformer block's hidden state between its
/// self-attention (added back) and its cross-attention (GLIGEN's fusers).
pub trait MiddlePatch: Send + Sync + Debug {
    /// `x` is the `[B, N, C]` hidden state of a block of transformer `transformer_index`: ComfyUI's
    /// count of the UNet's transformers from 0 through the input, middle and output blocks, which
    /// every block of one transformer shares.
    fn patch(&self, x: Tensor, transformer_index: usize) -> Result<Tensor>;
}

/// ComfyUI's `attn2_patch`: rewrites the sources of a cross-attention's queries (the block's
/// normed hidden states `[B, N, C]`), keys and values (the text context `[B, M, C_ctx]`) before
/// the projections. Applies to every transformer block of the UNet.
pub trait CrossAttentionPatch: Send + Sync + Debug {
    /// The new (query, key, value) sources.
    fn before(&self, q: Tensor, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor, Tensor)>;
}

/// Patches applied inside the UNet's forward pass.
#[derive(Debug, Clone, Default)]
pub struct UNetPatches {
    /// Replaces the self-attention of every transformer block in the middle block (the
    /// `("middle", 0)` attn1 replace patch).
    pub mid_self_attention: Option<Arc<dyn AttentionReplace>>,
    /// Replaces the self-attention of the middle block's first transformer block only (the
    /// `("middle", 0, 0)` attn1 replace patch); wins over `mid_self_attention` there.
    pub mid_first_self_attention: Option<Arc<dyn AttentionReplace>>,
    /// `input_block_patch`es: change an input block's output before it is kept as a skip.
    pub input_block: Vec<Arc<dyn InputBlockPatch>>,
    /// `input_block_patch_after_skip`es: change only what continues down the UNet.
    pub input_block_after_skip: Vec<Arc<dyn InputBlockPatch>>,
    /// `output_block_patch`es, applied in order before each up-path concatenation.
    pub output_block: Vec<Arc<dyn OutputBlockPatch>>,
    /// `attn1_patch`/`attn1_output_patch` pairs, in the order they were added.
    pub self_attention: Vec<Arc<dyn SelfAttentionPatch>>,
    /// `middle_patch`es, applied in order in every transformer block (a conditioning's GLIGEN
    /// boxes add theirs while it is evaluated).
    pub middle: Vec<Arc<dyn MiddlePatch>>,
    /// `attn2_patch`es, in the order they were added.
    pub cross_attention: Vec<Arc<dyn CrossAttentionPatch>>,
}

impl UNetPatches {
    /// Whether no patch is set: the UNet runs as loaded.
    pub fn is_empty(&self) -> bool {
        let UNetPatches {
            mid_self_attention,
            mid_first_self_attention,
            input_block,
            input_block_after_skip,
            output_block,
            self_attention,
            middle,
            cross_attention,
        } = self;
        mid_self_attention.is_none()
            && mid_first_self_attention.is_none()
            && input_block.is_empty()
            && input_block_after_skip.is_empty()
            && output_block.is_empty()
            && self_attention.is_empty()
            && middle.is_empty()
            && cross_attention.is_empty()
    }

    /// The self-attention patches' draw states. Where ComfyUI batches the positive and negative
    /// sides into one UNet call, its patches draw once for both; Weft runs two calls and puts the
    /// draws back with [`Self::restore_draw_states`] before the second.
    pub fn draw_states(&self) -> Vec<Option<DrawState>> {
        self.self_attention.iter().map(|p| p.draw_state()).collect()
    }

    /// Puts back what [`Self::draw_states`] returned.
    pub fn restore_draw_states(&self, states: &[Option<DrawState>]) {
        for (patch, state) in self.self_attention.iter().zip(states) {
            if let Some(state) = state {
                patch.set_draw_state(state);
            }
        }
    }

    /// Starts a sampling run whose noise left torch's global generator at `global`: every patch
    /// drawing from the global generator now draws from this one stream.
    pub fn start_sampling(&self, global: TorchGenerator) {
        let global: GlobalGenerator = Arc::new(Mutex::new(GlobalStream {
            generator: global,
            slot: BatchSlot::ALONE,
        }));
        for draws in self.self_attention.iter().filter_map(|p| p.global_draws()) {
            draws.attach(&global);
        }
    }

    /// Tells the patches drawing from the global stream which pass runs next.
    pub fn set_batch_slot(&self, slot: BatchSlot) {
        for draws in self.self_attention.iter().filter_map(|p| p.global_draws()) {
            draws.with(|s| s.slot = slot);
        }
    }
}

/// Everything patched onto a model handle (ComfyUI's `model_options`).
#[derive(Debug, Clone, Default)]
pub struct ModelPatches {
    /// Pre-CFG hooks, in the order they were added.
    pub pre_cfg: Vec<Arc<dyn PreCfg>>,
    /// The CFG combination, if replaced.
    pub cfg_function: Option<Arc<dyn CfgFunction>>,
    /// Post-CFG hooks, in the order they were added.
    pub post_cfg: Vec<Arc<dyn PostCfg>>,
    /// The per-step inpainting mask, if replaced.
    pub denoise_mask: Option<Arc<dyn DenoiseMaskFunction>>,
    /// Patches inside the UNet.
    pub unet: UNetPatches,
    /// The `("middle", 0, 0)` attn1 replace for the negative side's evaluations only (ComfyUI's
    /// replace sees `cond_or_uncond`; SAG records the negative prediction's attention there).
    pub uncond_mid_first_self_attention: Option<Arc<dyn AttentionReplace>>,
    /// Evaluate the negative side even at cfg 1 (ComfyUI's `disable_cfg1_optimization`).
    pub disable_cfg1_optimization: bool,
}

impl ModelPatches {
    /// Combines `cond` and `uncond` as ComfyUI's `sampling_function` does: pre-CFG hooks, then
    /// [`Self::cfg_and_post`]. Without `uncond` the result is `cond` through the post-CFG hooks.
    /// `extra` holds the predictions for the CFG function's extra conditionings.
    #[allow(clippy::too_many_arguments)]
    pub fn combine(
        &self,
        x: &Tensor,
        sigma: f64,
        cond_scale: f64,
        sampling: &ModelSamplingDiscrete,
        cond: Tensor,
        uncond: Option<Tensor>,
        extra: &[Tensor],
        reruns: Reruns<'_>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (cond, uncond) = self.pre_cfg_all(x, sigma, cond_scale, sampling, cond, uncond)?;
        let result = self.cfg_and_post(
            x,
            sigma,
            cond_scale,
            sampling,
            (&cond, uncond.as_ref()),
            extra,
            reruns,
        )?;
        Ok((result, uncond))
    }

    /// The pre-CFG hooks in order.
    pub fn pre_cfg_all(
        &self,
        x: &Tensor,
        sigma: f64,
        cond_scale: f64,
        sampling: &ModelSamplingDiscrete,
        mut cond: Tensor,
        mut uncond: Option<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        for hook in &self.pre_cfg {
            let (c, u) = (cond.clone(), uncond.clone());
            let args = CfgArgs {
                x,
                sigma,
                cond_scale,
                cond: &c,
                uncond: u.as_ref(),
                sampling,
                extra: &[],
                eval_positive: None,
                eval_negative_at: None,
            };
            (cond, uncond) = hook.pre_cfg(&args, cond, uncond)?;
        }
        Ok((cond, uncond))
    }

    /// ComfyUI's `cfg_function`: the CFG function (or plain CFG) then the post-CFG hooks.
    #[allow(clippy::too_many_arguments)]
    pub fn cfg_and_post(
        &self,
        x: &Tensor,
        sigma: f64,
        cond_scale: f64,
        sampling: &ModelSamplingDiscrete,
        (cond, uncond): (&Tensor, Option<&Tensor>),
        extra: &[Tensor],
        reruns: Reruns<'_>,
    ) -> Result<Tensor> {
        let args = CfgArgs {
            x,
            sigma,
            cond_scale,
            cond,
            uncond,
            sampling,
            extra,
            eval_positive: reruns.positive,
            eval_negative_at: reruns.negative_at,
        };
        let mut result = match (uncond, &self.cfg_function) {
            (Some(_), Some(f)) => f.cfg(&args)?,
            (Some(uncond), None) => (uncond + ((cond - uncond)? * cond_scale)?)?,
            (None, _) => cond.clone(),
        };
        let args = CfgArgs { extra: &[], ..args };
        for hook in &self.post_cfg {
            result = hook.post_cfg(&args, result)?;
        }
        Ok(result)
    }
}

impl DiffusionModel {
    /// A clone of this model handle with `patch` applied to its patches; the UNet, its weights and
    /// the input model are shared, never copied.
    pub fn patched(&self, patch: impl FnOnce(&mut ModelPatches)) -> DiffusionModel {
        let mut model = self.clone();
        patch(&mut model.patches);
        model
    }

    /// A clone of this handle that samples with `sampling` instead (ComfyUI's `model_sampling`
    /// object patch).
    pub fn with_sampling(&self, sampling: ModelSamplingDiscrete) -> DiffusionModel {
        DiffusionModel {
            sampling,
            ..self.clone()
        }
    }
}

/// Per-batch-element reductions over `[B, ...]` tensors, as the guidance formulas use them.
pub mod batch {
    use candle_core::{DType, Result, Tensor};

    /// `sum(a * b)` over all but the first dimension, per batch element, in f64.
    pub fn dot(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
        let batch = a.dim(0)?;
        (a * b)?
            .reshape((batch, ()))?
            .sum(1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()
    }

    /// `t` scaled per batch element by `scales`.
    pub fn scale(t: &Tensor, scales: &[f64]) -> Result<Tensor> {
        let mut shape = vec![scales.len()];
        shape.extend(std::iter::repeat_n(1, t.rank() - 1));
        let s: Vec<f32> = scales.iter().map(|&v| v as f32).collect();
        t.broadcast_mul(&Tensor::from_vec(s, shape, t.device())?)
    }

    /// torch's `std` (unbiased) over all but the first dimension, per batch element.
    pub fn std(t: &Tensor) -> Result<Vec<f64>> {
        let batch = t.dim(0)?;
        let flat = t.reshape((batch, ()))?.to_dtype(DType::F64)?;
        let n = flat.dim(1)? as f64;
        let mean = flat.mean_keepdim(1)?;
        let var = flat
            .broadcast_sub(&mean)?
            .sqr()?
            .sum(1)?
            .affine(1.0 / (n - 1.0), 0.0)?;
        var.sqrt()?.to_vec1::<f64>()
    }
}
