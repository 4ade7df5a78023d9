"""Reference fixtures for HypernetworkLoader (crates/weft-engine/src/hypernetwork/) on the tiny SD1
UNet of unet_vae_reference.py (diffusers, synthetic weights).

Run: `/tmp/peer-venv/bin/python tools/parity/hypernetwork_reference.py` (torch, diffusers, safetensors).
Writes, under tests/fixtures/sampling/:
- hypernetwork_relu_ln.pt, hypernetwork_mish.pt: A1111-format hypernetworks saved with torch.save
  ({width: [state_dict_k, state_dict_v], "activation_func": ..., ...}), the format ComfyUI reads;
- hypernetwork_flat.safetensors: a linear one with the keys flattened (`48.0.linear.0.weight`);
- hypernetwork_reference.safetensors: the activations on a probe, and for each file the denoised
  prediction of one UNet call with the patch at a strength.

The MLPs are built by a transcription of ComfyUI's `load_hypernetwork_patch`
(comfy_extras/nodes_hypernetwork.py) from `torch.load(weights_only=True)` (comfy.utils.load_torch_file
with safe_load), in eval mode (ComfyUI leaves dropout in training mode; these files have none), and
applied where comfy/ldm/modules/attention.py applies attn1 and attn2 patches: to the sources of
the keys and values before the projections (the normed hidden states in self-attention, the text
context in cross-attention), when their width has MLPs. The tiny UNet's widths: 48 (context),
32 (level-0 self-attention), 64 (elsewhere, left without MLPs).
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sag_reference import sd_sigmas  # noqa: E402
from hypertile_reference import attend  # noqa: E402
from synth import fill_synth  # noqa: E402
from unet_vae_reference import UNETS  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling")

VALID_ACTIVATION = {
    "linear": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "leakyrelu": torch.nn.LeakyReLU,
    "elu": torch.nn.ELU,
    "swish": torch.nn.Hardswish,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "softsign": torch.nn.Softsign,
    "mish": torch.nn.Mish,
}


def comfy_hypernetwork(sd):
    """ComfyUI's load_hypernetwork_patch's dict walk. Its Sequentials stay in training mode, so
    the dropout layers are active."""
    activation_func = sd.get('activation_func', 'linear')
    is_layer_norm = sd.get('is_layer_norm', False)
    use_dropout = sd.get('use_dropout', False)
    activate_output = sd.get('activate_output', False)
    last_layer_dropout = sd.get('last_layer_dropout', False)
    out = {}
    for d in sd:
        try:
            dim = int(d)
        except Exception:
            continue
        output = []
        for index in [0, 1]:
            attn_weights = sd[dim][index]
            linears = [a[:-len(".weight")] for a in attn_weights.keys() if a.endswith(".weight")]
            layers = []
            i = 0
            while i < len(linears):
                last_layer = i == len(linears) - 1
                penultimate_layer = i == len(linears) - 2
                w, b = attn_weights[f"{linears[i]}.weight"], attn_weights[f"{linears[i]}.bias"]
                layer = torch.nn.Linear(w.shape[1], w.shape[0])
                layer.load_state_dict({"weight": w, "bias": b})
                layers.append(layer)
                if activation_func != "linear" and ((not last_layer) or activate_output):
                    layers.append(VALID_ACTIVATION[activation_func]())
                if is_layer_norm:
                    i += 1
                    w, b = attn_weights[f"{linears[i]}.weight"], attn_weights[f"{linears[i]}.bias"]
                    ln = torch.nn.LayerNorm(w.shape[0])
                    ln.load_state_dict({"weight": w, "bias": b})
                    layers.append(ln)
                if use_dropout and (not last_layer) and (not penultimate_layer or last_layer_dropout):
                    layers.append(torch.nn.Dropout(p=0.3))
                i += 1
            output.append(torch.nn.Sequential(*layers))
        out[dim] = output
    return out


def shift(hypernet, strength, k, v):
    """hypernetwork_patch.__call__ on the key and value sources."""
    dim = k.shape[-1]
    if dim in hypernet:
        hn = hypernet[dim]
        k = k + hn[0](k) * strength
        v = v + hn[1](v) * strength
    return k, v


class PatchedAttention:
    """attention.py's attn1/attn2 path with the hypernetwork as attn1_patch and attn2_patch."""

    def __init__(self, hypernet, strength):
        self.hypernet, self.strength = hypernet, strength

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        k_src, v_src = shift(self.hypernet, self.strength, context, context)
        return attend(attn, hidden_states, k_src, v_src)


