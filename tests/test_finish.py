"""A kernel handed over to the compiled client, and its end through finish.py, against a
real container (c-relay.md "Build plan" parts 2 and 3).

The helper is the real one (hosting.run_kernel) started as a client spawns it; the compiled
client is played by this test process: it asks for the hand-over, receives H and the nine
descriptors, sends R, ends the kernel, writes handover-end as thin_handover.c does and runs
`python -m jupyter_docker_kernel.finish` with the exit watch and the iopub listener.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

from jupyter_docker_kernel import thin
from jupyter_docker_kernel.engine import LABEL_LAUNCHER_PID, Engine
from jupyter_docker_kernel.kernelspec import SETTINGS_ENV
from tests.conftest import inspect
from tests.test_handover import FakeClient, running_helper

pytestmark = pytest.mark.docker

SRC = str(Path(__file__).resolve().parent.parent / "src")
KEY = b"finish-test-key"


@pytest.fixture
def real_helper(tmp_path: Path, kernel_name: str) -> Iterator[str]:
    """The real runner in a helper process of a private base (its socket path)."""
    with running_helper(tmp_path, "jupyter_docker_kernel.hosting:run_kernel") as path:
        yield path


def port_of(fd: int) -> int:
    """The port a listening descriptor is bound to (a dup is looked at and closed)."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return int(sock.getsockname()[1])


def kernel_request(kernel_name: str, connection_file: str, env_on: bool = True) -> bytes:
    """The compiled client's request (it asks for the hand-over), switched on or off."""
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / kernel_name / "kernel.json"
    settings = json.loads(spec.read_text())["env"][SETTINGS_ENV]
    raw = thin.request_for(settings, connection_file)
    raw["handover"] = True
    raw["env"] = {**raw["env"], thin.HANDOVER_ENV: "1" if env_on else "0"}  # type: ignore[dict-item]
    return json.dumps(raw).encode() + b"\n"


