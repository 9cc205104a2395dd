"""Chunked generation with a never-evicting cache equals one block-causal full-sequence forward."""

import pytest
import torch

from pafu_core.budget import CacheBudget
from pafu_core.cache import CacheShape, open_cache
from pafu_core.policies import make_policy
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig

H = W = 8   # latent size -> 16 tokens per frame


def block_causal_mask(frames: int, chunk: int, tokens_per_frame: int) -> torch.Tensor:
    block = torch.arange(frames).repeat_interleave(tokens_per_frame) // chunk
    return block[None, :] <= block[:, None]


def test_chunk_forward_equals_block_causal_full_forward(runner, context):
    chunk, chunks = 2, 4
    gen = torch.Generator().manual_seed(0)
    cache, _ = open_cache(CacheShape.of(runner), make_policy("keep_all"), None, batch=1, tokens_per_frame=16,
                          chunk_frames=chunk, total_frames=chunk * chunks, device="cpu")
    cache.cross_kv = runner.cross_kv(runner.embed_text(context))
    clean = []
    with torch.no_grad():
        for c in range(chunks):
            noisy = torch.randn(1, 16, chunk, H, W, generator=gen)
            t = torch.tensor([[700.0 - 100 * c, 650.0 - 100 * c]])   # its own per-frame timestep
            got = runner.forward_chunk(noisy, t, c * chunk, cache)
            seq = torch.cat(clean + [noisy], dim=2)
            t_full = torch.cat([torch.zeros(1, c * chunk), t], dim=1)   # context timestep 0
            mask = block_causal_mask((c + 1) * chunk, chunk, 16)
            ref = runner.forward_full(seq, t_full, context, attn_mask=mask)[:, :, c * chunk:]
            assert torch.allclose(got, ref, atol=2e-5, rtol=1e-4), (c, (got - ref).abs().max())
            x0 = torch.randn(1, 16, chunk, H, W, generator=gen)
            runner.forward_chunk(x0, torch.zeros(1, chunk), c * chunk, cache, write=True)
            clean.append(x0)
    assert cache.length == chunks * chunk * 16


def reference_sampler(runner, context, noise, cfg: SamplerConfig):
    """The same Self-Forcing loop with no cache at all: every pass re-runs the whole prefix."""
    gen = torch.Generator().manual_seed(cfg.seed)   # given noise: only re-noising draws from it
    frames, chunk = noise.shape[2], cfg.chunk_frames
    out = []
    for f0 in range(0, frames, chunk):
        x = noise[:, :, f0:f0 + chunk]
        for step, sigma in enumerate(cfg.sigmas):
            seq = torch.cat(out + [x], dim=2)
            t = torch.cat([torch.full((1, f0), cfg.context_timestep), torch.full((1, x.shape[2]), sigma * 1000)], 1)
            mask = block_causal_mask(seq.shape[2], chunk, 16)
            flow = runner.forward_full(seq, t, context, attn_mask=mask)[:, :, f0:]
            x0 = x - sigma * flow
            if step + 1 < len(cfg.sigmas):
                nxt = cfg.sigmas[step + 1]
                x = (1 - nxt) * x0 + nxt * torch.randn(x0.shape, generator=gen)
        out.append(x0)
    return torch.cat(out, dim=2)


def test_sampler_equals_cache_free_reference(runner, context):
    cfg = SamplerConfig(chunk_frames=3, seed=11)
    noise = torch.randn(1, 16, 9, H, W, generator=torch.Generator().manual_seed(cfg.seed))
    res = sample_video(runner, context, num_frames=9, height=H, width=W,
                       policy=make_policy("fifo"), budget=CacheBudget(9), config=cfg, noise=noise)
    with torch.no_grad():
        ref = reference_sampler(runner, context, noise, cfg)
    assert torch.allclose(res.latents, ref, atol=1e-4, rtol=1e-4), (res.latents - ref).abs().max()
    assert all(c.evicted == 0 for c in res.report.chunks)


