"""launch.setup_fs + Undo, each run in a throwaway process inside a private mount namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, gofer_env, make_bundle

ST_RDONLY, ST_NOSUID, ST_NODEV, ST_NOEXEC = 1, 2, 4, 8

PRELUDE = """
import errno, json, os, sys
from gofer9p import launch, spec, syscalls
launch.enter_private_mount_namespace()
s = spec.load_spec(sys.argv[1])
def flags(p):
    return os.statvfs(p).f_flag & 15
"""


def _run(bundle: Path, body: str) -> Any:
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(bundle)],
        env=gofer_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _sources(tmp: Path) -> tuple[Path, Path, Path]:
    ro = tmp / "src-ro"
    rw = tmp / "src-rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "tool.sh").write_text("#!/bin/sh\necho ran\n")
    (ro / "tool.sh").chmod(0o755)
    f = tmp / "src-file"
    f.write_text("single file\n")
    return ro, rw, f


def test_mounts_flags_and_undo(tmp_path: Path) -> None:
    ro, rw, f = _sources(tmp_path)
    bundle = make_bundle(
        tmp_path,
        mounts=[
            ("/data", str(ro), ["rbind", "ro", "nosuid", "nodev", "noexec"]),
            ("/a/b/rw", str(rw), ["rbind", "nosuid"]),
            ("/etc/single", str(f), ["bind", "ro"]),
        ],
    )
    out = _run(
        bundle,
        """
        undo = launch.setup_fs(s)
        root = s.root_path
        res = {"flags": {m.destination: flags(root + m.destination) for m in s.mounts}}
        res["listing"] = sorted(os.listdir(root + "/data"))
        res["single"] = open(root + "/etc/single").read()
        try:
            open(root + "/data/new", "w")
        except OSError as e:
            res["ro_write"] = e.errno
        try:
            os.execv(root + "/data/tool.sh", ["x"]) if os.fork() == 0 else None
        except OSError as e:
            os._exit(e.errno)
        res["noexec"] = os.waitstatus_to_exitcode(os.wait()[1])
        open(root + "/a/b/rw/written", "w").write("ok")
        undo()
        res["after"] = sorted(os.listdir(root))
        res["mountinfo"] = [l for l in open("/proc/self/mountinfo") if root in l]
        print(json.dumps(res))
        """,
    )
    assert out["flags"] == {
        "/data": ST_RDONLY | ST_NOSUID | ST_NODEV | ST_NOEXEC,
        "/a/b/rw": ST_NOSUID,
        "/etc/single": ST_RDONLY,
    }
    assert out["listing"] == ["tool.sh"]
    assert out["single"] == "single file\n"
    assert out["ro_write"] == 30  # EROFS
    assert out["noexec"] == 13  # EACCES
    assert (rw / "written").read_text() == "ok"  # the rw mount reached the source
    assert out["after"] == ["hello.txt"]  # created mount points (dirs, the file) are gone
    assert out["mountinfo"] == []


def test_host_namespace_untouched(tmp_path: Path) -> None:
    ro, _, _ = _sources(tmp_path)
    bundle = make_bundle(tmp_path, mounts=[("/data", str(ro), ["rbind", "ro"])])
    out = _run(bundle, "launch.setup_fs(s); print(json.dumps(os.listdir(s.root_path + '/data')))")
    assert out == ["tool.sh"]
    # The process (and its namespace) is gone; the host never saw the mount.
    with open("/proc/self/mountinfo") as mi:
        assert str(bundle) not in mi.read()


def test_symlink_in_rootfs_is_refused(tmp_path: Path) -> None:
    ro, _, _ = _sources(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    bundle = make_bundle(
        tmp_path,
        mounts=[("/ok", str(ro), ["rbind"]), ("/evil/x", str(ro), ["rbind"])],
    )
    (bundle / "rootfs" / "evil").symlink_to(victim)
    out = _run(
        bundle,
        """
        try:
            launch.setup_fs(s)
            print(json.dumps("mounted"))
        except launch.LaunchError as e:
            print(json.dumps({"error": str(e), "ok_exists": os.path.exists(s.root_path + "/ok"),
                              "mi": [l for l in open("/proc/self/mountinfo") if "rootfs" in l]}))
        """,
    )
    assert "is a symlink or not a directory" in out["error"]
    assert out["ok_exists"] is False  # the first mount was undone, its mount point removed
    assert out["mi"] == []
    assert list(victim.iterdir()) == []


def test_symlink_as_last_component_is_refused(tmp_path: Path) -> None:
    ro, _, _ = _sources(tmp_path)
    bundle = make_bundle(tmp_path, mounts=[("/data", str(ro), ["rbind"])])
    (bundle / "rootfs" / "data").symlink_to(tmp_path / "victim")
    out = _run(
        bundle,
        """
        try:
            launch.setup_fs(s); print(json.dumps("mounted"))
        except launch.LaunchError as e:
            print(json.dumps(str(e)))
        """,
    )
    assert "is a symlink" in out


def test_missing_source(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, mounts=[("/data", str(tmp_path / "nope"), ["rbind"])])
    out = _run(
        bundle,
        """
        try:
            launch.setup_fs(s); print(json.dumps("mounted"))
        except launch.LaunchError as e:
            print(json.dumps(str(e)))
        """,
    )
    assert "source" in out and "No such file" in out


def test_kind_mismatch(tmp_path: Path) -> None:
    ro, _, f = _sources(tmp_path)
    bundle = make_bundle(tmp_path, mounts=[("/hello.txt", str(ro), ["rbind"])])
    out = _run(
        bundle,
        """
        try:
            launch.setup_fs(s); print(json.dumps("mounted"))
        except launch.LaunchError as e:
            print(json.dumps(str(e)))
        """,
    )
    assert "must be a directory like its source" in out
    assert (bundle / "rootfs" / "hello.txt").read_text() == "hello from root\n"
    assert os.path.exists(f)


def test_file_mount_over_the_images_own_file(tmp_path: Path) -> None:
    """A file source goes over an existing regular file of the image (its /etc/hosts): the
    sandbox sees the source, read-only; undo leaves the image's file as it was."""
    _, _, f = _sources(tmp_path)
    bundle = make_bundle(tmp_path, mounts=[("/etc/hosts", str(f), ["rbind", "ro"])])
    (bundle / "rootfs" / "etc").mkdir()
    (bundle / "rootfs" / "etc" / "hosts").write_text("image hosts\n")
    out = _run(
        bundle,
        """
        undo = launch.setup_fs(s)
        p = s.root_path + "/etc/hosts"
        res = {"flags": flags(p), "text": open(p).read()}
        try:
            open(p, "w")
        except OSError as e:
            res["write"] = e.errno
        undo()
        res["after"] = open(p).read()
        print(json.dumps(res))
        """,
    )
    assert out == {"flags": ST_RDONLY, "text": "single file\n", "write": 30,
                   "after": "image hosts\n"}
    assert f.read_text() == "single file\n"


