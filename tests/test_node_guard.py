"""The socket-dir guard on a node's side (issue 13): _node_guard.py's protocol here, with
this host's socketdir.SocketDirGuard (the class the node's copy runs), no engine; and
the guard on a real test node: its cost there and the time from a kernel's write into its
socket dir to the kernel's stop (tests/nodes.py's node).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import _node_guard, node_backend, socketdir
from jupyter_docker_kernel.hardening import RUNTIME_TARGET
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.conftest import install_kernel
from tests.kernels import kernel_key, launcher_process, wait_until
from tests.node_suites import node_path
from tests.nodes import NodeUnderTest
from tests.test_node_kernels import node_containers, started

ALLOWED = ["k-1", "k-2"]
#: The guard's idle time in these tests (60 s on a node): longer than a loaded machine
#: takes from the fixture to the test's first connect.
IDLE = 10.0


@pytest.fixture
def base() -> Iterator[Path]:
    """A runtime base with one kernel's socket dir (kernel/rt) and a guard serving it."""
    short = Path(os.environ.get("TMPDIR", "/tmp"))
    path = Path(tempfile.mkdtemp(prefix="g-", dir=short))
    (path / "kernel" / "rt").mkdir(parents=True)
    server = threading.Thread(
        target=_node_guard.serve, args=(str(path), socketdir.SocketDirGuard, IDLE), daemon=True
    )
    server.start()
    deadline = time.monotonic() + 5
    while not (path / _node_guard.GUARD_SOCKET).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)  # the guard ends when idle


def ask(base: Path, directory: str) -> tuple[socket.socket, str]:
    """Connect to the guard, ask it to watch `directory`; (connection, its answer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(base / _node_guard.GUARD_SOCKET))
    sock.sendall(json.dumps({"dir": directory, "allowed": ALLOWED}).encode() + b"\n")
    return sock, node_backend._read_line(sock)


def test_a_file_written_into_a_watched_socket_dir_is_reported_in_the_local_guards_words(
    base: Path,
) -> None:
    sock, said = ask(base, str(base / "kernel" / "rt"))
    with sock:
        (base / "kernel" / "rt" / "fill").write_bytes(b"x" * 4096)
        verdict = node_backend._read_line(sock)

    assert said == "watching"
    assert verdict.startswith(
        "violation the kernel wrote to its socket dir, where only its sockets belong"
    )
    assert "'fill'" in verdict
    assert not (base / "kernel" / "rt" / "fill").exists()  # removed at once, as locally


def test_a_socket_of_an_allowed_name_is_let_be(base: Path) -> None:
    sock, said = ask(base, str(base / "kernel" / "rt"))
    with sock, socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(base / "kernel" / "rt" / "k-1"))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            node_backend._read_line(sock)

    assert said == "watching"


@pytest.mark.parametrize(
    "directory",
    ["/etc", "{base}/kernel", "{base}/kernel/rt/../rt", "{base}/link/rt"],
)
def test_a_dir_that_is_not_a_kernels_socket_dir_in_the_base_is_refused(
    base: Path, directory: str
) -> None:
    (base / "link").symlink_to(base / "kernel")
    sock, said = ask(base, directory.format(base=base))
    sock.close()

    assert said.startswith("refused")


def test_a_dir_asked_for_before_it_is_made_is_watched_once_it_is(base: Path) -> None:
    """A cold start asks while its dir is being made; the answer comes once it is."""
    answer: list[tuple[socket.socket, str]] = []
    later = base / "later" / "rt"
    asking = threading.Thread(target=lambda: answer.append(ask(base, str(later))))
    asking.start()
    time.sleep(0.3)
    later.mkdir(parents=True)
    asking.join(timeout=5)
    [(sock, said)] = answer
    sock.close()

    assert said == "watching"


def test_the_guard_ends_once_no_kernel_was_watched_for_its_idle_time(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="g-", dir=os.environ.get("TMPDIR", "/tmp")))
    (base / "kernel" / "rt").mkdir(parents=True)
    server = threading.Thread(
        target=_node_guard.serve, args=(str(base), socketdir.SocketDirGuard, 0.5), daemon=True
    )
    umask = os.umask(0o022)
    os.umask(umask)
    server.start()
    server.join(timeout=30)

    assert not server.is_alive()
    assert not (base / _node_guard.GUARD_SOCKET).exists()
    # serve() leaves its process's umask be (the guard's own main sets it).
    assert os.umask(umask) == umask
    subprocess.run(["rm", "-rf", str(base)], check=False)


def test_the_guard_container_is_hardened_and_mounts_only_the_runtime_base() -> None:
    args = node_backend.guard_args(
        KernelSettings(image="img"), "/tmp/jupyter-docker-kernel-1000", 1000, 1000, "v1"
    )
    text = " ".join(args)

    for option in (
        "--network none",
        "--read-only",
        "--cap-drop ALL",
        "no-new-privileges",
        "--user 1000:1000",
        "--rm",
    ):
        assert option in text
    assert [a for a in args if a.startswith("/tmp/jupyter-docker-kernel-1000:")] == [
        "/tmp/jupyter-docker-kernel-1000:/tmp/jupyter-docker-kernel-1000"
    ]


# -- on a real test node ---------------------------------------------------------------------

GUARD_KERNEL = "jdk-test-node-guard"


@pytest.fixture(scope="module")
def guarded_kernel(pushed_node: NodeUnderTest, kernel_image: str) -> Iterator[str]:
    """A kernelspec whose kernels run on the session's node (no work dir)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        install_kernel(GUARD_KERNEL, kernel_image, "--engine-host", pushed_node.url, "--no-workdir")
        yield GUARD_KERNEL


