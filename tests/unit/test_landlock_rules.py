"""landlock.rights/handled per ABI, and restrict()'s answers where the kernel has no Landlock
(the enforcing path is tested on the real gofer: tests/daemon/test_landlock.py)."""

from __future__ import annotations

import logging

import pytest

from gofer9p import landlock as L


def test_read_only_directory_reads_only() -> None:
    assert L.rights(True, True, 7) == L.READ_FILE | L.READ_DIR


def test_read_write_directory_has_what_the_operations_need() -> None:
    got = L.rights(False, True, 7)
    for need in (
        L.WRITE_FILE,
        L.MAKE_REG,
        L.MAKE_DIR,
        L.MAKE_SYM,
        L.MAKE_FIFO,
        L.MAKE_SOCK,
        L.MAKE_CHAR,
        L.MAKE_BLOCK,
        L.REMOVE_FILE,
        L.REMOVE_DIR,
        L.REFER,
        L.TRUNCATE,
    ):
        assert got & need, need
    assert not got & (L.EXECUTE | L.IOCTL_DEV)  # never granted


@pytest.mark.parametrize(("abi", "has"), [(1, 0), (2, L.REFER), (3, L.REFER | L.TRUNCATE)])
def test_rights_the_abi_does_not_know_are_left_out(abi: int, has: int) -> None:
    got = L.rights(False, True, abi)
    assert got & (L.REFER | L.TRUNCATE) == has
    assert got & ~L.handled(abi) == 0
    assert L.handled(abi) & L.IOCTL_DEV == 0


def test_handled_grows_with_the_abi() -> None:
    assert L.handled(5) & L.IOCTL_DEV and L.handled(7) == L.handled(5)


def test_a_file_point_gets_file_rights_only() -> None:
    assert L.rights(False, False, 7) == L.WRITE_FILE | L.READ_FILE | L.TRUNCATE
    assert L.rights(True, False, 7) == L.READ_FILE


def test_no_landlock_auto_logs_one_line_require_fails(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gofer9p")
    gofer9p_log = logging.getLogger("gofer9p")
    gofer9p_log.propagate, saved = True, gofer9p_log.propagate
    try:
        assert L.restrict([(0, True, True)], "auto", version=0) == "landlock unavailable"
    finally:
        gofer9p_log.propagate = saved
    assert [r.getMessage() for r in caplog.records] == [
        "this kernel has no Landlock: going on without it (--landlock=require makes this fatal)"
    ]
    with pytest.raises(L.LandlockError, match="--landlock=require: this kernel has no Landlock"):
        L.restrict([(0, True, True)], "require", version=0)


def test_abi_1_is_not_used_for_read_write_points() -> None:
    with pytest.raises(L.LandlockError, match="ABI 1 would refuse renames"):
        L.restrict([(0, False, True)], "require", version=1)
    assert L.restrict([(0, True, True)], "off", version=1) == "landlock off"
