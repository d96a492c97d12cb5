"""`jupyter-docker-kernel grade`: a whole class graded N at a time, as nbgrader would.

The story (the slow one, run once): course101's ps1 is submitted by a class of 40: honest
and wrong students, some late (the course takes all points of a late submission), some
who deleted the test cell, and students whose code times out, eats memory, fork-bombs,
floods the output, or attacks the gradebook and classmates' files. Two copies of that
course are graded with the same kernel: one by `nbgrader autograde`, one by `grade --jobs
2`. Every gradebook row and every graded notebook must agree. Then a smaller class is
interrupted with Ctrl-C mid-run and graded again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import grade, grade_worker
from jupyter_docker_kernel.notice import kill_words
from jupyter_docker_kernel.rundir import runtime_base
from tests.conftest import OUR_LABEL, install_kernel
from tests.courses import (
    COURSE_ID,
    PS1_SOLUTION,
    PS1_TESTS,
    course_config,
    make_dirs,
    nbgrader,
    nbgrader_cell,
    new_course,
    read_json,
)

GRADER = "jdk-test-grade"
#: Per cell, in both runs (config lines): short, so the class takes minutes, not hours.
CELL_TIMEOUT = 5
LIMITS = ("--memory", "256m", "--pids-limit", "128", "--output-budget", "8m",
          "--max-message", "2m")  # fmt: skip
DUE = "2026-11-25 00:00:00 UTC"
ON_TIME = "2026-11-24 12:00:00.000000 UTC"
LATE = "2026-11-26 12:00:00.000000 UTC"
RIGHT = "def add(a, b):\n    return a + b"
WRONG = "def add(a, b):\n    return a - b"
SLOW = "import time\ntime.sleep(600)\n" + RIGHT
HUNGRY = "blocks = []\nwhile True:\n    blocks.append(b'x' * (32 << 20))\n" + RIGHT
FORKER = (
    """\
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children += 1
print('forked', children)
"""
    + RIGHT
)
#: 1 MiB per message (flushed), 32 in all: over the output budget, not over --max-message.
FLOODER = "for _ in range(32):\n    print('x' * (1 << 20), flush=True)\n" + RIGHT
#: Writes, through the relative paths it can guess, where a grader keeps results: the course's
#: gradebook, a classmate's graded notebook, and its own worker's result file and
#: gradebook copy (relative to the notebook's dir DIR/autograded/STUDENT/ps1).
ATTACKER = """\
MARK = 'PW' + 'NED'
tried = []
for target in ['../../../result.json', '../../../gradebook.db', '../../../../gradebook.db',
               '../../../../../gradebook.db', '../../../../../../gradebook.db',
               '../../../../../../autograded/s00/ps1/ps1.ipynb', '../../s00/ps1/ps1.ipynb']:
    try:
        with open(target, 'w') as fh:
            fh.write(MARK)
        tried.append('wrote ' + target)
    except OSError as exc:
        tried.append(target + ' ' + type(exc).__name__)
print(tried)
def add(a, b):
    return 0
