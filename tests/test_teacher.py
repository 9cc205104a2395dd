"""Salience targets against naive full-matrix references: tiled per-block use, SSE regions, targets
at a commit, and the sampling-situation sources (noisy block over clean context) computed chunk by
chunk equal one masked full forward."""

import pytest
import torch

from pafu_core.ops import rope_angles
from pafu_core.distill.targets import (SSEConfig, attention_use, combine_regions, region_presence, regions_from_use,
                               sse_region_scores, sse_targets, token_blocks, use_from_full_attention)


def probs_of(q, k, mask=None):
    logits = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / q.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def naive_regions(q, k, blocks, gap=1):
    """Materialise P [B, H, N, N] and take the three masked maxima directly."""
    p = probs_of(q, k)
    qb, kb = blocks[:, None], blocks[None, :]
    out = []
    for mask in (qb < kb, qb == kb, qb >= kb + gap):    # past, diag, future (per key column)
        out.append(p.masked_fill(~mask, 0).amax(dim=2).mean(dim=1))
    return torch.stack(out).float()


@pytest.mark.parametrize("frames,tpf,block_frames", [(6, 4, 1), (6, 4, 2), (9, 5, 3), (7, 3, 3)])
@pytest.mark.parametrize("tile", [1, 3, None])
@pytest.mark.parametrize("gap", [1, 2])
def test_tiled_sse_equals_naive(frames, tpf, block_frames, tile, gap):
    gen = torch.Generator().manual_seed(frames * 100 + tpf)
    n = frames * tpf
    q, k = torch.randn(2, n, 3, 16, generator=gen), torch.randn(2, n, 3, 16, generator=gen)
    blocks = token_blocks(frames, tpf, block_frames)
    got = sse_region_scores(q, k, blocks, tile=tile, future_min_gap=gap)
    assert torch.allclose(got, naive_regions(q, k, blocks, gap), atol=1e-6)
    use = use_from_full_attention(q, k, blocks, tile=tile)                  # [B, H, N, blocks]
    p = probs_of(q, k)
    for b in range(int(blocks.max()) + 1):
        assert torch.allclose(use[..., b], p[:, :, blocks == b].amax(dim=2).float(), atol=1e-6)


def one_layer_use(seed: int, frames: int = 8, tpf: int = 3, fb: int = 2):
    """Random queries and keys of a clip, its token blocks and one layer's per-block use."""
    gen = torch.Generator().manual_seed(seed)
    n = frames * tpf
    q, k = torch.randn(1, n, 2, 8, generator=gen), torch.randn(1, n, 2, 8, generator=gen)
    blocks = token_blocks(frames, tpf, fb)
    return q, k, blocks, use_from_full_attention(q, k, blocks).unsqueeze(0)


def test_targets_at_a_commit_are_use_by_later_blocks():
    fb = 2
    q, k, blocks, use = one_layer_use(0, fb=fb)
    cfg = SSEConfig(block_frames=fb, weights=(0.0, 0.0, 1.0), future_min_gap=2)
    from pafu_core.distill.targets import SalienceTargets
    res = SalienceTargets(use=use, blocks=blocks, regions=regions_from_use(use, blocks, 2),
                          present=region_presence(blocks, 2), targets=None, config=cfg)
    p = probs_of(q, k)
    for t in (1, 2):
        got = res.at_commit(t)
        kept = blocks < t
        first = torch.clamp(torch.maximum(blocks[kept] + 2, torch.tensor(t + 1)), max=4)
        raw = torch.stack([p[0, :, blocks >= int(f), j].amax(dim=1).mean() if f < 4 else torch.tensor(0.0)
                           for j, f in enumerate(first.tolist())]).float()
        expect = raw / raw.max()
        assert got.shape == (1, 1, int(kept.sum()))
        assert torch.allclose(got[0, 0], expect, atol=1e-5), t



@pytest.mark.parametrize("share", [1.0, 0.5])
def test_superseded_targets_credit_only_use_beyond_newer_views_of_the_place(share):
    tpf, fb = 3, 2
    q, k, blocks, use = one_layer_use(1, tpf=tpf, fb=fb)
    from pafu_core.distill.targets import SalienceTargets
    res = SalienceTargets(use=use, blocks=blocks, regions=regions_from_use(use, blocks, 1),
                          present=region_presence(blocks, 1), targets=None, tokens_per_frame=tpf,
                          config=SSEConfig(block_frames=fb, weights=(0.0, 0.0, 1.0), supersede=True,
                                           supersede_share=share))
    p = probs_of(q, k)
    for t in (1, 2):
        live = int((blocks <= t).sum())              # the committed block t is in the cache too
        raw = torch.stack([p[0, :, blocks > t, j].amax(dim=1).mean() for j in range(live)]).float()
        beyond = torch.stack([raw[j] - share * max([float(raw[i]) for i in range(j + 1, live) if i % tpf == j % tpf] + [0.0])
                              for j in range(live)]).clamp_min(0)
        n_t = int((blocks < t).sum())
        assert torch.allclose(res.at_commit(t)[0, 0], beyond[:n_t] / beyond[:n_t].max(), atol=1e-5), t

