"""The only module that talks to the container engine: the docker CLI, its errors mapped to ours.

Everything else hands this module argument lists (built by hardening.py) and gets back
parsed JSON or an EngineError/ImageError whose message says what to do. We drive the CLI
rather than the HTTP API so that `--docker-arg` values pass verbatim, so that `show`
prints a command users can paste, and so that a Docker-compatible CLI (podman) can stand in.
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from jupyter_docker_kernel.errors import DockerKernelError, EngineError, ImageError
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

_E = TypeVar("_E", bound=DockerKernelError)

log = logging.getLogger(__name__)

#: Label keys on every container we start; gc and the tests find our containers by them.
LABEL_PREFIX = "io.github.jupyter-docker-kernel"
LABEL_KERNEL_ID = f"{LABEL_PREFIX}.kernel-id"
LABEL_LAUNCHER_PID = f"{LABEL_PREFIX}.launcher-pid"
LABEL_LAUNCHER_START = f"{LABEL_PREFIX}.launcher-start"
LABEL_LAUNCHER_HOST = f"{LABEL_PREFIX}.launcher-host"
LABEL_OWNER_UID = f"{LABEL_PREFIX}.owner-uid"
#: For `ps`: the kernelspec's name, the client's host pid (the Jupyter server, or whoever
#: ran the launcher) and the notebook's directory on the host.
LABEL_KERNELSPEC = f"{LABEL_PREFIX}.kernelspec"
LABEL_CLIENT_PID = f"{LABEL_PREFIX}.client-pid"
LABEL_WORKDIR = f"{LABEL_PREFIX}.workdir"
#: On warm-pool containers: the pool (settings + user) they serve, and their host dir.
LABEL_POOL = f"{LABEL_PREFIX}.pool"
LABEL_POOL_DIR = f"{LABEL_PREFIX}.pool-dir"
#: Label an image built by `image build`, holding the hash of the recipe that made it.
LABEL_RECIPE = f"{LABEL_PREFIX}.recipe"

#: The OCI runtime itself failed (not the kernel's process it was to start).
_RUNTIME_FAILED_MARKERS = (
    "unable to retrieve oci runtime error",
    "did not terminate successfully",
    "cannot create sandbox",
)
_UNREACHABLE_MARKERS = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
    "connection refused",
    "no such file or directory",
)


#: How OpenSSH's own failures begin (not the remote command's): a node's engine (ssh://).
SSH_MARKERS = ("ssh:", "host key verification failed", "no ed25519 host key", "@@@")


def short_id(container_id: str) -> str:
    """The 12-character form people see in `docker ps`."""
    return container_id[:12]


#: Engine.cgroup_version's answers, by (CLI, address).
_CGROUP_VERSIONS: dict[tuple[str, str], str] = {}


class Engine:
    """A container engine reached through its Docker-compatible CLI.

    Created by cli.py, launcher.py and the tests; cheap to create (nothing runs until a
    method is called).
    """

    def __init__(
        self,
        command: str | None = None,
        host: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        #: The environment of this engine's CLI calls; None: this process's. The resident
        #: helper passes each kernel's client's (its PATH, HOME, DOCKER_*).
        self.environ = environ
        env = os.environ if environ is None else environ
        self.command = command or env.get("JUPYTER_DOCKER_KERNEL_ENGINE", "docker")
        #: DOCKER_HOST for this engine's CLI calls; None: whatever the environment says.
        self.host = host

    def address(self) -> str:
        """The DOCKER_HOST this engine's calls use ("" for the CLI's default socket)."""
        env = os.environ if self.environ is None else self.environ
        return self.host or env.get("DOCKER_HOST", "")

    def api(self) -> EngineApi:
        """This engine's HTTP API (available() only when its address is a unix socket)."""
        address = self.address() or "unix:///var/run/docker.sock"
        return EngineApi(address.removeprefix("unix://") if address.startswith("unix://") else "")

    def env(self) -> dict[str, str] | None:
        """The environment for a CLI call: ours, with DOCKER_HOST set when a host was given."""
        if self.environ is not None:
            return {**self.environ, **({"DOCKER_HOST": self.host} if self.host else {})}
        if self.host is None:
            return None
        return {**os.environ, "DOCKER_HOST": self.host}

    # -- plumbing ---------------------------------------------------------------------------

    def executable(self) -> str:
        """The engine CLI's full path, or an EngineError that says how to get one."""
        search = None if self.environ is None else self.environ.get("PATH", os.defpath)
        path = shutil.which(self.command, path=search)
        if path is None:
            raise EngineError(
                f"The container engine command '{self.command}' was not found on PATH",
                "Nothing was started",
                "Install Docker (on Debian as root: scripts/bootstrap-engine) or set "
                "JUPYTER_DOCKER_KERNEL_ENGINE to its CLI.",
            )
        return path

    def command_line(self, args: Sequence[str]) -> list[str]:
        """The argv of one CLI command. A remote node's engine (ssh://) is its own CLI run
        through our multiplexed OpenSSH connection (ssh.py): the user's keys and
        known_hosts, one handshake for every call, instead of the docker CLI's own ssh."""
        if self.address().startswith("ssh://"):
            from jupyter_docker_kernel.ssh import Connection  # only for nodes

            connection = Connection.to(self.address(), self.environ)
            connection.ensure()
            return connection.argv([self.command, *args])
        return [self.executable(), *args]

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
        argv = self.command_line(args)
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

    def stream(
        self, args: Sequence[str], *, on_line: Callable[[str], None], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run one CLI command, passing each output line (stdout and stderr merged) to
        on_line as it comes; returns it with the whole output as stdout.

        image.py's `docker build` uses it, so a build of a minute shows its steps. Runs in
        our session, as run(own_session=False): Ctrl-C stops the build too. Raises
        EngineError after `timeout` seconds (the command is killed).
        """
        argv = self.command_line(args)
        log.debug("engine (streamed): %s", " ".join(args[:3]))
        lines: list[str] = []
        expired = threading.Event()
        with subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(),
        ) as proc:

            def expire() -> None:
                expired.set()
                proc.kill()

            timer = threading.Timer(timeout, expire)
            timer.start()
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.append(line)
                    on_line(line.rstrip("\n"))
                code = proc.wait()
            finally:
                timer.cancel()
        if expired.is_set():
            raise EngineError(
                f"'{self.command} {args[0]}' did not finish within {timeout:.0f} s and was "
                f"stopped. Check the engine with '{self.command} info', then try again."
            )
        return subprocess.CompletedProcess(argv, code, "".join(lines), "")

    def translate(self, args: Sequence[str], stderr: str) -> EngineError:
        """Turn a CLI failure into an error that says what to do next."""
        text = stderr.strip()
        low = text.lower()
        if self.address().startswith("ssh://") and low.startswith(SSH_MARKERS):
            from jupyter_docker_kernel.ssh import Node, ssh_failure

            return ssh_failure(Node.parse(self.address()), text, 255)
        if "permission denied" in low and "docker" in low and "sock" in low:
            return EngineError(
                f"Permission denied talking to the container engine ({first_line(text)})",
                "Nothing was done",
                "Add your user to the 'docker' group (then log in again) "
                "or use a rootless engine via DOCKER_HOST",
            )
        if any(marker in low for marker in _UNREACHABLE_MARKERS) and "daemon" in low:
            host = self.host or os.environ.get("DOCKER_HOST", "the default socket")
            return EngineError(
                f"Cannot reach the container engine at {host}: {first_line(text)}",
                "Nothing was done",
                f"Is it running? Try '{self.command} info', or start one "
                "with scripts/bootstrap-engine",
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

    def cgroup_version(self) -> str:
        """The engine's cgroup version ("1", "2"), or "" when it does not say or cannot be
        asked. Cached per engine address for the process's life (it does not change)."""
        key = (self.command, self.address())
        if key not in _CGROUP_VERSIONS:
            try:
                _CGROUP_VERSIONS[key] = str(self.info().get("CgroupVersion") or "")
            except DockerKernelError:
                return ""
        return _CGROUP_VERSIONS[key]

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
        args = ["run", "--rm", "--pull=never", "--network", "none", "--entrypoint=", image]
        args += [python, "-c", code]
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
                "pull (a missing image is an error, not a registry lookup)",
                fix="Build the default image with 'jupyter-docker-kernel image build', or run "
                f"'{self.command} pull {ref}' where a registry is reachable",
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

    def inspect_containers(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """Inspect data of these containers in one call; ones gone meanwhile are left out."""
        if not names:
            return []
        proc = self.run(["container", "inspect", *names], check=False, timeout=30)
        if proc.returncode != 0 and "no such" not in proc.stderr.lower():
            raise self.translate(["container", "inspect"], proc.stderr)
        items = json.loads(proc.stdout or "[]")
        return [item for item in items if isinstance(item, dict)]

    def stats(self, ids: Sequence[str]) -> dict[str, dict[str, int | None]]:
        """Memory used, memory limit and pids of these containers, by the id given.

        One sample each, taken in parallel (about a second in all, however many), through
        the engine's API where it is a unix socket, else its CLI. Not one `docker stats`
        call for all: that fails as a whole ("EOF") when any of them exits while it
        samples, as kernels do. A container gone meanwhile is left out.
        """
        from concurrent.futures import ThreadPoolExecutor

        api = self.api()
        one = self._api_stats if api.available() else self._cli_stats
        with ThreadPoolExecutor(max_workers=min(8, len(ids) or 1)) as pool:
            found = dict(zip(ids, pool.map(one, ids), strict=True))
        return {cid: sample for cid, sample in found.items() if sample is not None}

    def _api_stats(self, container: str) -> dict[str, int | None] | None:
        from urllib.parse import quote

        status, data = self.api().request(
            "GET", f"/containers/{quote(container)}/stats?stream=false&one-shot=true", timeout=30
        )
        if status != 200 or not isinstance(data, dict):
            return None
        memory = data.get("memory_stats") or {}
        usage = memory.get("usage")
        inner = memory.get("stats") or {}
        # As `docker stats` shows it: the page cache the kernel can drop is not counted.
        cache = inner.get("inactive_file", inner.get("total_inactive_file", 0))
        pids = (data.get("pids_stats") or {}).get("current")
        return {
            "memory_used": int(usage) - int(cache or 0) if usage is not None else None,
            "memory_limit": int(memory["limit"]) if memory.get("limit") else None,
            "pids": int(pids) if pids is not None else None,
        }

    def _cli_stats(self, container: str) -> dict[str, int | None] | None:
        args = ["stats", "--no-stream", "--no-trunc", "--format", "{{json .}}", container]
        proc = self.run(args, check=False, timeout=60)
        try:
            item = json.loads(proc.stdout.splitlines()[0])
        except (IndexError, ValueError):
            return None
        used, _, limit = str(item.get("MemUsage", "")).partition("/")
        pids = str(item.get("PIDs", "")).strip()
        return {
            "memory_used": cli_size(used),
            "memory_limit": cli_size(limit),
            "pids": int(pids) if pids.isdigit() else None,
        }

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


def cli_size(text: str) -> int | None:
    """'42.5MiB' (as `docker stats` prints sizes) -> bytes; None when it is not a size."""
    found = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b\s*", text, re.IGNORECASE)
    if not found:
        return None
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    return int(float(found.group(1)) * units[found.group(2).lower()])


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
            f"No Podman API socket at {path}",
            "Nothing was done",
            f"Start the service with `{start}` (scripts/bootstrap-podman does it as root), "
            "or pass --engine-host with its address",
        )
    return f"unix://{path}"


#: Docker's smallest --memory (Podman's is similar); below it a start fails at once.
MIN_MEMORY = 6 << 20
#: Environment variables that change how the image's Python starts (or which one runs).
_PYTHON_ENV = ("PATH", "PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "LD_LIBRARY_PATH")


class RunFailure(NamedTuple):
    """Why a kernel's `docker run` failed: what happened and what to do. It unpacks as
    (what, fix); the caller knows what was not done, so `error()` adds that."""

    what: str
    fix: str

    def error(self, not_done: str, kind: type[_E]) -> _E:
        """This failure as a `kind` error that says not_done ("No kernel was started")."""
        return kind(self.what, not_done, self.fix)


def explain_run_failure(
    text: str, code: int | None, settings: KernelSettings, image_path: Sequence[str] = ()
) -> RunFailure:
    """What happened and what to do, for a kernel's `docker run` that failed, naming the
    setting at fault: the engine's own words say which limit or flag it refused, and the
    settings say which option put it there.

    readiness.probe() (setup, doctor) and the launcher's start-failure log call this with
    the CLI's stderr; image_path is the image's PATH when known (it names a --mount that
    hides the image's Python).
    """
    return RunFailure(*_explain(text, code, settings, image_path))


def _explain(
    text: str, code: int | None, settings: KernelSettings, image_path: Sequence[str]
) -> tuple[str, str]:
    """explain_run_failure's cases, one per engine refusal."""
    said = [
        x.strip() for x in text.splitlines() if x.strip() and not x.startswith(("Run '", "Usage:"))
    ]
    engine_line = next(
        (x for x in said if "docker:" in x or "Error" in x), said[-1] if said else ""
    )
    for prefix in ("docker: ", "Error response from daemon: "):
        engine_line = engine_line.removeprefix(prefix)
    engine_line = engine_line.rstrip(".")
    low = text.lower()
    redo = "run setup again with --replace and the corrected option"
    if "oci runtime" in low and any(marker in low for marker in _RUNTIME_FAILED_MARKERS):
        # Before the unreachable markers: a runtime's own failure often quotes a missing
        # log file ("no such file or directory") of the engine's.
        return (
            f"the runtime '{settings.runtime or 'runc'}' could not start the container "
            f"({engine_line})",
            "check the runtime's entry in the engine's daemon.json (its path and "
            "runtimeArgs) and that it runs there, or run setup again without --runtime",
        )
    if any(marker in low for marker in _UNREACHABLE_MARKERS) and "daemon" in low:
        where = re.search(r"daemon at (\S+?)\.?(\s|$)", text)
        return (
            f"cannot reach the container engine at {where.group(1) if where else 'its socket'}",
            "start it (as root: scripts/bootstrap-engine) or point DOCKER_HOST at one that "
            "runs; 'docker info' shows what is wrong",
        )
    if "unknown flag" in low or "unknown shorthand flag" in low:
        flag = text[low.index("flag") + 4 :].strip().split("\n")[0].strip(": ")
        flag = flag.split(" in ")[-1] if "shorthand" in low else flag
        source = next(
            (a for a in settings.docker_args if a.split("=")[0] == flag.split("=")[0]), flag
        )
        return (
            f"the engine does not know the flag {flag} (from --docker-arg={source})",
            f"remove or correct that --docker-arg ({redo}); "
            "'docker run --help' lists the flags this engine takes",
        )
    match = re.search(r"minimum memory limit allowed is (\d+)\s*([kmg]?)b", low)
    if match:
        floor = f"{match.group(1)} {match.group(2).upper()}iB" if match.group(2) else match.group(1)
        return (
            f"memory {settings.memory} is {size_bytes(settings.memory)} bytes, below the "
            f"engine's minimum {floor}",
            f"use e.g. --memory 2g ({redo}); a size without a unit is in bytes",
        )
    match = re.search(r"range of cpus is from ([0-9.]+) to ([0-9.]+)", low)
    if match:
        return (
            f"--cpus {settings.cpus:g}: the engine says the range of CPUs is from "
            f"{match.group(1)} to {match.group(2)} (the CPUs this host has)",
            f"use --cpus {match.group(2).rstrip('0').rstrip('.')} or less ({redo})",
        )
    match = re.search(r"network ([^ ]+) not found", low) or re.search(
        r"unable to find network with name or id ([^ :]+)", low
    )
    if match:
        return (
            f"--network {settings.network}: the engine has no network '{match.group(1)}'",
            f"create it first ('docker network create {match.group(1)}'), or use the default "
            f"--network none ({redo})",
        )
    missing = "unable to find image" in low or "no such image" in low
    if missing and (settings.engine_host or "").startswith("ssh://"):
        # A node has no registry either: the image comes from this host (issue 13).
        return (
            f"image {settings.image} is not present on the node {settings.engine_host} "
            "(kernels never pull)",
            f"run 'jupyter-docker-kernel image push {settings.engine_host} --tag "
            f"{settings.image}' (it copies the image from this host's engine)",
        )
    if missing:
        return (
            f"image {settings.image} is not present (kernels never pull)",
            "build it with 'jupyter-docker-kernel image build' (the default image) or "
            f"'docker pull {settings.image}' where a registry is reachable",
        )
    if "could not select device driver" in low:
        return (
            f"--gpus {settings.gpus}: the engine has no GPU support ({engine_line}): its "
            "host has no NVIDIA Container Toolkit (or no GPU driver for Docker)",
            "install the NVIDIA Container Toolkit on the engine's host (nvidia-ctk runtime "
            "configure --runtime=docker, then restart Docker; 'docker info' then lists the "
            "nvidia runtime and 'docker run --rm --gpus all IMAGE nvidia-smi' works), or set "
            "the kernel up without --gpus",
        )
    if "unknown runtime" in low:
        return (
            f"the engine has no runtime '{settings.runtime}': {engine_line}",
            "register it in /etc/docker/daemon.json and restart the engine "
            "(scripts/bootstrap-engine --runsc does this for gVisor)",
        )
    if "duplicate mount point" in low:
        return (
            f"two mounts share a container path: {engine_line}",
            f"give each --mount its own container path, away from /tmp and {'/home/kernel'} "
            f"({redo})",
        )
    if "not found in $path" in low or ("no such file or directory" in low and "exec" in low):
        return _python_missing(settings, engine_line, image_path, redo)
    if code == 137:
        return (
            f"the kernel's {settings.python} was killed (SIGKILL) as it started: most likely "
            f"out of memory under --memory {settings.memory}",
            f"raise --memory (a kernel needs about 100m; e.g. --memory 2g) ({redo})",
        )
    broken = [(n, v) for n, v in settings.env if n in _PYTHON_ENV]
    if broken and code not in (None, 0, 125):
        name, value = broken[0]
        errors = [x for x in said if "Error" in x] or said or [f"exit code {code}"]
        return (
            f"--env {name}={value} breaks the image's {settings.python}: {errors[-1]}",
            f"remove --env {name} ({redo}); the image sets what its Python needs",
        )
    if code not in (None, 0) and size_bytes(settings.memory) < MIN_MEMORY:
        # Podman's compat API only says "unable to upgrade to tcp, received 409" here.
        return (
            f"memory {settings.memory} is {size_bytes(settings.memory)} bytes, below the "
            f"engines' minimum (6 MiB for Docker): {engine_line or f'exit code {code}'}",
            f"use e.g. --memory 2g ({redo}); a size without a unit is in bytes",
        )
    if code == 125:
        return (
            f"the engine refused the kernel's container: {engine_line}",
            f"correct the option it names ({redo}); 'jupyter-docker-kernel show NAME' prints "
            "the full docker run command",
        )
    return (
        said[-1] if said else f"exit code {code}",
        "'jupyter-docker-kernel show NAME' prints the kernel's docker run command: run it "
        "to see the engine's and the image's own words",
    )


def _python_missing(
    settings: KernelSettings, engine_line: str, image_path: Sequence[str], redo: str
) -> tuple[str, str]:
    """Why the image's Python was not found: a --env PATH, a --mount over it, or --python."""
    path = dict(settings.env).get("PATH")
    if path is not None:
        return (
            f"--env PATH={path} replaces the image's PATH, so {settings.python} is not found",
            f"remove --env PATH, or include the image's own PATH in it ({redo})",
        )
    for m in settings.mounts:
        hidden = [p for p in image_path if p == m.target or p.startswith(m.target + "/")]
        if hidden:
            return (
                f"--mount {m.to_spec()} hides {hidden[0]}, where the image keeps {settings.python}",
                f"mount it at another container path ({redo})",
            )
    return (
        f"the image has no {settings.python}: {engine_line}",
        "pass --python with the image's Python, or use an image with Python and ipykernel "
        "(jupyter-docker-kernel image build)",
    )


def first_line(text: str) -> str:
    """The first non-empty line of an engine message, for one-line errors."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


class NoSuchContainerError(EngineError):
    """The engine has no such container (HTTP 404): gone, removed, or never created.

    Raised only where a missing container means the caller's plan failed (start, wait,
    update); remove, signal and inspect return False/None instead (cleanup is idempotent).
    """


#: `docker run` options that `docker create` refuses or that only make sense attached:
#: run_args puts exactly these (and --rm, which create keeps as AutoRemove) right after
#: "run". -i would also leave the container's stdin open forever: with --lifeline the
#: supervisor does not read it, and nobody attaches.
RUN_ONLY_OPTIONS = ("--detach", "-d", "--interactive", "-i", "--sig-proxy=false")


def create_args(run_args: Sequence[str]) -> list[str]:
    """hardening.run_args' `run ...` list as `create ...` for `docker create`, the same
    container without starting or attaching to it (pure).

    Only the run-only options run_args itself puts before "--init" are dropped; the rest
    (the user's --docker-arg values included) passes verbatim, so the container is exactly
    what `show` prints, without hand-translating flags into an API body. The engine's
    start, the lifeline and the wait then go through EngineApi.
    """
    if not run_args or run_args[0] != "run":
        raise ValueError(f"not a `run` argument list: {list(run_args[:1])}")
    rest = list(run_args[1:])
    head: list[str] = []
    while rest and (rest[0] in RUN_ONLY_OPTIONS or rest[0] == "--rm"):
        option = rest.pop(0)
        if option == "--rm":
            head.append(option)
    return ["create", *head, *rest]


class Transport:
    """How EngineApi reaches the engine's HTTP API: one fresh stream socket per request.

    UnixTransport is the only one now. The seam for a remote engine (issue 13) is a
    transport whose connect() runs `ssh HOST docker system dial-stdio` and returns one end
    of a socketpair pumped to that process's stdin/stdout (what the docker CLI does for
    ssh:// hosts); nothing above connect() changes.
    """

    def connect(self, timeout: float | None) -> socket.socket:
        raise NotImplementedError

    def available(self) -> bool:
        """Whether a connect() can be tried at all (the socket file exists, say)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The address as people write it (DOCKER_HOST), for messages."""
        raise NotImplementedError


class UnixTransport(Transport):
    """The engine's API on a local unix socket (Docker's /var/run/docker.sock, Podman's)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def available(self) -> bool:
        return bool(self.path) and os.path.exists(self.path)

    def describe(self) -> str:
        return f"unix://{self.path}"


def transport_for(address: str) -> Transport | None:
    """The transport for a DOCKER_HOST address; None where only the CLI can go (ssh://,
    tcp:// with TLS): callers fall back to the CLI there."""
    if address.startswith("unix://"):
        return UnixTransport(address.removeprefix("unix://"))
    # ssh://: a Transport running `ssh ... docker system dial-stdio` (issue 13).
    return None


#: How often EngineApi.remove asks again when Podman catches a container mid-stop.
RACE_RETRIES = 3


class EngineApi:
    """The engine's HTTP API (Docker's, or Podman's Docker-compatible one), for the calls on
    a kernel's start path and for holding many kernels from one process.

    A CLI call costs tens of milliseconds of process start and 25 MiB while it runs; an API
    call costs a few milliseconds and nothing between calls. Paths are unversioned: Docker
    20.10 serves them as its newest (1.41), Podman 4.3's compat API as 1.41. available()
    says whether this engine's address has a transport (a unix socket now); callers fall
    back to the CLI otherwise.

    Methods raise EngineError (what happened, what was not done, what to do) when the
    engine cannot be reached or refuses; a missing container is False/None where cleanup
    asks (remove, signal, inspect) and NoSuchContainerError where it breaks the plan.
    """

    def __init__(
        self, socket_path: str | None = None, *, transport: Transport | None = None
    ) -> None:
        if transport is None:
            if socket_path is None:
                host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
                socket_path = host.removeprefix("unix://") if host.startswith("unix://") else ""
            transport = UnixTransport(socket_path)
        self.transport = transport
        #: Kept for callers that print or compare it ("" when not a unix socket).
        self.socket_path = transport.path if isinstance(transport, UnixTransport) else ""

    def available(self) -> bool:
        return self.transport.available()

    # -- plumbing ---------------------------------------------------------------------------

    def _open(
        self, method: str, path: str, timeout: float | None, body: object = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, socket.socket]:
        """Send one request; returns the connection, the response (body unread) and the
        socket (http.client drops its own reference once a streamed response begins)."""
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        try:
            sock = conn.sock = self.transport.connect(timeout)
            headers = {}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            return conn, conn.getresponse(), sock
        except OSError as exc:
            conn.close()
            raise self.unreachable(exc) from exc

    def unreachable(self, exc: BaseException) -> EngineError:
        where = self.transport.describe()
        if isinstance(exc, TimeoutError):
            return EngineError(
                f"The container engine at {where} did not answer in time ({exc}). "
                "The request was not completed. The engine may be overloaded or hung; "
                "check it with 'docker info'."
            )
        return EngineError(
            f"Cannot reach the container engine at {where}: {exc}. Nothing was done. "
            "Is it running? Try 'docker info', or start one with scripts/bootstrap-engine."
        )

    def request(
        self, method: str, path: str, timeout: float | None = 10, body: object = None
    ) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON body, or None when it is not JSON)."""
        conn, response, _ = self._open(method, path, timeout, body)
        try:
            data = response.read()
        except OSError as exc:
            raise self.unreachable(exc) from exc
        finally:
            conn.close()
        parsed = json.loads(data) if data and data[:1] in (b"{", b"[") else None
        return response.status, parsed

    def refused(self, what: str, status: int, data: Any, not_done: str = "") -> EngineError:
        """The engine answered with an error: its own message, what we asked, what to do."""
        said = data.get("message") if isinstance(data, dict) else None
        cls = NoSuchContainerError if status == 404 else EngineError
        return cls(
            f"The engine refused to {what} (HTTP {status}: {said or 'no message'}). "
            f"{not_done or 'Nothing was changed.'} "
            "Check the container with 'docker inspect' and the engine with 'docker info'."
        )

    # -- containers -------------------------------------------------------------------------

    def create(self, body: Mapping[str, Any], name: str | None = None) -> str:
        """POST /containers/create; returns the new container's id (not started).

        A missing image is an ImageError (kernels never pull), a taken name an EngineError.
        """
        from urllib.parse import quote

        path = "/containers/create" + (f"?name={quote(name)}" if name else "")
        status, data = self.request("POST", path, timeout=60, body=dict(body))
        if status == 201 and isinstance(data, dict) and data.get("Id"):
            return str(data["Id"])
        if status == 409 or (status == 500 and "already in use" in str(data)):
            raise EngineError(
                f"The container name '{name}' is already in use (HTTP {status}). No container "
                "was created. Remove the old container ('jupyter-docker-kernel gc' removes "
                "ours whose launcher is gone), or start it under another name."
            )
        if status == 404:
            raise ImageError(
                f"Image '{body.get('Image')}' is not present in the container engine, and "
                "kernels never pull. No container was created. Build it with "
                "'jupyter-docker-kernel image build' or pull it where a registry is reachable."
            )
        raise self.refused(
            f"create container {name or ''}".rstrip(), status, data, "No container was created."
        )

    def start(self, container: str) -> None:
        """POST /containers/ID/start; one already running is not an error (HTTP 304)."""
        from urllib.parse import quote

        status, data = self.request("POST", f"/containers/{quote(container)}/start", timeout=60)
        if status not in (204, 304):
            raise self.refused(
                f"start container {short_id(container)}",
                status,
                data,
                "The kernel was not started.",
            )

    def signal(self, container: str, name: str = "KILL") -> bool:
        """Send signal `name` (KILL, TERM, INT...) to the container's init; False when it is
        gone or not running (HTTP 404/409, Podman: 500 "can only kill running containers")."""
        from urllib.parse import quote

        path = f"/containers/{quote(container)}/kill?signal={quote(name)}"
        status, data = self.request("POST", path)
        if status == 204:
            return True
        if status in (404, 409):
            return False
        if status == 500 and "can only kill running" in str(data):
            return False  # Podman 4.3 says "not running" so ("container state improper")
        raise self.refused(f"signal container {short_id(container)} ({name})", status, data)

    def kill(self, container: str) -> bool:
        """SIGKILL the container now (POST /containers/ID/kill): a few milliseconds, where
        the CLI's `rm --force` costs a process start first. False if it is not running."""
        return self.signal(container, "KILL")

    def remove(self, container: str, *, force: bool = True) -> bool:
        """DELETE /containers/ID (with its anonymous volumes); idempotent: False when it is
        already gone or being removed (a --rm container removing itself)."""
        import time
        from urllib.parse import quote

        query = f"force={'1' if force else '0'}&v=1"
        for attempt in range(RACE_RETRIES + 1):
            path = f"/containers/{quote(container)}?{query}"
            status, data = self.request("DELETE", path, timeout=60)
            # Podman 4.3, removing a container that is ending by itself (its lifeline's
            # holder left): "could not be stopped ... container state improper" (500).
            # Once it has stopped, the same request succeeds.
            if status != 500 or "state improper" not in str(data) or attempt == RACE_RETRIES:
                break
            time.sleep(0.05 * (attempt + 1))
        if status in (200, 204):
            return True
        if status == 404 or (status == 409 and "in progress" in str(data).lower()):
            return False
        raise self.refused(
            f"remove container {short_id(container)}",
            status,
            data,
            "The container was not removed.",
        )

    def inspect(self, container: str) -> dict[str, Any] | None:
        """GET /containers/ID/json, the inspect data; None when there is no such container."""
        from urllib.parse import quote

        status, data = self.request("GET", f"/containers/{quote(container)}/json", timeout=30)
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise self.refused(f"inspect container {short_id(container)}", status, data)
        return data

    def update(self, container: str, *, cpu_shares: int) -> None:
        """POST /containers/ID/update with a new CPU weight (a warm container's low shares
        raised at its claim)."""
        from urllib.parse import quote

        path = f"/containers/{quote(container)}/update"
        status, data = self.request("POST", path, body={"CpuShares": cpu_shares})
        if status == 404 and data is None:
            # Podman 4.3's compat API has no such route (a plain "Not Found"); its own API
            # does, and changes the cgroup (its inspect keeps the created value).
            path = f"/v4.0.0/libpod/containers/{quote(container)}/update"
            status, data = self.request("POST", path, body={"cpu": {"shares": cpu_shares}})
            status = 200 if status == 201 else status
        if status != 200:
            raise self.refused(
                f"update container {short_id(container)}",
                status,
                data,
                "Its CPU shares were not changed.",
            )

    def containers(
        self,
        labels: Mapping[str, str | None] | None = None,
        *,
        running: bool = True,
        all: bool = False,  # the engine's own name (GET ?all=1)
    ) -> list[dict[str, Any]]:
        """Containers carrying all the labels (a value None: any value); running ones only
        unless all=True (or running=False, the older spelling)."""
        from urllib.parse import quote

        wanted = [k if v is None else f"{k}={v}" for k, v in (labels or {}).items()]
        filters: dict[str, list[str]] = {"label": wanted}
        every = all or not running
        if not every:
            filters["status"] = ["running"]
        query = f"filters={quote(json.dumps(filters))}" + ("&all=1" if every else "")
        status, data = self.request("GET", f"/containers/json?{query}")
        if status != 200 or not isinstance(data, list):
            raise self.refused("list containers", status, data)
        return data

    def rename(self, container: str, name: str) -> bool:
        """Rename a container; False when it is gone or the name is taken (someone won)."""
        from urllib.parse import quote

        status, _ = self.request(
            "POST", f"/containers/{quote(container)}/rename?name={quote(name)}"
        )
        return status == 204

    def wait(
        self, container: str, *, condition: str = "not-running", timeout: float | None = None
    ) -> int:
        """Block until the container exits; returns its exit code (POST /containers/ID/wait).

        condition "next-exit", asked before start, cannot miss a --rm container's exit (the
        docker CLI's own order); "not-running" returns at once for one already stopped.
        Raises NoSuchContainerError when it is gone, EngineError after `timeout` seconds.
        """
        from urllib.parse import quote

        path = f"/containers/{quote(container)}/wait?condition={quote(condition)}"
        status, data = self.request("POST", path, timeout=timeout)
        if status != 200 or not isinstance(data, dict):
            raise self.refused(f"wait for container {short_id(container)}", status, data)
        return int(data.get("StatusCode", 1))

    def watch_exit(self, container: str) -> ExitWatch:
        """Ask for the container's next exit now; its code is read later (ExitWatch.code).

        Returns once the engine has registered the wait (Docker and Podman answer with the
        headers at once, the body at the exit), so a container started after this cannot
        exit unseen, even one that removes itself (--rm): the docker CLI's own order.
        """
        from urllib.parse import quote

        path = f"/containers/{quote(container)}/wait?condition=next-exit"
        conn, response, sock = self._open("POST", path, None)
        if response.status != 200:
            data = response.read()
            conn.close()
            parsed = json.loads(data) if data[:1] == b"{" else None
            raise self.refused(f"wait for container {short_id(container)}", response.status, parsed)
        return ExitWatch(self, container, conn, response, sock)

    def events(
        self,
        filters: Mapping[str, Sequence[str]],
        *,
        since: float | None = None,
        until: float | None = None,
        timeout: float | None = None,
    ) -> EventStream:
        """GET /events as a stream of dicts (e.g. filters {"type": ["container"], "event":
        ["die"], "label": [LABEL_KERNEL_ID]}): one connection however many containers.

        Iterating yields events as the engine sends them; it ends when the engine ends the
        stream (`until` passed) or close() is called (from any thread), and raises
        TimeoutError when no event came for `timeout` seconds.
        """
        from urllib.parse import quote

        sent = {k: list(v) for k, v in filters.items()}
        # Podman 4.3 filters on its own event names ("died") but reports Docker's ("die");
        # Docker ignores the names it does not know. Both are asked.
        for docker_name, podman_name in PODMAN_EVENT_NAMES.items():
            if docker_name in sent.get("event", []):
                sent["event"].append(podman_name)
        query = f"filters={quote(json.dumps(sent))}"
        if since is not None:
            query += f"&since={since:.6f}"
        if until is not None:
            query += f"&until={until:.6f}"
        conn, response, sock = self._open("GET", f"/events?{query}", timeout)
        if response.status != 200:
            data = response.read()
            conn.close()
            parsed = json.loads(data) if data[:1] == b"{" else None
            raise self.refused("stream its events", response.status, parsed)
        return EventStream(response, sock)


class ExitWatch:
    """A container's next exit, asked for before its start (EngineApi.watch_exit)."""

    def __init__(
        self,
        api: EngineApi,
        container: str,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        sock: socket.socket,
    ) -> None:
        self._api = api
        self._container = container
        self._conn = conn
        self._response = response
        self._sock = sock
        self._code: int | None = None
        self._lock = threading.Lock()

    def done(self) -> bool:
        """Whether the exit has been reported (never blocks): the engine wrote the body."""
        if self._code is not None:
            return True
        import select

        # poll, not select: a helper or server hosting many kernels has descriptors above
        # select's 1024, where its ValueError read as "exited" and failed cold starts.
        poller = select.poll()
        with contextlib.suppress(OSError, ValueError):
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return True

    def code(self) -> int:
        """Block until the container exits; its exit code. EngineError when the engine
        went away meanwhile (the caller says so; the container is then not ours to read)."""
        with self._lock:
            if self._code is None:
                try:
                    data = self._response.read()
                except (OSError, http.client.HTTPException) as exc:
                    raise self._api.unreachable(exc) from exc
                finally:
                    self._conn.close()
                parsed = json.loads(data) if data[:1] == b"{" else {}
                error = parsed.get("Error") if isinstance(parsed, dict) else None
                if not isinstance(parsed, dict) or "StatusCode" not in parsed:
                    raise self._api.refused(
                        f"report the exit of container {short_id(self._container)}",
                        200,
                        error if isinstance(error, dict) else parsed,
                    )
                self._code = int(parsed["StatusCode"])
            return self._code

    def close(self) -> None:
        """Stop waiting (the caller no longer needs the code)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()

    def fileno(self) -> int:
        """The connection's descriptor, for a hand-over (hosting.hand_over_kernel): what
        is still to come on it is the response's body (its headers were read here)."""
        return self._sock.fileno()

    def release(self) -> None:
        """Close our copy of the connection without shutting it down: a process that was
        handed the descriptor (the compiled client) still gets the exit on it."""
        with contextlib.suppress(OSError):
            self._response.close()
        self._conn.close()
        self._sock.close()


#: Event names Podman's filters know by another name than Docker's (the reports agree).
PODMAN_EVENT_NAMES = {"die": "died"}


class EventStream:
    """The engine's event stream (EngineApi.events): iterate for dicts, close() to stop.

    Docker sends one JSON object per line; Podman's compat API sends them back to back.
    Both are parsed with a raw JSON decoder over what has arrived, not by lines.
    """

    def __init__(self, response: http.client.HTTPResponse, sock: socket.socket) -> None:
        self._response = response
        self._sock = sock
        self._closed = False
        self._iterating = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        decoder = json.JSONDecoder()
        text = codecs.getincrementaldecoder("utf-8")()
        buffer = ""
        self._iterating = True
        try:
            while not self._closed:
                try:
                    chunk = self._response.read1(65536)
                except TimeoutError as exc:
                    if self._closed:
                        return
                    raise TimeoutError("no engine event within the stream's timeout") from exc
                except (OSError, ValueError, http.client.HTTPException):
                    if self._closed:
                        return  # close() shut the socket under the chunk reader
                    raise
                if not chunk:
                    return
                buffer += text.decode(chunk)
                while True:
                    buffer = buffer.lstrip()
                    try:
                        event, end = decoder.raw_decode(buffer)
                    except ValueError:
                        break  # empty, or an object cut between chunks: wait for the rest
                    buffer = buffer[end:]
                    if isinstance(event, dict):
                        yield event
        finally:
            self._iterating = False
            self._release()

    def close(self) -> None:
        """End the stream, from any thread: one blocked iterating it returns."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if not self._iterating:
            self._release()

    def _release(self) -> None:
        self._response.close()
        self._sock.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
