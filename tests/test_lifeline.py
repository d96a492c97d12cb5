"""The supervisor's lifeline socket in a real, detached container (issue 17, step B0).

Each container is the kernel's hardened container (hardening.run_args), made by `docker
create` (engine.create_args) and started through the engine's API, with the supervisor's
--lifeline and a stand-in kernel (`sleep`). A separate process holds the lifeline; its
SIGKILL must end the container within 5 s, and a container nobody connects to must end
within its --lifeline-wait. On runc, gVisor (runsc) and Podman's compat API.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import jupyter_docker_kernel
from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import hardening, lifeline
from jupyter_docker_kernel.engine import Engine, EngineApi, podman_socket
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings
from tests.conftest import not_here

SUPERVISOR = Path(jupyter_docker_kernel.__file__).with_name("_supervise.py")
#: SIGKILL of the holder -> the container has exited (issue 17's bound).
BOUND_SECONDS = 5.0


@dataclass
class Target:
    """Where the test containers run: an engine's CLI and API, and the settings for it."""

    name: str
    engine: Engine
    api: EngineApi
    settings: KernelSettings


@pytest.fixture(params=["runc", "runsc", "podman"])
def target(request: pytest.FixtureRequest, kernel_image: str) -> Target:
    name = str(request.param)
    if name == "podman":
        try:
            host = podman_socket()
            eng = Engine(host=host)
            eng.require_image(DEFAULT_IMAGE)
        except Exception as exc:
            not_here(f"Podman is not ready ({exc}); run scripts/bootstrap-podman", "Podman")
        return Target(name, eng, eng.api(), podman_settings(eng))
    eng = Engine()
    if name == "runsc":
        runsc = (eng.info().get("Runtimes") or {}).get("runsc")
        if runsc is None:
            not_here("runtime runsc is not registered (scripts/bootstrap-engine --runsc)", "gVisor")
        # The supervisor binds the lifeline in a host dir: gVisor must create host sockets.
        assert "--host-uds=create" in runsc.get("runtimeArgs", []), runsc
    settings = KernelSettings(
        image=kernel_image, workdir="none", runtime=None if name == "runc" else name
    )
    return Target(name, eng, eng.api(), settings)


_podman_nproc: list[int | None] = []


def podman_settings(eng: Engine) -> KernelSettings:
    """As `setup --podman` makes them: nproc pinned to Podman's default (any --ulimit
    replaces it by a value the service may not grant)."""
    if not _podman_nproc:
        _podman_nproc.append(eng.default_nproc(DEFAULT_IMAGE, "python3"))
    nproc = _podman_nproc[0]
    extra = (f"--ulimit=nproc={nproc}:{nproc}",) if nproc is not None else ()
    return KernelSettings(image=DEFAULT_IMAGE, engine="podman", workdir="none", docker_args=extra)


@dataclass
class Started:
    container: str
    runtime_dir: Path
    began: float


