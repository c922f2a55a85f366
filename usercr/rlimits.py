"""Resource limits (RLIMITS)."""
import os
import resource

from . import proc
from . import records as R

RLIM_INFINITY = 2**64 - 1
NR_RLIMITS = 16


def dump(ctx):
    yield R.RLIMITS.pack(limits=[v & RLIM_INFINITY for lim in proc.rlimits(ctx.pid) for v in lim])


class Restore:
    def __init__(self, rst):
        self.rst = rst

    def prepare(self, plan, p):
        lims = p["RLIMITS"]["limits"]
        plan.nr_rlimits = NR_RLIMITS
        for res in range(NR_RLIMITS):
            cur, hard = lims[2 * res], lims[2 * res + 1]
            my_hard = resource.getrlimit(res)[1] & RLIM_INFINITY
            if hard > my_hard and os.geteuid() != 0:
                self.rst.log(f"warning: resource limit {res} lowered to {my_hard}")
                hard = my_hard
            plan.rlimits[2 * res], plan.rlimits[2 * res + 1] = min(cur, hard), hard
