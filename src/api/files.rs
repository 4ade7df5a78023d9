//! `/upload/image` and `/view`: files in the input, output and temp folders; the upload form and
//! naming that `/upload/mask` (`api::mask`) shares.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use actix_files::NamedFile;
use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_multipart::{Multipart, MultipartError};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::Stream;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;
use crate::api::{blocking, AppState};
use crate::paths::{self, FolderType, PathError};

/// An image upload as ComfyUI's upload routes take it: the `image` file part and the `type`,
/// `subfolder` and `overwrite` fields, plus any other text field by name.
pub(crate) struct UploadForm {
    /// The file's name (its last path part only).
    pub filename: String,
    pub data: Vec<u8>,
    pub folder: FolderType,
    pub subfolder: String,
    pub overwrite: bool,
    /// Other text fields (`original_ref` for masks).
    pub fields: HashMap<String, String>,
}

/// The request body, noting when it has ended (see [`next_part`]).
struct Watched<S> {
    body: S,
    ended: Rc<Cell<bool>>,
}

impl<S: Stream + Unpin> Stream for Watched<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let next = Pin::new(&mut self.body).poll_next(cx);
        if let Poll::Ready(None) = next {
            self.ended.set(true);
        }
        next
    }
}

/// The next item of a multipart stream, or a 400 if the body has ended and the stream still
/// waits: actix-multipart waits forever for more data when a body ends inside a part after a
/// line that begins like the boundary but is not it (found by fuzzing: the request hung until
/// the client gave up). Every part is read to its end before the next is asked for, so nothing
/// else could wake it.
async fn next_part<T>(
    stream: &mut (impl Stream<Item = Result<T, MultipartError>> + Unpin),
    ended: &Cell<bool>,
) -> Result<Option<T>, ApiError> {
    let malformed =
        |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("malformed multipart body: {e}"));
    let next = std::future::poll_fn(|cx| match Pin::new(&mut *stream).poll_next(cx) {
        Poll::Pending if ended.get() => Poll::Ready(Some(Err(None))),
        next => next.map(|item| item.map(|r| r.map_err(Some))),
    })
    .await;
    match next {
        None => Ok(None),
        Some(Ok(item)) => Ok(Some(item)),
        Some(Err(Some(e))) => Err(malformed(&e)),
        Some(Err(None)) => Err(malformed(&"the body ended inside a part")),
    }
}

/// Reads an upload's multipart body (`headers` give its boundary), refusing more than `limit`
/// bytes in all.
pub(crate) async fn read_upload_form(
    headers: &header::HeaderMap,
    body: impl Stream<Item = Result<web::Bytes, PayloadError>> + Unpin + 'static,
    limit: usize,
) -> Result<UploadForm, ApiError> {
    let ended = Rc::new(Cell::new(false));
    let mut payload = Multipart::new(
        headers,
        Watched {
            body,
            ended: Rc::clone(&ended),
        },
    );
    let mut image: Option<(String, Vec<u8>)> = None;
    let mut fields = HashMap::new();
    let mut total = 0usize;
    while let Some(mut field) = next_part(&mut payload, &ended).await? {
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_owned);
        let mut data = Vec::new();
        while let Some(chunk) = next_part(&mut field, &ended).await? {
            total += chunk.len();
            if total > limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "upload is larger than the limit of {} MB",
                    limit / (1024 * 1024)
                )));
            }
            data.extend_from_slice(&chunk);
        }
        if name == "image" {
            let filename = filename
                .filter(|f| !f.is_empty())
                .ok_or_else(|| ApiError::BadRequest("the image part has no file name".into()))?;
            image = Some((filename, data));
        } else {
            fields.insert(name, String::from_utf8_lossy(&data).trim().to_owned());
        }
    }
    let (filename, data) =
        image.ok_or_else(|| ApiError::BadRequest("no 'image' file part in the upload".into()))?;
    let folder_type = fields.remove("type").unwrap_or_default();
    let folder = FolderType::parse(if folder_type.is_empty() {
        "input"
    } else {
        &folder_type
    })
    .ok_or_else(|| {
        ApiError::BadRequest(format!(
            "type must be input, output or temp, got '{folder_type}'"
        ))
    })?;
    let subfolder = fields.remove("subfolder").unwrap_or_default();
    let overwrite = fields
        .remove("overwrite")
        .is_some_and(|o| matches!(o.as_str(), "true" | "1"));
    // Browsers may send a path; only its last part names the file.
    let filename = filename
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .to_owned();
    if filename.is_empty() || filename == "." || filename == ".." {
        return Err(ApiError::BadRequest("invalid file name".into()));
    }
    check_file_name(&filename)?;
    Ok(UploadForm {
        filename,
        data,
        folder,
        subfolder,
        overwrite,
        fields,
    })
}

