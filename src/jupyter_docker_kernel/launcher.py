"""The kernelspec's argv: start the kernel's container, relay its channels, always clean up.

A Jupyter client runs `python -I -m jupyter_docker_kernel.launcher -f {connection_file}`
(the settings JSON in kernel.json's env, kernelspec.SETTINGS_ENV; specs of earlier versions
pass `--settings JSON` instead) and treats this process as the kernel: it polls it for
liveness, sends it SIGINT to interrupt (interrupt_mode "signal"), SIGTERM/SIGKILL to stop
it. We turn those into container actions. Nothing here parses Jupyter messages; relay.py
moves bytes.

This is an adapter over container.Container, which owns the container's lifecycle (the
provisioner is the other one): it parses the argv, serves the relay on the client's
endpoints, turns signals into Container calls and watches its parent. Cleanup never
depends on this process surviving: a watchdog process (own session, so the client's
killpg does not reach it) removes the container and our files when we die, and the
in-container supervisor ends the kernel when our `docker run -i` stdin goes away.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from jupyter_docker_kernel.container import Container, Relayed
from jupyter_docker_kernel.container import exit_verdict as exit_verdict
from jupyter_docker_kernel.container import kernel_id_from as kernel_id_from
from jupyter_docker_kernel.container import wait_exit_code as wait_exit_code
from jupyter_docker_kernel.container import watch_lifeline as watch_lifeline
from jupyter_docker_kernel.endpoints import CHANNELS, Route, client_cwd, host_endpoints, listen
from jupyter_docker_kernel.engine import use_host
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.kernel_log import FORWARD_LIMIT as FORWARD_LIMIT
from jupyter_docker_kernel.kernel_log import forward as forward
from jupyter_docker_kernel.kernelspec import SETTINGS_ENV
from jupyter_docker_kernel.rundir import ENV_FILE as ENV_FILE
from jupyter_docker_kernel.rundir import alive as alive
from jupyter_docker_kernel.rundir import process_start_time as process_start_time
from jupyter_docker_kernel.rundir import runtime_base as runtime_base
from jupyter_docker_kernel.rundir import runtime_base_choice as runtime_base_choice
from jupyter_docker_kernel.settings import KernelSettings, size_bytes
from jupyter_docker_kernel.workdir import nbgrader_layout as nbgrader_layout
from jupyter_docker_kernel.workdir import refuse_grading_mount as refuse_grading_mount

# Re-exported above (`as` names): tests import them from here, and watchdog processes of
# an earlier release run `from jupyter_docker_kernel.launcher import watch_lifeline`.

log = logging.getLogger("jupyter_docker_kernel.launcher")
#: The lifecycle object's name before container.py (tests and callers may still use it).
Launcher = Container


def process_age() -> float:
    """Seconds since this process was started (exec included); 0.0 if /proc cannot tell."""
    try:
        ticks = int(process_start_time(os.getpid()))
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def routes(container: Container) -> list[Route]:
    """The relay's routes: the client's endpoints (its connection file) to the kernel's
    sockets in the container's socket dir."""
    endpoints = host_endpoints(container.connection, relative_to=client_cwd())
    return [
        Route(channel, endpoints[channel], str(container.rundir.socket(index)))
        for index, channel in enumerate(CHANNELS, start=1)
    ]


async def serve(container: Container, listening: dict[str, socket.socket]) -> int:
    """Relay until the container exits; returns its exit code. asyncio.run() calls it,
    after Container.start; `listening` are the client's endpoints, bound early."""
    import asyncio

    from jupyter_docker_kernel.relay import Relay

    loop = asyncio.get_running_loop()
    relay = Relay(
        routes(container),
        max_message=size_bytes(container.settings.max_message),
        output_budget=size_bytes(container.settings.output_budget),
        # "budget exceeded: ...", "protocol refused: ...": the exit line's reason.
        on_violation=container.stop,
    )
    # Before the relay serves: the socket-dir guard, then the client may connect.
    container.attach(lambda: relay.bytes_to_host)
    await relay.start(listening=listening)
    container.mark("relay serving")
    loop.add_signal_handler(signal.SIGINT, container.interrupt)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, container.stop)
    watch = loop.create_task(watch_parent(container))
    ending = await loop.run_in_executor(None, container.wait)
    watch.cancel()
    if ending.notice:
        await announce(relay, container, ending.notice)
    await relay.close()
    relayed = Relayed(relay.bytes_to_host, relay.bytes_to_kernel, relay.output_charged)
    return container.finish(ending, relayed)


async def announce(relay: Any, container: Container, text: str) -> None:
    """Tell the notebook why its kernel was killed (notice.py), before the relay closes:
    a stderr stream and an idle status to every iopub subscriber, for the cell that was
    running. Container.wait made the text: nothing for a shutdown, restart or interrupt."""
    import asyncio

    from jupyter_docker_kernel.container import NOTICE_LINGER
    from jupyter_docker_kernel.notice import notice_messages

    try:
        messages = notice_messages(container.connection, relay.last_execute(), text)
        told = await relay.announce(messages)
    except Exception as exc:  # a courtesy: the exit line and cleanup must still come
        log.warning("could not tell the notebook why the kernel ended: %s", exc)
        return
    if told:
        # The client reads them now; it must not find us gone (and stop reading) first.
        await asyncio.sleep(NOTICE_LINGER)
    log.info("told %d iopub subscriber(s) in the notebook: %s", told, text)


async def watch_parent(container: Container) -> None:
    """End the kernel when the Jupyter client that started us dies without stopping it
    (a local ipykernel does the same through JPY_PARENT_PID): otherwise the container
    would run on under a launcher nobody will ever stop."""
    import asyncio

    # The client as Container saw it at our start, not now: a start through the engine's
    # API returns once the container runs, and a client killed in between (the engine
    # already lists the kernel) would otherwise leave us watching init for ever.
    parent = container.client_pid
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the Jupyter client (pid %d) went away; stopping the kernel", parent)
    container.stop("the Jupyter client went away")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the kernelspec's argv; returns the kernel container's exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.debug or bool(os.environ.get("JUPYTER_DOCKER_KERNEL_DEBUG")))
    if args.extra:
        log.debug("ignoring extra arguments from the client: %s", " ".join(args.extra))
    # Until the event loop's handler is installed, an interrupt has no kernel to reach yet;
    # it must not kill the launcher halfway through starting one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    container: Container | None = None
    lifeline = -1
    try:
        settings = KernelSettings.from_dict(json.loads(args.settings))
        use_host(settings.engine_host)
        container = Container(settings, args.connection_file)
        container.mark(f"launcher up ({process_age() * 1000:.0f} ms after exec)")
        lifeline = container.start_watchdog()  # a fork: before Container starts any thread
        container.start()
        # Listening now, before asyncio is imported: the client's first connection
        # attempt waits in the backlog instead of being refused and retried later.
        listening = {
            route.channel: listen(route.host, route.channel) for route in routes(container)
        }
        import asyncio

        return asyncio.run(serve(container, listening))
    except DockerKernelError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if container is not None:
            container.close()
        if lifeline >= 0:
            os.close(lifeline)


if __name__ == "__main__":
    sys.exit(main())
