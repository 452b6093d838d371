"""The compiled seccomp program does what gofer9p.seccomp.POLICY says, rule by rule.

The program the gofer loads (``compile_seccomp`` + ``own_pid_written``, as ``install_seccomp``
loads it) is run here in a small classic-BPF interpreter on ``struct seccomp_data`` inputs made
from the table: every rule's arguments get its action, arguments no rule matches get the mode's
default, and so does every syscall the table does not name.  No process is confined, so a
mismatch between the table and the filter built from it shows up here, named, and not as a
SIGSYS in some daemon test.
"""

from __future__ import annotations

import struct

import pyseccomp
import pytest

from gofer9p import seccomp
from gofer9p.seccomp import EQ, OWN_PID, POLICY, Arg, Rule

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
DEFAULT = {"kill": RET_KILL_PROCESS, "log": RET_LOG}
PID = 4242
ARCH = pyseccomp.system_arch()
MAX_NR = 512  # beyond every syscall number of the 64-bit tables (x86-64 stops below 470)


def run_bpf(prog: bytes, data: bytes) -> int:
    """Classic BPF as the kernel runs a seccomp filter: the value of the RET it reaches."""
    insns = [struct.unpack_from("=HBBI", prog, off) for off in range(0, len(prog), 8)]
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls, src = code & 0x07, (x if code & 0x08 else k)
        if cls == 0x00:  # LD
            mode = code & 0xE0
            assert code & 0x18 == 0, f"LD of size {code & 0x18:#x}"  # words only in seccomp
            if mode == 0x20:  # ABS: a word of seccomp_data
                a = struct.unpack_from("=I", data, k)[0]
            else:
                a = mem[k] if mode == 0x60 else k
        elif cls == 0x01:  # LDX
            x = mem[k] if code & 0xE0 == 0x60 else k
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            op = code & 0xF0
            a = {0x00: a + src, 0x10: a - src, 0x40: a | src, 0x50: a & src,
                 0x60: a << src, 0x70: a >> src, 0xA0: a ^ src}[op] & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            hit = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += jt if hit else jf
        elif cls == 0x06:  # RET
            return k if code & 0x18 == 0 else a
        else:  # MISC: TAX / TXA
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x


def seccomp_data(nr: int, args: list[int], arch: int = ARCH) -> bytes:
    return struct.pack("=iIQ6Q", nr, arch, 0x1000, *args)


def want(c: Arg) -> int:
    """The value a condition compares with, :data:`OWN_PID` being our test pid."""
    return PID if c.value == OWN_PID else c.value


def matches(rule: Rule, args: list[int]) -> bool:
    """The table's own meaning of a rule."""
    return all(
        (args[c.argno] == want(c)) if c.op is EQ else (args[c.argno] & c.mask == want(c))
        for c in rule.args
    )


def satisfying(rule: Rule) -> list[int]:
    """Arguments for which ``rule`` holds, with junk wherever the rule does not look."""
    args = [0xDEAD0000_0000BEEF] * 6
    for c in rule.args:
        args[c.argno] = want(c) if c.op is EQ else (want(c) | (0xA5A5A5A5_A5A5A5A5 & ~c.mask))
    assert matches(rule, args)
    return args


def expected(rule: Rule) -> int:
    return RET_ERRNO | rule.errno if rule.errno else RET_ALLOW


def nr_of(name: str) -> int | None:
    nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return None if nr < 0 else int(nr)


@pytest.fixture(scope="module", params=["kill", "log"])
def program(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    prog, _allowed, _nr = seccomp.compile_seccomp(request.param)
    return request.param, seccomp.own_pid_written(prog, PID)


def test_every_rule_gets_its_action(program: tuple[str, bytes]) -> None:
    _mode, prog = program
    wrong = []
    for name, rules in POLICY.items():
        nr = nr_of(name)
        if nr is None:
            continue
        for rule in rules:
            got = run_bpf(prog, seccomp_data(nr, satisfying(rule)))
            if got != expected(rule):
                wrong.append(f"{name} {rule}: {got:#x}, want {expected(rule):#x}")
    assert wrong == []


def test_arguments_no_rule_matches_get_the_default(program: tuple[str, bytes]) -> None:
    mode, prog = program
    checked = 0
    for name, rules in POLICY.items():
        nr = nr_of(name)
        if nr is None or any(not r.args for r in rules):
            continue
        for rule in rules:
            for c in rule.args:  # one condition broken at a time: the rule must not apply
                for delta in (1, 1 << 31, 1 << 40):
                    args = satisfying(rule)
                    args[c.argno] ^= delta if c.op is EQ else (delta & c.mask or 1)
                    if any(matches(r, args) for r in rules):
                        continue
                    got = run_bpf(prog, seccomp_data(nr, args))
                    assert got == DEFAULT[mode], (name, rule, hex(args[c.argno]), hex(got))
                    checked += 1
    assert checked > 20


def test_syscalls_outside_the_table_get_the_default(program: tuple[str, bytes]) -> None:
    mode, prog = program
    named = {nr_of(name) for name in POLICY}
    outside = [nr for nr in range(MAX_NR) if nr not in named]
    for nr in outside:
        got = run_bpf(prog, seccomp_data(nr, [0] * 6))
        assert got == DEFAULT[mode], (nr, hex(got))
    for name in ("execve", "ptrace", "mount", "setuid", "kill", "connect", "chroot", "unshare"):
        assert nr_of(name) in outside, name


def test_another_architecture_is_killed(program: tuple[str, bytes]) -> None:
    _mode, prog = program
    nr = nr_of("read")
    assert nr is not None
    assert run_bpf(prog, seccomp_data(nr, [0] * 6, arch=ARCH ^ 0x40000000)) == RET_KILL_PROCESS


def test_counts_and_names_come_from_the_table() -> None:
    allowing = [n for n, rules in POLICY.items() if any(not r.errno for r in rules)]
    answering = [n for n, rules in POLICY.items() if all(r.errno for r in rules)]
    assert seccomp.syscall_whitelist() == sorted(allowing)
    assert set(seccomp.SECCOMP_ERRNO_RULES) == set(answering)
    resolvable = [n for n in allowing if nr_of(n) is not None]
    assert seccomp.compile_seccomp("kill")[1] == len(resolvable)
    assert seccomp.SECCOMP_ERRNO_RULES["clone3"] == "ENOSYS"


def test_own_pid_is_written_exactly_once() -> None:
    prog = seccomp.compile_seccomp("kill")[0]
    assert struct.pack("=I", OWN_PID) in prog
    out = seccomp.own_pid_written(prog, PID)
    assert struct.pack("=I", OWN_PID) not in out
    with pytest.raises(seccomp.SeccompError):
        seccomp.own_pid_written(out, PID)  # no placeholder left to write


def test_interpreter_sees_a_table_change() -> None:
    """The checks above would notice a filter built from another table (here: one rule less)."""
    prog = seccomp.own_pid_written(seccomp.compile_seccomp("kill")[0], PID)
    nr = nr_of("fcntl")
    assert nr is not None
    rule = Rule((Arg(1, EQ, 1031),))  # F_SETPIPE_SZ: the splice pipe
    assert rule in POLICY["fcntl"]
    assert run_bpf(prog, seccomp_data(nr, satisfying(rule))) == RET_ALLOW
    assert run_bpf(prog, seccomp_data(nr, [0, 8, 0, 0, 0, 0])) == RET_KILL_PROCESS  # F_SETOWN
