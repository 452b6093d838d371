"""``python -m fuzz stateful|frames|decode|replay ...``: run one fuzzer, write a report.

Every run is bounded by ``--time`` seconds or ``--examples`` (whichever comes
first; the default is 60 seconds) and prints a one-line summary; the exit
status is 0 when the run found nothing, 1 when it found a crash, hang, leak
or broken invariant (each saved as a reproducer under
``fuzz/corpus/crashes/``), 2 on a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .common import CRASH_DIR, Report, replay
from .targets import ATTACH


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fuzz", description="Fuzz gofer9p: hostile 9P clients and the codec."
    )
    sub = p.add_subparsers(dest="fuzzer", required=True)

    def common(sp: argparse.ArgumentParser, *, live: bool = True) -> None:
        sp.add_argument(
            "--time",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop after this many seconds (default 60 if --examples is not given)",
        )
        sp.add_argument(
            "--examples",
            type=int,
            default=None,
            metavar="N",
            help="stop after N examples (stateful sequences, frames, decode inputs)",
        )
        sp.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
        sp.add_argument("--report", type=Path, default=None, help="write the JSON report here")
        sp.add_argument(
            "--crash-dir",
            type=Path,
            default=CRASH_DIR,
            help="where reproducers are saved (default fuzz/corpus/crashes)",
        )
        sp.add_argument(
            "--corpus",
            type=Path,
            default=None,
            metavar="DIR",
            help="persistent corpus directory, kept and grown across runs: crashes/ (one file "
            "per bucket, instead of --crash-dir), hypothesis/ (example database), decode/ "
            "(libFuzzer corpus), reports/",
        )
        if live:
            sp.add_argument(
                "--target",
                default="inproc",
                help="inproc (default) | serve | serve-fd | daemon | fault[:SEED[:RATE]] "
                "(in-process, syscalls failing on a schedule seeded by --seed) | unix:PATH",
            )
            sp.add_argument(
                "--attach",
                default="rw",
                choices=ATTACH,
                help="the attach point: read-write, read-only, --panic-on-write (daemon), or a "
                "regular file as the root (frames only: the other fuzzers work in a directory)",
            )
            sp.add_argument("--plant", default="", help=argparse.SUPPRESS)  # tests only
            sp.add_argument(
                "--timeout",
                type=float,
                default=5.0,
                help="seconds to wait for a reply before calling it a hang",
            )
            sp.add_argument(
                "--msize",
                type=int,
                default=1 << 20,
                help="server max msize for the targets we start",
            )
            sp.add_argument(
                "--fd-share",
                type=int,
                default=0,
                metavar="N",
                help="in-process targets: host fds each connection may hold (default: the "
                "server's); a small share (8) makes the server reclaim idle fids' fds and reopen "
                "them on use, all the time",
            )
            sp.add_argument(
                "--record",
                action="store_true",
                help="serve target: the server records its connections (gofer9p serve --record;"
                " splicing off), as a sandbox manager that keeps sessions runs it",
            )
            sp.add_argument(
                "--ignore-known",
                action="store_true",
                help="count failures matching an open bug in the crash corpus "
                "(status open) instead of stopping on them",
            )

    s = sub.add_parser("stateful", help="hypothesis state machine against a live server")
    common(s)
    s.add_argument("--steps", type=int, default=50, help="max steps per sequence")
    s.add_argument(
        "--no-shrink",
        action="store_true",
        help="report the first failing sequence as found (shrinking can take minutes)",
    )
    f = sub.add_parser("frames", help="malformed frames against a live server")
    common(f)
    f.add_argument("--no-shrink", action="store_true", help="do not minimize findings")
    pr = sub.add_parser(
        "pressure", help="resource attacks judged by the server's memory, fds and latency"
    )
    common(pr)
    pr.add_argument("--scenario", default=None, help="only this scenario (default: all, random)")
    pr.add_argument(
        "--latency",
        type=float,
        default=10.0,
        help="failure deadline (s) for another connection's round trip during a case",
    )
    pr.add_argument("--no-shrink", action="store_true", help="do not minimize findings")
    ra = sub.add_parser(
        "race", help="a host-side agent mutates the export under two clients; canaries outside"
    )
    common(ra)
    ra.add_argument("--no-shrink", action="store_true", help="do not minimize findings")
    cf = sub.add_parser(
        "config", help="attach points of every node kind and id maps, against a reference"
    )
    common(cf, live=False)
    d = sub.add_parser("decode", help="coverage-guided codec.decode (atheris, else hypothesis)")
    common(d, live=False)
    d.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    r = sub.add_parser(
        "replay",
        help="replay reproducers against a live server, or session recordings (.pcap) "
        "against a scratch export; exit 1 if any still fails",
    )
    r.add_argument("files", nargs="+", type=Path)
    r.add_argument("--target", default="inproc")
    r.add_argument("--attach", default="rw", choices=ATTACH)
    r.add_argument("--plant", default="", help=argparse.SUPPRESS)
    r.add_argument("--timeout", type=float, default=5.0)
    r.add_argument(
        "--export-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="session recordings (.pcap): the scratch export starts as a copy of DIR",
    )
    cv = sub.add_parser(
        "coverage", help="run each target for a budget under branch coverage; per-module report"
    )
    cv.add_argument(
        "--budget",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="seconds per target, split between the fuzzers (default 300)",
    )
    cv.add_argument(
        "--targets",
        default="inproc,serve",
        help="comma-separated targets (default inproc,serve; daemon: measured with seccomp "
        "in log mode)",
    )
    cv.add_argument(
        "--seed", type=int, default=1, help="seed of the first run; run i is seeded seed + i"
    )
    cv.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep coverage.json, an HTML report and the runs' findings (crashes/) here",
    )
    cv.add_argument("--json", type=Path, default=None, help="write the summary as JSON here")
    sh = sub.add_parser("show", help="print a reproducer's records, frames decoded")
    sh.add_argument("file", type=Path)
    sh.add_argument("--last", type=int, default=0, help="only the last N records")
    return p


def _show(args: argparse.Namespace) -> int:
    from gofer9p.protocol.codec import decode

    from .wire import MAGIC, Transcript, parse_expect

    data = args.file.read_bytes()
    if not data.startswith(MAGIC):
        print(f"raw decode input, {len(data)} bytes: {data.hex()}")
        return 0
    records = Transcript.from_bytes(data).records
    for op, payload in records[-args.last :] if args.last else records:
        if op == b"S":
            try:
                text = repr(decode(payload))
            except Exception as e:
                text = f"raw {payload[:80].hex()}{'...' if len(payload) > 80 else ''} ({e})"
            print(f"S {text[:300]}")
        elif op == b"R":
            tag, ttype, outcome, rdata = parse_expect(payload)
            want = {0: "any", 1: "success", 2: "Rlerror"}.get(outcome, "?")
            extra = f" data={rdata[:40]!r}" if rdata is not None else ""
            print(f"R expect reply tag={tag} to type={ttype} outcome={want}{extra}")
        else:
            print(
                {
                    b"N": "N new connection",
                    b"E": "E half-close, expect close",
                    b"X": "X expect server to close",
                    b"C": "C close",
                }.get(op, repr(op))
            )
    return 0


_REACH = {
    "rule_counts": "rules run",
    "mutations": "mutations",
    "cases_by_scenario": "cases",
    "most_connections_by_scenario": "most connections of one process",
    "agent_ops": "host agent operations",
    "faults_injected": "faults injected",
}
"""What each fuzzer reached, from its report's details, for the end-of-run summary."""


