"""Terminals. Pseudo-terminals whose master the tree holds (fd kinds
pty-master, pty-slave) come back with the tree: a TTY record each, with
modes, window size and queued data, and the controlling terminal. Any other
terminal (fd kind tty: the one ckpt was run from, a pty slave whose master is
outside) is not the tree's: standard streams on it follow rstr's own, and
its modes (TERMINAL record) are put on the terminal the tree is restored on,
so that a full-screen program finds it raw again."""
import fcntl
import os
import stat
import struct
import termios

from . import proc
from . import records as R
from .errors import UcrError

K = R.FD_KINDS
KINDS = (K.TTY, K.PTY_MASTER, K.PTY_SLAVE)
TTY_MAJORS = set(range(136, 144)) | {4, 5}
PTS_MAJORS = range(136, 144)
PTMX = os.makedev(5, 2)
TERMIOS_SIZE = 64


def pts_index(rdev):
    return (os.major(rdev) - PTS_MAJORS[0]) * 256 + os.minor(rdev)


def classify(ctx, st, target, info):
    if not stat.S_ISCHR(st.st_mode):
        return None
    if st.st_rdev == PTMX:
        return K.PTY_MASTER
    if os.major(st.st_rdev) in PTS_MAJORS:
        return K.PTY_SLAVE
    if os.major(st.st_rdev) in TTY_MAJORS:
        return K.TTY
    return None


def note(ctx, fd, st, info, fields):
    """A pty master the tree holds is saved with the tree (its index goes in
    the FILE record's size field); any terminal's modes are kept for a
    restore on another terminal."""
    if fields["kind"] == K.PTY_MASTER:
        fields["size"] = int(info["tty-index"])
        ctx.tree.setdefault("ptys", {}).setdefault(fields["size"], (ctx.pid, fd))
        return
    if fields["kind"] == K.PTY_SLAVE:
        fields["size"] = pts_index(st.st_rdev)
    ctx.tree.setdefault("terminals", {}).setdefault(st.st_rdev, (ctx.pid, fd))


