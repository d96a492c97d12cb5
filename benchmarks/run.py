"""Native vs container kernel benchmarks, measured side by side in one run.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.run`). Every measurement is
taken for the host's own ipykernel ("native") and for our kernelspecs in the same run,
interleaved, so the table's ratios hold even on a shared, noisy machine. With
`--baseline PATH_OR_REV` every kernelspec is also measured from another source tree
(label `KERNEL@base`, see worker.py), interleaved with this tree's, and the table adds the
ratio new/base. Writes benchmarks/results/latest.json and a PNG of the start-time
distributions.

Each measurement is an operation in OPS, which worker.Tree.call runs in this process for
this tree and in the baseline's worker for the other; run() decides the order.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.worker import Baseline, OpError, Tree, prepare_baseline, serve

RESULTS = Path(__file__).parent / "results"
NATIVE = "python3"
#: The order of the table's kernels; the pooled ones only have start rows (and nbgrader).
LABELS = (
    "native",
    "container",
    "container-py",
    "pooled",
    "provisioner",
    "provisioner-pooled",
    "handover",
    "gvisor",
)
POOLED = ("pooled", "provisioner-pooled")
#: The pool size of every pooled kernelspec of a run.
POOL_SIZE = 2
#: Kernels of the plumbing-memory rows ("native": the kernel process itself, for scale;
#: "container": the argv launcher through the compiled thin client where `setup` finds a C
#: compiler; "container-py": the same through the Python thin client, thin.py).
MEMORY_KINDS = ("native", "container", "container-py", "pooled", "provisioner", "handover")
#: Kinds whose kernel.json env asks the resident helper to hand each kernel over to the
#: compiled client (issue 17, thin.HANDOVER_ENV; on by default since the flip) with a short
#: helper idle time, so that the row counts what stays while the kernels run: the compiled
#: clients, the helper gone HANDOVER_IDLE s after the last start (settle waits for it).
HANDOVER_KINDS = ("handover",)
HANDOVER_IDLE = 3
#: Specs whose kernel.json env switches the hand-over off (thin.HANDOVER_ENV=0) in the tree
#: under test: the plumbing-memory "container" row keeps measuring the helper-relayed path
#: (the default before the flip), next to "handover"; the start rows measure the default.
#: A baseline tree's specs keep that tree's own default (it may not know the switch).
RELAYED_LABELS = ("mem:container",)
#: Kinds whose kernelspec is written as if no C compiler were here: the Python thin client.
PYTHON_CLIENT_KINDS = ("container-py",)
#: Kernels of the back-to-back pooled-start row (native: what the ratios divide by).
BACK_TO_BACK_KINDS = ("native", "pooled", "provisioner-pooled")


def kind(label: str) -> str:
    """`pooled@base` -> `pooled`: the kernelspec's kind, whichever tree it comes from."""
    return label.partition("@")[0]


@dataclass
class Series:
    """Repeated samples of one measurement for one kernel."""

    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.samples.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p90(self) -> float:
        """The 90th percentile (inclusive: never beyond the largest sample)."""
        if len(self.samples) < 2:
            return self.median
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {
            "min": min(self.samples),
            "median": self.median,
            "p90": self.p90,
            "max": max(self.samples),
            "n": len(self.samples),
        }


@dataclass
class Row:
    """One table row: a metric, its unit, and a Series per kernel label."""

    metric: str
    unit: str
    higher_is_better: bool = False
    series: dict[str, Series] = field(default_factory=dict)

    def of(self, label: str) -> Series:
        return self.series.setdefault(label, Series())


def isolated_jupyter_env() -> Path:
    """Point Jupyter's paths at a temp dir so benchmarks never touch real kernelspecs."""
    root = Path(tempfile.mkdtemp(prefix="jdk-bench-"))
    os.environ["JUPYTER_DATA_DIR"] = str(root / "data")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(root / "runtime")
    os.environ["JUPYTER_CONFIG_DIR"] = str(root / "config")
    os.environ["IPYTHONDIR"] = str(root / "ipython")
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    # nbgrader runs `alembic` from PATH: the venv's bin must come first.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    work = root / "work"
    work.mkdir(parents=True)
    work.chmod(0o777)
    return root


def install(name: str, *extra: str) -> None:
    from jupyter_docker_kernel import cli

    # --reset: exactly these options, not those of an earlier run's spec of this name.
    code = cli.main(["setup", "--name", name, "--user", "--replace", "--reset", *extra])
    if code != 0:
        raise SystemExit(f"setup {name} failed ({code})")


