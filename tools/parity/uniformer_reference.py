"""Reference fixtures for Weft's UniFormer segmentation annotator
(crates/weft-engine/src/annotators/uniformer.rs, crates/weft-engine/tests/annotators_uniformer.rs,
tests/annotators_uniformer.rs).

Source: the PyPI controlnet-aux 0.0.10 has no uniformer, so the network and the detector come from
the ComfyUI pack itself, Fannovel16/comfyui_controlnet_aux at commit
e8b689a513c3e6b63edc44066560ca5919c0576e: src/custom_controlnet_aux/uniformer/ (UniFormer backbone,
config upernet_global_small.py, UniformerSegmentor) and the mmseg/mmcv copy it vendors,
src/custom_mmpkg/ (EncoderDecoder, UPerHead, PPM, the test pipeline, show_result). Unpack them with
    git --git-dir=<mirror> archive e8b689a5 src/custom_controlnet_aux src/custom_mmpkg | tar -x -C /tmp/seg-pack
(or `git show` each file) and pass --pack /tmp/seg-pack/src (the default). The vendored mmcv
imports `addict` and `yapf`, which are not installed: `install_shims` stands in for both (a
dict with attribute access; yapf only pretty-prints configs). mmcv itself is not installed.

Run: /tmp/peer-venv/bin/python tools/parity/uniformer_reference.py [--pack DIR] [--full DIR] [--bench]
Versions used: torch 2.x (CPU), timm 1.0.31 (DropPath only), opencv-python, scikit-image, safetensors.

The file is upernet_global_small.pth as published: torch.save({"meta": {..., "CLASSES", "PALETTE"},
"state_dict": ...}) with keys backbone.*, decode_head.*, auxiliary_head.* (init_segmentor reads
meta CLASSES/PALETTE; UniformerSegmentor then loads state_dict with any "module." removed).
The fixture net is the pack's config narrowed (embed_dim [16, 32, 64, 128], layers [1, 1, 2, 1],
UPerHead channels 32, FCN aux head channels 16; head_dim 64 as published, so stages 3/4 have 1 and
2 heads) with the same key names; Weft reads every width and depth from the shapes. 150 classes.
Weights are random (seeded), BN statistics and LayerNorm affines too, and scaled so that the class
map has many classes (checked).

The node (UniFormer-SemSegPreprocessor) is run as the pack runs it: common_annotator_call (uint8
by truncation), UniformerSegmentor.__call__ (resize_image_with_pad INTER_CUBIC, then
inference_segmentor: the ndarray taken as BGR, mmseg Resize keep_ratio to fit (2048, 512) with
cv2 INTER_LINEAR, Normalize to_rgb (so the RGB image reaches the net channel-swapped), whole
inference, logits resized bilinear to the net input then to the padded image, softmax, argmax),
show_result_pyplot with the ADE palette at opacity 1 (pure palette colours), HWC3, remove_pad.

Fixture (tests/fixtures/annotators/uniformer/): upernet_global_small.pth, reference.safetensors
with the ADE palette, one direct forward (a random normalised 64x96 input, the 4 backbone
features and the decode head's 1/4 logits) and two node cases (input, output map, the class map
at the padded size and its top-1 minus top-2 logit margin), e2e_input.png.

--full DIR writes a full-size random upernet_global_small.pth (published config and layout) to DIR,
and uniformer_full_reference.safetensors (a random 64x96 input and the full net's head logits) for
the engine test's ignored full-size check (WEFT_UNIFORMER_FULL=DIR cargo test -p weft-engine
--test annotators_uniformer -- --ignored).
--bench prints the PyTorch time of the node's call at 512x512 on a 512x512 image (full-size net,
2 threads, median of 3 after a warm-up).
"""
import argparse
import os
import sys
import tempfile
import time
import types

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn as nn
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "uniformer")
FILE = "upernet_global_small.pth"

# the fixture's narrowing of configs/_base_/models/upernet_uniformer.py + upernet_global_small.py
TINY_CONFIG = """
_base_ = [{base!r}]
model = dict(
    backbone=dict(embed_dim=[16, 32, 64, 128], layers=[1, 1, 2, 1], head_dim=64),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, num_classes=150),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=150))
"""


