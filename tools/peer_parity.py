#!/usr/bin/env python3
"""Runs the same API graphs on a real ComfyUI (the comfy-peer of ../shared/comfy-peer) and on Weft,
and prints the largest and mean pixel difference of each case.

Not part of CI: it needs both servers running with the same model files under the same names
(the peer's `sd15-random.safetensors`, `lora-random.safetensors`, `controlnet-random.safetensors`,
and with --sdxl `sdxl-base-random.safetensors` and `sdxl-controlnet-random.safetensors`, which
`tools/make_peer_sdxl_controlnet.py` writes, and in `models/hypernetworks/` the
`hypernetwork-random.pt` that `tools/make_peer_hypernetwork.py` writes). Every graph is 64x64 and a few steps, so a case
takes about a minute on 2 cores (a release build of Weft is faster than a debug one).

    python tools/peer_parity.py --peer http://127.0.0.1:8188 --weft http://127.0.0.1:8190
    python tools/peer_parity.py --only 'sde|controlnet' --json results.json

Needs numpy and pillow (the peer's venv has them). Cases run one at a time, peer then Weft, so the
two do not compete for the CPU.
"""
import argparse
import copy
import io
import json
import random
import re
import sys
import time
import urllib.parse
import urllib.request
import uuid

import numpy as np
from PIL import Image

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
            "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "uni_pc", "uni_pc_bh2", "lcm"]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]
SDE = ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"]


