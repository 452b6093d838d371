"""Linux v9fs in a qemu guest, end to end: every guest check, then the data on the host.

Three kinds of tests per (server, cache) boot:

- ``test_boot``: the guest booted, mounted everything, finished, unmounted cleanly and every
  server process exited 0 at EOF.
- ``test_guest_check[NAME]``: one per check of workload.sh (the names are read from its ``ALL``
  list, so adding a check there adds a test here).
- ``test_host[NAME]``: after power-off, the export on the host holds exactly what the guest
  wrote: bytes, sizes, sha256 of the 64 MiB file, link counts, modes, owners, nanosecond times,
  special files, and the read-only export untouched.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import RO_FILES, Boot
from .guestvm import host_sha256
from .servers import SERVERS

HERE = Path(__file__).resolve().parent


def _workload_checks() -> list[str]:
    """The check names, in order, from the ALL="..." list of workload.sh."""
    text = (HERE / "workload.sh").read_text()
    m = re.search(r'^ALL="([^"]*)"', text, re.M)
    assert m, "workload.sh has no ALL= list"
    return m.group(1).split()


GUEST_CHECKS = _workload_checks()


def _why_unfinished(boot: Boot) -> str:
    """One line on why the guest stopped early (test_boot has the full diagnostics)."""
    if boot.run.timed_out:
        return f"timed out after {boot.run.seconds:.0f}s, see test_boot"
    status, detail = boot.run.result_map().get("boot", ("", ""))
    if status == "FAIL":
        return f"boot failed: {detail}"
    return "the workload did not finish, see test_boot"


def _xfail_if_known(boot: Boot, name: str) -> None:
    reason = boot.known_failure(name)
    if reason:
        pytest.xfail(f"{boot.combo.server}: {reason}")


def test_boot(boot: Boot) -> None:
    """The guest ran to the end: no timeout, mounts and unmounts fine, servers exited 0."""
    run = boot.run
    res = run.result_map()
    assert not run.timed_out, f"guest timed out after {run.seconds:.0f}s\n{boot.diagnostics()}"
    assert res.get("boot", ("", ""))[0] == "PASS", f"boot: {res.get('boot')}\n{boot.diagnostics()}"
    assert "DONE" in run.results, f"workload did not finish\n{boot.diagnostics()}"
    bad = {k: v for k, v in res.items() if k.startswith(("mount_", "umount_")) and v[0] != "PASS"}
    assert not bad, f"{bad}\n{boot.diagnostics()}"
    assert run.server_rcs and all(rc == 0 for rc in run.server_rcs), (
        f"server exit codes {run.server_rcs} (expected 0 at EOF)\n{boot.diagnostics()}"
    )


def test_no_unknown_results(boot: Boot) -> None:
    """Every RESULT the guest printed is one the host knows (a typo would otherwise hide)."""
    known = set(GUEST_CHECKS) | {"boot"}
    extra = [
        k
        for k in boot.run.result_map()
        if k not in known and not k.startswith(("mount_", "umount_"))
    ]
    assert not extra


@pytest.mark.parametrize("name", GUEST_CHECKS)
def test_guest_check(boot: Boot, name: str) -> None:
    """One check of the guest workload: PASS, SKIP (with the guest's reason) or FAIL."""
    got = boot.run.result_map().get(name)
    if got is None:
        pytest.fail(f"guest reported nothing for {name}: {_why_unfinished(boot)}")
    status, detail = got
    if status == "SKIP":
        pytest.skip(f"guest skipped {name}: {detail}")
    if status != "PASS":
        _xfail_if_known(boot, name)
        pytest.fail(f"{name} FAILED in the guest ({boot.combo.id}): {detail}\n{boot.diagnostics()}")


# ------------------------------------------------------------------------------------------
# host side


def _guest_passed(boot: Boot, name: str) -> None:
    """Skip a host check whose guest check did not run (e.g. BIG=0); fail if the guest failed."""
    got = boot.run.result_map().get(name)
    if got is None or got[0] == "SKIP":
        pytest.skip(f"guest check {name} did not run")


def h_data(boot: Boot) -> None:
    r = boot.rw
    assert (r / "hello.txt").read_bytes() == b"hello 9p\nsecond line\nthird line\n"
    assert (r / "middle.bin").read_bytes() == b"abcXYfghij"
    assert (r / "otrunc.txt").read_bytes() == b"new\n"


def h_sparse(boot: Boot) -> None:
    data = (boot.rw / "sparse.bin").read_bytes()
    assert len(data) == 1048579
    assert data[-3:] == b"end" and data[:-3].count(0) == 1048576


def h_truncate(boot: Boot) -> None:
    r = boot.rw
    assert (r / "trunc_shrink.txt").read_bytes() == b"0123"
    assert (r / "trunc_grow.bin").read_bytes() == b"ab" + bytes(8190)
    assert (r / "trunc_path.txt").read_bytes() == b"012"
    assert (r / "ftrunc.txt").read_bytes() == b"012345"


def h_synced(boot: Boot) -> None:
    _guest_passed(boot, "fsync_dropcaches")
    want = boot.run.values().get("synced_sha256")
    assert want, "guest printed no synced_sha256"
    assert host_sha256(boot.rw / "synced.bin") == want


def h_parallel_io(boot: Boot) -> None:
    _guest_passed(boot, "parallel_io")
    values = boot.run.values()
    for i in range(4):
        assert host_sha256(boot.rw / f"par{i}.bin") == values[f"par{i}_sha256"], f"par{i}.bin"


def h_mmap(boot: Boot) -> None:
    _guest_passed(boot, "mmap")
    if boot.combo.cache == "none":
        pytest.skip("cache=none: the client refuses shared writable mmap")
    data = (boot.rw / "mmap.bin").read_bytes()
    assert len(data) == 8192
    assert data[:16] == b"mmap-page-0-data" and data[4096 : 4096 + 16] == b"mmap-page-1-data"


def h_big_file(boot: Boot) -> None:
    _guest_passed(boot, "big_file")
    want = boot.run.values().get("big_sha256")
    assert want, "guest printed no big_sha256"
    p = boot.rw / "big.bin"
    assert p.stat().st_size == 64 << 20
    assert host_sha256(p) == want


def h_unlinked(boot: Boot) -> None:
    names = set(os.listdir(boot.rw))
    assert not names & {"unlinked.txt", "unlinked_w.txt", "gone.txt", "ren_src.txt", "ren_a.txt"}


def h_dirs(boot: Boot) -> None:
    r = boot.rw
    assert (r / "d1").is_dir() and os.listdir(r / "d1") == []
    assert (r / "dst_dir" / "tree2" / "sub" / "leaf.txt").read_bytes() == b"deep\n"
    assert not (r / "tree").exists()


def h_many(boot: Boot) -> None:
    _guest_passed(boot, "readdir_10k")
    names = os.listdir(boot.rw / "many")
    want = {f"f{i:05d}" for i in range(1, 10001) if i % 100 != 0}
    assert len(names) == 9900
    assert set(names) == want
    made = os.listdir(boot.rw / "made")
    assert sorted(made) == [f"f{i:05d}" for i in range(1, 1001)]


def h_renames(boot: Boot) -> None:
    r = boot.rw
    assert (r / "ren_b.txt").read_bytes() == b"r1\n"
    assert (r / "dst_dir" / "moved.txt").read_bytes() == b"r2\n"
    assert not (r / "src_dir" / "moved.txt").exists()
    assert (r / "ren_dst.txt").read_bytes() == b"winner\n"


def h_links(boot: Boot) -> None:
    a = os.stat(boot.rw / "link_a.txt")
    b = os.stat(boot.rw / "link_b.txt")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == 2
    assert (boot.rw / "link_b.txt").read_bytes() == b"linked\nmore\n"
    assert not (boot.rw / "link_c.txt").exists()


def h_symlinks(boot: Boot) -> None:
    r = boot.rw
    assert os.readlink(r / "sym.txt") == "hello.txt"
    assert os.readlink(r / "dangling") == "/nonexistent/target"
    assert os.readlink(r / "longlink") == "x" * 200
    assert os.readlink(r / "dir_sym") == "real_dir"


def h_modes(boot: Boot) -> None:
    assert stat.S_IMODE(os.stat(boot.rw / "mode.txt").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(boot.rw / "mode_dir").st_mode) == 0o710


MODE_FILES = (620, 666, 4777, 2775, 6755, 1755, 7777)
KIND_FMT = {"file": stat.S_IFREG, "fifo": stat.S_IFIFO, "reg": stat.S_IFREG, "sock": stat.S_IFSOCK}


def h_create_modes(boot: Boot) -> None:
    """Exactly the modes the guest created with umask 0 (the server's umask changes nothing)."""
    _guest_passed(boot, "create_modes")
    d = boot.rw / "modes"
    for m in MODE_FILES:
        for kind, fmt in KIND_FMT.items():
            st = os.lstat(d / f"{kind}{m}")
            assert (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode))) == (fmt, f"0o{m}"), (
                f"{kind}{m}"
            )
    for m in (777, 1777, 700, 750):
        st = os.lstat(d / f"dir{m}")
        assert stat.S_ISDIR(st.st_mode) and oct(stat.S_IMODE(st.st_mode)) == f"0o{m}", f"dir{m}"
    assert stat.S_ISLNK(os.lstat(d / "symlink").st_mode)


