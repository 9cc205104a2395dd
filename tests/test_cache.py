"""Eviction mechanics against a brute-force reference, protection rules, bounded memory."""

import pytest
import torch

from pafu_core.budget import CacheBudget, cache_bytes_for, kv_bytes_per_token
from pafu_core.cache import KVCache
from pafu_core.policies import Policy, make_policy
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig

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
                k = cache.store.kv[layer, 0, b, :cache.length]
                v = cache.store.kv[layer, 1, b, :cache.length]
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
    assert CacheBudget(6, unit="latent_frames").tokens(1560) == 9360
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
    slots = budget_tokens + chunk * tpf
    channels = 1 if policy in ("attention_mass", "key_norm") else 0     # the policy's per-token state
    metadata = slots * runner.num_layers * (4 + 4 + 4 * channels) + 8 * slots + 1
    cross = runner.num_layers * 2 * 7 * runner.dim * 4
    assert seen[0] == slot_bound + metadata + cross
    assert res.report.chunks[-1].tokens_per_layer == budget_tokens


class Scripted(Policy):
    """Hands the cache whatever scores the test wants, for every live token."""

    name = "scripted"
    scores_on_entry = False

    def __init__(self, make):
        self.make = make

    def score(self, view):
        return self.make(view)


def fill(cache, chunks, chunk_frames):
    for c in range(chunks):
        cache.open_chunk(c * chunk_frames, chunk_frames, write=True)
        for layer in range(cache.num_layers):
            s = chunk_frames * cache.tokens_per_frame
            k = torch.full((cache.batch, s, cache.num_heads, cache.head_dim), float(c))
            cache.stage(layer, k, k)
        cache.commit()
        yield c


@pytest.mark.parametrize("seed", range(25))
def test_protection_holds_whatever_the_scores_hold(seed):
    """Property: scores full of NaN / +inf / -inf never evict the newest chunk or the sinks."""
    gen = torch.Generator().manual_seed(seed)
    specials = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, 1e30, -1e30])

    def hostile(view):
        shape = (view.num_layers, view.batch, view.end)
        pick = torch.randint(len(specials) + 1, shape, generator=gen)
        return torch.where(pick < len(specials), specials[pick.clamp(max=len(specials) - 1)],
                           torch.randn(shape, generator=gen))

    sink = int(torch.randint(0, 3, (1,), generator=gen))
    chunk_frames = int(torch.randint(1, 4, (1,), generator=gen))
    budget = chunk_frames + sink + int(torch.randint(0, 4, (1,), generator=gen))
    cache = KVCache(num_layers=3, batch=2, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=chunk_frames,
                    total_frames=chunk_frames * 12, policy=Scripted(hostile), budget=CacheBudget(budget, sink_frames=sink))
    with pytest.warns(RuntimeWarning, match="scripted"):
        for c in fill(cache, 12, chunk_frames):
            frames = cache.frame_index[:, :, :cache.length]
            for f in range(c * chunk_frames, (c + 1) * chunk_frames):          # the newest chunk, whole
                assert ((frames == f).sum(-1) == TPF).all(), (c, f)
            for f in range(min(sink, (c + 1) * chunk_frames)):                  # the sinks, whole
                assert ((frames == f).sum(-1) == TPF).all(), (c, f)
            assert cache.length <= budget * TPF
            cache.take_nonfinite()


def test_non_finite_scores_count_as_lowest_and_warn_once():
    def nan_on_even_frames(view):
        f = view.frame_index.float()
        return torch.where(f % 2 == 0, float("nan"), f)

    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=1,
                    total_frames=12, policy=Scripted(nan_on_even_frames), budget=CacheBudget(3))
    with pytest.warns(RuntimeWarning) as caught:
        for _ in fill(cache, 12, 1):
            cache.take_nonfinite()
    assert len(caught) == 1 and "'scripted'" in str(caught[0].message)
    # NaN frames went first: the newest frame (11) and the two newest finite-scored ones stay
    assert sorted(set(cache.frame_index[0, 0, :cache.length].tolist())) == [7, 9, 11]


