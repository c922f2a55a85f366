"""The process tree: the TREE record and a PIDS record per process (ids as
the tree's own PID namespace sees them); at restart, who creates whom and
how each process gets its session and group (Creation), which ckpt also
plays through before it kills anything."""
from . import proc
from . import records as R
from .errors import UcrError


class Namespace:
    """Translates this namespace's PIDs to the tree's: the tree's PID
    namespace is its root's; ids outside the tree become 0."""

    def __init__(self, root, pids):
        depth = len(proc.nspids(root))
        self.own = depth > len(proc.nspids("self"))
        self.map = {}
        for pid in pids:
            ns = proc.nspids(pid)
            if len(ns) != depth:
                raise UcrError(f"process {pid} is in a nested PID namespace; that cannot be checkpointed yet")
            self.map[pid] = ns[-1]
        self.inner = set(self.map.values())

    def leader(self, v):
        """A session or group id as the tree's namespace sees it: a process of
        the tree, 0 for one led from outside the tree, or kept as it is when
        its leader is gone (restart then recreates one for it)."""
        if v == 0 or v in self.inner:
            return v
        if self.own:  # every process of the tree's own namespace is in the tree
            return v
        return 0 if proc.exists(v) else v

    def __call__(self, pid):
        return self.map.get(pid, 0)

    @staticmethod
    def thread(tid):
        return proc.nspids(tid)[-1]


def dump(root, order, ns):
    yield R.TREE.pack(nr_tasks=len(order), root_pid=ns(root))
    for pid in order:
        st = proc.status(pid)
        yield R.PIDS.pack(pid=ns(pid), tgid=ns(pid), ppid=ns(int(st["PPid"])) if pid != root else 0,
                          pgid=ns.leader(int(st["NSpgid"].split()[-1])),
                          sid=ns.leader(int(st["NSsid"].split()[-1])))


class Creation:
    """Who creates whom, and how each process gets its session and process
    group, as the restorer does it (user-cr's creator forest, in small).
    Nodes are the image's processes, then one placeholder per session or
    group leader that is gone: created with the leader's PID, it takes the
    session (or group) and creates the members at the top of it with
    CLONE_PARENT, so that they are its parent's children as they were, then
    exits and is reaped. ids of processes outside the tree stand for rstr's
    own session and group, and so does the group the root leads when its
    session is outside. Raises UcrError where the image's sessions and groups
    cannot be rebuilt that way."""

    def __init__(self, img):
        ids, index = img.pids, img.index
        n = len(ids)
        root = ids[0]
        self.outside = lambda v: v == 0 or (v == root["pid"] and root["sid"] == 0)  # noqa: E731
        gone = sorted({v for t in ids for v in (t["sid"], t["pgid"]) if not self.outside(v) and v not in index})
        self.placeholders = gone
        self.creator = list(img.parent)
        self.clone_parent = [False] * n
        sessions = {t["sid"] for t in ids}
        for k, lead in enumerate(gone):
            members = {i for i, t in enumerate(ids) if lead in (t["sid"], t["pgid"])}
            tops = [i for i in members if img.parent[i] not in members]
            parents = {img.parent[i] for i in tops}
            if len(parents) != 1 or None in parents:
                raise UcrError(f"the members of session or group {lead}, whose leader is gone, have different "
                               "parents; that cannot be recreated")
            self.creator.append(parents.pop())
            self.clone_parent.append(False)
            for i in tops:
                self.creator[i], self.clone_parent[i] = n + k, True
        self.setsid = [t["sid"] == t["pid"] for t in ids] + [lead in sessions for lead in gone]
        self.action, self.leader = [], []
        for i, t in enumerate(ids):
            if self.setsid[i] or self.outside(t["pgid"]) or t["pgid"] not in index:
                action, leader = 0, -1   # kept from its creator (a placeholder leads a gone group)
            elif t["pgid"] == t["pid"]:
                action, leader = 1, -1
            else:
                action, leader = 2, index[t["pgid"]]
                if ids[leader]["pgid"] != ids[leader]["pid"]:
                    raise UcrError(f"process {t['pid']} is in process group {t['pgid']}, which process "
                                   f"{t['pgid']} does not lead; that cannot be recreated")
                if img.descends(leader, i):
                    raise UcrError(f"process {t['pid']} is in the process group of its descendant {t['pgid']}; "
                                   "that cannot be recreated")
            self.action.append(action)
            self.leader.append(leader)
        self.action += [0 if self.setsid[n + k] else 1 for k in range(len(gone))]
        self.leader += [-1] * len(gone)
        self._check(img)

    def key(self, v, index):
        if self.outside(v):
            return "out"
        return index[v] if v in index else len(index) + self.placeholders.index(v)

    def _check(self, img):
        """Plays the creation through and compares with the image."""
        sid, pgid = {}, {}

        def sim(node):
            if node not in sid:
                up = self.creator[node]
                up_sid, up_pgid = sim(up) if up is not None else ("out", "out")
                sid[node] = node if self.setsid[node] else up_sid
                pgid[node] = node if self.setsid[node] or self.action[node] == 1 else \
                    self.leader[node] if self.action[node] == 2 else up_pgid
            return sid[node], pgid[node]
        for i, t in enumerate(img.pids):
            want = (self.key(t["sid"], img.index), self.key(t["pgid"], img.index))
            joins_elsewhere = self.action[i] == 2 and sim(self.leader[i])[0] != sim(i)[0]
            if sim(i) != want or joins_elsewhere:
                raise UcrError(f"the session {t['sid']} and process group {t['pgid']} of process {t['pid']} "
                               "cannot be recreated")

    def children(self, node):
        """The nodes node creates, group leaders first so that members rarely wait."""
        kids = [j for j, c in enumerate(self.creator) if c == node]
        return sorted(kids, key=lambda j: (self.action[j] == 2, j))
