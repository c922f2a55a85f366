"""Command line conventions: one option table per command, from which the
parser, --help and the completion come; --version and -h everywhere; usage
errors (unknown, repeated, conflicting options) in one line with status 2;
logging with -v/-vv and -l FILE; bash completion."""
import os
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, ckpt, files_image, lines, run, tool, wait_until
from usercr import cli
from usercr.errors import UsageError

CKPT = cli._commands()["checkpoint"]
RSTR = cli._commands()["restart"]
DEFAULTS = dict(output=None, output_fd=None, force=False, kill=False, stats=None, logfile=None, verbose=0,
                debug=False, parent=None, pre_copy=False, ext_unix_sk=False,
                tcp_established=False, compress=False)


@pytest.mark.parametrize("args, want", [
    (["123"], {}),
    (["123", "-o", "img"], dict(output="img")),
    (["-o", "img", "123"], dict(output="img")),
    (["123", "-oimg"], dict(output="img")),
    (["123", "--output=img"], dict(output="img")),
    (["123", "-fv", "--kill"], dict(force=True, verbose=1, kill=True)),
    (["123", "-vv", "-l", "log"], dict(verbose=2, logfile="log")),
    (["123", "-v", "--verbose", "-v"], dict(verbose=3)),
    (["--output-fd", "5", "--", "123"], dict(output_fd=5)),
    (["123", "-o", "-x"], dict(output="-x")),  # an option's value is the next argument, whatever it is
    (["+7", "--stats", "s.json"], dict(pid=7, stats="s.json")),
])
def test_ckpt_forms(args, want):
    assert CKPT.parse(args) == {**DEFAULTS, "pid": 123, **want}


@pytest.mark.parametrize("args, said", [
    (["123", "-o", "a", "-o", "b"], "-o given twice"),
    (["123", "-o", "a", "--output", "b"], "-o and --output conflict"),
    (["123", "-o", "x", "--output-fd", "5"], "-o and --output-fd conflict"),
    (["123", "--kill", "--kill"], "--kill given twice"),
    (["123", "--bogus"], "no such option: --bogus"),
    (["123", "-fx"], "no such option: -x"),
    (["123", "-o"], "-o needs a value"),
    (["123", "-o", ""], "-o needs a file name"),
    (["123", "--kill=yes"], "--kill takes no value"),
    (["123", "--output-fd", "x"], "--output-fd wants a number"),
    ([], "missing argument PID"),
    (["abc"], "PID must be a number"),
    (["-5"], "no such option: -5"),
    (["123", "456"], "unexpected argument '456'"),
])
def test_ckpt_refusals(args, said):
    with pytest.raises(UsageError) as e:
        CKPT.parse(args)
    assert said in str(e.value)


@pytest.mark.parametrize("args, said", [
    (["--wait", "--no-wait"], "--wait and --no-wait conflict"),
    (["-w", "-W"], "-w and -W conflict"),
    (["--pids", "--no-pids"], "--pids and --no-pids conflict"),
    (["-i", "a", "--input-fd", "3"], "-i and --input-fd conflict"),
    (["--copies", "0"], "--copies must be 1 to 1024"),
    (["--copies", "1025"], "--copies must be 1 to 1024"),
    (["img"], "unexpected argument 'img'"),
])
def test_rstr_refusals(args, said):
    with pytest.raises(UsageError) as e:
        RSTR.parse(args)
    assert said in str(e.value)


def test_rstr_forms():
    kw = RSTR.parse(["-Wi", "img", "--no-pids", "--copies=3", "--signal", "-3", "--no-pidns"])
    assert (kw["wait"], kw["input"], kw["pids"], kw["copies"], kw["forward"], kw["pidns"]) == \
        (False, "img", False, 3, "-3", False)
    assert (RSTR.parse([])["wait"], RSTR.parse([])["pids"], RSTR.parse([])["copies"]) == (True, None, 1)


def test_one_declaration_per_spelling():
    """Every spelling belongs to one option; --help lists each."""
    for cmd in cli._commands().values():
        text = cmd.help()
        for opt in cmd.options:
            assert all(name in text for name in opt.names + opt.neg)
            assert opt.help


COMMANDS = [["ckpt"], ["rstr"], ["ckptinfo"], ["usercr"]] + \
    [["usercr", c] for c in ("checkpoint", "restart", "info", "check", "run", "completion")]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_and_version_everywhere(cmd):
    argv = [tool(cmd[0])] + cmd[1:]
    for flag in ("-h", "--help"):
        r = run(argv + [flag])
        assert r.returncode == 0 and r.stderr == "" and "usage:" in r.stdout, r
        assert "exit status: 0 done, 1 failed" in r.stdout
    r = run(argv + ["--version"])
    assert r.returncode == 0 and r.stdout.strip().endswith("0.1.0") and "\n" not in r.stdout.strip(), r


@pytest.mark.parametrize("argv", [
    ["ckpt"], ["ckpt", "1", "-o", "a", "-o", "b"], ["ckpt", "1", "-o", "x", "--output-fd", "5"], ["ckpt", "x"],
    ["ckpt", "1", "--bogus"], ["rstr", "--no-wait", "-w"], ["rstr", "img"], ["rstr", "--copies", "0"],
    ["ckptinfo", "a", "b"], ["ckptinfo", "-x"], ["usercr"], ["usercr", "nope"], ["usercr", "run"],
    ["usercr", "run", "--bogus", "--", "true"], ["usercr", "checkpoint", "1", "--kill", "--kill"],
    ["usercr", "completion", "fish"],
], ids=" ".join)
def test_usage_errors_are_one_line_and_status_2(argv):
    r = run([tool(argv[0])] + argv[1:], stdin=subprocess.DEVNULL)
    err = assert_one_line_error(r)
    assert r.returncode == 2 and "usage error" in err and "--help" in err, (r.returncode, err)
    assert r.stdout == ""


