"""An instructor autogrades a class in which some students are hostile.

The story: course101's ps1 (write `add(a, b)`; a test cell worth 2 points) is submitted by
two well-behaved students, alice (right) and bob (wrong), and four hostile ones: mallory
overwrites the gradebook, the source and other students' notebooks through relative and
absolute paths and swaps her own notebook for links to them; bomber fork-bombs, then
memory-bombs; flooder prints 100 MB; quitter calls os._exit(1). The instructor grades the
recommended way: a --copy-workdir kernel under tight limits, with a cell timeout. The module
fixture runs that story once (under runc: one runtime is enough for the grading path); each
test checks one result. nbgrader's output is printed, so pytest shows it when a test fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import HOSTILE_LIMITS, install_kernel
from tests.courses import (
    COURSE_ID,
    PS1_SOLUTION,
    PS1_TESTS,
    containers_for,
    new_course,
    release,
    source_notebook,
    submit,
)

pytestmark = pytest.mark.docker

GRADER = "jdk-test-hostile-grader"
WELL_BEHAVED = {"alice": 2.0, "bob": 0.0}
#: Written by hostile code into every file it reaches; built at run time ("PW" + "NED") so
#: that the submissions themselves do not contain it.
MARK = b"PWNED"


def mallory(course: Path) -> str:
    """Overwrite everything worth having, by relative and absolute path, then swap her own
    notebook (which nbgrader writes back after the run) for links to the gradebook."""
    targets = [
        "../../../gradebook.db",
        "../../../source/ps1/ps1.ipynb",
        "../../../release/ps1/ps1.ipynb",
        "../../../submitted/alice/ps1/ps1.ipynb",
        "../../alice/ps1/ps1.ipynb",
        "../../bob/ps1/ps1.ipynb",
        "../../../nbgrader_config.py",
        "../pwned.txt",
        str(course / "gradebook.db"),
        str(course / "source" / "ps1" / "ps1.ipynb"),
        str(course / "submitted" / "bob" / "ps1" / "ps1.ipynb"),
        str(course / "autograded" / "alice" / "ps1" / "ps1.ipynb"),
        str(course / "pwned.txt"),
        "/tmp/pwned-mallory.txt",
    ]
    return f"""\
import os
MARK = 'PW' + 'NED by mallory'
for target in {targets!r}:
    try:
        with open(target, 'w') as fh:
            fh.write(MARK)
        print('wrote', target)
    except OSError as exc:
        print(target, type(exc).__name__)
for name, target in (('ps1.ipynb', {str(course / "gradebook.db")!r}),
                     ('notes.txt', '../../../source/ps1/ps1.ipynb')):
    try:
        if os.path.lexists(name):
            os.remove(name)
        os.symlink(target, name)
    except OSError as exc:
        print(name, type(exc).__name__)

def add(a, b):
    return MARK"""


BOMBER = """\
import os, time
children = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        while True:
            time.sleep(1)
    children += 1
print('forked', children)
blocks = []
while True:
    blocks.append(bytearray(64 << 20))

def add(a, b):
    return a + b"""
FLOODER = """\
for _ in range(100):
    print('x' * (1 << 20))

def add(a, b):
    return a + b"""
QUITTER = """\
import os
os._exit(1)

def add(a, b):
    return a + b"""
HOSTILE = ("bomber", "flooder", "mallory", "quitter")
STUDENTS = (*WELL_BEHAVED, *HOSTILE)


def digest(root: Path) -> dict[str, str]:
    """Every entry under root (links not followed) -> a digest of its type and content,
    except the gradebook, which autograde itself writes."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            if path.parent == root and name.startswith("gradebook.db"):
                continue
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                out[str(path)] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[str(path)] = "dir"
    return out


@dataclass
class Graded:
    """The course after autograde, and what the host looked like before it."""

    course: Path
    before: dict[str, str]
    tmp_before: set[str]
    output: str
    seconds: float


def autograde(course: Path, grader: str) -> tuple[str, float]:
    """Run autograde the recommended way; it exits 1 (some submissions failed), so its exit
    code is not asserted. Returns its output (tail) and how long it took."""
    exe = str(Path(sys.executable).with_name("nbgrader"))
    args = [
        "autograde",
        "ps1",
        f"--ExecutePreprocessor.kernel_name={grader}",
        "--ExecutePreprocessor.timeout=60",
        "--force",
    ]
    started = time.monotonic()
    proc = subprocess.run(
        [exe, *args], cwd=course, capture_output=True, text=True, timeout=240, check=False
    )
    seconds = time.monotonic() - started
    output = (proc.stdout + proc.stderr)[-30000:]
    print(f"$ nbgrader {' '.join(args)}  (exit {proc.returncode}, {seconds:.1f} s)\n{output}")
    return output, seconds


