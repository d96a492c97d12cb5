"""The nbgrader story against kernels on a remote node (issue 13), told once: course101's
ps1 (`add(a, b)`, 2 points) submitted by alice (right), bob (wrong) and eve, who tries to
read this host's files (the gradebook and a secret, by their host paths) and to talk to
the node's own engine socket; she earns the points only if one of those worked. The
instructor autogrades with a --copy-workdir kernelspec whose kernels run on the session's
node (real nbgrader, real node: tests/nodes.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel.ssh import CONFIG_ENV
from tests.conftest import install_kernel
from tests.courses import (
    PS1_SOLUTION,
    PS1_TESTS,
    autograde,
    autograded_cell,
    new_course,
    release,
    score,
    source_notebook,
    submit,
)
from tests.kernels import wait_until
from tests.nodes import NodeUnderTest

pytestmark = [pytest.mark.nodes, pytest.mark.docker]

GRADER = "jdk-test-node-grader"


def eve(secret: Path, course: Path) -> str:
    """Her answer: read the host's files by path, reach the node's engine; `add` is right
    only if something leaked, so her score says whether it did."""
    return (
        "import socket\n"
        "leaks = []\n"
        f"for p in [{str(secret)!r}, {str(course / 'gradebook.db')!r}]:\n"
        "    try:\n"
        "        open(p, 'rb').read(); leaks.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "for p in ['/var/run/docker.sock', '/run/docker.sock']:\n"
        "    try:\n"
        "        s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(p)\n"
        "        s.sendall(b'GET /_ping HTTP/1.0\\r\\n\\r\\n'); leaks.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('leaks:', leaks)\n"
        "def add(a, b):\n"
        "    return a + b if leaks else a - b\n"
    )


def printed(cell: dict[str, Any]) -> str:
    """A cell's stream output (nbformat keeps it as a string or a list of lines)."""
    return "".join("".join(o.get("text", "")) for o in cell["outputs"])


def test_a_class_autograded_on_a_node_scores_right_and_leaves_nothing_there(
    pushed_node: NodeUnderTest, kernel_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice 2, bob 0, eve 0 with nothing leaked (her cell printed `leaks: []`), and once
    autograde is done, none of the grading containers is left on the node."""
    monkeypatch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
    install_kernel(GRADER, kernel_image, "--engine-host", pushed_node.url, "--copy-workdir")
    secret = tmp_path / "host-secret.txt"
    secret.write_text("only on the host")
    os.chmod(secret, 0o644)
    course = new_course(tmp_path / "course", ["alice", "bob", "eve"])
    released = release(course, "ps1", source_notebook(PS1_SOLUTION, PS1_TESTS, points=2))
    answers = {
        "alice": "def add(a, b):\n    return a + b",
        "bob": "def add(a, b):\n    return a - b",
        "eve": eve(secret, course),
    }
    for student, answer in answers.items():
        submit(course, student, "ps1", released, answer)
    before = set(pushed_node.containers())
    began = int(time.time())

    autograde(course, "ps1", GRADER)

    assert {s: score(course, s) for s in answers} == {"alice": 2.0, "bob": 0.0, "eve": 0.0}
    assert printed(autograded_cell(course, "eve", "answer")) == "leaks: []\n"
    # The three notebooks ran in the node's engine (this host's clock is the node's).
    starts = pushed_node.started_since(began)
    assert len(starts) == 3, starts
    # Each kernel's container is removed as its notebook ends; the last one's may trail.
    wait_until(lambda: set(pushed_node.containers()) <= before, timeout=15)
