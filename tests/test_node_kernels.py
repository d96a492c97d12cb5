"""A kernel on a remote node (issue 13), the user's story through jupyter_client: setup
--engine-host ssh://..., a real KernelManager starts the argv launcher, the kernel runs in
the node's own engine with its runtime dir on the node, its sockets reached through the
SSH connection; interrupt, shutdown, and the ends nobody asked for (the launcher killed
mid-cell, the SSH connection cut). Real nodes (tests/nodes.py), no mocks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

import tests.test_kernel_protocol as protocol
from jupyter_docker_kernel import cli, doctor, push
from jupyter_docker_kernel.engine import (
    LABEL_KERNEL_ID,
    LABEL_LAUNCHER_HOST,
    LABEL_LAUNCHER_PID,
    LABEL_LAUNCHER_START,
    Engine,
)
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.ssh import CONFIG_ENV, Connection
from tests.conftest import install_kernel
from tests.kernels import (
    execute,
    kernel_key,
    key_of,
    launcher_process,
    runtime_dirs_of,
    stream_text,
    wait_for_execute_input,
    wait_until,
)
from tests.nodes import NodeUnderTest, start_node, stop_node

pytestmark = [pytest.mark.nodes, pytest.mark.docker]

NODE_KERNEL = "jdk-test-node"


@pytest.fixture(scope="module")
def node_kernel(pushed_node: NodeUnderTest, kernel_image: str) -> Iterator[str]:
    """A kernelspec whose kernels run on the session's node, with a copy of the work dir;
    the product's ssh calls use the node's ssh_config meanwhile."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        install_kernel(
            NODE_KERNEL, kernel_image, "--engine-host", pushed_node.url, "--copy-workdir"
        )
        yield NODE_KERNEL


def node_containers(node: NodeUnderTest, key: str) -> list[str]:
    """The node's containers (any state) of the kernel with this key."""
    return node.docker("ps", "-aq", "--filter", f"name=^jdk-{key}-").stdout.split()


def host_containers(key: str) -> list[str]:
    proc = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=^jdk-{key}-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def started(
    kernel: str, workdir: Path, log: Path
) -> tuple[KernelManager, BlockingKernelClient, float]:
    """A kernel of spec `kernel` answering, its launcher's stderr in log; the seconds its
    start took (start_kernel to kernel_info's reply)."""
    km = KernelManager(kernel_name=kernel)
    began = time.monotonic()
    with log.open("wb") as err:
        km.start_kernel(cwd=str(workdir), stderr=err)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
    except Exception:
        print(log.read_text(errors="replace"))
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc, time.monotonic() - began


