//! Read-only information: `/object_info`, `/system_stats`, `/models`, `/embeddings`,
//! `/extensions`, `/features`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value as Json};

use crate::api::error::ApiError;
use crate::api::{blocking, AppState};
use crate::engine::device::{compute_dtype, gpu_memory};
use crate::paths::MODEL_FOLDERS;
use crate::wire::object_info::node_info;

/// `GET /object_info`.
pub async fn object_info(state: web::Data<AppState>) -> HttpResponse {
    let state = state.into_inner();
    let body = web::block(move || {
        let dirs = state.exec.dirs();
        let map: Map<String, Json> = state
            .exec
            .registry()
            .specs()
            .map(|spec| (spec.class_type.to_owned(), node_info(spec, dirs)))
            .collect();
        Json::Object(map)
    })
    .await
    .unwrap_or_else(|_| json!({}));
    HttpResponse::Ok().json(body)
}

/// `GET /object_info/{class}`: `{}` when unknown, still 200.
pub async fn object_info_one(state: web::Data<AppState>, path: web::Path<String>) -> HttpResponse {
    let class = path.into_inner();
    let mut map = Map::new();
    if let Some(spec) = state.exec.registry().spec(&class) {
        map.insert(class, node_info(spec, state.exec.dirs()));
    }
    HttpResponse::Ok().json(Json::Object(map))
}

/// `GET /docs/{class}/{locale}.md`: the node's help page, written from its declaration (in
/// English whatever the locale: the declarations are).
pub async fn node_docs(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (class, file) = path.into_inner();
    match (state.exec.registry().spec(&class), file.ends_with(".md")) {
        (Some(spec), true) => HttpResponse::Ok()
            .content_type("text/markdown; charset=utf-8")
            .body(crate::wire::node_docs::markdown(spec)),
        _ => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("no help page for {class}/{file}")),
    }
}

/// Total and available memory in bytes, from `/proc/meminfo` where there is one.
fn memory() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// `GET /system_stats`.
pub async fn system_stats(state: web::Data<AppState>) -> HttpResponse {
    let (total, free) = memory();
    let (_, cache_used, cache_budget, _) = state.exec.cache_state();
    let models = state.exec.model_stats();
    let (device, weights) = state.exec.compute();
    let compute = compute_dtype(device, weights.unwrap_or(candle_core::DType::F32));
    let name_of = |d: candle_core::DType| format!("{d:?}").to_lowercase();
    let (vram_total, vram_free) = gpu_memory(device).unwrap_or((total, free));
    // ComfyUI names Apple GPUs as torch does ("mps"); the `weft` block uses `--device`'s names.
    let (name, kind, index, weft_name) = match device.location() {
        candle_core::DeviceLocation::Cpu => ("cpu".to_owned(), "cpu", Json::Null, "cpu".to_owned()),
        candle_core::DeviceLocation::Cuda { gpu_id } => (
            format!("cuda:{gpu_id}"),
            "cuda",
            json!(gpu_id),
            format!("cuda:{gpu_id}"),
        ),
        candle_core::DeviceLocation::Metal { gpu_id } => (
            format!("mps:{gpu_id}"),
            "mps",
            json!(gpu_id),
            format!("metal:{gpu_id}"),
        ),
    };
    HttpResponse::Ok().json(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": concat!("weft-", env!("CARGO_PKG_VERSION")),
            "required_frontend_version": null,
            "installed_templates_version": null,
            "required_templates_version": null,
            "python_version": "none (Weft is a Rust binary)",
            "pytorch_version": "none (candle)",
            "embedded_python": false,
            "argv": std::env::args().collect::<Vec<_>>(),
        },
        "devices": [{
            "name": name,
            "type": kind,
            "index": index,
            "vram_total": vram_total,
            "vram_free": vram_free,
            "torch_vram_total": cache_budget,
            "torch_vram_free": cache_budget.saturating_sub(cache_used),
        }],
        // Weft addition: what the model manager and the output cache hold.
        "weft": {
            "device": weft_name,
            "dtype": name_of(compute),
            "weight_dtype": weights.map_or_else(|| "stored".to_owned(), name_of),
            "models_loaded": models.models,
            "model_bytes": models.bytes,
            "model_budget_bytes": models.budget,
            "model_offloaded_bytes": models.offloaded,
            "cache_bytes": cache_used,
            "cache_budget_bytes": cache_budget,
            "memory_limit_bytes": models.memory.limit,
            "memory_limit_source": models.memory.source.to_string(),
            "memory_available_bytes": models.memory.available,
        },
    }))
}

/// `GET /models`: the model folder names.
pub async fn models() -> HttpResponse {
    HttpResponse::Ok().json(MODEL_FOLDERS)
}

/// `GET /models/{folder}`: files in a model folder; 404 for an unknown folder.
pub async fn models_in(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let folder = path.into_inner();
    let files = blocking(move || {
        state
            .exec
            .dirs()
            .list_models(&folder)
            .ok_or_else(|| ApiError::NotFound(format!("no model folder named '{folder}'")))
    })
    .await?;
    Ok(HttpResponse::Ok().json(files))
}

/// `GET /embeddings`: embedding names without extension.
pub async fn embeddings(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let files = blocking(move || Ok(state.exec.dirs().list_models("embeddings"))).await?;
    let names: Vec<String> = files
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            f.rsplit_once('.')
                .map_or(f.clone(), |(stem, _)| stem.to_owned())
        })
        .collect();
    Ok(HttpResponse::Ok().json(names))
}

/// `GET /extensions`: Weft loads no frontend extensions.
pub async fn extensions() -> HttpResponse {
    HttpResponse::Ok().json(Vec::<String>::new())
}

/// `GET /features`.
pub async fn features(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "supports_preview_metadata": true,
        "max_upload_size": state.config.max_upload_bytes as f64,
    }))
}
