"""Docker vs Podman for the same kernelspec, measured side by side (interleaved) in one run.

Run as `.venv/bin/python -m benchmarks.engines` after scripts/bootstrap-podman. Reports,
per engine, start_kernel -> first kernel_info_reply, one `pass` round trip, and
shutdown_kernel -> container gone, as min / median / max over --repeat starts.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from benchmarks.run import Series, install, isolated_jupyter_env, start_and_first_reply, stop
from jupyter_docker_kernel.engine import LABEL_KERNEL_ID, podman_socket
from jupyter_docker_kernel.launcher import kernel_id_from

ENGINES = {"docker": "unix:///var/run/docker.sock", "podman": ""}


def gone(host: str, kernel_id: str) -> bool:
    """True once the engine lists no container (any state) labelled with this kernel id."""
    args = ["docker", "-H", host, "ps", "-aq", "--filter", f"label={LABEL_KERNEL_ID}={kernel_id}"]
    return not subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10, help="kernel starts per engine")
    args = parser.parse_args(argv)
    root = isolated_jupyter_env()
    work: Path = root / "work"
    ENGINES["podman"] = podman_socket()
    for name, host in ENGINES.items():
        install(f"bench-{name}", "--engine-host", host)
    rows: dict[str, dict[str, Series]] = {
        metric: {name: Series() for name in ENGINES}
        for metric in ("start to kernel_info_reply", "pass round trip", "shutdown to removed")
    }
    for _ in range(args.repeat):
        for name, host in ENGINES.items():
            elapsed, km, kc = start_and_first_reply(f"bench-{name}", work)
            rows["start to kernel_info_reply"][name].add(elapsed)
            began = time.perf_counter()
            kc.execute_interactive("pass", timeout=30)
            rows["pass round trip"][name].add(time.perf_counter() - began)
            kernel_id = kernel_id_from(km.connection_file)
            began = time.perf_counter()
            stop(km, kc)
            while not gone(host, kernel_id):
                time.sleep(0.02)
            rows["shutdown to removed"][name].add(time.perf_counter() - began)
    print(f"{'metric':28} " + " ".join(f"{name:>24}" for name in ENGINES))
    for metric, series in rows.items():
        cells = []
        for name in ENGINES:
            s = series[name].summary()
            cells.append(f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} s")
        print(f"{metric:28} " + " ".join(f"{c:>24}" for c in cells))
    print(f"(min / median / max over {args.repeat} interleaved starts each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
