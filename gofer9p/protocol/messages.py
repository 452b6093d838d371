"""Every 9P2000.L message as a small attrs class.

One class per T- and R-message, field names exactly as in shared/9p2000L.md.
``FIELDS`` is the wire layout the codec compiles (``codec.py``): ``b w d q``
integers, ``s`` a string (kept as ``bytes``: 9P names need not be UTF-8),
``Q`` a qid, ``S*``/``Q*`` a ``w``-counted list of strings/qids, ``D`` a
``d``-counted byte payload (Tread/Twrite/Rreaddir data).  Classes are mutable
slotted attrs classes rather than frozen ones because construction speed is on
the server's hot path.  (Generated once from a table, then kept as source.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import attrs

from ._wire import Qid as Qid  # (re-exported: every message with a qid names it from here)

Buffer = bytes | bytearray | memoryview


@attrs.define(slots=True, eq=False, repr=False)
class Message:
    """Base of every message; ``tag`` is the first field of all of them.

    Subclasses are declared with ``eq=False, repr=False`` and share the generic
    ``__eq__``/``__repr__`` below: attrs would otherwise generate (compile) two
    more methods per class at import, which doubles the import cost of this
    module and the gofer's start-up time is a measured target.
    """

    TYPE: ClassVar[int] = -1
    FIELDS: ClassVar[str] = ""
    if TYPE_CHECKING:
        tag: int  # every subclass declares it as its first field

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, a.name) == getattr(other, a.name) for a in self.__attrs_attrs__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = []
        for a in self.__attrs_attrs__:
            v = getattr(self, a.name)
            if isinstance(v, memoryview):
                v = bytes(v[:64]) + (b"..." if len(v) > 64 else b"")
            parts.append(f"{a.name}={v!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@attrs.define(slots=True, eq=False, repr=False)
class Rlerror(Message):
    TYPE: ClassVar[int] = 7
    FIELDS: ClassVar[str] = "ecode:d"
    tag: int
    ecode: int


@attrs.define(slots=True, eq=False, repr=False)
class Tstatfs(Message):
    TYPE: ClassVar[int] = 8
    FIELDS: ClassVar[str] = "fid:d"
    tag: int
    fid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rstatfs(Message):
    TYPE: ClassVar[int] = 9
    FIELDS: ClassVar[str] = (
        "type:d bsize:d blocks:q bfree:q bavail:q files:q ffree:q fsid:q namelen:d"
    )
    tag: int
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int


@attrs.define(slots=True, eq=False, repr=False)
class Tlopen(Message):
    TYPE: ClassVar[int] = 12
    FIELDS: ClassVar[str] = "fid:d flags:d"
    tag: int
    fid: int
    flags: int


@attrs.define(slots=True, eq=False, repr=False)
class Rlopen(Message):
    TYPE: ClassVar[int] = 13
    FIELDS: ClassVar[str] = "qid:Q iounit:d"
    tag: int
    qid: Qid
    iounit: int


@attrs.define(slots=True, eq=False, repr=False)
class Tlcreate(Message):
    TYPE: ClassVar[int] = 14
    FIELDS: ClassVar[str] = "fid:d name:s flags:d mode:d gid:d"
    tag: int
    fid: int
    name: bytes
    flags: int
    mode: int
    gid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rlcreate(Message):
    TYPE: ClassVar[int] = 15
    FIELDS: ClassVar[str] = "qid:Q iounit:d"
    tag: int
    qid: Qid
    iounit: int


@attrs.define(slots=True, eq=False, repr=False)
class Tsymlink(Message):
    TYPE: ClassVar[int] = 16
    FIELDS: ClassVar[str] = "fid:d name:s symtgt:s gid:d"
    tag: int
    fid: int
    name: bytes
    symtgt: bytes
    gid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rsymlink(Message):
    TYPE: ClassVar[int] = 17
    FIELDS: ClassVar[str] = "qid:Q"
    tag: int
    qid: Qid


@attrs.define(slots=True, eq=False, repr=False)
class Tmknod(Message):
    TYPE: ClassVar[int] = 18
    FIELDS: ClassVar[str] = "dfid:d name:s mode:d major:d minor:d gid:d"
    tag: int
    dfid: int
    name: bytes
    mode: int
    major: int
    minor: int
    gid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rmknod(Message):
    TYPE: ClassVar[int] = 19
    FIELDS: ClassVar[str] = "qid:Q"
    tag: int
    qid: Qid


@attrs.define(slots=True, eq=False, repr=False)
class Trename(Message):
    TYPE: ClassVar[int] = 20
    FIELDS: ClassVar[str] = "fid:d dfid:d name:s"
    tag: int
    fid: int
    dfid: int
    name: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rrename(Message):
    TYPE: ClassVar[int] = 21
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Treadlink(Message):
    TYPE: ClassVar[int] = 22
    FIELDS: ClassVar[str] = "fid:d"
    tag: int
    fid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rreadlink(Message):
    TYPE: ClassVar[int] = 23
    FIELDS: ClassVar[str] = "target:s"
    tag: int
    target: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Tgetattr(Message):
    TYPE: ClassVar[int] = 24
    FIELDS: ClassVar[str] = "fid:d request_mask:q"
    tag: int
    fid: int
    request_mask: int


@attrs.define(slots=True, eq=False, repr=False)
class Rgetattr(Message):
    TYPE: ClassVar[int] = 25
    FIELDS: ClassVar[str] = (
        "valid:q qid:Q mode:d uid:d gid:d nlink:q rdev:q size:q blksize:q blocks:q atime_sec:q atime_nsec:q mtime_sec:q mtime_nsec:q ctime_sec:q ctime_nsec:q btime_sec:q btime_nsec:q gen:q data_version:q"
    )
    tag: int
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int
    btime_nsec: int
    gen: int
    data_version: int


@attrs.define(slots=True, eq=False, repr=False)
class Tsetattr(Message):
    TYPE: ClassVar[int] = 26
    FIELDS: ClassVar[str] = (
        "fid:d valid:d mode:d uid:d gid:d size:q atime_sec:q atime_nsec:q mtime_sec:q mtime_nsec:q"
    )
    tag: int
    fid: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int


@attrs.define(slots=True, eq=False, repr=False)
class Rsetattr(Message):
    TYPE: ClassVar[int] = 27
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Txattrwalk(Message):
    TYPE: ClassVar[int] = 30
    FIELDS: ClassVar[str] = "fid:d newfid:d name:s"
    tag: int
    fid: int
    newfid: int
    name: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rxattrwalk(Message):
    TYPE: ClassVar[int] = 31
    FIELDS: ClassVar[str] = "size:q"
    tag: int
    size: int


@attrs.define(slots=True, eq=False, repr=False)
class Txattrcreate(Message):
    TYPE: ClassVar[int] = 32
    FIELDS: ClassVar[str] = "fid:d name:s attr_size:q flags:d"
    tag: int
    fid: int
    name: bytes
    attr_size: int
    flags: int


@attrs.define(slots=True, eq=False, repr=False)
class Rxattrcreate(Message):
    TYPE: ClassVar[int] = 33
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Treaddir(Message):
    TYPE: ClassVar[int] = 40
    FIELDS: ClassVar[str] = "fid:d offset:q count:d"
    tag: int
    fid: int
    offset: int
    count: int


@attrs.define(slots=True, eq=False, repr=False)
class Rreaddir(Message):
    TYPE: ClassVar[int] = 41
    FIELDS: ClassVar[str] = "data:D"
    tag: int
    data: Buffer


@attrs.define(slots=True, eq=False, repr=False)
class Tfsync(Message):
    TYPE: ClassVar[int] = 50
    FIELDS: ClassVar[str] = "fid:d datasync:d"
    tag: int
    fid: int
    datasync: int


@attrs.define(slots=True, eq=False, repr=False)
class Rfsync(Message):
    TYPE: ClassVar[int] = 51
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Tlock(Message):
    TYPE: ClassVar[int] = 52
    FIELDS: ClassVar[str] = "fid:d type:b flags:d start:q length:q proc_id:d client_id:s"
    tag: int
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rlock(Message):
    TYPE: ClassVar[int] = 53
    FIELDS: ClassVar[str] = "status:b"
    tag: int
    status: int


@attrs.define(slots=True, eq=False, repr=False)
class Tgetlock(Message):
    TYPE: ClassVar[int] = 54
    FIELDS: ClassVar[str] = "fid:d type:b start:q length:q proc_id:d client_id:s"
    tag: int
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rgetlock(Message):
    TYPE: ClassVar[int] = 55
    FIELDS: ClassVar[str] = "type:b start:q length:q proc_id:d client_id:s"
    tag: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Tlink(Message):
    TYPE: ClassVar[int] = 70
    FIELDS: ClassVar[str] = "dfid:d fid:d name:s"
    tag: int
    dfid: int
    fid: int
    name: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rlink(Message):
    TYPE: ClassVar[int] = 71
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Tmkdir(Message):
    TYPE: ClassVar[int] = 72
    FIELDS: ClassVar[str] = "dfid:d name:s mode:d gid:d"
    tag: int
    dfid: int
    name: bytes
    mode: int
    gid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rmkdir(Message):
    TYPE: ClassVar[int] = 73
    FIELDS: ClassVar[str] = "qid:Q"
    tag: int
    qid: Qid


@attrs.define(slots=True, eq=False, repr=False)
class Trenameat(Message):
    TYPE: ClassVar[int] = 74
    FIELDS: ClassVar[str] = "olddirfid:d oldname:s newdirfid:d newname:s"
    tag: int
    olddirfid: int
    oldname: bytes
    newdirfid: int
    newname: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rrenameat(Message):
    TYPE: ClassVar[int] = 75
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Tunlinkat(Message):
    TYPE: ClassVar[int] = 76
    FIELDS: ClassVar[str] = "dirfid:d name:s flags:d"
    tag: int
    dirfid: int
    name: bytes
    flags: int


@attrs.define(slots=True, eq=False, repr=False)
class Runlinkat(Message):
    TYPE: ClassVar[int] = 77
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Tversion(Message):
    TYPE: ClassVar[int] = 100
    FIELDS: ClassVar[str] = "msize:d version:s"
    tag: int
    msize: int
    version: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Rversion(Message):
    TYPE: ClassVar[int] = 101
    FIELDS: ClassVar[str] = "msize:d version:s"
    tag: int
    msize: int
    version: bytes


@attrs.define(slots=True, eq=False, repr=False)
class Tauth(Message):
    TYPE: ClassVar[int] = 102
    FIELDS: ClassVar[str] = "afid:d uname:s aname:s n_uname:d"
    tag: int
    afid: int
    uname: bytes
    aname: bytes
    n_uname: int


@attrs.define(slots=True, eq=False, repr=False)
class Rauth(Message):
    TYPE: ClassVar[int] = 103
    FIELDS: ClassVar[str] = "aqid:Q"
    tag: int
    aqid: Qid


@attrs.define(slots=True, eq=False, repr=False)
class Tattach(Message):
    TYPE: ClassVar[int] = 104
    FIELDS: ClassVar[str] = "fid:d afid:d uname:s aname:s n_uname:d"
    tag: int
    fid: int
    afid: int
    uname: bytes
    aname: bytes
    n_uname: int


@attrs.define(slots=True, eq=False, repr=False)
class Rattach(Message):
    TYPE: ClassVar[int] = 105
    FIELDS: ClassVar[str] = "qid:Q"
    tag: int
    qid: Qid


@attrs.define(slots=True, eq=False, repr=False)
class Tflush(Message):
    TYPE: ClassVar[int] = 108
    FIELDS: ClassVar[str] = "oldtag:w"
    tag: int
    oldtag: int


@attrs.define(slots=True, eq=False, repr=False)
class Rflush(Message):
    TYPE: ClassVar[int] = 109
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Twalk(Message):
    TYPE: ClassVar[int] = 110
    FIELDS: ClassVar[str] = "fid:d newfid:d wnames:S*"
    tag: int
    fid: int
    newfid: int
    wnames: list[bytes]


@attrs.define(slots=True, eq=False, repr=False)
class Rwalk(Message):
    TYPE: ClassVar[int] = 111
    FIELDS: ClassVar[str] = "wqids:Q*"
    tag: int
    wqids: list[Qid]


@attrs.define(slots=True, eq=False, repr=False)
class Tread(Message):
    TYPE: ClassVar[int] = 116
    FIELDS: ClassVar[str] = "fid:d offset:q count:d"
    tag: int
    fid: int
    offset: int
    count: int


@attrs.define(slots=True, eq=False, repr=False)
class Rread(Message):
    TYPE: ClassVar[int] = 117
    FIELDS: ClassVar[str] = "data:D"
    tag: int
    data: Buffer


@attrs.define(slots=True, eq=False, repr=False)
class Twrite(Message):
    TYPE: ClassVar[int] = 118
    FIELDS: ClassVar[str] = "fid:d offset:q data:D"
    tag: int
    fid: int
    offset: int
    data: Buffer


@attrs.define(slots=True, eq=False, repr=False)
class Rwrite(Message):
    TYPE: ClassVar[int] = 119
    FIELDS: ClassVar[str] = "count:d"
    tag: int
    count: int


@attrs.define(slots=True, eq=False, repr=False)
class Tclunk(Message):
    TYPE: ClassVar[int] = 120
    FIELDS: ClassVar[str] = "fid:d"
    tag: int
    fid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rclunk(Message):
    TYPE: ClassVar[int] = 121
    FIELDS: ClassVar[str] = ""
    tag: int


@attrs.define(slots=True, eq=False, repr=False)
class Tremove(Message):
    TYPE: ClassVar[int] = 122
    FIELDS: ClassVar[str] = "fid:d"
    tag: int
    fid: int


@attrs.define(slots=True, eq=False, repr=False)
class Rremove(Message):
    TYPE: ClassVar[int] = 123
    FIELDS: ClassVar[str] = ""
    tag: int


ALL_MESSAGES: tuple[type[Message], ...] = (
    Rlerror,
    Tstatfs,
    Rstatfs,
    Tlopen,
    Rlopen,
    Tlcreate,
    Rlcreate,
    Tsymlink,
    Rsymlink,
    Tmknod,
    Rmknod,
    Trename,
    Rrename,
    Treadlink,
    Rreadlink,
    Tgetattr,
    Rgetattr,
    Tsetattr,
    Rsetattr,
    Txattrwalk,
    Rxattrwalk,
    Txattrcreate,
    Rxattrcreate,
    Treaddir,
    Rreaddir,
    Tfsync,
    Rfsync,
    Tlock,
    Rlock,
    Tgetlock,
    Rgetlock,
    Tlink,
    Rlink,
    Tmkdir,
    Rmkdir,
    Trenameat,
    Rrenameat,
    Tunlinkat,
    Runlinkat,
    Tversion,
    Rversion,
    Tauth,
    Rauth,
    Tattach,
    Rattach,
    Tflush,
    Rflush,
    Twalk,
    Rwalk,
    Tread,
    Rread,
    Twrite,
    Rwrite,
    Tclunk,
    Rclunk,
    Tremove,
    Rremove,
)
BY_TYPE: dict[int, type[Message]] = {m.TYPE: m for m in ALL_MESSAGES}
