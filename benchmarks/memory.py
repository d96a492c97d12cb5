"""Host memory of the plumbing a kernel adds, per kernel, at N concurrent kernels.

benchmarks/run.py calls plumbing() once per kernelspec and kernel count, in the process of
the source tree under test (this one, or the baseline's worker: see worker.py). It starts
N kernels a few at a time, waits for each one's first kernel_info reply, and then sums
RSS and PSS over every host process the kernels added:

- which processes: those whose environment carries this client's JDK_BENCH_TAG (the
  thin client or launcher, its `docker run`, forked watchdogs, the provisioner's lifeline
  watchdog and its `docker run -i`/`docker wait`, detached pool refills, a resident
  helper started on demand: all inherit the client's environment), the resident helper
  of this tree and runtime base whoever started it (our_helpers: an earlier run's may
  still serve), and every descendant of those (the helper's pool refills and their engine
  CLI calls get the kernel's client's filtered environment, thin.client_env, which has no
  tag); minus the client itself and minus processes inside a container's cgroup (the
  kernel's own; the engine does not pass the host's environment in, but a shared PID
  namespace or `--env-host` would).
- RSS (VmRSS of /proc/PID/status) counts shared pages (libpython, the docker binary) in
  full in every process; PSS (/proc/PID/smaps_rollup) divides each shared page among the
  processes that map it, so N kernels' PSS sums to what they really cost together.

Engine processes (dockerd, containerd, the per-container shim) are not ours and not
counted: they do not inherit our environment. The shim is one process per container,
though (`containerd-shim-runc-v2 -id CONTAINER`), so it is reported on its own, for the
kernels' containers only (engine_rss, engine_pss): what any containerised kernel costs
beyond itself, whichever launcher started it. For the provisioner the client's own RSS
growth per kernel is reported too (its relay threads and sockets live in the client).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The environment variable that marks every host process started for one client.
TAG_VAR = "JDK_BENCH_TAG"
#: A cgroup path that belongs to a container (cgroup v1 `/docker/<id>`, the systemd
#: driver's `docker-<id>.scope`, Podman's `libpod-<id>`, containerd's and CRI-O's).
_CONTAINER_CGROUP = re.compile(r"(docker|libpod|containerd|crio)[-/][0-9a-f]{12,}")
#: Command lines of processes that end on their own after a kernel stopped (a refill, a
#: launcher still removing its container): plumbing() waits for them before it counts.
_TRANSIENT = (b"jupyter_docker_kernel.pool", b"jupyter_docker_kernel.launcher", b"ipykernel")


@dataclass(frozen=True)
class HostProcess:
    """One host process of ours, with its memory in KiB."""

    pid: int
    argv0: str
    rss_kib: int
    pss_kib: int


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def process_argvs() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every process this one may read (our_helpers, engine_shims)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            yield int(entry), _read(f"/proc/{entry}/cmdline").split(b"\0")
        except OSError:
            continue


def container_cgroup(text: str) -> bool:
    """Whether /proc/PID/cgroup's text names a container's cgroup."""
    return any(_CONTAINER_CGROUP.search(line) for line in text.splitlines())


def in_container(pid: int) -> bool:
    """Whether the process is in a container's cgroup (then it is the kernel's, not ours)."""
    try:
        return container_cgroup(_read(f"/proc/{pid}/cgroup").decode(errors="replace"))
    except OSError:
        return False


def _kib(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def tagged(tag: str, exclude: set[int]) -> list[tuple[int, bytes]]:
    """(pid, cmdline) of the host processes whose environment has TAG_VAR=tag."""
    marker = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            environ = _read(f"/proc/{entry}/environ").split(b"\0")
            cmdline = _read(f"/proc/{entry}/cmdline")
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ and not in_container(int(entry)):
            found.append((int(entry), cmdline))
    return found


#: In the command line of a resident helper (thin.spawn_argv's both forms).
_HELPER = b"jupyter_docker_kernel.helper"


def parents() -> dict[int, int]:
    """pid -> parent pid of every process (/proc/PID/stat's fourth field, after the
    command name in parentheses, which may hold spaces)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = _read(f"/proc/{entry}/stat")
        except OSError:
            continue
        found[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return found


def our_helpers() -> set[int]:
    """The resident helpers of this tree (its Python) for its runtime base: they host the
    argv kernels (and sweep for provisioners) whoever started them, so they are ours to
    count even when started before the tag was (an earlier run's, still idle)."""
    try:
        from jupyter_docker_kernel.rundir import runtime_base
    except ImportError:
        return set()
    base = str(runtime_base()).encode()
    return {
        pid
        for pid, argv in process_argvs()
        if argv[0] == sys.executable.encode() and _HELPER in b" ".join(argv) and base in argv
    }


def boot_ticks() -> int:
    """Now, in clock ticks since boot (the unit of a process's start time in /proc)."""
    uptime = float(_read("/proc/uptime").split()[0])
    return int(uptime * os.sysconf("SC_CLK_TCK"))


def start_ticks(pid: int) -> int:
    """When process pid started, in clock ticks since boot (/proc/PID/stat's 22nd field);
    -1 when it is gone."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return -1
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def ours(
    tag: str, exclude: set[int], helpers: bool = True, helpers_since: int | None = None
) -> list[tuple[int, bytes]]:
    """(pid, cmdline) of every host process of ours: tagged ones, our helpers, and all
    their descendants, but not `exclude` (the client) and nothing in a container.
    helpers=False: no resident helper, tagged or not (a native kernel's row, or the
    provisioner's, which starts none: the helper an earlier row's client spawned inherited
    its tag and may still idle), except those started at or after `helpers_since`
    (boot_ticks) when given: one that came up during this row is this row's."""
    roots = {pid for pid, cmd in tagged(tag, exclude) if helpers or _HELPER not in cmd}
    if helpers:
        roots |= our_helpers() - exclude
    elif helpers_since is not None:
        roots |= {pid for pid in our_helpers() - exclude if start_ticks(pid) >= helpers_since}
    ppid = parents()
    found = []
    for pid in ppid:
        if pid in exclude:
            continue
        up, seen = pid, 0
        while up > 1 and up not in roots and seen < 64:
            up, seen = ppid.get(up, 0), seen + 1
        if up not in roots or in_container(pid):
            continue
        try:
            found.append((pid, _read(f"/proc/{pid}/cmdline")))
        except OSError:
            continue
    return found


def measured(procs: list[tuple[int, bytes]]) -> list[HostProcess]:
    """These processes with their RSS and PSS (KiB); vanished ones are skipped."""
    out = []
    for pid, cmdline in procs:
        try:
            rss = _kib(_read(f"/proc/{pid}/status").decode(), "VmRSS:")
            pss = _kib(_read(f"/proc/{pid}/smaps_rollup").decode(), "Pss:")
        except OSError:
            continue
        argv0 = Path(cmdline.split(b"\0")[0].decode(errors="replace")).name
        if _HELPER in cmdline:
            argv0 = "helper"  # the one resident helper, apart from the thin clients
        out.append(HostProcess(pid, argv0, rss, pss))
    return out


def host_processes(
    tag: str, exclude: set[int], helpers: bool = True, helpers_since: int | None = None
) -> list[HostProcess]:
    """Our host processes (ours()) with their RSS and PSS (KiB)."""
    return measured(ours(tag, exclude, helpers, helpers_since))


#: The label every kernel container carries, its value the kernel's id (engine.py's).
_KERNEL_LABEL = "io.github.jupyter-docker-kernel.kernel-id"


def labels_of(km: Any) -> set[str]:
    """The kernel-id label its container may have (container.kernel_id_from): the argv
    launcher's is from the connection file's name, the provisioner's from the kernel id."""
    names = (Path(km.connection_file).name, f"kernel-{km.kernel_id}.json")
    stems = (name.removesuffix(".json").removeprefix("kernel-") for name in names)
    return {(re.sub(r"[^a-zA-Z0-9_.-]", "-", s).strip("-.") or "kernel")[:36] for s in stems}


def kernel_containers(kernel_ids: set[str]) -> set[str]:
    """Full ids of the running containers of these kernels (by their kernel-id label)."""
    proc = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", f"label={_KERNEL_LABEL}", "--format",
         f'{{{{.ID}}}} {{{{.Label "{_KERNEL_LABEL}"}}}}'],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    ids = set()
    for line in proc.stdout.splitlines():
        cid, _, kernel_id = line.partition(" ")
        if kernel_id in kernel_ids:
            ids.add(cid)
    return ids


