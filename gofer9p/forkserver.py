"""The warm fork-server: ``gofer9p forkserver --socket unix:PATH`` (or ``--fd N``).

A fresh gofer pays for the interpreter and trio's import on every start.  The fork-server pays
once: it imports everything a gofer needs, starts no thread and no trio run, freezes its heap
(:func:`gc.freeze`) and then forks one child per request.  The child becomes a full gofer by
calling :func:`gofer9p.daemon.run`, the very function ``gofer9p gofer`` runs (bundle, chroot,
attach points, caps, no_new_privs, seccomp), on io-fds the requester passed with SCM_RIGHTS; the
pages the parent loaded stay shared copy-on-write.  Nothing sandbox-specific runs in the parent:
it never reads a bundle and never chroots; a request is an argument list and fds to it.

``--prefork N`` (default 1) keeps N children forked ahead of requests: each drops the server's
fds, runs the generic part of a gofer's start (:func:`_warm_up`: the flags, log and spec
parsers, attach points, the seccomp program with its pid written in, and a throw-away gofer
serving Tversion/Tattach/Tclunk on a socketpair: their copy-on-write faults and first runs are
most of a forked start), drops from its bounding set what the gofer will
(:func:`gofer9p.confine.drop_bounding_ahead`), then starts the gofer's trio run and waits in it on its own
socketpair (:meth:`_Server._serve_when_asked`: the request finds the loop running, and
:func:`gofer9p.daemon.run_in_loop` does the whole confined start there before any client
byte is read); a request goes to the oldest, with its fds, and the pool is refilled once the server has been idle for 10 ms (a refill never
competes with a start; the server then re-faults its own request path, :func:`_rehearse`).
With the pool empty a request forks on the spot.  Both kinds place the request's
fds with the same :func:`_place_fds`.

Control protocol (its constants and record encoding: :mod:`gofer9p.forkproto`): a unix
``SOCK_SEQPACKET`` socket, one JSON object per record.

* request: ``{"op": "start", "args": [gofer flags], "fds": ["io", "io", "stderr"]}`` with the fds
  attached (SCM_RIGHTS) in the order ``fds`` names their roles: ``io`` (one per attach point, in
  attach order; the child has them at fds 3, 4, ... with ``--io-fds``, as a spawned gofer), ``stdout``, ``stderr`` (at most one
  each; default: the fork-server's own), ``userns`` (a pipe's read end: the child unshares a
  user namespace, says ``userns`` on its start pipe and waits for one byte ``g`` there once
  the requester has written its id maps, as :func:`gofer9p.launch.start_gofer` does),
  ``spec``, ``mounts``, ``stats`` (a bound, listening unix stream socket) and ``record`` (an
  fd open for writing), at most one each: the child gets them as ``--spec-fd N`` /
  ``--mounts-fd N`` / ``--stats-fd N`` / ``--record-fd N`` (see :data:`gofer9p.forkproto.ROLE_FLAGS`).
  ``args`` are ``gofer9p gofer``'s flags minus ``--io-fds`` and those four; flags without
  fds (``--setup-root``, ``--landlock``, ``--record-headers-only``) pass through ``args``
  as they are.
* reply, one per request, in order: ``{"pid": P}`` with a pidfd of the child and the read end of
  its *start pipe* attached, or ``{"error": "one line"}`` (a malformed request; nothing forked).
  The child writes one line to the start pipe: ``ok`` once its bundle, fds, root and attach
  points are set up and checked (it drops its capabilities, sets no_new_privs, Landlock and
  seccomp next, and reads no client byte before; see :class:`gofer9p.daemon.StartReport`), or
  the gofer's one error line (``gofer9p gofer: error: ...``) before it exits 2 (after
  ``userns`` for a user-namespace gofer); EOF without a line means it died first.
* claim: ``{"op": "claim"}`` (no fds).  The server hands the oldest pre-forked child to the
  connection: ``{"claim": P}`` with a pidfd of it and the server's end of its socket attached
  (the server keeps no end), or first ``{"claim": null, "later": true}`` when its pool is
  empty and then that record once it has forked one (the pool refills as after a start); at
  most one claim per connection waits.  ``{"claim": null}``: no pool (``--prefork 0``, or
  forking failed).  The requester later sends a start request, the same record with the same
  fds plus the start pipe's write end last, straight to that socket: the child checks it as
  the server would (an error is ``fork-server: ...`` on the start pipe, exit 2) and starts
  as a handed-over request does; the server still reaps it and reports its exit on the
  claiming connection.  Closing the socket unused ends the child (exit 0), and until its
  request arrives a pre-forked child is killed with the server (``PR_SET_PDEATHSIG``).
* later, on the same connection: ``{"pid": P, "exit": N}`` when that child has exited, ``N`` as
  :attr:`subprocess.Popen.returncode` (negative: killed by that signal).  The server is the
  children's parent and reaps them (SIGCHLD wakes its loop through
  :func:`signal.set_wakeup_fd`; no thread).  A connection may carry any number of requests; when
  it closes, its children keep running and their statuses are dropped.

Who may ask: the peer's SO_PEERCRED uid must be the fork-server's own or one given with
``--allow-uid``; anyone else gets one ``{"error": ...}`` line and the connection is closed.  An
allowed uid can make a root gofer serve any host directory: allow only the manager's.

Isolation (a child against the parent and its siblings), beside two separately spawned gofers:

* a child runs in its own session (``setsid``): no signal to the server's process group or
  terminal reaches it, and it never shares one with a sibling;
* it keeps no fd but its own: the listener, every control connection, the server's wake-up pipe,
  the pre-forked children's sockets and pidfds are closed before it runs any gofer code (a
  pre-forked child: before its warm-up), and it is forked when the server holds no other
  request's fds, so it cannot reach the server or a sibling (its seccomp filter also has no
  ``connect``);
* the server and every child are non-dumpable (PR_SET_DUMPABLE 0), so a process of the same uid
  without CAP_SYS_PTRACE (a confined gofer drops it) can neither ptrace them nor open their
  ``/proc/PID/mem``; seccomp kills on ptrace, kill, tkill and pidfd calls, and lets tgkill and
  prlimit64 name only the gofer itself;
* no PR_SET_PDEATHSIG: a gofer must keep serving when the fork-server dies; its exit status is
  then lost (see :class:`gofer9p.launch.PidfdProcess`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import syscalls
from .daemon import EXIT_SETUP
from .forkproto import MAX_FDS, MAX_REQUEST, ROLE_FLAGS, ROLES_ONCE, parse_address, record

__all__ = ["main", "run"]

#: The pool of pre-forked children is refilled after this long without an event (s), so a
#: refill never competes with a request or a gofer that is starting.
_REFILL_AFTER = 0.01
_STDIO_TARGET = {"stdout": 1, "stderr": 2}
_PR_SET_PDEATHSIG = 1


def _log(msg: str) -> None:
    print(f"gofer9p forkserver: {msg}", file=sys.stderr, flush=True)


class _RequestError(Exception):
    """A malformed request; ``str(err)`` is the one line sent back."""


def _parse_request(data: bytes, nfds: int) -> tuple[list[str], list[str]] | None:
    """``(args, roles)`` of a start request, None for a claim; the parent looks at nothing
    else in it.  A pre-forked child checks the request it receives with it too (one from a
    requester that claimed it never passed the server)."""
    try:
        req = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _RequestError("request is not a JSON object") from None
    if isinstance(req, dict) and req.get("op") == "claim":
        if nfds:
            raise _RequestError("a claim passes no fds")
        return None
    if not isinstance(req, dict) or req.get("op") != "start":
        raise _RequestError('request must be {"op": "start", "args": [...], "fds": [...]}')
    args, roles = req.get("args"), req.get("fds")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _RequestError('"args" must be a list of strings')
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise _RequestError('"fds" must be a list of role names')
    if len(roles) != nfds:
        raise _RequestError(f'"fds" names {len(roles)} fds but {nfds} were passed')
    for r in roles:
        if r not in ("io", *ROLES_ONCE):
            raise _RequestError(f"unknown fd role {r!r} (io, {', '.join(ROLES_ONCE)})")
    for r in ROLES_ONCE:
        if roles.count(r) > 1:
            raise _RequestError(f"fd role {r!r} given twice")
    if any(a == "--io-fds" or a.startswith("--io-fds=") for a in args):
        raise _RequestError('pass the io sockets as "io" fds, not --io-fds')
    for role, flag in ROLE_FLAGS.items():
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise _RequestError(f'pass {flag}\'s fd as a "{role}" fd, not as a flag')
    return args, roles


def _rehearse() -> None:
    """Run the server's part of a request on a dummy one, just after a fork, while idle.

    A fork makes every page of the server copy-on-write again (the new child shares them), so
    the next request's own code would take ~70 page-copy faults in the server (~0.1 ms of
    every start).  This takes the same faults now: a record with an fd through a socketpair,
    :func:`_parse_request`, the records of a hand-over and a reply, and a claim's (its
    request and answers).  Nothing leaves the process.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        req = record({"op": "start", "args": ["--bundle", "/"], "fds": ["io"]})
        socket.send_fds(a, [req], [a.fileno()])
        data, fds, _flags, _ = socket.recv_fds(b, MAX_REQUEST, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        for fd in fds:
            os.close(fd)
        args, roles = _parse_request(data, len(fds)) or ([], [])
        record({"op": "start", "args": args, "fds": roles})
        record({"pid": os.getpid()})
        _parse_request(record({"op": "claim"}), 0)
        record({"claim": None, "later": True})
        record({"claim": os.getpid()})
    except (OSError, _RequestError):
        pass  # only a rehearsal: the real request reports its own errors
    finally:
        a.close()
        b.close()


class _StartPipe:
    """The child's :class:`gofer9p.daemon.StartReport`: one line on the start pipe, then close."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _say(self, line: str) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, line.encode(errors="replace") + b"\n")
        except OSError:
            pass  # the requester gave up; it learns the outcome from the exit status
        os.close(self.fd)
        self.fd = -1

    def ready(self) -> None:
        self._say("ok")

    def failed(self, line: str) -> None:
        self._say(line.replace("\n", " | "))


class _Server:
    """The parent's loop: accept, check the peer, fork per request, reap, report exits."""

    def __init__(
        self,
        allowed: set[int],
        after_confine: Callable[[], None] | None,
        prefork: int = 0,
    ) -> None:
        self.allowed = allowed
        self.after_confine = after_confine
        self.prefork = prefork
        self.idle: list[_Idle] = []  # pre-forked children, oldest first
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.owner: dict[int, socket.socket] = {}  # live child pid -> requesting connection
        self.claims: list[socket.socket] = []  # connections waiting for a claimed child
        self.exit_with_conn = False  # --fd given a connection: its EOF ends the server
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wake)

    # --- setup ---------------------------------------------------------------------------

    def listen_on(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, self._on_accept)

    def add_conn(self, conn: socket.socket) -> None:
        """Take a control connection, or refuse it (one error record) by its peer's uid."""
        _pid, uid, _gid = struct.unpack(
            "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )
        if uid not in self.allowed:
            line = (
                f"uid {uid} may not use this fork-server (allowed: "
                + ", ".join(map(str, sorted(self.allowed)))
                + ")"
            )
            _log(f"refused a connection: {line}")
            with contextlib.suppress(OSError):
                conn.send(record({"error": line}))
            conn.close()
            if self.exit_with_conn:
                self.stopping = True  # the only connection it would ever have
            return
        conn.setblocking(False)
        self.conns.add(conn)
        self.sel.register(conn, selectors.EVENT_READ, lambda: self._on_conn(conn))

    # --- the loop ------------------------------------------------------------------------

    def serve(self) -> int:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda s, f: None)  # the wake-up fd does the work
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        self._reap()  # a child that exited before the handler was in place
        while not self.stopping:
            short = len(self.idle) < self.prefork
            events = self.sel.select(_REFILL_AFTER if short else None)
            if short and not events:
                self._prefork()  # only once nothing else waits: never ahead of a request
                _rehearse()  # the fork made the server's pages copy-on-write: fault them now
            for key, _ in events:
                try:
                    key.data()
                except Exception as e:  # a bug must cost one request, not the server
                    _log(f"internal error: {type(e).__name__}: {e}")
                if self.stopping:
                    break
        for conn in list(self.conns):
            self._close(conn)
        for idle in self.idle:
            idle.close()  # EOF: they exit
        return 0

    def _on_stop(self, signum: int, frame: object) -> None:
        _log(f"{signal.Signals(signum).name} received: exiting (gofers keep serving)")
        self.stopping = True

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 256):
                pass
        self._reap()

    def _on_accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as e:  # EMFILE & co.: the listener outlives it
            _log(f"accept failed: {e.strerror or e}")
            time.sleep(0.01)
            return
        self.add_conn(conn)

    def _close(self, conn: socket.socket) -> None:
        if conn in self.claims:
            self.claims.remove(conn)
        if conn in self.conns:
            self.conns.discard(conn)
            self.sel.unregister(conn)
            conn.close()
            if self.exit_with_conn:
                self.stopping = True

    def _on_conn(self, conn: socket.socket) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(
                conn, MAX_REQUEST, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        try:
            if not data and not fds:
                self._close(conn)  # the requester is gone; its children keep serving
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise _RequestError(f"request larger than {MAX_REQUEST} bytes or {MAX_FDS} fds")
            parsed = _parse_request(data, len(fds))
            if parsed is None:
                self._claim(conn)
            else:
                self._start(conn, *parsed, fds)
        except _RequestError as e:
            self._send(conn, {"error": str(e)})
        finally:
            for fd in fds:
                os.close(fd)

    def _send(self, conn: socket.socket, obj: dict[str, Any], fds: Sequence[int] = ()) -> None:
        try:
            socket.send_fds(conn, [record(obj)], list(fds))
        except OSError as e:  # a requester that stopped reading loses its connection
            _log(f"reply to a requester failed ({e.strerror or e}): closing its connection")
            self._close(conn)

    def _start(
        self, conn: socket.socket, args: list[str], roles: list[str], fds: list[int]
    ) -> None:
        while self.idle:
            if self._hand_over(conn, args, roles, fds):
                return
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            # Objects from here on are frozen too: the child's collections never touch (and so
            # never dirty) a page the parent filled.  Collect first, so no garbage is frozen.
            gc.collect()
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                self._child(args, roles, fds, status_w)  # never returns
            os.close(status_w)
            status_w = -1
            try:
                pidfd = os.pidfd_open(pid)  # not reaped yet (only _reap reaps): still ours
            except OSError:
                os.kill(pid, signal.SIGKILL)  # unreaped, so the pid cannot have been reused
                raise
            self.owner[pid] = conn
            try:
                self._send(conn, {"pid": pid}, [pidfd, status_r])
            finally:
                os.close(pidfd)
        except OSError as e:
            raise _RequestError(f"cannot start a gofer: {e.strerror or e}") from None
        finally:
            os.close(status_r)
            if status_w >= 0:
                os.close(status_w)

    def _hand_over(
        self, conn: socket.socket, args: list[str], roles: list[str], fds: list[int]
    ) -> bool:
        """Give the request to the oldest pre-forked child; False if it is gone."""
        idle = self.idle.pop(0)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                req = record({"op": "start", "args": args, "fds": roles})
                socket.send_fds(idle.sock, [req], [*fds, status_w])
            except OSError:
                return False  # it died; _reap collects it
            self.owner[idle.pid] = conn
            self._send(conn, {"pid": idle.pid}, [idle.pidfd, status_r])
            return True
        finally:
            idle.close()
            os.close(status_r)
            os.close(status_w)

    def _claim(self, conn: socket.socket) -> None:
        """A claim: the oldest pre-forked child's socket and pidfd go to ``conn`` (now, or once
        the pool has one: ``{"claim": null, "later": true}`` says so first); no pool: null."""
        if conn in self.claims:
            self._send(conn, {"claim": None, "error": "a claim of this connection is pending"})
            return
        self.claims.append(conn)
        self._serve_claims()
        if conn in self.claims:
            self._send(conn, {"claim": None, "later": True})

    def _serve_claims(self) -> None:
        """Hand pre-forked children to the waiting claims, oldest first; with no pool (none
        kept, or forking failed) answer them null."""
        while self.claims and (self.idle or not self.prefork):
            conn = self.claims.pop(0)
            if not self.idle:
                self._send(conn, {"claim": None})
                continue
            idle = self.idle.pop(0)
            try:
                self.owner[idle.pid] = conn  # it reports the exit, as for a start
                self._send(conn, {"claim": idle.pid}, [idle.pidfd, idle.sock.fileno()])
            finally:
                idle.close()  # ours closed: the requester's end is the child's only peer

    def _prefork(self) -> None:
        """Fork one child that waits (warm) for a request."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server = os.getpid()
        try:
            gc.collect()
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                mine.detach()  # the fd goes with the others in _detach; the object forgets it
                self._idle_child(theirs, server)  # never returns
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                os.kill(pid, signal.SIGKILL)
                raise
        except OSError as e:
            mine.close()
            _log(f"cannot pre-fork a gofer: {e.strerror or e}")
            self.prefork = len(self.idle)  # stop trying; requests fork on demand
            self._serve_claims()
            return
        finally:
            theirs.close()
        self.idle.append(_Idle(pid, pidfd, mine))
        self._serve_claims()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for idle in [i for i in self.idle if i.pid == pid]:  # died before its request
                self.idle.remove(idle)
                idle.close()
            conn = self.owner.pop(pid, None)
            if conn is not None and conn in self.conns:
                self._send(conn, {"pid": pid, "exit": os.waitstatus_to_exitcode(status)})

    # --- the child -----------------------------------------------------------------------

    def _child(self, args: list[str], roles: list[str], fds: list[int], status_w: int) -> NoReturn:
        """Forked for a request: drop everything of the server's, then become the gofer."""
        rc = 1
        report = _StartPipe(status_w)
        try:
            self._detach({status_w, *fds})
            argv = _place_fds(args, roles, fds, report)
            if isinstance(argv, int):
                rc = argv
            else:
                from . import daemon

                rc = daemon.run(argv, after_confine=self.after_confine, report=report)
        except BaseException as e:  # nothing may return into the server's loop
            report.failed(f"gofer9p forkserver: child: {type(e).__name__}: {e}")
        finally:
            _exit(rc)

    def _idle_child(self, sock: socket.socket, server: int) -> NoReturn:
        """Forked ahead of a request: drop the server's fds, warm up, wait for the request.

        The warm-up (:func:`_warm_up`) runs the generic part of a gofer's start, serving
        included, so its copy-on-write faults are paid while idle.  Then the child starts the
        gofer's trio run and waits inside it (:meth:`_serve_when_asked`): the request finds
        the loop running, ~0.7 ms of a start.  Its fds 3, 4, ... are held for the io sockets
        by :func:`_reserve_low_fds` first, so trio's own fds sit above them.  EOF on ``sock``
        (the server stopped or died while it held the other end) ends it; until its request
        arrives it is also killed when the server dies (``PR_SET_PDEATHSIG``), so a child
        claimed by a requester (:meth:`_claim`: the requester holds that end) never outlives
        the server unused.
        """
        rc = 1
        report = _StartPipe(-1)
        try:
            self._detach({sock.fileno()})
            syscalls.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != server:  # it died before the line above took effect
                _exit(0)
            with contextlib.suppress(Exception):  # a failed warm-up only makes the start slower
                _warm_up()
            from . import confine

            with contextlib.suppress(confine.ConfineError):  # then the gofer drops them all
                confine.drop_bounding_ahead()
            if _reserve_low_fds(sock.fileno()):
                import trio

                rc = trio.run(self._serve_when_asked, sock, report)
            else:  # an fd limit too low to hold them: take the request, then start trio
                argv = _take_request(sock, report, False)
                if isinstance(argv, int):
                    rc = argv
                else:
                    from . import daemon

                    rc = daemon.run(argv, after_confine=self.after_confine, report=report)
        except BaseException as e:
            report.failed(f"gofer9p forkserver: child: {type(e).__name__}: {e}")
        finally:
            _exit(rc)

    async def _serve_when_asked(self, sock: socket.socket, report: _StartPipe) -> int:
        """A pre-forked child's trio run: wait for the request, then become that gofer.

        The wait is a blocking ``recvmsg`` inside the run, once trio's own start-up tasks have
        run (one checkpoint): the loop has nothing else to do, and waking up through trio's
        epoll took ~0.15 ms more than the plain read.  Nothing of the request is read before
        it arrives; from then on the gofer's whole start (:func:`gofer9p.daemon.run_in_loop`:
        spec, confinement) runs before it reads a byte from a client.
        """
        import trio

        from . import daemon

        await trio.lowlevel.checkpoint()
        argv = _take_request(sock, report, True)
        if isinstance(argv, int):
            return argv
        return await daemon.run_in_loop(argv, after_confine=self.after_confine, report=report)

    def _detach(self, keep: set[int]) -> None:
        """In a fresh child: own session, default signals, none of the server's fds."""
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        gc.enable()
        # Close the server's objects by name (so no stale object could later close a reused
        # number), then every fd that is not this child's.
        self.sel.close()
        if self.listener is not None:
            self.listener.close()
        for conn in self.conns:
            conn.close()
        for idle in self.idle:
            idle.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        lo = 0
        for fd in sorted({0, 1, 2, *keep}):
            if lo < fd:  # closerange(n, n) is close_range(n, n - 1): everything from n
                os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 1 << 30)


