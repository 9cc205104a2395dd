"""Re-aligned temporal positions (Deep Forcing's deep sink) against a hand reference, and participative scores
against a naive softmax, on the all-in-one sampler (core's AR path: tests/comfyui/test_native_ar.py)."""

import pytest
import torch

from pafu_core.budget import CacheBudget
from pafu_core.ops import apply_rope, rope_angles
from pafu_core.policies import FifoWindow, Participative, make_policy
from pafu_core.policy import Entering
from pafu_core.positions import TemporalBand, realigned_numbers
from pafu_core.rollout import ChunkLoop, plan_rollout
from pafu_core.schedule import SamplerConfig

H = W = 8      # latent -> 4 x 4 = 16 tokens per frame
TPF = 16


class Recording:
    """Wraps a policy: records every entering token's keys before RoPE and values, per layer (batch row 0)."""

    def __init__(self, inner):
        self.inner, self.raw = inner, {}
        for name in ("name", "bounded", "scores_on_entry", "requires_sink", "state_channels", "ties_by_recency",
                     "query_frames", "positions"):
            setattr(self, name, getattr(inner, name))
        self.inputs = frozenset(inner.inputs) | {"keys", "values"}

    def sink_frames_for(self, budget_tokens, tpf, chunk_tokens):
        return self.inner.sink_frames_for(budget_tokens, tpf, chunk_tokens)

    def enter(self, layer, entering, view):
        first = (view.newest_frame + 1) * TPF - entering.keys.shape[1]
        for s in range(entering.keys.shape[1]):
            self.raw[layer, first + s] = (entering.keys[0, s].clone(), entering.values[0, s].clone())
        return self.inner.enter(layer, entering, view)

    def score(self, view):
        return self.inner.score(view)

    def describe(self):
        return self.inner.describe()


class Stub:
    """The cache as the reference sees it: fixed kept K/V per layer, the chunk roped at ``rope_frame``."""

    def __init__(self, kept, cross_kv, rope_frame):
        self.kept, self.cross_kv, self.rope_frame = kept, cross_kv, rope_frame
        self.policy = FifoWindow()

    def open_chunk(self, frame_start, num_frames, write=False):
        assert not write

    def stage(self, layer, k, v):
        ck, cv = self.kept[layer]
        return torch.cat([ck, k], dim=1), torch.cat([cv, v], dim=1)


def roped_at(runner, raw_k, frames, places):
    """Keys before RoPE [n, H, D] placed at temporal phase ``frames`` [n] and spatial place ``places`` [n]."""
    table = rope_angles(runner.head_dim, torch.arange(int(frames.max()) + 1), 4, 4)
    angles = table[frames * TPF + places]
    return apply_rope(raw_k[None], torch.cos(angles), torch.sin(angles))[0]


def run_and_reference(runner, context, policy_name, budget, positions, storage="model", frames=10, chunk=1):
    """The last chunk's prediction from the sampler, and from one forward over the tokens the cache kept
    before it, placed at the positions the definition gives them (``positions.py``)."""
    policy = Recording(make_policy(policy_name, seed=4))
    noise = torch.randn(1, 16, frames, H, W, generator=torch.Generator().manual_seed(2))
    cfg = SamplerConfig(chunk_frames=chunk, timesteps=(1000.0,), seed=1)
    request = plan_rollout(runner, context, shape=noise.shape, policy=policy, budget=budget, config=cfg, noise=noise,
                           kv_storage=storage, positions=positions)
    last = frames - chunk
    seen = {}

    def on_step(c, step, x0):
        seen[c] = x0.clone()

    def on_chunk(stats, x):
        if stats.frame_start + stats.frames == last:                 # the cache the last chunk will read
            cache = loop.cache
            seen["ids"] = cache.token_index[:, 0, :cache.length].long().clone()
    loop = ChunkLoop(runner, request, torch.device("cpu"), on_step, on_chunk)
    with torch.no_grad():
        loop.run()
        ids = seen["ids"]                                           # [L, n]
        frame_of, place = ids // TPF, ids % TPF
        if positions == "realigned":
            number, count = realigned_numbers(frame_of, frames)
            rope_frame = int(count)
        else:
            number, rope_frame = frame_of, last
        kept = []
        for layer in range(runner.num_layers):
            raw = torch.stack([policy.raw[layer, int(t)][0] for t in ids[layer]])
            val = torch.stack([policy.raw[layer, int(t)][1] for t in ids[layer]])
            kept.append((roped_at(runner, raw, number[layer], place[layer])[None], val[None]))
        stub = Stub(kept, runner.cross_kv(runner.embed_text(context)), rope_frame)
        flow = runner.forward_chunk(noise[:, :, last:], torch.full((1, chunk), 1000.0), last, stub)
    return seen[max(k for k in seen if isinstance(k, int))], noise[:, :, last:] - flow


