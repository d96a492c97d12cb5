"""`grade ASSIGNMENT [--jobs N]`: nbgrader's autograde of a whole class, N submissions at a time.

The result is what `nbgrader autograde ASSIGNMENT` gives (same gradebook rows and scores,
same autograded notebooks, timestamps, late penalties and missing notebooks), because every
submission is graded by nbgrader's own AutogradeApp; only the scheduling is ours.

The contract between the parent (this module) and its workers (grade_worker.py):

* **A worker** is one command, run with the course directory as its working directory, on
  this machine or any other that sees the course (a Slurm array task, a remote node):

      jupyter-docker-kernel grade ASSIGNMENT --one STUDENT --into DIR [--gradebook SNAPSHOT]
          [--Class.trait=value ...]        (the same nbgrader options the parent was given)

  It reads the course (nbgrader_config.py, source/, submitted/STUDENT/) and the gradebook
  (a read-only online copy of gradebook.db, or SNAPSHOT, into a private local temporary
  directory, removed at the end), and writes ONLY in DIR:
  DIR/autograded/STUDENT/ASSIGNMENT/ (nbgrader's output: the graded notebooks, the copied
  files, 0444 as nbgrader sets them), DIR/nbgrader.log, and last, atomically,
  DIR/result.json (grade_worker.Result: status "graded" or "failed", score, seconds, reason
  in words, and the rows autograde wrote for this student). Exit 0 graded, 1 failed; no
  result.json means no result, whatever the exit code (the worker's output says why;
  LocalRunner keeps it in DIR/worker.log).
* **The parent** (grade_class) plans which submissions to grade (nbgrader's own rules:
  not yet graded, newer than the graded copy, or --force; plus what an interrupted run
  left), gives each worker a fresh DIR in the spool (COURSE/.jupyter-docker-kernel-grade/
  ASSIGNMENT/STUDENT), starts at most N workers through a Runner, and, as each one ends,
  commits its result (commit()): it is the ONLY writer of gradebook.db and autograded/.
  A Runner is anything with `start(student, into) -> Job` (Job: `poll()`, `stop()`,
  `kill()`). ForkRunner (the local default) runs the worker step in a child forked from
  the parent, which has imported nbgrader already; CommandRunner runs the command itself
  as a local process, the model for a Slurm runner (sbatch the command, poll the task,
  scancel), whose Job polls for the task. On remote nodes (grade_nodes.NodeRunner) the
  workers stay local runners' and only their kernels go to the nodes. The
  parent never reads a worker's gradebook copy, only result.json, so a runner on another
  machine needs a shared course directory (or to copy DIR back) and nothing else.

Why one writer and per-worker copies, not workers writing the gradebook. SQLite allows one
writer at a time; N nbgrader processes on one gradebook.db meet "database is locked" (nbgrader
issue 174), and a worker on another machine cannot lock a file over NFS safely at all. A
read-only view for the workers with the parent replaying nbgrader's gradebook-writing
preprocessors would split nbgrader's converter in two and re-run half of it in the parent.
Instead each worker runs all of nbgrader, unchanged, against its own copy, and the parent
copies back exactly the fields autograde writes for that one student (the student row if
new, the submission's timestamp, per notebook the late penalty, per cell auto_score,
needs_manual_grade and auto_comment) through nbgrader's Gradebook API, in one commit.
Manual grades are never touched. A result can only name its own student: commit() refuses
one for another student, assignment, notebook or cell.

Interrupts: the parent holds SIGINT while it commits, so a student is committed entirely
or not at all (the gradebook first, then the autograded directory renamed into place);
on Ctrl-C it sends each worker SIGTERM (nbgrader's own KeyboardInterrupt path shuts the
kernel down, its container removed), kills what has not ended after STOP_GRACE seconds,
deletes their DIRs and keeps the list of ungraded students in the spool's journal; a rerun
grades those (and whatever else nbgrader's rules pick).
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.grade_worker import (
    AUTOGRADED,
    Result,
    SharedEngines,
    read_result,
    sqlite_path,
)

#: The spool directory in the course root (hidden: nbgrader's globs never see it).
SPOOL = ".jupyter-docker-kernel-grade"
#: The spool's record of an interrupted run: the students it left ungraded.
JOURNAL = "todo.json"
#: Seconds a worker has to end after SIGTERM before it is killed.
STOP_GRACE = 20.0
#: How often the parent looks at its workers.
POLL = 0.05
#: How much of a failed worker's log the table's reason carries.
LOG_TAIL = 300


@dataclass
class Outcome:
    """One student's line in the final table (and in --json)."""

    student: str
    #: graded, failed (nbgrader failed the submission), error (no usable result),
    #: interrupted (Ctrl-C came first), skipped (not graded: already graded).
    status: str
    score: float | None = None
    max_score: float | None = None
    seconds: float | None = None
    reason: str = ""


