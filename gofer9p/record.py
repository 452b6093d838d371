"""Session recordings as pcap files (sans-IO): 9P byte streams in, pcap bytes out, and back.

A recording is a classic libpcap file (nanosecond timestamps, ``LINKTYPE_RAW``: each packet
is an IPv4 datagram) in which every connection of the server is a synthetic TCP connection
from ``10.1.x.y:PORT`` (a distinct address and port per connection, :func:`client_address`)
to ``10.0.0.1:564``, the 9P port that Wireshark's and tshark's 9P dissector listens on.
Client bytes become client-to-server segments, reply bytes server-to-client segments, each
with the sequence and acknowledgement numbers a real stack would send, so that Wireshark
reassembles frames split across segments; a segment carries at most :data:`MSS` bytes (an
IPv4 datagram's 65535 less the two headers), so a large frame takes several segments.

Headers only (``--record-headers-only``) keeps what says *what* a session did, not *to
what*: for every frame its size, type and tag, and every integer field (fids, offsets,
counts, modes, flags, qids, attributes, error numbers); never a name or file data.
Precisely:

* every string field is emptied (``s[2]`` of length 0): names, link targets, unames,
  anames, lock client ids; Twalk keeps ``nwname`` with each name empty.  Tversion's and
  Rversion's protocol string is kept (it is no name, and the dissector reads it).  The
  frame's ``size`` is the rewritten frame's, so it stays a valid 9P message.
* the payload of Twrite, Rread and Rreaddir (file data, directory entries: names) is not
  captured, snaplen-style: the frame keeps its true ``size`` and ``count`` and occupies its
  true length in the TCP sequence space, but the pcap record holds its bytes only up to
  and including ``count`` (the record's captured length is shorter than its original
  length, as in a ``tcpdump -s`` capture).  Such a frame always starts a segment and ends
  one (or a run of segments when it is longer than :data:`MSS`).
* a frame that does not decode (a hostile client's) keeps its 7-byte header; the rest is
  not captured.  After a framing error (a size outside ``[7, max_frame]``) nothing more
  of that direction is captured.

Why these two forms: tshark dissects both fully.  An emptied string is a well-formed 9P
string, so everything after it (Tlcreate's flags, mode and gid, Trenameat's newdirfid,
Txattrcreate's attr_size) is still a dissected field; cutting at the first string would
lose them.  Data is always a frame's last field, so cutting there loses nothing but the
data, keeps every size true, and makes the recording small; tshark lists the frame with
its type, tag, fid, offset and count and marks the data "[Packet size limited during
capture]".

Reading (:func:`read_pcap`) takes such a file (or any classic pcap of IPv4 TCP 9P on port
564: ``LINKTYPE_RAW``, ``LINKTYPE_IPV4`` or ``LINKTYPE_ETHERNET``) back to each
connection's two byte streams, as :class:`Packet` events in file order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import attrs

from .protocol import codec
from .protocol.constants import MsgType
from .protocol.framing import FRAMING_ERROR, HEADER_SIZE, next_frame
from .protocol.messages import BY_TYPE

__all__ = [
    "FILE_HEADER",
    "LINKTYPE_RAW",
    "MSS",
    "NINEP_PORT",
    "SERVER_ADDRESS",
    "Frame",
    "Packet",
    "PcapError",
    "TcpStream",
    "client_address",
    "read_frames",
    "read_pcap",
    "redact",
]

Buffer = bytes | bytearray | memoryview

NINEP_PORT = 564
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
LINKTYPE_ETHERNET = 1
_MAGIC_NS = 0xA1B23C4D
_MAGIC_US = 0xA1B2C3D4
SNAPLEN = 65535
_FILE_HDR = struct.Struct("<IHHiIII")
FILE_HEADER = _FILE_HDR.pack(_MAGIC_NS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW)
"""The pcap file header every recording starts with (nanosecond timestamps, raw IPv4)."""

_REC = struct.Struct("<IIII")  # ts_sec, ts_frac, incl_len, orig_len
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_HEADERS = _IP.size + _TCP.size
MSS = 65535 - _HEADERS
"""Most payload bytes one segment carries: an IPv4 datagram's total length is 16 bits."""

