"""Cache settings, Hub loading against a local mirror layout (never the network), plots, CFG."""

import os

import numpy as np
import pytest
import torch

from pafu_core.cache import CacheBudget
from pafu_core.hub import download_head, hub_local_dir
from pafu_core.plots import render_curves, render_token_heatmaps
from pafu_core.policies import make_policy
from pafu_core.salience import HeadConfig, SalienceHead, save_head
from pafu_core.sampler import SamplerConfig, sample_video
from pafu_core.settings import CacheSettings


def test_settings_resolve_budgets_and_describe_memory():
    s = CacheSettings(policy="pafu", budget=0.25)
    assert s.budget_tokens(1560) == 8190
    text = s.describe(1560, 30, 12, 128)
    assert "8190 tokens per layer (5.25 latent frames)" in text and "1.41 GiB" in text
    assert CacheSettings(policy="keep_all").cache_budget() is None
    assert "TOO SMALL" in CacheSettings(policy="fifo", budget=2, budget_unit="latent_frames").describe(1560, 30, 12, 128)
    with pytest.raises(ValueError, match="unknown policy"):
        CacheSettings(policy="lru")
    with pytest.raises(ValueError, match="budget_unit"):
        CacheSettings(budget_unit="GB")


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_offline_uses_a_local_copy_and_explains_a_missing_one(tmp_path, offline):
    with pytest.raises(RuntimeError, match="offline mode is on.*owner/heads/h.safetensors"):
        download_head("owner/heads", "h.safetensors", str(tmp_path))
    local = hub_local_dir(str(tmp_path), "owner/heads")
    os.makedirs(local, exist_ok=True)
    head = SalienceHead(HeadConfig(num_layers=2, dim=128, num_heads=1))
    save_head(head, os.path.join(local, "h.safetensors"))
    assert download_head("owner/heads", "h.safetensors", str(tmp_path)) == os.path.join(local, "h.safetensors")


def test_hub_cache_mirror_layout_is_found_offline(tmp_path, offline, monkeypatch):
    """A file in the Hub's own cache layout (models--owner--name/snapshots/<rev>/...) is used offline."""
    from huggingface_hub import hf_hub_download
    cache = tmp_path / "hub"
    snap = cache / "models--owner--heads" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (cache / "models--owner--heads" / "refs").mkdir()
    (cache / "models--owner--heads" / "refs" / "main").write_text("a" * 40)
    save_head(SalienceHead(HeadConfig(num_layers=2, dim=128, num_heads=1)), snap / "h.safetensors")
    assert hf_hub_download("owner/heads", "h.safetensors", cache_dir=str(cache)) == str(snap / "h.safetensors")


def test_hub_input_errors(tmp_path):
    with pytest.raises(ValueError, match="owner/name"):
        download_head("not a repo", "h.safetensors", str(tmp_path))
    with pytest.raises(ValueError, match=".safetensors"):
        download_head("owner/heads", "h.pt", str(tmp_path))


def test_plots_draw_every_rollout(runner, context):
    reps = [sample_video(runner, context, num_frames=9, height=8, width=8, policy=make_policy(p),
                         budget=b).report for p, b in (("keep_all", None), ("fifo", CacheBudget(3)))]
    img = render_curves(reps)
    assert img.shape == (420, 640, 3) and img.dtype == np.uint8
    orange, blue = np.array([230, 85, 13]), np.array([49, 130, 189])
    assert (np.abs(img - orange).sum(-1) == 0).sum() > 50 and (np.abs(img - blue).sum(-1) == 0).sum() > 50
    heat = render_token_heatmaps(reps[1], reps[1].grid_hw, scale=2)
    assert heat.shape == (9, 8, 8, 3)
    # fifo at 3 frames kept only the last 3 frames: their map is bright, the first frames' dark
    assert heat[-1].mean() > heat[0].mean() + 0.3


def test_cfg_needs_negative_and_one_means_off(runner, context):
    kw = dict(num_frames=6, height=8, width=8, policy=make_policy("fifo"), budget=CacheBudget(3),
              config=SamplerConfig(seed=1))
    plain = sample_video(runner, context, **kw).latents
    assert torch.equal(plain, sample_video(runner, context, negative=torch.zeros(1, 3, 4096), cfg=1.0, **kw).latents)
    with pytest.raises(ValueError, match="needs negative"):
        sample_video(runner, context, cfg=3.0, **kw)
    guided = sample_video(runner, context, negative=torch.zeros(1, 3, 4096), cfg=3.0, **kw)
    assert not torch.allclose(guided.latents, plain)
    assert guided.report.chunks[-1].kv_bytes == 2 * sample_video(runner, context, **kw).report.chunks[-1].kv_bytes


def test_head_scores_in_layer_groups_within_a_memory_limit(runner):
    head = SalienceHead(HeadConfig(num_layers=runner.num_layers, dim=128, num_heads=1, input_features=("keys",)))
    keys = torch.randn(runner.num_layers, 2, 5, 1, 128)
    assert torch.allclose(head.score_tokens(keys, None, None, max_bytes=1), head.score_tokens(keys, None, None),
                          atol=1e-6)
