"""The local engine's backends: where container.Container runs its kernels today.

`LocalBackend` (the engine's API on a unix socket: `docker create` once, then the exit
wait, start, lifeline socket, signals and removal through the API: no process per kernel)
and `CliBackend` (no API: ssh://, tcp://; an attached `docker run -i` per kernel, its
stdin the lifeline); `LocalBackend.for_engine` picks. Both implement container.Backend
(see container.py's module docstring for who calls each method, and when); their cold
starts are the container.Cold classes `Held` (API), `Attached` (CLI) and `Refused`.

Imports container.py (its Protocols, wait_exit_code); container.py imports this module
only when a Container is made without a backend (no import cycle at import time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import hardening, pool
from jupyter_docker_kernel.container import Backend, Cold, Refill, wait_exit_code
from jupyter_docker_kernel.engine import Engine, ExitWatch, create_args
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.lifeline import CONNECT_SECONDS, LIFELINE_SOCKET, claim_line
from jupyter_docker_kernel.lifeline import connect as connect_lifeline
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.watchdog import fork_watchdog
from jupyter_docker_kernel.workdir import engine_sockets

# The launcher's logger, as in container.py: the lines below are the ones users and tests
# know from it.
log = logging.getLogger("jupyter_docker_kernel.launcher")


class Attached:
    """`docker run -i`, attached (CliBackend): its stdin is the supervisor's lifeline, its
    stderr and stdout the kernel's, its exit code the container's (or its own 125-127)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.container_id = ""

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def outputs(self) -> list[Any]:
        return [self.proc.stderr, self.proc.stdout]

    def wait(self) -> int:
        return self.proc.wait()

    def words(self) -> str:
        return ""  # the engine's and the init's words came on the CLI's stderr

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Held:
    """A container created (`docker create`), started through the engine's API and held by
    its lifeline socket (LocalBackend.start_cold), all in a thread of its own: the
    supervisor's and the kernel's output come over that socket, the exit code from the
    wait asked before the start. In the background, as `docker run`'s Popen was: the
    adapter sets up its relay while the engine creates and starts the container (the
    container's id is in the cidfile once created, where Container looks for it).
    Until the start is done, write/outputs/wait block (in the caller's thread: never the
    provisioner's event loop, see Container.attach); a refused start reads like Refused."""

    def __init__(self, backend: LocalBackend, args: list[str], path: str, command: str) -> None:
        self.args = args
        #: "" until `docker create` returned it.
        self.container_id = ""
        #: The container's command (the image's Python): its init's exec of it may fail.
        self.command = command
        self.sock: socket.socket | None = None
        self.exit: ExitWatch | None = None
        self.refused: Refused | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._ready = threading.Event()
        threading.Thread(target=self._start, args=(backend, path), daemon=True).start()

    def _start(self, backend: LocalBackend, path: str) -> None:
        try:
            self._started(backend, path)
        except Exception as exc:  # never leave the waiters blocked
            self.refused = Refused(125, f"docker: {exc}\n", self.container_id)
        finally:
            self._ready.set()

    def _started(self, backend: LocalBackend, path: str) -> None:
        created = backend.engine.run(create_args(self.args), check=False, timeout=120)
        if created.returncode != 0:
            # `docker run` exits 125 for whatever stopped it before the container ran
            # (`docker create` exits 1 for a missing image, say).
            self.refused = Refused(125, created.stderr)
            return
        lines = created.stdout.split()
        self.container_id = lines[-1] if lines else ""
        self._run_created(backend, path)

    def _run_created(self, backend: LocalBackend, path: str) -> None:
        """The part of a cold start after `docker create` (self.container_id), shared with
        node_backend.NodeHeld: the exit wait asked before the start (so even a --rm
        container cannot exit unseen), the API start, the lifeline (open_lifeline), and a
        close() that came meanwhile honoured at each step."""
        with self._lock:
            if self._closed:  # let go while it was being created: nobody will start it
                with contextlib.suppress(DockerKernelError):
                    backend.api.remove(self.container_id)
                return
        try:
            self.exit = backend.api.watch_exit(self.container_id)
        except DockerKernelError as exc:
            self.refused = Refused(125, f"docker: {exc}\n", self.container_id)
            return
        sock: socket.socket | None = None
        try:
            backend.api.start(self.container_id)
            sock = self.open_lifeline(backend, path, self.exit)
            if sock is not None:
                sock.sendall(claim_line())
        except DockerKernelError as exc:
            self.exit.close()
            code = start_exit_code(str(exc))
            self.refused = Refused(code, f"docker: {exc}\n", self.container_id)
        except OSError:
            if sock is not None:
                sock.close()
            sock = None  # it ended meanwhile (or its socket is not one): its exit code says
        with self._lock:
            if self._closed and sock is not None:
                sock.close()  # let go before we got hold: the kernel ends
                sock = None
            self.sock = sock

    def open_lifeline(
        self, backend: LocalBackend, path: str, exit: ExitWatch
    ) -> socket.socket | None:
        """The supervisor's lifeline socket, connected (LocalBackend.open_lifeline); a
        node's NodeHeld connects through the SSH master instead."""
        return backend.open_lifeline(path, exit)

    def write(self, data: bytes) -> None:
        self._ready.wait()
        if self.sock is None:
            raise OSError("the kernel's container ended before its lifeline was connected")
        self.sock.sendall(data)

    def outputs(self) -> list[Any]:
        self._ready.wait()
        if self.refused is not None:
            return self.refused.outputs()
        return [self.sock] if self.sock is not None else []

    def wait(self) -> int:
        self._ready.wait()
        if self.refused is not None:
            return self.refused.wait()
        assert self.exit is not None
        return self.exit.code()

    def words(self) -> str:
        """The container's init (--init: the engine's tini) could not exec its command, so
        no supervisor ran to bind the lifeline: its message went to the engine's log
        driver (none). `docker run` showed it on stderr; its exit code says the same
        (tini: 127 for a command not found, 126 for one that cannot be run), in the
        words explain_run_failure knows."""
        if self.sock is not None or self.refused is not None or self.exit is None:
            return ""
        code = self.exit.code()
        if code == 127:
            return f"docker: exec {self.command}: no such file or directory (exit 127)\n"
        if code == 126:
            return f"docker: exec {self.command}: permission denied (exit 126)\n"
        return ""

    def let_go(self) -> None:
        """After a hand-over: close our copies of the lifeline and the exit watch without
        shutting them down (the compiled client holds the same sockets); close() after
        this ends nothing."""
        with self._lock:
            self._closed = True
            sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        if self.exit is not None:
            self.exit.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sock = self.sock
        if self.refused is not None:
            self.refused.close()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # a forward thread blocked in recv
            sock.close()


