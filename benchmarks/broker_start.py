"""A kernel's start through the root broker vs straight to the engine (issue 16), interleaved.

    .venv/bin/python benchmarks/broker_start.py [--runs 15]     # as root

Makes a temporary user (not in the docker group) in a temporary group, a venv from
/usr/bin/python3 with this checkout's package (scripts/bootstrap-broker), and a broker on
a socket of its own; then, alternating which goes first, one jupyter_client start
(`start_new_kernel` through the provisioner: container started, kernel_info answered)
straight to the engine (as root, who can reach it) and one through the broker (as the
user). One process of the same venv's Python per path takes a start at a time; the time
is measured inside it, around start_new_kernel only. Prints medians, quartiles and the difference;
removes the user, group, venv and broker at the end. Goal: at most +0.05 s.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER = "jdkbench"
GROUP = "jdkbench-kernels"


def serve(project: str) -> None:
    """In the venv, as root or the user: one start per line on stdin, its seconds on
    stdout (one process per path, so neither pays for its interpreter's start)."""
    from jupyter_client.manager import start_new_kernel

    from jupyter_docker_kernel.kernelspec import build_kernel_json
    from jupyter_docker_kernel.settings import KernelSettings

    home = tempfile.mkdtemp(prefix="jdkbench-")
    for name in ("JUPYTER_DATA_DIR", "JUPYTER_PATH"):
        os.environ[name] = f"{home}/data"
    os.environ["JUPYTER_RUNTIME_DIR"] = f"{home}/runtime"
    spec = Path(home, "data/kernels/bench")
    spec.mkdir(parents=True)
    kernel_json = build_kernel_json(
        KernelSettings(), display_name="bench", python=sys.executable, provisioner=True
    )
    (spec / "kernel.json").write_text(json.dumps(kernel_json))
    os.chdir(project)
    for _ in sys.stdin:
        started = time.perf_counter()
        km, kc = start_new_kernel(kernel_name="bench", startup_timeout=60)
        seconds = time.perf_counter() - started
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        print(seconds, flush=True)
    shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run me as root: I make a user and start a broker", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="jdkbench-", dir="/var/tmp"))
    base.chmod(0o755)
    socket_path = f"/run/jdkbench-{os.getpid()}/broker.sock"
    made_user = False
    broker: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["groupadd", "-f", GROUP], check=True)
        if subprocess.run(["id", USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-m", "-G", GROUP, USER], check=True)
            made_user = True
        entry = pwd.getpwnam(USER)
        venv = base / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, str(ROOT)], check=True, capture_output=True)
        script = venv / "broker_start.py"
        shutil.copy(__file__, script)
        projects = {}
        for who, uid, gid in (("root", 0, 0), (USER, entry.pw_uid, entry.pw_gid)):
            project = base / f"project-{who}"
            project.mkdir()
            os.chown(project, uid, gid)
            projects[who] = str(project)
        policy = base / "broker.toml"
        policy.write_text("")
        command = [sys.executable, "-m", "jupyter_docker_kernel", "broker"]
        command += ["--socket", socket_path, "--policy", str(policy), "--group", GROUP]
        broker = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        while not os.path.exists(socket_path):
            time.sleep(0.05)
        python = str(venv / "bin/python")
        user_env = ["env", "-i", f"HOME={entry.pw_dir}", "PATH=/usr/bin:/bin", "TMPDIR=/tmp"]
        user_env.append(f"JUPYTER_DOCKER_KERNEL_BROKER={socket_path}")
        commands = {
            "direct": [python, str(script), "--serve", projects["root"]],
            "broker": [
                *("runuser", "-u", USER, "--", *user_env),
                *(python, str(script), "--serve", projects[USER]),
            ],
        }
        workers = {
            path: subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for path, command in commands.items()
        }
        times: dict[str, list[float]] = {"direct": [], "broker": []}
        for run in range(args.runs + 1):
            order = ["direct", "broker"] if run % 2 else ["broker", "direct"]
            for path in order:
                worker = workers[path]
                assert worker.stdin is not None
                assert worker.stdout is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
                seconds = float(worker.stdout.readline())
                if run:  # the first pair warms caches
                    times[path].append(seconds)
        for worker in workers.values():
            assert worker.stdin is not None
            worker.stdin.close()
            worker.wait(timeout=60)
        for path, values in times.items():
            q = statistics.quantiles(values, n=4)
            print(
                f"{path:7} median {statistics.median(values):.3f} s  "
                f"quartiles {q[0]:.3f}-{q[2]:.3f} s  min {min(values):.3f} s  n={len(values)}"
            )
        delta = statistics.median(times["broker"]) - statistics.median(times["direct"])
        paired = [b - d for b, d in zip(times["broker"], times["direct"], strict=True)]
        print(f"broker - direct: {delta:+.3f} s (goal: at most +0.050 s)")
        print(
            f"paired differences (each run's two starts): median {statistics.median(paired):+.3f} s"
        )
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=30)
        if made_user:
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        if proc.stat().st_uid == pwd.getpwnam(USER).pw_uid:
                            os.kill(int(proc.name), 9)
                    except OSError:
                        pass
            subprocess.run(["userdel", "-r", USER], capture_output=True)
        subprocess.run(["groupdel", GROUP], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(Path(socket_path).parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        sys.exit(main())
