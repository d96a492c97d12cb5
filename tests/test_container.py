"""container.Container: the one lifecycle both adapters (argv launcher, provisioner) use.

The exit line is a table over exit_report, with the reasons each adapter gives; then the
Container's own rules, driven through a fake Backend as the provisioner drives them
(signal("INT"), stop(..., block=True), wait, finish): no engine needed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import hardening, pool
from jupyter_docker_kernel.container import (
    Cold,
    Container,
    Ending,
    Relayed,
    exit_report,
    exit_verdict,
)
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings

SETTINGS = KernelSettings(workdir="none")
RELAYED = Relayed(out=10, into=20, charged=5)
TAIL = "after 1.5 s; relayed 10 bytes out, 20 in; 5 bytes of output counted against the budget"
INFO, WARNING = logging.INFO, logging.WARNING


def ending(
    code: int,
    reason: str = "",
    *,
    stopping: bool = False,
    interrupted: bool = False,
    said: str = "",
    cold: bool = True,
) -> Ending:
    return Ending(code, reason, stopping, interrupted, said, "", cold)


#: (case, ending, level, what follows "exited with code " in the line). Reasons as each
#: adapter gives them: the launcher's "stopped by the Jupyter client" (SIGTERM/HUP), the
#: provisioner's "killed/terminated by the Jupyter client", and the shared ones.
EXIT_LINES = [
    ("normal end", ending(0), INFO, "0"),
    ("a failure", ending(1), WARNING, "1"),
    (
        "130 just after an interrupt (both adapters)",
        ending(130, interrupted=True),
        INFO,
        "130 (SIGINT just after an interrupt, as Jupyter sends before a shutdown)",
    ),
    ("130 with no interrupt", ending(130), WARNING, "130"),
    (
        "0 after the shutdown's interrupt",
        ending(0, interrupted=True),
        INFO,
        "0 (shut down; the interrupt just before was part of the shutdown)",
    ),
    (
        "launcher: SIGTERM from the client",
        ending(137, "stopped by the Jupyter client", stopping=True),
        INFO,
        "137 (stopped by the Jupyter client)",
    ),
    (
        "provisioner: kill",
        ending(137, "killed by the Jupyter client", stopping=True),
        INFO,
        "137 (killed by the Jupyter client)",
    ),
    (
        "provisioner: terminate",
        ending(143, "terminated by the Jupyter client", stopping=True),
        INFO,
        "143 (terminated by the Jupyter client)",
    ),
    (
        "lifetime (the provisioner now says it too)",
        ending(137, "maximum lifetime of 60 s reached", stopping=True),
        INFO,
        "137 (maximum lifetime of 60 s reached)",
    ),
    (
        "gVisor OOM from inspect",
        ending(137, "out of memory (limit 256 MiB), as the engine reports"),
        WARNING,
        "137 (out of memory (limit 256 MiB), as the engine reports)",
    ),
    (
        "budget",
        ending(137, "budget exceeded: 70 MB of output on iopub", stopping=True),
        INFO,
        "137 (budget exceeded: 70 MB of output on iopub)",
    ),
    (
        "nobody held the lifeline (a cold start through the API)",
        ending(75),
        WARNING,
        "75 (nobody held its lifeline: the process that started it went away before "
        "connecting, so the kernel never ran)",
    ),
    ("75 from a warm kernel: the kernel's own code", ending(75, cold=False), WARNING, "75"),
]


@pytest.mark.parametrize(
    ("case", "end", "level", "code"), EXIT_LINES, ids=[c[0] for c in EXIT_LINES]
)
def test_exit_line(case: str, end: Ending, level: int, code: str) -> None:
    report = exit_report("jdk-k-1", end, 1.5, RELAYED, SETTINGS)
    assert report.line == f"kernel container jdk-k-1 exited with code {code} {TAIL}"
    assert report.level == level
    assert report.failure == ""


def test_the_exit_line_of_a_kernel_nobody_relayed_says_so() -> None:
    """A kernel pod's clients connect straight to it: no byte counts, which would read 0."""
    report = exit_report("jdk-k-1", ending(0), 1.5, Relayed(metered=False), SETTINGS)
    assert report.line == (
        "kernel container jdk-k-1 exited with code 0 after 1.5 s; "
        "not relayed (the clients connected straight to it)"
    )


