"""Notebooks run headless through the container kernel: nbclient, nbconvert, rich output.

Each test is a user's story: a notebook sits in a directory next to its data, a tool runs
it with our kernelspec, and the outputs (and files) end up where that user expects. The
kernel's own stderr (the container's log, forwarded by the launcher) lands in pytest's
captured output, which pytest prints when a test fails.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

from tests.conftest import install_kernel
from tests.courses import containers_for

pytestmark = pytest.mark.docker

DATA_CSV = "value\n1\n2\n39\n"
READ_AND_SUM = """\
import pandas as pd
total = int(pd.read_csv("data.csv")["value"].sum())
print(f"sum={total}")"""
WRITE_RESULT = """\
with open("result.txt", "w") as fh:
    fh.write(f"total {total}\\n")
print(open("result.txt").read(), end="")"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def copy_kernel_name(engine_kind: str, engine_image: str) -> str:
    """A kernelspec whose kernel works on a private copy of the notebook's directory."""
    name = f"jdk-test-copy-{engine_kind}"
    podman = ["--podman"] if engine_kind == "podman" else []
    install_kernel(name, engine_image, *podman, "--copy-workdir")
    return name


def notebook_in(workdir: Path, *cells: str) -> NotebookNode:
    """A notebook with these code cells, saved as nb.ipynb next to a data.csv."""
    (workdir / "data.csv").write_text(DATA_CSV)
    # nbformat ships py.typed but leaves these functions unannotated.
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    nb: NotebookNode = new_nb(cells=[new_cell(c) for c in cells])  # type: ignore[no-untyped-call]
    nbformat.write(nb, workdir / "nb.ipynb")  # type: ignore[no-untyped-call]
    return nb


def read_notebook(path: Path) -> NotebookNode:
    nb: NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return nb


def execute(nb: NotebookNode, kernel_name: str, workdir: Path) -> NotebookNode:
    """Run every cell the way Jupyter's tools do: a fresh kernel whose cwd is workdir."""
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(workdir)}},
        timeout=120,
    )
    executed: NotebookNode = client.execute()
    return executed


def stdout_of(cell: NotebookNode) -> str:
    """All the text a cell printed to stdout, in order."""
    return "".join(
        o["text"] for o in cell["outputs"] if o["output_type"] == "stream" and o["name"] == "stdout"
    )


def assert_no_container_left(workdir: Path, within: float = 5.0) -> None:
    """The kernel's container is gone soon after the tool shut the kernel down."""
    deadline = time.monotonic() + within
    while (left := containers_for(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"containers still there {within:.0f} s after shutdown: {left}"


def test_nbclient_runs_a_notebook_that_reads_and_writes_files_next_to_it(
    engine_kernel: str, workdir: Path
) -> None:
    """nbclient: relative paths resolve in the notebook's directory, and writes reach the host."""
    nb = notebook_in(workdir, READ_AND_SUM, WRITE_RESULT)

    executed = execute(nb, engine_kernel, workdir)

    assert stdout_of(executed.cells[0]) == "sum=42\n"
    assert (workdir / "result.txt").read_text() == "total 42\n"
    assert_no_container_left(workdir)


def test_copy_workdir_kernel_reads_the_notebooks_files_but_writes_stay_in_the_container(
    copy_kernel_name: str, workdir: Path
) -> None:
    """--copy-workdir: data.csv is readable, result.txt is written but never reaches the host."""
    nb = notebook_in(workdir, READ_AND_SUM, WRITE_RESULT)

    executed = execute(nb, copy_kernel_name, workdir)

    assert stdout_of(executed.cells[0]) == "sum=42\n"
    assert stdout_of(executed.cells[1]) == "total 42\n", "the kernel could not write its copy"
    assert not (workdir / "result.txt").exists()
    assert_no_container_left(workdir)


def test_nbconvert_execute_writes_a_notebook_with_the_outputs(
    kernel_name: str, workdir: Path
) -> None:
    """`jupyter nbconvert --to notebook --execute` with our kernel saves the executed outputs."""
    notebook_in(workdir, READ_AND_SUM)
    argv = [
        str(Path(sys.executable).with_name("jupyter")),
        *("nbconvert", "--to", "notebook", "--execute"),
        f"--ExecutePreprocessor.kernel_name={kernel_name}",
        *("nb.ipynb", "--output", "out.ipynb"),
    ]

    proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=180)

    # nbconvert's output includes the kernel's stderr, the container's log.
    print(proc.stdout, proc.stderr, sep="\n")
    assert proc.returncode == 0
    out = read_notebook(workdir / "out.ipynb")
    assert stdout_of(out.cells[0]) == "sum=42\n"
    assert out.cells[0]["execution_count"] == 1
    assert_no_container_left(workdir)


def test_a_matplotlib_plot_arrives_as_a_png_display(kernel_name: str, workdir: Path) -> None:
    """A plot shown in the kernel becomes a display_data output holding a real PNG."""
    nb = notebook_in(
        workdir,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()",
    )

    executed = execute(nb, kernel_name, workdir)

    displays: list[dict[str, Any]] = [
        o for o in executed.cells[0]["outputs"] if o["output_type"] == "display_data"
    ]
    assert len(displays) == 1, executed.cells[0]["outputs"]
    png = base64.b64decode(displays[0]["data"]["image/png"])
    assert png.startswith(PNG_MAGIC)
    assert_no_container_left(workdir)


def test_clear_output_removes_what_the_cell_printed_before_it(
    kernel_name: str, workdir: Path
) -> None:
    """clear_output() in a cell leaves only the output produced after it."""
    nb = notebook_in(
        workdir,
        "from IPython.display import clear_output\nprint('before')\nclear_output()\nprint('after')",
    )

    executed = execute(nb, kernel_name, workdir)

    assert executed.cells[0]["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "after\n"}
    ]
    assert_no_container_left(workdir)
