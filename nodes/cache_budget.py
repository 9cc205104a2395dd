"""PaFu KV Cache Budget: which policy decides, and how many tokens each layer may keep."""

from __future__ import annotations

from comfy_api.latest import io

from ..pafu_core.budget import BUDGET_UNITS, REFERENCE_FRAMES
from ..pafu_core.kv_store import KV_STORAGE
from ..pafu_core.policies import policy_help, policy_names
from ..pafu_core.positions import POSITION_CHOICES
from ..pafu_core.settings import CacheSettings
from ..pafu_core.wan import WAN21_1_3B
from .types import PafuCache

#: the node's defaults are the settings' (Deep Forcing's recipe over the 21-frame window)
DEFAULTS = CacheSettings()


class PaFuKVCacheBudget(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuKVCacheBudget",
            display_name="PaFu KV Cache Budget",
            category="PaFu-KV",
            description="Cache policy and budget for the PaFu AR Chunk Sampler; the text output estimates the "
                        "cache memory for Wan 2.1 1.3B at the stated resolution.",
            inputs=[
                io.Combo.Input("policy", options=list(policy_names()), default=DEFAULTS.policy, tooltip=policy_help()),
                io.Float.Input("budget", default=DEFAULTS.budget, min=0.0, max=1e7, step=0.005,
                               tooltip="Tokens each layer keeps, in budget_unit. 1.0 fraction = the 21-frame window "
                                       "Self-Forcing-class Wan models were trained with (32760 tokens at 480p), held "
                                       "at any video length; a smaller fraction trades quality for memory."),
                io.Combo.Input("budget_unit", options=list(BUDGET_UNITS), default="fraction",
                               tooltip="fraction of reference_frames latent frames, latent_frames, tokens, or GiB of "
                                       "K/V memory (all layers, the chunk being generated included)."),
                io.Int.Input("sink_frames", default=0, min=0, max=64,
                             tooltip="First latent frames that are never evicted (attention sinks). "
                                     "sink_window needs at least 1."),
                io.Int.Input("reference_frames", default=REFERENCE_FRAMES, min=1, max=4096, optional=True,
                             tooltip="The window a fraction refers to: 21 latent frames for Self-Forcing-class "
                                     "Wan models, the training clip for other models."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, optional=True, control_after_generate=False,
                             tooltip="Seed of the random control policy (ignored by the others); fixed, so a "
                                     "queue with nothing changed re-runs nothing."),
                io.Combo.Input("kv_storage", options=list(KV_STORAGE), default="model", optional=True,
                               tooltip="model: keep cached K/V in the model's dtype. int8: 8-bit K/V with one "
                                       "scale per token and head (about half the memory; each layer is "
                                       "dequantised on its own when read)."),
                io.Int.Input("estimate_width", default=832, min=16, max=8192, step=16, optional=True,
                             tooltip="Video width for the memory estimate."),
                io.Int.Input("estimate_height", default=480, min=16, max=8192, step=16, optional=True,
                             tooltip="Video height for the memory estimate."),
                io.Combo.Input("positions", options=list(POSITION_CHOICES), default=DEFAULTS.positions, optional=True,
                               tooltip="Temporal RoPE positions of the kept tokens. true: where they were generated. "
                                       "realigned: seen from the chunk being generated, the kept frames sit at "
                                       "consecutive distances (sink frames just before the kept recent ones), as "
                                       "Deep Forcing's deep sink does, so a long video never shows the model a "
                                       "distance it was not trained with. auto: the policy's recipe (realigned for "
                                       "deep_forcing, true for the others)."),
                io.Float.Input("sink_share", default=DEFAULTS.sink_share, min=0.0, max=0.99, step=0.05, optional=True,
                               tooltip="deep_forcing only: the share of the budget kept as sink frames (the video's "
                                       "first frames; 0.5 from the paper's ablation: 10-15 of 21 frames best, 18 "
                                       "repeats). Other policies use sink_frames."),
                io.Int.Input("query_frames", default=DEFAULTS.query_frames, min=1, max=64, optional=True,
                             tooltip="participative, deep_forcing: the newest latent frames whose queries score the "
                                     "cache (at most one chunk)."),
                io.Int.Input("query_stride", default=DEFAULTS.query_stride, min=1, max=64, optional=True,
                             tooltip="participative, deep_forcing: every query_stride-th query token of those "
                                     "frames scores (1 = all; 2 halves the scoring cost)."),
            ],
            outputs=[PafuCache.Output("cache", display_name="cache"),
                     io.String.Output("estimate", display_name="estimate", tooltip="Budget and memory estimate as text.")],
        )

    @classmethod
    def execute(cls, policy, budget, budget_unit, sink_frames, reference_frames=REFERENCE_FRAMES, seed=0,
                kv_storage="model", estimate_width=832, estimate_height=480, positions=DEFAULTS.positions,
                sink_share=DEFAULTS.sink_share, query_frames=DEFAULTS.query_frames,
                query_stride=DEFAULTS.query_stride) -> io.NodeOutput:
        settings = CacheSettings(policy=policy, budget=budget, budget_unit=budget_unit,
                                 sink_frames=sink_frames, reference_frames=reference_frames, seed=seed,
                                 kv_storage=kv_storage, positions=positions, sink_share=sink_share,
                                 query_frames=query_frames, query_stride=query_stride)
        tpf = WAN21_1_3B.tokens_per_frame(estimate_height // 8, estimate_width // 8)
        text = settings.describe(tpf, WAN21_1_3B.num_layers, WAN21_1_3B.num_heads, WAN21_1_3B.head_dim,
                                 label=f" (Wan 2.1 1.3B, {estimate_width}x{estimate_height}, bf16)")
        return io.NodeOutput(settings, text, ui={"text": (text,)})
