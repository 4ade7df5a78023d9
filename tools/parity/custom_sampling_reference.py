"""Reference fixtures for the custom-sampling nodes (src/nodes/custom_sampling.rs,
crates/weft-engine/src/sampling/custom_schedules.rs and the sampler options of
crates/weft-engine/src/sampling/samplers).

Run: `/tmp/peer-venv/bin/python tools/parity/custom_sampling_reference.py` (torch, numpy, scipy,
safetensors). Writes tests/fixtures/sampling/custom_sampling_reference.safetensors.

Sigma lists: ComfyUI's get_sigmas_polyexponential, get_sigmas_vp, get_sigmas_laplace
(comfy/k_diffusion/sampling.py), beta_scheduler with alpha/beta (comfy/samplers.py),
AlignYourStepsScheduler (comfy_extras/nodes_align_your_steps.py), FlipSigmas and
SplitSigmasDenoise (comfy_extras/nodes_custom_sampler.py), transcribed.
Samplers: the sample_* functions with the options the sampler nodes set (eta, s_noise, r,
solver_type, order, dpm_adaptive's controller), on the analytic CFG denoiser and noise of
sampler_reference.py (imported from it), 10 karras steps.
"""
import math, os, sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampler_reference as ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "custom_sampling_reference.safetensors")
SEED = 42


# ---- sigma lists ----
def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.):
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return ref.append_zero(sigmas)

def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3):
    t = torch.linspace(1, eps_s, n)
    return ref.append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))

def get_sigmas_laplace(n, sigma_min, sigma_max, mu=0., beta=0.5):
    epsilon = 1e-5
    x = torch.linspace(0, 1, n)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + epsilon)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)

