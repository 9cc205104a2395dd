"""The pack as an artist meets it: the real frontend in headless Chromium loads and runs our workflows."""

from __future__ import annotations

import glob
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pafu_lab.world.metrics import watched_return_accuracy
from pafu_core.world.scenes import STYLE_NAMES, render_clip

from .conftest import ci_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
TINY = [w for w in WORKFLOWS if "tiny_world" in os.path.basename(w)]
WAN21 = [w for w in WORKFLOWS if "wan21" in os.path.basename(w)]
SUFFIXES = (".safetensors", ".sft")


def read_webp(path: str) -> np.ndarray:
    """[F, H, W, 3] uint8 frames of an animated WEBP."""
    img = Image.open(path)
    frames = []
    for i in range(img.n_frames):
        img.seek(i)
        frames.append(np.asarray(img.convert("RGB")))
    return np.stack(frames)


def to_world_frames(video: np.ndarray, scale: int) -> torch.Tensor:
    """[F, 16*scale, 16*scale, 3] uint8 -> [F, 3, 16, 16] in [-1, 1] (block means)."""
    x = torch.from_numpy(video).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    return torch.nn.functional.avg_pool2d(x, scale)


@pytest.fixture(scope="module")
def page(comfy, browser):
    pg = browser.new_page(viewport={"width": 1600, "height": 1000})
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: pg.errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.goto(comfy.url, wait_until="networkidle")
    pg.wait_for_function("window.app && window.app.graph", timeout=120_000)
    pg.wait_for_function("window.app.extensions.some(e => e.name === 'PaFuKV.LiveCache')", timeout=60_000)
    yield pg
    pg.close()


