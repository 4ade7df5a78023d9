//! The model browser's shapes (`/experiment/models`, `/internal/folder_paths`).

use std::path::PathBuf;

use serde_json::{json, Map, Value as Json};

use crate::paths::ModelFileEntry;

fn path_strings(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// One model folder in `/experiment/models`: `{name, folders: [paths searched, in order]}`.
pub fn model_folder(name: &str, folders: &[PathBuf]) -> Json {
    json!({"name": name, "folders": path_strings(folders)})
}

/// One model file in `/experiment/models/{folder}`: `{name, pathIndex, modified, created, size}`;
/// times in seconds since the epoch, as Python's `os.path.getmtime` gives them.
pub fn model_file(entry: &ModelFileEntry) -> Json {
    json!({
        "name": entry.name,
        "pathIndex": entry.path_index,
        "modified": entry.modified,
        "created": entry.created,
        "size": entry.size,
    })
}

/// `/internal/folder_paths`: `{folder name: [paths searched, in order]}`.
pub fn folder_paths(folders: &[(&str, Vec<PathBuf>)]) -> Json {
    let map: Map<String, Json> = folders
        .iter()
        .map(|(name, paths)| ((*name).to_owned(), json!(path_strings(paths))))
        .collect();
    Json::Object(map)
}
