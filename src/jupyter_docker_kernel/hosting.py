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

The hand-over (issue 17; docs/design/issue17/c-relay.md, "Build plan"): when the compiled
client asked for it and thin.HANDOVER_ENV is not 0 in its environment, a local engine's
kernel (LocalBackend: a cold start held through the API, or a claimed warm container, a
--copy-workdir copy once written; not CliBackend, nodes, pods) is handed to that client
once it runs (hand_over_kernel) instead of relayed here: Control.hand_over sends its
descriptors and facts, <base>/handover.json keeps what finish.py needs at the kernel's end,
and this session ends once the client relayed the first reply (the refill's gate). Such a
kernel's container and runtime dir name the client as their launcher, not the helper,
which may exit while it runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Coroutine
from typing import IO, Any, cast

from jupyter_docker_kernel import kernel_log, reaper, session
from jupyter_docker_kernel.container import (
    FIRST_REPLY_BYTES,
    LIFETIME_GRACE,
    Backend,
    Container,
    Relayed,
    backend_for,
    socket_names,
)
from jupyter_docker_kernel.early_listen import EarlyListen
from jupyter_docker_kernel.endpoints import CHANNELS
from jupyter_docker_kernel.engine import Engine, ExitWatch
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.helper import SESSION_ATTR, Control, RefusedError, Request
from jupyter_docker_kernel.local_backend import Held, LocalBackend
from jupyter_docker_kernel.rundir import process_start_time, write_private
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

#: The file in a handed-over kernel's runtime dir that finish.py revives it from.
HANDOVER_STATE = "handover.json"
#: What the Engine API's paths start with (EngineApi's are unversioned: the engine's newest).
API_PREFIX = ""
#: How long hand_over_kernel waits for a --copy-workdir copy to be written whole before
#: it gives up on handing the kernel over (s); the kernel is then relayed here.
COPY_WAIT = 120.0

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

    def hand_over(container: Container, listening: dict[str, socket.socket]) -> int | None:
        if control.gone.is_set() or not qualifies(control, container.settings, container.backend):
            return None
        return hand_over_kernel(container, listening, control, request, logger)

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
        launcher_pid=lambda s, backend: (
            request.peer_pid if qualifies(control, s, backend) else None
        ),
        hand_over=hand_over,
    )
    if control.gone.is_set():
        for sock in listening.values():
            sock.close()
        return 1  # went away before we began: nothing to start
    return session.run(settings, request.connection_file, hooks)


def qualifies(control: Control, settings: KernelSettings, backend: Backend) -> bool:
    """Whether this kernel is handed over to its client instead of relayed here: the client
    asked and its environment does not switch it off (Control.wants_handover), and the local
    engine's API holds it (exactly LocalBackend: not CliBackend, a node's SshBackend, the
    broker's, a pod's). A --copy-workdir copy is written whole before the hand-over
    (hand_over_kernel waits up to COPY_WAIT for it)."""
    return (
        control.wants_handover()
        and type(backend) is LocalBackend
        and settings.kube_namespace is None
    )


