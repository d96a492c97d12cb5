"""The client's side of the root broker (broker.py): `BrokerBackend`, one more
container.Backend, for users who cannot reach the container engine.

`LocalBackend.for_engine` (local_backend.py) picks it when the engine's socket is not open
to this user and the broker's socket exists (`choice`, which `doctor` reports too); the
argv launcher, the resident helper and the provisioner all get their backend there, so
the lifecycle (container.Container) is the same one: only its engine steps go through the
broker. The wire format is broker_policy.py's.

`start_cold` sends the start (the kernelspec's settings, the notebook's directory, the
client's key), reads the broker's one-line answer, and points the kernel's socket dir in
our runtime dir (a link, `rt`) at the one the broker made for us (ours, 0700). Its `Cold`
(`BrokerCold`) is the connection: the container's output and exit code come over it, the
--copy-workdir stream, signals and stops go over it, and closing it (our exit, however it
comes) is what ends the kernel: the broker holds the supervisor's lifeline for us.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import broker_policy as bp
from jupyter_docker_kernel import hardening, pool
from jupyter_docker_kernel.container import Cold, Refill
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings, size_bytes
from jupyter_docker_kernel.workdir import engine_sockets

#: The broker's socket for clients (default broker_policy.DEFAULT_SOCKET).
BROKER_ENV = "JUPYTER_DOCKER_KERNEL_BROKER"
#: How long a client waits for the broker's answer to its start.
REPLY_SECONDS = 30.0
#: How long probe() waits for the probe kernel to bind its sockets (gVisor starts slowest).
PROBE_SECONDS = 60.0


def broker_socket() -> str:
    """Where this user's clients look for the broker."""
    return os.environ.get(BROKER_ENV) or bp.DEFAULT_SOCKET


def engine_unreachable(engine: Engine) -> str:
    """Why this user cannot reach the engine's API socket ("" when they can, or when the
    engine is not on a local unix socket: then the CLI decides)."""
    address = engine.address() or "unix:///var/run/docker.sock"
    if not address.startswith("unix://"):
        return ""
    path = address.removeprefix("unix://")
    if not os.path.exists(path):
        return f"there is no engine socket at {path}"
    if not os.access(path, os.R_OK | os.W_OK):
        return f"the engine's socket {path} is not open to you (you are not in its group)"
    return ""


def choice(engine: Engine) -> tuple[str, str]:
    """("broker" or "engine", why): the path this user's kernels take, for for_engine and
    doctor."""
    unreachable = engine_unreachable(engine)
    path = broker_socket()
    if not unreachable:
        return "engine", "the engine's socket is open to you"
    if os.path.exists(path):
        return "broker", f"{unreachable}, and the broker's socket {path} exists"
    return "engine", f"{unreachable}, and there is no broker socket at {path}"


