"""A remote node's backend: container.Container's kernels on another machine, over SSH.

A node is a host with a Docker-compatible engine reached as ssh://user@host[:port]
(setup --engine-host). `SshBackend` is one more container.Backend (see container.py's
module docstring for who calls each method, and when); `LocalBackend.for_engine` picks it
for an ssh:// engine address. What runs where:

- The kernel's runtime dir lives on the node, in the node user's private runtime base
  (ssh.Facts): the connection file, the env file and our supervisor (this host's copy of
  _supervise.py and _usage.py: the node need not have this package) go there as one tar
  stream before the start. A path of this host is never mounted: a mounted work dir is
  refused (use --copy-workdir, which streams it over the lifeline, or --no-workdir)
  unless it is below a path the admin declared the nodes share (node_workdir).
- The container is `docker run -i` on the node, run through the node's multiplexed ssh
  connection (ssh.Connection), its stdin our pipe: the supervisor's lifeline, as
  CliBackend's. Killing whoever holds that pipe (the launcher, the resident helper, the
  Jupyter server), or losing the SSH connection, closes it; the node's docker CLI closes
  the container's stdin, and the supervisor ends the kernel (--rm removes it). The shell
  around `docker run` removes the kernel's dir on the node after it.
- The client's side: once the kernel has bound its five sockets on the node, the same
  master forwards each from this host's socket dir (`-O forward -L local:remote`,
  OpenSSH's unix-socket forwarding, 0600 sockets). The relay connects to those as to a
  local kernel's (it retries until they appear). Nothing listens on the node's network,
  the container keeps --network none, and the channels are encrypted by SSH.
- Engine calls (signal, rm, inspect, wait, rename) are the docker CLI on the node, through
  the same connection (Engine.command_line does that for every ssh:// engine).

A pool of nodes (setup --node a --node b): each start asks every node at once for its
load (the engine's running containers, the node's available memory) and runs on the
least-loaded one that answered within PICK_TIMEOUT (`pick`); the others are skipped with
one log line each.

Not yet: warm pools on nodes (claim finds none, fill does nothing), the socket-dir guard
on the node's side, kernel_transport "tcp".
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from jupyter_docker_kernel import hardening, node_workdir, pool
from jupyter_docker_kernel.container import Cold, Refill
from jupyter_docker_kernel.endpoints import CHANNELS
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import EngineError
from jupyter_docker_kernel.local_backend import Attached, CliBackend
from jupyter_docker_kernel.rundir import RunDir, write_private
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import SSH_FAILED, Connection

# The launcher's logger, as in container.py: the lines users and tests know.
log = logging.getLogger("jupyter_docker_kernel.launcher")

#: How long the node may take to create the container and its kernel to bind its sockets.
SOCKETS_WAIT = 300
#: The file names of our supervisor and its usage hook in a kernel's dir on the node
#: (hardening.usage_hook_path finds the hook next to the supervisor).
SUPERVISOR_NAME = Path(hardening.SUPERVISOR_PATH).name
USAGE_NAME = "_usage.py"
SECCOMP_NAME = Path(hardening.SECCOMP_PROFILE).name

#: Runs on the node: the kernel's dir ($0) in the node user's private base (made again if
#: the node's /tmp was emptied since ssh.Connection.facts asked), from the tar on stdin.
_PREPARE_SCRIPT = (
    'umask 077; b=$(dirname -- "$0"); mkdir -p -m 0700 -- "$b" && [ -O "$b" ] && '
    '[ ! -L "$b" ] && mkdir -m 0700 -- "$0" && tar -x -p -C "$0" -f -'
)
#: Runs on the node around `docker run -i ...` ("$@"): the kernel's dir ($0) goes with it.
_RUN_SCRIPT = 'docker "$@"; code=$?; rm -rf -- "$0"; exit $code'
#: Runs on the node: prints the container's id once the CLI wrote it, then "ready" once
#: the kernel bound all its sockets and each is pinned: a hard link in the kernel's dir,
#: which the container does not see (its socket dir is writable by the kernel, which could
#: swap a socket for a symlink to any socket the node user reaches, the engine's say;
#: sshd follows symlinks at each new connection, the link keeps the inode we checked).
#: Gives up when the dir goes (the start failed).
_WATCH_SCRIPT = """
d=$0; n=0
while [ ! -s "$d/{cid}" ]; do
  [ -d "$d" ] && [ $n -lt {ticks} ] || exit 1; n=$((n+1)); sleep 0.02
done
cat "$d/{cid}"; echo
while :; do
  ok=1
  for s in {sockets}; do [ -S "$d/{rt}/$s" ] || ok=0; done
  [ $ok = 1 ] && break
  [ -d "$d" ] && [ $n -lt {ticks} ] || exit 1; n=$((n+1)); sleep 0.02
done
mkdir -m 0700 "$d/{pins}" || exit 1
for s in {sockets}; do
  ln -P "$d/{rt}/$s" "$d/{pins}/$s" && [ -S "$d/{pins}/$s" ] && [ ! -L "$d/{pins}/$s" ] || exit 1
