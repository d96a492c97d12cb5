"""The Kubernetes story end to end: a notebook's kernel as a pod, over CurveZMQ.

SIMULATED CONTROL PLANE, REAL KERNEL. No Kubernetes control plane can run on our machines,
so the API server is kmock's in-memory one (tests/kube_api.py: the official `kubernetes`
client talks HTTP to it as to a cluster), and its scripted kubelet RUNS each pod for real
(tests/pods.DockerKubelet): the pod's V1Pod, as the backend created it, becomes `docker run`
(every hardening field mapped or refused), its Secret's files are written where a kubelet
puts them, the container joins an internal Docker network the host reaches (its address is
the pod IP), its exit is the pod's Succeeded/Failed with the exit code, and the pod's
deletion is `docker rm`. Everything else is the product as a user runs it: `setup
--kubernetes --provisioner`, jupyter_client's KernelManager with that kernelspec, the
provisioner, Container, KubeBackend, and jupyter_client's own client talking CurveZMQ
straight to the pod. Not simulated away, and not proved here: admission, scheduling, a
real kubelet and the NetworkPolicy (tests/test_kube_cluster.py, with KUBECONFIG set).

One slow story, run once.
"""

from __future__ import annotations

import json
import queue
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock", reason="kmock needs Python 3.11+")
pytest.importorskip("kubernetes")

from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli, kube_channels
from tests import kernels, pods
from tests.kube_api import ApiServer

NS = "kernels"
LABEL = "jupyter-docker-kernel.test"


class Cluster:
    """The simulated cluster: kmock's API server with the Docker kubelet, its network."""

    def __init__(self, root: Path) -> None:
        self.network = f"jdk-test-kstory-{secrets.token_hex(3)}"
        pods.docker("network", "create", "--internal", "--label", f"{LABEL}=kstory", self.network)
        self.kubelet = pods.DockerKubelet(self.network, root, LABEL)
        self.server = ApiServer()
        assert self.server.cluster is not None
        self.server.cluster.kubelet = "docker"
        self.server.cluster.docker = self.kubelet
        self.closed = False

    def pods(self) -> list[dict[str, Any]]:
        return self.server.objects("pods")

    def network_exists(self) -> bool:
        return pods.docker("network", "inspect", self.network, check=False).returncode == 0

    def close(self) -> None:
        """Remove what is left (idempotent): the containers, the network, the server."""
        if self.closed:
            return
        self.closed = True
        left = self.kubelet.left()
        if left:
            pods.docker("rm", "-f", *left, check=False)
        if self.network_exists():
            pods.docker("network", "rm", self.network, check=False)
        self.server.close()