def test_failures_are_status_1(tmp_path):
    r = run([tool("rstr"), "-i", str(tmp_path / "none")])
    assert "cannot open" in assert_one_line_error(r) and r.returncode == 1
    r = run([tool("ckpt"), "999999999", "-o", str(tmp_path / "img")])
    assert "does not exist" in assert_one_line_error(r) and r.returncode == 1
    assert not (tmp_path / "img").exists()


def _to_closed_pipe(argv):
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60)
    finally:
        os.close(w)


@pytest.mark.parametrize("argv", [["ckptinfo", "-v", "--show-arch-regs"], ["ckptinfo", "--help"],
                                  ["usercr", "--version"], ["usercr", "check"]], ids=" ".join)
def test_output_closed_by_its_reader_is_quiet(procs, workloads, tmp_path, argv):
    """`ckptinfo IMG | head`: no traceback, no "internal error", status 141
    (as a C tool that SIGPIPE ends)."""
    if argv[0] == "ckptinfo" and argv[1] == "-v":
        argv = argv + [str(files_image(procs, workloads, tmp_path)[0])]
    r = _to_closed_pipe([tool(argv[0])] + argv[1:])
    assert r.returncode == 141 and r.stderr == "", r


def test_image_to_a_closed_pipe_is_an_error(procs, workloads, tmp_path):
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: lines(out), what="counter")
    r = _to_closed_pipe([tool("ckpt"), str(p.pid)])
    assert "writing the image: Broken pipe" in assert_one_line_error(r) and r.returncode == 1
    n = len(lines(out))
    wait_until(lambda: len(lines(out)) > n, what="the counter to go on")


def test_ckptinfo_without_image_on_a_terminal():
    """No argument and a terminal on stdin: a usage error, not a wait for input."""
    master, slave = os.openpty()
    try:
        r = run([tool("ckptinfo")], stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    err = assert_one_line_error(r)
    assert r.returncode == 2 and "give an image" in err, err


def test_verbose_levels_and_logfile(procs, workloads, tmp_path):
    """-v logs progress to stderr, -vv details too; -l FILE gets the log and any error."""
    out = tmp_path / "out"
    p = procs.start([workloads["counter"], "20"], stdout=out)
    wait_until(lambda: len(lines(out)) >= 3, what="counter")
    quiet = ckpt(p.pid, tmp_path / "a")
    assert quiet.stderr == ""
    one = ckpt(p.pid, tmp_path / "b", "-v")
    assert "image complete" in one.stderr and "statistics" not in one.stderr, one.stderr
    two = ckpt(p.pid, tmp_path / "c", "-vv")
    assert "image complete" in two.stderr and "statistics: {'frozen_s'" in two.stderr, two.stderr
    log = tmp_path / "log"
    ckpt(p.pid, tmp_path / "d", "-l", str(log))
    assert "INFO image complete" in log.read_text()
    r = run([tool("ckpt"), str(p.pid), "-o", str(tmp_path / "d"), "-l", str(log)])
    err = assert_one_line_error(r)
    assert "exists" in err and r.returncode == 1
    assert log.read_text().splitlines()[-1].endswith("ERROR " + err), log.read_text()
    r = run([tool("rstr"), "-i", str(tmp_path / "none"), "-l", str(log)])
    assert log.read_text().splitlines()[-1].endswith("ERROR " + assert_one_line_error(r))


def test_restart_warnings_in_logfile(procs, workloads, tmp_path):
    """rstr's warnings go to stderr once, and into -l FILE."""
    img, src = files_image(procs, workloads, tmp_path)
    with open(src, "ab") as f:
        f.write(b"y")  # the input the program reads changed size: a warning
    log, pidfile = tmp_path / "rstr.log", tmp_path / "pid"
    r = run([tool("rstr"), "-i", str(img), "-W", "--pidfile", str(pidfile), "-v", "-l", str(log)])
    assert r.returncode == 0, r.stderr
    procs.track(int(pidfile.read_text()))
    warned = [ln for ln in r.stderr.splitlines() if "changed size" in ln]
    assert len(warned) == 1, r.stderr
    assert any("WARNING" in ln and "changed size" in ln for ln in lines(log)), log.read_text()


def test_bash_completion(tmp_path):
    """`usercr completion bash` completes every command's options from the table, and files after -o/-i."""
    r = run([tool("usercr"), "completion", "bash"])
    assert r.returncode == 0, r.stderr
    script = tmp_path / "c.bash"
    script.write_text(r.stdout)
    (tmp_path / "img1").write_text("")

    def complete(*words):
        """COMPREPLY for the command line words, the last being completed."""
        code = (f"source {script}; COMP_WORDS=({' '.join(map(repr, words))}); COMP_CWORD={len(words) - 1}; "
                "_usercr_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
        return subprocess.run(["bash", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              timeout=30).stdout.split()
    assert {"--output", "--output-fd", "--kill", "--stats", "--version", "-h"} <= set(complete("ckpt", "1", "-"))
    assert str(os.getpid()) in complete("ckpt", "")
    assert {"--no-pids", "-W", "--copies", "--trust-image"} <= set(complete("rstr", "-"))
    assert {"--json", "--show-arch-regs"} <= set(complete("usercr", "info", "-v", "-"))
    assert complete("rstr", "-i", "i") == ["img1"]
    assert {"checkpoint", "restart", "info", "run"} <= set(complete("usercr", ""))


def test_cli_import_is_light():
    """ckpt and rstr start fast: importing the CLI imports no parser library, logging or json."""
    code = "import sys, usercr.cli; print(sorted({'click', 'argparse', 'logging', 'json'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