@pytest.fixture(scope="module", params=["direct", "broker"])
def graded(
    request: pytest.FixtureRequest, kernel_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Graded:
    """course101 with six ps1 submissions, autograded once by a --copy-workdir kernel; and
    once more with each submission's kernel started through the root broker by an
    unprivileged test user ("broker": tests/broker_env.py's as_user; nbgrader itself
    runs as the instructor, root here, as in the direct story)."""
    grader = f"{GRADER}-{request.param}"
    spec = install_kernel(grader, kernel_image, "--copy-workdir", *HOSTILE_LIMITS)
    audit, starts_before = None, 0
    if request.param == "broker":
        from tests.broker_env import HOSTILE_USER, as_user

        env = request.getfixturevalue("broker")
        as_user(spec, env)
        audit, started = env.audit, f"start uid={env.uids[HOSTILE_USER]}({HOSTILE_USER})"
        starts_before = audit.read_text().count(started)
    course = new_course(tmp_path_factory.mktemp("hostile-course"), STUDENTS)
    released = release(course, "ps1", source_notebook(PS1_SOLUTION, PS1_TESTS, points=2))
    answers = {
        "alice": "def add(a, b):\n    return a + b",
        "bob": "def add(a, b):\n    return a - b",
        "mallory": mallory(course),
        "bomber": BOMBER,
        "flooder": FLOODER,
        "quitter": QUITTER,
    }
    for student, answer in answers.items():
        submit(course, student, "ps1", released, answer)
    before = digest(course)
    tmp_before = set(os.listdir("/tmp"))

    output, seconds = autograde(course, grader)
    if audit is not None:  # every submission's kernel went through the broker
        assert audit.read_text().count(started) == starts_before + len(STUDENTS)
    return Graded(course, before, tmp_before, output, seconds)


def scores(course: Path) -> dict[str, float | None]:
    """Each student's ps1 total in the gradebook; None where there is no submission."""
    from nbgrader.api import Gradebook, MissingEntry

    out: dict[str, float | None] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gb:
        for student in STUDENTS:
            try:
                out[student] = float(gb.find_submission("ps1", student).score)
            except MissingEntry:
                out[student] = None
    return out


def test_the_source_release_and_submissions_are_byte_identical(graded: Graded) -> None:
    """Everything the instructor and the students wrote is unchanged, byte for byte: no
    submission reached the source, the release, another submission or the config."""
    after = digest(graded.course)

    changed = {p for p in graded.before if graded.before[p] != after.get(p)}
    assert changed == set()


@pytest.mark.parametrize(("student", "points"), WELL_BEHAVED.items())
def test_each_well_behaved_student_gets_the_right_score(
    graded: Graded, student: str, points: float
) -> None:
    """alice's right add() gets 2 of 2 and bob's wrong one 0, whatever their classmates did."""
    assert scores(graded.course)[student] == points


def test_hostile_students_get_their_zero_in_the_gradebook(graded: Graded) -> None:
    """Each hostile submission has its row with 0 points: mallory's add() fails the test
    cell; the bombed, flooded and exited kernels died, so nbgrader failed those notebooks."""
    hostile = {s: v for s, v in scores(graded.course).items() if s in HOSTILE}

    assert hostile == dict.fromkeys(HOSTILE, 0.0)


def test_mallorys_attacks_ran_and_each_was_refused(graded: Graded) -> None:
    """mallory's autograded notebook shows every write was tried and failed, except the one
    to /tmp, which landed in her container's own tmpfs."""
    notebook = json.loads((graded.course / "autograded/mallory/ps1/ps1.ipynb").read_text())
    [answer] = [c for c in notebook["cells"] if c["metadata"]["nbgrader"]["grade_id"] == "answer"]
    # nbformat keeps multi-line text as a list of lines on disk.
    lines = "".join("".join(o.get("text", "")) for o in answer["outputs"]).splitlines()

    written = [line for line in lines if line.startswith("wrote ")]
    refused = [line for line in lines if line.endswith(("PermissionError", "FileNotFoundError"))]
    assert written == ["wrote /tmp/pwned-mallory.txt"]
    assert len(refused) == 13, lines


def test_the_gradebook_is_intact(graded: Graded) -> None:
    """The gradebook passes SQLite's integrity check and holds exactly the class: six
    students, one assignment, and no row carrying a hostile marker."""
    db = sqlite3.connect(graded.course / "gradebook.db")
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        students = sorted(r[0] for r in db.execute("SELECT id FROM student"))
        assignments = [r[0] for r in db.execute("SELECT name FROM assignment")]
    finally:
        db.close()

    assert integrity == "ok"
    assert students == sorted(STUDENTS)
    assert assignments == ["ps1"]
    assert MARK not in (graded.course / "gradebook.db").read_bytes()


def test_no_hostile_file_appears_outside_the_kernels_copy(graded: Graded) -> None:
    """mallory's writes and links landed only in her kernel's private copy: no file with her
    marker, and no 'pwned' name, anywhere in the course (autograded/ included) or in /tmp."""
    marked = [
        str(p)
        for p in graded.course.rglob("*")
        if p.is_file() and not p.is_symlink() and MARK in p.read_bytes()
    ]
    links = [str(p) for p in graded.course.rglob("*") if p.is_symlink()]
    named = [str(p) for p in graded.course.rglob("*pwned*")]
    new_in_tmp = [n for n in set(os.listdir("/tmp")) - graded.tmp_before if "pwned" in n.lower()]

    assert marked == []
    assert links == []
    assert named == []
    assert new_in_tmp == []


def test_autograde_finishes_in_time_and_leaves_no_container(graded: Graded) -> None:
    """The bombs and the flood end within the cell timeout: the whole class is graded in
    well under three minutes, and no grading container is left."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        containers_for(graded.course / "autograded" / s / "ps1") for s in STUDENTS
    ):
        time.sleep(0.2)

    assert graded.seconds < 150
    assert not any(containers_for(graded.course / "autograded" / s / "ps1") for s in STUDENTS)
