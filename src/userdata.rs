//! The user folder, ComfyUI's `user/<user>/` (Weft has one user, `default`): the frontend's
//! settings (`comfy.settings.json`), its other files (`user.css`, templates, …) and, as its
//! `workflows/` folder, the workflow library.
//!
//! One store, two views: a `.json` path under `workflows/` *is* a library workflow (SQLite, with
//! versions; `store::WorkflowRow::file` is its path under `workflows/`), so a save through
//! `/userdata` adds a version and a workflow saved in the library is listed and opened through
//! `/userdata`. Every other path is a plain file, written atomically. Workflow files found on disk
//! under `workflows/` (a ComfyUI user folder given with `--user-directory`, files copied in) are
//! copied into the library at start, once per file and content, and left where they are; the
//! routes never read them.
//!
//! Every path a client gives goes through `paths` (no `..`, no absolute paths, no symlinks out of
//! the user's folder). File IO runs on the blocking pool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::paths::{self, PathError};
use crate::store::{FileImport, FileMove, FileSave, Store, StoreError, WorkflowRow};
use crate::wire::userdata::{FileInfo, TreeEntry, TreeKind};

/// The one user of a single-user server, as in ComfyUI without `--multi-user`.
pub const DEFAULT_USER: &str = "default";
/// The settings file in the user's folder.
pub const SETTINGS_FILE: &str = "comfy.settings.json";
/// The folder whose `.json` files are the workflow library.
pub const WORKFLOWS: &str = "workflows";

/// Why a user-folder operation failed; each names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// A path that leaves the user's folder, is absolute or contains `..`.
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The target exists and `overwrite` was false.
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, UserDataError>;

/// What `GET /userdata/{file}` serves.
pub enum Stored {
    /// A library workflow: its current content, byte for byte.
    Workflow(WorkflowRow),
    /// A plain file (its real path, inside the user's folder).
    File(PathBuf),
}

/// A checked path inside the user's folder, as its parts (no `.`, `..` or empty parts).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UserPath {
    given: String,
    parts: Vec<String>,
}

impl UserPath {
    fn parse(given: &str) -> Result<UserPath> {
        let joined = paths::join_relative(Path::new(""), given)?;
        let parts = joined
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(UserPath {
            given: given.to_owned(),
            parts,
        })
    }

    /// A path that names a file (not the folder itself).
    fn parse_file(given: &str) -> Result<UserPath> {
        let path = UserPath::parse(given)?;
        if path.parts.is_empty() {
            return Err(UserDataError::BadRequest(format!(
                "'{given}' does not name a file in the user folder"
            )));
        }
        Ok(path)
    }

    fn joined(&self) -> String {
        self.parts.join("/")
    }

    /// The folder part and the file name, for `paths::resolve_existing`/`resolve_new`.
    fn split(&self) -> (String, &str) {
        let (name, folder) = self.parts.split_last().expect("a file path has parts");
        (folder.join("/"), name)
    }

    /// Its path under `workflows/` when it is a library workflow: a `.json` file there.
    fn library_file(&self) -> Option<String> {
        library_file(&self.parts)
    }
}

fn library_file(parts: &[String]) -> Option<String> {
    match parts {
        [first, rest @ ..]
            if first == WORKFLOWS
                && !rest.is_empty()
                && rest
                    .last()
                    .is_some_and(|n| n.to_ascii_lowercase().ends_with(".json")) =>
        {
            Some(rest.join("/"))
        }
        _ => None,
    }
}

/// A workflow's name from its file: the file name without `.json`.
fn workflow_name(file: &str) -> String {
    let name = file.rsplit('/').next().unwrap_or(file);
    match name.len().checked_sub(5) {
        Some(cut) if name.is_char_boundary(cut) && name[cut..].eq_ignore_ascii_case(".json") => {
            name[..cut].to_owned()
        }
        _ => name.to_owned(),
    }
}

