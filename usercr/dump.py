"""The user engine's checkpoint: freeze a task with ptrace, read it, write the image."""
import os
import stat

from . import proc
from . import records as R
from .arch import current as current_arch
from .errors import UcrError
from .image import ImageWriter, header_record
from .native import lib
from .ptrace import Tracee

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_GROWSDOWN = 0x01, 0x02, 0x20, 0x0100
TTY_MAJORS = set(range(136, 144)) | {4, 5}
UNCATCHABLE = (9, 19)  # SIGKILL, SIGSTOP


def log_nothing(msg):
    pass


def _ancestors():
    pid, out = os.getpid(), set()
    while pid > 1:
        out.add(pid)
        pid = int(proc.stat_fields(pid)[4])
    return out


def validate_target(pid):
    if pid <= 0:
        raise UcrError(f"invalid PID {pid}")
    if not proc.exists(pid):
        raise UcrError(f"process {pid} does not exist")
    if pid in _ancestors():
        raise UcrError(f"process {pid} is ckpt itself or one of its parents")
    if proc.stat_fields(pid)[3] == "Z":
        raise UcrError(f"process {pid} is a zombie")


def checkpoint(pid, out_fd, kill=False, log=log_nothing):
    """Writes an image of process pid to out_fd. On any failure the process is
    released unharmed and UcrError is raised."""
    validate_target(pid)
    arch = current_arch()
    tracee = Tracee(pid, arch)
    done = False
    try:
        tracee.seize()
        log(f"seized {pid}")
        tids = proc.threads(pid)
        if len(tids) > 1:
            raise UcrError(f"process {pid} has {len(tids)} threads; multithreaded processes are not supported yet")
        writer = ImageWriter(out_fd)
        writer.add(header_record(arch.ARCH_ID, PAGE_SIZE))
        writer.add(arch.dump_header())
        _write_task(tracee, arch, writer, log)
        writer.finish()
        _sync(out_fd)
        done = True
        log(f"image complete: {writer.offset} bytes")
    finally:
        tracee.release(kill=kill and done)


def _sync(fd):
    try:
        os.fsync(fd)
    except OSError:
        pass  # pipes and ttys cannot be synced; the reader has what was written


