"""epoll instances (fd kind epoll). An epoll instance is an open file
description like any other (FILE records, one file_id); what it watches is
saved as EPOLL_TFD records, one per registration, written with the tree's
objects once every process's fds have their file_ids.

At checkpoint each registration is read from the epoll fd's fdinfo (`tfd: N
events: X data: Y pos: P ino: I sdev: D`). tfd is the fd number the target
had when it was added: it may have been closed or reused since, so the
target is found among the tree's open file descriptions with
kcmp(KCMP_EPOLL_TFD). A target no process of the tree holds open is refused.

At restart rstr creates each instance once per open file description and
adds every target (its own kept fd for the target's description, opened
first: another epoll is filled first, before it is added) under the
original fd number, which the kernel keys the registration by and which
EPOLL_CTL_MOD and _DEL name later. The ready list is recomputed by the
kernel as the targets are added. A one-shot registration that had fired
(only its flag bits left) is disarmed again by letting it fire; when its
target is not ready at restart, epoll_ctl can only leave it armed for
EPOLLERR and EPOLLHUP (a warning says so). rstr then reads its own fdinfo of
the instance and fails the restart if any registration differs (EPOLLWAKEUP
without CAP_BLOCK_SUSPEND)."""
import fcntl
import os

from . import proc
from . import records as R
from . import trust
from .errors import UcrError
from .native import lib

K = R.FD_KINDS
KINDS = (K.EPOLL,)
TARGET = "anon_inode:[eventpoll]"
TFD_LINE = (r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*\d+\s+"
            r"ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)")
KDEV_MINOR_BITS = 20   # the kernel's internal dev_t, as fdinfo's sdev shows it


def classify(ctx, st, target, info):
    return K.EPOLL if target == TARGET else None


def registrations(text):
    """[(tfd, events, data, ino, sdev)] of an epoll fd's fdinfo, in its order."""
    import re  # here: only a tree with an epoll needs it, and every ckpt would import it
    return [(int(m[1]), int(m[2], 16), int(m[3], 16), int(m[4], 16), int(m[5], 16))
            for m in re.finditer(TFD_LINE, text)]


def note(ctx, fd, st, info, fields):
    from . import files   # files imports this module
    fid = files.file_id(ctx, fd, st)
    epolls = ctx.tree.setdefault("epolls", {})
    if fid in epolls:
        return
    try:
        with open(proc.path(ctx.pid, "fdinfo", str(fd))) as f:
            text = f.read()
    except OSError as e:
        raise UcrError(f"cannot read the epoll at fd {fd} of process {ctx.pid}: {e.strerror}") from None
    epolls[fid] = (ctx.pid, fd, ctx.arch.C["UCR_KCMP_EPOLL_TFD"], registrations(text))


def _target(descs, pid, efd, tfd, toff, ino, sdev):
    """The file_id of the toff-th registration under tfd in the epoll at efd of pid, or None."""
    major, minor = sdev >> KDEV_MINOR_BITS, sdev & ((1 << KDEV_MINOR_BITS) - 1)
    for opid, ofd, dev, oino, fid in descs:
        if oino == ino and (os.major(dev), os.minor(dev)) == (major, minor) and \
                lib.ucr_kcmp_epoll_tfd(opid, ofd, pid, efd, tfd, toff) == 0:
            return fid
    return None


def tree_records(tree):
    descs = tree.get("descs", [])
    out = []
    for fid, (pid, fd, _, regs) in tree.get("epolls", {}).items():
        seen = {}
        for tfd, events, data, ino, sdev in regs:
            toff = seen.get(tfd, 0)   # kcmp's index among the registrations under one fd number
            seen[tfd] = toff + 1
            target = _target(descs, pid, fd, tfd, toff, ino, sdev)
            if target is None:
                raise UcrError(f"fd {fd} of process {pid} is an epoll watching a file that no process of the tree "
                               f"holds open (added as fd {tfd}, inode {ino}); it cannot be checkpointed")
            out.append(R.EPOLL_TFD.pack(epoll_id=fid, target_id=target, tfd=tfd, events=events, data=data))
    return out


