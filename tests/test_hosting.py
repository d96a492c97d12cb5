"""Argv kernels hosted by the resident helper (issue 17): one process for all, and cleanup
that does not depend on it staying healthy.

Real kernels through jupyter_client's KernelManager, as the other launcher tests start them:
the kernelspec's argv is the thin client, the helper it spawns runs hosting.run_kernel.
Every kernel here stays with the helper (thin.HANDOVER_ENV=0, what a user sets to keep that
path): the hand-over, on by default, is told in tests/test_handover_story.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli, reaper, thin
from jupyter_docker_kernel.engine import LABEL_LAUNCHER_PID, Engine
from jupyter_docker_kernel.rundir import runtime_base
from tests.conftest import helpers_of, inspect, install_kernel
from tests.kernels import containers_of, execute, kernel_key, launcher_process, wait_until
from tests.test_pool import key_of, warm_ready

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def helper_relays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper keeps each kernel (the kernels inherit this environment)."""
    monkeypatch.setenv(thin.HANDOVER_ENV, "0")


HOME = os.environ.get("HOME", "")


def python_processes() -> dict[int, str]:
    """This test run's processes running our package (pid -> cmdline): thin clients,
    in-process launchers and their watchdogs, helpers."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        python = os.path.basename(cmdline.split(b"\0")[0]).startswith(b"python")
        # Not a warm pool's refill: a short-lived process of an earlier test's pooled
        # kernelspec (it waits at its gate up to 3 s), none of this module's kernels'.
        refill = b"fill_from" in cmdline
        if (
            python
            and not refill
            and b"jupyter_docker_kernel" in cmdline
            and f"HOME={HOME}".encode() in environ
        ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


@contextlib.contextmanager
def kernels(
    kernel_name: str, cwd: Path, count: int, env: dict[str, str] | None = None
) -> Iterator[list[tuple[KernelManager, BlockingKernelClient, Path]]]:
    """`count` kernels started as Jupyter starts them, each with its stderr in a file."""
    started: list[tuple[KernelManager, BlockingKernelClient, Path]] = []
    try:
        for index in range(count):
            log = cwd.parent / f"kernel-{index}.log"
            with log.open("w") as stderr:
                km = KernelManager(kernel_name=kernel_name)
                km.start_kernel(cwd=str(cwd), stderr=stderr, env={**os.environ, **(env or {})})
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
            started.append((km, kc, log))
        yield started
    finally:
        for km, kc, _ in started:
            kc.stop_channels()
            with contextlib.suppress(Exception):
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
            km.cleanup_resources()


def owner_pid(km: KernelManager) -> int:
    """The launcher-pid label of the kernel's container: the process that hosts it."""
    (cid,) = containers_of(kernel_key(km), running_only=True)
    labels = inspect(cid)["Config"]["Labels"]  # type: ignore[index]
    return int(labels[LABEL_LAUNCHER_PID])


def answers(kc: BlockingKernelClient) -> bool:
    reply, _ = execute(kc, "1 + 1")
    return bool(reply["status"] == "ok")


def test_two_argv_kernels_share_one_helper_and_have_no_python_process_of_their_own(
    kernel_name: str, workdir: Path
) -> None:
    # Processes of ours that ran before (another module's session-long broker, say)
    # are not these kernels' plumbing.
    before = set(python_processes())
    with kernels(kernel_name, workdir, 2) as started:
        helper_pid = owner_pid(started[0][0])
        assert helper_pid in helpers_of(str(runtime_base()))
        clients = {launcher_process(km).pid for km, _, _ in started}
        # Per kernel only its thin client (the kernelspec's argv): no watchdog, no
        # launcher with an event loop; the one helper hosts both. (The client is Python's
        # or, when setup found a C compiler, the compiled one: not a Python process.)
        assert set(python_processes()) - before - {helper_pid} <= clients, "\n".join(
            f"{pid} {cmd}" for pid, cmd in python_processes().items()
        )
        for km, kc, log in started:
            assert owner_pid(km) == helper_pid
            assert answers(kc)
            pid = launcher_process(km).pid
            assert len(list(Path(f"/proc/{pid}/task").iterdir())) == 1  # no threads: thin
            # The session's log lines reach the client's stderr (the server's log).
            assert f"kernel {kernel_key(km)} started in container" in log.read_text()


def test_no_helper_runs_the_kernel_in_the_launchers_own_process(
    kernel_name: str, workdir: Path
) -> None:
    with kernels(kernel_name, workdir, 1, env={thin.NO_HELPER_ENV: "1"}) as started:
        ((km, kc, log),) = started
        assert owner_pid(km) == launcher_process(km).pid
        assert answers(kc)
        assert "started in container" in log.read_text()


