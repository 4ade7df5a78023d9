"""Deterministic synthetic weights (COMMON.md convention), shared by the unet reference scripts."""
import numpy as np
import torch

_MASK = (1 << 64) - 1


def _fnv1a64(key: str) -> int:
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & _MASK
    return h


def synth(key: str, shape) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape)) if len(shape) > 0 else 1
    seed = np.uint64(_fnv1a64(key))
    with np.errstate(over="ignore"):
        x = seed + np.arange(numel, dtype=np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    if len(shape) >= 2:
        fan_in = numel // shape[0]
        v = (2 * u - 1) / np.sqrt(fan_in)
    elif len(shape) == 1 and key.endswith("weight"):
        v = 1 + 0.1 * (2 * u - 1)
    else:
        v = 0.1 * (2 * u - 1)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fill_synth(model: torch.nn.Module) -> None:
    """Overwrite every state_dict entry of `model` with its synthetic value."""
    sd = model.state_dict()
    new = {k: synth(k, v.shape).to(v.dtype) for k, v in sd.items()}
    model.load_state_dict(new)
