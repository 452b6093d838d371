"""Generates ``_generated.py``: one specialised decoder and encoder per message.

Run ``python -m gofer9p.protocol._codegen`` after changing a message layout in
``messages.py``; ``tests/unit/test_codec.py`` fails while the committed file is
stale.  Generating source once (instead of ``exec`` at import) keeps the
gofer's start-up free of ~60 ``compile`` calls; Python caches the bytecode.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from .messages import BY_TYPE, Message

_FIXED = {"b": ("B", 1), "w": ("H", 2), "d": ("I", 4), "q": ("Q", 8), "Q": ("BIQ", 13)}


def _parse_fields(spec: str) -> list[tuple[str, str]]:
    return [tuple(f.split(":", 1)) for f in spec.split()]  # type: ignore[misc]


def _gen(cls: type[Message]) -> str:
    """Python source of ``_dec_<Name>(b, tag)`` and ``_enc_<Name>(m)`` for one class."""
    name = cls.__name__
    fields = _parse_fields(cls.FIELDS)
    dec = [f"def _dec_{name}(b, tag):", "    n = len(b)", "    off = 0"]
    enc = [f"def _enc_{name}(m):", "    parts = [None]"]
    args: list[str] = []
    i = 0
    sidx = 0
    while i < len(fields):
        fname, code = fields[i]
        if code in _FIXED:
            # gather a run of fixed-size fields into one struct
            run: list[tuple[str, str]] = []
            while i < len(fields) and fields[i][1] in _FIXED:
                run.append(fields[i])
                i += 1
            fmt = "<" + "".join(_FIXED[c][0] for _, c in run)
            sname = f"_S_{name}_{sidx}"
            sidx += 1
            size = struct.calcsize(fmt)
            sizes = [(fn, _FIXED[c][1]) for fn, c in run]
            dec.append(f"    if off + {size} > n: _short({name!r}, {sizes!r}, off, n)")
            vars_ = []
            encvals = []
            for fn, c in run:
                if c == "Q":
                    vars_ += [f"{fn}_t", f"{fn}_v", f"{fn}_p"]
                    encvals += [f"m.{fn}.type", f"m.{fn}.version", f"m.{fn}.path"]
                    args.append(f"{fn}=Qid({fn}_t, {fn}_v, {fn}_p)")
                else:
                    vars_.append(f"v_{fn}")
                    encvals.append(f"m.{fn}")
                    args.append(f"{fn}=v_{fn}")
            dec.append(f"    {', '.join(vars_)}, = {sname}.unpack_from(b, off)")
            dec.append(f"    off += {size}")
            enc.append(f"    parts.append({sname}.pack({', '.join(encvals)}))")
            dec.insert(0, f"{sname} = struct.Struct({fmt!r})")
            continue
        i += 1
        if code == "s":
            dec += [
                f"    if off + 2 > n: _short({name!r}, [({fname!r}, 2)], off, n)",
                "    ln = b[off] | (b[off + 1] << 8)",
                "    off += 2",
                f"    if off + ln > n: raise ProtocolError({name!r}, {fname!r}, "
                "'string longer than frame')",
                f"    v_{fname} = bytes(b[off:off + ln])",
                "    off += ln",
            ]
            enc += [
                f"    v = m.{fname}",
                "    if isinstance(v, str): v = v.encode()",
                f"    if len(v) > 0xFFFF: raise ValueError({(name + '.' + fname)!r} + ' too long')",
                "    parts.append(_U16.pack(len(v)))",
                "    parts.append(v)",
            ]
        elif code == "D":
            dec += [
                f"    if off + 4 > n: _short({name!r}, [('count', 4)], off, n)",
                "    ln, = _U32.unpack_from(b, off)",
                "    off += 4",
                f"    if off + ln > n: raise ProtocolError({name!r}, 'count', "
                "f'count {ln} exceeds the {n - off} bytes of data')",
                f"    v_{fname} = b[off:off + ln]",
                "    off += ln",
            ]
            enc += [
                f"    v = m.{fname}",
                "    parts.append(_U32.pack(len(v)))",
                "    parts.append(v)",
            ]
        elif code == "S*":
            dec += [
                f"    if off + 2 > n: _short({name!r}, [('nwname', 2)], off, n)",
                "    cnt = b[off] | (b[off + 1] << 8)",
                "    off += 2",
                f"    if cnt > MAXWELEM: raise ProtocolError({name!r}, 'nwname', "
                "f'{cnt} names, more than 16')",
                f"    v_{fname} = []",
                "    for _ in range(cnt):",
                f"        if off + 2 > n: _short({name!r}, [({fname!r}, 2)], off, n)",
                "        ln = b[off] | (b[off + 1] << 8)",
                "        off += 2",
                f"        if off + ln > n: raise ProtocolError({name!r}, {fname!r}, "
                "'string longer than frame')",
                f"        v_{fname}.append(bytes(b[off:off + ln]))",
                "        off += ln",
            ]
            enc += [
                f"    v = m.{fname}",
                "    parts.append(_U16.pack(len(v)))",
                "    for s in v:",
                "        if isinstance(s, str): s = s.encode()",
                "        parts.append(_U16.pack(len(s)))",
                "        parts.append(s)",
            ]
        elif code == "Q*":
            dec += [
                f"    if off + 2 > n: _short({name!r}, [('nwqid', 2)], off, n)",
                "    cnt = b[off] | (b[off + 1] << 8)",
                "    off += 2",
                f"    if cnt > MAXWELEM: raise ProtocolError({name!r}, 'nwqid', "
                "f'{cnt} qids, more than 16')",
                f"    if off + 13 * cnt > n: raise ProtocolError({name!r}, {fname!r}, "
                "'frame too short')",
                f"    v_{fname} = [Qid(*_QID.unpack_from(b, off + 13 * k)) for k in range(cnt)]",
                "    off += 13 * cnt",
            ]
            enc += [
                f"    v = m.{fname}",
                "    parts.append(_U16.pack(len(v)))",
                "    for q in v:",
                "        parts.append(_QID.pack(q.type, q.version, q.path))",
            ]
        else:  # pragma: no cover - table error
            raise AssertionError(f"bad field code {code!r} in {name}")
        args.append(f"{fname}=v_{fname}")
    dec.append(
        f"    if off != n: raise ProtocolError({name!r}, 'size', "
        "f'{n - off} trailing bytes after the last field')"
    )
    dec.append(f"    return {name}(tag=tag{''.join(', ' + a for a in args)})")
    enc += [
        "    body = b''.join(parts[1:])",
        f"    return _HEADER.pack(7 + len(body), {cls.TYPE}, m.tag) + body",
    ]
    fast = _fast_encoder(cls, fields)
    if fast is not None:
        enc = fast
    return "\n".join(dec) + "\n\n" + "\n".join(enc) + "\n"


def _fast_encoder(cls: type[Message], fields: list[tuple[str, str]]) -> list[str] | None:
    """One ``struct.pack`` for the header and every fixed field (plus the count
    and one concatenation when the message ends with a data field): the shape of
    most replies on the server's hot path (Rgetattr, Rwalk of nothing, Rclunk,
    Rwrite, Rlopen, Rlcreate, Rreaddir...).  None for other layouts."""
    name = cls.__name__
    data = None
    if fields and fields[-1][1] == "D":
        data = fields[-1][0]
        fields = fields[:-1]
    if any(c not in _FIXED for _, c in fields):
        return None
    fmt = "<IBH" + "".join(_FIXED[c][0] for _, c in fields) + ("I" if data else "")
    size = struct.calcsize(fmt)
    vals = ["m.tag"]
    for fn, c in fields:
        if c == "Q":
            vals += [f"m.{fn}.type", f"m.{fn}.version", f"m.{fn}.path"]
        else:
            vals.append(f"m.{fn}")
    sname = f"_E_{name}"
    if data is None:
        return [
            f"{sname} = struct.Struct({fmt!r})",
            f"def _enc_{name}(m):",
            f"    return {sname}.pack({size}, {cls.TYPE}, {', '.join(vals)})",
        ]
    return [
        f"{sname} = struct.Struct({fmt!r})",
        f"def _enc_{name}(m):",
        f"    v = m.{data}",
        "    ln = len(v)",
        f"    return {sname}.pack({size} + ln, {cls.TYPE}, {', '.join(vals)}, ln) + v",
    ]


def generate() -> str:
    """The whole source of ``_generated.py``."""
    names = ", ".join(sorted(cls.__name__ for cls in BY_TYPE.values()))
    head = (
        '"""GENERATED by gofer9p/protocol/_codegen.py from messages.py: do not edit."""\n'
        "# ruff: noqa\n"
        "# mypy: ignore-errors\n"
        "import struct\n\n"
        "from ._wire import _short, ProtocolError, _U16, _U32, _QID, HEADER as _HEADER\n"
        "from .constants import MAXWELEM\n"
        f"from .messages import Qid, {names}\n\n"
    )
    body = "\n".join(_gen(cls) for cls in BY_TYPE.values())
    tables = (
        "\nDECODERS = {\n"
        + "".join(f"    {t}: _dec_{cls.__name__},\n" for t, cls in BY_TYPE.items())
        + "}\n\nENCODERS = {\n"
        + "".join(f"    {cls.__name__}: _enc_{cls.__name__},\n" for cls in BY_TYPE.values())
        + "}\n"
    )
    return head + body + tables


TARGET = Path(__file__).with_name("_generated.py")

if __name__ == "__main__":
    TARGET.write_text(generate())
    print(f"wrote {TARGET}", file=sys.stderr)
