"""Moves the five channels' bytes between the host client's endpoints and the kernel's sockets.

The host client (jupyter_client, nbclient, ...) connects to the endpoints in its connection
file (tcp on 127.0.0.1, or ipc); the kernel in the container binds unix sockets in the
bind-mounted runtime dir and has no network at all. For each accepted host connection the
relay opens one connection to the kernel's socket and copies bytes both ways. ZeroMQ's wire
protocol (ZMTP) does not care that the two halves use different transports, so the relay
never parses messages and adds no serialisation cost. launcher.py owns one Relay per kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
#: How long an accepted host connection waits for the kernel to bind its socket.
KERNEL_SOCKET_WAIT = 300.0


class RelayError(OSError):
    """A host endpoint could not be bound, or a kernel socket is not what it should be."""


@dataclass(frozen=True)
class Endpoint:
    """One host-side endpoint from the client's connection file."""

    transport: str  # "tcp" or "ipc"
    address: str  # ip for tcp, socket path for ipc
    port: int = 0

    def describe(self) -> str:
        return f"{self.address}:{self.port}" if self.transport == "tcp" else self.address


@dataclass(frozen=True)
class Route:
    """A channel: the host endpoint clients use and the kernel's socket path on the host."""

    channel: str
    host: Endpoint
    kernel_socket: str


def host_endpoints(connection: dict[str, object]) -> dict[str, Endpoint]:
    """The five host endpoints named by a jupyter_client connection file."""
    transport = str(connection.get("transport", "tcp"))
    ip = str(connection.get("ip", "127.0.0.1"))
    out: dict[str, Endpoint] = {}
    for channel in CHANNELS:
        port = int(connection[f"{channel}_port"])  # type: ignore[call-overload]
        if transport == "ipc":
            out[channel] = Endpoint("ipc", f"{ip}-{port}")
        else:
            out[channel] = Endpoint("tcp", ip, port)
    return out


def connect_kernel_socket(path: str) -> socket.socket:
    """Connect to a socket the kernel created, refusing anything that is not a socket.

    The kernel can write in its runtime dir, so it could swap its socket for a symlink to
    a host socket (the engine's, say). Opening with O_PATH|O_NOFOLLOW and connecting
    through /proc/self/fd pins the very inode we checked.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise RelayError(errno.EPERM, f"{path} is not a socket (replaced by the kernel?)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{fd}")
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock
    finally:
        os.close(fd)


class BudgetExceededError(Exception):
    """The kernel sent more than a host-side budget allows; the message says which."""


class ZmtpMeter:
    """Follows ZMTP 3 framing in one direction and refuses oversized messages.

    Reads only the frame headers (flags byte and length), skipping bodies by count, so it
    costs nothing per byte. A hostile kernel holds the HMAC key and can send frames of any
    size; this stops one before its body reaches the host client's memory.
    """

    GREETING = 64

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.greeting_left = self.GREETING
        self.header = bytearray()
        self.body_left = 0
        self.message_size = 0

    def feed(self, data: bytes) -> None:
        """Account for `data`; raises BudgetExceededError before an oversized frame flows."""
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            if self.greeting_left:
                step = min(self.greeting_left, end - pos)
                self.greeting_left -= step
                pos += step
            elif self.body_left:
                step = min(self.body_left, end - pos)
                self.body_left -= step
                pos += step
            else:
                self.header.append(view[pos])
                pos += 1
                flags = self.header[0]
                need = 9 if flags & 0x02 else 2
                if len(self.header) < need:
                    continue
                size = int.from_bytes(self.header[1:need], "big")
                self.header.clear()
                if flags & 0x04:  # a command (READY, PING, SUBSCRIBE...), not a message
                    if size > self.max_message:
                        raise BudgetExceededError(f"a protocol command of {size} bytes")
                else:
                    self.message_size += size
                    if self.message_size > self.max_message:
                        raise BudgetExceededError(
                            f"a message of more than {self.max_message} bytes "
                            f"(at least {self.message_size})"
                        )
                    if not flags & 0x01:  # last frame of this message
                        self.message_size = 0
                self.body_left = size


class _Half(asyncio.Protocol):
    """One side of a relayed connection; writes what it receives to its peer."""

    def __init__(self, relay: Relay, route: Route, to_host: bool) -> None:
        self.relay = relay
        self.route = route
        self.to_host = to_host  # True for the kernel side: its data flows to the host
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.meter = ZmtpMeter(relay.max_message) if to_host else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.meter is not None:
            self.relay.bytes_to_host += len(data)
            try:
                self.meter.feed(data)
                if self.relay.bytes_to_host > self.relay.output_budget:
                    raise BudgetExceededError(
                        f"more than {self.relay.output_budget} bytes of output in all"
                    )
            except BudgetExceededError as exc:
                self.relay.violated(self.route.channel, str(exc))
                return
        else:
            self.relay.bytes_to_kernel += len(data)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.connections.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Flow control: when the peer cannot keep up, stop reading from this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _HostSide(_Half):
    """An accepted host connection; it waits (not reading) until the kernel side is open."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        self.relay.connections.add(self)
        task = asyncio.get_running_loop().create_task(self._open_kernel_side())
        self.relay.tasks.add(task)
        task.add_done_callback(self.relay.tasks.discard)

    async def _open_kernel_side(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KERNEL_SOCKET_WAIT
        delay = 0.001
        while True:
            if self.transport is None or self.transport.is_closing():
                return
            try:
                sock = connect_kernel_socket(self.route.kernel_socket)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline or self.relay.closed:
                    self.transport.close()
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.01)  # the kernel is usually a few ms away
            except OSError as exc:
                log.warning("%s: cannot reach the kernel's socket: %s", self.route.channel, exc)
                self.transport.close()
                return
        kernel_side = _Half(self.relay, self.route, to_host=True)
        # Linked before the connection exists: the kernel may send as soon as it is open.
        kernel_side.peer = self
        await loop.create_unix_connection(lambda: kernel_side, sock=sock)
        self.relay.connections.add(kernel_side)
        self.peer = kernel_side
        if self.transport.is_closing():
            kernel_side.transport.close()  # type: ignore[union-attr]
            return
        self.transport.resume_reading()
        log.debug("%s: host connection relayed to the kernel", self.route.channel)


