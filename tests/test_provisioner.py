"""The kernel provisioner: jupyter_client manages the container itself, no launcher process.

Pure parts first (the connection info, the kernel.json stanza, setup's output), then the
user's story with a real KernelManager / nbclient on the spec `setup --provisioner` wrote,
and the budgets the in-process relay enforces on that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from jupyter_docker_kernel import cli, engine, hardening, kernelspec, pool, reaper, thin
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.launcher import kernel_id_from, runtime_base
from jupyter_docker_kernel.provisioner import DockerProvisioner, client_connection
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.thin import NO_HELPER_ENV
from tests.conftest import helpers_of, inspect, install_kernel
from tests.kernels import (
    containers_of,
    execute,
    running_kernel,
    start,
    stop,
    stream_text,
    wait_for_stream,
    wait_until,
)

# -- pure -----------------------------------------------------------------------------------


def test_client_connection_names_the_relays_sockets_on_the_host(tmp_path: Path) -> None:
    """ipc to <client dir>/k-1..5 in the launcher's channel order, the numbers the kernel
    binds as RUNTIME_TARGET/k-N inside the container."""
    conn = client_connection(tmp_path / "client")
    assert conn == {
        "transport": "ipc",
        "ip": f"{tmp_path}/client/{hardening.SOCKET_PREFIX}",
        "shell_port": 1,
        "iopub_port": 2,
        "stdin_port": 3,
        "control_port": 4,
        "hb_port": 5,
    }


def test_poll_says_the_exit_at_once_when_there_is_no_kill_notice_to_send() -> None:
    """A metered kernel that ended without a notice (a shutdown): poll() returns its code
    on the first call, not None once more (jupyter_client polls every 0.1 s, so that
    cost every shutdown 0.1 s); with a notice to send it still waits for it."""
    import threading
    import types

    from jupyter_docker_kernel.container import Ending

    def ended(notice: str) -> Any:
        done = threading.Event()
        done.set()
        ending = Ending(0, "", True, False, "", notice, False)
        return types.SimpleNamespace(done=done, ending=ending, code=0)

    async def first_polls() -> tuple[int | None, int | None]:
        quiet, noisy = DockerProvisioner(), DockerProvisioner()
        for provisioner, notice in ((quiet, ""), (noisy, "Kernel stopped: out of memory")):
            provisioner._run = ended(notice)
            provisioner._meter = object()  # type: ignore[assignment]
            provisioner._announce_kill = lambda run: asyncio.sleep(0.05)  # type: ignore[method-assign]
        return await quiet.poll(), await noisy.poll()

    assert asyncio.run(first_polls()) == (0, None)


def test_poll_sees_an_exit_the_engine_reports_soon_after_the_output_ended() -> None:
    """Issue 14: once the container's output ended (its supervisor is gone, a shutdown's
    usual course), poll() waits for the engine's report of the exit, which comes some
    50-200 ms later, and returns its code on that call, not on jupyter_client's next poll
    0.1 s on. While the output runs it answers at once (the restarter polls too)."""
    import threading
    import types

    from jupyter_docker_kernel.container import Ending

    def running(output_ended: bool, report_after: float) -> Any:
        done, ended = threading.Event(), threading.Event()
        if output_ended:
            ended.set()
        threading.Timer(report_after, done.set).start()
        ending = Ending(0, "", True, False, "", "", False)
        container = types.SimpleNamespace(output_ended=ended)
        return types.SimpleNamespace(done=done, ending=ending, code=0, container=container)

    async def first_poll(run: Any) -> tuple[int | None, float]:
        provisioner = DockerProvisioner()
        provisioner._run = run
        began = time.monotonic()
        code = await provisioner.poll()
        return code, time.monotonic() - began

    # The engine's report half a client's poll interval later: seen on this poll.
    assert asyncio.run(first_poll(running(True, 0.05)))[0] == 0
    # The output still running: no wait, even for a report that is a second away.
    code, took = asyncio.run(first_poll(running(False, 1.0)))
    assert code is None
    assert took < 0.5


def test_too_long_socket_paths_are_refused_with_what_to_do(tmp_path: Path) -> None:
    """A runtime dir so deep that unix socket paths would not fit fails before any start."""
    with pytest.raises(LaunchError, match="XDG_RUNTIME_DIR"):
        client_connection(tmp_path / ("d" * 120) / "rt")


def test_provisioner_stanza_names_our_entry_point_and_keeps_the_argv() -> None:
    """--provisioner adds metadata.kernel_provisioner and changes nothing else, so clients
    that ignore provisioners (VS Code) still run the same launcher argv."""
    settings = KernelSettings()
    plain = kernelspec.build_kernel_json(settings, display_name="x")
    with_provisioner = kernelspec.build_kernel_json(settings, display_name="x", provisioner=True)
    stanza = with_provisioner["metadata"].pop("kernel_provisioner")
    assert stanza == {"provisioner_name": "docker-provisioner", "config": {}}
    assert with_provisioner == plain


def test_setup_provisioner_no_longer_warns_that_budgets_do_not_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """setup --provisioner prints no warning (the budgets apply on both paths), and the
    spec it writes resolves to DockerProvisioner through the entry point."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    argv = ["setup", "--name", "prov", "--user", "--skip-checks", "--provisioner"]
    assert cli.main(argv) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == []
    spec = KernelSpecManager().get_kernel_spec("prov")
    factory = KernelProvisionerFactory.instance()
    provisioner = factory.create_provisioner_instance("k1", spec, parent=None)
    assert isinstance(provisioner, DockerProvisioner)


