"""The kernelspec's argv: start the kernel's container, relay its channels, always clean up.

A Jupyter client runs `python -I -m jupyter_docker_kernel.launcher -f {connection_file}`
(the settings JSON in kernel.json's env, kernelspec.SETTINGS_ENV; specs of earlier versions
pass `--settings JSON` instead) and treats this process as the kernel: it polls it for
liveness, sends it SIGINT to interrupt (interrupt_mode "signal"), SIGTERM/SIGKILL to stop
it. We turn those into container actions. Nothing here parses Jupyter messages; relay.py
moves bytes.

Cleanup never depends on this process surviving: a watchdog process (own session, so the
client's killpg does not reach it) removes the container and our files when we die, and
the in-container supervisor ends the kernel when our `docker run -i` stdin goes away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from jupyter_docker_kernel import hardening, hostpython, kernel_log, pool, workcopy
from jupyter_docker_kernel.endpoints import CHANNELS, Route, client_cwd, host_endpoints, listen
from jupyter_docker_kernel.engine import Engine, explain_run_failure, short_id, use_host
from jupyter_docker_kernel.errors import DockerKernelError, LaunchError
from jupyter_docker_kernel.kernelspec import SETTINGS_ENV
from jupyter_docker_kernel.settings import OWNER_USER, KernelSettings, size_bytes
from jupyter_docker_kernel.socketdir import SocketDirGuard
from jupyter_docker_kernel.workdir import check_project, engine_sockets, project_root

log = logging.getLogger("jupyter_docker_kernel.launcher")

SUPERVISOR_PATH = str(Path(__file__).with_name("_supervise.py"))
#: What we forward of the engine CLI's own output (the kernel's raw stdout/stderr).
FORWARD_LIMIT = 4 << 20
#: How long after max_lifetime the launcher removes a container the supervisor did not end.
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
#: How long the launcher stays after publishing a kill notice, so that the client has read
#: it before it sees the kernel's process gone (nbclient checks every second).
NOTICE_LINGER = 0.3
INTERRUPT_EXIT_WINDOW = 5.0
#: Name prefix of every container and runtime dir we create.
NAME_PREFIX = "jdk"
#: The `docker run --env-file` in a kernel's base dir (the engine CLI reads it; not mounted).
ENV_FILE = "env"


def kernel_id_from(connection_file: str) -> str:
    """The kernel id jupyter_client put in the file name (kernel-<id>.json), made name-safe."""
    stem = Path(connection_file).name
    stem = stem.removesuffix(".json")
    stem = stem.removeprefix("kernel-")
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", stem).strip("-.") or "kernel"
    return safe[:36]


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks: with the pid, it names a process uniquely."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # Field 22; the command name (field 2) may hold spaces, so split after ')'.
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid_text: str, start: str) -> bool:
    """True while the process with this pid (and, given, this start time) still runs."""
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    current = process_start_time(pid) if pid > 0 else ""
    return bool(current) and (not start or current == start)


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


def wait_exit_code(output: str) -> int:
    """The exit code `docker wait` printed; 1 if it printed none (the engine failed)."""
    text = output.strip()
    return int(text) if text.lstrip("-").isdigit() else 1


def limits_summary(s: KernelSettings) -> str:
    """The limits a kernel's start log line names (launcher and provisioner alike)."""
    runtime = f", runtime {s.runtime}" if s.runtime else ""
    return f"network {s.network}, memory {s.memory}, cpus {s.cpus:g}, pids {s.pids_limit}{runtime}"


def kill_now(engine: Engine, container: str) -> None:
    """SIGKILL a container through the engine's API, quietly; a no-op without the API (the
    caller removes it through the CLI next anyway)."""
    with contextlib.suppress(DockerKernelError):
        api = engine.api()
        if api.available():
            api.kill(container)


def socket_names() -> list[str]:
    """What may appear in a kernel's socket dir: its five sockets and a warm one's claim."""
    names = [f"{hardening.SOCKET_PREFIX}-{index}" for index in range(1, len(CHANNELS) + 1)]
    return [*names, hardening.CLAIM_SOCKET]


def process_age() -> float:
    """Seconds since this process was started (exec included); 0.0 if /proc cannot tell."""
    try:
        ticks = int(process_start_time(os.getpid()))
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError):
        return 0.0
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def owner_of(workdir: str, settings: KernelSettings) -> str:
    """The uid:gid owning the work dir, for kernel_user "owner" ("" otherwise, or when it
    cannot be read): looked up at each start, as the notebook's directory changes."""
    if settings.kernel_user != OWNER_USER:
        return ""
    try:
        st = os.stat(workdir)
    except OSError:
        return ""
    return f"{st.st_uid}:{st.st_gid}"


