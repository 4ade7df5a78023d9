//! Wiring: builds the store, registry, executor and HTTP server from a configuration. With
//! `main.rs`, the only code that sees every layer; tests start servers through it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;
use serde_json::Value as Json;

use crate::api::access::{AllowedHosts, HostList, Token};
use crate::api::{self, Access, ApiConfig, AppState, Hub};
use candle_core::DType;

use crate::engine::device::{default_model_budget, DeviceChoice};
use crate::engine::memory::{human, MemoryProbe};
use crate::exec::{Event, ExecConfig, Executor, Route, Submission};
use crate::nodes::Registry;
use crate::paths::DataDirs;
use crate::store::Store;
use crate::userdata::UserFiles;

/// Where the models run (`--device`, `--dtype`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ComputeConfig {
    pub device: DeviceChoice,
    /// `None`: the device's default (f32 on the CPU, f16 on GPUs).
    pub dtype: Option<candle_core::DType>,
    /// `--gpu-memory`: MB of the GPU's memory for model weights; a checkpoint beyond it keeps
    /// the rest of its weights in RAM and streams them per layer. `None`: three quarters of the
    /// GPU's memory. The command line takes it for GPUs only; on the CPU (tests) the split is
    /// bookkeeping, both halves in RAM.
    pub gpu_memory_mb: Option<usize>,
}

impl ComputeConfig {
    /// Opens the device, failing before anything starts when it cannot be used; returns it
    /// with the weights' dtype (`None`: each file's own precision).
    fn open(self) -> anyhow::Result<(candle_core::Device, Option<candle_core::DType>)> {
        let device = self
            .device
            .open()
            .with_context(|| format!("cannot use device {}", self.device))?;
        let dtype = match self.dtype.or(self.device.default_dtype()) {
            Some(dtype) => Some(self.device.check_dtype(dtype)?),
            None => None,
        };
        if self.dtype == Some(DType::BF16) && device.is_cpu() {
            use crate::engine::ops::gemm_bf16;
            if gemm_bf16::outruns_f32() {
                gemm_bf16::enable();
            } else {
                tracing::info!(
                    kernel = gemm_bf16::kernel_name(),
                    "bf16 weights widen to f32 per layer: this CPU's bf16 products are not faster than its f32 ones"
                );
            }
        }
        let compute = crate::engine::device::compute_dtype(&device, dtype.unwrap_or(DType::F32));
        match dtype {
            Some(weights) => tracing::info!(device = %self.device,
                "models run on {} with {weights:?} weights, computing in {compute:?}", self.device),
            None => tracing::info!(device = %self.device,
                "models run on {} with f16/bf16 checkpoints widened to f32 at load where the budget holds them, else kept as stored, computing in {compute:?}",
                self.device),
        }
        Ok((device, dtype))
    }
}

/// The model budget: `--gpu-memory` or `--model-cache-size` when given, else the default for
/// the device and the memory limit; logged with the reason.
fn model_budget(
    given_mb: Option<usize>,
    gpu_memory_mb: Option<usize>,
    device: &candle_core::Device,
    probe: &MemoryProbe,
) -> usize {
    let reading = probe.read();
    let (budget, why) = match (gpu_memory_mb, given_mb) {
        (Some(mb), _) => (
            mb << 20,
            "--gpu-memory (weights beyond it stay in RAM)".to_owned(),
        ),
        (None, Some(mb)) => (mb << 20, "--model-cache-size".to_owned()),
        (None, None) => default_model_budget(device, &reading),
    };
    tracing::info!(
        budget,
        limit = reading.limit,
        available = reading.available,
        "model budget {}: {why}; memory limit in force {} ({}), {} available now",
        human(budget as u64),
        human(reading.limit),
        reading.source,
        human(reading.available)
    );
    budget
}

/// Everything `weft serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub max_upload_mb: usize,
    pub cache_budget_mb: usize,
    /// Memory budget of loaded model weights kept between prompts.
    /// `None`: [`default_model_budget`] for the device and the memory limit.
    pub model_budget_mb: Option<usize>,
    /// Where the memory limit is read from (tests inject their own files).
    pub memory: MemoryProbe,
    /// ComfyUI's `--input-directory`, `--output-directory`, `--temp-directory`; `None`: the
    /// folder of that name in `data_dir`.
    pub input_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub temp_dir: Option<PathBuf>,
    /// ComfyUI's `--user-directory` (settings and the frontend's files, one folder per user);
    /// `None`: `user` in `data_dir`.
    pub user_dir: Option<PathBuf>,
    /// ComfyUI's `--extra-model-paths-config` files.
    pub extra_model_paths: Vec<PathBuf>,
    pub test_nodes: bool,
    pub write_metadata: bool,
    pub web_root: Option<PathBuf>,
    pub http_workers: usize,
    pub compute: ComputeConfig,
    /// `--allowed-hosts`: hosts answered besides loopback and the listen address.
    pub allowed_hosts: HostList,
    /// `--auth-token`, `--no-auth`, or neither.
    pub auth: AuthSetting,
    /// `--database`: the queue, history and library in this PostgreSQL database, shared with
    /// other workers; `None`: `weft.db` (SQLite) in `data_dir`.
    pub database: Option<DatabaseConfig>,
}

