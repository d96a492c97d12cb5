"""The resident helper's kernel runner and janitor: argv kernels hosted in one process.

helper.py runs `run_kernel` (its default --runner) in a thread per thin client (thin.py),
and `sweep` (its default --janitor) when a registered process went away and once when the
helper starts. A session here is session.run, the same code the launcher's own process
runs without a helper; what differs is in its Hooks:

- the engine CLI gets the *request's* environment (DOCKER_HOST, PATH, HOME, JUPYTER_*):
  this process's belongs to whichever client spawned it; so does the pool refill it
  spawns (through the Engine: LocalBackend.fill), and the sweep after a janitor client;
- the kernel's output and the session's log lines go to its client's stderr
  (Control.write), which is the Jupyter server's log, as they did from the launcher;
- the relay runs on the helper's one event loop (Control.loop) and the wait in a thread;
- the client's endpoints may be listening before the thin client even runs: the helper
  binds them when the client writes a connection file for a kernelspec it has served from
  that directory (early_listen.EarlyListen), else the thin client did (thin.listen_early);
- the client's forwarded signals (Control.on_signal): SIGTERM and SIGHUP stop the kernel
  at any time, SIGINT interrupts it once the relay serves (before, there is nothing to
  interrupt); its going away (EOF: SIGKILL, killpg) stops and removes the kernel, and so
  does the Jupyter client's death (its pid is watched, as the launcher watched its parent);
- no watchdog process per kernel: the helper removes a kernel whose client went away, and
  a SIGKILL of the helper ends every kernel through the engine-side lifeline (the
  supervisor's stdin of `docker run -i`, or a warm container's claim socket, both held by
  this process only); the next helper's start sweep removes their runtime dirs.

Containers and runtime dirs carry the helper's pid and start time (the launcher-pid label
and the owner marker), so reaper.collect's rules (what `gc` removes) are the janitor's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from typing import IO, Any, cast

from jupyter_docker_kernel import reaper, session
from jupyter_docker_kernel.container import Backend, Container, backend_for
from jupyter_docker_kernel.early_listen import EarlyListen
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.helper import SESSION_ATTR, Control, RefusedError, Request
from jupyter_docker_kernel.settings import KernelSettings

log = logging.getLogger("jupyter_docker_kernel.hosting")


class ClientStream:
    """A binary stream whose lines go to a session's client's stderr (Control.write): where
    kernel_log.forward puts the kernel's own output."""

    def __init__(self, control: Control) -> None:
        self.control = control

    def write(self, data: bytes) -> int:
        self.control.write(data.decode(errors="replace").rstrip("\n"))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: write() hands the lines to the helper's loop at once."""


def client_cwd(pid: int, fallback: str) -> str:
    """The Jupyter client's cwd (a relative ipc endpoint is resolved against it)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return fallback


def run_kernel(request: Request, control: Control) -> int:
    """helper.Runner: one argv kernel's session for a thin client; returns its exit code.

    Refuses (the client then runs the kernel in-process, which says what is wrong the way
    the launcher always did) while nothing exists: unreadable settings or connection file,
    a project the settings refuse. After that the client waits for the exit code.
    """
    try:
        settings = KernelSettings.from_dict(json.loads(request.settings))
    except (ValueError, DockerKernelError) as exc:
        raise RefusedError(f"unusable settings: {exc}") from None
    if not os.path.isfile(request.connection_file):
        raise RefusedError("the connection file cannot be read here")
    engine = Engine(host=settings.engine_host or None, environ=request.env)
    # The session's own logger: its lines reach this client from any thread (the
    # Container logs from threads of its own), and the helper's log file.
    logger = logging.LoggerAdapter(
        logging.getLogger("jupyter_docker_kernel.launcher"), {SESSION_ATTR: control}
    )
    loop = control.loop
    # Endpoints the helper bound when the client wrote the connection file (early_listen),
    # and those the thin client bound itself (thin.listen_early): whichever was first.
    early = EarlyListen.of(loop)
    listening = {**early.take(request.connection_file), **request.listening}

    def run_async(coro: Coroutine[Any, Any, int]) -> int:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    relaying = threading.Event()

    def created(container: Container) -> None:
        control.accept()  # from here on the client waits for our exit code
        if container.connection.get("transport", "tcp") == "tcp":
            early.learn(request.connection_file, str(container.connection.get("kernel_name", "")))
        container.mark("helper session up")
        control.on_gone(lambda: container.stop(f"its kernel's launcher went away ({what()})"))

        def on_signal(signum: int) -> None:
            # As in the launcher's own process: an interrupt before the relay serves has
            # no kernel to reach; a SIGTERM or SIGHUP stops the start at once.
            if signum != signal.SIGINT or relaying.is_set():
                session.deliver(container, signum)

        control.on_signal(on_signal)

    def what() -> str:
        return "the helper is stopping" if control.gone_reason == "helper stopping" else "EOF"

    def serving(container: Container, _: asyncio.AbstractEventLoop) -> None:
        relaying.set()

    hooks = session.Hooks(
        run_async=run_async,
        backend=lambda s: pod_backend(s, request.env) or backend_for(s, engine),
        workdir=request.cwd,
        home=request.env.get("HOME") or None,
        client_pid=request.client_pid or None,
        client_cwd=client_cwd(request.client_pid, request.cwd),
        # kernel_log.forward writes and flushes; nothing else of IO is used.
        out=cast(IO[bytes], ClientStream(control)),
        logger=logger,
        watchdog=False,
        client_alive=session.process_alive(request.client_pid),
        created=created,
        serving=serving,
        listening=listening,
    )
    if control.gone.is_set():
        for sock in listening.values():
            sock.close()
        return 1  # went away before we began: nothing to start
    return session.run(settings, request.connection_file, hooks)


def pod_backend(settings: KernelSettings, env: dict[str, str]) -> Backend | None:
    """A --kubernetes kernel's backend with the request's kubeconfig (KUBECONFIG, HOME), not
    the helper's (whichever client started it); None for the engine's kernels."""
    if settings.kube_namespace is None:
        return None
    from jupyter_docker_kernel.kube_backend import KubeBackend

    return KubeBackend.for_settings(settings, env)


#: helper.Janitor: the same sweep as gc's (reaper.collect), marked dirs only.
sweep = reaper.sweep_after
