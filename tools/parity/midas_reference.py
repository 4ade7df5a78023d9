"""Reference fixtures for Weft's MiDaS annotator (comfyui_controlnet_aux's
`MiDaS-DepthMapPreprocessor` and `MiDaS-NormalMapPreprocessor`).

What: the DPT-Hybrid network of PyPI controlnet_aux 0.0.10's vendored MiDaS code
(`controlnet_aux.midas.midas.dpt_depth.DPTDepthModel`, backbone `vitb_rn50_384`: timm's
R50+ViT-B/16 hybrid, ResNetV2 stem and stages with weight-standardised 'same'-padded convolutions
and GroupNorm, blocks 8 and 11 read out with `project` readout, the ResNet's stages 0 and 1 as the
first two DPT layers, bilinearly resized position table) with deterministic random weights, run by
a re-statement of the pack's `MidasDetector.__call__` as it was while the pack read
`dpt_hybrid-midas-501f0c75.pt` (Fannovel16/comfyui_controlnet_aux up to 2e4e7f6, June 2025:
`resize_image_with_pad` to the resolution, `x / 127.5 - 1` on the padded image, min-max depth to
uint8 by truncation, the normal from cv2.Sobel gradients of the raw depth with `a` and
`bg_th`, BGR-reversed, `remove_pad`) inside the pack's `common_annotator_call`, as
node_wrappers/midas.py calls it (depth: the map; normal: `depth_and_normal=True`, the second map).

The network is narrowed with the published key names (ResNet stem 32 wide, stages of 1, 2, 1
blocks 128/128/256 wide with GroupNorm's 32 groups; ViT width 64 with one 64-wide head, all 12
blocks, MLP width 64, the 24x24 position table of 384; readout projections 64 wide, DPT features
16), weights seeded and scaled so the maps have contrast (checked below), saved with torch.save as
a plain state dict like the published file (whose ImageNet `head.*` Weft ignores; the tiny net has
none). Writes tests/fixtures/annotators/midas/:
  dpt_hybrid-midas-501f0c75.pt  the tiny network
  reference.safetensors         per case: `<case>.input` (uint8 HxWx3), `<case>.depth` (f32, the
                                net's output on the padded image), `<case>.depth_map` and
                                `<case>.normal_map` (uint8, the nodes' IMAGE * 255)
  reference.json                cases, resolutions, a, bg_threshold, sizes, versions
  astronaut.png                 the first case's input, for the end-to-end test

Run (the pack's util.py must be importable; the script looks in --pack-src):
  git --git-dir=<mirror of Fannovel16/comfyui_controlnet_aux> archive HEAD src/custom_controlnet_aux \
      | tar -x -C /tmp/aux-pack
  /tmp/peer-venv/bin/python tools/parity/midas_reference.py --pack-src /tmp/aux-pack/src
  ... --full DIR   write a full-size random-weight dpt_hybrid-midas-501f0c75.pt in DIR
  ... --bench      time the depth node's call at resolution 512 on a 512x512 image
                   (one warm-up, median of 3, torch threads = 2)
Versions used: torch 2.x (see reference.json), timm 1.0.31, controlnet_aux 0.0.10, opencv-python 4.x.
"""
import argparse
import json
import os
import statistics
import sys
import time
from functools import partial

import cv2
import numpy as np
import skimage.data
import timm
import torch
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "midas")
FILE = "dpt_hybrid-midas-501f0c75.pt"
A = float(np.pi * 2.0)
BG_TH = 0.1


def import_pack(src):
    sys.path.insert(0, src)
    global HWC3, resize_image_with_pad
    from custom_controlnet_aux.util import HWC3, resize_image_with_pad


def common_annotator_call(model, tensor_image, resolution, **kwargs):
    """utils.py `common_annotator_call` (no pbar): per image, uint8 by truncation, result / 255."""
    detect_resolution = resolution if isinstance(resolution, int) and resolution >= 64 else 512
    outs = []
    for image in tensor_image:
        np_image = np.asarray(image.cpu() * 255.0, dtype=np.uint8)
        np_result = model(np_image, output_type="np", detect_resolution=detect_resolution, **kwargs)
        outs.append(torch.from_numpy(np_result.astype(np.float32) / 255.0))
    return torch.stack(outs)


