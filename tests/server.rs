//! The server core through the real HTTP and WebSocket API (issue 2).

use serde_json::{json, Value as Json};

use crate::helpers::{
    find, invert_graph, names, read_png, sleeper, spawn_app, spawn_app_with, WsFrame,
};

/// The events (as `names` lists them) of a run of a 3-node chain none of which was cached.
const THREE_NODES_RUN: [&str; 8] = [
    "execution_start",
    "execution_cached",
    "executing:1",
    "executing:2",
    "executing:3",
    "executed:3",
    "execution_success",
    "executing",
];

#[actix_web::test]
async fn a_run_sends_comfyui_events_in_order_and_saves_a_png_with_metadata() {
    let app = spawn_app().await;
    let mut ws = app.ws("client-a").await;
    let workflow = json!({"nodes": [], "links": [], "note": "editor json"});
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": invert_graph("run"), "client_id": "client-a", "extra_data": {"extra_pnginfo": {"workflow": workflow}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node_errors"], json!({}));
    assert!(body["number"].is_number());
    let prompt_id = body["prompt_id"].as_str().unwrap().to_owned();

    let events = ws.until_done(&prompt_id).await;
    assert_eq!(names(&events), THREE_NODES_RUN);
    // status (queued) comes before execution_start, and a final status before executing null.
    let first_status = events.iter().position(|e| e["type"] == "status").unwrap();
    let start = events
        .iter()
        .position(|e| e["type"] == "execution_start")
        .unwrap();
    assert!(first_status < start);
    assert_eq!(events[events.len() - 2]["type"], "status");
    assert_eq!(
        find(&events, "execution_cached").unwrap()["nodes"],
        json!([])
    );
    let executed = find(&events, "executed").unwrap();
    assert_eq!(executed["prompt_id"], prompt_id.as_str());
    let image = &executed["output"]["images"][0];
    assert_eq!(image["filename"], "run_00001_.png");
    assert_eq!(image["type"], "output");

    let (w, h, texts, pixels) = read_png(&app.data_dir().join("output/run_00001_.png"));
    assert_eq!((w, h), (24, 16));
    assert!(pixels.iter().all(|&p| p == 255), "black inverted is white");
    let prompt_chunk = texts
        .iter()
        .find(|(k, _)| k == "prompt")
        .expect("prompt chunk");
    let stored: Json = serde_json::from_str(&prompt_chunk.1).unwrap();
    assert_eq!(stored["2"]["class_type"], "ImageInvert");
    let workflow_chunk = texts
        .iter()
        .find(|(k, _)| k == "workflow")
        .expect("workflow chunk");
    assert_eq!(
        serde_json::from_str::<Json>(&workflow_chunk.1).unwrap(),
        workflow
    );

    let entry = app.wait_history(&prompt_id).await;
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["status"]["completed"], true);
    assert_eq!(
        entry["outputs"]["3"]["images"][0]["filename"],
        "run_00001_.png"
    );
    assert_eq!(entry["prompt"][1], prompt_id.as_str());
    assert_eq!(entry["prompt"][3]["client_id"], "client-a");
    assert_eq!(entry["prompt"][4], json!(["3"]));
    let messages: Vec<&str> = entry["status"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[0].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["execution_start", "execution_cached", "execution_success"]
    );
    assert_eq!(entry["meta"]["3"]["node_id"], "3");
}

