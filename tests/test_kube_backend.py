"""The Kubernetes backend's API conversation, against an IN-MEMORY API server (simulated).

No Kubernetes control plane runs on our machines: every test here talks over HTTP, with
the official `kubernetes` client, to kmock's in-memory API server plus the few things a
real API server and kubelet add (tests/kube_api.py: uids, selectors, RBAC 403s, a kubelet
that moves pods to Running, Pending or Failed, the garbage collector's cascade). What it
proves: which calls the backend makes, in which order, with which bodies, and what it does
with each answer. What it cannot prove: admission, scheduling, the kubelet's real
behaviour, networking (tests/test_kube_cluster.py does, with KUBECONFIG set).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock", reason="kmock needs Python 3.11+")
kubernetes = pytest.importorskip("kubernetes")

from jupyter_docker_kernel import (  # noqa: E402
    _supervise,
    hardening,
    kube_backend,
    kube_channels,
    kube_manage,
    kube_manifests,
)
from jupyter_docker_kernel.container import Container, Relayed  # noqa: E402
from jupyter_docker_kernel.errors import LaunchError, SettingsError  # noqa: E402
from jupyter_docker_kernel.kube_backend import KubeApi, KubeBackend, KubeError, PodCold  # noqa: E402
from jupyter_docker_kernel.rundir import RunDir  # noqa: E402
from jupyter_docker_kernel.settings import KernelSettings  # noqa: E402
from tests.kube_api import POD_IP, ApiServer  # noqa: E402

NS = "kernels"
SUPERVISE = Path(hardening.SUPERVISOR_PATH)


@pytest.fixture
def server() -> Iterator[ApiServer]:
    srv = ApiServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def cluster(server: ApiServer) -> Any:
    assert server.cluster is not None
    return server.cluster


class Readiness:
    """KubeBackend's `ready` here: no kernel listens at the simulated pod IP, so this
    records what the backend asks (kube_channels.wait_until_ready's arguments) and
    answers, or raises `error`."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.asked: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def __call__(self, info: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.asked.append((info, kw))
        if self.error is not None:
            raise self.error
        return {"status": "ok", "implementation": "simulated"}


def make_backend(server: ApiServer, **kw: Any) -> KubeBackend:
    config = kubernetes.client.Configuration(host=server.url)
    api = KubeApi(kubernetes.client.ApiClient(config), NS)
    kw.setdefault("start_timeout", 5)
    kw.setdefault("server_ids", (1000, 100))
    kw.setdefault("server", "jupyter-alice")
    kw.setdefault("ready", Readiness())
    return KubeBackend(api, **kw)


@pytest.fixture
def backend(server: ApiServer) -> KubeBackend:
    return make_backend(server)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    wd = tmp_path / "ps1"
    wd.mkdir()
    (wd / "answer.ipynb").write_text('{"cells": []}')
    return wd


def settings(**kw: Any) -> KernelSettings:
    kw.setdefault("kube_namespace", NS)
    kw.setdefault("workdir", "copy")
    return KernelSettings(**kw)


def launch(tmp_path: Path, workdir: Path, kernel_id: str = "k1") -> hardening.Launch:
    conn = tmp_path / f"{kernel_id}.json"
    conn.write_text(json.dumps({"key": "the-hmac-key", "kernel_name": "course"}))
    return hardening.Launch(
        kernel_id=kernel_id,
        container_name=f"jdk-{kernel_id}-0a1b2c",
        runtime_dir=str(tmp_path),
        connection_file=str(conn),
        supervisor_path=str(SUPERVISE),
        host_uid=1000,
        host_gid=100,
        workdir=str(workdir),
        launcher_pid=os.getpid(),
    )


def start(
    backend: KubeBackend, tmp_path: Path, workdir: Path, s: KernelSettings | None = None
) -> PodCold:
    return backend.start_cold(s or settings(), launch(tmp_path, workdir), RunDir(tmp_path / "rd"))


def secret_data(server: ApiServer) -> dict[str, bytes]:
    [secret] = server.objects("secrets")
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


# -- the happy path -------------------------------------------------------------------------


def test_start_creates_the_secret_then_the_pod_then_owns_the_secret_by_the_pod(
    backend: KubeBackend, server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    cold = start(backend, tmp_path, workdir)
    writes = [c for c in cluster.calls if c[0] in ("create", "patch", "delete")]
    assert writes[:3] == [
        ("create", "secrets", "jdk-k1-0a1b2c-keys"),
        ("create", "pods", "jdk-k1-0a1b2c"),
        ("patch", "secrets", "jdk-k1-0a1b2c-keys"),
    ]
    [secret] = server.objects("secrets")
    [pod] = server.objects("pods")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert cold.uid == pod["metadata"]["uid"]


def test_start_watches_to_running_and_returns_the_pods_client_connection(
    backend: KubeBackend, server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    """The endpoint is kube_channels.client_connection of the Secret's keys at the pod IP:
    what jupyter_client needs (it uses the kernel's Curve pair as its own)."""
    import zmq

    cold = start(backend, tmp_path, workdir)
    assert ("watch", "pods", "") in cluster.calls
    assert cold.endpoint.ip == POD_IP
    assert cold.endpoint.ports == kube_manifests.POD_PORTS
    conn = json.loads(secret_data(server)["kernel.json"])
    assert conn["key"] == "the-hmac-key"
    assert conn["ip"] == "0.0.0.0"  # noqa: S104 - the kernel binds its pod's addresses
    public = zmq.curve_public(conn["curve_secretkey"].encode()).decode()
    assert public == cold.endpoint.curve_publickey == conn["curve_publickey"]
    client = cold.endpoint.connection
    assert client == {**conn, "ip": POD_IP, "kernel_name": "course"}
    assert "the-hmac-key" not in repr(cold.endpoint)


def test_start_waits_until_the_kernel_answers_over_curve_before_returning(
    server: ApiServer, tmp_path: Path, workdir: Path
) -> None:
    """After Running, the backend asks the kernel at the pod IP (wait_until_ready) with
    the client's connection info and an `alive` check of the pod's phase."""
    readiness = Readiness()
    cold = start(make_backend(server, ready=readiness), tmp_path, workdir)
    [(info, kw)] = readiness.asked
    assert info == cold.endpoint.connection
    assert kw["timeout"] >= kube_backend.READY_MIN
    assert kw["alive"]() is True
    make_backend(server).remove(cold.name)
    assert kw["alive"]() is False


def test_a_kernel_that_never_answers_deletes_its_pod_and_secret(
    server: ApiServer, tmp_path: Path, workdir: Path
) -> None:
    """wait_until_ready's LaunchError ends the start with nothing left in the namespace."""
    silent = Readiness(LaunchError("The kernel at 10.42.0.17 did not answer", "no client"))
    with pytest.raises(LaunchError, match="did not answer"):
        start(make_backend(server, ready=silent), tmp_path, workdir)
    assert server.objects("pods") == []
    assert server.objects("secrets") == []


def test_start_creates_the_rendered_pod(
    backend: KubeBackend, server: ApiServer, tmp_path: Path, workdir: Path
) -> None:
    s = settings(memory="1g", cpus=0.5)
    start(backend, tmp_path, workdir, s)
    [pod] = server.objects("pods")
    [ctr] = pod["spec"]["containers"]
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["resources"]["limits"] == {
        "cpu": "500m",
        "memory": "1Gi",
        "ephemeral-storage": "1Gi",
    }
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"][kube_manifests.LABEL_SERVER] == "jupyter-alice"


def test_start_puts_the_work_dir_copy_in_the_secret_as_the_supervisor_unpacks_it(
    backend: KubeBackend, server: ApiServer, tmp_path: Path, workdir: Path
) -> None:
    start(backend, tmp_path, workdir)
    stream = secret_data(server)["workdir.stream"]
    target = tmp_path / "unpacked"
    target.mkdir()
    reader = iter([stream])
    buf = bytearray()

    def read(n: int) -> bytes:
        while len(buf) < n:
            chunk = next(reader, b"")
            if not chunk:
                break
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    _supervise.receive_tree(read, str(target))
    assert (target / "answer.ipynb").read_text() == '{"cells": []}'


def test_start_refuses_a_copy_too_big_for_a_secret_before_creating_anything(
    backend: KubeBackend, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    (workdir / "data.bin").write_bytes(os.urandom(kube_manifests.SECRET_COPY_LIMIT + 1))
    with pytest.raises(LaunchError, match="--kube-pvc"):
        start(backend, tmp_path, workdir)
    assert not [c for c in cluster.calls if c[0] == "create"]


def test_remove_deletes_the_pod_and_its_secret_goes_with_it(
    backend: KubeBackend, server: ApiServer, tmp_path: Path, workdir: Path
) -> None:
    cold = start(backend, tmp_path, workdir)
    assert backend.remove(cold.name) is True
    assert server.objects("pods") == []
    assert server.objects("secrets") == []  # by the ownerReference (the simulated GC)


def test_remove_of_a_pod_already_gone_is_not_an_error(
    backend: KubeBackend, tmp_path: Path, workdir: Path
) -> None:
    cold = start(backend, tmp_path, workdir)
    backend.remove(cold.name)
    assert backend.remove(cold.name) is False


def test_an_interrupt_goes_to_the_pods_supervisor_with_its_connection_not_the_api(
    backend: KubeBackend,
    cluster: Any,
    tmp_path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """signal(INT) asks the pod's supervisor on its signal port with the pod's client
    connection (kube_channels.send_signal); no API call (no pods/exec). After remove, the
    pod is unknown: nothing is sent."""
    sent: list[tuple[dict[str, Any], str]] = []
    monkeypatch.setattr(kube_channels, "send_signal", lambda info, sig: sent.append((info, sig)))
    cold = start(backend, tmp_path, workdir)
    calls = len(cluster.calls)
    assert backend.signal(cold.name, "INT") is True
    assert sent == [(cold.endpoint.connection, "INT")]
    assert len(cluster.calls) == calls
    backend.remove(cold.name)
    assert backend.signal(cold.name, "INT") is False
    assert len(sent) == 1


def test_wait_returns_the_kernel_exit_code_and_the_kubelet_reason(
    backend: KubeBackend, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    cluster.kubelet, cluster.exit_code = "exit", 137
    cold = start(backend, tmp_path, workdir)
    assert cold.wait() == 137
    assert cold.words() == "OOMKilled"


def test_container_lifecycle_runs_on_the_kube_backend(
    server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    """Container (the one lifecycle) over KubeBackend: start, attach, wait, finish, close."""
    backend = make_backend(server)
    cluster.kubelet, cluster.exit_code, cluster.exit_after = "exit", 0, 0.5
    conn = tmp_path / "kernel-abc.json"
    conn.write_text(json.dumps({"key": "k", "kernel_name": "course"}))
    container = Container(
        settings(),
        str(conn),
        backend,
        kernel_id="abc",
        base=tmp_path / "base",
        workdir=str(workdir),
    )
    try:
        container.start()
        assert isinstance(container.cold, PodCold)
        assert container.cold.endpoint.ip == POD_IP
        container.attach(lambda: 0)
        ending = container.wait()
        assert ending.code == 0
        assert container.finish(ending, Relayed()) == 0
    finally:
        container.close()
    assert server.objects("pods") == []


@pytest.mark.parametrize(
    ("reason", "notice"),
    [
        ("OOMKilled", "Kernel stopped: out of memory (limit 256 MiB). Restart the kernel;"),
        ("DeadlineExceeded", "Kernel stopped: maximum lifetime of 60 s reached. Restart"),
    ],
)
def test_a_pod_the_kubelet_kills_gets_the_local_paths_kill_notice(
    server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path, reason: str, notice: str
) -> None:
    """SIMULATED kubelet: the pod ends with code 137 and the kubelet's reason (the
    container's OOMKilled, the pod's DeadlineExceeded at activeDeadlineSeconds), with no
    supervisor line in its log. Container.wait's notice, which the adapters publish on
    iopub, is notice.kill_notice's for out of memory or the lifetime, as for a local kernel."""
    cluster.kubelet, cluster.exit_code, cluster.exit_after = "exit", 137, 0.3
    cluster.pod_reason = "" if reason == "OOMKilled" else reason
    conn = tmp_path / "kernel-abc.json"
    conn.write_text(json.dumps({"key": "k", "kernel_name": "course"}))
    container = Container(
        settings(memory="256m", max_lifetime=60),
        str(conn),
        make_backend(server),
        kernel_id="abc",
        base=tmp_path / "base",
        workdir=str(workdir),
    )
    try:
        container.start()
        ending = container.wait()
    finally:
        container.close()
    assert (ending.code, ending.said) == (137, reason)
    assert ending.notice.startswith(notice)


# -- failures ----------------------------------------------------------------------------------


def test_forbidden_pod_create_names_the_verb_resource_and_role_and_leaves_nothing(
    backend: KubeBackend, server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    cluster.forbidden.add(("create", "pods"))
    with pytest.raises(KubeError) as info:
        start(backend, tmp_path, workdir)
    text = str(info.value)
    assert "refused to create pods in namespace kernels (403 Forbidden" in text
    assert "verb 'create' on 'pods'" in text
    assert "Role" in text
    assert server.objects("secrets") == []


def test_forbidden_secret_create_creates_no_pod(
    backend: KubeBackend, server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    cluster.forbidden.add(("create", "secrets"))
    with pytest.raises(KubeError, match="refused to create secrets"):
        start(backend, tmp_path, workdir)
    assert server.objects("pods") == []


def test_pod_stuck_pending_times_out_with_its_conditions_and_events(
    server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    backend = make_backend(server, start_timeout=1.5)
    cluster.kubelet = "stuck"
    with pytest.raises(LaunchError) as info:
        start(backend, tmp_path, workdir)
    text = str(info.value)
    assert "did not run within 1.5 s" in text
    assert "PodScheduled=False (Unschedulable" in text
    assert "FailedScheduling: 0/3 nodes are available: 3 Insufficient memory" in text
    assert server.objects("pods") == []
    assert server.objects("secrets") == []


def test_pod_that_fails_before_running_reports_why_and_is_deleted(
    backend: KubeBackend, server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    cluster.kubelet = "fail"
    with pytest.raises(LaunchError, match=r"ended before it ran: phase Failed.*can't open file"):
        start(backend, tmp_path, workdir)
    assert server.objects("pods") == []


def test_api_going_away_mid_kernel_ends_the_wait_with_a_log_line(
    backend: KubeBackend,
    server: ApiServer,
    tmp_path: Path,
    workdir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cold = start(backend, tmp_path, workdir)
    backend.api_loss_wait = 1.0
    server.stop()
    with caplog.at_level(logging.ERROR, logger="jupyter_docker_kernel.launcher"):
        assert cold.wait() == 1
    assert cold.words() == "the Kubernetes API went away"
    assert "lost the Kubernetes API at http://127.0.0.1" in caplog.text
    assert cold.name in caplog.text


def test_unreachable_api_says_where_it_looked(tmp_path: Path, workdir: Path) -> None:
    config = kubernetes.client.Configuration(host="http://127.0.0.1:9")
    api = KubeApi(kubernetes.client.ApiClient(config), NS)
    config.retries = 0
    with pytest.raises(
        KubeError, match=re.escape("Cannot reach the Kubernetes API at http://127.0.0.1:9")
    ):
        start(KubeBackend(api, server_ids=(1000, 100)), tmp_path, workdir)


# -- list, gc, doctor, setup's checks -------------------------------------------------------------


def test_list_shows_our_kernel_pods_by_label(
    backend: KubeBackend, server: ApiServer, tmp_path: Path, workdir: Path
) -> None:
    start(backend, tmp_path, workdir)
    server.run(_add_foreign_pod(server))
    [row] = kube_manage.kernel_pods(backend.api)
    assert (row.name, row.kernel_id, row.phase, row.ip, row.server) == (
        "jdk-k1-0a1b2c",
        "k1",
        "Running",
        POD_IP,
        "jupyter-alice",
    )


def test_list_shows_a_kernel_id_that_is_no_dns_label_whole(
    backend: KubeBackend, tmp_path: Path, workdir: Path
) -> None:
    """A mkstemp connection file's kernel id ("tmp8lg_0jc8_"): its pod's label is a DNS
    label of it, `list` shows the id the Jupyter client knows (the annotation's)."""
    backend.start_cold(
        settings(), launch(tmp_path, workdir, "tmp8lg_0jc8_"), RunDir(tmp_path / "rd")
    )
    [row] = kube_manage.kernel_pods(backend.api)
    assert row.kernel_id == "tmp8lg_0jc8_"


async def _add_foreign_pod(server: ApiServer) -> None:
    import kmock

    assert server.cluster is not None
    server.cluster.objects[kmock.resource("v1/pods"), NS, "someone-else"] = {
        "metadata": {"name": "someone-else", "namespace": NS, "labels": {"app": "web"}},
        "status": {"phase": "Running"},
    }


def test_gc_removes_finished_and_orphaned_kernel_pods_and_lone_secrets_by_label(
    server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    backend = make_backend(server)
    cluster.kubelet, cluster.exit_code, cluster.exit_after = "exit", 0, 0.1
    finished = start(backend, tmp_path, workdir)
    finished.wait()
    cluster.kubelet = "run"
    kept = backend.start_cold(settings(), launch(tmp_path, workdir, "k2"), RunDir(tmp_path))
    orphan = backend.start_cold(settings(), launch(tmp_path, workdir, "k3"), RunDir(tmp_path))
    server.run(_add_foreign_pod(server))
    lone = kube_manifests.render_secret(
        kube_manifests.PodLaunch(kernel_id="k4", name="jdk-k4-x", namespace=NS, user="1:1"),
        {},
        supervisor=b"",
        usage_hook=b"",
    )
    backend.api.core.create_namespaced_secret(NS, lone)

    def alive(pid: int) -> bool:
        return pid != -1

    # k3's launcher is gone: its pod says so.
    backend.api.core.patch_namespaced_pod(
        orphan.name,
        NS,
        {"metadata": {"annotations": {kube_manifests.ANNOTATION_LAUNCHER_PID: "-1"}}},
    )
    dry = kube_manage.collect(backend.api, server="jupyter-alice", dry_run=True, alive=alive)
    assert sorted(dry.pods) == sorted([finished.name, orphan.name])
    assert "jdk-k4-x-keys" in dry.secrets
    assert len(server.objects("pods")) == 4
    done = kube_manage.collect(backend.api, server="jupyter-alice", alive=alive)
    assert done.kept == 1
    names = {p["metadata"]["name"] for p in server.objects("pods")}
    assert names == {kept.name, "someone-else"}
    assert {s["metadata"]["name"] for s in server.objects("secrets")} == {
        kube_manifests.secret_name(kept.name)
    }


def _policy(server: ApiServer) -> None:
    config = kubernetes.client.Configuration(host=server.url)
    net = kubernetes.client.NetworkingV1Api(kubernetes.client.ApiClient(config))
    net.create_namespaced_network_policy(
        NS, kube_manifests.render_network_policy(NS, {"component": "singleuser-server"})
    )


def _runtime_class(server: ApiServer, name: str) -> None:
    config = kubernetes.client.Configuration(host=server.url)
    node = kubernetes.client.NodeV1Api(kubernetes.client.ApiClient(config))
    node.create_runtime_class(
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": name},
            "handler": "runsc",
        }
    )


def test_doctor_passes_a_namespace_with_the_role_runtime_class_and_policy(
    backend: KubeBackend, server: ApiServer
) -> None:
    _policy(server)
    _runtime_class(server, "gvisor")
    verdicts = kube_manage.checks(backend.api, settings(runtime="gvisor"))
    assert [v[1] for v in verdicts] == ["OK", "OK", "OK", "OK"], verdicts


def test_doctor_lists_the_rbac_verbs_missing(backend: KubeBackend, cluster: Any) -> None:
    cluster.forbidden |= {("watch", "pods"), ("patch", "secrets")}
    verdicts = {v[0]: v for v in kube_manage.checks(backend.api, settings())}
    rbac = verdicts[f"kubernetes {NS}: RBAC"]
    assert rbac[1] == "FAIL"
    assert rbac[2] == "not allowed: watch pods, patch secrets"


def test_doctor_warns_when_no_policy_denies_kernel_egress(backend: KubeBackend) -> None:
    verdicts = {v[0]: v for v in kube_manage.checks(backend.api, settings())}
    assert verdicts[f"kubernetes {NS}: NetworkPolicy"][1] == "WARN"


def test_setup_refuses_a_runtime_class_the_cluster_lacks(backend: KubeBackend) -> None:
    with pytest.raises(SettingsError, match="no RuntimeClass 'gvisor'"):
        kube_manage.check_setup(backend.api, settings(runtime="gvisor"))


# -- the supervisor's pod options, run here for real ---------------------------------------------


def test_supervisor_applies_rlimits_and_receives_the_copy_from_a_file(tmp_path: Path) -> None:
    """--rlimit and --receive-from, as a pod runs them (the supervisor on this host)."""
    from jupyter_docker_kernel import workcopy

    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("copied")
    stream = tmp_path / "workdir.stream"
    entries = workcopy.scan(str(source), limit=1 << 20, max_entries=100)
    with stream.open("wb") as fh:
        workcopy.send(str(source), entries, fh.write)
    target = tmp_path / "work"
    target.mkdir()
    code = (
        "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)); "
        "print(open('a.txt').read())"
    )
    argv = [
        sys.executable,
        str(SUPERVISE),
        "--rlimit",
        "nofile=77",
        "--receive-workdir",
        str(target),
        "--receive-from",
        str(stream),
        "--chdir",
        str(target),
        "--",
        sys.executable,
        "-c",
        code,
    ]
    # stdin: the lifeline, held open as the kubelet holds a pod's (`stdin: true`).
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = proc.stdout.read().decode()  # until the supervisor exits after its kernel
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
    assert "(77, 77)" in out, err
    assert "copied" in out, err


# -- the CLI: setup --kubernetes, doctor, list, gc, through a kubeconfig -------------------------


@pytest.fixture
def kubeconfig(server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig whose context "sim" is the in-memory API server."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "sim", "cluster": {"server": server.url}}],
                "users": [{"name": "sim", "user": {"token": "t"}}],
                "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
                "current-context": "sim",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


SETUP = ["setup", "--name", "course", "--user", "--kubernetes", "--namespace", NS, "--provisioner"]


def test_backend_for_kube_settings_is_the_kube_backend_of_the_kubeconfig(
    kubeconfig: Path, server: ApiServer
) -> None:
    from jupyter_docker_kernel.container import backend_for

    backend = backend_for(settings(kube_context="sim"))
    assert isinstance(backend, KubeBackend)
    assert backend.api.host == server.url
    assert backend.api.namespace == NS


def test_a_helper_kernel_uses_its_clients_kubeconfig_not_the_helpers(
    kubeconfig: Path, server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resident helper was started by whichever client came first: a kernel's pod goes
    to the cluster of the KUBECONFIG its own client's request carries (thin.client_env)."""
    from jupyter_docker_kernel import hosting, thin

    carried = thin.client_env()
    assert carried["KUBECONFIG"] == str(kubeconfig)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig.with_name("no-such-kubeconfig")))
    backend = hosting.pod_backend(settings(), carried)
    assert isinstance(backend, KubeBackend)
    assert backend.api.host == server.url


def test_setup_kubernetes_without_the_provisioner_writes_an_argv_spec_interrupting_by_message(
    kubeconfig: Path, data_dir: Path
) -> None:
    """No --provisioner: the argv launcher, which proxies to the pod (kube_proxy.py)."""
    from jupyter_docker_kernel import cli

    argv = [a for a in SETUP if a != "--provisioner"]
    assert cli.main([*argv, "--copy-workdir"]) == 0
    spec = json.loads((data_dir / "kernels" / "course" / "kernel.json").read_text())
    assert "kernel_provisioner" not in spec.get("metadata", {})
    assert spec["interrupt_mode"] == "message"


def test_setup_kubernetes_checks_the_cluster_and_writes_a_message_interrupt_spec(
    kubeconfig: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_docker_kernel import cli

    assert cli.main([*SETUP, "--kube-context", "sim", "--copy-workdir"]) == 0
    out = capsys.readouterr().out
    assert f"kubernetes: each kernel a pod in namespace {NS} (context sim)" in out
    assert "no NetworkPolicy denies kernel pods egress" in out
    spec = json.loads((data_dir / "kernels" / "course" / "kernel.json").read_text())
    assert spec["interrupt_mode"] == "message"


def test_setup_kubernetes_refuses_a_runtime_class_the_cluster_lacks(
    kubeconfig: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_docker_kernel import cli

    assert cli.main([*SETUP, "--copy-workdir", "--runtime", "gvisor"]) == 1
    assert "the cluster has no RuntimeClass 'gvisor'" in capsys.readouterr().err
    assert not (data_dir / "kernels" / "course").exists()


def test_setup_kubernetes_refuses_an_account_without_the_role(
    kubeconfig: Path, data_dir: Path, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_docker_kernel import cli

    cluster.forbidden.add(("create", "pods"))
    assert cli.main([*SETUP, "--copy-workdir"]) == 1
    assert "not allowed: create pods" in capsys.readouterr().err
    assert not (data_dir / "kernels" / "course").exists()


def test_setup_namespace_without_kubernetes_is_refused(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_docker_kernel import cli

    assert cli.main(["setup", "--name", "c", "--user", "--namespace", NS, "--skip-checks"]) == 1
    assert "--namespace goes with --kubernetes" in capsys.readouterr().err


def test_doctor_checks_the_namespace_of_a_kubernetes_spec(
    kubeconfig: Path, data_dir: Path, server: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_docker_kernel import cli, doctor
    from jupyter_docker_kernel.engine import Engine

    _policy(server)
    assert cli.main([*SETUP, "--copy-workdir"]) == 0
    report = doctor.run_checks(Engine(host="unix:///nonexistent.sock"), "course", probe=False)
    verdicts = {c.name: c.status for c in report.checks}
    assert verdicts[f"course: kubernetes {NS}: RBAC"] == "OK"
    assert verdicts[f"course: kubernetes {NS}: NetworkPolicy"] == "OK"


def test_list_and_gc_cover_the_namespace_of_a_kubernetes_spec(
    kubeconfig: Path,
    data_dir: Path,
    server: ApiServer,
    cluster: Any,
    tmp_path: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jupyter_docker_kernel import cli

    assert cli.main([*SETUP, "--copy-workdir"]) == 0
    cluster.kubelet, cluster.exit_after = "exit", 0.1
    cold = start(make_backend(server), tmp_path, workdir)
    cold.wait()
    capsys.readouterr()
    lines = cli.kube_list_lines()
    assert lines[0] == f"kernel pods in namespace {NS}: 1"
    assert cold.name in lines[1]
    assert "Succeeded" in lines[1]
    gc = cli.kube_gc_lines("Removed", dry_run=False)
    assert f"Removed pod {cold.name} in namespace {NS}" in gc
    assert server.objects("pods") == []


def test_outputs_follow_the_kernel_containers_log(
    backend: KubeBackend, server: ApiServer, cluster: Any, tmp_path: Path, workdir: Path
) -> None:
    """The kernel's stdout/stderr reach the server's log as the pod's log, followed."""
    cold = start(backend, tmp_path, workdir)

    async def serve_log() -> None:
        path = f"/api/v1/namespaces/{NS}/pods/{cold.name}/log"
        cluster["get", path] << b"kernel: hello\nkernel: bye\n"

    server.run(serve_log())
    [stream] = cold.outputs()
    try:
        assert stream.read() == b"kernel: hello\nkernel: bye\n"
    finally:
        cold.close()
    assert ("get", "pods/log", cold.name) in cluster.calls


def test_an_api_server_that_hangs_times_out_instead_of_hanging_the_kernel_start(
    backend: KubeBackend, server: ApiServer, cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from jupyter_docker_kernel import kube_backend

    monkeypatch.setattr(kube_backend, "API_TIMEOUT", 0.5)

    async def hang() -> None:
        cluster["get", f"/api/v1/namespaces/{NS}/pods/stuck"] << (lambda: asyncio.sleep(30))

    server.run(hang())
    with pytest.raises(kube_backend.KubeUnreachableError, match="to get pods"):
        backend.inspect("stuck")


def test_supervisor_as_pid_1_reaps_orphans_as_a_pod_needs(tmp_path: Path) -> None:
    """A pod has no --init: the supervisor is PID 1 and must reap what the kernel orphans
    (run here in a PID namespace of its own, as in a pod)."""
    import shutil

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a PID namespace")
    code = (
        "import os, subprocess, time\n"
        "subprocess.run(['sh', '-c', 'sleep 0.2 &'])\n"  # the sleep is orphaned to PID 1
        "time.sleep(1.0)\n"
        "states = [open(f'/proc/{p}/stat').read().split(')')[-1].split()[0]\n"
        "          for p in os.listdir('/proc') if p.isdigit()]\n"
        "print('zombies', states.count('Z'))\n"
    )
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(SUPERVISE),
            "--", sys.executable, "-c", code]  # fmt: skip
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = proc.stdout.read().decode()
        assert proc.wait(30) == 0
        err = proc.stderr.read().decode()
    assert "zombies 0" in out, (out, err)