class PackMidasDetector:
    """The pack's `MidasDetector.__call__` at 2e4e7f6 (custom_controlnet_aux/midas/__init__.py),
    restated around a DPTDepthModel; `last_depth` keeps the net's output for the fixture."""

    def __init__(self, model):
        self.model = model
        self.last_depth = None

    def __call__(self, input_image, a=np.pi * 2.0, bg_th=0.1, depth_and_normal=False,
                 detect_resolution=512, output_type=None, upscale_method="INTER_CUBIC"):
        input_image = HWC3(input_image)
        detected_map, remove_pad = resize_image_with_pad(input_image, detect_resolution, upscale_method)
        with torch.no_grad():
            image_depth = torch.from_numpy(detected_map).float()
            image_depth = image_depth / 127.5 - 1.0
            image_depth = image_depth.permute(2, 0, 1)[None]
            depth = self.model(image_depth)[0]
            self.last_depth = depth.numpy().copy()
            return maps(depth, a, bg_th, depth_and_normal, remove_pad)


def maps(depth, a, bg_th, depth_and_normal, remove_pad):
    """The pack's maps from the depth (the same code in its `.pt` and transformers versions): min-max
    to uint8 by truncation, and with `depth_and_normal` the normal from the Sobel gradients."""
    depth_pt = depth.clone()
    depth_pt -= torch.min(depth_pt)
    depth_pt /= torch.max(depth_pt)
    depth_pt = depth_pt.cpu().numpy()
    depth_image = (depth_pt * 255.0).clip(0, 255).astype(np.uint8)
    if depth_and_normal:
        depth_np = depth.cpu().numpy()
        x = cv2.Sobel(depth_np, cv2.CV_32F, 1, 0, ksize=3)
        y = cv2.Sobel(depth_np, cv2.CV_32F, 0, 1, ksize=3)
        z = np.ones_like(x) * a
        x[depth_pt < bg_th] = 0
        y[depth_pt < bg_th] = 0
        normal = np.stack([x, y, z], axis=2)
        normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
        normal_image = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)[:, :, ::-1]
    depth_image = remove_pad(HWC3(depth_image))
    if depth_and_normal:
        return depth_image, remove_pad(HWC3(normal_image))
    return depth_image


def build(vit_width=768, depth=12, heads=12, mlp_ratio=4.0, stem=64, layers=(3, 4, 9),
          channels=(256, 512, 1024), features=256, num_classes=1000):
    """DPTDepthModel('vitb_rn50_384') with the hybrid ViT built to these sizes (the defaults are
    the published ones)."""
    from controlnet_aux.midas.midas import blocks, dpt_depth, vit
    from timm.layers import StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    def make_encoder(backbone, feats, use_pretrained, groups=1, expand=False, exportable=True,
                     hooks=None, use_vit_only=False, use_readout="ignore", **kw):
        resnet = ResNetV2(layers=layers, channels=channels, num_classes=0, global_pool="",
                          preact=False, stem_type="same", stem_chs=stem,
                          conv_layer=partial(StdConv2dSame, eps=1e-8))
        model = VisionTransformer(img_size=384, patch_size=1, embed_dim=vit_width, depth=depth,
                                  num_heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes,
                                  embed_layer=partial(HybridEmbed, backbone=resnet))
        widths = [channels[0], channels[1], vit_width, vit_width]
        pretrained = vit._make_vit_b_rn50_backbone(
            model, features=widths, size=[384, 384], hooks=hooks, vit_features=vit_width,
            use_vit_only=use_vit_only, use_readout=use_readout)
        return pretrained, blocks._make_scratch(widths, feats, groups=groups, expand=expand)

    dpt_depth._make_encoder = make_encoder
    torch.manual_seed(0)
    return dpt_depth.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True,
                                   features=features).eval()


def tiny_model():
    model = build(vit_width=64, heads=1, mlp_ratio=1.0, stem=32, layers=(1, 2, 1),
                  channels=(128, 128, 256), features=16, num_classes=0)
    randomise(model, ("pos_embed", "cls_token"))
    with torch.no_grad():
        # keep the final ReLU mostly open so the map is not flat
        model.scratch.output_conv[4].bias.fill_(1.0)
    return model


