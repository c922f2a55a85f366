"""Syscalls run inside a frozen process: the state only a task itself can
tell (signal actions, brk, timers, pdeathsig, sigaltstack...). One session
per process puts a syscall instruction in its code and a scratch page in its
memory; each kind of state asks its questions through it; closing the
session puts back everything it changed."""
import os
import struct

from . import interrupts
from .errors import UcrError
from .native import ffi

LONG = struct.Struct("<q" if ffi.sizeof("long") == 8 else "<i")
WORD_MASK = (1 << 8 * LONG.size) - 1


def _code_mapping(pid, maps):
    code = next((m for m in maps if "x" in m.perms and not m.special and m.name != "[stack]"), None)
    if code is None:
        raise UcrError(f"process {pid} has no executable mapping to run syscalls from")
    return code.start


class Session:
    """Injection into every thread of one process; `scratch` is a page of
    the process that syscalls may write their answers to."""

    def __init__(self, threads, arch, maps):
        self.threads, self.arch = threads, arch
        self.main = threads[0]
        self.pid = self.main.pid
        self.code = _code_mapping(self.pid, maps)
        self.scratch = None

    def __enter__(self):
        self.held = interrupts.Held().__enter__()
        self.main.prepare_injection(self.code)
        for t in self.threads[1:]:
            t.prepare_injection(self.code, poke=False)
        try:
            C = self.arch.C
            page = os.sysconf("SC_PAGE_SIZE")
            self.scratch = self.call(self.main, "mapping a scratch page", "mmap", 0, page,
                                     C["PROT_READ"] | C["PROT_WRITE"], C["MAP_PRIVATE"] | C["MAP_ANONYMOUS"], -1, 0)
        except BaseException as e:
            try:
                self._end()
            finally:
                self.held.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if self.scratch is not None:
                self.main.syscall(self.arch.SYSCALLS["munmap"], self.scratch, os.sysconf("SC_PAGE_SIZE"))
        finally:
            try:
                self._end()
            finally:
                self.held.__exit__(*exc)

    def _end(self):
        for t in self.threads[1:]:
            t.end_injection()
        self.main.end_injection()

    def syscall(self, tracee, name, *args):
        """The raw result (negative errno on failure)."""
        return tracee.syscall(self.arch.SYSCALLS[name], *args)

    def call(self, tracee, what, name, *args):
        r = self.syscall(tracee, name, *args)
        if r < 0:
            raise UcrError(f"{what} of process {tracee.pid}: {os.strerror(-r)}")
        return r

    def read(self, tracee, size, offset=0):
        return tracee.read(self.scratch + offset, size)

    def longs(self, tracee, n):
        """n C longs from the scratch page, signed."""
        return [LONG.unpack(self.read(tracee, LONG.size, i * LONG.size))[0] for i in range(n)]


class ProcessDump:
    """What the kinds of state share while one process is dumped: its PID,
    its seized threads (main first), the arch, the tree's PID namespace, the
    tree-wide tables, and the answers given inside the injection session."""

    def __init__(self, threads, arch, ns, tree):
        self.threads = threads
        self.main = threads[0]
        self.pid = self.main.pid
        self.arch, self.ns, self.tree = arch, ns, tree
        self.status = None
        self.stat = None
        self.maps = None
        self.injected = {}
