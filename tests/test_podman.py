"""Podman as the engine: the same end-to-end stories as with Docker, through its compat API.

The end-to-end stories that must hold on both engines live with their Docker versions and
run once per engine (conftest's `engine_kind` fixture: test_lifecycle, test_kill and
test_notebooks, their `[podman]` ids). Here: the pure tests (no engine) that pin what differs
in the arguments Podman gets, and the stories that only Podman has (a kernelspec's engine
winning over DOCKER_HOST, what `ps`, `doctor` and `gc` see across engines).
scripts/bootstrap-podman makes the service and the image ready.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, hardening, reaper
from jupyter_docker_kernel.engine import Engine, podman_socket
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.launcher import kernel_id_from, runtime_base
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings
from tests.conftest import install_kernel
from tests.kernels import execute, kernel_key, running_kernel, stream_text, wait_until
from tests.test_hardening import LAUNCH

# -- pure: what Podman is given -------------------------------------------------------------


def tmpfs_values(settings: KernelSettings) -> list[str]:
    args = hardening.run_args(settings, LAUNCH)
    return [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]


def test_podman_tmpfs_options_leave_out_what_podman_4_refuses() -> None:
    """For Podman: no nr_inodes/uid/gid (Podman 4 rejects them), HOME is chowned by 'U', and
    /var/tmp (which Podman's --read-only makes writable) gets /tmp's size cap."""
    tmp, home, var_tmp = tmpfs_values(KernelSettings(engine="podman", tmp_size="64m"))
    assert tmp == "/tmp:rw,nosuid,nodev,size=64m,mode=1777"
    assert home == f"{hardening.HOME}:rw,nosuid,nodev,size=64m,U,mode=0700"
    assert var_tmp == "/var/tmp:rw,nosuid,nodev,size=64m,mode=1777"


def test_podman_kernel_containers_are_removed_by_the_launcher_not_by_rm() -> None:
    """Podman 4.3 loses `run --rm`'s exit code: a Podman kernel runs without --rm (the
    launcher removes it), a warm-pool container (detached, no exit code read) keeps it."""
    podman = KernelSettings(engine="podman", workdir="none")
    assert "--rm" not in hardening.run_args(podman, LAUNCH)
    assert "--rm" in hardening.run_args(podman, LAUNCH, pool=("key", "/pool"))
    assert "--rm" in hardening.run_args(KernelSettings(), LAUNCH)


def test_docker_tmpfs_options_keep_the_inode_cap_and_owner() -> None:
    """For Docker nothing changes: nr_inodes and the owner's uid/gid are on the tmpfs."""
    tmp, home = tmpfs_values(KernelSettings(tmp_inodes=100))
    assert "nr_inodes=100" in tmp
    assert "nr_inodes=100,uid=" in home


@pytest.mark.parametrize(
    "host", ["/run/podman/podman.sock", "unix://", "http://localhost:2375", "unix:///a b"]
)
def test_engine_host_must_be_a_docker_host_address(host: str) -> None:
    """engine_host takes unix:///path, tcp:// or ssh:// addresses only, with a clear error."""
    with pytest.raises(SettingsError, match="not a DOCKER_HOST address"):
        KernelSettings(engine_host=host)


def test_an_explicit_engine_host_lands_in_the_kernelspec(tmp_path: Path) -> None:
    """setup --engine-host (checks skipped) stores the address the launcher will use."""
    code = cli.main(
        [
            *("setup", "--name", "jdk-test-host", "--user", "--replace", "--skip-checks"),
            *("--engine-host", "tcp://127.0.0.1:1"),
        ]
    )
    assert code == 0
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / "jdk-test-host" / "kernel.json"
    assert '\\"engine_host\\":\\"tcp://127.0.0.1:1\\"' in spec.read_text()


# -- against a real Podman ------------------------------------------------------------------


@pytest.mark.docker
def test_setup_podman_records_the_engine_and_pins_nproc(podman_kernel: str) -> None:
    """setup --podman stores engine=podman, its socket, and an nproc ulimit Podman can grant."""
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / podman_kernel / "kernel.json"
    text = spec.read_text()
    assert '\\"engine\\":\\"podman\\"' in text
    assert f'\\"engine_host\\":\\"{podman_socket()}\\"' in text
    assert "--ulimit=nproc=" in text


@pytest.mark.docker
@pytest.mark.parametrize("client_side", ["launcher", "provisioner"])
def test_kernelspec_engine_wins_over_the_environment(
    podman_kernel: str,
    podman_host: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    client_side: str,
) -> None:
    """With DOCKER_HOST at Docker's socket, a Podman kernelspec's kernel still runs in Podman,
    whether the kernelspec's launcher or our provisioner (setup --provisioner) starts it."""
    kernel = podman_kernel
    if client_side == "provisioner":
        kernel = "jdk-test-podman-prov"
        install_kernel(kernel, DEFAULT_IMAGE, "--podman", "--provisioner")
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    with running_kernel(kernel, str(workdir)) as (km, kc):
        # The provisioner labels with the kernel id itself (no connection file name).
        key = kernel_key(km)
        if client_side == "provisioner":
            key = kernel_id_from(f"kernel-{km.kernel_id}.json")
        label = f"label=io.github.jupyter-docker-kernel.kernel-id={key}"

        def ids(host: str) -> list[str]:
            env = {**os.environ, "DOCKER_HOST": host}
            args = ["docker", "ps", "-q", "--filter", label]
            return subprocess.run(args, capture_output=True, text=True, env=env).stdout.split()

        assert len(ids(podman_host)) == 1
        assert ids("unix:///var/run/docker.sock") == []
        _, out = execute(kc, "print(6 * 7)")
        assert stream_text(out) == "42\n"
    assert ids(podman_host) == []


