"""What every live-server fuzzer shares: the report, liveness, leak checks, replay.

The report is the contract with the people who run the fuzzers (README.md
explains each field); ``ok`` is false as soon as one crash, hang or leak was
seen, and the tests assert on exactly these fields.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gofer9p.protocol import messages as M
from gofer9p.protocol.constants import NOFID

from .targets import Target, fd_count, fd_targets, rss_kb
from .wire import (
    ANY,
    Closed,
    Failure,
    RawConn,
    Transcript,
    check_reply,
    parse_expect,
    save_reproducer,
)

CORPUS = Path(__file__).resolve().parent / "corpus"

STOP = threading.Event()
"""Set on Ctrl-C/SIGTERM: fuzzers stop without judging the interrupted case."""
CRASH_DIR = CORPUS / "crashes"


@dataclass
class Report:
    """The JSON report of one fuzz run (see README.md, "The report")."""

    fuzzer: str
    target: str
    seed: int | None = None
    started: str = ""
    duration_s: float = 0.0
    time_budget_s: float | None = None
    examples_budget: int | None = None
    frames_sent: int = 0
    examples_run: int = 0
    connections: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    leaks: list[dict[str, Any]] = field(default_factory=list)
    invariant_failures: list[dict[str, Any]] = field(default_factory=list)
    fd_baseline: int | None = None
    fd_final: int | None = None
    fd_growth: int | None = None
    rss_baseline_kb: int | None = None
    rss_final_kb: int | None = None
    rss_peak_kb: int | None = None
    rss_growth_kb: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ok: bool = True

    def add_failure(self, kind: str, message: str, reproducer: Path | None = None) -> None:
        """File a failure under crashes/hangs/leaks/invariant_failures; clears ``ok``."""
        entry: dict[str, Any] = {"message": message[:4000]}
        if reproducer is not None:
            entry["reproducer"] = str(reproducer)
        bucket = {
            "crash": self.crashes,
            "hang": self.hangs,
            "leak": self.leaks,
        }.get(kind, self.invariant_failures)
        # the same bug tends to repeat: keep the first few of each message
        same = [e for e in bucket if e["message"].split("\n")[0] == message.split("\n")[0]]
        if len(same) < 3 and len(bucket) < 200:
            bucket.append(entry)
        self.ok = False

    def failures(self) -> int:
        return len(self.crashes) + len(self.hangs) + len(self.leaks) + len(self.invariant_failures)

    def write(self, path: Path | str | None) -> None:
        if path:
            Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    def summary(self) -> str:
        return (
            f"{self.fuzzer} on {self.target}: {self.examples_run} examples, "
            f"{self.frames_sent} frames, {self.connections} connections in "
            f"{self.duration_s:.1f}s; crashes={len(self.crashes)} hangs={len(self.hangs)} "
            f"leaks={len(self.leaks)} invariant={len(self.invariant_failures)} "
            f"fd_growth={self.fd_growth} rss_growth_kb={self.rss_growth_kb} "
            f"-> {'OK' if self.ok else 'FAILED'}"
        )


class Known:
    """Signatures of open (known, not yet fixed) bugs, read from the crash corpus.

    A reproducer's ``.json`` with ``"status": "open"`` and a ``"signature"``
    regex marks a bug that is reported and waiting for a fix.  With
    ``--ignore-known`` (and in the short test run) a failure matching one is
    counted under ``details.known_open_bugs`` instead of stopping the run, so
    one open bug does not hide new ones.  Once fixed, set ``"status":
    "fixed"``: the reproducer then stays as a plain regression test.
    """

    def __init__(self, sigs: list[tuple[str, re.Pattern[str]]] | None = None) -> None:
        self.sigs = sigs or []

    @classmethod
    def load(cls, crash_dir: Path = CRASH_DIR) -> Known:
        sigs = []
        for meta_path in sorted(crash_dir.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("status") == "open" and meta.get("signature"):
                sigs.append((meta_path.stem, re.compile(meta["signature"])))
        return cls(sigs)

    def match(self, report: Report, message: str) -> bool:
        """Whether ``message`` is a known open bug (counted in the report)."""
        for name, rx in self.sigs:
            if rx.search(message):
                counts = report.details.setdefault("known_open_bugs", {})
                counts[name] = counts.get(name, 0) + 1
                return True
        return False


def run_deadline(start: float, time_budget: float | None, count_budget: int | None) -> float | None:
    """The monotonic deadline of a fuzz run that started at ``start``: every run is bounded,
    so with neither a time nor a count budget it gets 60 s; None when only the count bounds it."""
    if time_budget is None and count_budget is None:
        time_budget = 60.0
    return start + time_budget if time_budget else None


def budget_spent(deadline: float | None, done: int, count_budget: int | None) -> bool:
    """Whether a run's time (``deadline``) or count (``done`` of ``count_budget``) is used up."""
    if deadline is not None and time.monotonic() >= deadline:
        return True
    return count_budget is not None and done >= count_budget


