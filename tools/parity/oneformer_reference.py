"""Reference fixtures for Weft's OneFormer segmentors (`OneFormer-ADE20K-SemSegPreprocessor`,
`OneFormer-COCO-SemSegPreprocessor`), as today's comfyui_controlnet_aux runs them
(Fannovel16/comfyui_controlnet_aux at e8b689a: `custom_controlnet_aux/oneformer/transformers.py`,
`OneformerSegmentor` over transformers' `OneFormerProcessor` + `OneFormerForUniversalSegmentation`
loaded from the Hugging Face folders `shi-labs/oneformer_ade20k_swin_large` /
`shi-labs/oneformer_coco_swin_large`).

What: transformers' `OneFormerForUniversalSegmentation` (Swin backbone, the multi-scale
deformable-attention pixel decoder, the task MLP, the query transformer and the masked-attention
transformer decoder) from a config written here by hand (no network), narrowed for a small
fixture, weights seeded and scaled so the class map has several classes (checked below). Saved
with `save_pretrained` (model.safetensors, config.json) plus a `preprocessor_config.json`, under
tests/fixtures/annotators/oneformer/shi-labs/oneformer_ade20k_swin_large/. The pack's call is
restated below (`PackOneformerSegmentor`): `resize_image_with_pad` to the resolution, the
processor (torchvision's antialiased uint8 resize of the shortest edge, `(x - mean) / std`, the
task text "the task is semantic" tokenized by CLIP to `task_seq_len` ids, padding as 0), the net,
`post_process_semantic_segmentation` to the padded size, the pack's golden-angle HSV palette on
the uint8 class map (`class_id % 200`), `remove_pad`; inside the pack's `common_annotator_call`.

The task tokens: the CLIP tokenizer is built here from the `bpe_simple_vocab_16e6.txt` that the
`instant-clip-tokenizer` crate bundles (the vocabulary OpenAI's CLIP and HF's `openai/clip-*`
vocab.json come from); the ids are recorded in the fixture (`task_inputs`).

Narrowed config (published Swin-L: embed 192, depths 2/2/18/2, heads 6/12/24/48, window 12;
conv/mask/hidden dims 256, 6 encoder layers, 10 decoder layers, 2 query layers, 8 heads,
FFN 1024/2048, 250 (ADE20K) or 150 (COCO) queries, 150/133 classes): Swin embed 12, depths
2/2/2/1, heads 1/2/2/4, window 7 (so every stage pads, and odd blocks shift); dims 32, 2 encoder
layers, 3 decoder layers, 1 query layer, 4 heads, FFN 64/64, 8 queries, 6 classes.

Writes tests/fixtures/annotators/oneformer/:
  shi-labs/oneformer_ade20k_swin_large/{model.safetensors, config.json, preprocessor_config.json}
  250_16_swin_l_oneformer_ade20k_160k.pth  the same net in the detectron2 checkpoint's layout
                         (`detectron2_state_dict`)
  reference.safetensors  `task_inputs` (the 77 ids as f32), `palette` (uint8 200x3), and per case:
                         `<case>.input` (uint8 HxWx3), `<case>.resized` (uint8, the processor's
                         resize), `<case>.class_logits` [Q, C+1], `<case>.mask_logits` [Q, h, w],
                         `<case>.features.N` (the backbone's stage N maps, first case only),
                         `<case>.classes` (int32 class map at the padded size),
                         `<case>.margin` (its best score less the second best),
                         `<case>.map` (uint8, the node's IMAGE * 255); `resize.scores` (random
                         [3, 40, 80]) resized as the post-processing does to 16x20 (`resize.shrunk`)
                         and 97x130 (`resize.grown`)
  reference.json         cases, resolutions, versions

Run: /tmp/peer-venv/bin/python tools/parity/oneformer_reference.py [--pack-src DIR]
  (the pack's util.py must be importable, as for midas_reference.py)
  ... --full DIR   write a full-size random-weight shi-labs/oneformer_ade20k_swin_large folder
  ... --bench      time the ADE20K node's call at resolution 512 on a 512x512 image with the
                   full-size random net (one warm-up, median of 3, torch threads = 2)
Versions: see reference.json (transformers 5.25, torch 2.x, torchvision 0.29, opencv 4.x).
"""
import glob
import json
import os
import sys

