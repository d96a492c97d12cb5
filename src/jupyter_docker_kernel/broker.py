"""The root broker: hardened kernels for users who cannot reach the container engine.

`jupyter-docker-kernel broker` (cli.py; systemd's jupyter-docker-kernel-broker.service,
or scripts/broker) runs as root and listens on a unix socket (0660, group
jupyter-kernels). Each connection is one kernel of one caller, known by SO_PEERCRED; the
wire format and the policy are broker_policy.py's, the client broker_client.BrokerBackend
(one more container.Backend). For an allowed start the broker:

1. makes the kernel's dir, <state>/<uid>/<name>/ (root, 0711), with `rt/` (the socket
   dir, owned by the caller, 0700: no other user reaches the kernel's sockets) and the
   in-container connection file (the caller's, 0600);
2. opens every host directory to be mounted one component at a time without following
   links (open_owned_dir: O_PATH|O_NOFOLLOW|O_DIRECTORY from "/", each step searchable
   by the caller, the last one owned by the caller) and bind-mounts that open directory
   onto <kernel dir>/m<N> (stage): the engine mounts the staged path, which only root can
   change, so renaming a directory or swapping a link after the check changes nothing
   (a /proc/self/fd path cannot be handed to the engine: runc refuses to bind a mount
   from another mount namespace; measured, EINVAL). The staged mounts go once the engine
   has started the container (its mount namespace has its own copy);
3. starts the container with the product's own lifecycle backend
   (local_backend.LocalBackend.start_cold: hardening.run_args, `docker create`, the
   engine's API, the supervisor's lifeline), as the caller's uid:gid, and holds the
   lifeline itself: the container lives while the caller's connection lives. The
   caller's signals and stops come as control frames on that connection; its end (the
   client's exit, by SIGKILL too) ends the kernel and removes the container.

Every start, stop and refusal is one audit line (logger jupyter_docker_kernel.broker.audit,
and the policy's audit_log file). A broker that starts finds the containers a previous
one left (label LABEL_BROKER) and removes them, with their dirs (sweep).
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import json
import logging
import os
import pwd
import shutil
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_docker_kernel import broker_policy as bp
from jupyter_docker_kernel.broker_policy import Caller, Policy, Refusal, StartRequest
from jupyter_docker_kernel.container import OOM_EXIT, kernel_connection, socket_names
from jupyter_docker_kernel.engine import LABEL_PREFIX, Engine
from jupyter_docker_kernel.errors import DockerKernelError, EngineError
from jupyter_docker_kernel.hardening import SUPERVISOR_PATH, Launch, env_file_text
from jupyter_docker_kernel.local_backend import LocalBackend
from jupyter_docker_kernel.notice import SUPERVISOR
from jupyter_docker_kernel.rundir import RunDir, process_start_time
from jupyter_docker_kernel.socketdir import SocketDirGuard

log = logging.getLogger(__name__)
audit = logging.getLogger("jupyter_docker_kernel.broker.audit")

#: The label a broker's containers carry: its socket's path (a restart finds them by it).
LABEL_BROKER = f"{LABEL_PREFIX}.broker"
#: How long a caller has to send its start line.
REQUEST_SECONDS = 10.0
_PEERCRED = struct.Struct("3i")
_MS_BIND = 4096
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def state_dir(socket_path: str) -> Path:
    """Where the broker keeps its kernels' dirs: next to its socket (clients know it)."""
    return Path(socket_path).parent / "kernels"


def peer(conn: socket.socket) -> Caller:
    """The connecting process's pid, uid and gid (SO_PEERCRED), and its user's name."""
    pid, uid, gid = _PEERCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = ""
    return Caller(pid, uid, gid, user)


def groups_of(caller: Caller) -> set[int]:
    """The caller's groups as the system lists them (its primary gid included)."""
    try:
        return (
            {caller.gid, *os.getgrouplist(caller.user, caller.gid)} if caller.user else {caller.gid}
        )
    except OSError:
        return {caller.gid}


#: Filesystems (statfs f_type) never mounted for a caller: kernel pseudo-filesystems. A
#: caller owns /proc/<pid> of their own processes, and its magic links (root, cwd, fd/N)
#: lead out of the container's mount namespace to whatever that process sees: the host.
PSEUDO_FILESYSTEMS = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x1CD1: "devpts",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
    0x74726163: "tracefs",
    0x64626720: "debugfs",
    0x73636673: "securityfs",
    0xCAFE4A11: "bpf",
    0x6E736673: "nsfs",
    0x42494E4D: "binfmt_misc",
    0x67596969: "rpc_pipefs",
    0x19800202: "mqueue",
    0xF97CFF8C: "selinuxfs",
    0xDE5E81E4: "efivarfs",
    0x62646576: "bdev",
    0x6165676C: "pstore",
    0x50495045: "pipefs",
    0x534F434B: "sockfs",
}


