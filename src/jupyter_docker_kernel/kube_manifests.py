"""Settings plus one start's facts -> the Kubernetes objects of a kernel (pure: no I/O, no API).

The Kubernetes counterpart of hardening.py: kube_backend.py calls `render_secret()` and
`render_pod()` once per kernel start, `doctor` and docs/kubernetes.md use
`render_network_policy()` and `render_role()`. The objects are plain dicts in the API's own
JSON form (camelCase, as `kubectl get -o json` prints them), which the official client
sends as they are and which tests validate offline against the Kubernetes OpenAPI schema
(tests/test_kube_manifests.py, kubernetes-validate). Nothing here needs the `kubernetes`
package: a kernelspec is checked and `show` prints a pod without the optional extra.

The pod is built from the same KernelSettings and the same facts as `docker run`
(hardening.py): the kernel's uid rule, its environment, its command, tmpfs sizes, memory,
CPU and lifetime are read from there, never restated. What a pod spec cannot say (open
files, file size, process count; a cluster's pids limit is the kubelet's, per node) is
listed in POD_LACKS and passed to the in-container supervisor instead (`--rlimit`).

One kernel is three things in the namespace:
  Secret  `<pod>-keys`: the connection file (kube_channels.pod_connection: HMAC key,
          Curve keys), the supervisor and its usage hook, and with --copy-workdir the
          work dir's stream; immutable, mounted read-only; its ownerReference names the
          pod (set right after the pod exists, kube_backend.KubeBackend.start_cold), so it
          goes when the pod goes.
  Pod     one container, the kernel under our supervisor, listening with CurveZMQ on the
          fixed ports POD_PORTS, its supervisor's signal port beside them (POD_LISTENS);
          ownerReference to the Jupyter server's pod when that runs
          in the same namespace.
  (once)  NetworkPolicy `jupyter-docker-kernel-kernels`: no egress for kernel pods at all,
          ingress only from the server's pods, only on POD_LISTENS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jupyter_docker_kernel import hardening, kube_channels
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

#: Labels every object of ours carries: `list`, `gc` and the NetworkPolicy select by them.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_KERNEL_ID = "jupyter-docker-kernel.io/kernel-id"
#: The server's pod (in the cluster) or host (outside) that started the kernel: gc's key.
LABEL_SERVER = "jupyter-docker-kernel.io/server"
APP = "jupyter-docker-kernel"
COMPONENT = "kernel"
#: Who started the kernel, for gc outside the cluster (a dead pid on this host).
ANNOTATION_LAUNCHER_PID = "jupyter-docker-kernel.io/launcher-pid"
ANNOTATION_WORKDIR = "jupyter-docker-kernel.io/workdir"
ANNOTATION_KERNELSPEC = "jupyter-docker-kernel.io/kernelspec"
#: The kernel id whole: the label holds it as a DNS label (dns_label), which changes an id
#: with "_" or capitals (a KernelManager without a kernel id names its connection file by
#: mkstemp: kernel id "tmp8lg0jc8_", label "tmp8lg0jc8").
ANNOTATION_KERNEL_ID = "jupyter-docker-kernel.io/kernel-id"
#: The selector of all kernel pods (NetworkPolicy, list, gc).
KERNEL_SELECTOR = {LABEL_NAME: APP, LABEL_COMPONENT: COMPONENT}

#: The kernel binds channel N (CHANNELS order: shell, iopub, stdin, control, hb) on TCP
#: port POD_PORT_BASE+N of its own pod IP, encrypted with CurveZMQ: kube_channels.PORTS
#: (the one definition; the same numbers as the local tcp transport's loopback ports).
POD_PORT_BASE = hardening.BRIDGE_PORT_BASE
POD_PORTS: dict[str, int] = dict(kube_channels.PORTS)
#: Every port a kernel pod listens on: the five channels and the supervisor's signal
#: port (kube_channels.SIGNAL_PORT: Curve with the kernel's keys, HMAC-signed requests),
#: so a server whose Role has no pods/exec can still interrupt by signal.
POD_LISTENS: dict[str, int] = {**POD_PORTS, "signal": kube_channels.SIGNAL_PORT}
#: The one container's name in a kernel pod.
CONTAINER = "kernel"
#: The Secret's keys, and where each appears in the container (one read-only volume at
#: hardening's /opt/jupyter-docker-kernel, the paths `docker run` bind-mounts there).
SECRET_MOUNT = "/opt/jupyter-docker-kernel"  # noqa: S105 - a path, not a password
KEY_CONNECTION = "kernel.json"
KEY_SUPERVISOR = "supervise.py"
KEY_USAGE = "sitecustomize.py"
KEY_WORKDIR = "workdir.stream"
#: The Secret's keys for the settings' --env values (not mounted: read as env).
ENV_KEY_PREFIX = "env."
SECRET_PATHS = {
    KEY_CONNECTION: hardening.CONNECTION_TARGET.removeprefix(SECRET_MOUNT + "/"),
    KEY_SUPERVISOR: hardening.SUPERVISOR_TARGET.removeprefix(SECRET_MOUNT + "/"),
    KEY_USAGE: hardening.USAGE_HOOK_TARGET.removeprefix(SECRET_MOUNT + "/"),
    KEY_WORKDIR: "workdir.stream",
}
WORKDIR_STREAM = f"{SECRET_MOUNT}/{SECRET_PATHS[KEY_WORKDIR]}"
#: A Secret holds at most 1 MiB (etcd's object size); a --copy-workdir copy must fit in
#: it with the supervisor beside it, or the start is refused (use --kube-pvc instead).
SECRET_COPY_LIMIT = 900 * 1024
#: The pod's volume for the notebook's files (the copy's emptyDir, or the claim).
WORK_VOLUME = "workdir"
#: docker run's --shm-size, as a memory emptyDir at /dev/shm.
SHM_SIZE = "64m"
#: The supervisor's grace between TERM and KILL is 3 s; the kubelet's must be longer.
TERMINATION_GRACE = 10
#: The pod's own deadline runs from its start: the supervisor's timer ends the kernel at
#: max_lifetime, the kubelet (activeDeadlineSeconds) this much later if that did not (as
#: container.LIFETIME_GRACE for the local engine).
DEADLINE_GRACE = 5
#: Limits a pod spec cannot express, applied by the supervisor before the kernel starts:
#: settings field -> the rlimit it becomes (see supervisor_rlimits).
POD_LACKS = ("nofile", "fsize", "pids_limit")
#: imagePullPolicy values (setup --kube-pull).
PULL_POLICIES = ("Never", "IfNotPresent", "Always")
#: Verbs the server's Role grants, per (API group, resource): what kube_backend calls.
ROLE_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("", "pods", ("create", "get", "list", "watch", "delete")),
    # No get or list: whoever holds the Role cannot read other kernels' keys by asking for
    # them (creating a pod that mounts one still can: docs/kubernetes.md, "Trust").
    ("", "secrets", ("create", "patch", "delete")),
    ("", "events", ("list",)),
    ("networking.k8s.io", "networkpolicies", ("list",)),
    ("node.k8s.io", "runtimeclasses", ("get",)),
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class PodOwner:
    """The Jupyter server's own pod (downward API POD_NAME/POD_UID, or the config file):
    kernel pods name it in ownerReferences, so Kubernetes deletes them with it."""

    name: str
    uid: str


@dataclass(frozen=True)
class PodLaunch:
    """What one kernel start adds to the settings (the pod's hardening.Launch); built by
    kube_backend.KubeBackend.start_cold."""

    kernel_id: str
    #: The pod's name (a DNS label: pod_name()); the Secret is secret_name(name).
    name: str
    namespace: str
    #: uid:gid the kernel runs as (hardening.kernel_user's rule, pod_user()).
    user: str
    #: The notebook's directory in the server (the kernel's cwd); "" for HOME.
    workdir: str = ""
    #: The project root (--workdir-root) that holds workdir; "": workdir itself.
    project_root: str = ""
    #: The server's pod, when it runs in this namespace; None outside the cluster.
    owner: PodOwner | None = None
    #: LABEL_SERVER's value: the owner's name, else the host's name.
    server: str = ""
    launcher_pid: int = 0
    kernelspec: str = ""
    #: Whether the Secret carries the work dir's stream (--copy-workdir).
    copy: bool = False
    extra_labels: Mapping[str, str] = field(default_factory=dict)


def check_settings(settings: KernelSettings) -> None:
    """Refuse settings a kernel pod cannot honour (KernelSettings.__post_init__ calls it
    when a kube_ field is set): every option either means the same in a pod or is refused,
    so a kernelspec never silently loses a limit."""
    ns = settings.kube_namespace
    where = "No kernelspec was written"
    if ns is None:
        raise SettingsError(
            "--kube-context and --kube-pvc go with --kubernetes", where, "Add --kubernetes."
        )
    if not _DNS_LABEL.match(ns) or len(ns) > 63:
        raise SettingsError(
            f"--namespace '{ns}' is not a Kubernetes namespace name (lower-case letters, "
            "digits and '-', at most 63)",
            where,
        )
    if settings.kube_pull not in PULL_POLICIES:
        raise SettingsError(
            f"--kube-pull '{settings.kube_pull}' is not one of {', '.join(PULL_POLICIES)}",
            where,
        )
    refused = {
        "pool": settings.pool != 0,
        "mounts": bool(settings.mounts),
        "docker_args": bool(settings.docker_args),
        "gpus": settings.gpus is not None,
        "engine_host": settings.engine_host is not None,
        "engine": settings.engine != "docker",
        "kernel_transport": settings.kernel_transport != "ipc",
        "keep_entrypoint": settings.keep_entrypoint,
        "network": settings.network != "none",
    }
    names = {
        "pool": "--pool (warm pods are not built yet)",
        "mounts": "--mount (a host path means nothing on a cluster node; use --kube-pvc)",
        "docker_args": "--docker-arg (there is no `docker run`)",
        "gpus": "--gpus (not modelled for pods yet)",
        "engine_host": "--engine-host",
        "engine": "--podman",
        "kernel_transport": "--kernel-transport (a pod's kernel always listens on TCP)",
        "keep_entrypoint": "--keep-entrypoint (a pod's command replaces the ENTRYPOINT)",
        "network": f"--network {settings.network} (a kernel pod's network is the namespace's "
        "NetworkPolicy: no egress)",
    }
    for key, bad in refused.items():
        if bad:
            raise SettingsError(
                f"{names[key]} cannot go with --kubernetes", where, "Drop one of them."
            )
    if settings.workdir == "mount" and settings.kube_pvc is None:
        raise SettingsError(
            "--kubernetes cannot mount the notebook's directory from the server's disk",
            where,
            "Use --copy-workdir (grading), --kube-pvc CLAIM:PATH (interactive) or --no-workdir.",
        )
    if settings.kube_pvc is not None:
        parse_pvc(settings.kube_pvc)
        if settings.workdir != "mount":
            raise SettingsError(
                "--kube-pvc mounts the notebook's directory, and --copy-workdir/--no-workdir "
                "say not to",
                where,
                "Drop one of them.",
            )


def parse_pvc(text: str) -> tuple[str, str, bool]:
    """`CLAIM:PATH[:ro]` -> (claim, mount path, read-only)."""
    parts = text.split(":")
    read_only = len(parts) == 3 and parts[2] == "ro"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        parts.pop()
    if len(parts) != 2 or not _DNS_LABEL.match(parts[0]) or not parts[1].startswith("/"):
        raise SettingsError(
            f"--kube-pvc '{text}' is not CLAIM:PATH or CLAIM:PATH:ro (a claim's name, an "
            "absolute path in the pod)",
            "No kernelspec was written",
            "Example: --kube-pvc claim-alice:/home/jovyan",
        )
    return parts[0], parts[1].rstrip("/") or "/", read_only


def dns_label(text: str, limit: int = 63) -> str:
    """text as a DNS label (pod names, label values): lower case, [a-z0-9-], at most limit."""
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return out or "x"


def pod_name(kernel_id: str, nonce: str) -> str:
    """jdk-<kernel id>-<nonce>, as the local container's name (container.Container.name),
    made a DNS label: the pod's hostname must be one."""
    return dns_label(f"jdk-{kernel_id}-{nonce}")


def secret_name(pod: str) -> str:
    """The per-kernel Secret's name: the pod's, plus -keys."""
    return f"{pod[:58]}-keys"


#: Kernels that keep nothing get a uid of their own from this range (see pod_user).
OWN_UID_BASE = 2_000_000
OWN_UID_SPAN = 1_000_000


def own_uid(kernel_id: str) -> int:
    """A uid for one kernel, from its id (stable across its restarts; two kernels share one
    with a chance of about n*n/2e6, and then only share their process cap)."""
    digest = hashlib.sha256(kernel_id.encode()).digest()
    return OWN_UID_BASE + int.from_bytes(digest[:8], "big") % OWN_UID_SPAN


def pod_user(
    settings: KernelSettings, server_uid: int, server_gid: int, kernel_id: str = ""
) -> str:
    """uid:gid for the kernel: hardening.kernel_user's rule with the server as the launcher
    (configured, else the server's own, never root: 65534 when the server runs as root).

    Without a configured user, a kernel that keeps nothing (no PersistentVolumeClaim, so
    no file it writes outlives it) runs as a uid of its own (own_uid) with the server's
    gid: the supervisor's `nproc` cap (a pod spec has no pids limit) counts every task of
    a uid on the node, so kernels sharing a uid (every server pod's jovyan, or 65534)
    would share one cap and one student's fork bomb could stop another's kernel. A kernel
    with a claim keeps the server's uid, so its files stay the user's from one kernel to
    the next. Called by KubeBackend.pod_launch."""
    launch = hardening.Launch(
        kernel_id="",
        container_name="",
        runtime_dir="",
        connection_file="",
        supervisor_path="",
        host_uid=server_uid,
        host_gid=server_gid,
        workdir="",
    )
    user = hardening.kernel_user(settings, launch)
    if settings.kernel_user or settings.kube_pvc or not kernel_id:
        return user
    return f"{own_uid(kernel_id)}:{user.split(':')[1]}"


def quantity(size: str) -> str:
    """A settings size (512m, 2g, 1536m) as a Kubernetes quantity with binary suffixes."""
    number = size_bytes(size)
    for suffix, unit in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if number % unit == 0:
            return f"{number // unit}{suffix}"
    return str(number)


def cpu_quantity(cpus: float) -> str:
    """--cpus 1.5 -> "1500m" (whole cores stay whole: "2")."""
    milli = max(1, round(cpus * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def labels(launch: PodLaunch) -> dict[str, str]:
    """The labels of a kernel's pod and Secret."""
    out = {
        **launch.extra_labels,
        **KERNEL_SELECTOR,
        LABEL_MANAGED_BY: APP,
        LABEL_KERNEL_ID: dns_label(launch.kernel_id),
    }
    if launch.server:
        out[LABEL_SERVER] = dns_label(launch.server)
    return out


def owner_references(launch: PodLaunch) -> list[dict[str, Any]]:
    """The server's pod as the kernel pod's owner (not its controller: nothing reconciles)."""
    if launch.owner is None:
        return []
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": launch.owner.name,
            "uid": launch.owner.uid,
            "blockOwnerDeletion": False,
        }
    ]


def secret_owner(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The kernel pod (as the API returned it, with its uid) as its Secret's owner."""
    meta = pod["metadata"]
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "uid": meta["uid"],
            "blockOwnerDeletion": False,
        }
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_secret(
    launch: PodLaunch,
    connection: Mapping[str, Any],
    *,
    supervisor: bytes,
    usage_hook: bytes,
    workdir_stream: bytes | None = None,
    env: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """The per-kernel Secret: what `docker run` bind-mounts read-only at
    /opt/jupyter-docker-kernel (connection file, supervisor, usage hook), plus the work
    dir's stream with --copy-workdir. Immutable: nobody edits a kernel's keys under it.
    The supervisor travels with the keys, not in a shared ConfigMap, so that whoever may
    edit ConfigMaps in the namespace cannot put code into every kernel. env: the settings'
    --env values (they may be secrets), which the pod reads from here (secretKeyRef), as
    `docker run` reads them from a 0600 --env-file: `get pods` does not show them."""
    data = {
        KEY_CONNECTION: _b64(json.dumps(dict(connection)).encode()),
        KEY_SUPERVISOR: _b64(supervisor),
        KEY_USAGE: _b64(usage_hook),
    }
    if workdir_stream is not None:
        data[KEY_WORKDIR] = _b64(workdir_stream)
    for name, value in env:
        data[ENV_KEY_PREFIX + name] = _b64(value.encode())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(launch.name),
            "namespace": launch.namespace,
            "labels": labels(launch),
        },
        "type": "Opaque",
        "immutable": True,
        "data": data,
    }


