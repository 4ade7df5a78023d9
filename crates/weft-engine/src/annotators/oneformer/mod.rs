//! OneFormer semantic segmentation as today's comfyui_controlnet_aux runs it
//! (`OneformerSegmentor`, e8b689a: transformers' `OneFormerProcessor` +
//! `OneFormerForUniversalSegmentation` from the Hugging Face folders
//! `shi-labs/oneformer_ade20k_swin_large` and `shi-labs/oneformer_coco_swin_large`):
//! `resize_image_with_pad`, the processor (torchvision's antialiased uint8 resize of the shortest
//! edge, `(x - mean) / std`; the task text "the task is semantic" as CLIP token ids), the net
//! ([`swin`] backbone, [`pixel_decoder`], [`decoder`]), `post_process_semantic_segmentation`
//! (class probabilities without the null class against the mask sigmoids, resized antialiased
//! bilinearly to the padded size, argmax), the pack's golden-angle palette, `remove_pad`.
//!
//! The weights are the folder's `model.safetensors` (or `pytorch_model.bin`) in its own names;
//! sizes come from their shapes (Swin widths, depths, heads and window from the relative
//! position tables, the heads of the decoders from `sampling_offsets`, queries, classes and the
//! task length from their tables). `config.json` gives what they do not say (`pre_norm`, which
//! must be false as published, `use_task_norm`, `layer_norm_eps`), `preprocessor_config.json`
//! the processor (`size`, `resample`, `image_mean`, `image_std`, `rescale_factor`); absent files
//! mean transformers' defaults.

pub mod decoder;
pub mod detectron2;
pub mod pixel_decoder;
pub mod swin;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::Value as Json;

use self::decoder::{semantic_scores, Decoder, Prediction};
use self::pixel_decoder::PixelDecoder;
use self::swin::{Swin, SwinConfig, Tensor4};
use super::midas_hf::{filter_and_norm, sibling_json, usize_field};
use super::Weights;
use crate::load::file::StateDict;
use crate::load::renaming::Renaming;
use crate::load::{LoadError, LoadErrorKind};
use crate::preprocess::aux::{detect_resolution, resize_image_with_pad};
use crate::preprocess::cv::Interpolation;
use crate::preprocess::resample::{axis_weights, resize_u8_antialias, Filter};
use crate::preprocess::{run_aux, ImageU8, PreprocessError, Result};
use crate::tokenizer::{ClipBpe, END_OF_TEXT, START_OF_TEXT};

const OP: &str = "OneFormer";
const PROBE: &str =
    "model.pixel_level_module.encoder.embeddings.patch_embeddings.projection.weight";

/// The net's tensors by name.
pub(crate) type Net<'a> = Weights<'a>;

/// What `OneFormerImageProcessor` does to the padded uint8 image.
#[derive(Debug, Clone, PartialEq)]
pub struct Processor {
    /// The shortest edge's target and the cap on the longest (`size`), or an exact size.
    pub size: Size,
    /// torchvision's antialiased uint8 resize with this filter (`resample`).
    pub filter: Filter,
    /// `image_mean / rescale_factor` per channel, as torch fuses them.
    pub mean: [f32; 3],
    /// `image_std / rescale_factor`.
    pub std: [f32; 3],
}

/// The processor's `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `shortest_edge` (or an int `size`), and `longest_edge` when given.
    Edges {
        /// The shortest edge's length after the resize.
        shortest: usize,
        /// The cap on the longest edge.
        longest: Option<usize>,
    },
    /// `height` and `width`.
    Exact {
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
}

