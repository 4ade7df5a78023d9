"""Reference fixtures for the samplers and schedulers (crates/weft-engine/src/sampling/{schedulers,samplers}).

Run: `python tools/parity/sampler_reference.py` (needs torch, numpy, scipy, safetensors, torchsde).
Writes tests/fixtures/sampling/sampler_reference.safetensors.

The maths is ComfyUI's: the scheduler functions of comfy/samplers.py, ModelSamplingDiscrete of
comfy/model_sampling.py, the sample_* functions of comfy/k_diffusion/sampling.py (with deis.py and
sa_solver.py) and sample_unipc of comfy/extra_samplers/uni_pc.py, transcribed
here for an eps model (alpha = 1, no rectified-flow branches, default options), with ComfyUI's model
wrapper replaced by an analytic denoiser: data ~ N(mu, s^2) per element gives the exact denoiser
D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2). A CFG pair (mu_cond, mu_uncond, scale 3) gives
the cfg_pp samplers their uncond prediction. Noise: comfy/sample.py prepare_noise(seed=42) and, for the
ancestral samplers, ComfyUI's default_noise_sampler (CPU generator seeded with seed + 1).
SDE samplers draw from torchsde's BrownianTree as ComfyUI's BrownianTreeNoiseSampler does (pip install torchsde).
"""
import math, os
from functools import partial
import numpy as np
import scipy.stats
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "sampler_reference.safetensors")
SEED = 42
STEPS = 10
S_DATA = 0.5
CFG = 3.0


# ---- comfy/model_sampling.py ModelSamplingDiscrete (eps) ----
class MS:
    def __init__(self):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        ac = torch.cumprod(1. - betas, dim=0)
        sigmas = ((1 - ac) / ac) ** 0.5
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self.sigma_min = self.sigmas[0]
        self.sigma_max = self.sigmas[-1]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), min=0, max=(len(self.sigmas) - 1))
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0: return 999999999.9
        if percent >= 1.0: return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


# ---- schedulers (comfy/samplers.py, comfy/k_diffusion/sampling.py) ----
def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])

def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.):
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)

def get_sigmas_exponential(n, sigma_min, sigma_max):
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())

def simple_scheduler(s, steps):
    sigs = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    return torch.FloatTensor(sigs + [0.0])

def ddim_scheduler(s, steps):
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1; sigs = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs += [float(s.sigmas[x])]; x += ss
    return torch.FloatTensor(sigs[::-1])

def normal_scheduler(s, steps, sgm=False):
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1; append = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(s.sigma(ts)) for ts in timesteps]
    return torch.FloatTensor(sigs + ([0.0] if append else []))

def beta_scheduler(s, steps, alpha=0.6, beta=0.6):
    total = len(s.sigmas) - 1
    ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    sigs, last_t = [], -1
    for t in ts:
        if t != last_t:
            sigs += [float(s.sigmas[int(t)])]
        last_t = t
    return torch.FloatTensor(sigs + [0.0])

def linear_quadratic_schedule(s, steps, threshold_noise=0.025, linear_steps=None):
    if steps == 1:
        sched = [1.0, 0.0]
    else:
        if linear_steps is None: linear_steps = steps // 2
        lin = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        qs = steps - linear_steps
        qc = diff / (linear_steps * qs ** 2)
        lc = threshold_noise / linear_steps - 2 * diff / (qs ** 2)
        const = qc * (linear_steps ** 2)
        quad = [qc * (i ** 2) + lc * i + const for i in range(linear_steps, steps)]
        sched = [1.0 - x for x in lin + quad + [1.0]]
    return torch.FloatTensor(sched) * s.sigma_max.cpu()

def kl_optimal_scheduler(n, sigma_min, sigma_max):
    adj = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = adj.new_zeros(n + 1)
    sigmas[:-1] = (adj * math.atan(sigma_min) + (1 - adj) * math.atan(sigma_max)).tan_()
    return sigmas

SCHEDULERS = {
    "simple": lambda ms, n: simple_scheduler(ms, n),
    "sgm_uniform": lambda ms, n: normal_scheduler(ms, n, sgm=True),
    "karras": lambda ms, n: get_sigmas_karras(n, float(ms.sigma_min), float(ms.sigma_max)),
    "exponential": lambda ms, n: get_sigmas_exponential(n, float(ms.sigma_min), float(ms.sigma_max)),
    "ddim_uniform": lambda ms, n: ddim_scheduler(ms, n),
    "beta": lambda ms, n: beta_scheduler(ms, n),
    "normal": lambda ms, n: normal_scheduler(ms, n),
    "linear_quadratic": lambda ms, n: linear_quadratic_schedule(ms, n),
    "kl_optimal": lambda ms, n: kl_optimal_scheduler(n, float(ms.sigma_min), float(ms.sigma_max)),
}
DISCARD = {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}

