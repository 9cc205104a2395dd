"""The pack inside a running ComfyUI 0.8.0: it loads, its nodes are declared, bad input reads well."""

from __future__ import annotations

import os

import pytest

from pafu_core.salience import HeadConfig, SalienceHead, save_head

from .conftest import ci_line
from .prompts import core_ar_prompt, error_message, tiny_prompt

EXPECTED_INPUTS = {
    "PaFuSalienceHeadLoader": {"source": "COMBO", "head_name": "COMBO", "repo_id": "STRING", "filename": "STRING",
                               "revision": "STRING"},
    "PaFuKVCacheBudget": {"policy": "COMBO", "budget": "FLOAT", "budget_unit": "COMBO", "sink_frames": "INT",
                          "reference_frames": "INT", "seed": "INT", "kv_storage": "COMBO", "estimate_width": "INT",
                          "estimate_height": "INT", "positions": "COMBO", "sink_share": "FLOAT",
                          "query_frames": "INT", "query_stride": "INT"},
    "PaFuARChunkSampler": {"model": "MODEL", "positive": "CONDITIONING", "latent": "LATENT", "cache": "PAFU_CACHE",
                           "seed": "INT", "chunk_frames": "INT", "timesteps": "STRING", "context_timestep": "FLOAT",
                           "head": "PAFU_HEAD", "negative": "CONDITIONING", "cfg": "FLOAT", "noise_stream": "COMBO",
                           "timeline": "PAFU_TIMELINE", "start": "LATENT", "watch": "LATENT"},
    "PaFuKVCachePatch": {"model": "MODEL", "cache": "PAFU_CACHE", "head": "PAFU_HEAD"},
    "PaFuCacheReport": {"report": "PAFU_REPORT", "frames": "IMAGE", "report_b": "PAFU_REPORT",
                        "report_c": "PAFU_REPORT", "report_d": "PAFU_REPORT"},
    "PaFuARCheckpointLoader": {"ckpt_name": "COMBO", "weight_dtype": "COMBO"},
    "PaFuTinyWorldModel": {},
    "PaFuTinyWorldScene": {"style": "COMBO", "latent_frames": "INT", "batch_size": "INT", "world_seed": "INT"},
    "PaFuTinyWorldStart": {"model": "MODEL", "style": "COMBO", "world_seed": "INT", "latent_frames": "INT",
                           "batch_size": "INT"},
    "PaFuTinyWorldDecode": {"latent": "LATENT", "scale": "INT"},
    "PaFuPromptList": {f"prompt_{i}": "CONDITIONING" for i in range(1, 9)} | {f"videos_{i}": "LATENT" for i in range(1, 9)},
    "PaFuDistillSalienceHead": {"model": "MODEL", "prompts": "PAFU_PROMPTS", "latent": "LATENT", "budget": "FLOAT",
                                "name": "STRING", "rollouts": "INT", "clip_frames": "INT", "steps": "INT",
                                "chunk_frames": "INT", "timesteps": "STRING", "seed": "INT"},
    "PaFuPromptTimeline": {"change_frames": "STRING", "prompt_2": "CONDITIONING", "prompt_3": "CONDITIONING",
                           "prompt_4": "CONDITIONING", "recache": "BOOLEAN"},
    "PaFuTimelineGuider": {"model": "MODEL", "positive": "CONDITIONING", "timeline": "PAFU_TIMELINE",
                           "negative": "CONDITIONING", "cfg": "FLOAT"},
}
DISPLAY = {"PaFuSalienceHeadLoader": "PaFu Salience Head Loader", "PaFuKVCacheBudget": "PaFu KV Cache Budget",
           "PaFuARChunkSampler": "PaFu AR Chunk Sampler", "PaFuCacheReport": "PaFu Cache Report",
           "PaFuKVCachePatch": "PaFu KV Cache Patch", "PaFuDistillSalienceHead": "PaFu Distill Salience Head",
           "PaFuPromptList": "PaFu Prompt List"}


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