"""
#: The class: 40 students, (answer, timestamp, keep the test cell) each.
CLASS: dict[str, tuple[str, str, bool]] = {}
for _i in range(16):
    CLASS[f"s{_i:02d}"] = (RIGHT, LATE if _i % 5 == 4 else ON_TIME, True)
for _i in range(16, 24):
    CLASS[f"s{_i:02d}"] = (WRONG, LATE if _i % 5 == 4 else ON_TIME, True)
CLASS["s24"] = (RIGHT, ON_TIME, False)
CLASS["s25"] = (WRONG, LATE, False)
for _i, (_answer, _count) in enumerate(
    [(SLOW, 3), (HUNGRY, 3), (FORKER, 3), (FLOODER, 3), (ATTACKER, 2)]
):
    for _j in range(_count):
        CLASS[f"h{_i}{_j}"] = (_answer, ON_TIME, True)
assert len(CLASS) == 40


def install_grader(kernel_image: str) -> None:
    install_kernel(GRADER, kernel_image, "--for-nbgrader", *LIMITS)


def build_course(root: Path, students: dict[str, tuple[str, str, bool]]) -> Path:
    """course101 at root: ps1 (add, 2 points) due DUE, late work worth nothing, graded by
    GRADER; each student's submission as given."""
    course = new_course(root, sorted(students))
    config = course / "nbgrader_config.py"
    config.write_text(
        course_config(course) + f"c.ExecutePreprocessor.kernel_name = {GRADER!r}\n"
        f"c.ExecutePreprocessor.timeout = {CELL_TIMEOUT}\n"
        # nbclient waits 4 s for a cell's output after its reply, then fails the whole
        # submission; on a loaded 2-core machine an interrupted cell's output can take longer.
        "c.ExecutePreprocessor.iopub_timeout = 30\n"
        "c.LateSubmissionPlugin.penalty_method = 'zero'\n"
    )
    nbgrader(course, "db", "assignment", "add", "ps1", f"--duedate={DUE}")
    source = make_dirs(course, "source", "ps1") / "ps1.ipynb"
    source.write_text(
        json.dumps(
            {
                "nbformat": 4,
                "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
                "cells": [
                    nbgrader_cell(PS1_SOLUTION, "answer", solution=True),
                    nbgrader_cell(PS1_TESTS, "tests", grade=True, locked=True, points=2),
                ],
            }
        )
    )
    nbgrader(course, "generate_assignment", "ps1", "--force")
    released = read_json(course / "release" / "ps1" / "ps1.ipynb")
    for student, (answer, stamp, keep_tests) in students.items():
        notebook = json.loads(json.dumps(released))
        notebook["cells"][0]["source"] = answer
        if not keep_tests:
            del notebook["cells"][1]
        target = make_dirs(course, "submitted", student, "ps1")
        (target / "ps1.ipynb").write_text(json.dumps(notebook))
        (target / "timestamp.txt").write_text(stamp)
    return course


def copy_course(course: Path, root: Path) -> Path:
    """The same course at root (its config's paths pointed at the copy)."""
    shutil.copytree(course, root, symlinks=True)
    config = root / "nbgrader_config.py"
    config.write_text(config.read_text().replace(str(course), str(root)))
    return root


def gradebook_rows(course: Path) -> dict[str, Any]:
    """Every row autograde can write, keyed by names (ids are random per run)."""
    from nbgrader.api import Gradebook

    out: dict[str, Any] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gb:
        for student in gb.students:
            out[f"student {student.id}"] = (student.first_name, student.last_name, student.email)
        for sub in gb.find_assignment("ps1").submissions:
            key = f"{sub.student.id}/ps1"
            out[key] = (str(sub.timestamp), sub.extension, float(sub.score))
            for nb in sub.notebooks:
                out[f"{key}/{nb.name}"] = (nb.late_submission_penalty, nb.flagged)
                for g in nb.grades:
                    out[f"{key}/{nb.name}/grade/{g.name}"] = (
                        g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade
                    )  # fmt: skip
                for c in nb.comments:
                    out[f"{key}/{nb.name}/comment/{c.name}"] = (c.auto_comment, c.manual_comment)
    return out


def graded_notebooks(course: Path) -> dict[str, Any]:
    """Each autograded file (mode, and for notebooks each cell's source and output kinds:
    output text differs between two runs of a flood or a fork count)."""
    out: dict[str, Any] = {}
    for path in sorted((course / "autograded").rglob("*")):
        key = str(path.relative_to(course))
        mode = oct(path.stat().st_mode & 0o777)
        if path.suffix == ".ipynb":
            cells = read_json(path)["cells"]
            out[key] = (
                mode,
                [
                    (c["source"], [(o["output_type"], o.get("ename")) for o in c["outputs"]])
                    for c in cells
                ],
            )
        elif path.is_file():
            out[key] = (mode, path.read_bytes())
        else:
            out[key] = mode
    return out