/// A PostgreSQL database that workers share.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://…`.
    pub url: String,
    /// How long a worker's claim on a prompt holds without renewal, in milliseconds: a killed
    /// worker's prompt runs elsewhere after at most this long.
    pub lease_ms: i64,
}

/// Where the store lives.
enum Database<'a> {
    Sqlite(&'a Path),
    Postgres(&'a DatabaseConfig),
}

impl Database<'_> {
    async fn open(&self) -> anyhow::Result<Store> {
        match self {
            Database::Sqlite(path) => Store::open(path)
                .await
                .with_context(|| format!("cannot open the database {}", path.display())),
            Database::Postgres(config) => Ok(Store::connect(&config.url)
                .await
                .context("cannot open the PostgreSQL database")?
                .with_lease_ms(config.lease_ms)),
        }
    }
}

/// Whether the server asks for a token.
#[derive(Debug, Clone, Default)]
pub enum AuthSetting {
    /// On when listening beyond loopback ([`auth_by_default`]), with the token kept in the data
    /// folder's [`TOKEN_FILE`].
    #[default]
    Default,
    /// `--auth-token`: on, with this token.
    Token(Token),
    /// `--no-auth`: off wherever the server listens.
    Off,
}

/// The token file in the data folder, made at the first start that needs it.
pub const TOKEN_FILE: &str = "auth_token";

/// Whether a server listening on `listen` asks for a token unless told otherwise: anywhere but
/// loopback (`127.0.0.1`, `::1`, `localhost`), other machines can reach it.
pub fn auth_by_default(listen: &str) -> bool {
    let address = listen.trim_start_matches('[').trim_end_matches(']');
    match address.parse::<IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !address.eq_ignore_ascii_case("localhost"),
    }
}

/// The token in force and where it came from (for the start-up log), or `None` when auth is off.
fn resolve_auth(
    setting: &AuthSetting,
    listen: &str,
    data_dir: &Path,
) -> anyhow::Result<Option<(Token, &'static str)>> {
    Ok(match setting {
        AuthSetting::Off => None,
        AuthSetting::Token(token) => Some((token.clone(), "--auth-token")),
        AuthSetting::Default if auth_by_default(listen) => {
            Some(read_or_create_token(&data_dir.join(TOKEN_FILE))?)
        }
        AuthSetting::Default => None,
    })
}

/// The token in `path`, or a new random one written there, readable by the owner alone.
fn read_or_create_token(path: &Path) -> anyhow::Result<(Token, &'static str)> {
    use std::io::Write;
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            let token = Token::generate();
            writeln!(file, "{}", token.reveal())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write the token file {}", path.display()))?;
            Ok((token, "generated now, kept in the token file"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            let token = Token::parse(&text).map_err(|e| {
                anyhow::anyhow!("the token file {} is not usable: {e}", path.display())
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        "the token file {} was readable by others (mode {:o}); made it 0600",
                        path.display(),
                        mode & 0o777
                    );
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            Ok((token, "from the token file"))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot create the token file {}", path.display()))
        }
    }
}

impl ServerConfig {
    /// Defaults for a server rooted at `data_dir`, listening on loopback.
    pub fn new(data_dir: &Path) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1".into(),
            port: 8188,
            data_dir: data_dir.to_path_buf(),
            models_dir: PathBuf::from("models"),
            max_upload_mb: 100,
            cache_budget_mb: 4096,
            model_budget_mb: None,
            memory: MemoryProbe::default(),
            input_dir: None,
            output_dir: None,
            temp_dir: None,
            user_dir: None,
            extra_model_paths: Vec::new(),
            test_nodes: false,
            write_metadata: true,
            web_root: None,
            http_workers: 2,
            compute: ComputeConfig::default(),
            allowed_hosts: HostList::default(),
            auth: AuthSetting::Default,
            database: None,
        }
    }
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub exec: Arc<Executor>,
    pub server: actix_web::dev::Server,
}

