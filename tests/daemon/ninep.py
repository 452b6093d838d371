"""A minimal blocking raw 9P2000.L client for the daemon tests.

Independent of ``gofer9p.client`` and ``gofer9p.protocol`` on purpose: the daemon tests check the
process from the outside, byte by byte, and must not share a bug with the code under test.
"""

from __future__ import annotations

import socket
import struct

RLERROR = 7
NOFID = 0xFFFFFFFF
O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0, 1, 2, 0o100, 0o1000


class NineP:
    """One connection; one request in flight at a time; Rlerror raises ``OSError(errno)``."""

    def __init__(self, sock: socket.socket, msize: int = 65536) -> None:
        self.sock = sock
        self.sock.settimeout(15)
        self.tag = 0
        self.msize = msize
        self.root_qid = b""

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed by the gofer")
            buf += chunk
        return buf

    def rpc(self, mtype: int, body: bytes, *, tag: int | None = None) -> bytes:
        if tag is None:
            self.tag = (self.tag + 1) % 0xFFFF
            tag = self.tag
        self.sock.sendall(struct.pack("<IBH", 7 + len(body), mtype, tag) + body)
        size, rtype, rtag = struct.unpack("<IBH", self._recv_exact(7))
        rbody = self._recv_exact(size - 7)
        assert rtag == tag, (rtag, tag)
        if rtype == RLERROR:
            (ecode,) = struct.unpack("<I", rbody[:4])
            raise OSError(ecode, f"Rlerror {ecode}")
        assert rtype == mtype + 1, (rtype, mtype)
        return rbody

    @staticmethod
    def s(b: bytes) -> bytes:
        return struct.pack("<H", len(b)) + b

    def version(self) -> tuple[int, bytes]:
        r = self.rpc(100, struct.pack("<I", self.msize) + self.s(b"9P2000.L"), tag=0xFFFF)
        msize, n = struct.unpack("<IH", r[:6])
        self.msize = msize
        return msize, r[6 : 6 + n]

    def attach(
        self, fid: int, uname: bytes = b"root", aname: bytes = b"", n_uname: int = 0
    ) -> bytes:
        return self.rpc(
            104,
            struct.pack("<II", fid, NOFID)
            + self.s(uname)
            + self.s(aname)
            + struct.pack("<I", n_uname),
        )

    def walk(self, fid: int, newfid: int, *names: bytes) -> list[bytes]:
        body = struct.pack("<IIH", fid, newfid, len(names)) + b"".join(self.s(n) for n in names)
        r = self.rpc(110, body)
        (n,) = struct.unpack("<H", r[:2])
        return [r[2 + 13 * i : 15 + 13 * i] for i in range(n)]

    def getattr(self, fid: int, mask: int = 0x7FF) -> dict[str, int]:
        r = self.rpc(24, struct.pack("<IQ", fid, mask))
        valid = struct.unpack("<Q", r[:8])[0]
        mode, uid, gid, nlink, _rdev, size = struct.unpack("<IIIQQQ", r[21:57])
        return {"valid": valid, "mode": mode, "uid": uid, "gid": gid, "nlink": nlink, "size": size}

    def lopen(self, fid: int, flags: int) -> None:
        self.rpc(12, struct.pack("<II", fid, flags))

    def lcreate(
        self, fid: int, name: bytes, flags: int = O_RDWR, mode: int = 0o644, gid: int = 0
    ) -> None:
        self.rpc(14, struct.pack("<I", fid) + self.s(name) + struct.pack("<III", flags, mode, gid))

    def mkdir(self, dfid: int, name: bytes, mode: int = 0o755, gid: int = 0) -> None:
        self.rpc(72, struct.pack("<I", dfid) + self.s(name) + struct.pack("<II", mode, gid))

    def read(self, fid: int, offset: int, count: int) -> bytes:
        r = self.rpc(116, struct.pack("<IQI", fid, offset, count))
        (n,) = struct.unpack("<I", r[:4])
        return r[4 : 4 + n]

    def write(self, fid: int, offset: int, data: bytes) -> int:
        r = self.rpc(118, struct.pack("<IQI", fid, offset, len(data)) + data)
        return int(struct.unpack("<I", r[:4])[0])

    def readlink(self, fid: int) -> bytes:
        r = self.rpc(22, struct.pack("<I", fid))
        (n,) = struct.unpack("<H", r[:2])
        return r[2 : 2 + n]

    def fsync(self, fid: int) -> None:
        self.rpc(50, struct.pack("<II", fid, 0))

    def clunk(self, fid: int) -> None:
        self.rpc(120, struct.pack("<I", fid))

    def read_file(self, root: int, *path: bytes, fid: int = 900) -> bytes:
        """Walk, open read-only, read everything, clunk."""
        self.walk(root, fid, *path)
        try:
            self.lopen(fid, O_RDONLY)
            out = b""
            while True:
                chunk = self.read(fid, len(out), 8192)
                if not chunk:
                    return out
                out += chunk
        finally:
            self.clunk(fid)

    def write_file(
        self, root: int, dirpath: tuple[bytes, ...], name: bytes, data: bytes, fid: int = 901
    ) -> None:
        """Walk to the directory, Tlcreate ``name``, write ``data``, clunk."""
        self.walk(root, fid, *dirpath)
        try:
            self.lcreate(fid, name, O_RDWR | O_TRUNC)
            assert self.write(fid, 0, data) == len(data)
        finally:
            self.clunk(fid)