/// The longest file name, in bytes, that file systems take (Linux's `NAME_MAX`, macOS's, NTFS's
/// in UTF-16 units).
pub(crate) const MAX_FILE_NAME_BYTES: usize = 255;

/// An uploaded file's name must fit the file system and hold no control characters.
fn check_file_name(name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_FILE_NAME_BYTES {
        return Err(ApiError::BadRequest(format!(
            "image: the file name is {} bytes long; at most {MAX_FILE_NAME_BYTES} are allowed",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "image: the file name contains control characters".into(),
        ));
    }
    Ok(())
}

/// Where an upload goes.
pub(crate) enum Destination {
    /// A file of that name already holds the uploaded bytes; it is reused as it is, as ComfyUI
    /// does, and nothing is written.
    Same(String),
    /// Write the file here, under this name.
    New(String, PathBuf),
}

/// The name an upload gets: its own, or, unless `overwrite`, `stem (n).ext` for the first `n`
/// that is free. `uploaded` is what ComfyUI compares with an existing file of the same name.
pub(crate) fn upload_destination(
    base: &Path,
    subfolder: &str,
    filename: &str,
    uploaded: &[u8],
    overwrite: bool,
) -> Result<Destination, ApiError> {
    let path_error = |e: PathError| ApiError::BadRequest(e.to_string());
    let mut name = filename.to_owned();
    let mut path = paths::resolve_new(base, subfolder, &name).map_err(path_error)?;
    if !overwrite {
        let digest = Sha256::digest(uploaded);
        let (stem, ext) = match filename.rsplit_once('.') {
            Some((stem, ext)) => (stem.to_owned(), format!(".{ext}")),
            None => (filename.to_owned(), String::new()),
        };
        let mut counter = 1;
        while path.exists() {
            if path.is_file()
                && std::fs::read(&path).is_ok_and(|existing| Sha256::digest(&existing) == digest)
            {
                return Ok(Destination::Same(name));
            }
            name = format!("{stem} ({counter}){ext}");
            check_file_name(&name)?;
            path = paths::resolve_new(base, subfolder, &name).map_err(path_error)?;
            counter += 1;
        }
    } else if path.is_dir() {
        return Err(ApiError::Conflict(format!(
            "image: '{name}' is a folder; overwrite replaces files only"
        )));
    }
    Ok(Destination::New(name, path))
}

/// Writes to a temporary name and renames, so a failed upload never leaves half a file. The
/// temporary name is short and hidden (listings leave it out) whatever the file's name.
pub(crate) fn write_whole(path: &Path, data: &[u8]) -> Result<(), ApiError> {
    let temporary = path.with_file_name(format!(".upload-{}.tmp", uuid::Uuid::new_v4().simple()));
    let failed = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::InvalidFilename => {
            ApiError::BadRequest(format!("image: the file system refuses the name: {e}"))
        }
        std::io::ErrorKind::IsADirectory | std::io::ErrorKind::DirectoryNotEmpty => {
            ApiError::Conflict("image: the name is taken by a folder".into())
        }
        _ => ApiError::Internal(e.to_string()),
    };
    std::fs::write(&temporary, data).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        failed(e)
    })
}