def h_create_setgid_dir(boot: Boot) -> None:
    """What a local create by uid 1000 (group 1000, or 50) in a set-gid group-50 dir shows."""
    _guest_passed(boot, "create_setgid_dir")
    d = boot.rw / "sgid"
    want = {"nonmember": 0o755, "member": 0o2755, "setuid": 0o4755, "dir": 0o2755, "fifo": 0o2660}
    got = {}
    for name in want:
        st = os.lstat(d / name)
        assert (st.st_uid, st.st_gid) == (1000, 50), name
        got[name] = stat.S_IMODE(st.st_mode)
    assert got == want


def h_fsx(boot: Boot) -> None:
    """The export's file is the guest's model of it, byte for byte."""
    _guest_passed(boot, "fsx")
    values = boot.run.values()
    p = boot.rw / "fsx.bin"
    assert p.stat().st_size == int(values["fsx_size"])
    assert host_sha256(p) == values["fsx_sha256"]


def h_owners(boot: Boot) -> None:
    st = os.stat(boot.rw / "owner.txt")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = os.stat(boot.rw / "created_by_root.txt")
    assert (st.st_uid, st.st_gid) == (0, 0)


def h_times(boot: Boot) -> None:
    st = os.stat(boot.rw / "touched.txt")
    assert int(st.st_mtime) == 1614834367  # 2021-03-04 05:06:07 UTC (the guest runs in UTC)


