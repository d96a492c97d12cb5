"""Hostile files and local users against the host-side processes we start (catalogue H).

Before any container exists, our own Python runs on the host, as whoever starts the kernel
(nbgrader's grader included), in the notebook's directory. Each test plays one attack from
the host side through a real client and checks the host: H01-H03 a `json.py` and a
`jupyter_docker_kernel/` package handed in next to a notebook (the launcher, the
provisioner's watchdog, the pool refill, `nbgrader autograde`), H04 a kernelspec of an
earlier version, H05-H06 another local user reading `ps`, H07 another local user taking the
runtime base's name. docs/security.md cites these ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import jupyter_docker_kernel
from jupyter_docker_kernel import cli, engine, kernelspec, pool, reaper
from jupyter_docker_kernel.launcher import ENV_FILE, runtime_base_choice
from jupyter_docker_kernel.provisioner import DockerProvisioner
from tests.conftest import install_kernel
from tests.courses import (
    COURSE_ID,
    PS1_SOLUTION,
    PS1_TESTS,
    make_dirs,
    nbgrader,
    new_course,
    release,
    source_notebook,
    submit,
)
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    running_kernel,
    stream_text,
    wait_until,
)

# Other test sessions on this machine may run `gc --pools`, which removes every warm
# container of this user: rerun a failure before calling it one.
pytestmark = [pytest.mark.docker, pytest.mark.flaky(reruns=2, reruns_delay=2)]

REAL_PACKAGE = Path(jupyter_docker_kernel.__file__).parent

#: A json.py that leaves a marker file (who imported it: pid and argv), then hands the
#: importer the real json, so that code which imports it (the old launcher) goes on working
#: and the test fails on the marker, not on a crash. The kernel in its container imports
#: it too (its cwd is the work dir): that is the sandbox's business, and the markers dir is
#: not there, so only host processes leave a marker.
PLANTED_JSON = """\
import os, sys
try:
    with open(os.path.join({markers!r}, "json-%d" % os.getpid()), "w") as fh:
        fh.write(" ".join(sys.argv))
except OSError:
    pass
_here = os.path.dirname(os.path.abspath(__file__))
del sys.modules[__name__]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
import json as _real
sys.modules[__name__] = _real
"""
#: A jupyter_docker_kernel/__init__.py that leaves a marker, then is the real package.
PLANTED_PACKAGE = """\
import os, sys
try:
    with open(os.path.join({markers!r}, "package-%d" % os.getpid()), "w") as fh:
        fh.write(" ".join(sys.argv))
except OSError:
    pass
__path__[:] = [{real!r}]
exec(compile(open(os.path.join({real!r}, "__init__.py")).read(), "__init__.py", "exec"))
"""


@dataclass
class Planted:
    """A notebook directory holding the planted modules, and where they leave markers."""

    workdir: Path
    markers: Path

    def imported(self) -> dict[str, str]:
        """marker name -> the importing process's argv; empty when nothing imported them."""
        return {p.name: p.read_text() for p in sorted(self.markers.iterdir())}


def plant(workdir: Path, markers: Path) -> Planted:
    """Put json.py and jupyter_docker_kernel/__init__.py where a submission would."""
    for path in (workdir, markers):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # the kernel may run as another uid; markers come from the host
    (workdir / "json.py").write_text(PLANTED_JSON.format(markers=str(markers)))
    package = workdir / "jupyter_docker_kernel"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(
        PLANTED_PACKAGE.format(markers=str(markers), real=str(REAL_PACKAGE))
    )
    return Planted(workdir, markers)


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    return plant(tmp_path / "notebooks", tmp_path / "markers")


def warm_containers(key: str) -> list[str]:
    """Ids of this pool key's warm containers that are ready to be claimed."""
    return [
        str(item["Id"])
        for item in engine.EngineApi().containers({engine.LABEL_POOL: key})
        if str(item["Names"][0]).lstrip("/").startswith(pool.POOL_NAME_PREFIX)
        and Path(item["Labels"][engine.LABEL_POOL_DIR], "rt", pool.CLAIM_SOCKET).exists()
    ]


def warm_names(key: str) -> list[str]:
    """Names of this pool key's unclaimed warm containers."""
    return [
        str(item["Names"][0]).lstrip("/")
        for item in engine.EngineApi().containers({engine.LABEL_POOL: key})
        if str(item["Names"][0]).lstrip("/").startswith(pool.POOL_NAME_PREFIX)
    ]


def remove_pool(key: str) -> None:
    """Remove every container of this pool key (each test's key is its own)."""
    for item in engine.EngineApi().containers({engine.LABEL_POOL: key}, running=False):
        engine.Engine().remove(str(item["Id"]))


