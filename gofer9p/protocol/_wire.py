"""Wire primitives shared by the codec and its generated part."""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("<IBH")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_QID: Final = struct.Struct("<BIQ")


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
