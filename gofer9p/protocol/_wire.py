"""Wire primitives shared by the codec and its generated part."""

from __future__ import annotations

import struct
from typing import Final, final

HEADER: Final = struct.Struct("<IBH")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_QID: Final = struct.Struct("<BIQ")


@final
class Qid:
    """Server's unique id for a file: type (QidType bits), version, path.

    A plain class here, not an attrs class in ``messages``: this module is compiled,
    and the server makes a qid for every file a walk, open or create reaches.  An
    attrs ``__init__`` is interpreted code, some 1,300 instructions a qid; a compiled
    class is made by a direct C call.  Same surface as before: keyword or positional
    arguments, ``==`` by value (unhashable, as attrs made it), attrs' ``repr``."""

    __slots__ = ("path", "type", "version")

    def __init__(self, type: int, version: int, path: int) -> None:
        self.type = type
        self.version = version
        self.path = path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Qid):
            return NotImplemented
        return self.type == other.type and self.version == other.version and self.path == other.path

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Qid(type={self.type!r}, version={self.version!r}, path={self.path!r})"


class ProtocolError(Exception):
    """A frame that cannot be decoded; ``field`` names what was wrong."""

    def __init__(self, message: str, field: str, detail: str = "") -> None:
        self.message = message
        self.field = field
        self.detail = detail
        text = f"{message}.{field}"
        if detail:
            text += f": {detail}"
        super().__init__(text)


def _short(message: str, fields: list[tuple[str, int]], off: int, n: int) -> None:
    """Raise for the first field of a fixed run that does not fit in ``n`` bytes."""
    for name, size in fields:
        if off + size > n:
            raise ProtocolError(message, name, f"frame too short ({n - off} bytes left)")
        off += size
    raise ProtocolError(message, fields[-1][0], "frame too short")