def supervisor_rlimits(settings: KernelSettings) -> list[str]:
    """The supervisor's --rlimit options for what a pod spec cannot say (POD_LACKS): the
    same numbers as `docker run --ulimit`. nproc counts the uid's tasks on the whole node
    (no user namespace), which is why pod_user gives a kernel a uid of its own."""
    return [
        "--rlimit",
        f"nofile={settings.nofile}",
        "--rlimit",
        f"fsize={size_bytes(settings.fsize)}",
        "--rlimit",
        "core=0",
        "--rlimit",
        f"nproc={settings.pids_limit}",
    ]


def pod_command(settings: KernelSettings, launch: PodLaunch) -> list[str]:
    """The container's command: our supervisor (from the Secret) then the kernel, as in
    hardening.supervisor_command, with the pod's differences: no socket dir to guard or
    bridge (the kernel listens on TCP itself), the lifeline is the pod's stdin (held open
    by the kubelet: `stdin: true`, nobody attaches), the copy comes from the Secret."""
    args = [
        settings.python,
        hardening.SUPERVISOR_TARGET,
        "--lifetime",
        f"{settings.max_lifetime:g}",
        "--site",
        hardening.USAGE_SITE_TARGET,
        *supervisor_rlimits(settings),
        *kube_channels.supervisor_args(),
    ]
    root = launch.project_root or launch.workdir
    if settings.workdir == "copy" and root:
        args += ["--receive-workdir", root, "--receive-from", WORKDIR_STREAM]
        if launch.workdir and launch.workdir != root:
            args += ["--chdir", launch.workdir]
    return [*args, "--", *kube_channels.kernel_command(settings)]


