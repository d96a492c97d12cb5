"""Warm pool: containers started ahead of time with the kernel's imports done.

A kernelspec with `--pool N` keeps up to N such containers per user. The launcher claims
one (an atomic rename through the engine's API: exactly one launcher wins it), sends the
kernel's connection info over the container's claim socket, and relays as usual; that
connection is then the container's lifeline. Each pooled container serves exactly one
kernel and is removed with it: never reused, so no notebook sees another's state. After
every start the launcher tops the pool up in the background. An unclaimed container ends
itself after `pool_ttl` seconds, so a pool never outlives its users by long; `gc --pools`
removes unclaimed ones at once.

Only work-dir modes "copy" and "none" can be pooled: a running container cannot gain the
notebook's directory as a mount, so a pooled kernel gets its private copy at /work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.engine import Engine, EngineApi
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.settings import KernelSettings

log = logging.getLogger(__name__)

LABEL_POOL = engine_mod.LABEL_POOL
LABEL_POOL_DIR = engine_mod.LABEL_POOL_DIR
#: Name prefix of unclaimed pooled containers; a claim renames them to the kernel's name.
POOL_NAME_PREFIX = "jdk-pool-"
#: Where a pooled kernel finds its copy of the work dir.
WORK_TARGET = "/work"
CLAIM_SOCKET = hardening.CLAIM_SOCKET


def pool_key(settings: KernelSettings, uid: int) -> str:
    """Containers are interchangeable only for identical settings and the same user."""
    data = settings.to_dict()
    for name in ("pool", "pool_ttl"):
        data.pop(name, None)
    text = json.dumps({"settings": data, "uid": uid}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Claim:
    """A pooled container now ours: its id, and the host dir holding its sockets."""

    container_id: str
    pool_dir: Path


def claim(settings: KernelSettings, new_name: str) -> Claim | None:
    """Take one running pooled container for these settings, renamed to new_name; or None."""
    api = EngineApi()
    if not api.available():
        return None
    key = pool_key(settings, os.getuid())
    try:
        candidates = api.containers({LABEL_POOL: key})
        for item in candidates:
            labels = item.get("Labels") or {}
            pool_dir = Path(labels.get(LABEL_POOL_DIR, ""))
            names = item.get("Names") or []
            if not names or not str(names[0]).lstrip("/").startswith(POOL_NAME_PREFIX):
                continue  # already claimed by another launcher
            if not (pool_dir / "rt" / CLAIM_SOCKET).exists():
                continue  # still importing: not ready to be claimed
            if api.rename(str(item["Id"]), new_name):
                return Claim(str(item["Id"]), pool_dir)
    except DockerKernelError as exc:
        log.warning("warm pool unavailable (%s); starting a fresh container", exc)
    return None


def hand_over(claimed: Claim, connection: dict[str, object], cwd: str) -> socket.socket:
    """Send the kernel its connection info over the claim socket; returns the lifeline."""
    from jupyter_docker_kernel.relay import connect_kernel_socket

    sock = connect_kernel_socket(str(claimed.pool_dir / "rt" / CLAIM_SOCKET))
    sock.setblocking(True)
    sock.sendall(json.dumps({"connection": connection, "cwd": cwd}).encode() + b"\n")
    return sock


def fill(engine: Engine, settings: KernelSettings, base: Path, launch: hardening.Launch) -> int:
    """Start pooled containers until `settings.pool` are waiting; returns how many started.

    Called by the launcher in a background thread after its own kernel is up.
    """
    api = EngineApi()
    key = pool_key(settings, os.getuid())
    waiting = 0
    if api.available():
        waiting = sum(
            1
            for item in api.containers({LABEL_POOL: key})
            if str((item.get("Names") or ["/"])[0]).lstrip("/").startswith(POOL_NAME_PREFIX)
        )
    started = 0
    for _ in range(max(0, settings.pool - waiting)):
        start_one(engine, settings, base, launch, key)
        started += 1
    return started


def start_one(
    engine: Engine, settings: KernelSettings, base: Path, launch: hardening.Launch, key: str
) -> str:
    """Start one detached pooled container; returns its name."""
    nonce = secrets.token_hex(4)
    name = f"{POOL_NAME_PREFIX}{key[:8]}-{nonce}"
    pool_dir = base / f"pool-{nonce}"
    (pool_dir / "rt").mkdir(parents=True, mode=0o700)
    # Which engine holds it too: gc asking another engine must not take the dir for orphaned.
    (pool_dir / "pool").write_text(f"{name}\n{engine.address()}")
    pooled = replace(
        launch,
        kernel_id=f"pool-{nonce}",
        container_name=name,
        runtime_dir=str(pool_dir / "rt"),
        connection_file="",
        workdir=WORK_TARGET,
        workdir_copy=str(pool_dir / "work") if settings.workdir == "copy" else None,
    )
    if pooled.workdir_copy is not None:
        Path(pooled.workdir_copy).mkdir(mode=0o700)
    uid, gid = (int(x) for x in hardening.kernel_user(settings, pooled).split(":"))
    if uid != os.getuid():
        os.chown(pool_dir / "rt", uid, gid)  # root starting it for an unprivileged kernel
    args = hardening.run_args(settings, pooled, pool=(key, str(pool_dir)))
    try:
        engine.run(args, timeout=120)
    except DockerKernelError:
        shutil.rmtree(pool_dir, ignore_errors=True)
        raise
    return name