@dataclass
class Plan:
    """What grade_class will do: the course as nbgrader reads it and whom to grade."""

    assignment: str
    root: Path
    db_url: str
    course_id: str
    #: nbgrader's autograded directory name (relative to root, as in its config).
    autograded: str
    #: The course's CourseDirectory.format_path (for the destination of a student).
    format_path: Callable[[str, str, str], str]
    students: list[str]
    skipped: list[str] = field(default_factory=list)
    nbgrader_args: tuple[str, ...] = ()
    force: bool = False

    @property
    def spool(self) -> Path:
        return self.root / SPOOL / self.assignment

    def destination(self, student: str) -> Path:
        return Path(self.format_path(self.autograded, student, self.assignment))


def plan(
    assignment: str,
    *,
    students: list[str] | None = None,
    force: bool = False,
    nbgrader_args: tuple[str, ...] = (),
) -> Plan:
    """Read the course in the working directory as `nbgrader autograde` does and decide
    whom to grade: its own submission glob, its rules for what is already graded
    (BaseConverter.init_destination, without its side effects: the old graded copy stays
    until the new one replaces it), plus the students an interrupted run left (JOURNAL).
    `students`: ids or globs (--student), default all."""
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.apps.autogradeapp import AutogradeApp
    from nbgrader.converters import Autograde, NbGraderException

    app = AutogradeApp()
    try:
        app.initialize([assignment, *nbgrader_args])
    except SystemExit as exc:
        raise DockerKernelError(
            f"nbgrader could not read the course's configuration (exit {exc.code})",
            "Nothing was graded",
            "Run `nbgrader autograde --help-all` to check the options; fix nbgrader_config.py.",
        ) from None
    coursedir = app.coursedir
    coursedir.assignment_id = assignment
    if sqlite_path(coursedir.db_url) is None:
        raise DockerKernelError(
            f"the course's gradebook is not an SQLite file ({coursedir.db_url})",
            "Nothing was graded",
            "grade gives each worker a copy of gradebook.db; use `nbgrader autograde` for a "
            "gradebook on a database server.",
        )
    with Gradebook(coursedir.db_url, coursedir.course_id) as gb:
        try:
            gb.find_assignment(assignment)
        except MissingEntry:
            raise DockerKernelError(
                f"no assignment with ID {assignment!r} exists in the gradebook",
                "Nothing was graded",
                f"Run `nbgrader generate_assignment {assignment}` first.",
            ) from None
    converter = Autograde(coursedir=coursedir, parent=app)
    try:
        converter.init_notebooks()
    except NbGraderException as exc:
        raise DockerKernelError(
            f"nbgrader found no submissions of {assignment}: {exc}",
            "Nothing was graded",
            "Check the assignment's name and the submitted/ directory.",
        ) from None
    pattern = converter._format_source("(?P<assignment_id>.*)", "(?P<student_id>.*)", escape=True)
    found: dict[str, list[str]] = {}
    for path, notebooks in sorted(converter.assignments.items()):
        match = re.match(pattern, path)
        if match:
            found[match.group("student_id")] = sorted(notebooks)
    if students:
        found = {s: n for s, n in found.items() if any(fnmatch.fnmatch(s, g) for g in students)}
    result = Plan(
        assignment=assignment,
        root=Path(coursedir.root),
        db_url=coursedir.db_url,
        course_id=coursedir.course_id,
        autograded=coursedir.autograded_directory,
        format_path=coursedir.format_path,
        students=[],
        nbgrader_args=tuple(nbgrader_args),
        force=force,
    )
    left = set(read_journal(result.spool))
    excluded = set(filter(None, coursedir.student_id_exclude.split(",")))
    for student, notebooks in found.items():
        if student in excluded:
            continue
        if student in left or needs_grading(converter, coursedir, student, notebooks, force):
            result.students.append(student)
        else:
            result.skipped.append(student)
    return result


