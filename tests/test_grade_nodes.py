"""`grade --node`: a class's kernels on remote nodes (issue 14 over issue 13's nodes).

The story, told once against two real test nodes (tests/nodes.py: each its own dockerd
and sshd): seven students of test_grade's class (right, late, wrong, no test cell, slow,
memory-hungry, attacker) graded twice with the same --for-nbgrader kernelspec, by `grade`
on this host and by `grade --node A --node B --node DEAD` on a copy of the course: the
same gradebook rows and graded notebooks; each submission's kernel ran in the engine of
the node it was given to; the node that does not answer is skipped with one line. The
rest needs no engine: the node chosen per submission, what cannot go to a node, and a
node kernelspec whose nodes all fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jupyter_docker_kernel import grade, grade_nodes, kernelspec
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.courses import COURSE_ID, course_config, make_dirs
from tests.kernels import wait_until
from tests.nodes import NodeUnderTest, node_session_name, start_node, stop_node
from tests.test_grade import (
    CLASS,
    GRADER,
    ON_TIME,
    RIGHT,
    build_course,
    copy_course,
    gradebook_rows,
    graded_notebooks,
    install_grader,
    interrupt_after_two,
    run_grade,
)

SOME = {s: CLASS[s] for s in ("s00", "s04", "s16", "s24", "h00", "h10", "h40")}
#: A node address where nothing listens: ssh's connection is refused at once.
DEAD = "ssh://nobody@127.0.0.1:1"


@pytest.fixture(scope="module")
def second_node(pushed_node: NodeUnderTest, kernel_image: str) -> Iterator[NodeUnderTest]:
    """Another test node (besides the session's), with the default image pushed to it."""
    from jupyter_docker_kernel import push

    name = "g" + node_session_name()[1:]
    try:
        made = start_node(name)
        env = {**os.environ, CONFIG_ENV: str(made.ssh_config)}
        push.push(Engine(), kernel_image, [made.url], environ=env)
        yield made
    finally:
        stop_node(name)


@pytest.mark.nodes
@pytest.mark.docker
@pytest.mark.timeout(900)
# Once (CI, 2026-12-04, a loaded host) a node kernel never got its lifeline within the
# supervisor's 4 s and exited 75 after a 17.6 s start; not seen in the runs before. One
# rerun; a difference that repeats still fails.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
def test_grade_across_nodes_gives_what_grade_here_gives(
    pushed_node: NodeUnderTest,
    second_node: NodeUnderTest,
    kernel_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same class graded here and with --node A --node B --node DEAD: the same rows and
    notebooks; every submission's kernel started in the engine of the node --json names,
    both nodes used; the dead node skipped in one line; nothing left on either node."""
    config = tmp_path / "ssh_config"  # one ssh_config for both nodes: each its own Host
    config.write_text(pushed_node.ssh_config.read_text() + second_node.ssh_config.read_text())
    monkeypatch.setenv(CONFIG_ENV, str(config))
    install_grader(kernel_image)
    here = build_course(tmp_path / "here", SOME)
    there = copy_course(here, tmp_path / "there")
    nodes = (pushed_node, second_node)

    _, _, here_seconds = run_grade(here, "--jobs", "2")
    began = int(time.time())
    code, out, there_seconds = run_grade(
        there,
        *("--node", pushed_node.url, "--node", second_node.url, "--node", DEAD),
        *("--json", str(tmp_path / "g.json")),
    )
    starts = {n.url: n.started_since(began) for n in nodes}

    print(f"wall time of {len(SOME)} submissions: here {here_seconds:.1f} s, "
          f"on two nodes {there_seconds:.1f} s")  # fmt: skip
    report = json.loads((tmp_path / "g.json").read_text())["students"]
    placed = Counter(r["node"] for r in report)
    assert code == 1  # the slow and the hungry student fail, as here
    assert gradebook_rows(there) == gradebook_rows(here)
    assert graded_notebooks(there) == graded_notebooks(here)
    assert {url: len(ids) for url, ids in starts.items()} == placed
    assert set(placed) == {n.url for n in nodes}
    assert {r["reason"] for r in report if r["student"] == "h10"} == {"out of memory at 256 MiB"}
    assert f"node skipped: nothing answers SSH at {DEAD}" in out
    assert not (there / grade.SPOOL).exists()
    assert [n.containers() for n in nodes] == [[], []]


# -- no engine ------------------------------------------------------------------------------


@dataclass
class FakeJob:
    code: int | None = None

    def poll(self) -> int | None:
        return self.code

    def stop(self) -> None:
        pass

    def kill(self) -> None:
        pass


@dataclass
class FakeRunner:
    started: list[str] = field(default_factory=list)

    def start(self, student: str, into: Path) -> grade.Job:
        self.started.append(student)
        return FakeJob()


def test_each_submission_goes_to_the_node_whose_cpus_are_least_taken(tmp_path: Path) -> None:
    """Slots are the nodes' CPUs: a (2 CPUs) and b (1) take 2 and 1, spread at once (a, b,
    a); no more until grade_class sees one end; then its node takes the next."""
    a, b = FakeRunner(), FakeRunner()
    runner = grade_nodes.NodeRunner({"ssh://a": 2, "ssh://b": 1}, {"ssh://a": a, "ssh://b": b})
    jobs = [runner.start(s, tmp_path) for s in ("s1", "s2", "s3")]

    with pytest.raises(RuntimeError):
        runner.start("s4", tmp_path)
    assert (a.started, b.started) == (["s1", "s3"], ["s2"])
    assert isinstance(jobs[0], grade_nodes.SlotJob)
    jobs[0].job.code = 0  # type: ignore[attr-defined]
    assert jobs[0].poll() == 0
    assert jobs[0].poll() == 0  # seen twice, freed once
    runner.start("s4", tmp_path)
    assert a.started == ["s1", "s3", "s4"]
    assert runner.placed["s4"] == "ssh://a"


def test_a_kernel_that_mounts_this_hosts_directories_cannot_go_to_a_node() -> None:
    settings = KernelSettings(image="img", workdir="mount")

    with pytest.raises(DockerKernelError, match="mounts directories of this host"):
        grade_nodes.for_node(settings, "ssh://a", "k")


def bare_course(root: Path) -> Path:
    """The least course grade can plan, made in-process (no nbgrader command: seconds
    each): config naming GRADER, ps1 in the gradebook, s00's submission."""
    from nbgrader.api import Gradebook

    root.mkdir()
    make_dirs(root, "submitted", "s00", "ps1")
    (root / "submitted/s00/ps1/ps1.ipynb").write_text(
        json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []})
    )
    (root / "nbgrader_config.py").write_text(
        course_config(root) + f"c.ExecutePreprocessor.kernel_name = {GRADER!r}\n"
    )
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", COURSE_ID) as gb:
        gb.add_assignment("ps1")
        gb.add_student("s00")
    return root