def a1111_module(width, g, layer_norm, activation, structure=(1, 2, 1), dropout=False):
    """One MLP's state dict as A1111's HypernetworkModule names it (layer structure 1, 2, 1 by
    default; its dropout layers hold no weights but take their place in the numbering)."""
    layers = []
    for i, (a, b) in enumerate(zip(structure, structure[1:])):
        layers.append(torch.nn.Linear(a * width, b * width))
        last = i == len(structure) - 2
        if activation and not last:
            layers.append(torch.nn.ReLU())
        if layer_norm:
            layers.append(torch.nn.LayerNorm(b * width))
        if dropout and not last:
            layers.append(torch.nn.Dropout(p=0.3))
    seq = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in seq.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = seq
    return Holder().state_dict()


def dropout_cases(out, g, kwargs):
    """Hypernetworks with dropout, as ComfyUI runs them at cfg 3: `prepare_noise` seeds torch's
    global generator (seed 77) and draws the noise of a 1x4x16x16 latent, then two steps each run
    the negative and positive sides as one UNet batch, negative first (`calc_cond_batch`), every
    dropout drawing its mask over the whole batch from the global generator. Files: structure
    (1, 2, 2, 1) with relu and `use_dropout` (dropout after the first layer only), and the same
    with layer norms and `last_layer_dropout` (after every layer but the last: ComfyUI counts the
    layer norms' names too)."""
    files = {
        "dropout": dict(activation_func="relu", is_layer_norm=False, last_layer_dropout=False),
        "dropout_ln": dict(activation_func="relu", is_layer_norm=True, last_layer_dropout=True),
    }
    steps = (600, 300)
    out["dropout/steps"] = torch.tensor([float(sd_sigmas()[t]) for t in steps], dtype=torch.float64)
    x = torch.randn(1, 4, 16, 16, generator=g) * 3.0
    positive = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    negative = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    out["dropout/x"], out["dropout/positive"], out["dropout/negative"] = x, positive, negative
    # A positive prompt twice as long: ComfyUI still batches the sides, repeating the negative
    # context to 10 tokens (`CONDCrossAttn.concat`), so the cross-attention masks cover 10.
    long_positive = torch.randn(1, 10, kwargs["cross_attention_dim"], generator=g)
    out["dropout/long_positive"] = long_positive
    for name, options in files.items():
        layer_norm = options["is_layer_norm"]
        sd = {w: [a1111_module(w, g, layer_norm, True, (1, 2, 2, 1), True) for _ in (0, 1)] for w in (48, 32)}
        sd.update(use_dropout=True, activate_output=False, layer_structure=[1, 2, 2, 1], **options)
        path = os.path.join(FIXTURES, f"hypernetwork_{name}.pt")
        torch.save(sd, path)
        model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
        model.eval()
        fill_synth(model)
        hypernet = comfy_hypernetwork(torch.load(path, weights_only=True))
        assert any(isinstance(m, torch.nn.Dropout) for nets in hypernet.values() for n in nets for m in n)
        for module in model.modules():
            if isinstance(module, BasicTransformerBlock):
                module.attn1.set_processor(PatchedAttention(hypernet, 0.8))
                module.attn2.set_processor(PatchedAttention(hypernet, 0.8))
        generator = torch.manual_seed(77)
        torch.randn((1, 4, 16, 16), generator=generator, device="cpu")
        for step, t in enumerate(steps):
            sigma = sd_sigmas()[t]
            batch = torch.cat([x, x]) / (sigma ** 2 + 1.0) ** 0.5
            with torch.no_grad():
                eps = model(batch, torch.tensor([float(t)] * 2), encoder_hidden_states=torch.cat([negative, positive])).sample
            uncond, cond = (x - eps * sigma).chunk(2)
            out[f"{name}/uncond/{step}"], out[f"{name}/cond/{step}"] = uncond, cond
        if name != "dropout":
            continue
        generator = torch.manual_seed(77)
        torch.randn((1, 4, 16, 16), generator=generator, device="cpu")
        for step, t in enumerate(steps):
            sigma = sd_sigmas()[t]
            batch = torch.cat([x, x]) / (sigma ** 2 + 1.0) ** 0.5
            context = torch.cat([negative.repeat(1, 2, 1), long_positive])
            with torch.no_grad():
                eps = model(batch, torch.tensor([float(t)] * 2), encoder_hidden_states=context).sample
            uncond, cond = (x - eps * sigma).chunk(2)
            out[f"long/uncond/{step}"], out[f"long/cond/{step}"] = uncond, cond


