"""An instructor sets up grading in one step and nbgrader autograde just uses it.

The story: course101 has a nbgrader_config.py of its own. The instructor runs
`setup --for-nbgrader --cell-timeout 10 --write-nbgrader-config nbgrader_config.py`, then
`nbgrader autograde ps2 --force` with no kernel option at all. alice's submission writes a
file next to the notebook (which the grading profile's private work-dir copy allows, even as
uid 65534 under root); bob's sleeps far past the cell timeout. The module fixture runs that
story once; each test checks one of its results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, grading
from tests.courses import (
    COURSE_ID,
    PS2_SOLUTION,
    PS2_SUBMITTED,
    PS2_TESTS,
    autograded_cell,
    new_course,
    release,
    score,
    source_notebook,
    submit,
)

pytestmark = pytest.mark.docker

KERNEL = "jdk-test-grader"
CELL_TIMEOUT = 10
#: bob's answer never returns: the cell must be interrupted after CELL_TIMEOUT seconds.
BOB_SUBMITTED = "import time\ntime.sleep(600)"
COURSE_LINES = f"c = get_config()  # noqa: F821\nc.CourseDirectory.course_id = {COURSE_ID!r}\n"


@dataclass(frozen=True)
class Autograde:
    """The course after `nbgrader autograde ps2`, how long that took, and what it logged."""

    root: Path
    seconds: float
    log: str


@pytest.fixture(scope="module")
def course(kernel_image: str, tmp_path_factory: pytest.TempPathFactory) -> Autograde:
    """course101 with ps2 autograded for alice and bob."""
    root = new_course(tmp_path_factory.mktemp("course101-config"), ["alice", "bob"])
    config = root / "nbgrader_config.py"
    code = cli.main(
        ["setup", "--name", KERNEL, "--image", kernel_image, "--user", "--replace",
         "--for-nbgrader", "--cell-timeout", str(CELL_TIMEOUT),
         "--write-nbgrader-config", str(config)]
    )  # fmt: skip
    assert code == 0, f"setup --for-nbgrader exited {code}"
    ps2 = release(root, "ps2", source_notebook(PS2_SOLUTION, PS2_TESTS, points=1))
    submit(root, "alice", "ps2", ps2, PS2_SUBMITTED)
    submit(root, "bob", "ps2", ps2, BOB_SUBMITTED)

    started = time.monotonic()
    exe = str(Path(sys.executable).with_name("nbgrader"))
    proc = subprocess.run(  # no kernel option: the written file names the kernel
        [exe, "autograde", "ps2", "--force"], cwd=root, capture_output=True, text=True,
        timeout=240, check=False,
    )  # fmt: skip
    print(f"$ nbgrader autograde ps2 --force\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"nbgrader autograde exited {proc.returncode}"
    return Autograde(root, time.monotonic() - started, proc.stdout + proc.stderr)


def test_the_written_config_keeps_the_courses_own_lines(course: Autograde) -> None:
    """setup appended its block; the course's settings above it are unchanged."""
    text = (course.root / "nbgrader_config.py").read_text()
    assert text.startswith(COURSE_LINES)
    assert text.count(grading.BEGIN) == 1


def test_autograde_runs_submissions_in_the_container_kernel(course: Autograde) -> None:
    """The notebook asks for python3; the written kernel_name ran it in our container."""
    outputs = autograded_cell(course.root, "alice", "where", "ps2")["outputs"]
    assert ["".join(o.get("text", "")) for o in outputs] == ["kernel\n"]


def test_a_submission_that_writes_next_to_the_notebook_gets_its_points(
    course: Autograde,
) -> None:
    """alice's save_answer() writes answer.txt in its (copied) directory: 1 of 1 point."""
    assert score(course.root, "alice", "ps2") == 1


def test_a_submission_past_the_cell_timeout_is_interrupted_and_graded(
    course: Autograde,
) -> None:
    """bob's 600 s sleep is cut at the written 10 s timeout: an error, 0 points, and
    autograde of both submissions finishes in well under the sleep."""
    outputs = autograded_cell(course.root, "bob", "answer", "ps2")["outputs"]
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert errors, f"no error output in bob's answer cell: {json.dumps(outputs)[:500]}"
    assert f"Timeout waiting for execute reply ({CELL_TIMEOUT}s)" in course.log
    assert score(course.root, "bob", "ps2") == 0
    assert course.seconds < 120
