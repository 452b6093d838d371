"""Host fds per idle file fid: N files of one directory walked as fids, for one or several trees.

The Linux client's lookups: each file is walked by one name from the directory's fid (as a
dentry's fid is walked from its parent's), or (``--clone``) from a clone of that directory
fid.  The fids are not opened, and the budget is far above them (nothing is reclaimed), so
what is held is what a fid costs.  Counted two ways: the fds the process holds more than
before (/proc/self/fd) and what the fid table charges (``fds_charged``).

    python benchmarks/fds_per_fid.py --tree base=/tmp/base --tree tree=. [--files 10000]

Each tree runs in its own subprocess with PYTHONPATH=PATH (``gofer9p.attach.Backend`` only),
its fd limit raised as far as allowed: with a parent fd per file fid, 10,000 files need
20,002 fds (more than a hard limit of 20,000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _measure(files: int, clone: bool) -> dict[str, float]:
    from gofer9p.attach import AttachPoint, Backend
    from gofer9p.server import raise_fd_limit

    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "d")
        os.mkdir(d)
        for i in range(files):
            with open(os.path.join(d, f"f{i}"), "wb"):
                pass
        point = AttachPoint.open(tmp)
        be = Backend(point, max_fids=files + 16)
        before = len(os.listdir("/proc/self/fd"))
        be.attach(0, 0, b"")
        be.walk(0, 1, [b"d"])
        for i in range(files):
            src = 1
            if clone:
                be.walk(1, 2)
                src = 2
            be.walk(src, 100 + i, [f"f{i}".encode()])
            if clone:
                be.clunk(2)
        held = len(os.listdir("/proc/self/fd")) - before
        charged = be.fds_charged()
        be.close()
        point.close()
    return {"held": held, "charged": charged, "per_fid": held / files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--clone", action="store_true", help="walk each file from a clone")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_measure(args.files, args.clone)))
        return
    for spec in args.tree or [f"tree={os.getcwd()}"]:
        name, _, path = spec.partition("=")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
        argv = [sys.executable, __file__, "--child", "--files", str(args.files)]
        out = subprocess.run(
            argv + (["--clone"] if args.clone else []),
            env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
        r = json.loads(out.stdout)
        print(f"{name:8} {args.files} file fids{' (from clones)' if args.clone else ''}: "
              f"{r['held']} host fds held, {r['charged']} charged, "
              f"{r['per_fid']:.3f} per file fid")


if __name__ == "__main__":
    main()