# -- measurements ---------------------------------------------------------------------------


def start_and_first_reply(kernel: str, cwd: Path) -> tuple[float, Any, Any]:
    """start_kernel -> first kernel_info_reply, in seconds; returns the running kernel."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel)
    began = time.perf_counter()
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    try:
        kc.start_channels()
        # Ask again every half second (a request sent before the kernel listens may be
        # lost by a tcp front), and take the first reply to any of them.
        sent: set[str] = set()
        while True:
            sent.add(kc.kernel_info())
            try:
                reply = kc.get_shell_msg(timeout=0.5)
            except Exception:  # queue.Empty: not answered yet, ask again
                if not km.is_alive():
                    raise RuntimeError(f"kernel {kernel} died while starting") from None
                continue
            if reply["parent_header"].get("msg_id") in sent:
                break
        elapsed = time.perf_counter() - began
        # Let iopub settle so later measurements see only their own messages.
        kc.wait_for_ready(timeout=60)
    except BaseException:
        stop(km, kc)  # no kernel (or container) outlives a failed measurement
        raise
    return elapsed, km, kc


def stop(km: Any, kc: Any) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    km.cleanup_resources()


def round_trips(kc: Any, count: int) -> float:
    """Seconds per `pass` execute request -> idle, averaged over `count`."""
    began = time.perf_counter()
    for _ in range(count):
        kc.execute_interactive("pass", timeout=60)
    return (time.perf_counter() - began) / count


def stdout_throughput(kc: Any, megabytes: int) -> float:
    """MB/s of stdout received, printed in 1 MB chunks (flushed: one message each; unflushed,
    ipykernel may coalesce everything into one message larger than the relay's
    --max-message budget, which then stops the kernel, as it should)."""
    received = 0

    def hook(msg: dict[str, Any]) -> None:
        nonlocal received
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])

    code = (
        "import sys\nchunk = 'x' * (1 << 20)\n"
        f"for _ in range({megabytes}):\n    sys.stdout.write(chunk)\n    sys.stdout.flush()"
    )
    began = time.perf_counter()
    kc.execute_interactive(code, timeout=300, output_hook=hook)
    elapsed = time.perf_counter() - began
    if received < megabytes << 20:
        raise RuntimeError(f"received only {received} bytes of stdout")
    return megabytes / elapsed


def big_display(kc: Any, megabytes: int) -> float:
    """Seconds to receive one display_data of `megabytes` MB."""
    got: list[int] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "display_data":
            got.append(len(msg["content"]["data"]["text/plain"]))

    code = (
        "from IPython.display import display\n"
        f"display({{'text/plain': 'y' * ({megabytes} << 20)}}, raw=True)"
    )
    began = time.perf_counter()
    kc.execute_interactive(code, timeout=300, output_hook=hook)
    elapsed = time.perf_counter() - began
    if got != [megabytes << 20]:
        raise RuntimeError(f"expected one display of {megabytes} MB, got {got}")
    return elapsed


def notebook(kernel: str, cwd: Path, cells: int) -> float:
    """Seconds for nbclient to run a `cells`-cell notebook with a fresh kernel."""
    import nbformat
    from nbclient import NotebookClient

    # nbformat's constructors are untyped.
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [
        nbformat.v4.new_code_cell(f"x{i} = {i} * 2\nprint(x{i})")  # type: ignore[no-untyped-call]
        for i in range(cells)
    ]
    began = time.perf_counter()
    NotebookClient(
        nb, kernel_name=kernel, timeout=120, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return time.perf_counter() - began


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the engine CLI), in MiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# -- operations: what worker.Tree.call runs in a tree's own process ---------------------------
# Arguments and results are JSON values: they cross the pipe to the baseline's worker.


def op_install(
    name: str, extra: list[str], python_client: bool = False, handover: bool | None = None
) -> list[str]:
    """Write kernelspec `name` with this tree's `setup`; returns its argv, for the record.
    python_client: then strip the compiled thin client from its argv (thin_client.split),
    as `setup` writes it where no C compiler is found: the Python thin client runs.
    handover: True adds the hand-over switch (=1) and HANDOVER_IDLE to kernel.json's env
    (the compiled client passes both on to the helper it spawns), False switches it off
    (=0), None leaves the tree's default."""
    from jupyter_client.kernelspec import KernelSpecManager

    install(name, *extra)
    spec = KernelSpecManager().get_kernel_spec(name)
    if handover is not None:
        from jupyter_docker_kernel import helper, thin

        path = Path(spec.resource_dir) / "kernel.json"
        data = json.loads(path.read_text())
        switch = (
            {thin.HANDOVER_ENV: "1", helper.IDLE_ENV: str(HANDOVER_IDLE)}
            if handover
            else {thin.HANDOVER_ENV: "0"}
        )
        data["env"] = {**data.get("env", {}), **switch}
        path.write_text(json.dumps(data, indent=1))
        spec = KernelSpecManager().get_kernel_spec(name)
    if python_client:
        from jupyter_docker_kernel import thin_client

        path = Path(spec.resource_dir) / "kernel.json"
        data = json.loads(path.read_text())
        data["argv"] = thin_client.split([str(a) for a in data["argv"]])[1]
        path.write_text(json.dumps(data, indent=1))
        spec = KernelSpecManager().get_kernel_spec(name)
    return list(spec.argv)