def h_utimens_ns(boot: Boot) -> None:
    # whole seconds exact; nanoseconds ours or 0 (the 6.1 client truncates: see workload.sh)
    st = os.stat(boot.rw / "ns.txt")
    assert (st.st_mtime_ns, st.st_atime_ns) in {
        (1614834367_123456789, 1600000000_111111111),
        (1614834367_000000000, 1600000000_000000000),
    }


def h_special(boot: Boot) -> None:
    assert stat.S_ISFIFO(os.lstat(boot.rw / "fifo").st_mode)
    if not SERVERS[boot.combo.server].device_nodes:
        assert not (boot.rw / "chardev").exists()
        return
    st = os.lstat(boot.rw / "chardev")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


def h_xattr(boot: Boot) -> None:
    _guest_passed(boot, "xattr")
    p = boot.rw / "xattr.txt"
    assert os.getxattr(p, "user.kept") == b"kept-value"
    assert [n for n in os.listxattr(p) if n.startswith("user.")] == ["user.kept"]


def h_statfs(boot: Boot) -> None:
    """Rstatfs passes the host filesystem's numbers through (same fs as the export)."""
    _guest_passed(boot, "statfs")
    blocks, bsize, _avail, files, namelen = map(int, boot.run.values()["statfs"].split())
    st = os.statvfs(boot.rw)
    assert blocks * bsize == st.f_blocks * st.f_frsize
    assert (files, namelen) == (st.f_files, st.f_namemax)


def h_ro_untouched(boot: Boot) -> None:
    got = {}
    for dirpath, _dirs, files in os.walk(boot.ro):
        for f in files:
            p = Path(dirpath) / f
            got[str(p.relative_to(boot.ro))] = p.read_bytes()
    assert got == RO_FILES


def h_root(boot: Boot) -> None:
    if boot.root is None:
        pytest.skip("no root attach point in this run")
    _guest_passed(boot, "root_fs")
    assert (boot.root / "rootfile.txt").read_bytes() == b"in the root\n"
    assert (boot.root / "rootdir" / "sub").is_dir()


HOST_CHECKS: dict[str, Callable[[Boot], None]] = {
    name[2:]: fn for name, fn in globals().items() if name.startswith("h_") and callable(fn)
}


@pytest.mark.parametrize("name", sorted(HOST_CHECKS))
def test_host(boot: Boot, name: str) -> None:
    """What the guest left in the export, checked on the host after power-off."""
    if boot.run.timed_out or "DONE" not in boot.run.results:
        pytest.fail(f"guest did not finish ({_why_unfinished(boot)}); host check {name} is moot")
    try:
        HOST_CHECKS[name](boot)
    except (AssertionError, OSError):
        _xfail_if_known(boot, f"host_{name}")
        raise
