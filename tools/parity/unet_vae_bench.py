"""PyTorch/diffusers timing on the same shapes as benches/unet_vae.rs (same output format).

One SD1.5-size UNet step (batch 2, 4x64x64 latent, context 77x768) and one VAE decode to 512x512,
random weights (timing does not depend on the values).
Run: /opt/refpy/bin/python tools/parity/unet_vae_bench.py                     (CPU, f32)
     python tools/parity/unet_vae_bench.py --channels-last --autocast bf16     (CPU, bf16 autocast)
     python tools/parity/unet_vae_bench.py --matmul                            (GEMM GFLOP/s only)
     python tools/parity/unet_vae_bench.py --attention                         (SDPA only)
     python tools/parity/unet_vae_bench.py --device cuda --dtype f16           (as WEFT_BENCH_*)
Each figure is the median of the runs after one warm-up (5 runs on a GPU, 1 on the CPU), as in
the Rust bench; `--warmups 0` gives the cold figure. `--autocast bf16` keeps f32 weights and runs
matmuls and convolutions in bf16 (torch.autocast), PyTorch's fastest CPU mode; `--matmul` prints
torch's GFLOP/s at the shapes of `cargo bench -p weft-engine --bench gemm_bf16`; `--attention`
times `scaled_dot_product_attention` (what diffusers' UNet and VAE call) at the shapes of
`cargo bench --bench ops -- attention`, in f32 and bf16 (median of 5 after a warm-up).
"""
import argparse
import contextlib
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
        fn().float().sum().item()  # reading a value waits for the work
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# (label, m, k, n), as in crates/weft-engine/benches/gemm_bf16.rs.
MATMUL_SHAPES = [
    ("square 4096", 4096, 4096, 4096),
    ("conv3x3 320 @64² (im2col chunk)", 320, 2880, 4096),
    ("conv3x3 640 @32²x2", 640, 5760, 2048),
    ("conv3x3 1280 @8²x2", 1280, 11520, 128),
    ("linear 8192x320->320", 8192, 320, 320),
    ("linear ff 8192x320->2560", 8192, 320, 2560),
    ("linear ff 2048x640->5120", 2048, 640, 5120),
]


def matmul_bench():
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    for label, m, k, n in MATMUL_SHAPES:
        flops = 2.0 * m * k * n
        runs = 2 if flops > 1e11 else 5
        figures = []
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(m, k).to(dtype)
            b = torch.randn(k, n).to(dtype)
            a @ b
            best = min(_once(lambda: a @ b) for _ in range(runs))
            figures.append(flops / best / 1e9)
        print(f"{label:34} {m}x{k}x{n}: f32 {figures[0]:6.1f} GFLOP/s, bf16 {figures[1]:6.1f}")


# (heads x batch, queries, keys, head size), as in benches/ops.rs.
ATTENTION_SHAPES = [(16, 4096, 4096, 40), (16, 4096, 77, 40), (16, 1024, 1024, 80), (1, 4096, 4096, 512)]


def attention_bench():
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    for bh, n, m, d in ATTENTION_SHAPES:
        figures = []
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(1, bh, rows, d, dtype=dtype) for rows in (n, m, m))
            run = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
            run()
            figures.append(statistics.median(_once(run) for _ in range(5)) * 1e3)
        print(f"attention bh={bh} n={n} m={m} d={d}: f32 {figures[0]:7.1f} ms, bf16 {figures[1]:7.1f} ms")


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="f32", choices=DTYPES)
    parser.add_argument("--autocast", choices=["bf16", "f16"], help="torch.autocast dtype")
    parser.add_argument("--channels-last", action="store_true", help="NHWC models and inputs")
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--matmul", action="store_true", help="GEMM GFLOP/s only")
    parser.add_argument("--attention", action="store_true", help="SDPA times only")
    args = parser.parse_args()
    if args.matmul:
        return matmul_bench()
    if args.attention:
        return attention_bench()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    warmups, runs = (args.warmups, 1) if device.type == "cpu" else (args.warmups, 5)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    autocast = (
        torch.autocast(device.type, dtype=DTYPES[args.autocast])
        if args.autocast
        else contextlib.nullcontext()
    )
    torch.manual_seed(0)
    mode = f"dtype {args.dtype}, autocast {args.autocast or 'off'}, channels_last {args.channels_last}"
    if device.type == "cpu":
        print(f"device: cpu ({torch.get_num_threads()} threads), {mode}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, {mode}, torch {torch.__version__}")
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval().to(device, dtype, memory_format=memory_format)
    print(f"unet build (random weights): {time.perf_counter() - t0:.2f} s")
    x = torch.randn(2, 4, 64, 64, device=device, dtype=dtype).to(memory_format=memory_format)
    t = torch.tensor([999.0, 999.0], device=device)
    ctx = torch.randn(2, 77, 768, device=device, dtype=dtype)
    with torch.no_grad(), autocast:
        secs = timed(device, warmups, runs, lambda: unet(x, t, encoder_hidden_states=ctx).sample)
        print(f"unet step sd15 batch 2 64x64: {secs:.3f} s")
    del unet
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).eval().to(device, dtype, memory_format=memory_format)
    z = torch.randn(1, 4, 64, 64, device=device, dtype=dtype).to(memory_format=memory_format)
    with torch.no_grad(), autocast:
        secs = timed(device, warmups, runs, lambda: vae.decode(z).sample)
        print(f"vae decode 512x512: {secs:.3f} s")
    print(f"peak rss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        print(f"gpu memory in use at the end: {(total - free) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