#[actix_web::test]
async fn an_identical_requeue_runs_nothing_and_a_changed_input_reruns_only_downstream() {
    let app = spawn_app().await;
    let mut ws = app.ws("c").await;
    let graph = json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "NOISE", "height": 16, "width": 16, "batch_size": 1}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "bilinear", "scale_by": 2.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "cache"}}
    });
    let first = app.queue(graph.clone(), "c").await;
    ws.until_done(&first).await;

    let second = app.queue(graph.clone(), "c").await;
    let events = ws.until_done(&second).await;
    assert_eq!(
        names(&events),
        [
            "execution_start",
            "execution_cached",
            "executed:4",
            "execution_success",
            "executing"
        ]
    );
    assert_eq!(
        find(&events, "execution_cached").unwrap()["nodes"],
        json!(["1", "2", "3", "4"])
    );
    // A cached SaveImage does not write again; it reports the same file.
    assert_eq!(
        find(&events, "executed").unwrap()["output"]["images"][0]["filename"],
        "cache_00001_.png"
    );
    assert!(!app.data_dir().join("output/cache_00002_.png").exists());

    // Change the scale: the scaler and the saver re-run; the stub and the inverter come from cache.
    let mut changed = graph.clone();
    changed["3"]["inputs"]["scale_by"] = json!(3.0);
    let third = app.queue(changed, "c").await;
    let events = ws.until_done(&third).await;
    assert_eq!(
        names(&events),
        [
            "execution_start",
            "execution_cached",
            "executing:3",
            "executing:4",
            "executed:4",
            "execution_success",
            "executing"
        ]
    );
    assert_eq!(
        find(&events, "execution_cached").unwrap()["nodes"],
        json!(["1", "2"])
    );
    let (w, _, _, _) = read_png(&app.data_dir().join("output/cache_00002_.png"));
    assert_eq!(w, 48);

    // The cache endpoint explains the last prompt node by node.
    let (_, cache) = app.get("/api/weft/cache").await;
    let nodes = cache["last_prompt"]["nodes"].as_array().unwrap();
    let by_id = |id: &str| nodes.iter().find(|n| n["node_id"] == id).unwrap().clone();
    assert_eq!(by_id("2")["status"], "cached");
    assert_eq!(by_id("3")["status"], "executed");
    assert_eq!(by_id("3")["reason"], "input 'scale_by' changed");
    assert_eq!(by_id("4")["reason"], "input 'images' changed");
    assert!(cache["used_bytes"].as_u64().unwrap() > 0);

    // Node ids are not part of the cache key: the same graph renumbered is fully cached.
    let renumbered = json!({
        "a": {"class_type": "StubImage", "inputs": {"content": "NOISE", "height": 16, "width": 16, "batch_size": 1}},
        "b": {"class_type": "ImageInvert", "inputs": {"image": ["a", 0]}},
        "c": {"class_type": "ImageScaleBy", "inputs": {"image": ["b", 0], "upscale_method": "bilinear", "scale_by": 2.0}},
        "d": {"class_type": "SaveImage", "inputs": {"images": ["c", 0], "filename_prefix": "cache"}}
    });
    let fourth = app.queue(renumbered, "c").await;
    let events = ws.until_done(&fourth).await;
    assert!(
        !names(&events).iter().any(|n| n.starts_with("executing:")),
        "{:?}",
        names(&events)
    );

    // /free with free_memory drops the cache: everything runs again.
    let (status, _) = app.post("/free", json!({"free_memory": true})).await;
    assert_eq!(status, 200);
    let fifth = app.queue(graph, "c").await;
    let events = ws.until_done(&fifth).await;
    assert_eq!(
        names(&events)
            .iter()
            .filter(|n| n.starts_with("executing:"))
            .count(),
        4
    );
}

#[actix_web::test]
async fn validation_errors_are_reported_per_node_in_comfyui_shape() {
    let app = spawn_app().await;
    let check = |body: &Json, node: &str, kind: &str| {
        let errors = body["node_errors"][node]["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors for {node}: {body}"));
        assert!(
            errors.iter().any(|e| e["type"] == kind),
            "{node}: expected {kind} in {body}"
        );
    };

    // Missing required input, type mismatch, out of range (both sides), not in list.
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}},
                "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "magic", "width": 8, "height": 8, "crop": "disabled"}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
                "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
                "5": {"class_type": "PadNothing", "inputs": {}}
            }}),
        )
        .await;
    // An unknown class stops everything first.
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_prompt");
    assert_eq!(
        body["error"]["message"],
        "Cannot execute because node PadNothing does not exist."
    );
    assert_eq!(body["node_errors"], json!({}));

    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 99999, "batch_size": 1, "color": 0}},
                "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "magic", "width": 8, "height": 8, "crop": "disabled"}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
                "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}},
                "6": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "7": {"class_type": "ImagePadForOutpaint", "inputs": {"image": ["6", 1], "left": 0, "top": 0, "right": 0, "bottom": 0, "feathering": 0}},
                "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 1], "filename_prefix": "x"}},
                "9": {"class_type": "SaveImage", "inputs": {"images": ["42", 0], "filename_prefix": "x"}},
                "10": {"class_type": "SaveImage", "inputs": {"images": ["6", 0, 1], "filename_prefix": "x"}}
            }}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    check(&body, "1", "value_smaller_than_min");
    check(&body, "1", "value_bigger_than_max");
    check(&body, "2", "value_not_in_list");
    check(&body, "4", "required_input_missing");
    check(&body, "7", "bad_linked_input"); // EmptyImage has no output 1
    check(&body, "8", "return_type_mismatch"); // MASK into IMAGE
    check(&body, "9", "bad_linked_input"); // node 42 does not exist
    check(&body, "10", "bad_linked_input"); // a 3-element link
    let min_error = &body["node_errors"]["1"]["errors"][0];
    assert_eq!(min_error["message"], "Value 0 smaller than min of 1");
    assert_eq!(min_error["extra_info"]["input_name"], "width");
    assert_eq!(min_error["extra_info"]["input_config"][0], "INT");
    assert_eq!(body["node_errors"]["1"]["dependent_outputs"], json!(["3"]));
    assert_eq!(body["node_errors"]["1"]["class_type"], "EmptyImage");
    let mismatch = body["node_errors"]["8"]["errors"][0].clone();
    assert_eq!(
        mismatch["details"],
        "images, received_type(MASK) mismatch input_type(IMAGE)"
    );

    // Invalid constant type: Python's int("abc") fails; "12" is coerced and stored as 12.
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": "abc", "height": "12", "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
            }}),
        )
        .await;
    assert_eq!(status, 400);
    check(&body, "1", "invalid_input_type");

    // A cycle is named.
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": {
                "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
                "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}
            }}),
        )
        .await;
    assert_eq!(status, 400);
    check(&body, "1", "dependency_cycle");
    check(&body, "2", "dependency_cycle");
    assert!(
        body["node_errors"]["1"]["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("1 -> 2 -> 1"),
        "{body}"
    );

    // Good outputs still run: 200 with the bad output's errors.
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "good"}},
                "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bad"}}
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    check(&body, "3", "required_input_missing");
    let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
    assert_eq!(entry["prompt"][4], json!(["2"]));

    // Malformed JSON, no prompt, no outputs, missing class_type.
    let (status, body) = app
        .post_raw("/prompt", b"{not json".to_vec(), "application/json")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request");
    let (status, body) = app.post("/prompt", json!({"client_id": "x"})).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("no_prompt"))
    );
    let (status, body) = app
        .post(
            "/prompt",
            json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("prompt_no_outputs"))
    );
    let (status, body) = app
        .post("/prompt", json!({"prompt": {"1": {"inputs": {}}}}))
        .await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("invalid_prompt"))
    );
    let (status, _) = app.post("/prompt", json!({"prompt": [1, 2]})).await;
    assert_eq!(status, 400);

    // Nothing invalid was queued.
    let (_, queue) = app.get("/queue").await;
    assert_eq!(queue["queue_pending"], json!([]));
}

