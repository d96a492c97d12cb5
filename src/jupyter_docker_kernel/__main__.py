"""`python -m jupyter_docker_kernel` runs the command line."""

from __future__ import annotations

from jupyter_docker_kernel.cli import run

run()
