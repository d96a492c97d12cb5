"""hardening.py: settings and one launch -> the exact `docker run` arguments (pure, no engine)."""

from __future__ import annotations

import csv
import dataclasses
import errno
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import engine, hardening
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.hardening import Launch, mount_arg, probe_args, run_args
from jupyter_docker_kernel.settings import EngineKind, KernelSettings, Mount

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
    kernelspec="course-py",
    client_pid=4200,
)
SUPERVISED_KERNEL = [
    "python3",
    "/opt/jupyter-docker-kernel/supervise.py",
    "--cleanup",
    "/run/jupyter-docker-kernel",
    "--lifetime",
    "86400",
    "--site",
    "/opt/jupyter-docker-kernel/site",
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
        ("--security-opt", f"seccomp={hardening.SECCOMP_PROFILE}"),
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
        # gVisor: room for the Sentry on the host, the user's 64 as RLIMIT_NPROC inside.
        ("--pids-limit", str(512 + 10 * 64)),
        ("--ulimit", "nproc=64:64"),
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


def test_a_staged_source_is_mounted_in_place_of_the_path_at_the_same_target() -> None:
    """The broker's staged bind mounts (Launch.sources): the engine mounts the staging
    path, the kernel sees the directory at its own path, the label keeps the real one."""
    launch = dataclasses.replace(
        LAUNCH,
        sources=(("/home/u/course/week1", "/run/b/k/m0"), ("/home/u/data", "/run/b/k/m1")),
        extra_labels=(("io.github.jupyter-docker-kernel.broker", "/run/b.sock"),),
    )
    settings = KernelSettings(mounts=(Mount("/home/u/data", "/data", True),))
    opts = run_opts(settings, launch)
    mounts = values(opts, "--mount")
    assert "type=bind,source=/run/b/k/m0,target=/home/u/course/week1" in mounts
    assert "type=bind,source=/run/b/k/m1,target=/data,readonly" in mounts
    assert not any("source=/home/u" in m for m in mounts)
    labels = values(opts, "--label")
    assert "io.github.jupyter-docker-kernel.broker=/run/b.sock" in labels
    assert "io.github.jupyter-docker-kernel.workdir=/home/u/course/week1" in labels


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


@pytest.mark.parametrize(
    ("runtime", "engine_name", "pids", "nproc", "removed"),
    [
        # runc: RLIMIT_NPROC would count the launching user's host processes too.
        ("", "docker", "512", None, True),
        ("runc", "docker", "512", None, True),
        # gVisor: the Sentry's tasks on the host; the kernel's own count inside.
        ("runsc", "docker", "5632", "nproc=512:512", False),
        ("runsc-kvm", "docker", "5632", "nproc=512:512", False),
        # Podman keeps the container for its exit code (podman#18889).
        ("", "podman", "512", None, False),
    ],
)
def test_pids_limit_and_removal_per_runtime(
    runtime: str, engine_name: EngineKind, pids: str, nproc: str | None, removed: bool
) -> None:
    """Under gVisor the host pids limit leaves room for the Sentry and the user's limit
    holds inside (RLIMIT_NPROC); the container is kept for the launcher's OOM check."""
    opts = run_opts(KernelSettings(runtime=runtime or None, engine=engine_name))
    assert values(opts, "--pids-limit") == [pids]
    assert [v for v in values(opts, "--ulimit") if v.startswith("nproc=")] == (
        [nproc] if nproc else []
    )
    assert ("--rm" in opts) is removed


@pytest.mark.parametrize(
    ("engine_name", "runtime", "expected"),
    [
        ("docker", None, [f"seccomp={hardening.SECCOMP_PROFILE}"]),
        ("docker", "runsc", [f"seccomp={hardening.SECCOMP_PROFILE}"]),
        # Podman 4's compat API reads the CLI's inlined profile as a path: the service's.
        ("podman", None, []),
    ],
)
def test_seccomp_profile_per_engine(
    engine_name: EngineKind, runtime: str | None, expected: list[str]
) -> None:
    """Docker gets our profile per container (run and probe alike); Podman has it as the
    service's default (scripts/bootstrap-podman), since its compat API cannot take it."""
    settings = KernelSettings(engine=engine_name, runtime=runtime)
    for opts in (run_opts(settings), probe_args(settings, "1:1")):
        assert [v for v in values(opts, "--security-opt") if v.startswith("seccomp=")] == expected


def test_pooled_gvisor_containers_are_still_removed_by_the_engine() -> None:
    """A warm pool container has no attached launcher to inspect it: --rm as ever."""
    args = run_args(KernelSettings(runtime="runsc"), LAUNCH, pool=("k", "/p"))
    assert "--rm" in args


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
        (engine.LABEL_KERNELSPEC, "course-py"),
        (engine.LABEL_CLIENT_PID, "4200"),
        (engine.LABEL_WORKDIR, "/home/u/course/week1"),
    ],
)
def test_container_carries_label(key: str, value: str) -> None:
    """Each label gc, `ps` and the tests rely on is set from the launch."""
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
        "target=/opt/jupyter-docker-kernel/site/sitecustomize.py",
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
    assert args[-15:] == [
        "python3.12",
        "/opt/jupyter-docker-kernel/supervise.py",
        "--cleanup",
        "/run/jupyter-docker-kernel",
        "--lifetime",
        "86400",
        "--site",
        "/opt/jupyter-docker-kernel/site",
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
        "--entrypoint=",
        "--security-opt",
        f"seccomp={hardening.SECCOMP_PROFILE}",
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


# -- env by file (H05) ------------------------------------------------------------------------

ENV_FILE_LAUNCH = dataclasses.replace(LAUNCH, env_file="/tmp/jupyter-docker-kernel-1000/k/env")


def test_with_an_env_file_no_env_value_is_in_argv() -> None:
    """User env values may be secrets and argv is public (`ps`): with Launch.env_file the
    whole environment goes to --env-file, and no --env is left in argv."""
    settings = KernelSettings(env=(("TOKEN", "s3cret"),))
    opts = run_opts(settings, ENV_FILE_LAUNCH)
    assert values(opts, "--env-file") == [ENV_FILE_LAUNCH.env_file]
    assert values(opts, "--env") == []
    assert not [a for a in opts if "s3cret" in a]


def test_env_file_keeps_our_order_so_the_users_values_win() -> None:
    """The file holds ours first, then the user's, as the --env flags did (last one wins)."""
    settings = KernelSettings(env=(("LANG", "de_DE.UTF-8"), ("X", "a=b c")))
    text = hardening.env_file_text(settings)
    lines = text.splitlines()
    assert lines[:2] == ["HOME=/home/kernel", "LANG=C.UTF-8"]
    assert lines[-2:] == ["LANG=de_DE.UTF-8", "X=a=b c"]
    assert [f"--env={line}" for line in lines] == [
        f"--env={v}" for v in values(run_opts(settings), "--env")
    ]


def test_without_user_env_the_fixed_env_stays_in_argv() -> None:
    """Nothing secret: our fixed values stay visible in argv (and in `show`)."""
    assert values(run_opts(KernelSettings(), ENV_FILE_LAUNCH), "--env-file") == []


@pytest.mark.parametrize("value", ["two\nlines", "cr\r"])
def test_env_the_env_file_cannot_carry_is_refused(value: str) -> None:
    """A line break would end the value early (or be dropped): refused, not mangled."""
    with pytest.raises(SettingsError, match="--env X has a line break"):
        hardening.env_file_text(KernelSettings(env=(("X", value),)))


# -- the seccomp profile (seccomp.json; docs/seccomp.md says where it comes from) ------------

PROFILE: dict[str, Any] = json.loads(Path(hardening.SECCOMP_PROFILE).read_text())
SETUID, SETGID = 0o4000, 0o2000
ARG_TESTS: dict[str, Callable[[int, int, int], bool]] = {
    "SCMP_CMP_EQ": lambda arg, value, _: arg == value,
    "SCMP_CMP_NE": lambda arg, value, _: arg != value,
    "SCMP_CMP_LT": lambda arg, value, _: arg < value,
    "SCMP_CMP_GT": lambda arg, value, _: arg > value,
    "SCMP_CMP_MASKED_EQ": lambda arg, mask, datum: arg & mask == datum,
}


def verdict(name: str, *args: int) -> str:
    """What the profile does with one call from a kernel holding no capabilities (we drop
    ALL) on x86_64: "allow", or the errno name. Rules for callers with a capability or
    another architecture never apply; a rule's argument conditions must all hold."""
    for rule in PROFILE["syscalls"]:
        includes = rule.get("includes") or {}
        if name not in rule["names"] or includes.get("caps"):
            continue
        if includes.get("arches") and not {"amd64", "x86"} & set(includes["arches"]):
            continue
        conditions = rule.get("args") or []
        if all(
            ARG_TESTS[c["op"]](args[c["index"]], c["value"], c.get("valueTwo", 0))
            for c in conditions
        ):
            if rule["action"] == "SCMP_ACT_ALLOW":
                return "allow"
            return errno.errorcode[rule.get("errnoRet", PROFILE["defaultErrnoRet"])]
    return errno.errorcode[PROFILE["defaultErrnoRet"]]


def test_profile_refuses_by_default_with_eperm() -> None:
    """Anything the profile does not name fails with EPERM (as upstream's does)."""
    assert PROFILE["defaultAction"] == "SCMP_ACT_ERRNO"
    assert PROFILE["defaultErrnoRet"] == errno.EPERM


def test_profile_admits_no_i386_or_x32_calls_on_x86_64() -> None:
    """i386's socketcall hides socket()'s family from seccomp (and libseccomp then allows
    it): an x86_64 kernel gets no second ABI at all. 32-bit ARM stays (no socketcall)."""
    arches = {a["architecture"]: a["subArchitectures"] for a in PROFILE["archMap"]}
    assert arches["SCMP_ARCH_X86_64"] == []
    assert arches["SCMP_ARCH_AARCH64"] == ["SCMP_ARCH_ARM"]


def test_profile_ships_inside_the_package() -> None:
    """The file sits next to hardening.py, so the wheel (the whole package dir) carries it."""
    assert Path(hardening.SECCOMP_PROFILE).parent == Path(hardening.__file__).parent


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        # io_uring: its own syscall surface, and its ops (openat, ...) bypass this filter.
        (("io_uring_setup", 0, 0), "EPERM"),
        (("io_uring_enter", 0, 0, 0, 0, 0, 0), "EPERM"),
        (("io_uring_register", 0, 0, 0, 0), "EPERM"),
        # AF_VSOCK reaches the hypervisor whatever --network says; AF_ALG the kernel's crypto.
        (("socket", 40, 1, 0), "EPERM"),
        (("socket", 38, 5, 0), "EPERM"),
        (("socket", 1, 1, 0), "allow"),
        (("socket", 2, 1, 0), "allow"),
        (("socket", 10, 2, 0), "allow"),
        # Kernel state no namespace covers (catalogue D09) and namespaces (D04).
        (("keyctl", 0), "EPERM"),
        (("add_key", 0), "EPERM"),
        (("bpf", 0), "EPERM"),
        (("perf_event_open", 0), "EPERM"),
        (("userfaultfd", 0), "EPERM"),
        (("kexec_load", 0), "EPERM"),
        (("unshare", 0), "EPERM"),
        (("mount", 0), "EPERM"),
        (("setns", 0), "EPERM"),
        (("clone", 0x10000000), "EPERM"),  # CLONE_NEWUSER
        (("clone", 0x003D0F00), "allow"),  # threads: CLONE_VM|CLONE_FS|...|CLONE_SETTLS
        (("clone3", 0), "ENOSYS"),
        # Set-id files (item 2): chmod family and every create with a mode.
        (("chmod", 0, 0o755), "allow"),
        (("chmod", 0, 0o1777), "allow"),
        (("chmod", 0, SETUID | 0o755), "EPERM"),
        (("chmod", 0, SETGID | 0o755), "EPERM"),
        (("fchmod", 3, 0o644), "allow"),
        (("fchmod", 3, SETUID | 0o700), "EPERM"),
        (("fchmodat", -100, 0, 0o600, 0), "allow"),
        (("fchmodat", -100, 0, SETGID | 0o700, 0), "EPERM"),
        (("fchmodat2", -100, 0, 0o600, 0x100), "allow"),
        (("fchmodat2", -100, 0, SETUID | 0o600, 0x100), "EPERM"),
        (("creat", 0, 0o644), "allow"),
        (("creat", 0, SETUID | 0o755), "EPERM"),
        (("open", 0, os.O_RDONLY, 0), "allow"),
        (("open", 0, os.O_CREAT | os.O_WRONLY, SETUID | 0o755), "EPERM"),
        (("openat", -100, 0, os.O_RDONLY, 0), "allow"),
        (("openat", -100, 0, os.O_CREAT | os.O_WRONLY, 0o644), "allow"),
        (("openat", -100, 0, os.O_CREAT | os.O_WRONLY, SETGID | 0o755), "EPERM"),
        (("mknod", 0, 0o100644, 0), "allow"),
        (("mknod", 0, 0o100000 | SETUID | 0o755, 0), "EPERM"),
        (("mknodat", -100, 0, 0o100000 | SETGID | 0o755, 0), "EPERM"),
        # openat2's mode sits in a struct seccomp cannot read: ENOSYS, callers fall back.
        (("openat2", -100, 0, 0, 24), "ENOSYS"),
        # What every kernel needs stays allowed.
        (("read", 0, 0, 0), "allow"),
        (("execve", 0, 0, 0), "allow"),
        (("mkdir", 0, 0o755), "allow"),
    ],
    ids=lambda value: (
        "-".join(f"{v:o}" if isinstance(v, int) else v for v in value)
        if isinstance(value, tuple)
        else value
    ),
)
def test_profile_outcome(call: tuple[Any, ...], expected: str) -> None:
    """Each call a kernel may make (no capabilities, x86_64) gets the profile's answer."""
    name, *args = call
    assert verdict(name, *args, *([0] * 6)) == expected


