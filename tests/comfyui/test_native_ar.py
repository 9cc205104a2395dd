"""The budgeted cache on ComfyUI core's own autoregressive path (0.27+), in-process with the real modules:
core's loader, ``CausalWanModel``, ``SamplerARVideo`` / ``sample_ar_video`` and ``SamplerCustomAdvanced``."""

from __future__ import annotations

import sys

import pytest
import torch

from .conftest import PACK, require_core_ar, run

FRAMES = 12


@pytest.fixture(scope="module")
def core(pack):
    require_core_ar()
    from comfy_extras import nodes_ar_video, nodes_custom_sampler
    import nodes as comfy_nodes
    return {"ar": nodes_ar_video, "cs": nodes_custom_sampler, "nodes": comfy_nodes,
            "pafu": sys.modules[PACK + ".pafu_core"], "ours": pack[1]}


def unet(core):
    (model,) = core["nodes"].UNETLoader().load_unet("pafu_tiny_world_student.safetensors", "default")
    return model


def scene(core, frames=FRAMES):
    return run(core["ours"]["PaFuTinyWorldScene"], style="teal", latent_frames=frames, batch_size=1)[:2]


def budget(core, policy="keep_all", value=6.0, unit="latent_frames", **kw):
    return run(core["ours"]["PaFuKVCacheBudget"], policy=policy, budget=value, budget_unit=unit, sink_frames=0, **kw)[0]


def core_sample(core, model, positive, latent, seed=5, block=3, guider=None):
    """Core's own graph: RandomNoise -> BasicGuider (or the given guider) -> SamplerARVideo ->
    BasicScheduler(simple, 4) -> SamplerCustomAdvanced."""
    cs = core["cs"]
    (noise,) = run(cs.RandomNoise, noise_seed=seed)
    if guider is None:
        (guider,) = run(cs.BasicGuider, model=model, conditioning=positive)
    (sampler,) = run(core["ar"].SamplerARVideo, num_frame_per_block=block)
    (sigmas,) = run(cs.BasicScheduler, model=model, scheduler="simple", steps=4, denoise=1.0)
    out, _ = run(cs.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image=latent)
    return out["samples"]


def patched(core, model, cache, head=None):
    return run(core["ours"]["PaFuKVCachePatch"], model=model, cache=cache, head=head)[0]


def test_tiny_student_loads_through_core_unet_loader_as_causal_wan(core):
    model = unet(core)
    assert type(model.model.diffusion_model).__name__ == "CausalWanModel"
    assert float(model.get_model_object("model_sampling").shift) == 5.0      # core's causal-AR config


def test_keep_all_patch_gives_core_latents(core):
    model = unet(core)
    positive, latent = scene(core)
    plain = core_sample(core, model, positive, latent)
    ours = core_sample(core, patched(core, model, budget(core, "keep_all")), positive, latent)
    assert torch.allclose(ours, plain, atol=1e-5), (ours - plain).abs().max()


def test_our_sampler_equals_core_ar_video_when_configured_alike(core):
    model = unet(core)
    positive, latent = scene(core)
    plain = core_sample(core, model, positive, latent, seed=9)
    lat, _ = run(core["ours"]["PaFuARChunkSampler"], model=model, positive=positive, latent=latent,
                 cache=budget(core, "keep_all"), seed=9, chunk_frames=3, timesteps="1000,750,500,250",
                 context_timestep=0.0, noise_stream="comfy_ar")
    assert torch.allclose(lat["samples"], plain, atol=2e-4, rtol=1e-4), (lat["samples"] - plain).abs().max()


def test_budgeted_patch_bounds_the_cache_and_evicts(core):
    model = unet(core)
    positive, latent = scene(core, frames=36)
    seen = []
    pafu_core = core["pafu"]
    real = pafu_core.native.NativeKVCaches.end_pass

    def spy(self):
        real(self)
        if self.report.chunks and (not seen or seen[-1] is not self.report.chunks[-1]):
            seen.append(self.report.chunks[-1])
    pafu_core.native.NativeKVCaches.end_pass = spy
    try:
        head = run(core["ours"]["PaFuSalienceHeadLoader"], source="local", head_name="pafu_tiny_world.safetensors",
                   repo_id="", filename="")[0]
        fifo = core_sample(core, patched(core, model, budget(core, "pafu"), head), positive, latent)
    finally:
        pafu_core.native.NativeKVCaches.end_pass = real
    assert fifo.shape == latent["samples"].shape and torch.isfinite(fifo).all()
    assert len(seen) == 12 and max(c.tokens_per_layer for c in seen) == 6 * 16
    assert len({c.cache_bytes for c in seen}) == 1 and sum(c.evicted for c in seen) > 0


