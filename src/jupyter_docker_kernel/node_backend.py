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
- A cold start is LocalBackend's, on the node (NodeHeld): `docker create` by the node's
  CLI (one ssh session, which first makes the kernel's dir from the tar stream), then the
  exit wait and the start through the node engine's API, and the supervisor's lifeline
  socket connected through a forward over the master: that connection is the kernel's
  life, and no process of ours runs per kernel (issue 17). Killing whoever holds it (the
  launcher, the resident helper, the Jupyter server), or losing the SSH connection,
  closes it on the node, and the supervisor ends the kernel (--rm removes it). The
  kernel's dir on the node goes with its removal (SshBackend.remove).
- The client's side: once the kernel has bound its five sockets on the node, the same
  master forwards each from this host's socket dir (`-O forward -L local:remote`,
  OpenSSH's unix-socket forwarding, 0600 sockets). The relay connects to those as to a
  local kernel's (it retries until they appear). Nothing listens on the node's network,
  the container keeps --network none, and the channels are encrypted by SSH.
- Engine calls (signal, rm, inspect, wait, rename, update) go to the node engine's API,
  its socket forwarded over the same master to a 0600 socket in our runtime base
  (ssh.engine_socket, ssh.NodeTransport): one HTTP request each, no process. The docker
  CLI on the node, through the same connection, does the rest (Engine.command_line).

Warm pools on nodes (setup --pool N with a node): pool.py's bookkeeping stays on this host
(each warm container has its dir here, with the pool note naming its node, so a claim is
still one rename(2), with no engine call on the start path but one inspect through the
forwarded API), while the container and its dir (supervisor, sockets) are on the node
(start_warm, in the refill's process: `docker run -d` there, at the pool's low CPU
weight, labelled as local pool containers). A claim connects to the warm kernel's claim
socket through a forward; that connection, carried by the master, is the kernel's
lifeline (no process here); its five sockets are forwarded as a cold one's are
(PinnedForwards). The refill tops up the pool of the node the start used; `gc --pools`
and `list` see them (node_manage).

A pool of nodes (setup --node a --node b): each start asks every node at once for its
load (the engine's running containers, the node's available memory) and runs on the
least-loaded one that answered within PICK_TIMEOUT (`pick`); the others are skipped with
one log line each.

The socket-dir guard on the node's side (NodeGuard): one guard process per node and node
user (_node_guard.py, socketdir.SocketDirGuard's own rules and words, in a hardened
container of the kernel's image there, start_guard), which ends a minute after its last
kernel. Each node kernel's Container holds one connection to it through the master
(ssh.guard_socket); a violation comes back on it, and the kernel is stopped here as a
local one is (Container._socket_dir_violated).

Not yet: kernel_transport "tcp".
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import logging
import os
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from jupyter_docker_kernel import _node_guard, hardening, node_workdir, pool, socketdir
from jupyter_docker_kernel.container import Cold, Refill, socket_names
from jupyter_docker_kernel.endpoints import CHANNELS
from jupyter_docker_kernel.engine import (
    Engine,
    EngineApi,
    ExitWatch,
    NoSuchContainerError,
    create_args,
)
from jupyter_docker_kernel.errors import DockerKernelError, EngineError
from jupyter_docker_kernel.lifeline import CONNECT_SECONDS, LIFELINE_SOCKET
from jupyter_docker_kernel.local_backend import Held, LocalBackend, Refused
from jupyter_docker_kernel.rundir import WEIGHT_NOTE, RunDir, write_private
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import SSH_FAILED, Connection, NodeTransport, guard_socket

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
#: the node's /tmp was emptied since ssh.Connection.facts asked), from the tar on stdin
#: (make_node_dir; a cold start's _CREATE_SCRIPT).
_PREPARE_SCRIPT = (
    'umask 077; b=$(dirname -- "$0"); mkdir -p -m 0700 -- "$b" && [ -O "$b" ] && '
    '[ ! -L "$b" ] && mkdir -m 0700 -- "$0" && tar -x -p -C "$0" -f -'
)
#: The same, then `docker create ...` ("$@") in one session: it prints the container's id.
_CREATE_SCRIPT = _PREPARE_SCRIPT + ' && exec docker "$@"'
#: Runs on the node: "ready" once the kernel bound all its sockets and each is pinned: a
#: hard link in the kernel's dir, which the container does not see (its socket dir is
#: writable by the kernel, which could swap a socket for a symlink to any socket the node
#: user reaches, the engine's say; sshd follows symlinks at each new connection, the link
#: keeps the inode we checked). Gives up when the dir goes (the start failed).
#: Hard links of the kernel's five sockets in its pins dir (_PIN_SCRIPT, _CLAIMABLE_SCRIPT).
_PIN_LINKS = """mkdir -m 0700 "$d/{pins}" || exit 1
for s in {sockets}; do
  ln -P "$d/{rt}/$s" "$d/{pins}/$s" && [ -S "$d/{pins}/$s" ] && [ ! -L "$d/{pins}/$s" ] || exit 1
done
"""
_PIN_SCRIPT = (
    """
d=$0; n=0
while :; do
  ok=1
  for s in {sockets}; do [ -S "$d/{rt}/$s" ] || ok=0; done
  [ $ok = 1 ] && break
  [ -d "$d" ] && [ $n -lt {ticks} ] || exit 1; n=$((n+1)); sleep 0.02
done
"""
    + _PIN_LINKS
    + """echo ready
"""
)
#: Runs on the node for a cold start: "lifeline" once the supervisor bound its lifeline
#: socket (we connect to it through a forward), then as _PIN_SCRIPT. Started with the
#: create, so its dir may not be there yet (NodeHeld.close ends it if none ever comes).
_HOLD_SCRIPT = """
d=$0; n=0
while [ ! -S "$d/{rt}/{lifeline}" ]; do
  [ $n -lt {ticks} ] || exit 1; n=$((n+1)); sleep 0.01
done
echo lifeline""" + _PIN_SCRIPT.replace("d=$0; n=0", "", 1)
#: Runs on the node: exits 0 once a warm container's claim socket is bound (its kernel is
#: ready to be claimed: its five sockets are bound already, by our code alone) and those
#: are pinned as _PIN_SCRIPT does, so that the claim forwards them at once; 1 if it never
#: is within {ticks} ticks ($0: the warm container's dir).
_CLAIMABLE_SCRIPT = (
    """
d=$0; n=0
while [ ! -S "$d/{rt}/{claim}" ]; do
  [ -d "$d" ] && [ $n -lt {ticks} ] || exit 1; n=$((n+1)); sleep 0.05
done
"""
    + _PIN_LINKS
)
#: Runs on the node, in the node user's runtime base ($0): removes the named warm
#: containers' dirs ("$@": pool-<key>-<nonce>, checked by remove_warm_dirs).
_REMOVE_DIRS_SCRIPT = 'cd -- "$0" && rm -rf -- "$@"'
#: In a warm container's dir on this host: the path of its dir on the node.
REMOTE_NOTE = "node-dir"
#: In a claimed warm container's dir on this host: the forward of its claim socket, for
#: the moment of the claim's connect.
CLAIM_FORWARD = "claim.fwd"


class NodeHeld(Held):
    """A cold start on a node, as LocalBackend's (Held): created by the node's CLI (one
    ssh session, which also makes the kernel's dir from one tar stream), its exit wait and
    start through the node engine's API (forwarded over the master), and held by the
    supervisor's lifeline socket, connected through a forward: the connection is carried
    by the master, so no process of ours runs per kernel. Killing whoever holds it (the
    launcher, the resident helper, the Jupyter server) or losing the SSH connection
    closes it on the node, and the supervisor ends the kernel (--rm removes it). A watch
    on the node (one ssh session during the start only, _HOLD_SCRIPT) says when the
    lifeline is bound, then when the kernel's five sockets are, which are then forwarded
    to this host's socket dir (PinnedForwards)."""

    def __init__(
        self,
        backend: SshBackend,
        args: list[str],
        rundir: RunDir,
        remote: RunDir,
        bundle: bytes,
        command: str,
    ) -> None:
        self.connection = backend.connection
        self.guard = backend.guard
        self.rundir = rundir
        self.remote = remote
        self.bundle = bundle
        self.pinned: PinnedForwards | None = None
        #: The SSH connection went while we waited for the exit (wait).
        self.lost = False
        super().__init__(backend, args, str(rundir.sockets / LIFELINE_SOCKET), command)

    def _started(self, backend: LocalBackend, path: str) -> None:
        # The watch first: its session's start overlaps the create's.
        watcher = self.connection.popen(
            ["sh", "-c", self.hold_script(), str(self.remote.path)], stdin=subprocess.DEVNULL
        )
        self.pinned = PinnedForwards(self.connection, self.rundir, self.remote, watcher)
        created = self.connection.run(
            ["sh", "-c", _CREATE_SCRIPT, str(self.remote.path), *create_args(self.args)],
            input_bytes=self.bundle,
            timeout=120,
            check=False,
        )
        if created.returncode != 0:
            # `docker run` exits 125 for whatever stopped it before the container ran.
            self.refused = Refused(125, created.stderr.decode(errors="replace"))
            self.pinned.close()
            remove_node_dirs(self.connection, [self.remote.path.name])
            return
        lines = created.stdout.decode().split()
        self.container_id = lines[-1] if lines else ""
        with contextlib.suppress(OSError):
            write_private(str(self.rundir.cid), self.container_id)  # where Container looks
        # No kernel code runs before the node's guard watches its socket dir.
        if self.guard is not None and not self.guard.wait(GUARD_WAIT + 5):
            self.refused = Refused(125, f"docker: {self.guard.failed or 'no guard'}\n")
            with contextlib.suppress(DockerKernelError):
                backend.api.remove(self.container_id)
            self.pinned.close()
            remove_node_dirs(self.connection, [self.remote.path.name])
            return
        self._run_created(backend, path)  # Held's: exit wait, API start, lifeline

    def open_lifeline(
        self, backend: LocalBackend, path: str, exit: ExitWatch
    ) -> socket.socket | None:
        """Once the watch on the node says the supervisor bound its lifeline socket,
        connect to it through a forward made for this connect only (the connection stays);
        None when the container exited first (or never bound it within
        lifeline.CONNECT_SECONDS: its own --lifeline-wait has ended it by then)."""
        assert self.pinned is not None
        deadline = time.monotonic() + CONNECT_SECONDS
        while not self.pinned.lifeline_bound(0.05):
            if exit.done() or time.monotonic() > deadline:
                return None
        return connect_through(self.connection, path, str(self.remote.sockets / LIFELINE_SOCKET))

    def hold_script(self) -> str:
        return _HOLD_SCRIPT.format(
            ticks=SOCKETS_WAIT * 100,
            sockets=" ".join(self.rundir.socket(i).name for i in range(1, len(CHANNELS) + 1)),
            rt=self.remote.sockets.name,
            pins=self.remote.pins.name,
            lifeline=LIFELINE_SOCKET,
        )

    def wait(self) -> int:
        """The container's exit code, from the node's engine; SSH_FAILED when the SSH
        connection (which carries that wait) went first: the kernel ended with it."""
        try:
            return super().wait()
        except EngineError as exc:
            self.lost = True
            log.debug("exit wait on %s ended: %s", self.node, exc)
            return SSH_FAILED

    @property
    def node(self) -> str:
        """The node it runs on, for a failed start's explanation (Container.wait)."""
        return self.connection.node.url

    @property
    def ended_by(self) -> str:
        """Why it ended, for the exit line and the kill notice (Container.wait): "" unless
        the SSH connection to the node was lost, or its sockets could not be forwarded."""
        if self.pinned is not None and self.pinned.failed:
            return self.pinned.failed
        if self.lost:
            return f"the SSH connection to the node {self.node} was lost"
        return ""

    def close(self) -> None:
        super().close()
        if self.pinned is not None:
            self.pinned.close()
        if self.guard is not None:
            self.guard.close()


class PinnedForwards:
    """A kernel's sockets on the node, forwarded once it has bound them (a cold one binds
    them after its lifeline's claim line, a claimed warm one's may rebind after the
    hand-over): a thread waits on the node (_PIN_SCRIPT, or a cold start's _HOLD_SCRIPT
    after its "lifeline": one short ssh session, until they are pinned), then forwards
    each from this host's socket dir, where the relay connects (retrying until they
    appear). Nothing of it runs once they are forwarded."""

    def __init__(
        self,
        connection: Connection,
        rundir: RunDir,
        remote: RunDir,
        watcher: subprocess.Popen[bytes] | None = None,
        *,
        forwarded: bool = False,
    ) -> None:
        """watcher: a cold start's watch, started already; forwarded: the sockets were
        pinned before, and the caller forwards them (a claim): nothing to watch."""
        self.connection = connection
        self.pairs = [
            (str(rundir.socket(i)), str(remote.pins / rundir.socket(i).name))
            for i in range(1, len(CHANNELS) + 1)
        ]
        self.remote = remote
        self._lock = threading.Lock()
        self._closed = False
        self._forwarded = False
        #: A cold start's watch (_HOLD_SCRIPT), read up to "lifeline" by its NodeHeld.
        self._watcher = watcher
        self._lifeline = threading.Event()
        #: Why the kernel cannot be reached ("" unless so).
        self.failed = ""
        if forwarded:
            self._forwarded = True
        else:
            threading.Thread(target=self._watch, daemon=True).start()

    def lifeline_bound(self, timeout: float) -> bool:
        """Whether a cold start's watch said its lifeline socket is bound, within
        timeout (NodeHeld.open_lifeline polls it between looks at the container's exit)."""
        return self._lifeline.wait(timeout)

    def _watch(self) -> None:
        names = " ".join(Path(local).name for local, _ in self.pairs)
        if self._watcher is not None:
            try:
                assert self._watcher.stdout is not None
                if self._watcher.stdout.readline().decode().strip() != "lifeline":
                    return  # ended first (its exit says why), or let go
                self._lifeline.set()
                self._forward_when_ready()
            except (OSError, EngineError) as exc:
                self._unreachable(exc)
            return
        script = _PIN_SCRIPT.format(
            ticks=SOCKETS_WAIT * 50,
            sockets=names,
            rt=self.remote.sockets.name,
            pins=self.remote.pins.name,
        )
        try:
            with self._lock:
                if self._closed:
                    return
                self._watcher = self.connection.popen(
                    ["sh", "-c", script, str(self.remote.path)], stdin=subprocess.DEVNULL
                )
            self._forward_when_ready()
        except (OSError, EngineError) as exc:
            self._unreachable(exc)

    def _forward_when_ready(self) -> None:
        """Once the watch says "ready" (the sockets pinned): forward them."""
        watcher = self._watcher
        assert watcher is not None
        assert watcher.stdout is not None
        ready = watcher.stdout.readline().decode().strip() == "ready"
        watcher.communicate()
        with self._lock:
            if not ready or self._closed:
                return
            self.connection.forward(self.pairs)
            self._forwarded = True
        log.debug("kernel sockets forwarded from %s", self.connection.node.url)

    def _unreachable(self, exc: BaseException) -> None:
        # The client's wait for its first reply says the kernel is unreachable; its log
        # says why.
        self.failed = f"its sockets could not be forwarded from the node: {exc}"
        log.warning("the kernel on %s cannot be reached: %s", self.connection.node.url, exc)

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


class SshBackend(LocalBackend):
    """Kernels on a remote node over SSH (see the module docstring). With settings.nodes
    (setup --node), start_cold first picks the least-loaded node that answers (a claim
    takes a warm container on whichever node has one), and every call after goes to that
    node: one backend per Container. Engine calls (exit wait, signals, inspect, rename,
    update, removal) go to the node engine's API through its socket forwarded over the
    master (ssh.engine_socket): one HTTP request each, no process."""

    def __init__(self, engine: Engine) -> None:
        # The engine's CLI calls go through the same connection (Engine.command_line).
        self.connection = Connection.to(engine.address(), engine.environ)
        super().__init__(engine)
        self.api = EngineApi(transport=NodeTransport(self.connection))
        #: A claimed warm kernel's dir on the node and its sockets' forwards (claim).
        self.remote: RunDir | None = None
        self.pinned: PinnedForwards | None = None
        self._remote_removed = False
        #: The watch of this start's socket dir on the node (start_cold, claim).
        self.guard: NodeGuard | None = None

    def use(self, url: str) -> None:
        """Send every call after this to the node at url (a pool's pick, a claim)."""
        if url == self.connection.node.url:
            return
        self.connection = Connection.to(url, self.engine.environ)
        self.engine = Engine(self.engine.command, host=url, environ=self.engine.environ)
        self.api = EngineApi(transport=NodeTransport(self.connection))

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold:
        """The kernel's dir on the node (one tar stream) and `docker create` there, in
        one ssh session, then the API start and the lifeline (NodeHeld, in a thread)."""
        if len(settings.nodes) > 1:
            chosen = pick(settings.nodes, self.engine.environ)
            self.use(chosen.url)
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
        args = hardening.run_args(settings, there, lifeline=LIFELINE_SOCKET)
        bundle = kernel_dir_bundle(settings, there, rundir)
        self.remote = remote
        # Asked now: the node's guard watches as soon as the dir is made.
        self.guard = NodeGuard(self.connection, settings, str(remote.sockets))
        return NodeHeld(self, args, rundir, remote, bundle, settings.python)

    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None:
        """A warm container of these settings on any of the spec's nodes (pool.claim: its
        dir here renamed to ours, atomically), its claim socket connected through a
        forward, made with the forwards of its five sockets (pinned when it got ready),
        once the node's guard watches its socket dir (before the hand-over)."""
        return pool.claim(
            settings, base, new_dir, connect=lambda d: self._connect_claim(settings, d)
        )

    def _connect_claim(self, settings: KernelSettings, new_dir: Path) -> socket.socket:
        """pool.claim's connect for a warm container on a node: forward a local socket to
        its claim socket there just for this connect (the connection stays: it is the
        kernel's lifeline, carried by the master, no process of ours); OSError when it
        does not answer (pool.claim then drops it)."""
        warm = RunDir(new_dir)
        name, url = warm.read_pool_note()
        self.use(url)
        # A forward's local end answers whatever is behind it on the node: a container
        # gone there (the node restarted, its engine's own cleanup) would take the
        # hand-over and end. One request to the node's engine tells.
        state = (self.api.inspect(warm.read_cid() or name) or {}).get("State") or {}
        if not state.get("Running"):
            raise OSError(f"warm container {name} no longer runs on {url}")
        remote = RunDir(Path((new_dir / REMOTE_NOTE).read_text().strip()))
        # Asked first, waited for last: the watch overlaps the claim's connect.
        guard = NodeGuard(self.connection, settings, str(remote.sockets))
        # Its sockets were bound, and pinned (_mark_claimable), before it was claimable:
        # one `-O forward` for them and the claim socket.
        pinned = PinnedForwards(self.connection, warm, remote, forwarded=True)
        try:
            sock = connect_through(
                self.connection,
                str(new_dir / CLAIM_FORWARD),
                str(remote.claim_socket()),
                also=pinned.pairs,
            )
            # No notebook code reaches it before the node's guard watches its dir (the
            # hand-over, Container.start's claim line, comes after).
            if not guard.wait(GUARD_WAIT + 5):
                sock.close()
                raise OSError(guard.failed or "the node's socket-dir guard did not answer")
        except BaseException:
            pinned.close()  # pool.claim tries the next one
            guard.close()
            raise
        self.pinned, self.remote, self.guard = pinned, remote, guard
        return sock

    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Refill:
        """Top up this node's warm pool (pool.fill_in_background, on this host: its
        `docker run -d`s go to the node through the master, at low CPU weight there)."""
        return pool.fill_in_background(
            settings,
            base,
            launch,
            gated=True,
            env=self.engine.env(),
            node=self.connection.node.url,
        )

    def update(self, container_id: str, cpu_shares: int) -> None:
        self.api.update(container_id, cpu_shares=cpu_shares)

    def wait(self, container_id: str) -> int:
        """A claimed container's exit code, from the node's engine (one request held open
        through the master); a lost SSH connection ends the wait, and the log names the
        node (ssh's own exit code, as a cold start's end says it)."""
        try:
            return self.api.wait(container_id)
        except NoSuchContainerError as exc:
            log.warning("%s", exc)
            return 1
        except (EngineError, http.client.HTTPException) as exc:
            # The request broke (not an answer of the engine's): its carrier went. A new
            # master may already answer for another process, so alive() alone cannot say.
            broken = isinstance(exc, http.client.HTTPException) or isinstance(
                exc.__cause__, (OSError, http.client.HTTPException)
            )
            if broken or not self.connection.alive():
                log.warning(
                    "the SSH connection to the node %s was lost: its kernel ends with it",
                    self.connection.node.url,
                )
                return SSH_FAILED
            log.warning("%s", exc)
            return 1

    def remove(self, name: str) -> bool:
        """Remove the container through the node's API; for a claimed warm one, then its
        sockets' forwards and its dir on the node (once)."""
        removed = self.api.remove(name)
        if self.pinned is not None:
            self.pinned.close()
        if self.guard is not None:
            self.guard.close()
        if self.remote is not None and not self._remote_removed:
            self._remote_removed = True
            remove_node_dirs(self.connection, [self.remote.path.name])
        return removed

    def watchdog(self, name: str, cidfile: Path, base: Path) -> int:
        """Nothing to fork: our end of the lifeline (a connection through the master)
        closes however we die, and the supervisor on the node ends the kernel."""
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def sockets(self) -> list[str]:
        return []  # the node's engine socket is not on this host

    def socket_dir_guard(
        self, path: Path, allowed: Iterable[str], on_violation: Callable[[str], None]
    ) -> socketdir.Watch:
        """Container.guard's watch of the kernel's socket dir, where it is: on the node
        (the NodeGuard this start made). `path`, this host's socket dir, holds only the
        master's forwards; `allowed` is container.socket_names(), which NodeGuard sends."""
        assert self.guard is not None
        self.guard.alarm(on_violation)
        return self.guard


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


def make_node_dir(
    connection: Connection, remote: RunDir, bundle: bytes, *, work: bool = False
) -> None:
    """Make a kernel's dir `remote` on the node from `bundle` (kernel_dir_bundle), in one
    ssh session: start_warm's warm container and node_probe.probe's probe call it (a cold
    start makes its dir in the session of its `docker create`: _CREATE_SCRIPT). With
    `work`, an empty work dir (RunDir.work, 0755) there too: the probe's, as the launcher
    makes one here. Raises EngineError (ssh.Connection.run) when the node refuses."""
    script = _PREPARE_SCRIPT
    if work:
        script += f' && mkdir -m 0755 "$0/{remote.work.name}"'
    connection.run(["sh", "-c", script, str(remote.path)], input_bytes=bundle)


def kernel_dir_bundle(settings: KernelSettings, there: hardening.Launch, rundir: RunDir) -> bytes:
    """The kernel's dir for the node as a tar stream: the socket dir, the connection file
    (none for a warm container) and env file Container.prepare (or pool.start_one) wrote
    here, our supervisor, its usage hook and our seccomp profile."""
    group = hardening.shares_group_only(settings, there)
    private = 0o640 if group else 0o600
    files: list[tuple[str, bytes, int]] = [
        *(
            [(rundir.connection.name, rundir.connection.read_bytes(), private)]
            if there.connection_file  # a warm container gets its connection at the claim
            else []
        ),
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


# -- warm pools on nodes (pool.py's node path) ---------------------------------------------


def start_warm(
    engine: Engine, settings: KernelSettings, pooled: hardening.Launch, warm: RunDir, key: str
) -> str:
    """Start one warm container on the node `engine` is (pool.start_one's node path, in a
    refill's process); returns its id. Its dir there is made from one tar stream (as a
    cold start's), named as its dir here, which keeps the pool's bookkeeping (pool.py:
    the claim is the rename of this host's dir, no engine call on the start path) and
    notes the node's path (REMOTE_NOTE). Its labels name this host's dir, where gc finds
    its claimer's owner marker. At the pool's low CPU weight where pool.lowers_priority.
    Once its claim socket is bound on the node (a thread: one ssh session), a socket
    file of that name here tells claimers and settle_when_ready that it is ready."""
    connection = Connection.to(engine.address(), engine.environ)
    facts = connection.facts()
    remote = RunDir(Path(facts.base) / warm.path.name)
    write_private(warm.path / REMOTE_NOTE, str(remote.path))
    there = dataclasses.replace(
        node_launch(pooled, remote, facts.uid, facts.gid), connection_file=""
    )
    make_node_dir(connection, remote, kernel_dir_bundle(settings, there, warm))
    args = hardening.run_args(settings, there, pool=(key, str(warm.path)))
    if not pool.lowers_priority(settings, engine):
        (warm.path / WEIGHT_NOTE).write_text(f"{pool.cpu_shares(settings)}\n")
    else:
        args.insert(1, f"--cpu-shares={pool.WARM_CPU_SHARES}")
    try:
        container_id = engine.run(args, timeout=120).stdout.strip()
    except EngineError:
        remove_warm_dirs(engine, [warm.path.name])
        raise
    threading.Thread(target=_mark_claimable, args=(connection, remote, warm), daemon=True).start()
    return container_id


def _mark_claimable(connection: Connection, remote: RunDir, warm: RunDir) -> None:
    """Wait on the node for the warm kernel's claim socket; then a socket file of its
    name here (what pool.claim and settle_when_ready look for; nothing listens on it)."""
    script = _CLAIMABLE_SCRIPT.format(
        ticks=int(pool.READY_WAIT * 20),
        rt=remote.sockets.name,
        claim=remote.claim_socket().name,
        pins=remote.pins.name,
        sockets=" ".join(remote.socket(i).name for i in range(1, len(CHANNELS) + 1)),
    )
    try:
        proc = connection.run(
            ["sh", "-c", script, str(remote.path)],
            timeout=pool.READY_WAIT + 10,
            check=False,
        )
    except (EngineError, OSError, subprocess.SubprocessError) as exc:
        log.debug("warm container in %s: no word from the node: %s", warm.path.name, exc)
        return
    if proc.returncode == 0:
        # A socket file, bound and let go: the claimer's socket-dir guard allows nothing
        # else there, and its mtime is when the kernel got ready (pool.ready_seconds).
        with (
            contextlib.suppress(OSError),  # its dir went (gc, surplus) meanwhile
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as marker,
        ):
            marker.bind(str(warm.claim_socket()))


def node_api(engine: Engine) -> EngineApi:
    """The API of the node engine `engine` is (ssh://), through its socket forwarded over
    the master (pool.fill asks it which warm containers still run there)."""
    return EngineApi(transport=NodeTransport(Connection.to(engine.address(), engine.environ)))


def remove_warm_dirs(engine: Engine, names: Sequence[str]) -> None:
    """Remove warm containers' dirs on the node `engine` is (pool-<key>-<nonce>), quietly:
    their containers are gone (claimed and removed, expired, surplus, gc)."""
    safe = [n for n in names if n.startswith(pool.POOL_DIR_PREFIX)]
    remove_node_dirs(Connection.to(engine.address(), engine.environ), safe)


def connect_through(
    connection: Connection,
    local: str,
    remote: str,
    also: Sequence[tuple[str, str]] = (),
) -> socket.socket:
    """Connect to a unix socket on the node through a forward from `local` made for this
    connect only: the connection stays (the master carries it; OpenSSH's cancel ends the
    listener, not its channels), the listener and its file here go. A kernel's lifeline
    and a warm kernel's claim are such connections: no process of ours per kernel.
    also: more (local, remote) forwards to make in the same call, which stay."""
    pair = [(local, remote)]
    connection.forward([*pair, *also], what="a kernel's sockets")

    def cancel() -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            connection.forward(pair, cancel=True)
        with contextlib.suppress(OSError):
            os.unlink(local)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(local)
    except OSError:
        sock.close()
        cancel()
        raise
    # Off the start path: nobody else connects to that path meanwhile (our 0700 dir).
    threading.Thread(target=cancel, daemon=True).start()
    return sock


def remove_node_dirs(connection: Connection, names: Sequence[str]) -> None:
    """Remove kernels' (or warm containers') dirs in the node user's runtime base on the
    node, by name, quietly: their containers are gone."""
    safe = [n for n in names if n and "/" not in n and not n.startswith(".")]
    if not safe:
        return
    with contextlib.suppress(EngineError, OSError, subprocess.SubprocessError):
        connection.run(
            ["sh", "-c", _REMOVE_DIRS_SCRIPT, connection.facts().base, *safe],
            check=False,
            timeout=30,
        )


# -- the socket-dir guard on the node's side (_node_guard.py) -------------------------------

#: How long a kernel's watch may take to begin, a guard's start on the node included.
GUARD_WAIT = 30.0
#: The node's guard container: one per node user (the name makes a second start fail).
GUARD_NAME = "jdk-socket-guard-{uid}"
#: Its limits: a thread and an inotify instance per kernel watched, a few MiB.
GUARD_MEMORY = "128m"
GUARD_PIDS = 1024
#: Runs on the node: our guard's two files into the runtime base ($0) from the tar on
#: stdin, then `docker run -d ...` ("$@"); if that fails, a stopped guard left holding the
#: name ($1) is removed (a running one is not: no -f) and the run tried once more. Files,
#: not a dir: gc sweeps unknown dirs there.
_GUARD_SCRIPT = (
    'umask 077; cd -- "$0" && [ -O . ] && tar -x -m -f - && n=$1 && shift && '
    '{ docker "$@" || { docker rm -- "$n" >/dev/null 2>&1 && exec docker "$@"; }; }'
)
#: How often a watch that finds no guard starts one (a guard may be ending meanwhile).
GUARD_RESTART = 2.0


class NodeGuard:
    """One node kernel's socket-dir guard: a connection to the node's guard
    (_node_guard.py) through the master, asking it to watch the kernel's socket dir there
    with the local guard's rules. Made by SshBackend at the start (start_cold: while the
    kernel's dir is being made, NodeHeld starts the container only once it is watched;
    claim: before the hand-over), in a thread of its own (a resident helper's loop never
    waits for a node); it starts the node's guard if none answers (start_guard).
    Container.guard gets it through SshBackend.socket_dir_guard and sets its alarm:
    "violation <reason>" from the node calls it, as SocketDirGuard's own does. Should
    the guard end while the master lives, the watch is asked again (a new guard lists the
    dir first); if that fails too (or at the start), the alarm stops the kernel: a node
    kernel is never left unwatched."""

    def __init__(self, connection: Connection, settings: KernelSettings, remote_dir: str) -> None:
        self.connection = connection
        self.settings = settings
        self.request = json.dumps({"dir": remote_dir, "allowed": socket_names()}).encode()
        self.closed = False
        self.sock: socket.socket | None = None
        #: Set once the node's guard said "watching" (or the watch failed: self.failed).
        self.watching = threading.Event()
        self.failed = ""
        self._lock = threading.Lock()
        self._alarm: Callable[[str], None] | None = None
        #: A verdict that came before the alarm was set.
        self._verdict = ""
        threading.Thread(target=self._run, daemon=True).start()

    def wait(self, timeout: float) -> bool:
        """Whether the node's guard watches the dir, within timeout (NodeHeld, a claim)."""
        return self.watching.wait(timeout) and not self.failed

    def alarm(self, on_violation: Callable[[str], None]) -> None:
        """Who stops the kernel on a verdict (Container._socket_dir_violated); a verdict
        that came already is passed on at once, in a thread (our caller holds the lock
        Container.stop takes)."""
        with self._lock:
            self._alarm = on_violation
            verdict = self._verdict
        if verdict:
            threading.Thread(target=on_violation, args=(verdict,), daemon=True).start()

    def _say(self, verdict: str) -> None:
        with self._lock:
            if self._verdict or self.closed:
                return
            self._verdict = verdict
            alarm = self._alarm
        if alarm is not None:
            alarm(verdict)

    def _run(self) -> None:
        try:
            self.sock = self._watch()
        except DockerKernelError as exc:
            if not self.closed:  # a start that failed first lets its watch go: no news
                log.warning("%s", exc)
            self.failed = exc.what
            self.watching.set()
            self._say(exc.what)
            return
        self.watching.set()
        self._read()

    def _watch(self) -> socket.socket:
        """A connection on which the node's guard said "watching"; EngineError if none
        did within GUARD_WAIT (the node's guard waits for a dir being made)."""
        deadline = time.monotonic() + GUARD_WAIT
        next_start = 0.0
        said = ""
        while time.monotonic() < deadline and not self.closed:
            # Ours from the start: close() ends a wait for the dir (a start that failed).
            self.sock = sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(guard_socket(self.connection))
                sock.sendall(self.request + b"\n")
                said = _read_line(sock)
            except (OSError, EngineError) as exc:
                said = str(exc)
            if said == "watching":
                sock.settimeout(None)
                return sock
            sock.close()
            if said.startswith("refused"):
                break
            if time.monotonic() >= next_start:
                # Nothing answered behind the forward: no guard runs there (yet), or one
                # was ending as we asked (its container holds the name until removed).
                next_start = time.monotonic() + GUARD_RESTART
                start_guard(self.connection, self.settings)
            time.sleep(0.05)
        raise EngineError(
            f"the socket-dir guard on the node {self.connection.node.url} did not watch the "
            f"kernel's socket dir ({said or 'no answer'})",
            "The kernel was stopped",
            "`jupyter-docker-kernel doctor` checks the node; its engine must run the "
            "kernel's image as the node user.",
        )

    def _read(self) -> None:
        while self.sock is not None:
            try:
                line = _read_line(self.sock)
            except OSError:
                line = ""
            if self.closed:
                return
            if line.startswith("violation "):
                self._say(line.removeprefix("violation "))
                return
            if line:
                continue
            # The guard ended. With the master gone the kernel ends with its lifeline,
            # whose reason (the node lost) is the right one.
            if not self.connection.alive():
                return
            log.warning(
                "the socket-dir guard on %s ended: watching again", self.connection.node.url
            )
            try:
                self.sock = self._watch()
            except DockerKernelError as exc:
                self._say(exc.what)
                return

    def close(self) -> None:
        """The watch ends (the kernel's end): the guard on the node lets the dir be."""
        self.closed = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


def _read_line(sock: socket.socket) -> str:
    """One line from the guard ("" at its end): byte by byte, as few lines ever come."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            return ""
        data += chunk
    return data.decode(errors="replace").strip()


def guard_files() -> tuple[str, bytes]:
    """(version, tar of _node_guard.py and socketdir.py as the runtime base's
    .guard-<version>.py and .guard-<version>-socketdir.py): the version changes with either."""
    import hashlib

    here = Path(_node_guard.__file__)
    sources = [here.read_bytes(), Path(socketdir.__file__).read_bytes()]
    version = hashlib.sha256(b"\0".join(sources)).hexdigest()[:12]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for suffix, data in zip((".py", "-socketdir.py"), sources, strict=True):
            info = tarfile.TarInfo(f".guard-{version}{suffix}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return version, out.getvalue()


def guard_args(settings: KernelSettings, base: str, uid: int, gid: int, version: str) -> list[str]:
    """`docker run` arguments of the node's guard: hardened as our other helper containers
    (hardening.probe_args: no network, no capabilities, no new privileges, the node user),
    read-only but for the runtime base (mounted at its own path: the kernels' socket dirs
    are below it), capped, in the kernel's image with its Python (pure)."""
    return [
        "run",
        "-d",
        "--rm",
        "--pull=never",
        "--name",
        GUARD_NAME.format(uid=uid),
        "--network",
        "none",
        "--read-only",
        # Nothing written but its socket (no __pycache__ in the base).
        *("--env", "PYTHONDONTWRITEBYTECODE=1"),
        "--user",
        f"{uid}:{gid}",
        *("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
        *("--memory", GUARD_MEMORY, "--pids-limit", str(GUARD_PIDS)),
        "--volume",
        f"{base}:{base}",
        *hardening.entrypoint_args(settings),
        settings.image,
        settings.python,
        f"{base}/.guard-{version}.py",
        base,
        f"{base}/.guard-{version}-socketdir.py",
    ]


def start_guard(connection: Connection, settings: KernelSettings) -> None:
    """Start the node's socket-dir guard (one ssh session: its files, then `docker run
    -d`), quietly: a guard started meanwhile by another start holds the name, and the
    caller's next connect reaches it either way (or says why it could not)."""
    facts = connection.facts()
    version, bundle = guard_files()
    args = guard_args(settings, facts.base, facts.uid, facts.gid, version)
    name = GUARD_NAME.format(uid=facts.uid)
    proc = connection.run(
        ["sh", "-c", _GUARD_SCRIPT, facts.base, name, *args], input_bytes=bundle, check=False
    )
    if proc.returncode != 0:
        log.debug("guard start on %s: %s", connection.node.url, proc.stderr.decode().strip())
