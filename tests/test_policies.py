"""Each scorer against what it promises; the learned-head slot receives the right features."""

import os
import subprocess
import sys

import pytest
import torch

from pafu_core.attention import attention_with_key_mass
from pafu_core.budget import CacheBudget
from pafu_core.cache import CacheShape, open_cache
from pafu_core.policies import PaFuSalience, make_policy
from pafu_core.policy import Entering
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig


@pytest.mark.parametrize("tile", [1, 5, 16, None])
def test_tiled_attention_mass_equals_full_softmax(tile):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, generator=gen) for n in (17, 29, 29))
    out, mass = attention_with_key_mass(q, k, v, tile=tile)
    probs = torch.softmax(torch.einsum("bshd,bnhd->bhsn", q, k) / 4.0, dim=-1)
    assert torch.allclose(mass, probs.sum(dim=(1, 2)), atol=1e-5)
    ref = torch.einsum("bhsn,bnhd->bshd", probs, v).flatten(2)
    assert torch.allclose(out, ref, atol=1e-5)


def rollout(runner, context, name, budget, frames=12, **kw):
    return sample_video(runner, context, num_frames=frames, height=8, width=8, policy=make_policy(name, **kw),
                        budget=budget, config=SamplerConfig(chunk_frames=2))


def last_kept_frames(report):
    return [set(torch.nonzero(layer).flatten().tolist()) for layer in report.kept_frames[-1]]


def test_fifo_keeps_the_newest_frames(runner, context):
    rep = rollout(runner, context, "fifo", CacheBudget(4)).report
    assert all(kept == {8, 9, 10, 11} for kept in last_kept_frames(rep))


def test_sink_window_keeps_sinks_and_newest(runner, context):
    rep = rollout(runner, context, "sink_window", CacheBudget(5, sink_frames=1)).report
    assert all(kept == {0, 8, 9, 10, 11} for kept in last_kept_frames(rep))


def test_attention_mass_accumulates_and_keeps_heavy_hitters():
    from pafu_core.cache import KVCache
    cache = KVCache(num_layers=1, batch=1, num_heads=1, head_dim=4, tokens_per_frame=2, chunk_frames=1,
                    total_frames=4, policy=make_policy("attention_mass"), budget=CacheBudget(2))
    masses = [torch.tensor([[1.0, 5.0]]), torch.tensor([[1.0, 1.0, 0.5, 3.0]]),
              torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0]])]
    for f, mass in enumerate(masses):
        cache.open_chunk(f, 1, write=True)
        k = torch.full((1, 2, 1, 4), float(f))
        cache.stage(0, k, k)
        cache.enter(0, Entering(mass=mass))
        cache.commit()
    # totals: frame0 tokens (2, 6), frame1 (0.5, 3), frame2 (1, 1) protected -> keep 6 and 3
    held = sorted(cache.state[0, 0, :cache.length, 0].tolist())
    assert held == [1.0, 1.0, 3.0, 6.0]
    assert sorted(cache.frame_index[0, 0, :cache.length].tolist()) == [0, 1, 2, 2]


def test_attention_mass_follows_tokens_across_slot_reuse():
    """Brute force over several layers and batch rows: a slot freed by eviction and reused by a new
    token starts from zero mass, and a moved token keeps its own accumulated mass."""
    from pafu_core.cache import KVCache
    layers, batch, tpf, chunk = 3, 2, 3, 1
    cache = KVCache(num_layers=layers, batch=batch, num_heads=1, head_dim=2, tokens_per_frame=tpf,
                    chunk_frames=chunk, total_frames=14, policy=make_policy("attention_mass"),
                    budget=CacheBudget(3))
    gen = torch.Generator().manual_seed(0)
    truth = [[{} for _ in range(batch)] for _ in range(layers)]        # token id -> accumulated mass
    for f in range(14):
        cache.open_chunk(f, chunk, write=True)
        end = cache.length + tpf
        for layer in range(layers):
            k = torch.randn(batch, tpf, 1, 2, generator=gen)
            cache.stage(layer, k, k)
            mass = torch.rand(batch, end, generator=gen)
            cache.enter(layer, Entering(mass=mass))
            for b in range(batch):
                ids = cache.token_index[layer, b, :cache.length].tolist() + list(range(f * tpf, (f + 1) * tpf))
                for slot, tok in enumerate(ids):
                    truth[layer][b][tok] = truth[layer][b].get(tok, 0.0) + float(mass[b, slot])
        cache.commit()
        for layer in range(layers):
            for b in range(batch):
                held = cache.token_index[layer, b, :cache.length].tolist()
                got = cache.state[layer, b, :cache.length, 0].tolist()
                assert got == pytest.approx([truth[layer][b][t] for t in held], rel=1e-5), (f, layer, b)
                # the heaviest older tokens are the ones kept (the newest frame is protected)
                older = sorted((m for t, m in truth[layer][b].items() if t < f * tpf), reverse=True)
                kept = sorted((truth[layer][b][t] for t in held if t < f * tpf), reverse=True)
                assert kept == pytest.approx(older[:len(kept)])
        # evicted tokens are gone for good: forget them in the brute force
        for layer in range(layers):
            for b in range(batch):
                held = set(cache.token_index[layer, b, :cache.length].tolist())
                truth[layer][b] = {t: m for t, m in truth[layer][b].items() if t in held}