def split_problem(problem: str) -> tuple[str, str]:
    """``"kind: message"`` -> (kind, message); unknown kinds are crashes."""
    kind, _, msg = problem.partition(": ")
    if kind in ("crash", "hang", "leak", "invariant"):
        return kind, msg
    return "crash", problem


class Health:
    """Watches the server process's fds and RSS across a run.

    The baseline is taken after a warm-up connection (lazy imports, thread
    pools and caches are not leaks); ``check`` is called at quiescent points
    (no connection open) and waits up to ``settle`` seconds for the fd count
    to come back, since the server notices our EOF asynchronously.
    """

    def __init__(self, target: Target, report: Report, *, rss_bound_kb: int = 128 * 1024) -> None:
        self.target = target
        self.report = report
        self.rss_bound_kb = rss_bound_kb
        self.fd_base: int | None = None
        self.fd_names: dict[int, str] = {}
        self.rss_base: int | None = None

    def baseline(self) -> None:
        pid = self.target.pid()
        if pid is None:
            return
        self.fd_base = fd_count(pid)
        self.fd_names = fd_targets(pid)
        self.rss_base = rss_kb(pid)
        if self.report.fd_baseline is None:
            # the report keeps the first baseline: growth is over the whole run,
            # while leak checks compare with the latest (each leak reported once)
            self.report.fd_baseline = self.fd_base
            self.report.rss_baseline_kb = self.rss_base
            self.report.rss_peak_kb = self.rss_base

    def fds_settled(self, want: int | None, settle: float = 3.0) -> int | None:
        pid = self.target.pid()
        if pid is None or want is None:
            return None
        deadline = time.monotonic() + settle
        while True:
            n = fd_count(pid)
            if n is None or n <= want or time.monotonic() > deadline:
                return n
            time.sleep(0.01)

    def check(self, *, final: bool = False) -> list[str]:
        """Problems: fd count above baseline, RSS grown beyond the bound."""
        pid = self.target.pid()
        if pid is None or self.fd_base is None:
            return []
        out: list[str] = []
        n = self.fds_settled(self.fd_base)
        rss = rss_kb(pid)
        if rss is not None:
            peak = self.report.rss_peak_kb or 0
            self.report.rss_peak_kb = max(peak, rss)
        if final:
            self.report.fd_final = n
            self.report.rss_final_kb = rss
            if n is not None and self.report.fd_baseline is not None:
                self.report.fd_growth = n - self.report.fd_baseline
            if rss is not None and self.report.rss_baseline_kb is not None:
                self.report.rss_growth_kb = rss - self.report.rss_baseline_kb
        if n is not None and n > self.fd_base:
            now = fd_targets(pid)
            new = sorted(f"{fd}->{t}" for fd, t in now.items() if self.fd_names.get(fd) != t)
            out.append(
                f"leak: server holds {n} fds at rest, baseline {self.fd_base}; "
                f"new: {', '.join(new[:20])}"
            )
        if (
            rss is not None
            and self.rss_base is not None
            and rss - self.rss_base > self.rss_bound_kb
        ):
            out.append(
                f"leak: server VmRSS grew {rss - self.rss_base} KiB "
                f"(bound {self.rss_bound_kb} KiB): {self.rss_base} -> {rss}"
            )
        return out


def settle_fds(
    target: Target, base: int | None, settle: float = 5.0, before: dict[int, str] | None = None
) -> str | None:
    """A leak problem if the server's fd count does not come back to ``base`` (taken before a
    case's connections) within ``settle`` seconds after they closed; None if it does or
    cannot be told (one process per connection).  ``before``: the fds' targets when ``base``
    was taken, so that the problem names the fds that are new, not only the last names."""
    pid = target.pid()
    if pid is None or base is None:
        return None
    deadline = time.monotonic() + settle
    n = fd_count(pid)
    while n is not None and n > base and time.monotonic() < deadline:
        time.sleep(0.05)
        n = fd_count(pid)
    if n is not None and n > base:
        now = fd_targets(pid)
        if before is not None:
            new = sorted(f"{fd}->{t}" for fd, t in now.items() if before.get(fd) != t)
            what = f"new: {', '.join(new[:20])}"
        else:
            what = f"open: {', '.join(sorted(set(now.values()))[-12:])}"
        return f"leak: server holds {n} fds after the case's connections closed, {base} before; {what}"
    return None


