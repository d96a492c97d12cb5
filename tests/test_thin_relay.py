"""The compiled client's relay (thin_relay.c, issue 17) holds relay.py's rules.

No docker: the handed-over client of tests/test_thin_handover.py (a fake helper, engine
and finish), with one channel's kernel stand-in replaced by a scripted one. The meter's
verdicts are compared with relay.ZmtpMeter's on the same bytes (the Python relay stays
for the provisioner, nodes and pods: two copies of one rule, held together here).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_docker_kernel import relay
from tests.test_thin_handover import (
    HELLO,
    Session,
    UnixServer,
    binary,
    fake_finish,
    session_of,
    talk,
    wait_until,
)

__all__ = ["binary", "fake_finish", "session_of"]  # fixtures, imported for pytest

SHELL, IOPUB, STDIN, CONTROL, HB = range(5)


class ScriptedKernel(UnixServer):
    """A kernel socket in place of a stand-in: `serve(conn)` runs for each connection."""

    def __init__(self, path: Path, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        super().__init__(str(path))

    def handle(self, conn: socket.socket) -> None:
        self.serve(conn)


def replace_kernel(
    s: Session, channel: int, serve: Callable[[socket.socket], None] | None
) -> ScriptedKernel | None:
    """Channel's kernel socket becomes a scripted one (None: no socket at all)."""
    s.kernels[channel].listener.close()
    path = s.sockets / s.names[channel]
    path.unlink()
    return ScriptedKernel(path, serve) if serve else None


def sends(data: bytes) -> Callable[[socket.socket], None]:
    """A kernel that sends data, then waits for the host to go."""

    def serve(conn: socket.socket) -> None:
        conn.sendall(data)
        while conn.recv(65536):
            pass

    return serve


def python_verdict(data: bytes, max_message: int, channel: str) -> str:
    """relay.py's violation text for a kernel that sends data ("" when none)."""
    try:
        relay.ZmtpMeter(max_message).feed(data)
    except relay.BudgetExceededError as exc:
        return f"{exc.label}: the kernel sent {exc} on {channel}"
    return ""


