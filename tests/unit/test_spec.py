"""Spec parsing: the good bundle, and one clear one-line SpecError for each bad case."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gofer9p.spec import IdMapping, NineMount, SpecError, load_spec, parse_spec


def _bundle(tmp_path: Path, doc: Any, *, raw: bytes | None = None) -> Path:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    (tmp_path / "config.json").write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return tmp_path


GOOD: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {"user": {"uid": 1000, "gid": 100}, "args": ["sh"], "somethingNew": 1},
    "root": {"path": "rootfs", "readonly": True},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind"]},
        {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup"},
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]},
        {"destination": "/work//x/", "type": "none", "source": "w", "options": ["bind", "nosuid"]},
        {"destination": "/flip", "source": "/f", "options": ["rbind", "ro", "rw"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        {"destination": "/procfoo", "type": "bind", "source": "/p"},
    ],
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 10}],
        "namespaces": [{"type": "mount"}],
    },
    "annotations": {"x": "y"},
}


def test_good_bundle(tmp_path: Path) -> None:
    b = _bundle(tmp_path, GOOD)
    spec = load_spec(b)
    assert spec.bundle == str(b)
    assert spec.root_path == str(b / "rootfs")
    assert spec.root_readonly is True
    assert spec.mounts == (
        NineMount("/data", "/srv/data", True, ("rbind", "ro")),
        NineMount("/work/x", str(b / "w"), False, ("bind", "nosuid")),
        NineMount("/flip", "/f", False, ("rbind", "ro", "rw")),
        NineMount("/procfoo", "/p", False, ()),
    )
    assert spec.mounts[1].flags == {"nosuid"}
    assert spec.attach_count == 5
    assert (spec.uid, spec.gid) == (1000, 100)
    assert spec.uid_mappings == (IdMapping(0, 100000, 65536),)
    assert spec.gid_mappings == (IdMapping(0, 200000, 10),)


def test_minimal_and_absolute_root(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    b = tmp_path / "b"
    b.mkdir()
    (b / "config.json").write_text(json.dumps({"root": {"path": str(other)}}))
    spec = load_spec(str(b))
    assert spec.root_path == str(other)
    assert spec.root_readonly is False
    assert spec.mounts == ()
    assert spec.attach_count == 1
    assert spec.uid is None and spec.uid_mappings == ()


def _err(tmp_path: Path, doc: Any = None, raw: bytes | None = None) -> str:
    b = _bundle(tmp_path, doc, raw=raw)
    with pytest.raises(SpecError) as ei:
        load_spec(b)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is not a directory"):
        load_spec(tmp_path / "nope")


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"has no config\.json"):
        load_spec(tmp_path)


def test_unreadable_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").mkdir()
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path)


def test_bad_json(tmp_path: Path) -> None:
    assert "not valid JSON" in _err(tmp_path, raw=b'{"root": {\n"path": ')
    assert "not valid JSON" in _err(tmp_path, raw=b"\xff\xfe")


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], "top level must be an object"),
        ({}, "missing 'root'"),
        ({"root": "rootfs"}, "'root' must be an object"),
        ({"root": {}}, "missing 'root.path'"),
        ({"root": {"path": ""}}, "'root.path' must be a non-empty string"),
        ({"root": {"path": 7}}, "'root.path' must be a non-empty string"),
        ({"root": {"path": "rootfs", "readonly": "yes"}}, "root.readonly"),
        ({"root": {"path": "rootfs"}, "mounts": {}}, "'mounts' must be an array"),
        ({"root": {"path": "rootfs"}, "mounts": [1]}, "mounts[0] must be an object"),
        ({"root": {"path": "rootfs"}, "mounts": [{"type": "bind"}]}, "mounts[0].destination"),
        (
            {"root": {"path": "rootfs"}, "mounts": [{"destination": "data", "type": "bind"}]},
            "is not absolute",
        ),
        (
            {"root": {"path": "rootfs"}, "mounts": [{"destination": "/a/../b", "type": "bind"}]},
            "contains '..'",
        ),
        (
            {
                "root": {"path": "rootfs"},
                "mounts": [{"destination": "/", "type": "bind", "source": "/x"}],
            },
            "would hide the root",
        ),
        (
            {"root": {"path": "rootfs"}, "mounts": [{"destination": "/d", "type": "bind"}]},
            "mounts[0].source",
        ),
        (
            {"root": {"path": "rootfs"}, "mounts": [{"destination": "/d", "options": "ro"}]},
            "options must be an array",
        ),
        (
            {"root": {"path": "rootfs"}, "mounts": [{"destination": "/d", "type": 3}]},
            "type must be a string",
        ),
        ({"root": {"path": "rootfs"}, "process": {"user": {"uid": -1}}}, "process.user.uid"),
        ({"root": {"path": "rootfs"}, "process": {"user": {"gid": True}}}, "process.user.gid"),
        ({"root": {"path": "rootfs"}, "process": []}, "'process' must be an object"),
        ({"root": {"path": "rootfs"}, "linux": {"uidMappings": {}}}, "linux.uidMappings"),
        (
            {"root": {"path": "rootfs"}, "linux": {"gidMappings": [{"containerID": 0}]}},
            "linux.gidMappings[0].hostID",
        ),
    ],
)
def test_bad_config(tmp_path: Path, doc: Any, needle: str) -> None:
    assert needle in _err(tmp_path, doc)


def test_root_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in _err(tmp_path, {"root": {"path": "file"}})
    assert "is not a directory" in _err(tmp_path, {"root": {"path": "missing"}})


def test_relative_source_is_bundle_relative() -> None:
    spec = parse_spec(
        {"root": {"path": "r"}, "mounts": [{"destination": "/d", "type": "bind", "source": "s/t"}]},
        "/b",
    )
    assert spec.root_path == os.path.normpath("/b/r")
    assert spec.mounts[0].source == "/b/s/t"
