"""engine.EngineApi against a real engine (Docker 20.10, and Podman 4.3's compat API), and
engine.create_args (pure). Every container here is labelled and removed at teardown."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.engine import (
    Engine,
    EngineApi,
    NoSuchContainerError,
    create_args,
    podman_socket,
    transport_for,
)
from jupyter_docker_kernel.errors import EngineError, ImageError
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings
from tests.conftest import not_here
from tests.test_hardening import LAUNCH

# -- pure: run_args -> create args ----------------------------------------------------------


def test_create_args_drop_only_the_run_only_options_run_args_puts_first() -> None:
    """`run --rm --interactive --sig-proxy=false --init ...` becomes `create --rm --init ...`
    with everything after verbatim: the user's --docker-arg values too, even -i."""
    settings = KernelSettings(docker_args=("-i", "--label=x=1"))
    run = hardening.run_args(settings, LAUNCH)
    assert run[:5] == ["run", "--rm", "--interactive", "--sig-proxy=false", "--init"]
    created = create_args(run)
    assert created[:3] == ["create", "--rm", "--init"]
    assert created[3:] == run[5:]
    assert "-i" in created


@pytest.mark.parametrize(
    ("settings", "pool", "head"),
    [
        (KernelSettings(engine="podman", workdir="none"), None, ["create", "--init"]),
        (KernelSettings(runtime="runsc"), None, ["create", "--init"]),
        (KernelSettings(workdir="none"), ("key", "/pool"), ["create", "--rm", "--init"]),
    ],
)
def test_create_args_keep_rm_as_run_args_chose_it(
    settings: KernelSettings, pool: tuple[str, str] | None, head: list[str]
) -> None:
    """Kept containers (Podman, gVisor) stay without --rm; a pooled one loses --detach."""
    created = create_args(hardening.run_args(settings, LAUNCH, pool=pool))
    assert created[: len(head)] == head
    assert not {"--detach", "--interactive", "--sig-proxy=false"} & set(created)


def test_create_args_refuse_what_is_not_a_run() -> None:
    with pytest.raises(ValueError, match="not a `run` argument list"):
        create_args(["ps", "-a"])


def test_transports() -> None:
    """unix:// has a transport; ssh:// and tcp:// have none yet (callers use the CLI)."""
    unix = transport_for("unix:///run/podman/podman.sock")
    assert unix is not None
    assert unix.describe() == "unix:///run/podman/podman.sock"
    assert transport_for("ssh://grader@node1") is None
    assert transport_for("tcp://127.0.0.1:2375") is None


def test_an_engine_that_is_not_there_says_what_to_do(tmp_path: Path) -> None:
    """No socket: our EngineError, saying what happened, that nothing was done, what next."""
    api = EngineApi(str(tmp_path / "docker.sock"))
    assert not api.available()
    for call in (lambda: api.inspect("x"), lambda: api.containers(all=True)):
        with pytest.raises(EngineError) as info:
            call()
        text = str(info.value)
        assert f"Cannot reach the container engine at unix://{tmp_path}/docker.sock" in text
        assert "Nothing was done" in text
        assert "docker info" in text


# -- against real engines -------------------------------------------------------------------


@dataclass
class Target:
    name: str
    api: EngineApi
    image: str


@pytest.fixture(params=["docker", "podman"])
def target(request: pytest.FixtureRequest, engine: Engine) -> Target:
    if request.param == "docker":
        image = request.getfixturevalue("kernel_image")
        return Target("docker", engine.api(), image)
    try:
        podman = Engine(host=podman_socket())
        podman.require_image(DEFAULT_IMAGE)
    except Exception as exc:
        not_here(f"Podman is not ready ({exc}); run scripts/bootstrap-podman", "Podman")
    return Target("podman", podman.api(), DEFAULT_IMAGE)


