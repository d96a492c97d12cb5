"""Helpers the Docker tests share: start a kernel, run code through a real client, find a
kernel's container, wait for events.

`running_kernel()` is the one way a test starts a kernel through jupyter_client and stops it
again: it checks that nothing of the kernel is left afterwards, and records what
conftest.pytest_runtest_makereport prints when the test fails (the launcher's log and
`docker inspect` of the kernel's container).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupyter_kernel_test as jkt
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import AsyncKernelManager, KernelManager, start_new_kernel

from jupyter_docker_kernel import kernelspec
from jupyter_docker_kernel.engine import LABEL_KERNEL_ID
from jupyter_docker_kernel.launcher import kernel_id_from, runtime_base


def kernel_key(km: KernelManager | AsyncKernelManager) -> str:
    """The id our launcher labels the container with (from the connection file's name)."""
    return kernel_id_from(km.connection_file)


def launcher_process(km: KernelManager) -> subprocess.Popen[bytes]:
    """The launcher process jupyter_client started (the kernelspec's argv)."""
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    assert isinstance(km.provisioner, LocalProvisioner)
    process = km.provisioner.process
    assert process is not None
    return process


#: The engine whose view the checks take (containers_of, conftest.inspect, docker_argv):
#: None is this host's docker CLI; a test node's ssh argv (tests/node_suites.py sets it
#: while the suites run against a node) runs the node's CLI there instead.
ENGINE_SSH: list[str] | None = None


def docker_argv(args: list[str]) -> list[str]:
    """The argv of one docker CLI call on the engine under test (ENGINE_SSH)."""
    if ENGINE_SSH is None:
        return ["docker", *args]
    return [*ENGINE_SSH, shlex.join(["docker", *args])]


def containers_of(
    kernel_id: str, *, running_only: bool = False, env: dict[str, str] | None = None
) -> list[str]:
    """Ids of the containers serving this kernel id: labelled with it, or (a claimed warm
    container, whose labels were set before it had a kernel) named after it. `env` (see
    docker_env) picks another engine than the current DOCKER_HOST's."""
    found: set[str] = set()
    for selector in (f"label={LABEL_KERNEL_ID}={kernel_id}", f"name=^jdk-{kernel_id}-"):
        args = ["ps", "-q", "--no-trunc", "--filter", selector]
        if not running_only:
            args.insert(1, "-a")
        proc = subprocess.run(
            docker_argv(args), capture_output=True, text=True, check=True, env=env
        )
        found.update(proc.stdout.split())
    return sorted(found)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll predicate until true; returns the seconds it took, or raises AssertionError."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start


def execute(
    kc: BlockingKernelClient, code: str, timeout: float = 60, **kw: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run code; returns the execute_reply content and the iopub messages it caused."""
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=outputs.append, **kw)
    return reply["content"], outputs


def wait_for_stream(kc: BlockingKernelClient, msg_id: str, text: str, timeout: float = 60) -> None:
    """Block until the cell `msg_id` has written `text` to a stream (so it is running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and text in msg["content"]["text"]
        ):
            return
    raise AssertionError(f"the cell never printed {text!r}")


def wait_for_execute_input(kc: BlockingKernelClient, msg_id: str, timeout: float = 60) -> None:
    """Block until the kernel has begun the cell `msg_id` (its execute_input on iopub): an
    event to act on (a kill, an interrupt) instead of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            return
    raise AssertionError(f"the kernel never began the cell {msg_id} within {timeout} s")


def stream_text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    """All text a cell wrote to one stream."""
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


@dataclasses.dataclass
class StartedKernel:
    """What a failure report needs about one kernel a test started with running_kernel()."""

    kernel_name: str
    #: The id our container and runtime dir are named and labelled with.
    key: str
    #: The launcher's (or the provisioner's kernel's) stderr.
    log: Path
    #: The engine the kernel runs on (engine_of): the one whose containers the checks list.
    docker_host: str | None
    #: `docker inspect` taken when the test's body failed, before the kernel was shut down.
    inspect: str = ""
    #: True when running_kernel made the log file (and so removes it afterwards).
    own_log: bool = False


#: The kernels running_kernel() started during the current test, oldest first.
#: conftest.pytest_runtest_makereport prints them on a failure and clears the list.
STARTED: list[StartedKernel] = []


def key_of(km: KernelManager | AsyncKernelManager) -> str:
    """The id the kernel's container is labelled with, for the argv launcher (from the
    connection file's name) and for our provisioner (its own `key`) alike."""
    key = getattr(km.provisioner, "key", None)
    return key if isinstance(key, str) else kernel_key(km)


def engine_of(km: KernelManager) -> str | None:
    """The engine address the kernel runs on: its kernelspec's engine_host (a Podman
    kernelspec names Podman's socket), else DOCKER_HOST now (None: the CLI's default)."""
    spec = km.kernel_spec
    try:
        settings = kernelspec.settings_from_kernel_json(spec.to_dict()) if spec else None
    except Exception:  # not one of ours (e.g. the stock python3): the environment decides
        settings = None
    if settings is not None and settings.engine_host:
        return settings.engine_host
    return os.environ.get("DOCKER_HOST")


def runtime_dirs_of(key: str) -> list[Path]:
    """The kernel's runtime dirs (`<key>-<nonce>` under the runtime base) that still exist."""
    return sorted(p for p in runtime_base().iterdir() if p.name.startswith(f"{key}-"))


def docker_env(host: str | None) -> dict[str, str]:
    """The environment for a docker CLI call that must ask the engine at `host`."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    if host:
        env["DOCKER_HOST"] = host
    return env


def inspect_text(started: StartedKernel) -> str:
    """`docker inspect` of the kernel's containers, as text (or why there is none)."""
    env = docker_env(started.docker_host)
    try:
        ids = containers_of(started.key, env=env)
        if not ids:
            return f"(no container of kernel {started.key} left to inspect)"
        proc = subprocess.run(
            docker_argv(["inspect", *ids]), capture_output=True, text=True, env=env
        )
    except (OSError, subprocess.CalledProcessError) as exc:  # the report must not crash
        return f"(cannot ask the engine: {exc})"
    return proc.stdout + proc.stderr


@contextlib.contextmanager
def running_kernel(
    kernel_name: str,
    cwd: str | Path,
    *,
    log: Path | None = None,
    ready_timeout: float = 120,
    now: bool = False,
    gone_within: float = 10,
    manager: dict[str, Any] | None = None,
    **start_kw: Any,
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A kernel started the way Jupyter starts it, answering; stopped and checked after.

    Works for the argv launcher's kernelspecs and our provisioner's alike (both through a
    KernelManager). Yields the manager and a started blocking client once kernel_info
    has been answered. On the way out, whatever happened in the body, the client stops
    and the kernel is shut down (`now=True`: without the polite shutdown request; a kernel
    the body killed is only cleaned up). Then, if the body succeeded, it ASSERTS that
    within `gone_within` seconds no container labelled with the kernel's id is left on
    the kernel's engine (engine_of), and no runtime dir of the kernel either.

    The launcher's stderr goes to `log` (kept open while the kernel runs: a restart
    writes to it too), or to a temporary file; a failing test prints it (conftest).
    `manager` holds KernelManager traits (e.g. transport="ipc"); `start_kw` go to
    start_kernel.
    """
    own_log = log is None
    if log is None:
        fd, name = tempfile.mkstemp(prefix="jdk-launcher-", suffix=".log")
        os.close(fd)
        log = Path(name)
    km = KernelManager(kernel_name=kernel_name, **(manager or {}))
    with log.open("w") as stderr:
        km.start_kernel(cwd=str(cwd), stderr=stderr, **start_kw)
        started = StartedKernel(kernel_name, key_of(km), log, engine_of(km), own_log=own_log)
        STARTED.append(started)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=ready_timeout)
            yield km, kc
        except BaseException:
            started.inspect = inspect_text(started)
            raise
        finally:
            kc.stop_channels()
            if km.has_kernel and km.is_alive():
                km.shutdown_kernel(now=now)
            else:
                with contextlib.suppress(Exception):
                    km.shutdown_kernel(now=True)
            km.cleanup_resources()
    assert_nothing_left(started, gone_within)


def assert_nothing_left(started: StartedKernel, within: float) -> None:
    """No container of the kernel on its engine and no runtime dir of it, within seconds."""
    env = docker_env(started.docker_host)
    try:
        wait_until(
            lambda: not containers_of(started.key, env=env) and not runtime_dirs_of(started.key),
            within,
        )
    except AssertionError:
        raise AssertionError(
            f"{within} s after {started.kernel_name}'s shutdown, left: containers "
            f"{containers_of(started.key, env=env)}, runtime dirs {runtime_dirs_of(started.key)}"
        ) from None


def start(kernel_name: str, cwd: str, **kw: Any) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a kernel the way Jupyter does and wait until it answers.

    For the tests whose story is the stop itself (a kill, a shutdown they check); any
    other test uses running_kernel()."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(cwd=cwd, **kw)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def stop(km: KernelManager, kc: BlockingKernelClient) -> None:
    """Shut down cleanly (ignoring a kernel that is already gone)."""
    kc.stop_channels()
    if km.has_kernel:
        km.shutdown_kernel(now=False)
    km.cleanup_resources()


def free_port() -> int:
    """A TCP port on the host's 127.0.0.1 where nothing listens now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def empty_dir() -> tempfile.TemporaryDirectory[str]:
    """A cwd for jupyter_kernel_test's kernels: the kernel mounts its cwd, and this
    repository is no business of a kernel under test. 0777, as the kernel may run as
    another uid."""
    cwd = tempfile.TemporaryDirectory(prefix="jdk-protocol-")
    Path(cwd.name).chmod(0o777)
    return cwd


class ContainerKernelTests(jkt.KernelTests):  # type: ignore[misc]  # the suite has no types
    """jupyter_kernel_test's suite with its kernel started in an empty directory.

    Subclass it through this module (`kernels.ContainerKernelTests`), never import the
    name into a test module: pytest would collect and run it there.
    """

    kernel_name = ""
    _cwd: tempfile.TemporaryDirectory[str]

    @classmethod
    def setUpClass(cls) -> None:
        cls._cwd = empty_dir()
        cls.km, cls.kc = start_new_kernel(kernel_name=cls.kernel_name, cwd=cls._cwd.name)

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        cls._cwd.cleanup()
