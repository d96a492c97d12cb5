"""The runtime base and one kernel's runtime dir: every file name in them is spelled here.

The runtime base (`runtime_base()`) is a private 0700 dir of the user's, shared by the
launcher, the provisioner, the warm pool, gc, `ps`/`logs` and doctor: they must all agree
on it. Below it each kernel (and each warm container, and each doctor probe) has a dir of
its own; `RunDir` names the files in it, so that no other module spells "rt", "cid" or
"work" (tests/test_rundir.py checks that). The owner marker's rules (`process_start_time`,
`alive`) live here too: gc, the kept logs and `ps` read the markers these dirs hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.errors import LaunchError

log = logging.getLogger("jupyter_docker_kernel.launcher")

#: Name prefix of every container and runtime dir we create.
NAME_PREFIX = "jdk"
#: Runtime dirs of unclaimed pooled containers: pool-<pool key>-<nonce>.
POOL_DIR_PREFIX = "pool-"
#: Name prefix of unclaimed pooled containers; a claim renames them to the kernel's name.
POOL_NAME_PREFIX = f"{NAME_PREFIX}-pool-"
#: The `docker run --env-file` in a kernel's dir (the engine CLI reads it; not mounted).
ENV_FILE = "env"
#: The socket dir (mounted at hardening.RUNTIME_TARGET).
SOCKETS_DIR = "rt"
#: The container id (`docker run --cidfile`, or the pool's starter writes it).
CID_FILE = "cid"
#: The in-container connection file (in the kernel's dir, mounted read-only).
CONNECTION_FILE = "kernel.json"
#: The owner marker "pid start": gc keeps the dir (and its container) while that process
#: lives. The name predates the provisioner; gc of earlier releases reads it too.
OWNER_FILE = "launcher"
#: A warm container's dir: "name\nengine address" of the container waiting in it.
POOL_NOTE = "pool"
#: In the runtime base: each pool key's recent claims and its refills' lock (pool.py);
#: not a kernel's dir, so gc leaves it.
POOL_RATES_DIR = "claims"
#: In a warm container's dir: its refill raised its CPU weight once its kernel was ready.
WEIGHT_NOTE = "weight"
#: The provisioner's relay endpoints (host-only, never mounted).
CLIENT_DIR = "client"
#: The provisioner's links to the pinned kernel sockets (host-only, never mounted).
PIN_DIR = "pinned"
#: The doctor probe's stand-in for a notebook's directory.
WORK_DIR = "work"


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks: with the pid, it names a process uniquely."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # Field 22; the command name (field 2) may hold spaces, so split after ')'.
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(pid_text: str, start: str) -> bool:
    """True while the process with this pid (and, given, this start time) still runs.

    A zombie is dead: a killed, detached process (the resident helper) stays one until
    init reaps it, which some inits (a container's pid 1) never do.
    """
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        state, current = fields[0], fields[19]
    except (OSError, IndexError):
        return False
    return pid > 0 and state not in ("Z", "X") and (not start or current == start)


def write_private(path: str | Path, text: str) -> None:
    """Create a file only we can read (0600, never an existing one or a link), with text."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def runtime_base() -> Path:
    """A private (0700, ours) directory for per-kernel runtime dirs, made on first use.

    Launcher, provisioner, pool, gc, list and doctor all call this and must agree: see
    runtime_base_choice() for how, also when another local user took the usual place.
    """
    return runtime_base_choice()[0]


def runtime_base_choice() -> tuple[Path, str]:
    """The runtime base, and why the usual one is not used ("" when it is).

    The usual one is $XDG_RUNTIME_DIR/jupyter-docker-kernel (a private tmpfs, when set),
    else <tmp>/jupyter-docker-kernel-<uid>. Anyone may create the latter name first (a
    directory they own, a file, a symlink): then we do not refuse service, we fall back to
    one of ours named <tmp>/jdk-<uid>-<time><random>, which nobody else can create in time
    or take from us (/tmp is sticky). Every process picks the oldest
    such dir that is still ours and private, so all of one user's processes agree on it,
    and gc/pool find each other's dirs. doctor reports the fallback and why.
    """
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        usual = Path(xdg) / "jupyter-docker-kernel"
    else:
        usual = Path(tempfile.gettempdir()) / f"jupyter-docker-kernel-{uid}"
    with contextlib.suppress(OSError):  # exists already (ours or not), or cannot be made
        usual.mkdir(mode=0o700)
    problem = not_private(usual, uid)
    if not problem:
        return usual, ""
    why = f"{usual} {problem}"
    if why not in _WARNED:
        _WARNED.add(why)
        log.warning("%s; using a private runtime dir of our own instead", why)
    return fallback_base(uid, why), why


#: Fallback reasons already logged by this process (one warning each, not one per call).
_WARNED: set[str] = set()


def not_private(path: Path, uid: int) -> str:
    """Why path is not a private directory of uid's ("" when it is): a symlink, another
    owner or group/other permissions would let someone else reach our sockets and files."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a file or symlink is in its place)"
    if st.st_uid != uid:
        return f"is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return ""


def fallback_base(uid: int, why: str) -> Path:
    """The oldest private <tmp>/jdk-<uid>-<time><random> of ours, made if there is none.

    Names sort by creation time (ms), so two processes making one at once both end up with
    the older (the other's is removed while still empty); dirs of other owners, and names
    someone made ahead of time, are skipped. Short, as socket paths below it are limited.
    """
    tmp = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{NAME_PREFIX}-{uid}-[0-9a-f]{{14}}$")

    def oldest() -> Path | None:
        with contextlib.suppress(OSError), os.scandir(tmp) as entries:
            names = sorted(e.name for e in entries if pattern.match(e.name))
            return next((tmp / n for n in names if not not_private(tmp / n, uid)), None)
        return None

    found = oldest()
    if found is not None:
        return found
    error: OSError | None = None
    for _ in range(5):  # a name taken ahead of time by someone else: try a new one
        mine = (
            tmp / f"{NAME_PREFIX}-{uid}-{time.time_ns() // 1_000_000:011x}{os.urandom(2).hex()[:3]}"
        )
        try:
            mine.mkdir(mode=0o700)
            break
        except OSError as exc:
            error = exc
    else:
        raise LaunchError(
            f"{why}, and no private directory could be made in {tmp} instead: "
            f"{error.strerror if error else ''}",
            "No kernel was started",
            "Set XDG_RUNTIME_DIR (or TMPDIR) to a private directory of yours.",
        )
    found = oldest() or mine
    if found != mine:
        with contextlib.suppress(OSError):
            mine.rmdir()
    return found


def remove_tree(root: Path | str) -> None:
    """Remove a directory tree the kernel may have shaped, without recursion or following links.

    shutil.rmtree recurses once per level and fails on a tree a kernel nested a thousand
    levels deep; this walks with an explicit stack and never raises.
    """
    stack = [str(root)]
    seen: list[str] = []
    while stack:
        path = stack.pop()
        seen.append(path)
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
        except OSError:
            continue
    for path in reversed(seen):
        with contextlib.suppress(OSError):
            os.rmdir(path)


@dataclass(frozen=True)
class RunDir:
    """One kernel's private dir (or a warm container's, or a probe's): every file name
    below it is spelled here and only here. Pure paths: nothing is made until create()."""

    path: Path

    @classmethod
    def new(cls, base: Path, kernel_id: str, nonce: str = "") -> RunDir:
        """<base>/<kernel id>-<nonce>: an argv launcher's (its container shares the nonce,
        container_name()) or a provisioner's (kept across restarts)."""
        return cls(base / f"{kernel_id}-{nonce or os.urandom(3).hex()}")

    @classmethod
    def warm(cls, base: Path, pool_key: str, nonce: str) -> RunDir:
        """<base>/pool-<pool key>-<nonce>: an unclaimed warm container's."""
        return cls(base / f"{POOL_DIR_PREFIX}{pool_key}-{nonce}")

    @classmethod
    def placeholder(cls, base: str, kernel_id: str, nonce: str) -> RunDir:
        """What `show` prints for a start to come (base may be a placeholder itself)."""
        return cls(Path(base) / f"{kernel_id}-{nonce}")

    @property
    def sockets(self) -> Path:
        """The kernel's socket dir, mounted at hardening.RUNTIME_TARGET."""
        return self.path / SOCKETS_DIR

    @property
    def cid(self) -> Path:
        return self.path / CID_FILE

    @property
    def connection(self) -> Path:
        return self.path / CONNECTION_FILE

    @property
    def env_file(self) -> Path:
        return self.path / ENV_FILE

    @property
    def owner(self) -> Path:
        return self.path / OWNER_FILE

    @property
    def pool_note(self) -> Path:
        return self.path / POOL_NOTE

    @property
    def client(self) -> Path:
        return self.path / CLIENT_DIR

    @property
    def pins(self) -> Path:
        return self.path / PIN_DIR

    @property
    def work(self) -> Path:
        return self.path / WORK_DIR

    def socket(self, index: int) -> Path:
        """The kernel's socket for channel `index` (1..5) in the socket dir."""
        return self.sockets / f"{hardening.SOCKET_PREFIX}-{index}"

    def claim_socket(self) -> Path:
        """A warm container's claim socket (its supervisor listens there)."""
        return self.sockets / hardening.CLAIM_SOCKET

    def container_name(self) -> str:
        """jdk-<dir name>: one nonce names both the dir and the container, so gc finds the
        dir's owner marker from the container's name."""
        return f"{NAME_PREFIX}-{self.path.name}"

    def mark_owner(self, pid: int | None = None) -> None:
        """Write who owns this dir: gc keeps it (and its container) while that process lives."""
        pid = os.getpid() if pid is None else pid
        self.owner.write_text(f"{pid} {process_start_time(pid)}")

    def read_owner(self) -> tuple[str, str] | None:
        """The (pid, start time) of mark_owner, if the dir has a marker."""
        try:
            pid, _, start = self.owner.read_text().partition(" ")
        except OSError:
            return None
        return pid, start.strip()

    def read_cid(self) -> str:
        """The container id written down for this dir, or ""."""
        try:
            return self.cid.read_text().strip()
        except OSError:
            return ""

    def read_pool_note(self) -> tuple[str, str]:
        """(container name, engine address) of a warm dir; OSError if it has none."""
        name, _, address = self.pool_note.read_text().strip().partition("\n")
        return name.strip(), address

    def create(self) -> None:
        """Make the dir and its socket dir, both 0700 (the dir must not exist yet)."""
        self.path.mkdir(mode=0o700)
        self.sockets.mkdir(mode=0o700)

    def remove(self) -> None:
        remove_tree(self.path)


def probe_dir(base: Path) -> RunDir:
    """A fresh doctor probe's dir below base (probe-XXXX), made 0700."""
    return RunDir(Path(tempfile.mkdtemp(prefix="probe-", dir=base)))


def random_nonce(size: int = 3) -> str:
    return secrets.token_hex(size)
