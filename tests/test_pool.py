"""The warm pool: containers started ahead of time, each serving exactly one kernel."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from jupyter_client.session import Session

from jupyter_docker_kernel import cli, engine, hardening, kernelspec, launcher, pool
from jupyter_docker_kernel.endpoints import CHANNELS
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import KernelSettings
from tests.conftest import install_kernel
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    running_kernel,
    wait_until,
)

POOLED = KernelSettings(workdir="copy", pool=2)
LAUNCH = hardening.Launch(
    kernel_id="pool-1234",
    container_name="jdk-pool-abcd-1234",
    runtime_dir="/tmp/jupyter-docker-kernel-1000/pool-1234/rt",
    connection_file="",
    supervisor_path="/venv/jupyter_docker_kernel/_supervise.py",
    host_uid=1000,
    host_gid=100,
    workdir=pool.WORK_TARGET,
)


def test_pool_key_is_stable_and_ignores_the_pool_size() -> None:
    """Kernelspecs differing only in pool size or ttl share warm containers."""
    key = pool.pool_key(POOLED, 1000)
    assert key == pool.pool_key(dataclasses.replace(POOLED, pool=5, pool_ttl=60), 1000)


@pytest.mark.parametrize(
    ("settings", "uid"),
    [(dataclasses.replace(POOLED, memory="1g"), 1000), (POOLED, 1001)],
    ids=["other settings", "other user"],
)
def test_pool_key_differs_for_other_settings_or_users(settings: KernelSettings, uid: int) -> None:
    """A container prepared for one user's settings never serves another's."""
    assert pool.pool_key(settings, uid) != pool.pool_key(POOLED, 1000)


@pytest.mark.parametrize(
    "settings",
    [{"pool": 1}, {"pool": 1, "workdir": "copy", "kernel_cmd": ("k", "{connection_file}")}],
    ids=["mounted workdir", "custom kernel command"],
)
def test_pool_is_refused_where_a_container_cannot_be_prepared_ahead(
    settings: dict[str, object],
) -> None:
    """A running container cannot gain the notebook's dir as a mount: --pool needs a copy."""
    with pytest.raises(SettingsError, match="--pool needs --copy-workdir"):
        KernelSettings(**settings)  # type: ignore[arg-type]


def test_pooled_container_is_detached_labelled_and_waits_to_be_claimed() -> None:
    """No attached client and no connection file; the supervisor waits on the claim socket."""
    args = hardening.run_args(POOLED, LAUNCH, pool=("k" * 16, "/tmp/x"))
    opts = args[: args.index(hardening.SUPERVISOR_TARGET) - 2]
    assert "--detach" in opts
    assert "--interactive" not in opts
    assert not any("kernel.json" in a for a in opts)
    pairs = list(itertools.pairwise(args))
    assert ("--label", f"{engine.LABEL_POOL}={'k' * 16}") in pairs
    assert ("--pool-wait", "/run/jupyter-docker-kernel/claim") in pairs
    assert ("--pool-ip", "/run/jupyter-docker-kernel/k") in pairs
    assert ("--workdir", "/work") in pairs


@pytest.fixture
def warm_dirs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Makes pool dirs as start_one leaves them; `ready` adds a listening claim socket, as
    the supervisor binds once its kernel is initialised."""
    servers: list[socket.socket] = []

    def make(key: str, nonce: str, *, ready: bool, age: float = 0.0) -> Path:
        entry = tmp_path / f"{pool.POOL_DIR_PREFIX}{key}-{nonce}"
        (entry / "rt").mkdir(parents=True)
        (entry / "pool").write_text(f"jdk-pool-{nonce}")
        (entry / "cid").write_text(f"id-{nonce}")
        if ready:
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(entry / "rt" / pool.CLAIM_SOCKET))
            server.listen(8)
            servers.append(server)
        stamp = time.time() - age
        os.utime(entry, (stamp, stamp))
        return entry

    yield make
    for server in servers:
        server.close()


def close_claim(claimed: pool.Claim | None) -> tuple[str, str, Path] | None:
    """The claim's identity, its lifeline closed."""
    if claimed is None:
        return None
    claimed.lifeline.close()
    return claimed.container_name, claimed.container_id, claimed.pool_dir