done
echo ready
"""


class Forwarded(Attached):
    """A kernel's `docker run -i` on the node (its stdin the lifeline), and the forwards of
    its sockets to this host's socket dir, made once the kernel has bound them."""

    def __init__(
        self, proc: subprocess.Popen[bytes], connection: Connection, rundir: RunDir, remote: RunDir
    ) -> None:
        super().__init__(proc)
        self.connection = connection
        self.rundir = rundir
        self.remote = remote
        self.pairs = [
            (str(rundir.socket(i)), str(remote.pins / rundir.socket(i).name))
            for i in range(1, len(CHANNELS) + 1)
        ]
        self._lock = threading.Lock()
        self._closed = False
        self._forwarded = False
        self._watcher: subprocess.Popen[bytes] | None = None
        #: Why _watch ended the kernel ("" unless it did).
        self._failed = ""
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """The container's id (written to our cidfile, where Container looks), then the
        forwards. A failure here is logged: the kernel is unreachable, and its client's
        wait for a reply says so; stopping it is the client's (or the lifetime's) call."""
        names = " ".join(Path(local).name for local, _ in self.pairs)
        script = _WATCH_SCRIPT.format(
            ticks=SOCKETS_WAIT * 50,
            sockets=names,
            rt=self.remote.sockets.name,
            cid=self.remote.cid.name,
            pins=self.remote.pins.name,
        )
        try:
            with self._lock:
                if self._closed:
                    return
                self._watcher = self.connection.popen(
                    ["sh", "-c", script, str(self.remote.path)], stdin=subprocess.DEVNULL
                )
            watcher = self._watcher
            assert watcher.stdout is not None
            cid = watcher.stdout.readline().decode().strip()
            if cid:
                self.container_id = cid
                with contextlib.suppress(OSError):
                    write_private(str(self.rundir.cid), cid)
            ready = watcher.stdout.readline().decode().strip() == "ready"
            watcher.communicate()
            with self._lock:
                if not ready or self._closed:
                    return
                self.connection.forward(self.pairs)
                self._forwarded = True
            log.debug("kernel sockets forwarded from %s", self.connection.node.url)
        except (OSError, EngineError) as exc:
            # Unreachable: end it now (its session's end closes the lifeline), so that the
            # client hears of a dead kernel at once, not after its own timeout.
            self._failed = f"its sockets could not be forwarded from the node: {exc}"
            log.warning("the kernel on %s cannot be reached: %s", self.connection.node.url, exc)
            with contextlib.suppress(OSError):
                self.proc.terminate()

    @property
    def node(self) -> str:
        """The node it runs on, for a failed start's explanation (Container.wait)."""
        return self.connection.node.url

    @property
    def ended_by(self) -> str:
        """Why it ended, for the exit line and the kill notice (Container.wait): "" unless
        the SSH connection to the node was lost (ssh's own exit code)."""
        if self._failed:
            return self._failed
        if self.proc.returncode == SSH_FAILED:
            return f"the SSH connection to the node {self.connection.node.url} was lost"
        return ""

    def close(self) -> None:
        with self._lock:
            self._closed = True
            forwarded, self._forwarded = self._forwarded, False
            watcher = self._watcher
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
        if watcher is not None:
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                watcher.communicate(timeout=5)
        if forwarded:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.connection.forward(self.pairs, cancel=True)
        super().close()


class NoRefill:
    """Warm pools on nodes are not built yet: the refill is nothing."""

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


#: A node that has not said its load this soon is skipped for this start.
PICK_TIMEOUT = 5.0
#: Asked of every node of a pool at each start: the engine's running containers, the
#: node's available memory (kB).
_LOAD_SCRIPT = (
    'docker info --format "{{.ContainersRunning}}" && '
    "awk '/^MemAvailable:/ {print $2}' /proc/meminfo"
)


@dataclasses.dataclass(frozen=True)
class Load:
    """What a node said about its load, or why it said nothing (error)."""

    url: str
    running: int = 0
    available_mib: int = 0
    error: str = ""


def node_load(connection: Connection) -> Load:
    """Ask one node for its load (blocks up to ssh's connect timeout)."""
    url = connection.node.url
    try:
        proc = connection.run(["sh", "-c", _LOAD_SCRIPT], timeout=PICK_TIMEOUT, check=False)
    except (EngineError, OSError, subprocess.SubprocessError) as exc:
        return Load(url, error=str(exc))
    words = proc.stdout.decode().split()
    if proc.returncode != 0 or len(words) != 2 or not all(w.isdigit() for w in words):
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        return Load(url, error=f"its engine does not answer ({said[-1] if said else words})")
    return Load(url, int(words[0]), int(words[1]) >> 10)


def choose(loads: Sequence[Load]) -> Load | None:
    """The least-loaded node that answered: fewest running containers, then the most
    available memory; None when none answered (pure)."""
    answered = [load for load in loads if not load.error]
    if not answered:
        return None
    return min(answered, key=lambda load: (load.running, -load.available_mib))


