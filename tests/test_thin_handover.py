"""The compiled client after a hand-over (thin_handover.c; issue 17's build plan).

No docker: a fake helper listens where thin.paths names it, accepts the compiled client's
request, answers `A` and hands over with `H` and real descriptors (socketpairs for the
lifeline and the exit watch, a socket dir with Python stand-ins of the kernel's sockets,
listeners on 127.0.0.1, the kept log), then closes. A fake engine API on a unix socket
records the client's calls; the fake finish (PYTHON-ARGV) records its argv and the
descriptors it inherited.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import helper, rundir, thin, thin_client

#: The kernel stand-ins' greeting: ZMTP 3.0, NULL mechanism, then a READY command.
GREETING = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
READY = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER"
HELLO = GREETING + bytes([4, len(READY)]) + READY
CONTAINER = "jdk-test-handover"
CONTAINER_ID = "0123456789ab"
API = "/v1.41"

FAKE_FINISH = """\
import json, os, stat, sys
fds = {}
for fd in range(3, 256):
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        continue
    fds[fd] = "socket" if stat.S_ISSOCK(mode) else oct(mode)
with open(os.environ["FAKE_FINISH_OUT"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "fds": fds}, fh)
with open(os.environ["FAKE_FINISH_OUT"] + ".runs", "a") as fh:  # every run, one line each
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(5)
"""


@pytest.fixture(scope="module")
def binary() -> Path:
    built, why = thin_client.ensure()
    assert built is not None, why
    return built


def wait_until(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class UnixServer:
    """A listening unix socket; each connection is served by `handle`, in a thread of its
    own (inline: one after the other, in the accepting thread)."""

    inline = False

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(8)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.inline:
                self.run(conn)
            else:
                threading.Thread(target=self.run, args=(conn,), daemon=True).start()

    def run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class FakeEngine(UnixServer):
    """The engine API on a unix socket: records `METHOD PATH` of each request, answers 204;
    a removal (DELETE) makes the exit watch readable, as the container's end would."""

    inline = True

    def __init__(self, path: str, on_delete: Callable[[], None]) -> None:
        self.calls: list[str] = []
        self.on_delete = on_delete
        super().__init__(path)

    def handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        method, path = data.split(b" ")[:2]
        self.calls.append(f"{method.decode()} {path.decode()}")
        conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        if method == b"DELETE":
            self.on_delete()


class KernelStandIn(UnixServer):
    """One kernel socket: greets each connection as a ZMTP 3 peer, then sends every chunk
    it gets back as one ZMTP message frame (so the relay's meter lets it through)."""

    def handle(self, conn: socket.socket) -> None:
        conn.sendall(HELLO)
        while chunk := conn.recv(200):
            conn.sendall(bytes([0, len(chunk)]) + chunk)


