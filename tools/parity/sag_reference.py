"""Reference fixtures for Self-Attention Guidance (crates/weft-engine/src/diffusion/sag.rs) on the
tiny SD1 UNet of unet_vae_reference.py (diffusers, synthetic weights).

Run: `/tmp/peer-venv/bin/python tools/parity/sag_reference.py` (torch, diffusers, safetensors).
Writes tests/fixtures/sampling/sag_reference.safetensors.

Transcribed from ComfyUI's comfy_extras/nodes_sag.py: `attention_basic_with_sim`,
`create_blur_map`, `gaussian_blur_2d` and the post-CFG function, with the attn1 replace on
("middle", 0, 0) recording on the negative side; the UNet evaluations follow
comfy/model_sampling.py's EPS formulas (`calculate_input`, `calculate_denoised`) at a sigma of
the SD table and its timestep.
"""
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synth import fill_synth  # noqa: E402
from unet_vae_reference import UNETS  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "sag_reference.safetensors")


def attention_basic_with_sim(q, k, v, heads):
    b, _, dim_head = q.shape
    dim_head //= heads
    scale = dim_head ** -0.5
    q, k, v = map(lambda t: t.unsqueeze(3).reshape(b, -1, heads, dim_head).permute(0, 2, 1, 3)
                  .reshape(b * heads, -1, dim_head).contiguous(), (q, k, v))
    sim = torch.einsum('b i d, b j d -> b i j', q.float(), k.float()) * scale
    sim = sim.softmax(dim=-1)
    out = torch.einsum('b i j, b j d -> b i d', sim.to(v.dtype), v)
    out = out.unsqueeze(0).reshape(b, heads, -1, dim_head).permute(0, 2, 1, 3).reshape(b, -1, heads * dim_head)
    return out, sim


def gaussian_blur_2d(img, kernel_size, sigma):
    ksize_half = (kernel_size - 1) * 0.5
    x = torch.linspace(-ksize_half, ksize_half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    x_kernel = pdf / pdf.sum()
    kernel2d = torch.mm(x_kernel[:, None], x_kernel[None, :])
    kernel2d = kernel2d.expand(img.shape[-3], 1, kernel2d.shape[0], kernel2d.shape[1])
    padding = [kernel_size // 2, kernel_size // 2, kernel_size // 2, kernel_size // 2]
    img = F.pad(img, padding, mode="reflect")
    return F.conv2d(img, kernel2d, groups=img.shape[-3])


def create_blur_map(x0, attn, sigma=3.0, threshold=1.0):
    _, hw1, hw2 = attn.shape
    b, _, lh, lw = x0.shape
    attn = attn.reshape(b, -1, hw1, hw2)
    mask = attn.mean(1, keepdim=False).sum(1, keepdim=False) > threshold
    ratio = 2**(math.ceil(math.sqrt(lh * lw / hw1)) - 1).bit_length()
    mid_shape = [math.ceil(lh / ratio), math.ceil(lw / ratio)]
    mask = mask.reshape(b, *mid_shape).unsqueeze(1).type(attn.dtype)
    mask = F.interpolate(mask, (lh, lw))
    blurred = gaussian_blur_2d(x0, kernel_size=9, sigma=sigma)
    return blurred * mask + x0 * (1 - mask)


class RecordingProcessor:
    """The ("middle", 0, 0) attn1 replace: plain attention, recording the probabilities while
    `record` is set (ComfyUI's `attn_and_record` on the uncond slice)."""

    def __init__(self):
        self.record = False
        self.sim = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        out, sim = attention_basic_with_sim(q, k, v, attn.heads)
        if self.record:
            self.sim = sim
        return attn.to_out[1](attn.to_out[0](out))


def sd_sigmas():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def main():
    kwargs = UNETS["sd1_tiny"][0]
    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
    model.eval()
    fill_synth(model)
    recorder = RecordingProcessor()
    model.mid_block.attentions[0].transformer_blocks[0].attn1.set_processor(recorder)

    g = torch.Generator().manual_seed(2024)
    x = torch.randn(1, 4, 16, 16, generator=g) * 3.0
    pos = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    neg = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    t = 500
    sigma = sd_sigmas()[t]
    cfg, scale, blur_sigma = 5.0, 0.7, 2.0

    def denoise(x_at, context):
        with torch.no_grad():
            eps = model(x_at / (sigma ** 2 + 1.0) ** 0.5, torch.tensor([float(t)]), encoder_hidden_states=context).sample
        return x_at - eps * sigma

    cond = denoise(x, pos)
    recorder.record = True
    uncond = denoise(x, neg)
    recorder.record = False
    cfg_result = uncond + (cond - uncond) * cfg
    degraded = create_blur_map(uncond, recorder.sim, blur_sigma, 1.0)
    degraded_noised = degraded + x - uncond
    sag = denoise(degraded_noised, neg)
    result = cfg_result + (degraded - sag) * scale

    out = {
        "x": x, "positive": pos, "negative": neg, "sigma": sigma.reshape(1),
        "cond": cond, "uncond": uncond, "attention": recorder.sim, "degraded": degraded,
        "result": result,
        # The blur alone on a known image, and at another sigma.
        "blur/in": x, "blur/out": gaussian_blur_2d(x, 9, 1.3),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in out.items()}, OUT, metadata={"torch_version": torch.__version__})
    print(f"sag: |result - cfg| max {(result - cfg_result).abs().max():.4f}, "
          f"blurred token share {(recorder.sim.reshape(1, -1, *recorder.sim.shape[1:]).mean(1).sum(1) > 1.0).float().mean():.3f}")


if __name__ == "__main__":
    main()
