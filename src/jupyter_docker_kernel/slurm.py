"""Run one command per Slurm array task: submit with sbatch, watch with squeue, scancel.

`grade --slurm` hands `grade_with_slurm()` one worker command line per submission (each
grades one student into its own result directory; the parent alone writes the gradebook).
This module knows nothing about grading: it writes the commands to a task list, submits
one array job whose task N runs line N+1 (`sbatch --array=0-N%K --parsable`), follows
every task to its end, and says per task how it ended, in words: completed, FAILED with
its exit code, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL. Ctrl-C while it watches
cancels the job (scancel), so nothing is left queued or running.

How a task's end is known: squeue (with --states=all it lists finished tasks for
MinJobAge, 300 s by default) is polled every few seconds, and the job script writes each
task's exit status into the results directory (RESULTS/N.exit) for tasks squeue no
longer lists. sacct is not needed: many small clusters (ours in the tests too) run without
accounting. A pending task that is cancelled leaves the queue without any record; no
record and no result file therefore means it was cancelled before it started.

The pure parts (`build_script`, `sbatch_argv`, `task_list`, `parse_squeue`, `TaskState`
words) are tested without Slurm in tests/test_slurm.py; the rest against a real one-node
cluster in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_docker_kernel.errors import DockerKernelError

log = logging.getLogger(__name__)

#: Slurm's states a task does not leave again.
FINISHED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
#: What each way of ending means, for a person reading the report.
_WORDS = {
    "CANCELLED": "cancelled (scancel, Ctrl-C or an administrator)",
    "TIMEOUT": "ran past its Slurm time limit",
    "OUT_OF_MEMORY": "went over its Slurm memory limit",
    "NODE_FAIL": "its compute node failed",
    "BOOT_FAIL": "its compute node failed to boot",
    "PREEMPTED": "preempted by another job",
    "DEADLINE": "missed its deadline",
}
#: squeue's columns, '|'-separated: task index, state, reason, exit status (waitpid's).
SQUEUE_FORMAT = "ArrayTaskID:|,State:|,Reason:|,exit_code:|"
#: Seconds squeue may keep failing (a controller restarting) before watching gives up.
UNREACHABLE_FOR = 120.0


class SlurmError(DockerKernelError):
    """sbatch, squeue or scancel is missing, refused, or cannot reach the controller."""


@dataclass(frozen=True)
class TaskState:
    """Where one array task is, as Slurm (or its result file) says.

    state is Slurm's name (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...);
    exit_code and signal are the task's own when it ran to an end; reason is squeue's
    (JobArrayTaskLimit, NonZeroExitCode, ...) or ours for a task that left no record.
    """

    index: int
    state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and not self.exit_code

    def words(self) -> str:
        """One line for the report: "completed", "FAILED: exit code 3", "TIMEOUT: ..."."""
        if self.state == "COMPLETED" and not self.exit_code:
            return "completed"
        if self.state in ("FAILED", "COMPLETED"):
            if self.signal:
                return f"FAILED: killed by signal {self.signal} ({_signal_name(self.signal)})"
            if self.exit_code is None:
                return f"FAILED: {self.reason or 'no exit status'}"
            code = self.exit_code
            if 128 < code < 128 + 65:
                # The job script's shell reports a command killed by signal N as 128+N.
                sig = code - 128
                return f"FAILED: exit code {code} (killed by {_signal_name(sig)})"
            return f"FAILED: exit code {code}"
        if self.state in _WORDS:
            extra = f" ({self.reason})" if self.reason and self.state == "CANCELLED" else ""
            return f"{self.state}: {_WORDS[self.state]}{extra}"
        if self.state == "PENDING" and self.reason:
            return f"pending ({self.reason})"
        return self.state.lower()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _exit_status(raw: str) -> tuple[int | None, int | None]:
    """squeue's exit_code column (a waitpid status, 768 for exit 3) -> (exit code, signal)."""
    if not raw.strip().isdigit():
        return None, None
    status = int(raw)
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def parse_squeue(text: str) -> dict[int, TaskState]:
    """`squeue --noheader --array --Format=SQUEUE_FORMAT` output -> state per task index.

    Lines that are not one task (a non-array job's "N/A", a range "4-9%2" when --array
    was left out) are skipped: with --array, squeue lists every task on its own line."""
    states: dict[int, TaskState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[0].strip().isdigit():
            continue
        index = int(parts[0])
        # CANCELLED may carry who did it ("CANCELLED by 0") in other tools' output.
        state = parts[1].strip().split(" ")[0].upper()
        reason = parts[2].strip()
        code, sig = _exit_status(parts[3])
        if state not in ("COMPLETED", "FAILED"):
            code, sig = None, None
        states[index] = TaskState(index, state, "" if reason == "None" else reason, code, sig)
    return states


def task_list(commands: Sequence[Sequence[str]], logs: Sequence[Path] | None = None) -> str:
    """One shell-quoted command line per task (the job script's task N runs line N+1);
    with `logs`, task N's stdout and stderr go to logs[N] instead of Slurm's N.out/N.err."""
    if logs is not None and len(logs) != len(commands):
        raise ValueError(f"{len(commands)} commands but {len(logs)} logs")
    lines = []
    for number, argv in enumerate(commands):
        if not argv:
            raise SlurmError(
                f"task {number} has an empty command line",
                "No job was submitted",
                "give every task a command",
            )
        if any("\n" in arg or "\0" in arg for arg in argv):
            raise SlurmError(
                f"task {number}'s command has an argument with a newline: {argv!r}",
                "No job was submitted",
                "the task list holds one command per line; pass such values in a file",
            )
        line = shlex.join(argv)
        if logs is not None:
            line += f" >>{shlex.quote(str(logs[number]))} 2>&1"
        lines.append(line)
    return "\n".join(lines) + "\n"


def build_script(tasks: Path, results: Path) -> str:
    """The batch script every array task runs: line SLURM_ARRAY_TASK_ID+1 of `tasks`, then
    its exit status into results/N.exit (written whole: a reader never sees half of it)."""
    tasks_q = shlex.quote(str(tasks))
    results_q = shlex.quote(str(results))
    return f"""#!/bin/bash
# Written by jupyter-docker-kernel (slurm.py): array task N runs line N+1 of the task list.
set -u
i=${{SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task (sbatch --array)}}
line=$(sed -n "$((i + 1))p" {tasks_q})
if [ -z "$line" ]; then
  echo "slurm task $i: no line $((i + 1)) in {tasks_q}" >&2
  exit 2
fi
date +%s.%N >{results_q}/"$i.started"
# The line was written with shlex.join: eval splits it back into the same argv.
eval "$line" </dev/null
code=$?
echo "$code" >{results_q}/"$i.exit.part" && mv -f {results_q}/"$i.exit.part" {results_q}/"$i.exit"
exit "$code"
"""


def sbatch_argv(
    script: Path,
    count: int,
    results: Path,
    *,
    limit: int | None = None,
    partition: str | None = None,
    job_name: str = "jdk-grade",
    chdir: Path | None = None,
    time_limit: str | None = None,
    cpus_per_task: int = 1,
) -> list[str]:
    """The sbatch command line for `count` tasks, at most `limit` running at once, each
    task's stdout and stderr in results/N.out and results/N.err."""
    array = f"0-{count - 1}" + (f"%{limit}" if limit else "")
    argv = [
        "sbatch",
        "--parsable",
        f"--array={array}",
        f"--job-name={job_name}",
        f"--output={results}/%a.out",
        f"--error={results}/%a.err",
        f"--cpus-per-task={cpus_per_task}",
        # The worker needs this environment (PATH, JUPYTER_*, DOCKER_HOST), whatever a
        # site's SBATCH_EXPORT default says.
        "--export=ALL",
    ]
    if partition:
        argv.append(f"--partition={partition}")
    if chdir is not None:
        argv.append(f"--chdir={chdir}")
    if time_limit:
        argv.append(f"--time={time_limit}")
    return [*argv, str(script)]


def _sbatch_error(stderr: str, partition: str | None) -> SlurmError:
    """sbatch's refusal -> one error that says what to do."""
    said = " ".join(line.strip() for line in stderr.strip().splitlines()[-2:]) or "no message"
    not_done = "No job was submitted"
    lowered = said.lower()
    if "invalid partition" in lowered:
        known = _partitions()
        listed = f" (partitions here: {', '.join(known)})" if known else ""
        return SlurmError(
            f"Slurm has no partition {partition!r}{listed}",
            not_done,
            "pick one from `sinfo -s` with --partition, or leave it out for the default",
        )
    if "unable to contact slurm controller" in lowered or "connection refused" in lowered:
        return SlurmError(
            f"cannot reach the Slurm controller ({said})",
            not_done,
            "is slurmctld running? Check with `scontrol ping` and try again",
        )
    if "munge" in lowered or "authentication" in lowered:
        return SlurmError(
            f"Slurm did not accept our credentials ({said})",
            not_done,
            "is munged running on this machine? Check with `munge -n | unmunge`",
        )
    return SlurmError(f"sbatch refused the job array: {said}", not_done, "see sbatch's message")


def _partitions() -> list[str]:
    """The partitions Slurm knows (empty when sinfo cannot say)."""
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--format=%R"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(set(proc.stdout.split())) if proc.returncode == 0 else []


def _require(program: str, not_done: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SlurmError(
            f"{program} was not found on PATH",
            not_done,
            "run this on a Slurm login node (perhaps `module load slurm` first), "
            "or leave out --slurm to grade on this machine",
        )
    return path


@dataclass
class ArrayJob:
    """One submitted array job: its id, its task count and where its files are."""

    job_id: str
    count: int
    workdir: Path
    submitted_at: float = field(default_factory=time.monotonic)

    @property
    def results(self) -> Path:
        return self.workdir / "results"

    def output(self, index: int) -> Path:
        """Task `index`'s stdout (its stderr is next to it, N.err)."""
        return self.results / f"{index}.out"


def submit(
    commands: Sequence[Sequence[str]],
    workdir: Path,
    *,
    limit: int | None = None,
    partition: str | None = None,
    chdir: Path | None = None,
    time_limit: str | None = None,
    job_name: str = "jdk-grade",
    logs: Sequence[Path] | None = None,
) -> ArrayJob:
    """Write the task list and the job script into `workdir` (which every compute node must
    see: a shared filesystem) and submit one array task per command. Raises SlurmError."""
    if not commands:
        raise SlurmError("no tasks to submit", "No job was submitted", "give at least one command")
    sbatch = _require("sbatch", "No job was submitted")
    workdir.mkdir(parents=True, exist_ok=True)
    results = workdir / "results"
    results.mkdir(exist_ok=True)
    tasks = workdir / "tasks.txt"
    tasks.write_text(task_list(commands, logs))
    script = workdir / "job.sh"
    script.write_text(build_script(tasks, results))
    script.chmod(0o755)
    argv = sbatch_argv(
        script,
        len(commands),
        results,
        limit=limit,
        partition=partition,
        chdir=chdir,
        time_limit=time_limit,
        job_name=job_name,
    )
    argv[0] = sbatch
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(
            "sbatch did not answer within 120 s",
            "The job may or may not have been submitted",
            "check with `squeue --me` and `scontrol ping`",
        ) from exc
    if proc.returncode != 0:
        raise _sbatch_error(proc.stderr, partition)
    # --parsable prints "JOBID" or "JOBID;CLUSTER".
    job_id = proc.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise SlurmError(f"sbatch printed no job id ({proc.stdout.strip()!r})", "", "")
    log.info("submitted Slurm array job %s: %d tasks (%s)", job_id, len(commands), argv[2])
    return ArrayJob(job_id, len(commands), workdir)


def _squeue(job: ArrayJob) -> dict[int, TaskState] | None:
    """The controller's view of the job's tasks; {} once it has forgotten the job, None
    when it cannot be asked."""
    argv = [
        "squeue",
        "--noheader",
        "--array",
        "--states=all",
        f"--jobs={job.job_id}",
        f"--Format={SQUEUE_FORMAT}",
    ]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("squeue for job %s failed: %s", job.job_id, exc)
        return None
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return {}  # every task finished more than MinJobAge ago
        log.warning("squeue for job %s: %s", job.job_id, proc.stderr.strip())
        return None
    return parse_squeue(proc.stdout)


def _from_files(job: ArrayJob, index: int) -> TaskState:
    """A task the controller no longer lists: its result file says how it ended."""
    exit_file = job.results / f"{index}.exit"
    try:
        code = int(exit_file.read_text().strip())
    except (OSError, ValueError):
        if (job.results / f"{index}.started").exists():
            return TaskState(index, "FAILED", "ended without a result; see its .err file")
        # A pending array task that is cancelled leaves no record behind.
        return TaskState(index, "CANCELLED", "before it started")
    return TaskState(index, "COMPLETED" if code == 0 else "FAILED", "", code)


def poll(job: ArrayJob, known: Mapping[int, TaskState] | None = None) -> dict[int, TaskState]:
    """Every task's state now. Tasks already finished in `known` keep their state (Slurm
    forgets them after MinJobAge). Raises SlurmError when squeue cannot be asked."""
    listed = _squeue(job)
    if listed is None:
        raise SlurmError(
            f"squeue cannot tell the state of job {job.job_id}",
            "",
            f"check `scontrol ping`; the job may still run (`squeue -j {job.job_id}`)",
        )
    states: dict[int, TaskState] = {}
    for index in range(job.count):
        before = (known or {}).get(index)
        if before is not None and before.finished:
            states[index] = before
        elif index in listed:
            states[index] = listed[index]
        else:
            states[index] = _from_files(job, index)
    return states


def summary(states: Mapping[int, TaskState]) -> str:
    """One progress line: "4/6 finished (1 failed), 2 running, 0 pending"."""
    finished = [s for s in states.values() if s.finished]
    failed = sum(1 for s in finished if not s.ok)
    running = sum(1 for s in states.values() if s.state in ("RUNNING", "COMPLETING"))
    pending = len(states) - len(finished) - running
    return (
        f"{len(finished)}/{len(states)} finished ({failed} failed), "
        f"{running} running, {pending} pending"
    )


def cancel(job: ArrayJob) -> None:
    """scancel the whole array (tasks still pending or running); idempotent."""
    scancel = shutil.which("scancel")
    if scancel is None:
        log.warning("scancel not found: job %s is left to Slurm", job.job_id)
        return
    proc = subprocess.run(
        [scancel, job.job_id], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        log.warning("scancel %s: %s", job.job_id, proc.stderr.strip())


@dataclass(frozen=True)
class ArrayResult:
    """How every task of one array job ended; interrupted when Ctrl-C cancelled it."""

    job_id: str
    tasks: list[TaskState]
    interrupted: bool = False
    seconds: float = 0.0


def watch(
    job: ArrayJob,
    *,
    interval: float = 2.0,
    on_update: Callable[[Mapping[int, TaskState]], None] | None = None,
) -> list[TaskState]:
    """Poll until every task has finished; on_update gets the states whenever one changed.
    Raises SlurmError when squeue fails for UNREACHABLE_FOR seconds in a row."""
    states: dict[int, TaskState] = {}
    failing_since: float | None = None
    while True:
        try:
            now = poll(job, states)
        except SlurmError:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > UNREACHABLE_FOR:
                raise
            time.sleep(interval)
            continue
        failing_since = None
        if now != states:
            states = now
            if on_update is not None:
                on_update(states)
        if all(s.finished for s in states.values()):
            return [states[i] for i in range(job.count)]
        time.sleep(interval)


def grade_with_slurm(
    commands: Sequence[Sequence[str]],
    workdir: Path,
    *,
    partition: str | None = None,
    array_limit: int | None = None,
    chdir: Path | None = None,
    time_limit: str | None = None,
    interval: float = 2.0,
    on_update: Callable[[Mapping[int, TaskState]], None] | None = None,
) -> ArrayResult:
    """Run each worker command line as one task of one array job and wait for all of them.

    Called by `grade --slurm` with one `grade ASSIGNMENT --one STUDENT --into DIR` command
    per submission (task i is commands[i]); the caller then merges each finished task's DIR
    into the gradebook. Ctrl-C cancels the job, waits (briefly) for Slurm to report every
    task's end and returns with interrupted=True, so the caller keeps what finished.
    """
    began = time.monotonic()
    job = submit(
        commands,
        workdir,
        limit=array_limit,
        partition=partition,
        chdir=chdir,
        time_limit=time_limit,
    )
    try:
        tasks = watch(job, interval=interval, on_update=on_update)
    except KeyboardInterrupt:
        log.warning("interrupted: cancelling Slurm job %s", job.job_id)
        cancel(job)
        tasks = _settle(job, interval)
        return ArrayResult(job.job_id, tasks, True, time.monotonic() - began)
    except BaseException:
        cancel(job)  # an error while watching leaves nothing queued in our name
        raise
    return ArrayResult(job.job_id, tasks, False, time.monotonic() - began)


def _settle(job: ArrayJob, interval: float, timeout: float = 60.0) -> list[TaskState]:
    """After scancel: wait for every task to be reported finished (a running one gets
    KillWait seconds to clean up); what is still unfinished after `timeout` is CANCELLED."""
    states: dict[int, TaskState] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = poll(job, states)
        except SlurmError:
            break
        if all(s.finished for s in states.values()):
            break
        time.sleep(min(interval, 0.5))
    return [
        states[i] if i in states and states[i].finished else TaskState(i, "CANCELLED", "")
        for i in range(job.count)
    ]


def preflight(partition: str | None = None) -> None:
    """Check before any work that sbatch exists, the controller answers and the partition
    is there; raises the same SlurmError submit() would. `grade --slurm` calls it first,
    so a wrong --partition costs nothing."""
    _require("sbatch", "Nothing was submitted")
    sinfo = _require("sinfo", "Nothing was submitted")
    try:
        proc = subprocess.run(
            [sinfo, "--noheader", "--format=%R"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _sbatch_error("Unable to contact slurm controller (sinfo timed out)", None).instead(
            "Nothing was submitted"
        ) from exc
    if proc.returncode != 0:
        raise _sbatch_error(proc.stderr, partition).instead("Nothing was submitted")
    known = sorted(set(proc.stdout.split()))
    if partition and partition not in known:
        raise _sbatch_error("Invalid partition name specified", partition).instead(
            "Nothing was submitted"
        )


class ArrayTask:
    """One command of an ArrayRunner, as a job of grade.py's Runner protocol: poll() gives
    its exit status once Slurm reports it finished, stop() and kill() cancel it."""

    def __init__(self, runner: ArrayRunner, index: int, key: str, into: Path) -> None:
        self.runner = runner
        self.index = index
        self.key = key
        self.into = into

    @property
    def state(self) -> TaskState | None:
        """Slurm's latest word on this task (None before the array is submitted)."""
        return self.runner.states.get(self.index)

    def poll(self) -> int | None:
        """The task's exit code once it finished (2 for a task that never ran to an exit:
        cancelled, timed out, node failure), else None. Cheap: squeue runs at most once per
        runner interval, whoever asks."""
        self.runner.refresh()
        state = self.state
        if state is None or not state.finished:
            return None
        if state.exit_code is not None:
            return state.exit_code
        return 128 + state.signal if state.signal else 2

    def stop(self) -> None:
        """Cancel the task (SIGTERM, then SIGKILL after the cluster's KillWait)."""
        self.runner.cancel_task(self.index)

    def kill(self) -> None:
        """Cancel with SIGKILL at once."""
        self.runner.cancel_task(self.index, hard=True)


class ArrayRunner:
    """grade.py's Runner for `grade --slurm`: every start()ed worker becomes one task of
    ONE array job, submitted at the first poll() (grade_class starts them all first, with
    --jobs set to their number; Slurm's --array=...%K is what limits how many run).

    command(key, into) gives each worker's command line; its output goes to into/LOG_NAME,
    and when a task ends Slurm's verdict in words is appended there too ("slurm: TIMEOUT:
    ran past its Slurm time limit"), so the log's tail, which grade shows for a worker that
    left no result, says why. The job's own files are in `workdir`.
    """

    LOG_NAME = "worker.log"

    def __init__(
        self,
        command: Callable[[str, Path], Sequence[str]],
        workdir: Path,
        *,
        partition: str | None = None,
        limit: int | None = None,
        chdir: Path | None = None,
        time_limit: str | None = None,
        job_name: str = "jdk-grade",
        interval: float = 2.0,
    ) -> None:
        self.command = command
        self.workdir = workdir
        self.partition = partition
        self.limit = limit
        self.chdir = chdir
        self.time_limit = time_limit
        self.job_name = job_name
        self.interval = interval
        self.tasks: list[ArrayTask] = []
        self.job: ArrayJob | None = None
        self.states: dict[int, TaskState] = {}
        self._polled_at = float("-inf")
        self._failing_since: float | None = None
        self._to_cancel: dict[int, bool] = {}

    def start(self, key: str, into: Path) -> ArrayTask:
        """Queue one worker; it is submitted with all the others at the first poll()."""
        if self.job is not None:
            raise RuntimeError("ArrayRunner: start() after the array was submitted")
        task = ArrayTask(self, len(self.tasks), key, into)
        self.tasks.append(task)
        return task

    def refresh(self) -> None:
        """Submit the array if not yet done, send pending cancels, and ask squeue again
        when the last answer is older than `interval`. Raises SlurmError when sbatch
        refuses, or squeue has failed for UNREACHABLE_FOR seconds."""
        if self.job is None and self._to_cancel:
            # Stopped before the first poll (Ctrl-C during sbatch): submit nothing now.
            self.states = {
                t.index: TaskState(t.index, "CANCELLED", "never submitted") for t in self.tasks
            }
            return
        if self.job is None:
            commands = [self.command(t.key, t.into) for t in self.tasks]
            self.job = submit(
                commands,
                self.workdir,
                limit=self.limit,
                partition=self.partition,
                chdir=self.chdir,
                time_limit=self.time_limit,
                job_name=self.job_name,
                logs=[t.into / self.LOG_NAME for t in self.tasks],
            )
        if self._to_cancel:
            self._send_cancels()
        now = time.monotonic()
        if now - self._polled_at < self.interval:
            return
        self._polled_at = now
        try:
            states = poll(self.job, self.states)
        except SlurmError:
            self._failing_since = self._failing_since or now
            if now - self._failing_since > UNREACHABLE_FOR:
                raise
            return
        self._failing_since = None
        for index, state in states.items():
            before = self.states.get(index)
            if state.finished and not (before is not None and before.finished):
                self._note(self.tasks[index], state)
        self.states = states

    def close(self) -> None:
        """Remove the job's files (task list, script, per-task results) once every task has
        finished; keep them otherwise, for a person to look into. Called by grade at the end."""
        finished = len(self.states) == len(self.tasks) and all(
            s.finished for s in self.states.values()
        )
        if self.job is None or finished:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _note(self, task: ArrayTask, state: TaskState) -> None:
        """Append Slurm's verdict to the task's log (for a person, and grade's table)."""
        try:
            with open(task.into / self.LOG_NAME, "a") as out:
                out.write(f"\nslurm: job {self.job_id}_{task.index}: {state.words()}\n")
        except OSError as exc:  # the worker's directory may be gone (committed already)
            log.debug("cannot note %s's end in %s: %s", task.key, task.into, exc)

    @property
    def job_id(self) -> str:
        return self.job.job_id if self.job else ""

    def cancel_task(self, index: int, hard: bool = False) -> None:
        """Mark a task to cancel; sent with the others in one scancel at the next refresh
        (Ctrl-C stops every worker at once: one call, not one per student)."""
        self._to_cancel[index] = self._to_cancel.get(index, False) or hard
        self._polled_at = float("-inf")  # the next poll() asks squeue again

    def _send_cancels(self) -> None:
        assert self.job is not None
        for hard in (False, True):
            indexes = sorted(i for i, h in self._to_cancel.items() if h is hard)
            if not indexes:
                continue
            argv = ["scancel", *(["--signal=KILL"] if hard else [])]
            argv.append(f"{self.job.job_id}_[{','.join(map(str, indexes))}]")
            try:
                subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("%s failed: %s", " ".join(argv), exc)
        self._to_cancel.clear()
