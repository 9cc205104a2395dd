"""Tiled SSE equals a naive full-matrix reference; targets are built as documented."""

import pytest
import torch

from pafu_core.teacher import (SSEConfig, combine_regions, region_presence, sse_region_scores, sse_targets,
                               token_blocks)


def naive_regions(q, k, blocks, gap=1):
    """Materialise P [B, H, N, N] and take the three masked maxima directly."""
    p = torch.softmax(torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / q.shape[-1] ** 0.5, dim=-1)
    qb, kb = blocks[:, None], blocks[None, :]
    out = []
    for mask in (qb < kb, qb == kb, qb >= kb + gap):    # past, diag, future (per key column)
        out.append(p.masked_fill(~mask, 0).amax(dim=2).mean(dim=1))
    return torch.stack(out).float()


@pytest.mark.parametrize("frames,tpf,block_frames", [(6, 4, 1), (6, 4, 2), (9, 5, 3), (7, 3, 3)])
@pytest.mark.parametrize("tile", [1, 3, 7, None])
@pytest.mark.parametrize("gap", [1, 2])
def test_tiled_sse_equals_naive(frames, tpf, block_frames, tile, gap):
    gen = torch.Generator().manual_seed(frames * 100 + tpf)
    n = frames * tpf
    q, k = torch.randn(2, n, 3, 16, generator=gen), torch.randn(2, n, 3, 16, generator=gen)
    blocks = token_blocks(frames, tpf, block_frames)
    got = sse_region_scores(q, k, blocks, tile=tile, future_min_gap=gap)
    assert torch.allclose(got, naive_regions(q, k, blocks, gap), atol=1e-6)


def test_tile_from_memory_limit_is_used():
    q = k = torch.randn(1, 24, 2, 8)
    blocks = token_blocks(6, 4, 2)
    tiny = sse_region_scores(q, k, blocks, max_tile_bytes=4 * 2 * 24 * 3)   # 3 queries per tile
    assert torch.allclose(tiny, sse_region_scores(q, k, blocks), atol=1e-6)


def test_absent_regions_score_zero_and_are_left_out_of_normalisation():
    blocks = token_blocks(6, 2, 2)          # three blocks
    present = region_presence(blocks)
    assert present[0].tolist() == [False] * 4 + [True] * 8       # no past queries for block 0
    assert present[2].tolist() == [True] * 8 + [False] * 4       # no future queries for the last block
    assert region_presence(blocks, 2)[2].tolist() == [True] * 4 + [False] * 8
    regions = torch.rand(3, 1, 12) + 1.0
    combined = combine_regions(regions, present, SSEConfig(block_frames=2, weights=(0, 0, 1)))
    assert torch.all(combined[0, 8:] == 0)
    assert torch.isclose(combined[0, :8].max(), torch.tensor(1.0))
    ranked = combine_regions(regions, present, SSEConfig(block_frames=2, weights=(1, 0, 0), normalise="rank"))
    assert torch.all(ranked[0, :4] == 0)
    assert sorted(ranked[0, 4:].tolist()) == pytest.approx([i / 7 for i in range(8)])


def test_weights_select_regions():
    blocks = token_blocks(4, 2, 2)
    present = region_presence(blocks)
    regions = torch.rand(3, 1, 8)
    future_only = combine_regions(regions, present, SSEConfig(block_frames=2, weights=(0, 0, 1)))
    expect = regions[2] / regions[2, :, :4].max()
    expect[:, 4:] = 0
    assert torch.allclose(future_only, expect)


def test_sse_targets_on_a_model_match_naive_from_its_queries_and_keys(runner, context):
    lat = torch.randn(1, 16, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    captured = {}

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def forward_full(self, *a, observer=None, **kw):
            def both(i, q, k):
                captured[i] = (q.clone(), k.clone())
                observer(i, q, k)
            return self.inner.forward_full(*a, observer=both, **kw)

    cfg = SSEConfig(block_frames=3)
    res = sse_targets(Spy(runner), lat, context, cfg)
    blocks = token_blocks(6, 16, 3)
    assert res.targets.shape == (runner.num_layers, 1, 96)
    for layer, (q, k) in captured.items():
        assert torch.allclose(res.regions[layer], naive_regions(q, k, blocks), atol=1e-5)
    mean = sse_targets(runner, lat, context, SSEConfig(block_frames=3, layer_mode="mean", layers=(1,)))
    assert torch.allclose(mean.targets[0], res.targets[1]) and torch.allclose(mean.targets[1], res.targets[1])


@pytest.mark.parametrize("kwargs", [dict(weights=(1, 1)), dict(weights=(0, 0, 0)), dict(normalise="softmax"),
                                    dict(block_frames=0), dict(timesteps=(1000.0,)), dict(layer_mode="max")])
def test_sse_config_errors(kwargs):
    with pytest.raises(ValueError):
        SSEConfig(**kwargs)
