//! Reading and writing image files: LoadImage, LoadImageMask, SaveImage, PreviewImage.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::graph::spec::build::*;
use crate::graph::spec::{ComboOptions, FileList, Freshness, HiddenInput, InputKind, NodeSpec};
use crate::graph::{ConstValue, SlotType};
use crate::nodes::{
    FileRef, Inputs, Node, NodeContext, NodeError, NodeOutput, Registry, Ui, Value,
};
use crate::paths::{self, DataDirs, FolderType};

pub fn register(registry: &mut Registry) {
    registry.add(LoadImage);
    registry.add(LoadImageMask);
    registry.add(SaveImage);
    registry.add(PreviewImage);
}

/// The input folder's images, with an upload button in the editor.
fn input_images() -> InputKind {
    InputKind::Combo {
        options: ComboOptions::Files(FileList::InputImages),
        default: None,
        image_upload: true,
    }
}

/// Loads an image from the input folder: IMAGE (RGB) and MASK (1 − alpha, or zeros 64×64).
pub struct LoadImage;

impl LoadImage {
    fn path(dirs: &DataDirs, name: &str) -> Result<PathBuf, String> {
        annotated_input_file(dirs, name, "Invalid image file")
    }
}

/// The file an input names (`sub/x.png`, or `x.png [output]` for another data folder; ComfyUI's
/// `get_annotated_filepath`), refusing names that leave the folder; `invalid` starts the error
/// for a file that is not there (`Invalid image file: x.png`).
pub fn annotated_input_file(dirs: &DataDirs, name: &str, invalid: &str) -> Result<PathBuf, String> {
    let (name, folder) = paths::split_annotation(name);
    let base = dirs.folder(folder.unwrap_or(FolderType::Input));
    let (subfolder, filename) = match name.rsplit_once('/') {
        Some((sub, file)) => (sub, file),
        None => ("", name),
    };
    match paths::resolve_existing(base, subfolder, filename) {
        Ok(Some(path)) => Ok(path),
        Ok(None) => Err(format!("{invalid}: {name}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The SHA-256 of a file, as hex (ComfyUI's `IS_CHANGED` for files a node loads).
pub fn file_sha256(dirs: &DataDirs, path: &Path) -> Result<String, NodeError> {
    let bytes = std::fs::read(path).map_err(|e| NodeError::file(dirs.shown(path), e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

impl Node for LoadImage {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            class_type: "LoadImage",
            display_name: "Load Image",
            category: "image",
            description:
                "Loads an image from the input folder; the mask is the inverted alpha channel.",
            inputs: vec![required("image", input_images())],
            hidden: vec![],
            outputs: vec![
                output(SlotType::IMAGE, "IMAGE"),
                output(SlotType::MASK, "MASK"),
            ],
            output_node: false,
            freshness: Freshness::ReadsFiles,
            self_validated: &["image"],
            python_module: "nodes",
            input_is_list: false,
            output_is_list: &[],
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("image")?;
        let path = Self::path(&ctx.dirs, name).map_err(|m| NodeError::input("image", m))?;
        let (image, mask) = load_image_file(ctx, &path, &ctx.dirs.shown(&path))?;
        Ok(NodeOutput::values(vec![
            Value::Image(image),
            Value::Mask(mask),
        ]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        let Some((_, ConstValue::String(name))) = constants.iter().find(|(n, _)| n == "image")
        else {
            return Ok(String::new());
        };
        let path = Self::path(dirs, name).map_err(|m| NodeError::input("image", m))?;
        file_sha256(dirs, &path)
    }

    fn check_input(&self, dirs: &DataDirs, _input: &str, value: &ConstValue) -> Result<(), String> {
        match value {
            ConstValue::String(name) => Self::path(dirs, name).map(|_| ()),
            _ => Err("image must be a file name".into()),
        }
    }
}

/// Bytes a node holds per pixel while turning a decoded image into tensors: RGBA as f32, then
/// the IMAGE's three channels and the MASK's one.
const LOAD_BYTES_PER_PIXEL: u64 = (4 + 3 + 1) * 4;

/// An image file decoded to RGBA in 0–1 (EXIF orientation applied): pixels, width, height, and
/// whether the file had an alpha channel. `shown`: the path as errors name it
/// ([`DataDirs::shown`]). A file declaring more than [`crate::images`] allows is an error on
/// input `image`, and memory for the tensors is reserved before anything is decoded.
fn decode_rgba(
    ctx: &NodeContext,
    path: &Path,
    shown: &str,
) -> Result<(Vec<f32>, usize, usize, bool), NodeError> {
    let decoded = crate::images::open_reserving(
        path,
        |e| match e {
            e @ crate::images::DecodeError::TooLarge { .. } => {
                NodeError::input("image", format!("{shown}: {e}"))
            }
            e => NodeError::file(shown, e),
        },
        |w, h| {
            let what = format!("loading {shown} ({w}x{h})");
            ctx.reserve_memory(
                "image",
                u64::from(w) * u64::from(h) * LOAD_BYTES_PER_PIXEL,
                &what,
            )
        },
    )?;
    let has_alpha = decoded.color().has_alpha();
    let rgba = decoded.to_rgba32f();
    let (w, h) = (rgba.width() as usize, rgba.height() as usize);
    Ok((rgba.into_raw(), w, h, has_alpha))
}

/// Decodes an image file (EXIF orientation applied) into IMAGE `[1,H,W,3]` and MASK `[1,H,W]`;
/// `shown`: the path as errors name it ([`DataDirs::shown`]).
pub fn load_image_file(
    ctx: &NodeContext,
    path: &Path,
    shown: &str,
) -> Result<(Tensor, Tensor), NodeError> {
    let (raw, w, h, has_alpha) = decode_rgba(ctx, path, shown)?;
    let mut rgb = Vec::with_capacity(w * h * 3);
    let mut mask = Vec::with_capacity(w * h);
    for px in raw.chunks_exact(4) {
        rgb.extend_from_slice(&px[..3]);
        mask.push(1.0 - px[3]);
    }
    let image = Tensor::from_vec(rgb, (1, h, w, 3), &Device::Cpu)?;
    let mask = if has_alpha {
        Tensor::from_vec(mask, (1, h, w), &Device::Cpu)?
    } else {
        Tensor::zeros((1, 64, 64), DType::F32, &Device::Cpu)?
    };
    Ok((image, mask))
}

/// Loads one channel of an input image as a MASK (ComfyUI's LoadImageMask): red, green or blue
/// as they are, alpha inverted (an image without alpha counts as opaque: an empty mask).
pub struct LoadImageMask;

const MASK_CHANNELS: &[&str] = &["alpha", "red", "green", "blue"];

impl Node for LoadImageMask {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            class_type: "LoadImageMask",
            display_name: "Load Image (as Mask)",
            category: "mask",
            description: "Loads one channel of an image from the input folder as a mask.",
            inputs: vec![
                required("image", input_images()),
                required("channel", combo(MASK_CHANNELS)),
            ],
            hidden: vec![],
            outputs: vec![output(SlotType::MASK, "MASK")],
            output_node: false,
            freshness: Freshness::ReadsFiles,
            self_validated: &["image"],
            python_module: "nodes",
            input_is_list: false,
            output_is_list: &[],
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let name = inputs.string("image")?;
        let channel = inputs.string("channel")?;
        let index = MASK_CHANNELS
            .iter()
            .position(|c| *c == channel)
            .ok_or_else(|| NodeError::input("channel", format!("unknown channel '{channel}'")))?;
        let path = LoadImage::path(&ctx.dirs, name).map_err(|m| NodeError::input("image", m))?;
        let (raw, w, h, _) = decode_rgba(ctx, &path, &ctx.dirs.shown(&path))?;
        // RGBA order: alpha is the fourth value.
        let mask: Vec<f32> = match index {
            0 => raw.chunks_exact(4).map(|px| 1.0 - px[3]).collect(),
            c => raw.chunks_exact(4).map(|px| px[c - 1]).collect(),
        };
        Ok(NodeOutput::values(vec![Value::Mask(Tensor::from_vec(
            mask,
            (1, h, w),
            &Device::Cpu,
        )?)]))
    }

    fn fingerprint(
        &self,
        dirs: &DataDirs,
        constants: &[(String, ConstValue)],
    ) -> Result<String, NodeError> {
        LoadImage.fingerprint(dirs, constants)
    }

    fn check_input(&self, dirs: &DataDirs, input: &str, value: &ConstValue) -> Result<(), String> {
        LoadImage.check_input(dirs, input, value)
    }
}

/// Saves images to the output folder as PNG with the workflow embedded.
pub struct SaveImage;

impl Node for SaveImage {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            class_type: "SaveImage",
            display_name: "Save Image",
            category: "image",
            description: "Saves the input images to your output directory.",
            inputs: vec![
                required("images", link(SlotType::IMAGE)),
                required("filename_prefix", string("ComfyUI")),
            ],
            hidden: vec![
                ("prompt", HiddenInput::Prompt),
                ("extra_pnginfo", HiddenInput::ExtraPngInfo),
            ],
            outputs: vec![],
            output_node: true,
            freshness: Freshness::Pure,
            self_validated: &[],
            python_module: "nodes",
            input_is_list: false,
            output_is_list: &[],
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let images = inputs.image("images")?;
        let prefix = inputs.string("filename_prefix")?;
        let refs = save_images(
            ctx,
            images,
            prefix,
            FolderType::Output,
            png::Compression::Default,
        )?;
        Ok(NodeOutput {
            values: vec![],
            ui: Some(Ui {
                images: refs,
                ..Ui::default()
            }),
        })
    }
}

/// Saves images to the temp folder (wiped at start) for display only.
pub struct PreviewImage;

impl Node for PreviewImage {
    fn spec(&self) -> NodeSpec {
        NodeSpec {
            class_type: "PreviewImage",
            display_name: "Preview Image",
            category: "image",
            description: "Saves the input images to the temp folder for display.",
            inputs: vec![required("images", link(SlotType::IMAGE))],
            hidden: vec![
                ("prompt", HiddenInput::Prompt),
                ("extra_pnginfo", HiddenInput::ExtraPngInfo),
            ],
            outputs: vec![],
            output_node: true,
            freshness: Freshness::Pure,
            self_validated: &[],
            python_module: "nodes",
            input_is_list: false,
            output_is_list: &[],
        }
    }

    fn run(&self, ctx: &NodeContext, inputs: &Inputs) -> Result<NodeOutput, NodeError> {
        let images = inputs.image("images")?;
        let suffix: String = {
            let mut rng = rand::thread_rng();
            (0..5).map(|_| rng.gen_range(b'a'..=b'z') as char).collect()
        };
        let prefix = format!("ComfyUI_temp_{suffix}");
        let refs = save_images(
            ctx,
            images,
            &prefix,
            FolderType::Temp,
            png::Compression::Fast,
        )?;
        Ok(NodeOutput {
            values: vec![],
            ui: Some(Ui {
                images: refs,
                ..Ui::default()
            }),
        })
    }
}

/// Writes each image of a batch as `<prefix>_<counter:05>_.png`, following ComfyUI's
/// `get_save_image_path` (placeholders, subfolders in the prefix, counter after the highest).
fn save_images(
    ctx: &NodeContext,
    images: &Tensor,
    prefix: &str,
    folder: FolderType,
    compression: png::Compression,
) -> Result<Vec<FileRef>, NodeError> {
    let (batch, height, width, channels) = images.dims4().map_err(|_| {
        NodeError::input(
            "images",
            format!("expected an IMAGE [B,H,W,C], got shape {:?}", images.dims()),
        )
    })?;
    if !(1..=4).contains(&channels) {
        return Err(NodeError::input(
            "images",
            format!("an image has 1 to 4 channels, got {channels}"),
        ));
    }
    let target = SaveTarget::reserve(ctx, prefix, folder, width, height, batch, "png")?;
    let images = images.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let mut refs = Vec::with_capacity(batch);
    for (b, counter) in (0..batch).zip(target.first_counter..) {
        ctx.check_interrupt()?;
        let pixels: Vec<f32> = images.get(b)?.flatten_all()?.to_vec1()?;
        // ComfyUI: clip(255 * x, 0, 255).astype(uint8), a truncation.
        let bytes: Vec<u8> = pixels
            .iter()
            .map(|v| (v * 255.0).clamp(0.0, 255.0) as u8)
            .collect();
        let file_name_base = target.name.replace("%batch_num%", &b.to_string());
        let filename = format!("{file_name_base}_{counter:05}_.png");
        let path = target.path(&filename)?;
        write_png(
            &path,
            &bytes,
            width,
            height,
            channels,
            metadata(ctx),
            compression,
        )
        .map_err(|message| NodeError::file(ctx.dirs.shown(&path), message))?;
        refs.push(target.file_ref(filename, folder));
    }
    Ok(refs)
}

/// Where a save writes: the folder, the subfolder and name from the prefix, and the first free
/// counter (ComfyUI's `get_save_image_path`).
pub(crate) struct SaveTarget {
    base: PathBuf,
    pub subfolder: String,
    pub name: String,
    pub first_counter: u64,
}

impl SaveTarget {
    /// Resolves `prefix` (placeholders, subfolders) in `folder` and claims `count` counters for
    /// files ending in `extension`; the subfolder is made only once it is known to be inside.
    pub fn reserve(
        ctx: &NodeContext,
        prefix: &str,
        folder: FolderType,
        width: usize,
        height: usize,
        count: usize,
        extension: &str,
    ) -> Result<SaveTarget, NodeError> {
        let prefix = expand_placeholders(prefix, width, height);
        let (subfolder, name) = match prefix.rsplit_once('/') {
            Some((sub, name)) => (sub.to_owned(), name.to_owned()),
            None => (String::new(), prefix.clone()),
        };
        let base = ctx.dirs.folder(folder).to_path_buf();
        let dir = paths::create_folder_inside(&base, &subfolder)
            .map_err(|e| NodeError::input("filename_prefix", e.to_string()))?;
        let first_counter = next_counter(&dir, &name, extension);
        if count > 0 {
            remember_counter(&dir, &name, first_counter + count as u64 - 1);
        }
        Ok(SaveTarget {
            base,
            subfolder,
            name,
            first_counter,
        })
    }

    /// The path of a new file `filename` in the target's subfolder.
    pub fn path(&self, filename: &str) -> Result<PathBuf, NodeError> {
        paths::resolve_new(&self.base, &self.subfolder, filename)
            .map_err(|e| NodeError::input("filename_prefix", e.to_string()))
    }

    pub fn file_ref(&self, filename: String, folder: FolderType) -> FileRef {
        FileRef {
            filename,
            subfolder: self.subfolder.clone(),
            folder_type: folder.name().to_owned(),
        }
    }
}

/// The prompt's metadata as (key, ASCII JSON) pairs: `prompt`, then each `extra_pnginfo` entry
/// (the editor workflow); none with `--disable-metadata`. Made once per prompt.
pub(crate) fn metadata(ctx: &NodeContext) -> &[(String, String)] {
    if !ctx.write_metadata {
        return &[];
    }
    ctx.png_text.get_or_init(|| {
        let mut chunks = vec![("prompt".into(), ascii_json(&ctx.prompt))];
        if let Some(extra) = ctx.extra_pnginfo.as_deref().and_then(|e| e.as_object()) {
            for (key, value) in extra {
                chunks.push((key.clone(), ascii_json(value)));
            }
        }
        chunks
    })
}

fn expand_placeholders(prefix: &str, width: usize, height: usize) -> String {
    let now = chrono_like_now();
    prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string())
        .replace("%year%", &now.0.to_string())
        .replace("%month%", &format!("{:02}", now.1))
        .replace("%day%", &format!("{:02}", now.2))
        .replace("%hour%", &format!("{:02}", now.3))
        .replace("%minute%", &format!("{:02}", now.4))
        .replace("%second%", &format!("{:02}", now.5))
}

/// (year, month, day, hour, minute, second) in UTC, from the civil-from-days algorithm; a date
/// crate for six numbers is not worth the dependency.
fn chrono_like_now() -> (i64, u32, u32, u32, u32, u32) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// The last counter written per folder and name. ComfyUI scans the folder before every save; with
/// thousands of images in it (a graph with a save on every node) that scan made a prompt's run
/// time quadratic. The folder is scanned once per name now; the remembered counter is used while
/// the file it would name is not there (so a file written by someone else is never overwritten:
/// its presence sends the next save back to a scan).
static COUNTERS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<(PathBuf, String), u64>>,
> = std::sync::LazyLock::new(Default::default);

fn remember_counter(dir: &Path, name: &str, last: u64) {
    COUNTERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((dir.to_path_buf(), name.to_owned()), last);
}

/// The counter for the next save of `<name>_NNNNN_…` in `dir`: after the last one this server
/// wrote there when its file is still free, else 1 + the highest on disk.
fn next_counter(dir: &Path, name: &str, extension: &str) -> u64 {
    let known = COUNTERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(dir.to_path_buf(), name.to_owned()))
        .copied();
    match known {
        Some(last)
            if !dir
                .join(format!("{name}_{:05}_.{extension}", last + 1))
                .exists() =>
        {
            last + 1
        }
        _ => scan_counter(dir, name),
    }
}

/// 1 + the highest counter among files named `<name>_NNNNN_…` in `dir`.
fn scan_counter(dir: &Path, name: &str) -> u64 {
    let mut highest = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let Some(rest) = file.strip_prefix(name).and_then(|r| r.strip_prefix('_')) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if digits.len() >= 5 && rest[digits.len()..].starts_with('_') {
                if let Ok(n) = digits.parse::<u64>() {
                    highest = highest.max(n);
                }
            }
        }
    }
    highest + 1
}

/// JSON with every non-ASCII character escaped (`\u00e9`), as Python's `json.dumps` writes it:
/// PNG `tEXt` chunks must be Latin-1, and ComfyUI's readers expect this form.
fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    // Outside string literals JSON is ASCII, so escaping every non-ASCII char is always valid.
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Writes 8-bit pixels as PNG with `tEXt` chunks; the error is a sentence without the path
/// (the caller names the file as the client sees it).
pub fn write_png(
    path: &Path,
    bytes: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    text_chunks: &[(String, String)],
    compression: png::Compression,
) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let (w, h) = (
        u32::try_from(width).map_err(|_| "image too wide".to_string())?,
        u32::try_from(height).map_err(|_| "image too tall".to_string())?,
    );
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(match channels {
        1 => png::ColorType::Grayscale,
        2 => png::ColorType::GrayscaleAlpha,
        3 => png::ColorType::Rgb,
        _ => png::ColorType::Rgba,
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(compression);
    for (key, value) in text_chunks {
        encoder
            .add_text_chunk(key.clone(), value.clone())
            .map_err(|e| format!("cannot add text chunk {key}: {e}"))?;
    }
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(bytes).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// Encodes 8-bit RGB pixels as PNG in memory (previews).
pub fn encode_png(bytes: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        if let Ok(mut writer) = encoder.write_header() {
            let _ = writer.write_image_data(bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_continues_after_highest() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "ComfyUI_00001_.png",
            "ComfyUI_00007_.png",
            "ComfyUI_x_00009_.png",
            "Other_00020_.png",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        assert_eq!(next_counter(dir.path(), "ComfyUI", "png"), 8);
        assert_eq!(next_counter(dir.path(), "New", "png"), 1);
    }

    #[test]
    fn the_remembered_counter_is_used_while_its_file_is_free() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a_00003_.png"), b"").unwrap();
        assert_eq!(next_counter(dir.path(), "a", "png"), 4);
        remember_counter(dir.path(), "a", 4);
        // Files this server did not write are not rescanned for...
        std::fs::write(dir.path().join("a_00001_.png"), b"").unwrap();
        assert_eq!(next_counter(dir.path(), "a", "png"), 5);
        // ...unless one takes the next name: then the folder is scanned again.
        std::fs::write(dir.path().join("a_00005_.png"), b"").unwrap();
        std::fs::write(dir.path().join("a_00009_.png"), b"").unwrap();
        assert_eq!(next_counter(dir.path(), "a", "png"), 10);
    }

    #[test]
    fn metadata_json_is_ascii_and_round_trips() {
        let value = serde_json::json!({"text": "café 🌄", "n": 1});
        let text = ascii_json(&value);
        assert!(text.is_ascii(), "{text}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            value
        );
    }

    #[test]
    fn date_placeholders_expand() {
        let s = expand_placeholders("img_%width%x%height%_%year%", 64, 32);
        assert!(s.starts_with("img_64x32_20"), "{s}");
    }
}