async fn build_executor(
    dirs: DataDirs,
    database: Database<'_>,
    test_nodes: bool,
    config: ExecConfig,
) -> anyhow::Result<(
    Arc<Executor>,
    tokio::sync::mpsc::UnboundedReceiver<crate::exec::Envelope>,
)> {
    dirs.create().with_context(|| {
        format!(
            "cannot create the data folders under {}",
            dirs.root.display()
        )
    })?;
    let store = database.open().await?;
    let registry = if test_nodes {
        Registry::with_test_nodes()
    } else {
        Registry::standard()
    };
    Ok(Executor::start(store, Arc::new(registry), Arc::new(dirs), config).await?)
}

/// Builds the folders and the executor (opening the store, recovering from a crash) of a
/// server or worker; the worker is not started yet.
async fn prepare(
    config: &ServerConfig,
) -> anyhow::Result<(
    Arc<Executor>,
    tokio::sync::mpsc::UnboundedReceiver<crate::exec::Envelope>,
)> {
    let mut dirs = DataDirs::new(&config.data_dir, &config.models_dir);
    for (dir, given) in [
        (&mut dirs.input, &config.input_dir),
        (&mut dirs.output, &config.output_dir),
        (&mut dirs.temp, &config.temp_dir),
        (&mut dirs.user, &config.user_dir),
    ] {
        if let Some(given) = given {
            *dir = given.clone();
        }
    }
    for file in &config.extra_model_paths {
        let (folders, skipped) =
            crate::paths::read_extra_model_paths(file).map_err(anyhow::Error::msg)?;
        for extra in &folders {
            tracing::info!(folder = %extra.folder, path = %extra.path.display(), "extra model folder");
        }
        if !skipped.is_empty() {
            tracing::info!(
                "{}: no Weft model folder for {}",
                file.display(),
                skipped.join(", ")
            );
        }
        dirs.extra_models.extend(folders);
    }
    let (device, dtype) = config.compute.open()?;
    let exec_config = ExecConfig {
        cache_budget: config.cache_budget_mb << 20,
        model_budget: model_budget(
            config.model_budget_mb,
            config.compute.gpu_memory_mb,
            &device,
            &config.memory,
        ),
        offload: config.compute.gpu_memory_mb.is_some(),
        memory: config.memory.clone(),
        write_metadata: config.write_metadata,
        device,
        dtype,
    };
    let sqlite_file = config.data_dir.join("weft.db");
    let database = match &config.database {
        Some(database) => Database::Postgres(database),
        None => Database::Sqlite(&sqlite_file),
    };
    build_executor(dirs, database, config.test_nodes, exec_config).await
}

/// `--worker-only`: runs prompts from the shared queue (PostgreSQL) without serving HTTP; its
/// events reach clients through the workers that do. Returns the executor, its worker started.
pub async fn start_worker_only(config: ServerConfig) -> anyhow::Result<Arc<Executor>> {
    if config.database.is_none() {
        anyhow::bail!(
            "--worker-only takes its prompts from a shared queue: give --database postgres://… \
             (or WEFT_DATABASE_URL)"
        );
    }
    let (exec, events) = prepare(&config).await?;
    // Published for the other workers' sockets; none here.
    let mut events = exec.share_events(events, None);
    actix_web::rt::spawn(async move { while events.recv().await.is_some() {} });
    exec.spawn_worker()
        .context("cannot start the worker thread")?;
    tracing::info!(
        worker = exec.store().worker_id(),
        "running prompts from the shared queue without serving HTTP (--worker-only)"
    );
    Ok(exec)
}

