#!/usr/bin/env python3
"""Reference fixtures for the CLIP side of Weft (tokenizer, text encoders, ComfyUI encoding).

Writes clip/tests/fixtures/clip_reference.safetensors and clip_reference.json, read by
clip/tests/clip_parity.rs. Deterministic: weights come from the shared synthetic generator
(`synth`, see COMMON.md), nothing is random, no network is used.

References:
- HF transformers `CLIPTokenizer` built offline from the vocabulary bundled in the
  `instant-clip-tokenizer` crate (bpe_simple_vocab_16e6.txt, as OpenAI ships it);
- HF transformers `CLIPTextModel` / `CLIPTextModelWithProjection` with tiny configs
  (full 49408 vocabulary, 77 positions): "tiny_l" (quick_gelu, like CLIP-L) and "tiny_g"
  (exact gelu, square text_projection, like OpenCLIP H / bigG);
- a python port of ComfyUI's `SDTokenizer.tokenize_with_weights` and
  `ClipTokenWeightEncoder.encode_token_weights` (comfy/sd1_clip.py) plus the SD1 / SD2 / SDXL /
  SDXL-refiner layer choices (comfy/sd1_clip.py, sd2_clip.py, sdxl_clip.py), run on the HF models.

Usage: /opt/refpy/bin/python clip/scripts/clip_reference.py [--print-synth-checks]
           [--transformers4 DIR]
Needs: torch, transformers (>= 5), safetensors, numpy.

--transformers4 DIR: DIR holds an unpacked transformers 4.x wheel (e.g. `pip download --no-deps
transformers==4.57.1` then unzip); its slow `CLIPTokenizer` (run without ftfy, as ComfyUI usually
is) gives clip/tests/fixtures/clip_tokenizer_slow.json. That file is only rewritten with the flag.
"""

import glob
import json
import math
import os
import re
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "tests", "fixtures", "clip")

# ----------------------------------------------------------------------------------------------
# Shared synthetic weights (COMMON.md)

MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def synth(key: str, shape) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape)) if len(shape) > 0 else 1
    seed = np.uint64(fnv1a64(key.encode("utf-8")))
    with np.errstate(over="ignore"):
        x = np.arange(numel, dtype=np.uint64) + seed
        x = x + np.uint64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    c = 2.0 * u - 1.0
    if len(shape) >= 2:
        fan_in = numel // shape[0]
        v = c / math.sqrt(fan_in)
    elif key.endswith("weight"):
        v = 1.0 + 0.1 * c
    else:
        v = 0.1 * c
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fill_synthetic(model: torch.nn.Module):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(synth(name, p.shape))


# ----------------------------------------------------------------------------------------------
# HF tokenizer from the crate's vocabulary


