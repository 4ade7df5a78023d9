"""Reference fixtures for Weft's line-art annotators (crates/weft-engine/src/annotators/lineart.rs,
crates/weft-engine/tests/annotators_lineart.rs, tests/annotators_lineart.rs).

Run: /tmp/peer-venv/bin/python tools/parity/lineart_reference.py            (CPU, seconds)
     /tmp/peer-venv/bin/python tools/parity/lineart_reference.py --full DIR  (full-size random files)
     /tmp/peer-venv/bin/python tools/parity/lineart_reference.py --bench     (PyTorch timing at 512²)
Needs: torch (2.x), controlnet-aux 0.0.10 (its network classes), opencv, numpy, safetensors,
scikit-image, pillow.

The networks are controlnet_aux's own classes: `lineart.Generator` (sk_model.pth and the coarse
sk_model2.pth: reflection pads, InstanceNorm, two stride-2 convs down, residual blocks, two
transposed convs up, sigmoid) and `lineart_anime.UnetGenerator` (netG.pth: the pix2pix U-Net with
parameter-free InstanceNorm and a tanh). The fixtures are narrowed, with the published key layout:
the Generator with 8 base channels instead of its fixed 64 (its convs are swapped for narrower ones
after building, keeping its forward) and 2 residual blocks instead of 3; the U-Net with ngf=2 and
its published depth of 8. The last conv of each is scaled so that the maps have real contrast
(checked below). netG.pth's keys carry DataParallel's `module.` prefix, which the loaders strip.

The detector calls are the ComfyUI pack's (Fannovel16/comfyui_controlnet_aux,
src/custom_controlnet_aux/lineart{,_anime}/__init__.py), restated here on top of the same
cv2/numpy calls, inside `common_annotator_call` (utils.py):
- LineArtPreprocessor: resize_image_with_pad(resolution, INTER_CUBIC), x/255, the net, (y*255)
  clipped and truncated to uint8, HWC3, remove_pad(255 - map).
- AnimeLineArtPreprocessor: resize_image_with_pad, then cv2.resize INTER_CUBIC to multiples of 256,
  x/127.5 - 1, the net, y*127.5 + 127.5 clipped and truncated to uint8, HWC3, cv2.resize INTER_AREA
  back to the padded size, remove_pad(255 - map).
(PyPI controlnet_aux's own __call__ differs: no padding, an INTER_CUBIC float resize.)

Writes tests/fixtures/annotators/lineart/: sk_model.pth, sk_model2.pth, netG.pth, e2e_input.png and
reference.safetensors: "<case>/input" (uint8 HWC), "<case>/output" (uint8 HWC, the node's result
* 255), "<case>/feed" (uint8 HWC, the image the network gets: padded, and for the anime net resized
to multiples of 256), "<case>/net" (the network's float output on it, [H, W]).
"""
import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn as nn
from einops import rearrange
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from preprocess_reference import HWC3, common_annotator_call, resize_image_with_pad, to_comfy  # noqa: E402

import functools  # noqa: E402

from controlnet_aux.lineart import Generator  # noqa: E402
from controlnet_aux.lineart_anime import UnetGenerator  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "lineart")


# ---------------------------------------------------------------- networks
def generator(width=64, blocks=3):
    """controlnet_aux's Generator(3, 1, blocks) with `width` base channels instead of 64."""
    net = Generator(3, 1, blocks)
    if width != 64:
        for parent in net.modules():
            for name, m in list(parent.named_children()):
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    cin = m.in_channels if m.in_channels == 3 else m.in_channels * width // 64
                    cout = m.out_channels if m.out_channels == 1 else m.out_channels * width // 64
                    kw = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding)
                    if isinstance(m, nn.ConvTranspose2d):
                        kw["output_padding"] = m.output_padding
                    setattr(parent, name, type(m)(cin, cout, **kw))
    return net.eval()


def unet(ngf=64, num_downs=8):
    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return UnetGenerator(3, 1, num_downs, ngf, norm_layer=norm, use_dropout=False).eval()


def scale_last(net, key, factor):
    with torch.no_grad():
        dict(net.named_parameters())[key].mul_(factor)


def save_generator(net, path):
    torch.save(net.state_dict(), path)


def save_unet(net, path):
    # the published netG.pth was saved from a DataParallel wrapper
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)


# ---------------------------------------------------------------- the pack's detector calls
def lineart_call(model):
    def call(img, detect_resolution=512):
        padded, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
        with torch.no_grad():
            image = torch.from_numpy(padded).float() / 255.0
            image = rearrange(image, "h w c -> 1 c h w")
            raw = model(image)[0][0].numpy()
        call.feed = padded
        line = (raw * 255.0).clip(0, 255).astype(np.uint8)
        call.net = raw
        return remove_pad(255 - HWC3(line))

    return call


