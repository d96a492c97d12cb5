"""The warm pool: containers started ahead of time, each serving exactly one kernel."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, engine, hardening, pool
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import KernelSettings
from tests.conftest import install_kernel
from tests.kernels import containers_of, execute, kernel_key, start, stop, wait_until

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
    workdir_copy="/tmp/jupyter-docker-kernel-1000/pool-1234/work",
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
    assert ("--workdir", "/work") in pairs


@pytest.mark.docker
def test_a_pooled_kernel_is_a_fresh_container_that_never_ran_another_notebook(
    kernel_image: str, workdir: Path
) -> None:
    """The second kernel gets a warm container started for it, not the first one's: a new
    container, no state, and the first container is gone."""
    name = "jdk-test-pool"
    install_kernel(name, kernel_image, "--copy-workdir", "--pool", "1", "--pool-ttl", "120")
    try:
        km, kc = start(name, str(workdir))
        try:
            execute(kc, "secret = 'first notebook'")
            (first,) = containers_of(kernel_key(km))
        finally:
            stop(km, kc)
        wait_until(lambda: not containers_of(kernel_key(km)), 10)
        waiting = wait_until(lambda: bool(warm_ready()), 60)
        print(f"warm container ready {waiting:.1f} s after the first kernel stopped")
        log = workdir / "launcher.log"
        with log.open("w") as stderr:
            km2, kc2 = start(name, str(workdir), stderr=stderr)
        try:
            assert "started in warm container" in log.read_text()
            (second,) = containers_of(kernel_key(km2))
            _, out = execute(kc2, "import os; print('secret' in dir(), os.getcwd())")
            assert second != first
            assert "".join(m["content"].get("text", "") for m in out) == "False /work\n"
        finally:
            stop(km2, kc2)
        wait_until(lambda: not containers_of(kernel_key(km2)), 10)
    finally:
        assert cli.main(["gc", "--pools"]) == 0
        wait_until(lambda: not warm_ready(), 10)


def warm_ready() -> list[str]:
    """Names of unclaimed warm containers of ours whose claim socket is up."""
    ready = []
    for item in engine.EngineApi().containers({}):
        name = str(item["Names"][0]).lstrip("/")
        pool_dir = Path((item.get("Labels") or {}).get(engine.LABEL_POOL_DIR, "/nonexistent"))
        if name.startswith(pool.POOL_NAME_PREFIX) and (pool_dir / "rt" / "claim").exists():
            ready.append(name)
    return ready
