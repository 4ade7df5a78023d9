"""Reference fixtures for Weft's model merging and LoRA extraction (crates/weft-engine/src/merge/,
tests/engine/merge_parity.rs).

Run: /tmp/peer-venv/bin/python tools/parity/model_merging_reference.py   (deterministic, CPU, seconds)
Needs: torch, safetensors.

What it does:
- Makes two small weight maps under ComfyUI's LDM UNet names (model1 partly f16, one key with a
  shape model2 does not share, one key only model2 has) and merges them with a transcription of
  ComfyUI's code: the node functions of comfy_extras/nodes_model_merging.py and
  nodes_model_merging_model_specific.py (add_patches(patch, strength_patch, strength_model)),
  and ModelPatcher.calculate_weight's "diff" patch on f32 weights, cast back to the weight's dtype
  as patch_model does.
- LoRA extraction (comfy_extras/nodes_lora_extract.py extract_lora): for a linear and a conv
  difference, the rank-r product U[:, :r] diag(S[:r]) Vh[:r] before the clamp (the factors' signs
  are LAPACK's choice, so the clamp itself is checked through torch.quantile on fixed values).
- inputs.safetensors: "model1/<key>", "model2/<key>", "diff/<name>", "quantile/values";
  expected.safetensors: "<case>/<key>" merged weights, "svd/<name>/r<rank>" products,
  "quantile/result"; cases.json: each case's node and inputs.
"""
import json
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "model_merging")

torch.manual_seed(0)
KEYS = {
    "time_embed.0.weight": (8, 4),
    "label_emb.0.0.weight": (8, 6),
    "input_blocks.0.0.weight": (4, 4, 3, 3),
    "input_blocks.1.1.proj_in.weight": (4, 4, 1, 1),
    "input_blocks.10.0.in_layers.0.weight": (4,),
    "input_blocks.11.0.out_layers.3.bias": (4,),
    "middle_block.1.transformer_blocks.0.attn1.to_q.weight": (4, 4),
    "output_blocks.2.1.conv.weight": (4, 4, 3, 3),
    "output_blocks.11.1.norm.bias": (4,),
    "out.2.weight": (4, 4, 3, 3),
}
HALF = {"middle_block.1.transformer_blocks.0.attn1.to_q.weight", "out.2.weight"}

model1 = {}
model2 = {}
for k, shape in KEYS.items():
    model1[k] = torch.randn(shape)
    model2[k] = torch.randn(shape)
    if k in HALF:
        model1[k] = model1[k].half()
model2["input_blocks.0.0.weight"] = torch.randn(4, 5, 3, 3)  # another shape: skipped
model2["extra.weight"] = torch.randn(3)  # model1 lacks it: ignored


class Patcher:
    """The parts of ComfyUI's ModelPatcher a merge uses, keys under "diffusion_model."."""

    def __init__(self, sd):
        self.sd = {"diffusion_model." + k: v for k, v in sd.items()}
        self.patches = {}

    def clone(self):
        c = Patcher({})
        c.sd = self.sd
        c.patches = {k: list(v) for k, v in self.patches.items()}
        return c

    def get_key_patches(self, prefix):
        return {k: (v,) for k, v in self.sd.items() if k.startswith(prefix)}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        for k in patches:
            if k in self.sd:
                self.patches.setdefault(k, []).append((strength_patch, patches[k], strength_model))

    def patched(self):
        out = {}
        for k, w in self.sd.items():
            if k not in self.patches:
                out[k] = w
                continue
            weight = w.float().clone()
            for alpha, v, strength_model in self.patches[k]:
                if strength_model != 1.0:
                    weight *= strength_model
                w1 = v[0]
                if alpha != 0.0 and w1.shape == weight.shape:
                    weight += alpha * w1.to(weight.dtype)
            out[k] = weight.to(w.dtype)
        return {k[len("diffusion_model."):]: v for k, v in out.items()}


def merge_simple(m1, m2, ratio):
    m = m1.clone()
    kp = m2.get_key_patches("diffusion_model.")
    for k in kp:
        m.add_patches({k: kp[k]}, 1.0 - ratio, ratio)
    return m


def merge_subtract(m1, m2, multiplier):
    m = m1.clone()
    kp = m2.get_key_patches("diffusion_model.")
    for k in kp:
        m.add_patches({k: kp[k]}, -multiplier, multiplier)
    return m


def merge_add(m1, m2):
    m = m1.clone()
    kp = m2.get_key_patches("diffusion_model.")
    for k in kp:
        m.add_patches({k: kp[k]}, 1.0, 1.0)
    return m


