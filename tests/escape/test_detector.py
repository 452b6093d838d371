"""The containment checker itself: it must see a read, a listing, a chmod, a link, a create.

Without these the escape suite could pass vacuously (e.g. on a noatime file system).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from .conftest import LISTME, SECRET, ScanningStream, make_world


@pytest.fixture
def frozen(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = make_world(tmp_path)
    w.age_and_freeze()
    assert not w.diff(), "our own snapshot disturbed the world"
    return w


def test_sees_a_read(frozen) -> None:  # type: ignore[no-untyped-def]
    assert frozen.secret.read_bytes() == SECRET
    assert any("READ" in d for d in frozen.diff()), frozen.diff()


def test_sees_a_listing(frozen) -> None:  # type: ignore[no-untyped-def]
    assert LISTME in os.listdir(frozen.outside)
    assert any("READ or LISTED" in d and d.split(": ")[1].endswith("outside") for d in frozen.diff())


def test_sees_chmod_link_create_rename(frozen) -> None:  # type: ignore[no-untyped-def]
    frozen.secret.chmod(0o644)
    os.link(frozen.secret, frozen.export / "hl")
    (frozen.outdir / "new").write_bytes(b"")
    os.rename(frozen.outdir / "victim", frozen.outdir / "victim2")
    text = "\n".join(frozen.diff())
    assert "CHMODDED" in text and "LINKED" in text
    assert "created outside the export" in text and "removed/renamed" in text


def test_sees_nothing_for_export_changes(frozen) -> None:  # type: ignore[no-untyped-def]
    (frozen.export / "f").write_bytes(b"inside")
    os.mkdir(frozen.export / "d")
    assert frozen.diff() == []


async def test_scanner_sees_a_split_marker() -> None:
    a, b = trio.testing.memory_stream_pair()
    s = ScanningStream(b)
    m = SECRET.rstrip(b"\n")
    await a.send_all(b"xx" + m[:5])
    await s.receive_some(100)
    await a.send_all(m[5:] + b"yy")
    await s.receive_some(100)
    assert s.leaks == [m]