def needs_grading(
    converter: Any, coursedir: Any, student: str, notebooks: list[str], force: bool
) -> bool:
    """nbgrader's BaseConverter.init_destination decision, without removing anything."""
    assignment = coursedir.assignment_id
    dest = os.path.normpath(converter._format_dest(assignment, student))
    if coursedir.notebook_id == "*":
        if not os.path.exists(dest):
            return True
    else:
        for notebook in notebooks:
            name = os.path.splitext(os.path.basename(notebook))[0] + ".ipynb"
            if not os.path.exists(os.path.join(dest, name)):
                return True
    if force:
        return True
    new = coursedir.get_existing_timestamp(converter._format_source(assignment, student))
    old = coursedir.get_existing_timestamp(dest)
    return new is not None and old is not None and new > old


# -- the journal of an interrupted run -------------------------------------------------------


def read_journal(spool: Path) -> list[str]:
    """The students an interrupted run left ungraded ([] when it finished)."""
    try:
        data = json.loads((spool / JOURNAL).read_text())
    except (OSError, ValueError):
        return []
    left = data.get("students") if isinstance(data, dict) else None
    return [s for s in left if isinstance(s, str)] if isinstance(left, list) else []


def write_journal(spool: Path, students: list[str]) -> None:
    """Record the students not yet committed (atomically); remove the journal when none."""
    path = spool / JOURNAL
    if not students:
        path.unlink(missing_ok=True)
        return
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f".{JOURNAL}.tmp"
    tmp.write_text(json.dumps({"students": sorted(students)}))
    os.replace(tmp, path)


# -- the commit: the one writer ---------------------------------------------------------------


def check_result(result: Result, assignment: str, student: str) -> None:
    """Refuse a result that is not for this student and assignment, or whose rows are not
    shaped as grade_worker.rows_of writes them (ValueError)."""
    if result.student != student or result.assignment != assignment:
        raise ValueError(
            f"the result is for {result.student!r}/{result.assignment!r}, "
            f"not {student!r}/{assignment!r}"
        )
    if result.status not in ("graded", "failed"):
        raise ValueError(f"unknown status {result.status!r}")
    rows = result.rows
    if not rows:
        return
    notebooks = rows.get("notebooks")
    if not isinstance(notebooks, dict) or not (
        rows.get("timestamp") is None or isinstance(rows["timestamp"], str)
    ):
        raise ValueError("malformed rows")
    for nb in notebooks.values():
        if not isinstance(nb, dict):
            raise ValueError("malformed notebook rows")
        penalty = nb.get("late_submission_penalty")
        if penalty is not None and not isinstance(penalty, (int, float)):
            raise ValueError("malformed late penalty")
        for grade in dict(nb.get("grades", {})).values():
            score = grade.get("auto_score")
            if score is not None and not isinstance(score, (int, float)):
                raise ValueError("malformed auto_score")
            if not isinstance(grade.get("needs_manual_grade"), bool):
                raise ValueError("malformed needs_manual_grade")
        for comment in dict(nb.get("comments", {})).values():
            text = comment.get("auto_comment")
            if text is not None and not isinstance(text, str):
                raise ValueError("malformed auto_comment")


def merge(db_url: str, course_id: str, result: Result) -> None:
    """Write one student's autograde rows into the course's gradebook, in one commit,
    through nbgrader's own Gradebook API (the same calls its Autograde converter makes:
    update_or_create_student, update_or_create_submission, then the fields its
    SaveAutoGrades and AssignLatePenalties preprocessors set). A notebook or cell the
    gradebook does not know is a ValueError and nothing is committed."""
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.utils import parse_utc
    from sqlalchemy.exc import SAWarning

    rows = result.rows
    if not rows:
        return
    assignment, student = result.assignment, result.student
    with warnings.catch_warnings(), Gradebook(db_url, course_id) as gb:
        # nbgrader's add_submission makes SQLAlchemy warn about its autoflush; its own
        # autograde prints the same warnings. Not ours to fix, and not worth a line here.
        warnings.simplefilter("ignore", SAWarning)
        gb.update_or_create_student(student)
        if rows.get("timestamp"):
            gb.update_or_create_submission(
                assignment, student, timestamp=parse_utc(rows["timestamp"])
            )
        else:
            gb.update_or_create_submission(assignment, student)
        try:
            for name, nb in rows["notebooks"].items():
                notebook = gb.find_submission_notebook(name, assignment, student)
                notebook.late_submission_penalty = nb.get("late_submission_penalty")
                for cell, values in nb.get("grades", {}).items():
                    grade = gb.find_grade(cell, name, assignment, student)
                    grade.auto_score = values["auto_score"]
                    grade.needs_manual_grade = values["needs_manual_grade"]
                for cell, values in nb.get("comments", {}).items():
                    comment = gb.find_comment(cell, name, assignment, student)
                    comment.auto_comment = values["auto_comment"]
        except MissingEntry as exc:
            gb.db.rollback()
            raise ValueError(f"the result names what the gradebook lacks: {exc}") from None
        gb.db.commit()


