"""Reference fixtures for Weft's Depth Anything V2 annotator (comfyui_controlnet_aux's
`DepthAnythingV2Preprocessor`).

What: the pack's own network and detector code (Fannovel16/comfyui_controlnet_aux,
src/custom_controlnet_aux/depth_anything_v2: DINOv2 ViT + DPT head, `infer_image`'s 518 lower-bound
resize to multiples of 14 with cv2 INTER_CUBIC and ImageNet normalisation, min-max to uint8,
`resize_image_with_pad` to the resolution) run through a re-statement of the pack's
`common_annotator_call` (utils.py) with `max_depth=1`, as node_wrappers/depth_anything_v2.py calls it.
PyPI controlnet_aux 0.0.10 has no Depth Anything V2, hence the pack's source.

The network is narrowed (ViT width 128, 2 heads of 64, 4 blocks, all taken, MLP width 128, a 9x9
position table; DPT features 16, out_channels [8, 16, 24, 32]) with deterministic random weights
(seed 0, scaled so the map has contrast: checked below), saved with torch.save as the published
`depth_anything_v2_vits.pth` is: a plain state dict with the official `pretrained.*` /
`depth_head.*` keys. Writes tests/fixtures/annotators/depth/:
  depth_anything_v2_vits.pth   the tiny network
  depth_anything_v2_vitg.pth   ViT-g's SwiGLU blocks, narrower (width 64, one head), first case only
  reference.safetensors        per case: `<case>.input` (uint8 HxWx3), `<case>.depth` (f32 HxW,
                               `infer_image`'s result), `<case>.output` (uint8 map, the node's
                               IMAGE * 255); `vitg.<case>.*` for the second net
  reference.json               cases, resolutions, sizes, versions
  astronaut.png                the first case's input, for the end-to-end test

Run (the pack's source must be importable; the script looks in --pack-src):
  git --git-dir=<mirror of Fannovel16/comfyui_controlnet_aux> archive HEAD src/custom_controlnet_aux \
      | tar -x -C /tmp/aux-pack
  /tmp/peer-venv/bin/python tools/parity/depth_anything_v2_reference.py --pack-src /tmp/aux-pack/src
  ... --full DIR [--encoder vitl]   write a full-size random-weight depth_anything_v2_<enc>.pth in DIR
  ... --bench [--encoder vitl]      time the node's call at resolution 512 on a 512x512 image
                                    (one warm-up, median of 3, torch threads = 2)
Versions used: torch 2.15.0, opencv-python 4.x, numpy, scikit-image; pack commit e8b689a5.
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
import torch
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "depth")

ENCODERS = {
    # published file: (encoder, features, out_channels), as the pack's model_configs
    "vits": (64, [48, 96, 192, 384]),
    "vitb": (128, [96, 192, 384, 768]),
    "vitl": (256, [256, 512, 1024, 1024]),
}


def import_pack(src):
    sys.path.insert(0, src)
    global DepthAnythingV2Detector, DepthAnythingV2, DPTHead, DinoVisionTransformer, Block, MemEffAttention
    from custom_controlnet_aux.depth_anything_v2 import DepthAnythingV2Detector
    from custom_controlnet_aux.depth_anything_v2.dpt import DepthAnythingV2, DPTHead
    from custom_controlnet_aux.depth_anything_v2.dinov2 import DinoVisionTransformer
    from custom_controlnet_aux.depth_anything_v2.dinov2_layers import MemEffAttention, NestedTensorBlock as Block


def common_annotator_call(model, tensor_image, resolution, **kwargs):
    """utils.py `common_annotator_call` (no pbar): per image, uint8 by truncation, result / 255."""
    detect_resolution = resolution if isinstance(resolution, int) and resolution >= 64 else 512
    outs = []
    for image in tensor_image:
        np_image = np.asarray(image.cpu() * 255.0, dtype=np.uint8)
        np_result = model(np_image, output_type="np", detect_resolution=detect_resolution, **kwargs)
        outs.append(torch.from_numpy(np_result.astype(np.float32) / 255.0))
    return torch.stack(outs)


def tiny_model(width=128, heads=2, ffn="mlp"):
    torch.manual_seed(0)
    model = DepthAnythingV2(encoder="vits", features=16, out_channels=[8, 16, 24, 32])
    # head width 64 as in every published size (Weft reads heads = width / 64); a 9x9 position
    # table (img_size 126) keeps the file small and is interpolated to the 37x37 grid as usual
    model.pretrained = DinoVisionTransformer(
        img_size=126, patch_size=14, embed_dim=width, depth=4, num_heads=heads, mlp_ratio=1,
        block_fn=partial(Block, attn_class=MemEffAttention), init_values=1.0, ffn_layer=ffn,
        block_chunks=0, num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1)
    model.intermediate_layer_idx = {"vits": [0, 1, 2, 3]}
    model.depth_head = DPTHead(width, 16, False, out_channels=[8, 16, 24, 32], use_clstoken=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):  # layer scale
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith("bias"):
                p.copy_(0.05 * r)
            elif name.endswith(("pos_embed", "cls_token", "mask_token")):
                p.copy_(0.5 * r)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                if "resize_layers.0" in name or "resize_layers.1" in name:  # ConvTranspose: [in, out, k, k]
                    fan_in = p.shape[0]
                p.copy_(r * (1.5 / fan_in) ** 0.5)
        # keep the final ReLU mostly open so the map is not flat
        model.depth_head.scratch.output_conv2[2].bias.fill_(0.3)
    return model.eval()


def full_model(encoder):
    features, out_channels = ENCODERS[encoder]
    torch.manual_seed(0)
    return DepthAnythingV2(encoder=encoder, features=features, out_channels=out_channels).eval()


def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    # (case, image, resolution): the map upscaled (INTER_CUBIC) and downscaled (INTER_AREA)
    return [("astronaut", astro, 128), ("coffee", coffee, 64)]


def to_comfy(u8):
    return torch.from_numpy(u8.astype(np.float32) / 255.0)[None]


def fixtures():
    model = tiny_model()
    detector = DepthAnythingV2Detector(model, "depth_anything_v2_vits.pth")
    os.makedirs(OUT, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(OUT, "depth_anything_v2_vits.pth"))
    tensors, meta = {}, {"cases": {}}
    for case, img, res in inputs():
        depth = model.infer_image(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), input_size=518, max_depth=1)
        out = common_annotator_call(detector, to_comfy(img), res, max_depth=1)
        out_u8 = np.round(out[0].numpy() * 255.0).astype(np.uint8)
        levels = len(np.unique(out_u8))
        zero = float((depth <= 0).mean())
        print(f"{case}: input {img.shape}, depth {depth.min():.4f}..{depth.max():.4f} "
              f"(zero {zero:.1%}), map {out_u8.shape} {levels} levels")
        assert depth.max() > depth.min() and levels > 100 and zero < 0.2, "degenerate map"
        tensors[f"{case}.input"] = img
        tensors[f"{case}.depth"] = depth.astype(np.float32)
        tensors[f"{case}.output"] = out_u8
        meta["cases"][case] = {"resolution": res, "input": list(img.shape), "output": list(out_u8.shape)}
    # ViT-g's blocks (SwiGLU feed-forward, `mlp.w12`/`mlp.w3`) on a narrower net, first case only
    giant = tiny_model(width=64, heads=1, ffn="swiglufused")
    torch.save(giant.state_dict(), os.path.join(OUT, "depth_anything_v2_vitg.pth"))
    case, img, res = inputs()[0]
    depth = giant.infer_image(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), input_size=518, max_depth=1)
    out = common_annotator_call(DepthAnythingV2Detector(giant, "depth_anything_v2_vitg.pth"), to_comfy(img), res, max_depth=1)
    out_u8 = np.round(out[0].numpy() * 255.0).astype(np.uint8)
    print(f"vitg {case}: depth {depth.min():.4f}..{depth.max():.4f}, map {len(np.unique(out_u8))} levels")
    assert len(np.unique(out_u8)) > 100, "degenerate map"
    tensors[f"vitg.{case}.depth"] = depth.astype(np.float32)
    tensors[f"vitg.{case}.output"] = out_u8
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(OUT, "reference.safetensors"))
    # the end-to-end test's LoadImage input
    cv2.imwrite(os.path.join(OUT, "astronaut.png"), cv2.cvtColor(tensors["astronaut.input"], cv2.COLOR_RGB2BGR))
    meta["versions"] = {"torch": torch.__version__, "cv2": cv2.__version__, "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


def bench(encoder):
    torch.set_num_threads(2)
    model = full_model(encoder)
    detector = DepthAnythingV2Detector(model, f"depth_anything_v2_{encoder}.pth")
    img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = to_comfy(img)
    with torch.inference_mode():
        common_annotator_call(detector, image, 512, max_depth=1)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            common_annotator_call(detector, image, 512, max_depth=1)
            times.append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, 2 threads, cpu f32: DepthAnythingV2Preprocessor {encoder} "
          f"512x512 at resolution 512: median {statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack-src", default=os.environ.get("AUX_PACK_SRC", "/tmp/aux-pack/src"))
    ap.add_argument("--full", metavar="DIR")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--encoder", default="vitl", choices=sorted(ENCODERS))
    args = ap.parse_args()
    import_pack(args.pack_src)
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        path = os.path.join(args.full, f"depth_anything_v2_{args.encoder}.pth")
        torch.save(full_model(args.encoder).state_dict(), path)
        print(f"wrote {path}")
    if args.bench:
        bench(args.encoder)
    if not args.full and not args.bench:
        fixtures()


if __name__ == "__main__":
    main()
