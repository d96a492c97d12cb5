"""Issue 17's hand-over, end to end: real kernels through the compiled client with
JUPYTER_DOCKER_KERNEL_HANDOVER unset (the default: on), the real helper, a real engine and
jupyter_client.

After the helper hands a kernel over (docs/design/issue17/c-relay.md, "Build plan") the
compiled client relays, watches and stops by itself and the helper exits once idle: these
stories check that the kernel then still runs, answers, interrupts, survives the next
helper's start sweep, ends with its own exit code and leaves nothing behind, and that a
SIGKILL of the client still ends its container within 5 s (the lifeline) and its watcher
removes the runtime dir, while a SIGKILL of the helper no longer touches a kernel it handed
over (tests/test_hosting.py tells the kernels the helper keeps, with the switch at 0).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli, helper, hosting, rundir, thin, thin_client
from jupyter_docker_kernel.rundir import runtime_base
from tests.conftest import end_helpers, helpers_of, install_kernel
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    launcher_process,
    stream_text,
    wait_for_execute_input,
    wait_until,
)

#: The helper's idle timeout in these stories: it exits this long after its last session,
#: which, for a handed-over kernel, ends right after the start.
IDLE = "2"


@pytest.fixture(scope="module")
def handover_kernel(kernel_image: str) -> str:
    """A kernelspec written by setup, through the compiled client (asserted), with
    --copy-workdir (grading's: the copy is written whole before the hand-over)."""
    path = install_kernel("handover-test", kernel_image, "--copy-workdir")
    argv = json.loads((path / "kernel.json").read_text())["argv"]
    assert os.path.basename(argv[0]).startswith(thin_client.BINARY_PREFIX)
    return "handover-test"


@pytest.fixture
def handing_over(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Kernels started now are handed over (the default), by a fresh helper that idles out
    fast."""
    monkeypatch.delenv(thin.HANDOVER_ENV, raising=False)
    monkeypatch.setenv(helper.IDLE_ENV, IDLE)
    end_helpers()  # the next kernel's client starts a helper with this environment
    yield
    end_helpers()


def start(kernel_name: str, cwd: Path) -> tuple[KernelManager, object]:
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def no_helper() -> bool:
    return not helpers_of(str(runtime_base()))


@pytest.mark.docker
def test_a_handed_over_kernel_outlives_its_helper_answers_interrupts_and_exits_with_its_code(
    handover_kernel: str, workdir: Path, handing_over: None
) -> None:
    (workdir / "answer.txt").write_text("42")
    km, kc = start(handover_kernel, workdir)
    kid = kernel_key(km)
    try:
        took = wait_until(no_helper, 30)
        print(f"the helper exited {took:.1f} s after the kernel was ready")
        assert containers_of(kid, running_only=True)
        # The next helper's start sweep (reaper.collect, as gc runs it) must see the
        # compiled client as the kernel's launcher, alive: the kernel stays.
        assert cli.main(["gc"]) == 0
        assert containers_of(kid, running_only=True)
        code = "print(open('answer.txt').read())"  # the copy of the notebook's dir
        reply, outputs = execute(kc, code)  # type: ignore[arg-type]
        assert reply["status"] == "ok"
        assert stream_text(outputs) == "42\n"
        msg_id = kc.execute("import time; time.sleep(60)")  # type: ignore[attr-defined]
        wait_for_execute_input(kc, msg_id)  # type: ignore[arg-type]
        km.interrupt_kernel()  # SIGINT to the compiled client: the engine's kill API
        reply = kc.get_shell_msg(timeout=30)  # type: ignore[attr-defined]
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        kc.execute("import os; os._exit(3)")  # type: ignore[attr-defined]
        assert launcher_process(km).wait(timeout=30) == 3  # finish.py's exit code
    finally:
        kc.stop_channels()  # type: ignore[attr-defined]
        km.shutdown_kernel(now=True)
    assert not containers_of(kid)
    assert not list(Path(rundir.runtime_base()).glob(f"*{kid}*"))


@pytest.mark.docker
def test_a_killed_handed_over_client_has_its_container_and_runtime_dir_gone_within_5s(
    handover_kernel: str, workdir: Path, handing_over: None
) -> None:
    km, kc = start(handover_kernel, workdir)
    kid = kernel_key(km)
    try:
        wait_until(no_helper, 30)
        client = launcher_process(km)
        os.killpg(client.pid, signal.SIGKILL)  # as jupyter_client's kill does
        client.wait(timeout=5)
        took = wait_until(lambda: not containers_of(kid), 5)
        print(f"container removed {took:.2f} s after the handed-over client's SIGKILL")
        # The watcher's finish --lost removes the runtime dir too, not the next sweep.
        wait_until(lambda: not list(Path(rundir.runtime_base()).glob(f"*{kid}*")), 5)
    finally:
        kc.stop_channels()  # type: ignore[attr-defined]
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        km.cleanup_resources()


@pytest.mark.docker
def test_a_sigkilled_helper_leaves_a_kernel_it_handed_over_running(
    handover_kernel: str, workdir: Path, handing_over: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(helper.IDLE_ENV, "120")  # the helper the start spawns stays, to be killed
    km, kc = start(handover_kernel, workdir)
    kid = kernel_key(km)
    try:
        state = f"*{kid}*/{hosting.HANDOVER_STATE}"
        wait_until(lambda: list(Path(rundir.runtime_base()).glob(state)), 10)
        (pid,) = helpers_of(str(runtime_base()))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5)
        time.sleep(5)  # a SIGKILLed helper's own kernels are gone within this
        assert containers_of(kid, running_only=True)
        reply, outputs = execute(kc, "print(6 * 7)")  # type: ignore[arg-type]
        assert (reply["status"], stream_text(outputs)) == ("ok", "42\n")
    finally:
        kc.stop_channels()  # type: ignore[attr-defined]
        km.shutdown_kernel(now=True)
    assert not containers_of(kid)
