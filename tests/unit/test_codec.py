"""Codec: every message round-trips, every truncation names a field."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gofer9p.protocol import _codegen, codec
from gofer9p.protocol import constants as C
from gofer9p.protocol.codec import ProtocolError, decode, encode
from gofer9p.protocol.messages import ALL_MESSAGES, BY_TYPE, Message, Qid

_INTS = {"b": 8, "w": 16, "d": 32, "q": 64}
qids = st.builds(
    Qid, st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
)
strings = st.binary(max_size=300)


def _field_strategy(code: str) -> st.SearchStrategy[Any]:
    if code in _INTS:
        return st.integers(0, 2 ** _INTS[code] - 1)
    if code == "s":
        return strings
    if code == "Q":
        return qids
    if code == "S*":
        return st.lists(strings, max_size=C.MAXWELEM)
    if code == "Q*":
        return st.lists(qids, max_size=C.MAXWELEM)
    if code == "D":
        return st.binary(max_size=2000)
    raise AssertionError(code)


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    kwargs = {"tag": st.integers(0, 0xFFFF)}
    for f in cls.FIELDS.split():
        name, code = f.split(":")
        kwargs[name] = _field_strategy(code)
    return st.builds(cls, **kwargs)


any_message = st.one_of([message_strategy(cls) for cls in ALL_MESSAGES])


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    frame = encode(msg)
    assert struct.unpack_from("<I", frame)[0] == len(frame)
    assert frame[4] == cls.TYPE
    back = decode(frame)
    assert type(back) is cls
    assert back == msg
    assert encode(back) == frame


@settings(max_examples=300, deadline=None)
@given(msg=any_message, data=st.data())
def test_every_truncation_is_a_named_protocol_error(msg: Message, data: st.DataObject) -> None:
    frame = encode(msg)
    body_len = len(frame) - 7
    if body_len == 0:
        return
    cut = data.draw(st.integers(0, body_len - 1))
    short = bytearray(frame[: 7 + cut])
    struct.pack_into("<I", short, 0, len(short))
    with pytest.raises(ProtocolError) as ei:
        decode(bytes(short))
    assert ei.value.field  # names a field
    assert type(msg).__name__ in str(ei.value)


@settings(max_examples=200, deadline=None)
@given(msg=any_message, extra=st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_an_error(msg: Message, extra: bytes) -> None:
    frame = bytearray(encode(msg) + extra)
    struct.pack_into("<I", frame, 0, len(frame))
    with pytest.raises(ProtocolError, match="trailing"):
        decode(bytes(frame))


@settings(max_examples=500, deadline=None)
@given(mtype=st.integers(0, 255), body=st.binary(max_size=64))
def test_random_bodies_decode_or_raise_protocol_error(mtype: int, body: bytes) -> None:
    frame = struct.pack("<IBH", 7 + len(body), mtype, 1) + body
    try:
        msg = decode(frame)
    except ProtocolError:
        return
    assert msg.TYPE == mtype


def test_unknown_type_names_type_field() -> None:
    with pytest.raises(ProtocolError) as ei:
        decode(struct.pack("<IBH", 7, 200, 1))
    assert ei.value.field == "type"


def test_walk_with_17_names_is_rejected() -> None:
    body = struct.pack("<IIH", 1, 2, 17) + b"".join(struct.pack("<H", 1) + b"a" for _ in range(17))
    with pytest.raises(ProtocolError) as ei:
        decode(struct.pack("<IBH", 7 + len(body), C.MsgType.TWALK, 1) + body)
    assert ei.value.field == "nwname"


def test_string_length_lying() -> None:
    body = struct.pack("<IIH", 1, 2, 1) + struct.pack("<H", 500) + b"abc"
    with pytest.raises(ProtocolError) as ei:
        decode(struct.pack("<IBH", 7 + len(body), C.MsgType.TWALK, 1) + body)
    assert ei.value.field == "wnames"


def test_write_count_lying() -> None:
    body = struct.pack("<IQI", 1, 0, 1000) + b"x" * 10
    with pytest.raises(ProtocolError) as ei:
        decode(struct.pack("<IBH", 7 + len(body), C.MsgType.TWRITE, 1) + body)
    assert ei.value.field == "count"


def test_names_are_bytes_not_utf8() -> None:
    from gofer9p.protocol.messages import Twalk

    msg = Twalk(tag=3, fid=1, newfid=2, wnames=[b"\xff\xfe", b"caf\xc3"])
    assert decode(encode(msg)) == msg


def test_dirents_round_trip() -> None:
    q = Qid(0x80, 1, 42)
    data = codec.encode_dirent(q, 7, C.DT_DIR, b"dir") + codec.encode_dirent(
        Qid(0, 0, 43), 9, C.DT_REG, b"\xfffile"
    )
    ents = codec.decode_dirents(data)
    assert ents == [(q, 7, C.DT_DIR, b"dir"), (Qid(0, 0, 43), 9, C.DT_REG, b"\xfffile")]
    with pytest.raises(ProtocolError):
        codec.decode_dirents(data[:-1])


def test_generated_codec_is_up_to_date() -> None:
    assert _codegen.TARGET.read_text() == _codegen.generate(), (
        "run: python -m gofer9p.protocol._codegen"
    )


def test_every_9p2000L_message_has_a_codec() -> None:
    expected = {
        6 + 1, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 30, 31, 32, 33,
        40, 41, 50, 51, 52, 53, 54, 55, 70, 71, 72, 73, 74, 75, 76, 77, 100, 101, 102, 103, 104,
        105, 108, 109, 110, 111, 116, 117, 118, 119, 120, 121, 122, 123,
    }
    assert set(BY_TYPE) == expected
