"""`grade --slurm` on the one-node cluster: the same rows and notebooks as nbgrader."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.slurm_cluster import OneNodeCluster
from tests.test_grade import (
    CLASS,
    build_course,
    containers_left,
    copy_course,
    gradebook_rows,
    graded_notebooks,
    install_grader,
    interrupt_after_two,
    our_containers,
    run_grade,
    run_nbgrader_autograde,
)

SOME = {s: CLASS[s] for s in ("s00", "s04", "s16", "s24", "h00", "h10", "h40")}


@pytest.mark.docker
@pytest.mark.slurm
@pytest.mark.timeout(1200)
def test_grade_slurm_gives_what_nbgrader_autograde_gives(
    slurm_cluster: OneNodeCluster, kernel_image: str, tmp_path: Path
) -> None:
    """Seven students of test_grade's class (one of each kind: right, late, wrong, no test
    cell, slow, memory-hungry, attacker; the whole class of 40 runs once, locally, in
    test_grade) graded as Slurm array tasks give nbgrader's own rows and notebooks."""
    install_grader(kernel_image)
    sequential = build_course(tmp_path / "by-nbgrader", SOME)
    on_slurm = copy_course(sequential, tmp_path / "by-slurm")

    nb_seconds = run_nbgrader_autograde(sequential)
    code, _, seconds = run_grade(
        on_slurm, "--slurm", "--array-limit", "2", "--json", str(tmp_path / "grade.json")
    )
    print(f"nbgrader {nb_seconds:.1f} s, grade --slurm {seconds:.1f} s")
    report = {
        r["student"]: r for r in json.loads((tmp_path / "grade.json").read_text())["students"]
    }
    print(json.dumps(report, indent=1))
    assert code == 1
    assert gradebook_rows(on_slurm) == gradebook_rows(sequential)
    assert graded_notebooks(on_slurm) == graded_notebooks(sequential)
    assert report["s00"]["score"] == 2.0
    assert not (on_slurm / ".jupyter-docker-kernel-grade").exists()
    assert our_containers(on_slurm) == []
    left = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    assert left.strip() == ""


@pytest.mark.docker
@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_grade_slurm_ctrl_c_keeps_finished_students_and_a_rerun_grades_the_rest(
    slurm_cluster: OneNodeCluster, kernel_image: str, tmp_path: Path
) -> None:
    """Ctrl-C while the array runs: finished students kept, the queue empty, no container;
    a rerun grades the rest."""
    from jupyter_docker_kernel import grade
    from tests.test_grade import SMALL

    small = dict(list(SMALL.items())[:6])
    install_grader(kernel_image)
    course = build_course(tmp_path / "course", small)
    returncode, done = interrupt_after_two(course, "--slurm", "--array-limit", "2")
    scores = {k.split("/")[0]: v[2] for k, v in gradebook_rows(course).items() if k.count("/") == 1}
    assert returncode == 130
    assert 2 <= len(done) < len(small)
    assert {s for s, score in scores.items() if score == 2.0} == done
    assert containers_left(course) == []
    left = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    assert left.strip() == ""
    assert set(grade.read_journal(course / grade.SPOOL / "ps1")) == set(small) - done

    code, _, _ = run_grade(course, "--slurm")
    scores = {k.split("/")[0]: v[2] for k, v in gradebook_rows(course).items() if k.count("/") == 1}
    assert code == 0
    assert scores == dict.fromkeys(small, 2.0)
    assert not (course / grade.SPOOL).exists()
    assert our_containers(course) == []