impl Processor {
    /// From `preprocessor_config.json` (`None`: the class defaults, 800 / 1333, bilinear,
    /// ImageNet's mean and std).
    pub fn from_json(json: Option<&Json>) -> std::result::Result<Self, String> {
        let get = |name: &str| json.and_then(|j| j.get(name));
        let flag = |name: &str| get(name).and_then(Json::as_bool).unwrap_or(true);
        if !flag("do_resize") || !flag("do_rescale") || !flag("do_normalize") {
            return Err("a processor that does not resize, rescale and normalise".into());
        }
        // transformers 5 reads `size` alone: an older file's `max_size` beside an int `size` no
        // longer caps the longest edge (`get_size_dict` is not given it).
        let size = match get("size") {
            None => Size::Edges {
                shortest: 800,
                longest: Some(1333),
            },
            Some(s) => match (
                usize_field(s, "shortest_edge"),
                usize_field(s, "height"),
                usize_field(s, "width"),
                s.as_u64(),
            ) {
                (Some(shortest), ..) => Size::Edges {
                    shortest,
                    longest: usize_field(s, "longest_edge"),
                },
                (None, Some(height), Some(width), _) => Size::Exact { height, width },
                (.., Some(n)) => Size::Edges {
                    shortest: n as usize,
                    longest: None,
                },
                _ => return Err(format!("processor size {s}")),
            },
        };
        if matches!(
            size,
            Size::Edges { shortest: 0, .. }
                | Size::Exact { height: 0, .. }
                | Size::Exact { width: 0, .. }
        ) {
            return Err("processor size 0".into());
        }
        // bilinear; IMAGENET_DEFAULT_MEAN / _STD
        let (filter, mean, std) =
            filter_and_norm(json, 2, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])?;
        Ok(Processor {
            size,
            filter,
            mean,
            std,
        })
    }

    /// The resized size of an `h` x `w` image (`get_size_with_aspect_ratio`).
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (mut size, max) = match self.size {
            Size::Exact { height, width } => return (height, width),
            Size::Edges { shortest, longest } => (shortest, longest),
        };
        let (hf, wf) = (h as f64, w as f64);
        let mut raw = None;
        if let Some(max) = max {
            let (lo, hi) = (hf.min(wf), hf.max(wf));
            if hi / lo * size as f64 > max as f64 {
                let r = max as f64 * lo / hi;
                raw = Some(r);
                // Python's round: half to even
                size = r.round_ties_even() as usize;
            }
        }
        if (h <= w && h == size) || (w <= h && w == size) {
            (h, w)
        } else if w < h {
            let long = raw.map_or(size as f64 * hf / wf, |r| r * hf / wf);
            (long as usize, size)
        } else {
            let long = raw.map_or(size as f64 * wf / hf, |r| r * wf / hf);
            (size, long as usize)
        }
    }
}

/// What `config.json` adds to the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Options {
    layer_norm_eps: f64,
    use_task_norm: bool,
}

impl Options {
    fn from_json(json: Option<&Json>) -> std::result::Result<Self, String> {
        let get = |name: &str| json.and_then(|j| j.get(name));
        if get("pre_norm").and_then(Json::as_bool).unwrap_or(false) {
            return Err("pre_norm decoders are not supported".into());
        }
        if get("enforce_input_proj")
            .and_then(Json::as_bool)
            .unwrap_or(false)
        {
            return Err("enforce_input_proj is not supported".into());
        }
        Ok(Options {
            layer_norm_eps: get("layer_norm_eps").and_then(Json::as_f64).unwrap_or(1e-5),
            use_task_norm: get("use_task_norm").and_then(Json::as_bool).unwrap_or(true),
        })
    }
}

/// The task text's ids as the processor gives them: `<|startoftext|>`, "the task is semantic",
/// `<|endoftext|>`, then zeros (the padding times the attention mask) up to `len` (truncated to
/// `len` with the end token kept, as the tokenizer truncates).
pub fn task_ids(len: usize) -> Vec<f32> {
    let mut ids = vec![START_OF_TEXT];
    ids.extend(ClipBpe::new().encode("the task is semantic"));
    ids.truncate(len.saturating_sub(1));
    ids.push(END_OF_TEXT);
    ids.truncate(len);
    let mut out: Vec<f32> = ids.into_iter().map(|i| i as f32).collect();
    out.resize(len, 0.0);
    out
}

/// OneFormer with its processor, on one device in f32.
#[derive(Debug)]
pub struct OneFormer {
    swin: Swin,
    pixel: PixelDecoder,
    decoder: Decoder,
    processor: Processor,
    task: Tensor,
    device: Device,
}

/// Loads transformers' `OneFormerForUniversalSegmentation` weights, its JSON files beside them,
/// or a detectron2 checkpoint ([`detectron2`]) with the processor its conversion wrote.
pub fn load(sd: &Arc<StateDict>, device: &Device) -> std::result::Result<OneFormer, LoadError> {
    let bad = |e: String| LoadError::new(sd.path(), LoadErrorKind::BadConfig(e));
    let (names, shapes, options, processor) = if detectron2::is_detectron2(sd.shapes()) {
        let (names, shapes) = detectron2::names(sd.shapes());
        let classes = sd.shapes()[detectron2::PROBE][0];
        let options = Options::from_json(None).map_err(bad)?;
        (names, shapes, options, detectron2::processor(classes))
    } else if sd.contains(PROBE) {
        let options = Options::from_json(
            sibling_json(sd.path(), "config.json")
                .map_err(bad)?
                .as_ref(),
        )
        .map_err(bad)?;
        let processor = Processor::from_json(
            sibling_json(sd.path(), "preprocessor_config.json")
                .map_err(bad)?
                .as_ref(),
        )
        .map_err(bad)?;
        let names = sd.shapes().keys().map(|k| (k.clone(), k.clone())).collect();
        (names, sd.shapes().clone(), options, processor)
    } else {
        return Err(LoadError::new(
            sd.path(),
            LoadErrorKind::UnknownFamily {
                looked_for: vec![PROBE.to_string(), detectron2::PROBE.to_string()],
            },
        ));
    };
    let cfg = SwinConfig::detect(&shapes).map_err(bad)?;
    Renaming::new(names).build(sd, DType::F32, device, |vb| {
        let net = Weights {
            vb,
            shapes: &shapes,
        };
        OneFormer::new(&net, &cfg, options, processor, device)
    })
}

