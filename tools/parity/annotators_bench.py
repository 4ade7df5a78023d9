"""PyTorch/OpenCV side of `cargo bench --bench annotators`: the ControlNet preprocessors on the
same 512x512 test image at resolution 512, each the whole node call as comfyui_controlnet_aux
makes it (uint8 round trip, resize and pad, network, post-processing), median of RUNS after one
warm-up, torch on 2 threads.

The classical ones are the aux pack's OpenCV code as restated in preprocess_reference.py (the
restatement is line for line, so the time is OpenCV's). The networks' rows come from each
family's reference script, run as `<x>_reference.py --bench`.

Run: /tmp/peer-venv/bin/python tools/parity/annotators_bench.py [RUNS]
"""
import os
import subprocess
import sys
import time

import cv2
import kornia
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import preprocess_reference as ref  # noqa: E402

NETWORK_SCRIPTS = [
    "hed_reference.py",
    "lineart_reference.py",
    "mlsd_reference.py",
    "depth_anything_v2_reference.py",
    "openpose_reference.py",
    "normalbae_reference.py",
    "midas_reference.py",
    "uniformer_reference.py",
    "zoe_reference.py",
]


def test_image():
    """benches/annotators.rs's image, in uint8 as the aux nodes see it."""
    h = w = 512
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = x / w, y / h
    d = np.sqrt((fx - 0.4) ** 2 + (fy - 0.45) ** 2)
    disk = np.where(d < 0.22, 0.35, 0.0).astype(np.float32)
    xi, yi = np.mgrid[0:h, 0:w][1], np.mgrid[0:h, 0:w][0]
    bar = np.where(((xi // 48) % 3 == 0) & (yi > 300), 0.3, 0.0).astype(np.float32)
    texture = ((xi * 7919 + yi * 104729) % 97).astype(np.float32) / 97.0 * 0.05
    r = np.minimum(0.2 + 0.5 * fx + disk + texture, 1.0)
    g = np.minimum(0.3 + 0.4 * fy + bar + texture, 1.0)
    b = np.clip(0.6 - 0.3 * fx * fy + disk * 0.5, 0.0, 1.0)
    img = np.stack([r, g, b], axis=2).astype(np.float32)
    return np.asarray(img * 255.0, dtype=np.uint8), torch.from_numpy(img)[None]


def bench(name, runs, f):
    f()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(f"{name:<34} median {times[len(times) // 2]:>8.1f} ms  (min {times[0]:.1f}, max {times[-1]:.1f})")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    u8, image = test_image()
    print(f"torch {torch.__version__}, opencv {cv2.__version__}, 2 threads, 512x512 in, resolution 512")
    bench("Canny (kornia)", runs, lambda: ref.comfy_canny(image, 0.4, 0.8))
    bench("CannyEdgePreprocessor", runs, lambda: ref.canny_aux(u8))
    bench("Scribble_XDoG_Preprocessor", runs, lambda: ref.xdog_aux(u8))
    bench("LineartStandardPreprocessor", runs, lambda: ref.lineart_standard_aux(u8))
    bench("BinaryPreprocessor", runs, lambda: ref.binary_aux(u8))
    bench("ColorPreprocessor", runs, lambda: ref.color_aux(u8))
    for script in NETWORK_SCRIPTS:
        path = os.path.join(HERE, script)
        if not os.path.exists(path):
            print(f"{script:<34} skipped: not there")
            continue
        out = subprocess.run([sys.executable, path, "--bench"], capture_output=True, text=True)
        print(out.stdout.rstrip() or f"{script}: {out.stderr.strip()[-300:]}")


if __name__ == "__main__":
    main()