def default_graph(ckpt="sd15-random.safetensors", prefix="parity"):
    """ComfyUI's default graph at 64x64, 4 steps, seed 42."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 4, "cfg": 7.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a glass bottle on a beach, purple galaxy", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def with_sampler(sampler, scheduler, seed=42):
    g = default_graph()
    g["3"]["inputs"].update({"sampler_name": sampler, "scheduler": scheduler, "seed": seed})
    return g


def controlnet(kind):
    g = default_graph()
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "parity_hint.png"}}
    g["12"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "controlnet-random.safetensors"}}
    old = lambda cond, strength: {"class_type": "ControlNetApply", "inputs": {
        "conditioning": cond, "control_net": ["12", 0], "image": ["11", 0], "strength": strength}}
    adv = lambda pos, neg, strength, start, end: {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": pos, "negative": neg, "control_net": ["12", 0], "image": ["11", 0], "strength": strength,
        "start_percent": start, "end_percent": end}}
    if kind == "old":
        g["13"] = old(["6", 0], 1.0)
        g["3"]["inputs"]["positive"] = ["13", 0]
    elif kind == "advanced-window":
        g["13"] = adv(["6", 0], ["7", 0], 0.8, 0.2, 0.8)
        g["3"]["inputs"].update({"positive": ["13", 0], "negative": ["13", 1]})
    elif kind == "stacked":
        g["13"] = old(["6", 0], 1.0)
        g["14"] = old(["13", 0], 0.5)
        g["3"]["inputs"]["positive"] = ["14", 0]
    elif kind == "mixed-dpmpp_2m":
        g["13"] = old(["6", 0], 1.0)
        g["14"] = adv(["13", 0], ["7", 0], 0.6, 0.0, 0.5)
        g["3"]["inputs"].update({"positive": ["14", 0], "negative": ["14", 1], "sampler_name": "dpmpp_2m",
                                 "scheduler": "karras"})
    return g


def lora():
    g = default_graph()
    g["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
               "lora_name": "lora-random.safetensors", "strength_model": 0.8, "strength_clip": 0.6}}
    g["3"]["inputs"]["model"] = ["10", 0]
    for node in ("6", "7"):
        g[node]["inputs"]["clip"] = ["10", 1]
    return g


def img2img(inpaint=False):
    g = default_graph()
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "parity_hint.png"}}
    if inpaint:
        g["12"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["11", 0], "vae": ["4", 2],
                   "mask": ["11", 1], "grow_mask_by": 6}}
        g["3"]["inputs"]["denoise"] = 1.0
    else:
        g["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
        g["3"]["inputs"]["denoise"] = 0.6
    g["3"]["inputs"]["latent_image"] = ["12", 0]
    return g


def sdxl():
    g = default_graph("sdxl-base-random.safetensors")
    g["5"]["inputs"].update({"width": 64, "height": 64})
    return g


def sdxl_controlnet():
    """An SDXL ControlNet (diffusers layout) on the SDXL base, strong enough to move pixels by
    tens of levels: strength 4 over the first 75% of the steps."""
    g = sdxl()
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "parity_hint.png"}}
    g["12"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "sdxl-controlnet-random.safetensors"}}
    g["13"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["12", 0], "image": ["11", 0],
        "strength": 4.0, "start_percent": 0.0, "end_percent": 0.75}}
    g["3"]["inputs"].update({"positive": ["13", 0], "negative": ["13", 1], "sampler_name": "dpmpp_2m",
                             "scheduler": "karras"})
    return g


def patched(*patches):
    """The default graph with MODEL patch nodes chained between the loader and the sampler; each
    patch is (class_type, inputs without `model`)."""
    g = default_graph()
    model = ["4", 0]
    for i, (class_type, inputs) in enumerate(patches):
        node = str(20 + i)
        g[node] = {"class_type": class_type, "inputs": {**inputs, "model": model}}
        model = [node, 0]
    g["3"]["inputs"]["model"] = model
    return g


def latent_ops():
    """Latent maths and transforms between the sampler and the decode, at 128x128 (LatentCrop's
    smallest crop is 64)."""
    g = default_graph()
    g["5"]["inputs"].update({"width": 128, "height": 128})
    g["20"] = {"class_type": "LatentFlip", "inputs": {"samples": ["3", 0], "flip_method": "x-axis: vertically"}}
    g["21"] = {"class_type": "LatentRotate", "inputs": {"samples": ["20", 0], "rotation": "90 degrees"}}
    g["22"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["21", 0], "multiplier": 0.8}}
    g["23"] = {"class_type": "LatentInterpolate", "inputs": {"samples1": ["22", 0], "samples2": ["3", 0], "ratio": 0.3}}
    g["24"] = {"class_type": "LatentAdd", "inputs": {"samples1": ["23", 0], "samples2": ["21", 0]}}
    g["25"] = {"class_type": "LatentSubtract", "inputs": {"samples1": ["24", 0], "samples2": ["22", 0]}}
    g["26"] = {"class_type": "LatentCrop", "inputs": {"samples": ["25", 0], "width": 64, "height": 72, "x": 16, "y": 24}}
    g["27"] = {"class_type": "SolidMask", "inputs": {"value": 0.7, "width": 24, "height": 24}}
    g["28"] = {"class_type": "LatentCompositeMasked", "inputs": {"destination": ["3", 0], "source": ["26", 0],
               "x": 8, "y": 16, "resize_source": False, "mask": ["27", 0]}}
    g["8"]["inputs"]["samples"] = ["28", 0]
    return g


def image_ops():
    """Image filters, masks and compositing after the decode."""
    g = default_graph()
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "parity_hint.png"}}
    g["20"] = {"class_type": "ImageBlur", "inputs": {"image": ["8", 0], "blur_radius": 3, "sigma": 1.0}}
    g["21"] = {"class_type": "ImageSharpen", "inputs": {"image": ["20", 0], "sharpen_radius": 1, "sigma": 1.0, "alpha": 0.8}}
    g["22"] = {"class_type": "ImageBlend", "inputs": {"image1": ["21", 0], "image2": ["11", 0], "blend_factor": 0.4,
               "blend_mode": "overlay"}}
    g["23"] = {"class_type": "ImageQuantize", "inputs": {"image": ["22", 0], "colors": 16, "dither": "floyd-steinberg"}}
    g["24"] = {"class_type": "ImageToMask", "inputs": {"image": ["11", 0], "channel": "red"}}
    g["25"] = {"class_type": "ThresholdMask", "inputs": {"mask": ["24", 0], "value": 0.5}}
    g["26"] = {"class_type": "GrowMask", "inputs": {"mask": ["25", 0], "expand": 2, "tapered_corners": True}}
    g["27"] = {"class_type": "FeatherMask", "inputs": {"mask": ["26", 0], "left": 4, "top": 6, "right": 8, "bottom": 2}}
    g["28"] = {"class_type": "MaskComposite", "inputs": {"destination": ["27", 0], "source": ["11", 1], "x": 4, "y": 4,
               "operation": "multiply"}}
    g["29"] = {"class_type": "ImageCompositeMasked", "inputs": {"destination": ["8", 0], "source": ["23", 0], "x": 0,
               "y": 0, "resize_source": False, "mask": ["28", 0]}}
    g["9"]["inputs"]["images"] = ["29", 0]
    return g


def hires_fix_bislerp():
    """A hires fix: the latent upscaled 1.5x with bislerp, then sampled again at denoise 0.5."""
    g = default_graph()
    g["20"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "bislerp",
               "scale_by": 1.5}}
    g["21"] = {"class_type": "KSampler", "inputs": {**g["3"]["inputs"], "latent_image": ["20", 0], "denoise": 0.5}}
    g["8"]["inputs"]["samples"] = ["21", 0]
    return g


def inpaint_model_conditioning():
    """InpaintModelConditioning on a 4-channel model: the concat image is unused, the noise mask
    inpaints."""
    g = default_graph()
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "parity_hint.png"}}
    g["20"] = {"class_type": "InpaintModelConditioning", "inputs": {"positive": ["6", 0], "negative": ["7", 0],
               "vae": ["4", 2], "pixels": ["11", 0], "mask": ["11", 1], "noise_mask": True}}
    g["3"]["inputs"].update({"positive": ["20", 0], "negative": ["20", 1], "latent_image": ["20", 2]})
    return g


def merged_with_lora():
    """ModelMergeSimple of the LoRA-patched model with the plain one."""
    g = lora()
    g["20"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["10", 0], "model2": ["4", 0], "ratio": 0.4}}
    g["3"]["inputs"]["model"] = ["20", 0]
    return g


def node_cases():
    """Graphs of ComfyUI's core nodes beyond the default graph's (issue 17's check)."""
    perp_neg = patched(("PerpNeg", {"empty_conditioning": ["30", 0], "neg_scale": 1.0}))
    perp_neg["30"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}
    # At 64x64 the deepest blocks are 1x1, where FreeU_V2's min-max rescaling is 0/0: ComfyUI's
    # latents are NaN there too, so the case runs at 128x128.
    freeu_v2 = patched(("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}))
    freeu_v2["5"]["inputs"].update({"width": 128, "height": 128})
    # ToMe merges only at the full-resolution level; 128x128 gives it 256 tokens to draw cells for.
    tome = patched(("TomePatchModel", {"ratio": 1.0}))
    tome["5"]["inputs"].update({"width": 128, "height": 128})
    hypernetwork = patched(("HypernetworkLoader", {"hypernetwork_name": "hypernetwork-random.pt", "strength": 0.7}))
    return [
        ("nodes FreeU + RescaleCFG", patched(("FreeU", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
                                             ("RescaleCFG", {"multiplier": 0.7}))),
        ("nodes FreeU_V2 128x128", freeu_v2),
        ("nodes SelfAttentionGuidance", patched(("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}))),
        ("nodes PerpNeg", perp_neg),
        ("nodes TomePatchModel 1.0 128x128", tome),
        ("nodes HypernetworkLoader 0.7 (dropout)", hypernetwork),
        ("nodes ModelSamplingDiscrete v_prediction zsnr", patched(("ModelSamplingDiscrete", {"sampling": "v_prediction",
                                                                                           "zsnr": True}))),
        ("nodes PatchModelAddDownscale", patched(("PatchModelAddDownscale", {
            "block_number": 3, "downscale_factor": 2.0, "start_percent": 0.0, "end_percent": 0.35,
            "downscale_after_skip": True, "downscale_method": "bicubic", "upscale_method": "bicubic"}))),
        ("nodes ModelSamplingContinuousEDM v_prediction", patched(("ModelSamplingContinuousEDM", {
            "sampling": "v_prediction", "sigma_max": 120.0, "sigma_min": 0.002}))),
        ("nodes InpaintModelConditioning", inpaint_model_conditioning()),
        ("nodes ModelMergeSimple 0.4 (LoRA-patched, plain)", merged_with_lora()),
        ("nodes latent flip/rotate/maths/crop/composite", latent_ops()),
        ("nodes LatentUpscaleBy bislerp 1.5 hires fix", hires_fix_bislerp()),
        ("nodes image blur/sharpen/blend/quantize, masks, composite", image_ops()),
    ]


def cases(full, with_sdxl):
    """(name, graph) for every case."""
    out = []
    if full:
        out += [(f"sampler {s} {k}", with_sampler(s, k)) for s in SAMPLERS for k in SCHEDULERS]
    else:
        out += [(f"sampler {s} karras", with_sampler(s, "karras")) for s in SAMPLERS]
        out += [(f"scheduler euler {k}", with_sampler("euler", k)) for k in SCHEDULERS if k != "karras"]
    out += [(f"sde {s} normal seed {seed}", with_sampler(s, "normal", seed)) for s in SDE for seed in (0, 123, 2**64 - 1)]
    out += [(f"controlnet {k}", controlnet(k)) for k in ("old", "advanced-window", "stacked", "mixed-dpmpp_2m")]
    out += [("lora", lora()), ("img2img", img2img()), ("inpaint", img2img(inpaint=True))]
    out += node_cases()
    if with_sdxl:
        out += [("sdxl base", sdxl()), ("sdxl controlnet (diffusers layout) 4.0, window 0-0.75", sdxl_controlnet())]
    return out


def request(url, data=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def upload(server, name, png):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    request(f"{server}/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def run(server, graph, timeout):
    """Queues `graph`, waits for it, returns (the first output image as an array, seconds)."""
    started = time.time()
    body = json.dumps({"prompt": graph, "client_id": uuid.uuid4().hex}).encode()
    answer = json.loads(request(f"{server}/prompt", body, {"Content-Type": "application/json"}))
    prompt_id = answer["prompt_id"]
    while time.time() - started < timeout:
        history = json.loads(request(f"{server}/history/{prompt_id}"))
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
            if entry["status"].get("status_str") != "success":
                raise RuntimeError(json.dumps(entry["status"])[:600])
            image = entry["outputs"]["9"]["images"][0]
            query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                            "type": image["type"]})
            png = request(f"{server}/view?{query}")
            return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int), time.time() - started
        time.sleep(0.25)
    raise TimeoutError(f"{server}: prompt {prompt_id} did not finish in {timeout} s")


def hint_png():
    """A 64x64 RGBA test image (noise, with an alpha hole for the inpaint case), the same each run."""
    rng = random.Random(1)
    pixels = np.array([[rng.randrange(256) for _ in range(3)] for _ in range(64 * 64)], dtype=np.uint8)
    alpha = np.full((64, 64), 255, dtype=np.uint8)
    alpha[16:48, 16:48] = 0
    rgba = np.concatenate([pixels.reshape(64, 64, 3), alpha[..., None]], axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default="http://127.0.0.1:8188")
    ap.add_argument("--weft", default="http://127.0.0.1:8190")
    ap.add_argument("--only", help="regular expression on case names")
    ap.add_argument("--full", action="store_true", help="every sampler with every scheduler")
    ap.add_argument("--sdxl", action="store_true", help="add the SDXL base and SDXL ControlNet cases")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    png = hint_png()
    for server in (args.peer, args.weft):
        upload(server, "parity_hint.png", png)
    results = []
    print(f"{'case':44} {'max':>7} {'mean':>8} {'peer s':>7} {'weft s':>7}")
    for name, graph in cases(args.full, args.sdxl):
        if args.only and not re.search(args.only, name):
            continue
        row = {"case": name}
        try:
            ref, row["peer_s"] = run(args.peer, copy.deepcopy(graph), args.timeout)
            out, row["weft_s"] = run(args.weft, copy.deepcopy(graph), args.timeout)
            diff = np.abs(ref - out)
            row.update(max=int(diff.max()), mean=float(diff.mean()))
            print(f"{name:44} {row['max']:>4}/255 {row['mean']:>8.4f} {row['peer_s']:>7.1f} {row['weft_s']:>7.1f}", flush=True)
        except Exception as e:  # one broken case must not hide the others
            row["error"] = str(e)
            print(f"{name:44} error: {e}", flush=True)
        results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    worst = max((r.get("max", 0) for r in results), default=0)
    print(f"# {len(results)} cases, worst {worst}/255, {sum('error' in r for r in results)} errors")
    sys.exit(1 if worst > 2 or any("error" in r for r in results) else 0)


if __name__ == "__main__":
    main()
