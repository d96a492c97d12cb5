"""Hostile cells, categories A (resources), E (lifecycle) and F (protocol) of the catalogue.

Each test runs hostile cells of the attack catalogue (the ids below; docs/security.md maps
each default to its test) through a real Jupyter client against the `hostile_kernel`
kernelspec (HOSTILE_LIMITS), once under runc and once under gVisor (runsc), and asserts
the safe outcome from the host: the container list, the container's cgroup, host
processes and memory, the work dir's disk, what the client received, the launcher's log.

Where gVisor behaves differently the expectation says so (catalogue G01 asks for that):
- gVisor runs the kernel's processes inside its Sentry, so the host's pids cgroup counts
  the Sentry's threads and stub processes, not the kernel's processes. hardening gives the
  host limit room for them and enforces --pids-limit inside as RLIMIT_NPROC, so bombs get
  EAGAIN (at the host limit Go's runtime would panic and end the sandbox, google/gvisor#2490).
- The kernel's supervisor sees no cgroup files in gVisor; the launcher asks the engine
  whether the container was OOM-killed.
- gVisor's tmpfs ignores nr_inodes.
- gVisor does not let the kernel unlink or rename its socket files (F09 cannot start).

Covered ids: A01-A17, E01-E05, F01-F13 (each test's docstring lists its own).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import nbformat
import pytest
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.broker import state_dir
from jupyter_docker_kernel.engine import LABEL_LAUNCHER_PID
from jupyter_docker_kernel.kernel_log import TAIL_KEEP
from jupyter_docker_kernel.launcher import FORWARD_LIMIT
from jupyter_docker_kernel.running import find_logs
from jupyter_docker_kernel.settings import KernelSettings, size_bytes
from tests.broker_env import Runtime, broker_kernel_uid, user_runtime_base
from tests.conftest import HOSTILE_LIMITS, inspect, install_hostile
from tests.kernels import (
    containers_of,
    docker_argv,
    execute,
    kernel_key,
    launcher_process,
    running_kernel,
    stream_text,
    wait_for_stream,
    wait_until,
)

# Timing-sensitive attacks on a shared machine: rerun a failure before calling it one.
pytestmark = [pytest.mark.docker, pytest.mark.flaky(reruns=2, reruns_delay=2)]

_LIMITS = dict(zip(HOSTILE_LIMITS[::2], HOSTILE_LIMITS[1::2], strict=True))
MEMORY = size_bytes(_LIMITS["--memory"])
PIDS = int(_LIMITS["--pids-limit"])
TMP_SIZE = size_bytes(_LIMITS["--tmp-size"])
TMP_INODES = int(_LIMITS["--tmp-inodes"])
FSIZE = size_bytes(_LIMITS["--fsize"])
MAX_MESSAGE = size_bytes(_LIMITS["--max-message"])
OUTPUT_BUDGET = size_bytes(_LIMITS["--output-budget"])
NOFILE = KernelSettings().nofile
SHM_SIZE = 64 << 20  # hardening.run_args: --shm-size 64m
MIB = 1 << 20
#: The uid the kernel runs as: the launching user's, or 65534 when tests run as root.
KERNEL_UID = 65534 if os.getuid() == 0 else os.getuid()
#: The lifetime cap of the `short_lived_kernel` spec (E05).
LIFETIME = 5


class MissingExitReasonError(AssertionError):
    """The launcher's log does not say why the kernel ended (a known gap, see xfails)."""


class LimitNotEnforcedError(AssertionError):
    """A configured limit had no effect (a known gap, see xfails)."""


# -- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def running(
    kernel: str, workdir: Path, log: Path | None = None
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A started kernel and a client; on the way out the kernel is gone whatever happened
    (tests.kernels.running_kernel, shutting down without asking: a hostile kernel may not
    answer). The launcher's stderr goes to `log`, kept open until then: a restart reuses it.
    """
    with running_kernel(kernel, workdir, log=log, ready_timeout=60, now=True) as (km, kc):
        yield km, kc


@pytest.fixture
def launcher_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the launcher's stderr goes: outside the work dir, out of the kernel's reach."""
    return tmp_path_factory.mktemp("launcher") / "launcher.log"


@pytest.fixture(scope="module")
def short_lived_kernel(kernel_image: str, runtime: Runtime) -> str:
    """HOSTILE_LIMITS with a lifetime cap of LIFETIME seconds (the last option wins)."""
    return install_hostile(
        "jdk-test-hostile-short",
        kernel_image,
        runtime,
        *HOSTILE_LIMITS,
        "--max-lifetime",
        str(LIFETIME),
    )


def only_container(km: KernelManager) -> str:
    (container,) = containers_of(kernel_key(km))
    return container


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float) -> dict[str, Any]:
    """The reply to request `msg_id`; raises queue.Empty if none arrives in time."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            content: dict[str, Any] = msg["content"]
            return content


def shut_down(km: KernelManager, kc: BlockingKernelClient) -> float:
    """Shut down the way Jupyter does (request, then TERM, then KILL); returns seconds."""
    started = time.monotonic()
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    return time.monotonic() - started


def pids_on_host() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def host_processes_in(container: str) -> list[tuple[int, int, str]]:
    """(pid, uid, args) of every host process in the container's cgroup."""
    found = []
    for pid in pids_on_host():
        try:
            with open(f"/proc/{pid}/cgroup") as fh:
                if container not in fh.read():
                    continue
            uid = os.stat(f"/proc/{pid}").st_uid
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((pid, uid, args))
    return found


def kernel_uid_processes(marker: str, runtime: Runtime) -> list[str]:
    """`ps` lines of processes running as the kernel's uid (through the broker: its test
    user's) whose args contain `marker`."""
    uid = broker_kernel_uid() if runtime.via_broker else KERNEL_UID
    ps = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True, check=True)
    return [
        line
        for line in ps.stdout.splitlines()
        if line.split(None, 1)[0] == str(uid) and marker in line
    ]


def assert_gone(km: KernelManager, container: str, within: float = 5) -> None:
    """The container is removed within `within` s, and no host process is left in it."""
    wait_until(lambda: not containers_of(kernel_key(km)), within)
    wait_until(lambda: not host_processes_in(container), within)


def cgroup_file(container: str, controller: str, v1: str, v2: str) -> Path:
    """A container's cgroup file, cgroup v1 (cgroupfs driver) or v2 (either driver), under
    Docker or Podman."""
    candidates = [
        Path("/sys/fs/cgroup", controller, "docker", container, v1),
        Path("/sys/fs/cgroup/system.slice", f"docker-{container}.scope", v2),
        Path("/sys/fs/cgroup/docker", container, v2),
        # Podman (cgroupfs manager, rootful): see tests/test_podman.py.
        Path("/sys/fs/cgroup", controller, "libpod_parent", f"libpod-{container}", v1),
        # A test node's dockerd (scripts/test-node: cgroup-parent jdk-node-NAME), same kernel.
        *Path("/sys/fs/cgroup", controller).glob(f"**/jdk-node-*/{container}/{v1}"),
        *Path("/sys/fs/cgroup").glob(f"**/jdk-node-*/{container}/{v2}"),
    ]
    for path in candidates:
        if path.exists():
            return path
    raise AssertionError(f"no cgroup file of {container[:12]} among {candidates}")


def read_int(path: Path) -> int:
    return int(path.read_text())


