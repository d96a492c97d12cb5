"""The resident helper and its thin client (issue 17), with fake runners: no Docker.

Every test runs real processes: thin clients as `python -c` children, and the helper as the
detached process a client spawns, with the runners below (the helper imports this module
by --runner tests.test_helper:NAME).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import helper, thin
from jupyter_docker_kernel.endpoints import Endpoint, adopt_listening

ROOT = str(Path(__file__).resolve().parent.parent)

# -- runners and janitors, run inside the helper process ----------------------------------


def echo(request: helper.Request, control: helper.Control) -> int:
    """Says which helper ran it, logs at DEBUG, returns the request's `code`."""
    control.write(f"helper {os.getpid()}")
    logging.getLogger("jupyter_docker_kernel.test").debug("a debug line")
    return int(request.raw.get("code", 0))


def hold(request: helper.Request, control: helper.Control) -> int:
    """Reports each forwarded signal; returns 5 after `signals` of them. On the client's
    EOF, writes the time to the `marker` file. `boom` raises instead."""
    control.accept()
    if request.raw.get("boom"):
        raise RuntimeError("boom: a runner's bug")
    seen: list[int] = []
    enough = threading.Event()

    def got(signum: int) -> None:
        seen.append(signum)
        control.write(f"signal {signum}")
        if len(seen) >= int(request.raw.get("signals", 1)):
            enough.set()

    def gone() -> None:
        marker = request.raw.get("marker")
        if marker:
            # Whole or not at all: the test reads it as soon as the name exists.
            Path(marker + ".tmp").write_text(f"{time.time()} {control.gone_reason}")
            os.replace(marker + ".tmp", marker)
        enough.set()

    control.on_signal(got)
    control.on_gone(gone)
    control.write(f"ready {os.getpid()}")
    enough.wait(60)
    return 5


def listening(request: helper.Request, control: helper.Control) -> int:
    """Says which listening sockets came with the request (channel=port), binds nothing,
    and holds the session until the client's first signal or its going away."""
    control.accept()
    done = threading.Event()
    control.on_signal(lambda signum: done.set())
    control.on_gone(done.set)
    got = ",".join(f"{name}={sock.getsockname()[1]}" for name, sock in request.listening.items())
    control.write(f"listening {got}")
    done.wait(60)
    return 0


def uses_ssl(request: helper.Request, control: helper.Control) -> int:
    """Imports ssl (as a Kubernetes kernel's client does) and says whether it works."""
    import ssl

    control.write(f"ssl {ssl.OPENSSL_VERSION}")
    return 0


def sweep(pid: int, start: str, env: dict[str, str] | None = None) -> None:
    """A janitor that leaves a file saying whom it swept after (not the start's sweep)."""
    if pid:
        Path(os.environ["JDK_TEST_SWEPT"]).write_text(f"{pid} {start}")


def sweep_env(pid: int, start: str, env: dict[str, str] | None = None) -> None:
    """A janitor that leaves, per pid, the engine variables it was given to sweep with."""
    if pid:
        used = os.environ if env is None else env
        names = ("DOCKER_CONFIG", "DOCKER_HOST", "JUPYTER_DOCKER_KERNEL_ENGINE")
        text = json.dumps({name: used.get(name) for name in names})
        Path(f"{os.environ['JDK_TEST_SWEPT']}.{pid}").write_text(text)


# -- the test side ------------------------------------------------------------------------

CLIENT = """
import json, sys
from jupyter_docker_kernel import thin
base, argv, extra = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
request = thin.request_for("{}", "/nonexistent/kernel.json")
request.update(extra)
code = thin.run(request, base, argv)
sys.exit(99 if code is None else code)
"""

FALLBACK_EXIT = 99


