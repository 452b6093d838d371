"""What #15's confinement steps cost a gofer's start: chroot vs --setup-root, Landlock.

    python benchmarks/confine_steps.py -n 200      # root

Each round forks a child that does one step, as a gofer does it (a fresh child each time: a
mount namespace and a Landlock domain are for good), and reports its time in microseconds:

* ``chroot_tree``: the default (private mount namespace, bind of the rootfs, chroot) for a
  bundle with two 9P mounts, one through a symlink;
* ``pivot_tree``: ``--setup-root`` for the same bundle (tmpfs, binds with checked flags,
  pivot_root, detach);
* ``landlock``: ``landlock.restrict`` with the three attach points' rules (after
  no_new_privs), cold (the first call in the child) and warm (after a ruleset was built and
  closed, as a fork-server's pre-forked child does in its warm-up).

Medians and minimums; the machine's load average is printed beside them (busy machines
swing the medians a lot; the minimums are the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gofer9p import confine, landlock
from gofer9p.spec import load_spec


def _bundle(tmp: Path) -> str:
    (tmp / "rootfs" / "srv" / "b").mkdir(parents=True)
    (tmp / "rootfs" / "data").mkdir()  # mount points: the default mode does not make them
    (tmp / "rootfs" / "lnk").symlink_to("srv")
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    doc = {
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/data", "type": "bind", "source": "a", "options": ["rbind", "ro"]},
            {"destination": "/lnk/b", "type": "bind", "source": "b", "options": ["rbind"]},
        ],
    }
    (tmp / "config.json").write_text(json.dumps(doc))
    return str(tmp)


def _in_child(step: Callable[[], float]) -> float:
    """Run ``step`` in a fresh child; its result (microseconds)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, repr(step()).encode())
        except BaseException as e:
            os.write(2, f"step failed: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return float(out)


def _tree(pivot: bool, bundle: str) -> Callable[[], float]:
    def step() -> float:
        spec = load_spec(bundle)
        t0 = time.perf_counter_ns()
        (confine.pivot_tree if pivot else confine.chroot_tree)(spec).close()
        return (time.perf_counter_ns() - t0) / 1000

    return step


def _landlock(warm: bool, bundle: str) -> Callable[[], float]:
    def step() -> float:
        import prctl

        tree = confine.chroot_tree(load_spec(bundle))
        points = [(tree.root_fd, False, True), *((m.fd, True, True) for m in tree.mounts)]
        if warm:
            os.close(landlock.make_ruleset(points, landlock.abi()))
        prctl.set_no_new_privs(1)
        t0 = time.perf_counter_ns()
        landlock.restrict(points, "require")
        return (time.perf_counter_ns() - t0) / 1000

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=100, help="rounds (default 100)")
    args = p.parse_args()
    landlock.abi()
    with tempfile.TemporaryDirectory(prefix="gofer9p-confine-bench-") as tmp:
        bundle = _bundle(Path(tmp))
        kinds = {
            "chroot_tree": _tree(False, bundle),
            "pivot_tree (--setup-root)": _tree(True, bundle),
            "landlock, cold": _landlock(False, bundle),
            "landlock, warm": _landlock(True, bundle),
        }
        times: dict[str, list[float]] = {k: [] for k in kinds}
        load0 = os.getloadavg()[0]
        for _ in range(args.n):  # interleaved: load changes hit every kind alike
            for k, step in kinds.items():
                times[k].append(_in_child(step))
        load1 = os.getloadavg()[0]
    print(f"n={args.n}, load average {load0:.2f}-{load1:.2f}; microseconds")
    print(f"{'step':28} {'median':>8} {'min':>8}")
    for k, ts in times.items():
        print(f"{k:28} {statistics.median(ts):8.0f} {min(ts):8.0f}")


if __name__ == "__main__":
    main()
