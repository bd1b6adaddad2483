#!/usr/bin/env bash
# GPU check: correctness + latency + memory for every method × every backend that runs there (SDPA
# pinned to flash / cuDNN / efficient, flash-attn, xformers, fla, NATTEN, the Triton kernels, flex),
# bf16, N up to 16k. Writes to OUTDIR: env.json, results/ (Parquet), site/, summary.md (the
# leaderboard's Markdown) and gpu_summary.md (per method: best backend, TFLOP/s, % of peak, speedup
# vs FA2 dense at the same shape, failures with reasons). Needs a CUDA device; no network.
# One command of ~8 minutes: cases past the budget (ATTNBENCH_GPU_BUDGET_S, default 400 s) are
# recorded as skipped, each case is capped at 60 s.
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: the GPU check needs one')"
python -c "import attnbench" 2>/dev/null || pip install -q --no-deps -e "$here/.."   # GPU boxes: keep their torch
attnbench env --json > "$out/env.json"
attnbench list --json > "$out/list.json"   # per-backend availability on this machine, with reasons
attnbench run --preset gpu --device cuda -o "$out/results" --site "$out/site" \
    --timeout 60 --budget "${ATTNBENCH_GPU_BUDGET_S:-400}" --allow-failures 2>&1 | tee "$out/run.log"
attnbench report "$out/results" --format md > "$out/summary.md"
python "$here/gpu_summary.py" "$out/results" -o "$out/gpu_summary.md"
echo "GPU check done: $out/results (Parquet), $out/site/index.html, $out/summary.md, $out/gpu_summary.md"