@pytest.fixture
def label(target: Target) -> Iterator[str]:
    """A kernel-id label value for this test; its containers are removed at teardown."""
    value = f"test-engine-api-{secrets.token_hex(4)}"
    yield value
    for item in target.api.containers({engine_mod.LABEL_KERNEL_ID: value}, all=True):
        target.api.remove(item["Id"])


def body(target: Target, label: str, cmd: list[str], **host: Any) -> dict[str, Any]:
    """A minimal create body: no network, an init (TERM reaches the command), labelled as ours."""
    return {
        "Image": target.image,
        "Entrypoint": [],
        "Cmd": cmd,
        "Labels": {
            engine_mod.LABEL_KERNEL_ID: label,
            engine_mod.LABEL_LAUNCHER_PID: str(os.getpid()),
        },
        "HostConfig": {"NetworkMode": "none", "Init": True, **host},
    }


@pytest.mark.docker
def test_create_start_signal_wait_remove(target: Target, label: str) -> None:
    """The whole life through the API: created (not running), started, TERM, its exit code,
    removed; removing again and signalling it gone are not errors."""
    api = target.api
    cid = api.create(body(target, label, ["sleep", "600"]), name=f"jdk-test-{label}")
    state = (api.inspect(cid) or {})["State"]
    assert state["Running"] is False
    api.start(cid)
    api.start(cid)  # already running: not an error
    assert (api.inspect(cid) or {})["State"]["Running"] is True
    assert [c["Id"] for c in api.containers({engine_mod.LABEL_KERNEL_ID: label})] == [cid]
    # A TERM that reaches PID 1 before the init (tini) has blocked signals is discarded
    # (PID 1 has no default actions): give it a moment.
    time.sleep(0.5)
    assert api.signal(cid, "TERM")
    assert api.wait(cid, timeout=30) == 128 + 15
    assert api.signal(cid, "KILL") is False  # not running
    assert api.containers({engine_mod.LABEL_KERNEL_ID: label}) == []
    listed = api.containers({engine_mod.LABEL_KERNEL_ID: label}, all=True)
    assert [c["Id"] for c in listed] == [cid]
    assert api.remove(cid) is True
    assert api.remove(cid) is False
    assert api.inspect(cid) is None
    assert api.signal(cid, "KILL") is False


@pytest.mark.docker
def test_removing_a_container_that_is_ending_by_itself(target: Target, label: str) -> None:
    """The lifecycle removes a container right as it ends on its own (its lifeline's holder
    left): never an error. Podman 4.3 answers 500 "container state improper" in that
    window (remove asks again); Docker a 409 "in progress" for a --rm one (False). A race:
    without the retry this failed in about one run of three on Podman."""
    api = target.api
    for delay in [0.025 * i for i in range(20)]:  # before, at and after its end
        cid = api.create(body(target, label, ["sh", "-c", "sleep 0.2"]))
        api.start(cid)
        time.sleep(delay)
        api.remove(cid)
        assert api.inspect(cid) is None


@pytest.mark.docker
def test_a_wait_asked_before_start_gets_an_auto_removed_containers_code(
    target: Target, label: str
) -> None:
    """condition=next-exit, asked before start (the docker CLI's order for `run --rm`):
    the exit code arrives even though the container removes itself at once."""
    api = target.api
    cid = api.create(body(target, label, ["sh", "-c", "exit 3"], AutoRemove=True))
    codes: list[int] = []
    waiter = threading.Thread(
        target=lambda: codes.append(api.wait(cid, condition="next-exit", timeout=30))
    )
    waiter.start()
    time.sleep(0.2)  # the wait is registered with the engine
    api.start(cid)
    waiter.join(30)
    assert codes == [3]
    deadline = time.monotonic() + 10
    while api.inspect(cid) is not None:
        assert time.monotonic() < deadline, "not auto-removed"
        time.sleep(0.05)


