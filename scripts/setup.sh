#!/usr/bin/env bash
# Set up this machine for gofer9p: Debian packages, the Python package (editable) with its
# dev tools, precompiled bytecode (start-up time), and the guest tier's cached kernel.
# Idempotent: a second run only checks.  Needs root for apt-get (as CI and the VMs here are).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

# libseccomp (pyseccomp loads it), libcap-dev (python-prctl builds against it), diod (the
# reference server for benchmarks and the guest tier), strace (seccomp whitelist tooling).
pkgs=(libseccomp2 libcap-dev gcc python3-dev diod strace)
need=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing Debian packages: ${need[*]} (run as root, or apt-get install them)"
        exit 1
    fi
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import gofer9p, trio, prctl, pyseccomp, pytest_trio, hypothesis' 2>/dev/null \
   || [[ pyproject.toml -nt .setup-stamp ]]; then
    say "installing gofer9p (editable) with dev tools"
    "$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
    touch .setup-stamp
fi
# PYTHONDONTWRITEBYTECODE may be set: write the bytecode once so start-up never compiles.
"$PY" -m compileall -q gofer9p >/dev/null
command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true

if [[ "${GOFER9P_SKIP_GUEST_SETUP:-0}" != 1 && -x scripts/guest/setup.sh ]]; then
    scripts/guest/setup.sh || say "guest tier setup failed: the guest tests will say why and skip"
fi
say "ready: $(command -v gofer9p || echo "$PY -m gofer9p")"
