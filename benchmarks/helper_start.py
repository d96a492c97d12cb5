"""What the thin client and the resident helper cost (issue 17 item 2), without Docker.

    .venv/bin/python benchmarks/helper_start.py [--runs 20] [--sessions 50]

Prints, in one interleaved run: `python -I -c pass`, importing the thin client, and a
full round trip through a running helper with a runner that returns at once (medians in
ms); then the helper's RSS/PSS idle and with N sessions held open, and one thin
client's. The runners below are what the helper runs here (--runner helper_start:NAME).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)


def noop(request: object, control: object) -> int:
    """Accepts and returns 0: the protocol's own cost."""
    return 0


def hold(request: object, control: object) -> int:
    """Holds the session until the client goes (as a kernel would)."""
    control.accept()  # type: ignore[attr-defined]
    control.gone.wait()  # type: ignore[attr-defined]
    return 0


def helper_argv(base: str, engine: str, runner: str) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {HERE!r}); "
        "from jupyter_docker_kernel import helper; sys.exit(helper.main(sys.argv[1:]))"
    )
    args = ["--base", base, "--engine", engine, "--runner", f"helper_start:{runner}"]
    return [sys.executable, "-I", "-c", code, *args, "--idle", "60"]


def client_code(base: str, argv: list[str]) -> str:
    return (
        "import sys; from jupyter_docker_kernel import thin; "
        f"sys.exit(thin.run(thin.request_for('{{}}', 'k.json'), {base!r}, {argv!r}) or 0)"
    )


def helper_pid(base: str, engine: str) -> int:
    """The pid of the helper serving `base`, from the line its log starts with."""
    from jupyter_docker_kernel import thin

    log = Path(thin.paths(base, engine)[0][: -len(".sock")] + ".log").read_text()
    return int(log.rsplit("INFO helper ", 1)[1].split()[0])


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB from /proc/PID/smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            values[name] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd="/")
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=50)
    opts = parser.parse_args()
    from jupyter_docker_kernel import thin

    engine = thin.engine_key()
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "rt")
        os.mkdir(base, 0o700)
        argv = helper_argv(base, engine, "noop")
        py = sys.executable
        cases = {
            "python -I -c pass": [py, "-I", "-c", "pass"],
            "import thin": [py, "-I", "-c", "import jupyter_docker_kernel.thin"],
            "-m thin (runpy, import only)": [py, "-I", "-m", "jupyter_docker_kernel.thin"],
            "import launcher (today)": [py, "-I", "-c", "import jupyter_docker_kernel.launcher"],
            "round trip (noop runner)": [py, "-I", "-c", client_code(base, argv)],
        }
        timed(cases["round trip (noop runner)"])  # starts the helper
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(opts.runs):
            for name, case in cases.items():
                times[name].append(timed(case))
        for name, values in times.items():
            print(f"{name:28} median {statistics.median(values):6.1f} ms  min {min(values):6.1f}")
        pid = helper_pid(base, engine)
        rss, pss = memory(pid)
        print(f"helper idle after {opts.runs + 1} sessions: RSS {rss:.1f} MiB, PSS {pss:.1f}")
        os.kill(pid, 15)
        time.sleep(0.5)

        base2 = os.path.join(tmp, "rt2")
        os.mkdir(base2, 0o700)
        argv = helper_argv(base2, engine, "hold")
        code = client_code(base2, argv)
        clients = [subprocess.Popen([py, "-I", "-c", code], cwd="/")]
        time.sleep(1.0)
        pid = helper_pid(base2, engine)
        rss, pss = memory(pid)
        print(f"helper with 1 session:   RSS {rss:.1f} MiB, PSS {pss:.1f}")
        clients += [
            subprocess.Popen([py, "-I", "-c", code], cwd="/") for _ in range(opts.sessions - 1)
        ]
        time.sleep(3.0)
        rss, pss = memory(pid)
        print(f"helper with {opts.sessions} sessions:  RSS {rss:.1f} MiB, PSS {pss:.1f}")
        crss, cpss = memory(clients[-1].pid)
        print(f"one thin client (of {opts.sessions}): RSS {crss:.1f} MiB, PSS {cpss:.1f}")
        for proc in clients:
            proc.kill()
            proc.wait()
        time.sleep(0.5)
        os.kill(pid, 15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
