"""Reference fixtures for Weft's LoRA loader (crates/weft-engine/src/lora/, tests/engine/lora_parity.rs).

Run: /opt/refpy/bin/python tools/parity/lora_reference.py   (deterministic, CPU, seconds)
Needs: torch, diffusers, transformers, safetensors, numpy.

What it does:
- Takes the tiny SD1 and SDXL UNets of unet_vae_reference.py (configs in
  tests/fixtures/unet/unet_config_{sd1,sdxl}_tiny.json) and the tiny CLIP configs of
  clip_reference.py ("tiny_l" = CLIP-L, "tiny_g" = bigG), with the shared synthetic weights
  (synth.py), so the Rust tests rebuild the same base weights without any committed model.
- Writes tiny LoRA files of every format (random factors, fixed seed) to tests/fixtures/lora/:
  kohya SD1 (diffusers-path names, f16), kohya SDXL (LDM-path names, te1/te2, text projection),
  diffusers/PEFT (attention processors, lora_A/B, lora.up/down, lora_linear_layer, text_encoder_2,
  plus plain PEFT attention names: a Weft extension, see below), LoCon (conv, Tucker lora_mid),
  LoHa (linear, conv, Tucker), LoKr (full/factorised halves, conv Tucker), full diffs
  (diff, diff_b, w_norm/b_norm, generic diffusion_model. names, a bias target), DoRA (input and
  output axis, conv, on LoHa), one torch zip pickle (.pt, f16 and bf16), and three pickles that must
  be refused (a foreign global, an unknown opcode, a shape larger than the file).
- Applies them with a transcription of ComfyUI's code: the key maps of comfy/lora.py
  (model_lora_keys_unet with comfy/utils.py unet_to_diffusers, model_lora_keys_clip), load_lora,
  and the adapters' calculate_weight (comfy/weight_adapter/{lora,loha,lokr,base}.py, the "diff" patch
  of comfy/lora.py calculate_weight), on f32 weights as ModelPatcher.patch_weight_to_device does.
  ComfyUI's model keys are LDM ("diffusion_model.<ldm>") and "clip_l.transformer.<hf>"; the
  transcription works on those and translates the targets back to Weft's canonical names.
- expected.safetensors: "<case>/<component>/<canonical key>" = the patched weight, only for patched
  keys; cases.json lists each case's model and (file, strength_model, strength_clip) list.
  The "stack_sd1" case also holds the tiny SD1 UNet's forward output with its patched weights
  ("stack_sd1/forward/{x,t,context,out}", diffusers UNet2DConditionModel).
- keymaps.json: per model, the number and sha256 of ComfyUI's key map lines
  "<lora module>\t<component>/<canonical key>\n" (sorted), plus a few sample lines.

Weft extension (documented in crates/weft-engine/src/lora/keys.rs): plain diffusers/PEFT names for attention
layers ("unet.<diffusers key>" with "to_q", not "processor.to_q"), which diffusers writes and
ComfyUI does not map. The transcription adds them only where WEFT_EXTENSIONS is used, and the key
map digests exclude them.
"""
import hashlib
import json
import os
import sys
import zipfile

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from synth import fill_synth, synth  # noqa: E402
from unet_vae_reference import UNETS, unet_diffusers_to_ldm  # noqa: E402

from diffusers import UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "lora")

# ------------------------------------------------------------------------------------------------
# Base models: keys and shapes (weights are synth(key, shape))


def tiny_clip_config(kind):
    # The shapes of clip_reference.py's tiny_config.
    if kind == "tiny_l":
        return CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5, projection_dim=48)
    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                          layer_norm_eps=1e-5, projection_dim=32)


def build_unet(name):
    kwargs = UNETS[name][0]
    model = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, norm_num_groups=32, **kwargs)
    model.eval()
    fill_synth(model)
    return model