def install_shims():
    """addict and yapf are the vendored mmcv's only missing imports; minimal stand-ins."""
    import copy

    addict = types.ModuleType("addict")

    class Dict(dict):
        def __init__(self, *args, **kwargs):
            super().__init__()
            for arg in args:
                for k, v in (arg.items() if isinstance(arg, dict) else arg):
                    self[k] = self._hook(v)
            for k, v in kwargs.items():
                self[k] = self._hook(v)

        @classmethod
        def _hook(cls, item):
            if isinstance(item, dict) and not isinstance(item, Dict):
                return cls(item)
            if isinstance(item, (list, tuple)):
                return type(item)(cls._hook(e) for e in item)
            return item

        def __setattr__(self, name, value):
            self[name] = value

        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name)

        def __delattr__(self, name):
            del self[name]

        def __missing__(self, name):
            raise KeyError(name)

        def to_dict(self):
            out = {}
            for k, v in self.items():
                if isinstance(v, Dict):
                    v = v.to_dict()
                elif isinstance(v, (list, tuple)):
                    v = type(v)(e.to_dict() if isinstance(e, Dict) else e for e in v)
                out[k] = v
            return out

        def copy(self):
            return copy.copy(self)

        def __deepcopy__(self, memo):
            out = self.__class__()
            memo[id(self)] = out
            for k, v in self.items():
                out[copy.deepcopy(k, memo)] = copy.deepcopy(v, memo)
            return out

    addict.Dict = Dict
    sys.modules["addict"] = addict
    for name in ["yapf", "yapf.yapflib", "yapf.yapflib.yapf_api"]:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["yapf.yapflib.yapf_api"].FormatCode = lambda text, **_: (text, None)


def pack_modules(pack):
    sys.path.insert(0, pack)
    install_shims()
    import custom_controlnet_aux.uniformer as uni
    from custom_controlnet_aux.uniformer.inference import init_segmentor
    from custom_mmpkg.custom_mmseg.core.evaluation import get_palette
    from custom_mmpkg.custom_mmseg.datasets import ADE20KDataset

    return uni, init_segmentor, get_palette, ADE20KDataset


def randomise(model, seed, head_scale):
    """Random weights, BN statistics and norm affines; conv_seg scaled so that the argmax varies."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                scale = head_scale if name.endswith("conv_seg") else 1.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * scale / np.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model.eval()


def build(pack_mods, config_file, seed, head_scale):
    uni, init_segmentor, _, _ = pack_mods
    torch.manual_seed(seed)
    model = randomise(init_segmentor(config_file, None, device="cpu"), seed, head_scale)
    centre_classes(model)
    return model


def centre_classes(model):
    """A random head gives each class a large image-wide offset (the mean of the ReLU features it
    reads), so one class wins everywhere. conv_seg's bias cancels those offsets, measured on a
    calibration image at the net's usual 512x512, and the argmax follows the image."""
    img = cv2.resize(skimage.data.chelsea(), (512, 512), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img[..., ::-1].astype(np.float32).copy()).permute(2, 0, 1)[None]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    seen = {}
    conv_seg = model.decode_head.conv_seg
    hook = conv_seg.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    with torch.no_grad():
        model.decode_head(model.backbone((x - mean) / std))
        hook.remove()
        m = seen["in"].mean(dim=(0, 2, 3))
        conv_seg.bias.copy_(-(conv_seg.weight[:, :, 0, 0] @ m))


def save(pack_mods, model, path):
    _, _, get_palette, ade = pack_mods
    meta = {"CLASSES": tuple(ade.CLASSES), "PALETTE": [list(p) for p in ade.PALETTE]}
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"meta": meta, "state_dict": sd}, path)


def segmentor(pack_mods, config_file, path, trace=None):
    """The pack's UniformerSegmentor.from_pretrained on the local file, with its config swapped for
    `config_file`; `trace` collects each call's class map and logit margin at the padded size."""
    uni = pack_mods[0]
    uni.config_file = config_file
    uni.custom_hf_download = lambda repo, filename: path
    det = uni.UniformerSegmentor.from_pretrained(os.path.dirname(path), os.path.basename(path))
    if trace is not None:
        enc = det.model
        whole = enc.whole_inference

        def traced(img, img_meta, rescale):
            logits = whole(img, img_meta, rescale)
            top = logits[0].topk(2, dim=0).values
            trace.append({"net_input": tuple(img.shape[2:]),
                          "classes": logits[0].argmax(0).numpy().astype(np.uint8),
                          "margin": (top[0] - top[1]).numpy().astype(np.float32)})
            return logits

        enc.whole_inference = traced
    return det


