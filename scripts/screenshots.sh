#!/usr/bin/env bash
# Build the book and take headless-Chromium screenshots, 1400 px wide, of the front page and of
# the main-results chapter: what a new reader sees first. PNGs go to OUT (default
# _build/screenshots): <page>-top.png (the first 1,000 px) and <page>-full.png (the whole page).
# Usage: scripts/screenshots.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-_build/screenshots}
command -v chromium >/dev/null || { echo "chromium not found (apt-get install chromium)" >&2; exit 1; }
mkdir -p "$out"
jupyter-book build . -W -n --keep-going --quiet
html=$PWD/_build/html
for page in book/intro book/notebooks/04_main_results; do
  name=$(basename "$page")
  for view in "top 1000" "full 9000"; do
    read -r label height <<< "$view"
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
      --disable-background-networking --disable-component-update --disable-sync \
      --virtual-time-budget=4000 --window-size="1400,$height" \
      --screenshot="$out/$name-$label.png" "file://$html/$page.html" 2>/dev/null
  done
done
ls "$out"
