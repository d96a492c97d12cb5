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
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import kernel_log, thin
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.rundir import (
    NAME_PREFIX,
    POOL_DIR_PREFIX,
    POOL_NAME_PREFIX,
    POOL_RATES_DIR,
    RunDir,
    remove_tree,
    runtime_base,
)
from jupyter_docker_kernel.rundir import alive as launcher_alive
from jupyter_docker_kernel.ssh import CONTROL_PREFIX

log = logging.getLogger(__name__)

#: A runtime dir without a launcher marker younger than this may belong to a starting kernel.
STARTING_GRACE = 60.0


@dataclass
class GcResult:
    """What one gc pass removed (names for containers, paths for dirs)."""

    containers: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    kept: int = 0
    #: Kept kernel logs (`logs`) past their time (kernel_log.KEEP_AFTER_EXIT).
    logs: list[str] = field(default_factory=list)


def read_marker(directory: Path) -> tuple[str, str] | None:
    """The (pid, start time) a launcher wrote into its runtime dir, if it did."""
    return RunDir(directory).read_owner()


def dir_pool_key(entry: Path) -> str:
    """The pool key in a warm container's runtime dir name (pool-<key>-<nonce>), or ""."""
    if not entry.name.startswith(POOL_DIR_PREFIX):
        return ""
    return entry.name.removeprefix(POOL_DIR_PREFIX).rpartition("-")[0]


def collect(
    engine: Engine,
    *,
    dry_run: bool = False,
    pools: bool = False,
    pool_keys: set[str] | None = None,
    log_keep: float = kernel_log.KEEP_AFTER_EXIT,
    marked_only: bool = False,
) -> GcResult:
    """Remove this host's orphaned kernel containers and runtime dirs; returns what went.

    Unclaimed warm-pool containers have no launcher by design and end themselves after
    their pool time; pools=True removes them now (and their dirs) as well; pool_keys
    narrows that to these pools (`gc --pools NAME`: one kernelspec's, pool.pool_key).
    Kept kernel logs go log_keep seconds after their kernel ended. marked_only: runtime
    dirs go only when their owner marker names a dead process (the resident helper's
    janitor, which runs unasked: a dir without one may be another release's or a starting
    kernel's, which `gc` decides on).
    """

    def swept(key: str) -> bool:
        return pools and (pool_keys is None or key in pool_keys)

    result = GcResult()
    base = runtime_base()
    reap_containers(engine, result, base, dry_run=dry_run, swept=swept)
    now = time.time()
    for entry in sorted(base.iterdir()):
        if entry.name == kernel_log.LOG_DIR:
            continue  # kernels' kept output: pruned below, by age, not by launcher
        if entry.name == POOL_RATES_DIR:
            continue  # the pools' claim rates and locks (pool.py): a few bytes per key
        if entry.name.startswith(thin.HELPER_PREFIX):
            continue  # the resident helper's socket, lock and log: not a kernel's
        if entry.name.startswith(CONTROL_PREFIX):
            continue  # a node's ssh master (ssh.py): its control socket, lock and log
        marker = read_marker(entry)
        if marker is None and marked_only:
            continue
        if marker is None:
            warm = RunDir(entry)
            if warm.pool_note.exists() and not swept(dir_pool_key(entry)):
                try:
                    container, address = warm.read_pool_note()
                except OSError:
                    continue  # claimed (renamed) or removed while we looked
                if address != engine.address():
                    continue  # another engine's warm container (Docker's, Podman's)
                if engine.container_inspect(container) is not None:
                    continue  # a warm container waiting to be claimed
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime < STARTING_GRACE:
                    continue  # a launcher may be between mkdir and writing its marker
        elif launcher_alive(*marker):
            continue
        if not dry_run:
            remove_tree(entry)
        result.dirs.append(str(entry))
    result.logs = kernel_log.prune(base, launcher_alive, keep=log_keep, now=now, dry_run=dry_run)
    return result


