"""Remote nodes without a node: addresses, ssh's failures as one line, the node's launch
facts and the kernel's dir as sent there (pure; the real thing is tests/test_nodes.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.errors import EngineError
from jupyter_docker_kernel.node_backend import Load, choose, kernel_dir_bundle, node_launch
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import Node, ssh_failure


@pytest.mark.parametrize(
    ("url", "user", "host", "port"),
    [
        ("ssh://ann@node1", "ann", "node1", None),
        ("ssh://ann@node1:2222", "ann", "node1", 2222),
        ("ssh://node1", "", "node1", None),
        ("ssh://ann@10.0.0.2/", "ann", "10.0.0.2", None),
        ("ssh://ann@[fd00::2]:22", "ann", "[fd00::2]", 22),
    ],
)
def test_node_address_is_parsed(url: str, user: str, host: str, port: int | None) -> None:
    node = Node.parse(url)
    assert (node.user, node.host, node.port) == (user, host, port)


@pytest.mark.parametrize(
    "url", ["tcp://node1:2375", "ssh://", "ssh://a@b@c", "node1", "ssh://ann@node 1"]
)
def test_other_addresses_are_refused(url: str) -> None:
    with pytest.raises(EngineError, match="is not a node address"):
        Node.parse(url)


@pytest.mark.parametrize(
    ("stderr", "said"),
    [
        ("ssh: Could not resolve hostname nope: Name or service not known", "host name is unknown"),
        (
            "No ED25519 host key is known for 10.0.0.2 and you have requested strict checking.\n"
            "Host key verification failed.",
            "host key is not in your known_hosts",
        ),
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", "host key CHANGED"),
        ("jdk@10.0.0.2: Permission denied (publickey).", "refused your key"),
        ("ssh: connect to host 10.0.0.2 port 22: Connection refused", "nothing answers SSH"),
        ("ssh: connect to host 10.0.0.2 port 22: Connection timed out", "does not answer"),
        ("kex_exchange_identification: read: Connection reset by peer", "ssh to the node"),
    ],
)
def test_ssh_failures_are_one_clear_line(stderr: str, said: str) -> None:
    error = ssh_failure(Node.parse("ssh://jdk@10.0.0.2"), stderr, 255)
    assert said in error.what
    assert error.not_done
    assert error.fix


def launch(tmp_path: Path, env_file: str | None = None) -> hardening.Launch:
    return hardening.Launch(
        kernel_id="k",
        container_name="jdk-k-1",
        runtime_dir=str(tmp_path / "rt"),
        connection_file=str(tmp_path / "kernel.json"),
        supervisor_path=hardening.SUPERVISOR_PATH,
        host_uid=0,
        host_gid=0,
        workdir="/home/ann/course",
        env_file=env_file,
    )


def test_node_launch_names_the_nodes_paths_and_user(tmp_path: Path) -> None:
    remote = RunDir(Path("/tmp/jupyter-docker-kernel-999/k-1"))
    there = node_launch(launch(tmp_path, env_file=str(tmp_path / "env")), remote, 999, 995)
    assert there.runtime_dir == str(remote.sockets)
    assert there.connection_file == str(remote.connection)
    assert there.env_file == str(remote.env_file)
    assert there.supervisor_path == f"{remote.path}/_supervise.py"
    assert hardening.usage_hook_path(there) == f"{remote.path}/_usage.py"
    assert hardening.kernel_user(KernelSettings(), there) == "999:995"
    args = hardening.run_args(KernelSettings(), there)
    # No path of this host reaches the node: not the kernel's dir, not this package's
    # files (the seccomp profile is read by the node's CLI from the kernel's dir there).
    assert str(tmp_path) not in " ".join(args)
    assert str(Path(hardening.__file__).parent) not in " ".join(args)
    assert f"seccomp={remote.path}/seccomp.json" in args


def test_kernel_dir_bundle_holds_private_files_and_the_supervisor(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path)
    rundir.connection.write_text('{"key": "k"}')
    rundir.env_file.write_text("A=1\n")
    remote = RunDir(Path("/tmp/x/k-1"))
    there = node_launch(launch(tmp_path, env_file=str(rundir.env_file)), remote, 999, 995)
    data = kernel_dir_bundle(KernelSettings(), there, rundir)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["rt"].isdir()
        assert members["rt"].mode == 0o700
        assert members["kernel.json"].mode == 0o600
        assert members["env"].mode == 0o600
        supervise = tar.extractfile(members["_supervise.py"])
        assert supervise is not None
        assert supervise.read() == Path(hardening.SUPERVISOR_PATH).read_bytes()
        assert "_usage.py" in members
        assert "seccomp.json" in members


def test_the_least_loaded_node_that_answered_is_chosen() -> None:
    loads = [
        Load("ssh://a", running=3, available_mib=9000),
        Load("ssh://b", running=1, available_mib=100),
        Load("ssh://c", running=1, available_mib=4000),
        Load("ssh://d", error="connection refused"),
    ]
    chosen = choose(loads)
    assert chosen is not None
    assert chosen.url == "ssh://c"
    assert choose([Load("ssh://d", error="no answer in time")]) is None