CLASS_NAMES = ("Traceback", "KeyError", "AttributeError", "TypeError", "JSONDecodeError", "UnpicklingError",
               "HFValidationError", "ZeroDivisionError", "IndexError", "EOFError")


def with_inputs(prompt: dict, node: str, **inputs) -> dict:
    prompt[node]["inputs"].update(inputs)
    return prompt


def without_head(prompt: dict) -> dict:
    del prompt["head"]
    del prompt["sampler"]["inputs"]["head"]
    return prompt


@pytest.fixture(scope="module")
def hostile_files(comfy, heads_dir):
    """Broken heads in models/pafu_heads and broken checkpoints in models/diffusion_models of the
    server's own base directory (the malformed-file classes of the core fuzz test, met through a server)."""
    import tempfile

    from tests.test_hostile_files import checkpoint_cases, head_cases, write
    ckpts = os.path.join(comfy.base, "models", "diffusion_models")
    os.makedirs(ckpts, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        heads = head_cases(tmp)
        picked_heads = {k: heads[k] for k in ("truncated_at_9", "random_header_0", "no_data_offsets", "pafu_not_json",
                                              "hidden_is_text", "million_layers", "w1_nan", "pickle_payload",
                                              "torch_save_zip", "metadata_not_dict")}
        for name, content in picked_heads.items():
            write(os.path.join(heads_dir, f"bad_{name}.safetensors"), content)
        ckpt = checkpoint_cases(tmp)
        picked = {k: ckpt[k] for k in ("list", "bare_tensor", "empty_pt", "head_modulation_wrong", "narrow_model",
                                       "st_truncated")}
        for name, (suffix, content) in picked.items():
            write(os.path.join(ckpts, f"bad_{name}{suffix}"), content)
    return sorted(f"bad_{n}.safetensors" for n in picked_heads), sorted(f"bad_{n}{s}" for n, (s, _) in picked.items())


def bad_input_cases(foreign_head, hostile_files):
    """(class, prompt, expected text in the error) - what an artist could send, through the server."""
    heads, ckpts = hostile_files
    nan = float("nan")      # (inf never reaches us: ComfyUI's own min/max check refuses it)
    cases = [
        ("head for another backbone", tiny_prompt(frames=12, head_name=foreign_head), "dim is 1536 in the head but 128"),
        ("budget below one chunk", tiny_prompt(frames=12, budget=1, budget_unit="latent_frames"), "smaller than one chunk"),
        ("latent of another model", tiny_prompt(frames=12, latent_node={"class_type": "EmptyMochiLatentVideo", "inputs": {
            "width": 48, "height": 48, "length": 7, "batch_size": 1}}), "latent has 12 channels but the model expects 16"),
        ("image latent", tiny_prompt(frames=12, latent_node={"class_type": "EmptyLatentImage", "inputs": {
            "width": 64, "height": 64, "batch_size": 1}}), "needs a video latent"),
        ("cfg NaN", with_inputs(tiny_prompt(frames=12), "sampler", cfg=nan), "cfg must be a finite number"),
        ("budget NaN", with_inputs(tiny_prompt(frames=12), "budget", budget=nan), "budget must be a finite number"),
        ("context timestep NaN", with_inputs(tiny_prompt(frames=12), "sampler", context_timestep=nan),
         "context_timestep must be a finite number"),
        ("timesteps not numbers", with_inputs(tiny_prompt(frames=12), "sampler", timesteps="1000, lots"), "comma-separated"),
        ("timesteps increasing", with_inputs(tiny_prompt(frames=12), "sampler", timesteps="250,500"), "strictly decreasing"),
        ("pafu without a head", without_head(tiny_prompt(frames=12)), "needs a salience head"),
        ("keep-all longer than memory allows", with_inputs(tiny_prompt(policy="keep_all", frames=4096), "scene",
                                                           batch_size=16), "keep_all cache needs"),
        ("hub repo id with spaces", with_inputs(tiny_prompt(frames=12), "head", source="hub", repo_id="my org/heads",
                                                filename="h.safetensors"), "owner/name"),
        ("hub revision escaping its folder", with_inputs(tiny_prompt(frames=12), "head", source="hub",
                                                         repo_id="owner/heads", filename="h.safetensors",
                                                         revision="../../.."), "revision"),
        ("hub file not on disk, offline", with_inputs(tiny_prompt(frames=12), "head", source="hub", repo_id="owner/heads",
                                                      filename="h.safetensors"), "offline mode is on"),
        ("decode of a latent that is not the tiny world's", _decode_other_latent(), "tiny-world video latent"),
        ("report over frames of another video", _report_over(tiny_prompt(frames=12)), "do not belong to this report's video"),
    ]
    for name in heads:
        cases.append((f"malformed head file ({name[4:-12]})", tiny_prompt(frames=12, head_name=name), name))
    for name in ckpts:
        cases.append((f"malformed checkpoint ({name[4:]})", tiny_prompt(frames=12, model_node={
            "class_type": "PaFuARCheckpointLoader", "inputs": {"ckpt_name": name, "weight_dtype": "default"}}), name))
    return cases


def _report_over(prompt: dict) -> dict:
    prompt["other"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 5, "color": 0}}
    prompt["report"] = {"class_type": "PaFuCacheReport", "inputs": {"report": ["sampler", 1], "frames": ["other", 0]}}
    return prompt


