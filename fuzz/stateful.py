"""Hypothesis state machine: random valid and invalid 9P sequences on a live server.

Each example opens one connection and runs a random program of operations --
attach, walk (``..``, bad names, 17 names, clone onto itself or onto a busy
fid), lopen, lcreate, mkdir, symlink/readlink, read, write, readdir,
rename/renameat, unlinkat, remove, setattr (size, mode), getattr,
xattrwalk/xattrcreate + write + clunk, lock/getlock, flush (idle and racing a
request), clunk, raw frames reusing a tag or using NOTAG, and Tversion in the
middle of the session (good and bad versions) -- against a *model* of the
tree: nodes with identity (so renames move fids' files with them), file
contents, symlink targets, user xattrs, and the fid table.

Invariants checked on every reply: the tag is the request's, the type is T+1
or Rlerror, the errno is in ``wire.ALLOWED_ERRNOS``, the frame fits msize;
where the model can tell, success vs error is what Linux would do, data read
back equals data written, readdir lists exactly the model's names, walk
returns the right number and kinds of qids, one file keeps one qid path and
two live files never share one.  Between steps: the server's fid count equals
the model's (in-process), and no crash was logged.  At the end of an example:
clunking every fid brings the server's fids (or, for a process, its open fds)
back to the baseline, the host export equals the model, the server closes the
connection at our EOF, and its fd count returns to what it was before.

Failures are shrunk by hypothesis to a short program; its raw frames are
saved as a reproducer (``fuzz/corpus/crashes/stateful-*.bin``) beside the
program hypothesis printed (``.json``).
"""

from __future__ import annotations

import os
import re
import stat as stat_mod
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gofer9p.protocol import constants as C
from gofer9p.protocol import messages as M
from gofer9p.protocol.codec import decode_dirents, encode

from .common import (
    STOP,
    Health,
    Known,
    Report,
    liveness,
    run_deadline,
    save_failure,
    split_problem,
)
from .targets import Link, Target, fd_count, fd_targets
from .wire import ANY, ERR, OK, Failure, RawConn, Transcript, check_reply, expect_record

NAMES = (b"a", b"b", b"c", b"dir1", b"dir2", b"f")
BAD_NAMES = (b"", b".", b"a/b", b"/", b"x\x00y", b"n" * 256)
XATTR_NAMES = (b"user.a", b"user.b", b"user.fz", b"security.x", b"trusted.t", b"bogus")
XATTR_MAX = 64 * 1024


@dataclass(eq=False)
class Node:
    """A file in the model.  ``data``/``xattrs``/``mode`` None = no longer known."""

    id: int
    kind: str  # dir | file | link
    parent: Node | None
    name: bytes
    children: dict[bytes, Node] = field(default_factory=dict)
    data: bytearray | None = field(default_factory=bytearray)
    target: bytes = b""
    linked: bool = True
    xattrs: dict[bytes, bytes] | None = field(default_factory=dict)
    mode: int | None = None
    qid_path: int | None = None
    ident: int = 0
    """The host inode this name is (hard links share it; 0: the node's own id)."""


SPECIAL = ("fifo", "sock", "chr")
"""Kinds Tmknod makes: the model knows their type, never their contents."""
QTYPE = {"dir": 0x80, "file": 0x00, "link": 0x02, "fifo": 0, "sock": 0, "chr": 0}
DTYPE = {"dir": C.DT_DIR, "file": C.DT_REG, "link": C.DT_LNK, "fifo": 1, "sock": 12, "chr": 2}
SFMT = {
    "dir": stat_mod.S_IFDIR,
    "file": stat_mod.S_IFREG,
    "link": stat_mod.S_IFLNK,
    "fifo": stat_mod.S_IFIFO,
    "sock": stat_mod.S_IFSOCK,
    "chr": stat_mod.S_IFCHR,
}
UNAMES = (b"root", b"nobody", b"1000", b"65534", b"4294967295", b"9" * 5000, b"no-such-user")


@dataclass
class Fid:
    """A fid in the model: its node (None = unknown), open mode, xattr role."""

    node: Node | None
    open: str | None = None  # None | "r" | "w" | "rw" | "dir"
    lenient: bool = False  # opened with odd flags: do not check its data
    xread: bytes | None = None  # xattrwalk result
    xwrite: tuple[bytes, int, int] | None = None  # (name, size, flags) after xattrcreate
    xbuf: bytearray = field(default_factory=bytearray)


class _Ended(Exception):
    """The server ended the session on purpose (--panic-on-write): the example is over."""


_MUTATING = (
    M.Tlcreate,
    M.Tmkdir,
    M.Tsymlink,
    M.Tmknod,
    M.Tlink,
    M.Trename,
    M.Trenameat,
    M.Tunlinkat,
    M.Tremove,
    M.Twrite,
    M.Txattrcreate,
    M.Tsetattr,
)


def _mutates(msg: M.Message) -> bool:
    """Requests a read-only attach point refuses (design.md §3; the server's policy is
    ``protocol.policy``'s ``mutates``, applied by the connection core)."""
    if isinstance(msg, M.Tlopen):
        return bool(msg.flags & (C.L_O_ACCMODE | C.L_O_TRUNC))
    return isinstance(msg, _MUTATING)


def _special(f: Fid) -> bool:
    """Opened or xattr fids: the model does not predict them used as plain fids."""
    return f.open is not None or f.xread is not None or f.xwrite is not None


def _bad(name: bytes) -> bool:
    return name in (b"", b".", b"..") or b"/" in name or b"\0" in name or len(name) > 255


def _under(node: Node, anc: Node) -> bool:
    """Whether ``node`` is ``anc`` or inside it."""
    n: Node | None = node
    while n is not None:
        if n is anc:
            return True
        n = n.parent
    return False


@dataclass
class Ctx:
    """Run-wide state shared by every example of one run."""

    target: Target
    report: Report
    timeout: float
    crash_dir: Path | None
    known: Known = field(default_factory=Known)
    last: Transcript | None = None
    first_failures: list[tuple[Failure, Transcript]] = field(default_factory=list)
    examples: int = 0
    dead: bool = False
    rules: dict[str, int] = field(default_factory=dict)
    deadline: float | None = None
    """Past it, new examples do nothing (and pass): hypothesis's shrinking, which has no
    time limit of its own, then ends within the run's ``--time``; the finding kept is the
    shortest failing transcript seen so far (``best``)."""
    best: tuple[Failure, Transcript] | None = None
    timeboxed: int = 0
    shrink_frames: bool = True


