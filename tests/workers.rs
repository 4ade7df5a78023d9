//! Many `weft serve` workers on one PostgreSQL queue (issue 22): every prompt runs exactly once
//! whichever worker it was sent to, a killed worker's prompt finishes on another, an interrupt
//! sent to any worker reaches the one running the prompt, a socket on any worker gets the events
//! and previews of its prompts wherever they run, pause is the queue's, a `--worker-only` worker
//! runs prompts, and a prompt goes preferably to the worker that has its checkpoint or diffusion
//! model loaded. Each test starts its own PostgreSQL (`weft::store::testing`) and skips, saying
//! why, where none can be started.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use weft::store::testing::TestPostgres;

use crate::helpers::{WsClient, WsFrame};
use crate::models::{write_checkpoint, Tiny};
use crate::restart::{free_port, graph, Server};

/// `count` workers on `url`, each with its own data folder (`w0`, `w1`, …) as on separate
/// machines, sharing the models folder.
async fn start_workers(dir: &Path, url: &str, count: usize, more: &[&str]) -> Vec<Server> {
    let mut workers = Vec::new();
    for i in 0..count {
        workers.push(start_worker(dir, url, i, more).await);
    }
    workers
}

fn worker_args(url: &str, more: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--database".into(), url.into()];
    args.extend(more.iter().map(OsString::from));
    args
}

/// Worker `i` (data folder `w{i}`) on `url`.
async fn start_worker(dir: &Path, url: &str, i: usize, more: &[&str]) -> Server {
    let args = worker_args(url, more);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let data = dir.join(format!("w{i}"));
    Server::start_with(&data, &dir.join("models"), free_port(), &args).await
}

