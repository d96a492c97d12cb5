"""Kubernetes: each kernel a hardened pod; one more container.Backend of Container.

`KubeBackend` implements container.Backend (see container.py's module docstring for who
calls each method, and when) with the official `kubernetes` client (the optional extra
`jupyter-docker-kernel[kubernetes]`); `KubeApi` is the one place that talks to the API
server and turns its refusals into our errors (a 403 names the verb, the resource and the
Role to grant). The objects come from kube_manifests.py (pure), the lifecycle stays
Container's: this module only creates, watches and deletes.

A cold start (`start_cold`, blocking; the provisioner calls Container.start off its loop):
  1. the work dir's copy (--copy-workdir) is streamed into memory, at most
     kube_manifests.SECRET_COPY_LIMIT bytes, before anything exists;
  2. the kernel's keys (kube_channels.KernelKeys: the client's HMAC key, a fresh CurveZMQ
     key pair) and its connection file (kube_channels.pod_connection: TCP on the fixed
     kube_channels.PORTS) go into the per-kernel Secret, which is created first, without
     an owner: a pod whose Secret is missing would wait in ContainerCreating and be
     retried by the kubelet on its own back-off, seconds later;
  3. the Pod is created; then the Secret's ownerReferences are patched to the Pod's uid, so
     Kubernetes deletes the Secret with the Pod. A server that dies between 2 and 3 leaves a
     labelled Secret that `gc` removes (kube_manage.gc);
  4. the pod is watched until Running (its IP is where the kernel listens), failed, or
     start_timeout passed: then the error carries its phase, conditions and events, and
     the pod is deleted (nothing is left running);
  5. kube_channels.wait_until_ready asks the kernel for kernel_info over its Curve shell
     channel until a signed reply comes (a Running pod is not yet a kernel that listens,
     and jupyter_client's own wait_for_ready gives up after a 1 s heartbeat window); a
     kernel that does not answer, or a pod that ends first, deletes pod and Secret too.
The Cold it returns (PodCold) carries the kernel's client connection info
(`PodCold.endpoint.connection`, kube_channels.client_connection: pod IP, fixed ports, HMAC
and Curve keys), which the provisioner returns to jupyter_client from launch_kernel.
`PodCold.wait` watches the pod to its end (exit code of the kernel container; the kubelet's
reason, such as OOMKilled or DeadlineExceeded, becomes the supervisor's words, and those two
the exit reason in the local path's words, PodCold.ended_by, so the notebook's kill notice
is the local one). When the
API goes away mid-kernel, the watch is retried for API_LOSS_WAIT seconds, then the kernel is
taken as ended, with one log line saying so (the pod itself is ended by its
activeDeadlineSeconds, its owner's deletion, or `gc`).

Interrupts go as messages (the kernelspec's interrupt_mode "message", setup's default for
pods) or as signals (interrupt_mode "signal"): signalling a process in a pod through the
API needs pods/exec, which the Role does not grant, so `signal` asks the pod's supervisor
on its signal port instead (kube_channels.send_signal: Curve with the kernel's keys, a
request signed with its HMAC key over a fresh nonce), and the supervisor signals the
kernel's process group. TERM and KILL are the pod's deletion (with TERMINATION_GRACE, or
none).

Tests: tests/test_kube_backend.py runs this module against kmock's in-memory Kubernetes
API server (no control plane can run on our machines); tests/test_kube_story.py runs it
under a KernelManager against the same server, whose kubelet runs each pod's container
under Docker (the kernel and its Curve channels for real). Nothing here was run against
a real cluster yet (tests/test_kube_cluster.py, marker `kubernetes`, does when
KUBECONFIG is set).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_docker_kernel import hardening, kube_channels, kube_manifests, workcopy
from jupyter_docker_kernel.errors import DockerKernelError, LaunchError, SettingsError
from jupyter_docker_kernel.kube_channels import KernelKeys
from jupyter_docker_kernel.kube_manifests import PodLaunch, PodOwner
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

if TYPE_CHECKING:
    from jupyter_docker_kernel import pool
    from jupyter_docker_kernel.container import Refill

# The launcher's logger, as in container.py: start and end lines go where users look.
log = logging.getLogger("jupyter_docker_kernel.launcher")

#: How long a pod may take from creation to Running (image on the node, scheduling).
POD_START_TIMEOUT = 120.0
#: The least time the kernel of a Running pod gets to answer kernel_info (the rest of
#: POD_START_TIMEOUT, but never less than this).
READY_MIN = 30.0
#: How long the API may be unreachable while a kernel runs before we take it as ended.
API_LOSS_WAIT = 10.0
#: Seconds one API request may take (connect and read), except watches and log follows.
API_TIMEOUT = 30.0
#: Seconds per watch request: a real API server ends watches after a while anyway.
WATCH_SECONDS = 60
#: The downward API variables (or config) naming the server's own pod.
ENV_POD_NAME = "POD_NAME"
ENV_POD_UID = "POD_UID"
ENV_POD_NAMESPACE = "POD_NAMESPACE"

_T = TypeVar("_T")


class KubeError(LaunchError):
    """The Kubernetes API refused or failed a call; says which verb on which resource."""


class KubeUnreachableError(KubeError):
    """No answer from the API server at all (connection refused or cut, timeout)."""


def _no_answer(exc: BaseException) -> bool:
    """Whether exc means the API server did not answer (urllib3's and the socket's errors)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("urllib3", "http.client"))


