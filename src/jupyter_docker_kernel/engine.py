"""The only module that talks to the container engine: the docker CLI, its errors mapped to ours.

Everything else hands this module argument lists (built by hardening.py) and gets back
parsed JSON or an EngineError/ImageError whose message says what to do. We drive the CLI
rather than the HTTP API so that `--docker-arg` values pass verbatim, so that `show`
prints a command users can paste, and so that a Docker-compatible CLI (podman) can stand in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from jupyter_docker_kernel.errors import EngineError, ImageError

log = logging.getLogger(__name__)

#: Label keys on every container we start; gc and the tests find our containers by them.
LABEL_PREFIX = "io.github.jupyter-docker-kernel"
LABEL_KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
LABEL_LAUNCHER_PID = f"{LABEL_PREFIX}.launcher-pid"
LABEL_LAUNCHER_START = f"{LABEL_PREFIX}.launcher-start"
LABEL_LAUNCHER_HOST = f"{LABEL_PREFIX}.launcher-host"
LABEL_OWNER_UID = f"{LABEL_PREFIX}.owner-uid"
#: On warm-pool containers: the pool (settings + user) they serve, and their host dir.
LABEL_POOL = f"{LABEL_PREFIX}.pool"
LABEL_POOL_DIR = f"{LABEL_PREFIX}.pool-dir"
#: Label an image built by `image build`, holding the hash of the recipe that made it.
LABEL_RECIPE = f"{LABEL_PREFIX}.recipe"

_UNREACHABLE_MARKERS = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
    "connection refused",
    "no such file or directory",
)


def short_id(container_id: str) -> str:
    """The 12-character form people see in `docker ps`."""
    return container_id[:12]


class Engine:
    """A container engine reached through its Docker-compatible CLI.

    Created by cli.py, launcher.py and the tests; cheap to create (nothing runs until a
    method is called).
    """

    def __init__(self, command: str | None = None, host: str | None = None) -> None:
        self.command = command or os.environ.get("JUPYTER_DOCKER_KERNEL_ENGINE", "docker")
        #: DOCKER_HOST for this engine's CLI calls; None: whatever the environment says.
        self.host = host

    def address(self) -> str:
        """The DOCKER_HOST this engine's calls use ("" for the CLI's default socket)."""
        return self.host or os.environ.get("DOCKER_HOST", "")

    def api(self) -> EngineApi:
        """This engine's HTTP API (available() only when its address is a unix socket)."""
        address = self.address() or "unix:///var/run/docker.sock"
        return EngineApi(address.removeprefix("unix://") if address.startswith("unix://") else "")

    def env(self) -> dict[str, str] | None:
        """The environment for a CLI call: ours, with DOCKER_HOST set when a host was given."""
        if self.host is None:
            return None
        return {**os.environ, "DOCKER_HOST": self.host}

    # -- plumbing ---------------------------------------------------------------------------

    def executable(self) -> str:
        """The engine CLI's full path, or an EngineError that says how to get one."""
        path = shutil.which(self.command)
        if path is None:
            raise EngineError(
                f"The container engine command '{self.command}' was not found on PATH. "
                "Nothing was started. Install Docker (on Debian as root: "
                "scripts/bootstrap-engine) or set JUPYTER_DOCKER_KERNEL_ENGINE to its CLI."
            )
        return path

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 60,
        check: bool = True,
        input_text: str | None = None,
        own_session: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run one CLI command and return it; on failure raise our error, not the CLI's.

        own_session: the CLI does not get our process group's signals. A launcher's group
        receives the client's SIGINT (interrupt); an engine call must not die of it halfway.
        """
        argv = [self.executable(), *args]
        log.debug("engine: %s", " ".join(args[:3]))
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input_text,
                check=False,
                start_new_session=own_session,
                env=self.env(),
            )
        except subprocess.TimeoutExpired as exc:
            raise EngineError(
                f"'{self.command} {args[0]}' did not answer within {timeout:.0f} s. "
                f"The engine may be overloaded or hung; check it with '{self.command} info'."
            ) from exc
        if check and proc.returncode != 0:
            raise self.translate(args, proc.stderr)
        return proc

    def translate(self, args: Sequence[str], stderr: str) -> EngineError:
        """Turn a CLI failure into an error that says what to do next."""
        text = stderr.strip()
        low = text.lower()
        if "permission denied" in low and "docker" in low and "sock" in low:
            return EngineError(
                f"Permission denied talking to the container engine ({first_line(text)}). "
                "Nothing was done. Add your user to the 'docker' group (then log in again) "
                "or use a rootless engine via DOCKER_HOST."
            )
        if any(marker in low for marker in _UNREACHABLE_MARKERS) and "daemon" in low:
            host = self.host or os.environ.get("DOCKER_HOST", "the default socket")
            return EngineError(
                f"Cannot reach the container engine at {host}: {first_line(text)} "
                f"Nothing was done. Is it running? Try '{self.command} info', or start one "
                "with scripts/bootstrap-engine."
            )
        return EngineError(
            f"'{self.command} {' '.join(args[:2])}' failed: {first_line(text) or 'no message'}"
        )

    # -- queries ----------------------------------------------------------------------------

    def info(self, timeout: float = 20) -> dict[str, Any]:
        """`docker info` as JSON; raises EngineError when the engine does not answer."""
        proc = self.run(["info", "--format", "{{json .}}"], timeout=timeout)
        data = json.loads(proc.stdout or "{}")
        if not isinstance(data, dict):
            raise EngineError(f"'{self.command} info' printed something that is not JSON.")
        if data.get("ServerErrors"):
            raise self.translate(["info"], "daemon: " + "; ".join(data["ServerErrors"]))
        return data

    def kind(self) -> str:
        """ "podman" when the API is Podman's Docker-compatible one, else "docker"."""
        proc = self.run(["version", "--format", "{{json .Server.Components}}"], timeout=20)
        return "podman" if "podman engine" in proc.stdout.lower() else "docker"

    def default_nproc(self, image: str, python: str) -> int | None:
        """The process limit a container of `image` gets when run with no --ulimit.

        Podman replaces its nofile/nproc defaults (containers.conf) by 1048576 as soon as
        any --ulimit is given, which a service without CAP_SYS_RESOURCE cannot grant; setup
        pins nproc to this value instead. None when the probe fails.
        """
        code = "import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[1])"
        args = ["run", "--rm", "--pull=never", "--network", "none", image, python, "-c", code]
        proc = self.run(args, check=False, timeout=120)
        text = proc.stdout.strip()
        return int(text) if proc.returncode == 0 and text.isdigit() else None

    def podman_host(self) -> dict[str, Any]:
        """Podman's own `info` host section (rootless? cgroup version?), which its Docker
        compatible `info` leaves out; {} when the API is not reachable over a unix socket."""
        host = self.host or os.environ.get("DOCKER_HOST", "")
        if not host.startswith("unix://"):
            return {}
        api = EngineApi(host.removeprefix("unix://"))
        if not api.available():
            return {}
        status, data = api.request("GET", "/v4.0.0/libpod/info")
        found = data.get("host") if status == 200 and isinstance(data, dict) else None
        return found if isinstance(found, dict) else {}

    def runtimes(self) -> set[str]:
        """Names of the OCI runtimes the engine knows (runc, runsc, ...)."""
        return set((self.info().get("Runtimes") or {}).keys())

    def image_inspect(self, ref: str) -> dict[str, Any] | None:
        """The image's inspect data, or None when the engine does not have it."""
        proc = self.run(["image", "inspect", ref], check=False)
        if proc.returncode != 0:
            if "no such" in proc.stderr.lower():
                return None
            raise self.translate(["image", "inspect"], proc.stderr)
        items = json.loads(proc.stdout)
        return items[0] if items else None

    def require_image(self, ref: str) -> dict[str, Any]:
        """The image's inspect data, or an ImageError that says how to build or pull it."""
        data = self.image_inspect(ref)
        if data is None:
            raise ImageError(
                f"Image '{ref}' is not present in the container engine, and kernels never "
                "pull (a missing image is an error, not a registry lookup). "
                f"Build the default image with 'jupyter-docker-kernel image build', or run "
                f"'{self.command} pull {ref}' where a registry is reachable."
            )
        return data

    def container_inspect(self, name: str) -> dict[str, Any] | None:
        """The container's inspect data, or None when it does not exist (any more)."""
        proc = self.run(["container", "inspect", name], check=False, timeout=30)
        if proc.returncode != 0:
            if "no such" in proc.stderr.lower():
                return None
            raise self.translate(["container", "inspect"], proc.stderr)
        items = json.loads(proc.stdout)
        return items[0] if items else None

    def list_containers(self, labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """Containers (running or not) carrying all `labels` (value None: any value)."""
        args = ["ps", "-a", "--no-trunc", "--format", "{{json .}}"]
        for key, value in labels.items():
            args += ["--filter", f"label={key}" if value is None else f"label={key}={value}"]
        proc = self.run(args, timeout=30)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    # -- actions ----------------------------------------------------------------------------

    def kill(self, name: str, signal: str = "KILL") -> bool:
        """Send a signal to the container's init; False when the container is already gone."""
        proc = self.run(["kill", "--signal", signal, name], check=False, timeout=30)
        if proc.returncode == 0:
            return True
        low = proc.stderr.lower()
        if "no such container" in low or "is not running" in low:
            return False
        raise self.translate(["kill"], proc.stderr)

    def remove(self, name: str) -> bool:
        """Force-remove a container; idempotent: a container already gone is not an error."""
        proc = self.run(["rm", "--force", "--volumes", name], check=False, timeout=60)
        if proc.returncode == 0:
            return True
        low = proc.stderr.lower()
        if "no such container" in low or "is already in progress" in low:
            return False
        raise self.translate(["rm"], proc.stderr)


def use_host(host: str | None) -> None:
    """Point this process and every engine CLI it starts at `host` (a kernelspec's
    engine_host). The launcher calls it once, first: its watchdog, warm pool and API calls
    all read DOCKER_HOST. None keeps the environment's DOCKER_HOST (or Docker's default)."""
    if host:
        os.environ["DOCKER_HOST"] = host


def podman_socket() -> str:
    """The DOCKER_HOST address of a running Podman API service, for `setup --podman`.

    Root uses the system service's socket, anyone else their own (rootless) one; the
    socket must exist, since a kernelspec pointing at nothing would fail at every start.
    """
    if os.getuid() == 0:
        path = "/run/podman/podman.sock"
        start = "podman system service --time=0 unix:///run/podman/podman.sock &"
    else:
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
        path = f"{runtime}/podman/podman.sock"
        start = "systemctl --user start podman.socket (or: podman system service --time=0 &)"
    if not os.path.exists(path):
        raise EngineError(
            f"No Podman API socket at {path}. Nothing was done. Start the service "
            f"with `{start}` (scripts/bootstrap-podman does it as root), or pass "
            "--engine-host with its address."
        )
    return f"unix://{path}"


def first_line(text: str) -> str:
    """The first non-empty line of an engine message, for one-line errors."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


class EngineApi:
    """The engine's HTTP API on its unix socket, for the few calls on a kernel's start path.

    A CLI call costs tens of milliseconds of process start; the pool's claim (list, rename)
    must cost a few. Only unix-socket endpoints are supported: available() says whether
    DOCKER_HOST points at one, and callers fall back to the CLI otherwise.
    """

    def __init__(self, socket_path: str | None = None) -> None:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        self.socket_path = (
            socket_path
            if socket_path is not None
            else (host.removeprefix("unix://") if host.startswith("unix://") else "")
        )

    def available(self) -> bool:
        return bool(self.socket_path) and os.path.exists(self.socket_path)

    def request(self, method: str, path: str, timeout: float | None = 10) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON body or None)."""
        import http.client
        import socket as socket_mod

        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        sock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
            conn.sock = sock
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
        except OSError as exc:
            raise EngineError(
                f"Cannot reach the container engine at {self.socket_path}: {exc}. "
                "Is it running? Try 'docker info'."
            ) from exc
        finally:
            conn.close()
        data = json.loads(body) if body and body[:1] in (b"{", b"[") else None
        return response.status, data

    def containers(
        self, labels: Mapping[str, str], *, running: bool = True
    ) -> list[dict[str, Any]]:
        """Containers carrying all the labels (GET /containers/json with filters)."""
        from urllib.parse import quote

        filters: dict[str, list[str]] = {"label": [f"{k}={v}" for k, v in labels.items()]}
        if running:
            filters["status"] = ["running"]
        status, data = self.request("GET", f"/containers/json?filters={quote(json.dumps(filters))}")
        if status != 200 or not isinstance(data, list):
            raise EngineError(f"The engine refused to list containers (HTTP {status}).")
        return data

    def rename(self, container: str, name: str) -> bool:
        """Rename a container; False when it is gone or the name is taken (someone won)."""
        from urllib.parse import quote

        status, _ = self.request(
            "POST", f"/containers/{quote(container)}/rename?name={quote(name)}"
        )
        return status == 204

    def kill(self, container: str) -> bool:
        """SIGKILL the container now (POST /containers/ID/kill): a few milliseconds, where
        the CLI's `rm --force` costs a process start first. False if it is not running."""
        from urllib.parse import quote

        status, _ = self.request("POST", f"/containers/{quote(container)}/kill?signal=KILL")
        return status == 204

    def wait(self, container: str) -> int:
        """Block until the container exits; returns its exit code (POST /containers/ID/wait)."""
        from urllib.parse import quote

        status, data = self.request("POST", f"/containers/{quote(container)}/wait", timeout=None)
        if status != 200 or not isinstance(data, dict):
            raise EngineError(
                f"The engine could not wait for container {container} (HTTP {status})."
            )
        return int(data.get("StatusCode", 1))
