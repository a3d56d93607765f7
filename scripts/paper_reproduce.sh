#!/usr/bin/env bash
# The paper-scale models, six attacks x two architectures, trained and defended with UPGP's
# defaults, several at once on one GPU: each model is a Ray task holding a share of the GPU
# (upgp sweep --ray; benchmarks/gpu_packing.py measures which share pays). Resumable: a rerun
# skips the rows OUT/sweep.csv holds and the models the cache holds.
# Usage: scripts/paper_reproduce.sh [PRESET] [OUT] [GPU_SHARE]   (defaults: paper results/paper 0.25)
# At the smoke preset on a machine without a GPU it checks the script (GPU share 0).
set -euo pipefail
preset=${1:-paper} out=${2:-results/paper} share=${3:-0.25}
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || share=0
cores=$(python -c "import os; print(os.cpu_count())")
per_task=1
if [ "$share" != 0 ]; then  # the cores split like the GPU: 1 / share tasks at once
  per_task=$(python -c "print(max(1, int($cores * $share)))")
fi
mkdir -p "$out"
start=$SECONDS
python -m upgp sweep --defenses upgp --attacks badnets blended sig wanet iad bpp \
  --archs preact_resnet18 vgg19_bn --preset "$preset" --quiet --out "$out/sweep.csv" \
  --ray --ray-gpus "$share" --ray-cpus "$per_task" 2>&1 | tee -a "$out/log.txt"
echo "paper_reproduce: preset $preset, GPU share $share, $per_task threads per task:" \
     "$((SECONDS - start)) s" | tee -a "$out/log.txt"
