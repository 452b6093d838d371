"""Boot a qemu guest whose Linux v9fs client mounts 9P exports served by a host process.

Why this exists: unit and integration tests drive the server with our own client, which shares our
reading of the protocol. Only the real kernel client shows what a sandbox will actually send
(walk/lopen/lcreate patterns, readdir cookies, locks, setattr masks, caching modes). The host has no
9p client, so the client runs in a small qemu guest: a Debian kernel + busybox-static initramfs.

Transport: one virtio-serial port per 9P mount. On the host each port is a qemu unix-socket
chardev; we connect to it and hand the connected fd to the 9P server under test (an inherited fd,
exactly like a sandbox manager hands a socketpair end to a gofer). In the guest `trans=fd` cannot
drive a virtio console port, so busybox ``nc`` bridges loopback TCP port 564+i to the port and the
kernel mounts with ``trans=tcp`` to 127.0.0.1. The guest has no network device at all
(``-nodefaults``, no ``-netdev``): nothing leaves the VM except those ports. Results come out on one
more virtio-serial port backed by a host file; the kernel console goes to another file (debugging).

Everything here is synchronous and bounded: every boot has a timeout after which qemu and the
servers are killed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SETUP_SCRIPT = REPO / "scripts" / "guest" / "setup.sh"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
QEMU = "qemu-system-x86_64"

#: Modules the guest needs, roots only: their dependencies are resolved from each module's
#: .modinfo ``depends=`` (the .deb ships no modules.dep, and the host may have no kmod).
WANTED_MODULES = ("virtio_pci", "virtio_console", "9pnet_fd", "9p")

#: First loopback TCP port of the guest-side bridges; mount i uses BASE_PORT + i.
BASE_PORT = 564


def cache_dir() -> Path:
    """Where scripts/guest/setup.sh caches the kernel (same rule as the script)."""
    env = os.environ.get("GOFER9P_GUEST_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/gofer9p-guest")
    return Path.home() / ".cache" / "gofer9p-guest"


@dataclass(frozen=True)
class Kernel:
    """A cached Debian kernel: vmlinuz plus the subset of lib/modules/VER the guest loads."""

    vmlinuz: Path
    modules: Path
    version: str


def find_kernel() -> Kernel | None:
    """The cached kernel, or None when setup.sh has not run (or failed) on this machine."""
    k = cache_dir() / "kernel"
    try:
        version = (k / "VERSION").read_text().strip()
    except OSError:
        return None
    if not (k / "vmlinuz").is_file() or not (k / "modules").is_dir():
        return None
    return Kernel(k / "vmlinuz", k / "modules", version)


def _is_static_elf(path: Path) -> bool:
    """True when `path` is an ELF executable without PT_INTERP (a static binary).

    The guest has no libc, so a dynamically linked busybox (package ``busybox``, not
    ``busybox-static``) would fail at exec time with a confusing "not found".
    """
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> Path | None:
    """A static busybox on the host (from busybox-static), or None."""
    for cand in BUSYBOX_CANDIDATES:
        if cand.is_file() and _is_static_elf(cand):
            return cand
    return None


def unavailable_reason() -> str | None:
    """Why the guest tier cannot run here, or None when it can.

    Checked without side effects (no apt, no downloads): the fix is always "run
    scripts/guest/setup.sh", which the message says.
    """
    fix = f"run {SETUP_SCRIPT.relative_to(REPO)} (as root) first"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (Debian package qemu-system-x86): {fix}"
    if find_busybox() is None:
        return f"no static busybox at /bin/busybox (Debian package busybox-static): {fix}"
    if shutil.which("gcc") is None:
        return f"gcc not found (needed to build the static guest helper g9tool): {fix}"
    if find_kernel() is None:
        return f"no guest kernel cached in {cache_dir()}/kernel: {fix}"
    return None


# --------------------------------------------------------------------------------------------
# kernel modules


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressing .ko.xz/.ko.gz/.ko.zst on the host.

    busybox insmod cannot load compressed modules, so the initramfs carries plain .ko files.
    """
    name = path.name
    raw = path.read_bytes()
    if name.endswith(".xz"):
        return lzma.decompress(raw)
    if name.endswith(".gz"):
        return gzip.decompress(raw)
    if name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc"], input=raw, capture_output=True, check=True).stdout
    return raw


