"""Fids -> host files: the only code of gofer9p that touches the host file system.

``AttachPoint`` is a served directory and its read-only / panic-on-write flags
(applied by the connection core, not here); ``Backend`` (``backend.py``) is one
connection's fid table and the host operations on its fids, with plain values
in and out; ``Session`` (``session.py``, the protocol side) turns T-messages
into backend calls and their results into R-messages (see ``backend.py`` for
the security model), translating ids at that edge when the export has an
``IdMap`` (``_idmap.py``).  ``is_blocking(m)`` tells the server which requests
deserve a worker thread.  ``FdBudget`` (``_budget.py``) is a process's host-fd
budget, shared by its connections' sessions.
"""

from gofer9p.attach._budget import FD_OVERHEAD, FdBudget
from gofer9p.attach._idmap import IdMap
from gofer9p.attach.backend import FDS_PER_FID, Backend, FileSystem
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
    "FDS_PER_FID",
    "FD_OVERHEAD",
    "XATTR_MAX",
    "AttachPoint",
    "Backend",
    "FdBudget",
    "FileSystem",
    "IdMap",
    "Session",
    "is_blocking",
    "session_memory_bound",
]
