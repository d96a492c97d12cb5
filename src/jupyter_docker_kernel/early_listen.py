"""The resident helper listens on an argv kernel's endpoints as soon as its client writes them.

A Jupyter client writes the connection file, starts the kernelspec's argv (our thin
client) and connects to the file's ports a few ms later. Nothing listens there until the
thin client's Python is up (9 ms on an idle core, 16-100 ms on a loaded machine), so the
client's connection is usually refused, and ZeroMQ retries it only after 100-200 ms: most
of a pooled start (docs/benchmarks.md). The helper is already running, so it can be first:
it watches (inotify) the directories its clients' connection files were in, and when a
client closes a new connection file there naming a kernelspec the helper has run from that
directory, it binds the file's tcp endpoints at once. The thin client that comes next
finds them taken (thin.listen_early skips them); its session takes them (`take`).

What it binds is the ports a client of its own uid chose for a kernelspec of ours, as
the thin client would a moment later (files of other owners are never read). A file whose
launcher does not come (a client that failed to start it; a kernelspec of the same name
that is not ours, in another Jupyter sharing the directory) is let go after HOLD seconds,
before such a kernel binds its own ports.

hosting.run_kernel calls `EarlyListen.of(loop)`, `learn()` once a session's connection
file is read, and `take()` when it binds its endpoints; everything else runs on the
helper's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import socket
import struct
import threading
from typing import ClassVar

from jupyter_docker_kernel import thin

log = logging.getLogger(__name__)

#: Seconds the helper holds endpoints for a launcher that has not come: the launcher comes
#: within tens of ms; a native ipykernel binds its own after about 300 ms.
HOLD = 0.25
# <sys/inotify.h>
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
_EVENT = struct.Struct("iIII")
#: Kernel names remembered per directory, and directories watched (inotify watches are a
#: per-user resource; a helper's clients use one or two runtime directories).
MAX_NAMES = 64
MAX_DIRS = 32


class EarlyListen:
    """One per helper process (`of`): the watched directories and the endpoints held."""

    _instance: ClassVar[EarlyListen | None] = None
    _made = threading.Lock()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop | None) -> EarlyListen:
        """The helper's one EarlyListen, on its loop (made on first use, from any thread);
        without a loop (a runner called outside a helper), one that watches nothing."""
        with cls._made:
            if cls._instance is None or cls._instance.loop is not loop:
                cls._instance = cls(loop)
            return cls._instance

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.fd = -1
        self.libc: ctypes.CDLL | None = None
        if loop is not None:
            with contextlib.suppress(OSError, AttributeError):
                self.libc = ctypes.CDLL(None, use_errno=True)
                self.fd = int(self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        #: inotify watch descriptor -> directory; directory -> kernel names served from it.
        self.watches: dict[int, str] = {}
        self.names: dict[str, set[str]] = {}
        #: connection file -> its endpoints, listening, by channel (until taken or let go).
        self.held: dict[str, dict[str, socket.socket]] = {}
        self._lock = threading.Lock()
        if loop is not None and self.fd >= 0:
            loop.call_soon_threadsafe(loop.add_reader, self.fd, self._events)

    def learn(self, connection_file: str, kernel_name: str) -> None:
        """A session of kernelspec `kernel_name` came with this connection file: watch its
        directory for the next ones (any thread)."""
        if self.loop is not None and self.fd >= 0 and kernel_name:
            self.loop.call_soon_threadsafe(self._learn, connection_file, kernel_name)

    def take(self, connection_file: str) -> dict[str, socket.socket]:
        """The endpoints held for this connection file, now the caller's (any thread)."""
        with self._lock:
            return self.held.pop(connection_file, {})

    # -- on the loop ---------------------------------------------------------------------

    def _learn(self, connection_file: str, kernel_name: str) -> None:
        assert self.libc is not None
        folder = os.path.dirname(connection_file)
        if folder not in self.names:
            if len(self.names) >= MAX_DIRS:
                return
            mask = IN_CLOSE_WRITE | IN_MOVED_TO
            wd = int(self.libc.inotify_add_watch(self.fd, os.fsencode(folder), mask))
            if wd < 0:
                return
            self.watches[wd] = folder
            self.names[folder] = set()
        if len(self.names[folder]) < MAX_NAMES:
            self.names[folder].add(kernel_name)

    def _events(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, _, _, size = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            folder = self.watches.get(wd)
            name = os.fsdecode(raw)
            if folder is not None and name.endswith(".json"):
                self._listen(os.path.join(folder, name), self.names[folder])

    def _listen(self, path: str, names: set[str]) -> None:
        """Bind the endpoints of the connection file at `path` if it names a kernelspec
        served from its directory (tcp on a numeric address only: thin.listen_early)."""
        with self._lock:
            if path in self.held:
                return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                # Only our own files (a shared /tmp): nobody else may have us bind ports.
                if os.fstat(fd).st_uid != os.getuid():
                    return
                text = os.read(fd, thin.MAX_CONNECTION_FILE).decode()
            finally:
                os.close(fd)
            info = json.loads(text)
        except (OSError, ValueError):
            return  # not ours to read, or not a connection file
        if not isinstance(info, dict) or info.get("kernel_name") not in names:
            return
        early = thin.listen_early(path)
        if not early:
            return
        held = {name: socket.socket(fileno=sock.detach()) for name, sock in early.items()}
        with self._lock:
            self.held[path] = held
        assert self.loop is not None  # events come only with a loop
        self.loop.call_later(HOLD, self._let_go, path, held)

    def _let_go(self, path: str, held: dict[str, socket.socket]) -> None:
        """Nobody took them in HOLD seconds: close them (the kernel's own start binds)."""
        with self._lock:
            if self.held.get(path) is not held:
                return
            del self.held[path]
        for sock in held.values():
            sock.close()
        log.debug("let go of the endpoints of %s: no launcher came for it", path)