def test_absent_regions_score_zero_and_are_left_out_of_normalisation():
    blocks = token_blocks(6, 2, 2)          # three blocks
    present = region_presence(blocks)
    assert present[0].tolist() == [False] * 4 + [True] * 8       # no past queries for block 0
    assert present[2].tolist() == [True] * 8 + [False] * 4       # no future queries for the last block
    assert region_presence(blocks, 2)[2].tolist() == [True] * 4 + [False] * 8
    assert not region_presence(blocks, causal=True)[0].any()     # a causal model's past never looks ahead
    regions = torch.rand(3, 1, 12) + 1.0
    combined = combine_regions(regions, present, SSEConfig(block_frames=2, weights=(0, 0, 1)))
    assert torch.all(combined[0, 8:] == 0)
    assert torch.isclose(combined[0, :8].max(), torch.tensor(1.0))
    ranked = combine_regions(regions, present, SSEConfig(block_frames=2, weights=(1, 0, 0), normalise="rank"))
    assert torch.all(ranked[0, :4] == 0)
    assert sorted(ranked[0, 4:].tolist()) == pytest.approx([i / 7 for i in range(8)])


def test_sse_targets_on_a_model_match_naive_from_its_queries_and_keys(runner, context):
    lat = torch.randn(1, 16, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    captured = {}

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def forward_full(self, *a, observer=None, **kw):
            def both(i, q, k, v):
                captured[i] = (q.clone(), k.clone())
                observer(i, q, k, v)
            return self.inner.forward_full(*a, observer=both, **kw)

    cfg = SSEConfig(block_frames=3)
    res = sse_targets(Spy(runner), lat, context, cfg)
    blocks = token_blocks(6, 16, 3)
    assert res.targets.shape == (runner.num_layers, 1, 96)
    for layer, (q, k) in captured.items():
        assert torch.allclose(res.regions[layer], naive_regions(q, k, blocks), atol=1e-5)
    mean = sse_targets(runner, lat, context, SSEConfig(block_frames=3, layer_mode="mean", layers=(1,)))
    assert torch.allclose(mean.targets[0], res.targets[1]) and torch.allclose(mean.targets[1], res.targets[1])


@pytest.mark.parametrize("source", ["student", "teacher_noisy"])
def test_sampling_situation_sources_equal_a_masked_full_forward(runner, context, source):
    """Block by block against the cache (or the teacher's clean context) == one full forward over
    [clean | noisy] in which each noisy block sees what it sees at inference."""
    frames, fb, tpf, step = 6, 2, 16, 600.0
    lat = torch.randn(1, 16, frames, 8, 8, generator=torch.Generator().manual_seed(2))
    cfg = SSEConfig(block_frames=fb, source=source, timesteps=(step,))
    use = attention_use(runner, lat, context, cfg)                           # [L, 1, H, N, blocks]
    gen = torch.Generator().manual_seed(0)                                   # the same noise draws
    noisy = torch.cat([(1 - step / 1000) * lat[:, :, f:f + fb] + step / 1000 * torch.randn(1, 16, fb, 8, 8, generator=gen)
                       for f in range(0, frames, fb)], dim=2)
    n = frames * tpf
    blocks = token_blocks(frames, tpf, fb)
    qb, kb = blocks[:, None], blocks[None, :]
    causal = source == "student"
    clean_clean = kb <= qb if causal else torch.ones(n, n, dtype=torch.bool)
    noisy_clean = kb < qb if causal else kb != qb
    mask = torch.cat([torch.cat([clean_clean, torch.zeros(n, n, dtype=torch.bool)], 1),
                      torch.cat([noisy_clean, kb == qb], 1)], 0)
    seen = {}
    with torch.no_grad():
        tokens, _ = runner.patchify(torch.cat([lat, noisy], dim=2))
        _, e0 = runner.embed_time(torch.cat([torch.zeros(1, frames), torch.full((1, frames), step)], dim=1))
        angles = rope_angles(runner.head_dim, torch.arange(frames), 4, 4)
        freqs = (torch.cat([torch.cos(angles)] * 2), torch.cat([torch.sin(angles)] * 2))

        def attend(i, q, k, v, h, k_raw):
            seen[i] = probs_of(q, k, mask)
            return runner.ops.attention(q, k, v, mask)

        runner.run_blocks(tokens, e0, 2 * frames, freqs, runner.cross_kv(runner.embed_text(context)), attend)
    for layer, p in seen.items():
        p = p[:, :, n:]                                   # the noisy queries
        per_token = torch.where((kb == qb)[None, None], p[..., n:], p[..., :n])   # own block: its noisy keys
        for b in range(frames // fb):
            want = per_token[:, :, blocks == b].amax(dim=2).float()            # [1, H, N]
            assert torch.allclose(use[layer, :, :, :, b], want, atol=2e-5), (layer, b)
    if causal:
        assert torch.all(use[..., :, 0][..., 2 * tpf:] == 0)       # block 0 never sees later tokens


@pytest.mark.parametrize("kwargs", [dict(weights=(1, 1)), dict(weights=(0, 0, 0)), dict(normalise="softmax"),
                                    dict(block_frames=0), dict(timesteps=(1000.0,)), dict(layer_mode="max"),
                                    dict(source="oracle"), dict(source="student", timesteps=(0.0,)),
                                    dict(weights=(float("nan"), 1, 1)), dict(supersede_share=0.0),
                                    dict(supersede_share=1.5), dict(supersede_share=float("nan"))])
def test_sse_config_errors(kwargs):
    with pytest.raises(ValueError):
        SSEConfig(**kwargs)