class Refused:
    """A cold start the engine refused (create or start failed): like `docker run` would
    have, it has exited with 125/126/127 and said why on its stderr."""

    def __init__(self, code: int, said: str, container_id: str = "") -> None:
        self.code = code
        self.container_id = container_id
        read_fd, write_fd = os.pipe()
        os.write(write_fd, said.encode(errors="replace")[-32768:])  # fits the pipe's buffer
        os.close(write_fd)
        self.stream = os.fdopen(read_fd, "rb")

    def write(self, data: bytes) -> None:
        raise OSError("the kernel's container did not start")

    def outputs(self) -> list[Any]:
        return [self.stream]

    def wait(self) -> int:
        return self.code

    def words(self) -> str:
        return ""  # on its stream

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()


def start_exit_code(message: str) -> int:
    """The exit code `docker run` gives when the engine refuses to start a container
    (the docker CLI's runStartContainerErr): 127 for a command not found, 126 for one
    that cannot be run, else 125. Kept so the exit line and explain_run_failure read the
    same for a start through the API."""
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message or "is a directory" in message:
        return 126
    return 125


class CliBackend:
    """The local engine through its CLI only: the fallback where its API cannot be reached
    (DOCKER_HOST is not unix://, e.g. ssh:// or tcp://). A cold start is an attached
    `docker run -i` process per kernel, its stdin the supervisor's lifeline."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine or Engine()

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold:
        return Attached(self.run(hardening.run_args(settings, launch, cidfile=str(rundir.cid))))

    def run(self, args: list[str]) -> subprocess.Popen[bytes]:
        """`docker run -i` with args, attached. The CLI gets its own session: the client's
        killpg(SIGINT) must reach the launcher, not the CLI, which would exit on it and take
        the kernel's stdin lifeline with it."""
        return subprocess.Popen(
            [self.engine.executable(), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=self.engine.env(),
        )

    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None:
        return pool.claim(settings, base, new_dir)

    def rename(self, container_id: str, name: str) -> bool:
        self.engine.run(["rename", container_id, name])
        return True

    def update(self, container_id: str, cpu_shares: int) -> None:
        api = self.engine.api()
        if api.available():
            api.update(container_id, cpu_shares=cpu_shares)
        else:
            self.engine.run(["update", f"--cpu-shares={cpu_shares}", container_id])

    def inspect(self, name: str) -> dict[str, Any] | None:
        return self.engine.container_inspect(name)

    def wait(self, container_id: str) -> int:
        """The container's exit code, from the engine (blocks); 1 if the engine failed."""
        try:
            return wait_exit_code(self.engine.run(["wait", container_id], timeout=1e9).stdout)
        except DockerKernelError as exc:
            log.warning("%s", exc)
            return 1

    def signal(self, name: str, sig: str) -> bool:
        return self.engine.kill(name, sig)

    def kill_now(self, name: str) -> None:
        """Nothing faster than the removal the caller does next (no API here)."""

    def remove(self, name: str) -> bool:
        return self.engine.remove(name)

    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Refill:
        # The engine's environment: in the resident helper, this kernel's client's.
        return pool.fill_in_background(settings, base, launch, gated=True, env=self.engine.env())

    def watchdog(self, name: str, cidfile: Path, base: Path) -> int:
        return fork_watchdog(self.engine.executable(), name, cidfile, base)

    def executable(self) -> str:
        return self.engine.executable()

    def env(self) -> dict[str, str] | None:
        return self.engine.env()

    def sockets(self) -> list[str]:
        """The engine's sockets on this host, which no --mount may reach."""
        return engine_sockets(self.engine)


class LocalBackend(CliBackend):
    """The local engine (Docker or Podman) through its API on a unix socket: no process
    per kernel. A cold start is `docker create` (the CLI, once: `--docker-arg` and `show`
    keep meaning exactly what `docker run` means; it costs what `docker run -d` does, see
    docs/design/issue17/b0-b1.md), then the exit wait, the start and the lifeline socket
    through the API; signals, inspect, wait, rename and removal through the API too."""

    def __init__(self, engine: Engine | None = None) -> None:
        super().__init__(engine)
        self.api = self.engine.api()

    @staticmethod
    def for_engine(engine: Engine | None = None) -> Backend:
        """LocalBackend where the engine's API is on a unix socket, SshBackend for a
        remote node (ssh://), else CliBackend; the root broker's client
        (broker_client.BrokerBackend) where this user cannot reach the engine and a
        broker listens (broker_client.choice)."""
        engine = engine or Engine()
        if engine.address().startswith("ssh://"):
            from jupyter_docker_kernel.node_backend import SshBackend  # imports this module

            return SshBackend(engine)
        from jupyter_docker_kernel import broker_client  # it imports container, as we do

        if broker_client.choice(engine)[0] == "broker":
            return broker_client.BrokerBackend(engine=engine)
        return LocalBackend(engine) if engine.api().available() else CliBackend(engine)

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold:
        """In a thread (Held): `docker create`, the exit wait, the start, the lifeline's
        connect and its claim line. A refusal on the way reads like `docker run`'s: its
        code (125/126/127) and its words (Refused)."""
        args = hardening.run_args(
            settings, launch, cidfile=str(rundir.cid), lifeline=LIFELINE_SOCKET
        )
        self.engine.executable()  # no engine CLI: say so now, as `docker run` would fail
        return Held(self, args, str(rundir.sockets / LIFELINE_SOCKET), settings.python)

    def open_lifeline(self, path: str, exit: ExitWatch) -> socket.socket | None:
        """Connect to the supervisor's lifeline socket once it is bound; None when the
        container exited first (or never bound it within lifeline.CONNECT_SECONDS: its
        own --lifeline-wait has ended it by then, exit 75)."""
        deadline = time.monotonic() + CONNECT_SECONDS
        while time.monotonic() < deadline and not exit.done():
            with contextlib.suppress(TimeoutError):
                sock = connect_lifeline(path, wait=0.2)
                # The supervisor unlinks it once it accepted; under gVisor the host's file
                # stays (nothing listens), and the kernel would find it among its sockets.
                with contextlib.suppress(OSError):
                    os.unlink(path)
                return sock
        return None

    def rename(self, container_id: str, name: str) -> bool:
        return self.api.rename(container_id, name)

    def inspect(self, name: str) -> dict[str, Any] | None:
        return self.api.inspect(name)

    def wait(self, container_id: str) -> int:
        """The container's exit code, from the engine (blocks); 1 if the engine failed."""
        try:
            return self.api.wait(container_id)
        except DockerKernelError as exc:
            log.warning("%s", exc)
            return 1

    def signal(self, name: str, sig: str) -> bool:
        return self.api.signal(name, sig)

    def kill_now(self, name: str) -> None:
        """SIGKILL through the engine's API, quietly: every millisecond counts."""
        with contextlib.suppress(DockerKernelError):
            self.api.kill(name)

    def remove(self, name: str) -> bool:
        return self.api.remove(name)
