//! Where Weft keeps files, and the one place that turns user-given names into paths.
//!
//! Every path a request or a workflow names goes through `resolve` (or `resolve_new`), which refuses
//! absolute paths, `..`, and symlinks that lead out of the folder. Imports no other Weft layer.

use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The model folders ComfyUI lists under `/models`, in its order; the folder name on disk is the same.
pub const MODEL_FOLDERS: &[&str] = &[
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    // The ControlNet preprocessors' networks (`lllyasviel/Annotators` files), found at any depth
    // so comfyui_controlnet_aux's `ckpts/` tree can be linked or configured here as it is.
    "annotators",
];

/// File extensions that count as model weights in model-folder listings.
pub const MODEL_EXTENSIONS: &[&str] = &["safetensors", "sft", "ckpt", "pt", "pth", "bin", "pkl"];

/// Image file extensions LoadImage lists.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

/// The three data folders a client may name with `type=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderType {
    Input,
    Output,
    Temp,
}

impl FolderType {
    pub fn parse(name: &str) -> Option<FolderType> {
        match name {
            "input" => Some(FolderType::Input),
            "output" => Some(FolderType::Output),
            "temp" => Some(FolderType::Temp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FolderType::Input => "input",
            FolderType::Output => "output",
            FolderType::Temp => "temp",
        }
    }
}

/// The folders of one Weft instance.
#[derive(Debug, Clone)]
pub struct DataDirs {
    pub root: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub temp: PathBuf,
    pub models: PathBuf,
    /// ComfyUI's user directory (`--user-directory`): one folder per user (`default/`) with the
    /// frontend's settings and files; see `crate::userdata`.
    pub user: PathBuf,
    /// More folders per model folder name, from ComfyUI's `extra_model_paths.yaml`
    /// ([`read_extra_model_paths`]); `first`: searched before `models/` (`is_default: true`).
    pub extra_models: Vec<ExtraModelFolder>,
}

/// One folder that `extra_model_paths.yaml` adds to a model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraModelFolder {
    /// The model folder name it adds to (`checkpoints`, `loras`, …).
    pub folder: String,
    pub path: PathBuf,
    /// Searched before Weft's own folder (the section said `is_default: true`).
    pub first: bool,
}

/// The canonical name of a model folder, with ComfyUI's older names (`clip`, `unet`) mapped.
fn canonical_folder(name: &str) -> &str {
    match name {
        "clip" => "text_encoders",
        "unet" => "diffusion_models",
        other => other,
    }
}

/// Reads ComfyUI's `extra_model_paths.yaml`: sections (`a111:`, `comfyui:`, any name) with an
/// optional `base_path` (relative to the file's folder; `~` expanded), an optional `is_default`,
/// and model folder names whose values are one path per line, relative to `base_path`. Folder
/// names Weft has no models for are skipped (and named in the second list).
pub fn read_extra_model_paths(file: &Path) -> Result<(Vec<ExtraModelFolder>, Vec<String>), String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .map_err(|e| format!("{shown} is not valid YAML: {e}"))?;
    let yaml_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let expand = |p: &str| -> PathBuf {
        match (p.strip_prefix("~/"), &home) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => PathBuf::from(p),
        }
    };
    let mut folders = Vec::new();
    let mut skipped = Vec::new();
    let Some(sections) = docs.first().and_then(|d| d.as_hash()) else {
        return Ok((folders, skipped));
    };
    for (section, body) in sections {
        let section = section.as_str().unwrap_or("?");
        let entries = body
            .as_hash()
            .ok_or_else(|| format!("{shown}: section '{section}' is not a mapping"))?;
        let text_of = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .and_then(|(_, v)| v.as_str())
        };
        let base = text_of("base_path").map(|b| yaml_dir.join(expand(b.trim())));
        let first = entries
            .iter()
            .any(|(k, v)| k.as_str() == Some("is_default") && v.as_bool() == Some(true));
        for (key, value) in entries {
            let Some(name) = key.as_str() else { continue };
            if name == "base_path" || name == "is_default" {
                continue;
            }
            let folder = canonical_folder(name);
            if !MODEL_FOLDERS.contains(&folder) {
                skipped.push(format!("{section}.{name}"));
                continue;
            }
            let Some(lines) = value.as_str() else {
                return Err(format!("{shown}: '{section}.{name}' is not a path"));
            };
            for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let path = expand(line);
                let path = match &base {
                    Some(base) => base.join(path),
                    None => yaml_dir.join(path),
                };
                folders.push(ExtraModelFolder {
                    folder: folder.to_owned(),
                    path,
                    first,
                });
            }
        }
    }
    Ok((folders, skipped))
}

/// Why a user-given name cannot be used as a path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path '{0}' is absolute; give a name relative to the folder")]
    Absolute(String),
    #[error("path '{0}' contains '..'")]
    ParentComponent(String),
    #[error("path '{0}' leads outside its folder")]
    Escapes(String),
    #[error("path '{0}' is empty")]
    Empty(String),
    #[error("path '{0}': '{1}' is a file, not a folder")]
    NotAFolder(String, String),
    /// The operating system's reason, without the server's path.
    #[error("cannot create the folder '{0}': {1}")]
    CannotCreate(String, String),
}

