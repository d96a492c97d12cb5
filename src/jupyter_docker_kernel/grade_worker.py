"""`grade ASSIGNMENT --one STUDENT --into DIR`: autograde one submission, touching only DIR.

The worker half of `grade` (the parent, scheduler and only gradebook writer, is grade.py;
read its docstring for the contract). Whoever schedules workers (grade.LocalRunner today, a
Slurm array task or a remote node later) runs this as a separate command with the course
directory as its working directory and an empty DIR it may write:

    cd COURSE && jupyter-docker-kernel grade ps1 --one alice --into SPOOL/alice \
        [--gradebook SNAPSHOT.db] [--Class.trait=value ...]

It runs nbgrader's own `AutogradeApp` (the course's nbgrader_config.py read the way
nbgrader reads it, every preprocessor unchanged) for that one student, with two settings
pointed elsewhere: `CourseDirectory.db_url` at a private copy of the gradebook (in a local
temporary directory: SQLite on a network file system is slow and unsafe, and the copy needs
no durability) and `CourseDirectory.autograded_directory` at DIR/autograded. So the
course's gradebook.db and autograded/ are never written here. When nbgrader is done it
writes DIR/result.json (RESULT_FILE, atomically, last): the rows autograde wrote for this
student, read back from the private copy, the score, the seconds taken and, for a failure,
the reason in words (the kernel's exit from the kept kernel logs, a cell timeout from the
graded notebook, else nbgrader's own error). Then the private copy is removed.

Exit code: 0 graded, 1 nbgrader failed the submission (result.json says why) or, without
a result.json, the worker itself failed (the parent reports the tail of its log); 130
interrupted. SIGTERM is turned into KeyboardInterrupt, so nbgrader's own Ctrl-C path
runs: the kernel is shut down (its container removed) and the half-written notebook
deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import kernel_log
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.notice import kill_words
from jupyter_docker_kernel.rundir import runtime_base

#: What a worker leaves in DIR for its parent, written last (its presence means "done").
RESULT_FILE = "result.json"
#: The private gradebook copy's name (in a temporary directory, removed at the end).
PRIVATE_DB = "gradebook.db"
#: DIR's autograded tree (nbgrader's autograded_directory for this run).
AUTOGRADED = "autograded"
#: nbgrader's log of this submission (its NbGrader.logfile).
LOG_FILE = "nbgrader.log"
#: The result format; the parent refuses others.
VERSION = 1
#: The ename nbgrader's Execute gives a cell it interrupted at the timeout.
TIMEOUT_ENAME = "CellTimeoutError"


@dataclass
class Result:
    """What one worker reports: result.json's content (see grade.py for the contract)."""

    assignment: str
    student: str
    #: "graded" or "failed" (nbgrader removed the notebook and raised).
    status: str
    seconds: float
    score: float | None = None
    max_score: float | None = None
    #: Why it failed or what went wrong while grading, in words ("" when nothing did).
    reason: str = ""
    #: The rows nbgrader's autograde wrote for this student (rows_of()).
    rows: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def snapshot(source: Path, target: Path) -> None:
    """Copy the SQLite gradebook at source to target (SQLite's online backup: a consistent
    copy even while the parent commits another student; source opened read-only)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def sqlite_path(db_url: str) -> Path | None:
    """The file of a `sqlite:///...` URL; None for any other database."""
    prefix = "sqlite:///"
    return Path(db_url[len(prefix) :]) if db_url.startswith(prefix) else None


def rows_of(db_url: str, course_id: str, assignment: str, student: str) -> dict[str, Any]:
    """The gradebook rows of one student's submission that autograde writes, as data:
    the student, the submission's timestamp and, per notebook, its late penalty and each
    cell's auto_score, needs_manual_grade and auto_comment. {} when there is no submission
    (nbgrader failed before it made one)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url, course_id) as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            return {}
        person = sub.student
        notebooks: dict[str, Any] = {}
        for nb in sub.notebooks:
            notebooks[nb.name] = {
                "late_submission_penalty": nb.late_submission_penalty,
                "grades": {
                    g.name: {"auto_score": g.auto_score, "needs_manual_grade": g.needs_manual_grade}
                    for g in nb.grades
                },
                "comments": {c.name: {"auto_comment": c.auto_comment} for c in nb.comments},
            }
        return {
            "student": {
                "first_name": person.first_name,
                "last_name": person.last_name,
                "email": person.email,
                "lms_user_id": person.lms_user_id,
            },
            "timestamp": sub.timestamp.isoformat() if sub.timestamp else None,
            "notebooks": notebooks,
            "score": float(sub.score),
            "max_score": float(sub.max_score),
        }