/// The file a library workflow named `name` gets under `workflows/` (`/` and `\` and control
/// characters become `_`; then `.json`).
pub fn workflow_file_name(name: &str) -> String {
    let clean: String = name
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let clean = if clean.is_empty() || clean == "." || clean == ".." {
        "workflow".to_owned()
    } else {
        clean
    };
    format!("{clean}.json")
}

fn library_path(file: &str) -> String {
    format!("{WORKFLOWS}/{file}")
}

fn row_info(row: &WorkflowRow) -> FileInfo {
    FileInfo {
        path: library_path(&row.file),
        size: row.content.len() as u64,
        modified: row.updated_at,
        created: row.created_at,
    }
}

fn millis(time: std::io::Result<SystemTime>) -> i64 {
    time.ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn disk_info(path: String, meta: &std::fs::Metadata) -> FileInfo {
    FileInfo {
        path,
        size: meta.len(),
        modified: millis(meta.modified()),
        // ComfyUI's `getctime`; where the file system keeps no creation time, the last change.
        created: millis(meta.created().or_else(|_| meta.modified())),
    }
}

fn io_error(doing: &str, path: &Path, e: std::io::Error) -> UserDataError {
    if e.kind() == std::io::ErrorKind::InvalidFilename {
        // A name too long for the file system: the request's fault, said without the path.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        return UserDataError::BadRequest(format!(
            "cannot {doing} '{name}': the file system refuses the name ({e})"
        ));
    }
    tracing::warn!("cannot {doing} {}: {e}", path.display());
    UserDataError::Io(format!("cannot {doing} {}: {e}", path.display()))
}

/// The body of a library workflow file: UTF-8 text that is a JSON object.
fn workflow_text(given: &str, body: Vec<u8>) -> Result<String> {
    let text = String::from_utf8(body).map_err(|_| {
        UserDataError::BadRequest(format!(
            "'{given}' is a workflow in the library and must be a JSON object; the body is not UTF-8 text"
        ))
    })?;
    match serde_json::from_str::<Json>(&text) {
        Ok(Json::Object(_)) => Ok(text),
        Ok(_) => Err(UserDataError::BadRequest(format!(
            "'{given}' is a workflow in the library and must be a JSON object"
        ))),
        Err(e) => Err(UserDataError::BadRequest(format!(
            "'{given}' is a workflow in the library and must be a JSON object: {e}"
        ))),
    }
}

/// Writes `data` to `path` through a temporary file in the same folder, so a reader never sees
/// half a file. With `overwrite` false an existing file is left alone (`Exists`), atomically:
/// the temporary file is hard-linked to the name, which fails if it is taken.
fn write_atomic(path: &Path, data: &[u8], overwrite: bool, shown: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".weft-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io_error("create a file in", dir, e))?;
    temporary
        .write_all(data)
        .and_then(|_| temporary.as_file().sync_all())
        .map_err(|e| io_error("write", temporary.path(), e))?;
    if overwrite {
        temporary
            .persist(path)
            .map_err(|e| io_error("write", path, e.error))?;
        return Ok(());
    }
    match std::fs::hard_link(temporary.path(), path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(UserDataError::Exists(
            format!("'{shown}' already exists in the user folder"),
        )),
        // A file system without hard links: check, then rename.
        Err(_) if path.exists() => Err(UserDataError::Exists(format!(
            "'{shown}' already exists in the user folder"
        ))),
        Err(_) => temporary
            .persist_noclobber(path)
            .map(drop)
            .map_err(|e| io_error("write", path, e.error)),
    }
}

