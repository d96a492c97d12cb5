"""The resident helper binds an argv kernel's endpoints when its client writes them (issue
17): early_listen.EarlyListen on a loop of its own, with connection files written here as
a Jupyter client writes them. No Docker."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import early_listen, thin


@pytest.fixture
def early() -> Iterator[early_listen.EarlyListen]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    watcher = early_listen.EarlyListen(loop)
    yield watcher
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()
    os.close(watcher.fd)
    for held in watcher.held.values():
        for sock in held.values():
            sock.close()


def free_ports() -> list[int]:
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in thin.CHANNELS]
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def write(path: Path, kernel_name: str, ports: list[int]) -> None:
    """As jupyter_client writes a connection file: one write, then close."""
    info: dict[str, object] = dict(zip([f"{c}_port" for c in thin.CHANNELS], ports, strict=True))
    info |= {"ip": "127.0.0.1", "transport": "tcp", "key": "k", "kernel_name": kernel_name}
    path.write_text(json.dumps(info, indent=2))


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.005)


def test_a_served_kernelspecs_next_connection_file_is_listened_on_before_its_launcher_comes(
    early: early_listen.EarlyListen, tmp_path: Path
) -> None:
    early.learn(str(tmp_path / "kernel-first.json"), "ours")
    time.sleep(0.05)  # the watch is added on the loop
    theirs, ours = free_ports(), free_ports()
    write(tmp_path / "kernel-theirs.json", "native", theirs)
    write(tmp_path / "kernel-ours.json", "ours", ours)
    until(lambda: accepts(ours[0]))
    assert all(accepts(port) for port in ours)
    assert not any(accepts(port) for port in theirs)  # another kernelspec's: never bound
    taken = early.take(str(tmp_path / "kernel-ours.json"))
    assert [sock.getsockname()[1] for sock in taken.values()] == ours
    assert list(taken) == list(thin.CHANNELS)
    for sock in taken.values():
        sock.close()


def test_endpoints_nobody_takes_are_let_go(early: early_listen.EarlyListen, tmp_path: Path) -> None:
    early.learn(str(tmp_path / "kernel-first.json"), "ours")
    time.sleep(0.05)
    ports = free_ports()
    write(tmp_path / "kernel-next.json", "ours", ports)
    until(lambda: accepts(ports[0]))
    time.sleep(early_listen.HOLD + 0.2)
    assert early.take(str(tmp_path / "kernel-next.json")) == {}
    for port in ports:  # free again: the kernel's own start can bind them
        socket.create_server(("127.0.0.1", port)).close()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another uid needs root")
def test_a_connection_file_of_another_owner_is_not_read(
    early: early_listen.EarlyListen, tmp_path: Path
) -> None:
    """In a shared directory (/tmp) nobody else may make the helper bind ports."""
    early.learn(str(tmp_path / "kernel-first.json"), "ours")
    time.sleep(0.05)
    theirs, ours = free_ports(), free_ports()
    other = tmp_path / "kernel-other.json"
    other.touch()
    os.chown(other, 65534, 65534)
    write(other, "ours", theirs)
    write(tmp_path / "kernel-ours.json", "ours", ours)
    until(lambda: accepts(ours[0]))
    assert not any(accepts(port) for port in theirs)
