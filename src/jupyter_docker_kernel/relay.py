"""Moves the five channels' bytes between the host client's endpoints and the kernel's sockets.

The host client (jupyter_client, nbclient, ...) connects to the endpoints in its connection
file (tcp on 127.0.0.1, or ipc); the kernel in the container binds unix sockets in the
bind-mounted runtime dir and has no network at all. For each accepted host connection the
relay opens one connection to the kernel's socket and copies bytes both ways. ZeroMQ's wire
protocol (ZMTP) does not care that the two halves use different transports, so the relay
never parses messages and adds no serialisation cost. launcher.py owns one Relay per kernel
and runs it on its own event loop; provisioner.py runs one inside the Jupyter client's
process, on a loop of its own in a thread (RelayThread), so both paths share the budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable

from jupyter_docker_kernel.endpoints import (
    CHANNELS,
    Endpoint,
    RelayError,
    Route,
    connect_kernel_socket,
    host_endpoints,
    listen,
)

__all__ = [
    "CHANNELS",
    "BudgetExceededError",
    "Endpoint",
    "Relay",
    "RelayError",
    "RelayThread",
    "Route",
    "ZmtpMeter",
    "connect_kernel_socket",
    "host_endpoints",
]

log = logging.getLogger(__name__)

#: How long an accepted host connection waits for the kernel to bind its socket.
KERNEL_SOCKET_WAIT = 300.0


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
                sock = self.relay.connect(self.route.kernel_socket)
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
        connect: Callable[[str], socket.socket] = connect_kernel_socket,
    ) -> None:
        self.routes = routes
        #: Opens a route's kernel socket (non-blocking); raises FileNotFoundError or
        #: ConnectionRefusedError while the kernel has not bound it yet. The provisioner
        #: passes one that connects through its pinned links (see SocketPins).
        self.connect = connect
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

    async def start(
        self, bind_timeout: float = 10.0, listening: dict[str, socket.socket] | None = None
    ) -> None:
        """Serve every host endpoint: on the sockets in `listening` (bound early by the
        launcher, keyed by channel), else bound now, retrying briefly while a previous
        launcher lets go."""
        loop = asyncio.get_running_loop()
        listening = listening or {}
        for route in self.routes:
            factory = functools.partial(_HostSide, self, route, False)
            sock = listening.get(route.channel)
            if sock is None:
                sock = await loop.run_in_executor(
                    None, listen, route.host, route.channel, bind_timeout
                )
            if route.host.transport == "ipc":
                server = await loop.create_unix_server(factory, sock=sock)
            else:
                server = await loop.create_server(factory, sock=sock)
            self.servers.append(server)

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


class RelayThread:
    """A Relay on an event loop of its own, in a daemon thread.

    For a host process whose own event loop is not ours to use: the provisioner runs
    inside the Jupyter client (Jupyter Server, nbclient, nbgrader), whose loop may be busy
    or not running at all between a blocking client's calls. It calls start() once the
    container is started and stop() once it has exited; the relay's on_violation then runs
    in this thread, so it must not block (hand engine calls to another thread).
    """

    def __init__(self, relay: Relay, listening: dict[str, socket.socket]) -> None:
        self.relay = relay
        self.listening = listening
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="jupyter-docker-kernel-relay")
        self.thread.daemon = True  # never keeps a client process alive on its own
        self.serving = threading.Event()
        self.error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Serve the listening sockets; returns once they are served, raises if they are not."""
        self.thread.start()
        if not self.serving.wait(timeout):
            raise RelayError(f"the relay did not start serving within {timeout:g} s")
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 5.0) -> None:
        """Close the relay (its endpoints and connections) and end the thread; idempotent."""
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed between check and call
                self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            try:
                self.loop.run_until_complete(self.relay.start(listening=self.listening))
            except BaseException as exc:  # handed to start()'s caller, not lost in a thread
                self.error = exc
                for sock in self.listening.values():
                    sock.close()
                return
            finally:
                self.serving.set()
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.relay.close())
            # Transports close and cancelled tasks end on the loop's next iterations.
            self.loop.run_until_complete(asyncio.sleep(0.01))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
