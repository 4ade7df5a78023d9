//! The CLIP vision transformer (HF transformers `CLIPVisionModelWithProjection` names and maths,
//! as ComfyUI's `comfy/clip_model.py` `CLIPVisionModelProjection`), and ComfyUI's
//! `clip_preprocess`.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::clip::model::{ClipActivation, EncoderLayer, LayerShape};
use crate::clip::ClipError;
use crate::device::compute_dtype;
use crate::ops::cast::operand;
use crate::ops::layers::{layer_norm, linear_no_bias, LayerNorm, Linear};
use crate::resize::{common_upscale, Crop, UpscaleMethod};

/// OpenAI CLIP's pixel mean and standard deviation (RGB), as ComfyUI normalises with.
const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Shape of a CLIP vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Side of the square patches (the patch convolution's kernel and stride).
    pub patch_size: usize,
    /// Side of the square input the position table is for (224).
    pub image_size: usize,
    /// Output width of `visual_projection` (no bias).
    pub projection_dim: usize,
}

impl ClipVisionConfig {
    /// ComfyUI's `clip_vision_config_vitl.json`: OpenAI ViT-L/14 (SD2.1 unCLIP-L, style models).
    pub fn vit_l() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            patch_size: 14,
            image_size: 224,
            projection_dim: 768,
        }
    }

    /// ComfyUI's `clip_vision_config_h.json`: OpenCLIP ViT-H/14 (SD2.1 unCLIP-H, IP-Adapters).
    pub fn vit_h() -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            hidden_act: ClipActivation::Gelu,
            projection_dim: 1024,
            ..Self::vit_l()
        }
    }

    /// ComfyUI's `clip_vision_config_g.json`: OpenCLIP ViT-bigG/14 (SDXL revision).
    pub fn vit_bigg() -> Self {
        Self {
            hidden_size: 1664,
            intermediate_size: 8192,
            num_hidden_layers: 48,
            hidden_act: ClipActivation::Gelu,
            projection_dim: 1280,
            ..Self::vit_l()
        }
    }

    fn layer_shape(&self) -> LayerShape {
        LayerShape {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    /// Patches per side of the input.
    fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }
}

/// ComfyUI's CLIP_VISION_OUTPUT, f32 on the CPU.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput {
    /// The last layer's output (no final LayerNorm), `[B, 1 + patches, hidden]`.
    pub last_hidden_state: Tensor,
    /// The second-to-last layer's output, `[B, 1 + patches, hidden]`.
    pub penultimate_hidden_states: Tensor,
    /// `visual_projection(post_layernorm(class token))`, `[B, projection_dim]`.
    pub image_embeds: Tensor,
}

impl ClipVisionOutput {
    /// Bytes held by the three tensors.
    pub fn byte_size(&self) -> usize {
        [
            &self.last_hidden_state,
            &self.penultimate_hidden_states,
            &self.image_embeds,
        ]
        .iter()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
    }
}

/// The CLIP vision tower with its projection, HF names (`vision_model.embeddings.*`,
/// `vision_model.pre_layrnorm`, `vision_model.encoder.layers.N.*`, `vision_model.post_layernorm`,
/// `visual_projection.weight`).
#[derive(Debug, Clone)]
pub struct ClipVisionModel {
    class_embedding: Tensor,
    /// The patch convolution's kernel as a `[hidden, 3 * patch * patch]` matrix: a convolution
    /// whose stride is its kernel is one matrix product over the unfolded patches.
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Linear,
    cfg: ClipVisionConfig,
    span: tracing::Span,
}