def common_annotator_call(det, image_u8, resolution):
    """utils.py common_annotator_call for one image: uint8 by truncation, model(..., "np")."""
    comfy = torch.from_numpy(image_u8.astype(np.float32) / 255.0)
    np_image = np.asarray(comfy * 255.0, dtype=np.uint8)
    detect_resolution = resolution if resolution >= 64 else 512
    return det(np_image, output_type="np", detect_resolution=detect_resolution)


def tiny_config(pack, tmp):
    base = os.path.join(pack, "custom_controlnet_aux", "uniformer", "upernet_global_small.py")
    path = os.path.join(tmp, "upernet_tiny.py")
    with open(path, "w") as f:
        f.write(TINY_CONFIG.format(base=base))
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", default="/tmp/seg-pack/src")
    ap.add_argument("--full", metavar="DIR")
    ap.add_argument("--bench", action="store_true")
    opt = ap.parse_args()
    mods = pack_modules(opt.pack)
    full_config = mods[0].config_file
    tmp = tempfile.mkdtemp()

    if opt.full or opt.bench:
        full = build(mods, full_config, 1, 4.0)
        path = os.path.join(opt.full or tmp, FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save(mods, full, path)
        if opt.full:
            # a check of the full-size structure: the head's logits for one random 64x96 input,
            # for crates/weft-engine/tests/annotators_uniformer.rs's ignored test
            x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
            with torch.no_grad():
                logits = full.decode_head(full.backbone(x))
            save_file({"input": x.numpy(), "logits": logits.numpy()},
                      os.path.join(opt.full, "uniformer_full_reference.safetensors"))
        if opt.bench:
            torch.set_num_threads(2)
            det = segmentor(mods, full_config, path)
            img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
            common_annotator_call(det, img, 512)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                common_annotator_call(det, img, 512)
                times.append(time.perf_counter() - t)
            print(f"uniformer 512x512: {np.median(times) * 1000:.0f} ms (median of 3, 2 threads)")
        return

    os.makedirs(OUT, exist_ok=True)
    config = tiny_config(opt.pack, tmp)
    model = build(mods, config, 2, 4.0)
    path = os.path.join(OUT, FILE)
    save(mods, model, path)

    t = {"palette": np.array(mods[2]("ade"), dtype=np.uint8)}
    # one direct forward: the backbone's four features and the decode head's 1/4-size logits
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.decode_head(feats)
    t["forward.input"] = x.numpy()
    for i, f in enumerate(feats):
        t[f"forward.feature{i}"] = f.numpy()
    t["forward.logits"] = logits.numpy()

    trace = []
    det = segmentor(mods, config, path, trace)
    astro = cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (96, 64), interpolation=cv2.INTER_AREA)  # H=64, W=96
    cases = [("astronaut_r64", astro, 64), ("coffee_r64", coffee, 64)]
    for name, img, res in cases:
        trace.clear()
        out = common_annotator_call(det, img, res)
        (tr,) = trace
        t[f"{name}.input"] = img
        t[f"{name}.out"] = np.ascontiguousarray(out)
        t[f"{name}.classes"] = tr["classes"]
        t[f"{name}.margin"] = tr["margin"]
        counts = np.bincount(tr["classes"].ravel(), minlength=150)
        print(name, img.shape, "->", out.shape, "net input", tr["net_input"], "classes used",
              int((counts > 0).sum()), "largest share", float(counts.max() / counts.sum()),
              "min margin", float(tr["margin"].min()))
        assert (counts > 0).sum() >= 6 and counts.max() / counts.sum() < 0.6, "degenerate class map"
    cv2.imwrite(os.path.join(OUT, "e2e_input.png"), cv2.cvtColor(astro, cv2.COLOR_RGB2BGR))
    save_file(t, os.path.join(OUT, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("params", sum(p.numel() for p in model.parameters()), "fixture bytes", size)


if __name__ == "__main__":
    main()
