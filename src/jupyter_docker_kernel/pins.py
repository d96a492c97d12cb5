"""The provisioner's host-side sockets: the client's endpoints and the pinned kernel sockets.

DockerProvisioner (provisioner.py) serves the client's connection info from a host-only
dir of the kernel's (RunDir.client) with a relay on a thread of the client's own process
(start_meter), which reaches the kernel's ipc sockets in the bind-mounted socket dir only
through links to the very inodes it checked (SocketPins, RunDir.pins). The argv launcher
needs none of this: it binds the client's own endpoints and relays from its process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.endpoints import CHANNELS, Endpoint, Route, listen
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.relay import Relay, RelayThread
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

log = logging.getLogger("jupyter_docker_kernel.provisioner")


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