class _Errors(logging.Handler):
    """Keeps nbgrader's ERROR lines: the failure's reason when no kernel exit explains it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(record.getMessage())


def nbgrader_reason(errors: list[str]) -> str:
    """The last exception line of nbgrader's error log ("DeadKernelError: Kernel died")."""
    for message in reversed(errors):
        lines = [line for line in message.strip().splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].startswith("Traceback"):
            return lines[-1].strip()
    return errors[0].strip() if errors else "nbgrader failed"


def kernel_records(base: Path | None = None) -> set[str]:
    """The names of the kernel records kept now (kernel_log's LOG_DIR): none of them is
    of the submission about to be graded. A long-lived worker (serve) grades many in one
    process, so the kernels of those it graded before match its pid too."""
    with contextlib.suppress(OSError):
        directory = (base or runtime_base()) / kernel_log.LOG_DIR
        return {entry.name for entry in os.scandir(directory) if entry.name.endswith(".json")}
    return set()


def kernel_reasons(
    pid: int, since: float, base: Path | None = None, before: set[str] | None = None
) -> list[str]:
    """Why the kernels this process started ended, in words, from their kept logs
    (kernel_log: the launcher, helper or provisioner records each kernel's client pid,
    exit code, reason and kill notice). Only ends worth telling: a kill (out of memory,
    lifetime, budget, pids) or a nonzero exit we did not ask for. `before`: the records
    kept before this submission (kernel_records), never read.

    Only records written since `since` are read: logs stay a day (kernel_log
    KEEP_AFTER_EXIT), so a class of 400 leaves 400, and reading them all for each
    submission would cost more the further the class gets."""
    out: list[str] = []
    found: list[dict[str, Any]] = []
    directory = (base or runtime_base()) / kernel_log.LOG_DIR
    try:
        entries = [e for e in os.scandir(directory) if e.name.endswith(".json")]
    except OSError:
        return out
    for entry in entries:
        if before and entry.name in before:
            continue
        try:
            if entry.stat().st_mtime < since - 1:
                continue
            record = json.loads(Path(entry.path).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("client_pid") != pid:
            continue
        if float(record.get("started") or 0) < since - 1:
            continue
        found.append(record)
    for record in sorted(found, key=lambda r: -float(r.get("started") or 0)):  # newest first
        words = kill_words(str(record.get("notice") or ""))
        code = record.get("exit_code")
        if words:
            out.append(words)
        elif isinstance(code, int) and code not in (0, 130) and not record.get("exit_reason"):
            out.append(f"kernel died (exit code {code})")
    return out


def timed_out_cells(directory: Path) -> int:
    """How many cells of the graded notebooks in directory nbgrader interrupted at the
    cell timeout (its Execute appends an error output named CellTimeoutError)."""
    count = 0
    for path in directory.glob("*.ipynb"):
        try:
            cells = json.loads(path.read_text()).get("cells", [])
        except (OSError, ValueError):
            continue
        for cell in cells:
            if any(o.get("ename") == TIMEOUT_ENAME for o in cell.get("outputs", [])):
                count += 1
    return count


class SharedEngines:
    """One SQLAlchemy engine per gradebook URL in this process, for nbgrader's Gradebook.

    nbgrader's Gradebook creates an engine each time it is opened (autograde opens one
    about 10 times per submission; grade's parent once per commit), and a new engine
    starts with an empty compiled-statement cache, so every query is compiled again each
    time: in a profile of 40 submissions' workers, Gradebook's opening and SQLAlchemy's
    compiling were most of the workers' own CPU, and a grading run on 2 cores is CPU-bound
    (issue 14). Installed, Gradebooks opened on one URL share one engine, and so its
    cache; the grades do not change (the same nbgrader calls, the same statements).

    Who: grade_worker.serve for a worker's life (its private gradebook copy keeps one
    path, so one engine serves all its submissions), run_one for a `--one` step, grade's
    parent for its commits. release() after each unit of work closes the engines'
    pooled connections (the engines and their caches stay), so no connection is open
    between submissions, while the copy is replaced, or across a fork; a Gradebook's own
    close() disposes its engine's pool as before, and an engine stays usable after that.
    Engines are per process: in a forked child, the parent's SharedEngines (inherited)
    passes every call on unshared; the child installs its own."""

    def __init__(self) -> None:
        self.engines: dict[tuple[str, str], Any] = {}
        self.original: Any = None
        self.pid = 0

    def install(self) -> None:
        """Route nbgrader's create_engine through us (idempotent; a nbgrader without
        that name is left as it is)."""
        import nbgrader.api as api

        if self.original is not None or not hasattr(api, "create_engine"):
            return
        self.original = api.create_engine
        self.pid = os.getpid()
        api.create_engine = self.create_engine

    def create_engine(self, url: Any, **kwargs: Any) -> Any:
        if os.getpid() != self.pid:  # a forked child's call: not ours to share
            return self.original(url, **kwargs)
        key = (str(url), repr(sorted(kwargs.items())))
        engine = self.engines.get(key)
        if engine is None:
            engine = self.engines[key] = self.original(url, **kwargs)
        return engine

    def release(self) -> None:
        """Close the engines' pooled connections (the engines stay usable)."""
        if os.getpid() != self.pid:
            return
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                engine.dispose()

    def uninstall(self) -> None:
        import nbgrader.api as api

        self.release()
        if self.original is not None and api.create_engine == self.create_engine:
            api.create_engine = self.original
        self.original = None
        self.engines.clear()


def _scratch_base() -> str | None:
    """Where the private gradebook copy goes: /dev/shm when we may write there (no disk
    writes, no fsync per nbgrader commit), else the temporary directory."""
    shm = "/dev/shm"  # noqa: S108 (a private mkdtemp below it, 0700)
    return shm if os.access(shm, os.W_OK) else None


#: Where a course may set nbclient's shutdown_kernel (most general first).
SHUTDOWN_SECTIONS = ("NotebookClient", "ExecutePreprocessor", "Execute")


def remove_kernels_at_once(config: Any) -> bool:
    """Have nbclient end each kernel of this submission with an immediate shutdown (our
    provisioner removes its container) rather than a graceful one; whether it did.

    run_one calls it once nbgrader has read the course's config. A graceful shutdown
    waits for the kernel to exit on its own and for the engine to report it: 0.3-1.3 s
    per submission on a busy 2-core machine, most of it the kernel's own exit (issue 14),
    for a container that is then discarded whole with everything the kernel's exit
    could have written (its work dir is a copy inside it). Only for a configured
    kernel_name that is one of our provisioner's kernelspecs (another kernel's exit may
    matter; the argv launcher's would be a SIGKILL of its process), and never over a
    course's own shutdown_kernel. The grades do not change: the notebook is done."""
    from nbgrader.preprocessors import Execute

    from jupyter_docker_kernel import kernelspec

    for section in SHUTDOWN_SECTIONS:
        if section in config and "shutdown_kernel" in config[section]:
            return False
    name = str(Execute(config=config).kernel_name or "")
    path = kernelspec.find_ours().get(name.lower()) if name else None
    if path is None:
        return False
    try:
        metadata = json.loads((path / "kernel.json").read_text()).get("metadata") or {}
    except (OSError, ValueError, AttributeError):
        return False
    stanza = metadata.get("kernel_provisioner") or {}
    if stanza.get("provisioner_name") != kernelspec.PROVISIONER_NAME:
        return False
    config.Execute.shutdown_kernel = "immediate"
    return True


def _interrupt_on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_one(
    assignment: str,
    student: str,
    into: Path,
    *,
    gradebook: Path | None = None,
    nbgrader_args: tuple[str, ...] = (),
    scratch: Path | None = None,
) -> Result:
    """Autograde `student`'s submission of `assignment` into `into`; see the module
    docstring. The working directory is the course directory. Writes into/result.json.
    scratch: a private dir for the gradebook's copy, kept (a long-lived worker's, so the
    copy's URL, and its SharedEngines engine, stay the same: serve releases them after
    each submission); None: a new one, removed, and SharedEngines for this step alone."""
    if scratch is not None:
        try:
            return _run_one(assignment, student, into, gradebook, nbgrader_args, scratch)
        finally:
            (scratch / PRIVATE_DB).unlink(missing_ok=True)
    engines = SharedEngines()
    engines.install()
    scratch = Path(tempfile.mkdtemp(prefix="jdk-grade-", dir=_scratch_base()))
    try:
        return _run_one(assignment, student, into, gradebook, nbgrader_args, scratch)
    finally:
        engines.uninstall()
        shutil.rmtree(scratch, ignore_errors=True)


def _run_one(
    assignment: str,
    student: str,
    into: Path,
    gradebook: Path | None,
    nbgrader_args: tuple[str, ...],
    scratch: Path,
) -> Result:
    """run_one's grading, with the gradebook's copy in `scratch`."""
    from nbgrader.apps.autogradeapp import AutogradeApp

    started_wall = time.time()
    started = time.monotonic()
    into.mkdir(parents=True, exist_ok=True)
    leftover = into / RESULT_FILE
    leftover.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _interrupt_on_term)
    private = scratch / PRIVATE_DB
    private_url = f"sqlite:///{private}"

    argv = [
        assignment,
        *nbgrader_args,
        "--student",
        student,
        "--force",  # DIR is ours and fresh; the parent decided whether to grade
        f"--NbGrader.logfile={into / LOG_FILE}",
    ]
    app = AutogradeApp()
    errors = _Errors()
    status = "graded"
    before = kernel_records()
    try:
        # The course's config, read by nbgrader itself; then the two places it would write
        # in the course are pointed into DIR, before anything is graded.
        app.initialize(argv)
    except SystemExit as exc:
        raise DockerKernelError(
            f"nbgrader could not start with {argv} (exit {exc.code}; its log says why)",
            f"{student} was not graded",
            "Fix the course's nbgrader_config.py or the options, and run grade again.",
        ) from None
    coursedir = app.coursedir
    try:
        root = Path(coursedir.root)
        course_db = sqlite_path(coursedir.db_url)
        course_id = coursedir.course_id
        if course_db is None:
            raise DockerKernelError(
                f"the course's gradebook is not an SQLite file ({coursedir.db_url})",
                f"{student} was not graded",
                "Use `nbgrader autograde` for a gradebook on a database server.",
            )
        snapshot(gradebook or course_db, private)
        remove_kernels_at_once(app.config)
        coursedir.db_url = private_url
        # Relative to the course root: nbgrader joins it to the root and also matches the
        # notebooks' paths against it as a regular expression, which an absolute path breaks.
        relative = os.path.relpath(into / AUTOGRADED, root)
        coursedir.autograded_directory = relative
        app.log.addHandler(errors)
        app.start()
    except SystemExit as exc:  # nbgrader's way of saying a submission failed
        status = "graded" if exc.code in (0, None) else "failed"
    finally:
        app.log.removeHandler(errors)
        # Closes its log file (DIR/nbgrader.log): complete before result.json, and no
        # handle left on it in a long-lived worker (serve), whose next student's app
        # reconfigures the same logger.
        app.deinit_logging()

    rows = rows_of(private_url, course_id, assignment, student)
    graded_dir = Path(coursedir.format_path(relative, student, assignment))
    if status == "graded" and not graded_dir.is_dir():
        status = "failed"  # nbgrader removed it (a failure it logged and went on from)
    reasons = kernel_reasons(os.getpid(), started_wall, before=before)
    timeouts = timed_out_cells(graded_dir) if graded_dir.is_dir() else 0
    if timeouts:
        reasons.append(f"cell timeout ({timeouts} cell{'s' if timeouts > 1 else ''})")
    if status == "failed" and not reasons:
        reasons.append(nbgrader_reason(errors.lines))
    result = Result(
        assignment=assignment,
        student=student,
        status=status,
        seconds=round(time.monotonic() - started, 2),
        score=rows.get("score") if status == "graded" else None,
        max_score=rows.get("max_score"),
        reason="; ".join(dict.fromkeys(reasons)),
        rows=rows,
    )
    write_result(into, result)
    return result


