"""setup and doctor tell the truth: one probe from the kernel's real `docker run` line, one
table of loosenings, and the engine's refusals translated into the option at fault.

The pure parts (loosenings, explain_run_failure, probe_args, kernel_user "owner") are
tables without an engine; the docker tests run setup, doctor and the launcher as users
do, with each bad input of issue 12, and check nothing is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.connect import write_connection_file

from jupyter_docker_kernel import cli, hardening, kernelspec, readiness
from jupyter_docker_kernel.engine import Engine, explain_run_failure
from jupyter_docker_kernel.errors import EngineError, SettingsError
from jupyter_docker_kernel.hardening import Launch
from jupyter_docker_kernel.settings import KernelSettings, Mount
from tests.conftest import TEST_KERNEL
from tests.kernels import execute, running_kernel, stream_text

REPO = Path(__file__).resolve().parent.parent
IMAGE_PATH = ("/opt/kernel/bin", "/usr/local/bin", "/usr/bin", "/bin")

# -- loosenings: settings -> warnings and refusals (pure) -----------------------------------


def mounted(source: str, target: str, read_only: bool = False) -> KernelSettings:
    return KernelSettings(mounts=(Mount(source, target, read_only),))


def docker_args(*args: str) -> KernelSettings:
    return KernelSettings(docker_args=args)


LOOSENINGS: list[tuple[str, KernelSettings, dict[str, object], list[tuple[str, bool]]]] = [
    ("defaults", KernelSettings(), {}, []),
    ("read-only data mount", mounted("/srv/data", "/data", True), {}, []),
    ("mount below /tmp", mounted("/srv/data", "/tmp/data"), {}, []),
    ("mount under /usr/local/share", mounted("/srv/d", "/usr/local/share/d"), {}, [
        ("covers /usr, which the kernel needs", True)]),
    ("network host", KernelSettings(network="host"), {}, [
        ("--network host: the kernel shares the host's network", False)]),
    ("network bridge", KernelSettings(network="bridge"), {}, [
        ("--network bridge: the kernel can reach the network", False)]),
    ("a user network", KernelSettings(network="course"), {}, [
        ("--network course: the kernel can reach the network", False)]),
    ("nbgrader with bridge", KernelSettings(network="bridge"), {"for_nbgrader": True}, [
        ("--network bridge: the kernel can reach", False),
        ("--for-nbgrader with --network bridge: graded code can send", False)]),
    ("--privileged", docker_args("--privileged"), {}, [
        ("--docker-arg=--privileged gives the kernel every capability", False)]),
    ("--cap-add=X", docker_args("--cap-add=SYS_ADMIN"), {}, [
        ("--docker-arg=--cap-add=SYS_ADMIN gives the kernel capability SYS_ADMIN back", False)]),
    ("--cap-add X", docker_args("--cap-add", "NET_RAW"), {}, [
        ("--docker-arg=--cap-add NET_RAW gives the kernel capability NET_RAW back", False)]),
    ("seccomp unconfined", docker_args("--security-opt=seccomp=unconfined"), {}, [
        ("--docker-arg=--security-opt=seccomp=unconfined turns off seccomp", False)]),
    ("apparmor unconfined", docker_args("--security-opt", "apparmor:unconfined"), {}, [
        ("turns off apparmor", False)]),
    ("new privileges back", docker_args("--security-opt=no-new-privileges=false"), {}, [
        ("turns off no-new-privileges", False)]),
    ("host pid namespace", docker_args("--pid=host"), {}, [
        ("--docker-arg=--pid=host shares the host's pid namespace", False)]),
    ("user 0", docker_args("--user=0"), {}, [
        ("replaces the kernel's unprivileged uid with 0", False)]),
    ("a device", docker_args("--device=/dev/fuse"), {}, [
        ("gives the kernel the host device /dev/fuse", False)]),
    ("a bigger memory limit", docker_args("--memory=100g"), {}, [
        ("replaces the kernel's own --memory limit", False)]),
    ("writable image", docker_args("--read-only=false"), {}, [
        ("makes the image's filesystem writable", False)]),
    ("an unmodelled flag", docker_args("--dns=1.1.1.1"), {}, [
        ("--docker-arg=--dns=1.1.1.1 is passed verbatim to docker run, unchecked", False)]),
    ("podman's own nproc pin", docker_args("--ulimit=nproc=4096:4096"), {}, []),
    ("the engine socket", mounted("/var/run/docker.sock", "/d.sock"), {}, [
        ("gives the kernel the container engine's API (/var/run/docker.sock)", True)]),
    ("the dir holding it", mounted("/run", "/host-run", True), {}, [
        ("gives the kernel the container engine's API (/run/docker.sock)", True)]),
    ("the host's root", mounted("/", "/host", True), {}, [
        ("gives the kernel the container engine's API", True)]),
    ("DOCKER_HOST's socket", mounted("/srv/e.sock", "/e"), {"engine_sockets": ["/srv/e.sock"]}, [
        ("container engine's API (/srv/e.sock)", True)]),
    ("a link to the socket", mounted("/home/u/link", "/l"), {"resolve": lambda p: "/run"}, [
        ("container engine's API (/run/docker.sock)", True)]),
    ("socket via -v", docker_args("-v", "/var/run/docker.sock:/s"), {}, [
        ("--docker-arg=-v /var/run/docker.sock:/s gives the kernel the container engine's API",
         True)]),
    ("socket via --mount", docker_args("--mount=type=bind,source=/run/docker.sock,target=/s"), {}, [
        ("gives the kernel the container engine's API (/run/docker.sock)", True)]),
    ("socket via -vSRC", docker_args("-v/run/docker.sock:/s"), {}, [
        ("gives the kernel the container engine's API (/run/docker.sock)", True)]),
    ("another -v", docker_args("--volume=/srv:/srv"), {}, [
        ("mounts /srv:/srv, which setup does not check", False)]),
    ("mount on /usr", mounted("/srv/d", "/usr"), {}, [("covers /usr", True)]),
    ("mount on /etc", mounted("/srv/d", "/etc"), {}, [("covers /etc", True)]),
    ("mount on /proc", mounted("/srv/d", "/proc"), {}, [("covers /proc", True)]),
    ("mount on /lib64", mounted("/srv/d", "/lib64"), {}, [("covers /lib64", True)]),
    ("mount on /opt", mounted("/srv/d", "/opt"), {}, [
        ("covers /opt/jupyter-docker-kernel, which jupyter-docker-kernel mounts there", True)]),
    ("mount on /tmp", mounted("/srv/d", "/tmp"), {}, [("covers /tmp", True)]),
    ("mount on HOME", mounted("/srv/d", "/home/kernel"), {}, [("covers /home/kernel", True)]),
    ("mount over the image's venv", mounted("/srv/d", "/opt/kernel"), {"image_path": IMAGE_PATH}, [
        ("hides /opt/kernel/bin, where the image keeps its Python", True)]),
    ("mount beside the image's venv", mounted("/srv/d", "/opt/data"), {"image_path": IMAGE_PATH},
     []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "options", "expected"),
    [case[1:] for case in LOOSENINGS],
    ids=[case[0] for case in LOOSENINGS],
)
def test_loosenings_name_each_weakened_default_and_refuse_what_breaks_or_exposes(
    settings: KernelSettings,
    options: dict[str, object],
    expected: list[tuple[str, bool]],
) -> None:
    """Each loosening is one finding naming the option; the engine's socket and paths the
    kernel needs are refused (unless forced), everything else only warned about."""
    found = readiness.loosenings(settings, **options)  # type: ignore[arg-type]
    assert len(found) == len(expected), found
    for finding, (text, refused) in zip(found, expected, strict=True):
        assert text in finding.message
        assert finding.refused is refused, finding


def test_engine_sockets_include_docker_host_and_real_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sockets checked are the defaults, DOCKER_HOST's, and their real paths."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///srv/engine/api.sock")
    found = readiness.engine_sockets(Engine())
    assert "/srv/engine/api.sock" in found
    assert {"/var/run/docker.sock", "/run/docker.sock"} <= set(found)


def test_image_path_is_the_images_path_or_the_dir_of_an_absolute_python() -> None:
    """A mount over these hides the image's Python (readiness.loosenings, the verdict)."""
    image = {"Config": {"Env": ["LANG=C", "PATH=/opt/kernel/bin:/usr/bin:/"]}}
    assert readiness.image_path(image, KernelSettings()) == ("/opt/kernel/bin", "/usr/bin")
    assert readiness.image_path(image, KernelSettings(python="/opt/conda/bin/python")) == (
        "/opt/conda/bin",
    )
    assert readiness.image_path({}, KernelSettings()) == ()


