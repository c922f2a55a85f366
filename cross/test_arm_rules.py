"""linux-cr's ARM restart rules and the ARM/Thumb restart fix-up, on crafted
image records. Pure Python: runs on any host (no ARM kernel, no ptrace)."""
import struct

import pytest

from usercr import records as R
from usercr.arch import aarch64, arm
from usercr.errors import UcrError

HWCAP_THUMBEE = 1 << 11


def decode(packed):
    """A record as rstr's reader sees it: header stripped, payload decoded."""
    rtype, length = R.RECORD_HDR.unpack_from(packed)
    rec = R.REGISTRY[rtype]
    return rec.unpack(packed[R.RECORD_HDR.size:length])


def header(cpu=7, mmu=1, aeabi=1, oabi_compat=0, hwcap=0):
    return decode(R.ARM_HEADER.pack(cpu_architecture=cpu, mmu=mmu, aeabi=aeabi, oabi_compat=oabi_compat,
                                    hwcap=hwcap))


def task(eabi_version=5):
    e_flags = (eabi_version & 0xff) << 24 if eabi_version >= 0 else 0
    return decode(R.ARM_TASK.pack(e_flags=e_flags, eabi_version=eabi_version))


def thread(thumbee=0):
    return decode(R.ARM_THREAD.pack(syscall=-1, tp_value=0xb6f00000, thumbee_state=thumbee))


def here(cpu=7, mmu=1, aeabi=1, oabi_compat=0, hwcap=0x3fb8d6):
    return dict(cpu_architecture=cpu, mmu=mmu, aeabi=aeabi, oabi_compat=oabi_compat, hwcap=hwcap, hwcap2=0)


class Warnings(list):
    def __call__(self, msg):
        self.append(msg)


def check(hdr, sys_, tsk=None, thr=None):
    w = Warnings()
    arm.check(hdr, sys_, w, task=tsk, thread=thr)
    return w


def refused(hdr, sys_, tsk=None, thr=None):
    with pytest.raises(UcrError) as e:
        arm.check(hdr, sys_, Warnings(), task=tsk, thread=thr)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_same_system_passes():
    assert check(header(), here(), task(), thread()) == []


def test_cpu_architecture_must_be_at_least_the_image_one():
    assert check(header(cpu=7), here(cpu=8), task(), thread()) == []
    msg = refused(header(cpu=8), here(cpu=7), task(), thread())
    assert msg == "image needs ARM CPU architecture 8 or later; this CPU is architecture 7"


def test_mmu_setting_must_match():
    msg = refused(header(mmu=0), here(mmu=1))
    assert "without an MMU" in msg and "same MMU setting" in msg
    assert "with an MMU and this system has none" in refused(header(mmu=1), here(mmu=0))


def test_thumbee_state_needs_thumbee():
    msg = refused(header(), here(hwcap=0x3fb8d6 & ~HWCAP_THUMBEE), task(), thread(thumbee=0x8000))
    assert msg == "process uses ThumbEE (state 0x8000) but this CPU has no ThumbEE (HWCAP_THUMBEE)"
    assert check(header(), here(hwcap=HWCAP_THUMBEE), task(), thread(thumbee=0x8000)) == []
    assert check(header(), here(hwcap=0), task(), thread(thumbee=0)) == []


def test_oabi_process_on_eabi_only_kernel_is_refused():
    msg = refused(header(oabi_compat=1), here(oabi_compat=0), task(eabi_version=0), thread())
    assert msg.startswith("process is an OABI binary") and "CONFIG_OABI_COMPAT" in msg
    assert check(header(oabi_compat=1), here(oabi_compat=1), task(eabi_version=0), thread()) == []


def test_eabi_process_on_kernel_without_eabi_is_refused():
    msg = refused(header(), here(aeabi=0, oabi_compat=0), task(eabi_version=5), thread())
    assert msg.startswith("process is an EABI binary (ELF EABI version 5)") and "CONFIG_AEABI" in msg


def test_abi_in_doubt_on_oabi_compatible_kernel_warns_and_continues():
    w = check(header(oabi_compat=1), here(oabi_compat=1), task(eabi_version=-1), thread())
    assert len(w) == 1 and "ABI (OABI or EABI) is unknown" in w[0] and "continuing" in w[0]


