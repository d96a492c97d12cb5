"""The Kubernetes story through the argv launcher: a client that ignores provisioners.

SIMULATED CONTROL PLANE, REAL KERNEL, as tests/test_kube_story.py (whose simulated cluster
this reuses: kmock's in-memory API server, and a scripted kubelet that runs each pod's
container under Docker on an internal network). The kernelspec is `setup --kubernetes`
without --provisioner, so jupyter_client's KernelManager runs its argv: the thin client,
the resident helper, session.run, and kube_proxy's ChannelProxy, which binds the
connection file's loopback ports plain and talks CurveZMQ to the pod. Not proved here:
admission, scheduling, a real kubelet and the NetworkPolicy.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock", reason="kmock needs Python 3.11+")
pytest.importorskip("kubernetes")

from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli, kube_manifests
from tests import kernels
from tests.test_kube_story import NS, Cluster, cluster, interrupt_reply, the_running_pod, work_dir

__all__ = ["cluster"]  # the fixture, imported for pytest


def ports_free(info: Mapping[str, Any]) -> bool:
    """Whether every channel port of the connection file can be bound again (the proxy
    closed its sockets)."""
    for channel in ("shell", "iopub", "stdin", "control", "hb"):
        with socket.socket() as sock:
            # As libzmq binds: a closed connection's TIME_WAIT does not hold the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((info["ip"], int(info[f"{channel}_port"])))
            except OSError:
                return False
    return True


def nudge(kc: Any, timeout: float) -> None:
    """What Jupyter Server's nudge does for a (re)connected client: kernel_info requests
    until an iopub message arrives, so its subscription has reached the kernel."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kc.kernel_info()
        try:
            kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        while True:  # the rest of what the nudges caused
            try:
                kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                return
    raise AssertionError(f"no iopub message within {timeout} s")


@pytest.mark.docker
# Once in CI (2026-12-04, loaded host) the first execute after the restart's nudge got no
# iopub within 60 s; 6 runs alone passed. Rerun once before calling it a failure.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
def test_an_argv_kubernetes_kernel_runs_through_the_curve_proxy_from_start_to_shutdown(
    cluster: Cluster, kernel_image: str, data_dir: Path, tmp_path: Path
) -> None:
    """setup --kubernetes (argv) -> KernelManager runs the argv -> the client talks plain
    to loopback ports, the proxy CurveZMQ to the pod -> code runs in the copy, as a uid of
    its own, not root
    -> interrupt (message, then SIGINT to the launcher: through the pod's supervisor)
    -> restart: the SAME client, still connected to the same ports,
    runs code in the new pod -> shutdown -> no pod, Secret, container, network, and the
    host ports are free again."""
    assert cli.main(["setup", "--name", "kargv", "--user", "--kubernetes", "--namespace", NS,
                     "--copy-workdir", "--image", kernel_image]) == 0  # fmt: skip
    km = KernelManager(kernel_name="kargv")
    kc: Any = None
    try:
        km.start_kernel(cwd=str(work_dir(tmp_path)))
        info = km.get_connection_info()
        assert info["ip"] == "127.0.0.1"
        assert km.curve_publickey is None  # the client side is plain; Curve is the proxy's
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        first = the_running_pod(cluster.pods)
        reply, outputs = kernels.execute(
            kc, "import os; print(open('answer.txt').read(), os.getuid())", timeout=30
        )
        assert reply["status"] == "ok"
        answer, uid = kernels.stream_text(outputs).split()
        # Not root, and a uid of its own (kube_manifests.pod_user: its nproc cap is its own).
        assert (answer, int(uid) >= kube_manifests.OWN_UID_BASE) == ("42", True)

        # The kernelspec's (message, through the proxy), then SIGINT to the launcher,
        # which Container.interrupt sends on through the pod's supervisor.
        for how in ("spec", "signal"):
            interrupted = interrupt_reply(km, kc, how)
            assert (interrupted["status"], interrupted["ename"]) == ("error", "KeyboardInterrupt")

        km.restart_kernel(now=False)
        kernels.wait_until(
            lambda: any(
                p["metadata"]["name"] != first["metadata"]["name"]
                and (p.get("status") or {}).get("phase") == "Running"
                for p in cluster.pods()
            ),
            timeout=120,
        )
        # The same client: the host ports and the HMAC key did not change (a websocket's
        # zmq sockets stay connected the same way). As after a local kernel's restart, its
        # iopub SUBSCRIBE must reach the new kernel before outputs can: nudge first.
        nudge(kc, timeout=120)
        reply, outputs = kernels.execute(kc, "print(6 * 7)", timeout=60)
        assert kernels.stream_text(outputs) == "42\n"
        kc.stop_channels()
        kc = None
        km.shutdown_kernel(now=False)
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    kernels.wait_until(lambda: cluster.pods() == [], timeout=30)
    assert cluster.server.objects("secrets") == []
    assert cluster.kubelet.left() == []
    kernels.wait_until(lambda: ports_free(info), timeout=10)
    cluster.close()
    assert not cluster.network_exists()
