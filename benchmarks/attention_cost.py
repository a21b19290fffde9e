"""Measures `posttrain.train.layout_cost.ATTENTION_SLOWDOWN`: how much slower masked sdpa attention
runs than a matmul layer per FLOP, forward + backward, SmolLM2-135M's shapes (9 heads of 64; a
576 -> 1536 MLP projection), the two interleaved 7 times in one process (medians).

    .venv/bin/python benchmarks/attention_cost.py 1024    # N tokens in one row, blocks of 256
"""
import statistics
import sys
import time

import torch

torch.manual_seed(0)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
H, D, hidden = 9, 64, 576
def attn_once():
    q, k, v = (torch.randn(1, H, N, D, requires_grad=True) for _ in range(3))
    seg = torch.arange(N) // 256
    allowed = (seg[:, None] == seg[None]) & torch.ones(N, N, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, N, N).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    t = time.perf_counter()
    torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
    return time.perf_counter() - t, 12 * N * N * H * D  # fwd 4 N^2 d, bwd 8 N^2 d
def mlp_once():
    x = torch.randn(N, hidden, requires_grad=True)
    w = torch.randn(1536, hidden, requires_grad=True)
    t = time.perf_counter()
    torch.nn.functional.linear(x, w).sum().backward()
    return time.perf_counter() - t, 6 * N * hidden * 1536
rates = {"attn": [], "mlp": []}
for _ in range(7):
    for name, fn in (("attn", attn_once), ("mlp", mlp_once)):
        s, f = fn(); rates[name].append(f / s)
a, m = statistics.median(rates["attn"]), statistics.median(rates["mlp"])
print(f"N={N} attention {a/1e9:.1f} GFLOP/s, matmul {m/1e9:.1f} GFLOP/s, slowdown {m/a:.2f}")