def test_a_killed_client_removes_only_its_kernel_and_the_helper_serves_on(
    kernel_name: str, workdir: Path
) -> None:
    with kernels(kernel_name, workdir, 2) as started:
        (first, _, _), (second, kc2, _) = started
        helper_pid = owner_pid(first)
        client = launcher_process(first)
        os.killpg(client.pid, signal.SIGKILL)  # as jupyter_client's kill does
        client.wait(timeout=5)
        took = wait_until(lambda: not containers_of(kernel_key(first)), 5)
        print(f"container removed {took:.2f} s after its client's SIGKILL")
        assert answers(kc2)
        assert owner_pid(second) == helper_pid


def test_a_killed_helper_ends_its_containers_within_5s_and_the_next_one_sweeps_their_dirs(
    kernel_name: str, workdir: Path
) -> None:
    with kernels(kernel_name, workdir, 2) as started:
        helper_pid = owner_pid(started[0][0])
        keys = [kernel_key(km) for km, _, _ in started]
        os.kill(helper_pid, signal.SIGKILL)
        took = wait_until(lambda: not any(containers_of(key, running_only=True) for key in keys), 5)
        print(f"containers ended {took:.2f} s after the helper's SIGKILL")
        for km, _, log in started:
            assert launcher_process(km).wait(timeout=5) == thin.LOST_EXIT
            assert "the resident helper" in log.read_text()
        # Their runtime dirs name the dead helper as owner: the next helper's start sweep.
        assert any(p.name.startswith(tuple(keys)) for p in runtime_base().iterdir())
        with kernels(kernel_name, workdir, 1) as again:
            assert owner_pid(again[0][0]) != helper_pid

            def left() -> list[Path]:
                return [p for p in runtime_base().iterdir() if p.name.startswith(tuple(keys))]

            try:
                wait_until(lambda: not left(), 10)
            except AssertionError:
                raise AssertionError(f"not swept: {left()}") from None
            wait_until(lambda: not any(containers_of(key) for key in keys), 10)


JANITOR_CLIENT = """
import json, sys, time
from jupyter_docker_kernel import thin
from jupyter_docker_kernel.rundir import RunDir, process_start_time, runtime_base
import os
base = thin.private_base()
conn = thin.register_janitor(base, thin.engine_key(), os.getpid(), process_start_time(os.getpid()))
run = RunDir.new(runtime_base(), "janitor-test", "abc123")
run.create()
run.mark_owner()
print(json.dumps([conn is not None, str(run.path)]), flush=True)
time.sleep(120)
"""


