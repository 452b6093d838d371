"""``gofer9p gofer --max-fids N``: the fids one connection may hold, lowered by its manager."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from .conftest import Gofer, make_bundle
from .ninep import NineP


@pytest.mark.parametrize("how", ["flag", "option"])
@pytest.mark.parametrize("via", ["spawn", "fork"])
def test_max_fids_caps_each_connection(tmp_path: Path, via: str, how: str) -> None:
    """With ``--max-fids 4`` (given as a flag, or as ``start_gofer(max_fids=4)``) a connection
    holds 4 fids (the attach's included): a walk or an attach past them is EMFILE and changes
    nothing, a clunk makes room again, and every connection has its own 4."""
    bundle = make_bundle(tmp_path, mounts=[("/m", "m", ["rbind"])])
    (bundle / "rootfs" / "m").mkdir()
    (bundle / "m").mkdir()
    kw: dict[str, Any] = {"extra_args": ["--max-fids", "4"]} if how == "flag" else {"max_fids": 4}
    g = Gofer(tmp_path, bundle, via=via, **kw)
    try:
        cs = [NineP(s) for s in g.sockets]
        for c in cs:
            c.version()
            c.attach(1)
            for fid in (2, 3, 4):
                c.walk(1, fid)
            with pytest.raises(OSError) as ei:
                c.walk(1, 5)
            assert ei.value.errno == errno.EMFILE
            with pytest.raises(OSError) as ei:
                c.attach(6)
            assert ei.value.errno == errno.EMFILE
            with pytest.raises(OSError) as ei:
                c.getattr(5)  # not made
            assert ei.value.errno == errno.EBADF
            c.clunk(4)
            c.walk(1, 5)
            assert c.getattr(5)["mode"]
        for c in cs:
            c.sock.close()
        assert g.wait() == 0
    finally:
        g.stop()
