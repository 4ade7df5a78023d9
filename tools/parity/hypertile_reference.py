"""Reference fixtures for HyperTile (crates/weft-engine/src/diffusion/hypertile.rs) on the tiny SD1
UNet of unet_vae_reference.py (diffusers, synthetic weights).

Run: `/tmp/peer-venv/bin/python tools/parity/hypertile_reference.py` (torch, diffusers, safetensors).
Writes tests/fixtures/sampling/hypertile_reference.safetensors.

Transcribed from newer ComfyUI's comfy_extras/nodes_hypertile.py (`random_divisor` with
`random.seed(counter)`, `find_hw_candidates`, `iterative_closest_divisors`, the attn1 patch and
output patch), applied where comfy/ldm/modules/attention.py applies attn1 patches: to the normed
hidden states before the projections, the keys and values from the untiled tokens, and
`attention_basic`'s `reshape(b, -1, heads, dim_head)` view of them with the queries' batch.
The square and wide fixtures denoise with the positive prompt only (cfg 1), one UNet call per
step as in ComfyUI; the cfg one at cfg 3 with the negative prompt in the same batched call, as
calc_cond_batch runs them. All at a sigma of the SD table.
"""
import math
import os
import random
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sag_reference import sd_sigmas  # noqa: E402
from synth import fill_synth  # noqa: E402
from unet_vae_reference import UNETS  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "hypertile_reference.safetensors")


