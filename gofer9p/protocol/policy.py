"""What each 9P2000.L request is, for the server's policy: mutates? may block? ordered?

One row per T-message the server answers (the dispatch table of
``gofer9p.connection`` pairs each row with its decoder, handler and encoder):

* ``mutates``: it changes the export, so a read-only attach point refuses it
  (``EROFS``, or a panic with ``--panic-on-write``) before any handler runs
  (design.md §3).  ``Tlopen`` mutates only with a write or truncate flag
  (:data:`WRITE_FLAGS`).
* ``may_block``: it may go to a worker thread; the backend decides per request
  (``Session.is_blocking``; ``Session.read_blocks`` for Tread and Twrite, which
  are threaded only on FIFOs and devices: on local filesystems a ``preadv`` or
  ``pwrite`` of even a max-msize payload is one short syscall, and a thread
  hand-off, plus the copy it forces out of the receive buffer, costs more than
  it saves).
* ``ordered``: a large reply held back so that small ones overtake it is sent
  before this request is handled (a second large Rread would need a second
  buffer; an Rflush or Rversion must follow every reply sent before it).
"""

from __future__ import annotations

from typing import Final

import attrs

from . import constants as C

T: Final = C.MsgType


@attrs.frozen
class Policy:
    """One request type's row (see the module docstring)."""

    mutates: bool = False
    may_block: bool = False
    ordered: bool = False


_RO: Final = Policy()
_MUT: Final = Policy(mutates=True)

POLICY: dict[int, Policy] = {
    T.TVERSION: Policy(ordered=True),
    T.TFLUSH: Policy(ordered=True),
    T.TAUTH: _RO,
    T.TATTACH: _RO,
    T.TWALK: _RO,
    T.TLOPEN: Policy(mutates=True, may_block=True),  # mutates with WRITE_FLAGS only
    T.TLCREATE: _MUT,
    T.TSYMLINK: _MUT,
    T.TMKNOD: _MUT,
    T.TRENAME: _MUT,
    T.TREADLINK: _RO,
    T.TGETATTR: _RO,
    T.TSETATTR: Policy(mutates=True, may_block=True),
    T.TXATTRWALK: _RO,
    T.TXATTRCREATE: _MUT,
    T.TREADDIR: Policy(ordered=True),
    T.TFSYNC: Policy(may_block=True),
    T.TLOCK: _RO,
    T.TGETLOCK: _RO,
    T.TLINK: _MUT,
    T.TMKDIR: _MUT,
    T.TRENAMEAT: _MUT,
    T.TUNLINKAT: _MUT,
    T.TREAD: Policy(may_block=True, ordered=True),
    T.TWRITE: Policy(mutates=True, may_block=True),
    T.TCLUNK: _RO,
    T.TREMOVE: _MUT,
    T.TSTATFS: _RO,
}
"""Every request the server answers; any other type is ``EOPNOTSUPP``."""

WRITE_FLAGS: Final = C.L_O_ACCMODE | C.L_O_TRUNC
"""Tlopen flags that make it a mutating request: open for writing, or truncate."""


ORDERED: Final = frozenset(int(t) for t, p in POLICY.items() if p.ordered)
"""Types before which a held-back large reply is sent (plain ints: the hot path tests them)."""

__all__ = ["ORDERED", "POLICY", "WRITE_FLAGS", "Policy"]