import cv2
import numpy as np
import skimage.data
import torch
import torchvision
import transformers
from safetensors.numpy import save_file
from transformers import (CLIPTokenizer, OneFormerConfig, OneFormerForUniversalSegmentation,
                          OneFormerProcessor, SwinConfig)
from transformers.models.oneformer.image_processing_oneformer import OneFormerImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import midas_reference as M  # noqa: E402  (the pack's util, common_annotator_call, to_u8)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "oneformer")
FOLDER = os.path.join("shi-labs", "oneformer_ade20k_swin_large")
DETECTRON2 = "250_16_swin_l_oneformer_ade20k_160k.pth"
# shi-labs/oneformer_ade20k_swin_large's preprocessor_config.json as far as it matters here
# (`class_info_file` left out: the processor would fetch it from the hub; the net ignores it).
PREPROCESSOR = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "ignore_index": 255,
    "image_mean": [0.48500001430511475, 0.4560000002384186, 0.4059999883174896],
    "image_std": [0.2290000021457672, 0.2239999920129776, 0.22499999403953552],
    "image_processor_type": "OneFormerImageProcessor", "resample": 2,
    "rescale_factor": 1 / 255, "do_reduce_labels": False,
}


def clip_tokenizer():
    """HF `CLIPTokenizer` from OpenAI's BPE merges (as `openai/clip-vit-*`'s vocab.json was made)."""
    path = glob.glob(os.path.expanduser(
        "~/.cargo/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt"))[0]
    merges = open(path, encoding="utf-8").read().split("\n")[1:49152 - 256 - 2 + 1]
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges])


def config(full=True):
    """OneFormerConfig of shi-labs/oneformer_ade20k_swin_large (full) or the narrowed net."""
    if full:
        swin = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                    image_size=384)
        rest = dict(conv_dim=256, mask_dim=256, hidden_dim=256, encoder_layers=6, decoder_layers=10,
                    query_dec_layers=2, num_attention_heads=8, dim_feedforward=2048,
                    encoder_feedforward_dim=1024, num_queries=250, num_labels=150)
    else:
        swin = dict(embed_dim=12, depths=[2, 2, 2, 1], num_heads=[1, 2, 2, 4], window_size=7,
                    image_size=224)
        rest = dict(conv_dim=32, mask_dim=32, hidden_dim=32, encoder_layers=2, decoder_layers=3,
                    query_dec_layers=1, num_attention_heads=4, dim_feedforward=64,
                    encoder_feedforward_dim=64, num_queries=8, num_labels=6)
    backbone = SwinConfig(out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.3,
                          mlp_ratio=4.0, qkv_bias=True, patch_size=4, use_absolute_embeddings=False,
                          **swin)
    labels = rest.pop("num_labels")
    return OneFormerConfig(backbone_config=backbone, task_seq_len=77, use_task_norm=True,
                           id2label={i: f"class{i}" for i in range(labels)}, **rest)


def processor(shortest, longest):
    ip = OneFormerImageProcessor(size={"shortest_edge": shortest, "longest_edge": longest},
                                 **{k: v for k, v in PREPROCESSOR.items()
                                    if k != "image_processor_type"})
    return OneFormerProcessor(image_processor=ip, tokenizer=clip_tokenizer())


def save(model, folder, shortest, longest):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    pre = dict(PREPROCESSOR, size={"shortest_edge": shortest, "longest_edge": longest},
               num_labels=model.config.num_labels)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)