def random_divisor(value, min_value, max_options=1, counter=0):
    min_value = min(min_value, value)
    divisors = [i for i in range(min_value, value + 1) if value % i == 0]
    ns = [value // i for i in divisors[:max_options]]
    random.seed(counter)
    idx = random.randint(0, len(ns) - 1)
    return ns[idx]


def iterative_closest_divisors(hw, aspect_ratio):
    divisors = [i for i in range(2, hw + 1) if hw % i == 0]
    pairs = [(i, hw // i) for i in divisors]
    ratios = [w / h for h, w in pairs]
    closest_ratio = min(ratios, key=lambda x: abs(x - aspect_ratio))
    return pairs[ratios.index(closest_ratio)]


def find_hw_candidates(hw, aspect_ratio):
    h, w = round(math.sqrt(hw * aspect_ratio)), round(math.sqrt(hw / aspect_ratio))
    if h * w != hw:
        w_candidate = hw / h
        if not w_candidate.is_integer():
            h_candidate = hw / w
            if not h_candidate.is_integer():
                return iterative_closest_divisors(hw, aspect_ratio)
            else:
                h = int(h_candidate)
        else:
            w = int(w_candidate)
    return h, w


class HyperTile:
    def __init__(self, model_channels, tile_size, swap_size, max_depth, scale_depth):
        self.apply_to = set()
        temp = model_channels
        for _ in range(max_depth + 1):
            self.apply_to.add(temp)
            temp *= 2
        self.model_channels = model_channels
        self.latent_tile_size = max(32, tile_size) // 8
        self.swap_size, self.scale_depth = swap_size, scale_depth
        self.temp = None
        self.counter = 1

    def hypertile_in(self, q, k, v, original_shape):
        if q.shape[-1] in self.apply_to:
            aspect_ratio = original_shape[-1] / original_shape[-2]
            hw = q.size(1)
            h, w = find_hw_candidates(hw, aspect_ratio)
            factor = 2 ** ((q.shape[-1] // self.model_channels) - 1) if self.scale_depth else 1
            nh = random_divisor(h, self.latent_tile_size * factor, self.swap_size, self.counter)
            self.counter += 1
            nw = random_divisor(w, self.latent_tile_size * factor, self.swap_size, self.counter)
            self.counter += 1
            if nh * nw > 1:
                b = q.shape[0]
                q = q.reshape(b, nh, h // nh, nw, w // nw, q.shape[-1]).permute(0, 1, 3, 2, 4, 5) \
                    .reshape(b * nh * nw, (h // nh) * (w // nw), q.shape[-1])
                self.temp = (nh, nw, h, w)
        return q, k, v

    def hypertile_out(self, out):
        if self.temp is not None:
            nh, nw, h, w = self.temp
            self.temp = None
            bt, hw, c = out.shape
            b = bt // (nh * nw)
            out = out.reshape(b, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * (h // nh) * nw * (w // nw), c)
        return out


class PatchedAttn1:
    """attention.py's attn1 path with an attn1_patch and attn1_output_patch."""

    def __init__(self, patch, shape):
        self.patch, self.shape = patch, shape

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        n, context, value = self.patch.hypertile_in(hidden_states, hidden_states, hidden_states, self.shape[0])
        return self.patch.hypertile_out(attend(attn, n, context, value))


def attend(attn, n, context, value):
    """The projections of patched sources, `attention_basic` (keys and values viewed with the
    queries' batch) and to_out."""
    q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
    b, _, inner = q.shape
    heads = attn.heads
    d = inner // heads
    q, k, v = map(lambda t: t.reshape(b, -1, heads, d).permute(0, 2, 1, 3), (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = out.permute(0, 2, 1, 3).reshape(b, -1, inner)
    return attn.to_out[1](attn.to_out[0](out))


def main():
    kwargs = UNETS["sd1_tiny"][0]
    g = torch.Generator().manual_seed(77)
    t = 500
    sigma = sd_sigmas()[t]
    out = {"sigma": sigma.reshape(1)}
    for name, (tile, swap, depth, scale_depth, lh, lw) in {
        "square": (32, 2, 0, False, 16, 16),
        "wide_deep": (32, 3, 1, True, 16, 24),
    }.items():
        model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
        model.eval()
        fill_synth(model)
        patch = HyperTile(kwargs["block_out_channels"][0], tile, swap, depth, scale_depth)
        shape = [None]
        for module in model.modules():
            if isinstance(module, BasicTransformerBlock):
                module.attn1.set_processor(PatchedAttn1(patch, shape))
        x = torch.randn(1, 4, lh, lw, generator=g) * 3.0
        context = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
        shape[0] = list(x.shape)
        out[f"{name}/x"], out[f"{name}/context"] = x, context
        for step in range(2):
            with torch.no_grad():
                eps = model(x / (sigma ** 2 + 1.0) ** 0.5, torch.tensor([float(t)]), encoder_hidden_states=context).sample
            out[f"{name}/denoised/{step}"] = x - eps * sigma
    # cfg > 1: ComfyUI's calc_cond_batch runs the positive and negative prompts as one batch of 2,
    # so each patched attention draws its tiles once for both.
    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
    model.eval()
    fill_synth(model)
    patch = HyperTile(kwargs["block_out_channels"][0], 32, 3, 1, True)
    shape = [None]
    for module in model.modules():
        if isinstance(module, BasicTransformerBlock):
            module.attn1.set_processor(PatchedAttn1(patch, shape))
    x = torch.randn(1, 4, 16, 24, generator=g) * 3.0
    positive = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    negative = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    shape[0] = [2] + list(x.shape[1:])
    out["cfg/x"], out["cfg/positive"], out["cfg/negative"] = x, positive, negative
    cfg = 3.0
    for step in range(2):
        with torch.no_grad():
            eps = model(torch.cat([x, x]) / (sigma ** 2 + 1.0) ** 0.5, torch.tensor([float(t)] * 2),
                        encoder_hidden_states=torch.cat([negative, positive])).sample
        uncond, cond = (x - eps * sigma).chunk(2)
        out[f"cfg/denoised/{step}"] = uncond + (cond - uncond) * cfg
    # Python's random as random_divisor uses it.
    draws = []
    for counter in range(1, 40):
        for n in (1, 2, 3, 7):
            random.seed(counter)
            draws.append(random.randint(0, n - 1))
    out["random/draws"] = torch.tensor(draws, dtype=torch.int64)
    out["hw"] = torch.tensor([list(find_hw_candidates(hw, a)) for hw, a in
                              [(384, 1.5), (256, 1.0), (60, 1.5), (70, 1.3), (96, 0.75), (7, 2.0)]], dtype=torch.int64)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in out.items()}, OUT, metadata={"torch_version": torch.__version__})
    print("hypertile: steps differ by", (out["square/denoised/0"] - out["square/denoised/1"]).abs().max().item())


if __name__ == "__main__":
    main()
