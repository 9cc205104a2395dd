"""The Wan-scale GPU suite runs end to end on the CPU at a tiny shape, so it cannot rot."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("items 1-4", "item 4: 8-bit", "item 5", "item 6", "item 7", "item 8")


def test_gpu_suite_runs_every_part_at_a_tiny_shape(tmp_path):
    proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="2", PYTHON=sys.executable))    # not whatever python is on PATH
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (tmp_path / "gpu_suite_results.md").read_text()
    for part in PARTS:
        assert f"## {part}" in results, part
    assert "FAILED" not in results, results
    assert "x lean" in results and "fifo (int8)" in results                  # the lean-reference ratios, 8 bits
    assert "deep_forcing / fifo" in results and "| deep_forcing, newest frame |" in results   # the Wan default's cost
    assert "PSNR int8 vs full-precision cache" in results
    assert "keep_all fills the same memory after" in results
    assert "targets_s_per_clip" in results
    if os.environ.get("COMFYUI_PATH"):
        assert "ComfyUI path / core path" in results