def cpu_seconds(path: Path) -> float:
    text = path.read_text()
    if path.name == "cpu.stat":
        usage = dict(line.split() for line in text.splitlines())["usage_usec"]
        return int(usage) / 1e6
    return int(text) / 1e9


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


def status_kib(pid: int | str, field: str) -> int:
    """A size field (VmRSS, VmHWM) of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def relayed_out(log: str) -> int:
    """The byte count of the launcher's last line: '...relayed N bytes out, M in'."""
    counts = re.findall(r"relayed (\d+) bytes out", log)
    assert counts, f"the launcher did not log its exit line:\n{log[-2000:]}"
    return int(counts[-1])


class Peak:
    """The largest value `probe` returned while the block ran, sampled every 20 ms."""

    def __init__(self, probe: Callable[[], int]) -> None:
        self.probe = probe
        self.value = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                self.value = max(self.value, self.probe())
                self.samples += 1
            if self._stop.wait(0.02):
                return

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def heartbeat_answers(km: KernelManager, timeout: float = 2.0) -> bool:
    """A fresh connection to the kernel's heartbeat endpoint gets its ping echoed."""
    info = km.get_connection_info()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(f"{info['transport']}://{info['ip']}:{info['hb_port']}")
        sock.send(b"ping")
        return bool(sock.poll(int(timeout * 1000))) and sock.recv() == b"ping"
    finally:
        sock.close()
        ctx.term()


def engine_cli_children(launcher_pid: int) -> list[int]:
    """Engine CLI processes (`docker run`, say) the process hosting a kernel runs as its
    children: the launcher itself, or the resident helper (hosting_pid)."""
    found = []
    for pid in pids_on_host():
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if ppid == launcher_pid and Path(cmdline[0].decode()).name in ("docker", "podman"):
                found.append(pid)
    return found


def hosting_pid(container: str) -> int:
    """The host process that runs this container (its launcher-pid label): the launcher
    itself, or the resident helper that hosts the launcher's kernel."""
    labels = inspect(container)["Config"]["Labels"]  # type: ignore[index]
    return int(labels[LABEL_LAUNCHER_PID])


def collect_until_dead(
    kc: BlockingKernelClient, launcher: subprocess.Popen[bytes], timeout: float
) -> list[int]:
    """Drain iopub (as a client must) until the launcher exits; returns message sizes."""
    sizes = []
    deadline = time.monotonic() + timeout
    while launcher.poll() is None:
        assert time.monotonic() < deadline, f"the kernel was not stopped within {timeout} s"
        with contextlib.suppress(queue.Empty):
            msg = kc.get_iopub_msg(timeout=0.2)
            sizes.append(len(json.dumps(msg["content"])))
    return sizes


def notebook(*cells: str) -> NotebookNode:
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    nb: NotebookNode = new_nb(cells=[new_cell(c) for c in cells])  # type: ignore[no-untyped-call]
    return nb


def notebook_client(
    nb: NotebookNode, kernel: str, workdir: Path
) -> tuple[NotebookClient, list[tuple[str, dict[str, Any]]]]:
    """An nbclient NotebookClient for `nb`, and where it records, as the first cell starts,
    its kernel's id and `docker inspect` (nbclient drops its KernelManager when done)."""
    client = NotebookClient(
        nb, kernel_name=kernel, timeout=30, resources={"metadata": {"path": str(workdir)}}
    )
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(cell: Any, cell_index: int) -> None:
        km = client.km
        assert km is not None
        if not seen:
            seen.append((kernel_key(km), inspect(only_container(km))))

    client.on_cell_start = record
    return client, seen


# -- A. resource exhaustion ----------------------------------------------------------------

SPIN = "print('spinning', flush=True)\nwhile True:\n    pass\n"
SLEEP = "import time\nprint('sleeping', flush=True)\ntime.sleep(10**9)\n"


def test_cpu_bomb_and_endless_sleep_are_interrupted(hostile_kernel: str, workdir: Path) -> None:
    """A01, A04: `while True: pass` and `time.sleep(10**9)` end in KeyboardInterrupt on the
    client's interrupt (what nbclient's per-cell timeout sends), and the kernel goes on."""
    with running(hostile_kernel, workdir) as (km, kc):
        for code, marker in ((SPIN, "spinning"), (SLEEP, "sleeping")):
            msg_id = kc.execute(code)
            wait_for_stream(kc, msg_id, marker, timeout=30)
            km.interrupt_kernel()
            reply = shell_reply(kc, msg_id, timeout=10)
            assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
        _, out = execute(kc, "print(6 * 7)", timeout=10)
        assert stream_text(out) == "42\n"
        container = only_container(km)
        shut_down(km, kc)
    assert_gone(km, container)


MULTI_SPIN = """\
import os, signal
for _ in range(2):
    if os.fork() == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            pass
print('spinning', flush=True)
while True:
    pass
"""


def test_multicore_spin_is_held_to_one_cpu_and_a_sibling_kernel_answers(
    hostile_kernel: str, runtime: Runtime, workdir: Path
) -> None:
    """A03 (and A01's "sibling responds"): three spinning processes, more than this 2-core
    host has cores, use at most the --cpus 1 quota (read from the container's cgroup), a
    second kernel started meanwhile answers kernel_info promptly, and every spinner dies
    with the container.

    Two forked children, not the catalogue's 64: under gVisor an idle kernel already holds
    about 90 of the 128 host tasks and each process costs about six more; four children
    sometimes end the sandbox (google/gvisor#2490) before the CPU is measured.
    """
    with running(hostile_kernel, workdir) as (km, kc):
        container = only_container(km)
        usage = cgroup_file(container, "cpuacct", "cpuacct.usage", "cpu.stat")
        wait_for_stream(kc, kc.execute(MULTI_SPIN), "spinning", timeout=30)  # children forked
        before, started = cpu_seconds(usage), time.monotonic()
        time.sleep(2)
        cpus = (cpu_seconds(usage) - before) / (time.monotonic() - started)
        assert 0.3 < cpus <= 1.25, f"the spinning container used {cpus:.2f} CPUs"

        with running(hostile_kernel, workdir) as (km2, kc2):
            latencies = []
            for _ in range(3):
                started = time.monotonic()
                kc2.kernel_info(reply=True, timeout=10)
                latencies.append(time.monotonic() - started)
            assert max(latencies) < 2, f"the sibling answered kernel_info in {latencies} s"
            sibling = only_container(km2)
            shut_down(km2, kc2)
        assert_gone(km2, sibling)

        if runtime == "runc":  # under gVisor the spinners are not host processes
            spinners = [p for p in host_processes_in(container) if "ipykernel" in p[2]]
            assert len(spinners) >= 3, spinners
        shut_down(km, kc)
    assert_gone(km, container)


RESIST = """\
import signal, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
    signal.signal(s, signal.SIG_IGN)
print('resisting', flush=True)
time.sleep(0.5)
sum(range(10**13))  # a C loop: no bytecode boundary where KeyboardInterrupt could land
"""