def filesystem_type(fd: int) -> int:
    """statfs's f_type of the file open as fd (an O_PATH fd will do); -1 if unknown."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field
    if _libc.fstatfs(fd, buf) != 0:
        return -1
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def can_search(st: os.stat_result, caller: Caller, groups: set[int]) -> bool:
    """Whether the caller may pass through a directory (its x bit for them; ACLs aside)."""
    if st.st_uid == caller.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def open_owned_dir(path: str, caller: Caller) -> int:
    """An O_PATH fd of the directory `path`, walked from "/" one component at a time
    without following links, each step one the caller could take, the last directory
    owned by the caller; Refusal otherwise. The fd is what gets mounted (stage), so
    nothing the caller renames or relinks after this check can change it."""
    groups = groups_of(caller)
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        for part in PurePosixPath(path).parts[1:]:
            if not can_search(os.fstat(fd), caller, groups):
                raise Refusal(f"The mount {path} is not yours: you cannot reach it.")
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError:
                # ENOTDIR: a link or a file (O_NOFOLLOW with O_DIRECTORY); ENOENT: absent.
                raise Refusal(
                    f"The mount {path} is not a directory (a link is never followed)."
                ) from None
            os.close(fd)
            fd = nxt
        kind = PSEUDO_FILESYSTEMS.get(filesystem_type(fd))
        if kind is not None:
            raise Refusal(f"The mount {path} is on the kernel's {kind} filesystem, never mounted.")
        st = os.fstat(fd)
        if st.st_uid != caller.uid:
            raise Refusal(f"The mount {path} is not yours (owned by uid {st.st_uid}).")
        home = _home_of(caller)
        if home is not None and (st.st_dev, st.st_ino) == home:
            raise Refusal(f"The mount {path} is your home directory; mount a project in it.")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _home_of(caller: Caller) -> tuple[int, int] | None:
    try:
        st = os.stat(pwd.getpwuid(caller.uid).pw_dir)
    except (KeyError, OSError):
        return None
    return st.st_dev, st.st_ino


def stage(fd: int, target: Path) -> None:
    """Bind-mount the directory open as fd onto target (a root-owned empty dir), private:
    the engine then mounts target, which the caller cannot change."""
    source = f"/proc/self/fd/{fd}".encode()
    if _libc.mount(source, bytes(target), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot bind-mount for the kernel: {os.strerror(err)}")
    _libc.mount(None, bytes(target), None, _MS_PRIVATE, None)


def unstage(target: Path) -> None:
    """Undo stage (lazily: the container keeps its own copy); quiet when not mounted."""
    _libc.umount2(bytes(target), _MNT_DETACH)
    with contextlib.suppress(OSError):
        os.rmdir(target)


def remove_kernel_dir(path: Path) -> None:
    """Remove a kernel's dir: staged mounts are unmounted and never descended into (they
    are a user's files), the caller's socket dir is removed without following links."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        target = Path(entry.path)
        if entry.name.startswith("m") and entry.name[1:].isdigit():
            unstage(target)
        elif entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(Exception):  # fd-based on Linux: links are not followed
                shutil.rmtree(target)
        else:
            with contextlib.suppress(OSError):
                os.unlink(target)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def make_root_dir(path: Path, mode: int = 0o711) -> None:
    """A root-owned dir nobody else may write in (mkdir -p; an existing one must be so)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise EngineError(
            f"{path} is not a directory that only root may change",
            "The broker did not start",
            f"Remove it, or let root own it with mode 0711 ({oct(st.st_mode & 0o777)} now).",
        )


#: How much of a container's last output the broker keeps for the supervisor's verdict.
SAID_TAIL = 4096


def supervisor_lines(tail: bytes) -> list[str]:
    """The supervisor's lines in the end of a container's output, printable only (they go
    into the one-line audit record)."""
    found = []
    for raw in tail.decode(errors="replace").splitlines():
        if raw.startswith(SUPERVISOR):
            text = raw[len(SUPERVISOR) :].strip()
            found.append("".join(c if c.isprintable() else "?" for c in text)[:200])
    return found


def read_line(conn: socket.socket, limit: int) -> bytes:
    """One line (without its newline) of at most limit bytes; Refusal when longer or cut."""
    data = bytearray()
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            raise Refusal("The request ended before its newline.")
        data += chunk
        end = data.find(b"\n")
        if end >= 0:
            if end > limit:
                break
            return bytes(data[:end])
        if len(data) > limit:
            break
    raise Refusal(f"The request is longer than {limit} bytes.")


class Broker:
    """The broker's state: the policy, the engine, the kernels running per user."""

    def __init__(
        self,
        policy: Policy,
        *,
        socket_path: str = bp.DEFAULT_SOCKET,
        group: str = bp.DEFAULT_GROUP,
        engine: Engine | None = None,
    ) -> None:
        self.policy = policy
        self.socket_path = socket_path
        self.group = group
        self.engine = engine or Engine()
        self.backend = LocalBackend(self.engine)
        self.state = state_dir(socket_path)
        self.lock = threading.Lock()
        self.per_user: dict[int, int] = {}
        #: Open connections per uid (kernels and requests not yet answered).
        self.connections: dict[int, int] = {}
        self.kernels: set[BrokerKernel] = set()
        self.stopping = threading.Event()
        if policy.audit_log:
            handler = logging.FileHandler(policy.audit_log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            audit.addHandler(handler)

    # -- the socket ------------------------------------------------------------------------

    def listen(self) -> socket.socket:
        """The listening socket: systemd's (socket activation) or one we bind, 0660
        root:group. Its dir and the kernels' state dir are root's, 0711/0755."""
        if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
            return socket.socket(fileno=3)
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise EngineError(
                f"The group {self.group} does not exist",
                "The broker did not start",
                f"Create it (groupadd {self.group}) and add the users who may start kernels.",
            ) from None
        make_root_dir(Path(self.socket_path).parent, 0o755)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chown(self.socket_path, 0, gid)
        os.chmod(self.socket_path, 0o660)
        listener.listen(64)
        return listener

    def serve(self, listener: socket.socket) -> None:
        """Serve connections until stop(): one thread per connection (per kernel)."""
        make_root_dir(self.state)
        log.info(
            "broker listening on %s (group %s); policy: %s",
            self.socket_path,
            self.group,
            self.policy.describe(),
        )
        listener.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            conn.settimeout(None)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        listener.close()

    def stop(self) -> None:
        """End serving and every kernel (SIGTERM's handler; the tests)."""
        self.stopping.set()
        with self.lock:
            kernels = list(self.kernels)
        for kernel in kernels:
            kernel.end("the broker is stopping")

    # -- leftovers ---------------------------------------------------------------------------

    def sweep(self) -> int:
        """Remove what an earlier broker on this socket left: its containers (found by
        label) and its kernels' dirs (staged mounts unmounted first). Returns how many
        containers were removed."""
        removed = 0
        try:
            found = self.backend.api.containers({LABEL_BROKER: self.socket_path}, all=True)
        except DockerKernelError as exc:
            log.warning("could not list an earlier broker's containers: %s", exc)
            found = []
        for info in found:
            with contextlib.suppress(DockerKernelError):
                if self.backend.remove(str(info.get("Id", ""))):
                    removed += 1
                    audit.info("stop container=%s reason=left by an earlier broker", info.get("Id"))
        if self.state.is_dir():
            for user_dir in self.state.iterdir():
                if user_dir.is_dir() and not user_dir.is_symlink():
                    for kernel_dir in user_dir.iterdir():
                        remove_kernel_dir(kernel_dir)
                    with contextlib.suppress(OSError):
                        user_dir.rmdir()
        return removed

    # -- one connection ----------------------------------------------------------------------

    def handle(self, conn: socket.socket) -> None:
        """One connection: its start (or a refusal, one line), then its kernel's life."""
        try:
            caller = peer(conn)
        except OSError:
            conn.close()
            return
        kernel: BrokerKernel | None = None
        counted = False
        try:
            if caller.uid == 0:
                raise Refusal("Root reaches the engine itself; the broker serves other users.")
            with self.lock:
                # A user's open connections (kernels and pending requests) are capped: each
                # is a thread of ours.
                if self.connections.get(caller.uid, 0) >= self.policy.kernels_per_user + 4:
                    raise Refusal("You have too many connections to the broker open.")
                self.connections[caller.uid] = self.connections.get(caller.uid, 0) + 1
                counted = True
            conn.settimeout(REQUEST_SECONDS)
            line = read_line(conn, bp.MAX_REQUEST)
            conn.settimeout(None)
            start = bp.parse_start(line, self.policy)
            with self.lock:
                if self.per_user.get(caller.uid, 0) >= self.policy.kernels_per_user:
                    raise Refusal(
                        f"You have {self.policy.kernels_per_user} kernels running, the most "
                        "allowed; shut one down first."
                    )
                self.per_user[caller.uid] = self.per_user.get(caller.uid, 0) + 1
            kernel = BrokerKernel(self, caller, start, conn)
            kernel.prepare()
        except Exception as exc:
            refusal = exc if isinstance(exc, Refusal) else Refusal(f"The request failed: {exc}")
            if not isinstance(exc, DockerKernelError | OSError):
                log.exception("unexpected failure serving %s", caller.who())
            audit.info("%s", bp.audit_refusal(caller, refusal))
            if kernel is not None:
                kernel.finish_refused()  # before the answer: the name is free again then
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"ok": False, "error": refusal.line}).encode() + b"\n")
            conn.close()
            if counted:
                self._disconnected(caller)
            return
        try:
            kernel.run()
        finally:
            self._disconnected(caller)

    def _disconnected(self, caller: Caller) -> None:
        with self.lock:
            self.connections[caller.uid] -= 1


