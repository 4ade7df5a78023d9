#!/usr/bin/env python3
"""Reference fixtures for Weft's CLIP vision encoder, unCLIP noise augmentation and style model.

Writes tests/fixtures/clip_vision/ (read by tests/engine/clip_vision_parity.rs). Deterministic:
weights come from the shared synthetic generator (synth.py), images from a seeded torch
generator; no network.

References:
- HF transformers `CLIPVisionModelWithProjection` on two tiny configs: "tiny_h" (exact GELU,
  3 layers, saved with HF names) and "tiny_l" (quick GELU and 24 layers, the depth ComfyUI's
  ViT-L config has, saved in the OpenCLIP `visual.*` layout);
- ComfyUI's `comfy/clip_vision.py` `clip_preprocess` (with the newer `crop` argument) and
  `encode_image` (last_hidden_state, penultimate_hidden_states = layer -2, image_embeds);
- ComfyUI's `comfy/model_base.py` `unclip_adm` with `CLIPEmbeddingNoiseAugmentation`
  (`squaredcos_cap_v2`, 1000 steps, data mean 0 / std 1), ported below, on the CPU;
- ComfyUI's `comfy/t2i_adapter/adapter.py` `StyleAdapter` (ported below) on tiny_h's output.

Usage: /tmp/peer-venv/bin/python tools/parity/clip_vision_reference.py
Needs: torch, transformers, safetensors, numpy.
"""

import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from synth import fill_synth  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "clip_vision")

# ----------------------------------------------------------------------------------------------
# ComfyUI's preprocessing (comfy/clip_vision.py)


def clip_preprocess(image, size=224, crop=True):
    mean = [0.48145466, 0.4578275, 0.40821073]
    std = [0.26862954, 0.26130258, 0.27577711]
    image = image[:, :, :, :3] if image.shape[3] > 3 else image
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype)
    std = torch.tensor(std, device=image.device, dtype=image.dtype)
    image = image.movedim(-1, 1)
    if not (image.shape[2] == size and image.shape[3] == size):
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            scale_size = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            scale_size = (size, size)
        image = torch.nn.functional.interpolate(image, size=scale_size, mode="bicubic", antialias=True)
        h = (image.shape[2] - size) // 2
        w = (image.shape[3] - size) // 2
        image = image[:, :, h:h + size, w:w + size]
    image = torch.clip((255. * image), 0, 255).round() / 255.0
    return (image - mean.view([3, 1, 1])) / std.view([3, 1, 1])


def encode(model, image, size, crop):
    pixels = clip_preprocess(image, size=size, crop=crop).float()
    out = model(pixel_values=pixels, output_hidden_states=True)
    return pixels, {
        "last_hidden_state": out.last_hidden_state,
        "penultimate_hidden_states": out.hidden_states[-2],
        "image_embeds": out.image_embeds,
    }


# ----------------------------------------------------------------------------------------------
# HF -> OpenCLIP `visual.*` names (the inverse of ComfyUI's convert_to_transformers)


def to_openclip_visual(sd, layers):
    out = {}
    ren = {
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    }
    for k, v in ren.items():
        out[v] = sd[k]
    out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    blocks = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
              "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}
    for i in range(layers):
        src = f"vision_model.encoder.layers.{i}."
        dst = f"visual.transformer.resblocks.{i}."
        for a, b in blocks.items():
            for p in ("weight", "bias"):
                out[dst + f"{b}.{p}"] = sd[src + f"{a}.{p}"]
        for p in ("weight", "bias"):
            out[dst + f"attn.in_proj_{p}"] = torch.cat(
                [sd[src + f"self_attn.{n}_proj.{p}"] for n in ("q", "k", "v")], 0)
    return out


# ----------------------------------------------------------------------------------------------
# unclip_adm (comfy/model_base.py) with CLIPEmbeddingNoiseAugmentation, ported


