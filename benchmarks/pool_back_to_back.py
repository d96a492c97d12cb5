"""Pooled starts back to back, before vs after, in one interleaved run (issue 17, item 3).

    .venv/bin/python benchmarks/pool_back_to_back.py --base /path/to/other/checkout

nbgrader grades a class by starting a kernel, running a notebook, shutting it down and
starting the next: a pooled kernel's refills then compete with the next start. This
measures that pattern (start -> first kernel_info reply -> shutdown, COUNT times in a row,
from a full pool of 2) for the argv launcher and the provisioner, pooled, of two source
trees ("new": this checkout; "base": --base, a checkout with its own .venv), next to the
host's native ipykernel, and prints each as a ratio to native's start (medians and p90s).

Each tree runs in a worker process of its own Python (a Jupyter client imports only one
jupyter_docker_kernel, and the provisioner runs inside the client). The blocks (one kernel,
COUNT starts) are interleaved in rounds whose order rotates, so both trees see the same
machine load. The first start of each pooled block comes from a full pool with no refill
running: those are also reported on their own ("single").

The full benchmark suite is scripts/bench (benchmarks/run.py); this script measures only
this row, for the pool's refill work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
NATIVE = "python3"
POOL_SIZE = 2
#: A start that has not answered after this many seconds is left out.
START_LIMIT = 120


# -- the worker: one tree's measurements --------------------------------------------------------


def start_reply_stop(kernel: str, cwd: str) -> float:
    """Seconds from start_kernel to the first kernel_info reply; then a clean shutdown."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel)
    began = time.perf_counter()
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        asked: set[str] = set()
        while True:
            # Ask again every 0.2 s: a request sent before the kernel listens may be lost.
            asked.add(kc.kernel_info())
            try:
                reply = kc.get_shell_msg(timeout=0.2)
            except Exception:  # queue.Empty
                if not km.is_alive():
                    raise RuntimeError(f"{kernel} died while starting") from None
                if time.perf_counter() - began > START_LIMIT:
                    # A native kernel whose port was taken can hang instead of exiting.
                    raise RuntimeError(f"{kernel} did not answer in {START_LIMIT} s") from None
                continue
            if reply["parent_header"].get("msg_id") in asked:
                return time.perf_counter() - began
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        km.cleanup_resources()


def pool_key(kernel: str) -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    from jupyter_docker_kernel import kernelspec, pool

    spec = KernelSpecManager().get_kernel_spec(kernel)
    data = json.loads((Path(spec.resource_dir) / "kernel.json").read_text())
    return pool.pool_key(kernelspec.settings_from_kernel_json(data), os.getuid())


def pool_ready(kernel: str) -> int:
    """Warm containers of this kernelspec's pool whose claim socket is up."""
    from jupyter_docker_kernel import pool
    from jupyter_docker_kernel.rundir import runtime_base

    dirs = pool.pool_dirs(runtime_base(), pool_key(kernel))
    return sum(1 for d in dirs if (d / "rt" / "claim").exists())


def op_install(name: str, extra: list[str]) -> None:
    from jupyter_docker_kernel import cli

    argv = ["setup", "--name", name, "--user", "--replace", "--reset", *extra]
    if cli.main(argv) != 0:
        raise RuntimeError(f"setup {name} failed")


def op_fill(kernel: str, cwd: str) -> float:
    """Wait until the pool is full and its refills have settled; seconds waited."""
    began = time.monotonic()
    if pool_ready(kernel) == 0:
        start_reply_stop(kernel, cwd)  # a cold start, which spawns the refill
    while pool_ready(kernel) < POOL_SIZE:
        if time.monotonic() - began > 180:
            raise RuntimeError(f"the pool of {kernel} did not fill in 180 s")
        time.sleep(0.25)
    time.sleep(2)  # a refill just done: its container's kernel settles
    return time.monotonic() - began


def op_back_to_back(kernel: str, cwd: str, count: int) -> list[float]:
    """The start times; a start that fails is left out with a line on stderr (a port that
    another Jupyter client on this machine took between its choice and the kernel's bind
    kills a native kernel now and then), not the whole run."""
    times = []
    for _ in range(count):
        try:
            times.append(start_reply_stop(kernel, cwd))
        except RuntimeError as exc:
            print(f"left out one start of {kernel}: {exc}", file=sys.stderr)
    return times


