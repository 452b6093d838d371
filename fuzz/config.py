"""``python -m fuzz config``: the gofer's configuration surface, judged against a reference.

Not every hostile input arrives on the wire.  A sandbox manager builds the gofer's attach
points from a bundle the sandbox may have written into (a file bind mount's source can be
a FIFO, a device node, a symlink, a file swapped for another), and takes id ranges from
configuration.  Each example here is one such configuration, run in this process against
the real code (``AttachPoint``, ``IdMap``, the ``--map-uid``/``--map-gid``/``--squash-ids``
option parser):

* ``attach``: a host node of a random kind (directory, regular file, a symlink to either,
  FIFO, unix socket, character device (as root), a file or directory of ``/proc``) opened as
  an attach point, read-only or not; or an attach point built from a file's fd with a
  directory and name that do not designate it (another file, a missing name, no directory).
  Oracle: a directory or regular file is served (its root qid is its inode's, typed), anything
  else is refused with an ``OSError``, never another exception, and no fd is left behind once
  the point is closed or refused.  Then its qid map, against a reference: paths stable for a
  (device, inode), unique, ``index << 56 | inode`` for the first 255 devices and inodes below
  2**56, the overflow range beyond (``qid_base`` agreeing); and ``mount_fd`` for random
  directory fds and mount ids (the export's, a directory of another mount, a file that is a
  mount point (as root, in a mount namespace of this process's own), an unknown id, a file,
  -1, two threads at once): -1 or a readable directory on that very mount, the same fd every
  time, every one closed by ``close``.
* ``idmap``: random ``--map-uid``/``--map-gid`` ranges (empty, at the id limit, overlapping on
  either side) and ``--squash-ids``: the map must be refused (``ValueError``, and a usage
  error from the option parser) exactly when a brute-force reference says the ranges are bad,
  and otherwise translate every probe id as the reference does (guest -> host, host -> guest
  with the overflow id 65534, the squash, Rgetattr's owner through ``getattr_mapper``, past
  the memo's bound too); ``describe()`` parsed again gives the same map.

A finding is saved as its case (``config-<bucket>.json``, the example's parameters);
``python -m fuzz replay`` re-runs it with the same oracles.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import stat
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .common import STOP, Report, budget_spent, run_deadline, save_failure
from .wire import Failure

KINDS = ("dir", "file", "link-dir", "link-file", "fifo", "socket", "chardev", "proc-dir",
         "proc-file", "wrong-name", "missing-name", "no-parent")
"""What an ``attach`` example serves (see the module doc)."""


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def random_case(rng: random.Random) -> dict[str, Any]:
    """One example's parameters (JSON: saved with a finding, replayed as is)."""
    if rng.random() < 0.5:
        return {"kind": "attach", "node": rng.choice(KINDS), "readonly": rng.random() < 0.5,
                "seed": rng.randrange(1 << 31)}
    top = rng.choice((0xFFFFFFFE, 70000, 5000))

    def ranges() -> list[list[int]]:
        out = []
        for _ in range(rng.choice((0, 1, 1, 2, 3, 4))):
            n = rng.choice((0, 1, 2, 100, 1000, rng.randrange(1, 70000)))
            g = rng.choice((0, 1000, rng.randrange(top), top - n + 1, top - n + 2))
            h = rng.choice((0, 2000, rng.randrange(top), top - n + 1, top - n + 2))
            out.append([max(g, 0), max(h, 0), n])
        return out

    squash = None
    if rng.random() < 0.3:
        squash = [rng.choice((0, 1000, 0xFFFFFFFE, 0xFFFFFFFF)), rng.choice((0, 1000, 65534))]
    return {"kind": "idmap", "uids": ranges(), "gids": ranges(), "squash": squash,
            "seed": rng.randrange(1 << 31)}


