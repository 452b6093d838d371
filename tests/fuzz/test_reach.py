"""What the harness reaches on every run, whatever the load, and the oracles those parts carry.

``python -m fuzz coverage`` (fuzz/covrun.py) measures what the fuzzers reach in a time budget;
on a loaded machine random exploration reaches less, so the areas random frames seldom meet
are reached deterministically, early in each run: the configuration fuzzer (fuzz/config.py),
the frame fuzzer's surface sweep, the race fuzzer's 70-level chain (and its fd oracle), the
in-process targets' ``--fd-share``, the serve target's recording and fd limit, each pressure
scenario once first, a directory listing too big for the server's cache.  Each test here
shows one of them doing its job: finding a planted defect where it can find something, else
reaching the code it is there for (a spy on the attach layer's method).  Every run is bounded
by a count, not by time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz import config, frames, pressure, race  # noqa: E402
from fuzz.common import Report  # noqa: E402
from fuzz.targets import InprocTarget, ServeTarget, make_target  # noqa: E402


def _spy(monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> list[tuple[Any, ...]]:
    """Record the calls of ``cls.name`` (still calling it) with their results (or errors)."""
    calls: list[tuple[Any, ...]] = []
    orig = cls.__dict__[name]
    fn = orig.__func__ if isinstance(orig, staticmethod) else orig

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            r = fn(*args, **kwargs)
        except BaseException as e:
            calls.append((*args[1:], e))
            raise
        calls.append((*args[1:], r))
        return r

    monkeypatch.setattr(cls, name, staticmethod(spy) if isinstance(orig, staticmethod) else spy)
    return calls


# ------------------------------------------------------------------- config
@pytest.mark.parametrize("kind", config.KINDS)
def test_config_attach_kinds_pass_on_the_real_code(kind: str) -> None:
    for seed in range(2):
        case = {"kind": "attach", "node": kind, "readonly": seed == 1, "seed": seed}
        assert config.run_case(case) == []


def test_config_idmaps_pass_on_the_real_code() -> None:
    import random

    rng = random.Random(4)
    cases = [c for c in (config.random_case(rng) for _ in range(400)) if c["kind"] == "idmap"]
    assert len(cases) > 100
    assert any(not config._ref_ok(c["uids"]) for c in cases)  # refusals are exercised too
    for case in cases:
        assert config.run_case(case) == [], case


def test_config_finds_an_fd_left_by_a_refused_attach_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gofer9p.attach import point

    def careless_open(cls: Any, path: str, *, readonly: bool = False,
                      panic_on_write: bool = False) -> Any:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)  # the planted defect: not closed on refusal
        return cls(path, fd, readonly=readonly, panic_on_write=panic_on_write)

    monkeypatch.setattr(point.AttachPoint, "open", classmethod(careless_open))
    problems = config.run_case({"kind": "attach", "node": "fifo", "readonly": False, "seed": 1})
    assert problems and problems[0].startswith("leak: 1 fds left"), problems


def test_config_finds_a_wrong_id_translation_and_a_missed_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gofer9p.attach import _idmap

    good = {"kind": "idmap", "uids": [[1000, 2000, 10]], "gids": [], "squash": None, "seed": 1}
    to_host = _idmap.IdTable.to_host
    monkeypatch.setattr(_idmap.IdTable, "to_host", lambda self, g: to_host(self, g - 1))
    assert any("guest id" in p for p in config.run_case(good))
    monkeypatch.undo()
    overlap = {"kind": "idmap", "uids": [[0, 0, 10], [5, 100, 10]], "gids": [], "squash": None,
               "seed": 1}
    assert config.run_case(overlap) == []
    monkeypatch.setattr(_idmap, "pairwise", lambda rs: [])  # the overlap check planted away
    assert config.run_case(overlap) == ["invariant: IdMap took ranges the reference refuses"]


def test_config_run_saves_and_replays_a_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gofer9p.attach import _idmap

    to_guest = _idmap.IdTable.to_guest
    monkeypatch.setattr(_idmap.IdTable, "to_guest", lambda self, h: to_guest(self, h) + 1)
    report = Report(fuzzer="config", target="in-process", seed=3)
    config.run(report, seed=3, time_budget=None, max_cases=40, crash_dir=tmp_path)
    assert report.invariant_failures, report.summary()
    (meta,) = tmp_path.glob("config-*.json")
    assert config.replay_case(meta)
    monkeypatch.undo()
    assert config.replay_case(meta) == []


# -------------------------------------------------------------------- race
@pytest.fixture
def deepleak() -> Iterator[InprocTarget]:
    with InprocTarget(plant="deepleak") as t:
        yield t


def test_race_fd_oracle_finds_an_fd_left_70_levels_down(deepleak: InprocTarget) -> None:
    out = race.run_case(deepleak, 1, 20)
    assert any(p.startswith("leak: server holds") for p in out.problems), out.problems


def test_race_case_is_clean_without_the_defect() -> None:
    with InprocTarget() as t:
        for seed in range(2):
            assert race.run_case(t, seed, 20).problems == []


def test_race_with_a_small_fd_share_reopens_reclaimed_fids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gofer9p.attach._fids import FidTable

    revived = _spy(monkeypatch, FidTable, "_revive")
    with make_target("inproc", fd_share=8) as t:
        assert race.run_case(t, 2, 100).problems == []
    assert revived


def test_fd_share_and_record_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(ValueError, match="--fd-share"):
        make_target("serve", fd_share=8)
    with pytest.raises(ValueError, match="--record"):
        make_target("inproc", record=True)


# ------------------------------------------------------------------ frames
def test_frames_surface_sweep_reaches_its_areas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gofer9p.attach._attrs import Attrs
    from gofer9p.attach._locks import Locks
    from gofer9p.attach._xattrs import Xattrs

    kills = _spy(monkeypatch, Attrs, "_kill_privs")
    commits = _spy(monkeypatch, Xattrs, "_xattr_commit")
    tracks = _spy(monkeypatch, Locks, "_track_ranges")
    groups = len(frames.flag_sweep()) + len(frames.surface_sweep())
    report = Report(fuzzer="frames", target="inproc", seed=1)
    with InprocTarget() as t:
        frames.run(t, report, seed=1, time_budget=None, max_frames=256 + groups,
                   crash_dir=tmp_path)
    assert report.ok, report.summary()
    assert report.details["flag_sweep_done"]
    assert kills and commits
    assert any(isinstance(c[-1], OSError) for c in tracks)  # 1,100 ranges: ENOLCK


# ---------------------------------------------------------------- pressure
def test_pressure_runs_every_scenario_once_first(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    dirs: list[str] = []

    def judge(target: Any, case: pressure.Case, **kw: Any) -> pressure.Outcome:
        seen.append(case.scenario)
        if case.scenario == "bigdir":
            dirs.append(case.params["dir"])
        return pressure.Outcome()

    monkeypatch.setattr(pressure, "judge_case", judge)
    monkeypatch.setattr(pressure, "_fresh", lambda target: None)
    report = Report(fuzzer="pressure", target="inproc", seed=9)
    pressure.run(InprocTarget(), report, seed=9, time_budget=None,
                 max_cases=len(pressure.FIRST) + 3, crash_dir=None)
    assert seen[: len(pressure.FIRST)] == list(pressure.FIRST)
    assert set(pressure.FIRST) == set(pressure.SCENARIOS)
    assert dirs[:2] == ["pz-big", "pz-huge"]


def test_pressure_contend_case_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    from gofer9p.attach._io import FileIO

    background = _spy(monkeypatch, FileIO, "write")  # (FIFO writes go to worker threads)
    with InprocTarget() as t:
        pressure._host_setup(t)
        pressure._fresh(t)
        out = pressure.judge_case(t, pressure.Case("contend", 8, 1, {"reads": 12}), latency=60.0)
    assert out.problems == []
    assert background


def test_pressure_bigdir_reads_a_listing_too_big_for_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gofer9p.attach._dircache import DirCache

    built = _spy(monkeypatch, DirCache, "_build")
    case = pressure.Case("bigdir", 1, 3, {"count": 65000, "dir": "pz-huge"})
    with InprocTarget() as t:
        pressure._host_setup(t)
        time.sleep(1.1)  # the cache takes a directory unchanged for a second (SETTLE_NS)
        out = pressure.judge_case(t, case, latency=60.0)
    assert out.problems == []
    assert built and all(r is None for *_, r in built)  # too big: never kept


# ------------------------------------------------------------------- serve
def test_serve_target_records_and_raises_a_shell_fd_limit() -> None:
    from fuzz.common import liveness

    with ServeTarget(record=True) as t:
        liveness(t)
        pid = t.pid()
        assert pid is not None
        limits = Path(f"/proc/{pid}/limits").read_text()
        soft = next(ln.split()[3] for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert int(soft) > 1024  # started at 1024: the server raised it
        assert t._tmp is not None
        assert (t._tmp / "session.pcap").stat().st_size > 0