def liveness(
    target: Target,
    *,
    timeout: float = 5.0,
    transcript: Transcript | None = None,
    exercise: bool = False,
) -> None:
    """A fresh connection must still work: version, attach, walk, getattr, clunk, EOF.

    Raises :class:`Failure`.  Used after every connection a fuzzer broke, and
    (with ``exercise``) as the warm-up before a leak baseline is taken: it
    then also creates, re-opens and removes a file, so that caches the
    server fills on first use are not counted as leaks.
    """
    t = transcript or Transcript()
    try:
        link = target.open_quiet()
    except OSError as e:
        raise Failure("crash", f"liveness: cannot connect to the server: {e}") from None
    c = RawConn(link.sock, t, timeout)
    try:
        c.handshake(65536)
        root = 0xF0F0
        c.rpc(
            M.Tattach(tag=0, fid=root, afid=NOFID, uname=b"root", aname=b"", n_uname=0),
            outcome=1,
        )
        c.rpc(M.Twalk(tag=0, fid=root, newfid=root + 1, wnames=[]), outcome=1)
        c.rpc(M.Tgetattr(tag=0, fid=root + 1, request_mask=0x7FF), outcome=1)
        c.rpc(M.Tclunk(tag=0, fid=root + 1), outcome=1)
        if exercise:
            # the root opened once: a file root is re-opened by handle (next comment)
            c.rpc(M.Twalk(tag=0, fid=root, newfid=root + 4, wnames=[]), outcome=1)
            c.rpc(M.Tlopen(tag=0, fid=root + 4, flags=0), outcome=1)
            c.rpc(M.Tclunk(tag=0, fid=root + 4), outcome=1)
        if exercise and not getattr(target, "readonly", False):
            # re-open a file by handle once: the attach point caches one fd per
            # mount for open_by_handle_at on first use (bounded, not a leak),
            # and a baseline taken before that would call it one
            name = f"fz-live-{os.getpid()}".encode()
            c.rpc(M.Twalk(tag=0, fid=root, newfid=root + 2, wnames=[]), outcome=1)
            r = c.rpc(M.Tlcreate(tag=0, fid=root + 2, name=name, flags=2, mode=0o600, gid=0))
            c.rpc(M.Tclunk(tag=0, fid=root + 2), outcome=1)
            if isinstance(r, M.Rlcreate):
                c.rpc(M.Twalk(tag=0, fid=root, newfid=root + 3, wnames=[name]), outcome=1)
                c.rpc(M.Tlopen(tag=0, fid=root + 3, flags=0), outcome=1)
                c.rpc(M.Tclunk(tag=0, fid=root + 3), outcome=1)
                c.rpc(M.Tunlinkat(tag=0, dirfid=root, name=name, flags=0), outcome=1)
        c.rpc(M.Tclunk(tag=0, fid=root), outcome=1)
        rest = c.expect_close(half_close=True)
        if rest:
            raise Failure("invariant", f"liveness: {len(rest)} unexpected frames before close")
    except Failure as f:
        raise Failure(f.kind, "liveness: " + f.message) from None
    finally:
        c.sock.close()
    for p in link.finish(timeout):
        kind, msg = split_problem(p)
        raise Failure(kind, "liveness: " + msg)


def replay(path: Path, target: Target, *, timeout: float = 5.0) -> list[str]:
    """Replay a reproducer against ``target``; return the problems seen ([] = passes).

    Checks every expectation recorded in the file (replies with the recorded
    tag/type/outcome/data, closes), that the server did not crash, that a
    fresh connection still works, and that fds return to the baseline.
    """
    return replay_transcript(Transcript.from_bytes(path.read_bytes()), target, timeout=timeout)


