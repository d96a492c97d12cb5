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

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import install_kernel
from tests.courses import (
    PS1_SOLUTION,
    PS1_SUBMITTED,
    PS1_TESTS,
    PS2_SOLUTION,
    PS2_SUBMITTED,
    PS2_TESTS,
    STUDENTS,
    autograde,
    autograded_cell,
    containers_for,
    new_course,
    release,
    score,
    source_notebook,
    submit,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def readonly_kernel(kernel_image: str) -> str:
    """The default settings with the work dir mounted read-only: allowed in autograded/."""
    install_kernel("jdk-test-ro", kernel_image, "--workdir-readonly")
    return "jdk-test-ro"


@pytest.fixture(scope="module")
def course(readonly_kernel: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """course101: ps1 autograded for alice and bob; ps2 submitted by alice, not yet graded."""
    root = new_course(tmp_path_factory.mktemp("course101"), STUDENTS)
    ps1 = release(root, "ps1", source_notebook(PS1_SOLUTION, PS1_TESTS, points=2))
    ps2 = release(root, "ps2", source_notebook(PS2_SOLUTION, PS2_TESTS, points=1))
    for student in STUDENTS:
        submit(root, student, "ps1", ps1, PS1_SUBMITTED[student])
    submit(root, "alice", "ps2", ps2, PS2_SUBMITTED)

    autograde(root, "ps1", readonly_kernel)
    return root


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
