//! The user folder's shapes, as ComfyUI's `app/user_manager.py` and `app/app_settings.py` write
//! them: `/users`, the `/userdata` listings, and what saving or moving a file answers.

use serde::Serialize;
use serde_json::{json, Value as Json};

/// `GET /users` of a single-user server (ComfyUI without `--multi-user`): settings are on the
/// server, and `migrated` says whether the user's folder exists yet (until it does, the frontend
/// copies its browser-stored settings over).
pub fn single_user(migrated: bool) -> Json {
    json!({"storage": "server", "migrated": migrated})
}

/// The 400 body of `POST /users`: `{"error": message}`.
pub fn user_error(message: &str) -> Json {
    json!({"error": message})
}

/// A file's details (`full_info=true`): `{path, size, modified, created}`, times in
/// milliseconds since the Unix epoch. `path` is relative to the folder listed, or to the user's
/// folder in what a save or move answers; always with `/`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub modified: i64,
    pub created: i64,
}

/// One entry of `GET /userdata?dir=…`: the relative path; with `split=true` the path followed
/// by its parts (`["a/b.json", "a", "b.json"]`); with `full_info=true` the [`FileInfo`] (which
/// wins over `split`).
pub fn listing_entry(info: FileInfo, full_info: bool, split: bool) -> Json {
    if full_info {
        return json!(info);
    }
    if split {
        let mut parts = vec![Json::from(info.path.as_str())];
        parts.extend(info.path.split('/').map(Json::from));
        return Json::Array(parts);
    }
    Json::from(info.path)
}

/// What `POST /userdata/{file}` and `POST /userdata/{file}/move/{dest}` answer: the file's path
/// under the user's folder, or its [`FileInfo`] with `full_info=true`.
pub fn saved_file(info: FileInfo, full_info: bool) -> Json {
    if full_info {
        json!(info)
    } else {
        Json::from(info.path)
    }
}

/// One entry of `GET /v2/userdata?path=…`: `{name, path, type: "directory"}` or
/// `{name, path, type: "file", size, modified}` (`modified` in seconds, fractional, as Python's
/// `st_mtime`); `path` is relative to the user's folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeEntry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: TreeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<f64>,
}

/// Whether a [`TreeEntry`] is a file or a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeKind {
    Directory,
    File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_comfyuis() {
        let info = FileInfo {
            path: "sub/a.json".into(),
            size: 3,
            modified: 1700000000123,
            created: 1700000000000,
        };
        assert_eq!(
            listing_entry(info.clone(), false, true),
            json!(["sub/a.json", "sub", "a.json"])
        );
        assert_eq!(
            listing_entry(info.clone(), false, false),
            json!("sub/a.json")
        );
        assert_eq!(
            serde_json::to_string(&listing_entry(info.clone(), true, true)).unwrap(),
            r#"{"path":"sub/a.json","size":3,"modified":1700000000123,"created":1700000000000}"#
        );
        assert_eq!(saved_file(info, false), json!("sub/a.json"));
        let dir = TreeEntry {
            name: "sub".into(),
            path: "workflows/sub".into(),
            kind: TreeKind::Directory,
            size: None,
            modified: None,
        };
        assert_eq!(
            serde_json::to_string(&dir).unwrap(),
            r#"{"name":"sub","path":"workflows/sub","type":"directory"}"#
        );
        assert_eq!(
            serde_json::to_string(&single_user(false)).unwrap(),
            r#"{"storage":"server","migrated":false}"#
        );
    }
}
