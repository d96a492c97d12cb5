"""slurm.py against a real Slurm: the one-node cluster of tests/slurm_cluster.py (munged,
slurmctld and slurmd from Debian's slurm-wlm, started for the session by conftest's
`slurm_cluster` fixture).

The stories: the node offers every CPU; an array of six tasks, two at a time, where one
fails and two are cancelled (one pending, one running), each reported in words; Ctrl-C
while watching cancels the whole array; sbatch's refusals (no such partition, controller
down) become one error line; and an array task runs a notebook through our kernel in a
container, which proves containers start from Slurm tasks on this machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from jupyter_docker_kernel import slurm
from jupyter_docker_kernel.slurm import SlurmError, TaskState
from tests.courses import containers_for
from tests.slurm_cluster import PARTITION, OneNodeCluster, free_port
from tests.test_notebooks import assert_no_container_left, notebook_in, read_notebook, stdout_of

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent


def scancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], check=True, timeout=30)


def test_bootstrap_slurm_finds_everything_installed() -> None:
    proc = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap-slurm")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bootstrap-slurm: ready: slurm-wlm" in proc.stderr


def test_the_node_offers_every_cpu_of_this_machine(slurm_cluster: OneNodeCluster) -> None:
    out = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N %c %T %P"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert out == [slurm_cluster.node, str(os.cpu_count()), "idle", f"{PARTITION}*"]


def test_an_array_reports_each_task_completed_failed_or_cancelled(
    slurm_cluster: OneNodeCluster, tmp_path: Path
) -> None:
    """Six tasks at most two at a time: task 1 fails, task 5 is cancelled while pending
    and task 2 while it runs; every other task completes with its output in its file."""
    commands = [
        ["true"],
        ["sh", "-c", "echo failing >&2; exit 3"],
        ["sleep", "300"],
        ["echo", "task 3"],
        ["sh", "-c", 'echo "index $SLURM_ARRAY_TASK_ID"'],
        ["true"],
    ]
    job = slurm.submit(commands, tmp_path / "job", limit=2)
    cancelled: list[str] = []
    most_running = 0

    def on_update(states: Mapping[int, TaskState]) -> None:
        nonlocal most_running
        running = [s.index for s in states.values() if s.state == "RUNNING"]
        most_running = max(most_running, len(running))
        if not cancelled and states[5].state == "PENDING":
            scancel(f"{job.job_id}_5")
            cancelled.append("5")
        if "2" not in cancelled and states[2].state == "RUNNING":
            scancel(f"{job.job_id}_2")
            cancelled.append("2")

    began = time.monotonic()
    tasks = slurm.watch(job, interval=0.3, on_update=on_update)

    print(f"6 tasks in {time.monotonic() - began:.1f} s")
    assert [t.words() for t in tasks] == [
        "completed",
        "FAILED: exit code 3",
        "CANCELLED: cancelled (scancel, Ctrl-C or an administrator)",
        "completed",
        "completed",
        "CANCELLED: cancelled (scancel, Ctrl-C or an administrator) (before it started)",
    ]
    assert most_running <= 2
    assert job.output(3).read_text() == "task 3\n"
    assert job.output(4).read_text() == "index 4\n"
    assert (job.results / "1.err").read_text() == "failing\n"


#: A grade --slurm stand-in: submits three long tasks, one at a time, prints the result.
CTRL_C_SCRIPT = """
import json, sys
from pathlib import Path
from jupyter_docker_kernel import slurm
result = slurm.grade_with_slurm(
    [["sleep", "300"]] * 3, Path(sys.argv[1]), array_limit=1, interval=0.3
)
print(json.dumps({"job": result.job_id, "interrupted": result.interrupted,
                  "words": [t.words() for t in result.tasks]}))
