"""Stand-in for the daemon in start_gofer tests: reports what it inherited, echoes on each fd.

Run by ``start_gofer(..., module="tests.daemon.fdreport")``; prints one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> None:
    args = sys.argv[1:]
    fds = [int(args[i + 1]) for i, a in enumerate(args) if a == "--io-fds"]
    open_fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    echoes = []
    for fd in fds:
        s = socket.socket(fileno=fd)
        data = s.recv(100)
        s.sendall(b"echo:" + data + f"@{fd}".encode())
        echoes.append(data.decode())
        s.detach()
    with open("/proc/self/uid_map") as f:
        uid_map = f.read().split()
    with open("/proc/self/gid_map") as f:
        gid_map = f.read().split()
    print(
        json.dumps(
            {
                "argv": args,
                "fds": fds,
                "open_fds": open_fds,
                "echoes": echoes,
                "uid_map": uid_map,
                "gid_map": gid_map,
                "ids": [os.getuid(), os.getgid()],
                "userns": os.readlink("/proc/self/ns/user"),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