/// A model file in the model browser's listing (`/experiment/models/{folder}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFileEntry {
    /// `sub/name.ext`, relative to the folder it was found in.
    pub name: String,
    /// Which of the model folder's paths ([`DataDirs::model_folders`]) it is in.
    pub path_index: usize,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: f64,
    /// Seconds since the epoch (on Unix the inode's change time, as Python's `getctime`).
    pub created: f64,
}

/// What may show a model in the model browser: images beside it, and the safetensors file whose
/// metadata may hold cover images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelPreviews {
    /// `{stem}.{image}` first, then `{stem}.preview.{image}`, each sorted by name.
    pub images: Vec<PathBuf>,
    /// `{stem}.safetensors` beside them, when there is one.
    pub safetensors: Option<PathBuf>,
}

/// Why a model browser request names no place to look.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelLookupError {
    #[error("no model folder named '{0}'")]
    UnknownFolder(String),
    #[error("path_index {index} is out of range: models/{folder} has {count} path(s), listed by /experiment/models")]
    PathIndex {
        folder: String,
        index: usize,
        count: usize,
    },
    #[error("filename: {0}")]
    Name(#[from] PathError),
}

impl DataDirs {
    /// Lays out the folders under `root` (models may live elsewhere).
    pub fn new(root: &Path, models: &Path) -> DataDirs {
        DataDirs {
            root: root.to_path_buf(),
            input: root.join("input"),
            output: root.join("output"),
            temp: root.join("temp"),
            models: models.to_path_buf(),
            user: root.join("user"),
            extra_models: Vec::new(),
        }
    }

    /// Creates the folders that do not exist yet and empties `temp`, as ComfyUI does at start.
    pub fn create(&self) -> std::io::Result<()> {
        if self.temp.exists() {
            std::fs::remove_dir_all(&self.temp)?;
        }
        for dir in [
            &self.root,
            &self.input,
            &self.output,
            &self.temp,
            &self.models,
            &self.user,
        ] {
            std::fs::create_dir_all(dir)?;
        }
        for folder in MODEL_FOLDERS {
            let _ = std::fs::create_dir_all(self.models.join(folder));
        }
        Ok(())
    }

    pub fn folder(&self, folder: FolderType) -> &Path {
        match folder {
            FolderType::Input => &self.input,
            FolderType::Output => &self.output,
            FolderType::Temp => &self.temp,
        }
    }

    pub fn model_folder(&self, name: &str) -> Option<PathBuf> {
        let name = canonical_folder(name);
        MODEL_FOLDERS
            .contains(&name)
            .then(|| self.models.join(name))
    }

    /// Resolves a model file name (`sub/x.safetensors`) inside the model folder `folder`: the
    /// first of its folders that has it, as ComfyUI's `get_full_path`. The error is a sentence
    /// for the user (the caller names the node and input).
    pub fn model_file(&self, folder: &str, name: &str) -> Result<PathBuf, String> {
        let bases = self
            .model_folders(folder)
            .ok_or_else(|| format!("no model folder named {folder}"))?;
        let (subfolder, file) = name.rsplit_once('/').unwrap_or(("", name));
        for base in &bases {
            match resolve_model(base, subfolder, file) {
                Ok(Some(path)) => return Ok(path),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("model file '{name}' not found in models/{folder}"))
    }

    /// An annotator weight file by its published file name: the first file of that name under
    /// the annotator folders at any depth (`models/annotators/x.pth`, or comfyui_controlnet_aux's
    /// `ckpts/lllyasviel/Annotators/x.pth` linked or configured as `annotators`), shallowest first.
    pub fn annotator_file(&self, file_name: &str) -> Option<PathBuf> {
        self.find_annotator(Some(file_name), |f| f.rsplit('/').next() == Some(file_name))
    }

    /// A file of a Hugging Face repository `repo` (`Intel/dpt-hybrid-midas`) under the annotator
    /// folders at any depth, shallowest first: in a folder laid out as the repository
    /// (`.../Intel/dpt-hybrid-midas/model.safetensors`, comfyui_controlnet_aux's `ckpts/` tree)
    /// or in a hub cache's snapshot (`.../models--Intel--dpt-hybrid-midas/snapshots/<rev>/...`,
    /// where transformers' `from_pretrained` keeps it).
    pub fn annotator_repo_file(&self, repo: &str, file_name: &str) -> Option<PathBuf> {
        let plain = format!("{repo}/{file_name}");
        let cache = format!("models--{}/snapshots/", repo.replace('/', "--"));
        self.find_annotator(None, |f| {
            let in_plain = f == plain || f.ends_with(&format!("/{plain}"));
            let in_cache = f.rsplit_once('/').is_some_and(|(dir, name)| {
                name == file_name
                    && dir
                        .rsplit_once('/')
                        .is_some_and(|(snapshots, _rev)| format!("{snapshots}/").ends_with(&cache))
            });
            in_plain || in_cache
        })
    }

    /// The first file under the annotator folders (relative path, `/`-separated) that `matches`,
    /// shallowest first; `direct` is tried at the top of each folder before walking it.
    fn find_annotator(
        &self,
        direct: Option<&str>,
        matches: impl Fn(&str) -> bool,
    ) -> Option<PathBuf> {
        let mut found: Vec<String> = Vec::new();
        for dir in self.model_folders("annotators")? {
            // The shallowest place wins anyway: skip the walk when the file is right there.
            if let Some(direct) = direct.map(|name| dir.join(name)) {
                if direct.is_file() {
                    return Some(direct);
                }
            }
            let mut files = Vec::new();
            list_files_recursive(&dir, &dir, &mut files, MODEL_EXTENSIONS, 8, true);
            found.clear();
            found.extend(files.into_iter().filter(|f| matches(f)));
            found.sort_by_key(|f| (f.matches('/').count(), f.clone()));
            if let Some(first) = found.first() {
                return Some(dir.join(first));
            }
        }
        None
    }

    /// The folders a model folder name covers, main one first: ComfyUI also reads T2I-Adapters
    /// from `t2i_adapter/`, text encoders from the older `clip/` and diffusion models from
    /// `unet/`, so layouts copied from ComfyUI work unchanged.
    pub fn model_folders(&self, name: &str) -> Option<Vec<PathBuf>> {
        let main = self.model_folder(name)?;
        let extra: &[&str] = match main.file_name().and_then(|n| n.to_str()) {
            Some("controlnet") => &["t2i_adapter"],
            Some("text_encoders") => &["clip"],
            Some("diffusion_models") => &["unet"],
            _ => &[],
        };
        let canonical = canonical_folder(name);
        let added = |first: bool| {
            self.extra_models
                .iter()
                .filter(move |e| e.folder == canonical && e.first == first)
                .map(|e| e.path.clone())
        };
        let mut folders: Vec<PathBuf> = added(true).collect();
        folders.push(main);
        folders.extend(extra.iter().map(|e| self.models.join(e)));
        folders.extend(added(false));
        Some(folders)
    }

    /// Model files under a model folder (and its older or extra names), recursively, as sorted
    /// `sub/name.ext` strings.
    pub fn list_models(&self, folder: &str) -> Option<Vec<String>> {
        let mut files = Vec::new();
        let extensions = model_extensions(folder);
        for dir in self.model_folders(folder)? {
            list_files_recursive(&dir, &dir, &mut files, extensions, 8, true);
        }
        files.sort();
        files.dedup();
        Some(files)
    }

    /// Whether `name` is one of [`DataDirs::list_models`]'s names for `folder`. A plain name
    /// (no hidden `.git`, no `..`, no deeper than the list goes) is looked up where it would be,
    /// a `stat` or two; anything else, and a name not found that way, is looked for in the list.
    /// Validation asks this of every model a prompt names, twice per prompt (at the queue and
    /// at the run), and a LoRA folder may hold thousands of files. (On a file system that
    /// ignores case, a name in another case is found by its path though the list spells it
    /// differently: accepted, and it loads.)
    pub fn has_model(&self, folder: &str, name: &str) -> bool {
        let plain = |name: &str| {
            let parts: Vec<&str> = name.split('/').collect();
            !name.contains('\\')
                && parts.len() <= 9
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && *p != "." && *p != ".." && *p != ".git")
                && has_extension(Path::new(name), model_extensions(folder))
        };
        if plain(name) && self.model_file(folder, name).is_ok() {
            return true;
        }
        self.list_models(folder)
            .is_some_and(|names| names.iter().any(|n| n == name))
    }

