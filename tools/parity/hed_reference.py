"""Reference fixtures for Weft's soft-edge annotators: HED (`ControlNetHED.pth`) and PiDiNet
(`table5_pidinet.pth`), as the comfyui_controlnet_aux nodes HEDPreprocessor,
FakeScribblePreprocessor, PiDiNetPreprocessor and Scribble_PiDiNet_Preprocessor run them
(crates/weft-engine/src/annotators/{hed,pidinet}.rs, crates/weft-engine/tests/annotators_hed.rs,
tests/annotators_hed.rs).

Run: /tmp/peer-venv/bin/python tools/parity/hed_reference.py            (CPU, seconds)
     /tmp/peer-venv/bin/python tools/parity/hed_reference.py --full DIR  (full-size random files)
     /tmp/peer-venv/bin/python tools/parity/hed_reference.py --bench     (PyTorch timing, 512x512)
Versions used: controlnet-aux 0.0.10 (PyPI), torch 2.15, opencv-python-headless 5.1.0.95,
numpy 2.4, scikit-image 0.26.

- The networks are controlnet_aux's own classes: `ControlNetHED_Apache2` with narrow widths (its
  widths are fixed in the class, so a subclass builds the same blocks with 4/6/8/8/8 channels;
  Weft reads the widths from the weight shapes), and `PiDiNet` (carv4 pixel-difference layout,
  dil, sa) with 4 base channels and dil 4 instead of 60 and 24. The pack's PiDiNet runs the
  pixel-difference convolutions as they are; Weft folds them into plain kernels at load.
- Random weights get a data-dependent scaling (each conv's output brought to unit spread on
  the test image, the side outputs centred) so that the maps have real contrast; checked below.
- Saved in the published layouts: ControlNetHED.pth is a torch.save'd state dict (f16 in the
  published file and with --full; the fixture has it in f32, and in f16 as ControlNetHED_f16.pth);
  table5_pidinet.pth holds
  {"state_dict": {"module.<name>": ...}} in f32.
- The node calls are the pack's (Fannovel16/comfyui_controlnet_aux: node_wrappers/hed.py,
  pidinet.py, scribble.py; src/custom_controlnet_aux/hed, pidi, util.py; utils.py
  common_annotator_call), restated here on top of the same cv2/numpy calls, because PyPI's
  controlnet_aux `__call__`s differ (no padding, an image_resolution step).
- reference.safetensors: the inputs (uint8 HWC), every node result (uint8, one plane: the three
  are equal), and intermediates: HED's mean side output before the sigmoid and PiDiNet's
  sigmoid map, both at the padded size.
"""
import argparse
import json
import os
import statistics
import time

import cv2
import numpy as np
import skimage
import skimage.data
import torch
from safetensors.numpy import save_file


