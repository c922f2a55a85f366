"""Generated per-architecture ABI tables (see docs/headers.md).

Each module (x86_64, arm, aarch64) is written by tools/extract_headers.py
and holds only plain dicts, so importing one is cheap.
"""
import importlib

ARCHES = ("x86_64", "arm", "aarch64")
# uname -m spellings -> module name
_MACHINE = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
            "armv7l": "arm", "armv8l": "arm", "armhf": "arm", "arm": "arm"}


def for_machine(machine: str):
    """The table module for a `uname -m` value (KeyError if unsupported)."""
    return importlib.import_module(f"{__name__}.{_MACHINE[machine]}")
