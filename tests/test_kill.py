"""When things go wrong: a killed launcher, a dying kernel, many kernels at once, gc.

Whatever happens, nothing of ours may be left running, and the launcher's log (which the
Jupyter server and nbgrader show) must say why a kernel ended.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_docker_kernel import cli
from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel.launcher import kernel_id_from
from jupyter_docker_kernel.rundir import runtime_base
from tests.conftest import install_kernel
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    launcher_process,
    running_kernel,
    start,
    stream_text,
    wait_for_execute_input,
    wait_until,
)

pytestmark = pytest.mark.docker


def test_sigkill_to_the_launcher_mid_execution_removes_the_container_within_5s(
    engine_kernel: str, workdir: Path
) -> None:
    """SIGKILL (no handler can run) still removes the container, with nobody running gc
    (on Podman too: the watchdog reaches it)."""
    km, kc = start(engine_kernel, str(workdir))
    try:
        launcher = launcher_process(km)
        msg_id = kc.execute("while True: pass")
        wait_for_execute_input(kc, msg_id)
        os.killpg(launcher.pid, signal.SIGKILL)  # as jupyter_client's kill does
        launcher.wait(timeout=5)
        took = wait_until(lambda: not containers_of(kernel_key(km)), 5)
        print(f"container removed {took:.2f} s after SIGKILL")
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_sigkill_to_the_launcher_leaves_no_process_or_runtime_dir(
    kernel_name: str, workdir: Path
) -> None:
    """After a SIGKILL the watchdog also goes, taking the runtime dir (and the key) with it."""
    km, kc = start(kernel_name, str(workdir))
    base = runtime_base()
    try:
        launcher = launcher_process(km)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=5)
        wait_until(lambda: not containers_of(kernel_key(km)), 5)
        wait_until(lambda: not any(p.name.startswith(kernel_key(km)) for p in base.iterdir()), 5)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
        assert kernel_key(km) not in ps.stdout
    finally:
        kc.stop_channels()
        km.cleanup_resources()


def test_kernel_exiting_by_itself_ends_the_launcher_with_its_exit_code_logged(
    engine_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """os._exit(3) in a cell: the container goes, the launcher exits 3 and says so (the
    exit code through `docker run`, or Podman's)."""
    log = tmp_path / "launcher.log"
    with running_kernel(engine_kernel, workdir, log=log) as (km, kc):
        launcher = launcher_process(km)
        kc.execute("import os; os._exit(3)")
        wait_until(lambda: launcher.poll() is not None, 10)
        assert launcher.returncode == 3
        wait_until(lambda: not containers_of(kernel_key(km)), 5)
        text = log.read_text()
        assert "kernel exited with code 3" in text
        assert "exited with code 3" in text


def test_out_of_memory_is_reported_as_such(
    engine_kind: str, engine_image: str, workdir: Path, tmp_path: Path
) -> None:
    """A memory bomb under --memory 256m is OOM-killed and the log says 'out of memory'."""
    name = f"jdk-test-oom-{engine_kind}"
    install_kernel(name, engine_image, "--memory", "256m")
    log = tmp_path / "launcher.log"
    with running_kernel(name, workdir, log=log) as (km, kc):
        launcher = launcher_process(km)
        kc.execute("x = bytearray(1 << 30)")
        wait_until(lambda: launcher.poll() is not None, 30)
        wait_until(lambda: not containers_of(kernel_key(km)), 5)
        assert "out of memory (limit 256 MiB)" in log.read_text()


def test_twenty_kernels_at_once_all_answer_and_all_are_removed(
    kernel_name: str, workdir: Path
) -> None:
    """20 kernels started concurrently never collide: each answers with its own result."""

    async def one(i: int) -> tuple[str, str]:
        km = AsyncKernelManager(kernel_name=kernel_name)
        await km.start_kernel(cwd=str(workdir))
        kc = km.client()
        kc.start_channels()
        out: list[dict[str, Any]] = []
        try:
            await kc.wait_for_ready(timeout=180)
            await kc.execute_interactive(f"print({i} * 2)", timeout=120, output_hook=out.append)
            return kernel_key(km), stream_text(out)
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()

    async def all_of_them() -> list[tuple[str, str]]:
        return list(await asyncio.gather(*(one(i) for i in range(20))))

    results = asyncio.run(all_of_them())
    assert [text for _, text in results] == [f"{i * 2}\n" for i in range(20)]
    assert len({kid for kid, _ in results}) == 20
    wait_until(lambda: not any(containers_of(kid) for kid, _ in results), 20)


def test_gc_removes_containers_of_dead_launchers_and_keeps_live_ones(
    kernel_name: str, kernel_image: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A container whose labelled launcher is gone is removed by gc; a live kernel is not."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = subprocess.run(
        [
            "docker", "run", "-d", "--pull=never", "--network", "none",
            "--label", f"{engine_mod.LABEL_KERNEL_ID}=orphan-test",
            "--label", f"{engine_mod.LABEL_LAUNCHER_PID}={dead.pid}",
            "--label", f"{engine_mod.LABEL_LAUNCHER_START}=1",
            "--label", f"{engine_mod.LABEL_LAUNCHER_HOST}={os.uname().nodename}",
            "--label", f"{engine_mod.LABEL_OWNER_UID}={os.getuid()}",
            kernel_image, "sleep", "300",
        ],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        with running_kernel(kernel_name, workdir) as (km, kc):
            assert cli.main(["gc"]) == 0
            out = capsys.readouterr().out
            # At least ours: earlier tests of a full run may leave orphans of their own.
            assert re.search(r"Removed [1-9][0-9]* container\(s\)", out), out
            assert containers_of("orphan-test") == []
            assert containers_of(kernel_key(km), running_only=True) != []
            reply, _ = execute(kc, "1")
            assert reply["status"] == "ok"
    finally:
        subprocess.run(["docker", "rm", "-f", orphan], capture_output=True, check=False)


def test_a_dead_jupyter_client_takes_its_kernels_container_with_it(
    kernel_name: str, workdir: Path
) -> None:
    """The client process SIGKILLed (no shutdown ever sent): the launcher notices and the
    container goes, as a local ipykernel exits when its parent dies."""
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from jupyter_client.manager import KernelManager\n"
            f"km = KernelManager(kernel_name={kernel_name!r})\n"
            f"km.start_kernel(cwd={str(workdir)!r})\n"
            "print(km.connection_file, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        kernel_id = kernel_id_from(client.stdout.readline().strip())
        wait_until(lambda: containers_of(kernel_id, running_only=True) != [], 60)
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
    took = wait_until(lambda: not containers_of(kernel_id), 10)
    print(f"container removed {took:.2f} s after the client died")


def test_gc_leaves_the_resident_helpers_files_alone(engine: engine_mod.Engine) -> None:
    """The runtime base also holds the resident helper's socket, lock and log (thin.paths):
    gc (and the janitor's sweep, which runs the same rules at a provisioner's start) must
    not take them for a dead kernel's leftovers, or new clients could not find the helper."""
    from jupyter_docker_kernel import reaper

    base = runtime_base()
    base.mkdir(mode=0o700, exist_ok=True)
    files = [base / f"helper-{os.getpid()}-test.{ext}" for ext in ("lock", "log")]
    try:
        for path in files:
            path.write_text("")
            os.utime(path, (time.time() - 3600, time.time() - 3600))
        result = reaper.collect(engine, dry_run=True)
        assert not {str(path) for path in files} & set(result.dirs)
    finally:
        for path in files:
            path.unlink(missing_ok=True)
