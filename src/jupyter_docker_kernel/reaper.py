"""Finds and removes what dead launchers left: containers and runtime dirs (`gc`).

The launcher's watchdog and the in-container supervisor normally leave nothing behind;
this covers the rest (a host crash, an engine restart, both host processes SIGKILLed).
A container is an orphan when the launcher named in its labels, on this host, is gone:
its pid no longer runs or now belongs to a process that started at another time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.launcher import process_start_time, runtime_base

log = logging.getLogger(__name__)

#: A runtime dir without a launcher marker younger than this may belong to a starting kernel.
STARTING_GRACE = 60.0


def launcher_alive(pid_text: str, start: str) -> bool:
    """True while the process with this pid and start time still runs."""
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    current = process_start_time(pid)
    return bool(current) and (not start or current == start)


@dataclass
class GcResult:
    """What one gc pass removed (names for containers, paths for dirs)."""

    containers: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    kept: int = 0


def collect(engine: Engine, *, dry_run: bool = False) -> GcResult:
    """Remove this host's orphaned kernel containers and runtime dirs; returns what went."""
    result = GcResult()
    host = socket.gethostname()
    uid = str(os.getuid())
    for item in engine.list_containers({engine_mod.LABEL_KERNEL_ID: None}):
        labels = parse_labels(item.get("Labels", ""))
        if labels.get(engine_mod.LABEL_LAUNCHER_HOST) != host:
            continue  # another machine's launcher: we cannot tell whether it lives
        if uid != "0" and labels.get(engine_mod.LABEL_OWNER_UID) != uid:
            continue  # another user's kernel
        alive = launcher_alive(
            labels.get(engine_mod.LABEL_LAUNCHER_PID, ""),
            labels.get(engine_mod.LABEL_LAUNCHER_START, ""),
        )
        if alive:
            result.kept += 1
            continue
        name = str(item.get("Names") or item.get("ID"))
        if not dry_run:
            engine.remove(name)
        result.containers.append(name)
    base = runtime_base()
    now = time.time()
    for entry in sorted(base.iterdir()):
        marker = entry / "launcher"
        try:
            pid, _, start = marker.read_text().partition(" ")
        except OSError:
            pid, start = "", ""
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime < STARTING_GRACE:
                    continue  # a launcher may be between mkdir and writing its marker
        if launcher_alive(pid, start.strip()):
            continue
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True)
        result.dirs.append(str(entry))
    return result


def parse_labels(text: str | dict[str, str]) -> dict[str, str]:
    """`docker ps --format {{json .}}` gives labels as 'k=v,k=v'; podman gives a dict."""
    if isinstance(text, dict):
        return text
    out: dict[str, str] = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        if key:
            out[key] = value
    return out