def end_after(s: Session, port: int, payload: bytes = b"") -> dict[str, str]:
    """Talk once on port (reading what comes for 1 s), end the container, the end's fields."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        conn.settimeout(1)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
    if not s.engine.calls:  # no violation removed it: the container ends by itself
        s.container_exits()
    return s.finish()[3]


def long_frame(size: int, more: bool = False) -> bytes:
    return bytes([0x02 | int(more)]) + size.to_bytes(8, "big")


METER_CASES = {
    "a message under the limit": HELLO + b"\x00\x05hello",
    "one frame over the limit": HELLO + b"\x00\x64" + b"y" * 100,
    "frames of one message over the limit together": HELLO
    + (b"\x01\x1e" + b"y" * 30) * 2
    + b"\x00\x1e"
    + b"y" * 30,
    "frames of separate messages each under it": HELLO + (b"\x00\x1e" + b"y" * 30) * 3,
    "a frame that claims 2**64 - 1 bytes": HELLO + long_frame(2**64 - 1),
    "a message whose sizes wrap a 64-bit sum": HELLO
    + long_frame(40, True)
    + b"z" * 40
    + long_frame(2**64 - 20),
    "a command over the limit": HELLO + b"\x04\x3c" + b"c" * 60,
    "a ZMTP 2.0 greeting": b"\xff" + bytes(8) + b"\x7f\x01\x05",
    "no ZMTP at all": b"GET / HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("case", list(METER_CASES))
def test_the_c_meter_refuses_what_zmtp_meter_refuses_in_the_same_words(
    session_of: Callable[..., Session], case: str
) -> None:
    data = METER_CASES[case]
    s = session_of(max_message="50")
    replace_kernel(s, IOPUB, sends(data))
    end = end_after(s, s.ports[IOPUB])
    assert end["reason"] == python_verdict(data, 50, "iopub")
    assert end["stopping"] == ("1" if end["reason"] else "0")


def test_a_message_under_the_limit_reaches_the_host_intact_and_is_charged(
    session_of: Callable[..., Session],
) -> None:
    s = session_of(max_message="50")
    replace_kernel(s, IOPUB, sends(HELLO + b"\x00\x05hello"))
    assert talk(s.ports[IOPUB], b"", len(HELLO) + 7) == HELLO + b"\x00\x05hello"
    s.container_exits()
    end = s.finish()[3]
    assert (end["reason"], end["output_charged"]) == ("", "7")  # header and body, not HELLO
    assert int(end["bytes_to_host"]) == len(HELLO) + 7


def test_output_past_the_budget_stops_the_kernel_with_the_relays_words(
    session_of: Callable[..., Session],
) -> None:
    s = session_of(output_budget="500")
    replace_kernel(s, IOPUB, sends(HELLO + (b"\x00\xc8" + b"o" * 200) * 3))
    end = end_after(s, s.ports[IOPUB])
    assert end["reason"] == (
        "budget exceeded: the kernel sent more than 500 bytes of output in all on iopub"
    )


def test_heartbeat_echoes_are_not_charged(session_of: Callable[..., Session]) -> None:
    s = session_of(output_budget="500")  # the stand-in echoes each chunk as one frame
    with socket.create_connection(("127.0.0.1", s.ports[HB]), timeout=10) as conn:
        got = b""
        for sent in range(1, 51):
            conn.sendall(b"\xee" * 200)  # 0xee: never a frame size of the echo's (<= 200)
            while got.count(b"\xee") < 200 * sent:
                got += conn.recv(65536)
    s.container_exits()
    end = s.finish()[3]
    assert end["reason"] == ""
    assert int(end["output_charged"]) <= relay.ECHO_SLACK  # 10000 echoed, not charged


def test_concurrent_iopub_subscribers_are_charged_once(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    go = threading.Event()

    def publish(conn: socket.socket) -> None:
        conn.sendall(HELLO)
        go.wait(10)
        conn.sendall(b"\x00\x64" + b"p" * 100)
        while conn.recv(65536):
            pass

    replace_kernel(s, IOPUB, publish)
    subscribers = [socket.create_connection(("127.0.0.1", s.ports[IOPUB])) for _ in range(3)]
    time.sleep(0.3)  # all three relayed before the kernel publishes
    go.set()
    for sub in subscribers:
        sub.settimeout(5)
        got = b""
        while len(got) < len(HELLO) + 102:
            got += sub.recv(65536)
        sub.close()
    s.container_exits()
    end = s.finish()[3]
    assert end["output_charged"] == "102"  # once, not three times


def test_a_connection_over_the_cap_is_closed_at_once_and_warned_about_once(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    held = [socket.create_connection(("127.0.0.1", s.ports[SHELL])) for _ in range(64)]
    for conn in held:  # each relayed: the stand-in's greeting arrives
        conn.settimeout(5)
        assert conn.recv(len(HELLO), socket.MSG_WAITALL) == HELLO
    over = [socket.create_connection(("127.0.0.1", s.ports[SHELL])) for _ in range(2)]
    for conn in over:
        conn.settimeout(5)
        assert conn.recv(1) == b""  # closed, never relayed
        conn.close()
    held.pop().close()
    time.sleep(0.2)  # the freed slot serves a new connection again
    assert talk(s.ports[SHELL], b"again", len(HELLO) + 7) == HELLO + b"\x00\x05again"
    for conn in held:
        conn.close()
    s.container_exits()
    err = s.finish()[1]
    assert err.count("shell: more than 64 connections at once; closing new ones.") == 1


def test_a_host_connection_waits_for_the_kernels_socket_then_is_relayed(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    replace_kernel(s, SHELL, None)

    def echo_once(conn: socket.socket) -> None:
        conn.sendall(HELLO + conn.recv(5))

    with socket.create_connection(("127.0.0.1", s.ports[SHELL]), timeout=5) as conn:
        conn.sendall(b"early")  # kept until the kernel side opens
        time.sleep(0.3)
        ScriptedKernel(s.sockets / s.names[SHELL], echo_once)
        got = b""
        while len(got) < len(HELLO) + 5:
            got += conn.recv(65536)
    assert got == HELLO + b"early"


def test_more_than_the_pending_limit_before_the_kernel_side_opens_closes_the_connection(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    replace_kernel(s, SHELL, None)
    with socket.create_connection(("127.0.0.1", s.ports[SHELL]), timeout=5) as conn:
        with contextlib.suppress(OSError):
            conn.sendall(b"x" * (relay.PENDING_LIMIT + 1))
        assert conn.recv(1) == b""


def test_a_kernel_socket_swapped_for_a_symlink_is_refused(
    session_of: Callable[..., Session], tmp_path: Path
) -> None:
    s = session_of()
    bait_path = tmp_path / "bait.sock"
    reached = threading.Event()
    ScriptedKernel(bait_path, lambda c: reached.set())
    replace_kernel(s, SHELL, None)
    (s.sockets / s.names[SHELL]).symlink_to(bait_path)
    with socket.create_connection(("127.0.0.1", s.ports[SHELL]), timeout=5) as conn:
        assert conn.recv(1) == b""
    assert not reached.wait(0.3)
    os.unlink(s.sockets / s.names[SHELL])  # the guard would kill for it; not its test
    s.container_exits()
    err = s.finish()[1]
    assert "shell: cannot reach the kernel's socket:" in err


def test_a_big_message_flows_both_ways_intact_with_a_slow_reader(
    session_of: Callable[..., Session],
) -> None:
    size = 8 << 20
    body = bytes(range(256)) * (size // 256)
    received: list[int] = []

    def kernel(conn: socket.socket) -> None:
        conn.sendall(HELLO + long_frame(size) + body)
        total = 0
        while chunk := conn.recv(1 << 16):
            total += len(chunk)
        received.append(total)

    s = session_of(max_message=str(16 << 20))
    replace_kernel(s, SHELL, kernel)
    with socket.create_connection(("127.0.0.1", s.ports[SHELL]), timeout=10) as conn:
        sender = threading.Thread(target=conn.sendall, args=(b"u" * size,))
        sender.start()
        got = bytearray()
        while len(got) < len(HELLO) + 9 + size:
            got += conn.recv(1 << 14)
            if len(got) < 1 << 20:
                time.sleep(0.001)  # slow at first: the relay must hold, not grow
        status = Path(f"/proc/{s.proc.pid}/status").read_text()
        sender.join(10)
        assert not sender.is_alive(), "the host's 8 MiB did not get through the relay in 10 s"
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            conn.recv(1)
    assert bytes(got) == HELLO + long_frame(size) + body
    # The host side closes as soon as its EOF is read, while the kernel side may still be
    # writing its queue: the container's exit ends the relay, so it waits for the kernel's EOF.
    wait_until(lambda: received, 10)
    s.container_exits()
    end = s.finish()[3]
    assert received == [size]
    rss = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1])
    assert rss < 4 * 1024, f"peak RSS {rss} kB while relaying {size >> 20} MiB each way"
    assert int(end["bytes_to_kernel"]) == size


def test_the_shell_chunk_naming_execute_request_is_kept_for_the_notice(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    with socket.create_connection(("127.0.0.1", s.ports[SHELL]), timeout=5) as conn:
        for chunk in (b"first", b'{"msg_type": "execute_request"}', b"after"):
            conn.sendall(chunk)
            time.sleep(0.1)
    s.container_exits()
    s.finish()
    assert (s.state_dir / "execute").read_bytes() == b'first{"msg_type": "execute_request"}'


def test_the_kernels_end_of_iopub_reaches_the_host_and_every_lost_subscriber_is_counted(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    connections: list[socket.socket] = []

    def kernel(conn: socket.socket) -> None:
        connections.append(conn)
        conn.sendall(HELLO)
        if len(connections) > 1:  # the first one ends at once, the second stays
            while conn.recv(65536):
                pass

    replace_kernel(s, IOPUB, kernel)
    with socket.create_connection(("127.0.0.1", s.ports[IOPUB]), timeout=5) as conn:
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
    assert got == HELLO  # then EOF: the kernel's end passed on
    held = socket.create_connection(("127.0.0.1", s.ports[IOPUB]))
    wait = time.monotonic() + 5
    while len(connections) < 2 and time.monotonic() < wait:
        time.sleep(0.02)
    s.container_exits()  # the end closes the second, still relayed
    end = s.finish()[3]
    held.close()
    assert end["iopub_lost"] == "2"


def test_a_violation_counts_every_relayed_iopub_subscriber_lost(
    session_of: Callable[..., Session],
) -> None:
    s = session_of(max_message="50")
    go = threading.Event()

    def kernel(conn: socket.socket) -> None:
        conn.sendall(HELLO)
        go.wait(10)
        conn.sendall(b"\x00\x64" + b"v" * 100)  # over max_message: the violation
        while conn.recv(65536):
            pass

    replace_kernel(s, IOPUB, kernel)
    subscribers = [socket.create_connection(("127.0.0.1", s.ports[IOPUB])) for _ in range(3)]
    for sub in subscribers:
        sub.settimeout(5)
        assert sub.recv(len(HELLO), socket.MSG_WAITALL) == HELLO
    go.set()
    end = s.finish()[3]
    for sub in subscribers:
        sub.close()
    assert end["reason"].startswith("budget exceeded: the kernel sent a message of more than 50")
    assert end["iopub_lost"] == "3"  # each reconnects for the notice


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process pid so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_kernel_side_hung_up_with_bytes_queued_does_not_spin_the_client(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    kernel_conns: list[socket.socket] = []

    def never_reads(conn: socket.socket) -> None:
        kernel_conns.append(conn)
        conn.sendall(HELLO)
        time.sleep(30)  # holds the socket open, reads nothing

    replace_kernel(s, SHELL, never_reads)
    host = socket.create_connection(("127.0.0.1", s.ports[SHELL]))
    # What the kernel's socket takes, then some: queued in the relay, under the mark at
    # which it stops reading us (so it sees our close). 40 KiB over: spun at 100% CPU
    # before the fix, here; 16 KiB did not (all of it fitted in the socket).
    extra = 40 << 10
    host.sendall(b"h" * (int(Path("/proc/sys/net/core/wmem_default").read_text()) + extra))
    time.sleep(0.3)
    host.close()  # the kernel side is closing, its queue not written
    time.sleep(0.2)
    kernel_conns[0].shutdown(socket.SHUT_RDWR)  # hung up, its receive queue never emptied
    time.sleep(0.2)
    before = cpu_seconds(s.proc.pid)
    time.sleep(1.0)
    assert cpu_seconds(s.proc.pid) - before < 0.2


def test_out_of_descriptors_the_listener_rests_instead_of_spinning_and_says_so_once(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    talk(s.ports[SHELL], b"ping", len(HELLO) + 6)  # settled: every descriptor it needs open
    time.sleep(0.3)  # that connection's descriptors closed again
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{s.proc.pid}/fd")}
    lowest_free = min(set(range(len(open_fds) + 1)) - open_fds)  # what accept would get
    limit = f"--nofile={lowest_free}:{lowest_free}"
    subprocess.run(["prlimit", f"--pid={s.proc.pid}", limit], check=True)
    waiting = [socket.create_connection(("127.0.0.1", s.ports[HB])) for _ in range(2)]
    time.sleep(0.2)
    before = cpu_seconds(s.proc.pid)
    time.sleep(1.0)
    spent = cpu_seconds(s.proc.pid) - before
    for conn in waiting:
        conn.close()
    s.container_exits()
    err = s.finish()[1]
    assert spent < 0.2
    assert err.count("hb: cannot accept connections for now: Too many open files") >= 1
    assert err.count("hb: cannot accept connections for now") <= 3  # once per 1 s rest
