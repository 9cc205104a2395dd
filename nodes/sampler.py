"""PaFu AR Chunk Sampler: chunked autoregressive Wan 2.1 generation with a budgeted KV cache.

Glue only: ComfyUI's model management loads the MODEL, ComfyUI's primitives go into ``ComfyOps``,
and ``pafu_core.rollout`` does the work: the request is checked once, before the model is loaded.
Progress, previews, interruption (between steps; the cache is freed) and the live cache view are
wired through ComfyUI's own hooks.
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_sampling
import latent_preview
from comfy_api.latest import io

from ..pafu_core.adapter import WanChunkRunner
from ..pafu_core.budget import finite
from ..pafu_core.rollout import plan_rollout, run_rollout
from ..pafu_core.schedule import NOISE_STREAMS, SamplerConfig, parse_timesteps
from ..pafu_core.timeline import with_changes
from .comfy_ops import ComfyOps
from .live import send_chunk_stats
from .types import PafuCache, PafuHead, PafuReport, PafuTimeline


def wan_runner(model) -> WanChunkRunner:
    """A chunk runner over ComfyUI's loaded Wan network, or a readable refusal."""
    diffusion = getattr(model.model, "diffusion_model", None)
    if diffusion is None or type(diffusion).__name__ not in ("WanModel", "CausalWanModel"):
        raise ValueError(f"the PaFu AR Chunk Sampler needs a Wan 2.1 model; this MODEL is "
                         f"{type(diffusion).__name__ if diffusion is not None else type(model.model).__name__}")
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    return WanChunkRunner(diffusion, ComfyOps(diffusion, dtype), dtype=dtype)


def flow_shift(model) -> float:
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteFlow):
        raise ValueError("the PaFu AR Chunk Sampler needs a flow-matching Wan model (model_sampling "
                         f"{type(sampling).__name__})")
    return float(sampling.shift)


class PaFuARChunkSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuARChunkSampler",
            display_name="PaFu AR Chunk Sampler",
            category="PaFu-KV",
            description="Generates a video chunk by chunk (Self-Forcing / CausVid / Causal Forcing / LongLive "
                        "style) while a KV cache policy keeps memory bounded. The flow shift comes from the "
                        "MODEL (set it with ModelSamplingSD3).",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 autoregressive model (e.g. Self-Forcing 1.3B)."),
                io.Conditioning.Input("positive", tooltip="Text conditioning (umT5)."),
                io.Latent.Input("latent", tooltip="An empty video latent; its shape sets frames and size."),
                PafuCache.Input("cache", tooltip="Policy and budget from PaFu KV Cache Budget."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same noise under every policy."),
                io.Int.Input("chunk_frames", default=3, min=1, max=64,
                             tooltip="Latent frames per chunk (3 for Self-Forcing / Causal Forcing)."),
                io.String.Input("timesteps", default="1000,750,500,250",
                                tooltip="Denoising timesteps per chunk, strictly decreasing in (0, 1000]; "
                                        "warped by the model's shift."),
                io.Float.Input("context_timestep", default=0.0, min=0.0, max=999.0, step=1.0,
                               tooltip="Timestep of the cache-writing pass over each finished chunk "
                                       "(0 = clean, as Self-Forcing)."),
                PafuHead.Input("head", optional=True, tooltip="Salience head; required by the pafu policy."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning, used only when cfg is not 1."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, optional=True,
                               tooltip="Classifier-free guidance; 1 = off (distilled AR models need none)."),
                io.Combo.Input("noise_stream", options=list(NOISE_STREAMS), default="pafu", optional=True,
                               tooltip="pafu: one seeded stream, identical noise under every policy. comfy_ar: "
                                       "core's SamplerARVideo convention, so the same seed (RandomNoise) and "
                                       "sigmas give core's latents."),
                PafuTimeline.Input("timeline", optional=True,
                                   tooltip="Optional prompt changes (PaFu Prompt Timeline): positive holds from "
                                           "latent frame 0, each later prompt from its change frame on."),
                io.Latent.Input("start", optional=True,
                                tooltip="Optional image-to-video start: a latent of a few frames (e.g. a VAE-encoded "
                                        "image) that opens the video; written to the cache first and never "
                                        "evicted, like core's ARVideoI2V. Same size as 'latent'."),
                io.Latent.Input("watch", optional=True,
                                tooltip="Optional: a video the model watches (video prediction). Each chunk is "
                                        "predicted from the cache, then the cache takes this video's chunk "
                                        "instead of the prediction. Same shape as 'latent'."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent"),
                     PafuReport.Output("report", display_name="report", tooltip="Per-chunk cache statistics.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, positive, latent, cache, seed, chunk_frames, timesteps, context_timestep,
                head=None, negative=None, cfg=1.0, noise_stream="pafu", watch=None, timeline=None,
                start=None) -> io.NodeOutput:
        runner = wan_runner(model)
        config = SamplerConfig(chunk_frames=chunk_frames, timesteps=parse_timesteps(timesteps),
                               shift=flow_shift(model), context_timestep=finite("context_timestep", context_timestep),
                               seed=seed, noise=noise_stream)
        if head is not None:
            head.check_backbone(runner)
        device = model.load_device
        samples = latent["samples"]
        process = model.model.process_latent_in
        cond = with_changes(positive[0][0], [(f, c[0][0]) for f, c in timeline.changes] if timeline else [])
        # the one check of the whole request, before the model is loaded; the policy is built once, here
        request = plan_rollout(
            runner, cond, shape=tuple(samples.shape), config=config, budget=cache.cache_budget(),
            policy=cache.build_policy(head.on_device(device) if head is not None else None),
            negative=negative[0][0] if (negative is not None and cfg != 1.0) else None, cfg=finite("cfg", cfg),
            kv_storage=cache.kv_storage, positions=cache.cache_positions, recache=bool(timeline and timeline.recache),
            observed=process(watch["samples"].float()) if watch is not None else None,
            start=process(start["samples"].float()) if start is not None else None)
        comfy.model_management.load_models_gpu([model])
        b, _, frames, h, w = samples.shape
        steps = len(config.timesteps)
        total = (int(request.given > 0) + -(-(frames - request.given) // request.chunk_frames)) * steps
        preview = latent_preview.prepare_callback(model, total)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None

        def on_step(chunk, step, x0):
            comfy.model_management.throw_exception_if_processing_interrupted()
            preview(chunk * steps + step, x0, None, total)

        def on_chunk(stats, x0):
            send_chunk_stats(node_id, stats, frames, cache.policy)
            comfy.model_management.throw_exception_if_processing_interrupted()

        try:
            result = run_rollout(runner, request, device, step_callback=on_step, chunk_callback=on_chunk)
        except comfy.model_management.InterruptProcessingException:
            logging.info("PaFu AR Chunk Sampler interrupted between denoising steps; cache freed")
            raise
        out = model.model.process_latent_out(result.latents.to(comfy.model_management.intermediate_device()))
        return io.NodeOutput({"samples": out}, result.report)
