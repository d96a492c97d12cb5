"""Warm pools on a remote node (issue 13), the user's story through jupyter_client:
`setup --engine-host ssh://... --pool 1`, a first start (cold) tops the pool up on the
node, the next start claims that warm container there, the pool refills on the node, and
`gc --pools` removes the warm one (its container on the node, its dirs here and there).
Real nodes (tests/nodes.py: a dockerd and sshd in namespaces of their own), no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli, kernelspec, pool
from jupyter_docker_kernel.engine import LABEL_POOL
from jupyter_docker_kernel.rundir import POOL_DIR_PREFIX, POOL_NAME_PREFIX, RunDir, runtime_base
from jupyter_docker_kernel.ssh import CONFIG_ENV, Connection
from tests.conftest import install_kernel
from tests.kernels import (
    execute,
    kernel_key,
    launcher_process,
    stream_text,
    wait_for_execute_input,
    wait_until,
)
from tests.nodes import NodeUnderTest, second_node
from tests.test_node_kernels import host_containers, node_containers, started

pytestmark = [pytest.mark.nodes, pytest.mark.docker]

POOLED = "jdk-test-node-pool"


@pytest.fixture(scope="module")
def pooled_kernel(pushed_node: NodeUnderTest, kernel_image: str) -> Iterator[str]:
    """A kernelspec keeping one warm container on the session's node; whatever its warm
    containers are at the end goes (gc --pools)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        install_kernel(
            POOLED, kernel_image, "--engine-host", pushed_node.url, "--copy-workdir", "--pool", "1"
        )
        try:
            yield POOLED
        finally:
            cli.main(["gc", "--pools", POOLED])
            for warm in warm_on_node(pushed_node, all_states=True):
                pushed_node.docker("rm", "-f", warm, check=False)


def warm_on_node(node: NodeUnderTest, *, all_states: bool = False) -> list[str]:
    """The node's unclaimed warm-pool containers, by name (a claimed one keeps the pool's
    label, and takes its kernel's name)."""
    args = ["ps", "--format", "{{.Names}}", "--filter", f"label={LABEL_POOL}"]
    names = node.docker(*args, *(["-a"] if all_states else [])).stdout.split()
    return [name for name in names if name.startswith(POOL_NAME_PREFIX)]


def spec_pool_key(name: str) -> str:
    """The pool key of the installed spec `name` (its warm containers' names and dirs)."""
    spec = KernelSpecManager().get_kernel_spec(name)
    settings = kernelspec.settings_from_kernel_json(
        json.loads((Path(spec.resource_dir) / "kernel.json").read_text())
    )
    return pool.pool_key(settings, os.getuid())


def warm_of_spec(node: NodeUnderTest, name: str) -> list[str]:
    """The node's warm containers (any state) of spec `name` only: the module's other
    spec keeps its own warm one on the session's node meanwhile."""
    prefix = f"{POOL_NAME_PREFIX}{spec_pool_key(name)[:8]}-"
    return [w for w in warm_on_node(node, all_states=True) if w.startswith(prefix)]


def ready_warm_dirs(node: NodeUnderTest, name: str = POOLED) -> list[Path]:
    """This host's dirs of the node's warm containers of spec `name` whose kernel is ready
    to be claimed (not another spec's: a node of an earlier session may have had this
    address)."""
    key = spec_pool_key(name)
    return [
        d
        for d in runtime_base().glob(f"{POOL_DIR_PREFIX}{key}-*")
        if RunDir(d).claim_socket().exists() and RunDir(d).read_pool_note()[1] == node.url
    ]


def node_dirs(node: NodeUnderTest) -> str:
    """The names in the node user's runtime base(s) on the node."""
    return node.ssh("sh", "-c", "ls /tmp/jupyter-docker-kernel-*/ 2>/dev/null || true").stdout


