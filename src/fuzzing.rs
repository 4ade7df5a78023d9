//! Entry points for fuzz targets, one per parser that reads what a client sends: the cargo-fuzz
//! targets in `fuzz/` call these, and `tests/fuzz_corpus.rs` replays the committed corpus and
//! random mutations of it through them on stable Rust. Each takes arbitrary bytes and must
//! return, without panicking and in bounded time and memory, whatever they hold; the errors they
//! meet are the expected outcome and are dropped.

use std::sync::atomic::AtomicU8;
use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::nodes::Registry;
use crate::paths::DataDirs;

pub use crate::engine::fuzzing::{pickle, safetensors_header, torch_zip};

/// The boundary of the multipart bodies [`multipart_upload`] reads.
pub const MULTIPART_BOUNDARY: &str = "weftfuzzboundary";

/// The standard node registry (with the test pack) and data folders in a temporary directory
/// that lives as long as the process: what validation and conversion look names up in.
fn catalog_parts() -> &'static (Registry, DataDirs) {
    static PARTS: OnceLock<(Registry, DataDirs)> = OnceLock::new();
    PARTS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("weft-fuzz-{}", std::process::id()));
        let dirs = DataDirs::new(&root.join("data"), &root.join("models"));
        let _ = dirs.create();
        (Registry::with_test_nodes(), dirs)
    })
}

/// A body as the JSON routes read it (memory checked before parsing), or `None`.
fn json_body(data: &[u8]) -> Option<Json> {
    crate::api::parse_json_body(data).ok()
}

/// `POST /prompt`'s `prompt`: an API-format workflow read and validated against every node.
pub fn api_workflow(data: &[u8]) {
    let Some(body) = json_body(data) else { return };
    let prompt = body.get("prompt").unwrap_or(&body);
    let Ok(workflow) = crate::graph::Workflow::from_api_json(prompt) else {
        return;
    };
    let (registry, dirs) = catalog_parts();
    let _ = crate::graph::validate(&workflow, &registry.catalog(dirs), None);
}

/// An editor-format workflow (`/api/weft/convert`, a dropped file): converted to the API format,
/// and an API prompt converted back to the editor's.
pub fn editor_workflow(data: &[u8]) {
    let Some(body) = json_body(data) else { return };
    let (registry, dirs) = catalog_parts();
    let catalog = registry.catalog(dirs);
    if let Ok(converted) = crate::editor_format::editor_to_api(&body, &catalog) {
        let _ = crate::editor_format::api_to_editor(&converted.prompt, &catalog);
    }
    let _ = crate::editor_format::api_to_editor(&body, &catalog);
}

/// A PNG's text chunks (`/api/weft/convert`, `/upload/mask`'s original), decompressed within
/// their limit, then the embedded workflow as the editor would open it.
pub fn png_metadata(data: &[u8]) {
    let Ok(chunks) = crate::api::png_text::png_text_chunks(data) else {
        return;
    };
    for (key, value) in chunks {
        if key == "workflow" || key == "prompt" {
            editor_workflow(value.as_bytes());
        }
    }
}

/// An upload's multipart body (`/upload/image`, `/upload/mask`), boundary
/// [`MULTIPART_BOUNDARY`], arriving in chunks whose size the first byte picks.
pub fn multipart_upload(data: &[u8]) {
    use actix_web::http::header::{self, HeaderMap, HeaderValue};
    use actix_web::web::Bytes;
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("multipart/form-data; boundary=weftfuzzboundary"),
    );
    let pieces: Vec<Result<Bytes, actix_web::error::PayloadError>> = body
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let body = futures_util::stream::iter(pieces);
    let _ = runtime.block_on(crate::api::files::read_upload_form(&headers, body, 1 << 20));
}

/// Bytes from a client's socket: WebSocket frames as the server's codec decodes them, and each
/// text frame as the first message, the one the server reads (feature flags).
pub fn websocket_frames(data: &[u8]) {
    use actix_codec::Decoder;
    let mut codec = actix_http::ws::Codec::new();
    let mut buffer = actix_web::web::BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        if let actix_http::ws::Frame::Text(text) = frame {
            if let Ok(text) = std::str::from_utf8(&text) {
                let _ = crate::api::ws::feature_flags(text, &AtomicU8::new(0), 100 << 20);
            }
        }
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/` and the corpus replay name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("api_workflow", api_workflow),
    ("editor_workflow", editor_workflow),
    ("safetensors_header", safetensors_header),
    ("pickle", pickle),
    ("png_metadata", png_metadata),
    ("multipart_upload", multipart_upload),
    ("websocket_frames", websocket_frames),
];
