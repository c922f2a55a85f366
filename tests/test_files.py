"""Files and terminals across a restart, with real programs: a log that
another process also wrote to, a polling tail of a growing file, standard
streams that shared one terminal description, and a program that had put
its terminal in raw mode. (An offset past the new end: test_bad_input.)"""
import os
import subprocess
import sys
import termios
import threading

from conftest import Appender, alive, assert_one_line_error, ckpt, lines, rstr_said, run, tool, wait_until


def numbers(text):
    return [int(x) for x in text.split() if x.isdigit()]


def test_log_written_by_another_process(procs, workloads, tmp_path):
    """`counter > log` while something else writes to log too: restored at
    the saved offset with a warning naming the file, three times."""
    log = tmp_path / "log"
    with open(log, "w") as f:  # O_TRUNC, no O_APPEND: the offset matters
        p = subprocess.Popen([workloads["counter"]], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    procs.popens.append(p)
    procs.pids.append(p.pid)
    pid = p.pid
    for cycle in range(3):
        wait_until(lambda: len(numbers(log.read_text())) >= 5, what="counting")
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        saved_at = max(numbers(log.read_text()))
        with open(log, "a") as other:
            other.write("x" * 4096 + "\n")
        pid, err = rstr_said(procs, img)
        assert "warning" in err and str(log) in err and "changed size" in err, err
        wait_until(lambda: saved_at + 5 in numbers(log.read_text()), what="counting on in the log")
        assert "x" * 4096 not in log.read_text()[:log.read_text().index(str(saved_at + 5))], \
            "the counter writes on at its saved offset, over what was appended"


def test_polling_tail_of_growing_file(procs, tmp_path):
    """tail without inotify polls a file that keeps growing while tail is
    checkpointed and gone: restored, it prints every line once, in order."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.write_text("")
    with Appender(data) as appender:
        pid = procs.start(["tail", "---disable-inotify", "-s", "0.05", "-n", "+1", "-f", str(data)],
                          stdout=out).pid
        for cycle in range(3):
            wait_until(lambda: len(lines(out)) >= 5 * (cycle + 1), what="tail printing")
            img = tmp_path / f"img{cycle}"
            ckpt(pid, img, "--kill")
            procs.kill(pid)
            pid, err = rstr_said(procs, img)
            assert str(data) in err, "the data file grew: a warning names it"
        appender.stop()
        wait_until(lambda: len(lines(out)) >= len(appender.written), what="tail to catch up")
        assert [int(x) for x in lines(out)] == appender.written


class Terminal:
    """A pseudo-terminal whose master the test reads from a thread."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.data = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def close(self):
        for fd in (self.slave, self.master):
            os.close(fd)


def test_std_streams_map_fd_by_fd(procs, workloads, tmp_path):
    """A program whose stdin, stdout and stderr share one terminal
    description, restored with `rstr </dev/null >out`: its output goes to
    out, fd by fd, not to rstr's stdin."""
    term = Terminal()
    try:
        p = subprocess.Popen([workloads["counter"]], stdin=term.slave, stdout=term.slave, stderr=term.slave,
                             start_new_session=True)
        procs.popens.append(p)
        procs.pids.append(p.pid)
        wait_until(lambda: len(numbers(term.data.decode())) >= 5, what="counting on the terminal")
        img, out = tmp_path / "img", tmp_path / "out"
        ckpt(p.pid, img, "--kill")
        procs.kill(p.pid)
        last = max(numbers(term.data.decode()))
        with open(out, "w") as f:
            rstr_said(procs, img, stdin=subprocess.DEVNULL, stdout=f)
        wait_until(lambda: last + 5 in numbers(out.read_text()), what="counting on into the file")
    finally:
        term.close()


RAW_COUNTER = r"""
import sys, time, tty
tty.setraw(0)
n = 0
while True:
    sys.stdout.write(f"{n}\r\n"); sys.stdout.flush()
    n += 1
    time.sleep(0.03)
"""


def test_terminal_modes_follow_to_another_terminal(procs, tmp_path):
    """A program that put its terminal in raw mode gets raw mode on the
    terminal it is restored on, not that terminal's cooked mode with echo."""
    first, second = Terminal(), Terminal()
    try:
        p = subprocess.Popen([sys.executable, "-c", RAW_COUNTER], stdin=first.slave, stdout=first.slave,
                             stderr=first.slave, start_new_session=True)
        procs.popens.append(p)
        procs.pids.append(p.pid)
        wait_until(lambda: len(numbers(first.data.decode())) >= 5, what="counting in raw mode")
        assert not termios.tcgetattr(first.slave)[3] & (termios.ICANON | termios.ECHO)
        img = tmp_path / "img"
        ckpt(p.pid, img, "--kill")
        procs.kill(p.pid)
        last = max(numbers(first.data.decode()))
        assert termios.tcgetattr(second.slave)[3] & termios.ECHO, "a fresh terminal echoes"
        rstr_said(procs, img, stdin=second.slave, stdout=second.slave, stderr=second.slave)
        wait_until(lambda: last + 5 in numbers(second.data.decode()), what="counting on the second terminal")
        lflag = termios.tcgetattr(second.slave)[3]
        assert not lflag & (termios.ICANON | termios.ECHO), "raw mode, as the program had set it"
    finally:
        first.close()
        second.close()


OWN_PROC_FILES = r"""
import ctypes, mmap, os, sys, time
area = mmap.mmap(-1, 3 * mmap.PAGESIZE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
maps = open("/proc/self/maps", "rb", buffering=0)
maps.read(40)  # a seq_file held part-read
cmdline = os.open("/proc/self/cmdline", os.O_RDONLY)
os.read(cmdline, 5)
cmdline_dup = os.dup(cmdline)  # one open file description, two fds
me = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY)
n = 0
while True:
    n += 1
    assert maps.tell() == 40 and os.lseek(cmdline_dup, 0, os.SEEK_CUR) == 5, "offsets lost"
    text = b""
    while chunk := os.pread(maps.fileno(), 1 << 16, len(text)):
        text += chunk
    text = text.decode()
    assert f"{addr:x}-" in text, "maps is not this process's"
    with open("status", opener=lambda p, f: os.open(p, f, dir_fd=me)) as status:
        nspid = next(l for l in status if l.startswith("NSpid:")).split()[-1]
    assert int(nspid) == os.getpid(), f"/proc/self dir is process {nspid}'s"
    print(n, flush=True)
    time.sleep(0.05)
"""


def test_own_proc_files_follow_the_process(procs, tmp_path):
    """A program holding files of its own /proc entry (maps part-read, a dup,
    the /proc/self directory) gets its own entry's files back, at the same
    offsets, whatever its PID on the host after each of three restarts."""
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", OWN_PROC_FILES], stdout=out).pid
    for cycle in range(3):
        wait_until(lambda: len(lines(out)) >= 3 * (cycle + 1), what="the loop")
        img = tmp_path / f"img{cycle}"
        ckpt(pid, img, "--kill")
        procs.kill(pid)
        pid, _ = rstr_said(procs, img)
    wait_until(lambda: len(lines(out)) >= 12, what="the loop after the last restart")
    assert all(x.isdigit() for x in lines(out)), lines(out)[-5:]


def test_another_process_proc_file_refused(procs, tmp_path):
    """A parent holding its child's /proc/PID/stat open: reopening that by
    number could name another process, so ckpt refuses in one line and the
    tree runs on."""
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen(['sleep', '1000'])\n"
              "held = open(f'/proc/{child.pid}/stat')\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(1000)\n")
    out = tmp_path / "out"
    pid = procs.start([sys.executable, "-c", script], stdout=out).pid
    procs.track(int(wait_until(lambda: lines(out), what="the child to start")[0]))
    r = run([tool("ckpt"), str(pid), "-o", str(tmp_path / "img"), "--kill"])
    err = assert_one_line_error(r)
    assert "/stat" in err and "own" in err, err
    assert alive(pid)