def write_private(path: str | Path, text: str) -> None:
    """Create a file only we can read (0600, never an existing one or a link), with text."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def runtime_base() -> Path:
    """A private (0700, ours) directory for per-kernel runtime dirs, made on first use.

    Launcher, provisioner, pool, gc, list and doctor all call this and must agree: see
    runtime_base_choice() for how, also when another local user took the usual place.
    """
    return runtime_base_choice()[0]


def runtime_base_choice() -> tuple[Path, str]:
    """The runtime base, and why the usual one is not used ("" when it is).

    The usual one is $XDG_RUNTIME_DIR/jupyter-docker-kernel (a private tmpfs, when set),
    else <tmp>/jupyter-docker-kernel-<uid>. Anyone may create the latter name first (a
    directory they own, a file, a symlink): then we do not refuse service, we fall back to
    one of ours named <tmp>/jdk-<uid>-<time><random>, which nobody else can create in time
    or take from us (/tmp is sticky). Every process picks the oldest
    such dir that is still ours and private, so all of one user's processes agree on it,
    and gc/pool find each other's dirs. doctor reports the fallback and why.
    """
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        usual = Path(xdg) / "jupyter-docker-kernel"
    else:
        usual = Path(tempfile.gettempdir()) / f"jupyter-docker-kernel-{uid}"
    with contextlib.suppress(OSError):  # exists already (ours or not), or cannot be made
        usual.mkdir(mode=0o700)
    problem = not_private(usual, uid)
    if not problem:
        return usual, ""
    why = f"{usual} {problem}"
    if why not in _WARNED:
        _WARNED.add(why)
        log.warning("%s; using a private runtime dir of our own instead", why)
    return fallback_base(uid, why), why


#: Fallback reasons already logged by this process (one warning each, not one per call).
_WARNED: set[str] = set()


def not_private(path: Path, uid: int) -> str:
    """Why path is not a private directory of uid's ("" when it is): a symlink, another
    owner or group/other permissions would let someone else reach our sockets and files."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a file or symlink is in its place)"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return ""


def fallback_base(uid: int, why: str) -> Path:
    """The oldest private <tmp>/jdk-<uid>-<time><random> of ours, made if there is none.

    Names sort by creation time (ms), so two processes making one at once both end up with
    the older (the other's is removed while still empty); dirs of other owners, and names
    someone made ahead of time, are skipped. Short, as socket paths below it are limited.
    """
    tmp = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{NAME_PREFIX}-{uid}-[0-9a-f]{{14}}$")

    def oldest() -> Path | None:
        with contextlib.suppress(OSError), os.scandir(tmp) as entries:
            names = sorted(e.name for e in entries if pattern.match(e.name))
            return next((tmp / n for n in names if not not_private(tmp / n, uid)), None)
        return None

    found = oldest()
    if found is not None:
        return found
    error: OSError | None = None
    for _ in range(5):  # a name taken ahead of time by someone else: try a new one
        mine = (
            tmp / f"{NAME_PREFIX}-{uid}-{time.time_ns() // 1_000_000:011x}{os.urandom(2).hex()[:3]}"
        )
        try:
            mine.mkdir(mode=0o700)
            break
        except OSError as exc:
            error = exc
    else:
        raise LaunchError(
            f"{why}, and no private directory could be made in {tmp} instead: "
            f"{error.strerror if error else ''}",
            "No kernel was started",
            "Set XDG_RUNTIME_DIR (or TMPDIR) to a private directory of yours.",
        )
    found = oldest() or mine
    if found != mine:
        with contextlib.suppress(OSError):
            mine.rmdir()
    return found