/// The workers `server` lists, once there are `count` of them.
async fn wait_workers(server: &Server, count: usize) -> Vec<Json> {
    for _ in 0..400 {
        let listed = server.get("/api/weft/workers").await;
        if let Some(workers) = listed["workers"].as_array().filter(|w| w.len() == count) {
            return workers.clone();
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never listed {count} workers", server.base);
}

/// Queues `prompt` on `server` for the socket client `client_id`.
async fn queue_for(server: &Server, client_id: &str, prompt: Json) -> String {
    let (status, body) = server
        .post("/prompt", json!({"prompt": prompt, "client_id": client_id}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["prompt_id"].as_str().unwrap().to_owned()
}

/// The images each worker saved, by worker.
fn outputs(dir: &Path, workers: usize) -> Vec<Vec<String>> {
    saved(dir, workers, ".png")
}

/// The files ending in `extension` each worker saved in its output folder, by worker.
fn saved(dir: &Path, workers: usize, extension: &str) -> Vec<Vec<String>> {
    (0..workers)
        .map(|i| {
            let mut names: Vec<String> = std::fs::read_dir(dir.join(format!("w{i}/output")))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.ends_with(extension))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        })
        .collect()
}

async fn wait_running_on(server: &Server, id: &str) {
    for _ in 0..400 {
        if server.get("/api/weft/queue/state").await["running"] == id {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} never ran on {}", server.base);
}

#[actix_web::test]
async fn two_hundred_prompts_on_three_workers_run_exactly_once() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workers = start_workers(dir.path(), &pg.url("postgres"), 3, &[]).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..200 {
        // Sent round-robin: which worker runs a prompt is the queue's business. Each sleeps a
        // little differently, so no worker answers it from its output cache.
        let sleep = 0.01 + i as f64 * 1e-6;
        ids.push(workers[i % 3].queue(graph(&format!("p{i}"), sleep)).await);
    }
    for id in &ids {
        let entry = workers[2].wait_history(id).await;
        assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    }
    let elapsed = started.elapsed();

    // Every worker answers the same history and queue.
    for worker in &workers {
        let history = worker.get("/history").await;
        assert_eq!(history.as_object().unwrap().len(), 200);
        assert_eq!(
            worker.get("/prompt").await["exec_info"]["queue_remaining"],
            0
        );
    }
    // Each prompt saved its one image once, on one worker.
    let saved = outputs(dir.path(), 3);
    let per_worker: Vec<usize> = saved.iter().map(Vec::len).collect();
    let mut all: BTreeMap<String, usize> = BTreeMap::new();
    for name in saved.into_iter().flatten() {
        *all.entry(name).or_default() += 1;
    }
    assert_eq!(all.len(), 200, "{per_worker:?}");
    for i in 0..200 {
        assert_eq!(
            all.get(&format!("p{i}_00001_.png")),
            Some(&1),
            "p{i} ran once"
        );
    }
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "the work was shared: {per_worker:?}"
    );
    eprintln!("200 prompts on 3 workers in {elapsed:.2?}, per worker {per_worker:?}");
}

#[actix_web::test]
async fn a_killed_workers_prompt_finishes_on_another() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url("postgres");
    let lease = ["--lease-seconds", "1"];
    // The second worker starts once the first has taken the prompt.
    let mut workers = start_workers(dir.path(), &url, 1, &lease).await;
    let id = workers[0].queue(graph("long", 2.0)).await;
    wait_running_on(&workers[0], &id).await;
    workers.push(start_worker(dir.path(), &url, 1, &lease).await);
    workers[0].stop(); // SIGKILL: no clean shutdown, the lease just stops being renewed.
    let killed = Instant::now();

    let entry = workers[1].wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    assert_eq!(outputs(dir.path(), 2)[1], ["long_00001_.png"]);
    assert!(outputs(dir.path(), 2)[0].is_empty());
    eprintln!(
        "recovered and finished {:.2?} after the kill",
        killed.elapsed()
    );

    // And the list of workers shows the live one only, soon.
    let listed = workers[1].get("/api/weft/workers").await;
    assert!(
        listed["workers"].as_array().is_some_and(|w| !w.is_empty()),
        "{listed}"
    );
}

#[actix_web::test]
async fn cancel_and_interrupt_reach_the_worker_running_the_prompt() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url("postgres");
    // Leases renewed every 10 s: the interrupt arrives by notification, well before.
    let lease = ["--lease-seconds", "30"];
    let mut workers = start_workers(dir.path(), &url, 1, &lease).await;
    let slow = workers[0].queue(graph("slow", 60.0)).await;
    wait_running_on(&workers[0], &slow).await;
    workers.push(start_worker(dir.path(), &url, 1, &lease).await);
    // Paused through worker 1 for every worker: worker 0 finishes nothing new, its running
    // prompt goes on.
    workers[1].post("/api/weft/queue/pause", json!({})).await;
    // Pending on the shared queue, cancelled through the other worker.
    let pending = workers[1].queue(graph("never", 0.0)).await;
    let (status, body) = workers[1]
        .post(&format!("/api/weft/queue/{pending}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Running on worker 0, interrupted through worker 1.
    let asked = Instant::now();
    workers[1]
        .post("/interrupt", json!({"prompt_id": slow}))
        .await;
    let entry = workers[0].wait_history(&slow).await;
    assert_eq!(entry["status"]["status_str"], "error", "{entry}");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("interrupted on worker 0 {took:.2?} after asking worker 1");
    assert!(workers[0]
        .get(&format!("/history/{pending}"))
        .await
        .get(&pending)
        .is_none());
}

/// Worker A (`w0`), serving HTTP and busy with a long prompt, and B (`w1`), a `--worker-only`
/// worker, which so runs the next prompts. Interrupt A's prompt when done.
async fn busy_a_and_worker_only_b(dir: &Path, url: &str) -> (Server, Server) {
    let a = start_worker(dir, url, 0, &[]).await;
    let blocker = a.queue(graph("blocker", 60.0)).await;
    wait_running_on(&a, &blocker).await;
    let args = worker_args(url, &["--worker-only"]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let b = Server::spawn(&dir.join("w1"), &dir.join("models"), 0, &args);
    let listed = wait_workers(&a, 2).await;
    assert!(
        listed
            .iter()
            .any(|w| w["address"] == "" && w["this"] == false),
        "B serves no HTTP: {listed:?}"
    );
    (a, b)
}

#[actix_web::test]
async fn a_socket_on_one_worker_gets_the_events_of_a_prompt_running_on_a_worker_only_one() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = busy_a_and_worker_only_b(dir.path(), &pg.url("postgres")).await;

    let client = awc::Client::default();
    let mut socket = WsClient::connect(&client, &a.base, "watcher", "").await;
    let sent = Instant::now();
    let id = queue_for(&a, "watcher", graph("remote", 0.5)).await;
    let mut events = Vec::new();
    let mut first_seen: Option<(f64, i64)> = None;
    while let Some(event) = socket.next_json().await {
        if event["type"] == "execution_start" {
            let started = event["data"]["timestamp"].as_i64().unwrap();
            first_seen = Some((
                sent.elapsed().as_secs_f64(),
                weft::store::now_ms() - started,
            ));
        }
        let done = event["type"] == "executing"
            && event["data"]["node"].is_null()
            && event["data"]["prompt_id"] == id.as_str();
        events.push(event);
        if done {
            break;
        }
    }
    let of = |kind: &str| -> Vec<&Json> {
        events
            .iter()
            .filter(|e| e["type"] == kind && e["data"]["prompt_id"] == id.as_str())
            .collect()
    };
    assert_eq!(of("execution_start").len(), 1, "{events:#?}");
    assert_eq!(of("execution_success").len(), 1, "{events:#?}");
    let progress = of("progress");
    assert_eq!(progress.len(), 20, "TestSleep's 20 steps: {events:#?}");
    assert_eq!(progress[19]["data"]["value"], 20);
    assert_eq!(progress[19]["data"]["node"], "2");
    let executing: Vec<&Json> = of("executing").iter().map(|e| &e["data"]["node"]).collect();
    assert!(executing.contains(&&json!("2")) && executing.contains(&&json!("3")));
    let executed = of("executed");
    assert_eq!(executed.len(), 1);
    assert_eq!(
        executed[0]["data"]["output"]["images"][0]["filename"],
        "remote_00001_.png"
    );
    // The queue counts arrive from B too.
    assert!(
        events.iter().any(|e| e["type"] == "status"
            && e["data"]["status"]["exec_info"]["queue_remaining"].is_number()),
        "{events:#?}"
    );
    // It ran on B, and A answers its history.
    assert_eq!(outputs(dir.path(), 2)[1], ["remote_00001_.png"]);
    assert_eq!(a.wait_history(&id).await["status"]["status_str"], "success");
    let (queued_to_start, start_to_socket_ms) = first_seen.unwrap();
    eprintln!(
        "queued on A, started on B, execution_start on A's socket {queued_to_start:.3} s after \
         queueing, {start_to_socket_ms} ms after B started it"
    );
    a.post("/interrupt", json!({})).await;
    drop(b);
}

#[actix_web::test]
async fn pause_through_one_worker_pauses_every_worker() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let workers = start_workers(dir.path(), &pg.url("postgres"), 2, &[]).await;
    let (status, body) = workers[0].post("/api/weft/queue/pause", json!({})).await;
    assert_eq!((status, &body), (200, &json!({"paused": true})));
    let id = workers[1].queue(graph("held", 0.0)).await;
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    for worker in &workers {
        let state = worker.get("/api/weft/queue/state").await;
        assert_eq!(state["paused"], true, "{state}");
        assert_eq!(state["pending"], json!([id]), "{state}");
    }
    let resumed = Instant::now();
    workers[0].post("/api/weft/queue/resume", json!({})).await;
    let entry = workers[1].wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "success");
    eprintln!("ran {:.3?} after the resume", resumed.elapsed());
    assert_eq!(workers[1].get("/api/weft/workers").await["paused"], false);
}

