#!/usr/bin/env bash
# Set up this checkout for gofer9p: Debian packages, a virtual environment of its own (.venv/)
# holding gofer9p (editable, pointing at this checkout) with its dev tools, precompiled
# bytecode (start-up time), and the guest tier's cached kernel.
#
#   scripts/setup.sh                 (PYTHON=/path/to/python3 picks the interpreter the venv is
#                                     made from; default: python3 on PATH)
#
# Why a venv: Debian 12 and every current Debian/Ubuntu refuse `pip install` into the system
# interpreter (PEP 668, externally-managed-environment), and installing into a developer's own
# interpreter would re-point whatever gofer9p it already had at this checkout. .venv/ belongs
# to this checkout only. Run the installed tools as .venv/bin/gofer9p, .venv/bin/python, or
# `. .venv/bin/activate` first.
#
# Idempotent: a second run only checks. Needs root for apt-get (as CI and the VMs here are).
# GOFER9P_VENV overrides the venv's directory; GOFER9P_SKIP_GUEST_SETUP=1 skips the guest tier.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        say "missing Debian packages: $* (run as root, or apt-get install them)"
        exit 1
    fi
    say "installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# libseccomp (pyseccomp loads it), libcap-dev (python-prctl builds against it), diod (the
# reference server for benchmarks and the guest tier), strace (seccomp whitelist tooling),
# tshark (tests/integration/test_record.py checks that it dissects session recordings as 9P),
# valgrind (benchmarks/instructions.py counts instructions per request with cachegrind).
pkgs=(libseccomp2 libcap-dev gcc python3-dev diod strace tshark valgrind)
need=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
((${#need[@]} == 0)) || apt_install "${need[@]}"

base=${PYTHON:-python3}
if ! command -v "$base" >/dev/null 2>&1; then
    [[ -n "${PYTHON:-}" ]] && { say "PYTHON=$PYTHON: not found"; exit 1; }
    apt_install python3
fi
base_real=$("$base" -c 'import os, sys; print(os.path.realpath(sys.executable))')
# Debian splits `python3 -m venv` off into python3-venv (ensurepip is what is missing without
# it); another interpreter (pyenv, a source build) ships it.
if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
    if [[ "$base_real" == /usr/bin/* ]]; then
        apt_install python3-venv
    else
        say "$base_real cannot make a virtual environment (no ensurepip/venv module)"
        exit 1
    fi
fi

venv=$(realpath -m "${GOFER9P_VENV:-.venv}")
py=$venv/bin/python
stamp=$venv/.gofer9p-setup
# A venv made from another interpreter (PYTHON changed, or the interpreter moved) is remade.
if [[ -x "$py" && "$(cat "$venv/.gofer9p-base" 2>/dev/null)" != "$base_real" ]]; then
    say "$venv was made from another interpreter: remaking it from $base_real"
    rm -rf "$venv"
fi
if [[ ! -x "$py" ]]; then
    say "creating $venv from $base_real"
    "$base" -m venv "$venv"
    echo "$base_real" >"$venv/.gofer9p-base"
fi
# Installed, importable from this very checkout (not a copy of another one's .venv), and not
# older than pyproject.toml. The check runs from / in isolated mode: the current directory
# would otherwise make any checkout's gofer9p importable.
here=$(pwd -P)
if ! (cd / && "$py" -I -c '
import sys, gofer9p, trio, prctl, pyseccomp, pytest_trio, hypothesis
sys.exit(not gofer9p.__file__.startswith(sys.argv[1] + "/gofer9p/"))' "$here") 2>/dev/null \
   || [[ pyproject.toml -nt "$stamp" ]]; then
    say "installing gofer9p (editable) with dev tools into $venv"
    # The venv's pip reads the same configuration as the system's (/etc/pip.conf,
    # /etc/xdg/pip/, ~/.config/pip/, PIP_* variables): same index, same constraints.
    "$py" -m pip install -q --disable-pip-version-check -e ".[dev]"
    touch "$stamp"
fi
# PYTHONDONTWRITEBYTECODE may be set: write the bytecode once so start-up never compiles.
"$py" -m compileall -q gofer9p >/dev/null

if [[ "${GOFER9P_SKIP_GUEST_SETUP:-0}" != 1 && -x scripts/guest/setup.sh ]]; then
    scripts/guest/setup.sh || say "guest tier setup failed: the guest tests will say why and skip"
fi
say "ready: $venv/bin/gofer9p (or: . $venv/bin/activate; gofer9p ...)"
