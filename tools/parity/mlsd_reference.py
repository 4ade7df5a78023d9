"""Reference fixtures for Weft's M-LSD line preprocessor (`M-LSDPreprocessor`).

What: builds controlnet_aux's M-LSD network (`MobileV2_MLSD_Large`: MobileNetV2 backbone, the
A/B/C decoder blocks) with deterministic random weights, in a narrow variant (the same key layout
and module classes, smaller channel counts: Weft reads the widths from the weight shapes) so the
fixture stays small, saves it as a torch pickle under the published name
`mlsd_large_512_fp32.pth`, and records what comfyui_controlnet_aux's node does with it:
`common_annotator_call` (uint8 by truncation), `MLSDdetector.__call__` (resize_image_with_pad with
INTER_AREA, `pred_lines`, `cv2.line` of each segment on a black canvas, HWC3, remove_pad).
`pred_lines` and its decoder are controlnet_aux's own functions, called as they are.

It also draws random segments, many of them crossing or outside the canvas, with `cv2.line`
(thickness 1, LINE_8) so that Weft's rasteriser is checked against OpenCV's directly.

Writes tests/fixtures/annotators/mlsd/: mlsd_large_512_fp32.pth (narrow net),
reference.safetensors (inputs, network outputs, segments, maps), lines.safetensors (the line
check), e2e_input.png (the astronaut input, for the server test), manifest.json (cases, versions).

Options:
  --full DIR   write a full-size random-weight mlsd_large_512_fp32.pth into DIR (published layout)
  --bench      time the node's call at resolution 512 on a 512x512 image with the full-size
               net (PyTorch, 2 threads, one warm-up, median of 3)

Run: /tmp/peer-venv/bin/python tools/parity/mlsd_reference.py
Made with torch 2.15, controlnet-aux 0.0.10, opencv-python 5.1.0, numpy 2.4.
"""
import argparse
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np
import torch
from torch import nn
from safetensors.numpy import save_file

import controlnet_aux
from controlnet_aux.mlsd.models import mbv2_mlsd_large as M
from controlnet_aux.mlsd.utils import pred_lines

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from preprocess_reference import HWC3, resize_image_with_pad  # noqa: E402  (the pack's util.py)

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "mlsd")
FILE = "mlsd_large_512_fp32.pth"


class NarrowBackbone(M.MobileNetV2):
    """MobileNetV2 as the class builds it (same strides, expansion and FPN taps), other widths."""

    def __init__(self, first, widths, expand):
        nn.Module.__init__(self)
        setting = [[1, widths[0], 1, 1], [expand, widths[1], 2, 2], [expand, widths[2], 3, 2],
                   [expand, widths[3], 4, 2], [expand, widths[4], 3, 1]]
        features = [M.ConvBNReLU(4, first, stride=2)]
        inp = first
        for t, c, n, s in setting:
            for i in range(n):
                features.append(M.InvertedResidual(inp, c, s if i == 0 else 1, expand_ratio=t))
                inp = c
        self.features = nn.Sequential(*features)
        self.fpn_selected = [1, 3, 6, 10, 13]


class NarrowMLSD(M.MobileV2_MLSD_Large):
    """MobileV2_MLSD_Large's forward and key layout with `d` decoder channels."""

    def __init__(self, first=8, widths=(8, 8, 8, 16, 16), expand=3, d=16):
        nn.Module.__init__(self)
        c = widths
        self.backbone = NarrowBackbone(first, widths, expand)
        self.block15 = M.BlockTypeA(in_c1=c[3], in_c2=c[4], out_c1=d, out_c2=d, upscale=False)
        self.block16 = M.BlockTypeB(2 * d, d)
        self.block17 = M.BlockTypeA(in_c1=c[2], in_c2=d, out_c1=d, out_c2=d)
        self.block18 = M.BlockTypeB(2 * d, d)
        self.block19 = M.BlockTypeA(in_c1=c[1], in_c2=d, out_c1=d, out_c2=d)
        self.block20 = M.BlockTypeB(2 * d, d)
        self.block21 = M.BlockTypeA(in_c1=c[0], in_c2=d, out_c1=d, out_c2=d)
        self.block22 = M.BlockTypeB(2 * d, d)
        self.block23 = M.BlockTypeC(d, 16)


def randomize(model, seed):
    """Random BatchNorm statistics and affine terms, and a head whose maps have contrast: centre
    logits spread around 0 (so scores cover 0..1) and displacements of a few to tens of pixels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.num_batches_tracked.fill_(100)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    model.eval()
    return model


def calibrate_head(model, image):
    """Scale the last conv so that on `image` the centre logits have std 2 around mean -1 and the
    displacements std 12 (channels 7 and 8..11 of block23.conv3: the ones `forward` keeps)."""
    with torch.no_grad():
        out = model(torch_input(image))
        conv = model.block23.conv3
        for ch, (mean, std) in [(0, (-1.0, 2.0))] + [(k, (0.0, 12.0)) for k in range(1, 5)]:
            o = out[0, ch]
            a = std / float(o.std())
            conv.weight[7 + ch] *= a
            conv.bias[7 + ch] = (conv.bias[7 + ch] - float(o.mean())) * a + mean
    return model


def torch_input(image):
    """pred_lines's input tensor for a padded uint8 image (for calibration only)."""
    h, w, _ = image.shape
    x = np.concatenate([image, np.ones([h, w, 1])], axis=-1).transpose((2, 0, 1))[None]
    return torch.from_numpy((x.astype("float32") / 127.5) - 1.0).float()


