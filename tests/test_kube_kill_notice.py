"""After a kill, the notebook says why on the Kubernetes argv path too (issue 15): nbclient
runs a cell on a `setup --kubernetes` kernelspec (no --provisioner), and the cell's
outputs end with the same one-line notice as on the local path (tests/test_kill_notice.py),
published by kube_proxy's ChannelProxy on the client's iopub.

SIMULATED CONTROL PLANE, REAL KERNEL (tests/test_kube_story.py's cluster): kmock's
in-memory API server, whose scripted kubelet runs each pod's exact container under Docker
on an internal network. The client side is the product as Jupyter runs it: KernelManager
-> the argv launcher -> the resident helper -> session.run_pod -> KubeBackend -> the API;
nbclient talks plain to the proxy's loopback ports, the proxy CurveZMQ to the pod. Not
proved here: a real kubelet's OOMKilled and DeadlineExceeded (tests/test_kube_backend.py
checks those reasons' words against the API stand-in).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("kmock", reason="kmock needs Python 3.11+")
pytest.importorskip("kubernetes")

from nbclient.exceptions import DeadKernelError

from jupyter_docker_kernel import cli
from tests.test_kill_notice import MEMORY_BOMB, run, stderr_of
from tests.test_kube_story import NS, Cluster, cluster, work_dir

__all__ = ["cluster"]  # the fixture, imported for pytest

pytestmark = pytest.mark.docker

#: Flushed: without it ipykernel 7 buffers faster than it sends, and the kernel runs out of
#: memory (also safe) before the budget is reached.
FLUSHED_FLOOD = "line = 'x' * 10**5\nwhile True:\n    print(line, flush=True)\n"
#: One 20 MiB message: libzmq drops the pod's iopub connection at the frame's header (over
#: --max-message), and the proxy stops the kernel DROP_GRACE later when no reconnect
#: followed. The cell runs on meanwhile (else its reply, on shell, would end it first).
HUGE = (
    "import time\nfrom IPython.display import display\n"
    "display({'text/plain': 'A' * (20 << 20)}, raw=True)\ntime.sleep(60)\n"
)

#: The limit, the cell's code, and what its output must say (the local path's words:
#: notice.kill_notice).
KILLS = {
    "output-budget": (
        ["--output-budget", "8m"],
        FLUSHED_FLOOD,
        "Kernel stopped: output budget of 8m exceeded",
    ),
    "max-message": (
        ["--max-message", "4m"],
        HUGE,
        "Kernel stopped: it sent a message larger than the --max-message limit (4m)",
    ),
    "out-of-memory": (
        ["--memory", "256m"],
        MEMORY_BOMB,
        "Kernel stopped: out of memory (limit 256 MiB)",
    ),
}


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_kernel_pod_killed_by_its_limits_says_why_in_the_cell(
    cluster: Cluster, kernel_image: str, data_dir: Path, tmp_path: Path, kill: str
) -> None:
    """The output budget and --max-message (the proxy's meters stop the pod) and the
    pod's out-of-memory end (the pod ends by itself): nbclient sees the kernel die and the
    cell's stderr says why, in the local path's words."""
    limit, source, said = KILLS[kill]
    assert cli.main(["setup", "--name", "knotice", "--user", "--kubernetes", "--namespace", NS,
                     "--copy-workdir", "--image", kernel_image, *limit]) == 0  # fmt: skip
    nb, raised = run(source, "knotice", work_dir(tmp_path))
    assert isinstance(raised, DeadKernelError), raised
    assert said in stderr_of(nb)
