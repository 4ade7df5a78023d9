//! The one-request generation format, parsed by hand from JSON so that every error names the
//! exact field (`lora[1].weight`, `hyperparameters.seed`) and says what was expected; serde's
//! derive errors name neither for untagged string-or-object fields.

use serde_json::{Map, Value as Json};

/// A request field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// The field's path in the request, e.g. `controlnet[0].conditioning_scale`.
    pub field: String,
    pub message: String,
}

impl RequestError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            field: field.into(),
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, RequestError>;

/// A parsed request. Absent fields stay `None` here; defaults that depend on the model (image
/// size) are decided by the compiler.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub model: ModelChoice,
    pub loras: Vec<LoraEntry>,
    pub controlnets: Vec<ControlNetEntry>,
    pub scheduler: SchedulerChoice,
    pub hyper: Hyperparameters,
    pub init_image: Option<String>,
    pub mask_image: Option<String>,
    pub global_lora_multiplier: f64,
    pub client_id: Option<String>,
    pub filename_prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelChoice {
    pub base: Option<String>,
    pub refiner: Option<String>,
    pub vae: Option<String>,
}

/// Where a LoRA is named: by `name` (resolved as the loader resolves names, extension optional)
/// or by `path` under `models/loras`.
#[derive(Debug, Clone, PartialEq)]
pub enum LoraRef {
    Name(String),
    Path(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    /// The field path, for errors found later (`lora[1]`).
    pub field: String,
    pub lora: LoraRef,
    pub weight: f64,
    pub clip_weight: f64,
}

/// The ControlNet kinds a request may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Canny,
    Depth,
    Pose,
    Scribble,
    Normal,
    Segmentation,
    Mlsd,
    Lineart,
}