def ksampler_sigmas(ms, scheduler, sampler, steps):
    if sampler in DISCARD:
        s = SCHEDULERS[scheduler](ms, steps + 1)
        return torch.cat([s[:-2], s[-1:]])
    return SCHEDULERS[scheduler](ms, steps)


# ---- analytic CFG denoiser standing in for comfy's CFGGuider ----
class Model:
    def __init__(self, mu_c, mu_u):
        self.mu_c, self.mu_u, self.uncond = mu_c, mu_u, None
    def d(self, x, sigma, mu):
        s2 = sigma * sigma
        return (S_DATA ** 2 * x + s2 * mu) / (S_DATA ** 2 + s2)
    def __call__(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)[0]
        c, u = self.d(x, sigma, self.mu_c), self.d(x, sigma, self.mu_u)
        self.uncond = u
        return u + (c - u) * CFG


# ---- samplers: comfy/k_diffusion/sampling.py (eps branches, defaults) ----
def to_d(x, sigma, denoised):
    return (x - denoised) / sigma

def get_ancestral_step(sigma_from, sigma_to, eta=1.):
    if not eta:
        return sigma_to, 0.
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up

def default_noise_sampler(x, seed):
    g = torch.Generator(device="cpu"); g.manual_seed(seed + 1)
    return lambda sigma, sigma_next: torch.randn(x.size(), dtype=x.dtype, generator=g)

def sample_euler(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x

def sample_euler_ancestral(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1])
        if sd == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sd - sigmas[i]) + ns(sigmas[i], sigmas[i + 1]) * su
    return x

def sample_euler_ancestral_cfg_pp(model, x, sigmas, ns, eta=1., s_noise=1.):
    lambda_fn = lambda s: s.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i]); uncond = model.uncond
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            alpha_s = sigmas[i] * lambda_fn(sigmas[i]).exp()
            alpha_t = sigmas[i + 1] * lambda_fn(sigmas[i + 1]).exp()
            d = to_d(x, sigmas[i], alpha_s * uncond)
            sd, su = get_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta=eta)
            sd = alpha_t * sd
            x = alpha_t * denoised + sd * d
            if eta > 0 and s_noise > 0:
                x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x

def sample_euler_cfg_pp(model, x, sigmas, ns):
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, ns, eta=0.0, s_noise=0.0)

def sample_heun(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x

def sample_heunpp2(model, x, sigmas, ns):
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            w2 = sigmas[i + 1] / (2 * sigmas[0]); w1 = 1 - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2]))
            w = 3 * sigmas[0]; w2 = sigmas[i + 1] / w; w3 = sigmas[i + 2] / w; w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x

def sample_dpm_2(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x

def sample_dpm_2_ancestral(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1])
        d = to_d(x, sigmas[i], denoised)
        if sd == 0:
            x = x + d * (sd - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sd.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sd - sigmas[i])
            x = x + ns(sigmas[i], sigmas[i + 1]) * su
    return x

def linear_multistep_coeff(order, t, i, j):
    from scipy import integrate
    def fn(tau):
        prod = 1.
        for k in range(order):
            if j == k: continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod
    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]

def sample_lms(model, x, sigmas, ns, order=4):
    sigmas_cpu = sigmas.numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order: ds.pop(0)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur, sigmas_cpu, i, j) for j in range(cur)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x

def sample_dpm_fast(model, x, sigmas, ns):
    sigma_min = sigmas[-1]
    if sigma_min == 0: sigma_min = sigmas[-2]
    n = len(sigmas) - 1
    sig = lambda t: t.neg().exp()
    tf = lambda s: -s.log()
    def eps(x, t):
        return (x - model(x, sig(t))) / sig(t)
    def step1(x, t, tn, e):
        return x - sig(tn) * (tn - t).expm1() * e
    def step2(x, t, tn, e, r1=1 / 2):
        h = tn - t; s1 = t + r1 * h
        u1 = x - sig(s1) * (r1 * h).expm1() * e
        e1 = eps(u1, s1)
        return x - sig(tn) * h.expm1() * e - sig(tn) / (2 * r1) * h.expm1() * (e1 - e)
    def step3(x, t, tn, e, r1=1 / 3, r2=2 / 3):
        h = tn - t; s1 = t + r1 * h; s2 = t + r2 * h
        u1 = x - sig(s1) * (r1 * h).expm1() * e
        e1 = eps(u1, s1)
        u2 = x - sig(s2) * (r2 * h).expm1() * e - sig(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (e1 - e)
        e2 = eps(u2, s2)
        return x - sig(tn) * h.expm1() * e - sig(tn) / r2 * (h.expm1() / h - 1) * (e2 - e)
    t_start, t_end = tf(torch.tensor(float(sigmas[0]))), tf(torch.tensor(float(sigma_min)))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i in range(len(orders)):
        t, tn = ts[i], ts[i + 1]
        e = eps(x, t)
        x = [None, step1, step2, step3][orders[i]](x, t, tn, e)
    return x

def sample_dpmpp_2s_ancestral(model, x, sigmas, ns, cfg_pp=False):
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda s: s.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i]); uncond = model.uncond
        guidance = denoised - uncond
        base = uncond if cfg_pp else denoised
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1])
        if sd == 0:
            x = x + to_d(x, sigmas[i], base) * (sd - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sd)
            h = t_next - t; s = t + h / 2
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * 0.5).expm1() * base
            d2 = model(x_2, sigma_fn(s))
            if cfg_pp: d2 = model.uncond
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * d2
        if sigmas[i + 1] > 0:
            x = x + ns(sigmas[i], sigmas[i + 1]) * su
        if cfg_pp:
            x += guidance
    return x