def test_keep_all_refuses_a_video_that_does_not_fit_before_allocating():
    with pytest.raises(MemoryError) as err:
        KVCache(num_layers=30, batch=1, num_heads=12, head_dim=128, tokens_per_frame=1560, chunk_frames=3,
                total_frames=4096, policy=make_policy("keep_all"), budget=None, dtype=torch.bfloat16,
                max_bytes=8 * 2**30)
    msg = str(err.value)
    assert "keep_all cache needs 1096.88 GiB" in msg and "more than the 8.00 GiB" in msg
    assert "a budget of at most 26 latent frames" in msg            # and which budget would fit
    fits = KVCache(num_layers=2, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=1,
                   total_frames=4, policy=make_policy("keep_all"), budget=None, max_bytes=2**20)
    assert fits.capacity == 4 * TPF


def test_gib_budget_becomes_tokens_from_the_shape_and_storage():
    shape = dict(num_layers=30, num_heads=12, head_dim=128, dtype=torch.bfloat16)
    per_token = kv_bytes_per_token(**shape)
    assert per_token == 30 * 2 * 12 * 128 * 2
    chunk = 4680
    tokens = CacheBudget(2.0, unit="GiB").tokens(1560, chunk_tokens=chunk, bytes_per_token=per_token)
    assert tokens == 2 * 2**30 // per_token - chunk
    int8 = kv_bytes_per_token(**shape, storage="int8")
    assert int8 < 0.52 * per_token                        # 8 bits + one fp16 scale per token and head
    assert CacheBudget(2.0, unit="GiB").tokens(1560, chunk_tokens=chunk, bytes_per_token=int8) > 1.9 * tokens
    with pytest.raises(ValueError, match="model's shape"):
        CacheBudget(1.0, unit="GiB").tokens(1560)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_budget_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="finite|positive"):
        CacheBudget(value)


def test_int8_storage_halves_kv_bytes_and_stays_close(runner, context):
    kw = dict(num_frames=18, height=8, width=8, policy=make_policy("fifo"), budget=CacheBudget(6))
    full = sample_video(runner, context, **kw)
    eight = sample_video(runner, context, **kw, kv_storage="int8")
    kv_full, kv_eight = full.report.chunks[-1].kv_bytes, eight.report.chunks[-1].kv_bytes
    assert kv_eight == kv_full * (runner.head_dim + 2) // (4 * runner.head_dim)   # fp32 model here: 4 bytes -> 1 + scale
    err = (eight.latents - full.latents).abs().max() / full.latents.abs().max()
    assert 0 < err < 0.02


def test_int8_storage_survives_extreme_values():
    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=1,
                    total_frames=4, policy=make_policy("fifo"), budget=CacheBudget(2), storage="int8")
    for f, scale in enumerate((1e9, 1e-12, 0.0, 1.0)):
        cache.open_chunk(f, 1, write=True)
        k = torch.full((1, TPF, 1, 4), scale)
        keys, values = cache.stage(0, k, k)
        cache.commit()
        assert torch.isfinite(keys).all() and torch.isfinite(cache.store.scale.float()).all(), scale


def test_non_finite_scores_are_reported_even_before_the_first_eviction():
    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=1,
                    total_frames=4, policy=Scripted(lambda v: torch.full((1, 1, v.end), float("nan"))),
                    budget=CacheBudget(4))
    next(fill(cache, 1, 1))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert cache.take_nonfinite()


def test_growing_the_chunk_keeps_a_gib_budget_and_the_committed_tokens():
    per_token = kv_bytes_per_token(1, 1, 4, torch.float32)
    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=TPF, chunk_frames=1,
                    total_frames=40, policy=make_policy("fifo"), budget=CacheBudget(20 * TPF * per_token / 2**30,
                                                                                    unit="GiB"))
    next(fill(cache, 1, 1))
    slots_before = cache.capacity
    cache.grow_chunk(3)
    assert cache.capacity == slots_before and cache.budget_tokens == 17 * TPF      # the same memory
    assert cache.frame_index[0, 0, :cache.length].tolist() == [0] * TPF