@pytest.fixture
def start_detached(target: Target, tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """start(wait) creates and starts one lifeline container; all are removed at teardown."""
    made: list[str] = []

    def start(
        wait: float = lifeline.LIFELINE_WAIT_SECONDS, command: list[str] | None = None
    ) -> Started:
        runtime_dir = tmp_path / f"rt-{len(made)}"
        runtime_dir.mkdir(mode=0o700)
        args = lifeline_create_args(target.settings, runtime_dir, wait, command)
        uid, gid = (
            int(x) for x in hardening.kernel_user(target.settings, launch(runtime_dir)).split(":")
        )
        if uid != os.getuid():
            os.chown(runtime_dir, uid, gid)  # root starting it for an unprivileged kernel
        container = target.engine.run(args, timeout=120).stdout.strip()
        made.append(container)
        began = time.monotonic()
        target.api.start(container)
        return Started(container, runtime_dir, began)

    yield start
    for container in made:
        target.api.remove(container)


def launch(runtime_dir: Path) -> hardening.Launch:
    token = runtime_dir.parent.name[-8:] + runtime_dir.name
    return hardening.Launch(
        kernel_id=f"test-lifeline-{token}",
        container_name=f"jdk-test-lifeline-{secrets.token_hex(4)}",
        runtime_dir=str(runtime_dir),
        connection_file="",
        supervisor_path=str(SUPERVISOR),
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        workdir=str(runtime_dir),
        launcher_pid=os.getpid(),
    )


def lifeline_create_args(
    settings: KernelSettings, runtime_dir: Path, wait: float, command: list[str] | None = None
) -> list[str]:
    """The kernel's `docker create` args with --lifeline and `command` (default: `sleep
    600`) as the kernel."""
    args = hardening.run_args(settings, launch(runtime_dir))
    cut = args.index("--", args.index(hardening.SUPERVISOR_TARGET))
    path = f"{hardening.RUNTIME_TARGET}/{lifeline.LIFELINE_SOCKET}"
    args = [
        *args[:cut],
        "--lifeline",
        path,
        "--lifeline-wait",
        f"{wait:g}",
        "--",
        *(command or ["sleep", "600"]),
    ]
    return engine_mod.create_args(args)


def hold(path: Path) -> subprocess.Popen[bytes]:
    """A separate process connects to the lifeline, sends its claim line and holds it."""
    code = (
        "import sys, time\n"
        "from jupyter_docker_kernel import lifeline\n"
        "sock = lifeline.connect(sys.argv[1], 10)\n"
        "sock.sendall(lifeline.claim_line())\n"
        "print('held', flush=True)\n"
        "while sock.recv(65536):\n"
        "    pass\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    holder.stdout.close()
    return holder


def wait_in_thread(api: EngineApi, container: str) -> tuple[threading.Thread, list[object]]:
    """POST wait, asked now (the container is running), answered when it exits: the time
    and the exit code land in the list. Asked before the end, so --rm cannot hide it."""
    result: list[object] = []

    def run() -> None:
        try:
            result.extend([api.wait(container, timeout=60), time.monotonic()])
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.2)  # let the request reach the engine
    return thread, result


@pytest.mark.docker
def test_sigkill_of_the_lifeline_holder_ends_the_container(
    target: Target, start_detached: Callable[..., Started]
) -> None:
    """The holder (a launcher, server or helper) is SIGKILLed: the container exits within
    5 s, with nothing on the host doing it (no watchdog, no engine call)."""
    started = start_detached()
    holder = hold(started.runtime_dir / lifeline.LIFELINE_SOCKET)
    try:
        assert (target.api.inspect(started.container) or {})["State"]["Running"]
        time.sleep(1)  # alive while held: past the 4 s the unheld one would get it ends
        thread, result = wait_in_thread(target.api, started.container)
        killed = time.monotonic()
        holder.kill()
        thread.join(BOUND_SECONDS + 5)
    finally:
        holder.kill()
        holder.wait()
    assert len(result) == 2, result
    code, ended = result
    took = float(ended) - killed  # type: ignore[arg-type]
    print(f"{target.name}: SIGKILL of the holder -> container exit in {took:.3f} s")
    assert took < BOUND_SECONDS
    assert code == 128 + 15  # the kernel got TERM: `sleep` dies of it at once


@pytest.mark.docker
def test_a_container_nobody_connects_to_ends_within_its_wait(
    target: Target, start_detached: Callable[..., Started]
) -> None:
    """Its starter died between the engine's start and its connect: the container ends
    by itself within --lifeline-wait (+ margin), exit 75, the kernel never started."""
    started = start_detached(2.0)
    thread, result = wait_in_thread(target.api, started.container)
    thread.join(2.0 + 10)
    assert len(result) == 2, result
    code, ended = result
    took = float(ended) - started.began  # type: ignore[arg-type]
    print(f"{target.name}: nobody connected -> exit {code} after {took:.3f} s (wait 2 s)")
    assert code == lifeline.NO_LIFELINE_EXIT
    assert took < 2.0 + 3.0
    if target.name != "runsc":
        # gVisor's host-created socket outlives the sandbox's unlink on the host (as does
        # its lstat EPERM, see _supervise.entry_kind); the host removes the dir anyway.
        assert not (started.runtime_dir / lifeline.LIFELINE_SOCKET).exists()


@pytest.mark.docker
def test_the_claim_cwd_and_the_kernels_output_travel_over_the_lifeline(
    target: Target, start_detached: Callable[..., Started]
) -> None:
    """No `docker run` client is attached and the log driver is none: the kernel's stdout
    and stderr reach the holder over the lifeline, and it runs in the claim line's cwd."""
    kernel = ["sh", "-c", "pwd; echo to-stderr >&2; exec sleep 600"]
    started = start_detached(command=kernel)
    path = started.runtime_dir / lifeline.LIFELINE_SOCKET
    with lifeline.connect(str(path), 30) as sock:
        sock.sendall(lifeline.claim_line(cwd="/tmp"))
        sock.settimeout(20)
        reader = sock.makefile("rb")
        assert [reader.readline(), reader.readline()] == [b"/tmp\n", b"to-stderr\n"]
        reader.close()