def sample_dpmpp_2m(model, x, sigmas, ns):
    sigma_fn = lambda t: t.neg().exp(); t_fn = lambda s: s.log().neg()
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            dd = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * dd
        old = denoised
    return x

def sample_dpmpp_2m_cfg_pp(model, x, sigmas, ns):
    t_fn = lambda s: s.log().neg()
    old_u = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i]); uncond = model.uncond
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_u is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_u)
        x = denoised + mix + torch.exp(-h) * x
        old_u = uncond
    return x

def sample_ddpm(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        xin = x / torch.sqrt(1.0 + sigma ** 2.0)
        noise = (x - denoised) / sigma
        ac = 1 / ((sigma * sigma) + 1); acp = 1 / ((sigma_prev * sigma_prev) + 1); alpha = ac / acp
        mu = (1.0 / alpha).sqrt() * (xin - (1 - alpha) * noise / (1 - ac).sqrt())
        if sigma_prev > 0:
            mu += ((1 - alpha) * (1. - acp) / (1. - ac)).sqrt() * ns(sigma, sigma_prev)
        x = mu
        if sigmas[i + 1] != 0:
            x *= torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x

def sample_lcm(model, x, sigmas, ns):
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] + x
    return x

def sample_ipndm(model, x, sigmas, ns, max_order=4):
    buf = []; x_next = x
    for i in range(len(sigmas) - 1):
        tc, tn = sigmas[i], sigmas[i + 1]
        xc = x_next
        denoised = model(xc, tc)
        d = (xc - denoised) / tc
        order = min(max_order, i + 1)
        if tn == 0: x_next = denoised
        elif order == 1: x_next = xc + (tn - tc) * d
        elif order == 2: x_next = xc + (tn - tc) * (3 * d - buf[-1]) / 2
        elif order == 3: x_next = xc + (tn - tc) * (23 * d - 16 * buf[-1] + 5 * buf[-2]) / 12
        else: x_next = xc + (tn - tc) * (55 * d - 59 * buf[-1] + 37 * buf[-2] - 9 * buf[-3]) / 24
        if len(buf) == max_order - 1:
            for k in range(max_order - 2): buf[k] = buf[k + 1]
            buf[-1] = d
        else:
            buf.append(d)
    return x_next