/// A prompt that loads `tiny.safetensors` and saves its VAE's decoding under `prefix`.
fn checkpoint_graph(prefix: &str) -> Json {
    sleeping_checkpoint_graph(prefix, 0.0)
}

/// [`checkpoint_graph`] that also sleeps `seconds` before saving.
fn sleeping_checkpoint_graph(prefix: &str, seconds: f64) -> Json {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "7": {"class_type": "TestSleep", "inputs": {"value": ["8", 0], "seconds": seconds}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn a_prompt_goes_to_the_worker_with_its_checkpoint_loaded() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        &dir.path().join("models/checkpoints/tiny.safetensors"),
        Tiny::Sd1,
    );
    let url = pg.url("postgres");
    // Worker 0 alone loads the checkpoint; then worker 1 joins.
    let mut workers = start_workers(dir.path(), &url, 1, &[]).await;
    let first = workers[0].queue(checkpoint_graph("first")).await;
    assert_eq!(
        workers[0].wait_history(&first).await["status"]["status_str"],
        "success"
    );
    workers.push(start_worker(dir.path(), &url, 1, &[]).await);
    let holder = wait_advertised(&workers[1], "checkpoints", "tiny.safetensors").await;
    assert_eq!(holder["checkpoints"], json!(["tiny.safetensors"]));
    assert_eq!(holder["device"], "cpu");
    assert!(holder["memory_budget"].as_i64().unwrap() > 0);

    // Sent to worker 1, one after another: each runs on worker 0, which has the model.
    run_each(
        &workers[1],
        (0..5).map(|i| checkpoint_graph(&format!("placed{i}"))),
    )
    .await;
    let saved = outputs(dir.path(), 2);
    assert_eq!(saved[0].len(), 6, "{saved:?}");
    assert!(saved[1].is_empty(), "{saved:?}");

    // While worker 0 is busy (placement sends it this prompt too), worker 1 does not wait for
    // it.
    let busy = workers[1]
        .queue(sleeping_checkpoint_graph("busy", 3.0))
        .await;
    wait_running_on(&workers[0], &busy).await;
    let started = Instant::now();
    let id = workers[1].queue(checkpoint_graph("elsewhere")).await;
    workers[1].wait_history(&id).await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outputs(dir.path(), 2)[1], ["elsewhere_00001_.png"]);

    // Worker 0 idle again with the checkpoint, then frozen (SIGSTOP: listed as idle, claiming
    // nothing): worker 1, which has let its copy go, leaves it the prompt for the grace period
    // only, then runs it itself.
    workers[1]
        .post("/free", json!({"unload_models": true, "free_memory": true}))
        .await;
    workers[0].wait_history(&busy).await;
    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
    let listed = wait_workers(&workers[1], 2).await;
    let holder = listed.iter().find(|w| w["this"] == false).unwrap();
    assert!(holder["running"].is_null(), "{holder}");
    assert_eq!(holder["checkpoints"], json!(["tiny.safetensors"]));
    signal(&workers[0], "-STOP");
    let started = Instant::now();
    let id = workers[1].queue(checkpoint_graph("starved")).await;
    let entry = workers[1].wait_history(&id).await;
    let waited = started.elapsed();
    signal(&workers[0], "-CONT");
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    assert_eq!(
        outputs(dir.path(), 2)[1],
        ["elsewhere_00001_.png", "starved_00001_.png"]
    );
    assert!(
        waited > Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    eprintln!(
        "left to a frozen worker with the checkpoint, then run by another after {waited:.2?}"
    );
}