def test_kernel_ignoring_signals_and_faking_liveness_is_removed_by_shutdown(
    hostile_kernel: str, workdir: Path
) -> None:
    """A02, E02, F10: a cell ignoring SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1 in a C loop is
    not interrupted, and its heartbeat keeps answering (ipykernel's heartbeat is a separate
    thread), yet the client's ordinary shutdown ends it within jupyter_client's timeouts
    (shutdown_request, TERM after shutdown_wait_time/2: the launcher removes the container)."""
    with running(hostile_kernel, workdir) as (km, kc):
        container = only_container(km)
        msg_id = kc.execute(RESIST)
        wait_for_stream(kc, msg_id, "resisting", timeout=30)
        km.interrupt_kernel()
        with pytest.raises(queue.Empty):
            shell_reply(kc, msg_id, timeout=2)
        assert heartbeat_answers(km), "the heartbeat should answer: the lie F10 is about"
        assert km.is_alive()
        took = shut_down(km, kc)
        assert took < km.shutdown_wait_time + 5, f"shutdown took {took:.1f} s"
    assert_gone(km, container)


def test_sigkill_of_the_host_side_mid_cell_removes_a_resisting_kernel(
    hostile_kernel: str, workdir: Path
) -> None:
    """E03: SIGKILL of the launcher (as jupyter_client's kill does, to its process group)
    while the kernel ignores SIGTERM in a C loop: the container is gone within 5 s and
    none of its processes is left on the host. Neither the launcher nor the resident
    helper hosting its kernel runs a `docker run` client (issue 17): the kernel is held
    by its lifeline socket, so there is no other host-side process whose death must end
    the kernel."""
    with running(hostile_kernel, workdir) as (km, kc):
        container = only_container(km)
        launcher = launcher_process(km)
        msg_id = kc.execute(RESIST)
        wait_for_stream(kc, msg_id, "resisting", timeout=30)
        assert engine_cli_children(launcher.pid) == []
        assert engine_cli_children(hosting_pid(container)) == []
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        assert_gone(km, container)


THREAD_BOMB = """\
import threading, time
release = threading.Event()
threads = 0
try:
    while True:
        threading.Thread(target=release.wait, daemon=True).start()
        threads += 1
except RuntimeError as exc:
    print('stopped after', threads, 'threads:', exc)
time.sleep(0.5)  # hold them while the host looks
release.set()
"""
FORK_BOMB = """\
import os, signal, time
bomb = os.fork()
if bomb == 0:
    os.setpgid(0, 0)
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)
time.sleep(2)
try:
    if os.fork() == 0:
        os._exit(0)
except OSError as exc:
    print('fork failed:', type(exc).__name__)
os.killpg(bomb, signal.SIGKILL)
os.waitpid(bomb, 0)
"""


def test_fork_and_thread_bombs_are_bounded_by_the_pids_limit(
    hostile_kernel: str, runtime: Runtime, workdir: Path, launcher_log: Path
) -> None:
    """A05, A06: the thread bomb gets RuntimeError "can't start new thread" and the fork
    bomb BlockingIOError; the cell cleans up and the kernel answers. The container's host
    tasks never exceed the engine's --pids-limit (sampled from its cgroup) and nothing of
    the bombs is left on the host after shutdown. (The threads wait on an Event rather
    than sleep 1e9 as in the catalogue, so the cell can release them and the same kernel
    can be asked again.)

    runc: the host limit is --pids-limit, the bombs reach it, and on exit the log says "the
    pids limit was hit". gVisor: the host also counts the Sentry's own tasks, so the host
    limit has room for them and --pids-limit holds inside the sandbox (RLIMIT_NPROC): the
    bombs get EAGAIN there instead of ending the whole sandbox. Each forked copy of the
    kernel costs the Sentry a few MiB, so under the hostile 512 MiB the fork bomb may reach
    --memory first: then the sandbox ends, the log says "out of memory" (not a bare exit
    code), and a restarted kernel answers.
    """
    settings = KernelSettings(pids_limit=PIDS, runtime=runtime if runtime != "runc" else None)
    host_limit = hardening.host_pids_limit(settings)
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        containers = []
        for bomb, message in (
            (THREAD_BOMB, "can't start new thread"),
            (FORK_BOMB, "fork failed: BlockingIOError"),
        ):
            container = only_container(km)
            containers.append(container)
            pids = cgroup_file(container, "pids", "pids.current", "pids.current")
            launcher = launcher_process(km)
            reply: dict[str, Any] = {}
            with Peak(functools.partial(read_int, pids)) as peak:
                try:
                    reply, out = execute(kc, bomb, timeout=60)
                except TimeoutError:
                    if runtime == "runc" or bomb != FORK_BOMB:
                        raise
            assert peak.samples > 0
            assert 0 < peak.value <= host_limit
            if reply:
                assert reply["status"] == "ok"
                assert message in stream_text(out)
                if runtime == "runc":
                    assert peak.value >= PIDS - 4, f"the bomb reached only {peak.value} tasks"
            else:  # gVisor, the fork bomb reached --memory before --pids-limit
                launcher.wait(timeout=30)
                assert_gone(km, container)
                assert f"out of memory (limit {MEMORY >> 20} MiB)" in launcher_log.read_text()
                km.restart_kernel(now=True)
                kc.wait_for_ready(timeout=60)
            _, out = execute(kc, "print('still here')", timeout=20)
            assert stream_text(out) == "still here\n"
        containers.append(only_container(km))
        shut_down(km, kc)
    for container in containers:
        assert_gone(km, container)
    if runtime == "runc":
        assert "the pids limit was hit" in launcher_log.read_text()


MEMORY_BOMB = """\
hog = []
while True:
    hog.append(bytearray(2**27))  # 128 MiB, zero-filled: pages touched
"""


def test_memory_bomb_is_oom_killed_and_the_log_says_so(
    hostile_kernel: str, workdir: Path, launcher_log: Path
) -> None:
    """A07: the kernel is killed at --memory (the cgroup's usage never exceeds it, host
    free memory drops by no more than the limit plus slack), the container goes, and the
    launcher's log says "out of memory (limit 512 MiB)": from the supervisor under runc,
    from the engine (State.OOMKilled) under gVisor, where the supervisor sees no cgroup."""
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        launcher = launcher_process(km)
        usage = cgroup_file(container, "memory", "memory.usage_in_bytes", "memory.current")
        baseline = mem_available()
        with (
            Peak(functools.partial(read_int, usage)) as used,
            Peak(lambda: baseline - mem_available()) as host_drop,
        ):
            kc.execute(MEMORY_BOMB)
            wait_until(lambda: launcher.poll() is not None, 60)
        assert launcher.returncode == 137
        assert MEMORY // 2 < used.value <= MEMORY, f"peak usage {used.value >> 20} MiB"
        assert host_drop.value < MEMORY + (1 << 30), f"host lost {host_drop.value >> 20} MiB"
        assert_gone(km, container)
    if f"out of memory (limit {MEMORY >> 20} MiB)" not in launcher_log.read_text():
        raise MissingExitReasonError(launcher_log.read_text())


