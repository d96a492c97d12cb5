"""A small nbgrader course with N submissions, for the autograde benchmark.

benchmarks/run.py calls make(); the course is generated with the real nbgrader CLI
(generate_assignment, then one submission per student with a correct answer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOLUTION = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION"
TESTS = "assert add(1, 2) == 3\nimport numpy as np\nassert np.arange(4).sum() == 6"


def _cell(source: str, grade_id: str, **flags: object) -> dict[str, object]:
    meta: dict[str, object] = {"grade": False, "locked": False, "solution": False, "task": False}
    meta.update(flags, grade_id=grade_id, schema_version=3)
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"nbgrader": meta},
        "outputs": [],
        "source": source,
    }


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # under root the kernel runs as uid 65534
    return path


def _nbgrader(root: Path, *args: str) -> None:
    exe = str(Path(sys.executable).with_name("nbgrader"))
    subprocess.run([exe, *args], cwd=root, check=True, capture_output=True)


def make(root: Path, students: int) -> Path:
    """Create the course at root with `students` submissions of ps1; returns root."""
    _dir(root)
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'bench'\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
    )
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [
            _cell(SOLUTION, "answer", solution=True),
            _cell(TESTS, "tests", grade=True, locked=True, points=1),
        ],
    }
    (_dir(root / "source" / "ps1") / "ps1.ipynb").write_text(json.dumps(notebook))
    _nbgrader(root, "generate_assignment", "ps1", "--force")
    released = json.loads((root / "release" / "ps1" / "ps1.ipynb").read_text())
    released["cells"][0]["source"] = "def add(a, b):\n    return a + b"
    names = [f"student{i:03d}" for i in range(students)]
    for name in names:
        target = _dir(root / "submitted" / name / "ps1")
        (target / "ps1.ipynb").write_text(json.dumps(released))
        (target / "timestamp.txt").write_text("2026-11-26 00:00:00.000000 UTC")
        _nbgrader(root, "db", "student", "add", name)
    _dir(root / "autograded")
    return root
