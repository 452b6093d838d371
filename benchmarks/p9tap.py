"""Relay one 9P connection to a server and count what goes through it: requests per type,
Rlerror per (type, errno), reply bytes, and the server's latency per type (from the tap).

    python benchmarks/p9tap.py OUT FD -- SERVER ARGV...

The tap takes over the connection at the inherited fd FD, starts SERVER ARGV with the other
end of a socketpair at the same fd number (so ``{fd}`` in a harness's command template means
the same to the server), relays both ways and, when the client closes, writes OUT (JSON:
``counts``, ``median_us``, ``mean_us``, ``reply_bytes``, ``errors``; keys are message
types) before it stops the server.  ``{pid}`` in OUT becomes the tap's pid, for a harness
that spawns several servers.  It wraps any server, gofer9p or diod, in any harness that spawns one on an inherited
fd: p9bench's ``--server-cmd 'python benchmarks/p9tap.py OUT {fd} -- diod ... -r {fd} ...'``,
or the guest workload's spawns.  Session 12 used it to see that the Linux v9fs client sends
gofer9p and diod the same requests for the guest workload (benchmarks/README.md).

The latency is the tap's: from its relaying a request to its receiving the reply, so it
includes a wake-up of the server and of the tap; compare servers through the same tap.
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, fd, server = argv[0].replace("{pid}", str(os.getpid())), int(argv[1]), argv[3:]
    outer = socket.socket(fileno=os.dup(fd))
    a, b = socket.socketpair()  # (before fd is reused: a must not land on it)
    os.dup2(b.fileno(), fd)
    b.close()
    proc = subprocess.Popen(server, pass_fds=[fd])
    os.close(fd)
    counts: collections.Counter[int] = collections.Counter()
    lat: dict[int, list[float]] = collections.defaultdict(list)
    rbytes: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    sent: dict[int, tuple[int, float]] = {}
    bufs = {outer: bytearray(), a: bytearray()}
    peer = {outer: a, a: outer}
    done = False
    while not done:
        ready, _, _ = select.select([outer, a], [], [])
        for s in ready:
            data = s.recv(1 << 20)
            if not data:
                done = True
                break
            peer[s].sendall(data)
            now = time.monotonic()
            buf = bufs[s]
            buf += data
            while len(buf) >= 7:
                size, mtype, tag = struct.unpack_from("<IBH", buf)
                if len(buf) < size:
                    break
                if s is outer:  # a request
                    counts[mtype] += 1
                    sent[tag] = (mtype, now)
                elif tag in sent:  # its reply
                    t, at = sent.pop(tag)
                    lat[t].append(now - at)
                    rbytes[t] += size
                    if mtype == 7 and size >= 11:
                        errors[f"{t}:{struct.unpack_from('<I', buf, 7)[0]}"] += 1
                del buf[:size]
    res = {
        "counts": dict(sorted(counts.items())),
        "median_us": {k: round(1e6 * sorted(v)[len(v) // 2], 1) for k, v in sorted(lat.items())},
        "mean_us": {k: round(1e6 * sum(v) / len(v), 1) for k, v in sorted(lat.items())},
        "reply_bytes": dict(sorted(rbytes.items())),
        "errors": dict(errors),
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    outer.close()
    a.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
