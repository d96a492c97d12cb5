"""The hostile suites against a kernel on a test node (issue 13), their own test bodies.

tests/test_node_hostile_access.py and test_node_hostile_resources.py import every test
and module fixture of tests/test_hostile_access.py and test_hostile_resources.py, and
these fixtures beside them, which pytest prefers inside those modules:

- `suite_on_the_node` (autouse, first in each module): every kernelspec the suites'
  fixtures install gets `--engine-host NODE --node-shared-path SHARED` (conftest's
  INSTALL_EXTRA), in a Jupyter data dir of the module's own (the local suites' specs of
  the same names stay as they are); the checks' docker calls ask the node's engine
  (kernels.ENGINE_SSH); the product's ssh uses the node's ssh_config.
- The suites' host side looks into a kernel's socket dir (b06 plants marks there, A18
  measures it and checks its removal) on the node's filesystem: `runtime_dir_of` and
  `host_runtime_dir` answer with the path through the node's mount namespace
  (/proc/PID/root of its holder process; the tests run as root). c10 expects no
  "is not a socket" line on a node (REPLACED_SOCKET_SAID): the relay connects to
  forwards of the sockets' pinned inodes there.
- `runtime` is "runc" alone: gVisor on a node is the same runtime under the same
  options (the node's dockerd has runsc registered); one runtime keeps the slow node
  stories to one run each.
- `hostile_kernel`: the suite's kernelspec (HOSTILE_LIMITS, mounted work dir) on the node.
- `tmp_path_factory`: the tests' directories (work dirs, planted files, logs) below the
  declared shared path, a directory this host and the node see at the same path (outside
  the node's private /tmp and /run: the same filesystem, as an NFS export would be), so
  the suites' mounted work dirs are mounted on the node (node_workdir.check).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _pytest.tmpdir import TempPathFactory

from jupyter_docker_kernel.kernelspec import settings_from_kernel_json
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests import conftest, kernels, test_hostile_access, test_hostile_resources
from tests.broker_env import Runtime
from tests.conftest import HOSTILE_LIMITS, install_hostile
from tests.nodes import NodeUnderTest


# pytest marks the class final for its typing only; the subclass changes modes alone.
class SharedTempPathFactory(TempPathFactory):  # type: ignore[misc]
    """pytest's factory below the node's shared dir, its directories 0711: the node user's
    `test -d` at each start (node_workdir.check) must reach the work dir, as on a share."""

    def mktemp(self, basename: str, numbered: bool = True) -> Path:
        path = super().mktemp(basename, numbered)
        for parent in (self.getbasetemp(), path):
            parent.chmod(0o711)
        return path


@pytest.fixture(scope="module")
def shared_root(pushed_node: NodeUnderTest) -> Iterator[Path]:
    """The declared shared path: in the node's state dir (removed with the node)."""
    root = pushed_node.state / "shared"
    root.mkdir(mode=0o711, exist_ok=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def suite_on_the_node(
    pushed_node: NodeUnderTest, shared_root: Path, tmp_path_factory: TempPathFactory
) -> Iterator[None]:
    data = tmp_path_factory.mktemp("jupyter-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        patch.setenv("JUPYTER_DATA_DIR", str(data))
        patch.setenv("JUPYTER_PATH", str(data))
        patch.setattr(
            conftest,
            "INSTALL_EXTRA",
            ["--engine-host", pushed_node.url, "--node-shared-path", str(shared_root)],
        )
        patch.setattr(
            kernels, "ENGINE_SSH", ["ssh", "-F", str(pushed_node.ssh_config), pushed_node.address]
        )
        # A node's kernels run as the node user's uid (docs/nodes.md), not this host's
        # 65534-for-root: the suites' "not root" checks expect that uid.
        uid = int(pushed_node.ssh("id", "-u").stdout)
        patch.setattr(test_hostile_access, "kernel_uid", lambda *_: uid)
        patch.setattr(test_hostile_resources, "KERNEL_UID", uid)
        # The kernels' socket dirs are on the node, in its private /tmp: this host (root)
        # reaches them through the node's mount namespace, as the suites' host side must
        # (b06 plants its marks there, A18 measures and checks the dir's removal).
        on_node = node_path(pushed_node)
        patch.setattr(
            test_hostile_access,
            "runtime_dir_of",
            lambda session: str(on_node(local_runtime_dir_of(session))),
        )
        patch.setattr(
            test_hostile_resources,
            "host_runtime_dir",
            lambda container: on_node(local_host_runtime_dir(container)),
        )
        patch.setattr(test_hostile_access, "REPLACED_SOCKET_SAID", None)
        yield


local_runtime_dir_of = test_hostile_access.runtime_dir_of
local_host_runtime_dir = test_hostile_resources.host_runtime_dir


def node_path(node: NodeUnderTest) -> Callable[[str | Path], Path]:
    """A path of the node's filesystem as this host (root) reaches it: through its mount
    namespace's holder process (/proc/PID/root)."""
    holder = (node.state / "holder.pid").read_text().strip()
    return lambda path: Path(f"/proc/{holder}/root") / str(path).lstrip("/")


@pytest.fixture(scope="module")
def tmp_path_factory(shared_root: Path, request: pytest.FixtureRequest) -> TempPathFactory:
    return SharedTempPathFactory(
        shared_root / "tmp",
        retention_count=1,
        retention_policy="all",
        trace=request.config.trace.get("tmpdir"),
        _ispytest=True,
    )


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime("runc")


@pytest.fixture(scope="module")
def hostile_kernel(kernel_image: str, runtime: Runtime) -> str:
    """conftest's hostile_kernel, installed on the node (by INSTALL_EXTRA)."""
    return install_hostile("jdk-test-hostile", kernel_image, runtime, *HOSTILE_LIMITS)


def test_the_suites_kernelspec_runs_on_the_node(
    hostile_kernel: str, pushed_node: NodeUnderTest, shared_root: Path
) -> None:
    """The overrides are in force: the suite's kernelspec names the node and the shared
    path (else every test of the module would pass against this host's engine)."""
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / hostile_kernel / "kernel.json"
    settings = settings_from_kernel_json(json.loads(spec.read_text()))
    assert settings.engine_host == pushed_node.url
    assert settings.node_shared_paths == (str(shared_root),)
    assert kernels.ENGINE_SSH is not None
