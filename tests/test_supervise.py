"""_supervise.py run by the host's Python as a subprocess (it is plain stdlib, no container).

Its stdin is the host launcher's lifeline, so every test keeps a pipe open to it until the
test decides otherwise: an inherited or closed stdin would end the kernel early.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import jupyter_docker_kernel
from jupyter_docker_kernel import _supervise, lifeline, workcopy
from tests.kernels import free_port

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
conn.close()
import time; time.sleep(600)  # stays up like a kernel: its exit would end the supervisor mid-reply
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


# -- --lifeline: a socket instead of stdin (a detached container's holder connects to it) --

#: Started by the kernels below once they run: the lifeline tests check it never appears
#: when the holder did not connect.
STARTED = "import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"


def lifeline_args(path: Path, wait: float = 4.0) -> list[str]:
    return ["--lifeline", str(path), "--lifeline-wait", f"{wait:g}"]


def test_lifeline_nobody_connecting_ends_it_without_the_kernel(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """Nobody connects within --lifeline-wait: exit 75, one line saying so, no kernel ran."""
    marker = tmp_path / "started"
    began = time.monotonic()
    sup = supervise(*lifeline_args(tmp_path / "life", 0.5), "--", PY, "-c", STARTED, str(marker))
    code, err = sup.wait(timeout=5)
    assert code == lifeline.NO_LIFELINE_EXIT == _supervise.NO_LIFELINE_EXIT
    assert time.monotonic() - began < 3
    assert "nobody connected to the lifeline" in err
    assert "the kernel was not started" in err
    assert not marker.exists()
    assert not (tmp_path / "life").exists()


def test_lifeline_closed_before_the_claim_line_ends_it(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """A holder that connects and goes away before its claim line: exit 75, no kernel."""
    marker = tmp_path / "started"
    sup = supervise(*lifeline_args(tmp_path / "life"), "--", PY, "-c", STARTED, str(marker))
    lifeline.connect(str(tmp_path / "life"), wait=5).close()
    code, err = sup.wait(timeout=5)
    assert code == lifeline.NO_LIFELINE_EXIT
    assert "went away before its claim line" in err
    assert not marker.exists()


def test_lifeline_socket_is_private_and_taken_once(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """The socket is 0600 while it waits and unlinked once accepted: nobody else connects.
    stdin is not the lifeline in this mode: closing it leaves the kernel running."""
    path = tmp_path / "life"
    marker = tmp_path / "started"
    sup = supervise(*lifeline_args(path), "--", PY, "-c", STARTED, str(marker))
    sock = lifeline.connect(str(path), wait=5)
    with sock:
        sock.sendall(lifeline.claim_line())
        wait_for(marker.exists, 10)
        assert not path.exists()
        assert sup.proc.stdin is not None
        sup.proc.stdin.close()
        time.sleep(0.5)
        assert sup.proc.poll() is None


def test_lifeline_socket_mode(supervise: type[Supervised], tmp_path: Path) -> None:
    """0600 by default; 0660 with --umask 0007 (a dedicated kernel uid in the user's group)."""
    for extra, mode in (((), 0o600), (("--umask", "0007"), 0o660)):
        path = tmp_path / f"life{mode:o}"
        sup = supervise(*extra, *lifeline_args(path), "--", "sleep", "60")
        wait_for(path.exists, 5)
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.lstat().st_mode) == mode
        sup.kill()