def detector(model, input_image, thr_v, thr_d, detect_resolution, record=True):
    """comfyui_controlnet_aux's MLSDdetector.__call__ (output_type np), returning the map and the
    intermediates: padded input, network output (`record`: one more forward for it), segments."""
    padded, remove_pad = resize_image_with_pad(input_image, detect_resolution, "INTER_AREA")
    img = padded
    img_output = np.zeros_like(img)
    tp = None
    if record:
        with torch.no_grad():
            tp = model(torch_input(img))[0].numpy()
    lines = np.zeros((0, 4))
    try:
        with torch.no_grad():
            lines = pred_lines(img, model, [img.shape[0], img.shape[1]], thr_v, thr_d)
            for line in lines:
                x_start, y_start, x_end, y_end = [int(val) for val in line]
                cv2.line(img_output, (x_start, y_start), (x_end, y_end), [255, 255, 255], 1)
    except Exception:
        pass
    detected_map = remove_pad(HWC3(img_output[:, :, 0]))
    return detected_map, padded, tp, np.asarray(lines, dtype=np.float64).reshape(-1, 4)


def node(model, image_u8, score_threshold, dist_threshold, resolution):
    """The node: IMAGE float -> uint8 (truncation) -> detector -> uint8 map."""
    t = torch.from_numpy(image_u8.astype(np.float32) / 255.0)
    u8 = np.asarray(t * 255.0, dtype=np.uint8)
    return detector(model, u8, score_threshold, dist_threshold, resolution)


def inputs():
    import skimage.data
    astro = cv2.resize(skimage.data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (120, 80), interpolation=cv2.INTER_AREA)  # H=80, W=120
    return {"astronaut": astro, "coffee": coffee}


# name, image, score_threshold, dist_threshold, resolution
CASES = [
    ("astronaut_default", "astronaut", 0.1, 0.1, 128),
    ("astronaut_strict", "astronaut", 0.5, 12.0, 128),
    ("coffee_default", "coffee", 0.1, 0.1, 96),
]


def line_check():
    """Random segments on a 37x53 canvas, endpoints from -40 to 90, drawn one per canvas; the
    canvases as bits (np.packbits of the [n, 37, 53] 0/1 array, most significant bit first)."""
    rng = np.random.default_rng(7)
    n = 400
    pts = rng.integers(-40, 91, size=(n, 4)).astype(np.int32)
    pts[:40] = rng.integers(0, 37, size=(40, 4))  # some fully inside
    canvases = np.zeros((n, 37, 53), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(pts):
        c = np.zeros((37, 53, 3), np.uint8)
        cv2.line(c, (int(x1), int(y1)), (int(x2), int(y2)), [255, 255, 255], 1)
        canvases[i] = c[:, :, 0]
    return {"points": pts, "canvas_bits": np.packbits(canvases > 0)}


def save_model(model, path):
    torch.save(model.state_dict(), path)


def full_model(seed=0):
    model = randomize(M.MobileV2_MLSD_Large(), seed)
    img, _ = resize_image_with_pad(inputs()["astronaut"], 512, "INTER_AREA")
    return calibrate_head(model, img)


def bench():
    torch.set_num_threads(2)
    model = full_model()
    import skimage.data
    image = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    run = lambda: detector(model, image, 0.1, 0.1, 512, record=False)  # noqa: E731
    run()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(f"M-LSDPreprocessor 512x512 (PyTorch CPU, 2 threads): median {statistics.median(times) * 1000:.1f} ms "
          f"of {[round(t * 1000, 1) for t in times]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full")
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    if args.full:
        os.makedirs(args.full, exist_ok=True)
        save_model(full_model(), os.path.join(args.full, FILE))
        return
    if args.bench:
        bench()
        return

    os.makedirs(OUT, exist_ok=True)
    imgs = inputs()
    model = randomize(NarrowMLSD(), 0)
    calib, _ = resize_image_with_pad(imgs["astronaut"], 128, "INTER_AREA")
    calibrate_head(model, calib)
    save_model(model, os.path.join(OUT, FILE))

    ref = {f"input_{k}": v for k, v in imgs.items()}
    manifest = {"cases": [], "versions": {
        "torch": torch.__version__, "controlnet_aux": getattr(controlnet_aux, "__version__", "0.0.10"),
        "opencv": cv2.__version__, "numpy": np.__version__}}
    for name, img, thr_v, thr_d, res in CASES:
        out, padded, tp, lines = node(model, imgs[img], thr_v, thr_d, res)
        lit = float((out[:, :, 0] > 0).mean())
        print(f"{name}: map {out.shape}, {len(lines)} segments, {lit:.3f} of pixels lit")
        assert 0.02 < lit < 0.6, "degenerate map"
        ref[f"{name}_map"] = out
        ref[f"{name}_padded"] = padded
        ref[f"{name}_tp"] = np.ascontiguousarray(tp, dtype=np.float32)
        ref[f"{name}_lines"] = lines
        manifest["cases"].append({"name": name, "image": img, "score_threshold": thr_v,
                                  "dist_threshold": thr_d, "resolution": res,
                                  "segments": int(len(lines))})
    save_file(ref, os.path.join(OUT, "reference.safetensors"))
    # The end-to-end test's LoadImage input (the astronaut case's image).
    cv2.imwrite(os.path.join(OUT, "e2e_input.png"), cv2.cvtColor(imgs["astronaut"], cv2.COLOR_RGB2BGR))
    save_file(line_check(), os.path.join(OUT, "lines.safetensors"))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