@pytest.mark.parametrize("code", [125, 126, 127])
def test_a_cold_start_the_engine_refused_is_explained(code: int) -> None:
    said = "docker: Error response from daemon: something went wrong.\n"
    report = exit_report("jdk-k-1", ending(code, said=said), 0.2, Relayed(), SETTINGS)
    assert report.level == WARNING
    assert report.failure.startswith("The kernel's container did not start: ")
    assert report.failure.endswith(
        "'jupyter-docker-kernel doctor' checks every kernelspec the same way."
    )


def test_a_start_on_a_node_without_the_image_says_to_push_it_to_that_node() -> None:
    """A pool's start picked the node (Ending.node), not the spec's first one: the fix is
    the `image push` of that node, not "build or pull" (kernels never pull, nor do nodes)."""
    said = "Unable to find image 'x:1' locally\ndocker: Error response from daemon: No such image\n"
    pool_spec = KernelSettings(
        workdir="none", image="x:1", engine_host="ssh://a", nodes=("ssh://a", "ssh://b")
    )
    end = Ending(125, "", False, False, said, "", True, node="ssh://b")
    report = exit_report("jdk-k-1", end, 0.2, Relayed(), pool_spec)
    assert "\n" not in report.failure
    assert "image x:1 is not present on the node ssh://b" in report.failure
    assert "To fix: run 'jupyter-docker-kernel image push ssh://b --tag x:1'" in report.failure


@pytest.mark.parametrize(
    "end", [ending(125, cold=False), ending(125, "stopped by the Jupyter client", stopping=True)]
)
def test_no_start_failure_for_a_warm_container_or_a_stop(end: Ending) -> None:
    assert exit_report("jdk-k-1", end, 0.2, Relayed(), SETTINGS).failure == ""


def test_exit_verdict_keeps_a_reason_we_gave() -> None:
    assert exit_verdict(130, "x", stopping=True, interrupted=True) == (INFO, "x")


# -- the lifecycle through a fake backend -------------------------------------------------------