def replay_transcript(t: Transcript, target: Target, *, timeout: float = 5.0) -> list[str]:
    """:func:`replay` of a transcript in memory (the minimizer's test)."""
    problems: list[str] = []
    target.problems()  # what happened before this replay is not its result
    if not target.per_connection_process:
        target.reset_export()  # the transcript expects the empty export it started on
    try:
        liveness(target, timeout=timeout, exercise=True)  # warm-up before the baseline
    except Failure as f:
        return [f"{f.kind}: server failed the warm-up before the replay: {f.message}"]
    pid = target.pid()
    base = fd_count(pid) if pid is not None and not target.per_connection_process else None
    conn: RawConn | None = None
    link = None
    scratch = Transcript()

    def end_conn() -> None:
        nonlocal conn, link
        if conn is not None and link is not None:
            conn.sock.close()
            for p in link.finish(timeout):
                problems.append(p)
        conn = None
        link = None

    try:
        for op, payload in t.records:
            if op == b"N":
                end_conn()
                link = target.open()
                conn = RawConn(link.sock, scratch, timeout, faults=link.faults)
                continue
            if conn is None:
                raise Failure("invariant", f"reproducer record {op!r} before any N record")
            if op == b"S":
                conn.send(payload)
            elif op == b"R":
                tag, ttype, outcome, data = parse_expect(payload)
                frame = conn.recv_frame()
                reply = check_reply(
                    frame, tag=tag, ttype=ttype, msize=conn.msize or None,
                    outcome=conn.expected(outcome),
                )
                if isinstance(reply, M.Rversion) and reply.version == b"9P2000.L":
                    conn.msize = reply.msize
                if data is not None and isinstance(reply, M.Rread) and bytes(reply.data) != data:
                    raise Failure(
                        "invariant",
                        f"read returned {bytes(reply.data)[:32]!r}, expected {data[:32]!r}",
                    )
            elif op in (b"E", b"X"):
                for frame in conn.expect_close(half_close=op == b"E"):
                    check_reply(frame, msize=conn.msize or None, outcome=ANY)
            elif op == b"C":
                end_conn()
        end_conn()
    except Failure as f:
        if not isinstance(f, Closed):
            problems.append(f"{f.kind}: {f.message}")
        if conn is not None:
            conn.sock.close()
        if link is not None:
            problems += link.finish(timeout)  # (a process target: wait for it, judge its exit)
    problems += target.problems()
    if not problems:
        try:
            liveness(target, timeout=timeout)
        except Failure as f:
            problems.append(f"{f.kind}: {f.message}")
    problems += target.problems()
    if base is not None and pid is not None:
        deadline = time.monotonic() + 3
        n = fd_count(pid)
        while n is not None and n > base and time.monotonic() < deadline:
            time.sleep(0.02)
            n = fd_count(pid)
        if n is not None and n > base:
            problems.append(f"leak: server holds {n} fds after replay, {base} before")
    return problems


_PKG = str(Path(M.__file__).resolve().parents[1]) + os.sep
"""The gofer9p package directory: its frames name a crash's bucket."""
_TB_FILE = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\b", re.M)


def last_request(transcript: Transcript | None) -> str:
    """The type name of the last frame sent in ``transcript`` ("?" if none decodes)."""
    from gofer9p.protocol.constants import MsgType

    if transcript is None:
        return "?"
    for op, payload in reversed(transcript.records):
        if op == b"S" and len(payload) >= 5:
            # the last complete frame of the chunk
            off, last = 0, payload[4]
            while off + 7 <= len(payload):
                size = int.from_bytes(payload[off : off + 4], "little")
                if size < 7 or off + size > len(payload):
                    break
                last = payload[off + 4]
                off += size
            try:
                return MsgType(last).name
            except ValueError:
                return f"type{last}"
    return "?"


def bucket(kind: str, message: str, transcript: Transcript | None = None, hint: str = "") -> str:
    """A stable name for the bug behind a finding: one file per bucket in the crash directory.

    * a traceback: exception type + the innermost gofer9p frame (file:function);
    * a process killed by a signal: the signal + the type of the last request sent;
    * anything else: the oracle (kind) + the message with numbers, hex and quoted names
      stripped, so one bug found twice with different sizes or fids lands in one bucket.
    """
    frames = _TB_FILE.findall(message)
    if frames:
        # (a frame of the package, not any path with "gofer9p" in it: the checkout's own name)
        ours = [f for f in frames if f[0].startswith(_PKG)] or frames
        path, _line, func = ours[-1]
        excs = _EXC_LINE.findall(message)
        exc = excs[-1].rsplit(".", 1)[-1] if excs else "Exception"
        return _slug(f"{kind}-{exc}-{Path(path).stem}.{func}")
    m = re.search(r"\b(SIGSYS|SIGSEGV|SIGABRT|SIGKILL|signal \d+)", message)
    if m:
        return _slug(f"{kind}-{m.group(1)}-{last_request(transcript)}")
    text = message.split("\n")[0]
    text = re.sub(r"(?<![\w.])/[^\s:,'\"]+", "", text)  # paths: temp dirs differ per run
    text = re.sub(r"\b[0-9a-f]{8,}\b|0x[0-9a-fA-F]+|\d+(\.\d+)?", "", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|b'[^']*'|\[[^\]]*\]|\{[^}]*\}", "", text)
    words = re.findall(r"[A-Za-z_]+", text)[:8]
    return _slug("-".join([kind, *([hint] if hint else []), *words]))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")[:100]