/// The body ComfyUI's upload routes answer with.
pub(crate) fn uploaded(name: &str, subfolder: &str, folder: FolderType) -> HttpResponse {
    HttpResponse::Ok().json(json!({"name": name, "subfolder": subfolder, "type": folder.name()}))
}

/// `POST /upload/image`: multipart fields `image` (the file), `type`, `subfolder`, `overwrite`.
pub async fn upload_image(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let form = read_upload_form(req.headers(), payload, state.config.max_upload_bytes).await?;
    let (folder, subfolder) = (form.folder, form.subfolder.clone());
    let base = state.exec.dirs().folder(folder).to_path_buf();
    let name = blocking(move || {
        let UploadForm {
            filename,
            data,
            subfolder,
            overwrite,
            ..
        } = form;
        match upload_destination(&base, &subfolder, &filename, &data, overwrite)? {
            Destination::Same(name) => Ok(name),
            Destination::New(name, path) => write_whole(&path, &data).map(|()| name),
        }
    })
    .await?;
    Ok(uploaded(&name, &subfolder, folder))
}

#[derive(serde::Deserialize)]
pub struct ViewQuery {
    filename: Option<String>,
    #[serde(rename = "type")]
    folder_type: Option<String>,
    subfolder: Option<String>,
    preview: Option<String>,
    channel: Option<String>,
}

/// `GET /view`: a file from input, output or temp; never anything outside them.
pub async fn view(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ViewQuery>,
) -> Result<HttpResponse, ApiError> {
    let Some(filename) = query.filename.as_deref() else {
        return Err(ApiError::NotFound("filename is required".into()));
    };
    let (filename, annotated) = paths::split_annotation(filename);
    if filename.starts_with('/') || filename.starts_with('\\') || filename.contains("..") {
        return Err(ApiError::BadRequest(format!(
            "invalid file name '{filename}'"
        )));
    }
    let folder = match (annotated, query.folder_type.as_deref()) {
        (Some(folder), _) => folder,
        (None, None) | (None, Some("")) => FolderType::Output,
        (None, Some(name)) => FolderType::parse(name).ok_or_else(|| {
            ApiError::BadRequest(format!("type must be input, output or temp, got '{name}'"))
        })?,
    };
    let subfolder = query.subfolder.as_deref().unwrap_or("");
    let filename = Path::new(filename)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let base = state.exec.dirs().folder(folder);
    let path = match paths::resolve_existing(base, subfolder, filename) {
        Ok(Some(path)) => path,
        Ok(None) => {
            return Err(ApiError::NotFound(format!(
                "no file '{filename}' in {}",
                folder.name()
            )))
        }
        Err(PathError::Empty(_)) => return Err(ApiError::NotFound("filename is required".into())),
        Err(e) => return Err(ApiError::Forbidden(e.to_string())),
    };

    if query.channel.is_some() || query.preview.is_some() {
        let channel = query.channel.clone().unwrap_or_else(|| "rgba".into());
        let preview = query.preview.clone();
        let bytes = web::block(move || convert_image(&path, &channel, preview.as_deref()))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
        return Ok(HttpResponse::Ok()
            .content_type(bytes.1)
            .insert_header((header::CONTENT_SECURITY_POLICY, USER_FILE_CSP))
            .body(bytes.0));
    }

    let file = NamedFile::open_async(&path)
        .await
        .map_err(|e| ApiError::NotFound(e.to_string()))?;
    let (mime, disposition) = user_file_type(&path);
    let mut response = file
        .set_content_type(mime)
        .set_content_disposition(ContentDisposition {
            disposition,
            parameters: vec![DispositionParam::Filename(filename.to_owned())],
        })
        .into_response(&req);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(USER_FILE_CSP),
    );
    Ok(response)
}

