"""The hand-over's wire on the helper's side (issue 17, c-relay.md "Build plan" part 2): a
fake compiled client in Python, a helper process with the runners below; no Docker.

What a real kernel's hand-over sends (its fields and descriptors, the end through
finish.py) is tested against a container in tests/test_finish.py.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from jupyter_docker_kernel import helper, hosting, thin
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.local_backend import CliBackend, LocalBackend
from jupyter_docker_kernel.settings import KernelSettings
from tests.test_helper import helper_argv

# -- runners, run inside the helper process -------------------------------------------------

#: What the runner's hand-over says; a value with spaces and a '=' stays one value.
FIELDS = {"name": "jdk-test-handover", "lifetime_left": "12.500", "odd": "a b=c"}


def handing(request: helper.Request, control: helper.Control) -> int:
    """Hands over (when the client asked and its env says so) a pipe whose other end holds
    b"lifeline" and /dev/null, then says whether the client's R set `ready` and whether a
    signal or gone handler still runs after H. Else says "served" and returns 3 (X 3)."""
    control.accept()
    signals: list[int] = []
    control.on_signal(signals.append)
    stopped: list[str] = []  # what hosting's on_gone does: stop the kernel
    control.on_gone(lambda: stopped.append(control.gone_reason))
    if not control.wants_handover():
        control.write("served")
        return 3
    read_end, write_end = os.pipe()
    os.write(write_end, b"lifeline")
    os.close(write_end)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        control.hand_over(FIELDS, [read_end, null])
    finally:
        os.close(read_end)
        os.close(null)
    control.write("after H")  # E lines may still follow H
    got = control.ready.wait(5.0)
    time.sleep(0.2)  # a signal byte the client sends after R would be dispatched by now
    control.write(f"ready={got} signals={signals} stopped={stopped}")
    return 7  # goes nowhere: no X after a hand-over


# -- the fake compiled client ---------------------------------------------------------------


@contextlib.contextmanager
def running_helper(tmp_path: Path, runner: str) -> Iterator[str]:
    """A helper process with `runner` (module:function) in a private base, listening; its
    socket path. Terminated after (also test_finish's)."""
    base = tmp_path / "rt"
    base.mkdir(mode=0o700)
    proc = subprocess.Popen(helper_argv(base, runner))
    path = thin.paths(str(base), thin.engine_key())[0]
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            assert time.monotonic() < deadline, "the helper did not listen"
            assert proc.poll() is None, "the helper exited"
            time.sleep(0.02)
        yield path
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def helper_socket(tmp_path: Path) -> Iterator[str]:
    """A helper process running `handing`, in a private base; its socket path."""
    with running_helper(tmp_path, "tests.test_handover:handing") as path:
        yield path


def request(handover: bool, env_on: bool | None) -> bytes:
    """A kernel request as the compiled client sends it (thin.request_for's fields);
    env_on: the switch set to 1 or 0 in its env, None: not set (the default, on)."""
    raw: dict[str, Any] = thin.request_for("{}", "/nonexistent/kernel.json")
    if handover:
        raw["handover"] = True
    env = dict(cast(dict[str, str], raw["env"]))
    env.pop(thin.HANDOVER_ENV, None)
    if env_on is not None:
        env[thin.HANDOVER_ENV] = "1" if env_on else "0"
    raw["env"] = env
    return json.dumps(raw).encode() + b"\n"


class FakeClient:
    """The compiled client's side of the wire: lines, then H with its descriptors."""

    def __init__(self, path: str, line: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.sock.sendall(line)
        self.buffer = b""
        self.fds: list[int] = []

    def _more(self) -> bool:
        fds = array.array("i")
        data, ancdata, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(16 * fds.itemsize))
        for level, kind, cmsg in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(cmsg) - len(cmsg) % fds.itemsize
                fds.frombytes(cmsg[:usable])
        # The lines before H may come in the same read (a stream merges what was sent
        # before the descriptors), so H need only start a line of this read's data.
        if fds and not (data.startswith(b"H ") or b"\nH " in data):
            raise AssertionError("descriptors came with another line than H")
        self.fds += list(fds)
        self.buffer += data
        return bool(data)

    def line(self) -> bytes | None:
        """The next line (without its newline), None at EOF."""
        while b"\n" not in self.buffer:
            if not self._more():
                return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def body(self, size: int) -> bytes:
        while len(self.buffer) < size:
            assert self._more(), "EOF inside the hand-over's fields"
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> list[bytes]:
        lines = []
        while (line := self.line()) is not None:
            lines.append(line)
        return lines

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def test_a_client_that_asked_gets_h_with_its_fields_and_descriptors_and_no_x(
    helper_socket: str,
) -> None:
    client = FakeClient(helper_socket, request(handover=True, env_on=True))
    try:
        assert (client.line() or b"").startswith(b"A ")
        header = client.line() or b""
        assert header.startswith(b"H "), header
        fields = dict(
            line.split("=", 1) for line in client.body(int(header[2:])).decode().splitlines()
        )
        assert fields == FIELDS
        # Both descriptors came with H, in order: the pipe (its bytes are readable here)
        # and /dev/null; the helper closed its copies (the pipe's EOF follows its bytes).
        assert len(client.fds) == 2
        assert os.read(client.fds[0], 100) == b"lifeline"
        assert os.read(client.fds[0], 100) == b""
        assert stat.S_ISCHR(os.fstat(client.fds[1]).st_mode)
        assert client.line() == b"E after H"
        client.sock.sendall(b"R")
        client.sock.sendall(bytes([15]))  # a signal after H is the client's own
        rest = client.rest()
    finally:
        client.close()
    assert rest == [b"E ready=True signals=[] stopped=[]"]  # the session ended without X


def test_without_r_the_clients_eof_sets_ready_too(helper_socket: str) -> None:
    client = FakeClient(helper_socket, request(handover=True, env_on=True))
    try:
        while not (client.line() or b"H").startswith(b"H "):
            pass
        client.sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        rest = client.rest()
    finally:
        client.close()
    assert time.monotonic() - started < 3.0
    assert rest[-1:] == [b"E ready=True signals=[] stopped=[]"]


def test_a_client_that_asked_with_the_switch_unset_is_handed_over(helper_socket: str) -> None:
    client = FakeClient(helper_socket, request(handover=True, env_on=None))
    try:
        assert (client.line() or b"").startswith(b"A ")
        assert (client.line() or b"").startswith(b"H ")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("handover", "env_on"), [(False, True), (False, None), (True, False), (False, False)], ids=str
)
def test_no_hand_over_unless_asked_and_not_switched_off(
    helper_socket: str, handover: bool, env_on: bool | None
) -> None:
    client = FakeClient(helper_socket, request(handover, env_on))
    try:
        lines = [client.line(), *client.rest()]
    finally:
        client.close()
    assert lines[1:] == [b"E served", b"X 3"]
    assert client.fds == []


