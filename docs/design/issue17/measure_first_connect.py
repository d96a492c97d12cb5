"""Where a pooled argv start's time goes on the client's side: each start's ZeroMQ socket
events (connect, refused and retried with its interval, connected, handshake) and the
first kernel_info reply, in ms from start_kernel.

    .venv/bin/python docs/design/issue17/measure_first_connect.py KERNEL [N]

Before the thin client bound the endpoints itself (h1, 2026-12-02), every start showed the
shell socket's first connect refused (CONNECT_RETRIED, interval 100-199 ms: libzmq's
reconnect_ivl plus jitter) and the reply 4 ms after the retry connected. Summary line per
start: its time and whether the shell socket's first attempt was refused.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from typing import Any

import zmq
from jupyter_client import connect as jc_connect
from zmq.utils.monitor import recv_monitor_message

EVENTS: list[tuple[float, str, str, object]] = []
MONITORS: list[tuple[str, zmq.Socket[Any]]] = []
T0 = [0.0]


def connected_socket(self: Any, channel: str, identity: bytes | None = None) -> Any:
    """jupyter_client's _create_connected_socket with a monitor attached before connect."""
    sock = self.context.socket(jc_connect.channel_socket_types[channel])
    sock.linger = 1000
    if identity:
        sock.identity = identity
    MONITORS.append((channel, sock.get_monitor_socket()))
    EVENTS.append((time.perf_counter() - T0[0], channel, "connect()", ""))
    sock.connect(self._make_url(channel))
    return sock


jc_connect.ConnectionFileMixin._create_connected_socket = connected_socket  # type: ignore[method-assign]


def drain(stop: threading.Event) -> None:
    while not stop.is_set():
        for channel, monitor in list(MONITORS):
            while True:
                try:
                    msg = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    break
                name = zmq.Event(msg["event"]).name
                EVENTS.append((time.perf_counter() - T0[0], channel, name, msg["value"]))
        time.sleep(0.0005)


def one(kernel: str, cwd: str) -> tuple[float, bool]:
    """One start of `kernel` in `cwd` (an empty dir: --copy-workdir copies it)."""
    from jupyter_client.manager import KernelManager

    EVENTS.clear()
    MONITORS.clear()
    km = KernelManager(kernel_name=kernel)
    stop = threading.Event()
    thread = threading.Thread(target=drain, args=(stop,), daemon=True)
    T0[0] = time.perf_counter()
    thread.start()
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        asked = set()
        while True:
            asked.add(kc.kernel_info())
            try:
                reply = kc.get_shell_msg(timeout=0.2)
            except Exception:  # noqa: S112 - queue.Empty: ask again
                continue
            if reply["parent_header"].get("msg_id") in asked:
                took = time.perf_counter() - T0[0]
                EVENTS.append((took, "shell", "REPLY", ""))
                break
    finally:
        time.sleep(0.02)
        stop.set()
        thread.join()
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()
    shell = [event for _, channel, event, _ in sorted(EVENTS) if channel == "shell"]
    until = shell.index("CONNECTED") if "CONNECTED" in shell else len(shell)
    refused = "CONNECT_RETRIED" in shell[:until]
    for at, channel, event, value in sorted(EVENTS):
        print(f"{at * 1000:8.1f} ms {channel:8} {event} {value}")
    return took, refused


if __name__ == "__main__":
    name, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = tempfile.mkdtemp(prefix="jdk-first-connect-")
    for index in range(count):
        took, refused = one(name, work)
        print(
            f"--- {name} #{index}: {took * 1000:.0f} ms, shell's first connect refused: {refused}"
        )
        time.sleep(3)  # the pool's refill
