"""After a kill, the notebook says why (issue 18, item 2): nbclient against the real engine.

A cell that runs past --memory or --output-budget used to leave nbclient with a dead kernel
and nothing in the cell; only the server's log said why. Now the cell's outputs end with
the launcher's one-line notice on stderr; a normal end adds nothing.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat import NotebookNode

from tests.conftest import install_kernel

pytestmark = pytest.mark.docker

MEMORY_BOMB = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
FLOOD = "line = 'x' * 1000\nwhile True:\n    print(line)\n"


def run(source: str, kernel: str, workdir: Path) -> tuple[NotebookNode, BaseException | None]:
    """Execute a one-cell notebook as nbconvert would; the notebook and what it raised."""
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [nbformat.v4.new_code_cell(source)]  # type: ignore[no-untyped-call]
    client = NotebookClient(
        nb, kernel_name=kernel, timeout=120, resources={"metadata": {"path": str(workdir)}}
    )
    try:
        client.execute()
    except Exception as exc:  # DeadKernelError, or a CellExecutionError
        return nb, exc
    return nb, None


def stderr_of(nb: NotebookNode) -> str:
    return "".join(
        out.get("text", "")
        for out in nb.cells[0].outputs
        if out.get("output_type") == "stream" and out.get("name") == "stderr"
    )


#: The argv launcher's relay, and the provisioner's (in a thread of nbclient's process).
PATHS = pytest.mark.parametrize("path", [[], ["--provisioner"]], ids=["launcher", "provisioner"])


@PATHS
def test_an_oom_kill_shows_in_the_cell_with_the_limit(
    kernel_image: str, workdir: Path, path: list[str]
) -> None:
    install_kernel("jdk-test-notice-oom", kernel_image, "--memory", "256m", *path)
    nb, raised = run(MEMORY_BOMB, "jdk-test-notice-oom", workdir)
    assert isinstance(raised, DeadKernelError)
    text = stderr_of(nb)
    print(text)
    assert "Kernel stopped: out of memory (limit 256 MiB)" in text
    assert "--memory" in text


@PATHS
def test_an_output_budget_kill_shows_in_the_cell(
    kernel_image: str, workdir: Path, path: list[str]
) -> None:
    install_kernel("jdk-test-notice-budget", kernel_image, "--output-budget", "8m", *path)
    nb, raised = run(FLOOD, "jdk-test-notice-budget", workdir)
    assert isinstance(raised, DeadKernelError)
    text = stderr_of(nb)
    assert "Kernel stopped: output budget of 8m exceeded" in text


def test_a_normal_run_and_shutdown_publish_nothing_extra(kernel_name: str, workdir: Path) -> None:
    nb, raised = run("import sys\nprint('ok', file=sys.stderr)", kernel_name, workdir)
    assert raised is None
    assert [out.get("text") for out in nb.cells[0].outputs] == ["ok\n"]
