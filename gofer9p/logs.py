"""The one logging setup of every gofer9p process: one line per event, UTC, stderr or a file.

``gofer9p gofer`` (daemon.py) and ``gofer9p serve`` (cli.py) both call :func:`setup_logging`
with their ``--log-level``/``--log-file`` (:func:`gofer9p.options.add_log_args`), so their logs
read alike: ``2026-11-24T12:00:00.123Z gofer9p LEVEL message``.  Only the ``gofer9p`` loggers
are routed (``propagate`` off): a library's own logging stays the embedding program's business.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["OneLineUTCFormatter", "setup_logging"]

log = logging.getLogger("gofer9p")


class OneLineUTCFormatter(logging.Formatter):
    """``2026-11-24T12:00:00.123Z gofer9p LEVEL message``: one line per event, UTC."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s gofer9p %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        # Keep one event on one line even when a message or traceback has newlines.
        return super().format(record).replace("\n", " | ")


def setup_logging(level: str = "info", log_file: str | None = None) -> None:
    """Route the ``gofer9p`` loggers to stderr or ``log_file`` at ``level``.

    The file is opened (appending) now: the daemon calls this before its chroot, outside
    which the path is.  Raises ``OSError`` if it cannot be opened.
    """
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineUTCFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
