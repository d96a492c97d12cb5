"""The launcher's container lifecycle as a jupyter_client kernel provisioner.

`setup --provisioner` writes `metadata.kernel_provisioner` into kernel.json; clients that
honour it (Jupyter Server, nbclient, jupyter_client's KernelManager) then call this class
instead of running the argv: interrupt, terminate and kill become engine calls, and no
launcher process runs. The client connects to unix sockets in a host-only dir of the
kernel's, served by the relay (relay.py) on a thread of the client's own process
(RelayThread), which meters what the kernel sends against --max-message and
--output-budget exactly as the launcher's relay does, and reaches the kernel's ipc sockets
in the bind-mounted runtime dir through pinned links (see SocketPins). Clients that ignore
provisioners (VS Code) run the argv launcher from the same kernel.json, with the same
settings, the same hardening and the same budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from jupyter_docker_kernel import hardening, kernelspec, pool
from jupyter_docker_kernel.endpoints import CHANNELS, Endpoint, Route, listen
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError, LaunchError
from jupyter_docker_kernel.launcher import (
    FIRST_REPLY_WAIT,
    LIFETIME_GRACE,
    NOTICE_LINGER,
    Launcher,
    forward,
    kernel_id_from,
    kill_now,
    limits_summary,
    remove_tree,
    runtime_base,
    socket_names,
    start_lifeline_watchdog,
    wait_exit_code,
)
from jupyter_docker_kernel.relay import Relay, RelayThread
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings, size_bytes
from jupyter_docker_kernel.socketdir import SocketDirGuard

log = logging.getLogger(__name__)

#: sun_path holds 108 bytes with its NUL: a longer socket path cannot be connected to.
MAX_SOCKET_PATH = 107


def socket_prefix(runtime_dir: Path) -> str:
    """The host path the kernel's sockets are named after: <prefix>-1 .. <prefix>-5."""
    return str(runtime_dir / hardening.SOCKET_PREFIX)


def client_connection(client_dir: Path) -> dict[str, Any]:
    """The client's connection info: ipc to the relay's endpoints <client_dir>/k-1..5, in
    the launcher's channel order (the numbers the kernel's own sockets carry)."""
    prefix = socket_prefix(client_dir)
    if len(os.fsencode(prefix)) + 2 > MAX_SOCKET_PATH:
        raise LaunchError(
            f"The kernel's socket paths under {client_dir} would be longer than the "
            f"{MAX_SOCKET_PATH} bytes a unix socket path may have. No container was started. "
            "Set XDG_RUNTIME_DIR (or TMPDIR) to a shorter directory."
        )
    conn: dict[str, Any] = {"transport": "ipc", "ip": prefix}
    for index, channel in enumerate(CHANNELS, start=1):
        conn[f"{channel}_port"] = index
    return conn


