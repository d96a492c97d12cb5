"""Remote nodes (issue 13): the test nodes themselves, `image push`, and ssh's failures
said in one line. Real nodes (tests/nodes.py: a dockerd and an sshd in namespaces of
their own on this machine), the real OpenSSH client and the real engines; no mocks."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, push, reaper
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import EngineError
from jupyter_docker_kernel.rundir import runtime_base
from jupyter_docker_kernel.ssh import CONFIG_ENV, CONTROL_PREFIX, Connection
from tests.kernels import wait_until
from tests.nodes import PUSHES, NodeUnderTest, start_node, stop_node

pytestmark = [pytest.mark.nodes, pytest.mark.docker]


def test_node_has_its_own_tmp(node: NodeUnderTest) -> None:
    """A file in this host's /tmp does not exist on the node (its /tmp is private)."""
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="jdk-host-only-") as here:
        assert Path(here.name).exists()
        found = node.ssh("test", "-e", here.name, check=False)
    assert found.returncode == 1


def test_node_has_its_own_engine(node: NodeUnderTest) -> None:
    """The node's engine is its own: none of this host's containers or images are there."""
    info = node.docker("info", "--format", "{{.DockerRootDir}} {{.Images}}").stdout.split()
    assert info == [str(node.state / "data"), info[1]]
    assert "docker.sock" in node.ssh("ls", "/run").stdout


def test_node_has_no_route_beyond_this_host(node: NodeUnderTest) -> None:
    """The node's only addresses are loopback and its end of the /30 with this host."""
    addrs = node.ssh("cat", "/proc/net/fib_trie").stdout
    assert "10.213." in addrs
    routes = node.ssh("cat", "/proc/net/route").stdout.splitlines()[1:]
    assert all(line.split()[1] != "00000000" for line in routes), routes  # no default route


def test_image_push_copies_only_when_the_node_lacks_it(pushed_node: NodeUnderTest) -> None:
    """The first push copied the image (its ID now on the node); a second copies nothing."""
    assert [p.copied for p in PUSHES] == [True]
    local = Engine().image_inspect(PUSHES[0].image_id)
    assert local is not None
    there = pushed_node.docker("image", "inspect", "--format", "{{.Id}}", PUSHES[0].image_id)
    assert there.stdout.strip() == PUSHES[0].image_id
    env = {**os.environ, CONFIG_ENV: str(pushed_node.ssh_config)}
    again = push.push(Engine(), PUSHES[0].image_id, [pushed_node.url], environ=env)
    assert [p.copied for p in again] == [False]


def test_image_push_cli_says_the_node_had_it(
    pushed_node: NodeUnderTest,
    kernel_image: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
    assert cli.main(["image", "push", pushed_node.url, "--tag", kernel_image]) == 0
    assert "1 had it already" in capsys.readouterr().out


# -- one clear line for each way ssh fails ---------------------------------------------------


def config_variant(node: NodeUnderTest, tmp_path: Path, **changes: str) -> Path:
    """A copy of the node's ssh_config with some options changed."""
    lines = []
    for line in node.ssh_config.read_text().splitlines():
        key = line.split()[0] if line.split() else ""
        lines.append(f"  {key} {changes.pop(key)}" if key in changes else line)
    lines += [f"  {k} {v}" for k, v in changes.items()]
    path = tmp_path / "ssh_config"
    path.write_text("\n".join(lines) + "\n")
    return path


def push_error(url: str, config: Path) -> str:
    env = {**os.environ, CONFIG_ENV: str(config)}
    with pytest.raises(EngineError) as caught:
        push.push(Engine(), "jupyter-docker-kernel/default:latest", [url], environ=env)
    return str(caught.value)


def test_unknown_host_key_is_refused_with_how_to_add_it(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.touch()
    config = config_variant(node, tmp_path, UserKnownHostsFile=str(empty))
    said = push_error(node.url, config)
    assert "host key is not in your known_hosts" in said
    assert not empty.read_text()  # never accepted unseen


def test_refused_key_says_so(node: NodeUnderTest, tmp_path: Path) -> None:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = config_variant(node, tmp_path, IdentityFile=str(key))
    assert "refused your key" in push_error(node.url, config)


def test_unknown_host_says_so(node: NodeUnderTest) -> None:
    said = push_error("ssh://jdk-node@no-such-node.invalid", node.ssh_config)
    assert "host name is unknown" in said


def test_node_whose_engine_is_down_says_so(node: NodeUnderTest) -> None:
    """A second node, its dockerd stopped: push names the node's engine."""
    name = f"{node.name[:6]}x"
    other = start_node(name)
    try:
        pid = (other.state / "dockerd.pid").read_text().strip()
        subprocess.run(["kill", pid], check=True)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30)
        said = push_error(other.url, other.ssh_config)
        assert f"the engine on the node {other.url} does not answer" in said
    finally:
        stop_node(name)


def test_gc_leaves_a_nodes_ssh_master_alone(on_node: NodeUnderTest) -> None:
    """The master's control socket, lock and log live in the runtime base beside kernels'
    dirs; gc (and the janitor, by the same rules) must not take them for a dead kernel's
    leftovers (nor report them as removed)."""
    connection = Connection.to(on_node.url)
    connection.ensure()
    old = time.time() - 3600
    files = [p for p in runtime_base().iterdir() if p.name.startswith(CONTROL_PREFIX)]
    assert connection.control_path in files
    for path in files:
        os.utime(path, (old, old), follow_symlinks=False)
    result = reaper.collect(Engine(), dry_run=True)
    assert not [d for d in result.dirs if CONTROL_PREFIX in Path(d).name], result.dirs
    assert connection.control_path.exists()
    assert connection.alive()