def pool_key_of(spec: Path) -> str:
    data = json.loads((spec / "kernel.json").read_text())
    return pool.pool_key(kernelspec.settings_from_kernel_json(data), os.getuid())


def pooled_kernel(name: str, image: str, *extra: str) -> tuple[Path, str]:
    """A --copy-workdir --pool 1 kernelspec whose pool key is this test's alone."""
    spec = install_kernel(
        name,
        image,
        *("--copy-workdir", "--pool", "1", "--pool-ttl", "60"),
        *("--env", f"JDK_TEST_POOL={name}"),
        *extra,
    )
    return spec, pool_key_of(spec)


def broker_kernel(request: pytest.FixtureRequest, name: str, image: str, *extra: str) -> None:
    """A kernelspec whose kernel the test user starts through the root broker
    (tests/broker_env.py's as_user): the host-side process is then that user's launcher."""
    from tests.broker_env import as_user

    as_user(install_kernel(name, image, *extra), request.getfixturevalue("broker"))


# -- H01-H03: modules planted in the notebook's directory ------------------------------------


@pytest.mark.parametrize("path", ["direct", "broker"])
def test_h01_the_launcher_and_its_pool_refill_never_import_from_the_notebooks_dir(
    kernel_image: str, planted: Planted, path: str, request: pytest.FixtureRequest
) -> None:
    """A kernel started in a directory holding json.py and jupyter_docker_kernel/: code runs
    in the container, the pool is refilled, and no host process imported either module.
    Through the broker (a test user's launcher; no pool there): no import either."""
    name, key = f"jdk-test-h01-{path}", ""
    if path == "broker":
        broker_kernel(request, name, kernel_image, "--copy-workdir")
    else:
        _, key = pooled_kernel(name, kernel_image)
    try:
        with running_kernel(name, str(planted.workdir)) as (_km, kc):
            reply, out = execute(kc, "print(6 * 7)")
            assert reply["status"] == "ok"
            assert stream_text(out) == "42\n"
            if key:
                wait_until(lambda: bool(warm_containers(key)), 90)  # the refill has run
    finally:
        if key:
            remove_pool(key)

    assert planted.imported() == {}