/// The other worker as `server` lists it, once it advertises `name` of the model folder
/// `folder` loaded.
async fn wait_advertised(server: &Server, folder: &str, name: &str) -> Json {
    for _ in 0..200 {
        let listed = wait_workers(server, 2).await;
        let holder = listed.iter().find(|w| w["this"] == false).unwrap();
        if holder["models"][folder] == json!([name]) {
            return holder.clone();
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the other worker never advertised {folder}/{name}");
}

/// Queues each prompt on `server` once the one before it has finished, each a success.
async fn run_each(server: &Server, prompts: impl Iterator<Item = Json>) {
    for prompt in prompts {
        let id = server.queue(prompt).await;
        let entry = server.wait_history(&id).await;
        assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    }
}

/// A prompt that loads only a diffusion model (`tiny_unet.safetensors`, UNETLoader) beside a
/// text encoder and saves one step's latent under `prefix`.
fn diffusion_model_graph(prefix: &str) -> Json {
    json!({
        "u": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_unet.safetensors", "weight_dtype": "default"}},
        "c": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l_tiny.safetensors", "type": "stable_diffusion"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a boat"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["u", 0], "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": prefix}}
    })
}

#[actix_web::test]
async fn a_prompt_goes_to_the_worker_with_its_diffusion_model_loaded() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for (file, tensors) in [
        (
            "diffusion_models/tiny_unet.safetensors",
            crate::engine::load::ldm_tensors("sd1_tiny", "", candle_core::DType::F32),
        ),
        (
            "text_encoders/clip_l_tiny.safetensors",
            crate::models::clip_weights(48, None, weft::engine::clip::ClipActivation::QuickGelu),
        ),
    ] {
        let path = models.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        candle_core::safetensors::save(&tensors, path).unwrap();
    }
    let url = pg.url("postgres");
    // Worker 0 alone loads the diffusion model; then worker 1 joins.
    let mut workers = start_workers(dir.path(), &url, 1, &[]).await;
    run_each(&workers[0], std::iter::once(diffusion_model_graph("first"))).await;
    workers.push(start_worker(dir.path(), &url, 1, &[]).await);
    let holder = wait_advertised(&workers[1], "diffusion_models", "tiny_unet.safetensors").await;
    assert_eq!(holder["checkpoints"], json!([]), "{holder}");

    // Sent to worker 1: each runs on worker 0, which has the diffusion model.
    run_each(
        &workers[1],
        (0..3).map(|i| diffusion_model_graph(&format!("placed{i}"))),
    )
    .await;
    let latents = saved(dir.path(), 2, ".latent");
    assert_eq!(latents[0].len(), 4, "{latents:?}");
    assert!(latents[1].is_empty(), "{latents:?}");
}