def test_i2v_start_latent_is_protected_like_a_sink(core):
    model = unet(core)
    start_model, positive, latent, image = run(core["ours"]["PaFuTinyWorldStart"], model=model, style="blue",
                                               world_seed=3, latent_frames=25, batch_size=1)
    reports = []
    pafu_core = core["pafu"]
    real_layers = pafu_core.native.NativeKVCaches.layers

    def keep(self, *args):
        reports.append(self)
        return real_layers(self, *args)
    pafu_core.native.NativeKVCaches.layers = keep
    try:
        out = core_sample(core, patched(core, start_model, budget(core, "fifo", 4.0)), positive, latent)
    finally:
        pafu_core.native.NativeKVCaches.layers = real_layers
    report = reports[-1].report
    assert report.sink_frames == 1 and report.final_kept is not None
    assert bool(report.final_kept[:, :16].all())                # the start frame's tokens, every layer
    assert sum(c.evicted for c in report.chunks) > 0
    # the video begins with the start frame
    import comfy.latent_formats
    first = core["pafu"].world.codec.decode_frames(comfy.latent_formats.Wan21().process_in(out)[0, :, :1])
    assert torch.allclose(first[0], image[0].permute(2, 0, 1) * 2 - 1, atol=1e-4)


def test_prompt_timeline_on_core_ar_refreshes_cross_attention(core, monkeypatch):
    """A change at latent frame 6 through the PaFu Timeline Guider on core's SamplerARVideo, the cache bounded
    by the patch: the blocks before it are the single-prompt video's, the blocks after differ; without the
    cross-attention refresh they would not (core reuses the first block's cross-attention), which shows the
    refresh is what carries the change. A change inside a block is refused before any work."""
    model = unet(core)
    teal, latent = scene(core)
    red = run(core["ours"]["PaFuTinyWorldScene"], style="red", latent_frames=FRAMES, batch_size=1)[0]
    bounded = patched(core, model, budget(core, "fifo", 6.0))
    timeline = run(core["ours"]["PaFuPromptTimeline"], change_frames="6", prompt_2=red)[0]

    def guided(change=timeline):
        guider = run(core["ours"]["PaFuTimelineGuider"], model=bounded, positive=teal, timeline=change)[0]
        return core_sample(core, bounded, teal, latent, guider=guider)

    caches = []
    real_layers = core["pafu"].native.NativeKVCaches.layers
    monkeypatch.setattr(core["pafu"].native.NativeKVCaches, "layers",
                        lambda self, *a: caches.append(self) or real_layers(self, *a))
    plain = core_sample(core, bounded, teal, latent)
    changed = guided()
    assert torch.allclose(changed[:, :, :6], plain[:, :, :6], atol=1e-6)
    assert not torch.allclose(changed[:, :, 6:], plain[:, :, 6:], atol=1e-3)
    assert max(c.tokens_per_layer for c in caches[-1].report.chunks) == 6 * 16
    assert sum(c.evicted for c in caches[-1].report.chunks) > 0

    guider_module = sys.modules[PACK + ".nodes.timeline"]
    monkeypatch.setattr(guider_module, "refresh_cross_attention", lambda caches, segment: False)
    assert torch.allclose(guided(), plain, atol=1e-6)          # core ignores the new prompt without the refresh
    monkeypatch.undo()

    with pytest.raises(ValueError, match="re-caching at a prompt change needs the PaFu AR Chunk Sampler"):
        run(core["ours"]["PaFuTimelineGuider"], model=bounded, positive=teal,
            timeline=run(core["ours"]["PaFuPromptTimeline"], change_frames="6", prompt_2=red, recache=True)[0])
    inside = run(core["ours"]["PaFuPromptTimeline"], change_frames="4", prompt_2=red)[0]
    calls = []
    monkeypatch.setattr(core["pafu"].native.NativeKVCaches, "layers", lambda self, *a: calls.append(self))
    with pytest.raises(ValueError, match="inside the block of latent frames 3-5"):
        guided(inside)
    assert not calls                                            # refused before any cache was built


