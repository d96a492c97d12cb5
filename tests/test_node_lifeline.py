"""A kernel on a remote node holds no process of ours on this host (issue 13, and issue
17's "no helper process per kernel"): its lifeline is a connection through the node's
SSH ControlMaster, its engine calls are requests to the node engine's API forwarded over
the same master. Real nodes (tests/nodes.py), no mocks. The ends nobody asked for (the
launcher killed, the connection cut) are in test_node_kernels.py and test_node_pool.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli
from jupyter_docker_kernel.ssh import CONFIG_ENV, Connection
from tests.conftest import install_kernel
from tests.kernels import execute, kernel_key
from tests.nodes import NodeUnderTest
from tests.test_node_kernels import node_containers, started

pytestmark = [pytest.mark.nodes, pytest.mark.docker]

COLD = "jdk-test-node-cold"


@pytest.fixture(scope="module")
def cold_kernel(pushed_node: NodeUnderTest, kernel_image: str) -> Iterator[str]:
    """A kernelspec whose kernels start cold on the session's node."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        install_kernel(COLD, kernel_image, "--engine-host", pushed_node.url, "--copy-workdir")
        yield COLD


def sessions_on(connection: Connection) -> list[str]:
    """This host's ssh clients running a session on the node's master (not the master)."""
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=True)
    return [
        line
        for line in ps.stdout.splitlines()
        if f"ControlPath={connection.control_path}" in line and "ControlMaster=no" in line
    ]


def test_a_running_node_kernel_keeps_no_process_on_this_host(
    pushed_node: NodeUnderTest, cold_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """Once a cold node kernel has answered, no ssh session of ours to the node runs (the
    CLI path kept one `docker run -i` per kernel), yet the kernel still answers and its
    container is on the node: it lives on connections through the master alone."""
    connection = Connection.to(pushed_node.url, {CONFIG_ENV: str(pushed_node.ssh_config)})
    km, kc, _ = started(cold_kernel, workdir, tmp_path / "launcher.log")
    key = kernel_key(km)
    try:
        deadline = time.monotonic() + 10  # the start's watch ends once the sockets are pinned
        while sessions_on(connection) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sessions_on(connection) == []
        reply, _ = execute(kc, "pass")
        assert reply["status"] == "ok"
        assert node_containers(pushed_node, key)
    finally:
        kc.stop_channels()
        km.shutdown_kernel()


def test_gc_removes_kernel_dirs_on_the_node_that_no_container_mounts(
    pushed_node: NodeUnderTest,
    cold_kernel: str,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel dir on the node whose container is gone (its launcher, or the Jupyter
    server, killed outright: nobody tidied up) goes with `gc`; a running kernel's stays,
    and so does a dir younger than a minute (a start between its dir and its create)."""
    base = Connection.to(pushed_node.url).facts().base
    stale, young = f"{base}/tmp-stale-0a0a0a", f"{base}/tmp-young-0b0b0b"
    pushed_node.ssh("sh", "-c", f"mkdir -p {stale}/rt {young} && touch -d '5 minutes ago' {stale}")
    # Only this spec's node: earlier tests' specs may name nodes they stopped.
    data = tmp_path / "data"
    shutil.copytree(
        Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / cold_kernel,
        data / "kernels" / cold_kernel,
    )
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    km, kc, _ = started(cold_kernel, workdir, tmp_path / "launcher.log")
    key = kernel_key(km)
    try:
        pushed_node.ssh("sh", "-c", f"touch -d '5 minutes ago' {base}/{key}-*")
        assert cli.main(["gc"]) == 0
        said = capsys.readouterr().out
        assert f"Removed {pushed_node.url}:{stale}" in said
        listed = pushed_node.ssh("ls", base).stdout.split()
        assert "tmp-stale-0a0a0a" not in listed
        assert "tmp-young-0b0b0b" in listed
        assert any(name.startswith(f"{key}-") for name in listed)
        reply, _ = execute(kc, "pass")
        assert reply["status"] == "ok"
    finally:
        pushed_node.ssh("rm", "-rf", young, check=False)
        kc.stop_channels()
        km.shutdown_kernel()
