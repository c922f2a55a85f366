"""The metadata of an image as restart reads it, up to PAGES_BEGIN, checked:
the tree's records, one Process per TASK with its records, and the records
of objects the tree shares (scope "tree": pipes, terminals, SysV IPC...)."""
import os

from . import records as R
from .errors import UcrError
from .tree import Tree

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Process:
    """One process's records: `one` by name, `many` lists, and its threads,
    each a dict of the THREAD record, its CPU records and its SIGPENDING list."""

    def __init__(self, task):
        self.one = {"TASK": task}
        self.many = {}
        self.threads = []

    @property
    def pid(self):
        return self.one["TASK"]["pid"]

    @property
    def zombie(self):
        return bool(self.one["TASK"]["zombie"])

    def add(self, rec):
        if rec.name == "THREAD":
            self.threads.append({"THREAD": rec, "SIGPENDING": []})
        elif rec.name == "SIGPENDING" and not rec["shared"] and self.threads:
            self.threads[-1]["SIGPENDING"].append(rec)
        elif rec.spec.scope == "thread" and self.threads:
            if rec.spec.many:
                self.threads[-1].setdefault(rec.name, []).append(rec)
            else:
                self.threads[-1][rec.name] = rec
        elif rec.spec.many:
            self.many.setdefault(rec.name, []).append(rec)
        else:
            self.one[rec.name] = rec

    def __getitem__(self, name):
        return self.one[name]

    def records(self, name):
        return self.many.get(name, [])

    def check(self):
        if self.zombie:
            return
        for name in ("CREDS", "RLIMITS", "FS", "SIGHAND", "SIGNAL", "MM"):
            if name not in self.one:
                raise UcrError(f"image corrupt: no {name} record for process {self.pid}")
        if not self.threads or len(self.threads) != self.one["TASK"]["nr_threads"]:
            raise UcrError(f"image corrupt: thread records of process {self.pid} do not match its TASK record")
        if len(self.records("VMA")) != self.one["MM"]["nr_vmas"]:
            raise UcrError(f"image corrupt: VMA count of process {self.pid} does not match its MM record")


class Image:
    def __init__(self, reader, arch):
        self.header = reader.header()
        if self.header["arch_id"] != arch.ARCH_ID:
            name = R.ARCH_NAMES.get(self.header["arch_id"], f"id {self.header['arch_id']}")
            raise UcrError(f"image is for {name}; this machine runs {arch.NAME}")
        if self.header["page_size"] != PAGE_SIZE:
            raise UcrError(f"image page size {self.header['page_size']} differs from this system's {PAGE_SIZE}")
        self.one, self.pids, self.procs, self.tree = {}, [], [], {}
        while True:
            rec = reader.next()
            if rec.type == R.PAGES_BEGIN.type:
                if (rec["csum_a"], rec["csum_b"]) != reader.csum_before:
                    raise UcrError("image corrupt: checksum mismatch in the metadata (a byte of the image changed)")
                self.nr_sections = rec["nr_sections"]
                break
            if rec.type in (R.TAIL.type, R.PAGES.type, R.PAGES_END.type, R.PAGES_PARENT.type):
                raise UcrError(f"image corrupt at offset {rec.offset}: {rec.name} before the page data marker")
            if rec.name == "PIDS":
                self.pids.append(rec)
            elif rec.name == "TASK":
                self.procs.append(Process(rec))
            elif rec.spec.scope == "tree":
                self.tree.setdefault(rec.name, []).append(rec)
            elif self.procs:
                self.procs[-1].add(rec)
            else:
                self.one[rec.name] = rec
        self._check_tree()
        self.live = [p for p in self.procs if not p.zombie]

    def tree_records(self, *names):
        return [rec for name in names for rec in self.tree.get(name, [])]

    def _check_tree(self):
        if "TREE" not in self.one or not self.procs:
            raise UcrError("image corrupt: no task tree")
        tree = self.one["TREE"]
        if not tree["nr_tasks"] == len(self.pids) == len(self.procs):
            raise UcrError("image corrupt: the task tree does not match the tasks it holds "
                           f"({tree['nr_tasks']} in TREE, {len(self.pids)} PIDS, {len(self.procs)} TASK records)")
        for i, (ids, p) in enumerate(zip(self.pids, self.procs)):
            if ids["pid"] != p.pid:
                raise UcrError(f"image corrupt: task tree entry {i} (PID {ids['pid']}) does not match "
                               f"its TASK record (PID {p.pid})")
            p.check()
        self.shape = Tree(tree["root_pid"], self.pids)
        if self.procs[0].zombie:
            raise UcrError("image corrupt: the task tree's root is not its first task")
        if self.nr_sections != sum(not p.zombie for p in self.procs):
            raise UcrError("image corrupt: the number of page sections does not match the live tasks")