def _modinfo(elf: bytes, key: str) -> list[str]:
    """Values of ``key=`` strings in the module's .modinfo (scanning the image is enough)."""
    needle = b"\0" + key.encode() + b"="
    out: list[str] = []
    start = 0
    while True:
        i = elf.find(needle, start)
        if i < 0:
            return out
        j = elf.find(b"\0", i + len(needle))
        out.append(elf[i + len(needle) : j].decode(errors="replace"))
        start = j


def resolve_modules(
    kernel: Kernel, wanted: Iterable[str] = WANTED_MODULES
) -> list[tuple[str, bytes]]:
    """Modules to insmod, dependencies first, as (name, uncompressed ELF bytes).

    A wanted module that is not in the tree is assumed built in (Debian builds some virtio bits
    in) and skipped.
    """
    index: dict[str, Path] = {}
    for p in kernel.modules.rglob("*.ko*"):
        base = p.name.split(".ko")[0].replace("-", "_")
        index[base] = p
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name not in index:
            return
        if name in stack:
            raise RuntimeError(f"module dependency cycle: {(*stack, name)}")
        elf = _read_module(index[name])
        for deps in _modinfo(elf, "depends"):
            for dep in filter(None, deps.split(",")):
                visit(dep, (*stack, name))
        done.add(name)
        order.append((name, elf))

    for w in wanted:
        visit(w, ())
    return order


# --------------------------------------------------------------------------------------------
# initramfs


class Cpio:
    """A minimal cpio "newc" writer: what the kernel's initramfs unpacker reads.

    Written here rather than shelling out to cpio so the archive needs no staging tree and no
    root-owned copies of files.
    """

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        nameb = name.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._buf.write(hdr + nameb)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._buf.getvalue()


def build_g9tool(out_dir: Path) -> Path:
    """Compile tests/guest/g9tool.c statically (cached by source hash) and return the binary."""
    src = HERE / "g9tool.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = out_dir / f"g9tool-{digest}"
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True)
        tmp.rename(out)
    return out


def build_initramfs(
    out: Path,
    kernel: Kernel,
    init: str,
    files: dict[str, bytes] | None = None,
    tools_dir: Path | None = None,
) -> list[str]:
    """Write an initramfs to `out`; return the module names in load order.

    Contents: busybox-static with a symlink per applet, /init (the given script), the guest
    helper g9tool, the modules (plain .ko in /lib/modules, load order in /modules.order) and any
    extra `files` (path -> bytes, e.g. the workload script).
    """
    busybox = find_busybox()
    if busybox is None:
        raise RuntimeError("no static busybox")
    cpio = Cpio()
    for d in (
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "etc",
        "lib",
        "lib/modules",
        "root",
    ):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("bin/g9tool", build_g9tool(tools_dir or out.parent).read_bytes(), 0o755)
    mods = resolve_modules(kernel)
    for name, elf in mods:
        cpio.file(f"lib/modules/{name}.ko", elf)
    cpio.file("modules.order", "".join(f"{n}\n" for n, _ in mods).encode())
    cpio.file("init", init.encode(), 0o755)
    for path, data in (files or {}).items():
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent and parent not in ("bin", "etc", "root"):
            cpio.dir(parent)
        cpio.file(path, data, 0o755)
    out.write_bytes(gzip.compress(cpio.finish(), compresslevel=1))
    return [n for n, _ in mods]


# --------------------------------------------------------------------------------------------
# running a guest


@dataclass(frozen=True)
class Mount:
    """One 9P mount of the guest: served on virtio port ``p9_<index>``.

    `export` is the host directory it shows; `mountpoint` its path in the guest; `aname` what
    the guest puts in Tattach (diod needs the export path; gofer9p ignores it).
    """

    export: Path
    mountpoint: str
    readonly: bool = False
    aname: str = ""


#: Starts the 9P server(s) for the connected sockets (one per mount, same order); returns the
#: processes it started. The callee must pass the fds to the children; the caller closes its
#: own copies after the call.
ServerStarter = Callable[
    [Sequence[socket.socket], Sequence[Mount], Path], list[subprocess.Popen[bytes]]
]