# -- with Docker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provisioned(kernel_image: str) -> str:
    """A kernelspec written by `setup --provisioner` for the default image."""
    name = "jdk-test-provisioner"
    install_kernel(name, kernel_image, "--provisioner")
    return name


def launcher_children() -> list[str]:
    """Command lines of our child processes that run the argv launcher (the relay)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        # The launcher's argv (any form) ends "-f CONNECTION_FILE"; the watchdog's does not.
        launcher = "jupyter_docker_kernel.launcher" in cmdline and " -f " in cmdline
        if int(ppid) == os.getpid() and launcher:
            found.append(cmdline)
    return found


def provisioner_of(km: Any) -> DockerProvisioner:
    assert isinstance(km.provisioner, DockerProvisioner)
    return km.provisioner


@pytest.mark.docker
def test_kernel_manager_reaches_the_containers_sockets_without_a_launcher(
    provisioned: str, workdir: Path
) -> None:
    """KernelManager uses DockerProvisioner; its connection info is ipc to the in-process
    relay's sockets in a host-only dir, whose pins lead to the sockets the kernel bound in
    the host runtime dir; no launcher process runs; code runs hardened, output arrives."""
    with running_kernel(provisioned, str(workdir)) as (km, kc):
        prov = provisioner_of(km)
        assert prov.base is not None
        info = km.get_connection_info()
        assert info["transport"] == "ipc"
        assert info["ip"] == f"{prov.base}/client/{hardening.SOCKET_PREFIX}"
        assert prov.base.parent == runtime_base()
        for port in range(1, 6):
            assert stat.S_ISSOCK(os.lstat(f"{info['ip']}-{port}").st_mode)
            pinned = os.stat(prov.base / "pinned" / f"k-{port}")
            assert stat.S_ISSOCK(pinned.st_mode)
            assert pinned.st_ino == os.lstat(prov.base / "rt" / f"k-{port}").st_ino
        assert launcher_children() == []

        reply, out = execute(kc, "import os, socket; print(os.getcwd(), socket.gethostname())")
        assert reply["status"] == "ok"
        assert stream_text(out) == f"{workdir} kernel\n"

        (container,) = containers_of(prov.key)
        host = inspect(container)["HostConfig"]
        assert isinstance(host, dict)
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert host["ReadonlyRootfs"] is True


@pytest.mark.docker
def test_a_socket_swapped_for_a_symlink_does_not_redirect_new_connections(
    provisioned: str, workdir: Path
) -> None:
    """The kernel renames its shell socket and puts a symlink to the engine's socket in its
    place: the pin the relay connects through still leads to the socket the kernel bound
    at start, and a new client connecting now still reaches the kernel."""
    with running_kernel(provisioned, str(workdir)) as (km, kc):
        prov = provisioner_of(km)
        assert prov.base is not None
        bound = os.lstat(prov.base / "rt" / "k-1").st_ino
        code = (
            "import os; d = '/run/jupyter-docker-kernel'\n"
            "os.rename(d + '/k-1', d + '/k-1.old')\n"
            "os.symlink('/var/run/docker.sock', d + '/k-1')"
        )
        reply, _ = execute(kc, code)
        assert reply["status"] == "ok"
        assert os.path.islink(prov.base / "rt" / "k-1")
        assert os.stat(prov.base / "pinned" / "k-1").st_ino == bound
        kc2 = km.blocking_client()
        kc2.start_channels()
        try:
            _, out = execute(kc2, "print('reached')")
            assert stream_text(out) == "reached\n"
        finally:
            kc2.stop_channels()


@pytest.mark.docker
def test_a_writable_mount_where_nbgrader_grades_is_refused_before_any_container(
    provisioned: str, tmp_path: Path
) -> None:
    """The provisioner path refuses a mount-mode start in autograded/<student>/<assignment>
    as the launcher does (Launcher.prepare): the manager's start raises, no container of
    this kernel exists, and its runtime dir is gone."""
    from jupyter_client.manager import KernelManager

    (tmp_path / "gradebook.db").write_text("")
    submission = tmp_path / "autograded" / "mallory" / "ps1"
    submission.mkdir(parents=True)
    km = KernelManager(kernel_name=provisioned)
    with pytest.raises(LaunchError, match=r"Refusing to mount the work directory"):
        km.start_kernel(cwd=str(submission))
    prov = provisioner_of(km)
    assert containers_of(prov.key) == []
    assert prov.base is None or not prov.base.exists()


@pytest.mark.docker
def test_interrupt_stops_a_sleeping_cell_three_times_in_a_row(
    provisioned: str, workdir: Path
) -> None:
    """interrupt_kernel becomes an engine SIGINT; each sleep(60) ends in KeyboardInterrupt
    within seconds, and the kernel keeps working after the third."""
    with running_kernel(provisioned, str(workdir)) as (km, kc):
        for _ in range(3):
            msg_id = kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
            wait_for_stream(kc, msg_id, "sleeping")
            km.interrupt_kernel()
            reply = kc.get_shell_msg(timeout=20)
            while reply["parent_header"].get("msg_id") != msg_id:  # wait_for_ready's extras
                reply = kc.get_shell_msg(timeout=20)
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        reply, out = execute(kc, "print('still here')")
        assert stream_text(out) == "still here\n"


@pytest.mark.docker
def test_restart_starts_a_new_container_the_connected_client_reaches(
    provisioned: str, workdir: Path
) -> None:
    """restart_kernel replaces the container; the socket paths stay, so the client that
    was connected before runs code in the new kernel without reconnecting."""
    with running_kernel(provisioned, str(workdir)) as (km, kc):
        prov = provisioner_of(km)
        execute(kc, "x = 1")
        (before,) = containers_of(prov.key, running_only=True)
        ip = km.get_connection_info()["ip"]
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=120)
        (after,) = containers_of(prov.key, running_only=True)
        assert after != before
        assert km.get_connection_info()["ip"] == ip
        _, out = execute(kc, "print('x' in dir())")
        assert stream_text(out) == "False\n"
        wait_until(lambda: before not in containers_of(prov.key), 10)


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (children, theirs, ...): pid -> command line."""
    parents: dict[int, int] = {}
    lines: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat_line.rpartition(")")[2].split()[1])
        lines[int(entry.name)] = cmdline
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = lines[child]
                todo.append(child)
    return found


