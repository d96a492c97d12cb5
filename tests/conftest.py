"""Shared fixtures: an isolated Jupyter environment, the engine, the test image, cleanup.

Tests that need Docker use the `engine` or `kernel_image` fixtures and carry the `docker`
marker. When the engine is unreachable they FAIL if the CI variable is set (so a green run
cannot come from skipping) and skip otherwise (a laptop without Docker can still run the
pure tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from jupyter_docker_kernel import cli, helper, reaper
from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.rundir import runtime_base
from jupyter_docker_kernel.settings import DEFAULT_IMAGE
from tests import slurm_cluster as slurm
from tests.slurm_cluster import OneNodeCluster

if TYPE_CHECKING:  # imported where used at run time: pytest registers it as a plugin first
    from tests.broker_env import Runtime

#: The remote nodes' fixtures (tests/nodes.py): node, pushed_node, on_node; the root
#: broker with its test users (tests/broker_env.py): broker.
pytest_plugins = ["tests.nodes", "tests.broker_env"]

# nbgrader.utils imports setuptools, whose shim swaps in its own distutils and asserts that
# nothing imported the standard library's first; in a full run something has, so the tests
# that import nbgrader in-process failed by order. The standard library's copy is enough.
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")

#: The real user's cache (wheels, rootfs), captured before HOME is pointed elsewhere.
REAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
OUR_LABEL = engine_mod.LABEL_KERNEL_ID
#: Every kernelspec the tests install is named with this prefix.
TEST_KERNEL = "jdk-test"
#: The tag kernel_image builds the default recipe as. JDK_TEST_IMAGE=jdk-test-x/default:1
#: tests a changed recipe without rebuilding the default tag other checkouts share.
TEST_IMAGE = os.environ.get("JDK_TEST_IMAGE") or DEFAULT_IMAGE


def pytest_configure(config: pytest.Config) -> None:
    """Point HOME and Jupyter's paths at a temp dir: tests never touch real kernelspecs."""
    # A run started in the background by a shell without job control inherits SIGINT
    # ignored, and so would every command the tests start: `grade`'s Ctrl-C stories would
    # then test nothing (a run found them grading on after the SIGINT). A handler here
    # becomes the default disposition in the children at their exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="jdk-tests-"))
    config._jdk_root = root  # type: ignore[attr-defined]
    os.environ["XDG_CACHE_HOME"] = str(REAL_CACHE)
    for name, sub in (
        ("HOME", "home"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
    ):
        (root / sub).mkdir()
        os.environ[name] = str(root / sub)
    os.environ["JUPYTER_PATH"] = str(root / "data")
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    os.environ.pop("XDG_RUNTIME_DIR", None)
    # The host venv's bin first, so `jupyter`, `nbgrader` and the launcher are ours.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    # A resident helper the tests' kernels start outlives a killed test run by this much
    # at most; pytest_unconfigure ends the ones still running after a normal one.
    os.environ[helper.IDLE_ENV] = str(HELPER_IDLE)


#: Seconds an idle resident helper started by the tests waits before it exits.
HELPER_IDLE = 20


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, add each kernel's launcher log and `docker inspect` of its container
    (kept by tests.kernels.running_kernel) to the report; after teardown, forget them."""
    from tests import kernels

    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for started in kernels.STARTED:
            try:
                log = started.log.read_text(errors="replace")
            except OSError as exc:
                log = f"(cannot read {started.log}: {exc})"
            inspected = started.inspect or kernels.inspect_text(started)
            title = f"kernel {started.kernel_name} ({started.key})"
            report.sections.append((f"{title}: launcher log {started.log}", log))
            report.sections.append((f"{title}: docker inspect", inspected))
    if report.when == "teardown":
        for started in kernels.STARTED:
            if started.own_log:
                started.log.unlink(missing_ok=True)
        kernels.STARTED.clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    root = getattr(config, "_jdk_root", None)
    if root is not None:
        end_helpers()
        shutil.rmtree(root, ignore_errors=True)


def helpers_of(base: str) -> list[int]:
    """Resident helpers of this checkout (its venv's python) for the runtime base `base`:
    the ones this run's kernels used, whoever started them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        joined = b" ".join(argv)  # either form of thin.spawn_argv: `-m MODULE` or `-c CODE`
        if argv[0] != sys.executable.encode() or b"jupyter_docker_kernel.helper" not in joined:
            continue
        if base.encode() in argv:
            found.append(int(entry.name))
    return found


def end_helpers() -> None:
    """SIGTERM this run's helpers (they stop their kernels), SIGKILL what is left after 15 s."""
    pids = helpers_of(str(runtime_base()))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """A reachable engine; fails under CI, skips elsewhere, when there is none."""
    eng = Engine()
    try:
        eng.info()
    except Exception as exc:
        not_here(f"container engine unreachable: {exc}", "Docker")
    return eng


def not_here(message: str, kind: str) -> NoReturn:
    """What a test needs is missing: fail under CI (its tests must run there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: {kind} tests must run, not skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def kernel_image(engine: Engine) -> str:
    """The default kernel image, built offline on first use and reused after."""
    from jupyter_docker_kernel import image

    result = image.ensure_image(engine, TEST_IMAGE, progress=lambda line: print(line))
    return result.tag


@pytest.fixture(scope="session")
def r_image(engine: Engine) -> str:
    """An image with Debian's IRkernel (tests/r_image.py), built offline on first use."""
    from tests.r_image import ensure_r_image

    return ensure_r_image(engine)


@pytest.fixture(scope="session", autouse=True)
def _no_containers_left() -> Iterator[None]:
    """At the end, remove (and report) containers of ours whose launcher is gone.

    Only orphans: other test sessions or users on this machine may have live kernels.
    """
    yield
    if shutil.which("docker") is None:
        return
    try:
        result = reaper.collect(Engine())
    except Exception as exc:  # the engine may be unreachable in a pure-test run
        print(f"\ncould not check for leftover containers: {exc}", file=sys.stderr)
        return
    if result.containers:
        print(f"\nremoved leftover containers: {result.containers}", file=sys.stderr)


def our_containers() -> list[str]:
    """Ids of all containers (any state) carrying our kernel label."""
    proc = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={OUR_LABEL}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def inspect(container: str) -> dict[str, object]:
    """`docker inspect` of one container."""
    from tests.kernels import docker_argv  # the engine under test (a node's, or ours)

    proc = subprocess.run(
        docker_argv(["inspect", container]), capture_output=True, text=True, check=True
    )
    data = json.loads(proc.stdout)[0]
    assert isinstance(data, dict)
    return data


#: Options every install_kernel adds after its own: tests/node_suites.py's node and
#: shared path while the suites run against a node, so their fixtures' kernelspecs run
#: there unchanged.
INSTALL_EXTRA: list[str] = []


def install_kernel(name: str, image: str, *extra: str) -> Path:
    """Run `setup --user` through cli.main, as a user would; returns the spec dir.

    --reset: the spec holds exactly these options, whatever an earlier test installed
    under the same name (--replace alone would keep that one's other settings)."""
    argv = ["setup", "--name", name, "--image", image, "--user", "--replace", "--reset"]
    code = cli.main([*argv, *extra, *INSTALL_EXTRA])
    assert code == 0, f"setup {name} failed with exit code {code}"
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name


@pytest.fixture(scope="session")
def kernel_name(kernel_image: str) -> str:
    """A kernelspec for the default image with default (hardened) settings."""
    install_kernel(TEST_KERNEL, kernel_image)
    return TEST_KERNEL


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A notebook directory readable by the kernel's uid (65534 when tests run as root)."""
    # Only the mounted dir itself matters inside the container, not its host parents.
    tmp_path.chmod(0o777)
    return tmp_path


#: Tight limits for hostile-notebook tests: small enough to trip quickly, big enough for
#: ipykernel with numpy. Each hostile test asserts the limit's effect, not these numbers.
HOSTILE_LIMITS = (
    "--memory", "512m",
    "--pids-limit", "128",
    "--tmp-size", "64m",
    "--tmp-inodes", "2048",
    "--fsize", "32m",
    "--max-message", "16m",
    "--output-budget", "64m",
    "--max-lifetime", "300",
)  # fmt: skip


@pytest.fixture(scope="session", params=["runc", "runsc", "broker"])
def runtime(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Runtime]:
    """Each hostile test runs under the default runtime, under gVisor (runsc), and once
    more under the default runtime with its kernels started through the root broker by an
    unprivileged test user ("broker": tests/broker_env.py; the value still compares as
    "runc", `.via_broker` and `.key` tell the variants apart). Kernelspecs for it come
    from install_hostile. At the end of the broker variant, its kernels must have gone
    through the broker: the audit log has the test user's starts."""
    from tests.broker_env import HOSTILE_USER, Runtime, still_as_user

    name = str(request.param)
    if name == "broker":
        made = Runtime("runc", via_broker=True)
        made.env = env = request.getfixturevalue("broker")
        started = f"start uid={env.uids[HOSTILE_USER]}({HOSTILE_USER})"
        before = env.audit.read_text().count(started)
        yield made
        assert env.audit.read_text().count(started) > before, "no kernel went through the broker"
        assert still_as_user() == [], "kernelspecs rewritten back to the direct path"
        return
    if name != "runc" and name not in engine.runtimes():
        not_here(
            f"runtime {name} is not registered (scripts/bootstrap-engine --runsc does it)", "gVisor"
        )
    yield Runtime(name)


def install_hostile(name: str, image: str, runtime: Runtime, *extra: str) -> str:
    """A hostile test's kernelspec `<name>-<runtime.key>` (`setup` with extra, plus
    --runtime runsc under gVisor), rewritten for the broker variant to start through the
    broker as the test user (broker_env.as_user); returns its name."""
    full = f"{name}-{runtime.key}"
    runtime_args = ["--runtime", str(runtime)] if runtime != "runc" else []
    spec = install_kernel(full, image, *extra, *runtime_args)
    if runtime.env is not None:
        from tests.broker_env import as_user

        as_user(spec, runtime.env)
    return full


@pytest.fixture(scope="session")
def hostile_kernel(kernel_image: str, runtime: Runtime) -> str:
    """A kernelspec with HOSTILE_LIMITS under `runtime` ("runc" means the engine default)."""
    return install_hostile("jdk-test-hostile", kernel_image, runtime, *HOSTILE_LIMITS)


#: The kernelspec `setup --podman` writes for the default image in Podman's storage.
PODMAN_KERNEL = "jdk-test-podman"


@pytest.fixture(scope="session")
def podman_host() -> str:
    """Podman's API address with the default image in its storage; fails under CI if not
    (scripts/bootstrap-podman makes the service and the image ready)."""
    try:
        host = engine_mod.podman_socket()
        podman = Engine(host=host)
        podman.info()
        assert podman.kind() == "podman", f"{host} is not Podman's API"
        podman.require_image(DEFAULT_IMAGE)
    except Exception as exc:
        not_here(f"Podman is not ready ({exc}); run scripts/bootstrap-podman", "Podman")
    return host


@pytest.fixture(scope="session")
def podman_kernel(podman_host: str) -> str:
    """A kernelspec for the default image written by `setup --podman`."""
    install_kernel(PODMAN_KERNEL, DEFAULT_IMAGE, "--podman")
    return PODMAN_KERNEL


@pytest.fixture
def on_podman(podman_host: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKER_HOST at Podman for this test: the shared helpers' docker CLI calls see its
    containers, and `setup` detects Podman and records it. (A kernelspec's engine_host
    alone decides where its kernel runs.)"""
    monkeypatch.setenv("DOCKER_HOST", podman_host)
    return podman_host


@pytest.fixture(params=["docker", "podman"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    """The engine a story runs on, for the stories that must hold on Docker and on Podman
    alike: a test that takes this fixture (or engine_kernel / engine_image) runs once per
    engine. On "podman" DOCKER_HOST points at Podman for the test (on_podman).
    Parametrize it indirectly to run a story on fewer engines, e.g.
    `@pytest.mark.parametrize("engine_kind", ["docker"], indirect=True)`."""
    kind = str(request.param)
    request.getfixturevalue("on_podman" if kind == "podman" else "engine")
    return kind


@pytest.fixture
def engine_image(engine_kind: str, request: pytest.FixtureRequest) -> str:
    """The default kernel image, in the storage of the test's engine."""
    if engine_kind == "podman":
        return DEFAULT_IMAGE  # podman_host checked that Podman has it
    return str(request.getfixturevalue("kernel_image"))


@pytest.fixture
def engine_kernel(engine_kind: str, request: pytest.FixtureRequest) -> str:
    """The default-settings kernelspec for the test's engine: kernel_name on Docker,
    podman_kernel (`setup --podman`) on Podman."""
    name = "podman_kernel" if engine_kind == "podman" else "kernel_name"
    return str(request.getfixturevalue(name))


needs_docker_cli = pytest.mark.skipif(
    shutil.which("docker") is None, reason="needs the docker CLI (not a daemon) on PATH"
)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[OneNodeCluster]:
    """A real one-node Slurm cluster (tests/slurm_cluster.py) for the session, SLURM_CONF
    pointing at it meanwhile; stopped and removed at the end, also after a failure. Fails
    under CI when Slurm is not installed (scripts/bootstrap-slurm installs it)."""
    missing = slurm.missing_programs()
    if missing:
        not_here(f"Slurm is missing ({', '.join(missing)}); run scripts/bootstrap-slurm", "Slurm")
    cluster = slurm.OneNodeCluster.start(Path(tempfile.gettempdir()))
    print(f"\none-node Slurm cluster up in {cluster.started_in:.1f} s at {cluster.root}")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cluster.env().items():
                patch.setenv(name, value)
            yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Jupyter data dir of this test's own: `setup --user` writes under it, and list and
    doctor see only what the test installs."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    return data


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is unreachable: DOCKER_HOST names a socket that does not exist (and so
    does the kernel broker's, whatever runs on this machine: test_broker_client.py sets
    its own)."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    monkeypatch.setenv("JUPYTER_DOCKER_KERNEL_BROKER", "/nonexistent-broker.sock")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