/// A model combo accepts exactly the names `/object_info` lists (found by path, not by listing
/// the folder), and a name it rejects gets the list.
#[actix_web::test]
async fn a_model_name_is_valid_exactly_when_it_is_listed() {
    let app = spawn_app().await;
    let folder = app.dir.path().join("models/upscale_models");
    std::fs::create_dir_all(folder.join("sub/.git")).unwrap();
    for file in ["a.pth", "sub/b.safetensors", "sub/.git/c.pth", "notes.txt"] {
        std::fs::write(folder.join(file), b"not a model").unwrap();
    }
    let (_, info) = app.get("/object_info/UpscaleModelLoader").await;
    let listed = &info["UpscaleModelLoader"]["input"]["required"]["model_name"][0];
    assert_eq!(*listed, json!(["a.pth", "sub/b.safetensors"]));
    let graph = |model: &str| {
        json!({"prompt": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}},
            "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "m"}}
        }})
    };
    for model in ["a.pth", "sub/b.safetensors"] {
        let (status, body) = app.post("/prompt", graph(model)).await;
        assert_eq!(status, 200, "{model}: {body}");
    }
    for model in [
        "sub/.git/c.pth",
        "notes.txt",
        "sub/../a.pth",
        "sub//b.safetensors",
        "missing.pth",
        "",
    ] {
        let (status, body) = app.post("/prompt", graph(model)).await;
        assert_eq!(status, 400, "{model}: {body}");
        let error = &body["node_errors"]["2"]["errors"][0];
        assert_eq!(error["type"], "value_not_in_list", "{model}: {body}");
        assert_eq!(
            error["details"],
            format!("model_name: '{model}' not in ['a.pth', 'sub/b.safetensors']"),
        );
    }
}