def test_unknown_abi_settled_by_the_checkpointing_kernel():
    # exe unreadable, but the checkpointing kernel ran EABI only: EABI, no doubt
    assert check(header(oabi_compat=0), here(oabi_compat=1), task(eabi_version=-1), thread()) == []
    msg = refused(header(oabi_compat=0), here(aeabi=0), task(eabi_version=-1), thread())
    assert "checkpointed on an EABI-only kernel" in msg


def test_oabi_on_kernel_with_unknown_config_warns():
    w = check(header(oabi_compat=1), here(oabi_compat=-1), task(eabi_version=0), thread())
    assert len(w) == 1 and "OABI support is unknown" in w[0]


def test_task_abi_read_from_elf_flags():
    assert arm.task_abi(header(), task(5)) == "eabi"
    assert arm.task_abi(header(oabi_compat=1), task(0)) == "oabi"
    assert arm.task_abi(header(oabi_compat=1), task(-1)) is None


def regs(pc, cpsr, r0, orig_r0=7, r7=162):
    r = [0] * 18
    r[arm.REG["pc"]], r[arm.REG["cpsr"]], r[0], r[17], r[7] = pc, cpsr, r0 & 0xffffffff, orig_r0, r7
    return r


@pytest.mark.parametrize("err", [512, 513, 514, 516])
def test_restart_fixup_arm_and_thumb(err):
    a = arm.restart_fixup(regs(0x10004, 0x10, -err))
    assert a[arm.REG["pc"]] == 0x10000 and a[0] == 7 and a[7] == 162
    t = arm.restart_fixup(regs(0x10002, 0x30, -err))          # T bit: svc is 2 bytes
    assert t[arm.REG["pc"]] == 0x10000 and t[0] == 7


def test_restart_fixup_leaves_other_results():
    r = regs(0x10004, 0x10, -4)  # -EINTR
    assert arm.restart_fixup(r) == r


def test_injection_runs_in_arm_state():
    r = arm.regs_for_syscall(regs(0x10002, 0x30 | 0x0600fc00, 0), 0x8000, 45, (0,))
    assert r[arm.REG["cpsr"]] & (arm.PSR_T_BIT | arm.PSR_IT_MASK) == 0
    assert r[arm.REG["pc"]] == 0x8000 and r[7] == 45
    assert arm.SYSCALL_INSN == struct.pack("<I", 0xef000000) and arm.SVC_THUMB == b"\x00\xdf"


def test_mmap_address_above_2g_is_not_an_error():
    assert arm.syscall_result(regs(0, 0x10, 0xb6f50000)) == 0xb6f50000
    assert arm.syscall_result(regs(0, 0x10, -12)) == -12


def test_aarch64_refuses_compat_task_registers():
    with pytest.raises(UcrError, match="32-bit ARM"):
        aarch64.unpack_regs(bytes(72))


def test_aarch64_missing_fp_refused():
    hdr = decode(R.AARCH64_HEADER.pack(hwcap=0x3, hwcap2=0))
    with pytest.raises(UcrError, match="floating point"):
        aarch64.check(hdr, {"hwcap": 0, "hwcap2": 0}, Warnings())
    w = Warnings()
    aarch64.check(decode(R.AARCH64_HEADER.pack(hwcap=0x103, hwcap2=0)), {"hwcap": 0x3, "hwcap2": 0}, w)
    assert len(w) == 1


def test_sigframes_match_kernel_layouts():
    fr = arm.build_sigframe(regs(0x10000, 0x10, 0) [:13] + [0xbeff0000, 0, 0x10000, 0x10, 0],
                            ([i for i in range(32)], 0x03000000), 0x1234, (0, 2, 0), 0, None)
    addr, data, sp = fr
    assert addr % 8 == 0 and sp == addr and len(data) == 888
    vfp = 128 + 232
    assert struct.unpack_from("<II", data, vfp) == (arm.VFP_MAGIC, 288)
    r64 = [0] * 34
    r64[31] = 0x7ffff000
    addr, data, sp = aarch64.build_sigframe(r64, ([1] * 64, 0, 0), 0, (0, 2, 0), 0, None)
    assert addr % 16 == 0 and len(data) == 4688
    assert struct.unpack_from("<II", data, 592) == (aarch64.FPSIMD_MAGIC, 528)
    assert struct.unpack_from("<II", data, 592 + 528) == (0, 0)
