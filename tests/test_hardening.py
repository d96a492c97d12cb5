"""hardening.py: settings and one launch -> the exact `docker run` arguments (pure, no engine)."""

from __future__ import annotations

import csv
import dataclasses
import itertools

import pytest

from jupyter_docker_kernel import engine, hardening
from jupyter_docker_kernel.hardening import Launch, mount_arg, probe_args, run_args
from jupyter_docker_kernel.settings import KernelSettings, Mount

LAUNCH = Launch(
    kernel_id="0123-abcd",
    container_name="jdk-0123-abcd",
    runtime_dir="/tmp/jupyter-docker-kernel-1000/jdk-0123-abcd",
    connection_file="/tmp/jupyter-docker-kernel-1000/jdk-0123-abcd/kernel.json",
    supervisor_path="/venv/lib/jupyter_docker_kernel/_supervise.py",
    host_uid=1000,
    host_gid=100,
    workdir="/home/u/course/week1",
    launcher_pid=4242,
    launcher_start="987654",
    hostname="grader-1",
)
SUPERVISED_KERNEL = [
    "python3",
    "/opt/jupyter-docker-kernel/supervise.py",
    "--cleanup",
    "/run/jupyter-docker-kernel",
    "--lifetime",
    "86400",
    "--only-sockets",
    "k-1,k-2,k-3,k-4,k-5,claim",
    "--",
    "python3",
    "-m",
    "ipykernel_launcher",
    "-f",
    "/opt/jupyter-docker-kernel/kernel.json",
]


def options(args: list[str], settings: KernelSettings) -> list[str]:
    """The `docker run` options: everything before the image (the image's position is fixed)."""
    image_at = args.index(hardening.SUPERVISOR_TARGET) - 2  # IMAGE PYTHON SUPERVISOR ...
    assert args[image_at] == settings.image
    return args[:image_at]


def pairs(opts: list[str]) -> list[tuple[str, str]]:
    """Every (option, following token) pair, for `(flag, value) in pairs(...)` checks."""
    return list(itertools.pairwise(opts))


def values(opts: list[str], flag: str) -> list[str]:
    """All values given to a repeatable option such as --mount or --env, in order."""
    return [value for key, value in pairs(opts) if key == flag]


def mount_fields(value: str) -> list[str]:
    """A --mount value split the way the engine splits it (CSV)."""
    return next(csv.reader([value]))


def run_opts(settings: KernelSettings | None = None, launch: Launch = LAUNCH) -> list[str]:
    settings = settings or KernelSettings()
    return options(run_args(settings, launch), settings)


# -- the hardening table --------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    ["--rm", "--interactive", "--sig-proxy=false", "--init", "--pull=never", "--read-only"],
)
def test_default_run_has_switch(flag: str) -> None:
    """Each hardening/lifecycle switch is present with default settings."""
    assert flag in run_opts()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--network", "none"),
        ("--cap-drop", "ALL"),
        ("--security-opt", "no-new-privileges"),
        ("--memory", "2g"),
        ("--memory-swap", "2g"),
        ("--pids-limit", "512"),
        ("--cpus", "1"),
        ("--user", "1000:100"),
        ("--ipc", "private"),
        ("--oom-score-adj", "1000"),
        ("--shm-size", "64m"),
        ("--ulimit", "nofile=1024:1024"),
        ("--ulimit", "core=0"),
        ("--ulimit", "fsize=1073741824"),
        ("--log-driver", "none"),
        ("--env", "OMP_NUM_THREADS=1"),
        ("--env", "OPENBLAS_NUM_THREADS=1"),
        ("--name", "jdk-0123-abcd"),
        ("--hostname", "kernel"),
        ("--workdir", "/home/u/course/week1"),
        ("--tmpfs", "/tmp:rw,nosuid,nodev,size=512m,nr_inodes=65536,mode=1777"),
        (
            "--tmpfs",
            "/home/kernel:rw,nosuid,nodev,size=512m,nr_inodes=65536,uid=1000,gid=100,mode=0700",
        ),
        ("--env", "HOME=/home/kernel"),
    ],
)
def test_default_run_has_option(flag: str, value: str) -> None:
    """Each hardening option has its default value."""
    assert (flag, value) in pairs(run_opts())