def _print_reach(details: dict[str, object]) -> None:
    """The summary's second part: restarts survived and what the run exercised (the decode
    engine's coverage edges; the other fuzzers' rules, mutations, cases and agent operations)."""
    print(f"restarts: {details.get('restarts', 0)}")
    if "coverage_edges" in details:
        print(f"coverage: {details['coverage_edges']} edges, {details.get('corpus_entries')} "
              f"corpus entries ({details.get('engine')})")
    for key, label in _REACH.items():
        counts = details.get(key)
        if isinstance(counts, dict) and counts:
            items = sorted(counts.items(), key=lambda kv: -kv[1])
            print(f"{label}: " + ", ".join(f"{k}={v}" for k, v in items))
        elif isinstance(counts, int):
            print(f"{label}: {counts}")


def _budget(args: argparse.Namespace) -> tuple[float | None, int | None]:
    if args.time is None and args.examples is None:
        return 60.0, None
    return args.time, args.examples


def _interrupt(*_: object) -> None:
    """SIGTERM: unwind like Ctrl-C (hypothesis would take SystemExit for a finding)."""
    from .common import STOP

    STOP.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so a spawned server is stopped too
        signal.signal(signal.SIGTERM, _interrupt)
    if args.fuzzer == "replay":
        return _replay(args)
    if args.fuzzer == "show":
        return _show(args)
    if args.fuzzer == "coverage":
        from .covrun import run as run_coverage

        run_coverage(
            args.budget,
            args.targets.split(","),
            seed=args.seed,
            keep=args.keep,
            json_out=args.json,
        )
        return 0
    if getattr(args, "attach", "rw") == "file" and args.fuzzer != "frames":
        print(f"--attach file: {args.fuzzer} needs a directory as the attach point; use frames")
        return 2
    if args.fuzzer == "stateful" and args.target.split(":")[0] == "fault":
        print("--target fault: the stateful model expects a healthy host; use frames, pressure "
              "or race")
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    time_budget, examples = _budget(args)
    report = Report(
        fuzzer=args.fuzzer,
        target=getattr(args, "target", "in-process" if args.fuzzer == "config" else "codec"),
        seed=seed,
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        time_budget_s=time_budget,
        examples_budget=examples,
    )
    started = time.monotonic()
    try:
        _run(args, report, seed, time_budget, examples)
    except KeyboardInterrupt:
        from .common import STOP

        STOP.set()
        report.notes.append("interrupted (Ctrl-C or SIGTERM): numbers are partial")
        report.duration_s = round(time.monotonic() - started, 2)
        report.write(args.report)
        print(report.summary() + " (interrupted)")
        return 130
    report.write(args.report)
    if args.corpus is not None:
        reports = args.corpus / "reports"
        reports.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        report.write(reports / f"{stamp}-{report.fuzzer}-{report.target.replace('/', '_')}.json")
    print(report.summary())
    _print_reach(report.details)
    by_bucket = report.details.get("findings_by_bucket", {})
    files = report.details.get("bucket_files", {})
    if by_bucket:
        print("findings by bucket:")
        for name, n in sorted(by_bucket.items(), key=lambda kv: -kv[1]):
            print(f"  {n:6d}  {name}" + (f"  -> {files[name]}" if name in files else ""))
    for bucket in (report.crashes, report.hangs, report.leaks, report.invariant_failures):
        for e in bucket:
            first = e["message"].split("\n")[0]
            where = f"\n    reproducer: {e['reproducer']}" if "reproducer" in e else ""
            print(f"  - {first}{where}")
    return 0 if report.ok else 1


