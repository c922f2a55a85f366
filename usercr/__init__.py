"""usercr: checkpoint/restart of Linux processes on stock kernels.

The Python API (docs/api.md): checkpoint, restart, open_image, checkpoint_self,
Error. Names are loaded on first use, so `import usercr` costs nothing."""
__version__ = "0.1.0"

_API = {"checkpoint": "api", "restart": "api", "open_image": "api", "Restored": "api",
        "Stats": "stats", "RestartStats": "stats", "Error": "errors", "UsageError": "errors",
        "Image": "info", "checkpoint_self": "selfckpt"}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'usercr' has no attribute {name!r}")
    import importlib
    try:
        module = importlib.import_module(f"{__name__}.{_API[name]}")
    except ModuleNotFoundError as e:  # checkpoint_self: only where usercr.selfckpt exists
        if e.name != f"{__name__}.{_API[name]}":
            raise
        raise AttributeError(f"module 'usercr' has no attribute {name!r}") from None
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
