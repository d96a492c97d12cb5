"""Terminal and batch clients with the container kernel: `jupyter console` and papermill.

`jupyter console` runs in a real terminal (a tmux pane on a private tmux server): the test
types into it and reads the screen, as a user would. papermill runs from the command line
with a parameter, and the output notebook is read back.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from tests.conftest import not_here
from tests.courses import containers_for
from tests.kernels import wait_until
from tests.test_notebooks import assert_no_container_left, read_notebook

pytestmark = pytest.mark.docker


class Terminal:
    """One tmux session on a private server: type keys, read the screen."""

    def __init__(self, socket_name: str, cwd: Path, command: list[str]) -> None:
        self.tmux = ["tmux", "-L", socket_name, "-f", "/dev/null"]
        # A fresh server inherits this process's environment, so the isolated JUPYTER_* paths.
        self._run(
            "new-session", "-d", "-s", "t", "-x", "110", "-y", "40", "-c", str(cwd),
            shlex.join(command),
        )  # fmt: skip

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.tmux, *args], capture_output=True, text=True, timeout=30)

    def type(self, line: str) -> None:
        """Type `line` (literally, not as key names) and press Enter."""
        self._run("send-keys", "-t", "t", "-l", line)
        self._run("send-keys", "-t", "t", "Enter")

    def screen(self) -> str:
        """What the pane shows now, wrapped lines joined; empty once the session is gone."""
        return self._run("capture-pane", "-p", "-J", "-t", "t").stdout

    def wait_for(self, text: str, timeout: float = 90) -> str:
        """The screen, once it shows `text`; fails with the screen's contents if it never does."""
        try:
            wait_until(lambda: text in self.screen(), timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"never saw {text!r}; the screen:\n{self.screen()}") from None
        return self.screen()

    def alive(self) -> bool:
        return self._run("has-session", "-t", "t").returncode == 0

    def kill(self) -> None:
        """End the session (and its private server); no-op when it ended by itself."""
        self._run("kill-server")


@pytest.fixture
def tmux() -> str:
    """The tmux binary; fails under CI, skips elsewhere, when it is missing."""
    found = shutil.which("tmux")
    if found is None:
        not_here("tmux is missing (scripts/bootstrap-browser installs it)", "terminal")
    return found


@pytest.fixture
def console(tmux: str, kernel_name: str, workdir: Path) -> Iterator[Terminal]:
    """`jupyter console --kernel <ours>` running in a terminal whose cwd is workdir."""
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    term = Terminal(
        f"jdk-test-{secrets.token_hex(4)}", workdir, [jupyter, "console", "--kernel", kernel_name]
    )
    try:
        yield term
    finally:
        print(term.screen())
        term.kill()


def test_jupyter_console_in_a_terminal_runs_code_in_the_container_and_exits_cleanly(
    console: Terminal, workdir: Path
) -> None:
    """Typed into `jupyter console`: print(6*7) shows 42, computed in the container; `exit`
    ends the console and removes the container."""
    console.wait_for("In [1]:")
    assert len(containers_for(workdir)) == 1, "the console's kernel runs in one container"

    console.type("print(6*7)")
    screen = console.wait_for("In [2]:")
    assert "In [1]: print(6*7)\n42\n" in screen

    console.type("import socket; socket.gethostname()")
    assert "Out[2]: 'kernel'" in console.wait_for("In [3]:")

    console.type("exit")
    wait_until(lambda: not console.alive(), timeout=30)
    assert_no_container_left(workdir, within=30)


def parameterised_notebook(path: Path) -> None:
    """A notebook with a `parameters` cell (x = 1) and a cell that uses x.

    Its kernelspec is a plain host Python's, as in a notebook written elsewhere: `-k` picks
    ours at run time.
    """
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    parameters = new_cell("x = 1", metadata={"tags": ["parameters"]})  # type: ignore[no-untyped-call]
    use = new_cell(  # type: ignore[no-untyped-call]
        "import socket\nprint(f'{x} * 8 = {x * 8} on {socket.gethostname()}')"
    )
    nb = new_nb(  # type: ignore[no-untyped-call]
        cells=[parameters, use],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]


def test_papermill_injects_a_parameter_that_the_container_kernel_computes_with(
    kernel_name: str, workdir: Path
) -> None:
    """`papermill -k <ours> -p x 5`: the injected x = 5 reaches the container (5 * 8 = 40)."""
    parameterised_notebook(workdir / "in.ipynb")
    argv = [
        str(Path(sys.executable).with_name("papermill")),
        *("-k", kernel_name, "-p", "x", "5", "in.ipynb", "out.ipynb"),
    ]

    proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=180)

    print(proc.stdout, proc.stderr, sep="\n")
    assert proc.returncode == 0
    out = read_notebook(workdir / "out.ipynb")
    injected = out.cells[1]
    assert injected.metadata["tags"] == ["injected-parameters"]
    assert "x = 5" in injected.source
    assert out.cells[2].outputs[0]["text"] == "5 * 8 = 40 on kernel\n"
    assert out.metadata["papermill"]["parameters"] == {"x": 5}
    assert_no_container_left(workdir, within=30)
