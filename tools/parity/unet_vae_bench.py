"""PyTorch/diffusers timing on the same shapes as benches/unet_vae.rs (same output format).

One SD1.5-size UNet step (batch 2, 4x64x64 latent, context 77x768) and one VAE decode to 512x512,
random weights (timing does not depend on the values).
Run: /opt/refpy/bin/python tools/parity/unet_vae_bench.py                     (CPU, f32)
     python tools/parity/unet_vae_bench.py --device cuda --dtype f16           (as WEFT_BENCH_*)
On a GPU each figure is the median of 5 runs after one warm-up, as in the Rust bench.
"""
import argparse
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def timed(device, warmups, runs, fn):
    for _ in range(warmups):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn().sum().item()  # reading a value waits for the work
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="f32", choices=DTYPES)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    warmups, runs = (0, 1) if device.type == "cpu" else (1, 5)
    torch.manual_seed(0)
    if device.type == "cpu":
        print(f"device: cpu ({torch.get_num_threads()} threads), dtype {args.dtype}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, dtype {args.dtype}, torch {torch.__version__}")
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval().to(device, dtype)
    print(f"unet build (random weights): {time.perf_counter() - t0:.2f} s")
    x = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    t = torch.tensor([999.0, 999.0], device=device)
    ctx = torch.randn(2, 77, 768, device=device, dtype=dtype)
    with torch.no_grad():
        secs = timed(device, warmups, runs, lambda: unet(x, t, encoder_hidden_states=ctx).sample)
        print(f"unet step sd15 batch 2 64x64: {secs:.3f} s")
    del unet
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval().to(device, dtype)
    z = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    with torch.no_grad():
        secs = timed(device, warmups, runs, lambda: vae.decode(z).sample)
        print(f"vae decode 512x512: {secs:.3f} s")
    print(f"peak rss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        print(f"gpu memory in use at the end: {(total - free) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