def test_a_handed_over_kernel_ends_through_finish_with_its_code_notice_and_removal(
    real_helper: str, kernel_name: str, workdir: Path, tmp_path: Path
) -> None:
    connection_file, info = write_connection_file(
        str(tmp_path / "kernel-finish-test.json"), ip="127.0.0.1", key=KEY
    )
    client = FakeClient(real_helper, kernel_request(kernel_name, connection_file))
    client.sock.settimeout(120)
    finish: subprocess.Popen[str] | None = None
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    try:
        lines: list[bytes] = []
        while not (line := client.line() or b"").startswith(b"H "):
            assert line, f"EOF before H: {lines}"
            lines.append(line)
        fields = dict(
            entry.split("=", 1) for entry in client.body(int(line[2:])).decode().splitlines()
        )
        # The design's fields, this client as the launcher, unversioned API paths.
        assert fields["name"].startswith("jdk-")
        assert fields["kernel_sockets"] == "k-1,k-2,k-3,k-4,k-5"
        assert set(fields["kernel_sockets"].split(",")) < set(fields["allowed"].split(","))
        assert fields["launcher_pid"] == str(os.getpid())
        assert fields["api_prefix"] == ""
        assert 0 < float(fields["lifetime_left"]) <= float(fields["max_lifetime"]) + 5
        assert stat.S_ISSOCK(os.stat(fields["engine_socket"]).st_mode)
        state = json.loads(Path(fields["state"]).read_text())
        assert state["name"] == fields["name"]
        assert state["launcher_pid"] == os.getpid()
        # The nine descriptors in the table's order.
        assert len(client.fds) == 9
        lifeline, exit_fd, dir_fd, log_fd, *listeners = client.fds
        assert stat.S_ISSOCK(os.fstat(lifeline).st_mode)
        assert stat.S_ISSOCK(os.fstat(exit_fd).st_mode)
        assert stat.S_ISDIR(os.fstat(dir_fd).st_mode)
        assert stat.S_ISREG(os.fstat(log_fd).st_mode)
        ports = [port_of(fd) for fd in listeners]
        assert ports == [dict(info)[f"{ch}_port"] for ch in thin.CHANNELS]
        labels = inspect(fields["id"])["Config"]["Labels"]  # type: ignore[index]
        assert labels[LABEL_LAUNCHER_PID] == str(os.getpid())
        client.sock.sendall(b"R")
        rest = client.rest()
        assert not any(line.startswith(b"X ") for line in rest), rest
        assert any(b"started in container" in line for line in rest), rest

        # A subscriber the client would have relayed waits for the iopub listener.
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{info['iopub_port']}")
        # The client's relay found the output budget exceeded and stopped the kernel.
        Engine().api().kill(fields["id"])
        assert select.select([exit_fd], [], [], 30)[0], "no exit reported on the watch"
        base = Path(fields["state"]).parent
        reason = "budget exceeded: the kernel sent more than 10 bytes of output in all on iopub"
        end = {
            "reason": reason,
            "stopping": "1",
            "interrupted_ago": "-1",
            "bytes_to_host": "4096",
            "bytes_to_kernel": "512",
            "output_charged": "11",
            "iopub_lost": "1",
            "exit_fd": str(exit_fd),
            "iopub_fd": str(listeners[1]),
        }
        (base / "handover-end").write_text("".join(f"{k}={v}\n" for k, v in end.items()))
        (base / "said").write_bytes(b"")
        (base / "execute").write_bytes(b"")
        for fd in (lifeline, dir_fd, log_fd, *listeners[:1], *listeners[2:]):
            os.close(fd)
        finish = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_docker_kernel.finish",
                "--state",
                fields["state"],
                "--end",
                str(base / "handover-end"),
            ],
            pass_fds=(exit_fd, listeners[1]),
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        os.close(exit_fd)
        os.close(listeners[1])
        client.fds = []
        # The notice reaches the subscriber, signed with the client's key.
        assert sub.poll(20_000), "no notice on iopub"
        session = Session(key=KEY)
        _, frames = session.feed_identities(sub.recv_multipart())
        message = session.deserialize(frames)
        assert message["msg_type"] == "stream"
        assert "output budget" in message["content"]["text"]
        _, stderr = finish.communicate(timeout=60)
    finally:
        sub.close(linger=0)
        client.close()
        if finish is not None and finish.poll() is None:
            finish.kill()
    assert finish.returncode == 137, stderr
    assert f"kernel container {fields['name']} exited with code 137 (budget exceeded" in stderr
    assert "relayed 4096 bytes out, 512 in; 11 bytes of output" in stderr
    assert "told 1 iopub subscriber(s)" in stderr
    # Removed: the container and the runtime dir; the kept log has the end.
    assert subprocess.run(["docker", "inspect", fields["name"]], capture_output=True).returncode
    assert not base.exists()
    record = json.loads((Path(state["log_dir"]) / f"{fields['name']}.json").read_text())
    assert record["exit_code"] == 137
    assert record["launcher_pid"] == os.getpid()


def test_with_the_switch_off_the_helper_serves_the_kernel_as_before(
    real_helper: str, kernel_name: str, workdir: Path, tmp_path: Path
) -> None:
    connection_file, _ = write_connection_file(
        str(tmp_path / "kernel-served-test.json"), ip="127.0.0.1", key=KEY
    )
    client = FakeClient(real_helper, kernel_request(kernel_name, connection_file, env_on=False))
    client.sock.settimeout(120)
    try:
        lines: list[bytes] = []
        while not any(b"started in container" in line for line in lines):
            line = client.line()
            assert line is not None, f"EOF before the start line: {lines}"
            lines.append(line)
        name = lines[-1].split(b"container ")[1].split()[0].decode()
        helper_pid = int(lines[0].split()[1])  # A <helper pid>
        labels = inspect(name)["Config"]["Labels"]  # type: ignore[index]
        assert labels[LABEL_LAUNCHER_PID] == str(helper_pid)  # the helper keeps it
        client.sock.sendall(bytes([15]))  # SIGTERM, forwarded: the helper stops it
        rest = client.rest()
    finally:
        client.close()
    assert not any(line.startswith(b"H ") for line in lines + rest)
    assert client.fds == []
    assert rest[-1].startswith(b"X "), rest
    assert any(b"exited with code" in line for line in rest)
