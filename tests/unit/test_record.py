"""gofer9p.record: the pcap bytes of a recording, TCP segmentation and reassembly, headers-only."""

from __future__ import annotations

import struct

import pytest

from gofer9p.protocol import codec
from gofer9p.protocol import messages as M
from gofer9p.record import (
    FILE_HEADER,
    MSS,
    NINEP_PORT,
    PcapError,
    TcpStream,
    client_address,
    read_frames,
    read_pcap,
    redact,
)

Q = M.Qid(0x80, 1, 42)
SECRET = b"s3cr3t-name"


def _records(blob: bytes) -> list[tuple[int, int, int, bytes]]:
    """(ts ns, incl_len, orig_len, packet bytes) of every record after the file header."""
    out = []
    at = 24
    while at < len(blob):
        sec, ns, incl, orig = struct.unpack_from("<IIII", blob, at)
        at += 16
        out.append((sec * 10**9 + ns, incl, orig, blob[at : at + incl]))
        at += incl
    return out


def _session(
    stream: TcpStream, exchanges: list[tuple[M.Message, M.Message]], ts: int = 10**18
) -> bytes:
    out = bytearray(FILE_HEADER) + stream.open(ts)
    for i, (t, r) in enumerate(exchanges):
        out += stream.client(codec.encode(t), ts + 10 * i)
        out += stream.server(codec.encode(r), ts + 10 * i + 5)
    out += stream.close(ts + 10 * len(exchanges))
    return bytes(out)


def test_file_header_is_classic_pcap_raw_ipv4_nanoseconds() -> None:
    magic, major, minor, zone, sigfigs, snaplen, linktype = struct.unpack("<IHHiIII", FILE_HEADER)
    assert (magic, major, minor, zone, sigfigs, snaplen, linktype) == (
        0xA1B23C4D, 2, 4, 0, 0, 65535, 101,
    )  # fmt: skip


def test_segments_carry_valid_ipv4_and_tcp_headers_with_seq_and_ack() -> None:
    s = TcpStream(0)
    blob = _session(s, [(M.Tclunk(tag=1, fid=7), M.Rclunk(tag=1))])
    recs = _records(blob)
    # SYN, SYN-ACK, ACK, Tclunk, Rclunk, FIN, FIN, ACK
    assert len(recs) == 8
    seen = []
    for _ts, incl, orig, pkt in recs:
        assert incl == orig == len(pkt)
        ver_ihl, _, total, _, frag, _ttl, proto, _csum = struct.unpack_from("!BBHHHBBH", pkt)
        assert (ver_ihl, total, frag, proto) == (0x45, len(pkt), 0x4000, 6)
        words = struct.unpack("!10H", pkt[:20])
        folded = sum(words)
        while folded >> 16:
            folded = (folded & 0xFFFF) + (folded >> 16)
        assert folded == 0xFFFF, "IPv4 header checksum"
        sport, dport, seq, ack, off, flags = struct.unpack_from("!HHIIBB", pkt, 20)
        assert off >> 4 == 5
        seen.append((sport, dport, seq, ack, flags, pkt[40:]))
    ip, port = client_address(0)
    assert recs[0][3][12:16] == ip and recs[0][3][16:20] == bytes((10, 0, 0, 1))
    (c_syn, s_synack, c_ack, c_data, s_data, c_fin, s_fin, c_last) = seen
    assert (c_syn[0], c_syn[1], c_syn[4]) == (port, NINEP_PORT, 0x02)
    assert (s_synack[0], s_synack[1], s_synack[4], s_synack[3]) == (
        NINEP_PORT,
        port,
        0x12,
        c_syn[2] + 1,
    )
    cseq, sseq = c_syn[2] + 1, s_synack[2] + 1
    assert (c_ack[2], c_ack[3]) == (cseq, sseq)
    assert (c_data[2], c_data[3], c_data[5]) == (cseq, sseq, codec.encode(M.Tclunk(tag=1, fid=7)))
    cseq += len(c_data[5])
    assert (s_data[2], s_data[3], s_data[5]) == (sseq, cseq, codec.encode(M.Rclunk(tag=1)))
    sseq += len(s_data[5])
    assert (c_fin[2], c_fin[3], c_fin[4] & 0x01) == (cseq, sseq, 0x01)
    assert (s_fin[2], s_fin[3], s_fin[4] & 0x01) == (sseq, cseq + 1, 0x01)
    assert (c_last[2], c_last[3]) == (cseq + 1, sseq + 1)


