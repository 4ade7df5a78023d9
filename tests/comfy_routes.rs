//! The ComfyUI routes its web frontend calls besides the core API: the jobs API, the internal
//! routes (logs, folder paths, files), the model browser, mask uploads, and what custom nodes and
//! the templates package would serve (Weft has neither).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::helpers::{invert_graph, spawn_app, spawn_app_with, TestApp};
use crate::server::{multipart, png_bytes};

/// A safetensors file with one tiny tensor and, when given, a `__metadata__` object.
fn write_safetensors(path: &Path, metadata: Option<Json>) {
    let mut header = json!({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}});
    if let Some(metadata) = metadata {
        header["__metadata__"] = metadata;
    }
    let header = header.to_string();
    let mut data = (header.len() as u64).to_le_bytes().to_vec();
    data.extend(header.as_bytes());
    data.extend([0u8; 4]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn webp_size(bytes: &[u8]) -> (u32, u32) {
    let image =
        image::load_from_memory_with_format(bytes, image::ImageFormat::WebP).expect("a WebP image");
    (image.width(), image.height())
}

#[actix_web::test]
async fn custom_node_and_template_routes_answer_as_comfyui_does_without_them() {
    let app = spawn_app().await;
    for prefix in ["", "/api"] {
        for path in ["/i18n", "/workflow_templates", "/global_subgraphs"] {
            let (status, body) = app.get(&format!("{prefix}{path}")).await;
            assert_eq!((status, body), (200, json!({})), "{prefix}{path}");
        }
        let (status, body) = app.get(&format!("{prefix}/global_subgraphs/abc123")).await;
        assert_eq!((status, body), (200, Json::Null));
    }
    // The template index is an empty list in every locale, as JSON (the frontend checks the
    // content type); the search options are null; other files do not exist.
    for file in ["index.json", "index.fr.json", "index.zh-TW.json"] {
        let (status, content_type, body) = app.get_typed(&format!("/templates/{file}")).await;
        assert_eq!(status, 200, "{file}");
        assert!(content_type.contains("application/json"), "{content_type}");
        assert_eq!(serde_json::from_slice::<Json>(&body).unwrap(), json!([]));
    }
    let (status, body) = app.get("/templates/fuse_options.json").await;
    assert_eq!((status, body), (200, Json::Null));
    let (status, body) = app.get("/templates/default.json").await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no workflow templates"));
    // ComfyUI serves templates at /templates only.
    let (status, _) = app.get("/api/templates/index.json").await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn template_files_of_the_served_frontend_come_first() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<html></html>").unwrap();
    std::fs::create_dir_all(web.path().join("templates/sub")).unwrap();
    let index = json!([{"moduleName": "default", "title": "Basics", "templates": []}]);
    std::fs::write(web.path().join("templates/index.json"), index.to_string()).unwrap();
    std::fs::write(web.path().join("templates/sub/t.json"), "{}").unwrap();
    let root = web.path().to_path_buf();
    let app = spawn_app_with(move |c| c.web_root = Some(root)).await;
    let (status, body) = app.get("/templates/index.json").await;
    assert_eq!((status, body), (200, index));
    let (status, body) = app.get("/templates/sub/t.json").await;
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = app.get("/templates/index.de.json").await;
    assert_eq!((status, body), (200, json!([])));
    let (status, _, page) = app.get_typed("/").await;
    assert_eq!(
        (status, page.as_slice()),
        (200, b"<html></html>".as_slice())
    );
    // What ComfyUI's frontend asks for on every load: providers' logos, and the stylesheet its
    // page links beside itself (the user's `user.css`, empty when there is none).
    let (status, body) = app.get("/templates/index_logo.json").await;
    assert_eq!((status, body), (200, json!({})));
    let (status, headers, css) = app.get_typed("/user.css").await;
    assert_eq!((status, css.as_slice()), (200, b"".as_slice()));
    assert!(headers.starts_with("text/css"), "{headers}");
}

#[actix_web::test]
async fn the_model_browser_lists_folders_files_previews_and_metadata() {
    let app = spawn_app().await;
    let models = app.dir.path().join("models");
    let cover = {
        use base64::Engine as _;
        let png = png_bytes(3, 2, [0, 0, 255, 255]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(png);
        json!([encoded]).to_string()
    };
    write_safetensors(
        &models.join("loras/b.safetensors"),
        Some(json!({"ss_network_dim": "16", "modelspec.title": "B"})),
    );
    std::fs::write(
        models.join("loras/b.png"),
        png_bytes(5, 4, [255, 0, 0, 255]),
    )
    .unwrap();
    write_safetensors(
        &models.join("loras/sub/c.safetensors"),
        Some(json!({"ssmd_cover_images": cover})),
    );
    write_safetensors(&models.join("loras/plain.safetensors"), None);
    std::fs::write(models.join("loras/old.ckpt"), b"pickle").unwrap();
    std::fs::write(models.join("loras/.hidden.safetensors"), b"x").unwrap();
    std::fs::write(app.dir.path().join("secret.png"), png_bytes(1, 1, [0; 4])).unwrap();

    for prefix in ["", "/api"] {
        let (status, folders) = app.get(&format!("{prefix}/experiment/models")).await;
        assert_eq!(status, 200);
        let folders = folders.as_array().unwrap();
        let names: Vec<&str> = folders
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"checkpoints") && names.contains(&"loras"));
        assert!(
            !names.contains(&"configs"),
            "configs are left out, as in ComfyUI"
        );
        let controlnet = folders.iter().find(|f| f["name"] == "controlnet").unwrap();
        let paths: Vec<&str> = controlnet["folders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(paths.len(), 2);
        assert!(paths[0].ends_with("models/controlnet") && paths[1].ends_with("t2i_adapter"));
    }

    let (status, files) = app.get("/experiment/models/loras").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "b.safetensors",
            "old.ckpt",
            "plain.safetensors",
            "sub/c.safetensors"
        ]
    );
    let b = &files[0];
    assert_eq!(b["pathIndex"], 0);
    assert_eq!(
        b["size"],
        std::fs::metadata(models.join("loras/b.safetensors"))
            .unwrap()
            .len()
    );
    assert!(b["modified"].as_f64().unwrap() > 1.0e9);
    assert!(b["created"].as_f64().unwrap() > 1.0e9);
    let (status, _) = app.get("/experiment/models/nope").await;
    assert_eq!(status, 404);

    // Previews: the image beside the model, else a cover image in its metadata, as WebP.
    let (status, content_type, body) = app
        .get_typed("/api/experiment/models/preview/loras/0/b.safetensors")
        .await;
    assert_eq!((status, content_type.as_str()), (200, "image/webp"));
    assert_eq!(webp_size(&body), (5, 4));
    let (status, _, body) = app
        .get_typed("/experiment/models/preview/loras/0/sub/c.safetensors")
        .await;
    assert_eq!(status, 200);
    assert_eq!(webp_size(&body), (3, 2));
    for (path, expected) in [
        ("loras/0/plain.safetensors", 404),
        ("loras/0/missing.safetensors", 404),
        ("nope/0/b.safetensors", 404),
        ("loras/7/b.safetensors", 400),
        ("loras/x/b.safetensors", 400),
        ("loras/0/../../secret.png", 400),
    ] {
        let (status, body) = app.get(&format!("/experiment/models/preview/{path}")).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
    let (_, body) = app
        .get("/experiment/models/preview/loras/7/b.safetensors")
        .await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("path_index 7"));

    // Metadata of safetensors files.
    let (status, body) = app
        .get("/api/view_metadata/loras?filename=b.safetensors")
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"ss_network_dim": "16", "modelspec.title": "B"}))
    );
    let (status, _) = app
        .get("/view_metadata/loras?filename=sub%2Fc.safetensors")
        .await;
    assert_eq!(status, 200);
    for (query, expected) in [
        ("loras?filename=plain.safetensors", 404),
        ("loras?filename=old.ckpt", 404),
        ("loras?filename=missing.safetensors", 404),
        ("loras", 404),
        ("nope?filename=b.safetensors", 404),
        ("loras?filename=..%2F..%2Fsecret.safetensors", 400),
        ("loras?filename=%2Fetc%2Fx.safetensors", 400),
    ] {
        let (status, body) = app.get(&format!("/view_metadata/{query}")).await;
        assert_eq!(status, expected, "{query}: {body}");
    }
}

