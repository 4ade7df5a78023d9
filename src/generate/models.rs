//! Finding the files a request names: models by name (extension and `models/<folder>/` prefix
//! optional), ControlNets by type keyword and family, input images; and reading a checkpoint's
//! or ControlNet's family off its header without loading its weights.

use std::path::{Path, PathBuf};

use crate::engine::controlnet::detect::controlnet_config_of;
use crate::engine::load::detect::{detect_unet, DetectedUnet, ModelFamily};
use crate::engine::load::file::StateDict;
use crate::generate::request::{ControlType, RequestError};
use crate::paths::{self, DataDirs};

/// How many names an error lists before "…".
const LISTED: usize = 12;

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut shown: Vec<&str> = names.iter().take(LISTED).map(String::as_str).collect();
    if names.len() > LISTED {
        shown.push("…");
    }
    shown.join(", ")
}

fn strip_extension(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if paths::MODEL_EXTENSIONS.contains(&ext) => stem,
        _ => name,
    }
}

fn file_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Resolves `wanted` to one of the names the loader node lists for `folder`: exactly, then
/// without the extension, then by file name alone (any subfolder).
pub fn resolve_model(
    dirs: &DataDirs,
    folder: &str,
    wanted: &str,
    field: &str,
) -> Result<String, RequestError> {
    let listed = dirs.list_models(folder).unwrap_or_default();
    let wanted = wanted.trim().replace('\\', "/");
    let wanted = wanted
        .strip_prefix(&format!("models/{folder}/"))
        .or_else(|| wanted.strip_prefix(&format!("{folder}/")))
        .unwrap_or(&wanted);
    if listed.iter().any(|n| n == wanted) {
        return Ok(wanted.to_owned());
    }
    let stem = strip_extension(wanted);
    let matches: Vec<String> = listed
        .iter()
        .filter(|n| {
            strip_extension(n) == stem
                || file_name(n) == wanted
                || strip_extension(file_name(n)) == stem
        })
        .cloned()
        .collect();
    match matches.len() {
        1 => Ok(matches[0].clone()),
        0 => Err(RequestError::new(
            field,
            format!(
                "no model '{wanted}' in models/{folder}; files there: {}",
                listing(&listed)
            ),
        )),
        _ => Err(RequestError::new(
            field,
            format!(
                "'{wanted}' matches several files in models/{folder}: {}; name one exactly",
                listing(&matches)
            ),
        )),
    }
}

/// The base checkpoint when the request names none: the only one there is.
pub fn only_checkpoint(dirs: &DataDirs) -> Result<String, RequestError> {
    let listed = dirs.list_models("checkpoints").unwrap_or_default();
    match listed.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(RequestError::new(
            "model.base",
            "required: models/checkpoints is empty",
        )),
        _ => Err(RequestError::new(
            "model.base",
            format!(
                "required when models/checkpoints has several files: {}",
                listing(&listed)
            ),
        )),
    }
}

fn model_path(
    dirs: &DataDirs,
    folder: &str,
    name: &str,
    field: &str,
) -> Result<PathBuf, RequestError> {
    dirs.model_file(folder, name)
        .map_err(|m| RequestError::new(field, m))
}

/// Reads a checkpoint's family from its keys and shapes (the file is memory-mapped; only the
/// header is read, and one small tensor for SD2's prediction-type guess).
pub fn checkpoint_family(
    dirs: &DataDirs,
    name: &str,
    field: &str,
) -> Result<DetectedUnet, RequestError> {
    let path = model_path(dirs, "checkpoints", name, field)?;
    let sd = StateDict::open(&path).map_err(|e| RequestError::new(field, e.to_string()))?;
    let components = crate::engine::load::checkpoint::split_components(&sd);
    let Some(prefix) = components.unet else {
        return Err(RequestError::new(
            field,
            format!("'{name}' has no diffusion model weights (model.diffusion_model.*); is it a checkpoint?"),
        ));
    };
    detect_unet(&sd, &prefix)
        .map_err(|k| RequestError::new(field, format!("cannot use '{name}': {k}")))
}

/// What a control file's header says: the family it is for (`None` for adapters and
/// control-LoRAs, which the apply node checks when it runs) and whether it is a union ControlNet.
#[derive(Debug, Clone, Copy)]
struct ControlInfo {
    family: Option<ModelFamily>,
    union: bool,
}

fn control_info(path: &Path) -> Result<ControlInfo, String> {
    let sd = StateDict::open(path).map_err(|e| e.to_string())?;
    let config = controlnet_config_of(&sd).map_err(|k| k.to_string())?;
    Ok(ControlInfo {
        family: config.as_ref().map(|c| c.family()),
        union: config.is_some_and(|c| c.union.is_some()),
    })
}

/// The ControlNet file chosen for a request entry.
#[derive(Debug, Clone)]
pub struct ControlChoice {
    pub name: String,
    /// A union (ControlNet++) file: the graph sets its control type.
    pub union: bool,
}

pub fn family_name(family: ModelFamily) -> &'static str {
    match family {
        ModelFamily::Sd1 => "SD1.x",
        ModelFamily::Sd2 => "SD2.x",
        ModelFamily::SdxlBase => "SDXL",
        ModelFamily::SdxlRefiner => "SDXL refiner",
    }
}

