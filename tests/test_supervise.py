"""_supervise.py run by the host's Python as a subprocess (it is plain stdlib, no container).

Its stdin is the host launcher's lifeline, so every test keeps a pipe open to it until the
test decides otherwise: an inherited or closed stdin would end the kernel early.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import jupyter_docker_kernel

SUPERVISOR = Path(jupyter_docker_kernel.__file__).with_name("_supervise.py")
PY = sys.executable


def children(pid: int) -> list[int]:
    """Direct children of pid (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


class Supervised:
    """A running supervisor with pipes to stdin, stdout and stderr."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [PY, str(SUPERVISOR), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def wait(self, timeout: float) -> tuple[int, str]:
        """Exit code and stderr once the supervisor exits by itself within timeout."""
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read().decode()

    def kill(self) -> None:
        """Kill the supervisor and its kernel's process group (own session) if still there."""
        for child in children(self.proc.pid):
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def supervise() -> Iterator[type[Supervised]]:
    """Start supervisors with supervise(*args); all are killed at teardown, even on failure."""
    started: list[Supervised] = []

    class Tracked(Supervised):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for sup in started:
        sup.kill()


def test_exit_code_is_the_kernels_and_reported(supervise: type[Supervised]) -> None:
    """The supervisor exits with the kernel's code and says 'kernel exited with code N'."""
    sup = supervise("--", PY, "-c", "import sys; sys.exit(3)")
    code, err = sup.wait(timeout=10)
    assert code == 3
    assert "jupyter-docker-kernel: kernel exited with code 3 after" in err


def test_clean_exit_is_silent(supervise: type[Supervised]) -> None:
    """A kernel that exits 0 on its own gives exit 0 and no report."""
    code, err = supervise("--", PY, "-c", "pass").wait(timeout=10)
    assert (code, err) == (0, "")


def test_stdin_eof_ends_the_kernel(supervise: type[Supervised]) -> None:
    """EOF on stdin (the host launcher is gone) ends a running kernel within 3 s."""
    sup = supervise("--", "sleep", "60")
    assert sup.proc.stdin is not None
    sup.proc.stdin.close()
    code, err = sup.wait(timeout=3)
    assert "kernel ended: the host launcher went away" in err
    assert code == 128 + signal.SIGTERM


def test_sigint_reaches_the_kernels_process_group(supervise: type[Supervised]) -> None:
    """SIGINT to the supervisor is forwarded to the kernel (a KeyboardInterrupt there)."""
    kernel = (
        "import sys, time\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(7)\n"
    )
    sup = supervise("--", PY, "-c", kernel)
    assert sup.proc.stdout is not None
    assert sup.proc.stdout.readline() == b"ready\n"
    sup.proc.send_signal(signal.SIGINT)
    code, err = sup.wait(timeout=5)
    assert code == 7
    assert "kernel exited with code 7" in err


def test_sigterm_ends_the_kernel(supervise: type[Supervised]) -> None:
    """SIGTERM to the supervisor (docker stop) ends the kernel and says so."""
    sup = supervise("--", PY, "-c", "import time; print('ready', flush=True); time.sleep(60)")
    assert sup.proc.stdout is not None
    assert sup.proc.stdout.readline() == b"ready\n"
    sup.proc.send_signal(signal.SIGTERM)
    code, err = sup.wait(timeout=5)
    assert f"kernel ended: stopped by signal {int(signal.SIGTERM)}" in err
    assert code == 128 + signal.SIGTERM


def test_lifetime_kills_the_kernel(supervise: type[Supervised]) -> None:
    """--lifetime 1 kills a kernel that would run for a minute, saying 'maximum lifetime'."""
    code, err = supervise("--lifetime", "1", "--", "sleep", "60").wait(timeout=5)
    assert "maximum lifetime of 1 s reached" in err
    assert code == 128 + signal.SIGKILL


def test_cleanup_empties_the_runtime_dir_on_exit(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """--cleanup DIR removes DIR's files (HMAC key, sockets) when the kernel exits."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "kernel.json").write_text("{}")
    (runtime / "k-shell").write_text("")
    code, _ = supervise("--cleanup", str(runtime), "--", PY, "-c", "pass").wait(timeout=10)
    assert code == 0
    assert list(runtime.iterdir()) == []


def test_missing_kernel_command_exits_127(supervise: type[Supervised]) -> None:
    """A kernel command that cannot be started exits 127 and names it."""
    code, err = supervise("--", "/nonexistent/kernel").wait(timeout=10)
    assert code == 127
    assert "cannot start the kernel command '/nonexistent/kernel'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [((), "no kernel command given"), (("--bogus", "--", "true"), "unknown supervisor option")],
)
def test_bad_invocation_exits_2(
    supervise: type[Supervised], args: tuple[str, ...], message: str
) -> None:
    """No kernel command, or an unknown option, exits 2 with a message."""
    code, err = supervise(*args).wait(timeout=10)
    assert code == 2
    assert message in err


ECHO_KERNEL = """\
import socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
conn, _ = server.accept()
while data := conn.recv(65536):
    conn.sendall(data.upper())
"""


def test_bridge_splices_a_unix_socket_to_the_kernels_tcp_port(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """--bridge PORT=PATH: bytes sent to the unix socket reach the kernel's tcp port on
    127.0.0.1 and its answer comes back (how a tcp-only kernel meets the host's relay)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "k-1"
    sup = supervise("--bridge", f"{port}={path}", "--", PY, "-c", ECHO_KERNEL, str(port))
    assert sup.proc.stdout is not None
    assert sup.proc.stdout.readline() == b"listening\n"
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(path))
        client.sendall(b"hello kernel")
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(1024):
            received += chunk
    assert received == b"HELLO KERNEL"


DENIALS_PROBE = """
import ctypes, errno, json, os, socket, stat, sys
os.umask(0)
where = sys.argv[1]
out = {}
for name, make in [
    ('chmod 4755', lambda p: (open(p, 'w').close(), os.chmod(p, 0o4755))),
    ('chmod 2755', lambda p: (open(p, 'w').close(), os.chmod(p, 0o2755))),
    ('open 4755', lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o4755))),
    ('mknod 6755', lambda p: os.mknod(p, stat.S_IFREG | 0o6755)),
    ('chmod 1777', lambda p: (open(p, 'w').close(), os.chmod(p, 0o1777))),
]:
    path = os.path.join(where, name.replace(' ', '-'))
    try:
        make(path)
        out[name] = oct(os.lstat(path).st_mode & 0o7777)
    except OSError as exc:
        out[name] = type(exc).__name__
try:
    socket.socket(40, socket.SOCK_STREAM).close()  # AF_VSOCK
    out['vsock'] = 'allowed'
except OSError as exc:
    out['vsock'] = errno.errorcode[exc.errno]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(425, 0, 0)  # io_uring_setup (x86_64 and aarch64 alike)
out['io_uring_setup'] = errno.errorcode[ctypes.get_errno()]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="no filter there")
def test_the_kernel_inherits_the_in_container_denials(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """The supervisor's seccomp filter (what holds under gVisor, which ignores the engine's
    profile, and on a Podman service with its own) is inherited by the kernel: a mode with
    S_ISUID or S_ISGID fails with EPERM on every route while other modes (the sticky bit
    too) work; AF_VSOCK sockets and io_uring_setup fail with EPERM."""
    import json

    supervised = supervise("--", PY, "-c", DENIALS_PROBE, str(tmp_path))
    assert supervised.proc.stdout is not None
    line = supervised.proc.stdout.readline()  # stdin (the lifeline) stays open meanwhile
    code, err = supervised.wait(timeout=30)

    assert code == 0, err
    assert json.loads(line) == {
        "chmod 4755": "PermissionError",
        "chmod 2755": "PermissionError",
        "open 4755": "PermissionError",
        "mknod 6755": "PermissionError",
        "chmod 1777": "0o1777",
        "vsock": "EPERM",
        "io_uring_setup": "EPERM",
    }