/// Files and folders under `dir` (`rel`: their path from the folder listed). Symlinks are
/// followed only to places inside `root`, and folders reached through one are not entered.
fn walk(
    root: &Path,
    dir: &Path,
    rel: &str,
    recurse: bool,
    hidden: bool,
    out: &mut Vec<(String, bool, std::fs::Metadata)>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !hidden && name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let linked = kind.is_symlink();
        if linked && !path.canonicalize().is_ok_and(|real| real.starts_with(root)) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if meta.is_dir() {
            out.push((child.clone(), true, meta));
            if recurse && !linked {
                walk(root, &path, &child, recurse, hidden, out);
            }
        } else if meta.is_file() {
            out.push((child, false, meta));
        }
    }
}

/// The user folder of a server, with the workflow library as its `workflows/`.
pub struct UserFiles {
    /// The user directory (`--user-directory`), holding `users.json` and one folder per user.
    dir: PathBuf,
    /// The folder of the one user, `<dir>/default`.
    root: PathBuf,
    store: Store,
    /// Held while the settings or `users.json` are read, changed and written back, so two
    /// concurrent changes do not lose one another.
    rewrite: Arc<Mutex<()>>,
}

impl UserFiles {
    pub fn new(dir: &Path, store: Store) -> UserFiles {
        UserFiles {
            dir: dir.to_path_buf(),
            root: dir.join(DEFAULT_USER),
            store,
            rewrite: Arc::new(Mutex::new(())),
        }
    }

    /// The user's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the user's folder exists (`migrated` in `GET /users`).
    pub fn migrated(&self) -> bool {
        self.root.is_dir()
    }

