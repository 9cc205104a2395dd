"""Eviction mechanics against a brute-force reference, protection rules, bounded memory."""

import pytest
import torch

from pafu_core.cache import CacheBudget, KVCache, cache_bytes_for
from pafu_core.policies import Policy, make_policy
from pafu_core.sampler import SamplerConfig, sample_video

TPF = 4          # tokens per frame
LAYERS, B, HEADS, D = 3, 2, 2, 8


class GivenScores(Policy):
    """Scores entering tokens with values drawn by the test (distinct, so the top-k is unique)."""

    name = "given"

    def __init__(self, gen):
        self.gen = gen
        self.last = None

    def score(self, view):
        self.last = torch.rand(LAYERS, B, view.num_entering, generator=self.gen)
        return self.last


def run_brute_force(chunk_frames, budget_frames, sink_frames, chunks, seed=0):
    gen = torch.Generator().manual_seed(seed)
    policy = GivenScores(gen)
    cache = KVCache(num_layers=LAYERS, batch=B, num_heads=HEADS, head_dim=D, tokens_per_frame=TPF,
                    chunk_frames=chunk_frames, total_frames=chunk_frames * chunks, policy=policy,
                    budget=CacheBudget(budget_frames, sink_frames=sink_frames))
    live = [[[] for _ in range(B)] for _ in range(LAYERS)]   # (token id, score, frame) per row
    next_id = 0
    for c in range(chunks):
        s = chunk_frames * TPF
        ids = torch.arange(next_id, next_id + s, dtype=torch.float32)
        cache.open_chunk(c * chunk_frames, chunk_frames)
        for layer in range(LAYERS):
            # encode (token id, layer, batch) into K and V so we can read back which token sits where
            k = ids.view(1, s, 1, 1).expand(B, s, HEADS, D).clone()
            k[..., 0] = layer
            k[:, :, :, 1] = torch.arange(B).view(B, 1, 1).float()
            cache.stage(layer, k, -k)
        cache.commit()
        frames = [c * chunk_frames + i // TPF for i in range(s)]
        for layer in range(LAYERS):
            for b in range(B):
                row = live[layer][b]
                row += [(next_id + i, float(policy.last[layer, b, i]), frames[i]) for i in range(s)]
                budget = budget_frames * TPF
                if len(row) > budget:
                    newest = set(range(next_id, next_id + s))
                    protected = [t for t in row if t[0] in newest or t[2] < sink_frames]
                    rest = sorted((t for t in row if t not in protected), key=lambda t: -t[1])
                    row[:] = protected + rest[:budget - len(protected)]
        next_id += s
        # compare what the cache holds to the brute force, row by row
        for layer in range(LAYERS):
            for b in range(B):
                k = cache.kv[layer, 0, b, :cache.length]
                v = cache.kv[layer, 1, b, :cache.length]
                assert torch.all(k[:, :, 0] == layer) and torch.all(k[:, :, 1] == b)
                assert torch.equal(v, -k)
                held = sorted(int(i) for i in k[:, 0, 2])
                assert held == sorted(t[0] for t in live[layer][b]), (c, layer, b)
                frames_held = cache.frame_index[layer, b, :cache.length]
                assert torch.equal(frames_held.long(), (k[:, 0, 2].long() // TPF))
                scores_held = cache.scores[layer, b, :cache.length]
                expect = {t[0]: t[1] for t in live[layer][b]}
                assert torch.allclose(scores_held, torch.tensor([expect[int(i)] for i in k[:, 0, 2]]))
    return cache


@pytest.mark.parametrize("chunk_frames,budget_frames,sink_frames", [(1, 3, 0), (2, 5, 0), (2, 6, 1), (3, 7, 2)])
def test_eviction_keeps_exactly_the_chosen_tokens(chunk_frames, budget_frames, sink_frames):
    cache = run_brute_force(chunk_frames, budget_frames, sink_frames, chunks=8)
    assert cache.length == budget_frames * TPF


def test_newest_chunk_and_sinks_survive_even_with_lowest_scores():
    class Adverse(Policy):      # newest tokens get the lowest scores: they must stay anyway
        name = "adverse"

        def score(self, view):
            return -view.entering_frame_index.float()

    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF,
                    chunk_frames=2, total_frames=20, policy=Adverse(),
                    budget=CacheBudget(6, sink_frames=1))
    for c in range(10):
        cache.open_chunk(2 * c, 2)
        cache.stage(0, torch.zeros(1, 8, 1, 4), torch.zeros(1, 8, 1, 4))
        cache.commit()
        frames = set(cache.frame_index[0, 0, :cache.length].tolist())
        assert {2 * c, 2 * c + 1} <= frames
        assert 0 in frames


def test_budget_smaller_than_a_chunk_is_refused():
    with pytest.raises(ValueError, match="smaller than one chunk"):
        KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=3,
                total_frames=30, policy=make_policy("fifo"), budget=CacheBudget(2))
    with pytest.raises(ValueError, match="sink"):
        KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=3,
                total_frames=30, policy=make_policy("fifo"), budget=CacheBudget(4, sink_frames=2))
    with pytest.raises(ValueError, match="sink_frames >= 1"):
        KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=3,
                total_frames=30, policy=make_policy("sink_window"), budget=CacheBudget(6))


def test_budget_units():
    assert CacheBudget(0.25, unit="fraction").tokens(1560) == 8190       # 25% of Self-Forcing's 21 frames
    assert CacheBudget(6, unit="frames").tokens(1560) == 9360
    assert CacheBudget(5000, unit="tokens").tokens(1560) == 5000
    with pytest.raises(ValueError, match="fraction"):
        CacheBudget(1.5, unit="fraction")
    with pytest.raises(ValueError, match="unit"):
        CacheBudget(1, unit="gigabytes")
    with pytest.raises(ValueError, match="positive"):
        CacheBudget(0)


@pytest.mark.parametrize("policy", ["fifo", "sink_window", "attention_mass", "key_norm", "random"])
def test_memory_bounded_over_20_chunks_at_25_percent(runner, context, policy):
    tpf, chunk, ref_frames = 16, 3, 24
    budget = CacheBudget(0.25, unit="fraction", reference_frames=ref_frames,
                         sink_frames=1 if policy == "sink_window" else 0)
    budget_tokens = budget.tokens(tpf)
    kv_bound = cache_bytes_for(budget_tokens, runner.num_layers, runner.num_heads, runner.head_dim, torch.float32)
    slot_bound = cache_bytes_for(budget_tokens + chunk * tpf, runner.num_layers, runner.num_heads,
                                 runner.head_dim, torch.float32)
    seen = []

    def check(stats, x0):
        assert stats.kv_bytes <= kv_bound
        assert stats.tokens_per_layer <= budget_tokens
        seen.append(stats.cache_bytes)

    res = sample_video(runner, context, num_frames=20 * chunk, height=8, width=8, policy=make_policy(policy),
                       budget=budget, config=SamplerConfig(chunk_frames=chunk), chunk_callback=check)
    assert len(res.report.chunks) == 20
    # every tensor the cache owns, at every chunk: the same, and K/V slots = (budget + chunk) tokens
    assert len(set(seen)) == 1
    metadata = (budget_tokens + chunk * tpf) * runner.num_layers * (4 + 4 + (4 if policy == "attention_mass" else 0)) + 8 * (budget_tokens + chunk * tpf)
    cross = runner.num_layers * 2 * 7 * runner.dim * 4
    assert seen[0] == slot_bound + metadata + cross
    assert res.report.chunks[-1].tokens_per_layer == budget_tokens
