"""Settings plus one launch's facts -> the `docker run` arguments (pure: no I/O, no engine).

launcher.py calls `run_args()` once per kernel start; `cli show` prints the same list, so
what users read is exactly what runs. Every hardening choice is made here, in one place,
and tested as a table in tests/test_hardening.py.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from jupyter_docker_kernel import engine
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import (
    CONNECTION_FILE_PLACEHOLDER,
    OWNER_USER,
    KernelSettings,
    size_bytes,
)

#: The in-container supervisor, mounted read-only into every kernel container.
SUPERVISOR_PATH = str(Path(__file__).with_name("_supervise.py"))

#: Where the per-kernel socket dir appears in the container (the kernel binds its sockets here).
RUNTIME_TARGET = "/run/jupyter-docker-kernel"
SOCKET_PREFIX = "k"
#: The in-container connection file, mounted read-only: the kernel cannot rewrite it.
CONNECTION_TARGET = "/opt/jupyter-docker-kernel/kernel.json"
SUPERVISOR_TARGET = "/opt/jupyter-docker-kernel/supervise.py"
#: A directory holding only _usage.py, as sitecustomize.py: the supervisor puts it on the
#: kernel's PYTHONPATH so usage_reply tells the container's limits (see _usage.py).
USAGE_SITE_TARGET = "/opt/jupyter-docker-kernel/site"
USAGE_HOOK_TARGET = f"{USAGE_SITE_TARGET}/sitecustomize.py"
#: A pooled container's claim socket, in RUNTIME_TARGET (see pool.py).
CLAIM_SOCKET = "claim"
#: --lifeline-wait: seconds from the supervisor's start within which the lifeline's holder
#: must connect (lifeline.LIFELINE_WAIT_SECONDS); it bounds a container whose starter died
#: between the engine's start and its connect.
LIFELINE_WAIT = 4.0
#: With kernel_transport "tcp", channel N listens on 127.0.0.1:BRIDGE_PORT_BASE+N in the
#: container's own network namespace; the supervisor bridges it to the socket SOCKET_PREFIX-N.
BRIDGE_PORT_BASE = 40000
CHANNEL_COUNT = 5
#: HOME inside the container: a private tmpfs, never the host's home.
HOME = "/home/kernel"
#: The uid:gid a kernel gets when the launching user is root: never root in the container.
ROOT_FALLBACK_USER = "65534:65534"
#: Our seccomp profile (upstream Docker's default, narrowed: see docs/seccomp.md), passed
#: to every engine so an old one (Docker 20.10, Podman 4) is as strict as a new one. The
#: engine's client reads the file and sends its contents, so a remote engine needs no copy.
SECCOMP_PROFILE = str(Path(__file__).with_name("seccomp.json"))
#: gVisor runs the kernel's tasks inside its Sentry, so the host's pids cgroup counts the
#: Sentry's own threads (about 40 idle, a few hundred when busy) plus, on its ptrace
#: platform, five to nine host tasks per sandboxed process (threads cost almost nothing).
#: Fork bombs held at N processes inside peaked at 394 (N=16), 770 (64), 979 (128) and
#: 4340 (512) host tasks with runsc 20221219 on the CI host; docs/security.md, "gVisor".
GVISOR_BASE_TASKS = 512
GVISOR_HOST_TASKS_PER_TASK = 10


def is_gvisor(settings: KernelSettings) -> bool:
    """True when the kernel runs under gVisor (a runtime named runsc, runsc-kvm, ...)."""
    return settings.runtime is not None and "runsc" in settings.runtime


def host_pids_limit(settings: KernelSettings) -> int:
    """The engine's `--pids-limit`: the user's limit, or under gVisor room for the Sentry.

    Under gVisor the user's limit is enforced inside the sandbox instead (RLIMIT_NPROC, which
    the Sentry counts per uid, threads included): a fork bomb gets EAGAIN there, as under
    runc, instead of the host limit ending the whole sandbox. The host limit stays a bound.
    """
    if is_gvisor(settings):
        return GVISOR_BASE_TASKS + GVISOR_HOST_TASKS_PER_TASK * settings.pids_limit
    return settings.pids_limit


@dataclass(frozen=True)
class Launch:
    """What one kernel start adds to the settings; built by launcher.py."""

    kernel_id: str
    container_name: str
    #: Host directory mounted at RUNTIME_TARGET, where the kernel binds its sockets.
    runtime_dir: str
    #: Host path of the in-container connection file, mounted read-only.
    connection_file: str
    #: Host path of _supervise.py, mounted read-only.
    supervisor_path: str
    host_uid: int
    host_gid: int
    #: The notebook's directory on the host (the launcher's cwd); with workdir mode "copy",
    #: where the kernel's tmpfs copy of it appears in the container.
    workdir: str
    #: The notebook's project root (workdir.project_root, setup --workdir-root), mounted
    #: (or, with --copy-workdir, streamed into a tmpfs) at its own path with `workdir`
    #: inside it as the cwd; "": `workdir` itself.
    project_root: str = ""
    launcher_pid: int = 0
    launcher_start: str = ""
    hostname: str = ""
    #: uid:gid owning `workdir`, looked up at each start for kernel_user "owner".
    workdir_owner: str = ""
    #: The kernelspec's name (from the connection file) and the client's host pid: `ps`.
    kernelspec: str = ""
    client_pid: int = 0

    #: Host path of the 0600 `--env-file` holding settings.env (env_file_text), in the
    #: kernel's private dir and never mounted; None: the --env values go in argv, where
    #: `ps` shows them to every local user (doctor's probe, which has none).
    env_file: str | None = None
    #: Where the engine mounts a host path from, when not from the path itself: the
    #: broker's bind mounts of directories it opened without following links (broker.py),
    #: so a rename after its check cannot swap what is mounted. (path, source) pairs.
    sources: tuple[tuple[str, str], ...] = ()
    #: More labels for the container (the broker's, so a restarted broker finds them).
    extra_labels: tuple[tuple[str, str], ...] = ()
    #: Our seccomp profile where the engine's CLI reads it (the CLI sends the file's
    #: contents): this package's file, or on a remote node its copy in the kernel's dir
    #: there (node_backend), since the node does not have this host's files.
    seccomp_profile: str = SECCOMP_PROFILE


def usage_hook_path(launch: Launch) -> str:
    """Host path of _usage.py: shipped next to the supervisor, in this package."""
    return str(PurePath(launch.supervisor_path).with_name("_usage.py"))


def seccomp_args(settings: KernelSettings, profile: str = SECCOMP_PROFILE) -> list[str]:
    """Our seccomp profile as a `docker run` option; none for Podman, whose service has it.

    The docker CLI sends the file's contents, and Podman 4's Docker-compatible API takes
    that value for a path on its host and fails ("opening seccomp profile failed"); there
    the service's containers.conf names the profile (scripts/bootstrap-podman installs it).
    Under gVisor the engine passes it on and runsc ignores it (the Sentry is the boundary;
    the supervisor's own filter refuses set-id modes there).
    """
    if settings.engine == "podman":
        return []
    return ["--security-opt", f"seccomp={profile}"]


def kernel_user(settings: KernelSettings, launch: Launch) -> str:
    """uid:gid for the container: configured, else the host user's, never root.

    A configured uid without a gid shares the launching user's group (so the launcher can
    reach the sockets the kernel creates), or its own number when root launches it.
    "owner" (root only) is the work dir's owner, so the kernel writes next to the notebook
    as the person who owns it; a root-owned dir, or a non-root launcher, falls back to the
    default (a non-root launcher cannot hand its runtime dir to another uid).
    """
    if settings.kernel_user == OWNER_USER:
        owner = launch.workdir_owner
        if launch.host_uid == 0 and owner and owner.split(":")[0] != "0":
            return owner
    elif settings.kernel_user:
        if ":" in settings.kernel_user:
            return settings.kernel_user
        gid = settings.kernel_user if launch.host_uid == 0 else str(launch.host_gid)
        return f"{settings.kernel_user}:{gid}"
    if launch.host_uid == 0:
        return ROOT_FALLBACK_USER
    return f"{launch.host_uid}:{launch.host_gid}"


def shares_group_only(settings: KernelSettings, launch: Launch) -> bool:
    """True when the kernel's uid differs from a non-root launcher's: access goes by group."""
    uid = int(kernel_user(settings, launch).split(":")[0])
    return launch.host_uid != 0 and uid != launch.host_uid


def labels(launch: Launch) -> dict[str, str]:
    """Labels that let gc and the tests find the container and its launcher."""
    return {
        engine.LABEL_KERNEL_ID: launch.kernel_id,
        engine.LABEL_LAUNCHER_PID: str(launch.launcher_pid),
        engine.LABEL_LAUNCHER_START: launch.launcher_start,
        engine.LABEL_LAUNCHER_HOST: launch.hostname,
        engine.LABEL_OWNER_UID: str(launch.host_uid),
        engine.LABEL_KERNELSPEC: launch.kernelspec,
        engine.LABEL_CLIENT_PID: str(launch.client_pid),
        engine.LABEL_WORKDIR: launch.workdir,
        **dict(launch.extra_labels),
    }


def mount_arg(source: str, target: str, read_only: bool = False) -> str:
    """A `--mount` value, CSV-quoted the way the engine parses it."""
    fields = ["type=bind", f"source={source}", f"target={target}"]
    if read_only:
        fields.append("readonly")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


def source_of(launch: Launch, path: str) -> str:
    """Where the engine mounts the host path `path` from (Launch.sources; else itself)."""
    return dict(launch.sources).get(path, path)


def kernel_command(settings: KernelSettings) -> list[str]:
    """The kernel's in-container argv, with the connection file placeholder filled in."""
    return [a.replace(CONNECTION_FILE_PLACEHOLDER, CONNECTION_TARGET) for a in settings.command()]