def _bare_package(name):
    """Imports controlnet_aux's submodules without its __init__ (which loads every annotator)."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec(name)
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = pkg


_bare_package("controlnet_aux")
from controlnet_aux.hed import ControlNetHED_Apache2, DoubleConvBlock  # noqa: E402
from controlnet_aux.pidi.model import PiDiNet, config_model, pidinet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "hed")


# ---------------------------------------------------------------- pack helpers (util.py, utils.py)
# HWC3, resize_image_with_pad and common_annotator_call as preprocess_reference.py restates them.
from preprocess_reference import HWC3, common_annotator_call, resize_image_with_pad  # noqa: E402


def nms(x, t, s):
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), s)
    f1 = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    f2 = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=np.uint8)
    f3 = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.uint8)
    f4 = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
    y = np.zeros_like(x)
    for f in [f1, f2, f3, f4]:
        np.putmask(y, cv2.dilate(x, kernel=f) == x, x)
    z = np.zeros_like(y, dtype=np.uint8)
    z[y > t] = 255
    return z


def safe_step(x, step=2):
    y = x.astype(np.float32) * float(step + 1)
    y = y.astype(np.int32).astype(np.float32) / float(step)
    return y


def scribble(detected_map):
    """The detectors' scribble step (and Scribble_PiDiNet_Preprocessor's second one)."""
    detected_map = nms(detected_map, 127, 3.0)
    detected_map = cv2.GaussianBlur(detected_map, (0, 0), 3.0)
    detected_map[detected_map > 4] = 255
    detected_map[detected_map < 255] = 0
    return detected_map


# ---------------------------------------------------------------- the pack's detectors
def hed_call(net, input_image, detect_resolution=512, safe=False, scribble_=False, keep=None):
    """custom_controlnet_aux.hed.HEDdetector.__call__ (output_type np)."""
    input_image, remove_pad = resize_image_with_pad(input_image, detect_resolution, "INTER_CUBIC")
    H, W, C = input_image.shape
    with torch.no_grad():
        image_hed = torch.from_numpy(input_image).float()
        image_hed = image_hed.permute(2, 0, 1)[None]
        edges = net(image_hed)
        edges = [e.detach().cpu().numpy().astype(np.float32)[0, 0] for e in edges]
        edges = [cv2.resize(e, (W, H), interpolation=cv2.INTER_LINEAR) for e in edges]
        edges = np.stack(edges, axis=2)
        if keep is not None:
            keep["mean"] = np.mean(edges, axis=2)
        edge = 1 / (1 + np.exp(-np.mean(edges, axis=2).astype(np.float64)))
        if safe:
            edge = safe_step(edge)
        edge = (edge * 255.0).clip(0, 255).astype(np.uint8)
    detected_map = edge
    if scribble_:
        detected_map = scribble(detected_map)
    return HWC3(remove_pad(detected_map))


def pidi_call(net, input_image, detect_resolution=512, safe=False, scribble_=False, keep=None):
    """custom_controlnet_aux.pidi.PidiNetDetector.__call__ (output_type np, apply_filter off)."""
    detected_map, remove_pad = resize_image_with_pad(input_image, detect_resolution, "INTER_CUBIC")
    detected_map = detected_map[:, :, ::-1].copy()
    with torch.no_grad():
        image_pidi = torch.from_numpy(detected_map).float()
        image_pidi = image_pidi / 255.0
        image_pidi = image_pidi.permute(2, 0, 1)[None]
        edge = net(image_pidi)[-1]
        edge = edge.cpu().numpy()
        if keep is not None:
            keep["sigmoid"] = edge[0, 0].copy()
        if safe:
            edge = safe_step(edge)
        edge = (edge * 255.0).clip(0, 255).astype(np.uint8)
    detected_map = edge[0, 0]
    if scribble_:
        detected_map = scribble(detected_map)
    return HWC3(remove_pad(detected_map))


def scribble_pidinet_node(net, img, detect_resolution, safe):
    """Scribble_PiDiNet_Preprocessor's model: the detector's scribble, then the same step again
    on its (cropped, three-channel) result."""
    return scribble(pidi_call(net, img, detect_resolution, safe, scribble_=True))


# ---------------------------------------------------------------- narrow nets
class NarrowHED(ControlNetHED_Apache2):
    """ControlNetHED_Apache2's blocks with other widths (the class fixes 64..512)."""

    def __init__(self, widths=(4, 6, 8, 8, 8)):
        torch.nn.Module.__init__(self)
        self.norm = torch.nn.Parameter(torch.zeros(size=(1, 3, 1, 1)))
        layers = (2, 2, 3, 3, 3)
        c_in = 3
        for i, (c, n) in enumerate(zip(widths, layers)):
            setattr(self, f"block{i + 1}", DoubleConvBlock(input_channel=c_in, output_channel=c, layer_number=n))
            c_in = c


def narrow_pidinet():
    return PiDiNet(4, config_model("carv4"), dil=4, sa=True)


def conv_modules(net):
    """Every module with a 4-D `weight` (nn.Conv2d and PiDiNet's pixel-difference Conv2d)."""
    return [m for m in net.modules() if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.dim() == 4]


