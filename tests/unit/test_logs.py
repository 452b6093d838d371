"""gofer9p.logs: the one logging setup ``gofer9p serve`` and ``gofer9p gofer`` share."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gofer9p import cli, daemon, logs

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z gofer9p (DEBUG|INFO|WARNING) \S")


@pytest.fixture
def restored_logger() -> Iterator[logging.Logger]:
    """setup_logging changes the process-wide ``gofer9p`` logger: put it back afterwards (other
    tests read server logs through pytest's root-logger capture)."""
    log = logging.getLogger("gofer9p")
    saved = (log.handlers[:], log.level, log.propagate)
    try:
        yield log
    finally:
        for h in log.handlers:
            if h not in saved[0]:
                h.close()
        log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def test_one_line_per_event_in_utc(tmp_path: Path, restored_logger: logging.Logger) -> None:
    path = tmp_path / "log"
    logs.setup_logging("info", str(path))
    logging.getLogger("gofer9p.serve").warning("two\nlines")
    logging.getLogger("gofer9p.server").debug("below the level")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("gofer9p").info("with a traceback", exc_info=True)
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith("gofer9p WARNING two | lines")
    assert "Traceback" in lines[1] and "ValueError: boom" in lines[1]
    assert restored_logger.propagate is False


def test_serve_and_gofer_use_the_same_setup() -> None:
    assert cli.setup_logging is logs.setup_logging
    assert daemon.setup_logging is logs.setup_logging


def test_serve_log_file_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "missing" / "log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "gofer9p", "serve", str(tmp_path), "--fd", "0",
         "--log-file", str(bad)],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"gofer9p serve: --log-file {str(bad)!r}: No such file or directory\n"
