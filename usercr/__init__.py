"""usercr: checkpoint/restart of Linux processes on stock kernels."""
__version__ = "0.1.0"
