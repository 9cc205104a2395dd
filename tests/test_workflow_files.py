"""The example workflows as files: what a user opens must run with the downloads it declares."""

import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
WAN = [w for w in WORKFLOWS if "wan21" in os.path.basename(w)]
MODEL_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".ckpt", ".bin", ".gguf")
BYPASSED, MUTED = 4, 2


def active_nodes(path: str) -> list[dict]:
    return [n for n in json.load(open(path))["nodes"] if n.get("mode", 0) not in (BYPASSED, MUTED)]


def test_there_are_wan_workflows():
    assert len(WAN) >= 3, WAN


@pytest.mark.parametrize("path", WAN, ids=os.path.basename)
def test_wan_workflow_needs_only_files_it_offers_to_download(path):
    """Every model file an active node names is declared with a download URL (no head for Wan exists, so
    the head loader stays bypassed and unconnected, and the budget uses a policy that needs none)."""
    nodes = active_nodes(path)
    declared = {m["name"] for n in nodes for m in n.get("properties", {}).get("models", [])}
    named = {v for n in nodes for v in n.get("widgets_values") or [] if isinstance(v, str) and v.endswith(MODEL_SUFFIXES)}
    assert named and named <= declared, named - declared
    assert not [n for n in nodes if n["type"] == "PaFuSalienceHeadLoader"]
    budgets = [n for n in nodes if n["type"] == "PaFuKVCacheBudget"]
    assert budgets and all(n["widgets_values"][0] != "pafu" for n in budgets)
    graph = json.load(open(path))
    heads = {n["id"] for n in graph["nodes"] if n["type"] == "PaFuSalienceHeadLoader"}
    assert not [link for link in graph["links"] if link[1] in heads], "a bypassed head loader stays unconnected"


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_no_seed_randomizes_on_queue(path):
    """A re-queue with nothing changed must not re-run a whole video: no seed control says randomize."""
    for n in json.load(open(path))["nodes"]:
        assert "randomize" not in (n.get("widgets_values") or []), (os.path.basename(path), n["type"])
