"""Which engine may run here. The kernel engine (linux-cr's sys_checkpoint,
sys_restart, eclone) exists only on linux-cr kernels; on mainline their numbers
belong to other syscalls, so presence is read from the kernel's symbol table
and the numbers are never issued to find out."""
import re

from .errors import UcrError

LINUX_CR_SYMBOLS = ("checkpoint", "restart")
_SYM = re.compile(r"^\S+ [tT] (?:__\w+_)?sys_(checkpoint|restart|eclone)$", re.M)


def kernel_engine_symbols(kallsyms="/proc/kallsyms"):
    """The linux-cr syscall entry points this kernel has (empty on mainline)."""
    try:
        with open(kallsyms) as f:
            return set(_SYM.findall(f.read()))
    except OSError:
        return set()


def kernel_engine_available(kallsyms="/proc/kallsyms"):
    return set(LINUX_CR_SYMBOLS) <= kernel_engine_symbols(kallsyms)


def require_kernel_engine(abi):
    """Raises with the mainline owner of each reused number unless linux-cr is really here."""
    if kernel_engine_available():
        return abi.LINUX_CR
    cr = abi.LINUX_CR
    owners = ", ".join(f"{cr[name]} is {cr['mainline_owner'].get(cr[name], 'another syscall')}"
                       for name in ("checkpoint", "restart") if cr.get(name) is not None)
    raise UcrError("the kernel engine needs a linux-cr kernel; this kernel has no sys_checkpoint/sys_restart"
                   + (f" (here {owners})" if owners else ""))