def containers_left(course: Path, within: float = 5) -> list[str]:
    """our_containers(course) once they are gone or `within` s passed: an interrupted
    kernel ends when its lifeline closes (the supervisor ends it, --rm removes it), which
    takes up to a few seconds after grade returns, not at once. grade's own sweep
    (ForkRunner.close) covers a kernel whose lifeline was never reached, which would
    otherwise take the supervisor's LIFELINE_WAIT_SECONDS and more; a warm container a
    worker was claiming when it stopped still ends by its claim connection's EOF."""
    deadline = time.monotonic() + within
    while (left := our_containers(course)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def our_containers(course: Path) -> list[str]:
    """Our kernel containers (any state) whose mounts or copies name a path in the course."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={OUR_LABEL}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return []
    proc = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
    return [c["Id"][:12] for c in json.loads(proc.stdout or "[]") if str(course) in json.dumps(c)]


def run_grade(course: Path, *args: str, timeout: float = 600) -> tuple[int, str, float]:
    """`jupyter-docker-kernel grade ps1 ARGS` in the course; (exit code, output, seconds)."""
    exe = str(Path(sys.executable).with_name("jupyter-docker-kernel"))
    began = time.monotonic()
    proc = subprocess.run(
        [exe, "grade", "ps1", *args],
        cwd=course,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - began
    print(f"$ grade ps1 {' '.join(args)} (exit {proc.returncode}, {seconds:.1f} s)")
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    return proc.returncode, proc.stdout, seconds


def run_nbgrader_autograde(course: Path) -> float:
    """`nbgrader autograde ps1` (exit 1: some submissions fail; not asserted); seconds."""
    exe = str(Path(sys.executable).with_name("nbgrader"))
    began = time.monotonic()
    proc = subprocess.run(
        [exe, "autograde", "ps1"], cwd=course, capture_output=True, text=True, timeout=900
    )
    seconds = time.monotonic() - began
    output = proc.stdout + proc.stderr
    (course.parent / f"{course.name}.log").write_text(output)
    print(f"$ nbgrader autograde ps1 (exit {proc.returncode}, {seconds:.1f} s)")
    print("\n".join(line for line in output.splitlines() if "ERROR" in line)[-5000:])
    return seconds


# -- the class of 40 ---------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(1500)
def test_grade_jobs_2_gives_what_nbgrader_autograde_gives(
    kernel_image: str, tmp_path: Path
) -> None:
    """The class of 40 graded by `nbgrader autograde` and by `grade --jobs 2` with the same
    kernel: the same gradebook rows (scores, late penalties, timestamps, manual flags,
    comments), the same graded notebooks, the same failed submissions; each failure's
    reason in words; the attackers changed nothing but their own zero; no container left."""
    install_grader(kernel_image)
    sequential = build_course(tmp_path / "by-nbgrader", CLASS)
    parallel = copy_course(sequential, tmp_path / "by-grade")

    run_nbgrader_autograde(sequential)
    code, _, _ = run_grade(parallel, "--jobs", "2", "--json", str(tmp_path / "grade.json"))

    report = {
        r["student"]: r for r in json.loads((tmp_path / "grade.json").read_text())["students"]
    }
    assert code == 1  # some submissions failed, as nbgrader's own exit says
    assert gradebook_rows(parallel) == gradebook_rows(sequential)
    assert graded_notebooks(parallel) == graded_notebooks(sequential)
    assert {s for s in CLASS if not (sequential / "autograded" / s / "ps1").exists()} == {
        s for s, r in report.items() if r["status"] == "failed"
    }
    assert report["s00"]["score"] == 2.0
    assert report["s16"]["score"] == 0.0
    assert all("cell timeout" in report[f"h0{j}"]["reason"] for j in range(3))
    assert all(report[f"h1{j}"]["reason"] == "out of memory at 256 MiB" for j in range(3))
    assert all(report[f"h3{j}"]["reason"] == "output budget exceeded" for j in range(3))
    assert all(report[f"h4{j}"]["score"] == 0.0 for j in range(2))
    db = sqlite3.connect(parallel / "gradebook.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    assert b"PWNED" not in (parallel / "gradebook.db").read_bytes()
    assert not (parallel / grade.SPOOL).exists()
    assert our_containers(parallel) == []


# -- the worker step, as another scheduler runs it ------------------------------------------


@pytest.mark.docker
def test_the_worker_step_writes_only_into_its_dir(kernel_image: str, tmp_path: Path) -> None:
    """`grade ps1 --one s00 --into DIR` (what a Slurm task or a node runs) grades s00 into
    DIR and leaves the course's gradebook and autograded/ as they were."""
    install_grader(kernel_image)
    course = build_course(tmp_path / "course", {"s00": (RIGHT, LATE, True)})
    before = (course / "gradebook.db").read_bytes()
    into = tmp_path / "spool" / "s00"
    exe = str(Path(sys.executable).with_name("jupyter-docker-kernel"))

    proc = subprocess.run(
        [exe, "grade", "ps1", "--one", "s00", "--into", str(into)],
        cwd=course,
        capture_output=True,
        text=True,
        timeout=300,
    )

    print(proc.stdout[-3000:], proc.stderr[-3000:])
    result = grade_worker.read_result(into)
    assert proc.returncode == 0
    assert (result.status, result.score, result.max_score) == ("graded", 2.0, 2.0)
    assert result.rows["notebooks"]["ps1"]["late_submission_penalty"] == 2.0
    assert (into / "autograded" / "s00" / "ps1" / "ps1.ipynb").is_file()
    assert sorted(p.name for p in into.iterdir()) == ["autograded", "nbgrader.log", "result.json"]
    assert (course / "gradebook.db").read_bytes() == before
    assert not (course / "autograded" / "s00").exists()


@pytest.mark.docker
def test_a_provisioner_kernel_is_removed_at_once_when_its_submission_is_done(
    kernel_image: str, tmp_path: Path
) -> None:
    """Issue 14: with one of our provisioner's kernelspecs, the worker has nbclient end
    each kernel with an immediate shutdown (the container removed, its kept record says
    the client killed it) instead of waiting for the kernel's own exit; the grade and
    the reason are as before (none: a kill we asked for is no failure)."""
    from jupyter_docker_kernel import kernel_log

    name = f"{GRADER}-prov"
    install_kernel(name, kernel_image, "--for-nbgrader", "--provisioner", *LIMITS)
    course = build_course(tmp_path / "course", {"s00": (RIGHT, ON_TIME, True)})
    config = course / "nbgrader_config.py"
    config.write_text(config.read_text().replace(repr(GRADER), repr(name)))
    into = tmp_path / "spool" / "s00"
    exe = str(Path(sys.executable).with_name("jupyter-docker-kernel"))
    since = time.time()

    proc = subprocess.Popen(
        [exe, "grade", "ps1", "--one", "s00", "--into", str(into)],
        cwd=course,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=300)

    print(out[-3000:], err[-3000:])
    result = grade_worker.read_result(into)
    assert proc.returncode == 0
    assert (result.status, result.score, result.reason) == ("graded", 2.0, "")
    records = [
        json.loads(path.read_text())
        for path in (runtime_base() / kernel_log.LOG_DIR).glob("*.json")
        if path.stat().st_mtime >= since - 1
    ]
    ours = [r for r in records if r.get("client_pid") == proc.pid]
    assert [r.get("exit_reason") for r in ours] == ["killed by the Jupyter client"]
    assert our_containers(course) == []


def test_a_courses_own_shutdown_kernel_is_kept() -> None:
    """The immediate shutdown is grade's default, never over the course's own choice."""
    from traitlets.config import Config

    config = Config()
    config.ExecutePreprocessor.shutdown_kernel = "graceful"
    config.ExecutePreprocessor.kernel_name = GRADER
    assert not grade_worker.remove_kernels_at_once(config)
    assert config.ExecutePreprocessor.shutdown_kernel == "graceful"
    assert "shutdown_kernel" not in config.Execute


# -- Ctrl-C and the rerun ---------------------------------------------------------------------

SMALL = {f"r{i}": ("import time\ntime.sleep(2)\n" + RIGHT, ON_TIME, True) for i in range(8)}


def interrupt_after_two(course: Path, *options: str) -> tuple[int, set[str]]:
    """Run `grade ps1 OPTIONS` in course, Ctrl-C it once two students are graded; its exit
    code and the students with an autograded dir then (also test_grade_slurm's)."""
    exe = str(Path(sys.executable).with_name("jupyter-docker-kernel"))
    proc = subprocess.Popen(
        [exe, "grade", "ps1", *options],
        cwd=course,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for text in proc.stdout:
        lines.append(text)
        if sum(": graded" in x for x in lines) >= 2:
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    print("".join(lines) + rest)
    return proc.returncode, {p.name for p in (course / "autograded").iterdir()}


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_ctrl_c_keeps_finished_students_and_a_rerun_grades_the_rest(
    kernel_image: str, tmp_path: Path
) -> None:
    """Ctrl-C after the second student: grade exits 130, the finished students are in the
    gradebook with their graded notebooks, the unfinished ones have neither, no container
    is left; a rerun (no --force) grades exactly the rest, and every student ends with 2."""
    install_grader(kernel_image)
    course = build_course(tmp_path / "course", SMALL)
    returncode, done = interrupt_after_two(course, "--jobs", "2")
    scores = {k.split("/")[0]: v[2] for k, v in gradebook_rows(course).items() if k.count("/") == 1}

    assert returncode == 130
    assert 2 <= len(done) < len(SMALL)
    assert {s for s, score in scores.items() if score == 2.0} == done
    assert not any(course.glob("autograded/*/.ps1.*"))
    assert containers_left(course) == []
    assert set(grade.read_journal(course / grade.SPOOL / "ps1")) == set(SMALL) - done

    code, out, _ = run_grade(course, "--jobs", "2")

    again = [line.split(":")[0].split("] ")[-1] for line in out.splitlines() if ": graded" in line]
    scores = {k.split("/")[0]: v[2] for k, v in gradebook_rows(course).items() if k.count("/") == 1}
    assert code == 0
    assert sorted(again) == sorted(set(SMALL) - done)
    assert scores == dict.fromkeys(SMALL, 2.0)
    assert not (course / grade.SPOOL).exists()
    assert our_containers(course) == []


def test_ctrl_c_while_a_worker_is_forked_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that arrives while the interpreter runs its at-fork handlers (where an
    exception is printed and dropped) still interrupts the parent; the new worker is
    known to the runner, whose close() ends it."""
    from jupyter_docker_kernel import provisioner

    plan = grade.Plan("ps1", tmp_path, "sqlite:///x.db", "c", "autograded",
                      lambda *a: "", students=[])  # fmt: skip
    # No kernel here: the runner need not register this process with a resident helper.
    monkeypatch.setattr(provisioner, "ensure_janitor", lambda engine: None)
    runner = grade.ForkRunner(plan)

    def start_then_wait() -> None:
        runner.start("s00", tmp_path)
        time.sleep(1)

    real_fork = os.fork
    # A Ctrl-C goes to the process and any thread that does not block it may take it
    # (CI: one left by an earlier test took it past a blocked signal mask). Sent to such a
    # thread here, every time.
    other_done = threading.Event()
    other = threading.Thread(target=other_done.wait, daemon=True)
    other.start()

    def fork_then_ctrl_c() -> int:
        # As an at-fork hook would: a Ctrl-C in the parent right after ITS fork (a global
        # at-fork hook also fired for other forks an earlier test's threads made).
        pid = real_fork()
        if pid:
            assert other.ident is not None
            signal.pthread_kill(other.ident, signal.SIGINT)
            time.sleep(0.05)  # the main thread runs Python handlers between bytecodes
        return pid

    monkeypatch.setattr(os, "fork", fork_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            start_then_wait()
        monkeypatch.setattr(os, "fork", real_fork)
        assert len(runner.workers) == 1
    finally:
        monkeypatch.setattr(os, "fork", real_fork)
        runner.close(grace=10)
        other_done.set()
    assert runner.workers == []


# -- no engine: the parent's checks ---------------------------------------------------------


def result_for(student: str, **rows: Any) -> grade_worker.Result:
    return grade_worker.Result(
        assignment="ps1", student=student, status="graded", seconds=1.0, rows=rows
    )


def test_a_result_for_another_student_is_refused() -> None:
    """A worker's result can only be committed for the student the parent asked it to grade."""
    with pytest.raises(ValueError, match="not 'alice'"):
        grade.check_result(result_for("bob", timestamp=None, notebooks={}), "ps1", "alice")


def test_a_result_with_a_forged_score_type_is_refused() -> None:
    """Rows must be what rows_of writes: a score that is not a number is refused."""
    rows = {"ps1": {"grades": {"tests": {"auto_score": "2", "needs_manual_grade": False}}}}

    with pytest.raises(ValueError, match="auto_score"):
        grade.check_result(result_for("alice", timestamp=None, notebooks=rows), "ps1", "alice")


@pytest.mark.parametrize(
    ("notice", "words"),
    [
        ("Kernel stopped: out of memory (limit 2 GiB). Restart", "out of memory at 2 GiB"),
        ("Kernel stopped: output budget of 64m exceeded (the kernel", "output budget exceeded"),
        ("Kernel stopped: maximum lifetime of 300 s reached. Restart", "lifetime of 300 s reached"),
        ("Kernel stopped after hitting the pids limit (processes", "pids limit hit"),
        ("", ""),
    ],
)  # fmt: skip
def test_kill_words_say_why_in_a_few_words(notice: str, words: str) -> None:
    assert kill_words(notice) == words


def test_nbgrader_options_pass_through_grade() -> None:
    """--Class.trait=value options after `grade` go to nbgrader, not to our parser."""
    from jupyter_docker_kernel.cli import split_nbgrader_args

    argv = ["grade", "ps1", "--jobs", "2", "--ExecutePreprocessor.timeout=5"]

    assert split_nbgrader_args(argv) == (argv[:4], ["--ExecutePreprocessor.timeout=5"])
    assert split_nbgrader_args(["setup", "--Foo.bar=1"]) == (["setup", "--Foo.bar=1"], [])


def test_the_journal_lists_what_an_interrupted_run_left(tmp_path: Path) -> None:
    grade.write_journal(tmp_path, ["b", "a"])
    assert grade.read_journal(tmp_path) == ["a", "b"]
    grade.write_journal(tmp_path, [])
    assert grade.read_journal(tmp_path) == []
    assert os.listdir(tmp_path) == []


# -- the local runner's long-lived workers (no engine: grade_worker.main replaced) -------------


def fake_main(
    assignment: str,
    student: str,
    into: Path,
    gradebook: Path | None,
    nbgrader_args: list[str],
    scratch: Path | None = None,
) -> int:
    """Stands in for grade_worker.main in ForkRunner's workers (inherited by fork): notes
    the process and what earlier submissions left in it, then leaves some of its own."""
    import logging

    ours = logging.getLogger("jupyter_docker_kernel")
    seen = {"pid": os.getpid(), "path": len(sys.path), "handlers": len(ours.handlers)}
    (into / "seen.json").write_text(json.dumps(seen))
    sys.path.insert(0, str(into))  # as nbgrader's init_syspath does, each time
    ours.addHandler(logging.NullHandler())  # as the provisioner's share_log does
    if student == "crash":
        os._exit(3)
    if student == "slow":
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            return 130
    return 0


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ForkRunner for a course at tmp_path whose workers run fake_main."""
    from jupyter_docker_kernel import provisioner

    monkeypatch.setattr(provisioner, "ensure_janitor", lambda engine: None)
    monkeypatch.setattr(grade_worker, "main", fake_main)
    plan = grade.Plan("ps1", tmp_path, "sqlite:///gb.db", "c", "autograded",
                      lambda *parts: "/".join(parts), students=[])  # fmt: skip
    runner = grade.ForkRunner(plan)
    yield runner
    runner.close(grace=5)


def finish(runner: Any, student: str, tmp_path: Path) -> tuple[int | None, dict[str, int]]:
    """Hand `student` to the runner and wait for its job's end: the code and what it saw."""
    into = tmp_path / student
    into.mkdir()
    job = runner.start(student, into)
    deadline = time.monotonic() + 30
    while job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = read_json(into / "seen.json") if (into / "seen.json").exists() else {}
    return job.poll(), seen


def test_one_local_worker_grades_one_submission_after_another_in_one_process(
    runner: Any, tmp_path: Path
) -> None:
    """With one job at a time, every submission goes to the same forked worker process, and
    each starts with what the one before left reset (sys.path, our log handlers)."""
    results = [finish(runner, f"s{i}", tmp_path) for i in range(3)]

    assert [code for code, _ in results] == [0, 0, 0]
    assert len({seen["pid"] for _, seen in results}) == 1
    assert results[0][1]["pid"] != os.getpid()
    assert len({(seen["path"], seen["handlers"]) for _, seen in results}) == 1
    assert len(runner.workers) == 1


def test_a_crashed_local_worker_is_replaced_by_a_new_one(runner: Any, tmp_path: Path) -> None:
    """A worker that dies mid-submission reports its exit code; the next submission gets a
    new worker process."""
    crashed = finish(runner, "crash", tmp_path)
    after = finish(runner, "s1", tmp_path)

    assert crashed[0] == 3
    assert after[0] == 0
    assert after[1]["pid"] != crashed[1]["pid"]


def stop_slow(runner: Any, tmp_path: Path) -> Any:
    """Start the "slow" submission, stop() it (Ctrl-C's SIGTERM) once it runs, and wait up
    to 10 s for its job to end; the job."""
    into = tmp_path / "slow"
    into.mkdir()
    job = runner.start("slow", into)
    while not (into / "seen.json").exists():
        time.sleep(0.01)
    job.stop()
    deadline = time.monotonic() + 10
    while job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return job


def test_stopping_a_local_workers_submission_ends_the_worker(runner: Any, tmp_path: Path) -> None:
    """Ctrl-C's stop(): the worker's submission is interrupted (130) and the worker ends."""
    job = stop_slow(runner, tmp_path)

    assert job.poll() == 130
    assert runner.workers[0].code is not None


def test_closing_after_a_stopped_worker_sweeps_the_engine(
    runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker Ctrl-C stopped may have been starting a kernel: close() sweeps the engine
    for what dead launchers left (a container its lifeline never reached) once."""
    sweeps: list[str] = []
    monkeypatch.setattr(grade, "sweep_after_workers", lambda: sweeps.append("swept"))
    stop_slow(runner, tmp_path)

    runner.close(grace=5)

    assert sweeps == ["swept"]


def test_closing_after_workers_that_only_graded_does_not_sweep(
    runner: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers that end at EOF (exit 0) left nothing: close() does not sweep the engine."""
    sweeps: list[str] = []
    monkeypatch.setattr(grade, "sweep_after_workers", lambda: sweeps.append("swept"))
    assert finish(runner, "s0", tmp_path)[0] == 0

    runner.close(grace=5)

    assert sweeps == []


def test_kernel_records_kept_before_a_submission_are_not_its_reasons(tmp_path: Path) -> None:
    """A long-lived worker's earlier kernels have its pid too, and may have started less
    than a second before this submission: those kept before it began are not counted."""
    logs = tmp_path / "logs"
    logs.mkdir()
    now = time.time()
    earlier = {"client_pid": 42, "started": now - 0.5, "exit_code": 137,
               "notice": "Kernel stopped: out of memory (limit 256 MiB). Restart"}  # fmt: skip
    (logs / "earlier.json").write_text(json.dumps(earlier))
    before = grade_worker.kernel_records(tmp_path)
    (logs / "this.json").write_text(json.dumps({"client_pid": 42, "started": now + 0.1}))

    assert grade_worker.kernel_reasons(42, now, tmp_path) == ["out of memory at 256 MiB"]
    assert grade_worker.kernel_reasons(42, now, tmp_path, before=before) == []


class Quiet:
    """grade_class's Events, ignored."""

    def started(self, student: str) -> None: ...
    def done(self, outcome: grade.Outcome) -> None: ...
    def stopping(self, running: int) -> None: ...
    def tick(self) -> None: ...


def test_a_finished_workers_next_submission_starts_before_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot of a finished submission goes to the next one first, then the parent
    commits: a worker never waits for the gradebook write of what it finished."""
    order: list[str] = []

    class Done:
        def poll(self) -> int | None:
            return 0

        def stop(self) -> None: ...
        def kill(self) -> None: ...

    class Runner:
        def start(self, student: str, into: Path) -> Done:
            order.append(f"start {student}")
            return Done()

    def commit(plan: grade.Plan, student: str, into: Path) -> grade.Outcome:
        order.append(f"commit {student}")
        return grade.Outcome(student, "graded")

    monkeypatch.setattr(grade, "commit", commit)
    plan = grade.Plan("ps1", tmp_path, "sqlite:///gb.db", "c", "autograded",
                      lambda *parts: "/".join(parts), students=["a", "b"])  # fmt: skip

    grade.grade_class(plan, Runner(), 1, Quiet())

    assert order == ["start a", "start b", "commit a", "commit b"]


def test_closing_one_local_runner_ends_its_idle_worker_while_another_runner_has_one(
    runner: Any, tmp_path: Path
) -> None:
    """grade --node runs a ForkRunner per node: a worker forked by one must not hold the
    other's command pipe open, or closing that one waits and then kills its idle worker."""
    other = grade.ForkRunner(runner.plan)
    assert finish(runner, "s0", tmp_path)[0] == 0
    assert finish(other, "s1", tmp_path)[0] == 0
    worker = runner.workers[0]

    runner.close(grace=5)
    other.close(grace=5)

    assert worker.code == 0  # ended by its EOF, not killed


def test_a_local_workers_reply_wakes_the_parent_before_its_poll_interval() -> None:
    replies_in, replies_out = os.pipe()
    worker = grade.Worker(pid=-1, commands=-1, replies=replies_in)
    try:
        os.write(replies_out, b"0\n")
        began = time.monotonic()
        grade.wait_for_a_job([grade.WorkerJob(worker)], timeout=5)
        assert time.monotonic() - began < 1
        assert grade.WorkerJob(worker).poll() == 0
    finally:
        os.close(replies_in)
        os.close(replies_out)


def test_gradebooks_opened_on_one_url_share_one_engine_while_installed(tmp_path: Path) -> None:
    from nbgrader.api import Gradebook

    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    engines = grade_worker.SharedEngines()
    engines.install()
    try:
        with Gradebook(url) as first, Gradebook(url) as second:
            assert first.engine is second.engine
        with Gradebook(url) as third:  # usable after a Gradebook's close() disposed it
            third.add_student("s1")
            assert first.engine is third.engine
    finally:
        engines.uninstall()
    with Gradebook(url) as after:
        assert after.engine is not first.engine
        assert [s.id for s in after.students] == ["s1"]


def test_a_forked_child_does_not_use_its_parents_gradebook_engine(tmp_path: Path) -> None:
    from nbgrader.api import Gradebook

    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    engines = grade_worker.SharedEngines()
    engines.install()
    try:
        with Gradebook(url) as parents:
            engine_id = id(parents.engine)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with Gradebook(url) as childs:
                    code = 0 if id(childs.engine) != engine_id else 3
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    finally:
        engines.uninstall()
