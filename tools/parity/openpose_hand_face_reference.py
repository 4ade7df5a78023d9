"""Reference fixtures for the hands and faces of Weft's OpenPose annotator (comfyui_controlnet_aux
`OpenposePreprocessor` with `detect_hand` / `detect_face` enabled).

What: builds controlnet_aux's `handpose_model` (the network of `hand_pose_model.pth`) and `FaceNet`
(`facenet.pth`) narrowed (every VGG/stage width divided by NARROW; the 22 hand and 71 face heatmap
channels kept, so the key layouts and the post-processing are the published ones) with
deterministic random weights whose last layer is scaled so that the heatmaps have real peaks (see
`shape_last`), saves them under their published names in the published layouts (`conv1_1.weight`,
`Mconv7_stage6.bias`, ...: a torch pickle of a plain dict), and records:
- `nets`: each net's output on a small fixed input (the net test);
- `given_body`: the hand/face stage given fixed body keypoints (the body net is random and finds no
  arms): `handDetect` / `faceDetect` boxes, `Hand.__call__` / `Face` peaks, the pose JSON and the map
  drawn by the pack's `draw_poses` (body, hands, faces);
- `node_256`: the pack's whole node call on the astronaut at resolution 256 with body, hands and faces
  (the body net of openpose_reference.py finds faces there, no hands), the end-to-end test's map;
- `lines`: `cv2.line(thickness=2)` on random segments, as `draw_handpose` draws the hand's bones.

The node call is the pack's (Fannovel16/comfyui_controlnet_aux `src/custom_controlnet_aux/open_pose/
__init__.py`: `detect_poses`, `draw_poses`, `encode_poses_as_dict` (openpose_reference.py's); `util.py`); `Hand`, `Face`,
`handDetect`, `faceDetect`, `draw_handpose`, `draw_facepose` and the nets are PyPI controlnet_aux
0.0.10's, identical to the pack's (the diff is the device handling and a moved matplotlib import).

Run: /tmp/peer-venv/bin/python tools/parity/openpose_hand_face_reference.py
     [--full DIR]  write full-size random-weight hand_pose_model.pth and facenet.pth into DIR
     [--bench]     time body+hand+face at 512x512 (full-size nets, torch threads = 2)
Versions: torch 2.x, controlnet_aux 0.0.10, opencv-python 4.x, numpy 2.x, scipy, scikit-image,
matplotlib (draw_handpose's colours).
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
import torch
from safetensors.numpy import save_file

import controlnet_aux.open_pose.face as cna_face
import controlnet_aux.open_pose.model as cna_model
from controlnet_aux.open_pose import OpenposeDetector, PoseResult
from controlnet_aux.open_pose import util as cna_util
from controlnet_aux.open_pose.body import Body, BodyResult, Keypoint
from controlnet_aux.open_pose.face import Face
from controlnet_aux.open_pose.hand import Hand

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import openpose_reference as body_ref  # noqa: E402
from preprocess_reference import HWC3, resize_image_with_pad  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "openpose")
NARROW = 32
# Hand: 22 heatmaps, stage inputs 22 + 128. Face: 71 heatmaps, stage inputs 71 + 128.
FIXED = {3, 22, 71}
STAGE_IN = {150: 22, 199: 71}


def narrow_width(n):
    if n in FIXED:
        return n
    if n in STAGE_IN:
        return STAGE_IN[n] + 128 // NARROW
    return max(n // NARROW, 1)


class NarrowConv(torch.nn.Conv2d):
    def __init__(self, in_channels, out_channels, **kw):
        super().__init__(narrow_width(in_channels), narrow_width(out_channels), **kw)


class Narrowed:
    """Within: controlnet_aux's model.py and face.py build their convolutions narrowed."""

    def __enter__(self):
        self.nn, self.conv = cna_model.nn, cna_face.Conv2d
        cna_model.nn = SimpleNamespace(**{k: getattr(self.nn, k) for k in dir(self.nn) if not k.startswith("__")})
        cna_model.nn.Conv2d = NarrowConv
        cna_face.Conv2d = NarrowConv

    def __exit__(self, *exc):
        cna_model.nn, cna_face.Conv2d = self.nn, self.conv


def build(narrow):
    if narrow:
        with Narrowed():
            return cna_model.handpose_model(), cna_face.FaceNet()
    return cna_model.handpose_model(), cna_face.FaceNet()


def hand_state(model):
    """hand_pose_model.pth's layout: `util.transfer` strips the `model1_0.` style prefix."""
    return {".".join(k.split(".")[1:]): v.detach().clone() for k, v in model.state_dict().items()}


