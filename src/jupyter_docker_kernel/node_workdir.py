"""A mounted work dir on a remote node: allowed only below a declared shared path.

A kernel on a node (node_backend.SshBackend) bind-mounts paths as the node's engine sees
them, so a mounted work dir names the node's directory of that path, not this host's. The
admin may declare that the nodes see some directories at the same path as this host (a
shared filesystem such as NFS: setup --node-shared-path, `node_shared_paths` in
jupyter_docker_kernel_config.py). SshBackend.start_cold calls `check` before anything
reaches the node: a mounted work dir (its project root) below a declared path is mounted
from there; anything else is refused with one line.
"""

from __future__ import annotations

import os
import posixpath

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import Connection


def below(path: str, shared: tuple[str, ...]) -> bool:
    """Whether `path` is one of the declared directories or inside one (pure; both sides
    normalized absolute paths, so no `..` can climb out)."""
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in shared)


def mounted_source(launch: hardening.Launch) -> str:
    """The host directory a kernel with a mounted work dir mounts: the work dir's project
    root (its `{project}` and `{notebook_dir}` mounts lie below it: Mount.validated
    leaves no `..`). Symlinks resolved here: the node's engine would follow them there."""
    return posixpath.normpath(os.path.realpath(launch.project_root or launch.workdir))


def check(settings: KernelSettings, launch: hardening.Launch, connection: Connection) -> None:
    """Refuse (LaunchError) a mounted work dir on a node unless it lies below a declared
    shared path and the node has that directory; nothing is started either way."""
    url = connection.node.url
    source = mounted_source(launch)
    # A declared path may itself be a symlink here (/srv -> /mnt/srv): both forms count.
    declared = settings.node_shared_paths
    if not below(source, (*declared, *(os.path.realpath(p) for p in declared))):
        said = f"(declared shared: {', '.join(declared)})" if declared else "(none is declared)"
        raise LaunchError(
            f"A kernel on the node {url} cannot mount this host's directory {source}: "
            f"it is not below a path the nodes share with this host {said}",
            "No container was started",
            "Run setup with --copy-workdir (the directory is copied to the node) or "
            "--no-workdir, or, if the nodes see it at the same path, declare it with "
            "--node-shared-path DIR.",
        )
    proc = connection.run(["test", "-d", source], check=False)
    if proc.returncode != 0:
        raise LaunchError(
            f"The node {url} has no directory {source}, which is below the declared "
            f"shared path(s) {', '.join(settings.node_shared_paths)}",
            "No container was started",
            "Mount the shared filesystem on the node at the same path, or run setup "
            "without that --node-shared-path and with --copy-workdir.",
        )