def place(source: Path, dest: Path) -> None:
    """Put the worker's graded directory at dest, replacing an earlier one: renamed into
    place (copied first when the spool is on another file system)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(f".{dest.name}.grading")
    old = dest.with_name(f".{dest.name}.old")
    for path in (staged, old):
        if path.exists():
            shutil.rmtree(path)
    try:
        os.replace(source, staged)
    except OSError:
        shutil.copytree(source, staged, symlinks=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staged, dest)
    if old.exists():
        shutil.rmtree(old)


def commit(plan: Plan, student: str, into: Path) -> Outcome:
    """Take one finished worker's DIR into the course: the rows (merge), then the graded
    directory (place), or, for a failed submission, no graded directory (as nbgrader leaves
    none); the Outcome for the table. Never raises for a bad result: that is an "error"."""
    try:
        result = read_result(into)
        check_result(result, plan.assignment, student)
        merge(plan.db_url, plan.course_id, result)
    except ValueError as exc:
        return Outcome(student, "error", reason=f"result refused: {exc}")
    dest = plan.destination(student)
    graded = Path(into, AUTOGRADED, student, plan.assignment)
    if result.status == "graded" and graded.is_dir():
        place(graded, dest)
    else:
        # As nbgrader leaves a failed submission: its student's directory, no graded one.
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
    return Outcome(
        student,
        result.status,
        score=result.score,
        max_score=result.max_score,
        seconds=result.seconds,
        reason=result.reason,
    )


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold Ctrl-C while a student is committed; raise KeyboardInterrupt after, if one came."""
    came: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if came:
        raise KeyboardInterrupt


# -- workers ---------------------------------------------------------------------------------


class Job(Protocol):
    """One worker, as its Runner started it."""

    def poll(self) -> int | None:
        """Its exit code once it ended, else None (called every POLL seconds)."""

    def stop(self) -> None:
        """Ask it to end now (Ctrl-C): it shuts its kernel down and writes nothing more."""

    def kill(self) -> None:
        """End it for good (STOP_GRACE after stop())."""


class Runner(Protocol):
    """Where workers run: LocalRunner here; a Slurm or node runner starts the same command."""

    def start(self, student: str, into: Path) -> Job: ...


