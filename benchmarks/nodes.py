"""A kernel on a remote node vs on this host, both through the product (issue 13),
interleaved: cold start (start_kernel to the first kernel_info reply), `pass` round trip,
stdout throughput; and the start of a pooled kernel on the node (claiming a warm container
there) against a native local ipykernel's start (the goal: faster).

    .venv/bin/python -m benchmarks.nodes [--repeat 5]     # as root
    scripts/bench --nodes                                  # the same, after the usual rows

Only when asked: it makes a node on this machine (scripts/test-node, through tests/nodes.py:
its own netns, dockerd and sshd), pushes the default image to it (`image push`), installs
kernelspecs (--no-workdir: one local, one on the node, one on the node with --pool 1), then
alternates the order in each round (native, local, node, node-pooled; reversed every other
round). Before each pooled start its pool is waited for (not measured), so it measures a
claim. Removes the node at the end, also after a failure. Prints one JSON object: medians
per path, the ratios (node / local, pooled node / native) and the SSH cipher used; and the
processes and memory on this host per running node kernel (host_footprint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.run import (
    NATIVE,
    _pool_ready,
    drain_pools,
    install,
    isolated_jupyter_env,
    round_trips,
    start_and_first_reply,
    stdout_throughput,
)
from benchmarks.run import (
    stop as stop_kernel,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "jupyter-docker-kernel/default:latest"
LOCAL, NODE, NODE_POOLED = "jdk-bench-local", "jdk-bench-node", "jdk-bench-node-pool"
#: Node kernels held at once while host_footprint counts this host's processes.
FOOTPRINT_KERNELS = 3


def node_session_processes() -> list[tuple[int, float]]:
    """(pid, RSS in MiB) of this host's ssh clients that are sessions on a node's master
    (ControlMaster=no): what a node kernel may keep running here (its `docker run -i`
    session, before issue 13's API path). Masters, one per node, are not counted."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"ssh") or b"ControlMaster=no" not in argv:
            continue
        rss = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        found.append((int(entry.name), int(rss[0]) / 1024 if rss else 0.0))
    return found


def host_footprint(work: Path) -> dict[str, Any]:
    """Processes and RSS on this host per running node kernel: FOOTPRINT_KERNELS cold node
    kernels started and idle, the node sessions counted before and during."""
    before = node_session_processes()
    held = [start_and_first_reply(NODE, work)[1:] for _ in range(FOOTPRINT_KERNELS)]
    try:
        during = node_session_processes()
    finally:
        for km, kc in held:
            stop_kernel(km, kc)
    extra = [p for p in during if p[0] not in {pid for pid, _ in before}]
    return {
        "kernels": FOOTPRINT_KERNELS,
        "processes_per_kernel": len(extra) / FOOTPRINT_KERNELS,
        "rss_mib_per_kernel": sum(rss for _, rss in extra) / FOOTPRINT_KERNELS,
    }


def wait_for_pool(kernel: str, timeout: float = 120) -> None:
    """Until the pooled kernelspec has a warm container ready (not measured)."""
    deadline = time.monotonic() + timeout
    while _pool_ready(kernel) < 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool of {kernel} did not fill in {timeout:.0f} s")
        time.sleep(0.2)


def cipher(ssh_config: Path, address: str) -> str:
    """The cipher OpenSSH negotiates with the node (from `ssh -v`'s kex line)."""
    proc = subprocess.run(
        ["ssh", "-v", "-F", str(ssh_config), address, "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    lines = [x for x in proc.stderr.splitlines() if "cipher:" in x]
    return lines[0].split("cipher:", 1)[1].split()[0] if lines else "unknown"


def measure(repeat: int, round_count: int, megabytes: int) -> dict[str, Any]:
    """The node's rows (see the module docstring); needs root and sshd (bootstrap-nodes)."""
    if os.geteuid() != 0 or shutil.which("sshd", path="/usr/sbin:/usr/bin") is None:
        return {"skipped": "a node needs root and sshd (scripts/bootstrap-nodes)"}
    sys.path.insert(0, str(ROOT))
    from tests.nodes import node_session_name, start_node, stop_node

    from jupyter_docker_kernel import push
    from jupyter_docker_kernel.engine import Engine
    from jupyter_docker_kernel.ssh import CONFIG_ENV

    name = node_session_name()
    node = start_node(name)
    try:
        os.environ[CONFIG_ENV] = str(node.ssh_config)
        push.push(Engine(), IMAGE, [node.url])
        root = isolated_jupyter_env()
        work = root / "work"
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON's
            install(LOCAL, "--image", IMAGE, "--no-workdir")
            install(NODE, "--image", IMAGE, "--no-workdir", "--engine-host", node.url)
            install(
                NODE_POOLED, "--image", IMAGE, "--no-workdir", "--engine-host", node.url,
                "--pool", "1",
            )  # fmt: skip
        series: dict[str, dict[str, list[float]]] = {
            k: {"start_s": [], "pass_ms": [], "stdout_mb_s": []} for k in ("local", "node")
        }
        series["native"] = {"start_s": []}
        series["node_pooled"] = {"start_s": []}
        # The pool's first fill comes from a first start (not measured).
        stop_kernel(*start_and_first_reply(NODE_POOLED, work)[1:])
        for i in range(repeat):
            order = [("native", NATIVE), ("local", LOCAL), ("node", NODE)]
            order.append(("node_pooled", NODE_POOLED))
            for label, kernel in order if i % 2 == 0 else order[::-1]:
                if label == "node_pooled":
                    wait_for_pool(kernel)
                took, km, kc = start_and_first_reply(kernel, work)
                try:
                    series[label]["start_s"].append(took)
                    if "pass_ms" in series[label]:
                        series[label]["pass_ms"].append(round_trips(kc, round_count) * 1000)
                        series[label]["stdout_mb_s"].append(stdout_throughput(kc, megabytes))
                finally:
                    stop_kernel(km, kc)
        medians = {
            k: {m: statistics.median(v) for m, v in rows.items()} for k, rows in series.items()
        }
        ratios = {m: medians["node"][m] / medians["local"][m] for m in medians["local"]}
        pooled = medians["node_pooled"]["start_s"] / medians["native"]["start_s"]
        return {
            "repeat": repeat,
            "cipher": cipher(node.ssh_config, node.address),
            "median": medians,
            "node_over_local": ratios,
            "pooled_node_start_over_native": pooled,
            "host_footprint": host_footprint(work),
            "series": series,
        }
    finally:
        # Its warm dirs here (their containers go with the node): a later node may get
        # the same address, and its pool must not count them.
        with contextlib.suppress(Exception):
            drain_pools([NODE_POOLED])
        stop_node(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds (each: both paths)")
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--megabytes", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.repeat, args.round_trips, args.megabytes), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