def kernel_round(
    label: str,
    kernel: str,
    cwd: str,
    heavy: bool,
    gvisor_heavy: bool,
    round_trips_n: int,
    megabytes: int,
) -> dict[str, float]:
    """One start of `kernel` and, when `heavy`, the traffic rows; {row key: value}.

    `label` is the kind ("container", "pooled", ...): it decides what applies.
    """
    values: dict[str, float] = {}
    elapsed, km, kc = start_and_first_reply(kernel, Path(cwd))
    values["start"] = elapsed
    try:
        if label in ("container", "pooled", "gvisor"):  # a launcher process
            values["rss"] = rss_mib(km.provisioner.process.pid)
        if heavy and label not in POOLED:
            values["rtt"] = round_trips(kc, round_trips_n) * 1000
            if label != "gvisor" or gvisor_heavy:
                values["stdout"] = stdout_throughput(kc, megabytes)
                values["display"] = big_display(kc, 50)
    finally:
        stop(km, kc)
    if heavy and label not in POOLED:
        values["notebook"] = notebook(kernel, Path(cwd), 20)
    return values


def back_to_back(kernel: str, cwd: str, count: int) -> list[float]:
    """`count` starts in a row, as nbgrader grades a class: start -> first kernel_info
    reply -> shutdown -> the next start at once; the start times in seconds. A pooled
    kernel's refills then compete with the next start for the CPU."""
    times = []
    for _ in range(count):
        elapsed, km, kc = start_and_first_reply(kernel, Path(cwd))
        stop(km, kc)
        times.append(elapsed)
    return times


def plumbing(kernel: str, count: int, batch: int, cwd: str, settle: float) -> dict[str, Any]:
    from benchmarks import memory

    return memory.plumbing(kernel, count, batch, cwd, settle)


def _runtime_base() -> Path:
    """The runtime base of this tree's package, wherever that tree keeps the function."""
    for module in ("jupyter_docker_kernel.rundir", "jupyter_docker_kernel.launcher"):
        try:
            return Path(importlib.import_module(module).runtime_base())
        except (ImportError, AttributeError):
            continue
    raise RuntimeError("found no runtime_base() in jupyter_docker_kernel.rundir or .launcher")


def _pool_key(kernel: str) -> str:
    """The pool key of a pooled kernelspec (this tree's pool.pool_key of its settings)."""
    from jupyter_client.kernelspec import KernelSpecManager

    from jupyter_docker_kernel import kernelspec, pool

    spec_dir = Path(KernelSpecManager().get_kernel_spec(kernel).resource_dir)
    data = json.loads((spec_dir / "kernel.json").read_text())
    return pool.pool_key(kernelspec.settings_from_kernel_json(data), os.getuid())


def _pool_ready(kernel: str) -> int:
    """How many warm containers of a pooled kernelspec are ready to be claimed."""
    from jupyter_docker_kernel import pool

    dirs = pool.pool_dirs(_runtime_base(), _pool_key(kernel))
    return sum(1 for d in dirs if (d / "rt" / "claim").exists())


