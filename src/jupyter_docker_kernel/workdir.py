"""Which host directory a kernel gets: the notebook's project root, and what may be mounted.

container.Container calls `project_root()` once per start (argv launcher and provisioner alike:
both hand it the client's cwd, the notebook's directory) and `check_project()` before any
container exists; hardening.run_args mounts the root at its own path with the notebook's
directory as the working directory. The rules of what may never reach a kernel (the host's
root, the home directory itself, system trees, an engine's socket) live here once:
readiness.loosenings (setup, doctor) reads the same lists.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.settings import OWNER_USER, ROOT_GIT, ROOT_UP, KernelSettings, Mount

log = logging.getLogger(__name__)

#: Where engines listen by default; a mount of one of these (or of a directory above it)
#: hands the kernel the engine's API, which is root on the host.
ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
    "/run/containerd/containerd.sock",
)
#: Container paths the kernel needs whole: a mount on, above or below them hides the
#: image's Python, its libraries, or the engine's own filesystems.
SYSTEM_TREES = (
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
)
#: Container paths a mount may go below but not on or above: ours, and the tmpfs mounts.
OWN_PATHS = (
    hardening.RUNTIME_TARGET,
    "/opt/jupyter-docker-kernel",
    "/tmp",  # noqa: S108 - a path inside the container
    hardening.HOME,
)


def on_or_above(target: str, path: str) -> bool:
    """Whether `path` is `target` or inside it."""
    return path == target or path.startswith(target.rstrip("/") + "/")


def socket_in(source: str, sockets: Sequence[str]) -> str:
    """The engine socket a host path is or contains ("" when none)."""
    if not source.startswith("/"):
        return ""
    return next((s for s in sockets if on_or_above(source, s)), "")


def engine_sockets(engine: Engine) -> list[str]:
    """The default socket paths plus this engine's own (DOCKER_HOST's, a rootless one),
    each with its real path too (/var/run is a link to /run)."""
    paths = list(ENGINE_SOCKETS)
    address = engine.address()
    if address.startswith("unix://"):
        paths.append(address.removeprefix("unix://"))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths += [f"{runtime}/docker.sock", f"{runtime}/podman/podman.sock"]
    # In this order: an error names Docker's socket before containerd's.
    return list(dict.fromkeys([*paths, *(os.path.realpath(p) for p in paths)]))


def project_root(
    notebook_dir: str,
    settings: KernelSettings,
    *,
    exists: Callable[[str], bool] = os.path.lexists,
) -> tuple[str, str]:
    """(root, cwd): the host directory to mount (or copy) at its own path, and the kernel's
    working directory inside it, which is always the notebook's directory.

    settings.workdir_root: None, the notebook's directory alone (as before); "git", the
    nearest directory above it holding `.git` (a directory, or a worktree's file; git is
    not run), else its own directory with one log line; "..N", N levels up; an absolute
    path, which must contain the notebook's directory (LaunchError otherwise). Reads only
    `exists` (the table test passes its own); the result is checked by check_project().
    """
    cwd = _normalise(notebook_dir)
    how = settings.workdir_root
    if not how:
        return cwd, cwd
    if how == ROOT_GIT:
        path = cwd
        while True:
            if exists(path.rstrip("/") + "/.git"):
                return path, cwd
            if path == "/":
                break
            path = os.path.dirname(path)
        log.info(
            "--workdir-root git: %s is in no git work tree (no .git above it); only that "
            "directory is mounted",
            cwd,
        )
        return cwd, cwd
    up = re.fullmatch(ROOT_UP, how)
    if up:
        root = cwd
        for _ in range(int(up.group(1))):
            root = os.path.dirname(root)
        return root, cwd
    if not on_or_above(how, cwd):
        raise LaunchError(
            f"The notebook's directory {cwd} is not inside the project root {how} "
            "(--workdir-root). No container was started. Open the notebook from inside "
            f"{how}, or run setup again with --workdir-root git or ..N."
        )
    return how, cwd


def refusal(path: str, *, home: str, sockets: Sequence[str]) -> str:
    """Why the host directory `path` may not be mounted into a kernel at its own path, or
    "" when it may: the host's root, the home directory itself, on, in or above a system
    tree or one of our own container paths, or holding an engine's socket."""
    if path == "/":
        return "is the host's root directory: the kernel would see everything"
    if home and home != "/" and path == _normalise(home):
        return (
            "is your home directory itself: the kernel would read your keys, tokens and "
            "every other project"
        )
    engine_socket = socket_in(path, sockets)
    if engine_socket:
        return (
            f"holds the container engine's API ({engine_socket}): code in the kernel could "
            "start a privileged container and take over the host"
        )
    system = [p for p in SYSTEM_TREES if on_or_above(path, p) or on_or_above(p, path)]
    if system:
        return f"covers {system[0]}, which the kernel needs (Python, its libraries, the system)"
    ours = [p for p in OWN_PATHS if on_or_above(path, p)]
    if ours:
        return f"covers {ours[0]}, which jupyter-docker-kernel mounts there itself"
    return ""


