"""Wan 2.1 layout, RoPE and checkpoint loading."""

import math

import pytest
import torch
from safetensors.torch import save_file

from pafu_core.ops import apply_rope, rope_angles
from pafu_core.wan import (WAN21_1_3B, WanConfig, WanDiT, init_weights_, load_wan_checkpoint,
                           load_wan_state_dict, param_count, strip_checkpoint_prefixes, tiny_config)

WAN_KEYS = ["patch_embedding.weight", "patch_embedding.bias", "text_embedding.0.weight",
            "text_embedding.2.weight", "time_embedding.0.weight", "time_embedding.2.weight",
            "time_projection.1.weight", "blocks.0.self_attn.q.weight", "blocks.0.self_attn.k.weight",
            "blocks.0.self_attn.v.weight", "blocks.0.self_attn.o.weight", "blocks.0.self_attn.norm_q.weight",
            "blocks.0.self_attn.norm_k.weight", "blocks.0.cross_attn.q.weight", "blocks.0.cross_attn.norm_k.weight",
            "blocks.0.norm3.weight", "blocks.0.norm3.bias", "blocks.0.ffn.0.weight", "blocks.0.ffn.2.weight",
            "blocks.0.modulation", "head.head.weight", "head.modulation"]


def test_layout_matches_wan21_names_and_1_3b_shapes():
    with torch.device("meta"):
        model = WanDiT(WAN21_1_3B)
    sd = model.state_dict()
    for key in WAN_KEYS:
        assert key in sd, key
    assert sd["patch_embedding.weight"].shape == (1536, 16, 1, 2, 2)
    assert sd["blocks.0.ffn.0.weight"].shape == (8960, 1536)
    assert sd["blocks.29.modulation"].shape == (1, 6, 1536)
    assert sd["head.modulation"].shape == (1, 2, 1536)
    assert sd["head.head.weight"].shape == (64, 1536)
    assert sd["time_projection.1.weight"].shape == (6 * 1536, 1536)
    assert not any(k.startswith("blocks.30.") for k in sd)
    assert 1.2e9 < param_count(model) < 1.5e9     # Wan 2.1 "1.3B"
    assert WAN21_1_3B.tokens_per_frame(60, 104) == 1560


def test_config_inferred_from_state_dict():
    cfg = tiny_config(dim=256, num_layers=3)
    sd = WanDiT(cfg).state_dict()
    assert WanConfig.from_state_dict(sd) == cfg