def helper_argv(base: Path, runner: str, idle: float = 30.0, janitor: str = "") -> list[str]:
    """How the clients below start the helper: this checkout's package and runners."""
    code = (
        f"import sys; sys.path[:0] = [{ROOT!r}]; "
        "from jupyter_docker_kernel import helper; sys.exit(helper.main(sys.argv[1:]))"
    )
    args = ["--base", str(base), "--engine", thin.engine_key(), "--runner", runner]
    args += ["--idle", str(idle)]
    # Not the real janitor (hosting.sweep is reaper.collect on the user's engine).
    args += ["--janitor", janitor or "jupyter_docker_kernel.helper:log_janitor"]
    return [sys.executable, "-c", code, *args]


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A private runtime base; its helper (if any) is ended at teardown."""
    path = tmp_path / "rt"
    path.mkdir(mode=0o700)
    yield path
    for pid in helper_pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def helper_pids(base: Path) -> set[int]:
    """Helper processes started for this base (their argv names it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        joined = b" ".join(argv)
        ours = b"helper.main" in joined or b"jupyter_docker_kernel.helper" in joined
        if ours and str(base).encode() in argv:
            found.add(int(entry.name))
    return found


def client(
    base: Path, runner: str = "tests.test_helper:echo", idle: float = 30.0, **extra: object
) -> subprocess.Popen[str]:
    argv = helper_argv(base, runner, idle)
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(base), json.dumps(argv), json.dumps(extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path])},
    )


def read_until(proc: subprocess.Popen[str], prefix: str) -> str:
    """The client's first stderr line that starts with prefix (its helper's runner wrote it)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"the client ended without a {prefix!r} line (exit {proc.wait()})")


def wait_for(predicate: object, timeout: float) -> float:
    """Seconds until predicate() was true; fails after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"not true within {timeout} s")


# -- tests ---------------------------------------------------------------------------------


def test_racing_clients_start_one_helper_and_get_their_exit_codes(base: Path) -> None:
    procs = [client(base, code=code) for code in (3, 4, 0, 7, 9)]
    outs = [proc.communicate(timeout=30) for proc in procs]
    assert [proc.returncode for proc in procs] == [3, 4, 0, 7, 9], outs
    pids = {line for _, err in outs for line in err.splitlines() if line.startswith("helper ")}
    assert len(pids) == 1, outs
    (pid,) = helper_pids(base)
    # Detached: a kernel manager's killpg of a client's process group cannot reach it.
    # (the clients ran in this test's session and process group)
    assert os.getsid(pid) != os.getsid(0)
    assert os.getpgid(pid) != os.getpgid(0)
    sock = base / thin.socket_name(thin.engine_key())
    assert sock.is_socket()
    assert sock.stat().st_mode & 0o777 == 0o600


def test_signals_reach_the_runner_in_the_order_they_came(base: Path) -> None:
    proc = client(base, "tests.test_helper:hold", signals=4)
    read_until(proc, "ready")
    sent = [signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGINT]
    for signum in sent:
        proc.send_signal(signum)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 5, err
    assert [line for line in err.splitlines() if line.startswith("signal")] == [
        f"signal {int(s)}" for s in sent
    ]


def test_a_killed_client_stops_its_session_within_a_second(base: Path, tmp_path: Path) -> None:
    marker = tmp_path / "gone"
    proc = client(base, "tests.test_helper:hold", marker=str(marker))
    read_until(proc, "ready")
    proc.kill()
    killed = time.time()
    proc.communicate()
    wait_for(marker.exists, 1.0)
    when, reason = marker.read_text().split(" ", 1)
    assert float(when) - killed < 1.0
    assert reason == "client gone"


def test_a_killed_helper_ends_its_clients_with_a_message_within_a_second(base: Path) -> None:
    proc = client(base, "tests.test_helper:hold")
    pid = int(read_until(proc, "ready").split()[1])
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    _, err = proc.communicate(timeout=5)
    assert time.monotonic() - start < 1.0
    assert proc.returncode == thin.LOST_EXIT
    assert f"the resident helper (pid {pid}) went away" in err
    # Its socket file stayed behind, refusing connections: the next client starts a helper.
    again = client(base)
    _, err = again.communicate(timeout=30)
    assert again.returncode == 0, err
    assert f"helper {pid}" not in err


