"""Read an OCI bundle's ``config.json`` (or the spec a manager passes on an fd) into what the
gofer and its launcher need.

The gofer serves exactly the trees the bundle names, so this module is part of the trust boundary:
it decides which spec mounts become 9P attach points and whether each one is read-only.  Everything
else in the (large) OCI runtime spec is ignored on purpose; unknown fields are not an error, because
real runtimes add their own.

Rules (design.md §1):

* ``root.path`` is relative to the bundle directory unless absolute; it must be a directory.
  A spec read from an fd (``--spec-fd``) is the manager's, already parsed and perhaps adjusted:
  nothing of it is read again from the bundle, which only anchors relative paths.
  ``root.readonly`` makes the root attach point read-only.
* A 9P mount is a spec mount of type ``bind`` or with a ``bind``/``rbind`` option whose
  destination is not under ``/proc``, ``/sys`` or ``/dev`` (the sandbox kernel's own filesystems).
  It is read-only when its options say ``ro`` (the last of ``ro``/``rw`` wins, as with mount(8)).
* Every error is a :class:`SpecError` whose message is one line naming the bad field, because the
  daemon prints it as its only line on stderr before exiting 2.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from typing import Any

import attrs

__all__ = [
    "MAX_SPEC_BYTES",
    "IdMapping",
    "NineMount",
    "Spec",
    "SpecError",
    "is_nine_mount",
    "load_spec",
    "load_spec_bytes",
    "load_spec_fd",
    "parse_spec",
    "read_spec_fd",
]

#: The most a spec passed on an fd may hold (real config.json files are a few KiB to a few
#: hundred KiB); more is refused rather than read into memory.
MAX_SPEC_BYTES = 4 << 20

#: Destinations under these belong to the sandbox kernel, never to the gofer.
_KERNEL_FS_PREFIXES = ("/proc", "/sys", "/dev")


class SpecError(Exception):
    """The bundle or its config.json is unusable; ``str(err)`` is one line for the user."""


@attrs.frozen
class IdMapping:
    """One line of a user-namespace uid_map/gid_map: ``container_id host_id size``."""

    container_id: int
    host_id: int
    size: int


@attrs.frozen
class NineMount:
    """A spec mount served over its own 9P connection.

    ``destination`` is absolute and normalized (inside the container root); ``source`` is the host
    path, made absolute against the bundle directory if it was relative (as runc does).
    """

    destination: str
    source: str
    readonly: bool
    options: tuple[str, ...] = ()

    @property
    def flags(self) -> frozenset[str]:
        """The mount options the launcher must enforce with a remount (``nosuid`` ...)."""
        return frozenset(self.options) & {"nosuid", "nodev", "noexec"}


@attrs.frozen
class Spec:
    """What the gofer (``root_*``, ``mounts``) and the launcher (id mappings) need."""

    bundle: str
    root_path: str
    root_readonly: bool
    mounts: tuple[NineMount, ...]
    uid: int | None = None
    gid: int | None = None
    uid_mappings: tuple[IdMapping, ...] = ()
    gid_mappings: tuple[IdMapping, ...] = ()

    @property
    def attach_count(self) -> int:
        """How many attach points (and so io fds) the gofer serves: the root plus each 9P mount."""
        return 1 + len(self.mounts)


def load_spec(bundle: str | os.PathLike[str]) -> Spec:
    """Read ``bundle/config.json``; raise :class:`SpecError` with one clear line on any problem."""
    bundle_s = os.path.abspath(os.fspath(bundle))
    if not os.path.isdir(bundle_s):
        raise SpecError(f"bundle {bundle_s!r} is not a directory")
    config_path = os.path.join(bundle_s, "config.json")
    try:
        with open(config_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SpecError(f"bundle {bundle_s!r} has no config.json") from None
    except OSError as e:
        raise SpecError(f"cannot read {config_path!r}: {e.strerror}") from None
    return _checked(_decode(raw, repr(config_path)), bundle_s)


def load_spec_fd(fd: int, bundle: str | os.PathLike[str] | None) -> Spec:
    """Read the spec from ``fd`` (a pipe, memfd or file the manager passed), then close it.

    Nothing is read from the bundle directory: ``bundle`` only anchors a relative
    ``root.path`` or mount source, and without it those are an error.  See
    :func:`read_spec_fd` for how the fd is read.
    """
    return load_spec_bytes(read_spec_fd(fd), bundle, f"the spec on fd {fd}")


def load_spec_bytes(
    raw: bytes, bundle: str | os.PathLike[str] | None, where: str = "the spec"
) -> Spec:
    """:func:`load_spec_fd` on bytes already read (a manager holding the document)."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{where} is larger than {MAX_SPEC_BYTES} bytes")
    base = "" if bundle is None else os.path.abspath(os.fspath(bundle))
    return _checked(_decode(raw, where), base)


