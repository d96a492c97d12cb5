"""The Kubernetes story against a REAL cluster: runs only with KUBECONFIG set (marker
`kubernetes`); skipped here, where no control plane can run (docs/kubernetes.md).

Needs a test namespace (JDK_KUBE_NAMESPACE, default jdk-test) with the Role and the
NetworkPolicy of docs/kubernetes.md applied, and the kernel image (JDK_KUBE_IMAGE) on the
nodes; the notebook story also needs this machine to reach pod IPs. It has not
been run yet: the first run on a cluster is what proves admission, scheduling and the
kubelet agree with the in-memory tests (tests/test_kube_backend.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import hardening, kube_manage
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings

pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="no Kubernetes cluster: set KUBECONFIG (and JDK_KUBE_NAMESPACE) to run",
    ),
]


def test_kernel_pod_runs_is_listed_and_is_gone_after_removal(tmp_path: Path) -> None:
    from jupyter_docker_kernel.kube_backend import KubeBackend

    namespace = os.environ.get("JDK_KUBE_NAMESPACE", "jdk-test")
    settings = KernelSettings(kube_namespace=namespace, workdir="none", max_lifetime=300)
    backend = KubeBackend.for_settings(settings)
    conn = tmp_path / "kernel.json"
    conn.write_text(json.dumps({"key": "k", "kernel_name": "cluster-test"}))
    launch = hardening.Launch(
        kernel_id="cluster-test",
        container_name=f"jdk-cluster-test-{os.urandom(3).hex()}",
        runtime_dir=str(tmp_path),
        connection_file=str(conn),
        supervisor_path=hardening.SUPERVISOR_PATH,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        workdir=str(tmp_path),
        launcher_pid=os.getpid(),
    )
    cold = backend.start_cold(settings, launch, RunDir(tmp_path / "rd"))
    try:
        assert cold.endpoint.connection["ip"] == cold.endpoint.ip  # answered over Curve
        assert cold.name in {row.name for row in kube_manage.kernel_pods(backend.api)}
        assert [v for v in kube_manage.checks(backend.api, settings) if v[1] == "FAIL"] == []
    finally:
        backend.remove(cold.name)
    assert backend.inspect(cold.name) is None or backend.wait(cold.name) >= 0


def test_the_notebook_story_runs_on_a_real_cluster(data_dir: Path, tmp_path: Path) -> None:
    """tests/test_kube_story.py's story (KernelManager, Curve straight to the pod IP,
    interrupt, restart, shutdown) with the cluster's own API server and kubelet; this host
    must reach pod IPs (run it in a pod the NetworkPolicy admits). JDK_KUBE_IMAGE names an
    image the nodes have (default: the default image's tag)."""
    from jupyter_docker_kernel import cli, kube_manifests
    from jupyter_docker_kernel.kube_backend import KubeBackend
    from tests.test_kube_story import notebook_story, work_dir

    namespace = os.environ.get("JDK_KUBE_NAMESPACE", "jdk-test")
    image = os.environ.get("JDK_KUBE_IMAGE", "jupyter-docker-kernel/default:latest")
    setup = ["setup", "--name", "kcluster", "--user", "--kubernetes", "--namespace", namespace,
             "--provisioner", "--copy-workdir", "--interrupt-mode", "signal",
             "--image", image]  # fmt: skip
    assert cli.main(setup) == 0
    backend = KubeBackend.for_settings(KernelSettings(kube_namespace=namespace, workdir="none"))
    labels = {
        **kube_manifests.KERNEL_SELECTOR,
        kube_manifests.LABEL_SERVER: kube_manifests.dns_label(backend.server),
    }
    selector = ",".join(f"{key}={value}" for key, value in labels.items())

    def pods_now() -> list[dict[str, Any]]:
        api = backend.api
        found = api.core.list_namespaced_pod(namespace, label_selector=selector)
        return [api.serialize(pod) for pod in found.items]

    def pod_gone(name: str) -> bool:
        return name not in {pod["metadata"]["name"] for pod in pods_now()}

    notebook_story("kcluster", work_dir(tmp_path), pods_now, pod_gone)
    assert pods_now() == []