def run_case(case: dict[str, Any]) -> list[str]:
    """Run one example; its problems (``"kind: message"``), none if it passed."""
    try:
        if case["kind"] == "attach":
            return _attach_case(case)
        return _idmap_case(case)
    except Exception as e:  # any exception out of the code under test is a finding
        return [f"crash: {type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e))]


# -------------------------------------------------------------------- attach
def _make_node(tmp: Path, kind: str) -> tuple[Path, bool]:
    """The host node to serve and whether it may be served (a directory or regular file)."""
    if kind == "proc-dir":
        return Path("/proc/self"), False
    if kind == "proc-file":
        return Path("/proc/self/status"), False
    p = tmp / "node"
    if kind in ("dir", "link-dir"):
        (tmp / "d").mkdir()
        (tmp / "d" / "inside").write_bytes(b"x")
        target = tmp / "d"
    elif kind in ("file", "link-file", "wrong-name", "missing-name", "no-parent"):
        (tmp / "f").write_bytes(b"data\n")
        target = tmp / "f"
    elif kind == "fifo":
        os.mkfifo(p)
        return p, False
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(str(p))
        finally:
            s.close()
        return p, False
    elif kind == "chardev":
        try:
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            os.mkfifo(p)  # not root: a FIFO stands in for it
        return p, False
    else:
        raise ValueError(f"unknown node kind {kind!r}")
    if kind.startswith("link-"):
        os.symlink(target.name, p)
        return p, True
    return target, True


def _attach_case(case: dict[str, Any]) -> list[str]:
    from gofer9p.attach import AttachPoint

    from .targets import _private_mounts

    if os.geteuid() == 0:
        _private_mounts()  # (first: a mount's id differs in the new namespace)
    rng = random.Random(case["seed"])
    kind = case["node"]
    before = _fds()
    problems: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="gofer9p-fuzz-config-"))
    try:
        path, servable = _make_node(tmp, kind)
        if kind in ("wrong-name", "missing-name", "no-parent"):
            # the constructor's own check: a file root's directory and name must designate it
            (tmp / "other").write_bytes(b"other\n")
            name = {"wrong-name": b"other", "missing-name": b"gone"}.get(kind, b"")
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            pfd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                AttachPoint(str(path), fd, readonly=case["readonly"], panic_on_write=False,
                            parent_fd=pfd if kind != "no-parent" else -1, name=name)
                problems.append(f"invariant: a file root named {name!r} (not its name) was served")
            except OSError:
                pass
            finally:
                os.close(fd)
                os.close(pfd)
        else:
            try:
                point = AttachPoint.open(str(path), readonly=case["readonly"])
            except OSError as e:
                if servable:
                    problems.append(f"invariant: a {kind} was refused as an attach point: {e}")
            else:
                try:
                    if not servable:
                        problems.append(f"invariant: a {kind} was served as an attach point")
                    problems += _check_point(point, path, rng, tmp)
                finally:
                    point.close()
    finally:
        _rmtree(tmp)
    left = _fds() - before
    if left:
        problems.append(f"leak: {len(left)} fds left after an attach point of a {kind} was closed"
                        f" or refused: {sorted(_readlinks(left))}")
    return problems


def _readlinks(fds: set[int]) -> list[str]:
    out = []
    for fd in fds:
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            out.append(f"fd {fd}")
    return out


def _rmtree(tmp: Path) -> None:
    import shutil

    _umount(tmp / "mnt")  # (the file mount point, see _mount_file)
    shutil.rmtree(tmp, ignore_errors=True)


def _umount(p: Path) -> None:
    from .targets import _umount as umount

    if p.exists():
        umount(p)


def _check_point(point: Any, path: Path, rng: random.Random, tmp: Path) -> list[str]:
    from gofer9p.attach._sys import file_handle

    problems: list[str] = []
    st = os.stat(path)
    want_type = 0x80 if stat.S_ISDIR(st.st_mode) else 0
    if (point.root_qid.type, point.root_qid.path) != (want_type, st.st_ino):
        problems.append(f"invariant: root qid {point.root_qid} for inode {st.st_ino}")
    problems += _check_qids(point, rng)
    # mount_fd: the root's own mount, another mount, a file mount point, unknown ids, -1
    cands: list[tuple[str, int, int]] = []
    opened: list[int] = []

    def o_path(p: Path | str) -> int:
        fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
        opened.append(fd)
        return fd

    try:
        home = o_path(path if stat.S_ISDIR(st.st_mode) else path.parent)
        mid = file_handle(home)[1]
        cands += [("root's mount", mid, home), ("unknown mount", mid + 1 + rng.randrange(99), home),
                  ("no dirfd", mid + 1000, -1)]
        cands.append(("a file as the directory", mid + 2000, o_path(tmp / "f")
                      if (tmp / "f").exists() else home))
        other = o_path("/proc")  # another mount (a pseudo file system: no handle either)
        cands.append(("/proc", mid + 3000, other))
        if os.geteuid() == 0 and _mount_file(tmp):
            fm = o_path(tmp / "mnt")
            cands.append(("a file that is a mount point", file_handle(fm)[1], home))
        rng.shuffle(cands)
        got: dict[int, int] = {}
        for what, mount_id, dirfd in cands:
            fd = point.mount_fd(mount_id, dirfd)
            if fd >= 0:
                if file_handle(fd)[1] != mount_id or not stat.S_ISDIR(os.fstat(fd).st_mode):
                    problems.append(f"invariant: mount_fd({what}) gave an fd of another mount")
                if got.setdefault(mount_id, fd) != fd:
                    problems.append(f"invariant: mount_fd({what}) gave two fds for one mount")
            elif what == "root's mount":
                problems.append("invariant: mount_fd refused the root's own mount")
        if rng.random() < 0.5:
            # two threads asking for one mount at once: one fd kept, the other closed
            twin = o_path(path if stat.S_ISDIR(st.st_mode) else path.parent)
            fresh = type(point).open(str(path))
            try:
                res: list[int] = []
                gate = threading.Barrier(2)

                def ask() -> None:
                    gate.wait()
                    res.append(fresh.mount_fd(mid, twin))

                ths = [threading.Thread(target=ask) for _ in range(2)]
                for t in ths:
                    t.start()
                for t in ths:
                    t.join()
                if len(set(res)) != 1 or res[0] < 0:
                    problems.append(f"invariant: two threads' mount_fd gave {res}")
            finally:
                fresh.close()
    finally:
        for fd in opened:
            os.close(fd)
    return problems


