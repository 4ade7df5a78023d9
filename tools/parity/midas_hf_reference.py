"""Reference fixtures for Weft's MiDaS nodes reading the Hugging Face `Intel/dpt-hybrid-midas`
folder, as today's comfyui_controlnet_aux runs them (Fannovel16/comfyui_controlnet_aux since
e8b689a: `custom_controlnet_aux/midas/transformers.py`, `MidasDetector` over transformers'
`DPTImageProcessor` + `DPTForDepthEstimation`).

What: transformers' `DPTForDepthEstimation` (DPT-Hybrid: a BiT ResNet with weight-standardised
'SAME' convolutions, ViT layers with separate query/key/value, the neck's reassemble stage and the
fusion stage in reversed order, the depth head), with a config written out here by hand (no
network: nothing is fetched from the hub) and narrowed for a small fixture, weights seeded and
scaled so the maps have contrast (checked below). Saved with `save_pretrained` (model.safetensors
and config.json) plus a `preprocessor_config.json`, under
tests/fixtures/annotators/midas_hf/Intel/dpt-hybrid-midas/. The pack's call is restated below
(`PackMidasDetector`): `resize_image_with_pad` to the resolution, the processor's resize of the
padded image to the model's size (torchvision, antialiased, on uint8) and `(x / 255 - 0.5) / 0.5`,
the net, the depth resized bicubically (align_corners=False) to the padded size, min-max to uint8
by truncation, or the normal from cv2.Sobel gradients of the resized depth with `a` and `bg_th`
(BGR-reversed), `remove_pad`; inside the pack's `common_annotator_call`.

Narrowed config (the published one: BiT stem 64, stages 3/4/9 blocks 256/512/1024 wide, ViT-B
768 wide with 12 heads, 12 layers read out at 8 and 11, image size 384, neck 256/512/768/768,
fusion 256): stem 32, stages 1/2/1 blocks 128 wide, ViT 64 wide with one head and MLP 64,
4 layers read out at 1 and 3 (`backbone_out_indices` [0, 1, 1, 3]), image size 192 (a 12x12
position table), neck 128/128/64/64, fusion 16.

Writes tests/fixtures/annotators/midas_hf/:
  Intel/dpt-hybrid-midas/{model.safetensors, config.json, preprocessor_config.json}
  reference.safetensors  per case: `<case>.input` (uint8 HxWx3), `<case>.resized` (uint8
                         SxSx3, the processor's resize: its output is (x - 127.5) / 127.5), `<case>.depth` (the net's output, SxS),
                         `<case>.depth_map`, `<case>.normal_map` (uint8, the nodes' IMAGE * 255);
                         `resize.padded` (uint8, the first case's image through resize_image_with_pad at
                         its resolution), `resize.bilinear` (that resized with resample=2, to
                         check that filter too)
  reference.json         cases, resolutions, a, bg_threshold, versions

Run: /tmp/peer-venv/bin/python tools/parity/midas_hf_reference.py [--pack-src DIR]
  (the pack's util.py must be importable, as for midas_reference.py)
  ... --full DIR   write a full-size random-weight Intel/dpt-hybrid-midas folder under DIR
  ... --bench      time the depth node's call at resolution 512 on a 512x512 image with the
                   full-size random net (one warm-up, median of 3, torch threads = 2)
Versions: see reference.json (transformers 5.25, torch 2.x, torchvision 0.29, opencv 4.x).
"""
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np
import skimage.data
import torch
import torchvision
import transformers
from safetensors.numpy import save_file
from transformers import BitConfig, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import midas_reference as M  # noqa: E402  (the pack's maps, common_annotator_call, weights)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "midas_hf")
FOLDER = os.path.join("Intel", "dpt-hybrid-midas")
A = float(np.pi * 2.0)
BG_TH = 0.1
# Intel/dpt-hybrid-midas's preprocessor_config.json as far as it matters here (the processor
# class's defaults where the published file may differ: resample 3 = bicubic).
PREPROCESSOR = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "ensure_multiple_of": 1,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "DPTImageProcessor", "keep_aspect_ratio": False, "resample": 3,
    "rescale_factor": 1 / 255,
}


