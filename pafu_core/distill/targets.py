"""Salience targets: how much each token of a clip is attended to, by which queries, and when.

The paper's Spatiotemporal-balanced Salience Estimation (SSE) splits a model's attention
probabilities by the block (one chunk) of the query relative to the key's:
  * ``past``   - queries in earlier blocks (earlier context that looks ahead at j),
  * ``diag``   - queries in j's own block (mostly intra-frame use),
  * ``future`` - queries in later blocks (j's use by what comes after: what a cache must keep).
Each region's score is mean over heads of the max over its queries; regions are normalised
separately before they are combined, so long-range use is not drowned by the diagonal.

Whose attention (``SSEConfig.source``):
  * ``teacher_clean`` - the bidirectional teacher over the clean clip (the paper's setting),
  * ``teacher_noisy`` - the teacher in the sampling situation: each block noisy, at the sampler's
    noise levels, attending to the clean rest of the clip and to itself,
  * ``student``       - the causal student in the sampling situation, exactly as at inference with
    a keep-all cache: each noisy block attends to the clean blocks before it and to itself.

Everything is kept per query block (``use[j, b]`` = max over the queries of block b), so targets can
also be taken *at a commit*: after block t enters the cache, what matters about token j is its use
by blocks after t (``SalienceTargets.at_commit``) - the target of a re-scoring head. Attention maps
are never materialised: probabilities are computed tile by tile over queries with whole key rows
(fp32 logits), and the noisy passes run block by block against a cache, as at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from ..attention import query_tile_size
from ..schedule import TIMESTEP_SCALE

REGIONS = ("past", "diag", "future")
SOURCES = ("teacher_clean", "teacher_noisy", "student")


@dataclass(frozen=True)
class SSEConfig:
    block_frames: int = 3                           # L_B: one chunk of latent frames
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)   # (past, diag, future)
    normalise: str = "max"                          # "max" or "rank", per region over the tokens
    layer_mode: str = "per_layer"                   # "per_layer" or "mean" over ``layers``
    layers: tuple[int, ...] | None = None           # layers averaged in "mean" mode (None = all)
    source: str = "teacher_clean"
    #: teacher_clean: the clip's input timesteps (averaged); noisy sources: the query block's noise
    #: levels, as timesteps in (0, 1000] (the sampler's warped list), averaged
    timesteps: tuple[float, ...] = (0.0,)
    context_timestep: float = 0.0                   # noisy sources: timestep of the clean context
    max_tile_bytes: float = 1e9
    #: future region = query blocks at least this many blocks after the key's (1: every later block,
    #: as in the paper; 2 leaves out the next block, which always sees the key since the newest
    #: chunk is never evicted, so only uses that an eviction could break are counted)
    future_min_gap: int = 1
    #: re-scoring targets only (``at_commit``): a token's future use counts only beyond the use of the
    #: newer tokens at its place (same patch position) already in the cache, so an older view that a
    #: newer one has replaced stops drawing credit from attention the newer view also receives
    supersede: bool = False
    #: the share of the newer views' use taken off an older view (1: all of it; less keeps some credit for
    #: older views, which a budget with room for more than the latest view at a place can use)
    supersede_share: float = 1.0
    #: noisy sources: every query_stride-th query of a block scores the keys (a cheaper max over queries)
    query_stride: int = 1

    def __post_init__(self):
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")
        if len(self.weights) != 3 or any(not w >= 0 for w in self.weights) or not sum(self.weights) > 0:
            raise ValueError(f"weights must be three non-negative numbers (past, diag, future), got {self.weights}")
        if self.normalise not in ("max", "rank"):
            raise ValueError(f"normalise must be 'max' or 'rank', got {self.normalise!r}")
        if self.layer_mode not in ("per_layer", "mean"):
            raise ValueError(f"layer_mode must be 'per_layer' or 'mean', got {self.layer_mode!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        noisy = self.source != "teacher_clean"
        ok = (lambda t: 0 < t <= 1000) if noisy else (lambda t: 0 <= t < 1000)
        if not self.timesteps or not all(ok(t) for t in self.timesteps):
            raise ValueError(f"timesteps for source {self.source} must lie in "
                             f"{'(0, 1000]' if noisy else '[0, 1000)'}, got {self.timesteps}")
        if self.future_min_gap < 1:
            raise ValueError(f"future_min_gap must be >= 1, got {self.future_min_gap}")
        if self.query_stride < 1:
            raise ValueError(f"query_stride must be >= 1, got {self.query_stride}")
        if not 0 < self.supersede_share <= 1:
            raise ValueError(f"supersede_share must lie in (0, 1], got {self.supersede_share}")

    def to_dict(self) -> dict:
        return {"block_frames": self.block_frames, "weights": list(self.weights),
                "normalise": self.normalise, "layer_mode": self.layer_mode,
                "layers": None if self.layers is None else list(self.layers), "source": self.source,
                "timesteps": list(self.timesteps), "context_timestep": self.context_timestep,
                "future_min_gap": self.future_min_gap, "supersede": self.supersede,
                "supersede_share": self.supersede_share, "query_stride": self.query_stride}


def token_blocks(frames: int, tokens_per_frame: int, block_frames: int, device=None) -> torch.Tensor:
    """Block index of every token of a clip, [frames * tokens_per_frame]."""
    return (torch.arange(frames, device=device) // block_frames).repeat_interleave(tokens_per_frame)


def region_presence(blocks: torch.Tensor, future_min_gap: int = 1, causal: bool = False) -> torch.Tensor:
    """[3, N] bool: whether key j has any query in the past / diag / future region (a causal model's
    earlier blocks never see later keys, so its past region is empty)."""
    last = int(blocks.max())
    past = torch.zeros_like(blocks, dtype=torch.bool) if causal else blocks > 0
    return torch.stack([past, torch.ones_like(blocks, dtype=torch.bool), blocks <= last - future_min_gap])


def key_use(q: torch.Tensor, k: torch.Tensor, max_tile_bytes: float = 1e9, tile: int | None = None) -> torch.Tensor:
    """q [B, S, H, D], k [B, N, H, D] -> [B, H, N] fp32: max over the queries of softmax(q k^T / sqrt D).

    Tiled over queries (a row's softmax needs the whole row): one [B, H, tile, N] fp32 buffer, the
    softmax done in place."""
    b, s, h, d = q.shape
    tile = tile or query_tile_size(k.shape[1], b, h, max_tile_bytes)
    kt = rearrange(k.to(torch.float32), "b n h d -> b h d n")
    best = torch.zeros(b, h, k.shape[1], dtype=torch.float32, device=q.device)
    for t0 in range(0, s, tile):
        probs = rearrange(q[:, t0:t0 + tile].to(torch.float32), "b t h d -> b h t d") @ kt   # [B, H, T, N]
        probs.mul_(d ** -0.5)
        probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()
        probs.div_(probs.sum(dim=-1, keepdim=True))
        torch.maximum(best, probs.amax(dim=2), out=best)
        del probs
    return best


def use_from_full_attention(q: torch.Tensor, k: torch.Tensor, blocks: torch.Tensor,
                            max_tile_bytes: float = 1e9, tile: int | None = None) -> torch.Tensor:
    """One layer of a full-attention forward: [B, H, N, blocks] max probability per query block."""
    b, n, h, _ = q.shape
    starts = torch.searchsorted(blocks, torch.arange(int(blocks.max()) + 2, device=blocks.device)).tolist()
    return torch.stack([key_use(q[:, s0:s1], k, max_tile_bytes, tile)
                        for s0, s1 in zip(starts[:-1], starts[1:])], dim=-1)


def sse_region_scores(q: torch.Tensor, k: torch.Tensor, blocks: torch.Tensor,
                      max_tile_bytes: float = 1e9, tile: int | None = None,
                      future_min_gap: int = 1) -> torch.Tensor:
    """Region scores of one full-attention layer: q, k [B, N, H, D] (roped) -> [3, B, N] fp32."""
    use = use_from_full_attention(q, k, blocks, max_tile_bytes, tile)
    return regions_from_use(use.unsqueeze(0), blocks, future_min_gap)[0]


def regions_from_use(use: torch.Tensor, blocks: torch.Tensor, future_min_gap: int = 1) -> torch.Tensor:
    """use [L, B, H, N, blocks] -> [L, 3, B, N]: mean over heads of the max over each region."""
    nb = use.shape[-1]
    idx = blocks.to(use.device).long().view(1, 1, 1, -1, 1)
    zero = torch.zeros_like(use[..., :1])
    prefix = torch.cat([zero, use.cummax(dim=-1).values], dim=-1)               # max over blocks < b
    suffix = torch.cat([use.flip(-1).cummax(dim=-1).values.flip(-1), zero], dim=-1)   # max over >= b
    past = prefix.gather(-1, idx.expand(*use.shape[:-1], 1))
    diag = use.gather(-1, idx.expand(*use.shape[:-1], 1))
    future = suffix.gather(-1, (idx + future_min_gap).clamp(max=nb).expand(*use.shape[:-1], 1))
    return torch.stack([past, diag, future], dim=1).squeeze(-1).mean(dim=3)


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


def superseded(use: torch.Tensor, tokens_per_frame: int, share: float = 1.0) -> torch.Tensor:
    """use [..., N] of the live tokens, frame by frame -> the use of each token beyond ``share`` of the
    highest use of the newer tokens at its place (0 when a newer view is used at least as much, share 1)."""
    per_frame = rearrange(use, "... (f p) -> ... f p", p=tokens_per_frame)
    newer = per_frame.flip(-2).cummax(dim=-2).values.flip(-2)           # max over frames >= f
    newer = torch.cat([newer[..., 1:, :], torch.zeros_like(newer[..., :1, :])], dim=-2)   # frames > f
    return rearrange((per_frame - share * newer).clamp_min(0), "... f p -> ... (f p)")


@dataclass
class SalienceTargets:
    use: torch.Tensor         # [layers, B, H, N, blocks] max attention probability per query block
    blocks: torch.Tensor      # [N] block of every token
    regions: torch.Tensor     # [layers, 3, B, N] raw region scores
    present: torch.Tensor     # [3, N]
    targets: torch.Tensor     # [layers, B, N] combined (same row repeated in "mean" mode)
    config: SSEConfig
    tokens_per_frame: int = 1

    def at_commit(self, t: int) -> torch.Tensor:
        """[layers, B, N_t] targets of the tokens of blocks < t just after block t was committed: their
        static past / diag scores and their use by blocks after t (and >= the min gap), each region
        normalised over these tokens, combined with the configured weights."""
        cfg = self.config
        n_t = int((self.blocks < t).sum())
        n_live = int((self.blocks <= t).sum()) if cfg.supersede else n_t     # block t is in the cache too
        nb = self.use.shape[-1]
        blocks = self.blocks[:n_live].to(self.use.device).long()
        first = torch.clamp(torch.maximum(blocks + cfg.future_min_gap, torch.tensor(t + 1)), max=nb)
        suffix = torch.cat([self.use[..., :n_live, :].flip(-1).cummax(dim=-1).values.flip(-1),
                            torch.zeros_like(self.use[..., :n_live, :1])], dim=-1)
        future = suffix.gather(-1, first.view(1, 1, 1, -1, 1).expand(*suffix.shape[:-1], 1)).squeeze(-1).mean(dim=2)
        if cfg.supersede:
            future = superseded(future, self.tokens_per_frame, cfg.supersede_share)[..., :n_t]
        regions = torch.cat([self.regions[:, :2, :, :n_t], future.unsqueeze(1)], dim=1)
        present = self.present[:, :n_t].clone()
        present[2] = first[:n_t] < nb
        return self._reduce_layers(combine_regions(regions, present, cfg))

    def _reduce_layers(self, targets: torch.Tensor) -> torch.Tensor:
        if self.config.layer_mode != "mean":
            return targets
        chosen = list(self.config.layers) if self.config.layers is not None else list(range(targets.shape[0]))
        return targets[chosen].mean(dim=0, keepdim=True).expand_as(targets).clone()


class _ContextWithout:
    """A read-only stand-in for the cache: one noisy block attends to a clean clip's K/V with its own
    block replaced by itself (the bidirectional teacher in the sampling situation)."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], cross_kv, start: int, end: int):
        self.kv, self.cross_kv, self.start, self.end = kv, cross_kv, start, end

    def open_chunk(self, frame_start, num_frames, write=False):
        if write:
            raise RuntimeError("the teacher's context is read-only")
        self.rope_frame = frame_start          # true positions: the chunk is roped where it lies

    def stage(self, layer, k, v):
        ck, cv = self.kv[layer]
        return (torch.cat([ck[:, :self.start], k, ck[:, self.end:]], dim=1),
                torch.cat([cv[:, :self.start], v, cv[:, self.end:]], dim=1))


def _noisy(latents: torch.Tensor, timestep: float, gen: torch.Generator) -> torch.Tensor:
    s = timestep / TIMESTEP_SCALE
    if s == 0:
        return latents
    return (1 - s) * latents + s * torch.randn(latents.shape, generator=gen).to(latents)


def attention_use(runner, latents: torch.Tensor, context: torch.Tensor, cfg: SSEConfig,
                  frame_offset: int = 0, writer=None) -> torch.Tensor:
    """[layers, B, H, N, blocks]: for every key token, the max attention probability it gets from the
    queries of each block, averaged over ``cfg.timesteps`` (see the module docstring for sources).

    ``writer`` (student source): an unbounded policy for the keep-all cache the clip is written
    into, which sees every entering token (the distillation records the head's features with it)."""
    from ..cache import CacheShape, open_cache
    from ..policies import make_policy

    b, _, f, hgt, wid = latents.shape
    tpf = runner.tokens_per_frame(hgt, wid)
    n, fb = f * tpf, cfg.block_frames
    blocks = token_blocks(f, tpf, fb, device=latents.device)
    nb = int(blocks.max()) + 1
    use = torch.zeros(runner.num_layers, b, runner.num_heads, n, nb, device=latents.device)
    gen = torch.Generator().manual_seed(0)
    steps = len(cfg.timesteps)
    with torch.inference_mode():
        if cfg.source == "teacher_clean":
            def observe(layer, q, k, v):
                use[layer] += use_from_full_attention(q, k, blocks, cfg.max_tile_bytes) / steps
            for t in cfg.timesteps:
                runner.forward_full(_noisy(latents, t, gen), torch.full((b,), float(t), device=latents.device),
                                    context, frame_offset=frame_offset, observer=observe)
            return use

        t_ctx = torch.full((b, fb), cfg.context_timestep, device=latents.device)
        clean_ctx = _noisy(latents, cfg.context_timestep, gen)
        cross = runner.cross_kv(runner.embed_text(context))

        def observer_for(block):
            def observe(layer, q, keys):
                # student: keys = the blocks before, then the block itself; teacher: every token,
                # the block's own ones noisy. Either way key i is token i.
                got = key_use(q[:, ::cfg.query_stride], keys, cfg.max_tile_bytes)
                use[layer, :, :, :got.shape[-1], block] += got / steps
            return observe

        if cfg.source == "teacher_noisy":
            kv: list = [None] * runner.num_layers

            def keep_kv(layer, q, k, v):
                kv[layer] = (k.clone(), v.clone())
            runner.forward_full(clean_ctx, torch.full((b,), cfg.context_timestep, device=latents.device), context,
                                frame_offset=frame_offset, observer=keep_kv)
            for block in range(nb):
                f0, f1 = block * fb, min(f, (block + 1) * fb)
                ctx = _ContextWithout(kv, runner.cross_frames(cross, f0, f1), f0 * tpf, f1 * tpf)
                for t in cfg.timesteps:
                    x = _noisy(latents[:, :, f0:f1], t, gen)
                    runner.forward_chunk(x, torch.full((b, f1 - f0), float(t), device=latents.device),
                                         frame_offset + f0, ctx, observer=observer_for(block))
            return use

        cache, _ = open_cache(CacheShape.of(runner), writer or make_policy("keep_all"), None, batch=b,
                              tokens_per_frame=tpf, chunk_frames=fb, total_frames=f, device=latents.device)
        try:
            for block in range(nb):
                f0, f1 = block * fb, min(f, (block + 1) * fb)
                cache.cross_kv = runner.cross_frames(cross, f0, f1)
                for t in cfg.timesteps:
                    x = _noisy(latents[:, :, f0:f1], t, gen)
                    runner.forward_chunk(x, torch.full((b, f1 - f0), float(t), device=latents.device),
                                         frame_offset + f0, cache, observer=observer_for(block))
                runner.forward_chunk(clean_ctx[:, :, f0:f1], t_ctx[:, :f1 - f0], frame_offset + f0, cache, write=True)
        finally:
            cache.release()
    return use


def sse_targets(runner, latents: torch.Tensor, context: torch.Tensor, cfg: SSEConfig = SSEConfig(),
                frame_offset: int = 0, writer=None) -> SalienceTargets:
    """Attention use of a clip (see ``attention_use``) turned into region scores and targets."""
    b, _, f, hgt, wid = latents.shape
    tpf = runner.tokens_per_frame(hgt, wid)
    blocks = token_blocks(f, tpf, cfg.block_frames, device=latents.device)
    use = attention_use(runner, latents, context, cfg, frame_offset, writer)
    regions = regions_from_use(use, blocks, cfg.future_min_gap)
    present = region_presence(blocks, cfg.future_min_gap, causal=cfg.source == "student")
    out = SalienceTargets(use=use, blocks=blocks, regions=regions, present=present, targets=None, config=cfg,
                          tokens_per_frame=tpf)
    out.targets = out._reduce_layers(combine_regions(regions, present, cfg))
    return out