CUSTOM = KernelSettings(
    network="bridge",
    memory="1g",
    cpus=2.5,
    pids_limit=64,
    tmp_size="64m",
    tmp_inodes=1000,
    runtime="runsc",
    nofile=256,
    fsize="10m",
    max_lifetime=600,
)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--network", "bridge"),
        ("--memory", "1g"),
        ("--memory-swap", "1g"),
        ("--pids-limit", "64"),
        ("--cpus", "2.5"),
        ("--runtime", "runsc"),
        ("--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,nr_inodes=1000,mode=1777"),
        (
            "--tmpfs",
            "/home/kernel:rw,nosuid,nodev,size=64m,nr_inodes=1000,uid=1000,gid=100,mode=0700",
        ),
        ("--ulimit", "nofile=256:256"),
        ("--ulimit", "fsize=10485760"),
        ("--env", "OMP_NUM_THREADS=3"),
    ],
)
def test_custom_settings_reach_their_option(flag: str, value: str) -> None:
    """Each limit set in the settings becomes the value of its option."""
    assert (flag, value) in pairs(run_opts(CUSTOM))


def test_max_lifetime_reaches_the_supervisor() -> None:
    """The lifetime cap is the supervisor's --lifetime, enforced inside the container."""
    command = hardening.supervisor_command(CUSTOM)
    assert ("--lifetime", "600") in pairs(command[: command.index("--")])


def test_dedicated_uid_sharing_our_group_gets_a_group_umask() -> None:
    """A kernel uid other than a non-root launcher's runs with umask 0007 (sockets by group)."""
    args = run_args(KernelSettings(kernel_user="2000"), LAUNCH)
    assert ("--user", "2000:100") in pairs(args)
    assert ("--umask", "0007") in pairs(args[args.index(hardening.SUPERVISOR_TARGET) :])
    assert "--umask" not in run_args(KernelSettings(), LAUNCH)


def test_workdir_readonly_mounts_the_notebook_dir_readonly() -> None:
    """--workdir-readonly makes the work dir mount read-only; the default is writable."""
    ro = values(run_opts(KernelSettings(workdir_readonly=True)), "--mount")
    rw = values(run_opts(), "--mount")
    assert "type=bind,source=/home/u/course/week1,target=/home/u/course/week1,readonly" in ro
    assert "type=bind,source=/home/u/course/week1,target=/home/u/course/week1" in rw


def test_connection_file_is_mounted_readonly_apart_from_the_socket_dir() -> None:
    """The kernel cannot rewrite its connection file; its sockets dir is writable."""
    mounts = values(run_opts(), "--mount")
    assert (
        "type=bind,source=/tmp/jupyter-docker-kernel-1000/jdk-0123-abcd/kernel.json,"
        "target=/opt/jupyter-docker-kernel/kernel.json,readonly"
    ) in mounts
    assert (
        "type=bind,source=/tmp/jupyter-docker-kernel-1000/jdk-0123-abcd,"
        "target=/run/jupyter-docker-kernel"
    ) in mounts


@pytest.mark.parametrize("settings", [KernelSettings(), CUSTOM], ids=["default", "custom"])
def test_memory_swap_equals_memory(settings: KernelSettings) -> None:
    """--memory-swap equals --memory, so the kernel gets no swap beyond its memory limit."""
    opts = run_opts(settings)
    assert values(opts, "--memory-swap") == values(opts, "--memory") == [settings.memory]


@pytest.mark.parametrize(
    "flag",
    ["--network", "--user", "--memory", "--memory-swap", "--cpus", "--pids-limit", "--read-only"],
)
def test_hardening_option_is_given_once(flag: str) -> None:
    """No hardening option appears twice in what we generate (a later one would win)."""
    assert run_opts().count(flag) == 1


def test_runtime_absent_unless_set() -> None:
    """--runtime is passed only when the settings name a runtime."""
    assert "--runtime" not in run_opts()


# -- the container's user -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel_user", "host_uid", "host_gid", "expected"),
    [
        (None, 1000, 100, "1000:100"),
        (None, 0, 0, "65534:65534"),
        (None, 0, 1000, "65534:65534"),
        ("1000", 0, 0, "1000:1000"),
        ("1000", 1234, 4321, "1000:4321"),  # a dedicated uid shares our group
        ("2000:3000", 1000, 100, "2000:3000"),
    ],
)
def test_user_is_configured_or_host_user_never_root(
    kernel_user: str | None, host_uid: int, host_gid: int, expected: str
) -> None:
    """--user: kernel_user (UID alone: our gid, or UID:UID under root), else ours, never 0."""
    launch = dataclasses.replace(LAUNCH, host_uid=host_uid, host_gid=host_gid)
    opts = run_opts(KernelSettings(kernel_user=kernel_user), launch)
    assert values(opts, "--user") == [expected]


@pytest.mark.parametrize(("host_uid", "owner"), [(0, "65534,gid=65534"), (1000, "1000,gid=100")])
def test_home_tmpfs_is_owned_by_the_container_user(host_uid: int, owner: str) -> None:
    """The HOME tmpfs belongs to the uid:gid the kernel runs as, so it can write there."""
    launch = dataclasses.replace(LAUNCH, host_uid=host_uid)
    (home,) = [v for v in values(run_opts(launch=launch), "--tmpfs") if v.startswith("/home/")]
    assert f",uid={owner}," in home