def test_h02_the_provisioner_and_its_refill_never_import_from_the_cwd(
    kernel_image: str, planted: Planted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provisioner runs in the client (a Jupyter server started in the notebooks'
    directory): it and the pool refill it starts never import from that cwd (it starts
    no other process: no helper, no watchdog)."""
    name = "jdk-test-h02"
    _, key = pooled_kernel(name, kernel_image, "--provisioner")
    monkeypatch.chdir(planted.workdir)
    try:
        with running_kernel(name, str(planted.workdir)) as (km, kc):
            assert isinstance(km.provisioner, DockerProvisioner)
            reply, _ = execute(kc, "x = 1")
            assert reply["status"] == "ok"
            wait_until(lambda: bool(warm_containers(key)), 90)  # the refill has run
    finally:
        remove_pool(key)

    assert planted.imported() == {}


@pytest.mark.parametrize("path", ["direct", "broker"])
def test_h03_nbgrader_autograde_never_imports_a_submitted_json_py(
    kernel_image: str, tmp_path: Path, path: str, request: pytest.FixtureRequest
) -> None:
    """mallory hands in json.py and jupyter_docker_kernel/ next to her notebook; autograde
    (the --for-nbgrader kernel; or its kernel started by a test user through the broker)
    grades her like anyone else and runs neither on the host."""
    grader = f"jdk-test-h03-{path}"
    if path == "broker":
        broker_kernel(request, grader, kernel_image, "--for-nbgrader")
    else:
        install_kernel(grader, kernel_image, "--for-nbgrader")
    course = new_course(tmp_path / "course", ["mallory"])
    released = release(course, "ps1", source_notebook(PS1_SOLUTION, PS1_TESTS, points=2))
    submit(course, "mallory", "ps1", released, "def add(a, b):\n    return a + b")
    submission = make_dirs(course, "submitted", "mallory", "ps1")
    markers = tmp_path / "markers"
    plant(submission, markers)

    nbgrader(course, "autograde", "ps1", f"--ExecutePreprocessor.kernel_name={grader}", "--force")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gb:
        assert gb.find_submission("ps1", "mallory").score == 2.0
    assert (course / "autograded" / "mallory" / "ps1" / "json.py").exists()  # it was there
    assert Planted(submission, markers).imported() == {}


# -- H04: kernelspecs of earlier versions --------------------------------------------------------


def old_form(spec: Path) -> None:
    """Rewrite an installed spec as versions before the isolation fix wrote it: the
    settings in argv, `python -m launcher`, no env."""
    data = json.loads((spec / "kernel.json").read_text())
    text = kernelspec.settings_text(data) or ""
    data["argv"] = [
        *(sys.executable, "-m", kernelspec.LAUNCHER_MODULE),
        *("--settings", text.replace("\\u0024", "$"), "-f", "{connection_file}"),
    ]
    data.pop("env", None)
    (spec / "kernel.json").write_text(json.dumps(data))


def test_h04_an_old_kernelspec_still_runs_is_flagged_and_is_rewritten(
    kernel_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier version's kernel.json keeps working unchanged; doctor FAILs it with a
    fix line; `doctor --fix` rewrites it isolated, settings unchanged; then it runs too."""
    name = "jdk-test-h04"
    spec = install_kernel(name, kernel_image, "--env", "JDK_TEST_OLD=$HOME {x}")
    settings = kernelspec.settings_from_kernel_json(json.loads((spec / "kernel.json").read_text()))
    old_form(spec)
    workdir = tmp_path / "nb"
    workdir.mkdir(mode=0o777)
    with running_kernel(name, str(workdir)) as (_km, kc):
        _, out = execute(kc, "import os; print(os.environ['JDK_TEST_OLD'])")
        assert stream_text(out) == "$HOME {x}\n"
    capsys.readouterr()

    assert cli.main(["doctor", "--no-probe", name]) == 1
    report = capsys.readouterr().out
    assert "launcher" in report
    assert "without isolation" in report
    assert "fix: jupyter-docker-kernel doctor --fix" in report

    cli.main(["doctor", "--fix", "--no-probe", name])
    assert f"rewrote kernelspec {name}" in capsys.readouterr().out
    data = json.loads((spec / "kernel.json").read_text())
    assert data["argv"][1:3] == ["-I", "-m"]
    assert kernelspec.settings_from_kernel_json(data) == settings
    assert cli.main(["doctor", "--no-probe", name]) == 0
    with running_kernel(name, str(workdir)) as (_km, kc):
        _, out = execute(kc, "import os; print(os.environ['JDK_TEST_OLD'])")
        assert stream_text(out) == "$HOME {x}\n"


def test_h04_setup_rewrites_our_old_kernelspecs_and_says_so(
    kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any setup run upgrades every kernelspec of ours still in an earlier version's form."""
    old = install_kernel("jdk-test-h04-old", kernel_image)
    old_form(old)
    capsys.readouterr()
    install_kernel("jdk-test-h04-new", kernel_image)
    assert "rewrote kernelspec jdk-test-h04-old" in capsys.readouterr().out
    assert not kernelspec.needs_upgrade(json.loads((old / "kernel.json").read_text()))


# -- H05-H06: what `ps` shows other local users --------------------------------------------------


class CmdlineWatch:
    """Reads every process's /proc/PID/cmdline (what `ps` shows any local user) over and
    over in a thread, keeping each distinct one, so that short-lived processes (a pool
    refill, its `docker run`) are seen too."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                with contextlib.suppress(OSError), open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    self.seen.add(fh.read().replace(b"\0", b" ").decode(errors="replace"))
            self.stop.wait(0.005)

    def holding(self, *needles: str) -> list[str]:
        self.stop.set()
        self.thread.join(timeout=10)
        return sorted(c for c in self.seen if any(n in c for n in needles))


@pytest.mark.parametrize("path", ["launcher", "provisioner", "broker"])
def test_h05_h06_settings_and_env_values_never_appear_in_ps(
    kernel_image: str, tmp_path: Path, path: str, request: pytest.FixtureRequest
) -> None:
    """A secret --env value reaches the kernel, but no process's command line (launcher,
    docker run, pool refill, watchdog; through the broker: the user's launcher and the
    root broker's engine calls) carries it or the settings JSON while kernels start, run
    and are refilled; the env file the engine reads is 0600 and never mounted. (The
    broker keeps no pool: its kernelspec has none, and its env file is in the broker's
    own dir for the kernel.)"""
    secret = f"jdk-secret-{secrets.token_hex(8)}"
    name = f"jdk-test-h05-{path}"
    extra = ["--provisioner"] if path == "provisioner" else []
    env_dir, key = runtime_base_choice()[0], ""
    if path == "broker":
        from jupyter_docker_kernel.broker import state_dir
        from tests.broker_env import HOSTILE_USER

        broker_kernel(
            request, name, kernel_image, "--copy-workdir", "--env", f"JDK_SECRET={secret}"
        )
        broker = request.getfixturevalue("broker")
        env_dir = state_dir(broker.socket) / str(broker.uids[HOSTILE_USER])
    else:
        _, key = pooled_kernel(name, kernel_image, "--env", f"JDK_SECRET={secret}", *extra)
    workdir = tmp_path / "nb"
    workdir.mkdir(mode=0o777)
    watch = CmdlineWatch()
    try:
        with running_kernel(name, str(workdir)) as (km, kc):
            _, out = execute(kc, "import os; print(os.environ['JDK_SECRET'])")
            assert stream_text(out) == f"{secret}\n"
            key_of = km.provisioner.key if isinstance(km.provisioner, DockerProvisioner) else ""
            kernel = key_of or kernel_key(km)
            (container,) = containers_of(kernel)
            mounts = engine.Engine().container_inspect(container) or {}
            sources = [m["Source"] for m in mounts.get("Mounts", [])]
            env_files = {
                str(p): stat.S_IMODE(p.stat().st_mode)
                for p in env_dir.glob(f"*{kernel}-*/{ENV_FILE}")
            }
            if key:
                wait_until(lambda: bool(warm_containers(key)), 90)  # the refill has run
    finally:
        # The secret is in the settings JSON too, as is '"JDK_SECRET"' (quoted: JSON only).
        leaked = watch.holding(secret, '"JDK_SECRET"')
        if key:
            remove_pool(key)

    assert leaked == []
    assert list(env_files.values()) == [0o600]
    assert not any(source in env_files for source in sources)


# -- H07: another local user took the runtime base's name ----------------------------------------

OTHER_UID = 4242


def as_other_user(path: Path) -> None:
    """mkdir path 0777 in a process of another uid: a second local user getting there first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            path.mkdir()
            path.chmod(0o777)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.stat().st_uid == OTHER_UID


@pytest.fixture
def taken_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short sticky temp dir (TMPDIR for us and our children) whose
    jupyter-docker-kernel-<uid> another uid created first. (tmp_path first: pytest's own
    temp root must not land in it.)"""
    if os.getuid() != 0:
        pytest.skip("playing a second local user needs root")
    root = Path(tempfile.mkdtemp(prefix="jh", dir="/tmp"))  # short: socket paths go below
    root.chmod(0o1777)
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    as_other_user(root / f"jupyter-docker-kernel-{os.getuid()}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_h07_a_runtime_base_taken_by_another_user_does_not_stop_kernels(
    kernel_image: str, taken_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels still start, on the launcher and provisioner paths, in a private fallback
    that the other user cannot reach; the pool refills into it and the next start claims
    from it; gc finds and removes what is in it."""
    usual = taken_tmp / f"jupyter-docker-kernel-{os.getuid()}"
    base, why = runtime_base_choice()
    assert base.parent == taken_tmp
    assert base != usual
    assert "owned by uid 4242" in why
    name = "jdk-test-h07"
    _, key = pooled_kernel(name, kernel_image)
    provisioned = "jdk-test-h07-prov"
    install_kernel(provisioned, kernel_image, "--provisioner")
    workdir = tmp_path / "nb"
    workdir.mkdir(mode=0o777)
    orphan = base / "orphan-of-a-dead-launcher"
    orphan.mkdir(mode=0o700)
    (orphan / "launcher").write_text("999999999 1")  # no such pid
    try:
        with running_kernel(name, str(workdir)) as (km, kc):
            _, out = execute(kc, "print('up')")
            assert stream_text(out) == "up\n"
            wait_until(lambda: bool(warm_containers(key)), 90)  # refilled into the fallback
        assert list(base.glob(f"{pool.POOL_DIR_PREFIX}{key}-*"))
        # gc looks in the fallback (a dry run: other sessions here have pools of their own).
        found = reaper.collect(engine.Engine(), dry_run=True, pools=True)
        assert str(orphan) in found.dirs
        assert set(warm_names(key)) <= set(found.containers)
        # Claims the warm container from the fallback.
        with running_kernel(name, workdir) as (km, kc):
            _, out = execute(kc, "import os; print(os.getcwd())")
            assert stream_text(out) == f"{pool.WORK_TARGET}\n"
            # gc run with another base (the usual TMPDIR) keeps this live claimed kernel:
            # its marker is found through the pool dir's label, not in gc's own base.
            with monkeypatch.context() as other:
                other.delenv("TMPDIR")
                other.setattr(tempfile, "tempdir", None)
                seen = reaper.collect(engine.Engine(), dry_run=True)
            assert not [c for c in seen.containers if kernel_key(km) in c]
        with running_kernel(provisioned, str(workdir)) as (km, kc):
            _, out = execute(kc, "print('up')")
            assert stream_text(out) == "up\n"
            assert isinstance(km.provisioner, DockerProvisioner)
            assert km.provisioner.base is not None
            assert km.provisioner.base.parent == base
    finally:
        remove_pool(key)
    assert os.listdir(usual) == []  # nothing of ours went where the other user can look
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    # The other user's directory is theirs to remove: we never touched it.
    assert usual.stat().st_uid == OTHER_UID
