"""Spatiotemporal-balanced Salience Estimation (SSE): the bidirectional teacher's targets.

A bidirectional model sees the whole clean clip. For every key token j and every layer, its
attention probabilities are split by the block (one chunk) of the query relative to the key's:
  * ``past``   - queries in earlier blocks (earlier context that looks ahead at j),
  * ``diag``   - queries in j's own block (mostly intra-frame use),
  * ``future`` - queries in later blocks (j's use by what comes after: what a cache must keep).
Each region's score is mean over heads of the max over its queries. Plain attention is dominated
by ``diag``; normalising each region separately before combining keeps long-range use visible.

Computed tile by tile over queries (whole key rows, fp32 logits), so the L x L map never exists:
memory is O(L x tile). A region with no queries (no earlier / later block) scores 0 and is left
out of that region's normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import query_tile_size

REGIONS = ("past", "diag", "future")


@dataclass(frozen=True)
class SSEConfig:
    block_frames: int = 3                           # L_B: one chunk of latent frames
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)   # (past, diag, future)
    normalise: str = "max"                          # "max" or "rank", per region over the clip
    layer_mode: str = "per_layer"                   # "per_layer" or "mean" over ``layers``
    layers: tuple[int, ...] | None = None           # layers averaged in "mean" mode (None = all)
    timesteps: tuple[float, ...] = (0.0,)           # teacher input noise levels, averaged
    max_tile_bytes: float = 1e9
    #: future region = query blocks at least this many blocks after the key's (1: every later block,
    #: as in the paper; 2 leaves out the next block, which always sees the key since the newest
    #: chunk is never evicted, so only uses that an eviction could break are counted)
    future_min_gap: int = 1

    def __post_init__(self):
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")
        if len(self.weights) != 3 or any(w < 0 for w in self.weights) or not sum(self.weights) > 0:
            raise ValueError(f"weights must be three non-negative numbers (past, diag, future), got {self.weights}")
        if self.normalise not in ("max", "rank"):
            raise ValueError(f"normalise must be 'max' or 'rank', got {self.normalise!r}")
        if self.layer_mode not in ("per_layer", "mean"):
            raise ValueError(f"layer_mode must be 'per_layer' or 'mean', got {self.layer_mode!r}")
        if not self.timesteps or any(not 0 <= t < 1000 for t in self.timesteps):
            raise ValueError(f"teacher timesteps must lie in [0, 1000), got {self.timesteps}")
        if self.future_min_gap < 1:
            raise ValueError(f"future_min_gap must be >= 1, got {self.future_min_gap}")

    def to_dict(self) -> dict:
        return {"block_frames": self.block_frames, "weights": list(self.weights),
                "normalise": self.normalise, "layer_mode": self.layer_mode,
                "layers": None if self.layers is None else list(self.layers),
                "timesteps": list(self.timesteps), "future_min_gap": self.future_min_gap}


def token_blocks(frames: int, tokens_per_frame: int, block_frames: int, device=None) -> torch.Tensor:
    """Block index of every token of a clip, [frames * tokens_per_frame]."""
    return (torch.arange(frames, device=device) // block_frames).repeat_interleave(tokens_per_frame)


def region_presence(blocks: torch.Tensor, future_min_gap: int = 1) -> torch.Tensor:
    """[3, N] bool: whether key j has any query in the past / diag / future region."""
    last = int(blocks.max())
    return torch.stack([blocks > 0, torch.ones_like(blocks, dtype=torch.bool), blocks <= last - future_min_gap])


def sse_region_scores(q: torch.Tensor, k: torch.Tensor, blocks: torch.Tensor,
                      max_tile_bytes: float = 1e9, tile: int | None = None,
                      future_min_gap: int = 1) -> torch.Tensor:
    """Region scores of one layer: q, k [B, N, H, D] (roped) -> [3, B, N] fp32.

    s_R[b, j] = mean_h max_{i in R(j)} softmax(q_i k^T / sqrt(D))[b, h, j].
    Query tiles never straddle a block, so a tile's region is a function of the key alone.
    """
    b, n, h, d = q.shape
    tile = tile or query_tile_size(n, b, h, max_tile_bytes)
    kt = k.transpose(1, 2).to(torch.float32).transpose(-1, -2)      # [B, H, D, N]
    acc = torch.zeros(3, b, h, n, dtype=torch.float32, device=q.device)
    scale = d ** -0.5
    block_ids = torch.unique_consecutive(blocks)
    starts = torch.searchsorted(blocks, block_ids).tolist() + [n]
    for qb, s0, s1 in zip(block_ids.tolist(), starts[:-1], starts[1:]):
        # region of each key for queries of block qb: 0 past (kb > qb), 1 diag, 2 future
        # (kb <= qb - gap); keys in the blocks just before qb (closer than the gap) count nowhere
        region = (torch.sign(qb - blocks) + 1).to(torch.long)
        region[(blocks < qb) & (blocks > qb - future_min_gap)] = 3
        onehot = region[None, :] == torch.arange(3, device=q.device)[:, None]    # [3, N]
        for t0 in range(s0, s1, tile):
            qt = q[:, t0:min(s1, t0 + tile)].transpose(1, 2).to(torch.float32)  # [B, H, T, D]
            probs = qt @ kt                                                    # [B, H, T, N]
            probs.mul_(scale)                      # softmax in place: one tile buffer, not three
            probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()
            probs.div_(probs.sum(dim=-1, keepdim=True))
            col_max = probs.amax(dim=2)                                         # [B, H, N]
            del probs
            acc = torch.maximum(acc, torch.where(onehot[:, None, None, :], col_max, 0.0))
    return acc.mean(dim=2)


def normalise_regions(regions: torch.Tensor, present: torch.Tensor, mode: str) -> torch.Tensor:
    """regions [..., 3, B, N]; each region scaled to [0, 1] over the tokens where it exists."""
    mask = present[:, None, :].expand(regions.shape[-3:])
    if mode == "max":
        peak = regions.masked_fill(~mask, 0).amax(dim=-1, keepdim=True).clamp_min(1e-12)
        out = regions / peak
    else:
        filled = regions.masked_fill(~mask, float("-inf"))
        ranks = filled.argsort(dim=-1).argsort(dim=-1).to(torch.float32)   # absent ones rank first
        absent = (~mask).sum(dim=-1, keepdim=True)
        count = mask.sum(dim=-1, keepdim=True)
        out = (ranks - absent) / (count - 1).clamp_min(1)
    return out.masked_fill(~mask, 0.0)


def combine_regions(regions: torch.Tensor, present: torch.Tensor, cfg: SSEConfig) -> torch.Tensor:
    """[..., 3, B, N] region scores -> [..., B, N] one salience target per token."""
    normed = normalise_regions(regions, present, cfg.normalise)
    w = torch.tensor(cfg.weights, dtype=normed.dtype, device=normed.device).view(3, 1, 1)
    return (normed * w).sum(dim=-3) / sum(cfg.weights)


@dataclass
class SSETargets:
    regions: torch.Tensor     # [layers, 3, B, N] raw region scores
    present: torch.Tensor     # [3, N]
    targets: torch.Tensor     # [layers, B, N] combined (same row repeated in "mean" mode)


def sse_targets(teacher, latents: torch.Tensor, context: torch.Tensor, cfg: SSEConfig = SSEConfig(),
                frame_offset: int = 0) -> SSETargets:
    """Run the bidirectional teacher (a ``WanChunkRunner``) on a clean clip and build SSE targets.

    latents [B, C, F, H, W] in the model's space; the clip is shown at ``cfg.timesteps`` (noised
    with a fixed generator when t > 0) and region scores are averaged over them.
    """
    b, _, f, hgt, wid = latents.shape
    tpf = teacher.tokens_per_frame(hgt, wid)
    blocks = token_blocks(f, tpf, cfg.block_frames, device=latents.device)
    present = region_presence(blocks, cfg.future_min_gap)
    regions = torch.zeros(teacher.num_layers, 3, b, f * tpf, device=latents.device)
    gen = torch.Generator().manual_seed(0)

    def observe(layer, q, k):
        regions[layer] += sse_region_scores(q, k, blocks, cfg.max_tile_bytes, future_min_gap=cfg.future_min_gap)

    with torch.inference_mode():
        for t in cfg.timesteps:
            s = t / 1000.0
            x = latents if s == 0 else (1 - s) * latents + s * torch.randn(latents.shape, generator=gen).to(latents)
            teacher.forward_full(x, torch.full((b,), float(t), device=latents.device), context,
                                 frame_offset=frame_offset, observer=observe)
    regions /= len(cfg.timesteps)
    targets = combine_regions(regions, present, cfg)
    if cfg.layer_mode == "mean":
        chosen = list(cfg.layers) if cfg.layers is not None else list(range(teacher.num_layers))
        targets = targets[chosen].mean(dim=0, keepdim=True).expand_as(targets).clone()
    return SSETargets(regions=regions, present=present, targets=targets)
