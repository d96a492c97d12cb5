"""One kernel's container, from launch facts to removal: the lifecycle both adapters share.

The argv launcher (launcher.py) and the provisioner (provisioner.py) are adapters over
`Container`; where the container runs is a `Backend` (today `LocalBackend`: the local
engine's API with one `docker create` per cold start, or `CliBackend` where the engine has
no API on a unix socket; `LocalBackend.for_engine` picks; both in local_backend.py, the
watchdogs that clean up after a dead process in watchdog.py). Nothing here knows about
Jupyter's messages (the adapters own their relay) or about asyncio: every blocking step
runs in the caller's thread or in a thread of ours, so the launcher calls it through
run_in_executor, the provisioner through off_loop, and one process may hold many
Containers (no signal handlers, no per-kernel globals here).

The adapters call, in this order:

    c = Container(settings, connection_file, backend, kernel_id=..., base=..., workdir=...)
                                        # reads the connection file, resolves the project;
                                        # LaunchError before anything exists
    c.start_watchdog()                  # argv launcher only (a fork: before any thread)
    c.start()                           # claim a warm container (backend.claim) or
                                        # prepare() + backend.start_cold()
    ... the adapter binds/serves its relay on c.runtime_dir's sockets ...
                                        # (c.guard() before it serves: the argv session
                                        # serves first and attaches in a thread)
    c.attach(bytes_to_host)             # socket-dir guard, output forwarding + kept log,
                                        # lifetime timer, the gated refill (pooled
                                        # settings), the start line; the first reply
                                        # (or FIRST_REPLY_WAIT) opens the refill's gate
    c.interrupt() / c.signal(name) / c.stop(reason)     # any time, from any thread
    ending = c.wait()                   # blocks until the container exits: code, reason,
                                        # kill notice text (the adapter publishes it)
    c.finish(ending, relayed)           # the exit line, the kept log's end, 125/126/127
    c.close()                           # idempotent: lifeline, container, runtime dir

A `Backend` is the one place that runs engine commands. A new place to run kernels (an
SSH node, a Kubernetes pod) implements its methods:

    start_cold(settings, launch, rundir) -> Cold
                                Container.start (cold): the container started and held.
                                LocalBackend (the engine's API on a unix socket): `docker
                                create` CLI (hardening.run_args(lifeline=...) through
                                engine.create_args), the exit wait armed (API), API start,
                                lifeline.connect + its claim line: no process per kernel.
                                CliBackend (no API: ssh://, tcp://): `docker run -i`,
                                attached, its stdin the lifeline. Container then writes the
                                copy (Cold.write), drains Cold.outputs() into the log
                                forwarding and the kept log, and waits on Cold.wait(); the
                                Cold classes (local_backend.py): Held (API), Attached
                                (CLI), Refused.
    claim(settings, base, dir)  Container.start (pooled settings): a warm container or None
    rename(cid, name)           Container.adopt, off the start path
    update(cid, cpu_shares)     Container.adopt, off the start path: the normal CPU weight
                                of a warm container claimed before its refill raised it
    inspect(name) -> dict|None  Container.adopt (id of a just-claimed container),
                                Container.engine_exit_reason (gVisor's OOM verdict)
    wait(cid) -> int            Container.wait for a claimed warm container (a cold one's
                                exit comes from Cold.wait: the wait asked before its start)
    signal(name, sig)           Container.interrupt / signal / stop(term=True)
    kill_now(name)              the socket-dir guard's alarm (before remove)
    remove(name) -> bool        Container.stop / close (idempotent)
    fill(settings, base, launch) -> Refill    Container.attach: the detached, gated refill
                                (its gate opened at once when the claim says starts come fast)
    watchdog(name, cidfile, base) -> int      Container.start_watchdog (argv launcher,
                                in-process fallback only; watchdog.fork_watchdog)
    executable() / env()        the engine CLI and its environment (DOCKER_HOST)
    sockets() -> list[str]      Container.__init__: engine sockets no --mount may reach
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol

from jupyter_docker_kernel import hardening, kernel_log, pool, workcopy
from jupyter_docker_kernel.endpoints import CHANNELS
from jupyter_docker_kernel.engine import Engine, explain_run_failure, short_id
from jupyter_docker_kernel.errors import DockerKernelError, LaunchError
from jupyter_docker_kernel.hardening import SUPERVISOR_PATH
from jupyter_docker_kernel.kernel_log import forward
from jupyter_docker_kernel.lifeline import LIFELINE_SOCKET, NO_LIFELINE_EXIT
from jupyter_docker_kernel.rundir import (
    NAME_PREFIX,
    RunDir,
    alive,
    process_start_time,
    remove_tree,
    runtime_base,
    write_private,
)
from jupyter_docker_kernel.settings import OWNER_USER, KernelSettings, size_bytes
from jupyter_docker_kernel.socketdir import SocketDirGuard, Watch

# Re-exported: watchdog processes an earlier version spawned import them from here.
from jupyter_docker_kernel.watchdog import watch_lifeline as watch_lifeline
from jupyter_docker_kernel.watchdog import watch_owner as watch_owner
from jupyter_docker_kernel.workdir import (
    check_project,
    owner_of,
    project_root,
    refuse_grading_mount,
    warn_about_workdir,
)

# The launcher's logger: the lines below are the ones users and tests know from it.
log = logging.getLogger("jupyter_docker_kernel.launcher")

#: How long after max_lifetime we remove a container the supervisor did not end.
LIFETIME_GRACE = 5.0
#: The pool is topped up after this many bytes reached the host (the kernel's first
#: kernel_info reply, with the ZMTP greetings and status messages), or FIRST_REPLY_WAIT s.
FIRST_REPLY_BYTES = 2048
FIRST_REPLY_WAIT = 3.0
#: A kernel ending with SIGINT's exit code this soon after an interrupt is taken as ended
#: by it (expected: Jupyter interrupts right before a shutdown), not as a failure.
SIGINT_EXIT = 130
#: 128 + SIGKILL: how the engine reports a container the OOM killer (or anyone) killed.
OOM_EXIT = 137
#: How long an adapter stays after publishing a kill notice, so that the client has read
#: it before it sees the kernel's process gone (nbclient checks every second).
NOTICE_LINGER = 0.3
INTERRUPT_EXIT_WINDOW = 5.0
#: The exit line's reason for lifeline.NO_LIFELINE_EXIT from a cold start.
NO_LIFELINE_REASON = (
    "nobody held its lifeline: the process that started it went away before connecting, "
    "so the kernel never ran"
)
#: Exit codes of the engine CLI itself (not the kernel's): the container did not start.
RUN_FAILURES = (125, 126, 127)


def kernel_id_from(connection_file: str) -> str:
    """The kernel id jupyter_client put in the file name (kernel-<id>.json), made name-safe."""
    stem = Path(connection_file).name
    stem = stem.removesuffix(".json")
    stem = stem.removeprefix("kernel-")
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", stem).strip("-.") or "kernel"
    return safe[:36]


def exit_verdict(code: int, reason: str, *, stopping: bool, interrupted: bool) -> tuple[int, str]:
    """The log level and reason of a kernel container's exit line.

    A stop we asked for, or code 0, is INFO. So is SIGINT's 130 right after an interrupt:
    jupyter_client interrupts before every shutdown, and our SIGINT, taking the engine's
    path, may reach a kernel already quitting on the shutdown request. Anything else warns.
    """
    if not reason and code == SIGINT_EXIT and interrupted:
        return logging.INFO, "SIGINT just after an interrupt, as Jupyter sends before a shutdown"
    if not reason and code == 0 and interrupted:
        # The interrupt line above reads like a user's; say it was the shutdown's first step.
        return logging.INFO, "shut down; the interrupt just before was part of the shutdown"
    return (logging.INFO if code == 0 or stopping else logging.WARNING), reason


@dataclass(frozen=True)
class Relayed:
    """What an adapter's relay moved: bytes to the host, to the kernel, and output charged
    against --output-budget."""

    out: int = 0
    into: int = 0
    charged: int = 0
    #: False when no relay of ours ran: the clients talked to the kernel straight (a
    #: Kubernetes pod over CurveZMQ), so nothing was counted.
    metered: bool = True


@dataclass(frozen=True)
class Ending:
    """How a container ended (Container.wait): its code, our reason ("" if none), whether
    we were stopping it, whether an interrupt came just before, the supervisor's last words
    and the kill notice for the notebook ("" for none)."""

    code: int
    reason: str
    stopping: bool
    interrupted: bool
    said: str
    notice: str
    #: Whether the engine CLI's own exit code counts (an attached cold start: 125-127).
    cold: bool
    #: The node it ran on (ssh://..., node_backend), "" for this host's engine: a pool's
    #: start picks one, and a failed start's explanation names it.
    node: str = ""


@dataclass(frozen=True)
class ExitReport:
    """The lines Container.finish logs for an Ending: pure, so both adapters' wording is
    table-tested (tests/test_container.py)."""

    level: int
    line: str
    #: Why a cold start failed (125/126/127), or "".
    failure: str


def exit_report(
    name: str, ending: Ending, ran: float, relayed: Relayed, settings: KernelSettings
) -> ExitReport:
    """The exit line (and the failed start's explanation) for this ending."""
    level, reason = exit_verdict(
        ending.code, ending.reason, stopping=ending.stopping, interrupted=ending.interrupted
    )
    if not reason and ending.code == NO_LIFELINE_EXIT and ending.cold:
        reason = NO_LIFELINE_REASON
    why = f" ({reason})" if reason else ""
    traffic = (
        f"relayed {relayed.out} bytes out, {relayed.into} in; "
        f"{relayed.charged} bytes of output counted against the budget"
        if relayed.metered
        else "not relayed (the clients connected straight to it)"
    )
    line = f"kernel container {name} exited with code {ending.code}{why} after {ran:.1f} s; "
    line += traffic
    failure = ""
    if ending.code in RUN_FAILURES and not ending.stopping and ending.cold:
        on = replace(settings, engine_host=ending.node) if ending.node else settings
        what, fix = explain_run_failure(ending.said, ending.code, on)
        failure = (
            f"The kernel's container did not start: {what}. "
            f"{f'To fix: {fix}. ' if fix else ''}"
            "'jupyter-docker-kernel doctor' checks every kernelspec the same way."
        )
    return ExitReport(level, line, failure)


def wait_exit_code(output: str) -> int:
    """The exit code `docker wait` printed; 1 if it printed none (the engine failed)."""
    text = output.strip()
    return int(text) if text.lstrip("-").isdigit() else 1


def limits_summary(s: KernelSettings) -> str:
    """The limits a kernel's start log line names."""
    runtime = f", runtime {s.runtime}" if s.runtime else ""
    return f"network {s.network}, memory {s.memory}, cpus {s.cpus:g}, pids {s.pids_limit}{runtime}"


def socket_names() -> list[str]:
    """What may appear in a kernel's socket dir: its five sockets, a warm one's claim and a
    cold one's lifeline (gVisor leaves the lifeline's file after the supervisor's unlink)."""
    names = [f"{hardening.SOCKET_PREFIX}-{index}" for index in range(1, len(CHANNELS) + 1)]
    return [*names, hardening.CLAIM_SOCKET, LIFELINE_SOCKET]


def kernel_connection(settings: KernelSettings, client: dict[str, Any]) -> dict[str, Any]:
    """The kernel's connection info: ipc sockets in RUNTIME_TARGET, the client's key (from
    its connection file, `client`). Container writes it; so does the broker (broker.py).

    With kernel_transport "tcp": ports on the container's loopback, which the
    supervisor bridges to the same socket paths (see hardening.BRIDGE_PORT_BASE).
    """
    tcp = settings.kernel_transport == "tcp"
    conn: dict[str, Any] = {
        "transport": "tcp" if tcp else "ipc",
        # 127.0.0.1 inside the container's own network namespace, never the host's.
        "ip": "127.0.0.1" if tcp else f"{hardening.RUNTIME_TARGET}/{hardening.SOCKET_PREFIX}",
        "key": client.get("key", ""),
        "signature_scheme": client.get("signature_scheme", "hmac-sha256"),
        "kernel_name": client.get("kernel_name", ""),
    }
    for index, channel in enumerate(CHANNELS, start=1):
        conn[f"{channel}_port"] = hardening.BRIDGE_PORT_BASE + index if tcp else index
    return conn


# -- where containers run ---------------------------------------------------------------------


class Refill(Protocol):
    """A refill waiting at its gate (Backend.fill): open() lets it start; close() too
    (EOF), which is also what happens when our process ends."""

    def open(self) -> None: ...
    def close(self) -> None: ...


class Cold(Protocol):
    """A cold-started container as Container sees it (Backend.start_cold): attached by
    `docker run -i` (CliBackend) or held by its lifeline socket (LocalBackend)."""

    #: The container's id; "" until the engine CLI's cidfile has it (CliBackend).
    container_id: str

    def write(self, data: bytes) -> None:
        """Send bytes to the supervisor before its kernel starts (the work dir's copy)."""

    def outputs(self) -> list[Any]:
        """What to drain, forward and keep (kernel_log.forward): the supervisor's and the
        kernel's stdout/stderr, its words (the exit's explanation) in the first."""

    def wait(self) -> int:
        """Block until the container exits: its code, or the engine CLI's 125/126/127."""

    def words(self) -> str:
        """After wait(): what to add to the supervisor's words when it never spoke ("")."""

    def close(self) -> None:
        """Let go: the lifeline (which ends the kernel) and the streams; idempotent."""


class Backend(Protocol):
    """Where a kernel's container runs; the one place that runs engine commands. See the
    module docstring for who calls each method, and when."""

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold: ...
    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None: ...
    def rename(self, container_id: str, name: str) -> bool: ...
    def update(self, container_id: str, cpu_shares: int) -> None: ...
    def inspect(self, name: str) -> dict[str, Any] | None: ...
    def wait(self, container_id: str) -> int: ...
    def signal(self, name: str, sig: str) -> bool: ...
    def kill_now(self, name: str) -> None: ...
    def remove(self, name: str) -> bool: ...
    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Refill: ...
    def watchdog(self, name: str, cidfile: Path, base: Path) -> int: ...
    def executable(self) -> str: ...
    def env(self) -> dict[str, str] | None: ...
    def sockets(self) -> list[str]: ...


def backend_for(settings: KernelSettings, engine: Engine | None = None) -> Backend:
    """The Backend a kernelspec asks for: a pod in its Kubernetes namespace
    (kube_backend.KubeBackend, setup --kubernetes), else the local engine (`engine`, or
    DOCKER_HOST's). The adapters call it; imported here only: both modules import this one."""
    if settings.kube_namespace is not None:
        from jupyter_docker_kernel.kube_backend import KubeBackend

        return KubeBackend.for_settings(settings)
    from jupyter_docker_kernel.local_backend import LocalBackend

    return LocalBackend.for_engine(engine)


# -- the lifecycle ----------------------------------------------------------------------------


class Container:
    """One kernel's container, from connection file to removal; see the module docstring
    for the order the adapters call its methods in."""

    def __init__(
        self,
        settings: KernelSettings,
        connection_file: str,
        backend: Backend | Engine | None = None,
        *,
        kernel_id: str | None = None,
        base: Path | None = None,
        workdir: str | None = None,
        client_pid: int | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        out: IO[bytes] | None = None,
        home: str | None = None,
        launcher_pid: int | None = None,
        revived: dict[str, Any] | None = None,
    ) -> None:
        """kernel_id, base and workdir default to what an argv launcher has (the connection
        file's name, a fresh dir, its cwd); the provisioner passes its own, as its base
        dir outlives restarts. client_pid: the Jupyter client's (our parent by default;
        the provisioner runs inside the server and passes the server's). logger: where
        the start, stop and exit lines go (the provisioner passes the server's). out: where
        the kernel's own output lines go (default: our stderr; the resident helper passes
        a stream to the kernel's thin client). home: the user's home directory, which no
        project root may be (default: ours; the resident helper passes its client's).
        launcher_pid: the process whose life the container's labels, its runtime dir's
        owner marker and its kept log name (reaper.collect keeps the kernel while it
        lives); default: ours. The resident helper passes its compiled client's for a
        kernel it hands over (it exits while the kernel runs on). revived: the hand-over
        state (hosting.handover_state) of a running container this object is made for
        again, by another process (finish.py): its name, id, start time and connection
        info are taken from it; the connection file need not exist any more, the project
        is not checked again, nothing is created."""
        self.log = logger or log
        self.home = home or os.path.expanduser("~")
        self.out = out
        self.settings = settings
        self.connection_file = connection_file
        if backend is None or isinstance(backend, Engine):
            backend = backend_for(settings, backend)
        self.backend: Backend = backend
        try:
            if revived is not None:  # its client may have removed the file by now
                self.connection: dict[str, Any] = dict(revived["connection"])
            else:
                with open(connection_file) as fh:
                    self.connection = json.load(fh)
        except (OSError, ValueError) as exc:
            raise LaunchError(
                f"Cannot read the connection file {connection_file}: {exc}. No container was "
                "started. The launcher must be run by a Jupyter client with {connection_file}."
            ) from exc
        self.kernel_id = kernel_id or kernel_id_from(connection_file)
        nonce = os.urandom(3).hex()
        # One nonce for the argv launcher's dir and container; a provisioner's dir outlives
        # restarts, and each start's container gets a new name.
        self.name = f"{NAME_PREFIX}-{self.kernel_id}-{nonce}"
        self.rundir = RunDir(base) if base else RunDir.new(runtime_base(), self.kernel_id, nonce)
        self.base = self.rundir.path
        self.workdir = workdir or os.getcwd()
        #: The directory mounted (or copied) at its own path, self.workdir inside it.
        self.project, self.workdir = (
            self.resolve_project() if revived is None else (self.workdir, self.workdir)
        )
        self.runtime_dir = self.rundir.sockets
        self.cidfile = self.rundir.cid
        self.container_id = ""
        self.started = time.monotonic()
        self.stopping = False
        self.exit_reason = ""
        self.pooled = False
        #: A cold start's container (Backend.start_cold); None for a claimed warm one.
        self.cold: Cold | None = None
        #: A claimed warm container's claim connection, its lifeline.
        self.lifeline: socket.socket | None = None
        self.last_interrupt = float("-inf")
        self.client_pid = client_pid or os.getppid()
        self.launcher_pid = launcher_pid or os.getpid()
        #: The kernel's kept output and exit, for `jupyter-docker-kernel logs`.
        self.kernel_log: kernel_log.KernelLog | None = None
        #: With --copy-workdir: what prepare()/adopt() found to stream into the container.
        self.copy_entries: list[workcopy.Entry] | None = None
        self._launch: hardening.Launch | None = None
        self._lock = threading.Lock()
        self._removing = False
        self._refill: Refill | None = None
        #: The claim said starts come faster than a refill takes (pool.refill_at_claim).
        self._refill_now = False
        self._guard: Watch | None = None
        self._timer: threading.Timer | None = None
        self._forwards: list[threading.Thread] = []
        self._copying: threading.Thread | None = None  # send_workdir's
        #: Set when the container's output streams ended (_drain): the supervisor (or the
        #: attached `docker run`) is gone, so the engine's report of the exit is near.
        self.output_ended = threading.Event()
        #: The end of the engine CLI's / supervisor's stderr, to explain an end.
        self._said = bytearray()
        if revived is not None:
            self._revive(revived)

    def _revive(self, state: dict[str, Any]) -> None:
        """__init__'s end for a `revived` container: what the hand-over state says."""
        self.name = str(state["name"])
        self.container_id = str(state["id"])
        self.started = float(state["started"])
        self.pooled = bool(state["pooled"])

    # -- preparation (before any container exists) ------------------------------------------

    def resolve_project(self) -> tuple[str, str]:
        """(root, notebook dir) for this start (setup --workdir-root): the root checked
        with the --mount templates it fills in; LaunchError before anything exists."""
        # With --no-workdir (never with a root) this is (cwd, cwd): only templates are checked.
        root, cwd = project_root(self.workdir, self.settings)
        templates = [m.resolved(root, cwd) for m in self.settings.mounts if m.template]
        if root != cwd or templates:
            check_project(
                root,
                cwd,
                templates,
                home=self.home,
                sockets=self.backend.sockets(),
            )
        return root, cwd

    def launch_facts(self) -> hardening.Launch:
        """What this start adds to the settings (paths, ids, who we are); built once."""
        if self._launch is None:
            self._launch = hardening.Launch(
                kernel_id=self.kernel_id,
                container_name=self.name,
                runtime_dir=str(self.runtime_dir),
                connection_file=str(self.rundir.connection),
                supervisor_path=SUPERVISOR_PATH,
                host_uid=os.getuid(),
                host_gid=os.getgid(),
                workdir=self.workdir,
                project_root=self.project if self.project != self.workdir else "",
                launcher_pid=self.launcher_pid,
                launcher_start=process_start_time(self.launcher_pid),
                hostname=socket.gethostname(),
                workdir_owner=owner_of(self.workdir, self.settings),
                env_file=str(self.rundir.env_file) if self.settings.env else None,
                kernelspec=str(self.connection.get("kernel_name") or ""),
                client_pid=self.client_pid,
            )
        return self._launch

    def prepare(self) -> hardening.Launch:
        """Create the runtime dir, the in-container connection file and the workdir copy."""
        self.rundir.create()
        self.rundir.mark_owner(self.launcher_pid)
        launch = self.launch_facts()
        workdir = launch.workdir
        if self.settings.workdir != "none" and workdir == "/":
            raise LaunchError(
                "The kernel's working directory is '/', and mounting the host's root into the "
                "container would expose everything. No container was started. Start Jupyter "
                "from your notebooks' directory, or run setup with --no-workdir."
            )
        uid, gid = (int(x) for x in hardening.kernel_user(self.settings, launch).split(":"))
        if self.settings.kernel_user == OWNER_USER and f"{uid}:{gid}" != launch.workdir_owner:
            # Root-owned (never uid 0), unreadable, or a non-root launcher (it cannot hand
            # its private runtime dir to another uid): the default user instead.
            self.log.warning(
                "kernel_user owner: the kernel runs as %d:%d, not as the owner (%s) of its work "
                "directory %s: the owner is taken only when the launcher runs as root, and "
                "never when it is root.",
                uid,
                gid,
                launch.workdir_owner or "unknown",
                workdir,
            )
        self._write_connection_file(launch.connection_file, uid, gid, launch)
        if launch.env_file is not None:
            write_private(launch.env_file, hardening.env_file_text(self.settings))
        if self.settings.workdir == "copy":
            if ":" in self.project:
                raise LaunchError(
                    f"The work directory {self.project} contains ':', which the engine's "
                    "--tmpfs option cannot carry. No container was started. Rename the "
                    "directory, or use --no-workdir."
                )
            self.copy_entries = self.scan_workdir()
        elif self.settings.workdir == "mount":
            if not self.settings.workdir_readonly:
                refuse_grading_mount(self.workdir)
                if self.project != self.workdir:
                    refuse_grading_mount(self.project)
            warn_about_workdir(self.project, uid, gid, self.settings.workdir_readonly)
        return launch

    def scan_workdir(self) -> list[workcopy.Entry]:
        """What --copy-workdir will stream, checked against its caps before anything starts."""
        return workcopy.scan(
            self.project,
            limit=size_bytes(self.settings.copy_limit),
            max_entries=self.settings.tmp_inodes,
        )

    def kernel_connection(self) -> dict[str, Any]:
        """The kernel's connection info (kernel_connection): its sockets, the client's key."""
        return kernel_connection(self.settings, self.connection)

    def _write_connection_file(
        self, path: str, uid: int, gid: int, launch: hardening.Launch
    ) -> None:
        """The in-container connection file, readable by the kernel's uid only."""
        conn = self.kernel_connection()
        group_only = hardening.shares_group_only(self.settings, launch)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640 if group_only else 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(conn, fh)
        if group_only:
            # A dedicated kernel uid in our group: it reads the file and binds sockets by
            # group permission (its umask is 007), and we reach them the same way.
            os.chmod(self.runtime_dir, 0o770)  # noqa: S103 - inside our 0700 base dir
        elif uid != os.getuid():
            # Root launching for an unprivileged kernel uid: the kernel must own its files.
            os.chown(self.runtime_dir, uid, gid)
            os.chown(path, uid, gid)

    # -- start ------------------------------------------------------------------------------

    def start_watchdog(self) -> int:
        """The argv launcher's watchdog (a fork: call it before any thread runs); returns
        the fd whose closing (our exit, however it comes) sets it off."""
        return self.backend.watchdog(self.name, self.cidfile, self.base)

    def start(self) -> None:
        """Claim a ready warm container (pooled settings) or start a cold one."""
        claimed = None
        if self.settings.pool:
            claimed = self.backend.claim(self.settings, runtime_base(), self.base)
        if claimed is not None:
            self.mark("warm container claimed")
            self.adopt(claimed)
            self.mark("connection handed over")
        else:
            launch = self.prepare()
            self.cold = self.backend.start_cold(self.settings, launch, self.rundir)
            self.container_id = self.cold.container_id
            if self.copy_entries is not None:
                self.send_workdir(self.cold.write)
            self.mark("cold container started")

    def adopt(self, claimed: pool.Claim) -> None:
        """Take over a claimed warm container (its dir is ours now): the kernel gets its key.
        Its exit is then awaited through the backend (wait)."""
        self.rundir.mark_owner(self.launcher_pid)
        self.container_id = claimed.container_id
        if not self.container_id:  # claimed before its starter wrote the id down
            info = self.backend.inspect(claimed.container_name) or {}
            self.container_id = str(info.get("Id") or claimed.container_name)
            self.cidfile.write_text(self.container_id)
        # Off the start path: the CPU weight the spec gives, if its refill did not raise it
        # yet (pool.raise_when_ready), then our kernel's name, for `docker ps` and gc.
        self._in_thread(self._settle_claimed, claimed.container_name, claimed.raised)
        self._refill_now = claimed.refill_now
        cwd = hardening.HOME
        if self.settings.workdir == "copy":
            self.copy_entries = self.scan_workdir()
            # The root's copy is at WORK_TARGET: the notebook's directory is below it.
            inside = os.path.relpath(self.workdir, self.project)
            cwd = pool.WORK_TARGET if inside == "." else f"{pool.WORK_TARGET}/{inside}"
        self.lifeline = pool.hand_over(claimed, self.kernel_connection(), cwd)
        self.pooled = True
        if self.copy_entries is not None:
            # After the claim line, on the same connection: the supervisor unpacks it into
            # the container's /work tmpfs before its kernel takes the line.
            self.send_workdir(self.lifeline.sendall)

    def _settle_claimed(self, pooled_name: str, raised: bool) -> None:
        if not raised and pool.lowers_priority(self.settings):
            try:
                self.backend.update(self.container_id, pool.cpu_shares(self.settings))
            except DockerKernelError as exc:
                self.log.warning(
                    "could not raise the CPU weight of warm container %s (it keeps the "
                    "warm pool's low weight, and yields to busier containers): %s",
                    pooled_name,
                    exc,
                )
        if not self.backend.rename(self.container_id, self.name):
            self.log.warning("could not rename warm container %s to %s", pooled_name, self.name)

    def send_workdir(self, write: Any) -> None:
        """Stream the work dir's copy (prepare()/adopt() scanned it) in a thread: into
        `docker run -i`'s stdin, or over the claim socket. That channel stays open after:
        it is the supervisor's lifeline. On failure the kernel, which never started, is
        removed, and the log says why."""
        entries = self.copy_entries
        assert entries is not None

        def run() -> None:
            try:
                workcopy.send(self.project, entries, write)
            except (OSError, DockerKernelError) as exc:
                if not self.stopping:
                    self.log.error("could not send the work directory's copy: %s", exc)
                    self.stop(f"its work directory's copy could not be sent: {exc}")

        self._copying = threading.Thread(target=run, daemon=True)
        self._copying.start()

    def copy_sent(self, timeout: float) -> bool:
        """Whether the work dir's copy (send_workdir) has been written whole, or there is
        none; waits up to `timeout` s. hosting.hand_over_kernel hands the lifeline over
        only after it: the copy is written from this process. False also when the copy
        failed (the kernel is being stopped)."""
        if self._copying is not None:
            self._copying.join(timeout)
            if self._copying.is_alive():
                return False
        return not self.stopping

    def spawn_refill(self) -> None:
        """Top the warm pool up for the next kernel, in a process that outlives us: spawned
        now, it waits at its gate until attach() opens it (after the first reply), our
        process ends (EOF: a one-shot client such as nbconvert), or FIRST_REPLY_WAIT.
        When our claim found starts coming faster than a refill takes, the gate opens now:
        waiting for the first reply would leave the pool empty for the start after ours."""
        try:
            self._refill = self.backend.fill(self.settings, runtime_base(), self.launch_facts())
        except OSError as exc:
            self.log.warning("could not refill the warm pool: %s", exc)
            return
        if self._refill_now:
            self._refill.open()

    # -- running ----------------------------------------------------------------------------

    def attach(self, bytes_to_host: Callable[[], int], detail: str = "") -> None:
        """Start watching the running container; the adapter's relay is set up (not
        necessarily serving yet). bytes_to_host: how much its relay has sent the client
        (the first reply opens the refill gate). detail: the adapter's words for the start
        line. The guard comes first: no notebook code runs before a client is connected."""
        self.guard()
        # A pooled kernel's raw output and its supervisor's words come over the lifeline.
        keep = self.open_log()
        # In a thread: a cold start's outputs are there once the engine has started it
        # (Held), and the provisioner calls this on the server's event loop. In our
        # caller's context: a resident helper finds the session whose client gets
        # forward's own log lines (helper.CURRENT) there.
        self._forwards = [
            threading.Thread(
                target=contextvars.copy_context().run, args=(self._drain, keep), daemon=True
            )
        ]
        self._forwards[0].start()
        # The supervisor enforces the lifetime inside; the kernel runs as the same uid and
        # could stop it, so we enforce it here too, a little later.
        self._timer = threading.Timer(
            self.settings.max_lifetime + LIFETIME_GRACE,
            self.stop,
            (f"maximum lifetime of {self.settings.max_lifetime:g} s reached",),
        )
        self._timer.daemon = True
        self._timer.start()
        if self.settings.pool:
            self.spawn_refill()
        threading.Thread(
            target=self._log_started, args=(bytes_to_host, detail), daemon=True
        ).start()

    def guard(self) -> None:
        """Start watching the socket dir (SocketDirGuard), once: attach() does it first; an
        adapter that serves its relay before the rest of attach calls it before the relay."""
        # A backend whose kernels' socket dirs are elsewhere watches them there (a node's).
        make = getattr(self.backend, "socket_dir_guard", SocketDirGuard)
        with self._lock:
            if self._guard is None:
                self._guard = make(self.runtime_dir, socket_names(), self._socket_dir_violated)

    def _drain(self, keep: kernel_log.KernelLog | None) -> None:
        """Forward the container's output streams to our stderr and the kept log, one
        thread each (kernel_log.forward, capped), until they end; the first stream's tail
        is what the supervisor said last (the exit's explanation)."""
        streams: list[Any] = [self.lifeline] if self.cold is None else self.cold.outputs()
        out = self.out or sys.stderr.buffer
        threads = [
            threading.Thread(
                target=contextvars.copy_context().run,  # threads do not inherit it
                args=(forward, stream, out, self.name, self._said if i == 0 else None, keep),
                daemon=True,
            )
            for i, stream in enumerate(streams)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.output_ended.set()

    def _log_started(self, bytes_to_host: Callable[[], int], detail: str) -> None:
        """Log the start once the container id is known; after the kernel's first reply
        (or FIRST_REPLY_WAIT), open the refill's gate: a refill's `docker run` competes for
        the CPU with the kernel that is answering right now."""
        for _ in range(600):
            if not self.container_id:
                self.container_id = self.rundir.read_cid()
            if self.container_id or self.stopping:
                break
            time.sleep(0.05)
        if self.kernel_log is not None:
            self.kernel_log.update(container_id=self.container_id)
        self.log.info(
            "kernel %s started in %scontainer %s (%s) from %s: %s%s",
            self.kernel_id,
            "warm " if self.pooled else "",
            self.name,
            short_id(self.container_id),
            self.settings.image,
            limits_summary(self.settings),
            detail,
        )
        for _ in range(int(FIRST_REPLY_WAIT / 0.02)):
            if bytes_to_host() >= FIRST_REPLY_BYTES:
                self.mark("first reply relayed")
                break
            time.sleep(0.02)
        if self._refill is not None:
            self._refill.open()

    def open_log(self) -> kernel_log.KernelLog | None:
        """Start keeping the kernel's output and exit for `logs` (see kernel_log.py)."""
        launch = self.launch_facts()
        self.kernel_log = kernel_log.KernelLog.create(
            runtime_base(),
            self.name,
            {
                "kernel_id": self.kernel_id,
                "kernelspec": launch.kernelspec,
                "image": self.settings.image,
                "memory": self.settings.memory,
                "client_pid": self.client_pid,
                "launcher_pid": launch.launcher_pid,
                "launcher_start": launch.launcher_start,
                "workdir": launch.workdir,
                "container_id": self.container_id,
                "warm": self.pooled,
            },
        )
        return self.kernel_log

    def interrupt(self, *, block: bool = False) -> None:
        """SIGINT to the kernel (the client's interrupt); its time is kept for the exit
        line's 130 rule (exit_verdict). Returns at once (the engine call runs in a thread)
        unless block."""
        self.last_interrupt = time.monotonic()
        # jupyter_client interrupts before every shutdown; we cannot tell which this is yet,
        # so say both (the exit line then says whether it was the shutdown's).
        self.log.info(
            "interrupt: sending SIGINT to the kernel in %s (a user's interrupt, or the first "
            "step of a shutdown)",
            self.name,
        )
        call = self._quietly if block else self._in_thread
        call(self.backend.signal, self.container_id or self.name, "INT")

    def interrupted_lately(self) -> bool:
        """Whether an interrupt was sent in the last INTERRUPT_EXIT_WINDOW seconds."""
        return time.monotonic() - self.last_interrupt < INTERRUPT_EXIT_WINDOW

    def signal(self, sig: str) -> None:
        """Another signal by name ("HUP", "USR1"), through the engine (blocks)."""
        if sig == "INT":
            self.interrupt(block=True)
            return
        self._quietly(self.backend.signal, self.container_id or self.name, sig)

    def stop(
        self,
        reason: str = "stopped by the Jupyter client",
        *,
        term: bool = False,
        block: bool = False,
    ) -> None:
        """Stop the kernel: the first reason wins and becomes the exit line's. Removes the
        container (in a thread, once; with block, here and again), or with term=True sends
        it SIGTERM, which the supervisor passes to the kernel (the provisioner's
        terminate). Any thread; the relay's and the guard's alarms call it too."""
        with self._lock:
            if not self.stopping:
                self.stopping = True
                self.exit_reason = reason
                # A Cold may pass the reason on (broker_client: to the broker's audit line).
                note = getattr(self.cold, "note_stop", None)
                if note is not None:
                    note(reason)
            remove = not term and (block or not self._removing)
            self._removing = self._removing or remove
        target = self.container_id or self.name
        if term:
            self._quietly(self.backend.signal, target, "TERM")
        elif remove:
            self.log.info("terminate: removing container %s", self.name)
            call = self._quietly if block else self._in_thread
            call(self.backend.remove, target)

    def _socket_dir_violated(self, reason: str) -> None:
        """The socket dir guard's alarm (its thread): kill the container at once, through
        the API where we can (every millisecond is more of the host's disk), then remove it."""
        self.log.warning("stopping the kernel in %s: %s", self.name, reason)
        self.backend.kill_now(self.container_id or self.name)
        self.stop(reason)

    def mark(self, what: str) -> None:
        """A point of the start timeline, logged at debug level (--debug)."""
        self.log.debug(
            "start timeline: %s at %.0f ms", what, (time.monotonic() - self.started) * 1000
        )

    # -- the end ----------------------------------------------------------------------------

    def wait(self) -> Ending:
        """Block until the container exits; then its code, reason and kill notice."""
        if self.cold is not None:
            code = self.cold.wait()
        else:
            code = self.backend.wait(self.container_id or self.name)
        for thread in self._forwards:
            thread.join(timeout=5)
        self._close_pipes()
        if self._guard is not None:
            self._guard.close()
        if self._timer is not None:
            self._timer.cancel()
        said = bytes(self._said).decode(errors="replace")
        if self.cold is not None:
            said += self.cold.words()
        return self.ending(
            code,
            said,
            cold=self.cold is not None,
            # A Cold may know why it ended (node_backend: the node's SSH connection lost).
            ended_by=str(getattr(self.cold, "ended_by", "")),
            node=str(getattr(self.cold, "node", "")),
        )

    def ending(
        self, code: int, said: str, *, cold: bool, ended_by: str = "", node: str = ""
    ) -> Ending:
        """The Ending of exit `code`: our reason (the first stop's; for a cold start's
        137 the engine's OOM verdict, else `ended_by`), the kill notice for the notebook.
        said: what the supervisor said last. wait() calls it, and finish.py for a kernel
        the compiled client held (it read the code and the last words itself)."""
        if cold and code == OOM_EXIT and not self.exit_reason:
            self.exit_reason = self.engine_exit_reason()
        if cold and not self.exit_reason:
            self.exit_reason = ended_by
        from jupyter_docker_kernel.notice import kill_notice  # only now: not on the start path

        notice = kill_notice(
            code,
            self.exit_reason,
            said,
            output_budget=self.settings.output_budget,
            max_message=self.settings.max_message,
            stopping=self.stopping,
        )
        return Ending(
            code=code,
            reason=self.exit_reason,
            stopping=self.stopping,
            interrupted=self.interrupted_lately(),
            said=said,
            notice=notice,
            cold=cold,
            node=node,
        )

    def engine_exit_reason(self) -> str:
        """Why the engine says the exited container died, for what the supervisor inside
        could not report: under gVisor it cannot read the cgroup's OOM count, and an OOM
        ends the whole sandbox with it. Only when run_args kept the container (no --rm);
        "" when the engine has nothing to add. wait() calls it on exit code 137."""
        if not hardening.is_gvisor(self.settings):
            return ""
        try:
            data = self.backend.inspect(self.container_id or self.name)
        except DockerKernelError as exc:
            self.log.debug("no exit reason from the engine: %s", exc)
            return ""
        if not data or not data.get("State", {}).get("OOMKilled"):
            return ""
        limit = int(data.get("HostConfig", {}).get("Memory") or 0)
        return f"out of memory (limit {limit >> 20} MiB), as the engine reports"

    def finish(self, ending: Ending, relayed: Relayed) -> int:
        """Log the exit line (and why a cold start failed), end the kept log; returns the
        code. The adapter calls it once it has published ending.notice (if any)."""
        ran = time.monotonic() - self.started
        report = exit_report(self.name, ending, ran, relayed, self.settings)
        self.log.log(report.level, "%s", report.line)
        reason = exit_verdict(
            ending.code, ending.reason, stopping=ending.stopping, interrupted=ending.interrupted
        )[1]
        if self.kernel_log is not None:
            self.kernel_log.finish(ending.code, reason, ran, ending.notice)
        with contextlib.suppress(OSError, DockerKernelError):
            kernel_log.prune_now_and_then(runtime_base(), alive)
        if report.failure:
            self.log.error("%s", report.failure)
        return ending.code

    def close(self) -> None:
        """Remove our container (if still there) and our files; idempotent. Also lets a
        refill still at its gate go (EOF)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._guard is not None:
            self._guard.close()
        if self._refill is not None:
            self._refill.close()
        if self.lifeline is not None:
            self.lifeline.close()
        self._close_pipes()
        with contextlib.suppress(DockerKernelError):
            if self.container_id or self.cidfile.exists():
                self.backend.remove(self.container_id or self.name)
        remove_tree(self.base)

    def let_go(self) -> None:
        """After a hand-over (hosting.hand_over_kernel): close this process's copies of
        the lifeline, the exit watch and the kept log's descriptor without ending anything
        (the compiled client holds its own copies now). The refill stays at its gate (the
        caller opens it), the container and the runtime dir stay: finish.py removes them."""
        let_go = getattr(self.cold, "let_go", None)
        if let_go is not None:
            let_go()
        if self.lifeline is not None:
            self.lifeline.close()  # not shut down: the client's copy is the same socket
            self.lifeline = None
        if self.kernel_log is not None:
            with self.kernel_log.lock:
                self.kernel_log._close()

    def _close_pipes(self) -> None:
        if self.cold is not None:
            self.cold.close()

    def _in_thread(self, func: Callable[..., Any], *args: Any) -> None:
        """Run an engine call in a thread of its own; log (not raise) its failure."""
        threading.Thread(target=self._quietly, args=(func, *args), daemon=True).start()

    def _quietly(self, func: Callable[..., Any], *args: Any) -> None:
        """Run an engine call; log (not raise) its failure: the container may be gone."""
        try:
            func(*args)
        except DockerKernelError as exc:
            self.log.warning("%s", exc)


class Running:
    """A started Container and the thread that waits for its end (Container.wait): an
    adapter without an event loop of its own (the provisioner's poll(), a host of many
    kernels) checks `done` instead of running an engine call or holding a Popen."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.done = threading.Event()
        self.ending: Ending | None = None
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            self.ending = self.container.wait()
        finally:
            self.done.set()

    @property
    def code(self) -> int:
        """The exit code once done (1 if waiting itself failed)."""
        return self.ending.code if self.ending is not None else 1
