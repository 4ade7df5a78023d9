"""Reference fixtures for Weft's OpenPose annotator (comfyui_controlnet_aux `OpenposePreprocessor`).

What: builds controlnet_aux's `bodypose_model` (the network of `body_pose_model.pth`) narrowed
(every VGG/stage width divided by NARROW; the 38 PAF and 19 heatmap channels kept, so the key
layout and the post-processing are the published ones) with deterministic random weights, shaped
so that people are actually found (see `shape_body`), saves it as `body_pose_model.pth` in the
published key layout (`conv1_1.weight`, `Mconv7_stage6_L2.bias`, ... : the model's keys without
their `model0.` style prefix, a torch pickle), runs the ComfyUI pack's node call on skimage test
images and records, per case: the input, the body net's raw outputs, the candidate/subset arrays
of `Body.__call__`, the pose JSON and the drawn map.

The node call is the pack's (Fannovel16/comfyui_controlnet_aux, `node_wrappers/openpose.py` and
`src/custom_controlnet_aux/open_pose/__init__.py`, `util.py`), re-stated here where it differs
from PyPI controlnet_aux 0.0.10 (`draw_bodypose`'s xinsr stick scaling, `encode_poses_as_dict`);
`Body`, `Hand`, `Face` and the nets are PyPI controlnet_aux's, identical to the pack's.

Run: /tmp/peer-venv/bin/python tools/parity/openpose_reference.py
     [--full DIR]  write a full-size random-weight body_pose_model.pth into DIR
     [--bench]     time the node call at 512x512 (full-size net, torch threads = 2)
Versions: torch 2.x, controlnet_aux 0.0.10, opencv-python 4.x/5.x, scipy 1.x, scikit-image.
"""
import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import cv2
import numpy as np
import skimage.data
import torch
from PIL import Image
from safetensors.numpy import save_file

import controlnet_aux.open_pose.model as cna_model
from controlnet_aux.open_pose import util as cna_util
from controlnet_aux.open_pose.body import Body

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from preprocess_reference import HWC3, resize_image_with_pad  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "openpose")
NARROW = 32
# Channel counts the post-processing fixes (RGB in, 38 PAF, 19 heatmaps) and the stage inputs
# built from them (38 + 19 + 128).
FIXED = {3, 38, 19}


