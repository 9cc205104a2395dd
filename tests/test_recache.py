"""Re-caching at a prompt change: the kept K/V recomputed under the new prompt, exactly as defined in
``pafu_core/recache.py`` (checked against a whole-clip pass computed by hand), and a no-op when the prompt
does not really change."""

import pytest
import torch

import pafu_core.rollout as sampler_module
from pafu_core.budget import CacheBudget
from pafu_core.policies import make_policy
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig
from pafu_core.timeline import PromptTimeline

A = torch.randn(1, 7, 4096, generator=torch.Generator().manual_seed(3))
B = torch.randn(1, 7, 4096, generator=torch.Generator().manual_seed(4))


def run(runner, context, policy="fifo", budget=CacheBudget(6), frames=12, **kw):
    return sample_video(runner, context, num_frames=frames, height=8, width=8, policy=make_policy(policy),
                        budget=budget, config=SamplerConfig(chunk_frames=3, seed=5), batch=2, **kw)


def snapshots(monkeypatch):
    """Each re-caching's result: per layer, the cache's K and V of the kept tokens and their positions."""
    taken = []
    real = sampler_module.recache_kept

    def spy(runner, cache, written, chunk_starts, end, t):
        ran = real(runner, cache, written, chunk_starts, end, t)
        n = cache.length
        taken.append((ran, cache.store.kv[:, :, :, :n].clone(), cache.token_index[:, :, :n].clone()))
        return ran
    monkeypatch.setattr(sampler_module, "recache_kept", spy)
    return taken


def test_recache_equals_a_block_causal_pass_over_the_kept_frames_under_the_new_prompt(runner, monkeypatch):
    """FIFO at 6 frames, a change at frame 9: the cache keeps frames 3..8 in every layer; after re-caching
    their K/V are those of a whole-clip pass over the written latents of frames 3..8 (block-causal by chunk,
    at their own positions) under the new prompt."""
    taken = snapshots(monkeypatch)
    res = run(runner, PromptTimeline((0, 9), (A, B)), recache=True)
    (ran, kv, index), = taken
    assert ran == 2 and sorted(set((index // 16).flatten().tolist())) == list(range(3, 9))
    tpf, frames = 16, 6
    block = torch.arange(frames * tpf) // (3 * tpf)
    mask = block[None, :] <= block[:, None]
    ref = {}
    runner.forward_full(res.latents[:, :, 3:9], torch.zeros(2), B.expand(2, -1, -1), frame_offset=3, attn_mask=mask,
                        observer=lambda i, q, k, v: ref.update({i: (k, v)}))
    for layer, (k, v) in ref.items():
        order = (index[layer].long() - 3 * tpf)                      # [B, n]: the slot's token in the pass
        for row in range(2):
            assert torch.allclose(kv[layer, 0, row], k[row, order[row]], atol=1e-5)
            assert torch.allclose(kv[layer, 1, row], v[row, order[row]], atol=1e-5)


def test_recache_changes_the_video_only_after_the_change_and_is_a_no_op_for_the_same_prompt(runner, monkeypatch):
    """Keep-all, a change at frame 6: re-caching to the *same* prompt recomputes the same K/V (the video is
    unchanged); to another prompt it leaves the frames before the change alone and changes those after."""
    taken = snapshots(monkeypatch)
    plain = run(runner, PromptTimeline((0, 6), (A, A)), policy="keep_all", budget=None).latents
    same = run(runner, PromptTimeline((0, 6), (A, A)), policy="keep_all", budget=None, recache=True).latents
    assert taken and taken[-1][0] == 2                               # both written chunks ran again
    assert torch.allclose(same, plain, atol=1e-5)
    changed = run(runner, PromptTimeline((0, 6), (A, B)), policy="keep_all", budget=None).latents
    recached = run(runner, PromptTimeline((0, 6), (A, B)), policy="keep_all", budget=None, recache=True).latents
    assert torch.equal(recached[:, :, :6], changed[:, :, :6])
    assert not torch.allclose(recached[:, :, 6:], changed[:, :, 6:], atol=1e-4)


def test_recache_waits_for_the_first_chunk_wholly_after_a_change_and_refuses_per_frame_prompts(runner, monkeypatch):
    taken = snapshots(monkeypatch)
    run(runner, PromptTimeline((0, 4), (A, B)), recache=True)       # chunk [3, 6) straddles: re-caching at 6
    assert len(taken) == 1 and int(taken[0][2].max()) // 16 == 5
    with pytest.raises(ValueError, match="per-frame prompts change every frame"):
        run(runner, torch.randn(1, 12, 7, 4096), recache=True)


def test_recache_works_on_8_bit_storage_and_with_guidance(runner, monkeypatch):
    taken = snapshots(monkeypatch)
    out = run(runner, PromptTimeline((0, 9), (A, B)), recache=True, kv_storage="int8", negative=torch.zeros(1, 3, 4096),
              cfg=2.0).latents
    assert len(taken) == 1 and taken[0][1].dtype == torch.int8 and torch.isfinite(out).all()
    base = run(runner, PromptTimeline((0, 9), (A, B)), kv_storage="int8", negative=torch.zeros(1, 3, 4096), cfg=2.0).latents
    assert torch.equal(out[:, :, :9], base[:, :, :9]) and not torch.allclose(out[:, :, 9:], base[:, :, 9:], atol=1e-4)
