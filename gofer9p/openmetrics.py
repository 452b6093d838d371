"""A statistics snapshot (``gofer9p.stats.Registry.snapshot``) in the OpenMetrics text format.

Written out here rather than through prometheus_client: the confined daemon must import
everything before its chroot, and the format needs forty lines
(https://prometheus.io/docs/specs/om/open_metrics_spec/); the tests check the text with
prometheus_client's own OpenMetrics parser.  What each family means is in README.md
("Statistics").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


class _Text:
    """The lines of one exposition: a family's header, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, unit: str = "") -> None:
        self.lines.append(f"# TYPE {name} {kind}")
        if unit:
            self.lines.append(f"# UNIT {name} {unit}")
        self.lines.append(f"# HELP {name} {help_}")

    def sample(self, name: str, value: float, labels: Iterable[tuple[str, str]] = ()) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def gauge(self, name: str, help_: str, value: float | None, unit: str = "") -> None:
        """A family of one unlabelled gauge (nothing when ``value`` is None)."""
        if value is not None:
            self.family(name, "gauge", help_, unit)
            self.sample(name, value)

    def counter(self, name: str, help_: str, value: float | None, unit: str = "") -> None:
        """A family of one unlabelled counter (nothing when ``value`` is None)."""
        if value is not None:
            self.family(name, "counter", help_, unit)
            self.sample(name + "_total", value)


def render(snap: dict[str, Any]) -> str:
    """The OpenMetrics text of ``snap``, ending with ``# EOF``."""
    t = _Text()
    ops: dict[str, Any] = snap["ops"]
    bounds: list[float] = snap["latency_bounds"]

    name = "gofer9p_request_latency_seconds"
    t.family(
        name,
        "histogram",
        "Requests answered, by message type: from the frame's arrival to its reply "
        "handed to the socket",
        "seconds",
    )
    for op, o in ops.items():
        cum = 0
        for b, n in enumerate(o["latency"]):
            cum += n
            le = repr(bounds[b]) if b < len(bounds) else "+Inf"
            t.sample(name + "_bucket", cum, (("op", op), ("le", le)))
        t.sample(name + "_count", o["count"], (("op", op),))
        t.sample(name + "_sum", o["latency_sum"], (("op", op),))

    name = "gofer9p_request_errors"
    t.family(name, "counter", "Rlerror replies, by message type and errno")
    for op, o in ops.items():
        for err, n in o["errors"].items():
            t.sample(name + "_total", n, (("op", op), ("errno", err)))
    for name, key, what in (
        ("gofer9p_request_bytes", "bytes_in", "Request bytes received, by message type"),
        ("gofer9p_reply_bytes", "bytes_out", "Reply bytes sent, by message type"),
    ):
        t.family(name, "counter", what, "bytes")
        for op, o in ops.items():
            t.sample(name + "_total", o[key], (("op", op),))

    conns: list[dict[str, Any]] = snap["connections"]
    for name, key, what in (
        ("gofer9p_connection_fids", "fids", "Fids a connection holds"),
        ("gofer9p_connection_inflight", "inflight", "Requests in flight (worker threads, Tflush waits)"),
        ("gofer9p_connection_host_fds", "host_fds", "Host fds charged to a connection"),
    ):
        t.family(name, "gauge", what)
        for c in conns:
            t.sample(name, c[key], (("connection", c["name"]),))
    t.gauge("gofer9p_connections", "Connections being served", len(conns))
    t.counter("gofer9p_connections_ended", "Connections that ended", snap["connections_ended"])
    t.gauge("gofer9p_host_fds_held", "Host fds charged to all connections", snap["host_fds_held"])
    t.gauge("gofer9p_uptime_seconds", "Seconds since the statistics began", snap["uptime"], "seconds")

    p: dict[str, Any] = snap["process"]
    t.gauge(
        "gofer9p_process_resident_memory_bytes", "Resident memory (VmRSS)", p.get("rss_bytes"), "bytes"
    )
    t.gauge(
        "gofer9p_process_peak_resident_memory_bytes",
        "Peak resident memory (VmHWM)",
        p.get("peak_rss_bytes"),
        "bytes",
    )
    t.gauge("gofer9p_process_threads", "Threads of the process", p.get("threads"))
    t.counter("gofer9p_process_cpu_seconds", "CPU time of the process", p.get("cpu_seconds"), "seconds")
    t.gauge("gofer9p_process_fd_limit", "RLIMIT_NOFILE (soft)", p.get("fd_limit"))
    w: dict[str, int] = p.get("workers") or {}
    t.gauge("gofer9p_worker_threads_busy", "Worker threads running a request", w.get("busy"))
    t.gauge("gofer9p_worker_threads_limit", "Worker threads at most", w.get("limit"))
    t.gauge("gofer9p_worker_queue", "Requests waiting for a worker thread", w.get("queued"))
    budget: dict[str, int] | None = p.get("fd_budget")
    if budget is not None:
        t.gauge("gofer9p_fd_budget_limit", "Host fds the process may hold for fids", budget["limit"])
        t.gauge("gofer9p_fd_budget_in_use", "Host fds held for fids", budget["in_use"])
        t.counter("gofer9p_fd_budget_reclaims", "Fid fds closed to make room", budget["reclaims"])
        t.counter("gofer9p_fd_budget_reopens", "Fid fds opened again after a reclaim", budget["reopens"])
    t.lines.append("# EOF")
    return "\n".join(t.lines) + "\n"
