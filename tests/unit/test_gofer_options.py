"""launch.GoferOptions: the one set of start options that start_gofer and ForkServer.start_gofer
take (as an object or as keyword arguments), its checks and the gofer flags it renders."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import attrs
import pytest

from gofer9p import launch
from gofer9p.launch import ForkServer, GoferOptions, LaunchError

FULL: dict[str, Any] = {
    "panic_on_write": True,
    "seccomp": "log",
    "apply_caps": False,
    "setup_root": True,
    "landlock": "off",
    "map_uids": [(0, 1000, 1)],
    "map_gids": [(0, 1000, 1)],
    "squash_ids": (1000, 1000),
    "record_fd": 9,
    "record_headers_only": True,
    "max_fids": 64,
    "extra_args": ["--log-level", "debug"],
}


def test_flags_in_the_gofers_order() -> None:
    assert GoferOptions(**FULL).flags("/b") == [
        "--bundle", "/b", "--panic-on-write", "--seccomp=log", "--apply-caps=false",
        "--setup-root", "--landlock=off",
        "--map-uid=0:1000:1", "--map-gid=0:1000:1", "--squash-ids=1000:1000",
        "--record-headers-only", "--max-fids=64", "--log-level", "debug",
    ]  # fmt: skip
    assert GoferOptions().flags("/b") == [
        "--bundle", "/b", "--seccomp=kill", "--apply-caps=true", "--landlock=auto"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "line"),
    [
        ({"record_headers_only": True}, "record_headers_only needs record_fd"),
        ({"setup_root": True, "setup_mounts": True}, "setup_root binds the mounts"),
        ({"map_uids": [(0, 1000, 10), (5, 2000, 1)]}, "overlap"),
        ({"max_fids": -1}, "max_fids: -1"),
    ],
)
def test_checked_when_built(kw: dict[str, Any], line: str) -> None:
    with pytest.raises(LaunchError, match=line):
        GoferOptions(**kw)


def test_frozen_and_sequences_kept_as_tuples() -> None:
    opts = GoferOptions(extra_args=["-x"], map_uids=[(0, 1, 2)])
    assert opts.extra_args == ("-x",) and opts.map_uids == ((0, 1, 2),)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        opts.seccomp = "off"  # type: ignore[misc]
    assert GoferOptions(extra_args=["-x"]) == GoferOptions(extra_args=("-x",))


def test_keywords_build_or_change_the_options() -> None:
    base = GoferOptions(seccomp="log")
    assert launch._options(None, {"seccomp": "off"}) == GoferOptions(seccomp="off")
    assert launch._options(base, {}) is base
    assert launch._options(base, {"landlock": "off"}) == GoferOptions(seccomp="log", landlock="off")
    with pytest.raises(TypeError):
        launch._options(None, {"no_such_option": 1})  # type: ignore[typeddict-unknown-key]


def _bundle(tmp: Path) -> Path:
    (tmp / "rootfs").mkdir()
    (tmp / "config.json").write_text(json.dumps({"root": {"path": "rootfs"}}))
    return tmp


def test_start_gofer_takes_keywords_or_an_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keyword form every caller used stays: both forms reach the spawn alike."""
    seen: list[tuple[GoferOptions, list[str]]] = []

    def spawn(extra: Any, opts: GoferOptions, flags: list[str], *rest: Any) -> Any:
        extra.close(keep_reader=False)
        seen.append((opts, flags))
        return None

    monkeypatch.setattr(launch, "_spawn_gofer", spawn)
    b = _bundle(tmp_path)
    kw = {k: v for k, v in FULL.items() if k not in ("record_fd", "record_headers_only")}
    launch.start_gofer(b, **kw)
    launch.start_gofer(b, GoferOptions(**kw))
    launch.start_gofer(b, GoferOptions(seccomp="off"), **kw)  # keywords win
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][1][:2] == ["--bundle", str(b)]


def test_forkserver_start_gofer_takes_keywords_or_an_object(tmp_path: Path) -> None:
    seen: list[tuple[GoferOptions, list[str], float]] = []

    def start(extra: Any, opts: GoferOptions, args: list[str], timeout: float) -> Any:
        seen.append((opts, args, timeout))
        return None

    a, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fs = ForkServer(a)
    fs._start_gofer = start  # type: ignore[method-assign]
    try:
        b = _bundle(tmp_path)
        kw = {k: v for k, v in FULL.items() if k not in ("record_fd", "record_headers_only")}
        fs.start_gofer(b, **kw, timeout=3.0)
        fs.start_gofer(b, GoferOptions(**kw), timeout=3.0)
        assert seen[0] == seen[1]
        assert seen[0][2] == 3.0
    finally:
        fs.stop()
        b_end.close()