#[actix_web::test]
async fn body_is_json_whatever_the_content_type_and_api_twin_routes_work() {
    let app = spawn_app().await;
    let body = json!({"prompt": invert_graph("form")})
        .to_string()
        .into_bytes();
    let (status, answer) = app
        .post_raw("/api/prompt", body, "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200, "{answer}");
    app.wait_history(answer["prompt_id"].as_str().unwrap())
        .await;
    let (status, info) = app.get("/api/prompt").await;
    assert_eq!(status, 200);
    assert_eq!(info["exec_info"]["queue_remaining"], 0);
    for path in [
        "/api/system_stats",
        "/system_stats",
        "/features",
        "/api/extensions",
        "/models",
        "/embeddings",
    ] {
        let (status, _) = app.get(path).await;
        assert_eq!(status, 200, "{path}");
    }
    let (_, features) = app.get("/features").await;
    assert_eq!(features["supports_preview_metadata"], true);
    assert_eq!(features["max_upload_size"].as_f64(), Some(104857600.0));
    let (_, models) = app.get("/models").await;
    assert!(models
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "checkpoints"));
    std::fs::create_dir_all(app.dir.path().join("models/loras/style")).unwrap();
    std::fs::write(
        app.dir.path().join("models/loras/style/a.safetensors"),
        b"x",
    )
    .unwrap();
    std::fs::write(app.dir.path().join("models/loras/readme.txt"), b"x").unwrap();
    let (_, loras) = app.get("/models/loras").await;
    assert_eq!(loras, json!(["style/a.safetensors"]));
    let (status, _) = app.get("/models/nonsense").await;
    assert_eq!(status, 404);
}

#[actix_web::test]
async fn object_info_describes_every_node() {
    let app = spawn_app().await;
    let (status, info) = app.get("/object_info").await;
    assert_eq!(status, 200);
    for class in [
        "LoadImage",
        "SaveImage",
        "PreviewImage",
        "ImageScale",
        "ImageScaleBy",
        "ImageScaleToTotalPixels",
        "ImageInvert",
        "ImageBatch",
        "ImagePadForOutpaint",
        "EmptyImage",
    ] {
        assert!(
            info.get(class).is_some(),
            "{class} missing from /object_info"
        );
    }
    let save = &info["SaveImage"];
    assert_eq!(save["output_node"], true);
    assert_eq!(save["input"]["required"]["images"], json!(["IMAGE"]));
    assert_eq!(
        save["input"]["required"]["filename_prefix"],
        json!(["STRING", {"default": "ComfyUI"}])
    );
    assert_eq!(
        save["input"]["hidden"],
        json!({"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"})
    );
    assert_eq!(
        save["input_order"]["required"],
        json!(["images", "filename_prefix"])
    );
    let scale = &info["ImageScale"];
    assert_eq!(
        scale["input"]["required"]["upscale_method"][0],
        json!(["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
    );
    assert_eq!(
        scale["input"]["required"]["width"],
        json!(["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}])
    );
    assert_eq!(scale["output"], json!(["IMAGE"]));
    assert_eq!(scale["display_name"], "Upscale Image");
    assert_eq!(
        info["LoadImage"]["input"]["required"]["image"][1]["image_upload"],
        true
    );
    let (status, one) = app.get("/object_info/ImageInvert").await;
    assert_eq!(status, 200);
    assert_eq!(one.as_object().unwrap().len(), 1);
    let (status, none) = app.get("/object_info/NoSuchNode").await;
    assert_eq!((status, none), (200, json!({})));
}

#[actix_web::test]
async fn interrupt_stops_the_running_node_and_the_next_prompt_runs() {
    let app = spawn_app().await;
    let mut ws = app.ws("i").await;
    let slow_id = app.queue(sleeper("slow", 30.0), "i").await;
    let next_id = app.queue(invert_graph("after"), "i").await;
    // Wait for the sleeper to report progress, then interrupt it.
    loop {
        let event = ws.next_json().await.expect("events");
        if event["type"] == "progress" && event["data"]["node"] == "2" {
            assert_eq!(event["data"]["max"], 20);
            break;
        }
    }
    let (status, _) = app
        .post("/interrupt", json!({"prompt_id": "not-running"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.post("/interrupt", json!({})).await;
    assert_eq!(status, 200);
    let events = ws.until_done(&slow_id).await;
    let interrupted = find(&events, "execution_interrupted").expect("execution_interrupted");
    assert_eq!(interrupted["node_id"], "2");
    assert_eq!(interrupted["node_type"], "TestSleep");
    assert_eq!(interrupted["executed"], json!(["1"]));
    let entry = app.wait_history(&slow_id).await;
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["completed"], false);

    let events = ws.until_done(&next_id).await;
    assert!(find(&events, "execution_success").is_some());
}

#[actix_web::test]
async fn a_failing_or_panicking_node_reports_execution_error_and_the_server_carries_on() {
    let app = spawn_app().await;
    let mut ws = app.ws("e").await;
    let failing = json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
        "2": {"class_type": "TestFail", "inputs": {"value": ["1", 0], "message": "the model exploded"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fail"}}
    });
    let id = app.queue(failing, "e").await;
    let events = ws.until_done(&id).await;
    let error = find(&events, "execution_error").expect("execution_error");
    assert_eq!(error["node_id"], "2");
    assert_eq!(error["node_type"], "TestFail");
    assert_eq!(error["exception_message"], "the model exploded");
    assert_eq!(error["exception_type"], "weft.NodeError");
    assert_eq!(error["executed"], json!(["1"]));
    assert_eq!(
        error["current_inputs"]["message"],
        json!(["the model exploded"])
    );
    assert!(error["current_inputs"]["value"][0]
        .as_str()
        .unwrap()
        .starts_with("IMAGE [1, 8, 8, 3]"));
    let entry = app.wait_history(&id).await;
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["messages"][2][0], "execution_error");

    let panicking = json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
        "2": {"class_type": "TestPanic", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "panic"}}
    });
    let id = app.queue(panicking, "e").await;
    let events = ws.until_done(&id).await;
    let error = find(&events, "execution_error").expect("execution_error");
    assert_eq!(error["exception_type"], "weft.Panic");
    assert!(error["exception_message"]
        .as_str()
        .unwrap()
        .contains("panicked on purpose"));

    let id = app.queue(invert_graph("still-up"), "e").await;
    let events = ws.until_done(&id).await;
    assert!(find(&events, "execution_success").is_some());
}

#[actix_web::test]
async fn events_go_only_to_the_submitting_client() {
    let app = spawn_app().await;
    let mut mine = app.ws("mine").await;
    let mut other = app.ws("other").await;
    let id = app.queue(invert_graph("route"), "mine").await;
    mine.until_done(&id).await;
    // The other client sees status broadcasts but no execution events for this prompt. A prompt of
    // its own marks the end of what it could have received.
    let own = app.queue(invert_graph("route2"), "other").await;
    let events = other.until_done(&own).await;
    assert!(
        events.iter().all(|e| e["data"]["prompt_id"] != id.as_str()),
        "{events:#?}"
    );
}

#[actix_web::test]
async fn an_idle_worker_runs_a_prompt_at_once_and_one_that_waited_is_validated_again() {
    let app = spawn_app().await;
    let mut ws = app.ws("handoff").await;
    // Idle: the prompt is stored already running (handed to the worker), not pending.
    let first = app.queue(sleeper("slow", 1.5), "handoff").await;
    let (_, queue) = app.get("/queue").await;
    assert_eq!(queue["queue_running"][0][1], first.as_str(), "{queue}");
    assert_eq!(queue["queue_pending"], json!([]));
    // Behind it, a prompt reading an input image that is gone by the time it runs fails
    // validation then, as ComfyUI's would, and names the node.
    std::fs::write(
        app.data_dir().join("input/gone.png"),
        png_bytes(4, 4, [255, 0, 0, 255]),
    )
    .unwrap();
    let reads = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "gone"}}
    });
    let second = app.queue(reads, "handoff").await;
    let (_, queue) = app.get("/queue").await;
    assert_eq!(queue["queue_pending"][0][1], second.as_str(), "{queue}");
    std::fs::remove_file(app.data_dir().join("input/gone.png")).unwrap();

    // The handed-over run sends what ComfyUI's does, in its order.
    let events = ws.until_done(&first).await;
    assert_eq!(names(&events), THREE_NODES_RUN);
    assert_eq!(
        app.wait_history(&first).await["status"]["status_str"],
        "success"
    );
    let failed = app.wait_history(&second).await;
    assert_eq!(failed["status"]["status_str"], "error");
    let error = &failed["status"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m[0] == "execution_error")
        .unwrap()[1];
    assert_eq!(error["node_id"], "1", "{error}");
    assert!(
        error["exception_message"]
            .as_str()
            .unwrap()
            .contains("no longer valid"),
        "{error}"
    );
}