@pytest.mark.docker
def test_missing_container_errors(target: Target) -> None:
    """start/wait/update of a container that is not there: NoSuchContainerError, saying so."""
    api = target.api
    missing = f"jdk-test-missing-{secrets.token_hex(4)}"
    for call in (
        lambda: api.start(missing),
        lambda: api.wait(missing, timeout=10),
        lambda: api.update(missing, cpu_shares=512),
    ):
        with pytest.raises(NoSuchContainerError, match="HTTP 404"):
            call()


@pytest.mark.docker
def test_missing_image_and_taken_name(target: Target, label: str) -> None:
    """No such image: ImageError (kernels never pull); a taken name: EngineError (409)."""
    api = target.api
    bad = body(target, label, ["true"])
    bad["Image"] = f"jdk-test-no-such-image-{secrets.token_hex(4)}:1"
    with pytest.raises(ImageError, match="never pull"):
        api.create(bad)
    name = f"jdk-test-{label}"
    api.create(body(target, label, ["true"]), name=name)
    with pytest.raises(EngineError, match="is already in use") as info:
        api.create(body(target, label, ["true"]), name=name)
    assert "No container was created" in str(info.value)


@pytest.mark.docker
def test_update_cpu_shares(target: Target, label: str) -> None:
    """A warm container's CPU weight raised at its claim (issue 17's low-priority refill)."""
    api = target.api
    cid = api.create(body(target, label, ["sleep", "600"], CpuShares=2))
    api.start(cid)
    pid = int((api.inspect(cid) or {})["State"]["Pid"])
    assert cpu_weight(pid) == cpu_weight_of(2)
    api.update(cid, cpu_shares=1024)
    # The cgroup, not inspect: Podman's inspect keeps the value the container was made with.
    assert cpu_weight(pid) == cpu_weight_of(1024)


def cpu_weight(pid: int) -> int:
    """The CPU weight of pid's cgroup as the host sees it: cgroup v1 cpu.shares, or v2's
    cpu.weight."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/{controllers}{path}/cpu.shares").read_text())
        if controllers == "":
            return int(Path(f"/sys/fs/cgroup{path}/cpu.weight").read_text())
    raise AssertionError(f"no cpu cgroup for pid {pid}")


def cpu_weight_of(shares: int) -> int:
    """What the engine writes for `shares`: itself (v1), or runc's conversion to cpu.weight."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return 1 + ((shares - 2) * 9999) // 262142
    return shares


@pytest.mark.docker
def test_events_stream_carries_die_with_its_exit_code(target: Target, label: str) -> None:
    """One stream for many containers: each one's die event, with its exit code, arrives;
    close() from another thread ends the iteration; an idle stream times out."""
    api = target.api
    filters = {
        "type": ["container"],
        "event": ["die"],
        "label": [f"{engine_mod.LABEL_KERNEL_ID}={label}"],
    }
    codes = {}
    began = time.time() - 1  # the engine's clock is ours, in whole seconds at worst
    for code in (3, 4):
        cid = api.create(body(target, label, ["sh", "-c", f"sleep 0.5; exit {code}"]))
        codes[cid] = code
    with api.events(filters, timeout=20) as stream:
        for cid in codes:
            api.start(cid)
        seen: dict[str, int] = {}
        for event in stream:
            actor = event.get("Actor") or {}
            seen[str(actor.get("ID"))] = int(actor["Attributes"]["exitCode"])
            if len(seen) == len(codes):
                break
    assert seen == codes

    # Past events, replayed: the engine ends the stream at `until`, the iteration with it.
    with api.events(filters, since=began, until=time.time() + 1, timeout=20) as past:
        replayed = {str((e.get("Actor") or {}).get("ID")) for e in past}
    assert replayed == set(codes)

    with api.events(filters, timeout=0.5) as idle, pytest.raises(TimeoutError):
        list(idle)

    stream = api.events(filters)
    closer = threading.Timer(0.3, stream.close)
    closer.start()
    began = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - began < 5