def randomise(model, tables):
    """Seeded weights with contrast: norms near 1, small biases, the `tables` (position table,
    class token) at 0.5, the rest at 1.5 / fan-in variance."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            elif name.endswith(tables):
                p.copy_(0.5 * r)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(r * (1.5 / fan_in) ** 0.5)


def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    # (case, image, resolution): upscaled (INTER_CUBIC, 128 square) and downscaled (INTER_AREA,
    # 64x85 padded to 64x128)
    return [("astronaut", astro, 128), ("coffee", coffee, 64)]


def to_comfy(u8):
    return torch.from_numpy(u8.astype(np.float32) / 255.0)[None]


def to_u8(out):
    return np.round(out[0].numpy() * 255.0).astype(np.uint8)


def fixtures():
    model = tiny_model()
    detector = PackMidasDetector(model)
    os.makedirs(OUT, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(OUT, FILE))
    tensors, meta = {}, {"a": A, "bg_threshold": BG_TH, "cases": {}}
    for case, img, res in inputs():
        depth_map = to_u8(common_annotator_call(detector, to_comfy(img), res, a=A, bg_th=BG_TH))
        depth = detector.last_depth
        normal = lambda image, **kw: detector(image, **kw)[1]
        normal_map = to_u8(common_annotator_call(normal, to_comfy(img), res, a=A, bg_th=BG_TH,
                                                 depth_and_normal=True))
        zero = float((depth <= 0).mean())
        levels = len(np.unique(depth_map))
        print(f"{case}: input {img.shape}, depth {depth.shape} {depth.min():.4f}..{depth.max():.4f} "
              f"(zero {zero:.1%}), depth map {depth_map.shape} {levels} levels, normal map "
              f"{[len(np.unique(normal_map[..., c])) for c in range(3)]} levels per channel")
        assert depth.max() > depth.min() and levels > 100 and zero < 0.2, "degenerate map"
        assert len(np.unique(normal_map[..., 2])) > 20, "flat normals"
        tensors[f"{case}.input"] = img
        tensors[f"{case}.depth"] = depth.astype(np.float32)
        tensors[f"{case}.depth_map"] = depth_map
        tensors[f"{case}.normal_map"] = normal_map
        meta["cases"][case] = {"resolution": res, "input": list(img.shape),
                               "depth": list(depth.shape), "output": list(depth_map.shape)}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(OUT, "reference.safetensors"))
    cv2.imwrite(os.path.join(OUT, "astronaut.png"), cv2.cvtColor(tensors["astronaut.input"], cv2.COLOR_RGB2BGR))
    meta["versions"] = {"torch": torch.__version__, "timm": timm.__version__, "cv2": cv2.__version__,
                        "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


def bench():
    torch.set_num_threads(2)
    detector = PackMidasDetector(build())
    img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = to_comfy(img)
    timing = timed(lambda: common_annotator_call(detector, image, 512, a=A, bg_th=BG_TH))
    print(f"torch {torch.__version__}, 2 threads, cpu f32: MiDaS-DepthMapPreprocessor (DPT-Hybrid) "
          f"512x512 at resolution 512: {timing}")


def timed(call, runs=3):
    """`call()` after one warm-up, `runs` times, under inference mode: 'median X s (a, b, c)'."""
    with torch.inference_mode():
        call()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return f"median {statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})"


def aux_args():
    """The options every annotator reference takes: --pack-src, --full DIR, --bench."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack-src", default=os.environ.get("AUX_PACK_SRC", "/tmp/aux-pack/src"))
    ap.add_argument("--full", metavar="DIR")
    ap.add_argument("--bench", action="store_true")
    return ap.parse_args()


def main():
    args = aux_args()
    import_pack(args.pack_src)
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        path = os.path.join(args.full, FILE)
        torch.save(build().state_dict(), path)
        print(f"wrote {path}")
    if args.bench:
        bench()
    if not args.full and not args.bench:
        fixtures()


if __name__ == "__main__":
    main()