class BrokerCold:
    """A kernel started by the broker, as Container sees a cold start: the connection to
    the broker. A thread reads its frames: output into a pipe (outputs()), the container's
    id into the cidfile, the exit code (wait())."""

    def __init__(self, sock: socket.socket, rundir: RunDir) -> None:
        self.sock = sock
        self.rundir = rundir
        self.container_id = ""
        self.code = 1
        self.oom = False
        self.exited = False
        #: Why our side stopped the kernel (note_stop), sent with the stop for the audit.
        self.why = ""
        #: The memory limit in bytes, for an OOM's exit line.
        self.memory = 0
        self._done = threading.Event()
        self._send = threading.Lock()
        read_fd, self._out = os.pipe()
        self.stream = os.fdopen(read_fd, "rb")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        reader = bp.FrameReader(bp.ID + bp.OUTPUT + bp.EXIT)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                for kind, payload in reader.feed(data):
                    if kind == bp.OUTPUT:
                        view = memoryview(payload)
                        while view:
                            view = view[os.write(self._out, view) :]
                    elif kind == bp.ID:
                        self.container_id = payload.decode(errors="replace")
                        self.rundir.cid.write_text(self.container_id)
                    else:
                        info = json.loads(payload)
                        self.code, self.oom = int(info["code"]), bool(info.get("oom"))
                        self.exited = True
        except (OSError, ValueError, KeyError, bp.Refusal):
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self._out)
            self._done.set()

    def note_stop(self, reason: str) -> None:
        """Container.stop's first reason (the relay's "budget exceeded: ...", the socket-dir
        guard's, a shutdown's): the stop request carries it to the broker's audit line."""
        self.why = reason

    def send(self, data: bytes) -> bool:
        """Frames to the broker; False once the connection is gone."""
        with self._send:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def write(self, data: bytes) -> None:
        for offset in range(0, len(data), bp.MAX_FRAME):
            if not self.send(bp.frame(bp.WRITE, data[offset : offset + bp.MAX_FRAME])):
                raise OSError("the broker's connection is closed")

    def outputs(self) -> list[Any]:
        return [self.stream]

    def ended(self) -> bool:
        """Whether the broker's connection has ended (the kernel exited or was ended)."""
        return self._done.is_set()

    def wait(self) -> int:
        self._done.wait()
        return self.code

    def words(self) -> str:
        if self.exited:
            return ""
        return "docker: the broker's connection ended before the kernel's exit (did it stop?)\n"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class BrokerBackend:
    """container.Backend through the root broker (see the module docstring)."""

    def __init__(self, path: str | None = None, engine: Engine | None = None) -> None:
        self.path = path or broker_socket()
        self.engine = engine or Engine()
        self.colds: dict[str, BrokerCold] = {}

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold:
        """Ask the broker for the kernel; LaunchError with its one line when it refuses."""
        try:
            connection = json.loads(Path(launch.connection_file).read_text())
        except (OSError, ValueError) as exc:
            raise LaunchError(f"Cannot read {launch.connection_file}: {exc}") from exc
        request = bp.start_request(
            launch.container_name,
            launch.kernel_id,
            launch.kernelspec,
            launch.workdir,
            launch.project_root,
            connection,
            settings,
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(REPLY_SECONDS)
            sock.connect(self.path)
            sock.sendall(request)
            reply = self._reply(sock)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise LaunchError(
                f"Cannot reach the kernel broker at {self.path}: {exc}",
                "No container was started",
                "Ask the admin whether the broker runs and you are in its group "
                "('jupyter-docker-kernel doctor' says which path your kernels take).",
            ) from exc
        if not reply.get("ok"):
            sock.close()
            raise LaunchError(
                f"The kernel broker refused the kernel: {reply.get('error') or 'no reason'}",
                "No container was started",
                "Change the kernelspec within the broker's policy, or ask the admin.",
            )
        # Our socket dir is the broker's, made for us (ours, 0700, in a root-owned dir).
        try:
            os.rmdir(rundir.sockets)
            os.symlink(str(reply["sockets"]), rundir.sockets)
        except OSError:
            sock.close()  # the broker ends the kernel it started for us
            raise
        cold = BrokerCold(sock, rundir)
        cold.memory = size_bytes(settings.memory)
        self.colds[launch.container_name] = cold
        return cold

    @staticmethod
    def _reply(sock: socket.socket) -> dict[str, Any]:
        data = b""
        while b"\n" not in data and len(data) < 8192:
            chunk = sock.recv(8192)
            if not chunk:
                break
            data += chunk
        try:
            reply = json.loads(data.partition(b"\n")[0])
        except ValueError:
            raise OSError("the broker's answer is not JSON") from None
        if not isinstance(reply, dict):
            raise OSError("the broker's answer is not a JSON object")
        return reply

    def _cold(self, name: str) -> BrokerCold | None:
        for key, cold in self.colds.items():
            if name in (key, cold.container_id):
                return cold
        return None

    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None:
        return None  # no warm pool through the broker (its policy refuses pool)

    def rename(self, container_id: str, name: str) -> bool:
        return False

    def update(self, container_id: str, cpu_shares: int) -> None:
        return None

    def inspect(self, name: str) -> dict[str, Any] | None:
        """What Container.engine_exit_reason reads, from the exit frame (gVisor's OOM)."""
        cold = self._cold(name)
        if cold is None or not cold.exited:
            return None
        return {"State": {"OOMKilled": cold.oom}, "HostConfig": {"Memory": cold.memory}}

    def wait(self, container_id: str) -> int:
        cold = self._cold(container_id)
        return cold.wait() if cold is not None else 1

    def signal(self, name: str, sig: str) -> bool:
        cold = self._cold(name)
        return cold is not None and cold.send(bp.control("signal", sig))

    def kill_now(self, name: str) -> None:
        cold = self._cold(name)
        if cold is not None:
            cold.send(bp.control("kill", why=cold.why))

    def remove(self, name: str) -> bool:
        cold = self._cold(name)
        return cold is not None and cold.send(bp.control("stop", why=cold.why))

    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Refill:
        raise OSError("the broker keeps no warm pool")

    def watchdog(self, name: str, cidfile: Path, base: Path) -> int:
        return -1  # the broker ends the kernel when our connection closes

    def executable(self) -> str:
        return self.engine.executable()

    def env(self) -> dict[str, str] | None:
        return self.engine.env()

    def sockets(self) -> list[str]:
        return engine_sockets(self.engine)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What probe() found: whether a kernel of the settings started through the broker
    and bound its sockets, in words for doctor's and setup's lines."""

    ok: bool
    detail: str
    fix: str
    seconds: float


def probe(settings: KernelSettings, timeout: float = PROBE_SECONDS) -> ProbeResult:
    """Start a kernel of `settings` through the broker, wait until its shell socket takes a
    connection, stop it: doctor's probe container and setup's image check on the broker
    path. The engine is not ours to ask there, and the broker starts nothing but real
    kernels, so this is the check that answers "can this kernelspec start here": the
    policy (image, limits, runtime, mounts) and the image (its Python and ipykernel bind
    the sockets) together. Without the notebook's directory (workdir "none"): doctor and
    setup run anywhere, often in the home directory, which the broker never mounts.
    Nothing is left: the kernel's connection to the broker closes, and the broker removes
    its container."""
    from jupyter_docker_kernel.container import Container, socket_names
    from jupyter_docker_kernel.errors import DockerKernelError

    started = time.monotonic()
    settings = dataclasses.replace(settings, workdir="none", pool=0)
    with tempfile.TemporaryDirectory(prefix="jdk-probe-") as tmp:
        connection = Path(tmp, "probe.json")
        connection.write_text(
            json.dumps({"key": secrets.token_hex(16), "signature_scheme": "hmac-sha256"})
        )
        container: Container | None = None
        try:
            container = Container(
                settings,
                str(connection),
                BrokerBackend(),
                kernel_id=f"probe-{secrets.token_hex(4)}",
                base=Path(tmp, "run"),
                workdir=tmp,
            )
            container.start()
            cold = container.cold
            assert isinstance(cold, BrokerCold)
            # Nobody else reads the kernel's output here; the pipe must not fill up.
            threading.Thread(target=cold.stream.read, daemon=True).start()
            shell = container.runtime_dir / socket_names()[0]
            deadline = time.monotonic() + timeout
            while not _connects(shell):
                if cold.ended():
                    words = cold.words().strip() or f"exit code {cold.code}"
                    return ProbeResult(
                        False,
                        f"a kernel of {settings.image} started through the broker and "
                        f"ended before it bound its sockets ({words})",
                        "check that the image runs a kernel: 'python3 -m ipykernel' in it",
                        time.monotonic() - started,
                    )
                if time.monotonic() > deadline:
                    return ProbeResult(
                        False,
                        f"a kernel of {settings.image} started through the broker but bound "
                        f"no socket within {timeout:.0f} s",
                        "ask the admin to check the broker's log",
                        time.monotonic() - started,
                    )
                time.sleep(0.05)
            took = time.monotonic() - started
            return ProbeResult(
                True,
                f"a kernel of {settings.image} started through the broker and bound its "
                f"sockets in {took:.1f} s (probed without the notebook's directory)",
                "",
                took,
            )
        except DockerKernelError as exc:  # the broker's refusal, in its one line
            return ProbeResult(False, exc.what, exc.fix, time.monotonic() - started)
        except OSError as exc:
            return ProbeResult(False, str(exc), "", time.monotonic() - started)
        finally:
            if container is not None:
                container.stop("the probe is done", block=True)
                container.close()


def _connects(path: Path) -> bool:
    """Whether a unix socket at path takes a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
