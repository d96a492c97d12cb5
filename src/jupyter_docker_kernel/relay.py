"""Moves the five channels' bytes between the host client's endpoints and the kernel's sockets.

The host client (jupyter_client, nbclient, ...) connects to the endpoints in its connection
file (tcp on 127.0.0.1, or ipc); the kernel in the container binds unix sockets in the
bind-mounted runtime dir and has no network at all. For each accepted host connection the
relay opens one connection to the kernel's socket and copies bytes both ways. ZeroMQ's wire
protocol (ZMTP) does not care that the two halves use different transports, so the relay
never parses messages and adds no serialisation cost. launcher.py owns one Relay per kernel
and runs it on its own event loop; provisioner.py runs one inside the Jupyter client's
process, on a loop of its own in a thread (RelayThread), so both paths share the budgets.

After a kill, Relay.announce() publishes a few messages (notice.py's kill notice) to every
iopub subscriber itself, speaking ZMTP's PUB side on a fresh connection.
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
from typing import Any

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
    "ProtocolRefusedError",
    "Relay",
    "RelayError",
    "RelayThread",
    "Route",
    "ZmtpMeter",
    "connect_kernel_socket",
    "host_endpoints",
    "zmtp_message",
]

log = logging.getLogger(__name__)

#: How long an accepted host connection waits for the kernel to bind its socket.
KERNEL_SOCKET_WAIT = 300.0
#: Live host connections per channel; one more is closed at once. Every Jupyter client holds
#: one per channel: a JupyterLab notebook or console through the server (which adds one
#: iopub to watch activity and a short-lived shell for kernel_info), jupyter console,
#: nbclient. 64 is dozens of tabs and collaborators on one kernel, while 5 x 64 relayed
#: connections stay far below the kernel's 1024 descriptors (`nofile`) and ours: a local
#: user opening a thousand bare connections on 127.0.0.1 used to make the kernel's libzmq
#: run out of descriptors and abort.
MAX_CONNECTIONS = 64


def warn_refused(logger: logging.Logger, channel: str) -> None:
    """The one warning when a channel's host connections went over MAX_CONNECTIONS: the
    relay's and kube_proxy's (the same cap, the same words)."""
    logger.warning(
        "%s: more than %d connections at once; closing new ones. A Jupyter client "
        "holds one per channel: someone else on this host may be connecting to the "
        "kernel's tcp ports (use --KernelManager.transport=ipc, see docs/security.md)",
        channel,
        MAX_CONNECTIONS,
    )


#: What a host connection may send before its kernel side is open. A ZMTP peer sends its
#: 10-byte signature and then waits for ours, so more than this is not a Jupyter client.
PENDING_LIMIT = 16 << 10
#: How long announce() waits for the iopub subscribers the dead kernel left to reconnect
#: (libzmq reconnects after 100 ms) and for what it wrote them to leave.
ANNOUNCE_WAIT = 1.5
#: The greeting of a ZMTP 3.0 peer with the NULL mechanism (signature, version, mechanism
#: padded to 20 bytes, as-server 0, filler), then its READY command as a PUB socket.
PUB_GREETING = (
    b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
)
PUB_GREETING_SIZE = len(PUB_GREETING)
_READY = b"\x05READY\x0bSocket-Type" + (3).to_bytes(4, "big") + b"PUB"
PUB_READY = bytes([0x04, len(_READY)]) + _READY
#: On hb the kernel only echoes: what it sends beyond what it was sent (plus this much for
#: its own greeting and READY command) counts against the output budget.
ECHO_SLACK = 256


def zmtp_message(frames: list[bytes]) -> bytes:
    """One multipart message in ZMTP 3 framing: per frame a flags byte (MORE on all but the
    last, LONG for bodies over 255 bytes), its size (1 or 8 bytes) and its body."""
    out = bytearray()
    for index, body in enumerate(frames):
        more = 0x01 if index < len(frames) - 1 else 0
        if len(body) > 255:
            out += bytes([more | 0x02]) + len(body).to_bytes(8, "big")
        else:
            out += bytes([more, len(body)])
        out += body
    return bytes(out)


class BudgetExceededError(Exception):
    """The kernel sent more than a host-side budget allows; the message says which.
    `label` starts the exit reason the launcher logs."""

    label = "budget exceeded"


class ProtocolRefusedError(BudgetExceededError):
    """The kernel's socket speaks a protocol the relay cannot meter (not ZMTP 3)."""

    label = "protocol refused"