def test_claim_takes_the_oldest_ready_warm_dir_by_renaming_it(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """The claim is a rename of the warm container's dir to the launcher's own: the oldest
    ready one is taken, one whose kernel is still initialising (no claim socket) is not."""
    key = pool.pool_key(POOLED, os.getuid())
    warm_dirs(key, "young", ready=True, age=5)
    warm_dirs(key, "old", ready=True, age=50)
    warm_dirs(key, "oldest-unready", ready=False, age=90)
    claimed = close_claim(pool.claim(POOLED, tmp_path, tmp_path / "mine"))
    assert claimed == ("jdk-pool-old", "id-old", tmp_path / "mine")
    assert (tmp_path / "mine" / "rt" / pool.CLAIM_SOCKET).exists()
    assert not (tmp_path / f"pool-{key}-old").exists()


def test_claim_passes_over_other_settings_and_containers_near_their_end(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """Another key's container, or one within CLAIM_MARGIN of its pool time, is not taken."""
    key = pool.pool_key(POOLED, os.getuid())
    settings = dataclasses.replace(POOLED, pool_ttl=60)
    warm_dirs("0" * 16, "other", ready=True)
    warm_dirs(key, "expiring", ready=True, age=60 - pool.CLAIM_MARGIN + 1)
    assert pool.claim(settings, tmp_path, tmp_path / "mine") is None
    assert not (tmp_path / "mine").exists()


def test_claim_drops_a_warm_dir_whose_container_is_gone(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """A claim socket nobody listens on (its container removed) is skipped and its dir
    removed; the next ready container is claimed instead."""
    key = pool.pool_key(POOLED, os.getuid())
    dead = warm_dirs(key, "dead", ready=False, age=20)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead / "rt" / pool.CLAIM_SOCKET))  # bound, then closed: refuses
    os.utime(dead, (time.time() - 20, time.time() - 20))
    warm_dirs(key, "alive", ready=True, age=10)
    claimed = close_claim(pool.claim(POOLED, tmp_path, tmp_path / "mine"))
    assert claimed == ("jdk-pool-alive", "id-alive", tmp_path / "mine")
    assert not dead.exists()


class ListingEngine:
    """Just enough of Engine for fill(): an API listing these warm containers."""

    def __init__(self, running: list[str]) -> None:
        self.running = running

    def api(self) -> ListingEngine:
        return self

    def address(self) -> str:
        return ""  # this host's engine (pool.node_of)

    def available(self) -> bool:
        return True

    def containers(self, labels: object) -> list[dict[str, object]]:
        return [{"Names": [f"/{name}"]} for name in self.running]


def test_filling_the_pool_removes_the_dirs_of_warm_containers_that_ended(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """A warm container that reached its pool time ends itself; its host dir used to stay
    for good. fill() (after each start) removes the dirs whose container is gone: not a
    running one's, not one too young to have its container yet, not another pool's."""
    key = pool.pool_key(POOLED, os.getuid())
    ended = warm_dirs(key, "ended", ready=True, age=pool.EXPIRED_GRACE + 5)
    alive = warm_dirs(key, "alive", ready=True, age=pool.EXPIRED_GRACE + 5)
    young = warm_dirs(key, "young", ready=False, age=1)
    other = warm_dirs("0" * 16, "other", ready=False, age=pool.EXPIRED_GRACE + 5)
    fake = ListingEngine(["jdk-pool-alive"])  # "young" has no container yet
    settings = dataclasses.replace(POOLED, pool=0)  # nothing to start: only the sweep
    assert pool.fill(fake, settings, tmp_path, LAUNCH) == 0  # type: ignore[arg-type]
    assert not ended.exists()
    assert [d.exists() for d in (alive, young, other)] == [True, True, True]


def test_without_the_engine_api_an_ended_warm_dir_is_told_by_its_age(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """No API to ask (the CLI fallback): a dir older than the pool time plus a grace is
    that of a container that has ended; a younger one stays."""
    key = pool.pool_key(POOLED, os.getuid())
    ended = warm_dirs(key, "ended", ready=True, age=POOLED.pool_ttl + pool.EXPIRED_GRACE + 5)
    waiting = warm_dirs(key, "waiting", ready=True, age=POOLED.pool_ttl - 5)
    assert pool.remove_expired(tmp_path, key, None, POOLED.pool_ttl) == [ended]
    assert waiting.exists()


def test_racing_claims_each_get_a_different_warm_container(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """Launchers claiming at once never share a container: each rename wins at most one."""
    key = pool.pool_key(POOLED, os.getuid())
    for index in range(3):
        warm_dirs(key, f"w{index}", ready=True, age=index)
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        claims = list(
            executor.map(
                lambda i: close_claim(pool.claim(POOLED, tmp_path, tmp_path / f"l{i}")), range(8)
            )
        )
    won = [c[0] for c in claims if c is not None]
    assert sorted(won) == ["jdk-pool-w0", "jdk-pool-w1", "jdk-pool-w2"]


# -- refills that do not slow the next start (issue 17) -----------------------------------------


class _CgroupEngine(engine.Engine):
    """An engine whose cgroup version is given, not asked for."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.version = version

    def cgroup_version(self) -> str:
        return self.version


def test_a_warm_container_keeps_the_default_weight_unless_the_engine_is_on_cgroup_v1() -> None:
    """On cgroup v2 runc before 1.3 turns --cpu-shares 1024 into cpu.weight 39, not the
    default 100: raising the share back at claim would leave the kernel below its
    neighbours for good, so the low weight is used only where it can be undone exactly."""
    assert pool.lowers_priority(POOLED, _CgroupEngine("1"))
    assert not pool.lowers_priority(POOLED, _CgroupEngine("2"))
    assert not pool.lowers_priority(POOLED, _CgroupEngine(""))  # the engine did not say
    assert not pool.lowers_priority(
        dataclasses.replace(POOLED, runtime="runsc"), _CgroupEngine("1")
    )


def test_a_warm_container_starts_at_a_low_cpu_weight_and_the_claim_restores_the_specs() -> None:
    """--cpu-shares 256 until ready; the claim's weight is the spec's --docker-arg, else
    the engines' default. Not under gVisor, whose runsc cannot update it later."""
    assert pool.lowers_priority(POOLED)
    assert not pool.lowers_priority(dataclasses.replace(POOLED, runtime="runsc"))
    assert pool.cpu_shares(POOLED) == pool.DEFAULT_CPU_SHARES == 1024
    for args, shares in [
        (("--cpu-shares", "512"), 512),
        (("--cpu-shares=300",), 300),
        (("-c", "100", "--cpu-shares=200"), 200),  # the last one, as the CLI takes it
        (("--cpu-shares", "0"), 1024),  # 0: the engine's default
        (("--cpus", "2"), 1024),
    ]:
        assert pool.cpu_shares(dataclasses.replace(POOLED, docker_args=args)) == shares


@pytest.mark.parametrize(
    ("claims", "ready", "now"),
    [
        ([], 2.0, False),
        ([10.0], 2.0, False),
        ([10.0, 10.5], 2.0, False),  # one quick pair is no rate yet
        ([10.0, 10.5, 11.0], 2.0, True),  # nbgrader: start, reply, stop, next
        ([10.0, 10.5, 11.0], 0.4, False),  # a refill is ready before the next start
        ([10.0, 10.5, 3600.0], 2.0, False),  # the first start after an idle spell
        ([0.0, 3000.0, 3000.5], 2.0, False),  # the second: still no rate
        ([0.0, 1.0, 1.5, 2.0], 2.0, True),  # only the last two intervals count
        ([0.0, 1.0, 4.0, 4.5], 2.0, False),
    ],
)
def test_the_refill_starts_at_the_claim_only_when_starts_come_faster_than_a_refill(
    claims: list[float], ready: float, now: bool
) -> None:
    assert pool.refill_at_claim(claims, ready) is now


def test_claims_note_their_rate_and_refill_time_in_the_runtime_base(tmp_path: Path) -> None:
    """note_claim keeps the last RECENT_CLAIMS times and an average of measured refill
    times in a private file; with none measured, DEFAULT_READY_SECONDS decides."""
    key = "k" * 16
    verdicts = [pool.note_claim(tmp_path, key, None, now=100.0 + 0.5 * i) for i in range(4)]
    assert verdicts == [False, False, True, True]
    path = pool.rates_file(tmp_path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"claims": [100.5, 101.0, 101.5], "ready": None}
    # Refills measured at 0.3 s and 0.1 s: ready before the next start, so the gate holds.
    assert not pool.note_claim(tmp_path, key, 0.3, now=102.0)
    assert not pool.note_claim(tmp_path, key, 0.1, now=102.5)
    assert json.loads(path.read_text())["ready"] == pytest.approx(0.2)
    assert [p.name for p in path.parent.iterdir()] == [key]  # no temp file left behind
    path.write_text("{not json")
    assert not pool.note_claim(tmp_path, key, None, now=103.0)  # a bad file: no rate


def test_racing_claims_never_leave_a_torn_rates_file(tmp_path: Path) -> None:
    """Claims noting at once from many threads (processes alike: one rename each): every
    read sees a whole file, and none of them fails the claim."""
    key = "r" * 16
    with concurrent.futures.ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda _: pool.note_claim(tmp_path, key, 1.0), range(200)))
    data = json.loads(pool.rates_file(tmp_path, key).read_text())
    assert len(data["claims"]) == pool.RECENT_CLAIMS
    assert data["ready"] == 1.0


def test_a_claim_measures_its_refill_and_says_when_to_refill_at_once(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """claim() notes each claim: after two quick starts the third says refill_now, and the
    time its container took to be ready (pool note to claim socket) is recorded."""
    key = pool.pool_key(POOLED, os.getuid())
    for index in range(3):
        entry = warm_dirs(key, f"w{index}", ready=True, age=index)
        stamp = time.time() - 1.5  # the refill began 1.5 s before its claim socket
        os.utime(entry / "pool", (stamp, stamp))
    got = []
    for index in range(3):
        claimed = pool.claim(POOLED, tmp_path, tmp_path / f"mine{index}")
        assert claimed is not None
        claimed.lifeline.close()
        got.append(claimed.refill_now)
    assert got == [False, False, True]
    ready = json.loads(pool.rates_file(tmp_path, key).read_text())["ready"]
    assert ready == pytest.approx(1.5, abs=0.2)


class StartingEngine(ListingEngine):
    """fill()'s engine with a slow `docker run` that counts the containers started."""

    def __init__(self) -> None:
        super().__init__([])
        self.args: list[list[str]] = []
        self.updates: list[tuple[str, int]] = []

    def address(self) -> str:
        return "unix:///fake.sock"

    def cgroup_version(self) -> str:
        return "1"

    def run(self, args: list[str], timeout: float = 0) -> object:
        self.args.append(args)
        time.sleep(0.2)
        self.running.append(args[args.index("--name") + 1])
        # Its kernel is ready at once: the claim socket's place, in its dir (a label).
        label = next(a for a in args if a.startswith(f"{engine.LABEL_POOL_DIR}="))
        Path(label.partition("=")[2], "rt", pool.CLAIM_SOCKET).touch()
        return dataclasses.make_dataclass("Done", ["stdout"])(f"id{len(self.args)}\n")

    def update(self, container: str, *, cpu_shares: int) -> None:
        self.updates.append((container, cpu_shares))


def test_refills_running_at_once_never_start_more_than_the_pool_size(tmp_path: Path) -> None:
    """With refills at each claim several run at once: each counts and reserves dirs under
    the key's lock, so four of them start two containers for a pool of two, each at the
    low CPU weight."""
    fake = StartingEngine()
    with concurrent.futures.ThreadPoolExecutor(4) as executor:
        started = list(
            executor.map(
                lambda _: pool.fill(fake, POOLED, tmp_path, LAUNCH),  # type: ignore[arg-type]
                range(4),
            )
        )
    assert sum(started) == 2
    assert len(pool.pool_dirs(tmp_path, pool.pool_key(POOLED, os.getuid()))) == 2
    assert all(args[:2] == ["run", "--cpu-shares=256"] for args in fake.args)
    # Once ready, each gets the normal weight from its refill, and its dir says so.
    assert sorted(fake.updates) == [("id1", 1024), ("id2", 1024)]
    for entry in pool.pool_dirs(tmp_path, pool.pool_key(POOLED, os.getuid())):
        assert (entry / "weight").read_text() == "1024\n"
    assert pool.fill(fake, POOLED, tmp_path, LAUNCH) == 0  # type: ignore[arg-type]


def test_while_starts_come_fast_the_refills_in_flight_are_only_the_pools_deficit(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """Issue 14: one warm container ready and one still starting fill a pool of two, even
    when the claims file says starts come faster than a refill takes: a start beyond the
    deficit would be left over when the burst ends (removed as surplus, its CPU lost).
    Once one is claimed, exactly one starts."""
    key = pool.pool_key(POOLED, os.getuid())
    warm_dirs(key, "a", ready=True, age=1)
    (warm_dirs(key, "b", ready=False, age=1) / "cid").unlink()  # being started
    now = time.time()
    pool.rates_file(tmp_path, key).parent.mkdir(mode=0o700)
    pool.rates_file(tmp_path, key).write_text(
        json.dumps({"claims": [now - 1.0, now - 0.5, now], "ready": 30.0})
    )
    fake = StartingEngine()
    fake.running.append("jdk-pool-a")
    assert pool.fill(fake, POOLED, tmp_path, LAUNCH) == 0  # type: ignore[arg-type]
    assert close_claim(pool.claim(POOLED, tmp_path, tmp_path / "claimed"))
    assert pool.fill(fake, POOLED, tmp_path, LAUNCH) == 1  # type: ignore[arg-type]
    assert pool.fill(fake, POOLED, tmp_path, LAUNCH) == 0  # type: ignore[arg-type]


def test_a_ready_warm_container_beyond_the_pool_size_removes_itself(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """When the fast starts stop, the extra ones fill() let start would make more than
    `pool` ready: each, once ready, is removed (its dir renamed away first, so no claim
    can take it meanwhile)."""
    key = pool.pool_key(POOLED, os.getuid())
    dirs = [warm_dirs(key, name, ready=True, age=1) for name in ("a", "b", "c")]
    fake = StartingEngine()
    removed: list[str] = []
    fake.remove = removed.append  # type: ignore[attr-defined]
    assert pool.surplus(fake, tmp_path, key, RunDir(dirs[2]), 2)  # type: ignore[arg-type]
    assert removed == ["jdk-pool-c"]
    assert [d.exists() for d in dirs] == [True, True, False]
    assert not pool.surplus(fake, tmp_path, key, RunDir(dirs[1]), 2)  # type: ignore[arg-type]


def test_a_warm_dir_whose_container_is_gone_holds_no_place_in_the_pool(
    tmp_path: Path, warm_dirs: Callable[..., Path]
) -> None:
    """gc --pools removes the containers but keeps young dirs: such a dir (its container
    id written, its container not listed) must not count as waiting, or the pool stays
    short until the dir expires. One being started (no id yet) counts."""
    key = pool.pool_key(POOLED, os.getuid())
    warm_dirs(key, "gone", ready=True, age=1)
    starting = warm_dirs(key, "starting", ready=False, age=1)
    (starting / "cid").unlink()
    fake = StartingEngine()
    assert pool.fill(fake, POOLED, tmp_path, LAUNCH) == 1  # type: ignore[arg-type]


@pytest.mark.docker
def test_a_pooled_kernel_is_a_fresh_container_that_never_ran_another_notebook(
    kernel_image: str, workdir: Path
) -> None:
    """The second kernel gets a warm container started for it, not the first one's: a new
    container, no state, and the first container is gone."""
    name = "jdk-test-pool"
    spec = install_kernel(name, kernel_image, "--copy-workdir", "--pool", "1", "--pool-ttl", "120")
    key = key_of(spec)
    try:
        with running_kernel(name, str(workdir)) as (km, kc):
            execute(kc, "secret = 'first notebook'")
            (first,) = containers_of(kernel_key(km))
        wait_until(lambda: not containers_of(kernel_key(km)), 10)
        waiting = wait_until(lambda: bool(warm_ready(key)), 60)
        print(f"warm container ready {waiting:.1f} s after the first kernel stopped")
        log = workdir / "launcher.log"
        with running_kernel(name, workdir, log=log) as (km2, kc2):
            assert "started in warm container" in log.read_text()
            (second,) = containers_of(kernel_key(km2))
            _, out = execute(kc2, "import os; print('secret' in dir(), os.getcwd())")
            assert second != first
            assert "".join(m["content"].get("text", "") for m in out) == "False /work\n"
    finally:
        assert cli.main(["gc", "--pools"]) == 0
        wait_until(lambda: not warm_ready(), 10)


@pytest.mark.docker
def test_a_warm_kernel_is_initialised_before_it_is_claimed(
    kernel_image: str, workdir: Path
) -> None:
    """What a claim leaves to do is hand over the key: the waiting kernel has already bound
    its five sockets (and built its shell) under a placeholder key."""
    name = "jdk-test-pool-init"
    spec = install_kernel(name, kernel_image, "--no-workdir", "--pool", "1", "--pool-ttl", "120")
    key = key_of(spec)
    try:
        with running_kernel(name, workdir):
            pass  # its stop starts the refill
        wait_until(lambda: bool(warm_ready(key)), 60)
        (warm,) = [
            item
            for item in engine.EngineApi().containers({})
            if item["Names"][0].lstrip("/") in warm_ready(key)
        ]
        rt = Path(warm["Labels"][engine.LABEL_POOL_DIR]) / "rt"
        sockets = sorted(p.name for p in rt.iterdir() if p.is_socket())
        assert sockets == ["claim", "k-1", "k-2", "k-3", "k-4", "k-5"]
    finally:
        assert cli.main(["gc", "--pools"]) == 0
        wait_until(lambda: not warm_ready(), 10)


def key_of(spec: Path) -> str:
    """The pool key of an installed kernelspec's settings (for this uid)."""
    data = json.loads((spec / "kernel.json").read_text())
    return pool.pool_key(kernelspec.settings_from_kernel_json(data), os.getuid())


def warm_ready(key: str | None = None) -> list[str]:
    """Names of unclaimed warm containers of ours whose claim socket is up; of one pool key
    only when given (other test sessions on the machine may have warm containers too)."""
    ready = []
    for item in engine.EngineApi().containers({engine.LABEL_POOL: key} if key else {}):
        name = str(item["Names"][0]).lstrip("/")
        pool_dir = Path((item.get("Labels") or {}).get(engine.LABEL_POOL_DIR, "/nonexistent"))
        if name.startswith(pool.POOL_NAME_PREFIX) and (pool_dir / "rt" / "claim").exists():
            ready.append(name)
    return ready


def start_warm(settings: KernelSettings) -> str:
    """One real warm container for these settings, started as a launcher's refill would."""
    import socket as socket_mod

    from jupyter_docker_kernel import manage

    launch = dataclasses.replace(
        manage.placeholder_launch(settings),
        launcher_pid=os.getpid(),
        launcher_start=launcher.process_start_time(os.getpid()),
        hostname=socket_mod.gethostname(),
    )
    key = pool.pool_key(settings, os.getuid())
    return pool.start_one(engine.Engine(), settings, launcher.runtime_base(), launch, key)


def names_running(*names: str) -> list[str]:
    listed = {str(item.get("Names")) for item in engine.Engine().list_containers({})}
    return [name for name in names if name in listed]


@pytest.mark.docker
def test_remove_counts_the_specs_warm_containers_and_gc_pools_name_removes_only_those(
    data_dir: Path, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """remove says how many warm containers of the spec still run and the gc line that
    removes them; gc --pools NAME (or that key) removes that spec's, not another's."""
    from tests.test_manage import write_spec

    doomed = KernelSettings(image=kernel_image, workdir="none", pool=1, pool_ttl=120)
    kept = dataclasses.replace(doomed, env=(("OTHER", "1"),))
    write_spec("jdk-test-pool-doomed", doomed)
    write_spec("jdk-test-pool-kept", kept)
    warm_doomed, warm_kept = start_warm(doomed), start_warm(kept)
    try:
        assert cli.main(["remove", "jdk-test-pool-doomed", "-y"]) == 0
        key = pool.pool_key(doomed, os.getuid())
        out = capsys.readouterr().out
        assert "1 warm container(s) of it still run, until their pool time (120 s)" in out
        assert f"jupyter-docker-kernel gc --pools {key}" in out
        assert cli.main(["gc", "--pools", key]) == 0
        assert f"Removed container {warm_doomed}" in capsys.readouterr().out
        assert names_running(warm_doomed, warm_kept) == [warm_kept]
        assert cli.main(["gc", "--pools", "jdk-test-pool-kept"]) == 0
        assert f"Removed container {warm_kept}" in capsys.readouterr().out
        assert names_running(warm_kept) == []
    finally:
        for name in (warm_doomed, warm_kept):
            engine.Engine().remove(name)


@pytest.mark.docker
def test_a_warm_kernel_signs_nothing_with_its_placeholder_key(kernel_image: str) -> None:
    """ipykernel 7 greets each new iopub subscriber (iopub_welcome) from its IOPub thread,
    which a warm kernel runs before the claim brings the key. A client that subscribed
    before the kernel took the key (a claim whose work-dir copy was still streaming, or a
    busy machine) got the greeting signed with the placeholder key: "Invalid Signature",
    which jupyter_client's wait_for_ready raises. The greeting must wait for the key.

    Made certain here: we subscribe to the claimed kernel's iopub before handing it the key.
    """
    nonce = os.urandom(4).hex()
    settings = KernelSettings(image=kernel_image, workdir="none", pool=1, env=(("T", nonce),))
    key = pool.pool_key(settings, os.getuid())
    base = launcher.runtime_base()
    name = start_warm(settings)
    claimed_dir = RunDir.new(base, f"jdk-test-welcome-{nonce}").path
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        wait_until(lambda: bool(warm_ready(key)), 60)
        claimed = pool.claim(settings, base, claimed_dir)
        assert claimed is not None
        assert claimed.container_name == name
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"ipc://{RunDir(claimed_dir).sockets}/{hardening.SOCKET_PREFIX}-2")
        greeted_early = sub.poll(3000)  # a kernel that greets now signs with the placeholder
        session = Session(key=os.urandom(16).hex().encode())
        connection: dict[str, object] = {
            "transport": "ipc",
            "ip": f"{hardening.RUNTIME_TARGET}/{hardening.SOCKET_PREFIX}",
            "key": session.key.decode(),
            "signature_scheme": "hmac-sha256",
        }
        for index, channel in enumerate(CHANNELS, start=1):
            connection[f"{channel}_port"] = index
        pool.hand_over(claimed, connection, "/")
        assert sub.poll(20_000), "no iopub_welcome once the key was handed over"
        _, frames = session.feed_identities(sub.recv_multipart())
        message = session.deserialize(frames)  # ValueError: Invalid Signature
        assert message["msg_type"] == "iopub_welcome"
        assert not greeted_early
        claimed.lifeline.close()
    finally:
        sub.close()
        context.term()
        engine.Engine().remove(name)
        shutil.rmtree(claimed_dir, ignore_errors=True)
        for entry in pool.pool_dirs(base, key):
            shutil.rmtree(entry, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.parametrize("path", ["argv", "provisioner"])
def test_a_warm_container_yields_the_cpu_until_claimed_and_not_after(
    kernel_image: str, workdir: Path, path: str
) -> None:
    """Issue 17: a refill's kernel imports must not slow the next start. A warm container
    initialises at a low CPU weight (its cgroup says so); once ready its refill gives
    it the normal weight, so the kernel that claims it never runs low (both
    adapters)."""
    from tests.test_engine_api import cpu_weight, cpu_weight_of

    name = f"jdk-test-pool-cpu-{path}"
    spec = install_kernel(
        name,
        kernel_image,
        *("--no-workdir", "--pool", "1", "--pool-ttl", "120"),
        *("--env", f"JDK_TEST_POOL=cpu-{path}"),  # a pool key of this test's own
        *(["--provisioner"] if path == "provisioner" else []),
    )
    key = key_of(spec)
    api = engine.EngineApi()
    assert cli.main(["gc", "--pools", name]) == 0  # an interrupted run's
    normal = cpu_weight_of(pool.DEFAULT_CPU_SHARES)
    try:
        with running_kernel(name, str(workdir)):
            pass
        wait_until(lambda: len(warm_ready(key)) == 1, 90)
        info = api.inspect(warm_ready(key)[0]) or {}
        pid = int(info["State"]["Pid"])
        # Ready, it waits for a claim and uses no CPU: its refill gave it the normal weight.
        wait_until(lambda: cpu_weight(pid) == normal, 10)
        with running_kernel(name, str(workdir)):
            assert cpu_weight(pid) == normal
            claimed = api.inspect(str(info["Id"])) or {}
            assert claimed["State"]["Pid"] == pid  # the same container, now a kernel's
            assert claimed["HostConfig"]["CpuShares"] == pool.DEFAULT_CPU_SHARES
            # The refill our claim set off (at the first reply): while its kernel
            # initialises (no claim socket yet), its container runs at the low weight.
            weights = []
            deadline = time.monotonic() + 90
            while not warm_ready(key) and time.monotonic() < deadline:
                for item in api.containers({engine.LABEL_POOL: key}):
                    if item["Id"] != info["Id"]:
                        with contextlib.suppress(KeyError, TypeError, OSError, ValueError):
                            state = (api.inspect(item["Id"]) or {})["State"]
                            weights.append(cpu_weight(int(state["Pid"])))
                time.sleep(0.02)
            assert cpu_weight_of(pool.WARM_CPU_SHARES) in weights
    finally:
        remove_pool(name, key)


def remove_pool(name: str, key: str) -> None:
    """Remove this spec's warm containers once its last refill is done (one still running
    would leave a container behind for the next run to claim)."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: bool(warm_ready(key)), 60)
    assert cli.main(["gc", "--pools", name]) == 0
    wait_until(lambda: not warm_ready(key), 30)


@pytest.mark.docker
def test_frequent_claims_start_the_refill_at_the_claim(kernel_image: str, workdir: Path) -> None:
    """When the claims file says starts come faster than a refill takes, the refill starts
    at the claim: a kernel whose client never asks anything (no first reply, so the gate
    would hold GATE_WAIT s and more) has its replacement's dir within a second or two."""
    from jupyter_client.manager import KernelManager

    from jupyter_docker_kernel.rundir import runtime_base

    name = "jdk-test-pool-rate"
    spec = install_kernel(
        name,
        kernel_image,
        *("--no-workdir", "--pool", "1", "--pool-ttl", "120", "--env", "JDK_TEST_POOL=rate"),
    )
    key = key_of(spec)
    base = runtime_base()
    assert cli.main(["gc", "--pools", name]) == 0  # an interrupted run's
    try:
        with running_kernel(name, str(workdir)):
            pass
        wait_until(lambda: len(warm_ready(key)) == 1, 90)
        before = set(pool.pool_dirs(base, key))
        now = time.time()
        pool.rates_file(base, key).write_text(
            json.dumps({"claims": [now - 1.0, now - 0.5], "ready": 30.0})
        )
        km = KernelManager(kernel_name=name)
        km.start_kernel(cwd=str(workdir))
        try:
            took = wait_until(lambda: bool(set(pool.pool_dirs(base, key)) - before), 10)
            assert not before & set(pool.pool_dirs(base, key)), "the warm one was not claimed"
            assert took < pool.GATE_WAIT - 0.5, f"the refill began {took:.1f} s after the start"
        finally:
            km.shutdown_kernel(now=True)
            km.cleanup_resources()
    finally:
        remove_pool(name, key)


#: Kernels started back to back in the burst test (each from a warm container or cold).
BURST = 6


@contextlib.contextmanager
def pool_events(key: str) -> Iterator[list[str]]:
    """The engine's start and rename events of this pool key's containers while the block
    runs ("start NAME", "rename NAME"; a claim renames its warm container to the kernel's
    name), from a live subscription: the engine replays only its last 256 events, which
    other sessions on a shared engine fill fast."""
    import threading

    seen: list[str] = []
    stream = engine.EngineApi().events(
        {
            "type": ["container"],
            "event": ["start", "rename"],
            "label": [f"{engine.LABEL_POOL}={key}"],
        }
    )

    def collect() -> None:
        with contextlib.suppress(OSError, TimeoutError):
            for event in stream:
                actor = event.get("Actor") or {}
                seen.append(f"{event.get('Action')} {(actor.get('Attributes') or {}).get('name')}")

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        time.sleep(1)  # the last events in flight
        stream.close()
        thread.join(timeout=10)


@pytest.mark.docker
def test_back_to_back_claims_start_no_warm_container_that_no_claim_uses(
    kernel_image: str, workdir: Path
) -> None:
    """Issue 14: nbgrader's pattern (start, answer, stop, next) from a full pool of two,
    with the claims file saying starts come faster than a refill takes: every warm
    container the burst starts is claimed, or is one of the two waiting at the end; none
    is started only to be removed as surplus (its kernel's imports are CPU a CPU-bound
    grading run loses). With the pool full before and after, the engine's starts of
    the pool's containers equal its renames (claims)."""
    from jupyter_docker_kernel.rundir import runtime_base

    name = "jdk-test-pool-burst"
    spec = install_kernel(
        name,
        kernel_image,
        *("--no-workdir", "--provisioner", "--pool", "2", "--pool-ttl", "300"),
        *("--env", "JDK_TEST_POOL=burst"),  # a pool key of this test's own
    )
    key = key_of(spec)
    base = runtime_base()
    assert cli.main(["gc", "--pools", name]) == 0  # an interrupted run's

    def settled() -> bool:
        # Two ready, none starting, no other container of the key (a surplus one going).
        dirs = pool.pool_dirs(base, key)
        listed = engine.EngineApi().containers({engine.LABEL_POOL: key})
        return len(dirs) == 2 and len(warm_ready(key)) == 2 and len(listed) == 2

    try:
        with running_kernel(name, str(workdir)):
            pass
        wait_until(settled, 120, interval=0.5)
        now = time.time()
        pool.rates_file(base, key).write_text(
            json.dumps({"claims": [now - 1.0, now - 0.5], "ready": 30.0})
        )
        with pool_events(key) as events:
            for _ in range(BURST):
                with running_kernel(name, str(workdir)):
                    pass
            wait_until(settled, 180, interval=0.5)
            time.sleep(pool.READY_WAIT / 60)  # a refill still deciding would start one now
            assert settled()
        starts = [e for e in events if e.startswith("start ")]
        claims = [e for e in events if e.startswith("rename ")]
        assert claims, "no kernel was started from the pool"
        assert len(starts) == len(claims), events
    finally:
        remove_pool(name, key)


def test_a_claim_raises_the_weight_only_when_its_refill_did_not(tmp_path: Path) -> None:
    """Container.adopt: a warm container claimed before its refill raised its weight (no
    WEIGHT_NOTE) gets the spec's weight from the claimer, off the start path; one raised
    already costs the claim no engine call."""
    from jupyter_docker_kernel.container import Container
    from tests.test_container import FakeBackend

    connection = tmp_path / "kernel-abc.json"
    connection.write_text(json.dumps({"key": "k", "kernel_name": "x"}))
    settings = dataclasses.replace(POOLED, workdir="none")
    for raised in (False, True):
        backend = FakeBackend()
        made = Container(
            settings, str(connection), backend, base=tmp_path / f"d{raised}", workdir=str(tmp_path)
        )
        made.rundir.path.mkdir()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            made.adopt(pool.Claim("jdk-pool-x", "cid1", made.base, ours, raised=raised))
            time.sleep(0.3)
        assert backend.calls == ([] if raised else [("update", "cid1", "1024")])


#: An engine CLI that only notes how it was called (and with which DOCKER_HOST), and fails.
FAKE_ENGINE = '#!/bin/sh\necho "$DOCKER_HOST $*" >> "$JDK_TEST_ENGINE_LOG"\nexit 1\n'


def test_a_refill_calls_the_engine_with_its_backends_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resident helper's refills: a kernel's Engine carries its client's environment
    (its PATH finds its engine CLI), and the refill process gets it, not ours. Ours points
    at no engine, so a refill that used it would reach nothing."""
    from jupyter_docker_kernel import manage
    from jupyter_docker_kernel.local_backend import CliBackend

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/ours.sock")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_ENGINE)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "engine.log"
    client = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "DOCKER_HOST": "unix:///nonexistent/the-clients.sock",
        "JDK_TEST_ENGINE_LOG": str(log),
    }
    settings = KernelSettings(image="jdk-test-none/none:1", workdir="none", pool=1)
    base = tmp_path / "rt"
    base.mkdir(mode=0o700)
    refill = CliBackend(engine.Engine(environ=client)).fill(
        settings, base, manage.placeholder_launch(settings)
    )
    assert isinstance(refill, pool.GatedRefill)
    refill.open()
    assert refill.proc.wait(timeout=60) == 1  # the fake engine refused it
    calls = log.read_text().splitlines() if log.exists() else []
    assert any(call.startswith("unix:///nonexistent/the-clients.sock run ") for call in calls)
