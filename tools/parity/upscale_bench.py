"""CPU speed of a 4x ESRGAN/RRDBNet (nf=64, nb=23, gc=32: RealESRGAN_x4plus's shape) on a
128x128 image in PyTorch through spandrel, the side of `benches/upscale.rs` that Weft is
compared with. Random weights (torch's default init, seed 0), written to
/tmp/weft-upscale-bench/rrdb_x4_64_23.safetensors for the Rust bench to load the same ones.
Nothing here is committed but the script.

Run: /tmp/peer-venv/bin/python tools/parity/upscale_bench.py [runs]
"""
import os
import statistics
import sys
import time

import torch
from safetensors.torch import save_file
from spandrel import ModelLoader
from spandrel.architectures.ESRGAN import ESRGAN

OUT = "/tmp/weft-upscale-bench/rrdb_x4_64_23.safetensors"


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, OUT)
    model = ModelLoader().load_from_file(OUT).eval()
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    times = []
    with torch.inference_mode():
        model(image)  # warm-up
        cpu0 = time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model(image)
            times.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / runs
    print(f"torch {torch.__version__} spandrel, {torch.get_num_threads()} threads, cpu f32: "
          f"ESRGAN 4x 64nf 23nb 128x128 -> {tuple(out.shape)}: median {statistics.median(times):.2f} s "
          f"over {runs} runs ({', '.join(f'{t:.2f}' for t in times)}); {cpu:.1f} CPU s per run")


if __name__ == "__main__":
    main()