# -- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (engine.LABEL_KERNEL_ID, "0123-abcd"),
        (engine.LABEL_LAUNCHER_PID, "4242"),
        (engine.LABEL_LAUNCHER_START, "987654"),
        (engine.LABEL_LAUNCHER_HOST, "grader-1"),
        (engine.LABEL_OWNER_UID, "1000"),
    ],
)
def test_container_carries_label(key: str, value: str) -> None:
    """Each label gc and the tests rely on is set from the launch."""
    assert f"{key}={value}" in values(run_opts(), "--label")


# -- mounts ---------------------------------------------------------------------------------


def test_runtime_dir_is_mounted_writable_at_its_fixed_path() -> None:
    """The runtime dir (connection file, sockets) is bind-mounted rw at RUNTIME_TARGET."""
    expected = ["type=bind", f"source={LAUNCH.runtime_dir}", "target=/run/jupyter-docker-kernel"]
    assert expected in [mount_fields(v) for v in values(run_opts(), "--mount")]


def test_supervisor_is_mounted_read_only() -> None:
    """The supervisor script is bind-mounted read-only where the command expects it."""
    expected = [
        "type=bind",
        f"source={LAUNCH.supervisor_path}",
        "target=/opt/jupyter-docker-kernel/supervise.py",
        "readonly",
    ]
    assert expected in [mount_fields(v) for v in values(run_opts(), "--mount")]


def test_workdir_is_mounted_writable_at_the_notebooks_path() -> None:
    """mount: the notebook dir itself, at its own path."""
    opts = run_opts(KernelSettings(workdir="mount"))
    mounts = [mount_fields(v) for v in values(opts, "--mount")]
    assert ["type=bind", f"source={LAUNCH.workdir}", f"target={LAUNCH.workdir}"] in mounts
    assert values(opts, "--workdir") == [LAUNCH.workdir]


@pytest.mark.parametrize(
    ("engine", "options_"),
    [
        ("docker", "size=1073741824,nr_inodes=65536,uid=1000,gid=100,mode=0700"),
        ("podman", "size=1073741824,U,mode=0700"),  # Podman 4 refuses nr_inodes and uid
    ],
)
def test_copy_workdir_is_a_capped_tmpfs_the_supervisor_fills(engine: str, options_: str) -> None:
    """copy: nothing of the host is mounted at the notebook's path; a tmpfs capped at
    copy_limit bytes and tmp_inodes entries is, and the supervisor unpacks the launcher's
    stream into it before the kernel starts. Nothing the kernel writes lands on the host."""
    settings = KernelSettings(workdir="copy", engine=engine)  # type: ignore[arg-type]
    args = run_args(settings, LAUNCH)
    opts = options(args, settings)
    targets = [mount_fields(v)[2] for v in values(opts, "--mount")]
    assert f"target={LAUNCH.workdir}" not in targets
    assert f"{LAUNCH.workdir}:rw,nosuid,nodev,{options_}" in values(opts, "--tmpfs")
    assert values(opts, "--workdir") == [LAUNCH.workdir]
    command = args[len(opts) :]
    assert command[command.index("--receive-workdir") + 1] == LAUNCH.workdir


def test_workdir_none_mounts_nothing_and_starts_in_home() -> None:
    """none: no mount at the notebook's path, and the kernel starts in /home/kernel."""
    opts = run_opts(KernelSettings(workdir="none"))
    targets = [mount_fields(v)[2] for v in values(opts, "--mount")]
    assert targets == [
        "target=/run/jupyter-docker-kernel",
        "target=/opt/jupyter-docker-kernel/kernel.json",
        "target=/opt/jupyter-docker-kernel/supervise.py",
    ]
    assert values(opts, "--workdir") == ["/home/kernel"]


def test_user_mounts_follow_ours_with_their_mode() -> None:
    """Each settings mount becomes one --mount, in order, 'readonly' only when :ro."""
    settings = KernelSettings(
        mounts=(Mount("/data", "/data", read_only=True), Mount("/scratch", "/s"))
    )
    mounts = [mount_fields(v) for v in values(run_opts(settings), "--mount")]
    assert mounts[-2:] == [
        ["type=bind", "source=/data", "target=/data", "readonly"],
        ["type=bind", "source=/scratch", "target=/s"],
    ]


# -- env, docker_args, image and command ----------------------------------------------------


