#!/usr/bin/env bash
# The compiled build (what `pip install .` gives where a C compiler is present: setup.py
# compiles the sans-IO core, the server loop and the attach layer with mypyc) under the unit,
# integration, escape and daemon tiers (the containment and serving code is compiled too),
# the integration tier again through the confined daemon, and with GOFER9P_COMPILED_GUEST=1
# the guest tier.
#
#   [GOFER9P_COMPILED_GUEST=1] scripts/test-compiled.sh [pytest args]
#                                   (after scripts/setup.sh; scripts/test.sh runs it)
#
# Why a separate run: .venv/ holds an editable install, which is always pure Python (an edited
# .py must run), so the default tiers never import a compiled module.  Here a wheel is built
# from this checkout, installed into a scratch directory, and the suite runs from a copy of
# the checkout WITHOUT gofer9p/ (the tests put the checkout on PYTHONPATH for the processes
# they spawn; a gofer9p/ there would shadow the compiled package).  GOFER9P_EXPECT=compiled
# makes tests/unit/test_build.py fail if the wheel came out pure (no compiler, a mypyc error).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(realpath -m "${GOFER9P_VENV:-.venv}")
py=$venv/bin/python
[[ -x $py ]] || { echo "test-compiled: run scripts/setup.sh first" >&2; exit 1; }

tmp=$(mktemp -d /tmp/gofer9p-compiled.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
# Built as `pip install .` builds it: in an isolated environment with pyproject's
# build-system requirements (setuptools, mypy for mypyc, attrs) from the package index.
"$py" -m pip wheel --no-deps -q -w "$tmp/wheel" . >"$tmp/build.log" 2>&1 \
    || { cat "$tmp/build.log" >&2; exit 1; }
grep -h "gofer9p setup:" "$tmp/build.log" >&2 || true
"$py" -m pip install --no-deps -q --target "$tmp/site" "$tmp"/wheel/gofer9p-*.whl
mkdir "$tmp/run"
git ls-files -z | grep -zv '^gofer9p/' | xargs -0 cp --parents -t "$tmp/run"
echo "test-compiled: wheel built and installed in $((SECONDS - start)) s" >&2

cd "$tmp/run"
export GOFER9P_EXPECT=compiled PYTHONPATH=$tmp/site PYTHONDONTWRITEBYTECODE=1
"$py" -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/escape tests/daemon "$@"
# the integration tier through the confined daemon (chroot, caps, seccomp kill), compiled
mapfile -t deselect < <(sed -n 's/^ *--deselect \([^ ]*\).*/\1/p' scripts/test.sh)
"$py" -m pytest -q -p no:cacheprovider -p gofer9p.testing.daemon_plugin tests/integration \
    "${deselect[@]/#/--deselect=}" "$@"
# GOFER9P_COMPILED_GUEST=1 (scripts/test.sh sets it unless --no-guest): the guest tier too,
# Linux v9fs against the compiled server, as a user who installed with a compiler runs it
if [[ "${GOFER9P_COMPILED_GUEST:-0}" == 1 ]]; then
    echo "test-compiled: the guest tier against the compiled build" >&2
    "$py" -m pytest -q -p no:cacheprovider -m guest tests/guest -rs "$@"
fi
