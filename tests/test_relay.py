"""relay.py without Docker: a unix-socket echo server stands in for the kernel's socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel.endpoints import listen
from jupyter_docker_kernel.relay import (
    CHANNELS,
    MAX_CONNECTIONS,
    Endpoint,
    ProtocolRefusedError,
    Relay,
    RelayError,
    RelayThread,
    Route,
    ZmtpMeter,
    connect_kernel_socket,
    host_endpoints,
)
from tests.kernels import free_port

#: Generous per-read timeout; each test finishes well under it when the relay works.
TIMEOUT = 2.0


def flipped(data: bytes) -> bytes:
    """What EchoKernel answers: every bit inverted, so an answer proves it reached the kernel."""
    return bytes(b ^ 0xFF for b in data)


#: A ZMTP 3 greeting (NULL mechanism): the relay meters the kernel's side as ZMTP.
GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32


def frame(body: bytes, flags: int = 0) -> bytes:
    """One ZMTP long frame (8-byte size), as a kernel's socket would send it."""
    return bytes([flags | 0x02]) + len(body).to_bytes(8, "big") + body


class EchoKernel:
    """A unix-socket server speaking ZMTP framing: a greeting, then each chunk it receives
    comes back inverted in one frame (so an answer proves it reached the kernel)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        writer.write(GREETING)
        with contextlib.suppress(ConnectionError):  # the relay closed its side first
            while data := await reader.read(4096):
                writer.write(frame(flipped(data)))
                await writer.drain()
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def with_relay(
    routes: list[Route], body: Callable[[Relay], Awaitable[None]], bind_timeout: float = 1.0
) -> None:
    """Start a relay, run body, always close it and let the loop finish closing transports."""
    relay = Relay(routes)
    try:
        await relay.start(bind_timeout=bind_timeout)
        await body(relay)
    finally:
        await relay.close()
        await asyncio.sleep(0.02)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    """Send payload, return exactly the echo's answer, then close the connection."""
    writer.write(payload)
    await writer.drain()
    answer = await asyncio.wait_for(read_answer(reader, len(payload)), TIMEOUT)
    writer.close()
    await writer.wait_closed()
    return answer


async def read_answer(reader: asyncio.StreamReader, size: int) -> bytes:
    """The echo's greeting, then frame bodies until `size` bytes of answer arrived."""
    assert await reader.readexactly(len(GREETING)) == GREETING
    answer = b""
    while len(answer) < size:
        flags = (await reader.readexactly(1))[0]
        length = int.from_bytes(await reader.readexactly(8 if flags & 0x02 else 1), "big")
        answer += await reader.readexactly(length)
    return answer


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_bytes_round_trip_through_the_relay(tmp_path: Path, transport: str) -> None:
    """Bytes a host client sends reach the kernel's socket, and its answer comes back."""
    kernel = EchoKernel(tmp_path / "k-shell")
    if transport == "tcp":
        host = Endpoint("tcp", "127.0.0.1", free_port())
    else:
        host = Endpoint("ipc", str(tmp_path / "host-shell"))
    payload = bytes(range(256)) * 64  # binary, and more than one read's worth
    answers: list[bytes] = []

    async def body(relay: Relay) -> None:
        if transport == "tcp":
            reader, writer = await asyncio.open_connection(host.address, host.port)
        else:
            reader, writer = await asyncio.open_unix_connection(host.address)
        answers.append(await exchange(reader, writer, payload))

    async def main() -> None:
        await kernel.start()
        try:
            await with_relay([Route("shell", host, str(kernel.path))], body)
        finally:
            await kernel.stop()

    asyncio.run(main())
    assert answers == [flipped(payload)]