/// A frame a socket got, with when it arrived and which node of the prompt was executing.
type Seen = (Instant, Option<String>, WsFrame);

/// Reads a socket's frames into `frames` up to the first one `stop` picks, the node executing
/// following `prompt_id`'s `executing` events.
async fn read_frames(
    socket: &mut WsClient,
    prompt_id: &str,
    frames: &mut Vec<Seen>,
    stop: impl Fn(&WsFrame) -> bool,
) {
    let mut node = frames.last().and_then(|(_, node, _)| node.clone());
    while let Some(frame) = socket.next_frame().await {
        if let WsFrame::Text(event) = &frame {
            if event["type"] == "executing" && event["data"]["prompt_id"] == prompt_id {
                node = event["data"]["node"].as_str().map(str::to_owned);
            }
        }
        let stopped = stop(&frame);
        frames.push((Instant::now(), node.clone(), frame));
        if stopped {
            return;
        }
    }
    panic!("socket closed before {prompt_id} finished");
}

/// Reads a socket's frames until `executing {node: null}` of `prompt_id`.
async fn frames_until_done(socket: &mut WsClient, prompt_id: &str) -> Vec<Seen> {
    let mut frames = Vec::new();
    read_frames(socket, prompt_id, &mut frames, |frame| {
        matches!(frame, WsFrame::Text(e) if e["type"] == "executing"
            && e["data"]["node"].is_null() && e["data"]["prompt_id"] == prompt_id)
    })
    .await;
    frames
}

