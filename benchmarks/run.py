"""Native vs container kernel benchmarks, measured side by side in one run.

Run with `scripts/bench` (or `.venv/bin/python -m benchmarks.run`). Every measurement is
taken for the host's own ipykernel ("native") and for our kernelspecs in the same run,
interleaved, so the table's ratios hold even on a shared, noisy machine. Writes
benchmarks/results/latest.json and a PNG of the start-time distributions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
NATIVE = "python3"
#: The order of the table's kernels; the pooled ones only have start rows (and nbgrader).
LABELS = ("native", "container", "pooled", "provisioner", "provisioner-pooled", "gvisor")
POOLED = ("pooled", "provisioner-pooled")


@dataclass
class Series:
    """Repeated samples of one measurement for one kernel."""

    samples: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.samples.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {
            "min": min(self.samples),
            "median": self.median,
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
    kc.start_channels()
    # Ask again every half second (a request sent before the kernel listens may be lost
    # by a tcp front), and take the first reply to any of them.
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


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = isolated_jupyter_env()
    work = root / "work"
    kernels = {"native": NATIVE, "container": "bench-docker"}
    install("bench-docker")
    if args.pool:
        install("bench-pool", "--copy-workdir", "--pool", "2")
        kernels["pooled"] = "bench-pool"
    install("bench-prov", "--provisioner")
    kernels["provisioner"] = "bench-prov"
    if args.pool:
        # Its own pool (the env value changes the pool key): each pool serves one row.
        install("bench-prov-pool", "--provisioner", "--copy-workdir", "--pool", "2", "--env",
                "BENCH_POOL=provisioner")  # fmt: skip
        kernels["provisioner-pooled"] = "bench-prov-pool"
    if args.gvisor:
        install("bench-gvisor", "--runtime", "runsc")
        kernels["gvisor"] = "bench-gvisor"
    rows = {
        "start": Row("start -> first kernel_info reply", "s"),
        "rtt": Row(f"execute `pass` round trip (x{args.round_trips})", "ms"),
        "stdout": Row(f"stdout throughput ({args.megabytes} MB in 1 MB chunks)", "MB/s", True),
        "display": Row("one 50 MB display_data", "s"),
        "notebook": Row("20-cell notebook, fresh kernel (nbclient)", "s"),
        "rss": Row("launcher + engine CLI memory (RSS)", "MiB"),
    }
    pooled = [kernel for label, kernel in kernels.items() if label in POOLED]
    if pooled:
        warm_pools(pooled, work)
    for rep in range(args.repeat):
        for label, kernel in kernels.items():
            print(f"[{rep + 1}/{args.repeat}] {label}: start", file=sys.stderr)
            elapsed, km, kc = start_and_first_reply(kernel, work)
            rows["start"].of(label).add(elapsed)
            try:
                if label in ("container", "pooled", "gvisor"):  # a launcher process
                    rows["rss"].of(label).add(rss_mib(km.provisioner.process.pid))
                if rep < args.heavy_repeat and label not in POOLED:
                    rows["rtt"].of(label).add(round_trips(kc, args.round_trips) * 1000)
                    if label != "gvisor" or args.gvisor_heavy:
                        rows["stdout"].of(label).add(stdout_throughput(kc, args.megabytes))
                        rows["display"].of(label).add(big_display(kc, 50))
            finally:
                stop(km, kc)
            if rep < args.heavy_repeat and label not in POOLED:
                rows["notebook"].of(label).add(notebook(kernel, work, 20))
    if args.nbgrader:
        rows["nbgrader"] = Row(f"nbgrader autograde, {args.nbgrader} submissions", "s")
        for label, kernel in kernels.items():
            if label in ("gvisor", "pooled", "provisioner"):
                continue  # the launcher's pool and a cold provisioner add little here
            rows["nbgrader"].of(label).add(autograde(kernel, root, args.nbgrader))
    if args.pool:
        from jupyter_docker_kernel import cli

        cli.main(["gc", "--pools"])  # the pool's waiting containers, not needed any more
    shutil.rmtree(root, ignore_errors=True)
    return {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
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
    }


def warm_pools(kernels: list[str], cwd: Path, timeout: float = 120) -> None:
    """Start each pooled kernel once (not measured) and wait until its pool is full, so
    the pooled rows measure claims, not the first cold start."""
    from jupyter_client.kernelspec import KernelSpecManager

    from jupyter_docker_kernel import kernelspec, pool
    from jupyter_docker_kernel.launcher import runtime_base

    for kernel in kernels:
        _, km, kc = start_and_first_reply(kernel, cwd)
        stop(km, kc)
    deadline = time.monotonic() + timeout
    for kernel in kernels:
        spec = KernelSpecManager().get_kernel_spec(kernel)
        settings = kernelspec.settings_from_kernel_json(
            {"argv": spec.argv, "metadata": spec.metadata}
        )
        key = pool.pool_key(settings, os.getuid())
        while time.monotonic() < deadline:
            ready = [
                d for d in pool.pool_dirs(runtime_base(), key) if (d / "rt" / "claim").exists()
            ]
            if len(ready) >= settings.pool:
                break
            time.sleep(0.5)
        else:
            print(f"warning: the pool of {kernel} did not fill in {timeout:.0f} s", file=sys.stderr)


def autograde(kernel: str, root: Path, students: int) -> float:
    """Seconds for `nbgrader autograde` of `students` submissions with one kernel."""
    from benchmarks import course

    course_dir = course.make(root / f"course-{kernel}", students)
    nbgrader = str(Path(sys.executable).with_name("nbgrader"))
    began = time.perf_counter()
    subprocess.run(
        [nbgrader, "autograde", "ps1", "--force", f"--ExecutePreprocessor.kernel_name={kernel}"],
        cwd=course_dir,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - began


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


def table(result: dict[str, Any]) -> str:
    """The results as a text table: a line per metric and kernel, min/median/max and the
    median's ratio to native (for start, also the difference in seconds); for the
    launcher's container, also its ratio to the provisioner's: the launcher process's cost."""
    lines = [
        f"{'metric':46} {'kernel':18} {'min':>8} {'median':>8} {'max':>8}  vs native",
        "-" * 104,
    ]
    for key, row in result["rows"].items():
        native = row["series"].get("native")
        first = True
        for label in LABELS:
            s = row["series"].get(label)
            if not s:
                continue
            versus = ""
            if native and label != "native":
                versus = f"x{s['median'] / native['median']:.2f}"
                if key == "start":
                    versus += f" ({s['median'] - native['median']:+.2f} s)"
            direct = row["series"].get("provisioner")
            if label == "container" and direct and key != "start":
                # Same container, same kernel: a launcher process relays, vs the
                # provisioner's relay in the client's own process.
                versus += f"   relay: x{s['median'] / direct['median']:.2f} vs provisioner"
            metric = f"{row['metric']} ({row['unit']})" if first else ""
            lines.append(
                f"{metric:46} {label:18} {s['min']:8.3g} {s['median']:8.3g} {s['max']:8.3g}"
                f"  {versus}"
            )
            first = False
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Start-time distributions per kernel, as a strip + box plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["rows"]["start"]["series"]
    labels = [label for label in LABELS if label in series]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.boxplot([series[label]["samples"] for label in labels], orientation="horizontal")
    for i, label in enumerate(labels, start=1):
        ax.scatter(series[label]["samples"], [i] * len(series[label]["samples"]), s=12, alpha=0.6)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xlabel("start_kernel -> first kernel_info reply (s)")
    ax.set_title(f"kernel start, {result['when']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.heavy_repeat, args.round_trips, args.megabytes = 2, 1, 100, 10
        args.nbgrader = 2
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"{stamp}.json", "latest.json"):
        (RESULTS / name).write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / "start-times.png")
    print(f"machine: {result['machine']}")
    print(table(result))
    print(f"results: {RESULTS / 'latest.json'}, plot: {RESULTS / 'start-times.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