def save_failure(
    report: Report,
    fuzzer: str,
    failure: Failure,
    transcript: Transcript | bytes,
    *,
    crash_dir: Path | None,
    extra: dict[str, Any] | None = None,
    bucket_hint: str = "",
) -> Path | None:
    """Record ``failure`` in the report and save it in its bucket (one file per bucket).

    A bucket seen before keeps the smaller reproducer of the two; its ``.json`` counts how often
    the bucket was hit (``hits``) and when (``first_found``, ``last_found``).
    """
    path = None
    sent = transcript if isinstance(transcript, Transcript) else None  # (bytes: a decode input)
    name = bucket(failure.kind, failure.message, sent, bucket_hint)
    counts = report.details.setdefault("findings_by_bucket", {})
    counts[name] = counts.get(name, 0) + 1
    if crash_dir is not None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta = {
            "fuzzer": fuzzer,
            "bucket": name,
            "kind": failure.kind,
            "message": failure.message,
            "target": report.target,
            "seed": report.seed,
            "frames": sent.frames_sent() if sent is not None else 1,
            "last_request": last_request(sent),
            "first_found": now,
            "last_found": now,
            "hits": 1,
            "replay": "python -m fuzz replay <this .bin>",
            **(extra or {}),
        }
        path = save_reproducer(crash_dir, f"{fuzzer}-{name}", transcript, meta)
    report.add_failure(failure.kind, failure.message, path)
    if path is not None:
        report.details.setdefault("bucket_files", {})[name] = str(path)
    return path


def transcript_units(t: Transcript) -> list[list[tuple[bytes, bytes]]]:
    """A transcript cut into removable units: an N, or an S with the records that follow it."""
    units: list[list[tuple[bytes, bytes]]] = []
    for rec in t.records:
        if rec[0] in (b"N", b"S") or not units:
            units.append([rec])
        else:
            units[-1].append(rec)
    return units


def minimize_transcript(
    target: Target,
    t: Transcript,
    failure: Failure,
    *,
    deadline: float,
    timeout: float = 5.0,
) -> tuple[Transcript, int]:
    """Drop sends (with their expectations) while the replay still fails in the same bucket.

    Delta debugging over the transcript's units (halves, quarters, ... then single units from
    the end), each candidate replayed on the target; stops at ``deadline`` with the smallest
    failing transcript found.  Returns it and the number of replays tried.
    """
    # (signal buckets are compared without their request: shrinking changes the last one)
    want = bucket(failure.kind, failure.message)
    units = transcript_units(t)
    tries = 0

    def fails(us: list[list[tuple[bytes, bytes]]]) -> bool:
        nonlocal tries
        tries += 1
        cand = Transcript()
        cand.records = [r for u in us for r in u]
        if not cand.records or cand.records[0][0] != b"N":
            return False
        for p in replay_transcript(cand, target, timeout=timeout):
            kind, msg = split_problem(p)
            if bucket(kind, msg) == want:
                return True
        if not target.alive():
            target.restart()
        return False

    n = 2
    while len(units) >= 2 and time.monotonic() < deadline and not STOP.is_set():
        size = max(1, len(units) // n)
        removed = False
        for start in range(len(units) - size, 0, -size):  # keep the first N
            if time.monotonic() >= deadline:
                break
            cand = units[:start] + units[start + size :]
            if fails(cand):
                units = cand
                n = max(n - 1, 2)
                removed = True
                break
        if not removed:
            if size == 1:
                break
            n = min(len(units), n * 2)
    out = Transcript()
    out.records = [r for u in units for r in u]
    return out, tries
