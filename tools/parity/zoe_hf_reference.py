"""Reference fixtures for Weft's `Zoe-DepthMapPreprocessor` reading the Hugging Face
`Intel/zoedepth-nyu-kitti` folder, as today's comfyui_controlnet_aux runs it
(Fannovel16/comfyui_controlnet_aux e8b689a: `src/custom_controlnet_aux/zoe/transformers.py`,
`ZoeDetector` over transformers' `pipeline("depth-estimation")` with `ZoeDepthForDepthEstimation`
and `AutoImageProcessor`).

What: transformers' `ZoeDepthForDepthEstimation` with two bin configurations (`nyu`, `kitti`,
as the published ZoeD_NK): the BEiT backbone (relative position bias resized to the token grid),
the DPT neck and relative head, and `ZoeDepthMultipleMetricDepthEstimationHeads` (bottleneck
convolution; the patch transformer + MLP classifier that votes for a domain; per domain a seed
bin regressor, four unnormed attractor layers and a conditional log-binomial without the
relative-depth channel). The config is written out here by hand (nothing is fetched) and narrowed
for a small fixture, with the published key layout; weights seeded and scaled so the map has
contrast and the domain vote a clear winner (checked below). Saved with `save_pretrained`
(model.safetensors, config.json) plus the published `preprocessor_config.json`.

The pack's call is run as the pack runs it: its `zoe/transformers.py` (read from the pack's
source, `--pack-src`, or the mirror) is imported as is and `ZoeDetector(model_name=<folder>)`
is called inside the pack's `common_annotator_call`: `resize_image_with_pad` to the resolution,
the pipeline (the torchvision `ZoeDepthImageProcessor`: x * (1/255), reflect padding by
`int(sqrt(side / 2) * 3)`, bilinear align_corners resize to the 384x512 'keep aspect ratio'
multiple-of-32 size, (x - 0.5) / 0.5; the net; `post_process_depth_estimation`: bicubic to the
padded size, padding cropped; min-max to uint8 by truncation), the 2nd and 85th percentiles of
that uint8 depth to 0..1 inverted, * 255 truncated, `remove_pad(HWC3(...))`. No flip averaging.

Narrowed config (published: BEiT-L 1024 wide, 24 layers, 16 heads, image 384, out stages
6/12/18/24; neck 256/512/1024/1024, fusion and bottleneck 256, relative features 32, bin
embedding 128, 64 bins per domain, patch transformer 128 wide (the classifier's 128 is fixed),
MLP 1024, 4 heads, 4 layers): BEiT 32 wide, 4 layers, 2 heads, MLP 64, image 192 (a 12x12
window: 23x23+3 table rows), out stages 1..4; neck 8/16/32/32, fusion 16, relative features 16,
bin embedding 32, 64 bins, patch transformer MLP 32; the processor's size 192x256 instead of
384x512 (the same rule, smaller nets' inputs: 192x192 and 128x256 here).

Writes tests/fixtures/annotators/zoe_hf/:
  Intel/zoedepth-nyu-kitti/{model.safetensors, config.json, preprocessor_config.json}
  reference.safetensors  per case: `<case>.input` (uint8 HxWx3), `<case>.raw` (f32 hxw, the net's
                         predicted depth), `<case>.logits` (f32 2, domain logits),
                         `<case>.depth` (f32, post-processed depth at the padded image's size),
                         `<case>.depth_u8` (uint8, the pipeline's min-max depth image),
                         `<case>.depth_map` (uint8, the node's IMAGE * 255); `astronaut.raw_nyu`,
                         `astronaut.raw_kitti` (the net's depth with each domain forced)
  reference.json         cases, resolutions, chosen domains, versions
  astronaut.png          the first case's input, for the end-to-end test

Run: /tmp/peer-venv/bin/python tools/parity/zoe_hf_reference.py [--pack-src DIR]
  ... --full DIR   write a full-size random-weight Intel/zoedepth-nyu-kitti folder under DIR, and
                   DIR/reference_full.safetensors (the first case's raw depth, logits and map
                   through it, for the engine test's ignored full-size check)
  ... --bench      time the node's call at resolution 512 on a 512x512 image with the
                   full-size random net (one warm-up, median of 3, torch threads = 2)
Versions: see reference.json (transformers 5.25, torch 2.x, torchvision 0.29, opencv 4.x).
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import torch
import torchvision
import transformers
from safetensors.numpy import save_file
from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import midas_reference as M  # noqa: E402  (common_annotator_call, inputs, randomise)

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "zoe_hf")
FOLDER = os.path.join("Intel", "zoedepth-nyu-kitti")
MIRROR = "/work/.mirror/Fannovel16+comfyui_controlnet_aux/repo"
PACK_FILE = "src/custom_controlnet_aux/zoe/transformers.py"
# Intel/zoedepth-nyu-kitti's preprocessor_config.json
PREPROCESSOR = {
    "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
    "ensure_multiple_of": 32, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "ZoeDepthImageProcessor", "keep_aspect_ratio": True, "resample": 2,
    "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 512},
}
BINS = [
    {"name": "nyu", "n_bins": 64, "min_depth": 0.001, "max_depth": 10.0},
    {"name": "kitti", "n_bins": 64, "min_depth": 0.001, "max_depth": 80.0},
]


def import_pack(src):
    """The pack's zoe/transformers.py, from `src` or else from the mirror."""
    path = os.path.join(src, "custom_controlnet_aux", "zoe", "transformers.py")
    with tempfile.TemporaryDirectory() as tmp:
        if not os.path.exists(path):
            text = subprocess.check_output(
                ["git", f"--git-dir={MIRROR}", "show", f"HEAD:{PACK_FILE}"])
            path = os.path.join(tmp, "pack_zoe_transformers.py")
            with open(path, "wb") as f:
                f.write(text)
        spec = importlib.util.spec_from_file_location("pack_zoe_transformers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def config(full=True):
    """ZoeDepthConfig of Intel/zoedepth-nyu-kitti (full) or the narrowed fixture net."""
    if full:
        beit = dict(image_size=384, num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                    num_attention_heads=16, out_features=["stage6", "stage12", "stage18", "stage24"])
        zoe = dict(neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256,
                   bottleneck_features=256, num_relative_features=32, bin_embedding_dim=128,
                   patch_transformer_intermediate_size=1024)
    else:
        beit = dict(image_size=192, num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                    num_attention_heads=2, out_features=["stage1", "stage2", "stage3", "stage4"])
        zoe = dict(neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, bottleneck_features=16,
                   num_relative_features=16, bin_embedding_dim=32,
                   patch_transformer_intermediate_size=32)
    backbone = BeitConfig(use_relative_position_bias=True, reshape_hidden_states=False, **beit)
    return ZoeDepthConfig(
        backbone_config=backbone, bin_centers_type="softplus", bin_configurations=BINS,
        num_patch_transformer_layers=4, patch_transformer_hidden_size=128,
        patch_transformer_num_attention_heads=4, reassemble_factors=[4, 2, 1, 0.5],
        readout_type="project", num_attractors=[16, 8, 4, 1], attractor_alpha=1000,
        attractor_gamma=2, attractor_kind="mean", min_temp=0.0212, max_temp=50.0, **zoe)


def save(model, folder, full=True):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    # the fixture's processor targets half the published size (smaller fixtures; Weft reads it)
    pre = PREPROCESSOR if full else dict(PREPROCESSOR, size={"height": 192, "width": 256})
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)