# -- explain_run_failure: the engine's refusal -> the option at fault (pure) ----------------

RUN_FAILURES: list[tuple[str, KernelSettings, str, int, str, str]] = [
    ("memory below the minimum", KernelSettings(memory="2"),
     "docker: Error response from daemon: Minimum memory limit allowed is 6MB\n\n"
     "Run 'docker run --help' for more information", 125,
     "memory 2 is 2 bytes, below the engine's minimum 6 MiB", "use e.g. --memory 2g"),
    ("too many cpus", KernelSettings(cpus=64),
     "docker: Error response from daemon: Range of CPUs is from 0.01 to 2.00, as there are "
     "only 2 CPUs available\n", 125,
     "--cpus 64: the engine says the range of CPUs is from 0.01 to 2.00", "use --cpus 2 or less"),
    ("unknown flag", KernelSettings(docker_args=("--bogus-flag",)),
     "unknown flag: --bogus-flag\n\nUsage:  docker run [OPTIONS] IMAGE [COMMAND] [ARG...]\n", 125,
     "the engine does not know the flag --bogus-flag (from --docker-arg=--bogus-flag)",
     "remove or correct that --docker-arg"),
    ("unknown flag with a value", KernelSettings(docker_args=("--bogus=1",)),
     "unknown flag: --bogus\n", 125,
     "does not know the flag --bogus (from --docker-arg=--bogus=1)", "--docker-arg"),
    ("missing network", KernelSettings(network="nosuchnet"),
     "docker: Error response from daemon: network nosuchnet not found.\n", 125,
     "--network nosuchnet: the engine has no network 'nosuchnet'", "docker network create"),
    ("missing network, Podman", KernelSettings(network="nosuchnet"),
     "Error: container create: unable to find network with name or ID nosuchnet: network not "
     "found\n", 125, "--network nosuchnet: the engine has no network 'nosuchnet'",
     "docker network create"),
    ("memory below the minimum, Podman", KernelSettings(memory="2"),
     "unable to upgrade to tcp, received 409\n", 1,
     "memory 2 is 2 bytes, below the engines' minimum (6 MiB for Docker)", "--memory 2g"),
    ("PATH replaced", KernelSettings(env=(("PATH", "/x"),)),
     'docker: Error response from daemon: failed to create shim task: OCI runtime create '
     'failed: runc create failed: unable to start container process: exec: "python3": '
     "executable file not found in $PATH: unknown.\n", 127,
     "--env PATH=/x replaces the image's PATH, so python3 is not found", "remove --env PATH"),
    ("python hidden by a mount", KernelSettings(mounts=(Mount("/srv", "/opt/kernel"),)),
     'exec: "python3": executable file not found in $PATH: unknown', 127,
     "--mount /srv:/opt/kernel hides /opt/kernel/bin", "another container path"),
    ("PYTHONHOME broken", KernelSettings(env=(("PYTHONHOME", "/x"),)),
     "Fatal Python error: init_fs_encoding: failed to get the Python codec\n"
     "ModuleNotFoundError: No module named 'encodings'\n\n  <no Python frame>\n", 1,
     "--env PYTHONHOME=/x breaks the image's python3: ModuleNotFoundError", "remove --env "
     "PYTHONHOME"),
    ("killed at start", KernelSettings(memory="8m"), "", 137,
     "most likely out of memory under --memory 8m", "raise --memory"),
    ("image missing", KernelSettings(image="gone:1"),
     "docker: Error response from daemon: No such image: gone:1.\n", 125,
     "image gone:1 is not present (kernels never pull)", "jupyter-docker-kernel image build"),
    ("engine unreachable", KernelSettings(),
     "docker: Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon "
     "running?\n", 125, "cannot reach the container engine at unix:///x.sock",
     "scripts/bootstrap-engine"),
    ("a runtime that fails itself", KernelSettings(runtime="broken"),
     "docker: Error response from daemon: failed to create shim task: OCI runtime create "
     "failed: unable to retrieve OCI runtime error (open /run/docker/containerd/daemon/"
     "io.containerd.runtime.v2.task/moby/0a1b/log.json: no such file or directory): "
     "/bin/false did not terminate successfully: exit status 1: unknown.\n", 125,
     "the runtime 'broken' could not start the container", "the engine's daemon.json"),
    ("anything else the engine refuses", KernelSettings(),
     "docker: Error response from daemon: invalid mount config for type \"bind\".\n", 125,
     "the engine refused the kernel's container: invalid "
     "mount config", "jupyter-docker-kernel show NAME"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "stderr", "code", "what", "fix"),
    [case[1:] for case in RUN_FAILURES],
    ids=[case[0] for case in RUN_FAILURES],
)
def test_a_refused_start_names_its_cause_and_the_option(
    settings: KernelSettings, stderr: str, code: int, what: str, fix: str
) -> None:
    """The engine's words (real messages of Docker 20.10) become what happened + what to do."""
    said, advice = explain_run_failure(stderr, code, settings, IMAGE_PATH)
    assert what in said
    assert fix in advice


