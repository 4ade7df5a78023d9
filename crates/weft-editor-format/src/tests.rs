//! Unit tests of the editor format conversion, on small hand-written graphs. The node classes are
//! cut-down copies of ComfyUI's (`nodes.py`), enough for each rule; the 18 real workflow files are
//! tested in `tests/editor_format.rs`.

use serde_json::{json, Value as Json};

use crate::{api_to_editor, editor_to_api, EditorConversion, EditorErrorKind};
use weft_graph::plan::ConstValue;
use weft_graph::spec::build::*;
use weft_graph::spec::{
    ComboOptions, FileList, Freshness, InputKind, InputSpec, NodeSpec, OutputSpec, SlotType,
};
use weft_graph::validate::Catalog;

struct TestCatalog(Vec<NodeSpec>);

impl Catalog for TestCatalog {
    fn spec(&self, class_type: &str) -> Option<&NodeSpec> {
        self.0.iter().find(|s| s.class_type == class_type)
    }

    fn combo_options(&self, options: &ComboOptions) -> Vec<String> {
        match options {
            ComboOptions::Static(list) => list.iter().map(|s| (*s).to_owned()).collect(),
            ComboOptions::Files(FileList::Models("checkpoints")) => {
                vec!["model.safetensors".into()]
            }
            ComboOptions::Files(FileList::Models(_)) => Vec::new(),
            ComboOptions::Files(FileList::InputImages) => vec!["example.png".into()],
            ComboOptions::Files(FileList::InputLatents) => Vec::new(),
            ComboOptions::Files(FileList::Pipelines(_)) => Vec::new(),
        }
    }

    fn check_input(&self, _: &NodeSpec, _: &str, _: &ConstValue) -> Result<(), String> {
        Ok(())
    }
}

fn node(
    class_type: &'static str,
    display_name: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
) -> NodeSpec {
    NodeSpec {
        class_type,
        display_name,
        category: "test",
        description: "",
        inputs,
        hidden: vec![],
        outputs,
        output_node: outputs_none(class_type),
        freshness: Freshness::Pure,
        self_validated: &[],
        python_module: "nodes",
        input_is_list: false,
        output_is_list: &[],
    }
}

fn outputs_none(class_type: &str) -> bool {
    class_type == "SaveImage"
}

fn files(folder: &'static str) -> InputKind {
    InputKind::Combo {
        options: ComboOptions::Files(FileList::Models(folder)),
        default: None,
        image_upload: false,
    }
}

fn catalog() -> TestCatalog {
    let t = SlotType;
    TestCatalog(vec![
        node(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            vec![required("ckpt_name", files("checkpoints"))],
            vec![
                output(t("MODEL"), "MODEL"),
                output(t("CLIP"), "CLIP"),
                output(t("VAE"), "VAE"),
            ],
        ),
        node(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            vec![
                required("text", multiline("")),
                required("clip", link(t("CLIP"))),
            ],
            vec![output(t("CONDITIONING"), "CONDITIONING")],
        ),
        node(
            "EmptyLatentImage",
            "Empty Latent Image",
            vec![
                required("width", int_step(512, 16, 16384, 8)),
                required("height", int_step(512, 16, 16384, 8)),
                required("batch_size", int(1, 1, 4096)),
            ],
            vec![output(t("LATENT"), "LATENT")],
        ),
        node(
            "KSampler",
            "KSampler",
            vec![
                required("model", link(t("MODEL"))),
                required("seed", seed()),
                required("steps", int(20, 1, 10000)),
                required("cfg", float(8.0, 0.0, 100.0, 0.1)),
                required("sampler_name", combo(&["euler", "dpmpp_2m"])),
                required("scheduler", combo(&["normal", "karras"])),
                required("positive", link(t("CONDITIONING"))),
                required("negative", link(t("CONDITIONING"))),
                required("latent_image", link(t("LATENT"))),
                required("denoise", float(1.0, 0.0, 1.0, 0.01)),
            ],
            vec![output(t("LATENT"), "LATENT")],
        ),
        node(
            "VAEDecode",
            "VAE Decode",
            vec![
                required("samples", link(t("LATENT"))),
                required("vae", link(t("VAE"))),
            ],
            vec![output(t("IMAGE"), "IMAGE")],
        ),
        node(
            "SaveImage",
            "Save Image",
            vec![
                required("images", link(t("IMAGE"))),
                required("filename_prefix", string("ComfyUI")),
            ],
            vec![],
        ),
        node(
            "LoadImage",
            "Load Image",
            vec![required(
                "image",
                InputKind::Combo {
                    options: ComboOptions::Files(FileList::InputImages),
                    default: None,
                    image_upload: true,
                },
            )],
            vec![output(t("IMAGE"), "IMAGE"), output(t("MASK"), "MASK")],
        ),
        node(
            "LoraLoader",
            "Load LoRA",
            vec![
                required("model", link(t("MODEL"))),
                required("clip", link(t("CLIP"))),
                required("lora_name", files("loras")),
                required("strength_model", float(1.0, -100.0, 100.0, 0.01)),
                required("strength_clip", float(1.0, -100.0, 100.0, 0.01)),
            ],
            vec![output(t("MODEL"), "MODEL"), output(t("CLIP"), "CLIP")],
        ),
    ])
}

fn convert(editor: Json) -> EditorConversion {
    editor_to_api(&editor, &catalog()).unwrap_or_else(|e| panic!("conversion failed: {e}"))
}