def ui_messages(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.p-toast-message, .p-dialog')]
        .map(e => e.innerText.trim()).filter(Boolean)""")


def close_dialogs(page) -> None:
    page.evaluate("""() => document.querySelectorAll('.p-dialog-close-button, .p-toast-icon-close')
        .forEach(b => b.click())""")
    page.wait_for_timeout(300)


def load(page, path: str) -> list[str]:
    close_dialogs(page)
    with open(path) as fh:
        graph = json.load(fh)
    page.evaluate("async (g) => { await app.loadGraphData(g); }", graph)
    page.wait_for_timeout(1500)
    return ui_messages(page)


def test_extension_loads_without_console_errors(page):
    ours = [e for e in page.errors if "pafu" in e.lower() or e.startswith("pageerror")]
    assert not ours, ours


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_workflow_loads_cleanly(page, path):
    t0 = time.time()
    messages = load(page, path)
    text = "\n".join(messages)
    assert "Invalid workflow" not in text and "zod" not in text.lower(), text
    assert "missing nodes" not in text.lower(), text
    nodes = json.load(open(path))["nodes"]
    declared = [m for n in nodes for m in n.get("properties", {}).get("models", [])]
    assert all(m["name"].endswith(SUFFIXES) for m in declared), declared      # the frontend offers only these
    assert all("/resolve/" in m["url"] and m["url"].startswith("https://huggingface.co/") for m in declared)
    if "tiny_world" in path:
        assert not messages and not declared, messages          # zero-download templates
    else:     # the real-Wan workflows may only ask for their model files
        assert all("model" in m.lower() for m in messages), messages
    types = {n["type"] for n in json.load(open(path))["nodes"]}
    loaded = set(page.evaluate("() => app.graph._nodes.map(n => n.type)"))
    assert types <= loaded, types - loaded
    ci_line(f"workflow {os.path.basename(path)}: loaded in the frontend without alerts in {time.time() - t0:.1f} s")


def start_from_frontend(page) -> str:
    """Press Run the way the button does; returns the prompt id once it starts executing."""
    page.evaluate("""() => { window.__pafuPromptId = null;
        window.comfyAPI.api.api.addEventListener('execution_start',
            (e) => { window.__pafuPromptId = e.detail.prompt_id; }, { once: true }); }""")
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    page.wait_for_function("window.__pafuPromptId !== null", timeout=120_000)
    return page.evaluate("window.__pafuPromptId")


def queue_from_frontend(page, comfy, timeout: float = 1200) -> dict:
    """Press Run the way the button does, then wait for this prompt's history entry."""
    return comfy.wait_history(start_from_frontend(page), timeout)


def output_files(entry: dict, output_dir: str, node_type_prefix: str) -> list[str]:
    paths = []
    for out in entry["outputs"].values():
        for item in out.get("images", []):
            if item["filename"].startswith(node_type_prefix):
                paths.append(os.path.join(output_dir, item.get("subfolder", ""), item["filename"]))
    return paths


def run_workflow(page, comfy, name_part: str) -> dict:
    """Load a workflow file in the frontend, press Run, require success; logs a CI line."""
    path = next(w for w in TINY if name_part in w)
    assert not load(page, path)
    t0 = time.time()
    entry = queue_from_frontend(page, comfy)
    assert entry["status"]["status_str"] == "success", entry["status"]
    ci_line(f"workflow {os.path.basename(path)}: run from the frontend: "
            f"{entry['status']['status_str']} in {time.time() - t0:.0f} s")
    return entry


def core_ar_log_lines(comfy) -> list[str]:
    return [line for line in comfy.log().splitlines() if "PaFu KV cache on core ar_video" in line]


@pytest.fixture
def fresh_page(comfy, browser):
    """A page in a browser context of its own (no tabs left by other tests), wide enough to show a graph
    at 100% zoom."""
    context = browser.new_context(viewport={"width": 2000, "height": 1100})
    pg = context.new_page()
    pg.goto(comfy.url, wait_until="networkidle")
    pg.wait_for_function("window.app && window.app.graph", timeout=120_000)
    pg.wait_for_function("window.app.extensions.some(e => e.name === 'PaFuKV.LiveCache')", timeout=60_000)
    yield pg
    context.close()


def load_alone(page, path: str) -> str:
    """Load a workflow file as the page's only tab (named after the file); returns that name."""
    name = os.path.basename(path).removesuffix(".json")
    page.evaluate("async ([g, name]) => { await app.loadGraphData(g, true, true, name); }", [json.load(open(path)), name])
    page.evaluate("""async () => { const w = app.extensionManager.workflow;
        for (const t of [...w.openWorkflows]) if (t !== w.activeWorkflow) await w.closeWorkflow(t, {warnIfUnsaved: false}); }""")
    assert page.evaluate("() => app.extensionManager.workflow.openWorkflows.length") == 1
    return name


def test_core_ar_workflow_runs_with_a_bounded_cache(fresh_page, comfy, output_dir, artifacts):
    """Core's UNETLoader -> PaFu KV Cache Patch -> SamplerARVideo, 360 frames (10x the training clip); the
    README's screenshot of it is taken here, at 100% zoom, one tab, the output preview showing."""
    page = fresh_page
    before = len(core_ar_log_lines(comfy))
    load_alone(page, next(w for w in TINY if "core_ar" in w))
    entry = queue_from_frontend(page, comfy)
    assert entry["status"]["status_str"] == "success", entry["status"]
    video = read_webp(output_files(entry, output_dir, "pafu_tiny_core_ar")[0])
    assert video.shape[0] == 360, video.shape
    line = core_ar_log_lines(comfy)[before]
    # 25% of 36 frames = 9 frames x 16 tokens, at any length; the bytes the cache owns never grow
    assert "360 latent frames" in line and "kept 144 tokens/layer" in line, line
    held = float(line.split("K/V held ")[1].split(" MiB")[0])
    assert held == pytest.approx(4 * 2 * 144 * 128 * 4 / 2**20, abs=0.005), line   # logged to 2 decimals
    ci_line(f"core ar_video + PaFu patch, 360 frames: {line.split(': ', 1)[1]}")
    page.evaluate("() => { app.canvas.ds.scale = 1.0; app.canvas.ds.offset = [70, 90]; app.canvas.setDirty(true, true); }")
    page.wait_for_timeout(1500)
    assert page.evaluate("() => app.canvas.ds.scale") == 1.0
    page.screenshot(path=os.path.join(artifacts, "core_ar_graph.png"))
    frame = Image.fromarray(video[18 * 9]).resize((256, 256), Image.NEAREST)
    frame.convert("RGB").save(os.path.join(artifacts, "pafu_tiny_world_core_ar.jpg"), quality=90)


def test_core_ar_workflow_with_deep_forcing_realigned_runs_bounded(page, comfy, output_dir):
    """The same core-AR template with the budget switched, in the frontend, to deep_forcing with realigned
    positions (the Wan default's recipe): it runs, the cache stays at its budget, the log says realigned."""
    before = len(core_ar_log_lines(comfy))
    load(page, next(w for w in TINY if "core_ar" in w))
    page.evaluate("""() => { const n = app.graph._nodes.find((n) => n.type === 'PaFuKVCacheBudget');
        for (const [k, v] of [['policy', 'deep_forcing'], ['positions', 'realigned']])
            n.widgets.find((w) => w.name === k).value = v;
        const s = app.graph._nodes.find((n) => n.type === 'SaveAnimatedWEBP');
        s.widgets.find((w) => w.name === 'filename_prefix').value = 'pafu_core_ar_deep_forcing'; }""")
    entry = queue_from_frontend(page, comfy)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert read_webp(output_files(entry, output_dir, "pafu_core_ar_deep_forcing")[0]).shape[0] == 360
    line = core_ar_log_lines(comfy)[before]
    assert "policy deep_forcing" in line and "realigned" in line and "kept 144 tokens/layer" in line, line
    ci_line(f"core ar_video + PaFu patch, deep_forcing realigned, 360 frames: {line.split(': ', 1)[1]}")


def test_long_video_workflow_runs_with_live_cache_view(page, comfy, output_dir, artifacts):
    entry = run_workflow(page, comfy, "long_video")
    video = read_webp(output_files(entry, output_dir, "pafu_tiny_long_0")[0])
    assert video.shape[0] == 360, video.shape
    kept = read_webp(output_files(entry, output_dir, "pafu_tiny_long_kept")[0])
    assert kept.shape[0] == 360
    assert os.path.isfile(output_files(entry, output_dir, "pafu_tiny_long_curves")[0])
    # the live view drew one point per finished chunk
    sampler_id = page.evaluate("() => String(app.graph._nodes.find(n => n.type === 'PaFuARChunkSampler').id)")
    view = f".pafu-live[data-node-id='{sampler_id}']"
    points = page.evaluate(f"() => document.querySelector(\"{view}\").querySelectorAll('.pafu-point').length")
    assert points == 120, points
    caption = page.evaluate(f"() => document.querySelector(\"{view} .pafu-caption\").textContent")
    assert "chunk 120, frame 360/360" in caption, caption
    page.evaluate("""() => { const n = app.graph._nodes.find(n => n.type === 'PaFuARChunkSampler');
        app.canvas.ds.offset = [-n.pos[0] + 200, -n.pos[1] + 100]; app.canvas.ds.scale = 1.2; app.canvas.setDirty(true, true); }""")
    page.wait_for_timeout(800)
    # the live view's text stays inside its node (it floated below it in the 0.27 frontend once)
    inside = page.evaluate(f"""() => {{
        const n = app.graph._nodes.find(n => n.type === 'PaFuARChunkSampler');
        const ds = app.canvas.ds, box = app.canvas.canvas.getBoundingClientRect();
        const top = box.top + (n.pos[1] + ds.offset[1]) * ds.scale;
        const bottom = box.top + (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale;
        const cap = document.querySelector("{view} .pafu-caption").getBoundingClientRect();
        return {{top, bottom, capTop: cap.top, capBottom: cap.bottom}}; }}""")
    assert inside["top"] - 2 <= inside["capTop"] and inside["capBottom"] <= inside["bottom"] + 2, inside
    page.screenshot(path=os.path.join(artifacts, "live_cache_view.png"))
    frame = Image.fromarray(video[18 * 9]).resize((256, 256), Image.NEAREST)
    frame.convert("RGB").save(os.path.join(artifacts, "pafu_tiny_world_long_video.jpg"), quality=90)


def test_comparison_workflow_policies_part_where_the_budget_first_binds(page, comfy, output_dir, artifacts):
    """Same seed, same noise: all four panels agree until the cache first overflows its budget
    (9 frames = 25% of the 36-frame clip, first exceeded when chunk 4 is written), and PaFu's video
    departs from FIFO's after that. The world's score of every panel goes to the CI log."""
    entry = run_workflow(page, comfy, "comparison")
    video = read_webp(output_files(entry, output_dir, "pafu_tiny_compare_0")[0])
    assert video.shape[0] == 360
    scale, gap, side = 8, 8, 128
    panels = {name: video[:, :, i * (side + gap): i * (side + gap) + side]
              for i, name in enumerate(("world", "keep_all", "fifo", "sink_window", "pafu"))}
    truth = render_clip(0, 360, style=STYLE_NAMES.index("blue")).frames          # the scene's world_seed 0
    assert np.abs(to_world_frames(panels.pop("world"), scale) - truth).max() < 0.05
    same_until = 12              # chunks 0-3 are generated before any eviction under any policy
    for name in ("fifo", "sink_window", "pafu"):
        assert np.array_equal(panels[name][:same_until], panels["keep_all"][:same_until]), name
    assert not np.array_equal(panels["pafu"][same_until:], panels["fifo"][same_until:])
    kept = read_webp(output_files(entry, output_dir, "pafu_tiny_compare_kept")[0])
    assert kept.shape[0] == 360 and kept.shape[2] == 3 * side + 2 * gap        # FIFO | sink | PaFu token maps
    score = {name: watched_return_accuracy(to_world_frames(v, scale), truth) for name, v in panels.items()}
    ci_line("comparison workflow (the model watches the world), score (right - invented, per object) by panel: "
            + ", ".join(f"{k} {v:.3f}" for k, v in score.items()))
    frame = Image.fromarray(video[18 * 9]).resize((video.shape[2] // 2, video.shape[1] // 2), Image.NEAREST)
    frame.convert("RGB").save(os.path.join(artifacts, "pafu_tiny_world_policy_comparison.jpg"), quality=90)


def test_distill_workflow_makes_a_head_resumes_after_a_cancel_and_the_sampler_uses_it(fresh_page, comfy, output_dir,
                                                                                     heads_dir, artifacts):
    """The zero-download distillation template from the frontend, with the node's default recipe: Run, cancel
    from the frontend once the node reports training, Run again: it resumes at the step it stopped at, writes
    the head and its card, leaves no work folder, the head loader lists the head without a restart, and the
    sampler runs with it. The template's thumbnail is this run's fidelity chart."""
    page = fresh_page
    path = next(w for w in TINY if "distill" in w)
    load_alone(page, path)
    head = next(n for n in json.load(open(path))["nodes"] if n["type"] == "PaFuDistillSalienceHead")
    name = head["widgets_values"][1]
    work = os.path.join(comfy.base, "user", "pafu_distill")
    page.evaluate("""() => { window.__pafuTexts = [];
        window.comfyAPI.api.api.addEventListener('progress_text', (e) => window.__pafuTexts.push(e.detail.text)); }""")
    t0 = time.time()
    prompt_id = start_from_frontend(page)
    page.wait_for_function("window.__pafuTexts.some((t) => /^training [1-9]/.test(t))", timeout=600_000)
    page.evaluate("(id) => window.comfyAPI.api.api.interrupt(id)", prompt_id)       # the frontend's cancel
    entry = comfy.wait_history(prompt_id)
    assert "execution_interrupted" in [kind for kind, _ in entry["status"]["messages"]], entry["status"]
    (state,) = glob.glob(os.path.join(work, "*", "distill_state.pt"))
    assert not [f for f in os.listdir(os.path.dirname(state)) if f.endswith(".tmp")]
    stopped_at = int(torch.load(state, map_location="cpu", weights_only=True)["step"])
    assert stopped_at > 0 and not os.path.exists(os.path.join(heads_dir, f"{name}.safetensors"))

    entry = queue_from_frontend(page, comfy)
    assert entry["status"]["status_str"] == "success", entry["status"]
    distill_id = page.evaluate("() => String(app.graph._nodes.find((n) => n.type === 'PaFuDistillSalienceHead').id)")
    summary = "\n".join(entry["outputs"][distill_id]["text"])
    assert f"training from {stopped_at}" in summary, summary
    assert sorted(f for f in os.listdir(heads_dir) if f.startswith(name)) == [f"{name}.md", f"{name}.safetensors"]
    assert not os.listdir(work), os.listdir(work)
    listed = page.evaluate("""async () => { await app.refreshComboInNodes();
        const n = LiteGraph.createNode('PaFuSalienceHeadLoader');
        return n.widgets.find((w) => w.name === 'head_name').options.values; }""")
    assert f"{name}.safetensors" in listed, listed
    video = read_webp(output_files(entry, output_dir, "pafu_tiny_distill_0")[0])
    assert video.shape[0] == 360, video.shape
    (chart,) = output_files(entry, output_dir, "pafu_tiny_distill_fidelity")
    ci_line(f"workflow {os.path.basename(path)}: run from the frontend, cancelled at training step {stopped_at}, "
            f"resumed there, head + card written, listed, sampler ran 360 frames in {time.time() - t0:.0f} s; "
            + summary.splitlines()[1])
    thumb = Image.open(chart).convert("RGB")
    thumb.thumbnail((512, 512))
    thumb.save(os.path.join(artifacts, "pafu_tiny_world_distill.jpg"), quality=90)


TEMPLATE_NAMES = {"causal_forcing-framewise.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                  "wan_2.1_vae.safetensors"}


@pytest.mark.parametrize("path", WAN21, ids=os.path.basename)
def test_wan_workflow_thumbnail_and_models_declared(fresh_page, artifacts, path):
    """The real-Wan workflows cannot run here (no weights): their thumbnails are screenshots of the loaded
    graph (one tab, the missing-models panel dismissed, at a zoom where node text still renders), and every
    model they declare is one ComfyUI's own templates name, with its URL."""
    page = fresh_page
    name = load_alone(page, path)
    page.wait_for_timeout(1500)
    panel = page.get_by_role("button", name="Dismiss")
    missing = panel.count()
    if missing:
        panel.first.click()
    close_dialogs(page)
    page.evaluate("() => { const s = 0.75; app.canvas.ds.scale = s; app.canvas.ds.offset = [70 / s, 80 / s];"
                  " app.canvas.setDirty(true, true); }")
    page.wait_for_timeout(800)
    page.screenshot(path=os.path.join(artifacts, name + ".jpg"), type="jpeg", quality=85)
    nodes = json.load(open(path))["nodes"]
    declared = {m["name"] for n in nodes for m in n.get("properties", {}).get("models", [])}
    assert declared and declared <= TEMPLATE_NAMES, declared
    ci_line(f"workflow {os.path.basename(path)}: loaded in one tab, asks only for its models "
            f"({'a missing-models panel' if missing else 'no panel'}), thumbnail from the loaded graph")


@pytest.fixture
def stand_in_models(comfy):
    """Tiny stand-in files under the Wan templates' model names (and one input image), removed afterwards:
    validation checks that the files exist, not what they hold."""
    made = []
    for path in (w for w in WORKFLOWS if "wan21" in w):
        for n in json.load(open(path))["nodes"]:
            for m in n.get("properties", {}).get("models", []):
                target = os.path.join(comfy.base, "models", m["directory"], m["name"])
                if not os.path.exists(target):
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as fh:
                        fh.write(b"stand-in")
                    made.append(target)
    image = os.path.join(comfy.base, "input", "pafu_stand_in.png")
    Image.new("RGB", (64, 64), (90, 120, 200)).save(image)
    made.append(image)
    yield "pafu_stand_in.png"
    for target in made:
        os.remove(target)


@pytest.mark.parametrize("path", [w for w in WAN21], ids=os.path.basename)
def test_wan_workflow_validates_once_its_models_are_present(page, comfy, stand_in_models, path):
    """With files under the template's names, the graph the frontend queues passes the server's validation
    (the bypassed head loader is left out); the stand-ins then fail to load, which is all they can do."""
    load(page, path)
    close_dialogs(page)
    page.evaluate("""(image) => { for (const n of app.graph._nodes) if (n.type === 'LoadImage') {
        const w = n.widgets.find((w) => w.name === 'image'); w.value = image; } }""", stand_in_models)
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert not [n for n in prompt.values() if n["class_type"] == "PaFuSalienceHeadLoader"]
    resp = comfy.post("/prompt", {"prompt": prompt})
    assert "prompt_id" in resp and not resp.get("node_errors"), resp
    entry = comfy.wait_history(resp["prompt_id"], timeout=300)
    failed = [m[1].get("node_type") for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success" or failed[0] in ("UNETLoader", "CLIPLoader", "VAELoader"), failed
    ci_line(f"workflow {os.path.basename(path)}: /prompt accepted with stand-in models (then {failed or 'ran'})")


def test_interrupt_stops_between_steps_frees_cache_and_next_run_matches(comfy, output_dir):
    from .prompts import tiny_prompt
    prompt = tiny_prompt(policy="pafu", frames=720, seed=11, prefix="pafu_interrupt")   # ~15 s of sampling
    resp = comfy.post("/prompt", {"prompt": prompt})
    pid = resp["prompt_id"]
    t0 = time.time()
    while not comfy.get("/queue")["queue_running"] and time.time() - t0 < 60:
        time.sleep(0.2)
    time.sleep(4)                                   # well inside the sampler
    comfy.post("/interrupt", {})
    entry = comfy.wait_history(pid)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    assert "PaFu AR Chunk Sampler interrupted" in comfy.log() and "cache freed" in comfy.log()
    rerun = comfy.run_prompt(prompt)
    assert rerun["status"]["status_str"] == "success", rerun["status"]
    comfy.post("/free", {"free_memory": True, "unload_models": True})   # drop ComfyUI's output cache
    time.sleep(2)
    fresh = comfy.run_prompt(prompt)
    assert fresh["status"]["status_str"] == "success"
    a = read_webp(output_files(rerun, output_dir, "pafu_interrupt")[0])
    b = read_webp(output_files(fresh, output_dir, "pafu_interrupt")[0])
    assert a.shape[0] == 720 and np.array_equal(a, b)


def test_publish_artifacts(artifacts):
    """Keep the screenshots and thumbnails of this run where the README and workflows can take them."""
    for name in ("live_cache_view.png", "core_ar_graph.png"):
        assert os.path.isfile(os.path.join(artifacts, name)), name
    if os.environ.get("PAFU_UPDATE_THUMBNAILS"):
        for jpg in glob.glob(os.path.join(artifacts, "pafu_*.jpg")):
            shutil.copy(jpg, os.path.join(ROOT, "workflows", os.path.basename(jpg)))
        for png in ("live_cache_view.png", "core_ar_graph.png"):
            shutil.copy(os.path.join(artifacts, png), os.path.join(ROOT, "docs", png))
