"""Warm pools on remote nodes through the jupyter_client provisioner (issue 13): `setup
--node A --node B --pool 1 --provisioner`, and a gVisor pool (`--runtime runsc`) on a
node. jupyter_client's own KernelManager runs our provisioner in this process (no
launcher): the first start is cold and tops the pool up on its node, the second claims
that warm container there (the same container now serves the kernel), a cell runs, and
after shutdown and `gc --pools` nothing of it is left on the nodes or here. Real nodes
(tests/nodes.py: a dockerd and an sshd in namespaces of their own; runsc registered in
the node's engine as in this host's), no mocks."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.conftest import install_kernel
from tests.kernels import execute, key_of, runtime_dirs_of, stream_text, wait_until
from tests.nodes import NodeUnderTest, second_node
from tests.test_node_kernels import node_containers, started
from tests.test_node_pool import node_dirs, ready_warm_dirs, warm_on_node

pytestmark = [pytest.mark.nodes, pytest.mark.docker]


def claim_story(spec: str, nodes: tuple[NodeUnderTest, ...], workdir: Path, tmp: Path) -> str:
    """Cold start, refill on its node, a claim of that warm container by the provisioner,
    a cell, shutdowns, gc --pools; asserts nothing of it is left. Returns the cell's
    output (the claimed kernel's platform.release())."""
    first, kc1, _ = started(spec, workdir, tmp / "first.log")
    try:
        assert type(first.provisioner).__name__ == "DockerProvisioner"
        [used] = [n for n in nodes if node_containers(n, key_of(first))]
        wait_until(lambda: len(ready_warm_dirs(used, spec)) == 1, timeout=120)
        [warm] = warm_on_node(used)
        warm_id = used.docker("inspect", "--format", "{{.Id}}", warm).stdout.strip()
        second, kc2, took = started(spec, workdir, tmp / "second.log")
        key = key_of(second)
        try:
            print(f"provisioner: pooled start on {used.url} answered in {took:.2f} s")
            [claimed] = node_containers(used, key)
            assert warm_id.startswith(claimed)  # the warm container now serves this kernel
            reply, outputs = execute(kc2, "import platform; print(platform.release())")
            assert reply["status"] == "ok"
            release = stream_text(outputs).strip()
        finally:
            kc2.stop_channels()
            second.shutdown_kernel()
        wait_until(lambda: not node_containers(used, key), timeout=20)
        assert not runtime_dirs_of(key)
    finally:
        kc1.stop_channels()
        first.shutdown_kernel()
    wait_until(lambda: not node_containers(used, key_of(first)), timeout=20)
    assert not runtime_dirs_of(key_of(first))
    assert cli.main(["gc", "--pools", spec]) == 0
    for node in nodes:
        assert not node.containers(), node.url  # no kernel, warm or exited container
        assert "pool-" not in node_dirs(node)
    assert not ready_warm_dirs(used, spec)
    return release


def test_provisioner_claims_a_warm_container_on_a_node_of_a_pool_of_two(
    pushed_node: NodeUnderTest, kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """setup --node A --node B --pool 1 --provisioner: the provisioner's second start
    claims the warm container its first start's refill made on that one's node."""
    spec = "jdk-test-node-prov-pool"
    with second_node(pushed_node, "p", kernel_image, tmp_path / "ssh_config") as other:
        install_kernel(
            spec,
            kernel_image,
            *("--node", pushed_node.url, "--node", other.url),
            *("--no-workdir", "--pool", "1", "--provisioner"),
        )
        try:
            claim_story(spec, (pushed_node, other), workdir, tmp_path)
        finally:
            cli.main(["gc", "--pools", spec])


def test_provisioner_claims_a_gvisor_warm_container_on_a_node(
    pushed_node: NodeUnderTest, kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """setup --engine-host NODE --runtime runsc --pool 1 --provisioner: the warm container
    runs under gVisor in the node's engine, and the kernel that claims it sees gVisor's
    kernel, not this machine's."""
    runtimes = pushed_node.docker("info", "--format", "{{json .Runtimes}}").stdout
    assert '"runsc"' in runtimes  # scripts/test-node registers it as bootstrap-engine does
    spec = "jdk-test-node-prov-gvisor"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        install_kernel(
            spec,
            kernel_image,
            *("--engine-host", pushed_node.url, "--runtime", "runsc"),
            *("--no-workdir", "--pool", "1", "--provisioner"),
        )
        try:
            release = claim_story(spec, (pushed_node,), workdir, tmp_path)
        finally:
            cli.main(["gc", "--pools", spec])
    assert release
    assert release != platform.release()