def test_kernel_on_a_node_runs_code_interrupts_and_shuts_down(
    pushed_node: NodeUnderTest, node_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """The kernel's container is on the node and not here, its runtime dir is on the node
    (a path of this host's /tmp is not there), the work dir's copy arrived, code runs,
    an interrupt stops a cell, and after the shutdown nothing of it is left there."""
    (workdir / "data.txt").write_text("from the host\n")
    host_only = tmp_path / "only-on-the-host"
    host_only.write_text("x")
    km, kc, took = started(node_kernel, workdir, tmp_path / "launcher.log")
    key = kernel_key(km)
    try:
        print(f"kernel on {pushed_node.url} answered {took:.2f} s after start_kernel")
        assert node_containers(pushed_node, key)
        assert not host_containers(key)
        reply, outputs = execute(kc, "print(open('data.txt').read().strip(), 6 * 7)")
        assert reply["status"] == "ok"
        assert stream_text(outputs) == "from the host 42\n"
        # The kernel's runtime dir is on the node: the node has it, and lacks this host's.
        dirs = pushed_node.ssh("sh", "-c", "ls -d /tmp/jupyter-docker-kernel-*/*").stdout
        assert f"/{key}-" in dirs
        assert pushed_node.ssh("test", "-e", str(host_only), check=False).returncode == 1
        rounds = []
        for _ in range(20):
            t0 = time.monotonic()
            execute(kc, "pass")
            rounds.append(time.monotonic() - t0)
        print(f"`pass` round trip on the node: median {sorted(rounds)[10] * 1000:.1f} ms")
        msg_id = kc.execute("import time; time.sleep(60)")
        wait_for_execute_input(kc, msg_id)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    wait_until(lambda: not node_containers(pushed_node, key), timeout=15)
    left = pushed_node.ssh("sh", "-c", "ls -d /tmp/jupyter-docker-kernel-*/* || true").stdout
    assert f"/{key}-" not in left


def test_sigkill_to_the_launcher_mid_cell_ends_the_node_container_within_5s(
    pushed_node: NodeUnderTest, node_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """The launcher (its process group, as jupyter_client kills it) SIGKILLed mid-cell:
    the node's container is gone within 5 s, and the log it wrote before names the node
    (nothing can write there after)."""
    log = tmp_path / "launcher.log"
    km, kc, _ = started(node_kernel, workdir, log)
    key = kernel_key(km)
    try:
        msg_id = kc.execute("import time; time.sleep(600)")
        wait_for_execute_input(kc, msg_id)
        launcher = launcher_process(km)
        os.killpg(launcher.pid, signal.SIGKILL)  # as jupyter_client's kill does
        took = wait_until(
            lambda: not pushed_node.docker("ps", "-q", "--filter", f"name=^jdk-{key}-").stdout,
            timeout=5,
        )
        print(f"node container ended {took:.2f} s after the launcher's SIGKILL")
        assert f"starting the kernel on node {pushed_node.url}" in log.read_text(errors="replace")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_lost_ssh_connection_ends_the_kernel_and_the_log_names_the_node(
    pushed_node: NodeUnderTest, node_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """SIGKILL to the ssh master mid-cell: the node's container ends within 5 s (its
    `docker run -i` lost its stdin, the lifeline), and the launcher's log says which node."""
    log = tmp_path / "launcher.log"
    km, kc, _ = started(node_kernel, workdir, log)
    key = kernel_key(km)
    try:
        msg_id = kc.execute("import time; time.sleep(600)")
        wait_for_execute_input(kc, msg_id)
        connection = Connection.to(pushed_node.url)
        check = subprocess.run(
            [*connection.options(), "-O", "check", connection.node.destination()],
            capture_output=True,
            text=True,
            check=True,
        )
        master = int(check.stderr.split("pid=")[1].split(")")[0])
        os.kill(master, signal.SIGKILL)
        took = wait_until(
            lambda: not pushed_node.docker("ps", "-q", "--filter", f"name=^jdk-{key}-").stdout,
            timeout=5,
        )
        print(f"node container ended {took:.2f} s after the ssh master's SIGKILL")
        wait_until(lambda: km.is_alive() is False, timeout=10)
        said = log.read_text(errors="replace")
        assert f"(the SSH connection to the node {pushed_node.url} was lost)" in said
        # The next start gets a new master, not a plain connection beside the dead one's
        # socket file (whose forwards would all fail).
        connection.ensure()
        assert connection.alive()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_provisioner_kernel_on_a_node_runs_code_and_leaves_nothing(
    pushed_node: NodeUnderTest, kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """The provisioner's path (in the client's process, no launcher): the same backend."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        name = f"{NODE_KERNEL}-prov"
        install_kernel(
            name, kernel_image, "--engine-host", pushed_node.url, "--no-workdir", "--provisioner"
        )
        km, kc, took = started(name, workdir, tmp_path / "server.log")
        key = key_of(km)
        try:
            print(f"provisioner kernel on the node answered {took:.2f} s after start_kernel")
            assert node_containers(pushed_node, key)
            reply, outputs = execute(kc, "print(6 * 7)")
            assert reply["status"] == "ok"
            assert stream_text(outputs) == "42\n"
        finally:
            kc.stop_channels()
            km.shutdown_kernel()
        wait_until(lambda: not node_containers(pushed_node, key), timeout=15)


@pytest.mark.usefixtures("node_kernel")
class TestNodeKernelProtocol(protocol.TestContainerKernel):
    """The public kernel test suite (jupyter_kernel_test) against a kernel on the node:
    every message type through the relay, the forwarded sockets and SSH."""

    kernel_name = NODE_KERNEL


def test_doctor_checks_the_node_of_a_kernelspec(
    pushed_node: NodeUnderTest, node_kernel: str
) -> None:
    """doctor asks the node: its engine, the image there (as recorded), and setup's probe
    container run on the node (the kernel's real docker run; its sockets reached through
    SSH, the path the kernel's channels take)."""
    report = doctor.run_checks(Engine(), node_kernel)
    found = {c.name.split(": ", 1)[1]: c for c in report.checks if c.name.startswith(node_kernel)}
    assert found["node"].status == "OK", found["node"]
    assert pushed_node.url in found["node"].detail
    assert found["image"].status == "OK", found["image"]
    assert found["kernel"].status == "OK", found["kernel"]
    assert found["sockets"].status == "OK", found["sockets"]
    assert not pushed_node.containers()  # the probe's container is gone


def test_doctor_says_to_push_the_image_to_a_node_without_it(
    node: NodeUnderTest, kernel_image: str
) -> None:
    """A second node, fresh: the image check FAILs with the `image push` line to run."""
    name = f"{node.name[:6]}y"
    other = start_node(name)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CONFIG_ENV, str(other.ssh_config))
            spec = f"{NODE_KERNEL}-bare"
            install_kernel(
                spec, kernel_image, "--engine-host", other.url, "--no-workdir", "--skip-checks"
            )
            report = doctor.run_checks(Engine(), spec)
        image = next(c for c in report.checks if c.name == f"{spec}: image")
        assert image.status == "FAIL"
        assert f"image push {other.url}" in image.fix
    finally:
        stop_node(name)


def test_each_start_goes_to_the_least_loaded_node_and_a_silent_one_is_skipped(
    pushed_node: NodeUnderTest,
    kernel_image: str,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """setup --node A --node B --node C (C refuses connections): setup warns that C was
    not checked; two kernels started one after the other run on different nodes (the
    second sees the first's container), and each start's log says C was skipped."""
    name = f"{pushed_node.name[:6]}z"
    other = start_node(name)
    try:
        config = tmp_path / "ssh_config"
        config.write_text(pushed_node.ssh_config.read_text() + other.ssh_config.read_text())
        silent = f"{pushed_node.url}:2222"  # nothing listens there
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CONFIG_ENV, str(config))
            push.push(Engine(), kernel_image, [other.url])
            spec = f"{NODE_KERNEL}-pool"
            install_kernel(
                spec,
                kernel_image,
                *("--node", pushed_node.url, "--node", other.url, "--node", silent),
                "--no-workdir",
            )
            printed = capsys.readouterr()
            assert f"node {silent} was not checked (it did not answer" in printed.out + printed.err
            first = started(spec, workdir, tmp_path / "first.log")
            second = started(spec, workdir, tmp_path / "second.log")
            try:
                keys = [kernel_key(km) for km, _, _ in (first, second)]
                where = [
                    {n.url for n in (pushed_node, other) if node_containers(n, key)} for key in keys
                ]
                assert len(where[0]) == len(where[1]) == 1, where
                assert where[0] != where[1], where
                for log in ("first.log", "second.log"):
                    said = (tmp_path / log).read_text(errors="replace")
                    assert f"node {silent} skipped for this start" in said
            finally:
                for km, kc, _ in (first, second):
                    kc.stop_channels()
                    km.shutdown_kernel(now=True)
    finally:
        stop_node(name)


def test_a_killed_jupyter_server_ends_its_provisioner_kernel_on_the_node_within_5s(
    pushed_node: NodeUnderTest, kernel_image: str, workdir: Path
) -> None:
    """The provisioner's path: the client process (a Jupyter server's stand-in) SIGKILLed
    mid-cell; it held the `docker run -i` session's stdin, so the node's container ends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
        name = f"{NODE_KERNEL}-prov"
        install_kernel(
            name, kernel_image, "--engine-host", pushed_node.url, "--no-workdir", "--provisioner"
        )
        client = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\n"
                "from jupyter_client.manager import KernelManager\n"
                f"km = KernelManager(kernel_name={name!r})\n"
                f"km.start_kernel(cwd={str(workdir)!r})\n"
                "kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=120)\n"
                "kc.execute('import time; time.sleep(600)')\n"
                "print(km.provisioner.key, flush=True)\n"
                "time.sleep(600)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None
            key = client.stdout.readline().strip()
            assert key
            assert node_containers(pushed_node, key)
            client.kill()
            client.wait()
            took = wait_until(
                lambda: not pushed_node.docker("ps", "-q", "--filter", f"name=^jdk-{key}-").stdout,
                timeout=5,
            )
            print(f"node container ended {took:.2f} s after the server's SIGKILL")
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            if client.stdout is not None:
                client.stdout.close()


def test_a_socket_swapped_for_a_symlink_on_the_node_does_not_redirect_new_connections(
    pushed_node: NodeUnderTest, node_kernel: str, workdir: Path, tmp_path: Path
) -> None:
    """The kernel swaps its hb socket for a symlink to the node's engine socket (the node
    user may use the engine): a new connection through the forward still reaches the
    kernel's own socket (the pinned link), never the engine."""
    km, kc, _ = started(node_kernel, workdir, tmp_path / "launcher.log")
    key = kernel_key(km)
    try:
        swap = (
            "import os\n"
            "p = '/run/jupyter-docker-kernel/k-5'\n"
            "os.rename(p, p + '.old')\n"
            "os.symlink('/var/run/docker.sock', p)\n"
        )
        reply, _ = execute(kc, swap)
        assert reply["status"] == "ok"
        local = RunDir(runtime_dirs_of(key)[0]).socket(5)
        answer = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(local))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: node\r\n\r\n")
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := sock.recv(4096):
                    answer += chunk
        assert not answer.startswith(b"HTTP"), answer[:80]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_start_on_a_node_without_the_image_says_to_push_it(
    on_node: NodeUnderTest, kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """The spec's image is not on the node (a tag no push ever copied): the launcher ends,
    its log's one explanation line is the `image push` to run, and nothing is left there."""
    image = f"{kernel_image.rsplit(':', 1)[0]}:never-pushed"
    spec = f"{NODE_KERNEL}-noimage"
    install_kernel(spec, image, "--engine-host", on_node.url, "--no-workdir", "--skip-checks")
    log = tmp_path / "launcher.log"
    km = KernelManager(kernel_name=spec)
    with log.open("wb") as err:
        km.start_kernel(cwd=str(workdir), stderr=err)
    try:
        launcher_process(km).wait(timeout=60)
        said = log.read_text(errors="replace")
        line = next(x for x in said.splitlines() if "did not start" in x)
        assert f"image {image} is not present on the node {on_node.url}" in line
        assert f"run 'jupyter-docker-kernel image push {on_node.url} --tag {image}'" in line
        assert "image build" not in said
        assert not node_containers(on_node, kernel_key(km))
    finally:
        km.shutdown_kernel(now=True)


def test_list_shows_node_kernels_and_gc_removes_only_a_dead_launchers_on_the_node(
    pushed_node: NodeUnderTest,
    node_kernel: str,
    kernel_image: str,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live kernel on the node, and beside it a container whose launcher here is gone
    (labelled as the launcher labels them: this host, a pid that is not that process):
    `list` (and `list --json`) shows both with the node's address; `gc` removes the
    orphan and a kernel dir on the node no container goes with, keeps the live one."""
    km, kc, _ = started(node_kernel, workdir, tmp_path / "launcher.log")
    key = kernel_key(km)
    orphan = "jdk-orphan0-1"
    labels = {
        LABEL_KERNEL_ID: "orphan0",
        LABEL_LAUNCHER_HOST: socket.gethostname(),
        LABEL_LAUNCHER_PID: str(os.getpid()),
        LABEL_LAUNCHER_START: "1",  # not this pid's start time: its launcher is gone
    }
    # Only this spec's node: earlier tests' specs name nodes they stopped (each one a
    # connect timeout, which is not what this test is about).
    data = tmp_path / "data"
    shutil.copytree(
        Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / node_kernel,
        data / "kernels" / node_kernel,
    )
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    base = Connection.to(pushed_node.url).facts().base
    try:
        pushed_node.docker(
            *("run", "-d", "--network", "none", "--name", orphan, "--entrypoint", "sleep"),
            *(f"--label={k}={v}" for k, v in labels.items()),
            *(kernel_image, "600"),
        )
        assert cli.main(["list"]) == 0
        said = capsys.readouterr().out
        assert f"kernels on node {pushed_node.url}: " in said
        for name in (f"jdk-{key}-", orphan):
            [line] = [x for x in said.splitlines() if name in x]
            assert pushed_node.url in line
        assert cli.main(["list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        on_node = {k["name"]: k for k in listed["node_kernels"]}
        assert on_node[orphan]["node"] == pushed_node.url
        assert any(name.startswith(f"jdk-{key}-") for name in on_node)
        assert listed["nodes_not_listed"] == {}
        # Kernel dirs on the node without a container: one a cut SSH session left (old),
        # one a start is making right now (young): gc removes the first only.
        stale, young = f"{base}/deadbeef0-a1b2c3", f"{base}/young0-a1b2c3"
        pushed_node.ssh("sh", "-c", f"mkdir {stale} {young} && touch -d '-2 min' {stale}")
        assert cli.main(["gc"]) == 0
        said = capsys.readouterr().out
        assert f"Removed container {orphan} on its node" in said
        assert f"Removed {pushed_node.url}:{stale} on its node" in said
        assert f"jdk-{key}-" not in said
        assert not pushed_node.docker("ps", "-aq", "--filter", f"name=^{orphan}$").stdout
        assert node_containers(pushed_node, key)
        left = pushed_node.ssh("ls", base).stdout.split()
        assert "deadbeef0-a1b2c3" not in left
        assert "young0-a1b2c3" in left
        assert any(name.startswith(f"{key}-") for name in left)
        reply, _ = execute(kc, "pass")
        assert reply["status"] == "ok"
    finally:
        pushed_node.ssh("sh", "-c", f"rm -rf {base}/deadbeef0-* {base}/young0-*", check=False)
        pushed_node.docker("rm", "-f", orphan, check=False)
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_work_dir_below_a_declared_shared_path_is_mounted_on_the_node(
    pushed_node: NodeUnderTest, kernel_image: str, tmp_path: Path
) -> None:
    """setup --node-shared-path DIR, DIR seen by the node at the same path (outside its
    private /tmp and /run: the same filesystem, as an NFS export would be): the kernel
    mounts the notebook's directory there, reads what this host wrote and writes what
    this host reads; the node's engine mounted that very path."""
    shared = pushed_node.state / "shared-story"
    workdir = shared / "course" / "hw1"
    workdir.mkdir(parents=True)
    for path in (shared, workdir.parent):
        path.chmod(0o711)
    workdir.chmod(0o777)
    (workdir / "data.txt").write_text("from the host\n")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
            spec = f"{NODE_KERNEL}-shared"
            install_kernel(
                spec, kernel_image, "--engine-host", pushed_node.url,
                "--node-shared-path", str(shared),
            )  # fmt: skip
            km, kc, _ = started(spec, workdir, tmp_path / "launcher.log")
            key = kernel_key(km)
            try:
                [cid] = node_containers(pushed_node, key)
                mounts = pushed_node.docker(
                    "inspect", "--format", "{{range .Mounts}}{{.Source}} {{end}}", cid
                ).stdout.split()
                assert str(workdir) in mounts
                code = (
                    "print(open('data.txt').read().strip()); open('out.txt', 'w').write('kernel')"
                )
                reply, outputs = execute(kc, code)
                assert reply["status"] == "ok"
                assert stream_text(outputs) == "from the host\n"
                assert (workdir / "out.txt").read_text() == "kernel"
            finally:
                kc.stop_channels()
                km.shutdown_kernel()
            wait_until(lambda: not node_containers(pushed_node, key), timeout=15)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_work_dir_outside_the_declared_shared_path_is_refused_at_start(
    pushed_node: NodeUnderTest, kernel_image: str, workdir: Path, tmp_path: Path
) -> None:
    """The notebook's directory (this host's /tmp, which the node does not share) is not
    below the declared path: the launcher's log says so in one line, nothing starts."""
    shared = pushed_node.state / "shared-refused"
    shared.mkdir(mode=0o711)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CONFIG_ENV, str(pushed_node.ssh_config))
            spec = f"{NODE_KERNEL}-shared-out"
            install_kernel(
                spec, kernel_image, "--engine-host", pushed_node.url,
                "--node-shared-path", str(shared), "--skip-checks",
            )  # fmt: skip
            log = tmp_path / "launcher.log"
            km = KernelManager(kernel_name=spec)
            with log.open("wb") as err:
                km.start_kernel(cwd=str(workdir), stderr=err)
            try:
                launcher_process(km).wait(timeout=60)
                said = log.read_text(errors="replace")
                [line] = [x for x in said.splitlines() if "cannot mount" in x]
                assert f"this host's directory {workdir.resolve()}" in line
                assert f"(declared shared: {shared})" in line
                assert "No container was started" in line
                assert not node_containers(pushed_node, kernel_key(km))
            finally:
                km.shutdown_kernel(now=True)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_setup_refuses_a_declared_shared_path_the_node_lacks(
    on_node: NodeUnderTest, kernel_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """This host's /tmp dir is not on the node (its /tmp is its own): setup asks the node
    and writes nothing."""
    name = f"{NODE_KERNEL}-shared-missing"
    argv = ["setup", "--name", name, "--image", kernel_image, "--user", "--replace"]
    code = cli.main([*argv, "--engine-host", on_node.url, "--node-shared-path", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"--node-shared-path {tmp_path} is not a directory on the node {on_node.url}" in err
    assert not (Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name).exists()


def test_setup_asks_every_node_of_a_pool_and_names_the_one_without_the_image(
    pushed_node: NodeUnderTest,
    kernel_image: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """setup --node A --node B, B fresh: setup asks both, refuses with the `image push`
    line for B, and writes nothing (a start there would fail)."""
    name = f"{pushed_node.name[:6]}w"
    other = start_node(name)
    try:
        config = tmp_path / "ssh_config"
        config.write_text(pushed_node.ssh_config.read_text() + other.ssh_config.read_text())
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(CONFIG_ENV, str(config))
            spec = f"{NODE_KERNEL}-pool-bare"
            argv = ["setup", "--name", spec, "--image", kernel_image, "--user", "--replace"]
            nodes = ["--node", pushed_node.url, "--node", other.url, "--no-workdir"]
            assert cli.main([*argv, *nodes]) == 1
        err = capsys.readouterr().err
        assert f"The image {kernel_image} is not present on the node {other.url}" in err
        assert f"Run 'jupyter-docker-kernel image push {other.url} --tag {kernel_image}'" in err
        assert not (Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / spec).exists()
    finally:
        stop_node(name)