def test_relay_counts_bytes_each_way(tmp_path: Path) -> None:
    """bytes_to_kernel and bytes_to_host count what crossed in each direction."""
    kernel = EchoKernel(tmp_path / "k-hb")
    host = Endpoint("ipc", str(tmp_path / "host-hb"))
    counts: list[int] = []

    async def body(relay: Relay) -> None:
        await exchange(*await asyncio.open_unix_connection(host.address), b"ping")
        counts.extend([relay.bytes_to_kernel, relay.bytes_to_host])

    async def main() -> None:
        await kernel.start()
        try:
            await with_relay([Route("hb", host, str(kernel.path))], body)
        finally:
            await kernel.stop()

    asyncio.run(main())
    assert counts == [4, len(GREETING) + len(frame(b"ping"))]


def test_host_connection_made_before_the_kernel_socket_exists_is_relayed(
    tmp_path: Path,
) -> None:
    """A client that connects (and sends) before the kernel binds is relayed once it does."""
    kernel = EchoKernel(tmp_path / "k-shell")
    host = Endpoint("tcp", "127.0.0.1", free_port())
    answers: list[bytes] = []

    async def body(relay: Relay) -> None:
        reader, writer = await asyncio.open_connection(host.address, host.port)
        writer.write(b"early")
        await writer.drain()
        await asyncio.sleep(0.3)
        assert not kernel.path.exists()
        await kernel.start()
        answers.append(await asyncio.wait_for(read_answer(reader, 5), TIMEOUT))
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        try:
            await with_relay([Route("shell", host, str(kernel.path))], body)
        finally:
            await kernel.stop()

    asyncio.run(main())
    assert answers == [flipped(b"early")]


def test_a_client_that_connects_before_the_relay_runs_waits_in_the_backlog(
    tmp_path: Path,
) -> None:
    """Endpoints bound early by the launcher (endpoints.listen) accept a client's connection
    before asyncio even runs; the relay serves it once it takes the socket over."""
    kernel = EchoKernel(tmp_path / "k-shell")
    host = Endpoint("tcp", "127.0.0.1", free_port())
    early = listen(host, "shell")
    client = socket.create_connection((host.address, host.port), timeout=TIMEOUT)
    client.sendall(b"before the relay")
    answers: list[bytes] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay([Route("shell", host, str(kernel.path))])
        try:
            await relay.start(listening={"shell": early})
            reader, writer = await asyncio.open_connection(sock=client)
            answers.append(await asyncio.wait_for(read_answer(reader, 16), TIMEOUT))
            writer.close()
            await writer.wait_closed()
        finally:
            await relay.close()
            await kernel.stop()
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert answers == [flipped(b"before the relay")]


def test_host_tcp_connections_on_early_bound_endpoints_have_nagle_off(tmp_path: Path) -> None:
    """Accepted host connections send small messages at once (TCP_NODELAY): with Nagle's
    algorithm on, each execute round trip waited for a delayed ACK (measured 3x slower)."""
    kernel = EchoKernel(tmp_path / "k-shell")
    host = Endpoint("tcp", "127.0.0.1", free_port())
    flags: list[int] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay([Route("shell", host, str(kernel.path))])
        try:
            await relay.start(listening={"shell": listen(host, "shell")})
            reader, writer = await asyncio.open_connection(host.address, host.port)
            await exchange(reader, writer, b"x")
            for half in relay.connections:
                sock = half.transport.get_extra_info("socket") if half.transport else None
                if sock is not None and sock.family == socket.AF_INET:
                    flags.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            await relay.close()
            await kernel.stop()
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert flags
    assert all(flags)


def test_connect_kernel_socket_refuses_a_symlink(tmp_path: Path) -> None:
    """A kernel socket replaced by a symlink to another socket raises RelayError, unconnected."""
    other = EchoKernel(tmp_path / "other.sock")
    link = tmp_path / "k-shell"
    link.symlink_to(other.path)
    refused: list[RelayError] = []

    async def main() -> None:
        await other.start()
        try:
            with pytest.raises(RelayError) as info:
                connect_kernel_socket(str(link))
            refused.append(info.value)
            await asyncio.sleep(0.05)
        finally:
            await other.stop()

    asyncio.run(main())
    assert "is not a socket" in str(refused[0])
    assert other.accepted == 0