AYS = {"SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
       "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
       "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002]}

def loglinear_interp(t_steps, num_steps):
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(t_steps[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()

def ays(model_type, steps, denoise):
    total_steps = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.FloatTensor([])
        total_steps = round(steps * denoise)
    sigmas = AYS[model_type][:]
    if (steps + 1) != len(sigmas):
        sigmas = loglinear_interp(sigmas, steps + 1)
    sigmas = sigmas[-(total_steps + 1):]
    sigmas[-1] = 0
    return torch.FloatTensor(sigmas)

def flip(sigmas):
    sigmas = sigmas.flip(0)
    if sigmas[0] == 0:
        sigmas[0] = 0.0001
    return sigmas

def split_denoise(sigmas, denoise):
    steps = max(sigmas.shape[-1] - 1, 0)
    total_steps = round(steps * denoise)
    return sigmas[:-(total_steps)], sigmas[-(total_steps + 1):]


# ---- samplers with their options (eps branches of comfy/k_diffusion/sampling.py) ----
def sample_euler_ancestral(model, x, sigmas, ns, eta=1., s_noise=1.):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sd, su = ref.get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sd == 0:
            x = denoised
        else:
            d = ref.to_d(x, sigmas[i], denoised)
            x = x + d * (sd - sigmas[i]) + ns(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x

def sample_dpmpp_2s_ancestral(model, x, sigmas, ns, eta=1., s_noise=1.):
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda s: s.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sd, su = ref.get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sd == 0:
            x = x + ref.to_d(x, sigmas[i], denoised) * (sd - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sd)
            h = t_next - t
            s = t + h * 0.5
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s))
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + ns(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x

CASES = {
    # name: (sampler function, Brownian-tree noise?, options)
    "euler_ancestral/eta0.5_s0.8": (sample_euler_ancestral, False, dict(eta=0.5, s_noise=0.8)),
    "euler_ancestral/eta0": (sample_euler_ancestral, False, dict(eta=0.0, s_noise=1.0)),
    "euler_ancestral_cfg_pp/eta0.5_s0.7": (ref.sample_euler_ancestral_cfg_pp, False, dict(eta=0.5, s_noise=0.7)),
    "lms/order2": (ref.sample_lms, False, dict(order=2)),
    "lms/order6": (ref.sample_lms, False, dict(order=6)),
    "dpmpp_sde/eta0.5_s0.9_r0.3": (ref.sample_dpmpp_sde, True, dict(eta=0.5, s_noise=0.9, r=0.3)),
    "dpmpp_2m_sde/heun_eta0.6_s0.8": (ref.sample_dpmpp_2m_sde, True, dict(eta=0.6, s_noise=0.8, solver_type='heun')),
    "dpmpp_2m_sde/midpoint_eta0": (ref.sample_dpmpp_2m_sde, True, dict(eta=0.0, s_noise=1.0, solver_type='midpoint')),
    "dpmpp_3m_sde/eta0.4_s1.2": (ref.sample_dpmpp_3m_sde, True, dict(eta=0.4, s_noise=1.2)),
    "dpmpp_2s_ancestral/eta0.5_s0.7": (sample_dpmpp_2s_ancestral, False, dict(eta=0.5, s_noise=0.7)),
    "dpm_adaptive/order2": (ref.sample_dpm_adaptive, False, dict(order=2, rtol=0.1, atol=0.01, h_init=0.1, pcoeff=0.1, icoeff=0.8, dcoeff=0.05, accept_safety=0.9)),
    # h_init 0.5 keeps the first error estimates above f32 round-off, where the controller would
    # amplify last-bit differences into different step sizes.
    "dpm_adaptive/order3_eta0.5": (ref.sample_dpm_adaptive, False, dict(order=3, h_init=0.5, eta=0.5, s_noise=0.8)),
}


def main():
    ms = ref.MS()
    smin, smax = float(ms.sigma_min), float(ms.sigma_max)
    out = {}
    for n in [1, 5, 20]:
        for rho in [1.0, 0.5, 2.5]:
            out[f"poly/{n}/{rho}/default"] = get_sigmas_polyexponential(n, 0.0291675, 14.614642, rho)
            out[f"poly/{n}/{rho}/wide"] = get_sigmas_polyexponential(n, 0.1, 80.0, rho)
        out[f"vp/{n}/19.9/0.1/0.001"] = get_sigmas_vp(n)
        out[f"laplace/{n}/0.0/0.5"] = get_sigmas_laplace(n, 0.0291675, 14.614642)
    out["vp/10/10.0/0.5/0.01"] = get_sigmas_vp(10, 10.0, 0.5, 0.01)
    out["laplace/10/0.5/1.0"] = get_sigmas_laplace(10, 0.0291675, 14.614642, 0.5, 1.0)
    for n in [5, 20]:
        for a, b in [(0.6, 0.6), (0.3, 0.8), (1.0, 1.0)]:
            out[f"beta/{n}/{a}/{b}"] = ref.beta_scheduler(ms, n, a, b)
    for t in AYS:
        for n in [10, 4, 25]:
            for d in [1.0, 0.5, 0.33]:
                out[f"ays/{t}/{n}/{d}"] = ays(t, n, d)
    karras = ref.get_sigmas_karras(10, smin, smax)
    out["flip/karras10"] = flip(karras.clone())
    for d in [1.0, 0.5, 0.33, 0.0]:
        high, low = split_denoise(karras, d)
        out[f"split/{d}/high"], out[f"split/{d}/low"] = high, low

    torch.manual_seed(123)
    mu_c = torch.randn(1, 4, 8, 8) * 0.5
    mu_u = torch.randn(1, 4, 8, 8) * 0.5
    noise = torch.randn([1, 4, 8, 8], generator=torch.manual_seed(SEED))
    out["mu_cond"], out["mu_uncond"] = mu_c, mu_u
    sigmas = karras.float()
    for key, (fn, brownian, opts) in CASES.items():
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        model = ref.Model(mu_c, mu_u)
        ns = ref.brownian_noise_sampler(x, sigmas, SEED) if brownian else ref.default_noise_sampler(x, SEED)
        with torch.no_grad():
            out[f"sample/{key}"] = fn(model, x, sigmas, ns, **opts).float()
    out = {k: (v if isinstance(v, torch.Tensor) else torch.tensor(v)).float().contiguous().clone() for k, v in out.items()}
    # safetensors cannot hold empty tensors everywhere; store lengths beside them.
    lengths = {f"len/{k}": torch.tensor([float(v.numel())]) for k, v in out.items()}
    out = {k: (v if v.numel() else torch.zeros(1)) for k, v in out.items()}
    out.update(lengths)
    save_file(out, OUT, metadata={"torch_version": torch.__version__})
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