SERVER_ADDRESS = (bytes((10, 0, 0, 1)), NINEP_PORT)
_FIRST_PORT = 49152
_PORTS = 65536 - _FIRST_PORT

_SYN, _FIN, _PSH, _ACK = 0x02, 0x01, 0x08, 0x10
_CLIENT_ISN = 0x10000000
_SERVER_ISN = 0x20000000
_U32 = 0xFFFFFFFF


def client_address(index: int) -> tuple[bytes, int]:
    """The synthetic client (IPv4 address, port) of the ``index``-th connection (from 0).

    Ports run through the ephemeral range 49152-65535; every 16384 connections the address
    moves on (10.1.0.2, 10.1.0.3, ...), so no two connections of one recording share both."""
    host, port = divmod(index, _PORTS)
    host += 2
    return bytes((10, 1, (host >> 8) & 0xFF, host & 0xFF)), _FIRST_PORT + port


def _ip_checksum(header: bytes) -> int:
    s: int = sum(struct.unpack("!10H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ------------------------------------------------------------------ headers only
def _layout(mtype: int) -> tuple[bool, int]:
    """(has strings, bytes kept before the data) of a message type; -1: no data field."""
    fields = BY_TYPE[mtype].FIELDS.split()
    kinds = [f.split(":")[1] for f in fields]
    strings = any(k in ("s", "S*") for k in kinds) and mtype not in (
        MsgType.TVERSION,
        MsgType.RVERSION,
    )
    if "D" not in kinds:
        return strings, -1
    sizes = {"b": 1, "w": 2, "d": 4, "q": 8, "Q": 13}
    assert kinds.index("D") == len(kinds) - 1, "data is always a frame's last field"
    return strings, HEADER_SIZE + sum(sizes[k] for k in kinds[:-1]) + 4


_LAYOUTS = {t: _layout(t) for t in BY_TYPE}
_DATA_KEEP = {t: keep for t, (_, keep) in _LAYOUTS.items() if keep >= 0}
_STRINGS = frozenset(t for t, (strings, _) in _LAYOUTS.items() if strings)


def redact(frame: Buffer) -> tuple[bytes, int]:
    """One whole frame for a headers-only recording: ``(captured bytes, uncaptured length)``.

    The captured bytes and the uncaptured length add up to the frame as it goes in the TCP
    stream (see the module docstring for what is kept)."""
    mtype = frame[4]
    keep = _DATA_KEEP.get(mtype, -1)
    if keep >= 0 and len(frame) >= keep:
        return bytes(frame[:keep]), len(frame) - keep
    if mtype not in _STRINGS and keep < 0 and mtype in BY_TYPE:
        return bytes(frame), 0
    try:
        msg = codec.decode(frame)
    except codec.ProtocolError:
        return bytes(frame[:HEADER_SIZE]), len(frame) - HEADER_SIZE
    for a in attrs.fields(type(msg)):
        v = getattr(msg, a.name)
        if isinstance(v, bytes):
            setattr(msg, a.name, b"")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            setattr(msg, a.name, [b""] * len(v))
    return codec.encode(msg), 0


class _Frames:
    """A headers-only direction: cuts its byte stream into frames and redacts each.

    Holds at most one frame without data (up to ``max_frame`` bytes) or the fixed part of
    one with data; the data itself is only counted past (``skip``)."""

    __slots__ = ("buf", "dead", "max_frame", "skip")

    def __init__(self, max_frame: int) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame
        self.skip = 0  # data bytes of the last frame still to come (already in the stream)
        self.dead = False  # a framing error: nothing more is captured

    def feed(self, data: Buffer) -> Iterator[tuple[bytes, int]]:
        """The ``(captured, uncaptured)`` pieces that ``data`` completes, in stream order."""
        mv = memoryview(data)
        i, n = 0, len(mv)
        while i < n:
            if self.dead:
                yield b"", n - i
                return
            if self.skip:
                k = min(self.skip, n - i)
                self.skip -= k
                i += k
                continue
            buf = self.buf
            if len(buf) < HEADER_SIZE:
                take = min(HEADER_SIZE - len(buf), n - i)
                buf += mv[i : i + take]
                i += take
                if len(buf) < 4:
                    continue
            size, mtype, _ = next_frame(buf, 0, len(buf), self.max_frame)
            if mtype == FRAMING_ERROR:
                self.dead = True
                yield b"", len(buf)
                buf.clear()
                continue
            if len(buf) < HEADER_SIZE:
                continue
            keep = _DATA_KEEP.get(buf[4], -1)
            if keep > size:
                keep = -1  # too short for its fixed fields: redact() keeps the header
            want = size if keep < 0 else keep
            if len(buf) < want:
                take = min(want - len(buf), n - i)
                buf += mv[i : i + take]
                i += take
                if len(buf) < want:
                    continue
            if keep >= 0:
                # the data is counted past as it arrives: its length goes in the stream now
                self.skip = size - keep
                yield bytes(buf), size - keep
            else:
                yield redact(buf)
            buf.clear()


# ---------------------------------------------------------------------- writing
class TcpStream:
    """One connection as a synthetic TCP connection: pcap records out (sans-IO).

    ``open(ts)`` gives the three-way handshake, ``client(data, ts)`` / ``server(data, ts)``
    the segments of bytes that went each way, ``close(ts)`` the FIN exchange; ``ts`` is
    nanoseconds since the epoch.  Each appends its pcap records to ``out`` when given (the
    recorder's buffer: no intermediate copy) and returns the buffer.  Sequence and acknowledgement numbers follow the bytes
    in the stream (every segment acknowledges all the peer has sent), which is what lets
    Wireshark reassemble a frame split over segments.  With ``headers_only``, each
    direction goes through :func:`redact`, and a frame's data is in the sequence space but
    not in the captured bytes.
    """

    __slots__ = ("_cseq", "_dirs", "_ipid", "_sseq", "client_ip", "client_port")

    def __init__(self, index: int, *, headers_only: bool = False, max_frame: int = 1 << 30):
        self.client_ip, self.client_port = client_address(index)
        self._cseq = _CLIENT_ISN
        self._sseq = _SERVER_ISN
        self._ipid = 0
        self._dirs = (_Frames(max_frame), _Frames(max_frame)) if headers_only else None

    def open(self, ts: int, out: bytearray | None = None) -> bytearray:
        """SYN, SYN-ACK, ACK (appended to ``out``, or to a new buffer; returned)."""
        out = bytearray() if out is None else out
        self._segment(out, True, _SYN, b"", 0, ts)
        self._segment(out, False, _SYN | _ACK, b"", 0, ts)
        self._segment(out, True, _ACK, b"", 0, ts)
        return out

    def close(self, ts: int, out: bytearray | None = None) -> bytearray:
        """FIN from the client, FIN-ACK from the server, the client's last ACK."""
        out = bytearray() if out is None else out
        self._segment(out, True, _FIN | _ACK, b"", 0, ts)
        self._segment(out, False, _FIN | _ACK, b"", 0, ts)
        self._segment(out, True, _ACK, b"", 0, ts)
        return out

    def client(self, data: Buffer, ts: int, out: bytearray | None = None) -> bytearray:
        """Records of bytes the client sent (``data`` is copied into ``out``)."""
        return self._data(True, data, ts, bytearray() if out is None else out)

    def server(self, data: Buffer, ts: int, out: bytearray | None = None) -> bytearray:
        """Records of reply bytes the server sent (``data`` is copied into ``out``)."""
        return self._data(False, data, ts, bytearray() if out is None else out)

    def _data(self, from_client: bool, data: Buffer, ts: int, out: bytearray) -> bytearray:
        if self._dirs is None:
            self._span(out, from_client, data, 0, ts)
        else:
            for captured, uncaptured in self._dirs[0 if from_client else 1].feed(data):
                self._span(out, from_client, captured, uncaptured, ts)
        return out

    def _span(
        self, out: bytearray, from_client: bool, data: Buffer, uncaptured: int, ts: int
    ) -> None:
        """Segments (at most MSS each) for ``data`` followed by ``uncaptured`` bytes."""
        mv = memoryview(data)
        total = len(mv) + uncaptured
        at = 0
        while at < total:
            n = min(MSS, total - at)
            self._segment(out, from_client, _PSH | _ACK, mv[at : at + n], n, ts)
            at += n

    def _segment(
        self, out: bytearray, from_client: bool, flags: int, captured: Buffer, length: int, ts: int
    ) -> None:
        """Append one pcap record: ``length`` bytes of sequence space (SYN and FIN take one
        more), of which the first ``len(captured)`` are in the record."""
        if from_client:
            src, sport, dst, dport = self.client_ip, self.client_port, *SERVER_ADDRESS
            seq, ack = self._cseq, self._sseq
        else:
            src, sport, (dst, dport) = (
                SERVER_ADDRESS[0],
                NINEP_PORT,
                (self.client_ip, self.client_port),
            )
            seq, ack = self._sseq, self._cseq
        if flags == _SYN:
            ack = 0
        advance = length + (1 if flags & (_SYN | _FIN) else 0)
        if from_client:
            self._cseq = (seq + advance) & _U32
        else:
            self._sseq = (seq + advance) & _U32
        self._ipid = (self._ipid + 1) & 0xFFFF
        ip = _IP.pack(0x45, 0, _HEADERS + length, self._ipid, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        tcp = _TCP.pack(sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
        sec, nsec = divmod(ts, 1_000_000_000)
        out += _REC.pack(sec, nsec, _HEADERS + len(captured), _HEADERS + length)
        out += ip
        out += tcp
        out += captured


# ---------------------------------------------------------------------- reading
class PcapError(ValueError):
    """The file is not a pcap this module reads; the message says where."""


class Packet(NamedTuple):
    """One TCP segment of a 9P connection, in file order.

    ``conn`` numbers connections in the order their first segment appears; ``from_client``
    is the direction (towards port 564); ``data`` the captured payload, ``length`` its
    length in the stream (longer when not all of it was captured); ``fin`` the end of
    that direction."""

    ts: int
    conn: int
    from_client: bool
    seq: int
    data: bytes
    length: int
    fin: bool


def read_pcap(blob: Buffer) -> list[Packet]:
    """The TCP segments to or from port 564 in a classic pcap file, in file order.

    Segments whose payload repeats bytes already seen (a retransmission in a real capture)
    are kept: :class:`Packet.seq` lets a reader skip them.  Raises :class:`PcapError`."""
    mv = memoryview(blob)
    if len(mv) < _FILE_HDR.size:
        raise PcapError("shorter than a pcap file header")
    magic = struct.unpack_from("<I", mv, 0)[0]
    if magic in (_MAGIC_NS, _MAGIC_US):
        endian = "<"
    elif struct.unpack_from(">I", mv, 0)[0] in (_MAGIC_NS, _MAGIC_US):
        endian = ">"
        magic = struct.unpack_from(">I", mv, 0)[0]
    else:
        raise PcapError(f"not a classic pcap file (magic {magic:#010x}; pcapng is not read)")
    frac = 1 if magic == _MAGIC_NS else 1000
    linktype = struct.unpack_from(endian + "I", mv, 20)[0] & 0x0FFFFFFF
    if linktype == LINKTYPE_ETHERNET:
        link = 14
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        link = 0
    else:
        raise PcapError(f"link type {linktype} (want raw IPv4 or Ethernet)")
    rec = struct.Struct(endian + "IIII")
    conns: dict[tuple[bytes, int], int] = {}
    out: list[Packet] = []
    at = _FILE_HDR.size
    while at + rec.size <= len(mv):
        sec, sub, incl, _orig = rec.unpack_from(mv, at)
        at += rec.size
        if at + incl > len(mv):
            raise PcapError(f"record at byte {at - rec.size} runs past the end of the file")
        pkt = mv[at : at + incl]
        at += incl
        if link and (len(pkt) < link or bytes(pkt[12:14]) != b"\x08\x00"):
            continue  # not IPv4
        ip = pkt[link:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        if NINEP_PORT not in (sport, dport):
            continue
        from_client = dport == NINEP_PORT
        peer = (bytes(ip[12:16]), sport) if from_client else (bytes(ip[16:20]), dport)
        conn = conns.setdefault(peer, len(conns))
        off = (tcp[12] >> 4) * 4
        flags = tcp[13]
        length = total - ihl - off
        data = bytes(tcp[off : off + length])
        if flags & _SYN:
            seq = (seq + 1) & _U32
        out.append(
            Packet(
                sec * 1_000_000_000 + sub * frac,
                conn,
                from_client,
                seq,
                data,
                length,
                bool(flags & _FIN),
            )
        )
    return out


class Frame(NamedTuple):
    """One 9P frame of a recording.

    ``first`` and ``last`` index the packets (of :func:`read_pcap`'s list) holding its first
    and last byte; ``ts`` is the last one's time; ``data`` the captured bytes (the whole
    frame unless the recording is headers-only: ``len(data) < size``)."""

    conn: int
    from_client: bool
    first: int
    last: int
    ts: int
    data: bytes
    size: int


class _Reassembly:
    """One direction of one connection: segments in, whole frames out."""

    __slots__ = ("buf", "first", "next_seq", "pos", "size")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.size = 0  # of the frame being collected (0: its size field is not in yet)
        self.pos = 0  # its bytes seen, captured or not
        self.first = -1
        self.next_seq: int | None = None

    def feed(self, p: Packet, index: int) -> Iterator[Frame]:
        data, length = p.data, p.length
        if self.next_seq is not None:
            behind = (self.next_seq - p.seq) & _U32
            if behind and behind < 1 << 31:  # a retransmission: skip what was seen
                if behind >= length:
                    return
                data, length = data[behind:], length - behind
            elif p.seq != self.next_seq and length:
                raise PcapError(f"packet {index}: bytes missing from the stream (not captured)")
        self.next_seq = (p.seq + length + (1 if p.fin else 0)) & _U32
        i, captured = 0, len(data)
        while i < length:
            if not self.pos:
                self.first = index
            if self.size == 0:
                if i >= captured:
                    raise PcapError(f"packet {index}: a frame's size field was not captured")
                take = min(4 - len(self.buf), captured - i)
                self.buf += data[i : i + take]
                i += take
                self.pos += take
                if len(self.buf) == 4:
                    self.size = struct.unpack_from("<I", self.buf)[0]
                    if self.size < HEADER_SIZE:
                        raise PcapError(f"packet {index}: frame size {self.size}")
                continue
            take = min(self.size - self.pos, length - i)
            cap = max(0, min(take, captured - i))
            self.buf += data[i : i + cap]
            i += take
            self.pos += take
            if self.pos == self.size:
                yield Frame(
                    p.conn, p.from_client, self.first, index, p.ts, bytes(self.buf), self.size
                )
                self.buf.clear()
                self.size = self.pos = 0


def read_frames(packets: list[Packet]) -> list[Frame]:
    """The 9P frames of :func:`read_pcap`'s packets, in the order their last byte appears.

    Raises :class:`PcapError` when a stream has a hole (bytes missing, not merely not
    captured) or a frame header that was not captured."""
    streams: dict[tuple[int, bool], _Reassembly] = {}
    out: list[Frame] = []
    for index, p in enumerate(packets):
        r = streams.get((p.conn, p.from_client))
        if r is None:
            r = streams[p.conn, p.from_client] = _Reassembly()
        out.extend(r.feed(p, index))
    return out