def _reserve_low_fds(keep: int) -> bool:
    """Hold fds 3 .. 3 + MAX_FDS - 1 (all but ``keep``) with /dev/null for the io sockets.

    A pre-forked child starts trio before its request; trio's fds would otherwise take the
    lowest numbers, where :func:`_place_fds` puts the io sockets (at 3, 4, ... as for a
    spawned gofer).  :func:`_take_request` closes what the request does not fill.  False (and
    nothing held) when the fd limit is too low for them.
    """
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    held = [null]
    try:
        for fd in range(3, 3 + MAX_FDS):
            if fd not in (keep, null):
                os.dup2(null, fd, inheritable=False)
                held.append(fd)
    except OSError:  # EBADF: above RLIMIT_NOFILE
        for fd in held:
            os.close(fd)
        return False
    if null >= 3 + MAX_FDS:
        os.close(null)
    return True


def _take_request(sock: socket.socket, report: _StartPipe, reserved: bool) -> list[str] | int:
    """A pre-forked child's request: receive it, close ``sock`` and (``reserved``) the fds
    :func:`_reserve_low_fds` held that the request does not fill, and place its fds
    (:func:`_place_fds`).  The gofer's argv, or an exit status (0: EOF, its requester or the
    server is gone; 2: a malformed request, said on the start pipe as the server says it).

    The request comes from the server or, for a claimed child, straight from the requester
    the server handed this child's socket to; either way the last fd is the start pipe's
    write end, and the request is checked as the server checks one (:func:`_parse_request`).
    """
    data, fds, flags, _ = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS + 1)
    sock.close()
    syscalls.prctl(_PR_SET_PDEATHSIG, 0)  # a gofer keeps serving when the server dies
    if not data or not fds or flags & socket.MSG_CTRUNC:
        for fd in fds:  # no start pipe to answer on (our requester never sends these)
            os.close(fd)
        return 0 if not data and not fds else EXIT_SETUP
    *fds, report.fd = fds
    try:
        if flags & socket.MSG_TRUNC:
            raise _RequestError(f"request larger than {MAX_REQUEST} bytes or {MAX_FDS} fds")
        parsed = _parse_request(data, len(fds))
        if parsed is None:
            raise _RequestError("a pre-forked child takes a start request, not a claim")
    except _RequestError as e:
        for fd in fds:
            os.close(fd)
        report.failed(f"fork-server: {e}")
        return EXIT_SETUP
    args, roles = parsed
    if reserved:
        # The request's fds arrived above the held range (``sock`` was the only other fd in
        # it, now closed): what is left there past the io sockets' numbers is placeholders.
        os.closerange(3 + roles.count("io"), 3 + MAX_FDS)
    return _place_fds(args, roles, fds, report)


