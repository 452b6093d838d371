#!/usr/bin/env bash
# gofer9p beside diod in ONE p9bench run (same export type, same pinning), JSON + a ratio table.
#   benchmarks/compare.sh [--quick] [extra p9bench args...]
# Writes benchmarks/results/latest.json and prints benchmarks/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -c 0  # no core files from the crash tests (SIGSYS, aborts) or from diod
GOFER9P_SKIP_GUEST_SETUP=1 scripts/setup.sh
bench=${P9BENCH:-../shared/bench/p9bench.py}
[[ -f "$bench" ]] || { echo "compare.sh: p9bench not found at $bench (set P9BENCH)" >&2; exit 2; }
mkdir -p benchmarks/results
out=benchmarks/results/latest.json
python3 "$bench" \
    --server-cmd "$(command -v gofer9p) serve --fd {fd} {export}" --label gofer9p \
    --server-cmd 'diod -f -n -r {fd} -w {fd} -e {export} -L stderr' --label diod \
    --json "$out" "$@"
python3 benchmarks/table.py "$out" > benchmarks/results/latest.md
cat benchmarks/results/latest.md
