//! The model browser's routes: `/experiment/models` (folders and the paths they search),
//! `/experiment/models/{folder}` (files with sizes and times), `/experiment/models/preview/…`
//! (an image beside a model file, or a cover image in its safetensors metadata, as WebP), and
//! `/view_metadata/{folder}` (a safetensors file's `__metadata__`).

use std::io::Cursor;
use std::path::Path;

use actix_web::{web, HttpResponse};
use serde_json::Value as Json;

use crate::api::error::ApiError;
use crate::api::{blocking, AppState};
use crate::paths::{ModelLookupError, PathError, MODEL_FOLDERS};
use crate::wire;

/// Largest safetensors header read for `/view_metadata` (ComfyUI's limit).
const METADATA_HEADER_LIMIT: u64 = 1024 * 1024;
/// Largest safetensors header read for cover images (ComfyUI's limit).
const PREVIEW_HEADER_LIMIT: u64 = 8 * 1024 * 1024;

/// `GET /experiment/models`: `[{name, folders}]` for every model folder but `configs`.
pub async fn folders(state: web::Data<AppState>) -> HttpResponse {
    let dirs = state.exec.dirs();
    let folders: Vec<Json> = MODEL_FOLDERS
        .iter()
        .filter(|name| **name != "configs")
        .map(|name| wire::models::model_folder(name, &dirs.model_folders(name).unwrap_or_default()))
        .collect();
    HttpResponse::Ok().json(folders)
}

/// `GET /experiment/models/{folder}`: `[{name, pathIndex, modified, created, size}]`; 404 for an
/// unknown folder.
pub async fn files(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let folder = path.into_inner();
    let entries = blocking(move || {
        state
            .exec
            .dirs()
            .list_model_entries(&folder)
            .ok_or_else(|| ApiError::NotFound(format!("no model folder named '{folder}'")))
    })
    .await?;
    let body: Vec<Json> = entries.iter().map(wire::models::model_file).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /experiment/models/preview/{folder}/{path_index}/{filename}`: the model's preview as WebP
/// (`{stem}.{image}`, `{stem}.preview.{image}`, else the first of the safetensors metadata's
/// `ssmd_cover_images`). 404 when there is none or it is not an image, as in ComfyUI; 400 for a
/// `path_index` or `filename` that names no place in the folder.
pub async fn preview(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (folder, path_index, filename) = path.into_inner();
    let path_index = path_index.parse::<usize>().map_err(|_| {
        ApiError::BadRequest(format!(
            "path_index must be a whole number (an index into the folder's paths), got '{path_index}'"
        ))
    })?;
    let webp = blocking(move || {
        let previews = state
            .exec
            .dirs()
            .model_previews(&folder, path_index, &filename)
            .map_err(|e| match e {
                ModelLookupError::UnknownFolder(_) => ApiError::NotFound(e.to_string()),
                ModelLookupError::PathIndex { .. } | ModelLookupError::Name(_) => {
                    ApiError::BadRequest(e.to_string())
                }
            })?;
        let image = match previews.images.first() {
            Some(file) => crate::images::open(file).ok(),
            None => previews.safetensors.as_deref().and_then(cover_image),
        };
        let image = image
            .ok_or_else(|| ApiError::NotFound(format!("no preview image for '{filename}'")))?;
        let mut out = Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::WebP)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(out.into_inner())
    })
    .await?;
    Ok(HttpResponse::Ok().content_type("image/webp").body(webp))
}

/// A safetensors file's JSON header (tensor entries and `__metadata__`); `None` when the file is
/// shorter than its length field, the header is longer than `max_len` bytes, or it is not JSON
/// (ComfyUI's `safetensors_header` with `max_size`).
fn safetensors_header(path: &Path, max_len: u64) -> std::io::Result<Option<Json>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut length = [0u8; 8];
    if file.read_exact(&mut length).is_err() {
        return Ok(None);
    }
    let length = u64::from_le_bytes(length);
    if length > max_len {
        return Ok(None);
    }
    let mut header = Vec::new();
    file.take(length).read_to_end(&mut header)?;
    if header.len() as u64 != length {
        return Ok(None);
    }
    Ok(serde_json::from_slice(&header).ok())
}

/// The first of the `ssmd_cover_images` (a JSON list of base64 images in `__metadata__`).
fn cover_image(safetensors: &Path) -> Option<image::DynamicImage> {
    use base64::Engine as _;
    let header = safetensors_header(safetensors, PREVIEW_HEADER_LIMIT).ok()??;
    let covers: Vec<String> =
        serde_json::from_str(header["__metadata__"]["ssmd_cover_images"].as_str()?).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(covers.first()?)
        .ok()?;
    crate::images::from_memory(&bytes).ok()
}

#[derive(serde::Deserialize)]
pub struct MetadataQuery {
    filename: Option<String>,
}

/// `GET /view_metadata/{folder}?filename=…`: the `__metadata__` of a `.safetensors` model file.
/// 404, as in ComfyUI, when the folder, the file or its metadata is missing, or the file is not
/// safetensors; 400 for a name that leaves the folder.
pub async fn view_metadata(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<MetadataQuery>,
) -> Result<HttpResponse, ApiError> {
    let folder = path.into_inner();
    let filename = query
        .into_inner()
        .filename
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::NotFound("filename is required".into()))?;
    let metadata = blocking(move || {
        let dirs = state.exec.dirs();
        let bases = dirs
            .model_folders(&folder)
            .ok_or_else(|| ApiError::NotFound(format!("no model folder named '{folder}'")))?;
        if let Some(base) = bases.first() {
            crate::paths::join_relative(base, &filename)
                .map_err(|e: PathError| ApiError::BadRequest(format!("filename: {e}")))?;
        }
        if !filename.ends_with(".safetensors") {
            return Err(ApiError::NotFound(format!(
                "'{filename}' is not a .safetensors file; only those carry metadata"
            )));
        }
        let file = dirs
            .model_file(&folder, &filename)
            .map_err(ApiError::NotFound)?;
        let header = safetensors_header(&file, METADATA_HEADER_LIMIT)
            .map_err(|e| ApiError::NotFound(format!("cannot read '{filename}': {e}")))?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "'{filename}' has no readable safetensors header of at most 1 MiB"
                ))
            })?;
        header
            .get("__metadata__")
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("'{filename}' has no __metadata__")))
    })
    .await?;
    Ok(HttpResponse::Ok().json(metadata))
}