def lsuv(net, x, outputs, spread=1.0, offset=0.0):
    """Data-dependent scaling: in execution order, each conv's output gets unit std on `x`
    (side outputs `outputs` get `spread` and mean `offset`: mostly dark maps with bright
    ridges, like real edge maps), so deep random nets keep contrast."""
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None) for m in conv_modules(net)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for m in order:
        seen = {}
        h = m.register_forward_hook(lambda mod, i, o: seen.setdefault("o", o))
        with torch.no_grad():
            net(x)
        h.remove()
        o = seen["o"]
        with torch.no_grad():
            target = spread if m in outputs else 1.0
            s = target / max(float(o.std()), 1e-6)
            m.weight.mul_(s)
            if getattr(m, "bias", None) is not None:
                m.bias.mul_(s)
                if m in outputs:
                    m.bias.sub_(float(o.mean()) * s - offset)


def make_hed(x_u8):
    torch.manual_seed(1)
    net = NarrowHED().float().eval()
    x = torch.from_numpy(x_u8).float().permute(2, 0, 1)[None]
    with torch.no_grad():
        net.norm.copy_(x.mean(dim=(2, 3), keepdim=True))
    projections = [getattr(net, f"block{i}").projection for i in range(1, 6)]
    lsuv(net, x, projections, spread=3.0, offset=-3.0)
    return net


def make_pidi(x_u8):
    torch.manual_seed(2)
    net = narrow_pidinet().eval()
    x = torch.from_numpy(x_u8[:, :, ::-1].copy()).float().permute(2, 0, 1)[None] / 255.0
    outputs = [m.conv for m in net.conv_reduces] + [net.classifier]
    lsuv(net, x, outputs, spread=3.0, offset=-3.0)
    return net


def save_hed(net, path):
    torch.save(net.state_dict(), path)


def save_pidi(net, path):
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)


def load_hed_like_pack(path, net):
    net.load_state_dict(torch.load(path, map_location="cpu"))
    return net.float().eval()


def load_pidi_like_pack(path, net):
    net.load_state_dict({k.replace("module.", ""): v for k, v in torch.load(path)["state_dict"].items()})
    return net.eval()


# ---------------------------------------------------------------- inputs
def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (96, 72), interpolation=cv2.INTER_AREA)  # H=72, W=96
    return {"astronaut": astro, "coffee": coffee}


def to_comfy(u8):
    return torch.from_numpy(u8.astype(np.float32) / 255.0)[None]


def check_contrast(name, out):
    """A soft map must spread over the range; a scribble must be neither empty nor full."""
    g = out[..., 0] if out.ndim == 3 else out
    if "scribble" in name:
        white = float((g == 255).mean())
        assert 0.01 < white < 0.6, (name, white)
        assert set(np.unique(g)) <= {0, 255}, name
    elif "safe" in name:
        assert len(np.unique(g)) >= 2, (name, np.unique(g))
    else:
        assert g.std() > 25 and float(((g == 0) | (g == 255)).mean()) < 0.5, (name, g.std())