/// The `timestamp` of the first `kind` event among `frames` (the clock of the worker that ran
/// the prompt).
fn timestamp(frames: &[Seen], kind: &str) -> i64 {
    frames
        .iter()
        .find_map(|(_, _, frame)| match frame {
            WsFrame::Text(e) if e["type"] == kind => e["data"]["timestamp"].as_i64(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// How many of `frames` are binary.
fn binary_count(frames: &[Seen]) -> usize {
    frames
        .iter()
        .filter(|(_, _, frame)| matches!(frame, WsFrame::Binary(_)))
        .count()
}

/// A binary frame's event type (1: PREVIEW_IMAGE, 4: with metadata) and the image in it.
fn preview_frame(frame: &[u8]) -> (u32, Option<Json>, &[u8]) {
    let word = |at: usize| u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
    match word(0) {
        1 => {
            assert_eq!(word(4), 2, "a PNG preview");
            (1, None, &frame[8..])
        }
        4 => {
            let end = 8 + word(4) as usize;
            (
                4,
                serde_json::from_slice(&frame[8..end]).ok(),
                &frame[end..],
            )
        }
        other => panic!("unexpected binary frame type {other}"),
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The mean time between a prompt's consecutive progress events of node `node`.
fn step_time(frames: &[Seen], node: &str) -> Duration {
    let steps: Vec<Instant> = frames
        .iter()
        .filter_map(|(at, _, frame)| match frame {
            WsFrame::Text(e) if e["type"] == "progress" && e["data"]["node"] == node => Some(*at),
            _ => None,
        })
        .collect();
    assert!(steps.len() > 2, "{} steps", steps.len());
    (steps[steps.len() - 1] - steps[0]) / (steps.len() as u32 - 1)
}

#[actix_web::test]
async fn previews_of_a_prompt_on_a_worker_only_one_reach_its_client_on_another() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        &dir.path().join("models/checkpoints/tiny.safetensors"),
        Tiny::Sd1,
    );
    let (a, b) = busy_a_and_worker_only_b(dir.path(), &pg.url("postgres")).await;
    let client = awc::Client::default();
    let mut watcher = WsClient::connect(&client, &a.base, "watcher", "").await;
    let mut bystander = WsClient::connect(&client, &a.base, "bystander", "").await;

    // Sampler step previews, as plain type 1 frames: a rate-limited share of the steps, each a
    // PNG, all while the sampler node runs.
    const STEPS: usize = 30;
    let mut sampling =
        crate::diffusion::default_workflow("tiny.safetensors", "euler", "normal", 5, "remote");
    sampling["3"]["inputs"]["steps"] = json!(STEPS);
    let id = queue_for(&a, "watcher", sampling.clone()).await;
    let frames = frames_until_done(&mut watcher, &id).await;
    let mut ours = vec![id];
    let previews: Vec<&Seen> = frames
        .iter()
        .filter(|(_, _, f)| matches!(f, WsFrame::Binary(_)))
        .collect();
    assert!(
        !previews.is_empty() && previews.len() <= STEPS,
        "{} previews",
        previews.len()
    );
    for (_, node, frame) in &previews {
        let WsFrame::Binary(frame) = frame else {
            unreachable!()
        };
        let (kind, _, image) = preview_frame(frame);
        assert_eq!((kind, node.as_deref()), (1, Some("3")));
        assert!(image.starts_with(PNG_SIGNATURE));
    }
    assert_eq!(saved(dir.path(), 2, ".png")[1], ["remote_00001_.png"]);
    let relayed_step = step_time(&frames, "3");

    // A stalled database (the previews table locked from the first preview on) holds up the
    // relay, not sampling: the prompt finishes on B (its row says so) while the lock is still
    // held, and the step previews of the stall go as one, the newest. Judged by the row rather
    // than by timings, which a loaded machine stretches.
    sampling["3"]["inputs"]["seed"] = json!(6);
    let id = queue_for(&a, "watcher", sampling.clone()).await;
    let mut frames = Vec::new();
    read_frames(&mut watcher, &id, &mut frames, |frame| {
        matches!(frame, WsFrame::Binary(_))
    })
    .await;
    let mut db = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE previews IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut watch = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    let locked = Instant::now();
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM prompts WHERE prompt_id = $1")
            .bind(&id)
            .fetch_one(&mut watch)
            .await
            .unwrap();
        if status == "done" {
            break;
        }
        assert!(
            locked.elapsed() < Duration::from_secs(120),
            "the prompt did not finish while the previews table was locked ({status})"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("finished {:.2?} into the stall", locked.elapsed());
    lock.commit().await.unwrap();
    frames.extend(frames_until_done(&mut watcher, &id).await);
    let stalled_previews = binary_count(&frames);
    assert!(
        stalled_previews > 0 && stalled_previews < STEPS,
        "{stalled_previews}"
    );
    ours.push(id);

    // A client asking for metadata gets type 4 frames; one preview right after the prompt
    // starts gives the latency from B to A's socket.
    let mut meta = WsClient::connect(&client, &a.base, "meta", "").await;
    meta.send_text(r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#)
        .await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let prompt = json!({
            "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8 + i, "batch_size": 1}},
            "2": {"class_type": "TestPreview", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "meta"}}
        });
        let id = queue_for(&a, "meta", prompt).await;
        let frames = frames_until_done(&mut meta, &id).await;
        ours.push(id.clone());
        let started = timestamp(&frames, "execution_start");
        let (arrived, node, frame) = frames
            .iter()
            .find_map(|(at, node, f)| match f {
                WsFrame::Binary(frame) => Some((*at, node, frame)),
                _ => None,
            })
            .expect("the preview");
        let (kind, metadata, image) = preview_frame(frame);
        assert_eq!((kind, node.as_deref()), (4, Some("2")));
        let metadata = metadata.expect("metadata");
        assert_eq!(metadata["prompt_id"], id.as_str());
        assert_eq!(metadata["node_id"], "2");
        assert_eq!(metadata["image_type"], "image/png");
        assert!(image.starts_with(PNG_SIGNATURE));
        let ago = Instant::now() - arrived;
        latencies.push(weft::store::now_ms() - ago.as_millis() as i64 - started);
    }

    // SaveImageWebsocket's images are outputs, not step previews: every one arrives, in order.
    let prompt = json!({
        "img": {"class_type": "StubImage", "inputs": {"content": "NOISE", "height": 8, "width": 8, "batch_size": 6}},
        "send": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["img", 0]}}
    });
    let id = queue_for(&a, "meta", prompt).await;
    let frames = frames_until_done(&mut meta, &id).await;
    ours.push(id);
    let sent: Vec<&[u8]> = frames
        .iter()
        .filter_map(|(_, node, frame)| match frame {
            WsFrame::Binary(frame) => {
                assert_eq!(node.as_deref(), Some("send"));
                Some(preview_frame(frame).2)
            }
            WsFrame::Text(_) => None,
        })
        .collect();
    assert_eq!(sent.len(), 6);
    assert!(sent.iter().all(|image| image.starts_with(PNG_SIGNATURE)));
    assert!(
        sent.windows(2).all(|pair| pair[0] != pair[1]),
        "six different images"
    );

    // The other client on A got none of it.
    while let Ok(Some(frame)) =
        actix_web::rt::time::timeout(Duration::from_millis(500), bystander.next_frame()).await
    {
        if let WsFrame::Text(event) = &frame {
            let prompt = event["data"]["prompt_id"].as_str().unwrap_or_default();
            assert!(!ours.iter().any(|id| id == prompt), "{event}");
        }
        assert!(
            matches!(frame, WsFrame::Text(_)),
            "a preview reached another client"
        );
    }

    // The same sampling on a worker of its own (SQLite: nothing published), for its step time.
    a.post("/interrupt", json!({})).await;
    drop(b);
    let solo = Server::start(
        &dir.path().join("solo"),
        &dir.path().join("models"),
        free_port(),
    )
    .await;
    let mut socket = WsClient::connect(&client, &solo.base, "solo", "").await;
    let id = queue_for(&solo, "solo", sampling).await;
    let alone_step = step_time(&frames_until_done(&mut socket, &id).await, "3");
    latencies.sort();
    eprintln!(
        "{} of {STEPS} step previews relayed; preview from B to A's socket {latencies:?} ms after \
         the prompt started; step time on B {relayed_step:.1?} (relayed), alone on SQLite \
         {alone_step:.1?}; with the previews table locked: {stalled_previews} previews; load {}",
        previews.len(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

fn signal(server: &Server, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
