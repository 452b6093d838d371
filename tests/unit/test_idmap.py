"""The id-mapping table (attach/_idmap.py) and its flags (options.add_idmap_args) in every
front end: lookups at range edges, overlaps refused with a clear error."""

from __future__ import annotations

import argparse
import random
import re

import pytest

from gofer9p import cli, daemon, launch
from gofer9p.attach import IdMap
from gofer9p.attach._idmap import ID_MAX, MEMO_MAX, OVERFLOW_ID, UNMAPPED, IdTable
from gofer9p.options import add_idmap_args, idmap_from_args
from gofer9p.protocol import codec


def test_lookups_at_the_edges_of_each_range() -> None:
    t = IdTable([(1000, 5000, 10), (0, 100000, 1000), (2000, 0, 1)])
    assert [t.to_host(g) for g in (0, 999, 1000, 1009, 1010, 1999, 2000, 2001)] == [
        100000, 100999, 5000, 5009, UNMAPPED, UNMAPPED, 0, UNMAPPED]
    assert [t.to_guest(h) for h in (0, 1, 4999, 5000, 5009, 5010, 100000, 100999, 101000)] == [
        2000, OVERFLOW_ID, OVERFLOW_ID, 1000, 1009, OVERFLOW_ID, 0, 999, OVERFLOW_ID]


def test_lookups_agree_with_a_linear_scan() -> None:
    rng = random.Random(15)
    ranges, g, h = [], 0, 10**6
    for _ in range(50):
        n = rng.randint(1, 20)
        h -= n + rng.randint(0, 5)  # hosts in the other order
        ranges.append((g, h, n))
        g += n + rng.randint(0, 5)
    t = IdTable(ranges)

    def scan_host(x: int) -> int:
        return next((hh + x - gg for gg, hh, n in ranges if gg <= x < gg + n), UNMAPPED)

    def scan_guest(x: int) -> int:
        return next((gg + x - hh for gg, hh, n in ranges if hh <= x < hh + n), OVERFLOW_ID)

    for x in range(0, g + 3):
        assert t.to_host(x) == scan_host(x)
    for _ in range(2):  # the second pass answers from the memo (as far as it holds)
        for x in range(h - 3, 10**6 + 3):
            assert t.to_guest(x) == scan_guest(x)


def test_the_memo_stays_bounded_and_the_mapper_uses_it() -> None:
    m = IdMap([(0, 100000, 65536)], [])

    def frame(uid: int, gid: int) -> bytes:
        return codec.RGETATTR.pack(160, 25, 3, 0, 0, 0, 0, 0o644, uid, gid, *[1] * 15)

    frames = m.getattr_mapper(lambda tag, fid, mask: frame(fid, mask))
    for h in range(90000, 90000 + 3 * MEMO_MAX):
        assert frames(3, h, h) == frame(65534 if h < 100000 else h - 100000, h)
    assert len(m.uids.memo) == len(m.gids.memo) == MEMO_MAX
    assert frames(3, 100005, 7) == frame(5, 7)  # past the memo: still right


def test_no_ranges_is_identity() -> None:
    t = IdTable([])
    assert (t.mapped, t.to_host(7), t.to_guest(ID_MAX)) == (False, 7, ID_MAX)
    assert IdMap.build() is None


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([(0, 1000, 10), (5, 2000, 10)],
         "--map-uid 0:1000:10 and --map-uid 5:2000:10 overlap on the guest side (ids 5..9)"),
        ([(0, 1000, 10), (100, 1009, 1)],
         "--map-uid 0:1000:10 and --map-uid 100:1009:1 overlap on the host side (ids 1009)"),
        ([(0, 0, 0)], "--map-uid 0:0:0: the count must be at least 1"),
        ([(ID_MAX, 0, 2)], "ids must lie in 0..4294967294"),
    ],
)
def test_bad_ranges_are_refused(ranges: list[tuple[int, int, int]], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        IdMap(uids=ranges)


OVERLAP = ["--map-gid", "0:100:10", "--map-gid", "20:105:1"]
WANT = "--map-gid 0:100:10 and --map-gid 20:105:1 overlap on the host side (ids 105)"


def test_the_flags_build_the_map() -> None:
    p = argparse.ArgumentParser()
    add_idmap_args(p)
    args = p.parse_args(["--map-uid", "0:100000:65536", "--map-uid=70000:5:1",
                         "--map-gid", "1:2:3", "--squash-ids", "7:8"])
    m = idmap_from_args(args)
    assert m is not None
    assert m.uids.ranges == ((0, 100000, 65536), (70000, 5, 1))
    assert (m.gids.ranges, m.squash) == (((1, 2, 3),), (7, 8))
    assert m.describe() == ("--map-uid 0:100000:65536 --map-uid 70000:5:1 --map-gid 1:2:3 "
                            "--squash-ids 7:8")
    assert idmap_from_args(p.parse_args([])) is None


def test_serve_refuses_an_overlap(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["serve", "/tmp", "--fd", "0", *OVERLAP])
    assert e.value.code == 2
    assert WANT in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--map-uid", "1:2"], ["--map-uid", "a:1:1"],
                                 ["--squash-ids", "1:-2"], ["--squash-ids", "4294967295:0"]])
def test_gofer_refuses_bad_syntax_in_one_line(bad: list[str]) -> None:
    with pytest.raises(daemon.DaemonError, match=f"argument {bad[0]}: "):
        daemon.build_parser().parse_args(["--bundle", "b", "--io-fds", "3", *bad])


def test_gofer_refuses_an_overlap_in_one_line() -> None:
    with pytest.raises(daemon.DaemonError, match=f"^{re.escape(f'argument --map-gid: {WANT}')}$"):
        daemon.build_parser().parse_args(["--bundle", "b", "--io-fds", "3", *OVERLAP])


def test_launch_api_refuses_an_overlap_before_spawning() -> None:
    with pytest.raises(launch.LaunchError, match=re.escape(WANT)):
        launch.start_gofer("/nonexistent-bundle", map_gids=[(0, 100, 10), (20, 105, 1)])
    assert launch.idmap_flags([(0, 1, 2)], [], (3, 4)) == ["--map-uid=0:1:2", "--squash-ids=3:4"]


def test_rgetattr_ids_are_where_the_mapper_replaces_them() -> None:
    """The mapper patches the uid and gid at a fixed place in the backend's Rgetattr frame:
    that place is the codec's."""
    from gofer9p.attach import _idmap

    frame = codec.RGETATTR.pack(160, 25, 7, 0, 0, 0, 0, 0o644, 1234, 5678, *[0] * 15)
    assert _idmap._RGETATTR_IDS.unpack_from(frame, _idmap._RGETATTR_IDS_AT) == (1234, 5678)