def write_result(into: Path, result: Result) -> None:
    """result.json, atomically: the parent never reads half of one."""
    tmp = into / f".{RESULT_FILE}.tmp"
    tmp.write_text(result.to_json())
    os.replace(tmp, into / RESULT_FILE)


def read_result(into: Path) -> Result:
    """The Result a worker left in `into`; ValueError when there is none or it is malformed."""
    try:
        data = json.loads((into / RESULT_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"no readable {RESULT_FILE} in {into}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"{into / RESULT_FILE} is not a version {VERSION} result")
    try:
        return Result(**data)
    except TypeError as exc:
        raise ValueError(f"{into / RESULT_FILE} has unexpected fields: {exc}") from exc


def main(
    assignment: str,
    student: str,
    into: Path,
    gradebook: Path | None,
    nbgrader_args: list[str],
    scratch: Path | None = None,
) -> int:
    """The `--one` command: 0 graded, 1 failed (result.json says why), 130 interrupted.
    scratch: serve's (see run_one)."""
    try:
        result = run_one(
            assignment,
            student,
            into,
            gradebook=gradebook,
            nbgrader_args=tuple(nbgrader_args),
            scratch=scratch,
        )
    except KeyboardInterrupt:
        print(f"grade --one {student}: interrupted; no result written", file=sys.stderr)
        return 130
    return 0 if result.status == "graded" else 1


# -- a long-lived worker: many submissions, one process ------------------------------------


def read_line(fd: int, pending: bytearray) -> bytes | None:
    """The next line from fd (without its newline), blocking; None at EOF. `pending`
    keeps what came after it."""
    while b"\n" not in pending:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        pending += chunk
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


def serve(commands: int, replies: int, assignment: str, nbgrader_args: list[str]) -> int:
    """A long-lived worker (grade.ForkRunner's child): grade one submission per line read
    from `commands` (JSON: {"student": ..., "into": ...}), each exactly as the `--one`
    command would (main: nbgrader's AutogradeApp, new for each, writing only in its DIR,
    whose worker.log gets this process's output meanwhile), and write its exit code as a
    line to `replies`. Returns at EOF (0) or after an interrupted submission (130: SIGTERM
    from the parent, which stops us); SIGTERM between submissions ends us too.

    Why: a submission's own work is under a second with a warm pool, and a new process
    for each paid its first-use costs on top (about 0.4 s: jupyter_client's provisioner
    and kernelspec lookups, the engine client, nbclient's first loop), every time. What a
    submission leaves in the process is reset here: sys.path (nbgrader prepends the
    course dir each time) and our package's log handlers (the provisioner shares the
    first app's, whose log file is that student's)."""
    signal.signal(signal.SIGTERM, _interrupt_on_term)
    ours = logging.getLogger("jupyter_docker_kernel")
    pending = bytearray()
    # One gradebook copy's path, and so one SharedEngines engine, for all our submissions.
    scratch = Path(tempfile.mkdtemp(prefix="jdk-grade-", dir=_scratch_base()))
    engines = SharedEngines()
    engines.install()
    try:
        while True:
            line = read_line(commands, pending)
            if line is None:
                return 0
            command = json.loads(line)
            student, into = str(command["student"]), Path(command["into"])
            log = os.open(into / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            path, handlers = list(sys.path), list(ours.handlers)
            level, propagate = ours.level, ours.propagate
            code = 2
            try:
                code = main(assignment, student, into, None, nbgrader_args, scratch)
            except Exception:  # reported in its worker.log; the parent finds no result
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                engines.release()
                sys.path[:] = path
                ours.handlers[:] = handlers
                ours.setLevel(level)
                ours.propagate = propagate
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.close(devnull)
            os.write(replies, f"{code}\n".encode())
            if code == 130:
                return 130
    except KeyboardInterrupt:  # SIGTERM while waiting for the next submission
        return 130
    finally:
        engines.uninstall()
        shutil.rmtree(scratch, ignore_errors=True)