def test_connect_kernel_socket_refuses_a_regular_file(tmp_path: Path) -> None:
    """A plain file where the kernel's socket should be raises RelayError."""
    path = tmp_path / "k-shell"
    path.write_text("")
    with pytest.raises(RelayError, match="is not a socket"):
        connect_kernel_socket(str(path))


def test_relay_drops_host_connection_when_kernel_socket_is_a_symlink(tmp_path: Path) -> None:
    """Via the relay, a symlinked kernel socket closes the host side; the target sees nothing."""
    other = EchoKernel(tmp_path / "other.sock")
    link = tmp_path / "k-shell"
    link.symlink_to(other.path)
    host = Endpoint("ipc", str(tmp_path / "host-shell"))
    got: list[bytes] = []

    async def body(relay: Relay) -> None:
        reader, writer = await asyncio.open_unix_connection(host.address)
        writer.write(b"secret")
        await writer.drain()
        try:
            got.append(await asyncio.wait_for(reader.read(), TIMEOUT))
        except ConnectionResetError:  # closed with "secret" unread: a reset, not an EOF
            got.append(b"")
        writer.close()
        with contextlib.suppress(ConnectionResetError):
            await writer.wait_closed()

    async def main() -> None:
        await other.start()
        try:
            await with_relay([Route("shell", host, str(link))], body)
        finally:
            await other.stop()

    asyncio.run(main())
    assert got == [b""]
    assert other.accepted == 0


# -- host_endpoints -------------------------------------------------------------------------


def test_host_endpoints_tcp() -> None:
    """A tcp connection file gives one ip:port endpoint per channel."""
    connection: dict[str, object] = {"transport": "tcp", "ip": "127.0.0.1"}
    connection.update({f"{c}_port": 5000 + i for i, c in enumerate(CHANNELS)})
    assert host_endpoints(connection) == {
        c: Endpoint("tcp", "127.0.0.1", 5000 + i) for i, c in enumerate(CHANNELS)
    }


def test_host_endpoints_ipc() -> None:
    """An ipc connection file gives jupyter_client's socket paths, IP-PORT, per channel."""
    connection: dict[str, object] = {"transport": "ipc", "ip": "/run/user/1/kernel-x"}
    connection.update({f"{c}_port": i + 1 for i, c in enumerate(CHANNELS)})
    assert host_endpoints(connection) == {
        c: Endpoint("ipc", f"/run/user/1/kernel-x-{i + 1}") for i, c in enumerate(CHANNELS)
    }


def test_host_endpoints_ipc_relative_to_the_clients_cwd() -> None:
    """A relative ipc ip ("kernel-ipc", a bare KernelManager's) is where the client's libzmq
    looks: its cwd, which the launcher passes; an absolute one is kept."""
    connection: dict[str, object] = {"transport": "ipc", "ip": "kernel-ipc"}
    connection.update({f"{c}_port": i + 1 for i, c in enumerate(CHANNELS)})
    endpoints = host_endpoints(connection, relative_to="/home/ada/course")
    assert endpoints["shell"] == Endpoint("ipc", "/home/ada/course/kernel-ipc-1")
    connection["ip"] = "/run/user/1/kernel-x"
    assert host_endpoints(connection, "/elsewhere")["hb"] == Endpoint(
        "ipc", "/run/user/1/kernel-x-5"
    )


def test_host_endpoints_default_to_tcp_on_localhost() -> None:
    """Without transport and ip the endpoints are tcp on 127.0.0.1, as in jupyter_client."""
    connection: dict[str, object] = {f"{c}_port": 1 for c in CHANNELS}
    assert set(host_endpoints(connection).values()) == {Endpoint("tcp", "127.0.0.1", 1)}


# -- close and bind -------------------------------------------------------------------------