    async fn blocking<R: Send + 'static>(
        work: impl FnOnce() -> Result<R> + Send + 'static,
    ) -> Result<R> {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| UserDataError::Io(format!("a blocking task failed: {e}")))?
    }

    /// The real path of `root` when it exists (None: nothing is stored yet).
    fn real_root(root: &Path) -> Option<PathBuf> {
        root.canonicalize().ok()
    }

    /// The user folder's real path and `folder`'s inside it, each `None` when not there (yet).
    fn locate(root: &Path, folder: &UserPath) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
        let real_root = Self::real_root(root);
        let on_disk = match &real_root {
            Some(_) => paths::resolve_existing_any(root, &folder.joined())?,
            None => None,
        };
        Ok((real_root, on_disk))
    }

    /// `POST /users` on a single-user server, as ComfyUI does without `--multi-user`: the name
    /// is checked and recorded in `users.json` under a new id, which is returned (the server
    /// still serves only `default`).
    pub async fn add_user(&self, name: &str) -> Result<String> {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(UserDataError::BadRequest("username not provided".into()));
        }
        if name.starts_with("__") {
            return Err(UserDataError::BadRequest(
                "System User prefix not allowed".into(),
            ));
        }
        let mut id = String::new();
        let mut dash = false;
        for c in name.chars() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                id.push(c);
                dash = false;
            } else if !dash {
                id.push('-');
                dash = true;
            }
        }
        if id.starts_with("__") {
            return Err(UserDataError::BadRequest(
                "System User prefix not allowed".into(),
            ));
        }
        let id = format!("{id}_{}", uuid::Uuid::new_v4());
        let file = self.dir.join("users.json");
        let lock = Arc::clone(&self.rewrite);
        let dir = self.dir.clone();
        Self::blocking(move || {
            let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut users = match std::fs::read(&file) {
                Ok(bytes) => match serde_json::from_slice::<Json>(&bytes) {
                    Ok(Json::Object(users)) => users,
                    _ => {
                        return Err(UserDataError::Io(format!(
                            "{} is not a JSON object; it is left as it is",
                            file.display()
                        )))
                    }
                },
                Err(_) => Map::new(),
            };
            users
                .entry(DEFAULT_USER)
                .or_insert_with(|| Json::from(DEFAULT_USER));
            if users.values().any(|v| v.as_str() == Some(name.as_str())) {
                return Err(UserDataError::BadRequest("Duplicate username.".into()));
            }
            users.insert(id.clone(), Json::from(name));
            std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
            let text = serde_json::to_vec(&users).expect("a map serialises");
            write_atomic(&file, &text, true, "users.json")?;
            Ok(id)
        })
        .await
    }

    fn read_settings(file: &Path) -> Result<(Map<String, Json>, bool)> {
        match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice::<Json>(&bytes) {
                Ok(Json::Object(settings)) => Ok((settings, false)),
                _ => {
                    tracing::error!("the user settings file is corrupted: {}", file.display());
                    Ok((Map::new(), true))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Map::new(), false)),
            Err(e) => Err(io_error("read", file, e)),
        }
    }

    /// The user's settings (`{}` when there are none, or when the file is not a JSON object,
    /// as ComfyUI answers). Like ComfyUI, this creates the user's folder.
    pub async fn settings(&self) -> Result<Map<String, Json>> {
        let root = self.root.clone();
        Self::blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| io_error("create", &root, e))?;
            Self::read_settings(&root.join(SETTINGS_FILE)).map(|(settings, _)| settings)
        })
        .await
    }

    /// Changes the settings with `change` and writes them back (atomically, indented by four
    /// spaces as ComfyUI writes them). A corrupt settings file is kept beside, renamed, rather
    /// than overwritten.
    pub async fn change_settings(
        &self,
        change: impl FnOnce(&mut Map<String, Json>) + Send + 'static,
    ) -> Result<()> {
        let root = self.root.clone();
        let lock = Arc::clone(&self.rewrite);
        Self::blocking(move || {
            let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
            std::fs::create_dir_all(&root).map_err(|e| io_error("create", &root, e))?;
            let file = root.join(SETTINGS_FILE);
            let (mut settings, corrupt) = Self::read_settings(&file)?;
            if corrupt {
                let kept = root.join(format!(
                    "{SETTINGS_FILE}.corrupt-{}",
                    millis(Ok(SystemTime::now()))
                ));
                std::fs::rename(&file, &kept).map_err(|e| io_error("set aside", &file, e))?;
                tracing::warn!("kept the corrupt settings file as {}", kept.display());
            }
            change(&mut settings);
            let mut text = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut text, formatter);
            serde::Serialize::serialize(&settings, &mut serializer)
                .map_err(|e| UserDataError::Io(e.to_string()))?;
            write_atomic(&file, &text, true, SETTINGS_FILE)
        })
        .await
    }

    /// `GET /userdata?dir=…`: the files under `dir` (recursively with `recurse`), with their
    /// paths relative to `dir`, sorted. Names starting with `.` are left out, as ComfyUI's glob
    /// does. A folder that does not exist yet lists empty.
    pub async fn list(&self, dir: &str, recurse: bool) -> Result<Vec<FileInfo>> {
        let folder = UserPath::parse(dir)?;
        let workflows = self.store.workflow_files().await?;
        let root = self.root.clone();
        Self::blocking(move || {
            let (real_root, on_disk) = Self::locate(&root, &folder)?;
            let mut files = Vec::new();
            if let (Some(real_root), Some(real)) = (&real_root, &on_disk) {
                let mut found = Vec::new();
                walk(real_root, real, "", recurse, false, &mut found);
                for (rel, is_dir, meta) in found {
                    let mut parts = folder.parts.clone();
                    parts.extend(rel.split('/').map(str::to_owned));
                    if !is_dir && library_file(&parts).is_none() {
                        files.push(disk_info(rel, &meta));
                    }
                }
            }
            for workflow in &workflows {
                let mut parts = vec![WORKFLOWS.to_owned()];
                parts.extend(workflow.file.split('/').map(str::to_owned));
                let Some(rest) = parts.strip_prefix(folder.parts.as_slice()) else {
                    continue;
                };
                if rest.is_empty()
                    || (!recurse && rest.len() > 1)
                    || rest.iter().any(|p| p.starts_with('.'))
                {
                    continue;
                }
                files.push(FileInfo {
                    path: rest.join("/"),
                    size: workflow.size as u64,
                    modified: workflow.updated_at,
                    created: workflow.created_at,
                });
            }
            // ComfyUI answers 404 for a folder that does not exist yet; its frontend asks for
            // `workflows/` and `subgraphs/` on a new user's first load and reads 404 as empty.
            // An empty list says the same without an error on every first visit.
            files.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(files)
        })
        .await
    }

    /// `GET /v2/userdata?path=…`: every file and folder under `path` (recursively), with paths
    /// relative to the user's folder, folders first, then by name ignoring case.
    pub async fn tree(&self, path: &str) -> Result<Vec<TreeEntry>> {
        let folder = UserPath::parse(path)?;
        let workflows = self.store.workflow_files().await?;
        let root = self.root.clone();
        Self::blocking(move || {
            let (real_root, on_disk) = Self::locate(&root, &folder)?;
            let prefix = |rel: &str| {
                let base = folder.joined();
                match (base.is_empty(), rel.is_empty()) {
                    (true, _) => rel.to_owned(),
                    (false, true) => base,
                    (false, false) => format!("{base}/{rel}"),
                }
            };
            let mut is_file = on_disk.as_ref().is_some_and(|p| !p.is_dir());
            let mut exists = folder.parts.is_empty() || on_disk.is_some();
            let mut entries: Vec<TreeEntry> = Vec::new();
            let mut folders = std::collections::BTreeSet::new();
            if let (Some(real_root), Some(real)) = (&real_root, &on_disk) {
                let mut found = Vec::new();
                if real.is_dir() {
                    walk(real_root, real, "", true, true, &mut found);
                }
                for (rel, is_dir, meta) in found {
                    let full = prefix(&rel);
                    let name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
                    let parts: Vec<String> = full.split('/').map(str::to_owned).collect();
                    if is_dir {
                        folders.insert(full.clone());
                        entries.push(TreeEntry {
                            name,
                            path: full,
                            kind: TreeKind::Directory,
                            size: None,
                            modified: None,
                        });
                    } else if library_file(&parts).is_none() {
                        let modified = meta
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map(|d| d.as_secs_f64());
                        entries.push(TreeEntry {
                            name,
                            path: full,
                            kind: TreeKind::File,
                            size: Some(meta.len()),
                            modified,
                        });
                    }
                }
            }
            for workflow in &workflows {
                let mut parts = vec![WORKFLOWS.to_owned()];
                parts.extend(workflow.file.split('/').map(str::to_owned));
                let Some(rest) = parts.strip_prefix(folder.parts.as_slice()) else {
                    continue;
                };
                exists = true;
                if rest.is_empty() {
                    is_file = true;
                    continue;
                }
                // The folders between the one listed and the workflow.
                for depth in folder.parts.len() + 1..parts.len() {
                    let full = parts[..depth].join("/");
                    if folders.insert(full.clone()) {
                        entries.push(TreeEntry {
                            name: parts[depth - 1].clone(),
                            path: full,
                            kind: TreeKind::Directory,
                            size: None,
                            modified: None,
                        });
                    }
                }
                entries.push(TreeEntry {
                    name: parts.last().cloned().unwrap_or_default(),
                    path: parts.join("/"),
                    kind: TreeKind::File,
                    size: Some(workflow.size as u64),
                    modified: Some(workflow.updated_at as f64 / 1000.0),
                });
            }
            if !exists {
                return Err(UserDataError::NotFound(format!(
                    "no folder '{}' in the user folder",
                    folder.given
                )));
            }
            if is_file {
                return Err(UserDataError::BadRequest(format!(
                    "'{}' is a file, not a folder",
                    folder.given
                )));
            }
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            entries.sort_by_key(|e| (e.kind != TreeKind::Directory, e.name.to_lowercase()));
            Ok(entries)
        })
        .await
    }

    /// The file `file` for `GET /userdata/{file}`.
    pub async fn open(&self, file: &str) -> Result<Stored> {
        let path = UserPath::parse_file(file)?;
        if let Some(library) = path.library_file() {
            return match self.store.workflow_by_file(&library).await? {
                Some(row) => Ok(Stored::Workflow(row)),
                None => Err(UserDataError::NotFound(format!(
                    "no file '{file}' in the user folder"
                ))),
            };
        }
        let root = self.root.clone();
        Self::blocking(move || {
            let found = match Self::real_root(&root) {
                Some(_) => {
                    let (folder, name) = path.split();
                    paths::resolve_existing(&root, &folder, name)?
                }
                None => None,
            };
            found.map(Stored::File).ok_or_else(|| {
                UserDataError::NotFound(format!("no file '{}' in the user folder", path.given))
            })
        })
        .await
    }

    /// What the frontend reads when a known file of the user folder is not there yet: the
    /// node-templates list (`comfy.templates.json`, an empty JSON list) and the user's stylesheet
    /// (`user.css`, empty). ComfyUI answers 404 for them; an empty file means the same to its
    /// frontend without a failed request (and a stylesheet served as JSON) on every load.
    pub fn default_content(file: &str) -> Option<(&'static str, &'static str)> {
        match UserPath::parse(file).ok()?.parts.as_slice() {
            [name] if name == "comfy.templates.json" => Some(("application/json", "[]")),
            [name] if name == "user.css" => Some(("text/css", "")),
            _ => None,
        }
    }

    /// Whether `file` is the user's stylesheet (`user.css`, served inline, as ComfyUI does).
    pub fn is_user_css(file: &str) -> bool {
        UserPath::parse(file).is_ok_and(|p| p.parts == ["user.css"])
    }

    /// `POST /userdata/{file}`: stores `body` as `file`; with `overwrite` false an existing
    /// file is refused (`Exists`). A library workflow gets a new version (or is created).
    pub async fn save(&self, file: &str, body: Vec<u8>, overwrite: bool) -> Result<FileInfo> {
        let path = UserPath::parse_file(file)?;
        if let Some(library) = path.library_file() {
            let content = workflow_text(file, body)?;
            let id = uuid::Uuid::new_v4().to_string();
            return match self
                .store
                .save_workflow_file(&id, &library, &workflow_name(&library), &content, overwrite)
                .await?
            {
                FileSave::Created(row) | FileSave::Updated(row) => Ok(row_info(&row)),
                FileSave::Exists => Err(UserDataError::Exists(format!(
                    "'{file}' already exists in the user folder"
                ))),
            };
        }
        let root = self.root.clone();
        Self::blocking(move || Self::write_file(&root, &path, &body, overwrite)).await
    }

    fn write_file(root: &Path, path: &UserPath, data: &[u8], overwrite: bool) -> Result<FileInfo> {
        std::fs::create_dir_all(root).map_err(|e| io_error("create", root, e))?;
        let (folder, name) = path.split();
        let target = paths::resolve_new(root, &folder, name)?;
        if target.is_dir() {
            return Err(UserDataError::BadRequest(format!(
                "'{}' is a folder in the user folder",
                path.given
            )));
        }
        write_atomic(&target, data, overwrite, &path.given)?;
        let meta = std::fs::metadata(&target).map_err(|e| io_error("read", &target, e))?;
        Ok(disk_info(path.joined(), &meta))
    }

    /// `DELETE /userdata/{file}`. Deleting a library workflow deletes it from the library,
    /// with its versions.
    pub async fn delete(&self, file: &str) -> Result<()> {
        let path = UserPath::parse_file(file)?;
        let missing = || UserDataError::NotFound(format!("no file '{file}' in the user folder"));
        if let Some(library) = path.library_file() {
            return match self.store.delete_workflow_file(&library).await? {
                true => Ok(()),
                false => Err(missing()),
            };
        }
        let root = self.root.clone();
        let missing_file = missing();
        Self::blocking(move || {
            if Self::real_root(&root).is_none() {
                return Err(missing_file);
            }
            let (folder, name) = path.split();
            let found = paths::resolve_existing(&root, &folder, name)?.ok_or(missing_file)?;
            std::fs::remove_file(&found).map_err(|e| io_error("delete", &found, e))
        })
        .await
    }

    /// `POST /userdata/{file}/move/{dest}`: renames `file` to `dest`, replacing `dest` when
    /// `overwrite` is true. Within `workflows/` a workflow keeps its id and history and takes
    /// the new file name as its name. A plain `.json` file moved into `workflows/` becomes a
    /// library workflow (it must be a JSON object); a workflow moved out of it becomes a plain
    /// file with its current content, and leaves the library.
    pub async fn move_file(&self, file: &str, dest: &str, overwrite: bool) -> Result<FileInfo> {
        let from = UserPath::parse_file(file)?;
        let to = UserPath::parse_file(dest)?;
        let missing = || UserDataError::NotFound(format!("no file '{file}' in the user folder"));
        let taken = || UserDataError::Exists(format!("'{dest}' already exists in the user folder"));
        let root = self.root.clone();
        match (from.library_file(), to.library_file()) {
            (Some(source), Some(target)) => {
                match self
                    .store
                    .move_workflow_file(&source, &target, &workflow_name(&target), overwrite)
                    .await?
                {
                    FileMove::Moved(row) => Ok(row_info(&row)),
                    FileMove::NoSource => Err(missing()),
                    FileMove::Exists => Err(taken()),
                }
            }
            (None, None) => {
                let (missing, taken) = (missing(), taken());
                Self::blocking(move || {
                    if Self::real_root(&root).is_none() {
                        return Err(missing);
                    }
                    let (folder, name) = from.split();
                    let source = paths::resolve_existing(&root, &folder, name)?.ok_or(missing)?;
                    let (folder, name) = to.split();
                    let target = paths::resolve_new(&root, &folder, name)?;
                    if target != source {
                        if target.is_dir() {
                            return Err(UserDataError::BadRequest(format!(
                                "'{}' is a folder in the user folder",
                                to.given
                            )));
                        }
                        if !overwrite {
                            match std::fs::hard_link(&source, &target) {
                                Ok(()) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                                    return Err(taken)
                                }
                                Err(_) if target.exists() => return Err(taken),
                                Err(_) => {
                                    std::fs::rename(&source, &target)
                                        .map_err(|e| io_error("move", &source, e))?;
                                }
                            }
                            if source.exists() {
                                std::fs::remove_file(&source)
                                    .map_err(|e| io_error("delete", &source, e))?;
                            }
                        } else {
                            std::fs::rename(&source, &target)
                                .map_err(|e| io_error("move", &source, e))?;
                        }
                    }
                    let meta =
                        std::fs::metadata(&target).map_err(|e| io_error("read", &target, e))?;
                    Ok(disk_info(to.joined(), &meta))
                })
                .await
            }
            (None, Some(target)) => {
                // A plain file into the library: stored there first, then removed from disk.
                let (folder, name) = from.split();
                let name = name.to_owned();
                let missing = missing();
                let root_for_read = root.clone();
                let (source, body) = Self::blocking(move || {
                    if Self::real_root(&root_for_read).is_none() {
                        return Err(missing);
                    }
                    let source =
                        paths::resolve_existing(&root_for_read, &folder, &name)?.ok_or(missing)?;
                    let body = std::fs::read(&source).map_err(|e| io_error("read", &source, e))?;
                    Ok((source, body))
                })
                .await?;
                let content = workflow_text(dest, body)?;
                let id = uuid::Uuid::new_v4().to_string();
                let row = match self
                    .store
                    .save_workflow_file(&id, &target, &workflow_name(&target), &content, overwrite)
                    .await?
                {
                    FileSave::Created(row) | FileSave::Updated(row) => row,
                    FileSave::Exists => return Err(taken()),
                };
                Self::blocking(move || {
                    std::fs::remove_file(&source).map_err(|e| io_error("delete", &source, e))
                })
                .await?;
                Ok(row_info(&row))
            }
            (Some(source), None) => {
                // A workflow out of the library: written to disk first, then deleted there.
                let row = self
                    .store
                    .workflow_by_file(&source)
                    .await?
                    .ok_or_else(missing)?;
                let content = row.content.into_bytes();
                let info =
                    Self::blocking(move || Self::write_file(&root, &to, &content, overwrite))
                        .await
                        .map_err(|e| match e {
                            UserDataError::Exists(_) => taken(),
                            other => other,
                        })?;
                self.store.delete_workflow_file(&source).await?;
                Ok(info)
            }
        }
    }

    /// Copies the workflow files found under the user's `workflows/` folder into the library
    /// (each file and content once; see the module's notes). Files that are not a JSON object
    /// are named in the log and left out. Returns how many workflows were added or updated.
    pub async fn import_workflow_files(&self) -> Result<usize> {
        let folder = self.root.join(WORKFLOWS);
        let found = Self::blocking(move || {
            let Ok(real) = folder.canonicalize() else {
                return Ok(Vec::new());
            };
            let mut entries = Vec::new();
            walk(&real, &real, "", true, true, &mut entries);
            let mut files = Vec::new();
            for (rel, is_dir, _) in entries {
                let mut parts = vec![WORKFLOWS.to_owned()];
                parts.extend(rel.split('/').map(str::to_owned));
                if is_dir || library_file(&parts).is_none() {
                    continue;
                }
                let path = real.join(&rel);
                match std::fs::read(&path) {
                    Ok(bytes) => files.push((rel, bytes)),
                    Err(e) => tracing::warn!("cannot read {}: {e}", path.display()),
                }
            }
            Ok(files)
        })
        .await?;
        let mut changed = 0;
        for (file, bytes) in found {
            let shown = library_path(&file);
            let sha256 = hex::encode(Sha256::digest(&bytes));
            let content = match workflow_text(&shown, bytes) {
                Ok(content) => content,
                Err(e) => {
                    tracing::warn!("not imported into the workflow library: {e}");
                    continue;
                }
            };
            let id = uuid::Uuid::new_v4().to_string();
            match self
                .store
                .import_workflow_file(&id, &file, &workflow_name(&file), &content, &sha256)
                .await?
            {
                FileImport::Created(_) => {
                    tracing::info!("imported {shown} into the workflow library");
                    changed += 1;
                }
                FileImport::NewVersion(row) => {
                    tracing::info!(
                        "{shown} changed on disk: saved as version {} in the workflow library",
                        row.version
                    );
                    changed += 1;
                }
                FileImport::Unchanged | FileImport::AlreadyImported => {}
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_paths_are_json_files_under_workflows() {
        let parse = |p: &str| UserPath::parse(p).unwrap().library_file();
        assert_eq!(parse("workflows/a.json").as_deref(), Some("a.json"));
        assert_eq!(
            parse("workflows/./sub//b.JSON").as_deref(),
            Some("sub/b.JSON")
        );
        assert_eq!(parse("workflows/a.txt"), None);
        assert_eq!(parse("workflows"), None);
        assert_eq!(parse("other/workflows/a.json"), None);
        assert!(UserPath::parse("../x").is_err());
        assert!(UserPath::parse("/etc/passwd").is_err());
        assert!(UserPath::parse_file(".").is_err());
    }

    #[test]
    fn names_and_files() {
        assert_eq!(workflow_name("sub/My Flow.json"), "My Flow");
        assert_eq!(workflow_name("x.JSON"), "x");
        assert_eq!(workflow_file_name(" a/b\\c "), "a_b_c.json");
        assert_eq!(workflow_file_name(".."), "workflow.json");
    }
}
