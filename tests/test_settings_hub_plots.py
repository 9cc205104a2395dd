"""Cache settings, Hub loading against a local mirror layout (never the network), plots, CFG."""

import os

import numpy as np
import pytest
import torch

from pafu_core.budget import CacheBudget
from pafu_core.hub import check_revision, download_head, hub_local_dir
from pafu_core.plots import render_curves, render_token_heatmaps
from pafu_core.policies import make_policy
from pafu_core.salience import HeadConfig, SalienceHead, save_head
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig
from pafu_core.settings import CacheSettings

WAN = dict(tokens_per_frame=1560, num_layers=30, num_heads=12, head_dim=128)


def test_settings_resolve_budgets_and_describe_memory():
    s = CacheSettings(policy="pafu", budget=0.25)
    assert s.budget_tokens(1560, chunk_tokens=4680, bytes_per_token=1) == 8190
    text = s.describe(*WAN.values())
    assert "8190 tokens per layer (5.25 latent frames kept)" in text and "K/V held 1.41 GiB" in text
    assert "keep_all fills the same memory after 8 latent frames" in text     # (8190 + 4680) / 1560
    assert CacheSettings(policy="keep_all").cache_budget() is None
    assert "TOO SMALL" in CacheSettings(policy="fifo", budget=2, budget_unit="latent_frames").describe(*WAN.values())
    with pytest.raises(ValueError, match="unknown policy"):
        CacheSettings(policy="lru")
    with pytest.raises(ValueError, match="budget_unit"):
        CacheSettings(budget_unit="GB")
    with pytest.raises(ValueError, match="finite"):
        CacheSettings(budget=float("nan"))


def test_gib_budget_and_8_bit_storage_describe_what_fits():
    bf16 = CacheSettings(policy="pafu", budget=4.0, budget_unit="GiB").describe(*WAN.values())
    int8 = CacheSettings(policy="pafu", budget=4.0, budget_unit="GiB", kv_storage="int8").describe(*WAN.values())
    # 4 GiB of slots: 23301 tokens in bf16 (184320 B each) or 45886 in int8 (93600 B), minus one chunk
    assert "18621 tokens per layer (11.94 latent frames kept)" in bf16
    assert "int8 K/V" in int8 and "41206 tokens per layer" in int8
    assert "keep_all fills the same memory after 14 latent frames" in bf16


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_offline_uses_a_local_copy_and_explains_a_missing_one(tmp_path, offline):
    with pytest.raises(RuntimeError, match="offline mode is on.*owner/heads/h.safetensors.*No revision of it"):
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
    for bad in ("not a repo", "my org/heads", "a--b/c", "owner/..", "owner/name/extra"):
        with pytest.raises(ValueError, match="owner/name"):
            download_head(bad, "h.safetensors", str(tmp_path))
    with pytest.raises(ValueError, match=".safetensors"):
        download_head("owner/heads", "h.pt", str(tmp_path))
    with pytest.raises(ValueError, match=".safetensors"):
        download_head("owner/heads", "../../h.safetensors", str(tmp_path))
    for bad in ("../../..", "main branch", "/etc", "v1/", "-x"):
        with pytest.raises(ValueError, match="revision"):
            check_revision(bad)
    assert check_revision("") == "main" and check_revision("a" * 40) == "a" * 40 and check_revision("v1.0") == "v1.0"


def test_offline_hub_honours_the_revision(tmp_path, offline):
    """A file downloaded for one revision is never returned for another; the refusal says what is on disk."""
    main = hub_local_dir(str(tmp_path), "owner/heads", "main")
    os.makedirs(main)
    save_head(SalienceHead(HeadConfig(num_layers=2, dim=128, num_heads=1)), os.path.join(main, "h.safetensors"))
    assert download_head("owner/heads", "h.safetensors", str(tmp_path)) == os.path.join(main, "h.safetensors")
    with pytest.raises(RuntimeError, match="revision 'v2'.*On disk: revision main"):
        download_head("owner/heads", "h.safetensors", str(tmp_path), revision="v2")
    with pytest.raises(ValueError, match="revision"):
        download_head("owner/heads", "h.safetensors", str(tmp_path), revision="../../..")


