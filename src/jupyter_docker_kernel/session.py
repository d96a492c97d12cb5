"""One argv kernel's session: its Container and the five-channel Relay on the client's endpoints.

The logic of the kernelspec's argv, written once for its two hosts:

- the resident helper (hosting.run_kernel), which runs every argv kernel of a user and
  engine address on its one event loop, for a thin client (thin.py) per kernel;
- the launcher's own process (`main` here), when the helper is switched off
  (JUPYTER_DOCKER_KERNEL_NO_HELPER=1) or cannot be reached: the launcher of before issue 17,
  with its forked watchdog and its own event loop.

`run(settings, connection_file, hooks)` is the session: Container, start, bind the client's
endpoints, then `serve` (a coroutine on the host's loop) relays until the container ends
and returns its exit code. `Hooks` holds what differs between the hosts: where the kernel's
output and log lines go, who the Jupyter client is, which engine environment to use, how
the client's signals arrive and how its going away is noticed.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from jupyter_docker_kernel.container import Backend, Container, Relayed, backend_for
from jupyter_docker_kernel.endpoints import (
    CHANNELS,
    Route,
    adopt_listening,
    client_cwd,
    host_endpoints,
    listen,
)
from jupyter_docker_kernel.engine import Engine, use_host
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.kernelspec import SETTINGS_ENV
from jupyter_docker_kernel.rundir import alive, process_start_time
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

log = logging.getLogger("jupyter_docker_kernel.launcher")

_T = TypeVar("_T")
_Logger = logging.Logger | logging.LoggerAdapter[Any]


def _always() -> bool:
    return True


@dataclass
class Hooks:
    """What a host changes in a session (the defaults are the launcher's own process)."""

    #: Runs serve() to its end on the host's loop: asyncio.run, or the helper's shared
    #: loop from a session thread.
    run_async: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    #: The engine for this kernel's settings; None: the process environment's, after
    #: use_host (the launcher's process is this one kernel's, so it may change it).
    backend: Callable[[KernelSettings], Backend | Engine | None] | None = None
    #: The kernel's working directory (the notebook's); None: this process's cwd.
    workdir: str | None = None
    #: The Jupyter client's pid; None: our parent.
    client_pid: int | None = None
    #: Where a relative ipc endpoint is resolved (the Jupyter client's cwd); None: our
    #: parent's (endpoints.client_cwd).
    client_cwd: str | None = None
    #: Where the kernel's own stdout/stderr lines go; None: our stderr.
    out: IO[bytes] | None = None
    #: Where the Container's start, stop and exit lines go; None: the launcher's logger.
    logger: _Logger | None = None
    #: The client's home directory (no project root may be it); None: this process's.
    home: str | None = None
    #: Fork the per-kernel watchdog (the launcher's process only: the helper removes its
    #: kernels itself, and the engine-side lifeline covers its death).
    watchdog: bool = True
    #: Polled every second once the relay serves; False stops the kernel (the Jupyter
    #: client died without stopping it).
    client_alive: Callable[[], bool] = _always
    #: Called with the Container as soon as it exists, before anything starts.
    created: Callable[[Container], None] = field(default=lambda container: None)
    #: Called on the loop once the relay serves: from here on the client's signals reach
    #: the kernel (deliver()); before, an interrupt has no kernel to reach.
    serving: Callable[[Container, asyncio.AbstractEventLoop], None] = field(
        default=lambda container, loop: None
    )
    #: Sockets already listening on the client's endpoints, by channel (the resident
    #: helper's: its thin client bound them first thing, thin.listen_early); each is
    #: checked against the connection file (endpoints.adopt_listening) and closed at the end.
    listening: dict[str, socket.socket] = field(default_factory=dict)
    #: Who keeps the kernel alive (Container's launcher_pid), asked with the settings and
    #: the backend before the Container exists; None: this process.
    launcher_pid: Callable[[KernelSettings, Backend], int | None] = field(
        default=lambda settings, backend: None
    )
    #: Instead of serve(), once the container runs and the endpoints listen: hand the
    #: session to another process (the resident helper's compiled client, hosting.py);
    #: its exit code (the session is over here, the container runs on), or None when it
    #: did not (then serve() runs as always). None: never.
    hand_over: Callable[[Container, dict[str, socket.socket]], int | None] | None = None


def deliver(container: Container, signum: int) -> None:
    """A signal of the Jupyter client's, for the kernel: SIGINT interrupts it, SIGTERM and
    SIGHUP stop it (remove its container). Both hosts route their clients' signals here."""
    if signum == signal.SIGINT:
        container.interrupt()
    else:
        container.stop()


def run(settings: KernelSettings, connection_file: str, hooks: Hooks) -> int:
    """Start the kernel and relay until it ends; returns its exit code (1: it could not
    start, logged). Always removes the container and the runtime dir before returning."""
    container: Container | None = None
    lifeline = -1
    logger = hooks.logger or log
    listening: dict[str, socket.socket] = {}
    handed = False
    try:
        chosen = hooks.backend(settings) if hooks.backend is not None else None
        backend = chosen if not isinstance(chosen, Engine | None) else backend_for(settings, chosen)
        container = Container(
            settings,
            connection_file,
            backend,
            workdir=hooks.workdir,
            client_pid=hooks.client_pid,
            logger=hooks.logger,
            out=hooks.out,
            home=hooks.home,
            launcher_pid=hooks.launcher_pid(settings, backend),
        )
        hooks.created(container)
        if settings.kube_namespace is not None:
            return run_pod(container, hooks)
        if hooks.watchdog:
            lifeline = container.start_watchdog()  # a fork: before Container starts any thread
        # Listening now, before the container starts (after the watchdog's fork, which must
        # not inherit them): the client's connection attempts wait in the backlog instead
        # of being refused and retried 100-200 ms later by its ZeroMQ.
        for route in routes(container, hooks.client_cwd):
            early = adopt_listening(hooks.listening.get(route.channel), route.host)
            listening[route.channel] = early or listen(route.host, route.channel)
        container.start()
        if container.stopping:
            # Stopped while starting (the client went away): the stop's removal may have
            # come before the container existed; remove again, now that it does.
            container.stop(block=True)
        elif hooks.hand_over is not None:
            code = hooks.hand_over(container, listening)
            if code is not None:
                handed = True  # the container, its dir and the kept log are not ours now
                return code
        return hooks.run_async(serve(container, listening, hooks))
    except DockerKernelError as exc:
        logger.error("%s", exc)
        return 1
    except OSError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        # The relay closed those it served; these are what a failed start left.
        for sock in [*listening.values(), *hooks.listening.values()]:
            sock.close()
        if container is not None and not handed:
            container.close()
        if lifeline >= 0:
            os.close(lifeline)


def run_pod(container: Container, hooks: Hooks) -> int:
    """run() for a kernel pod (setup --kubernetes without --provisioner): the client's
    endpoints are a kube_proxy.ChannelProxy's, plain on the host, CurveZMQ to the pod,
    instead of the relay's (which moves raw bytes to a local kernel's unix sockets).
    No watchdog: a pod goes by its activeDeadlineSeconds, its owner's deletion or `gc`."""
    from jupyter_docker_kernel.kube_proxy import ChannelProxy

    proxy = ChannelProxy(
        max_message=size_bytes(container.settings.max_message),
        output_budget=size_bytes(container.settings.output_budget),
        on_violation=container.stop,  # "budget exceeded: ...": the exit line's reason
    )
    try:
        # Bound before the pod starts: the client's first requests wait in their queues.
        # The early listeners (plain TCP sockets) become the proxy's ZeroMQ sockets' own.
        proxy.bind(container.connection, hooks.client_cwd or client_cwd(), hooks.listening)
        hooks.listening.clear()  # adopted (libzmq closes them) or closed
        container.start()
        if container.stopping:
            container.stop(block=True)
        endpoint = getattr(container.cold, "endpoint", None)
        assert endpoint is not None, "KubeBackend.start_cold returns a PodCold"
        proxy.connect(endpoint.connection)
        return hooks.run_async(serve_pod(container, proxy, hooks))
    finally:
        proxy.close()


async def serve_pod(container: Container, proxy: Any, hooks: Hooks) -> int:
    """serve() for a kernel pod: the proxy's thread moves the messages; this waits for
    the pod's end, then tells the notebook why it was killed as serve() does (the proxy
    publishes on its host iopub socket, ChannelProxy.announce)."""
    loop = asyncio.get_running_loop()
    container.mark("proxy serving")
    hooks.serving(container, loop)
    endpoint = container.cold.endpoint  # type: ignore[union-attr]  # a PodCold (run_pod)
    await in_thread(
        container.attach,
        lambda: proxy.bytes_to_host,
        f"; proxied from the client's endpoints to pod IP {endpoint.ip} over CurveZMQ (max "
        f"message {container.settings.max_message}, output budget "
        f"{container.settings.output_budget})",
    )
    watch = loop.create_task(watch_client(container, hooks.client_alive))
    ending = await in_thread(container.wait)
    watch.cancel()
    if ending.notice:
        await announce(proxy, container, ending.notice)
    await in_thread(proxy.close)
    relayed = Relayed(proxy.bytes_to_host, proxy.bytes_to_kernel, proxy.output_charged)
    return await in_thread(container.finish, ending, relayed)


def routes(container: Container, relative_to: str | None = None) -> list[Route]:
    """The relay's routes: the client's endpoints (its connection file) to the kernel's
    sockets in the container's socket dir. relative_to: the client's cwd (default: our
    parent's), against which a relative ipc endpoint is resolved."""
    endpoints = host_endpoints(container.connection, relative_to=relative_to or client_cwd())
    return [
        Route(channel, endpoints[channel], str(container.rundir.socket(index)))
        for index, channel in enumerate(CHANNELS, start=1)
    ]


async def serve(container: Container, listening: dict[str, socket.socket], hooks: Hooks) -> int:
    """Relay until the container exits; returns its exit code. Runs on the host's loop
    (hooks.run_async), after Container.start; `listening` are the client's endpoints."""
    from jupyter_docker_kernel.relay import Relay

    loop = asyncio.get_running_loop()
    relay = Relay(
        routes(container, hooks.client_cwd),
        max_message=size_bytes(container.settings.max_message),
        output_budget=size_bytes(container.settings.output_budget),
        # "budget exceeded: ...", "protocol refused: ...": the exit line's reason.
        on_violation=container.stop,
    )
    # Before the relay serves: the socket-dir guard, then the client may connect.
    container.guard()
    await relay.start(listening=listening)
    container.mark("relay serving")
    hooks.serving(container, loop)
    # The rest of attach (kept log, output forwarding, lifetime timer, the refill's spawn)
    # in a thread: the client's first request, waiting in the backlog, is relayed meanwhile
    # (on the resident helper's loop, every other kernel's traffic too).
    await in_thread(container.attach, lambda: relay.bytes_to_host)
    watch = loop.create_task(watch_client(container, hooks.client_alive))
    # A thread of its own, not the loop's executor: a helper waits for many kernels at once.
    ending = await in_thread(container.wait)
    watch.cancel()
    if ending.notice:
        await announce(relay, container, ending.notice)
    await relay.close()
    relayed = Relayed(relay.bytes_to_host, relay.bytes_to_kernel, relay.output_charged)
    return await in_thread(container.finish, ending, relayed)


async def in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking call in a new thread, in this task's context (the resident helper's
    session, helper.CURRENT, for its log lines), and await its result on this loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]  # None only with an error

    def work() -> None:
        try:
            result = func(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(
        target=context.run, args=(work,), name=getattr(func, "__name__", "call"), daemon=True
    ).start()
    return await done


async def announce(relay: Any, container: Container, text: str) -> None:
    """Tell the notebook why its kernel was killed (notice.py), before the relay closes:
    a stderr stream and an idle status to every iopub subscriber, for the cell that was
    running. Container.wait made the text: nothing for a shutdown, restart or interrupt.
    `relay`: the Relay, or a pod's kube_proxy.ChannelProxy (both have last_execute and
    announce)."""
    from jupyter_docker_kernel.container import NOTICE_LINGER
    from jupyter_docker_kernel.notice import notice_messages

    try:
        messages = notice_messages(container.connection, relay.last_execute(), text)
        told = await relay.announce(messages)
    except Exception as exc:  # a courtesy: the exit line and cleanup must still come
        container.log.warning("could not tell the notebook why the kernel ended: %s", exc)
        return
    if told:
        # The client reads them now; it must not find us gone (and stop reading) first.
        await asyncio.sleep(NOTICE_LINGER)
    container.log.info("told %d iopub subscriber(s) in the notebook: %s", told, text)


async def watch_client(container: Container, client_alive: Callable[[], bool]) -> None:
    """End the kernel when the Jupyter client that started it dies without stopping it
    (a local ipykernel does the same through JPY_PARENT_PID): otherwise the container
    would run on under a launcher nobody will ever stop."""
    while client_alive():
        await asyncio.sleep(1.0)
    container.log.warning(
        "the Jupyter client (pid %d) went away; stopping the kernel", container.client_pid
    )
    container.stop("the Jupyter client went away")


def process_alive(pid: int) -> Callable[[], bool]:
    """A client_alive check for process `pid` as it is now (pid and start time)."""
    start = process_start_time(pid) if pid > 1 else ""
    if not start:
        return _always  # nobody to watch (no client pid, or already gone: EOF tells)
    return lambda: alive(str(pid), start)


# -- the launcher's own process (no helper) ---------------------------------------------------


def process_age() -> float:
    """Seconds since this process was started (exec included); 0.0 if /proc cannot tell."""
    try:
        ticks = int(process_start_time(os.getpid()))
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def configure_logging(debug: bool) -> None:
    """One line per event on stderr, in the shape of the Jupyter server's own log lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "[%(levelname).1s %(asctime)s.%(msecs)03d DockerKernel] %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    root = logging.getLogger("jupyter_docker_kernel")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


USAGE = (
    "usage: python -I -m jupyter_docker_kernel.launcher [--settings JSON] -f CONNECTION_FILE "
    f"[--debug] [EXTRA ...]\nRun by Jupyter through a kernelspec written by "
    f"`jupyter-docker-kernel setup`, with the settings JSON in the environment variable "
    f"{SETTINGS_ENV} (or --settings). EXTRA arguments (`jupyter run` passes its file names) "
    "are ignored: the kernel in the container cannot see the host's files."
)


class Args:
    """The launcher's three options (parsed by hand: argparse costs a kernel start ~10 ms)."""

    def __init__(self) -> None:
        self.settings = ""
        self.connection_file = ""
        self.debug = False
        #: Positional arguments a client appended; logged at DEBUG and otherwise ignored.
        self.extra: list[str] = []


def parse_args(argv: list[str]) -> Args:
    """Parse -f/--connection-file FILE, --debug and (specs of earlier versions) --settings
    JSON; without --settings the settings come from $JUPYTER_DOCKER_KERNEL_SETTINGS, which
    is removed from our environment so that the engine CLI and our other children do not
    inherit it. Exits 2 on anything else."""
    args = Args()
    rest = list(argv)
    while rest:
        opt = rest.pop(0)
        name, eq, value = opt.partition("=")
        if name in ("--settings", "-f", "--connection-file"):
            if not eq:
                if not rest:
                    break
                value = rest.pop(0)
            if name == "--settings":
                args.settings = value
            else:
                args.connection_file = value
        elif opt == "--debug":
            args.debug = True
        elif opt in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        elif not opt.startswith("-"):
            # jupyter_client appends a client's extra arguments to the kernelspec's argv
            # (`jupyter run --kernel NAME file.py` sends file.py; it runs the file's code
            # itself): a kernel that refused them could not be used there at all.
            args.extra.append(opt)
        else:
            print(f"{USAGE}\nerror: unexpected argument {opt!r}", file=sys.stderr)
            sys.exit(2)
    from_env = os.environ.pop(SETTINGS_ENV, "")
    args.settings = args.settings or from_env
    if not args.settings or not args.connection_file:
        print(
            f"{USAGE}\nerror: -f and the settings ({SETTINGS_ENV} or --settings) are required",
            file=sys.stderr,
        )
        sys.exit(2)
    return args


def _serving_here(container: Container, loop: asyncio.AbstractEventLoop) -> None:
    """The launcher's own process: the client's signals arrive as ours."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, deliver, container, signum)


def _backend_here(settings: KernelSettings) -> None:
    use_host(settings.engine_host)  # this process serves this one kernel: its env is ours


def main(argv: list[str] | None = None) -> int:
    """The launcher without the helper: this process runs the kernel's session."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.debug or bool(os.environ.get("JUPYTER_DOCKER_KERNEL_DEBUG")))
    if args.extra:
        log.debug("ignoring extra arguments from the client: %s", " ".join(args.extra))
    # Until the event loop's handler is installed, an interrupt has no kernel to reach yet;
    # it must not kill the launcher halfway through starting one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        settings = KernelSettings.from_dict(json.loads(args.settings))
    except DockerKernelError as exc:
        log.error("%s", exc)
        return 1
    parent = os.getppid()
    hooks = Hooks(
        backend=_backend_here,
        client_alive=lambda: os.getppid() == parent,
        created=lambda c: c.mark(f"launcher up ({process_age() * 1000:.0f} ms after exec)"),
        serving=_serving_here,
    )
    return run(settings, args.connection_file, hooks)
