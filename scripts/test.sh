#!/usr/bin/env bash
# Install everything, then run the checks and the whole test suite:
#   lint (ruff, mypy --strict, lint-imports: the layering of docs/CONTRACTS.md), the default
#   tiers (unit, integration, daemon, escape, faults, short fuzz), the compiled build's unit,
#   integration, escape, daemon and guest tiers (scripts/test-compiled.sh), then the guest
#   tier (Linux v9fs in a qemu guest, TCG) on the pure build.
#   scripts/test.sh [--no-guest] [pytest args...]
# Everything runs with the checkout's own venv (.venv/, made by scripts/setup.sh; PYTHON= picks
# the interpreter it is made from), which is put first on PATH for the tests' children too.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -S -c 0  # no core files from crash tests (SIGSYS, aborts); soft only: diod raises RLIMIT_CORE at start and exits if it cannot
guest=1
if [[ "${1:-}" == "--no-guest" ]]; then guest=0; shift; fi
scripts/setup.sh
venv=$(realpath -m "${GOFER9P_VENV:-.venv}")
export VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH"
PY=$venv/bin/python
status=0
echo "== ruff"; "$PY" -m ruff check gofer9p tests fuzz benchmarks || status=1
echo "== mypy --strict"; "$PY" -m mypy gofer9p || status=1
echo "== import contracts (layers, no cycles)"; "$venv/bin/lint-imports" || status=1
echo "== tests (default tiers)"
"$PY" -m pytest -q "$@" || status=1
# The same integration suite through the real confined daemon (chroot, dropped caps, seccomp
# kill mode): proves the syscall whitelist is complete. Deselected: tests whose premise the
# confinement changes on purpose (per-test ServerConfig limits but fd_budget and a lowered
# max_fids are not passed to the daemon,
# no CAP_MKNOD, user names resolve in the served root's /etc/passwd).
echo "== integration suite against the confined daemon"
"$PY" -m pytest -q -p gofer9p.testing.daemon_plugin tests/integration \
    --deselect tests/integration/test_ops_attach.py::test_nonuname_with_user_name \
    --deselect tests/integration/test_ops_create.py::test_mknod_char_device \
    --deselect tests/integration/test_server.py::test_version_negotiates_msize_down || status=1
# The compiled build (mypyc; what `pip install .` gives with a C compiler) under the unit,
# integration, escape and daemon tiers, in-process and through the confined daemon, and the
# guest tier unless --no-guest: .venv/'s editable install is always pure, so nothing above
# imports a compiled module.
echo "== compiled build (mypyc core)"
GOFER9P_COMPILED_GUEST=$guest scripts/test-compiled.sh || status=1
if ((guest)); then
    echo "== guest tier (Linux v9fs in qemu)"
    "$PY" -m pytest -q -m guest tests/guest -rs || status=1
fi
exit $status