def import_pack(src):
    M.import_pack(src)
    global HWC3, resize_image_with_pad
    HWC3, resize_image_with_pad = M.HWC3, M.resize_image_with_pad


def config(full=True):
    """DPTConfig of Intel/dpt-hybrid-midas (full) or the narrowed fixture net."""
    if full:
        bb = dict(embedding_size=64, depths=[3, 4, 9], hidden_sizes=[256, 512, 1024])
        vit = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, image_size=384, backbone_out_indices=[2, 5, 8, 11],
                   neck_hidden_sizes=[256, 512, 768, 768], fusion_hidden_size=256)
    else:
        bb = dict(embedding_size=32, depths=[1, 2, 1], hidden_sizes=[128, 128, 128])
        vit = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=1,
                   intermediate_size=64, image_size=192, backbone_out_indices=[0, 1, 1, 3],
                   neck_hidden_sizes=[128, 128, 64, 64], fusion_hidden_size=16)
    backbone = BitConfig(global_padding="same", layer_type="bottleneck", num_groups=32,
                         out_features=["stage1", "stage2", "stage3"],
                         embedding_dynamic_padding=True, **bb)
    side = vit["image_size"] // 16
    return DPTConfig(is_hybrid=True, backbone_config=backbone, readout_type="project",
                     reassemble_factors=[1, 1, 1, 0.5], neck_ignore_stages=[0, 1],
                     backbone_featmap_shape=[1, bb["hidden_sizes"][-1], side, side],
                     layer_norm_eps=1e-12, hidden_act="gelu", qkv_bias=True, **vit)


def processor(cfg):
    size = cfg.image_size
    return DPTImageProcessor(size={"height": size, "width": size},
                             **{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})


def save(model, proc, folder):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    pre = dict(PREPROCESSOR, size={"height": model.config.image_size, "width": model.config.image_size})
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)


class PackMidasDetector:
    """The pack's `MidasDetector.__call__` (midas/transformers.py at HEAD) around a given model and
    processor (the pack builds them with from_pretrained); `last` keeps the processor's output and
    the net's for the fixture."""

    def __init__(self, model, proc):
        self.model, self.processor, self.last = model, proc, {}

    def __call__(self, input_image, a=np.pi * 2.0, bg_th=0.1, depth_and_normal=False,
                 detect_resolution=512, output_type=None, upscale_method="INTER_CUBIC"):
        from PIL import Image
        input_image = HWC3(input_image)
        detected_map, remove_pad = resize_image_with_pad(input_image, detect_resolution, upscale_method)
        pil_image = Image.fromarray(detected_map.astype(np.uint8))
        with torch.no_grad():
            inputs = self.processor(images=pil_image, return_tensors="pt")
            depth = self.model(**inputs).predicted_depth
            self.last = {"pixel_values": inputs["pixel_values"].numpy().copy(),
                         "depth": depth[0].numpy().copy()}
            depth = torch.nn.functional.interpolate(
                depth.unsqueeze(1), size=(detected_map.shape[0], detected_map.shape[1]),
                mode="bicubic", align_corners=False).squeeze()
            return M.maps(depth, a, bg_th, depth_and_normal, remove_pad)


def tiny_model():
    torch.manual_seed(0)
    model = DPTForDepthEstimation(config(full=False)).eval()
    M.randomise(model, ("position_embeddings", "cls_token"))
    with torch.no_grad():
        # keep the final ReLU mostly open so the map is not flat
        model.head.head[4].weight.mul_(0.1)
        model.head.head[4].bias.fill_(2.0)
    return model


def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    # (case, image, resolution): 256 square (the processor shrinks it to 192), and 64x85 padded
    # to 64x128 (the processor enlarges it)
    return [("astronaut", astro, 256), ("coffee", coffee, 64)]