def bytes_to_unicode():
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def hf_tokenizer() -> CLIPTokenizer:
    paths = glob.glob(
        os.path.expanduser(
            "~/.cargo/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt"
        )
    )
    if not paths:
        sys.exit("instant-clip-tokenizer source not found: run cargo fetch in /work/wip first")
    lines = open(sorted(paths)[-1], encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    return CLIPTokenizer(
        vocab={v: i for i, v in enumerate(vocab)}, merges=[tuple(m.split()) for m in merges]
    )


# ----------------------------------------------------------------------------------------------
# Port of ComfyUI's prompt parsing and chunking (comfy/sd1_clip.py, current master)


def parse_parentheses(string):
    result = []
    current_item = ""
    nesting_level = 0
    for char in string:
        if char == "(":
            if nesting_level == 0:
                if current_item:
                    result.append(current_item)
                current_item = "("
            else:
                current_item += char
            nesting_level += 1
        elif char == ")":
            nesting_level -= 1
            if nesting_level == 0:
                result.append(current_item + ")")
                current_item = ""
            else:
                current_item += char
        else:
            current_item += char
    if current_item:
        result.append(current_item)
    return result


def token_weights(string, current_weight):
    out = []
    for x in parse_parentheses(string):
        weight = current_weight
        if len(x) >= 2 and x[-1] == ")" and x[0] == "(":
            x = x[1:-1]
            xx = x.rfind(":")
            weight *= 1.1
            if xx > 0:
                try:
                    weight = float(x[xx + 1 :])
                    x = x[:xx]
                except ValueError:
                    pass
            out += token_weights(x, weight)
        else:
            out += [(x, current_weight)]
    return out


def escape_important(text):
    return text.replace("\\)", "\0\1").replace("\\(", "\0\2")


def unescape_important(text):
    return text.replace("\0\1", ")").replace("\0\2", "(")


class ComfyTokenizer:
    """SDTokenizer: start 49406, end 49407, pad per encoder, max_length 77, max_word_length 8."""

    def __init__(self, tok, pad_token, embeddings, embedding_dim):
        self.tok = tok
        self.pad_token = pad_token
        self.embeddings = embeddings  # name -> tensor [n, dim]
        self.embedding_dim = embedding_dim
        self.max_length = 77
        self.max_word_length = 8
        self.start_token = 49406
        self.end_token = 49407

    def _try_get_embedding(self, name):
        split_embed = name.split()
        name = split_embed[0]
        leftover = " ".join(split_embed[1:])
        embed = self.embeddings.get(name)
        if embed is None:
            stripped = name.strip(",")
            if len(stripped) < len(name):
                embed = self.embeddings.get(stripped)
                return embed, "{} {}".format(name[len(stripped) :], leftover), stripped
        return embed, leftover, name

    def tokenize_with_weights(self, text):
        parsed = token_weights(escape_important(text), 1.0)
        tokens = []
        for segment, weight in parsed:
            to_tokenize = unescape_important(segment)
            split = re.split(" {0}|\n{0}".format("embedding:"), to_tokenize)
            to_tokenize = [split[0]] + ["embedding:" + s for s in split[1:]]
            to_tokenize = [x for x in to_tokenize if x != ""]
            for word in to_tokenize:
                if word.startswith("embedding:") and self.embeddings is not None:
                    name = word[len("embedding:") :].strip("\n")
                    embed, leftover, found = self._try_get_embedding(name)
                    if embed is not None:
                        tokens.append([(("emb", found, r), weight) for r in range(embed.shape[0])])
                    if leftover != "":
                        word = leftover
                    else:
                        continue
                tokens.append([(t, weight) for t in self.tok(word)["input_ids"][1:-1]])

        batched = []
        batch = [(self.start_token, 1.0)]
        batched.append(batch)
        for t_group in tokens:
            is_large = len(t_group) >= self.max_word_length
            while len(t_group) > 0:
                if len(t_group) + len(batch) > self.max_length - 1:
                    remaining = self.max_length - len(batch) - 1
                    if is_large:
                        batch.extend(t_group[:remaining])
                        batch.append((self.end_token, 1.0))
                        t_group = t_group[remaining:]
                    else:
                        batch.append((self.end_token, 1.0))
                        batch.extend([(self.pad_token, 1.0)] * remaining)
                    batch = [(self.start_token, 1.0)]
                    batched.append(batch)
                else:
                    batch.extend(t_group)
                    t_group = []
        batch.append((self.end_token, 1.0))
        batch.extend([(self.pad_token, 1.0)] * (self.max_length - len(batch)))
        return batched


# ----------------------------------------------------------------------------------------------
# Models

VOCAB = 49408


def tiny_config(kind):
    if kind == "tiny_l":
        return CLIPTextConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=48,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    return CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


def build_model(kind):
    cfg = tiny_config(kind)
    cfg._attn_implementation = "eager"
    model = CLIPTextModelWithProjection(cfg).eval()
    fill_synthetic(model)
    return model


def run_model(model, ids, extra_rows=None):
    """ids: LongTensor [B, T]; extra_rows: [n, D] appended to the vocabulary (ids >= 49408)."""
    emb = model.text_model.embeddings.token_embedding
    backup = emb.weight.data
    if extra_rows is not None and extra_rows.shape[0] > 0:
        emb.weight.data = torch.cat([backup, extra_rows], dim=0)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        emb.weight.data = backup
    tm = model.text_model
    hs = out.hidden_states  # embeddings + one per layer
    eos = (ids == 49407).int().argmax(dim=-1)
    last = out.last_hidden_state
    pooled = last[torch.arange(ids.shape[0]), eos]
    return {
        "last": last,  # final LN of the last layer
        "hidden": hs,  # raw layer outputs, no final LN
        "ln": tm.final_layer_norm,
        "pooled": pooled,
        "projected": out.text_embeds,
    }


# ----------------------------------------------------------------------------------------------
# ComfyUI encode_token_weights on top of the HF model


def encode_token_weights(model, chunks, pad_token, layer_idx, layer_norm_hidden, projected_pooled):
    """layer_idx None = "last" (final LN output); otherwise ComfyUI's intermediate_output index."""
    dim = model.config.hidden_size
    n_layers = model.config.num_hidden_layers
    # Textual-inversion vectors become extra vocabulary rows, as ComfyUI's
    # set_up_textual_embeddings does.
    extra = []
    rows = []
    for chunk in chunks:
        row = []
        for t, _w in chunk:
            if isinstance(t, tuple):
                _, name, r = t
                extra.append(EMBEDDINGS[dim][name][r])
                row.append(VOCAB + len(extra) - 1)
            else:
                row.append(t)
        rows.append(row)
    has_weights = any(w != 1.0 for chunk in chunks for _t, w in chunk)
    if has_weights:
        empty = [49406, 49407] + [pad_token] * (77 - 2)
        rows.append(empty)
    ids = torch.tensor(rows, dtype=torch.long)
    extra_rows = torch.stack(extra) if extra else None
    r = run_model(model, ids, extra_rows)
    if layer_idx is None:
        z = r["last"]
    else:
        idx = layer_idx if layer_idx >= 0 else n_layers + layer_idx
        z = r["hidden"][idx + 1]
        if layer_norm_hidden:
            with torch.no_grad():
                z = r["ln"](z)
    pooled = r["projected"] if projected_pooled else r["pooled"]
    out = []
    for k, chunk in enumerate(chunks):
        zk = z[k].clone()
        if has_weights:
            ze = z[-1]
            for j, (_t, w) in enumerate(chunk):
                if w != 1.0:
                    zk[j] = (zk[j] - ze[j]) * w + ze[j]
        out.append(zk)
    return torch.cat(out, dim=0).unsqueeze(0), pooled[0:1]


def comfy_layer(clip_skip, n_layers, default_idx):
    """SDClipModel.set_clip_options: |idx| > n_layers means "last"."""
    if clip_skip is None:
        return default_idx
    if abs(clip_skip) > n_layers:
        return None
    return clip_skip


# ----------------------------------------------------------------------------------------------

TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "",
    "A Photo OF a CAT, highly detailed!!! 8k, (masterpiece:1.2)",
    "Hello,  World!!  café naïve 日本語 テスト",
    "don't stop, it's <|endoftext|> time's up; they'll we've I'm you'd",
    "x<start_of_text>y <end_of_text> <|ENDOFTEXT|>",
    "numbers 12345 and 3.14159, emoji 🐈‍⬛ and symbols @#$%^&*",
    "tabs\tand\nnewlines   and    spaces",
]

