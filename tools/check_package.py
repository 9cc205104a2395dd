"""Registry readiness: `comfy node validate` passes and `comfy node pack` holds what users need, nothing else.

    python tools/check_package.py          # needs comfy-cli (PyPI) and git; run in CI
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ["__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "docs/paper.md",
            "nodes/sampler.py", "nodes/cache_patch.py", "pafu_core/cache.py", "pafu_core/native.py",
            "web/js/pafu_live.js", "web/js/pafu_chart.js", "web/docs/PaFuARChunkSampler.md",
            "web/docs/PaFuKVCachePatch.md",
            "pafu_core/world/assets/diffusion_models/pafu_tiny_world_student.safetensors",
            "pafu_core/world/assets/heads/pafu_tiny_world.safetensors",
            "workflows/pafu_tiny_world_long_video.json", "workflows/pafu_tiny_world_long_video.jpg",
            "workflows/pafu_tiny_world_core_ar.json", "workflows/pafu_tiny_world_core_ar.jpg",
            "workflows/pafu_tiny_world_distill.json", "workflows/pafu_tiny_world_distill.jpg",
            "pafu_core/distill/job.py", "nodes/make_head.py"]
FORBIDDEN_PREFIXES = ("tests/", "benchmarks/", "tools/", ".ci/", "runs/", "artifacts/", "pafu_lab/")


def comfy(*args: str, cwd: str) -> str:
    exe = shutil.which("comfy") or os.path.join(os.path.dirname(sys.executable), "comfy")
    proc = subprocess.run([exe, "--skip-prompt", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"comfy {' '.join(args)} failed:\n{out}")
    return out


def main() -> None:
    print(comfy("node", "validate", cwd=ROOT).strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        # pack a clean clone so nothing untracked or local can leak into the zip
        subprocess.run(["git", "clone", "-q", ROOT, tmp + "/pack"], check=True)
        comfy("node", "pack", cwd=tmp + "/pack")
        with zipfile.ZipFile(tmp + "/pack/node.zip") as z:
            names = set(z.namelist())
            size = sum(i.file_size for i in z.infolist())
    missing = [n for n in REQUIRED if n not in names]
    leaked = sorted(n for n in names if n.startswith(FORBIDDEN_PREFIXES))
    if missing or leaked:
        raise SystemExit(f"registry zip: missing {missing}, should not contain {leaked}")
    print(f"registry zip: {len(names)} files, {size / 2**20:.1f} MiB, no tests/benchmarks/tools/research")


if __name__ == "__main__":
    main()
