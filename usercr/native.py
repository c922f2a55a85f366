"""Access to the compiled core (usercr._native)."""
import os

from .errors import UcrError

try:
    from ._native import ffi, lib
except ImportError as e:  # pragma: no cover - only without a build
    raise UcrError(f"the native core is not built ({e}); install usercr with pip") from None


def check(ret, what):
    """Raises UcrError for a negative errno return of a core function."""
    if ret < 0:
        raise UcrError(f"{what}: {os.strerror(-ret)}")
    return ret
