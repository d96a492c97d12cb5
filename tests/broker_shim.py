"""Start a kernel as an unprivileged test user through the broker (tests/broker_env.py).

A kernelspec rewritten by `broker_env.as_user` has jupyter_client (the hostile suites'
test process, root) run

    python broker_shim.py USER BROKER_SOCKET VENV_PYTHON ARGS... -f CONNECTION_FILE

which, still root, hands the user what a user's own Jupyter would give them: the kernel's
work dir (the cwd: owned by them, its parents searchable, as the broker requires of a
mount) and a private copy of the connection file (jupyter_client wrote it 0600 for root);
then drops to the user's uid, gid and groups (the broker's group, not docker) and execs
the argv launcher in the same process, so jupyter_client's signals (interrupts) and kills
reach it as they reach a launcher it started itself. The environment is the test
process's (what the suites plant in it must reach the launcher) with the user's HOME, a
/tmp TMPDIR and the broker's socket, and without Jupyter's paths, which are root's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
import tempfile
from pathlib import Path

#: What the launcher must not take from the test process: root's paths (the kernelspec's
#: own JUPYTER_DOCKER_KERNEL_SETTINGS stays).
DROPPED = (
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_PATH",
    "JUPYTER_RUNTIME_DIR",
    "XDG_",
    "IPYTHONDIR",
    "VIRTUAL_ENV",
    "PYTHONPATH",
)


def hand_over(path: Path, uid: int, gid: int) -> None:
    """path becomes the user's (only the dir itself: what root put in it stays root's),
    and every parent under the temp dir gets the search bit for others (pytest's 0700
    basetemp), as the broker mounts only a directory its caller owns and can reach."""
    os.chown(path, uid, gid)
    top = Path(tempfile.gettempdir()).resolve()
    for parent in path.parents:
        if parent == top or top not in parent.parents:
            break
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def private_copy(connection_file: str, home: Path, uid: int, gid: int) -> str:
    """The connection file, copied (same name: the kernel's id is read from it) into a
    0700 dir of the user's under their home (removed with the user)."""
    base = home / ".jdkt-conn"
    base.mkdir(mode=0o700, exist_ok=True)
    os.chown(base, uid, gid)
    own = Path(tempfile.mkdtemp(dir=base))
    os.chown(own, uid, gid)
    copy = own / Path(connection_file).name
    shutil.copyfile(connection_file, copy)
    os.chown(copy, uid, gid)
    copy.chmod(0o600)
    return str(copy)


def main(argv: list[str]) -> None:
    user, socket_path, *launcher = argv
    entry = pwd.getpwnam(user)
    at = launcher.index("-f") + 1
    launcher[at] = private_copy(launcher[at], Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)
    hand_over(Path.cwd(), entry.pw_uid, entry.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
    env.update(
        HOME=entry.pw_dir,
        USER=user,
        LOGNAME=user,
        TMPDIR="/tmp",
        JUPYTER_DOCKER_KERNEL_BROKER=socket_path,
    )
    os.setgroups(os.getgrouplist(user, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.execve(launcher[0], launcher, env)  # noqa: S606 - the launcher's argv, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