def merge_blocks(m1, m2, **kwargs):
    m = m1.clone()
    kp = m2.get_key_patches("diffusion_model.")
    default_ratio = next(iter(kwargs.values()))
    for k in kp:
        ratio = default_ratio
        k_unet = k[len("diffusion_model."):]
        last_arg_size = 0
        for arg in kwargs:
            if k_unet.startswith(arg) and last_arg_size < len(arg):
                ratio = kwargs[arg]
                last_arg_size = len(arg)
        m.add_patches({k: kp[k]}, 1.0 - ratio, ratio)
    return m


def sd1_args():
    names = ["time_embed.", "label_emb."]
    names += ["input_blocks.{}.".format(i) for i in range(12)]
    names += ["middle_block.{}.".format(i) for i in range(3)]
    names += ["output_blocks.{}.".format(i) for i in range(12)]
    names += ["out."]
    return {n: round(0.03 * i, 2) for i, n in enumerate(names)}


p1, p2 = Patcher(model1), Patcher(model2)
cases = {
    "simple": ({"node": "ModelMergeSimple", "ratio": 0.3}, merge_simple(p1, p2, 0.3)),
    "simple_one": ({"node": "ModelMergeSimple", "ratio": 1.0}, merge_simple(p1, p2, 1.0)),
    "subtract": ({"node": "ModelMergeSubtract", "multiplier": 0.7}, merge_subtract(p1, p2, 0.7)),
    "add": ({"node": "ModelMergeAdd"}, merge_add(p1, p2)),
    "blocks": (
        {"node": "ModelMergeBlocks", "ratios": [["input", 0.2], ["middle", 0.5], ["out", 0.9]]},
        merge_blocks(p1, p2, input=0.2, middle=0.5, out=0.9),
    ),
    "sd1": (
        {"node": "ModelMergeSD1", "ratios": [[k, v] for k, v in sd1_args().items()]},
        merge_blocks(p1, p2, **sd1_args()),
    ),
}
# A LoRA-like patch applied before the merge stacks: ComfyUI applies model1's own patches first.
stacked = p1.clone()
delta = {"diffusion_model.out.2.weight": (torch.randn(4, 4, 3, 3),)}
stacked.add_patches(delta, 0.5, 1.0)
cases["patched_then_simple"] = (
    {"node": "ModelMergeSimple", "ratio": 0.6, "model1_patch": ["out.2.weight", 0.5]},
    merge_simple(stacked, p2, 0.6),
)

inputs = {}
for k, v in model1.items():
    inputs["model1/" + k] = v.contiguous()
for k, v in model2.items():
    inputs["model2/" + k] = v.contiguous()
inputs["patch/out.2.weight"] = delta["diffusion_model.out.2.weight"][0]

expected = {}
meta = {}
for name, (info, patcher) in cases.items():
    meta[name] = info
    for k, v in patcher.patched().items():
        expected["{}/{}".format(name, k)] = v.contiguous()

# LoRA extraction: the truncated SVD product before the clamp.
# "decaying": 160 x 200 with singular values 0.8^i, past the sizes Weft solves exactly.
q1, _ = torch.linalg.qr(torch.randn(160, 160))
q2, _ = torch.linalg.qr(torch.randn(200, 160))
decaying = (q1 * (0.8 ** torch.arange(160.0))) @ q2.T
diffs = {"linear": torch.randn(24, 40), "wide": torch.randn(40, 24), "conv": torch.randn(8, 6, 3, 3),
         "decaying": decaying.contiguous()}
for name, diff in diffs.items():
    inputs["diff/" + name] = diff
    out_dim, in_dim = diff.shape[0:2]
    mat = diff.flatten(start_dim=1) if diff.ndim == 4 else diff
    U, S, Vh = torch.linalg.svd(mat.double())
    for rank in [4, 64]:
        r = min(rank, in_dim, out_dim)
        prod = (U[:, :r] @ torch.diag(S[:r])) @ Vh[:r, :]
        expected["svd/{}/r{}".format(name, rank)] = prod.float().reshape(diff.shape).contiguous()
values = torch.randn(301)
inputs["quantile/values"] = values
expected["quantile/result"] = torch.quantile(values, 0.99).reshape(1)

os.makedirs(OUT, exist_ok=True)
save_file(inputs, os.path.join(OUT, "inputs.safetensors"))
save_file(expected, os.path.join(OUT, "expected.safetensors"))
with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)
print("wrote", len(expected), "expected tensors")
