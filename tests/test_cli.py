"""ckpt and rstr parse plain command lines themselves (no click import); what
they accept must mean exactly what click makes of it, and the rest is click's."""

import pytest

from usercr import cli

CKPT_LINES = [
    ["123"], ["123", "-o", "img"], ["-o", "img", "123"], ["123", "--output", "img", "-f", "--kill"],
    ["123", "--output-fd", "5", "-v", "-l", "log"], ["123", "--force", "--verbose", "--logfile", "log"],
    ["123", "-o", "a", "-o", "b"], ["123", "-o", ""], ["+7"], ["0"],
    # click's: help, joined forms, mistakes
    ["--help"], ["123", "--output=img"], ["123", "-oimg"], ["123", "-fv"], ["123", "-o"], ["123", "-o", "-x"],
    ["123", "456"], [], ["abc"], ["-5"], ["123", "--", "x"], ["123", "--output-fd", "x"], ["123", "--bogus"],
    ["123", "-o", "/"],
]
RSTR_LINES = [
    [], ["-i", "img"], ["-i", "img", "-W", "--pidfile", "p", "--trust-image"], ["--input-fd", "3", "--pids", "--pidns"],
    ["--pids", "--no-pids", "-w", "--no-wait", "--wait"], ["--show-status", "--copy-status", "-d", "-v", "-l", "x"],
    ["--no-pidns", "--debug", "--verbose", "--logfile", "x", "--input", "y"],
    ["--copies", "3", "-i", "img"], ["--signal", "TERM", "-w", "--copies", "1024"],
    ["--help"], ["--copies", "0"], ["--copies", "1025"], ["--signal"], ["--copies=2"], ["img"], ["-i"], ["-iimg"], ["-Wv"], ["--input=img"], ["--input-fd", "three"], ["-i", "/"],
]


def click_params(cmd, args):
    try:
        ctx = cmd.make_context(cmd.name, list(args))
    except BaseException:  # click's usage errors and --help (SystemExit/Exit)
        return None
    return ctx.params


@pytest.mark.parametrize("args", CKPT_LINES)
def test_ckpt_plain_matches_click(args):
    got = cli._plain_options(args, cli.CKPT_PLAIN, cli.CKPT_DEFAULTS, positional="pid")
    if got is not None:
        assert got == click_params(cli._commands()["ckpt"], args)


@pytest.mark.parametrize("args", RSTR_LINES)
def test_rstr_plain_matches_click(args):
    got = cli._plain_options(args, cli.RSTR_PLAIN, cli.RSTR_DEFAULTS)
    if got is not None:
        assert got == click_params(cli._commands()["rstr"], args)


def test_plain_lines_are_taken_and_the_rest_left_to_click():
    taken = [a for a in CKPT_LINES if cli._plain_options(a, cli.CKPT_PLAIN, cli.CKPT_DEFAULTS, "pid") is not None]
    assert taken == CKPT_LINES[:10]
    taken = [a for a in RSTR_LINES if cli._plain_options(a, cli.RSTR_PLAIN, cli.RSTR_DEFAULTS) is not None]
    assert taken == RSTR_LINES[:9]


def test_options_match_click_declarations():
    """The plain spellings are exactly click's option spellings, each for the same parameter
    (--version, which click handles and which passes nothing on, aside)."""
    import click
    for name, table in (("ckpt", cli.CKPT_PLAIN), ("rstr", cli.RSTR_PLAIN)):
        cmd = cli._commands()[name]
        spellings = {o: p.name for p in cmd.params if isinstance(p, click.Option) and p.expose_value
                     for o in list(p.opts) + list(p.secondary_opts)}
        assert {o: n for o, (n, _) in table.items()} == spellings


def test_cli_import_does_not_import_click():
    import subprocess
    import sys
    code = "import sys, usercr.cli; print('click' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