def face_state(model):
    """facenet.pth is FaceNet's own state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)


def shape_last(model, last, x, gain, bias, dead):
    """The last layer normalised per channel on input `x` (mean 0, std 1) then `gain * z + bias`, so a
    tail of each random field passes the peak threshold; channels `dead` get a bias of -5 (no peak:
    the hand's [0, 0] and the face's skipped part)."""
    seen = {}
    hook = last.register_forward_hook(lambda mod, i, o: seen.__setitem__("out", o[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    with torch.no_grad():
        mu, sd = seen["out"].mean((1, 2)), seen["out"].std((1, 2)).clamp(min=0.05)
        last.weight.mul_((gain / sd)[:, None, None, None])
        b = bias + (last.bias - mu) * gain / sd
        b[dead] = -5.0
        last.bias.copy_(b)


def net_input(bgr_u8, size):
    img = cv2.resize(bgr_u8, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.float32) / 256 - 0.5))


def make_nets(narrow, seed=7):
    hand, face = build(narrow)
    randomize(hand, seed)
    randomize(face, seed + 2)  # (seed + 1 gives a near-constant narrowed face net)
    calib = body_ref.calibration()[:, :, ::-1].copy()
    # The hand net sees 184..736-pixel squares of a wrist box, the face net a 384-pixel square.
    shape_last(hand, hand.model6.Mconv7_stage6, net_input(calib[60:200, 60:200], 368), 0.5, 0.0, [3, 20])
    shape_last(face, face.Mconv7_stage6, net_input(calib[20:120, 80:180], 384), 0.05, -0.02, [5, 40, 70])
    return hand, face


def save_nets(hand, face, dir):
    os.makedirs(dir, exist_ok=True)
    torch.save(hand_state(hand), os.path.join(dir, "hand_pose_model.pth"))
    torch.save(face_state(face), os.path.join(dir, "facenet.pth"))


def load_estimators(dir, narrow):
    """Hand/Face as the pack loads them (util.transfer / load_state_dict over the (narrowed) classes)."""
    if narrow:
        with Narrowed():
            return Hand(os.path.join(dir, "hand_pose_model.pth")), Face(os.path.join(dir, "facenet.pth"))
    return Hand(os.path.join(dir, "hand_pose_model.pth")), Face(os.path.join(dir, "facenet.pth"))


# ---------------------------------------------------------------- the pack's node call
def draw_poses(poses, H, W, draw_body=True, draw_hand=True, draw_face=True, xinsr=False):
    """The pack's draw_poses (PyPI's lacks the xinsr stick scaling)."""
    canvas = np.zeros(shape=(H, W, 3), dtype=np.uint8)
    for pose in poses:
        if draw_body:
            canvas = body_ref.draw_bodypose(canvas, pose.body.keypoints, xinsr)
        if draw_hand:
            canvas = cna_util.draw_handpose(canvas, pose.left_hand)
            canvas = cna_util.draw_handpose(canvas, pose.right_hand)
        if draw_face:
            canvas = cna_util.draw_facepose(canvas, pose.face)
    return canvas


def node_call(detector, image_u8, resolution, include_body=True, include_hand=True, include_face=True, xinsr=False):
    """OpenposeDetector.__call__ of the pack (detect_resolution, INTER_CUBIC, image_and_json=True)."""
    img, remove_pad = resize_image_with_pad(HWC3(image_u8), resolution, "INTER_CUBIC")
    poses = detector.detect_poses(img, include_hand=include_hand, include_face=include_face)
    canvas = draw_poses(poses, img.shape[0], img.shape[1], include_body, include_hand, include_face, xinsr)
    detected = HWC3(remove_pad(canvas))
    return detected, body_ref.encode_poses_as_dict(poses, detected.shape[0], detected.shape[1])


# Fixed body keypoints (pixels of the 256x256 padded astronaut, None where absent): person 1 has
# both arms and a face inside the image; person 2's right hand box and face box run over the
# right/bottom edges (clipped boxes, a non-square face crop).
GIVEN = [
    {0: (128, 60), 1: (128, 100), 2: (100, 100), 3: (82, 140), 4: (70, 178), 5: (156, 100),
     6: (176, 138), 7: (190, 176), 8: (110, 190), 11: (146, 190), 14: (121, 52), 15: (135, 53),
     16: (113, 57), 17: (143, 58)},
    {0: (245, 238), 1: (230, 250), 2: (210, 175), 3: (225, 200), 4: (240, 225), 16: (226, 240)},
]


def given_arrays():
    cand, subset = [], []
    for person in GIVEN:
        row = [-1.0] * 20
        for part, (x, y) in sorted(person.items()):
            row[part] = float(len(cand))
            cand.append([float(x), float(y), 0.9, float(len(cand))])
        row[18], row[19] = 10.0, float(len(person))
        subset.append(row)
    return np.asarray(cand), np.asarray(subset)


def given_body_call(detector, padded_rgb):
    """detect_poses / draw_poses / encode with the body result fixed (Body.__call__ replaced)."""
    cand, subset = given_arrays()

    class Given:
        format_body_result = staticmethod(Body.format_body_result)

        def __call__(self, img):
            return cand, subset

    real, detector.body_estimation = detector.body_estimation, Given()
    try:
        poses = detector.detect_poses(padded_rgb, include_hand=True, include_face=True)
    finally:
        detector.body_estimation = real
    H, W = padded_rgb.shape[:2]
    canvas = draw_poses(poses, H, W)
    return canvas, body_ref.encode_poses_as_dict(poses, H, W), cand, subset


def boxes_and_peaks(detector, padded_rgb):
    """Per person: the hand boxes with Hand.__call__'s raw peaks, the face box with its raw peaks."""
    bgr = padded_rgb[:, :, ::-1].copy()
    cand, subset = given_arrays()
    out = []
    for body in Body.format_body_result(cand, subset):
        hands = []
        for x, y, w, is_left in cna_util.handDetect(body, bgr):
            peaks = detector.hand_estimation(bgr[y:y + w, x:x + w, :])
            hands.append({"box": [x, y, w, bool(is_left)], "peaks": peaks.tolist()})
        face = cna_util.faceDetect(body, bgr)
        face_out = None
        if face is not None:
            x, y, w = face
            heat = detector.face_estimation(bgr[y:y + w, x:x + w, :])
            peaks = detector.face_estimation.compute_peaks_from_heatmaps(heat)
            face_out = {"box": [x, y, w], "crop": list(heat.shape[1:]), "peaks": peaks.tolist()}
        out.append({"hands": hands, "face": face_out})
    return out


