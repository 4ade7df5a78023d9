"""Reference fixtures for Weft's NormalBae annotator (crates/weft-engine/src/annotators/normalbae.rs,
crates/weft-engine/tests/annotators_normalbae.rs, tests/annotators_normalbae.rs).

Run: /tmp/peer-venv/bin/python tools/parity/normalbae_reference.py [--full DIR] [--bench]
Versions used: controlnet-aux 0.0.10 (its NNET, geffnet copy and Decoder), timm 1.0.31, torch 2.15 (CPU),
opencv-python, scikit-image, safetensors.

The network is controlnet_aux.normalbae's NNET: the encoder is geffnet's tf_efficientnet_b5_ap
(TF "same" padding, BN eps 1e-3, swish), whose stage outputs 0, 1, 2, 4 and conv_head's output
(before bn2) feed the decoder; the decoder in eval mode ("test") refines at every pixel (the
uncertainty-guided point sampling is the training branch only). comfyui_controlnet_aux's newer
copy builds the same encoder with timm (`tf_efficientnet_b5.ap_in1k`, the same key names) and
picks the same tensors (its module list lacks the separate act1, hence indices 3,4,5,7,10);
the script checks that (bit-identical features, timm 1.0.31).

Fixture net (tests/fixtures/annotators/normalbae/scannet.pt): the same geffnet builder with
channel multiplier 0.2 and depth multiplier 0.5 (B5 is 1.6 and 2.2), so stage repeats and widths
differ from B5 and Weft has to read them from the weights; the decoder's widths are narrowed too.
NNET's Decoder hardcodes its widths in `forward` (`feat_map.view(B, 512 + 4, -1)`), so the tiny
decoder's forward restates the eval branch with the widths taken from the tensors; the script
checks that restatement against the original Decoder.forward on the full-size net first.
The fixture also holds each case's normals from the same net run in float64, which shows how far
float32 rounding alone moves them (torch's own f32 result differs from it by ~5e-5 to 7e-5).
BN statistics and affine parameters are randomised, and the weights scaled so that the maps
have contrast (checked). Saved as torch.save({"model": state_dict}) with the "module." prefix
that NormalBaeDetector's load_checkpoint strips.

The node (BAE-NormalMapPreprocessor) is reproduced as comfyui_controlnet_aux runs it:
common_annotator_call (uint8 by truncation), resize_image_with_pad(resolution, INTER_CUBIC),
ImageNet normalisation, net, normal[:, :3] -> ((n + 1) * 0.5).clip(0, 1) * 255 -> uint8, HWC3,
remove_pad.

--full DIR writes a full-size random scannet.pt (published layout) into DIR, and
normalbae_full_reference.safetensors (one 64x96 input and the full net's normals) for the engine
test's ignored full-size check (WEFT_NORMALBAE_FULL=DIR cargo test -p weft-engine --test
annotators_normalbae -- --ignored).
--bench prints the PyTorch time of the node's call at 512x512 (full-size net, 2 threads).
"""
import argparse
import os
import sys
import time
import types
from collections import OrderedDict

import cv2
import numpy as np
import skimage.data
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as transforms
from safetensors.numpy import save_file

import controlnet_aux.normalbae.nets.submodules.encoder as enc_mod
from controlnet_aux.normalbae.nets.NNET import NNET
from controlnet_aux.normalbae.nets.submodules.decoder import Decoder
from controlnet_aux.normalbae.nets.submodules.submodules import UpSampleBN, norm_normalize

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from preprocess_reference import common_annotator_call, resize_image_with_pad, HWC3  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "annotators", "normalbae")
REPO = os.path.join(os.path.dirname(enc_mod.__file__), "efficientnet_repo")
sys.path.insert(0, REPO)
from geffnet.gen_efficientnet import _gen_efficientnet  # noqa: E402
from geffnet.efficientnet_builder import BN_EPS_TF_DEFAULT  # noqa: E402


def args():
    a = types.SimpleNamespace()
    a.mode = "client"
    a.architecture = "BN"
    a.pretrained = "scannet"
    a.sampling_ratio = 0.4
    a.importance_ratio = 0.7
    return a


class TinyEncoder(nn.Module):
    """Encoder() with a narrower, shallower tf_efficientnet_b5_ap (same builder, same keys)."""

    def __init__(self):
        super().__init__()
        m = _gen_efficientnet("tf_efficientnet_b5_ap", channel_multiplier=0.2, depth_multiplier=0.5,
                              bn_eps=BN_EPS_TF_DEFAULT, pad_type="same")
        m.global_pool = nn.Identity()
        m.classifier = nn.Identity()
        self.original_model = m

    forward = enc_mod.Encoder.forward


