#!/usr/bin/env bash
# GPU builds, checked in one go (not part of CI, which has no GPU):
#   tools/check-gpu.sh cuda    needs the CUDA toolkit (nvcc); Debian: apt install nvidia-cuda-toolkit
#   tools/check-gpu.sh metal   needs macOS with Xcode's command-line tools
# 1. builds the server, tests and benches with the backend's cargo feature;
# 2. runs the whole test suite in that build (models on the CPU: the build must not change it);
# 3. where a GPU is present: the default graph on SD1 and SDXL on the GPU in every dtype it supports
#    and partially loaded (weights streamed from RAM per layer),
#    compared with the CPU in f32 (tests/diffusion.rs), and the UNet/VAE bench on it in f16, beside
#    PyTorch on the same shapes when a CUDA-enabled torch is importable.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-}"
case "$backend" in
    cuda)
        command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit" >&2; exit 2; }
        has_gpu() { nvidia-smi -L >/dev/null 2>&1; }
        if ! has_gpu && [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
            # candle's kernels are compiled for the GPU nvidia-smi reports; without one, pick a
            # target every CUDA 11.8+ toolkit knows (Ampere, whose PTX also runs on newer GPUs).
            export CUDA_COMPUTE_CAP=80
        fi
        ;;
    metal)
        [ "$(uname)" = Darwin ] || { echo "metal builds need macOS" >&2; exit 2; }
        has_gpu() { true; }
        ;;
    *)
        echo "usage: tools/check-gpu.sh cuda|metal" >&2
        exit 2
        ;;
esac

echo "== build with --features $backend"
cargo build --locked --features "$backend" --tests --benches
echo "== the whole test suite in the $backend build"
cargo test --locked --features "$backend"
if has_gpu; then
    echo "== the default graph on the GPU, every dtype and partially loaded (--gpu-memory 1), against the CPU in f32"
    WEFT_TEST_DEVICE="$backend" cargo test --locked --features "$backend" --test tests \
        diffusion::a_gpu_runs_the_default_graph -- --nocapture
    echo "== bench: weft on the GPU, f16"
    WEFT_BENCH_DEVICE="$backend" WEFT_BENCH_DTYPE=f16 cargo bench --locked --features "$backend" --bench unet_vae
    if [ "$backend" = cuda ] && python3 -c 'import torch, diffusers; assert torch.cuda.is_available()' 2>/dev/null; then
        echo "== bench: PyTorch on the GPU, f16"
        python3 tools/parity/unet_vae_bench.py --device cuda --dtype f16
    fi
else
    echo "== no GPU here: built and tested on the CPU only"
fi
