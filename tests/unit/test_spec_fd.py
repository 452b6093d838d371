"""spec.load_spec_fd / read_spec_fd / load_spec_bytes: the spec a manager passes on an fd."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gofer9p.spec import MAX_SPEC_BYTES, SpecError, load_spec_bytes, load_spec_fd, read_spec_fd


def _doc(root: str) -> bytes:
    return json.dumps({"root": {"path": root}, "mounts": []}).encode()


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_pipe_read_to_eof_and_closed(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    r, w = os.pipe()
    os.write(w, _doc("rootfs"))
    os.close(w)
    spec = load_spec_fd(r, tmp_path)
    assert spec.root_path == str(tmp_path / "rootfs")
    assert _closed(r)


def test_memfd_is_read_from_offset_0(tmp_path: Path) -> None:
    """A manager that wrote a memfd need not rewind it."""
    fd = os.memfd_create("spec")
    os.write(fd, _doc(str(tmp_path)))
    assert os.lseek(fd, 0, os.SEEK_CUR) > 0
    assert load_spec_fd(fd, None).root_path == str(tmp_path)
    assert _closed(fd)


def test_too_large_is_refused_and_closed() -> None:
    fd = os.memfd_create("spec")
    os.ftruncate(fd, MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match="larger than"):
        read_spec_fd(fd)
    assert _closed(fd)


def test_relative_paths_need_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"root\.path .rootfs. is relative and no --bundle"):
        load_spec_bytes(_doc("rootfs"), None)
    doc = {
        "root": {"path": str(tmp_path)},
        "mounts": [{"destination": "/d", "type": "bind", "source": "src"}],
    }
    with pytest.raises(SpecError, match=r"mounts\[0\].source 'src' is relative"):
        load_spec_bytes(json.dumps(doc).encode(), None)


def test_bad_json_names_the_fd() -> None:
    r, w = os.pipe()
    os.write(w, b"{nope")
    os.close(w)
    with pytest.raises(SpecError, match=rf"the spec on fd {r} is not valid JSON"):
        load_spec_fd(r, "/")
