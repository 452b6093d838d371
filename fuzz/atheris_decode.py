"""Coverage-guided fuzzing of ``gofer9p.protocol.codec.decode``.

Why: ``decode`` is the first code that touches a hostile client's bytes; it
must reject anything malformed with ``ProtocolError`` (which names the field)
and nothing else -- an ``IndexError``, ``struct.error``, ``UnicodeError``,
``OverflowError`` or ``MemoryError`` escaping it is a bug, even if the server
happens to catch it.  A frame that decodes must also re-encode to exactly the
same bytes (the codec has one canonical form; trailing bytes are an error),
and an ``Rreaddir`` payload must parse with ``decode_dirents`` or raise
``ProtocolError``.

Engines:

* ``atheris`` (libFuzzer, coverage-guided): runs in a child process, because
  libFuzzer ends the process when it is done; the parent turns its output
  into the JSON report.  The seed corpus (``fuzz/corpus/decode/``, one valid
  frame per message type) is copied to a scratch directory so new corpus
  entries do not pile up in the repository.
* ``hypothesis`` (fallback when atheris is not installed, e.g. a Python it
  has no wheel for): random and structure-aware inputs (valid frames of every
  message, then mutated), bounded by count and time.  Not coverage-guided;
  the report says which engine ran.

A failing input is minimized (bytes dropped while it fails in the same bucket: the exception
type and innermost codec function) and saved in its bucket as
``<crash-dir>/decode-<bucket>.bin`` (the raw frame) with a ``.json`` (message, hits, the input
before minimization); ``python -m fuzz replay FILE`` re-runs ``check_input`` on it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .common import Report

# No gofer9p import at module level: the atheris child must import the codec
# inside ``atheris.instrument_imports()``, or libFuzzer sees no coverage.
CORPUS = Path(__file__).resolve().parent / "corpus"
SEED_CORPUS = CORPUS / "decode"


def check_input(data: bytes) -> None:
    """The property: decode raises only ProtocolError; what decodes re-encodes identically."""
    from gofer9p.protocol import messages as M
    from gofer9p.protocol.codec import ProtocolError, decode, decode_dirents, encode

    try:
        msg = decode(data)
    except ProtocolError:
        return
    again = encode(msg)
    if again != data:
        raise AssertionError(
            f"{type(msg).__name__} decoded from {data.hex()} re-encodes as {again.hex()}"
        )
    if isinstance(msg, M.Rreaddir):
        try:
            decode_dirents(msg.data)
        except ProtocolError:
            pass


def seed_frames() -> list[bytes]:
    """A valid frame of every message type (and a few shapes of the variable ones)."""
    from gofer9p.protocol import messages as M
    from gofer9p.protocol.codec import encode, encode_dirent

    out: list[bytes] = []
    for cls in M.ALL_MESSAGES:
        kwargs: dict[str, object] = {}
        for a in cls.__attrs_attrs__:
            if a.name == "tag":
                kwargs[a.name] = 1
            elif a.type in ("bytes", bytes):
                kwargs[a.name] = b"name"
            elif a.name == "qid" or a.name == "aqid":
                kwargs[a.name] = M.Qid(0x80, 1, 2)
            elif a.name == "wnames":
                kwargs[a.name] = [b"a", b"bc"]
            elif a.name == "wqids":
                kwargs[a.name] = [M.Qid(0, 0, 1)]
            elif a.name == "data":
                kwargs[a.name] = (
                    encode_dirent(M.Qid(0, 0, 3), 1, 8, b"f") if cls is M.Rreaddir else b"xyz"
                )
            else:
                kwargs[a.name] = 3
        out.append(encode(cls(**kwargs)))
    return out


def write_seed_corpus(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for f in seed_frames():
        (directory / hashlib.sha1(f).hexdigest()[:16]).write_bytes(f)


def seed_persistent_corpus(corpus: Path) -> None:
    """Seed a new persistent corpus: the shipped seeds plus every frame of the recorded sessions
    (the reproducers' transcripts under fuzz/corpus/crashes/), so a first run starts from what
    real hostile sessions sent."""
    import hashlib

    from .wire import MAGIC, Transcript

    if SEED_CORPUS.is_dir():
        for f in SEED_CORPUS.iterdir():
            shutil.copy(f, corpus / f.name)
    else:
        write_seed_corpus(corpus)
    for rec in sorted((CORPUS / "crashes").glob("*.bin")):
        data = rec.read_bytes()
        if not data.startswith(MAGIC):
            continue
        for op, payload in Transcript.from_bytes(data).records:
            if op == b"S" and 7 <= len(payload) <= 4096:
                (corpus / f"session-{hashlib.sha1(payload).hexdigest()[:16]}").write_bytes(payload)


MINIMIZE_S = 10.0
"""At most this long minimizing one decode input (inputs are at most 4096 bytes)."""


def _problem(data: bytes) -> str | None:
    """``check_input``'s exception with its traceback, or None when ``data`` passes."""
    try:
        check_input(data)
    except Exception:
        return traceback.format_exc()
    return None


def minimize_input(data: bytes, want: str, deadline: float) -> bytes:
    """Drop chunks of ``data`` (halves, quarters, ... single bytes) while it still fails in
    bucket ``want``; stops at ``deadline`` with the smallest failing input found."""
    from .common import bucket

    def fails(cand: bytes) -> bool:
        tb = _problem(cand)
        return tb is not None and bucket("crash", tb) == want

    size = max(1, len(data) // 2)
    while size >= 1 and time.monotonic() < deadline:
        start, shrunk = 0, False
        while start < len(data) and time.monotonic() < deadline:
            cand = data[:start] + data[start + size :]
            if cand and fails(cand):
                data, shrunk = cand, True
            else:
                start += size
        if not shrunk:
            size //= 2
    return data


def save_crash(
    report: Report,
    crash_dir: Path | None,
    data: bytes,
    *,
    kind: str = "crash",
    message: str = "",
    deadline: float | None = None,
) -> Path | None:
    """Record a failing input: bucketed by its exception and innermost function, minimized
    (time-boxed by ``deadline`` and MINIMIZE_S), saved raw as ``decode-<bucket>.bin``."""
    from .common import bucket, save_failure
    from .wire import Failure

    tb = _problem(data)
    text = tb or message
    extra: dict[str, object] = {
        "original_input": data.hex(),
        "replay": "python -m fuzz replay <this .bin> (runs the decode property)",
    }
    if tb is not None:
        end = time.monotonic() + MINIMIZE_S
        small = minimize_input(data, bucket(kind, tb), min(end, deadline or end))
        extra["minimized"] = f"{len(data)} -> {len(small)} bytes"
        data, text = small, _problem(small) or tb
    extra["input"] = data.hex()
    return save_failure(
        report, "decode", Failure(kind, f"decode input {data[:64].hex()}: {text}"), data,
        crash_dir=crash_dir, extra=extra,
    )


def replay_input(path: Path) -> list[str]:
    """Re-run the property on a saved decode input; [] when it passes."""
    try:
        check_input(path.read_bytes())
    except Exception as e:
        return [f"crash: {type(e).__name__}: {e}"]
    return []


# --------------------------------------------------------------------- atheris
def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _child_main(argv: list[str]) -> None:
    """Entry point of the libFuzzer child (``python -m fuzz.atheris_decode ARGS``)."""
    import atheris

    with atheris.instrument_imports():
        import gofer9p.protocol._generated
        import gofer9p.protocol._wire
        import gofer9p.protocol.codec  # noqa: F401

    def one(data: bytes) -> None:
        check_input(data)

    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


_STATS = re.compile(r"#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED).*?cov: (\d+)")


def run_atheris(
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_inputs: int | None,
    crash_dir: Path | None,
    corpus_dir: Path | None = None,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="gofer9p-decode-"))
    try:
        if corpus_dir is not None:
            # persistent: libFuzzer adds what it finds here, and the next run starts from it
            corpus = corpus_dir / "decode"
            fresh = not corpus.is_dir()
            corpus.mkdir(parents=True, exist_ok=True)
            if fresh:
                seed_persistent_corpus(corpus)
        elif SEED_CORPUS.is_dir() and any(SEED_CORPUS.iterdir()):
            corpus = work / "corpus"
            shutil.copytree(SEED_CORPUS, corpus)
        else:
            corpus = work / "corpus"
            write_seed_corpus(corpus)
        artifacts = work / "artifacts"
        artifacts.mkdir()
        args = [
            f"-seed={seed % (1 << 31) or 1}",
            f"-artifact_prefix={artifacts}/",
            "-max_len=4096",
            "-rss_limit_mb=2048",
            "-timeout=10",
            "-print_final_stats=1",
        ]
        if time_budget:
            args.append(f"-max_total_time={max(1, int(time_budget))}")
        if max_inputs:
            args.append(f"-runs={max_inputs}")
        args.append(str(corpus))
        cmd = [sys.executable, "-m", "fuzz.atheris_decode", "--child", *args]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(CORPUS.parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        limit = (time_budget or 600) + 120
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=limit, check=False
            )
            output = proc.stderr + proc.stdout
            rc = proc.returncode
        except subprocess.TimeoutExpired as e:
            output = (
                (e.stderr or b"").decode(errors="replace")
                if isinstance(e.stderr, bytes)
                else (e.stderr or "")
            )
            rc = -1
            report.add_failure("hang", f"atheris child did not finish within {limit:.0f}s")
        runs = 0
        cov = 0
        for m in _STATS.finditer(output):
            runs = max(runs, int(m.group(1)))
            cov = max(cov, int(m.group(2)))
        m2 = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
        if m2:
            runs = max(runs, int(m2.group(1)))
        report.examples_run = runs
        report.details["engine"] = "atheris"
        report.details["coverage_edges"] = cov
        report.details["corpus_entries"] = len(list(corpus.iterdir()))
        for art in sorted(artifacts.iterdir()):
            kind = "hang" if art.name.startswith("timeout") else "crash"
            save_crash(report, crash_dir, art.read_bytes(), kind=kind, message=output[-3000:])
        if rc not in (0, -1) and not list(artifacts.iterdir()):
            report.add_failure("crash", f"atheris child exited {rc}: {output[-3000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ hypothesis
def run_hypothesis(
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_inputs: int | None,
    crash_dir: Path | None,
) -> None:
    import random

    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    seeds = seed_frames()

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        f = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 6))):
            op = draw(st.integers(0, 4))
            if op == 0 and len(f) > 4:
                f[draw(st.integers(4, len(f) - 1))] ^= 1 << draw(st.integers(0, 7))
            elif op == 1:
                f = f[: draw(st.integers(0, len(f)))]
            elif op == 2:
                f += draw(st.binary(max_size=32))
            elif op == 3 and len(f) > 4:
                pos = draw(st.integers(4, len(f) - 1))
                f[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
            elif op == 4 and len(f) >= 5:
                f[4] = draw(st.integers(0, 255))
        if len(f) >= 4 and draw(st.booleans()):
            f[0:4] = len(f).to_bytes(4, "little")
        return bytes(f)

    inputs = st.one_of(st.binary(max_size=512), mutated())
    count = 0
    failures: list[tuple[bytes, str]] = []
    start = time.monotonic()
    deadline = start + time_budget if time_budget else None
    rng = random.Random(seed)
    while True:
        left = (max_inputs - count) if max_inputs else 2000
        if left <= 0 or (deadline is not None and time.monotonic() >= deadline):
            break
        batch = min(left, 2000)

        @hseed(rng.randrange(1 << 32))
        @settings(
            max_examples=batch,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(inputs)
        def prop(data: bytes) -> None:
            nonlocal count
            count += 1
            try:
                check_input(data)
            except Exception:
                failures.append((data, traceback.format_exc()))
                raise

        try:
            prop()
        except Exception:
            # saved in its bucket; the run goes on (a bucket hit again counts its hits)
            save_crash(report, crash_dir, failures[-1][0], deadline=deadline)
    report.examples_run = count
    report.details["engine"] = "hypothesis"


def run(
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_inputs: int | None,
    engine: str = "auto",
    crash_dir: Path | None,
    corpus_dir: Path | None = None,
) -> Report:
    """Fuzz ``decode`` with atheris when installed (else hypothesis); fill ``report``."""
    start = time.monotonic()
    if time_budget is None and max_inputs is None:
        time_budget = 60.0  # every run is bounded
    use_atheris = engine == "atheris" or (engine == "auto" and atheris_available())
    if engine == "atheris" and not atheris_available():
        raise SystemExit("atheris is not installed (pip install atheris)")
    if use_atheris:
        run_atheris(
            report,
            seed=seed,
            time_budget=time_budget,
            max_inputs=max_inputs,
            crash_dir=crash_dir,
            corpus_dir=corpus_dir,
        )
    else:
        if engine == "auto":
            report.notes.append("atheris not installed: hypothesis fallback (not coverage-guided)")
        run_hypothesis(
            report, seed=seed, time_budget=time_budget, max_inputs=max_inputs, crash_dir=crash_dir
        )
    report.duration_s = round(time.monotonic() - start, 2)
    report.frames_sent = report.examples_run
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
    else:
        print("use: python -m fuzz decode [--time S | --examples N]", file=sys.stderr)
        sys.exit(2)