# -- the probe is the kernel's own docker run line (pure) -----------------------------------


def test_probe_args_are_the_kernels_run_args_with_only_the_kernel_command_replaced(
    tmp_path: Path,
) -> None:
    """Every limit, mount, env, network, runtime and docker arg of the spec reaches the
    probe: its argv is hardening.run_args up to the supervisor's `--`."""
    settings = KernelSettings(
        memory="3g",
        cpus=1.5,
        network="bridge",
        runtime="runsc",
        env=(("A", "1"),),
        mounts=(Mount("/srv/data", "/data", True),),
        docker_args=("--gpus=all",),
        python="/opt/py",
    )
    launch = readiness.probe_launch(settings, tmp_path)
    args = readiness.probe_args(settings, launch)
    real = hardening.run_args(settings, launch)
    cut = real.index("--", real.index(hardening.SUPERVISOR_TARGET))
    assert args[: cut + 1] == real[: cut + 1]
    assert args[cut + 1 : cut + 3] == ["/opt/py", "-c"]
    assert args[-2] == f"{hardening.RUNTIME_TARGET}/{readiness.SOCKET_NAME}"
    assert launch.container_name.startswith("jdk-probe-")
    assert launch.launcher_pid == os.getpid()  # gc keeps it while we live, removes it after