def test_the_helper_sweeps_after_a_registered_process_that_died(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", JANITOR_CLIENT], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        registered, path = json.loads(proc.stdout.readline())
        assert registered
        assert Path(path).is_dir()
    finally:
        proc.kill()
        proc.communicate()
    took = wait_until(lambda: not Path(path).exists(), 10)
    print(f"runtime dir swept {took:.2f} s after its owner's SIGKILL")


def test_a_killed_helper_ends_a_claimed_warm_kernel_within_5s(
    kernel_image: str, workdir: Path
) -> None:
    """A warm container's lifeline is its claim socket, which only the helper holds."""
    name = "jdk-test-hosting-pool"
    spec = install_kernel(name, kernel_image, "--no-workdir", "--pool", "1", "--pool-ttl", "120")
    key = key_of(spec)
    try:
        with kernels(name, workdir, 1):
            pass  # a cold start, which fills the pool
        wait_until(lambda: bool(warm_ready(key)), 60)
        with kernels(name, workdir, 1) as started:
            ((km, _, log),) = started
            assert "started in warm container" in log.read_text()
            helper_pid = owner_pid(km)
            os.kill(helper_pid, signal.SIGKILL)
            took = wait_until(lambda: not containers_of(kernel_key(km), running_only=True), 5)
            print(f"warm container ended {took:.2f} s after the helper's SIGKILL")
    finally:
        assert cli.main(["gc", "--pools", name]) == 0


def docker_config(path: Path, proxy: str) -> Path:
    """A DOCKER_CONFIG dir whose config.json names an HTTP proxy, which the docker CLI puts
    into the environment of every container it creates: an engine-visible trace of which
    client's configuration a container was made with."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"proxies": {"default": {"httpProxy": proxy}}}))
    return path


def proxy_of(container: str) -> str:
    env = inspect(container)["Config"]["Env"]  # type: ignore[index]
    found = [item.partition("=")[2] for item in env if item.startswith("HTTP_PROXY=")]
    return found[0] if found else ""


def test_each_clients_pool_refill_is_made_with_its_own_environment(
    kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """One helper serves two clients with different DOCKER_CONFIG (each names its own
    proxy): each client's warm container, which the refill for its kernel starts, is made
    with that client's configuration, not with whichever client's spawned the helper."""
    clients = {}
    for client in ("a", "b"):
        name = f"jdk-test-hosting-env-{client}"
        # Their own pools: the env setting is part of the pool key.
        extra = ("--no-workdir", "--pool", "1", "--pool-ttl", "120", "--env", f"JDK_C={client}")
        spec = install_kernel(name, kernel_image, *extra)
        proxy = f"http://proxy-{client}.invalid:3128"
        config = docker_config(tmp_path / f"docker-{client}", proxy)
        clients[client] = (name, key_of(spec), proxy, {"DOCKER_CONFIG": str(config)})
    (name_a, key_a, proxy_a, env_a), (name_b, key_b, proxy_b, env_b) = clients.values()
    try:
        with kernels(name_a, workdir, 1, env_a) as a, kernels(name_b, workdir, 1, env_b) as b:
            assert owner_pid(a[0][0]) == owner_pid(b[0][0])  # one helper for both
            for key, proxy in ((key_a, proxy_a), (key_b, proxy_b)):
                wait_until(lambda key=key: bool(warm_ready(key)), 60)
                assert [proxy_of(warm) for warm in warm_ready(key)] == [proxy]
    finally:
        assert cli.main(["gc", "--pools", name_a, name_b]) == 0


def test_gc_and_the_janitor_keep_the_helpers_own_files() -> None:
    base = runtime_base()
    path = base / f"{thin.HELPER_PREFIX}0000000000000000.log"
    path.write_text("a helper's log\n")
    try:
        old = time.time() - 2 * reaper.STARTING_GRACE
        os.utime(path, (old, old))
        result = reaper.collect(Engine())
        assert str(path) not in result.dirs
        assert path.exists()
    finally:
        path.unlink()


def test_the_engine_cli_gets_the_clients_environment_not_the_helpers(
    kernel_name: str, workdir: Path, tmp_path: Path
) -> None:
    """The helper was spawned by the first client; a second client's PATH (here: a docker
    wrapper that notes its calls) is what runs that second kernel's engine CLI."""
    real = shutil.which("docker")
    assert real is not None
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    calls = tmp_path / "calls"
    (wrapper / "docker").write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {real} "$@"\n')
    (wrapper / "docker").chmod(0o755)
    with kernels(kernel_name, workdir, 1) as first:
        path = f"{wrapper}{os.pathsep}{os.environ['PATH']}"
        with kernels(kernel_name, workdir, 1, env={"PATH": path}) as second:
            assert owner_pid(second[0][0]) == owner_pid(first[0][0])  # the same helper
            # A cold start's one engine CLI call: `docker create` (LocalBackend, an API on
            # a unix socket, as here) or `docker run` (CliBackend).
            assert {"create", "run"} & set(calls.read_text().split())


def test_a_hosted_kernel_on_a_tcp_engine_uses_the_cli_backend_and_on_ssh_the_node_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper chooses the backend as the provisioner does (LocalBackend.for_engine): a
    kernelspec whose engine is ssh:// or tcp:// has no API on a unix socket, so its cold
    start must be `docker run -i` (CliBackend), not the API path; an ssh:// node's is the
    SshBackend (its runtime dir on the node, its sockets forwarded: node_backend)."""
    from jupyter_docker_kernel import hosting, session
    from jupyter_docker_kernel.helper import Request
    from jupyter_docker_kernel.local_backend import CliBackend
    from jupyter_docker_kernel.node_backend import SshBackend
    from jupyter_docker_kernel.settings import KernelSettings

    seen: dict[str, object] = {}

    def fake_run(settings: KernelSettings, connection_file: str, hooks: session.Hooks) -> int:
        assert hooks.backend is not None
        seen["backend"] = hooks.backend(settings)
        return 0

    monkeypatch.setattr(session, "run", fake_run)
    connection = tmp_path / "kernel-1.json"
    connection.write_text("{}")
    for host, kind in (("tcp://127.0.0.1:2375", CliBackend), ("ssh://node", SshBackend)):
        settings = KernelSettings(image="x", engine_host=host)
        request = Request(
            settings=json.dumps(settings.to_dict()),
            connection_file=str(connection),
            cwd=str(tmp_path),
            client_pid=os.getpid(),
            env=dict(os.environ),
            debug=False,
            peer_pid=os.getpid(),
            raw={},
        )
        assert hosting.run_kernel(request, _FakeControl()) == 0  # type: ignore[arg-type]
        assert type(seen["backend"]) is kind


class _FakeControl:
    """What run_kernel reads of a helper.Control before it hands over to session.run."""

    def __init__(self) -> None:
        import threading

        self.loop = None
        self.gone = threading.Event()
