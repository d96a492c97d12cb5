"""Warm pool: containers started ahead of time with the kernel's imports done.

A kernelspec with `--pool N` keeps up to N such containers per user. The launcher claims
one by renaming its host runtime dir to its own (atomic: exactly one launcher wins it, and
no engine call sits on the start path), sends the kernel's connection info over the
container's claim socket, and relays as usual; that connection is then the container's
lifeline. The container itself is renamed to the kernel's name right after. Each pooled
container serves exactly one kernel and is removed with it: never reused, so no notebook
sees another's state. After each start has answered, the launcher tops the pool up. An
unclaimed container ends itself after `pool_ttl` seconds, so a pool never outlives its
users by long; `gc --pools` removes unclaimed ones at once.

Refills must not slow the next start (issue 17): a warm container starts at a low CPU
weight (`--cpu-shares 256`, a quarter of the default), so its kernel's imports yield to a
starting kernel; once that kernel waits for its claim (and so uses no CPU), the refill's
process raises the weight to the spec's, so a claimed kernel never starts low (a claim
racing that raise does it itself, off the start path: Container.adopt).
Each claim also notes its time in the runtime base (claims/<key>): when starts come faster
than a refill takes (nbgrader grading a class), the refill starts at the claim instead of
waiting for the new kernel's first reply. fill() never starts more than `pool` per key.

Only work-dir modes "copy" and "none" can be pooled: a running container cannot gain the
notebook's directory as a mount, so a pooled kernel gets its private copy at /work (a
tmpfs; the claiming launcher streams the files over the claim socket, see workcopy.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import hardening, hostpython
from jupyter_docker_kernel.endpoints import connect_kernel_socket
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.rundir import POOL_DIR_PREFIX as POOL_DIR_PREFIX
from jupyter_docker_kernel.rundir import POOL_NAME_PREFIX as POOL_NAME_PREFIX
from jupyter_docker_kernel.rundir import POOL_RATES_DIR, WEIGHT_NOTE, RunDir, write_private
from jupyter_docker_kernel.settings import KernelSettings

log = logging.getLogger(__name__)

LABEL_POOL = engine_mod.LABEL_POOL
LABEL_POOL_DIR = engine_mod.LABEL_POOL_DIR
#: A warm container this close to the end of its pool time (s) is not claimed.
CLAIM_MARGIN = 10.0
#: Where a pooled kernel finds its copy of the work dir.
WORK_TARGET = "/work"
CLAIM_SOCKET = hardening.CLAIM_SOCKET
#: A warm container's CPU weight while its kernel initialises: a quarter of the default,
#: so it yields 4:1 to a starting kernel. Not the lowest (2): measured back to back on a
#: busy host, busy neighbours at the default starved such refills, the pool ran dry and
#: every third or fourth start was cold (p90 1.3x native, against 0.13x with 256).
WARM_CPU_SHARES = 256
#: The weight a container gets when the spec names none (the engines' own default).
DEFAULT_CPU_SHARES = 1024
#: Claim times kept per pool key: the last two intervals decide (refill_at_claim).
RECENT_CLAIMS = 3
#: How long a refill takes (s) until a claim has measured it: `docker run` and the
#: warm kernel's imports on an idle host.
DEFAULT_READY_SECONDS = 2.0


def pool_key(settings: KernelSettings, uid: int) -> str:
    """Containers are interchangeable only for identical settings and the same user."""
    data = settings.to_dict()
    for name in ("pool", "pool_ttl"):
        data.pop(name, None)
    text = json.dumps({"settings": data, "uid": uid}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Claim:
    """A pooled container now ours: its name and id, the host dir holding its sockets,
    and our connection to its claim socket (the lifeline once the connection info is sent)."""

    container_name: str
    container_id: str
    pool_dir: Path
    lifeline: socket.socket
    #: Starts come faster than a refill takes: refill now, not at the first reply.
    refill_now: bool = False
    #: Its refill raised its CPU weight already (WEIGHT_NOTE): the claimer need not.
    raised: bool = True


def pool_dirs(base: Path, key: str, on: str | None = None) -> list[Path]:
    """The runtime dirs of this key's unclaimed warm containers, oldest first; with `on`
    (a node's address, node_of) only those of that node's warm containers: a spec with
    several nodes keeps a pool on each, and one node's refill must not count (or expire)
    another's."""
    found = []
    for entry in base.glob(f"{POOL_DIR_PREFIX}{key}-*"):
        with contextlib.suppress(OSError):
            if on is None or RunDir(entry).read_pool_note()[1] == on:
                found.append((entry.stat().st_mtime, entry))
    return [entry for _, entry in sorted(found)]


def node_of(engine: Engine) -> str | None:
    """The node a pool's engine is (its ssh:// address), None for this host's engine."""
    address = engine.address()
    return address if address.startswith("ssh://") else None


def claim(
    settings: KernelSettings,
    base: Path,
    new_dir: Path,
    connect: Callable[[Path], socket.socket] | None = None,
) -> Claim | None:
    """Take one ready warm container for these settings by renaming its dir to new_dir.

    rename(2) is atomic: of launchers racing for one dir exactly one wins, with no engine
    call on the start path (the container is renamed later, off it). A container near the
    end of its pool time is passed over: it may end while we hand over. One whose claim
    socket does not answer is gone (removed by gc, or ended): its dir is dropped.
    connect(claimed dir): the claim connection, for a warm container on a node
    (node_backend: its claim socket is there, forwarded over SSH); default: its claim
    socket in the dir.
    """
    key = pool_key(settings, os.getuid())
    oldest = time.time() - max(0.0, settings.pool_ttl - CLAIM_MARGIN)
    for entry in pool_dirs(base, key):
        try:
            if entry.stat().st_mtime < oldest:
                continue
            if not RunDir(entry).claim_socket().exists():
                continue  # its kernel is still initialising: not ready to be claimed
            name = RunDir(entry).read_pool_note()[0]
            os.rename(entry, new_dir)
        except OSError:
            continue  # another launcher won it, or it is being removed
        try:
            if connect is None:
                lifeline = connect_kernel_socket(str(RunDir(new_dir).claim_socket()))
            else:
                lifeline = connect(new_dir)
        except (OSError, DockerKernelError):
            log.debug("warm container %s no longer answers; trying another", name)
            shutil.rmtree(new_dir, ignore_errors=True)
            continue
        refill_now = note_claim(base, key, ready_seconds(new_dir))
        raised = (new_dir / WEIGHT_NOTE).exists()
        return Claim(name, RunDir(new_dir).read_cid(), new_dir, lifeline, refill_now, raised)
    return None


# -- priority: low until claimed ----------------------------------------------------------------


def lowers_priority(settings: KernelSettings, engine: Engine | None = None) -> bool:
    """Whether this spec's warm containers start at WARM_CPU_SHARES. Not under gVisor:
    runsc has no `update`, so the claimed kernel would keep the low weight for good. With
    an engine, only on cgroup v1: on v2, runc before 1.3 maps --cpu-shares 1024 to
    cpu.weight 39, not the default 100, so raising the share back at claim would leave the
    kernel below its neighbours; there the warm container keeps the default weight (a
    WEIGHT_NOTE from the start, so nobody updates it)."""
    if hardening.is_gvisor(settings):
        return False
    return engine is None or engine.cgroup_version() == "1"


def cpu_shares(settings: KernelSettings) -> int:
    """The CPU weight a claimed container gets: the spec's own `--docker-arg --cpu-shares`
    (the last one, as the CLI takes it), else the engines' default."""
    shares = 0
    args = list(settings.docker_args)
    for flag, value in itertools.zip_longest(args, args[1:], fillvalue=""):
        if flag in ("--cpu-shares", "-c"):
            text = value
        elif flag.startswith("--cpu-shares="):
            text = flag.partition("=")[2]
        else:
            continue
        with contextlib.suppress(ValueError):
            shares = int(text)
    return shares if shares > 0 else DEFAULT_CPU_SHARES  # 0: the engine's default


# -- refill ahead of demand: the recent claim rate per pool key -----------------------------


def refill_at_claim(claims: Sequence[float], ready: float) -> bool:
    """Whether to start the refill right at this claim rather than after the new kernel's
    first reply. claims: the recent claim times of this pool key, oldest first, this one
    last; ready: how long a refill takes until its kernel can be claimed (s).

    True when each of the last two starts came sooner after the previous one than a
    refill takes (a class being graded: start, run, stop, next): waiting for the first
    reply would leave the pool empty for the start after. Two, not one: a single quick
    pair is no rate, and after an idle spell the first quick start still waits.
    """
    intervals = [later - earlier for earlier, later in itertools.pairwise(claims)]
    return len(intervals) >= 2 and max(intervals[-2:]) < ready


def ready_seconds(claimed_dir: Path) -> float | None:
    """How long the claimed warm container took from its refill's start (the pool note is
    written before `docker run`) to a claimable kernel (its claim socket appears then);
    None when its files do not say."""
    rundir = RunDir(claimed_dir)
    try:
        took = rundir.claim_socket().stat().st_mtime - rundir.pool_note.stat().st_mtime
    except OSError:
        return None
    return took if 0 < took < 600 else None


def rates_file(base: Path, key: str) -> Path:
    """This pool key's recent claims: {"claims": [times], "ready": seconds}."""
    return base / POOL_RATES_DIR / key


def note_claim(base: Path, key: str, ready: float | None, now: float | None = None) -> bool:
    """Add this claim to the key's rates file; returns refill_at_claim's verdict.

    Called by claim(), on the start path: one small read and one atomic replace (a
    private temp file renamed over it), so a reader never sees half a file. Two
    processes claiming at once may each write over the other's time: the rate then
    misses one claim, which only delays the verdict by one start. A file that cannot be
    read or written is no rate (the gate is kept), never an error of the start.
    """
    now = time.time() if now is None else now
    path = rates_file(base, key)
    claims, known = read_rates(base, key)
    # An average of the refills measured so far: one slow refill (a busy host) does not
    # decide alone.
    if ready is not None:
        known = ready if known is None else (known + ready) / 2
    claims = [*claims, now][-RECENT_CLAIMS:]
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temp = path.with_name(f".{key}.{os.getpid()}.{os.urandom(3).hex()}")
        write_private(temp, json.dumps({"claims": claims, "ready": known}))
        os.replace(temp, path)
    return refill_at_claim(claims, DEFAULT_READY_SECONDS if known is None else known)


def read_rates(base: Path, key: str) -> tuple[list[float], float | None]:
    """The key's recent claim times and measured refill time; ([], None) when unknown."""
    claims: list[float] = []
    known: float | None = None
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        data = json.loads(rates_file(base, key).read_text())
        claims = [float(t) for t in data["claims"]][-RECENT_CLAIMS:]
        known = None if data["ready"] is None else float(data["ready"])
    return claims, known


def hand_over(claimed: Claim, connection: dict[str, object], cwd: str) -> socket.socket:
    """Send the kernel its connection info over the claim socket; returns the lifeline."""
    sock = claimed.lifeline
    sock.setblocking(True)
    sock.sendall(json.dumps({"connection": connection, "cwd": cwd}).encode() + b"\n")
    return sock


def fill(engine: Engine, settings: KernelSettings, base: Path, launch: hardening.Launch) -> int:
    """Start pooled containers until `settings.pool` are waiting; returns how many started.

    Run in fill_in_background's process, after the launcher's own kernel has answered (or
    at its claim, when starts come fast). Refills of one key may run at once (each start
    spawns one): under the key's lock each counts the warm dirs, which exist from before
    `docker run` until a claim renames them, and makes the dirs of the ones it will start.
    Together they keep `pool` ready or starting, never more: the starts in flight are
    the pool's deficit, so each will be claimed or wait in the pool (settle_when_ready
    still removes one that would make more than `pool` ready, should counts race across
    hosts). The slow `docker run`s come after the lock is released.
    """
    from jupyter_docker_kernel import node_backend  # imports this module

    key = pool_key(settings, os.getuid())
    on = node_of(engine)
    with fill_lock(base, key):
        # A node's: its engine's API over its SSH master, and only that node's warm dirs
        # (a spec with several nodes keeps a pool on each).
        api = engine.api() if on is None else node_backend.node_api(engine)
        if api.available():
            # Dirs with no container id yet are being started (reserve() made them, their
            # `docker run` runs); looked at before the engine's list, so one that started
            # in between is in that list.
            starting = {d for d in pool_dirs(base, key, on) if not RunDir(d).cid.exists()}
            names = {
                str((item.get("Names") or ["/"])[0]).lstrip("/")
                for item in api.containers({LABEL_POOL: key})
            }
            expired = remove_expired(base, key, names, on=on)
            if on is not None and expired:  # and their dirs on the node
                node_backend.remove_warm_dirs(engine, [d.name for d in expired])
            # Not a dir whose container has gone (gc --pools keeps young dirs): it would
            # hold a place in the pool until its dir expires.
            live = [d for d in pool_dirs(base, key, on) if d in starting or note_name(d) in names]
        else:
            remove_expired(base, key, None, settings.pool_ttl)
            live = pool_dirs(base, key)
        # The pool's deficit, and no more: each start in flight will be ready for a claim
        # (issue 14). Letting up to another pool's worth start while starts came fast
        # kept fewer starts cold, but every one the burst's end left over was started,
        # initialised and removed as surplus: on a CPU-bound machine grading a class that
        # CPU came out of the grading (20 submissions started 29 containers).
        count = max(0, settings.pool - len(live))
        reserved = [reserve(engine, base, key) for _ in range(count)]
    started: list[tuple[RunDir, str]] = []
    try:
        for index, warm in enumerate(reserved):
            try:
                start_one(engine, settings, base, launch, key, warm=warm)
            except BaseException:
                for rest in reserved[index + 1 :]:
                    shutil.rmtree(rest.path, ignore_errors=True)
                raise
            started.append((warm, warm.read_cid()))
    finally:
        settle_when_ready(engine, settings, base, key, started)
    return len(reserved)


def surplus(engine: Engine, base: Path, key: str, warm: RunDir, size: int) -> bool:
    """Remove this ready warm container if more than `size` of the key are ready (on its
    engine); whether it did. Its dir is first renamed away (as a claim does), so no
    claimer can take it while it goes."""
    on = node_of(engine)
    with fill_lock(base, key):
        ready = [d for d in pool_dirs(base, key, on) if RunDir(d).claim_socket().exists()]
        if len(ready) <= size:
            return False
        gone = base / f".surplus-{warm.path.name}"
        try:
            os.rename(warm.path, gone)
        except OSError:
            return False  # claimed meanwhile
    with contextlib.suppress(DockerKernelError):
        engine.remove(RunDir(gone).read_pool_note()[0])
    if on is not None:
        from jupyter_docker_kernel import node_backend  # imports this module

        node_backend.remove_warm_dirs(engine, [warm.path.name])
    shutil.rmtree(gone, ignore_errors=True)
    log.debug("warm pool: removed surplus warm container %s", warm.path.name)
    return True


#: How long the refill's process waits for its warm kernels to be ready (s).
READY_WAIT = 120.0


def settle_when_ready(
    engine: Engine,
    settings: KernelSettings,
    base: Path,
    key: str,
    started: list[tuple[RunDir, str]],
) -> None:
    """Once each started warm container's kernel is ready (its claim socket is up, or a
    claimer took its dir): remove it if the pool has more than `pool` ready (counts that
    raced: fill() starts only the deficit), else give it the spec's CPU
    weight: waiting for a claim it uses no CPU, and the kernel that claims it must not
    start at a low weight, where a busy neighbour would slow it until the
    claimer's own update landed. Marks the dir (WEIGHT_NOTE) so its claimer skips that
    update. Runs in the refill's process, off every start path; a failure is the
    claimer's to fix, not an error."""
    shares = cpu_shares(settings)
    pending = list(started)
    deadline = time.monotonic() + READY_WAIT
    while pending and time.monotonic() < deadline:
        for warm, container_id in list(pending):
            if warm.path.exists() and not warm.claim_socket().exists():
                continue  # still initialising (or ended: then the deadline ends the wait)
            pending.remove((warm, container_id))
            if warm.path.exists() and surplus(engine, base, key, warm, settings.pool):
                continue
            if (warm.path / WEIGHT_NOTE).exists():
                continue  # never lowered (start_one), or raised already
            try:
                api = engine.api()
                if api.available():
                    api.update(container_id, cpu_shares=shares)
                else:
                    engine.run(["update", f"--cpu-shares={shares}", container_id])
            except DockerKernelError as exc:
                log.debug("warm pool: could not raise the CPU weight of %s: %s", warm, exc)
                continue
            with contextlib.suppress(OSError):  # claimed meanwhile: its claimer checked
                (warm.path / WEIGHT_NOTE).write_text(f"{shares}\n")
        time.sleep(0.05)


def note_name(entry: Path) -> str:
    """The container name in a warm dir's pool note; "" when it is gone (claimed)."""
    try:
        return RunDir(entry).read_pool_note()[0]
    except OSError:
        return ""


@contextlib.contextmanager
def fill_lock(base: Path, key: str) -> Iterator[None]:
    """flock(2) on claims/<key>.lock in the runtime base, for fill()'s count-and-reserve."""
    folder = base / POOL_RATES_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def reserve(engine: Engine, base: Path, key: str) -> RunDir:
    """Make the dir of one warm container to start (counted by pool_dirs from now on):
    its socket dir and its pool note (name, engine address)."""
    nonce = os.urandom(4).hex()
    warm = RunDir.warm(base, key, nonce)
    warm.sockets.mkdir(parents=True, mode=0o700)
    # Which engine holds it too: gc asking another engine must not take the dir for orphaned.
    warm.pool_note.write_text(f"{POOL_NAME_PREFIX}{key[:8]}-{nonce}\n{engine.address()}")
    return warm


#: A warm container's dir younger than this may be one still starting (no container yet).
EXPIRED_GRACE = 60.0


def remove_expired(
    base: Path, key: str, running: set[str] | None, pool_ttl: float = 0.0, on: str | None = None
) -> list[Path]:
    """Remove the dirs of this pool's warm containers that have ended; returns them.

    An unclaimed warm container ends itself after its pool time (the supervisor), but
    its host dir (sockets, work copy) stays: fill() calls this each time it tops the pool
    up, so they do not pile up until someone runs gc. `running` are the names of the
    engine's containers of this pool; None when the engine's API cannot be asked, and
    then a dir older than pool_ttl plus a grace counts as ended. on: only the dirs of
    this node's warm containers (pool_dirs).
    """
    now = time.time()
    removed = []
    for entry in pool_dirs(base, key, on):
        try:
            age = now - entry.stat().st_mtime
            name = RunDir(entry).read_pool_note()[0]
        except OSError:
            continue  # claimed (renamed) or removed while we looked
        if age < EXPIRED_GRACE:
            continue  # its container may not have been created yet
        if (name in running) if running is not None else age < pool_ttl + EXPIRED_GRACE:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        log.debug("warm pool: removed %d ended container dir(s)", len(removed))
    return removed


#: How long a gated refill waits for its gate (the kernel's first reply) at most.
GATE_WAIT = 3.0
#: fill_in_background's process: the payload line, the gate (a line, EOF or {wait} s),
#: only then our imports and fill_from. Builtin modules only before the gate. It runs at
#: nice 10 (and so does its `docker run` CLI): a refill started at a claim must not take
#: the CPU from the kernel being claimed.
GATED_FILL = (
    "import os, select, sys\n"
    "try: os.nice(10)\n"
    "except OSError: pass\n"
    "data = b''\n"
    "while b'\\n' not in data:\n"
    "    chunk = os.read(0, 65536)\n"
    "    if not chunk: break\n"
    "    data += chunk\n"
    "line, _, rest = data.partition(b'\\n')\n"
    "if not rest and select.select([0], [], [], {wait})[0]: os.read(0, 64)\n"
    "from jupyter_docker_kernel.pool import fill_from\n"
    "sys.exit(fill_from(line.decode()))\n"
)


class Gate(Protocol):
    """A refill waiting at its gate (what fill_in_background returns): open() lets it
    start; close() too."""

    def open(self) -> None: ...
    def close(self) -> None: ...


#: Where fill_in_background sends a refill instead of starting a process for it: set by
#: refiller.hold() in a parent whose forked children start kernels (grade's workers
#: inherit it); None: a process per refill.
REFILLS: Callable[[str], Gate] | None = None


class GatedRefill:
    """fill_in_background's process, waiting at its gate: a line on its stdin (open()),
    EOF (close(), or our process's end) or GATE_WAIT seconds let it start."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def open(self) -> None:
        stdin = self.proc.stdin
        with contextlib.suppress(OSError, ValueError):
            if stdin is not None:
                stdin.write(b"go\n")
                stdin.flush()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()


def fill_in_background(
    settings: KernelSettings,
    base: Path,
    launch: hardening.Launch,
    *,
    gated: bool = False,
    env: Mapping[str, str] | None = None,
    node: str = "",
) -> Gate:
    """Run fill() in a process of its own: it must outlive a kernel that is stopped right
    after answering, as nbgrader does with every notebook, and a one-shot client (nbconvert,
    papermill) whose process ends right after. Container.start spawns it gated: it reads
    the payload line, then waits for a line, EOF or GATE_WAIT s before it starts anything,
    so that its `docker run` does not compete with the kernel that is starting.

    The process never imports from our cwd, the notebook's directory (see hostpython), and
    gets the settings on its stdin: in argv, `ps` would show them to every local user.
    env: its environment (None: ours), which its engine CLI calls get: the resident helper
    passes each kernel's client's (refill_env). node: the node (ssh://) whose pool to top
    up, when not settings.engine_host (a spec with several nodes: the one its start used).
    Where REFILLS is set, the refill goes there instead (refiller.py); it runs with the
    environment of the process that set it, whose children we are (a node's DOCKER_HOST,
    the one way env differs there, is the payload's node).
    """
    import threading

    payload = json.dumps(
        {
            "settings": settings.to_dict(),
            "base": str(base),
            "launch": dataclasses.asdict(launch),
            **({"node": node} if node else {}),
        }
    )
    if REFILLS is not None:
        with contextlib.suppress(OSError):  # the refiller is gone: a process, as before
            sent = REFILLS(payload)
            if not gated:
                sent.close()
            return sent
    proc = subprocess.Popen(
        # The gate comes before our imports (about 80 ms of CPU): they too would compete.
        hostpython.code_argv(GATED_FILL.format(wait=GATE_WAIT)),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        env=None if env is None else refill_env(env),
    )
    # Written here, not in a thread: the launcher may exit right after (nbgrader stops each
    # kernel once it answered), and a daemon thread would die with it, payload unsent.
    assert proc.stdin is not None
    refill = GatedRefill(proc)
    try:
        proc.stdin.write(payload.encode() + b"\n")
        proc.stdin.flush()
    except OSError:
        refill.close()
        raise
    if not gated:
        refill.close()
    threading.Thread(target=proc.wait, daemon=True).start()  # no zombie while we run
    return refill


def refill_env(env: Mapping[str, str]) -> dict[str, str]:
    """A refill's environment: `env` for its engine calls, with our PYTHON* variables: it
    runs our interpreter and must import our package (a PYTHONPATH that found it), which
    a client's environment need not hold (thin.client_env does not send them)."""
    ours = {k: v for k, v in os.environ.items() if k.startswith("PYTHON")}
    return {**{k: v for k, v in env.items() if not k.startswith("PYTHON")}, **ours}


def read_payload(fd: int, gate: float) -> str:
    """The payload line on fd; then wait for the gate (a line, EOF or `gate` seconds)."""
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            return data.decode()  # EOF: an ungated caller (or an earlier version's)
        data += chunk
    line, _, rest = data.partition(b"\n")
    if not rest:
        ready, _, _ = select.select([fd], [], [], gate)
        if ready:
            with contextlib.suppress(OSError):
                os.read(fd, 64)
    return line.decode()


def main(argv: list[str]) -> int:
    """`python -m jupyter_docker_kernel.pool -`: the payload is read from stdin ("-"), or
    (earlier versions) is the argument itself; then, with a gate, as fill_in_background's
    process does."""
    return fill_from(read_payload(0, GATE_WAIT) if argv[:1] == ["-"] else argv[0])


def fill_from(payload: str) -> int:
    """fill() for a fill_in_background payload; returns the process's exit code."""
    data = json.loads(payload)
    settings = KernelSettings.from_dict(data["settings"])
    try:
        started = fill(
            Engine(host=data.get("node") or settings.engine_host),
            settings,
            Path(data["base"]),
            hardening.Launch(**data["launch"]),
        )
    except (DockerKernelError, OSError) as exc:
        print(f"jupyter-docker-kernel: could not refill the warm pool: {exc}", file=sys.stderr)
        return 1
    log.debug("warm pool: started %d container(s)", started)
    return 0


def start_one(
    engine: Engine,
    settings: KernelSettings,
    base: Path,
    launch: hardening.Launch,
    key: str,
    *,
    warm: RunDir | None = None,
) -> str:
    """Start one detached pooled container (in `warm`, a dir reserve() made, else a new
    one); returns its name. It runs at WARM_CPU_SHARES until claimed (lowers_priority)."""
    warm = warm or reserve(engine, base, key)
    pool_dir = warm.path
    name = warm.read_pool_note()[0]
    nonce = pool_dir.name.rpartition("-")[2]
    pooled = replace(
        launch,
        kernel_id=f"pool-{nonce}",
        container_name=name,
        runtime_dir=str(warm.sockets),
        connection_file="",
        workdir=WORK_TARGET,  # with --copy-workdir a tmpfs, filled at the claim
        project_root="",  # the claimer streams its project root into WORK_TARGET
        env_file=str(warm.env_file) if settings.env else None,
    )
    if pooled.env_file is not None:
        # 0600 and out of argv, as Container.prepare writes it (see hardening.env_file_text).
        write_private(pooled.env_file, hardening.env_file_text(settings))
    if node_of(engine) is not None:
        from jupyter_docker_kernel import node_backend  # imports this module

        try:
            container_id = node_backend.start_warm(engine, settings, pooled, warm, key)
        except (DockerKernelError, OSError):
            shutil.rmtree(pool_dir, ignore_errors=True)
            raise
        with contextlib.suppress(OSError):
            warm.cid.write_text(container_id)
        return name
    uid, gid = (int(x) for x in hardening.kernel_user(settings, pooled).split(":"))
    if uid != os.getuid():
        os.chown(warm.sockets, uid, gid)  # root starting it for an unprivileged kernel
    args = hardening.run_args(settings, pooled, pool=(key, str(pool_dir)))
    if not lowers_priority(settings, engine):
        # Born at the default weight: its claimer and settle_when_ready leave it alone.
        (warm.path / WEIGHT_NOTE).write_text(f"{cpu_shares(settings)}\n")
    else:
        # Right after "run": a --cpu-shares among the spec's --docker-args, later, wins,
        # and is the weight raise_when_ready sets again (cpu_shares).
        args.insert(1, f"--cpu-shares={WARM_CPU_SHARES}")
    try:
        container_id = engine.run(args, timeout=120).stdout.strip()
    except DockerKernelError:
        shutil.rmtree(pool_dir, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):  # claimed already: the claimer wrote its own
        warm.cid.write_text(container_id)
    return name


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