def lines_case(seed=3):
    """cv2.line(thickness=2) with draw_handpose's float colours on random segments whose ends lie in
    the canvas from pixel 1 on (as draw_handpose's do: it skips points at 0), some on the last
    row/column, some degenerate. (OpenCV 5.1 draws segments with an end outside the canvas
    differently from its FillConvexPoly + Circle path; draw_handpose never asks for those.)"""
    import matplotlib.colors
    rng = np.random.default_rng(seed)
    h, w = 64, 80
    canvas = np.zeros((h, w, 3), np.uint8)
    segs = []
    for i in range(60):
        p = rng.integers(1, [w, h, w, h])
        if i % 10 == 0:
            p[2:] = p[:2]
        if i % 7 == 1:
            p[0] = w - 1
        if i % 9 == 2:
            p[3] = h - 1
        ie = i % 20
        color = matplotlib.colors.hsv_to_rgb([ie / 20.0, 1.0, 1.0]) * 255
        cv2.line(canvas, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, thickness=2)
        segs.append([int(v) for v in p] + [ie])
    return canvas, np.asarray(segs, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full")
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.full:
        save_nets(*make_nets(False), args.full)
        return
    if args.bench:
        bench()
        return

    hand, face = make_nets(True)
    save_nets(hand, face, OUT)
    hand_est, face_est = load_estimators(OUT, True)
    with body_ref_narrowed():
        body_est = Body(os.path.join(OUT, "body_pose_model.pth"))
    detector = OpenposeDetector(body_est, hand_est, face_est)

    tensors, meta = {}, {"narrow": NARROW}
    # The nets on a fixed small input.
    calib = body_ref.calibration()[:, :, ::-1].copy()
    x = net_input(calib[60:124, 60:124], 64)
    with torch.no_grad():
        tensors["nets.input"] = x.numpy()
        tensors["nets.hand"] = hand_est.model(x).numpy()
        tensors["nets.face"] = face_est.model(x)[-1].numpy()

    # Hands and faces given fixed body keypoints.
    astro = body_ref.inputs()["astronaut"]
    padded, _ = resize_image_with_pad(HWC3(astro), 256, "INTER_CUBIC")
    canvas, pose, cand, subset = given_body_call(detector, padded)
    tensors["given_body.padded"] = padded
    tensors["given_body.candidate"] = cand
    tensors["given_body.subset"] = subset
    tensors["given_body.map"] = canvas
    meta["given_body"] = {"pose": pose, "people": boxes_and_peaks(detector, padded)}
    for i, p in enumerate(meta["given_body"]["people"]):
        for h in p["hands"]:
            missing = sum(1 for q in h["peaks"] if q == [0, 0])
            print(f"person {i} hand box {h['box']}: {21 - missing} of 21 peaks")
            assert missing < 21, "no hand peak: reshape the weights"
        if p["face"]:
            print(f"person {i} face box {p['face']['box']} crop {p['face']['crop']}: {len(p['face']['peaks'])} peaks")
            assert p["face"]["peaks"], "no face peak: reshape the weights"
    print(f"given_body: {int((canvas > 0).any(axis=2).sum())} drawn pixels")

    # The whole node call with hands and faces.
    detected, pose = node_call(detector, astro, 256)
    tensors["node_256.map"] = detected
    meta["node_256"] = {"resolution": 256, "pose": pose}
    faces = sum(1 for p in pose["people"] if p["face_keypoints_2d"])
    hands = sum(1 for p in pose["people"] for k in ("hand_left_keypoints_2d", "hand_right_keypoints_2d") if p[k])
    print(f"node_256: {len(pose['people'])} people, {faces} faces, {hands} hands")
    assert faces >= 1, "the node case should find a face"

    canvas, segs = lines_case()
    tensors["lines.map"] = canvas
    tensors["lines.segments"] = segs

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(OUT, "hand_face_ref.safetensors"))
    import controlnet_aux
    import matplotlib
    meta["versions"] = {"torch": torch.__version__, "cv2": cv2.__version__, "numpy": np.__version__,
                        "matplotlib": matplotlib.__version__, "controlnet_aux": controlnet_aux.__version__}
    with open(os.path.join(OUT, "hand_face_ref.json"), "w") as f:
        json.dump(meta, f, indent=1)


