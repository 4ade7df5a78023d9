//! Editor-format workflow files through the server: ComfyUI's own templates queued as they are,
//! conversion both ways, workflows recovered from PNGs, and `weft run` on editor files (issue 6).

use serde_json::{json, Value as Json};

use crate::helpers::{comfy_template, read_png, shrink_editor_workflow, spawn_app, TestApp};
use crate::models::{write_checkpoint, Tiny};

fn template(name: &str) -> Json {
    comfy_template(name)
}

fn small(name: &str) -> Json {
    shrink_editor_workflow(comfy_template(name))
}

fn expected(name: &str) -> Json {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/editor/expected/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A server whose models folder has tiny checkpoints under the names the templates use.
async fn app_with_template_models() -> TestApp {
    let app = spawn_app().await;
    let checkpoints = app.dir.path().join("models/checkpoints");
    write_checkpoint(
        &checkpoints.join("v1-5-pruned-emaonly-fp16.safetensors"),
        Tiny::Sd1,
    );
    write_checkpoint(
        &checkpoints.join("sd_xl_turbo_1.0_fp16.safetensors"),
        Tiny::Sdxl,
    );
    app
}

#[actix_web::test]
async fn comfyui_templates_queue_as_editor_files_and_run() {
    let app = app_with_template_models().await;
    // The ComfyUI default graph, exactly as the frontend saves it.
    let (status, body) = app
        .post("/prompt", json!({"prompt": small("default")}))
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["prompt_id"].as_str().unwrap().to_owned();
    let entry = app.wait_history(&id).await;
    assert_eq!(
        entry["status"]["status_str"], "success",
        "{:#}",
        entry["status"]
    );
    // The queued prompt is the converted API graph.
    let mut stored = entry["prompt"][2].clone();
    let mut reference = expected("default");
    reference["3"]["inputs"]["steps"] = json!(3);
    reference["5"]["inputs"]["width"] = json!(64);
    reference["5"]["inputs"]["height"] = json!(64);
    for prompt in [&mut stored, &mut reference] {
        for node in prompt.as_object_mut().unwrap().values_mut() {
            node.as_object_mut().unwrap().remove("_meta");
            // Queued prompts hold coerced constants (cfg 8 becomes 8.0, as in ComfyUI).
            for value in node["inputs"].as_object_mut().unwrap().values_mut() {
                if let Some(f) = value.as_f64().filter(|_| value.is_number()) {
                    *value = json!(f);
                }
            }
        }
    }
    assert_eq!(stored, reference);
    // The saved image carries the editor workflow, so it can be dropped back into an editor.
    let image = &entry["outputs"]["9"]["images"][0];
    let path = app
        .data_dir()
        .join("output")
        .join(image["filename"].as_str().unwrap());
    let (_, _, texts, _) = read_png(&path);
    let workflow: Json =
        serde_json::from_str(&texts.iter().find(|(k, _)| k == "workflow").unwrap().1).unwrap();
    assert_eq!(workflow["nodes"], small("default")["nodes"]);

    // SDXL-Turbo's template: SamplerCustom, SDTurboScheduler, KSamplerSelect.
    app.queue_ok("/prompt", json!({"prompt": small("sdxlturbo_example")}))
        .await;

    // A workflow that needs nodes Weft lacks is refused with their names, nothing queued.
    let mut unknown = template("default");
    for node in unknown["nodes"].as_array_mut().unwrap() {
        if node["type"] == "CheckpointLoaderSimple" {
            node["type"] = json!("GLIGENXLLoader");
        }
    }
    let (status, body) = app.post("/prompt", json!({"prompt": unknown})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "missing_node_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GLIGENXLLoader"),
        "{body}"
    );
}

