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
        return 0 if proc.state(v) not in (None, "Z", "X") else v  # a dead leader's zombie leads nothing

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


class Tree:
    """The task tree of the TREE and PIDS records, checked: each process
    once, after its parent. pids: the PIDS records, root first."""

    def __init__(self, root_pid, pids):
        if not pids:
            raise UcrError("image corrupt: no task tree")
        self.pids = pids
        self.index = {}
        for ids in pids:
            if ids["pid"] in self.index:
                raise UcrError(f"image corrupt: PID {ids['pid']} appears twice in the task tree")
            if ids["pid"] <= 0:
                raise UcrError(f"image corrupt: PID {ids['pid']} in the task tree")
            self.index[ids["pid"]] = len(self.index)
        if pids[0]["pid"] != root_pid:
            raise UcrError("image corrupt: the task tree's root is not its first task")
        self.parent = [None]
        for ids in pids[1:]:
            ppid = self.index.get(ids["ppid"])
            if ppid is None or ppid >= self.index[ids["pid"]]:
                raise UcrError(f"image corrupt: the parent {ids['ppid']} of PID {ids['pid']} is not "
                               "before it in the task tree")
            self.parent.append(ppid)

    def descends(self, i, ancestor):
        while i is not None:
            if i == ancestor:
                return True
            i = self.parent[i]
        return False


def check(records):
    """What rstr will make of the tree, from the TREE and PIDS records ckpt
    is about to write: raises UcrError now for a tree rstr would refuse."""
    tree = pids = None
    for rec in records:
        rtype, length = R.RECORD_HDR.unpack_from(rec)
        spec = R.REGISTRY[rtype]
        fields = spec.unpack(rec[R.RECORD_HDR.size:length])
        if spec is R.TREE:
            tree, pids = fields, []
        elif spec is R.PIDS:
            pids.append(fields)
    return Creation(Tree(tree["root_pid"], pids))


