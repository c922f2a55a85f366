"""Per-architecture code: one module per architecture, chosen by name or image arch id."""
import importlib

from .. import records as R
from ..errors import UcrError

SUPPORTED = ("x86_64", "arm", "aarch64")


def by_name(name):
    if name not in SUPPORTED:
        raise UcrError(f"architecture {name} is not supported")
    return importlib.import_module(f".{name}", __name__)


def current():
    from ..native import ffi, lib
    return by_name(ffi.string(lib.ucr_arch_name()).decode())


def by_id(arch_id):
    name = R.ARCH_NAMES.get(arch_id)
    if name is None:
        raise UcrError(f"unknown architecture id {arch_id} in image")
    return by_name(name)
