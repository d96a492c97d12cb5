"""The socket-dir guard on a node's side (issue 13): runs ON THE NODE, not here.

A node kernel's socket dir is in the node user's runtime base on the node, bind-mounted
writable into its container, as a local kernel's is on this host, so the same rules hold
(socketdir.SocketDirGuard: only the kernel's sockets may appear there). This is that same
class, run where the dir is: one process per node (and node user), in a container of the
kernel's image that node_backend.start_guard starts (no network, read-only, no
capabilities, the node user's uid, the runtime base mounted at its own path). The node
need not have this package: this file and socketdir.py are copied into the base next to
each other, and main() loads socketdir.py by path.

It listens on GUARD_SOCKET in that base (0700, the node user's: only they and root reach
it; nothing listens on a network port), which this host reaches through the node's SSH
master (ssh.guard_socket). Each connection is one kernel: its first line, JSON
{"dir": <the kernel's socket dir on the node>, "allowed": [<socket names>]}, is answered
"watching" once the guard watches that dir (or "refused <why>"), later "violation
<reason>" with the local guard's own words. The connection's end (the kernel's end, its
holder killed, the master lost) ends that watch. With no connection for IDLE_SECONDS the
process exits, and --rm removes its container: nothing stays on the node once no kernel
of ours runs there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The listening socket's name in the node user's runtime base.
GUARD_SOCKET = "guard.sock"
#: How long the guard stays with no kernel to watch (a next start reuses it meanwhile).
IDLE_SECONDS = 60.0
#: How long a requested dir may take to appear: a cold start asks for the watch while
#: its dir is being made (node_backend.NodeHeld starts the container once it is watched).
DIR_WAIT = 120.0


class Watch:
    """One kernel's connection and the guard of its socket dir."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""
        self.guard: Any = None
        #: Asked at (monotonic), for a dir that is not there yet.
        self.asked = 0.0
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        """Send one line to this host (the guard's thread, or the main loop)."""
        with self.lock, contextlib.suppress(OSError):
            self.conn.sendall(line.replace("\n", " ").encode() + b"\n")

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        with contextlib.suppress(OSError):
            self.conn.close()


def socket_dir(base: str, asked: object) -> str:
    """The socket dir a request names, if it is a real directory two levels below base
    (<base>/<kernel dir>/<socket dir>, no link on the way); ValueError otherwise."""
    if not isinstance(asked, str) or not asked.startswith(base.rstrip("/") + "/"):
        raise ValueError("not in the runtime base")
    parts = asked[len(base.rstrip("/")) + 1 :].split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
        raise ValueError("not a kernel's socket dir")
    for path in (os.path.join(base, parts[0]), asked):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise ValueError(f"{path} is not a directory")
    return asked


def start_watch(watch: Watch, base: str, guard_class: Callable[..., Any]) -> bool:
    """Watch the socket dir the connection's first line names, and say so; False while
    that dir is not there yet (asked again until DIR_WAIT)."""
    watch.asked = watch.asked or time.monotonic()
    try:
        request = json.loads(watch.buffer.split(b"\n", 1)[0])
        path = socket_dir(base, request.get("dir"))
        allowed = [str(name) for name in request.get("allowed") or []]
    except FileNotFoundError as exc:
        if time.monotonic() - watch.asked < DIR_WAIT:
            return False
        watch.say(f"refused {exc}")
        return True
    except (ValueError, OSError, AttributeError) as exc:
        watch.say(f"refused {exc}")
        return True
    watch.guard = guard_class(Path(path), allowed, lambda why: watch.say(f"violation {why}"))
    watch.say("watching")
    return True


def serve(base: str, guard_class: Callable[..., Any], idle: float = IDLE_SECONDS) -> None:
    """Accept kernels' watch requests on GUARD_SOCKET until idle for `idle` seconds."""
    path = os.path.join(base, GUARD_SOCKET)
    # Bound and listening under another name first: a socket at `path` always answers.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{path}.new")
    listener.bind(f"{path}.new")
    listener.listen(64)
    os.rename(f"{path}.new", path)
    watches: dict[int, Watch] = {}
    #: Watches whose dir is not there yet, looked for again at each turn.
    waiting: list[Watch] = []
    idle_since = time.monotonic()
    try:
        while watches or time.monotonic() - idle_since < idle:
            waiting = [w for w in waiting if w.conn.fileno() >= 0]
            waiting = [w for w in waiting if not start_watch(w, base, guard_class)]
            fds = [listener.fileno(), *watches]
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(20 if waiting else min(1000, int(idle * 1000) + 1)):
                if fd == listener.fileno():
                    conn, _ = listener.accept()
                    watches[conn.fileno()] = Watch(conn)
                    continue
                watch = watches[fd]
                try:
                    data = watch.conn.recv(4096)
                except OSError:
                    data = b""
                if not data or len(watch.buffer) > 65536:
                    del watches[fd]
                    watch.close()
                    if not watches:
                        idle_since = time.monotonic()
                    continue
                if watch.guard is None and b"\n" not in watch.buffer:
                    watch.buffer += data
                    if b"\n" in watch.buffer and not start_watch(watch, base, guard_class):
                        waiting.append(watch)
    finally:
        # The socket goes first: a start that connects now finds no guard and starts one.
        with contextlib.suppress(OSError):
            os.unlink(path)
        listener.close()
        for watch in watches.values():
            watch.close()


def main(argv: list[str]) -> int:
    """python _node_guard.py BASE SOCKETDIR_PY (node_backend.start_guard's command)."""
    base, module_path = argv[1], argv[2]
    os.umask(0o077)  # its socket 0600 (in the node user's 0700 base already)
    spec = importlib.util.spec_from_file_location("socketdir", module_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["socketdir"] = module
    spec.loader.exec_module(module)
    serve(base, module.SocketDirGuard)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
