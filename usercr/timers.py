"""Timers: the interval timers (SIGNAL) and POSIX timers (POSIX_TIMER), read
inside the task; POSIX timers keep their ids and target threads."""
from . import proc
from . import records as R

NS = 10**9
MASK64 = 2**64 - 1


def inject(ctx):
    s = ctx.session
    itimers = []
    for which in range(3):
        s.call(ctx.main, "reading an interval timer", "getitimer", which, s.scratch)
        itimers += s.longs(ctx.main, 4)
    timers = []
    for t in proc.posix_timers(ctx.pid):
        s.call(ctx.main, f"reading POSIX timer {t['id']}", "timer_gettime", t["id"], s.scratch)
        v = s.longs(ctx.main, 4)
        timers.append(dict(t, interval_ns=v[0] * NS + v[1], value_ns=v[2] * NS + v[3]))
    return {"itimers": itimers, "timers": timers}


def dump(ctx):
    got = ctx.injected["timers"]
    yield R.SIGNAL.pack(itimers=[v & MASK64 for v in got["itimers"]])
    for t in got["timers"]:
        yield R.POSIX_TIMER.pack(**dict(t, notify_tid=ctx.ns.thread(t["notify_tid"]) if t["notify_tid"] else 0))


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def prepare(self, plan, p):
        for k, v in enumerate(p["SIGNAL"]["itimers"]):
            plan.itimers[k] = v
        tids = [t["THREAD"]["tid"] for t in p.threads]

        def timer(t, rec):
            t.id, t.clockid, t.signo, t.notify, t.value = rec["id"], rec["clockid"], rec["signo"], rec["notify"], \
                rec["value"]
            t.thread = tids.index(rec["notify_tid"]) if rec["notify_tid"] in tids else -1
            t.its = [*divmod(rec["interval_ns"], NS), *divmod(rec["value_ns"], NS)]
        plan.timers, plan.nr_timers = self.rst.region.array("ucr_timer", p.records("POSIX_TIMER"), timer)