def pick(urls: Sequence[str], environ: Mapping[str, str] | None) -> Load:
    """Ask every node at once; a node silent after PICK_TIMEOUT is skipped with one log
    line, and EngineError (one line) when none answers."""
    results: dict[str, Load] = {}

    def ask(url: str) -> None:
        results[url] = node_load(Connection.to(url, environ))

    threads = [threading.Thread(target=ask, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PICK_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    loads = [results.get(url) or Load(url, error="no answer in time") for url in urls]
    for load in loads:
        if load.error:
            log.warning("node %s skipped for this start: %s", load.url, load.error)
    chosen = choose(loads)
    if chosen is None:
        raise EngineError(
            f"none of the nodes {', '.join(urls)} answers",
            "No kernel was started",
            "`jupyter-docker-kernel doctor` checks each; the log says why each was skipped.",
        )
    return chosen


class SshBackend(CliBackend):
    """Kernels on a remote node over SSH (see the module docstring). With settings.nodes
    (setup --node), start_cold first picks the least-loaded node that answers, and every
    call after goes to that node: one backend per Container."""

    def __init__(self, engine: Engine) -> None:
        # The engine's CLI calls go through the same connection (Engine.command_line).
        self.connection = Connection.to(engine.address(), engine.environ)
        super().__init__(engine)

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold:
        """The kernel's dir on the node (one tar stream), then `docker run -i` there."""
        if len(settings.nodes) > 1:
            chosen = pick(settings.nodes, self.engine.environ)
            self.connection = Connection.to(chosen.url, self.engine.environ)
            self.engine = Engine(self.engine.command, host=chosen.url, environ=self.engine.environ)
            log.info(
                "starting the kernel on node %s (%d containers running, %d MiB available)",
                chosen.url,
                chosen.running,
                chosen.available_mib,
            )
        else:
            # The node is in the log from the start: a launcher killed later says nothing.
            log.info("starting the kernel on node %s", self.connection.node.url)
        if settings.workdir == "mount":
            # Only below a path the admin declared shared with the nodes (node_workdir).
            node_workdir.check(settings, launch, self.connection)
        facts = self.connection.facts()
        remote = RunDir(Path(facts.base) / rundir.path.name)
        there = node_launch(launch, remote, facts.uid, facts.gid)
        args = hardening.run_args(settings, there, cidfile=str(remote.cid))
        bundle = kernel_dir_bundle(settings, there, rundir)
        self.connection.run(
            [
                "sh",
                "-c",
                _PREPARE_SCRIPT,
                str(remote.path),
            ],
            input_bytes=bundle,
        )
        proc = self.connection.popen(["sh", "-c", _RUN_SCRIPT, str(remote.path), *args])
        return Forwarded(proc, self.connection, rundir, remote)

    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None:
        return None  # no warm pools on nodes yet

    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Refill:
        return NoRefill()

    def watchdog(self, name: str, cidfile: Path, base: Path) -> int:
        """Nothing to fork: our end of `docker run -i`'s stdin over ssh is the lifeline
        already, and it closes however we die."""
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def sockets(self) -> list[str]:
        return []  # the node's engine socket is not on this host


def node_launch(launch: hardening.Launch, remote: RunDir, uid: int, gid: int) -> hardening.Launch:
    """The launch facts as the node sees them: the kernel's files in its dir there, and the
    node user's uid and gid (whose sshd must reach the kernel's sockets) (pure)."""
    return dataclasses.replace(
        launch,
        runtime_dir=str(remote.sockets),
        connection_file=str(remote.connection),
        supervisor_path=str(remote.path / SUPERVISOR_NAME),
        env_file=str(remote.env_file) if launch.env_file else None,
        seccomp_profile=str(remote.path / SECCOMP_NAME),
        host_uid=uid,
        host_gid=gid,
    )


def kernel_dir_bundle(settings: KernelSettings, there: hardening.Launch, rundir: RunDir) -> bytes:
    """The kernel's dir for the node as a tar stream: the socket dir, the connection file
    and env file Container.prepare wrote here, our supervisor, its usage hook and our
    seccomp profile."""
    group = hardening.shares_group_only(settings, there)
    private = 0o640 if group else 0o600
    files: list[tuple[str, bytes, int]] = [
        (rundir.connection.name, rundir.connection.read_bytes(), private),
        (SUPERVISOR_NAME, Path(hardening.SUPERVISOR_PATH).read_bytes(), 0o644),
        (USAGE_NAME, Path(hardening.SUPERVISOR_PATH).with_name(USAGE_NAME).read_bytes(), 0o644),
        # The node's docker CLI reads the profile named by --security-opt seccomp=.
        (SECCOMP_NAME, Path(hardening.SECCOMP_PROFILE).read_bytes(), 0o644),
    ]
    if there.env_file:
        files.append((rundir.env_file.name, rundir.env_file.read_bytes(), 0o600))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        sockets = tarfile.TarInfo(rundir.sockets.name)
        sockets.type = tarfile.DIRTYPE
        sockets.mode = 0o770 if group else 0o700
        tar.addfile(sockets)
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