/// Opens the store (running migrations, recovering from a crash), starts the worker and binds the
/// HTTP server. The returned `server` future must be awaited or spawned.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let auth = resolve_auth(&config.auth, &config.listen, &config.data_dir)?;
    let access = Access {
        hosts: AllowedHosts::new(&config.allowed_hosts, &config.listen),
        token: auth.as_ref().map(|(token, _)| token.clone()),
    };
    let (exec, events) = prepare(&config).await?;
    let hub = Hub::default();
    // On a shared queue, this worker's events go to the others and theirs come here; their
    // previews are read only when one of this worker's sockets takes them.
    let sockets = hub.clone();
    let events = exec.share_events(
        events,
        Some(Arc::new(move |route: &Route| sockets.wants_previews(route))),
    );

    let user = Arc::new(UserFiles::new(&exec.dirs().user, exec.store().clone()));
    match user.import_workflow_files().await {
        Ok(0) => {}
        Ok(n) => tracing::info!("{n} workflow file(s) from the user folder saved in the library"),
        Err(e) => tracing::warn!("cannot import the user folder's workflow files: {e}"),
    }

    let sockets = hub.clone();
    if !exec.deliver_directly(Box::new(move |envelope| sockets.dispatch(envelope))) {
        actix_web::rt::spawn(hub.clone().route(events));
    }
    actix_web::rt::spawn(hub.clone().forward_logs(crate::logs::subscribe()));
    exec.spawn_worker()
        .context("cannot start the worker thread")?;

    let state = web::Data::new(AppState {
        exec: Arc::clone(&exec),
        hub,
        config: ApiConfig {
            max_upload_bytes: config.max_upload_mb << 20,
            web_root: config.web_root.clone(),
            access: access.clone(),
        },
        user,
    });
    let server = HttpServer::new(move || {
        App::new()
            // Request encodings (gzip and deflate only, inflated within the body limit).
            .wrap(middleware::from_fn(api::content_encoding_guard))
            // Hosts, origins and the token: before every route, the socket included.
            .wrap(middleware::from_fn(api::access_guard))
            .wrap(
                // The request line without `token` values.
                middleware::Logger::new("%{request}xi %s %Dms")
                    .custom_request_replace("request", api::access::logged_request)
                    .log_target("weft::http"),
            )
            // Outermost, so refusals get it too: no response is ever sniffed into another type.
            .wrap(
                middleware::DefaultHeaders::new()
                    .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")),
            )
            .configure(api::configure(state.clone()))
    })
    .workers(config.http_workers.max(1))
    .disable_signals()
    .bind((config.listen.as_str(), config.port))
    .with_context(|| format!("cannot listen on {}:{}", config.listen, config.port))?;
    let addr = *server
        .addrs()
        .first()
        .context("the server bound no address")?;
    log_exposure(&config, addr, &access, auth.map(|(_, source)| source));
    exec.set_address(addr.to_string());
    if exec.store().is_shared() {
        tracing::info!(
            worker = exec.store().worker_id(),
            "sharing the PostgreSQL queue with other workers"
        );
    }
    Ok(RunningServer {
        addr,
        exec,
        server: server.run(),
    })
}

/// Says at start-up what the server exposes: where it listens, whether it asks for a token,
/// which hosts it answers to; prints a token it made or read from its file, once.
fn log_exposure(config: &ServerConfig, addr: SocketAddr, access: &Access, source: Option<&str>) {
    tracing::info!("Weft listening on http://{addr}");
    let beyond_loopback = auth_by_default(&config.listen);
    match (&access.token, source) {
        (Some(token), Some(source)) => {
            tracing::info!("authentication on: token {source}");
            if token.reveal().len() < 16 {
                tracing::warn!(
                    "the token is {} characters long; one of 16 or more is much harder to guess",
                    token.reveal().len()
                );
            }
            if source != "--auth-token" {
                let file = config.data_dir.join(TOKEN_FILE);
                // Printed, not logged: the log ring is served at /internal/logs.
                eprintln!(
                    "\nWeft access token (kept in {}):\n\n    {}\n\nOpen http://{addr}/?token={} \
                     in a browser, or send `Authorization: Bearer TOKEN`.\n",
                    file.display(),
                    token.reveal(),
                    token.reveal()
                );
            }
        }
        _ if beyond_loopback => tracing::warn!(
            "authentication OFF (--no-auth) while listening on {}: anyone on the network can \
             queue prompts, read outputs and change files",
            config.listen
        ),
        _ => tracing::info!("authentication off (listening on loopback only)"),
    }
    match &access.hosts {
        AllowedHosts::Any => tracing::warn!(
            "Host check OFF (--allowed-hosts '*'): a web page can reach the server through DNS \
             rebinding"
        ),
        hosts => tracing::info!("allowed hosts: {hosts}"),
    }
}

/// The result of `weft run`.
pub struct HeadlessResult {
    pub outputs: Json,
    pub error: Option<String>,
}