@pytest.mark.docker
def test_shutdown_leaves_no_container_or_runtime_dir(provisioned: str, workdir: Path) -> None:
    """After shutdown_kernel: no container with the kernel's label, no runtime dir."""
    km, kc = start(provisioned, str(workdir))
    prov = provisioner_of(km)
    base = prov.base
    assert base is not None
    assert prov.container is not None
    stop(km, kc)
    wait_until(lambda: not containers_of(prov.key), 10)
    assert not base.exists()


@pytest.mark.docker
def test_provisioned_kernels_add_no_host_process(provisioned: str, workdir: Path) -> None:
    """Issue 17: the server holds each kernel's lifeline socket itself and talks to the
    engine's API: two running kernels add no process below it (no `docker run -i`, no
    watchdog per kernel)."""
    before = descendants(os.getpid())
    started = [start(provisioned, str(workdir)) for _ in range(2)]
    try:
        for _, kc in started:
            reply, _ = execute(kc, "1")
            assert reply["status"] == "ok"
        new = {pid: line for pid, line in descendants(os.getpid()).items() if pid not in before}
        assert not new, f"processes started for the kernels: {new}"
    finally:
        for km, kc in started:
            stop(km, kc)


SIGKILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=sys.argv[1])
    km.start_kernel(cwd=sys.argv[2])
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    print(json.dumps({"key": km.provisioner.key, "base": str(km.provisioner.base)}), flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def own_base() -> Iterator[tuple[dict[str, str], Path]]:
    """An environment whose runtime base is this test's alone (a short TMPDIR: kernel
    socket paths must stay under 107 bytes), and that base: no helper of another test
    serves it, and no other process's dirs are in it."""
    tmp = Path(tempfile.mkdtemp(prefix="jdk-"))
    env = {k: v for k, v in os.environ.items() if k not in (NO_HELPER_ENV, "XDG_RUNTIME_DIR")}
    env["TMPDIR"] = str(tmp)
    try:
        yield env, tmp / f"jupyter-docker-kernel-{os.getuid()}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def start_owner(
    script: Path, provisioned: str, workdir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A process that owns a KernelManager (as a Jupyter server would) and has started one
    provisioner kernel; returns it and its kernel's key and runtime dir."""
    script.write_text(SIGKILL_SCRIPT)
    owner = subprocess.Popen(
        [sys.executable, str(script), provisioned, str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    if not line:
        owner.kill()
        owner.wait()
        raise AssertionError("the owner process did not start its kernel")
    return owner, json.loads(line)


@pytest.mark.docker
def test_a_provisioner_kernel_starts_no_resident_helper_or_watchdog(
    provisioned: str, workdir: Path, tmp_path: Path, own_base: tuple[dict[str, str], Path]
) -> None:
    """Issue 17, decision (b): the server holds the lifelines, so nothing else runs for
    it: no resident helper (it would cost one kernel more than its plumbing budget) and
    no watchdog process below it, while its kernel runs."""
    env, base = own_base
    owner, started = start_owner(tmp_path / "owner.py", provisioned, workdir, env)
    try:
        assert Path(started["base"]).parent == base
        time.sleep(1.0)  # a helper or watchdog would be up by now (it was before the start)
        assert helpers_of(str(base)) == []
        assert not [p for p in base.iterdir() if p.name.startswith(thin.HELPER_PREFIX)]
        assert descendants(owner.pid) == {}
    finally:
        owner.kill()
        owner.communicate()
    wait_until(lambda: not containers_of(started["key"]), 15)


@pytest.mark.docker
def test_sigkill_of_the_managing_process_ends_its_container_and_the_next_start_sweeps_its_dir(
    provisioned: str, workdir: Path, tmp_path: Path, own_base: tuple[dict[str, str], Path]
) -> None:
    """A process that owns the KernelManager dies by SIGKILL: its container ends within 5 s
    (the lifeline socket it held closes; the supervisor ends the kernel) and is gone soon
    after. Its runtime dir stays until the next provisioner start, in any process, which
    sweeps it (provisioner.ensure_janitor: no resident process does the janitor's job)."""
    env, _ = own_base
    owner, first = start_owner(tmp_path / "owner.py", provisioned, workdir, env)
    with owner:
        assert containers_of(first["key"], running_only=True)
        owner.send_signal(signal.SIGKILL)
    took = wait_until(lambda: not containers_of(first["key"], running_only=True), 5)
    print(f"container ended {took:.1f} s after SIGKILL")
    wait_until(lambda: not containers_of(first["key"]), 15)
    assert Path(first["base"]).exists()  # nothing runs that could have swept it yet
    second, again = start_owner(tmp_path / "owner2.py", provisioned, workdir, env)
    try:
        took = wait_until(lambda: not Path(first["base"]).exists(), 10)
        print(f"the next start swept the dead owner's runtime dir in {took:.1f} s")
    finally:
        second.kill()
        second.communicate()
        wait_until(lambda: not containers_of(again["key"]), 15)


@pytest.mark.docker
def test_jupyter_run_shuts_the_kernel_down_at_exit_without_errors(
    provisioned: str, workdir: Path
) -> None:
    """`jupyter run` leaves the shutdown to KernelManager's atexit hook, when no thread
    pool is left: the engine calls still run, nothing is left, nothing is logged as error."""
    (workdir / "hello.py").write_text("import socket; print(socket.gethostname())\n")
    jupyter_run = Path(sys.executable).with_name("jupyter-run")
    proc = subprocess.run(
        [str(jupyter_run), "--kernel", provisioned, "hello.py"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "kernel\n"
    assert "Traceback" not in proc.stderr
    assert "ERROR" not in proc.stderr
    match = re.search(r"kernel (\S+) started in container", proc.stderr)
    assert match is not None, proc.stderr
    key = kernel_id_from(f"kernel-{match[1]}.json")
    wait_until(lambda: not containers_of(key), 10)


@pytest.mark.docker
def test_nbclient_runs_a_notebook_through_the_provisioner(provisioned: str, workdir: Path) -> None:
    """nbclient's own AsyncKernelManager picks the provisioner, runs the cells in the
    container (cwd = the notebook's dir) and leaves no container behind."""
    from nbclient import NotebookClient

    # nbformat ships py.typed but leaves these functions unannotated.
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    cells = ["import os, socket\nprint(os.getcwd(), socket.gethostname())", "6 * 7"]
    nb = new_nb(cells=[new_cell(c) for c in cells])  # type: ignore[no-untyped-call]
    seen: list[DockerProvisioner] = []
    client: NotebookClient

    def on_start(**_: Any) -> None:
        seen.append(provisioner_of(client.km))

    client = NotebookClient(
        nb,
        kernel_name=provisioned,
        timeout=120,
        resources={"metadata": {"path": str(workdir)}},
        on_notebook_start=on_start,
    )
    client.execute()
    assert nb.cells[0].outputs[0]["text"] == f"{workdir} kernel\n"
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "42"
    (prov,) = seen
    wait_until(lambda: not containers_of(prov.key), 10)


@pytest.mark.docker
def test_a_warm_pool_container_is_claimed_through_the_provisioner(
    kernel_image: str, workdir: Path
) -> None:
    """With --pool, the provisioner's second kernel adopts the warm container the first
    start left ready; the client still reaches its sockets through the provisioner, from
    /work."""
    name = "jdk-test-provisioner-pool"
    # The env value makes this spec's pool key ours alone, so cleanup touches no other pool.
    spec = install_kernel(
        name,
        kernel_image,
        *("--provisioner", "--copy-workdir", "--pool", "1", "--pool-ttl", "60"),
        *("--env", "JDK_TEST_POOL=provisioner"),
    )
    settings = kernelspec.settings_from_kernel_json(json.loads((spec / "kernel.json").read_text()))
    key = pool.pool_key(settings, os.getuid())
    api = engine.EngineApi()

    def warm() -> list[str]:
        return [
            str(item["Id"])
            for item in api.containers({engine.LABEL_POOL: key})
            if str(item["Names"][0]).lstrip("/").startswith(pool.POOL_NAME_PREFIX)
            and Path(item["Labels"][engine.LABEL_POOL_DIR], "rt", pool.CLAIM_SOCKET).exists()
        ]

    # The first kernel runs in a client process of its own that has ended by the time the
    # warm container it left is claimed (nbgrader's pattern: one process per notebook).
    first_client = (
        "import sys, time\n"
        "from tests.kernels import start, stop\n"
        "km, kc = start(sys.argv[1], sys.argv[2])\n"
        "time.sleep(5)  # past the provisioner's refill delay\n"
        "stop(km, kc)\n"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", first_client, name, str(workdir)],
            cwd=Path(__file__).parent.parent,
            check=True,
            timeout=180,
        )
        wait_until(lambda: bool(warm()), 90)
        with running_kernel(name, str(workdir)) as (km, kc):
            prov = provisioner_of(km)
            assert prov.container is not None
            assert prov.container.pooled
            assert km.get_connection_info()["ip"] == f"{prov.base}/client/{hardening.SOCKET_PREFIX}"
            _, out = execute(kc, "import os; print(os.getcwd())")
            assert stream_text(out) == f"{pool.WORK_TARGET}\n"
            # gc (every test session's teardown runs one) must see that its client lives,
            # once the claimed container carries the kernel's name (not its runtime dir's).
            named = prov.container_name
            ours = engine.Engine().list_containers
            wait_until(
                lambda: named in [c.get("Names") for c in ours({engine.LABEL_KERNEL_ID: None})], 30
            )
            assert named not in reaper.collect(engine.Engine(), dry_run=True).containers
        wait_until(lambda: not containers_of(prov.key), 10)
    finally:
        with contextlib.suppress(AssertionError):
            wait_until(lambda: bool(warm()), 30)  # the refill after the second start
        for item in api.containers({engine.LABEL_POOL: key}, running=False):
            engine.Engine().remove(str(item["Id"]))


class Server:
    """A real Jupyter Server in a subprocess, driven over REST and one kernel websocket."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.token = secrets.token_hex(16)
        exe = Path(sys.executable).with_name("jupyter-server")
        off = "{'jupyterlab': False, 'nbgrader': False, 'notebook': False, 'jupyter_lsp': False}"
        argv = [str(exe), f"--port={self.port}", "--ip=127.0.0.1", "--no-browser"]
        argv += [f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}"]
        argv += [f"--ServerApp.jpserver_extensions={off}"]
        argv += ["--allow-root"] if os.getuid() == 0 else []
        self.log = root / "server.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        wait_until(self._up, 60, interval=0.2)

    def _up(self) -> bool:
        try:
            self.rest("GET", "/api/status")
        except OSError:
            return False
        return True

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return json.loads(response.read() or b"null")

    def ws_url(self, kernel_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}"


async def run_cell(ws: Any, code: str, on_stream: Any = None) -> dict[str, Any]:
    """Send an execute_request over the server's websocket; returns the execute_reply."""
    msg_id = secrets.token_hex(8)
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": "test"}
    header |= {"username": "test", "version": "5.3", "date": ""}
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    content |= {"user_expressions": {}}
    message = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    await ws.write_message(json.dumps(message | {"channel": "shell", "buffers": []}))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.read_message(), 60))
        if reply["parent_header"].get("msg_id") != msg_id:
            continue
        if reply["msg_type"] == "stream" and on_stream is not None:
            await on_stream(reply["content"]["text"])
        if reply["channel"] == "shell":
            return dict(reply["content"])


@pytest.mark.docker
def test_jupyter_server_interrupts_through_the_engine_and_its_sigkill_leaves_nothing(
    provisioned: str, workdir: Path
) -> None:
    """Jupyter Server starts the kernel through the provisioner, its interrupt endpoint
    ends a running cell, and when the server is SIGKILLed the container goes away."""
    from tornado.websocket import websocket_connect

    server = Server(workdir)
    try:
        kernel_id = server.rest("POST", "/api/kernels", {"name": provisioned})["id"]
        key = kernel_id_from(f"kernel-{kernel_id}.json")

        async def story() -> None:
            ws = await websocket_connect(server.ws_url(kernel_id))
            try:
                reply = await run_cell(ws, "import socket; print(socket.gethostname())")
                assert reply["status"] == "ok"

                async def interrupt(text: str) -> None:
                    if "sleeping" in text:
                        await asyncio.to_thread(
                            server.rest, "POST", f"/api/kernels/{kernel_id}/interrupt"
                        )

                code = "import time; print('sleeping', flush=True); time.sleep(60)"
                reply = await run_cell(ws, code, interrupt)
                assert reply["ename"] == "KeyboardInterrupt"
            finally:
                ws.close()

        asyncio.run(story())
        assert containers_of(key, running_only=True)
        assert "relayed in this process" in server.log.read_text()
    finally:
        server.proc.kill()
        server.proc.wait()
    took = wait_until(lambda: not containers_of(key), 15)
    print(f"container gone {took:.1f} s after the server's SIGKILL")