class ZmtpMeter:
    """Follows ZMTP 3 framing in one direction and refuses oversized messages.

    Reads only the frame headers (flags byte and length), skipping bodies by count, so it
    costs nothing per byte. A hostile kernel holds the HMAC key and can send frames of any
    size; this stops one before its body reaches the host client's memory. The framing it
    follows starts after a 64-byte ZMTP 3 greeting; an older peer's greeting is shorter and
    its framing differs, so it is refused (`--max-message` could not be enforced on it).
    """

    GREETING = 64
    #: Signature (0xFF, 8 bytes, 0x7F) and the major version: enough to tell ZMTP 3 from older.
    VERSION_AT = 10

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.greeting_left = self.GREETING
        self.signature = bytearray()
        self.header = bytearray()
        self.body_left = 0
        self.command = False
        self.message_size = 0

    def feed(self, data: bytes) -> int:
        """Account for `data`; returns how many of its bytes belong to messages (frame
        headers and bodies, not the greeting or ZMTP commands such as READY or PONG, which
        the client's libzmq consumes). Raises BudgetExceededError before an oversized frame
        flows, ProtocolRefusedError on a greeting older than ZMTP 3."""
        view = memoryview(data)
        pos = 0
        end = len(view)
        counted = 0
        while pos < end:
            if self.greeting_left:
                step = min(self.greeting_left, end - pos)
                if len(self.signature) <= self.VERSION_AT:
                    self._check_greeting(view[pos : pos + step])
                self.greeting_left -= step
                pos += step
            elif self.body_left:
                step = min(self.body_left, end - pos)
                self.body_left -= step
                pos += step
                if not self.command:
                    counted += step
            else:
                self.header.append(view[pos])
                pos += 1
                flags = self.header[0]
                need = 9 if flags & 0x02 else 2
                if len(self.header) < need:
                    continue
                size = int.from_bytes(self.header[1:need], "big")
                self.header.clear()
                self.command = bool(flags & 0x04)
                if self.command:  # READY, PING, SUBSCRIBE...: not a message
                    if size > self.max_message:
                        raise BudgetExceededError(f"a protocol command of {size} bytes")
                else:
                    counted += need
                    self.message_size += size
                    if self.message_size > self.max_message:
                        raise BudgetExceededError(
                            f"a message of more than {self.max_message} bytes "
                            f"(at least {self.message_size})"
                        )
                    if not flags & 0x01:  # last frame of this message
                        self.message_size = 0
                self.body_left = size
        return counted

    def _check_greeting(self, chunk: memoryview) -> None:
        """Refuse a peer that is not ZMTP 3 as soon as its major version byte is in."""
        self.signature += chunk[: self.VERSION_AT + 1 - len(self.signature)]
        sig = self.signature
        if sig[0] != 0xFF or (len(sig) > 9 and not sig[9] & 0x01):
            raise ProtocolRefusedError(
                "a greeting that is not ZMTP 3 (ZMTP 1.0, or not ZMTP at all); only ZMTP 3 "
                "can be metered for --max-message"
            )
        if len(sig) > self.VERSION_AT and sig[self.VERSION_AT] < 3:
            raise ProtocolRefusedError(
                f"a greeting of ZMTP revision {sig[self.VERSION_AT]} (ZMTP 2.0 sends 1); only "
                "ZMTP 3 can be metered for --max-message"
            )


