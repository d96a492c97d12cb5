"""Host processes, RSS and PSS of our plumbing per kernel, and cold start times (issue 17).

Run with the Python of the checkout to measure (its venv has that checkout installed):

    .venv/bin/python docs/design/issue17/measure_plumbing.py provisioner 10
    .venv/bin/python docs/design/issue17/measure_plumbing.py launcher 10

It writes a kernelspec (`setup`, with `--provisioner` for the provisioner) into a fresh
JUPYTER_DATA_DIR, points TMPDIR (so the runtime base) at a fresh dir, starts one kernel and
stops it (imports, the janitor registration: once per process), then starts N kernels one
after another with jupyter_client's KernelManager in this process (as a Jupyter server
does), each timed from start_kernel to its first kernel_info reply. With all N running it
counts:

- plumbing processes: new processes whose argv names our fresh runtime base or connection
  files (launchers, their watchdogs, `docker run` CLIs, watchdog processes, the resident
  helper), or that run below this process. The kernels' own processes (in containers) are
  not ours to count.
- their RSS and PSS (/proc/PID/smaps_rollup), and this process's own growth (the
  provisioner's in-process lifelines, relays and threads).

Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB, (0, 0) when the process is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on the host."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat.rpartition(")")[2].split()[1]), cmdline)
    return found


def in_our_namespace(pid: int) -> bool:
    """Whether pid runs in our pid namespace (not a kernel's, inside its container)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


def ours(before: set[int], markers: list[str], new: bool = True) -> dict[int, str]:
    """Processes that belong to our plumbing (see the module docstring): new since
    `before`, or (new=False) those that were there already (the once-per-process ones)."""
    now = processes()
    below = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, (parent, _) in now.items():
            if parent in below and pid not in below:
                below.add(pid)
                changed = True
    return {
        pid: line
        for pid, (_, line) in now.items()
        if (pid not in before) == new
        and pid != os.getpid()
        and (pid in below or any(m in line for m in markers))
        and in_our_namespace(pid)
    }


def main() -> None:
    kind, count = sys.argv[1], int(sys.argv[2])
    root = Path(tempfile.mkdtemp(prefix="jm", dir="/tmp"))
    for name in ("home", "data", "runtime", "config", "tmp"):
        (root / name).mkdir()
    os.environ.update(
        HOME=str(root / "home"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_PATH=str(root / "data"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_CONFIG_DIR=str(root / "config"),
        TMPDIR=str(root / "tmp"),
    )
    os.environ.pop("XDG_RUNTIME_DIR", None)
    spec = "jm-" + kind
    extra = ["--provisioner"] if kind == "provisioner" else []
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_docker_kernel", "setup", "--user", "--name", spec, *extra],
        capture_output=True,
        text=True,
        cwd=root,
    )
    if done.returncode:
        raise SystemExit(f"setup failed: {done.stdout}{done.stderr}")
    from jupyter_client.manager import KernelManager

    workdir = root / "work"
    workdir.mkdir()

    def start() -> tuple[KernelManager, object, float]:
        began = time.monotonic()
        km = KernelManager(kernel_name=spec)
        km.start_kernel(cwd=str(workdir))
        kc = km.blocking_client()
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        return km, kc, time.monotonic() - began

    def stop(km: KernelManager, kc: object) -> None:
        kc.stop_channels()  # type: ignore[attr-defined]
        km.shutdown_kernel(now=False)

    km, kc, _ = start()  # warm-up: imports, the janitor (once per process)
    stop(km, kc)
    time.sleep(1)
    markers = [str(root)]
    before = set(processes())
    own_before = memory(os.getpid())
    running = []
    times = []
    for _ in range(count):
        km, kc, took = start()
        running.append((km, kc))
        times.append(took)
    time.sleep(2)  # refills, watchdogs settle
    found = ours(before, markers)
    mem = {pid: memory(pid) for pid in found}
    own_after = memory(os.getpid())
    once = ours(before, markers, new=False)
    once_mem = [memory(pid) for pid in once]
    own_rss = own_after[0] - own_before[0]
    own_pss = own_after[1] - own_before[1]
    rss = sum(r for r, _ in mem.values())
    pss = sum(p for _, p in mem.values())
    print(
        json.dumps(
            {
                "kind": kind,
                "kernels": count,
                "processes": len(found),
                "processes_per_kernel": round(len(found) / count, 2),
                "once_per_process": len(once),
                "once_rss_mib": round(sum(r for r, _ in once_mem) / 1024, 2),
                "once_pss_mib": round(sum(p for _, p in once_mem) / 1024, 2),
                "process_rss_mib_per_kernel": round(rss / 1024 / count, 2),
                "process_pss_mib_per_kernel": round(pss / 1024 / count, 2),
                "in_process_rss_mib_per_kernel": round(own_rss / 1024 / count, 2),
                "in_process_pss_mib_per_kernel": round(own_pss / 1024 / count, 2),
                "total_rss_mib_per_kernel": round((rss + own_rss) / 1024 / count, 2),
                "total_pss_mib_per_kernel": round((pss + own_pss) / 1024 / count, 2),
                "cold_start_median_s": round(statistics.median(times), 3),
                "cold_start_all_s": [round(t, 3) for t in times],
                "commands": sorted({" ".join(line.split()[:3])[:80] for line in found.values()}),
                "once_commands": sorted({line[:120] for line in once.values()}),
            }
        ),
        flush=True,
    )
    for km, kc in running:
        stop(km, kc)


if __name__ == "__main__":
    main()
