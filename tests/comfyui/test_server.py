"""The pack inside a running ComfyUI 0.8.0: it loads, its nodes are declared, bad input reads well."""

from __future__ import annotations

import os

import pytest

from pafu_core.salience import HeadConfig, SalienceHead, save_head

from .conftest import ci_line
from .prompts import error_message, tiny_prompt

EXPECTED_INPUTS = {
    "PaFuSalienceHeadLoader": {"source": "COMBO", "head_name": "COMBO", "repo_id": "STRING", "filename": "STRING",
                               "revision": "STRING"},
    "PaFuKVCacheBudget": {"policy": "COMBO", "budget": "FLOAT", "budget_unit": "COMBO", "sink_frames": "INT",
                          "reference_frames": "INT", "seed": "INT", "pafu_recency": "FLOAT", "estimate_width": "INT",
                          "estimate_height": "INT"},
    "PaFuARChunkSampler": {"model": "MODEL", "positive": "CONDITIONING", "latent": "LATENT", "cache": "PAFU_CACHE",
                           "seed": "INT", "chunk_frames": "INT", "timesteps": "STRING", "context_timestep": "FLOAT",
                           "head": "PAFU_HEAD", "negative": "CONDITIONING", "cfg": "FLOAT"},
    "PaFuCacheReport": {"report": "PAFU_REPORT", "frames": "IMAGE", "report_b": "PAFU_REPORT",
                        "report_c": "PAFU_REPORT", "report_d": "PAFU_REPORT"},
    "PaFuARCheckpointLoader": {"ckpt_name": "COMBO", "weight_dtype": "COMBO"},
    "PaFuTinyWorldModel": {},
    "PaFuTinyWorldScene": {"style": "COMBO", "latent_frames": "INT", "batch_size": "INT"},
    "PaFuTinyWorldDecode": {"latent": "LATENT", "scale": "INT"},
}
DISPLAY = {"PaFuSalienceHeadLoader": "PaFu Salience Head Loader", "PaFuKVCacheBudget": "PaFu KV Cache Budget",
           "PaFuARChunkSampler": "PaFu AR Chunk Sampler", "PaFuCacheReport": "PaFu Cache Report"}


def tracebacks(log: str) -> list[str]:
    """Each traceback in the log: its indented frame lines and the exception line after them."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback"):
            current = [line]
        elif current is not None:
            current.append(line)
            if not line.startswith(" "):
                blocks.append("\n".join(current))
                current = None
    return blocks


def test_pack_imports_without_errors(comfy):
    log = comfy.log()
    assert "ComfyUI-PaFuKV" in log
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "PaFuKV" in line]
    assert not failed, failed
    for block in tracebacks(log):
        assert "ComfyUI-PaFuKV" not in block, block


def test_every_node_declared_with_types_and_tooltips(comfy):
    info = comfy.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("PaFu")}
    assert set(ours) == set(EXPECTED_INPUTS), sorted(ours)
    for node_id, expected in EXPECTED_INPUTS.items():
        spec = ours[node_id]
        assert spec["python_module"].startswith("custom_nodes."), spec["python_module"]
        assert " " not in node_id
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        got = {name: (v[0] if isinstance(v[0], str) else "COMBO") for name, v in inputs.items()}
        assert got == expected, (node_id, got)
        for name, v in inputs.items():
            assert len(v) > 1 and v[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        if node_id in DISPLAY:
            assert spec["display_name"] == DISPLAY[node_id]
        assert os.path.isfile(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                                           "web", "docs", f"{node_id}.md")), f"no help page for {node_id}"
    ci_line(f"{len(ours)} PaFu nodes in /object_info, every input typed and with a tooltip")


def test_tiny_prompt_runs_through_the_api(comfy, output_dir):
    entry = comfy.run_prompt(tiny_prompt(frames=12, prefix="pafu_api_smoke"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    files = entry["outputs"]["save"]["images"]
    assert os.path.isfile(os.path.join(output_dir, files[0]["subfolder"], files[0]["filename"]))


@pytest.fixture(scope="module")
def foreign_head(heads_dir):
    """A head trained for another backbone (Wan 1.3B shape) in models/pafu_heads."""
    path = os.path.join(heads_dir, "ring_head_for_wan13b.safetensors")
    save_head(SalienceHead(HeadConfig(num_layers=30, dim=1536, num_heads=12, hidden=4)), path)
    yield os.path.basename(path)
    os.remove(path)


def test_bad_input_reads_well(comfy, foreign_head):
    cases = [
        (tiny_prompt(frames=12, head_name=foreign_head), "does not fit this model: dim is 1536 in the head but 128"),
        (tiny_prompt(frames=12, budget=1, budget_unit="latent_frames"), "smaller than one chunk"),
        (tiny_prompt(frames=12, latent_node={"class_type": "EmptyMochiLatentVideo", "inputs": {
            "width": 48, "height": 48, "length": 7, "batch_size": 1}}), "latent has 12 channels but the model expects 16"),
        (tiny_prompt(frames=12, latent_node={"class_type": "EmptyLatentImage", "inputs": {
            "width": 64, "height": 64, "batch_size": 1}}), "needs a video latent"),
    ]
    for prompt, expected in cases:
        entry = comfy.run_prompt(prompt)
        assert entry["status"]["status_str"] == "error", entry["status"]
        msg = error_message(entry)
        assert expected in msg, msg
        assert "Traceback" not in msg
