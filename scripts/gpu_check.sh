#!/usr/bin/env bash
# GPU check: correctness + latency + memory for every method at GPU sizes (bf16, N up to 16k),
# Parquet and the leaderboard written to OUTDIR. Needs the project's dependencies installed and
# a CUDA device; no network. Bounded to ~5.5 minutes: cases past the budget are recorded as skipped.
set -euo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: the GPU check needs one')"
attnbench env --json > "$out/env.json"
attnbench run --preset gpu --device cuda -o "$out/results" --site "$out/site" \
    --timeout 60 --budget "${ATTNBENCH_GPU_BUDGET_S:-330}" 2>&1 | tee "$out/run.log"
attnbench report "$out/results" --format md > "$out/summary.md"
echo "GPU check done: $out/results (Parquet), $out/site/index.html, $out/summary.md"