def op_drain(kernels: list[str]) -> None:
    """Remove these kernelspecs' warm containers and dirs (not `gc`, which would also take
    what other users of this machine's runtime base have)."""
    from jupyter_docker_kernel import engine, pool
    from jupyter_docker_kernel.rundir import runtime_base

    api = engine.EngineApi()
    for kernel in kernels:
        key = pool_key(kernel)
        for item in api.containers({engine.LABEL_POOL: key}, all=True):
            if str(item["Names"][0]).lstrip("/").startswith(pool.POOL_NAME_PREFIX):
                api.remove(str(item["Id"]))
        for entry in pool.pool_dirs(runtime_base(), key):
            shutil.rmtree(entry, ignore_errors=True)


OPS: dict[str, Any] = {
    "install": op_install,
    "fill": op_fill,
    "back_to_back": op_back_to_back,
    "drain": op_drain,
}


def serve() -> int:
    """One JSON request per line on stdin, one reply per line on the original stdout."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what kernels and setup print goes to stderr
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply: dict[str, Any] = {"result": OPS[request["op"]](**request["kwargs"])}
        except Exception as exc:
            reply = {"error": repr(exc)}
        replies.write(json.dumps(reply) + "\n")
    return 0


# -- the driver ---------------------------------------------------------------------------------


class Worker:
    def __init__(self, name: str, python: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [python, str(HERE), "--worker"],
            cwd="/",  # no checkout in the cwd may answer for the tree's own package
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, op: str, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline() or '{"error": "worker died"}')
        if "error" in reply:
            raise RuntimeError(f"{op} in {self.name}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="the other checkout (with a .venv); required")
    parser.add_argument("--count", type=int, default=20, help="starts in a row (20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all blocks (2)")
    parser.add_argument("--out", help="write the samples as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return serve()
    if not args.base:
        parser.error("--base is required")
    root = Path(tempfile.mkdtemp(prefix="jdk-b2b-"))
    for var, sub in [
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("IPYTHONDIR", "ipython"),
    ]:
        os.environ[var] = str(root / sub)
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    work = root / "work"
    work.mkdir()
    work.chmod(0o777)
    trees = {
        "base": Worker("base", str(Path(args.base) / ".venv" / "bin" / "python")),
        "new": Worker("new", str(HERE.parent.parent / ".venv" / "bin" / "python")),
    }
    blocks: list[tuple[str, str, str]] = [("native", "new", NATIVE)]
    pooled = ["--copy-workdir", "--pool", str(POOL_SIZE)]
    for label, extra in [("argv", []), ("provisioner", ["--provisioner"])]:
        for tree in ("base", "new"):
            spec = f"b2b-{label}-{tree}"
            # The env value keeps the two trees' pools apart (it is part of the pool key).
            trees[tree].call(
                "install", name=spec, extra=[*pooled, *extra, "--env", f"B2B_TREE={tree}"]
            )
            blocks.append((f"{label}@{tree}", tree, spec))
    samples: dict[str, list[float]] = {label: [] for label, _, _ in blocks}
    singles: dict[str, list[float]] = {label: [] for label, _, _ in blocks}
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(blocks)
            for label, tree, kernel in blocks[shift:] + blocks[:shift]:
                worker = trees[tree]
                if kernel != NATIVE:
                    worker.call("fill", kernel=kernel, cwd=str(work))
                times = worker.call("back_to_back", kernel=kernel, cwd=str(work), count=args.count)
                if kernel != NATIVE:  # its last refills done before the next block
                    worker.call("fill", kernel=kernel, cwd=str(work))
                samples[label] += times
                singles[label].append(times[0])
                print(
                    f"round {round_ + 1} {label}: median {statistics.median(times):.3f} s",
                    file=sys.stderr,
                )
    finally:
        for tree, worker in trees.items():
            specs = [k for _, t, k in blocks if t == tree and k != NATIVE]
            try:
                worker.call("drain", kernels=specs)
            finally:
                worker.close()
        shutil.rmtree(root, ignore_errors=True)
    native = samples["native"]
    print(f"\n{args.count} starts back to back x {args.rounds} rounds (start -> reply -> stop)")
    heads = ("median s", "p90 s", "x native", "p90 x", "single x")
    print(f"{'kernel':20} " + " ".join(f"{h:>9}" for h in heads))
    for label, values in samples.items():
        print(
            f"{label:20} {statistics.median(values):9.3f} {p90(values):9.3f} "
            f"{statistics.median(values) / statistics.median(native):9.2f} "
            f"{p90(values) / p90(native):9.2f} "
            f"{statistics.median(singles[label]) / statistics.median(native):9.2f}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"samples": samples, "singles": singles}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
