//! `POST /upload/mask`: the mask editor's save. The uploaded image's alpha channel replaces the
//! alpha of the original image that `original_ref` names, and the result is stored as a PNG under
//! the upload's name (named as `/upload/image` names files), keeping the original's text chunks
//! (its prompt and workflow).

use std::path::{Path, PathBuf};

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value as Json;

use crate::api::error::ApiError;
use crate::api::files::{read_upload_form, upload_destination, uploaded, write_whole, Destination};
use crate::api::{blocking, AppState};
use crate::paths::{self, DataDirs, FolderType, PathError};

/// `POST /upload/mask`: the `/upload/image` fields plus `original_ref`, a JSON object
/// `{filename, subfolder?, type?}` naming the image the mask belongs to (`type` defaults to
/// `output`; a `filename` ending in ` [input]` etc. names its folder).
pub async fn upload_mask(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut form = read_upload_form(req.headers(), payload, state.config.max_upload_bytes).await?;
    let original_ref = form
        .fields
        .remove("original_ref")
        .ok_or_else(|| ApiError::BadRequest("original_ref is required".into()))?;
    let (folder, subfolder) = (form.folder, form.subfolder.clone());
    let state = state.into_inner();
    let name = blocking(move || {
        let dirs = state.exec.dirs();
        let original = original_path(dirs, &original_ref)?;
        let png = composite(&original, &form.data)?;
        let base = dirs.folder(form.folder);
        match upload_destination(
            base,
            &form.subfolder,
            &form.filename,
            &form.data,
            form.overwrite,
        )? {
            Destination::Same(name) => Ok(name),
            Destination::New(name, path) => write_whole(&path, &png).map(|()| name),
        }
    })
    .await?;
    Ok(uploaded(&name, &subfolder, folder))
}

/// The existing file `original_ref` names.
fn original_path(dirs: &DataDirs, original_ref: &str) -> Result<PathBuf, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("original_ref: {why}"));
    let reference: Json =
        serde_json::from_str(original_ref).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let text = |key: &str| -> Result<Option<&str>, ApiError> {
        match reference.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("{key} must be a string"))),
        }
    };
    if !reference.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    let filename = text("filename")?
        .filter(|f| !f.is_empty())
        .ok_or_else(|| bad("filename is required".into()))?;
    let (filename, annotated) = paths::split_annotation(filename);
    if filename.starts_with('/') || filename.starts_with('\\') || filename.contains("..") {
        return Err(bad(format!("invalid file name '{filename}'")));
    }
    let folder = match annotated {
        Some(folder) => folder,
        None => {
            let name = text("type")?.filter(|t| !t.is_empty()).unwrap_or("output");
            FolderType::parse(name)
                .ok_or_else(|| bad(format!("type must be input, output or temp, got '{name}'")))?
        }
    };
    let subfolder = text("subfolder")?.unwrap_or("");
    let (subfolder, filename) = match filename.rsplit_once('/') {
        Some((dir, file)) if subfolder.is_empty() => (dir.to_owned(), file),
        Some((dir, file)) => (format!("{subfolder}/{dir}"), file),
        None => (subfolder.to_owned(), filename),
    };
    match paths::resolve_existing(dirs.folder(folder), &subfolder, filename) {
        Ok(Some(path)) => Ok(path),
        Ok(None) => Err(bad(format!(
            "no file '{filename}' in {}{}",
            folder.name(),
            if subfolder.is_empty() {
                String::new()
            } else {
                format!("/{subfolder}")
            }
        ))),
        Err(e @ PathError::Escapes(_)) => Err(ApiError::Forbidden(format!("original_ref: {e}"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The original's pixels with the mask's alpha, as a PNG with the original's text chunks.
fn composite(original: &Path, mask: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut pixels = crate::images::open(original)
        .map_err(|e| {
            ApiError::BadRequest(format!("original_ref: the original is not an image: {e}"))
        })?
        .to_rgba8();
    let mask = crate::images::from_memory(mask)
        .map_err(|e| ApiError::BadRequest(format!("image: the mask is not an image: {e}")))?
        .to_rgba8();
    if mask.dimensions() != pixels.dimensions() {
        return Err(ApiError::BadRequest(format!(
            "image: the mask is {}x{} but the original is {}x{}",
            mask.width(),
            mask.height(),
            pixels.width(),
            pixels.height()
        )));
    }
    for (pixel, masked) in pixels.pixels_mut().zip(mask.pixels()) {
        pixel[3] = masked[3];
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, pixels.width(), pixels.height());
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, value) in text_chunks(original)? {
        let latin1 = value.chars().all(|c| (c as u32) < 256);
        let added = if latin1 {
            encoder.add_text_chunk(key, value)
        } else {
            encoder.add_itxt_chunk(key, value)
        };
        added.map_err(|e| ApiError::Internal(format!("cannot add a text chunk: {e}")))?;
    }
    let mut writer = encoder
        .write_header()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    writer
        .write_image_data(pixels.as_raw())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(out)
}

/// A PNG's `tEXt`, `zTXt` and `iTXt` chunks as (keyword, text); none for other formats. Text that
/// inflates past [`MAX_PNG_TEXT_BYTES`](crate::api::png_text::MAX_PNG_TEXT_BYTES) is refused.
fn text_chunks(path: &Path) -> Result<Vec<(String, String)>, ApiError> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(Vec::new());
    };
    match crate::api::png_text::png_text_chunks(std::io::BufReader::new(file)) {
        Ok(chunks) => Ok(chunks),
        Err(crate::api::png_text::PngTextError::NotPng(_)) => Ok(Vec::new()),
        Err(e) => Err(ApiError::BadRequest(format!("original_ref: {e}"))),
    }
}