# -- kernel_user "owner" (pure) -------------------------------------------------------------


def owner_launch(host_uid: int, owner: str) -> Launch:
    return Launch(
        kernel_id="k",
        container_name="c",
        runtime_dir="/r",
        connection_file="/r/k.json",
        supervisor_path="/s.py",
        host_uid=host_uid,
        host_gid=host_uid,
        workdir="/nb",
        workdir_owner=owner,
    )


@pytest.mark.parametrize(
    ("host_uid", "owner", "user"),
    [
        (0, "1000:1000", "1000:1000"),  # root: the notebook dir's owner
        (0, "1000:50", "1000:50"),
        (0, "0:0", hardening.ROOT_FALLBACK_USER),  # root-owned dir: never root
        (0, "0:1000", hardening.ROOT_FALLBACK_USER),
        (0, "", hardening.ROOT_FALLBACK_USER),  # unreadable dir
        (1000, "1000:1000", "1000:1000"),
        (1000, "2000:2000", "1000:1000"),  # not root: cannot hand its dirs to another uid
    ],
)
def test_kernel_user_owner_is_the_work_dirs_owner_for_root_and_never_0(
    host_uid: int, owner: str, user: str
) -> None:
    settings = KernelSettings(kernel_user="owner")
    assert hardening.kernel_user(settings, owner_launch(host_uid, owner)) == user


