"""PyTorch/diffusers timing on the same shapes as unet/examples/bench_unet_vae.rs (same output format).

One SD1.5-size UNet step (batch 2, 4x64x64 latent, context 77x768) and one VAE decode to 512x512,
f32 on the CPU, random weights (timing does not depend on the values).
Run: /opt/refpy/bin/python tools/parity/unet_vae_bench.py
"""
import resource
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel


def main():
    torch.manual_seed(0)
    print(f"device: cpu ({torch.get_num_threads()} threads), dtype f32, torch {torch.__version__}")
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval()
    print(f"unet build (random weights): {time.perf_counter() - t0:.2f} s")
    x = torch.randn(2, 4, 64, 64)
    t = torch.tensor([999.0, 999.0])
    ctx = torch.randn(2, 77, 768)
    with torch.no_grad():
        t0 = time.perf_counter()
        unet(x, t, encoder_hidden_states=ctx).sample.sum().item()
        print(f"unet step sd15 batch 2 64x64: {time.perf_counter() - t0:.2f} s")
    del unet
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval()
    z = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        t0 = time.perf_counter()
        vae.decode(z).sample.sum().item()
        print(f"vae decode 512x512: {time.perf_counter() - t0:.2f} s")
    print(f"peak rss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