def test_file_mount_point_must_be_a_regular_file(tmp_path: Path) -> None:
    _, _, f = _sources(tmp_path)
    bundle = make_bundle(
        tmp_path, mounts=[("/ok", str(f), ["bind"]), ("/pipe", str(f), ["bind"])]
    )
    os.mkfifo(bundle / "rootfs" / "pipe")
    out = _run(
        bundle,
        """
        try:
            launch.setup_fs(s); print(json.dumps("mounted"))
        except launch.LaunchError as e:
            print(json.dumps(str(e)))
        """,
    )
    assert out.startswith("mount /pipe: ") and out.endswith("must be a regular file like its source")
    assert not (bundle / "rootfs" / "ok").exists()  # the first mount point was undone too


def test_special_file_source_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "src-fifo"
    os.mkfifo(fifo)
    bundle = make_bundle(tmp_path, mounts=[("/etc/fifo", str(fifo), ["bind"])])
    out = _run(
        bundle,
        """
        try:
            launch.setup_fs(s); print(json.dumps("mounted"))
        except launch.LaunchError as e:
            print(json.dumps(str(e)))
        """,
    )
    assert out == f"mount /etc/fifo: source {str(fifo)!r} is neither a directory nor a regular file"
    assert not (bundle / "rootfs" / "etc").exists()


@pytest.mark.parametrize("old_kernel", [False, True])
def test_rbind_flags_cover_submounts(tmp_path: Path, old_kernel: bool) -> None:
    """ro/nosuid/nodev/noexec on an rbind must reach the submounts it carries (with
    mount_setattr, and with the per-submount remount used where it is missing)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    bundle = make_bundle(
        tmp_path,
        mounts=[
            ("/data", str(src), ["rbind", "ro", "nodev", "noexec", "nosuid"]),
            ("/plain", str(src), ["bind", "ro"]),
        ],
    )
    nosys = "def nosys(*a):\n    raise OSError(errno.ENOSYS, 'no mount_setattr')\n"
    nosys += "syscalls.mount_setattr = nosys\n"
    out = _run(
        bundle,
        (nosys if old_kernel else "")
        + textwrap.dedent(
            """
        # A writable tmpfs submount inside the source, made in this private namespace only.
        src = sys.argv[1] + "/../src/sub"
        syscalls.mount("tmpfs", os.path.realpath(src), "tmpfs", 0)
        undo = launch.setup_fs(s)
        root = s.root_path
        res = {"sub": flags(root + "/data/sub"), "top": flags(root + "/data")}
        try:
            open(root + "/data/sub/new", "w")
        except OSError as e:
            res["write"] = e.errno
        res["plain_sub_is_mount"] = os.path.ismount(root + "/plain/sub")
        res["src_sub_writable"] = os.access(src, os.W_OK) and not flags(src) & 1
        undo()
        print(json.dumps(res))
        """
        ),
    )
    allf = ST_RDONLY | ST_NOSUID | ST_NODEV | ST_NOEXEC
    assert out["top"] == allf
    assert out["sub"] & allf == allf
    assert out["write"] == 30  # EROFS in the submount too
    assert out["plain_sub_is_mount"] is False  # a plain bind does not carry submounts
    assert out["src_sub_writable"] is True  # the source itself was not changed
