#!/usr/bin/env bash
# Train, defend with UPGP and defend without projection, one attack after another, while a time
# budget allows (the next attack starts only if the last one's wall time still fits).
# Usage: scripts/scale_run.sh PRESET ARCH OUTDIR BUDGET_SECONDS ATTACK [ATTACK ...]
# Writes OUTDIR/{train,upgp,upgp-noproj}-ATTACK-ARCH.json (the CLI's --out) and OUTDIR/log.txt.
# Used for the paper-preset runs on a GPU (results/paper/), where every model is trained anew.
# UPGP_SET="k=v k=v" passes --set k=v to both defend runs (e.g. removal_backtracks=4 or
# "repair_steps=60 removal_rounds=3 stop_flagged_accuracy=0.05", what --repair 60 --rounds 3
# sets); with it, the defend files get a "-set" suffix.
set -uo pipefail
preset=$1 arch=$2 out=$3 budget=$4
shift 4
mkdir -p "$out"
upgp() { python -m upgp "$@"; }
sets=() suffix=""
for kv in ${UPGP_SET:-}; do sets+=(--set "$kv"); suffix="-set"; done
start=$SECONDS last=0
for attack in "$@"; do
  left=$((budget - (SECONDS - start)))
  if [ "$last" -gt 0 ] && [ $((last * 11 / 10)) -gt "$left" ]; then
    echo "skip $attack: the last attack took ${last} s, ${left} s left" | tee -a "$out/log.txt"
    continue
  fi
  t0=$SECONDS
  common=(--attack "$attack" --arch "$arch" --preset "$preset" --quiet)
  upgp train "${common[@]}" --out "$out/train-$attack-$arch.json" 2>&1 | tee -a "$out/log.txt"
  upgp defend "${common[@]}" "${sets[@]}" --out "$out/upgp$suffix-$attack-$arch.json" 2>&1 \
    | tee -a "$out/log.txt"
  upgp defend "${common[@]}" "${sets[@]}" --no-projection \
    --out "$out/upgp-noproj$suffix-$attack-$arch.json" 2>&1 | tee -a "$out/log.txt"
  last=$((SECONDS - t0))
  echo "$attack: ${last} s" | tee -a "$out/log.txt"
done