def test_budget_below_one_block_reads_well_through_core(core):
    model = unet(core)
    positive, latent = scene(core)
    with pytest.raises(ValueError, match="smaller than one chunk"):
        core_sample(core, patched(core, model, budget(core, "fifo", 2.0)), positive, latent)


def test_patch_refuses_a_bidirectional_wan(core):
    import comfy.sd
    import comfy.utils
    sd = comfy.utils.load_torch_file(core["pafu"].world.assets.STUDENT, safe_load=True)
    plain = comfy.sd.load_diffusion_model_state_dict(sd)              # no metadata: a plain WanModel
    assert type(plain.model.diffusion_model).__name__ == "WanModel"
    with pytest.raises(ValueError, match="CausalWanModel"):
        patched(core, plain, budget(core, "fifo"))


def test_causal_wan_block_path_equals_our_chunk_runner(core):
    """Core's CausalWanModel.forward_block, chunk by chunk with its own caches, against our runner over the
    same module tree (ComfyUI's attention, RoPE and casting): one independent reference for the layer math."""
    model = unet(core)
    dm = model.model.diffusion_model
    pafu_core = core["pafu"]
    ops = sys.modules[PACK + ".nodes.comfy_ops"].ComfyOps(dm, torch.float32)
    runner = pafu_core.adapter.WanChunkRunner(dm, ops, dtype=torch.float32)
    ctx = pafu_core.world.scenes.style_context(2)
    cache, _ = pafu_core.cache.open_cache(pafu_core.cache.CacheShape.of(runner), pafu_core.policies.make_policy("keep_all"),
                                          None, batch=1, tokens_per_frame=16, chunk_frames=3, total_frames=9, device="cpu")
    cache.cross_kv = runner.cross_kv(runner.embed_text(ctx))
    kv, cross = dm.init_kv_caches(1, 9 * 16, "cpu", torch.float32), dm.init_crossattn_caches(1, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for c in range(3):
            x = torch.randn(1, 16, 3, 8, 8, generator=gen)
            t = torch.full((1, 3), 700.0 - 200 * c)
            theirs = dm.forward_block(x, t, ctx, c * 3, kv, cross)
            for layer in kv:
                layer["end"] -= 48
            mine = runner.forward_chunk(x, t, c * 3, cache)
            assert torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4), (c, (mine - theirs).abs().max())
            clean = torch.randn(1, 16, 3, 8, 8, generator=gen)
            dm.forward_block(clean, torch.zeros(1, 3), ctx, c * 3, kv, cross)
            runner.forward_chunk(clean, torch.zeros(1, 3), c * 3, cache, write=True)


@pytest.mark.parametrize("policy,positions", [("deep_forcing", "realigned"), ("participative", "realigned"),
                                              ("participative", "true")])
def test_query_policies_and_realignment_on_core_path_equal_our_sampler(core, policy, positions):
    """Core's SamplerARVideo with the patch and our sampler (core's noise stream) under the same cache: queries
    captured through core's norm_q hooks, keys rotated where core roped them. Our sampler equals the hand
    reference (tests/test_positions.py), so this is the core path against that reference; prints the max diff."""
    model = unet(core)
    positive, latent = scene(core, frames=18)
    cache = budget(core, policy, 6.0, positions=positions)
    theirs = core_sample(core, patched(core, model, cache), positive, latent, seed=4)
    lat, report = run(core["ours"]["PaFuARChunkSampler"], model=model, positive=positive, latent=latent, cache=cache,
                      seed=4, chunk_frames=3, timesteps="1000,750,500,250", context_timestep=0.0,
                      noise_stream="comfy_ar")
    diff = float((lat["samples"] - theirs).abs().max())
    print(f"[core path] {policy} positions={positions}: max |core - ours| = {diff:.2e}")
    assert report.positions == positions and sum(c.evicted for c in report.chunks) > 0
    assert diff < 2e-4, diff


def test_realigned_on_a_model_whose_rope_has_no_temporal_band_is_refused(core):
    model = unet(core).clone()
    dm = model.model.diffusion_model
    saved = dm.rope_embedder.axes_dim
    dm.rope_embedder.axes_dim = None
    try:
        with pytest.raises(ValueError, match="no 3-axis RoPE"):
            patched(core, model, budget(core, "deep_forcing", 6.0, positions="realigned"))
    finally:
        dm.rope_embedder.axes_dim = saved