def betas_for_alpha_bar(n, alpha_bar, max_beta=0.999):
    betas = []
    for i in range(n):
        t1 = i / n
        t2 = (i + 1) / n
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Augmentor:
    def __init__(self, dim):
        betas = betas_for_alpha_bar(1000, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
        ac = np.cumprod(1. - betas, axis=0)
        self.sqrt_ac = torch.tensor(np.sqrt(ac), dtype=torch.float32)
        self.sqrt_1m = torch.tensor(np.sqrt(1. - ac), dtype=torch.float32)
        self.data_mean = torch.zeros(dim)[None, :]
        self.data_std = torch.ones(dim)[None, :]
        self.max_noise_level = 1000
        self.dim = dim

    def __call__(self, x, noise_level, seed=None):
        x = (x - self.data_mean) * 1. / self.data_std
        if seed is None:
            noise = torch.randn_like(x)
        else:
            noise = torch.randn(x.size(), dtype=x.dtype, layout=x.layout, generator=torch.manual_seed(seed))
        a = self.sqrt_ac.gather(-1, noise_level).reshape(1, 1)
        b = self.sqrt_1m.gather(-1, noise_level).reshape(1, 1)
        z = a * x + b * noise
        z = (z * self.data_std) + self.data_mean
        return z, timestep_embedding(noise_level, self.dim)


def unclip_adm(unclip_conditioning, noise_augmentor, noise_augment_merge=0.0, seed=None):
    adm_inputs = []
    noise_aug = []
    for unclip_cond in unclip_conditioning:
        for adm_cond in unclip_cond["image_embeds"]:
            weight = unclip_cond["strength"]
            noise_augment = unclip_cond["noise_augmentation"]
            noise_level = round((noise_augmentor.max_noise_level - 1) * noise_augment)
            c_adm, noise_level_emb = noise_augmentor(adm_cond, noise_level=torch.tensor([noise_level]), seed=seed)
            adm_out = torch.cat((c_adm, noise_level_emb), 1) * weight
            noise_aug.append(noise_augment)
            adm_inputs.append(adm_out)
    if len(noise_aug) > 1:
        adm_out = torch.stack(adm_inputs).sum(0)
        noise_level = round((noise_augmentor.max_noise_level - 1) * noise_augment_merge)
        c_adm, noise_level_emb = noise_augmentor(adm_out[:, :noise_augmentor.dim], noise_level=torch.tensor([noise_level]))
        adm_out = torch.cat((c_adm, noise_level_emb), 1)
    return adm_out


# ----------------------------------------------------------------------------------------------
# StyleAdapter (comfy/t2i_adapter/adapter.py), ported


class QuickGELU(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(torch.nn.Module):
    def __init__(self, d_model, n_head):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = torch.nn.LayerNorm(d_model)
        self.mlp = torch.nn.Sequential(OrderedDict([
            ("c_fc", torch.nn.Linear(d_model, d_model * 4)), ("gelu", QuickGELU()),
            ("c_proj", torch.nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = torch.nn.LayerNorm(d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class StyleAdapter(torch.nn.Module):
    def __init__(self, width, context_dim, num_head, n_layes, num_token):
        super().__init__()
        scale = width ** -0.5
        self.transformer_layes = torch.nn.Sequential(*[ResidualAttentionBlock(width, num_head) for _ in range(n_layes)])
        self.num_token = num_token
        self.style_embedding = torch.nn.Parameter(torch.randn(1, num_token, width) * scale)
        self.ln_post = torch.nn.LayerNorm(width)
        self.ln_pre = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(scale * torch.randn(width, context_dim))

    def forward(self, x):
        style_embedding = self.style_embedding + torch.zeros(
            (x.shape[0], self.num_token, self.style_embedding.shape[-1]), device=x.device)
        x = torch.cat([x, style_embedding], dim=1)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)
        x = self.transformer_layes(x)
        x = x.permute(1, 0, 2)
        x = self.ln_post(x[:, -self.num_token:, :])
        return x @ self.proj


# ----------------------------------------------------------------------------------------------


def tiny(name, act, layers, image, patch):
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=16,
        hidden_act=act, layer_norm_eps=1e-5, patch_size=patch, image_size=image,
        projection_dim=8, num_channels=3)
    model = CLIPVisionModelWithProjection(config).eval()
    fill_synth(model)
    return model


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_grad_enabled(False)
    g = torch.Generator().manual_seed(1234)
    ref = {}
    ref["image_wide"] = torch.rand((2, 23, 37, 3), generator=g)
    ref["image_tall"] = torch.rand((1, 41, 19, 4), generator=g)

    h = tiny("tiny_h", "gelu", 3, 16, 4)
    save_file({k: v.contiguous() for k, v in h.state_dict().items()},
              os.path.join(OUT, "clip_vision_tiny_h.safetensors"))
    l = tiny("tiny_l", "quick_gelu", 24, 12, 4)
    save_file(to_openclip_visual(l.state_dict(), 24), os.path.join(OUT, "clip_vision_tiny_l.safetensors"))

    for mname, model, size in (("tiny_h", h, 16), ("tiny_l", l, 12)):
        for iname in ("image_wide", "image_tall"):
            for crop in (True, False):
                tag = f"{mname}/{iname}/{'center' if crop else 'none'}"
                pixels, out = encode(model, ref[iname], size, crop)
                ref[f"{tag}/pixel_values"] = pixels
                for k, v in out.items():
                    ref[f"{tag}/{k}"] = v

    # unclip_adm on tiny_h's embeddings (8 wide) at seed 7: one entry, then two entries with
    # three embeddings merged (SD2.1 unCLIP's merge level 0.05).
    embeds = ref["tiny_h/image_wide/center/image_embeds"]
    aug = Augmentor(8)
    single = [{"image_embeds": embeds[:1], "strength": 1.5, "noise_augmentation": 0.3}]
    ref["unclip/single"] = unclip_adm(single, aug, 0.05, seed=7)
    multi = [{"image_embeds": embeds, "strength": 0.75, "noise_augmentation": 0.0},
             {"image_embeds": embeds[1:], "strength": -1.0, "noise_augmentation": 1.0}]
    ref["unclip/multi"] = unclip_adm(multi, aug, 0.05, seed=7)

    style = StyleAdapter(width=32, context_dim=16, num_head=8, n_layes=2, num_token=3).eval()
    fill_synth(style)
    save_file({k: v.contiguous() for k, v in style.state_dict().items()},
              os.path.join(OUT, "style_tiny.safetensors"))
    ref["style/tokens"] = style(ref["tiny_h/image_wide/center/last_hidden_state"])

    save_file({k: v.contiguous().float().clone() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"))
    print("wrote", OUT, len(ref), "tensors")


if __name__ == "__main__":
    main()