@dataclass
class GuestRun:
    """What one boot produced."""

    results: list[str]
    console: str
    seconds: float
    timed_out: bool
    qemu_rc: int | None
    server_rcs: list[int | None] = field(default_factory=list)
    server_logs: str = ""

    def result_map(self) -> dict[str, tuple[str, str]]:
        """``RESULT name STATUS detail`` lines as name -> (status, detail); last one wins."""
        out: dict[str, tuple[str, str]] = {}
        for line in self.results:
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[0] == "RESULT":
                out[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
        return out

    def values(self) -> dict[str, str]:
        """``VALUE key value`` lines: measurements the host compares (hashes, sizes)."""
        out: dict[str, str] = {}
        for line in self.results:
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0] == "VALUE":
                out[parts[1]] = parts[2]
        return out

    def diagnostics(self, tail: int = 60) -> str:
        """A readable tail of the console and the server logs, for assertion messages."""
        con = "\n".join(self.console.splitlines()[-tail:])
        srv = "\n".join(self.server_logs.splitlines()[-tail:])
        return f"--- guest console (tail) ---\n{con}\n--- server logs (tail) ---\n{srv}"


def accel() -> str:
    """qemu accelerator: TCG unless GOFER9P_GUEST_ACCEL says otherwise.

    KVM guests were seen to hang right after the BIOS on this kind of VM (nested virt), so KVM is
    opt-in (GOFER9P_GUEST_ACCEL=kvm) rather than probed on every run.
    """
    return os.environ.get("GOFER9P_GUEST_ACCEL", "tcg")


def _connect_unix(path: Path, deadline: float) -> socket.socket:
    """Connect to qemu's chardev socket, waiting for qemu to create it."""
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"qemu did not create {path}") from None
            time.sleep(0.02)


def _kill(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate a process we started (by its pid, never by name), then SIGKILL after `grace`."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def run_guest(
    workdir: Path,
    kernel: Kernel,
    initrd: Path,
    mounts: Sequence[Mount],
    start_servers: ServerStarter,
    timeout: float,
    memory_mb: int = 1024,
    cpus: int = 1,
) -> GuestRun:
    """Boot the guest once, serve its mounts, wait for it to power off (or kill it at `timeout`).

    The guest's /init does the work and powers off; qemu runs with -no-reboot so a guest panic
    also ends the run. Servers are expected to exit at EOF once qemu has gone; any still
    running after a short grace are killed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results.txt"
    console = workdir / "console.log"
    for f in (results, console):
        f.unlink(missing_ok=True)
    socks = [workdir / f"p9_{i}.sock" for i in range(len(mounts))]
    for s in socks:
        s.unlink(missing_ok=True)
    cmd = [
        QEMU,
        "-machine", f"q35,accel={accel()}",
        "-cpu", "max" if accel() == "tcg" else "host",
        "-smp", str(cpus),
        "-m", str(memory_mb),
        "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
        "-serial", f"file:{console}",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        "-append", os.environ.get("GOFER9P_GUEST_APPEND", "console=ttyS0 panic=-1 quiet loglevel=4"),
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=res,path={results}",
        "-device", "virtserialport,chardev=res,name=results",
    ]  # fmt: skip
    for i, s in enumerate(socks):
        cmd += [
            "-chardev", f"socket,id=p9_{i},path={s},server=on,wait=off",
            "-device", f"virtserialport,chardev=p9_{i},name=p9_{i}",
        ]  # fmt: skip
    t0 = time.monotonic()
    qlog = open(workdir / "qemu.log", "wb")
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
    servers: list[subprocess.Popen[bytes]] = []
    timed_out = False
    try:
        deadline = time.monotonic() + 30
        conns = []
        for s in socks:
            conns.append(_connect_unix(s, deadline))
        try:
            servers = start_servers(conns, mounts, workdir)
        finally:
            for c in conns:
                c.close()
        try:
            qemu.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        _kill(qemu)
        qlog.close()
        for p in servers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill(p)
    seconds = time.monotonic() - t0
    logs = []
    for log in sorted(workdir.glob("server*.log")):
        logs.append(f"== {log.name}\n{log.read_text(errors='replace')}")
    return GuestRun(
        results=results.read_text(errors="replace").splitlines() if results.exists() else [],
        console=console.read_text(errors="replace") if console.exists() else "",
        seconds=seconds,
        timed_out=timed_out,
        qemu_rc=qemu.returncode,
        server_rcs=[p.returncode for p in servers],
        server_logs="\n".join(logs),
    )


def spawn_with_fd(
    argv: Sequence[str],
    fds: Sequence[int],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server with `fds` inherited at the same numbers (as a sandbox manager would).

    The server's stdout/stderr go to `log`, which the run's diagnostics include.
    """
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            list(argv),
            pass_fds=tuple(fds),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
    finally:
        out.close()


def host_sha256(path: Path) -> str:
    """sha256 of a host file, streamed (the big file is 64 MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