def test_settings_env_comes_after_ours() -> None:
    """Settings env follows our defaults, so a user's HOME=... or LANG=... wins."""
    opts = run_opts(KernelSettings(env=(("LANG", "de_DE.UTF-8"), ("X", "1"))))
    assert values(opts, "--env")[-2:] == ["LANG=de_DE.UTF-8", "X=1"]
    assert values(opts, "--env").index("LANG=C.UTF-8") < values(opts, "--env").index("X=1")


def test_docker_args_come_after_all_our_options_just_before_the_image() -> None:
    """docker_args are the last options (they may override ours), right before the image."""
    settings = KernelSettings(
        docker_args=("--shm-size", "1g", "--gpus=all"),
        mounts=(Mount("/data", "/data"),),
        env=(("X", "1"),),
        runtime="runsc",
    )
    assert run_opts(settings)[-3:] == ["--shm-size", "1g", "--gpus=all"]


def test_image_is_followed_by_the_supervised_kernel_command() -> None:
    """After the image: the supervisor (cleaning the runtime dir), then ipykernel on kernel.json."""
    args = run_args(KernelSettings(image="course/py:1"), LAUNCH)
    assert args[-len(SUPERVISED_KERNEL) - 1 :] == ["course/py:1", *SUPERVISED_KERNEL]


def test_run_args_start_with_run() -> None:
    """The list is the arguments after the program name, starting with the subcommand."""
    assert run_args(KernelSettings(), LAUNCH)[0] == "run"


def test_custom_kernel_cmd_gets_the_in_container_connection_file() -> None:
    """Every {connection_file} in kernel_cmd becomes the in-container path, the rest verbatim."""
    settings = KernelSettings(
        python="python3.12",
        kernel_cmd=("irkernel", "--conn={connection_file}", "-f", "{connection_file}"),
    )
    args = run_args(settings, LAUNCH)
    assert args[-13:] == [
        "python3.12",
        "/opt/jupyter-docker-kernel/supervise.py",
        "--cleanup",
        "/run/jupyter-docker-kernel",
        "--lifetime",
        "86400",
        "--only-sockets",
        "k-1,k-2,k-3,k-4,k-5,claim",
        "--",
        "irkernel",
        "--conn=/opt/jupyter-docker-kernel/kernel.json",
        "-f",
        "/opt/jupyter-docker-kernel/kernel.json",
    ]


# -- mount_arg ------------------------------------------------------------------------------


def test_mount_arg_plain_paths_are_unquoted() -> None:
    """Ordinary paths give the plain comma form users would type."""
    assert mount_arg("/a", "/b") == "type=bind,source=/a,target=/b"
    assert mount_arg("/a", "/b", read_only=True) == "type=bind,source=/a,target=/b,readonly"


@pytest.mark.parametrize(
    "path",
    ['/home/u/my "notes"', "/home/u/a b", "/home/u/x=y", "/home/u/émoji-☃", "/home/u/it's", "/a,b"],
)
def test_mount_arg_csv_quotes_so_the_engine_reads_the_path_back(path: str) -> None:
    """A path with quotes, spaces, '=' or non-ASCII survives the engine's CSV parsing intact."""
    assert mount_fields(mount_arg(path, path)) == ["type=bind", f"source={path}", f"target={path}"]


def test_mount_arg_quotes_a_double_quote_by_doubling_it() -> None:
    """A '"' makes the field CSV-quoted with the quote doubled, as encoding/csv expects."""
    assert mount_arg('/a"b', "/t") == 'type=bind,"source=/a""b",target=/t'


# -- probe_args -----------------------------------------------------------------------------


def test_probe_runs_the_image_hardened_as_the_given_user() -> None:
    """The setup probe: no pull, no network, no capabilities, the given user, ipykernel check."""
    assert probe_args(KernelSettings(image="course/py:1"), "1000:100") == [
        "run",
        "--rm",
        "--pull=never",
        "--network",
        "none",
        "--user",
        "1000:100",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "course/py:1",
        "python3",
        "-c",
        hardening.PROBE_CODE,
    ]


def test_probe_passes_the_runtime_before_the_image() -> None:
    """With a runtime set, the probe runs under it too (so setup checks it works)."""
    args = probe_args(KernelSettings(runtime="runsc", image="i"), "1:1")
    assert args[args.index("--runtime") : args.index("i")] == ["--runtime", "runsc"]


def test_probe_with_custom_kernel_cmd_checks_only_python() -> None:
    """A custom kernel_cmd may not use ipykernel: the probe only runs the image's Python."""
    settings = KernelSettings(python="python3.12", kernel_cmd=("k", "{connection_file}"))
    args = probe_args(settings, "1:1")
    assert args[-3:-1] == ["python3.12", "-c"]
    assert "ipykernel" not in args[-1]
