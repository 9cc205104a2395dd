"""The salience head: size, policy slot, file format and every refusal."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from pafu_core.budget import CacheBudget
from pafu_core.policies import PaFuSalience
from pafu_core.salience import HeadConfig, SalienceHead, load_head, save_head
from pafu_core.sampler import sample_video
from pafu_core.schedule import SamplerConfig
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
@pytest.mark.parametrize("rescore", [False, True])
def test_head_scores_layer_by_layer_and_drives_the_cache(runner, context, features, rescore):
    head = tiny_head(runner, input_features=features, per_head=features == ("hidden",), rescore=rescore)
    res = sample_video(runner, context, num_frames=9, height=8, width=8, policy=PaFuSalience(head),
                       budget=CacheBudget(4), config=SamplerConfig(chunk_frames=2))
    assert res.report.chunks[-1].tokens_per_layer == 64
    keys = torch.randn(runner.num_layers, 1, 5, runner.num_heads, runner.head_dim)
    hidden = torch.randn(runner.num_layers, 1, 5, runner.dim)
    x = head.features(keys, keys, hidden)
    batched = head(x.flatten(1, 2))            # all layers at once (training) == one layer at a time (cache)
    for layer in range(runner.num_layers):
        one = head.entry_scores(layer, keys[layer], keys[layer], hidden[layer])
        h = torch.nn.functional.gelu(x[layer] @ head.w1[layer] + head.b1[layer])
        ref = (h @ head.w2[layer] + head.b2[layer]).mean(-1)
        assert torch.allclose(one, ref, atol=1e-5) and torch.allclose(batched[layer], ref[0], atol=1e-5)


def test_a_monotone_age_never_turns_around_and_survives_a_round_trip(tmp_path):
    """age_form="monotone": the MLP reads entry and newer only; age subtracts a learned, never negative
    multiple of log(1 + age / age_unit) per layer, so a token only loses rank as it ages, at any age."""
    head = SalienceHead(HeadConfig(num_layers=2, dim=8, num_heads=1, rescore=True, age_unit=4.0, age_form="monotone"))
    assert head.r1.shape == (2, 2, 16) and head.age_w.shape == (2, 1, 1)
    with torch.no_grad():
        head.age_w.copy_(torch.tensor([-3.0, 2.0]).view(2, 1, 1))
    entry, newer = torch.randn(2, 1, 1).expand(2, 1, 9), torch.randn(2, 1, 1).expand(2, 1, 9)   # one token, nine ages
    age = torch.tensor([0, 1, 10, 36, 72, 360, 3600, 36000, 1e6]).view(1, 1, 9).expand(2, 1, 9)
    got = head.rescore(entry, newer, age)
    assert (got[..., 1:] < got[..., :-1]).all()
    base = head.rescore(entry, newer, torch.zeros_like(age))
    want = base - torch.nn.functional.softplus(head.age_w).view(2, 1, 1) * torch.log1p(age / 4.0)
    assert torch.allclose(got, want)
    save_head(head, tmp_path / "h.safetensors")
    again = load_head(tmp_path / "h.safetensors")
    assert again.config.age_form == "monotone" and torch.equal(again.rescore(entry, newer, age), got)
    with pytest.raises(ValueError, match="age_form must be one of"):
        HeadConfig(num_layers=2, dim=8, num_heads=1, age_form="cubic")
    with pytest.raises(ValueError, match="needs another re-scoring input besides age"):
        HeadConfig(num_layers=2, dim=8, num_heads=1, rescore=True, rescore_inputs=("age",), age_form="monotone")


def test_rescorer_is_a_per_layer_mlp_of_entry_newer_and_age():
    head = SalienceHead(HeadConfig(num_layers=2, dim=8, num_heads=1, rescore=True, age_unit=4.0))
    entry, newer, age = torch.randn(2, 3, 7), torch.randn(2, 3, 7), torch.arange(7.0).expand(2, 3, 7)
    got = head.rescore(entry, newer, age)
    for layer in range(2):
        x = torch.stack([entry[layer], newer[layer], age[layer] / 4.0], dim=-1)
        ref = torch.nn.functional.gelu(x @ head.r1[layer] + head.rb1[layer]) @ head.r2[layer] + head.rb2[layer]
        assert torch.allclose(got[layer], ref[..., 0], atol=1e-6)
    no_age = SalienceHead(HeadConfig(num_layers=2, dim=8, num_heads=1, rescore=True, rescore_inputs=("entry", "newer")))
    assert no_age.r1.shape == (2, 2, 16)
    older = age + 100
    assert torch.equal(no_age.rescore(entry, newer, age), no_age.rescore(entry, newer, older))
    with pytest.raises(RuntimeError, match="rescore is off"):
        SalienceHead(HeadConfig(num_layers=2, dim=8, num_heads=1)).rescore(entry, newer, age)


@pytest.mark.parametrize("rescore", [False, True])
def test_round_trip_is_bit_exact(tmp_path, runner, rescore):
    head = tiny_head(runner, input_features=("keys", "hidden"), hidden=16, rescore=rescore, age_unit=36.0,
                     recency=0.0 if rescore else 0.25)
    head.config.training = {"steps": 3, "eval": {"spearman": 0.5}}
    path = tmp_path / "head.safetensors"
    save_head(head, path)
    loaded = load_head(path)
    for name in head.config.tensor_shapes():
        assert torch.equal(getattr(loaded, name), getattr(head, name))
    assert loaded.config == head.config
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


def test_generation_refuses_a_head_of_another_depth_before_it_starts(runner, context):
    deeper = SalienceHead(HeadConfig(num_layers=runner.num_layers + 2, dim=runner.dim, num_heads=runner.num_heads))
    shallower = SalienceHead(HeadConfig(num_layers=runner.num_layers - 1, dim=runner.dim, num_heads=runner.num_heads))
    for head, layers in ((deeper, runner.num_layers + 2), (shallower, runner.num_layers - 1)):
        calls = []
        with pytest.raises(ValueError, match=f"num_layers is {layers} in the head but {runner.num_layers}"):
            sample_video(runner, context, num_frames=9, height=8, width=8, policy=PaFuSalience(head),
                         budget=CacheBudget(4), config=SamplerConfig(chunk_frames=2),
                         step_callback=lambda *a: calls.append(a))
        assert not calls        # refused while planning: not one denoising step ran


def test_truncated_file_refused(tmp_path, runner):
    path = tmp_path / "head.safetensors"
    save_head(tiny_head(runner), path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_head(path)
    path.write_bytes(data[:5])
    with pytest.raises(ValueError, match="too short"):
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


@pytest.mark.parametrize("first_bytes", [b"\x80\x02", b"\x80\x04", b"PK"])
def test_a_head_whose_header_length_starts_like_a_pickle_loads(tmp_path, runner, first_bytes):
    """A safetensors file begins with its header length; when that reads like a pickle opcode or a zip
    signature (one file in a few hundred), it is still a safetensors file and must load."""
    from safetensors import safe_open
    src = tmp_path / "src.safetensors"
    save_head(tiny_head(runner), src)
    with safe_open(str(src), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    path = tmp_path / "padded.safetensors"
    save_file(tensors, str(path), metadata={**meta, "pad": ""})
    n0 = int.from_bytes(path.read_bytes()[:8], "little")
    target = int.from_bytes(first_bytes, "little")
    target += -(-(n0 - target) // 65536) * 65536 if target < n0 else 0
    for pad in range(max(0, target - n0 - 16), target - n0 + 16):     # the header is padded to 8 bytes
        save_file(tensors, str(path), metadata={**meta, "pad": "x" * pad})
        if path.read_bytes()[:2] == first_bytes:
            break
    assert path.read_bytes()[:2] == first_bytes
    loaded = load_head(path)
    assert all(torch.equal(getattr(loaded, k), v) for k, v in tensors.items())


def test_edited_metadata_refused(tmp_path, runner):
    path = tmp_path / "head.safetensors"
    head = tiny_head(runner)
    save_head(head, path)
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["pafu"])
    for field, value, match in [("format_version", 99, "format_version"), ("model_family", "sdxl", "model_family"),
                                ("recency", -1.0, "recency"), ("age_unit", 0.0, "age_unit")]:
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


def test_a_head_is_never_moved_in_place():
    """ComfyUI caches the loader's head and may share it between graphs: a device copy is made once and
    kept, the loaded object stays where it was. (On the CPU, only the 'meta' device is another device.)"""
    head = SalienceHead(HeadConfig(num_layers=2, dim=8, num_heads=1))
    assert head.on_device("cpu") is head
    moved = head.on_device("meta")
    assert moved is not head and moved is head.on_device("meta")
    assert next(moved.parameters()).device.type == "meta" and next(head.parameters()).device.type == "cpu"
