"""Node classes executed in-process against the real ComfyUI modules (no server, no browser).

The strongest check of the adapter: ComfyUI's own ``WanModel`` built by ComfyUI's loader from the
tiny world's weights, driven through ComfyUI's attention / RoPE / casting (``ComfyOps``), gives the
same video as our ``WanDiT`` with plain PyTorch ops.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from .conftest import PACK, ROOT, run


def test_schemas_are_valid_v3(pack):
    _, nodes = pack
    for node_id, cls in nodes.items():
        schema = cls.define_schema()
        schema.validate()
        assert node_id.startswith("PaFu") and " " not in node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id}"


def test_comfyui_wan_path_equals_pafu_core_path(pack):
    module, nodes = pack
    core = sys.modules[PACK + ".pafu_core"]
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    model = run(nodes["PaFuTinyWorldModel"])[0]
    # ComfyUI's own Wan class: causal-AR from 0.27 on (the file's metadata says so), plain WanModel before
    assert type(model.model.diffusion_model).__name__ in ("WanModel", "CausalWanModel")
    (model,) = ModelSamplingSD3().patch(model, 5.0)
    positive, latent, _ = run(nodes["PaFuTinyWorldScene"], style="teal", latent_frames=12, batch_size=1)
    cache = run(nodes["PaFuKVCacheBudget"], policy="fifo", budget=6, budget_unit="latent_frames", sink_frames=0)[0]
    lat, report = run(nodes["PaFuARChunkSampler"], model=model, positive=positive, latent=latent, cache=cache,
                      seed=3, chunk_frames=3, timesteps="1000,750,500,250", context_timestep=0.0)
    assert report.chunks[-1].tokens_per_layer == 6 * 16
    # the same rollout through our own Wan module tree and plain torch ops
    ours = core.wan.load_wan_checkpoint(core.world.assets.STUDENT).eval()
    res = core.sampler.sample_video(core.adapter.WanChunkRunner(ours), positive[0][0], num_frames=12, height=8,
                                    width=8, policy=core.policies.make_policy("fifo"),
                                    budget=core.cache.CacheBudget(6), config=core.sampler.SamplerConfig(seed=3))
    import comfy.latent_formats
    comfy_space = comfy.latent_formats.Wan21().process_in(lat["samples"])
    assert torch.allclose(comfy_space, res.latents, atol=2e-3, rtol=1e-3), (comfy_space - res.latents).abs().max()


def plain_wan(core):
    """The tiny world's weights as ComfyUI's bidirectional WanModel (no causal-AR metadata)."""
    import comfy.sd
    import comfy.utils
    sd = comfy.utils.load_torch_file(core.world.assets.STUDENT, safe_load=True)
    return comfy.sd.load_diffusion_model_state_dict(sd).model.diffusion_model


def test_comfy_ops_rope_matches_ours(pack):
    ops_mod = sys.modules[PACK + ".nodes.comfy_ops"]
    core = sys.modules[PACK + ".pafu_core"]
    dm = plain_wan(core)
    ops = ops_mod.ComfyOps(dm, torch.float32)
    x = torch.randn(2, 48, dm.num_heads, dm.dim // dm.num_heads)
    cos, sin = core.ops.TorchOps().rope_freqs(dm, 5, (3, 4, 4), "cpu")
    assert torch.allclose(ops.apply_rope(x, ops.rope_freqs(dm, 5, (3, 4, 4), "cpu")), core.ops.apply_rope(x, cos, sin),
                          atol=1e-5)


def test_our_layer_math_equals_comfyui_wan_forward(pack):
    """An independent reference: ComfyUI's own WanModel.forward against our runner over the same module
    tree (bidirectional, whole clip)."""
    ops_mod = sys.modules[PACK + ".nodes.comfy_ops"]
    core = sys.modules[PACK + ".pafu_core"]
    dm = plain_wan(core)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 6, 8, 8, generator=gen)
    t = torch.tensor([700.0, 150.0])
    ctx = torch.randn(2, 4, 4096, generator=gen)
    runner = core.adapter.WanChunkRunner(dm, ops_mod.ComfyOps(dm, torch.float32), dtype=torch.float32)
    with torch.no_grad():
        theirs = dm.forward(x, t, ctx)
        ours = runner.forward_full(x, t, ctx)
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()


def test_tiny_world_decode_inverts_the_codec(pack):
    module, nodes = pack
    core = sys.modules[PACK + ".pafu_core"]
    import comfy.latent_formats
    clip = core.world.scenes.render_clip(5, 6)
    stored = comfy.latent_formats.Wan21().process_out(core.world.codec.encode_frames(clip.frames)[None])
    (frames,) = run(nodes["PaFuTinyWorldDecode"], latent={"samples": stored}, scale=2)
    assert frames.shape == (6, 32, 32, 3)
    expected = ((clip.frames + 1) / 2).permute(0, 2, 3, 1).repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.allclose(frames, expected, atol=1e-4)
    with pytest.raises(ValueError, match="tiny-world video latent"):
        run(nodes["PaFuTinyWorldDecode"], latent={"samples": torch.zeros(1, 4, 8, 8)}, scale=1)


def test_budget_node_estimates_memory(pack):
    _, nodes = pack
    cache, text = run(nodes["PaFuKVCacheBudget"], policy="pafu", budget=0.25, budget_unit="fraction", sink_frames=0)
    assert "8190 tokens per layer" in text and "K/V held 1.41 GiB" in text
    _, small = run(nodes["PaFuKVCacheBudget"], policy="fifo", budget=1, budget_unit="latent_frames", sink_frames=0)
    assert "TOO SMALL" in small
    with pytest.raises(ValueError, match="sink"):
        run(nodes["PaFuKVCacheBudget"], policy="fifo", budget=4, budget_unit="latent_frames", sink_frames=-1)


def test_head_loader_local_and_offline_hub(pack, tmp_path, monkeypatch):
    _, nodes = pack
    core = sys.modules[PACK + ".pafu_core"]
    paths = sys.modules[PACK + ".nodes.paths"]
    (head,) = run(nodes["PaFuSalienceHeadLoader"], source="local", head_name="pafu_tiny_world.safetensors",
                  repo_id="", filename="")
    assert head.config.num_layers == 4
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(paths, "heads_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match="offline mode is on"):
        run(nodes["PaFuSalienceHeadLoader"], source="hub", head_name="", repo_id="someone/pafu-heads",
            filename="head.safetensors")
    # a file already downloaded into models/pafu_heads/<owner>--<name>/<revision>/ is used offline
    target = tmp_path / "someone--pafu-heads" / "main"
    target.mkdir(parents=True, exist_ok=True)
    core.salience.save_head(head, target / "head.safetensors")
    (again,) = run(nodes["PaFuSalienceHeadLoader"], source="hub", head_name="", repo_id="someone/pafu-heads",
                   filename="head.safetensors")
    assert torch.equal(again.w1, head.w1)
    with pytest.raises(RuntimeError, match="revision 'v2'.*On disk: revision main"):
        run(nodes["PaFuSalienceHeadLoader"], source="hub", head_name="", repo_id="someone/pafu-heads",
            filename="head.safetensors", revision="v2")


def test_report_node_draws_curves_and_token_maps(pack):
    _, nodes = pack
    core = sys.modules[PACK + ".pafu_core"]
    runner = core.adapter.WanChunkRunner(core.wan.load_wan_checkpoint(core.world.assets.STUDENT).eval())
    res = core.sampler.sample_video(runner, torch.randn(1, 4, 4096), num_frames=9, height=8, width=8,
                                    policy=core.policies.make_policy("fifo"), budget=core.cache.CacheBudget(6))
    frames = torch.rand(9, 32, 32, 3)
    curves, kept, summary = run(nodes["PaFuCacheReport"], report=res.report, frames=frames, report_b=res.report)
    assert curves.shape[0] == 1 and curves.shape[-1] == 3 and curves.max() <= 1
    assert kept.shape == (9, 32, 32, 3)
    assert summary.count("policy fifo") == 2


def test_sampler_refuses_a_non_wan_model(pack):
    """A ComfyUI MODEL whose network is not Wan (here: the tiny model's patcher around a conv net,
    as an SD-style UNet would be) ends in the readable refusal, before anything is allocated."""
    import copy
    _, nodes = pack
    model = run(nodes["PaFuTinyWorldModel"])[0]
    other = copy.copy(model)
    other.model = copy.copy(model.model)
    other.model.diffusion_model = torch.nn.Conv2d(4, 4, 1)
    positive, latent, _ = run(nodes["PaFuTinyWorldScene"], style="teal", latent_frames=6, batch_size=1)
    cache = run(nodes["PaFuKVCacheBudget"], policy="fifo", budget=3, budget_unit="latent_frames", sink_frames=0)[0]
    with pytest.raises(ValueError, match="needs a Wan 2.1 model; this MODEL is Conv2d"):
        run(nodes["PaFuARChunkSampler"], model=other, positive=positive, latent=latent, cache=cache, seed=0,
            chunk_frames=3, timesteps="1000,750,500,250", context_timestep=0.0)


def test_a_policy_registered_in_one_call_reaches_the_budget_node_and_the_patch(pack):
    """Adding a policy is one class and one call: the budget node offers it, the core-AR patch accepts it."""
    _, nodes = pack
    policies = sys.modules[PACK + ".pafu_core.policies"]
    native = sys.modules[PACK + ".pafu_core.native_protocol"]

    class OldestFirst(policies.Policy):
        name = "oldest_first"

        def score(self, view):
            return -view.entering_frame_index.float()

    policies.register_policy("oldest_first", "the oldest frames (a test policy)", OldestFirst)
    try:
        schema = nodes["PaFuKVCacheBudget"].define_schema()
        combo = next(i for i in schema.inputs if i.id == "policy")
        assert "oldest_first" in combo.options and "oldest_first" in combo.tooltip
        assert "oldest_first" in native.core_ar_policy_names()
        cache = run(nodes["PaFuKVCacheBudget"], policy="oldest_first", budget=6, budget_unit="latent_frames",
                    sink_frames=0)[0]
        native.check_native_policy(cache.build_policy())
    finally:
        del policies._REGISTRY["oldest_first"]


IMPORT_AS_COMFYUI = """
import asyncio, importlib.util, os, sys, tempfile
root, pack = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
import comfy.options
comfy.options.enable_args_parsing(False)
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = tempfile.mkdtemp()
import folder_paths
spec = importlib.util.spec_from_file_location("pack", os.path.join(pack, "__init__.py"),
                                              submodule_search_locations=[pack])
