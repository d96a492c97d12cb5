"""The compiled thin client against thin.py's, in one interleaved run (issue 17).

    .venv/bin/python benchmarks/compiled_client.py [--runs 20] [--sessions 10] [--pooled 10]

Without Docker: a full round trip through a running helper whose runner returns at once
(the protocol's own cost, medians in ms), then the RSS/PSS of one client of each kind
while the helper holds `--sessions` sessions of each open. With --pooled N: N pooled
starts (start -> first kernel_info reply -> shutdown) of the default image through each
client's kernelspec, alternating, next to native ipykernel (ratios to native's median).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from benchmarks.helper_start import HERE, helper_pid, memory
from jupyter_docker_kernel import kernelspec, thin, thin_client


def accept_and_return(request: object, control: object) -> int:
    """Accepts, then returns 0: the protocol's own cost (helper_start's noop returns
    without accepting, and the helper may then send its X line before the A line)."""
    control.accept()  # type: ignore[attr-defined]
    return 0


def helper_argv(base: str, engine: str, runner: str) -> list[str]:
    code = (
        f"import sys; sys.path.insert(0, {HERE!r}); "
        "from jupyter_docker_kernel import helper; sys.exit(helper.main(sys.argv[1:]))"
    )
    name = {"noop": "accept_and_return", "hold": "hold"}[runner]
    module = "compiled_client" if runner == "noop" else "helper_start"
    args = ["--base", base, "--engine", engine, "--runner", f"{module}:{name}"]
    return [sys.executable, "-I", "-c", code, *args, "--idle", "60"]


def clients(binary: Path) -> dict[str, list[str]]:
    """Each client's argv as kernel.json has it (the launcher falls back in-process only
    when no helper answers, which never happens here)."""
    python = kernelspec.launcher_argv(sys.executable)
    args = ["-f", "k.json"]
    return {
        "python thin.py": [*python, *args],
        "compiled": thin_client.kernel_argv(python, args, binary),
    }


def run_helper(base: str, engine: str, runner: str) -> int:
    argv = helper_argv(base, engine, runner)
    subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
    path = thin.paths(base, engine)[0]
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("the helper did not start")
        time.sleep(0.02)
    return int(helper_pid(base, engine))


def protocol(binary: Path, runs: int, sessions: int) -> None:
    cases = clients(binary)
    with tempfile.TemporaryDirectory() as tmp:
        runtime = os.path.join(tmp, "xdg")
        os.mkdir(runtime, 0o700)
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": runtime,
            kernelspec.SETTINGS_ENV: '{"image": "x"}',
        }
        base = os.path.join(runtime, "jupyter-docker-kernel")
        os.mkdir(base, 0o700)
        engine = thin.engine_key(env[kernelspec.SETTINGS_ENV], env)
        pid = run_helper(base, engine, "noop")
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):
            for name, argv in cases.items():
                began = time.perf_counter()
                subprocess.run(argv, env=env, cwd="/", check=True)
                times[name].append((time.perf_counter() - began) * 1000)
        for name, values in times.items():
            print(
                f"round trip, {name:15} median {statistics.median(values):6.1f} ms"
                f"  min {min(values):6.1f}"
            )
        os.kill(pid, 15)
        # A runtime dir of its own: the helper's log names its pid (helper_pid reads it).
        runtime = os.path.join(tmp, "xdg2")
        os.mkdir(runtime, 0o700)
        env["XDG_RUNTIME_DIR"] = runtime
        base = os.path.join(runtime, "jupyter-docker-kernel")
        os.mkdir(base, 0o700)
        pid = run_helper(base, engine, "hold")
        held = {
            name: [
                subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL)
                for _ in range(sessions)
            ]
            for name, argv in cases.items()
        }
        time.sleep(2.0)
        for name, procs in held.items():
            rss = statistics.median(memory(p.pid)[0] for p in procs)
            pss = statistics.median(memory(p.pid)[1] for p in procs)
            print(f"one client, {name:15} RSS {rss:5.1f} MiB  PSS {pss:5.1f} MiB")
        for procs in held.values():
            for p in procs:
                p.kill()
                p.wait()
        os.kill(pid, 15)


def pooled(count: int, image: str) -> None:
    """Pooled starts through each client's kernelspec, alternating, and native's."""
    from benchmarks.pool_back_to_back import op_drain, op_fill, start_reply_stop
    from jupyter_docker_kernel import cli

    root = Path(tempfile.mkdtemp(prefix="jdk-thin-"))
    for var, sub in [("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime")]:
        os.environ[var] = str(root / sub)  # never the real user's kernelspecs
    specs = {"compiled": "bench-thin-cc", "python thin.py": "bench-thin-py"}
    common = ["--image", image, "--user", "--replace", "--reset", "--pool", "2", "--no-workdir"]
    os.environ[thin_client.CC_ENV] = "/nonexistent/cc"
    assert cli.main(["setup", "--name", specs["python thin.py"], *common]) == 0
    del os.environ[thin_client.CC_ENV]
    assert cli.main(["setup", "--name", specs["compiled"], *common]) == 0
    cwd = str(root)
    samples: dict[str, list[float]] = {"native": [], **{name: [] for name in specs}}
    try:
        for name in specs.values():
            op_fill(name, cwd)
        for round_ in range(count):
            samples["native"].append(start_reply_stop("python3", cwd))
            order = list(specs.items())
            for label, name in order if round_ % 2 else order[::-1]:  # the order alternates
                op_fill(name, cwd)  # each start from a full pool: the single-start case
                samples[label].append(start_reply_stop(name, cwd))
    finally:
        op_drain(list(specs.values()))
    native = statistics.median(samples["native"])
    for label, values in samples.items():
        median = statistics.median(values)
        print(
            f"pooled start, {label:15} median {median * 1000:6.0f} ms"
            f"  ({median / native:.2f}x native)  samples "
            + " ".join(f"{v * 1000:.0f}" for v in values)
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--pooled", type=int, default=0, help="pooled starts of each (Docker)")
    parser.add_argument("--image", default="jupyter-docker-kernel/default:latest")
    opts = parser.parse_args()
    binary, why = thin_client.ensure()
    if binary is None:
        print(f"no compiled client: {why}", file=sys.stderr)
        return 1
    protocol(binary, opts.runs, opts.sessions)
    if opts.pooled:
        pooled(opts.pooled, opts.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
