"""The user's story with a real KernelManager: start, run code, interrupt, restart, shut down.

Every test runs the kernelspec written by `setup` on the default image, with the hardened
defaults, and checks what the engine reports (`docker inspect`), not what we meant to ask.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_docker_kernel.container import Relayed
from jupyter_docker_kernel.launcher import kernel_id_from
from jupyter_docker_kernel.rundir import runtime_base
from tests.conftest import inspect, install_kernel
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    launcher_process,
    running_kernel,
    start,
    stop,
    stream_text,
    wait_for_execute_input,
    wait_for_stream,
    wait_until,
)

pytestmark = pytest.mark.docker


def test_code_runs_in_a_hardened_container_and_output_arrives_on_iopub(
    engine_kernel: str, workdir: Path
) -> None:
    """stdout, stderr, execute_result and error come back; the container is locked down
    (on Docker and on Podman)."""
    (workdir / "data.txt").write_text("from the host\n")
    with running_kernel(engine_kernel, str(workdir)) as (km, kc):
        (container,) = containers_of(kernel_key(km))
        reply, out = execute(
            kc,
            "import os, sys\n"
            "print(open('data.txt').read().strip(), os.getcwd(), os.getuid())\n"
            "print('to stderr', file=sys.stderr)\n"
            "6 * 7",
        )
        assert reply["status"] == "ok"
        uid = 65534 if os.getuid() == 0 else os.getuid()
        assert stream_text(out) == f"from the host {workdir} {uid}\n"
        assert stream_text(out, "stderr") == "to stderr\n"
        results = [m for m in out if m["msg_type"] == "execute_result"]
        assert results[0]["content"]["data"]["text/plain"] == "42"

        reply, out = execute(kc, "1 / 0")
        assert reply["status"] == "error"
        assert reply["ename"] == "ZeroDivisionError"
        assert any(m["msg_type"] == "error" for m in out)

        host = inspect(container)["HostConfig"]
        assert isinstance(host, dict)
        config = inspect(container)["Config"]
        assert isinstance(config, dict)
        assert host["NetworkMode"] == "none"
        # Docker keeps "ALL"; Podman lists each capability it dropped.
        assert host["CapDrop"] == ["ALL"] or {"CHOWN", "KILL", "SETUID"} <= set(host["CapDrop"])
        assert not host["CapAdd"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True
        assert host["Privileged"] is False
        assert host["Memory"] == host["MemorySwap"] > 0
        assert host["PidsLimit"] > 0
        assert host["NanoCpus"] > 0
        assert not config["User"].startswith("0")
        assert not any(e.startswith("JPY_") or e.startswith("JUPYTER_") for e in config["Env"])


def test_completion_inspection_and_history_work(kernel_name: str, workdir: Path) -> None:
    """complete, inspect and history requests are answered by the containerized kernel."""
    with running_kernel(kernel_name, str(workdir)) as (_km, kc):
        execute(kc, "alpha_beta = 1")
        msg = kc.complete("alpha_b", 7, reply=True, timeout=30)
        assert "alpha_beta" in msg["content"]["matches"]
        msg = kc.inspect("len", 3, reply=True, timeout=30)
        assert msg["content"]["found"] is True
        msg = kc.history(hist_access_type="tail", n=5, reply=True, timeout=30)
        assert any("alpha_beta = 1" in entry[2] for entry in msg["content"]["history"])


def test_input_round_trips_through_the_stdin_channel(kernel_name: str, workdir: Path) -> None:
    """input() in the kernel reaches the client's stdin handler and gets its answer."""
    prompts: list[str] = []
    with running_kernel(kernel_name, str(workdir)) as (_km, kc):

        def answer(msg: dict[str, Any]) -> None:
            prompts.append(msg["content"]["prompt"])
            kc.input("Ada")

        reply, out = execute(
            kc, "name = input('who? ')\nprint('hello', name)", allow_stdin=True, stdin_hook=answer
        )
        assert reply["status"] == "ok"
        assert prompts == ["who? "]
        assert stream_text(out) == "hello Ada\n"


