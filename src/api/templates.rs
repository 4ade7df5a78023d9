//! `/templates/*`: ComfyUI's core workflow templates. ComfyUI serves them from the
//! `comfyui-workflow-templates` package; without it, `/templates/…` falls through to the
//! frontend's own files. Weft has no such package, so: a file under the served frontend's
//! `templates/` folder is served; otherwise the template index (`index.json`,
//! `index.{locale}.json`) is an empty list and the search options (`fuse_options.json`) `null`,
//! which the frontend reads as "no templates" and "default search"; any other file is 404.

use actix_files::NamedFile;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value as Json};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::paths::{self, PathError};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/{file:.*}", web::get().to(template_file));
}

/// What Weft answers for a template file it does not have: `Some` for the index and the search
/// options, `None` (404) for the rest.
fn stand_in(file: &str) -> Option<Json> {
    let is_index = file == "index.json"
        || file
            .strip_prefix("index.")
            .and_then(|rest| rest.strip_suffix(".json"))
            .is_some_and(|locale| {
                !locale.is_empty()
                    && locale
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
    if is_index {
        Some(json!([]))
    } else if file == "fuse_options.json" {
        Some(Json::Null)
    } else if file == "index_logo.json" {
        // Providers' logos by name: none.
        Some(json!({}))
    } else {
        None
    }
}

/// `GET /templates/{file}`.
async fn template_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let file = path.into_inner();
    if let Some(root) = &state.config.web_root {
        let (subfolder, name) = file.rsplit_once('/').unwrap_or(("", file.as_str()));
        match paths::resolve_existing(&root.join("templates"), subfolder, name) {
            Ok(Some(found)) => {
                let served = NamedFile::open_async(&found)
                    .await
                    .map_err(|e| ApiError::NotFound(e.to_string()))?;
                return Ok(served.into_response(&req));
            }
            // A symlink out of the folder is not served.
            Ok(None) | Err(PathError::Empty(_) | PathError::Escapes(_)) => {}
            Err(e) => return Err(ApiError::BadRequest(e.to_string())),
        }
    }
    match stand_in(&file) {
        Some(body) => Ok(HttpResponse::Ok().json(body)),
        None => Err(ApiError::NotFound(format!(
            "no workflow template file '{file}': Weft has no workflow templates installed"
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_index_in_any_locale_is_empty() {
        use super::stand_in;
        use serde_json::json;
        assert_eq!(stand_in("index.json"), Some(json!([])));
        assert_eq!(stand_in("index.zh-TW.json"), Some(json!([])));
        assert_eq!(stand_in("fuse_options.json"), Some(json!(null)));
        assert_eq!(stand_in("index_logo.json"), Some(json!({})));
        assert_eq!(stand_in("index..json"), None);
        assert_eq!(stand_in("index.schema/x.json"), None);
        assert_eq!(stand_in("default.json"), None);
    }
}
