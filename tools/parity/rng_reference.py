"""Reference fixtures for the torch-compatible generator (crates/weft-engine/src/sampling/rng.rs).

Run with a torch CPU install: `python sampling/scripts/rng_reference.py`. It re-runs itself with
ATEN_CPU_CAPABILITY=default to also record torch's non-SIMD normal kernel. Writes
sampling/tests/fixtures/rng_reference.safetensors (all tensors f32). Large draws are stored as head/tail
slices plus an FNV-1a 64 checksum of the whole tensor's little-endian f32 bytes (metadata).
"""
import json, os, subprocess, sys
import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "rng_reference.safetensors")
SEEDS = [0, 42, 18446744073709551615]


def fnv1a64(arr):
    h = 0xcbf29ce484222325
    for b in np.ascontiguousarray(arr, dtype="<f4").tobytes():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def prepare_noise(shape, seed, noise_inds=None):
    # Same as comfy/sample.py prepare_noise with an f32 latent.
    generator = torch.manual_seed(seed)
    if noise_inds is None:
        return torch.randn(shape, generator=generator, device="cpu")
    unique_inds, inverse = np.unique(noise_inds, return_inverse=True)
    noises = []
    for i in range(unique_inds[-1] + 1):
        noise = torch.randn([1] + list(shape)[1:], generator=generator, device="cpu")
        if i in unique_inds:
            noises.append(noise)
    noises = [noises[i] for i in inverse]
    return torch.cat(noises, axis=0)


def draws(kernel):
    tensors, meta = {}, {}
    for seed in SEEDS:
        tensors[f"{kernel}/seed{seed}/1x4x8x8"] = prepare_noise([1, 4, 8, 8], seed)
        big = prepare_noise([2, 4, 64, 64], seed).flatten()
        tensors[f"{kernel}/seed{seed}/2x4x64x64/head"] = big[:256].clone()
        tensors[f"{kernel}/seed{seed}/2x4x64x64/tail"] = big[-64:].clone()
        meta[f"{kernel}/seed{seed}/2x4x64x64/fnv1a64"] = str(fnv1a64(big.numpy()))
        # Scalar path (< 16 elements), the ragged-tail vectorised path, and a cached-normal carry-over.
        for n in [1, 3, 15, 16, 17, 37]:
            tensors[f"{kernel}/seed{seed}/n{n}"] = prepare_noise([n], seed)
        g = torch.manual_seed(seed)
        tensors[f"{kernel}/seed{seed}/chain3_3_20"] = torch.cat(
            [torch.randn([3], generator=g), torch.randn([3], generator=g), torch.randn([20], generator=g)])
        tensors[f"{kernel}/seed{seed}/batch_index_3x4x2x2_2_0_2"] = prepare_noise([3, 4, 2, 2], seed, [2, 0, 2])
        tensors[f"{kernel}/seed{seed}/batch_index_2x1x1x3_1_3"] = prepare_noise([2, 1, 1, 3], seed, [1, 3])
    return tensors, meta


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        t, m = draws("scalar")
        save_file({k: v.contiguous() for k, v in t.items()}, sys.argv[2], metadata=m)
        sys.exit(0)
    assert torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"), "run on an x86 machine with AVX2"
    tensors, meta = draws("x86simd")
    tmp = OUT + ".child"
    subprocess.run([sys.executable, __file__, "--child", tmp], check=True,
                   env={**os.environ, "ATEN_CPU_CAPABILITY": "default"})
    from safetensors import safe_open
    with safe_open(tmp, "pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
        meta.update(f.metadata())
    os.remove(tmp)
    meta["torch_version"] = torch.__version__
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata=meta)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")
