//! Durability: a server killed with SIGKILL while a prompt runs loses nothing (issue 2), and a
//! prompt that takes the server down at two restarts in a row is quarantined (issue 20).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value as Json};

/// `weft serve` as a child process (killed when dropped), for tests that stop and start it.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    client: awc::Client,
}

impl Server {
    pub(crate) async fn start(data: &Path, models: &Path, port: u16) -> Server {
        Server::start_with(data, models, port, &[]).await
    }

    /// [`Server::start`] with more command-line arguments.
    pub(crate) async fn start_with(
        data: &Path,
        models: &Path,
        port: u16,
        more: &[&std::ffi::OsStr],
    ) -> Server {
        let mut server = Server::spawn(data, models, port, more);
        for _ in 0..400 {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("weft exited before listening on {port}: {status}");
            }
            if server
                .client
                .get(format!("{}/prompt", server.base))
                .send()
                .await
                .is_ok()
            {
                return server;
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("weft did not start listening on {port}");
    }

    /// Starts `weft serve` without waiting for it to listen.
    pub(crate) fn spawn(
        data: &Path,
        models: &Path,
        port: u16,
        more: &[&std::ffi::OsStr],
    ) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--test-nodes", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(data)
            .arg("--models-dir")
            .arg(models)
            .args(more)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weft starts");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: awc::Client::default(),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Json {
        let mut response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        serde_json::from_slice(&response.body().await.expect("body")).unwrap_or(Json::Null)
    }

