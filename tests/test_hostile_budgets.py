"""Output budgets on the paths graders use: the `--for-nbgrader` profile and the provisioner.

Catalogue ids: A13g (a stdout flood in a notebook graded with the `--for-nbgrader` profile,
through the launcher and through the provisioner), A13p, A14p and A16p (A13, A14 and A16 of
test_hostile_resources.py, on the provisioner path). Each notebook runs under nbclient in a
process of its own, as nbgrader runs it, so the client's peak RSS (what the flood made it
hold) and its log (the launcher's stderr, or the provisioner's log lines) are its own.
"""

from __future__ import annotations

import json
import pwd
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from jupyter_docker_kernel.settings import size_bytes
from tests.broker_env import HOSTILE_USER, BrokerEnv, user_spec
from tests.broker_shim import hand_over
from tests.conftest import install_kernel
from tests.kernels import wait_until

pytestmark = pytest.mark.docker

MIB = 1 << 20
#: The grading profile's budgets (grading.PROFILE), spelled out: the test states the decision.
GRADING_BUDGET = 64 * MIB
GRADING_MESSAGE = 16 * MIB
#: The provisioner specs' own budgets, unlike any default: the options must reach the meter.
PROVISIONER_LIMITS = ("--output-budget", "40m", "--max-message", "4m", "--memory", "1g")
PROVISIONER_BUDGET = size_bytes("40m")
PROVISIONER_MESSAGE = size_bytes("4m")
#: What nbclient may hold beyond what it received: the interpreter, nbclient, zmq, and the
#: outputs in the notebook (a stream's text once as it arrived, once joined): measured
#: about 280 MiB for a 64 MiB flood, against 860 MiB for the same 256 MiB notebook with
#: the 1 GiB budget grading used to have.
CLIENT_RSS_LIMIT = 400 * MIB

#: Runs one notebook under nbclient, as nbgrader does, and says how it went (stdout, JSON).
#: Our log lines and the provisioner's go to stderr, as a grader's console shows them.
RUN_NOTEBOOK = """\
import json, logging, resource, sys
import nbformat
from nbclient import NotebookClient

kernel, workdir, written = sys.argv[1:4]
handler = logging.StreamHandler(sys.stderr)
for name in ("traitlets", "jupyter_docker_kernel"):
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
cells = [nbformat.v4.new_code_cell(code) for code in json.loads(sys.argv[4])]
nb = nbformat.v4.new_notebook(cells=cells)
client = NotebookClient(nb, kernel_name=kernel, timeout=120,
                        resources={"metadata": {"path": workdir}})
error = ""
try:
    client.execute()
except Exception as exc:
    error = type(exc).__name__
# Before the write: nbformat's validation and JSON text of a 64 MiB notebook are this
# script's bookkeeping, not what nbclient held while the flood came in (with them the
# peak varied 240-400 MiB from run to run).
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
nbformat.write(nb, written)
print(json.dumps({"error": error, "peak_rss": rss}))
"""


@dataclass
class Graded:
    """How one notebook run went, seen from the host."""

    log: str  # the client's stderr: our log lines, the launcher's too
    error: str  # the exception nbclient raised ("" if none)
    peak_rss: int  # the client process's peak RSS, bytes
    notebook_bytes: int  # the size of the notebook the client wrote
    container: str  # the kernel's container name, from the start line


#: Kernelspecs whose client runs as an unprivileged test user, so that their kernels start
#: through the root broker (tests/broker_env.py): name -> the broker.
AS_USER: dict[str, BrokerEnv] = {}


def run_notebook(kernel: str, workdir: Path, *cells: str) -> Graded:
    """Execute `cells` in `kernel` under nbclient in a fresh process (for a kernelspec in
    AS_USER: the test user's, from the users' venv); waits until the kernel's container
    is gone."""
    env = AS_USER.get(kernel)
    written = workdir.parent / f"{workdir.name}-executed.ipynb"
    python = [sys.executable]
    if env is not None:
        entry = pwd.getpwnam(HOSTILE_USER)
        hand_over(workdir, entry.pw_uid, entry.pw_gid)
        written = workdir / "executed.ipynb"  # copied at the start: the kernel never sees it
        python = env.argv(HOSTILE_USER)
    proc = subprocess.run(
        [*python, "-c", RUN_NOTEBOOK, kernel, str(workdir), str(written), json.dumps(cells)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir if env is not None else workdir.parent,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stderr[-4000:])  # shown by pytest when an assertion below fails
    result = json.loads(proc.stdout.splitlines()[-1])
    started = re.search(r"started in (?:warm )?container (\S+)", proc.stderr)
    assert started is not None, proc.stderr[-4000:]
    container = started[1]
    wait_until(lambda: not _exists(container), 15)
    print(f"client peak RSS {result['peak_rss'] / MIB:.0f} MiB, error {result['error']!r}")
    return Graded(
        proc.stderr, result["error"], result["peak_rss"], written.stat().st_size, container
    )


def _exists(container: str) -> bool:
    proc = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=^{container}$"],
        capture_output=True,
        text=True,
        check=True,
    )
    return bool(proc.stdout.strip())