/// The Content-Security-Policy of every stored file served back (`/view`, `/userdata`): should a
/// browser render one as a page after all, it runs no script, loads nothing, and gets an origin
/// of its own (`sandbox`), so it cannot reach the API.
pub(crate) const USER_FILE_CSP: &str = "default-src 'none'; sandbox";

/// How a stored file is served: raster images, audio and video (which a browser shows but never
/// runs) inline with their type; anything else as a download. SVG and XML keep their type (an SVG
/// still shows in an `<img>`, which runs no script), so only a navigation to them becomes a
/// download; HTML, JavaScript and CSS are typed as bytes, as in ComfyUI.
pub(crate) fn user_file_type(path: &Path) -> (mime_guess::Mime, DispositionType) {
    use mime_guess::mime;
    let guessed = mime_guess::from_path(path).first_or_octet_stream();
    let inline = match guessed.type_() {
        mime::IMAGE => matches!(
            guessed.subtype().as_str(),
            "png"
                | "apng"
                | "jpeg"
                | "gif"
                | "webp"
                | "bmp"
                | "avif"
                | "tiff"
                | "x-icon"
                | "vnd.microsoft.icon"
        ),
        mime::AUDIO | mime::VIDEO => true,
        _ => false,
    };
    if inline {
        return (guessed, DispositionType::Inline);
    }
    let runnable = matches!(
        guessed.subtype().as_str(),
        "html" | "xhtml" | "javascript" | "ecmascript" | "css"
    );
    let mime = if runnable {
        mime::APPLICATION_OCTET_STREAM
    } else {
        guessed
    };
    (mime, DispositionType::Attachment)
}

/// Whether a browser could render a type as a document or run it: HTML, XHTML, SVG, any XML
/// (XSL included), JavaScript, CSS. (`mime` keeps a `+xml` suffix apart from the subtype:
/// `image/svg+xml` has subtype `svg`.)
pub(crate) fn document_like(mime: &mime_guess::Mime) -> bool {
    mime.suffix() == Some(mime_guess::mime::XML)
        || matches!(
            mime.subtype().as_str(),
            "html" | "xhtml" | "svg" | "xml" | "xsl" | "xslt" | "javascript" | "ecmascript" | "css"
        )
}

/// `channel=rgb|a` and `preview=webp|jpeg[;quality]` re-encodings.
fn convert_image(
    path: &Path,
    channel: &str,
    preview: Option<&str>,
) -> Result<(Vec<u8>, &'static str), ApiError> {
    let image = crate::images::open(path)
        .map_err(|e| ApiError::BadRequest(format!("not an image: {e}")))?;
    let mut image = match channel {
        "rgb" => image::DynamicImage::ImageRgb8(image.to_rgb8()),
        "a" => {
            let rgba = image.to_rgba8();
            let mut alpha = image::RgbaImage::new(rgba.width(), rgba.height());
            for (out, px) in alpha.pixels_mut().zip(rgba.pixels()) {
                *out = image::Rgba([0, 0, 0, px[3]]);
            }
            image::DynamicImage::ImageRgba8(alpha)
        }
        _ => image,
    };
    let mut out = Cursor::new(Vec::new());
    match preview.map(|p| p.split(';').collect::<Vec<_>>()) {
        Some(parts) if parts.first() == Some(&"jpeg") && channel != "a" => {
            let quality = parts
                .get(1)
                .and_then(|q| q.parse::<u8>().ok())
                .unwrap_or(90)
                .clamp(1, 100);
            image = image::DynamicImage::ImageRgb8(image.to_rgb8());
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            image
                .write_with_encoder(encoder)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((out.into_inner(), "image/jpeg"))
        }
        Some(_) => {
            // The image crate encodes WebP losslessly only; quality is ignored.
            image
                .write_to(&mut out, image::ImageFormat::WebP)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((out.into_inner(), "image/webp"))
        }
        None => {
            image
                .write_to(&mut out, image::ImageFormat::Png)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((out.into_inner(), "image/png"))
        }
    }
}
