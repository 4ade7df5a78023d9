//! Starting a real server on a free loopback port with a fresh data folder, and typed helpers to
//! drive it over HTTP and WebSocket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use weft::app::{self, ServerConfig};
use weft::exec::Executor;

pub struct TestApp {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub exec: Arc<Executor>,
    client: awc::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestApp {
    // Log lines go to the ring `/internal/logs` serves (one per test process), not the terminal.
    weft::logs::install_capture_only();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ServerConfig::new(&dir.path().join("data"));
    config.port = 0;
    config.models_dir = dir.path().join("models");
    config.test_nodes = true;
    config.http_workers = 1;
    adjust(&mut config);
    let running = app::start(config).await.expect("server starts");
    actix_web::rt::spawn(running.server);
    // Pooled connections are dropped before the server's 5 s keep-alive closes them: reusing
    // one the server has just closed fails the request with `Disconnected` (a test driving two
    // servers leaves one idle that long).
    let client = awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(2)))
        .timeout(Duration::from_secs(60))
        .finish();
    TestApp {
        base: format!("http://{}", running.addr),
        dir,
        exec: running.exec,
        client,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn get(&self, path: &str) -> (u16, Json) {
        let mut response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.body().limit(64 << 20).await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.body().limit(64 << 20).await.expect("body");
        (status, body.to_vec())
    }

    /// Status, Content-Type and body.
    pub async fn get_typed(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.body().limit(64 << 20).await.expect("body");
        (status, content_type, body.to_vec())
    }

    pub async fn patch(&self, path: &str, body: Json) -> (u16, Json) {
        let mut response = self
            .client
            .patch(self.url(path))
            .insert_header(("content-type", "application/json"))
            .send_body(body.to_string())
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.body().limit(64 << 20).await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
    }

    pub async fn post(&self, path: &str, body: Json) -> (u16, Json) {
        self.post_raw(path, body.to_string().into_bytes(), "application/json")
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> (u16, Json) {
        let mut response = self
            .client
            .post(self.url(path))
            .insert_header(("content-type", content_type))
            .send_body(body)
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.body().limit(64 << 20).await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
    }

    /// Queues a prompt and returns its id; panics unless accepted.
    pub async fn queue(&self, prompt: Json, client_id: &str) -> String {
        let (status, body) = self
            .post("/prompt", json!({"prompt": prompt, "client_id": client_id}))
            .await;
        assert_eq!(status, 200, "prompt rejected: {body}");
        body["prompt_id"].as_str().expect("prompt id").to_owned()
    }

    pub async fn ws(&self, client_id: &str) -> WsClient {
        self.ws_with(client_id, "").await
    }

    /// [`TestApp::ws`] with more query parameters (`&preview=0`).
    pub async fn ws_with(&self, client_id: &str, query: &str) -> WsClient {
        WsClient::connect(&self.client, &self.base, client_id, query).await
    }

    /// Waits until the prompt is in history (polling, for tests without a socket).
    pub async fn wait_history(&self, prompt_id: &str) -> Json {
        for _ in 0..2400 {
            let (_, body) = self.get(&format!("/history/{prompt_id}")).await;
            if let Some(entry) = body.get(prompt_id) {
                return entry.clone();
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("prompt {prompt_id} did not finish in 120 s");
    }

    /// Posts `request` to a queueing route (`/prompt`, `/api/weft/generate`), waits for the
    /// prompt and returns its history entry, asserting that it was queued and succeeded.
    pub async fn queue_ok(&self, path: &str, request: Json) -> Json {
        let (status, body) = self.post(path, request).await;
        assert_eq!(status, 200, "{body:#}");
        let entry = self.wait_history(body["prompt_id"].as_str().unwrap()).await;
        assert_eq!(
            entry["status"]["status_str"], "success",
            "{:#}",
            entry["status"]
        );
        entry
    }
}

/// A response: status, a header's value by name, and the body.
pub struct Reply {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or(Json::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub struct WsClient {
    connection: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
}

pub enum WsFrame {
    Text(Json),
    Binary(Vec<u8>),
}

impl WsClient {
    /// Connects to the socket of the server at `base` (`http://host:port`) as `client_id`, and
    /// reads its first `status`.
    pub async fn connect(
        client: &awc::Client,
        base: &str,
        client_id: &str,
        query: &str,
    ) -> WsClient {
        let url = format!(
            "{}/ws?clientId={client_id}{query}",
            base.replace("http://", "ws://")
        );
        let (_, connection) = client.ws(url).connect().await.expect("websocket connects");
        let mut client = WsClient { connection };
        let hello = client.next_json().await.expect("status on connect");
        assert_eq!(hello["type"], "status");
        assert_eq!(hello["data"]["sid"], client_id);
        client
    }

    pub async fn next_frame(&mut self) -> Option<WsFrame> {
        loop {
            let frame =
                actix_web::rt::time::timeout(Duration::from_secs(120), self.connection.next())
                    .await
                    .ok()??
                    .ok()?;
            match frame {
                ws::Frame::Text(bytes) => {
                    return serde_json::from_slice(&bytes).ok().map(WsFrame::Text)
                }
                ws::Frame::Binary(bytes) => return Some(WsFrame::Binary(bytes.to_vec())),
                ws::Frame::Ping(bytes) => {
                    let _ = self.connection.send(ws::Message::Pong(bytes)).await;
                }
                ws::Frame::Close(_) => return None,
                _ => {}
            }
        }
    }

    pub async fn next_json(&mut self) -> Option<Json> {
        loop {
            match self.next_frame().await? {
                WsFrame::Text(json) => return Some(json),
                WsFrame::Binary(_) => continue,
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.connection
            .send(ws::Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// Reads events until `executing {node: null}` for `prompt_id`; returns every text event.
    pub async fn until_done(&mut self, prompt_id: &str) -> Vec<Json> {
        let mut events = Vec::new();
        while let Some(event) = self.next_json().await {
            let done = event["type"] == "executing"
                && event["data"]["node"].is_null()
                && event["data"]["prompt_id"] == prompt_id;
            events.push(event);
            if done {
                return events;
            }
        }
        panic!("socket closed before prompt {prompt_id} finished; got {events:#?}");
    }
}

/// Event names in order, leaving out `status` and `progress`.
pub fn names(events: &[Json]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] != "status" && e["type"] != "progress")
        .map(|e| match e["type"].as_str() {
            Some("executing") if !e["data"]["node"].is_null() => {
                format!("executing:{}", e["data"]["node"].as_str().unwrap_or("?"))
            }
            Some("executed") => format!("executed:{}", e["data"]["node"].as_str().unwrap_or("?")),
            Some(other) => other.to_owned(),
            None => "?".into(),
        })
        .collect()
}

pub fn find<'a>(events: &'a [Json], kind: &str) -> Option<&'a Json> {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .map(|e| &e["data"])
}

/// Reads a PNG's size and text chunks.
pub fn read_png(path: &Path) -> (u32, u32, Vec<(String, String)>, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("png exists"),
    ));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut pixels).expect("png frame");
    let info = reader.info();
    let texts = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    (info.width, info.height, texts, pixels)
}

/// The largest difference between two 8-bit images, in levels.
pub fn max_level_diff(a: &[u8], b: &[u8]) -> u8 {
    a.iter()
        .zip(b)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0)
}

/// A small graph of utility nodes: StubImage → ImageInvert → SaveImage.
/// A white 8x8 image held `seconds` by `TestSleep` (progress in 20 steps, interruptible), then
/// saved under `prefix`.
pub fn sleeper(prefix: &str, seconds: f64) -> Json {
    json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
        "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

pub fn invert_graph(prefix: &str) -> Json {
    json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "BLACK", "height": 16, "width": 24, "batch_size": 1}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}
    })
}