/// A PNG with a `prompt` text chunk: RGB pixels, each channel set by position.
fn original_png(path: &Path, width: u32, height: u32) {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .add_text_chunk("prompt".into(), "{\"1\": {}}".into())
            .unwrap();
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..width * height)
            .flat_map(|i| [i as u8, 100, 200])
            .collect();
        writer.write_image_data(&data).unwrap();
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

async fn upload_mask(app: &TestApp, fields: &[(&str, Option<&str>, &[u8])]) -> (u16, Json) {
    let (body, content_type) = multipart(fields);
    app.post_raw("/upload/mask", body, &content_type).await
}

#[actix_web::test]
async fn a_mask_upload_puts_the_masks_alpha_into_the_original() {
    let app = spawn_app().await;
    original_png(&app.data_dir().join("output/sub/orig.png"), 4, 3);
    // The mask: transparent left half, opaque right half; its colours do not matter.
    let mut mask = image::RgbaImage::new(4, 3);
    for (x, _, pixel) in mask.enumerate_pixels_mut() {
        *pixel = image::Rgba([9, 9, 9, if x < 2 { 0 } else { 255 }]);
    }
    let mut mask_png = Vec::new();
    mask.write_to(
        &mut std::io::Cursor::new(&mut mask_png),
        image::ImageFormat::Png,
    )
    .unwrap();
    let reference =
        json!({"filename": "orig.png", "subfolder": "sub", "type": "output"}).to_string();
    let fields: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("image", Some("clipspace-mask.png"), &mask_png),
        ("original_ref", None, reference.as_bytes()),
        ("type", None, b"input"),
        ("subfolder", None, b"clipspace"),
    ];
    let (status, body) = upload_mask(&app, &fields).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"})
    );
    let saved = app.data_dir().join("input/clipspace/clipspace-mask.png");
    let (w, h, texts, pixels) = crate::helpers::read_png(&saved);
    assert_eq!((w, h), (4, 3));
    assert_eq!(texts, [("prompt".to_owned(), "{\"1\": {}}".to_owned())]);
    for (i, pixel) in pixels.chunks(4).enumerate() {
        let alpha = if i % 4 < 2 { 0 } else { 255 };
        assert_eq!(pixel, [i as u8, 100, 200, alpha], "pixel {i}");
    }

    // The same name again gets a new name (the stored file is the composite, not the mask).
    let (status, body) = upload_mask(&app, &fields).await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("clipspace-mask (1).png"))
    );

    // An annotated name picks the folder; `type` defaults to output.
    original_png(&app.data_dir().join("input/in.png"), 4, 3);
    for reference in [
        json!({"filename": "in.png [input]"}),
        json!({"filename": "sub/orig.png"}),
    ] {
        let reference = reference.to_string();
        let (status, body) = upload_mask(
            &app,
            &[
                ("image", Some("m2.png"), &mask_png),
                ("original_ref", None, reference.as_bytes()),
                ("overwrite", None, b"true"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{reference}: {body}");
    }

    let bad_refs = [
        (
            json!({"filename": "missing.png"}).to_string(),
            400,
            "no file 'missing.png'",
        ),
        (
            json!({"subfolder": "sub"}).to_string(),
            400,
            "filename is required",
        ),
        (
            json!({"filename": "../secret.png"}).to_string(),
            400,
            "invalid file name",
        ),
        (
            json!({"filename": "orig.png", "subfolder": "sub", "type": "elsewhere"}).to_string(),
            400,
            "type must be",
        ),
        ("not json".to_owned(), 400, "not a JSON object"),
    ];
    for (reference, expected, message) in bad_refs {
        let (status, body) = upload_mask(
            &app,
            &[
                ("image", Some("bad.png"), &mask_png),
                ("original_ref", None, reference.as_bytes()),
            ],
        )
        .await;
        assert_eq!(status, expected, "{reference}: {body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(
            text.starts_with("original_ref") && text.contains(message),
            "{text}"
        );
    }
    let (status, body) = upload_mask(&app, &[("image", Some("bad.png"), &mask_png)]).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("original_ref is required"));
    let small = png_bytes(2, 2, [0, 0, 0, 0]);
    let (status, body) = upload_mask(
        &app,
        &[
            ("image", Some("small.png"), &small),
            ("original_ref", None, reference.as_bytes()),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the mask is 2x2 but the original is 4x3"));
    assert!(!app.data_dir().join("input/small.png").exists());
}

/// Polls `/internal/logs/raw` until a line contains `marker`.
async fn wait_for_log_line(app: &TestApp, marker: &str) -> Json {
    for _ in 0..200 {
        let (status, raw) = app.get("/internal/logs/raw").await;
        assert_eq!(status, 200);
        if let Some(entry) = raw["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["m"].as_str().unwrap_or("").contains(marker))
        {
            return entry.clone();
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no log line with {marker}");
}

#[actix_web::test]
async fn internal_routes_serve_logs_folder_paths_and_files() {
    let app = spawn_app().await;

    // Log lines (here the request log of a marked request) and their shapes.
    app.get("/object_info/LogMarkerOne").await;
    let entry = wait_for_log_line(&app, "LogMarkerOne").await;
    let time = entry["t"].as_str().unwrap();
    assert!(time.len() == 32 && time.ends_with("+00:00"), "{time}");
    assert!(entry["m"].as_str().unwrap().ends_with('\n'));
    let (status, raw) = app.get("/internal/logs/raw").await;
    assert_eq!(status, 200);
    assert!(raw["size"]["cols"].as_u64().unwrap() > 0 && raw["size"]["rows"].as_u64().unwrap() > 0);
    assert!(raw["entries"].as_array().unwrap().len() <= 300);
    let (status, text) = app.get("/internal/logs").await;
    assert_eq!(status, 200);
    assert!(
        text.as_str().unwrap().contains(" - ") && text.as_str().unwrap().contains("LogMarkerOne")
    );

    // A subscribed client gets `logs` events with new lines; the subscription ends on request.
    let mut ws = app.ws("log-reader").await;
    let (status, _) = app
        .patch(
            "/internal/logs/subscribe",
            json!({"enabled": true, "clientId": "log-reader"}),
        )
        .await;
    assert_eq!(status, 200);
    app.get("/object_info/LogMarkerTwo").await;
    loop {
        let event = ws.next_json().await.expect("a logs event");
        if event["type"] != "logs" {
            continue;
        }
        assert!(event["data"].get("size").is_some());
        let entries = event["data"]["entries"].as_array().unwrap();
        assert!(entries
            .iter()
            .all(|e| e["t"].is_string() && e["m"].is_string()));
        if entries
            .iter()
            .any(|e| e["m"].as_str().unwrap().contains("LogMarkerTwo"))
        {
            break;
        }
    }
    for (body, message) in [
        (json!({"enabled": true}), "clientId is required"),
        (json!({"clientId": "x"}), "enabled is required"),
        (
            json!({"clientId": "x", "enabled": "yes"}),
            "enabled must be true or false",
        ),
    ] {
        let (status, answer) = app.patch("/internal/logs/subscribe", body).await;
        assert_eq!((status, answer), (400, json!({"error": message})));
    }
    let (status, _) = app
        .patch(
            "/internal/logs/subscribe",
            json!({"enabled": false, "clientId": "log-reader"}),
        )
        .await;
    assert_eq!(status, 200);

    // Model folder paths, in search order.
    let (status, paths) = app.get("/internal/folder_paths").await;
    assert_eq!(status, 200);
    let models = app.dir.path().join("models");
    assert_eq!(
        paths["checkpoints"],
        json!([models.join("checkpoints").display().to_string()])
    );
    assert_eq!(
        paths["text_encoders"],
        json!([
            models.join("text_encoders").display().to_string(),
            models.join("clip").display().to_string()
        ])
    );
    assert!(paths.get("configs").is_some());

    // A data folder's visible files at its top level, newest first.
    let input = app.data_dir().join("input");
    for (name, age) in [("older.png", 60), ("newer.png", 0), (".hidden", 0)] {
        let path = input.join(name);
        std::fs::write(&path, b"x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(age))
            .unwrap();
    }
    std::fs::create_dir_all(input.join("folder")).unwrap();
    let (status, files) = app.get("/internal/files/input").await;
    assert_eq!((status, files), (200, json!(["newer.png", "older.png"])));
    let (status, files) = app.get("/internal/files/temp").await;
    assert_eq!((status, files), (200, json!([])));
    let (status, body) = app.get("/internal/files/models").await;
    assert_eq!(status, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid directory type"));
    // ComfyUI serves these at /internal only.
    let (status, _) = app.get("/api/internal/folder_paths").await;
    assert_eq!(status, 404);
}

fn sleeper(seconds: f64) -> Json {
    crate::helpers::sleeper("sleep", seconds)
}

fn ids(body: &Json) -> Vec<String> {
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_running(app: &TestApp, id: &str) {
    for _ in 0..2400 {
        let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
        if job["status"] == "in_progress" {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} never ran");
}

#[actix_web::test]
async fn jobs_list_the_queue_and_the_history_with_filters_and_pages() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/jobs").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"jobs": [], "pagination": {"offset": 0, "limit": null, "total": 0, "has_more": false}})
        )
    );

    // Completed (from an editor workflow with an id), failed, cancelled (interrupted).
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": invert_graph("job"), "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1", "nodes": []}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let completed = body["prompt_id"].as_str().unwrap().to_owned();
    app.wait_history(&completed).await;
    let failing = json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
        "2": {"class_type": "TestFail", "inputs": {"value": ["1", 0], "message": "it broke"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fail"}}
    });
    let failed = app.queue(failing, "jobs").await;
    app.wait_history(&failed).await;
    let cancelled = app.queue(sleeper(30.0), "jobs").await;
    wait_running(&app, &cancelled).await;
    // Long enough to be the longest run of the three.
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    app.post("/interrupt", json!({"prompt_id": cancelled}))
        .await;
    app.wait_history(&cancelled).await;
    // One running, two pending behind it, and one taken off the queue (not a job).
    let running = app.queue(sleeper(60.0), "jobs").await;
    wait_running(&app, &running).await;
    let first_pending = app.queue(invert_graph("p1"), "jobs").await;
    let second_pending = app.queue(invert_graph("p2"), "jobs").await;
    let deleted = app.queue(invert_graph("p3"), "jobs").await;
    app.post("/queue", json!({"delete": [deleted]})).await;

    let (status, body) = app.get("/api/jobs").await;
    assert_eq!(status, 200);
    // Newest first.
    assert_eq!(
        ids(&body),
        [
            second_pending.as_str(),
            &first_pending,
            &running,
            &cancelled,
            &failed,
            &completed
        ]
    );
    assert_eq!(
        body["pagination"],
        json!({"offset": 0, "limit": null, "total": 6, "has_more": false})
    );
    let jobs = body["jobs"].as_array().unwrap();
    let by_id = |id: &str| jobs.iter().find(|j| j["id"] == id).unwrap().clone();

    let pending = by_id(&first_pending);
    let keys: Vec<&str> = pending
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "status",
            "priority",
            "create_time",
            "outputs_count",
            "previewable_outputs_count"
        ]
    );
    assert_eq!(pending["status"], "pending");
    assert!(
        pending["priority"].is_i64()
            && pending["create_time"].as_i64().unwrap() > 1_600_000_000_000
    );
    assert_eq!(by_id(&running)["status"], "in_progress");

    let done = by_id(&completed);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["workflow_id"], "wf-1");
    assert_eq!(
        (
            done["outputs_count"].as_u64(),
            done["previewable_outputs_count"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        done["preview_output"],
        json!({"filename": "job_00001_.png", "subfolder": "", "type": "output", "nodeId": "3", "mediaType": "images"})
    );
    let (start, end) = (
        done["execution_start_time"].as_i64().unwrap(),
        done["execution_end_time"].as_i64().unwrap(),
    );
    assert!(end >= start && start >= done["create_time"].as_i64().unwrap());
    assert!(done.get("execution_error").is_none() && done.get("outputs").is_none());

    let error = by_id(&failed);
    assert_eq!(error["status"], "failed");
    assert_eq!(error["outputs_count"], 0);
    assert!(error.get("preview_output").is_none());
    let execution_error = &error["execution_error"];
    assert_eq!(execution_error["node_id"], "2");
    assert_eq!(execution_error["node_type"], "TestFail");
    assert_eq!(execution_error["exception_message"], "it broke");
    assert!(execution_error["traceback"].is_array());
    assert_eq!(by_id(&cancelled)["status"], "cancelled");

    // Filters.
    for (query, expected) in [
        ("status=completed", vec![&completed]),
        (
            "status=pending,in_progress",
            vec![&second_pending, &first_pending, &running],
        ),
        ("status=%20Failed%20,cancelled", vec![&cancelled, &failed]),
        ("status=,", vec![]),
        ("workflow_id=wf-1", vec![&completed]),
        ("workflow_id=other", vec![]),
    ] {
        let (status, body) = app.get(&format!("/api/jobs?{query}")).await;
        assert_eq!(
            (status, ids(&body)),
            (
                200,
                expected.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            ),
            "{query}"
        );
    }
    let (_, body) = app
        .get(&format!(
            "/api/jobs?ids={failed},{completed},{failed},{deleted}"
        ))
        .await;
    assert_eq!(ids(&body), [failed.as_str(), &completed]);

    // Order and pages.
    let (_, body) = app.get("/api/jobs?sort_order=ASC&limit=2").await;
    assert_eq!(ids(&body), [completed.as_str(), &failed]);
    assert_eq!(
        body["pagination"],
        json!({"offset": 0, "limit": 2, "total": 6, "has_more": true})
    );
    let (_, body) = app.get("/api/jobs?limit=2&offset=4").await;
    assert_eq!(ids(&body), [failed.as_str(), &completed]);
    assert_eq!(body["pagination"]["has_more"], false);
    let (_, body) = app.get("/api/jobs?offset=-3&limit=1").await;
    assert_eq!(
        (ids(&body), body["pagination"]["offset"].as_i64()),
        (vec![second_pending.clone()], Some(0))
    );
    let (_, body) = app.get("/api/jobs?offset=10").await;
    assert_eq!(
        (ids(&body).len(), body["pagination"]["total"].as_i64()),
        (0, Some(6))
    );
    let (status, body) = app
        .get("/api/jobs?sort_by=execution_duration&status=completed,failed,cancelled")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&body)[0],
        cancelled,
        "the interrupted sleeper ran longest"
    );

    // Bad parameters, with ComfyUI's messages.
    for (query, message) in [
        ("status=done", "Invalid status value(s): done. Valid values: pending, in_progress, completed, failed, cancelled"),
        ("sort_by=name", "sort_by must be 'created_at' or 'execution_duration'"),
        ("sort_order=up", "sort_order must be 'asc' or 'desc'"),
        ("limit=0", "limit must be a positive integer"),
        ("limit=ten", "limit must be an integer"),
        ("offset=x", "offset must be an integer"),
    ] {
        let (status, body) = app.get(&format!("/api/jobs?{query}")).await;
        assert_eq!((status, body), (400, json!({"error": message})), "{query}");
    }
    let many: Vec<String> = (0..101).map(|i| format!("id-{i}")).collect();
    let (status, body) = app.get(&format!("/api/jobs?ids={}", many.join(","))).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "ids must contain at most 100 values"}))
    );

    // One job: a finished one with its outputs, status and workflow; a queued one without.
    let (status, detail) = app.get(&format!("/api/jobs/{completed}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["status"], "completed");
    assert_eq!(
        detail["outputs"]["3"]["images"][0]["filename"],
        "job_00001_.png"
    );
    assert_eq!(detail["execution_status"]["status_str"], "success");
    assert_eq!(detail["execution_status"]["completed"], true);
    assert_eq!(
        detail["execution_status"]["messages"][0][0],
        "execution_start"
    );
    assert_eq!(
        detail["workflow"]["prompt"]["2"]["class_type"],
        "ImageInvert"
    );
    assert_eq!(
        detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"],
        "wf-1"
    );
    let (_, detail) = app.get(&format!("/api/jobs/{failed}")).await;
    assert_eq!(detail["execution_status"]["status_str"], "error");
    let (status, detail) = app.get(&format!("/api/jobs/{first_pending}")).await;
    assert_eq!((status, detail["status"].as_str()), (200, Some("pending")));
    assert!(detail.get("outputs").is_none() && detail.get("workflow").is_none());
    for missing in [deleted.as_str(), "no-such-job"] {
        let (status, body) = app.get(&format!("/api/jobs/{missing}")).await;
        assert_eq!(status, 404);
        assert!(body["error"].as_str().unwrap().starts_with("Job not found"));
    }
    // ComfyUI serves the jobs API under /api only.
    let (status, _) = app.get("/jobs").await;
    assert_eq!(status, 404);

    app.post("/queue", json!({"clear": true})).await;
    app.post("/interrupt", json!({})).await;
    app.wait_history(&running).await;
    let (_, body) = app.get("/api/jobs?status=pending,in_progress").await;
    assert_eq!(ids(&body), Vec::<String>::new());
}

/// The newest frontend's queue panel cancels through these (1.58.1: `cancelJob`, `cancelJobs`).
#[actix_web::test]
async fn jobs_are_cancelled_by_id_pending_or_running_one_at_a_time_or_many() {
    let app = spawn_app().await;
    let finished = app.queue(invert_graph("done"), "c").await;
    app.wait_history(&finished).await;
    let running = app.queue(sleeper(60.0), "c").await;
    wait_running(&app, &running).await;
    let pending = app.queue(invert_graph("p1"), "c").await;
    let (more, stays) = (
        app.queue(invert_graph("p2"), "c").await,
        app.queue(invert_graph("p3"), "c").await,
    );

    // A pending job leaves the queue; cancelling it again is no error.
    for _ in 0..2 {
        let (status, body) = app
            .post(&format!("/api/jobs/{pending}/cancel"), json!({}))
            .await;
        assert_eq!(
            (status, body),
            (200, json!({"id": pending, "cancelled": true}))
        );
    }
    let (_, queue) = app.get("/queue").await;
    assert_eq!(queue["queue_pending"].as_array().unwrap().len(), 2);

    // Unknown: 404; completed: 409; both with ComfyUI's error shape.
    let (status, body) = app.post("/api/jobs/no-such-job/cancel", json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("Job not found: no-such-job"))
    );
    let (status, body) = app
        .post(&format!("/api/jobs/{finished}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("completed"),
        "{body}"
    );

    // Many at once: the running one is interrupted, the pending one leaves, the rest are sorted.
    let (status, body) = app
        .post(
            "/api/jobs/cancel",
            json!({"job_ids": [running, more, finished, "nope"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"cancelled": [running, more], "not_found": ["nope"], "already_finished": [finished]})
    );
    let entry = app.wait_history(&running).await;
    assert_eq!(entry["status"]["status_str"], "error", "{entry}");
    let (_, job) = app.get(&format!("/api/jobs/{running}")).await;
    assert_eq!(job["status"], "cancelled");
    // The job nobody cancelled still runs.
    let entry = app.wait_history(&stays).await;
    assert_eq!(entry["status"]["status_str"], "success", "{entry}");

    // Bad bodies name what is expected.
    for bad in [json!({}), json!({"job_ids": "x"}), json!({"job_ids": [1]})] {
        let (status, body) = app.post("/api/jobs/cancel", bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"].as_str().unwrap().contains("job_ids"),
            "{body}"
        );
    }
    let many: Vec<String> = (0..101).map(|i| format!("id-{i}")).collect();
    let (status, _) = app.post("/api/jobs/cancel", json!({"job_ids": many})).await;
    assert_eq!(status, 400);
    // Under /api only, as the rest of the jobs API.
    let (status, _) = app.post(&format!("/jobs/{stays}/cancel"), json!({})).await;
    assert_eq!(status, 404);
}

/// The frontend's node help panel reads `/docs/{class}/{locale}.md` for core nodes.
#[actix_web::test]
async fn node_help_pages_are_written_from_the_declarations() {
    let app = spawn_app().await;
    for locale in ["en", "zh"] {
        let (status, content_type, body) =
            app.get_typed(&format!("/docs/KSampler/{locale}.md")).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/markdown; charset=utf-8");
        let page = String::from_utf8(body).unwrap();
        assert!(page.starts_with("# KSampler\n"), "{page}");
        assert!(page.contains("| `cfg` | FLOAT | 8 | 0 to 100 |"), "{page}");
    }
    for missing in ["/docs/NoSuchNode/en.md", "/docs/KSampler/en.html"] {
        let (status, content_type, _) = app.get_typed(missing).await;
        // Not HTML: the frontend treats an HTML answer as a page of its own.
        assert_eq!(
            (status, content_type.as_str()),
            (404, "text/plain; charset=utf-8"),
            "{missing}"
        );
    }
}