    /// Folders under a model folder (and its extra names) holding a `model_index.json`, at any
    /// depth up to 8, as sorted `sub/name` strings (DiffusersLoader's list, as ComfyUI walks
    /// `models/diffusers`).
    pub fn list_pipelines(&self, folder: &str) -> Option<Vec<String>> {
        fn walk(base: &Path, dir: &Path, depth: usize, out: &mut Vec<String>) {
            if dir.join("model_index.json").is_file() {
                if let Some(relative) = dir.strip_prefix(base).ok().and_then(|r| r.to_str()) {
                    if !relative.is_empty() {
                        out.push(relative.replace('\\', "/"));
                    }
                }
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            if depth == 0 {
                return;
            }
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(base, &path, depth - 1, out);
                }
            }
        }
        let mut folders = Vec::new();
        for base in self.model_folders(folder)? {
            walk(&base, &base, 8, &mut folders);
        }
        folders.sort();
        folders.dedup();
        Some(folders)
    }

    /// A folder named by DiffusersLoader's list (`sub/name`) inside the model folder `folder`:
    /// the first of its folders that has it, refusing names that leave it.
    pub fn model_subfolder(&self, folder: &str, name: &str) -> Result<PathBuf, String> {
        let bases = self
            .model_folders(folder)
            .ok_or_else(|| format!("no model folder named {folder}"))?;
        for base in &bases {
            match resolve_existing_any(base, name) {
                Ok(Some(path)) if path.is_dir() => return Ok(path),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("folder '{name}' not found in models/{folder}"))
    }

    /// Image files at the top level of the input folder, sorted (LoadImage's list).
    pub fn list_input_images(&self) -> Vec<String> {
        self.list_input_files(IMAGE_EXTENSIONS)
    }

    /// Files at the top level of the input folder with one of `extensions`, sorted.
    pub fn list_input_files(&self, extensions: &[&str]) -> Vec<String> {
        let mut files = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.input) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_file() && has_extension(&path, extensions) {
                    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                        files.push(name.to_owned());
                    }
                }
            }
        }
        files.sort();
        files
    }
}

