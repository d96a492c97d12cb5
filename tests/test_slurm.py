"""slurm.py's pure parts without Slurm: squeue's output read back, each way a task ends
said in words, the task list, the sbatch line, sbatch's refusals turned into errors, and
the job script run by bash as an array task would run it.

The same module against a real one-node cluster: tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from jupyter_docker_kernel import slurm
from jupyter_docker_kernel.slurm import ArrayJob, SlurmError, TaskState

#: Lines as squeue 22.05 printed them on the test cluster (--Format=slurm.SQUEUE_FORMAT),
#: plus the states the cluster cannot produce quickly (TIMEOUT takes a minute at least,
#: OUT_OF_MEMORY needs task/cgroup, NODE_FAIL a dead node).
SQUEUE_OUTPUT = """\
0|COMPLETED|None|0|
1|FAILED|NonZeroExitCode|768|
2|PENDING|JobArrayTaskLimit|0|
3|RUNNING|None|0|
4|CANCELLED|None|15|
5|TIMEOUT|TimeLimit|0|
6|OUT_OF_MEMORY|OutOfMemory|0|
7|NODE_FAIL|NodeDown|0|
8|FAILED|NonZeroExitCode|9|
N/A|RUNNING|None|0|
10-19%2|PENDING|JobArrayTaskLimit|0|
"""


def test_parse_squeue_reads_each_task_state_and_exit_status() -> None:
    states = slurm.parse_squeue(SQUEUE_OUTPUT)
    assert states == {
        0: TaskState(0, "COMPLETED", "", 0, None),
        1: TaskState(1, "FAILED", "NonZeroExitCode", 3, None),
        2: TaskState(2, "PENDING", "JobArrayTaskLimit"),
        3: TaskState(3, "RUNNING"),
        4: TaskState(4, "CANCELLED"),
        5: TaskState(5, "TIMEOUT", "TimeLimit"),
        6: TaskState(6, "OUT_OF_MEMORY", "OutOfMemory"),
        7: TaskState(7, "NODE_FAIL", "NodeDown"),
        8: TaskState(8, "FAILED", "NonZeroExitCode", None, 9),
    }


@pytest.mark.parametrize(
    ("state", "words"),
    [
        (TaskState(0, "COMPLETED", "", 0), "completed"),
        (TaskState(1, "FAILED", "NonZeroExitCode", 3), "FAILED: exit code 3"),
        (TaskState(1, "FAILED", "", 137), "FAILED: exit code 137 (killed by SIGKILL)"),
        (TaskState(1, "FAILED", "", None, 9), "FAILED: killed by signal 9 (SIGKILL)"),
        (
            TaskState(2, "CANCELLED", "before it started"),
            "CANCELLED: cancelled (scancel, Ctrl-C or an administrator) (before it started)",
        ),
        (TaskState(3, "TIMEOUT", "TimeLimit"), "TIMEOUT: ran past its Slurm time limit"),
        (TaskState(4, "OUT_OF_MEMORY"), "OUT_OF_MEMORY: went over its Slurm memory limit"),
        (TaskState(5, "NODE_FAIL", "NodeDown"), "NODE_FAIL: its compute node failed"),
        (TaskState(6, "PENDING", "JobArrayTaskLimit"), "pending (JobArrayTaskLimit)"),
        (TaskState(7, "RUNNING"), "running"),
    ],
)
def test_task_state_says_how_a_task_ended_in_words(state: TaskState, words: str) -> None:
    assert state.words() == words


def test_only_a_zero_exit_is_ok_and_only_end_states_are_finished() -> None:
    assert TaskState(0, "COMPLETED", "", 0).ok
    assert not TaskState(0, "FAILED", "", 1).ok
    assert not TaskState(0, "CANCELLED").ok
    assert [s.finished for s in slurm.parse_squeue(SQUEUE_OUTPUT).values()] == [
        True, True, False, False, True, True, True, True, True,
    ]  # fmt: skip


def test_task_list_holds_one_command_per_line_that_the_shell_splits_back() -> None:
    commands = [["grade", "ps1", "--one", "o'brien"], ["echo", "two words", "$HOME;rm"]]
    lines = slurm.task_list(commands).splitlines()
    assert [shlex.split(line) for line in lines] == commands


def test_task_list_refuses_an_argument_with_a_newline() -> None:
    with pytest.raises(SlurmError, match="newline"):
        slurm.task_list([["echo", "a\nb"]])


def test_sbatch_argv_asks_for_one_task_per_command_and_a_file_per_task() -> None:
    argv = slurm.sbatch_argv(
        Path("/w/job.sh"), 6, Path("/w/results"), limit=2, partition="short", chdir=Path("/c")
    )
    assert argv == [
        "sbatch",
        "--parsable",
        "--array=0-5%2",
        "--job-name=jdk-grade",
        "--output=/w/results/%a.out",
        "--error=/w/results/%a.err",
        "--cpus-per-task=1",
        "--export=ALL",
        "--partition=short",
        "--chdir=/c",
        "/w/job.sh",
    ]


def test_sbatch_argv_without_a_limit_lets_slurm_run_every_task_at_once() -> None:
    argv = slurm.sbatch_argv(Path("/w/job.sh"), 3, Path("/w/r"), time_limit="30")
    assert "--array=0-2" in argv
    assert "--time=30" in argv
    assert not any(arg.startswith("--partition") for arg in argv)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
            "Slurm has no partition 'nope'. No job was submitted; pick one from `sinfo -s`",
        ),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
            "(connect failure)",
            "cannot reach the Slurm controller (sbatch: error: Batch job submission failed: "
            "Unable to contact slurm controller (connect failure)). No job was submitted; "
            "is slurmctld running?",
        ),
        (
            'sbatch: error: Munge encode failed: Failed to access "/run/munge/munge.socket.2"',
            "Slurm did not accept our credentials",
        ),
        (
            "sbatch: error: Batch job submission failed: Requested node configuration is "
            "not available",
            "sbatch refused the job array: sbatch: error: Batch job submission failed: "
            "Requested node configuration is not available. No job was submitted",
        ),
    ],
)
def test_sbatch_refusals_become_one_error_line_each(
    stderr: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no sinfo: the partition list is left out
    error = slurm._sbatch_error(stderr, "nope")
    assert str(error).startswith(expected)
    assert "\n" not in str(error)


def test_submit_without_sbatch_says_where_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match=r"sbatch was not found on PATH\. No job was submitted"):
        slurm.submit([["true"]], tmp_path / "job")
    assert not (tmp_path / "job").exists()


def run_task(script: Path, index: int) -> subprocess.CompletedProcess[str]:
    """Run the job script as Slurm would run array task `index` (bash, the index in env)."""
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index)}
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def job(tmp_path: Path) -> ArrayJob:
    """The files submit() writes for three tasks, without submitting them."""
    results = tmp_path / "results"
    results.mkdir()
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(slurm.task_list([["echo", "it's", "task 0"], ["sh", "-c", "exit 3"]]))
    (tmp_path / "job.sh").write_text(slurm.build_script(tasks, results))
    return ArrayJob("1", 3, tmp_path)


def test_job_script_runs_its_line_and_records_the_exit_status(job: ArrayJob) -> None:
    first = run_task(job.workdir / "job.sh", 0)
    second = run_task(job.workdir / "job.sh", 1)
    assert (first.returncode, first.stdout) == (0, "it's task 0\n")
    assert second.returncode == 3
    assert (job.results / "0.exit").read_text() == "0\n"
    assert (job.results / "1.exit").read_text() == "3\n"
    assert (job.results / "1.started").exists()


def test_job_script_refuses_an_index_past_the_task_list(job: ArrayJob) -> None:
    proc = run_task(job.workdir / "job.sh", 2)
    assert proc.returncode == 2
    assert "no line 3 in" in proc.stderr
    assert not (job.results / "2.exit").exists()


def test_tasks_squeue_no_longer_lists_are_read_from_their_result_files(job: ArrayJob) -> None:
    run_task(job.workdir / "job.sh", 0)
    run_task(job.workdir / "job.sh", 1)
    assert slurm._from_files(job, 0) == TaskState(0, "COMPLETED", "", 0)
    assert slurm._from_files(job, 1) == TaskState(1, "FAILED", "", 3)
    # No result and no start: a pending task that was cancelled leaves nothing behind.
    assert slurm._from_files(job, 2) == TaskState(2, "CANCELLED", "before it started")
    # Started but no result: killed before its shell could write one.
    (job.results / "2.started").write_text("1\n")
    assert slurm._from_files(job, 2).words() == "FAILED: ended without a result; see its .err file"


def test_summary_counts_finished_failed_running_and_pending() -> None:
    states = slurm.parse_squeue(SQUEUE_OUTPUT)
    assert slurm.summary(states) == "7/9 finished (6 failed), 1 running, 1 pending"


def test_a_task_with_a_log_writes_its_output_there(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    log = tmp_path / "o'neil" / "worker.log"
    log.parent.mkdir()
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(slurm.task_list([["sh", "-c", "echo out; echo err >&2; exit 1"]], [log]))
    (tmp_path / "job.sh").write_text(slurm.build_script(tasks, results))

    proc = run_task(tmp_path / "job.sh", 0)

    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")
    assert log.read_text() == "out\nerr\n"
    assert (results / "0.exit").read_text() == "1\n"


def test_an_array_runner_stopped_before_its_first_poll_submits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C before the array went out: stop() then poll() must not call sbatch (there is
    none on PATH here: a call would raise) and every task reads as cancelled."""
    monkeypatch.setenv("PATH", str(tmp_path))
    runner = slurm.ArrayRunner(lambda key, into: ["echo", key], tmp_path / "job")
    tasks = [runner.start(key, tmp_path / key) for key in ("alice", "bob")]

    for task in tasks:
        task.stop()

    assert [task.poll() for task in tasks] == [2, 2]
    assert [task.state.words() if task.state else "" for task in tasks] == [
        "CANCELLED: cancelled (scancel, Ctrl-C or an administrator) (never submitted)"
    ] * 2
    assert not (tmp_path / "job").exists()


def test_preflight_without_sbatch_says_where_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match=r"^sbatch was not found on PATH\. Nothing was submitted"):
        slurm.preflight("short")


def test_grade_slurm_makes_no_local_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """`grade --slurm` grades in array tasks only: no local runner (its engine sweep and
    resident refiller would serve nobody) is made before or after Slurm's preflight."""
    from types import SimpleNamespace

    from jupyter_docker_kernel import cli, grade

    made: list[object] = []
    plan = SimpleNamespace(students=["s00"], skipped=[], assignment="ps1")
    monkeypatch.setattr(grade, "plan", lambda *a, **k: plan)
    monkeypatch.setattr(grade, "LocalRunner", lambda *a, **k: made.append(a))

    def no_slurm(partition: object) -> None:
        raise SlurmError("no Slurm here", "Nothing was graded", "A test.")

    monkeypatch.setattr(slurm, "preflight", no_slurm)
    code = cli.main(["grade", "ps1", "--slurm"])
    assert code != 0
    assert made == []