def check_project(
    root: str,
    cwd: str,
    mounts: Sequence[Mount],
    *,
    home: str,
    sockets: Sequence[str],
    realpath: Callable[[str], str] = os.path.realpath,
) -> None:
    """Refuse (LaunchError) a project root or a resolved --mount template that `refusal`
    forbids, by its path and by its real path (a symlink to / is /).

    A root that is the notebook's own directory is what every kernel mounts without
    --workdir-root, so only '/' is refused there (as Container.prepare always did).
    `mounts` are the template mounts already resolved (Mount.resolved); they must exist.
    """
    for path in dict.fromkeys((root, realpath(root))):
        why = (
            ("is the host's root directory" if path == "/" else "")
            if root == cwd
            else refusal(path, home=home, sockets=sockets)
        )
        if why:
            raise LaunchError(
                f"The project root {path} for the notebook in {cwd} (--workdir-root) {why}. "
                "No container was started. Give the project its own git repository, or run "
                "setup again with a --workdir-root nearer the notebook."
            )
    for m in mounts:
        if not os.path.exists(m.source):
            raise LaunchError(
                f"--mount {m.to_spec()}: {m.source} does not exist for the notebook in {cwd}. "
                "No container was started. Create it, or run setup again without that mount."
            )
        for path in dict.fromkeys((m.source, realpath(m.source))):
            why = refusal(path, home=home, sockets=sockets)
            if why:
                raise LaunchError(
                    f"--mount {m.to_spec()}: {path} {why}. No container was started. "
                    "Run setup again with a --mount template inside the project."
                )


def _normalise(path: str) -> str:
    """An absolute path without '.', '..', doubled or trailing slashes (a relative one, as
    a client may pass its cwd, is taken from the process's cwd, as Popen would)."""
    return os.path.abspath(path).replace("//", "/", 1) if path else "/"


def owner_of(workdir: str, settings: KernelSettings) -> str:
    """The uid:gid owning the work dir, for kernel_user "owner" ("" otherwise, or when it
    cannot be read): looked up at each start, as the notebook's directory changes."""
    if settings.kernel_user != OWNER_USER:
        return ""
    try:
        st = os.stat(workdir)
    except OSError:
        return ""
    return f"{st.st_uid}:{st.st_gid}"


#: Files in a mounted work dir that mean nbgrader's private data is within the kernel's reach.
NBGRADER_MARKERS = ("gradebook.db", "nbgrader_config.py")


#: nbgrader's per-student steps live at <course>/<step>/<student>/<assignment>; these two
#: steps are the instructor's own (<course>/<step>/<assignment>), where no student code runs.
NBGRADER_INSTRUCTOR_STEPS = ("source", "release")


def nbgrader_layout(workdir: str) -> str:
    """Why `workdir` looks like a directory nbgrader grades in; "" if it does not.

    nbgrader runs every submission in autograded/<student>/<assignment> and then writes the
    graded notebook back there, following whatever link the kernel left in its place. The
    step may be renamed in nbgrader_config.py, so a directory at least three levels below
    one holding gradebook.db or nbgrader_config.py counts too, unless that step is
    source/ or release/ (the instructor's own, two levels deep). Pure path checks and
    lstat: nothing is opened or followed.
    """
    path = Path(os.path.abspath(workdir))
    if "autograded" in path.parts:
        return "it is inside nbgrader's autograded/ tree"
    for depth, parent in enumerate(path.parents, start=1):
        marker = next((m for m in NBGRADER_MARKERS if os.path.lexists(parent / m)), "")
        if not marker:
            continue
        step = path.parts[len(parent.parts)]
        if depth >= 3 and step not in NBGRADER_INSTRUCTOR_STEPS:
            where = f"{depth} levels below {parent / marker}"
            return f"it is {where}, where nbgrader keeps its per-student {step}/ directories"
        return ""
    return ""


def refuse_grading_mount(workdir: str) -> None:
    """Refuse to mount `workdir` writable when it looks like one nbgrader grades in.

    Container.prepare() calls it before any container exists, on the argv and provisioner
    paths alike. A writable mount there lets the kernel swap its notebook for a link to
    ../../../gradebook.db, which nbgrader then writes the graded notebook through (and
    chmods): grades lost. No override: --copy-workdir (what --for-nbgrader sets up) and
    --workdir-readonly are the safe ways to run a notebook there.
    """
    why = nbgrader_layout(workdir)
    if why:
        raise LaunchError(
            f"Refusing to mount the work directory {workdir} writable into the kernel: {why}. "
            "A kernel that can write there can plant links that nbgrader (or any host tool) "
            "follows when it writes the graded notebook back. No container was started. "
            "Grade with a kernelspec made by `jupyter-docker-kernel setup --for-nbgrader` "
            "(a private copy of the directory), or use --copy-workdir or --workdir-readonly."
        )


def warn_about_workdir(workdir: str, uid: int, gid: int, read_only: bool) -> None:
    """Log what a mounted work dir exposes or lacks; never refuses, the user chose it."""
    exposed = [name for name in NBGRADER_MARKERS if os.path.lexists(os.path.join(workdir, name))]
    if exposed:
        log.warning(
            "the kernel's work directory %s holds %s: code in the kernel can read%s it. "
            "Use --copy-workdir (or --workdir-readonly) for untrusted notebooks.",
            workdir,
            " and ".join(exposed),
            "" if read_only else " and change",
        )
    if read_only or uid == os.getuid():
        return
    st = os.stat(workdir)
    writable = (
        (st.st_uid == uid and st.st_mode & 0o200)
        or (st.st_gid == gid and st.st_mode & 0o020)
        or st.st_mode & 0o002
    )
    if not writable:
        log.warning(
            "the kernel runs as uid %d and cannot write its work directory %s (owner uid %d, "
            "mode %o): notebooks that save files there will fail. Use --copy-workdir to give "
            "it a private writable copy.",
            uid,
            workdir,
            st.st_uid,
            stat.S_IMODE(st.st_mode),
        )