class BrokerKernel:
    """One caller's kernel: its dir, staged mounts, the started container (Held) and the
    threads that move bytes between the caller's connection and the lifeline."""

    def __init__(
        self, broker: Broker, caller: Caller, start: StartRequest, conn: socket.socket
    ) -> None:
        self.broker = broker
        self.caller = caller
        self.start = start
        self.conn = conn
        self.dir = broker.state / str(caller.uid) / start.name
        self.rundir = RunDir(self.dir)
        self.staged: list[Path] = []
        self.sources: list[tuple[str, str]] = []
        self.held: Any = None
        self.guard: SocketDirGuard | None = None
        self.reason = ""
        #: The supervisor's own lines at the end of the container's output (pump()).
        self.said: list[str] = []
        self.container_id = ""
        self.started = time.monotonic()
        self._send_lock = threading.Lock()
        self._end_lock = threading.Lock()
        self._counted = True
        #: Whether prepare() made self.dir (a refused duplicate name must not remove another's).
        self._made = False

    # -- before the engine ----------------------------------------------------------------

    def prepare(self) -> None:
        """The kernel's dir, socket dir, connection file and staged mounts; Refusal (or
        OSError) leaves nothing (finish_refused)."""
        user_dir = self.dir.parent
        make_root_dir(user_dir)
        try:
            self.dir.mkdir(mode=0o711)
        except FileExistsError:
            raise Refusal(f"A kernel named {self.start.name} is running already.") from None
        self._made = True
        with self.broker.lock:
            self.broker.kernels.add(self)
        rt = self.rundir.sockets
        rt.mkdir(mode=0o700)
        os.chown(rt, self.caller.uid, self.caller.gid)
        conn = kernel_connection(self.start.settings, self.start.connection)
        fd = os.open(
            self.rundir.connection, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
        )
        with os.fdopen(fd, "w") as fh:
            os.fchown(fh.fileno(), self.caller.uid, self.caller.gid)
            json.dump(conn, fh)
        if self.start.settings.env:
            fd = os.open(
                self.rundir.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
            )
            with os.fdopen(fd, "w") as fh:
                fh.write(env_file_text(self.start.settings))
        for index, path in enumerate(dict.fromkeys(self.start.mount_sources())):
            fd = open_owned_dir(path, self.caller)
            try:
                target = self.dir / f"m{index}"
                target.mkdir(mode=0o700)
                self.staged.append(target)
                stage(fd, target)
            finally:
                os.close(fd)
            self.sources.append((path, str(target)))

    def launch(self) -> Launch:
        """The start's facts for hardening.run_args: the broker's paths, the caller's ids."""
        pid = os.getpid()
        start = self.start
        return Launch(
            kernel_id=start.kernel_id,
            container_name=start.name,
            runtime_dir=str(self.rundir.sockets),
            connection_file=str(self.rundir.connection),
            supervisor_path=SUPERVISOR_PATH,
            host_uid=self.caller.uid,
            host_gid=self.caller.gid,
            workdir=start.workdir,
            project_root=start.project if start.project != start.workdir else "",
            launcher_pid=pid,
            launcher_start=process_start_time(pid),
            hostname=socket.gethostname(),
            env_file=str(self.rundir.env_file) if start.settings.env else None,
            kernelspec=start.kernelspec,
            client_pid=self.caller.pid,
            sources=tuple(self.sources),
            extra_labels=((LABEL_BROKER, self.broker.socket_path),),
        )

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Reply, start, pump until the container ends, clean up (this connection's thread)."""
        self.send_line({"ok": True, "sockets": str(self.rundir.sockets)})
        backend = self.broker.backend
        try:
            self.held = backend.start_cold(self.start.settings, self.launch(), self.rundir)
        except Exception as exc:  # the engine CLI missing, say: the client gets docker's 125
            log.error("could not start %s for %s: %s", self.start.name, self.caller.who(), exc)
            self.reason = f"the broker could not start it: {exc}"
            self.send(bp.OUTPUT, f"docker: {exc}\n".encode())
            self.send(bp.EXIT, json.dumps({"code": 125, "oom": False}).encode())
            self.hang_up()
            self.finish(125)
            return
        threading.Thread(target=self.read_client, daemon=True).start()
        streams = self.held.outputs()  # blocks until the engine started it (or refused)
        for target in self.staged:
            unstage(target)
        self.container_id = self.held.container_id
        if self.container_id:
            self.send(bp.ID, self.container_id.encode())
        audit.info("%s", bp.audit_start(self.caller, self.start, self.container_id))
        self.guard = SocketDirGuard(self.rundir.sockets, socket_names(), self.violated)
        pumps = [threading.Thread(target=self.pump, args=(s,), daemon=True) for s in streams]
        for pump in pumps:
            pump.start()
        code = self.held.wait()
        for pump in pumps:
            pump.join(timeout=5)
        oom = code == OOM_EXIT and self.oom_killed()
        if not self.reason:
            self.reason = "out of memory" if oom else f"the kernel exited with code {code}"
        if self.said:
            # Why the supervisor stopped it (lifetime, memory, pids): the client's log has
            # it, the admin's audit needs it too. The kernel shares the stream and could
            # forge such a line, hence "said", not a verdict of ours.
            self.reason += f" (the supervisor said: {'; '.join(self.said)})"
        self.send(bp.EXIT, json.dumps({"code": code, "oom": oom}).encode())
        self.hang_up()  # the client's wait() ends here, before our cleanup
        self.finish(code)

    def pump(self, stream: Any) -> None:
        """The supervisor's and the kernel's output -> OUTPUT frames, until it ends."""
        read: Callable[[int], bytes] = (
            stream.recv if isinstance(stream, socket.socket) else stream.read1
        )
        tail = b""
        try:
            while True:
                try:
                    data = read(bp.MAX_FRAME)
                except (OSError, ValueError):
                    return
                if not data:
                    return
                tail = (tail + data)[-SAID_TAIL:]
                if not self.send(bp.OUTPUT, data):
                    return  # the client is gone: read_client ends the kernel
        finally:
            self.said += supervisor_lines(tail)

    def read_client(self) -> None:
        """The caller's frames: the copy stream for the supervisor, signals and stops. The
        connection's end, however it comes, ends the kernel."""
        reader = bp.FrameReader(bp.WRITE + bp.CONTROL)
        why = "the client went away"
        try:
            while True:
                data = self.conn.recv(65536)
                if not data:
                    break
                for kind, payload in reader.feed(data):
                    if kind == bp.WRITE:
                        self.held.write(payload)
                    else:
                        self.control(payload)
        except Refusal as exc:
            why = f"the client sent a malformed frame ({exc.line})"
        except OSError:
            pass
        self.end(why)

    def control(self, payload: bytes) -> None:
        """One control message: a signal, a stop or a kill, for this kernel only."""
        try:
            op, arg = bp.parse_control(payload)
        except Refusal as exc:
            log.warning("ignored from %s: %s", self.caller.who(), exc.line)
            return
        if op != "signal" and (arg or op == "stop"):
            # The client's own reason (its relay's budgets, its socket-dir guard, a
            # shutdown) for the audit line: "said", as the client could claim anything.
            with self._end_lock:
                self.reason = self.reason or "stopped by the client" + (
                    f" (it said: {arg})" if arg else ""
                )
        target = self.container_id or self.held.container_id or self.start.name
        with contextlib.suppress(DockerKernelError):
            if op == "signal":
                self.broker.backend.signal(target, arg)
            elif op == "kill":
                self.broker.backend.kill_now(target)
            else:
                self.broker.backend.remove(target)

    def violated(self, reason: str) -> None:
        """The socket-dir guard's alarm: the kernel wrote something besides its sockets."""
        self.end(f"its socket dir was misused: {reason}")

    def end(self, why: str) -> None:
        """Let go of the lifeline and remove the container (once; any thread)."""
        with self._end_lock:
            if not self.reason:
                self.reason = why
        if self.held is not None:
            self.held.close()
        target = self.container_id or (self.held.container_id if self.held else "")
        with contextlib.suppress(DockerKernelError):
            self.broker.backend.remove(target or self.start.name)

    def oom_killed(self) -> bool:
        """The engine's verdict on an exit 137 (a kept container: gVisor)."""
        with contextlib.suppress(DockerKernelError):
            info = self.broker.backend.inspect(self.container_id or self.start.name) or {}
            return bool(info.get("State", {}).get("OOMKilled"))
        return False

    def send(self, kind: bytes, payload: bytes) -> bool:
        """One frame to the caller; False once the connection is gone."""
        with self._send_lock:
            try:
                for offset in range(0, max(len(payload), 1), bp.MAX_FRAME):
                    self.conn.sendall(bp.frame(kind, payload[offset : offset + bp.MAX_FRAME]))
            except OSError:
                return False
        return True

    def hang_up(self) -> None:
        """EOF to the client. shutdown, not only close: read_client's recv holds the
        socket open, so a close alone would send the client nothing."""
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)

    def send_line(self, reply: dict[str, Any]) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.conn.sendall(json.dumps(reply).encode() + b"\n")

    # -- the end ---------------------------------------------------------------------------

    def finish(self, code: int) -> None:
        """After the exit: the container removed (gVisor keeps it), the dir gone, the
        audit line written, the connection closed."""
        if self.guard is not None:
            self.guard.close()
        if self.held is not None:
            self.held.close()
        with contextlib.suppress(DockerKernelError):
            self.broker.backend.remove(self.container_id or self.start.name)
        self._release()
        audit.info(
            "%s",
            bp.audit_stop(
                self.caller,
                self.start.name,
                code,
                self.reason,
                time.monotonic() - self.started,
            ),
        )
        self.hang_up()
        self.conn.close()

    def finish_refused(self) -> None:
        """A start refused after the count was taken: undo what prepare() made."""
        self._release()

    def _release(self) -> None:
        for target in self.staged:
            unstage(target)
        if self._made:
            remove_kernel_dir(self.dir)
        with self.broker.lock:
            self.broker.kernels.discard(self)
            if self._counted:
                self._counted = False
                self.broker.per_user[self.caller.uid] -= 1