/// Name keywords per ControlNet type (lower case; a file matches when its name contains one).
fn keywords(kind: ControlType) -> &'static [&'static str] {
    match kind {
        ControlType::Canny => &["canny"],
        ControlType::Depth => &["depth"],
        ControlType::Pose => &["pose"],
        ControlType::Scribble => &["scribble"],
        ControlType::Normal => &["normal"],
        ControlType::Segmentation => &["seg"],
        ControlType::Mlsd => &["mlsd"],
        ControlType::Lineart => &["lineart"],
    }
}

/// A named ControlNet, checked against the base model's family.
pub fn resolve_controlnet(
    dirs: &DataDirs,
    wanted: &str,
    family: ModelFamily,
    field: &str,
) -> Result<ControlChoice, RequestError> {
    let name = resolve_model(dirs, "controlnet", wanted, field)?;
    let path = model_path(dirs, "controlnet", &name, field)?;
    match control_info(&path) {
        Err(why) => Err(RequestError::new(
            field,
            format!("cannot use '{name}': {why}"),
        )),
        Ok(ControlInfo {
            family: Some(found),
            ..
        }) if found != family => Err(RequestError::new(
            field,
            format!(
                "'{name}' is a {} ControlNet but the base model is {}",
                family_name(found),
                family_name(family)
            ),
        )),
        Ok(info) => Ok(ControlChoice {
            name,
            union: info.union,
        }),
    }
}

/// Finds the one ControlNet in `models/controlnet` for `kind` and `family`: a file whose name has
/// the type's keyword, or else a union ControlNet of the family (one file for every type).
pub fn find_controlnet(
    dirs: &DataDirs,
    kind: ControlType,
    family: ModelFamily,
    field: &str,
) -> Result<ControlChoice, RequestError> {
    let listed = dirs.list_models("controlnet").unwrap_or_default();
    let (by_name, rest): (Vec<&String>, Vec<&String>) = listed.iter().partition(|name| {
        let lower = file_name(name).to_ascii_lowercase();
        keywords(kind).iter().any(|k| lower.contains(k))
    });
    // `None`: the listed name has no usable path (skipped).
    let info = |name: &str| {
        let path = model_path(dirs, "controlnet", name, field).ok()?;
        Some(control_info(&path))
    };
    let choice = |name: &str, info: ControlInfo| ControlChoice {
        name: name.to_owned(),
        union: info.union,
    };
    let mut fitting = Vec::new();
    let mut other = Vec::new();
    for name in by_name {
        match info(name) {
            Some(Ok(found)) => match found.family {
                Some(f) if f != family => other.push(format!("{name} ({})", family_name(f))),
                _ => fitting.push(choice(name, found)),
            },
            Some(Err(why)) => other.push(format!("{name} (unreadable: {why})")),
            None => {}
        }
    }
    // Only when no file is named for the type are the other headers read, for union files.
    if fitting.is_empty() {
        fitting = rest
            .into_iter()
            .filter_map(|name| Some((name, info(name)?.ok()?)))
            .filter(|(_, found)| found.union && found.family.is_none_or(|f| f == family))
            .map(|(name, found)| choice(name, found))
            .collect();
    }
    let names = |choices: &[ControlChoice]| {
        listing(&choices.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
    };
    match fitting.len() {
        1 => Ok(fitting.remove(0)),
        0 => {
            Err(RequestError::new(
                field,
                format!(
                "no {} ControlNet for {} in models/controlnet (looked for names containing {}, \
                 then union ControlNets); {}; name one with 'model'",
                kind.name(),
                family_name(family),
                keywords(kind).iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(" or "),
                if other.is_empty() {
                    format!("files there: {}", listing(&listed))
                } else {
                    format!("not usable: {}", listing(&other))
                }
            ),
            ))
        }
        _ => Err(RequestError::new(
            field,
            format!(
                "several {} ControlNets for {} match: {}; name one with 'model'",
                kind.name(),
                family_name(family),
                names(&fitting)
            ),
        )),
    }
}

/// An image in the input folder as LoadImage names it (`input/` prefix optional), with its size.
pub fn input_image(
    dirs: &DataDirs,
    wanted: &str,
    field: &str,
) -> Result<(String, (u32, u32)), RequestError> {
    let wanted = wanted.trim().replace('\\', "/");
    let name = wanted.strip_prefix("input/").unwrap_or(&wanted).to_owned();
    let (subfolder, file) = name.rsplit_once('/').unwrap_or(("", &name));
    let path = match paths::resolve_existing(&dirs.input, subfolder, file) {
        Ok(Some(path)) => path,
        Ok(None) => {
            return Err(RequestError::new(
                field,
                format!(
                "no image '{name}' in the input folder; upload it first with POST /upload/image"
            ),
            ))
        }
        Err(e) => return Err(RequestError::new(field, e.to_string())),
    };
    let size = image::image_dimensions(&path)
        .map_err(|e| RequestError::new(field, format!("cannot read image '{name}': {e}")))?;
    Ok((name, size))
}