    pub(crate) async fn post(&self, path: &str, body: Json) -> (u16, Json) {
        let mut response = self
            .client
            .post(format!("{}{path}", self.base))
            .send_json(&body)
            .await
            .expect("request");
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_slice(&response.body().await.expect("body")).unwrap_or(Json::Null),
        )
    }

    /// Posts a request that makes the server abort: it may die before it answers, so a dropped
    /// connection is not an error here.
    async fn post_fatal(&self, path: &str) {
        let _ = self
            .client
            .post(format!("{}{path}", self.base))
            .send_json(&json!({}))
            .await;
    }

    pub(crate) async fn queue(&self, prompt: Json) -> String {
        let (status, body) = self.post("/prompt", json!({"prompt": prompt})).await;
        assert_eq!(status, 200, "{body}");
        body["prompt_id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn wait_history(&self, id: &str) -> Json {
        for _ in 0..1200 {
            let history = self.get(&format!("/history/{id}")).await;
            if let Some(entry) = history.get(id) {
                return entry.clone();
            }
            actix_web::rt::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{id} never finished");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Server {
    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) use crate::helpers::sleeper as graph;

#[actix_web::test]
async fn sigkill_while_running_loses_no_prompt_and_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().join("data"), dir.path().join("models"));
    let port = free_port();
    let server = Server::start(&data, &models, port).await;

    let done_before = server.queue(graph("before", 0.0)).await;
    server.wait_history(&done_before).await;
    let running = server.queue(graph("running", 2.0)).await;
    let second = server.queue(graph("second", 0.0)).await;
    let third = server.queue(graph("third", 0.0)).await;
    // Wait until the long prompt is running, then kill the server without warning.
    for _ in 0..400 {
        let queue = server.get("/queue").await;
        if queue["queue_running"][0][1] == running.as_str() {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    let mut server = server;
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    drop(server);

    let server = Server::start(&data, &models, free_port()).await;
    // The one that was running runs again first, then the pending ones in their original order.
    let running_entry = server.wait_history(&running).await;
    let second_entry = server.wait_history(&second).await;
    let third_entry = server.wait_history(&third).await;
    assert_eq!(running_entry["status"]["status_str"], "success");
    assert_eq!(second_entry["status"]["status_str"], "success");
    assert_eq!(third_entry["status"]["status_str"], "success");
    let history = server.get("/history").await;
    let order: Vec<&String> = history.as_object().unwrap().keys().collect();
    assert_eq!(order, [&done_before, &running, &second, &third]);
    assert_eq!(
        history[&running]["outputs"]["3"]["images"][0]["filename"],
        "running_00001_.png"
    );
    // History from before the crash is intact.
    assert_eq!(
        history[&done_before]["outputs"]["3"]["images"][0]["filename"],
        "before_00001_.png"
    );

    // One call re-queues a finished prompt; it runs again under the same id.
    let (status, body) = server
        .post(&format!("/api/weft/queue/{running}/requeue"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // It runs again (from the cache, so at once) and is back in the history.
    let entry = server.wait_history(&running).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
}

/// Waits until the server has exited on its own (a node aborted it).
async fn wait_exit(server: &mut Server) {
    for _ in 0..1200 {
        if let Ok(Some(_)) = server.child.try_wait() {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the aborting prompt did not take the server down");
}

/// Checks that `id` is in the history as quarantined, with a `weft.Quarantined` error.
fn assert_quarantined(id: &str, entry: &Json) {
    assert_eq!(entry["status"]["status_str"], "error", "{entry}");
    assert_eq!(entry["status"]["completed"], false);
    let reason = entry["status"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("quarantined"), "{entry}");
    let messages = entry["status"]["messages"].as_array().unwrap();
    let error = messages
        .iter()
        .find(|m| m[0] == "execution_error")
        .unwrap_or_else(|| panic!("no execution_error in {entry}"));
    assert_eq!(error[1]["exception_type"], "weft.Quarantined");
    assert_eq!(error[1]["prompt_id"], id);
    let why = error[1]["exception_message"].as_str().unwrap();
    assert!(
        why.contains("2 restarts in a row") && why.contains("requeue"),
        "{why}"
    );
}

#[actix_web::test]
async fn a_prompt_that_kills_the_server_twice_is_quarantined_and_can_be_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().join("data"), dir.path().join("models"));
    let mut server = Server::start(&data, &models, free_port()).await;
    server.post("/api/weft/queue/pause", json!({})).await;
    let bad = server
        .queue(json!({
            "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
            "2": {"class_type": "TestAbort", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bad"}}
        }))
        .await;
    let innocent = server.queue(graph("innocent", 0.0)).await;
    // The bad prompt aborts the process as soon as it runs.
    server.post_fatal("/api/weft/queue/resume").await;
    wait_exit(&mut server).await;
    drop(server);

    // First restart: it was running at one crash, so it runs again (first) and aborts again.
    let mut server = Server::spawn(&data, &models, free_port(), &[]);
    wait_exit(&mut server).await;
    drop(server);

    // Second restart: running at two crashes in a row, it is quarantined; the innocent one runs.
    let mut server = Server::start(&data, &models, free_port()).await;
    let entry = server.wait_history(&innocent).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
    assert_quarantined(&bad, &server.wait_history(&bad).await);
    let queue = server.get("/queue").await;
    assert_eq!(queue["queue_running"], json!([]), "{queue}");
    assert_eq!(queue["queue_pending"], json!([]), "{queue}");

    // Re-queued by hand, it runs again and starts from no crashes: after taking the server down
    // it is re-run once more at the next start, and quarantined at the one after. The queue is
    // paused so that the requeue is answered before the prompt takes the server down.
    server.post("/api/weft/queue/pause", json!({})).await;
    let (status, body) = server
        .post(&format!("/api/weft/queue/{bad}/requeue"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    server.post_fatal("/api/weft/queue/resume").await;
    wait_exit(&mut server).await;
    drop(server);
    let mut server = Server::spawn(&data, &models, free_port(), &[]);
    wait_exit(&mut server).await;
    drop(server);
    let server = Server::start(&data, &models, free_port()).await;
    assert_quarantined(&bad, &server.wait_history(&bad).await);
}

/// Sends SIGTERM (what a service manager stops a server with) and waits for a clean exit.
async fn terminate(server: &mut Server) {
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    wait_exit(server).await;
}

/// Waits until `id` is the running prompt.
async fn wait_running(server: &Server, id: &str) {
    for _ in 0..400 {
        if server.get("/queue").await["queue_running"][0][1] == id {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} never started running");
}

#[cfg(unix)]
#[actix_web::test]
async fn stopping_the_server_cleanly_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().join("data"), dir.path().join("models"));
    let mut server = Server::start(&data, &models, free_port()).await;
    let long = server.queue(graph("long", 2.0)).await;
    // Stopped twice while it runs: each time it goes back to the queue, never quarantined.
    for _ in 0..2 {
        wait_running(&server, &long).await;
        terminate(&mut server).await;
        drop(server);
        server = Server::start(&data, &models, free_port()).await;
    }
    let entry = server.wait_history(&long).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");
}