# -- which kernels qualify --------------------------------------------------------------------


def control(asked: bool = True, env_on: bool = True) -> helper.Control:
    raw: dict[str, Any] = {"handover": True} if asked else {}
    env = {thin.HANDOVER_ENV: "1"} if env_on else {thin.HANDOVER_ENV: "0"}
    req = SimpleNamespace(raw=raw, env=env)
    return cast(helper.Control, SimpleNamespace(request=req, wants_handover=lambda: _wants(req)))


def _wants(req: Any) -> bool:
    fake = helper.Control.__new__(helper.Control)
    fake.request = req
    return fake.wants_handover()


def settings(**changes: Any) -> KernelSettings:
    return KernelSettings.from_dict({"image": "img:1", **changes})


def test_a_local_engines_kernel_qualifies() -> None:
    assert hosting.qualifies(control(), settings(), LocalBackend(Engine()))


def test_a_copy_workdir_kernel_qualifies_its_copy_is_written_first() -> None:
    assert hosting.qualifies(control(), settings(workdir="copy"), LocalBackend(Engine()))


@pytest.mark.parametrize(
    ("copying", "stopping", "sent"),
    [("none", False, True), ("written", False, True), ("writing", False, False),
     ("written", True, False)],
)  # fmt: skip
def test_the_copy_counts_as_sent_only_when_written_whole_and_not_failed(
    copying: str, stopping: bool, sent: bool
) -> None:
    from jupyter_docker_kernel.container import Container

    release = threading.Event()
    container = Container.__new__(Container)
    container.stopping = stopping
    container._copying = None
    if copying != "none":
        container._copying = threading.Thread(target=release.wait, daemon=True)
        container._copying.start()
        if copying == "written":
            release.set()
    try:
        assert container.copy_sent(0.2) is sent
    finally:
        release.set()


@pytest.mark.parametrize(
    "case",
    ["not asked", "switched off", "cli backend", "node backend", "pod"],
)
def test_these_kernels_keep_todays_path(case: str) -> None:
    backend: Any = LocalBackend(Engine())
    ctl = control()
    spec = settings()
    if case == "not asked":
        ctl = control(asked=False)
    elif case == "switched off":
        ctl = control(env_on=False)
    elif case == "cli backend":
        backend = CliBackend(Engine())
    elif case == "node backend":
        from jupyter_docker_kernel.node_backend import SshBackend

        backend = SshBackend.__new__(SshBackend)
    else:
        spec = settings(kube_namespace="ns", workdir="none")
    assert not hosting.qualifies(ctl, spec, backend)


def test_a_signal_handler_still_runs_when_the_hand_over_could_not_be_sent() -> None:
    # No connection to send on: hand_over raises, and nothing was handed over.
    import asyncio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        req = helper.Request.parse(
            {"settings": "{}", "connection_file": "/x", "cwd": "/"}, os.getpid()
        )
        ctl = helper.Control(loop, req, lambda data: None)
        with pytest.raises(OSError, match="cannot carry descriptors"):
            ctl.hand_over({"name": "x"}, [])
        assert not ctl.handed_over
        with pytest.raises(ValueError, match="one key=value line"):
            ctl.hand_over({"name": "a\nb"}, [])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.mark.parametrize(
    "argv",
    [["--state", "s"], ["--state", "s", "--end", "e", "--lost"], ["--end", "e"], ["--lost"]],
)
def test_finish_wants_the_state_and_exactly_one_of_end_or_lost(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_docker_kernel import finish

    assert finish.main(argv) == 2
    assert "one of --end or --lost are required" in capsys.readouterr().err
    # Refused before it ignores SIGINT: this process (and what it starts) still takes it.
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def test_lost_with_an_unreadable_state_says_so_and_gives_the_unknown_code(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from jupyter_docker_kernel import finish

    assert finish.lost(str(tmp_path / "missing.json")) == finish.UNKNOWN_EXIT
    assert "could not clean up after a killed kernel client" in caplog.text
