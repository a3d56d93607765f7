#!/usr/bin/env bash
# Probe (not a book chapter yet): UPGP + repair with part of each repair batch stamped with the
# estimated trigger mean(B) - mean(N) (repair_trigger_share), on the core attack x arch rows.
# Usage: scripts/probe_trigger_repair.sh SHARE OUT_DIR ARCH [ATTACK ...]
set -euo pipefail
share=$1 out=$2 arch=$3; shift 3
[ $# -gt 0 ] || set -- badnets blended sig wanet
mkdir -p "$out"
for attack in "$@"; do
  upgp defend --defense upgp_repair --attack "$attack" --arch "$arch" --preset cpu --quiet \
    --set "repair_trigger_share=$share" --out "$out/upgp_repair-trigger$share-$attack-$arch.json"
done