def thread_env(settings: KernelSettings) -> list[str]:
    """Cap BLAS/OpenMP pools at the CPU limit: one thread per host core would waste the
    pids budget and thrash under --cpus."""
    threads = str(max(1, math.ceil(settings.cpus)))
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    return [f"{name}={threads}" for name in names]


def run_args(
    settings: KernelSettings,
    launch: Launch,
    *,
    pool: tuple[str, str] | None = None,
    cidfile: str = "",
    lifeline: str | None = None,
) -> list[str]:
    """The complete `docker run` argument list (without the program name) for one kernel.

    With pool=(key, host dir) it is a detached warm-pool container instead: it waits for a
    launcher to claim it (pool.py), so it has no connection file and no attached client.
    cidfile: where the engine CLI writes the container's id (a kernel's start and `show`).
    lifeline: the name of the supervisor's lifeline socket in RUNTIME_TARGET (a cold start
    through the engine's API, local_backend.LocalBackend): no -i, and whoever connects to that
    socket holds the kernel's life instead of `docker run`'s stdin. Without it (`show`,
    the doctor, the CLI fallback) the arguments are the pasteable attached `docker run -i`.
    """
    user = kernel_user(settings, launch)
    uid, gid = user.split(":")
    tmpfs_opts = f"rw,nosuid,nodev,size={settings.tmp_size},nr_inodes={settings.tmp_inodes}"
    home_owner = f"uid={uid},gid={gid}"
    podman_tmpfs: list[str] = []
    if settings.engine == "podman":
        # Podman 4 refuses tmpfs options it does not know (nr_inodes, uid, gid); "U"
        # chowns the tmpfs to --user instead. The inode cap is lost there; size still holds.
        tmpfs_opts = f"rw,nosuid,nodev,size={settings.tmp_size}"
        home_owner = "U"
        # Podman's --read-only also mounts an unbounded writable tmpfs at /var/tmp (and a
        # root-only one at /run); ours takes its place, with /tmp's size cap.
        podman_tmpfs = ["--tmpfs", f"/var/tmp:{tmpfs_opts},mode=1777"]  # noqa: S108
    # -i: stdin is the supervisor's lifeline; the engine closes it when we disconnect.
    # A pooled container gets its lifeline when claimed, over its claim socket; one
    # started through the API (lifeline) over its lifeline socket: stdin stays closed.
    attach = ["--detach"] if pool else [] if lifeline else ["--interactive", "--sig-proxy=false"]
    # Podman 4.3's compat API answers the CLI's wait for an attached `run --rm` with exit
    # code 0 whatever the kernel's (podman#18889, fixed in 4.6); without --rm the code is
    # right, and the launcher and its watchdog remove the container anyway. Under gVisor
    # the launcher inspects the exited container (State.OOMKilled): the supervisor inside
    # cannot read the cgroup's OOM count there, so only the engine can say "out of memory".
    keep = settings.engine == "podman" or is_gvisor(settings)
    remove = [] if keep and not pool else ["--rm"]
    args: list[str] = [
        "run",
        *([f"--cidfile={cidfile}"] if cidfile else []),
        *remove,
        *attach,
        "--init",
        "--pull=never",
        *entrypoint_args(settings),
        "--name",
        launch.container_name,
        "--hostname",
        "kernel",
        "--user",
        user,
        "--network",
        settings.network,
        "--ipc",
        "private",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *seccomp_args(settings, launch.seccomp_profile),
        "--read-only",
        "--tmpfs",
        f"/tmp:{tmpfs_opts},mode=1777",  # noqa: S108 - a path inside the container
        "--tmpfs",
        f"{HOME}:{tmpfs_opts},{home_owner},mode=0700",
        *podman_tmpfs,
        "--memory",
        settings.memory,
        "--memory-swap",
        settings.memory,
        "--oom-score-adj",
        "1000",
        "--shm-size",
        "64m",
        "--cpus",
        f"{settings.cpus:g}",
        "--pids-limit",
        str(host_pids_limit(settings)),
        "--ulimit",
        f"nofile={settings.nofile}:{settings.nofile}",
        "--ulimit",
        "core=0",
        "--ulimit",
        f"fsize={size_bytes(settings.fsize)}",
        # The kernel's raw stdout/stderr reach the launcher through the attach stream
        # (capped there); nothing of it is written to the engine's disk.
        "--log-driver",
        "none",
    ]
    if is_gvisor(settings):
        # RLIMIT_NPROC counts the uid's tasks in the whole host under runc (the launching
        # user's own processes too), so only where the Sentry counts them itself.
        args += ["--ulimit", f"nproc={settings.pids_limit}:{settings.pids_limit}"]
    if settings.env and launch.env_file:
        # The user's values may be secrets: `ps` shows every local user our argv.
        args += ["--env-file", launch.env_file]
    else:
        for name, value in container_env(settings):
            args += ["--env", f"{name}={value}"]
    all_labels = labels(launch)
    if pool:
        all_labels[engine.LABEL_POOL], all_labels[engine.LABEL_POOL_DIR] = pool
    for key, value in all_labels.items():
        args += ["--label", f"{key}={value}"]
    if settings.runtime:
        args += ["--runtime", settings.runtime]
    if settings.gpus:
        # Docker's own syntax, already checked and quoted by settings.parse_gpus; Podman is
        # refused there (its compat API drops GPU requests without a word).
        args += ["--gpus", settings.gpus]
    args += ["--mount", mount_arg(launch.runtime_dir, RUNTIME_TARGET)]
    if launch.connection_file:
        args += ["--mount", mount_arg(launch.connection_file, CONNECTION_TARGET, read_only=True)]
    args += ["--mount", mount_arg(launch.supervisor_path, SUPERVISOR_TARGET, read_only=True)]
    args += ["--mount", mount_arg(usage_hook_path(launch), USAGE_HOOK_TARGET, read_only=True)]
    if settings.workdir == "none":
        args += ["--workdir", HOME]
    elif settings.workdir == "copy":
        # Not a host directory: a tmpfs capped in bytes and inodes (its pages count against
        # --memory), filled by the supervisor from the launcher's stream (workcopy.py): the
        # project root's copy, with the notebook's directory inside it as the cwd.
        # The engine's --workdir is the tmpfs itself: a notebook dir below a project root
        # would be made by the engine as root before the copy arrives; the supervisor
        # changes into it once the copy is unpacked.
        root = launch.project_root or launch.workdir
        args += ["--tmpfs", f"{root}:{work_tmpfs_options(settings, uid, gid)}"]
        args += ["--workdir", root]
    else:
        root = launch.project_root or launch.workdir
        args += [
            "--mount",
            mount_arg(source_of(launch, root), root, settings.workdir_readonly),
            "--workdir",
            launch.workdir,
        ]
    for m in settings.mounts:
        m = m.resolved(launch.project_root or launch.workdir, launch.workdir)
        args += ["--mount", mount_arg(source_of(launch, m.source), m.target, m.read_only)]
    args += list(settings.docker_args)
    args.append(settings.image)
    umask = "0007" if shares_group_only(settings, launch) else None
    receive = (launch.project_root or launch.workdir) if settings.workdir == "copy" else None
    chdir = launch.workdir if receive is not None and receive != launch.workdir else None
    args += supervisor_command(
        settings,
        umask=umask,
        pooled=pool is not None,
        receive=receive,
        chdir=chdir,
        lifeline=lifeline,
    )
    return args