class Restore:
    def __init__(self, rst):
        self.rst = rst
        C = rst.arch.C
        self.private = C["EPOLLONESHOT"] | C["EPOLLET"] | C["EPOLLWAKEUP"] | C["EPOLLEXCLUSIVE"]
        self.errhup = C["EPOLLERR"] | C["EPOLLHUP"]
        self.poll_bits = self.errhup | C["EPOLLIN"] | C["EPOLLPRI"] | C["EPOLLOUT"] | C["EPOLLRDNORM"] | \
            C["EPOLLRDBAND"] | C["EPOLLWRNORM"] | C["EPOLLWRBAND"] | C["EPOLLMSG"] | C["EPOLLRDHUP"]
        self.regs = {}    # epoll file_id -> its EPOLL_TFD records
        for r in rst.img.tree_records("EPOLL_TFD"):
            self.regs.setdefault(r["epoll_id"], []).append(r)
        self.files = {}   # file_id -> its FILE records
        for p in rst.img.procs:
            for f in p.records("FILE"):
                self.files.setdefault(f["file_id"], []).append(f)

    def open(self, rec):
        """A new epoll instance with every registration of rec's."""
        ep = lib.ucr_epoll_create(0)
        if ep < 0:
            raise UcrError(f"cannot create an epoll instance (fd {rec['fd']}): {os.strerror(-ep)}")
        try:
            regs = self.regs.get(rec["file_id"], [])
            fired = [r for r in regs if not r["events"] & ~self.private]
            for r in fired:   # first, alone: letting them fire disarms them
                self._add(ep, rec, r, r["events"] | self.poll_bits)
            while fired and lib.ucr_epoll_harvest(ep, len(fired)) > 0:
                pass
            armed = {(r["tfd"], r["data"]) for tfd, events, data in self._shown(ep)
                     for r in fired if (tfd, data) == (r["tfd"], r["data"]) and events & ~self.private}
            for r in fired:
                if (r["tfd"], r["data"]) in armed:
                    self._add(ep, rec, r, r["events"], self.rst.arch.C["EPOLL_CTL_MOD"])
                    self.rst.warn(f"warning: the one-shot registration of fd {r['tfd']} in the epoll at fd "
                                  f"{rec['fd']} had fired; its target is not ready now, so it comes back armed "
                                  "for EPOLLERR and EPOLLHUP")
            for r in regs:
                if r not in fired:
                    self._add(ep, rec, r, r["events"])
            self._check(ep, rec, regs, armed)
        except BaseException:
            os.close(ep)
            raise
        return ep

    def _target_rec(self, r):
        recs = self.files.get(r["target_id"])
        if not recs:
            raise UcrError(f"image corrupt: no FILE record for the target of epoll registration {r['tfd']}")
        return next((f for f in recs if f["fd"] == r["tfd"]), recs[0])

    def _add(self, ep, rec, r, events, op=None):
        """Adds (or modifies) rstr's fd for the target under its original fd
        number tfd, moving whatever rstr has there aside for the while."""
        target = self.rst.part("files").fd(self._target_rec(r))
        tfd, add = r["tfd"], op or self.rst.arch.C["EPOLL_CTL_ADD"]
        if tfd == target:
            return self._ctl(ep, rec, r, add, tfd, events)
        trust.nofile_room(tfd + 1)
        use = fcntl.fcntl(ep, fcntl.F_DUPFD_CLOEXEC, 0) if ep == tfd else ep
        try:
            saved, inheritable = fcntl.fcntl(tfd, fcntl.F_DUPFD_CLOEXEC, 0), os.get_inheritable(tfd)
        except OSError:
            saved = None
        os.dup2(target, tfd, inheritable=False)
        try:
            self._ctl(use, rec, r, add, tfd, events)
        finally:
            if saved is not None:
                os.dup2(saved, tfd, inheritable=inheritable)
                os.close(saved)
            else:
                os.close(tfd)
            if use != ep:
                os.close(use)

    def _ctl(self, ep, rec, r, op, fd, events):
        err = lib.ucr_epoll_ctl(ep, op, fd, events, r["data"])
        if err < 0:
            raise UcrError(f"cannot register fd {r['tfd']} in the epoll at fd {rec['fd']} again (events "
                           f"0x{r['events']:x}): {os.strerror(-err)}")

    @staticmethod
    def _shown(ep):
        with open(f"/proc/self/fdinfo/{ep}") as f:
            return [(tfd, events, data) for tfd, events, data, _, _ in registrations(f.read())]

    def _check(self, ep, rec, regs, armed):
        """The registrations as the kernel now shows them must be the saved ones."""
        want = sorted((r["tfd"], r["events"] | (self.errhup if (r["tfd"], r["data"]) in armed else 0), r["data"])
                      for r in regs)
        got = sorted(self._shown(ep))
        if got == want:
            return
        diff = next(((w, g) for w, g in zip(want, got) if w != g), None)
        if diff is None or len(got) != len(want):
            raise UcrError(f"the epoll at fd {rec['fd']} came back with {len(got)} registrations, not {len(want)}")
        (tfd, events, _), (_, now, _) = diff
        raise UcrError(f"the registration of fd {tfd} in the epoll at fd {rec['fd']} came back with events "
                       f"0x{now:x}, not 0x{events:x} (EPOLLWAKEUP needs CAP_BLOCK_SUSPEND)")
