"""Command line: ckpt, rstr, ckptinfo and usercr (checkpoint, restart, info,
check, run, completion), thin layers over the Python API (usercr.api).

Each command's options are declared once, one line each, in its table
(CKPT_OPTIONS, RSTR_OPTIONS, ...): the parser, --help and the shell completion
all come from there. A ckpt or rstr option that do_checkpoint / do_restart do
not name goes on, under its dest, as a keyword argument to
usercr.dump.checkpoint / usercr.restore.restart: adding one is one line. The parser is this module's own and imports nothing, so
ckpt and rstr start as fast as Python does; it accepts the usual forms
(-oFILE, --output=FILE, -fv, --) and refuses, in one line and with exit status
2, an unknown, repeated or conflicting option."""
import os
import sys

from . import __version__
from .errors import Error, UsageError, log_nothing

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED = 0, 1, 2, 130, 141
EXIT_STATUSES = ("exit status: 0 done, 1 failed (one line on stderr), 2 usage error, 130 interrupted, "
                 "141 output closed by its reader (as `| head`; nothing said)")
FLAG, COUNT = "flag", "count"


class Opt:
    """One option. spellings: "-o --output"; value: FLAG, COUNT (-vv), or the
    metavar of its value (FILE, N: an int, within `range` if given; anything
    else: a string); neg: the spellings that set it False ("-W --no-wait");
    group: options of one group exclude each other; dest: the parameter
    (default: the long spelling, as an identifier)."""

    def __init__(self, spellings, value=FLAG, help="", neg="", default=None, group=None, dest=None, range=None):
        self.names, self.neg = spellings.split(), neg.split()
        self.value, self.help, self.group, self.range = value, help, group, range
        long = next((n for n in self.names if n.startswith("--")), self.names[0])
        self.dest = dest or long.lstrip("-").replace("-", "_")
        self.default = default if default is not None else (0 if value == COUNT else
                                                            False if value == FLAG and not neg else None)

    @property
    def takes_value(self):
        return self.value not in (FLAG, COUNT)

    def convert(self, name, text):
        if self.value == "FILE" and not text:
            raise UsageError(f"{name} needs a file name")
        if self.value != "N":
            return text
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"{name} wants a number, not {text!r}") from None
        if self.range and not self.range[0] <= n <= self.range[1]:
            raise UsageError(f"{name} must be {self.range[0]} to {self.range[1]}, not {n}")
        return n


VERBOSE = Opt("-v --verbose", COUNT, "log progress to stderr (-vv: also details and internal tracebacks)")
LOGFILE = Opt("-l --logfile", "FILE", "append the log (and any error) to FILE")
DEBUG = Opt("-d --debug", help="show tracebacks of internal errors")
CKPT_OPTIONS = [
    Opt("-o --output", "FILE", "write the image to FILE (created 0600, named once complete)", group="output"),
    Opt("--output-fd", "N", "write the image to this open fd", group="output"),
    Opt("-f --force", help="overwrite an existing output file"),
    Opt("--kill", help="kill the process once the image is complete"),
    Opt("--stats", "FILE", "write statistics as JSON to FILE (docs/api.md)"),
    Opt("--parent", "FILE", "write only the pages that changed since image FILE (incremental)"),
    Opt("--pre-copy", help="copy memory while the tree runs; freeze it only briefly"),
    Opt("--ext-unix-sk", help="save Unix sockets connected outside the tree, to reconnect them at restart"),
    Opt("--tcp-established", help="also save TCP connections to a peer outside the tree (kept alive for rstr)"),
    Opt("--compress", help="write a zstd-compressed image (rstr and ckptinfo read either)"),
    LOGFILE, VERBOSE, DEBUG,
]
RSTR_OPTIONS = [
    Opt("-i --input", "FILE", "read the image from FILE", group="input"),
    Opt("--input-fd", "N", "read the image from this open fd", group="input"),
    Opt("--pids", help="the original PIDs and TIDs (default); --no-pids: new ones, for a lone single-threaded "
        "process only", neg="--no-pids"),
    Opt("--pidns", help="in a new PID namespace; --no-pidns: in this one, or fail if a PID is taken (default: "
        "this one if every PID is free here)", neg="--no-pidns"),
    Opt("-w --wait", help="wait for the restored process to exit (default); -W: do not", neg="-W --no-wait",
        default=True),
    Opt("--pidfile", "FILE", "write the restored root's PID (one line per copy) to FILE"),
    Opt("--copies", "N", "restore N independent copies (each in its own PID namespace, or with new PIDs)",
        default=1, range=(1, 1024)),
    Opt("--signal", "SIG", "with --wait: on Ctrl-C, send SIG (name or number) to the restored root(s)",
        dest="forward"),
    Opt("--show-status", help="print the exit status of the restored process"),
    Opt("--copy-status", help="exit with the restored process's status"),
    Opt("--strict-files", help="refuse files whose size changed since the checkpoint (default: warn)"),
    Opt("--trust-image", help="as root, restore an image another user owns or could change (docs/security.md)"),
    Opt("--stats", "FILE", "write statistics as JSON to FILE (docs/api.md)"),
    LOGFILE, VERBOSE, DEBUG,
]
INFO_OPTIONS = [
    Opt("-v --verbose", help="list every record (offset, type, length)"),
    Opt("-p --tree", help="show the task tree"),
    Opt("--show-arch-regs", help="show the saved registers of every thread", dest="regs"),
    Opt("--json", help="everything as JSON (docs/api.md)", dest="as_json"),
    Opt("-e --errors", help="show error records"),
]
RUN_OPTIONS = [
    Opt("--pidns", help="run CMD as PID 1 of a new PID namespace (default)", neg="--no-pidns", default=True),
    Opt("--ipcns", help="run CMD in a new IPC namespace (default)", neg="--no-ipcns", default=True),
    Opt("--pidfile", "FILE", "write CMD's PID (as seen from outside) to FILE"),
]
HELP = Opt("-h --help", help="show this help and exit")
VERSION = Opt("--version", help="show the version and exit")