def _injected_state(tracee, arch, maps):
    """State only the task itself can tell: signal actions, sigaltstack, brk."""
    code = next((m for m in maps if "x" in m.perms and not m.special and m.name != "[stack]"), None)
    if code is None:
        raise UcrError(f"process {tracee.pid} has no executable mapping to run syscalls from")
    st = proc.status(tracee.pid)
    interesting = proc.sigmask(st["SigCgt"]) | proc.sigmask(st["SigIgn"])
    nr = arch.SYSCALLS
    tracee.prepare_injection(code.start)
    try:
        scratch = tracee.syscall(nr["mmap"], 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if scratch < 0:
            raise UcrError(f"mmap inside process {tracee.pid} failed: {os.strerror(-scratch)}")
        actions = []
        for sig in range(1, 65):
            if sig in UNCATCHABLE or not interesting >> (sig - 1) & 1:
                actions.append((0, 0, 0, 0))
                continue
            r = tracee.syscall(nr["rt_sigaction"], sig, 0, scratch, 8)
            if r < 0:
                raise UcrError(f"reading the action of signal {sig}: {os.strerror(-r)}")
            actions.append(arch.unpack_ksigaction(tracee.read(scratch, arch.KSIGACTION_SIZE)))
        r = tracee.syscall(nr["sigaltstack"], 0, scratch)
        if r < 0:
            raise UcrError(f"reading the signal stack: {os.strerror(-r)}")
        altstack = arch.unpack_stack_t(tracee.read(scratch, arch.STACK_T_SIZE))
        brk = tracee.syscall(nr["brk"], 0)
        tracee.syscall(nr["munmap"], scratch, PAGE_SIZE)
    finally:
        tracee.end_injection()
    return actions, altstack, brk


def _file_record(pid, fd, target, info):
    try:
        st = os.stat(proc.path(pid, "fd", str(fd)))
    except FileNotFoundError:
        raise UcrError(f"fd {fd} of process {pid} vanished") from None
    flags = int(info.get("flags", "0"), 8)
    cloexec = 1 if flags & os.O_CLOEXEC else 0
    common = dict(fd=fd, flags=flags & ~os.O_CLOEXEC, fd_flags=cloexec, pos=int(info.get("pos", 0)),
                  mode=st.st_mode, dev=st.st_dev, ino=st.st_ino, rdev=st.st_rdev, size=st.st_size)
    if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS:
        kind = 3
    elif stat.S_ISREG(st.st_mode):
        kind = 0
    elif stat.S_ISDIR(st.st_mode):
        kind = 1
    elif stat.S_ISCHR(st.st_mode):
        kind = 2
    elif stat.S_ISFIFO(st.st_mode):
        kind = 4
    elif stat.S_ISSOCK(st.st_mode):
        kind = 5
    else:
        raise UcrError(f"fd {fd} of process {pid} ({target}) is of a type that cannot be checkpointed yet")
    if kind in (0, 1, 2) and target.endswith(" (deleted)"):
        raise UcrError(f"fd {fd} of process {pid} refers to deleted file {target[:-10]}")
    if kind in (3, 4, 5) and fd > 2:
        raise UcrError(f"fd {fd} of process {pid} is a {R.FILE_KINDS[kind]} ({target}); "
                       "only standard input/output/error may be one yet")
    return R.FILE.pack(kind=kind, tail=target, **common)


def _vma_records(tracee, maps):
    """VMA and SPECIAL_DATA records, and the page ranges to copy."""
    pid = tracee.pid
    vmas, specials, ranges = [], [], []
    for m in maps:
        if m.name in tracee.arch.GATE_MAPPINGS:
            continue
        flags = MAP_SHARED if m.shared else MAP_PRIVATE
        fields = dict(start=m.start, end=m.end, prot=m.prot, offset=m.offset)
        name = m.name
        if m.special:
            kind = 2
            if m.name == "[vdso]":
                specials.append(R.SPECIAL_DATA.pack(vaddr=m.start, tail=tracee.read(m.start, m.end - m.start)))
        elif not m.inode or m.name in ("", "[heap]", "[stack]") or m.name.startswith("[anon:"):
            kind = 0
            flags |= MAP_ANONYMOUS | (MAP_GROWSDOWN if m.name == "[stack]" else 0)
            ranges.append((m.start, m.end, lib.UCR_DUMP_ANON))
        elif m.deleted or m.name.startswith(("/memfd:", "/SYSV", "/dev/zero")):
            # Backing object cannot be reopened by path: keep the contents.
            if m.shared:
                kind = 3
                flags |= MAP_ANONYMOUS
            else:
                kind = 0
                flags |= MAP_ANONYMOUS
            ranges.append((m.start, m.end, lib.UCR_DUMP_ANON))
        else:
            kind = 1
            try:
                st = os.stat(proc.path(pid, "map_files", f"{m.start:x}-{m.end:x}"))
            except OSError as e:
                raise UcrError(f"cannot stat {name} mapped by process {pid}: {e.strerror}") from None
            fields.update(dev=st.st_dev, ino=st.st_ino, size=st.st_size)
            if not m.shared:
                ranges.append((m.start, m.end, lib.UCR_DUMP_FILE_PRIVATE))
        vmas.append(R.VMA.pack(kind=kind, flags=flags, tail=name, **fields))
    return vmas, specials, ranges


def _write_task(tracee, arch, writer, log):
    pid = tracee.pid
    before = proc.maps(pid)
    actions, altstack, brk = _injected_state(tracee, arch, before)
    maps = proc.maps(pid)
    st = proc.status(pid)
    sf = proc.stat_fields(pid)
    ppid, pgid, sid, tty_nr, tpgid = (int(x) for x in sf[4:9])
    mm = dict(start_code=int(sf[26]), end_code=int(sf[27]), start_stack=int(sf[28]),
              start_data=int(sf[45]), end_data=int(sf[46]), start_brk=int(sf[47]), brk=brk,
              arg_start=int(sf[48]), arg_end=int(sf[49]), env_start=int(sf[50]), env_end=int(sf[51]))
    uids = [int(x) for x in st["Uid"].split()]
    gids = [int(x) for x in st["Gid"].split()]
    groups = [int(x) for x in st.get("Groups", "").split()]
    rseq = tracee.rseq_configuration() or (0, 0, 0)

    writer.add(R.TREE.pack(nr_tasks=1, root_pid=pid))
    writer.add(R.PIDS.pack(pid=pid, tgid=pid, ppid=ppid, pgid=pgid, sid=sid))
    writer.add(R.TASK.pack(pid=pid, exit_signal=int(sf[38]), comm=sf[2][:15],
                           personality=int(proc.read_text(pid, "personality"), 16),
                           tty_nr=tty_nr, ctty_fg=1 if tty_nr and tpgid == pgid else 0, nr_threads=1,
                           tail=proc.readlink(pid, "exe")))
    writer.add(R.CREDS.pack(uid=uids[0], euid=uids[1], suid=uids[2], fsuid=uids[3],
                            gid=gids[0], egid=gids[1], sgid=gids[2], fsgid=gids[3], tail=groups))
    writer.add(R.RLIMITS.pack(limits=[v & (2**64 - 1) for lim in proc.rlimits(pid) for v in lim]))
    writer.add(R.FS.pack(umask=int(st.get("Umask", "0022"), 8),
                         tail=[proc.readlink(pid, "cwd"), proc.readlink(pid, "root")]))
    writer.add(R.SIGHAND.pack(actions=[v for a in actions for v in a]))
    writer.add(R.THREAD.pack(tid=pid, rseq_ptr=rseq[0], rseq_len=rseq[1], rseq_sig=rseq[2],
                             altstack_sp=altstack[0], altstack_flags=altstack[1], altstack_size=altstack[2],
                             blocked=proc.sigmask(st["SigBlk"])))
    for rec in arch.dump_cpu(tracee):
        writer.add(rec)
    for shared in (False, True):
        for info in tracee.pending_signals(shared):
            writer.add(R.SIGPENDING.pack(shared=int(shared), signo=int.from_bytes(info[:4], "little"), tail=info))
    for fd, target, info in proc.fds(pid):
        writer.add(_file_record(pid, fd, target, info))
    vmas, specials, ranges = _vma_records(tracee, maps)
    writer.add(R.MM.pack(nr_vmas=len(vmas), tail=proc.read_bytes(pid, "auxv"), **mm))
    for rec in vmas + specials:
        writer.add(rec)
    writer.flush()
    writer.add(R.PAGES_BEGIN.pack(nr_vmas=len(vmas), csum_a=writer.csum[0], csum_b=writer.csum[1]))
    log(f"copying memory of {len(ranges)} mappings")
    pagemap_fd = os.open(proc.path(pid, "pagemap"), os.O_RDONLY)
    try:
        writer.pages(pid, pagemap_fd, tracee.mem_fd, ranges, PAGE_SIZE)
    finally:
        os.close(pagemap_fd)