def _place_fds(
    args: list[str], roles: list[str], fds: list[int], report: _StartPipe
) -> list[str] | int:
    """Put the request's fds where a spawned gofer has them (io sockets at 3, 4, ...; stdio at
    0-2), enter a user namespace if asked: the argv for :mod:`gofer9p.daemon`, or exit status
    126 (the requester gave up on the namespace)."""
    n = roles.count("io")
    # Everything we keep goes above 3 + n first, so placing the io sockets never overwrites
    # one of them (the numbers they arrived at are arbitrary).
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + n) for fd in fds]
    for fd in fds:
        os.close(fd)
    if report.fd >= 0:
        moved = fcntl.fcntl(report.fd, fcntl.F_DUPFD_CLOEXEC, 3 + n)
        os.close(report.fd)
        report.fd = moved
    io: list[int] = []
    flags: list[str] = []
    go = -1
    for fd, role in zip(high, roles, strict=True):
        if role == "io":
            os.dup2(fd, 3 + len(io), inheritable=False)
            os.close(fd)
            io.append(3 + len(io))
        elif role == "userns":
            go = fd
        elif role in ROLE_FLAGS:
            flags += [ROLE_FLAGS[role], str(fd)]
        else:
            os.dup2(fd, _STDIO_TARGET[role])
            os.close(fd)
    if go >= 0 and not _enter_user_namespace(go, report.fd):
        return 126
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return [*args, *flags, *(a for fd in io for a in ("--io-fds", str(fd)))]


