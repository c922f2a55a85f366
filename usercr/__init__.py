"""usercr: checkpoint/restart of Linux processes on stock kernels."""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import usercr` stays cheap for ckpt and rstr.
    if name == "checkpoint_self":
        from .selfckpt import checkpoint_self
        return checkpoint_self
    raise AttributeError(f"module 'usercr' has no attribute {name!r}")