fn error_kind(editor: Json) -> (Option<String>, String, EditorErrorKind) {
    let error = editor_to_api(&editor, &catalog()).expect_err("conversion should fail");
    (error.node_id, error.field, error.kind)
}

/// The editor's default graph and its prompt, from `comfyui-api.md` §2.3 (the frontend's
/// `defaultGraph.ts` and what `graphToPrompt` makes of it).
fn default_graph() -> Json {
    json!({"last_node_id":9,"last_link_id":9,"nodes":[
    {"id":7,"type":"CLIPTextEncode","pos":[413,389],"size":[425.27801513671875,180.6060791015625],"flags":{},"order":3,"mode":0,"inputs":[{"name":"clip","type":"CLIP","link":5}],"outputs":[{"name":"CONDITIONING","type":"CONDITIONING","links":[6],"slot_index":0}],"properties":{},"widgets_values":["text, watermark"]},
    {"id":6,"type":"CLIPTextEncode","pos":[415,186],"size":[422.84503173828125,164.31304931640625],"flags":{},"order":2,"mode":0,"inputs":[{"name":"clip","type":"CLIP","link":3}],"outputs":[{"name":"CONDITIONING","type":"CONDITIONING","links":[4],"slot_index":0}],"properties":{},"widgets_values":["beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"]},
    {"id":5,"type":"EmptyLatentImage","pos":[473,609],"size":[315,106],"flags":{},"order":1,"mode":0,"outputs":[{"name":"LATENT","type":"LATENT","links":[2],"slot_index":0}],"properties":{},"widgets_values":[512,512,1]},
    {"id":3,"type":"KSampler","pos":[863,186],"size":[315,262],"flags":{},"order":4,"mode":0,"inputs":[{"name":"model","type":"MODEL","link":1},{"name":"positive","type":"CONDITIONING","link":4},{"name":"negative","type":"CONDITIONING","link":6},{"name":"latent_image","type":"LATENT","link":2}],"outputs":[{"name":"LATENT","type":"LATENT","links":[7],"slot_index":0}],"properties":{},"widgets_values":[156680208700286_u64,true,20,8,"euler","normal",1]},
    {"id":8,"type":"VAEDecode","pos":[1209,188],"size":[210,46],"flags":{},"order":5,"mode":0,"inputs":[{"name":"samples","type":"LATENT","link":7},{"name":"vae","type":"VAE","link":8}],"outputs":[{"name":"IMAGE","type":"IMAGE","links":[9],"slot_index":0}],"properties":{}},
    {"id":9,"type":"SaveImage","pos":[1451,189],"size":[210,26],"flags":{},"order":6,"mode":0,"inputs":[{"name":"images","type":"IMAGE","link":9}],"properties":{}},
    {"id":4,"type":"CheckpointLoaderSimple","pos":[26,474],"size":[315,98],"flags":{},"order":0,"mode":0,"outputs":[{"name":"MODEL","type":"MODEL","links":[1],"slot_index":0},{"name":"CLIP","type":"CLIP","links":[3,5],"slot_index":1},{"name":"VAE","type":"VAE","links":[8],"slot_index":2}],"properties":{},"widgets_values":["v1-5-pruned-emaonly-fp16.safetensors"]}],
    "links":[[1,4,0,3,0,"MODEL"],[2,5,0,3,3,"LATENT"],[3,4,1,6,0,"CLIP"],[4,6,0,3,1,"CONDITIONING"],[5,4,1,7,0,"CLIP"],[6,7,0,3,2,"CONDITIONING"],[7,3,0,8,0,"LATENT"],[8,4,2,8,1,"VAE"],[9,8,0,9,0,"IMAGE"]],
    "groups":[],"config":{},"extra":{"ds":{"offset":[0,0],"scale":1}},"version":0.4})
}

fn default_prompt() -> Json {
    json!({
     "3": {"inputs": {"seed": 156680208700286_u64, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
                      "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
           "class_type": "KSampler", "_meta": {"title": "KSampler"}},
     "4": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}, "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
     "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"}},
     "6": {"inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]}, "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}},
     "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}},
     "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}},
     "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage", "_meta": {"title": "Save Image"}}
    })
}

#[test]
fn default_graph_gives_the_reference_prompt() {
    let conversion = convert(default_graph());
    assert_eq!(conversion.prompt, default_prompt());
    assert!(conversion.missing_node_types.is_empty());
    assert_eq!(
        conversion.missing_models,
        vec![(
            "4".to_owned(),
            "ckpt_name".to_owned(),
            "v1-5-pruned-emaonly-fp16.safetensors".to_owned()
        )]
    );
    assert!(conversion.warnings.is_empty(), "{:?}", conversion.warnings);
}

