//! Request → API-format graph. The graph uses only ordinary nodes, so what runs is exactly what a
//! user would get by building it in the editor; node ids are numbered in the order below, so the
//! same request always compiles to the same graph.

use serde_json::{json, Map, Value as Json};

use crate::engine::load::detect::{ModelFamily, Prediction};
use crate::generate::models::{self, family_name};
use crate::generate::request::{
    ControlNetEntry, ControlType, GenerateRequest, LoraRef, RequestError,
};
use crate::generate::schedulers;
use crate::paths::DataDirs;

/// Defaults a request may leave out.
pub const DEFAULT_STEPS: u32 = 20;
pub const DEFAULT_GUIDANCE: f64 = 7.5;
pub const DEFAULT_REFINER_SWITCH: f64 = 0.8;
/// img2img without a mask keeps some of the image unless told otherwise.
pub const DEFAULT_IMG2IMG_DENOISE: f64 = 0.75;
pub const DEFAULT_FILENAME_PREFIX: &str = "weft";
/// VAEEncodeForInpaint's mask growth, ComfyUI's default.
const INPAINT_GROW_MASK: u32 = 6;
/// ComfyUI's refiner aesthetic scores (its SDXL refiner example).
const REFINER_ASCORE_POSITIVE: f64 = 6.0;
const REFINER_ASCORE_NEGATIVE: f64 = 2.5;

/// A compiled request: the graph and the values that were decided for the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// ComfyUI API format.
    pub prompt: Json,
    /// What the defaults became, for the response.
    pub resolved: Json,
}

/// Builds API-format graphs with sequential ids.
struct Graph {
    nodes: Map<String, Json>,
    /// Input images already loaded (name, node id): each file is loaded once.
    images: Vec<(String, String)>,
    /// ControlNet files already loaded (name, node id).
    control_loaders: Vec<(String, String)>,
}

type Link = Json;