class PackOneformerSegmentor:
    """The pack's `OneformerSegmentor.__call__` and colour map (oneformer/transformers.py at
    e8b689a) around a given model and processor; `last` keeps the intermediates."""

    def __init__(self, model, proc):
        self.model, self.processor, self.last = model, proc, {}

    def __call__(self, input_image=None, detect_resolution=512, output_type=None,
                 upscale_method="INTER_CUBIC", **kwargs):
        from PIL import Image
        input_image = M.HWC3(input_image)
        input_image, remove_pad = M.resize_image_with_pad(input_image, detect_resolution, upscale_method)
        pil_image = Image.fromarray(input_image)
        semantic_inputs = self.processor(images=pil_image, task_inputs=["semantic"], return_tensors="pt")
        hooks = {}
        if "features" not in self.last:
            enc = self.model.model.pixel_level_module
            hooks["enc"] = enc.encoder.register_forward_hook(
                lambda m, i, o: self.last.__setitem__("features", [f[0].numpy().copy() for f in o.feature_maps]))
            hooks["dec"] = enc.decoder.register_forward_hook(
                lambda m, i, o: self.last.__setitem__("mask_features", o.mask_features[0].numpy().copy()))
        with torch.no_grad():
            outputs = self.model(**semantic_inputs)
        for h in hooks.values():
            h.remove()
        predicted = self.processor.post_process_semantic_segmentation(
            outputs, target_sizes=[pil_image.size[::-1]])[0]
        scores = self.processor.post_process_semantic_segmentation(
            outputs, target_sizes=[pil_image.size[::-1]], return_segmentation_scores=True)[0]
        top2 = scores.segmentation_scores.topk(2, dim=0).values
        self.last["margin"] = (top2[0] - top2[1]).numpy().copy()
        self.last.update(pixel_values=semantic_inputs["pixel_values"][0].numpy().copy(),
                         task_inputs=semantic_inputs["task_inputs"][0].numpy().copy(),
                         class_logits=outputs.class_queries_logits[0].numpy().copy(),
                         mask_logits=outputs.masks_queries_logits[0].numpy().copy(),
                         classes=predicted.numpy().astype(np.int32))
        seg_map = predicted.cpu().numpy().astype(np.uint8)
        detected_map = colormap(seg_map)
        return remove_pad(M.HWC3(detected_map))


def palette(num_classes=200):
    """The pack's `_generate_detectron2_style_palette`."""
    colors = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(1, num_classes):
        hue = (i * 137.508) % 360
        saturation = 0.6 + 0.4 * ((i % 3) / 2)
        value = 0.7 + 0.3 * ((i % 2))
        color_hsv = np.array([[[hue / 2, saturation * 255, value * 255]]], dtype=np.uint8)
        colors[i] = cv2.cvtColor(color_hsv, cv2.COLOR_HSV2RGB)[0, 0]
    return colors


def colormap(seg_map):
    """The pack's `_generate_professional_colormap`."""
    color_map = np.zeros((*seg_map.shape, 3), dtype=np.uint8)
    colors = palette(200)
    for class_id in np.unique(seg_map):
        color_map[seg_map == class_id] = colors[class_id % len(colors)]
    return color_map


def randomise(model):
    M.randomise(model, ("relative_position_bias_table", "level_embed", "queries_embedder.weight",
                        "level_embed.weight"))
    with torch.no_grad():
        # the task MLP sees token ids (up to 49407) as floats: keep its first layer small
        model.model.task_encoder.task_mlp.layers[0].layers[0].weight.mul_(1e-4)
        # queries that differ enough to segment differently
        model.model.transformer_module.queries_embedder.weight.mul_(10.0)


