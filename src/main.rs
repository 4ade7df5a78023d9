//! The `weft` command: `weft serve` runs the server, `weft run` executes one workflow headless.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use weft::api::access::{HostList, Token};
use weft::app::{self, AuthSetting, ComputeConfig, ServerConfig};
use weft::exec::Event;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "A node-graph image-generation workflow server, wire-compatible with ComfyUI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP + WebSocket API and the editor).
    Serve(Box<ServeArgs>),
    /// Execute one workflow file (API format) without a server, writing its outputs.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; loopback by default.
    #[arg(long, default_value = "127.0.0.1")]
    listen: String,
    #[arg(long, default_value_t = 8188)]
    port: u16,
    /// Where the database, input, output and temp folders live.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Where model weights live (checkpoints/, loras/, vae/, controlnet/, …). Default: `models`,
    /// or `models` under --base-directory.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// ComfyUI's `--base-directory`: models/, input/, output/ and temp/ under this folder (the
    /// database stays in --data-dir).
    #[arg(long)]
    base_directory: Option<PathBuf>,
    /// ComfyUI's `extra_model_paths.yaml` (more model folders, e.g. an A1111 install's); may be
    /// given more than once.
    #[arg(long, num_args = 1..)]
    extra_model_paths_config: Vec<PathBuf>,
    /// ComfyUI's `--input-directory`: where LoadImage reads and uploads go.
    #[arg(long)]
    input_directory: Option<PathBuf>,
    /// ComfyUI's `--output-directory`: where SaveImage writes.
    #[arg(long)]
    output_directory: Option<PathBuf>,
    /// ComfyUI's `--temp-directory`: where PreviewImage writes (emptied at start).
    #[arg(long)]
    temp_directory: Option<PathBuf>,
    /// ComfyUI's `--user-directory`: the frontend's settings and files (`default/`), its
    /// workflows being the workflow library. Default: `user` under --base-directory, else under
    /// --data-dir.
    #[arg(long)]
    user_directory: Option<PathBuf>,
    /// Largest accepted request body, in MB.
    #[arg(long, default_value_t = 100)]
    max_upload_size: usize,
    /// Memory budget of the node output cache, in MB.
    #[arg(long, default_value_t = 4096)]
    cache_size: usize,
    /// Memory budget of loaded models (checkpoints, VAEs, ControlNets) kept between prompts, in
    /// MB; least recently used ones are unloaded first. Default: 75% of the smaller of the memory
    /// limit in force (the container's cgroup limit, else the machine's memory) and what is
    /// available at start; on a CUDA GPU three quarters of its own memory.
    #[arg(long)]
    model_cache_size: Option<usize>,
    /// Do not write the prompt and workflow into saved PNGs.
    #[arg(long)]
    disable_metadata: bool,
    /// The built editor to serve at `/`.
    #[arg(long, default_value = "web/dist")]
    web_root: PathBuf,
    /// Host names and addresses (comma-separated, each with an optional `:port`) the server
    /// answers to besides loopback (`localhost`, `127.0.0.1`, `[::1]`) and the --listen address;
    /// other `Host`s get a 403, against DNS rebinding. `*` turns the check off.
    #[arg(long, value_name = "HOSTS", value_parser = clap::value_parser!(HostList))]
    allowed_hosts: Option<HostList>,
    /// Ask every request for this token (`Authorization: Bearer`, the `weft_token` cookie or
    /// `?token=`). Default: a random token kept in the data folder's `auth_token` file when
    /// --listen is not loopback; none on loopback.
    #[arg(long, value_name = "TOKEN", value_parser = parse_token, conflicts_with = "no_auth")]
    auth_token: Option<Token>,
    /// Ask for no token, even when listening beyond loopback: anyone who reaches the port can
    /// queue prompts.
    #[arg(long)]
    no_auth: bool,
    /// Keep the queue, history, workflow library and user data in this PostgreSQL database
    /// (`postgres://user:password@host/db`, or `postgres:///db?host=/socket/dir`) instead of
    /// `weft.db` in --data-dir, shared with every other `weft serve` given the same URL: each
    /// runs prompts from the one queue. Default: the `WEFT_DATABASE_URL` environment variable.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// With --database: how long a worker's claim on a running prompt holds without renewal (it
    /// renews three times per lease); a killed worker's prompt runs on another after this.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    lease_seconds: f64,
    /// With --database: run prompts from the shared queue without serving HTTP (no port, no
    /// editor); clients connect to the workers that serve it and get this one's events there.
    #[arg(long)]
    worker_only: bool,
    /// Also register the test node pack (slow, failing and panicking nodes).
    #[arg(long, hide = true)]
    test_nodes: bool,
    #[command(flatten)]
    compute: ComputeArgs,
}

/// Where the models run.
#[derive(clap::Args)]
struct ComputeArgs {
    /// cpu, cuda, cuda:N, metal or metal:N (GPU backends need a build with `--features cuda` or
    /// `--features metal`).
    #[arg(long, default_value = "cpu", value_parser = clap::value_parser!(weft::engine::device::DeviceChoice))]
    device: weft::engine::device::DeviceChoice,
    /// f32, f16 or bf16 for the model weights [default: f32 on the CPU, f16 on GPUs].
    #[arg(long, value_parser = weft::engine::device::parse_dtype)]
    dtype: Option<candle_core::DType>,
    /// MB of the GPU's memory for model weights (default: three quarters of it). A checkpoint
    /// that does not fit keeps the rest of its weights in RAM and moves them to the GPU layer by
    /// layer while sampling (slower, instead of failing), as ComfyUI's lowvram mode does.
    #[arg(long, value_name = "MB")]
    gpu_memory: Option<usize>,
}