#[test]
fn prompt_round_trips_through_the_editor_format() {
    let editor = api_to_editor(&default_prompt(), &catalog()).unwrap();
    assert_eq!(editor["version"], json!(0.4));
    let again = convert(editor.clone());
    assert_eq!(again.prompt, default_prompt());
    // The seed must not be randomised when the converted workflow is opened.
    let sampler = editor["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == json!(3))
        .unwrap();
    assert_eq!(
        sampler["widgets_values"],
        json!([156680208700286_u64, "fixed", 20, 8, "euler", "normal", 1])
    );
}

#[test]
fn layout_puts_nodes_in_columns_by_depth_without_overlap() {
    let editor = api_to_editor(&default_prompt(), &catalog()).unwrap();
    let nodes = editor["nodes"].as_array().unwrap();
    let rect = |id: u64| {
        let n = nodes.iter().find(|n| n["id"] == json!(id)).unwrap();
        let f = |v: &Json| v.as_f64().unwrap();
        (
            f(&n["pos"][0]),
            f(&n["pos"][1]),
            f(&n["size"][0]),
            f(&n["size"][1]),
        )
    };
    // Loader (depth 0) < text encoders and latent (1) < sampler (2) < decode (3) < save (4).
    let x = |id| rect(id).0;
    assert!(x(4) < x(6) && x(6) == x(7) && x(7) == x(5));
    assert!(x(5) < x(3) && x(3) < x(8) && x(8) < x(9));
    for a in [3, 4, 5, 6, 7, 8, 9] {
        for b in [3, 4, 5, 6, 7, 8, 9] {
            if a >= b {
                continue;
            }
            let (ax, ay, aw, ah) = rect(a);
            let (bx, by, bw, bh) = rect(b);
            // Title bars (30 px) sit above `pos`.
            let apart =
                ax + aw <= bx || bx + bw <= ax || ay + ah <= by - 30.0 || by + bh <= ay - 30.0;
            assert!(apart, "nodes {a} and {b} overlap");
        }
    }
}

fn two_node_graph(widgets_values: Json) -> Json {
    json!({"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
         "widgets_values": widgets_values}
    ], "links": [], "version": 0.4})
}

#[test]
fn short_widgets_values_take_defaults_with_a_warning() {
    let conversion = convert(two_node_graph(json!([640])));
    assert_eq!(
        conversion.prompt["1"]["inputs"],
        json!({"width": 640, "height": 512, "batch_size": 1})
    );
    assert_eq!(conversion.warnings.len(), 1);
    assert!(conversion.warnings[0].contains("1 values for 3 widget slots"));
}

#[test]
fn long_widgets_values_are_ignored_with_a_warning() {
    let conversion = convert(two_node_graph(json!([640, 480, 2, "extra"])));
    assert_eq!(
        conversion.prompt["1"]["inputs"],
        json!({"width": 640, "height": 480, "batch_size": 2})
    );
    assert_eq!(conversion.warnings.len(), 1);
    assert!(conversion.warnings[0].contains("the extra ones are ignored"));
}

#[test]
fn widgets_saved_by_name_are_read_by_name() {
    let conversion = convert(two_node_graph(json!({"height": 768})));
    assert_eq!(
        conversion.prompt["1"]["inputs"],
        json!({"width": 512, "height": 768, "batch_size": 1})
    );
}

#[test]
fn structure_errors_name_the_place() {
    let (node, field, kind) = error_kind(json!([1, 2]));
    assert_eq!((node, field.as_str()), (None, "workflow"));
    assert!(matches!(kind, EditorErrorKind::InvalidStructure(_)));

    let (_, field, _) = error_kind(json!({"nodes": {}, "links": []}));
    assert_eq!(field, "nodes");

    let (node, field, _) = error_kind(json!({"nodes": [{"id": 4, "mode": 0}], "links": []}));
    assert_eq!((node.as_deref(), field.as_str()), (Some("4"), "type"));

    let (_, field, _) = error_kind(json!({"nodes": [], "links": [[1, 2]]}));
    assert_eq!(field, "links[0]");

    let (node, field, _) = error_kind(json!({"nodes": [
        {"id": 1, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": "x"}]},
        {"id": 1, "type": "VAEDecode"}
    ], "links": []}));
    assert_eq!((node.as_deref(), field.as_str()), (Some("1"), "id"));
}

#[test]
fn a_link_from_a_missing_node_is_an_error() {
    let (node, field, kind) = error_kind(json!({"nodes": [
        {"id": 8, "type": "VAEDecode", "inputs": [
            {"name": "samples", "type": "LATENT", "link": 7},
            {"name": "vae", "type": "VAE", "link": null}]}
    ], "links": [[7, 99, 0, 8, 0, "LATENT"]]}));
    assert_eq!(node.as_deref(), Some("8"));
    assert_eq!(field, "inputs[0].link");
    assert_eq!(
        kind,
        EditorErrorKind::MissingNode {
            origin_id: "99".into()
        }
    );
}

#[test]
fn a_dangling_link_id_is_unconnected_with_a_warning() {
    let conversion = convert(json!({"nodes": [
        {"id": 8, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": 7}]}
    ], "links": []}));
    assert_eq!(conversion.prompt["8"]["inputs"], json!({}));
    assert!(conversion.warnings[0].contains("refers to link 7"));
}

/// A loader, a decoder and whatever sits between them on the latent-free VAE path.
fn loader_and_decoder(middle: Vec<Json>, links: Json) -> Json {
    let mut nodes = vec![
        json!({"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
            {"name": "MODEL", "type": "MODEL", "links": []},
            {"name": "CLIP", "type": "CLIP", "links": []},
            {"name": "VAE", "type": "VAE", "links": [1]}], "widgets_values": ["model.safetensors"]}),
        json!({"id": 9, "type": "VAEDecode", "inputs": [
            {"name": "samples", "type": "LATENT", "link": null},
            {"name": "vae", "type": "VAE", "link": 3}]}),
    ];
    nodes.extend(middle);
    json!({"nodes": nodes, "links": links, "version": 0.4})
}

#[test]
fn reroutes_pass_links_through() {
    let conversion = convert(loader_and_decoder(
        vec![
            json!({"id": 5, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 1}],
                   "outputs": [{"name": "", "type": "VAE", "links": [2]}]}),
            json!({"id": 6, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}],
                   "outputs": [{"name": "", "type": "VAE", "links": [3]}]}),
        ],
        json!([
            [1, 1, 2, 5, 0, "VAE"],
            [2, 5, 0, 6, 0, "VAE"],
            [3, 6, 0, 9, 1, "VAE"]
        ]),
    ));
    assert_eq!(conversion.prompt["9"]["inputs"], json!({"vae": ["1", 2]}));
    assert!(conversion.prompt.get("5").is_none());
}

