"""Argv kernels through the resident helper vs in-process vs native, in one interleaved run.

    .venv/bin/python -m benchmarks.hosting [--repeat 7] [--burst 20] [--counts 1,10]

Rows: a pooled start (argv launcher, --pool 1) to the first kernel_info reply, single (the
pool full before each) and 20 back to back (start, reply, stop, next); host memory per argv
kernel at 1 and 10 kernels: RSS and PSS (/proc/PID/smaps_rollup) of the thin client, the
helper's share (helper / N) and its `docker run -i` children, against the in-process
launcher, its `docker run` child and its watchdog. Medians. The helper is running already
(as for every kernel but a user's first); its own start is reported once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import NATIVE, install, isolated_jupyter_env

MODES = {"helper": {}, "in-process": {"JUPYTER_DOCKER_KERNEL_NO_HELPER": "1"}, "native": {}}


def start(kernel: str, cwd: Path, env: dict[str, str]) -> tuple[float, Any, Any]:
    """start_kernel -> first kernel_info_reply (s), and the running kernel."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel)
    began = time.perf_counter()
    km.start_kernel(cwd=str(cwd), env={**os.environ, **env})
    kc = km.client()
    kc.start_channels()
    sent: set[str] = set()
    while True:
        sent.add(kc.kernel_info())
        try:
            reply = kc.get_shell_msg(timeout=0.5)
        except Exception:  # queue.Empty: ask again
            if not km.is_alive():
                raise RuntimeError(f"kernel {kernel} died while starting") from None
            continue
        if reply["parent_header"].get("msg_id") in sent:
            break
    return time.perf_counter() - began, km, kc


def stop(km: Any, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    km.cleanup_resources()


def pool_full(kernel: str, timeout: float = 60) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    from jupyter_docker_kernel import kernelspec, pool
    from jupyter_docker_kernel.rundir import runtime_base

    spec = KernelSpecManager().get_kernel_spec(kernel)
    settings = kernelspec.settings_from_kernel_json(
        {"argv": spec.argv, "metadata": spec.metadata, "env": spec.env}
    )
    key = pool.pool_key(settings, os.getuid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [d for d in pool.pool_dirs(runtime_base(), key) if (d / "rt" / "claim").exists()]
        if len(ready) >= settings.pool:
            return
        time.sleep(0.1)
    print(f"warning: the pool of {kernel} did not fill", file=sys.stderr)


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MiB; (0, 0) when it is gone."""
    values = {"Rss:": 0, "Pss:": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] in values:
                values[parts[0]] = int(parts[1])
    return values["Rss:"] / 1024, values["Pss:"] / 1024


def children(pid: int) -> list[int]:
    """Children of every thread of pid (a helper's session threads start the engine CLI)."""
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def same_cmdline(pid: int) -> list[int]:
    """Other processes with pid's command line: the in-process launcher's forked watchdog."""
    want = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pid:
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes() == want:
                    found.append(int(entry.name))
    return found


def helper_pid() -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"jupyter_docker_kernel.helper" in argv and os.readlink(entry / "exe") == (
                os.path.realpath(sys.executable)
            ):
                return int(entry.name)
    raise RuntimeError("no helper running")


def per_kernel(mode: str, kms: list[Any]) -> dict[str, float]:
    """Host memory per kernel (MiB) for a mode, with `kms` running."""
    n = len(kms)
    out: dict[str, float] = {}

    def add(name: str, pids: list[int], share: float = 1.0) -> None:
        rss = sum(memory(p)[0] for p in pids) * share
        pss = sum(memory(p)[1] for p in pids) * share
        out[f"{name} RSS"] = out.get(f"{name} RSS", 0) + rss
        out[f"{name} PSS"] = out.get(f"{name} PSS", 0) + pss

    launchers = [km.provisioner.process.pid for km in kms]
    if mode == "helper":
        helper = helper_pid()
        add("python", launchers, 1 / n)  # thin clients
        add("python", [helper], 1 / n)
        add("engine CLI", children(helper), 1 / n)
    elif mode == "in-process":
        add("python", launchers, 1 / n)
        add("python", [w for p in launchers for w in same_cmdline(p)], 1 / n)  # watchdogs
        add("engine CLI", [c for p in launchers for c in children(p)], 1 / n)
    else:
        add("python", launchers, 1 / n)  # the kernels themselves
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--counts", default="1,10")
    args = parser.parse_args(argv)
    root = isolated_jupyter_env()
    work = root / "work"
    install("bench-hosting-pool", "--no-workdir", "--pool", "1")
    install("bench-hosting")
    pooled = {"helper": "bench-hosting-pool", "in-process": "bench-hosting-pool", "native": NATIVE}
    plain = {"helper": "bench-hosting", "in-process": "bench-hosting", "native": NATIVE}
    # The helper's own start, once (every later start finds it running).
    began = time.perf_counter()
    _, km, kc = start("bench-hosting", work, {})
    print(f"first kernel, helper spawned: {time.perf_counter() - began:.3f} s", file=sys.stderr)
    stop(km, kc)
    single: dict[str, list[float]] = {m: [] for m in MODES}
    burst: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(args.repeat):
        for mode, env in MODES.items():
            if mode != "native":
                pool_full(pooled[mode])
            took, km, kc = start(pooled[mode], work, env)
            stop(km, kc)
            single[mode].append(took)
            print(f"[{rep + 1}] single {mode}: {took * 1000:.0f} ms", file=sys.stderr)
    for mode, env in MODES.items():
        if mode != "native":
            pool_full(pooled[mode])
        for _ in range(args.burst):
            took, km, kc = start(pooled[mode], work, env)
            stop(km, kc)
            burst[mode].append(took)
        print(f"burst {mode}: {statistics.median(burst[mode]) * 1000:.0f} ms", file=sys.stderr)
    print("\n| pooled start to first reply (median) | helper | in-process | native |")
    print("|---|---|---|---|")
    for name, data in (("single", single), (f"{args.burst} back to back", burst)):
        med = {m: statistics.median(v) for m, v in data.items()}
        cells = [f"{med[m] * 1000:.0f} ms ({med[m] / med['native']:.2f}x)" for m in MODES]
        print(f"| {name} | {' | '.join(cells)} |")
    print("\n| host memory per kernel, MiB | mode | python RSS | python PSS | CLI RSS | CLI PSS |")
    print("|---|---|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        for mode, env in MODES.items():
            running = []
            try:
                for _ in range(count):
                    _, km, kc = start(plain[mode], work, env)
                    running.append((km, kc))
                time.sleep(1.0)
                mem = per_kernel(mode, [km for km, _ in running])
            finally:
                for km, kc in running:
                    stop(km, kc)
            print(
                f"| {count} kernel(s) | {mode} | {mem.get('python RSS', 0):.1f} | "
                f"{mem.get('python PSS', 0):.1f} | {mem.get('engine CLI RSS', 0):.1f} | "
                f"{mem.get('engine CLI PSS', 0):.1f} |",
                flush=True,
            )
    from jupyter_docker_kernel import cli

    cli.main(["gc", "--pools", "bench-hosting-pool"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