def test_close_is_idempotent_and_removes_ipc_sockets(tmp_path: Path) -> None:
    """close() twice is fine; afterwards none of the ipc host socket files is left."""
    routes = [
        Route(c, Endpoint("ipc", str(tmp_path / f"host-{c}")), str(tmp_path / f"k-{c}"))
        for c in CHANNELS
    ]
    existed: list[bool] = []

    async def main() -> None:
        relay = Relay(routes)
        await relay.start()
        existed.extend(os.path.exists(r.host.address) for r in routes)
        await relay.close()
        await relay.close()
        assert relay.closed

    asyncio.run(main())
    assert existed == [True] * len(CHANNELS)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_start_replaces_a_stale_ipc_socket(tmp_path: Path) -> None:
    """A socket file left by a previous run at the host path is replaced, not an error."""
    path = tmp_path / "host-shell"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    host = Endpoint("ipc", str(path))

    async def body(relay: Relay) -> None:
        _, writer = await asyncio.open_unix_connection(str(path))
        writer.close()
        await writer.wait_closed()

    asyncio.run(with_relay([Route("shell", host, str(tmp_path / "k-shell"))], body))


def test_binding_a_busy_tcp_port_fails_after_the_bind_timeout() -> None:
    """A port someone listens on gives RelayError naming channel and port, after the timeout."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        route = Route("iopub", Endpoint("tcp", "127.0.0.1", port), "/nonexistent/k-iopub")
        started = time.monotonic()
        with pytest.raises(RelayError, match=re.escape(f"iopub endpoint 127.0.0.1:{port}")):
            asyncio.run(with_relay([route], lambda relay: asyncio.sleep(0), bind_timeout=0.3))
        assert time.monotonic() - started >= 0.3


def test_an_oversized_message_from_the_kernel_is_refused_before_it_flows(tmp_path: Path) -> None:
    """A frame larger than max_message closes the connection and reports the violation."""
    kernel = EchoKernel(tmp_path / "k-iopub")
    host = Endpoint("ipc", str(tmp_path / "host-iopub"))
    reasons: list[str] = []
    received: list[bytes] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay(
            [Route("iopub", host, str(kernel.path))], max_message=1000, on_violation=reasons.append
        )
        try:
            await relay.start()
            reader, writer = await asyncio.open_unix_connection(host.address)
            writer.write(b"x" * 2000)  # the echo answers with one 2000-byte frame
            await writer.drain()
            received.append(await asyncio.wait_for(reader.read(), TIMEOUT))
            writer.close()
        finally:
            await relay.close()
            await kernel.stop()

    asyncio.run(main())
    assert reasons == [
        "budget exceeded: the kernel sent a message of more than 1000 bytes (at least 2000) "
        "on iopub"
    ]
    assert len(received[0]) < 2000  # the greeting at most; never the oversized body


def test_output_beyond_the_budget_is_refused(tmp_path: Path) -> None:
    """More bytes from the kernel than output_budget ends the relay with a reason."""
    kernel = EchoKernel(tmp_path / "k-iopub")
    host = Endpoint("ipc", str(tmp_path / "host-iopub"))
    reasons: list[str] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay(
            [Route("iopub", host, str(kernel.path))],
            output_budget=500,
            on_violation=reasons.append,
        )
        try:
            await relay.start()
            reader, writer = await asyncio.open_unix_connection(host.address)
            with contextlib.suppress(ConnectionError):  # the relay cuts us off mid-way
                for _ in range(10):
                    writer.write(b"y" * 100)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
        finally:
            await relay.close()
            await kernel.stop()

    asyncio.run(main())
    assert reasons == [
        "budget exceeded: the kernel sent more than 500 bytes of output in all on iopub"
    ]


# -- Python 3.11.2 and older (Debian 12's system Python) ------------------------------------


def test_bytes_a_client_sends_before_the_kernel_side_opens_are_kept_on_old_pythons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pause_reading() in connection_made() does not hold (asyncio before 3.11.3: the
    transport registers its reader after connection_made regardless), a client's first
    bytes arrive before the kernel side exists; they must wait for it, not be dropped.
    Here the 3.11.2 transport is imitated, so the test means the same on every Python."""
    from asyncio import selector_events

    def add_reader_ignoring_pause(
        self: Any, fd: int, callback: Callable[..., None], *args: Any
    ) -> None:
        if not self._closing:  # 3.11.2 checks only this, not is_reading()
            self._loop._add_reader(fd, callback, *args)

    monkeypatch.setattr(
        selector_events._SelectorTransport,  # type: ignore[attr-defined]  # private, typeshed omits it
        "_add_reader",
        add_reader_ignoring_pause,
    )
    kernel = EchoKernel(tmp_path / "k-shell")
    host = Endpoint("tcp", "127.0.0.1", free_port())
    answers: list[bytes] = []

    async def body(relay: Relay) -> None:
        reader, writer = await asyncio.open_connection(host.address, host.port)
        writer.write(b"early")
        await writer.drain()
        await asyncio.sleep(0.2)
        await kernel.start()
        answers.append(await asyncio.wait_for(read_answer(reader, 5), TIMEOUT))
        writer.write(b"later")
        answers.append(await asyncio.wait_for(reader.readexactly(len(frame(b"later"))), TIMEOUT))
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        try:
            await with_relay([Route("shell", host, str(kernel.path))], body)
        finally:
            await kernel.stop()

    asyncio.run(main())
    assert answers == [flipped(b"early"), frame(flipped(b"later"))]