def test_a_pooled_start_on_a_node_claims_a_warm_container_there_and_the_pool_refills(
    pushed_node: NodeUnderTest, pooled_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """The first start is cold and tops the pool up on the node (the warm container runs
    in the node's engine, labelled as local ones, none here); the second claims it: the
    same container now serves that kernel, with the work dir's copy and code running;
    then the pool has one warm container again, on the node; `gc --pools` removes it and
    its dirs on both sides, and the kernels leave nothing."""
    (workdir / "data.txt").write_text("copied\n")
    first, kc1, _ = started(pooled_kernel, workdir, tmp_path / "first.log")
    try:
        reply, _ = execute(kc1, "pass")
        assert reply["status"] == "ok"
        wait_until(lambda: len(ready_warm_dirs(pushed_node)) == 1, timeout=90)
        [warm] = warm_on_node(pushed_node)
        assert not host_containers("pool")  # nothing of the pool on this host's engine
        warm_id = pushed_node.docker("inspect", "--format", "{{.Id}}", warm).stdout.strip()
        [warm_dir] = ready_warm_dirs(pushed_node)
        assert warm_dir.name in node_dirs(pushed_node)

        log = tmp_path / "second.log"
        second, kc2, took = started(pooled_kernel, workdir, log)
        try:
            print(f"pooled start on {pushed_node.url}: {took:.2f} s to the first reply")
            key = kernel_key(second)
            wait_until(lambda: "started in warm container" in log.read_text(), timeout=10)
            [claimed] = node_containers(pushed_node, key)
            assert warm_id.startswith(claimed)  # the warm container, renamed to the kernel's
            reply, outputs = execute(kc2, "print(open('data.txt').read().strip(), 6 * 7)")
            assert reply["status"] == "ok"
            assert stream_text(outputs) == "copied 42\n"
            # The refill after the claim: a new warm container on the node, ready.
            wait_until(lambda: ready_warm_dirs(pushed_node) not in ([], [warm_dir]), timeout=90)
            assert len(ready_warm_dirs(pushed_node)) == 1
            [refilled] = warm_on_node(pushed_node)
            assert refilled != warm
        finally:
            kc2.stop_channels()
            second.shutdown_kernel()
        wait_until(lambda: not node_containers(pushed_node, key), timeout=15)
        # The claimed container's dir on the node went with it.
        wait_until(lambda: warm_dir.name not in node_dirs(pushed_node), timeout=10)
    finally:
        kc1.stop_channels()
        first.shutdown_kernel()
    [new_dir] = ready_warm_dirs(pushed_node)
    assert cli.main(["gc", "--pools", pooled_kernel]) == 0
    assert not warm_on_node(pushed_node, all_states=True)
    assert not new_dir.exists()
    assert new_dir.name not in node_dirs(pushed_node)
    assert not node_containers(pushed_node, kernel_key(first))


def test_sigkill_to_the_launcher_of_a_claimed_node_kernel_ends_it_within_5s(
    pushed_node: NodeUnderTest, pooled_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """A claimed warm kernel's lifeline is its claim connection, forwarded over the SSH
    master (no process of ours per kernel): the launcher's SIGKILL closes it, and the
    node's container is gone within 5 s."""
    first, kc1, _ = started(pooled_kernel, workdir, tmp_path / "first.log")
    try:
        wait_until(lambda: len(ready_warm_dirs(pushed_node)) >= 1, timeout=90)
        log = tmp_path / "second.log"
        second, kc2, _ = started(pooled_kernel, workdir, log)
        key = kernel_key(second)
        try:
            wait_until(lambda: "started in warm container" in log.read_text(), timeout=10)
            wait_for_execute_input(kc2, kc2.execute("import time; time.sleep(600)"))
            os.killpg(launcher_process(second).pid, signal.SIGKILL)
            took = wait_until(
                lambda: not pushed_node.docker("ps", "-q", "--filter", f"name=^jdk-{key}-").stdout,
                timeout=5,
            )
            print(f"claimed node container ended {took:.2f} s after the launcher's SIGKILL")
        finally:
            kc2.stop_channels()
            second.shutdown_kernel(now=True)
    finally:
        kc1.stop_channels()
        first.shutdown_kernel(now=True)


def test_a_lost_ssh_connection_ends_a_claimed_node_kernel_and_the_log_names_the_node(
    pushed_node: NodeUnderTest, pooled_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """SIGKILL to the node's ssh master while a claimed warm kernel runs a cell: its
    lifeline (the claim connection, carried by the master) closes on the node, the
    container ends within 5 s, and the launcher's log says which node was lost."""
    first, kc1, _ = started(pooled_kernel, workdir, tmp_path / "first.log")
    stop_kernel(first, kc1)
    wait_until(lambda: len(ready_warm_dirs(pushed_node)) >= 1, timeout=90)
    log = tmp_path / "second.log"
    km, kc, _ = started(pooled_kernel, workdir, log)
    key = kernel_key(km)
    try:
        wait_until(lambda: "started in warm container" in log.read_text(), timeout=10)
        wait_for_execute_input(kc, kc.execute("import time; time.sleep(600)"))
        connection = Connection.to(pushed_node.url)
        check = subprocess.run(
            [*connection.options(), "-O", "check", connection.node.destination()],
            capture_output=True,
            text=True,
            check=True,
        )
        os.kill(int(check.stderr.split("pid=")[1].split(")")[0]), signal.SIGKILL)
        took = wait_until(
            lambda: not pushed_node.docker("ps", "-q", "--filter", f"name=^jdk-{key}-").stdout,
            timeout=5,
        )
        print(f"claimed node container ended {took:.2f} s after the ssh master's SIGKILL")
        wait_until(lambda: km.is_alive() is False, timeout=10)
        assert f"the SSH connection to the node {pushed_node.url} was lost" in log.read_text()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def stop_kernel(km: KernelManager, kc: BlockingKernelClient) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def test_with_two_nodes_each_pool_is_kept_on_the_node_its_starts_used(
    pushed_node: NodeUnderTest, kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """setup --node A --node B --pool 1: the first start (cold) goes to one node, and its
    refill tops up that node's pool only; the next start claims that warm container there,
    and the refill after it is again on that node; the other node has no warm container."""
    spec = f"{POOLED}-2"
    with second_node(pushed_node, "y", kernel_image, tmp_path / "ssh_config") as other:
        install_kernel(
            spec,
            kernel_image,
            *("--node", pushed_node.url, "--node", other.url),
            *("--no-workdir", "--pool", "1"),
        )
        nodes = (pushed_node, other)
        first, kc1, _ = started(spec, workdir, tmp_path / "first.log")
        try:
            [used] = [n for n in nodes if node_containers(n, kernel_key(first))]
        finally:
            stop_kernel(first, kc1)
        unused = other if used is pushed_node else pushed_node
        wait_until(lambda: len(ready_warm_dirs(used, spec)) == 1, timeout=90)
        [warm] = warm_on_node(used)
        log = tmp_path / "second.log"
        second, kc2, _ = started(spec, workdir, log)
        try:
            wait_until(lambda: "started in warm container" in log.read_text(), timeout=10)
            assert node_containers(used, kernel_key(second))
            wait_until(lambda: warm_on_node(used) not in ([], [warm]), timeout=90)
            wait_until(lambda: len(ready_warm_dirs(used, spec)) == 1, timeout=90)
            assert not warm_of_spec(unused, spec)
            assert ready_warm_dirs(unused, spec) == []
        finally:
            stop_kernel(second, kc2)
        assert cli.main(["gc", "--pools", spec]) == 0
        assert not warm_of_spec(used, spec)