impl Graph {
    fn add(&mut self, class_type: &str, title: &str, inputs: Json) -> String {
        let id = (self.nodes.len() + 1).to_string();
        self.nodes.insert(
            id.clone(),
            json!({"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}),
        );
        id
    }

    fn load_image(&mut self, name: &str) -> Link {
        if let Some((_, id)) = self.images.iter().find(|(n, _)| n == name) {
            return out(id, 0);
        }
        let id = self.add("LoadImage", &format!("Load {name}"), json!({"image": name}));
        self.images.push((name.to_owned(), id.clone()));
        out(&id, 0)
    }

    fn load_controlnet(&mut self, name: &str, kind: ControlType) -> Link {
        if let Some((_, id)) = self.control_loaders.iter().find(|(n, _)| n == name) {
            return out(id, 0);
        }
        let id = self.add(
            "ControlNetLoader",
            &format!("ControlNet {}", kind.name()),
            json!({"control_net_name": name}),
        );
        self.control_loaders.push((name.to_owned(), id.clone()));
        out(&id, 0)
    }
}

fn out(id: &str, slot: usize) -> Link {
    json!([id, slot])
}

fn default_side(family: ModelFamily, prediction: Prediction) -> u32 {
    match (family, prediction) {
        (ModelFamily::SdxlBase | ModelFamily::SdxlRefiner, _) => 1024,
        (ModelFamily::Sd2, Prediction::V) => 768,
        _ => 512,
    }
}

/// The files a request names, found and checked.
struct Models {
    base: String,
    family: ModelFamily,
    prediction: Prediction,
    refiner: Option<String>,
    vae: Option<String>,
}

fn resolve_models(req: &GenerateRequest, dirs: &DataDirs) -> Result<Models, RequestError> {
    let base = match &req.model.base {
        Some(name) => models::resolve_model(dirs, "checkpoints", name, "model.base")?,
        None => models::only_checkpoint(dirs)?,
    };
    let detected = models::checkpoint_family(dirs, &base, "model.base")?;
    let family = detected.family;
    if family == ModelFamily::SdxlRefiner {
        return Err(RequestError::new(
            "model.base",
            format!(
                "'{base}' is an SDXL refiner; give it as model.refiner with an SDXL base model"
            ),
        ));
    }
    let refiner = match &req.model.refiner {
        None => None,
        Some(name) => {
            let name = models::resolve_model(dirs, "checkpoints", name, "model.refiner")?;
            let found = models::checkpoint_family(dirs, &name, "model.refiner")?.family;
            if found != ModelFamily::SdxlRefiner {
                return Err(RequestError::new(
                    "model.refiner",
                    format!(
                        "'{name}' is an {} model, not an SDXL refiner",
                        family_name(found)
                    ),
                ));
            }
            if family != ModelFamily::SdxlBase {
                return Err(RequestError::new(
                    "model.refiner",
                    format!(
                        "an SDXL refiner needs an SDXL base model; '{base}' is {}",
                        family_name(family)
                    ),
                ));
            }
            Some(name)
        }
    };
    let vae = req
        .model
        .vae
        .as_deref()
        .map(|name| models::resolve_model(dirs, "vae", name, "model.vae"))
        .transpose()?;
    Ok(Models {
        base,
        family,
        prediction: detected.prediction,
        refiner,
        vae,
    })
}

/// An input image: its name as LoadImage takes it, and its size.
type InputImage = (String, (u32, u32));

/// Every value the graph uses, defaults applied.
struct Settings {
    sampler: String,
    scheduler: String,
    steps: u32,
    cfg: f64,
    seed: u64,
    width: u32,
    height: u32,
    batch_size: u32,
    denoise: f64,
    refiner_switch: f64,
    init: Option<InputImage>,
    mask: Option<InputImage>,
}

fn resolve_settings(
    req: &GenerateRequest,
    dirs: &DataDirs,
    models: &Models,
    seed: u64,
) -> Result<Settings, RequestError> {
    let (sampler, implied) =
        schedulers::sampler(req.scheduler.kind.as_deref().unwrap_or(schedulers::DEFAULT))
            .map_err(|m| RequestError::new("scheduler.type", m))?;
    let scheduler = match req.scheduler.schedule.as_deref() {
        None => implied,
        Some(s) => schedulers::check_scheduler(s)
            .map_err(|m| RequestError::new("scheduler.scheduler", m))?,
    };
    let init = req
        .init_image
        .as_deref()
        .map(|name| models::input_image(dirs, name, "init_image"))
        .transpose()?;
    let mask = req
        .mask_image
        .as_deref()
        .map(|name| models::input_image(dirs, name, "mask_image"))
        .transpose()?;
    if mask.is_some() && init.is_none() {
        return Err(RequestError::new(
            "mask_image",
            "inpainting needs init_image: the mask says which part of it to repaint",
        ));
    }
    let batch_size = req.hyper.batch_size.unwrap_or(1);
    if init.is_some() && batch_size > 1 {
        return Err(RequestError::new(
            "hyperparameters.batch_size",
            format!("init_image is a batch of 1 image; a batch_size of {batch_size} is larger than the image batch"),
        ));
    }
    let (width, height) = match (&init, req.hyper.width, req.hyper.height) {
        (_, Some(w), Some(h)) => (w, h),
        // From the init image: a side not given keeps the image's aspect ratio, and sizes are
        // rounded down to multiples of 8 (what the VAE encodes), so `resolved` is the output's.
        (Some((_, (iw, ih))), w, h) => {
            let (iw, ih) = (*iw as f64, *ih as f64);
            let (w, h) = match (w, h) {
                (Some(w), None) => (w as f64, w as f64 * ih / iw),
                (None, Some(h)) => (h as f64 * iw / ih, h as f64),
                _ => (iw, ih),
            };
            let multiple_of_8 = |x: f64| ((x.round() as u32) / 8 * 8).max(8);
            (multiple_of_8(w), multiple_of_8(h))
        }
        (None, w, h) => {
            let side = default_side(models.family, models.prediction);
            (w.unwrap_or(side), h.unwrap_or(side))
        }
    };
    Ok(Settings {
        sampler,
        scheduler,
        steps: req.scheduler.steps.unwrap_or(DEFAULT_STEPS),
        cfg: req.hyper.guidance_scale.unwrap_or(DEFAULT_GUIDANCE),
        seed: req.hyper.seed.unwrap_or(seed),
        width,
        height,
        batch_size,
        denoise: req.hyper.denoise.unwrap_or(match (&init, &mask) {
            (Some(_), None) => DEFAULT_IMG2IMG_DENOISE,
            _ => 1.0,
        }),
        refiner_switch: req.hyper.refiner_switch.unwrap_or(DEFAULT_REFINER_SWITCH),
        init,
        mask,
    })
}

/// Compiles `req`. `seed` is used when the request has none.
pub fn compile(
    req: &GenerateRequest,
    dirs: &DataDirs,
    seed: u64,
) -> Result<Compiled, RequestError> {
    let models = resolve_models(req, dirs)?;
    let set = resolve_settings(req, dirs, &models, seed)?;
    let mut g = Graph {
        nodes: Map::new(),
        images: Vec::new(),
        control_loaders: Vec::new(),
    };

    // Model, LoRAs, text.
    let ckpt = g.add(
        "CheckpointLoaderSimple",
        "Base model",
        json!({"ckpt_name": models.base}),
    );
    let (mut model, mut clip, mut vae) = (out(&ckpt, 0), out(&ckpt, 1), out(&ckpt, 2));
    for lora in &req.loras {
        let name = match &lora.lora {
            LoraRef::Name(name) => models::resolve_model(dirs, "loras", name, &lora.field)?,
            LoraRef::Path(path) => {
                models::resolve_model(dirs, "loras", path, &format!("{}.path", lora.field))?
            }
        };
        let m = req.global_lora_multiplier;
        let id = g.add(
            "LoraLoader",
            &format!("LoRA {}", strip_ext(&name)),
            json!({
                "model": model, "clip": clip, "lora_name": name,
                "strength_model": lora.weight * m, "strength_clip": lora.clip_weight * m,
            }),
        );
        (model, clip) = (out(&id, 0), out(&id, 1));
    }
    if let Some(skip) = req.hyper.clip_skip.filter(|&s| s > 1) {
        let id = g.add(
            "CLIPSetLastLayer",
            "CLIP skip",
            json!({"clip": clip, "stop_at_clip_layer": -(skip as i64)}),
        );
        clip = out(&id, 0);
    }
    let pos = g.add(
        "CLIPTextEncode",
        "Prompt",
        json!({"text": req.prompt, "clip": clip}),
    );
    let neg = g.add(
        "CLIPTextEncode",
        "Negative prompt",
        json!({"text": req.negative_prompt, "clip": clip}),
    );
    if let Some(name) = &models.vae {
        let id = g.add("VAELoader", "VAE", json!({"vae_name": name}));
        vae = out(&id, 0);
    }

    let (positive, negative) = add_controlnets(
        &mut g,
        req,
        dirs,
        &models,
        &set,
        (out(&pos, 0), out(&neg, 0)),
    )?;
    let latent = add_latent(&mut g, &set, &vae);
    let samples = match &models.refiner {
        None => {
            let id = g.add(
                "KSampler",
                "Sampler",
                json!({
                    "model": model, "seed": set.seed, "steps": set.steps, "cfg": set.cfg,
                    "sampler_name": set.sampler, "scheduler": set.scheduler,
                    "positive": positive, "negative": negative, "latent_image": latent,
                    "denoise": set.denoise,
                }),
            );
            out(&id, 0)
        }
        Some(refiner) => add_refiner_split(
            &mut g,
            req,
            &set,
            refiner,
            (model, positive, negative, latent),
        ),
    };
    let decoded = g.add(
        "VAEDecode",
        "Decode",
        json!({"samples": samples, "vae": vae}),
    );
    g.add(
        "SaveImage",
        "Save",
        json!({
            "images": out(&decoded, 0),
            "filename_prefix": req.filename_prefix.as_deref().unwrap_or(DEFAULT_FILENAME_PREFIX),
        }),
    );

    Ok(Compiled {
        prompt: Json::Object(g.nodes),
        resolved: json!({
            "model": {"base": models.base, "family": family_name(models.family), "refiner": models.refiner, "vae": models.vae},
            "sampler_name": set.sampler, "scheduler": set.scheduler, "steps": set.steps,
            "cfg": set.cfg, "seed": set.seed, "width": set.width, "height": set.height,
            "batch_size": set.batch_size, "denoise": set.denoise,
            "refiner_switch": models.refiner.as_ref().map(|_| set.refiner_switch),
        }),
    })
}

/// The ControlNets, chained on the base model's conditioning in request order; returns the
/// controlled (positive, negative).
fn add_controlnets(
    g: &mut Graph,
    req: &GenerateRequest,
    dirs: &DataDirs,
    models: &Models,
    set: &Settings,
    (mut positive, mut negative): (Link, Link),
) -> Result<(Link, Link), RequestError> {
    for entry in &req.controlnets {
        let choice = match &entry.model {
            Some(model) => models::resolve_controlnet(
                dirs,
                model,
                models.family,
                &format!("{}.model", entry.field),
            )?,
            None => models::find_controlnet(dirs, entry.kind, models.family, &entry.field)?,
        };
        let (image_name, preprocess) = match (&entry.condition_image, &set.init) {
            (Some(image), _) => (
                models::input_image(dirs, image, &format!("{}.condition_image", entry.field))?.0,
                entry.preprocess.unwrap_or(false),
            ),
            (None, Some((init_name, _))) => (init_name.clone(), entry.preprocess.unwrap_or(true)),
            (None, None) => {
                return Err(RequestError::new(
                    format!("{}.condition_image", entry.field),
                    "required: there is no init_image to use as the condition image",
                ))
            }
        };
        let mut hint = g.load_image(&image_name);
        if preprocess {
            hint = preprocessor(g, dirs, entry, hint, set.width.min(set.height))?;
        }
        let mut control_net = g.load_controlnet(&choice.name, entry.kind);
        if choice.union {
            let id = g.add(
                "SetUnionControlNetType",
                &format!("Union type {}", entry.kind.name()),
                json!({"control_net": control_net, "type": entry.kind.union_type()}),
            );
            control_net = out(&id, 0);
        }
        let id = g.add(
            "ControlNetApplyAdvanced",
            &format!("Apply ControlNet {}", entry.kind.name()),
            json!({
                "positive": positive, "negative": negative, "control_net": control_net,
                "image": hint, "strength": entry.scale,
                "start_percent": entry.start, "end_percent": entry.end,
            }),
        );
        (positive, negative) = (out(&id, 0), out(&id, 1));
    }
    Ok((positive, negative))
}

/// The starting latent: empty (txt2img), the encoded init image (img2img), or the encoded init
/// image with the mask (inpainting: VAEEncodeForInpaint at full denoise, SetLatentNoiseMask below).
fn add_latent(g: &mut Graph, set: &Settings, vae: &Link) -> Link {
    let Some((name, size)) = &set.init else {
        let id = g.add(
            "EmptyLatentImage",
            "Empty latent",
            json!({"width": set.width, "height": set.height, "batch_size": set.batch_size}),
        );
        return out(&id, 0);
    };
    let mut pixels = g.load_image(name);
    if (set.width, set.height) != *size {
        let id = g.add(
            "ImageScale",
            "Resize init image",
            json!({"image": pixels, "upscale_method": "lanczos", "width": set.width, "height": set.height, "crop": "center"}),
        );
        pixels = out(&id, 0);
    }
    let encode = |g: &mut Graph, pixels: &Link| {
        let id = g.add(
            "VAEEncode",
            "Encode init image",
            json!({"pixels": pixels, "vae": vae}),
        );
        out(&id, 0)
    };
    let Some((mask_name, _)) = &set.mask else {
        return encode(g, &pixels);
    };
    let mask = g.add(
        "LoadImageMask",
        &format!("Load mask {mask_name}"),
        json!({"image": mask_name, "channel": "red"}),
    );
    if set.denoise >= 1.0 {
        let id = g.add(
            "VAEEncodeForInpaint",
            "Encode for inpainting",
            json!({"pixels": pixels, "vae": vae, "mask": out(&mask, 0), "grow_mask_by": INPAINT_GROW_MASK}),
        );
        return out(&id, 0);
    }
    let encoded = encode(g, &pixels);
    let id = g.add(
        "SetLatentNoiseMask",
        "Inpaint mask",
        json!({"samples": encoded, "mask": out(&mask, 0)}),
    );
    out(&id, 0)
}

/// ComfyUI's base + refiner split: the base runs steps `start..switch` and hands its leftover
/// noise to the refiner, which finishes. When the switch falls at or before the start (an img2img
/// that starts late, or `refiner_switch` 0) the base would have no steps and hand over a latent
/// with no noise in it; the refiner then adds the noise and runs alone.
fn add_refiner_split(
    g: &mut Graph,
    req: &GenerateRequest,
    set: &Settings,
    refiner: &str,
    (model, positive, negative, latent): (Link, Link, Link, Link),
) -> Link {
    // KSamplerAdvanced has no denoise: img2img starts part-way through the schedule.
    let start = ((set.steps as f64) * (1.0 - set.denoise)).round() as u32;
    let switch = (((set.steps as f64) * set.refiner_switch).round() as u32).clamp(start, set.steps);
    let r = g.add(
        "CheckpointLoaderSimple",
        "Refiner model",
        json!({"ckpt_name": refiner}),
    );
    let mut refiner_text = |title: &str, text: &str, ascore: f64| {
        let id = g.add(
            "CLIPTextEncodeSDXLRefiner",
            title,
            json!({"ascore": ascore, "width": set.width, "height": set.height, "text": text, "clip": out(&r, 1)}),
        );
        out(&id, 0)
    };
    let rpos = refiner_text("Refiner prompt", &req.prompt, REFINER_ASCORE_POSITIVE);
    let rneg = refiner_text(
        "Refiner negative prompt",
        &req.negative_prompt,
        REFINER_ASCORE_NEGATIVE,
    );
    if switch <= start {
        let id = g.add(
            "KSamplerAdvanced",
            "Refiner sampler",
            json!({
                "model": out(&r, 0), "add_noise": "enable", "noise_seed": set.seed, "steps": set.steps,
                "cfg": set.cfg, "sampler_name": set.sampler, "scheduler": set.scheduler,
                "positive": rpos, "negative": rneg, "latent_image": latent,
                "start_at_step": start, "end_at_step": 10000,
                "return_with_leftover_noise": "disable",
            }),
        );
        return out(&id, 0);
    }
    let b = g.add(
        "KSamplerAdvanced",
        "Base sampler",
        json!({
            "model": model, "add_noise": "enable", "noise_seed": set.seed, "steps": set.steps,
            "cfg": set.cfg, "sampler_name": set.sampler, "scheduler": set.scheduler,
            "positive": positive, "negative": negative, "latent_image": latent,
            "start_at_step": start, "end_at_step": switch,
            "return_with_leftover_noise": "enable",
        }),
    );
    let id = g.add(
        "KSamplerAdvanced",
        "Refiner sampler",
        json!({
            "model": out(&r, 0), "add_noise": "disable", "noise_seed": set.seed, "steps": set.steps,
            "cfg": set.cfg, "sampler_name": set.sampler, "scheduler": set.scheduler,
            "positive": rpos, "negative": rneg, "latent_image": out(&b, 0),
            "start_at_step": switch, "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        }),
    );
    out(&id, 0)
}

fn strip_ext(name: &str) -> &str {
    let file = name.rsplit('/').next().unwrap_or(name);
    file.rsplit_once('.').map_or(file, |(stem, _)| stem)
}

/// Inserts the preprocessor for `entry`'s type. The types with a network need its annotator file
/// in `models/annotators/`: a missing one is refused here, naming the file and where it is
/// published, rather than failing on the node.
fn preprocessor(
    g: &mut Graph,
    dirs: &DataDirs,
    entry: &ControlNetEntry,
    image: Link,
    short_side: u32,
) -> Result<Link, RequestError> {
    use crate::nodes::annotators::{
        depth, hed, lineart, midas, mlsd, normalbae, openpose, uniformer, AnnotatorFile,
    };
    // The aux pack's preprocessors work at a resolution (short side); the apply node resizes
    // their output to the latent anyway, so work at the output's short side.
    let resolution = short_side.clamp(64, 16384);
    let field = format!("{}.preprocess_condition", entry.field);
    let need = |file: AnnotatorFile| {
        dirs.annotator_file(file.name)
            .map(|_| ())
            .ok_or_else(|| RequestError::new(&field, file.missing()))
    };
    let id = match entry.kind {
        ControlType::Canny => g.add(
            "Canny",
            "Canny edges",
            json!({"image": image, "low_threshold": 0.4, "high_threshold": 0.8}),
        ),
        ControlType::Scribble => {
            need(hed::HED_FILE)?;
            g.add(
                "FakeScribblePreprocessor",
                "Scribble lines",
                json!({"image": image, "safe": "enable", "resolution": resolution}),
            )
        }
        ControlType::Lineart => {
            need(lineart::SK_MODEL)?;
            g.add(
                "LineArtPreprocessor",
                "Lineart",
                json!({"image": image, "coarse": "disable", "resolution": resolution}),
            )
        }
        // Depth Anything V2 small where its file is, else MiDaS (issue 19's rule).
        ControlType::Depth => match (
            need(depth::DEPTH_ANYTHING_V2_SMALL),
            midas::midas_path(dirs)
                .map(|_| ())
                .map_err(|_| RequestError::new(&field, midas::midas_missing())),
        ) {
            (Ok(()), _) => g.add(
                "DepthAnythingV2Preprocessor",
                "Depth map",
                json!({"image": image, "ckpt_name": depth::DEPTH_ANYTHING_V2_SMALL.name, "resolution": resolution}),
            ),
            (Err(_), Ok(())) => g.add(
                "MiDaS-DepthMapPreprocessor",
                "Depth map",
                json!({"image": image, "a": std::f64::consts::TAU, "bg_threshold": 0.1, "resolution": resolution}),
            ),
            (Err(_), Err(_)) => {
                return Err(RequestError::new(
                    &field,
                    format!(
                        "{}. Or, as the fallback: {}",
                        depth::DEPTH_ANYTHING_V2_SMALL.missing(),
                        midas::midas_missing()
                    ),
                ))
            }
        },
        ControlType::Normal => {
            need(normalbae::SCANNET)?;
            g.add(
                "BAE-NormalMapPreprocessor",
                "Normal map",
                json!({"image": image, "resolution": resolution}),
            )
        }
        ControlType::Pose => {
            // The body only: hands and faces would need two more annotator files.
            need(openpose::BODY)?;
            g.add(
                "OpenposePreprocessor",
                "Pose",
                json!({"image": image, "detect_hand": "disable", "detect_body": "enable",
                       "detect_face": "disable", "resolution": resolution}),
            )
        }
        ControlType::Mlsd => {
            need(mlsd::MLSD_FILE)?;
            g.add(
                "M-LSDPreprocessor",
                "Line segments",
                json!({"image": image, "score_threshold": 0.1, "dist_threshold": 0.1, "resolution": resolution}),
            )
        }
        ControlType::Segmentation => {
            need(uniformer::UPERNET_GLOBAL_SMALL)?;
            g.add(
                "UniFormer-SemSegPreprocessor",
                "Segmentation",
                json!({"image": image, "resolution": resolution}),
            )
        }
    };
    Ok(out(&id, 0))
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
