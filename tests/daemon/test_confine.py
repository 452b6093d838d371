"""gofer9p.confine and gofer9p.seccomp in a throwaway process: exact capability sets,
no_new_privs, the filter.

The daemon tests check the same things on the real gofer; these pin down confine.py and
seccomp.py alone, so a failure says which layer broke.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from gofer9p.confine import KEEP_CAPS_MASK
from gofer9p.seccomp import SECCOMP_ERRNO_RULES, syscall_whitelist

from .conftest import REPO, gofer_env

PRELUDE = """
import json, os, sys, threading
from gofer9p import confine, seccomp
mode = sys.argv[1]
PPID = os.getppid()  # read before the filter: getppid is not on the whitelist
confine.preload(mode)
confine.assert_single_threaded()
confine.drop_capabilities()
confine.set_no_new_privs()
n = seccomp.install_seccomp(mode)
def status():
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as f:
            out[tid] = {k: v.strip() for k, _, v in (l.partition(":") for l in f) if k in keys}
    return out
"""


def _run(mode: str, body: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code, mode],
        env=gofer_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_mask() -> None:
    assert KEEP_CAPS_MASK == 0x4001F


def test_every_thread_confined() -> None:
    r = _run(
        "kill",
        """
        box = {}
        ev = threading.Event(); done = threading.Event()
        def worker():
            ev.set(); done.wait()
        ts = [threading.Thread(target=worker) for _ in range(3)]
        for t in ts: t.start()
        ev.wait()
        box = status()
        done.set()
        for t in ts: t.join()
        print(json.dumps({"n": n, "status": box}))
        """,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] > 80
    assert len(out["status"]) == 4
    for st in out["status"].values():
        for k in ("CapPrm", "CapEff", "CapBnd"):
            assert int(st[k], 16) == KEEP_CAPS_MASK, (k, st)
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        assert st["Seccomp"] == "2"


@pytest.mark.parametrize(
    "call",
    [
        "import socket; socket.socket(socket.AF_INET)",
        "os.fork()",  # clone without CLONE_THREAD
        "os.execv('/bin/true', ['true'])",
        "import fcntl, struct; fcntl.ioctl(2, 0x5413, bytes(8))",  # TIOCGWINSZ: not allowed
        "import fcntl; fcntl.fcntl(0, fcntl.F_SETOWN, 1)",
        "import socket; socket.socketpair(socket.AF_INET)",
        "os.setuid(0)",
        "os.chroot('/tmp')",  # CAP_SYS_CHROOT is kept, the syscall is not
        "os.kill(os.getpid(), 0)",
        "import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)",  # ptrace
        "import ctypes; ctypes.CDLL(None).syscall(272, 0x20000)",  # unshare(CLONE_NEWNS)
        "import ctypes; ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)",  # PR_SET_DUMPABLE
        # tgkill/prlimit64 are allowed only at ourselves: never at the parent (a sibling,
        # the fork-server or the manager share our uid)
        "import ctypes; ctypes.CDLL(None).syscall(234, PPID, PPID, 0)",
        "import resource; resource.prlimit(PPID, resource.RLIMIT_NOFILE)",
    ],
)
def test_forbidden_kills_with_sigsys(call: str) -> None:
    r = _run("kill", f"print('confined', flush=True)\n{call}\nprint('survived')")
    assert r.stdout.strip() == "confined", r.stderr
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stderr)


def test_log_mode_allows_and_survives() -> None:
    r = _run("log", "import socket; socket.socket(socket.AF_INET).close(); print('survived')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "survived"


def test_signals_and_rlimits_at_ourselves_still_work() -> None:
    """pthread_kill/raise (tgkill with our tgid) and getrlimit (prlimit64 pid 0) stay allowed."""
    r = _run(
        "kill",
        """
        import resource, signal
        got = []
        signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)
        print(len(got), resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "True"]


