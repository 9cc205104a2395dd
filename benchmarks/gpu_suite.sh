#!/usr/bin/env bash
# One script for the Wan-scale measurements (issue: Wan-scale efficiency). On a GPU it runs at the Wan 2.1
# 1.3B shape (random weights time the same as real ones) in a few minutes; with --tiny it runs every part
# at a tiny shape on the CPU (the test suite does, so the script cannot rot). It needs only torch,
# safetensors, einops, numpy (and tqdm, matplotlib for the tiny world); parts whose imports are missing
# are skipped and say so. Everything goes to one results file.
#
#   bash benchmarks/gpu_suite.sh                      # GPU: Wan 1.3B shape, results in $OUT or out/gpu_suite
#   bash benchmarks/gpu_suite.sh --tiny --out /tmp/s  # CPU, tiny shapes
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
OUTDIR="${OUT:-out/gpu_suite}"
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --out) [ $# -ge 2 ] || { echo "error: --out needs a folder" >&2; exit 2; }; OUTDIR="$2"; shift ;;
    *) echo "error: unknown argument $1 (use --tiny, --out FOLDER)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUTDIR"
RESULTS="$OUTDIR/gpu_suite_results.md"
PY=${PYTHON:-python}
start=$(date +%s)
section() { printf '\n## %s\n\n```\n' "$1" >> "$RESULTS"; }
endsection() { printf '```\n' >> "$RESULTS"; }
run() {                      # run a part; its output (or why it was skipped) goes to the results file
  local title="$1"; shift
  section "$title"
  local t0=$(date +%s)
  if "$@" >> "$RESULTS" 2>"$OUTDIR/last_stderr.txt"; then
    echo "(${title}: $(( $(date +%s) - t0 )) s)" >> "$RESULTS"
  else
    echo "FAILED or SKIPPED: $(tail -n 3 "$OUTDIR/last_stderr.txt")" >> "$RESULTS"
  fi
  endsection
  echo "gpu_suite: [$(( $(date +%s) - start )) s] $title"
}

DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')")
{ echo "# GPU suite results"; echo; echo "device: $CARD ($DEVICE), torch $($PY -c 'import torch; print(torch.__version__)'), $(date -u +%FT%TZ), tiny=$TINY"; } > "$RESULTS"

if [ "$TINY" = 1 ]; then
  SHAPE=(--dim 128 --layers 2 --latent 8 --lengths 12)
  DTYPE=float32; FRAMES=36; VIDEOS=2
  DISTILL=(--tiny-random --rollouts 3 --heldout 1 --rollout-frames 12 --latent-size 8,8)
else
  SHAPE=(--wan13b --lengths 21,42)
  DTYPE=bfloat16; FRAMES=360; VIDEOS=16
  DISTILL=(--random-wan13b --rollouts 3 --heldout 1 --rollout-frames 21 --latent-size 60,104 --feature-tokens 4096)
fi

# items 1-4: peak memory (pafu vs fifo), head + eviction share, chunk time vs the lean reference, 8-bit K/V
run "items 1-4: chunk time, policy share, peak memory, 8-bit K/V (bench_cache.py)" \
  $PY benchmarks/bench_cache.py "${SHAPE[@]}" --device "$DEVICE" --dtype "$DTYPE" --json "$OUTDIR/bench_cache.json"
# item 4: 8-bit K/V on the tiny world: PSNR against the full-precision cache, truth metric
run "item 4: 8-bit K/V on the tiny world (bench_int8.py)" \
  $PY benchmarks/bench_int8.py --videos "$VIDEOS" --frames "$FRAMES" --device "$DEVICE"
# item 5: a budget stated in GiB
run "item 5: budgets in GiB (Wan 2.1 1.3B, 480x832, bf16 and int8)" $PY - <<'EOF'
from pafu_core.settings import CacheSettings
for gib in (2.0, 4.0):
    for storage in ("model", "int8"):
        print(CacheSettings(policy="pafu", budget=gib, budget_unit="GiB", kv_storage=storage).describe(1560, 30, 12, 128))
EOF
# item 6: the node pack's runner over ComfyUI's Wan class (only where ComfyUI's modules are available)
if [ -n "${COMFYUI_PATH:-}" ]; then
  run "item 6: ComfyUI path vs core path (bench_comfy_path.py)" \
    $PY benchmarks/bench_comfy_path.py --device "$DEVICE" --dtype "$DTYPE" $([ "$TINY" = 1 ] && echo "--dim 128 --layers 2 --latent 8 --frames 12" || echo "--wan13b --frames 21")
else
  section "item 6: ComfyUI path vs core path"; echo "skipped: COMFYUI_PATH is not set (ComfyUI's modules are not on this machine)" >> "$RESULTS"; endsection
fi
# item 7: distillation at the Wan shape, peak memory and time per clip
run "item 7: distillation (python -m pafu_lab.distill)" \
  $PY -m pafu_lab.distill "${DISTILL[@]}" --targets future_student --rescore --steps 5 --rescore-steps 5 \
  --device "$DEVICE" --dtype "$DTYPE" --eval-budget 0 --out "$OUTDIR/suite_head.safetensors"
# item 8: what scoring costs per chunk: the head, participative compression and Deep Forcing (its query window)
run "item 8: policy cost per chunk (bench_policy_cost.py)" \
  $PY benchmarks/bench_policy_cost.py --device "$DEVICE" $([ "$TINY" = 1 ] && echo "--tiny --dtype float32 --repeats 1" || echo "--dtype bfloat16")
echo "gpu_suite: done in $(( $(date +%s) - start )) s; results in $RESULTS"
