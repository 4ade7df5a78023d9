"""Reference fixtures for Weft's upscale models (crates/weft-engine/src/upscale/,
tests/engine/upscale_parity.rs, tests/upscale_nodes.rs).

Run: /tmp/peer-venv/bin/python tools/parity/upscale_reference.py   (deterministic, CPU, seconds)
Needs: torch, spandrel (0.4.2 was used), safetensors, numpy, pillow.

What it does:
- Builds tiny random-weight models (torch's default init, fixed seed) with spandrel's own
  architecture classes: ESRGAN/RRDBNet with nf=8, nb=1 and a growth of gc=4 (spandrel fixes gc=32,
  which would make each file ~1 MB; the script passes 4 through spandrel's RRDB block so that its
  loader builds the same net), at scales 1, 2, 4 and 8, and Real-ESRGAN's pixel-unshuffle 2x and
  1x variants; SRVGGNetCompact (num_feat=8, num_conv=2) at scales 2 and 4; SwinIR (embed_dim 12,
  window 4, training size 16, two residual groups of two blocks) with each head: classical
  (pixel shuffle, 2x), lightweight (one pixel shuffle, 3x, "3conv" residuals), real-world
  (nearest+conv, 4x), and none (restoration, 7-pixel windows: img_range 255, one group).
  SwinIR's classical and real-world heads fix num_feat=64 (~600 KB of weights); the script
  swaps those heads for the same layers with num_feat=8 after building the net, so those two
  files are loaded here by building the net the same way and wrapping it in spandrel's
  ImageModelDescriptor with SwinIR's size requirements (spandrel's loader would build 64).
- Saves each in the key layout it is named for: "old" (model.0, model.1.sub.N.RDB1.conv1.0, …),
  "new" (Real-ESRGAN's conv_first, body.N.rdb1.conv1, conv_body, conv_up1, conv_hr, conv_last),
  "bsrgan" (RRDB_trunk, trunk_conv, upconv1, HRconv), ESRGAN+'s (the old names and conv1x1), as .pth (torch.save, some wrapped in
  {"params_ema": …}) or .safetensors, in tests/fixtures/upscale/.
- Loads every file back with spandrel's ModelLoader (what ComfyUI's UpscaleModelLoader does),
  checks the scale it detects, and writes reference.safetensors:
  "<model>/small" = descriptor(image_small) (spandrel pads to the size requirements, clamps to
  0..1 and crops), and for three models "<model>/tiled" = ComfyUI's comfy.utils.tiled_scale
  (unet_vae_reference.py restates it) with tile 12, overlap 4 on image_tiled.
- For the end-to-end test: e2e_input.png (an RGB PNG), and "e2e/out" = ImageUpscaleWithModel's
  result for esrgan_old_x4.pth on that PNG as LoadImage reads it ([1, H, W, 3], u8 / 255), i.e.
  tiled_scale with tile 512 (one tile), clamped.
- evil.pth: a torch.save'd file whose pickle calls os.system (a harmless echo) when unpickled;
  Weft's pickle guard must refuse it before anything reads it.
- unknown_keys.safetensors: tensors no upscale architecture has.
"""
import json
import os
import re
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import spandrel
from spandrel import ModelLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet_vae_reference import tiled_scale as comfy_tiled_scale  # noqa: E402
from spandrel.architectures.__arch_helpers import block as B
from spandrel import ImageModelDescriptor, SizeRequirements
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR, SwinIRArch
from spandrel.architectures.SwinIR.__arch.SwinIR import Upsample

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "upscale")

GROWTH = 4
_rrdb = B.RRDB


def _small_growth_rrdb(*args, **kwargs):
    kwargs["gc"] = GROWTH
    return _rrdb(*args, **kwargs)


# spandrel's RRDBNet builds its blocks with gc=32; the fixtures use gc=4 (see the docstring).
B.RRDB = _small_growth_rrdb


def old_to_new(sd, num_blocks, n_up):
    """spandrel's old ESRGAN names -> Real-ESRGAN's names (the inverse of spandrel's map)."""
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k)
        if m:
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
            continue
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", k)
        if m and int(m[1]) == num_blocks:
            out[f"conv_body.{m[2]}"] = v
            continue
        m = re.fullmatch(r"model\.(\d+)\.(weight|bias)", k)
        i, kind = int(m[1]), m[2]
        if i == 0:
            out[f"conv_first.{kind}"] = v
        elif i == 3 * n_up + 2:
            out[f"conv_hr.{kind}"] = v
        elif i == 3 * n_up + 4:
            out[f"conv_last.{kind}"] = v
        else:
            assert i % 3 == 0, k
            out[f"conv_up{i // 3}.{kind}"] = v
    return out