class Session:
    """One compiled client handed over by a fake helper; see the module doc."""

    def __init__(self, binary: Path, python_argv: list[str], **fields: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ho-", dir=os.environ.get("TMPDIR", "/tmp")))
        runtime = self.tmp / "run"
        runtime.mkdir(mode=0o700)
        base = runtime / "jupyter-docker-kernel"
        base.mkdir(mode=0o700)
        self.state_dir = self.tmp / "state"
        self.state_dir.mkdir()
        self.state = self.state_dir / "handover.json"
        self.sockets = self.tmp / "s"
        self.sockets.mkdir()
        self.names = [f"k-{i}" for i in range(1, 6)]
        self.kernels = [KernelStandIn(str(self.sockets / n)) for n in self.names]
        self.listeners = []
        for _ in range(5):
            lst = socket.socket()
            lst.bind(("127.0.0.1", 0))
            lst.listen(8)
            self.listeners.append(lst)
        self.ports = [lst.getsockname()[1] for lst in self.listeners]
        self.lifeline, lifeline_c = socket.socketpair()
        self.exit_watch, exit_c = socket.socketpair()
        self.engine = FakeEngine(str(self.tmp / "engine.sock"), self.container_exits)
        self.kept = self.tmp / "kept.log"
        self.kept.write_bytes(b"before the hand-over\n")
        self.fields = {
            "name": CONTAINER,
            "id": CONTAINER_ID,
            "kernel_id": "kid",
            "state": str(self.state),
            "max_message": "1000000",
            "output_budget": "100000000",
            "max_lifetime": "86400",
            "lifetime_left": "86400",
            "client_pid": "0",
            "client_start": "",
            "engine_socket": str(self.engine.listener.getsockname()),
            "api_prefix": API,
            "forward_limit": str(4 << 20),
            "tail_keep": str(64 << 10),
            "first_reply_bytes": "100",
            "kernel_sockets": ",".join(self.names),
            "allowed": ",".join(self.names),
            "debug": "0",
            "a_later_key": "ignored",
            **fields,
        }
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(self.tmp)),
            "XDG_RUNTIME_DIR": str(runtime),
            "LANG": "C.UTF-8",
            "JUPYTER_DOCKER_KERNEL_SETTINGS": json.dumps({"image": "x"}),
            thin.HANDOVER_ENV: "1",
            "FAKE_FINISH_OUT": str(self.tmp / "finish.json"),
        }
        self.helper_path = thin.paths(str(base), thin.engine_key("{}", self.env))[0]
        self.helper = helper.bind(self.helper_path)
        self.request = b""
        self.after_h = b""
        self.helper_closed = threading.Event()
        kept_fd = os.open(self.kept, os.O_WRONLY | os.O_APPEND)
        dir_fd = os.open(self.sockets, os.O_PATH | os.O_DIRECTORY)
        fds = [lifeline_c.fileno(), exit_c.fileno(), dir_fd, kept_fd]
        fds += [lst.fileno() for lst in self.listeners]
        thread = threading.Thread(target=self.hand_over, args=(fds,), daemon=True)
        thread.start()
        self.proc = subprocess.Popen(
            [str(binary), str(len(python_argv)), *python_argv, "-f", "/k.json"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        thread.join(10)
        # Every copy of what was handed over is the client's alone now (a SIGKILL of it
        # must end the kernel through the lifeline).
        for fd in (dir_fd, kept_fd):
            os.close(fd)
        for sock in (lifeline_c, exit_c, *self.listeners):
            sock.close()

    def hand_over(self, fds: list[int]) -> None:
        conn, _ = self.helper.accept()
        self.helper.close()
        data = b""
        while b"\n" not in data:
            data += conn.recv(65536)
        self.request = data.partition(b"\n")[0]
        body = "".join(f"{k}={v}\n" for k, v in self.fields.items()).encode()
        conn.sendall(b"A 4242\n")
        socket.send_fds(conn, [b"H %d\n" % len(body) + body + b"E the start line\n"], fds)
        threading.Thread(target=self.read_after_h, args=(conn,), daemon=True).start()

    def read_after_h(self, conn: socket.socket) -> None:
        """What the client sends after H (the R byte), for up to 2 s after the first
        byte; then the helper closes, as a real one does once the gate is open."""
        with conn:
            conn.settimeout(30)
            try:
                self.after_h += conn.recv(16)
                conn.settimeout(2)
                while chunk := conn.recv(16):
                    self.after_h += chunk
            except OSError:
                pass
        self.helper_closed.set()

    def container_exits(self) -> None:
        """The exit watch's response arrives, and the supervisor's end closes the lifeline."""
        self.exit_watch.sendall(b'HTTP/1.1 200 OK\r\n\r\n{"StatusCode":0}')
        with contextlib.suppress(OSError):
            self.lifeline.shutdown(socket.SHUT_WR)

    def finish(self, timeout: float = 15) -> tuple[int, str, dict[str, Any], dict[str, str]]:
        """(exit code, stderr, the fake finish's record, handover-end's fields)."""
        _, err = self.proc.communicate(timeout=timeout)
        record = json.loads((self.tmp / "finish.json").read_text())
        end = (self.state_dir / "handover-end").read_text()
        fields = dict(line.split("=", 1) for line in end.splitlines())
        return self.proc.returncode, err.decode(errors="replace"), record, fields

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for closing in (self.lifeline, self.exit_watch, self.engine.listener):
            closing.close()
        for kernel in self.kernels:
            kernel.listener.close()


@pytest.fixture
def fake_finish(tmp_path: Path) -> str:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n{FAKE_FINISH}")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def session_of(binary: Path, fake_finish: str) -> Iterator[Callable[..., Session]]:
    made: list[Session] = []

    def make(python_argv: list[str] | None = None, **fields: str) -> Session:
        made.append(Session(binary, python_argv or [fake_finish], **fields))
        return made[-1]

    yield make
    for session in made:
        session.close()


def talk(port: int, data: bytes, want: int) -> bytes:
    """Connect to a relayed listener, send data, read until want bytes came."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        got = b""
        while len(got) < want:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_the_handover_request_is_thin_pys_with_handover_true_last(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: s.request)
    code = (
        "import sys; from jupyter_docker_kernel import thin; sys.stdout.write(thin._dumps("
        "thin.request_for(sys.argv[1], '/k.json', handover=True)))"
    )
    env = {**s.env, "PYTHONPATH": str(Path(thin.__file__).parents[1])}
    python = subprocess.run(
        [sys.executable, "-c", code, env["JUPYTER_DOCKER_KERNEL_SETTINGS"]],
        env=env, capture_output=True, check=True, cwd=os.getcwd(),
    ).stdout  # fmt: skip
    assert s.request == python
    assert s.request.endswith(b', "handover": true}')


def test_the_relay_serves_after_the_helper_closed_and_r_is_sent_once(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    got = talk(s.ports[0], b"ping", len(HELLO) + 6)
    assert got == HELLO + b"\x00\x04ping"
    assert s.helper_closed.wait(10)
    assert s.after_h == b"R"
    # the helper is gone: the relay goes on by itself, and no second R is attempted
    assert talk(s.ports[4], b"beat", len(HELLO) + 6) == HELLO + b"\x00\x04beat"


def test_no_r_before_first_reply_bytes_went_to_the_host(
    session_of: Callable[..., Session],
) -> None:
    s = session_of(first_reply_bytes="100000")
    talk(s.ports[0], b"ping", len(HELLO) + 6)
    time.sleep(0.3)
    assert s.after_h == b""


def test_sigint_kills_with_sigint_through_the_engine_and_is_remembered(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: watchers_of(s))  # handed over: it serves the signals now
    s.proc.send_signal(signal.SIGINT)
    wait_until(lambda: s.engine.calls)
    assert s.engine.calls == [f"POST {API}/containers/{CONTAINER_ID}/kill?signal=SIGINT"]
    s.container_exits()
    _code, err, _, end = s.finish()
    assert "interrupt: sending SIGINT to the kernel in jdk-test-handover" in err
    assert 0 <= float(end["interrupted_ago"]) < 5
    assert (end["reason"], end["stopping"]) == ("", "0")


def test_sigterm_removes_the_container_once_and_its_reason_reaches_the_end(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: watchers_of(s))  # handed over
    s.proc.send_signal(signal.SIGTERM)
    s.proc.send_signal(signal.SIGHUP)
    _code, err, _, end = s.finish()
    assert s.engine.calls == [f"DELETE {API}/containers/{CONTAINER_ID}?force=1"]
    assert "terminate: removing container jdk-test-handover" in err
    assert (end["reason"], end["stopping"]) == ("stopped by the Jupyter client", "1")
    assert end["interrupted_ago"] == "-1"


def test_the_lifetime_stops_the_kernel(session_of: Callable[..., Session]) -> None:
    s = session_of(max_lifetime="5", lifetime_left="0.3")
    _code, _, _, end = s.finish()
    assert end["reason"] == "maximum lifetime of 5 s reached"
    assert s.engine.calls == [f"DELETE {API}/containers/{CONTAINER_ID}?force=1"]


def test_the_jupyter_client_gone_stops_the_kernel(session_of: Callable[..., Session]) -> None:
    client = subprocess.Popen(["sleep", "60"])
    start = rundir.process_start_time(client.pid)
    s = session_of(client_pid=str(client.pid), client_start=start)
    time.sleep(1.5)
    assert s.engine.calls == []  # alive: left alone
    client.kill()  # not reaped: a zombie, which is dead (rundir.alive)
    wait_until(
        lambda: rundir.process_start_time(client.pid) and not rundir.alive(str(client.pid), start)
    )
    _code, _, _, end = s.finish()
    assert end["reason"] == "the Jupyter client went away"
    client.wait()


def test_a_jupyter_client_gone_before_the_hand_over_stops_the_kernel(
    session_of: Callable[..., Session],
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # the helper then finds no start time for its pid: it sends none
    s = session_of(client_pid=str(gone.pid), client_start="")
    _code, _, _, end = s.finish()
    assert end["reason"] == "the Jupyter client went away"
    assert s.engine.calls == [f"DELETE {API}/containers/{CONTAINER_ID}?force=1"]


def test_a_file_in_the_socket_dir_kills_then_stops_the_kernel(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: watchers_of(s))  # handed over: the guard watches
    (s.sockets / "fill").write_bytes(b"x" * 100)
    _code, _err, _, end = s.finish()
    assert s.engine.calls == [
        f"POST {API}/containers/{CONTAINER_ID}/kill?signal=SIGKILL",
        f"DELETE {API}/containers/{CONTAINER_ID}?force=1",
    ]
    assert end["reason"].startswith(
        "the kernel wrote to its socket dir, where only its sockets belong (created 'fill'"
    )
    assert not (s.sockets / "fill").exists()


def test_the_end_writes_its_files_and_execs_the_finish_with_two_descriptors(
    session_of: Callable[..., Session], fake_finish: str
) -> None:
    s = session_of()
    s.lifeline.sendall(b"supervisor: hello\n\x1b[2Jworld")
    wait_until(lambda: b"world" in s.kept.read_bytes())
    s.lifeline.sendall(b"\nlast words\n")
    s.lifeline.close()  # the supervisor's end
    s.container_exits()
    code, err, record, end = s.finish()
    assert code == 5  # the finish's own
    state, end_path = str(s.state), str(s.state_dir / "handover-end")
    from jupyter_docker_kernel import hostpython
    from jupyter_docker_kernel.thin_client import FINISH_MODULE

    finish_code = hostpython.safe_path_argv("", FINISH_MODULE)[2]
    assert record["argv"] == ["-c", finish_code, "--state", state, "--end", end_path]
    exit_fd, iopub_fd = int(end["exit_fd"]), int(end["iopub_fd"])
    assert record["fds"] == {str(exit_fd): "socket", str(iopub_fd): "socket"}
    assert (s.state_dir / "said").read_bytes() == b"supervisor: hello\n\x1b[2Jworld\nlast words\n"
    assert (s.state_dir / "execute").read_bytes() == b""
    assert oct(os.stat(s.state_dir / "handover-end").st_mode & 0o777) == "0o600"
    assert set(end) >= {"bytes_to_host", "bytes_to_kernel", "output_charged", "iopub_lost"}
    assert f"{CONTAINER}| supervisor: hello\n{CONTAINER}| \\x1b[2Jworld\n" in err
    assert f"{CONTAINER}| last words\n" in err
    assert "the start line\n" in err
    assert (
        s.kept.read_bytes()
        == b"before the hand-over\nsupervisor: hello\n\x1b[2Jworld\nlast words\n"
    )


def test_an_isolated_python_argv_runs_the_finish_module(
    session_of: Callable[..., Session], fake_finish: str
) -> None:
    s = session_of([fake_finish, "-I"])
    s.container_exits()
    _code, _, record, _ = s.finish()
    assert record["argv"][:3] == ["-I", "-m", "jupyter_docker_kernel.finish"]
    assert record["argv"][3:5] == ["--state", str(s.state)]


def test_a_finish_that_cannot_run_is_lost_exit_with_a_reason(
    session_of: Callable[..., Session], tmp_path: Path
) -> None:
    s = session_of([str(tmp_path / "no-python")])
    s.container_exits()
    _, err = s.proc.communicate(timeout=15)
    assert s.proc.returncode == thin.LOST_EXIT
    assert b"cannot run" in err
    assert b"no-python" in err


def test_the_kernels_output_past_forward_limit_is_kept_but_not_forwarded(
    session_of: Callable[..., Session],
) -> None:
    s = session_of(forward_limit="100", tail_keep="1000")
    s.lifeline.sendall(b"a" * 150)
    wait_until(lambda: s.kept.stat().st_size >= 150)
    s.lifeline.sendall(b"b" * 3000)
    wait_until(lambda: s.kept.read_bytes().endswith(b"b" * 1000))
    s.container_exits()
    _, err, _, _ = s.finish()
    assert "kernel's own stdout/stderr exceeded 100 bytes; dropping the rest" in err
    forwarded = "".join(line for line in err.splitlines(True) if line.startswith(CONTAINER))
    # forward_limit bytes of log lines, the cut one ended by a newline (kernel_log.forward's)
    assert forwarded == (f"{CONTAINER}| " + "a" * 150)[:100] + "\n"
    assert s.kept.read_bytes() == b"b" * 1000  # cut to tail_keep past 2 * tail_keep


def test_the_handed_over_client_stays_small(session_of: Callable[..., Session]) -> None:
    s = session_of()
    for port in s.ports:
        talk(port, b"x" * 100, len(HELLO) + 102)
    status = Path(f"/proc/{s.proc.pid}/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    print(f"handed-over client RSS: {rss} kB")
    assert rss < 5 * 1024


def test_a_relay_violation_removes_the_container_with_the_relays_reason(
    session_of: Callable[..., Session],
) -> None:
    s = session_of(max_message="50")
    with contextlib.suppress(OSError):
        talk(s.ports[0], b"y" * 100, len(HELLO) + 102)  # echoed as one 100-byte message
    _, _, _, end = s.finish()
    assert s.engine.calls == [f"DELETE {API}/containers/{CONTAINER_ID}?force=1"]
    assert end["reason"].startswith(("budget exceeded: ", "protocol refused: ")), end["reason"]
    assert end["stopping"] == "1"


def test_a_killed_client_closes_the_lifeline_it_alone_holds(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: watchers_of(s))  # handed over
    s.proc.kill()
    s.lifeline.settimeout(5)
    assert s.lifeline.recv(1) == b""  # EOF: the supervisor ends the kernel


def test_the_binarys_key_covers_every_included_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = []
    for path in thin_client.INCLUDED:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(thin_client, "INCLUDED", tuple(copies))
    header = thin_client.config_header()
    before = thin_client.binary_path(header)
    for copy in copies:
        copy.write_bytes(copy.read_bytes() + b"\n")
        after = thin_client.binary_path(header)
        assert after != before, copy.name
        before = after


def test_a_missing_included_source_fails_the_build_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    missing = tmp_path / "thin_relay.c"
    monkeypatch.setattr(thin_client, "INCLUDED", (*thin_client.INCLUDED[:1], missing))
    built, why = thin_client.ensure()
    assert built is None
    assert why == "thin_client.c cannot be built: thin_relay.c missing next to it"


def watchers_of(s: Session) -> list[str]:
    """The pids of this session's watcher, once re-exec'd (its argv names the state file)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline.startswith(b"jupyter-docker-kernel-watch\0" + bytes(s.state)):
                found.append(pid)
    return found


def finish_runs(s: Session) -> list[list[str]]:
    """The argv of every run of the fake finish in this session, in order."""
    runs = s.tmp / "finish.json.runs"
    return [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []


def test_a_killed_client_leaves_a_watcher_that_runs_the_finish_in_lost_mode(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: watchers_of(s))  # handed over, the watcher started
    s.proc.kill()
    s.proc.wait()
    wait_until(lambda: finish_runs(s), 10)
    from jupyter_docker_kernel import hostpython
    from jupyter_docker_kernel.thin_client import FINISH_MODULE

    finish_code = hostpython.safe_path_argv("", FINISH_MODULE)[2]
    assert finish_runs(s) == [["-c", finish_code, "--state", str(s.state), "--lost"]]
    # nothing of the kernel's: no lifeline, listener or exit watch
    assert json.loads((s.tmp / "finish.json").read_text())["fds"] == {}


def test_a_client_that_ends_the_kernel_itself_sends_its_watcher_away(
    session_of: Callable[..., Session],
) -> None:
    s = session_of()
    wait_until(lambda: len(watchers_of(s)) == 1)  # re-exec'd under its own name
    s.container_exits()
    s.finish()
    wait_until(lambda: not watchers_of(s), 5)
    time.sleep(0.5)  # a watcher that took the exec's EOF for a death would run it now
    assert [run[-2] for run in finish_runs(s)] == ["--end"]