def test_matplotlib_png_display_and_clear_output_pass_unchanged(
    kernel_name: str, workdir: Path
) -> None:
    """A matplotlib figure arrives as image/png display_data; clear_output is relayed."""
    with running_kernel(kernel_name, str(workdir)) as (_km, kc):
        reply, out = execute(
            kc,
            "%matplotlib inline\n"
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3]); plt.show()\n"
            "from IPython.display import clear_output\n"
            "clear_output(wait=True)",
        )
        assert reply["status"] == "ok"
        pngs = [m for m in out if m["msg_type"] == "display_data"]
        assert base64.b64decode(pngs[0]["content"]["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert any(m["msg_type"] == "clear_output" for m in out)


def test_comm_messages_pass_between_kernel_and_client(kernel_name: str, workdir: Path) -> None:
    """A comm opened by the kernel reaches the client with its data."""
    with running_kernel(kernel_name, str(workdir)) as (_km, kc):
        reply, out = execute(
            kc,
            "from comm import create_comm\n"
            "c = create_comm(target_name='probe', data={'hello': 'world'})\n"
            "c.send({'n': 1})",
        )
        assert reply["status"] == "ok"
        kinds = {m["msg_type"]: m["content"] for m in out}
        assert kinds["comm_open"]["target_name"] == "probe"
        assert kinds["comm_open"]["data"] == {"hello": "world"}
        assert kinds["comm_msg"]["data"] == {"n": 1}


@pytest.mark.parametrize(
    ("engine_kind", "mode"),
    [("docker", "signal"), ("docker", "message"), ("podman", "signal")],
    indirect=["engine_kind"],
)
def test_interrupt_stops_a_sleep_and_keeps_state(
    engine_kind: str, engine_image: str, workdir: Path, mode: str
) -> None:
    """Interrupt (both modes) ends time.sleep(60) with KeyboardInterrupt, long before the
    sleep would; variables survive, three times over. (No absolute bound: under load the
    reply once took over 10 s; KeyboardInterrupt is what proves the interrupt.)
    On Podman the kernelspec is set up with DOCKER_HOST at Podman (setup detects it)."""
    name = f"jdk-test-int-{mode}-{engine_kind}"
    install_kernel(name, engine_image, "--interrupt-mode", mode)
    with running_kernel(name, str(workdir)) as (km, kc):
        execute(kc, "x = 41")
        for _ in range(3):
            msg_id = kc.execute("print('sleeping', flush=True); import time; time.sleep(60)")
            wait_for_stream(kc, msg_id, "sleeping")  # interrupting before it runs aborts it
            began = time.monotonic()
            km.interrupt_kernel()
            while True:
                reply = kc.get_shell_msg(timeout=45)
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            assert time.monotonic() - began < 45  # the sleep was 60 s
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        reply, out = execute(kc, "x + 1")
        assert [
            m["content"]["data"]["text/plain"] for m in out if m["msg_type"] == "execute_result"
        ] == ["42"]


def test_restart_gives_a_fresh_container_and_removes_the_old_one(
    engine_kernel: str, workdir: Path
) -> None:
    """After restart the kernel state is new, in a new container; the old one is gone."""
    with running_kernel(engine_kernel, str(workdir)) as (km, kc):
        execute(kc, "x = 1")
        (before,) = containers_of(kernel_key(km))
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=120)
        (after,) = containers_of(kernel_key(km))
        assert after != before
        _, out = execute(kc, "'x' in dir()")
        assert [
            m["content"]["data"]["text/plain"] for m in out if m["msg_type"] == "execute_result"
        ] == ["False"]


def test_async_kernel_manager_runs_and_shuts_down_the_kernel(
    kernel_name: str, workdir: Path
) -> None:
    """AsyncKernelManager (what nbclient and jupyter_server use) drives the same lifecycle."""

    async def story() -> str:
        km = AsyncKernelManager(kernel_name=kernel_name)
        await km.start_kernel(cwd=str(workdir))
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            reply = await kc.execute_interactive("print('async ok')", timeout=60)
            assert reply["content"]["status"] == "ok"
            await km.interrupt_kernel()
            return kernel_id_from(km.connection_file)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    kernel_id = asyncio.run(story())
    wait_until(lambda: not containers_of(kernel_id), 10)


def test_shutdown_leaves_no_container_no_process_and_no_files(
    engine_kernel: str, workdir: Path
) -> None:
    """A clean shutdown removes the container, ends the launcher and empties our runtime dir."""
    km, kc = start(engine_kernel, str(workdir))
    launcher = launcher_process(km)
    base = runtime_base()
    assert any(p.name.startswith(kernel_key(km)) for p in base.iterdir())
    stop(km, kc)
    assert launcher.poll() is not None
    wait_until(lambda: not containers_of(kernel_key(km)), 10)
    wait_until(lambda: not any(p.name.startswith(kernel_key(km)) for p in base.iterdir()), 10)


def test_sigterm_to_the_launcher_removes_the_container(kernel_name: str, workdir: Path) -> None:
    """SIGTERM (jupyter_client's terminate) removes the container and ends the launcher."""
    km, kc = start(kernel_name, str(workdir))
    try:
        launcher = launcher_process(km)
        msg_id = kc.execute("import time; time.sleep(100)")
        wait_for_execute_input(kc, msg_id)
        os.kill(launcher.pid, signal.SIGTERM)
        wait_until(lambda: not containers_of(kernel_key(km)), 5)
        wait_until(lambda: launcher.poll() is not None, 5)
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def processes_naming(text: str) -> list[str]:
    """Command lines of the host's processes whose argv contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_a_cold_start_leaves_no_engine_cli_process_running(kernel_name: str, workdir: Path) -> None:
    """Issue 17: the container is created by one short `docker create`, then started,
    held (its lifeline socket) and awaited through the engine's API: while the kernel
    runs, no `docker run` (or any engine CLI) process names its container."""
    km, kc = start(kernel_name, str(workdir))
    try:
        reply, _ = execute(kc, "1")
        assert reply["status"] == "ok"
        (container,) = containers_of(kernel_key(km))
        name = str(inspect(container)["Name"]).lstrip("/")
        assert not processes_naming(name)
        assert launcher_process(km).poll() is None
    finally:
        stop(km, kc)


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"image": "jdk-test-no-such-image:1"}, 125, "image"),
        ({"python": "/no/such/python3"}, 127, "no/such/python3"),
    ],
    ids=["no image: create refuses", "no python: start refuses"],
)
def test_a_refused_cold_start_keeps_docker_runs_code_and_words(
    kernel_image: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, Any],
    code: int,
    words: str,
) -> None:
    """The engine refusing the start (`docker create`, or the API's start) ends the kernel
    as `docker run` did: its exit code (125, 126/127 as the docker CLI maps a start error)
    and words, which the exit line explains."""
    import dataclasses
    import json

    from jupyter_docker_kernel.container import Container
    from jupyter_docker_kernel.settings import KernelSettings

    settings = dataclasses.replace(KernelSettings(image=kernel_image, workdir="none"), **change)
    connection = tmp_path / "kernel-refused.json"
    connection.write_text(json.dumps({"key": "k", "kernel_name": "x"}))
    container = Container(settings, str(connection), base=tmp_path / "run")
    try:
        container.start()
        container.attach(lambda: 0)
        ending = container.wait()
        assert ending.code == code
        assert words in ending.said
        with caplog.at_level("INFO", logger="jupyter_docker_kernel"):
            container.finish(ending, Relayed())
        assert "The kernel's container did not start" in caplog.text
    finally:
        container.close()
    assert not (tmp_path / "run").exists()


def test_the_cli_fallback_still_runs_a_kernel_attached(kernel_image: str, tmp_path: Path) -> None:
    """Where the engine has no API on a unix socket (CliBackend), a cold start is the
    attached `docker run -i` as before: its stdin is the lifeline, its exit code the
    container's; stopping removes the container and the runtime dir."""
    import json

    from jupyter_docker_kernel.container import Container
    from jupyter_docker_kernel.engine import Engine
    from jupyter_docker_kernel.local_backend import CliBackend
    from jupyter_docker_kernel.settings import KernelSettings

    connection = tmp_path / "kernel-cli.json"
    connection.write_text(json.dumps({"key": "k", "kernel_name": "x"}))
    settings = KernelSettings(image=kernel_image, workdir="none")
    container = Container(settings, str(connection), CliBackend(Engine()), base=tmp_path / "r")
    try:
        container.start()
        container.attach(lambda: 0)
        assert processes_naming(container.name), "no `docker run` process"
        wait_until(lambda: bool(containers_of(container.kernel_id, running_only=True)), 60)
        container.stop("stopped by the test", block=True)
        ending = container.wait()
        assert ending.cold
        assert ending.reason == "stopped by the test"
    finally:
        container.close()
    assert not containers_of(container.kernel_id)
    assert not (tmp_path / "r").exists()
