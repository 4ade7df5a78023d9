"""Reference fixtures for token merging (crates/weft-engine/src/diffusion/tome.rs).

Run: `/tmp/peer-venv/bin/python tools/parity/tome_reference.py` (torch, safetensors).
Writes tests/fixtures/sampling/tome_reference.safetensors.

Transcribed from ComfyUI's comfy_extras/nodes_tomesd.py (`bipartite_soft_matching_random2d`,
`get_functions`), with torch.randint's destination draw passed in. The "even", "odd" and "all"
cases store their draw; the "global" cases draw as ComfyUI does, from torch's global generator
right after `prepare_noise` (comfy/sample.py) has seeded it and drawn the initial noise. The fixture holds `unmerge(merge(x) * 2 + 1)`, which the
orders left by the unstable argsorts do not change, and the merged token count.
"""
import math
import os

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "sampling", "tome_reference.safetensors")


def bipartite_soft_matching_random2d(metric, w, h, sx, sy, r, rand_idx):
    B, N, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return (lambda x: x), (lambda x: x)
    gather = torch.gather
    with torch.no_grad():
        hsy, wsx = h // sy, w // sx
        idx_buffer_view = torch.zeros(hsy, wsx, sy * sx, device=metric.device, dtype=torch.int64)
        idx_buffer_view.scatter_(dim=2, index=rand_idx, src=-torch.ones_like(rand_idx, dtype=rand_idx.dtype))
        idx_buffer_view = idx_buffer_view.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
        if (hsy * sy) < h or (wsx * sx) < w:
            idx_buffer = torch.zeros(h, w, device=metric.device, dtype=torch.int64)
            idx_buffer[:(hsy * sy), :(wsx * sx)] = idx_buffer_view
        else:
            idx_buffer = idx_buffer_view
        rand_idx = idx_buffer.reshape(1, -1, 1).argsort(dim=1)
        num_dst = hsy * wsx
        a_idx = rand_idx[:, num_dst:, :]
        b_idx = rand_idx[:, :num_dst, :]

        def split(x):
            C = x.shape[-1]
            src = gather(x, dim=1, index=a_idx.expand(B, N - num_dst, C))
            dst = gather(x, dim=1, index=b_idx.expand(B, num_dst, C))
            return src, dst

        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(metric)
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = gather(node_idx[..., None], dim=-2, index=src_idx)

    def merge(x, mode="mean"):
        src, dst = split(x)
        n, t1, c = src.shape
        unm = gather(src, dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = gather(src, dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x):
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        _, _, c = unm.shape
        src = gather(dst, dim=-2, index=dst_idx.expand(B, r, c))
        out = torch.zeros(B, N, c, device=x.device, dtype=x.dtype)
        out.scatter_(dim=-2, index=b_idx.expand(B, num_dst, c), src=dst)
        out.scatter_(dim=-2, index=gather(a_idx.expand(B, a_idx.shape[1], 1), dim=1, index=unm_idx).expand(B, unm_len, c), src=unm)
        out.scatter_(dim=-2, index=gather(a_idx.expand(B, a_idx.shape[1], 1), dim=1, index=src_idx).expand(B, r, c), src=src)
        return out

    return merge, unmerge


def get_functions(x, ratio, original_shape, rand_idx):
    b, c, original_h, original_w = original_shape
    original_tokens = original_h * original_w
    downsample = int(math.ceil(math.sqrt(original_tokens // x.shape[1])))
    if downsample <= 1:
        w = int(math.ceil(original_w / downsample))
        h = int(math.ceil(original_h / downsample))
        r = int(x.shape[1] * ratio)
        return bipartite_soft_matching_random2d(x, w, h, 2, 2, r, rand_idx)
    return (lambda y: y), (lambda y: y)


def global_stream(out):
    """ComfyUI's own draw: `prepare_noise` seeds torch's global generator and draws the noise of a
    7x9 latent (252 values, a ragged tail), then each patched self-attention call draws its cells
    with `torch.randint` from the same generator. Three calls, each on a batch of two (the
    positive and negative sides as `calc_cond_batch` batches them)."""
    seed, (h, w, c, ratio) = 123, (7, 9, 8, 0.4)
    generator = torch.manual_seed(seed)
    torch.randn((1, 4, h, w), generator=generator, device="cpu")
    g = torch.Generator().manual_seed(9)
    for call in range(3):
        x = torch.randn(2, h * w, c, generator=g)
        rand_idx = torch.randint(4, size=(h // 2, w // 2, 1), device=x.device)
        m, u = get_functions(x, ratio, [2, 4, h, w], rand_idx)
        out[f"global{call}/x"], out[f"global{call}/cells"] = x, rand_idx.reshape(-1)
        out[f"global{call}/roundtrip"] = u(m(x) * 2 + 1)
    out["global/seed"] = torch.tensor([seed, h, w], dtype=torch.int64)
    out["global/ratio"] = torch.tensor([ratio], dtype=torch.float64)


def main():
    g = torch.Generator().manual_seed(5)
    out = {}
    for name, (b, h, w, c, ratio) in {"even": (2, 8, 8, 16, 0.3), "odd": (1, 7, 9, 8, 0.5), "all": (1, 6, 6, 4, 1.0)}.items():
        x = torch.randn(b, h * w, c, generator=g)
        rand_idx = torch.randint(4, size=(h // 2, w // 2, 1), generator=g)
        m, u = get_functions(x, ratio, [b, 4, h, w], rand_idx)
        merged = m(x)
        out[f"{name}/x"], out[f"{name}/cells"] = x, rand_idx.reshape(-1)
        out[f"{name}/merged_tokens"] = torch.tensor([merged.shape[1]], dtype=torch.int64)
        out[f"{name}/roundtrip"] = u(merged * 2 + 1)
    global_stream(out)
    save_file({k: v.contiguous().clone() for k, v in out.items()}, OUT, metadata={"torch_version": torch.__version__})
    print("tome: wrote", len(out))


if __name__ == "__main__":
    main()