impl DataDirs {
    /// The folders whose paths are shown by name, each as given and as its real path, longest
    /// first (so `input` is found before the data folder it is in).
    fn labelled_folders(&self) -> Vec<(String, PathBuf)> {
        let mut folders: Vec<(String, PathBuf)> = vec![
            ("input".into(), self.input.clone()),
            ("output".into(), self.output.clone()),
            ("temp".into(), self.temp.clone()),
            ("user".into(), self.user.clone()),
            ("models".into(), self.models.clone()),
            (String::new(), self.root.clone()),
        ];
        for extra in &self.extra_models {
            folders.push((extra.folder.clone(), extra.path.clone()));
        }
        let real: Vec<(String, PathBuf)> = folders
            .iter()
            .filter_map(|(label, path)| Some((label.clone(), path.canonicalize().ok()?)))
            .collect();
        folders.extend(real);
        folders.sort_by_key(|(_, path)| std::cmp::Reverse(path.as_os_str().len()));
        folders.dedup_by(|a, b| a.1 == b.1);
        folders
    }

    /// A path as a client may see it: relative to its data or model folder, named by the folder
    /// (`input/sub/x.png`, `models/checkpoints/x.safetensors`, `loras/x.safetensors` for a folder
    /// from `extra_model_paths.yaml`); a path in none of them by its file name alone. Never the
    /// server's absolute path.
    pub fn shown(&self, path: &Path) -> String {
        for (label, folder) in self.labelled_folders() {
            if let Ok(rest) = path.strip_prefix(&folder) {
                let rest = rest.to_string_lossy();
                return match (label.is_empty(), rest.is_empty()) {
                    (true, _) => rest.into_owned(),
                    (false, true) => label,
                    (false, false) => format!("{label}/{rest}"),
                };
            }
        }
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `text` with every absolute path of a data or model folder in it replaced as [`shown`]
    /// would show it: for messages that come from code that knows only paths (the engine's load
    /// and memory errors, the operating system's).
    ///
    /// [`shown`]: DataDirs::shown
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (label, folder) in self.labelled_folders() {
            if !folder.is_absolute() {
                continue;
            }
            let folder = folder.to_string_lossy();
            let (with_slash, label_slash) = (
                format!("{folder}{}", std::path::MAIN_SEPARATOR),
                if label.is_empty() {
                    String::new()
                } else {
                    format!("{label}/")
                },
            );
            out = out.replace(&with_slash, &label_slash);
            if !label.is_empty() {
                out = out.replace(folder.as_ref(), &label);
            }
        }
        out
    }

    /// Model files under every path of a model folder, for the model browser: hidden files and
    /// folders (and `.git`) left out, each path's files sorted by name, with their size and times.
    /// `None` for an unknown folder.
    pub fn list_model_entries(&self, folder: &str) -> Option<Vec<ModelFileEntry>> {
        let mut entries = Vec::new();
        for (path_index, dir) in self.model_folders(folder)?.iter().enumerate() {
            let mut names = Vec::new();
            list_files_recursive(dir, dir, &mut names, MODEL_EXTENSIONS, 8, false);
            names.sort();
            for name in names {
                let Ok(metadata) = std::fs::metadata(dir.join(&name)) else {
                    continue;
                };
                entries.push(ModelFileEntry {
                    name,
                    path_index,
                    size: metadata.len(),
                    modified: seconds(metadata.modified().ok()),
                    created: changed_seconds(&metadata),
                });
            }
        }
        Some(entries)
    }

    /// Where the model browser looks for a model's preview: beside `filename` in the model
    /// folder's `path_index`th path. `filename` may have subfolders but not `..` nor a root; the
    /// model itself need not exist.
    pub fn model_previews(
        &self,
        folder: &str,
        path_index: usize,
        filename: &str,
    ) -> Result<ModelPreviews, ModelLookupError> {
        let folders = self
            .model_folders(folder)
            .ok_or_else(|| ModelLookupError::UnknownFolder(folder.to_owned()))?;
        let base = folders
            .get(path_index)
            .ok_or_else(|| ModelLookupError::PathIndex {
                folder: folder.to_owned(),
                index: path_index,
                count: folders.len(),
            })?;
        if filename.is_empty() {
            return Err(PathError::Empty(filename.to_owned()).into());
        }
        let model = join_relative(base, filename)?;
        let (Some(dir), Some(name)) = (model.parent(), model.file_name().and_then(|n| n.to_str()))
        else {
            return Err(PathError::Empty(filename.to_owned()).into());
        };
        let stem = split_extension(name).0;
        let preview_stem = format!("{stem}.preview");
        let mut exact = Vec::new();
        let mut marked = Vec::new();
        let mut safetensors = None;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(candidate) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (candidate_stem, extension) = split_extension(candidate);
            if !path.is_file() {
                continue;
            }
            if candidate_stem == stem && extension.eq_ignore_ascii_case("safetensors") {
                safetensors = Some(path.clone());
            }
            if !has_extension(&path, IMAGE_EXTENSIONS) {
                continue;
            }
            if candidate_stem == stem {
                exact.push(path);
            } else if candidate_stem == preview_stem {
                marked.push(path);
            }
        }
        exact.sort();
        marked.sort();
        exact.extend(marked);
        Ok(ModelPreviews {
            images: exact,
            safetensors,
        })
    }

    /// Visible files at the top level of a data folder, newest first (`/internal/files/{type}`).
    pub fn list_folder_files(&self, folder: FolderType) -> Vec<String> {
        let mut files: Vec<(SystemTime, String)> = std::fs::read_dir(self.folder(folder))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let metadata = std::fs::metadata(entry.path()).ok()?;
                (!name.starts_with('.') && metadata.is_file())
                    .then(|| (metadata.modified().unwrap_or(UNIX_EPOCH), name))
            })
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        files.into_iter().map(|(_, name)| name).collect()
    }
}

