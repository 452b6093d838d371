"""``python -m fuzz coverage --budget SECONDS``: what the fuzzers reach, server side included.

Each target is run for ``--budget`` seconds, split between the fuzzers (stateful, frames,
pressure, race, the stateful machine on a read-only attach point, and frames on a regular file
served as the attach point), every fuzzer in its own
process under coverage.py with branch coverage.  Processes the fuzzers spawn (``gofer9p serve``)
are measured too: a ``sitecustomize`` on their ``PYTHONPATH`` calls
``coverage.process_startup()`` when ``COVERAGE_PROCESS_START`` names the run's rc file, and
``sigterm = true`` saves the data of a server stopped with SIGTERM.  The codec fuzzer (decode)
and the configuration fuzzer (config: attach points and id maps, in-process) run once, for a
share of the first target's budget.

The confined daemon is measured too: it starts coverage before it chroots (the same
``sitecustomize``), and writes its data when it exits, inside its chroot, where the target made
the data directory's path inside the bundle's rootfs (``DaemonTarget._collect`` moves the files
out).  Under coverage the daemon's seccomp filter is in **log** mode, not kill: coverage's own
writes at exit are not on the whitelist.  So a daemon run under ``coverage`` measures, it does
not look for whitelist gaps; run ``--target daemon`` without coverage for those.

Prints lines and branches per module of ``protocol/``, ``server.py``, ``connection.py`` and
``attach/``, the combined figure of the server (``server.py``, the trio layer, with
``connection.py``, its sans-IO core) and ``attach/`` (the issue's goal: >= 95% lines, >= 85%
branches with a 30-minute budget), and the functions with the most lines never run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "gofer9p"

PLAN: list[tuple[str, list[str], float]] = [
    ("stateful", [], 0.25),
    ("frames", [], 0.15),
    ("pressure", [], 0.15),
    ("race", [], 0.15),
    ("race", ["--fd-share", "8"], 0.1),
    ("stateful", ["--attach", "ro", "--record"], 0.1),
    ("frames", ["--attach", "file"], 0.1),
]
"""(fuzzer, extra flags, share of a target's budget).  Flags a target does not take are
dropped (:func:`_flags`): the daemon has no file root (its share goes to the frames fuzzer
on its directory export), a read-only daemon cannot write its coverage data (its root is
read-only: that share goes to the stateful machine on its read-write export), only the
in-process targets take ``--fd-share`` (idle fids' fds reclaimed and reopened all the time)
and only ``serve`` ``--record``."""

FAULT_PLAN: list[tuple[str, list[str], float]] = [
    ("frames", [], 0.5),
    ("pressure", [], 0.2),
    ("race", [], 0.2),
    ("race", ["--fd-share", "8"], 0.1),
]
"""The ``fault`` target's plan: the stateful model expects a healthy host."""

LATENCY_UNDER_COVERAGE = 60.0
"""The pressure fuzzer's probe deadline under coverage (seconds; 10 without)."""

GOAL = "server.py + connection.py + attach/"
"""The group the coverage goal is about (>= 95% lines, >= 85% branches)."""


def _flags(target: str, extra: list[str]) -> list[str]:
    """``extra`` without the flags ``target`` does not take (see :data:`PLAN`)."""
    kind = target.split(":")[0]
    if kind == "daemon" and ("file" in extra or "ro" in extra):
        return []
    out: list[str] = []
    i = 0
    while i < len(extra):
        flag = extra[i]
        if flag == "--fd-share" and kind not in ("inproc", "fault"):
            i += 2
            continue
        if flag == "--record" and kind != "serve":
            i += 1
            continue
        out.append(flag)
        i += 1
    return out


def _rc(tmp: Path) -> Path:
    rc = tmp / "coveragerc"
    rc.write_text(
        "[run]\n"
        "branch = true\n"
        "parallel = true\n"
        "sigterm = true\n"
        f"source = {PKG}\n"
        f"data_file = {tmp / 'data' / '.coverage'}\n"
        "omit =\n"
        f"    {PKG}/testing/*\n"
    )
    (tmp / "data").mkdir()
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('COVERAGE_PROCESS_START'):\n"
        "    import coverage\n"
        "    coverage.process_startup()\n"
    )
    return rc


def plan_commands(
    targets: list[str], budget: float, seed: int, crash_dir: Path, report: str
) -> Iterator[tuple[str, str, list[str], float, int, list[str]]]:
    """Every run of the plan, in order: ``(target, fuzzer, flags, seconds, seed, command)``.

    Run ``i`` is seeded ``seed + i``: one seed for every run replayed one random stream's
    opening in each of them (a second ``race`` or ``frames`` entry retried what the first
    had tried); the seed of each run is recorded, so any run can be repeated alone.
    ``report`` is a path with ``{}`` for the run's index."""
    i = 0
    for ti, target in enumerate(targets):
        plan = list(FAULT_PLAN if target.split(":")[0] == "fault" else PLAN)
        if ti == 0:
            plan += [("decode", [], 0.05), ("config", [], 0.02)]
        for fuzzer, extra, share in plan:
            extra = _flags(target, extra)
            secs = max(5.0, budget * share)
            cmd = [sys.executable, "-m", "fuzz", fuzzer, "--time", f"{secs:.0f}"]
            cmd += ["--seed", str(seed + i), "--crash-dir", str(crash_dir)]
            cmd += ["--report", report.format(i)]
            if fuzzer not in ("decode", "config"):
                cmd += ["--target", target, "--ignore-known", *extra]
            if fuzzer == "pressure":
                # tracing slows the server several-fold: the latency oracle's failure
                # deadline is scaled with it (10 s -> LATENCY_UNDER_COVERAGE)
                cmd += ["--latency", str(LATENCY_UNDER_COVERAGE)]
            yield target, fuzzer, extra, secs, seed + i, cmd
            i += 1


def run(
    budget: float,
    targets: list[str],
    *,
    seed: int,
    keep: Path | None = None,
    json_out: Path | None = None,
) -> dict[str, Any]:
    """Run the plan for every target; return (and print) the per-module summary."""
    try:
        import coverage
    except ImportError:
        raise SystemExit(
            "coverage is not installed: pip install coverage (the dev extras)"
        ) from None
    tmp = Path(tempfile.mkdtemp(prefix="gofer9p-fuzzcov-"))
    rc = _rc(tmp)
    env = dict(os.environ)
    env["COVERAGE_PROCESS_START"] = str(rc)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp / "site"), str(REPO), env.get("PYTHONPATH", "")])
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for target, fuzzer, extra, secs, run_seed, cmd in plan_commands(
            targets, budget, seed, tmp / "crashes", str(tmp / "report-{}.json")
        ):
            print(f"[coverage] {target}: {' '.join(cmd[3:6])} {' '.join(extra)}", flush=True)
            t0 = time.monotonic()
            proc = subprocess.run(
                cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=secs * 4 + 300
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{fuzzer} on ")]
            summary = lines[-1] if lines else f"(no summary; exit {proc.returncode})"
            runs.append(
                {
                    "target": target,
                    "fuzzer": fuzzer,
                    "flags": extra,
                    "seed": run_seed,
                    "seconds": round(time.monotonic() - t0, 1),
                    "exit": proc.returncode,
                    "summary": summary,
                }
            )
            print(f"[coverage]   {summary}", flush=True)
        cov = coverage.Coverage(config_file=str(rc), data_file=str(tmp / "data" / ".coverage"))
        cov.combine([str(tmp / "data")])
        cov.save()
        out_json = tmp / "coverage.json"
        cov.json_report(outfile=str(out_json))
        data = json.loads(out_json.read_text())
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(out_json, keep / "coverage.json")
            if (tmp / "crashes").is_dir():  # what the runs found, to read and replay
                shutil.copytree(tmp / "crashes", keep / "crashes", dirs_exist_ok=True)
            cov.html_report(directory=str(keep / "html"))
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    result = summarize(data)
    result["budget_per_target_s"] = budget
    result["targets"] = targets
    result["runs"] = runs
    result["wall_s"] = round(time.monotonic() - started, 1)
    _print(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _rel(path: str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(PKG.resolve()))
    except ValueError:
        return path


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Per module and per group (protocol/, server.py, attach/, server.py + attach/)."""
    files = {_rel(k): v for k, v in data["files"].items()}
    groups = {
        "protocol/": [f for f in files if f.startswith("protocol/")],
        "server.py": [f for f in files if f == "server.py"],
        "connection.py": [f for f in files if f == "connection.py"],
        "attach/": [f for f in files if f.startswith("attach/")],
    }
    groups["server.py + attach/"] = groups["server.py"] + groups["attach/"]
    # the goal: the server was split into server.py (trio) and connection.py (sans-IO)
    groups[GOAL] = groups["server.py"] + groups["connection.py"] + groups["attach/"]

    def pct(files_: list[str]) -> dict[str, Any]:
        s = sum(files[f]["summary"]["num_statements"] for f in files_)
        c = sum(files[f]["summary"]["covered_lines"] for f in files_)
        b = sum(files[f]["summary"].get("num_branches", 0) for f in files_)
        cb = sum(files[f]["summary"].get("covered_branches", 0) for f in files_)
        return {
            "lines": s,
            "lines_covered": c,
            "lines_pct": round(100 * c / s, 1) if s else 100.0,
            "branches": b,
            "branches_covered": cb,
            "branches_pct": round(100 * cb / b, 1) if b else 100.0,
        }

    modules = {f: pct([f]) for f in sorted(files) if any(f in g for g in groups.values())}
    gaps: list[tuple[int, str]] = []
    for f in groups[GOAL] + groups["protocol/"]:
        for name, fn in files[f].get("functions", {}).items():
            missing = len(fn.get("missing_lines", []))
            if missing and name:
                lines = fn["missing_lines"]
                gaps.append((missing, f"{f}:{name} ({missing} lines never run, from {lines[0]})"))
    gaps.sort(reverse=True)
    return {
        "groups": {g: pct(fs) for g, fs in groups.items()},
        "modules": modules,
        "biggest_gaps": [g for _, g in gaps[:20]],
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"\ncoverage: budget {result['budget_per_target_s']:.0f}s per target "
        f"({', '.join(result['targets'])}), {result['wall_s']:.0f}s wall"
    )
    print(f"{'module':34s} {'lines':>14s} {'branches':>14s}")
    for name, m in result["modules"].items():
        print(
            f"{name:34s} {m['lines_pct']:6.1f}% {m['lines_covered']:>3d}/{m['lines']:<4d} "
            f"{m['branches_pct']:6.1f}% {m['branches_covered']:>3d}/{m['branches']:<4d}"
        )
    print()
    for name, m in result["groups"].items():
        print(
            f"{name:34s} {m['lines_pct']:6.1f}% {m['lines_covered']:>3d}/{m['lines']:<4d} "
            f"{m['branches_pct']:6.1f}% {m['branches_covered']:>3d}/{m['branches']:<4d}"
        )
    print("\nbiggest uncovered areas:")
    for g in result["biggest_gaps"]:
        print(f"  {g}")
