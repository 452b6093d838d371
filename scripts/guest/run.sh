#!/usr/bin/env bash
# Run the guest test tier: Linux v9fs in a qemu guest against diod and gofer9p.
#
#   scripts/guest/run.sh [pytest args...]      e.g. -k gofer9p-serve-none, -x
#
# Prepares the machine first with scripts/guest/setup.sh (idempotent, about 0.1 s when
# everything is cached; installs packages and caches the guest kernel otherwise, which needs
# root and apt). If the tier cannot run, this says why before pytest skips every test with
# the same reason.
#
# Environment: GOFER9P_GUEST_TIMEOUT (s per boot, default 420), GOFER9P_GUEST_CHECK_TIMEOUT (s
# per guest check, default 180), GOFER9P_GUEST_ONLY (space-separated check names: run just
# those in the guest), GOFER9P_GUEST_WORKDIR (logs and exports, default /tmp/gofer9p-guest),
# GOFER9P_GUEST_CACHE (kernel cache), GOFER9P_GUEST_ACCEL (tcg, or kvm where KVM works).
set -uo pipefail
cd "$(dirname "$0")/../.."
# The checkout's venv when scripts/setup.sh made one, else whatever `python` is.
venv=$(realpath -m "${GOFER9P_VENV:-.venv}")
[[ ! -x $venv/bin/python ]] || export PATH="$venv/bin:$PATH"

if ! scripts/guest/setup.sh; then
    echo "guest tier: setup failed (see above); the tests will skip" >&2
fi
reason="$(python - <<'PY'
import sys
sys.path.insert(0, "tests/guest")
import guestvm
print(guestvm.unavailable_reason() or "")
PY
)"
if [[ -n "$reason" ]]; then
    echo "guest tier cannot run here: $reason" >&2
fi
exec python -m pytest -m guest tests/guest -rxXfs "$@"
