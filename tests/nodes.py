"""Remote nodes for the tests (issue 13): each one a real dockerd and sshd on this machine,
in network and mount namespaces of its own (scripts/test-node says how they are made).

`node` is session-scoped: one node per test session, started on first use and removed at
the session's end, also after a failure (the script's `stop` kills what is left in the
node's mount namespace and removes its netns, veth and state dir; a later `start` of the
same name first removes what a killed session left). `pushed_node` is the same node with
the default image copied onto it once (`image push`, about a minute), which its tests
share. Tests using them carry the `nodes` marker (and `docker`: the image comes from this
host's engine). They need root; under CI they fail, not skip, without it.

The client side of a node: its ssh:// URL and an ssh_config file (its own key and
known_hosts, StrictHostKeyChecking yes), handed to the product through
JUPYTER_DOCKER_KERNEL_SSH_CONFIG, as OpenSSH reads the passwd entry's home, not $HOME.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import push
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.node_backend import GUARD_NAME
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.conftest import not_here

#: What pushed_node's push did (push.Pushed per node), for tests/test_nodes.py.
PUSHES: list[Any] = []
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "test-node"


@dataclasses.dataclass(frozen=True)
class NodeUnderTest:
    """One running test node, as scripts/test-node's facts describe it."""

    name: str
    address: str
    url: str
    ssh_config: Path
    state: Path
    #: Seconds `scripts/test-node start` took.
    start_seconds: float

    def ssh(
        self, *command: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the node as its user, through its own connection."""
        argv = ["ssh", "-F", str(self.ssh_config), self.address, shlex.join(command)]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The node's engine CLI (its own dockerd), as the node user runs it."""
        return self.ssh("docker", *args, check=check)

    def started_since(self, began: int) -> list[str]:
        """Ids of the containers but the guard (as containers()) the node's engine started
        since `began` (this host's clock is the node's)."""
        guard = GUARD_NAME.partition("{")[0]
        rows = self.docker(
            *("events", "--since", str(began), "--until", str(int(time.time()) + 1)),
            *("--filter", "event=start", "--format", "{{.ID}} {{.Actor.Attributes.name}}"),
        ).stdout.splitlines()
        return [r.split()[0] for r in rows if r.strip() and not r.split()[1].startswith(guard)]

    def containers(self, *, all_states: bool = True) -> list[str]:
        """Ids of the node's containers but its socket-dir guard: what kernels, probes and
        pools left. The guard (one per node user, node_backend.GUARD_NAME) is not a
        kernel's: it outlives the last kernel by node_backend's idle time, then ends by
        itself (tests/test_node_guard.py checks that)."""
        found = self.docker(
            "ps", *(["-a"] if all_states else []), "--format", "{{.ID}} {{.Names}}"
        ).stdout.split("\n")
        guard = GUARD_NAME.partition("{")[0]
        rows = [line.split() for line in found if line.strip()]
        return [row[0] for row in rows if not row[1].startswith(guard)]


def node_session_name() -> str:
    """A node name of this session's own (the script takes 1-8 of [a-z0-9])."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    pid, name = os.getpid(), ""
    while pid:
        pid, rest = divmod(pid, 36)
        name = digits[rest] + name
    return f"t{name}"[:8]


def start_node(name: str) -> NodeUnderTest:
    """scripts/test-node start NAME; its facts."""
    began = time.monotonic()
    proc = subprocess.run(
        [str(SCRIPT), "start", name], capture_output=True, text=True, timeout=180, check=False
    )
    took = time.monotonic() - began
    if proc.returncode != 0:
        raise AssertionError(f"test-node start {name} failed: {proc.stderr}")
    facts = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return NodeUnderTest(
        name=name,
        address=facts["ADDRESS"],
        url=facts["URL"],
        ssh_config=Path(facts["SSH_CONFIG"]),
        state=Path(facts["STATE"]),
        start_seconds=took,
    )


def stop_node(name: str) -> None:
    """scripts/test-node stop NAME (idempotent)."""
    subprocess.run([str(SCRIPT), "stop", name], capture_output=True, timeout=120, check=False)


@contextlib.contextmanager
def second_node(
    first: NodeUnderTest, suffix: str, image: str, config: Path
) -> Iterator[NodeUnderTest]:
    """A test node beside `first` for the with block (then stopped), with `image` pushed
    to it and CONFIG_ENV naming `config`, one ssh_config for both nodes: what a
    two-node kernelspec's tests need."""
    other = start_node(f"{first.name[:6]}{suffix}")
    try:
        config.write_text(first.ssh_config.read_text() + other.ssh_config.read_text())
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CONFIG_ENV, str(config))
            push.push(Engine(), image, [other.url])
            yield other
    finally:
        stop_node(other.name)


@pytest.fixture(scope="session")
def node() -> Iterator[NodeUnderTest]:
    """A node of this session's own, without images; removed at the session's end."""
    if os.geteuid() != 0:
        not_here("test nodes need root (namespaces, a dockerd, an sshd)", "node")
    if shutil.which("sshd", path="/usr/sbin:/usr/bin") is None:
        not_here("no sshd: run scripts/bootstrap-nodes", "node")
    name = node_session_name()
    # Nodes of killed sessions (no teardown ran): their starter is gone.
    subprocess.run([str(SCRIPT), "gc"], capture_output=True, timeout=300, check=False)
    try:
        made = start_node(name)
        print(f"\ntest node {name} at {made.url} started in {made.start_seconds:.1f} s")
        yield made
    finally:
        stop_node(name)


@pytest.fixture(scope="session")
def pushed_node(node: NodeUnderTest, kernel_image: str) -> NodeUnderTest:
    """The session's node with the default image on it, pushed once (image push); the
    first push's outcome is kept in PUSHES for the test that checks it."""
    from jupyter_docker_kernel import push

    env = {**os.environ, CONFIG_ENV: str(node.ssh_config)}
    PUSHES.extend(push.push(Engine(), kernel_image, [node.url], environ=env))
    print(f"\npushed {kernel_image} to {node.url}: {PUSHES}")
    return node


@pytest.fixture
def on_node(node: NodeUnderTest, monkeypatch: pytest.MonkeyPatch) -> NodeUnderTest:
    """The product's ssh calls use the node's ssh_config in this test."""
    monkeypatch.setenv(CONFIG_ENV, str(node.ssh_config))
    return node
