"""The public Jupyter kernel test suite (jupyter_kernel_test) against the container kernel.

jupyter_kernel_test checks each message type of the protocol against its schema: if the
relay dropped, reordered or corrupted a frame on any of the five channels, a test here
fails. Its classes start their kernel in unittest's setUpClass, so the kernelspec must be
installed before that: class-level usefixtures on the session fixture `kernel_name` does
it (pytest sets session fixtures up before a unittest class's own class-level setup).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import jupyter_kernel_test as jkt  # not its classes: pytest would collect (and run) them
import pytest
from jupyter_client.manager import KernelManager

import jupyter_docker_kernel
from jupyter_docker_kernel import thin_client
from tests import kernels
from tests.conftest import TEST_KERNEL, install_kernel, not_here

pytestmark = pytest.mark.docker

#: The distribution's Python (Debian 12: 3.11.2), which runs the launcher in many set-ups.
SYSTEM_PYTHON = "/usr/bin/python3"
SYSTEM_PYTHON_KERNEL = "jdk-test-system-python"


@pytest.fixture(scope="session")
def system_python_kernel(kernel_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kernelspec whose launcher runs on the distribution's Python, from a venv of it
    holding this package (the launcher imports nothing else, so the venv needs no pip and
    no python3-venv package: `--without-pip`). Built once per session."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        not_here(
            f"{SYSTEM_PYTHON} is missing: no distribution Python to run the launcher on",
            "system-Python",
        )
    venv = tmp_path_factory.mktemp("system-python") / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    package = Path(jupyter_docker_kernel.__file__).parent
    shutil.copytree(package, Path(purelib, package.name), ignore=shutil.ignore_patterns("*.pyc"))
    spec = install_kernel(SYSTEM_PYTHON_KERNEL, kernel_image) / "kernel.json"
    data = json.loads(spec.read_text())
    # The Python argv only: a compiled client (thin_client) is built for this checkout's
    # install, and the venv's copy of the package is another.
    _, argv = thin_client.split(data["argv"])
    data["argv"] = [str(python), *argv[1:]]
    spec.write_text(json.dumps(data))
    return SYSTEM_PYTHON_KERNEL


@pytest.mark.usefixtures("kernel_name")
class TestContainerKernel(kernels.ContainerKernelTests):
    """Every message type the suite knows, sent through the relay to ipykernel and back."""

    kernel_name = TEST_KERNEL

    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"

    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n  return x*2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q"]

    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result: ClassVar[list[dict[str, str]]] = [{"code": "1+2+3", "result": "6"}]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]  # fmt: skip
    code_history_pattern = "1?2*"
    # Not "range": IPython reports the current session as 0 there, so the suite's check
    # fails against the stock python3 kernel too (jupyter_kernel_test 0.7, IPython 9).
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


@pytest.mark.usefixtures("system_python_kernel")
class TestLauncherOnTheSystemPython(kernels.ContainerKernelTests):
    """The suite's core checks with the launcher on /usr/bin/python3: Debian 12's 3.11.2
    dropped a client's first bytes in the relay (asyncio before 3.11.3), so such kernels
    never answered."""

    kernel_name = SYSTEM_PYTHON_KERNEL
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    code_execute_result: ClassVar[list[dict[str, str]]] = [{"code": "1+2+3", "result": "6"}]
    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]


@pytest.mark.usefixtures("kernel_name")
class TestContainerKernelIopubWelcome(jkt.IopubWelcomeTests):  # type: ignore[misc]
    """JEP 65: a new iopub subscriber is greeted, even through the relay's byte pipe."""

    kernel_name = TEST_KERNEL
    support_iopub_welcome = True
    _cwd: tempfile.TemporaryDirectory[str]

    @classmethod
    def setUpClass(cls) -> None:
        """As the suite's own, in an empty directory."""
        cls._cwd = kernels.empty_dir()
        cls.km = KernelManager(kernel_name=cls.kernel_name)
        cls.km.start_kernel(cwd=cls._cwd.name)
        cls.kc = cls.km.client()

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        cls._cwd.cleanup()


def test_input_prompt_reaches_the_client_and_the_answer_reaches_input(
    kernel_name: str, workdir: Path
) -> None:
    """input() in the kernel asks the client on stdin; the client's answer is what it returns."""
    prompts: list[str] = []
    printed: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])

    with kernels.running_kernel(kernel_name, workdir) as (_km, kc):

        def answer(msg: dict[str, Any]) -> None:
            prompts.append(msg["content"]["prompt"])
            kc.input("Ada")

        reply = kc.execute_interactive(
            "print('hello', input('name? '))",
            allow_stdin=True,
            stdin_hook=answer,
            output_hook=collect,
            timeout=30,
        )

    assert reply["content"]["status"] == "ok"
    assert prompts == ["name? "]
    assert "".join(printed) == "hello Ada\n"


def test_a_client_on_ipc_reaches_the_kernel_through_sockets_only_it_can_open(
    kernel_name: str, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--KernelManager.transport=ipc` (what docs/security.md recommends on a shared host):
    the launcher serves the client's unix sockets where the client looks for them, its own
    cwd for a relative ip (the launcher's cwd is the notebook's), with mode 0600."""
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)
    ipc = {"transport": "ipc"}
    with kernels.running_kernel(kernel_name, workdir, ready_timeout=60, manager=ipc) as (_, kc):
        reply, outputs = kernels.execute(kc, "print(6 * 7)", timeout=30)
        sockets = sorted(client_dir.glob("kernel-ipc-*"))
        modes = {stat.S_IMODE(path.stat().st_mode) for path in sockets}

    assert reply["status"] == "ok"
    assert kernels.stream_text(outputs) == "42\n"
    assert len(sockets) == 5
    assert modes == {0o600}
    assert not list(workdir.glob("kernel-ipc-*"))