def hand_over_kernel(
    container: Container,
    listening: dict[str, socket.socket],
    control: Control,
    request: Request,
    logger: logging.LoggerAdapter[Any],
) -> int | None:
    """session.Hooks.hand_over for a kernel that qualifies: once it runs, send the client
    its descriptors and facts (Control.hand_over, the design's table), write
    <base>/handover.json for finish.py, spawn the gated refill, close our copies, and wait
    for the client's R (or its EOF, or FIRST_REPLY_WAIT) to open the refill's gate and log
    the start line. Returns 0 once handed over (the session ends without X), or None when
    the kernel cannot be (a refused cold start, a warm container that ended already): then
    serve() runs as always, and its end is the usual one."""
    assert isinstance(container.backend, LocalBackend)
    api = container.backend.api
    armed: ExitWatch | None = None
    if container.cold is not None:
        cold = container.cold
        cold.outputs()  # waits for the start: id, exit watch, lifeline
        if not isinstance(cold, Held) or cold.sock is None or cold.exit is None:
            return None  # refused, or ended before its lifeline: serve() tells why
        lifeline, watch = cold.sock, cold.exit
        container.container_id = container.container_id or cold.container_id
    else:
        if container.lifeline is None:
            return None
        lifeline = container.lifeline
        try:
            armed = watch = api.watch_exit(container.container_id or container.name)
            # After arming: an exit before it would never be reported on the watch.
            info = api.inspect(container.container_id or container.name)
        except DockerKernelError as exc:
            logger.warning("not handing the kernel over: %s", exc)
            if armed is not None:
                armed.close()
            return None
        if not info or not info.get("State", {}).get("Running"):
            watch.close()
            return None
        container.container_id = container.container_id or str(info.get("Id", ""))
    if not container.copy_sent(COPY_WAIT):
        # Still copying (a huge work dir) or its copy failed: relayed here as always (a
        # failed copy's stop is already under way, and serve() reports it).
        if armed is not None:
            armed.close()
        return None
    keep = container.open_log()
    if container.settings.pool:
        container.spawn_refill()  # gated: the client's R opens it (below)
    write_private(
        str(container.base / HANDOVER_STATE),
        json.dumps(handover_state(container, request)),
    )
    dir_fd = os.open(container.runtime_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    log_fd = os.open(
        keep.output_path if keep is not None else os.devnull,
        os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC,
    )
    fds = [lifeline.fileno(), watch.fileno(), dir_fd, log_fd]
    fds += [listening[channel].fileno() for channel in CHANNELS]
    try:
        if container.stopping:  # a SIGTERM came meanwhile: its reason is ours to report
            raise OSError(f"stopped before the hand-over: {container.exit_reason}")
        control.hand_over(handover_fields(container, request, logger), fds)
    except OSError as exc:
        # Nothing was handed over: the kernel is still ours to end (the first reason wins).
        if not container.stopping:
            logger.warning("could not hand the kernel over to its client: %s", exc)
        container.stop(f"its kernel's launcher went away ({exc})")
        try:
            return container.finish(container.wait(), Relayed())
        finally:
            container.close()  # session.run leaves a handed-over container alone
    finally:
        os.close(dir_fd)
        os.close(log_fd)
    container.mark("handed over to the client")
    container.let_go()
    for sock in listening.values():
        sock.close()  # the client's copies serve them
    listening.clear()
    # The refill's gate opens at the client's R (the first reply relayed), its EOF, or
    # FIRST_REPLY_WAIT; the start line comes first (it reaches the client's stderr).
    container._log_started(lambda: FIRST_REPLY_BYTES if control.ready.is_set() else 0, "")
    if container._refill is not None:
        container._refill.close()
    return 0


def handover_state(container: Container, request: Request) -> dict[str, Any]:
    """What finish.py revives the Container from (<base>/handover.json, 0600)."""
    keep = container.kernel_log
    return {
        "settings": json.loads(request.settings),
        "connection_file": container.connection_file,
        # The client's connection info (its key signs the kill notice): Jupyter may have
        # removed the connection file by the time the kernel ends.
        "connection": container.connection,
        "client_cwd": client_cwd(request.client_pid, request.cwd),
        "name": container.name,
        "id": container.container_id,
        "kernel_id": container.kernel_id,
        "base": str(container.base),
        "workdir": container.workdir,
        "pooled": container.pooled,
        "cold": container.cold is not None,
        "started": container.started,
        "client_pid": container.client_pid,
        "launcher_pid": container.launcher_pid,
        "env": request.env,
        "log_dir": str(keep.directory) if keep is not None else "",
    }


def handover_fields(
    container: Container, request: Request, logger: logging.LoggerAdapter[Any]
) -> dict[str, str]:
    """The `key=value` lines of `H` (the design's list, plus launcher_pid)."""
    settings = container.settings
    assert isinstance(container.backend, LocalBackend)
    elapsed = time.monotonic() - container.started
    client_pid = container.client_pid
    return {
        "name": container.name,
        "id": container.container_id,
        "kernel_id": container.kernel_id,
        "state": str(container.base / HANDOVER_STATE),
        "max_message": str(size_bytes(settings.max_message)),
        "output_budget": str(size_bytes(settings.output_budget)),
        "max_lifetime": f"{settings.max_lifetime:g}",
        "lifetime_left": f"{settings.max_lifetime + LIFETIME_GRACE - elapsed:.3f}",
        "client_pid": str(client_pid),
        "client_start": process_start_time(client_pid) if client_pid > 1 else "",
        "engine_socket": container.backend.api.socket_path,
        "api_prefix": API_PREFIX,
        "forward_limit": str(kernel_log.FORWARD_LIMIT),
        "tail_keep": str(kernel_log.TAIL_KEEP),
        "first_reply_bytes": str(FIRST_REPLY_BYTES),
        "kernel_sockets": ",".join(
            container.rundir.socket(index).name for index in range(1, len(CHANNELS) + 1)
        ),
        "allowed": ",".join(socket_names()),
        "debug": "1" if logger.isEnabledFor(logging.DEBUG) else "0",
        "launcher_pid": str(container.launcher_pid),
    }


def pod_backend(settings: KernelSettings, env: dict[str, str]) -> Backend | None:
    """A --kubernetes kernel's backend with the request's kubeconfig (KUBECONFIG, HOME), not
    the helper's (whichever client started it); None for the engine's kernels."""
    if settings.kube_namespace is None:
        return None
    from jupyter_docker_kernel.kube_backend import KubeBackend

    return KubeBackend.for_settings(settings, env)


#: helper.Janitor: the same sweep as gc's (reaper.collect), marked dirs only.
sweep = reaper.sweep_after
