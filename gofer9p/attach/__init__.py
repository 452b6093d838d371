"""Fids -> host files: the only code of gofer9p that touches the host file system.

``AttachPoint`` is a served directory and its read-only policy; ``Session`` is
one connection's fid table with a handler per 9P2000.L T-message (see
``session.py`` for the security model).  ``is_blocking(m)`` tells the server
which requests deserve a worker thread.
"""

from gofer9p.attach.point import AttachPoint
from gofer9p.attach.session import (
    BLOCKING_IO_THRESHOLD,
    XATTR_MAX,
    Session,
    is_blocking,
    session_memory_bound,
)

__all__ = [
    "BLOCKING_IO_THRESHOLD",
    "XATTR_MAX",
    "AttachPoint",
    "Session",
    "is_blocking",
    "session_memory_bound",
]