impl OneFormer {
    fn new(
        net: &Net,
        cfg: &SwinConfig,
        options: Options,
        processor: Processor,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let swin = Swin::new(net, cfg)?;
        let pixel = PixelDecoder::new(net, options.layer_norm_eps)?;
        let decoder = Decoder::new(
            net,
            pixel.heads(),
            options.layer_norm_eps,
            options.use_task_norm,
        )?;
        let len = decoder.task_len()?;
        let task = Tensor::from_vec(task_ids(len), (1, len), device)?;
        Ok(OneFormer {
            swin,
            pixel,
            decoder,
            processor,
            task,
            device: device.clone(),
        })
    }

    /// Where the net runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The processor from `preprocessor_config.json`.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// The backbone's four maps of `pixel_values` `[1, 3, H, W]`.
    pub fn features(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor4> {
        self.swin.forward(pixel_values)
    }

    /// The class and mask logits of `pixel_values` `[1, 3, H, W]` for the semantic task.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Prediction> {
        let pixel = self.pixel.forward(&self.features(pixel_values)?)?;
        self.decoder
            .forward(&self.task, &pixel.multi_scale, &pixel.mask_features)
    }

    /// The processor's input tensor of a uint8 RGB image: resized, `(x - mean) / std`.
    pub fn pixel_values(&self, img: &ImageU8) -> Result<(ImageU8, Tensor)> {
        let p = &self.processor;
        let (h, w) = p.output_size(img.height, img.width);
        let resized = resize_u8_antialias(img, h, w, p.filter);
        let c = resized.channels;
        let mut data = vec![0f32; 3 * h * w];
        for (ch, plane) in data.chunks_exact_mut(h * w).enumerate() {
            for (i, v) in plane.iter_mut().enumerate() {
                let x = f32::from(resized.data[i * c + ch.min(c - 1)]);
                *v = (x - p.mean[ch]) / p.std[ch];
            }
        }
        let t = Tensor::from_vec(data, (1, 3, h, w), &self.device).map_err(cand)?;
        Ok((resized, t))
    }

    /// The class of each pixel of the padded image (row-major), as
    /// `post_process_semantic_segmentation(target_sizes=[padded size])` gives it.
    pub fn segment(&self, img: &ImageU8) -> Result<Vec<usize>> {
        let (_, x) = self.pixel_values(img)?;
        let pred = self.forward(&x).map_err(cand)?;
        let scores = semantic_scores(&pred).map_err(cand)?;
        let scores = resize_antialias(&scores, img.height, img.width).map_err(cand)?;
        let (k, h, w) = scores.dims3().map_err(cand)?;
        let v = scores
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(cand)?;
        Ok((0..h * w)
            .map(|p| {
                // torch's argmax: the first of equal maxima
                let mut best = 0;
                for c in 1..k {
                    if v[c * h * w + p] > v[best * h * w + p] {
                        best = c;
                    }
                }
                best
            })
            .collect())
    }

    /// `OneformerSegmentor.__call__` on one uint8 image: `resize_image_with_pad` (INTER_CUBIC),
    /// [`Self::segment`], the palette on the class map as uint8, `remove_pad`.
    pub fn detect(&self, img: &ImageU8, resolution: u32) -> Result<ImageU8> {
        let padded =
            resize_image_with_pad(OP, img, detect_resolution(resolution), Interpolation::Cubic)?;
        let classes = self.segment(&padded.image)?;
        Ok(padded.remove_pad(&colour(&classes, padded.image.height, padded.image.width)))
    }
}

fn cand(source: candle_core::Error) -> PreprocessError {
    PreprocessError::Candle { op: OP, source }
}