"""


def test_ctrl_c_while_watching_cancels_every_task(
    slurm_cluster: OneNodeCluster, tmp_path: Path
) -> None:
    workdir = tmp_path / "job"
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (workdir / "results" / "0.started").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "task 0 did not start within 60 s"
        time.sleep(0.2)

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)

    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["interrupted"] is True
    assert [w.split(":")[0] for w in result["words"]] == ["CANCELLED"] * 3
    left = subprocess.run(
        ["squeue", "--noheader", f"--jobs={result['job']}", "--format=%i %T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    assert left.strip() == ""


def test_sbatch_to_a_partition_that_does_not_exist_says_which_exist(
    slurm_cluster: OneNodeCluster, tmp_path: Path
) -> None:
    with pytest.raises(SlurmError) as caught:
        slurm.submit([["true"]], tmp_path / "job", partition="nope")
    assert str(caught.value).startswith(
        f"Slurm has no partition 'nope' (partitions here: {PARTITION}). No job was submitted;"
    )


def test_sbatch_with_the_controller_down_says_to_check_slurmctld(
    slurm_cluster: OneNodeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster's configuration with the controller's port changed to one nobody
    listens on: what sbatch meets when slurmctld is down."""
    conf = tmp_path / "slurm.conf"
    text = slurm_cluster.conf.read_text()
    text = re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", text)
    # MessageTimeout=1: sbatch gives up after one refused connection, not 9 s of retries.
    conf.write_text(text + "MessageTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))

    with pytest.raises(SlurmError) as caught:
        slurm.submit([["true"]], tmp_path / "job")
    with pytest.raises(SlurmError) as before:
        slurm.preflight(None)

    assert str(caught.value).startswith("cannot reach the Slurm controller (")
    assert "No job was submitted; is slurmctld running? Check with `scontrol ping`" in str(
        caught.value
    )
    assert str(before.value).startswith("cannot reach the Slurm controller (")


@pytest.mark.docker
def test_an_array_task_runs_a_notebook_in_a_kernel_container(
    slurm_cluster: OneNodeCluster, kernel_name: str, workdir: Path
) -> None:
    """`jupyter nbconvert --execute` with our kernelspec as one array task: the cell runs
    in a container (its hostname is not this machine's) started from the Slurm task."""
    notebook_in(workdir, "import socket; print(socket.gethostname())")
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    command = [
        jupyter,
        *("nbconvert", "--to", "notebook", "--execute"),
        f"--ExecutePreprocessor.kernel_name={kernel_name}",
        *("nb.ipynb", "--output", "out.ipynb"),
    ]

    result = slurm.grade_with_slurm([command], workdir / "job", chdir=workdir, interval=0.3)

    job = slurm.ArrayJob(result.job_id, 1, workdir / "job")
    print((job.results / "0.err").read_text())
    print(f"one notebook through Slurm in {result.seconds:.1f} s")
    assert [t.words() for t in result.tasks] == ["completed"]
    printed = stdout_of(read_notebook(workdir / "out.ipynb").cells[0]).strip()
    assert printed
    assert printed != socket.gethostname()
    assert_no_container_left(workdir)


@pytest.mark.docker
def test_cancelling_a_task_that_runs_a_kernel_removes_its_container(
    slurm_cluster: OneNodeCluster, kernel_name: str, workdir: Path
) -> None:
    """scancel while the task's notebook sleeps: Slurm's SIGTERM reaches nbconvert and our
    launcher, and the kernel's container is gone within KillWait (10 s here)."""
    notebook_in(workdir, "import time; time.sleep(300)")
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    command = [
        jupyter,
        *("nbconvert", "--to", "notebook", "--execute"),
        f"--ExecutePreprocessor.kernel_name={kernel_name}",
        *("nb.ipynb", "--output", "out.ipynb"),
    ]
    job = slurm.submit([command], workdir / "job", chdir=workdir)
    deadline = time.monotonic() + 120
    while not containers_for(workdir):
        assert time.monotonic() < deadline, "no kernel container within 120 s"
        time.sleep(0.3)

    scancel(job.job_id)
    [task] = slurm.watch(job, interval=0.3)

    print((job.results / "0.err").read_text())
    assert task.state == "CANCELLED"
    assert_no_container_left(workdir, within=15)


def test_array_runner_runs_started_workers_as_one_array_and_polls_each(
    slurm_cluster: OneNodeCluster, tmp_path: Path
) -> None:
    """grade's Runner protocol over one array: start() four workers, poll each until it
    ends (as grade_class does), stop() the one that hangs; each worker's log holds its
    output and Slurm's verdict, and all four ran as tasks of the same job."""
    commands = {
        "alice": ["echo", "graded alice"],
        "bob": ["sh", "-c", "echo no result; exit 1"],
        "carol": ["sleep", "300"],
        "dave": ["sh", "-c", 'echo "job $SLURM_ARRAY_JOB_ID"'],
    }
    runner = slurm.ArrayRunner(
        lambda key, into: commands[key], tmp_path / "slurm", limit=2, interval=0.3
    )
    dirs = {key: tmp_path / key for key in commands}
    for into in dirs.values():
        into.mkdir()
    jobs = {key: runner.start(key, into) for key, into in dirs.items()}
    codes: dict[str, int] = {}
    deadline = time.monotonic() + 120
    while len(codes) < len(jobs):
        assert time.monotonic() < deadline, f"not all ended within 120 s: {runner.states}"
        for key, job in jobs.items():
            code = job.poll()
            if code is not None:
                codes[key] = code
            elif key == "carol" and job.state and job.state.state == "RUNNING":
                job.stop()
        time.sleep(0.05)

    assert codes == {"alice": 0, "bob": 1, "carol": 2, "dave": 0}
    log = {key: (into / "worker.log").read_text() for key, into in dirs.items()}
    job_id = runner.job_id
    assert log["alice"] == f"graded alice\n\nslurm: job {job_id}_0: completed\n"
    assert log["bob"] == f"no result\n\nslurm: job {job_id}_1: FAILED: exit code 1\n"
    assert log["carol"].endswith(
        f"slurm: job {job_id}_2: CANCELLED: cancelled (scancel, Ctrl-C or an administrator)\n"
    )
    assert log["dave"].startswith(f"job {job_id}\n")
    assert (tmp_path / "slurm" / "tasks.txt").exists()
    runner.close()  # every task finished: the job's own files go
    assert not (tmp_path / "slurm").exists()


def test_preflight_finds_the_partition_and_refuses_an_unknown_one(
    slurm_cluster: OneNodeCluster,
) -> None:
    slurm.preflight(PARTITION)
    slurm.preflight(None)
    with pytest.raises(SlurmError, match=r"^Slurm has no partition 'nope' \(partitions here: "):
        slurm.preflight("nope")
