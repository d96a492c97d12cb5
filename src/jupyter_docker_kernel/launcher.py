"""The kernelspec's argv: run the kernel through the user's resident helper, or in-process.

A Jupyter client runs `python -I -m jupyter_docker_kernel.launcher -f {connection_file}`
(the settings JSON in kernel.json's env, kernelspec.SETTINGS_ENV; specs of earlier versions
pass `--settings JSON` instead) and treats this process as the kernel: it polls it for
liveness, sends it SIGINT to interrupt (interrupt_mode "signal"), SIGTERM/SIGKILL to stop
it.

`main` first hands the argv to the thin client (thin.main): the user's resident helper
(helper.py, started on demand) runs the kernel's session (hosting.py) and this process
only forwards signals and waits for the exit code, so a kernel costs no Python process of
its own beyond this small one. Only when that returns thin.FALLBACK (the helper is
switched off by JUPYTER_DOCKER_KERNEL_NO_HELPER=1, cannot start, or refused before
anything started) does it import and run the session here (session.main), with its own
watchdog, as before.

This module's imports stay tiny (they are on every kernel start): the names that used to
live here are found in their modules on first use (`__getattr__`), for tests, callers and
watchdog processes of an earlier release (`from jupyter_docker_kernel.launcher import
watch_lifeline`).
"""

from __future__ import annotations

import sys

from jupyter_docker_kernel import thin

#: Not typing's: importing typing costs a kernel start 10 ms (mypy knows this name).
TYPE_CHECKING = False
if TYPE_CHECKING:  # the real types of the names __getattr__ finds (see _MOVED)
    from typing import Any

    from jupyter_docker_kernel.container import Container as Container

    Launcher = Container
    from jupyter_docker_kernel.container import Relayed as Relayed
    from jupyter_docker_kernel.container import exit_verdict as exit_verdict
    from jupyter_docker_kernel.container import kernel_id_from as kernel_id_from
    from jupyter_docker_kernel.container import wait_exit_code as wait_exit_code
    from jupyter_docker_kernel.kernel_log import FORWARD_LIMIT as FORWARD_LIMIT
    from jupyter_docker_kernel.kernel_log import forward as forward
    from jupyter_docker_kernel.rundir import ENV_FILE as ENV_FILE
    from jupyter_docker_kernel.rundir import alive as alive
    from jupyter_docker_kernel.rundir import process_start_time as process_start_time
    from jupyter_docker_kernel.rundir import runtime_base as runtime_base
    from jupyter_docker_kernel.rundir import runtime_base_choice as runtime_base_choice
    from jupyter_docker_kernel.session import USAGE as USAGE
    from jupyter_docker_kernel.session import Args as Args
    from jupyter_docker_kernel.session import announce as announce
    from jupyter_docker_kernel.session import configure_logging as configure_logging
    from jupyter_docker_kernel.session import parse_args as parse_args
    from jupyter_docker_kernel.session import process_age as process_age
    from jupyter_docker_kernel.session import routes as routes
    from jupyter_docker_kernel.session import serve as serve
    from jupyter_docker_kernel.watchdog import watch_lifeline as watch_lifeline
    from jupyter_docker_kernel.workdir import nbgrader_layout as nbgrader_layout
    from jupyter_docker_kernel.workdir import refuse_grading_mount as refuse_grading_mount

#: Names that used to be defined or re-exported here -> the module that owns them now.
_MOVED = {
    "Container": "container",
    "Launcher": "container",
    "Relayed": "container",
    "exit_verdict": "container",
    "kernel_id_from": "container",
    "wait_exit_code": "container",
    "watch_lifeline": "watchdog",
    "FORWARD_LIMIT": "kernel_log",
    "forward": "kernel_log",
    "ENV_FILE": "rundir",
    "alive": "rundir",
    "process_start_time": "rundir",
    "runtime_base": "rundir",
    "runtime_base_choice": "rundir",
    "nbgrader_layout": "workdir",
    "refuse_grading_mount": "workdir",
    "Args": "session",
    "USAGE": "session",
    "announce": "session",
    "configure_logging": "session",
    "parse_args": "session",
    "process_age": "session",
    "routes": "session",
    "serve": "session",
}


def __getattr__(name: str) -> Any:
    """The moved names (see _MOVED), imported when first asked for."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    owner = importlib.import_module(f"jupyter_docker_kernel.{module}")
    return getattr(owner, "Container" if name == "Launcher" else name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the kernelspec's argv; returns the kernel container's exit code."""
    args = sys.argv[1:] if argv is None else argv
    code = thin.main(args)
    if code is not None:  # thin.FALLBACK is None
        return code
    from jupyter_docker_kernel import session

    return session.main(args)


if __name__ == "__main__":
    sys.exit(main())
