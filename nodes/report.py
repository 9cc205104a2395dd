"""PaFu Cache Report: pictures and a summary of what the cache did during a rollout."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pafu_core.plots import render_curves, render_token_heatmaps
from .types import PafuReport


class PaFuCacheReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PaFuCacheReport",
            display_name="PaFu Cache Report",
            category="PaFu-KV",
            description="Cache memory and chunk time against the frame index, a per-frame map of the tokens "
                        "the cache kept, and a text summary. Connect up to four reports to compare policies.",
            inputs=[
                PafuReport.Input("report", tooltip="Report from a PaFu AR Chunk Sampler."),
                io.Image.Input("frames", optional=True,
                               tooltip="Decoded frames of the same video: the kept-token map is drawn over them."),
                PafuReport.Input("report_b", optional=True, tooltip="A second rollout to plot beside the first."),
                PafuReport.Input("report_c", optional=True, tooltip="A third rollout to plot beside the others."),
                PafuReport.Input("report_d", optional=True, tooltip="A fourth rollout to plot beside the others."),
            ],
            outputs=[io.Image.Output("curves", display_name="curves", tooltip="Memory (MiB) and chunk time (ms) per frame."),
                     io.Image.Output("kept_tokens", display_name="kept_tokens",
                                     tooltip="Per frame: share of layers that still hold each token at the end."),
                     io.String.Output("summary", display_name="summary")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, report, frames=None, report_b=None, report_c=None, report_d=None) -> io.NodeOutput:
        reports = [r for r in (report, report_b, report_c, report_d) if r is not None]
        curves = torch.from_numpy(render_curves(reports).copy()).float().div(255).unsqueeze(0)
        grid = report.grid_hw
        kept = render_token_heatmaps(report, grid, frames)
        summary = "\n".join(r.summary() for r in reports)
        return io.NodeOutput(curves, kept, summary, ui={"text": (summary,)})
