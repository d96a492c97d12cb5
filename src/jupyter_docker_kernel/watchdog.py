"""Watchdogs: cleanup that does not depend on our process surviving.

Each one waits for EOF on a pipe only its owner writes to (the owner's exit, however it
comes, even SIGKILL) and then removes what the owner left:

- `fork_watchdog`: the argv launcher's in-process fallback (CliBackend.watchdog, through
  container.Container.start_watchdog): a fork that removes one container and its dir.
- `start_lifeline_watchdog` / `watch_lifeline`: a fresh process per kernel that removes
  its containers by label and name; `stop_watchdog` releases it.
- `watch_owner`: what one process per Jupyter server and engine ran in earlier releases
  (their provisioner's janitor without a helper), sweeping as `gc` does on its owner's
  end; kept for such watchdogs still running across an upgrade. The provisioner starts
  none now (provisioner.ensure_janitor sweeps at a start instead).

The spawned processes import this module (`python -I -c "from
jupyter_docker_kernel.watchdog import ..."`); container.py re-exports watch_lifeline and
watch_owner for the ones an earlier version spawned, and launcher.py watch_lifeline for
kernel.json files of earlier releases.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from jupyter_docker_kernel import hostpython
from jupyter_docker_kernel.kernel_log import _read_quietly
from jupyter_docker_kernel.rundir import NAME_PREFIX, remove_tree


def fork_watchdog(engine_exe: str, name: str, cidfile: Path, base: Path) -> int:
    """Fork a process that cleans up after us however we die; returns the lifeline fd.

    It blocks reading a pipe whose only writer is this process; EOF means we are gone
    (exit, crash or SIGKILL). It then force-removes our container and runtime dir. Two
    forks and setsid: it is nobody's zombie and the client's killpg does not reach it.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(write_fd)
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
            for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            while os.read(read_fd, 64):
                pass
            _watchdog_cleanup(engine_exe, name, cidfile, base)
        finally:
            os._exit(0)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return write_fd


def _watchdog_cleanup(engine_exe: str, name: str, cidfile: Path, base: Path) -> None:
    """In the watchdog: force-remove the container by name and id, then our files."""
    targets = [name]
    with contextlib.suppress(OSError):
        cid = cidfile.read_text().strip()
        if cid:
            targets.append(cid)
    force_remove(engine_exe, targets)
    remove_tree(base)


def force_remove(engine_exe: str, targets: list[str] | set[str]) -> None:
    """`docker rm --force` these containers, quietly (a watchdog has nobody to tell)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [engine_exe, "rm", "--force", *targets],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )


def start_lifeline_watchdog(
    engine_exe: str, kernel_id: str, base: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process that cleans up after a provisioner's host process however it dies.

    The provisioner (inside the Jupyter server) holds the write end of its stdin; EOF
    means that process is gone, even by SIGKILL, and the watchdog then force-removes every
    container labelled with `kernel_id` and the runtime dir `base`. Writing b"q" first
    means "already cleaned up": it exits without doing anything. A fresh process rather
    than a fork: forking a threaded server is unsafe, and its own session keeps the
    terminal's Ctrl-C (meant for the server) away from it.
    """
    code = "from jupyter_docker_kernel.watchdog import watch_lifeline; watch_lifeline()"
    return subprocess.Popen(
        # Isolated: the server's cwd is the notebook's directory (see hostpython).
        hostpython.code_argv(code, engine_exe, kernel_id, str(base)),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,  # the kernelspec's engine (DOCKER_HOST), which its docker calls inherit
    )


def _released() -> bool:
    """A watchdog process's wait: deaf to the signals a client's killpg sends, read stdin
    to EOF (its holder ended, however); True when the holder said b"q" last (a clean end
    that needs no sweep)."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    last = b""
    while chunk := _read_quietly(lambda n: os.read(0, n)):
        last = chunk[-1:]
    return last == b"q"


def watch_lifeline(argv: list[str] | None = None) -> None:
    """The watchdog process started by start_lifeline_watchdog(): wait for EOF, clean up."""
    engine_exe, kernel_id, base = (argv or sys.argv[1:])[:3]
    if _released():
        return
    from jupyter_docker_kernel.engine import LABEL_KERNEL_ID, LABEL_OWNER_UID

    # By label, or (a claimed warm container, labelled before it had a kernel) by name.
    selectors = (f"label={LABEL_KERNEL_ID}={kernel_id}", f"name=^{NAME_PREFIX}-{kernel_id}-")
    found: set[str] = set()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = {
            cid
            for selector in selectors
            for cid in subprocess.run(
                [
                    *(engine_exe, "ps", "-aq", "--no-trunc", "--filter", selector),
                    *("--filter", f"label={LABEL_OWNER_UID}={os.getuid()}"),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.split()
        }
    if found:
        force_remove(engine_exe, found)
    remove_tree(base)


def watch_owner() -> None:
    """The process an earlier release's provisioner started (one per server, where no
    resident helper was its janitor): wait for EOF, then sweep as `gc` does (b"q" last:
    nothing to do)."""
    if _released():
        return
    from jupyter_docker_kernel.reaper import sweep_after

    sweep_after(0, "")  # our parent, already gone: its pid tells nothing now


def stop_watchdog(watchdog: subprocess.Popen[bytes] | None) -> None:
    """Release a start_lifeline_watchdog process: b"q" says there is nothing left to do."""
    if watchdog is None or watchdog.stdin is None:
        return
    with contextlib.suppress(OSError):
        watchdog.stdin.write(b"q")
        watchdog.stdin.flush()
    with contextlib.suppress(OSError):
        watchdog.stdin.close()
    try:
        watchdog.wait(timeout=10)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()