def test_grade_with_a_node_kernelspec_whose_nodes_all_fail_writes_nothing(
    tmp_path: Path,
) -> None:
    """Without --node, grade takes the course kernelspec's nodes; when none answers, one
    error line names each and nothing is written (no spool, no graded notebook)."""
    settings = KernelSettings(image="img", workdir="copy", nodes=(DEAD, "ssh://nobody@127.0.0.1:2"))
    kernelspec.install(
        GRADER,
        kernelspec.build_kernel_json(settings, display_name=GRADER),
        user=True,
        prefix=None,
        replace=True,
    )
    course = bare_course(tmp_path / "course")
    before = (course / "gradebook.db").read_bytes()
    exe = str(Path(sys.executable).with_name("jupyter-docker-kernel"))

    proc = subprocess.run(
        [exe, "grade", "ps1"], cwd=course, capture_output=True, text=True, timeout=120,
        env={**os.environ, CONFIG_ENV: ""},
    )  # fmt: skip

    print(proc.stdout, proc.stderr)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert "none of the nodes answers" in line
    assert DEAD in line
    assert "127.0.0.1:2" in line
    assert not (course / grade.SPOOL).exists()
    assert not (course / "autograded").exists()
    assert (course / "gradebook.db").read_bytes() == before


#: One slow student (a0, graded first) and four quick ones: Ctrl-C comes while a0 runs.
SLOW_FIRST = {"a0": ("import time\ntime.sleep(60)\n" + RIGHT, ON_TIME, True)} | {
    f"a{i}": (RIGHT, ON_TIME, True) for i in range(1, 5)
}


@pytest.mark.nodes
@pytest.mark.docker
@pytest.mark.timeout(600)
def test_ctrl_c_removes_the_running_kernels_from_the_node(
    pushed_node: NodeUnderTest, kernel_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once two quick students are graded, while the slow one's kernel runs on the
    node: grade exits 130, that kernel's container is gone from the node within 5 s, and a
    rerun grades the rest there."""
    monkeypatch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
    install_grader(kernel_image)
    course = build_course(tmp_path / "course", SLOW_FIRST)

    returncode, done = interrupt_after_two(course, "--node", pushed_node.url)
    # The kernel ends when its lifeline (a socket through the SSH master) closes: the
    # supervisor on the node ends it and --rm removes it, within 5 s (issue 13).
    try:
        gone = wait_until(lambda: pushed_node.containers() == [], timeout=5) >= 0
    except AssertionError:
        gone = False
    left = pushed_node.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout
    code, _, _ = run_grade(course, "--node", pushed_node.url)

    assert returncode == 130
    assert "a0" not in done
    assert gone, left
    assert code == 0
    assert {p.name for p in (course / "autograded").iterdir()} == set(SLOW_FIRST)
