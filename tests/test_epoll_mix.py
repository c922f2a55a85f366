"""One epoll set over a timerfd, an eventfd, a signalfd, a socketpair, a
listening Unix socket and its accepted connections (workloads/epollmix.c),
through three cycles of ckpt --kill and a default restart: every counter
goes on from where it was, the ones the program drives itself exactly."""
import re

from conftest import alive, ckpt, lines, wait_until
from test_anonfds import image_records
from test_tree import assert_sane, failures, family, restored, start, ticked, ticks, tree

PER_CONN = 8   # epollmix.c: messages per client connection
COUNTS = re.compile(r"counts round=(\d+) timer=(\d+) event=(\d+) signal=(\d+) pair=(\d+) conns=(\d+) msgs=(\d+)")
FIELDS = ("round", "timer", "event", "signal", "pair", "conns", "msgs")


def counts(out):
    return [dict(zip(FIELDS, map(int, m.groups()))) for m in map(COUNTS.fullmatch, lines(out)) if m]


def check_counts(seen):
    """The totals the program drives itself are exact functions of the round
    (printed every 5): nothing lost or delivered twice; the timer's and the
    client's never go back."""
    assert [c["round"] for c in seen] == list(range(0, 5 * len(seen), 5)), "a counts line every 5 rounds"
    for prev, c in zip([None] + seen, seen):
        r = c["round"]
        assert c["event"] == sum(i % 7 + 1 for i in range(r + 1)), c
        assert c["signal"] == c["pair"] == r + 1, c
        assert -(-c["msgs"] // PER_CONN) <= c["conns"] <= c["msgs"] // PER_CONN + 1, c
        if prev:
            assert c["timer"] >= prev["timer"] and c["msgs"] >= prev["msgs"] and c["conns"] >= prev["conns"], \
                (prev, c)


def test_one_epoll_over_every_kind(procs, workloads, tmp_path):
    out = tmp_path / "out"
    root = start(procs, workloads["epollmix"], out)
    for cycle in range(3):
        # Past a connection boundary since the last restart: the client connected again.
        mark = counts(out)[-1]
        wait_until(lambda: failures(out) or counts(out)[-1]["conns"] >= mark["conns"] + 2, 30, "new connections")
        assert_sane(out)
        img = tmp_path / f"img{cycle}"
        assert len(tree(root)) == 2, tree(root)   # the root and its client
        doomed = family(root)
        ckpt(root, img, "--kill")
        wait_until(lambda: not any(alive(p) for p in doomed), 10, "ckpt --kill to end the tree")
        kinds = {name: image_records(img, name) for name in ("TIMERFD", "EVENTFD", "SIGNALFD", "EPOLL_TFD",
                                                              "UNIX_SOCK")}
        assert len(kinds["TIMERFD"]) == len(kinds["EVENTFD"]) == len(kinds["SIGNALFD"]) == 1, kinds
        # timerfd, eventfd, signalfd, the socketpair's end, the listener and 1 or 2 connections
        assert 6 <= len(kinds["EPOLL_TFD"]) <= 7, kinds["EPOLL_TFD"]
        before = counts(out)[-1]
        last = ticks(out)[-1]
        root = restored(procs, img)
        ticked(out, last + 5)
        # rounds come from every kind of event: a few may pass before the 10 ms timer's next expiry
        wait_until(lambda: failures(out) or any(c["timer"] > before["timer"] for c in counts(out)
                                                if c["round"] > before["round"]), 10, "the timer to fire again")
        assert_sane(out)
    mark = counts(out)[-1]
    wait_until(lambda: failures(out) or counts(out)[-1]["msgs"] >= mark["msgs"] + 2 * PER_CONN, 30,
               "the client to go on")
    assert_sane(out)
    check_counts(counts(out))
    assert len(tree(root)) == 2, tree(root)
    doomed = family(root)
    procs.kill(root)
    wait_until(lambda: not any(alive(p) for p in doomed), 10, "the client (and a reaper) to end with the root")
