//! LoRA through the server: ComfyUI's LoRA template (two chained loaders, one bypassed) on a tiny
//! checkpoint, strength changes re-running only from the loader, exact unpatching, bad files.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::{json, Value as Json};
use weft::engine::synth::synth_tensor;

use crate::helpers::{comfy_template, read_png, shrink_editor_workflow, spawn_app, TestApp};
use crate::models::{write_checkpoint, Tiny};

fn template(name: &str) -> Json {
    shrink_editor_workflow(comfy_template(name))
}

/// A kohya LoRA for the tiny SD1 checkpoint: one UNet attention projection and one text-encoder
/// projection, rank 4.
pub(crate) fn kohya_lora(salt: &str) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    let mut module = |name: &str, out_dim: usize, in_dim: usize| {
        tensors.insert(
            format!("{name}.lora_down.weight"),
            synth_tensor(&format!("{salt}.{name}.down"), (4, in_dim)).unwrap(),
        );
        tensors.insert(
            format!("{name}.lora_up.weight"),
            synth_tensor(&format!("{salt}.{name}.up"), (out_dim, 4)).unwrap(),
        );
        tensors.insert(
            format!("{name}.alpha"),
            Tensor::new(4f32, &candle_core::Device::Cpu).unwrap(),
        );
    };
    module(
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        32,
        32,
    );
    module(
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
        64,
        48,
    );
    module(
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        48,
        48,
    );
    tensors
}

async fn app_with_loras() -> TestApp {
    let app = spawn_app().await;
    let models = app.dir.path().join("models");
    write_checkpoint(
        &models.join("checkpoints/dreamshaper_8.safetensors"),
        Tiny::Sd1,
    );
    candle_core::safetensors::save(
        &kohya_lora("blindbox"),
        models.join("loras/blindbox_v1_mix.safetensors"),
    )
    .unwrap();
    candle_core::safetensors::save(
        &kohya_lora("moxin"),
        models.join("loras/MoXinV1.safetensors"),
    )
    .unwrap();
    app
}

async fn run(app: &TestApp, workflow: Json) -> (Json, Vec<u8>) {
    let entry = app.queue_ok("/prompt", json!({"prompt": workflow})).await;
    let image = entry["outputs"]
        .as_object()
        .unwrap()
        .values()
        .find_map(|o| o["images"][0]["filename"].as_str())
        .unwrap()
        .to_owned();
    let (_, _, _, pixels) = read_png(&app.data_dir().join("output").join(image));
    (entry, pixels)
}

fn set_widget(workflow: &mut Json, node_id: u64, index: usize, value: Json) {
    let node = workflow["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"] == node_id)
        .unwrap();
    node["widgets_values"][index] = value;
}

fn without_loras(mut workflow: Json) -> Json {
    // Strength 0 on both: LoraLoader passes the model and CLIP through untouched.
    set_widget(&mut workflow, 11, 1, json!(0.0));
    set_widget(&mut workflow, 11, 2, json!(0.0));
    workflow
}

#[actix_web::test]
async fn the_lora_template_runs_and_strength_changes_rerun_from_the_loader() {
    let app = app_with_loras().await;
    let base = without_loras(template("lora"));
    let (_, plain) = run(&app, base.clone()).await;

    let (entry, patched) = run(&app, template("lora")).await;
    assert!(patched != plain, "the LoRA changes the image");
    // The bypassed second loader is not in the queued prompt.
    assert!(entry["prompt"][2].get("13").is_none());
    assert!(
        entry["outputs"]["11"]["text"][0]
            .as_str()
            .unwrap()
            .contains("modules patched"),
        "{:#}",
        entry["outputs"]
    );

    // A new strength re-runs the loader and what follows; the checkpoint load is reused.
    let mut stronger = template("lora");
    set_widget(&mut stronger, 11, 1, json!(1.5));
    let (_, stronger_pixels) = run(&app, stronger).await;
    assert!(stronger_pixels != patched);
    let (_, cache) = app.get("/api/weft/cache").await;
    let node = |id: &str| {
        cache["last_prompt"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(node("4")["status"], "cached");
    assert_eq!(node("11")["status"], "executed");
    assert_eq!(node("11")["reason"], "input 'strength_model' changed");

    // Unpatching is exact: the base model in memory was never modified. A seed not used before,
    // sampled now with the in-memory base model, matches the same seed on a freshly loaded one.
    let mut seed1 = base.clone();
    set_widget(&mut seed1, 3, 0, json!(1));
    let (_, in_memory) = run(&app, seed1.clone()).await;
    app.post("/free", json!({"unload_models": true, "free_memory": true}))
        .await;
    let (_, fresh) = run(&app, seed1).await;
    assert!(in_memory == fresh, "patching changed the base weights");

    // Chained loaders stack: enabling the second loader (un-bypassed) changes the image again.
    let mut both = template("lora");
    for node in both["nodes"].as_array_mut().unwrap() {
        if node["id"] == 13 {
            node["mode"] = json!(0);
        }
    }
    let (_, stacked) = run(&app, both).await;
    assert!(stacked != patched);
}

#[actix_web::test]
async fn bad_lora_files_fail_on_the_loader() {
    let app = app_with_loras().await;
    let loras = app.dir.path().join("models/loras");
    let good = std::fs::read(loras.join("blindbox_v1_mix.safetensors")).unwrap();
    std::fs::write(loras.join("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    std::fs::write(loras.join("empty.safetensors"), b"").unwrap();
    // Shapes for another model (an SDXL-sized text projection on this SD1 model).
    let mut wrong = HashMap::new();
    wrong.insert(
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight".to_string(),
        synth_tensor("w.d", (4, 768)).unwrap(),
    );
    wrong.insert(
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight".to_string(),
        synth_tensor("w.u", (768, 4)).unwrap(),
    );
    candle_core::safetensors::save(&wrong, loras.join("wrong_family.safetensors")).unwrap();
    std::fs::write(
        loras.join("not_a_pickle.pt"),
        b"PK\x03\x04 definitely not a torch zip",
    )
    .unwrap();

    for file in [
        "truncated.safetensors",
        "empty.safetensors",
        "wrong_family.safetensors",
        "not_a_pickle.pt",
    ] {
        let mut workflow = template("lora");
        set_widget(&mut workflow, 11, 0, json!(file));
        let (status, body) = app.post("/prompt", json!({"prompt": workflow})).await;
        assert_eq!(status, 200, "{file}: {body}");
        let entry = app.wait_history(body["prompt_id"].as_str().unwrap()).await;
        assert_eq!(entry["status"]["status_str"], "error", "{file}");
        let error = &entry["status"]["messages"][2][1];
        assert_eq!(error["node_id"], "11", "{file}: {error}");
        assert!(
            error["exception_message"].as_str().unwrap().contains(file),
            "{file}: {error}"
        );
    }
    // Still serving.
    run(&app, template("lora")).await;
}
