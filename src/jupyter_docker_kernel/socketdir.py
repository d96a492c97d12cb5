"""Guard a kernel's socket dir: only its sockets may appear there, anything else stops it.

The socket dir is a host directory (under XDG_RUNTIME_DIR or /tmp) bind-mounted writable
into the container, since the kernel binds its unix sockets there. A non-root user cannot
mount a capped filesystem for it, so the kernel could fill the host's disk and inodes
through it (files, a tree of dirs, O_TMPFILE or unlinked-but-open files, which no listing
shows). SocketDirGuard watches it with inotify from the host, where the kernel cannot stop
it: the first entry that is not one of the kernel's sockets, and the first write to any
file there, is an attack. The guard removes what was made and calls `on_violation`, which
removes the container (and with it every open file). Each file is also capped at --fsize.

Used by Container.attach (argv launcher and provisioner alike), for the
lifetime of one container; close() before the dir is removed. For a kernel on a remote
node, the same class runs on the node (_node_guard.py, node_backend.NodeGuard): stdlib
only, so that the node's copy runs with the kernel image's Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
#: A socket is made by bind(2): IN_CREATE only. Nothing else is ever written in the dir.
WATCHED = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO
_EVENT = struct.Struct("iIII")
#: Sockets (or links) a kernel may create per allowed name before that counts as an attack:
#: once at start, and again if it rebinds.
MAX_CREATIONS_PER_NAME = 4
#: Without inotify (not Linux, or out of watches): how often the dir is listed instead.
POLL_INTERVAL = 0.1


class Watch(Protocol):
    """A watch of one kernel's socket dir, as Container holds it: SocketDirGuard here, or
    node_backend.NodeGuard (the same class, run on the node)."""

    def close(self) -> None: ...


class SocketDirGuard:
    """Watch `path` in a thread; call `on_violation(reason)` once on the first entry that is
    not a socket named in `allowed`, or the first write to a file there."""

    def __init__(
        self, path: Path, allowed: Iterable[str], on_violation: Callable[[str], None]
    ) -> None:
        self.path = path
        self.allowed = frozenset(allowed)
        self.on_violation = on_violation
        self.violated = False
        self.created = 0
        self._stop_r, self._stop_w = os.pipe()
        self._fd = _inotify_watch(path)
        if self._fd < 0:
            log.warning(
                "cannot watch the socket dir %s with inotify; listing it every %.1f s instead "
                "(files a kernel opens and unlinks there in between are not seen)",
                path,
                POLL_INTERVAL,
            )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (idempotent); the caller removes the dir afterwards."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                if fd >= 0:
                    os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1

    def _run(self) -> None:
        # What was there before the watch began counts too.
        self._check(self._strangers())
        while not self.violated:
            if self._fd >= 0:
                ready = readable([self._stop_r, self._fd], None)
            else:
                ready = readable([self._stop_r], POLL_INTERVAL)
            if self._stop_r in ready:
                return
            if self._fd < 0:
                self._check(self._strangers())
                continue
            try:
                data = os.read(self._fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    continue
                return
            self._check(self._reasons(data))

    def _reasons(self, data: bytes) -> list[str]:
        """What in these inotify events is not a kernel binding one of its sockets."""
        reasons = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            _, mask, _, size = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            name = os.fsdecode(raw)
            if mask & IN_Q_OVERFLOW:
                reasons.append("more events than the watch can queue")
            elif not name:
                continue  # the dir itself (gVisor's gofer opens it)
            elif mask & IN_CREATE and not mask & IN_ISDIR and self._is_our_socket(name):
                # Each bind makes an inode: a kernel binding and renaming away in a loop
                # would fill the inode table one socket at a time.
                self.created += 1
                if self.created > MAX_CREATIONS_PER_NAME * len(self.allowed):
                    reasons.append(f"bound {self.created} sockets")
            elif mask & IN_MOVED_TO and self._is_socket_or_link(name):
                continue  # one of its sockets renamed: no new inode (catalogue F09)
            elif mask & (IN_CREATE | IN_MOVED_TO):
                reasons.append(f"created {name!r}")
            elif self._kind(name) == "socket":
                continue  # a socket holds no data (gVisor may report a bind as a write)
            else:
                reasons.append(f"wrote to {name!r}")
        return reasons

    def _is_our_socket(self, name: str) -> bool:
        """A socket at one of the allowed names. A symlink there is let be: the relay and
        the provisioner's pins refuse to follow it (a socket swapped for a link is catalogue
        F09, whose kernel goes on), and creations are counted."""
        return name in self.allowed and self._is_socket_or_link(name)

    def _is_socket_or_link(self, name: str) -> bool:
        # "gone": made and removed again, nothing left to hold space (writes to it, if it
        # is still open, come as events of their own).
        return self._kind(name) in ("socket", "link", "gone")

    def _kind(self, name: str) -> str:
        """What `name` is: socket, link, gone or other (lstat, not following links)."""
        try:
            mode = os.lstat(self.path / name).st_mode
        except FileNotFoundError:
            return "gone"
        except OSError:
            return "other"
        if stat.S_ISSOCK(mode):
            return "socket"
        return "link" if stat.S_ISLNK(mode) else "other"

    def _strangers(self) -> list[str]:
        """Entries of the dir that are not our sockets (the polling fallback, and the start)."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return []
        return [f"created {name!r}" for name in names if not self._is_socket_or_link(name)]

    def _check(self, reasons: list[str]) -> None:
        if not reasons or self.violated:
            return
        self.violated = True
        self._remove_strangers()
        shown = ", ".join(reasons[:3]) + (
            f" and {len(reasons) - 3} more" if len(reasons) > 3 else ""
        )
        self.on_violation(
            f"the kernel wrote to its socket dir, where only its sockets belong ({shown})"
        )

    def _remove_strangers(self) -> None:
        """Unlink every file but our sockets at once. Directories are left to the caller's
        cleanup (remove_tree of the whole runtime dir); space held by files the kernel keeps
        open is freed when its container goes."""
        with contextlib.suppress(OSError), os.scandir(self.path) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False) and not self._is_socket_or_link(
                    entry.name
                ):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def readable(fds: list[int], timeout: float | None) -> list[int]:
    """Those of `fds` ready to read (or at EOF, or in error) within `timeout` seconds (None:
    wait). poll(2), not select(2): a process hosting many kernels (the resident helper, a
    Jupyter server's provisioner) has descriptors above select's limit of 1024, where
    select raises ValueError (and this guard's thread would die, unwatched)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    events = poller.poll(None if timeout is None else timeout * 1000)
    return [fd for fd, _ in events]


def _inotify_watch(path: Path) -> int:
    """An inotify fd watching `path` for WATCHED events; -1 if inotify is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    except (OSError, AttributeError):
        return -1
    if fd < 0:
        return -1
    if libc.inotify_add_watch(fd, os.fsencode(path), WATCHED) < 0:
        os.close(fd)
        return -1
    return fd