class body_ref_narrowed:
    """Within: controlnet_aux's bodypose_model is openpose_reference.py's narrowed one."""

    def __enter__(self):
        self.nn = cna_model.nn
        cna_model.nn = SimpleNamespace(**{k: getattr(self.nn, k) for k in dir(self.nn) if not k.startswith("__")})
        cna_model.nn.Conv2d = body_ref.NarrowConv

    def __exit__(self, *exc):
        cna_model.nn = self.nn


def bench():
    """The node call at 512x512 with the full-size nets: body+hand+face. The random body net finds
    no arms, so the hand and face stages are also timed on the given body keypoints (scaled to 512)."""
    torch.set_num_threads(2)
    tmp = "/tmp/openpose_bench"
    os.makedirs(tmp, exist_ok=True)
    body = body_ref.build_body(False)
    body_ref.shape_body(body, 1, body_ref.calibration())
    body_ref.save_body(body, os.path.join(tmp, "body_pose_model.pth"))
    save_nets(*make_nets(False), tmp)
    hand_est, face_est = load_estimators(tmp, False)
    detector = OpenposeDetector(Body(os.path.join(tmp, "body_pose_model.pth")), hand_est, face_est)
    img = cv2.resize(body_ref.skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)

    def median(f):
        f()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return sorted(times)[1] * 1000

    t_node = median(lambda: node_call(detector, img, 512))
    _, pose = node_call(detector, img, 512)
    faces = sum(1 for p in pose["people"] if p["face_keypoints_2d"])
    print(f"OpenposePreprocessor body+hand+face 512x512 (torch threads 2): median {t_node:.0f} ms "
          f"({len(pose['people'])} people, {faces} faces, no hands: the random body finds no arms)")
    padded, _ = resize_image_with_pad(img, 512, "INTER_CUBIC")
    bgr = padded[:, :, ::-1].copy()
    cand, subset = given_arrays()
    cand[:, :2] *= 2
    body0 = Body.format_body_result(cand, subset)[0]
    t_hands = median(lambda: detector.detect_hands(body0, bgr))
    t_face = median(lambda: detector.detect_face(body0, bgr))
    boxes = cna_util.handDetect(body0, bgr)
    print(f"  hand stage, one person ({len(boxes)} hand boxes {[b[2] for b in boxes]} px): median {t_hands:.0f} ms; "
          f"face stage, one face box {cna_util.faceDetect(body0, bgr)}: median {t_face:.0f} ms")


if __name__ == "__main__":
    main()