class HalfOfEvenFrames(Participative):
    """Keeps half the places of the even frames, newest first, and a different half in each layer: frames
    partly kept, differently per layer, odd frames gone from every layer."""

    def enter(self, layer, entering, view):
        return {}

    def score(self, view):
        frame, place = view.frame_index.float(), view.place
        layer = torch.arange(view.num_layers).view(-1, 1, 1)
        return frame + 100 * ((frame % 2 == 0) & ((place + layer) % 2 == 0)).float()


def pattern(head, options):
    return HalfOfEvenFrames()


CASES = [("sink_window", CacheBudget(3, sink_frames=1)),          # whole frames leave: the kept ones move down
         ("half_of_even_frames", CacheBudget(40, unit="tokens"))]  # frames partly kept, differently per layer


@pytest.fixture(autouse=True, scope="module")
def half_of_even_frames():
    from pafu_core import policies
    policies.register_policy("half_of_even_frames", "a test policy", HalfOfEvenFrames, build=pattern)
    yield
    policies.unregister_policy("half_of_even_frames")


@pytest.mark.parametrize("policy,budget", CASES)
def test_realigned_rollout_equals_a_forward_over_the_kept_tokens_at_their_realigned_positions(runner, context, policy,
                                                                                              budget):
    got, ref = run_and_reference(runner, context, policy, budget, "realigned")
    true_got, true_ref = run_and_reference(runner, context, policy, budget, "true")
    diff, true_diff = (got - ref).abs().max().item(), (true_got - true_ref).abs().max().item()
    print(f"{policy}: realigned max |sampler - reference| {diff:.2e}; true positions {true_diff:.2e}; "
          f"realigned vs true {(got - true_got).abs().max().item():.2e}")
    assert diff < 2e-5 and true_diff < 2e-5
    assert (got - true_got).abs().max() > 1e-3          # the re-alignment changed what the chunk saw


def test_realigned_8_bit_storage_follows_the_same_positions(runner, context):
    got, ref = run_and_reference(runner, context, "sink_window", CacheBudget(3, sink_frames=1), "realigned", "int8")
    model_got, _ = run_and_reference(runner, context, "sink_window", CacheBudget(3, sink_frames=1), "realigned")
    print(f"int8 realigned: max |sampler - reference| {(got - ref).abs().max().item():.2e}, "
          f"vs model-dtype storage {(got - model_got).abs().max().item():.2e}")
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_realigned_numbers_follow_the_definition():
    frames = torch.tensor([[[0, 0, 5, 9, 9]], [[0, 7, 7, 9, 9]]])         # [L, B, n]: two layers
    number, count = realigned_numbers(frames, 12)
    assert int(count) == 4                                             # frames 0, 5, 7, 9 are kept somewhere
    assert number.tolist() == [[[0, 0, 1, 3, 3]], [[0, 2, 2, 3, 3]]]


def test_a_model_whose_rope_has_no_temporal_band_is_refused():
    with pytest.raises(ValueError, match="no temporal band"):
        TemporalBand(0)


def test_true_positions_leave_every_key_where_it_was_written(runner, context):
    """positions = true runs no rotation: the cache reports the chunk roped at its own first frame."""
    noise = torch.randn(1, 16, 8, H, W, generator=torch.Generator().manual_seed(2))
    request = plan_rollout(runner, context, shape=noise.shape, policy=make_policy("fifo"), budget=CacheBudget(3),
                           config=SamplerConfig(chunk_frames=2, timesteps=(1000.0,)), noise=noise)
    loop = ChunkLoop(runner, request, torch.device("cpu"))
    with torch.no_grad():
        report = loop.run().report
    assert [c.rope_frame for c in report.chunks] == [c.frame_start for c in report.chunks]
    assert loop.cache.phase is None


def naive_participation(q, keys, window):
    """[B, N]: mean over heads and the window's queries of softmax(q k / sqrt(d)), a loop over heads."""
    b, s, h, d = q.shape
    total = torch.zeros(b, keys.shape[1], dtype=torch.float64)
    for head in range(h):
        logits = q[:, -window:, head].double() @ keys[:, :, head].double().transpose(1, 2) / d ** 0.5
        total += torch.softmax(logits, dim=-1).sum(dim=1)
    return total / (h * window)


