"""setup's probe container on a remote node (issue 13): the same probe as on this host.

setup.plan calls `probe_nodes` for a kernelspec on nodes (--engine-host ssh://..., --node)
once check_nodes found the engine, the runtime and the image on each. On this host the
probe (readiness.probe) bind-mounts a dir of this host and connects to the socket the
probe's kernel binds there; a node does not see this host's paths, so here the probe's
dir is made on the node as a kernel's is (node_backend: the node user's private runtime
base, one tar stream with the connection file, our supervisor and seccomp profile), the
container is created from the kernel's real `docker run` arguments by the node's own CLI
(through the SSH master; its stdin is the supervisor's lifeline), and the socket is
reached through a forward over the master, the path every kernel's five channels take.
Its report is read by readiness's own verdict, so a node whose runtime cannot start the
image (a broken runtime, gVisor without --host-uds=create, an image without ipykernel)
is refused at setup with one line naming the node, and nothing is written. The probe's
container and its dirs, here and on the node, go whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jupyter_docker_kernel import hardening, readiness, workcopy
from jupyter_docker_kernel.engine import Engine, first_line
from jupyter_docker_kernel.errors import DockerKernelError, EngineError, ImageError
from jupyter_docker_kernel.node_backend import (
    connect_through,
    kernel_dir_bundle,
    make_node_dir,
    node_launch,
    remove_node_dirs,
)
from jupyter_docker_kernel.rundir import RunDir, remove_tree
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import Connection

#: Runs on the node: exits 0 once the probe's socket ($0) is bound, 1 after {ticks} ticks
#: or once the probe's dir is gone (its end: killing our ssh client does not end it, as
#: the master holds the session's pipes until the remote command exits).
_BOUND_SCRIPT = (
    'd=${{0%/*}}; n=0; while [ ! -S "$0" ]; do [ -d "$d" ] && [ $n -lt {ticks} ] || exit 1; '
    "n=$((n+1)); sleep 0.05; done"
)


def probe(engine: Engine, settings: KernelSettings, base: Path) -> readiness.Probe:
    """Run one probe container on the node `engine` is (ssh://), as readiness.probe does
    here; its dirs (under `base` here, in the node user's runtime base there) and its
    container are removed whatever happens. Raises what the node's absence raises
    (EngineError, one line) or the filesystem (OSError)."""
    connection = Connection.to(engine.address(), engine.environ)
    facts = connection.facts()
    image = engine.require_image(settings.image)
    path = readiness.image_path(image, settings)
    directory = Path(tempfile.mkdtemp(prefix="probe-", dir=base))
    rundir = RunDir(directory)
    remote = RunDir(Path(facts.base) / directory.name)
    launch = readiness.probe_launch(settings, directory)
    there = node_launch(launch, remote, facts.uid, facts.gid)
    if settings.workdir == "mount":
        # A mounted work dir: the probe's on the node (the node does not see ours).
        there = dataclasses.replace(there, workdir=str(remote.work))
    user = hardening.kernel_user(settings, there)
    name = there.container_name
    proc: subprocess.Popen[bytes] | None = None
    out = err = b""
    reached, error, connected = "", "", 0.0
    started = time.monotonic()
    try:
        Path(launch.workdir).mkdir(mode=0o755)
        rundir.connection.write_text("{}")
        make_node_dir(connection, remote, kernel_dir_bundle(settings, there, rundir), work=True)
        args = readiness.probe_args(settings, there)
        # stdin (through ssh) is the supervisor's lifeline, as for a kernel.
        proc = connection.popen(["docker", *args])
        assert proc.stdin is not None
        if settings.workdir == "copy":
            stdin = proc.stdin.fileno()  # the empty copy the supervisor unpacks first
            workcopy.send(launch.workdir, [], lambda data: os.write(stdin, data))
        remote_socket = str(remote.sockets / readiness.SOCKET_NAME)
        reached, error = _connect(connection, proc, remote_socket, directory, started)
        connected = time.monotonic() - started
        if reached != "ok" and proc.poll() is None:
            engine.remove(name)  # it would wait PROBE_WAIT for a connection in vain
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            engine.remove(name)
            out, err = proc.communicate(timeout=15)
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(DockerKernelError):
                engine.remove(name)
            proc.kill()
            proc.wait()
        if settings.engine == "podman" or hardening.is_gvisor(settings):
            with contextlib.suppress(DockerKernelError):
                engine.remove(name)  # no --rm for these (hardening.run_args)
        remove_node_dirs(connection, [remote.path.name])
        remove_tree(directory)
    spent = time.monotonic() - started
    result = readiness.Probe()
    text_out, text_err = out.decode(errors="replace"), err.decode(errors="replace")
    code = proc.returncode if proc is not None else None
    kernel = readiness.kernel_verdict(settings, user, code, text_out, text_err, path, result)
    sockets = readiness.sockets_verdict(
        bool(text_out.strip()),
        reached == "ok",
        f"the kernel's uid bound a unix socket in its runtime dir on the node and this "
        f"host connected to it through SSH ({connected:.1f} s after docker run)",
        f"this host could not reach a unix socket the container bound on the node: "
        f"{error or first_line(text_err) or 'no socket appeared'}",
        "gVisor needs '--host-uds=create' in runsc's runtimeArgs in the node's "
        "/etc/docker/daemon.json"
        if hardening.is_gvisor(settings)
        else "check that the node's sshd allows AllowStreamLocalForwarding and that its "
        "runtime supports unix sockets on bind mounts",
    )
    result.results = [
        readiness.Result("kernel", *kernel, spent),
        readiness.Result("sockets", *sockets),
    ]
    return result


def _connect(
    connection: Connection,
    proc: subprocess.Popen[bytes],
    remote_socket: str,
    directory: Path,
    started: float,
) -> tuple[str, str]:
    """Wait on the node (one ssh session) for the probe's socket, then connect to it
    through a forward and read its greeting: ('ok', '') or ('', why not)."""
    ticks = int(readiness.PROBE_TIMEOUT * 20)
    watch = connection.popen(
        ["sh", "-c", _BOUND_SCRIPT.format(ticks=ticks), remote_socket],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = started + readiness.PROBE_TIMEOUT
        while watch.poll() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if watch.poll() != 0:
            if proc.poll() is not None:
                return "", ""  # the container ended first: its stderr says why
            return "", f"no socket within {readiness.PROBE_TIMEOUT:.0f} s"
    finally:
        if watch.poll() is None:
            watch.kill()
        watch.wait()
        # Not communicate(): the master holds the session's pipes while the script runs.
        for pipe in (watch.stdout, watch.stderr):
            if pipe is not None:
                pipe.close()
    try:
        with connect_through(connection, str(directory / "probe.fwd"), remote_socket) as sock:
            sock.settimeout(10)
            said = sock.recv(2).decode(errors="replace")
    except (OSError, EngineError) as exc:
        return "", f"{exc} connecting through SSH"
    return (said, "") if said == "ok" else ("", "the forwarded connection closed unanswered")


def probe_nodes(
    engine: Engine, settings: KernelSettings, urls: Sequence[str], base: Path
) -> readiness.Probe | None:
    """The probe on each node (at once); raises the first FAIL as ImageError naming its
    node (setup says nothing was written). Returns the first node's probe (its versions
    go into setup's summary), None without nodes."""
    if not urls:
        return None
    nodes = [Engine(engine.command, host=url, environ=engine.environ) for url in urls]
    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        found = list(pool.map(lambda node: probe(node, settings, base), nodes))
    for url, one in zip(urls, found, strict=True):
        failure = one.failure
        if failure is not None:
            raise ImageError(
                f"A kernel could not start on the node {url} with these settings: {failure.detail}",
                fix=f"To fix: {failure.fix}" if failure.fix else "",
            )
    return found[0]
