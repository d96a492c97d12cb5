"""A kernel on a remote node vs on this host, both through the product (issue 13),
interleaved: cold start (start_kernel to the first kernel_info reply), `pass` round trip,
stdout throughput.

    .venv/bin/python -m benchmarks.nodes [--repeat 5]     # as root
    scripts/bench --nodes                                  # the same, after the usual rows

Only when asked: it makes a node on this machine (scripts/test-node, through tests/nodes.py:
its own netns, dockerd and sshd), pushes the default image to it (`image push`), installs
two kernelspecs (--no-workdir, one with --engine-host ssh://...), then alternates which
goes first in each round. Removes the node at the end, also after a failure. Prints one
JSON object: medians per path, the ratios (node / local) and the SSH cipher used.
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
from pathlib import Path
from typing import Any

from benchmarks.run import (
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
LOCAL, NODE = "jdk-bench-local", "jdk-bench-node"


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
        series: dict[str, dict[str, list[float]]] = {
            k: {"start_s": [], "pass_ms": [], "stdout_mb_s": []} for k in ("local", "node")
        }
        for i in range(repeat):
            order = [("local", LOCAL), ("node", NODE)]
            for label, kernel in order if i % 2 == 0 else order[::-1]:
                took, km, kc = start_and_first_reply(kernel, work)
                try:
                    series[label]["start_s"].append(took)
                    series[label]["pass_ms"].append(round_trips(kc, round_count) * 1000)
                    series[label]["stdout_mb_s"].append(stdout_throughput(kc, megabytes))
                finally:
                    stop_kernel(km, kc)
        medians = {
            k: {m: statistics.median(v) for m, v in rows.items()} for k, rows in series.items()
        }
        ratios = {m: medians["node"][m] / medians["local"][m] for m in medians["local"]}
        return {
            "repeat": repeat,
            "cipher": cipher(node.ssh_config, node.address),
            "median": medians,
            "node_over_local": ratios,
            "series": series,
        }
    finally:
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
