"""The five channels' addresses on both sides, and opening them; no asyncio here.

The launcher imports this before the container starts, so it must stay cheap: binding the
host endpoints this early means the Jupyter client's first connection attempt is accepted
(and waits in the backlog) instead of being refused and retried 100 ms later by ZeroMQ.
relay.py takes the listening sockets over and moves the bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import time
from dataclasses import dataclass

#: The channels in the order of the kernel's in-container socket numbers (k-1 .. k-5).
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


class RelayError(OSError):
    """A host endpoint could not be bound, or a kernel socket is not what it should be."""


@dataclass(frozen=True)
class Endpoint:
    """One host-side endpoint from the client's connection file."""

    transport: str  # "tcp" or "ipc"
    address: str  # ip for tcp, socket path for ipc
    port: int = 0

    def describe(self) -> str:
        return f"{self.address}:{self.port}" if self.transport == "tcp" else self.address


@dataclass(frozen=True)
class Route:
    """A channel: the host endpoint clients use and the kernel's socket path on the host."""

    channel: str
    host: Endpoint
    kernel_socket: str


def host_endpoints(
    connection: dict[str, object], relative_to: str | None = None
) -> dict[str, Endpoint]:
    """The five host endpoints named by a jupyter_client connection file.

    An ipc `ip` may be relative ("kernel-ipc", what a KernelManager without a connection
    file name uses): the client's libzmq resolves it against the client's cwd, so the
    launcher passes that as `relative_to` (its own cwd is the kernel's, the notebook's dir).
    """
    transport = str(connection.get("transport", "tcp"))
    ip = str(connection.get("ip", "127.0.0.1"))
    if transport == "ipc" and relative_to is not None:
        ip = os.path.join(relative_to, ip)  # unchanged if ip is absolute
    out: dict[str, Endpoint] = {}
    for channel in CHANNELS:
        port = int(connection[f"{channel}_port"])  # type: ignore[call-overload]
        if transport == "ipc":
            out[channel] = Endpoint("ipc", f"{ip}-{port}")
        else:
            out[channel] = Endpoint("tcp", ip, port)
    return out


def client_cwd() -> str:
    """The Jupyter client's cwd: our parent's, which started us; ours if it cannot be read."""
    try:
        return os.readlink(f"/proc/{os.getppid()}/cwd")
    except OSError:
        return os.getcwd()


def listen(endpoint: Endpoint, channel: str, bind_timeout: float = 10.0) -> socket.socket:
    """A non-blocking socket listening on `endpoint`; retries while a previous launcher
    of the same kernel (a restart) lets go of the address.

    A tcp endpoint on 127.0.0.1 is open to every local user, as upstream Jupyter's own
    kernels are (the HMAC key guards shell, not iopub's reading); an ipc endpoint (the
    client's `transport: ipc`) is a socket file only its owner can connect to.
    """
    deadline = time.monotonic() + bind_timeout
    while True:
        if endpoint.transport == "ipc":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(endpoint.address).st_mode):
                    os.unlink(endpoint.address)  # left by a previous run of this kernel
        else:
            family = socket.AF_INET6 if ":" in endpoint.address else socket.AF_INET
            # proto IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns
            # Nagle off (TCP_NODELAY) only for those; with it on, a round trip took 3x.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if endpoint.transport == "ipc":
                sock.bind(endpoint.address)
                # Only we may connect (Linux asks for write permission on the socket file),
                # whatever the umask and the directory the client chose. Set before listen(),
                # until which every connection attempt is refused: no window for anyone.
                os.chmod(endpoint.address, 0o600)
            else:
                sock.bind((endpoint.address, endpoint.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise RelayError(
                    exc.errno or errno.EIO,
                    f"cannot listen on {channel} endpoint {endpoint.describe()}: "
                    f"{exc.strerror or exc}",
                ) from exc
            time.sleep(0.05)
            continue
        sock.setblocking(False)
        return sock


def adopt_listening(sock: socket.socket | None, endpoint: Endpoint) -> socket.socket | None:
    """`sock`, non-blocking, when it is a tcp socket listening on `endpoint` (one a thin
    client bound before it reached the helper, thin.listen_early); otherwise None, and
    `sock` is closed: the caller binds the endpoint itself (listen)."""
    if sock is None:
        return None
    try:
        ours = (
            endpoint.transport == "tcp"
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM
            and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            and sock.getsockname()[:2] == (endpoint.address, endpoint.port)
        )
    except OSError:
        ours = False
    if not ours:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def connect_kernel_socket(path: str) -> socket.socket:
    """Connect to a socket the kernel created, refusing anything that is not a socket.

    The kernel can write in its runtime dir, so it could swap its socket for a symlink to
    a host socket (the engine's, say). Opening with O_PATH|O_NOFOLLOW and connecting
    through /proc/self/fd pins the very inode we checked.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise RelayError(errno.EPERM, f"{path} is not a socket (replaced by the kernel?)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{fd}")
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock
    finally:
        os.close(fd)