class SocketPins:
    """Pins the sockets the kernel binds, so the client cannot be pointed elsewhere.

    The kernel can write in its runtime dir and could swap a socket for a symlink to any
    host socket (the engine's, say), which the next connect would follow. A thread opens
    each socket once it appears (O_PATH|O_NOFOLLOW, checked to be a socket) and links
    pin_dir/k-N, a dir the container cannot see, to /proc/<our pid>/fd/<fd>: the very
    inode that was checked. The relay connects through those links (connect_pinned), for
    the first client and for every later one. That happens before any notebook code runs,
    as the kernel answers nothing until the client is connected.
    """

    def __init__(self, runtime_dir: Path, pin_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.pin_dir = pin_dir
        self.fds: dict[int, int] = {}
        self.stop = threading.Event()
        pin_dir.mkdir(mode=0o700)
        self.refused: set[int] = set()
        # A warm kernel's sockets exist already: pinned now, before the client's first
        # connect (a missing path would cost it ZeroMQ's 100 ms reconnect interval).
        self._pin_ready()
        self.thread = threading.Thread(target=self._pin_all, daemon=True)
        self.thread.start()

    def _pin_all(self) -> None:
        while len(self.fds) + len(self.refused) < len(CHANNELS) and not self.stop.wait(0.02):
            self._pin_ready()

    def _pin_ready(self) -> None:
        """Pin each socket that is bound and not pinned (or refused) yet."""
        for index in range(1, len(CHANNELS) + 1):
            if index in self.fds or index in self.refused:
                continue
            name = f"{hardening.SOCKET_PREFIX}-{index}"
            try:
                fd = os.open(self.runtime_dir / name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # not bound yet
            except OSError as exc:  # ELOOP: a symlink
                self.refused.add(index)
                log.warning("not connecting to %s: %s", self.runtime_dir / name, exc)
                continue
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
                self.refused.add(index)
                log.warning("not connecting to %s: not a socket", self.runtime_dir / name)
                continue
            self.fds[index] = fd
            link = self.pin_dir / name
            tmp = link.with_suffix(".new")
            os.symlink(f"/proc/{os.getpid()}/fd/{fd}", tmp)
            os.replace(tmp, link)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def connect_pinned(link: str) -> socket.socket:
    """Connect to a kernel socket through its pin link (made by SocketPins, in a dir the
    container cannot see, to the inode checked when it was pinned); non-blocking.

    Raises FileNotFoundError while the socket is not pinned yet: the relay then retries.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(link)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def start_meter(
    settings: KernelSettings,
    client_dir: Path,
    pin_dir: Path,
    on_violation: Callable[[str], None],
) -> RelayThread:
    """Serve the client's endpoints in client_dir with a relay to the pinned kernel sockets,
    on a thread of this process, with the launcher's budgets. DockerProvisioner calls it
    on every start, once the sockets are being pinned; on_violation runs in its thread."""
    client_dir.mkdir(mode=0o700, exist_ok=True)
    routes = [
        Route(
            channel,
            Endpoint("ipc", f"{socket_prefix(client_dir)}-{index}"),
            f"{socket_prefix(pin_dir)}-{index}",
        )
        for index, channel in enumerate(CHANNELS, start=1)
    ]
    relay = Relay(
        routes,
        max_message=size_bytes(settings.max_message),
        output_budget=size_bytes(settings.output_budget),
        on_violation=on_violation,
        connect=connect_pinned,
    )
    # Bound here, before the client has the connection info: its first connect is accepted.
    listening = {route.channel: listen(route.host, route.channel) for route in routes}
    meter = RelayThread(relay, listening)
    meter.start()
    return meter


def settings_of(kernel_spec: Any) -> KernelSettings:
    """The settings embedded in the kernelspec (env, or an earlier version's argv), exactly
    as the launcher reads them."""
    return kernelspec.settings_from_kernel_json(
        {
            "argv": list(kernel_spec.argv),
            "env": dict(kernel_spec.env or {}),
            "metadata": dict(kernel_spec.metadata),
        }
    )


T = TypeVar("T")


async def off_loop(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (an engine CLI call, file work) in a thread, so the server's
    event loop keeps serving; inline when no thread can be had any more: KernelManager
    shuts kernels down from an atexit hook, after the default executor has closed."""
    try:
        return await asyncio.to_thread(func, *args)
    except RuntimeError as exc:
        if "interpreter shutdown" not in str(exc):
            raise
        return func(*args)


def share_log(server_log: Any) -> None:
    """Send our modules' log lines (the launcher's workdir warnings, engine errors) to the
    server's log handlers, once, unless someone configured our logger already."""
    ours = logging.getLogger("jupyter_docker_kernel")
    if ours.handlers or not isinstance(server_log, logging.Logger):
        return
    for handler in server_log.handlers:
        ours.addHandler(handler)
    if ours.handlers:
        ours.setLevel(logging.INFO)
        ours.propagate = False


class DockerProvisioner(KernelProvisionerBase):
    """One kernel's containers, one after another across restarts, for a KernelManager.

    The runtime dir (and so the socket paths the client connects to) stays the same across
    restarts, so a client that stays connected (a server's websocket) reaches the new
    kernel without reconnecting; each start gets a new container.
    """

    #: The per-kernel host dir (runtime dir, connection file, workdir copy); set on first start.
    base: Path | None = None
    #: The running container's name (a new one on each start).
    container_name: str = ""
    settings: KernelSettings
    _proc: subprocess.Popen[bytes] | None = None
    _launcher: Launcher | None = None
    _pins: SocketPins | None = None
    #: The relay between the client and the kernel's sockets, with the budgets.
    _meter: RelayThread | None = None
    _guard: SocketDirGuard | None = None
    _watchdog: subprocess.Popen[bytes] | None = None
    _forwards: list[threading.Thread]
    _timer: threading.Timer | None = None
    _started: float = 0.0
    _exit_reason: str = ""
    #: The end of the kernel's stderr (the supervisor's report), for the kill notice.
    _said: bytearray
    #: Publishing the kill notice (notice.py) once the container exited; poll() says the
    #: kernel runs until it is done, so the client reads it before it sees the kernel gone.
    _notice: asyncio.Task[None] | None = None

    @property
    def engine(self) -> Engine:
        settings = getattr(self, "settings", None)  # None before pre_launch()
        return Engine(host=settings.engine_host if settings else None)

    @property
    def key(self) -> str:
        """The kernel id as the containers' label and names carry it (name-safe)."""
        return kernel_id_from(f"kernel-{self.kernel_id}.json")

    @property
    def has_process(self) -> bool:
        return self._proc is not None

    # -- start --------------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """KernelManager.pre_start_kernel calls this first: point the manager's connection
        info at the kernel's sockets in our runtime dir and write its connection file."""
        km = self.parent
        if km is None:
            raise LaunchError(
                "The docker provisioner needs a jupyter_client KernelManager as its parent. "
                "No container was started."
            )
        self.settings = settings_of(self.kernel_spec)
        share_log(self.log)
        if self.base is None:
            self.base = RunDir.new(runtime_base(), self.key).path
        conn = client_connection(RunDir(self.base).client)
        km.transport = conn["transport"]
        km.ip = conn["ip"]
        for name, value in conn.items():
            if name.endswith("_port"):
                setattr(km, name, value)
        km.write_connection_file()
        self.connection_info = km.get_connection_info()
        kwargs.pop("extra_arguments", None)
        return await super().pre_launch(cmd=list(self.kernel_spec.argv), **kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """KernelManager.start_kernel calls this: start the container (not `cmd`, the argv
        for clients without provisioners) and return the direct connection info."""
        assert self.base is not None, "pre_launch() sets the runtime dir"
        assert self.parent is not None, "pre_launch() checks the parent"
        engine = self.engine
        launcher = Launcher(
            self.settings,
            self.parent.connection_file,
            engine,
            kernel_id=self.key,
            base=self.base,
            workdir=str(kwargs.get("cwd") or os.getcwd()),
            client_pid=os.getpid(),  # we run inside the client (the server)
        )
        if self._watchdog is None:
            self._watchdog = start_lifeline_watchdog(
                engine.executable(), self.key, self.base, engine.env()
            )
        self._launcher = launcher
        try:
            claimed = None
            if self.settings.pool:
                claimed = await off_loop(pool.claim, self.settings, runtime_base(), launcher.base)
            if claimed is not None:
                # A warm container: `docker wait` stands for it; the claim connection is
                # its lifeline and carries the kernel's raw output.
                await off_loop(launcher.adopt, claimed)
                self._proc = launcher.wait_process()
                streams: list[Any] = [self._proc.stderr, launcher.lifeline]
            else:
                launch = await off_loop(launcher.prepare)
                self._proc = launcher.start_container(launch)
                streams = [self._proc.stdout, self._proc.stderr]
        except (DockerKernelError, OSError):
            # The manager will not call cleanup() for a start that failed.
            await off_loop(launcher.cleanup)
            self._stop_watchdog()
            raise
        self._pins = SocketPins(launcher.runtime_dir, RunDir(self.base).pins)
        self.container_name = launcher.name
        self._started = time.monotonic()
        self._exit_reason = ""
        try:
            self._meter = start_meter(
                self.settings,
                RunDir(self.base).client,
                RunDir(self.base).pins,
                self._budget_exceeded,
            )
        except OSError:
            # Without the meter the client would reach nothing; the manager will not call
            # cleanup() for a start that failed.
            self._pins.close()
            await off_loop(self._remove, launcher.name)
            await off_loop(launcher.cleanup)
            self._stop_watchdog()
            raise
        self._guard = SocketDirGuard(launcher.runtime_dir, socket_names(), self._violated)
        # The kernel's raw stdout/stderr, escaped and capped, go to the server's log; its
        # end is kept for `jupyter-docker-kernel logs`.
        keep = launcher.open_log()
        self._said = bytearray()
        self._notice = None
        self._forwards = [
            threading.Thread(
                target=forward,
                # The second stream carries the supervisor's words (stderr, or the lifeline).
                args=(stream, sys.stderr.buffer, launcher.name, self._said if i else None, keep),
                daemon=True,
            )
            for i, stream in enumerate(streams)
        ]
        for thread in self._forwards:
            thread.start()
        if self.settings.pool:
            # Later, as the launcher does after the first reply: a refill's `docker run`
            # would compete for the CPU with the kernel that is starting.
            refill = threading.Timer(FIRST_REPLY_WAIT, launcher.fill_pool)
            refill.daemon = True
            refill.start()
        # The supervisor enforces the lifetime inside; the kernel could stop it, so we
        # enforce it from outside too, a little later.
        self._timer = threading.Timer(
            self.settings.max_lifetime + LIFETIME_GRACE, self._remove, (launcher.name,)
        )
        self._timer.daemon = True
        self._timer.start()
        self.log.info(
            "kernel %s started in %scontainer %s from %s: %s; relayed in this process "
            "(max message %s, output budget %s) from %s",
            self.kernel_id,
            "warm " if launcher.pooled else "",
            launcher.name,
            self.settings.image,
            limits_summary(self.settings),
            self.settings.max_message,
            self.settings.output_budget,
            RunDir(self.base).client,
        )
        return self.connection_info

    # -- running ------------------------------------------------------------------------------

    async def poll(self) -> int | None:
        """None while the container runs (its `docker run` client does), else its exit code.
        Still None while the kill notice goes out (at most a few seconds)."""
        if self._proc is None:
            return 0
        code = self._proc.poll()
        if code is None or self._meter is None:
            return code
        if self._notice is None:
            self._notice = asyncio.ensure_future(self._announce_kill(code))
        return code if self._notice.done() else None

    async def _announce_kill(self, code: int) -> None:
        """Tell the notebook why the kernel was killed, as the launcher does
        (Launcher.announce_kill): once its stderr is in, through the meter's relay."""
        from jupyter_docker_kernel.notice import kill_notice, notice_messages

        meter, launcher = self._meter, self._launcher
        if meter is None or launcher is None:
            return
        try:
            for thread in self._forwards[1:]:
                await off_loop(thread.join, 2)
            text = kill_notice(
                code,
                self._exit_reason,
                bytes(self._said).decode(errors="replace"),
                output_budget=self.settings.output_budget,
                max_message=self.settings.max_message,
                stopping=self._exit_reason.endswith("by the Jupyter client"),
            )
            if not text:
                return
            messages = notice_messages(launcher.connection, meter.relay.last_execute(), text)
            told = await off_loop(meter.announce, messages)
            if told:
                await asyncio.sleep(NOTICE_LINGER)
            self.log.info("told %d iopub subscriber(s) in the notebook: %s", told, text)
        except Exception as exc:  # a courtesy: the exit and cleanup must still come
            self.log.warning("could not tell the notebook why the kernel ended: %s", exc)

    async def wait(self) -> int | None:
        """Wait for the container to exit, then release its pipes and threads."""
        if self._proc is None:
            return 0
        while self._proc.poll() is None:
            await asyncio.sleep(0.1)
        code = self._proc.returncode
        launcher = self._launcher
        if launcher is not None and launcher.pooled and code == 0 and self._proc.stdout:
            code = wait_exit_code(self._proc.stdout.read().decode())  # `docker wait` prints it
        if self._meter is not None:
            if self._notice is None:
                self._notice = asyncio.ensure_future(self._announce_kill(code))
            await self._notice
        if launcher is not None and launcher.lifeline is not None:
            launcher.lifeline.close()
        relayed = await off_loop(self._stop_meter)
        if self._pins is not None:
            self._pins.close()
        if self._guard is not None:
            self._guard.close()
        for thread in self._forwards:
            await off_loop(thread.join, 5)
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._proc = None
        if self._timer is not None:
            self._timer.cancel()
        if launcher is not None:
            await off_loop(launcher.close_log, code, self._exit_reason)
        why = f" ({self._exit_reason})" if self._exit_reason else ""
        self.log.info(
            "kernel container %s exited with code %s%s after %.1f s; relayed %d bytes out, %d in",
            self.container_name,
            code,
            why,
            time.monotonic() - self._started,
            *relayed,
        )
        return code

    async def send_signal(self, signum: int) -> None:
        """KernelManager.signal_kernel (SIGINT: interrupt_kernel) calls this. The engine
        delivers it to the container's init, which passes it to the supervisor, which
        forwards it to the kernel's process group, as a local kernel would receive it."""
        if self._proc is None or self._proc.poll() is not None or signum == 0:
            return  # signal 0 only asks whether it runs, as poll() says
        if signum == signal.SIGKILL:
            await self.kill()
        elif signum == signal.SIGTERM:
            await self.terminate()
        else:
            name = signal.Signals(signum).name.removeprefix("SIG")
            self.log.debug("signal %s to container %s", name, self.container_name)
            await off_loop(self._engine_call, "kill", self.container_name, name)

    async def kill(self, restart: bool = False) -> None:
        """KernelManager.kill_kernel, or shutdown's last resort: remove the container."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._exit_reason = self._exit_reason or "killed by the Jupyter client"
            await off_loop(self._remove, self.container_name)

    async def terminate(self, restart: bool = False) -> None:
        """Shutdown's second step when the kernel ignored shutdown_request: SIGTERM, which
        the supervisor passes on to the kernel before it exits."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._exit_reason = self._exit_reason or "terminated by the Jupyter client"
            await off_loop(self._engine_call, "kill", self.container_name, "TERM")

    async def cleanup(self, restart: bool = False) -> None:
        """KernelManager.cleanup_resources calls this after the kernel stopped: remove the
        container (if the engine still has it) and the runtime dir; on a final shutdown
        also release the watchdog, telling it there is nothing left to do."""
        if self._proc is not None:
            await self.kill()
            await self.wait()
        if self.container_name:
            await off_loop(self._remove, self.container_name)
        await off_loop(self._stop_meter)
        if self._pins is not None:
            await off_loop(self._pins.close)
        if self._guard is not None:
            await off_loop(self._guard.close)
        if self.base is not None:
            await off_loop(remove_tree, self.base)
        if not restart:
            self._stop_watchdog()
            self.base = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        # A container's kernel exits as fast as a local one; the engine's removal adds
        # little. The default stays.
        return recommended

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({"container_name": self.container_name, "base": str(self.base or "")})
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.container_name = provisioner_info.get("container_name", "")
        base = provisioner_info.get("base")
        self.base = Path(base) if base else None

    # -- helpers ------------------------------------------------------------------------------

    def _engine_call(self, method: str, *args: str) -> None:
        """An engine call whose failure is logged, not raised: the container may be gone."""
        try:
            getattr(self.engine, method)(*args)
        except DockerKernelError as exc:
            self.log.warning("%s", exc)

    def _violated(self, reason: str) -> None:
        """The socket dir guard's alarm (its thread): remove the container at once."""
        self.log.warning("stopping the kernel in %s: %s", self.container_name, reason)
        self._exit_reason = self._exit_reason or reason
        kill_now(self.engine, self.container_name)
        self._remove(self.container_name)

    def _remove(self, name: str) -> None:
        self._engine_call("remove", name)

    def _budget_exceeded(self, what: str) -> None:
        """The meter's on_violation (in its thread; it has logged the violation): remove
        the container, as the launcher does, in a thread of its own: the engine call
        blocks and the meter's loop must keep closing connections."""
        if self._exit_reason:
            return
        self._exit_reason = what  # the relay words it: "budget exceeded: ...", ...
        threading.Thread(target=self._remove, args=(self.container_name,), daemon=True).start()

    def _stop_meter(self) -> tuple[int, int]:
        """Stop the meter (before the pins close: its links lead to their fds); returns the
        bytes it relayed out and in. Idempotent."""
        meter, self._meter = self._meter, None
        if meter is None:
            return (0, 0)
        meter.stop()
        return (meter.relay.bytes_to_host, meter.relay.bytes_to_kernel)

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
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
