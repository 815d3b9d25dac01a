#!/usr/bin/env bash
# Regenerates docs/assets/sweep/ (summary.md.txt, figure3.png) with the command itself; run from the repo root.
set -euo pipefail
out=$(mktemp -d)
fusionkit sweep examples/sweep-tiny.yaml --group table3 --seeds 0,1 --synthetic --out "$out" --quiet
cp "$out/figure3.png" docs/assets/sweep/
sed 's#(figure3.png)#(../assets/sweep/figure3.png)#' "$out/summary.md" > docs/assets/sweep/summary.md.txt