FILL = """\
import errno, json, os

def fill(directory):  # 16 MiB files (under fsize) until the tmpfs is full
    total, n = 0, 0
    try:
        while True:
            with open(os.path.join(directory, f'fill{n}'), 'wb') as f:
                n += 1
                for _ in range(16):
                    f.write(b'\\0' * 2**20)
                    f.flush()
                    total += 2**20
    except OSError as exc:
        return total, errno.errorcode[exc.errno]
    finally:
        for i in range(n):
            os.unlink(os.path.join(directory, f'fill{i}'))

def big(path):  # one file until the write fails
    total = 0
    try:
        with open(path, 'wb') as f:
            while True:
                f.write(b'x' * 2**20)
                f.flush()
                os.fsync(f.fileno())
                total += 2**20
    except OSError as exc:
        return total, errno.errorcode[exc.errno]

def inodes(directory, cap):  # empty files until ENOSPC (or the cap)
    os.makedirs(directory)
    i = 0
    try:
        while i < cap:
            open(f'{directory}/{i}', 'w').close()
            i += 1
        return i, 'none'
    except OSError as exc:
        return i, errno.errorcode[exc.errno]
    finally:
        for j in range(i):
            os.unlink(f'{directory}/{j}')
        os.rmdir(directory)

def descriptors():
    held = []
    try:
        while True:
            held.append(open('/dev/null'))
    except OSError as exc:
        return len(held), errno.errorcode[exc.errno]
    finally:
        for f in held:
            f.close()

result = {
    'shm': fill('/dev/shm'), 'tmp': fill('/tmp'), 'home': fill(os.path.expanduser('~')),
    'tmp_file': big('/tmp/big'), 'work_file': big('fill.bin'),
    'inodes': inodes('/tmp/inodes', %d), 'fds': descriptors(),
}
os.unlink('/tmp/big')
print(json.dumps(result))
"""


def test_filling_memory_disk_inodes_and_descriptors_stops_at_each_limit(
    hostile_kernel: str, runtime: Runtime, workdir: Path, request: pytest.FixtureRequest
) -> None:
    """A08-A12: each limit surfaces as an error in the cell and the kernel goes on.

    - A08 /dev/shm: ENOSPC at --shm-size (64 MiB).
    - A09 /tmp and HOME (tmpfs): ENOSPC at --tmp-size; one big file: EFBIG at --fsize
      (CPython ignores SIGXFSZ, so it is an OSError).
    - A10 the mounted work dir: a file stops at --fsize with EFBIG; the host file is
      exactly that size and the host disk holding it did not fill beyond it. (Many files
      could still fill it: Docker cannot cap a bind mount; --copy-workdir's copy is a
      capped tmpfs instead, A19.)
    - A11 inodes: ENOSPC at --tmp-inodes.
    - A12 descriptors: EMFILE below the nofile limit.
    """
    if runtime == "runsc":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=LimitNotEnforcedError,
                reason="BUG: gVisor's tmpfs ignores nr_inodes, so --tmp-inodes has no "
                "effect under runsc (A11: files until the sandbox's memory runs out)",
            )
        )
    disk_before = shutil.disk_usage(workdir).used
    with running(hostile_kernel, workdir) as (km, kc):
        reply, out = execute(kc, FILL % (TMP_INODES + 256), timeout=120)
        assert reply["status"] == "ok", reply
        result = json.loads(stream_text(out))
        assert (workdir / "fill.bin").stat().st_size == FSIZE
        assert shutil.disk_usage(workdir).used - disk_before < 4 * FSIZE
        _, out = execute(kc, "print('still here')", timeout=20)
        assert stream_text(out) == "still here\n"
        container = only_container(km)
        shut_down(km, kc)
    assert_gone(km, container)

    assert result["shm"][1] == "ENOSPC", result
    assert SHM_SIZE - 16 * MIB <= result["shm"][0] <= SHM_SIZE, result
    for tmpfs in ("tmp", "home"):
        assert result[tmpfs][1] == "ENOSPC", result
        assert TMP_SIZE - 16 * MIB <= result[tmpfs][0] <= TMP_SIZE, result
    assert result["tmp_file"] == [FSIZE, "EFBIG"]
    assert result["work_file"] == [FSIZE, "EFBIG"]
    assert result["fds"][1] == "EMFILE", result
    assert NOFILE - 100 < result["fds"][0] < NOFILE, result
    if result["inodes"][1] != "ENOSPC" or not TMP_INODES - 100 < result["inodes"][0] <= TMP_INODES:
        raise LimitNotEnforcedError(f"inodes: {result['inodes']} with --tmp-inodes {TMP_INODES}")


#: A18: what a kernel writes into its socket dir (a host directory, bind-mounted writable
#: because the kernel binds its sockets there). Each stops at 512 MiB or 20,000 entries
#: if nobody stops it first, then prints "survived".
SOCKET_DIR_ATTACKS = {
    "files": "for i in range(20000):\n    open(f'{D}/f{i}', 'wb').write(b'x' * 4096)\n",
    "dirs": "for i in range(20000):\n    os.mkdir(f'{D}/d{i}')\n",
    "big": "for i in range(16):\n"
    "    with open(f'{D}/big{i}', 'wb') as fh:\n"
    "        for _ in range(32):\n"
    "            fh.write(b'x' * 2**20)\n",
    # Nothing a listing of the dir would ever show: the writes go to unnamed files.
    "unlinked": "fds = []\n"
    "for i in range(16):\n"
    "    fd = os.open(f'{D}/u', os.O_CREAT | os.O_WRONLY, 0o600)\n"
    "    os.unlink(f'{D}/u')\n"
    "    fds.append(fd)\n"
    "    for _ in range(32):\n"
    "        os.write(fd, b'x' * 2**20)\n",
    "tmpfile": "fds = []\n"
    "for i in range(16):\n"
    "    fd = os.open(D, os.O_TMPFILE | os.O_WRONLY, 0o600)\n"
    "    fds.append(fd)\n"
    "    for _ in range(32):\n"
    "        os.write(fd, b'x' * 2**20)\n",
}


def host_runtime_dir(container: str) -> Path:
    """The host dir mounted as the kernel's socket dir, from the engine's view."""
    mounts = inspect(container)["Mounts"]
    assert isinstance(mounts, list)
    [source] = [m["Source"] for m in mounts if m["Destination"] == hardening.RUNTIME_TARGET]
    return Path(source)


