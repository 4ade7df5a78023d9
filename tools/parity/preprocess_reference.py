"""Reference fixtures for the Weft ControlNet image preprocessors (wip-preprocess).

Deterministic: skimage's bundled test images, fixed thresholds, fixed seeds. Writes
tests/fixtures/preprocess_ref.safetensors (inputs and outputs as uint8) plus a small JSON
with the library versions. Run with /opt/refpy/bin/python (torch, kornia, opencv-python-headless<5,
scikit-image, safetensors).

References reproduced here:
* ComfyUI `Canny` node (comfy_extras/nodes_canny.py): kornia.filters.canny(image.movedim(-1, 1), low, high)[1]
  repeated to 3 channels.
* comfyui_controlnet_aux (Fannovel16) detectors, re-stated line by line from the annotator sources
  (custom_controlnet_aux/*/__init__.py and util.py) on top of the same cv2/numpy calls, plus
  `common_annotator_call` (utils.py): uint8 conversion by truncation of image * 255 and output / 255.
"""
import json
import os

import cv2
import kornia
import numpy as np
import skimage
import skimage.data
import torch
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "preprocess")


# ---------------------------------------------------------------- inputs
def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    cam = skimage.data.camera()
    cam = np.stack([cam] * 3, axis=2)
    cam = cv2.resize(cam, (128, 128), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    return {"astronaut": astro, "camera": cam, "coffee": coffee}


def to_comfy(u8):
    """IMAGE tensor [1, H, W, C] f32 in 0..1, as a LoadImage node would give."""
    return torch.from_numpy(u8.astype(np.float32) / 255.0)[None]


# ---------------------------------------------------------------- ComfyUI Canny
def comfy_canny(image, low, high):
    out = kornia.filters.canny(image.movedim(-1, 1), low, high)
    return out[1].repeat(1, 3, 1, 1).movedim(1, -1)


# ---------------------------------------------------------------- aux helpers (util.py)
def HWC3(x):
    assert x.dtype == np.uint8
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    return x


def pad64(x):
    return int(np.ceil(float(x) / 64.0) * 64 - x)


def resize_image_with_pad(img, resolution, upscale_method="INTER_CUBIC"):
    img = HWC3(img)
    H_raw, W_raw, _ = img.shape
    if resolution == 0:
        return img, lambda x: x
    k = float(resolution) / float(min(H_raw, W_raw))
    H_target = int(np.round(float(H_raw) * k))
    W_target = int(np.round(float(W_raw) * k))
    img = cv2.resize(img, (W_target, H_target), interpolation=getattr(cv2, upscale_method) if k > 1 else cv2.INTER_AREA)
    H_pad, W_pad = pad64(H_target), pad64(W_target)
    img_padded = np.pad(img, [[0, H_pad], [0, W_pad], [0, 0]], mode="edge")

    def remove_pad(x):
        return np.ascontiguousarray(x[:H_target, :W_target, ...].copy())

    return np.ascontiguousarray(img_padded), remove_pad


def common_annotator_call(model, tensor_image, **kwargs):
    """utils.py: uint8 by truncation, one image at a time; returns the uint8 results (float = u8 / 255)."""
    outs = []
    for image in tensor_image:
        np_image = np.asarray(image.cpu() * 255.0, dtype=np.uint8)
        outs.append(model(np_image, **kwargs))
    return np.stack(outs)


# ---------------------------------------------------------------- aux detectors
def canny_aux(img, low_threshold=100, high_threshold=200, detect_resolution=512):
    m, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
    m = cv2.Canny(m, low_threshold, high_threshold)
    return HWC3(remove_pad(m))


def xdog_aux(img, thr_a=32, detect_resolution=512):
    img, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
    g1 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(img, dtype=np.uint8)
    result[2 * (255 - dog) > thr_a] = 255  # uint8 arithmetic: 2 * (255 - dog) wraps mod 256
    return HWC3(remove_pad(result))


def lineart_standard_aux(img, guassian_sigma=6.0, intensity_threshold=8, detect_resolution=512):
    img, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
    x = img.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), guassian_sigma)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    intensity /= max(16, np.median(intensity[intensity > intensity_threshold]))
    intensity *= 127
    m = intensity.clip(0, 255).astype(np.uint8)
    return HWC3(remove_pad(m))