impl ClipVisionModel {
    /// Builds the model from `vb` rooted at the HF key tree.
    pub fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self, ClipError> {
        let shape = cfg.layer_shape();
        shape.check()?;
        if cfg.num_hidden_layers < 2 {
            // CLIP_VISION_OUTPUT carries the second-to-last layer.
            return Err(ClipError::InvalidConfig(format!(
                "a clip vision tower of {} layer(s) has no second-to-last layer",
                cfg.num_hidden_layers
            )));
        }
        if cfg.patch_size == 0 || cfg.patches_per_side() == 0 {
            return Err(ClipError::InvalidConfig(format!(
                "{}-pixel patches do not fit a {}-pixel image",
                cfg.patch_size, cfg.image_size
            )));
        }
        let vm = vb.pp("vision_model");
        let emb = vm.pp("embeddings");
        let hidden = cfg.hidden_size;
        let class_embedding = emb.get(hidden, "class_embedding")?;
        let patch_embedding = emb
            .pp("patch_embedding")
            .get((hidden, 3, cfg.patch_size, cfg.patch_size), "weight")?
            .reshape((hidden, 3 * cfg.patch_size * cfg.patch_size))?;
        let positions = cfg.patches_per_side().pow(2) + 1;
        let position_embedding = emb
            .pp("position_embedding")
            .get((positions, hidden), "weight")?;
        let layers_vb = vm.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(layers_vb.pp(i), &shape))
            .collect::<Result<Vec<_>, ClipError>>()?;
        Ok(Self {
            class_embedding,
            patch_embedding,
            position_embedding,
            pre_layrnorm: layer_norm(hidden, cfg.layer_norm_eps, vm.pp("pre_layrnorm"))?,
            layers,
            post_layernorm: layer_norm(hidden, cfg.layer_norm_eps, vm.pp("post_layernorm"))?,
            visual_projection: linear_no_bias(
                hidden,
                cfg.projection_dim,
                vb.pp("visual_projection"),
            )?,
            cfg: cfg.clone(),
            span: tracing::trace_span!("clip_vision_model"),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.class_embedding.device()
    }

    /// A short description for logs and errors, e.g. `CLIP vision 24x1024 (ViT-L/14 shape)`.
    pub fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "CLIP vision {}x{} patch {} projection {}",
            c.num_hidden_layers, c.hidden_size, c.patch_size, c.projection_dim
        )
    }

    /// ComfyUI's `ClipVisionModel.encode_image`: `image` is an IMAGE `[B, H, W, C]` in 0..1
    /// (channels past the third are dropped); `crop` centre-crops after resizing the shortest
    /// side (CLIPVisionEncode's `"center"`), otherwise the image is squashed to the square.
    pub fn encode_image(&self, image: &Tensor, crop: bool) -> Result<ClipVisionOutput, ClipError> {
        let pixels = preprocess(image, self.cfg.image_size, crop)?;
        let out = self.forward(&pixels.to_device(self.device())?)?;
        let host = |t: Tensor| -> Result<Tensor, ClipError> {
            Ok(t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)
        };
        Ok(ClipVisionOutput {
            last_hidden_state: host(out.last_hidden_state)?,
            penultimate_hidden_states: host(out.penultimate_hidden_states)?,
            image_embeds: host(out.image_embeds)?,
        })
    }

    /// Runs the tower on normalised pixels `[B, 3, image_size, image_size]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<ClipVisionOutput, ClipError> {
        let _enter = self.span.enter();
        let (batch, channels, h, w) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let side = self.cfg.patches_per_side();
        if channels != 3 || h != self.cfg.image_size || w != self.cfg.image_size {
            return Err(ClipError::InvalidInput(format!(
                "clip vision takes [B, 3, {s}, {s}] pixels, got {:?}",
                pixel_values.dims(),
                s = self.cfg.image_size
            )));
        }
        let dtype = compute_dtype(self.device(), self.patch_embedding.dtype());
        // [B, 3, side, p, side, p] -> [B, side, side, 3, p, p]: each patch unfolded in the
        // kernel's (channel, row, column) order.
        let patches = pixel_values
            .to_dtype(dtype)?
            .reshape((batch, 3, side, p, side, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch, side * side, 3 * p * p))?;
        let kernel = operand(&self.patch_embedding, &patches)?
            .t()?
            .contiguous()?;
        let embeds = patches.broadcast_matmul(&kernel)?;
        let class = operand(&self.class_embedding, &embeds)?
            .reshape((1, 1, self.cfg.hidden_size))?
            .repeat((batch, 1, 1))?;
        let xs = Tensor::cat(&[&class, &embeds], 1)?;
        let xs = xs.broadcast_add(&operand(&self.position_embedding, &xs)?)?;
        let mut xs = self.pre_layrnorm.forward(&xs)?;
        let penultimate_index = self.layers.len() - 2;
        let mut penultimate_hidden_states = None;
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, None)?;
            if i == penultimate_index {
                penultimate_hidden_states = Some(xs.clone());
            }
        }
        let penultimate_hidden_states =
            penultimate_hidden_states.expect("new() refuses towers of fewer than two layers");
        let pooled = self
            .post_layernorm
            .forward(&xs.narrow(1, 0, 1)?.squeeze(1)?)?;
        let image_embeds = self.visual_projection.forward(&pooled)?;
        Ok(ClipVisionOutput {
            last_hidden_state: xs,
            penultimate_hidden_states,
            image_embeds,
        })
    }
}