def anime_call(model):
    def call(img, detect_resolution=512):
        padded, remove_pad = resize_image_with_pad(img, detect_resolution, "INTER_CUBIC")
        H, W, _ = padded.shape
        Hn = 256 * int(np.ceil(float(H) / 256.0))
        Wn = 256 * int(np.ceil(float(W) / 256.0))
        feed = cv2.resize(padded, (Wn, Hn), interpolation=cv2.INTER_CUBIC)
        call.feed = feed
        with torch.no_grad():
            x = torch.from_numpy(feed).float() / 127.5 - 1.0
            x = rearrange(x, "h w c -> 1 c h w")
            raw = model(x)[0, 0].numpy()
        line = (raw * 127.5 + 127.5).clip(0, 255).astype(np.uint8)
        call.net = raw
        mapped = cv2.resize(HWC3(line), (W, H), interpolation=cv2.INTER_AREA)
        return remove_pad(255 - mapped)

    return call


# ---------------------------------------------------------------- fixtures
def inputs():
    astro = cv2.resize(skimage.data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    return astro, coffee


def check_contrast(name, out):
    lo, hi, sd = int(out.min()), int(out.max()), float(out.std())
    print(f"{name}: min {lo} max {hi} std {sd:.1f}")
    assert hi - lo > 100 and sd > 15, f"{name}: degenerate map"


def fixtures():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    fine = generator(8, 2)
    scale_last(fine, "model4.1.weight", 4.0)
    coarse = generator(8, 2)
    scale_last(coarse, "model4.1.weight", 4.0)
    anime = unet(2, 8)
    scale_last(anime, "model.model.3.weight", 3.0)
    save_generator(fine, os.path.join(OUT, "sk_model.pth"))
    save_generator(coarse, os.path.join(OUT, "sk_model2.pth"))
    save_unet(anime, os.path.join(OUT, "netG.pth"))

    astro, coffee = inputs()
    cases = {
        "lineart/astronaut": (lineart_call(fine), astro, 128),
        "lineart/coffee": (lineart_call(fine), coffee, 100),
        "lineart_coarse/coffee": (lineart_call(coarse), coffee, 64),
        "anime/astronaut": (anime_call(anime), astro, 128),
        "anime/coffee": (anime_call(anime), coffee, 100),
    }
    tensors = {}
    for name, (call, img, res) in cases.items():
        out = common_annotator_call(call, to_comfy(img), detect_resolution=res)[0]
        check_contrast(name, out)
        tensors[f"{name}/input"] = np.ascontiguousarray(img)
        tensors[f"{name}/output"] = np.ascontiguousarray(out)
        tensors[f"{name}/feed"] = np.ascontiguousarray(call.feed)
        tensors[f"{name}/net"] = np.ascontiguousarray(call.net.astype(np.float32))
        tensors[f"{name}/resolution"] = np.array([res], dtype=np.int64)

    # end to end: LoadImage of this PNG -> LineArtPreprocessor (coarse) / AnimeLineArtPreprocessor
    Image.fromarray(coffee).save(os.path.join(OUT, "e2e_input.png"))
    tensors["e2e/lineart_coarse"] = common_annotator_call(
        lineart_call(coarse), to_comfy(coffee), detect_resolution=128)[0]
    tensors["e2e/anime"] = common_annotator_call(
        anime_call(anime), to_comfy(coffee), detect_resolution=128)[0]
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


def full(directory):
    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(0)
    save_generator(generator(), os.path.join(directory, "sk_model.pth"))
    save_generator(generator(), os.path.join(directory, "sk_model2.pth"))
    save_unet(unet(), os.path.join(directory, "netG.pth"))
    print(f"wrote sk_model.pth, sk_model2.pth, netG.pth in {directory}")


def bench():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
    image = to_comfy(img)
    for name, call in [("LineArtPreprocessor", lineart_call(generator())),
                       ("AnimeLineArtPreprocessor", anime_call(unet()))]:
        common_annotator_call(call, image, detect_resolution=512)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            common_annotator_call(call, image, detect_resolution=512)
            times.append(time.perf_counter() - t)
        print(f"{name} 512x512: {statistics.median(times) * 1000:.0f} ms (median of 3, 2 threads)")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--full", metavar="DIR")
    p.add_argument("--bench", action="store_true")
    a = p.parse_args()
    if a.full:
        full(a.full)
    elif a.bench:
        bench()
    else:
        fixtures()