def test_threads_may_name_themselves() -> None:
    r = _run(
        "kill",
        """
        import ctypes
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_ulong
        libc.pthread_setname_np.argtypes = [ctypes.c_ulong, ctypes.c_char_p]
        def name():
            assert libc.pthread_setname_np(libc.pthread_self(), b"worker-x") == 0
        t = threading.Thread(target=name); t.start(); t.join()
        print("named")
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "named"


def test_unix_socket_is_eacces_not_kill() -> None:
    r = _run(
        "kill",
        """
        import socket
        try:
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except PermissionError:
            print("EACCES")
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "EACCES"


def test_file_handles_are_eperm() -> None:
    r = _run(
        "kill",
        """
        import ctypes, errno
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(8 + 128)
        buf[0] = 128
        mid = ctypes.c_int()
        r1 = libc.name_to_handle_at(-100, b"/", buf, ctypes.byref(mid), 0)
        e1 = ctypes.get_errno()
        r2 = libc.open_by_handle_at(-100, buf, 0)
        e2 = ctypes.get_errno()
        print(r1, errno.errorcode[e1], r2, errno.errorcode[e2])
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-1", "EPERM", "-1", "EPERM"]


def test_clone3_is_enosys_so_threads_use_clone() -> None:
    r = _run(
        "kill",
        """
        import ctypes, errno
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(435, None, 0)
        print(rc, errno.errorcode[ctypes.get_errno()])
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["-1", "ENOSYS"]


def test_whitelist_names_resolve() -> None:
    import pyseccomp

    names = syscall_whitelist()
    assert len(names) == len(set(names))
    unknown = [n for n in names if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) < 0]
    assert unknown == []
    assert set(SECCOMP_ERRNO_RULES) == {
        "clone3",
        "socket",
        "name_to_handle_at",
        "open_by_handle_at",
    }
    assert not set(SECCOMP_ERRNO_RULES) & set(names)
    for bad in ("execve", "socket", "ptrace", "mount", "setuid", "kill", "connect", "bind"):
        assert bad not in names


def test_prepared_program_names_each_forked_child() -> None:
    """A fork-server's pre-forked child prepares its filter (its pid written in) before it
    is handed a request; a child forked from a process that prepared one must not load that
    process's copy: tgkill at itself would then be a SIGSYS death, and tgkill at the parent
    allowed."""
    code = textwrap.dedent(
        """
        import os, signal, struct, sys, threading
        from gofer9p import confine, seccomp
        confine.preload("kill")
        mine = seccomp.prepare_seccomp("kill")
        assert seccomp.prepare_seccomp("kill") is mine  # cached in this process
        pid = os.fork()
        if pid == 0:
            theirs = seccomp.prepare_seccomp("kill")
            ok = theirs is not mine and struct.pack("=I", os.getpid()) in theirs[0]
            confine.set_no_new_privs()
            seccomp.install_seccomp("kill")
            signal.signal(signal.SIGUSR1, lambda s, f: None)
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # tgkill(own pid)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=gofer_env(), cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


def test_capabilities_are_only_ever_dropped() -> None:
    """drop_capabilities limits the sets with one capset(2): a kept capability the process had
    already lost stays lost (never re-added, no EPERM), and a set inheritable bit is cleared."""
    code = textwrap.dedent(
        """
        import json, prctl
        from gofer9p import confine
        prctl.cap_inheritable.fowner = True
        prctl.cap_effective.chown = False
        prctl.cap_permitted.chown = False
        confine.drop_capabilities()
        with open("/proc/self/status") as f:
            st = {k: v.strip() for k, _, v in (l.partition(":") for l in f)}
        print(json.dumps({k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd")}))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=gofer_env(), cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {
        "CapInh": 0,
        "CapPrm": KEEP_CAPS_MASK & ~1,
        "CapEff": KEEP_CAPS_MASK & ~1,
        "CapBnd": KEEP_CAPS_MASK,
    }