class Launcher:
    """One kernel's lifetime, from connection file to cleanup. Used by main() only."""

    def __init__(
        self,
        settings: KernelSettings,
        connection_file: str,
        engine: Engine | None = None,
        *,
        kernel_id: str | None = None,
        base: Path | None = None,
        workdir: str | None = None,
        client_pid: int | None = None,
    ) -> None:
        """kernel_id, base and workdir default to what an argv launcher has (the connection
        file's name, a fresh dir, its cwd); the provisioner passes its own, as its base
        dir outlives restarts. client_pid: the Jupyter client's (our parent by default;
        the provisioner runs inside the server and passes the server's)."""
        self.settings = settings
        self.connection_file = connection_file
        self.engine = engine or Engine()
        try:
            with open(connection_file) as fh:
                self.connection: dict[str, Any] = json.load(fh)
        except (OSError, ValueError) as exc:
            raise LaunchError(
                f"Cannot read the connection file {connection_file}: {exc}. No container was "
                "started. The launcher must be run by a Jupyter client with {connection_file}."
            ) from exc
        self.kernel_id = kernel_id or kernel_id_from(connection_file)
        nonce = os.urandom(3).hex()
        self.name = f"{NAME_PREFIX}-{self.kernel_id}-{nonce}"
        self.base = base or runtime_base() / f"{self.kernel_id}-{nonce}"
        self.workdir = workdir or os.getcwd()
        #: The directory mounted (or copied) at its own path, self.workdir inside it.
        self.project, self.workdir = self.resolve_project()
        self.runtime_dir = self.base / "rt"
        self.cidfile = self.base / "cid"
        self.container_id = ""
        self.started = time.monotonic()
        self.stopping = False
        self.exit_reason = ""
        self.pooled = False
        self.lifeline: socket.socket | None = None
        self.last_interrupt = float("-inf")
        self.client_pid = client_pid or os.getppid()
        #: The kernel's kept output and exit, for `jupyter-docker-kernel logs`.
        self.kernel_log: kernel_log.KernelLog | None = None
        #: With --copy-workdir: what prepare()/adopt() found to stream into the container.
        self.copy_entries: list[workcopy.Entry] | None = None

    # -- preparation (before any container exists) ------------------------------------------

    def resolve_project(self) -> tuple[str, str]:
        """(root, notebook dir) for this start (setup --workdir-root): the root checked
        with the --mount templates it fills in; LaunchError before anything exists.

        Called once, from __init__, by the argv launcher and the provisioner alike (both
        hand us the client's cwd as self.workdir), so its one log line is logged once.
        """
        # With --no-workdir (never with a root) this is (cwd, cwd): only templates are checked.
        root, cwd = project_root(self.workdir, self.settings)
        templates = [m.resolved(root, cwd) for m in self.settings.mounts if m.template]
        if root != cwd or templates:
            check_project(
                root,
                cwd,
                templates,
                home=os.path.expanduser("~"),
                sockets=engine_sockets(self.engine),
            )
        return root, cwd

    def prepare(self) -> hardening.Launch:
        """Create the runtime dir, the in-container connection file and the workdir copy."""
        self.base.mkdir(mode=0o700)
        self.runtime_dir.mkdir(mode=0o700)
        self._write_marker()
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
            log.warning(
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

    def launch_facts(self) -> hardening.Launch:
        """What this start adds to the settings (paths, ids, who we are); no side effects."""
        return hardening.Launch(
            kernel_id=self.kernel_id,
            container_name=self.name,
            runtime_dir=str(self.runtime_dir),
            connection_file=str(self.base / "kernel.json"),
            supervisor_path=SUPERVISOR_PATH,
            host_uid=os.getuid(),
            host_gid=os.getgid(),
            workdir=self.workdir,
            project_root=self.project if self.project != self.workdir else "",
            launcher_pid=os.getpid(),
            launcher_start=process_start_time(os.getpid()),
            hostname=socket.gethostname(),
            workdir_owner=owner_of(self.workdir, self.settings),
            env_file=str(self.base / ENV_FILE) if self.settings.env else None,
            kernelspec=str(self.connection.get("kernel_name") or ""),
            client_pid=self.client_pid,
        )

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

    def close_log(self, code: int, reason: str) -> None:
        """Record the kernel's exit in its kept log, then drop logs past their time."""
        if self.kernel_log is not None:
            self.kernel_log.finish(code, reason, time.monotonic() - self.started)
        with contextlib.suppress(OSError, DockerKernelError):
            kernel_log.prune(runtime_base(), alive)

    def _write_marker(self) -> None:
        """Who owns this runtime dir: gc keeps it (and its container) while we live."""
        (self.base / "launcher").write_text(f"{os.getpid()} {process_start_time(os.getpid())}")

    def adopt(self, claimed: pool.Claim) -> None:
        """Take over a claimed warm container (its dir is ours now): the kernel gets its key.

        The container's exit is then awaited through the engine's API (run_async).
        """
        self._write_marker()
        self.container_id = claimed.container_id
        if not self.container_id:  # claimed before its starter wrote the id down
            info = self.engine.container_inspect(claimed.container_name) or {}
            self.container_id = str(info.get("Id") or claimed.container_name)
            self.cidfile.write_text(self.container_id)
        # Off the start path: our kernel's name on the container, for `docker ps` and gc.
        self._in_thread(self._rename_claimed, claimed.container_name)
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

    def scan_workdir(self) -> list[workcopy.Entry]:
        """What --copy-workdir will stream, checked against its caps before anything starts."""
        return workcopy.scan(
            self.project,
            limit=size_bytes(self.settings.copy_limit),
            max_entries=self.settings.tmp_inodes,
        )

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
                    log.error("could not send the work directory's copy: %s", exc)
                    self._terminate(f"its work directory's copy could not be sent: {exc}")

        threading.Thread(target=run, daemon=True).start()

    def kernel_connection(self) -> dict[str, Any]:
        """The kernel's connection info: ipc sockets in RUNTIME_TARGET, the client's key.

        With kernel_transport "tcp": ports on the container's loopback, which the
        supervisor bridges to the same socket paths (see hardening.BRIDGE_PORT_BASE).
        """
        tcp = self.settings.kernel_transport == "tcp"
        conn: dict[str, Any] = {
            "transport": "tcp" if tcp else "ipc",
            # 127.0.0.1 inside the container's own network namespace, never the host's.
            "ip": "127.0.0.1" if tcp else f"{hardening.RUNTIME_TARGET}/{hardening.SOCKET_PREFIX}",
            "key": self.connection.get("key", ""),
            "signature_scheme": self.connection.get("signature_scheme", "hmac-sha256"),
            "kernel_name": self.connection.get("kernel_name", ""),
        }
        for index, channel in enumerate(CHANNELS, start=1):
            conn[f"{channel}_port"] = hardening.BRIDGE_PORT_BASE + index if tcp else index
        return conn

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

    def routes(self) -> list[Route]:
        endpoints = host_endpoints(self.connection, relative_to=client_cwd())
        return [
            Route(
                channel,
                endpoints[channel],
                str(self.runtime_dir / f"{hardening.SOCKET_PREFIX}-{index}"),
            )
            for index, channel in enumerate(CHANNELS, start=1)
        ]

    # -- the watchdog -------------------------------------------------------------------------

    def start_watchdog(self) -> int:
        """Fork a process that cleans up after us however we die; returns the lifeline fd.

        It blocks reading a pipe whose only writer is this process; EOF means we are gone
        (exit, crash or SIGKILL). It then force-removes our container and runtime dir. Two
        forks and setsid: it is nobody's zombie and the client's killpg does not reach it.
        """
        read_fd, write_fd = os.pipe()
        engine_exe = self.engine.executable()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked child
            try:
                os.close(write_fd)
                os.setsid()
                if os.fork() > 0:
                    os._exit(0)
                for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_IGN)
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                while os.read(read_fd, 64):
                    pass
                _watchdog_cleanup(engine_exe, self.name, self.cidfile, self.base)
            finally:
                os._exit(0)
        os.close(read_fd)
        os.waitpid(pid, 0)
        return write_fd

    # -- running ------------------------------------------------------------------------------

    def start_container(self, launch: hardening.Launch) -> subprocess.Popen[bytes]:
        """Start `docker run` now, before asyncio and the relay are even imported.

        The engine needs a few hundred milliseconds to create and start the container and
        the kernel needs more to import; our own imports and binding overlap with that. The
        CLI gets its own session: the client's killpg(SIGINT) must reach us, not the CLI,
        which would exit on it and take the kernel's stdin lifeline with it.
        """
        args = hardening.run_args(self.settings, launch)
        args.insert(1, f"--cidfile={self.cidfile}")
        proc = subprocess.Popen(
            [self.engine.executable(), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=self.engine.env(),
        )
        if self.copy_entries is not None and proc.stdin is not None:
            stdin = proc.stdin

            def write(data: bytes) -> None:
                stdin.write(data)
                stdin.flush()

            self.send_workdir(write)
        return proc

    async def run_async(
        self,
        proc: subprocess.Popen[bytes] | None,
        listening: dict[str, socket.socket] | None = None,
    ) -> int:
        """Relay until the container exits; returns its exit code. asyncio.run() calls it.

        `proc` is the attached `docker run`; None for a claimed warm container, whose exit
        comes from the engine's API. `listening` are the host endpoints bound early.
        """
        import asyncio

        from jupyter_docker_kernel.relay import Relay

        loop = asyncio.get_running_loop()
        # Before the relay serves: no notebook code runs until a client is connected.
        guard = SocketDirGuard(self.runtime_dir, socket_names(), self._socket_dir_violated)
        relay = Relay(
            self.routes(),
            max_message=size_bytes(self.settings.max_message),
            output_budget=size_bytes(self.settings.output_budget),
            on_violation=self._budget_exceeded,
        )
        await relay.start(listening=listening)
        self.mark("relay serving")
        for sig in (signal.SIGINT,):
            loop.add_signal_handler(sig, self._interrupt)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._terminate)
        # A pooled kernel's raw output and its supervisor's words come over the lifeline.
        streams: list[Any] = [self.lifeline] if proc is None else [proc.stderr, proc.stdout]
        said = bytearray()  # the engine CLI's last words on stderr, to explain a failed start
        keep = self.open_log()
        forwards = [
            threading.Thread(
                target=forward,
                args=(stream, sys.stderr.buffer, self.name, said if index == 0 else None, keep),
                daemon=True,
            )
            for index, stream in enumerate(streams)
        ]
        for thread in forwards:
            thread.start()
        tasks = [
            loop.create_task(self._log_started(relay)),
            loop.create_task(self._watch_parent()),
        ]
        # The supervisor enforces the lifetime inside; the kernel runs as the same uid and
        # could stop it, so we enforce it here too, a little later.
        loop.call_later(
            self.settings.max_lifetime + LIFETIME_GRACE,
            self._terminate,
            f"maximum lifetime of {self.settings.max_lifetime:g} s reached",
        )
        code = await loop.run_in_executor(None, self._wait_container if proc is None else proc.wait)
        for task in tasks:
            task.cancel()
        for thread in forwards:
            thread.join(timeout=5)
        guard.close()
        if proc is not None and code == OOM_EXIT and not self.exit_reason:
            self.exit_reason = await loop.run_in_executor(None, self.engine_exit_reason)
        await self.announce_kill(relay, code, bytes(said))
        await relay.close()
        ran = time.monotonic() - self.started
        level, reason = exit_verdict(
            code, self.exit_reason, stopping=self.stopping, interrupted=self.interrupted_lately()
        )
        why = f" ({reason})" if reason else ""
        log.log(
            level,
            "kernel container %s exited with code %s%s after %.1f s; relayed %d bytes out, "
            "%d in; %d bytes of output counted against the budget",
            self.name,
            code,
            why,
            ran,
            relay.bytes_to_host,
            relay.bytes_to_kernel,
            relay.output_charged,
        )
        self.close_log(code, reason)
        if code in (125, 126, 127) and not self.stopping and proc is not None:
            text = bytes(said).decode(errors="replace")
            what, fix = explain_run_failure(text, code, self.settings)
            log.error(
                "The kernel's container did not start: %s. %s%s",
                what,
                f"To fix: {fix}. " if fix else "",
                "'jupyter-docker-kernel doctor' checks every kernelspec the same way.",
            )
        return code

    async def announce_kill(self, relay: Any, code: int, said: bytes) -> None:
        """Tell the notebook why its kernel was killed (notice.py), before the relay closes:
        a stderr stream and an idle status to every iopub subscriber, for the cell that
        was running. Nothing for a shutdown, restart or interrupt. run_async calls it once
        the container has exited and its stderr (`said`: the supervisor's report) is in."""
        import asyncio

        from jupyter_docker_kernel.notice import kill_notice, notice_messages

        text = kill_notice(
            code,
            self.exit_reason,
            said.decode(errors="replace"),
            output_budget=self.settings.output_budget,
            max_message=self.settings.max_message,
            stopping=self.stopping,
        )
        if not text:
            return
        try:
            messages = notice_messages(self.connection, relay.last_execute(), text)
            told = await relay.announce(messages)
        except Exception as exc:  # a courtesy: the exit line and cleanup must still come
            log.warning("could not tell the notebook why the kernel ended: %s", exc)
            return
        if told:
            # The client reads them now; it must not find us gone (and stop reading) first.
            await asyncio.sleep(NOTICE_LINGER)
        log.info("told %d iopub subscriber(s) in the notebook: %s", told, text)

    async def _log_started(self, relay: Any) -> None:
        """Log the start once the container id is known; after the kernel's first reply
        (or FIRST_REPLY_WAIT), top the warm pool up: a refill's `docker run` competes for
        the CPU with the kernel that is answering right now."""
        import asyncio

        for _ in range(600):
            with contextlib.suppress(OSError):
                self.container_id = self.cidfile.read_text().strip()
            if self.container_id:
                break
            await asyncio.sleep(0.05)
        if self.kernel_log is not None:
            self.kernel_log.update(container_id=self.container_id)
        log.info(
            "kernel %s started in %scontainer %s (%s) from %s: %s",
            self.kernel_id,
            "warm " if self.pooled else "",
            self.name,
            short_id(self.container_id),
            self.settings.image,
            limits_summary(self.settings),
        )
        for _ in range(int(FIRST_REPLY_WAIT / 0.02)):
            if relay.bytes_to_host >= FIRST_REPLY_BYTES:
                self.mark("first reply relayed")
                break
            await asyncio.sleep(0.02)
        if self.settings.pool:
            self.fill_pool()

    def wait_process(self) -> subprocess.Popen[bytes]:
        """A `docker wait` process for the claimed warm container: its end (and output) is
        the container's exit. The provisioner polls it; the launcher uses the API instead."""
        return subprocess.Popen(
            [self.engine.executable(), "wait", self.container_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=self.engine.env(),
        )

    def _rename_claimed(self, pooled_name: str) -> None:
        api = self.engine.api()
        if api.available():
            if not api.rename(self.container_id, self.name):
                log.warning("could not rename warm container %s to %s", pooled_name, self.name)
        else:
            self.engine.run(["rename", self.container_id, self.name])

    def _wait_container(self) -> int:
        """The claimed warm container's exit code, from the engine (blocks)."""
        try:
            api = self.engine.api()
            if api.available():
                return api.wait(self.container_id)
            return wait_exit_code(self.engine.run(["wait", self.container_id], timeout=1e9).stdout)
        except DockerKernelError as exc:
            log.warning("%s", exc)
            return 1

    def engine_exit_reason(self) -> str:
        """Why the engine says the exited container died, for what the supervisor inside
        could not report: under gVisor it cannot read the cgroup's OOM count, and an OOM
        ends the whole sandbox with it. Only when run_args kept the container (no --rm);
        "" when the engine has nothing to add. Called by run_async on exit code 137."""
        if not hardening.is_gvisor(self.settings):
            return ""
        try:
            data = self.engine.container_inspect(self.container_id or self.name)
        except DockerKernelError as exc:
            log.debug("no exit reason from the engine: %s", exc)
            return ""
        if not data or not data.get("State", {}).get("OOMKilled"):
            return ""
        limit = int(data.get("HostConfig", {}).get("Memory") or 0)
        return f"out of memory (limit {limit >> 20} MiB), as the engine reports"

    def mark(self, what: str) -> None:
        """A point of the start timeline, logged at debug level (--debug)."""
        log.debug("start timeline: %s at %.0f ms", what, (time.monotonic() - self.started) * 1000)

    def fill_pool(self) -> None:
        """Top the warm pool up for the next kernel, in a process that may outlive us.

        The launcher (after its kernel's first reply) and the provisioner call it."""
        try:
            pool.fill_in_background(self.settings, runtime_base(), self.launch_facts())
        except OSError as exc:
            log.warning("could not refill the warm pool: %s", exc)

    async def _watch_parent(self) -> None:
        """End the kernel when the Jupyter client that started us dies without stopping it
        (a local ipykernel does the same through JPY_PARENT_PID): otherwise the container
        would run on under a launcher nobody will ever stop."""
        import asyncio

        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("the Jupyter client (pid %d) went away; stopping the kernel", parent)
        self._terminate("the Jupyter client went away")

    def _interrupt(self) -> None:
        self.last_interrupt = time.monotonic()
        # jupyter_client interrupts before every shutdown; we cannot tell which this is yet,
        # so say both (the exit line then says whether it was the shutdown's).
        log.info(
            "interrupt: sending SIGINT to the kernel in %s (a user's interrupt, or the first "
            "step of a shutdown)",
            self.name,
        )
        self._in_thread(self.engine.kill, self.container_id or self.name, "INT")

    def interrupted_lately(self) -> bool:
        """Whether an interrupt was sent in the last INTERRUPT_EXIT_WINDOW seconds."""
        return time.monotonic() - self.last_interrupt < INTERRUPT_EXIT_WINDOW

    def _terminate(self, reason: str = "stopped by the Jupyter client") -> None:
        if self.stopping:
            return
        self.stopping = True
        self.exit_reason = reason
        log.info("terminate: removing container %s", self.name)
        self._in_thread(self.engine.remove, self.container_id or self.name)

    def _budget_exceeded(self, reason: str) -> None:
        """The relay's on_violation: `reason` ("budget exceeded: ...", "protocol refused:
        ...") becomes the exit line's reason."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_reason = reason
        self._in_thread(self.engine.remove, self.container_id or self.name)

    def _socket_dir_violated(self, reason: str) -> None:
        """The socket dir guard's alarm (its thread): kill the container at once, through
        the API where we can (every millisecond is more of the host's disk), then remove it."""
        log.warning("stopping the kernel in %s: %s", self.name, reason)
        kill_now(self.engine, self.container_id or self.name)
        self._terminate(reason)

    def _in_thread(self, func: Any, *args: Any) -> None:
        """Run an engine call off the event loop; log (not raise) its failure."""

        def call() -> None:
            try:
                func(*args)
            except DockerKernelError as exc:
                log.warning("%s", exc)

        threading.Thread(target=call, daemon=True).start()

    def cleanup(self) -> None:
        """Remove our container (if still there) and our files; idempotent."""
        if self.lifeline is not None:
            self.lifeline.close()
        with contextlib.suppress(DockerKernelError):
            if self.container_id or self.cidfile.exists():
                self.engine.remove(self.container_id or self.name)
        remove_tree(self.base)


#: How much of the engine CLI's stderr the launcher keeps to explain a failed start.
TAIL_BYTES = 4096

#: What a kernel must not put into the server's log as it is: C0 controls (but tab), DEL,
#: C1 controls in UTF-8 (NEL among them) and U+2028/U+2029, which Python's str.splitlines()
#: and some log viewers take for line breaks. Escaped as \xNN, they cannot
#: start a line, retitle or clear a terminal, or forge a log line's colours.
_UNPRINTABLE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _escape(match: re.Match[bytes]) -> bytes:
    return b"".join(b"\\x%02x" % c for c in match.group())


def printable(data: bytes) -> bytes:
    """The kernel's raw output with control bytes (newlines too, not tabs) shown as \\xNN."""
    return _UNPRINTABLE.sub(_escape, data)


def log_lines(chunk: bytes, name: str) -> bytes:
    """One chunk of the kernel's raw output as server log lines: one per line of the chunk,
    each starting with the kernel's container name, so no kernel write can make a line that
    looks like the server's own (`[I 2026-... ServerApp] ...`)."""
    prefix = f"{name}| ".encode()
    lines = chunk.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the chunk ended with a newline
    return b"".join(prefix + printable(line) + b"\n" for line in lines)


def _read_quietly(read: Any) -> bytes:
    """One chunk from a pipe or socket; b"" at EOF or when it was closed under us."""
    try:
        data: bytes = read(65536)
    except (OSError, ValueError):
        return b""
    return data


def forward(
    stream: IO[bytes] | socket.socket | None,
    out: IO[bytes],
    name: str = NAME_PREFIX,
    tail: bytearray | None = None,
    keep: kernel_log.KernelLog | None = None,
) -> None:
    """Copy the engine CLI's output (the kernel's raw stdout/stderr) to our stderr, which is
    the server's log, as lines prefixed with `name` (log_lines), FORWARD_LIMIT bytes of them.
    Runs in a thread per stream; run_async starts them. `tail` keeps the last TAIL_BYTES, so
    a failed start can be explained (engine.explain_run_failure); `keep` all of it, past
    FORWARD_LIMIT too, for `logs` (it keeps only the end)."""
    if stream is None:
        return
    sent = 0
    fd = stream.fileno()
    read = stream.recv if isinstance(stream, socket.socket) else (lambda n: os.read(fd, n))
    while chunk := _read_quietly(read):
        if tail is not None:
            tail += chunk
            del tail[:-TAIL_BYTES]
        if keep is not None:
            keep.write(chunk)
        if sent >= FORWARD_LIMIT:
            continue  # keep draining, or the kernel would block on a full pipe
        # The limit counts what reaches the log: prefixes and escapes can make a kernel's
        # byte (a newline, a control character) dozens of bytes there.
        lines = log_lines(chunk, name)[: FORWARD_LIMIT - sent]
        out.write(lines if lines.endswith(b"\n") else lines + b"\n")
        out.flush()
        sent += len(lines)
        if sent >= FORWARD_LIMIT:
            log.warning(
                "kernel's own stdout/stderr exceeded %d bytes; dropping the rest", FORWARD_LIMIT
            )


def _watchdog_cleanup(engine_exe: str, name: str, cidfile: Path, base: Path) -> None:
    """In the watchdog: force-remove the container by name and id, then our files."""

    targets = [name]
    with contextlib.suppress(OSError):
        cid = cidfile.read_text().strip()
        if cid:
            targets.append(cid)
    force_remove(engine_exe, targets)
    remove_tree(base)


def force_remove(engine_exe: str, targets: list[str] | set[str]) -> None:
    """`docker rm --force` these containers, quietly (a watchdog has nobody to tell)."""
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [engine_exe, "rm", "--force", *targets],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )


def start_lifeline_watchdog(
    engine_exe: str, kernel_id: str, base: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process that cleans up after a provisioner's host process however it dies.

    The provisioner (inside the Jupyter server) holds the write end of its stdin; EOF
    means that process is gone, even by SIGKILL, and the watchdog then force-removes every
    container labelled with `kernel_id` and the runtime dir `base`. Writing b"q" first
    means "already cleaned up": it exits without doing anything. A fresh process rather
    than a fork: forking a threaded server is unsafe, and its own session keeps the
    terminal's Ctrl-C (meant for the server) away from it.
    """
    code = "from jupyter_docker_kernel.launcher import watch_lifeline; watch_lifeline()"
    return subprocess.Popen(
        # Isolated: the server's cwd is the notebook's directory (see hostpython).
        hostpython.code_argv(code, engine_exe, kernel_id, str(base)),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,  # the kernelspec's engine (DOCKER_HOST), which its docker calls inherit
    )


def watch_lifeline(argv: list[str] | None = None) -> None:
    """The watchdog process started by start_lifeline_watchdog(): wait for EOF, clean up."""
    engine_exe, kernel_id, base = (argv or sys.argv[1:])[:3]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    last = b""
    while chunk := _read_quietly(lambda n: os.read(0, n)):
        last = chunk[-1:]
    if last == b"q":
        return
    from jupyter_docker_kernel.engine import LABEL_KERNEL_ID, LABEL_OWNER_UID

    # By label, or (a claimed warm container, labelled before it had a kernel) by name.
    selectors = (f"label={LABEL_KERNEL_ID}={kernel_id}", f"name=^{NAME_PREFIX}-{kernel_id}-")
    found: set[str] = set()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = {
            cid
            for selector in selectors
            for cid in subprocess.run(
                [
                    *(engine_exe, "ps", "-aq", "--no-trunc", "--filter", selector),
                    *("--filter", f"label={LABEL_OWNER_UID}={os.getuid()}"),
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.split()
        }
    if found:
        force_remove(engine_exe, found)
    remove_tree(base)


def remove_tree(root: Path | str) -> None:
    """Remove a directory tree the kernel may have shaped, without recursion or following links.

    shutil.rmtree recurses once per level and fails on a tree a kernel nested a thousand
    levels deep; this walks with an explicit stack and never raises.
    """
    stack = [str(root)]
    seen: list[str] = []
    while stack:
        path = stack.pop()
        seen.append(path)
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        except OSError:
            continue
    for path in reversed(seen):
        with contextlib.suppress(OSError):
            os.rmdir(path)


#: Files in a mounted work dir that mean nbgrader's private data is within the kernel's reach.
NBGRADER_MARKERS = ("gradebook.db", "nbgrader_config.py")


#: nbgrader's per-student steps live at <course>/<step>/<student>/<assignment>; these two
#: steps are the instructor's own (<course>/<step>/<assignment>), where no student code runs.
NBGRADER_INSTRUCTOR_STEPS = ("source", "release")


def nbgrader_layout(workdir: str) -> str:
    """Why `workdir` looks like a directory nbgrader grades in; "" if it does not.

    nbgrader runs every submission in autograded/<student>/<assignment> and then writes the
    graded notebook back there, following whatever link the kernel left in its place. The
    step may be renamed in nbgrader_config.py, so a directory at least three levels below
    one holding gradebook.db or nbgrader_config.py counts too, unless that step is
    source/ or release/ (the instructor's own, two levels deep). Pure path checks and
    lstat: nothing is opened or followed.
    """
    path = Path(os.path.abspath(workdir))
    if "autograded" in path.parts:
        return "it is inside nbgrader's autograded/ tree"
    for depth, parent in enumerate(path.parents, start=1):
        marker = next((m for m in NBGRADER_MARKERS if os.path.lexists(parent / m)), "")
        if not marker:
            continue
        step = path.parts[len(parent.parts)]
        if depth >= 3 and step not in NBGRADER_INSTRUCTOR_STEPS:
            where = f"{depth} levels below {parent / marker}"
            return f"it is {where}, where nbgrader keeps its per-student {step}/ directories"
        return ""
    return ""


def refuse_grading_mount(workdir: str) -> None:
    """Refuse to mount `workdir` writable when it looks like one nbgrader grades in.

    Launcher.prepare() calls it before any container exists, on the argv and provisioner
    paths alike. A writable mount there lets the kernel swap its notebook for a link to
    ../../../gradebook.db, which nbgrader then writes the graded notebook through (and
    chmods): grades lost. No override: --copy-workdir (what --for-nbgrader sets up) and
    --workdir-readonly are the safe ways to run a notebook there.
    """
    why = nbgrader_layout(workdir)
    if why:
        raise LaunchError(
            f"Refusing to mount the work directory {workdir} writable into the kernel: {why}. "
            "A kernel that can write there can plant links that nbgrader (or any host tool) "
            "follows when it writes the graded notebook back. No container was started. "
            "Grade with a kernelspec made by `jupyter-docker-kernel setup --for-nbgrader` "
            "(a private copy of the directory), or use --copy-workdir or --workdir-readonly."
        )


def warn_about_workdir(workdir: str, uid: int, gid: int, read_only: bool) -> None:
    """Log what a mounted work dir exposes or lacks; never refuses, the user chose it."""
    exposed = [name for name in NBGRADER_MARKERS if os.path.lexists(os.path.join(workdir, name))]
    if exposed:
        log.warning(
            "the kernel's work directory %s holds %s: code in the kernel can read%s it. "
            "Use --copy-workdir (or --workdir-readonly) for untrusted notebooks.",
            workdir,
            " and ".join(exposed),
            "" if read_only else " and change",
        )
    if read_only or uid == os.getuid():
        return
    st = os.stat(workdir)
    writable = (
        (st.st_uid == uid and st.st_mode & 0o200)
        or (st.st_gid == gid and st.st_mode & 0o020)
        or st.st_mode & 0o002
    )
    if not writable:
        log.warning(
            "the kernel runs as uid %d and cannot write its work directory %s (owner uid %d, "
            "mode %o): notebooks that save files there will fail. Use --copy-workdir to give "
            "it a private writable copy.",
            uid,
            workdir,
            st.st_uid,
            stat.S_IMODE(st.st_mode),
        )


def configure_logging(debug: bool) -> None:
    """One line per event on stderr, in the shape of the Jupyter server's own log lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "[%(levelname).1s %(asctime)s.%(msecs)03d DockerKernel] %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    )
    root = logging.getLogger("jupyter_docker_kernel")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


USAGE = (
    "usage: python -I -m jupyter_docker_kernel.launcher [--settings JSON] -f CONNECTION_FILE "
    f"[--debug] [EXTRA ...]\nRun by Jupyter through a kernelspec written by "
    f"`jupyter-docker-kernel setup`, with the settings JSON in the environment variable "
    f"{SETTINGS_ENV} (or --settings). EXTRA arguments (`jupyter run` passes its file names) "
    "are ignored: the kernel in the container cannot see the host's files."
)


class Args:
    """The launcher's three options (parsed by hand: argparse costs a kernel start ~10 ms)."""

    def __init__(self) -> None:
        self.settings = ""
        self.connection_file = ""
        self.debug = False
        #: Positional arguments a client appended; logged at DEBUG and otherwise ignored.
        self.extra: list[str] = []


def parse_args(argv: list[str]) -> Args:
    """Parse -f/--connection-file FILE, --debug and (specs of earlier versions) --settings
    JSON; without --settings the settings come from $JUPYTER_DOCKER_KERNEL_SETTINGS, which
    is removed from our environment so that the engine CLI and our other children do not
    inherit it. Exits 2 on anything else."""
    args = Args()
    rest = list(argv)
    while rest:
        opt = rest.pop(0)
        name, eq, value = opt.partition("=")
        if name in ("--settings", "-f", "--connection-file"):
            if not eq:
                if not rest:
                    break
                value = rest.pop(0)
            if name == "--settings":
                args.settings = value
            else:
                args.connection_file = value
        elif opt == "--debug":
            args.debug = True
        elif opt in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        elif not opt.startswith("-"):
            # jupyter_client appends a client's extra arguments to the kernelspec's argv
            # (`jupyter run --kernel NAME file.py` sends file.py; it runs the file's code
            # itself): a kernel that refused them could not be used there at all.
            args.extra.append(opt)
        else:
            print(f"{USAGE}\nerror: unexpected argument {opt!r}", file=sys.stderr)
            sys.exit(2)
    from_env = os.environ.pop(SETTINGS_ENV, "")
    args.settings = args.settings or from_env
    if not args.settings or not args.connection_file:
        print(
            f"{USAGE}\nerror: -f and the settings ({SETTINGS_ENV} or --settings) are required",
            file=sys.stderr,
        )
        sys.exit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the kernelspec's argv; returns the kernel container's exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.debug or bool(os.environ.get("JUPYTER_DOCKER_KERNEL_DEBUG")))
    if args.extra:
        log.debug("ignoring extra arguments from the client: %s", " ".join(args.extra))
    # Until the event loop's handler is installed, an interrupt has no kernel to reach yet;
    # it must not kill the launcher halfway through starting one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    launcher: Launcher | None = None
    lifeline = -1
    try:
        settings = KernelSettings.from_dict(json.loads(args.settings))
        use_host(settings.engine_host)
        launcher = Launcher(settings, args.connection_file)
        launcher.mark(f"launcher up ({process_age() * 1000:.0f} ms after exec)")
        lifeline = launcher.start_watchdog()
        claimed = pool.claim(settings, runtime_base(), launcher.base) if settings.pool else None
        proc = None
        if claimed is not None:
            launcher.mark("warm container claimed")
            launcher.adopt(claimed)
            launcher.mark("connection handed over")
        else:
            proc = launcher.start_container(launcher.prepare())
            launcher.mark("docker run started")
        # Listening now, before asyncio is imported: the client's first connection
        # attempt waits in the backlog instead of being refused and retried later.
        listening = {
            route.channel: listen(route.host, route.channel) for route in launcher.routes()
        }
        import asyncio

        return asyncio.run(launcher.run_async(proc, listening))
    except DockerKernelError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if launcher is not None:
            launcher.cleanup()
        if lifeline >= 0:
            os.close(lifeline)


if __name__ == "__main__":
    sys.exit(main())