def pod_env(settings: KernelSettings, secret: str) -> list[dict[str, Any]]:
    """hardening.container_env in order; the user's --env values by reference to the
    kernel's Secret (render_secret's env), ours by value. Of two entries for one name the
    kubelet keeps the last, as the engine does: a user's HOME=... wins here too."""
    users = {name for name, _ in settings.env}
    ours = len(hardening.container_env(settings)) - len(settings.env)
    out: list[dict[str, Any]] = []
    for index, (name, value) in enumerate(hardening.container_env(settings)):
        if index >= ours and name in users:
            ref = {"name": secret, "key": ENV_KEY_PREFIX + name}
            out.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
        else:
            out.append({"name": name, "value": value})
    return out


def _memory_dir(name: str, size: str) -> dict[str, Any]:
    # medium Memory: a tmpfs, its pages counted against the container's memory limit, as
    # docker's --tmpfs; sizeLimit: the kubelet evicts the pod past it.
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": quantity(size)}}


def render_pod(settings: KernelSettings, launch: PodLaunch) -> dict[str, Any]:
    """The kernel's V1Pod as the API's JSON: see the module docstring and
    tests/test_kube_manifests.py's table for each hardening field and why."""
    uid_text, gid_text = launch.user.split(":")
    uid, gid = int(uid_text), int(gid_text)
    resources = {
        "cpu": cpu_quantity(settings.cpus),
        "memory": quantity(settings.memory),
        # The kernel's root is read-only and its scratch space is memory: what is left on
        # the node's disk is its log, capped like the largest file it may write.
        "ephemeral-storage": quantity(settings.fsize),
    }
    volumes: list[dict[str, Any]] = [
        _memory_dir("tmp", settings.tmp_size),
        _memory_dir("home", settings.tmp_size),
        _memory_dir("shm", SHM_SIZE),
        {
            "name": "kernel",
            "secret": {
                "secretName": secret_name(launch.name),
                # Owned by root, group fsGroup (the kernel's gid): readable, not writable.
                "defaultMode": 0o440,
                "items": [
                    {"key": key, "path": path}
                    for key, path in SECRET_PATHS.items()
                    if key != KEY_WORKDIR or launch.copy
                ],
            },
        },
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a path inside the pod
        {"name": "home", "mountPath": hardening.HOME},
        {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - inside the pod
        {"name": "kernel", "mountPath": SECRET_MOUNT, "readOnly": True},
    ]
    cwd = launch.workdir or hardening.HOME
    root = launch.project_root or launch.workdir
    if settings.workdir == "copy" and root:
        volumes.append(_memory_dir(WORK_VOLUME, settings.copy_limit))
        mounts.append({"name": WORK_VOLUME, "mountPath": root})
        # The supervisor changes into the notebook's dir once the copy is unpacked.
        cwd = root
    elif settings.workdir == "mount" and settings.kube_pvc is not None:
        claim, path, read_only = parse_pvc(settings.kube_pvc)
        volumes.append(
            {
                "name": WORK_VOLUME,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
            }
        )
        mounts.append(
            {
                "name": WORK_VOLUME,
                "mountPath": path,
                "readOnly": read_only or settings.workdir_readonly,
            }
        )
    elif settings.workdir == "none":
        cwd = hardening.HOME
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.kube_pull,
        # command replaces the image's ENTRYPOINT, as `docker run --entrypoint=` does.
        "command": pod_command(settings, launch),
        "workingDir": cwd,
        # The supervisor's lifeline: the kubelet holds stdin open and nobody attaches, so
        # it never reads EOF; the pod's deletion (SIGTERM) is what ends the kernel.
        "stdin": True,
        "stdinOnce": False,
        "tty": False,
        "env": pod_env(settings, secret_name(launch.name)),
        "ports": [
            {"name": channel, "containerPort": port, "protocol": "TCP"}
            for channel, port in POD_LISTENS.items()
        ],
        # requests = limits: the Guaranteed QoS class, the last a node evicts.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "restartPolicy": "Never",
        "activeDeadlineSeconds": math.ceil(settings.max_lifetime) + DEADLINE_GRACE,
        "terminationGracePeriodSeconds": TERMINATION_GRACE,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "hostname": "kernel",
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "fsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if settings.runtime:
        spec["runtimeClassName"] = settings.runtime
    annotations = {
        ANNOTATION_LAUNCHER_PID: str(launch.launcher_pid),
        ANNOTATION_WORKDIR: launch.workdir,
        ANNOTATION_KERNELSPEC: launch.kernelspec,
        ANNOTATION_KERNEL_ID: launch.kernel_id,
    }
    metadata: dict[str, Any] = {
        "name": launch.name,
        "namespace": launch.namespace,
        "labels": labels(launch),
        "annotations": annotations,
    }
    owners = owner_references(launch)
    if owners:
        metadata["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def render_network_policy(
    namespace: str,
    clients: Mapping[str, str],
    clients_namespace: str | None = None,
) -> dict[str, Any]:
    """The namespace's one NetworkPolicy for kernel pods: `egress: []` with policyType
    Egress denies every connection a kernel opens (DNS too: it needs none); ingress only
    from pods matching `clients` (the Jupyter servers: Zero to JupyterHub's user pods carry
    component=singleuser-server), in `clients_namespace` when they run elsewhere, and only
    on the kernel's ports and its supervisor's signal port (POD_LISTENS)."""
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(clients)}}
    if clients_namespace is not None and clients_namespace != namespace:
        peer["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": clients_namespace}
        }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{APP}-kernels",
            "namespace": namespace,
            "labels": {LABEL_NAME: APP, LABEL_MANAGED_BY: APP},
        },
        "spec": {
            "podSelector": {"matchLabels": dict(KERNEL_SELECTOR)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [peer],
                    "ports": [{"protocol": "TCP", "port": port} for port in POD_LISTENS.values()],
                }
            ],
            "egress": [],
        },
    }


def render_role(namespace: str) -> dict[str, Any]:
    """The namespaced Role the server's service account needs (ROLE_RULES), never more;
    RuntimeClasses are cluster-scoped, so their `get` is a ClusterRole of its own
    (render_runtimeclass_reader), needed only with --runtime."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": f"{APP}-server", "namespace": namespace},
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs in ROLE_RULES
            if resource != "runtimeclasses"
        ],
    }


def render_role_binding(namespace: str, service_account: str, sa_namespace: str) -> dict[str, Any]:
    """Binds render_role's Role to the server's service account (hub: `hub`, user pods:
    their own)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"{APP}-server", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{APP}-server",
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}
        ],
    }


def render_runtimeclass_reader() -> dict[str, Any]:
    """Read access to RuntimeClasses (cluster-scoped): setup and doctor check that the
    --runtime one exists before any kernel relies on it."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": f"{APP}-runtimeclass-reader"},
        "rules": [
            {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["get"]}
        ],
    }
