"""Remote nodes over OpenSSH: one multiplexed connection per node and process (issue 13).

A node is `ssh://user@host[:port]` (setup --engine-host, image push). Everything goes
through the user's own OpenSSH client, with the user's keys, agent and known_hosts:
host-key checking is never relaxed (StrictHostKeyChecking=yes: an unknown host key is an
error that says how to add it), and nothing asks for a password (BatchMode). One
ControlMaster per node (its control socket in our private runtime base) carries every
command, the forward of the node engine's socket (engine_socket: node kernels' engine
calls are API requests, NodeTransport), each kernel's lifeline connection and the
forwards of each kernel's unix sockets (`-O forward -L local.sock:remote.sock`): one TCP
connection, one handshake, and no process of ours per kernel.

Who calls it: node_backend.SshBackend (a kernel on a node), push.push (`image push`),
node_manage (list, gc).
JUPYTER_DOCKER_KERNEL_SSH_CONFIG names an ssh_config file (`ssh -F`) for a setup whose
keys are not in the user's ~/.ssh (the tests' nodes: OpenSSH reads the passwd entry's
home, not $HOME).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, ClassVar

from jupyter_docker_kernel.engine import Transport
from jupyter_docker_kernel.errors import EngineError
from jupyter_docker_kernel.rundir import runtime_base

log = logging.getLogger(__name__)

#: The names of our masters' control sockets (and their .lock and .log) in the runtime
#: base: not a kernel's, so gc and the janitor leave them alone (reaper.collect).
CONTROL_PREFIX = "ssh-"
#: An ssh_config file for every ssh call (`ssh -F`); unset: the user's own.
CONFIG_ENV = "JUPYTER_DOCKER_KERNEL_SSH_CONFIG"
#: How long the master stays after its last session ends: the next start reuses it.
PERSIST_SECONDS = 300
#: A node that does not answer this soon is down (connect), or lost (keep-alives: 3 x 5 s).
CONNECT_TIMEOUT = 10
ALIVE_INTERVAL = 5
#: ssh's own exit code for its failures (the remote command's code otherwise).
SSH_FAILED = 255

_URL = re.compile(
    r"^ssh://(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s\[\]]+|\[[0-9a-fA-F:.]+\])(?::(?P<port>\d{1,5}))?/?$"
)


@dataclasses.dataclass(frozen=True)
class Node:
    """A node's address as the user wrote it (ssh://user@host[:port])."""

    url: str
    user: str
    host: str
    port: int | None

    @classmethod
    def parse(cls, url: str) -> Node:
        """The node at url; EngineError for anything but ssh://[user@]host[:port]."""
        match = _URL.match(url.strip())
        if match is None:
            raise EngineError(
                f"'{url}' is not a node address",
                "Nothing was started",
                "Write a node as ssh://user@host or ssh://user@host:port.",
            )
        port = int(match["port"]) if match["port"] else None
        return cls(url.strip().rstrip("/"), match["user"] or "", match["host"], port)

    def destination(self) -> str:
        """user@host for the ssh command line."""
        return f"{self.user}@{self.host}" if self.user else self.host


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a node says about its user once per connection: the kernel's uid and gid (the
    node user's: it must reach the kernel's sockets) and its private runtime base."""

    uid: int
    gid: int
    base: str


#: Asked once per connection; the base is made 0700 and must be the user's own.
_FACTS_SCRIPT = (
    'b="${XDG_RUNTIME_DIR:-${TMPDIR:-/tmp}}/jupyter-docker-kernel-$(id -u)"; '
    'mkdir -p -m 0700 "$b" && [ -O "$b" ] && [ ! -L "$b" ] && chmod 0700 "$b" && '
    'echo "$(id -u) $(id -g) $b"'
)


def ssh_failure(node: Node, stderr: str, code: int) -> EngineError:
    """ssh's own failure (exit 255) as one clear line: what, what was not done, what to do."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else f"ssh exited with {code}"
    low = text.lower()
    where = node.url
    if "could not resolve hostname" in low or "name or service not known" in low:
        what, fix = f"the node {where}'s host name is unknown", "Check the address."
    elif (
        "host key verification failed" in low
        or "no ed25519 host key is known" in low
        or ("host key for" in low and "not known" in low)
    ):
        what = f"the node {where}'s host key is not in your known_hosts"
        fix = (
            "Check the key with the node's admin, then add it (ssh once by hand, or "
            "ssh-keyscan into ~/.ssh/known_hosts); host keys are never accepted unseen."
        )
    elif "remote host identification has changed" in low:
        what = f"the node {where}'s host key CHANGED since it was recorded"
        fix = "Ask the node's admin why; only then replace the line in known_hosts."
    elif "permission denied" in low:
        what = f"the node {where} refused your key ({last})"
        fix = (
            "Add your public key to the node user's ~/.ssh/authorized_keys, "
            "or load it into ssh-agent."
        )
    elif "connection refused" in low:
        what = f"nothing answers SSH at {where} (connection refused)"
        fix = "Is sshd running there, on that port?"
    elif "timed out" in low or "no route to host" in low or "network is unreachable" in low:
        what = f"the node {where} does not answer ({last})"
        fix = "Is it up and reachable from here?"
    else:
        what, fix = f"ssh to the node {where} failed: {last}", "Try `ssh` to it by hand."
    return EngineError(what, "Nothing was started on it", fix)


