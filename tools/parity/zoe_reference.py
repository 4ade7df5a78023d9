"""Reference fixtures for Weft's Zoe depth annotator (comfyui_controlnet_aux's
`Zoe-DepthMapPreprocessor`).

What: ZoeDepth "N" of PyPI controlnet_aux 0.0.10's vendored zoedepth code
(`controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1.ZoeDepth`, built from
`get_config("zoedepth", "infer")` as the pack builds it: MiDaS DPT_BEiT_L_384 core (timm BEiT with
relative position bias resized to the token grid, `project` readouts on four blocks, the DPT
scratch and head), the metric-bins head (SeedBinRegressorUnnormed, Projectors,
AttractorLayerUnnormed 'inv'/'mean', ConditionalLogBinomial)) with deterministic random weights,
run by a re-statement of the pack's `ZoeDetector.__call__` as it was while the pack read
`ZoeD_M12_N.pt` (Fannovel16/comfyui_controlnet_aux up to 2e4e7f6, June 2025; c47ccab's
custom_controlnet_aux/zoe/__init__.py: `resize_image_with_pad` to the resolution, `/ 255`,
`model.infer` (reflect padding by `int(sqrt(side / 2) * 3)`, the core's resize to the 384x512
'minimal' multiple-of-32 size and (x - 0.5) / 0.5, bicubic back, the crop, averaged with the
horizontally flipped run), the 2nd and 85th percentiles to 0..1 inverted, * 255 truncated,
`remove_pad(HWC3(...))`) inside the pack's `common_annotator_call`, as node_wrappers/zoe.py calls it.

The network is narrowed with the published key names: a BEiT 32 wide with 2 heads, 4 blocks
(hooked at blocks 0..3 instead of 5/11/17/23: `_make_pretrained_beitl16_384` is monkeypatched),
MLP ratio 2, the 24x24 window of 384 (its 47x47+3 bias table), readout widths 8/16/32/32, DPT
features 16, 32 bins with 32-wide bin embeddings. Saved as the published file is:
`torch.save({'model': state_dict})` (the full-size file also gets an old timm's persistent
`relative_position_index` buffers, which Weft ignores; the tiny one leaves them out: 2.6 MB each). Writes tests/fixtures/annotators/zoe/:
  ZoeD_M12_N.pt               the tiny network
  reference.safetensors       per case: `<case>.input` (uint8 HxWx3), `<case>.metric` (f32, the
                              metric depth of the unflipped run at the core's input size), `<case>.depth` (f32, `model.infer` on the
                              padded image), `<case>.depth_map` (uint8, the node's IMAGE * 255)
  reference.json              cases, resolutions, sizes, versions
  astronaut.png               the first case's input, for the end-to-end test

Run (the pack's util.py must be importable; the script looks in --pack-src):
  git --git-dir=<mirror of Fannovel16/comfyui_controlnet_aux> archive HEAD src/custom_controlnet_aux \
      | tar -x -C /tmp/aux-pack
  /tmp/peer-venv/bin/python tools/parity/zoe_reference.py --pack-src /tmp/aux-pack/src
  ... --full DIR   write a full-size random-weight ZoeD_M12_N.pt in DIR
  ... --bench      time the node's call at resolution 512 on a 512x512 image
                   (one warm-up, median of 3, torch threads = 2)
Nothing is downloaded: the core is built with `use_pretrained_midas=False`.
Versions used: torch 2.x (see reference.json), timm 1.0.31, controlnet_aux 0.0.10, opencv-python 4.x.
"""
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np
import skimage.data
import timm
import torch
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# the pack's `common_annotator_call` and the MiDaS fixtures' cases (astronaut 64x64 at resolution
# 128: reflect pad 24, net 384x384; coffee 96x128 at 64, padded to 64x128: net 288x512, an 18x32
# token grid)
from midas_reference import aux_args, common_annotator_call, inputs, to_comfy, to_u8  # noqa: E402
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "zoe")
FILE = "ZoeD_M12_N.pt"


def import_pack(src):
    sys.path.insert(0, src)
    global HWC3, resize_image_with_pad
    from custom_controlnet_aux.util import HWC3, resize_image_with_pad


class PackZoeDetector:
    """The pack's `ZoeDetector.__call__` at c47ccab (custom_controlnet_aux/zoe/__init__.py),
    restated around a ZoeDepth; `last` keeps the intermediates of the last call for the fixture."""

    def __init__(self, model):
        self.model = model
        self.last = {}
        infer = model._infer

        def recording(x):
            out = infer(x)
            if "metric" not in self.last:  # the unflipped run comes first
                self.last["net_input"] = model.core.prep(x)[0].numpy().copy()
                self.last["metric"] = out[0, 0].numpy().copy()
            return out

        model._infer = recording

    def __call__(self, input_image, detect_resolution=512, output_type=None,
                 upscale_method="INTER_CUBIC"):
        self.last = {}
        input_image = HWC3(input_image)
        input_image, remove_pad = resize_image_with_pad(input_image, detect_resolution, upscale_method)
        with torch.no_grad():
            image_depth = torch.from_numpy(input_image).float()
            image_depth = image_depth / 255.0
            image_depth = image_depth.permute(2, 0, 1)[None]
            depth = self.model.infer(image_depth)
            depth = depth[0, 0].cpu().numpy()
            self.last["depth"] = depth.copy()
            vmin = np.percentile(depth, 2)
            vmax = np.percentile(depth, 85)
            depth -= vmin
            depth /= vmax - vmin
            depth = 1.0 - depth
            depth_image = (depth * 255.0).clip(0, 255).astype(np.uint8)
        return remove_pad(HWC3(depth_image))


