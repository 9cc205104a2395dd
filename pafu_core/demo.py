"""README main job: every policy on the embedded default model, one table of memory and time.

Until the trained tiny world lands, the embedded default is a randomly initialised tiny Wan.
"""

from __future__ import annotations

import argparse

import torch

from .adapter import WanChunkRunner
from .cache import CacheBudget
from .policies import make_policy
from .sampler import SamplerConfig, sample_video
from .wan import WanDiT, init_weights_, tiny_config


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=63, help="latent frames to generate")
    p.add_argument("--budget", type=float, default=0.25, help="fraction of the 21-frame window")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    runner = WanChunkRunner(init_weights_(WanDiT(tiny_config(dim=128, num_layers=2)), seed=0).eval())
    context = torch.randn(1, 16, 4096, generator=torch.Generator().manual_seed(0))
    print(f"{'policy':>15} {'tokens/layer':>12} {'cache MiB':>9} {'chunk ms':>9} {'policy %':>8}")
    for name in ("keep_all", "fifo", "sink_window", "attention_mass", "key_norm", "random"):
        budget = None if name == "keep_all" else CacheBudget(
            args.budget, unit="fraction", sink_frames=1 if name == "sink_window" else 0)
        res = sample_video(runner, context, num_frames=args.frames, height=16, width=16,
                           policy=make_policy(name), budget=budget, config=SamplerConfig())
        rep = res.report
        share = 100 * sum(c.policy_ms for c in rep.chunks) / sum(c.chunk_ms for c in rep.chunks)
        print(f"{name:>15} {rep.chunks[-1].tokens_per_layer:>12} {rep.peak_cache_bytes / 2**20:>9.2f} "
              f"{rep.mean_chunk_ms:>9.1f} {share:>8.2f}")


if __name__ == "__main__":
    main()
