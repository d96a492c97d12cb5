"""A kernel's own output and exit, kept on the host for `jupyter-docker-kernel logs`.

Why here and not in the engine or the server's log: kernel containers run with
`--log-driver none` (a kernel's output must not fill the engine's disk) and are removed
when they exit, so the engine keeps nothing; the launcher forwards at most FORWARD_LIMIT
bytes of the kernel's raw stdout/stderr to its stderr, which is the Jupyter server's log,
wherever that goes (a terminal, journald, a file only the admin reads). So the launcher
(and the provisioner) also keep the last TAIL_KEEP bytes of that raw output, and a small
record of the kernel (kernelspec, container, client, work dir, exit code and reason), in
LOG_DIR of the private runtime base (0700, ours): files 0600, at most 2 * TAIL_KEEP bytes
each, kept KEEP_AFTER_EXIT seconds after the kernel ended, then removed by `gc` (and by
a launcher that ends, at most every PRUNE_EVERY s). The kernel cannot reach them: only its own
`rt` dir is mounted.

Writing never stops a kernel: an OSError here turns the log off, with one warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from jupyter_docker_kernel.rundir import NAME_PREFIX

log = logging.getLogger(__name__)

#: The directory in the runtime base (launcher.runtime_base) that holds the logs.
LOG_DIR = "logs"
#: The most recent raw output kept per kernel (the file grows to twice this, then is cut).
TAIL_KEEP = 64 << 10
#: How long a log stays after its kernel ended (or its launcher vanished).
KEEP_AFTER_EXIT = 24 * 3600.0


def log_dir(base: Path) -> Path:
    """The logs directory in the runtime base, made 0700 on first use."""
    path = base / LOG_DIR
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write data to path atomically, 0600 (a reader sees the old or the new record)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class KernelLog:
    """The kept output and record of one kernel; written from the output-forwarding threads.

    The launcher creates it when the kernel's output starts flowing (Container.open_log),
    its forward() threads call write(), and it calls finish() with the exit code.
    """

    def __init__(self, directory: Path, name: str, record: dict[str, Any]) -> None:
        self.directory = directory
        self.name = name
        self.record = dict(record)
        self.record_path = directory / f"{name}.json"
        self.output_path = directory / f"{name}.log"
        self.lock = threading.Lock()
        self.size = 0
        self.fd = os.open(
            self.output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600
        )
        self._save()

    @classmethod
    def create(cls, base: Path, name: str, record: dict[str, Any]) -> KernelLog | None:
        """A new log in base's LOG_DIR; None (and one warning) when it cannot be written."""
        try:
            return cls(log_dir(base), name, {**record, "container": name, "started": time.time()})
        except OSError as exc:
            log.warning("not keeping the kernel's output for `logs`: %s", exc)
            return None

    @classmethod
    def reopen(cls, directory: Path, name: str) -> KernelLog | None:
        """A log another process created, for its record only (the finish of a kernel
        handed over to the compiled client, which appended the output itself): finish()
        and update() work, write() keeps nothing. None when its record is unreadable."""
        kept = cls.__new__(cls)
        kept.directory = directory
        kept.name = name
        kept.record_path = directory / f"{name}.json"
        kept.output_path = directory / f"{name}.log"
        kept.lock = threading.Lock()
        kept.size = 0
        kept.fd = -1
        try:
            record = json.loads(kept.record_path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("cannot record the kernel's end for `logs`: %s", exc)
            return None
        kept.record = record if isinstance(record, dict) else {}
        return kept

    def _save(self) -> None:
        _write_private(self.record_path, json.dumps(self.record).encode())

    def write(self, chunk: bytes) -> None:
        """Append raw output; past 2 * TAIL_KEEP bytes keep only the last TAIL_KEEP."""
        with self.lock:
            if self.fd < 0:
                return
            try:
                os.write(self.fd, chunk)
                self.size += len(chunk)
                if self.size > 2 * TAIL_KEEP:
                    self._cut()
            except OSError as exc:
                log.warning("stopped keeping the kernel's output for `logs`: %s", exc)
                self._close()

    def _cut(self) -> None:
        keep = read_tail(self.output_path)
        _write_private(self.output_path, keep)
        os.close(self.fd)
        self.fd = os.open(self.output_path, os.O_WRONLY | os.O_APPEND)
        self.size = len(keep)

    def update(self, **fields: Any) -> None:
        """Add facts learnt later (the container id) to the record."""
        with self.lock:
            self.record.update(fields)
            with contextlib.suppress(OSError):
                self._save()

    def finish(self, code: int, reason: str, ran: float, notice: str = "") -> None:
        """Record the exit (the launcher's facts: code, why it stopped it, run time, and the
        kill notice the notebook was shown, which `grade` reports per student)."""
        self.update(
            ended=time.time(), exit_code=code, exit_reason=reason, ran=round(ran, 1), notice=notice
        )
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def read_tail(path: Path, limit: int = TAIL_KEEP) -> bytes:
    """The last `limit` bytes of a kept output file (b"" when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read()
    except OSError:
        return b""


def iter_records(base: Path) -> Iterator[dict[str, Any]]:
    """Every kept record in base's LOG_DIR, one at a time, in no order; unreadable ones are
    skipped. prune reads them this way: a day of grading keeps thousands, and holding them
    all at once left a resident helper some 20 MiB larger for the rest of its life."""
    directory = base / LOG_DIR
    try:
        paths = os.scandir(directory)
    except OSError:
        return
    with paths:
        for entry in paths:
            if not entry.name.endswith(".json"):
                continue
            path = Path(entry.path)
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                data["output_path"] = str(path.with_suffix(".log"))
                yield data


def records(base: Path) -> list[dict[str, Any]]:
    """Every kept record in base's LOG_DIR, newest start first; unreadable ones are skipped."""
    return sorted(iter_records(base), key=lambda r: -float(r.get("started") or 0))


def prune(
    base: Path,
    alive: Callable[[str, str], bool],
    *,
    keep: float = KEEP_AFTER_EXIT,
    now: float | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Remove the logs of kernels that ended more than `keep` seconds ago, and of those whose
    launcher is gone (alive(pid, start) False) without recording an end, once their files
    are that old. Returns the record paths removed (or that would be, with dry_run)."""
    now = time.time() if now is None else now
    removed = []
    for record in iter_records(base):
        output = Path(record["output_path"])
        path = output.with_suffix(".json")
        ended = record.get("ended")
        if ended is None:
            if alive(str(record.get("launcher_pid", "")), str(record.get("launcher_start", ""))):
                continue
            with contextlib.suppress(OSError):
                ended = max(path.stat().st_mtime, output.stat().st_mtime)
        if ended is None or now - float(ended) < keep:
            continue
        if not dry_run:
            for item in (output, path):
                with contextlib.suppress(OSError):
                    item.unlink()
        removed.append(str(path))
    return removed


#: How often a kernel's end also prunes the kept logs (s): reading every record costs CPU
#: in proportion to the day's kernels (0.9 s at 8 777 records), and a class graded in
#: parallel ends a kernel every second or two (issue 14). `gc` prunes whenever it runs.
PRUNE_EVERY = 600.0
#: The file whose mtime says when a kernel's end last pruned base's logs.
PRUNED_STAMP = ".pruned"


def prune_now_and_then(
    base: Path, alive: Callable[[str, str], bool], *, every: float = PRUNE_EVERY
) -> list[str]:
    """prune, unless a kernel's end pruned base's logs less than `every` s ago.

    Container.finish calls it after each kernel: what is kept past KEEP_AFTER_EXIT by a
    few minutes more is harmless; reading a day's records per kernel is not."""
    stamp = base / LOG_DIR / PRUNED_STAMP
    with contextlib.suppress(OSError):
        if time.time() - stamp.stat().st_mtime < every:
            return []
    with contextlib.suppress(OSError):
        stamp.touch(mode=0o600)
        os.utime(stamp)
    return prune(base, alive)


#: What we forward of the engine CLI's own output (the kernel's raw stdout/stderr).
FORWARD_LIMIT = 4 << 20
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
    keep: KernelLog | None = None,
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