def spread_classes(model, proc):
    """The random queries come out alike, so one class would win everywhere. On the first input:
    the mask features lose their spatial mean, then the class head and the mask embedding's last
    layer are refitted (least squares on the queries' final states, a few rounds since the
    masks feed back through the attention masks) so that query q scores class q % classes high
    and embeds a direction of its own."""
    case, img, res = inputs()[0]
    seg = PackOneformerSegmentor(model, proc)
    seg(img, detect_resolution=res)
    proj = model.model.pixel_level_module.decoder.mask_projection
    with torch.no_grad():
        proj.bias.sub_(torch.from_numpy(seg.last["mask_features"]).mean((1, 2)))
    dec = model.model.transformer_module.decoder
    last = dec.mask_embed.layers[-1].layers[0]
    q, classes = model.config.num_queries, model.config.num_labels + 1
    g = torch.Generator().manual_seed(1)
    class_target = torch.full((q, classes), -SPREAD)
    class_target[torch.arange(q), torch.arange(q) % (classes - 1)] = SPREAD
    embed_target = torch.randn(q, last.weight.shape[0], generator=g) * 0.3
    for _ in range(4):
        states = {}
        hooks = [dec.class_embed.register_forward_hook(lambda m, i, o: states.__setitem__("x", i[0][0])),
                 last.register_forward_hook(lambda m, i, o: states.__setitem__("h", i[0][0]))]
        seg.last = {"features": None}
        seg(img, detect_resolution=res)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for layer, x, target in ((dec.class_embed, states["x"], class_target),
                                     (last, states["h"], embed_target)):
                ones = torch.cat([x, torch.ones(q, 1)], 1)
                sol = torch.linalg.lstsq(ones, target, driver="gelsd").solution
                layer.weight.copy_(sol[:-1].T)
                layer.bias.copy_(sol[-1])


SPREAD = 4.0


def tiny_model(proc):
    torch.manual_seed(0)
    model = OneFormerForUniversalSegmentation(config(full=False)).eval()
    randomise(model)
    spread_classes(model, proc)
    return model


def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    # (case, image, resolution): 128 square (the processor enlarges it to 160), and 64x85 padded
    # to 64x128 (enlarged to 160x320)
    return [("astronaut", astro, 128), ("coffee", coffee, 64)]


SHORTEST, LONGEST = 160, 320
# The published ADE20K Swin-L processor: detectron2's MIN_SIZE_TEST / MAX_SIZE_TEST, which
# transformers' conversion script (convert_to_hf_oneformer.py) wrote as size / max_size.
FULL_SIZE = 640, 2560