def binary_aux(img, bin_threshold=100, detect_resolution=512):
    m, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
    gray = cv2.cvtColor(m, cv2.COLOR_RGB2GRAY)
    if bin_threshold == 0 or bin_threshold == 255:
        _, b = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    else:
        _, b = cv2.threshold(gray, bin_threshold, 255, cv2.THRESH_BINARY_INV)
    m = cv2.cvtColor(b, cv2.COLOR_GRAY2RGB)
    return HWC3(remove_pad(255 - m))


def color_aux(img, detect_resolution=512):
    img = HWC3(img)
    h, w = img.shape[:2]
    if h < w:
        nh, nw = detect_resolution, int(round(w / h * detect_resolution))
    else:
        nw, nh = detect_resolution, int(round(h / w * detect_resolution))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    c = cv2.resize(img, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
    c = cv2.resize(c, (w, h), interpolation=cv2.INTER_NEAREST)
    return HWC3(c)


def make_noise_disk(H, W, C, F, rng):
    noise = rng.uniform(low=0, high=1, size=((H // F) + 2, (W // F) + 2, C))
    noise = cv2.resize(noise, (W + 2 * F, H + 2 * F), interpolation=cv2.INTER_CUBIC)
    noise = noise[F: F + H, F: F + W]
    noise -= np.min(noise)
    noise /= np.max(noise)
    if C == 1:
        noise = noise[:, :, None]
    return noise


def shuffle_aux(img, seed, detect_resolution=512):
    img, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
    H, W, _ = img.shape
    f = 256
    rng = np.random.default_rng(seed)
    x = make_noise_disk(H, W, 1, f, rng) * float(W - 1)
    y = make_noise_disk(H, W, 1, f, rng) * float(H - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    m = cv2.remap(img, flow, None, cv2.INTER_LINEAR)
    return remove_pad(m)


def tile_aux(img, pyrUp_iters=3):
    H, W, _ = img.shape
    H = int(np.round(H / 64.0)) * 64
    W = int(np.round(W / 64.0)) * 64
    m = cv2.resize(img, (W // (2 ** pyrUp_iters), H // (2 ** pyrUp_iters)), interpolation=cv2.INTER_AREA)
    m = HWC3(m)
    for _ in range(pyrUp_iters):
        m = cv2.pyrUp(m)
    return m


def normal_from_depth(img, bg_threshold=0.1, a=np.pi * 2.0, detect_resolution=512):
    """MiDaS annotator normal path (controlnet_aux midas/__init__.py), fed a depth IMAGE:
    depth = channel 0 as float32 0..255 instead of the network's prediction."""
    img, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
    depth = img[:, :, 0].astype(np.float32)
    depth_pt = depth.copy()
    depth_pt -= np.min(depth_pt)
    depth_pt /= np.max(depth_pt)
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    z = np.ones_like(x) * a
    x[depth_pt < bg_threshold] = 0
    y[depth_pt < bg_threshold] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    m = (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
    return remove_pad(m)


# ---------------------------------------------------------------- cv2 primitives (resize, pyrUp, blur)
def main():
    os.makedirs(OUT, exist_ok=True)
    t = {}
    ins = inputs()
    for name, u8 in ins.items():
        t[f"in.{name}"] = u8

    # ComfyUI Canny: 3 images x 2 threshold pairs; edges are 0/1, stored as one uint8 plane.
    for name, u8 in ins.items():
        img = to_comfy(u8)
        for lo, hi in [(0.4, 0.8), (0.15, 0.45)]:
            out = comfy_canny(img, lo, hi)
            assert torch.equal(out[..., 0], out[..., 2])
            t[f"canny.{name}.{lo}_{hi}"] = out[0, :, :, 0].numpy().astype(np.uint8)

    # aux nodes: full node behaviour from the float IMAGE
    cases = {}
    cases["aux_canny.astronaut.r128"] = ("astronaut", lambda i: canny_aux(i, 100, 200, 128))
    cases["aux_canny.coffee.r96"] = ("coffee", lambda i: canny_aux(i, 50, 150, 96))
    cases["aux_canny.coffee.r128"] = ("coffee", lambda i: canny_aux(i, 100, 200, 128))
    cases["xdog.astronaut.r128"] = ("astronaut", lambda i: xdog_aux(i, 32, 128))
    cases["xdog.coffee.r96"] = ("coffee", lambda i: xdog_aux(i, 20, 96))
    cases["lineart_std.astronaut.r128"] = ("astronaut", lambda i: lineart_standard_aux(i, 6.0, 8, 128))
    cases["lineart_std.coffee.r96"] = ("coffee", lambda i: lineart_standard_aux(i, 6.0, 8, 96))
    cases["binary.astronaut.t100"] = ("astronaut", lambda i: binary_aux(i, 100, 128))
    cases["binary.camera.otsu"] = ("camera", lambda i: binary_aux(i, 0, 128))
    cases["binary.coffee.r64"] = ("coffee", lambda i: binary_aux(i, 0, 64))
    cases["color.astronaut.r128"] = ("astronaut", lambda i: color_aux(i, 128))
    cases["color.coffee.r96"] = ("coffee", lambda i: color_aux(i, 96))
    cases["shuffle.astronaut.s42"] = ("astronaut", lambda i: shuffle_aux(i, 42, 128))
    cases["shuffle.coffee.s7"] = ("coffee", lambda i: shuffle_aux(i, 7, 96))
    cases["tile.astronaut.p3"] = ("astronaut", lambda i: tile_aux(i, 3))
    cases["tile.coffee.p2"] = ("coffee", lambda i: tile_aux(i, 2))
    cases["normal.camera.r128"] = ("camera", lambda i: normal_from_depth(i, 0.1, np.pi * 2.0, 128))
    cases["normal.coffee.r96"] = ("coffee", lambda i: normal_from_depth(i, 0.4, np.pi * 2.0, 96))
    for key, (name, fn) in cases.items():
        out = common_annotator_call(fn, to_comfy(ins[name]))[0]
        if out.ndim == 3 and np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2]):
            out = out[..., 0]  # grey result: one plane is enough
        t[key] = np.ascontiguousarray(out)

    # cv2 primitives on uint8, checked on their own
    a = ins["astronaut"]
    c = ins["coffee"]
    t["resize.area.astronaut.96x80"] = cv2.resize(a, (80, 96), interpolation=cv2.INTER_AREA)
    t["resize.area.astronaut.64x64"] = cv2.resize(a, (64, 64), interpolation=cv2.INTER_AREA)
    t["resize.area.coffee.32x48"] = cv2.resize(c, (48, 32), interpolation=cv2.INTER_AREA)
    t["resize.cubic.coffee.150x200"] = cv2.resize(c, (200, 150), interpolation=cv2.INTER_CUBIC)
    t["resize.cubic.astronaut.90x70"] = cv2.resize(a, (70, 90), interpolation=cv2.INTER_CUBIC)
    t["resize.nearest.coffee.150x200"] = cv2.resize(c, (200, 150), interpolation=cv2.INTER_NEAREST)
    t["resize.linear.coffee.150x200"] = cv2.resize(c, (200, 150), interpolation=cv2.INTER_LINEAR)
    t["pyrup.coffee"] = cv2.pyrUp(c)
    t["gray.coffee"] = cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)
    t["otsu.coffee"] = np.array([cv2.threshold(t["gray.coffee"], 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)[0]], dtype=np.float32)
    blur = cv2.GaussianBlur(c.astype(np.float32), (0, 0), 5.0)
    t["blur5.coffee.f32"] = blur.astype(np.float32)
    rng = np.random.default_rng(42)
    t["rng.default_rng42.f64"] = rng.uniform(low=0, high=1, size=(2, 3)).astype(np.float64)

    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, os.path.join(OUT, "preprocess_ref.safetensors"))
    meta = {
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "skimage": skimage.__version__,
    }
    with open(os.path.join(OUT, "preprocess_ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(meta, sum(v.nbytes for v in t.values()))


if __name__ == "__main__":
    main()