class Creation:
    """Who creates whom, and how each process gets its session and process
    group, as the restorer does it (user-cr's creator forest, in small).

    Nodes are the image's processes, then one placeholder per session or
    group leader that is gone, created with the leader's PID: it takes the
    session (setsid) or the group (setpgid) and creates, with CLONE_PARENT,
    the members that must be born in it, so that they are its parent's
    children as they were; then it exits and that parent reaps it. A
    placeholder for a group inside a gone session is created the same way
    by the session's placeholder (a chain). Members of a gone leader's group
    whose parent is another process join the group (setpgid) while a member
    the placeholder created keeps it alive. ids of processes outside the
    tree stand for rstr's own session and group, and so does the root's
    group when its session is outside (a job-control shell's or timeout's
    group, led by a process that may be gone by the next checkpoint).
    Raises UcrError where the tree cannot be rebuilt exactly that way."""

    def __init__(self, tree):
        ids, index = tree.pids, tree.index
        n = len(ids)
        root = ids[0]
        self.tree = tree
        self.outside = lambda v: v == 0 or (root["sid"] == 0 and v == root["pgid"])  # noqa: E731
        self.gone = lambda v: not self.outside(v) and v not in index  # noqa: E731
        self.sessions = {t["sid"] for t in ids}
        self.session_of = {t["pgid"]: t["sid"] for t in ids}
        self.placeholders = []            # the gone leaders' PIDs; node n + k
        self.kparent = {}                 # placeholder node -> the parent its CLONE_PARENT children get
        self.creator = list(tree.parent)  # None: the node rstr creates
        self.clone_parent = [False] * n
        self.setsid = [t["sid"] == t["pid"] for t in ids]
        self.action, self.leader = [0] * n, [-1] * n
        for i, t in enumerate(ids):
            self._place_process(i, t)
        self._check_joins()
        self.top = self.creator.index(None)
        # Placeholders made with CLONE_PARENT are reaped by that parent (None: by rstr).
        self.adopted = {}
        for node, parent in self.kparent.items():
            if self.clone_parent[node] or self.creator[node] is None:
                self.adopted.setdefault(parent, []).append(node)
        self._check()

    def _placeholder(self, lead, parent):
        """The node of lead's placeholder whose CLONE_PARENT children get
        parent (an image process, None for rstr's); None if lead's
        placeholder is already another parent's."""
        if lead in self.placeholders:
            node = len(self.tree.pids) + self.placeholders.index(lead)
            return node if self.kparent[node] == parent else None
        session = lead in self.sessions
        sid = lead if session else self.session_of.get(lead, 0)
        creator, cp = parent, False
        if not session and self.gone(sid) and (parent is None or self.tree.pids[parent]["sid"] != sid):
            creator, cp = self._placeholder(sid, parent), True  # born in its gone session
            if creator is None:
                return None
        node = len(self.creator)
        self.placeholders.append(lead)
        self.kparent[node] = parent
        self.creator.append(creator)
        self.clone_parent.append(cp)
        self.setsid.append(session)
        self.action.append(0 if session else 1)
        self.leader.append(-1)
        return node

    def _place_process(self, i, t):
        ids, index = self.tree.pids, self.tree.index
        p = self.tree.parent[i]
        up = ids[p] if p is not None else {"sid": None, "pgid": None}
        sid, pgid = t["sid"], t["pgid"]
        if self.setsid[i]:
            return  # its own session and group, wherever it is created
        if self.gone(sid) and sid != up["sid"]:
            ps = self._placeholder(sid, p)
            if ps is None:
                raise UcrError(f"the members of session {sid}, whose leader is gone, have different parents; "
                               "that cannot be recreated")
            self.creator[i], self.clone_parent[i] = ps, True
        if self.gone(pgid) and pgid != up["pgid"] and not (pgid == sid and self.creator[i] != p):
            pg = self._placeholder(pgid, p)
            if pg is not None:
                self.creator[i], self.clone_parent[i] = pg, True
            else:  # another parent's placeholder holds the group: join it
                self.action[i] = 2
                self.leader[i] = len(ids) + self.placeholders.index(pgid)
        elif self.outside(pgid) or pgid not in index:
            pass  # kept from its creator
        elif pgid == t["pid"]:
            self.action[i] = 1
        else:
            leader = index[pgid]
            self.action[i], self.leader[i] = 2, leader
            if ids[leader]["pgid"] != ids[leader]["pid"]:
                raise UcrError(f"process {t['pid']} is in process group {pgid}, which process "
                               f"{pgid} does not lead; that cannot be recreated")
            if self.tree.descends(leader, i):
                raise UcrError(f"process {t['pid']} is in the process group of its descendant {pgid}; "
                               "that cannot be recreated")

    def _check_joins(self):
        """A process joining a placeholder's group waits for it: the group
        must outlive the placeholder (a member it created stays in it), and
        the placeholder must not be created below the joiner."""
        n = len(self.tree.pids)
        for i in range(n):
            node = self.leader[i]
            if node < n:
                continue
            lead = self.placeholders[node - n]
            if not any(self.creator[j] == node and self.tree.pids[j]["pgid"] == lead and self.action[j] == 0
                       for j in range(n)):
                raise UcrError(f"the process group {lead} of process {self.tree.pids[i]['pid']}, whose leader "
                               "is gone, cannot be recreated")
            up = self.creator[node]
            while up is not None:
                if up < n and self.tree.descends(up, i):
                    raise UcrError(f"the process group {lead} of process {self.tree.pids[i]['pid']}, whose "
                                   "leader is gone, would be recreated below it; that cannot be done")
                up = self.creator[up]

    def key(self, v, index):
        if self.outside(v):
            return "out"
        return index[v] if v in index else len(index) + self.placeholders.index(v)

    def parent_of(self, node):
        """The node's parent once created: its creator's with CLONE_PARENT."""
        up = self.creator[node]
        return self.parent_of(up) if self.clone_parent[node] else up

    def _check(self):
        """Plays the creation through and compares with the image."""
        img = self.tree
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
            if sim(i) != want or joins_elsewhere or self.parent_of(i) != img.parent[i]:
                raise UcrError(f"the session {t['sid']} and process group {t['pgid']} of process {t['pid']} "
                               "cannot be recreated")

    def children(self, node):
        """The nodes node creates, group leaders first so that members rarely
        wait; then the placeholders it only reaps (adopted)."""
        kids = [j for j, c in enumerate(self.creator) if c == node]
        return sorted(kids, key=lambda j: (self.action[j] == 2, j)) + \
            [j for j in self.adopted.get(node, []) if self.creator[j] != node]
