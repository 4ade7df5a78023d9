"""Reference fixtures for torchsde's Brownian tree (crates/weft-engine/src/sampling/brownian.rs).

Run: `python tools/parity/brownian_reference.py` (needs torch, numpy, scipy, safetensors and
torchsde, `pip install torchsde`; made with torchsde 0.2.6). Writes
tests/fixtures/sampling/brownian_reference.safetensors (all tensors f32) whose metadata `cases` (JSON)
lists every case:

- `tree`: `torchsde.BrownianTree(t0, zeros(shape), t1, entropy=seed)` queried with `tree(ta, tb)` in
  the listed order (out of order, overlapping, spanning earlier queries, clamped past the ends);
- `sampler`: ComfyUI's BrownianTreeNoiseSampler (sampler_reference.BrownianTreeNoise) on a latent of
  `shape`, built as the SDE samplers build it (`sigma_min, sigma_max` = min positive and max sigma),
  queried with exactly the (sigma, sigma_next) pairs dpmpp_2m_sde / dpmpp_3m_sde (`2m`) or dpmpp_sde
  (`sde`, with its f32 midpoint sigma) ask for, on the KSampler sigmas of SD1.5's schedule; `seeds`
  of length > 1 means one tree per batch item (BatchedBrownianTree given a list);
- `sample/...`: final latents of dpmpp_sde / dpmpp_2m_sde / dpmpp_3m_sde on sampler_reference.py's
  analytic CFG denoiser, for more seeds and step counts than sampler_reference.safetensors holds.
"""
import json, math, os, warnings
import torch
import torchsde
from safetensors.torch import save_file

from sampler_reference import (MS, Model, BrownianTreeNoise, ksampler_sigmas, sample_dpmpp_sde,
                               sample_dpmpp_2m_sde, sample_dpmpp_3m_sde)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "brownian_reference.safetensors")
BIG_SEEDS = [2 ** 63 - 1, 2 ** 64 - 1]

warnings.filterwarnings("ignore", message="Should have")  # torchsde clamps out-of-range times


def sampler_queries(kind, sigmas):
    """The (sigma, sigma_next) pairs a sampler passes to its noise sampler, as f32 0-dim tensors."""
    out = []
    for i in range(len(sigmas) - 1):
        if sigmas[i + 1] == 0:
            continue
        if kind == "sde":  # sample_dpmpp_sde: lambda = -log(sigma), midpoint at r = 1/2
            ls, lt = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
            s1 = (ls + 0.5 * (lt - ls)).neg().exp()
            out.append((sigmas[i], s1))
        out.append((sigmas[i], sigmas[i + 1]))
    return out


def main():
    ms = MS()
    tensors, cases = {}, {}

    def tree_case(name, t0, t1, shape, seed, queries):
        t0, t1 = torch.tensor(t0, dtype=torch.float32), torch.tensor(t1, dtype=torch.float32)
        tree = torchsde.BrownianTree(t0, torch.zeros(shape), t1, entropy=seed)
        qs = [(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)) for a, b in queries]
        tensors[f"{name}/queries"] = torch.stack([torch.stack(q) for q in qs])
        tensors[f"{name}/out"] = torch.stack([tree(a, b) for a, b in qs])
        cases[name] = {"kind": "tree", "t0": float(t0), "t1": float(t1), "shape": list(shape), "seeds": [seed]}

    def sampler_case(name, kind, sigmas, shape, seeds):
        x = torch.zeros(shape)
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        ns = BrownianTreeNoise(x, lo, hi, seeds if len(seeds) > 1 else seeds[0])
        qs = sampler_queries(kind, sigmas)
        tensors[f"{name}/queries"] = torch.stack([torch.stack([a, b]) for a, b in qs]).float()
        tensors[f"{name}/out"] = torch.stack([ns(a, b) for a, b in qs]).float()
        cases[name] = {"kind": "sampler", "t0": float(lo), "t1": float(hi), "shape": list(shape), "seeds": seeds}

    # Raw tree queries in awkward orders.
    sm, sM = float(ms.sigma_min), float(ms.sigma_max)
    awkward = [(5.0, 7.5), (1.0, 2.0), (0.5, 9.0), (2.0, 2.0), (sm, sM),
               (0.01, 0.2), (14.0, 20.0), (7.5, 9.0), (1.0, 14.0), (0.1, 0.1000014)]
    for seed in [0, 42, 123] + BIG_SEEDS:
        tree_case(f"tree/awkward/{seed}", sm, sM, (1, 4, 8, 8), seed, awkward)
    tree_case("tree/scalar_path/7", 0.5, 3.0, (1, 1, 2, 2), 7, awkward[:4])  # < 16 values: torch's scalar randn

    # The SDE samplers' own queries.
    for kind in ["2m", "sde"]:
        for sched in ["karras", "normal"]:
            for steps in [4, 6, 10]:
                sigmas = ksampler_sigmas(ms, sched, "dpmpp_2m_sde", steps).float()
                for seed in ([42, 123] if steps != 6 else [0] + BIG_SEEDS):
                    sampler_case(f"sampler/{kind}/{sched}/{steps}/{seed}", kind, sigmas, (1, 4, 8, 8), [seed])
    sigmas = ksampler_sigmas(ms, "karras", "dpmpp_2m_sde", 5).float()
    sampler_case("sampler/2m/karras/5/batch2", "2m", sigmas, (2, 4, 8, 8), [42])
    sampler_case("sampler/sde/karras/5/per_item", "sde", sigmas, (3, 4, 4, 4), [0, 42, 2 ** 63 - 1])
    # A tree built with t0 > t1 and queried upwards: the two signs of BatchedBrownianTree.
    x = torch.zeros(1, 4, 4, 4)
    ns = BrownianTreeNoise(x, sigmas[0], sigmas[-2], 9)
    qs = [(sigmas[i + 1], sigmas[i]) for i in range(len(sigmas) - 2)]
    tensors["sampler/reversed/queries"] = torch.stack([torch.stack([a, b]) for a, b in qs]).float()
    tensors["sampler/reversed/out"] = torch.stack([ns(a, b) for a, b in qs]).float()
    cases["sampler/reversed"] = {"kind": "sampler", "t0": float(sigmas[0]), "t1": float(sigmas[-2]),
                                 "shape": [1, 4, 4, 4], "seeds": [9]}

    # End to end on the analytic denoiser (sampler_reference.py's main, other seeds and steps).
    torch.manual_seed(123)
    mu_c = torch.randn(1, 4, 8, 8) * 0.5
    mu_u = torch.randn(1, 4, 8, 8) * 0.5
    samplers = {"dpmpp_sde": sample_dpmpp_sde, "dpmpp_2m_sde": sample_dpmpp_2m_sde, "dpmpp_3m_sde": sample_dpmpp_3m_sde}
    for name, fn in samplers.items():
        for sched in ["karras", "normal"]:
            for steps in [4, 8]:
                for seed in [0, 123, 2 ** 64 - 1]:
                    sigmas = ksampler_sigmas(ms, sched, name, steps).float()
                    noise = torch.randn([1, 4, 8, 8], generator=torch.manual_seed(seed))
                    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
                    ns = BrownianTreeNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)
                    with torch.no_grad():
                        tensors[f"sample/{name}/{sched}/{steps}/{seed}"] = fn(Model(mu_c, mu_u), x, sigmas, ns).float()

    meta = {"torch_version": torch.__version__, "torchsde_version": torchsde.__version__,
            "cases": json.dumps(cases)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata=meta)
    print("wrote", OUT, os.path.getsize(OUT), "bytes,", len(cases), "noise cases")


if __name__ == "__main__":
    main()