def narrow_width(n):
    if n in FIXED:
        return n
    if n == 185:
        return 57 + 128 // NARROW
    return max(n // NARROW, 1)


class NarrowConv(torch.nn.Conv2d):
    def __init__(self, in_channels, out_channels, **kw):
        super().__init__(narrow_width(in_channels), narrow_width(out_channels), **kw)


def build_body(narrow):
    """controlnet_aux's bodypose_model, narrowed by patching the module's nn.Conv2d."""
    if not narrow:
        return cna_model.bodypose_model()
    real = cna_model.nn
    cna_model.nn = SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    cna_model.nn.Conv2d = NarrowConv
    try:
        return cna_model.bodypose_model()
    finally:
        cna_model.nn = real


def published_state(model):
    """The published key layout: `util.transfer` strips the first component of each key."""
    return {".".join(k.split(".")[1:]): v.detach().clone() for k, v in model.state_dict().items()}


def shape_body(model, seed, calibration_img):
    """Random weights that find people: He-scaled random convs, then the two last layers
    normalised per channel (mean 0, std 1 on `calibration_img`, the padded astronaut input) and
    set to heatmap = 1.5 z - 2.5 (only the tail of each random field passes thre1 = 0.1, a few
    peaks per part) and PAF = 0.2 z + 0.3 (biased positive, so limbs pointing right/down pass the
    PAF test and people get assembled). Mconv7_stage6_L2 keeps its ReLU: the pack's
    no_relu_layers names Mconv7_stage6_L1 twice."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        for conv, gain, bias in ((model.model6_2.Mconv7_stage6_L2, 1.5, -2.5),
                                 (model.model6_1.Mconv7_stage6_L1, 0.2, 0.3)):
            seen = {}
            hook = conv.register_forward_hook(lambda mod, i, o: seen.__setitem__("out", o[0]))
            raw_outputs(SimpleNamespace(model=model), calibration_img)
            hook.remove()
            # (A floor on the spread: a near-constant channel must not blow up f32 noise.)
            mu, sd = seen["out"].mean((1, 2)), seen["out"].std((1, 2)).clamp(min=0.05)
            conv.weight.mul_((gain / sd)[:, None, None, None])
            conv.bias.copy_(bias + (conv.bias - mu) * gain / sd)


# ---------------------------------------------------------------- the pack's node call
def draw_bodypose(canvas, keypoints, xinsr_stick_scaling=False):
    """util.draw_bodypose of the pack (PyPI's lacks the xinsr stick scaling)."""
    H, W, C = canvas.shape
    stickwidth = 4
    max_side = max(H, W)
    if xinsr_stick_scaling:
        stick_scale = 1 if max_side < 500 else min(2 + (max_side // 1000), 7)
    else:
        stick_scale = 1
    limbSeq = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12],
               [12, 13], [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]
    colors = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
              [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
              [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
    for (k1_index, k2_index), color in zip(limbSeq, colors):
        keypoint1 = keypoints[k1_index - 1]
        keypoint2 = keypoints[k2_index - 1]
        if keypoint1 is None or keypoint2 is None:
            continue
        Y = np.array([keypoint1.x, keypoint2.x]) * float(W)
        X = np.array([keypoint1.y, keypoint2.y]) * float(H)
        mX = np.mean(X)
        mY = np.mean(Y)
        length = ((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        polygon = cv2.ellipse2Poly((int(mY), int(mX)), (int(length / 2), stickwidth * stick_scale), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in color])
    for keypoint, color in zip(keypoints, colors):
        if keypoint is None:
            continue
        x = int(keypoint.x * W)
        y = int(keypoint.y * H)
        cv2.circle(canvas, (int(x), int(y)), 4, color, thickness=-1)
    return canvas


def detect_poses(body_est, oriImg):
    """OpenposeDetector.detect_poses, body only (returns the raw candidate/subset too)."""
    oriImg = oriImg[:, :, ::-1].copy()
    H, W, C = oriImg.shape
    with torch.no_grad():
        candidate, subset = body_est(oriImg)
        bodies = body_est.format_body_result(candidate, subset)
    poses = []
    for body in bodies:
        kps = [SimpleNamespace(x=k.x / float(W), y=k.y / float(H)) if k is not None else None for k in body.keypoints]
        poses.append(kps)
    return poses, candidate, subset


def encode_poses_as_dict(poses, canvas_height, canvas_width):
    """The pack's encode_poses_as_dict (not in PyPI controlnet_aux 0.0.10): `poses` are PoseResults
    (`.body.keypoints`, `.face`, `.left_hand`, `.right_hand`)."""
    def compress(keypoints):
        if not keypoints:
            return None
        return [v for k in keypoints for v in ([float(k.x), float(k.y), 1.0] if k is not None else [0.0, 0.0, 0.0])]

    return {
        "people": [
            {"pose_keypoints_2d": compress(p.body.keypoints), "face_keypoints_2d": compress(p.face),
             "hand_left_keypoints_2d": compress(p.left_hand), "hand_right_keypoints_2d": compress(p.right_hand)}
            for p in poses
        ],
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    }


def openpose_call(body_est, image_u8, resolution, include_body=True, xinsr=False):
    """OpenposeDetector.__call__ (detect_resolution, upscale INTER_CUBIC, image_and_json=True)."""
    img, remove_pad = resize_image_with_pad(HWC3(image_u8), resolution, "INTER_CUBIC")
    poses, candidate, subset = detect_poses(body_est, img)
    canvas = np.zeros(shape=(img.shape[0], img.shape[1], 3), dtype=np.uint8)
    if include_body:
        for p in poses:
            canvas = draw_bodypose(canvas, p, xinsr)
    detected = HWC3(remove_pad(canvas))
    results = [SimpleNamespace(body=SimpleNamespace(keypoints=p), face=None, left_hand=None, right_hand=None)
               for p in poses]
    return detected, encode_poses_as_dict(results, detected.shape[0], detected.shape[1]), img, candidate, subset


def raw_outputs(body_est, padded):
    """The body net's outputs on the first (and only) scale of Body.__call__, for the net test."""
    ori = padded[:, :, ::-1].copy()
    scale = 0.5 * 368 / ori.shape[0]
    test = cna_util.smart_resize_k(ori, fx=scale, fy=scale)
    test, _ = cna_util.padRightDownCorner(test, 8, 128)
    im = np.ascontiguousarray(np.transpose(np.float32(test[:, :, :, None]), (3, 2, 0, 1)) / 256 - 0.5)
    with torch.no_grad():
        paf, hm = body_est.model(torch.from_numpy(im))
    return im, paf.numpy(), hm.numpy()


def save_body(model, path):
    torch.save(published_state(model), path)


def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (160, 160), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (200, 150), interpolation=cv2.INTER_AREA)  # H=150, W=200
    return {"astronaut": astro, "coffee": coffee}


def calibration():
    return resize_image_with_pad(inputs()["astronaut"], 256)[0]


CASES = [
    # name, image, resolution, include_body, xinsr
    ("astronaut_256", "astronaut", 256, True, False),
    # Below 184 pixels the image is enlarged for the net (Lanczos on uint8) and the maps shrunk
    # back (INTER_AREA on float).
    ("astronaut_128", "astronaut", 128, True, False),
    ("coffee_320", "coffee", 320, True, False),
    ("astronaut_512_xinsr", "astronaut", 512, True, True),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full")
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.full:
        model = build_body(False)
        shape_body(model, 1, calibration())
        os.makedirs(args.full, exist_ok=True)
        save_body(model, os.path.join(args.full, "body_pose_model.pth"))
        return
    if args.bench:
        torch.set_num_threads(2)
        model = build_body(False)
        shape_body(model, 1, calibration())
        tmp = "/tmp/openpose_bench_body.pth"
        save_body(model, tmp)
        body_est = Body(tmp)
        img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
        openpose_call(body_est, img, 512)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            openpose_call(body_est, img, 512)
            times.append(time.perf_counter() - t)
        print(f"OpenposePreprocessor body-only 512x512 (torch threads 2): median {sorted(times)[1] * 1000:.0f} ms")
        return

    os.makedirs(OUT, exist_ok=True)
    model = build_body(True)
    shape_body(model, 1, calibration())
    path = os.path.join(OUT, "body_pose_model.pth")
    save_body(model, path)
    # Load it back the way the pack does (util.transfer over the narrowed class).
    real = cna_model.nn
    cna_model.nn = SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    cna_model.nn.Conv2d = NarrowConv
    try:
        body_est = Body(path)
    finally:
        cna_model.nn = real

    imgs = inputs()
    tensors, meta = {}, {"cases": [], "narrow": NARROW}
    for name, img in imgs.items():
        tensors[f"{name}.input"] = img
    # The end-to-end test's LoadImage input (its map is astronaut_256's).
    Image.fromarray(imgs["astronaut"]).save(os.path.join(OUT, "astronaut.png"))
    for name, img_name, res, body, xinsr in CASES:
        detected, pose_json, padded, candidate, subset = openpose_call(body_est, imgs[img_name], res, body, xinsr)
        tensors[f"{name}.map"] = detected
        # The net's outputs, so that Weft's post-processing can be checked on exactly these.
        im, paf, hm = raw_outputs(body_est, padded)
        if name == "astronaut_256":
            tensors[f"{name}.net_in"] = im
        tensors[f"{name}.paf"] = paf
        tensors[f"{name}.heatmap"] = hm
        tensors[f"{name}.candidate"] = np.asarray(candidate, dtype=np.float64).reshape(-1, 4)
        tensors[f"{name}.subset"] = np.asarray(subset, dtype=np.float64).reshape(-1, 20)
        people = len(pose_json["people"])
        parts = [int(sum(1 for v in p["pose_keypoints_2d"][2::3] if v)) for p in pose_json["people"]]
        lit = int((detected > 0).any(axis=2).sum())
        print(f"{name}: {len(candidate)} peaks, {people} people with {parts} parts, {lit} drawn pixels")
        assert people >= 1, f"{name}: no person found: reshape the weights"
        meta["cases"].append({"name": name, "image": img_name, "resolution": res, "detect_body": body,
                              "xinsr": xinsr, "pose": pose_json})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(OUT, "openpose_ref.safetensors"))
    import controlnet_aux
    meta["versions"] = {"torch": torch.__version__, "cv2": cv2.__version__, "controlnet_aux": controlnet_aux.__version__}
    with open(os.path.join(OUT, "openpose_ref.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