class _Half(asyncio.Protocol):
    """One side of a relayed connection; writes what it receives to its peer.

    What arrives before the peer's connection is open is kept (up to PENDING_LIMIT) and
    written once it is: on Python 3.11.2 (Debian 12's) and older, pause_reading() called
    from connection_made() does not hold, so a client's first bytes arrive anyway.
    """

    def __init__(self, relay: Relay, route: Route, to_host: bool) -> None:
        self.relay = relay
        self.route = route
        self.to_host = to_host  # True for the kernel side: its data flows to the host
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.meter = ZmtpMeter(relay.max_message) if to_host else None
        self.received = 0  # raw bytes in, on this connection
        self.sent = 0  # message bytes the kernel sent on this connection (kernel side only)
        self.base = 0  # the channel's charge when this connection opened (kernel side only)
        # A client's shell connection: the last chunk naming execute_request is kept (a
        # reference, no copy or parse) for the kill notice's parent header; the chunk
        # before it too, in case the message's start was there.
        self.watch = route.channel == "shell" and not to_host
        self.previous = b""
        self.greeted = False  # announce(): this subscriber got our greeting as a PUB

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.meter is not None:
            self.relay.bytes_to_host += len(data)
            try:
                self.relay.charge(self, self.meter.feed(data))
            except BudgetExceededError as exc:
                self.relay.violated(self.route.channel, exc)
                return
        else:
            self.relay.bytes_to_kernel += len(data)
            if self.watch:
                if b"execute_request" in data:
                    self.relay.requests = (self.previous, data)
                self.previous = data
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT and self.transport is not None:
            log.debug("%s: peer sent too much before the relay was open", self.route.channel)
            self.transport.close()
        elif self.greeted:
            self.relay.tell(self)

    def linked(self, peer: _Half) -> None:
        """The peer's connection is open: write what waited for it, then relay directly."""
        self.peer = peer
        if self.pending and peer.transport is not None:
            peer.transport.write(b"".join(self.pending))
        self.pending.clear()
        self.pending_size = 0

    def eof_received(self) -> bool:
        if self.to_host and self.route.channel == "iopub":
            self.relay.iopub_lost += 1  # the kernel went: its subscriber will reconnect
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
    """An accepted host connection; it opens its kernel side, at most MAX_CONNECTIONS per
    channel (one more is closed at once, before the kernel sees it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        hosts = self.relay.hosts[self.route.channel]
        if len(hosts) >= MAX_CONNECTIONS:
            self.relay.refused(self.route.channel)
            self.transport.close()
            return
        hosts.add(self)
        # What the client sends meanwhile waits in the socket (or, where this does not hold
        # in connection_made, in self.pending).
        self.transport.pause_reading()
        self.relay.connections.add(self)
        if self.relay.announcement and self.route.channel == "iopub":
            self.relay.serve_announcement(self)  # the kernel is gone: no kernel side
            return
        task = asyncio.get_running_loop().create_task(self._open_kernel_side())
        self.relay.tasks.add(task)
        task.add_done_callback(self.relay.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.hosts[self.route.channel].discard(self)
        super().connection_lost(exc)

    async def _open_kernel_side(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KERNEL_SOCKET_WAIT
        delay = 0.001
        while True:
            if self.transport is None or self.transport.is_closing():
                return
            if self.relay.violation or self.relay.announcement:
                return  # the kernel is being stopped: nothing more reaches it
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
        kernel_side.base = self.relay.charged[self.route.channel]
        # Linked before the connection exists: the kernel may send as soon as it is open.
        kernel_side.peer = self
        await loop.create_unix_connection(lambda: kernel_side, sock=sock)
        self.relay.connections.add(kernel_side)
        self.linked(kernel_side)
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
        self.hosts: dict[str, set[_Half]] = {route.channel: set() for route in routes}
        self.tasks: set[asyncio.Task[None]] = set()
        #: Raw bytes relayed each way, every copy and the ZMTP handshakes included (the log).
        self.bytes_to_host = 0
        self.bytes_to_kernel = 0
        #: Message bytes counted against output_budget, per channel (see charge()).
        self.charged: dict[str, int] = {route.channel: 0 for route in routes}
        self.output_charged = 0  # their sum
        self.refusals = 0
        self.closed = False
        #: The last shell chunks that named execute_request (see notice.execute_header).
        self.requests: tuple[bytes, ...] = ()
        #: After a kill: what announce() writes to each iopub subscriber.
        self.announcement = b""
        self.announced: list[asyncio.Transport] = []
        self.iopub_lost = 0  # subscribers cut off by the kernel's end or a violation

    def charge(self, kernel_side: _Half, sent: int) -> None:
        """Count `sent` message bytes the kernel sent on one connection; raise
        BudgetExceededError when the kernel's output passes the budget.

        Counted per kernel socket, as bytes the kernel sent once, so that nobody else can
        spend a kernel's budget: anyone on the host can open connections to a tcp endpoint
        without the key. iopub is a PUB socket that sends each message to every subscriber,
        so its charge is a high-water mark: each connection stands at the charge it opened
        with plus what it has received since, and the channel's charge is the highest such
        stand. Copies to concurrent subscribers count once, and one client gets at most the
        budget however often it reconnects. hb only echoes, so only what it sends beyond
        what it was sent counts. shell, control and stdin answer signed requests only, to
        the client that sent them: everything counts.
        """
        channel = kernel_side.route.channel
        before = kernel_side.sent
        kernel_side.sent += sent
        if channel == "iopub":
            more = max(0, kernel_side.base + kernel_side.sent - self.charged[channel])
        elif channel == "hb":
            peer = kernel_side.peer
            echoed = (peer.received if peer is not None else 0) + ECHO_SLACK
            more = max(0, kernel_side.sent - echoed) - max(0, before - echoed)
        else:
            more = sent
        if more:
            self.charged[channel] += more
            self.output_charged += more
            if self.output_charged > self.output_budget:
                raise BudgetExceededError(f"more than {self.output_budget} bytes of output in all")

    def refused(self, channel: str) -> None:
        """A host connection over MAX_CONNECTIONS was closed: warn once, then count."""
        self.refusals += 1
        if self.refusals == 1:
            warn_refused(log, channel)

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

    def violated(self, channel: str, exc: BudgetExceededError) -> None:
        """The kernel exceeded a budget or spoke an unmeterable protocol: drop every
        connection and tell the launcher, once."""
        if not self.violation:
            self.violation = f"{exc.label}: the kernel sent {exc} on {channel}"
            log.error("%s; stopping the kernel", self.violation)
            if self.on_violation is not None:
                self.on_violation(self.violation)
        for half in list(self.connections):
            if half.transport is not None:
                if half.route.channel == "iopub" and not half.to_host and half.peer:
                    self.iopub_lost += 1
                half.transport.close()

    def last_execute(self) -> dict[str, Any] | None:
        """The header of the last execute_request a client sent, or None (parsed now)."""
        from jupyter_docker_kernel.notice import execute_header

        return execute_header(self.requests)

    async def announce(self, messages: list[list[bytes]], wait: float = ANNOUNCE_WAIT) -> int:
        """Publish `messages` (frames, topic first, as notice.notice_messages builds them)
        to every iopub subscriber; returns how many got them. Called once the kernel has
        ended (the launcher after its container exits; the provisioner likewise), before
        close(). Nothing reaches the kernel from then on.

        The relay never parses the kernel's stream, which a kill may have cut in the middle
        of a message, so the messages go on fresh connections: a subscriber still relayed
        is closed (its libzmq drops a half-received message and reconnects), and each
        subscriber that connects, or waits for a kernel that is gone, gets our own ZMTP
        greeting as a PUB socket and, once its greeting and READY are in, the messages
        (libzmq drops a connection whose first message comes with our READY, before it
        has sent its own). Waits up to `wait` seconds for the subscribers the kernel's end
        cut off to come back, and for the bytes to leave.
        """
        loop = asyncio.get_running_loop()
        self.announcement = b"".join(zmtp_message(frames) for frames in messages)
        for half in list(self.hosts.get("iopub", ())):
            if half.peer is None:
                self.serve_announcement(half)
            elif half.transport is not None:
                self.iopub_lost += 1
                half.transport.close()
        deadline = loop.time() + wait
        while len(self.announced) < self.iopub_lost and loop.time() < deadline:
            await asyncio.sleep(0.01)
        while loop.time() < deadline and any(
            t.get_write_buffer_size() and not t.is_closing() for t in self.announced
        ):
            await asyncio.sleep(0.01)
        return len(self.announced)

    def serve_announcement(self, half: _Half) -> None:
        """Greet one iopub subscriber as a PUB socket; tell() follows with the messages."""
        if half.transport is None or half.transport.is_closing() or half.peer is not None:
            return
        if half.greeted:
            return
        half.greeted = True
        half.watch = False
        half.transport.write(PUB_GREETING + PUB_READY)
        half.transport.resume_reading()
        self.tell(half)

    def tell(self, half: _Half) -> None:
        """Write the announcement to a greeted subscriber once its greeting and READY
        command are in (what it sends is otherwise dropped: subscriptions, pings)."""
        data = b"".join(half.pending)
        if half.transport is None or half.transport in self.announced:
            half.pending.clear()
            half.pending_size = 0
            return
        size = PUB_GREETING_SIZE + 2
        if len(data) >= PUB_GREETING_SIZE + 9 and data[PUB_GREETING_SIZE] & 0x02:
            size = PUB_GREETING_SIZE + 9
            size += int.from_bytes(data[PUB_GREETING_SIZE + 1 : size], "big")
        elif len(data) >= size:
            size += data[PUB_GREETING_SIZE + 1]
        if len(data) < size:
            return
        half.pending.clear()
        half.pending_size = 0
        self.announced.append(half.transport)
        half.transport.write(self.announcement)

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

    def announce(self, messages: list[list[bytes]], wait: float = ANNOUNCE_WAIT) -> int:
        """Relay.announce() on the relay's loop, from another thread (blocks up to `wait`
        and a little more); 0 when the relay no longer runs. The provisioner calls it once
        the container has exited, before stop()."""
        if not self.thread.is_alive():
            return 0
        future = asyncio.run_coroutine_threadsafe(self.relay.announce(messages, wait), self.loop)
        return future.result(wait + 5.0)

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