def main_fixtures():
    os.makedirs(OUT, exist_ok=True)
    ins = inputs()
    # Scale the random weights on the padded coffee image the nodes see at resolution 80.
    probe, _ = resize_image_with_pad(ins["coffee"], 80)
    hed_path = os.path.join(OUT, "ControlNetHED.pth")
    pidi_path = os.path.join(OUT, "table5_pidinet.pth")
    save_hed(make_hed(probe), hed_path)
    save_pidi(make_pidi(probe), pidi_path)
    hed = load_hed_like_pack(hed_path, NarrowHED())
    # The published file is f16: the same weights in half, to check that Weft widens them.
    half = NarrowHED()
    half.load_state_dict(hed.state_dict())
    save_hed(half.half(), os.path.join(OUT, "ControlNetHED_f16.pth"))
    pidi = load_pidi_like_pack(pidi_path, narrow_pidinet())

    t = {f"in.{k}": v for k, v in ins.items()}
    cases = [("astronaut", 64), ("coffee", 80)]
    for name, res in cases:
        img = to_comfy(ins[name])
        runs = {
            "hed": lambda i: hed_call(hed, i, res, safe=False),
            "hed_safe": lambda i: hed_call(hed, i, res, safe=True),
            "fake_scribble_safe": lambda i: hed_call(hed, i, res, safe=True, scribble_=True),
            "fake_scribble": lambda i: hed_call(hed, i, res, safe=False, scribble_=True),
            "pidi": lambda i: pidi_call(pidi, i, res, safe=False),
            "pidi_safe": lambda i: pidi_call(pidi, i, res, safe=True),
            "pidi_scribble_safe": lambda i: scribble_pidinet_node(pidi, i, res, True),
            "pidi_scribble": lambda i: scribble_pidinet_node(pidi, i, res, False),
        }
        for run, fn in runs.items():
            out = common_annotator_call(fn, img)[0]
            assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
            key = f"{run}.{name}.r{res}"
            print(f"{key:36s} mean {out.mean():6.1f} std {out.std():6.1f}")
            check_contrast(key, out)
            t[key] = np.ascontiguousarray(out[..., 0])
        keep = {}
        hed_call(hed, np.asarray(img[0] * 255.0, dtype=np.uint8), res, keep=keep)
        pidi_call(pidi, np.asarray(img[0] * 255.0, dtype=np.uint8), res, keep=keep)
        t[f"hed_mean.{name}.r{res}"] = keep["mean"].astype(np.float32)
        t[f"pidi_sigmoid.{name}.r{res}"] = keep["sigmoid"].astype(np.float32)

    # The cv2 steps of the scribble on their own: uint8 blur (bit-exact fixed point) and nms.
    rng = np.random.default_rng(5)
    sparse = ((rng.random((45, 61)) > 0.93) * 255).astype(np.uint8)
    t["cv.sparse"] = sparse
    t["cv.blur3_u8.sparse"] = cv2.GaussianBlur(sparse, (0, 0), 3.0)
    t["cv.nms.hed"] = nms(t["hed.coffee.r80"], 127, 3.0)

    save_file(t, os.path.join(OUT, "reference.safetensors"))
    meta = {
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "skimage": skimage.__version__,
        "controlnet_aux": "0.0.10",
        "hed_widths": [4, 6, 8, 8, 8],
        "pidinet": {"inplane": 4, "dil": 4, "sa": True, "pdcs": "carv4"},
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    for k, v in t.items():
        if v.dtype == np.uint8 and k.count(".") == 2:
            print(f"{k:36s} {str(v.shape):12s} mean {v.mean():6.1f} std {v.std():6.1f}")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("fixture bytes", total)


def main_full(out_dir):
    """Full-size random files under the published names and layouts."""
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    # The published ControlNetHED.pth is stored in f16 (29 MB); table5_pidinet.pth in f32.
    hed = ControlNetHED_Apache2().half()
    save_hed(hed, os.path.join(out_dir, "ControlNetHED.pth"))
    save_pidi(pidinet(), os.path.join(out_dir, "table5_pidinet.pth"))
    print("wrote", os.listdir(out_dir))


def main_bench():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    hed = ControlNetHED_Apache2().float().eval()
    pidi = pidinet().eval()
    rng = np.random.default_rng(0)
    img = to_comfy(cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA))
    del rng
    for name, fn in [
        ("HEDPreprocessor", lambda i: hed_call(hed, i, 512)),
        ("PiDiNetPreprocessor", lambda i: pidi_call(pidi, i, 512)),
        ("FakeScribblePreprocessor", lambda i: hed_call(hed, i, 512, safe=True, scribble_=True)),
        ("Scribble_PiDiNet_Preprocessor", lambda i: scribble_pidinet_node(pidi, i, 512, True)),
    ]:
        common_annotator_call(fn, img)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            common_annotator_call(fn, img)
            times.append(time.perf_counter() - t0)
        print(f"{name}: median {statistics.median(times) * 1000:.0f} ms at 512x512 (torch threads 2)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", metavar="DIR")
    ap.add_argument("--bench", action="store_true")
    a = ap.parse_args()
    if a.full:
        main_full(a.full)
    elif a.bench:
        main_bench()
    else:
        main_fixtures()