class Command:
    """A command: its options, its positional arguments ((METAVAR, dest,
    how): how is int, str, "optional" or "rest"), and what it runs."""

    def __init__(self, prog, summary, options, args=(), run=None, details=""):
        self.prog, self.summary, self.options, self.args = prog, summary, options, args
        self.run, self.details = run, details
        self.by_name = {}
        for opt in options + [HELP, VERSION]:
            for name in opt.names + opt.neg:
                assert name not in self.by_name, f"{prog}: {name} declared twice"
                self.by_name[name] = opt

    def parse(self, argv):
        """The parameters of argv, or UsageError. --help and --version print and exit."""
        kw = {opt.dest: opt.default for opt in self.options}
        given, groups, pos = {}, {}, []
        args = list(argv)
        while args:
            arg = args.pop(0)
            if arg == "--":
                pos += args
                break
            if arg[:1] != "-" or arg == "-" or (pos and self.args and self.args[-1][2] == "rest"):
                pos.append(arg)
                continue
            if arg.startswith("--"):
                name, eq, value = arg.partition("=")
                items = [(name, value if eq else None)]
            else:  # -fv, -oFILE
                items, rest = [], arg[1:]
                while rest:
                    name, rest = "-" + rest[0], rest[1:]
                    opt = self.by_name.get(name)
                    if opt and opt.takes_value and rest:
                        items.append((name, rest))
                        break
                    items.append((name, None))
            for name, value in items:
                opt = self.by_name.get(name)
                if opt is None:
                    raise UsageError(f"no such option: {name}")
                if opt is HELP:
                    _write_out(self.help())
                    sys.exit(EXIT_OK)
                if opt is VERSION:
                    _write_out(f"{self.prog} (usercr) {__version__}\n")
                    sys.exit(EXIT_OK)
                if opt.takes_value:
                    if value is None:
                        if not args:
                            raise UsageError(f"{name} needs a value ({opt.value})")
                        value = args.pop(0)
                elif value is not None:
                    raise UsageError(f"{name} takes no value")
                if opt.value == COUNT:
                    kw[opt.dest] += 1
                    continue
                if opt.dest in given:
                    was = given[opt.dest]
                    raise UsageError(f"{name} given twice" if was == name else f"{was} and {name} conflict")
                if opt.group in groups:
                    raise UsageError(f"{groups[opt.group]} and {name} conflict: give one")
                given[opt.dest] = name
                if opt.group:
                    groups[opt.group] = name
                kw[opt.dest] = opt.convert(name, value) if opt.takes_value else name not in opt.neg
        return self._positional(kw, pos)

    def _positional(self, kw, pos):
        for metavar, dest, how in self.args:
            if how == "rest":
                if not pos:
                    raise UsageError(f"missing argument {metavar}")
                kw[dest], pos = pos, []
            elif not pos:
                if how != "optional":
                    raise UsageError(f"missing argument {metavar}")
                kw[dest] = None
            else:
                value = pos.pop(0)
                if how is int:
                    try:
                        value = int(value)
                    except ValueError:
                        raise UsageError(f"{metavar} must be a number, not {value!r}") from None
                kw[dest] = value
        if pos:
            raise UsageError(f"unexpected argument {pos[0]!r}")
        return kw

    def usage(self):
        args = " ".join(f"[{m}]" if how == "optional" else f"[--] {m}..." if how == "rest" else m
                        for m, _, how in self.args)
        return f"usage: {self.prog} [OPTIONS] {args}".rstrip()

    def help(self):
        rows = []
        for opt in self.options + [HELP, VERSION]:
            names = ", ".join(opt.names + opt.neg)
            rows.append(("  " + names + (f" {opt.value}" if opt.takes_value else ""), opt.help))
        import textwrap
        width = max(len(r[0]) for r in rows) + 2
        lines = [self.usage(), "", self.summary, ""]
        if self.details:
            lines += [self.details, ""]
        lines += ["options:"] + [textwrap.fill(b, 79, initial_indent=f"{a:{width}}", subsequent_indent=" " * width)
                                 for a, b in rows]
        return "\n".join(lines + ["", EXIT_STATUSES, ""])

    def main(self, argv=None):
        """Runs the command on argv (default: sys.argv[1:]); exits with its status."""
        argv = sys.argv[1:] if argv is None else argv
        try:
            kw = self.parse(argv)
        except UsageError as e:
            _say(f"{self.prog}: usage error: {e} (see {self.prog} --help)")
            sys.exit(EXIT_USAGE)
        sys.exit(_run_reporting(self.prog, self.run, kw))


