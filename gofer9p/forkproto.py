"""The fork-server's control protocol, as both ends use it: :mod:`gofer9p.forkserver` (the
server) and :class:`gofer9p.launch.ForkServer` (a requester).

One JSON object per ``SOCK_SEQPACKET`` record (:func:`record`), fds attached with SCM_RIGHTS in
the order a request's ``fds`` names their roles; the records themselves are described in
:mod:`gofer9p.forkserver`'s docstring.  Nothing here touches a socket.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_FDS", "MAX_REQUEST", "ROLES_ONCE", "ROLE_FLAGS", "parse_address", "record"]

#: Largest request record and most fds one request may pass (SCM_MAX_FD is 253).
MAX_REQUEST = 64 * 1024
MAX_FDS = 128
#: Roles whose fd the gofer gets through a flag (the fd stays where it landed in the child);
#: the flags themselves are refused in a request's ``args``.
ROLE_FLAGS = {
    "spec": "--spec-fd",
    "mounts": "--mounts-fd",
    "stats": "--stats-fd",
    "record": "--record-fd",
}
#: Roles a request may name at most once (``io`` may repeat: one per attach point).
ROLES_ONCE = ("stdout", "stderr", "userns", *ROLE_FLAGS)


def record(obj: dict[str, Any]) -> bytes:
    """One record's bytes: ``obj`` as compact JSON."""
    return json.dumps(obj, separators=(",", ":")).encode()


def parse_address(addr: str) -> str:
    """``unix:PATH`` -> ``PATH`` (ValueError otherwise)."""
    if not addr.startswith("unix:") or len(addr) <= 5:
        raise ValueError(f"a fork-server address is unix:PATH, not {addr!r}")
    return addr[5:]