@pytest.mark.parametrize("attack", list(SOCKET_DIR_ATTACKS))
def test_writing_into_the_socket_dir_stops_the_kernel_at_once(
    hostile_kernel: str, runtime: Runtime, workdir: Path, launcher_log: Path, attack: str
) -> None:
    """A18: the socket dir is on the host's disk and no user can cap it, so anything but
    the kernel's sockets appearing there (files, dirs, writes to unlinked or O_TMPFILE
    files) is an attack: the launcher removes the container at once and says why, and the
    dir is gone afterwards. Before, a kernel filled the host's /tmp through it (2.9 GiB
    and 97,000 inodes, past its own /tmp caps)."""
    if attack == "tmpfile" and runtime == "runsc":
        pytest.skip("gVisor has no O_TMPFILE on a host bind mount (EOPNOTSUPP)")
    code = f"import os\nD = {hardening.RUNTIME_TARGET!r}\n" + SOCKET_DIR_ATTACKS[attack]
    code += "print('survived', flush=True)\n"
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        rundir = host_runtime_dir(container)
        before = shutil.disk_usage(rundir).used
        used = Peak(lambda: shutil.disk_usage(rundir).used - before)
        with used:
            kc.execute(code)
            launcher = launcher_process(km)
            outputs = []
            deadline = time.monotonic() + 60
            while launcher.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    outputs.append(kc.get_iopub_msg(timeout=0.2))
        texts = [m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"]
        assert launcher.poll() is not None, f"the kernel was not stopped: {texts}"
        assert_gone(km, container)
    assert "survived\n" not in texts
    log = launcher_log.read_text()
    assert "the kernel wrote to its socket dir, where only its sockets belong" in log, log
    assert not rundir.exists()
    # The host disk's peak growth while it ran (shared with other tests: an upper bound).
    print(f"A18 {attack}: host disk grew by at most {used.value / MIB:.0f} MiB")


COPY_LIMIT = 64 * MIB

FILL_COPY = """\
import errno, json, os
def fill(size, count):
    n = 0
    try:
        for n in range(count):
            with open(f'fill-{size}-{n}', 'wb') as fh:
                fh.write(b'x' * size)
    except OSError as exc:
        return [n, errno.errorcode[exc.errno]]
    return [count, None]
sv = os.statvfs('.')
print(json.dumps({'bytes': fill(2**20, 256), 'inodes': fill(0, 5000),
                  'size': sv.f_blocks * sv.f_frsize}))
"""


@pytest.fixture(scope="module")
def copy_limited_kernel(kernel_image: str, runtime: Runtime) -> str:
    """HOSTILE_LIMITS with --copy-workdir and a 64 MiB copy limit."""
    return install_hostile(
        "jdk-test-hostile-copy-limit",
        kernel_image,
        runtime,
        *HOSTILE_LIMITS,
        "--copy-workdir",
        "--copy-limit",
        "64m",
    )


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes allocated, entries) under root on the host, not following links."""
    size = count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                count += 1
    return size, count


def test_copy_workdir_writes_stay_in_a_capped_tmpfs_not_on_the_hosts_disk(
    copy_limited_kernel: str, runtime: Runtime, workdir: Path, request: pytest.FixtureRequest
) -> None:
    """A19: a --copy-workdir kernel fills its work dir with 1 MiB files, then empty ones.
    Its copy is a tmpfs in the container, capped at --copy-limit bytes and --tmp-inodes
    entries: ENOSPC at each, and nothing of it lands under the host's runtime dir (before,
    the copy was a host directory and both were unbounded)."""
    if runtime == "runsc":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=LimitNotEnforcedError,
                reason="BUG: gVisor's tmpfs ignores nr_inodes (as A11)",
            )
        )
    (workdir / "notebook-data.csv").write_text("a,b\n1,2\n")
    with running(copy_limited_kernel, workdir) as (km, kc):
        container = only_container(km)
        base = host_runtime_dir(container).parent
        reply, out = execute(kc, FILL_COPY, timeout=120)
        assert reply["status"] == "ok", reply
        result = json.loads(stream_text(out))
        on_host = tree_usage(base)
        _, out = execute(kc, "print(open('notebook-data.csv').read())", timeout=20)
        assert stream_text(out) == "a,b\n1,2\n\n"
        shut_down(km, kc)
    assert_gone(km, container)

    assert on_host[0] < MIB, on_host
    assert on_host[1] < 20, on_host
    assert sorted(os.listdir(workdir)) == ["notebook-data.csv"]
    assert result["size"] == COPY_LIMIT, result
    assert result["bytes"][1] == "ENOSPC", result
    assert COPY_LIMIT // MIB - 4 <= result["bytes"][0] <= COPY_LIMIT // MIB, result
    if result["inodes"][1] != "ENOSPC" or not TMP_INODES - 300 < result["inodes"][0] <= TMP_INODES:
        raise LimitNotEnforcedError(f"inodes: {result['inodes']} with --tmp-inodes {TMP_INODES}")


FLOODS = {
    # A13, with flush: without it ipykernel 7 buffers faster than it sends and the kernel
    # is OOM-killed in its own memory (also safe) before the budget is reached.
    "stdout": (
        "while True:\n    print('x' * 10**6, flush=True)\n",
        f"more than {OUTPUT_BUDGET} bytes of output in all",
    ),
    "display": (  # A14
        "from IPython.display import display\n"
        "while True:\n"
        "    display({'text/html': '<p>' + 'y' * 10**7 + '</p>'}, raw=True)\n",
        f"more than {OUTPUT_BUDGET} bytes of output in all",
    ),
    "one-huge-message": (  # A16
        "from IPython.display import display\n"
        "display({'text/plain': 'A' * (20 * 2**20)}, raw=True)\n",
        f"a message of more than {MAX_MESSAGE} bytes",
    ),
}


@pytest.mark.parametrize("flood", list(FLOODS))
def test_output_flood_stops_the_kernel_and_the_log_says_budget_exceeded(
    hostile_kernel: str, workdir: Path, launcher_log: Path, flood: str
) -> None:
    """A13 (stdout), A14 (display_data), A16 (one 20 MiB message): while the bytes flow,
    the relay stops the kernel at --output-budget (64 MiB) or --max-message (16 MiB); the
    client, draining iopub as it must, never receives more than the budget in all nor a
    message larger than the maximum, and the log says "budget exceeded: ..."."""
    code, reason = FLOODS[flood]
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        kc.execute(code)
        sizes = collect_until_dead(kc, launcher_process(km), timeout=90)
        assert_gone(km, container)
    assert sum(sizes) <= OUTPUT_BUDGET
    assert max(sizes, default=0) <= MAX_MESSAGE
    log = launcher_log.read_text()
    assert "budget exceeded: the kernel sent " + reason in log
    assert relayed_out(log) <= OUTPUT_BUDGET + MAX_MESSAGE


RAW_FLOOD = """\
import os, subprocess, sys
for _ in range(6):
    os.write(1, b'z' * 2**20)