def fixtures():
    torch.set_num_threads(1)
    proc = processor(SHORTEST, LONGEST)
    model = tiny_model(proc)
    save(model, os.path.join(OUT, FOLDER), SHORTEST, LONGEST)
    torch.save(detectron2_state_dict(model, os.path.join(OUT, FOLDER)), os.path.join(OUT, DETECTRON2))
    seg = PackOneformerSegmentor(model, proc)
    tensors, meta = {"palette": palette(200)}, {"cases": {}}
    for n, (case, img, res) in enumerate(inputs()):
        out = M.to_u8(M.common_annotator_call(seg, M.to_comfy(img), res))
        last = seg.last
        classes = last["classes"]
        counts = {int(c): int((classes == c).sum()) for c in np.unique(classes)}
        print(f"{case}: input {img.shape}, processed {last['pixel_values'].shape}, masks "
              f"{last['mask_logits'].shape}, classes {counts}, map {out.shape}")
        assert len(counts) >= 3, "degenerate class map"
        tensors["task_inputs"] = last["task_inputs"].astype(np.float32)
        tensors[f"{case}.input"] = img
        mean = np.array(PREPROCESSOR["image_mean"], dtype=np.float32)[:, None, None] * 255
        std = np.array(PREPROCESSOR["image_std"], dtype=np.float32)[:, None, None] * 255
        resized = np.round(last["pixel_values"] * std + mean)
        tensors[f"{case}.resized"] = resized.transpose(1, 2, 0).astype(np.uint8)
        tensors[f"{case}.class_logits"] = last["class_logits"]
        tensors[f"{case}.mask_logits"] = last["mask_logits"]
        tensors[f"{case}.classes"] = classes
        tensors[f"{case}.margin"] = last["margin"]
        tensors[f"{case}.map"] = out
        if n == 0:
            for i, f in enumerate(last["features"]):
                tensors[f"{case}.features.{i}"] = f
        meta["cases"][case] = {"resolution": res, "input": list(img.shape),
                               "processed": list(last["pixel_values"].shape),
                               "output": list(out.shape), "class_pixels": counts}
        seg.last = {"features": None}
    # post_process_semantic_segmentation's resize when it shrinks (a resolution below a quarter
    # of the processor's size): torchvision's antialiased bilinear on floats
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(3, 40, 80, generator=g)
    tensors["resize.scores"] = scores.numpy()
    tensors["resize.shrunk"] = torchvision.transforms.v2.functional.resize(
        scores[None], size=[16, 20], interpolation=torchvision.transforms.InterpolationMode.BILINEAR)[0].numpy()
    tensors["resize.grown"] = torchvision.transforms.v2.functional.resize(
        scores[None], size=[97, 130], interpolation=torchvision.transforms.InterpolationMode.BILINEAR)[0].numpy()
    print("task ids:", tensors["task_inputs"][:8])
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(OUT, "reference.safetensors"))
    cv2.imwrite(os.path.join(OUT, "coffee.png"), cv2.cvtColor(tensors["coffee.input"], cv2.COLOR_RGB2BGR))
    meta["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                        "transformers": transformers.__version__, "cv2": cv2.__version__,
                        "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


def detectron2_state_dict(model, folder):
    """The saved folder's tensors under SHI-Labs' detectron2 names: transformers' conversion
    (convert_to_hf_oneformer.py) run backwards, q/k/v joined again, nested under "model" as
    detectron2's checkpointer saves them."""
    import re
    from safetensors.torch import load_file
    sd = {k.removeprefix("model."): v for k, v in
          load_file(os.path.join(folder, "model.safetensors")).items() if k.startswith("model.")}
    out = {}
    rules = [
        (r"pixel_level_module\.encoder\.embeddings\.patch_embeddings\.projection\.", "backbone.patch_embed.proj."),
        (r"pixel_level_module\.encoder\.embeddings\.norm\.", "backbone.patch_embed.norm."),
        (r"pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.",
         lambda m: f"backbone.norm{int(m.group(1)) - 1}."),
        (r"pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.*)",
         lambda m: f"backbone.layers.{m.group(1)}.blocks.{m.group(2)}." + {
             "layernorm_before": "norm1", "layernorm_after": "norm2",
             "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
             "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1",
             "output.dense": "mlp.fc2"}.get(m.group(3).rsplit(".", 1)[0] if not m.group(3).endswith("table")
                                            else m.group(3), m.group(3).rsplit(".", 1)[0])
         + ("" if m.group(3).endswith("table") else "." + m.group(3).rsplit(".", 1)[1])),
        (r"pixel_level_module\.encoder\.encoder\.layers\.(\d+)\.downsample\.", r"backbone.layers.\1.downsample."),
        (r"pixel_level_module\.decoder\.(adapter_1|layer_1)\.0\.weight", r"sem_seg_head.pixel_decoder.\1.weight"),
        (r"pixel_level_module\.decoder\.(adapter_1|layer_1)\.1\.", r"sem_seg_head.pixel_decoder.\1.norm."),
        (r"pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
        (r"pixel_level_module\.decoder\.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
        (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.(fc1|fc2|self_attn_layer_norm|final_layer_norm)\.",
         lambda m: f"sem_seg_head.pixel_decoder.transformer.encoder.layers.{m.group(1)}." + {
             "fc1": "linear1", "fc2": "linear2", "self_attn_layer_norm": "norm1",
             "final_layer_norm": "norm2"}[m.group(2)] + "."),
        (r"pixel_level_module\.decoder\.encoder\.layers\.(\d+)\.self_attn\.",
         r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn."),
        (r"pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
        (r"transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
        (r"transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
        (r"transformer_module\.decoder\.decoder_norm\.", "sem_seg_head.predictor.decoder_norm."),
        (r"transformer_module\.decoder\.query_input_projection\.", "sem_seg_head.predictor.class_input_proj."),
        (r"transformer_module\.decoder\.class_embed\.", "sem_seg_head.predictor.class_embed."),
        (r"transformer_module\.decoder\.mask_embed\.layers\.(\d)\.0\.", r"sem_seg_head.predictor.mask_embed.layers.\1."),
        (r"transformer_module\.decoder\.query_transformer\.decoder\.", "sem_seg_head.predictor.class_transformer.decoder."),
        (r"transformer_module\.decoder\.layers\.(\d+)\.cross_attn\.", r"sem_seg_head.predictor.transformer_cross_attention_layers.\1."),
        (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.norm\.", r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm."),
        (r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.self_attn\.out_proj\.",
         r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj."),
        (r"transformer_module\.decoder\.layers\.(\d+)\.ffn\.", r"sem_seg_head.predictor.transformer_ffn_layers.\1."),
        (r"task_encoder\.task_mlp\.layers\.(\d)\.0\.", r"task_mlp.layers.\1."),
    ]
    joined = {}
    for k, v in sd.items():
        m = re.match(r"(.*)\.attention\.self\.(query|key|value)\.(weight|bias)$", k)
        m2 = re.match(r"transformer_module\.decoder\.layers\.(\d+)\.self_attn\.self_attn\.(q|k|v)_proj\.(weight|bias)$", k)
        if m:
            i = m.group(1).split(".")
            name = f"backbone.layers.{i[-3]}.blocks.{i[-1]}.attn.qkv.{m.group(3)}"
            joined.setdefault(name, {})[m.group(2)[0]] = v
            continue
        if m2:
            name = (f"sem_seg_head.predictor.transformer_self_attention_layers.{m2.group(1)}.self_attn."
                    f"in_proj_{m2.group(3)}")
            joined.setdefault(name, {})[m2.group(2)] = v
            continue
        for pattern, repl in rules:
            new, n = re.subn("^" + pattern, repl, k)
            if n:
                out[new] = v
                break
        else:
            if not k.startswith("pixel_level_module.encoder.swin.layernorm."):  # unused, not in d2
                raise KeyError(k)
    for name, parts in joined.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    # what detectron2's files carry besides (the text encoder's tensors, unread)
    out["prompt_ctx.weight"] = torch.zeros(2, 4)
    return {"model": {k: v.contiguous() for k, v in out.items()}, "iteration": 0}


def full_model():
    torch.manual_seed(0)
    return OneFormerForUniversalSegmentation(config(full=True)).eval()


def bench():
    torch.set_num_threads(2)
    model = full_model()
    seg = PackOneformerSegmentor(model, processor(*FULL_SIZE))
    seg.last = {"features": None}
    img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = M.to_comfy(img)
    timing = M.timed(lambda: M.common_annotator_call(seg, image, 512))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, 2 threads, cpu f32: "
          f"OneFormer-ADE20K-SemSegPreprocessor (Swin-L, 250 queries, processor shortest edge {FULL_SIZE[0]}) "
          f"512x512 at resolution 512: {timing}")


def main():
    args = M.aux_args()
    M.import_pack(args.pack_src)
    if args.full:
        model = full_model()
        folder = os.path.join(args.full, FOLDER)
        save(model, folder, *FULL_SIZE)
        print(f"wrote {folder}")
    if args.bench:
        bench()
    if not args.full and not args.bench:
        fixtures()


if __name__ == "__main__":
    main()