def new_to_bsrgan(sd):
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^body\.(\d+)\.rdb(\d)", r"RRDB_trunk.\1.RDB\2", k)
        k = k.replace("conv_body.", "trunk_conv.").replace("conv_hr.", "HRconv.")
        k = re.sub(r"^conv_up(\d)", r"upconv\1", k)
        out[k] = v
    return out


def esrgan(scale, in_nc=3, shuffle=None, seed=0, plus=False):
    torch.manual_seed(seed)
    net = ESRGAN(in_nc=in_nc, out_nc=3, num_filters=8, num_blocks=1, scale=scale,
                 shuffle_factor=shuffle, plus=plus)
    sd = net.state_dict()
    # Centre the output on grey and widen it, so that few values are clamped away.
    last = max(int(k.split(".")[1]) for k in sd if re.fullmatch(r"model\.\d+\.weight", k))
    sd[f"model.{last}.weight"] *= 8
    sd[f"model.{last}.bias"] += 0.5
    return {k: v.contiguous() for k, v in sd.items()}


def compact(scale, seed=0):
    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    sd = net.state_dict()
    # PReLU slopes start at 0.25 everywhere; spread them so a wrong channel order shows.
    for k in sd:
        if sd[k].dim() == 1 and sd[k].shape[0] == 8 and "weight" in k:
            sd[k] = torch.rand(8) * 0.5
    return {k: v.contiguous() for k, v in sd.items()}


SWIN_FEAT = 8


def swinir(upsampler, scale, window=4, depths=(2, 2), heads=(2, 3), resi="1conv", seed=0):
    """A tiny SwinIR; returns (net, whether spandrel's loader can build it)."""
    torch.manual_seed(seed)
    net = SwinIR(img_size=16 if window == 4 else 14, in_chans=3, embed_dim=12, depths=list(depths),
                 num_heads=list(heads), window_size=window, mlp_ratio=2.0, upscale=scale,
                 img_range=255.0 if window == 7 else 1.0, upsampler=upsampler,
                 resi_connection=resi)
    if upsampler in ("pixelshuffle", "nearest+conv"):
        nf = SWIN_FEAT
        net.conv_before_upsample[0] = torch.nn.Conv2d(12, nf, 3, 1, 1)
        net.conv_last = torch.nn.Conv2d(nf, 3, 3, 1, 1)
        if upsampler == "pixelshuffle":
            net.upsample = Upsample(scale, nf)
        else:
            for i in range(1, scale.bit_length()):
                setattr(net, f"conv_up{i}", torch.nn.Conv2d(nf, nf, 3, 1, 1))
            net.conv_hr = torch.nn.Conv2d(nf, nf, 3, 1, 1)
        # Widen the output so that the comparison sees its detail.
        net.conv_last.weight.data *= 8
    # Relative position tables start at zero-ish; make them matter.
    for name, p in net.named_parameters():
        if "relative_position_bias_table" in name:
            p.data.normal_(0, 0.5)
    return net.eval()


def swinir_models():
    """name -> (net, ext, scale, whether spandrel's loader builds it)."""
    return {
        "swinir_classical_x2": (swinir("pixelshuffle", 2, seed=9), "pth", 2, False),
        "swinir_lightweight_x3": (swinir("pixelshuffledirect", 3, resi="3conv", seed=10),
                                  "safetensors", 3, True),
        "swinir_realworld_x4": (swinir("nearest+conv", 4, seed=11), "safetensors", 4, False),
        "swinir_restore_x1": (swinir("", 1, window=7, depths=(2,), heads=(3,), seed=12), "pth", 1,
                              True),
    }


def log2(n):
    return n.bit_length() - 1