# Cleaning differences of transformers 4's slow tokenizer (BasicTokenizer without ftfy).
SLOW_ONLY_PROMPTS = [
    "中文提示词 a 漢字cat",
    "soft\u00adhyphen zero\u200bwidth bom\ufeffx ctrl\x07bell \x0cform \u3000ideo\u00a0nbsp",
    "<|EndOfText|> x <|STARTOFTEXT|>",
    "line\u2028sep private\ue000use",
]

CHUNK_PROMPTS = [
    "",
    "a photo of a cat",
    "a (photo:1.5) of ((a cat)), [dog], \\(literal\\) (style:anime)",
    " ".join(["cat"] * 100),
    " ".join(["cat"] * 74) + " (cat cat cat:1.2) end",
    "a embedding:style cat, (embedding:style:0.8) embedding:missing, dog",
    "masterpiece, best quality, (1girl:1.3), solo, long hair, looking at viewer, smile, "
    + "outdoors, sky, cloud, tree, (detailed background), "
    + " ".join(f"word{i}" for i in range(40)),
]

# Textual-inversion embeddings, per encoder width: 2 vectors named "style".
EMBEDDINGS = {
    dim: {"style": synth(f"embedding.style.{dim}", (2, dim))} for dim in (64, 32)
}

ENCODE_CASES = [
    # (name, prompt, clip_skip)
    ("plain", "a photo of a cat", None),
    ("weighted", "a (photo:1.5) of ((a cat)), (embedding:style:0.8) dog", None),
    ("long", "masterpiece, (best quality:0.7), " + " ".join(["cat"] * 90), None),
    ("skip2", "a photo of a (cat:1.3)", -2),
    ("skip1", "a photo of a dog", -1),
    ("empty", "", None),
]