def _mount_file(tmp: Path) -> bool:
    """Bind-mount a file onto ``tmp/mnt`` (a file that is a mount point); False if refused."""
    import ctypes

    from .targets import _private_mounts

    if not _private_mounts():
        return False
    (tmp / "mnt").write_bytes(b"")
    (tmp / "src").write_bytes(b"mounted\n")
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.mount(os.fsencode(tmp / "src"), os.fsencode(tmp / "mnt"), None, 0x1000,
                           None) == 0)  # MS_BIND


def _check_qids(point: Any, rng: random.Random) -> list[str]:
    """The qid map against a reference (see the module doc)."""
    problems: list[str] = []
    seen: dict[tuple[int, int], int] = {}
    owner: dict[int, tuple[int, int]] = {}
    devs = [point.root_dev] + [rng.randrange(1 << 40) for _ in range(rng.choice((3, 300)))]
    for _ in range(rng.choice((50, 600))):
        dev = rng.choice(devs)
        ino = rng.choice((rng.randrange(1 << 20), (1 << 56) - 1, 1 << 56, rng.randrange(1 << 64)))
        if rng.random() < 0.2:
            base = point.qid_base(dev)
            p = point.qid_path(dev, ino)
            if base >= 0 and ino < (1 << 56) and p != base | ino:
                problems.append(f"invariant: qid_base {base:#x} but qid_path {p:#x}")
            continue
        p = point.qid_path(dev, ino)
        if seen.setdefault((dev, ino), p) != p:
            problems.append(f"invariant: qid path of ({dev}, {ino}) changed")
        if owner.setdefault(p, (dev, ino)) != (dev, ino):
            problems.append(f"invariant: qid path {p:#x} for two files")
        if dev == point.root_dev and ino < (1 << 56) and p != ino:
            problems.append(f"invariant: qid path {p:#x} of the root device's inode {ino}")
    return problems[:5]


# --------------------------------------------------------------------- idmap
ID_MAX = 0xFFFFFFFE


def _ref_ok(ranges: list[list[int]]) -> bool:
    """The reference: every range non-empty and within 0..ID_MAX, none overlapping another on
    either side (pairwise, by brute force)."""
    for g, h, n in ranges:
        if n < 1 or g < 0 or h < 0 or g + n - 1 > ID_MAX or h + n - 1 > ID_MAX:
            return False
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            for side in (0, 1):
                if a[side] < b[side] + b[2] and b[side] < a[side] + a[2]:
                    return False
    return True


def _ref(ranges: list[list[int]], x: int, side: int, miss: int) -> int:
    if not ranges:
        return x
    for r in ranges:
        if r[side] <= x < r[side] + r[2]:
            return r[1 - side] + x - r[side]
    return miss


def _parse(argv: list[str]) -> Any:
    from gofer9p.options import add_idmap_args, idmap_from_args

    p = argparse.ArgumentParser(exit_on_error=False, add_help=False)
    add_idmap_args(p)
    return idmap_from_args(p.parse_args(argv))


def _argv(case: dict[str, Any]) -> list[str]:
    out = [f"--map-uid={g}:{h}:{n}" for g, h, n in case["uids"]]
    out += [f"--map-gid={g}:{h}:{n}" for g, h, n in case["gids"]]
    if case["squash"] is not None:
        out.append(f"--squash-ids={case['squash'][0]}:{case['squash'][1]}")
    return out


