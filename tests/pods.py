"""Run a kernel pod's V1Pod under Docker, as a kubelet would: the tests' stand-in for a cluster.

No Kubernetes control plane can run on these machines, so the kernel side of a pod is
tested by running the exact container its V1Pod describes (the API's JSON shape, as
`kubectl get pod -o json` prints it) under the local Docker engine:

- `kubelet_volumes` writes what the kubelet would put in the pod's Secret volumes (each
  item's key at its path, `defaultMode`, group `fsGroup`) into a host directory;
- `docker_run_args` maps every field of the pod that shapes the container to its `docker
  run` option and REFUSES any field it does not know, so no hardening of the pod can be
  dropped silently: the container the tests talk to is the pod's.

What Docker cannot reproduce is said where it is mapped: `activeDeadlineSeconds` (the
supervisor's --lifetime ends the kernel first anyway), `ephemeral-storage` (the root is
read-only and the scratch space memory), the NetworkPolicy (an internal Docker network
stands in: no route beyond this host, but, unlike a deny-all egress policy, the host's own
addresses on that network stay reachable).

`kernel_pod` gives the pod under test (kube_manifests.render_pod's); `DockerKubelet` is the
kubelet tests/kube_api.py's in-memory API server uses for the end-to-end story
(tests/test_kube_story.py): each created pod runs as its container, its exit and its
deletion are the pod's.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jupyter_docker_kernel
from jupyter_docker_kernel import hardening, kube_channels, kube_manifests
from jupyter_docker_kernel.engine import LABEL_KERNEL_ID
from jupyter_docker_kernel.kube_channels import KernelKeys

PACKAGE = Path(jupyter_docker_kernel.__file__).parent
NAMESPACE = "jdk-test"
KERNEL_ID = "0f1e2d3c-kube-channels"

_SPEC_FIELDS = {
    "containers", "volumes", "restartPolicy", "activeDeadlineSeconds",
    "terminationGracePeriodSeconds", "automountServiceAccountToken", "enableServiceLinks",
    "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "hostname",
    "securityContext", "runtimeClassName",
}  # fmt: skip
_CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "workingDir", "stdin",
    "stdinOnce", "tty", "env", "ports", "resources", "securityContext", "volumeMounts",
    "terminationMessagePolicy",
}  # fmt: skip
_SECURITY_FIELDS = {
    "runAsUser", "runAsGroup", "runAsNonRoot", "privileged", "allowPrivilegeEscalation",
    "capabilities", "readOnlyRootFilesystem", "seccompProfile", "fsGroup",
}  # fmt: skip
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6,
          "G": 10**9, "T": 10**12}  # fmt: skip


class PodNotMappedError(AssertionError):
    """The pod has a field this stand-in cannot reproduce under Docker."""


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity of bytes ("2Gi", "512Mi", "64M", "1073741824") as an int."""
    for suffix, unit in _UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * unit)
    return int(text)


def quantity_cpus(text: str) -> str:
    """A CPU quantity ("1", "1500m") as docker's --cpus value."""
    return f"{int(text[:-1]) / 1000:g}" if text.endswith("m") else text


def _only(kind: str, given: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise PodNotMappedError(f"{kind} field(s) {unknown} have no docker run mapping here")


def _security(context: Mapping[str, Any]) -> list[str]:
    """A pod's or container's securityContext as docker run options (the container's
    fields override the pod's, as in Kubernetes; the caller merges them)."""
    _only("securityContext", context, _SECURITY_FIELDS)
    uid, gid = context.get("runAsUser"), context.get("runAsGroup")
    if uid is None or gid is None:
        raise PodNotMappedError(
            "the pod must name runAsUser and runAsGroup (the image's may be root)"
        )
    if context.get("runAsNonRoot") and uid == 0:
        raise PodNotMappedError("runAsNonRoot with runAsUser 0: the kubelet refuses to start it")
    if context.get("privileged"):
        raise PodNotMappedError("privileged pods are not kernels")
    args = ["--user", f"{uid}:{gid}"]
    if "fsGroup" in context:
        # The kubelet adds fsGroup to the container's groups and owns volumes by it.
        args += ["--group-add", str(context["fsGroup"])]
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = context.get("capabilities", {})
    if caps.get("add"):
        raise PodNotMappedError("capabilities.add")
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    profile = context.get("seccompProfile", {}).get("type")
    if profile not in (None, "RuntimeDefault"):
        raise PodNotMappedError(f"seccompProfile {profile}")
    # RuntimeDefault is the runtime's own default profile: Docker's, when no option names one.
    return args


def kubelet_volumes(
    pod: Mapping[str, Any], secrets: Mapping[str, Mapping[str, bytes]], root: Path
) -> dict[str, Path]:
    """Write each Secret volume of the pod as the kubelet would: returns volume -> host dir.

    `secrets` maps a Secret's name to its decoded data. Files get the volume's
    defaultMode, owned by root and the pod's fsGroup; directories 0755. (The kubelet also
    puts them on a tmpfs behind `..data` links; the kernel reads the same paths here.)
    """
    spec = pod["spec"]
    group = spec.get("securityContext", {}).get("fsGroup", 0)
    out: dict[str, Path] = {}
    for volume in spec["volumes"]:
        if "secret" not in volume:
            continue
        source = volume["secret"]
        data = secrets[source["secretName"]]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        target = root / volume["name"]
        for item in items:
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            path.write_bytes(data[item["key"]])
            os.chown(path, 0, group)
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)))
        target.chmod(0o755)
        out[volume["name"]] = target
    return out