struct NoReporter;

impl weft::nodes::Reporter for NoReporter {
    fn progress(&self, _: &str, _: u64, _: u64) {}
    fn preview(&self, _: &str, _: Vec<u8>, _: bool) {}
}

/// A context for calling a node directly, outside a prompt (for checks of exact values).
pub fn context(app: &TestApp) -> weft::nodes::NodeContext {
    context_in(app.exec.dirs().clone())
}

/// [`context`] over data folders of its own, without a server.
pub fn context_in(dirs: weft::paths::DataDirs) -> weft::nodes::NodeContext {
    weft::nodes::NodeContext {
        node_id: "direct".into(),
        prompt_id: "direct".into(),
        dirs: Arc::new(dirs),
        prompt: Arc::new(json!({})),
        extra_pnginfo: None,
        reporter: Arc::new(NoReporter),
        interrupt: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        write_metadata: false,
        models: Arc::new(weft::engine::manager::ModelManager::new(
            1 << 30,
            candle_core::Device::Cpu,
            candle_core::DType::F32,
        )),
        png_text: Arc::default(),
    }
}

/// One of ComfyUI's editor-format templates in `tests/fixtures/editor/workflows/`.
pub fn comfy_template(name: &str) -> Json {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/editor/workflows/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("template exists"))
        .expect("template is JSON")
}