def eval_forward(self, features):
    """Decoder.forward(features, mode='test') with the widths read from the tensors."""
    x_block0, x_block1, x_block2, x_block3, x_block4 = features[4], features[5], features[6], features[8], features[11]
    x_d0 = self.conv2(x_block4)
    x_d1 = self.up1(x_d0, x_block3)
    x_d2 = self.up2(x_d1, x_block2)
    x_d3 = self.up3(x_d2, x_block1)
    x_d4 = self.up4(x_d3, x_block0)
    out_res8 = norm_normalize(self.out_conv_res8(x_d2))
    outs = [out_res8]
    prev = out_res8
    for feat, mlp in [(x_d2, self.out_conv_res4), (x_d3, self.out_conv_res2), (x_d4, self.out_conv_res1)]:
        feat_map = F.interpolate(feat, scale_factor=2, mode="bilinear", align_corners=True)
        init_pred = F.interpolate(prev, scale_factor=2, mode="bilinear", align_corners=True)
        feat_map = torch.cat([feat_map, init_pred], dim=1)
        B, C, H, W = feat_map.shape
        out = norm_normalize(mlp(feat_map.view(B, C, -1))).view(B, 4, H, W)
        outs.append(out)
        prev = out
    return outs


def mlp(cin, hidden):
    return nn.Sequential(nn.Conv1d(cin, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, hidden, 1), nn.ReLU(),
                         nn.Conv1d(hidden, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, 4, 1))


class TinyDecoder(Decoder):
    def __init__(self, chs, head, d=(24, 16, 16, 8), hidden=16):
        nn.Module.__init__(self)
        self.sampling_ratio, self.importance_ratio = 0.4, 0.7
        self.conv2 = nn.Conv2d(head, head, 1)
        self.up1 = UpSampleBN(head + chs[4], d[0])
        self.up2 = UpSampleBN(d[0] + chs[2], d[1])
        self.up3 = UpSampleBN(d[1] + chs[1], d[2])
        self.up4 = UpSampleBN(d[2] + chs[0], d[3])
        self.out_conv_res8 = nn.Conv2d(d[1], 4, 3, padding=1)
        self.out_conv_res4 = mlp(d[1] + 4, hidden)
        self.out_conv_res2 = mlp(d[2] + 4, hidden)
        self.out_conv_res1 = mlp(d[3] + 4, hidden)

    def forward(self, features, **_):
        outs = eval_forward(self, features)
        return outs, None, None


