"""scripts/bootstrap-engine decides right on machine states like a fresh one.

The decision is run for real with `--dry-run` (which prints `plan: ...` and changes
nothing): a PATH holding only the docker *client* (what a fresh machine of this kind has),
and a stand-in engine API on a unix socket that answers `docker info` without the runsc
runtime. Starting a second real engine here would fight the one the suite runs on.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import not_here

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bootstrap-engine"


class _EngineWithoutRunsc(http.server.BaseHTTPRequestHandler):
    """Answers the two calls `docker info` makes, with only runc among the runtimes."""

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        info = {"Runtimes": {"runc": {"path": "runc"}}, "ServerVersion": "20.10.24"}
        body = b"OK" if self.path.endswith("/_ping") else json.dumps(info).encode()
        self.send_response(200)
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def address_string(self) -> str:
        return "test"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def client_only_path(tmp_path: Path) -> str:
    """A PATH with the docker client and the few tools the decision uses, and no dockerd."""
    client = shutil.which("docker")
    if client is None:
        not_here("no docker client on PATH", "bootstrap")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("timeout", "grep", "cat"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "docker").symlink_to(client)
    return str(bin_dir)


@pytest.fixture
def engine_without_runsc(tmp_path: Path) -> Iterator[str]:
    """DOCKER_HOST of an engine API that answers but has no runsc runtime."""
    sock = tmp_path / "engine.sock"
    server = _UnixServer(str(sock), _EngineWithoutRunsc)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"unix://{sock}"
    server.shutdown()
    server.server_close()


def plan(path: str, docker_host: str, state_dir: Path, *args: str) -> list[str]:
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run(
        [bash, str(SCRIPT), "--dry-run", *args],
        env={
            "PATH": path,
            "DOCKER_HOST": docker_host,
            "JDK_BOOTSTRAP_STATE_DIR": str(state_dir),
            "HOME": os.environ["HOME"],
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout.splitlines()


def test_a_docker_client_without_an_engine_installs_docker_io_and_starts_dockerd(
    client_only_path: str, tmp_path: Path
) -> None:
    lines = plan(client_only_path, f"unix://{tmp_path}/no-engine.sock", tmp_path, "--runsc")
    assert lines[0].startswith("plan: install docker.io")
    assert "runsc" in lines[0]
    assert lines[1] == "plan: start dockerd with runtime runsc"


def test_an_engine_this_script_started_without_runsc_is_restarted_with_it(
    client_only_path: str, engine_without_runsc: str, tmp_path: Path
) -> None:
    # A process whose command line says dockerd stands in for the engine we started.
    ours = subprocess.Popen(["bash", "-c", "exec -a dockerd sleep 60"])
    try:
        (tmp_path / "dockerd.pid").write_text(f"{ours.pid}\n")
        lines = plan(client_only_path, engine_without_runsc, tmp_path, "--runsc")
    finally:
        ours.kill()
        ours.wait()
    assert lines[-1] == f"plan: restart our dockerd (pid {ours.pid}) with runtime runsc"


def test_an_engine_someone_else_started_is_never_touched(
    client_only_path: str, engine_without_runsc: str, tmp_path: Path
) -> None:
    # A stale record (its process is gone) does not make the running engine ours.
    (tmp_path / "dockerd.pid").write_text("999999999\n")
    lines = plan(client_only_path, engine_without_runsc, tmp_path, "--runsc")
    assert lines[-1].startswith("plan: refuse")


def test_an_engine_that_answers_is_kept_when_runsc_is_not_asked_for(
    client_only_path: str, engine_without_runsc: str, tmp_path: Path
) -> None:
    lines = plan(client_only_path, engine_without_runsc, tmp_path)
    assert lines[-1] == "plan: keep the running engine"
