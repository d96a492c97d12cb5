"""Helpers the Docker tests share: run code through a real client, find a kernel's container."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import jupyter_kernel_test as jkt
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import AsyncKernelManager, KernelManager, start_new_kernel

from jupyter_docker_kernel.engine import LABEL_KERNEL_ID
from jupyter_docker_kernel.launcher import kernel_id_from


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


def containers_of(kernel_id: str, *, running_only: bool = False) -> list[str]:
    """Ids of the containers serving this kernel id: labelled with it, or (a claimed warm
    container, whose labels were set before it had a kernel) named after it."""
    found: set[str] = set()
    for selector in (f"label={LABEL_KERNEL_ID}={kernel_id}", f"name=^jdk-{kernel_id}-"):
        args = ["docker", "ps", "-q", "--no-trunc", "--filter", selector]
        if not running_only:
            args.insert(2, "-a")
        proc = subprocess.run(args, capture_output=True, text=True, check=True)
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


def stream_text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    """All text a cell wrote to one stream."""
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def start(kernel_name: str, cwd: str, **kw: Any) -> tuple[KernelManager, BlockingKernelClient]:
    """Start a kernel the way Jupyter does and wait until it answers."""
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