def _drain(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return out
        if not chunk:
            return out
        out += chunk


def quiet_termios(modes):
    """The struct termios modes with echo and output processing off, for
    putting queued terminal data back without processing it twice."""
    quiet = bytearray(modes)
    iflag, oflag, cflag, lflag = struct.unpack_from("<4I", quiet)
    struct.pack_into("<4I", quiet, 0, iflag, oflag & ~termios.OPOST, cflag, lflag & ~termios.ECHO)
    return bytes(quiet)


def _pty_record(index, pid, fd):
    """Modes, window size and queued data of a pseudo-terminal. The queues
    can only be read by consuming them, so they are read from both ends and
    written straight back, with echo and output processing off meanwhile."""
    from .native import lib
    try:
        slave = os.open(f"/dev/pts/{index}", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise UcrError(f"cannot open /dev/pts/{index} (fd {fd} of process {pid}): {e.strerror}") from None
    master = lib.ucr_pidfd_getfd(pid, fd)
    if master < 0:
        os.close(slave)
        raise UcrError(f"cannot reach the terminal master at fd {fd} of process {pid}: {os.strerror(-master)}")
    try:
        modes = fcntl.ioctl(slave, termios.TCGETS, bytes(TERMIOS_SIZE))
        winsize = fcntl.ioctl(slave, termios.TIOCGWINSZ, bytes(8))
        status = fcntl.fcntl(master, fcntl.F_GETFL)  # the target's own open file description
        fcntl.fcntl(master, fcntl.F_SETFL, status | os.O_NONBLOCK)
        try:
            fcntl.ioctl(slave, termios.TCSETS, quiet_termios(modes))
            to_slave, to_master = _drain(slave), _drain(master)
            os.write(master, to_slave)
            os.write(slave, to_master)
        finally:
            fcntl.ioctl(slave, termios.TCSETS, modes)
            fcntl.fcntl(master, fcntl.F_SETFL, status)
    finally:
        os.close(slave)
        os.close(master)
    return R.TTY.pack(index=index, input_len=len(to_slave), output_len=len(to_master),
                      termios=struct.unpack("<8Q", modes), winsize=struct.unpack("<Q", winsize)[0],
                      tail=to_slave + to_master)


def _terminal_record(rdev, pid, fd):
    try:
        t = os.open(proc.path(pid, "fd", str(fd)), os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise UcrError(f"cannot open the terminal at fd {fd} of process {pid}: {e.strerror}") from None
    try:
        modes = fcntl.ioctl(t, termios.TCGETS, bytes(TERMIOS_SIZE))
        winsize = fcntl.ioctl(t, termios.TIOCGWINSZ, bytes(8))
    except OSError as e:
        raise UcrError(f"reading the modes of the terminal at fd {fd} of process {pid}: {e.strerror}") from None
    finally:
        os.close(t)
    return R.TERMINAL.pack(rdev=rdev, termios=struct.unpack("<8Q", modes), winsize=struct.unpack("<Q", winsize)[0])


def tree_records(tree):
    ptys = tree.get("ptys", {})
    out = [_pty_record(index, pid, fd) for index, (pid, fd) in ptys.items()]
    for rdev, (pid, fd) in tree.get("terminals", {}).items():
        if os.major(rdev) not in PTS_MAJORS or pts_index(rdev) not in ptys:
            out.append(_terminal_record(rdev, pid, fd))
    return out


class Restore:
    for_zombies = True  # a zombie session leader takes its controlling terminal too

    def __init__(self, rst):
        self.rst = rst
        self.saved = {rec["index"]: rec for rec in rst.img.tree_records("TTY")}
        self.modes = {rec["rdev"]: rec for rec in rst.img.tree_records("TERMINAL")}
        self.ptys = {}   # image pty index -> (master fd, slave fd)

    def ours(self, rec):
        """True for a pseudo-terminal restored with the tree."""
        return rec["kind"] in (K.PTY_MASTER, K.PTY_SLAVE) and rec["size"] in self.saved

    def _pty(self, index):
        """A new pseudo-terminal for the image's pty index: modes, window
        size, and the data that was queued in it (written with echo and
        output processing off, as it was processed already)."""
        if index in self.ptys:
            return self.ptys[index]
        saved = self.saved[index]
        try:
            master = self.rst.keep(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
            C = self.rst.arch.C
            fcntl.ioctl(master, C["TIOCSPTLCK"], struct.pack("i", 0))
            slave = self.rst.keep(fcntl.ioctl(master, C["TIOCGPTPEER"], os.O_RDWR | os.O_NOCTTY))
        except OSError as e:
            raise UcrError(f"cannot create a pseudo-terminal: {e.strerror}") from None
        modes = struct.pack("<8Q", *saved["termios"])
        fcntl.ioctl(slave, termios.TCSETS, quiet_termios(modes))
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("<Q", saved["winsize"]))
        data = saved["tail"]
        os.write(master, data[:saved["input_len"]])
        os.write(slave, data[saved["input_len"]:saved["input_len"] + saved["output_len"]])
        fcntl.ioctl(slave, termios.TCSETS, modes)
        self.ptys[index] = master, slave
        return master, slave

    def open(self, rec):
        if not self.ours(rec):
            raise UcrError(f"fd {rec['fd']} is a terminal ({rec['tail']}) that is not the tree's; only standard "
                           "input, output and error may be one")
        master, slave = self._pty(rec["size"])
        if rec["kind"] == K.PTY_MASTER:  # reopening the master would make a new terminal
            return os.dup(master)
        return os.open(f"/proc/self/fd/{slave}", rec["flags"] | os.O_NOCTTY)

    def ctty(self, task):
        """The kept slave fd of the controlling terminal, when it is a
        pseudo-terminal restored with the tree; -1 otherwise."""
        rdev = task["tty_nr"]
        if os.major(rdev) not in PTS_MAJORS or pts_index(rdev) not in self.saved:
            return -1
        return self._pty(pts_index(rdev))[1]

    def prepare(self, plan, p):
        plan.ctty_fd, plan.ctty_fg = self.ctty(p["TASK"]), p["TASK"]["ctty_fg"]

    def terminal_modes(self, rec, fd):
        """The saved modes of the outside terminal rec was on, to put on fd (rstr's own), or None."""
        saved = self.modes.get(rec["rdev"])
        if saved is None or not os.isatty(fd):
            return None
        return struct.pack("<8Q", *saved["termios"])