def test_sampler_is_seeded_and_deterministic(runner, context):
    kw = dict(num_frames=6, height=H, width=W, policy=make_policy("fifo"), budget=CacheBudget(3))
    a = sample_video(runner, context, config=SamplerConfig(seed=5), **kw).latents
    b = sample_video(runner, context, config=SamplerConfig(seed=5), **kw).latents
    c = sample_video(runner, context, config=SamplerConfig(seed=6), **kw).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_watching_a_video_writes_it_into_the_cache(runner, context):
    """Watching the model's own earlier rollout reproduces it exactly (the cache then holds what it held);
    watching another video changes every chunk after the first, not the first."""
    kw = dict(num_frames=9, height=H, width=W, policy=make_policy("keep_all"), budget=None,
              config=SamplerConfig(seed=5))
    own = sample_video(runner, context, **kw).latents
    assert torch.equal(sample_video(runner, context, observed=own, **kw).latents, own)
    other = torch.randn(own.shape, generator=torch.Generator().manual_seed(1))
    watched = sample_video(runner, context, observed=other, **kw).latents
    assert torch.equal(watched[:, :, :3], own[:, :, :3])
    assert not torch.allclose(watched[:, :, 3:], own[:, :, 3:])
    with pytest.raises(ValueError, match="observed latents must have the noise's shape"):
        sample_video(runner, context, observed=other[:, :, :6], **kw)


def test_budgeted_rollout_diverges_from_keep_all_only_after_eviction(runner, context):
    kw = dict(num_frames=9, height=H, width=W, config=SamplerConfig(seed=2))
    full = sample_video(runner, context, policy=make_policy("keep_all"), budget=None, **kw).latents
    fifo = sample_video(runner, context, policy=make_policy("fifo"), budget=CacheBudget(3), **kw).latents
    # chunks 0 and 1 see the same context (nothing evicted before chunk 1 is generated)
    assert torch.allclose(full[:, :, :6], fifo[:, :, :6], atol=1e-5)
    assert not torch.allclose(full[:, :, 6:], fifo[:, :, 6:], atol=1e-3)


def test_budgeted_rollout_equals_full_forward_masked_to_the_kept_tokens(runner, context):
    """After evictions, every chunk attended to exactly what the cache kept: a FIFO rollout (with sink)
    equals one full forward whose mask gives every chunk the tokens kept when it was generated."""
    chunk, frames, tpf = 2, 10, 16
    cfg = SamplerConfig(chunk_frames=chunk, timesteps=(1000.0,), seed=3)
    kept_at = {}          # chunk -> global token ids kept in layer 0, batch 0 when it was generated

    def record(stats, x0):
        kept_at[stats.chunk + 1] = set(sample.cache.token_index[0, 0, :sample.cache.length].tolist())

    import pafu_core.rollout as sampler_mod
    real_open = sampler_mod.open_cache

    class sample:            # captures the cache the sampler builds
        cache = None

    def spy(*a, **kw):
        sample.cache, report = real_open(*a, **kw)
        return sample.cache, report

    sampler_mod.open_cache = spy
    try:
        res = sample_video(runner, context, num_frames=frames, height=H, width=W, policy=make_policy("sink_window"),
                           budget=CacheBudget(5, sink_frames=1), config=cfg, chunk_callback=record)
    finally:
        sampler_mod.open_cache = real_open
    kept_at[0] = set()
    assert any(c.evicted for c in res.report.chunks)
    noise = torch.randn(1, 16, frames, H, W, generator=torch.Generator().manual_seed(cfg.seed))
    clean = res.latents
    n = frames * tpf
    # rows/keys: [clean tokens | noisy tokens]; a clean chunk is the cache-writing pass, a noisy one the
    # denoising pass; both see the tokens kept before that chunk, and their own chunk
    mask = torch.zeros(2 * n, 2 * n, dtype=torch.bool)
    for c in range(frames // chunk):
        rows = slice(c * chunk * tpf, (c + 1) * chunk * tpf)
        kept = torch.tensor(sorted(kept_at[c]), dtype=torch.long)
        for half in (0, n):
            r = slice(rows.start + half, rows.stop + half)
            mask[r, kept] = True
            mask[r, rows.start + half:rows.stop + half] = True
    seq = torch.cat([clean, noise], dim=2)
    t = torch.cat([torch.zeros(1, frames), torch.full((1, frames), 1000.0)], dim=1)
    from pafu_core.ops import rope_angles
    with torch.no_grad():
        tokens, grid = runner.patchify(seq)
        e, e0 = runner.embed_time(t)
        angles = rope_angles(runner.head_dim, torch.arange(frames), H // 2, W // 2)
        freqs = (torch.cat([torch.cos(angles)] * 2), torch.cat([torch.sin(angles)] * 2))
        cross = runner.cross_kv(runner.embed_text(context))
        out = runner.run_blocks(tokens, e0, 2 * frames, freqs, cross,
                                lambda i, q, k, v, h, k_raw: runner.ops.attention(q, k, v, mask))
        flow = runner.unpatchify(runner.final_head(out[:, n:], e[:, frames:], frames), (frames, H // 2, W // 2))
    assert torch.allclose(clean, noise - flow, atol=1e-4), (clean - (noise - flow)).abs().max()
