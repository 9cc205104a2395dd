"""The salience head: size, policy slot, file format and every refusal."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from pafu_core.cache import CacheBudget
from pafu_core.policies import PaFuSalience
from pafu_core.salience import HeadConfig, SalienceHead, load_head, save_head
from pafu_core.sampler import SamplerConfig, sample_video
from pafu_core.wan import WAN21_1_3B, WanDiT, param_count


def tiny_head(runner, **kw):
    torch.manual_seed(0)
    return SalienceHead(HeadConfig(num_layers=runner.num_layers, dim=runner.dim, num_heads=runner.num_heads, **kw))


def test_head_is_under_one_percent_of_wan_1_3b():
    with torch.device("meta"):
        backbone = param_count(WanDiT(WAN21_1_3B))
        head = SalienceHead(HeadConfig(num_layers=30, dim=1536, num_heads=12, input_features=("keys", "values")))
    assert head.param_count() < 0.01 * backbone


@pytest.mark.parametrize("features", [("keys",), ("keys", "values"), ("hidden",), ("keys", "values", "hidden")])
def test_head_scores_all_layers_at_once_and_drives_the_cache(runner, context, features):
    head = tiny_head(runner, input_features=features, per_head=features == ("hidden",))
    res = sample_video(runner, context, num_frames=9, height=8, width=8, policy=PaFuSalience(head),
                       budget=CacheBudget(4), config=SamplerConfig(chunk_frames=2))
    assert res.report.chunks[-1].tokens_per_layer == 64
    keys = torch.randn(runner.num_layers, 1, 5, runner.num_heads, runner.head_dim)
    hidden = torch.randn(runner.num_layers, 1, 5, runner.dim)
    scores = head.score_tokens(keys, keys, hidden)
    assert scores.shape == (runner.num_layers, 1, 5)
    # batched over layers == each layer's own MLP
    x = head.features(keys, keys, hidden)
    for layer in range(runner.num_layers):
        h = torch.nn.functional.gelu(x[layer] @ head.w1[layer] + head.b1[layer])
        ref = (h @ head.w2[layer] + head.b2[layer]).mean(-1)
        assert torch.allclose(scores[layer, 0], ref, atol=1e-5)


def test_round_trip_is_bit_exact(tmp_path, runner):
    head = tiny_head(runner, input_features=("keys", "hidden"), hidden=16)
    head.config.training = {"steps": 3, "eval": {"spearman": 0.5}}
    path = tmp_path / "head.safetensors"
    save_head(head, path)
    loaded = load_head(path)
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.equal(getattr(loaded, name), getattr(head, name))
    assert loaded.config.input_features == ("keys", "hidden")
    assert loaded.config.training["eval"]["spearman"] == 0.5
    loaded.check_backbone(runner)


def test_head_for_another_backbone_is_refused(runner):
    head = SalienceHead(HeadConfig(num_layers=30, dim=1536, num_heads=12))
    with pytest.raises(ValueError, match="dim is 1536 in the head but 128 in the model"):
        head.check_backbone(runner)
    other_depth = SalienceHead(HeadConfig(num_layers=5, dim=128, num_heads=1))
    with pytest.raises(ValueError, match="num_layers is 5 in the head but 2"):
        other_depth.check_backbone(runner)


def test_truncated_file_refused(tmp_path, runner):
    path = tmp_path / "head.safetensors"
    save_head(tiny_head(runner), path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_head(path)
    path.write_bytes(data[:5])
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_head(path)


def test_file_without_metadata_refused(tmp_path, runner):
    path = tmp_path / "plain.safetensors"
    head = tiny_head(runner)
    save_file({n: getattr(head, n).detach() for n in ("w1", "b1", "w2", "b2")}, str(path))
    with pytest.raises(ValueError, match="no PaFu metadata"):
        load_head(path)


def test_pickle_and_torch_files_refused(tmp_path, runner):
    head = tiny_head(runner)
    pt = tmp_path / "head.pt"
    torch.save(head.state_dict(), pt)
    with pytest.raises(ValueError, match="pickle"):
        load_head(pt)
    pk = tmp_path / "head.pkl"
    pk.write_bytes(pickle.dumps({"w1": [1, 2, 3]}))
    with pytest.raises(ValueError, match="pickle"):
        load_head(pk)


def test_edited_metadata_refused(tmp_path, runner):
    path = tmp_path / "head.safetensors"
    head = tiny_head(runner)
    save_head(head, path)
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["pafu"])
    for field, value, match in [("format_version", 99, "format_version"), ("model_family", "sdxl", "model_family")]:
        bad = dict(meta, **{field: value})
        save_file({n: getattr(head, n).detach() for n in ("w1", "b1", "w2", "b2")}, str(path),
                  metadata={"pafu": json.dumps(bad)})
        with pytest.raises(ValueError, match=match):
            load_head(path)
    bad = dict(meta, backbone=dict(meta["backbone"], dim=256))
    save_file({n: getattr(head, n).detach() for n in ("w1", "b1", "w2", "b2")}, str(path),
              metadata={"pafu": json.dumps(bad)})
    with pytest.raises(ValueError, match="fingerprint"):
        load_head(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="not found"):
        load_head("/nonexistent/head.safetensors")