def test_key_norm_prefers_low_norm_keys():
    from pafu_core.cache import KVCache
    cache = KVCache(num_layers=1, batch=1, num_heads=2, head_dim=4, tokens_per_frame=2, chunk_frames=1,
                    total_frames=4, policy=make_policy("key_norm"), budget=CacheBudget(2))
    norms = [5.0, 1.0, 3.0, 0.5, 4.0, 2.0, 9.0, 9.0]
    for f in range(4):
        cache.open_chunk(f, 1, write=True)
        k = torch.tensor(norms[2 * f:2 * f + 2]).view(1, 2, 1, 1).expand(1, 2, 2, 4) / 2.0
        cache.stage(0, k, k)
        cache.enter(0, Entering(keys=k, values=k))
        cache.commit()
    held = sorted(cache.store.kv[0, 0, 0, :cache.length, 0, 0].mul(2).tolist())
    assert held == [0.5, 1.0, 9.0, 9.0]


def test_random_is_seeded(runner, context):
    a = rollout(runner, context, "random", CacheBudget(4), seed=1).report.kept_frames
    b = rollout(runner, context, "random", CacheBudget(4), seed=1).report.kept_frames
    assert torch.equal(a, b)


def test_policy_names():
    with pytest.raises(ValueError, match="needs a salience head"):
        make_policy("pafu")
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("lru")




class RecordingHead:
    """Stands in for the learned head: records what it is given, scores by a fixed rule."""

    input_features = ("keys", "values", "hidden")
    rescores = False

    def __init__(self):
        self.calls = {}

    def entry_scores(self, layer, keys, values, hidden):
        self.calls[layer] = (keys.clone(), values.clone(), hidden.clone())
        return keys.float().mean(dim=(-1, -2))

    def recency(self):
        return 0.0


def test_salience_slot_gets_pre_rope_keys_values_and_hidden(runner, context):
    head = RecordingHead()
    policy = PaFuSalience(head)
    captured = {}
    hooks = [blk.self_attn.norm_k.register_forward_hook(
        lambda mod, inp, out, i=i: captured.__setitem__(i, out.detach().clone()))
        for i, blk in enumerate(runner.model.blocks)]
    try:
        cache, _ = open_cache(CacheShape.of(runner), policy, CacheBudget(4), batch=1, tokens_per_frame=16, chunk_frames=2,
                            total_frames=4, device="cpu")
        cache.cross_kv = runner.cross_kv(runner.embed_text(context))
        x = torch.randn(1, 16, 2, 8, 8)
        with torch.no_grad():
            runner.forward_chunk(x, torch.zeros(1, 2), 0, cache, write=True)
    finally:
        for h in hooks:
            h.remove()
    for i in range(runner.num_layers):
        keys, values, hidden = head.calls[i]
        assert keys.shape == (1, 32, runner.num_heads, runner.head_dim) and hidden.shape == (1, 32, runner.dim)
        assert torch.allclose(keys[0].flatten(-2), captured[i][0], atol=1e-5)
        assert torch.equal(values, cache.store.kv[i, 1, :, :32])
        assert torch.allclose(cache.state[i, 0, :32, 0], keys.float().mean(dim=(-1, -2))[0])