def test_plots_draw_every_rollout_and_mark_the_budget(runner, context):
    reps = [sample_video(runner, context, num_frames=9, height=8, width=8, policy=make_policy(p),
                         budget=b).report for p, b in (("keep_all", None), ("fifo", CacheBudget(3)))]
    img = render_curves(reps)
    assert img.shape == (560, 900, 3) and img.dtype == np.uint8
    c0, c1 = np.array([31, 119, 180]), np.array([255, 127, 14])          # matplotlib's C0 and C1
    assert (np.abs(img.astype(int) - c0).sum(-1) < 30).sum() > 200
    assert (np.abs(img.astype(int) - c1).sum(-1) < 30).sum() > 200
    heat = render_token_heatmaps(reps[1], reps[1].grid_hw, scale=2)
    assert heat.shape == (9, 8, 8, 3)
    # fifo at 3 frames kept only the last 3 frames: their map is bright, the first frames' dark
    assert heat[-1].mean() > heat[0].mean() + 0.3


def test_token_map_refuses_frames_of_another_video(runner, context):
    rep = sample_video(runner, context, num_frames=9, height=8, width=8, policy=make_policy("fifo"),
                       budget=CacheBudget(3)).report
    ok = render_token_heatmaps(rep, rep.grid_hw, torch.rand(9, 32, 32, 3))
    assert ok.shape == (9, 32, 32, 3)
    assert render_token_heatmaps(rep, rep.grid_hw, torch.rand(33, 16, 16, 3)).shape[0] == 33   # 4x - 3 decoded
    with pytest.raises(ValueError, match="9 latent frames"):
        render_token_heatmaps(rep, rep.grid_hw, torch.rand(10, 32, 32, 3))
    with pytest.raises(ValueError, match="aspect ratio"):
        render_token_heatmaps(rep, rep.grid_hw, torch.rand(9, 32, 64, 3))


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


BAD_BUDGETS = {"NaN": dict(budget=float("nan")), "below one chunk": dict(budget=2, budget_unit="latent_frames"),
               "an unknown unit": dict(budget_unit="seconds"), "pafu without a head": dict(policy="pafu")}


@pytest.mark.parametrize("case", BAD_BUDGETS, ids=list(BAD_BUDGETS))
def test_a_bad_budget_gets_the_same_sentence_on_both_paths(runner, context, case):
    """One validation path: the all-in-one sampler and the core-AR patch open their caches through the same
    settings and the same factory, so a bad budget reads the same on both."""
    from pafu_core.native import NativeKVCaches
    from pafu_core.settings import CacheSettings

    def sampler_path():
        s = CacheSettings(**{"policy": "fifo", **BAD_BUDGETS[case]})
        sample_video(runner, context, num_frames=9, height=8, width=8, policy=s.build_policy(None),
                     budget=s.cache_budget(), config=SamplerConfig(chunk_frames=3))

    def patch_path():
        s = CacheSettings(**{"policy": "fifo", **BAD_BUDGETS[case]})
        caches = NativeKVCaches(policy=s.build_policy(None), budget=s.cache_budget(), num_layers=runner.num_layers,
                                batch=1, num_heads=runner.num_heads, head_dim=runner.head_dim, max_seq_len=9 * 16,
                                device="cpu", dtype=torch.float32)
        caches.begin_pass(0, 3, 16, (4, 4), False, kv_caches=[])

    messages = []
    for path in (sampler_path, patch_path):
        with pytest.raises(ValueError) as err:
            path()
        messages.append(str(err.value))
    assert messages[0] == messages[1] and len(messages[0].splitlines()) == 1, messages