@pytest.mark.parametrize("query_frames,stride", [(1, 1), (2, 1), (1, 3)])
def test_participative_scores_equal_a_naive_softmax_over_what_the_newest_queries_attend_to(runner, context,
                                                                                           query_frames, stride):
    seen, scores = {}, {}

    class Spy(Participative):
        def enter(self, layer, entering, view):
            out = super().enter(layer, entering, view)
            seen[layer] = (entering.queries.clone(), entering.attended.clone())
            scores[layer] = out["participation"].clone()
            return out

    policy = Spy(query_frames=query_frames, query_stride=stride)
    noise = torch.randn(1, 16, 8, H, W, generator=torch.Generator().manual_seed(2))
    request = plan_rollout(runner, context, shape=noise.shape, policy=policy, budget=CacheBudget(4),
                           config=SamplerConfig(chunk_frames=2, timesteps=(1000.0,)), noise=noise)
    worst = 0.0

    def check(stats, x):
        nonlocal worst
        for layer, (q, keys) in seen.items():
            window = q[:, -query_frames * TPF:][:, ::stride]
            ref = naive_participation(window, keys, window.shape[1])
            worst = max(worst, (scores[layer].double() - ref).abs().max().item())
    with torch.no_grad():
        ChunkLoop(runner, request, torch.device("cpu"), chunk_callback=check).run()
    print(f"participative (window {query_frames}, stride {stride}): max |score - naive| {worst:.2e}")
    assert seen and worst < 1e-6


def test_participative_evicts_equal_scores_oldest_first():
    """Ties broken by recency, exactly: with every score equal, the cache keeps the newest tokens (a FIFO)."""
    from pafu_core.cache import KVCache

    class Flat(Participative):
        def enter(self, layer, entering, view):
            return {"participation": torch.zeros(1, view.end)}

    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=2, chunk_frames=1,
                    total_frames=8, policy=Flat(), budget=CacheBudget(3))
    for f in range(8):
        cache.open_chunk(f, 1, write=True)
        k = torch.randn(1, 2, 1, 4)
        cache.stage(0, k, k)
        cache.enter(0, Entering(queries=k, attended=k))
        cache.commit()
    assert sorted(cache.frame_index[0, 0, :cache.length].tolist()) == [5, 5, 6, 6, 7, 7]


def test_deep_forcing_keeps_its_deep_sink_and_realigns(runner, context):
    """Deep Forcing at 6 latent frames with its default share: 3 sink frames, the rest participative, the
    chunk roped right after the frames kept."""
    noise = torch.randn(1, 16, 14, H, W, generator=torch.Generator().manual_seed(2))
    policy = make_policy("deep_forcing")
    request = plan_rollout(runner, context, shape=noise.shape, policy=policy, budget=CacheBudget(6),
                           config=SamplerConfig(chunk_frames=2, timesteps=(1000.0,)), noise=noise,
                           positions="realigned")
    loop = ChunkLoop(runner, request, torch.device("cpu"))
    with torch.no_grad():
        report = loop.run().report
    assert report.sink_frames == 3 and loop.cache.sink_frames == 3
    assert bool(report.final_kept[:, :3 * TPF].all())                        # the deep sink, whole, in every layer
    assert report.chunks[-1].rope_frame < report.chunks[-1].frame_start     # roped where the kept frames end


@pytest.mark.parametrize("options,words", [
    (dict(sink_share=1.0), "sink_share must lie in [0, 1)"),
    (dict(sink_share=-0.1), "sink_share must lie in [0, 1)"),
    (dict(query_frames=0), "query_frames must be a whole number >= 1"),
])
def test_bad_deep_forcing_settings_are_refused_in_one_sentence(options, words):
    from pafu_core.settings import CacheSettings
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(")", r"\)")):
        CacheSettings(policy="deep_forcing", **options)


def test_a_query_window_larger_than_a_chunk_is_refused_before_any_work(runner, context):
    with pytest.raises(ValueError, match="query window of 3 latent frames is larger than a chunk"):
        plan_rollout(runner, context, shape=(1, 16, 8, H, W), policy=Participative(query_frames=3),
                     budget=CacheBudget(4), config=SamplerConfig(chunk_frames=2))


def test_a_toy_policy_that_reads_queries_is_one_class_and_one_registry_line(runner, context):
    """The protocol's promise: a policy that needs queries declares it; the sampler provides them."""
    from pafu_core import policies

    class QueryNorm(policies.Policy):
        name = "query_norm_test"
        inputs = frozenset({"queries"})
        state_channels = ("qnorm",)

        def enter(self, layer, entering, view):
            return {"qnorm": entering.queries.float().norm(dim=-1).mean(dim=-1)}

        def score(self, view):
            return view.entering_state("qnorm")

    policies.register_policy("query_norm_test", "keys whose own queries are large (a test policy)", QueryNorm)
    try:
        from pafu_core.native_protocol import core_ar_policy_names
        assert "query_norm_test" in core_ar_policy_names()
        res = plan_rollout(runner, context, shape=(1, 16, 8, H, W), policy=make_policy("query_norm_test"),
                           budget=CacheBudget(4), config=SamplerConfig(chunk_frames=2, timesteps=(1000.0,)))
        with torch.no_grad():
            out = ChunkLoop(runner, res, torch.device("cpu")).run()
        assert out.report.chunks[-1].evicted > 0
    finally:
        policies.unregister_policy("query_norm_test")