@pytest.mark.docker
def test_kernel_on_podman_is_unprivileged_offline_and_read_only(
    podman_kernel: str, workdir: Path, on_podman: str
) -> None:
    """Seen from inside: not root, no capabilities, no network but lo, root fs read-only,
    /var/tmp (writable under Podman's --read-only) capped like /tmp, no user namespace, no
    AF_VSOCK socket and no set-id file in the work dir, as under Docker (Podman's own
    seccomp profile allows all three; the service's is ours, from bootstrap-podman, and the
    supervisor's filter refuses the last two whatever the service's profile)."""
    with running_kernel(podman_kernel, str(workdir)) as (_km, kc):
        reply, out = execute(
            kc,
            "import os, socket\n"
            "caps = open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n"
            "try:\n"
            "    socket.create_connection(('1.1.1.1', 53), timeout=2); net = 'online'\n"
            "except OSError:\n"
            "    net = 'offline'\n"
            "try:\n"
            "    open('/etc/x', 'w'); root_fs = 'writable'\n"
            "except OSError:\n"
            "    root_fs = 'read-only'\n"
            "nics = sorted(os.listdir('/sys/class/net'))\n"
            "import ctypes, errno\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "userns = libc.unshare(0x10000000) == 0 or errno.errorcode[ctypes.get_errno()]\n"
            "st = os.statvfs('/var/tmp')\n"
            "var_tmp_mb = st.f_blocks * st.f_frsize >> 20\n"
            "vsock = libc.socket(40, 1, 0) >= 0 or errno.errorcode[ctypes.get_errno()]\n"
            "open('setid', 'w').close()\n"
            "try:\n"
            "    os.chmod('setid', 0o4755); setid = 'made'\n"
            "except OSError as exc:\n"
            "    setid = type(exc).__name__\n"
            "print(os.getuid() != 0, int(caps, 16), net, root_fs, nics, var_tmp_mb, userns,"
            " vsock, setid)",
        )
        assert reply["status"] == "ok"
        assert stream_text(out) == (
            "True 0 offline read-only ['lo'] 512 EPERM EPERM PermissionError\n"
        )
        assert not (workdir / "setid").stat().st_mode & 0o6000


@pytest.mark.docker
def test_gc_leaves_another_engines_warm_pool_dir_alone(engine: Engine) -> None:
    """gc asking Docker keeps a pool dir that Podman's warm container uses (Docker does not
    know that container), and still takes such a dir when it is Docker's own and orphaned."""
    docker = Engine(host="unix:///var/run/docker.sock")
    pool_dir = runtime_base() / f"pool-test-{secrets.token_hex(4)}"
    pool_dir.mkdir()
    try:
        for address, orphan in (
            ("unix:///run/podman/podman.sock", False),
            (docker.address(), True),
        ):
            (pool_dir / "pool").write_text(f"jdk-pool-test-gone\n{address}")
            an_hour_ago = time.time() - 3600
            os.utime(pool_dir, (an_hour_ago, an_hour_ago))
            result = reaper.collect(docker, dry_run=True)
            assert (str(pool_dir) in result.dirs) is orphan
    finally:
        shutil.rmtree(pool_dir)


@pytest.mark.docker
def test_doctor_and_list_look_for_a_podman_kernelspecs_image_in_podman(
    podman_host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor and list, themselves pointed at Docker, find an image that only Podman has
    for a Podman kernelspec, and doctor's probe kernel runs there."""
    only_podman = "jdk-test/podman-only:latest"
    tag = ["docker", "-H", podman_host, "tag", DEFAULT_IMAGE, only_podman]
    subprocess.run(tag, check=True, capture_output=True)
    try:
        install_kernel("jdk-test-podman-only", only_podman, "--podman")
        monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
        assert cli.main(["doctor", "jdk-test-podman-only"]) == 0
        out = capsys.readouterr().out
        assert "OK    jdk-test-podman-only: image:" in out
        assert "OK    jdk-test-podman-only: kernel: Python" in out
        assert "OK    jdk-test-podman-only: sockets:" in out
        assert cli.main(["list", "--json"]) == 0
        listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)["kernelspecs"]}
        assert listed["jdk-test-podman-only"]["image_present"] is True
    finally:
        untag = ["docker", "-H", podman_host, "rmi", only_podman]
        subprocess.run(untag, check=False, capture_output=True)


@pytest.mark.docker
def test_ps_finds_a_podman_kernel_without_being_told_and_logs_keeps_its_output(
    podman_kernel: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ps` asks every engine a kernelspec names: a Podman kernel is listed with its
    limits and usage, with no --podman given; `logs` has its fd-1 output."""
    from jupyter_docker_kernel import running

    with running_kernel(podman_kernel, str(workdir)) as (km, kc):
        key = kernel_key(km)
        execute(kc, "import os; os.write(1, b'podman fd-1 output\\n')")
        capsys.readouterr()
        assert cli.main(["ps", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["kernels"]
        mine = next((k for k in listed if k["kernel_id"] == key), None)
        assert mine is not None, (key, listed)
        assert mine["engine"] == podman_socket()
        assert mine["kernelspec"] == podman_kernel
        assert mine["memory_limit"] == 2 << 30
        assert mine["memory_used"] > 0
        assert mine["pids"] > 0
        assert mine["workdir"] == str(workdir)
        wait_until(lambda: b"podman fd-1 output" in running.find_logs(key).output, 10)