def test_the_helper_exits_when_idle_and_removes_its_socket(base: Path) -> None:
    proc = client(base, idle=0.3)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pid = int(err.split("helper ", 1)[1].split()[0])
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5.0)
    assert not (base / thin.socket_name(thin.engine_key())).exists()
    # The next client starts a new one.
    again = client(base, idle=0.3)
    again.communicate(timeout=30)
    assert again.returncode == 0


def test_debug_lines_reach_only_the_clients_that_asked(base: Path) -> None:
    quiet, loud = client(base), client(base, debug=True)
    _, quiet_err = quiet.communicate(timeout=30)
    _, loud_err = loud.communicate(timeout=30)
    assert "a debug line" not in quiet_err
    assert "a debug line" in loud_err
    assert "DockerKernel] a debug line" in loud_err  # in the launcher's log format
    logs = "".join(p.read_text() for p in base.glob("helper-*.log"))
    assert "a debug line" not in logs  # the helper itself was not started with debug


def test_a_stopped_helper_stops_its_sessions_and_reports_their_codes(
    base: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "gone"
    proc = client(base, "tests.test_helper:hold", marker=str(marker))
    pid = int(read_until(proc, "ready").split()[1])
    os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 5, err
    assert marker.read_text().endswith("helper stopping")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5.0)


def test_a_client_of_another_version_retires_the_helper(base: Path) -> None:
    first = client(base)
    _, err = first.communicate(timeout=30)
    pid = int(err.split("helper ", 1)[1].split()[0])
    # An upgraded client: the old helper stops listening and exits (it has no sessions);
    # the new helper this client starts speaks its version (here: neither does; fallback).
    newer = client(base, version="0.0.newer")
    newer.communicate(timeout=30)
    assert newer.returncode == FALLBACK_EXIT
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5.0)


def test_a_runner_that_raises_fails_only_its_own_session(base: Path) -> None:
    steady = client(base, "tests.test_helper:hold")
    read_until(steady, "ready")
    broken = client(base, "tests.test_helper:hold", boom=True)
    _, err = broken.communicate(timeout=10)
    assert broken.returncode == 1
    assert "failed in the helper" in err
    assert "RuntimeError: boom" in err
    steady.send_signal(signal.SIGTERM)
    _, err = steady.communicate(timeout=10)
    assert steady.returncode == 5, err
    logs = "".join(p.read_text() for p in base.glob("helper-*.log"))
    assert "failed in the helper" in logs


def test_the_default_runner_refuses_so_the_launcher_runs_in_process(base: Path) -> None:
    proc = client(base, "jupyter_docker_kernel.helper:refuse")
    proc.communicate(timeout=30)
    assert proc.returncode == FALLBACK_EXIT


def test_the_launchers_argv_starts_the_real_helper_whose_runner_refuses_a_missing_file(
    tmp_path: Path,
) -> None:
    # The whole default path: private_base() from XDG_RUNTIME_DIR, spawn_argv's
    # `python -I -m jupyter_docker_kernel.helper`, the default runner (hosting.run_kernel)
    # refusing a connection file it cannot read: the launcher says so in-process.
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    base = xdg / "jupyter-docker-kernel"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg), "JUPYTER_DOCKER_KERNEL_SETTINGS": "{}"}
    env.pop(thin.NO_HELPER_ENV, None)
    code = "import sys; from jupyter_docker_kernel import thin; print(thin.main(sys.argv[1:]))"
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code, "-f", "/nonexistent/kernel.json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.stdout.strip() == "None", proc.stderr
        assert base.stat().st_mode & 0o777 == 0o700
        (pid,) = helper_pids(base)
        assert b"-I" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        # Run as __main__, it still logs as jupyter_docker_kernel.helper, to its file.
        (log,) = base.glob("helper-*.log")
        assert f"helper {pid} serving" in log.read_text()
    finally:
        for pid in helper_pids(base):
            os.kill(pid, signal.SIGKILL)


