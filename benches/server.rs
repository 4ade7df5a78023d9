//! Server benchmarks (figures, not assertions): scheduling and cache lookup for a 200-node graph
//! of utility nodes, and the server time of a fully cached re-queue.
//!
//! Run with `cargo bench --bench server`. ComfyUI has no equivalent in-process measurement; its
//! cached re-queue can be timed with the same HTTP loop against a ComfyUI server for comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::ws;
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use weft::app::{self, ServerConfig};
use weft::exec::{CachedOutput, OutputCache};
use weft::graph::{validate, Workflow};
use weft::nodes::{Registry, Value};
use weft::paths::DataDirs;

/// StubImage → 198 chained ImageInvert → SaveImage: 200 nodes.
fn graph_200() -> Json {
    let mut graph = serde_json::Map::new();
    graph.insert("0".into(), json!({"class_type": "StubImage", "inputs": {"content": "BLACK", "height": 8, "width": 8, "batch_size": 1}}));
    for i in 1..=198 {
        graph.insert(
            i.to_string(),
            json!({"class_type": "ImageInvert", "inputs": {"image": [(i - 1).to_string(), 0]}}),
        );
    }
    graph.insert("199".into(), json!({"class_type": "SaveImage", "inputs": {"images": ["198", 0], "filename_prefix": "bench"}}));
    Json::Object(graph)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn bench_scheduling() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = DataDirs::new(dir.path(), &dir.path().join("models"));
    dirs.create().unwrap();
    let registry = Registry::with_test_nodes();
    let catalog = registry.catalog(&dirs);
    let prompt = graph_200();

    let mut cache = OutputCache::new(1 << 30);
    let plan = validate(&Workflow::from_api_json(&prompt).unwrap(), &catalog, None)
        .plan
        .unwrap();
    let freshness = vec![None; plan.nodes().len()];
    for signature in plan.signatures(&freshness) {
        cache.insert(
            signature.key,
            CachedOutput {
                values: Arc::new(vec![Value::Int(0)]),
                ui: None,
            },
            "ImageInvert",
            "x",
        );
    }

    let mut parse = Vec::new();
    let mut validation = Vec::new();
    let mut keys = Vec::new();
    let mut lookups = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let workflow = Workflow::from_api_json(&prompt).unwrap();
        parse.push(t.elapsed());
        let t = Instant::now();
        let plan = validate(&workflow, &catalog, None).plan.unwrap();
        validation.push(t.elapsed());
        let t = Instant::now();
        let signatures = plan.signatures(&freshness);
        keys.push(t.elapsed());
        let t = Instant::now();
        let hits = signatures
            .iter()
            .filter(|s| cache.get(&s.key).is_some())
            .count();
        lookups.push(t.elapsed());
        assert_eq!(hits, 200);
    }
    let total = median(parse.clone())
        + median(validation.clone())
        + median(keys.clone())
        + median(lookups.clone());
    println!("scheduling a 200-node graph (median of 200 runs, in process):");
    println!("  parse API JSON              {:>10.1?}", median(parse));
    println!(
        "  validate + topological plan {:>10.1?}",
        median(validation)
    );
    println!("  cache keys (200 signatures) {:>10.1?}", median(keys));
    println!("  cache lookups (200 hits)    {:>10.1?}", median(lookups));
    println!(
        "  total                       {:>10.1?}  ({:.2} µs per node)",
        total,
        total.as_secs_f64() * 1e6 / 200.0
    );
}

async fn bench_cached_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(&dir.path().join("data"));
    config.port = 0;
    config.models_dir = dir.path().join("models");
    config.test_nodes = true;
    let running = app::start(config).await.unwrap();
    let base = format!("http://{}", running.addr);
    actix_web::rt::spawn(running.server);
    let client = awc::Client::default();
    let (_, mut socket) = client
        .ws(format!("{}/ws?clientId=bench", base.replace("http", "ws")))
        .connect()
        .await
        .unwrap();
    let body = json!({"prompt": graph_200(), "client_id": "bench"});

    let mut timings = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        let mut response = client
            .post(format!("{base}/prompt"))
            .send_json(&body)
            .await
            .unwrap();
        let answer: Json = serde_json::from_slice(&response.body().await.unwrap()).unwrap();
        let prompt_id = answer["prompt_id"].as_str().unwrap().to_owned();
        while let Some(Ok(frame)) = socket.next().await {
            if let ws::Frame::Text(bytes) = frame {
                let event: Json = serde_json::from_slice(&bytes).unwrap();
                if event["type"] == "executing"
                    && event["data"]["node"].is_null()
                    && event["data"]["prompt_id"] == prompt_id.as_str()
                {
                    break;
                }
            }
        }
        timings.push(t.elapsed());
    }
    let first = timings.remove(0);
    let cached = timings;
    println!("server round trip, 200-node graph (POST /prompt until `executing` null on /ws):");
    println!("  first run (all 200 nodes execute)  {:>10.1?}", first);
    println!(
        "  fully cached re-queue, median of 30 {:>10.1?}",
        median(cached)
    );
}

fn main() {
    bench_scheduling();
    actix_web::rt::System::new().block_on(bench_cached_requeue());
}
