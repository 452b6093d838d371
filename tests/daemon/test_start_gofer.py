"""launch.start_gofer mechanics (fd numbering, socket order, user namespace), with a stand-in."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gofer9p.launch import LaunchError, start_gofer

from .conftest import gofer_env, make_bundle


def _report(bundle: Path, **kw: Any) -> dict[str, Any]:
    gp = start_gofer(
        bundle,
        module="tests.daemon.fdreport",
        env=gofer_env(),
        stdout=subprocess.PIPE,
        **kw,
    )
    try:
        for i, s in enumerate(gp.sockets):
            s.sendall(f"hi{i}".encode())
        replies = [s.recv(100).decode() for s in gp.sockets]
        assert gp.proc.stdout is not None
        out: dict[str, Any] = json.loads(gp.proc.stdout.readline())
        out["replies"] = replies
        assert gp.proc.wait(10) == 0
    finally:
        gp.stop()
    return out


def test_fds_start_at_3_in_attach_order(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path,
        mounts=[("/a", "a", ["rbind"]), ("/b", "b", ["rbind", "ro"])],
    )
    # Occupy low fds in the parent so the gofer ends cannot already sit at 3, 4, 5.
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        out = _report(bundle, panic_on_write=True, seccomp="log", apply_caps=False)
    finally:
        for fd in fillers:
            os.close(fd)
    assert out["fds"] == [3, 4, 5]
    assert out["replies"] == ["echo:hi0@3", "echo:hi1@4", "echo:hi2@5"]
    assert out["argv"][:2] == ["--bundle", str(bundle)]
    assert "--panic-on-write" in out["argv"]
    assert "--seccomp=log" in out["argv"] and "--apply-caps=false" in out["argv"]
    # Nothing but stdio, the three sockets and the fd listdir itself used.
    assert [fd for fd in out["open_fds"] if fd not in (0, 1, 2, 3, 4, 5)] == [6]


def test_fds_when_low_numbers_are_free(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    out = _report(bundle)
    assert out["fds"] == [3]
    assert out["replies"] == ["echo:hi0@3"]


def test_user_namespace(tmp_path: Path) -> None:
    # Host root mapped to namespace root (this interpreter lives under /root, mode 0700), plus a
    # second range, so the maps are multi-line: only a privileged parent may write those.
    bundle = make_bundle(
        tmp_path,
        extra={
            "linux": {
                "uidMappings": [
                    {"containerID": 0, "hostID": 0, "size": 1},
                    {"containerID": 1, "hostID": 100000, "size": 1000},
                ],
                "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
            }
        },
    )
    out = _report(bundle)  # userns=None: on because the spec has mappings
    assert out["uid_map"] == ["0", "0", "1", "1", "100000", "1000"]
    assert out["gid_map"] == ["0", "0", "1"]
    assert out["ids"] == [0, 0]
    assert out["userns"] != os.readlink("/proc/self/ns/user")
    assert out["replies"] == ["echo:hi0@3"]

    plain = _report(bundle, userns=False)
    assert plain["userns"] == os.readlink("/proc/self/ns/user")


def test_userns_needs_mappings(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    with pytest.raises(LaunchError, match="uidMappings"):
        start_gofer(bundle, userns=True)


def test_bad_bundle(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="is not a directory"):
        start_gofer(tmp_path / "nope")


def test_rejected_mapping_is_a_clean_error(tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path,
        extra={
            "linux": {
                # Overlapping ranges: the kernel refuses this uid_map.
                "uidMappings": [
                    {"containerID": 0, "hostID": 0, "size": 10},
                    {"containerID": 5, "hostID": 1000, "size": 10},
                ],
                "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}],
            }
        },
    )
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(LaunchError, match="writing the gofer's uid_map"):
        start_gofer(bundle, module="tests.daemon.fdreport", env=gofer_env())
    assert set(os.listdir("/proc/self/fd")) <= before  # no fd leaked