subprocess.run([sys.executable, '-c', 'import os; os.write(1, b"y" * 2**21)'], check=True)
"""


def test_fd_level_output_is_counted_and_the_raw_stream_is_capped(
    hostile_kernel: str, workdir: Path, launcher_log: Path, runtime: Runtime
) -> None:
    """A15: 8 MiB written to fd 1 (os.write, and a subprocess) bypassing sys.stdout.

    ipykernel captures fd 1 onto iopub, so it counts against the output budget (the
    relayed byte count covers it), and it echoes it to the container's real stdout: the
    engine writes none of that to its disk (--log-driver none, nothing under the
    container's directory), the launcher forwards at most FORWARD_LIMIT to its log, and
    keeps at most 2 * TAIL_KEEP of its end (0600) for `logs`.
    """
    root = subprocess.run(
        docker_argv(["info", "--format", "{{.DockerRootDir}}"]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        reply, out = execute(kc, RAW_FLOOD, timeout=120)
        assert reply["status"] == "ok"
        # fd-level output comes from ipykernel's watcher thread and may trail the idle.
        deadline = time.monotonic() + 10
        while stream_text(out).count("z") < 6 * MIB and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                out.append(kc.get_iopub_msg(timeout=1))
        assert stream_text(out).count("z") == 6 * MIB
        host_config = inspect(container)["HostConfig"]
        assert isinstance(host_config, dict)
        assert host_config["LogConfig"]["Type"] == "none"
        engine_dir = Path(root, "containers", container)
        if os.access(engine_dir, os.R_OK):
            written = sum(p.stat().st_size for p in engine_dir.rglob("*") if p.is_file())
            assert written < MIB, f"the engine wrote {written} bytes for the container"
        shut_down(km, kc)
    assert_gone(km, container)
    log = launcher_log.read_text()
    assert "dropping the rest" in log
    assert len(log.encode()) < FORWARD_LIMIT + 64 * 1024
    # The 6 MiB the cell saw arrived through the relay and were counted; the subprocess's
    # 2 MiB may still be in ipykernel's fd watcher when the kernel shuts down.
    assert relayed_out(log) >= 6 * MIB
    # What `logs` keeps of it is its end, bounded, private to the launching user.
    # Through the broker the launching user is the test user: the log is in their base.
    kept = find_logs(kernel_key(km), user_runtime_base() if runtime.via_broker else None)
    size = os.stat(kept.record["output_path"]).st_size
    assert 0 < size <= 2 * TAIL_KEEP
    assert set(kept.output) <= set(b"zy\n")
    assert os.stat(kept.record["output_path"]).st_mode & 0o777 == 0o600


RATE_FLOOD = """\
import sys, time
end = time.monotonic() + 3
while time.monotonic() < end:
    sys.stdout.write('.')
    sys.stdout.flush()
"""


def test_message_rate_flood_keeps_host_memory_bounded_and_is_counted(
    hostile_kernel: str, workdir: Path, launcher_log: Path
) -> None:
    """A17: three seconds of one-byte stream messages. The client's RSS grows by less than
    300 MiB, the launcher's peak RSS stays under 150 MiB (it relays bytes, it does not
    parse), and every message counts against the output budget with its whole wire size
    (headers and signature), so a message-count flood is stopped by the byte budget too.
    (No separate message-rate limit exists; the budget bounds the total.)"""
    rss_before = status_kib("self", "VmRSS")
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        launcher = launcher_process(km)
        reply, out = execute(kc, RATE_FLOOD, timeout=60)
        assert reply["status"] == "ok"
        messages = [m for m in out if m["msg_type"] == "stream"]
        assert len(messages) > 100
        assert status_kib(launcher.pid, "VmHWM") < 150 * 1024
        shut_down(km, kc)
    assert_gone(km, container)
    assert status_kib("self", "VmRSS") - rss_before < 300 * 1024
    assert relayed_out(launcher_log.read_text()) > 300 * len(messages)


# -- E. lifecycle --------------------------------------------------------------------------

LEFT_BEHIND = """\
import os, subprocess, time
subprocess.Popen(['sleep', '4321'], start_new_session=True)
if os.fork() == 0:  # the classic double-fork daemon
    os.setsid()
    if os.fork() == 0:
        while True:
            with open('alive.log', 'a') as f:
                f.write('alive\\n')
            time.sleep(0.1)
    os._exit(0)