# -- ZMTP versions (issue 10, item 5) -------------------------------------------------------


class OldZmtpKernel:
    """A kernel that took over its socket and speaks ZMTP 2.0 (12-byte greeting, no
    commands), then sends one frame of `size` bytes to whoever connects."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = b"\xff" + (1).to_bytes(8, "big") + b"\x7f" + b"\x01" + b"\x01"  # rev 1, PUB
        identity = b"\x00\x00"
        writer.write(greeting + identity + frame(b"x" * self.size))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read()
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def test_a_kernel_speaking_zmtp_2_is_refused_before_its_oversized_frame_flows(
    tmp_path: Path,
) -> None:
    """The meter follows ZMTP 3 framing after a 64-byte greeting; a ZMTP 2.0 greeting is
    12 bytes, so metering it would misread the frames (an oversized one went through).
    The relay refuses it: the connection closes, the reason is reported, no body flows."""
    kernel = OldZmtpKernel(tmp_path / "k-iopub", 5000)
    host = Endpoint("ipc", str(tmp_path / "host-iopub"))
    reasons: list[str] = []
    received: list[bytes] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay(
            [Route("iopub", host, str(kernel.path))], max_message=1000, on_violation=reasons.append
        )
        try:
            await relay.start()
            reader, writer = await asyncio.open_unix_connection(host.address)
            writer.write(GREETING)
            with contextlib.suppress(ConnectionError):
                received.append(await asyncio.wait_for(reader.read(), TIMEOUT))
            writer.close()
        finally:
            await relay.close()
            await kernel.stop()

    asyncio.run(main())
    assert len(reasons) == 1
    assert reasons[0].startswith("protocol refused: the kernel sent a greeting of ZMTP revision 1")
    assert reasons[0].endswith("on iopub")
    assert b"x" * 100 not in b"".join(received)


@pytest.mark.parametrize(
    ("greeting", "refused"),
    [
        pytest.param(GREETING, False, id="zmtp-3.0"),
        pytest.param(GREETING[:10] + b"\x03\x01" + GREETING[12:], False, id="zmtp-3.1"),
        pytest.param(b"\xff" + bytes(8) + b"\x7f\x01\x01", True, id="zmtp-2.0"),
        pytest.param(b"\x05\x00hello", True, id="zmtp-1.0"),
        pytest.param(b"\xff" + bytes(8) + b"\x7e\x03", True, id="not-zmtp"),
    ],
)
def test_the_meter_accepts_zmtp_3_greetings_only(greeting: bytes, refused: bool) -> None:
    """Byte by byte (a greeting may arrive split), the meter refuses any peer whose
    greeting says ZMTP < 3, and lets ZMTP 3.x through."""
    meter = ZmtpMeter(1000)
    outcome = False
    try:
        for byte in greeting:
            meter.feed(bytes([byte]))
    except ProtocolRefusedError:
        outcome = True
    assert outcome is refused


# -- others on the host (issue 10, item 4) --------------------------------------------------


class PubKernel:
    """A kernel's PUB socket in miniature: a ZMTP 3 greeting to each subscriber, then every
    frame publish() is given goes to all subscribers connected at that moment."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(GREETING)
        with contextlib.suppress(ConnectionError):
            await reader.read()
        self.writers.remove(writer)
        writer.close()

    async def publish(self, body: bytes) -> None:
        for writer in list(self.writers):
            writer.write(frame(body))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()