class Relay:
    """All five channels of one kernel. launcher.py calls start() once and close() once."""

    def __init__(
        self,
        routes: list[Route],
        *,
        max_message: int = 64 << 20,
        output_budget: int = 1 << 30,
        on_violation: Callable[[str], None] | None = None,
    ) -> None:
        self.routes = routes
        self.max_message = max_message
        self.output_budget = output_budget
        self.on_violation = on_violation
        self.violation = ""
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: set[_Half] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.bytes_to_host = 0
        self.bytes_to_kernel = 0
        self.closed = False

    async def start(self, bind_timeout: float = 10.0) -> None:
        """Bind every host endpoint; retries briefly while a previous launcher lets go."""
        loop = asyncio.get_running_loop()
        for route in self.routes:
            factory = functools.partial(_HostSide, self, route, False)
            deadline = loop.time() + bind_timeout
            while True:
                try:
                    self.servers.append(await self._bind(route, factory))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or loop.time() > deadline:
                        raise RelayError(
                            exc.errno or errno.EIO,
                            f"cannot listen on {route.channel} endpoint "
                            f"{route.host.describe()}: {exc.strerror or exc}",
                        ) from exc
                    await asyncio.sleep(0.05)

    async def _bind(
        self, route: Route, factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        host = route.host
        if host.transport == "ipc":
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(host.address).st_mode):
                    os.unlink(host.address)  # left by a previous run of this kernel
            return await loop.create_unix_server(factory, host.address, backlog=64)
        return await loop.create_server(
            factory, host.address, host.port, backlog=64, reuse_address=True
        )

    def violated(self, channel: str, what: str) -> None:
        """A budget was exceeded: drop every connection and tell the launcher, once."""
        if not self.violation:
            self.violation = f"the kernel sent {what} on {channel}"
            log.error("budget exceeded: %s; stopping the kernel", self.violation)
            if self.on_violation is not None:
                self.on_violation(self.violation)
        for half in list(self.connections):
            if half.transport is not None:
                half.transport.close()

    async def close(self) -> None:
        """Stop listening and drop every relayed connection; idempotent."""
        if self.closed:
            return
        self.closed = True
        for server in self.servers:
            server.close()
        for half in list(self.connections):
            if half.transport is not None:
                half.transport.close()
        for task in list(self.tasks):
            task.cancel()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for route in self.routes:
            if route.host.transport == "ipc":
                with contextlib.suppress(OSError):
                    os.unlink(route.host.address)
