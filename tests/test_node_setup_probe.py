"""setup's probe container on a remote node (issue 13, node_probe.py): the same probe as
on this host, run through the node's own engine, so that a node whose runtime cannot start
the image is refused at setup, with one line naming the node, and nothing is written or
left running. Real nodes (tests/nodes.py: a dockerd and an sshd in namespaces of their
own; the test node registers `jdk-broken`, a runtime that starts nothing), no mocks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, doctor
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.nodes import NodeUnderTest

pytestmark = [pytest.mark.nodes, pytest.mark.docker]

NAME = "jdk-test-node-probe"


def spec_dir() -> Path:
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / NAME


def test_setup_refuses_a_node_whose_runtime_cannot_start_the_image(
    pushed_node: NodeUnderTest,
    kernel_image: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The node's engine lists the runtime and has the image, so only running a container
    there tells: setup exits 1 with one line naming the node and saying no kernelspec was
    written; no spec, no probe container or dir is left on the node. The same setup with
    the node's working runtime (runc) goes through and says the probe's versions."""
    monkeypatch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
    argv = ["setup", "--name", NAME, "--image", kernel_image, "--user", "--replace", "--reset"]
    argv += ["--engine-host", pushed_node.url, "--no-workdir"]
    assert "jdk-broken" in pushed_node.docker("info", "--format", "{{json .Runtimes}}").stdout
    capsys.readouterr()

    assert cli.main([*argv, "--runtime", "jdk-broken"]) == 1
    said = capsys.readouterr().err.strip()
    with capsys.disabled():
        print(f"\nsetup said: {said}")
    assert len(said.splitlines()) == 1
    assert f"A kernel could not start on the node {pushed_node.url}" in said
    assert "the runtime 'jdk-broken' could not start the container" in said
    assert "No kernelspec was written" in said
    assert not spec_dir().exists()
    assert not pushed_node.containers()  # the probe's container is gone
    left = pushed_node.ssh("sh", "-c", "ls /tmp/jupyter-docker-kernel-*/ 2>/dev/null || true")
    assert "probe-" not in left.stdout

    assert cli.main([*argv, "--runtime", "runc"]) == 0
    out = capsys.readouterr().out
    assert f"image {kernel_image}: Python 3" in out  # the versions from the node's probe
    assert spec_dir().is_dir()
    assert not pushed_node.containers()


def test_doctor_runs_the_probe_on_the_node_and_fails_a_runtime_that_cannot_start_it(
    pushed_node: NodeUnderTest, kernel_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec written unchecked (--skip-checks) for a runtime the node lists but cannot run:
    doctor's node checks pass up to the runtime, and its probe on the node FAILs the
    kernel check, in the words setup would have used; nothing is left on the node."""
    monkeypatch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
    argv = ["setup", "--name", NAME, "--image", kernel_image, "--user", "--replace", "--reset"]
    argv += ["--engine-host", pushed_node.url, "--no-workdir", "--runtime", "jdk-broken"]
    assert cli.main([*argv, "--skip-checks"]) == 0
    try:
        report = doctor.run_checks(Engine(), NAME)
    finally:
        assert cli.main(["remove", NAME, "-y"]) == 0
    found = {c.name.split(": ", 1)[1]: c for c in report.checks if c.name.startswith(NAME)}
    assert found["runtime"].status == "OK", found["runtime"]
    assert found["kernel"].status == "FAIL", found["kernel"]
    assert "the runtime 'jdk-broken' could not start the container" in found["kernel"].detail
    assert not pushed_node.containers()
