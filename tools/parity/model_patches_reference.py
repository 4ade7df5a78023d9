"""Reference fixtures for the model patches (crates/weft-engine/src/diffusion/{guidance,freeu}.rs,
the ModelSamplingDiscrete variants of crates/weft-engine/src/sampling/model_sampling.rs).

Run: `/tmp/peer-venv/bin/python tools/parity/model_patches_reference.py` (torch, safetensors).
Writes tests/fixtures/sampling/model_patches_reference.safetensors.

Transcribed from ComfyUI: RescaleCFG, ModelSamplingDiscrete (LCM, ModelSamplingDiscreteDistilled,
rescale_zero_terminal_snr_sigmas) of comfy_extras/nodes_model_advanced.py; CFGZeroStar of
nodes_cfg.py; EpsilonScaling of nodes_eps.py; APG of nodes_apg.py; TCFG of nodes_tcfg.py;
Fourier_filter, FreeU and FreeU_V2 of nodes_freelunch.py; comfy/samplers.py cfg_function's order
(pre-CFG hooks, cfg function or plain CFG, post-CFG hooks). Inputs are seeded random tensors.
"""
import os, sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sampler_reference as ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "model_patches_reference.safetensors")


def cfg_function(x, cond, uncond, scale, sigma, pre=(), cfg_fn=None, post=()):
    conds_out = [cond, uncond]
    for fn in pre:
        conds_out = fn({"conds": [1, 1], "conds_out": conds_out, "cond_scale": scale, "input": x, "sigma": torch.tensor([sigma])})
    cond, uncond = conds_out
    if cfg_fn is not None:
        out = x - cfg_fn({"cond": x - cond, "uncond": x - uncond, "cond_scale": scale, "input": x, "sigma": torch.tensor([sigma]),
                          "cond_denoised": cond, "uncond_denoised": uncond})
    else:
        out = uncond + (cond - uncond) * scale
    for fn in post:
        out = fn({"denoised": out, "cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": scale, "input": x, "sigma": torch.tensor([sigma])})
    return out


def rescale_cfg(multiplier):
    def f(args):
        cond, uncond, cond_scale, sigma, x_orig = args["cond"], args["uncond"], args["cond_scale"], args["sigma"], args["input"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (cond.ndim - 1))
        x = x_orig / (sigma * sigma + 1.0)
        cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / (sigma)
        uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / (sigma)
        x_cfg = uncond + cond_scale * (cond - uncond)
        ro_pos = torch.std(cond, dim=(1, 2, 3), keepdim=True)
        ro_cfg = torch.std(x_cfg, dim=(1, 2, 3), keepdim=True)
        x_rescaled = x_cfg * (ro_pos / ro_cfg)
        x_final = multiplier * x_rescaled + (1.0 - multiplier) * x_cfg
        return x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)
    return f


def optimized_scale(positive, negative):
    positive_flat = positive.reshape(positive.shape[0], -1)
    negative_flat = negative.reshape(negative.shape[0], -1)
    dot_product = torch.sum(positive_flat * negative_flat, dim=1, keepdim=True)
    squared_norm = torch.sum(negative_flat ** 2, dim=1, keepdim=True) + 1e-8
    return (dot_product / squared_norm).reshape([positive.shape[0]] + [1] * (positive.ndim - 1))


def cfg_zero_star(args):
    guidance_scale, x, cond_p, uncond_p, out = args['cond_scale'], args['input'], args['cond_denoised'], args['uncond_denoised'], args["denoised"]
    alpha = optimized_scale(x - cond_p, x - uncond_p)
    return out + uncond_p * (alpha - 1.0) + guidance_scale * uncond_p * (1.0 - alpha)


def epsilon_scaling(factor):
    def f(args):
        return args["input"] - (args["input"] - args["denoised"]) / factor
    return f


def apg(eta, norm_threshold, momentum):
    running_avg, prev_sigma = 0, None
    def project(v0, v1):
        v1 = torch.nn.functional.normalize(v1, dim=[-1, -2, -3])
        v0_parallel = (v0 * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
        return v0_parallel, v0 - v0_parallel
    def f(args):
        nonlocal running_avg, prev_sigma
        cond, uncond = args["conds_out"]
        sigma, cond_scale = args["sigma"][0], args["cond_scale"]
        if prev_sigma is not None and sigma > prev_sigma:
            running_avg = 0
        prev_sigma = sigma
        guidance = cond - uncond
        if momentum > 0:
            if not torch.is_tensor(running_avg):
                running_avg = guidance
            else:
                running_avg = momentum * running_avg + guidance
            guidance = running_avg
        if norm_threshold > 0:
            guidance_norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(guidance_norm), norm_threshold / guidance_norm)
        par, orth = project(guidance, cond)
        modified = orth + eta * par
        return [(uncond + modified) + (cond - uncond) / cond_scale, uncond]
    return f