def _idmap_case(case: dict[str, Any]) -> list[str]:
    from gofer9p.attach import IdMap
    from gofer9p.attach._idmap import MEMO_MAX, OVERFLOW_ID, UNMAPPED
    from gofer9p.protocol.codec import RGETATTR

    uids, gids, squash = case["uids"], case["gids"], case["squash"]
    ok = _ref_ok(uids) and _ref_ok(gids) and (
        squash is None or all(0 <= i <= ID_MAX for i in squash))
    built: Any = None
    try:
        built = IdMap.build([tuple(r) for r in uids], [tuple(r) for r in gids],
                            tuple(squash) if squash is not None else None)
    except ValueError as e:
        if ok:
            return [f"invariant: IdMap refused good ranges: {e}"]
    else:
        if not ok:
            return ["invariant: IdMap took ranges the reference refuses"]
    try:
        parsed = _parse(_argv(case))
    except argparse.ArgumentError:
        parsed = "refused"
    if (parsed == "refused") == ok:
        return [f"invariant: the option parser {'refused' if ok else 'took'} {_argv(case)}"]
    if not ok:
        return []
    if built is None:
        return [] if parsed is None else ["invariant: the option parser made a map of nothing"]
    problems: list[str] = []
    again = _parse(built.describe().split())
    if (again.uids.ranges, again.gids.ranges, again.squash) != (
            built.uids.ranges, built.gids.ranges, built.squash):
        problems.append(f"invariant: describe() {built.describe()!r} parses to another map")
    rng = random.Random(case["seed"])
    probes = [0, 1, 65534, ID_MAX, 0xFFFFFFFF]
    for g, h, n in uids + gids:
        probes += [g - 1, g, g + n - 1, g + n, h - 1, h, h + n - 1, h + n]
    probes += [rng.randrange(1 << 32) for _ in range(rng.choice((20, MEMO_MAX + 50)))]
    # the backend's Rgetattr frame, its owner the probe (uid = fid, gid = mask)
    mapper = built.getattr_mapper(
        lambda tag, fid, mask: RGETATTR.pack(160, 25, tag, 1, 2, 3, 4, 5, fid, mask, *range(15)))
    for x in probes:
        if x < 0:
            continue
        for table, ranges, to_host in ((built.uids, uids, built.uid_to_host),
                                       (built.gids, gids, built.gid_to_host)):
            sq = None if squash is None else squash[0 if ranges is uids else 1]
            want = sq if sq is not None else _ref(ranges, x, 0, UNMAPPED)
            if to_host(x) != want:
                problems.append(f"invariant: guest id {x} -> host {to_host(x)}, not {want}")
            want = _ref(ranges, x, 1, OVERFLOW_ID)
            if table.to_guest(x) != want:
                problems.append(f"invariant: host id {x} -> guest {table.to_guest(x)}, not {want}")
        if x > 0xFFFFFFFF:  # (no host id: a stat's owner is 32 bits)
            continue
        frame = RGETATTR.unpack(mapper(9, x, x))
        u, gg = frame[8:10]
        if frame[:8] != (160, 25, 9, 1, 2, 3, 4, 5) or frame[10:] != tuple(range(15)):
            problems.append(f"invariant: Rgetattr of owner {x}:{x} changed beyond its owner")
        if (u, gg) != (_ref(uids, x, 1, OVERFLOW_ID), _ref(gids, x, 1, OVERFLOW_ID)):
            problems.append(f"invariant: Rgetattr owner {x}:{x} reported as {u}:{gg}")
        if len(problems) > 5:
            break
    return problems


# ----------------------------------------------------------------------- run
def run(
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_cases: int | None,
    crash_dir: Path | None,
) -> Report:
    """Run examples until the budget is spent; every finding is saved, the run goes on."""
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = run_deadline(start, time_budget, max_cases)
    counts: dict[str, int] = {}
    while not STOP.is_set() and not budget_spent(deadline, report.examples_run, max_cases):
        case = random_case(rng)
        label = case["kind"] + ("/" + case["node"] if case["kind"] == "attach" else "")
        counts[label] = counts.get(label, 0) + 1
        problems = run_case(case)
        report.examples_run += 1
        for p in problems[:1]:
            kind, _, msg = p.partition(": ")
            save_failure(report, "config", Failure(kind, msg),
                         json.dumps(case).encode(), crash_dir=crash_dir,
                         extra={"case": case, "replay": "python -m fuzz replay <this .json>"})
    report.details["cases_by_scenario"] = counts
    report.duration_s = round(time.monotonic() - start, 2)
    return report


def replay_case(meta_path: Path) -> list[str]:
    """Re-run a saved finding's case with the same oracles; its problems (none: fixed)."""
    return run_case(json.loads(meta_path.read_text())["case"])