def _decode_other_latent() -> dict:
    return {"lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "bad": {"class_type": "PaFuTinyWorldDecode", "inputs": {"latent": ["lat", 0], "scale": 1}},
            "save": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["bad", 0], "filename_prefix": "x",
                                                                  "fps": 8.0, "lossless": True, "quality": 100,
                                                                  "method": "fastest"}}}


@pytest.fixture(scope="module")
def foreign_head(heads_dir):
    """A head trained for another backbone (Wan 1.3B shape) in models/pafu_heads."""
    path = os.path.join(heads_dir, "ring_head_for_wan13b.safetensors")
    save_head(SalienceHead(HeadConfig(num_layers=30, dim=1536, num_heads=12, hidden=4)), path)
    yield os.path.basename(path)
    os.remove(path)


def test_bad_input_reads_well_and_the_server_stays_healthy(comfy, foreign_head, hostile_files):
    """Every class of bad input an artist can send: one readable sentence, no traceback, no crash; the
    server answers after each. The counts go to the CI log (the README's Reliability table)."""
    from .conftest import require_core_ar
    cases = bad_input_cases(foreign_head, hostile_files)
    try:
        require_core_ar()
        cases += [("budget below one block on core's AR sampler", core_ar_prompt(budget=2.0), "smaller than one chunk"),
                  ("attention-mass policy on core's AR sampler", core_ar_prompt(policy="attention_mass"),
                   "reads attention"),
                  ("patch on a bidirectional Wan", core_ar_prompt(model_node={"class_type": "PaFuARCheckpointLoader",
                   "inputs": {"ckpt_name": "pafu_tiny_world_student.safetensors", "weight_dtype": "default"}}),
                   "CausalWanModel")]
    except pytest.skip.Exception:
        pass
    readable = healthy = 0
    failures = []
    for name, prompt, expected in cases:
        entry = comfy.run_prompt(prompt)
        msg = error_message(entry)
        ok = (entry["status"]["status_str"] == "error" and expected in msg
              and not any(c in msg for c in CLASS_NAMES) and "\n  File " not in msg)
        readable += ok
        if not ok:
            failures.append((name, entry["status"]["status_str"], msg[:300]))
        alive = comfy.proc.poll() is None and comfy.get("/object_info/PaFuKVCacheBudget")
        healthy += bool(alive)
    ci_line(f"bad input through the server: {len(cases)} cases tried, {readable} readable errors, "
            f"{len(cases) - healthy} crashes, server healthy after {healthy} of {len(cases)}")
    assert not failures, failures
    assert healthy == len(cases)
