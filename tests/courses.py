"""nbgrader course builders the grading tests share: a course directory with its config
and gradebook, assignments written as nbgrader notebooks, released, submitted, autograded,
and the gradebook's scores read back.

The course101 story (ps1: `add(a, b)`, ps2: a file written next to the notebook) is told
in tests/test_nbgrader.py; the hostile and config suites build their own courses from
the same parts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.conftest import OUR_LABEL

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


def course_config(root: Path) -> str:
    """The lines of a course's nbgrader_config.py: its id, its root, its gradebook."""
    return (
        "c = get_config()  # noqa: F821\n"
        f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(root / 'gradebook.db')!r}\n"
    )


def new_course(root: Path, students: Iterable[str]) -> Path:
    """An empty course101 at root (made 0777: the kernel may run as another uid), with its
    nbgrader_config.py (course_config) and these students in its gradebook."""
    root.mkdir(exist_ok=True)
    root.chmod(0o777)
    (root / "nbgrader_config.py").write_text(course_config(root))
    (root / "students.csv").write_text("id\n" + "\n".join(students) + "\n")
    nbgrader(root, "db", "student", "import", "students.csv")
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