/// `("x.preview", "png")` for `x.preview.png`, as Python's `os.path.splitext` (a leading dot
/// does not start an extension).
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if name[..dot].chars().any(|c| c != '.') => (&name[..dot], &name[dot + 1..]),
        _ => (name, ""),
    }
}

fn seconds(time: Option<SystemTime>) -> f64 {
    time.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(unix)]
fn changed_seconds(metadata: &std::fs::Metadata) -> f64 {
    use std::os::unix::fs::MetadataExt;
    metadata.ctime() as f64 + metadata.ctime_nsec() as f64 / 1e9
}

#[cfg(not(unix))]
fn changed_seconds(metadata: &std::fs::Metadata) -> f64 {
    seconds(metadata.created().ok())
}

/// Splits ComfyUI's annotated names: `"x.png [output]"` → (`"x.png"`, Some(Output)).
pub fn split_annotation(name: &str) -> (&str, Option<FolderType>) {
    for folder in [FolderType::Input, FolderType::Output, FolderType::Temp] {
        let suffix = format!(" [{}]", folder.name());
        if let Some(stripped) = name.strip_suffix(&suffix) {
            return (stripped, Some(folder));
        }
    }
    (name, None)
}

/// Checks that `relative` is a plain relative path (no root, no `..`) and joins it to `base`.
pub fn join_relative(base: &Path, relative: &str) -> Result<PathBuf, PathError> {
    let path = Path::new(relative);
    let mut joined = base.to_path_buf();
    for component in path.components() {
        match component {
            Component::Normal(part) => joined.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::ParentComponent(relative.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(relative.to_owned()))
            }
        }
    }
    if relative.contains('\\') && relative.split('\\').any(|p| p == "..") {
        return Err(PathError::ParentComponent(relative.to_owned()));
    }
    Ok(joined)
}

/// Resolves an existing file `subfolder/filename` inside `base`, following symlinks only when the
/// real file is still inside `base`.
pub fn resolve_existing(
    base: &Path,
    subfolder: &str,
    filename: &str,
) -> Result<Option<PathBuf>, PathError> {
    let shown = if subfolder.is_empty() {
        filename.to_owned()
    } else {
        format!("{subfolder}/{filename}")
    };
    if filename.is_empty() {
        return Err(PathError::Empty(shown));
    }
    let dir = join_relative(base, subfolder)?;
    let path = join_relative(&dir, filename)?;
    let Ok(real) = path.canonicalize() else {
        return Ok(None);
    };
    let real_base = base
        .canonicalize()
        .map_err(|_| PathError::Escapes(shown.clone()))?;
    if !real.starts_with(&real_base) {
        return Err(PathError::Escapes(shown));
    }
    Ok(real.is_file().then_some(real))
}

/// Resolves an existing file or folder `relative` inside `base` (`""` or `.`: `base` itself),
/// following symlinks only when the real path is still inside `base`; None when nothing is
/// there (or `base` itself does not exist).
pub fn resolve_existing_any(base: &Path, relative: &str) -> Result<Option<PathBuf>, PathError> {
    let path = join_relative(base, relative)?;
    let Ok(real) = path.canonicalize() else {
        return Ok(None);
    };
    let real_base = base
        .canonicalize()
        .map_err(|_| PathError::Escapes(relative.to_owned()))?;
    if !real.starts_with(&real_base) {
        return Err(PathError::Escapes(relative.to_owned()));
    }
    Ok(Some(real))
}

/// Resolves an existing model file `subfolder/filename` inside the model folder `base`. The name is
/// checked as everywhere (no `..`, no root), but symlinks inside the folder are followed wherever
/// they point: they were put there by whoever runs the server (ComfyUI users link model files and
/// folders from other disks), unlike the names in requests.
pub fn resolve_model(
    base: &Path,
    subfolder: &str,
    filename: &str,
) -> Result<Option<PathBuf>, PathError> {
    if filename.is_empty() {
        return Err(PathError::Empty(format!("{subfolder}/{filename}")));
    }
    let path = join_relative(&join_relative(base, subfolder)?, filename)?;
    Ok(path.is_file().then_some(path))
}

/// Resolves where a new file `subfolder/filename` goes inside `base`, creating the subfolder
/// ([`create_folder_inside`]: nothing is created outside `base`).
pub fn resolve_new(base: &Path, subfolder: &str, filename: &str) -> Result<PathBuf, PathError> {
    let shown = format!("{subfolder}/{filename}");
    if filename.is_empty() || filename.contains('/') || filename.contains('\\') {
        return Err(PathError::Escapes(shown));
    }
    let real_dir = create_folder_inside(base, subfolder)?;
    let path = real_dir.join(filename);
    // A symlink already sitting at the target name must not redirect the write.
    if path.is_symlink() {
        return Err(PathError::Escapes(shown));
    }
    Ok(path)
}