def _say(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class _OutputClosed(Exception):
    """Standard output's reader went away (`ckptinfo IMG | head`): the
    command ends quietly, as a C tool killed by SIGPIPE does."""


def _write_out(text):
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise _OutputClosed from None


def _run_reporting(prog, fn, kw):
    """Runs fn(**kw): every failure is one line on stderr (and in the log)."""
    logger = None
    from . import interrupts
    interrupts.install()
    try:
        if "logfile" in kw:
            logger = _Logger(prog, kw.pop("verbose"), kw.pop("logfile"))
            kw["log"] = logger if logger.active else log_nothing
        return fn(**kw) or EXIT_OK
    except UsageError as e:
        msg, status = f"{prog}: usage error: {e} (see {prog} --help)", EXIT_USAGE
    except Error as e:
        msg, status = f"{prog}: error: {e}", EXIT_FAILED
    except KeyboardInterrupt:
        msg, status = f"{prog}: interrupted", EXIT_INTERRUPTED
    except _OutputClosed:
        return EXIT_OUTPUT_CLOSED
    except Exception as e:  # one line even for what we did not foresee
        msg, status = f"{prog}: internal error: {type(e).__name__}: {e}", EXIT_FAILED
        if os.environ.get("USERCR_DEBUG") or (logger and logger.verbose >= 2):
            import traceback
            traceback.print_exc()
    _say(msg)
    if logger:
        logger.failed(msg)
    return status


class _Logger:
    """-v/-vv and -l FILE through the standard logging module (logger
    "usercr"), imported only when one of them is given: -v logs INFO to
    stderr, -vv also DEBUG; the file gets the same and every error. Called,
    it logs at INFO. A log write that fails is an error, not a warning."""

    def __init__(self, prog, verbose, logfile):
        self.verbose, self.file, self.active = verbose, None, bool(verbose or logfile)
        if not self.active:
            return
        import logging
        from .safeio import open_log
        self.logger = logging.getLogger("usercr")
        self.logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
        self.logger.propagate = False
        if verbose:
            h = logging.StreamHandler(sys.stderr)
            # errors and warnings are on stderr already (_run_reporting's one line, rstr's warnings)
            h.addFilter(lambda rec: rec.levelno < logging.WARNING)
            h.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(h)
        if logfile:
            f = open_log(logfile)

            class LogFile(logging.Handler):
                def emit(self, record):
                    try:
                        f.write(self.format(record) + "\n")
                        f.flush()
                    except OSError as e:
                        self.broken = True
                        raise Error(f"cannot write log file {logfile}: {e.strerror}") from None
            self.file = LogFile()
            self.file.broken = False
            self.file.setFormatter(logging.Formatter(f"%(asctime)s {prog}[{os.getpid()}] %(levelname)s %(message)s"))
            self.logger.addHandler(self.file)

    def __call__(self, msg):
        self.logger.info(msg)

    def debug(self, msg):
        self.logger.debug(msg)

    def warning(self, msg):
        self.logger.warning(msg)

    def failed(self, msg):
        if self.file and not self.file.broken:
            try:
                self.logger.error(msg)
            except Error:
                pass


def _debug(debug):
    if debug:
        os.environ["USERCR_DEBUG"] = "1"


def _progress():
    from .stats import Progress
    return Progress.wanted()


def do_checkpoint(pid, output, output_fd, force, kill, stats, log, debug, **options):
    from .api import checkpoint
    _debug(debug)
    dest = output if output else 1 if output_fd is None else output_fd
    result = checkpoint(pid, dest, kill=kill, force=force, log=log, progress=_progress(), **options)
    if stats:
        result.write(stats)
    getattr(log, "debug", log_nothing)(f"statistics: {result.to_dict()}")


def _signal_number(name):
    if name is None:
        return None
    import signal
    try:
        sig = int(name) if name.isdigit() else \
            signal.Signals[name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()]
    except KeyError:
        sig = None
    if sig not in signal.valid_signals():
        raise Error(f"unknown signal {name}")
    return sig


def do_restart(input, input_fd, forward, show_status, copy_status, stats, log, debug, **options):
    from .api import restart
    _debug(debug)
    src = input if input else 0 if input_fd is None else input_fd
    if not input and os.isatty(src):
        raise Error("standard input is a terminal; give the image with -i FILE or redirect it")
    restored = restart(src, forward=_signal_number(forward), log=log, progress=_progress(), **options)
    if stats:
        restored.stats.write(stats)
    getattr(log, "debug", log_nothing)(f"statistics: {restored.stats.to_dict()}")
    if restored.status is None:
        return
    code = restored.status
    if show_status:
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        _say(f"rstr: process {restored.pid} {how}")
    if copy_status:
        return 128 - code if code < 0 else code


def do_info(image, verbose, tree, errors, regs, as_json):
    from .api import open_image
    from .info import render
    if image is None and os.isatty(0):
        raise UsageError("give an image: ckptinfo IMAGE, or ckptinfo < IMAGE")
    text = render(open_image(0 if image is None else image), verbose=verbose, tree=tree, regs=regs,
                  as_json=as_json, errors=errors)
    _write_out(text + "\n")


def do_check():
    from .check import run_checks
    ok = True
    for name, good, detail, required in run_checks():
        label = "ok" if good else "missing" if required else "absent"
        _write_out(f"{label:8} {name}" + (f": {detail}" if detail else "") + "\n")
        ok &= good or not required
    return EXIT_OK if ok else EXIT_FAILED


def do_run(pidns, ipcns, pidfile, cmd):
    from .run import run
    return run(list(cmd), pidns=pidns, ipcns=ipcns, pidfile=pidfile)


RUN_DETAILS = """With --pidns (default) CMD runs as PID 1 of a new PID namespace, with --ipcns
(default) in a new IPC namespace too, so its SysV IPC objects die with it.
Checkpoint it with `ckpt PID` (the PID from --pidfile) and restore it with
`rstr --pids --pidns`: it comes back as PID 1 of a new namespace.

usercr run stays outside as the waiter: it forwards SIGINT, SIGTERM, SIGHUP,
SIGUSR1 and SIGUSR2 to CMD and exits with CMD's status (128+N if signal N
killed it). As PID 1 of its namespace, CMD ignores every signal it has no
handler for, except SIGKILL and SIGSTOP. /proc is not remounted: programs
reading /proc/self inside see the outer /proc and their outer PID."""

CKPT_SUMMARY = "Checkpoint process PID and its descendants to an image (stdout, -o FILE or --output-fd N)."
RSTR_SUMMARY = "Restart the process tree of an image (stdin, -i FILE or --input-fd N)."
INFO_SUMMARY = "Show what an image (IMAGE, or standard input) holds."


def _commands(prefix=""):
    """{name: Command}; prefix "usercr " gives the subcommands' program names."""
    return {
        "checkpoint": Command(prefix + "checkpoint" if prefix else "ckpt", CKPT_SUMMARY, CKPT_OPTIONS,
                              [("PID", "pid", int)], do_checkpoint),
        "restart": Command(prefix + "restart" if prefix else "rstr", RSTR_SUMMARY, RSTR_OPTIONS, [], do_restart),
        "info": Command(prefix + "info" if prefix else "ckptinfo", INFO_SUMMARY, INFO_OPTIONS,
                        [("IMAGE", "image", "optional")], do_info),
        "check": Command(prefix + "check", "Probe what this system offers checkpoint/restart.", [], [], do_check),
        "run": Command(prefix + "run", "Start CMD so that it can later be restored with the same PIDs.",
                       RUN_OPTIONS, [("CMD", "cmd", "rest")], do_run, RUN_DETAILS),
        "completion": Command(prefix + "completion", "Print the bash completion of ckpt, rstr, ckptinfo and "
                              "usercr (eval \"$(usercr completion bash)\").", [], [("SHELL", "shell", str)],
                              do_completion),
    }


def do_completion(shell):
    if shell != "bash":
        raise UsageError(f"no completion for {shell!r}; there is one for bash (zsh: with bashcompinit)")
    cmds = _commands("usercr ")
    out = ["# bash completion for usercr (usercr completion bash)", "_usercr_complete() {",
           '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd=${COMP_WORDS[0]##*/}',
           '    [ "$cmd" = usercr ] && cmd=${COMP_WORDS[1]}',
           '    if [ "${COMP_WORDS[0]##*/}" = usercr ] && [ "$COMP_CWORD" = 1 ]; then',
           f'        COMPREPLY=($(compgen -W "{" ".join(cmds)} --help --version" -- "$cur")); return',
           '    fi',
           '    case $cmd in']
    for key, alias in (("checkpoint", "ckpt"), ("restart", "rstr"), ("info", "ckptinfo"), ("check", None),
                       ("run", None), ("completion", None)):
        cmd = cmds[key]
        files = " | ".join(n for o in cmd.options if o.value == "FILE" for n in o.names)
        words = " ".join(n for o in cmd.options + [HELP, VERSION] for n in o.names + o.neg)
        out.append(f"    {key}{'|' + alias if alias else ''})")
        if files:
            out.append(f'        case $prev in {files}) COMPREPLY=($(compgen -f -- "$cur")); return;; esac')
        if key == "checkpoint":
            out.append('        [[ $cur != -* ]] && { COMPREPLY=($(compgen -W "$(ls /proc | grep "^[0-9]")" '
                       '-- "$cur")); return; }')
        elif key == "info":
            out.append('        [[ $cur != -* ]] && { COMPREPLY=($(compgen -f -- "$cur")); return; }')
        out.append(f'        COMPREPLY=($(compgen -W "{words}" -- "$cur"));;')
    out += ["    esac", "}", "complete -F _usercr_complete ckpt rstr ckptinfo usercr", ""]
    _write_out("\n".join(out))


def _ended(run):
    """Runs run() (which exits) and ends with _exit once stdout and stderr
    are flushed: the interpreter's teardown of every module (~3-4 ms of a
    small restore) frees nothing the kernel does not. Nothing is left to
    run by then: the dump's threads are joined, the log file is flushed at
    every line."""
    try:
        run()
        status = EXIT_OK
    except SystemExit as e:
        status = e.code or 0
    except _OutputClosed:
        status = EXIT_OUTPUT_CLOSED
    for stream in filter(None, (sys.stdout, sys.stderr)):
        try:
            stream.flush()
        except BrokenPipeError:  # what is left goes nowhere: its reader has all it wanted
            status = status or EXIT_OUTPUT_CLOSED
        except (OSError, ValueError):  # what was written is lost, so the command failed
            status = status or EXIT_FAILED
    os._exit(status if isinstance(status, int) else EXIT_FAILED)


def _run_briefly(name):
    """ckpt, rstr and ckptinfo run briefly and make few reference cycles:
    without the cyclic collector, whose passes over every imported module's
    objects would cost ~1-2 ms of a small restore."""
    import gc
    gc.disable()
    _ended(_commands()[name].main)


def ckpt_main():
    _run_briefly("checkpoint")


def rstr_main():
    _run_briefly("restart")


def ckptinfo_main():
    _run_briefly("info")


def usercr_main(argv=None):
    _ended(lambda: _usercr(sys.argv[1:] if argv is None else argv))


def _usercr(argv):
    cmds = _commands("usercr ")
    if argv and argv[0] in cmds:
        cmds[argv[0]].main(argv[1:])
    if argv and argv[0] == "--version":
        _write_out(f"usercr {__version__}\n")
        sys.exit(EXIT_OK)
    if argv and argv[0] in ("-h", "--help"):
        _write_out("usage: usercr COMMAND [OPTIONS] [ARGS]\n\nusercr: checkpoint/restart of Linux processes."
                         "\n\ncommands:\n" + "".join(f"  {k:11} {c.summary}\n" for k, c in cmds.items()) +
                         f"\n`usercr COMMAND --help` describes each.\n\n{EXIT_STATUSES}\n")
        sys.exit(EXIT_OK)
    what = f"no such command: {argv[0]}" if argv else "missing command"
    _say(f"usercr: usage error: {what} (see usercr --help)")
    sys.exit(EXIT_USAGE)
