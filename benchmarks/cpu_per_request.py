"""Server CPU and Python calls per request at QD1, in-process, for one or several trees.

A stdlib client thread sends one request at a time (QD1, as p9bench's ``_qd1`` tests)
over a socketpair while the server runs ``trio.run(serve, ...)`` in the main thread; the
main thread's CPU time (``time.thread_time_ns``: no other process, no scheduler noise
in the number) over the requests is divided by their count.  ``--calls`` instead counts
the Python function calls the server thread makes per request (``sys.setprofile``),
which is exact up to the quiet wait's polling (its poll window spins while the client
thread answers) and the most telling number for a per-message path; ``--by-function``
lists them per function (those called at least once every ten units).  Workloads:
getattr (Tgetattr), read4k (4 KiB Tread at random offsets), create (p9bench's create
cycle as it was first written here: Twalk clone, Tlcreate, Twrite 4 KiB, Tclunk, a named
Twalk, Tremove; counted per file), remove (p9bench's create_remove cycle exactly: Twalk clone,
Tlcreate, Twrite 4 KiB, Tremove; per file).  Both create in a subdirectory of the export, as
p9bench does (so Tremove's check that the directory is inside the export walks one level up).

Three more replay what the Linux v9fs client (fs/9p, cache=none) sends for a guest's
``ls -lR`` and ``find -type f -exec cat``, in ``tree/``, a directory of 100 files of 1-4 KiB
(older than the listing cache's settle time, as a tree a guest lists usually is):
lookup (per entry: ``v9fs_vfs_lookup`` walks one name from the directory's fid into a new
fid, ``v9fs_inode_from_fid_dotl`` asks Tgetattr BASIC|GEN (0x17ff), ``ls -l``'s stat a
Tgetattr ALL (0x3fff) on that fid, and the dentry's release with cache=none clunks it:
Twalk, Tgetattr, Tgetattr, Tclunk), cat (per file: the lookup's Twalk and Tgetattr, then
``v9fs_file_open`` clones the dentry's fid and Tlopens the clone O_RDONLY, busybox cat reads
4 KiB at a time: a Tread of the whole file and one at EOF answering 0 bytes, then the
close clunks the open fid and the dentry's release the walked one: Twalk, Tgetattr, Twalk
clone, Tlopen, Tread, Tread, Tclunk, Tclunk) and listdir (per directory:
``v9fs_dir_open`` clones the directory's fid and Tlopens it O_RDONLY|O_DIRECTORY,
``v9fs_dir_readdir_dotl`` sends Treaddir of msize - 24 bytes from each last cookie until
one answers nothing, the close clunks: Twalk clone, Tlopen, Treaddir, Treaddir, Tclunk).

With ``--tree NAME=PATH`` (repeatable) each tree runs in its own subprocess with
PYTHONPATH=PATH, alternating over ``--runs`` rounds, and the median per tree is printed:

    python benchmarks/cpu_per_request.py --tree base=/work/base --tree tree=. --runs 5
    python benchmarks/cpu_per_request.py --tree base=/work/base --tree tree=. --calls [--opcodes] [--own]
    python benchmarks/cpu_per_request.py --tree off=. --tree-mapped on=. getattr

``--tree-mapped NAME=PATH`` runs that tree with an id map (``--map-ids``: uids and gids
0 -> 0 and 1..65535 -> 100001.., two ranges, as a manager's root-plus-users map), to
state what mapping costs per request.
    PYTHONPATH=. python benchmarks/cpu_per_request.py --calls --by-function create
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

BY: dict[str, int] | None = None
"""Calls per function, when ``--by-function`` asks for them."""
OPCODES = False
"""``--opcodes``: with ``--calls``, count the bytecodes the server thread executes instead of
its calls (``sys.settrace`` opcode events; per function with ``--by-function``): the Python
work itself, which a call count weighs equally whatever the function does."""
OWN = False
"""``--own``: with ``--calls``, count the requests' own work, not trio's scheduler (trio,
outcome), the quiet wait (``_quietwait``) or the statistics (``stats``: latency samples
folded in by time), whose share depends on how the two threads' timing falls (whether a
wait finds the next request already there): exact from run to run.  What the handlers call
in other libraries (ctypes, attrs' generated methods) is counted."""
_NOT_OWN = ("trio", "outcome", "/_quietwait.py", "/gofer9p/stats.py", "/contextlib.py", "/enum.py")


def _own(code: Any) -> bool:
    """Whether ``code`` is counted with ``--own``."""
    f = code.co_filename
    return not any(p in f for p in _NOT_OWN)
WORKLOADS = ("getattr", "read4k", "create", "remove", "lookup", "cat", "listdir")
TREE_FILES = 100
"""Files in ``tree/``, the directory lookup, cat and listdir work in."""


def _exchange(sock: socket.socket, buf: bytearray, frame: bytes) -> None:
    """Send one request frame and take its reply off ``buf``; an Rlerror is a failed run."""
    sock.sendall(frame)
    while True:
        if len(buf) >= 4:
            size = struct.unpack_from("<I", buf)[0]
            if len(buf) >= size:
                if buf[4] == 7:  # Rlerror
                    raise RuntimeError(f"Rlerror {struct.unpack_from('<I', buf, 7)[0]}")
                del buf[:size]
                return
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError
        buf += data


def _reply(sock: socket.socket, buf: bytearray, frame: bytes) -> bytes:
    """Send one request frame and return its reply frame (set-up only)."""
    sock.sendall(frame)
    while True:
        if len(buf) >= 4:
            size = struct.unpack_from("<I", buf)[0]
            if len(buf) >= size:
                r = bytes(buf[:size])
                del buf[:size]
                if r[4] == 7:
                    raise RuntimeError(f"Rlerror {struct.unpack_from('<I', r, 7)[0]}")
                return r
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError
        buf += data


def _cookies(sock: socket.socket, buf: bytearray, count: int) -> list[int]:
    """The Treaddir offsets a client listing ``tree/`` (fid 4) sends: 0, then each
    reply's last cookie, until a reply is empty."""
    from gofer9p.protocol import messages as M
    from gofer9p.protocol.codec import encode

    _reply(sock, buf, encode(M.Twalk(tag=1, fid=4, newfid=5, wnames=[])))
    _reply(sock, buf, encode(M.Tlopen(tag=1, fid=5, flags=0o200000)))
    offsets = [0]
    while True:
        r = _reply(sock, buf, encode(M.Treaddir(tag=1, fid=5, offset=offsets[-1], count=count)))
        pos, last = 11, -1
        while pos < len(r):  # qid 13, offset 8, type 1, name s
            last = struct.unpack_from("<q", r, pos + 13)[0]
            pos += 24 + struct.unpack_from("<H", r, pos + 22)[0]
        if last < 0:
            break
        offsets.append(last)
    _reply(sock, buf, encode(M.Tclunk(tag=1, fid=5)))
    return offsets


def _client(sock: socket.socket, workload: str, n: int, marks: list[int], go: threading.Event) -> None:
    """Set-up requests, then ``n`` QD1 units of ``workload``; ``go`` set between the two."""
    from gofer9p.protocol import constants as C
    from gofer9p.protocol import messages as M
    from gofer9p.protocol.codec import encode

    buf = bytearray()

    def rpc(msg: M.Message) -> None:
        _exchange(sock, buf, encode(msg))

    rpc(M.Tversion(tag=C.NOTAG, msize=1 << 17, version=b"9P2000.L"))
    rpc(M.Tattach(tag=1, fid=0, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0))
    rpc(M.Twalk(tag=1, fid=0, newfid=1, wnames=[b"file"]))
    rpc(M.Tlopen(tag=2, fid=1, flags=0))
    rpc(M.Twalk(tag=1, fid=0, newfid=3, wnames=[b"scratch"]))  # p9bench creates in a subdirectory
    rpc(M.Twalk(tag=1, fid=0, newfid=4, wnames=[b"tree"]))  # lookup, cat, listdir
    msize = 1 << 17
    offsets = _cookies(sock, buf, msize - C.READDIRHDRSZ) if workload == "listdir" else []
    rng = random.Random(1)
    payload = b"x" * 4096
    units: list[list[M.Message]] = []
    for i in range(n):
        if workload == "getattr":
            units.append([M.Tgetattr(tag=1, fid=0, request_mask=C.GETATTR_BASIC)])
        elif workload == "read4k":
            units.append([M.Tread(tag=1, fid=1, offset=rng.randrange(4096) * 4096, count=4096)])
        elif workload == "lookup":
            name = [b"f%03d" % (i % TREE_FILES)]
            units.append([
                M.Twalk(tag=1, fid=4, newfid=5, wnames=name),
                M.Tgetattr(tag=1, fid=5, request_mask=0x17FF),
                M.Tgetattr(tag=1, fid=5, request_mask=C.GETATTR_ALL),
                M.Tclunk(tag=1, fid=5),
            ])
        elif workload == "cat":
            k = i % TREE_FILES
            units.append([
                M.Twalk(tag=1, fid=4, newfid=5, wnames=[b"f%03d" % k]),
                M.Tgetattr(tag=1, fid=5, request_mask=0x17FF),
                M.Twalk(tag=1, fid=5, newfid=6, wnames=[]),
                M.Tlopen(tag=1, fid=6, flags=C.L_O_RDONLY),
                M.Tread(tag=1, fid=6, offset=0, count=4096),
                M.Tread(tag=1, fid=6, offset=_tree_size(k), count=4096),
                M.Tclunk(tag=1, fid=6),
                M.Tclunk(tag=1, fid=5),
            ])
        elif workload == "listdir":
            count = msize - C.READDIRHDRSZ
            units.append([
                M.Twalk(tag=1, fid=4, newfid=5, wnames=[]),
                M.Tlopen(tag=1, fid=5, flags=C.L_O_RDONLY | C.L_O_DIRECTORY),
                *(M.Treaddir(tag=1, fid=5, offset=o, count=count) for o in offsets),
                M.Tclunk(tag=1, fid=5),
            ])
        else:  # remove, create: a clone made a new file, written, then removed
            name = b"c%06d" % i
            cycle: list[M.Message] = [
                M.Twalk(tag=1, fid=3, newfid=2, wnames=[]),
                M.Tlcreate(tag=1, fid=2, name=name, flags=0o1101, mode=0o644, gid=0),
                M.Twrite(tag=1, fid=2, offset=0, data=payload),
            ]
            if workload == "create":  # the six-request cycle removes a name walked again
                cycle += [M.Tclunk(tag=1, fid=2), M.Twalk(tag=1, fid=3, newfid=2, wnames=[name])]
            units.append([*cycle, M.Tremove(tag=1, fid=2)])
    frames = [[encode(m) for m in u] for u in units]
    marks.append(0)
    go.set()
    while marks[0] == 0:  # the server thread stamps its clock, then lets us go
        time.sleep(0.001)
    for unit in frames:
        for frame in unit:
            _exchange(sock, buf, frame)
    marks.append(1)
    sock.close()


def _tree_size(k: int) -> int:
    """Size of ``tree/f{k:03d}``: 1-4 KiB, one 4 KiB Tread of it reaches EOF."""
    return 1024 + (k * 997) % 3072


MAP = [(0, 0, 1), (1, 100001, 65535)]
"""``--map-ids``: the id map of a mapped run (uids and gids alike)."""


def run_one(workload: str, n: int, calls: bool, poll_us: int, mapped: bool = False) -> float:
    """Serve one connection in this thread; server CPU ns (or calls) per unit of ``workload``."""
    import trio

    from gofer9p.attach import AttachPoint
    from gofer9p.server import ServerConfig, serve

    extra: dict[str, Any] = {}
    if mapped:
        from gofer9p.attach import IdMap

        extra["idmap"] = IdMap(MAP, MAP)

    export = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with open(os.path.join(export, "file"), "wb") as f:
            f.write(os.urandom(16 << 20))
        os.mkdir(os.path.join(export, "scratch"))
        tree = os.path.join(export, "tree")
        os.mkdir(tree)
        for k in range(TREE_FILES):
            with open(os.path.join(tree, f"f{k:03d}"), "wb") as f:
                f.write(os.urandom(_tree_size(k)))
        if workload == "listdir":  # a listing is cached once the directory is SETTLE_NS old
            from gofer9p.attach._dircache import SETTLE_NS

            time.sleep(SETTLE_NS / 1e9 + 0.1)
        a, b = socket.socketpair()
        marks: list[int] = []
        go = threading.Event()
        t = threading.Thread(target=_client, args=(b, workload, n, marks, go), daemon=True)
        point = AttachPoint.open(export)
        count = [0]
        start = [0]

        def prof(frame: Any, event: str, arg: Any) -> None:
            if OWN and not _own(frame.f_code):
                return
            if event == "call" or event == "c_call":
                count[0] += 1
                if BY is not None:
                    if event == "call":
                        key = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
                    else:
                        key = "C:" + getattr(arg, "__qualname__", str(arg))
                    BY[key] = BY.get(key, 0) + 1

        def ops(frame: Any, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            if event == "opcode" and (not OWN or _own(frame.f_code)):
                count[0] += 1
                if BY is not None:
                    key = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
                    BY[key] = BY.get(key, 0) + 1
            return ops

        async def watch() -> None:
            # Stamp the clock once the client has finished its set-up, then start it.
            await trio.to_thread.run_sync(go.wait)
            start[0] = time.thread_time_ns()
            if calls and OPCODES:
                import gc
                import types

                from gofer9p.server import Connection

                # the receive loop is running already (a new trace function sees only
                # frames called from now on): trace its frame too
                for o in gc.get_objects():
                    if isinstance(o, types.CoroutineType) and o.cr_frame is not None and (
                        o.cr_code is Connection._receive_loop.__code__
                    ):
                        o.cr_frame.f_trace = ops
                        o.cr_frame.f_trace_opcodes = True
                sys.settrace(ops)
            elif calls:
                sys.setprofile(prof)
            marks[0] = 1

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await serve(a, point, ServerConfig(poll_us=poll_us, **extra))

        t.start()
        trio.run(main)
        sys.setprofile(None)
        sys.settrace(None)
        used = time.thread_time_ns() - start[0]
        t.join()
        if len(marks) != 2:
            raise RuntimeError("client did not finish")
        if BY:
            for k, v in sorted(BY.items(), key=lambda kv: -kv[1]):
                if v >= n // 10:
                    print(f"{v / n:6.2f} {k}")
        return (count[0] if calls else used) / n
    finally:
        shutil.rmtree(export, ignore_errors=True)


def _drive(
    trees: list[tuple[str, str]], workloads: list[str], n: int, runs: int, calls: bool, poll_us: int,
    mapped: frozenset[str] = frozenset(),
) -> None:
    """Alternate subprocesses of each tree; print the median (and spread) per tree and workload."""
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(runs):
        for wl in workloads:
            for name, path in trees:
                env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
                cmd = [sys.executable, os.path.abspath(__file__), "--json", "-n", str(n), wl]
                cmd += ["--poll-us", str(poll_us)]
                if calls:
                    cmd.append("--calls")
                if OPCODES:
                    cmd.append("--opcodes")
                if OWN:
                    cmd.append("--own")
                if name in mapped:
                    cmd.append("--map-ids")
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                results.setdefault((wl, name), []).append(json.loads(out)["value"])
    unit = ("opcodes" if OPCODES else "calls") if calls else "us"
    scale: Callable[[float], float] = (lambda v: v) if calls else (lambda v: v / 1000)
    for wl in workloads:
        per = {"create": "file", "remove": "file", "lookup": "entry", "cat": "file",
               "listdir": "directory"}.get(wl, "request")
        for name, _ in trees:
            vals = sorted(scale(v) for v in results[(wl, name)])
            print(
                f"{wl:8s} {name:8s} median {statistics.median(vals):8.2f} {unit}/{per}"
                f"   runs {' '.join(f'{v:.2f}' for v in vals)}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="*", help=f"any of {', '.join(WORKLOADS)} (default all)")
    ap.add_argument("-n", type=int, default=0, help="units per run (default 20000, create 4000)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", action="store_true", help="count Python calls instead of CPU time")
    ap.add_argument("--by-function", action="store_true", help="with --calls, one tree: calls per function")
    ap.add_argument("--opcodes", action="store_true", help="with --calls: bytecodes executed, not calls")
    ap.add_argument("--own", action="store_true", help="with --calls: in gofer9p's code only (OWN)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--tree-mapped", action="append", default=[], metavar="NAME=PATH",
                    help="a tree run with --map-ids")
    ap.add_argument("--map-ids", action="store_true", help="serve with an id map (MAP)")
    ap.add_argument(
        "--poll-us", type=int, default=0,
        help="the server's poll window (default 0: every wait sleeps, as with p9bench's client and"
        " server on one CPU; a window spins while the client thread answers, which is noise here)",
    )
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.workload = a.workload or list(WORKLOADS)
    if set(a.workload) - set(WORKLOADS):
        ap.error(f"workloads are {WORKLOADS}")
    global BY, OPCODES, OWN
    if a.by_function:
        BY = {}
    OPCODES = a.opcodes
    OWN = a.own
    if a.tree or a.tree_mapped:
        trees = [tuple(t.split("=", 1)) for t in a.tree + a.tree_mapped]
        mapped = frozenset(t.split("=", 1)[0] for t in a.tree_mapped)
        _drive(trees, a.workload, a.n or 0, a.runs, a.calls, a.poll_us, mapped)  # type: ignore[arg-type]
        return
    for wl in a.workload:
        n = a.n or (4000 if wl in ("create", "remove") else 20000)
        if a.calls:
            n = min(n, 2000)
        value = run_one(wl, n, a.calls, a.poll_us, a.map_ids)
        if a.json:
            print(json.dumps({"value": value}))
        else:
            print(f"{wl}: {value / (1 if a.calls else 1000):.2f} {('opcodes' if OPCODES else 'calls') if a.calls else 'us'}")


if __name__ == "__main__":
    main()
