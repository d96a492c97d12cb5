"""One process hosting many kernels: descriptors above select(2)'s limit of 1024.

The resident helper hosts every argv kernel of a user, and a Jupyter server every
provisioner kernel; at about 50 kernels their descriptors pass 1024 (found by the plumbing
memory benchmark at 50 kernels: cold starts failed with exit 75, and socket-dir guard
threads died with "filedescriptor out of range in select()"). No engine needed: the waits
are checked on their own, with this process pushed past 1024 descriptors first.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel.engine import ExitWatch
from jupyter_docker_kernel.socketdir import SocketDirGuard

HIGH = 1100


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Hold descriptors up to HIGH, so that the next ones opened are above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HIGH + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} allows no descriptor above 1024 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    held = []
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        while (fd := os.dup(null)) < HIGH:
            held.append(fd)
        held.append(fd)
        yield
    finally:
        for fd in [null, *held]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_exit_watch_above_1024_is_not_done_until_the_engine_answers(
    many_descriptors: None,
) -> None:
    ours, engine_side = socket.socketpair()
    try:
        assert ours.fileno() > 1024
        unused: Any = None  # done() reads only the socket
        watch = ExitWatch(unused, "c", unused, unused, ours)
        assert not watch.done()  # select() raised ValueError here, read as "exited"
        engine_side.sendall(b"HTTP/1.1 200 OK\r\n")
        assert watch.done()
    finally:
        ours.close()
        engine_side.close()


def test_the_socket_dir_guard_above_1024_still_stops_a_stranger(
    many_descriptors: None, tmp_path: Path
) -> None:
    violated = threading.Event()
    guard = SocketDirGuard(tmp_path, {"shell"}, lambda reason: violated.set())
    try:
        time.sleep(0.3)  # past its first listing: now it waits for inotify events
        (tmp_path / "filler").write_bytes(b"x")
        assert violated.wait(5), "the guard's thread saw nothing (it died in select)"
    finally:
        guard.close()