def reap_containers(
    engine: Engine, result: GcResult, base: Path, *, dry_run: bool, swept: Callable[[str], bool]
) -> None:
    """collect's container half, for one engine: this host's or a node's (node_manage.gc:
    a node's kernel containers carry this host's name and its launcher's pid, and the
    launcher's marker is in its runtime dir here, where its sockets are forwarded to)."""
    host = socket.gethostname()
    uid = str(os.getuid())
    dirs_by_cid: dict[Path, dict[str, Path]] = {}
    for item in engine.list_containers({engine_mod.LABEL_KERNEL_ID: None}):
        labels = parse_labels(item.get("Labels", ""))
        if labels.get(engine_mod.LABEL_LAUNCHER_HOST) != host:
            continue  # another machine's launcher: we cannot tell whether it lives
        if uid != "0" and labels.get(engine_mod.LABEL_OWNER_UID) != uid:
            continue  # another user's kernel
        name = str(item.get("Names") or item.get("ID"))
        if name.startswith(POOL_NAME_PREFIX):
            if not swept(labels.get(engine_mod.LABEL_POOL, "")):
                result.kept += 1
                continue
        else:
            # The launcher that runs it wrote a marker in the dir named after the container
            # (for a claimed warm container, the claimer, not whoever started it). A claim
            # renames the pool dir within its base, which the label names: that base, not
            # ours, when the claimer's differs (a TMPDIR of its own, or the fallback of
            # runtime_base_choice), or a live kernel would be taken for an orphan.
            pool_dir = labels.get(engine_mod.LABEL_POOL_DIR)
            where = Path(pool_dir).parent if pool_dir else base
            marker = read_marker(where / name.removeprefix(f"{NAME_PREFIX}-"))
            if marker is None and pool_dir:
                # A provisioner's dir is named after its kernel, not after the container
                # (its restarts reuse the dir): the claimed dir kept the warm one's cidfile.
                claimed_by = dirs_by_cid.setdefault(where, cid_dirs(where))
                owner = claimed_by.get(str(item.get("ID", "")))
                marker = read_marker(owner) if owner else None
            pid, start = marker or (
                labels.get(engine_mod.LABEL_LAUNCHER_PID, ""),
                labels.get(engine_mod.LABEL_LAUNCHER_START, ""),
            )
            if launcher_alive(pid, start):
                result.kept += 1
                continue
        if not dry_run:
            engine.remove(name)
        result.containers.append(name)


def sweep_after(pid: int, start: str, env: Mapping[str, str] | None = None) -> None:
    """The resident helper's janitor (helper.Janitor): process `pid` (0: the helper is
    starting, or the caller's parent is already gone) went away; sweep its engine (sweep).
    env: the environment of the engine CLI calls (the helper passes its janitor client's:
    its DOCKER_CONTEXT, DOCKER_CONFIG, PATH, HOME); None: this process's. The helper (its
    default --janitor, and once at its start) and watchdog.watch_owner (a watchdog an
    earlier release started) call this."""
    who = f"process {pid} (start {start})" if pid else "a process already gone"
    sweep(Engine(environ=env), who)


def sweep(engine: Engine, who: str = "processes already gone") -> None:
    """Remove what any dead owner left on `engine` by collect's rules: the containers
    (kept ones too: gVisor, Podman) and runtime dirs of a Jupyter server's provisioner
    kernels, whose lifelines closed with it, or of a killed thin client's. Only dirs with
    an owner marker go (marked_only): this runs unasked. Called by sweep_after and by
    provisioner.ensure_janitor (once per process and engine, at its first kernel's
    start). Never raises: a janitor has nobody to tell but the log."""
    try:
        result = collect(engine, marked_only=True)
    except (DockerKernelError, OSError) as exc:
        log.warning("janitor: could not sweep after %s: %s", who, exc)
        return
    if result.containers or result.dirs:
        log.info(
            "janitor: after %s, removed %d container(s) and %d runtime dir(s)",
            who,
            len(result.containers),
            len(result.dirs),
        )


def cid_dirs(base: Path) -> dict[str, Path]:
    """The runtime dirs below base by the container id in their cidfile (collect's lookup
    for claimed warm containers, whose dir name need not match the container's)."""
    out: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            with contextlib.suppress(OSError):
                out[RunDir(entry).cid.read_text().strip()] = entry
    return out


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