def models():
    """name -> (state dict as saved, file extension, wrap in params_ema, scale ComfyUI uses)."""
    m = {}
    m["esrgan_old_x4"] = (esrgan(4, seed=1), "pth", False, 4)
    m["esrgan_old_x1"] = (esrgan(1, seed=2), "safetensors", False, 1)
    m["esrgan_new_x8"] = (old_to_new(esrgan(8, seed=3), 1, 3), "safetensors", False, 8)
    # Real-ESRGAN x2/x1: pixel-unshuffle by 2/4, then the 4x net.
    m["esrgan_new_x2"] = (old_to_new(esrgan(4, in_nc=12, shuffle=2, seed=4), 1, 2), "pth", True, 2)
    m["esrgan_new_x1"] = (old_to_new(esrgan(4, in_nc=48, shuffle=4, seed=5), 1, 2), "safetensors",
                          False, 1)
    m["esrgan_bsrgan_x2"] = (new_to_bsrgan(old_to_new(esrgan(2, seed=6), 1, 1)), "pth", False, 2)
    m["esrgan_plus_x2"] = (esrgan(2, seed=13, plus=True), "safetensors", False, 2)
    m["compact_x2"] = (compact(2, seed=7), "safetensors", False, 2)
    m["compact_x4"] = (compact(4, seed=8), "pth", False, 4)
    return m


def tiled_scale(samples, function, tile, overlap, scale):
    """comfy/utils.py tiled_scale: unet_vae_reference.py's restatement of tiled_scale_multidim.

    Current ComfyUI also adds a last tile at `size - tile` when the others end short of the edge;
    with tile > overlap they never do, so the two agree."""
    return comfy_tiled_scale(samples, function, (tile, tile), overlap, scale, 3, False)


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    image_small = torch.rand(1, 3, 7, 5, generator=g)
    image_tiled = torch.rand(1, 3, 14, 22, generator=g)
    ref = {"image_small": image_small, "image_tiled": image_tiled}
    manifest = {}
    with torch.inference_mode():
        for name, (sd, ext, wrap, scale) in models().items():
            path = os.path.join(OUT, f"{name}.{ext}")
            if ext == "pth":
                torch.save({"params_ema": sd} if wrap else sd, path)
            else:
                save_file(sd, path)
            desc = ModelLoader().load_from_file(path)
            assert desc.scale == scale, (name, desc.scale)
            ref[f"{name}/small"] = desc(image_small).contiguous()
            if name in ("esrgan_old_x4", "esrgan_new_x2", "compact_x2"):
                ref[f"{name}/tiled"] = tiled_scale(image_tiled, desc, 12, 4, desc.scale)
            manifest[name] = {"file": os.path.basename(path), "scale": scale,
                              "architecture": desc.architecture.id, "tags": desc.tags,
                              "bytes": os.path.getsize(path)}

        for name, (net, ext, scale, loadable) in swinir_models().items():
            path = os.path.join(OUT, f"{name}.{ext}")
            sd = {k: v.contiguous() for k, v in net.state_dict().items()}
            if ext == "pth":
                torch.save({"params": sd}, path)
            else:
                save_file(sd, path)
            if loadable:
                desc = ModelLoader().load_from_file(path)
                assert desc.scale == scale, (name, desc.scale)
            else:
                desc = ImageModelDescriptor(net, sd, architecture=SwinIRArch(), purpose="SR",
                                            tags=[], supports_half=False, supports_bfloat16=True,
                                            scale=scale, input_channels=3, output_channels=3,
                                            size_requirements=SizeRequirements(minimum=16))
            ref[f"{name}/small"] = desc(image_small).contiguous()
            manifest[name] = {"file": os.path.basename(path), "scale": scale,
                              "architecture": "SwinIR", "spandrel_loader": loadable,
                              "bytes": os.path.getsize(path)}

        # End to end: the PNG LoadImage reads, through ImageUpscaleWithModel (tile 512: one tile).
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(OUT, "e2e_input.png"))
        image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]
        desc = ModelLoader().load_from_file(os.path.join(OUT, "esrgan_old_x4.pth"))
        s = tiled_scale(image.movedim(-1, -3), desc, 512, 32, desc.scale)
        ref["e2e/out"] = torch.clamp(s.movedim(-3, -1), 0, 1).contiguous()

    save_file(ref, os.path.join(OUT, "reference.safetensors"))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo weft-upscale-test-payload",))

    torch.save({"model.0.weight": Payload()}, os.path.join(OUT, "evil.pth"))
    save_file({"encoder.layer.0.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)},
              os.path.join(OUT, "unknown_keys.safetensors"))

    manifest["versions"] = {"torch": torch.__version__, "spandrel": spandrel.__version__}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