#[actix_web::test]
async fn convert_endpoint_both_ways_and_from_png() {
    let app = app_with_template_models().await;
    let (status, converted) = app.post("/api/weft/convert", template("default")).await;
    assert_eq!(status, 200, "{converted}");
    assert_eq!(converted["prompt"], expected("default"));
    assert_eq!(converted["missing_node_types"], json!([]));
    assert_eq!(converted["missing_models"], json!([]));
    // lora.json names models this server does not have and a node type it may lack.
    let (_, lora) = app.post("/api/weft/convert", template("lora")).await;
    assert!(
        lora["missing_models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["value"] == "dreamshaper_8.safetensors"),
        "{lora}"
    );

    // API → editor → API is stable.
    let (status, editor) = app
        .post(
            "/api/weft/convert?to=editor",
            json!({"prompt": converted["prompt"]}),
        )
        .await;
    assert_eq!(status, 200, "{editor}");
    assert!(editor["nodes"].as_array().unwrap().len() == 7);
    let (_, again) = app.post("/api/weft/convert", editor).await;
    assert_eq!(again["prompt"], converted["prompt"]);

    // A PNG saved by a run gives back its workflow and prompt.
    let (_, body) = app
        .post("/prompt", json!({"prompt": small("default")}))
        .await;
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    let name = entry["outputs"]["9"]["images"][0]["filename"]
        .as_str()
        .unwrap()
        .to_owned();
    let png = std::fs::read(app.data_dir().join("output").join(&name)).unwrap();
    let (status, recovered) = app.post_raw("/api/weft/convert", png, "image/png").await;
    assert_eq!(status, 200, "{recovered}");
    assert_eq!(recovered["workflow"]["nodes"], small("default")["nodes"]);
    assert_eq!(recovered["prompt"]["3"]["class_type"], "KSampler");

    // Bad input: not JSON, not a workflow, a PNG without chunks, a link to a missing node.
    let (status, _) = app
        .post_raw("/api/weft/convert", b"{nope".to_vec(), "application/json")
        .await;
    assert_eq!(status, 400);
    let (status, _) = app.post("/api/weft/convert", json!({"hello": 1})).await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post_raw(
            "/api/weft/convert",
            crate::server::png_bytes(2, 2, [0, 0, 0, 255]),
            "image/png",
        )
        .await;
    assert_eq!(status, 400);
    let mut broken = template("default");
    broken["links"]
        .as_array_mut()
        .unwrap()
        .push(json!([99, 1234, 0, 3, 0, "MODEL"]));
    broken["nodes"][3]["inputs"][0]["link"] = json!(99);
    let (status, body) = app.post("/api/weft/convert", broken.clone()).await;
    assert_eq!(status, 400, "{body}");
    // A PNG whose only chunk is that workflow still gives the workflow back (an editor can open
    // it), with no prompt and the reason.
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, 1, 1);
        encoder.set_color(png::ColorType::Rgba);
        encoder
            .add_itxt_chunk("workflow".into(), broken.to_string())
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0, 0, 0, 255]).unwrap();
    }
    let (status, body) = app.post_raw("/api/weft/convert", png, "image/png").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["workflow"]["nodes"], broken["nodes"]);
    assert_eq!(body["prompt"], Json::Null);
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cannot convert"),
        "{body}"
    );
}

#[test]
fn weft_run_accepts_editor_files() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(
        &dir.path()
            .join("models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors"),
        Tiny::Sd1,
    );
    std::fs::write(
        dir.path().join("default.json"),
        small("default").to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["run", "default.json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_00001_.png"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[actix_web::test]
async fn oversized_workflows_are_refused_before_parsing() {
    let app = spawn_app().await;
    // 51 MB of valid-looking JSON: over the 50 MB editor-workflow limit.
    let mut body = String::from(r#"{"nodes": [], "links": [], "extra": {"padding": ""#);
    body.push_str(&"x".repeat(51 * 1024 * 1024));
    body.push_str(r#""}}"#);
    let (status, answer) = app
        .post_raw("/api/weft/convert", body.into_bytes(), "application/json")
        .await;
    assert_eq!(status, 413, "{answer}");
    let (_, list) = app.get("/api/weft/workflows").await;
    assert_eq!(list, json!([]), "nothing stored");
}