class GoferMachine(RuleBasedStateMachine):
    """See the module docstring.  ``ctx`` is set by :func:`run` before use."""

    ctx: ClassVar[Ctx]
    fids: dict[int, Fid]
    """The model's fids (``link`` is a rule, Tlink: the connection is ``server``)."""

    def __init__(self) -> None:
        super().__init__()
        ctx = self.ctx
        self.failed = False
        self.ended = False
        self.ro = bool(getattr(ctx.target, "readonly", False))
        self.panic = bool(getattr(ctx.target, "panic_on_write", False))
        self.t = Transcript()
        self.noop = ctx.deadline is not None and time.monotonic() > ctx.deadline
        if self.noop:
            ctx.timeboxed += 1
            # what the preconditions read: only the (no-op) version rule is enabled
            self.versioned, self.fids, self.steps, self.version_step = False, {}, 1, 0
            return
        ctx.examples += 1
        ctx.report.examples_run = ctx.examples
        ctx.last = self.t
        if ctx.dead:
            raise Failure("hang", "server stopped answering in an earlier example")
        self.node_ids = 0
        target = ctx.target
        self.host = target.export is not None
        if self.host:
            target.reset_export()
        self.fd_pre: int | None = None
        pid = target.pid()
        if pid is not None and not target.per_connection_process:
            self.fd_pre = fd_count(pid)
        self.server: Link = target.open()
        ctx.report.connections += 1
        self.c = RawConn(self.server.sock, self.t, ctx.timeout)
        self.root = self._node("dir", None, b"")
        self.fids = {}
        self.qids: dict[int, Node] = {}
        self.aliases: dict[int, list[Node]] = {}
        self.next_fid = 1
        self.versioned = False
        self.base: list[bytes] = []
        self.steps = 0
        self.version_step = 0
        self._guard(self._start)

    # ------------------------------------------------------------ plumbing
    def _node(self, kind: str, parent: Node | None, name: bytes) -> Node:
        self.node_ids += 1
        n = Node(self.node_ids, kind, parent, name)
        n.ident = n.id
        if kind != "file":
            n.data = None
        return n

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Run a step; remember the first failure with its transcript."""
        if self.noop or self.ended:
            return None
        name = getattr(fn, "__name__", "?").lstrip("_")
        self.ctx.rules[name] = self.ctx.rules.get(name, 0) + 1
        self.steps += 1
        try:
            return fn(*args)
        except _Ended:
            return None
        except Failure as f:
            if f.kind != "hang" and self.ctx.known.match(self.ctx.report, f.message):
                return None  # a known open bug: counted, keep exploring
            self.failed = True
            f = self._blame(f)
            if f.kind == "hang":
                self.ctx.dead = not self._server_alive()
            self._remember(f)
            raise f from None

    def _blame(self, f: Failure) -> Failure:
        """A server that died under us is the finding, with the request that killed it."""
        if f.kind == "crash":
            return f
        deaths = [p for p in self.ctx.target.problems() if p.startswith("crash")]
        if not deaths:
            return f
        from .common import last_request

        return Failure(
            "crash", f"{split_problem(deaths[0])[1]} (last request {last_request(self.t)})"
        )

    def _remember(self, f: Failure) -> None:
        """Keep the first failures and the shortest transcript failing like the first one."""
        from .common import bucket

        snap = Transcript()
        snap.records = list(self.t.records)
        if len(self.ctx.first_failures) < 3:
            self.ctx.first_failures.append((f, snap))
        first = self.ctx.first_failures[0][0]
        best = self.ctx.best
        if bucket(f.kind, f.message, snap) == bucket(first.kind, first.message):
            if best is None or len(snap.records) < len(best[1].records):
                self.ctx.best = (f, snap)

    def _server_alive(self) -> bool:
        from .common import liveness

        try:
            liveness(self.ctx.target, timeout=self.ctx.timeout)
        except Failure:
            return False
        return True

    def fail(self, msg: str) -> None:
        raise Failure("invariant", msg)

    def rpc(self, msg: M.Message, outcome: int = ANY, data: bytes | None = None) -> M.Message:
        """Send ``msg`` and check its reply; a read-only attach point's rules come first."""
        if self.ro and _mutates(msg):
            if self.panic and not (isinstance(msg, M.Tremove) and msg.fid not in self.fids):
                # --panic-on-write: the daemon must end (status 70, judged at teardown)
                # before it answers or changes anything
                self.c.send(encode(msg))
                rest = self.c.expect_close(half_close=False)
                if rest:
                    self.fail(f"{type(msg).__name__} on a panic-on-write point was answered")
                self.ended = True
                raise _Ended
            outcome = ERR  # EROFS (or an earlier error): never a change
        return self.c.rpc(msg, outcome=outcome, data=data)

    def _start(self) -> None:
        self.c.handshake(65536)
        self.versioned = True
        pid = self.server.pid()
        self.fd_base = fd_count(pid) if pid is not None else None
        self.fd_names = fd_targets(pid) if pid is not None else {}
        if not self.host:
            # unknown export: work in a scratch directory of our own
            name = f"fz-{os.getpid()}-{self.ctx.examples}-{time.monotonic_ns()}".encode()
            self.rpc(M.Tattach(tag=0, fid=0, afid=C.NOFID, uname=b"root", aname=b"", n_uname=0), OK)
            self.rpc(M.Tmkdir(tag=0, dfid=0, name=name, mode=0o755, gid=0), OK)
            self.rpc(M.Tclunk(tag=0, fid=0), OK)
            self.base = [name]

    def _fresh_fid(self) -> int:
        while self.next_fid in self.fids:
            self.next_fid += 1
        fid = self.next_fid
        self.next_fid += 1
        return fid

    def _pick(self, data: st.DataObject, *, bogus: float = 0.05) -> int:
        """An existing fid (or, sometimes, one the server never saw)."""
        if not self.fids or data.draw(st.floats(0, 1)) < bogus:
            return int(data.draw(st.sampled_from([0xDEAD, C.NOFID, self.next_fid + 50])))
        return int(data.draw(st.sampled_from(sorted(self.fids))))

    def _bind(self, node: Node | None, qid: M.Qid) -> None:
        """Check and remember a node's qid: one file one path, two live files two paths."""
        if node is None:
            return
        want = QTYPE[node.kind]
        if qid.type != want:
            self.fail(f"qid type {qid.type:#x} for a {node.kind}")
        if node.qid_path is not None and node.qid_path != qid.path and node.linked:
            self.fail(f"qid path of one {node.kind} changed {node.qid_path:#x} -> {qid.path:#x}")
        other = self.qids.get(qid.path)
        same_inode = other is not None and node.ident and other.ident == node.ident
        if other is not None and other is not node and other.linked and node.linked:
            if not same_inode:
                self.fail(f"two live files share qid path {qid.path:#x}")
        for alias in self.aliases.get(node.ident, ()):
            if alias.linked and alias.qid_path is not None and alias.qid_path != qid.path:
                self.fail(
                    f"two names of one inode (Tlink) have qid paths "
                    f"{alias.qid_path:#x} and {qid.path:#x}"
                )
        node.qid_path = qid.path
        self.qids[qid.path] = node

    def _unlink(self, node: Node) -> None:
        node.linked = False
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        if node.qid_path is not None and self.qids.get(node.qid_path) is node:
            del self.qids[node.qid_path]

    def _known(self, *nodes: Node | None) -> bool:
        """Nodes the model can reason about: known and still in the tree."""
        for n in nodes:
            if n is None or not n.linked:
                return False
            p = n.parent
            while p is not None:
                if not p.linked:
                    return False
                p = p.parent
        return True

    # --------------------------------------------------------------- rules
    @precondition(lambda self: self.versioned and len(self.fids) < 4)
    @rule(data=st.data())
    def attach(self, data: st.DataObject) -> None:
        self._guard(self._attach, data)

    def _attach(self, data: st.DataObject) -> None:
        reuse = bool(self.fids) and data.draw(st.integers(0, 3)) == 0
        fid = data.draw(st.sampled_from(sorted(self.fids))) if reuse else self._fresh_fid()
        busy = fid in self.fids
        afid = data.draw(st.sampled_from([C.NOFID, C.NOFID, C.NOFID, 7]))
        uname = data.draw(st.sampled_from(UNAMES))
        if len(uname) + 64 > self.c.msize:
            uname = b"root"  # a frame over msize is a framing error (a close), not this test
        r = self.rpc(
            M.Tattach(
                tag=0,
                fid=fid,
                afid=afid,
                uname=uname,
                aname=b"",
                n_uname=data.draw(st.sampled_from([0, 0, C.NONUNAME, 1000, 65534])),
            ),
            ERR if busy else ANY,
        )
        if isinstance(r, M.Rattach):
            if r.qid.type != 0x80:
                self.fail(f"attach qid type {r.qid.type:#x}")
            if self.base:
                self.rpc(M.Twalk(tag=0, fid=fid, newfid=fid, wnames=self.base), OK)
            else:
                self._bind(self.root, r.qid)
            self.fids[fid] = Fid(self.root)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def walk(self, data: st.DataObject) -> None:
        self._guard(self._walk, data)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def walk_more(self, data: st.DataObject) -> None:
        """Walks build the fids every other rule needs: give them twice the weight."""
        self._guard(self._walk, data)

    def _walk(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        pool: list[bytes] = [*NAMES, b".."]
        if f is not None and f.node is not None and f.node.children:
            pool += sorted(f.node.children) * 2
        name = st.one_of(st.sampled_from(pool), st.sampled_from(BAD_NAMES))
        if data.draw(st.integers(0, 19)) == 0:
            names = [b".."] * data.draw(st.sampled_from([17, 18, 100]))
        else:
            names = data.draw(st.lists(name, max_size=16))
        k = data.draw(st.integers(0, 9))
        if k < 7 or not self.fids:
            newfid = self._fresh_fid()
        elif k < 9:
            newfid = fid
        else:
            newfid = data.draw(st.sampled_from(sorted(self.fids)))
        # predict
        outcome, stop, unknown, strict = ANY, -1, False, True
        nodes: list[Node] = []
        if f is None or len(names) > C.MAXWELEM or (newfid != fid and newfid in self.fids):
            outcome = ERR
        elif self._known(f.node):
            node = f.node
            assert node is not None
            for i, n in enumerate(names):
                nxt: Node | None
                if node is None:
                    break
                if node.kind != "dir":
                    nxt = None
                elif n == b"..":
                    nxt = (
                        node.parent
                        if node is not self.root
                        else (self.root if not self.base else None)
                    )
                    if node is self.root and self.base:
                        unknown = True
                        break
                elif _bad(n):
                    nxt = None
                else:
                    nxt = node.children.get(n)
                if nxt is None:
                    stop = i
                    break
                nodes.append(nxt)
                node = nxt
            if unknown:
                outcome = ANY
            elif stop == 0:
                outcome = ERR
            else:
                outcome = OK
            if _special(f):
                # walking from an opened or xattr fid: the protocol does not
                # say; any valid answer, the model follows a full success
                strict = False
        else:
            f = None  # unknown file: any valid outcome, result unknown
        r = self.rpc(
            M.Twalk(tag=0, fid=fid, newfid=newfid, wnames=names), outcome if strict else ANY
        )
        if not isinstance(r, M.Rwalk):
            return
        if len(r.wqids) > len(names):
            self.fail(f"walk of {len(names)} names returned {len(r.wqids)} qids")
        if outcome == OK and f is not None and strict:
            want = len(nodes)
            if len(r.wqids) != want:
                self.fail(f"walk {names!r}: {len(r.wqids)} qids, model says {want}")
            for node, q in zip(nodes, r.wqids, strict=True):
                self._bind(node, q)
            if want == len(names):
                src = self.fids[fid]
                self.fids[newfid] = Fid(nodes[-1] if nodes else src.node)
            return
        if len(r.wqids) == len(names):
            if (
                f is not None
                and not strict
                and not unknown
                and outcome == OK
                and len(nodes) == len(names)
            ):
                self.fids[newfid] = Fid(nodes[-1] if nodes else f.node)
                return
            # success of an unpredicted walk: the new fid's file is unknown
            self.fids[newfid] = Fid(None)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def lopen(self, data: st.DataObject) -> None:
        self._guard(self._lopen, data)

    def _lopen(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        odd = data.draw(st.integers(0, 9)) == 0
        if odd:
            flags = data.draw(st.integers(0, 0o7777777))
        else:
            flags = data.draw(
                st.sampled_from(
                    [
                        C.L_O_RDONLY,
                        C.L_O_WRONLY,
                        C.L_O_RDWR,
                        C.L_O_RDWR | C.L_O_TRUNC,
                        C.L_O_WRONLY | C.L_O_TRUNC,
                        C.L_O_RDONLY | C.L_O_DIRECTORY,
                        C.L_O_RDWR | C.L_O_NOFOLLOW | C.L_O_LARGEFILE | C.L_O_CLOEXEC,
                    ]
                )
            )
        acc = flags & 3
        outcome = ANY
        node = f.node if f else None
        if f is not None and node is None and not _special(f):
            return  # an unknown file: a write through it could not be followed
        if f is None or f.open or f.xread is not None or f.xwrite is not None:
            outcome = ERR
        elif node is not None and not odd:
            if node.kind == "dir":
                outcome = OK if acc == C.L_O_RDONLY else ERR
            elif node.kind == "link":
                outcome = ERR
            elif flags & C.L_O_DIRECTORY:
                outcome = ERR
            elif node.kind in SPECIAL:
                outcome = ANY  # FIFO without a peer, socket, device on a nodev mount
            else:
                outcome = OK
        r = self.rpc(M.Tlopen(tag=0, fid=fid, flags=flags), outcome)
        if isinstance(r, M.Rlopen) and f is not None:
            self._bind(node, r.qid) if node is not None and node.linked else None
            if node is not None and node.kind == "dir":
                f.open = "dir"
            else:
                f.open = {0: "r", 1: "w", 2: "rw"}.get(acc, "rw")
            f.lenient = odd or acc == 3 or (node is not None and node.kind in SPECIAL)
            if node is not None and node.kind == "file" and flags & C.L_O_TRUNC:
                if acc != C.L_O_RDONLY and not odd:
                    node.data = bytearray()
                else:
                    node.data = None
            if odd and node is not None and node.kind == "file" and flags & C.L_O_APPEND:
                f.lenient = True

    def _name(self, data: st.DataObject, node: Node | None) -> bytes:
        pool = list(NAMES)
        if node is not None and node.children and data.draw(st.booleans()):
            pool = sorted(node.children)
        return data.draw(st.one_of(st.sampled_from(pool), st.sampled_from([*BAD_NAMES, b".."])))

    def _dir_target(self, data: st.DataObject) -> tuple[int, Fid | None, Node | None, int]:
        """A fid to create in, its node, and the predicted outcome (ANY/ERR/OK-so-far)."""
        fid = self._pick(data)
        f = self.fids.get(fid)
        if f is None:
            return fid, f, None, ERR
        d = f.node if self._known(f.node) else None
        if f.open is not None or f.xread is not None or f.xwrite is not None:
            # an opened or xattr fid used as a directory: the protocol does not
            # say; any valid answer, and the model follows what happened
            return fid, f, d if d is not None and d.kind == "dir" else None, ANY
        if d is None:
            return fid, f, None, ANY
        if d.kind != "dir":
            return fid, f, d, ERR
        return fid, f, d, OK

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def lcreate(self, data: st.DataObject) -> None:
        self._guard(self._lcreate, data)

    def _lcreate(self, data: st.DataObject) -> None:
        fid, f, d, outcome = self._dir_target(data)
        name = self._name(data, d)
        flags = data.draw(
            st.sampled_from(
                [
                    C.L_O_RDWR,
                    C.L_O_WRONLY,
                    C.L_O_RDONLY,
                    C.L_O_RDWR | C.L_O_EXCL | C.L_O_CREAT,
                    C.L_O_WRONLY | C.L_O_TRUNC,
                ]
            )
        )
        mode = data.draw(st.sampled_from([0o644, 0o600, 0o755, 0o000]))
        existing = None
        if f is not None and f.node is None:
            return  # unknown directory: the model could not follow a success
        if d is not None:
            if _bad(name):
                outcome = ERR
            elif name in d.children:
                existing = d.children[name]
                outcome = ANY
        r = self.rpc(M.Tlcreate(tag=0, fid=fid, name=name, flags=flags, mode=mode, gid=0), outcome)
        if not isinstance(r, M.Rlcreate) or f is None:
            return
        acc = flags & 3
        node: Node | None = None
        if d is not None and not _bad(name):
            if existing is not None:
                node = existing
                if node.kind == "file" and flags & C.L_O_TRUNC:
                    node.data = bytearray()
            else:
                node = self._node("file", d, name)
                node.mode = mode
                d.children[name] = node
            self._bind(node, r.qid)
        f.node = node
        f.open = {0: "r", 1: "w", 2: "rw"}[acc]
        f.xread, f.xwrite, f.lenient = None, None, False

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def mkdir(self, data: st.DataObject) -> None:
        self._guard(self._mkdir, data)

    def _mkdir(self, data: st.DataObject) -> None:
        fid, f, d, outcome = self._dir_target(data)
        if f is not None and f.node is None:
            return
        name = self._name(data, d)
        if d is not None and (_bad(name) or name in d.children):
            outcome = ERR
        mode = data.draw(st.sampled_from([0o755, 0o700, 0o1777, 0o000]))
        r = self.rpc(M.Tmkdir(tag=0, dfid=fid, name=name, mode=mode, gid=0), outcome)
        if isinstance(r, M.Rmkdir) and d is not None:
            node = self._node("dir", d, name)
            node.mode = mode
            d.children[name] = node
            self._bind(node, r.qid)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def symlink(self, data: st.DataObject) -> None:
        self._guard(self._symlink, data)

    def _symlink(self, data: st.DataObject) -> None:
        fid, f, d, outcome = self._dir_target(data)
        name = self._name(data, d)
        target = data.draw(
            st.sampled_from([b"/etc/passwd", b"../../..", b"a", b"dir1/f", b"x" * 300, b"/"])
        )
        if f is not None and f.node is None:
            return
        if d is not None and (_bad(name) or name in d.children):
            outcome = ERR
        r = self.rpc(M.Tsymlink(tag=0, fid=fid, name=name, symtgt=target, gid=0), outcome)
        if isinstance(r, M.Rsymlink) and d is not None:
            node = self._node("link", d, name)
            node.target = target
            d.children[name] = node
            self._bind(node, r.qid)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def readlink(self, data: st.DataObject) -> None:
        self._guard(self._readlink, data)

    def _readlink(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        if f is None:
            self.rpc(M.Treadlink(tag=0, fid=fid), ERR)
            return
        node = f.node
        if node is None or f.xread is not None or f.xwrite is not None:
            self.rpc(M.Treadlink(tag=0, fid=fid), ANY)
            return
        r = self.rpc(M.Treadlink(tag=0, fid=fid), OK if node.kind == "link" else ERR)
        if isinstance(r, M.Rreadlink) and r.target != node.target:
            self.fail(f"readlink {r.target!r}, model {node.target!r}")

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        self._guard(self._read, data)

    def _read(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        size = 0
        if f is not None and f.node is not None and f.node.data is not None:
            size = len(f.node.data)
        if f is not None and f.xread is not None:
            size = len(f.xread)
        offset = data.draw(st.sampled_from([0, 0, 1, size // 2, size, size + 10, 1 << 40]))
        # (32 KiB and more of a regular file: the server's splice path)
        count = data.draw(st.sampled_from([0, 1, 7, 100, 4096, 40000, 65000, 0xFFFFFFFF]))
        clamp = min(count, self.c.msize - C.IOHDRSZ)
        outcome, expect = ANY, None
        if f is None or f.xwrite is not None:
            outcome = ERR
        elif f.xread is not None:
            outcome, expect = OK, f.xread[offset : offset + clamp]
        elif f.open is None or f.open == "w" or f.open == "dir":
            # count 0 is answered without looking at the file (noted in README)
            outcome = ERR if not f.lenient and count else ANY
        elif f.node is not None and f.node.data is not None and not f.lenient:
            outcome, expect = OK, bytes(f.node.data[offset : offset + clamp])
        self.rpc(M.Tread(tag=0, fid=fid, offset=offset, count=count), outcome, data=expect)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        self._guard(self._write, data)

    def _write(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        payload = data.draw(st.binary(max_size=300))
        if f is not None and f.xwrite is not None:
            offset = len(f.xbuf) if data.draw(st.integers(0, 5)) else 0
            r = self.rpc(M.Twrite(tag=0, fid=fid, offset=offset, data=payload), ANY)
            if isinstance(r, M.Rwrite):
                if r.count > len(payload):
                    self.fail(f"xattr write of {len(payload)} bytes answered count {r.count}")
                if offset == len(f.xbuf) and r.count == len(payload):
                    f.xbuf += payload
                else:
                    f.xbuf = bytearray(b"\xff" * (XATTR_MAX + 1))  # content unknown
            return
        node = f.node if f else None
        size = len(node.data) if node is not None and node.data is not None else 0
        offset = data.draw(st.sampled_from([0, size, size + 5, size // 2, 3]))
        outcome = ANY
        if f is None or f.xread is not None:
            outcome = ERR
        elif f.open in (None, "r", "dir") and not f.lenient:
            outcome = ERR
        elif f.open in ("w", "rw") and not f.lenient and node is not None:
            outcome = OK
        r = self.rpc(M.Twrite(tag=0, fid=fid, offset=offset, data=payload), outcome)
        if isinstance(r, M.Rwrite):
            if r.count > len(payload):
                self.fail(f"write of {len(payload)} bytes answered count {r.count}")
            if outcome == OK and r.count != len(payload):
                self.fail(f"short write {r.count} of {len(payload)} to a regular file")
            if node is not None and node.data is not None:
                if f is not None and f.lenient:
                    node.data = None
                elif r.count:  # a 0-byte pwrite does not extend the file
                    d = node.data
                    if len(d) < offset:
                        d += b"\0" * (offset - len(d))
                    d[offset : offset + r.count] = payload[: r.count]

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def readdir(self, data: st.DataObject) -> None:
        self._guard(self._readdir, data)

    def _readdir(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        count = data.draw(st.sampled_from([300, 1000, 8192, 0xFFFFFFFF, 10, 0]))
        if f is not None and (f.xread is not None or f.xwrite is not None):
            self.rpc(M.Treaddir(tag=0, fid=fid, offset=0, count=count), ANY)
            return
        if f is None or f.open not in ("dir",) or count < 300:
            outcome = ERR if f is None or f.open in (None, "r", "w", "rw") else ANY
            if count < 300 or (f is not None and f.lenient):
                outcome = ANY if f is not None else ERR
            self.rpc(M.Treaddir(tag=0, fid=fid, offset=0, count=count), outcome)
            return
        names: dict[bytes, tuple[int, int]] = {}
        offset = 0
        for _ in range(200):
            r = self.rpc(M.Treaddir(tag=0, fid=fid, offset=offset, count=count), OK)
            assert isinstance(r, M.Rreaddir)
            ents = decode_dirents(r.data)
            if not ents:
                break
            for e in ents:
                if e.name in names and e.name not in (b".", b".."):
                    self.fail(f"readdir lists {e.name!r} twice")
                names[e.name] = (e.type, e.qid.type)
            offset = ents[-1].offset
        else:
            self.fail("readdir did not end after 200 calls")
        node = f.node
        if node is None or not self._known(node):
            return
        got = {n for n in names if n not in (b".", b"..")}
        want = set(node.children)
        if got != want:
            self.fail(f"readdir lists {sorted(got)}, model has {sorted(want)}")
        for n, (dtype, qtype) in names.items():
            if n in (b".", b".."):
                continue
            kind = node.children[n].kind
            exp = (DTYPE[kind], QTYPE[kind])
            if (dtype, qtype) != exp:
                self.fail(f"readdir {n!r}: d_type {dtype} qid type {qtype:#x} for a {kind}")

    def _rename_outcome(self, sp: Node | None, sname: bytes, dp: Node | None, dname: bytes) -> int:
        if not self._known(sp, dp):
            return ANY
        assert sp is not None and dp is not None
        if sp.kind != "dir" or dp.kind != "dir":
            return ERR
        if _bad(sname) or _bad(dname) or sname not in sp.children:
            return ERR
        src = sp.children[sname]
        if src.kind == "dir" and _under(dp, src):
            return ERR
        dst = dp.children.get(dname)
        if dst is None or dst is src:
            return OK
        if src.kind == "dir":
            return OK if dst.kind == "dir" and not dst.children else ERR
        return ERR if dst.kind == "dir" else OK

    def _apply_rename(self, sp: Node, sname: bytes, dp: Node, dname: bytes) -> None:
        src = sp.children[sname]
        dst = dp.children.get(dname)
        if dst is src:
            return
        if dst is not None:
            self._unlink(dst)
        del sp.children[sname]
        src.parent, src.name = dp, dname
        dp.children[dname] = src

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def renameat(self, data: st.DataObject) -> None:
        self._guard(self._renameat, data)

    def _renameat(self, data: st.DataObject) -> None:
        ofid, nfid = self._pick(data), self._pick(data)
        of, nf = self.fids.get(ofid), self.fids.get(nfid)
        if of is None or nf is None:
            outcome = ERR
        elif _special(of) or _special(nf):
            return  # the model would not know what moved
        else:
            outcome = ANY
        sp, dp = (of.node if of else None), (nf.node if nf else None)
        oname, nname = self._name(data, sp), self._name(data, dp)
        if outcome == ANY:
            outcome = self._rename_outcome(sp, oname, dp, nname)
            if outcome == ANY:
                return
        r = self.rpc(
            M.Trenameat(tag=0, olddirfid=ofid, oldname=oname, newdirfid=nfid, newname=nname),
            outcome,
        )
        if isinstance(r, M.Rrenameat) and sp is not None and dp is not None:
            self._apply_rename(sp, oname, dp, nname)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        self._guard(self._rename, data)

    def _rename(self, data: st.DataObject) -> None:
        fid, dfid = self._pick(data), self._pick(data)
        f, df = self.fids.get(fid), self.fids.get(dfid)
        dp = df.node if df else None
        name = self._name(data, dp)
        if f is None or df is None:
            self.rpc(M.Trename(tag=0, fid=fid, dfid=dfid, name=name), ERR)
            return
        if f.xread is not None or f.xwrite is not None or _special(df) or f.node is None:
            return
        node = f.node
        if node is self.root and self.base:
            return  # our scratch directory, not the attach root: keep it
        if node is self.root:
            outcome = ERR if self._known(dp) else ANY
            if outcome == ANY:
                return
            self.rpc(M.Trename(tag=0, fid=fid, dfid=dfid, name=name), outcome)
            return
        outcome = self._rename_outcome(node.parent, node.name, dp, name)
        if outcome == ANY or node.parent is None or dp is None:
            return
        r = self.rpc(M.Trename(tag=0, fid=fid, dfid=dfid, name=name), outcome)
        if isinstance(r, M.Rrename):
            self._apply_rename(node.parent, node.name, dp, name)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def unlinkat(self, data: st.DataObject) -> None:
        self._guard(self._unlinkat, data)

    def _unlinkat(self, data: st.DataObject) -> None:
        fid, f, d, outcome = self._dir_target(data)
        name = self._name(data, d)
        flags = data.draw(st.sampled_from([0, C.AT_REMOVEDIR, 0, 0x1]))
        victim = None
        if f is not None and f.node is None:
            return
        if d is not None:
            victim = d.children.get(name)
            if _bad(name) or victim is None or flags not in (0, C.AT_REMOVEDIR):
                outcome = ERR
            elif victim.kind == "dir":
                ok = flags == C.AT_REMOVEDIR and not victim.children
                outcome = (OK if ok else ERR) if outcome == OK else outcome
            else:
                ok = flags != C.AT_REMOVEDIR
                outcome = (OK if ok else ERR) if outcome == OK else outcome
        r = self.rpc(M.Tunlinkat(tag=0, dirfid=fid, name=name, flags=flags), outcome)
        if isinstance(r, M.Runlinkat) and victim is not None:
            self._unlink(victim)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        self._guard(self._remove, data)

    def _remove(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        outcome = ANY
        node = f.node if f else None
        if f is not None and node is self.root and self.base:
            return  # our scratch directory, not the attach root: keep it
        if f is None:
            outcome = ERR
        elif f.xread is not None or f.xwrite is not None:
            outcome = ANY
        elif node is self.root:
            outcome = ERR
        elif self._known(node):
            assert node is not None
            outcome = ERR if node.kind == "dir" and node.children else OK
        elif node is None or node.kind == "dir":
            return  # an unknown directory might hold model files
        r = self.rpc(M.Tremove(tag=0, fid=fid), outcome)
        self.fids.pop(fid, None)  # remove clunks the fid whatever happened
        if isinstance(r, M.Rremove) and node is not None:
            self._unlink(node)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def setattr(self, data: st.DataObject) -> None:
        self._guard(self._setattr, data)

    def _setattr(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        node = f.node if f else None
        size = len(node.data) if node is not None and node.data is not None else 0
        what = data.draw(st.sampled_from(["size", "mode", "times", "owner", "odd"]))
        valid, mode, new_size, uid, gid = 0, 0, 0, 0, 0
        if what == "owner":
            valid = data.draw(
                st.sampled_from([C.SETATTR_UID, C.SETATTR_GID, C.SETATTR_UID | C.SETATTR_GID])
            )
            uid = data.draw(st.sampled_from([0, 1000, 65534, 0xFFFFFFFF]))
            gid = data.draw(st.sampled_from([0, 1000, 65534, 0xFFFFFFFF]))
        elif what == "size":
            valid = C.SETATTR_SIZE
            new_size = data.draw(st.sampled_from([0, 1, 5, size, size + 100, 1 << 20]))
        elif what == "mode":
            valid = C.SETATTR_MODE
            mode = data.draw(st.sampled_from([0o644, 0o600, 0o7777, 0o000, 0o4755]))
        elif what == "times":
            valid = data.draw(st.sampled_from([0x30, 0x1B0, 0x40, 0x70]))
        else:
            valid = data.draw(st.integers(0, 0x1FF)) & ~(C.SETATTR_UID | C.SETATTR_GID)
            new_size = data.draw(st.sampled_from([0, 3, 1 << 62]))
            mode = data.draw(st.integers(0, 0o177777))
        outcome = ANY
        if f is not None and node is None and what in ("size", "odd"):
            return  # an unknown file: a truncation could not be followed
        if f is None:
            outcome = ERR
        elif f.xread is None and f.xwrite is None and node is not None and what != "odd":
            if node.kind == "file":
                outcome = OK
            elif node.kind == "dir":
                outcome = ERR if what == "size" else OK
        r = self.rpc(
            M.Tsetattr(
                tag=0,
                fid=fid,
                valid=valid,
                mode=mode,
                uid=uid,
                gid=gid,
                size=new_size,
                atime_sec=1000,
                atime_nsec=5,
                mtime_sec=2000,
                mtime_nsec=7,
            ),
            outcome,
        )
        if node is None or f is None:
            return
        if isinstance(r, M.Rsetattr):
            if valid & C.SETATTR_SIZE and node.kind == "file" and node.data is not None:
                if new_size > 1 << 24:
                    node.data = None
                else:
                    d = node.data
                    del d[new_size:]
                    d += b"\0" * (new_size - len(d))
            if valid & C.SETATTR_MODE:
                for n in self.aliases.get(node.ident, [node]):
                    n.mode = (mode & 0o7777) if node.kind != "link" else n.mode
            if valid & (C.SETATTR_UID | C.SETATTR_GID) and node.kind == "file":
                # chown clears set-id bits (the kernel's rule for a non-directory)
                for n in self.aliases.get(node.ident, [node]):
                    if n.mode is not None:
                        n.mode = None if n.mode & 0o6000 else n.mode
        elif what == "odd" or f.xread is not None or f.xwrite is not None:
            # a failed multi-field setattr may have applied some fields first
            if node.kind == "file" and valid & C.SETATTR_SIZE:
                node.data = None
            if valid & C.SETATTR_MODE:
                node.mode = None

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def mknod(self, data: st.DataObject) -> None:
        self._guard(self._mknod, data)

    def _mknod(self, data: st.DataObject) -> None:
        """FIFOs, sockets and a character device (the latter only where the target may)."""
        fid, f, d, outcome = self._dir_target(data)
        name = self._name(data, d)
        kind = data.draw(st.sampled_from(["fifo", "fifo", "sock", "chr", "bad"]))
        fmt = {"fifo": stat_mod.S_IFIFO, "sock": stat_mod.S_IFSOCK, "chr": stat_mod.S_IFCHR}
        mode = fmt.get(kind, stat_mod.S_IFDIR) | data.draw(st.sampled_from([0o644, 0o600, 0o000]))
        if kind == "bad":
            mode = data.draw(st.sampled_from([stat_mod.S_IFDIR | 0o755, 0o644, 0o170644]))
        major, minor = (1, 3) if kind == "chr" else (0, 0)
        if f is not None and f.node is None:
            return
        if d is not None and (_bad(name) or name in d.children):
            outcome = ERR
        if kind in ("chr", "bad") and outcome == OK:
            outcome = ANY  # a device needs CAP_MKNOD (the daemon has none); odd types EINVAL
        r = self.rpc(
            M.Tmknod(tag=0, dfid=fid, name=name, mode=mode, major=major, minor=minor, gid=0),
            outcome,
        )
        if kind == "bad" and stat_mod.S_IFMT(mode) == 0:
            kind = "file"  # mknod(2): a type of zero makes a regular file
        if isinstance(r, M.Rmknod) and d is not None:
            if kind == "bad":
                self.fail(f"Tmknod of mode {mode:o} succeeded")
            node = self._node(kind, d, name)
            node.data = bytearray() if kind == "file" else None
            node.mode = mode & 0o7777
            d.children[name] = node
            self._bind(node, r.qid)

    @precondition(lambda self: self.versioned and len(self.fids) >= 2)
    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        self._guard(self._link, data)

    def _link(self, data: st.DataObject) -> None:
        """Tlink: a second name for a file; both names then share one inode (and qid)."""
        dfid, df, d, outcome = self._dir_target(data)
        fid = self._pick(data)
        f = self.fids.get(fid)
        name = self._name(data, d)
        src = f.node if f is not None else None
        if df is not None and df.node is None:
            return
        if f is None or (src is not None and src.kind == "dir"):
            outcome = ERR
        elif src is None or not self._known(src) or _special(f):
            outcome = ANY
        if d is not None and (_bad(name) or name in d.children):
            outcome = ERR
        r = self.rpc(M.Tlink(tag=0, dfid=dfid, fid=fid, name=name), outcome)
        if isinstance(r, M.Rlink) and d is not None and src is not None and f is not None:
            node = self._node(src.kind, d, name)
            node.ident = src.ident
            node.target = src.target
            node.qid_path = src.qid_path
            group = self.aliases.setdefault(src.ident, [src])
            group.append(node)
            for n in group:
                # contents and modes are one inode's: the model stops predicting them
                n.data = None
                n.mode = None
                n.xattrs = None
            d.children[name] = node
            if node.qid_path is not None:
                self.qids.setdefault(node.qid_path, node)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def getattr(self, data: st.DataObject) -> None:
        self._guard(self._getattr, data)

    def _getattr(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        mask = data.draw(st.sampled_from([C.GETATTR_ALL, C.GETATTR_BASIC, 0, 0xFFFFFFFFFFFFFFFF]))
        if f is None:
            self.rpc(M.Tgetattr(tag=0, fid=fid, request_mask=mask), ERR)
            return
        node = f.node
        ok = node is not None and f.xread is None and f.xwrite is None
        r = self.rpc(M.Tgetattr(tag=0, fid=fid, request_mask=mask), OK if ok else ANY)
        if not isinstance(r, M.Rgetattr) or not ok:
            return
        assert node is not None
        if r.valid & C.GETATTR_MODE:
            if stat_mod.S_IFMT(r.mode) != SFMT[node.kind]:
                self.fail(f"getattr mode {r.mode:o} for a {node.kind}")
            if node.mode is not None and node.kind != "link" and (r.mode & 0o7777) != node.mode:
                self.fail(f"getattr mode {r.mode & 0o7777:o}, model {node.mode:o}")
        if (
            r.valid & C.GETATTR_SIZE
            and node.kind == "file"
            and node.data is not None
            and r.size != len(node.data)
        ):
            self.fail(f"getattr size {r.size}, model {len(node.data)}")
        if node.linked:
            self._bind(node, r.qid)

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def xattrwalk(self, data: st.DataObject) -> None:
        self._guard(self._xattrwalk, data)

    def _xattrwalk(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        name = data.draw(st.sampled_from([b"", *XATTR_NAMES]))
        newfid = self._fresh_fid() if data.draw(st.integers(0, 9)) else fid
        node = f.node if f else None
        outcome = ANY
        if f is None:
            outcome = ERR
        elif (
            f.open is None
            and f.xread is None
            and f.xwrite is None
            and node is not None
            and node.kind in ("file", "dir")
            and node.xattrs is not None
            and self._known(node)
        ):
            if name == b"" or name in node.xattrs:
                outcome = OK
            elif name.startswith(b"user."):
                outcome = ERR
        r = self.rpc(M.Txattrwalk(tag=0, fid=fid, newfid=newfid, name=name), outcome)
        if not isinstance(r, M.Rxattrwalk) or f is None:
            return
        value: bytes | None = None
        if outcome == OK and node is not None and node.xattrs is not None:
            if name == b"":
                listing = b"".join(n + b"\0" for n in sorted(node.xattrs))
                if r.size != len(listing):
                    self.fail(f"xattr list size {r.size}, model names {sorted(node.xattrs)}")
                value = None  # order of names is the host's
            else:
                value = node.xattrs[name]
                if r.size != len(value):
                    self.fail(f"xattr {name!r} size {r.size}, model {len(value)}")
        xf = Fid(node, xread=value if value is not None else b"")
        if value is None:
            xf.lenient = True
        if newfid == fid:
            self.fids[fid] = xf
        else:
            self.fids[newfid] = xf

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def xattrcreate(self, data: st.DataObject) -> None:
        self._guard(self._xattrcreate, data)

    def _xattrcreate(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        name = data.draw(st.sampled_from(XATTR_NAMES))
        size = data.draw(st.sampled_from([0, 1, 5, 100, XATTR_MAX, XATTR_MAX + 1, 1 << 40]))
        flags = data.draw(st.sampled_from([0, 0, C.XATTR_CREATE, C.XATTR_REPLACE, 7]))
        outcome = ANY
        if f is None or size > XATTR_MAX:
            outcome = ERR
        r = self.rpc(
            M.Txattrcreate(tag=0, fid=fid, name=name, attr_size=size, flags=flags), outcome
        )
        if isinstance(r, M.Rxattrcreate) and f is not None:
            if f.open is not None or f.xread is not None or f.xwrite is not None:
                # the model does not know what an xattrcreate on this fid commits
                if f.node is not None:
                    f.node.xattrs = None
            f.xwrite = (name, size, flags)
            f.xbuf = bytearray()
            f.open, f.xread = None, None

    def _commit(self, f: Fid, ok: bool) -> None:
        """Model what a clunk of an xattr-write fid did (``ok``: Rclunk, not Rlerror)."""
        node = f.node
        if f.xwrite is None or node is None or node.xattrs is None:
            return
        name, size, flags = f.xwrite
        if not ok:
            if len(f.xbuf) == size and flags in (0, C.XATTR_CREATE, C.XATTR_REPLACE):
                return  # refused: nothing changed
            node.xattrs = None
            return
        if not name.startswith(b"user.") or flags not in (0, C.XATTR_CREATE, C.XATTR_REPLACE):
            node.xattrs = None
        elif size == 0 and not f.xbuf:
            node.xattrs.pop(name, None)
        elif len(f.xbuf) == size:
            node.xattrs[name] = bytes(f.xbuf)
        else:
            node.xattrs = None

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def clunk(self, data: st.DataObject) -> None:
        self._guard(self._clunk, data)

    def _clunk(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        outcome = ERR if f is None else (ANY if f.xwrite is not None else OK)
        r = self.rpc(M.Tclunk(tag=0, fid=fid), outcome)
        if f is not None:
            self._commit(f, isinstance(r, M.Rclunk))
            del self.fids[fid]

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def lock(self, data: st.DataObject) -> None:
        self._guard(self._lock, data)

    def _lock(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        ltype = data.draw(st.sampled_from([0, 1, 2, 0, 1, 2, 3]))
        start = data.draw(st.sampled_from([0, 10, 1 << 62]))
        length = data.draw(st.sampled_from([0, 1, 100, 1 << 63]))
        if data.draw(st.booleans()):
            flags = data.draw(st.sampled_from([0, C.LOCK_FLAGS_BLOCK, C.LOCK_FLAGS_RECLAIM, 0xFF]))
            r = self.rpc(
                M.Tlock(
                    tag=0,
                    fid=fid,
                    type=ltype,
                    flags=flags,
                    start=start,
                    length=length,
                    proc_id=data.draw(st.integers(0, 5)),
                    client_id=b"fz",
                ),
                ERR if f is None else ANY,
            )
            if isinstance(r, M.Rlock) and r.status not in (0, 1, 2, 3):
                self.fail(f"Rlock status {r.status}")
        else:
            r = self.rpc(
                M.Tgetlock(
                    tag=0,
                    fid=fid,
                    type=ltype,
                    start=start,
                    length=length,
                    proc_id=1,
                    client_id=b"fz",
                ),
                ERR if f is None else ANY,
            )
            if isinstance(r, M.Rgetlock) and r.type not in (0, 1, 2):
                self.fail(f"Rgetlock type {r.type}")

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def fsync_statfs(self, data: st.DataObject) -> None:
        self._guard(self._fsync_statfs, data)

    def _fsync_statfs(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        f = self.fids.get(fid)
        if data.draw(st.booleans()):
            outcome = ERR if f is None else (OK if f.open in ("r", "w", "rw") else ANY)
            self.rpc(M.Tfsync(tag=0, fid=fid, datasync=data.draw(st.integers(0, 1))), outcome)
        else:
            ok = f is not None and f.node is not None and f.xread is None and f.xwrite is None
            self.rpc(M.Tstatfs(tag=0, fid=fid), ERR if f is None else (OK if ok else ANY))

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def flush(self, data: st.DataObject) -> None:
        self._guard(self._flush, data)

    def _flush(self, data: st.DataObject) -> None:
        if not self.fids or data.draw(st.booleans()):
            self.rpc(M.Tflush(tag=0, oldtag=data.draw(st.integers(0, 0xFFFF))), OK)
            return
        # race a flush with the request it names; the request's reply, if it
        # comes, must come before the Rflush
        fid = self._pick(data, bogus=0)
        f = self.fids[fid]
        a, b = self.c.take_tag(), self.c.take_tag()
        req: M.Message
        if f.open in ("r", "w", "rw") and data.draw(st.booleans()):
            req = M.Tfsync(tag=a, fid=fid, datasync=0)
        else:
            req = M.Tgetattr(tag=a, fid=fid, request_mask=C.GETATTR_BASIC)
        self.c.send(encode(req) + encode(M.Tflush(tag=b, oldtag=a)), frames=2)
        seen_a = False
        for _ in range(2):
            fr = self.c.recv_frame(record=expect_record(None, None))
            r = check_reply(fr, msize=self.c.msize)
            if r.tag == a and not seen_a:
                if fr[4] not in (req.TYPE + 1, C.MsgType.RLERROR):
                    self.fail(f"flushed request answered with type {fr[4]}")
                seen_a = True
            elif r.tag == b:
                if not isinstance(r, M.Rflush):
                    self.fail(f"Tflush answered with {type(r).__name__}")
                if not seen_a:
                    # the request was cancelled: its reply must never come;
                    # a Tflush for an idle tag proves the stream is in sync
                    self.rpc(M.Tflush(tag=0, oldtag=a), OK)
                return
            else:
                self.fail(f"unexpected reply tag {r.tag} (requests {a}, flush {b})")
        self.fail("no Rflush after the flushed request's reply")

    @precondition(lambda self: self.versioned and self.fids)
    @rule(data=st.data())
    def same_tag_twice(self, data: st.DataObject) -> None:
        self._guard(self._same_tag_twice, data)

    def _same_tag_twice(self, data: st.DataObject) -> None:
        fid = self._pick(data)
        tag = data.draw(st.sampled_from([self.c.take_tag(), C.NOTAG]))
        frame = encode(M.Tgetattr(tag=tag, fid=fid, request_mask=C.GETATTR_BASIC))
        self.c.send(frame + frame, frames=2)
        for _ in range(2):
            fr = self.c.recv_frame(record=expect_record(tag, C.MsgType.TGETATTR))
            check_reply(fr, tag=tag, ttype=C.MsgType.TGETATTR, msize=self.c.msize)

    # a new session throws every fid away: only now and then, or the machine
    # would spend its steps re-attaching
    @precondition(lambda self: not self.versioned or self.steps - self.version_step > 20)
    @rule(data=st.data())
    def version(self, data: st.DataObject) -> None:
        self._guard(self._version, data)

    def _version(self, data: st.DataObject) -> None:
        self.version_step = self.steps
        msize = data.draw(st.sampled_from([4096, 8192, 65536, 1 << 20, 100, 0xFFFFFFFF]))
        good = data.draw(st.integers(0, 4)) > 0
        ver = (
            C.VERSION_9P2000L
            if good
            else data.draw(
                st.sampled_from([b"9P2000", b"9P2000.u", b"", b"9P2000.L\x00", b"9P3000.L"])
            )
        )
        r = self.rpc(M.Tversion(tag=C.NOTAG, msize=msize, version=ver), OK)
        assert isinstance(r, M.Rversion)
        if r.msize > msize:
            self.fail(f"Rversion msize {r.msize} above the requested {msize}")
        if not good and r.version != C.VERSION_UNKNOWN:
            self.fail(f"Tversion {ver!r} answered {r.version!r}")
        if good and msize >= 4096 and r.version != C.VERSION_9P2000L:
            self.fail(f"Tversion 9P2000.L msize {msize} answered {r.version!r}")
        for f in self.fids.values():
            if f.xwrite is not None and f.node is not None:
                f.node.xattrs = None  # clunked by the reset: committed or not, unknown
        self.fids.clear()
        self.versioned = r.version == C.VERSION_9P2000L
        if self.versioned:
            self.c.msize = r.msize

    @precondition(lambda self: not self.versioned and self.steps % 3 == 0)
    @rule()
    def before_version(self) -> None:
        self._guard(self._before_version)

    def _before_version(self) -> None:
        self.rpc(M.Tgetattr(tag=0, fid=1, request_mask=1), ERR)

    # ---------------------------------------------------------- invariants
    @invariant()
    def server_fids_match_model(self) -> None:
        if self.failed or self.noop:
            return
        n = self.server.fid_count()
        if n is not None and n != len(self.fids):
            self.failed = True
            f = Failure(
                "leak", f"server holds {n} fids, model {len(self.fids)}: {sorted(self.fids)}"
            )
            self._remember(f)
            raise f

    @invariant()
    def no_crash_logged(self) -> None:
        if self.noop:
            return
        for p in self.ctx.target.problems():
            if self.ctx.known.match(self.ctx.report, p):
                continue
            self.failed = True
            kind, msg = split_problem(p)
            if "SIGSYS" in msg or "signal" in msg:
                from .common import last_request

                msg += f" (last request {last_request(self.t)})"
            f = Failure(kind, msg)
            self._remember(f)
            raise f

    # ------------------------------------------------------------ teardown
    def teardown(self) -> None:
        if self.noop:
            return
        try:
            if self.failed or STOP.is_set():
                return  # an interrupted case is not judged
            self._guard(self._teardown)
        finally:
            self.c.sock.close()
            self.ctx.report.frames_sent += self.c.frames_sent

    def _teardown(self) -> None:
        if self.ended:
            # panic-on-write ended the session: nothing changed, the daemon exited 70
            if self.host and self.ctx.target.export is not None:
                self._compare_host(self.ctx.target.export, self.root)
            self.c.sock.close()
            for p in self.server.finish(self.ctx.timeout):
                kind, msg = split_problem(p)
                raise Failure(kind, msg)
            status = getattr(self.ctx.target, "last_status", 70)
            if status != 70:
                raise Failure("invariant", f"panic-on-write daemon exited {status}, not 70")
            return
        if self.versioned:
            for fid in sorted(self.fids):
                f = self.fids[fid]
                r = self.rpc(M.Tclunk(tag=0, fid=fid), ANY if f.xwrite is not None else OK)
                self._commit(f, isinstance(r, M.Rclunk))
            self.fids.clear()
            n = self.server.fid_count()
            if n:
                raise Failure("leak", f"server holds {n} fids after every fid was clunked")
            pid = self.server.pid()
            if pid is not None and self.fd_base is not None:
                now = fd_count(pid)
                if now is not None and now > self.fd_base and not self.server.fid_count():
                    new = sorted(
                        f"{fd}->{t}"
                        for fd, t in fd_targets(pid).items()
                        if self.fd_names.get(fd) != t
                    )
                    raise Failure(
                        "leak",
                        f"server holds {now} fds after clunking every fid, "
                        f"{self.fd_base} before the first attach; new: {new[:10]}",
                    )
        if self.host and self.ctx.target.export is not None:
            self._compare_host(self.ctx.target.export, self.root)
        rest = self.c.expect_close(half_close=True)
        if rest:
            raise Failure("invariant", f"{len(rest)} unexpected frames at EOF")
        self.c.sock.close()
        for p in self.server.finish(self.ctx.timeout):
            kind, msg = split_problem(p)
            raise Failure(kind, msg)
        pid = self.ctx.target.pid()
        if self.fd_pre is not None and pid is not None:
            deadline = time.monotonic() + 3
            now = fd_count(pid)
            while now is not None and now > self.fd_pre and time.monotonic() < deadline:
                time.sleep(0.01)
                now = fd_count(pid)
            if now is not None and now > self.fd_pre:
                raise Failure(
                    "leak",
                    f"server holds {now} fds after the connection ended, "
                    f"{self.fd_pre} before it started",
                )

    def _compare_host(self, path: Path, node: Node) -> None:
        """The host export must hold exactly the model's tree (names, kinds, data, links)."""
        try:
            entries = {e.name.encode("utf-8", "surrogateescape"): e for e in os.scandir(path)}
        except OSError as err:
            raise Failure("invariant", f"host {path}: {err}") from None
        if set(entries) != set(node.children):
            raise Failure(
                "invariant", f"host {path} holds {sorted(entries)}, model {sorted(node.children)}"
            )
        for name, child in node.children.items():
            e = entries[name]
            p = Path(e.path)
            if child.kind == "dir":
                if not e.is_dir(follow_symlinks=False):
                    raise Failure("invariant", f"host {p} is not a directory")
                self._compare_host(p, child)
            elif child.kind == "link":
                if not e.is_symlink() or os.readlink(p).encode("utf-8", "surrogateescape") != (
                    child.target
                ):
                    raise Failure("invariant", f"host {p} is not a symlink to {child.target!r}")
            elif child.kind in SPECIAL:
                fmt = stat_mod.S_IFMT(os.lstat(p).st_mode)
                if fmt != SFMT[child.kind]:
                    raise Failure("invariant", f"host {p} has type {fmt:o}, model a {child.kind}")
            else:
                if not e.is_file(follow_symlinks=False):
                    raise Failure("invariant", f"host {p} is not a regular file")
                if child.data is not None:
                    got = p.read_bytes()
                    if got != bytes(child.data):
                        raise Failure(
                            "invariant",
                            f"host {p} holds {len(got)} bytes "
                            f"{got[:32]!r}, model {len(child.data)} bytes "
                            f"{bytes(child.data)[:32]!r}",
                        )


def run(
    target: Target,
    report: Report,
    *,
    seed: int,
    time_budget: float | None,
    max_examples: int | None,
    steps: int = 50,
    crash_dir: Path | None,
    timeout: float = 5.0,
    batch: int = 25,
    shrink: bool = True,
    known: Known | None = None,
    max_failures: int | None = None,
    database: Path | None = None,
) -> Report:
    """Run the state machine in seeded batches until the time or example budget is spent.

    Hypothesis has no time budget of its own, so each batch is a separate
    ``run_state_machine_as_test`` with ``max_examples=batch``, and examples
    started past the deadline do nothing (so shrinking ends in time too).  A
    failing batch is shrunk and saved in its bucket, and the run goes on with
    the next seed; a server that stopped answering is restarted (unattended
    runs keep going; ``max_failures`` stops early if given).  ``database``:
    hypothesis's example database (``--corpus DIR``/hypothesis): failing
    examples are kept there and replayed first by every later run.
    """
    import random

    ctx = Ctx(
        target=target, report=report, timeout=timeout, crash_dir=crash_dir, known=known or Known()
    )
    ctx.shrink_frames = shrink
    machine = type("GoferMachine", (GoferMachine,), {"ctx": ctx})
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = run_deadline(start, time_budget, max_examples)
    ctx.deadline = deadline
    db = None
    if database is not None:
        from hypothesis.database import DirectoryBasedExampleDatabase

        database.mkdir(parents=True, exist_ok=True)
        db = DirectoryBasedExampleDatabase(str(database))
    report.details["steps_per_example"] = steps
    health = Health(target, report)
    try:
        liveness(target, timeout=timeout, exercise=True)  # warm-up: imports, caches
    except Failure as f:
        report.add_failure(f.kind, f.message)
        return report
    health.baseline()
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            break
        done = ctx.examples
        if max_examples is not None and done >= max_examples:
            break
        n = batch if max_examples is None else min(batch, max_examples - done)
        s = settings(
            max_examples=n,
            stateful_step_count=steps,
            deadline=None,
            database=db,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            print_blob=True,
            phases=list(Phase) if shrink else [p for p in Phase if p != Phase.shrink],
        )
        factory = hseed(rng.randrange(1 << 32))(machine)
        try:
            run_state_machine_as_test(factory, settings=s)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)) or STOP.is_set():
                raise KeyboardInterrupt from e  # Ctrl-C / SIGTERM: not a finding
            if (
                not isinstance(e, Failure)
                and ctx.best is None
                and not ctx.first_failures
                and deadline is not None
                and time.monotonic() >= deadline
            ):
                # the examples made no-ops by the deadline draw differently from the ones
                # hypothesis recorded: it may call that flaky; there was no finding
                report.notes.append(f"batch cut at the deadline ({type(e).__name__})")
                break
            _record(ctx, e)
            ctx.first_failures.clear()
            ctx.best = None
            # keep fuzzing with fresh seeds (a long run should not end on its
            # first finding); a wedged or dead server is restarted
            if max_failures is not None and report.failures() >= max_failures:
                break
            if ctx.dead or not target.alive():
                report.details["restarts"] = report.details.get("restarts", 0) + 1
                target.restart()
                ctx.dead = False
                try:
                    liveness(target, timeout=timeout, exercise=True)
                except Failure as f:
                    report.add_failure(f.kind, "after a restart: " + f.message)
                    break
                health = Health(target, report)
                health.baseline()
    if not ctx.dead:
        if target.export is not None and not target.per_connection_process:
            target.reset_export()
        for p in health.check(final=True):
            kind, msg = split_problem(p)
            if not ctx.known.match(report, msg):
                report.add_failure(kind, msg)
    report.details["rule_counts"] = dict(sorted(ctx.rules.items()))
    if ctx.timeboxed:
        report.details["examples_skipped_past_deadline"] = ctx.timeboxed
    report.duration_s = round(time.monotonic() - start, 2)
    return report


_BLOB = re.compile(r"@reproduce_failure\('([^']+)', (b'[^']*'|b\"[^\"]*\")\)")


def _record(ctx: Ctx, e: BaseException) -> None:
    """Save the shortest failing example in its bucket (one file per bucket).

    When hypothesis finished shrinking in time it printed a ``@reproduce_failure`` blob: it is
    kept, and ``replay`` re-runs that exact program with the model's checks.  When shrinking
    was cut by the deadline the failing transcript is the shortest seen (its R records carry
    the model's expected outcomes and read data).
    """
    import ast

    text = "".join(traceback.format_exception(e))
    program = "\n".join(getattr(e, "__notes__", []))
    if isinstance(e, Failure):
        failure = e
    elif ctx.best is not None:
        failure = ctx.best[0]
    else:
        failure = Failure("crash", f"{type(e).__name__}: {e}\n{text[-3000:]}")
    transcript = ctx.best[1] if ctx.best is not None else ctx.last
    extra: dict[str, Any] = {
        "program": program,
        "traceback": text[-6000:],
        "steps": ctx.report.details.get("steps_per_example", 50),
    }
    m = _BLOB.search(program)
    if m and isinstance(e, Failure):
        extra["hypothesis_version"] = m.group(1)
        extra["blob"] = ast.literal_eval(m.group(2)).decode("latin-1")
    elif not isinstance(e, Failure):
        extra["note"] = (
            "shrinking was cut at the run's deadline: the transcript is the shortest failing "
            f"one seen ({type(e).__name__} from hypothesis's final replay)"
        )
    if transcript is not None and "blob" not in extra and ctx.shrink_frames:
        # hypothesis's shrinking was cut (or failed): shrink the transcript itself, by replay
        from .common import minimize_transcript

        before = transcript.frames_sent()
        end = time.monotonic() + 30
        if ctx.deadline is not None:
            end = min(end, max(ctx.deadline, time.monotonic() + 5))  # the --time budget holds
        transcript, tries = minimize_transcript(
            ctx.target, transcript, failure, deadline=end, timeout=ctx.timeout
        )
        extra["minimized"] = f"{before} -> {transcript.frames_sent()} frames by {tries} replays"
    if transcript is not None:
        save_failure(
            ctx.report, "stateful", failure, transcript, crash_dir=ctx.crash_dir, extra=extra
        )
    else:
        ctx.report.add_failure(failure.kind, failure.message)
    ctx.report.notes.append("hypothesis program:\n" + program[-3000:])


def replay_program(meta: dict[str, Any], target: Target, *, timeout: float = 5.0) -> list[str]:
    """Re-run a saved stateful finding's exact hypothesis program, model checks included."""
    from hypothesis import reproduce_failure
    from hypothesis.errors import DidNotReproduce

    report = Report(fuzzer="stateful", target=target.name)
    ctx = Ctx(target=target, report=report, timeout=timeout, crash_dir=None)
    machine = type("GoferMachine", (GoferMachine,), {"ctx": ctx})
    factory = reproduce_failure(meta["hypothesis_version"], meta["blob"].encode("latin-1"))(machine)
    s = settings(
        max_examples=1,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        stateful_step_count=int(meta.get("steps", 50)),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    try:
        liveness(target, timeout=timeout, exercise=True)
        run_state_machine_as_test(factory, settings=s)
    except Failure as f:
        return [f"{f.kind}: {f.message}"]
    except DidNotReproduce:
        # the program ran past the step that failed and out of recorded choices: that step
        # does not fail any more
        return []
    except Exception as ex:
        return [f"crash: {type(ex).__name__}: {str(ex)[:2000]}"]
    return []
