"""Privilege through attributes, and oversized names.

A gofer runs as root with CAP_FOWNER/DAC_OVERRIDE: whatever xattr it sets on the host is set with
those rights.  ``security.capability`` on a file in the export is a file capability that the
*host* kernel honours when any host user executes that file; ``trusted.overlay.*`` redirects an
overlayfs that uses the export as a layer; ``security.selinux``/``security.ima`` carry host
policy.  So only the ``user.`` namespace may be read or written by the sandbox, and xattrs of
other namespaces that the host put on export files are not shown to it.
"""

from __future__ import annotations

import os
import struct

import pytest

from gofer9p.client import P9Error
from gofer9p.protocol import constants as C

from .conftest import Esc

# VFS_CAP_REVISION_2 with cap_setuid (bit 7) permitted+effective: "run as root" for any user
FILE_CAP = struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0)

PRIVILEGED = [
    ("security.capability", FILE_CAP),
    ("trusted.overlay.redirect", b"/etc"),
    ("trusted.overlay.opaque", b"y"),
    ("security.selinux", b"system_u:object_r:shadow_t:s0"),
    ("system.posix_acl_access", b"\x02\x00\x00\x00"),
]


@pytest.mark.parametrize("name,value", PRIVILEGED, ids=[n for n, _ in PRIVILEGED])
async def test_privileged_xattr_cannot_be_set(esc: Esc, name: str, value: bytes) -> None:
    c = esc.client
    exe = esc.export / "tool"
    exe.write_bytes(b"#!/bin/sh\nid\n")
    exe.chmod(0o755)
    for target in (b"tool", b""):
        fid, _ = await c.walk(esc.root, [target] if target else [])
        try:
            await c.setxattr(fid, name.encode(), value)
        except P9Error:
            pass
    for p in (exe, esc.export):
        assert name not in os.listxattr(p, follow_symlinks=False), f"{name} was set on {p}"
    esc.assert_contained()


async def test_host_set_trusted_xattrs_are_not_shown(esc: Esc) -> None:
    """Host policy xattrs (trusted.*) on export files are neither listed nor readable."""
    c = esc.client
    f = esc.export / "f"
    f.write_bytes(b"f")
    os.setxattr(f, "trusted.g9-host-policy", b"HOST-POLICY-VALUE")
    os.setxattr(f, "user.visible", b"ok")
    fid, _ = await c.walk(esc.root, [b"f"])
    names = await c.getxattr(fid, b"")
    assert b"user.visible" in names
    assert b"trusted.g9-host-policy" not in names
    with pytest.raises(P9Error):
        await c.getxattr(fid, b"trusted.g9-host-policy")
    esc.assert_contained()


@pytest.mark.parametrize("n", [256, 4096, 65535])
async def test_oversized_names(esc: Esc, n: int) -> None:
    """Names and symlink targets longer than the host allows: clean errors, connection lives."""
    c = esc.client
    name = b"n" * n
    fid, _ = await c.walk(esc.root, [])
    for coro in (
        c.walk(esc.root, [name]),
        c.mkdir(esc.root, name),
        c.lcreate(fid, name, C.L_O_RDWR | C.L_O_CREAT, 0o644),
        c.symlink(esc.root, name, b"t"),
        c.renameat(esc.root, name, esc.root, b"x"),
        c.unlinkat(esc.root, name, 0),
    ):
        with pytest.raises(P9Error):
            await coro
    try:  # a long target is legal up to PATH_MAX-ish; past it, an error
        await c.symlink(esc.root, b"longlink", b"../" * (n // 3))
    except P9Error:
        pass
    else:
        assert os.readlink(esc.export / "longlink") == "../" * (n // 3)
    await c.getattr(esc.root)
    esc.assert_contained()
