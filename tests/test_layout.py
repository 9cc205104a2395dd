"""Architecture rules that keep the pack easy to see: the core never imports ComfyUI."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_core_imports_no_comfyui_module():
    code = ("import sys, pafu_core, pafu_core.distill, pafu_core.demo, pafu_core.world.train, pafu_core.world.evaluate;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'server', "
            "'nodes', 'latent_preview')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_entry_point_imports_outside_comfyui():
    """ComfyUI imports the pack's __init__; outside ComfyUI it must not fail either."""
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('pack', '__init__.py', "
            "submodule_search_locations=['.']); m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; "
            "spec.loader.exec_module(m); print(m.WEB_DIRECTORY)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "./web" in proc.stdout, proc.stderr


def test_entry_point_loads_as_a_plain_module_too():
    """pytest (or a checkout folder like `ComfyUI-PaFuKV`, no valid package name) may load it bare."""
    code = ("import importlib.util; spec = importlib.util.spec_from_file_location('bare', '__init__.py');"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.WEB_DIRECTORY)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "./web" in proc.stdout, proc.stderr


def test_example_wan_config_parses_into_a_distillation_config():
    from pafu_core.distill import _parse
    cfg = _parse(["--config", os.path.join(ROOT, "configs", "distill_wan21_1.3b.json")])
    assert cfg.targets == "future_student" and cfg.sse_source == "student" and cfg.rescore
    assert cfg.latent_size == (60, 104) and cfg.feature_tokens > 0 and cfg.device == "cuda"


def test_registry_metadata_and_requirements_agree():
    import base64
    import io
    import tomllib

    from PIL import Image
    meta = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))
    deps = meta["project"]["dependencies"]
    reqs = [line.strip() for line in open(os.path.join(ROOT, "requirements.txt"))
            if line.strip() and not line.startswith("#")]
    assert sorted(deps) == sorted(reqs) and not any(r.startswith("torch") for r in reqs)
    icon = meta["tool"]["comfy"]["Icon"]
    assert icon.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(icon.split(",", 1)[1]))).size == (64, 64)