def read_spec_fd(fd: int) -> bytes:
    """Everything on ``fd`` (at most :data:`MAX_SPEC_BYTES`), then close it, whatever happens.

    A regular file or memfd is read from offset 0 (the manager need not rewind what it
    wrote), anything else to EOF (a pipe: the manager must close its write end).
    """
    try:
        return _read_capped(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def _read_capped(fd: int) -> bytes:
    """Everything on ``fd`` up to EOF, at most :data:`MAX_SPEC_BYTES` (SpecError past it)."""
    try:
        seekable = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as e:
        raise SpecError(f"--spec-fd {fd}: {e.strerror}") from None
    chunks: list[bytes] = []
    got = 0
    while True:
        want = min(1 << 16, MAX_SPEC_BYTES + 1 - got)
        try:
            chunk = os.pread(fd, want, got) if seekable else os.read(fd, want)
        except InterruptedError:
            continue
        except OSError as e:
            raise SpecError(f"--spec-fd {fd}: {e.strerror}") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        got += len(chunk)
        if got > MAX_SPEC_BYTES:
            raise SpecError(f"--spec-fd {fd}: the spec is larger than {MAX_SPEC_BYTES} bytes")


def _decode(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        # json's message can span lines only through the document; keep ours on one line.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"{where} is not valid JSON: {msg}") from None


def _checked(doc: Any, bundle: str) -> Spec:
    """:func:`parse_spec`, then the one filesystem check: the root is a directory."""
    spec = parse_spec(doc, bundle)
    if not os.path.isdir(spec.root_path):
        raise SpecError(f"root.path {spec.root_path!r} is not a directory")
    return spec


def parse_spec(doc: Any, bundle: str) -> Spec:
    """Validate an already-decoded config.json; filesystem checks are left to :func:`load_spec`."""
    if not isinstance(doc, dict):
        raise SpecError("config.json: top level must be an object")
    root = doc.get("root")
    if root is None:
        raise SpecError("config.json: missing 'root'")
    if not isinstance(root, dict):
        raise SpecError("config.json: 'root' must be an object")
    root_path = root.get("path")
    if root_path is None:
        raise SpecError("config.json: missing 'root.path'")
    if not isinstance(root_path, str) or not root_path:
        raise SpecError("config.json: 'root.path' must be a non-empty string")
    root_readonly = _bool(root.get("readonly", False), "root.readonly")
    root_abs = _anchored(root_path, bundle, "root.path")

    mounts_doc = doc.get("mounts", [])
    if not isinstance(mounts_doc, list):
        raise SpecError("config.json: 'mounts' must be an array")
    mounts: list[NineMount] = []
    for i, m in enumerate(mounts_doc):
        nm = _parse_mount(m, i, bundle)
        if nm is not None:
            mounts.append(nm)

    uid = gid = None
    process = doc.get("process")
    if process is not None:
        if not isinstance(process, dict):
            raise SpecError("config.json: 'process' must be an object")
        user = process.get("user")
        if user is not None:
            if not isinstance(user, dict):
                raise SpecError("config.json: 'process.user' must be an object")
            if "uid" in user:
                uid = _uint(user["uid"], "process.user.uid")
            if "gid" in user:
                gid = _uint(user["gid"], "process.user.gid")

    uid_maps: tuple[IdMapping, ...] = ()
    gid_maps: tuple[IdMapping, ...] = ()
    linux = doc.get("linux")
    if linux is not None:
        if not isinstance(linux, dict):
            raise SpecError("config.json: 'linux' must be an object")
        uid_maps = _mappings(linux.get("uidMappings"), "linux.uidMappings")
        gid_maps = _mappings(linux.get("gidMappings"), "linux.gidMappings")

    return Spec(
        bundle=bundle,
        root_path=root_abs,
        root_readonly=root_readonly,
        mounts=tuple(mounts),
        uid=uid,
        gid=gid,
        uid_mappings=uid_maps,
        gid_mappings=gid_maps,
    )


def is_nine_mount(mtype: str | None, options: tuple[str, ...], destination: str) -> bool:
    """Whether a (normalized) spec mount is served by the gofer rather than the sandbox kernel."""
    if mtype != "bind" and "bind" not in options and "rbind" not in options:
        return False
    return not any(destination == p or destination.startswith(p + "/") for p in _KERNEL_FS_PREFIXES)


def _parse_mount(m: Any, i: int, bundle: str) -> NineMount | None:
    where = f"mounts[{i}]"
    if not isinstance(m, dict):
        raise SpecError(f"config.json: {where} must be an object")
    dest = m.get("destination")
    if not isinstance(dest, str) or not dest:
        raise SpecError(f"config.json: {where}.destination must be a non-empty string")
    if not dest.startswith("/"):
        raise SpecError(f"config.json: {where}.destination {dest!r} is not absolute")
    if ".." in dest.split("/"):
        raise SpecError(f"config.json: {where}.destination {dest!r} contains '..'")
    if "\0" in dest:
        raise SpecError(f"config.json: {where}.destination contains a NUL byte")
    dest = posixpath.normpath(dest)
    if dest.startswith("//"):  # normpath keeps a leading "//" (POSIX allows it); we do not.
        dest = "/" + dest.lstrip("/")
    mtype = m.get("type")
    if mtype is not None and not isinstance(mtype, str):
        raise SpecError(f"config.json: {where}.type must be a string")
    opts_doc = m.get("options", [])
    if not isinstance(opts_doc, list) or not all(isinstance(o, str) for o in opts_doc):
        raise SpecError(f"config.json: {where}.options must be an array of strings")
    options = tuple(opts_doc)
    if not is_nine_mount(mtype, options, dest):
        return None
    if dest == "/":
        raise SpecError(f"config.json: {where}.destination '/' would hide the root")
    source = m.get("source")
    if not isinstance(source, str) or not source:
        raise SpecError(f"config.json: {where}.source must be a non-empty string")
    source = _anchored(source, bundle, f"{where}.source")
    readonly = False
    for o in options:
        if o == "ro":
            readonly = True
        elif o == "rw":
            readonly = False
    return NineMount(destination=dest, source=source, readonly=readonly, options=options)


def _anchored(path: str, bundle: str, field: str) -> str:
    """``path`` made absolute against ``bundle`` (``""``: no bundle, so it must be absolute)."""
    if not bundle and not os.path.isabs(path):
        raise SpecError(f"config.json: {field} {path!r} is relative and no --bundle was given")
    return os.path.normpath(os.path.join(bundle, path))


def _bool(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise SpecError(f"config.json: {field!r} must be true or false")
    return v


def _uint(v: Any, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
        raise SpecError(f"config.json: {field!r} must be an integer in [0, 2^32)")
    return v


def _mappings(v: Any, field: str) -> tuple[IdMapping, ...]:
    if v is None:
        return ()
    if not isinstance(v, list):
        raise SpecError(f"config.json: {field!r} must be an array")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise SpecError(f"config.json: '{field}[{i}]' must be an object")
        out.append(
            IdMapping(
                container_id=_uint(m.get("containerID"), f"{field}[{i}].containerID"),
                host_id=_uint(m.get("hostID"), f"{field}[{i}].hostID"),
                size=_uint(m.get("size"), f"{field}[{i}].size"),
            )
        )
    return tuple(out)
