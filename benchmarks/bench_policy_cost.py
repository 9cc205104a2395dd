"""What the re-scoring salience head and the eviction cost at the Wan 2.1 1.3B shape (prints numbers).

One chunk at 480x832: 4680 tokens enter each of the 30 layers; the cache then holds the 25% budget
(8190 tokens) plus that chunk, all of which the re-scorer ranks, and one top-k evicts a chunk's worth.
Counts the FLOPs of that work against the chunk's own (4 denoising passes + the cache-writing pass of
the 1.3B transformer over 4680 tokens attending to 12870), and times it on this machine's CPU at the
same shape, next to a matmul of the chunk's kind to turn the chunk's FLOPs into CPU time.

    python benchmarks/bench_policy_cost.py            # CPU, a minute
    python benchmarks/bench_policy_cost.py --device cuda
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.cache import CacheBudget, KVCache  # noqa: E402
from pafu_core.cli import Parser, positive_int, run_cli, torch_device, torch_dtype  # noqa: E402
from pafu_core.policies import PaFuSalience  # noqa: E402
from pafu_core.salience import HeadConfig, SalienceHead  # noqa: E402
from pafu_core.wan import WAN21_1_3B, WanDiT, param_count  # noqa: E402


def chunk_flops(tokens: int, cached: int, passes: int = 5) -> float:
    """Forward FLOPs of a Wan 1.3B chunk: 2 x params per token, plus self-attention over the cache."""
    with torch.device("meta"):
        params = param_count(WanDiT(WAN21_1_3B))
    cfg = WAN21_1_3B
    attention = 4 * tokens * (cached + tokens) * cfg.dim * cfg.num_layers          # QK^T and PV
    return passes * (2 * params * tokens + attention)


def policy_flops(cfg: HeadConfig, entering: int, live: int) -> float:
    entry = 2 * entering * (cfg.in_features * cfg.hidden + cfg.hidden * cfg.out_features)
    rescore = 2 * live * (len(cfg.rescore_inputs) * cfg.rescore_hidden + cfg.rescore_hidden)
    return cfg.num_layers * (entry + rescore + 8 * cfg.in_features * entering)        # + the two layer norms


def timed(fn, device, repeats=5) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    p = Parser(prog="benchmarks/bench_policy_cost.py", description=__doc__)
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--dtype", type=torch_dtype, default="bfloat16")
    p.add_argument("--hidden", type=positive_int, default=32)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = WAN21_1_3B
    tpf, chunk_frames = 1560, 3
    chunk = chunk_frames * tpf
    budget = CacheBudget(0.25, unit="fraction")
    head_cfg = HeadConfig(num_layers=cfg.num_layers, dim=cfg.dim, num_heads=cfg.num_heads, hidden=args.hidden, rescore=True)
    head = SalienceHead(head_cfg).to(device)
    policy = PaFuSalience(head)
    total_frames = 84
    cache = KVCache(num_layers=cfg.num_layers, batch=1, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                    tokens_per_frame=tpf, chunk_frames=chunk_frames, total_frames=total_frames, policy=policy,
                    budget=budget, device=device, dtype=dtype)
    live = cache.budget_tokens + chunk
    k = torch.randn(1, chunk, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype)
    frame = [0]

    def one_chunk_of_policy():
        """Entry scores of every layer (as in the writing pass), then commit: re-score + evict."""
        cache.open_chunk(frame[0], chunk_frames, write=True)
        for layer in range(cfg.num_layers):
            cache.enter(layer, k, k, None)
        cache._staged = chunk
        cache.commit()
        frame[0] = (frame[0] + chunk_frames) % (total_frames - chunk_frames)
        if frame[0] == 0:
            cache.length, cache.token_index.fill_(-1)

    for _ in range(4):                                   # fill the cache up to its budget
        one_chunk_of_policy()
    seconds = timed(one_chunk_of_policy, device)
    a = torch.randn(chunk, cfg.dim, device=device, dtype=dtype)
    w = torch.randn(cfg.ffn_dim, cfg.dim, device=device, dtype=dtype)
    mm = timed(lambda: a @ w.T, device)
    rate = 2 * chunk * cfg.dim * cfg.ffn_dim / mm                                 # FLOP/s of a chunk-like matmul
    pf, cf = policy_flops(head_cfg, chunk, live), chunk_flops(chunk, cache.budget_tokens)
    print(f"Wan 2.1 1.3B, 480x832, 3-frame chunks, budget 25% ({cache.budget_tokens} tokens/layer), head hidden "
          f"{args.hidden}, re-scorer hidden {head_cfg.rescore_hidden}; {args.dtype} on {args.device}")
    print(f"FLOPs: head + re-scoring {pf / 1e9:.1f} GFLOP per chunk vs the chunk's {cf / 1e12:.1f} TFLOP "
          f"-> {100 * pf / cf:.3f}%")
    print(f"time on this {args.device}: head + re-scoring + eviction {1e3 * seconds:.1f} ms per chunk; a chunk-like "
          f"matmul runs at {rate / 1e9:.1f} GFLOP/s here, so the chunk's FLOPs take about {cf / rate:.1f} s -> "
          f"{100 * seconds / (cf / rate):.3f}% of a chunk")


if __name__ == "__main__":
    run_cli(main)
