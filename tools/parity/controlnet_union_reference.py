"""Reference fixture for Weft's union ControlNet (ControlNet++ / xinsir controlnet-union-sdxl-1.0) parity test
(tests/engine/controlnet_parity.rs, `union_controlnet_*`).

Builds a TINY diffusers `ControlNetUnionModel` for the tiny SDXL test UNet of unet_vae_reference.py (8 control types
like the "promax" release; the condition transformer is as wide as the UNet's first level, 32 here, 320 in SDXL),
fills every weight with the shared synthetic generator (synth.py) and writes to tests/fixtures/controlnet/:

- controlnet_union_sdxl_tiny.safetensors: x, t, context, pooled, size_values, hint (one image), hints (two different
  images), and residuals (down_<k>, mid; conditioning scale 1) for three cases:
  - `typed_`: diffusers' forward as is, control type TYPE, the one hint repeated over the batch (what diffusers'
    pipelines do: every batch item gets the same control image).
  - `distinct_`: control type TYPE, a different hint per batch item (the second far out of range, see below), with
    ComfyUI's semantics. diffusers feeds the
    [B, tokens, C] sequence to an `nn.MultiheadAttention` built without `batch_first`, so its attention runs over the
    batch, mixing the items' hints; ComfyUI's `union_controlnet_merge` attends over each item's own tokens (one: its
    hint's). Emulated here by running diffusers' transformer layers on one batch item at a time, which is exactly
    ComfyUI's computation (with one item the batch axis has length 1). Both agree whenever the hints are equal.
  - `auto_`: ComfyUI's "auto" (no type set): the control-type embedding of an all-zero type vector is still added to
    the time embedding, and the hint takes the plain ControlNet path (no task embedding, transformer or
    spatial_ch_projs). Emulated with an all-zero control type and spatial_ch_projs replaced by zeros.
- keymap_controlnet_union_sdxl_tiny.json: [comfyui_key, diffusers_key, shape] for every tensor. ComfyUI converts a
  diffusers union file to LDM names (the ControlNet map) and keeps the union tensors' names, except
  `attn.in_proj_weight` / `_bias`, which become `attn.in_proj.weight` / `.bias` (comfy/controlnet.py).
- controlnet_config_union_sdxl_tiny.json: the model's diffusers config.json.

Run: /opt/refpy/bin/python tools/parity/controlnet_union_reference.py   (deterministic; CPU; seconds)
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from synth import fill_synth  # noqa: E402
from unet_vae_reference import public_config  # noqa: E402
from controlnet_reference import HINT_CHANNELS, OUT, controlnet_diffusers_to_ldm, inputs, tiny_unet  # noqa: E402

from diffusers import ControlNetUnionModel  # noqa: E402

NAME = "union_sdxl_tiny"
NUM_CONTROL_TYPE = 8
# "canny/lineart/anime_lineart/mlsd" in ComfyUI's UNION_CONTROLNET_TYPES.
TYPE = 3
UNION_PREFIXES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")


def comfy_key(key, cfg):
    if key.startswith(UNION_PREFIXES):
        return key.replace(".attn.in_proj_", ".attn.in_proj.")
    return controlnet_diffusers_to_ldm(key, cfg)


class PerItem(torch.nn.Module):
    """Runs `layers` on each batch item alone: ComfyUI's attention over an item's own tokens."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        outs = []
        for b in range(x.shape[0]):
            h = x[b:b + 1]
            for layer in self.layers:
                h = layer(h)
            outs.append(h)
        return torch.cat(outs, 0)


class Zero(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.width = width

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.width)


def main():
    torch.set_num_threads(2)
    unet, kwargs, pooled_dim, n_sizes = tiny_unet("sdxl_tiny")
    base = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    cfg = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
    width = cfg["block_out_channels"][0]
    cfg.update(num_control_type=NUM_CONTROL_TYPE, num_trans_channel=width, num_trans_head=8, num_trans_layer=1,
               num_proj_channel=width)
    cn = ControlNetUnionModel(**cfg)
    cn.eval()
    fill_synth(cn)

    rows = []
    seen = set()
    for k, v in cn.state_dict().items():
        ck = comfy_key(k, dict(cn.config))
        assert ck not in seen, ck
        seen.add(ck)
        rows.append([ck, k, list(v.shape)])
    with open(os.path.join(OUT, f"keymap_controlnet_{NAME}.json"), "w") as f:
        json.dump(sorted(rows), f, indent=0)
    with open(os.path.join(OUT, f"controlnet_config_{NAME}.json"), "w") as f:
        json.dump(public_config(cn), f, indent=1, sort_keys=True)

    tensors, added = inputs(kwargs, pooled_dim, n_sizes, 2468)
    hints = tensors.pop("hint")
    # The synthetic hint embedding all but erases its input from the pooled features (two random
    # images differ there by 2e-4), so the second hint is far out of range (30 + noise): then the
    # items' tokens differ (by 0.08) and diffusers' batch mixing shows, which ComfyUI's per-item
    # merge must not do.
    hints = torch.stack([hints[0], 30.0 + hints[1]])
    tensors["hints"] = hints
    tensors["hint"] = hints[:1].clone()
    batch = tensors["x"].shape[0]
    one_hot = torch.zeros(batch, NUM_CONTROL_TYPE)
    one_hot[:, TYPE] = 1.0

    def run(prefix, hint, control_type, idx):
        with torch.no_grad():
            down, mid = cn(tensors["x"], tensors["t"], encoder_hidden_states=tensors["context"],
                           controlnet_cond=[hint], control_type=control_type, control_type_idx=[idx],
                           conditioning_scale=1.0, added_cond_kwargs=added, return_dict=False)
        for k, d in enumerate(down):
            tensors[f"{prefix}down_{k}"] = d
        tensors[f"{prefix}mid"] = mid
        return down, mid

    typed = run("typed_", tensors["hint"].expand(batch, -1, -1, -1), one_hot, TYPE)
    mixed = run("mixed_", hints, one_hot, TYPE)
    layers = cn.transformer_layes
    cn.transformer_layes = torch.nn.ModuleList([PerItem(layers)])
    # With equal hints, ComfyUI's per-item attention is diffusers' batch attention.
    check = run("check_", tensors["hint"].expand(batch, -1, -1, -1), one_hot, TYPE)
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(list(typed[0]) + [typed[1]], list(check[0]) + [check[1]]))
    run("distinct_", hints, one_hot, TYPE)
    cn.transformer_layes = layers
    mixing = max((m - tensors[f"distinct_down_{k}"]).abs().max() for k, m in enumerate(mixed[0]))
    assert mixing > 1e-3, mixing
    print(f"distinct hints: diffusers' batch attention differs from ComfyUI's per-item merge by {mixing:.4f} "
          "(max over down residuals)")
    for k in [k for k in tensors if k.startswith(("check_", "mixed_"))]:
        del tensors[k]
    projs = cn.spatial_ch_projs
    cn.spatial_ch_projs = Zero(width)
    auto = run("auto_", hints, torch.zeros(batch, NUM_CONTROL_TYPE), 0)
    cn.spatial_ch_projs = projs
    tensors["type"] = torch.tensor([float(TYPE)])
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, f"controlnet_{NAME}.safetensors"))
    print(f"union {NAME}: {len(typed[0])} down residuals, |distinct - auto| mid "
          f"{(tensors['distinct_mid'] - auto[1]).abs().max():.4f}, {len(rows)} tensors")


if __name__ == "__main__":
    main()
