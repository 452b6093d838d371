"""daemon._serve_all's exit status and cancellation, in-process with a stub ``serve``."""

from __future__ import annotations

import errno
import socket
from typing import Any, cast

import pytest
import trio

import gofer9p.server
from gofer9p import daemon


async def _run(monkeypatch: pytest.MonkeyPatch, behaviours: list[str]) -> int:
    async def fake_serve(sock: socket.socket, point: Any, config: Any, *, name: str) -> None:
        what = behaviours[int(name[2:])]
        if what == "eof":
            await trio.sleep(0.01)
        elif what == "ioerror":
            raise OSError(errno.ECONNRESET, "reset")
        else:
            await trio.sleep_forever()

    monkeypatch.setattr(gofer9p.server, "serve", fake_serve)
    socks = [socket.socket() for _ in behaviours]
    try:
        return await daemon._serve_all(
            list(range(len(behaviours))),
            socks,
            [cast(Any, object())] * len(behaviours),
            gofer9p.server.ServerConfig(),  # (_serve_all reads its recording, None here)
        )
    finally:
        for s in socks:
            s.close()


async def test_all_eof_is_0(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _run(monkeypatch, ["eof", "eof", "eof"]) == 0


async def test_one_io_error_is_1_after_the_others_end(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _run(monkeypatch, ["eof", "ioerror", "eof"]) == 1


async def test_io_error_does_not_stop_other_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.move_on_after(0.3) as scope:
        await _run(monkeypatch, ["ioerror", "forever"])
    assert scope.cancelled_caught  # still serving the healthy connection
