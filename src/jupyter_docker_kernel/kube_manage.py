"""Kubernetes namespaces of our kernelspecs: what `setup`, `doctor`, `list` and `gc` ask.

Each function takes a kube_backend.KubeApi (one namespace) and returns data; cli.py,
doctor.py and setup.py print or decide. Nothing here creates a kernel:
  checks(api, settings)   doctor's and setup's verdicts: the API answers, the Role grants
                          every verb kube_backend uses (SelfSubjectAccessReview: asked,
                          not tried), the --runtime RuntimeClass exists, the namespace has
                          a NetworkPolicy that denies kernel pods all egress;
  kernel_pods(api)        `list`: our kernel pods with phase, IP, server and age;
  collect(api, ...)       `gc`: finished kernel pods, pods whose starter on this host is
                          gone, Secrets whose pod is gone (a server that died between the
                          Secret's creation and its pod's).
Tested against kmock's in-memory API server (tests/test_kube_backend.py), not a cluster.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from jupyter_docker_kernel import kube_manifests
from jupyter_docker_kernel.errors import DockerKernelError, SettingsError
from jupyter_docker_kernel.kube_backend import KubeApi, KubeError, pod_phase
from jupyter_docker_kernel.settings import KernelSettings

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
#: (name, status, detail, fix): doctor.Check's fields.
Verdict = tuple[str, Status, str, str]
SELECTOR = ",".join(f"{k}={v}" for k, v in kube_manifests.KERNEL_SELECTOR.items())
ROLE_FIX = (
    "apply the Role and RoleBinding in docs/kubernetes.md to the server's service account "
    "(namespaced; never a cluster-admin binding)"
)


def can_i(api: KubeApi, group: str, resource: str, verb: str) -> bool:
    """SelfSubjectAccessReview: may we `verb` `resource` in api.namespace? (Any
    authenticated account may ask; a cluster-scoped resource is asked cluster-wide.)"""
    parts = resource.split("/")
    attributes: dict[str, Any] = {"group": group, "resource": parts[0], "verb": verb}
    if len(parts) > 1:
        attributes["subresource"] = parts[1]
    if resource != "runtimeclasses":
        attributes["namespace"] = api.namespace
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
    answer = api.call(
        "create",
        "selfsubjectaccessreviews",
        api.authorization.create_self_subject_access_review,
        body,
    )
    status = api.serialize(answer).get("status") or {}
    return bool(status.get("allowed"))


def missing_verbs(api: KubeApi, *, runtime: bool) -> list[str]:
    """'verb resource' for each ROLE_RULES verb we may not use (runtimeclasses only when a
    --runtime needs them)."""
    missing = []
    for group, resource, verbs in kube_manifests.ROLE_RULES:
        if resource == "runtimeclasses" and not runtime:
            continue
        for verb in verbs:
            if not can_i(api, group, resource, verb):
                missing.append(f"{verb} {resource}")
    return missing


def denies_egress(policy: dict[str, Any]) -> bool:
    """Whether a NetworkPolicy selects every kernel pod and allows it no egress at all."""
    spec = policy.get("spec") or {}
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    if (spec.get("podSelector") or {}).get("matchExpressions"):
        return False  # not ours to evaluate: say it is missing, the admin can check
    selects_kernels = set(selector.items()) <= set(kube_manifests.KERNEL_SELECTOR.items())
    return (
        selects_kernels and "Egress" in (spec.get("policyTypes") or []) and not spec.get("egress")
    )


def checks(api: KubeApi, settings: KernelSettings) -> list[Verdict]:
    """doctor's Kubernetes checks for one kernelspec's namespace; never raises ours."""
    ns = api.namespace
    out: list[Verdict] = []
    try:
        missing = missing_verbs(api, runtime=bool(settings.runtime))
    except DockerKernelError as exc:
        return [
            (
                f"kubernetes {ns}: API",
                "FAIL",
                str(exc),
                "check KUBECONFIG/--kube-context, or the service account inside the cluster",
            )
        ]
    out.append((f"kubernetes {ns}: API", "OK", f"{api.host} answers", ""))
    if missing:
        out.append(
            (f"kubernetes {ns}: RBAC", "FAIL", f"not allowed: {', '.join(missing)}", ROLE_FIX)
        )
    else:
        out.append((f"kubernetes {ns}: RBAC", "OK", "the Role grants every verb kernels need", ""))
    if settings.runtime:
        out.append(runtime_class_verdict(api, settings.runtime))
    out.append(network_policy_verdict(api))
    return out


def runtime_class_verdict(api: KubeApi, name: str) -> Verdict:
    """FAIL when the cluster has no RuntimeClass `name` (kernels would not start)."""
    try:
        found = api.call(
            "get", "runtimeclasses", api.node.read_runtime_class, name, missing_ok=True
        )
    except DockerKernelError as exc:
        return (f"kubernetes: runtime {name}", "FAIL", str(exc), ROLE_FIX)
    if found is None:
        return (
            f"kubernetes: runtime {name}",
            "FAIL",
            f"the cluster has no RuntimeClass '{name}'",
            "install gVisor on the nodes and its RuntimeClass, or run setup without --runtime",
        )
    handler = api.serialize(found).get("handler", "?")
    return (f"kubernetes: runtime {name}", "OK", f"RuntimeClass {name} (handler {handler})", "")


def network_policy_verdict(api: KubeApi) -> Verdict:
    """WARN unless a NetworkPolicy in the namespace denies kernel pods every egress."""
    ns = api.namespace
    try:
        found = api.call(
            "list",
            "networkpolicies",
            api.networking.list_namespaced_network_policy,
            ns,
        )
    except DockerKernelError as exc:
        return (f"kubernetes {ns}: NetworkPolicy", "WARN", str(exc), ROLE_FIX)
    policies = [api.serialize(p) for p in (getattr(found, "items", None) or [])]
    ours = [p for p in policies if denies_egress(p)]
    if ours:
        name = ours[0].get("metadata", {}).get("name", "?")
        return (
            f"kubernetes {ns}: NetworkPolicy",
            "OK",
            f"{name} denies kernel pods all egress",
            "",
        )
    return (
        f"kubernetes {ns}: NetworkPolicy",
        "WARN",
        "no NetworkPolicy denies kernel pods egress: a kernel could open connections "
        "(and one is enforced only where the cluster's network plugin enforces policies)",
        "apply the NetworkPolicy in docs/kubernetes.md",
    )


def check_setup(api: KubeApi, settings: KernelSettings) -> list[str]:
    """setup --kubernetes: refuse (SettingsError) what would fail every start: no API, a
    missing verb, a missing RuntimeClass (fail closed, as --runtime runsc does locally);
    returns warnings (no deny-all NetworkPolicy yet)."""
    warnings = []
    for name, status, detail, fix in checks(api, settings):
        if status == "FAIL":
            raise SettingsError(f"{name}: {detail}", "No kernelspec was written", fix)
        if status == "WARN":
            warnings.append(f"{name}: {detail}; {fix}")
    return warnings


@dataclass(frozen=True)
class PodRow:
    """One kernel pod, for `list`."""

    name: str
    kernel_id: str
    phase: str
    ip: str
    server: str
    created: str


def kernel_pods(api: KubeApi) -> list[PodRow]:
    """Our kernel pods in the namespace (by label)."""
    found = api.call(
        "list", "pods", api.core.list_namespaced_pod, api.namespace, label_selector=SELECTOR
    )
    rows = []
    for item in getattr(found, "items", None) or []:
        pod = api.serialize(item)
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        # The annotation holds the id whole (the label a DNS label of it); older pods
        # have the label only.
        whole = (meta.get("annotations") or {}).get(kube_manifests.ANNOTATION_KERNEL_ID)
        rows.append(
            PodRow(
                name=str(meta.get("name", "")),
                kernel_id=str(whole or labels.get(kube_manifests.LABEL_KERNEL_ID, "")),
                phase=pod_phase(pod),
                ip=str((pod.get("status") or {}).get("podIP") or ""),
                server=str(labels.get(kube_manifests.LABEL_SERVER, "")),
                created=str(meta.get("creationTimestamp", "")),
            )
        )
    return rows


@dataclass
class Collected:
    """What `gc` removed (or would): pod and Secret names, and pods kept running."""

    pods: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    kept: int = 0
    note: str = ""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(
    api: KubeApi, *, server: str, dry_run: bool = False, alive: Any = _pid_alive
) -> Collected:
    """Delete what no kernel uses any more, by label: finished kernel pods (Succeeded,
    Failed: a pod with restartPolicy Never stays until deleted), running ones that this
    host's `server` started from a process that is gone (no ownerReference: started
    outside the cluster), and Secrets whose pod is gone. Pods owned by a server pod are
    left to Kubernetes' garbage collector."""
    out = Collected()
    found = api.call(
        "list", "pods", api.core.list_namespaced_pod, api.namespace, label_selector=SELECTOR
    )
    pods = [api.serialize(p) for p in (getattr(found, "items", None) or [])]
    live: set[str] = set()
    here = kube_manifests.dns_label(server)
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name", ""))
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        finished = pod_phase(pod) in ("Succeeded", "Failed")
        pid = int(annotations.get(kube_manifests.ANNOTATION_LAUNCHER_PID, "0") or 0)
        orphaned = (
            not meta.get("ownerReferences")
            and labels.get(kube_manifests.LABEL_SERVER) == here
            and not alive(pid)
        )
        if finished or orphaned:
            out.pods.append(name)
        else:
            live.add(name)
            out.kept += 1
    try:
        secrets = api.call(
            "list",
            "secrets",
            api.core.list_namespaced_secret,
            api.namespace,
            label_selector=SELECTOR,
        )
    except KubeError as exc:
        # The server's Role has no list on secrets (on purpose); an admin's gc does.
        out.note = f"lone Secrets not checked: {exc.what}"
        secrets = None
    for item in getattr(secrets, "items", None) or []:
        meta = api.serialize(item).get("metadata") or {}
        name = str(meta.get("name", ""))
        owners = [o.get("name") for o in meta.get("ownerReferences") or []]
        if not any(owner in live for owner in owners) and name.removesuffix("-keys") not in live:
            out.secrets.append(name)
    if dry_run:
        return out
    for name in out.pods:
        with contextlib.suppress(DockerKernelError):
            api.call(
                "delete",
                "pods",
                api.core.delete_namespaced_pod,
                name,
                api.namespace,
                missing_ok=True,
                grace_period_seconds=0,
            )
    for name in out.secrets:
        with contextlib.suppress(DockerKernelError):
            api.call(
                "delete",
                "secrets",
                api.core.delete_namespaced_secret,
                name,
                api.namespace,
                missing_ok=True,
            )
    return out


