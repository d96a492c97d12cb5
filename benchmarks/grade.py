"""Wall time of grading one class: `nbgrader autograde` (native kernel, our kernel) against
`jupyter-docker-kernel grade --jobs 1/2`, with and without the warm pool, interleaved.

Run with `scripts/bench grade [--students N] [--rounds R]` (or `.venv/bin/python -m
benchmarks.grade`). Each round grades a fresh copy of the same class (benchmarks/course.py:
honest submissions; no memory or fork bombs, which the native kernel would let loose on
the host) once per variant, the variants' order rotated from round to round, so that the
ratios hold on a shared machine. Prints a table (median seconds, ratio to sequential
nbgrader with the native kernel) and writes benchmarks/results/grade.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import course
from benchmarks.run import RESULTS, drain_pools, install, isolated_jupyter_env, warm_pools

NATIVE = "python3"
GRADER = "bench-grade"
GRADER_POOL = "bench-grade-pool"
#: Two per job of the widest `grade --jobs`: claims come twice as fast as one at a time.
POOL_SIZE = 4
#: label -> (command, kernel): "nbgrader" runs `nbgrader autograde`, "grade:N" `grade --jobs N`.
VARIANTS = {
    "nbgrader, native kernel": ("nbgrader", NATIVE),
    "nbgrader, our kernel": ("nbgrader", GRADER),
    "grade --jobs 1": ("grade:1", GRADER),
    "grade --jobs 2": ("grade:2", GRADER),
    "nbgrader, our kernel, pool": ("nbgrader", GRADER_POOL),
    "grade --jobs 1, pool": ("grade:1", GRADER_POOL),
    "grade --jobs 2, pool": ("grade:2", GRADER_POOL),
}
BASE = "nbgrader, native kernel"
#: Our cgroup (v1 cpuacct) for the CPU rows: this process, its children, our containers.
CGROUP = "jdk-bench-grade"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
PR_SET_CHILD_SUBREAPER = 36
ENGINE_DAEMONS = ("dockerd", "containerd")


class CpuMeter:
    """CPU seconds (user+sys) of one grading run, its kernel containers included.

    As root on cgroup v1: a cpuacct cgroup of our own, joined by this process (so every
    process it starts: nbgrader, grade, its workers and refills, native kernels) and named
    as the containers' `--cgroup-parent` (docker_args()). Elsewhere: our process tree only
    (RUSAGE_CHILDREN; as a child subreaper, refills that outlive their worker are reaped
    and counted here too), containers not counted. `kind` says which."""

    def __init__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.group: Path | None = None
        if os.geteuid() == 0 and (CPUACCT / "cpuacct.usage").exists():
            try:
                for hierarchy in ("cpuacct", "cpu"):  # docker creates the parent in each
                    (CPUACCT.parent / hierarchy / CGROUP).mkdir(exist_ok=True)
                (CPUACCT / CGROUP / "cgroup.procs").write_text(str(os.getpid()))
                self.group = CPUACCT / CGROUP
            except OSError:
                self.group = None
        self.kind = "with containers" if self.group else "process tree only"

    def docker_args(self) -> list[str]:
        return [f"--docker-arg=--cgroup-parent=/{CGROUP}"] if self.group else []

    def ours(self) -> float:
        if self.group is not None:
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def engine() -> float:
        """The engine daemons' CPU seconds so far (shared with every user of the engine):
        the oldest of each name, the host's own (test nodes run engines of their own)."""
        total = 0.0
        for name in ENGINE_DAEMONS:
            with contextlib.suppress(OSError, ValueError):
                pids = subprocess.run(["pgrep", "-o", "-x", name], capture_output=True, text=True)
                for pid in pids.stdout.split():
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def reap(self, timeout: float = 30) -> None:
        """Wait for what the run left (refills settling): counted once reaped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.1)
            except ChildProcessError:
                return

    def close(self) -> None:
        """Leave our cgroup and remove it (once our containers are gone)."""
        if self.group is None:
            return
        # Us, and what outlives the run (a resident helper a grade run started).
        with contextlib.suppress(OSError):
            for pid in [str(os.getpid()), *(self.group / "cgroup.procs").read_text().split()]:
                with contextlib.suppress(OSError):
                    (CPUACCT / "cgroup.procs").write_text(pid)
        for hierarchy in ("cpuacct", "cpu"):
            group = CPUACCT.parent / hierarchy / CGROUP
            with contextlib.suppress(OSError):
                for child in group.iterdir():
                    if child.is_dir():
                        child.rmdir()  # docker's leftover parent dir, empty by now
                group.rmdir()


def run_variant(command: str, kernel: str, root: Path) -> float:
    """Seconds for one grading of the class at root (wall)."""
    option = f"--ExecutePreprocessor.kernel_name={kernel}"
    bindir = Path(sys.executable).parent
    if command == "nbgrader":
        argv = [str(bindir / "nbgrader"), "autograde", "ps1", "--force", option]
    else:
        jobs = command.partition(":")[2]
        argv = [str(bindir / "jupyter-docker-kernel"), "grade", "ps1", "--force", "--jobs", jobs,
                option]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        # Kept (the class was graded, one submission failed), and said: on a loaded machine
        # a kernel may miss nbclient's 60 s start timeout.
        errors = [line for line in proc.stderr.splitlines() if "Error" in line][-2:]
        print(f"warning: {argv[0]} exited {proc.returncode}: {errors}", file=sys.stderr)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--only", action="append", metavar="LABEL", help="measure only this variant (repeatable; "
        f"the ratio needs {BASE!r}): {', '.join(VARIANTS)}"
    )  # fmt: skip
    args = parser.parse_args(argv)
    wanted = [label for label in VARIANTS if not args.only or label in args.only]
    if BASE not in wanted or len(wanted) != len(set(args.only or VARIANTS)):
        parser.error(f"--only takes labels among: {', '.join(VARIANTS)}, {BASE!r} included")
    env = isolated_jupyter_env()
    meter = CpuMeter()
    install(GRADER, "--for-nbgrader", *meter.docker_args())
    install(
        GRADER_POOL, "--for-nbgrader", "--provisioner", "--pool", str(POOL_SIZE),
        *meter.docker_args(),
    )  # fmt: skip
    template = course.make(env / "template", args.students)
    samples: dict[str, list[float]] = {label: [] for label in wanted}
    cpu: dict[str, list[float]] = {label: [] for label in wanted}
    engine: dict[str, list[float]] = {label: [] for label in wanted}
    loads: dict[str, list[tuple[float, float]]] = {label: [] for label in wanted}
    labels = wanted
    try:
        for number in range(args.rounds):
            order = labels[number % len(labels) :] + labels[: number % len(labels)]
            for label in order:
                command, kernel = VARIANTS[label]
                root = env / f"round{number}-{labels.index(label)}"
                shutil.copytree(template, root, symlinks=True)
                config = root / "nbgrader_config.py"
                config.write_text(config.read_text().replace(str(template), str(root)))
                if kernel == GRADER_POOL:
                    warm_pools([GRADER_POOL], str(env / "work"))
                load = os.getloadavg()[0]
                ours, daemons = meter.ours(), meter.engine()
                seconds = run_variant(command, kernel, root)
                meter.reap()
                samples[label].append(seconds)
                cpu[label].append(meter.ours() - ours)
                engine[label].append(meter.engine() - daemons)
                loads[label].append((load, os.getloadavg()[0]))
                print(
                    f"round {number + 1}: {label}: {seconds:.1f} s, CPU {cpu[label][-1]:.1f} s "
                    f"(+ engine {engine[label][-1]:.1f} s), load {load:.1f} -> "
                    f"{loads[label][-1][1]:.1f}",
                    flush=True,
                )
                shutil.rmtree(root, ignore_errors=True)
    finally:
        drain_pools([GRADER_POOL])
        meter.close()
    base = statistics.median(samples[BASE])
    print(f"\n{args.students} submissions, {args.rounds} round(s); ratio to {BASE}; CPU: "
          f"{meter.kind}, engine daemons apart (shared)")  # fmt: skip
    print(f"{'variant':32} {'median s':>9} {'ratio':>6} {'CPU s':>6} {'engine':>6} {'load':>10}")
    for label in labels:
        median = statistics.median(samples[label])
        low = min(a for a, _ in loads[label])
        high = max(b for _, b in loads[label])
        print(
            f"{label:32} {median:9.1f} {median / base:6.2f} {statistics.median(cpu[label]):6.1f}"
            f" {statistics.median(engine[label]):6.1f} {low:4.1f}-{high:4.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    data = {"students": args.students, "rounds": args.rounds, "seconds": samples, "cpu": cpu,
            "cpu_kind": meter.kind, "engine_cpu": engine, "load": loads}  # fmt: skip
    (RESULTS / "grade.json").write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