def load_policy(path: str) -> Policy:
    """The admin's policy file; PolicyError when it is missing or wrong."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise bp.PolicyError(
            f"Cannot read the broker's policy {path}: {exc.strerror}",
            "The broker did not start",
            "Create it (an empty file allows the default image with the default limits; "
            "docs/multi-user.md shows every key).",
        ) from None
    return Policy.from_toml(text, path)


def run(policy_path: str, socket_path: str, group: str) -> int:
    """`jupyter-docker-kernel broker`: sweep what an earlier broker left, then serve until
    SIGTERM or SIGINT, which end every kernel. Root only."""
    import signal

    if os.geteuid() != 0:
        raise EngineError(
            "The broker must run as root (it starts containers as its callers' uids)",
            "The broker did not start",
            "Start it with systemd (jupyter-docker-kernel-broker.service) or scripts/broker.",
        )
    logging.getLogger("jupyter_docker_kernel").setLevel(logging.INFO)
    policy = load_policy(policy_path)
    broker = Broker(policy, socket_path=socket_path, group=group)
    if not broker.backend.api.available():
        raise EngineError(
            f"The engine's API socket {broker.backend.api.socket_path or '?'} is not there",
            "The broker did not start",
            "Start the engine first ('docker info' says whether it runs).",
        )
    left = broker.sweep()
    if left:
        log.info("removed %d container(s) an earlier broker left", left)
    listener = broker.listen()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: broker.stop())
    broker.serve(listener)
    # stop() ended every kernel; let their threads remove their dirs before we exit.
    deadline = time.monotonic() + 10
    while broker.kernels and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        if not os.environ.get("LISTEN_FDS"):
            os.unlink(socket_path)
    return 0