class LocalJob:
    """A worker process of this machine, in its own session: Ctrl-C at the terminal reaches
    only the parent, which stops the workers in order."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        # The whole group: nbgrader's kernel client and anything it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def worker_argv(plan: Plan, student: str, into: Path) -> list[str]:
    """The worker command (see the module docstring) for this student."""
    return [
        sys.executable,
        "-m",
        "jupyter_docker_kernel",
        "grade",
        plan.assignment,
        "--one",
        student,
        "--into",
        str(into),
        *plan.nbgrader_args,
    ]


@dataclass
class CommandRunner:
    """Workers as the worker command (worker_argv) in processes of this machine, their
    output in DIR/worker.log: the model for runners elsewhere (Slurm, nodes)."""

    plan: Plan
    #: Added to the workers' environment (grade_nodes: the node's kernelspec first on
    #: JUPYTER_PATH).
    env: dict[str, str] = field(default_factory=dict)

    def start(self, student: str, into: Path) -> Job:
        with open(into / "worker.log", "wb") as out:
            proc = subprocess.Popen(
                worker_argv(self.plan, student, into),
                cwd=self.plan.root,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return LocalJob(proc)


#: Our ends of every worker's pipes, whichever ForkRunner made it (grade_nodes has one per
#: node): a newly forked worker closes them all, or an idle worker would never see the EOF
#: that ends it while a worker forked later holds a copy of its command pipe.
_PARENT_ENDS: set[int] = set()


@dataclass
class Worker:
    """A long-lived worker process (ForkRunner's child, running grade_worker.serve), leader
    of its own session: Ctrl-C at the terminal reaches only the parent, which stops the
    workers in order. `commands`: our end of its command pipe; `replies`: of its reply
    pipe (non-blocking)."""

    pid: int
    commands: int
    replies: int
    busy: bool = False
    #: Its exit code once it ended (then it takes no more submissions).
    code: int | None = None
    pending: bytearray = field(default_factory=bytearray)

    def send(self, student: str, into: Path) -> None:
        """Give it a submission (OSError when it has ended)."""
        line = json.dumps({"student": student, "into": str(into)}) + "\n"
        os.write(self.commands, line.encode())
        self.busy = True

    def close_fds(self, replies: bool = True) -> None:
        """Close our pipe ends (the command pipe's: EOF, it ends when idle); idempotent."""
        fds = ("commands", "replies") if replies else ("commands",)
        for name in fds:
            fd = getattr(self, name)
            setattr(self, name, -1)
            _PARENT_ENDS.discard(fd)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def reply(self) -> int | None:
        """The exit code of its submission once it reported one (or ended), else None."""
        while b"\n" not in self.pending:
            try:
                chunk = os.read(self.replies, 4096)
            except BlockingIOError:
                return None
            if not chunk:  # it ended without a word: a crash, or stopped between lines
                return self.reap(block=True)
            self.pending += chunk
        line, _, rest = bytes(self.pending).partition(b"\n")
        self.pending[:] = rest
        self.busy = False
        code = int(line)
        if code == 130:  # interrupted (stop()): it ends now
            self.reap(block=True)
        return code

    def reap(self, block: bool) -> int | None:
        """Its exit code once it ended (waited for when `block`), else None."""
        if self.code is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                if pid == 0:
                    return None
                self.code = os.waitstatus_to_exitcode(status)
            if self.code is None:  # not our child any more: someone reaped it
                self.code = -1
            self.busy = False
            self.close_fds()
        return self.code


class WorkerJob:
    """One submission handed to a Worker (ForkRunner.start)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            self.code = self.worker.reply()
        return self.code

    def stop(self) -> None:
        # SIGTERM is KeyboardInterrupt in the worker: nbgrader's own Ctrl-C path stops the
        # kernel (its container removed); the worker reports 130 and ends.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.worker.pid, signal.SIGTERM)

    def kill(self) -> None:
        # The whole group: nbgrader's kernel client and anything it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.code = self.worker.reap(block=True)


@dataclass
class ForkRunner:
    """The local runner: long-lived workers forked from the parent, which has imported
    nbgrader already (about 1.5 s of imports saved per worker), each grading one
    submission after another (grade_worker.serve: the `--one` step per submission, in one
    process, so its first-use costs are paid once per worker, not per submission). start()
    hands the submission to an idle worker, forking one when none is idle (so at most
    `--jobs` exist). The parent runs no thread of its own (the display refreshes from the
    poll loop), so forking it is safe. Idle workers wait for the next submission until
    close(), which runs at our exit (atexit) unless called before; whatever way we end,
    our end of their command pipes closes and they return."""

    plan: Plan
    #: Set in each worker's environment (grade_nodes: the node's kernelspec first on
    #: JUPYTER_PATH, so the worker's kernel runs on that node).
    env: dict[str, str] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    #: Whether our workers' refills go to the refiller (refiller.hold()).
    refills: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # The janitor's sweep once, here (provisioner.ensure_janitor, wait=True): the
        # forked workers inherit "already swept" instead of each sweeping the engine
        # before its first kernel. Best effort: a worker that finds it not done does it.
        handler = signal.getsignal(signal.SIGINT)
        with contextlib.suppress(Exception):
            from jupyter_docker_kernel.engine import Engine
            from jupyter_docker_kernel.provisioner import ensure_janitor

            ensure_janitor(Engine())
        # Ctrl-C must still reach grade_class, whatever the sweep did to SIGINT.
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        # The workers' pool refills in one resident process, not one process per kernel
        # start (refiller.py: the interpreter's start and imports were about 0.2 s of CPU
        # per submission). Before the first fork: the workers inherit its channel.
        from jupyter_docker_kernel import refiller

        with sigint_held():
            self.refills = refiller.hold()
        atexit.register(self.close)

    def start(self, student: str, into: Path) -> Job:
        for worker in self.workers:
            if worker.busy or worker.reap(block=False) is not None:
                continue
            try:
                worker.send(student, into)
            except OSError:  # it ended while idle (killed from outside): fork another
                worker.reap(block=True)
                continue
            return WorkerJob(worker)
        worker = self.fork()
        worker.send(student, into)
        return WorkerJob(worker)

    def fork(self) -> Worker:
        """A new worker process (grade_worker.serve), idle."""
        from jupyter_docker_kernel import grade_worker

        self.workers = [w for w in self.workers if w.code is None]
        commands_in, commands_out = os.pipe()
        replies_in, replies_out = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Ctrl-C held across the fork: arriving during the interpreter's at-fork handlers
        # (logging's lock release), its KeyboardInterrupt is printed and dropped, and
        # grade would go on grading. Held, it is raised in the parent's code just after
        # (the new worker is in self.workers by then: close() ends it). sigint_held's
        # recording handler, not a blocked signal mask: a Ctrl-C is sent to the process,
        # and any thread that does not block it (an engine client's, a test's) may take
        # it. The child never leaves the block (os._exit below), so only the parent raises.
        with sigint_held():
            pid = os.fork()
            if pid:
                os.close(commands_in)
                os.close(replies_out)
                os.set_blocking(replies_in, False)
                worker = Worker(pid, commands_out, replies_in)
                self.workers.append(worker)
                _PARENT_ENDS.update((commands_out, replies_in))
                return worker
            code = 2
            try:  # the child: never returns into the parent's code
                os.setsid()
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.close(commands_out)
                os.close(replies_in)
                # The other workers' pipes (every runner's): held here, they would never see
                # their EOF.
                for fd in list(_PARENT_ENDS):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.close(devnull)
                os.chdir(self.plan.root)
                os.environ.update(self.env)
                code = grade_worker.serve(
                    commands_in, replies_out, self.plan.assignment, list(self.plan.nbgrader_args)
                )
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)

    def close(self, grace: float = STOP_GRACE) -> None:
        """End the workers: EOF on their command pipes (an idle one returns at once), a
        wait of up to `grace` s, then SIGKILL to what is left. Idempotent."""
        for worker in self.workers:
            worker.close_fds(replies=False)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            w.reap(block=False) is None for w in self.workers
        ):
            time.sleep(POLL)
        for worker in self.workers:
            if worker.reap(block=False) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.reap(block=True)
        if any(worker.code != 0 for worker in self.workers):
            sweep_after_workers()
        self.workers = []
        if self.refills:
            from jupyter_docker_kernel import refiller

            refiller.release()
            self.refills = False


#: The runner `grade` uses on this machine.
LocalRunner = ForkRunner


def sweep_after_workers() -> None:
    """ForkRunner.close's sweep once a worker ended other than by EOF (Ctrl-C's SIGTERM,
    the SIGKILL after STOP_GRACE, a crash): a worker stopped while its kernel's container
    was being started leaves one its lifeline never reached (created, or waiting its
    supervisor's LIFELINE_WAIT_SECONDS before it exits). Its launcher, the worker, is
    dead, so the janitor's rules (reaper.sweep) remove it now, before grade returns,
    rather than seconds later or, for a created one, at the next start. Best effort."""
    from jupyter_docker_kernel.engine import Engine
    from jupyter_docker_kernel.reaper import sweep

    with contextlib.suppress(Exception):
        sweep(Engine(), "grade's stopped workers")


class Events(Protocol):
    """What grade_class tells its display (grade_display.py)."""

    def started(self, student: str) -> None: ...
    def done(self, outcome: Outcome) -> None: ...
    def stopping(self, running: int) -> None: ...
    def tick(self) -> None:
        """Called every POLL seconds: a display refreshes here (the parent has no threads)."""


class GradingInterrupted(Exception):  # noqa: N818 (not an error: Ctrl-C)
    """Ctrl-C ended the run; the outcomes so far (the unfinished ones "interrupted")."""

    def __init__(self, outcomes: list[Outcome]) -> None:
        super().__init__("interrupted")
        self.outcomes = outcomes


def _log_tail(into: Path) -> str:
    try:
        text = (into / "worker.log").read_text(errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-LOG_TAIL:].split())


def grade_class(plan: Plan, runner: Runner, jobs: int, events: Events) -> list[Outcome]:
    """Grade plan.students, at most `jobs` at a time, committing each as it ends; the
    outcomes in the order they finished. GradingInterrupted (with them) on Ctrl-C."""
    spool = plan.spool
    spool.mkdir(parents=True, exist_ok=True)
    todo = deque(plan.students)
    left = set(plan.students)
    write_journal(spool, sorted(left))
    running: dict[str, tuple[Job, Path, float]] = {}
    #: Ended, not yet committed: their slots go to the next submissions first, so that a
    #: worker never waits for the commit of a submission it has finished.
    finished: dict[str, tuple[Job, Path, float]] = {}
    outcomes: list[Outcome] = []
    # Our commits' Gradebooks share one engine while we grade (grade_worker.SharedEngines;
    # a Gradebook's close() closes its connections after each commit).
    engines = SharedEngines()
    engines.install()
    try:
        while todo or running:
            for student in [s for s, (job, _, _) in running.items() if job.poll() is not None]:
                finished[student] = running.pop(student)
            while todo and len(running) < jobs:
                student = todo.popleft()
                into = spool / student
                if into.exists():
                    shutil.rmtree(into)  # what an interrupted worker left
                into.mkdir(parents=True)
                running[student] = (runner.start(student, into), into, time.monotonic())
                events.started(student)
            ended = list(finished)
            for student in ended:
                _, into, began = finished[student]
                with sigint_held():
                    outcome = commit(plan, student, into)
                    if outcome.status == "error":
                        outcome.seconds = round(time.monotonic() - began, 2)
                        tail = _log_tail(into)
                        outcome.reason = f"{outcome.reason}; worker said: {tail}".strip("; ")
                    del finished[student]
                    left.discard(student)
                    write_journal(spool, sorted(left))
                    shutil.rmtree(into, ignore_errors=True)
                outcomes.append(outcome)
                events.done(outcome)
            events.tick()
            if not ended:
                wait_for_a_job([job for job, _, _ in running.values()], POLL)
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C: still clean up
        try:
            events.stopping(len(running))
            stop_all([job for job, _, _ in running.values()])
            for student, (_, into, _) in {**finished, **running}.items():
                shutil.rmtree(into, ignore_errors=True)
                outcomes.append(Outcome(student, "interrupted", reason="stopped by Ctrl-C"))
            outcomes.extend(Outcome(s, "interrupted", reason="not started") for s in todo)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise GradingInterrupted(outcomes) from None
    finally:
        engines.uninstall()
    with contextlib.suppress(OSError):
        spool.rmdir()
        spool.parent.rmdir()
    return outcomes


def wait_for_a_job(jobs: list[Job], timeout: float) -> None:
    """Sleep until one of the jobs may have ended, at most `timeout` s: a local worker's
    reply pipe wakes us at once (its next submission starts without waiting out a poll:
    on 2 cores, half a POLL per submission was a few percent of a class's wall time);
    other jobs (a Slurm task's) are looked at every `timeout` s."""
    fds = [job.worker.replies for job in jobs if isinstance(job, WorkerJob)]
    fds = [fd for fd in fds if fd >= 0]
    if not fds:
        time.sleep(timeout)
        return
    with contextlib.suppress(OSError, ValueError):  # a pipe closed meanwhile: poll() says
        select.select(fds, [], [], timeout)


def stop_all(jobs: list[Job], grace: float = STOP_GRACE) -> None:
    """stop() every job, wait up to `grace` s for them to end, kill() the rest."""
    for job in jobs:
        job.stop()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(job.poll() is None for job in jobs):
        time.sleep(POLL)
    for job in jobs:
        if job.poll() is None:
            job.kill()


def summary(plan: Plan, outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """--json's document: the run and one entry per student (skipped ones included)."""
    rows = [asdict(o) for o in outcomes]
    rows += [asdict(Outcome(s, "skipped", reason="already graded")) for s in plan.skipped]
    return {
        "assignment": plan.assignment,
        "seconds": round(seconds, 2),
        "students": sorted(rows, key=lambda r: r["student"]),
    }
