"""``gofer9p client ADDRESS OP [PATH]``: poke a 9P server with the bundled client.

A newcomer's way to see a served directory without a VM: list, read, stat,
write (stdin), mkdir and remove through real 9P requests.
"""

from __future__ import annotations

import argparse
import stat
import sys

import trio

from .client import P9Error, connect
from .protocol import constants as C


async def _run(args: argparse.Namespace) -> int:
    async with connect(args.address) as c:
        root = await c.attach(uname=str(args.uid), n_uname=args.uid)
        path: str = args.path.strip("/")
        parent, _, leaf = path.rpartition("/")
        if args.op == "ls":
            fid = await c.walk_to(root, path)
            await c.lopen(fid, C.L_O_RDONLY | C.L_O_DIRECTORY)
            for ent in sorted(await c.readdir_all(fid), key=lambda e: e.name):
                if ent.name in (b".", b".."):
                    continue
                kind = (
                    "d"
                    if ent.qid.type & C.QidType.DIR
                    else ("l" if ent.qid.type & C.QidType.SYMLINK else "-")
                )
                print(f"{kind} {ent.name.decode(errors='replace')}")
        elif args.op == "cat":
            fid = await c.walk_to(root, path)
            await c.lopen(fid, C.L_O_RDONLY)
            sys.stdout.buffer.write(await c.read_all(fid))
        elif args.op == "stat":
            fid = await c.walk_to(root, path)
            a = await c.getattr(fid)
            print(
                f"mode={stat.filemode(a.mode)} ({a.mode:o}) uid={a.uid} gid={a.gid} "
                f"size={a.size} nlink={a.nlink} mtime={a.mtime_sec}.{a.mtime_nsec:09d} "
                f"qid=({a.qid.type:#x},{a.qid.version},{a.qid.path:#x})"
            )
        elif args.op == "put":
            dfid = await c.walk_to(root, parent)
            await c.lcreate(dfid, leaf, C.L_O_WRONLY | C.L_O_TRUNC, 0o644)
            await c.write_all(dfid, sys.stdin.buffer.read())
            await c.clunk(dfid)
        elif args.op == "mkdir":
            dfid = await c.walk_to(root, parent)
            await c.mkdir(dfid, leaf, 0o755)
        elif args.op == "rm":
            dfid = await c.walk_to(root, parent)
            fid = await c.walk_to(dfid, leaf)
            a = await c.getattr(fid, C.GETATTR_MODE)
            flags = C.AT_REMOVEDIR if stat.S_ISDIR(a.mode) else 0
            await c.unlinkat(dfid, leaf, flags)
        elif args.op == "df":
            fid = await c.walk_to(root, path)
            s = await c.statfs(fid)
            print(
                f"bsize={s.bsize} blocks={s.blocks} bfree={s.bfree} bavail={s.bavail} "
                f"files={s.files} ffree={s.ffree} namelen={s.namelen}"
            )
    return 0


def run_client_command(args: argparse.Namespace) -> int:
    try:
        return trio.run(_run, args)
    except P9Error as e:
        print(f"gofer9p client: {args.op} {args.path}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gofer9p client: {args.address}: {e}", file=sys.stderr)
        return 1