/// Creates the folder `subfolder` inside `base` (which must exist) and returns its real path.
/// Each part is checked before anything is made under it: an existing part (a symlink followed)
/// must be a folder inside `base`, and only then is the next part looked at or created, so a
/// symlink out of the folder leads to an error, never to a folder made outside.
pub fn create_folder_inside(base: &Path, subfolder: &str) -> Result<PathBuf, PathError> {
    join_relative(base, subfolder)?;
    let real_base = base
        .canonicalize()
        .map_err(|e| PathError::CannotCreate(subfolder.to_owned(), e.to_string()))?;
    let mut dir = real_base.clone();
    for component in Path::new(subfolder).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        let next = dir.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(_) => {
                // A dangling symlink does not resolve: it leads nowhere inside.
                let real = next
                    .canonicalize()
                    .map_err(|_| PathError::Escapes(subfolder.to_owned()))?;
                if !real.starts_with(&real_base) {
                    return Err(PathError::Escapes(subfolder.to_owned()));
                }
                if !real.is_dir() {
                    return Err(PathError::NotAFolder(
                        subfolder.to_owned(),
                        part.to_string_lossy().into_owned(),
                    ));
                }
                dir = real;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&next) {
                    Ok(()) => {}
                    // Made by someone else meanwhile: look again, as above.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let real = next
                            .canonicalize()
                            .map_err(|_| PathError::Escapes(subfolder.to_owned()))?;
                        if !real.starts_with(&real_base) || !real.is_dir() {
                            return Err(PathError::Escapes(subfolder.to_owned()));
                        }
                    }
                    Err(e) => {
                        return Err(PathError::CannotCreate(subfolder.to_owned(), e.to_string()))
                    }
                }
                dir = next;
            }
            Err(e) => return Err(PathError::CannotCreate(subfolder.to_owned(), e.to_string())),
        }
    }
    Ok(dir)
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The extensions [`DataDirs::list_models`] lists in `folder`: config files are YAML (or JSON),
/// everything else weights.
fn model_extensions(folder: &str) -> &'static [&'static str] {
    if folder == "configs" {
        &["yaml", "yml", "json"]
    } else {
        MODEL_EXTENSIONS
    }
}