def docker_run_args(
    pod: Mapping[str, Any],
    *,
    name: str,
    network: str,
    volume_dirs: Mapping[str, Path],
    labels: Mapping[str, str],
) -> list[str]:
    """`docker run` arguments (detached) for the pod's one container; see the module."""
    spec = pod["spec"]
    _only("pod spec", spec, _SPEC_FIELDS)
    for flag in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        if spec.get(flag):
            raise PodNotMappedError(f"{flag}: true")
    if spec.get("automountServiceAccountToken") is not False:
        raise PodNotMappedError("a pod that mounts a service-account token")
    if spec.get("restartPolicy") != "Never":
        raise PodNotMappedError(f"restartPolicy {spec.get('restartPolicy')}")
    (container,) = spec["containers"]
    _only("container", container, _CONTAINER_FIELDS)
    args = ["run", "--detach", "--name", name, "--network", network, "--restart", "no"]
    # No --init: a pod has no init process unless shareProcessNamespace (the pause
    # container); our supervisor is PID 1, as in the pod.
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    if container.get("imagePullPolicy") == "Never":
        args.append("--pull=never")
    if container.get("stdin") and not container.get("stdinOnce"):
        # The kubelet keeps the container's stdin open with nobody attached: the
        # supervisor's lifeline never reads EOF. `docker run -d -i` does the same.
        args.append("--interactive")
    if container.get("tty"):
        raise PodNotMappedError("tty: true")
    if "hostname" in spec:
        args += ["--hostname", spec["hostname"]]
    if "terminationGracePeriodSeconds" in spec:
        args += ["--stop-timeout", str(spec["terminationGracePeriodSeconds"])]
    if spec.get("runtimeClassName"):
        args += ["--runtime", spec["runtimeClassName"]]
    security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    args += _security(security)
    limits = container.get("resources", {}).get("limits", {})
    if container.get("resources", {}).get("requests", limits) != limits:
        raise PodNotMappedError("requests differ from limits (docker has limits only)")
    _only("resources.limits", limits, {"cpu", "memory", "ephemeral-storage"})
    if "memory" in limits:
        memory = str(quantity_bytes(limits["memory"]))
        args += ["--memory", memory, "--memory-swap", memory]
    if "cpu" in limits:
        args += ["--cpus", quantity_cpus(limits["cpu"])]
    # ephemeral-storage: no docker equivalent for a read-only root; the kubelet evicts.
    for item in container.get("env", []):
        _only("env", item, {"name", "value"})
        args += ["--env", f"{item['name']}={item['value']}"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        _only("volumeMount", mount, {"name", "mountPath", "readOnly", "subPath"})
        volume = volumes[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume:
            empty = volume["emptyDir"]
            if empty.get("medium") != "Memory":
                raise PodNotMappedError(f"emptyDir {mount['name']} on the node's disk")
            size = quantity_bytes(empty["sizeLimit"])
            # The kubelet mounts a memory emptyDir as a tmpfs of that size, mode 0777, which
            # the kernel's uid may write. Docker gives a tmpfs over a directory the image
            # has (/home/kernel) that directory's mode (root's 0755) whatever mode it is
            # asked for, so the stand-in's tmpfs is owned by the pod's user instead.
            owner = f"uid={security['runAsUser']},gid={security.get('fsGroup', 0)}"
            args += ["--tmpfs", f"{path}:rw,nosuid,nodev,noexec,size={size},mode=0777,{owner}"]
        elif "secret" in volume or "configMap" in volume:
            if not mount.get("readOnly"):
                raise PodNotMappedError(f"{mount['name']} is mounted writable")
            source = volume_dirs[mount["name"]] / mount.get("subPath", "")
            args += ["--mount", hardening.mount_arg(str(source), path, read_only=True)]
        else:
            raise PodNotMappedError(f"volume {mount['name']}: {sorted(volume)}")
    if "workingDir" in container:
        args += ["--workdir", container["workingDir"]]
    # ports: nothing to publish. The client reaches the container's own address on the
    # network, as a server reaches a pod's IP.
    command = [*container.get("command", []), *container.get("args", [])]
    args += ["--entrypoint", command[0], container["image"], *command[1:]]
    return args


def kernel_pod(image: str, keys: KernelKeys) -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
    """The kernel pod under test (kube_manifests.render_pod, default settings, --no-workdir)
    and its Secrets' decoded data, by Secret name."""
    from jupyter_docker_kernel.settings import KernelSettings

    settings = KernelSettings(image=image, workdir="none", kube_namespace=NAMESPACE)
    launch = kube_manifests.PodLaunch(
        kernel_id=KERNEL_ID,
        name=kube_manifests.pod_name(KERNEL_ID, os.urandom(2).hex()),
        namespace=NAMESPACE,
        user=kube_manifests.pod_user(settings, 1000, 1000),
        kernelspec="jdk-test-kube",
    )
    secret = kube_manifests.render_secret(
        launch,
        kube_channels.pod_connection(keys),
        supervisor=(PACKAGE / "_supervise.py").read_bytes(),
        usage_hook=(PACKAGE / "_usage.py").read_bytes(),
    )
    pod = kube_manifests.render_pod(settings, launch)
    return pod, {secret["metadata"]["name"]: decoded(secret)}


def decoded(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's data as the kubelet writes it into the pod: base64 decoded."""
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; with check, a failure is an AssertionError carrying its stderr."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    assert not check or done.returncode == 0, f"docker {args[0]} failed: {done.stderr}"
    return done


class DockerKubelet:
    """A kubelet for tests/kube_api.py's FakeCluster that RUNS each pod (SIMULATED control
    plane, real container): the pod's V1Pod goes through docker_run_args onto `network`
    (an internal Docker network the host reaches), its Secret volumes are written as the
    kubelet would (kubelet_volumes). Blocking methods: the cluster calls them in threads.

    run() returns the container's IP (the pod IP); wait() its exit code; remove() is the
    pod's deletion (`docker rm -f`, idempotent). Every container carries `label`.
    """

    def __init__(self, network: str, root: Path, label: str) -> None:
        self.network = network
        self.root = root
        self.label = label
        #: pod name -> container name, for remove() and the test's checks.
        self.containers: dict[str, str] = {}

    def run(self, pod: Mapping[str, Any], secrets: Mapping[str, Mapping[str, bytes]]) -> str:
        name = pod["metadata"]["name"]
        container = f"{self.network}-{name}"[:120]
        volumes = kubelet_volumes(pod, secrets, self.root / name)
        args = docker_run_args(
            pod,
            name=container,
            network=self.network,
            volume_dirs=volumes,
            labels={self.label: self.network},
        )
        self.containers[name] = container
        # The engine's kernel-id label too, from the pod's: tests.kernels.containers_of
        # (and so running_kernel's "nothing left" check) finds a pod's container as a
        # local kernel's. The annotation's id, whole: the label's is a DNS label of it,
        # another id when the kernel's has "_" (a mkstemp connection file's, one in five).
        meta = pod["metadata"]
        kernel_id = meta.get("annotations", {}).get(kube_manifests.ANNOTATION_KERNEL_ID)
        kernel_id = kernel_id or meta.get("labels", {}).get(kube_manifests.LABEL_KERNEL_ID)
        if kernel_id:
            at = args.index("--entrypoint")
            args[at:at] = ["--label", f"{LABEL_KERNEL_ID}={kernel_id}"]
        docker(*args)
        template = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        return docker("inspect", "-f", template, container).stdout.strip()

    def wait(self, name: str) -> int:
        """Block until the pod's container exits: its exit code (137 if it was removed)."""
        out = docker("wait", self.containers[name], check=False).stdout.strip()
        return int(out) if out.lstrip("-").isdigit() else 137

    def oom_killed(self, name: str) -> bool:
        """Whether the engine says the pod's container was killed for memory."""
        container = self.containers.get(name, name)
        out = docker("inspect", "-f", "{{.State.OOMKilled}}", container, check=False)
        return out.stdout.strip() == "true"

    def logs(self, name: str) -> str:
        out = docker("logs", self.containers.get(name, name), check=False)
        return out.stdout + out.stderr

    def remove(self, name: str) -> None:
        container = self.containers.get(name)
        if container is not None:
            docker("rm", "-f", container, check=False)

    def left(self) -> list[str]:
        """Containers of this kubelet the engine still has (running or not)."""
        found = docker("ps", "-aq", "--filter", f"label={self.label}={self.network}")
        return found.stdout.split()
