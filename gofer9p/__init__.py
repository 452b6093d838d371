"""gofer9p: a 9P2000.L file server (gofer) for sandboxes, on trio."""

__version__ = "0.1.0"