def shapes_of(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def clip_shapes(kind):
    return {k: s for k, s in shapes_of(CLIPTextModelWithProjection(tiny_clip_config(kind))).items()
            if not k.endswith("position_ids")}


# ------------------------------------------------------------------------------------------------
# ComfyUI key maps (comfy/lora.py), on ComfyUI's own model keys

CLIP_MODULES = {
    "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj", "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj", "self_attn.out_proj": "self_attn_out_proj",
}


def unet_key_map(diffusers_shapes, cfg, weft_extensions=False):
    """model_lora_keys_unet: {lora module: canonical diffusers key}."""
    ldm_of = {d: unet_diffusers_to_ldm(d, cfg) for d in diffusers_shapes}
    diffusers_of = {l: d for d, l in ldm_of.items()}
    km = {}
    # The model's own (LDM) keys.
    for ldm, d in diffusers_of.items():
        if ldm.endswith(".weight"):
            km["lora_unet_" + ldm[:-len(".weight")].replace(".", "_")] = d
            km["diffusion_model." + ldm[:-len(".weight")]] = d
        else:
            km["diffusion_model." + ldm] = d
    # unet_to_diffusers: every diffusers name, UNET_MAP_BASIC's class_embedding aliases included.
    names = dict(ldm_of)
    for d, ldm in ldm_of.items():
        if d.startswith("add_embedding."):
            names["class_embedding." + d[len("add_embedding."):]] = ldm
    for name, ldm in names.items():
        if not name.endswith(".weight"):
            continue
        target = diffusers_of[ldm]
        base = name[:-len(".weight")]
        km["lora_unet_" + base.replace(".", "_")] = target
        km["lycoris_" + base.replace(".", "_")] = target
        for prefix in ["", "unet."]:
            key = prefix + base.replace(".to_", ".processor.to_")
            if key.endswith(".to_out.0"):
                key = key[:-2]
            km[key] = target
            if weft_extensions:
                km[prefix + base] = target
    return km


def clip_key_map(encoders):
    """model_lora_keys_clip for {comfy name ("clip_l", "clip_g", "clip_h"): hf shapes}:
    {lora module: (comfy name, hf key)}."""
    sdk = {f"{n}.transformer.{k}": (n, k) for n, shapes in encoders.items() for k in shapes}
    km = {}
    for k, target in sdk.items():
        if k.endswith(".weight"):
            km["text_encoders." + k[:-len(".weight")]] = target
    clip_l_present = False
    for b in range(32):
        for c, kohya in CLIP_MODULES.items():
            k = f"clip_h.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sdk:
                km[f"lora_te_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
                km[f"lora_te1_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
                km[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = sdk[k]
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sdk:
                km[f"lora_te_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
                km[f"lora_te1_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
                clip_l_present = True
                km[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = sdk[k]
            k = f"clip_g.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in sdk:
                if clip_l_present:
                    km[f"lora_te2_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
                    km[f"text_encoder_2.text_model.encoder.layers.{b}.{c}"] = sdk[k]
                else:
                    km[f"lora_te_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
                    km[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = sdk[k]
                    km[f"lora_prior_te_text_model_encoder_layers_{b}_{kohya}"] = sdk[k]
    k = "clip_g.transformer.text_projection.weight"
    if k in sdk:
        km["lora_prior_te_text_projection"] = sdk[k]
        km["lora_te2_text_projection"] = sdk[k]
    k = "clip_l.transformer.text_projection.weight"
    if k in sdk:
        km["lora_te1_text_projection"] = sdk[k]
    return km


class Model:
    """A tiny model as ComfyUI sees it: {lora module: (component, canonical key)} and shapes."""

    def __init__(self, name):
        self.name = name
        unet_name = {"sd1": "sd1_tiny", "sdxl": "sdxl_tiny"}[name]
        self.unet = build_unet(unet_name)
        cfg = dict(self.unet.config)
        self.shapes = {("unet", k): s for k, s in shapes_of(self.unet).items()}
        encoders = {"clip_l": clip_shapes("tiny_l")}
        if name == "sdxl":
            encoders["clip_g"] = clip_shapes("tiny_g")
        for n, shapes in encoders.items():
            self.shapes.update({(n, k): s for k, s in shapes.items()})
        unet_shapes = {k: s for (c, k), s in self.shapes.items() if c == "unet"}
        self.comfy_map = {m: ("unet", k) for m, k in unet_key_map(unet_shapes, cfg).items()}
        self.comfy_map.update(clip_key_map(encoders))
        self.key_map = {m: ("unet", k) for m, k in unet_key_map(unet_shapes, cfg, weft_extensions=True).items()}
        self.key_map.update(clip_key_map(encoders))

    def base(self, target):
        return synth(target[1], self.shapes[target])


# ------------------------------------------------------------------------------------------------
# ComfyUI's load_lora and calculate_weight

LORA_SPELLINGS = [
    ("{}.lora_up.weight", "{}.lora_down.weight", "{}.lora_mid.weight"),
    ("{}_lora.up.weight", "{}_lora.down.weight", None),
    ("{}.lora_B.weight", "{}.lora_A.weight", None),
    ("{}.lora.up.weight", "{}.lora.down.weight", None),
    ("{}.lora_B", "{}.lora_A", None),
    ("{}.lora_linear_layer.up.weight", "{}.lora_linear_layer.down.weight", None),
    ("{}.lora_B.default.weight", "{}.lora_A.default.weight", None),
]


def load_lora(lora, key_map):
    """{target: adapter}: the adapters ComfyUI builds for the file's modules."""
    patches = {}
    for x, target in key_map.items():
        get = lambda s: lora.get(s.format(x))  # noqa: E731
        alpha = get("{}.alpha")
        alpha = alpha.item() if alpha is not None else None
        dora = get("{}.dora_scale")
        for up, down, mid in LORA_SPELLINGS:
            if up.format(x) in lora:
                patches[target] = ("lora", lora[up.format(x)], lora[down.format(x)], alpha,
                                   get(mid) if mid else None, dora)
                break
        if get("{}.hada_w1_a") is not None:
            t1 = get("{}.hada_t1")
            patches[target] = ("loha", get("{}.hada_w1_a"), get("{}.hada_w1_b"), alpha, get("{}.hada_w2_a"),
                               get("{}.hada_w2_b"), t1, get("{}.hada_t2") if t1 is not None else None, dora)
        names = ["lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"]
        lokr = {n: get("{}." + n) for n in names}
        if any(lokr[n] is not None for n in ["lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a"]):
            patches[target] = ("lokr", lokr, alpha, dora)
        bias_target = (target[0], target[1][:-len(".weight")] + ".bias")
        if get("{}.w_norm") is not None:
            patches[target] = ("diff", get("{}.w_norm"))
            if get("{}.b_norm") is not None:
                patches[bias_target] = ("diff", get("{}.b_norm"))
        if get("{}.diff") is not None:
            patches[target] = ("diff", get("{}.diff"))
        if get("{}.diff_b") is not None:
            patches[bias_target] = ("diff", get("{}.diff_b"))
    return patches


def weight_decompose(dora_scale, weight, lora_diff, alpha, strength):
    # comfy/weight_adapter/base.py, intermediate dtype f32 (so eps is f32's).
    dora_scale = dora_scale.float()
    lora_diff = lora_diff * alpha
    weight_calc = weight + lora_diff
    if dora_scale.shape[0] == weight_calc.shape[0]:
        weight_norm = (weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
                       .reshape(weight.shape[0], *[1] * (weight.dim() - 1)))
    else:
        weight_norm = (weight_calc.transpose(0, 1).reshape(weight_calc.shape[1], -1).norm(dim=1, keepdim=True)
                       .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1)).transpose(0, 1))
    weight_norm = weight_norm + torch.finfo(weight.dtype).eps
    weight_calc = weight_calc * (dora_scale / weight_norm)
    if strength != 1.0:
        return weight + strength * (weight_calc - weight)
    return weight_calc


def tucker(t, wb, wa):
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def calculate_weight(adapter, weight, strength):
    kind = adapter[0]
    f = lambda t: t.float()  # noqa: E731
    if kind == "diff":
        if strength == 0.0:
            return weight
        assert adapter[1].shape == weight.shape
        return weight + strength * f(adapter[1])
    if kind == "lora":
        _, up, down, alpha, mid, dora = adapter
        mat1, mat2 = f(up), f(down)
        scale = alpha / mat2.shape[0] if alpha is not None else 1.0
        if mid is not None:
            mat3 = f(mid)
            final_shape = [mat2.shape[1], mat2.shape[0], mat3.shape[2], mat3.shape[3]]
            mat2 = (torch.mm(mat2.transpose(0, 1).flatten(start_dim=1), mat3.transpose(0, 1).flatten(start_dim=1))
                    .reshape(final_shape).transpose(0, 1))
        diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
    elif kind == "loha":
        _, w1a, w1b, alpha, w2a, w2b, t1, t2, dora = adapter
        scale = alpha / w1b.shape[0] if alpha is not None else 1.0
        if t1 is not None:
            m1 = tucker(f(t1), f(w1b), f(w1a))
            m2 = tucker(f(t2), f(w2b), f(w2a))
        else:
            m1 = torch.mm(f(w1a), f(w1b))
            m2 = torch.mm(f(w2a), f(w2b))
        diff = (m1 * m2).reshape(weight.shape)
    elif kind == "lokr":
        _, w, alpha, dora = adapter
        dim = None
        w1 = w["lokr_w1"]
        if w1 is None:
            dim = w["lokr_w1_b"].shape[0]
            w1 = torch.mm(f(w["lokr_w1_a"]), f(w["lokr_w1_b"]))
        else:
            w1 = f(w1)
        w2 = w["lokr_w2"]
        if w2 is None:
            dim = w["lokr_w2_b"].shape[0]
            if w["lokr_t2"] is None:
                w2 = torch.mm(f(w["lokr_w2_a"]), f(w["lokr_w2_b"]))
            else:
                # ComfyUI passes the einsum result straight to torch.kron, which fails on its strides
                # ("view size is not compatible", ComfyUI issue #11245): ComfyUI logs an error and
                # leaves the layer unpatched. Weft applies the intended product; so does this script.
                w2 = tucker(f(w["lokr_t2"]), f(w["lokr_w2_b"]), f(w["lokr_w2_a"])).contiguous()
        else:
            w2 = f(w2)
        if len(w2.shape) == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        diff = torch.kron(w1, w2).reshape(weight.shape)
    else:
        raise ValueError(kind)
    if dora is not None:
        return weight_decompose(dora, weight, diff, scale, strength)
    return weight + (strength * scale) * diff


def apply_case(model, loras):
    """ModelPatcher: every patch of every LoRA in order, on f32 copies of the touched weights.
    Returns {(component, key): patched}."""
    per_target = {}
    for lora, s_model, s_clip in loras:
        for target, adapter in load_lora(lora, model.key_map).items():
            if target not in model.shapes:
                continue  # ComfyUI's add_patches drops keys the model lacks (a diff_b without bias)
            strength = s_model if target[0] == "unet" else s_clip
            per_target.setdefault(target, []).append((adapter, strength))
    out = {}
    for target, patches in per_target.items():
        weight = model.base(target).clone()
        for adapter, strength in patches:
            weight = calculate_weight(adapter, weight, strength)
        out[target] = weight
    return out


# ------------------------------------------------------------------------------------------------
# The LoRA files

GEN = torch.Generator().manual_seed(20240607)


def rnd(*shape, scale=0.2):
    return torch.randn(*shape, generator=GEN) * scale


def lora_pair(prefix, out_dim, in_dims, rank=4, alpha=None, up="{}.lora_up.weight", down="{}.lora_down.weight",
              conv_up=False):
    in_dims = in_dims if isinstance(in_dims, tuple) else (in_dims,)
    t = {down.format(prefix): rnd(rank, *in_dims),
         up.format(prefix): rnd(out_dim, rank, *((1, 1) if conv_up else ()))}
    if alpha is not None:
        t[prefix + ".alpha"] = torch.tensor(float(alpha))
    return t


SD1_T0 = "down_blocks_0_attentions_0_transformer_blocks_0"


def kohya_sd1():
    t = {}
    t.update(lora_pair(f"lora_unet_{SD1_T0}_attn1_to_q", 32, 32, alpha=2))
    t.update(lora_pair(f"lora_unet_{SD1_T0}_attn1_to_k", 32, 32))
    t.update(lora_pair(f"lora_unet_{SD1_T0}_attn1_to_out_0", 32, 32, alpha=8))
    t.update(lora_pair(f"lora_unet_{SD1_T0}_attn2_to_k", 32, 48, alpha=4))
    t.update(lora_pair("lora_unet_down_blocks_0_attentions_0_proj_in", 32, (32, 1, 1), alpha=1, conv_up=True))
    t.update(lora_pair("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v", 64, 48, alpha=2))
    t.update(lora_pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 64, 64, alpha=4))
    t.update(lora_pair("lora_te_text_model_encoder_layers_2_mlp_fc2", 64, 128, alpha=1))
    # kohya trainers save in half precision.
    return {k: v.half() for k, v in t.items()}


def kohya_sdxl():
    t = {}
    t.update(lora_pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 64, 64, alpha=2))
    t.update(lora_pair("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 64, 64, alpha=4))
    t.update(lora_pair("lora_unet_input_blocks_4_1_proj_in", 64, 64, alpha=4))
    t.update(lora_pair("lora_unet_output_blocks_3_1_transformer_blocks_0_attn1_to_v", 64, 64, alpha=1))
    t.update(lora_pair("lora_unet_input_blocks_1_0_in_layers_2", 32, (32, 3, 3), alpha=2, conv_up=True))
    t.update(lora_pair("lora_te1_text_model_encoder_layers_1_self_attn_k_proj", 64, 64, alpha=4))
    t.update(lora_pair("lora_te2_text_model_encoder_layers_2_mlp_fc1", 128, 32, alpha=2))
    t.update(lora_pair("lora_te2_text_projection", 32, 32, alpha=4))
    return t


def diffusers_sdxl():
    t = {}
    a0 = "unet.down_blocks.1.attentions.0"
    b0 = f"{a0}.transformer_blocks.0"
    # Old diffusers attention processors (ComfyUI's ".processor." keys, to_out.0 -> to_out).
    t.update(lora_pair(f"{b0}.attn1.processor.to_k", 64, 64, up="{}_lora.up.weight", down="{}_lora.down.weight"))
    t.update(lora_pair(f"{b0}.attn1.processor.to_out", 64, 64, up="{}_lora.up.weight",
                       down="{}_lora.down.weight"))
    # PEFT lora_A/lora_B on a layer without ".to_" (ComfyUI maps those), with alpha.
    t.update(lora_pair(f"{a0}.proj_out", 64, 64, alpha=8, up="{}.lora_B.weight", down="{}.lora_A.weight"))
    # Plain PEFT attention names: a Weft extension.
    t.update(lora_pair(f"{b0}.attn2.to_q", 64, 64, up="{}.lora_B.weight", down="{}.lora_A.weight"))
    # diffusers' lora.up/lora.down spelling.
    t.update(lora_pair("unet.up_blocks.1.attentions.0.proj_in", 64, 64, up="{}.lora.up.weight",
                       down="{}.lora.down.weight"))
    t.update(lora_pair("text_encoder.text_model.encoder.layers.0.self_attn.v_proj", 64, 64,
                       up="{}.lora_linear_layer.up.weight", down="{}.lora_linear_layer.down.weight"))
    t.update(lora_pair("text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj", 32, 32,
                       up="{}.lora_B.weight", down="{}.lora_A.weight"))
    return t


def locon_sd1():
    t = {}
    t.update(lora_pair("lora_unet_down_blocks_0_resnets_0_conv1", 32, (32, 3, 3), alpha=2, conv_up=True))
    p = "lora_unet_down_blocks_0_resnets_1_conv2"
    t[p + ".lora_down.weight"] = rnd(4, 32, 1, 1)
    t[p + ".lora_mid.weight"] = rnd(4, 4, 3, 3)
    t[p + ".lora_up.weight"] = rnd(32, 4, 1, 1)
    t[p + ".alpha"] = torch.tensor(4.0)
    t.update(lora_pair("lora_unet_down_blocks_1_resnets_0_conv_shortcut", 64, (32, 1, 1), conv_up=True))
    t.update(lora_pair("lora_unet_down_blocks_0_resnets_0_time_emb_proj", 32, 128, alpha=1))
    return t


def loha_sd1():
    t = {}
    p = f"lora_unet_{SD1_T0}_attn1_to_v"
    t.update({p + ".hada_w1_a": rnd(32, 4), p + ".hada_w1_b": rnd(4, 32), p + ".hada_w2_a": rnd(32, 4),
              p + ".hada_w2_b": rnd(4, 32), p + ".alpha": torch.tensor(2.0)})
    p = "lora_unet_down_blocks_0_resnets_1_conv1"
    t.update({p + ".hada_w1_a": rnd(32, 4), p + ".hada_w1_b": rnd(4, 32 * 9), p + ".hada_w2_a": rnd(32, 4),
              p + ".hada_w2_b": rnd(4, 32 * 9), p + ".alpha": torch.tensor(4.0)})
    p = "lora_unet_down_blocks_0_resnets_0_conv2"
    t.update({p + ".hada_w1_a": rnd(4, 32), p + ".hada_w1_b": rnd(4, 32), p + ".hada_t1": rnd(4, 4, 3, 3),
              p + ".hada_w2_a": rnd(4, 32), p + ".hada_w2_b": rnd(4, 32), p + ".hada_t2": rnd(4, 4, 3, 3),
              p + ".alpha": torch.tensor(2.0)})
    return t


def lokr_sd1():
    t = {}
    p = f"lora_unet_{SD1_T0}_attn1_to_q"
    t.update({p + ".lokr_w1": rnd(4, 4), p + ".lokr_w2_a": rnd(8, 2), p + ".lokr_w2_b": rnd(8, 2).T.contiguous(),
              p + ".alpha": torch.tensor(1.0)})
    p = f"lora_unet_{SD1_T0}_ff_net_2"
    t.update({p + ".lokr_w1_a": rnd(4, 2), p + ".lokr_w1_b": rnd(2, 8), p + ".lokr_w2": rnd(8, 16),
              p + ".alpha": torch.tensor(4.0)})
    p = "lora_unet_down_blocks_0_resnets_1_conv2"
    t.update({p + ".lokr_w1": rnd(4, 4), p + ".lokr_w2_a": rnd(2, 8), p + ".lokr_w2_b": rnd(2, 8),
              p + ".lokr_t2": rnd(2, 2, 3, 3)})
    p = f"lora_unet_{SD1_T0}_attn2_to_v"
    t.update({p + ".lokr_w1": rnd(2, 4), p + ".lokr_w2": rnd(16, 12), p + ".alpha": torch.tensor(3.0)})
    return t


def diff_sd1():
    t = {}
    t["lora_unet_down_blocks_0_attentions_0_norm.diff"] = rnd(32)
    t["lora_unet_down_blocks_0_attentions_0_norm.diff_b"] = rnd(32)
    t[f"lora_unet_{SD1_T0}_attn1_to_out_0.diff"] = rnd(32, 32, scale=0.05)
    t[f"lora_unet_{SD1_T0}_attn1_to_out_0.diff_b"] = rnd(32)
    # Generic names on LDM keys, one of them a bias.
    t["diffusion_model.input_blocks.1.1.proj_out.diff"] = rnd(32, 32, 1, 1, scale=0.05)
    t["diffusion_model.input_blocks.1.1.transformer_blocks.0.norm1.bias.diff"] = rnd(32)
    # LyCORIS full norms.
    t[f"lora_unet_{SD1_T0}_norm2.w_norm"] = rnd(32)
    t[f"lora_unet_{SD1_T0}_norm2.b_norm"] = rnd(32)
    return t


def dora_scale_for(model, target, lora_t, axis):
    """A realistic magnitude: the base weight's norm along `axis` times (1 + noise)."""
    w = model.base(("unet", target))
    if axis == "out":
        n = w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
    else:
        n = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, w.shape[1], *[1] * (w.dim() - 2))
    return n * (1 + 0.1 * torch.randn(n.shape, generator=GEN))


def dora_sd1(model):
    t = {}
    base = "down_blocks.0.attentions.0.transformer_blocks.0"
    p = f"lora_unet_{SD1_T0}_attn1_to_q"
    t.update(lora_pair(p, 32, 32, alpha=2))
    t[p + ".dora_scale"] = dora_scale_for(model, f"{base}.attn1.to_q.weight", t, "in")
    p = f"lora_unet_{SD1_T0}_attn2_to_v"
    t.update(lora_pair(p, 32, 48, alpha=4))
    t[p + ".dora_scale"] = dora_scale_for(model, f"{base}.attn2.to_v.weight", t, "out")
    p = "lora_unet_down_blocks_0_resnets_0_conv1"
    t.update(lora_pair(p, 32, (32, 3, 3), alpha=2, conv_up=True))
    t[p + ".dora_scale"] = dora_scale_for(model, "down_blocks.0.resnets.0.conv1.weight", t, "in")
    p = f"lora_unet_{SD1_T0}_attn1_to_k"
    t.update({p + ".hada_w1_a": rnd(32, 4), p + ".hada_w1_b": rnd(4, 32), p + ".hada_w2_a": rnd(32, 4),
              p + ".hada_w2_b": rnd(4, 32), p + ".alpha": torch.tensor(2.0)})
    t[p + ".dora_scale"] = dora_scale_for(model, f"{base}.attn1.to_k.weight", t, "in")
    return t


def pickle_sd1():
    """A torch.save'd LoRA: f16 and bf16 factors, alpha as a 0-d tensor."""
    t = {}
    t.update(lora_pair("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", 64, 64, rank=2,
                       alpha=1))
    t.update(lora_pair("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_q", 64, 64, rank=2))
    out = {}
    for k, v in t.items():
        out[k] = v.bfloat16() if "attn2" in k else v.half() if k.endswith("weight") else v
    return out


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def bad_pickles():
    lora = pickle_sd1()
    with_global = dict(lora)
    with_global["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = Evil()
    torch.save(with_global, os.path.join(OUT, "bad_global.pt"))
    # A tensor whose shape claims far more data than the file holds (a stride-0 view).
    torch.save({"lora_unet_x.lora_up.weight": torch.zeros(4).expand(1 << 20, 4)}, os.path.join(OUT, "bad_shape.pt"))
    # A valid zip whose data.pkl uses an opcode the reader does not know (0xfe).
    with zipfile.ZipFile(os.path.join(OUT, "bad_opcode.pt"), "w", zipfile.ZIP_STORED) as z:
        for name, data in [("bad_opcode/data.pkl", b"\x80\x02}q\x00\xfe."), ("bad_opcode/version", b"3\n")]:
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)


# ------------------------------------------------------------------------------------------------


def keymap_digest(model):
    lines = sorted(f"{m}\t{c}/{k}\n" for m, (c, k) in model.comfy_map.items())
    text = "".join(lines)
    return {"count": len(lines), "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "sample": [l.rstrip("\n") for l in lines[::max(1, len(lines) // 12)]]}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    sd1, sdxl = Model("sd1"), Model("sdxl")

    files = {
        "kohya_sd1.safetensors": kohya_sd1(),
        "kohya_sdxl.safetensors": kohya_sdxl(),
        "diffusers_sdxl.safetensors": diffusers_sdxl(),
        "locon_sd1.safetensors": locon_sd1(),
        "loha_sd1.safetensors": loha_sd1(),
        "lokr_sd1.safetensors": lokr_sd1(),
        "diff_sd1.safetensors": diff_sd1(),
        "dora_sd1.safetensors": dora_sd1(sd1),
    }
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, name))
    pt = pickle_sd1()
    torch.save(pt, os.path.join(OUT, "pickle_sd1.pt"))
    files["pickle_sd1.pt"] = pt
    bad_pickles()

    # name -> (model, [(file, strength_model, strength_clip)])
    cases = {
        "kohya_sd1": ("sd1", [("kohya_sd1.safetensors", 0.8, 0.6)]),
        "kohya_sdxl": ("sdxl", [("kohya_sdxl.safetensors", 1.0, -0.7)]),
        "diffusers_sdxl": ("sdxl", [("diffusers_sdxl.safetensors", 0.6, 1.2)]),
        "locon_sd1": ("sd1", [("locon_sd1.safetensors", -0.5, 0.0)]),
        "loha_sd1": ("sd1", [("loha_sd1.safetensors", 1.0, 0.0)]),
        "lokr_sd1": ("sd1", [("lokr_sd1.safetensors", 0.9, 0.0)]),
        "diff_sd1": ("sd1", [("diff_sd1.safetensors", 0.7, 0.0)]),
        "dora_sd1": ("sd1", [("dora_sd1.safetensors", 0.6, 0.0)]),
        "dora_sd1_full": ("sd1", [("dora_sd1.safetensors", 1.0, 0.0)]),
        "pickle_sd1": ("sd1", [("pickle_sd1.pt", 1.0, 1.0)]),
        "stack_sd1": ("sd1", [("kohya_sd1.safetensors", 0.8, 0.5), ("locon_sd1.safetensors", -0.5, 0.0),
                              ("loha_sd1.safetensors", 1.0, 0.0), ("lokr_sd1.safetensors", 0.9, 0.0),
                              ("dora_sd1.safetensors", 0.6, 0.0)]),
    }
    models = {"sd1": sd1, "sdxl": sdxl}
    expected = {}
    for case, (model_name, loras) in cases.items():
        model = models[model_name]
        patched = apply_case(model, [(files[f], sm, sc) for f, sm, sc in loras])
        for (component, key), w in patched.items():
            expected[f"{case}/{component}/{key}"] = w.contiguous()
        print(f"{case}: {len(patched)} weights patched")

    # Forward of the tiny SD1 UNet with the stacked patches (diffusers).
    unet = sd1.unet
    sd = unet.state_dict()
    for (component, key), w in apply_case(sd1, [(files[f], sm, sc) for f, sm, sc in cases["stack_sd1"][1]]).items():
        if component == "unet":
            sd[key] = w
    unet.load_state_dict(sd)
    g = torch.Generator().manual_seed(99)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([500.0])
    context = torch.randn(1, 5, 48, generator=g)
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=context).sample
    fill_synth(unet)
    with torch.no_grad():
        base_out = unet(x, t, encoder_hidden_states=context).sample
    print(f"stack_sd1: the patches move the UNet output by {(out - base_out).abs().max():.4f}")
    for k, v in {"x": x, "t": t, "context": context, "out": out}.items():
        expected[f"stack_sd1/forward/{k}"] = v.contiguous()
    save_file(expected, os.path.join(OUT, "expected.safetensors"))

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({c: {"model": m, "loras": [list(l) for l in ls]} for c, (m, ls) in cases.items()}, f, indent=1)
    with open(os.path.join(OUT, "keymaps.json"), "w") as f:
        json.dump({"sd1": keymap_digest(sd1), "sdxl": keymap_digest(sdxl)}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"fixtures: {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