def test_newer_at_place_channel_equals_brute_force():
    """The re-scorer's "newer" input: the highest entry score that reached a token's place after it."""
    from pafu_core.cache import KVCache

    class Rescoring:
        input_features = ("keys",)
        rescores = True

        def entry_scores(self, layer, keys, values, hidden):
            return keys[..., 0, 0]

        def rescore(self, entry, newer, age):
            self.last = (entry.clone(), newer.clone(), age.clone())
            return entry - 0.01 * age

        def recency(self):
            return 0.0

    head = Rescoring()
    tpf, chunk = 3, 2
    cache = KVCache(num_layers=2, batch=2, num_heads=1, head_dim=2, tokens_per_frame=tpf, chunk_frames=chunk,
                    total_frames=16, policy=PaFuSalience(head), budget=CacheBudget(5))
    gen = torch.Generator().manual_seed(1)
    entry = {}                                           # (layer, b, token) -> entry score
    for c in range(8):
        cache.open_chunk(c * chunk, chunk, write=True)
        for layer in range(2):
            k = torch.randn(2, chunk * tpf, 1, 2, generator=gen)
            cache.stage(layer, k, k)
            cache.enter(layer, Entering(keys=k, values=k))
            for b in range(2):
                for i in range(chunk * tpf):
                    entry[layer, b, c * chunk * tpf + i] = float(k[b, i, 0, 0])
        n = cache.length
        tokens = torch.cat([cache.token_index[:, :, :n],
                            torch.arange(c * chunk * tpf, (c + 1) * chunk * tpf).expand(2, 2, -1).int()], dim=-1)
        cache.commit()
        e, newer, age = head.last
        newest = (c + 1) * chunk - 1
        checked = 0
        for layer in range(2):
            for b in range(2):
                for slot, tok in enumerate(tokens[layer, b].tolist()):
                    f, p = divmod(tok, tpf)
                    later = [entry[layer, b, g * tpf + p] for g in range(f + 1, newest + 1)]
                    want = max(later) if later else entry[layer, b, tok]      # nothing newer: neutral
                    assert float(newer[layer, b, slot]) == pytest.approx(want), (c, layer, b, tok)
                    assert int(age[layer, b, slot]) == newest - f
                    checked += 1
        assert checked == 4 * tokens.shape[-1]


def test_standout_scores_distance_from_the_frame_mean_and_recency_per_window():
    """Brute force: per token, the mean over heads of |k - mean key of its frame|, divided by the largest
    spread the layer has shown so far (a causal running maximum per batch row); the recency adds
    ``recency`` per budget window of frame index (the same at any budget)."""
    from pafu_core.policies import Standout
    gen = torch.Generator().manual_seed(3)
    chunks = [torch.randn(2, 3 * 4, 2, 5, generator=gen) * scale for scale in (1.0, 3.0, 0.5)]  # 3 frames of 4
    policy, largest = Standout(), torch.zeros(2)
    for keys in chunks:
        got = policy.entry_scores(0, keys, keys, None, 4)
        spread = torch.empty(2, 12)
        for b in range(2):
            for f in range(3):
                frame = keys[b, 4 * f:4 * f + 4]
                spread[b, 4 * f:4 * f + 4] = (frame - frame.mean(0)).norm(dim=-1).mean(-1)
        largest = torch.maximum(largest, spread.amax(dim=1))
        assert torch.allclose(got, spread / largest[:, None], atol=1e-6)
    assert got.max() < 0.5            # a quiet chunk after a loud one is not stretched to the full scale
    with pytest.raises(ValueError, match="recency"):
        Standout(recency=float("nan"))

    class View:                       # what score() reads: the entering frames, the entry channel, the budget
        def __init__(self, budget_tokens):
            self.budget_tokens = budget_tokens
            self.tokens_per_frame = 4
            self.entering_frame_index = torch.tensor([[[10, 10, 20, 20]]])

        def entering_state(self, name):
            return torch.zeros(1, 1, 4)

    for window_frames in (2, 8):
        s = Standout(recency=0.5).score(View(4 * window_frames))
        assert torch.allclose(s[..., 2] - s[..., 0], torch.tensor(0.5 * 10 / window_frames))


def test_standout_keeps_what_stands_out_and_runs_without_a_head(runner, context):
    report = rollout(runner, context, "standout", CacheBudget(6), frames=12).report
    assert report.chunks[-1].kv_bytes > 0 and report.budget_tokens == 6 * 16
    from pafu_core.native_protocol import check_native_policy
    check_native_policy(make_policy("standout"))          # needs keys only: core's AR path takes it


def test_registry_drives_names_help_and_the_pages_that_show_it():
    """One registration reaches every list; the help page and README tables are generated from it."""
    from pafu_core import policies
    from pafu_core.native_protocol import core_ar_policy_names
    from pafu_lab.world.evaluate import HEURISTICS

    assert "standout" in HEURISTICS and "pafu" not in HEURISTICS and "keep_all" not in HEURISTICS
    assert "attention_mass" not in core_ar_policy_names() and "standout" in core_ar_policy_names()

    class Newest(policies.Policy):
        name = "newest_test"

        def score(self, view):
            return view.entering_frame_index.float()

    policies.register_policy("newest_test", "the newest frames (a test policy)", Newest)
    try:
        assert "newest_test" in policies.policy_names() and "newest_test" in policies.policy_help()
        assert "newest_test" in core_ar_policy_names() and "`newest_test`" in policies.policy_table()
        assert isinstance(make_policy("newest_test"), Newest)
    finally:
        policies.unregister_policy("newest_test")
    with pytest.raises(ValueError, match="unknown policy 'nope'; choose one of standout"):
        make_policy("nope")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    check = subprocess.run([sys.executable, "tools/policy_docs.py", "--check"], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