def fixtures():
    model = tiny_model()
    proc = processor(model.config)
    save(model, proc, os.path.join(OUT, FOLDER))
    detector = PackMidasDetector(model, proc)
    tensors, meta = {}, {"a": A, "bg_threshold": BG_TH, "cases": {}}
    for case, img, res in inputs():
        depth_map = M.to_u8(M.common_annotator_call(detector, M.to_comfy(img), res, a=A, bg_th=BG_TH))
        last = detector.last
        normal = lambda image, **kw: detector(image, **kw)[1]
        normal_map = M.to_u8(M.common_annotator_call(normal, M.to_comfy(img), res, a=A, bg_th=BG_TH,
                                                 depth_and_normal=True))
        depth = last["depth"]
        zero = float((depth <= 0).mean())
        levels = len(np.unique(depth_map))
        print(f"{case}: input {img.shape}, depth {depth.shape} {depth.min():.4f}..{depth.max():.4f} "
              f"(zero {zero:.1%}), depth map {depth_map.shape} {levels} levels, normal map "
              f"{[len(np.unique(normal_map[..., c])) for c in range(3)]} levels per channel")
        assert depth.max() > depth.min() and levels > 100 and zero < 0.2, "degenerate map"
        assert len(np.unique(normal_map[..., 2])) > 20, "flat normals"
        tensors[f"{case}.input"] = img
        # the processor's uint8 resize, recovered exactly from (x - 127.5) / 127.5
        tensors[f"{case}.resized"] = np.round(last["pixel_values"][0].transpose(1, 2, 0) * 127.5 + 127.5).astype(np.uint8)
        tensors[f"{case}.depth"] = depth.astype(np.float32)
        tensors[f"{case}.depth_map"] = depth_map
        tensors[f"{case}.normal_map"] = normal_map
        meta["cases"][case] = {"resolution": res, "input": list(img.shape),
                               "depth": list(depth.shape), "output": list(depth_map.shape)}
    # the bilinear filter (resample=2) on the first case's padded image, uint8 out
    padded, _ = resize_image_with_pad(HWC3(inputs()[0][1]), inputs()[0][2], "INTER_CUBIC")
    tensors["resize.padded"] = padded
    bilinear = DPTImageProcessor(size={"height": 192, "width": 192}, resample=2)
    tensors["resize.bilinear"] = bilinear.resize(
        torch.from_numpy(padded).permute(2, 0, 1)[None].contiguous(),
        size=transformers.image_utils.SizeDict(height=192, width=192), resample=2,
    )[0].permute(1, 2, 0).numpy().copy()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(OUT, "reference.safetensors"))
    cv2.imwrite(os.path.join(OUT, "coffee.png"), cv2.cvtColor(tensors["coffee.input"], cv2.COLOR_RGB2BGR))
    meta["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                        "transformers": transformers.__version__, "cv2": cv2.__version__,
                        "numpy": np.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


def full_model():
    torch.manual_seed(0)
    return DPTForDepthEstimation(config(full=True)).eval()


def bench():
    torch.set_num_threads(2)
    model = full_model()
    detector = PackMidasDetector(model, processor(model.config))
    img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = M.to_comfy(img)
    with torch.inference_mode():
        M.common_annotator_call(detector, image, 512, a=A, bg_th=BG_TH)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            M.common_annotator_call(detector, image, 512, a=A, bg_th=BG_TH)
            times.append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, 2 threads, cpu f32: "
          f"MiDaS-DepthMapPreprocessor (Intel/dpt-hybrid-midas layout) 512x512 at resolution 512: "
          f"median {statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})")


def main():
    args = M.aux_args()
    import_pack(args.pack_src)
    if args.full:
        model = full_model()
        folder = os.path.join(args.full, FOLDER)
        save(model, processor(model.config), folder)
        print(f"wrote {folder}")
    if args.bench:
        bench()
    if not args.full and not args.bench:
        fixtures()


if __name__ == "__main__":
    main()
