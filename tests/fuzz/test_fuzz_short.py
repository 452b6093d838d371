"""Short fuzz runs in the default test run, and every saved reproducer as a regression test.

Budget: well under 90 s for the three fuzzers together on the 2-core CI
machine (stateful ~60 short sequences, frames 3000 mutated frames, decode
20000 inputs with atheris or fewer with the hypothesis fallback).  Each run
must report zero crashes, hangs, leaks and broken invariants.  Failures that
match an *open* bug in ``fuzz/corpus/crashes`` (``"status": "open"`` in its
``.json``) are counted, not fatal, so one known bug does not hide new ones;
the replay test marks those reproducers xfail until their status says fixed.

The long variants (``-m fuzz_long``) run each fuzzer for 10 minutes against a
spawned ``gofer9p serve`` process, so the real process's fds and VmRSS are
watched.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz import atheris_decode, frames, stateful  # noqa: E402
from fuzz.common import CRASH_DIR, Known, Report, replay  # noqa: E402
from fuzz.targets import InprocTarget, ServeTarget, Target  # noqa: E402
from fuzz.wire import MAGIC  # noqa: E402


def _assert_clean(report: Report) -> None:
    details = json.dumps(
        {
            k: getattr(report, k)
            for k in ("crashes", "hangs", "leaks", "invariant_failures", "notes")
        },
        indent=1,
    )[:8000]
    assert report.ok, f"{report.summary()}\n{details}"
    assert report.failures() == 0, details


@pytest.fixture
def inproc() -> Iterator[Target]:
    with InprocTarget() as t:
        yield t


def test_stateful_short(inproc: Target, tmp_path: Path) -> None:
    report = Report(fuzzer="stateful", target="inproc", seed=1)
    stateful.run(inproc, report, seed=1, time_budget=None, max_examples=60, steps=25,
                 crash_dir=tmp_path, shrink=False, known=Known.load())
    _assert_clean(report)
    assert report.examples_run >= 20, report.summary()


def test_frames_short(inproc: Target, tmp_path: Path) -> None:
    report = Report(fuzzer="frames", target="inproc", seed=2)
    frames.run(inproc, report, seed=2, time_budget=None, max_frames=3000, crash_dir=tmp_path,
               known=Known.load())
    _assert_clean(report)
    assert report.details["type_sweep_done"], "every type byte 0-255 must be sent"
    assert report.details["flag_sweep_done"], "every flag bit of every request must be sent"
    assert report.fd_growth == 0, report.summary()


def test_decode_short(tmp_path: Path) -> None:
    report = Report(fuzzer="decode", target="codec", seed=3)
    n = 20000 if atheris_decode.atheris_available() else 3000
    atheris_decode.run(report, seed=3, time_budget=20, max_inputs=n, crash_dir=tmp_path)
    _assert_clean(report)
    assert report.examples_run >= min(n, 1000), report.summary()


def _reproducers() -> list[Path]:
    return sorted(CRASH_DIR.glob("*.bin"))


def _status(path: Path) -> str:
    meta = path.with_suffix(".json")
    try:
        return str(json.loads(meta.read_text()).get("status", "fixed"))
    except (OSError, ValueError):
        return "fixed"


@pytest.mark.parametrize("path", _reproducers(), ids=lambda p: p.stem)
def test_replay_reproducer(path: Path, inproc: Target) -> None:
    """Each saved failure, replayed: passes once its bug is fixed (status "fixed")."""
    if not path.read_bytes().startswith(MAGIC):
        problems = atheris_decode.replay_input(path)
    else:
        problems = replay(path, inproc)
    if _status(path) == "open":
        if problems:
            pytest.xfail(f"open bug, reported: {problems[0].splitlines()[0]}")
        return  # fixed in the server: set "status": "fixed" in its .json
    assert not problems, problems


def test_reproducer_format_roundtrip(tmp_path: Path) -> None:
    """The reproducer format keeps every record (a replay must send what was sent)."""
    from fuzz.wire import Transcript, save_reproducer

    t = Transcript()
    for op, payload in [(b"N", b""), (b"S", b"\x07\x00\x00\x00\x64\xff\xff"), (b"X", b"")]:
        t.add(op, payload)
    path = save_reproducer(tmp_path, "t", t, {"kind": "test"})
    assert Transcript.from_bytes(path.read_bytes()).records == t.records


# ------------------------------------------------------------------- long runs
@pytest.fixture
def served() -> Iterator[Target]:
    with ServeTarget() as t:
        yield t


@pytest.mark.fuzz_long
def test_stateful_long(served: Target, tmp_path: Path) -> None:
    report = Report(fuzzer="stateful", target="serve", seed=11)
    stateful.run(served, report, seed=11, time_budget=600, max_examples=None, steps=50,
                 crash_dir=CRASH_DIR, known=Known.load())
    _assert_clean(report)


@pytest.mark.fuzz_long
def test_frames_long(served: Target) -> None:
    report = Report(fuzzer="frames", target="serve", seed=12)
    frames.run(served, report, seed=12, time_budget=600, max_frames=None, crash_dir=CRASH_DIR,
               known=Known.load())
    _assert_clean(report)


@pytest.mark.fuzz_long
def test_decode_long() -> None:
    report = Report(fuzzer="decode", target="codec", seed=13)
    atheris_decode.run(report, seed=13, time_budget=600, max_inputs=None, crash_dir=CRASH_DIR)
    _assert_clean(report)