#[test]
fn a_reroute_cycle_is_an_error() {
    let (node, _, kind) = error_kind(loader_and_decoder(
        vec![
            json!({"id": 5, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}],
                   "outputs": [{"name": "", "type": "VAE", "links": [3, 4]}]}),
            json!({"id": 6, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 4}],
                   "outputs": [{"name": "", "type": "VAE", "links": [2]}]}),
        ],
        json!([
            [2, 6, 0, 5, 0, "VAE"],
            [3, 5, 0, 9, 1, "VAE"],
            [4, 5, 0, 6, 0, "VAE"]
        ]),
    ));
    assert_eq!(kind, EditorErrorKind::LinkCycle);
    assert!(matches!(node.as_deref(), Some("5" | "6")));
}

#[test]
fn muted_nodes_are_removed_and_links_to_them_dropped() {
    let mut graph = loader_and_decoder(vec![], json!([[3, 1, 2, 9, 1, "VAE"]]));
    graph["nodes"][0]["mode"] = json!(2);
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt,
        json!({"9": {"inputs": {}, "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}}})
    );
    assert!(conversion.warnings[0].contains("input 'vae' comes from node 1"));
}

/// Loader → LoRA (`lora_mode`) → sampler, as in `lora.json`.
fn lora_chain(lora_mode: i64) -> Json {
    json!({"nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
            {"name": "MODEL", "type": "MODEL", "links": [1]},
            {"name": "CLIP", "type": "CLIP", "links": [2]},
            {"name": "VAE", "type": "VAE", "links": []}], "widgets_values": ["model.safetensors"]},
        {"id": 2, "type": "LoraLoader", "mode": lora_mode, "inputs": [
            {"name": "model", "type": "MODEL", "link": 1},
            {"name": "clip", "type": "CLIP", "link": 2}], "outputs": [
            {"name": "MODEL", "type": "MODEL", "links": [3]},
            {"name": "CLIP", "type": "CLIP", "links": [4]}],
         "widgets_values": ["style.safetensors", 0.5, 1]},
        {"id": 3, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": 4}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}], "widgets_values": ["a cat"]},
        {"id": 4, "type": "KSampler", "inputs": [{"name": "model", "type": "MODEL", "link": 3}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
         "widgets_values": [5, "randomize", 20, 7, "euler", "normal", 1]}
    ], "links": [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 2, 0, 4, 0, "MODEL"],
                 [4, 2, 1, 3, 0, "CLIP"]], "version": 0.4})
}

#[test]
fn bypassed_nodes_pass_their_inputs_through_by_type() {
    let conversion = convert(lora_chain(4));
    let prompt = &conversion.prompt;
    assert!(prompt.get("2").is_none());
    assert_eq!(prompt["4"]["inputs"]["model"], json!(["1", 0]));
    assert_eq!(prompt["3"]["inputs"]["clip"], json!(["1", 1]));
    assert_eq!(conversion.missing_models, vec![]);

    let active = convert(lora_chain(0));
    assert_eq!(active.prompt["4"]["inputs"]["model"], json!(["2", 0]));
    assert_eq!(
        active.missing_models,
        vec![(
            "2".to_owned(),
            "lora_name".to_owned(),
            "style.safetensors".to_owned()
        )]
    );
}

#[test]
fn a_bypassed_node_prefers_the_input_at_the_same_slot() {
    // Node 2 has two CLIP inputs from two loaders: its output 1 passes input 1 through, not the
    // first input of the type. Node 3's output 0 takes its input 0 even though only input 1 is
    // connected, so the text encoder behind it gets nothing (as in the frontend).
    let loader = |id: u64, link: u64| {
        json!({"id": id, "type": "CheckpointLoaderSimple", "outputs": [
            {"name": "MODEL", "type": "MODEL", "links": []},
            {"name": "CLIP", "type": "CLIP", "links": [link]},
            {"name": "VAE", "type": "VAE", "links": []}], "widgets_values": ["model.safetensors"]})
    };
    let graph = json!({"nodes": [
        loader(1, 1),
        loader(5, 2),
        {"id": 2, "type": "Pair", "mode": 4, "inputs": [
            {"name": "a", "type": "CLIP", "link": 1}, {"name": "b", "type": "CLIP", "link": 2}],
         "outputs": [{"name": "A", "type": "CLIP", "links": [5]}, {"name": "B", "type": "CLIP", "links": [3, 6]}]},
        {"id": 3, "type": "Pair", "mode": 4, "inputs": [
            {"name": "a", "type": "CLIP", "link": null}, {"name": "b", "type": "CLIP", "link": 3}],
         "outputs": [{"name": "A", "type": "CLIP", "links": [4]}]},
        {"id": 4, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": 4}],
         "widgets_values": ["x"]},
        {"id": 6, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": 5}],
         "widgets_values": ["from A"]},
        {"id": 7, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": 6}],
         "widgets_values": ["from B"]}
    ], "links": [[1, 1, 1, 2, 0, "CLIP"], [2, 5, 1, 2, 1, "CLIP"], [3, 2, 1, 3, 1, "CLIP"],
                 [4, 3, 0, 4, 0, "CLIP"], [5, 2, 0, 6, 0, "CLIP"], [6, 2, 1, 7, 0, "CLIP"]]});
    let conversion = convert(graph);
    assert_eq!(conversion.prompt["6"]["inputs"]["clip"], json!(["1", 1]));
    assert_eq!(conversion.prompt["7"]["inputs"]["clip"], json!(["5", 1]));
    assert_eq!(conversion.prompt["4"]["inputs"], json!({"text": "x"}));
    assert_eq!(conversion.missing_node_types, vec!["Pair".to_owned()]);
}