def _client() -> Any:
    """The `kubernetes` package, or an error that says how to install it."""
    try:
        import kubernetes
    except ImportError as exc:
        raise SettingsError(
            "--kubernetes needs the official Kubernetes client, which is not installed",
            "No kernel was started",
            "pip install 'jupyter-docker-kernel[kubernetes]'",
        ) from exc
    return kubernetes


def load_api_client(context: str | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """An ApiClient for the kubeconfig `context`, or in the cluster (a service account's
    token) when there is no kubeconfig and no context is asked for. environ: whose
    KUBECONFIG and HOME name the kubeconfig (default ours; the resident helper passes its
    client's, as it does for the engine)."""
    kubernetes = _client()
    configuration = kubernetes.client.Configuration()
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    default = Path(home, ".kube", "config")
    config_file = env.get("KUBECONFIG") or (str(default) if default.exists() else None)
    try:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not config_file:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            # KUBECONFIG read now: the client reads it once, when it is first imported.
            kubernetes.config.load_kube_config(
                config_file=config_file,
                context=context,
                client_configuration=configuration,
            )
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise KubeError(
            f"Cannot load the Kubernetes configuration ({exc})",
            "No kernel was started",
            "Set KUBECONFIG or run inside the cluster; `kubectl config get-contexts` lists "
            "the contexts --kube-context may name.",
        ) from exc
    return kubernetes.client.ApiClient(configuration)


def _status(exc: BaseException) -> int:
    """The HTTP status of an ApiException, 0 for anything else (no answer at all)."""
    status = getattr(exc, "status", None)
    return int(status) if isinstance(status, int) else 0


def _message(exc: BaseException) -> str:
    """The API server's own message from an ApiException's Status body, else str(exc)."""
    body = getattr(exc, "body", None)
    if body:
        with contextlib.suppress(ValueError, TypeError):
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
    return str(getattr(exc, "reason", "") or exc).strip()


class KubeApi:
    """The one place that calls the Kubernetes API: the core, networking, node and
    authorization groups of one namespace, each call named by verb and resource so that a
    refusal says what to grant."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        kubernetes = _client()
        self.api_client = api_client
        self.namespace = namespace
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self.node = kubernetes.client.NodeV1Api(api_client)
        self.authorization = kubernetes.client.AuthorizationV1Api(api_client)
        self.exception = kubernetes.client.exceptions.ApiException

    @classmethod
    def for_settings(
        cls, settings: KernelSettings, environ: Mapping[str, str] | None = None
    ) -> KubeApi:
        """The API of settings.kube_namespace, through settings.kube_context (environ:
        load_api_client's)."""
        assert settings.kube_namespace is not None
        return cls(load_api_client(settings.kube_context, environ), settings.kube_namespace)

    @property
    def host(self) -> str:
        return str(getattr(self.api_client.configuration, "host", "?"))

    def call(
        self,
        verb: str,
        resource: str,
        func: Callable[..., _T],
        *args: Any,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> _T | None:
        """func(*args, **kwargs), its refusals as KubeError; None for a 404 with missing_ok
        (a pod already gone is not an error: deletion is idempotent)."""
        # The client waits forever by default: an API server that hangs must not hang us.
        kwargs.setdefault("_request_timeout", API_TIMEOUT)
        try:
            return func(*args, **kwargs)
        except self.exception as exc:
            status = _status(exc)
            if status == 404 and missing_ok:
                return None
            raise self.error(verb, resource, exc) from exc
        except Exception as exc:  # urllib3's connection errors, timeouts: no answer at all
            if _no_answer(exc):
                raise self.unreachable(verb, resource, exc) from exc
            raise

    def unreachable(self, verb: str, resource: str, exc: BaseException) -> KubeUnreachableError:
        return KubeUnreachableError(
            f"Cannot reach the Kubernetes API at {self.host} to {verb} {resource} "
            f"({type(exc).__name__}: {exc})",
            "The request was not made",
            "Check the API server and the network to it (`kubectl get --raw /version`).",
        )

    def error(self, verb: str, resource: str, exc: BaseException) -> KubeError:
        """An ApiException as our error; a 403 says which Role rule is missing."""
        status = _status(exc)
        message = _message(exc)
        where = f"in namespace {self.namespace}"
        if status == 403:
            group = next(
                (g for g, r, _ in kube_manifests.ROLE_RULES if r == resource.split("/")[0]), ""
            )
            return KubeError(
                f"The Kubernetes API refused to {verb} {resource} {where} "
                f"(403 Forbidden: {message})",
                "Nothing was created",
                f"grant the server's service account the verb '{verb}' on '{resource}' "
                f"(apiGroup '{group}') in a namespaced Role; docs/kubernetes.md has the Role "
                "to apply, and `jupyter-docker-kernel doctor` lists what is missing",
            )
        return KubeError(
            f"The Kubernetes API failed to {verb} {resource} {where} ({status}: {message})",
            "The request was not done",
        )

    def serialize(self, obj: Any) -> dict[str, Any]:
        """A client model as the API's JSON dict (what render_* produce)."""
        data = self.api_client.sanitize_for_serialization(obj)
        return data if isinstance(data, dict) else {}

    def watch_pods(self, name: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The pod `name`'s states as the API streams them (the first is its current one),
        until timeout seconds pass."""
        kubernetes = _client()
        watch = kubernetes.watch.Watch()
        try:
            stream = watch.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=max(1, math.ceil(timeout)),
                # The server ends the watch at timeout_seconds; this is for one that does not.
                _request_timeout=timeout + 2,
            )
            for event in stream:
                obj = event.get("object")
                data = obj if isinstance(obj, dict) else self.serialize(obj)
                # Checked here too: a field selector is the server's to honour.
                if data.get("metadata", {}).get("name") == name:
                    yield {**data, "_event": event.get("type", "")}
        except self.exception as exc:
            raise self.error("watch", "pods", exc) from exc
        except Exception as exc:  # the stream cut mid-watch: urllib3's ProtocolError
            if type(exc).__name__ == "ReadTimeoutError":
                return  # nothing happened within the watch's time: its normal end
            if _no_answer(exc):
                raise self.unreachable("watch", "pods", exc) from exc
            raise
        finally:
            watch.stop()


#: What KubeBackend calls once the pod is Running: kube_channels.wait_until_ready's shape
#: (the API conversation's tests, where no kernel listens at the pod IP, pass their own).
Ready = Callable[..., Any]


@dataclass(frozen=True)
class PodEndpoint:
    """Where a running kernel pod listens, and everything a client needs to talk to it:
    `connection` is kube_channels.client_connection (pod IP, the fixed ports, the HMAC key
    and the kernel's Curve key pair, which jupyter_client 8.10 clients use as their own),
    what the provisioner hands jupyter_client. repr shows no key."""

    ip: str
    connection: dict[str, Any] = field(repr=False)

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(self.connection[f"{name}_port"]) for name in kube_channels.CHANNELS}

    @property
    def curve_publickey(self) -> str:
        """The kernel's Curve public key (Z85): every client's server key."""
        return str(self.connection["curve_publickey"])


def pod_phase(pod: dict[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The kernel container's `terminated` state (exitCode, reason, message), if it ended."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == kube_manifests.CONTAINER:
            state = (status.get("state") or {}).get("terminated")
            if state:
                return dict(state)
    return None


def describe(pod: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """A pod's phase, reason, conditions, container states and events in one paragraph:
    what `kubectl describe pod` would show a person debugging a start that failed."""
    status = pod.get("status") or {}
    parts = [f"phase {pod_phase(pod)}"]
    if status.get("reason") or status.get("message"):
        parts.append(f"{status.get('reason', '')}: {status.get('message', '')}".strip(": "))
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            text = f"{cond.get('type')}=False"
            if cond.get("reason") or cond.get("message"):
                text += f" ({cond.get('reason', '')}: {cond.get('message', '')})"
            parts.append(text)
    for cs in status.get("containerStatuses") or []:
        for kind, state in (cs.get("state") or {}).items():
            if state and kind != "running":
                why = f"{state.get('reason', '')} {state.get('message', '')}".strip()
                parts.append(f"container {kind}: {why}")
    for event in events[-5:]:
        parts.append(
            f"event {event.get('type', '')} {event.get('reason', '')}: {event.get('message', '')}"
        )
    return "; ".join(parts)


def server_owner(settings_namespace: str) -> PodOwner | None:
    """The server's own pod from the downward API (POD_NAME, POD_UID, POD_NAMESPACE), when
    it runs in the kernels' namespace: an ownerReference cannot cross namespaces (the
    garbage collector would take the owner as missing and delete the kernel at once)."""
    name, uid = os.environ.get(ENV_POD_NAME, ""), os.environ.get(ENV_POD_UID, "")
    namespace = os.environ.get(ENV_POD_NAMESPACE, settings_namespace)
    if not name or not uid:
        return None
    if namespace != settings_namespace:
        log.info(
            "kernel pods in namespace %s cannot be owned by this server's pod %s in %s; "
            "`jupyter-docker-kernel gc` removes what a gone server leaves",
            settings_namespace,
            name,
            namespace,
        )
        return None
    return PodOwner(name=name, uid=uid)


def copy_stream(project: str, settings: KernelSettings) -> bytes:
    """The work dir's stream (workcopy.py) in memory, refused past what a Secret can hold."""
    secret_limit = kube_manifests.SECRET_COPY_LIMIT
    too_big = LaunchError(
        f"The work directory {project} is more than a kernel's Secret carries "
        f"({secret_limit} bytes)",
        "No pod was created",
        "Mount it instead (setup --kube-pvc CLAIM:PATH), or make it smaller.",
    )
    limit = size_bytes(settings.copy_limit)
    try:
        entries = workcopy.scan(
            project, limit=min(limit, secret_limit), max_entries=settings.tmp_inodes
        )
    except LaunchError as exc:
        if limit > secret_limit and "limit" in exc.what:
            raise too_big from exc
        raise
    buf = io.BytesIO()
    workcopy.send(project, entries, buf.write)
    data = buf.getvalue()
    if len(data) > secret_limit:  # the stream's headers on top of the files' bytes
        raise too_big
    return data


class PodCold:
    """A kernel pod as Container sees a cold start (container.Cold): running when made."""

    def __init__(
        self,
        backend: KubeBackend,
        name: str,
        pod: dict[str, Any],
        endpoint: PodEndpoint,
        settings: KernelSettings | None = None,
    ) -> None:
        """settings: the kernel's (its memory limit and lifetime name the kubelet's kills
        in ended_by)."""
        self.backend = backend
        self.name = name
        self.settings = settings or KernelSettings()
        #: The pod's name: Container passes it back to signal, remove and inspect, and
        #: the API names pods by name (the uid is pod["metadata"]["uid"]).
        self.container_id = name
        self.uid = str(pod.get("metadata", {}).get("uid") or "")
        self.endpoint = endpoint
        self._pod = pod
        self._words = ""
        self._closed = threading.Event()
        self._logs: Any = None
        self._reader: Any = None

    def write(self, data: bytes) -> None:
        """Nothing to send: the work dir's copy went into the pod's Secret (start_cold)."""

    def outputs(self) -> list[Any]:
        """The kernel container's log, followed (a pipe fed by a thread: forward reads a
        file descriptor, the API gives an HTTP stream)."""
        read_fd, write_fd = os.pipe()

        def pump() -> None:
            api = self.backend.api
            with os.fdopen(write_fd, "wb") as out:
                try:
                    self._logs = api.call(
                        "get",
                        "pods/log",
                        api.core.read_namespaced_pod_log,
                        self.name,
                        api.namespace,
                        container=kube_manifests.CONTAINER,
                        follow=True,
                        _preload_content=False,
                        _request_timeout=None,  # followed for the kernel's whole life
                    )
                    for chunk in self._logs.stream(4096):
                        out.write(chunk)
                        out.flush()
                except (DockerKernelError, OSError, ValueError) as exc:
                    if not self._closed.is_set():
                        log.debug("the log of pod %s ended: %s", self.name, exc)
                except Exception as exc:  # urllib3's protocol errors when the API goes away
                    log.debug("the log of pod %s ended: %s", self.name, exc)

        threading.Thread(target=pump, daemon=True).start()
        self._reader = os.fdopen(read_fd, "rb")
        return [self._reader]

    def wait(self) -> int:
        """Block until the kernel container ends: its exit code. The API gone for
        API_LOSS_WAIT seconds ends the wait with 1 and a log line."""
        code, self._words = self.backend.wait_pod(self.name)
        return code

    def words(self) -> str:
        """The kubelet's reason for the end (OOMKilled, DeadlineExceeded, the API lost)."""
        return self._words

    @property
    def ended_by(self) -> str:
        """The kubelet's kills in the local path's words, for Container.wait's exit reason,
        from which notice.kill_notice makes the notebook's notice (the one text for every
        backend): OOMKilled as the engine's out-of-memory verdict (the supervisor may not
        have lived to say it), DeadlineExceeded (activeDeadlineSeconds) as the lifetime
        stop. "" for any other end: the supervisor's lines in the pod's log speak then."""
        if self._words == "OOMKilled":
            limit = size_bytes(self.settings.memory) >> 20
            return f"out of memory (limit {limit} MiB), as the kubelet reports"
        if self._words == "DeadlineExceeded":
            return (
                f"maximum lifetime of {self.settings.max_lifetime:g} s reached (the pod's "
                "activeDeadlineSeconds)"
            )
        return ""

    def close(self) -> None:
        self._closed.set()
        if self._logs is not None:
            with contextlib.suppress(Exception):
                self._logs.release_conn()
        if self._reader is not None:
            with contextlib.suppress(OSError):
                self._reader.close()


class KubeBackend:
    """Kernels as pods in settings.kube_namespace (container.Backend)."""

    def __init__(
        self,
        api: KubeApi,
        *,
        owner: PodOwner | None = None,
        server: str = "",
        start_timeout: float = POD_START_TIMEOUT,
        server_ids: tuple[int, int] | None = None,
        ready: Ready = kube_channels.wait_until_ready,
    ) -> None:
        """api: the namespace's KubeApi. owner: the server's pod (server_owner()); server:
        the label value naming who started the kernel (default: the owner, else the host).
        server_ids: the uid and gid the kernel's uid rule starts from (default: ours).
        ready: waits until the Running pod's kernel answers over Curve (start_cold's step 5;
        kube_channels.wait_until_ready, replaced only where no kernel runs at the pod IP)."""
        self.api = api
        self.owner = owner
        self.server = server or (owner.name if owner else os.uname().nodename)
        self.start_timeout = start_timeout
        self.server_ids = server_ids or (os.getuid(), os.getgid())
        self.api_loss_wait = API_LOSS_WAIT
        self.ready = ready
        #: Running pods' endpoints by pod name, for `signal` (set by start_cold, dropped
        #: by remove); one backend may hold many kernels (the resident helper's).
        self.endpoints: dict[str, PodEndpoint] = {}

    @classmethod
    def for_settings(
        cls, settings: KernelSettings, environ: Mapping[str, str] | None = None
    ) -> KubeBackend:
        """The backend the adapters use when settings.kube_namespace is set (environ:
        whose kubeconfig; the resident helper passes its client's)."""
        assert settings.kube_namespace is not None
        api = KubeApi.for_settings(settings, environ)
        return cls(api, owner=server_owner(settings.kube_namespace))

    # -- start -----------------------------------------------------------------------------

    def pod_launch(
        self, settings: KernelSettings, launch: hardening.Launch, *, copy: bool
    ) -> PodLaunch:
        """The pod's facts from the local launch's (one name for `docker ps` and pods)."""
        return PodLaunch(
            kernel_id=launch.kernel_id,
            name=kube_manifests.dns_label(launch.container_name),
            namespace=self.api.namespace,
            user=kube_manifests.pod_user(settings, *self.server_ids, launch.kernel_id),
            workdir="" if settings.workdir == "none" else launch.workdir,
            project_root=launch.project_root,
            owner=self.owner,
            server=self.server,
            launcher_pid=launch.launcher_pid,
            kernelspec=launch.kernelspec,
            copy=copy,
        )

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> PodCold:
        """Container.start (cold): Secret, Pod, the Secret's owner, Running (see the
        module docstring for the order and why). Raises KubeError/LaunchError with nothing
        left behind."""
        stream = None
        if settings.workdir == "copy":
            stream = copy_stream(launch.project_root or launch.workdir, settings)
        facts = self.pod_launch(settings, launch, copy=stream is not None)
        with open(launch.connection_file) as fh:
            local = json.load(fh)
        keys = KernelKeys.generate()
        if local.get("key"):
            # The Jupyter client's HMAC key: the kernel signs with what the client checks.
            keys = replace(keys, key=str(local["key"]))
        connection = kube_channels.pod_connection(keys)
        here = Path(hardening.SUPERVISOR_PATH)
        secret_body = kube_manifests.render_secret(
            facts,
            connection,
            supervisor=here.read_bytes(),
            usage_hook=here.with_name("_usage.py").read_bytes(),
            workdir_stream=stream,
            env=settings.env,
        )
        pod_body = kube_manifests.render_pod(settings, facts)
        api = self.api
        secret_name = secret_body["metadata"]["name"]
        deadline = time.monotonic() + self.start_timeout
        api.call("create", "secrets", api.core.create_namespaced_secret, api.namespace, secret_body)
        try:
            created = api.call(
                "create", "pods", api.core.create_namespaced_pod, api.namespace, pod_body
            )
            pod = api.serialize(created)
            uid = pod.get("metadata", {}).get("uid")
            if uid:
                api.call(
                    "patch",
                    "secrets",
                    api.core.patch_namespaced_secret,
                    secret_name,
                    api.namespace,
                    {"metadata": {"ownerReferences": kube_manifests.secret_owner(pod)}},
                )
            running = self.wait_running(facts.name)
            ip = str((running.get("status") or {}).get("podIP") or "")
            client = kube_channels.client_connection(keys, ip)
            client["kernel_name"] = str(local.get("kernel_name", ""))
            # A Running pod is not yet a kernel that listens: ask it over Curve, at least
            # READY_MIN seconds even when the pod took the start's whole time to run.
            self.ready(
                client,
                timeout=max(READY_MIN, deadline - time.monotonic()),
                alive=lambda: self._still_running(facts.name),
            )
        except BaseException:
            self._discard(facts.name, secret_name)
            raise
        log.info(
            "kernel %s: pod %s running in namespace %s at %s (ports %d-%d, signals on %d, "
            "CurveZMQ), answering kernel_info",
            launch.kernel_id,
            facts.name,
            api.namespace,
            ip,
            min(kube_channels.PORTS.values()),
            max(kube_channels.PORTS.values()),
            kube_channels.SIGNAL_PORT,
        )
        endpoint = PodEndpoint(ip=ip, connection=client)
        self.endpoints[facts.name] = endpoint
        return PodCold(self, facts.name, running, endpoint, settings)

    def _still_running(self, name: str) -> bool:
        """wait_until_ready's `alive`: the pod is still Running (an API error counts as
        yes: the readiness timeout, not one failed GET, decides)."""
        try:
            return pod_phase(self.inspect(name) or {}) == "Running"
        except DockerKernelError:
            return True

    def _discard(self, pod: str, secret: str) -> None:
        """A failed start's pod and Secret, deleted quietly (either may not exist)."""
        for what, func, name in (
            ("pods", self.api.core.delete_namespaced_pod, pod),
            ("secrets", self.api.core.delete_namespaced_secret, secret),
        ):
            with contextlib.suppress(DockerKernelError):
                self.api.call(
                    "delete",
                    what,
                    func,
                    name,
                    self.api.namespace,
                    missing_ok=True,
                    grace_period_seconds=0,
                )

    def events(self, name: str) -> list[dict[str, Any]]:
        """The pod's events (scheduling, image, mount failures), oldest first; [] if the
        Role does not let us list them."""
        api = self.api
        try:
            found = api.call(
                "list",
                "events",
                api.core.list_namespaced_event,
                api.namespace,
                field_selector=f"involvedObject.name={name}",
            )
        except DockerKernelError:
            return []
        items = [api.serialize(e) for e in (getattr(found, "items", None) or [])]
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def wait_running(self, name: str) -> dict[str, Any]:
        """Watch the pod until Running with an IP; LaunchError with its description if it
        ends first, or is still Pending after start_timeout."""
        deadline = time.monotonic() + self.start_timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for pod in self.api.watch_pods(name, deadline - time.monotonic()):
                last = pod
                if pod["_event"] == "DELETED":
                    raise LaunchError(
                        f"Kernel pod {name} was deleted before it ran",
                        "No kernel was started",
                        "See who deleted it: `kubectl get events`.",
                    )
                phase = pod_phase(pod)
                ip = (pod.get("status") or {}).get("podIP")
                if phase == "Running" and ip:
                    return pod
                if phase in ("Succeeded", "Failed"):
                    raise LaunchError(
                        f"Kernel pod {name} ended before it ran: "
                        f"{describe(pod, self.events(name))}",
                        "No kernel was started",
                        "`jupyter-docker-kernel doctor` checks the image and the namespace.",
                    )
        raise LaunchError(
            f"Kernel pod {name} did not run within {self.start_timeout:g} s: "
            f"{describe(last, self.events(name))}",
            "The pod was deleted; no kernel was started",
            "Check that the image is on the nodes (imagePullPolicy Never, setup --kube-pull) "
            "and that the namespace's quota and nodes have room for the pod's requests.",
        )

    # -- running and the end ---------------------------------------------------------------

    def wait_pod(self, name: str) -> tuple[int, str]:
        """Watch the pod until its kernel container ends: (exit code, the kubelet's
        reason or ""). The API unreachable for api_loss_wait seconds: (1, why), logged."""
        lost_since: float | None = None
        while True:
            try:
                for pod in self.api.watch_pods(name, WATCH_SECONDS):
                    lost_since = None
                    if pod["_event"] == "DELETED":
                        state = terminated(pod) or {}
                        return int(state.get("exitCode", 137)), "its pod was deleted"
                    ended = terminated(pod)
                    if ended is not None or pod_phase(pod) in ("Succeeded", "Failed"):
                        state = ended or {}
                        reason = str(
                            (pod.get("status") or {}).get("reason") or state.get("reason") or ""
                        )
                        words = "" if reason in ("", "Completed", "Error") else reason
                        return int(state.get("exitCode", 1)), words
            except KubeUnreachableError as exc:
                now = time.monotonic()
                lost_since = lost_since if lost_since is not None else now
                if now - lost_since >= self.api_loss_wait:
                    log.error(
                        "lost the Kubernetes API at %s while kernel pod %s ran (%s); taking "
                        "the kernel as ended. The pod ends at its activeDeadlineSeconds, with "
                        "its owner, or by `jupyter-docker-kernel gc`.",
                        self.api.host,
                        name,
                        exc.what,
                    )
                    return 1, "the Kubernetes API went away"
                time.sleep(0.5)

    # -- container.Backend -----------------------------------------------------------------

    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None:
        """No warm pods (settings refuse --pool with --kubernetes)."""
        return None

    def rename(self, container_id: str, name: str) -> bool:
        return True  # pods are never claimed, so never renamed

    def update(self, container_id: str, cpu_shares: int) -> None:
        """Nothing: a pod's CPU is its requests = limits."""

    def inspect(self, name: str) -> dict[str, Any] | None:
        api = self.api
        found = api.call(
            "get", "pods", api.core.read_namespaced_pod, name, api.namespace, missing_ok=True
        )
        return None if found is None else api.serialize(found)

    def wait(self, container_id: str) -> int:
        return self.wait_pod(container_id)[0]

    def signal(self, name: str, sig: str) -> bool:
        """TERM: delete with the pod's grace (the supervisor passes SIGTERM on); KILL: at
        once. Others (INT: Container.interrupt) go to the pod's supervisor on its signal
        port (kube_channels.send_signal; no pods/exec), which signals the kernel's process
        group. Raises LaunchError when the supervisor does not take it; False for a pod
        this backend did not start."""
        if sig in ("TERM", "KILL"):
            return self._delete(name, 0 if sig == "KILL" else kube_manifests.TERMINATION_GRACE)
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            log.warning("kernel pod %s: SIG%s not sent (not a pod started here)", name, sig)
            return False
        kube_channels.send_signal(endpoint.connection, sig)
        return True

    def kill_now(self, name: str) -> None:
        with contextlib.suppress(DockerKernelError):
            self._delete(name, 0)

    def remove(self, name: str) -> bool:
        """Delete the pod (its Secret goes with it, by ownerReference); True if it was there."""
        self.endpoints.pop(name, None)
        return self._delete(name, 0)

    def _delete(self, name: str, grace: int) -> bool:
        api = self.api
        done = api.call(
            "delete",
            "pods",
            api.core.delete_namespaced_pod,
            kube_manifests.dns_label(name),
            api.namespace,
            missing_ok=True,
            grace_period_seconds=grace,
        )
        return done is not None

    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Refill:
        raise LaunchError("Warm pods are not built", "No pod was started", "Drop --pool.")

    def watchdog(self, name: str, cidfile: Path, base: Path) -> int:
        """No local watchdog: a pod outlives nothing of ours by more than its
        activeDeadlineSeconds, and goes with the server's pod (ownerReference) or by gc.
        An fd nobody watches, as the argv launcher expects one to hold."""
        return os.open(os.devnull, os.O_RDONLY)

    def executable(self) -> str:
        return "kubectl"

    def env(self) -> dict[str, str] | None:
        return None

    def sockets(self) -> list[str]:
        return []
