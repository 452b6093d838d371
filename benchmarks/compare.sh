#!/usr/bin/env bash
# gofer9p beside diod in ONE p9bench run (same export type, same pinning), JSON + a ratio table.
#   benchmarks/compare.sh [--quick] [--client-cpus 0 --server-cpus 1] [extra p9bench args...]
# (every argument is passed to p9bench; the README's table used --client-cpus 0 --server-cpus 1)
# Writes benchmarks/results/latest.json and prints benchmarks/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -S -c 0  # soft limit only: diod raises RLIMIT_CORE itself and exits if it cannot; no core files from the crash tests (SIGSYS, aborts) or from diod
GOFER9P_SKIP_GUEST_SETUP=1 scripts/setup.sh
bench=${P9BENCH:-../shared/bench/p9bench.py}
[[ -f "$bench" ]] || { echo "compare.sh: p9bench not found at $bench (set P9BENCH)" >&2; exit 2; }
mkdir -p benchmarks/results
out=benchmarks/results/latest.json
# The checkout's venv (scripts/setup.sh) runs everything; its console script is the real
# one, not a pyenv shim (a bash script + `pyenv exec` that adds ~100-300 ms to every spawn and
# would be measured as our startup).
venv=$(realpath -m "${GOFER9P_VENV:-.venv}")
py=$venv/bin/python
gofer=$venv/bin/gofer9p
"$py" "$bench" \
    --server-cmd "$gofer serve --fd {fd} {export}" --label gofer9p \
    --server-cmd 'diod -f -n -r {fd} -w {fd} -e {export} -L stderr' --label diod \
    --json "$out" "$@"
"$py" benchmarks/table.py "$out" > benchmarks/results/latest.md
# startup target: spawn -> Rversion vs. spawning `python -c "import trio"`, same interpreter
{ echo; echo '```'; "$py" benchmarks/startup.py -n 20; echo '```'; } >> benchmarks/results/latest.md
cat benchmarks/results/latest.md