class TinyNNET(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = TinyEncoder()
        blocks = self.encoder.original_model.blocks
        chs = [stage[-1].bn3.num_features if hasattr(stage[-1], "bn3") else stage[-1].bn2.num_features
               for stage in blocks]
        head = self.encoder.original_model.conv_head.out_channels
        self.decoder = TinyDecoder(chs, head)

    forward = NNET.forward


def randomise(model, seed, scale=1.0):
    """Random BN statistics/affine; conv weights scaled so activations neither vanish nor explode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Conv1d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * scale / np.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def save(model, path):
    sd = OrderedDict(("module." + k, v.contiguous()) for k, v in model.state_dict().items())
    torch.save({"model": sd}, path)


NORM = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def net_input(padded):
    x = torch.from_numpy(padded).float() / 255.0
    return NORM(x.permute(2, 0, 1)[None])


def detector(model, trace=None):
    """custom_controlnet_aux NormalBaeDetector.__call__ (the ComfyUI pack's)."""

    def call(input_image, detect_resolution=512):
        padded, remove_pad = resize_image_with_pad(input_image, detect_resolution, "INTER_CUBIC")
        with torch.no_grad():
            x = net_input(padded)
            normal = model(x)[0][-1][:, :3]
            if trace is not None:
                trace.append((padded, normal[0].numpy()))
            normal = ((normal + 1) * 0.5).clip(0, 1)
            normal = normal[0].permute(1, 2, 0).cpu().numpy()
            normal_image = (normal * 255.0).clip(0, 255).astype(np.uint8)
        return remove_pad(HWC3(normal_image))

    return call


def to_comfy(u8):
    return torch.from_numpy(u8.astype(np.float32) / 255.0)[None]


def check_restatement():
    """The tiny decoder's eval_forward equals NNET's own Decoder.forward on the full-size net."""
    torch.manual_seed(0)
    full = randomise(NNET(args()), 1)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = full.encoder(x)
        a = full.decoder(feats)[0]
        b = eval_forward(full.decoder, feats)
    for p, q in zip(a, b):
        assert torch.equal(p, q), "eval_forward differs from Decoder.forward"
    return full


def check_timm_encoder(full):
    """comfyui_controlnet_aux builds the encoder with timm ('tf_efficientnet_b5.ap_in1k',
    num_classes=0) and reads its features 3, 4, 5, 7, 10: the same keys and the same tensors as
    geffnet's features 4, 5, 6, 8, 11."""
    import timm

    t = timm.create_model("tf_efficientnet_b5.ap_in1k", pretrained=False, num_classes=0).eval()
    t.load_state_dict(full.encoder.original_model.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = full.encoder(x)
        pack = [x]
        for k, v in t._modules.items():
            for m in (v._modules.values() if k == "blocks" else [v]):
                pack.append(m(pack[-1]))
    for a, b in zip([4, 5, 6, 8, 11], [3, 4, 5, 7, 10]):
        assert torch.equal(ours[a], pack[b]), "timm's encoder differs from geffnet's"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", metavar="DIR")
    ap.add_argument("--bench", action="store_true")
    opt = ap.parse_args()
    if opt.full or opt.bench:
        torch.manual_seed(0)
        full = randomise(NNET(args()), 1)
        if opt.full:
            os.makedirs(opt.full, exist_ok=True)
            save(full, os.path.join(opt.full, "scannet.pt"))
            # a check of the full-size structure (B5's repeats and widths): the normals of one
            # 64x96 input, for crates/weft-engine/tests/annotators_normalbae.rs's ignored test
            img = cv2.resize(skimage.data.coffee(), (96, 64), interpolation=cv2.INTER_AREA)
            with torch.no_grad():
                normal = full(net_input(img))[0][-1][0, :3].numpy()
            save_file({"input": img, "normal": np.ascontiguousarray(normal)},
                      os.path.join(opt.full, "normalbae_full_reference.safetensors"))
        if opt.bench:
            torch.set_num_threads(2)
            img = cv2.resize(skimage.data.astronaut(), (512, 512), interpolation=cv2.INTER_AREA)
            call = detector(full)
            call(img, 512)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                call(img, 512)
                times.append(time.perf_counter() - t)
            print(f"normalbae 512x512: {np.median(times) * 1000:.0f} ms (median of 3, 2 threads)")
        return

    check_timm_encoder(check_restatement())
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = randomise(TinyNNET(), 2, scale=1.6)
    path = os.path.join(OUT, "scannet.pt")
    save(model, path)

    # the file loads back into the net by NormalBaeDetector's own load_checkpoint
    from controlnet_aux.normalbae import load_checkpoint
    check = load_checkpoint(path, TinyNNET()).eval()

    astro = cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    coffee = cv2.resize(skimage.data.coffee(), (128, 96), interpolation=cv2.INTER_AREA)  # H=96, W=128
    chelsea = cv2.resize(skimage.data.chelsea(), (64, 48), interpolation=cv2.INTER_AREA)  # H=48, W=64
    cases = [("astronaut_r64", astro, 64), ("coffee_r80", coffee, 80), ("chelsea_r96", chelsea, 96)]
    t = {}
    for name, img, res in cases:
        trace = []
        out = common_annotator_call(detector(check, trace), to_comfy(img), detect_resolution=res)[0]
        padded, normal = trace[0]
        t[f"{name}.input"] = img
        t[f"{name}.padded"] = padded
        t[f"{name}.normal"] = np.ascontiguousarray(normal.astype(np.float32))
        # the same net in float64: how far float32 rounding alone moves the normals
        with torch.no_grad():
            exact = check.double()(net_input(padded).double())[0][-1][0, :3].numpy()
            check.float()
        t[f"{name}.normal_f64"] = np.ascontiguousarray(exact.astype(np.float32))
        print(name, "torch f32 vs f64 normals", float(np.abs(exact - normal).max()))
        t[f"{name}.out"] = np.ascontiguousarray(out)
        spread = [int(out[..., c].max()) - int(out[..., c].min()) for c in range(3)]
        print(name, img.shape, "->", out.shape, "per-channel range", spread, "std", float(out.std()))
        assert min(spread) > 60, f"{name}: map without contrast"
    # the end-to-end test's input: the astronaut at 128, resolution 64 (the node's output)
    cv2.imwrite(os.path.join(OUT, "e2e_input.png"), cv2.cvtColor(astro, cv2.COLOR_RGB2BGR))
    save_file(t, os.path.join(OUT, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("params", sum(p.numel() for p in model.parameters()), "fixture bytes", size)


if __name__ == "__main__":
    main()
