"""Which path a user's kernels take (broker_client.choice), and what doctor says about it,
without the engine: the engine's socket is missing (conftest.no_engine), and a broker's
socket is a real listening unix socket in the test's tmp dir, or absent."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import broker_client
from jupyter_docker_kernel.broker_client import BrokerBackend
from jupyter_docker_kernel.cli import main
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.local_backend import CliBackend, LocalBackend


@pytest.fixture
def broker_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A listening socket where clients look for the broker."""
    path = str(tmp_path / "broker.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(4)
        monkeypatch.setenv(broker_client.BROKER_ENV, path)
        yield path


@pytest.mark.usefixtures("no_engine")
def test_without_the_engine_a_broker_socket_means_the_broker(broker_socket: str) -> None:
    path, why = broker_client.choice(Engine())
    assert path == "broker"
    assert "no engine socket at /nonexistent.sock" in why
    assert broker_socket in why
    assert isinstance(LocalBackend.for_engine(Engine()), BrokerBackend)


@pytest.mark.usefixtures("no_engine")
def test_without_the_engine_or_a_broker_kernels_take_the_engine_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(broker_client.BROKER_ENV, str(tmp_path / "none.sock"))
    path, why = broker_client.choice(Engine())
    assert path == "engine"
    assert "there is no broker socket" in why
    assert not isinstance(LocalBackend.for_engine(Engine()), BrokerBackend)


def test_an_engine_not_on_a_unix_socket_is_left_to_its_cli(
    monkeypatch: pytest.MonkeyPatch, broker_socket: str
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "ssh://node")
    assert broker_client.choice(Engine())[0] == "engine"
    assert isinstance(LocalBackend.for_engine(Engine()), CliBackend)


@pytest.mark.usefixtures("no_engine", "data_dir")
def test_doctor_says_the_broker_path_and_why(
    broker_socket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "kernel path: broker: there is no engine socket at /nonexistent.sock" in out
    assert f"broker: {broker_socket} answers" in out


@pytest.mark.usefixtures("no_engine", "data_dir")
def test_doctor_fails_when_the_broker_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(dead))  # bound, never listening: refused
    monkeypatch.setenv(broker_client.BROKER_ENV, str(dead))
    assert main(["doctor", "--no-probe"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  broker: cannot connect" in out


def test_doctor_broker_checks_the_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "broker.toml"
    policy.write_text("images = 'not a list'\n")
    assert main(["doctor", "--broker", "--policy", str(policy)]) == 1
    assert "images must be a list of strings" in capsys.readouterr().out


@pytest.mark.usefixtures("no_engine")
def test_setup_through_the_broker_asks_it_for_a_kernel_and_stops_at_its_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """A user who cannot reach the engine: setup's check is a kernel started through the
    broker (broker_client.probe); the broker's refusal (here a stand-in's, one line) is
    setup's error, and nothing is written. (The accepted path, with a real broker and
    users: test_broker.py.)"""
    path = str(tmp_path / "refusing.sock")
    asked: list[dict[str, object]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()

        def refuse() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as lines:
                asked.append(json.loads(lines.readline()))
                conn.sendall(b'{"ok": false, "error": "The image x is not allowed."}\n')

        thread = threading.Thread(target=refuse, daemon=True)
        thread.start()
        monkeypatch.setenv(broker_client.BROKER_ENV, path)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["setup", "--name", "via-broker", "--user"]) == 1
        thread.join(timeout=10)
    assert [request["op"] for request in asked] == ["start"]
    assert "The kernel broker did not start a kernel of these settings" in err.getvalue()
    assert "The image x is not allowed." in err.getvalue()
    assert not (data_dir / "kernels" / "via-broker").exists()


@pytest.mark.usefixtures("no_engine")
def test_setup_without_the_engine_or_a_broker_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setenv(broker_client.BROKER_ENV, str(tmp_path / "none.sock"))
    assert main(["setup", "--name", "nowhere", "--user"]) == 1
    assert not (data_dir / "kernels" / "nowhere").exists()