def test_no_helper_when_it_is_switched_off_or_cannot_start(base: Path) -> None:
    env = {**os.environ, thin.NO_HELPER_ENV: "1"}
    off = subprocess.run(
        [sys.executable, "-c", CLIENT, str(base), json.dumps(["/bin/false"]), "{}"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert off.returncode == FALLBACK_EXIT
    start = time.monotonic()
    broken = subprocess.run(
        [sys.executable, "-c", CLIENT, str(base / "missing"), json.dumps(["/bin/false"]), "{}"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert broken.returncode == FALLBACK_EXIT
    assert time.monotonic() - start < thin.SPAWN_WAIT + 2


def test_a_helper_refuses_a_kernel_of_another_engine(base: Path) -> None:
    # The client's engine scan and the helper's json disagree: run it in-process instead.
    settings = json.dumps({"engine_host": "tcp://elsewhere:2375"})
    proc = client(base, settings=settings)
    proc.communicate(timeout=30)
    assert proc.returncode == FALLBACK_EXIT


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("{}", ""),
        ('{"image": "x", "engine_host": null}', ""),
        ('{"engine_host": "ssh://me@node"}', "ssh://me@node"),
        (
            '{"engine_host":"unix:///run/podman/podman.sock","pool":1}',
            "unix:///run/podman/podman.sock",
        ),
        ('{\n  "engine_host" :  "tcp://h:2376"\n}', "tcp://h:2376"),
        ('{"env": {"X": "\\"engine_host\\": \\"tcp://fake:1\\""}}', ""),
    ],
)
def test_engine_host_is_found_without_json(text: str, host: str) -> None:
    assert thin.engine_host(text) == host
    assert (json.loads(text).get("engine_host") or "") == host


def test_the_request_line_is_json() -> None:
    request = {
        "s": 'quote " backslash \\ newline \n tab \t nul \0 del \x7f ünïcode 😀',
        "n": -3,
        "t": True,
        "f": False,
        "z": None,
        "env": {"A": "1", "B=": ""},
    }
    assert json.loads(thin._dumps(request)) == request


@pytest.mark.parametrize(
    ("argv", "env", "parsed"),
    [
        (["-f", "/c.json"], "{}", ("{}", "/c.json", False)),
        (["--connection-file=/c.json", "--debug", "a.py"], "{}", ("{}", "/c.json", True)),
        (["--settings", '{"a": 1}', "-f", "/c.json"], "", ('{"a": 1}', "/c.json", False)),
        (["-f", "/c.json"], "", None),  # no settings: the launcher prints its usage
        (["--help"], "{}", None),
        (["-f"], "{}", None),
        (["--unknown", "-f", "/c.json"], "{}", None),
    ],
)
def test_the_thin_client_parses_only_the_usual_argv(
    argv: list[str],
    env: str,
    parsed: tuple[str, str, bool] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JUPYTER_DOCKER_KERNEL_DEBUG", raising=False)
    monkeypatch.setenv("JUPYTER_DOCKER_KERNEL_SETTINGS", env)
    assert thin.parse_argv(argv) == parsed


def test_a_janitor_client_gets_its_sweep_when_it_closes(base: Path, tmp_path: Path) -> None:
    swept = tmp_path / "swept"
    argv = helper_argv(base, "tests.test_helper:echo", janitor="tests.test_helper:sweep")
    code = (
        "import json, sys, time; from jupyter_docker_kernel import thin; "
        "s = thin.register_janitor(sys.argv[1], thin.engine_key(), 4242, 'start-1', "
        "json.loads(sys.argv[2])); print('registered' if s else 'none', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(base), json.dumps(argv)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT, "JDK_TEST_SWEPT": str(swept)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "registered"
    time.sleep(0.2)
    assert not swept.exists()
    proc.kill()
    proc.communicate()
    wait_for(swept.exists, 1.0)
    assert swept.read_text() == "4242 start-1"


JANITOR = (
    "import json, sys, time; from jupyter_docker_kernel import thin; "
    "s = thin.register_janitor(sys.argv[1], sys.argv[4], int(sys.argv[3]), 'start', "
    "json.loads(sys.argv[2])); print('registered' if s else 'none', flush=True); "
    "time.sleep(60)"
)


def test_each_janitor_client_is_swept_with_its_own_environment(base: Path, tmp_path: Path) -> None:
    """Two janitor clients of one helper, with different DOCKER_CONFIG: each one's sweep
    gets its own (the first one's spawned the helper), its engine variables pointed at
    the helper's engine (a Jupyter server's DOCKER_HOST need not be its kernels')."""
    swept = tmp_path / "swept"
    argv = helper_argv(base, "tests.test_helper:echo", janitor="tests.test_helper:sweep_env")
    engine = thin.engine_key()  # the helper's, which the clients' DOCKER_HOST is not
    procs = []
    for pid, config in ((4242, "/config-a"), (4343, "/config-b")):
        env = {**os.environ, "PYTHONPATH": ROOT, "JDK_TEST_SWEPT": str(swept)}
        env |= {"DOCKER_CONFIG": config, "DOCKER_HOST": "unix:///elsewhere.sock"}
        proc = subprocess.Popen(
            [sys.executable, "-c", JANITOR, str(base), json.dumps(argv), str(pid), engine],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "registered"
    for proc in reversed(procs):  # the helper's spawner last
        proc.kill()
        proc.communicate()
    command, _, address = engine.rpartition(" ")
    for pid, config in ((4242, "/config-a"), (4343, "/config-b")):
        path = Path(f"{swept}.{pid}")
        wait_for(path.exists, 2.0)
        assert json.loads(path.read_text()) == {
            "DOCKER_CONFIG": config,
            "DOCKER_HOST": address or None,
            "JUPYTER_DOCKER_KERNEL_ENGINE": command,
        }


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (the kernel picks them, as jupyter_client does)."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def bindable(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def test_a_kernels_endpoints_listen_before_its_runner_binds_anything(
    base: Path, tmp_path: Path
) -> None:
    """Issue 17: a Jupyter client connects right after it started the launcher, and
    ZeroMQ retries a refused connection only 100-200 ms later; that wait was most of a
    pooled argv start. The thin client binds the connection file's endpoints before it
    even reaches the helper and hands them over with its request, so the client's
    connection waits in the backlog. This runner binds nothing, yet every endpoint
    accepts; when the session ends, the helper lets go of them."""
    ports = free_ports(len(thin.CHANNELS))
    connection = tmp_path / "kernel-1.json"
    info: dict[str, object] = {
        f"{channel}_port": port for channel, port in zip(thin.CHANNELS, ports, strict=True)
    }
    info |= {"transport": "tcp", "ip": "127.0.0.1", "key": "k", "kernel_name": "x"}
    connection.write_text(json.dumps(info, indent=1))
    proc = client(base, "tests.test_helper:listening", connection_file=str(connection))
    line = read_until(proc, "listening")
    expected = [f"{channel}={port}" for channel, port in zip(thin.CHANNELS, ports, strict=True)]
    assert line == f"listening {','.join(expected)}"
    for port in ports:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 0
    wait_for(lambda: all(bindable(port) for port in ports), 5.0)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (
            '{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, '
            '"hb_port": 5, "ip": "127.0.0.1", "transport": "tcp", "key": "a\\"ip\\": \\"x"}',
            ("127.0.0.1", [1, 2, 3, 4, 5]),
        ),
        (
            '{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, '
            '"hb_port": 5, "ip": "::1", "transport": "tcp"}',
            ("::1", [1, 2, 3, 4, 5]),
        ),
        # ipc, a host name, a missing port: the helper binds as before.
        (
            '{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, '
            '"hb_port": 5, "ip": "kernel-ipc", "transport": "ipc"}',
            None,
        ),
        (
            '{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, '
            '"hb_port": 5, "ip": "localhost", "transport": "tcp"}',
            None,
        ),
        (
            '{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, '
            '"ip": "127.0.0.1", "transport": "tcp"}',
            None,
        ),
    ],
)
def test_the_thin_client_reads_tcp_endpoints_without_json(
    text: str, found: tuple[str, list[int]] | None
) -> None:
    assert thin.endpoints_of(text) == found


def test_only_a_socket_listening_on_the_endpoint_is_adopted() -> None:
    right = socket.create_server(("127.0.0.1", 0))
    port = right.getsockname()[1]
    assert adopt_listening(right, Endpoint("tcp", "127.0.0.1", port)) is right
    wrong = socket.create_server(("127.0.0.1", 0))
    assert adopt_listening(wrong, Endpoint("tcp", "127.0.0.1", port)) is None
    assert wrong.fileno() == -1  # closed: the caller binds the endpoint itself
    right.close()


def test_peer_uid_check() -> None:
    assert helper.peer_allowed(1000, 1000)
    assert not helper.peer_allowed(0, 1000)
    assert not helper.peer_allowed(1001, 1000)
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert helper.peer_credentials(left) == (os.getpid(), os.getuid(), os.getgid())


#: A Python that user `nobody` may run (the venv's may sit below a private home).
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.getuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to connect as another user) and a system Python",
)
def test_a_client_of_another_uid_is_refused(base: Path) -> None:
    proc = client(base)
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    sock = base / thin.socket_name(thin.engine_key())
    # A second name for the socket, opened up on purpose (the runtime base is 0700, below
    # pytest's private dir), so that only SO_PEERCRED stands between `nobody` and us.
    opened = Path(tempfile.mkdtemp(prefix="jdk-test-helper-"))
    opened.chmod(0o711)
    os.link(sock, opened / "s")
    os.chmod(opened / "s", 0o666)  # noqa: S103 - the point of this test
    code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "print(s.recv(100).decode())"
    )
    other = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", code, str(opened / "s")],
        user=65534,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    shutil.rmtree(opened)
    assert other.stdout.strip() == "R not your helper", other.stderr


