"""Per-chunk statistics of a rollout and their summaries (what the cache report shows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch


@dataclass
class ChunkStats:
    chunk: int
    frame_start: int
    frames: int
    tokens_per_layer: int          # committed tokens in every layer after this chunk
    kv_bytes: int                  # self-attention K/V bytes in committed slots
    cache_bytes: int               # every byte the cache owns (buffers + metadata + cross K/V)
    chunk_ms: float                # all denoising passes + the cache-writing pass
    policy_ms: float               # scoring + eviction inside the writing pass
    evicted: int                   # tokens evicted per layer at this chunk
    rope_frame: int = -1           # the temporal position the chunk was roped at (its first frame unless realigned)


@dataclass
class CacheReport:
    """What one rollout did with its cache; ``kept_frames`` [chunks, layers, frames] on the CPU."""

    policy: str
    budget_tokens: int
    tokens_per_frame: int
    num_layers: int
    total_frames: int
    grid_hw: tuple[int, int] = (0, 0)          # tokens per frame as (rows, columns)
    sink_frames: int = 0                       # first frames the cache protects (sinks, an I2V start)
    positions: str = "true"                    # the kept keys' temporal positions: true, or realigned
    chunks: list[ChunkStats] = field(default_factory=list)
    kept_frames: torch.Tensor | None = None
    final_kept: torch.Tensor | None = None     # [layers, total tokens] bool at the end of the rollout

    @property
    def peak_cache_bytes(self) -> int:
        return max((c.cache_bytes for c in self.chunks), default=0)

    @property
    def mean_chunk_ms(self) -> float:
        return sum(c.chunk_ms for c in self.chunks) / max(1, len(self.chunks))

    def summary(self) -> str:
        last = self.chunks[-1] if self.chunks else None
        if last is None:
            return f"{self.policy}: no chunks generated"
        budget_frames = self.budget_tokens / self.tokens_per_frame
        policy_share = sum(c.policy_ms for c in self.chunks) / max(1e-9, sum(c.chunk_ms for c in self.chunks))
        sinks = ""
        if self.sink_frames and self.final_kept is not None:
            first = self.final_kept[:, :self.sink_frames * self.tokens_per_frame]
            sinks = (f"; first {self.sink_frames} frame(s) {'all held' if bool(first.all()) else 'NOT all held'} "
                     "at the end (protected)")
        realigned = ""
        if self.positions == "realigned":
            realigned = f"; positions realigned (the last chunk roped at frame {last.rope_frame} of {last.frame_start})"
        return (f"policy {self.policy}: {len(self.chunks)} chunks, {self.total_frames} latent frames; "
                f"budget {self.budget_tokens} tokens/layer ({budget_frames:.2f} frames); "
                f"kept {last.tokens_per_layer} tokens/layer; K/V held {last.kv_bytes / 2**20:.2f} MiB, cache owns "
                f"{last.cache_bytes / 2**20:.2f} MiB (peak {self.peak_cache_bytes / 2**20:.2f} MiB); mean chunk "
                f"{self.mean_chunk_ms:.1f} ms, policy share {100 * policy_share:.2f}%{sinks}{realigned}")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("kept_frames", "final_kept")}
        d["chunks"] = [asdict(c) for c in self.chunks]
        if self.kept_frames is not None:
            d["kept_frames"] = self.kept_frames.tolist()
        return d