@pytest.mark.parametrize(
    "settings",
    [KernelSettings(), KernelSettings(engine="podman"), KernelSettings(runtime="runsc")],
    ids=["docker", "podman", "gvisor"],
)
def test_lifeline_mode_drops_stdin_and_names_the_socket(settings: KernelSettings) -> None:
    """A cold start through the API (issue 17): no -i (nobody attaches; stdin would stay
    open for ever), the supervisor binds the lifeline socket and waits 4 s for its holder,
    and its socket-dir guard allows that name. Everything else is what `show` prints."""
    shown = run_args(settings, LAUNCH, cidfile="/r/cid")
    held = run_args(settings, LAUNCH, cidfile="/r/cid", lifeline="life")
    assert "--interactive" in shown
    assert "--lifeline" not in shown
    assert "--interactive" not in held
    assert "--sig-proxy=false" not in held
    command = held[held.index(hardening.SUPERVISOR_TARGET) : held.index("--", 1)]
    assert ("--lifeline", f"{hardening.RUNTIME_TARGET}/life") in pairs(command)
    assert ("--lifeline-wait", "4") in pairs(command)
    assert "life" in dict(pairs(command))["--only-sockets"].split(",")
    attached = ("--interactive", "--sig-proxy=false")
    assert [a for a in before_image(shown) if a not in attached] == before_image(held)
    assert engine.create_args(held) == ["create", *held[1:]]


def before_image(args: list[str]) -> list[str]:
    return args[: args.index(hardening.SUPERVISOR_TARGET) - 2]