async def drain(reader: asyncio.StreamReader) -> None:
    """Read a connection to its end, as a subscriber that keeps up would."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 16):
            pass


def test_iopub_copies_to_extra_subscribers_do_not_spend_the_output_budget(
    tmp_path: Path,
) -> None:
    """Anyone on the host may subscribe to iopub on 127.0.0.1 (no key needed). Each message
    the kernel publishes is copied to every subscriber; with 60 extra subscribers, the
    budget still counts it once, so 4 x 100 KB published stay within a 600 KB budget, and
    each subscriber (the victim's client too) gets all of it. A lone subscriber that has
    received the whole budget is still stopped, however it reconnects."""
    kernel = PubKernel(tmp_path / "k-iopub")
    host = Endpoint("tcp", "127.0.0.1", free_port())
    reasons: list[str] = []
    charged: list[int] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay(
            [Route("iopub", host, str(kernel.path))],
            output_budget=600_000,
            on_violation=reasons.append,
        )
        try:
            await relay.start()
            streams = [await asyncio.open_connection(host.address, host.port) for _ in range(61)]
            readers = [asyncio.create_task(drain(reader)) for reader, _ in streams]
            while len(kernel.writers) < 61:
                await asyncio.sleep(0.01)
            for _ in range(4):
                await kernel.publish(b"m" * 100_000)
            await asyncio.sleep(0.2)
            charged.append(relay.output_charged)
            assert not reasons
            for _, writer in streams[1:]:
                writer.close()
            # The victim reconnects and gets more: counted on top of what it had.
            streams[0][1].close()
            reader, writer = await asyncio.open_connection(host.address, host.port)
            readers.append(asyncio.create_task(drain(reader)))
            while len(kernel.writers) != 1:
                await asyncio.sleep(0.01)
            for _ in range(3):
                await kernel.publish(b"n" * 100_000)
            await asyncio.sleep(0.2)
            writer.close()
            for task in readers:
                task.cancel()
        finally:
            await relay.close()
            await kernel.stop()
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert 400_000 <= charged[0] < 410_000
    assert reasons == [
        "budget exceeded: the kernel sent more than 600000 bytes of output in all on iopub"
    ]


def test_hb_echoes_to_others_do_not_spend_the_output_budget(tmp_path: Path) -> None:
    """hb only echoes, and anyone may ping it: 200 KB of pings echoed back count (next to)
    nothing against a 100 KB budget."""
    kernel = EchoKernel(tmp_path / "k-hb")
    host = Endpoint("ipc", str(tmp_path / "host-hb"))
    reasons: list[str] = []
    got: list[int] = []

    async def main() -> None:
        await kernel.start()
        relay = Relay(
            [Route("hb", host, str(kernel.path))],
            output_budget=100_000,
            on_violation=reasons.append,
        )
        try:
            await relay.start()
            reader, writer = await asyncio.open_unix_connection(host.address)
            payload = b"p" * 200_000
            got.append(len(await exchange(reader, writer, payload)))
            got.append(relay.output_charged)
        finally:
            await relay.close()
            await kernel.stop()
            await asyncio.sleep(0.02)

    asyncio.run(main())
    assert not reasons
    assert got[0] == 200_000
    assert got[1] < 1000  # this echo frames each read it answers: 9 bytes a frame more


def test_connections_beyond_the_cap_are_closed_and_the_first_ones_keep_working(
    tmp_path: Path,
) -> None:
    """Anyone on the host can open connections to a tcp endpoint; each would become a
    connection to the kernel's socket, and about a thousand made its libzmq run out of
    descriptors. Past MAX_CONNECTIONS on a channel new ones are closed before the kernel
    sees them; a client connected first still gets its answers."""
    kernel = EchoKernel(tmp_path / "k-shell")
    host = Endpoint("tcp", "127.0.0.1", free_port())
    answers: list[bytes] = []
    accepted: list[int] = []

    async def body(relay: Relay) -> None:
        client = await asyncio.open_connection(host.address, host.port)
        address = (host.address, host.port)
        # In a thread: the loop must run to accept them.
        bare = await asyncio.to_thread(
            lambda: [socket.create_connection(address, timeout=TIMEOUT) for _ in range(300)]
        )
        try:
            await asyncio.sleep(0.5)
            accepted.append(kernel.accepted)
            answers.append(await exchange(*client, b"still here"))
        finally:
            for sock in bare:
                sock.close()

    async def main() -> None:
        await kernel.start()
        try:
            await with_relay([Route("shell", host, str(kernel.path))], body)
        finally:
            await kernel.stop()

    asyncio.run(main())
    assert answers == [flipped(b"still here")]
    assert accepted == [MAX_CONNECTIONS]


def test_ipc_endpoints_are_for_their_owner_only(tmp_path: Path) -> None:
    """With `transport: ipc` the host endpoints are socket files only their owner may
    connect to (mode 0600), whatever the umask: nobody else on the host reaches them."""
    old = os.umask(0)
    try:
        sock = listen(Endpoint("ipc", str(tmp_path / "host-iopub")), "iopub")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "host-iopub").st_mode) == 0o600
    finally:
        sock.close()


def test_a_relay_thread_meters_beside_the_callers_loop_and_stops_cleanly(tmp_path: Path) -> None:
    """RelayThread, the provisioner's meter: the relay serves from its own thread while the
    caller's loop runs, connects through the `connect` it was given, reports a violation
    from its thread, and stop() ends the thread and removes the endpoint."""
    kernel = EchoKernel(tmp_path / "k-iopub")
    host = Endpoint("ipc", str(tmp_path / "host-iopub"))
    reasons: list[tuple[str, threading.Thread]] = []
    connected: list[str] = []

    def connect(path: str) -> socket.socket:
        connected.append(path)
        return connect_kernel_socket(path)

    relay = Relay(
        [Route("iopub", host, str(kernel.path))],
        output_budget=500,
        on_violation=lambda what: reasons.append((what, threading.current_thread())),
        connect=connect,
    )
    meter = RelayThread(relay, {"iopub": listen(host, "iopub")})

    async def main() -> None:
        await kernel.start()
        meter.start()
        try:
            reader, writer = await asyncio.open_unix_connection(host.address)
            writer.write(b"hello")
            answer = b""
            while flipped(b"hello") not in answer:
                answer += await asyncio.wait_for(reader.read(100), TIMEOUT)
            with contextlib.suppress(ConnectionError):  # the relay cuts us off mid-way
                for _ in range(10):
                    writer.write(b"y" * 100)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
        finally:
            await asyncio.to_thread(meter.stop)
            await kernel.stop()

    asyncio.run(main())
    assert connected == [str(kernel.path)]
    what = "budget exceeded: the kernel sent more than 500 bytes of output in all on iopub"
    assert reasons == [(what, meter.thread)]
    assert not meter.thread.is_alive()
    assert not os.path.exists(host.address)
