"""Sans-IO 9P2000.L protocol: message classes, constants and the codec."""

from . import constants
from .codec import (
    DIRENT_FIXED,
    Dirent,
    ProtocolError,
    decode,
    decode_body,
    decode_dirents,
    encode,
    encode_dirent,
)
from .framing import FRAMING_ERROR, NEED_DATA, next_frame
from .messages import ALL_MESSAGES, BY_TYPE, Message, Qid

__all__ = [
    "ALL_MESSAGES",
    "BY_TYPE",
    "DIRENT_FIXED",
    "FRAMING_ERROR",
    "NEED_DATA",
    "Dirent",
    "Message",
    "ProtocolError",
    "Qid",
    "constants",
    "decode",
    "decode_body",
    "decode_dirents",
    "encode",
    "encode_dirent",
    "next_frame",
]