def test_rope_matches_complex_reference():
    """Wan 2.1 builds RoPE with torch.polar over per-axis frequency tables; compare."""
    d, f0, frames, h, w = 128, 5, 3, 4, 6
    axes = [d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)]
    tables = [torch.outer(torch.arange(64, dtype=torch.float64),
                          1.0 / 10000 ** (torch.arange(0, a, 2, dtype=torch.float64) / a)) for a in axes]
    ft, fh, fw = [torch.polar(torch.ones_like(t), t) for t in tables]
    ref = torch.cat([ft[f0:f0 + frames].view(frames, 1, 1, -1).expand(frames, h, w, -1),
                     fh[:h].view(1, h, 1, -1).expand(frames, h, w, -1),
                     fw[:w].view(1, 1, w, -1).expand(frames, h, w, -1)], dim=-1).reshape(frames * h * w, 1, -1)
    x = torch.randn(2, frames * h * w, 3, d, dtype=torch.float64)
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(2, -1, 3, d // 2, 2)) * ref).flatten(3)
    angles = rope_angles(d, torch.arange(f0, f0 + frames), h, w)
    got = apply_rope(x.float(), torch.cos(angles), torch.sin(angles))
    assert torch.allclose(got, expected.float(), atol=1e-4)
    # the inverse rotation recovers the input
    back = apply_rope(got, torch.cos(angles), -torch.sin(angles))
    assert torch.allclose(back, x.float(), atol=1e-4)


def test_state_dict_round_trip(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_model.state_dict(), str(path))
    loaded = load_wan_checkpoint(path)
    assert loaded.config == tiny_model.config
    for (k, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("prefix", ["model.", "generator_ema.model.", "model.diffusion_model.",
                                    "generator.model._fsdp_wrapped_module."])
def test_prefixed_ar_checkpoint_layouts_load(prefix, tiny_model):
    sd = {prefix + k: v for k, v in tiny_model.state_dict().items()}
    fresh = WanDiT(tiny_model.config)
    load_wan_state_dict(fresh, sd)
    assert torch.equal(fresh.head.modulation, tiny_model.head.modulation)


def test_ema_generator_wins_over_plain_generator(tiny_model, tmp_path):
    sd = tiny_model.state_dict()
    both = {**{"generator." + k: torch.zeros_like(v) for k, v in sd.items()},
            **{"generator_ema." + k: v for k, v in sd.items()}}
    assert set(strip_checkpoint_prefixes(both)) == set(sd)
    fresh = WanDiT(tiny_model.config)
    load_wan_state_dict(fresh, both)
    assert torch.equal(fresh.blocks[0].self_attn.q.weight, tiny_model.blocks[0].self_attn.q.weight)
    # a torch .pt file shaped like Self-Forcing's {"generator_ema": {...}} loads too (weights_only)
    path = tmp_path / "ckpt.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in sd.items()}, "step": 7}, path)
    assert load_wan_checkpoint(path).config == tiny_model.config


def test_missing_and_wrong_shaped_keys_are_named(tiny_model):
    sd = dict(tiny_model.state_dict())
    del sd["blocks.1.ffn.2.bias"]
    sd["head.modulation"] = torch.zeros(1, 3, 128)
    sd["blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_wan_state_dict(WanDiT(tiny_model.config), sd)
    msg = str(err.value)
    assert "blocks.1.ffn.2.bias" in msg and "missing" in msg
    assert "head.modulation" in msg and "(1, 3, 128)" in msg
    assert "blocks.0.extra.weight" in msg and "unexpected" in msg


def test_non_wan_state_dict_refused():
    with pytest.raises(ValueError, match="not a Wan 2.1 state dict"):
        WanConfig.from_state_dict({"conv.weight": torch.zeros(1)})


def test_init_is_deterministic():
    a = init_weights_(WanDiT(tiny_config()), seed=1)
    b = init_weights_(WanDiT(tiny_config()), seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert math.isfinite(float(a.blocks[0].modulation.detach().sum()))


def test_convert_cli_turns_a_self_forcing_pt_into_causal_ar_safetensors(tmp_path, tiny_model):
    import json
    import subprocess
    import sys

    from safetensors import safe_open
    src = tmp_path / "self_forcing_dmd.pt"
    sd = tiny_model.state_dict()
    torch.save({"generator_ema": {"model." + k: v for k, v in sd.items()},
                "generator": {"model." + k: torch.zeros_like(v) for k, v in sd.items()}, "step": 100}, src)
    dst = tmp_path / "self_forcing_dmd.safetensors"
    root = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "pafu_core.convert", str(src), str(dst), "--dtype", "bf16"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "marked causal-AR" in proc.stdout
    with safe_open(str(dst), "pt") as fh:
        assert json.loads(fh.metadata()["config"]) == {"transformer": {"causal_ar": True}}
        assert set(fh.keys()) == set(sd)
        assert fh.get_tensor("head.modulation").dtype == torch.bfloat16
        assert torch.equal(fh.get_tensor("blocks.0.self_attn.q.weight"), sd["blocks.0.self_attn.q.weight"].bfloat16())
    bad = tmp_path / "list.pt"
    torch.save([1, 2], bad)
    proc = subprocess.run([sys.executable, "-m", "pafu_core.convert", str(bad), str(tmp_path / "x.safetensors")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "list.pt" in proc.stderr and "Traceback" not in proc.stderr
