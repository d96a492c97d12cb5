"""An instructor grades a small nbgrader course with the container kernel.

The story: course101 has ps1 (write `add(a, b)`; a test cell worth 2 points) and ps2
(write a function that saves a file next to the notebook; 1 point). The instructor
releases both with `nbgrader generate_assignment`; alice submits correct solutions, bob a
wrong ps1; `nbgrader autograde ps1 --ExecutePreprocessor.kernel_name=jdk-test-ro` runs
each submission in a hardened container (the work dir mounted read-only: a writable mount
is refused where nbgrader grades, see the last tests). The module fixture runs that story
once; each test checks one of its results. nbgrader's output, which includes the kernel's
stderr (the container's log), is printed, so pytest shows it when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OUR_LABEL, install_kernel

pytestmark = pytest.mark.docker

COURSE_ID = "course101"
STUDENTS = ("alice", "bob")
#: ps1: a pure function; alice gets it right, bob returns a - b.
PS1_SOLUTION = """\
def add(a, b):
    ### BEGIN SOLUTION
    return a + b
    ### END SOLUTION"""
PS1_TESTS = "assert add(1, 2) == 3"
PS1_SUBMITTED = {
    "alice": "def add(a, b):\n    return a + b",
    "bob": "def add(a, b):\n    return a - b",
}
#: ps2: the test cell writes a file in the notebook's directory (alice's correct answer).
PS2_SOLUTION = """\
def save_answer(path):
    ### BEGIN SOLUTION
    with open(path, "w") as fh:
        fh.write("42")
    ### END SOLUTION"""
PS2_TESTS = 'save_answer("answer.txt")\nassert open("answer.txt").read() == "42"'
PS2_SUBMITTED = 'def save_answer(path):\n    with open(path, "w") as fh:\n        fh.write("42")'
#: A read-only, ungraded cell showing where the submission ran (our container's hostname).
WHERE_CODE = "import socket; print(socket.gethostname())"


def nbgrader_cell(source: str, grade_id: str, **flags: Any) -> dict[str, Any]:
    """A code cell carrying nbgrader metadata (schema 3) with these flags set."""
    meta = {"grade": False, "locked": False, "solution": False, "task": False, **flags}
    meta.update(grade_id=grade_id, schema_version=3)
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"nbgrader": meta},
        "outputs": [],
        "source": source,
    }