impl ControlType {
    pub const ALL: [ControlType; 8] = [
        ControlType::Canny,
        ControlType::Depth,
        ControlType::Pose,
        ControlType::Scribble,
        ControlType::Normal,
        ControlType::Segmentation,
        ControlType::Mlsd,
        ControlType::Lineart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ControlType::Canny => "canny",
            ControlType::Depth => "depth",
            ControlType::Pose => "pose",
            ControlType::Scribble => "scribble",
            ControlType::Normal => "normal",
            ControlType::Segmentation => "segmentation",
            ControlType::Mlsd => "mlsd",
            ControlType::Lineart => "lineart",
        }
    }

    /// The control type a union ControlNet takes for this kind (ComfyUI's
    /// `SetUnionControlNetType` names).
    pub fn union_type(self) -> &'static str {
        match self {
            ControlType::Canny | ControlType::Mlsd | ControlType::Lineart => {
                "canny/lineart/anime_lineart/mlsd"
            }
            ControlType::Depth => "depth",
            ControlType::Pose => "openpose",
            ControlType::Scribble => "hed/pidi/scribble/ted",
            ControlType::Normal => "normal",
            ControlType::Segmentation => "segment",
        }
    }

    fn parse(name: &str) -> Option<ControlType> {
        let name = name.trim().to_ascii_lowercase();
        let name = match name.as_str() {
            "openpose" => "pose",
            "seg" => "segmentation",
            other => other,
        };
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetEntry {
    pub field: String,
    pub kind: ControlType,
    pub model: Option<String>,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
    /// `None`: the init image is the condition image.
    pub condition_image: Option<String>,
    /// `None`: decided by where the image comes from (see the compiler).
    pub preprocess: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchedulerChoice {
    /// A friendly name (`"DPM++ 2M Karras"`) or a ComfyUI sampler name.
    pub kind: Option<String>,
    /// A ComfyUI scheduler name overriding the one the friendly name implies.
    pub schedule: Option<String>,
    pub steps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hyperparameters {
    pub guidance_scale: Option<f64>,
    pub seed: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub batch_size: Option<u32>,
    pub denoise: Option<f64>,
    pub refiner_switch: Option<f64>,
    pub clip_skip: Option<u32>,
}

/// The largest image side, batch and step count a request may ask for (ComfyUI's limits).
pub const MAX_RESOLUTION: u32 = 16384;
pub const MAX_BATCH: u32 = 4096;
pub const MAX_STEPS: u32 = 10000;

/// Parses a request body.
pub fn parse(body: &Json) -> Result<GenerateRequest> {
    let obj = object(body, "request")?;
    check_keys(
        obj,
        "",
        &[
            "prompt",
            "negative_prompt",
            "model",
            "lora",
            "controlnet",
            "scheduler",
            "hyperparameters",
            "init_image",
            "mask_image",
            "lora_config",
            "client_id",
            "filename_prefix",
        ],
    )?;
    let prompt = match obj.get("prompt") {
        None | Some(Json::Null) => return Err(RequestError::new("prompt", "required")),
        Some(value) => string(value, "prompt")?,
    };
    if prompt.trim().is_empty() {
        return Err(RequestError::new("prompt", "must not be empty"));
    }
    let global_lora_multiplier = match present(obj, "lora_config") {
        None => 1.0,
        Some(config) => {
            let config = object(config, "lora_config")?;
            check_keys(config, "lora_config", &["global_weight_multiplier"])?;
            match present(config, "global_weight_multiplier") {
                None => 1.0,
                Some(v) => number(v, "lora_config.global_weight_multiplier")?,
            }
        }
    };
    Ok(GenerateRequest {
        prompt,
        negative_prompt: opt_string(obj, "negative_prompt", "negative_prompt")?.unwrap_or_default(),
        model: parse_model(present(obj, "model"))?,
        loras: list(present(obj, "lora"), "lora", parse_lora)?,
        controlnets: list(present(obj, "controlnet"), "controlnet", parse_controlnet)?,
        scheduler: parse_scheduler(present(obj, "scheduler"))?,
        hyper: parse_hyper(present(obj, "hyperparameters"))?,
        init_image: non_empty(opt_string(obj, "init_image", "init_image")?, "init_image")?,
        mask_image: non_empty(opt_string(obj, "mask_image", "mask_image")?, "mask_image")?,
        global_lora_multiplier,
        client_id: opt_string(obj, "client_id", "client_id")?,
        filename_prefix: non_empty(
            opt_string(obj, "filename_prefix", "filename_prefix")?,
            "filename_prefix",
        )?
        .map(|prefix| relative_prefix(prefix, "filename_prefix"))
        .transpose()?,
    })
}

/// A file name prefix that stays inside the output folder (`sub/name` is fine).
fn relative_prefix(prefix: String, field: &str) -> Result<String> {
    crate::paths::join_relative(std::path::Path::new(""), &prefix)
        .map_err(|e| RequestError::new(field, e.to_string()))?;
    Ok(prefix)
}

fn parse_model(value: Option<&Json>) -> Result<ModelChoice> {
    match value {
        None => Ok(ModelChoice::default()),
        Some(Json::String(base)) => Ok(ModelChoice {
            base: non_empty(Some(base.clone()), "model")?,
            ..ModelChoice::default()
        }),
        Some(value) => {
            let obj = object_or(
                value,
                "model",
                "an object {base, refiner, vae} or a file name",
            )?;
            check_keys(obj, "model", &["base", "refiner", "vae"])?;
            Ok(ModelChoice {
                base: non_empty(opt_string(obj, "base", "model.base")?, "model.base")?,
                refiner: non_empty(
                    opt_string(obj, "refiner", "model.refiner")?,
                    "model.refiner",
                )?,
                vae: non_empty(opt_string(obj, "vae", "model.vae")?, "model.vae")?,
            })
        }
    }
}

/// A field that may hold one entry or a list of them; disabled entries come back as `None`.
fn list<T>(
    value: Option<&Json>,
    field: &str,
    parse_one: fn(&Json, &str) -> Result<Option<T>>,
) -> Result<Vec<T>> {
    match value {
        None => Ok(Vec::new()),
        Some(Json::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.extend(parse_one(item, &format!("{field}[{i}]"))?);
            }
            Ok(out)
        }
        Some(one) => Ok(parse_one(one, field)?.into_iter().collect()),
    }
}

/// `"name:weight"` → (name, weight); the weight is optional.
fn split_weight(text: &str, field: &str, what: &str) -> Result<(String, Option<f64>)> {
    let text = text.trim();
    match text.rsplit_once(':') {
        Some((name, weight)) => {
            let weight: f64 = weight.trim().parse().map_err(|_| {
                RequestError::new(
                    field,
                    format!(
                        "the {what} in '{text}' is not a number: '{}'",
                        weight.trim()
                    ),
                )
            })?;
            if !weight.is_finite() {
                return Err(RequestError::new(
                    field,
                    format!("the {what} must be finite"),
                ));
            }
            Ok((name.trim().to_owned(), Some(weight)))
        }
        None => Ok((text.to_owned(), None)),
    }
}

fn parse_lora(value: &Json, field: &str) -> Result<Option<LoraEntry>> {
    match value {
        Json::String(text) => {
            let (name, weight) = split_weight(text, field, "weight")?;
            if name.is_empty() {
                return Err(RequestError::new(field, "the LoRA name is empty"));
            }
            let weight = weight.unwrap_or(1.0);
            Ok(Some(LoraEntry {
                field: field.to_owned(),
                lora: LoraRef::Name(name),
                weight,
                clip_weight: weight,
            }))
        }
        Json::Object(obj) => {
            check_keys(
                obj,
                field,
                &["name", "path", "weight", "clip_weight", "enabled"],
            )?;
            let enabled = match present(obj, "enabled") {
                None => true,
                Some(v) => boolean(v, &format!("{field}.enabled"))?,
            };
            let name = non_empty(
                opt_string(obj, "name", &format!("{field}.name"))?,
                &format!("{field}.name"),
            )?;
            let path = non_empty(
                opt_string(obj, "path", &format!("{field}.path"))?,
                &format!("{field}.path"),
            )?;
            let weight = match present(obj, "weight") {
                None => 1.0,
                Some(v) => number(v, &format!("{field}.weight"))?,
            };
            let clip_weight = match present(obj, "clip_weight") {
                None => weight,
                Some(v) => number(v, &format!("{field}.clip_weight"))?,
            };
            // A path says exactly which file; the name is then only a label.
            let lora = match (path, name) {
                (Some(path), _) => LoraRef::Path(path),
                (None, Some(name)) => LoraRef::Name(name),
                (None, None) => {
                    return Err(RequestError::new(field, "give the LoRA's 'name' or 'path'"))
                }
            };
            Ok(enabled.then(|| LoraEntry {
                field: field.to_owned(),
                lora,
                weight,
                clip_weight,
            }))
        }
        other => Err(RequestError::new(
            field,
            format!(
                "expected \"name:weight\" or an object, got {}",
                type_name(other)
            ),
        )),
    }
}

fn control_type(name: &str, field: &str) -> Result<ControlType> {
    ControlType::parse(name).ok_or_else(|| {
        let known: Vec<&str> = ControlType::ALL.iter().map(|t| t.name()).collect();
        RequestError::new(
            field,
            format!(
                "unknown ControlNet type '{name}'; known types: {}",
                known.join(", ")
            ),
        )
    })
}

fn parse_controlnet(value: &Json, field: &str) -> Result<Option<ControlNetEntry>> {
    match value {
        Json::String(text) => {
            let (kind, scale) = split_weight(text, field, "scale")?;
            Ok(Some(ControlNetEntry {
                field: field.to_owned(),
                kind: control_type(&kind, field)?,
                model: None,
                scale: scale.unwrap_or(1.0),
                start: 0.0,
                end: 1.0,
                condition_image: None,
                preprocess: None,
            }))
        }
        Json::Object(obj) => {
            check_keys(
                obj,
                field,
                &[
                    "type",
                    "model",
                    "conditioning_scale",
                    "control_guidance_start",
                    "control_guidance_end",
                    "condition_image",
                    "preprocess_condition",
                    "enabled",
                ],
            )?;
            let enabled = match present(obj, "enabled") {
                None => true,
                Some(v) => boolean(v, &format!("{field}.enabled"))?,
            };
            let type_field = format!("{field}.type");
            let kind = match present(obj, "type") {
                None => return Err(RequestError::new(type_field, "required")),
                Some(v) => control_type(&string(v, &type_field)?, &type_field)?,
            };
            let fraction = |key: &str, default: f64| -> Result<f64> {
                let path = format!("{field}.{key}");
                match present(obj, key) {
                    None => Ok(default),
                    Some(v) => {
                        let x = number(v, &path)?;
                        if (0.0..=1.0).contains(&x) {
                            Ok(x)
                        } else {
                            Err(RequestError::new(
                                path,
                                format!("must be between 0 and 1, got {x}"),
                            ))
                        }
                    }
                }
            };
            let start = fraction("control_guidance_start", 0.0)?;
            let end = fraction("control_guidance_end", 1.0)?;
            if end < start {
                return Err(RequestError::new(
                    format!("{field}.control_guidance_end"),
                    format!("{end} is before control_guidance_start {start}"),
                ));
            }
            let scale = match present(obj, "conditioning_scale") {
                None => 1.0,
                Some(v) => number(v, &format!("{field}.conditioning_scale"))?,
            };
            Ok(enabled.then_some(ControlNetEntry {
                field: field.to_owned(),
                kind,
                model: non_empty(
                    opt_string(obj, "model", &format!("{field}.model"))?,
                    &format!("{field}.model"),
                )?,
                scale,
                start,
                end,
                condition_image: non_empty(
                    opt_string(obj, "condition_image", &format!("{field}.condition_image"))?,
                    &format!("{field}.condition_image"),
                )?,
                preprocess: match present(obj, "preprocess_condition") {
                    None => None,
                    Some(v) => Some(boolean(v, &format!("{field}.preprocess_condition"))?),
                },
            }))
        }
        other => Err(RequestError::new(
            field,
            format!(
                "expected \"type:scale\" or an object, got {}",
                type_name(other)
            ),
        )),
    }
}

fn parse_scheduler(value: Option<&Json>) -> Result<SchedulerChoice> {
    match value {
        None => Ok(SchedulerChoice::default()),
        Some(Json::String(kind)) => Ok(SchedulerChoice {
            kind: non_empty(Some(kind.clone()), "scheduler")?,
            ..SchedulerChoice::default()
        }),
        Some(value) => {
            let obj = object_or(value, "scheduler", "an object {type, steps} or a name")?;
            check_keys(obj, "scheduler", &["type", "steps", "scheduler"])?;
            Ok(SchedulerChoice {
                kind: non_empty(opt_string(obj, "type", "scheduler.type")?, "scheduler.type")?,
                schedule: non_empty(
                    opt_string(obj, "scheduler", "scheduler.scheduler")?,
                    "scheduler.scheduler",
                )?,
                steps: match present(obj, "steps") {
                    None => None,
                    Some(v) => Some(integer_in(v, "scheduler.steps", 1, MAX_STEPS as u64)? as u32),
                },
            })
        }
    }
}

fn parse_hyper(value: Option<&Json>) -> Result<Hyperparameters> {
    let Some(value) = value else {
        return Ok(Hyperparameters::default());
    };
    let obj = object(value, "hyperparameters")?;
    check_keys(
        obj,
        "hyperparameters",
        &[
            "guidance_scale",
            "seed",
            "width",
            "height",
            "batch_size",
            "denoise",
            "refiner_switch",
            "clip_skip",
        ],
    )?;
    let path = |key: &str| format!("hyperparameters.{key}");
    let num = |key: &str, min: f64, max: f64| -> Result<Option<f64>> {
        match present(obj, key) {
            None => Ok(None),
            Some(v) => {
                let x = number(v, &path(key))?;
                if x < min || x > max {
                    Err(RequestError::new(
                        path(key),
                        format!("must be between {min} and {max}, got {x}"),
                    ))
                } else {
                    Ok(Some(x))
                }
            }
        }
    };
    let int = |key: &str, min: u64, max: u64| -> Result<Option<u64>> {
        present(obj, key)
            .map(|v| integer_in(v, &path(key), min, max))
            .transpose()
    };
    let side = |key: &str| -> Result<Option<u32>> {
        let Some(x) = int(key, 16, MAX_RESOLUTION as u64)? else {
            return Ok(None);
        };
        if x % 8 != 0 {
            return Err(RequestError::new(
                path(key),
                format!("must be a multiple of 8 (the latent is 1/8 of the image), got {x}"),
            ));
        }
        Ok(Some(x as u32))
    };
    Ok(Hyperparameters {
        guidance_scale: num("guidance_scale", 0.0, 100.0)?,
        seed: int("seed", 0, u64::MAX)?,
        width: side("width")?,
        height: side("height")?,
        batch_size: int("batch_size", 1, MAX_BATCH as u64)?.map(|b| b as u32),
        denoise: num("denoise", 0.0, 1.0)?,
        refiner_switch: num("refiner_switch", 0.0, 1.0)?,
        clip_skip: int("clip_skip", 1, 24)?.map(|c| c as u32),
    })
}

// Small typed readers; each names the field on failure.

fn type_name(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// A key that is there and not null.
fn present<'a>(obj: &'a Map<String, Json>, key: &str) -> Option<&'a Json> {
    obj.get(key).filter(|v| !v.is_null())
}

fn check_keys(obj: &Map<String, Json>, field: &str, known: &[&str]) -> Result<()> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let path = if field.is_empty() {
                key.clone()
            } else {
                format!("{field}.{key}")
            };
            return Err(RequestError::new(
                path,
                format!("unknown field; expected one of: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn object<'a>(value: &'a Json, field: &str) -> Result<&'a Map<String, Json>> {
    object_or(value, field, "an object")
}

fn object_or<'a>(value: &'a Json, field: &str, expected: &str) -> Result<&'a Map<String, Json>> {
    value.as_object().ok_or_else(|| {
        RequestError::new(
            field,
            format!("expected {expected}, got {}", type_name(value)),
        )
    })
}

fn string(value: &Json, field: &str) -> Result<String> {
    value.as_str().map(str::to_owned).ok_or_else(|| {
        RequestError::new(
            field,
            format!("expected a string, got {}", type_name(value)),
        )
    })
}

fn opt_string(obj: &Map<String, Json>, key: &str, field: &str) -> Result<Option<String>> {
    present(obj, key).map(|v| string(v, field)).transpose()
}

fn non_empty(value: Option<String>, field: &str) -> Result<Option<String>> {
    match value {
        Some(s) if s.trim().is_empty() => Err(RequestError::new(field, "must not be empty")),
        other => Ok(other),
    }
}

fn number(value: &Json, field: &str) -> Result<f64> {
    value.as_f64().ok_or_else(|| {
        RequestError::new(
            field,
            format!("expected a number, got {}", type_name(value)),
        )
    })
}

fn boolean(value: &Json, field: &str) -> Result<bool> {
    value.as_bool().ok_or_else(|| {
        RequestError::new(
            field,
            format!("expected true or false, got {}", type_name(value)),
        )
    })
}

fn integer_in(value: &Json, field: &str, min: u64, max: u64) -> Result<u64> {
    let n = value.as_u64().or_else(|| {
        // 20.0 is an integer too.
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15)
            .map(|f| f as u64)
    });
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(RequestError::new(
            field,
            format!("must be between {min} and {max}, got {n}"),
        )),
        None if value.is_number() => Err(RequestError::new(
            field,
            format!("expected a whole number between {min} and {max}, got {value}"),
        )),
        None => Err(RequestError::new(
            field,
            format!("expected a whole number, got {}", type_name(value)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: Json) -> RequestError {
        parse(&body).expect_err("should be refused")
    }

    #[test]
    fn the_issue_example_parses() {
        let req = parse(&json!({
            "prompt": "a beautiful landscape painting",
            "negative_prompt": "blurry",
            "model": {"base": "base.safetensors", "refiner": "refiner.safetensors", "vae": "vae.safetensors"},
            "lora": ["art_style:0.8", {"name": "landscape", "path": "models/loras/landscape.safetensors", "weight": 0.6, "clip_weight": 0.5, "enabled": true}, {"name": "off", "enabled": false}],
            "controlnet": ["canny:0.8", {"type": "depth", "model": "control_depth.safetensors", "conditioning_scale": 0.6, "control_guidance_start": 0.1, "control_guidance_end": 0.9, "condition_image": "input/photo.png", "preprocess_condition": false}],
            "scheduler": {"type": "DPM++", "steps": 50},
            "hyperparameters": {"guidance_scale": 7.5, "seed": 12345, "width": 1024, "height": 1024, "batch_size": 1, "denoise": 1.0, "refiner_switch": 0.8},
            "init_image": "input/start.png", "mask_image": "input/mask.png",
            "lora_config": {"global_weight_multiplier": 0.5}
        }))
        .unwrap();
        assert_eq!(req.loras.len(), 2);
        assert_eq!(req.loras[0].lora, LoraRef::Name("art_style".into()));
        assert_eq!((req.loras[0].weight, req.loras[0].clip_weight), (0.8, 0.8));
        assert_eq!(
            req.loras[1].lora,
            LoraRef::Path("models/loras/landscape.safetensors".into())
        );
        assert_eq!(req.loras[1].clip_weight, 0.5);
        assert_eq!(req.controlnets[0].kind, ControlType::Canny);
        assert_eq!(req.controlnets[0].scale, 0.8);
        assert_eq!(req.controlnets[1].kind, ControlType::Depth);
        assert_eq!(
            (req.controlnets[1].start, req.controlnets[1].end),
            (0.1, 0.9)
        );
        assert_eq!(req.controlnets[1].preprocess, Some(false));
        assert_eq!(req.scheduler.steps, Some(50));
        assert_eq!(req.hyper.seed, Some(12345));
        assert_eq!(req.global_lora_multiplier, 0.5);
    }

    #[test]
    fn a_single_entry_need_not_be_a_list() {
        let req = parse(&json!({"prompt": "x", "lora": "a", "controlnet": "pose"})).unwrap();
        assert_eq!(req.loras[0].weight, 1.0);
        assert_eq!(req.controlnets[0].kind, ControlType::Pose);
        assert_eq!(req.controlnets[0].scale, 1.0);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({}), "prompt"),
            (json!({"prompt": 3}), "prompt"),
            (json!({"prompt": "x", "lora": ["a:heavy"]}), "lora[0]"),
            (
                json!({"prompt": "x", "lora": [{"name": "a", "weight": "0.5"}]}),
                "lora[0].weight",
            ),
            (json!({"prompt": "x", "lora": [{"weight": 0.5}]}), "lora[0]"),
            (json!({"prompt": "x", "lora": [7]}), "lora[0]"),
            (
                json!({"prompt": "x", "controlnet": ["hed:0.5"]}),
                "controlnet[0]",
            ),
            (
                json!({"prompt": "x", "controlnet": [{"type": "canny", "control_guidance_end": 2}]}),
                "controlnet[0].control_guidance_end",
            ),
            (
                json!({"prompt": "x", "controlnet": [{"type": "canny", "control_guidance_start": 0.6, "control_guidance_end": 0.5}]}),
                "controlnet[0].control_guidance_end",
            ),
            (
                json!({"prompt": "x", "hyperparameters": {"seed": -1}}),
                "hyperparameters.seed",
            ),
            (
                json!({"prompt": "x", "hyperparameters": {"width": 513}}),
                "hyperparameters.width",
            ),
            (
                json!({"prompt": "x", "hyperparameters": {"steps": 20}}),
                "hyperparameters.steps",
            ),
            (
                json!({"prompt": "x", "hyperparameters": {"denoise": 1.5}}),
                "hyperparameters.denoise",
            ),
            (
                json!({"prompt": "x", "scheduler": {"steps": 2.5}}),
                "scheduler.steps",
            ),
            (json!({"prompt": "x", "model": 5}), "model"),
            (json!({"prompt": "x", "model": {"base": ""}}), "model.base"),
            (json!({"prompt": "x", "negative": "y"}), "negative"),
            (
                json!({"prompt": "x", "filename_prefix": "../escape"}),
                "filename_prefix",
            ),
            (
                json!({"prompt": "x", "filename_prefix": "/abs/name"}),
                "filename_prefix",
            ),
            (
                json!({"prompt": "x", "lora_config": {"global_weight_multiplier": true}}),
                "lora_config.global_weight_multiplier",
            ),
        ];
        for (body, field) in cases {
            let e = err(body.clone());
            assert_eq!(e.field, field, "{body} → {e}");
        }
    }
}