def tiny_model():
    return contrasted(config(full=False))


def contrasted(cfg):
    """The net with seeded weights that give its map contrast and its vote a clear winner."""
    torch.manual_seed(0)
    model = ZoeDepthForDepthEstimation(cfg).eval()
    M.randomise(model, ("relative_position_bias_table", "cls_token"))
    with torch.no_grad():
        head = model.metric_head
        # a clear vote for kitti, the second domain (so the order of the names matters)
        head.mlp_classifier.linear2.bias.copy_(torch.tensor([-2.0, 2.0]))
        # a wider spread of probabilities over the bins, and seed centres spread over ~0..10
        for name in ("nyu", "kitti"):
            head.seed_bin_regressors[name].conv2.bias.copy_(torch.linspace(-2.0, 8.0, 64))
    return model


class Recorder:
    """Wraps the pack's pipeline: keeps the processor's output, the net's raw depth and logits and
    the pipeline's result."""

    def __init__(self, pipe):
        self.pipe, self.last = pipe, {}
        self.model = pipe.model
        pipe.model.register_forward_hook(self.hook)

    def hook(self, module, args, kwargs_or_out, out=None):
        out = kwargs_or_out if out is None else out
        self.last["raw"] = out.predicted_depth[0].detach().numpy().copy()
        self.last["logits"] = out.domain_logits[0].detach().numpy().copy()

    def __call__(self, image):
        self.last["pixel_values"] = self.pipe.image_processor(images=image, return_tensors="pt")[
            "pixel_values"].numpy().copy()
        result = self.pipe(image)
        self.last["depth"] = result["predicted_depth"].detach().numpy().copy()
        self.last["depth_u8"] = np.array(result["depth"]).copy()
        return result


def detector(pack, folder):
    d = pack.ZoeDetector(model_name=folder)
    proc = type(d.pipe.image_processor).__name__
    assert proc == "ZoeDepthImageProcessor", proc
    d.pipe = Recorder(d.pipe)
    return d