def _enter_user_namespace(go: int, status_w: int) -> bool:
    """unshare(CLONE_NEWUSER), say ``userns`` on the start pipe, wait for the requester to write
    our id maps (one byte ``g`` on ``go``), then become root of the namespace: what
    :func:`gofer9p.launch.start_gofer` does between fork and exec, with the manager writing the
    maps (the fork-server never reads the spec that holds them).  False: the requester gave up.
    """
    from . import confine

    syscalls.unshare(syscalls.CLONE_NEWUSER)
    confine.forget_bounding_ahead()  # the namespace's bounding set is whole
    os.write(status_w, b"userns\n")
    try:
        if os.read(go, 1) != b"g":
            return False
    finally:
        os.close(go)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    return True


class _Idle:
    """A pre-forked child waiting for a request: its pid, a pidfd, our end of its socket."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.pid, self.pidfd, self.sock = pid, pidfd, sock

    def close(self) -> None:
        self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


#: The requests a pre-forked child's throw-away gofer answers: Tversion, then Tattach of fid 1
#: by uid 0 (n_uname: no user lookup) to aname "", then Tclunk of it; then EOF.
_WARM_REQUESTS = (
    b"\x15\x00\x00\x00\x64\xff\xff\x00\x00\x01\x00\x08\x009P2000.L"
    b"\x17\x00\x00\x00\x68\x01\x00\x01\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"
    b"\x00\x00\x00\x00"
    b"\x0b\x00\x00\x00\x78\x02\x00\x01\x00\x00\x00"
)


def _warm_up() -> list[int]:
    """Run, without lasting effects, the generic code a gofer runs next: its pages get copied
    (and its bytecode specialised) now, while the child waits, not after the request.

    This is :func:`gofer9p.daemon.run`'s path with nothing of a sandbox in it: the request
    check (:func:`_parse_request`), the flags parser, the log setup (then undone), the spec
    reader (as far as a bundle without ``config.json`` goes) and parser, ``realpath``,
    ``check_io_fd`` on a socketpair, the resolution of a 9P mount's destination
    (:func:`gofer9p.mounts.resolve`), a Landlock ruleset (built, never enforced:
    :func:`gofer9p.landlock.make_ruleset`), the attach points of a spec whose root is ``/``
    (read-only; opened and closed here, never chrooted into), the capability bound read, the seccomp program with this child's pid
    written in (:func:`gofer9p.seccomp.prepare_seccomp`), and the serving loop itself
    (``daemon._serve_all`` in a ``trio.run``) answering :data:`_WARM_REQUESTS` on the
    socketpair.  The steps with effects (mount namespace, chroot, capabilities, seccomp) are
    left to the gofer (but for the bounding-set drops the caller makes after this,
    :func:`gofer9p.confine.drop_bounding_ahead`): they need the request, and a mount namespace made now would miss mounts
    the manager makes before its request.  The process's fd limit is not touched either.
    Everything it allocates is collected before the child waits, and what is left is frozen
    (:func:`gc.freeze`: the gofer's collections skip it, as they skip the server's).  Returns
    the message types the throw-away gofer answered with (Rversion 101, Rattach 105, Rclunk
    121: it served).
    """
    import json
    import logging

    import trio

    from . import confine, daemon, landlock, logs, mounts, seccomp, server, spec, stats

    flags = "--bundle / --seccomp=kill --apply-caps=true --landlock=auto --log-level info".split()
    args = daemon._parser().parse_args([*flags, "--io-fds", "0"])
    log = logging.getLogger("gofer9p")
    saved = (log.handlers[:], log.level, log.propagate)
    logs.setup_logging("critical", None)
    doc = json.loads('{"root": {"path": "/", "readonly": true}, "mounts": []}')
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    # a destination resolved (through a symlink) as the gofer resolves its 9P mounts', and a
    # Landlock ruleset built (never enforced) as the gofer builds its own
    mounts.resolve(root, "/proc/self/fdinfo").close()
    if landlock.abi() >= 1:
        with contextlib.suppress(landlock.LandlockError):
            os.close(landlock.make_ruleset([(root, True, True)], landlock.abi()))
    tree = confine.Tree(root, [])
    points = daemon._open_attach_points(spec.parse_spec(doc, "/"), False, tree)
    _parse_request(record({"op": "start", "args": flags, "fds": ["io"]}), 1)
    with contextlib.suppress(spec.SpecError):
        spec.load_spec("/proc/self/fdinfo")  # a directory without config.json: its error path
    os.path.realpath("/proc/self/fdinfo")  # as private_mount_root resolves the root
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.sendall(_WARM_REQUESTS)
        ours.shutdown(socket.SHUT_WR)
        sock = daemon.check_io_fd(theirs.detach())  # serve_one closes it
        confine.assert_single_threaded()
        confine._cap_last_cap()
        seccomp.prepare_seccomp("kill")
        config = server.ServerConfig(
            poll_us=args.poll_us, connections=1, fd_share=server.FD_SHARE_MIN
        )
        trio.run(daemon._serve_all, [sock.fileno()], [sock], points, config, "warm-up")
        replies = b""
        while chunk := ours.recv(4096):  # the gofer closed its end: EOF after the replies
            replies += chunk
        stats.REGISTRY.reset()  # the gofer this child becomes counts from zero (--stats-fd)
    finally:
        ours.close()
        for p in points:
            p.close()
        log.handlers[:], log.propagate = saved[0], saved[2]
        log.setLevel(saved[1])
    logs.OneLineUTCFormatter().format(logging.LogRecord("gofer9p", 20, "", 0, "%s", ("x",), None))
    gc.collect()
    gc.freeze()
    types = []
    while len(replies) >= 7:
        size = int.from_bytes(replies[:4], "little")
        types.append(replies[4])
        replies = replies[max(size, 7) :]
    return types


def _exit(rc: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(rc)


def _preload() -> None:
    """Everything a gofer imports or loads before it serves, done once in the parent."""
    import ctypes
    import logging  # noqa: F401

    from . import confine, daemon, landlock, spec  # noqa: F401

    daemon._preload()
    confine.preload("kill")
    landlock.abi()  # asked once here, for every child
    ctypes.CDLL(None, use_errno=True)
    daemon._parser()  # built once for every child (and argparse's lazy imports)


def build_parser(prog: str = "gofer9p forkserver") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fork a confined gofer per request from one warm, pre-imported parent.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="unix:PATH", help="listen here (SOCK_SEQPACKET)")
    where.add_argument(
        "--fd",
        type=int,
        help="an inherited unix SOCK_SEQPACKET socket: listening (accept on it) or connected "
        "(serve it; exit when it closes)",
    )
    p.add_argument(
        "--prefork",
        type=int,
        default=1,
        metavar="N",
        help="keep N children forked and warmed up ahead of requests (default 1; 0: fork "
        "on request only)",
    )
    p.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="also accept requests from this uid (repeatable); it can then serve any host "
        "directory as a root gofer",
    )
    return p


def run(
    argv: Sequence[str] | None = None, *, after_confine: Callable[[], None] | None = None
) -> int:
    """The fork-server; ``after_confine`` is for :mod:`gofer9p.testing.forkserver_with_hooks`
    only (the release entry points never pass it)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from . import confine

    if threading.active_count() != 1:
        _log("refusing to start with threads: a fork would copy their locks")
        return 2
    try:
        confine.set_not_dumpable()
    except confine.ConfineError as e:
        _log(str(e))
        return 2
    try:
        _preload()
    except ImportError as e:
        _log(f"cannot load the gofer: {e}")
        return 2
    server = _Server({os.geteuid(), *args.allow_uid}, after_confine, max(0, args.prefork))
    what: str
    if args.fd is not None:
        try:
            sock = socket.socket(fileno=args.fd)
        except OSError as e:
            _log(f"--fd {args.fd}: {e.strerror}")
            return 2
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            _log(f"--fd {args.fd} is not a unix SOCK_SEQPACKET socket")
            return 2
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            server.listen_on(sock)
            what = f"fd {args.fd} (listening)"
        else:
            server.exit_with_conn = True
            server.add_conn(sock)
            what = f"fd {args.fd} (one connection)"
    else:
        try:
            path = parse_address(args.socket)
        except ValueError as e:
            _log(f"--socket: {e}")
            return 2
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(path)
        except OSError as e:
            _log(f"cannot listen on {args.socket}: {e.strerror}")
            return 2
        os.chmod(path, 0o666)  # SO_PEERCRED decides who may use it (and says so)
        sock.listen(128)
        server.listen_on(sock)
        what = args.socket
    # Freeze what is loaded now: children share it read-only; collections in them skip it.
    gc.collect()
    gc.freeze()
    gc.disable()
    _log(f"ready on {what}, pid {os.getpid()}, uids {sorted(server.allowed)}")
    return server.serve()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``gofer9p forkserver`` and ``python -m gofer9p.forkserver``."""
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