time.sleep(0.5)
print(sum('sleep' in open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') if p.isdigit()))
"""


def test_background_processes_die_with_the_container(
    hostile_kernel: str, runtime: Runtime, workdir: Path
) -> None:
    """E01: a `sleep` in its own session and a double-forked daemon writing alive.log
    outlive the kernel's own process group, but after the normal shutdown the container
    is gone within 5 s, no process of it (nor `sleep 4321` as the kernel's uid) is left
    on the host, and alive.log stops growing."""
    log = workdir / "alive.log"
    with running(hostile_kernel, workdir) as (km, kc):
        container = only_container(km)
        _, out = execute(kc, LEFT_BEHIND, timeout=30)
        assert stream_text(out) == "1\n"
        wait_until(lambda: log.exists() and log.stat().st_size > 0, 5)
        if runtime == "runc":  # under gVisor they are not host processes
            ps = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True)
            assert kernel_uid_processes("sleep 4321", runtime), [
                line for line in ps.stdout.splitlines() if "4321" in line
            ]
        shut_down(km, kc)
    assert_gone(km, container)
    assert not kernel_uid_processes("sleep 4321", runtime)
    size = log.stat().st_size
    time.sleep(0.5)
    assert log.stat().st_size == size, "the daemon outlived the container"


STATE = """\
import os
open('/tmp/marker', 'w').write('x')
open(os.path.expanduser('~/marker'), 'w').write('x')
open('marker', 'w').write('x')
secret = 42
"""


def test_restart_starts_a_fresh_container_with_no_state(hostile_kernel: str, workdir: Path) -> None:
    """E04: after a restart, /tmp, HOME and the interpreter are new (a new container);
    only the mounted work dir keeps its files, by design (it is the notebook's directory;
    --copy-workdir gives each start a fresh copy)."""
    with running(hostile_kernel, workdir) as (km, kc):
        first = only_container(km)
        reply, _ = execute(kc, STATE, timeout=20)
        assert reply["status"] == "ok"
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        second = only_container(km)
        assert second != first
        _, out = execute(
            kc,
            "import os\nprint(os.path.exists('/tmp/marker'), "
            "os.path.exists(os.path.expanduser('~/marker')), 'secret' in globals(), "
            "os.path.exists('marker'))",
            timeout=20,
        )
        assert stream_text(out) == "False False False True\n"
        shut_down(km, kc)
    assert_gone(km, first)
    assert_gone(km, second)


TIME_BOMB = """\
import threading, time
def bomb():
    time.sleep(%d)
    open('late_write', 'w').write('boom')
    while True:
        pass
threading.Thread(target=bomb).start()
while True:
    time.sleep(1)
"""


def test_time_bomb_dies_with_the_kernel_at_its_maximum_lifetime(
    short_lived_kernel: str, workdir: Path, launcher_log: Path
) -> None:
    """E05, A04's lifetime cap: a kernel whose cell never ends is ended by the in-container
    supervisor after --max-lifetime (5 s), with "maximum lifetime" in the log; a thread set
    to write a file and spin after that moment never does (it died with the container)."""
    started = time.monotonic()
    with running(short_lived_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        launcher = launcher_process(km)
        cell_started = time.monotonic()
        kc.execute(TIME_BOMB % LIFETIME)
        wait_until(lambda: launcher.poll() is not None, LIFETIME + 10)
        assert time.monotonic() - started < LIFETIME + 8
        assert_gone(km, container)
    wait_until(lambda: time.monotonic() > cell_started + LIFETIME + 1, LIFETIME + 2)
    assert not (workdir / "late_write").exists()
    assert f"maximum lifetime of {LIFETIME} s reached" in launcher_log.read_text()


# -- F. protocol and host-side client robustness -------------------------------------------

KEY_CHECK = """\
import errno, json, os
path = '/opt/jupyter-docker-kernel/kernel.json'
key = json.load(open(path))['key']
print(key)
print(any(key in value for value in os.environ.values()))
print(key.encode() in open('/proc/self/environ', 'rb').read())
for attempt in (lambda: open(path, 'w'), lambda: open(path, 'a'),
                lambda: os.chmod(path, 0o666), lambda: os.unlink(path),
                lambda: os.rename(path, path + '.x')):
    try:
        attempt()
        print('ALLOWED')
    except OSError as exc:
        print(errno.errorcode[exc.errno])
"""


def test_hmac_key_is_readable_but_not_in_the_environment_and_its_file_is_read_only(
    hostile_kernel: str, workdir: Path
) -> None:
    """F01: the kernel can read the key (by design: the protocol gives it to the kernel),
    but only from the read-only connection file: it is not in the environment, and the
    file can be neither written, re-moded, removed nor renamed."""
    with running(hostile_kernel, workdir) as (km, kc):
        _, out = execute(kc, KEY_CHECK, timeout=20)
        key, in_env, in_proc_env, *attempts = stream_text(out).split()
        assert key == km.session.key.decode()
        assert (in_env, in_proc_env) == ("False", "False")
        assert len(attempts) == 5
        assert set(attempts) <= {"EROFS", "EACCES", "EPERM", "EBUSY"}, attempts
        container = only_container(km)
        shut_down(km, kc)
    assert_gone(km, container)


EXFILTRATE = """\
import sys
get_ipython().events.register('pre_run_cell', lambda info: print('LEAK:', info.raw_cell))
"""
HIDDEN_TEST = "# HIDDEN TEST: the instructor's check\nanswer = 42"
FORGE = """\
k = get_ipython().kernel
k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'All tests ' + 'passed!'},
               parent={'header': {'msg_id': 'some-other-cell', 'msg_type': 'execute_request'}})
print('own output')
"""
HIDE_FAILURES = """\
import ipykernel.ipkernel as K
from IPython.display import clear_output
ip = get_ipython()
ip.set_custom_exc((BaseException,), lambda *a, **kw: None)
ip.events.register('post_run_cell', lambda result: clear_output())
_orig = K.IPythonKernel.do_execute
async def do_execute(self, *a, **kw):
    r = await _orig(self, *a, **kw)
    return {'status': 'ok', 'execution_count': r.get('execution_count'),
            'user_expressions': {}, 'payload': []}
K.IPythonKernel.do_execute = do_execute
"""
FAILING_TEST = "print('FAILED')\nassert False, 'hidden test failed'"


def test_kernel_code_can_hide_its_failures_and_read_hidden_tests(
    hostile_kernel: str, workdir: Path
) -> None:
    """F02, F03, F04: grade integrity, which no sandbox provides (docs/security.md, "What
    is not protected": results produced inside the student's kernel are not trustworthy).

    This test documents that the attacks work, and will fail if that ever changes:
    - F04: a pre_run_cell hook prints every later cell's source (hidden tests) into the
      outputs that nbgrader returns as feedback;
    - F03: a patched do_execute and a post_run_cell clear_output make a failing assertion
      look like a silent, successful cell to nbclient (no CellExecutionError, no output);
    - F02: what the sandbox-independent client does keep: a message forged for another
      cell's parent is dropped by nbclient, it lands in no cell.
    """
    nb = notebook(EXFILTRATE, HIDDEN_TEST, FORGE, HIDE_FAILURES, FAILING_TEST)
    client, seen = notebook_client(nb, hostile_kernel, workdir)
    client.execute()
    texts = [json.dumps(cell.outputs) for cell in nb.cells]
    assert "LEAK: # HIDDEN TEST" in texts[1]
    assert "own output" in texts[2]
    assert not any("All tests passed" in text for text in texts)
    assert nb.cells[4].outputs == []
    ((key, _),) = seen
    wait_until(lambda: not containers_of(key), 5)


XSS_HTML = "<img src=x onerror=\"fetch('/api/terminals',{method:'POST'})\">"
XSS_JS = 'fetch("/api/contents").then(r => r.text()).then(t => console.log(t))'
HOSTILE_OUTPUTS = [
    f"from IPython.display import HTML, Javascript, display\n"
    f"display(HTML({XSS_HTML!r}))\ndisplay(Javascript({XSS_JS!r}))",
    "import os\nos.write(1, b'bad utf-8: \\xff\\xfe\\xc3(\\n')",
    "from IPython.display import display\n"
    "nested = []\n"
    "for _ in range(200):\n"
    "    nested = [nested]\n"
    "display({'application/json': {'deep': nested}}, raw=True)",
    "print('next cell')",
]


def test_hostile_notebook_metadata_and_outputs_reach_nbclient_as_inert_data(
    hostile_kernel: str, kernel_image: str, workdir: Path, runtime: Runtime
) -> None:
    """F05, F07 (the part a kernel produces through its own output machinery), F11.

    - F11: notebook metadata naming another kernel and asking for another image and a
      mount of / is ignored: the kernel is the one the host chose, its image ours, and
      its mounts exactly the five every kernel gets (there is no mechanism to ask).
    - F05: HTML with an onerror handler and JavaScript arrive unchanged as text/html and
      application/javascript data; rendering them safely is the frontend's job.
    - F07: invalid UTF-8 on fd 1 arrives replaced (U+FFFD), a 200-deep JSON document
      arrives intact; nbclient completes and the notebook validates.
    """
    nb = notebook(*HOSTILE_OUTPUTS)
    nb.metadata["kernelspec"] = {"name": "python3-host", "display_name": "x", "language": "python"}
    nb.metadata["docker"] = {"image": "evil", "volumes": ["/:/host"], "privileged": True}
    client, seen = notebook_client(nb, hostile_kernel, workdir)
    client.execute()

    ((key, container),) = seen
    assert container["Config"]["Image"] == kernel_image
    assert container["HostConfig"]["Privileged"] is False
    assert not container["HostConfig"]["Binds"]
    mounts = {m["Destination"]: m["Source"] for m in container["Mounts"]}
    assert set(mounts) == {
        hardening.RUNTIME_TARGET,
        hardening.CONNECTION_TARGET,
        hardening.SUPERVISOR_TARGET,
        hardening.USAGE_HOOK_TARGET,
        str(workdir),
    }
    if runtime.env is not None:  # the broker mounts its own staged bind of the work dir
        assert mounts[str(workdir)].startswith(f"{state_dir(runtime.env.socket)}/")
    else:
        assert mounts[str(workdir)] == str(workdir)
    assert "/" not in mounts.values()

    html, js = (output["data"] for output in nb.cells[0].outputs)
    assert html["text/html"] == XSS_HTML
    assert js["application/javascript"] == XSS_JS
    # fd-level output reaches iopub from ipykernel's watcher thread, possibly after the
    # cell's execute_result (os.write's return value): look for the stream, not a position.
    streams = [o["text"] for o in nb.cells[1].outputs if o["output_type"] == "stream"]
    assert streams == ["bad utf-8: \ufffd\ufffd\ufffd(\n"]
    deep = nb.cells[2].outputs[0]["data"]["application/json"]["deep"]
    for _ in range(200):
        (deep,) = deep
    assert deep == []
    assert nb.cells[3].outputs[0]["text"] == "next cell\n"
    nbformat.validate(nb)
    wait_until(lambda: not containers_of(key), 5)


MALFORMED = """\
k = get_ipython().kernel
s = k.session
bad = [b'{"msg_id": 1', b'{}', b'{}', b'[' * 100000]
for parts in ([b'junk'],
              [b'stream', b'<IDS|MSG>', b'deadbeef', b'{}', b'{}', b'{}', b'{}'],
              [b'stream', b'<IDS|MSG>', s.sign(bad)] + bad):
    k.iopub_socket.send_multipart(parts)
msg = s.msg('stream', {'name': 'stdout', 'text': 'replayed\\n'}, parent=k.get_parent())
for _ in range(3):
    s.send(k.iopub_socket, msg)
"""


@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="BUG (host client, not src/): jupyter_client raises ValueError on a malformed, "
    "badly signed or replayed iopub message and nbclient lets it abort the notebook; the "
    "relay passes such frames on unchecked",
)
def test_malformed_and_replayed_frames_signed_with_the_key_do_not_abort_the_client(
    hostile_kernel: str, workdir: Path
) -> None:
    """F07, F08: raw frames on iopub with the key the kernel holds (no delimiter, a bad
    signature, invalid and 100000-deep JSON with a valid signature, one message replayed
    three times). Safe outcome (catalogue): the client drops them and runs the next cell.

    What holds today: the abort stays within this notebook and the container is removed;
    nbgrader records the submission as failed, so a student can only sabotage their own
    run. What does not: nbclient.execute raises (ValueError: "<IDS|MSG> is not in list",
    "Invalid Signature", JSONDecodeError, "Duplicate Signature").
    """
    nb = notebook(MALFORMED, "print('next')")
    client, seen = notebook_client(nb, hostile_kernel, workdir)
    error = ""
    try:
        client.execute()
    except ValueError as exc:
        error = f"{type(exc).__name__}: {exc}"
    ((key, _),) = seen
    wait_until(lambda: not containers_of(key), 5)
    # A fresh error, and nbclient's objects released now: its aborted run leaves a task
    # whose exception nobody retrieves, and when asyncio logs that from a finalizer while
    # pytest parses source for this report, CPython 3.11's ast fails (gh-106905) and
    # pytest stops with INTERNALERROR.
    del client
    gc.collect()
    if error:
        raise ValueError(error)
    assert nb.cells[1].outputs[0]["text"] == "next\n"


def test_stdin_prompt_reaches_the_client_only_when_it_allows_stdin(
    hostile_kernel: str, workdir: Path
) -> None:
    """F06: with allow_stdin=False (nbclient, nbgrader) input() raises
    StdinNotImplementedError in the kernel and no input_request reaches the client; with
    allow_stdin=True the prompt arrives on the stdin channel, labelled as the kernel's."""
    with running(hostile_kernel, workdir) as (km, kc):
        phish = "input('Grading paused - instructor, re-enter your password: ')"
        reply, _ = execute(kc, phish, timeout=20, allow_stdin=False)
        assert (reply["status"], reply["ename"]) == ("error", "StdinNotImplementedError")
        with pytest.raises(queue.Empty):
            kc.get_stdin_msg(timeout=0.5)

        prompts: list[str] = []

        def answer(msg: dict[str, Any]) -> None:
            prompts.append(msg["content"]["prompt"])
            kc.input("not-a-password")

        reply, out = execute(
            kc, f"print(repr({phish}))", timeout=20, allow_stdin=True, stdin_hook=answer
        )
        assert reply["status"] == "ok"
        assert prompts == ["Grading paused - instructor, re-enter your password: "]
        assert stream_text(out) == "'not-a-password'\n"
        container = only_container(km)
        shut_down(km, kc)
    assert_gone(km, container)


REDIRECT = """\
import os
path = '/run/jupyter-docker-kernel/k-5'  # the heartbeat socket
try:
    os.unlink(path)
    os.symlink(%r, path)
    print('replaced')
except OSError as exc:
    print('refused:', type(exc).__name__)
"""


def test_socket_replaced_by_a_symlink_is_refused_and_its_target_never_reached(
    hostile_kernel: str,
    runtime: Runtime,
    workdir: Path,
    launcher_log: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """F09: the kernel swaps its heartbeat socket for a symlink to a host socket (here a
    listening bait; in an attack the engine's socket), then a client connects afresh.

    runc: the swap succeeds; the relay refuses the path ("not a socket"), the new heartbeat
    gets no answer, and the bait never sees a connection. gVisor: the swap itself fails
    (EPERM), and the heartbeat still answers through the real socket. Either way the
    existing session keeps working.
    """
    bait_path = tmp_path_factory.mktemp("bait") / "host.sock"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bait,
        running(hostile_kernel, workdir, launcher_log) as (km, kc),
    ):
        bait.bind(str(bait_path))
        bait.listen()
        bait.settimeout(0.1)
        container = only_container(km)
        _, out = execute(kc, REDIRECT % str(bait_path), timeout=20)
        if runtime == "runc":
            assert stream_text(out) == "replaced\n"
            assert not heartbeat_answers(km)
            assert "is not a socket (replaced by the kernel?)" in launcher_log.read_text()
        else:
            assert stream_text(out) == "refused: PermissionError\n"
            assert heartbeat_answers(km)
        with pytest.raises(TimeoutError):
            bait.accept()
        _, out = execute(kc, "print('still here')", timeout=20)
        assert stream_text(out) == "still here\n"
        shut_down(km, kc)
    assert_gone(km, container)


# -- F12, F13: other users on the host at the kernel's tcp endpoints ------------------------

BIG_PRINT = "for _ in range(8):\n    print('v' * 2**20, flush=True)\n"


def test_others_subscribing_to_iopub_do_not_spend_the_kernels_output_budget(
    hostile_kernel: str, workdir: Path, launcher_log: Path
) -> None:
    """F12: anyone on the host can subscribe to iopub on 127.0.0.1 without the key (as with
    upstream Jupyter's own kernels: see docs/security.md). 60 such subscribers, all reading,
    while the victim's cell prints 8 MiB under a 64 MiB budget: the kernel publishes each
    message to all 61, but the budget counts it once, so the cell ends normally, the victim
    gets all of it and the kernel goes on."""
    context = zmq.Context()
    stop = threading.Event()

    def drain(subscribers: list[zmq.Socket[bytes]]) -> None:
        poller = zmq.Poller()
        for sub in subscribers:
            poller.register(sub, zmq.POLLIN)
        while not stop.is_set():
            for sub, _ in poller.poll(100):
                sub.recv_multipart(copy=False)

    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        subscribers: list[zmq.Socket[bytes]] = []
        for _ in range(60):
            sub = context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(f"tcp://127.0.0.1:{km.iopub_port}")
            subscribers.append(sub)
        drainer = threading.Thread(target=drain, args=(subscribers,), daemon=True)
        drainer.start()
        try:
            time.sleep(1)  # the subscriptions reach the kernel
            reply, out = execute(kc, BIG_PRINT, timeout=120)
            assert reply["status"] == "ok"
            assert stream_text(out).count("v") == 8 * MIB
            reply, out = execute(kc, "print('still here')", timeout=30)
            assert stream_text(out) == "still here\n"
            assert only_container(km) == container
        finally:
            stop.set()
            drainer.join(5)
            for sub in subscribers:
                sub.close()
            context.term()
        shut_down(km, kc)
    assert_gone(km, container)
    assert "budget exceeded" not in launcher_log.read_text()


def test_a_thousand_bare_connections_neither_crash_the_kernel_nor_lock_its_client_out(
    hostile_kernel: str, workdir: Path, launcher_log: Path
) -> None:
    """F13: another local user opens 1000 tcp connections to the kernel's shell endpoint and
    says nothing. Each used to become a connection to the kernel's socket, past its
    descriptor limit. The launcher relays at most 64 per channel and closes the rest (and
    says so once in its log); the kernel keeps running in the same container and the
    client's cells still run."""
    with running(hostile_kernel, workdir, launcher_log) as (km, kc):
        container = only_container(km)
        launcher = launcher_process(km)
        bare: list[socket.socket] = []
        try:
            for _ in range(1000):
                with contextlib.suppress(OSError):  # closed at once past the cap: fine
                    bare.append(socket.create_connection(("127.0.0.1", km.shell_port), 10))
            time.sleep(2)
            reply, out = execute(kc, "print('still here')", timeout=60)
            assert reply["status"] == "ok"
            assert stream_text(out) == "still here\n"
            assert launcher.poll() is None
            assert only_container(km) == container
        finally:
            for sock in bare:
                sock.close()
        reply, out = execute(kc, "print('and after')", timeout=60)
        assert stream_text(out) == "and after\n"
        shut_down(km, kc)
    assert_gone(km, container)
    assert "more than 64 connections at once" in launcher_log.read_text()