def entrypoint_args(settings: KernelSettings) -> list[str]:
    """`--entrypoint=` (the image's ENTRYPOINT cleared) unless settings.keep_entrypoint.

    Our supervisor is the container's command. An image's ENTRYPOINT would run it as
    arguments of its own: Jupyter Docker Stacks' tini + start.sh wants root or a writable
    HOME, repo2docker's sources a conda environment first. run_args puts this before the
    user's --docker-arg options, so a `--docker-arg=--entrypoint=X` given there wins.
    """
    return [] if settings.keep_entrypoint else ["--entrypoint="]


def user_entrypoint(docker_args: Sequence[str]) -> list[str]:
    """The --entrypoint options among the user's --docker-arg values, for the probes: a
    kernel started with another entrypoint must be probed with it too."""
    out: list[str] = []
    for i, arg in enumerate(docker_args):
        if arg.startswith("--entrypoint="):
            out.append(arg)
        elif arg == "--entrypoint" and i + 1 < len(docker_args):
            out += [arg, docker_args[i + 1]]
    return out


def container_env(settings: KernelSettings) -> list[tuple[str, str]]:
    """The kernel's whole environment: ours, then settings.env, so that a user's HOME=...
    or LANG=... wins (of two entries for one name the engine keeps the last)."""
    threads = [item.partition("=") for item in thread_env(settings)]
    return [
        ("HOME", HOME),
        ("LANG", "C.UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("MPLCONFIGDIR", f"{HOME}/.config/matplotlib"),
        *((name, value) for name, _, value in threads),
        *settings.env,
    ]


def env_file_text(settings: KernelSettings) -> str:
    """container_env() as an `--env-file`, in order: one NAME=VALUE a line, taken verbatim
    by Docker's and Podman's CLIs (no quoting, no expansion). All of it, not only
    settings.env: the engine applies --env after the file, which would turn the order
    round. A line break cannot be carried: such a value is refused rather than silently
    changed. (Names are checked by KernelSettings: no '#', '=' or blanks.)"""
    lines = []
    for name, value in container_env(settings):
        if "\n" in value or "\r" in value:
            raise SettingsError(
                f"--env {name} has a line break in its value, which the engine's --env-file "
                "cannot carry. No container was started. Run setup again with a one-line "
                "value."
            )
        lines.append(f"{name}={value}\n")
    return "".join(lines)


def work_tmpfs_options(settings: KernelSettings, uid: str, gid: str) -> str:
    """The --copy-workdir tmpfs: the copy and what the kernel writes next to it, in at most
    copy_limit bytes and tmp_inodes entries, owned by the kernel's uid."""
    if settings.engine == "podman":
        # As for /tmp: Podman 4 refuses nr_inodes and uid/gid ("U" chowns it instead).
        return f"rw,nosuid,nodev,size={size_bytes(settings.copy_limit)},U,mode=0700"
    return (
        f"rw,nosuid,nodev,size={size_bytes(settings.copy_limit)},nr_inodes={settings.tmp_inodes},"
        f"uid={uid},gid={gid},mode=0700"
    )


def supervisor_command(
    settings: KernelSettings,
    umask: str | None = None,
    *,
    pooled: bool = False,
    receive: str | None = None,
    chdir: str | None = None,
    lifeline: str | None = None,
) -> list[str]:
    """The container's command: our supervisor, run by the image's Python, then the kernel.

    With `receive` (--copy-workdir), the supervisor first unpacks the launcher's stream of
    the notebook's directory there. With `lifeline` (a socket name), it binds that socket
    in RUNTIME_TARGET and waits LIFELINE_WAIT seconds for its holder (lifeline.py) instead
    of holding its stdin as the lifeline."""
    args = [
        settings.python,
        SUPERVISOR_TARGET,
        "--cleanup",
        RUNTIME_TARGET,
        "--lifetime",
        f"{settings.max_lifetime:g}",
    ]
    if umask is not None:
        args += ["--umask", umask]
    args += ["--site", USAGE_SITE_TARGET]
    if receive is not None:
        args += ["--receive-workdir", receive]
    if chdir is not None:
        args += ["--chdir", chdir]
    # The socket dir is on the host's disk: the supervisor kills a kernel that writes
    # anything else there (the launcher's watch removes its container too).
    sockets = [f"{SOCKET_PREFIX}-{index}" for index in range(1, CHANNEL_COUNT + 1)]
    sockets += [CLAIM_SOCKET, *([lifeline] if lifeline else [])]
    args += ["--only-sockets", ",".join(sockets)]
    if settings.kernel_transport == "tcp":
        for index in range(1, CHANNEL_COUNT + 1):
            path = f"{RUNTIME_TARGET}/{SOCKET_PREFIX}-{index}"
            args += ["--bridge", f"{BRIDGE_PORT_BASE + index}={path}"]
    if lifeline:
        args += ["--lifeline", f"{RUNTIME_TARGET}/{lifeline}", "--lifeline-wait"]
        args += [f"{LIFELINE_WAIT:g}"]
    if pooled:
        args += [
            "--pool-wait",
            f"{RUNTIME_TARGET}/{CLAIM_SOCKET}",
            "--pool-ip",
            f"{RUNTIME_TARGET}/{SOCKET_PREFIX}",
            "--pool-ttl",
            f"{settings.pool_ttl:g}",
        ]
    return [*args, "--", *kernel_command(settings)]


#: Printed by probe_args' command: the image's Python, ipykernel, and kernel release (a
#: sandboxing runtime such as gVisor reports its own, which is how setup checks it is real).
PROBE_CODE = (
    "import sys, platform, ipykernel; "
    "print(sys.version.split()[0], ipykernel.__version__, platform.release())"
)
PROBE_CODE_NO_IPYKERNEL = (
    "import sys, platform; print(sys.version.split()[0], '-', platform.release())"
)


def probe_args(settings: KernelSettings, user: str, *, code: str | None = None) -> list[str]:
    """`docker run` arguments that check the image can run a kernel (used by setup), or
    that run `code` with the image's Python instead (image_kernels.py lists kernelspecs)."""
    args = ["run", "--rm", "--pull=never", "--network", "none", "--user", user]
    args += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    # The same entrypoint as the kernel's container: ours cleared, or the image's kept,
    # or the user's own from --docker-arg.
    args += entrypoint_args(settings) + user_entrypoint(settings.docker_args)
    # The kernel's profile too: setup proves the image starts under it.
    args += seccomp_args(settings)
    if settings.runtime:
        args += ["--runtime", settings.runtime]
    args += [settings.image]
    if code is not None:
        return [*args, settings.python, "-c", code]
    if settings.kernel_cmd:
        return [*args, settings.python, "-c", PROBE_CODE_NO_IPYKERNEL]
    return [*args, settings.python, "-c", PROBE_CODE]


def quote_command(program: str, args: Sequence[str]) -> str:
    """A shell-pasteable rendering of a command, for `show` and debug logs."""
    import shlex

    return " ".join(shlex.quote(a) for a in (program, *args))