class Connection:
    """One OpenSSH ControlMaster to a node, shared by all callers in this process (and by
    other processes of the same user: its control socket is named by the node).

    ensure() starts the master if none answers; everything else runs as its client. The
    master lives on its own (`-f`) for PERSIST_SECONDS after its last session, so killing
    us does not cut other kernels' sessions, and the next start costs no handshake.
    """

    _lock = threading.Lock()
    _cache: ClassVar[dict[tuple[str, str], Connection]] = {}

    def __init__(self, node: Node, environ: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.environ = dict(os.environ if environ is None else environ)
        self.config = self.environ.get(CONFIG_ENV, "")
        self._facts: Facts | None = None
        key = hashlib.sha256(f"{node.url}\0{self.config}".encode()).hexdigest()[:16]
        #: In our 0700 runtime base; short: a unix socket path has 108 bytes at most.
        self.control_path = runtime_base() / f"{CONTROL_PREFIX}{key}"
        self._ensure_lock = threading.Lock()

    @classmethod
    def to(cls, url: str, environ: Mapping[str, str] | None = None) -> Connection:
        """The process's connection to the node at url (one per node and ssh_config)."""
        env = os.environ if environ is None else environ
        key = (url, env.get(CONFIG_ENV, ""))
        with cls._lock:
            conn = cls._cache.get(key)
            if conn is None:
                conn = cls._cache[key] = cls(Node.parse(url), env)
            return conn

    def executable(self) -> str:
        path = shutil.which("ssh", path=self.environ.get("PATH", os.defpath))
        if path is None:
            raise EngineError(
                "OpenSSH's client (ssh) is not on PATH",
                "Nothing was started",
                "Install it (Debian: apt-get install openssh-client).",
            )
        return path

    def options(self) -> list[str]:
        """What every call adds to the user's ssh configuration."""
        opts = [self.executable()]
        if self.config:
            opts += ["-F", self.config]
        if self.node.port:
            opts += ["-p", str(self.node.port)]
        return [
            *opts,
            *("-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=yes"),
            *("-o", f"ControlPath={self.control_path}"),
            *("-o", f"ConnectTimeout={CONNECT_TIMEOUT}"),
        ]

    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.environ.items() if k != "DOCKER_HOST"}

    # -- the master --------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether a master answers on our control socket."""
        if not self.control_path.exists():
            return False
        proc = subprocess.run(
            [*self.options(), "-O", "check", self.node.destination()],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=CONNECT_TIMEOUT,
            check=False,
        )
        return proc.returncode == 0

    def ensure(self) -> None:
        """A master answering for this node, started now if need be (one at a time: a
        second master would find the control socket taken and stay as a plain connection).
        EngineError with ssh's reason (unknown host, refused key, unknown host key, down)."""
        with self._ensure_lock:
            if self.alive():
                return
            runtime_base().mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(f"{self.control_path}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self.alive():
                    return
                # A master that died (killed, its connection lost) leaves its socket file:
                # a new master would find the name taken and run without multiplexing.
                with contextlib.suppress(FileNotFoundError):
                    self.control_path.unlink()
                self._start_master()

    def _start_master(self) -> None:
        errors = Path(f"{self.control_path}.log")
        with open(errors, "w") as err:
            # -f: in the background once authenticated; its stderr a file, never a pipe
            # of ours (it would hold it open for PERSIST_SECONDS).
            proc = subprocess.run(
                [
                    *self.options(),
                    *("-o", "ControlMaster=yes"),
                    *("-o", f"ControlPersist={PERSIST_SECONDS}"),
                    *("-o", f"ServerAliveInterval={ALIVE_INTERVAL}"),
                    *("-o", "ServerAliveCountMax=3"),
                    *("-o", "ExitOnForwardFailure=yes"),
                    "-f",
                    "-N",
                    self.node.destination(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env(),
                timeout=CONNECT_TIMEOUT * 3,
                start_new_session=True,
                check=False,
            )
        said = errors.read_text(errors="replace")
        if proc.returncode != 0:
            raise ssh_failure(self.node, said, proc.returncode)
        log.debug("ssh master to %s started", self.node.url)

    def stop(self) -> None:
        """End the master (and with it every session and forward on it); quietly."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [*self.options(), "-O", "exit", self.node.destination()],
                capture_output=True,
                env=self.env(),
                timeout=CONNECT_TIMEOUT,
                check=False,
            )

    # -- sessions -----------------------------------------------------------------------------

    def argv(self, command: Sequence[str]) -> list[str]:
        """The ssh command line that runs `command` on the node through the master (the
        remote shell parses one string: every word quoted)."""
        return [
            *self.options(),
            "-o",
            "ControlMaster=no",
            "-T",
            self.node.destination(),
            "--",
            shlex.join(command),
        ]

    def run(
        self,
        command: Sequence[str],
        *,
        timeout: float = 60,
        input_bytes: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command on the node; EngineError when ssh itself failed (exit 255) or,
        with check, when the command did."""
        self.ensure()
        proc = subprocess.run(
            self.argv(command),
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            env=self.env(),
            start_new_session=True,
            check=False,
        )
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == SSH_FAILED and not stderr.startswith("Error"):
            raise ssh_failure(self.node, stderr, proc.returncode)
        if check and proc.returncode != 0:
            raise EngineError(
                f"'{shlex.join(command)[:80]}' failed on the node {self.node.url}: "
                f"{stderr.strip() or proc.returncode}",
            )
        return proc

    def popen(
        self, command: Sequence[str], *, stdin: int | IO[bytes] | None = subprocess.PIPE
    ) -> subprocess.Popen[bytes]:
        """A command on the node, attached: its stdin, stdout and stderr are pipes of ours."""
        self.ensure()
        return subprocess.Popen(
            self.argv(command),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
            start_new_session=True,
        )

    def facts(self) -> Facts:
        """The node user's uid, gid and runtime base (asked once per connection)."""
        if self._facts is None:
            out = self.run(["sh", "-c", _FACTS_SCRIPT]).stdout.decode().split()
            if len(out) != 3 or not out[0].isdigit() or not out[1].isdigit():
                raise EngineError(
                    f"the node {self.node.url} has no private runtime dir for us ({out})",
                    "Nothing was started on it",
                    "Check that its /tmp (or $XDG_RUNTIME_DIR) is writable and not shared.",
                )
            self._facts = Facts(int(out[0]), int(out[1]), out[2])
        return self._facts

    # -- forwards ------------------------------------------------------------------------------

    def forward(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        cancel: bool = False,
        what: str = "the kernel's sockets",
    ) -> None:
        """Forward local unix sockets to the node's (`-O forward -L local:remote`), or
        cancel such forwards. The master makes the local sockets 0600 (StreamLocalBindMask)."""
        specs: list[str] = []
        for local, remote in pairs:
            specs += ["-L", f"{local}:{remote}"]
        proc = subprocess.run(
            [
                *self.options(),
                "-O",
                "cancel" if cancel else "forward",
                *specs,
                self.node.destination(),
            ],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=CONNECT_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 and not cancel:
            raise EngineError(
                f"could not forward {what} from the node {self.node.url}: {proc.stderr.strip()}",
                "The kernel was stopped",
                "Check that the node's sshd allows AllowStreamLocalForwarding.",
            )


#: Where a node's engine listens (the docker CLI's default): doctor's round trip reaches it,
#: and so does this host's forward of it (Connection.engine_socket).
NODE_ENGINE_SOCKET = "/var/run/docker.sock"
#: The suffix of that forward's local socket, next to the master's control socket (so
#: under CONTROL_PREFIX: gc and the janitor leave it alone).
ENGINE_SUFFIX = ".engine"
#: The same for the node's socket-dir guard (guard_socket).
GUARD_SUFFIX = ".guard"


def engine_socket(connection: Connection) -> str:
    """This host's end of the node's engine socket, forwarded over the master
    (`-O forward -L local:NODE_ENGINE_SOCKET`), made now if no forward answers there.

    Why: every engine call of a node kernel (its exit wait, signals, removal, a warm
    container's claim) is then one HTTP request on the master's connection, as on the
    local engine's API, instead of an `ssh ... docker` process per call (or per kernel,
    for a wait). The local socket is 0600 (the master's StreamLocalBindMask) in our 0700
    runtime base: it reaches no further than our key already does (the node user's
    engine). A master that died takes its forwards with it; the next call forwards again.
    """
    what = "the node's engine socket"
    return standing_forward(connection, ENGINE_SUFFIX, NODE_ENGINE_SOCKET, what)


def guard_socket(connection: Connection) -> str:
    """This host's end of the node's socket-dir guard's socket (_node_guard.GUARD_SOCKET in
    the node user's runtime base), forwarded over the master as the engine's is: each node
    kernel's watch is one connection through it (node_backend.NodeGuard), no process. The
    forward answers even when no guard runs there: the connection then ends at once."""
    from jupyter_docker_kernel._node_guard import GUARD_SOCKET

    remote = f"{connection.facts().base}/{GUARD_SOCKET}"
    return standing_forward(connection, GUARD_SUFFIX, remote, "the node's socket-dir guard")


def standing_forward(connection: Connection, suffix: str, remote: str, what: str) -> str:
    """A forward of the node's unix socket `remote` to the local socket named by the
    master's control socket and `suffix`, made now if none answers there; it lasts as
    long as the master."""
    local = f"{connection.control_path}{suffix}"
    if _answers(local):
        return local
    connection.ensure()
    with open(f"{connection.control_path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(local):
            return local
        # A dead master's file (nothing listens): the new forward needs the name.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(local)
        connection.forward([(local, remote)], what=what)
    return local


def _answers(path: str) -> bool:
    """Whether something listens on the unix socket at path (a live forward)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


class NodeTransport(Transport):
    """engine.EngineApi's way to a node's engine: its socket forwarded over the node's
    ControlMaster (engine_socket). Each request is one stream through the master; nothing
    runs per request or per kernel on this host."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def connect(self, timeout: float | None) -> socket.socket:
        try:
            path = engine_socket(self.connection)
        except EngineError as exc:
            raise OSError(str(exc)) from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def available(self) -> bool:
        return True  # a node's engine is asked, and says so when it does not answer

    def describe(self) -> str:
        return f"{self.connection.node.url} (its engine over SSH)"


def socket_round_trip(connection: Connection, remote: str = NODE_ENGINE_SOCKET) -> float:
    """doctor's check of the kernel's path: forward a fresh local unix socket to `remote`
    on the node, as a kernel's sockets are, and ask the engine behind it for /_ping through
    it; returns the seconds it took. EngineError when the forward or the answer fails
    (sshd refusing unix-socket forwards, the node user not reaching the socket)."""
    import tempfile
    import time

    connection.ensure()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(dir=runtime_base(), prefix="probe-ssh-") as tmp:
        local = f"{tmp}/s"
        connection.forward([(local, remote)])
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(local)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: node\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
        except OSError as exc:
            answer = f"({exc})".encode()
        finally:
            connection.forward([(local, remote)], cancel=True)
    first = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if not answer.startswith(b"HTTP/1.") or " 200 " not in first:
        raise EngineError(
            f"a unix socket forwarded from the node {connection.node.url} ({remote}) did not "
            f"answer: {first or 'the connection was closed'}",
            "No kernel can be reached there",
            "Allow unix-socket forwarding in the node's sshd (AllowStreamLocalForwarding and "
            "AllowTcpForwarding local or yes), and the node user the engine's socket.",
        )
    return time.monotonic() - began