/// An editor workflow with its image sizes and step counts cut to what tiny models run in a
/// second on two cores; the graph itself is unchanged.
pub fn shrink_editor_workflow(mut workflow: Json) -> Json {
    for node in workflow["nodes"].as_array_mut().expect("editor workflow") {
        let kind = node["type"].as_str().unwrap_or("").to_owned();
        let Some(values) = node["widgets_values"].as_array_mut() else {
            continue;
        };
        match kind.as_str() {
            "EmptyLatentImage" => {
                values[0] = json!(64);
                values[1] = json!(64);
            }
            "KSampler" => values[2] = json!(3),
            "ImageScaleToTotalPixels" => values[1] = json!(0.01),
            "ImageScale" => {
                values[1] = json!(96);
                values[2] = json!(96);
            }
            _ => {}
        }
    }
    workflow
}

/// `comfy.samplers.KSampler.SAMPLERS`, copied from ComfyUI (comfyui-api.md §4), independent of
/// Weft's own list so tests can compare the two.
pub const COMFY_SAMPLERS: &[&str] = &[
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];

/// Asserts two 8-bit images differ by less than `tolerance` levels on average (printing the
/// figure, which the notes report) and returns the mean difference.
pub fn assert_close_pixels(label: &str, got: &[u8], expected: &[u8], tolerance: f64) -> f64 {
    assert_eq!(got.len(), expected.len(), "{label}: image sizes differ");
    let mean_diff = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / got.len() as f64;
    eprintln!("{label}: mean pixel difference {mean_diff:.3}");
    assert!(
        mean_diff < tolerance,
        "{label}: mean pixel difference {mean_diff:.3}, tolerance {tolerance}"
    );
    mean_diff
}

/// `tests/fixtures/annotators/<family>/<name>`: the annotator parity fixtures.
pub fn annotator_fixture(family: &str, name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/annotators")
        .join(family)
        .join(name)
}

/// Copies the annotator fixtures `files` of `family` into `models/annotators/<sub>` (each
/// `(file, sub)`: `""` for the folder itself, or the pack's `ckpts/...` tree below it) and the
/// fixture PNG `input` (if any) into the input folder.
pub fn add_annotators(app: &TestApp, family: &str, files: &[(&str, &str)], input: Option<&str>) {
    for (file, sub) in files {
        let folder = app.dir.path().join("models/annotators").join(sub);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(annotator_fixture(family, file), folder.join(file)).unwrap();
    }
    if let Some(input) = input {
        let folder = app.data_dir().join("input");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(annotator_fixture(family, input), folder.join(input)).unwrap();
    }
}
