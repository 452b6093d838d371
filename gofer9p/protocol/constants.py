"""9P2000.L wire constants (see shared/9p2000L.md).

Kept in one module so that the codec, the server and the attach layer agree on
one set of numbers; nothing here imports anything.
"""

from __future__ import annotations

import enum
from typing import Final

VERSION_9P2000L: Final = b"9P2000.L"
VERSION_UNKNOWN: Final = b"unknown"

NOTAG: Final = 0xFFFF
NOFID: Final = 0xFFFFFFFF
NONUNAME: Final = 0xFFFFFFFF
MAXWELEM: Final = 16

HEADER_SIZE: Final = 7  # size[4] type[1] tag[2]
IOHDRSZ: Final = 24
READDIRHDRSZ: Final = 24
QID_SIZE: Final = 13


class MsgType(enum.IntEnum):
    TLERROR = 6
    RLERROR = 7
    TSTATFS = 8
    RSTATFS = 9
    TLOPEN = 12
    RLOPEN = 13
    TLCREATE = 14
    RLCREATE = 15
    TSYMLINK = 16
    RSYMLINK = 17
    TMKNOD = 18
    RMKNOD = 19
    TRENAME = 20
    RRENAME = 21
    TREADLINK = 22
    RREADLINK = 23
    TGETATTR = 24
    RGETATTR = 25
    TSETATTR = 26
    RSETATTR = 27
    TXATTRWALK = 30
    RXATTRWALK = 31
    TXATTRCREATE = 32
    RXATTRCREATE = 33
    TREADDIR = 40
    RREADDIR = 41
    TFSYNC = 50
    RFSYNC = 51
    TLOCK = 52
    RLOCK = 53
    TGETLOCK = 54
    RGETLOCK = 55
    TLINK = 70
    RLINK = 71
    TMKDIR = 72
    RMKDIR = 73
    TRENAMEAT = 74
    RRENAMEAT = 75
    TUNLINKAT = 76
    RUNLINKAT = 77
    TVERSION = 100
    RVERSION = 101
    TAUTH = 102
    RAUTH = 103
    TATTACH = 104
    RATTACH = 105
    TERROR = 106
    RERROR = 107
    TFLUSH = 108
    RFLUSH = 109
    TWALK = 110
    RWALK = 111
    TOPEN = 112
    ROPEN = 113
    TCREATE = 114
    RCREATE = 115
    TREAD = 116
    RREAD = 117
    TWRITE = 118
    RWRITE = 119
    TCLUNK = 120
    RCLUNK = 121
    TREMOVE = 122
    RREMOVE = 123
    TSTAT = 124
    RSTAT = 125
    TWSTAT = 126
    RWSTAT = 127


class QidType(enum.IntFlag):
    FILE = 0x00
    LINK = 0x01
    SYMLINK = 0x02
    TMP = 0x04
    AUTH = 0x08
    MOUNT = 0x10
    EXCL = 0x20
    APPEND = 0x40
    DIR = 0x80


# Tgetattr request_mask / Rgetattr valid
GETATTR_MODE: Final = 0x1
GETATTR_NLINK: Final = 0x2
GETATTR_UID: Final = 0x4
GETATTR_GID: Final = 0x8
GETATTR_RDEV: Final = 0x10
GETATTR_ATIME: Final = 0x20
GETATTR_MTIME: Final = 0x40
GETATTR_CTIME: Final = 0x80
GETATTR_INO: Final = 0x100
GETATTR_SIZE: Final = 0x200
GETATTR_BLOCKS: Final = 0x400
GETATTR_BASIC: Final = 0x7FF
GETATTR_BTIME: Final = 0x800
GETATTR_GEN: Final = 0x1000
GETATTR_DATA_VERSION: Final = 0x2000
GETATTR_ALL: Final = 0x3FFF

# Tsetattr valid
SETATTR_MODE: Final = 0x1
SETATTR_UID: Final = 0x2
SETATTR_GID: Final = 0x4
SETATTR_SIZE: Final = 0x8
SETATTR_ATIME: Final = 0x10
SETATTR_MTIME: Final = 0x20
SETATTR_CTIME: Final = 0x40
SETATTR_ATIME_SET: Final = 0x80
SETATTR_MTIME_SET: Final = 0x100

# Linux x86-64 open flags as carried by Tlopen / Tlcreate
L_O_RDONLY: Final = 0
L_O_WRONLY: Final = 1
L_O_RDWR: Final = 2
L_O_ACCMODE: Final = 3
L_O_CREAT: Final = 0o100
L_O_EXCL: Final = 0o200
L_O_NOCTTY: Final = 0o400
L_O_TRUNC: Final = 0o1000
L_O_APPEND: Final = 0o2000
L_O_NONBLOCK: Final = 0o4000
L_O_DSYNC: Final = 0o10000
L_O_FASYNC: Final = 0o20000
L_O_DIRECT: Final = 0o40000
L_O_LARGEFILE: Final = 0o100000
L_O_DIRECTORY: Final = 0o200000
L_O_NOFOLLOW: Final = 0o400000
L_O_NOATIME: Final = 0o1000000
L_O_CLOEXEC: Final = 0o2000000
L_O_SYNC: Final = 0o4010000

AT_REMOVEDIR: Final = 0x200

XATTR_CREATE: Final = 1
XATTR_REPLACE: Final = 2

LOCK_TYPE_RDLCK: Final = 0
LOCK_TYPE_WRLCK: Final = 1
LOCK_TYPE_UNLCK: Final = 2
LOCK_FLAGS_BLOCK: Final = 1
LOCK_FLAGS_RECLAIM: Final = 2
LOCK_SUCCESS: Final = 0
LOCK_BLOCKED: Final = 1
LOCK_ERROR: Final = 2
LOCK_GRACE: Final = 3

DT_UNKNOWN: Final = 0
DT_FIFO: Final = 1
DT_CHR: Final = 2
DT_DIR: Final = 4
DT_BLK: Final = 6
DT_REG: Final = 8
DT_LNK: Final = 10
DT_SOCK: Final = 12