def slow_tokenizer_fixture(tf4_dir):
    """Token ids of transformers 4's slow CLIPTokenizer, run in a subprocess so its modules do not
    mix with the transformers 5 ones imported here."""
    import subprocess
    import tempfile

    tok = hf_tokenizer()
    vocab = tok.get_vocab()
    merges_path = glob.glob(
        os.path.expanduser(
            "~/.cargo/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt"
        )
    )
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    lines = open(sorted(merges_path)[-1], encoding="utf-8").read().split("\n")
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(lines[1 : 49152 - 256 - 2 + 1]) + "\n")
    with open(os.path.join(d, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(TOKENIZER_PROMPTS + SLOW_ONLY_PROMPTS, f)
    child = f"""
import sys, json, importlib.metadata as md
sys.path.insert(0, {tf4_dir!r})
# transformers 4 checks the installed tokenizers / hub versions at import; the slow CLIP
# tokenizer uses neither, so report versions it accepts.
_v = md.version
md.version = lambda n: {{"tokenizers": "0.22.1", "huggingface-hub": "0.35.0"}}.get(n, _v(n))
import transformers
assert transformers.__version__.startswith("4."), transformers.__version__
from transformers.models.clip.tokenization_clip import CLIPTokenizer
try:
    import ftfy  # noqa: F401
    sys.exit("ftfy is installed: the slow tokenizer would use it")
except ImportError:
    pass
tok = CLIPTokenizer({d!r} + "/vocab.json", {d!r} + "/merges.txt")
prompts = json.load(open({d!r} + "/prompts.json", encoding="utf-8"))
out = {{"transformers": transformers.__version__,
        "cases": [{{"prompt": p, "ids": tok(p)["input_ids"][1:-1]}} for p in prompts]}}
json.dump(out, open({d!r} + "/out.json", "w", encoding="utf-8"), ensure_ascii=False)
"""
    subprocess.run([sys.executable, "-c", child], check=True)
    out = json.load(open(os.path.join(d, "out.json"), encoding="utf-8"))
    with open(os.path.join(FIXTURES, "clip_tokenizer_slow.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote clip_tokenizer_slow.json (transformers {out['transformers']})")


def main():
    if "--transformers4" in sys.argv:
        slow_tokenizer_fixture(sys.argv[sys.argv.index("--transformers4") + 1])
    if "--print-synth-checks" in sys.argv:
        w = synth("text_model.encoder.layers.0.self_attn.q_proj.weight", (4, 3)).flatten()
        b = synth("text_model.encoder.layers.0.self_attn.q_proj.bias", (3,))
        n = synth("text_model.final_layer_norm.weight", (3,))
        vals = torch.cat([w, b, n]).tolist()
        print(", ".join(str(np.float32(v)) for v in vals))
        return

    torch.set_grad_enabled(False)
    tok = hf_tokenizer()
    tensors = {}
    meta = {"tokenizer": [], "chunks": [], "models": {}, "encode": []}

    # 1. Raw BPE ids.
    for p in TOKENIZER_PROMPTS:
        meta["tokenizer"].append({"prompt": p, "ids": tok(p)["input_ids"][1:-1]})

    # 2. ComfyUI chunking with weights and embeddings (CLIP-L padding and bigG padding).
    for pad, dim in ((49407, 64), (0, 32)):
        ct = ComfyTokenizer(tok, pad, EMBEDDINGS[dim], dim)
        for p in CHUNK_PROMPTS:
            chunks = ct.tokenize_with_weights(p)
            enc = [
                [
                    [t if isinstance(t, int) else f"emb:{t[1]}:{t[2]}", w]
                    for t, w in chunk
                ]
                for chunk in chunks
            ]
            meta["chunks"].append({"prompt": p, "pad": pad, "dim": dim, "chunks": enc})

    # 3. Model outputs on raw ids (padded with each model's pad token).
    models = {k: build_model(k) for k in ("tiny_l", "tiny_g")}
    model_prompts = ["a photo of a cat", "", "A Photo OF a CAT, highly detailed!!! 8k"]
    for kind, model in models.items():
        pad = 49407 if kind == "tiny_l" else 0
        ids = []
        for p in model_prompts:
            row = tok(p)["input_ids"]
            row = row + [pad] * (77 - len(row))
            ids.append(row)
        ids_t = torch.tensor(ids, dtype=torch.long)
        r = run_model(model, ids_t)
        tensors[f"{kind}.ids"] = ids_t.to(torch.int64)
        tensors[f"{kind}.last"] = r["last"].contiguous()
        tensors[f"{kind}.penultimate"] = r["hidden"][-2].contiguous()
        tensors[f"{kind}.penultimate_ln"] = r["ln"](r["hidden"][-2]).contiguous()
        tensors[f"{kind}.hidden0"] = r["hidden"][1].contiguous()
        tensors[f"{kind}.pooled"] = r["pooled"].contiguous()
        tensors[f"{kind}.projected"] = r["projected"].contiguous()
        c = model.config
        meta["models"][kind] = {
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "hidden_act": c.hidden_act,
            "projection_dim": c.projection_dim,
            "prompts": model_prompts,
        }

    # 4. ComfyUI encoding per model family, using tiny_l as CLIP-L and tiny_g as H / bigG.
    ml, mg = models["tiny_l"], models["tiny_g"]
    nl, ng = ml.config.num_hidden_layers, mg.config.num_hidden_layers
    tl = ComfyTokenizer(tok, 49407, EMBEDDINGS[64], 64)
    tg = ComfyTokenizer(tok, 0, EMBEDDINGS[32], 32)
    for name, prompt, skip in ENCODE_CASES:
        chunks_l = tl.tokenize_with_weights(prompt)
        chunks_g = tg.tokenize_with_weights(prompt)
        # SD1: CLIP-L "last" (final LN); clip skip = hidden idx with final LN; unprojected pooled.
        idx = comfy_layer(skip, nl, None)
        ctx, pooled = encode_token_weights(ml, chunks_l, 49407, idx, True, False)
        tensors[f"sd1.{name}.context"] = ctx.contiguous()
        tensors[f"sd1.{name}.pooled"] = pooled.contiguous()
        # SD2: OpenCLIP-H penultimate with final LN; projected pooled.
        idx = comfy_layer(skip, ng, -2)
        ctx, pooled = encode_token_weights(mg, chunks_g, 0, idx, True, True)
        tensors[f"sd2.{name}.context"] = ctx.contiguous()
        tensors[f"sd2.{name}.pooled"] = pooled.contiguous()
        # SDXL: L hidden[-2] and G hidden[-2], both without final LN, concatenated; G projected pooled.
        idx_l = comfy_layer(skip, nl, -2)
        idx_g = comfy_layer(skip, ng, -2)
        ctx_l, _ = encode_token_weights(ml, chunks_l, 49407, idx_l, False, True)
        ctx_g, pooled_g = encode_token_weights(mg, chunks_g, 0, idx_g, False, True)
        cut = min(ctx_l.shape[1], ctx_g.shape[1])
        tensors[f"sdxl.{name}.context"] = torch.cat(
            [ctx_l[:, :cut], ctx_g[:, :cut]], dim=-1
        ).contiguous()
        tensors[f"sdxl.{name}.pooled"] = pooled_g.contiguous()
        # SDXL refiner: bigG only, hidden[-2] without final LN.
        tensors[f"refiner.{name}.context"] = ctx_g.clone().contiguous()
        tensors[f"refiner.{name}.pooled"] = pooled_g.clone().contiguous()
        meta["encode"].append({"name": name, "prompt": prompt, "clip_skip": skip})

    os.makedirs(FIXTURES, exist_ok=True)
    save_file(tensors, os.path.join(FIXTURES, "clip_reference.safetensors"))
    with open(os.path.join(FIXTURES, "clip_reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({total / 1e6:.2f} MB) and clip_reference.json")


if __name__ == "__main__":
    main()
