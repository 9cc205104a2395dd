"""Chunked generation with a never-evicting cache equals one block-causal full-sequence forward."""

import torch

from pafu_core.cache import CacheBudget
from pafu_core.policies import make_policy
from pafu_core.sampler import SamplerConfig, build_cache, sample_video

H = W = 8   # latent size -> 16 tokens per frame


def block_causal_mask(frames: int, chunk: int, tokens_per_frame: int) -> torch.Tensor:
    block = torch.arange(frames).repeat_interleave(tokens_per_frame) // chunk
    return block[None, :] <= block[:, None]


def test_chunk_forward_equals_block_causal_full_forward(runner, context):
    chunk, chunks = 2, 4
    gen = torch.Generator().manual_seed(0)
    cache = build_cache(runner, make_policy("keep_all"), None, batch=1, tokens_per_frame=16,
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


def test_budgeted_rollout_diverges_from_keep_all_only_after_eviction(runner, context):
    kw = dict(num_frames=9, height=H, width=W, config=SamplerConfig(seed=2))
    full = sample_video(runner, context, policy=make_policy("keep_all"), budget=None, **kw).latents
    fifo = sample_video(runner, context, policy=make_policy("fifo"), budget=CacheBudget(3), **kw).latents
    # chunks 0 and 1 see the same context (nothing evicted before chunk 1 is generated)
    assert torch.allclose(full[:, :, :6], fifo[:, :, :6], atol=1e-5)
    assert not torch.allclose(full[:, :, 6:], fifo[:, :, 6:], atol=1e-3)