def test_lifeline_eof_ends_the_kernel_and_output_comes_over_it(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """The claim line's cwd is the kernel's; its stdout comes back over the lifeline; the
    holder closing it ends the kernel (TERM) within the grace."""
    path = tmp_path / "life"
    kernel = "import os, time; print(os.getcwd(), flush=True); time.sleep(60)"
    sup = supervise(*lifeline_args(path), "--", PY, "-c", kernel)
    sock = lifeline.connect(str(path), wait=5)
    sock.sendall(lifeline.claim_line(cwd=str(tmp_path)))
    assert sock.makefile("rb").readline() == f"{tmp_path}\n".encode()
    began = time.monotonic()
    sock.close()
    code, _ = sup.wait(timeout=5)
    assert code == 128 + signal.SIGTERM
    assert time.monotonic() - began < _supervise.GRACE_SECONDS + 1


def test_lifeline_holder_sigkilled_ends_the_kernel(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """The holder is another process, SIGKILLed: the kernel ends within 5 s (issue 17)."""
    path = tmp_path / "life"
    marker = tmp_path / "started"
    sup = supervise(*lifeline_args(path), "--", PY, "-c", STARTED, str(marker))
    holder = hold_lifeline(path)
    try:
        wait_for(marker.exists, 10)
        holder.kill()
        began = time.monotonic()
        code, _ = sup.wait(timeout=5)
        assert code == 128 + signal.SIGTERM
        assert time.monotonic() - began < 5
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_lifeline_carries_the_work_dir_copy(supervise: type[Supervised], tmp_path: Path) -> None:
    """With --receive-workdir the copy follows the claim line; the kernel starts after it."""
    source, dest = tmp_path / "src", tmp_path / "dest"
    source.mkdir()
    dest.mkdir()
    (source / "notebook.ipynb").write_text("{}")
    path = tmp_path / "life"
    kernel = "import os; print(sorted(os.listdir('.')), flush=True)"
    sup = supervise(
        *lifeline_args(path), "--receive-workdir", str(dest), "--chdir", str(dest),
        "--", PY, "-c", kernel,
    )  # fmt: skip
    sock = lifeline.connect(str(path), wait=5)
    sock.sendall(lifeline.claim_line())
    limits = {"limit": 1 << 20, "max_entries": 100}
    workcopy.send(str(source), workcopy.scan(str(source), **limits), sock.sendall)
    assert sock.makefile("rb").readline() == b"['notebook.ipynb']\n"
    assert sup.wait(timeout=10)[0] == 0
    sock.close()


def test_sigterm_while_waiting_for_the_lifeline_ends_it(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """`docker stop` before anyone connected: it ends at once, the kernel never started."""
    path, marker = tmp_path / "life", tmp_path / "started"
    sup = supervise(*lifeline_args(path, 30), "--", PY, "-c", STARTED, str(marker))
    wait_for(path.exists, 5)
    sup.proc.send_signal(signal.SIGTERM)
    code, err = sup.wait(timeout=3)
    assert code == 1
    assert f"kernel not started: stopped by signal {int(signal.SIGTERM)}" in err
    assert not marker.exists()


def test_lifeline_and_pool_wait_exclude_each_other(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    code, err = supervise(
        *lifeline_args(tmp_path / "life"), "--pool-wait", str(tmp_path / "claim"), "--", "true"
    ).wait(timeout=10)
    assert code == 2
    assert "--lifeline and --pool-wait exclude each other" in err


def hold_lifeline(path: Path) -> subprocess.Popen[bytes]:
    """Another process that connects to the lifeline, sends its claim line and holds it."""
    code = (
        "import sys, time\n"
        "from jupyter_docker_kernel import lifeline\n"
        "sock = lifeline.connect(sys.argv[1], 10)\n"
        "sock.sendall(lifeline.claim_line())\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([PY, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    return holder


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _IOPubLoop:
    """tornado's IOLoop as hold_iopub_welcomes uses it: callbacks queued for its thread."""

    def __init__(self) -> None:
        self.queued: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> None:
        self.queued.append(callback)


def test_a_warm_kernel_greets_iopub_subscribers_only_once_it_has_the_key() -> None:
    """ipykernel 7's IOPubThread greets each subscription through _send_welcome_message,
    signed with the session's key at that moment: before the claim, a placeholder. Held
    until the release, which runs on the IOPub loop, after the key was set."""
    key = ["placeholder"]
    sent: list[tuple[str, str]] = []

    class IOPubThread:
        def __init__(self) -> None:
            self.io_loop = _IOPubLoop()

        def _send_welcome_message(self, subscription: str) -> None:
            sent.append((subscription, key[0]))

    thread = IOPubThread()

    class App:
        iopub_thread = thread

    release = _supervise.hold_iopub_welcomes(App())
    thread._send_welcome_message("")  # a client subscribed before the claim line came
    assert sent == []
    key[0] = "client's"
    release()
    assert sent == []  # not from the kernel's main thread: from the IOPub loop's
    (callback,) = thread.io_loop.queued
    callback()
    thread._send_welcome_message("later")
    assert sent == [("", "client's"), ("later", "client's")]


def test_an_ipykernel_that_sends_no_greeting_is_left_alone() -> None:
    """ipykernel 6 has no _send_welcome_message: nothing is held, the release does nothing."""

    class IOPubThread:
        io_loop = _IOPubLoop()

    class App:
        iopub_thread = IOPubThread()

    _supervise.hold_iopub_welcomes(App())()
    assert vars(App.iopub_thread) == {}
    assert IOPubThread.io_loop.queued == []


# --- A Kubernetes pod's supervisor (kube_channels.supervisor_args) ------------------------


def test_connection_copy_gives_the_kernel_a_private_writable_copy(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """--connection-copy SRC=DST: the kernel reads DST, a 0600 copy of the read-only SRC
    in a new 0700 directory, and may rewrite it (ipykernel 7 does with Curve keys)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "kernel.json").write_text('{"key": "k"}')
    (secret / "kernel.json").chmod(0o444)
    copy = tmp_path / "private" / "kernel.json"
    kernel = (
        "import os, stat, sys; p = sys.argv[1]; "
        "print(open(p).read(), oct(stat.S_IMODE(os.stat(p).st_mode)), "
        "oct(stat.S_IMODE(os.stat(os.path.dirname(p)).st_mode))); "
        "open(p, 'w').write('rewritten')"
    )
    sup = supervise(
        "--connection-copy", f"{secret / 'kernel.json'}={copy}", "--", PY, "-c", kernel, str(copy)
    )
    code, _ = sup.wait(timeout=10)
    assert sup.proc.stdout is not None
    assert code == 0
    assert sup.proc.stdout.read().decode().split() == ['{"key":', '"k"}', "0o600", "0o700"]
    assert (secret / "kernel.json").read_text() == '{"key": "k"}'


def test_connection_copy_refuses_an_existing_target(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """A file (or link) already at DST is not followed or reused: the kernel is not started."""
    source = tmp_path / "kernel.json"
    source.write_text("{}")
    target = tmp_path / "copy.json"
    target.symlink_to(tmp_path / "elsewhere")
    code, err = supervise(
        "--connection-copy", f"{source}={target}", "--", PY, "-c", "print('started')"
    ).wait(timeout=10)
    assert code == 1
    assert "the connection file was not copied" in err
    assert not (tmp_path / "elsewhere").exists()


# --- --signal-port: signals for a pod's kernel without pods/exec (kube_channels) ----------


def gate_request(key: bytes, gate: _supervise.SignalGate, name: bytes = b"INT") -> list[bytes]:
    """A client's request for `name` over a nonce the gate just issued, signed with key."""
    reply, number, _ = gate.check([b"challenge"])
    assert reply[0] == b"nonce"
    assert number is None
    return [b"signal", name, reply[1], _supervise.signal_mac(key, name, reply[1])]


def test_signal_gate_takes_a_request_signed_over_its_nonce_once() -> None:
    """The kernel key's MAC over an issued nonce is SIGINT; the same request again (a
    replay) is refused: each nonce is good for one request."""
    gate = _supervise.SignalGate(b"kernel-key")
    request = gate_request(b"kernel-key", gate)
    assert gate.check(request) == ([b"ok"], signal.SIGINT, "")
    reply, number, why = gate.check(request)
    assert (reply, number) == ([b"refused"], None)
    assert "used already" in why


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("wrong-key", "signature"),
        ("unsigned", "signature"),
        ("nonce-not-issued", "not issued"),
        ("nonce-expired", "expired"),
        ("not-a-signal-we-send", "not sent this way"),
        ("plain-text", "not a signal request"),
    ],
)
def test_signal_gate_refuses_what_the_kernels_key_did_not_sign_now(case: str, why: str) -> None:
    """Each wrong request is refused and sends nothing; its nonce is spent all the same."""
    now = [100.0]
    gate = _supervise.SignalGate(b"kernel-key", clock=lambda: now[0])
    request = gate_request(b"kernel-key", gate)
    if case == "wrong-key":
        request = gate_request(b"another-key", gate)
    elif case == "unsigned":
        request[3] = b""
    elif case == "nonce-not-issued":
        request = [
            b"signal",
            b"INT",
            b"0" * 32,
            _supervise.signal_mac(b"kernel-key", b"INT", b"0" * 32),
        ]
    elif case == "nonce-expired":
        now[0] += _supervise.SIGNAL_NONCE_SECONDS + 1
    elif case == "not-a-signal-we-send":
        request = gate_request(b"kernel-key", gate, b"KILL")
    else:
        request = [b"INT"]
    reply, number, said = gate.check(request)
    assert (reply, number) == ([b"refused"], None)
    assert why in said


def test_signal_gate_forgets_the_oldest_nonces_beyond_its_limit() -> None:
    """Challenges cannot pile up: past SIGNAL_NONCES the oldest nonce is no longer good."""
    gate = _supervise.SignalGate(b"k")
    first = gate_request(b"k", gate)
    for _ in range(_supervise.SIGNAL_NONCES):
        gate.check([b"challenge"])
    assert gate.check(first)[0] == [b"refused"]


def curve_connection(tmp_path: Path, port: int) -> tuple[dict[str, Any], Path]:
    """A pod-like connection file on 127.0.0.1 (the kernel's keys), and its path."""
    from jupyter_docker_kernel.kube_channels import KernelKeys, pod_connection

    info = dict(pod_connection(KernelKeys.generate()), ip="127.0.0.1")
    path = tmp_path / "kernel.json"
    path.write_text(json.dumps(info))
    return info, path


#: A kernel that counts the SIGINTs reaching it and goes on (as ipykernel does).
INTERRUPTIBLE = (
    "import itertools, signal, time\n"
    "count = itertools.count(1)\n"
    "signal.signal(signal.SIGINT, lambda *a: print('interrupted', next(count), flush=True))\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(30)\n"
)


def test_signal_port_sends_a_signed_request_to_the_kernels_process_group(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """--signal-port PORT=FILE: kube_channels.send_signal's request (Curve with the file's
    keys, HMAC over the supervisor's nonce) reaches the kernel as SIGINT."""
    from jupyter_docker_kernel import kube_channels

    port = free_port()
    info, path = curve_connection(tmp_path, port)
    sup = supervise("--signal-port", f"{port}={path}", "--", PY, "-c", INTERRUPTIBLE)
    assert sup.proc.stdout is not None
    assert sup.proc.stdout.readline() == b"ready\n"
    kube_channels.send_signal(info, "INT", port=port, timeout=10)
    assert sup.proc.stdout.readline() == b"interrupted 1\n"


def test_signal_port_refuses_the_wrong_hmac_key_and_signals_nothing(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """A client with the kernel's Curve keys but another HMAC key is refused (LaunchError)
    and the kernel gets no signal (the right request after it is its first); the
    supervisor says why."""
    from jupyter_docker_kernel import kube_channels
    from jupyter_docker_kernel.errors import LaunchError

    port = free_port()
    info, path = curve_connection(tmp_path, port)
    sup = supervise("--signal-port", f"{port}={path}", "--", PY, "-c", INTERRUPTIBLE)
    assert sup.proc.stdout is not None
    assert sup.proc.stdout.readline() == b"ready\n"
    with pytest.raises(LaunchError, match="refused the request for SIGINT"):
        kube_channels.send_signal(dict(info, key="0" * 64), "INT", port=port, timeout=10)
    kube_channels.send_signal(info, "INT", port=port, timeout=10)
    assert sup.proc.stdout.readline() == b"interrupted 1\n"
    assert sup.proc.stdin is not None
    sup.proc.stdin.close()  # the lifeline: the supervisor ends the kernel and exits
    _, err = sup.wait(timeout=10)
    assert "refused a signal request on port" in err
    assert "its signature is not the kernel key's" in err


def test_without_signal_port_the_supervisor_listens_nowhere(
    supervise: type[Supervised], tmp_path: Path
) -> None:
    """Off by default: the same supervisor without --signal-port opens no TCP socket."""
    sup = supervise("--", PY, "-c", INTERRUPTIBLE)
    assert sup.proc.stdout is not None
    assert sup.proc.stdout.readline() == b"ready\n"
    inodes = {
        os.readlink(f"/proc/{sup.proc.pid}/fd/{fd}")
        for fd in os.listdir(f"/proc/{sup.proc.pid}/fd")
    }
    assert [i for i in inodes if i.startswith("socket:")] == []
