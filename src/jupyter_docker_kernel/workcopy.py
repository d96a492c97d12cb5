"""--copy-workdir: the notebook's directory, streamed into a tmpfs in the container.

The copy never lands on the host's disk: the container gets a size- and inode-capped tmpfs
at the work dir's path (hardening.run_args; its pages count against the kernel's memory
limit), and the launcher streams the files into it, which the in-container supervisor
(_supervise.receive_tree) unpacks before the kernel starts. Nothing is ever copied back.

Container.prepare() / adopt() call `scan()` before any container exists or is handed over
(limits are checked there, so a refused copy starts nothing), then `send()` writes the
stream: into `docker run -i`'s stdin, or over a warm container's claim socket.

The stream is a sequence of entries, each a HEADER (kind, mode, mtime, data size, name
size), then the name (bytes, relative, "/"-separated), then the data: a file's content or a
symlink's target. Kind b"." ends it. Symlinks are sent as links, never followed; fifos,
sockets and devices are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from jupyter_docker_kernel.errors import LaunchError

#: kind, mode, mtime, data size, name size (_supervise.py reads the same layout).
HEADER = struct.Struct("!cIdQI")
DIR, FILE, LINK, END = b"d", b"f", b"l", b"."
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One directory, regular file or symlink of the source, relative to it."""

    kind: bytes
    name: bytes


def scan(source: str, *, limit: int, max_entries: int) -> list[Entry]:
    """Everything `source` holds that the copy carries, parents before children.

    Raises LaunchError when the files add up to more than `limit` bytes or more than
    `max_entries` entries (the tmpfs caps: the copy must leave room for the kernel's own
    files), or when the directory cannot be read. Walks with an explicit stack: a tree
    nested a thousand levels deep must not hit Python's recursion limit.
    """
    entries: list[Entry] = []
    total = 0
    stack = [b""]
    root = os.fsencode(source)
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as found:
                children = sorted((e.name, e.stat(follow_symlinks=False)) for e in found)
        except OSError as exc:
            raise LaunchError(
                f"Could not read the work directory {source} for --copy-workdir: {exc}. "
                "No container was started."
            ) from exc
        for name, st in children:
            path = os.path.join(rel, name) if rel else name
            if stat.S_ISDIR(st.st_mode):
                entries.append(Entry(DIR, path))
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                if not os.access(os.path.join(root, path), os.R_OK):
                    raise LaunchError(
                        f"Could not read {os.fsdecode(os.path.join(root, path))} for "
                        "--copy-workdir (permission denied). No container was started."
                    )
                entries.append(Entry(FILE, path))
                total += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                entries.append(Entry(LINK, path))
            # fifos, sockets, devices: skipped (a fifo would hang the copy)
        if total > limit:
            raise LaunchError(
                f"The work directory {source} holds more than {limit} bytes, the "
                "--copy-workdir limit. No container was started. Raise copy_limit in the "
                "kernelspec (setup --copy-limit), or start the notebook from a smaller directory."
            )
        if len(entries) >= max_entries:
            raise LaunchError(
                f"The work directory {source} holds {len(entries)} or more files and "
                f"directories; the kernel's copy may hold {max_entries} in all (--tmp-inodes). "
                "No container was started. Raise --tmp-inodes, or start the notebook from a "
                "smaller directory."
            )
    return entries


def send(source: str, entries: list[Entry], write: Callable[[bytes], object]) -> None:
    """Write the stream of `entries` (from scan()) with `write`, then the end marker.

    A file is opened without following links and without blocking, and sent only if it is
    still a regular file; one that changed kind since scan() is skipped. Its size is taken
    when it is opened and exactly that many bytes are sent (padded if it shrank meanwhile).
    """
    root = os.fsencode(source)
    for entry in entries:
        path = os.path.join(root, entry.name)
        try:
            if entry.kind == FILE:
                _send_file(path, entry.name, write)
                continue
            st = os.lstat(path)
            if entry.kind == LINK and stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                write(_header(LINK, st, len(target), entry.name) + target)
            elif entry.kind == DIR and stat.S_ISDIR(st.st_mode):
                write(_header(DIR, st, 0, entry.name))
        except OSError as exc:
            # Gone or swapped for a link since scan(): what is left is sent. Anything
            # else is not skipped quietly: the kernel would miss a file.
            if not isinstance(exc, FileNotFoundError) and exc.errno != errno.ELOOP:
                raise LaunchError(
                    f"Could not send {os.fsdecode(path)} for --copy-workdir: {exc}."
                ) from exc
    write(HEADER.pack(END, 0, 0.0, 0, 0))


def _header(kind: bytes, st: os.stat_result, size: int, name: bytes) -> bytes:
    return HEADER.pack(kind, stat.S_IMODE(st.st_mode), st.st_mtime, size, len(name)) + name


def _send_file(path: bytes, name: bytes, write: Callable[[bytes], object]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        write(_header(FILE, st, st.st_size, name))
        left = st.st_size
        while left:
            data = os.read(fd, min(CHUNK, left)) or bytes(min(CHUNK, left))
            write(data)
            left -= len(data)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