_EXAMPLES_KW = {
    "stateful": "max_examples",
    "frames": "max_frames",
    "pressure": "max_cases",
    "race": "max_cases",
    "decode": "max_inputs",
    "config": "max_cases",
}
"""What each fuzzer's ``run`` calls its ``--examples`` budget (sequences, frames, cases, inputs)."""


def _run(
    args: argparse.Namespace,
    report: Report,
    seed: int,
    time_budget: float | None,
    examples: int | None,
) -> None:
    """Run the chosen fuzzer with the options every fuzzer takes, plus its own."""
    import importlib

    if args.corpus is not None:
        args.corpus.mkdir(parents=True, exist_ok=True)
        args.crash_dir = args.corpus / "crashes"
    kwargs: dict[str, object] = {
        "seed": seed,
        "time_budget": time_budget,
        _EXAMPLES_KW[args.fuzzer]: examples,
        "crash_dir": args.crash_dir,
    }
    if args.fuzzer == "decode":
        from .atheris_decode import run as run_decode

        run_decode(report, engine=args.engine, corpus_dir=args.corpus, **kwargs)  # type: ignore[arg-type]
        return
    if args.fuzzer == "config":
        from .config import run as run_config

        run_config(report, **kwargs)  # type: ignore[arg-type]
        return
    from .common import Known
    from .targets import make_target

    kwargs["known"] = Known.load() if args.ignore_known else Known()
    kwargs["shrink"] = not args.no_shrink
    if args.fuzzer == "pressure":
        kwargs.update(latency=args.latency, msize=args.msize, scenario=args.scenario)
    else:
        kwargs["timeout"] = args.timeout
    if args.fuzzer == "stateful":
        kwargs["steps"] = args.steps
        kwargs["database"] = args.corpus / "hypothesis" if args.corpus is not None else None
    run = importlib.import_module(f".{args.fuzzer}", __package__).run
    target = make_target(
        args.target, max_msize=args.msize, plant=args.plant, attach=args.attach, seed=seed,
        fd_share=args.fd_share, record=args.record,
    )
    report.target = getattr(target, "spec", report.target)  # fault:SEED:RATE, to replay with
    with target:
        try:
            run(target, report, **kwargs)
        finally:
            injected = getattr(target, "injected", None)
            if injected is not None:
                report.details["faults_injected"] = injected()


def _replay(args: argparse.Namespace) -> int:
    import json

    from .recorded import is_recording, replay_files
    from .targets import make_target
    from .wire import MAGIC

    if all(is_recording(p) for p in args.files):  # session recordings (fuzz/recorded.py)
        return replay_files(args.files, export_from=args.export_from, timeout=args.timeout)
    bad = 0
    with make_target(args.target, plant=args.plant, attach=args.attach) as target:
        for path in args.files:
            meta_path = path.with_suffix(".json")
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            if meta.get("fuzzer") == "pressure" and "case" in meta:
                from .pressure import replay_case

                problems = replay_case(meta_path, target)
            elif meta.get("fuzzer") == "race" and "case" in meta:
                from .race import replay_case as replay_race

                problems = replay_race(meta_path, target, timeout=args.timeout)
            elif meta.get("fuzzer") == "config" and "case" in meta:
                from .config import replay_case as replay_config

                problems = replay_config(meta_path)
            elif meta.get("fuzzer") == "stateful" and meta.get("blob"):
                from .stateful import replay_program

                problems = replay_program(meta, target, timeout=args.timeout)
                problems += replay(path.with_suffix(".bin"), target, timeout=args.timeout)
            elif path.exists() and not path.read_bytes().startswith(MAGIC):
                from .atheris_decode import replay_input

                problems = replay_input(path)  # a decode finding: the raw input
            else:
                problems = replay(path.with_suffix(".bin"), target, timeout=args.timeout)
            if problems:
                bad += 1
                print(f"FAIL {path}")
                for p in problems:
                    print(f"  - {p.splitlines()[0]}")
            else:
                print(f"ok   {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
