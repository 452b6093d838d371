"""The one 9P framer: where the next frame of a byte stream starts and ends (sans-IO).

A 9P stream is a sequence of frames, each ``size[4] type[1] tag[2] body``, whose
``size`` counts the whole frame.  :func:`next_frame` looks at ``buf[start:end]``,
a buffer the caller owns and fills (the server's receive buffer, the client's
reassembly buffer, a test's bytes), and says what is at ``start``::

    size, mtype, tag = next_frame(buf, start, end, max_frame)
    if mtype >= 0:          # a complete frame: buf[start:start + size]
        ...
        start += size
    elif mtype == NEED_DATA:  # not all there yet; size: what it announces (0: unknown)
        ...
    else:                   # FRAMING_ERROR: size is the offending size field
        ...

Nothing is copied and nothing is allocated beyond the header tuple that
``struct`` makes (the complete-frame case returns that very tuple), because the
server calls this once per request on its hot path.

A size field outside ``[7, max_frame]`` is a framing error: after it the stream
has no trustworthy boundaries and the connection must close.  It is reported as
soon as the four bytes of the size are there, before the rest of the header, so
that a peer cannot park a hostile header in a buffer sized for it.
"""

from __future__ import annotations

from typing import Final

from ._wire import _U32, HEADER

HEADER_SIZE: Final = 7
"""size[4] type[1] tag[2]: the smallest frame."""

NEED_DATA: Final = -1
"""``mtype`` of :func:`next_frame`'s answer when the frame at ``start`` is incomplete."""
FRAMING_ERROR: Final = -2
"""``mtype`` of :func:`next_frame`'s answer when the size field is outside ``[7, max_frame]``."""

_UNKNOWN: Final = (0, NEED_DATA, 0)
"""Fewer than four bytes: not even the size is known."""

Buffer = bytes | bytearray | memoryview


def next_frame(buf: Buffer, start: int, end: int, max_frame: int) -> tuple[int, int, int]:
    """``(size, type, tag)`` of the complete frame at ``buf[start:end]``.

    Otherwise ``(announced size or 0, NEED_DATA, 0)`` while the frame is not
    all there, or ``(size, FRAMING_ERROR, 0)`` for a size field outside
    ``[7, max_frame]`` (see the module docstring).
    """
    n = end - start
    if n >= HEADER_SIZE:
        h: tuple[int, int, int] = HEADER.unpack_from(buf, start)
        size = h[0]
        if HEADER_SIZE <= size <= max_frame:
            return h if size <= n else (size, NEED_DATA, 0)
        return (size, FRAMING_ERROR, 0)
    if n < 4:
        return _UNKNOWN
    size = _U32.unpack_from(buf, start)[0]
    if size < HEADER_SIZE or size > max_frame:
        return (size, FRAMING_ERROR, 0)
    return (size, NEED_DATA, 0)


__all__ = ["FRAMING_ERROR", "HEADER_SIZE", "NEED_DATA", "next_frame"]