fn parse_token(text: &str) -> Result<Token, String> {
    Token::parse(text)
}

impl ComputeArgs {
    fn config(&self) -> anyhow::Result<ComputeConfig> {
        if self.gpu_memory.is_some() && self.device == weft::engine::device::DeviceChoice::Cpu {
            anyhow::bail!(
                "--gpu-memory applies to a GPU (--device cuda); on the CPU the memory for models is \
                 --model-cache-size"
            );
        }
        Ok(ComputeConfig {
            device: self.device,
            dtype: self.dtype,
            gpu_memory_mb: self.gpu_memory,
        })
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The workflow file (API format).
    workflow: PathBuf,
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    #[command(flatten)]
    compute: ComputeArgs,
}

fn main() -> ExitCode {
    use tracing_subscriber::prelude::*;
    // Printed to stderr, and the recent lines kept for `/internal/logs` (the frontend's terminal).
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(weft::logs::layer())
        .init();
    let cli = Cli::parse();
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Run(args) => run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM (what service managers send); false if
/// neither can be listened for.
async fn stop_requested() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                ctrl_c = tokio::signal::ctrl_c() => ctrl_c.is_ok(),
                _ = term.recv() => true,
            };
        }
    }
    tokio::signal::ctrl_c().await.is_ok()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(&args.data_dir);
    config.listen = args.listen;
    config.port = args.port;
    let base = args.base_directory;
    let under_base = |name: &str| base.as_ref().map(|b| b.join(name));
    config.models_dir = args
        .models_dir
        .or_else(|| under_base("models"))
        .unwrap_or_else(|| PathBuf::from("models"));
    config.extra_model_paths = args.extra_model_paths_config;
    config.input_dir = args.input_directory.or_else(|| under_base("input"));
    config.output_dir = args.output_directory.or_else(|| under_base("output"));
    config.temp_dir = args.temp_directory.or_else(|| under_base("temp"));
    config.user_dir = args.user_directory.or_else(|| under_base("user"));
    config.max_upload_mb = args.max_upload_size;
    config.cache_budget_mb = args.cache_size;
    config.model_budget_mb = args.model_cache_size;
    config.write_metadata = !args.disable_metadata;
    config.web_root = Some(args.web_root);
    config.test_nodes = args.test_nodes;
    config.compute = args.compute.config()?;
    config.allowed_hosts = args.allowed_hosts.unwrap_or_default();
    config.auth = match (args.auth_token, args.no_auth) {
        (Some(token), _) => AuthSetting::Token(token),
        (None, true) => AuthSetting::Off,
        (None, false) => AuthSetting::Default,
    };
    config.database = args
        .database
        .or_else(|| std::env::var("WEFT_DATABASE_URL").ok())
        .filter(|url| !url.is_empty())
        .map(|url| app::DatabaseConfig {
            url,
            lease_ms: (args.lease_seconds * 1000.0).round().max(100.0) as i64,
        });
    if args.worker_only {
        let exec = app::start_worker_only(config).await?;
        if !stop_requested().await {
            // No signal to wait for: run until killed.
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
        exec.shut_down().await;
        return Ok(());
    }
    let running = app::start(config).await?;
    let handle = running.server.handle();
    let exec = Arc::clone(&running.exec);
    actix_web::rt::spawn(async move {
        if stop_requested().await {
            tracing::info!("shutting down");
            exec.shut_down().await;
            handle.stop(true).await;
        }
    });
    running
        .server
        .await
        .context("the HTTP server stopped with an error")
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.workflow)
        .with_context(|| format!("cannot read {}", args.workflow.display()))?;
    let workflow: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", args.workflow.display()))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:30} [{bar:30}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = app::run_headless(
        workflow,
        &args.data_dir,
        &args.models_dir,
        args.compute.config()?,
        |event| match event {
            Event::Executing {
                node: Some(node), ..
            } => {
                bar.set_message(format!("node {node}"));
                bar.set_length(0);
                bar.set_position(0);
            }
            Event::Progress { value, max, .. } => {
                bar.set_length(*max);
                bar.set_position(*value);
            }
            _ => bar.tick(),
        },
    )
    .await?;
    bar.finish_and_clear();
    if let Some(error) = result.error {
        anyhow::bail!("{error}");
    }
    if let Some(outputs) = result.outputs.as_object() {
        for (node, ui) in outputs {
            for image in ui["images"].as_array().into_iter().flatten() {
                let sub = image["subfolder"].as_str().unwrap_or("");
                let folder = image["type"].as_str().unwrap_or("output");
                let name = image["filename"].as_str().unwrap_or("");
                let path = args.data_dir.join(folder).join(sub).join(name);
                println!("node {node}: {}", path.display());
            }
        }
    }
    Ok(())
}
