"""An in-memory Kubernetes API server for the Kubernetes backend's tests (no real cluster).

SIMULATED: no control plane can be installed on our machines, so the API conversation is
tested against kmock's KubernetesEmulator (a real aiohttp HTTP server on 127.0.0.1 that
stores objects in memory and streams watches; by the author of Kopf). The official
`kubernetes` client talks to it over HTTP exactly as to a cluster: URLs, JSON bodies,
watch streams, Status errors. What kmock does not do, `FakeCluster` adds here, each the
way a real API server and kubelet do it, and no more:

- metadata.uid, creationTimestamp, resourceVersion on create;
- labelSelector and fieldSelector (equality only) on list and watch;
- RBAC: `forbid(verb, resource)` answers 403 with the API server's own wording;
- a kubelet (`kubelet` mode per test): "run" (Pending, then Running with a podIP),
  "stuck" (Pending, Unschedulable, with an event), "fail" (the container exits 1 before
  Running), "exit" (Running, then exits with `exit_code` after `exit_after` seconds:
  OOMKilled when not 0, or the pod's `pod_reason` such as DeadlineExceeded),
  "docker" (the pod RUNS: `docker` is a tests/pods.DockerKubelet, which starts the pod's
  container with its Secret's files; Running with the container's IP as podIP, its exit
  is the pod's Succeeded/Failed with the exit code (reason OOMKilled when the engine
  says so), the pod's deletion `docker rm`, its log `docker logs`, followed when asked);
- `stop()`: the API server goes away (connections cut, port closed).

Nothing here checks admission (PodSecurity), quotas, scheduling or real networking: the
pod manifests are checked by schema instead (tests/test_kube_manifests.py), and the
kernel side runs for real under Docker (h6's tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import rendering

POD_IP = "10.42.0.17"
#: The fields a real kubelet always reports for a container (the client requires them).
CONTAINER_STATUS = {
    "name": "kernel",
    "image": "jupyter-docker-kernel/default:latest",
    "imageID": "sha256:" + "0" * 64,
    "ready": False,
    "restartCount": 0,
}


def _matches(obj: dict[str, Any], params: dict[str, str]) -> bool:
    """labelSelector / fieldSelector, equality terms only (what our code sends)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (params.get("labelSelector") or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    for term in filter(None, (params.get("fieldSelector") or "").split(",")):
        path, _, value = term.partition("=")
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != value:
            return False
    return True


class FakeCluster(kmock.KubernetesEmulator):
    """kmock's emulator plus uids, selectors, RBAC refusals and a simple kubelet."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.forbidden: set[tuple[str, str]] = set()
        self.kubelet = "run"
        self.exit_code = 0
        self.exit_after = 0.3
        #: The "exit" kubelet's pod-level reason when set ("DeadlineExceeded": the pod's
        #: activeDeadlineSeconds passed; a kubelet then kills the container, code 137).
        self.pod_reason = ""
        #: The "docker" kubelet's runner (tests/pods.DockerKubelet).
        self.docker: Any = None
        self.tasks: set[asyncio.Task[None]] = set()
        #: (verb, resource, name) of every request, in order: what the client asked.
        self.calls: list[tuple[str, str, str]] = []
        for resource in (
            "v1/pods",
            "v1/secrets",
            "v1/events",
            "networking.k8s.io/v1/networkpolicies",
            "node.k8s.io/v1/runtimeclasses",
        ):
            self.resources[resource] = kmock.ResourceInfo()

    async def _follow_log(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """pods/log?follow=true with the Docker kubelet: the container's output (stdout
        and stderr, as a kubelet's log has both) streamed as it comes, until it exits or
        the client goes (`docker logs --follow`)."""
        assert self.docker is not None
        container = self.docker.containers.get(request.name or "", request.name or "")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        raw = request._raw_request
        assert raw is not None  # kmock keeps the aiohttp request of a served one
        await response.prepare(raw)
        proc = await asyncio.create_subprocess_exec(
            "docker", "logs", "--follow", container,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            while chunk := await proc.stdout.read(4096):
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client stopped following
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        verb = self.verb(request)
        resource = self.resource_name(request)
        name = request.name or ((request.data or {}).get("metadata") or {}).get("name", "")
        if isinstance(request.data, dict) or request.name:
            self.calls.append((verb, resource, str(name or "")))
        else:
            self.calls.append((verb, resource, ""))
        if resource == "selfsubjectaccessreviews":
            asked = request.data["spec"]["resourceAttributes"]
            what = asked["resource"] + (
                f"/{asked['subresource']}" if asked.get("subresource") else ""
            )
            allowed = (asked["verb"], what) not in self.forbidden
            return aiohttp.web.json_response({**request.data, "status": {"allowed": allowed}})
        if (verb, resource) in self.forbidden:
            return await self._render_error(
                kmock.KubernetesError(
                    status=403,
                    reason="Forbidden",
                    message=(
                        f'{resource} is forbidden: User "system:serviceaccount:jhub:hub" '
                        f'cannot {verb} resource "{resource}" in API group "" in the '
                        f'namespace "{request.namespace}"'
                    ),
                )
            )
        if resource == "pods/log" and self.docker is not None and request.name:
            if str(request.params.get("follow", "")).lower() == "true":
                return await self._follow_log(request)
            # The container's log so far (not followed: `follow` was not asked for).
            text = await asyncio.to_thread(self.docker.logs, request.name)
            return aiohttp.web.Response(body=text.encode(), content_type="text/plain")
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("resourceVersion", "1")
            if resource == "pods":
                request.data.setdefault("status", {"phase": "Pending"})
        response = await super()._handle(request)
        if request.action == kmock.action.DELETE and resource == "pods" and request.name:
            if self.docker is not None:
                await asyncio.to_thread(self.docker.remove, request.name)
            await self.collect_garbage()
        if request.action == kmock.action.CREATE and resource == "pods":
            name = request.data["metadata"]["name"]
            self._spawn(self.run_kubelet(request.namespace or "", name))
        return response

    @staticmethod
    def verb(request: rendering.Request) -> str:
        action = request.action
        if action == kmock.action.UPDATE:
            return "patch" if str(request.method).upper().endswith("PATCH") else "update"
        names = {
            kmock.action.CREATE: "create",
            kmock.action.LIST: "list",
            kmock.action.WATCH: "watch",
            kmock.action.FETCH: "get",
            kmock.action.DELETE: "delete",
        }
        return names.get(action, str(action).lower()) if action is not None else ""

    @staticmethod
    def resource_name(request: rendering.Request) -> str:
        plural = request.resource.plural if request.resource is not None else ""
        return f"{plural}/{request.subresource}" if request.subresource else str(plural or "")

    async def _serve_list(self, request: rendering.Request) -> Any:
        found: dict[str, Any] = dict(await super()._serve_list(request))  # type: ignore[arg-type]
        params = dict(request.params)
        found["items"] = [o for o in found["items"] if _matches(o, params)]
        return found

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        params = dict(request.params)
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not _matches(event.get("object") or {}, params):
                continue
            yield event

    async def collect_garbage(self) -> None:
        """What the garbage collector does: objects whose owner (by uid) is gone go too."""
        async with self._lock:
            live = {
                (obj.get("metadata") or {}).get("uid")
                for obj in self.objects.values()
                if not obj.deleted
            }
            for key, obj in list(self.objects.items()):
                owners = (obj.get("metadata") or {}).get("ownerReferences") or []
                if not obj.deleted and owners and not any(o.get("uid") in live for o in owners):
                    obj.delete()
                    await self._buses[key[0]].put({"type": "DELETED", "object": obj.last.raw})

    # -- the kubelet ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def key(self, plural: str, namespace: str, name: str) -> Any:
        for key in list(self.objects):
            resource, ns, obj_name = key
            if resource.plural == plural and ns == namespace and obj_name == name:
                return key
        return None

    async def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """What the kubelet does: the pod's status changes, watchers see MODIFIED."""
        async with self._lock:
            key = self.key("pods", namespace, name)
            if key is None or self.objects[key].deleted:
                return
            self.objects[key].patch({"status": status})
            await self._buses[key[0]].put({"type": "MODIFIED", "object": self.objects[key].raw})

    async def add_event(self, namespace: str, name: str, reason: str, message: str) -> None:
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
            "involvedObject": {"kind": "Pod", "name": name, "namespace": namespace},
            "reason": reason,
            "message": message,
            "type": "Warning",
        }
        self.objects[kmock.resource("v1/events"), namespace, event["metadata"]["name"]] = event

    def live(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = self.key(plural, namespace, name)
        return None if key is None or self.objects[key].deleted else dict(self.objects[key].raw)

    async def run_in_docker(self, namespace: str, name: str) -> None:
        """The "docker" kubelet: the pod's container runs, its end is the pod's."""
        from tests import pods

        pod = self.live("pods", namespace, name)
        if pod is None:
            return
        secrets = {}
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                secrets[secret_name] = pods.decoded(
                    self.live("secrets", namespace, secret_name) or {}
                )
        try:
            ip = await asyncio.to_thread(self.docker.run, pod, secrets)
        except Exception as exc:  # what the kubelet reports when a container cannot start
            await self.set_status(namespace, name, {"phase": "Failed", "message": str(exc)})
            return
        running = {**CONTAINER_STATUS, "state": {"running": {"startedAt": _now()}}}
        await self.set_status(
            namespace, name, {"phase": "Running", "podIP": ip, "containerStatuses": [running]}
        )
        code = await asyncio.to_thread(self.docker.wait, name)
        reason = "Completed" if code == 0 else "Error"
        if code and await asyncio.to_thread(self.docker.oom_killed, name):
            reason = "OOMKilled"  # as a kubelet reports a container the kernel OOM-killed
        ended = {"exitCode": code, "reason": reason}
        await self.set_status(
            namespace,
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{**CONTAINER_STATUS, "state": {"terminated": ended}}],
            },
        )

    async def run_kubelet(self, namespace: str, name: str) -> None:
        await asyncio.sleep(0.05)
        mode = self.kubelet
        if mode == "docker":
            await self.run_in_docker(namespace, name)
            return
        if mode == "stuck":
            await self.add_event(
                namespace,
                name,
                "FailedScheduling",
                "0/3 nodes are available: 3 Insufficient memory.",
            )
            await self.set_status(
                namespace,
                name,
                {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient memory.",
                        }
                    ],
                },
            )
            return
        if mode == "fail":
            await self.set_status(
                namespace,
                name,
                {
                    "phase": "Failed",
                    "containerStatuses": [
                        {
                            **CONTAINER_STATUS,
                            "state": {
                                "terminated": {
                                    "exitCode": 1,
                                    "reason": "Error",
                                    "message": "python3: can't open file supervise.py",
                                }
                            },
                        }
                    ],
                },
            )
            return
        await self.set_status(namespace, name, {"phase": "Running", "podIP": POD_IP})
        if mode == "exit":
            await asyncio.sleep(self.exit_after)
            ended = "Error" if self.pod_reason else "OOMKilled"  # the container's reason
            ended = "Completed" if self.exit_code == 0 else ended
            await self.set_status(
                namespace,
                name,
                {
                    "phase": "Succeeded" if self.exit_code == 0 else "Failed",
                    **({"reason": self.pod_reason} if self.pod_reason else {}),
                    "containerStatuses": [
                        {
                            **CONTAINER_STATUS,
                            "state": {
                                "terminated": {
                                    "exitCode": self.exit_code,
                                    "reason": ended,
                                }
                            },
                        }
                    ],
                },
            )


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer:
    """FakeCluster served on 127.0.0.1 from a thread of its own (our backend is
    synchronous, kmock is asyncio): `url`, `cluster`, `run(coro)`, `stop()`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.cluster: FakeCluster | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        if not self._ready.wait(10):
            raise RuntimeError("kmock's server did not start")

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with FakeCluster() as cluster, kmock.Server(cluster) as server:
            self.cluster = cluster
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
            for task in list(cluster.tasks):
                task.cancel()

    def run(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the server's loop (to change the cluster's state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def objects(self, plural: str) -> list[dict[str, Any]]:
        """The live objects of one resource (what `kubectl get` would list)."""
        assert self.cluster is not None

        async def read() -> list[dict[str, Any]]:
            assert self.cluster is not None
            return [
                dict(obj.raw)
                for (resource, _, _), obj in list(self.cluster.objects.items())
                if resource.plural == plural and not obj.deleted
            ]

        return list(self.run(read()))

    def stop(self) -> None:
        """The API server goes away: open watches are cut, new connections refused."""
        if self._stop is not None and not self._main.done():
            self.loop.call_soon_threadsafe(self._stop.set)
            with contextlib.suppress(Exception):
                self._main.result(10)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
