"""The fuzz targets themselves: several connections of one confined daemon, the daemon measured
under coverage, and ``python -m fuzz`` handing every fuzzer its options.

The daemon tests need root (chroot, capabilities); each starts one or two daemons and stays
within a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fuzz import __main__ as fuzz_main  # noqa: E402
from fuzz import covrun  # noqa: E402
from fuzz.targets import DaemonTarget, Link  # noqa: E402
from fuzz.wire import OK, RawConn, Transcript, attach_requests  # noqa: E402
from gofer9p.protocol import messages as M  # noqa: E402

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the confined daemon needs root")


def _create(link: Link, name: bytes) -> None:
    """Attach at the export through ``link`` and create ``name`` there."""
    c = RawConn(link.sock, Transcript(), 10.0)
    c.handshake()
    for req in attach_requests(link.prefix):
        c.rpc(req, outcome=OK)
    c.rpc(M.Tlcreate(tag=0, fid=0, name=name, flags=0o2, mode=0o644, gid=0), outcome=OK)
    c.rpc(M.Tclunk(tag=0, fid=0), outcome=OK)


@root_only
def test_daemon_serves_several_connections_of_one_process() -> None:
    """open_pair: two connections of one daemon, returned once it is confined, that both reach
    the export (the second is the root's, walked down); open_more: the spare attach points of
    the same process."""
    with DaemonTarget() as t:
        assert t.export is not None
        a, b = t.open_pair()
        assert a.pid() == t.pid()
        # returned once confined: --timeout then times replies, not python's start
        status = Path(f"/proc/{a.pid()}/status").read_text()
        assert "\nSeccomp:\t2\n" in status, status
        assert b.prefix == (b"export",)
        _create(a, b"from-a")
        _create(b, b"from-b")
        assert sorted(os.listdir(t.export)) == ["from-a", "from-b"]
        more = t.open_more(DaemonTarget.SPARE + 3)
        assert len(more) == DaemonTarget.SPARE, "every spare attach point, and no more"
        for link in more:
            c = RawConn(link.sock, Transcript(), 10.0)
            c.handshake()
            for req in attach_requests(link.prefix):
                c.rpc(req, outcome=OK)
        assert t.open_more(1) == []
        for link in (a, b, *more):
            link.sock.close()
        assert a.finish(10.0) == []
        assert t.exit_counts == {0: 1}, t.exit_counts


@root_only
def test_daemon_under_coverage_hands_its_data_out_of_the_chroot(tmp_path: Path) -> None:
    """With COVERAGE_PROCESS_START (python -m fuzz coverage) the daemon is measured: its data,
    written inside the chroot at exit, lands in the run's data directory once the target
    stops."""
    pytest.importorskip("coverage")
    data = tmp_path / "data"
    data.mkdir()
    rc = tmp_path / "coveragerc"
    rc.write_text(
        f"[run]\nbranch = true\nparallel = true\nsource = {REPO / 'gofer9p'}\n"
        f"data_file = {data / '.coverage'}\n"
    )
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('COVERAGE_PROCESS_START'):\n"
        "    import coverage\n    coverage.process_startup()\n"
    )
    old = {k: os.environ.get(k) for k in ("COVERAGE_PROCESS_START", "PYTHONPATH")}
    os.environ["COVERAGE_PROCESS_START"] = str(rc)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), old["PYTHONPATH"] or ""])
    try:
        with DaemonTarget() as t:
            link = t.open()
            _create(link, b"measured")
            link.sock.close()
            assert link.finish(20.0) == []
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    files = list(data.glob(".coverage*"))
    assert files, "the daemon's coverage data did not come out of its chroot"
    import coverage

    cov = coverage.Coverage(data_file=str(tmp_path / ".coverage"))  # combines .coverage.*
    cov.combine([str(data)])
    measured = {Path(f).name for f in cov.get_data().measured_files()}
    assert {"daemon.py", "server.py", "session.py"} <= measured, sorted(measured)


@pytest.mark.parametrize(
    "argv",
    [
        ["stateful", "--examples", "2", "--steps", "5"],
        ["frames", "--examples", "40"],
        ["pressure", "--examples", "1", "--scenario", "idle"],
        ["race", "--examples", "1"],
        ["decode", "--examples", "200", "--engine", "hypothesis"],
    ],
    ids=lambda a: a[0],
)
def test_cli_runs_each_fuzzer(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m fuzz F``: each fuzzer gets its own options and the common ones, writes its
    report (a wrong keyword would raise TypeError here) and prints its summary: restarts and
    what it exercised."""
    report = tmp_path / "r.json"
    rc = fuzz_main.main([*argv, "--seed", "1", "--crash-dir", str(tmp_path), "--report", str(report)])
    data = json.loads(report.read_text())
    assert data["fuzzer"] == argv[0]
    assert data["examples_run"] >= 1
    assert rc == 0, data
    out = capsys.readouterr().out
    assert "restarts: 0" in out
    reached = {"stateful": "rules run: ", "frames": "mutations: ", "pressure": "cases: idle=1",
               "race": "host agent operations: "}.get(argv[0])
    assert reached is None or reached in out, out


def test_cli_corpus_dir_keeps_reports(tmp_path: Path) -> None:
    """``--corpus DIR``: crashes/ and reports/ live there, kept for the next run."""
    corpus = tmp_path / "corpus"
    out = subprocess.run(
        [sys.executable, "-m", "fuzz", "frames", "--examples", "20", "--seed", "1",
         "--corpus", str(corpus)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (rep,) = list((corpus / "reports").glob("*-frames-inproc.json"))
    assert json.loads(rep.read_text())["examples_run"] >= 20


def test_file_root_attach_point_is_fuzzed_clean(tmp_path: Path) -> None:
    """``--attach file``: a regular file is the attach point (a file bind mount); the frame
    fuzzer runs on it, and the warm-up re-opens the root so the attach point's per-mount
    handle fd (cached on the first re-open) is not called a leak."""
    from fuzz import frames
    from fuzz.common import Report
    from fuzz.targets import InprocTarget

    report = Report(fuzzer="frames", target="inproc", seed=3)
    with InprocTarget(file_root=True) as t:
        assert t.served is not None and t.served.is_file()
        frames.run(t, report, seed=3, time_budget=20, max_frames=600, crash_dir=tmp_path)
    assert report.ok, report.summary()
    assert report.fd_growth == 0, report.summary()


def test_serve_fd_race_case_has_two_live_clients(tmp_path: Path) -> None:
    """serve-fd runs one process per connection: a race case's two clients are two
    processes on one export (the second open killed the first, and every case of a race
    run on serve-fd was a false 'server closed the connection')."""
    from fuzz import race
    from fuzz.common import Report
    from fuzz.targets import ServeFdTarget

    with ServeFdTarget() as t:
        a, b = t.open_pair()
        assert a.pid() != b.pid()
        assert all(link.proc is not None and link.proc.poll() is None for link in t.current)
        a.sock.close()
        b.sock.close()
        assert a.finish(10) == [] and b.finish(10) == []
        report = Report(fuzzer="race", target="serve-fd", seed=5)
        race.run(t, report, seed=5, time_budget=None, max_cases=1, crash_dir=tmp_path)
    assert report.ok, report.summary()


def test_coverage_runs_each_get_their_own_recorded_seed(tmp_path: Path) -> None:
    """``python -m fuzz coverage``: run i of the plan is seeded seed + i (one seed for all
    replayed the same stream's opening in every run), and its report file is its own."""
    got = list(covrun.plan_commands(["inproc", "fault"], 100.0, 7, tmp_path, "r-{}.json"))
    n = len(covrun.PLAN) + 2 + len(covrun.FAULT_PLAN)  # (decode and config with the first)
    assert len(got) == n
    seeds = [s for *_, s, _ in got]
    assert seeds == list(range(7, 7 + n))
    for i, (*_, s, cmd) in enumerate(got):
        assert cmd[cmd.index("--seed") + 1] == str(s)
        assert cmd[cmd.index("--report") + 1] == f"r-{i}.json"
    assert [t for t, *_ in got].count("fault") == len(covrun.FAULT_PLAN)
