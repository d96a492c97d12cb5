"""`ps` across remote nodes (issue 13): the running kernels on every node of every
kernelspec (node_manage.node_urls, as `list` and `gc` cover them), each row naming its
node; a node that does not answer is one note line, not a failed command. Real nodes
(tests/nodes.py: a dockerd and an sshd in namespaces of their own), the real argv
launcher through jupyter_client, no mocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_docker_kernel import cli
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.conftest import install_kernel
from tests.kernels import execute, kernel_key, wait_until
from tests.nodes import NodeUnderTest
from tests.test_node_kernels import node_containers, started

pytestmark = [pytest.mark.nodes, pytest.mark.docker]

#: A node whose name does not resolve: it never answers (quickly).
SILENT = "ssh://jdk-node@silent-node.invalid"


def test_ps_lists_a_node_kernel_with_its_node_and_one_line_for_a_silent_node(
    pushed_node: NodeUnderTest,
    kernel_image: str,
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A kernelspec with a pool of two nodes, one of which never answers: its kernel runs
    on the other; `ps` shows that kernel's row with the node's address in the NODE column,
    and the silent node as one note line; it exits 0."""
    monkeypatch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
    name = "jdk-test-node-ps"
    install_kernel(name, kernel_image, "--node", pushed_node.url, "--node", SILENT, "--no-workdir")
    km, kc, _ = started(name, workdir, tmp_path / "launcher.log")
    key = kernel_key(km)
    try:
        assert execute(kc, "pass")[0]["status"] == "ok"
        assert node_containers(pushed_node, key)
        capsys.readouterr()
        assert cli.main(["ps"]) == 0
        out = capsys.readouterr().out
        with capsys.disabled():
            print(f"\n{out}")
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["KERNELSPEC", "CONTAINER", "NODE"]
        [row] = [line for line in lines if f"jdk-{key}-" in line]
        assert row.split()[:3] == [name, row.split()[1], pushed_node.url]
        [silent] = [line for line in lines if SILENT in line]
        assert silent.startswith(f"note: node {SILENT} not listed: ")
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    wait_until(lambda: not node_containers(pushed_node, key), timeout=15)