def warm_pools(kernels: list[str], cwd: str, timeout: float = 120) -> None:
    """Start each pooled kernel once (not measured) and wait until its pool is full, so
    the pooled rows measure claims, not the first cold start."""
    for kernel in kernels:
        try:
            _, km, kc = start_and_first_reply(kernel, Path(cwd))
            stop(km, kc)
        except Exception as exc:  # not measured: the pool fills from the next start, too
            print(f"warning: the warm-up start of {kernel} failed: {exc}", file=sys.stderr)
    deadline = time.monotonic() + timeout
    for kernel in kernels:
        try:
            while time.monotonic() < deadline:
                if _pool_ready(kernel) >= POOL_SIZE:
                    break
                time.sleep(0.5)
            else:
                print(
                    f"warning: the pool of {kernel} did not fill in {timeout:.0f} s",
                    file=sys.stderr,
                )
        except Exception as exc:  # another tree's pool internals: wait as long as a fill takes
            print(
                f"warning: cannot see the pool of {kernel} ({exc}); waiting 20 s", file=sys.stderr
            )
            time.sleep(20)


def autograde(kernel: str, root: str, students: int) -> float:
    """Seconds for `nbgrader autograde` of `students` submissions with one kernel."""
    from benchmarks import course

    course_dir = course.make(Path(root) / f"course-{kernel}", students)
    nbgrader = str(Path(sys.executable).with_name("nbgrader"))
    began = time.perf_counter()
    proc = subprocess.run(
        [nbgrader, "autograde", "ps1", "--force", f"--ExecutePreprocessor.kernel_name={kernel}"],
        cwd=course_dir,
        check=False,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "Error" in line]
        raise RuntimeError(f"nbgrader autograde exited {proc.returncode}: {errors[-3:]}")
    return time.perf_counter() - began


def end_helpers(timeout: float = 15.0) -> int:
    """SIGTERM this tree's resident helpers (memory.our_helpers; idle between rows) and
    wait for them to exit, so that the next kernel spawns a helper with its own env;
    returns how many there were."""
    import signal

    from benchmarks import memory

    pids = memory.our_helpers()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    return len(pids)


def drain_pools(kernels: list[str]) -> int:
    """Remove the waiting containers and dirs of these kernelspecs' pools; how many.

    Not `gc --pools`: that takes every pool of this user, also those of tests that other
    people run on the same machine at the same time.
    """
    from jupyter_docker_kernel import pool
    from jupyter_docker_kernel.engine import LABEL_POOL

    removed = 0
    for kernel in kernels:
        key = _pool_key(kernel)
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={LABEL_POOL}={key}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        for entry in pool.pool_dirs(_runtime_base(), key):
            shutil.rmtree(entry, ignore_errors=True)
        removed += len(ids)
    return removed


OPS: dict[str, Callable[..., Any]] = {
    "install": op_install,
    "kernel_round": kernel_round,
    "back_to_back": back_to_back,
    "plumbing": plumbing,
    "warm_pools": warm_pools,
    "autograde": autograde,
    "drain_pools": drain_pools,
    "end_helpers": end_helpers,
}


# -- the run --------------------------------------------------------------------------------