def engine_shims(container_ids: set[str]) -> list[HostProcess]:
    """The engine's per-container shim processes of these containers (not ours)."""
    found = []
    for pid, argv in process_argvs():
        if not os.path.basename(argv[0]).startswith(b"containerd-shim") or b"-id" not in argv:
            continue
        if argv[argv.index(b"-id") + 1].decode(errors="replace") in container_ids:
            found.append((pid, b"\0".join(argv)))
    return measured(found)


def own_rss_kib() -> int:
    return _kib(Path("/proc/self/status").read_text(), "VmRSS:")


def wait_quiet(tag: str, exclude: set[int], timeout: float = 20.0) -> None:
    """Wait until no tagged refill, launcher or kernel of an earlier measurement is left,
    so that it is not counted as this one's (a resident helper may stay: it is counted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [
            cmd
            for _, cmd in ours(tag, exclude)
            if any(t in cmd for t in _TRANSIENT) or cmd.startswith(b"docker")
        ]
        if not left:
            return
        time.sleep(0.5)


async def _start_many(kernel: str, count: int, batch: int, cwd: str) -> list[tuple[Any, Any]]:
    """Start `count` kernels, `batch` at a time, each until its first kernel_info reply.

    Every manager is recorded before it starts, so that a failure stops all started ones.
    """
    from jupyter_client.manager import AsyncKernelManager

    running: list[list[Any]] = []  # [manager, client or None], in start order

    async def one() -> None:
        entry: list[Any] = [AsyncKernelManager(kernel_name=kernel), None]
        running.append(entry)
        await entry[0].start_kernel(cwd=cwd)
        entry[1] = entry[0].client()
        entry[1].start_channels()
        await entry[1].wait_for_ready(timeout=180)

    try:
        for first in range(0, count, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, count - first))))
    except BaseException:
        await _stop_all([(km, kc) for km, kc in running], batch)
        raise
    return [(km, kc) for km, kc in running]


async def _stop_all(kernels: list[tuple[Any, Any]], batch: int) -> None:
    async def one(km: Any, kc: Any) -> None:
        if kc is not None:
            kc.stop_channels()
        await km.shutdown_kernel(now=False)  # cleans its resources up too

    for first in range(0, len(kernels), batch):
        await asyncio.gather(
            *(one(km, kc) for km, kc in kernels[first : first + batch]), return_exceptions=True
        )


def uses_helper(kernel: str) -> bool:
    """Whether kernelspec `kernel` is our argv launcher, whose kernels the resident helper
    hosts: it is counted even when an earlier measurement started it (it stays for its
    idle time). A native kernel's row must not count it, nor a provisioner's (issue 17:
    the provisioner starts no helper; one that starts during its row is counted anyway,
    see ours())."""
    import json

    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel).to_dict()
    if spec.get("metadata", {}).get("kernel_provisioner"):
        return False
    return "jupyter_docker_kernel" in json.dumps(spec.get("argv", []))


def plumbing(kernel: str, count: int, batch: int, cwd: str, settle: float) -> dict[str, Any]:
    """Per-kernel host memory (MiB) with `count` kernels of `kernel` running at once.

    Returns rss, pss (sums over our host processes, divided by count), processes (host
    processes per kernel), client_rss (this client's RSS growth per kernel), helper_rss
    and helper_pss (the resident helper's, once: in rss and pss, not divided), engine_rss
    and engine_pss (the engine's per-container shims, per kernel: not in rss and pss)
    and, for the record, the processes of the sample by name.
    """
    tag = os.environ[TAG_VAR]
    me = {os.getpid()}
    helpers = uses_helper(kernel)
    wait_quiet(tag, me)
    before, since = own_rss_kib(), boot_ticks()

    async def measure() -> tuple[list[HostProcess], int, list[HostProcess]]:
        kernels = await _start_many(kernel, count, batch, cwd)
        try:
            await asyncio.sleep(settle)  # let a refill or a lifeline child come up
            procs, rss = host_processes(tag, me, helpers, since), own_rss_kib()
            ids = kernel_containers({x for km, _ in kernels for x in labels_of(km)})
            return procs, rss, engine_shims(ids)
        finally:
            await _stop_all(kernels, batch)

    procs, after, shims = asyncio.run(measure())
    helper = [p for p in procs if p.argv0 == "helper"]
    names: dict[str, int] = {}
    for p in procs:
        names[p.argv0] = names.get(p.argv0, 0) + 1
    return {
        "rss": sum(p.rss_kib for p in procs) / 1024 / count,
        "pss": sum(p.pss_kib for p in procs) / 1024 / count,
        "processes": len(procs) / count,
        "client_rss": (after - before) / 1024 / count,
        "helper_rss": sum(p.rss_kib for p in helper) / 1024,
        "helper_pss": sum(p.pss_kib for p in helper) / 1024,
        "engine_rss": sum(p.rss_kib for p in shims) / 1024 / count,
        "engine_pss": sum(p.pss_kib for p in shims) / 1024 / count,
        "names": names,
    }