module = importlib.util.module_from_spec(spec)
sys.modules["pack"] = module
spec.loader.exec_module(module)
ext = asyncio.run(module.comfy_entrypoint())
nodes = asyncio.run(ext.get_node_list())
research = ("distill", "teacher", "demo", "evaluate", "oracles", "train", "metrics", "charts", "clips", "video")
loaded = [m for m in sys.modules if m.startswith(("pafu_lab", "pack.pafu_core.distill")) or
          (m.startswith("pack.") and m.rpartition(".")[2] in research)]     # the shipped distillation: lazily
print(len(nodes), "nodes;", "research loaded:", loaded)
sys.exit(1 if loaded or not nodes else 0)
"""


def test_the_pack_as_comfyui_imports_it_loads_no_research():
    """What ComfyUI imports (the entry point and every node), in a fresh interpreter, holds no training,
    evaluation, demo or oracle code: none of pafu_lab, no research module under the pack."""
    import subprocess
    root = os.path.abspath(os.environ["COMFYUI_PATH"])
    proc = subprocess.run([sys.executable, "-c", IMPORT_AS_COMFYUI, root, ROOT],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_prompt_timeline_through_the_sampler_node(pack):
    """A prompt change at latent frame 6: the chunks before it are the single-prompt video's, the chunks
    after it differ (the cross-attention was recomputed), the cache stays bounded; bad timelines are refused
    with one sentence."""
    _, nodes = pack
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    (model,) = ModelSamplingSD3().patch(run(nodes["PaFuTinyWorldModel"])[0], 5.0)
    teal, latent, _ = run(nodes["PaFuTinyWorldScene"], style="teal", latent_frames=12, batch_size=1)
    red = run(nodes["PaFuTinyWorldScene"], style="red", latent_frames=12, batch_size=1)[0]
    cache = run(nodes["PaFuKVCacheBudget"], policy="standout", budget=6, budget_unit="latent_frames", sink_frames=0)[0]
    args = dict(model=model, positive=teal, latent=latent, cache=cache, seed=3, chunk_frames=3,
                timesteps="1000,750,500,250", context_timestep=0.0)
    plain = run(nodes["PaFuARChunkSampler"], **args)[0]["samples"]
    timeline = run(nodes["PaFuPromptTimeline"], change_frames="6", prompt_2=red)[0]
    changed, report = run(nodes["PaFuARChunkSampler"], timeline=timeline, **args)
    changed = changed["samples"]
    assert torch.equal(changed[:, :, :6], plain[:, :, :6])
    assert not torch.allclose(changed[:, :, 6:], plain[:, :, 6:], atol=1e-3)
    assert max(c.tokens_per_layer for c in report.chunks) == 6 * 16
    recached = run(nodes["PaFuARChunkSampler"], timeline=run(nodes["PaFuPromptTimeline"], change_frames="6",
                                                               prompt_2=red, recache=True)[0], **args)[0]["samples"]
    assert torch.equal(recached[:, :, :6], plain[:, :, :6])          # the kept past re-run under the new prompt
    assert not torch.allclose(recached[:, :, 6:], changed[:, :, 6:], atol=1e-4)
    inside = run(nodes["PaFuARChunkSampler"], timeline=run(nodes["PaFuPromptTimeline"], change_frames="4",
                                                             prompt_2=red)[0], **args)[0]["samples"]
    assert torch.equal(inside[:, :, :3], plain[:, :, :3])            # a change inside a chunk: frame by frame
    assert not torch.allclose(inside[:, :, 4:6], plain[:, :, 4:6], atol=1e-3)
    with pytest.raises(ValueError, match="latent frame 12 lies past the video's last latent frame"):
        run(nodes["PaFuARChunkSampler"], timeline=run(nodes["PaFuPromptTimeline"], change_frames="12",
                                                         prompt_2=red)[0], **args)
    with pytest.raises(ValueError, match="lists 2 frames but 1 prompt is connected"):
        run(nodes["PaFuPromptTimeline"], change_frames="6, 9", prompt_2=red)
    with pytest.raises(ValueError, match="whole latent frames"):
        run(nodes["PaFuPromptTimeline"], change_frames="six", prompt_2=red)


def test_start_latent_through_the_sampler_node(pack):
    """An image-to-video start through the node: the video opens with it (in ComfyUI's latent space), the
    start stays in the cache, and a start of another size is refused before anything runs."""
    _, nodes = pack
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    (model,) = ModelSamplingSD3().patch(run(nodes["PaFuTinyWorldModel"])[0], 5.0)
    teal, latent, world = run(nodes["PaFuTinyWorldScene"], style="teal", latent_frames=13, batch_size=1)
    start = {"samples": world["samples"][:, :, :1]}
    cache = run(nodes["PaFuKVCacheBudget"], policy="fifo", budget=4, budget_unit="latent_frames", sink_frames=0)[0]
    args = dict(model=model, positive=teal, latent=latent, cache=cache, seed=3, chunk_frames=3,
                timesteps="1000,750,500,250", context_timestep=0.0)
    out, report = run(nodes["PaFuARChunkSampler"], start=start, **args)
    assert torch.allclose(out["samples"][:, :, :1], start["samples"], atol=1e-5)
    assert report.final_kept.view(report.num_layers, 13, -1)[:, 0].all()
    with pytest.raises(ValueError, match="the start latent has shape"):
        run(nodes["PaFuARChunkSampler"], start={"samples": world["samples"][:, :, :1, :4, :4]}, **args)