#[actix_web::test]
async fn queue_control_cancel_front_pause_resume_and_history_paging() {
    let app = spawn_app().await;
    let (status, _) = app.post("/api/weft/queue/pause", json!({})).await;
    assert_eq!(status, 200);
    let a = app.queue(invert_graph("a"), "q").await;
    let b = app.queue(invert_graph("b"), "q").await;
    let c = app.queue(invert_graph("c"), "q").await;
    let d = app.queue(invert_graph("d"), "q").await;
    let pending_ids = |queue: &Json| -> Vec<String> {
        queue["queue_pending"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[1].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, queue) = app.get("/queue").await;
    assert_eq!(
        pending_ids(&queue),
        [a.clone(), b.clone(), c.clone(), d.clone()]
    );
    assert_eq!(queue["queue_pending"][0][2]["3"]["class_type"], "SaveImage");

    let (status, _) = app
        .post(&format!("/api/weft/queue/{c}/front"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post(&format!("/api/weft/queue/{b}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.post("/queue", json!({"delete": [d]})).await;
    assert_eq!(status, 200);
    let (_, queue) = app.get("/queue").await;
    assert_eq!(pending_ids(&queue), [c.clone(), a.clone()]);
    let (status, _) = app
        .post(&format!("/api/weft/queue/{b}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404, "a cancelled prompt cannot be cancelled again");

    // `front: true` also jumps the queue, as in ComfyUI.
    let (_, body) = app
        .post(
            "/prompt",
            json!({"prompt": invert_graph("e"), "front": true}),
        )
        .await;
    let e = body["prompt_id"].as_str().unwrap().to_owned();
    let (_, queue) = app.get("/queue").await;
    assert_eq!(pending_ids(&queue), [e.clone(), c.clone(), a.clone()]);

    app.post("/api/weft/queue/resume", json!({})).await;
    app.wait_history(&a).await;
    let (_, history) = app.get("/history").await;
    let order: Vec<&String> = history.as_object().unwrap().keys().collect();
    assert_eq!(order, [&e, &c, &a]);
    let (_, last) = app.get("/history?max_items=1").await;
    assert_eq!(last.as_object().unwrap().keys().collect::<Vec<_>>(), [&a]);
    let (_, page) = app.get("/history?offset=1&max_items=1").await;
    assert_eq!(page.as_object().unwrap().keys().collect::<Vec<_>>(), [&c]);
    let (status, _) = app.get("/history?max_items=abc").await;
    assert_eq!(status, 400);
    app.post("/history", json!({"delete": [c]})).await;
    let (_, one) = app.get(&format!("/history/{c}")).await;
    assert_eq!(one, json!({}));
    app.post("/history", json!({"clear": true})).await;
    let (_, history) = app.get("/history").await;
    assert_eq!(history, json!({}));

    // Clearing the queue.
    app.post("/api/weft/queue/pause", json!({})).await;
    app.queue(invert_graph("f"), "q").await;
    app.post("/queue", json!({"clear": true})).await;
    let (_, queue) = app.get("/queue").await;
    assert_eq!(queue["queue_pending"], json!([]));
}

#[actix_web::test]
async fn view_refuses_paths_outside_the_data_folders() {
    let app = spawn_app().await;
    std::fs::write(app.data_dir().join("output/ok.png"), b"not really a png").unwrap();
    std::fs::create_dir_all(app.data_dir().join("output/sub")).unwrap();
    std::fs::write(app.data_dir().join("output/sub/deep.txt"), b"deep").unwrap();
    std::fs::write(app.dir.path().join("secret.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(
        app.dir.path().join("secret.txt"),
        app.data_dir().join("output/link.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(app.dir.path(), app.data_dir().join("output/linkdir")).unwrap();

    let (status, bytes) = app.get_bytes("/view?filename=ok.png").await;
    assert_eq!(
        (status, bytes.as_slice()),
        (200, b"not really a png".as_slice())
    );
    let (status, bytes) = app
        .get_bytes("/view?filename=deep.txt&subfolder=sub&type=output")
        .await;
    assert_eq!((status, bytes.as_slice()), (200, b"deep".as_slice()));
    let (status, _) = app.get_bytes("/view?filename=../secret.txt").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_bytes("/view?filename=/etc/passwd").await;
    assert_eq!(status, 400);
    let (status, _) = app
        .get_bytes("/view?filename=secret.txt&subfolder=..")
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get_bytes("/view?filename=secret.txt&subfolder=/").await;
    assert_eq!(status, 403);
    let (status, _) = app.get_bytes("/view?filename=link.txt").await;
    assert_eq!(status, 403);
    let (status, _) = app
        .get_bytes("/view?filename=secret.txt&subfolder=linkdir")
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get_bytes("/view?filename=missing.png").await;
    assert_eq!(status, 404);
    let (status, _) = app.get_bytes("/view?filename=ok.png&type=elsewhere").await;
    assert_eq!(status, 400);
    let (status, _) = app.get_bytes("/view").await;
    assert_eq!(status, 404);
}

pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (Vec<u8>, String) {
    let boundary = "weftboundary1234";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (body, format!("multipart/form-data; boundary={boundary}"))
}

pub fn png_bytes(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..width * height).flat_map(|_| rgba).collect();
        writer.write_image_data(&data).unwrap();
    }
    out
}

#[actix_web::test]
async fn uploads_are_named_deduplicated_and_limited_in_size() {
    let app = spawn_app_with(|c| c.max_upload_mb = 1).await;
    let red = png_bytes(4, 4, [255, 0, 0, 255]);
    let blue = png_bytes(4, 4, [0, 0, 255, 255]);
    let (body, ct) = multipart(&[("image", Some("pic.png"), &red)]);
    let (status, answer) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"name": "pic.png", "subfolder": "", "type": "input"})
    );
    // Same bytes, same name: reused.
    let (body, ct) = multipart(&[("image", Some("pic.png"), &red)]);
    let (_, answer) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(answer["name"], "pic.png");
    // Different bytes: a new name.
    let (body, ct) = multipart(&[("image", Some("pic.png"), &blue)]);
    let (_, answer) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(answer["name"], "pic (1).png");
    // Overwrite replaces.
    let (body, ct) = multipart(&[
        ("overwrite", None, b"true"),
        ("image", Some("pic.png"), &blue),
    ]);
    let (_, answer) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(answer["name"], "pic.png");
    assert_eq!(
        std::fs::read(app.data_dir().join("input/pic.png")).unwrap(),
        blue
    );
    // Subfolders work; escaping them does not.
    let (body, ct) = multipart(&[
        ("subfolder", None, b"masks"),
        ("image", Some("m.png"), &red),
    ]);
    let (status, answer) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!((status, answer["subfolder"].as_str()), (200, Some("masks")));
    let (body, ct) = multipart(&[
        ("subfolder", None, b"../../x"),
        ("image", Some("m.png"), &red),
    ]);
    let (status, _) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(status, 400);
    let (body, ct) = multipart(&[("type", None, b"elsewhere"), ("image", Some("m.png"), &red)]);
    let (status, _) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(status, 400);
    let (body, ct) = multipart(&[("subfolder", None, b"")]);
    let (status, _) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(status, 400, "no image part");
    // Over the limit: 413, and nothing written.
    let big = vec![7u8; 1024 * 1024 + 10];
    let (body, ct) = multipart(&[("image", Some("big.png"), &big)]);
    let (status, _) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(status, 413);
    assert!(!app.data_dir().join("input/big.png").exists());
    // The uploaded file is listed for LoadImage.
    let (_, info) = app.get("/object_info/LoadImage").await;
    assert_eq!(
        info["LoadImage"]["input"]["required"]["image"][0],
        json!(["pic (1).png", "pic.png"])
    );
}

#[actix_web::test]
async fn browsers_from_other_origins_are_refused() {
    let app = spawn_app().await;
    let client = awc::Client::default();
    let host = app.base.trim_start_matches("http://").to_owned();
    let response = client
        .get(app.url("/queue"))
        .insert_header(("Host", host.clone()))
        .insert_header(("Origin", "http://evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let response = client
        .get(app.url("/queue"))
        .insert_header(("Host", host.clone()))
        .insert_header(("Origin", format!("http://{host}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// The next binary frame on `ws`.
async fn next_binary(ws: &mut crate::helpers::WsClient) -> Vec<u8> {
    loop {
        match ws.next_frame().await.expect("frames") {
            WsFrame::Binary(bytes) => break bytes,
            WsFrame::Text(_) => continue,
        }
    }
}

#[actix_web::test]
async fn preview_frames_go_to_every_client_of_the_prompt_as_comfyui_sends_them() {
    let app = spawn_app().await;
    let mut with_metadata = app.ws("meta").await;
    with_metadata
        .send_text(r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#)
        .await;
    let reply = with_metadata.next_json().await.unwrap();
    assert_eq!(reply["type"], "feature_flags");
    assert_eq!(reply["data"]["supports_preview_metadata"], true);
    let mut plain = app.ws("plain").await;
    let mut silent = app.ws_with("silent", "&preview=0").await;

    // No client id: previews are broadcast, type 4 (with metadata) to the client that supports
    // it, type 1 to the others (as ComfyUI, and as older frontends need), none to `preview=0`.
    let graph = json!({
        "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
        "2": {"class_type": "TestPreview", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "preview"}}
    });
    let (_, body) = app.post("/prompt", json!({"prompt": graph})).await;
    let first = body["prompt_id"].as_str().unwrap().to_owned();
    let frame = next_binary(&mut with_metadata).await;
    assert_eq!(&frame[..4], &4u32.to_be_bytes());
    let metadata_len = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
    let metadata: Json = serde_json::from_slice(&frame[8..8 + metadata_len]).unwrap();
    assert_eq!(metadata["node_id"], "2");
    assert_eq!(metadata["prompt_id"], first.as_str());
    assert_eq!(metadata["image_type"], "image/png");
    assert_eq!(&frame[8 + metadata_len..8 + metadata_len + 4], b"\x89PNG");
    let frame = next_binary(&mut plain).await;
    assert_eq!(&frame[..4], &1u32.to_be_bytes(), "type 1: a preview image");
    assert_eq!(&frame[4..8], &2u32.to_be_bytes(), "format 2: PNG");
    assert_eq!(&frame[8..12], b"\x89PNG");
    app.wait_history(&first).await;

    // The silent client then runs a prompt of its own; everything before it arrived in order,
    // and none of it was binary.
    let own = app.queue(invert_graph("own"), "silent").await;
    let mut binary = 0;
    loop {
        match silent.next_frame().await.expect("frames") {
            WsFrame::Binary(_) => binary += 1,
            WsFrame::Text(event) => {
                if event["type"] == "executing"
                    && event["data"]["node"].is_null()
                    && event["data"]["prompt_id"] == own.as_str()
                {
                    break;
                }
            }
        }
    }
    assert_eq!(binary, 0);
}

#[actix_web::test]
async fn the_workflow_library_keeps_every_version_byte_for_byte() {
    let app = spawn_app().await;
    // Unusual spacing and number spellings must come back exactly as sent.
    let v1 =
        r#"{"nodes": [ {"id":1, "pos":[1.50, 2e2]} ], "links":[], "extra": {"note": "caf\u00e9"}}"#;
    let body = format!(r#"{{"name": "mine", "description": "first", "workflow": {v1}}}"#);
    let (status, created) = app
        .post_raw("/api/weft/workflows", body.into_bytes(), "application/json")
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, raw) = app.get_bytes(&format!("/api/weft/workflows/{id}")).await;
    let text = String::from_utf8(raw).unwrap();
    assert!(text.ends_with(&format!(r#""workflow":{v1}}}"#)), "{text}");
    let (_, one) = app.get(&format!("/api/weft/workflows/{id}")).await;
    assert_eq!(one["version"], 1);

    let v2 = r#"{"nodes":[],"links":[]}"#;
    let (status, updated) = app
        .post_raw(
            &format!("/api/weft/workflows/{id}"),
            Vec::new(),
            "application/json",
        )
        .await;
    assert_eq!(status, 404, "POST to an id is not an update: {updated}");
    let client = awc::Client::default();
    let response = client
        .put(app.url(&format!("/api/weft/workflows/{id}")))
        .insert_header(("content-type", "application/json"))
        .send_body(format!(r#"{{"workflow": {v2}}}"#))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, versions) = app.get(&format!("/api/weft/workflows/{id}/versions")).await;
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let (status, _) = app
        .post(
            &format!("/api/weft/workflows/{id}/versions/1/restore"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, raw) = app.get_bytes(&format!("/api/weft/workflows/{id}")).await;
    assert!(String::from_utf8(raw)
        .unwrap()
        .ends_with(&format!(r#""workflow":{v1}}}"#)));
    let (_, list) = app.get("/api/weft/workflows").await;
    assert_eq!(list[0]["version"], 3);
    assert_eq!(list[0]["name"], "mine");

    // Bad input changes nothing.
    let (status, _) = app
        .post_raw(
            "/api/weft/workflows",
            b"{not json".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post(
            "/api/weft/workflows",
            json!({"name": "x", "workflow": [1, 2]}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post("/api/weft/workflows", json!({"workflow": {}}))
        .await;
    assert_eq!(status, 400, "a name is required");
    let (_, list) = app.get("/api/weft/workflows").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let response = client
        .delete(app.url(&format!("/api/weft/workflows/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, _) = app.get(&format!("/api/weft/workflows/{id}")).await;
    assert_eq!(status, 404);
}

/// ComfyUI's `--input-directory` and `--output-directory`: uploads, LoadImage, SaveImage and
/// `/view` use the folders given.
#[actix_web::test]
async fn input_and_output_folders_can_live_elsewhere() {
    let elsewhere = tempfile::tempdir().unwrap();
    let (input, output) = (elsewhere.path().join("in"), elsewhere.path().join("out"));
    let app = spawn_app_with(|c| {
        c.input_dir = Some(input.clone());
        c.output_dir = Some(output.clone());
    })
    .await;
    let (body, ct) = multipart(&[("image", Some("pic.png"), &png_bytes(4, 4, [9, 9, 9, 255]))]);
    let (status, answer) = app.post_raw("/upload/image", body, &ct).await;
    assert_eq!(status, 200, "{answer}");
    assert!(input.join("pic.png").is_file());
    let graph = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "moved"}}
    });
    let id = app.queue(graph, "dirs").await;
    let history = app.wait_history(&id).await;
    assert_eq!(history["status"]["status_str"], "success", "{history}");
    assert!(output.join("moved_00001_.png").is_file());
    assert!(!app.data_dir().join("output/moved_00001_.png").exists());
    let (status, _) = app
        .get_bytes("/view?filename=moved_00001_.png&type=output")
        .await;
    assert_eq!(status, 200);
}