def build(tiny=False):
    """ZoeDepth as the pack builds it (`get_config("zoedepth", "infer")`, no download); `tiny`
    narrows the BEiT, the DPT and the bins head (names unchanged)."""
    from controlnet_aux.zoe.zoedepth.models.base_models import midas as zmidas
    from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas import blocks, dpt_depth
    from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas.backbones import beit
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    conf = get_config("zoedepth", "infer")
    assert not conf["use_pretrained_midas"] and conf["pretrained_resource"] is None
    if not tiny:
        torch.manual_seed(0)
        return ZoeDepth.build_from_config(conf).eval()

    def tiny_beit(pretrained, use_readout="ignore", hooks=None):
        model = timm.models.beit.Beit(
            img_size=384, patch_size=16, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0,
            use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-5, num_classes=0)
        return beit._make_beit_backbone(model, features=[8, 16, 32, 32], hooks=[0, 1, 2, 3],
                                        vit_features=32, use_readout=use_readout)

    hub_load = torch.hub.load
    saved = (blocks._make_pretrained_beitl16_384, blocks._make_scratch,
             zmidas.MIDAS_SETTINGS["DPT_BEiT_L_384"])
    blocks._make_pretrained_beitl16_384 = tiny_beit
    make_scratch = blocks._make_scratch
    blocks._make_scratch = lambda in_shape, out_shape, **kw: make_scratch([8, 16, 32, 32], out_shape, **kw)
    zmidas.MIDAS_SETTINGS["DPT_BEiT_L_384"] = (16,) * 5
    torch.hub.load = lambda *a, **k: dpt_depth.DPTDepthModel(
        path=None, backbone="beitl16_384", non_negative=True, features=16)
    try:
        torch.manual_seed(0)
        model = ZoeDepth.build_from_config(dict(conf, n_bins=32, bin_embedding_dim=32)).eval()
    finally:
        torch.hub.load = hub_load
        (blocks._make_pretrained_beitl16_384, blocks._make_scratch,
         zmidas.MIDAS_SETTINGS["DPT_BEiT_L_384"]) = saved
    return model


def tiny_model():
    model = build(tiny=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith(("gamma_1", "gamma_2")):
                p.copy_(0.5 + 0.1 * r)
            elif name.endswith(("bias", "q_bias", "v_bias")):
                p.copy_(0.05 * r)
            elif name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * r)
            elif name.endswith("cls_token"):
                p.copy_(0.5 * r)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(r * (1.5 / fan_in) ** 0.5)
        # keep the relative depth's last ReLU mostly open
        model.core.core.scratch.output_conv[4].bias.fill_(1.0)
    return model


def published_state_dict(model, indices=True):
    """The state dict as the published file holds it: with an old timm's persistent
    `relative_position_index` buffers where `indices`."""
    from timm.models.beit import gen_relative_position_index
    sd = dict(model.state_dict())
    for i, blk in enumerate(model.core.core.pretrained.model.blocks if indices else []):
        sd[f"core.core.pretrained.model.blocks.{i}.attn.relative_position_index"] = \
            gen_relative_position_index(blk.attn.window_size)
    return {"model": sd}


def fixtures():
    model = tiny_model()
    detector = PackZoeDetector(model)
    os.makedirs(OUT, exist_ok=True)
    torch.save(published_state_dict(model, indices=False), os.path.join(OUT, FILE))
    tensors, meta = {}, {"cases": {}}
    for case, img, res in inputs():
        depth_map = to_u8(common_annotator_call(detector, to_comfy(img), res))
        last = detector.last
        levels = len(np.unique(depth_map))
        print(f"{case}: input {img.shape}, net input {last['net_input'].shape}, metric "
              f"{last['metric'].min():.4f}..{last['metric'].max():.4f}, depth {last['depth'].shape} "
              f"{last['depth'].min():.4f}..{last['depth'].max():.4f}, map {depth_map.shape} {levels} levels")
        assert levels > 100, "degenerate map"
        tensors[f"{case}.input"] = img
        for k in ("metric", "depth"):
            tensors[f"{case}.{k}"] = last[k].astype(np.float32)
        tensors[f"{case}.depth_map"] = depth_map
        meta["cases"][case] = {"resolution": res, "input": list(img.shape),
                               "net_input": list(last["net_input"].shape),
                               "depth": list(last["depth"].shape), "output": list(depth_map.shape)}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(OUT, "reference.safetensors"))
    cv2.imwrite(os.path.join(OUT, "astronaut.png"),
                cv2.cvtColor(tensors["astronaut.input"], cv2.COLOR_RGB2BGR))
    meta["versions"] = {"torch": torch.__version__, "timm": timm.__version__, "cv2": cv2.__version__,
                        "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


def bench():
    torch.set_num_threads(2)
    detector = PackZoeDetector(build())
    img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = to_comfy(img)
    with torch.inference_mode():
        common_annotator_call(detector, image, 512)  # warm-up
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            common_annotator_call(detector, image, 512)
            times.append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, 2 threads, cpu f32: Zoe-DepthMapPreprocessor (ZoeD_M12_N, "
          f"BEiT-L/16-384) 512x512 at resolution 512: median {statistics.median(times):.2f} s "
          f"({', '.join(f'{t:.2f}' for t in times)})")


def main():
    args = aux_args()
    import_pack(args.pack_src)
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        path = os.path.join(args.full, FILE)
        torch.save(published_state_dict(build()), path)
        print(f"wrote {path}")
    if args.bench:
        bench()
    if not args.full and not args.bench:
        fixtures()


if __name__ == "__main__":
    main()