def main():
    g = torch.Generator().manual_seed(1234)
    kwargs = UNETS["sd1_tiny"][0]
    t = 400
    sigma = sd_sigmas()[t]
    out = {"sigma": sigma.reshape(1)}
    probe = torch.randn(3, 7, generator=g) * 4.0
    out["act/probe"] = probe
    for name, cls in VALID_ACTIVATION.items():
        out[f"act/{name}"] = cls()(probe)

    relu_ln = {w: [a1111_module(w, g, True, True), a1111_module(w, g, True, True)] for w in (48, 32)}
    relu_ln.update(activation_func="relu", is_layer_norm=True, use_dropout=False, activate_output=False,
                   last_layer_dropout=False, layer_structure=[1, 2, 1], name="relu_ln", step=10)
    mish = {48: [a1111_module(48, g, False, False), a1111_module(48, g, False, False)]}
    mish.update(activation_func="mish", is_layer_norm=False, use_dropout=False, activate_output=True)
    flat = {f"{w}.{i}.{k}": v for w in (48, 32) for i in (0, 1)
            for k, v in a1111_module(w, g, False, False).items()}
    torch.save(relu_ln, os.path.join(FIXTURES, "hypernetwork_relu_ln.pt"))
    torch.save(mish, os.path.join(FIXTURES, "hypernetwork_mish.pt"))
    save_file(flat, os.path.join(FIXTURES, "hypernetwork_flat.safetensors"))

    # What ComfyUI's load_torch_file reads back: safe_load for .pt, the flat dict for safetensors
    # (ComfyUI's walk finds no integer key there; Weft unflattens it, so the reference does too).
    def unflatten(sd):
        nested = {}
        for key, value in sd.items():
            w, i, rest = key.split(".", 2)
            nested.setdefault(int(w), [{}, {}])[int(i)][rest] = value
        return nested

    x = torch.randn(1, 4, 16, 16, generator=g) * 3.0
    context = torch.randn(1, 5, kwargs["cross_attention_dim"], generator=g)
    out["x"], out["context"] = x, context
    cases = {
        "relu_ln": (torch.load(os.path.join(FIXTURES, "hypernetwork_relu_ln.pt"), weights_only=True), 0.7),
        "mish": (torch.load(os.path.join(FIXTURES, "hypernetwork_mish.pt"), weights_only=True), -1.5),
        "flat": (unflatten(load_file(os.path.join(FIXTURES, "hypernetwork_flat.safetensors"))), 1.0),
        "unpatched": ({}, 1.0),
    }
    for name, (sd, strength) in cases.items():
        model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
        model.eval()
        fill_synth(model)
        hypernet = comfy_hypernetwork(sd)
        for module in model.modules():
            if isinstance(module, BasicTransformerBlock):
                module.attn1.set_processor(PatchedAttention(hypernet, strength))
                module.attn2.set_processor(PatchedAttention(hypernet, strength))
        with torch.no_grad():
            eps = model(x / (sigma ** 2 + 1.0) ** 0.5, torch.tensor([float(t)]), encoder_hidden_states=context).sample
        out[f"{name}/denoised"] = x - eps * sigma
        if hypernet:
            k, v = shift(hypernet, strength, context, context)
            out[f"{name}/k48"], out[f"{name}/v48"] = k, v
    dropout_cases(out, g, kwargs)
    save_file({k: v.contiguous().clone() for k, v in out.items()},
              os.path.join(FIXTURES, "hypernetwork_reference.safetensors"),
              metadata={"torch_version": torch.__version__})
    for name in ("relu_ln", "mish", "flat"):
        print(name, "moves the prediction by",
              (out[f"{name}/denoised"] - out["unpatched/denoised"]).abs().max().item())


if __name__ == "__main__":
    main()