def forced(model, pixel_values, domain):
    """The net's depth with the classifier's vote forced to `domain`."""
    bias = model.metric_head.mlp_classifier.linear2.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.copy_(torch.tensor([100.0, -100.0] if domain == 0 else [-100.0, 100.0]))
        out = model(pixel_values=torch.from_numpy(pixel_values)).predicted_depth[0].numpy().copy()
        bias.copy_(saved)
    return out


def fixtures(pack):
    torch.set_num_threads(1)
    folder = os.path.join(OUT, FOLDER)
    save(tiny_model(), folder, full=False)
    det = detector(pack, folder)
    model = det.pipe.model
    tensors, meta = {}, {"cases": {}, "domains": [b["name"] for b in BINS]}
    for case, img, res in M.inputs():
        depth_map = M.to_u8(M.common_annotator_call(det, M.to_comfy(img), res))
        last = det.pipe.last
        raw, logits = last["raw"], last["logits"]
        levels = len(np.unique(depth_map))
        u8_levels = len(np.unique(last["depth_u8"]))
        margin = abs(float(logits[1] - logits[0]))
        print(f"{case}: input {img.shape}, pixel_values {last['pixel_values'].shape}, raw {raw.shape} "
              f"{raw.min():.4f}..{raw.max():.4f}, logits {logits}, depth u8 {u8_levels} levels, "
              f"map {depth_map.shape} {levels} levels")
        assert raw.max() > 1.5 * raw.min() and levels > 100 and u8_levels > 100, "degenerate map"
        assert margin > 1.0, "the domain vote is close to a tie"
        for key in ("raw", "logits", "depth", "depth_u8"):
            tensors[f"{case}.{key}"] = last[key]
        tensors[f"{case}.input"] = img
        tensors[f"{case}.depth_map"] = depth_map
        meta["cases"][case] = {"resolution": res, "input": list(img.shape),
                               "net": list(raw.shape), "output": list(depth_map.shape),
                               "domain": BINS[int(np.argmax(logits))]["name"]}
        if case == "astronaut":
            for d, b in enumerate(BINS):
                tensors[f"{case}.raw_{b['name']}"] = forced(model, last["pixel_values"], d)
            diff = np.abs(tensors["astronaut.raw_nyu"] - tensors["astronaut.raw_kitti"]).max()
            assert diff > 0.1, "the two domains give the same depth"
            assert np.allclose(tensors["astronaut.raw_kitti"], raw, rtol=1e-5, atol=1e-6)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(OUT, "reference.safetensors"))
    cv2.imwrite(os.path.join(OUT, "astronaut.png"),
                cv2.cvtColor(tensors["astronaut.input"], cv2.COLOR_RGB2BGR))
    meta["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                        "transformers": transformers.__version__, "cv2": cv2.__version__,
                        "numpy": np.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    keys = sorted(__import__("safetensors").safe_open(os.path.join(folder, "model.safetensors"),
                                                      "np").keys())
    print(f"{len(keys)} tensors, e.g. {[k for k in keys if 'layer.0.' in k][:12]}")


def full_model():
    return contrasted(config(full=True))


def full_reference(pack, folder, out):
    """The full-size net's raw depth, logits and map for the first case (astronaut 64x64 at
    resolution 128: a 384x384 net input, a 24x24 token grid)."""
    torch.set_num_threads(2)
    det = detector(pack, folder)
    case, img, res = M.inputs()[0]
    depth_map = M.to_u8(M.common_annotator_call(det, M.to_comfy(img), res))
    last = det.pipe.last
    print(f"full {case}: raw {last['raw'].shape} {last['raw'].min():.4f}..{last['raw'].max():.4f}, "
          f"logits {last['logits']}, map {len(np.unique(depth_map))} levels")
    save_file({f"{case}.input": img, f"{case}.raw": last["raw"], f"{case}.logits": last["logits"],
               f"{case}.depth_map": depth_map}, out)
    print(f"wrote {out}")


def bench(pack, folder):
    torch.set_num_threads(2)
    det = pack.ZoeDetector(model_name=folder)
    img = cv2.resize(M.skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = M.to_comfy(img)
    timing = M.timed(lambda: M.common_annotator_call(det, image, 512))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, 2 threads, cpu f32: "
          f"Zoe-DepthMapPreprocessor (Intel/zoedepth-nyu-kitti layout) 512x512 at resolution 512: "
          f"{timing}")


def main():
    args = M.aux_args()
    pack = import_pack(args.pack_src)
    if args.full or args.bench:
        root = args.full or tempfile.mkdtemp()
        folder = os.path.join(root, FOLDER)
        save(full_model(), folder)
        print(f"wrote {folder}")
        if args.full:
            full_reference(pack, folder, os.path.join(root, "reference_full.safetensors"))
        if args.bench:
            bench(pack, folder)
        if not args.full:
            shutil.rmtree(root)
    else:
        fixtures(pack)


if __name__ == "__main__":
    main()
