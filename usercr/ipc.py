"""SysV IPC of a tree that has an IPC namespace of its own (as `usercr run`
gives it): ckpt reads every object from inside that namespace without
changing it; rstr recreates them with the same ids in a new namespace,
which the restored tree then lives in. A tree in ckpt's own IPC namespace
shares it with the rest of the system, so its objects are not saved (its
attached shared memory is saved as plain shared memory)."""
import struct

from . import records as R
from .errors import UcrError
from .namespaces import entered, own
from .native import check, ffi, lib

NEXT_ID = "/proc/sys/kernel/{}_next_id"
MSG_HEAD = struct.Struct("<QQ")


def _table(name):
    with open(f"/proc/sysvipc/{name}") as f:
        lines = f.read().splitlines()
    head = lines[0].split()
    return [dict(zip(head, (int(v) for v in line.split()))) for line in lines[1:]]


def _common(row, id_key):
    return dict(id=row[id_key], key=row["key"], mode=row["perms"], uid=row["uid"], gid=row["gid"])


def _records():
    out = []
    for row in _table("shm"):
        buf = ffi.new("char[]", max(row["size"], 1))
        check(lib.ucr_shm_dump(row["shmid"], buf, row["size"]), f"reading SysV shared memory {row['shmid']}")
        out.append(R.IPC_SHM.pack(size=row["size"], tail=bytes(ffi.buffer(buf, row["size"])),
                                  **_common(row, "shmid")))
    for row in _table("msg"):
        buf = ffi.new("char[]", row["cbytes"] + 64)
        mtype = ffi.new("long *")
        msgs = b""
        for index in range(row["qnum"]):
            n = check(lib.ucr_msg_copy(row["msqid"], index, buf, row["cbytes"] + 64, mtype),
                       f"reading SysV message queue {row['msqid']}")
            text = bytes(ffi.buffer(buf + ffi.sizeof("long"), n))
            msgs += MSG_HEAD.pack(mtype[0], n) + text + bytes(R.align(n) - n)
        out.append(R.IPC_MSG.pack(qbytes=_qbytes(row["msqid"]), tail=msgs, **_common(row, "msqid")))
    for row in _table("sem"):
        vals = ffi.new("uint16_t[]", row["nsems"])
        check(lib.ucr_sem_getall(row["semid"], vals), f"reading SysV semaphore set {row['semid']}")
        out.append(R.IPC_SEM.pack(nsems=row["nsems"], tail=list(vals), **_common(row, "semid")))
    return out


def _qbytes(msqid):
    """The queue's byte limit, which /proc/sysvipc does not show."""
    ds = ffi.new("uint64_t *")
    check(lib.ucr_msg_qbytes(msqid, ds), f"reading SysV message queue {msqid}")
    return ds[0]


def dump_records(root):
    """IPC records of the tree's namespace, or [] when it shares ckpt's
    (namespaces.dump_records has checked that the whole tree is in it)."""
    if not own(root, "ipc"):
        return []
    with entered(root, "ipc"):
        return _records()


def _set_next_id(kind, id_):
    try:
        with open(NEXT_ID.format(kind), "w") as f:
            f.write(str(id_))
    except OSError as e:
        raise UcrError(f"cannot choose SysV IPC ids ({NEXT_ID.format(kind)}): {e.strerror}") from None


def _created(kind, rec, got):
    check(got, f"recreating SysV {kind} {rec['id']}")
    if got != rec["id"]:
        raise UcrError(f"SysV {kind} {rec['id']} came back as {got}")


def restore(records):
    """Recreates the objects in the new IPC namespace namespaces.restore has
    moved rstr into."""
    for rec in sorted(records, key=lambda r: r["id"]):
        if rec.name == "IPC_SHM":
            _set_next_id("shm", rec["id"])
            _created("shared memory", rec, lib.ucr_shm_restore(rec["key"], rec["size"], rec["mode"], rec["uid"],
                                                               rec["gid"], rec["tail"]))
        elif rec.name == "IPC_SEM":
            _set_next_id("sem", rec["id"])
            vals = ffi.new("uint16_t[]", rec["tail"] or [0])
            _created("semaphore set", rec, lib.ucr_sem_restore(rec["key"], rec["nsems"], rec["mode"], rec["uid"],
                                                               rec["gid"], vals))
        else:
            _set_next_id("msg", rec["id"])
            _created("message queue", rec, lib.ucr_msg_restore(rec["key"], rec["mode"], rec["uid"], rec["gid"],
                                                              rec["qbytes"]))
            data, at = rec["tail"], 0
            while at < len(data):
                mtype, n = MSG_HEAD.unpack_from(data, at)
                buf = ffi.new("char[]", n + ffi.sizeof("long"))
                ffi.memmove(buf, data[at + MSG_HEAD.size:at + MSG_HEAD.size + n], n)
                check(lib.ucr_msg_send(rec["id"], mtype, buf, n), f"refilling SysV message queue {rec['id']}")
                at += MSG_HEAD.size + R.align(n)