def tcfg(args):
    x = args["input"]
    cond_pred, uncond_pred = args["conds_out"]
    cond_score, uncond_score = x - cond_pred, x - uncond_pred
    b = cond_score.shape[0]
    c = cond_score.reshape(b, 1, -1).float()
    u = uncond_score.reshape(b, 1, -1).float()
    _, _, vh = torch.linalg.svd(torch.cat((u, c), dim=1), full_matrices=False)
    v1 = vh[:, 0:1, :]
    u_td = ((u @ v1.transpose(-2, -1)) * v1).reshape_as(uncond_score)
    return [cond_pred, x - u_td]


def fourier_filter(x, threshold, scale):
    x_freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    B, C, H, W = x_freq.shape
    mask = torch.ones((B, C, H, W))
    crow, ccol = H // 2, W // 2
    mask[..., crow - threshold:crow + threshold, ccol - threshold:ccol + threshold] = scale
    x_freq = torch.fft.ifftshift(x_freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(x_freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_patch(model_channels, b1, b2, s1, s2, v2):
    scale_dict = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}
    def f(h, hsp):
        h = h.clone()
        scale = scale_dict.get(h.shape[1], None)
        if scale is not None:
            if v2:
                hidden_mean = h.mean(1).unsqueeze(1)
                B = hidden_mean.shape[0]
                hidden_max, _ = torch.max(hidden_mean.view(B, -1), dim=-1, keepdim=True)
                hidden_min, _ = torch.min(hidden_mean.view(B, -1), dim=-1, keepdim=True)
                hidden_mean = (hidden_mean - hidden_min.unsqueeze(2).unsqueeze(3)) / (hidden_max - hidden_min).unsqueeze(2).unsqueeze(3)
                h[:, :h.shape[1] // 2] = h[:, :h.shape[1] // 2] * ((scale[0] - 1) * hidden_mean + 1)
            else:
                h[:, :h.shape[1] // 2] = h[:, :h.shape[1] // 2] * scale[0]
            hsp = fourier_filter(hsp, threshold=1, scale=scale[1])
        return h, hsp
    return f


def rescale_zero_terminal_snr_sigmas(sigmas):
    alphas_cumprod = 1 / ((sigmas * sigmas) + 1)
    alphas_bar_sqrt = alphas_cumprod.sqrt()
    a0 = alphas_bar_sqrt[0].clone()
    aT = alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= aT
    alphas_bar_sqrt *= a0 / (a0 - aT)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def distilled(sigmas, original=50):
    n = len(sigmas)
    skip = n // original
    valid = torch.zeros(original, dtype=torch.float32)
    for x in range(original):
        valid[original - 1 - x] = sigmas[n - 1 - x * skip]
    return valid, skip


def perp_neg(noise_pred_pos, noise_pred_neg, noise_pred_nocond, neg_scale, cond_scale):
    pos = noise_pred_pos - noise_pred_nocond
    neg = noise_pred_neg - noise_pred_nocond
    perp = neg - ((torch.mul(neg, pos).sum()) / (torch.norm(pos) ** 2)) * pos
    return noise_pred_nocond + cond_scale * (pos - perp * neg_scale)


def differential_diffusion(ms, sigma, denoise_mask, step_sigmas, strength):
    sigma_to = ms.sigma_min
    if step_sigmas[-1] > sigma_to:
        sigma_to = step_sigmas[-1]
    sigma_from = step_sigmas[0]
    ts_from = ms.timestep(sigma_from)
    ts_to = ms.timestep(sigma_to)
    current_ts = ms.timestep(sigma[0])
    threshold = (current_ts - ts_to) / (ts_from - ts_to)
    binary_mask = (denoise_mask >= threshold).to(denoise_mask.dtype)
    if strength and strength < 1:
        return strength * binary_mask + (1 - strength) * denoise_mask
    return binary_mask


def main():
    g = torch.Generator().manual_seed(7)
    rnd = lambda *s: torch.randn(*s, generator=g)
    out = {}
    x, cond, uncond = rnd(2, 4, 8, 8) * 3, rnd(2, 4, 8, 8), rnd(2, 4, 8, 8)
    cond2, uncond2 = rnd(2, 4, 8, 8), rnd(2, 4, 8, 8)
    sigma, scale = 3.7, 6.5
    out.update({"x": x, "cond": cond, "uncond": uncond, "cond2": cond2, "uncond2": uncond2})
    out["plain"] = cfg_function(x, cond, uncond, scale, sigma)
    out["rescale_cfg"] = cfg_function(x, cond, uncond, scale, sigma, cfg_fn=rescale_cfg(0.7))
    out["cfg_zero_star"] = cfg_function(x, cond, uncond, scale, sigma, post=[cfg_zero_star])
    out["epsilon_scaling"] = cfg_function(x, cond, uncond, scale, sigma, post=[epsilon_scaling(1.005)])
    out["tcfg"] = cfg_function(x, cond, uncond, scale, sigma, pre=[tcfg])
    a = apg(0.6, 2.0, 0.4)
    out["apg/1"] = cfg_function(x, cond, uncond, scale, sigma, pre=[a])
    out["apg/2"] = cfg_function(x, cond2, uncond2, scale, 2.1, pre=[a])
    out["apg/3_restart"] = cfg_function(x, cond, uncond, scale, 5.0, pre=[a])
    out["all"] = cfg_function(x, cond, uncond, scale, sigma, pre=[tcfg], cfg_fn=rescale_cfg(0.5), post=[cfg_zero_star, epsilon_scaling(0.98)])

    for shape in [(2, 3, 8, 6), (1, 2, 5, 7), (1, 1, 1, 3), (1, 2, 2, 2)]:
        t = rnd(*shape)
        key = "x".join(str(s) for s in shape)
        out[f"fourier/{key}/in"] = t
        out[f"fourier/{key}/out"] = fourier_filter(t, 1, 0.2)
    for v2 in [False, True]:
        p = freeu_patch(2, 1.3, 1.4, 0.9, 0.2, v2)
        for ch in [8, 4, 6]:
            h, hsp = rnd(2, ch, 4, 6), rnd(2, ch, 4, 6)
            h2, hsp2 = p(h, hsp)
            k = f"freeu/{'v2' if v2 else 'v1'}/{ch}"
            out[f"{k}/h"], out[f"{k}/hsp"], out[f"{k}/h_out"], out[f"{k}/hsp_out"] = h, hsp, h2, hsp2

    ms = ref.MS()
    out["ms/zsnr"] = rescale_zero_terminal_snr_sigmas(ms.sigmas.clone())
    lcm, skip = distilled(ms.sigmas)
    out["ms/lcm"] = lcm
    out["ms/lcm_zsnr"] = rescale_zero_terminal_snr_sigmas(lcm.clone())
    # LCM timestep/sigma lookups and its denoised formula.
    log_sigmas = lcm.log()
    probe = torch.tensor([14.6, 3.0, 1.0, 0.5, 0.03])
    ts = (probe.log() - log_sigmas[:, None]).abs().argmin(dim=0) * skip + (skip - 1)
    out["ms/lcm_timestep"] = ts.float()
    tq = torch.tensor([999.0, 500.0, 37.5, 0.0])
    t = torch.clamp(((tq - (skip - 1)) / skip).float(), min=0, max=len(lcm) - 1)
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    out["ms/lcm_sigma"] = ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
    s = torch.tensor(1.0)
    timestep = (s.log() - log_sigmas[:, None]).abs().argmin(dim=0) * skip + (skip - 1)
    x0 = x - cond * s
    st = timestep * 10.0
    c_skip = 0.25 / (st ** 2 + 0.25)
    c_out = st / (st ** 2 + 0.25) ** 0.5
    out["ms/lcm_denoised"] = c_out * x0 + c_skip * x
    # Perp-Neg (the guider's combination, and the PerpNeg node's cfg function with Epsilon Scaling
    # after it) with cond2 as the empty prompt's prediction.
    pn = perp_neg(cond, uncond, cond2, 0.7, scale)
    out["perp_neg"] = pn
    out["perp_neg_node"] = cfg_function(x, cond, uncond, scale, sigma, cfg_fn=lambda a: x - perp_neg(a["cond_denoised"], a["uncond_denoised"], cond2, 0.7, scale), post=[epsilon_scaling(1.02)])
    # DifferentialDiffusion's per-step mask over a karras schedule (whose last sigma is 0).
    dmask = torch.rand(1, 4, 6, 6, generator=g)
    out["dd/mask"] = dmask
    karras = ref.get_sigmas_karras(6, float(ms.sigma_min), float(ms.sigma_max))
    out["dd/sigmas"] = karras
    for strength in [1.0, 0.4]:
        for i, sg in enumerate(karras[:-1]):
            out[f"dd/{strength}/{i}"] = differential_diffusion(ms, sg.reshape(1), dmask, karras, strength)
    out = {k: v.float().contiguous().clone() for k, v in out.items()}
    save_file(out, OUT, metadata={"torch_version": torch.__version__})
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