/// torchvision's `resize(antialias=True, BILINEAR)` of a float `[C, H, W]` tensor to
/// `height` x `width`: the same taps per axis as its uint8 kernel, in f32.
pub fn resize_antialias(x: &Tensor, height: usize, width: usize) -> candle_core::Result<Tensor> {
    let (c, h, w) = x.dims3()?;
    let matrix = |input: usize, output: usize| -> candle_core::Result<Tensor> {
        let mut m = vec![0f32; output * input];
        for (o, (lo, weights)) in axis_weights(Filter::Bilinear, input, output)
            .iter()
            .enumerate()
        {
            for (k, wt) in weights.iter().enumerate() {
                m[o * input + lo + k] = *wt as f32;
            }
        }
        Tensor::from_vec(m, (output, input), x.device())
    };
    let mw = matrix(w, width)?.t()?;
    let mh = matrix(h, height)?;
    let rows = x.reshape((c * h, w))?.matmul(&mw)?.reshape((c, h, width))?;
    mh.broadcast_left(c)?.matmul(&rows)
}

/// The pack's `_generate_detectron2_style_palette(200)`: black, then per class the golden angle's
/// hue with saturation 60/80/100 % and value 70/100 % (truncated to uint8 as the pack's array),
/// through OpenCV's `COLOR_HSV2RGB` (180 hues).
pub fn palette() -> Vec<[u8; 3]> {
    (0..200u32)
        .map(|i| {
            if i == 0 {
                return [0, 0, 0];
            }
            let hue = (f64::from(i) * 137.508) % 360.0;
            let saturation = 0.6 + 0.4 * (f64::from(i % 3) / 2.0);
            let value = 0.7 + 0.3 * f64::from(i % 2);
            hsv2rgb(
                (hue / 2.0) as u8,
                (saturation * 255.0) as u8,
                (value * 255.0) as u8,
            )
        })
        .collect()
}

/// OpenCV's `HSV2RGB_b` (hue range 180): in f32, rounded half to even.
fn hsv2rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    let (mut h, s, v) = (
        f32::from(h),
        f32::from(s) * (1.0 / 255.0),
        f32::from(v) * (1.0 / 255.0),
    );
    let (b, g, r) = if s == 0.0 {
        (v, v, v)
    } else {
        const SECTORS: [[usize; 3]; 6] = [
            [1, 3, 0],
            [1, 0, 2],
            [3, 0, 1],
            [0, 2, 1],
            [0, 1, 3],
            [2, 1, 0],
        ];
        h *= 6.0 / 180.0;
        let mut sector = h.floor() as i32;
        h -= sector as f32;
        if !(0..6).contains(&sector) {
            sector = 0;
            h = 0.0;
        }
        let tab = [
            v,
            v * (1.0 - s),
            v * (1.0 - s * h),
            v * (1.0 - s * (1.0 - h)),
        ];
        let idx = SECTORS[sector as usize];
        (tab[idx[0]], tab[idx[1]], tab[idx[2]])
    };
    [r, g, b].map(|c| (c * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
}

/// The pack's colour map: each class as uint8 (numpy's wrap), coloured `palette[id % 200]`.
pub fn colour(classes: &[usize], height: usize, width: usize) -> ImageU8 {
    let colors = palette();
    ImageU8 {
        height,
        width,
        channels: 3,
        data: classes
            .iter()
            .flat_map(|&c| colors[(c % 256) % colors.len()])
            .collect(),
    }
}

/// The node's result: every image of an IMAGE batch `[B, H, W, C]` (0..1) through
/// [`OneFormer::detect`], as `[B, H', W', 3]`.
pub fn semantic_segmentation(net: &OneFormer, image: &Tensor, resolution: u32) -> Result<Tensor> {
    run_aux(OP, image, |img| net.detect(img, resolution))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_reads_its_size_as_transformers_5() {
        // the class defaults: shortest 800, longest 1333 (Python's round on the capped edge)
        let p = Processor::from_json(None).unwrap();
        assert_eq!(p.output_size(100, 500), (267, 1333));
        // an int size with the older max_size: the cap is no longer read
        let json = serde_json::json!({"size": 640, "max_size": 2560});
        let p = Processor::from_json(Some(&json)).unwrap();
        assert_eq!(p.output_size(100, 500), (640, 3200));
        let json = serde_json::json!({"size": {"shortest_edge": 160, "longest_edge": 320}});
        let p = Processor::from_json(Some(&json)).unwrap();
        assert_eq!(p.output_size(333, 500), (160, 240));
        assert_eq!(p.output_size(500, 333), (240, 160));
        assert!(Processor::from_json(Some(&serde_json::json!({"resample": 1}))).is_err());
    }

    #[test]
    fn task_ids_end_and_pad() {
        let ids = task_ids(8);
        assert_eq!(ids[0], START_OF_TEXT as f32);
        assert_eq!(ids.iter().filter(|&&i| i == END_OF_TEXT as f32).count(), 1);
        assert_eq!(
            task_ids(3),
            vec![START_OF_TEXT as f32, ids[1], END_OF_TEXT as f32]
        );
    }
}