/// ComfyUI's `clip_preprocess`: `[B, H, W, C]` in 0..1 to normalised `[B, 3, size, size]` f32.
/// Unless the image is already `size` square it is resized with torch's antialiased bicubic:
/// with `crop`, the shortest side to `size` (Python's rounding for the other) and the centre cut
/// out; without, squashed to the square. Pixels are then rounded to 8-bit levels and normalised
/// with CLIP's mean and standard deviation.
pub fn preprocess(image: &Tensor, size: usize, crop: bool) -> Result<Tensor, ClipError> {
    let (_, height, width, channels) = image.dims4()?;
    if channels < 3 || height == 0 || width == 0 {
        return Err(ClipError::InvalidInput(format!(
            "clip vision needs an RGB image, got {:?}",
            image.dims()
        )));
    }
    let mut pixels = image
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .narrow(3, 0, 3)?
        .permute((0, 3, 1, 2))?
        .contiguous()?;
    if height != size || width != size {
        let (new_h, new_w) = if crop {
            let scale = size as f64 / height.min(width) as f64;
            (
                (scale * height as f64).round_ties_even() as usize,
                (scale * width as f64).round_ties_even() as usize,
            )
        } else {
            (size, size)
        };
        pixels = common_upscale(
            &pixels,
            new_w,
            new_h,
            UpscaleMethod::BicubicAntialias,
            Crop::Disabled,
        )?;
        let top = new_h.saturating_sub(size) / 2;
        let left = new_w.saturating_sub(size) / 2;
        pixels = pixels
            .narrow(2, top, size.min(new_h))?
            .narrow(3, left, size.min(new_w))?;
    }
    // torch.round takes halves to the even neighbour; candle's `round` takes them away from 0.
    let shape = pixels.shape().clone();
    let levels: Vec<f32> = pixels
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| (255.0 * v).clamp(0.0, 255.0).round_ties_even() / 255.0)
        .collect();
    let levels = Tensor::from_vec(levels, shape, &Device::Cpu)?;
    let mean = Tensor::new(&MEAN, &Device::Cpu)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&STD, &Device::Cpu)?.reshape((1, 3, 1, 1))?;
    Ok(levels.broadcast_sub(&mean)?.broadcast_div(&std)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::SynthBackend;

    fn tiny() -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 3,
            num_attention_heads: 16,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
            patch_size: 4,
            image_size: 12,
            projection_dim: 8,
        }
    }

    #[test]
    fn shapes_and_layers() -> Result<(), ClipError> {
        let vb = VarBuilder::from_backend(Box::new(SynthBackend), DType::F32, Device::Cpu);
        let model = ClipVisionModel::new(vb, &tiny())?;
        let image = Tensor::rand(0f32, 1f32, (2, 20, 13, 4), &Device::Cpu)?;
        let out = model.encode_image(&image, true)?;
        assert_eq!(out.last_hidden_state.dims(), &[2, 10, 32]);
        assert_eq!(out.penultimate_hidden_states.dims(), &[2, 10, 32]);
        assert_eq!(out.image_embeds.dims(), &[2, 8]);
        let squashed = model.encode_image(&image, false)?;
        assert_eq!(squashed.image_embeds.dims(), &[2, 8]);
        Ok(())
    }

    #[test]
    fn preprocess_keeps_a_square_image_of_the_right_size() -> Result<(), ClipError> {
        let image = Tensor::full(0.5f32, (1, 12, 12, 3), &Device::Cpu)?;
        // 127.5 levels: an even 128.
        let pixels = preprocess(&image, 12, true)?;
        let red = pixels.get(0)?.get(0)?.get(0)?.get(0)?.to_scalar::<f32>()?;
        let expected = (128.0 / 255.0 - MEAN[0]) / STD[0];
        assert!((red - expected).abs() < 1e-6);
        // A constant image stays constant through the antialiased resize.
        let wide = Tensor::full(0.25f32, (1, 7, 30, 3), &Device::Cpu)?;
        let pixels = preprocess(&wide, 12, true)?;
        assert_eq!(pixels.dims(), &[1, 3, 12, 12]);
        let red = pixels.get(0)?.get(0)?;
        let spread = (red.max_all()? - red.min_all()?)?.to_scalar::<f32>()?;
        assert!(spread < 1e-6, "{spread}");
        Ok(())
    }
}