@pytest.fixture
def cluster(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The simulated cluster, and a kubeconfig naming it (what KubeBackend reads)."""
    root = tmp_path / "kubelet"
    root.mkdir(mode=0o755)
    sim = Cluster(root)
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "sim", "cluster": {"server": sim.server.url}}],
                "users": [{"name": "sim", "user": {"token": "t"}}],
                "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
                "current-context": "sim",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    try:
        yield sim
    finally:
        sim.close()


def the_running_pod(pods_now: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """The one kernel pod that runs now (a deleted one may linger Terminating in a cluster)."""
    running = [
        pod
        for pod in pods_now()
        if (pod.get("status") or {}).get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
    ]
    assert len(running) == 1, [p["metadata"]["name"] for p in running]
    return running[0]


def interrupt_reply(km: KernelManager, kc: Any, how: str = "spec") -> dict[str, Any]:
    """Interrupt a sleeping cell and return its execute_reply's content. how: "spec", as
    the kernelspec's interrupt_mode says (KernelManager.interrupt_kernel); "message", an
    interrupt_request on the control channel; "signal", SIGINT through the provisioner
    or to the argv launcher (KernelManager.signal_kernel), whatever the mode."""
    settle(kc)
    msg_id = kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
    try:
        kernels.wait_for_stream(kc, msg_id, "sleeping", timeout=30)
    except queue.Empty:
        raise AssertionError(
            f"the cell to interrupt (by {how}) printed nothing within 30 s; shell: "
            f"{shell_trail(kc)}; kernel alive: {km.is_alive()}"
        ) from None
    if how == "message":
        kc.control_channel.send(kc.session.msg("interrupt_request", content={}))
    elif how == "signal":
        km.signal_kernel(signal.SIGINT)
    else:
        km.interrupt_kernel()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        try:
            reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            # Say where the interrupt was lost, so one failure is enough to tell.
            raise AssertionError(
                f"no execute_reply to the interrupted cell within 30 s (interrupt by {how}); "
                f"kernel alive: {km.is_alive()}; shell messages meanwhile: {seen}; "
                f"iopub after the interrupt: {iopub_trail(kc)}"
            ) from None
        if reply["parent_header"].get("msg_id") == msg_id:
            content: dict[str, Any] = reply["content"]
            return content
        seen.append(f"{reply['msg_type']} {reply['content'].get('status')}")


def settle(kc: Any, tries: int = 10) -> None:
    """Wait until the kernel takes cells again after an error. ipykernel 7 sends an
    error's execute_reply first and only then starts aborting the execute_requests queued
    behind it (Kernel.execute_request -> _abort_queues, ended by a message it queues on
    its shell thread), so a cell sent the moment that reply arrives can come back
    "aborted", unrun: the interrupt story's second cell, right after the first
    interrupt's KeyboardInterrupt, would then never print and its interrupt never be
    answered. One cell that is not aborted proves the window closed (the end of the
    abort was queued before it)."""
    for _ in range(tries):
        reply, _outputs = kernels.execute(kc, "pass", timeout=30)
        if reply["status"] != "aborted":
            return
        time.sleep(0.2)
    raise AssertionError(f"the kernel still aborted cells after {tries} tries")


def shell_trail(kc: Any) -> list[str]:
    """What the shell channel holds now, one short line per reply (a failure's evidence:
    was the cell aborted?)."""
    trail: list[str] = []
    while len(trail) < 20:
        try:
            msg = kc.get_shell_msg(timeout=0.5)
        except queue.Empty:
            break
        trail.append(f"{msg['msg_type']} {msg['content'].get('status')}")
    return trail


def iopub_trail(kc: Any) -> list[str]:
    """What iopub holds now, one short line per message (a failure's evidence: did the
    kernel see a KeyboardInterrupt, go idle, restart?)."""
    trail: list[str] = []
    while len(trail) < 50:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            break
        content = msg["content"]
        what = content.get("execution_state") or content.get("ename") or content.get("name")
        trail.append(f"{msg['msg_type']} {what}")
    return trail


def notebook_story(
    kernel_name: str,
    workdir: Path,
    pods_now: Callable[[], list[dict[str, Any]]],
    pod_gone: Callable[[str], bool],
) -> None:
    """The user's story on a `setup --kubernetes --provisioner --copy-workdir` kernelspec
    whose work dir holds answer.txt = "42": KernelManager starts the kernel as a pod, the
    client connects straight to the pod IP over Curve and runs code in the copy, not as
    root -> interrupt (the kernelspec's mode, signal: through the pod's supervisor; then by
    message) -> restart (a new pod; pod_gone(old name) turns true) -> code again ->
    shutdown. Run against the simulated cluster here and a real one in
    tests/test_kube_cluster.py; pods_now lists the namespace's kernel pods as API JSON."""
    km = KernelManager(kernel_name=kernel_name)
    kc: Any = None
    try:
        km.start_kernel(cwd=str(workdir))
        first = the_running_pod(pods_now)
        info = km.get_connection_info()
        # Straight to the pod: its IP, the fixed ports, Curve keys (no relay, no loopback).
        assert info["ip"] == first["status"]["podIP"] != "127.0.0.1"
        assert info["transport"] == "tcp"
        assert info["shell_port"] == kube_channels.PORTS["shell"]
        assert km.curve_publickey is not None
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        reply, outputs = kernels.execute(
            kc, "import os; print(open('answer.txt').read(), os.getuid())", timeout=30
        )
        assert reply["status"] == "ok"
        answer, uid = kernels.stream_text(outputs).split()
        assert (answer, uid != "0") == ("42", True)  # the copy; never root

        assert km.kernel_spec is not None
        assert km.kernel_spec.interrupt_mode == "signal"
        for how in ("spec", "message"):
            interrupted = interrupt_reply(km, kc, how)
            assert (interrupted["status"], interrupted["ename"]) == ("error", "KeyboardInterrupt")
        kc.stop_channels()

        km.restart_kernel(now=False)
        second = the_running_pod(pods_now)
        assert second["metadata"]["name"] != first["metadata"]["name"]
        kernels.wait_until(lambda: pod_gone(first["metadata"]["name"]), timeout=30)
        # A restart's pod has its own IP and keys: a client asks the KernelManager anew.
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        reply, outputs = kernels.execute(kc, "print(6 * 7)", timeout=30)
        assert kernels.stream_text(outputs) == "42\n"
        kc.stop_channels()
        kc = None
        km.shutdown_kernel(now=False)
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)


def work_dir(tmp_path: Path) -> Path:
    """The submission's directory the story's kernel gets a copy of."""
    workdir = tmp_path / "ps1"
    workdir.mkdir()
    (workdir / "answer.txt").write_text("42")
    return workdir


@pytest.mark.docker
# One rerun: an interrupt's reply did not come within 30 s once in the fresh-clone run of
# stop 13 and about once in ten runs under load (main before and after the merges alike);
# not diagnosed. A failure is still reported (issue 15 note).
@pytest.mark.flaky(reruns=1, reruns_delay=2)
def test_a_notebook_runs_in_a_kernel_pod_over_curve_from_start_to_shutdown(
    cluster: Cluster, kernel_image: str, data_dir: Path, tmp_path: Path
) -> None:
    """setup --kubernetes --provisioner -> KernelManager starts the kernel as a pod (the
    submission's directory copied in through its Secret) -> the client connects straight
    to the pod IP over Curve and runs code -> interrupt (signal through the pod's
    supervisor, then by message) -> restart (a new pod,
    the old one's container gone) -> shutdown -> no pod, Secret, container or network left.
    """
    assert cli.main(["setup", "--name", "kstory", "--user", "--kubernetes", "--namespace", NS,
                     "--provisioner", "--copy-workdir", "--interrupt-mode", "signal",
                     "--image", kernel_image]) == 0  # fmt: skip

    def container_gone(pod: str) -> bool:
        names = pods.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        return cluster.kubelet.containers[pod] not in names

    notebook_story("kstory", work_dir(tmp_path), cluster.pods, container_gone)
    assert cluster.pods() == []
    assert cluster.server.objects("secrets") == []
    assert cluster.kubelet.left() == []
    cluster.close()
    assert not cluster.network_exists()