def namespaces(all_settings: list[KernelSettings]) -> list[KernelSettings]:
    """One settings per distinct (namespace, context) among --kubernetes kernelspecs: what
    `gc` and `list` cover besides the local engine."""
    seen: dict[tuple[str, str | None], KernelSettings] = {}
    for s in all_settings:
        if s.kube_namespace is not None:
            seen.setdefault((s.kube_namespace, s.kube_context), s)
    return list(seen.values())


def collect_all(
    all_settings: list[KernelSettings], *, dry_run: bool = False
) -> list[tuple[str, Collected | DockerKernelError]]:
    """`gc` over every kernelspec namespace: (namespace, what was collected or why not)."""
    out: list[tuple[str, Collected | DockerKernelError]] = []
    for s in namespaces(all_settings):
        assert s.kube_namespace is not None
        try:
            api = KubeApi.for_settings(s)
            out.append(
                (s.kube_namespace, collect(api, server=os.uname().nodename, dry_run=dry_run))
            )
        except DockerKernelError as exc:
            out.append((s.kube_namespace, exc))
    return out


def pods_all(
    all_settings: list[KernelSettings],
) -> list[tuple[str, list[PodRow] | DockerKernelError]]:
    """`list` over every kernelspec namespace: (namespace, its kernel pods or why not)."""
    out: list[tuple[str, list[PodRow] | DockerKernelError]] = []
    for s in namespaces(all_settings):
        assert s.kube_namespace is not None
        try:
            out.append((s.kube_namespace, kernel_pods(KubeApi.for_settings(s))))
        except DockerKernelError as exc:
            out.append((s.kube_namespace, exc))
    return out
