"""PaFu KV Cache Patch: the budgeted cache on ComfyUI core's own autoregressive path (0.27+).

Two object patches on the MODEL's ``CausalWanModel``, the way caching packs patch models:
``init_kv_caches`` returns PaFu's budgeted caches instead of whole-video buffers, and
``forward_block`` frames every pass so the cache can commit and evict after the pass at timestep 0.
Core's ``SamplerARVideo`` / ``sample_ar_video`` then runs unchanged (see ``pafu_core/native.py``).
A core whose protocol differs is refused here, in one sentence (``check_native_protocol``).
"""

from __future__ import annotations

import logging

import comfy.model_management
from comfy.ldm.flux.math import apply_rope1
from comfy_api.latest import io

from ..pafu_core.native import NativeKVCaches, wrap_forward_block, wrap_init_kv_caches
from ..pafu_core.native_protocol import check_native_policy, check_native_protocol
from .comfy_ops import temporal_band_of
from .live import send_chunk_stats
from .types import PafuCache, PafuHead

NEEDS_CORE_AR = ("the PaFu KV Cache Patch works on ComfyUI core's autoregressive path: it needs a causal-AR "
                 "Wan (CausalWanModel, ComfyUI 0.27 or newer, loaded by UNETLoader from a checkpoint whose "
                 "metadata says causal_ar); this MODEL is {}. Use the PaFu AR Chunk Sampler instead.")


def causal_wan(model):
    diffusion = getattr(model.model, "diffusion_model", None)
    if diffusion is None or not all(hasattr(diffusion, a) for a in ("init_kv_caches", "forward_block")):
        raise ValueError(NEEDS_CORE_AR.format(type(diffusion or model.model).__name__))
    return diffusion


class PaFuKVCachePatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuKVCachePatch",
            display_name="PaFu KV Cache Patch",
            category="PaFu-KV",
            description="Bounds the KV cache of ComfyUI's own autoregressive video sampler (SamplerARVideo) by a "
                        "PaFu cache policy and budget, at any video length. Put it between the model loader "
                        "(or ModelSamplingSD3) and the guider.",
            inputs=[
                io.Model.Input("model", tooltip="A causal-AR Wan 2.1 MODEL (UNETLoader on ComfyUI 0.27+)."),
                PafuCache.Input("cache", tooltip="Policy and budget from PaFu KV Cache Budget."),
                PafuHead.Input("head", optional=True, tooltip="Salience head; required by the pafu policy."),
            ],
            outputs=[io.Model.Output("model", display_name="model")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, cache, head=None) -> io.NodeOutput:
        diffusion = causal_wan(model)
        policy = cache.build_policy(head)             # refuses a policy that needs a head without one
        if head is not None:
            head.check_backbone(diffusion)
        check_native_policy(policy)                   # once, here: the patch's caches are not checked again
        check_native_protocol(diffusion, needs_keys="keys" in policy.inputs, needs_queries="queries" in policy.inputs)
        band = temporal_band_of(diffusion) if cache.cache_positions == "realigned" else None
        node_id = cls.hidden.unique_id if cls.hidden is not None else None

        def on_chunk(stats, report):
            send_chunk_stats(node_id, stats, report.total_frames, cache.policy)
            if stats.frame_start + stats.frames >= report.total_frames:
                logging.info("PaFu KV cache on core ar_video: %s", report.summary())

        def build(batch_size, max_seq_len, device, dtype):
            policy = cache.build_policy(head.on_device(device) if head is not None else None)
            return NativeKVCaches(policy=policy, budget=cache.cache_budget(), num_layers=diffusion.num_layers,
                                  batch=batch_size, num_heads=diffusion.num_heads, head_dim=diffusion.head_dim,
                                  max_seq_len=max_seq_len, device=device, dtype=dtype, storage=cache.kv_storage,
                                  on_chunk=on_chunk, positions=cache.cache_positions, band=band, rope=apply_rope1)

        patched = model.clone()
        patched.add_object_patch("diffusion_model.init_kv_caches", wrap_init_kv_caches(diffusion, build))
        original = type(diffusion).forward_block.__get__(diffusion, type(diffusion))
        patched.add_object_patch("diffusion_model.forward_block", wrap_forward_block(diffusion, original))
        comfy.model_management.throw_exception_if_processing_interrupted()
        return io.NodeOutput(patched)