/// Files with one of `extensions` under `dir`, as `/`-joined paths relative to `root`;
/// `hidden`: also names starting with a dot (never `.git`).
fn list_files_recursive(
    root: &Path,
    dir: &Path,
    out: &mut Vec<String>,
    extensions: &[&str],
    depth: usize,
    hidden: bool,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == ".git" || (!hidden && name.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            if depth > 0 {
                list_files_recursive(root, &path, out, extensions, depth - 1, hidden);
            }
        } else if has_extension(&path, extensions) {
            if let Ok(relative) = path.strip_prefix(root) {
                let parts: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn annotator_files_are_found_at_any_depth_shallowest_first() {
        let root = tempfile::tempdir().unwrap();
        let dirs = super::DataDirs::new(root.path(), &root.path().join("models"));
        let annotators = root.path().join("models/annotators");
        let deep = annotators.join("ckpts/lllyasviel/Annotators");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("ControlNetHED.pth"), b"x").unwrap();
        std::fs::write(deep.join("netG.pth"), b"x").unwrap();
        std::fs::write(annotators.join("netG.pth"), b"x").unwrap();
        assert_eq!(
            dirs.annotator_file("ControlNetHED.pth"),
            Some(deep.join("ControlNetHED.pth"))
        );
        assert_eq!(
            dirs.annotator_file("netG.pth"),
            Some(annotators.join("netG.pth"))
        );
        assert_eq!(dirs.annotator_file("sk_model.pth"), None);
        assert_eq!(dirs.annotator_file("Annotators"), None);
    }

    #[test]
    fn repository_files_are_found_in_plain_and_hub_cache_folders() {
        let root = tempfile::tempdir().unwrap();
        let dirs = super::DataDirs::new(root.path(), &root.path().join("models"));
        let annotators = root.path().join("models/annotators");
        let repo = "Intel/dpt-hybrid-midas";
        assert_eq!(dirs.annotator_repo_file(repo, "model.safetensors"), None);
        let cache = annotators.join("hub/models--Intel--dpt-hybrid-midas/snapshots/abc123");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join("model.safetensors"), b"x").unwrap();
        // another repository's file of the same name is not it
        let other = annotators.join("Intel/dpt-large");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("model.safetensors"), b"x").unwrap();
        assert_eq!(
            dirs.annotator_repo_file(repo, "model.safetensors"),
            Some(cache.join("model.safetensors"))
        );
        let plain = annotators.join("ckpts/Intel/dpt-hybrid-midas");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("model.safetensors"), b"x").unwrap();
        assert_eq!(
            dirs.annotator_repo_file(repo, "model.safetensors"),
            Some(plain.join("model.safetensors")),
            "shallower"
        );
    }

    #[test]
    fn a_model_is_found_by_name_exactly_when_the_list_has_it() {
        let root = tempfile::tempdir().unwrap();
        let dirs = super::DataDirs::new(root.path(), &root.path().join("models"));
        let deep = (0..8)
            .map(|i| format!("d{i}"))
            .collect::<Vec<_>>()
            .join("/");
        let files = [
            "loras/a.safetensors",
            "loras/sub/b.SAFETENSORS",
            "loras/.hidden.pt",
            "loras/.git/c.safetensors",
            "loras/d.txt",
            &format!("loras/{deep}/e.safetensors"),
            &format!("loras/{deep}/d8/f.safetensors"),
            "t2i_adapter/g.pth",
            "configs/h.yaml",
            "configs/i.safetensors",
        ];
        for file in files {
            let path = root.path().join("models").join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        std::fs::create_dir_all(root.path().join("models/loras/dir.safetensors")).unwrap();
        let names = [
            "a.safetensors",
            "sub/b.SAFETENSORS",
            ".hidden.pt",
            ".git/c.safetensors",
            "d.txt",
            &format!("{deep}/e.safetensors"),
            &format!("{deep}/d8/f.safetensors"),
            "dir.safetensors",
            "sub/../a.safetensors",
            "./a.safetensors",
            "sub//b.SAFETENSORS",
            "/a.safetensors",
            "missing.safetensors",
            "g.pth",
            "h.yaml",
            "i.safetensors",
            "",
        ];
        for folder in ["loras", "controlnet", "configs"] {
            let listed = dirs.list_models(folder).unwrap();
            for name in names {
                assert_eq!(
                    dirs.has_model(folder, name),
                    listed.iter().any(|n| n == name),
                    "{folder}/{name} in {listed:?}"
                );
            }
        }
        assert!(dirs.has_model("loras", &format!("{deep}/e.safetensors")));
        assert!(dirs.has_model("controlnet", "g.pth"));
        assert!(!dirs.has_model("nowhere", "a.safetensors"));
    }

    #[test]
    fn model_folders_include_comfyuis_extra_names() {
        let root = tempfile::tempdir().unwrap();
        let dirs = super::DataDirs::new(root.path(), &root.path().join("models"));
        for (folder, file) in [
            ("controlnet", "a.safetensors"),
            ("t2i_adapter", "b.safetensors"),
            ("clip", "c.safetensors"),
            ("text_encoders", "c.safetensors"),
        ] {
            let dir = root.path().join("models").join(folder);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        assert_eq!(
            dirs.list_models("controlnet").unwrap(),
            ["a.safetensors", "b.safetensors"]
        );
        // The same name in both folders is listed once; the main folder wins.
        assert_eq!(dirs.list_models("clip").unwrap(), ["c.safetensors"]);
        let found = dirs.model_file("text_encoders", "c.safetensors").unwrap();
        assert!(found.parent().unwrap().ends_with("text_encoders"));
        let adapter = dirs.model_file("controlnet", "b.safetensors").unwrap();
        assert!(adapter.parent().unwrap().ends_with("t2i_adapter"));
    }

    use super::*;

    #[test]
    fn relative_paths_only() {
        let base = Path::new("/data/input");
        assert_eq!(
            join_relative(base, "a/b.png").unwrap(),
            PathBuf::from("/data/input/a/b.png")
        );
        assert_eq!(
            join_relative(base, "../x").unwrap_err(),
            PathError::ParentComponent("../x".into())
        );
        assert_eq!(
            join_relative(base, "/etc/passwd").unwrap_err(),
            PathError::Absolute("/etc/passwd".into())
        );
        assert!(join_relative(base, "a\\..\\..\\x").is_err());
    }

    #[test]
    fn annotations() {
        assert_eq!(
            split_annotation("x.png [output]"),
            ("x.png", Some(FolderType::Output))
        );
        assert_eq!(split_annotation("x.png"), ("x.png", None));
    }

    #[test]
    fn symlink_out_of_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("out");
        std::fs::create_dir_all(&base).unwrap();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&secret, base.join("link.txt")).unwrap();
        #[cfg(unix)]
        assert_eq!(
            resolve_existing(&base, "", "link.txt").unwrap_err(),
            PathError::Escapes("link.txt".into())
        );
        std::fs::write(base.join("ok.txt"), "y").unwrap();
        assert!(resolve_existing(&base, "", "ok.txt").unwrap().is_some());
        assert!(resolve_existing(&base, "", "missing.txt")
            .unwrap()
            .is_none());
    }

    #[test]
    fn extensions_split_as_python_does() {
        assert_eq!(split_extension("x.preview.png"), ("x.preview", "png"));
        assert_eq!(split_extension("x"), ("x", ""));
        assert_eq!(split_extension(".hidden"), (".hidden", ""));
        assert_eq!(split_extension("..x.png"), ("..x", "png"));
    }

    #[test]
    fn model_browser_listings_and_previews() {
        let root = tempfile::tempdir().unwrap();
        let dirs = DataDirs::new(root.path(), &root.path().join("models"));
        let loras = root.path().join("models/loras");
        std::fs::create_dir_all(loras.join("sub")).unwrap();
        std::fs::create_dir_all(loras.join(".hidden")).unwrap();
        for name in [
            "b.safetensors",
            "b.preview.jpg",
            "b.png",
            "b.txt",
            "sub/a.pt",
            ".hidden/c.pt",
            ".d.pt",
        ] {
            std::fs::write(loras.join(name), b"xx").unwrap();
        }
        let entries = dirs.list_model_entries("loras").unwrap();
        let names: Vec<(&str, usize, u64)> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.path_index, e.size))
            .collect();
        assert_eq!(names, [("b.safetensors", 0, 2), ("sub/a.pt", 0, 2)]);
        assert!(entries[0].modified > 1.0e9 && entries[0].created > 1.0e9);
        assert!(dirs.list_model_entries("nope").is_none());

        let previews = dirs.model_previews("loras", 0, "b.safetensors").unwrap();
        assert_eq!(
            previews.images,
            [loras.join("b.png"), loras.join("b.preview.jpg")]
        );
        assert_eq!(previews.safetensors, Some(loras.join("b.safetensors")));
        let none = dirs.model_previews("loras", 0, "sub/a.pt").unwrap();
        assert_eq!(none, ModelPreviews::default());
        assert_eq!(
            dirs.model_previews("loras", 5, "b.safetensors")
                .unwrap_err(),
            ModelLookupError::PathIndex {
                folder: "loras".into(),
                index: 5,
                count: 1
            }
        );
        assert!(matches!(
            dirs.model_previews("loras", 0, "../checkpoints/x.pt"),
            Err(ModelLookupError::Name(PathError::ParentComponent(_)))
        ));
        assert!(matches!(
            dirs.model_previews("nope", 0, "x.pt"),
            Err(ModelLookupError::UnknownFolder(_))
        ));
    }

    #[test]
    fn folder_files_are_listed_newest_first() {
        let root = tempfile::tempdir().unwrap();
        let dirs = DataDirs::new(root.path(), &root.path().join("models"));
        dirs.create().unwrap();
        for (name, age) in [("old.png", 100), ("new.png", 0), (".DS_Store", 0)] {
            let path = dirs.input.join(name);
            std::fs::write(&path, b"x").unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::now() - std::time::Duration::from_secs(age))
                .unwrap();
        }
        std::fs::create_dir_all(dirs.input.join("folder")).unwrap();
        assert_eq!(
            dirs.list_folder_files(FolderType::Input),
            ["new.png", "old.png"]
        );
    }

    #[test]
    fn paths_are_shown_relative_to_their_folders() {
        let root = tempfile::tempdir().unwrap();
        let mut dirs = DataDirs::new(&root.path().join("data"), &root.path().join("models"));
        dirs.extra_models.push(ExtraModelFolder {
            folder: "loras".into(),
            path: root.path().join("elsewhere/loras"),
            first: false,
        });
        dirs.create().unwrap();
        let abs = |p: &str| root.path().join(p);
        assert_eq!(dirs.shown(&abs("data/input/sub/x.png")), "input/sub/x.png");
        assert_eq!(dirs.shown(&abs("data/output")), "output");
        assert_eq!(dirs.shown(&abs("data/weft.db")), "weft.db");
        assert_eq!(
            dirs.shown(&abs("models/checkpoints/m.safetensors")),
            "models/checkpoints/m.safetensors"
        );
        assert_eq!(
            dirs.shown(&abs("elsewhere/loras/l.safetensors")),
            "loras/l.safetensors"
        );
        assert_eq!(dirs.shown(Path::new("/somewhere/else/f.txt")), "f.txt");
        // The real path of a folder is known too (resolve_existing returns real paths).
        let real = dirs.input.canonicalize().unwrap().join("y.png");
        assert_eq!(dirs.shown(&real), "input/y.png");

        let message = format!(
            "cannot load '{}': bad header; and {}: oops",
            abs("models/checkpoints/m.safetensors").display(),
            real.display()
        );
        assert_eq!(
            dirs.redact(&message),
            "cannot load 'models/checkpoints/m.safetensors': bad header; and input/y.png: oops"
        );
        assert!(!dirs
            .redact(&message)
            .contains(&*root.path().to_string_lossy()));
    }

    #[cfg(unix)]
    #[test]
    fn folders_are_created_only_inside() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("input");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("out")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), base.join("dangling")).unwrap();
        std::fs::write(base.join("file"), b"x").unwrap();
        let real_base = base.canonicalize().unwrap();

        for sub in ["out/new", "out/new/deeper", "dangling/new"] {
            assert_eq!(
                create_folder_inside(&base, sub).unwrap_err(),
                PathError::Escapes(sub.into())
            );
            assert_eq!(
                resolve_new(&base, sub, "x.png").unwrap_err(),
                PathError::Escapes(sub.into())
            );
        }
        assert!(!outside.join("new").exists());
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(
            create_folder_inside(&base, "file/sub").unwrap_err(),
            PathError::NotAFolder("file/sub".into(), "file".into())
        );
        // Symlinks that stay inside are followed; new folders are made inside.
        assert_eq!(
            create_folder_inside(&base, "alias/a/b").unwrap(),
            real_base.join("real/a/b")
        );
        assert_eq!(
            resolve_new(&base, "./c", "x.png").unwrap(),
            real_base.join("c/x.png")
        );
        assert_eq!(create_folder_inside(&base, "").unwrap(), real_base);
        let long = "d".repeat(300);
        assert!(matches!(
            create_folder_inside(&base, &long),
            Err(PathError::CannotCreate(..))
        ));
    }

    #[test]
    fn existing_files_and_folders_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("user");
        assert_eq!(
            resolve_existing_any(&base, "").unwrap(),
            None,
            "no base yet"
        );
        std::fs::create_dir_all(base.join("sub")).unwrap();
        let real_base = base.canonicalize().unwrap();
        assert_eq!(
            resolve_existing_any(&base, ".").unwrap(),
            Some(real_base.clone())
        );
        assert_eq!(
            resolve_existing_any(&base, "sub").unwrap(),
            Some(real_base.join("sub"))
        );
        assert_eq!(resolve_existing_any(&base, "sub/none").unwrap(), None);
        assert!(matches!(
            resolve_existing_any(&base, "../user"),
            Err(PathError::ParentComponent(_))
        ));
        assert!(matches!(
            resolve_existing_any(&base, "/etc"),
            Err(PathError::Absolute(_))
        ));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path(), base.join("up")).unwrap();
            assert_eq!(
                resolve_existing_any(&base, "up").unwrap_err(),
                PathError::Escapes("up".into())
            );
        }
    }
}