#: Shared objects a helper must not map: ssl's and OpenSSL's hashlib's (libssl,
#: libcrypto), the compression modules shutil imports (see jupyter_docker_kernel._lean).
NOT_IN_THE_HELPER = ("/_ssl.", "/_hashlib.", "libssl", "libcrypto", "/_bz2.", "/_lzma.")


def test_the_helper_as_clients_spawn_it_maps_no_openssl_or_compression_library(
    base: Path,
) -> None:
    """Issue 17: the helper is one kernel's whole plumbing when one runs, so it leaves out
    what it never uses: started as a thin client starts it (thin.spawn_argv, its default
    runner and janitor imported, its start sweep run), it maps none of those libraries
    (about 5 MiB of RSS: 26.4 -> 21.5 MiB with one kernel, measured)."""
    engine = "docker unix:///nonexistent/jdk-test.sock"  # the start sweep fails: no engine
    proc = subprocess.Popen(
        thin.spawn_argv(str(base), engine),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, helper.IDLE_ENV: "30"},
    )
    try:
        sock = base / thin.socket_name(engine)
        wait_for(sock.is_socket, 30)
        log = sock.with_suffix(".log")
        wait_for(lambda: "janitor: could not sweep" in log.read_text(), 30)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert [lib for lib in NOT_IN_THE_HELPER if lib in maps] == []
    finally:
        proc.kill()
        proc.wait()


def test_a_runner_in_the_helper_can_still_import_ssl(base: Path) -> None:
    """What the helper left out at its start loads when a runner asks for it (a
    Kubernetes kernel's client needs ssl)."""
    code = (
        f"import sys; sys.path[:0] = [{ROOT!r}]; import runpy; "
        "runpy.run_module('jupyter_docker_kernel.helper', run_name='__main__', alter_sys=True)"
    )
    argv = [sys.executable, "-c", code, "--base", str(base), "--engine", thin.engine_key()]
    argv += ["--runner", "tests.test_helper:uses_ssl"]
    argv += ["--janitor", "jupyter_docker_kernel.helper:log_janitor"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(base), json.dumps(argv), "{}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *sys.path])},
    )
    assert read_until(proc, "ssl ").startswith("ssl OpenSSL")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