def sample_ipndm_v(model, x, sigmas, ns, max_order=4):
    buf = []; x_next = x; t_steps = sigmas
    for i in range(len(sigmas) - 1):
        tc, tn = sigmas[i], sigmas[i + 1]
        xc = x_next
        denoised = model(xc, tc)
        d = (xc - denoised) / tc
        order = min(max_order, i + 1)
        if tn == 0:
            x_next = denoised
        elif order == 1:
            x_next = xc + (tn - tc) * d
        elif order == 2:
            h_n = tn - tc; h_n_1 = tc - t_steps[i - 1]
            c1 = (2 + (h_n / h_n_1)) / 2; c2 = -(h_n / h_n_1) / 2
            x_next = xc + (tn - tc) * (c1 * d + c2 * buf[-1])
        elif order == 3:
            h_n = tn - tc; h_n_1 = tc - t_steps[i - 1]; h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            c1 = (2 + (h_n / h_n_1)) / 2 + temp
            c2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            c3 = temp * h_n_1 / h_n_2
            x_next = xc + (tn - tc) * (c1 * d + c2 * buf[-1] + c3 * buf[-2])
        else:
            h_n = tn - tc; h_n_1 = tc - t_steps[i - 1]; h_n_2 = t_steps[i - 1] - t_steps[i - 2]; h_n_3 = t_steps[i - 2] - t_steps[i - 3]
            temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) \
                * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
            c1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
            c2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3)))) * temp2
            c3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * (1 + h_n_2 / h_n_3)) * temp2
            c4 = -temp2 * (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * h_n_1 / h_n_2
            x_next = xc + (tn - tc) * (c1 * d + c2 * buf[-1] + c3 * buf[-2] + c4 * buf[-3])
        if len(buf) == max_order - 1:
            for k in range(max_order - 2): buf[k] = buf[k + 1]
            buf[-1] = d
        else:
            buf.append(d)
    return x_next

def res_multistep(model, x, sigmas, ns, eta=1., cfg_pp=False):
    sigma_fn = lambda t: t.neg().exp(); t_fn = lambda s: s.log().neg()
    phi1_fn = lambda t: torch.expm1(t) / t
    phi2_fn = lambda t: (phi1_fn(t) - 1.0) / t
    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i]); uncond = model.uncond
        sd, su = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sd == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sd
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sd - sigmas[i])
        else:
            t, t_old, t_next, t_prev = t_fn(sigmas[i]), t_fn(old_sigma_down), t_fn(sd), t_fn(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            p1, p2 = phi1_fn(-h), phi2_fn(-h)
            b1 = torch.nan_to_num(p1 - p2 / c2, nan=0.0); b2 = torch.nan_to_num(p2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = sigma_fn(h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = sigma_fn(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + ns(sigmas[i], sigmas[i + 1]) * su
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sd
    return x

def sample_gradient_estimation(model, x, sigmas, ns, ge_gamma=2., cfg_pp=False):
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i]); uncond = model.uncond
        d = to_d(x, sigmas[i], uncond if cfg_pp else denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x

def sample_er_sde(model, x, sigmas, ns, s_noise=1.0, max_stage=3):
    scaler = lambda v: v * ((v ** 0.3).exp() + 10.0)
    pts = torch.arange(0, 200.0, dtype=torch.float32)
    er = sigmas.log().neg().neg().exp()
    old_den = old_den_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            ls, lt = er[i], er[i + 1]
            alpha_s = sigmas[i] / ls; alpha_t = sigmas[i + 1] / lt
            r = scaler(lt) / scaler(ls)
            x = alpha_t / alpha_s * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                dt = lt - ls
                step = -dt / 200.0
                pos = lt + pts * step
                sp = scaler(pos)
                s = torch.sum(1 / sp) * step
                den_d = (denoised - old_den) / (ls - er[i - 1])
                x = x + alpha_t * (dt + s * scaler(lt)) * den_d
                if stage >= 3:
                    s_u = torch.sum((pos - ls) / sp) * step
                    den_u = (den_d - old_den_d) / ((ls - er[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * scaler(lt)) * den_u
                old_den_d = den_d
            x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * s_noise * (lt ** 2 - ls ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
        old_den = denoised
    return x

def ei1(h): return torch.expm1(h)
def ei2(h): return (torch.expm1(h) - h) / h

def sample_seeds_2(model, x, sigmas, ns, eta=1., r=0.5):
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised; continue
        ls, lt = -sigmas[i].log(), -sigmas[i + 1].log()
        h = lt - ls; h_eta = h * (eta + 1)
        ls1 = torch.lerp(ls, lt, r); s1 = (-ls1).exp()
        x_2 = s1 / sigmas[i] * (-r * h * eta).exp() * x - (s1 * ls1.exp()) * ei1(-r * h_eta) * denoised
        sde = (-2 * r * h * eta).expm1().neg().sqrt() * ns(sigmas[i], s1)
        x_2 = x_2 + sde * s1
        d2 = model(x_2, s1)
        dd = torch.lerp(denoised, d2, fac)
        alpha_t = sigmas[i + 1] * lt.exp()
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * ei1(-h_eta) * dd
        seg = (r - 1) * h * eta
        sde = sde * seg.exp() + seg.mul(2).expm1().neg().sqrt() * ns(s1, sigmas[i + 1])
        x = x + sde * sigmas[i + 1]
    return x

def sample_seeds_3(model, x, sigmas, ns, eta=1., r_1=1. / 3, r_2=2. / 3):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised; continue
        ls, lt = -sigmas[i].log(), -sigmas[i + 1].log()
        h = lt - ls; h_eta = h * (eta + 1)
        l1, l2 = torch.lerp(ls, lt, r_1), torch.lerp(ls, lt, r_2)
        s1, s2 = (-l1).exp(), (-l2).exp()
        a1, a2, at = s1 * l1.exp(), s2 * l2.exp(), sigmas[i + 1] * lt.exp()
        x_2 = s1 / sigmas[i] * (-r_1 * h * eta).exp() * x - a1 * ei1(-r_1 * h_eta) * denoised
        sde = (-2 * r_1 * h * eta).expm1().neg().sqrt() * ns(sigmas[i], s1)
        x_2 = x_2 + sde * s1
        d2 = model(x_2, s1)
        a3_2 = r_2 / r_1 * ei2(-r_2 * h_eta); a3_1 = ei1(-r_2 * h_eta) - a3_2
        x_3 = s2 / sigmas[i] * (-r_2 * h * eta).exp() * x - a2 * (a3_1 * denoised + a3_2 * d2)
        seg = (r_1 - r_2) * h * eta
        sde = sde * seg.exp() + seg.mul(2).expm1().neg().sqrt() * ns(s1, s2)
        x_3 = x_3 + sde * s2
        d3 = model(x_3, s2)
        b3 = ei2(-h_eta) / r_2; b1 = ei1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - at * (b1 * denoised + b3 * d3)
        seg = (r_2 - 1) * h * eta
        sde = sde * seg.exp() + seg.mul(2).expm1().neg().sqrt() * ns(s2, sigmas[i + 1])
        x = x + sde * sigmas[i + 1]
    return x

# ---- comfy/k_diffusion/sampling.py DPMSolver.dpm_solver_adaptive via ComfyUI's dpm_adaptive wrapper ----
class PIDStepSizeController:
    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps, self.errs = accept_safety, eps, []
    def propose_step(self, error):
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept

def sample_dpm_adaptive(model, x, sigmas, ns, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0., icoeff=1., dcoeff=0., accept_safety=0.81, eta=0., s_noise=1.):
    """DPMSolver.dpm_solver_adaptive with its order and eta branches (noise from `ns`, which
    ComfyUI leaves unseeded)."""
    sigma_min = sigmas[-1]
    if sigma_min == 0:
        sigma_min = sigmas[-2]
    sig = lambda t: t.neg().exp()
    tf = lambda s: s.log().neg()
    def eps(cache, key, x, t):
        if key in cache:
            return cache[key], cache
        e = (x - model(x, sig(t))) / sig(t)
        return e, {key: e, **cache}
    def step1(x, t, tn, cache):
        e, cache = eps(cache, 'eps', x, t)
        return x - sig(tn) * (tn - t).expm1() * e, cache
    def step2(x, t, tn, r1=1 / 2, cache=None):
        h = tn - t
        e, cache = eps(cache, 'eps', x, t)
        s1 = t + r1 * h
        u1 = x - sig(s1) * (r1 * h).expm1() * e
        e1, cache = eps(cache, 'eps_r1', u1, s1)
        return x - sig(tn) * h.expm1() * e - sig(tn) / (2 * r1) * h.expm1() * (e1 - e), cache
    def step3(x, t, tn, r1=1 / 3, r2=2 / 3, cache=None):
        h = tn - t
        e, cache = eps(cache, 'eps', x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - sig(s1) * (r1 * h).expm1() * e
        e1, cache = eps(cache, 'eps_r1', u1, s1)
        u2 = x - sig(s2) * (r2 * h).expm1() * e - sig(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (e1 - e)
        e2, cache = eps(cache, 'eps_r2', u2, s2)
        return x - sig(tn) * h.expm1() * e - sig(tn) / r2 * (h.expm1() / h - 1) * (e2 - e), cache
    t_start, t_end = tf(torch.as_tensor(sigmas[0])), tf(torch.as_tensor(sigma_min))
    forward = t_end > t_start
    h_init = abs(h_init) * (1 if forward else -1)
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev = t_start, x
    pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, order, accept_safety)
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        cache = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        if eta:
            sd, su = get_ancestral_step(sig(s), sig(t), eta)
            t_ = torch.minimum(t_end, tf(sd))
            su = (sig(t) ** 2 - sig(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.
        _, cache = eps(cache, 'eps', x, s)
        if order == 2:
            x_low, cache = step1(x, s, t_, cache)
            x_high, cache = step2(x, s, t_, cache=cache)
        else:
            x_low, cache = step2(x, s, t_, r1=1 / 3, cache=cache)
            x_high, cache = step3(x, s, t_, cache=cache)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * ns(sig(s), sig(t))
            s = t
    return x


# ---- comfy/k_diffusion/sa_solver.py + sampling.py sample_sa_solver (defaults, eps model) ----
def _sa_exponential_coeffs(s, t, solver_order, tau_t):
    tau_mul = 1 + tau_t ** 2
    h = t - s
    p = torch.arange(solver_order, dtype=s.dtype)
    product_terms_factored = (t ** p - s ** p * (-tau_mul * h).exp())
    recursive_depth_mat = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    recursive_coeff_mat = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0)
    if tau_t > 0:
        recursive_coeff_mat = recursive_coeff_mat - (recursive_depth_mat * math.log(tau_mul))
    signs = torch.where(recursive_depth_mat % 2 == 0, 1.0, -1.0)
    recursive_coeff_mat = (recursive_coeff_mat.exp() * signs).tril()
    return recursive_coeff_mat @ product_terms_factored

def _sa_b_coeffs(sigma_next, curr_lambdas, lambda_s, lambda_t, tau_t):
    n = curr_lambdas.shape[0]
    exp_integral_coeffs = _sa_exponential_coeffs(lambda_s, lambda_t, n, tau_t)
    vandermonde_matrix_T = torch.vander(curr_lambdas, n, increasing=True).T
    lagrange_integrals = torch.linalg.solve(vandermonde_matrix_T, exp_integral_coeffs)
    return sigma_next * lambda_t.exp() * lagrange_integrals

def sample_sa_solver(model, x, sigmas, ns, predictor_order=3, corrector_order=4, use_pece=False):
    lambdas = sigmas.log().neg()
    start_sigma, end_sigma = MS().percent_to_sigma(0.2), MS().percent_to_sigma(0.8)
    tau_func = lambda sigma: 1.0 if start_sigma >= sigma.item() >= end_sigma else 0.0
    max_used_order = max(predictor_order, corrector_order)
    x_pred = x
    h, tau_t, noise, pred_list = 0.0, 0.0, 0.0, []
    lower_order_to_end = sigmas[-1].item() == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i])
        pred_list.append(denoised)
        pred_list = pred_list[-max_used_order:]
        p_used = min(predictor_order, len(pred_list))
        c_used = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(pred_list))
        if lower_order_to_end:
            p_used = min(p_used, len(sigmas) - 2 - i)
            c_used = min(c_used, len(sigmas) - 1 - i)
        if c_used == 0:
            x = x_pred
        else:
            b = _sa_b_coeffs(sigmas[i], lambdas[i - c_used + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t)
            pred_mat = torch.stack(pred_list[-c_used:], dim=1)
            corr_res = torch.tensordot(pred_mat, b, dims=([1], [0]))
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + corr_res
            if tau_t > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i])
                pred_list[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            b = _sa_b_coeffs(sigmas[i + 1], lambdas[i - p_used + 1:i + 1], lambdas[i], lambdas[i + 1], tau_t)
            pred_mat = torch.stack(pred_list[-p_used:], dim=1)
            pred_res = torch.tensordot(pred_mat, b, dims=([1], [0]))
            h = lambdas[i + 1] - lambdas[i]
            x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + pred_res
            if tau_t > 0:
                noise = ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * tau_t ** 2 * h).expm1().neg().sqrt()
                x_pred = x_pred + noise
    return x_pred


# ---- comfy/k_diffusion/deis.py (deis_mode='tab') + sampling.py sample_deis ----
def _deis_edm2t(edm_steps, epsilon_s=1e-3, sigma_min=0.002, sigma_max=80):
    vp_sigma_inv = lambda beta_d, beta_min: lambda sigma: ((beta_min ** 2 + 2 * beta_d * (sigma ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    vp_beta_d = 2 * (np.log(torch.tensor(sigma_min).cpu() ** 2 + 1) / epsilon_s - np.log(torch.tensor(sigma_max).cpu() ** 2 + 1)) / (epsilon_s - 1)
    vp_beta_min = np.log(torch.tensor(sigma_max).cpu() ** 2 + 1) - 0.5 * vp_beta_d
    t_steps = vp_sigma_inv(vp_beta_d.clone().detach().cpu(), vp_beta_min.clone().detach().cpu())(edm_steps.clone().detach().cpu())
    return t_steps, vp_beta_min, vp_beta_d + vp_beta_min

def _deis_integrand(beta_0, beta_1, taus):
    with torch.enable_grad():
        taus = taus.clone().requires_grad_(True)
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        alpha.log().sum().backward()
        d = taus.grad
    return -0.5 * d / torch.sqrt(alpha.detach() * (1 - alpha.detach()))

def _deis_coeff_list(t_steps, max_order, N=10000):
    t_steps, beta_0, beta_1 = _deis_edm2t(t_steps)
    C = []
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        order = min(i + 1, max_order)
        if order == 1:
            C.append([])
            continue
        taus = torch.linspace(t_cur, t_next, N)
        dtau = (t_next - t_cur) / N
        prev_t = t_steps[[i - k for k in range(order)]]
        integrand = _deis_integrand(beta_0, beta_1, taus)
        coeff = []
        for j in range(order):
            poly = 1
            for k in range(prev_t.shape[0]):
                if k != j:
                    poly *= (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
            coeff.append(torch.sum(integrand * poly) * dtau)
        C.append(coeff)
    return C

def sample_deis(model, x, sigmas, ns, max_order=3):
    coeff_list = _deis_coeff_list(sigmas, max_order)
    buf = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur)
        d = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next <= 0:
            order = 1
        if order == 1:
            xn = x + (t_next - t_cur) * d
        elif order == 2:
            c0, c1 = coeff_list[i]
            xn = x + c0 * d + c1 * buf[-1]
        else:
            c0, c1, c2 = coeff_list[i]
            xn = x + c0 * d + c1 * buf[-1] + c2 * buf[-2]
        if len(buf) == max_order - 1:
            for k in range(max_order - 2):
                buf[k] = buf[k + 1]
            buf[-1] = d
        else:
            buf.append(d)
        x = xn
    return x


# ---- comfy/extra_samplers/uni_pc.py: sample_unipc (SigmaConvert VP view, multistep B(h) UniPC) ----
def _vp_log_mean(sigma):
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))

def _vp_alpha(t):
    return torch.exp(_vp_log_mean(t))

def _vp_std(t):
    return torch.sqrt(1. - torch.exp(2. * _vp_log_mean(t)))

def _vp_lambda(t):
    lm = _vp_log_mean(t)
    return lm - 0.5 * torch.log(1. - torch.exp(2. * lm))

def _unipc_bh_update(model_fn, x, model_prev_list, t_prev_list, t, order, variant, use_corrector=True):
    t_prev_0 = t_prev_list[-1]
    lambda_prev_0, lambda_t = _vp_lambda(t_prev_0), _vp_lambda(t)
    model_prev_0 = model_prev_list[-1]
    sigma_prev_0, sigma_t = _vp_std(t_prev_0), _vp_std(t)
    alpha_t = torch.exp(_vp_log_mean(t))
    h = lambda_t - lambda_prev_0
    rks, D1s = [], []
    for i in range(1, order):
        rk = ((_vp_lambda(t_prev_list[-(i + 1)]) - lambda_prev_0) / h)[0]
        rks.append(rk)
        D1s.append((model_prev_list[-(i + 1)] - model_prev_0) / rk)
    rks.append(1.)
    rks = torch.tensor(rks)
    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    B_h = hh if variant == 'bh1' else torch.expm1(hh)
    R, b = [], []
    for i in range(1, order + 1):
        R.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / B_h)
        factorial_i *= (i + 1)
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R = torch.stack(R)
    b = torch.tensor(b)
    if len(D1s) > 0:
        D1s = torch.stack(D1s, dim=1)
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
    else:
        D1s = None
    if use_corrector:
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
    model_t = None
    x_t_ = (sigma_t / sigma_prev_0)[:, None, None, None] * x - (alpha_t * h_phi_1)[:, None, None, None] * model_prev_0
    pred_res = torch.einsum('k,bkchw->bchw', rhos_p, D1s) if D1s is not None else 0
    x_t = x_t_ - (alpha_t * B_h)[:, None, None, None] * pred_res
    if use_corrector:
        model_t = model_fn(x_t, t)
        corr_res = torch.einsum('k,bkchw->bchw', rhos_c[:-1], D1s) if D1s is not None else 0
        D1_t = model_t - model_prev_0
        x_t = x_t_ - (alpha_t * B_h)[:, None, None, None] * (corr_res + rhos_c[-1] * D1_t)
    return x_t, model_t

def sample_unipc(model, x, sigmas, ns, variant='bh1'):
    timesteps = sigmas.clone()
    if sigmas[-1] == 0:
        timesteps[-1] = 0.001
    noise = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)

    def model_fn(xv, t):  # model_wrapper(predict_eps_sigma) + UniPC.data_prediction_fn
        sigma = t.view(t.shape[:1] + (1,) * (xv.ndim - 1))
        inp = xv * ((sigma ** 2 + 1.0) ** 0.5)
        eps = (inp - model(inp, t)) / sigma
        return (xv - _vp_std(t)[:, None, None, None] * eps) / _vp_alpha(t)[:, None, None, None]

    order = min(3, len(timesteps) - 2)
    steps = len(timesteps) - 1
    x = noise
    for step_index in range(steps):
        if step_index == 0:
            vec_t = timesteps[0].expand((x.shape[0]))
            model_prev_list = [model_fn(x, vec_t)]
            t_prev_list = [vec_t]
        elif step_index < order:
            vec_t = timesteps[step_index].expand(x.shape[0])
            x, model_x = _unipc_bh_update(model_fn, x, model_prev_list, t_prev_list, vec_t, step_index, variant)
            model_prev_list.append(model_x)
            t_prev_list.append(vec_t)
        else:
            extra = 1 if step_index == steps - 1 else 0
            for step in range(step_index, step_index + 1 + extra):
                vec_t = timesteps[step].expand(x.shape[0])
                step_order = min(order, steps + 1 - step)
                x, model_x = _unipc_bh_update(model_fn, x, model_prev_list, t_prev_list, vec_t, step_order, variant, use_corrector=step != steps)
                for i in range(order - 1):
                    t_prev_list[i] = t_prev_list[i + 1]
                    model_prev_list[i] = model_prev_list[i + 1]
                t_prev_list[-1] = vec_t
                if step < steps:
                    if model_x is None:
                        model_x = model_fn(x, vec_t)
                    model_prev_list[-1] = model_x
    return x / _vp_alpha(timesteps[-1])


# SDE samplers: ComfyUI's BrownianTreeNoiseSampler (comfy/k_diffusion/sampling.py, with its
# BatchedBrownianTree) over torchsde.BrownianTree, as the samplers build it: cpu=True, the tree on
# [min positive sigma, max sigma] seeded with the prompt's seed (one int: one tree over the whole
# batch; a list: one tree per batch item), noise = increment / sqrt(|dt|), negated for a step down.
class BrownianTreeNoise:
    def __init__(self, x, sigma_min, sigma_max, seed):
        import torchsde
        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        self.batched = isinstance(seed, (list, tuple))
        w0 = torch.zeros_like(x)[0] if self.batched else torch.zeros_like(x)
        seeds = seed if self.batched else [seed]
        self.trees = [torchsde.BrownianTree(t0.cpu(), w0.cpu(), t1.cpu(), entropy=s) for s in seeds]

    def __call__(self, sigma, sigma_next):
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        w = torch.stack([t(lo.cpu().float(), hi.cpu().float()) for t in self.trees]) * (self.sign * sign)
        w = w if self.batched else w[0]
        return w / (b - a).abs().sqrt()

def brownian_noise_sampler(x, sigmas, seed):
    return BrownianTreeNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed)

def sample_dpmpp_sde(model, x, sigmas, ns, eta=1., s_noise=1., r=1 / 2):
    sigma_fn = lambda l: l.neg().exp(); lambda_fn = lambda s: s.log().neg()
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            lambda_s_1 = lambda_s + r * h
            fac = 1 / (2 * r)
            sigma_s_1 = sigma_fn(lambda_s_1)
            alpha_s = sigmas[i] * lambda_s.exp(); alpha_s_1 = sigma_s_1 * lambda_s_1.exp(); alpha_t = sigmas[i + 1] * lambda_t.exp()
            sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
            h_ = sd.log().neg() - lambda_s
            x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
            x_2 = x_2 + alpha_s_1 * ns(sigmas[i], sigma_s_1) * s_noise * su
            denoised_2 = model(x_2, sigma_s_1)
            sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
            h_ = sd.log().neg() - lambda_s
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
            x = x + alpha_t * ns(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x

def sample_dpmpp_2m_sde(model, x, sigmas, ns, eta=1., s_noise=1., solver_type='midpoint'):
    lambda_fn = lambda s: s.log().neg()
    old_denoised = None; h, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == 'heun':
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x

def sample_dpmpp_3m_sde(model, x, sigmas, ns, eta=1., s_noise=1.):
    lambda_fn = lambda s: s.log().neg()
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h; r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            x = x + ns(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x

BROWNIAN = {
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": partial(sample_dpmpp_2m_sde, solver_type='heun'),
    "dpmpp_2m_sde_heun_gpu": partial(sample_dpmpp_2m_sde, solver_type='heun'),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde,
}
SAMPLERS = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": partial(sample_dpmpp_2s_ancestral, cfg_pp=True),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "res_multistep": partial(res_multistep, eta=0., cfg_pp=False),
    "res_multistep_cfg_pp": partial(res_multistep, eta=0., cfg_pp=True),
    "res_multistep_ancestral": partial(res_multistep, eta=1., cfg_pp=False),
    "res_multistep_ancestral_cfg_pp": partial(res_multistep, eta=1., cfg_pp=True),
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": partial(sample_gradient_estimation, cfg_pp=True),
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": partial(sample_sa_solver, use_pece=True),
    "ddim": sample_euler,  # ComfyUI maps ddim to sample_euler.
    "deis": sample_deis,
    "uni_pc": sample_unipc,
    "uni_pc_bh2": partial(sample_unipc, variant="bh2"),
}
SAMPLERS.update({k: v for k, v in BROWNIAN.items()})


def main():
    ms = MS()
    torch.manual_seed(123)
    mu_c = torch.randn(1, 4, 8, 8) * 0.5
    mu_u = torch.randn(1, 4, 8, 8) * 0.5
    g = torch.manual_seed(SEED)
    noise = torch.randn([1, 4, 8, 8], generator=g)
    latent = torch.zeros_like(noise)
    out = {"mu_cond": mu_c, "mu_uncond": mu_u, "noise": noise}
    for sched in SCHEDULERS:
        for n in [1, 2, 3, 5, 10, 25]:
            out[f"sigmas/{sched}/{n}"] = SCHEDULERS[sched](ms, n).float()
    for name, fn in SAMPLERS.items():
        for sched in SCHEDULERS:
            sigmas = ksampler_sigmas(ms, sched, name, STEPS).float()
            sigma_max = float(ms.sigma_max)
            max_denoise = math.isclose(sigma_max, float(sigmas[0]), rel_tol=1e-05) or float(sigmas[0]) > sigma_max
            x = noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if max_denoise else sigmas[0]) + latent
            model = Model(mu_c, mu_u)
            ns = brownian_noise_sampler(x, sigmas, SEED) if name in BROWNIAN else default_noise_sampler(x, SEED)
            with torch.no_grad():
                out[f"sample/{name}/{sched}"] = fn(model, x, sigmas, ns).float().contiguous()
    save_file({k: v.contiguous() for k, v in out.items()}, OUT, metadata={"torch_version": torch.__version__})
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