#[test]
fn primitive_values_reach_every_widget_they_feed() {
    let graph = json!({"nodes": [
        {"id": 1, "type": "PrimitiveNode", "outputs": [{"name": "INT", "type": "INT",
            "widget": {"name": "width"}, "links": [1, 2]}], "widgets_values": [1024, "fixed"]},
        {"id": 2, "type": "EmptyLatentImage", "inputs": [
            {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 1}],
         "widgets_values": [512, 512, 1]},
        {"id": 3, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": 2}],
         "outputs": [{"name": "", "type": "INT", "links": [3]}]},
        {"id": 4, "type": "EmptyLatentImage", "inputs": [
            {"name": "height", "type": "INT", "widget": {"name": "height"}, "link": 3}],
         "widgets_values": [512, 512, 1]},
        {"id": 5, "type": "Note", "widgets_values": ["hello"]}
    ], "links": [[1, 1, 0, 2, 0, "INT"], [2, 1, 0, 3, 0, "INT"], [3, 3, 0, 4, 0, "INT"]]});
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt,
        json!({
            "2": {"inputs": {"width": 1024, "height": 512, "batch_size": 1},
                  "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"}},
            "4": {"inputs": {"width": 512, "height": 1024, "batch_size": 1},
                  "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"}}
        })
    );
}

#[test]
fn converted_widgets_use_their_link() {
    let graph = json!({"nodes": [
        {"id": 1, "type": "MyIntSource", "outputs": [{"name": "INT", "type": "INT", "links": [1]}],
         "widgets_values": [7]},
        {"id": 2, "type": "EmptyLatentImage", "inputs": [
            {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 1},
            {"name": "height", "type": "INT", "widget": {"name": "height"}, "link": null}],
         "widgets_values": [512, 640, 1]}
    ], "links": [[1, 1, 0, 2, 0, "INT"]]});
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt["2"]["inputs"],
        json!({"width": ["1", 0], "height": 640, "batch_size": 1})
    );
    assert_eq!(
        conversion.prompt["1"],
        json!({"inputs": {}, "class_type": "MyIntSource",
               "_meta": {"title": "MyIntSource", "widgets_values": [7]}})
    );
    assert_eq!(
        conversion.missing_node_types,
        vec!["MyIntSource".to_owned()]
    );
}

#[test]
fn image_upload_and_list_values() {
    let graph = json!({"nodes": [
        {"id": 1, "type": "LoadImage", "widgets_values": ["photo.png", "image"]},
        {"id": 2, "type": "SaveImage", "widgets_values": [[1, 2]]}
    ], "links": []});
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt["1"]["inputs"],
        json!({"image": "photo.png"})
    );
    assert_eq!(
        conversion.prompt["2"]["inputs"],
        json!({"filename_prefix": {"__value__": [1, 2]}})
    );
    assert!(conversion.warnings.is_empty(), "{:?}", conversion.warnings);
}

#[test]
fn dynamic_prompts_take_the_first_choice() {
    let graph = json!({"nodes": [
        {"id": 1, "type": "CLIPTextEncode", "widgets_values": ["a {red|blue} car // note"]}
    ], "links": []});
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt["1"]["inputs"]["text"],
        json!("a red car ")
    );
    assert!(conversion.warnings[0].contains("first option"));
}

