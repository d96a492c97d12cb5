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
import json
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


def run_variant(command: str, kernel: str, root: Path) -> float:
    """Seconds for one grading of the class at root."""
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
    args = parser.parse_args(argv)
    env = isolated_jupyter_env()
    install(GRADER, "--for-nbgrader")
    install(GRADER_POOL, "--for-nbgrader", "--provisioner", "--pool", str(POOL_SIZE))
    template = course.make(env / "template", args.students)
    samples: dict[str, list[float]] = {label: [] for label in VARIANTS}
    labels = list(VARIANTS)
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
                seconds = run_variant(command, kernel, root)
                samples[label].append(seconds)
                print(f"round {number + 1}: {label}: {seconds:.1f} s", flush=True)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        drain_pools([GRADER_POOL])
    base = statistics.median(samples[BASE])
    print(f"\n{args.students} submissions, {args.rounds} round(s); ratio to {BASE}")
    print(f"{'variant':32} {'median s':>9} {'ratio':>6}")
    for label in labels:
        median = statistics.median(samples[label])
        print(f"{label:32} {median:9.1f} {median / base:6.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "grade.json").write_text(
        json.dumps({"students": args.students, "rounds": args.rounds, "seconds": samples}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