/// Runs one API-format workflow without a server; progress goes to `on_event`.
pub async fn run_headless(
    workflow: Json,
    data_dir: &Path,
    models_dir: &Path,
    compute: ComputeConfig,
    mut on_event: impl FnMut(&Event),
) -> anyhow::Result<HeadlessResult> {
    let dirs = DataDirs::new(data_dir, models_dir);
    let (device, dtype) = compute.open()?;
    // A private queue, so a headless run never takes or disturbs a server's prompts.
    let queue_dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let (exec, mut events) = build_executor(
        dirs,
        Database::Sqlite(&queue_dir.path().join("run.db")),
        false,
        ExecConfig {
            model_budget: model_budget(
                None,
                compute.gpu_memory_mb,
                &device,
                &MemoryProbe::default(),
            ),
            offload: compute.gpu_memory_mb.is_some(),
            device,
            dtype,
            ..ExecConfig::default()
        },
    )
    .await?;
    // Editor-format files (what the editor and ComfyUI save) are converted first, and embedded
    // in the saved images as their workflow.
    let mut extra_data = serde_json::Map::new();
    let workflow = if crate::graph::Workflow::looks_like_editor_format(&workflow) {
        let catalog = exec.registry().catalog(exec.dirs());
        let converted = crate::editor_format::editor_to_api(&workflow, &catalog)
            .context("cannot convert the editor workflow")?;
        if !converted.missing_node_types.is_empty() {
            anyhow::bail!(
                "the workflow uses node types Weft does not have: {}",
                converted.missing_node_types.join(", ")
            );
        }
        extra_data.insert(
            "extra_pnginfo".into(),
            serde_json::json!({"workflow": workflow}),
        );
        converted.prompt
    } else {
        workflow
    };
    let submitted = match exec
        .submit(Submission {
            prompt: workflow,
            extra_data,
            ..Submission::default()
        })
        .await
    {
        Ok(s) => s,
        Err(crate::exec::SubmitError::Invalid {
            failure,
            node_errors,
        }) => {
            let mut lines = match failure {
                crate::graph::PromptError::InvalidPrompt { message, details } => {
                    vec![format!("{message} {details}")]
                }
                crate::graph::PromptError::NoOutputs => {
                    vec!["it has no output node (SaveImage, PreviewImage, …)".to_owned()]
                }
                crate::graph::PromptError::OutputsFailed => Vec::new(),
            };
            for node in node_errors {
                for e in node.errors {
                    lines.push(format!(
                        "node {} ({}): {}: {}",
                        node.node_id, node.class_type, e.message, e.details
                    ));
                }
            }
            anyhow::bail!("the workflow is not valid:\n  {}", lines.join("\n  "));
        }
        Err(e) => return Err(e.into()),
    };
    exec.spawn_worker()
        .context("cannot start the worker thread")?;
    let mut error = None;
    while let Some(envelope) = events.recv().await {
        on_event(&envelope.event);
        match &envelope.event {
            Event::ExecutionError(info) => {
                error = Some(format!(
                    "node {} ({}) failed: {}",
                    info.node_id, info.node_type, info.exception_message
                ))
            }
            Event::ExecutionInterrupted { .. } => error = Some("interrupted".into()),
            Event::Executing {
                prompt_id,
                node: None,
            } if *prompt_id == submitted.prompt_id => break,
            _ => {}
        }
    }
    let entry = exec.store().history_entry(&submitted.prompt_id).await?;
    Ok(HeadlessResult {
        outputs: entry.and_then(|e| e.outputs).unwrap_or(Json::Null),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_is_on_by_default_beyond_loopback() {
        for listen in [
            "127.0.0.1",
            "127.0.0.5",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST",
        ] {
            assert!(!auth_by_default(listen), "{listen}");
        }
        for listen in [
            "0.0.0.0",
            "::",
            "[::]",
            "192.168.1.5",
            "fd00::1",
            "weft.lan",
        ] {
            assert!(auth_by_default(listen), "{listen}");
        }
    }

    #[test]
    fn the_default_token_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Loopback: no token, no file.
        assert!(resolve_auth(&AuthSetting::Default, "127.0.0.1", &data)
            .unwrap()
            .is_none());
        assert!(!data.join(TOKEN_FILE).exists());
        let (first, _) = resolve_auth(&AuthSetting::Default, "0.0.0.0", &data)
            .unwrap()
            .unwrap();
        let file = data.join(TOKEN_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The next start reads the same token.
        let (again, source) = resolve_auth(&AuthSetting::Default, "192.168.1.5", &data)
            .unwrap()
            .unwrap();
        assert_eq!(again.reveal(), first.reveal());
        assert_eq!(source, "from the token file");
        // --auth-token and --no-auth win over the default, and leave the file alone.
        let given = Token::parse("given-token").unwrap();
        let (token, _) = resolve_auth(&AuthSetting::Token(given), "0.0.0.0", &data)
            .unwrap()
            .unwrap();
        assert_eq!(token.reveal(), "given-token");
        assert!(resolve_auth(&AuthSetting::Off, "0.0.0.0", &data)
            .unwrap()
            .is_none());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            first.reveal()
        );
        // A file that is not a token stops the start with its path.
        std::fs::write(&file, "not a token\n").unwrap();
        let error = resolve_auth(&AuthSetting::Default, "0.0.0.0", &data).unwrap_err();
        assert!(error.to_string().contains(TOKEN_FILE), "{error}");
    }
}