def source_notebook(solution: str, tests: str, points: int) -> dict[str, Any]:
    """An assignment as the instructor writes it, for the stock python3 kernel."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "cells": [
            nbgrader_cell(solution, "answer", solution=True),
            nbgrader_cell(tests, "tests", grade=True, locked=True, points=points),
            nbgrader_cell(WHERE_CODE, "where", locked=True),
        ],
    }


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def make_dirs(root: Path, *parts: str) -> Path:
    """mkdir root/parts..., each level 0777: under root, the kernel runs as uid 65534."""
    path = root
    for part in parts:
        path = path / part
        path.mkdir(exist_ok=True)
        path.chmod(0o777)
    return path


def nbgrader(course: Path, *args: str) -> None:
    """Run the venv's nbgrader in the course dir; print its output; fail if it fails."""
    exe = str(Path(sys.executable).with_name("nbgrader"))
    proc = subprocess.run(
        [exe, *args], cwd=course, capture_output=True, text=True, timeout=240, check=False
    )
    print(f"$ nbgrader {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"nbgrader {args[0]} exited {proc.returncode}"


def release(course: Path, assignment: str, notebook: dict[str, Any]) -> dict[str, Any]:
    """Put the assignment in source/, generate it, and return the released notebook."""
    source = make_dirs(course, "source", assignment) / f"{assignment}.ipynb"
    source.write_text(json.dumps(notebook))
    nbgrader(course, "generate_assignment", assignment, "--force")  # also adds it to the db
    released = read_json(course / "release" / assignment / f"{assignment}.ipynb")
    assert "BEGIN SOLUTION" not in json.dumps(released), "the release still has the solution"
    return released


def submit(
    course: Path, student: str, assignment: str, released: dict[str, Any], answer: str
) -> None:
    """The student's copy of the released notebook, with their answer, in submitted/."""
    notebook = json.loads(json.dumps(released))
    [cell] = [c for c in notebook["cells"] if c["metadata"]["nbgrader"]["solution"]]
    cell["source"] = answer
    path = make_dirs(course, "submitted", student, assignment) / f"{assignment}.ipynb"
    path.write_text(json.dumps(notebook))


def autograde(course: Path, assignment: str, kernel: str) -> None:
    nbgrader(
        course, "autograde", assignment, f"--ExecutePreprocessor.kernel_name={kernel}", "--force"
    )


@pytest.fixture(scope="module")
def readonly_kernel(kernel_image: str) -> str:
    """The default settings with the work dir mounted read-only: allowed in autograded/."""
    install_kernel("jdk-test-ro", kernel_image, "--workdir-readonly")
    return "jdk-test-ro"


@pytest.fixture(scope="module")
def course(readonly_kernel: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """course101: ps1 autograded for alice and bob; ps2 submitted by alice, not yet graded."""
    root = tmp_path_factory.mktemp("course101")
    root.chmod(0o777)
    (root / "nbgrader_config.py").write_text(
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(root / 'gradebook.db')!r}\n"
    )
    (root / "students.csv").write_text("id\n" + "\n".join(STUDENTS) + "\n")
    nbgrader(root, "db", "student", "import", "students.csv")
    ps1 = release(root, "ps1", source_notebook(PS1_SOLUTION, PS1_TESTS, points=2))
    ps2 = release(root, "ps2", source_notebook(PS2_SOLUTION, PS2_TESTS, points=1))
    for student in STUDENTS:
        submit(root, student, "ps1", ps1, PS1_SUBMITTED[student])
    submit(root, "alice", "ps2", ps2, PS2_SUBMITTED)

    autograde(root, "ps1", readonly_kernel)
    return root


def score(course: Path, student: str, assignment: str = "ps1") -> float:
    """The student's total for the assignment, as nbgrader's gradebook records it."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gb:
        return float(gb.find_submission(assignment, student).score)


def autograded_cell(
    course: Path, student: str, grade_id: str, assignment: str = "ps1"
) -> dict[str, Any]:
    """One cell of the student's autograded notebook, which must exist."""
    path = course / "autograded" / student / assignment / f"{assignment}.ipynb"
    assert path.is_file(), f"autograde wrote no notebook for {student}"
    cells = read_json(path)["cells"]
    found: list[dict[str, Any]] = [
        c for c in cells if c["metadata"]["nbgrader"]["grade_id"] == grade_id
    ]
    assert len(found) == 1, f"no single cell {grade_id} in {path}"
    return found[0]


def containers_for(workdir: Path) -> list[str]:
    """Our containers (any state) that mount this directory as their workdir."""
    # Scoped by mount point, not just by our label: other sessions may run kernels too.
    proc = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={OUR_LABEL}", "--filter", f"volume={workdir}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def test_a_correct_submission_gets_full_marks(course: Path) -> None:
    """alice's add() passes the test cell: 2 of 2 points."""
    assert score(course, "alice") == 2


def test_a_wrong_submission_gets_no_marks(course: Path) -> None:
    """bob's add() returns a - b: the test cell's assert fails and he gets 0."""
    assert score(course, "bob") == 0


def test_the_failing_test_cell_shows_the_assertion_error(course: Path) -> None:
    """bob's autograded notebook carries the AssertionError his submission raised."""
    outputs = autograded_cell(course, "bob", "tests")["outputs"]
    assert [o["ename"] for o in outputs if o["output_type"] == "error"] == ["AssertionError"]


@pytest.mark.parametrize("student", STUDENTS)
def test_each_submission_ran_in_the_container_kernel(course: Path, student: str) -> None:
    """The notebook asks for python3, but the flag's kernel ran it: in our container."""
    outputs = autograded_cell(course, student, "where")["outputs"]
    assert ["".join(o.get("text", "")) for o in outputs] == ["kernel\n"]


@pytest.mark.parametrize("student", STUDENTS)
def test_autograde_leaves_no_container_behind(course: Path, student: str) -> None:
    """The container that graded a submission is gone once autograde has finished."""
    graded_in = course / "autograded" / student / "ps1"
    deadline = time.monotonic() + 5
    while containers_for(graded_in) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers_for(graded_in) == []


def test_a_writable_mount_kernel_is_refused_where_nbgrader_grades(
    course: Path, kernel_name: str
) -> None:
    """A kernel that could write autograded/alice/ps2 could leave links there that
    nbgrader follows when it writes the graded notebook back: the launcher refuses to
    start it, says so in nbgrader's output, and alice's code never runs."""
    exe = str(Path(sys.executable).with_name("nbgrader"))
    args = ["autograde", "ps2", f"--ExecutePreprocessor.kernel_name={kernel_name}", "--force"]
    proc = subprocess.run(
        [exe, *args], cwd=course, capture_output=True, text=True, timeout=240, check=False
    )
    output = proc.stdout + proc.stderr
    print(output)

    assert "Refusing to mount the work directory" in output
    assert "--for-nbgrader" in output
    assert not (course / "autograded" / "alice" / "ps2" / "answer.txt").exists()


def test_with_copy_workdir_a_submission_that_writes_a_file_gets_its_points(
    course: Path, kernel_image: str
) -> None:
    """The workaround under root: a kernel with --copy-workdir owns (a copy of) its cwd."""
    install_kernel("jdk-test-copy", kernel_image, "--copy-workdir")

    autograde(course, "ps2", "jdk-test-copy")

    assert score(course, "alice", "ps2") == 1
    assert not (course / "autograded" / "alice" / "ps2" / "answer.txt").exists()