def test_connections_get_distinct_client_addresses() -> None:
    addrs = {client_address(i) for i in range(40000)}
    assert len(addrs) == 40000
    assert all(49152 <= port <= 65535 for _, port in addrs)


def test_large_frames_are_split_at_mss_and_reassembled_both_ways() -> None:
    data_w = bytes(range(256)) * 700  # 179200 bytes: three segments and a bit
    data_r = bytes(reversed(range(256))) * 900
    t1 = M.Twrite(tag=3, fid=1, offset=5, data=data_w)
    r1 = M.Rwrite(tag=3, count=len(data_w))
    t2 = M.Tread(tag=4, fid=1, offset=0, count=len(data_r))
    r2 = M.Rread(tag=4, data=data_r)
    s = TcpStream(3)
    ts = 10**18
    blob = bytearray(FILE_HEADER) + s.open(ts)
    # the client's bytes arrive in odd pieces, a frame boundary inside one of them
    wire = codec.encode(t1) + codec.encode(t2)
    for a, b in ((0, 5), (5, 70000), (70000, len(wire))):
        blob += s.client(wire[a:b], ts)
    blob += s.server(codec.encode(r1) + codec.encode(r2), ts)
    recs = _records(bytes(blob))
    assert max(orig for _, _, orig, _ in recs) <= 65535
    assert sum(1 for _, _, orig, _ in recs if orig == 65535) >= 5  # full segments both ways
    frames = read_frames(read_pcap(bytes(blob)))
    got = [(f.from_client, codec.decode(f.data)) for f in frames]
    assert got == [(True, t1), (True, t2), (False, r1), (False, r2)]
    assert all(f.conn == 0 for f in frames)
    assert frames[3].first < frames[3].last  # spread over several packets


def test_reader_splits_connections_and_keeps_file_order() -> None:
    a, b = TcpStream(0), TcpStream(1)
    blob = bytearray(FILE_HEADER) + a.open(1) + b.open(2)
    blob += b.client(codec.encode(M.Tclunk(tag=9, fid=2)), 3)
    blob += a.client(codec.encode(M.Tclunk(tag=8, fid=1)), 4)
    blob += a.server(codec.encode(M.Rclunk(tag=8)), 5)
    frames = read_frames(read_pcap(bytes(blob)))
    assert [(f.conn, f.from_client, f.data[5], f.ts) for f in frames] == [
        (1, True, 9, 3),
        (0, True, 8, 4),
        (0, False, 8, 5),
    ]


def test_reader_refuses_what_is_not_a_pcap_and_holes() -> None:
    with pytest.raises(PcapError):
        read_pcap(b"\x0a\x0d\x0d\x0a" + bytes(40))  # pcapng
    s = TcpStream(0)
    blob = bytearray(FILE_HEADER) + s.open(1)
    s.client(codec.encode(M.Tclunk(tag=1, fid=1)), 2)  # recorded, then lost
    blob += s.client(codec.encode(M.Tclunk(tag=2, fid=1)), 3)
    with pytest.raises(PcapError, match="missing"):
        read_frames(read_pcap(bytes(blob)))


# ------------------------------------------------------------------ headers only
def test_redact_empties_every_name_and_keeps_the_numbers() -> None:
    cases: list[M.Message] = [
        M.Tattach(tag=1, fid=0, afid=0xFFFFFFFF, uname=SECRET, aname=SECRET, n_uname=1000),
        M.Twalk(tag=2, fid=0, newfid=1, wnames=[SECRET, b"b"]),
        M.Tlcreate(tag=3, fid=1, name=SECRET, flags=0o102, mode=0o600, gid=7),
        M.Trenameat(tag=4, olddirfid=1, oldname=SECRET, newdirfid=2, newname=SECRET),
        M.Txattrcreate(tag=5, fid=3, name=SECRET, attr_size=99, flags=1),
        M.Rreadlink(tag=6, target=SECRET),
        M.Tsymlink(tag=7, fid=1, name=SECRET, symtgt=SECRET, gid=3),
    ]
    for msg in cases:
        captured, uncaptured = redact(codec.encode(msg))
        assert uncaptured == 0
        assert SECRET not in captured
        back = codec.decode(captured)  # a valid frame: its size is the new one
        assert type(back) is type(msg) and back.tag == msg.tag
        for name in msg.__attrs_attrs__:
            v = getattr(msg, name.name)
            if isinstance(v, int):
                assert getattr(back, name.name) == v, name.name
    walk = codec.decode(redact(codec.encode(cases[1]))[0])
    assert isinstance(walk, M.Twalk) and walk.wnames == [b"", b""]