def kernelspecs(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(label, kernelspec name, setup options) of every spec a run measures; the
    plumbing-memory rows' own specs (smallest memory limit) have labels `mem:KIND`, the
    nbgrader row's (`--for-nbgrader`) `grade:KIND`."""
    pool = ["--copy-workdir", "--pool", str(POOL_SIZE)]
    specs: list[tuple[str, str, list[str]]] = [("container", "bench-docker", [])]
    if args.pool:
        specs.append(("pooled", "bench-pool", pool))
    specs.append(("provisioner", "bench-prov", ["--provisioner"]))
    if args.pool:
        # Its own pool (the env value changes the pool key): each pool serves one row.
        specs.append(("provisioner-pooled", "bench-prov-pool",
                      ["--provisioner", *pool, "--env", "BENCH_POOL=provisioner"]))  # fmt: skip
    if args.gvisor:
        specs.append(("gvisor", "bench-gvisor", ["--runtime", "runsc"]))
    if args.nbgrader:
        # A kernel that mounts the notebook's dir refuses nbgrader's autograded/ tree.
        specs.append(("grade:container", "bench-grade", ["--for-nbgrader"]))
        if args.pool:
            grade_pool = ["--for-nbgrader", "--provisioner", "--pool", str(POOL_SIZE)]
            specs.append(("grade:provisioner-pooled", "bench-grade-prov-pool", grade_pool))
    if args.concurrency:
        limit = ["--memory", args.memory_limit]
        specs.append(("mem:container", "bench-mem-docker", limit))
        specs.append(("mem:container-py", "bench-mem-docker-py", limit))
        if args.pool:
            specs.append(("mem:pooled", "bench-mem-pool", [*limit, *pool]))
        specs.append(("mem:provisioner", "bench-mem-prov", [*limit, "--provisioner"]))
        specs.append(("mem:handover", "bench-mem-handover", limit))
    return specs


@dataclass
class Plan:
    """Which kernelspec, in which tree, each table label runs; `memory` and `grading` hold
    the specs of the plumbing-memory and nbgrader rows (same labels, their own specs)."""

    main: dict[str, tuple[Tree, str]]
    memory: dict[str, tuple[Tree, str]]
    grading: dict[str, tuple[Tree, str]]
    argv: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def attempt(self, what: str, tree: Tree, op: str, **kwargs: Any) -> Any:
        """tree.call(op, ...), or None when the operation failed: then the sample is left
        out, and the run says so and goes on (a shared machine's kernels can collide)."""
        try:
            return tree.call(op, **kwargs)
        except OpError as exc:
            print(f"warning: {what} left out: {exc}", file=sys.stderr)
            self.failures.append(f"{what}: {exc}")
            return None

    def pooled(self, tree: Tree, group: dict[str, tuple[Tree, str]] | None = None) -> list[str]:
        """The pooled kernelspecs of one tree (of `group`, else of both groups)."""
        groups = [group] if group is not None else [self.main, self.memory, self.grading]
        return [
            spec
            for g in groups
            for label, (t, spec) in g.items()
            if t is tree and kind(label) in POOLED
        ]


def install_all(args: argparse.Namespace, trees: list[Tree]) -> Plan:
    """Write every spec with every tree's own `setup`; the baseline's get a `-base` suffix.

    Each spec gets its tree's name in its env: the two trees' pools must not serve each
    other (the env is part of the pool key), as they would for identical settings.
    """
    native = {"native": (trees[0], NATIVE)}
    plan = Plan(main=dict(native), memory=dict(native), grading=dict(native))
    for label, name, extra in kernelspecs(args):
        group, _, kind_ = label.rpartition(":")
        for tree in trees:
            handover = True if kind_ in HANDOVER_KINDS else None
            if label in RELAYED_LABELS and not tree.suffix:
                handover = False
            if handover and tree.suffix:
                continue  # the tree under test only: a baseline may have no hand-over
            spec = f"{name}-{tree.name}" if tree.suffix else name
            plan.argv[spec] = tree.call(
                "install",
                name=spec,
                extra=[*extra, "--env", f"BENCH_TREE={tree.name}"],
                python_client=kind_ in PYTHON_CLIENT_KINDS,
                **({} if handover is None else {"handover": handover}),
            )
            groups = {"": plan.main, "mem": plan.memory, "grade": plan.grading}
            groups[group][kind_ + tree.suffix] = (tree, spec)
    return plan


def kernel_rounds(args: argparse.Namespace, plan: Plan, rows: dict[str, Row], work: str) -> None:
    """The start and traffic rows: each repetition starts every kernel once, in turn."""
    for tree in {tree for tree, _ in plan.main.values()}:
        if pools := plan.pooled(tree, plan.main):
            plan.attempt("warm-up", tree, "warm_pools", kernels=pools, cwd=work)
    for rep in range(args.repeat):
        for label, (tree, kernel) in plan.main.items():
            print(f"[{rep + 1}/{args.repeat}] {label}: start", file=sys.stderr)
            values = plan.attempt(
                f"{label} start {rep + 1}",
                tree,
                "kernel_round",
                label=kind(label),
                kernel=kernel,
                cwd=work,
                heavy=rep < args.heavy_repeat,
                gvisor_heavy=args.gvisor_heavy,
                round_trips_n=args.round_trips,
                megabytes=args.megabytes,
            )
            for key, value in (values or {}).items():
                rows[key].of(label).add(value)


def back_to_back_rows(
    args: argparse.Namespace, plan: Plan, rows: dict[str, Row], work: str
) -> None:
    """The back-to-back row: per kernel, --back-to-back starts in a row, from a full pool."""
    kernels = {label: tk for label, tk in plan.main.items() if kind(label) in BACK_TO_BACK_KINDS}
    if not args.back_to_back or len(kernels) < 2:
        return
    row = rows["b2b"] = Row(f"start, {args.back_to_back} back to back (start, reply, stop)", "s")
    for label, (tree, kernel) in kernels.items():
        print(f"{label}: {args.back_to_back} starts back to back", file=sys.stderr)
        if kind(label) in POOLED:  # full, and no refill of another row still running
            plan.attempt(f"{label} warm-up", tree, "warm_pools", kernels=[kernel], cwd=work)
        times = plan.attempt(
            f"{label} back to back", tree, "back_to_back", kernel=kernel, cwd=work,
            count=args.back_to_back,
        )  # fmt: skip
        for value in times or []:
            row.of(label).add(value)


def plumbing_rows(
    args: argparse.Namespace, plan: Plan, rows: dict[str, Row], work: str
) -> dict[str, Any]:
    """The plumbing-memory rows, per --concurrency count; returns the processes counted."""
    counted: dict[str, Any] = {}
    for count in args.concurrency:
        rss = rows[f"rss{count}"] = Row(f"host plumbing per kernel, {count} kernels: RSS", "MiB")
        pss = rows[f"pss{count}"] = Row(f"host plumbing per kernel, {count} kernels: PSS", "MiB")
        procs = rows[f"procs{count}"] = Row(f"host processes per kernel, {count} kernels", "")
        client = rows[f"client{count}"] = Row(
            f"client RSS growth per kernel, {count} kernels", "MiB"
        )
        shim_rss = rows[f"shim_rss{count}"] = Row(
            f"engine shim per kernel (not ours), {count} kernels: RSS", "MiB"
        )
        shim_pss = rows[f"shim_pss{count}"] = Row(
            f"engine shim per kernel (not ours), {count} kernels: PSS", "MiB"
        )
        for label, (tree, kernel) in plan.memory.items():
            print(f"{label}: {count} kernels at once", file=sys.stderr)
            if kind(label) in POOLED:  # a full pool, as on a server that has run a while
                plan.attempt(f"{label} warm-up", tree, "warm_pools", kernels=[kernel], cwd=work)
            settle = args.settle
            if kind(label) in HANDOVER_KINDS:  # a helper of its env, gone before counting
                plan.attempt(f"{label} helpers", tree, "end_helpers")
                settle = max(settle, HANDOVER_IDLE + 3.0)
            got = plan.attempt(
                f"{label} at {count} kernels", tree, "plumbing", kernel=kernel, count=count,
                batch=args.batch, cwd=work, settle=settle,
            )  # fmt: skip
            if got is None:
                continue
            rss.of(label).add(got["rss"])
            pss.of(label).add(got["pss"])
            procs.of(label).add(got["processes"])
            client.of(label).add(got["client_rss"])
            if kind(label) != "native":  # a native kernel has no container, no shim
                shim_rss.of(label).add(got["engine_rss"])
                shim_pss.of(label).add(got["engine_pss"])
            counted[f"{label} x{count}"] = {
                "names": got["names"],
                **{k: round(got[k], 2) for k in ("helper_rss", "helper_pss") if k in got},
            }
    return counted


def nbgrader_rows(args: argparse.Namespace, plan: Plan, rows: dict[str, Row], root: Path) -> None:
    """The nbgrader row: one `autograde` of --nbgrader submissions per grading spec."""
    work = str(root / "work")
    if not args.nbgrader:
        return
    row = rows["nbgrader"] = Row(f"nbgrader autograde, {args.nbgrader} submissions", "s")
    for label, (tree, kernel) in plan.grading.items():
        if kind(label) in POOLED:
            plan.attempt(f"{label} warm-up", tree, "warm_pools", kernels=[kernel], cwd=work)
        took = plan.attempt(
            f"{label} nbgrader", tree, "autograde", kernel=kernel, root=str(root),
            students=args.nbgrader,
        )  # fmt: skip
        if took is not None:
            row.of(label).add(took)


def measure(args: argparse.Namespace, trees: list[Tree], root: Path) -> dict[str, Any]:
    """Install every spec in every tree, then take every row's samples, interleaved: each
    step runs for every kernel of every tree before the next step. Returns the rows and
    details for the JSON (each spec's argv, the processes the memory rows counted)."""
    work = str(root / "work")
    plan = install_all(args, trees)
    rows = {
        "start": Row("start -> first kernel_info reply", "s"),
        "rtt": Row(f"execute `pass` round trip (x{args.round_trips})", "ms"),
        "stdout": Row(f"stdout throughput ({args.megabytes} MB in 1 MB chunks)", "MB/s", True),
        "display": Row("one 50 MB display_data", "s"),
        "notebook": Row("20-cell notebook, fresh kernel (nbclient)", "s"),
        "rss": Row("launcher + engine CLI memory (RSS)", "MiB"),
    }
    took: dict[str, float] = {}  # seconds per phase: what to leave out of a shorter run

    @contextlib.contextmanager
    def phase(name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        took[name] = round(time.monotonic() - began, 1)
        print(f"bench: {name} took {took[name]:.0f} s", file=sys.stderr)

    counted: dict[str, Any] = {}
    try:
        with phase("starts and traffic"):
            kernel_rounds(args, plan, rows, work)
        with phase("back to back"):
            back_to_back_rows(args, plan, rows, work)
        with phase("plumbing memory"):
            counted = plumbing_rows(args, plan, rows, work)
        with phase("nbgrader"):
            nbgrader_rows(args, plan, rows, root)
    finally:
        for tree in trees:  # the pools' waiting containers, not needed any more
            if pools := plan.pooled(tree):
                with contextlib.suppress(Exception):
                    tree.call("drain_pools", kernels=pools)
    details = {
        "kernelspec_argv": plan.argv,
        "plumbing": counted,
        "seconds": took,
        "failures": plan.failures,
    }
    return {"rows": rows, "details": details}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import memory

    root = isolated_jupyter_env()
    # Marks the host processes each tree's kernels add (memory.py); a tag per tree, so
    # that neither tree's client or plumbing is counted as the other's.
    tag = f"{os.getpid()}-{os.urandom(3).hex()}"
    os.environ[memory.TAG_VAR] = f"{tag}-new"
    trees = [Tree("new")]
    baseline: Baseline | None = None
    try:
        if args.baseline:
            baseline = prepare_baseline(args.baseline, args.baseline_python)
            print(f"baseline: {baseline.source} at {baseline.commit[:12]}", file=sys.stderr)
            # Its own kernelspec dir: each tree's `setup` rewrites the specs it finds whose
            # compiled thin client is not its own (kernelspec.upgrade_all), which made the
            # other tree's kernels run through its client and its helper.
            env = {memory.TAG_VAR: f"{tag}-base", "JUPYTER_DATA_DIR": str(root / "data-base")}
            trees.append(Tree.spawn("base", baseline.python, env))
        measured = measure(args, trees, root)
    finally:
        for tree in trees:
            tree.close()
        if baseline is not None:
            baseline.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    rows: dict[str, Row] = measured["rows"]
    return {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "baseline": (
            {"source": args.baseline, "commit": baseline.commit, "python": baseline.python}
            if baseline is not None
            else None
        ),
        "rows": {
            key: {
                "metric": row.metric,
                "unit": row.unit,
                "higher_is_better": row.higher_is_better,
                "series": {
                    label: s.summary() | {"samples": s.samples} for label, s in row.series.items()
                },
            }
            for key, row in rows.items()
        },
        "details": measured["details"],
    }


def machine() -> dict[str, Any]:
    docker = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "docker": docker,
        "ipykernel_native": version("ipykernel"),
    }


def ordered(labels: Iterable[str]) -> list[str]:
    """The table's order: LABELS, each followed by its baseline (`container@base`)."""
    present = set(labels)
    return [
        label
        for base in LABELS
        for label in sorted((x for x in present if kind(x) == base), key=len)
    ]


def table(result: dict[str, Any]) -> str:
    """The results as a text table: a line per metric and kernel, min/median/p90/max, the
    median's ratio to the baseline tree's (new/base, with --baseline) and to native (for
    start, also the difference in seconds; for the back-to-back row, also p90 to p90);
    for the launcher's container, also its ratio to the provisioner's: the launcher
    process's cost."""
    lines = [
        f"{'metric':50} {'kernel':23} {'min':>7} {'median':>7} {'p90':>7} {'max':>7}"
        f" {'new/base':>8}  vs native",
        "-" * 124,
    ]
    for key, row in result["rows"].items():
        series = row["series"]
        native = series.get("native")
        first = True
        for label in ordered(series):
            s = series[label]
            if not s:
                continue
            versus = ""
            if native and kind(label) != "native":
                versus = f"x{s['median'] / native['median']:.2f}"
                if key == "start":
                    versus += f" ({s['median'] - native['median']:+.2f} s)"
                if key == "b2b":
                    versus += f" (p90 x{s['p90'] / native['p90']:.2f})"
            direct = series.get("provisioner")
            if label == "container" and direct and key in ("rtt", "stdout", "display", "notebook"):
                # Same container, same kernel: a launcher process relays, vs the
                # provisioner's relay in the client's own process.
                versus += f"   relay: x{s['median'] / direct['median']:.2f} vs provisioner"
            base = series.get(f"{label}@base")
            vs_base = f"x{s['median'] / base['median']:.2f}" if base and base["median"] else ""
            metric = f"{row['metric']} ({row['unit']})" if row["unit"] else row["metric"]
            lines.append(
                f"{metric if first else '':50} {label:23} {s['min']:7.3g} {s['median']:7.3g}"
                f" {s.get('p90', s['median']):7.3g} {s['max']:7.3g} {vs_base:>8}  {versus}"
            )
            first = False
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Start-time distributions per kernel, as a strip + box plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["rows"]["start"]["series"]
    labels = ordered(series)
    if not labels:
        return  # a run of other rows only (--repeat 0)
    fig, ax = plt.subplots(figsize=(7, 1.6 + 0.35 * len(labels)))
    ax.boxplot([series[label]["samples"] for label in labels], orientation="horizontal")
    for i, label in enumerate(labels, start=1):
        ax.scatter(series[label]["samples"], [i] * len(series[label]["samples"]), s=12, alpha=0.6)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xlabel("start_kernel -> first kernel_info reply (s)")
    ax.set_title(f"kernel start, {result['when']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def counts(text: str) -> list[int]:
    """`1,10,50` -> [1, 10, 50]; `0` or `` -> [] (no plumbing-memory rows)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,10,50, got {text!r}") from None
    return [v for v in values if v > 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10, help="kernel starts per kernel")
    parser.add_argument("--heavy-repeat", type=int, default=3, help="of which with throughput runs")
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--nbgrader", type=int, default=10, help="submissions (0: skip)")
    parser.add_argument("--no-gvisor", dest="gvisor", action="store_false")
    parser.add_argument("--no-pool", dest="pool", action="store_false")
    parser.add_argument("--gvisor-heavy", action="store_true", help="throughput runs on gVisor too")
    parser.add_argument(
        "--baseline",
        metavar="PATH_OR_REV",
        help="also measure every kernelspec from this checkout or git revision (KERNEL@base), "
        "interleaved with this tree's, and print the ratio new/base",
    )
    parser.add_argument(
        "--baseline-python",
        metavar="PYTHON",
        help="the baseline's Python (default: its .venv, made with its scripts/dev-env)",
    )
    parser.add_argument(
        "--concurrency",
        type=counts,
        default=None,
        help="kernel counts of the plumbing-memory rows (default 1,10,50; --quick 1,5; 0: skip)",
    )
    parser.add_argument("--batch", type=int, default=5, help="kernels started at once for them")
    parser.add_argument(
        "--memory-limit", default="128m", help="memory limit of their container kernels"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds between the last start and counting"
    )
    parser.add_argument(
        "--back-to-back",
        type=int,
        default=None,
        help="starts in a row of the back-to-back row (default 20; --quick 10; 0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats")
    parser.add_argument(
        "--nodes",
        action="store_true",
        help="also a kernel on a remote node vs here (benchmarks/nodes.py: makes a node on "
        "this machine, as root); never without this flag",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # the baseline tree's process (worker.py)
        return serve()
    if args.quick:
        args.repeat, args.heavy_repeat, args.round_trips, args.megabytes = 2, 1, 100, 10
        args.nbgrader = 2
    if args.concurrency is None:
        args.concurrency = [1, 5] if args.quick else [1, 10, 50]
    if args.back_to_back is None:
        args.back_to_back = 10 if args.quick else 20
    result = run(args)
    if args.nodes:  # after the usual rows, so that a node never runs beside them
        from benchmarks import nodes

        result["nodes"] = nodes.measure(args.heavy_repeat, args.round_trips, args.megabytes)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"{stamp}.json", "latest.json"):
        (RESULTS / name).write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "start-times.png")
    print(f"machine: {result['machine']}")
    if result["baseline"]:
        base = result["baseline"]
        print(f"baseline: {base['source']} at {base['commit'][:12]} (KERNEL@base rows)")
    print(table(result))
    if "nodes" in result:
        print(
            f"node vs local: {json.dumps(result['nodes'].get('node_over_local', result['nodes']))}"
        )
    if failures := result["details"]["failures"]:
        print(f"{len(failures)} sample(s) left out (see the warnings above):")
        for failure in failures:
            print(f"  {failure}")
    print(f"results: {RESULTS / 'latest.json'}, plot: {RESULTS / 'start-times.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