def stdout_flood(mebibytes: int) -> str:
    """A cell that prints `mebibytes` MiB, flushing each one (see A13)."""
    return f"for _ in range({mebibytes}):\n    print('x' * 2**20, flush=True)\n"


def through_broker(request: pytest.FixtureRequest, name: str, spec: Path) -> str:
    """The kernelspec, installed for the test user whose client runs it (AS_USER)."""
    env = request.getfixturevalue("broker")
    AS_USER[user_spec(spec, env).name] = env
    return name


@pytest.fixture(scope="module", params=["launcher", "provisioner", "provisioner-broker"])
def grading_kernel(request: pytest.FixtureRequest, kernel_image: str) -> str:
    """A kernelspec `setup --for-nbgrader` wrote, with or without --provisioner; and the
    provisioner's run by an unprivileged user's client through the root broker (the
    argv launcher through the broker meets its budget in test_hostile_resources's A13)."""
    name = f"jdk-test-grading-budget-{request.param}"
    extra = ["--provisioner"] if request.param.startswith("provisioner") else []
    spec = install_kernel(name, kernel_image, "--for-nbgrader", *extra)
    return through_broker(request, name, spec) if request.param.endswith("broker") else name


@pytest.fixture(scope="module", params=["direct", "broker"])
def provisioned_kernel(request: pytest.FixtureRequest, kernel_image: str) -> str:
    """A `--provisioner` kernelspec with budgets of its own (PROVISIONER_LIMITS); and the
    same run by an unprivileged user's client through the root broker."""
    name = f"jdk-test-provisioner-budget-{request.param}"
    args = ("--provisioner", "--copy-workdir", *PROVISIONER_LIMITS)
    spec = install_kernel(name, kernel_image, *args)
    return through_broker(request, name, spec) if request.param == "broker" else name


def test_a_flooding_notebook_graded_with_the_profile_stops_at_64_mib(
    grading_kernel: str, workdir: Path
) -> None:
    """A13g: a submission prints 256 MiB. Under the grading profile (launcher or
    provisioner, same words) the kernel is stopped at 64 MiB, the log says why, nbclient
    fails the notebook instead of holding the flood, and the notebook it writes stays small."""
    graded = run_notebook(grading_kernel, workdir, "print('before')", stdout_flood(256))

    reason = f"budget exceeded: the kernel sent more than {GRADING_BUDGET} bytes of output in all"
    assert f"{reason} on iopub; stopping the kernel" in graded.log
    assert re.search(rf"exited with code \S+ \({re.escape(reason)} on iopub\)", graded.log)
    assert graded.error == "DeadKernelError"
    assert graded.notebook_bytes < GRADING_BUDGET + GRADING_MESSAGE
    assert graded.peak_rss < CLIENT_RSS_LIMIT


#: A13p and A14p: floods beyond --output-budget; A16p: one message beyond --max-message.
PROVISIONER_FLOODS = {
    "stdout": (stdout_flood(400), f"more than {PROVISIONER_BUDGET} bytes of output in all"),
    "display": (
        "from IPython.display import display\n"
        "for _ in range(400):  # bounded: on a path without budgets it would never end\n"
        "    display({'text/html': '<p>' + 'y' * 2**20 + '</p>'}, raw=True)\n",
        f"more than {PROVISIONER_BUDGET} bytes of output in all",
    ),
    "one-huge-message": (
        "from IPython.display import display\n"
        "display({'text/plain': 'A' * (6 * 2**20)}, raw=True)\n",
        f"a message of more than {PROVISIONER_MESSAGE} bytes",
    ),
}


@pytest.mark.parametrize("flood", list(PROVISIONER_FLOODS))
def test_the_provisioner_enforces_the_launchers_budgets_while_the_bytes_flow(
    provisioned_kernel: str, workdir: Path, flood: str
) -> None:
    """A13p, A14p, A16p: through the provisioner (no launcher process), a flood beyond
    --output-budget and a single message beyond --max-message stop the kernel, with the
    launcher's own log words; the client never holds more than the budget."""
    code, what = PROVISIONER_FLOODS[flood]
    graded = run_notebook(provisioned_kernel, workdir, code)

    reason = re.escape(f"budget exceeded: the kernel sent {what}") + r"( \(at least \d+\))?"
    assert re.search(f"{reason} on iopub; stopping the kernel", graded.log)
    assert re.search(rf"exited with code \S+ \({reason} on iopub\) after", graded.log)
    assert graded.error == "DeadKernelError"
    assert graded.notebook_bytes < PROVISIONER_BUDGET
    relayed = int(re.findall(r"relayed (\d+) bytes out", graded.log)[-1])
    assert relayed <= PROVISIONER_BUDGET + PROVISIONER_MESSAGE
