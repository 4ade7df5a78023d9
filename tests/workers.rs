//! Many `weft serve` workers on one PostgreSQL queue (issue 22): every prompt runs exactly once
//! whichever worker it was sent to, a killed worker's prompt finishes on another, an interrupt
//! sent to any worker reaches the one running the prompt, a socket on any worker gets the events
//! of its prompts wherever they run, pause is the queue's, a `--worker-only` worker runs prompts,
//! and a prompt goes preferably to the worker that has its checkpoint loaded. Each test starts
//! its own PostgreSQL (`weft::store::testing`) and skips, saying why, where none can be started.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use weft::store::testing::TestPostgres;

use crate::helpers::WsClient;
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
    (0..workers)
        .map(|i| {
            let mut names: Vec<String> = std::fs::read_dir(dir.join(format!("w{i}/output")))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.ends_with(".png"))
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

#[actix_web::test]
async fn a_socket_on_one_worker_gets_the_events_of_a_prompt_running_on_a_worker_only_one() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url("postgres");
    let a = start_worker(dir.path(), &url, 0, &[]).await;
    // A takes a long prompt, so the next one goes to B: a worker without HTTP.
    let blocker = a.queue(graph("blocker", 60.0)).await;
    wait_running_on(&a, &blocker).await;
    let args = worker_args(&url, &["--worker-only"]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let b = Server::spawn(&dir.path().join("w1"), &dir.path().join("models"), 0, &args);
    let listed = wait_workers(&a, 2).await;
    assert!(
        listed
            .iter()
            .any(|w| w["address"] == "" && w["this"] == false),
        "B serves no HTTP: {listed:?}"
    );

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
    let mut advertised = false;
    for _ in 0..200 {
        let listed = wait_workers(&workers[1], 2).await;
        let holder = listed.iter().find(|w| w["this"] == false).unwrap();
        if holder["checkpoints"] == json!(["tiny.safetensors"]) {
            assert_eq!(holder["device"], "cpu");
            assert!(holder["memory_budget"].as_i64().unwrap() > 0);
            advertised = true;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(advertised, "worker 0 never advertised its checkpoint");

    // Sent to worker 1, one after another: each runs on worker 0, which has the model.
    for i in 0..5 {
        let id = workers[1]
            .queue(checkpoint_graph(&format!("placed{i}")))
            .await;
        let entry = workers[1].wait_history(&id).await;
        assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    }
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

fn signal(server: &Server, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}