class FakeBackend:
    """Records the engine calls a Container makes; its warm container exits with `code`
    once removed or told to."""

    def __init__(self, code: int = 0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.code = code
        self.exited = threading.Event()

    def start_cold(
        self, settings: KernelSettings, launch: hardening.Launch, rundir: RunDir
    ) -> Cold:
        raise AssertionError("not started cold in these tests")

    def claim(self, settings: KernelSettings, base: Path, new_dir: Path) -> pool.Claim | None:
        return None

    def rename(self, container_id: str, name: str) -> bool:
        return True

    def update(self, container_id: str, cpu_shares: int) -> None:
        self.calls.append(("update", container_id, str(cpu_shares)))

    def inspect(self, name: str) -> dict[str, Any] | None:
        return None

    def wait(self, container_id: str) -> int:
        self.exited.wait(10)
        return self.code

    def signal(self, name: str, sig: str) -> bool:
        self.calls.append(("signal", name, sig))
        return True

    def kill_now(self, name: str) -> None:
        self.calls.append(("kill_now", name))

    def remove(self, name: str) -> bool:
        self.calls.append(("remove", name))
        self.exited.set()
        return True

    def fill(self, settings: KernelSettings, base: Path, launch: hardening.Launch) -> Any:
        raise AssertionError("no pool in these tests")

    def watchdog(self, name: str, cidfile: Path, base: Path) -> int:
        raise AssertionError("no watchdog in these tests")

    def executable(self) -> str:
        return "docker"

    def env(self) -> dict[str, str] | None:
        return None

    def sockets(self) -> list[str]:
        return ["/run/docker.sock"]


@pytest.fixture
def container(tmp_path: Path) -> Container:
    connection = tmp_path / "kernel-abc.json"
    connection.write_text(json.dumps({"key": "k", "kernel_name": "x"}))
    made = Container(
        SETTINGS, str(connection), FakeBackend(), base=tmp_path / "dir", workdir=str(tmp_path)
    )
    made.container_id = "cid1"
    return made


def test_the_provisioners_interrupt_counts_for_the_130_rule(
    container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    """send_signal(SIGINT) -> Container.signal("INT"): the time is recorded, as the
    launcher's SIGINT handler records it, so a 130 right after is the shutdown's."""
    backend = container.backend
    assert isinstance(backend, FakeBackend)
    backend.code = 130
    container.signal("INT")
    assert backend.calls == [("signal", "cid1", "INT")]
    backend.exited.set()
    end = container.wait()
    assert end.interrupted
    assert not end.stopping
    assert end.code == 130
    caplog.set_level(logging.INFO, logger="jupyter_docker_kernel")
    assert container.finish(end, RELAYED) == 130
    (line,) = [r for r in caplog.records if "exited with code" in r.getMessage()]
    assert line.levelno == INFO
    assert (
        "(SIGINT just after an interrupt, as Jupyter sends before a shutdown)" in line.getMessage()
    )


def test_the_first_stop_reason_wins_and_kill_still_removes(container: Container) -> None:
    """terminate (TERM) then kill: the exit line says terminated, and the container is
    removed anyway (the provisioner's shutdown steps)."""
    backend = container.backend
    assert isinstance(backend, FakeBackend)
    container.stop("terminated by the Jupyter client", term=True, block=True)
    container.stop("killed by the Jupyter client", block=True)
    assert backend.calls == [("signal", "cid1", "TERM"), ("remove", "cid1")]
    end = container.wait()
    assert end.stopping
    assert end.reason == "terminated by the Jupyter client"


def test_the_lifetime_notice_is_the_kill_notice_of_both_adapters(container: Container) -> None:
    """Container.wait makes the notice text the adapters publish; the lifetime stop's
    reason reaches it (the provisioner's used to record none)."""
    container.stop("maximum lifetime of 60 s reached", block=True)
    end = container.wait()
    assert end.notice.startswith("Kernel stopped: maximum lifetime of 60 s reached.")


def test_the_refills_gate_holds_until_a_line_or_eof() -> None:
    """pool.GATED_FILL reads the payload, then waits at the gate before it imports
    anything of ours; here its last lines echo the payload instead of filling."""
    code = pool.GATED_FILL.format(wait=30).replace(
        "from jupyter_docker_kernel.pool import fill_from\nsys.exit(fill_from(line.decode()))",
        "print(line.decode(), flush=True)",
    )
    assert "print(line" in code
    for release in (b"go\n", b""):
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(b'{"payload": 1}\n')
        proc.stdin.flush()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)  # held at the gate
        proc.stdin.write(release)
        proc.stdin.close()  # EOF opens it too (the client's exit)
        assert proc.stdout.read() == b'{"payload": 1}\n'
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


def test_the_api_backend_is_used_where_the_engine_has_one_on_a_unix_socket(
    tmp_path: Path,
) -> None:
    """LocalBackend (API, lifeline socket) for a unix socket that exists; SshBackend for a
    remote node (ssh://); CliBackend (`docker run -i`) for tcp://, which EngineApi cannot
    reach yet."""
    from jupyter_docker_kernel.engine import Engine
    from jupyter_docker_kernel.local_backend import CliBackend, LocalBackend
    from jupyter_docker_kernel.node_backend import SshBackend

    sock = tmp_path / "engine.sock"
    sock.touch()
    assert type(LocalBackend.for_engine(Engine(host=f"unix://{sock}"))) is LocalBackend
    assert type(LocalBackend.for_engine(Engine(host="ssh://user@node"))) is SshBackend
    for host in ("tcp://127.0.0.1:2375", f"unix://{tmp_path}/none.sock"):
        assert type(LocalBackend.for_engine(Engine(host=host))) is CliBackend


@pytest.mark.parametrize("first", ["container", "local_backend", "watchdog"])
def test_the_watchdogs_old_import_paths_still_resolve(first: str) -> None:
    """Watchdog processes an earlier version spawned run `from jupyter_docker_kernel.container
    import watch_owner` (or watch_lifeline), kernel.json files of earlier releases reach
    watch_lifeline through the launcher: both now find watchdog.py's. In a fresh
    interpreter, each module imported first: no import cycle between the three."""
    code = (
        f"import jupyter_docker_kernel.{first}\n"
        "from jupyter_docker_kernel import watchdog\n"
        "from jupyter_docker_kernel.container import Container, watch_lifeline, watch_owner\n"
        "from jupyter_docker_kernel.launcher import watch_lifeline as old\n"
        "assert watch_lifeline is old is watchdog.watch_lifeline\n"
        "assert watch_owner is watchdog.watch_owner\n"
        "from jupyter_docker_kernel.local_backend import LocalBackend\n"
        "assert Container and LocalBackend\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
