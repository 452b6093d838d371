"""The framer: complete frames, "need more bytes", and framing errors, byte by byte."""

from __future__ import annotations

import struct

import pytest

from gofer9p.protocol.codec import decode, encode
from gofer9p.protocol.framing import FRAMING_ERROR, NEED_DATA, next_frame
from gofer9p.protocol.messages import Tclunk, Tgetattr

_HDR = struct.Struct("<IBH")


def _split(
    stream: bytes | bytearray, end: int, max_frame: int
) -> tuple[list[int], int, tuple[int, int, int]]:
    """Tags of the complete frames in ``stream[:end]``, the offset after them, the last answer."""
    tags: list[int] = []
    start = 0
    while True:
        got = next_frame(stream, start, end, max_frame)
        size, mtype, tag = got
        if mtype < 0:
            return tags, start, got
        assert decode(memoryview(stream)[start : start + size]).tag == tag
        tags.append(tag)
        start += size


def test_framer_splits_stream_and_rejects_bad_sizes() -> None:
    a = encode(Tclunk(tag=1, fid=2))
    frames = a + encode(Tgetattr(tag=2, fid=3, request_mask=0x7FF))
    for end in range(len(frames) + 1):  # every cut, byte by byte
        tags, start, (size, mtype, _) = _split(frames, end, 8192)
        assert mtype == NEED_DATA
        assert tags == [1, 2][: (end >= len(a)) + (end == len(frames))]
        assert start == (
            len(a) if len(a) <= end < len(frames) else 0 if end < len(a) else len(frames)
        )
        # a partial frame announces its size once its four size bytes are there
        left = end - start
        assert size == (
            0
            if left < 4
            else _HDR.unpack_from(frames, start)[0]
            if left >= 7
            else struct.unpack_from("<I", frames, start)[0]
        )
    assert next_frame(_HDR.pack(3, 100, 0), 0, 7, 8192) == (3, FRAMING_ERROR, 0)
    assert next_frame(_HDR.pack(101, 100, 0), 0, 7, 100) == (101, FRAMING_ERROR, 0)
    assert next_frame(_HDR.pack(100, 100, 5) + bytes(93), 0, 100, 100) == (100, 100, 5)


@pytest.mark.parametrize("size", [0, 6, 101, 0xFFFFFFFF])
def test_partial_header_with_a_bad_size_is_an_error_at_four_bytes(size: int) -> None:
    """The size field alone decides: a hostile header is refused before its type and tag arrive."""
    head = struct.pack("<I", size)
    assert next_frame(head[:3], 0, 3, 100) == (0, NEED_DATA, 0)
    for n in (4, 5, 6):
        assert next_frame(head + b"\0\0", 0, n, 100) == (size, FRAMING_ERROR, 0)


def test_offsets_into_a_buffer_the_caller_owns() -> None:
    """The frame is found at ``start`` of a larger buffer, bytes past ``end`` ignored."""
    buf = bytearray(b"junk") + encode(Tclunk(tag=9, fid=4)) + b"\xff" * 8
    assert next_frame(buf, 4, 4 + 11, 11) == (11, 120, 9)
    assert next_frame(buf, 4, 4 + 10, 11) == (11, NEED_DATA, 0)
    assert next_frame(memoryview(buf), 4 + 11, 4 + 11, 11) == (0, NEED_DATA, 0)