def guard_containers(node: NodeUnderTest) -> list[str]:
    return node.docker("ps", "-aq", "--filter", "name=^jdk-socket-guard-").stdout.split()


def host_pid(node: NodeUnderTest, container: str) -> int:
    """The pid of a node container's first process, as this host sees it (the node shares
    this host's pid namespace)."""
    return int(node.docker("inspect", "-f", "{{.State.Pid}}", container).stdout)


@pytest.mark.nodes
@pytest.mark.docker
def test_a_write_into_a_node_kernels_socket_dir_stops_it_and_the_guard_ends_after(
    pushed_node: NodeUnderTest, guarded_kernel: str, tmp_path: Path
) -> None:
    """The node's guard (one container, hardened) watches a node kernel's socket dir: a
    file appearing there stops the kernel within 2 s, the log says why in the local
    guard's words, and with no kernel left the guard ends by itself (IDLE_SECONDS).
    Prints the guard's cost on the node and the time from the write to the kernel's end."""
    log = tmp_path / "launcher.log"
    km, kc, _ = started(guarded_kernel, tmp_path, log)
    try:
        [guard] = guard_containers(pushed_node)
        facts = json.loads(pushed_node.docker("inspect", guard).stdout)[0]
        assert facts["HostConfig"]["NetworkMode"] == "none"
        assert facts["HostConfig"]["ReadonlyRootfs"] is True
        assert facts["HostConfig"]["CapDrop"] == ["ALL"]
        pid = host_pid(pushed_node, guard)
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        threads = next(
            line.split()[1] for line in status.splitlines() if line.startswith("Threads")
        )
        print(f"node guard: 1 process, {threads} threads, RSS {int(rss) / 1024:.1f} MiB")
        [kernel] = node_containers(pushed_node, kernel_key(km))
        kernel_pid = host_pid(pushed_node, kernel)
        socket_dir = node_path(pushed_node)(
            next(
                m["Source"]
                for m in json.loads(pushed_node.docker("inspect", kernel).stdout)[0]["Mounts"]
                if m["Destination"] == RUNTIME_TARGET
            )
        )
        began = time.monotonic()
        (socket_dir / "planted").write_bytes(b"x" * 4096)
        while Path(f"/proc/{kernel_pid}").exists() and time.monotonic() - began < 10:
            time.sleep(0.002)
        took = time.monotonic() - began
        print(f"a write into the socket dir to the kernel's end: {took * 1000:.0f} ms")
        assert took < 2
        wait_until(lambda: launcher_process(km).poll() is not None, timeout=15)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "the kernel wrote to its socket dir, where only its sockets belong" in log.read_text()
    began = time.monotonic()
    wait_until(lambda: not guard_containers(pushed_node), timeout=_node_guard.IDLE_SECONDS + 30)
    print(f"node guard gone {time.monotonic() - began:.0f} s after its last kernel")
