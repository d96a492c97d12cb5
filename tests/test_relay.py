"""relay.py without Docker: a unix-socket echo server stands in for the kernel's socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from jupyter_docker_kernel.endpoints import listen
from jupyter_docker_kernel.relay import (
    CHANNELS,
    Endpoint,
    Relay,
    RelayError,
    RelayThread,
    Route,
    connect_kernel_socket,
    host_endpoints,
)

#: Generous per-read timeout; each test finishes well under it when the relay works.
TIMEOUT = 2.0


def free_port() -> int:
    """A tcp port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    assert reasons == ["the kernel sent a message of more than 1000 bytes (at least 2000) on iopub"]
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
    assert reasons == ["the kernel sent more than 500 bytes of output in all on iopub"]


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
    what = "the kernel sent more than 500 bytes of output in all on iopub"
    assert reasons == [(what, meter.thread)]
    assert not meter.thread.is_alive()
    assert not os.path.exists(host.address)