def test_redact_keeps_the_version_string_and_stringless_frames_whole() -> None:
    for msg in (
        M.Tversion(tag=0xFFFF, msize=8192, version=b"9P2000.L"),
        M.Rgetattr(tag=1, valid=0x7FF, qid=Q, mode=0o100644, uid=1, gid=2, nlink=1, rdev=0,
                   size=5, blksize=4096, blocks=8, atime_sec=1, atime_nsec=2, mtime_sec=3,
                   mtime_nsec=4, ctime_sec=5, ctime_nsec=6, btime_sec=0, btime_nsec=0, gen=0,
                   data_version=0),
        M.Tclunk(tag=2, fid=9),
    ):  # fmt: skip
        frame = codec.encode(msg)
        assert redact(frame) == (frame, 0)


def test_redact_cuts_data_after_count_keeping_sizes() -> None:
    secret = b"the file's secret content " * 10
    for msg, keep in (
        (M.Twrite(tag=1, fid=4, offset=77, data=secret), 23),
        (M.Rread(tag=2, data=secret), 11),
        (M.Rreaddir(tag=3, data=codec.encode_dirent(Q, 1, 4, SECRET)), 11),
    ):
        frame = codec.encode(msg)
        captured, uncaptured = redact(frame)
        assert captured == frame[:keep] and uncaptured == len(frame) - keep
        size, _, _, count = struct.unpack_from("<IBHI", captured[:7] + captured[keep - 4 : keep])
        assert size == len(frame) and count == len(frame) - keep


def test_redact_keeps_only_the_header_of_an_undecodable_frame() -> None:
    frame = struct.pack("<IBH", 20, 110, 1) + SECRET + b"xx"  # a Twalk whose body does not parse
    assert redact(frame) == (frame[:7], 13)
    unknown = struct.pack("<IBH", 12, 250, 1) + b"abcde"
    assert redact(unknown) == (unknown[:7], 5)


def test_headers_only_stream_has_no_names_or_data_and_reassembles() -> None:
    content = SECRET * 13000  # > MSS: several uncaptured segments
    exchanges = [
        (M.Tversion(tag=0xFFFF, msize=1 << 20, version=b"9P2000.L"),
         M.Rversion(tag=0xFFFF, msize=1 << 20, version=b"9P2000.L")),
        (M.Twalk(tag=1, fid=0, newfid=1, wnames=[SECRET]), M.Rwalk(tag=1, wqids=[Q])),
        (M.Twrite(tag=2, fid=1, offset=0, data=content), M.Rwrite(tag=2, count=len(content))),
        (M.Tread(tag=3, fid=1, offset=0, count=len(content)), M.Rread(tag=3, data=content)),
        (M.Tclunk(tag=4, fid=1), M.Rclunk(tag=4)),
    ]  # fmt: skip
    blob = _session(TcpStream(0, headers_only=True), exchanges)
    assert SECRET not in blob and b"s3cr3t" not in blob
    assert len(content) > 2 * MSS and len(blob) < 4000
    frames = read_frames(read_pcap(blob))
    assert [(f.from_client, f.data[4], f.size) for f in frames] == [
        (i % 2 == 0, m.TYPE, len(codec.encode(m)) if m.TYPE != 110 else 19)  # Twalk: one empty name
        for i, m in enumerate(x for pair in exchanges for x in pair)
    ]
    full = {f.data[4] for f in frames if len(f.data) == f.size}
    assert full == {100, 101, 110, 111, 116, 119, 120, 121}  # all but Twrite/Rread are whole


def test_headers_only_stops_capturing_after_a_framing_error() -> None:
    s = TcpStream(0, headers_only=True, max_frame=8192)
    s.open(1)
    bad = struct.pack("<I", 3) + SECRET  # size below 7
    blob = bytes(FILE_HEADER) + s.client(codec.encode(M.Tclunk(tag=1, fid=1)) + bad, 2)
    assert SECRET not in blob
    recs = _records(blob)
    assert sum(orig - 40 for _, _, orig, _ in recs) == 11 + len(bad)
