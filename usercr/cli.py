"""Command line: ckpt, rstr, ckptinfo and usercr (check, checkpoint, restart, info, run).

click is imported only when it is needed: ckpt and rstr parse command lines
made only of their own options in the plain forms themselves (see
_plain_options), which spares each run the ~30 ms of importing click, and
hand every other command line (--help, a mistake, -fv, --output=FILE) to
click, which parses it as it always did."""
import functools
import os
import stat
import sys

from .errors import UcrError


def _echo_err(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class Log:
    """-v prints progress to stderr; -l FILE also writes it there."""

    def __init__(self, verbose=False, logfile=None):
        from .safeio import open_log
        self.verbose = verbose
        self.path = logfile
        self.file = open_log(logfile) if logfile else None

    def __call__(self, msg):
        if self.verbose:
            _echo_err(msg)
        if self.file:
            try:
                self.file.write(msg + "\n")
                self.file.flush()
            except OSError as e:
                raise UcrError(f"cannot write log file {self.path}: {e.strerror}") from None


def one_line_errors(prog):
    """Every failure is one line on stderr and exit status 1; -d/--debug shows the traceback."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except UcrError as e:
                _echo_err(f"{prog}: error: {e}")
            except KeyboardInterrupt:
                _echo_err(f"{prog}: interrupted")
                sys.exit(130)
            except Exception as e:  # one line even for what we did not foresee
                if os.environ.get("USERCR_DEBUG"):
                    import traceback
                    traceback.print_exc()
                _echo_err(f"{prog}: internal error: {type(e).__name__}: {e}")
            sys.exit(1)
        return inner
    return wrap


def _open_output(fd):
    """The image's destination when it is not -o FILE: a given fd, or stdout."""
    out = 1 if fd is None else fd
    try:
        st = os.fstat(out)
    except OSError:
        raise UcrError(f"output fd {out} is not open") from None
    if os.isatty(out):
        raise UcrError("refusing to write an image to a terminal; use -o FILE or redirect the output")
    if stat.S_ISREG(st.st_mode):
        os.fchmod(out, 0o600)  # images hold process memory
    return out


def do_checkpoint(pid, output, output_fd, force, kill, logfile, verbose, compress=False):
    from .dump import checkpoint, validate_target
    from .safeio import AtomicFile
    validate_target(pid)
    log = Log(verbose, logfile)
    if not output:
        checkpoint(pid, _open_output(output_fd), kill=kill, log=log, compress=compress)
        return
    # A temporary file, named output only once complete and before --kill kills anything.
    with AtomicFile(output, 0o600, replace=force) as out:
        checkpoint(pid, out.fd, kill=kill, log=log, complete=out.commit, compress=compress)


def _signal_number(name):
    import signal
    if name is None:
        return None
    try:
        sig = int(name) if name.isdigit() else \
            signal.Signals[name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()]
    except KeyError:
        sig = None
    if sig not in signal.valid_signals():
        raise UcrError(f"unknown signal {name}")
    return sig


def do_restart(input, input_fd, pids, pidns, wait, pidfile, copies, forward, show_status, copy_status, logfile,
               verbose, debug, strict_files, trust_image):
    from .restore import restart
    from .trust import check_image
    if debug:
        os.environ["USERCR_DEBUG"] = "1"
    if input:
        try:
            fd = os.open(input, os.O_RDONLY)
        except OSError as e:
            raise UcrError(f"cannot open {input}: {e.strerror}") from None
    else:
        fd = 0 if input_fd is None else input_fd
        if os.isatty(fd):
            raise UcrError("standard input is a terminal; give the image with -i FILE or redirect it")
    check_image(fd, input or ("on standard input" if fd == 0 else f"on fd {fd}"), trust_image)
    forward = _signal_number(forward)
    if forward and not wait:
        raise UcrError("--signal needs --wait: rstr forwards it while it waits")
    roots, status = restart(fd, pids=pids, pidns=pidns, wait=wait, pidfile=pidfile, copies=copies,
                            forward=forward, log=Log(verbose, logfile), strict_files=strict_files)
    pid = roots[0]
    if status is None:
        return
    code = os.waitstatus_to_exitcode(status)
    if show_status:
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        _echo_err(f"rstr: process {pid} {how}")
    if copy_status:
        sys.exit(128 - code if code < 0 else code)


def do_info(image, verbose, tree, regs, as_json, errors):
    import click
    from .info import read_all, render
    if image:
        try:
            fd = os.open(image, os.O_RDONLY)
        except OSError as e:
            raise UcrError(f"cannot open {image}: {e.strerror}") from None
    else:
        fd = 0
    click.echo(render(read_all(fd), verbose=verbose, tree=tree, regs=regs, as_json=as_json, errors=errors))


# The plain forms of ckpt's and rstr's options: name -> (parameter, kind).
# The value of a PATH (click.Path(dir_okay=False)), str or int option, or of
# a (lo, hi) one (click.IntRange), is the next argument; a flag's is its kind,
# True or False. Both tables must match the click options in _commands().
PATH = "path"
CKPT_PLAIN = {
    "-o": ("output", PATH), "--output": ("output", PATH), "--output-fd": ("output_fd", int),
    "-f": ("force", True), "--force": ("force", True), "--kill": ("kill", True), "--compress": ("compress", True),
    "-l": ("logfile", PATH), "--logfile": ("logfile", PATH), "-v": ("verbose", True), "--verbose": ("verbose", True),
}
CKPT_DEFAULTS = dict(output=None, output_fd=None, force=False, kill=False, logfile=None, verbose=False,
                     compress=False)
RSTR_PLAIN = {
    "-i": ("input", PATH), "--input": ("input", PATH), "--input-fd": ("input_fd", int),
    "--pids": ("pids", True), "--no-pids": ("pids", False), "--pidns": ("pidns", True), "--no-pidns": ("pidns", False),
    "-w": ("wait", True), "--wait": ("wait", True), "-W": ("wait", False), "--no-wait": ("wait", False),
    "--pidfile": ("pidfile", PATH), "--copies": ("copies", (1, 1024)), "--signal": ("forward", str),
    "--show-status": ("show_status", True), "--copy-status": ("copy_status", True),
    "-l": ("logfile", PATH), "--logfile": ("logfile", PATH), "-v": ("verbose", True), "--verbose": ("verbose", True),
    "-d": ("debug", True), "--debug": ("debug", True), "--strict-files": ("strict_files", True),
    "--trust-image": ("trust_image", True),
}
RSTR_DEFAULTS = dict(input=None, input_fd=None, pids=None, pidns=None, wait=True, pidfile=None, copies=1,
                     forward=None, show_status=False, copy_status=False, logfile=None, verbose=False, debug=False,
                     strict_files=False, trust_image=False)


def _path_ok(value):
    """What click.Path(dir_okay=False) would accept without a word."""
    try:
        st = os.stat(value)
    except OSError:
        return True
    except ValueError:  # a NUL in it: click's to judge
        return False
    return not stat.S_ISDIR(st.st_mode) and os.access(value, os.R_OK)


def _plain_options(argv, plain, defaults, positional=None):
    """The parameters of a command line that uses only the plain forms of the
    options (each spelled out whole, a value as the next argument) and, for
    ckpt, one PID; None for anything else, which click then parses, reports
    or explains exactly as before."""
    kw = dict(defaults)
    args = list(argv)
    pos = []
    while args:
        arg = args.pop(0)
        if arg[:1] != "-":
            pos.append(arg)
            continue
        if arg not in plain:
            return None  # --help, --opt=value, -fv, --, -5, a mistake
        name, kind = plain[arg]
        if isinstance(kind, bool):
            kw[name] = kind
            continue
        if not args or args[0][:1] == "-":
            return None
        value = args.pop(0)
        if kind is int or isinstance(kind, tuple):
            try:
                value = int(value)
            except ValueError:
                return None
            if isinstance(kind, tuple) and not kind[0] <= value <= kind[1]:
                return None
        elif kind == PATH and not _path_ok(value):
            return None
        kw[name] = value
    if positional is None:
        return kw if not pos else None
    if len(pos) != 1:
        return None
    try:
        kw[positional] = int(pos[0])
    except ValueError:
        return None
    return kw


_COMMANDS = {}


def _commands():
    """The click commands, built on first use."""
    if _COMMANDS:
        return _COMMANDS
    import click

    ckpt_options = [
        click.argument("pid", type=int),
        click.option("-o", "--output", type=click.Path(dir_okay=False),
                     help="write the image to FILE (created 0600)"),
        click.option("--output-fd", type=int, help="write the image to this open fd"),
        click.option("-f", "--force", is_flag=True, help="overwrite an existing output file"),
        click.option("--kill", is_flag=True, help="kill the process once the image is complete"),
        click.option("--compress", is_flag=True, help="write a zstd-compressed image (rstr reads both kinds)"),
        click.option("-l", "--logfile", type=click.Path(dir_okay=False), help="append progress to FILE"),
        click.option("-v", "--verbose", is_flag=True, help="print progress"),
    ]
    rstr_options = [
        click.option("-i", "--input", type=click.Path(dir_okay=False), help="read the image from FILE"),
        click.option("--input-fd", type=int, help="read the image from this open fd"),
        click.option("--pids/--no-pids", default=None,
                     help="the original PIDs and TIDs (default); --no-pids: new ones, for a lone "
                          "single-threaded process only"),
        click.option("--pidns/--no-pidns", default=None,
                     help="in a new PID namespace; --no-pidns: in this one, or fail if a PID is taken "
                          "(default: this one if every PID is free here)"),
        click.option("-w/-W", "--wait/--no-wait", default=True, help="wait for the restored process to exit"),
        click.option("--pidfile", type=click.Path(dir_okay=False),
                     help="write the restored root's PID (one line per copy) to FILE"),
        click.option("--copies", type=click.IntRange(1, 1024), default=1,
                     help="restore N independent copies (each in its own PID namespace, or with new PIDs)"),
        click.option("--signal", "forward", metavar="SIG",
                     help="with --wait: on Ctrl-C, send SIG (name or number) to the restored root(s)"),
        click.option("--show-status", is_flag=True, help="print the exit status of the restored process"),
        click.option("--copy-status", is_flag=True, help="exit with the restored process's status"),
        click.option("-l", "--logfile", type=click.Path(dir_okay=False), help="append progress to FILE"),
        click.option("-v", "--verbose", is_flag=True, help="print progress"),
        click.option("-d", "--debug", is_flag=True, help="show tracebacks of internal errors"),
        click.option("--strict-files", is_flag=True,
                     help="refuse files whose size changed since the checkpoint (default: warn)"),
        click.option("--trust-image", is_flag=True,
                     help="as root, restore an image another user owns or could change (see docs/security.md)"),
    ]
    info_options = [
        click.argument("image", required=False, type=click.Path(dir_okay=False)),
        click.option("-v", "--verbose", is_flag=True, help="list every record (offset, type, length)"),
        click.option("-p", "--tree", "tree", is_flag=True, help="show the task tree"),
        click.option("--show-arch-regs", "regs", is_flag=True, help="show the saved registers"),
        click.option("--json", "as_json", is_flag=True, help="everything as JSON"),
        click.option("-e", "--errors", is_flag=True, help="show error records"),
    ]

    def apply(options):
        def deco(fn):
            for opt in reversed(options):
                fn = opt(fn)
            return fn
        return deco

    @click.command(help="Checkpoint process PID to an image (stdout, -o FILE or --output-fd).")
    @apply(ckpt_options)
    @one_line_errors("ckpt")
    def ckpt(**kw):
        do_checkpoint(**kw)

    @click.command(help="Restart a process from an image (stdin, -i FILE or --input-fd).")
    @apply(rstr_options)
    @one_line_errors("rstr")
    def rstr(**kw):
        do_restart(**kw)

    @click.command(help="Show what an image holds.")
    @apply(info_options)
    @one_line_errors("ckptinfo")
    def ckptinfo(**kw):
        do_info(**kw)

    @click.group(help="usercr: checkpoint/restart of Linux processes.")
    def usercr():
        pass

    @usercr.command("checkpoint", help=ckpt.help)
    @apply(ckpt_options)
    @one_line_errors("usercr checkpoint")
    def _checkpoint(**kw):
        do_checkpoint(**kw)

    @usercr.command("restart", help=rstr.help)
    @apply(rstr_options)
    @one_line_errors("usercr restart")
    def _restart(**kw):
        do_restart(**kw)

    @usercr.command("info", help=ckptinfo.help)
    @apply(info_options)
    @one_line_errors("usercr info")
    def _info(**kw):
        do_info(**kw)

    @usercr.command("check", help="Probe what this system offers checkpoint/restart.")
    @one_line_errors("usercr check")
    def _check():
        from .check import run_checks
        ok = True
        for name, good, detail, required in run_checks():
            label = "ok" if good else "missing" if required else "absent"
            click.echo(f"{label:8} {name}" + (f": {detail}" if detail else ""))
            ok &= good or not required
        sys.exit(0 if ok else 1)

    @usercr.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
                    help="""Start CMD so that it can later be restored with the same PIDs.

With --pidns (default) CMD runs as PID 1 of a new PID namespace, with --ipcns
(default) in a new IPC namespace too, so its SysV IPC objects die with it.
Checkpoint it with `ckpt PID` (the PID from --pidfile) and restore it with
`rstr --pids --pidns`: it comes back as PID 1 of a new namespace.

usercr run stays outside as the waiter: it forwards SIGINT, SIGTERM, SIGHUP,
SIGUSR1 and SIGUSR2 to CMD and exits with CMD's status (128+N if signal N
killed it). As PID 1 of its namespace, CMD ignores every signal it has no
handler for, except SIGKILL and SIGSTOP. /proc is not remounted: programs
reading /proc/self inside see the outer /proc and their outer PID.""")
    @click.option("--pidns/--no-pidns", default=True, help="run CMD as PID 1 of a new PID namespace (default)")
    @click.option("--ipcns/--no-ipcns", default=True, help="run CMD in a new IPC namespace (default)")
    @click.option("--pidfile", type=click.Path(dir_okay=False), help="write CMD's PID (as seen from outside) to FILE")
    @click.argument("cmd", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
    @one_line_errors("usercr run")
    def _run(pidns, ipcns, pidfile, cmd):
        from .run import run
        if cmd and cmd[0].startswith("-"):  # before CMD, an option we do not know (CMD follows "--")
            raise UcrError(f"no such option: {cmd[0]} (give the command after --)")
        sys.exit(run(list(cmd), pidns=pidns, ipcns=ipcns, pidfile=pidfile))

    _COMMANDS.update(ckpt=ckpt, rstr=rstr, ckptinfo=ckptinfo, usercr=usercr)
    return _COMMANDS


@one_line_errors("ckpt")
def _ckpt_plain(kw):
    do_checkpoint(**kw)


@one_line_errors("rstr")
def _rstr_plain(kw):
    do_restart(**kw)


def ckpt_main():
    """Checkpoint process PID to an image (stdout, -o FILE or --output-fd)."""
    kw = _plain_options(sys.argv[1:], CKPT_PLAIN, CKPT_DEFAULTS, positional="pid")
    if kw is None:
        return _commands()["ckpt"]()
    return _ckpt_plain(kw)


def rstr_main():
    """Restart a process from an image (stdin, -i FILE or --input-fd)."""
    kw = _plain_options(sys.argv[1:], RSTR_PLAIN, RSTR_DEFAULTS)
    if kw is None:
        return _commands()["rstr"]()
    return _rstr_plain(kw)


def ckptinfo_main():
    return _commands()["ckptinfo"]()


def usercr_main():
    return _commands()["usercr"]()
