"""Time and peak memory of tiled SSE targets for one layer of a long clip (prints numbers only).

Default: Self-Forcing's 21-frame 480p clip, 32760 tokens, Wan 1.3B heads (12 x 128), 3-frame
blocks. The naive version would materialise P = 12 x 32760^2 fp32 = 51.5 GB; the tiled one holds
one query tile of logits at a time (``--tile-gb``).

    python benchmarks/bench_sse.py                 # CPU: about a minute per layer on 2 cores
    python benchmarks/bench_sse.py --device cuda
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pafu_core.attention import query_tile_size  # noqa: E402
from pafu_core.cli import Parser, UserError, positive_float, positive_int, run_cli, torch_device, torch_dtype  # noqa: E402,E501
from pafu_core.distill.targets import sse_region_scores, token_blocks  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    p = Parser(prog="benchmarks/bench_sse.py", description=__doc__)
    p.add_argument("--frames", type=positive_int, default=21)
    p.add_argument("--tokens-per-frame", type=positive_int, default=1560)
    p.add_argument("--heads", type=positive_int, default=12)
    p.add_argument("--head-dim", type=positive_int, default=128)
    p.add_argument("--block-frames", type=positive_int, default=3)
    p.add_argument("--tile-gb", type=positive_float, default=1.0, help="most memory one query tile of logits may take")
    p.add_argument("--device", type=torch_device, default="cpu")
    p.add_argument("--dtype", type=torch_dtype, default="bfloat16")
    args = p.parse_args(argv)
    if args.block_frames > args.frames:
        raise UserError(f"--block-frames {args.block_frames} is more than --frames {args.frames}")
    torch.set_grad_enabled(False)
    n = args.frames * args.tokens_per_frame
    dtype = getattr(torch, args.dtype)
    q = torch.randn(1, n, args.heads, args.head_dim, device=args.device).to(dtype)
    k = torch.randn(1, n, args.heads, args.head_dim, device=args.device).to(dtype)
    blocks = token_blocks(args.frames, args.tokens_per_frame, args.block_frames, device=args.device)
    tile = query_tile_size(n, 1, args.heads, args.tile_gb * 1e9)
    inputs_mib = 2 * q.numel() * q.element_size() / 2**20
    base = rss_mib()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    scores = sse_region_scores(q, k, blocks, max_tile_bytes=args.tile_gb * 1e9)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    naive_gb = args.heads * n * n * 4 / 1e9
    print(f"tokens {n} ({args.frames} frames x {args.tokens_per_frame}), heads {args.heads} x {args.head_dim}, "
          f"{args.dtype} on {args.device}, query tile {tile} rows")
    print(f"tiled SSE, one layer: {secs:.1f} s; inputs {inputs_mib:.0f} MiB; naive P would need {naive_gb:.1f} GB")
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20 - base_cuda
        print(f"peak CUDA memory above inputs: {peak:.0f} MiB")
    else:
        print(f"peak RSS growth during SSE: {rss_mib() - base:.0f} MiB (process peak {rss_mib():.0f} MiB)")
    print(f"region score means (past, diag, future): {[round(float(v), 6) for v in scores.mean(dim=(1, 2))]}")


if __name__ == "__main__":
    run_cli(main)