/// A subgraph "Encode" with one CLIP input, one promoted text widget and one output.
fn encode_subgraph() -> Json {
    json!({
        "id": "11111111-2222-3333-4444-555555555555", "name": "Encode",
        "inputs": [{"id": "i1", "name": "clip", "type": "CLIP", "linkIds": [1]},
                   {"id": "i2", "name": "text", "type": "STRING", "linkIds": [2]}],
        "outputs": [{"id": "o1", "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [3]}],
        "nodes": [
            {"id": 5, "type": "CLIPTextEncode", "inputs": [
                {"name": "clip", "type": "CLIP", "link": 1},
                {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 2}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [3]}],
             "widgets_values": ["inner default"]}
        ],
        "links": [
            {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "CLIP"},
            {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 5, "target_slot": 1, "type": "STRING"},
            {"id": 3, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"}
        ]
    })
}

fn v1_workflow(nodes: Json, links: Json, subgraphs: Json) -> Json {
    json!({"version": 1, "state": {"lastNodeId": 20, "lastLinkId": 20, "lastGroupId": 0, "lastRerouteId": 0},
           "nodes": nodes, "links": links, "definitions": {"subgraphs": subgraphs}})
}

#[test]
fn subgraphs_expand_with_prefixed_ids() {
    let subgraph_id = "11111111-2222-3333-4444-555555555555";
    let graph = v1_workflow(
        json!([
            {"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": []},
                {"name": "CLIP", "type": "CLIP", "links": [10, 12]},
                {"name": "VAE", "type": "VAE", "links": []}], "widgets_values": ["model.safetensors"]},
            {"id": 12, "type": subgraph_id, "inputs": [
                {"name": "clip", "type": "CLIP", "link": 10},
                {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": null}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [11]}],
             "widgets_values": ["from the instance"]},
            {"id": 13, "type": subgraph_id, "inputs": [
                {"name": "clip", "type": "CLIP", "link": 12},
                {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": null}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}]},
            {"id": 2, "type": "KSampler", "inputs": [
                {"name": "positive", "type": "CONDITIONING", "link": 11}],
             "widgets_values": [1, "fixed", 20, 7, "euler", "normal", 1]}
        ]),
        json!([
            {"id": 10, "origin_id": 1, "origin_slot": 1, "target_id": 12, "target_slot": 0, "type": "CLIP"},
            {"id": 11, "origin_id": 12, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "CONDITIONING"},
            {"id": 12, "origin_id": 1, "origin_slot": 1, "target_id": 13, "target_slot": 0, "type": "CLIP"}
        ]),
        json!([encode_subgraph()]),
    );
    let conversion = convert(graph);
    let prompt = &conversion.prompt;
    assert_eq!(
        prompt["12:5"],
        json!({"inputs": {"text": "from the instance", "clip": ["1", 1]},
               "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}})
    );
    // Without a value of its own, the instance shows the inner widget's value.
    assert_eq!(prompt["13:5"]["inputs"]["text"], json!("inner default"));
    assert_eq!(prompt["2"]["inputs"]["positive"], json!(["12:5", 0]));
    assert!(prompt.get("12").is_none());
    assert_eq!(prompt.as_object().unwrap().len(), 4);
}

#[test]
fn nested_subgraphs_get_one_prefix_per_level() {
    let inner = encode_subgraph();
    let outer = json!({
        "id": "outer", "name": "Outer",
        "inputs": [{"id": "i1", "name": "clip", "type": "CLIP", "linkIds": [1]}],
        "outputs": [{"id": "o1", "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [2]}],
        "nodes": [{"id": 3, "type": "11111111-2222-3333-4444-555555555555", "inputs": [
            {"name": "clip", "type": "CLIP", "link": 1},
            {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": null}],
            "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [2]}],
            "widgets_values": ["nested"]}],
        "links": [
            {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 3, "target_slot": 0, "type": "CLIP"},
            {"id": 2, "origin_id": 3, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"}
        ]
    });
    let graph = v1_workflow(
        json!([
            {"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": []},
                {"name": "CLIP", "type": "CLIP", "links": [10]},
                {"name": "VAE", "type": "VAE", "links": []}], "widgets_values": ["model.safetensors"]},
            {"id": 7, "type": "outer", "inputs": [{"name": "clip", "type": "CLIP", "link": 10}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [11]}]},
            {"id": 2, "type": "KSampler", "inputs": [
                {"name": "positive", "type": "CONDITIONING", "link": 11}],
             "widgets_values": [1, "fixed", 20, 7, "euler", "normal", 1]}
        ]),
        json!([
            {"id": 10, "origin_id": 1, "origin_slot": 1, "target_id": 7, "target_slot": 0, "type": "CLIP"},
            {"id": 11, "origin_id": 7, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "CONDITIONING"}
        ]),
        json!([outer, inner]),
    );
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt["7:3:5"]["inputs"],
        json!({"text": "nested", "clip": ["1", 1]})
    );
    assert_eq!(
        conversion.prompt["2"]["inputs"]["positive"],
        json!(["7:3:5", 0])
    );
}

/// A chain of `levels` subgraphs, each holding one instance of the next; the last holds a
/// loader.
fn nested_chain(levels: usize) -> Json {
    let mut subgraphs = Vec::new();
    for level in 0..levels {
        let inner = if level + 1 == levels {
            json!({"id": 1, "type": "CheckpointLoaderSimple", "widgets_values": ["model.safetensors"]})
        } else {
            json!({"id": 1, "type": format!("level{}", level + 1)})
        };
        subgraphs.push(json!({"id": format!("level{level}"), "name": "level",
                              "inputs": [], "outputs": [], "nodes": [inner], "links": []}));
    }
    v1_workflow(
        json!([{"id": 1, "type": "level0"}]),
        json!([]),
        json!(subgraphs),
    )
}

#[test]
fn subgraphs_may_nest_32_deep_but_not_deeper() {
    let conversion = convert(nested_chain(32));
    let id = vec!["1"; 33].join(":");
    assert_eq!(
        conversion.prompt[&id]["class_type"],
        json!("CheckpointLoaderSimple")
    );

    let (node, _, kind) = error_kind(nested_chain(33));
    assert_eq!(kind, EditorErrorKind::TooDeep);
    assert_eq!(node, Some(vec!["1"; 33].join(":")));
}

#[test]
fn a_subgraph_containing_itself_is_an_error() {
    let graph = v1_workflow(
        json!([{"id": 1, "type": "loop"}]),
        json!([]),
        json!([{"id": "loop", "name": "loop", "inputs": [], "outputs": [],
                "nodes": [{"id": 2, "type": "loop"}], "links": []}]),
    );
    let (node, _, kind) = error_kind(graph);
    assert_eq!(node.as_deref(), Some("1:2"));
    assert_eq!(
        kind,
        EditorErrorKind::RecursiveSubgraph {
            subgraph_id: "loop".into()
        }
    );
}

#[test]
fn muted_subgraphs_send_nothing_from_inside() {
    let subgraph_id = "11111111-2222-3333-4444-555555555555";
    let graph = v1_workflow(
        json!([{"id": 12, "type": subgraph_id, "mode": 2, "widgets_values": ["x"]}]),
        json!([]),
        json!([encode_subgraph()]),
    );
    assert_eq!(convert(graph).prompt, json!({}));
}

#[test]
fn legacy_group_nodes_expand_by_position() {
    // A group of a text encoder and a sampler; the group's widgets are the encoder's text, then
    // the sampler's widgets (seed with its control slot).
    let graph = json!({"nodes": [
        {"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
            {"name": "MODEL", "type": "MODEL", "links": [1]},
            {"name": "CLIP", "type": "CLIP", "links": [2]},
            {"name": "VAE", "type": "VAE", "links": []}], "widgets_values": ["model.safetensors"]},
        {"id": 20, "type": "workflow>Sample", "inputs": [
            {"name": "clip", "type": "CLIP", "link": 2},
            {"name": "model", "type": "MODEL", "link": 1}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [3]}],
         "widgets_values": ["a dog", 42, "fixed", 30, 6, "euler", "karras", 0.9]},
        {"id": 3, "type": "VAEDecode", "inputs": [{"name": "samples", "type": "LATENT", "link": 3}]}
    ], "links": [[1, 1, 0, 20, 1, "MODEL"], [2, 1, 1, 20, 0, "CLIP"], [3, 20, 0, 3, 0, "LATENT"]],
    "extra": {"groupNodes": {"Sample": {
        "nodes": [
            {"id": 6, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "type": "CLIP", "link": null}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": []}],
             "widgets_values": ["group default"]},
            {"id": 3, "type": "KSampler", "inputs": [
                {"name": "model", "type": "MODEL", "link": null},
                {"name": "positive", "type": "CONDITIONING", "link": null},
                {"name": "negative", "type": "CONDITIONING", "link": null},
                {"name": "latent_image", "type": "LATENT", "link": null}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
             "widgets_values": [1, "fixed", 20, 8, "euler", "normal", 1]}
        ],
        "links": [[0, 0, 1, 1, 6, "CONDITIONING"]],
        "external": [[1, 0, "LATENT"]]
    }}}, "version": 0.4});
    let conversion = convert(graph);
    let prompt = &conversion.prompt;
    assert_eq!(
        prompt["20:0"]["inputs"],
        json!({"text": "a dog", "clip": ["1", 1]})
    );
    assert_eq!(
        prompt["20:1"]["inputs"],
        json!({"seed": 42, "steps": 30, "cfg": 6, "sampler_name": "euler", "scheduler": "karras",
               "denoise": 0.9, "model": ["1", 0], "positive": ["20:0", 0]})
    );
    assert_eq!(prompt["3"]["inputs"]["samples"], json!(["20:1", 0]));
}

#[test]
fn legacy_group_with_an_unknown_inner_type_is_missing() {
    let graph = json!({"nodes": [{"id": 20, "type": "workflow>G"}], "links": [],
        "extra": {"groupNodes": {"G": {"nodes": [{"id": 1, "type": "Mystery"}], "links": []}}}});
    let conversion = convert(graph);
    assert_eq!(
        conversion.missing_node_types,
        vec!["Mystery".to_owned(), "workflow>G".to_owned()]
    );
    assert_eq!(conversion.prompt["20"]["class_type"], json!("workflow>G"));
}

#[test]
fn unknown_nodes_round_trip_with_their_values() {
    let prompt = json!({
        "1": {"class_type": "Mystery", "inputs": {"strength": 0.5, "image": ["2", 1]},
              "_meta": {"title": "My node"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"},
              "_meta": {"title": "Load Image"}},
        "12:5": {"class_type": "Mystery", "inputs": {"other": ["1", 3]},
                 "_meta": {"title": "Mystery", "widgets_values": [1, "a"]}}
    });
    let editor = api_to_editor(&prompt, &catalog()).unwrap();
    let conversion = convert(editor);
    assert_eq!(conversion.prompt, prompt);
    assert_eq!(conversion.missing_node_types, vec!["Mystery".to_owned()]);
}

#[test]
fn api_to_editor_rejects_links_to_missing_nodes() {
    let prompt = json!({"1": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0]}}});
    let error = api_to_editor(&prompt, &catalog()).unwrap_err();
    assert_eq!(error.node_id.as_deref(), Some("1"));
    assert_eq!(error.field, "inputs.samples");
    assert_eq!(
        error.kind,
        EditorErrorKind::MissingNode {
            origin_id: "5".into()
        }
    );
}

#[test]
fn v1_links_at_the_root_are_read() {
    let graph = v1_workflow(
        json!([
            {"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": []},
                {"name": "CLIP", "type": "CLIP", "links": []},
                {"name": "VAE", "type": "VAE", "links": [4]}], "widgets_values": ["model.safetensors"]},
            {"id": 2, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": 4}]}
        ]),
        json!([{"id": 4, "origin_id": 1, "origin_slot": 2, "target_id": 2, "target_slot": 0,
                "type": "VAE", "parentId": 3}]),
        json!([]),
    );
    assert_eq!(
        convert(graph).prompt["2"]["inputs"],
        json!({"vae": ["1", 2]})
    );
}

#[test]
fn bypassed_subgraphs_and_pass_through_outputs() {
    let subgraph_id = "11111111-2222-3333-4444-555555555555";
    // Instance 12 is bypassed: the sampler's CONDITIONING input finds no input of that type on
    // it and is left unconnected; the decoder behind a bypassed "Pass" subgraph gets the VAE.
    let pass = json!({
        "id": "pass", "name": "Pass",
        "inputs": [{"id": "i", "name": "vae", "type": "VAE", "linkIds": [1]}],
        "outputs": [{"id": "o", "name": "vae", "type": "VAE", "linkIds": [1]}],
        "nodes": [],
        "links": [{"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "VAE"}]
    });
    let graph = v1_workflow(
        json!([
            {"id": 1, "type": "CheckpointLoaderSimple", "outputs": [
                {"name": "MODEL", "type": "MODEL", "links": []},
                {"name": "CLIP", "type": "CLIP", "links": [10]},
                {"name": "VAE", "type": "VAE", "links": [12]}], "widgets_values": ["model.safetensors"]},
            {"id": 12, "type": subgraph_id, "mode": 4, "inputs": [
                {"name": "clip", "type": "CLIP", "link": 10},
                {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": null}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [11]}],
             "widgets_values": ["x"]},
            {"id": 2, "type": "KSampler", "inputs": [
                {"name": "positive", "type": "CONDITIONING", "link": 11}],
             "widgets_values": [1, "fixed", 20, 7, "euler", "normal", 1]},
            {"id": 3, "type": "pass", "inputs": [{"name": "vae", "type": "VAE", "link": 12}],
             "outputs": [{"name": "vae", "type": "VAE", "links": [13]}]},
            {"id": 4, "type": "VAEDecode", "inputs": [{"name": "vae", "type": "VAE", "link": 13}]}
        ]),
        json!([
            {"id": 10, "origin_id": 1, "origin_slot": 1, "target_id": 12, "target_slot": 0, "type": "CLIP"},
            {"id": 11, "origin_id": 12, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "CONDITIONING"},
            {"id": 12, "origin_id": 1, "origin_slot": 2, "target_id": 3, "target_slot": 0, "type": "VAE"},
            {"id": 13, "origin_id": 3, "origin_slot": 0, "target_id": 4, "target_slot": 1, "type": "VAE"}
        ]),
        json!([encode_subgraph(), pass]),
    );
    let conversion = convert(graph);
    let prompt = conversion.prompt.as_object().unwrap();
    let mut ids: Vec<&str> = prompt.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["1", "2", "4"]);
    assert_eq!(prompt["2"]["inputs"].get("positive"), None);
    assert_eq!(prompt["4"]["inputs"], json!({"vae": ["1", 2]}));
}

#[test]
fn expansion_is_capped() {
    // 400 nodes in a subgraph, instanced 300 times: 120,000 nodes.
    let loaders: Vec<Json> = (1..=400)
        .map(|id| json!({"id": id, "type": "CheckpointLoaderSimple", "widgets_values": ["model.safetensors"]}))
        .collect();
    let instances: Vec<Json> = (1..=300)
        .map(|id| json!({"id": id, "type": "big"}))
        .collect();
    let graph = v1_workflow(
        json!([{"id": 1, "type": "many"}]),
        json!([]),
        json!([
            {"id": "big", "name": "big", "inputs": [], "outputs": [], "nodes": loaders, "links": []},
            {"id": "many", "name": "many", "inputs": [], "outputs": [], "nodes": instances, "links": []}
        ]),
    );
    let (_, _, kind) = error_kind(graph);
    assert_eq!(kind, EditorErrorKind::TooManyNodes);
}

#[test]
fn expanded_ids_may_not_collide() {
    let subgraph_id = "11111111-2222-3333-4444-555555555555";
    let graph = v1_workflow(
        json!([
            {"id": 12, "type": subgraph_id, "widgets_values": ["x"]},
            {"id": "12:5", "type": "VAEDecode"}
        ]),
        json!([]),
        json!([encode_subgraph()]),
    );
    let (node, field, _) = error_kind(graph);
    assert_eq!((node.as_deref(), field.as_str()), (Some("12:5"), "id"));
}

#[test]
fn a_group_node_widget_sets_what_an_inner_primitive_feeds() {
    // The group's widgets: the primitive's value (with its control slot), then the latent's
    // height and batch size; its width is converted and fed by the primitive inside.
    let graph = json!({"nodes": [
        {"id": 20, "type": "workflow>Size", "widgets_values": [640, "fixed", 480, 2]}
    ], "links": [], "extra": {"groupNodes": {"Size": {
        "nodes": [
            {"id": 8, "type": "PrimitiveNode", "outputs": [{"name": "INT", "type": "INT",
                "widget": {"name": "width"}, "links": [1]}], "widgets_values": [999, "fixed"]},
            {"id": 9, "type": "EmptyLatentImage", "inputs": [
                {"name": "width", "type": "INT", "widget": {"name": "width"}, "link": 1}],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
             "widgets_values": [512, 512, 1]}
        ],
        "links": [[0, 0, 1, 0, 8, "INT"]],
        "external": [[1, 0, "LATENT"]]
    }}}});
    let conversion = convert(graph);
    assert_eq!(
        conversion.prompt,
        json!({"20:1": {"inputs": {"width": 640, "height": 480, "batch_size": 2},
                        "class_type": "EmptyLatentImage", "_meta": {"title": "Empty Latent Image"}}})
    );
}