def test_kernel_user_owner_round_trips_and_refuses_a_pool() -> None:
    """'owner' is stored in kernel.json as is; with --pool it is refused (warm containers
    start before the notebook's directory is known)."""
    settings = KernelSettings(kernel_user="owner", workdir="copy")
    assert KernelSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(SettingsError, match="cannot go with --pool"):
        KernelSettings(kernel_user="owner", workdir="copy", pool=1)
    with pytest.raises(SettingsError, match="is not UID, UID:GID or owner"):
        KernelSettings(kernel_user="someone")


def test_nothing_in_the_demo_or_the_product_makes_a_directory_world_writable() -> None:
    """The demo once hid the root/uid problem with chmod 777; it uses --kernel-user owner."""
    # A literal world-writable mode as chmod's argument (not a mask such as mode & 0o777).
    pattern = r"chmod\(([^),]*,\s*)?0o7[0-7]7\)|chmod (-R )?(a\+w|o\+w|777|0777)"
    found = subprocess.run(
        ["git", "grep", "-nE", pattern, "--", "scripts", "examples", "src"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert found.stdout == ""
    assert "--kernel-user owner" in (REPO / "scripts" / "demo").read_text()


# -- setup and doctor with an engine --------------------------------------------------------


def spec_written(data_dir: Path, name: str) -> bool:
    return (data_dir / "kernels" / name / "kernel.json").exists()


def bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    cpus = str((os.cpu_count() or 2) * 32)
    return [
        ("memory 2", ["--memory", "2"],
         "memory 2 is 2 bytes, below the engine's minimum 6 MiB. No kernelspec was written. "
         "To fix: use e.g. --memory 2g"),
        ("memory 8m", ["--memory", "8m"], "out of memory under --memory 8m"),
        ("cpus", ["--cpus", cpus], f"--cpus {cpus}: the engine says the range of CPUs is from "
         "0.01 to"),
        ("mount over the venv", ["--mount", f"{tmp}:/opt/kernel"],
         "hides /opt/kernel/bin, where the image keeps its Python; mount it at another path. "
         "No kernelspec was written. Add --force"),
        ("mount over the venv, forced", ["--mount", f"{tmp}:/opt/kernel", "--force"],
         f"but no ipykernel (--mount {tmp}:/opt/kernel hides the image's own). No kernelspec was "
         "written. To fix: mount it at another container path"),
        ("env PATH", ["--env", "PATH=/x"],
         "--env PATH=/x replaces the image's PATH, so python3 is not found"),
        ("env PYTHONHOME", ["--env", "PYTHONHOME=/x"], "--env PYTHONHOME=/x breaks"),
        ("network", ["--network", "nosuchnet"],
         "--network nosuchnet: the engine has no network 'nosuchnet'"),
        ("docker arg", ["--docker-arg=--bogus-flag"],
         "the engine does not know the flag --bogus-flag (from --docker-arg=--bogus-flag)"),
        ("engine socket", ["--mount", "/var/run/docker.sock:/d.sock"],
         "gives the kernel the container engine's API (/var/run/docker.sock)"),
        ("system path", ["--mount", f"{tmp}:/usr/lib"], "covers /usr, which the kernel needs"),
        ("root via docker arg", ["--docker-arg=--user=0"], "the kernel would run as root"),
    ]  # fmt: skip


BAD_IDS = [case[0] for case in bad_inputs(Path("/x"))]


@pytest.mark.docker
@pytest.mark.parametrize("case", BAD_IDS)
def test_setup_refuses_each_kernel_that_could_never_start_and_writes_nothing(
    case: str,
    data_dir: Path,
    kernel_image: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each bad input of issue 12 once gave 'Installed kernelspec' and a kernel that never
    started; now setup exits 1 with one line naming the cause and the option."""
    _, extra, message = next(c for c in bad_inputs(tmp_path) if c[0] == case)
    code = cli.main(["setup", "--name", "jdk-test-bad", "--image", kernel_image, "--user", *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert err.startswith("error: ")
    assert len(err.splitlines()) == 1
    assert not spec_written(data_dir, "jdk-test-bad")


@pytest.mark.docker
def test_setup_prints_a_warning_for_each_loosening_and_forced_refusals(
    data_dir: Path, kernel_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loosened settings still install, with one 'warning:' line each; a refused mount
    with --force installs too, its warning marked forced."""
    code = cli.main(
        ["setup", "--name", "jdk-test-loose", "--image", kernel_image, "--user",
         "--network", "bridge", "--docker-arg=--cap-add=NET_RAW",
         "--mount", f"{tmp_path}:/etc/extra", "--force"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    warnings = [line.strip() for line in out.splitlines() if "warning:" in line]
    assert warnings[0].startswith("warning: --network bridge: the kernel can reach")
    assert "covers /etc" in warnings[1]
    assert warnings[1].endswith("(forced)")
    assert "capability NET_RAW back" in warnings[2]
    assert spec_written(data_dir, "jdk-test-loose")


@pytest.mark.docker
def test_doctor_fails_a_hand_edited_kernel_json_whose_docker_arg_the_engine_refuses(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor probes the spec's whole docker run line: a bad flag is FAIL, not 'ready'."""
    cli.main(["setup", "--name", "jdk-test-edited", "--image", kernel_image, "--user"])
    path = data_dir / "kernels" / "jdk-test-edited" / "kernel.json"
    data = json.loads(path.read_text())
    settings = kernelspec.settings_from_kernel_json(data)
    edited = KernelSettings.from_dict({**settings.to_dict(), "docker_args": ["--bogus-flag"]})
    path.write_text(json.dumps(kernelspec.build_kernel_json(edited, display_name="edited")))
    capsys.readouterr()
    code = cli.main(["doctor", "jdk-test-edited"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  jdk-test-edited: kernel: the engine does not know the flag --bogus-flag" in out
    assert "fix: remove or correct that --docker-arg" in out
    assert "WARN  jdk-test-edited: hardening: --docker-arg=--bogus-flag is passed verbatim" in out
    assert "NOT ready" in out


@pytest.mark.docker
def test_doctor_shows_setups_warnings_and_fails_a_mount_over_the_images_python(
    data_dir: Path, kernel_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spec written with --force (a mount over the image's venv): doctor's hardening WARN
    carries setup's refusal, and the probe FAILs naming the mount."""
    settings = KernelSettings(image=kernel_image, mounts=(Mount(str(tmp_path), "/opt/kernel"),))
    kernelspec.install(
        "jdk-test-hidden",
        kernelspec.build_kernel_json(settings, display_name="hidden"),
        user=True,
        prefix=None,
        replace=True,
    )
    code = cli.main(["doctor", "jdk-test-hidden"])
    out = capsys.readouterr().out
    assert code == 1
    assert (
        f"WARN  jdk-test-hidden: hardening: --mount {tmp_path}:/opt/kernel hides "
        "/opt/kernel/bin, where the image keeps its Python"
    ) in out
    assert "setup refuses some of these without --force" in out
    assert f"no ipykernel (--mount {tmp_path}:/opt/kernel hides the image's own)" in out


@pytest.mark.docker
def test_the_launchers_start_failure_names_the_cause(kernel_image: str, tmp_path: Path) -> None:
    """A kernel whose container the engine refuses: the launcher's log says why (the flag),
    not only 'run doctor'."""
    settings = KernelSettings(image=kernel_image, docker_args=("--bogus-flag",))
    connection, _ = write_connection_file(str(tmp_path / "kernel-x.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_docker_kernel.launcher",
         "--settings", json.dumps(settings.to_dict()), "-f", connection],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 125
    assert (
        "The kernel's container did not start: the engine does not know the flag --bogus-flag "
        "(from --docker-arg=--bogus-flag). To fix: remove or correct that --docker-arg"
    ) in proc.stderr


# -- item 7: as root, the kernel writes next to the notebook as the dir's owner -------------

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="kernel_user owner matters as root")


def whoami_and_write(kernel: str, workdir: Path) -> tuple[str, str]:
    with running_kernel(kernel, str(workdir)) as (_km, kc):
        _, outputs = execute(
            kc,
            "import os\n"
            "print(f'{os.getuid()}:{os.getgid()}')\n"
            "try:\n"
            "    open('result.txt', 'w').write('ok')\n"
            "    print('wrote')\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__)\n",
        )
    ids, outcome = stream_text(outputs).split()
    return ids, outcome


@pytest.fixture(scope="module")
def owner_kernel(kernel_image: str) -> str:
    name = f"{TEST_KERNEL}-owner"
    assert cli.main(
        ["setup", "--name", name, "--image", kernel_image, "--user", "--replace",
         "--kernel-user", "owner"]
    ) == 0  # fmt: skip
    return name


@pytest.mark.docker
@needs_root
def test_as_root_a_kernel_user_owner_kernel_writes_as_the_notebook_dirs_owner(
    owner_kernel: str, tmp_path: Path
) -> None:
    """A notebook dir owned by uid 1000 (mode 0755, not world-writable): the kernel runs
    as 1000:1000 and saves a file there, owned by 1000."""
    notebooks = tmp_path / "nb"
    notebooks.mkdir(mode=0o755)
    os.chown(notebooks, 1000, 1000)
    ids, outcome = whoami_and_write(owner_kernel, notebooks)
    assert (ids, outcome) == ("1000:1000", "wrote")
    assert (notebooks / "result.txt").stat().st_uid == 1000
    assert notebooks.stat().st_mode & 0o777 == 0o755


@pytest.mark.docker
@needs_root
def test_as_root_a_root_owned_notebook_dir_falls_back_to_65534_not_root(
    owner_kernel: str, tmp_path: Path
) -> None:
    """The owner is root: the kernel runs as 65534 (never 0) and cannot write there."""
    notebooks = tmp_path / "nb"
    notebooks.mkdir(mode=0o755)
    ids, outcome = whoami_and_write(owner_kernel, notebooks)
    assert ids == hardening.ROOT_FALLBACK_USER
    assert outcome == "PermissionError"


@pytest.mark.docker
def test_a_probe_under_gvisor_leaves_no_container(kernel_image: str) -> None:
    """gVisor's containers run without --rm (the engine's OOM verdict needs the exited
    container), so the probe removes its own, as it does on Podman: a full test run left
    one exited `jdk-probe-*` per gVisor probe before."""
    from jupyter_docker_kernel.rundir import runtime_base

    engine = Engine()
    before = set(names_of(engine))
    result = readiness.probe(
        engine, KernelSettings(image=kernel_image, runtime="runsc"), runtime_base()
    )
    assert result.python, result
    assert set(names_of(engine)) - before == set()


def names_of(engine: Engine) -> list[str]:
    """Names of the probe containers the engine has, in any state."""
    out = engine.run(["ps", "-a", "--filter", "name=jdk-probe-", "--format", "{{.Names}}"])
    return out.stdout.split()


class _RefusingEngine(Engine):
    """An engine whose CLI is a program that runs until killed, and that refuses removals."""

    def __init__(self, program: Path) -> None:
        super().__init__()
        self.program = program

    def executable(self) -> str:
        return str(self.program)

    def remove(self, name: str) -> bool:
        raise EngineError("the engine refused the removal")


def test_a_probe_whose_removal_the_engine_refuses_leaves_no_process_and_no_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = tmp_path / "docker"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    base = tmp_path / "base"
    base.mkdir(mode=0o700)
    monkeypatch.setattr(readiness, "PROBE_TIMEOUT", 0.3)
    settings = KernelSettings(workdir="none")
    with pytest.raises(EngineError):
        readiness.probe(_RefusingEngine(program), settings, base)
    assert list(base.iterdir()) == []
    assert subprocess.run(["pgrep", "-f", str(program)], capture_output=True).returncode == 1
