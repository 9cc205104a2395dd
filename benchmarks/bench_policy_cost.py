"""What scoring and eviction cost per chunk at the Wan 2.1 1.3B shape, policy by policy (prints numbers).

One chunk at 480x832: 4680 tokens enter each of the 30 layers; each policy then scores the live tokens and
one top-k (or one stable sort, for a tie-break by recency) evicts a chunk's worth. Rows: the learned head with
its re-scorer at a 25% budget; participative compression and Deep Forcing (its sink, participative scores and
the re-alignment of the kept keys' temporal phase) over the whole 21-frame window, with all of the newest
frame's queries and with every second one; FIFO for the bare eviction. Each row counts the FLOPs of that work
against the chunk's own (4 denoising passes + the cache-writing pass, attending to the cache at that budget)
and times it on this device, next to a matmul of the chunk's kind that turns the chunk's FLOPs into time here.
The re-alignment is also set against the alternative the issue names: roping the cached keys when they are
read (5 passes per chunk), counted in bytes moved.

    python benchmarks/bench_policy_cost.py            # CPU, a few minutes (participative's softmax is heavy)
    python benchmarks/bench_policy_cost.py --device cuda
    python benchmarks/bench_policy_cost.py --tiny     # a tiny shape, seconds (the test suite runs it)
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.budget import CacheBudget  # noqa: E402
from pafu_core.cache import KVCache  # noqa: E402
from pafu_core.cli import Parser, positive_int, run_cli, torch_device, torch_dtype  # noqa: E402
from pafu_core.ops import rope_axes  # noqa: E402
from pafu_core.policies import PaFuSalience, make_policy  # noqa: E402
from pafu_core.policy import Entering, PolicyOptions  # noqa: E402
from pafu_core.positions import TemporalBand  # noqa: E402
from pafu_core.salience import HeadConfig, SalienceHead  # noqa: E402
from pafu_core.wan import WAN21_1_3B, WanConfig, WanDiT, param_count  # noqa: E402

TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4)


def chunk_flops(cfg: WanConfig, tokens: int, cached: int, passes: int = 5) -> float:
    """Forward FLOPs of a chunk: 2 x params per token, plus self-attention over the cache."""
    with torch.device("meta"):
        params = param_count(WanDiT(cfg))
    attention = 4 * tokens * (cached + tokens) * cfg.dim * cfg.num_layers          # QK^T and PV
    return passes * (2 * params * tokens + attention)


def head_flops(cfg: HeadConfig, entering: int, live: int) -> float:
    entry = 2 * entering * (cfg.in_features * cfg.hidden + cfg.hidden * cfg.out_features)
    rescore = 2 * live * (len(cfg.rescore_inputs) * cfg.rescore_hidden + cfg.rescore_hidden)
    return cfg.num_layers * (entry + rescore + 8 * cfg.in_features * entering)        # + the two layer norms


def participative_flops(cfg: WanConfig, queries: int, live: int) -> float:
    """QK^T of the scoring queries against every live key, and the softmax (about 5 operations a logit)."""
    return cfg.num_layers * (2 * queries * live * cfg.dim + 5 * queries * live * cfg.num_heads)


def timed(fn, device, repeats: int) -> float:
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


def policy_chunk(cfg: WanConfig, policy, budget: CacheBudget, tpf: int, chunk_frames: int, device, dtype,
                 positions: str = "true"):
    """A cache at ``budget`` and a function that runs one chunk's policy work through the cache's public protocol:
    open the writing pass, stage and enter every layer, commit (score + evict). Returns (cache, fn)."""
    band = TemporalBand(rope_axes(cfg.head_dim)[0] // 2)
    cache = KVCache(num_layers=cfg.num_layers, batch=1, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                    tokens_per_frame=tpf, chunk_frames=chunk_frames, total_frames=100_000, policy=policy,
                    budget=budget, device=device, dtype=dtype, positions=positions, band=band)
    chunk = chunk_frames * tpf
    k = torch.randn(1, chunk, cfg.num_heads, cfg.head_dim, device=device, dtype=dtype)
    frame = [0]

    def one_chunk():
        cache.open_chunk(frame[0], chunk_frames, write=True)
        for layer in range(cfg.num_layers):
            keys, values = cache.stage(layer, k, k)
            cache.enter(layer, Entering(keys=k, values=k, queries=k, attended=keys))
        cache.commit()
        frame[0] += chunk_frames

    return cache, one_chunk


def main(argv=None):
    p = Parser(prog="benchmarks/bench_policy_cost.py", description=__doc__)
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--dtype", type=torch_dtype, default="bfloat16")
    p.add_argument("--hidden", type=positive_int, default=32)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--tiny", action="store_true", help="a 4-layer, dim-256 model at 16x16 latents (seconds)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg, tpf = (TINY, 64) if args.tiny else (WAN21_1_3B, 1560)
    chunk_frames = 3
    chunk = chunk_frames * tpf
    head_cfg = HeadConfig(num_layers=cfg.num_layers, dim=cfg.dim, num_heads=cfg.num_heads, hidden=args.hidden,
                          rescore=True)
    rows = [("pafu (head + re-scorer)", PaFuSalience(SalienceHead(head_cfg).to(device)), 0.25, "true"),
            ("fifo (eviction only)", make_policy("fifo"), 0.25, "true"),
            ("participative, newest frame", make_policy("participative"), 1.0, "true"),
            ("participative, every 2nd query", make_policy("participative", options=PolicyOptions(query_stride=2)),
             1.0, "true"),
            ("deep_forcing, newest frame", make_policy("deep_forcing"), 1.0, "realigned"),
            ("deep_forcing, every 2nd query", make_policy("deep_forcing", options=PolicyOptions(query_stride=2)),
             1.0, "realigned")]
    a = torch.randn(chunk, cfg.dim, device=device, dtype=dtype)
    w = torch.randn(cfg.ffn_dim, cfg.dim, device=device, dtype=dtype)
    rate = 2 * chunk * cfg.dim * cfg.ffn_dim / timed(lambda: a @ w.T, device, args.repeats)   # FLOP/s, chunk-like
    print(f"{'tiny 4-layer dim-256' if args.tiny else 'Wan 2.1 1.3B, 480x832'}, 3-frame chunks ({chunk} tokens), "
          f"{args.dtype} on {args.device}; a chunk-like matmul runs at {rate / 1e9:.1f} GFLOP/s here")
    print("| policy | budget (tokens/layer) | FLOPs per chunk | % of the chunk's FLOPs | time per chunk here | "
          "% of the chunk's time here |")
    print("|---|---|---|---|---|---|")
    for label, policy, fraction, positions in rows:
        budget = CacheBudget(fraction, unit="fraction")
        cache, one_chunk = policy_chunk(cfg, policy, budget, tpf, chunk_frames, device, dtype, positions)
        for _ in range(-(-cache.budget_tokens // chunk) + 1):           # fill the cache up to its budget
            one_chunk()
        seconds = timed(one_chunk, device, args.repeats)
        live = cache.budget_tokens + chunk
        if isinstance(policy, PaFuSalience):
            work = head_flops(head_cfg, chunk, live)
        elif policy.query_frames:
            queries = -(-min(policy.query_frames * tpf, chunk) // policy.query_stride)
            work = participative_flops(cfg, queries, live)
        else:
            work = 0.0
        total = chunk_flops(cfg, chunk, cache.budget_tokens)
        print(f"| {label} | {cache.budget_tokens} | {work / 1e9:.1f} GFLOP | {100 * work / total:.3f}% | "
              f"{1e3 * seconds:.1f} ms | {100 * seconds / (total / rate):.3f}% |")
        cache.release()
    # the re-alignment alone: rotate the kept keys' temporal band in place once per chunk, against roping them at read
    cache, one_chunk = policy_chunk(cfg, make_policy("sink_window"), CacheBudget(1.0, unit="fraction", sink_frames=10),
                                    tpf, chunk_frames, device, dtype, "realigned")
    for _ in range(-(-cache.budget_tokens // chunk) + 1):
        one_chunk()
    with_rotation = timed(one_chunk, device, args.repeats)
    cache.release()
    cache, one_chunk = policy_chunk(cfg, make_policy("sink_window"), CacheBudget(1.0, unit="fraction", sink_frames=10),
                                    tpf, chunk_frames, device, dtype, "true")
    for _ in range(-(-cache.budget_tokens // chunk) + 1):
        one_chunk()
    without = timed(one_chunk, device, args.repeats)
    live = cache.budget_tokens
    cache.release()
    element = torch.empty((), dtype=dtype).element_size()
    band = 2 * (rope_axes(cfg.head_dim)[0] // 2)
    in_place = 2 * live * cfg.num_layers * cfg.num_heads * band * element                  # read + write, once
    at_read = 5 * 2 * live * cfg.num_layers * cfg.num_heads * cfg.head_dim * element       # a roped copy per pass
    print(f"re-alignment (sink_window, 21-frame window, 10 sinks): {1e3 * (with_rotation - without):.1f} ms per chunk "
          f"here for the in-place rotation of the kept keys' temporal band ({in_place / 2**30:.2f} GiB moved once per "
          f"chunk); roping the cached keys at read instead would move {at_read / 2**30:.2f} GiB per chunk (5 passes) "
          f"and hold a roped copy of one layer's keys")


if __name__ == "__main__":
    run_cli(main)
