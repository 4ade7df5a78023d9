//! Many `weft serve` workers on one PostgreSQL queue (issue 22): every prompt runs exactly once
//! whichever worker it was sent to, a killed worker's prompt finishes on another, an interrupt
//! sent to any worker reaches the one running the prompt. Each test starts its own PostgreSQL
//! (`weft::store::testing`) and skips, saying why, where none can be started.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use weft::store::testing::TestPostgres;

use crate::restart::{free_port, graph, Server};

/// `count` workers on `url`, each with its own data folder (`w0`, `w1`, …) as on separate
/// machines, sharing the models folder.
async fn start_workers(dir: &Path, url: &str, count: usize, more: &[&str]) -> Vec<Server> {
    let mut workers = Vec::new();
    for i in 0..count {
        let mut args: Vec<OsString> = vec!["--database".into(), url.into()];
        args.extend(more.iter().map(OsString::from));
        let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
        let data = dir.join(format!("w{i}"));
        workers.push(Server::start_with(&data, &dir.join("models"), free_port(), &args).await);
    }
    workers
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
    let mut workers = start_workers(
        dir.path(),
        &pg.url("postgres"),
        2,
        &["--lease-seconds", "1"],
    )
    .await;
    // The second worker waits, so the first one takes the prompt.
    workers[1].post("/api/weft/queue/pause", json!({})).await;
    let id = workers[0].queue(graph("long", 2.0)).await;
    wait_running_on(&workers[0], &id).await;
    workers[0].stop(); // SIGKILL: no clean shutdown, the lease just stops being renewed.
    let killed = Instant::now();
    workers[1].post("/api/weft/queue/resume", json!({})).await;

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
    let workers = start_workers(
        dir.path(),
        &pg.url("postgres"),
        2,
        &["--lease-seconds", "1"],
    )
    .await;
    workers[1].post("/api/weft/queue/pause", json!({})).await;
    let slow = workers[0].queue(graph("slow", 60.0)).await;
    wait_running_on(&workers[0], &slow).await;
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
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(workers[0]
        .get(&format!("/history/{pending}"))
        .await
        .get(&pending)
        .is_none());
}
