"""jupyter-docker-kernel: Jupyter kernels in hardened containers, Jupyter on the host."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
