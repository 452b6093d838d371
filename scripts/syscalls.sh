#!/usr/bin/env bash
# List the syscalls confined gofer processes make, and which of them the seccomp whitelist lacks.
#
#   scripts/syscalls.sh [-o TRACE] [-k] -- COMMAND [ARGS...]
#   scripts/syscalls.sh -- python -m pytest -q tests/daemon
#   scripts/syscalls.sh -- python -m pytest -q tests/integration   # once it runs a real gofer
#
# Runs COMMAND under `strace -f` (apt-get install strace), finds every process that exec'd a gofer
# (argv has "gofer9p" and "--io-fds"), and counts the syscalls each one and its threads made
# *after* its seccomp filter was loaded: those are exactly what the whitelist must allow.
# Prints "count name" per syscall, flags the ones not in gofer9p.seccomp.syscall_whitelist(), and
# exits 1 if there is any.  Run the COMMAND with --seccomp=log gofers (or kill: a gofer killed by
# SIGSYS shows the culprit as its last syscall, reported too).  The kernel audit log that
# --seccomp=log writes to is often unreadable in containers; this needs only ptrace.
# -k keeps the raw trace (default: a temp file, removed).
set -euo pipefail
cd "$(dirname "$0")/.."
trace=""
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -o) trace="$2"; keep=1; shift 2 ;;
        -k) keep=1; shift ;;
        --) shift; break ;;
        *) echo "usage: $0 [-o TRACE] [-k] -- COMMAND..." >&2; exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [-o TRACE] [-k] -- COMMAND..." >&2; exit 2; }
command -v strace >/dev/null || { echo "$0: strace is not installed (apt-get install strace)" >&2; exit 2; }
[[ -n "$trace" ]] || trace="$(mktemp /tmp/gofer9p-strace.XXXXXX)"
set +e
strace -f -qq -s 256 -o "$trace" "$@"
status=$?
set -e
echo "# command exited with status $status; trace in $trace" >&2
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 - "$trace" <<'PY'
import collections, re, sys
import pyseccomp
from gofer9p.seccomp import SECCOMP_ERRNO_RULES, syscall_whitelist

allowed = set(syscall_whitelist())


def canonical(name):
    """strace prints syscalls newer than itself as syscall_0xNNN: name them via libseccomp."""
    if name.startswith("syscall_0x"):
        try:
            return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, int(name[10:], 16)).decode()
        except ValueError:
            return name
    return name

line_re = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")
ret_re = re.compile(r"=\s+(-?\d+)")
gofers, confined, counts, killed = set(), set(), collections.Counter(), {}
last = {}
with open(sys.argv[1], errors="replace") as f:
    for line in f:
        if "--- SIGSYS" in line or "+++ killed by SIGSYS" in line:
            pid = int(line.split()[0])
            if pid in confined:
                killed[pid] = last.get(pid, "?")
            continue
        m = line_re.match(line)
        if not m:
            continue
        pid, resumed, name, rest = int(m[1]), m[2], m[3], m[4]
        if name == "execve" and "gofer9p" in rest and "--io-fds" in rest:
            gofers.add(pid)
            confined.discard(pid)
        if name:
            name = canonical(name)
        if pid in confined and name:
            counts[name] += 1
            last[pid] = name
        call = name or resumed
        if call in ("clone", "clone3") and pid in confined and "unfinished" not in rest:
            r = ret_re.search(rest)
            if r and int(r[1]) > 0:
                confined.add(int(r[1]))
        # The load itself (libseccomp probes with NULL filters first): "{len=N, filter=...}) = 0".
        if name == "seccomp" and pid in gofers and "SET_MODE_FILTER" in rest and "filter=" in rest:
            if re.search(r"\)\s+=\s+0$", rest.strip()):
                confined.add(pid)
print(f"# {len(gofers)} gofer processes, {len(confined)} confined tasks")
missing = []
for name, n in counts.most_common():
    if name in allowed:
        flag = ""
    elif name in SECCOMP_ERRNO_RULES:
        flag = f"   (filter answers {SECCOMP_ERRNO_RULES[name]})"
    else:
        flag = "   <-- NOT IN WHITELIST"
        missing.append(name)
    print(f"{n:8d} {name}{flag}")
for pid, name in killed.items():
    print(f"# task {pid} got SIGSYS; its last syscall was {name}")
unused = sorted(allowed - set(counts))
print(f"# whitelisted but not seen: {' '.join(unused)}")
sys.exit(1 if missing or killed else 0)
PY
rc=$?
[[ $keep -eq 1 ]] || rm -f "$trace"
exit $rc
