"""Smoke ring on the oldest supported ComfyUI (0.8.0, ``COMFYUI_OLDEST_PATH``): the pack loads, every node is
listed, and one tiny-world workflow runs from its real frontend."""

from __future__ import annotations

import json
import os
import time

import pytest

from .conftest import ROOT, ci_line, start_server

pytestmark = pytest.mark.oldest


@pytest.fixture(scope="module")
def oldest(artifacts):
    site = os.environ.get("COMFYUI_OLDEST_SITE")        # that release's own frontend packages, if given
    env = {"PYTHONPATH": site} if site else None
    server = start_server(os.path.abspath(os.environ["COMFYUI_OLDEST_PATH"]), artifacts, "comfyui_oldest_server", env)
    yield server
    server.stop()


def test_pack_loads_and_every_node_is_listed(oldest):
    log = oldest.log()
    assert "ComfyUI-PaFuKV" in log
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and "PaFuKV" in line]
    from .test_server import EXPECTED_INPUTS
    ours = {k for k in oldest.get("/object_info") if k.startswith("PaFu")}
    assert ours == set(EXPECTED_INPUTS), sorted(ours)
    ci_line(f"ComfyUI {oldest.version}: {len(ours)} PaFu nodes in /object_info")


def test_a_tiny_world_workflow_runs_from_the_frontend(oldest, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(oldest.url, wait_until="networkidle")
        page.wait_for_function("window.app && window.app.graph", timeout=120_000)
        with open(os.path.join(ROOT, "workflows", "pafu_tiny_world_long_video.json")) as fh:
            graph = json.load(fh)
        for node in graph["nodes"]:            # a short video: this ring checks that it runs, not its length
            if node["type"] == "PaFuTinyWorldScene":
                node["widgets_values"][1] = 36
        page.evaluate("async (g) => { await app.loadGraphData(g); }", graph)
        page.wait_for_timeout(1000)
        t0 = time.time()
        page.evaluate("""() => { window.__pafuPromptId = null;
            window.comfyAPI.api.api.addEventListener('execution_start',
                (e) => { window.__pafuPromptId = e.detail.prompt_id; }, { once: true }); }""")
        page.evaluate("async () => { await app.queuePrompt(0, 1); }")
        page.wait_for_function("window.__pafuPromptId !== null", timeout=120_000)
        entry = oldest.wait_history(page.evaluate("window.__pafuPromptId"), 600)
    finally:
        page.close()
    assert entry["status"]["status_str"] == "success", entry["status"]
    ci_line(f"ComfyUI {oldest.version}: workflow pafu_tiny_world_long_video (36 frames) run from the frontend: "
            f"success in {time.time() - t0:.0f} s")
