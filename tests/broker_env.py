"""The root broker (issue 16) with real users, for tests/test_broker.py and the hostile suites.

A session fixture (`broker`) creates two unprivileged users (useradd; neither in the docker
group) and a venv from /usr/bin/python3 they can run, with this worktree's package in it,
and starts a root broker on a socket of its own (group: a test group both users are in).
At the end the broker stops, and the users, the group and the venv are removed.
Needs root, the engine and /usr/bin/python3 with venv (scripts/bootstrap-broker).

The hostile suites' "broker" variant (conftest's `runtime` fixture, `Runtime.via_broker`)
runs their cells in a kernel the first test user starts through this broker: `as_user`
rewrites a kernelspec's argv so that jupyter_client starts tests/broker_shim.py, which
hands the kernel's work dir and connection file to the user, drops to their uid and execs
the argv launcher from the users' venv. The suites' bodies stay as they are: the same
client (root, the test process) talks to a kernel that an unprivileged user started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel.broker import LABEL_BROKER
from jupyter_docker_kernel.kernelspec import launcher_argv

ROOT = Path(__file__).resolve().parents[1]
USERS = ("jdkt-ann", "jdkt-bob")
GROUP = "jdkt-kernels"
SYSTEM_PYTHON = "/usr/bin/python3"
#: The policy's kernels_per_user: the hostile suites hold up to four kernels at once (their
#: module-wide probes) and start one more per test.
KERNELS_PER_USER = 8


@dataclass
class BrokerEnv:
    """The broker, its users and their venv."""

    venv: Path
    socket: str
    policy: Path
    audit: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    uids: dict[str, int] = field(default_factory=dict)

    @property
    def script(self) -> str:
        return str(self.venv / "broker_user.py")

    def user_env(self, user: str) -> list[str]:
        home = pwd.getpwnam(user).pw_dir
        return [
            "env",
            "-i",
            f"HOME={home}",
            f"USER={user}",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "TMPDIR=/tmp",
            f"JUPYTER_DOCKER_KERNEL_BROKER={self.socket}",
        ]

    def argv(self, user: str, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
        python = str(self.venv / "bin" / "python")
        return ["runuser", "-u", user, "--", *self.user_env(user), *extra, python, *args]

    def run(self, user: str, *args: str, timeout: float = 120, **env: str) -> dict[str, Any]:
        extra = tuple(f"{k}={v}" for k, v in env.items())
        proc = subprocess.run(
            self.argv(user, self.script, *args, extra=extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        assert isinstance(data, dict)
        return data

    def hold(self, user: str, project: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """A kernel of user's, held by a client process we can kill."""
        proc = subprocess.Popen(
            self.argv(user, self.script, "hold", project),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the holding client did not start its kernel"
        return proc, json.loads(line)

    def start_broker(self) -> None:
        command = [sys.executable, "-m", "jupyter_docker_kernel", "broker"]
        command += ["--socket", self.socket, "--policy", str(self.policy), "--group", GROUP]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self.answers():  # a killed broker's socket file is still there
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the broker did not bind its socket"
            time.sleep(0.05)

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(self.socket)
            except OSError:
                return False
        return True

    def stop_broker(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def raw(self, user: str, lines: list[bytes]) -> list[str]:
        """Hand-made requests from user; the broker's first answer to each."""
        fd, path = tempfile.mkstemp(prefix="jdkt-raw-", dir="/tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump([base64.b64encode(x).decode() for x in lines], fh)
        os.chmod(path, 0o644)
        try:
            answers = self.run(user, "raw", path)["answers"]
        finally:
            os.unlink(path)
        assert isinstance(answers, list)
        return [str(a) for a in answers]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def kill_processes_of(uid: int) -> None:
    """End what the test users left running (their resident helpers), by pid."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def remove_dirs_of(uids: set[int]) -> None:
    """The private Jupyter dirs the users' clients made in /tmp (broker_user.py's
    isolated_spec: /tmp/jdkt-*), which userdel -r leaves."""
    for entry in Path("/tmp").glob("jdkt-*"):
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid in uids:
                shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(kernel_image: str) -> Iterator[BrokerEnv]:
    from tests.conftest import not_here  # here: conftest imports this module

    if os.geteuid() != 0 or shutil.which("useradd") is None:
        not_here("the broker tests need root and useradd", "broker")
    probe = subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--help"], capture_output=True)
    if probe.returncode != 0:
        not_here(f"{SYSTEM_PYTHON} cannot make a venv: run scripts/bootstrap-broker", "broker")
    made_users: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="jdkt-", dir="/var/tmp"))
    base.chmod(0o755)
    socket_dir = Path(f"/run/jdkt-{os.getpid()}")
    env = BrokerEnv(
        venv=base / "venv",
        socket=str(socket_dir / "broker.sock"),
        policy=base / "broker.toml",
        audit=base / "audit.log",
        log=base / "broker.log",
    )
    try:
        subprocess.run(["groupadd", "-f", GROUP], check=True)
        for user in USERS:
            # The names are the tests' own: one left by a session that died goes first.
            subprocess.run(["userdel", "-r", "-f", user], capture_output=True)
            sh("useradd", "-m", "-G", GROUP, "-s", "/bin/sh", user)
            made_users.append(user)
            env.uids[user] = pwd.getpwnam(user).pw_uid
        sh(SYSTEM_PYTHON, "-m", "venv", str(env.venv))
        pip = [str(env.venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, str(ROOT), "nbclient", "nbformat"], check=True, capture_output=True, timeout=600
        )
        shutil.copy(Path(__file__).with_name("broker_user.py"), env.script)
        env.policy.write_text(
            f'images = ["{kernel_image}"]\nmemory = "2g"\ncpus = 1\n'
            f'audit_log = "{env.audit}"\nkernels_per_user = {KERNELS_PER_USER}\n'
        )
        env.start_broker()
        yield env
    finally:
        env.stop_broker()
        for user in USERS:
            if user in env.uids:
                kill_processes_of(env.uids[user])
        remove_dirs_of(set(env.uids.values()))
        for user in made_users:
            # -f: a process killed just now may not be reaped yet.
            subprocess.run(["userdel", "-r", "-f", user], capture_output=True)
            shutil.rmtree(f"/tmp/jupyter-docker-kernel-{env.uids[user]}", ignore_errors=True)
        subprocess.run(["groupdel", GROUP], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(socket_dir, ignore_errors=True)


def project_of(user: str) -> str:
    """A project dir in the user's home, theirs."""
    home = Path(pwd.getpwnam(user).pw_dir)
    project = home / "project"
    project.mkdir(exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(project, entry.pw_uid, entry.pw_gid)
    return str(project)


def broker_containers(env: BrokerEnv) -> list[str]:
    proc = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_BROKER}={env.socket}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


def end_client(proc: subprocess.Popen[str], held: dict[str, Any]) -> None:
    """SIGKILL the holding client itself (runuser, its parent, passes no SIGKILL on)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(held["pid"], signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def wait_gone(name: str, seconds: float) -> float:
    """Seconds until no container is named name (fails after seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        proc = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name=^{name}$"],
            capture_output=True,
            text=True,
            check=True,
        )
        if not proc.stdout.strip():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"container {name} still there after {seconds} s")


# -- the hostile suites' "broker" variant --------------------------------------------------


class Runtime(str):
    """A hostile suite's runtime (conftest's `runtime` fixture): it compares and prints as
    the engine's runtime name ("runc", "runsc"), so the suites' expectations per runtime
    hold; `via_broker` says its kernels start through the root broker as an unprivileged
    test user (USERS[0]); `key` ("runc", "runsc", "broker") names its kernelspecs and dirs.
    """

    via_broker: bool
    key: str
    #: The broker the variant's kernels go through (None: they reach the engine).
    env: BrokerEnv | None

    def __new__(cls, name: str, *, via_broker: bool = False) -> Runtime:
        made = super().__new__(cls, name)
        made.via_broker = via_broker
        made.key = "broker" if via_broker else name
        made.env = None
        return made


#: The user whose kernels the hostile suites' broker variant starts.
HOSTILE_USER = USERS[0]
#: The shim jupyter_client runs (as root) in a kernelspec made by as_user.
SHIM = Path(__file__).with_name("broker_shim.py")


def as_user(spec_dir: Path, env: BrokerEnv, user: str = HOSTILE_USER) -> None:
    """Rewrite the kernelspec in spec_dir (written by `setup`, its settings kept) so that its
    kernel is started by `user` through env's broker: the argv launcher from the users'
    venv, behind tests/broker_shim.py (which jupyter_client runs as root)."""
    path = spec_dir / "kernel.json"
    data = json.loads(path.read_text())
    # -I: isolated, as our own argv is; without it every later `setup` would take this for
    # an earlier version's kernelspec and rewrite it (kernelspec.needs_upgrade), and the
    # kernels would start straight on the engine as root.
    data["argv"] = [
        sys.executable,
        "-I",
        str(SHIM),
        user,
        env.socket,
        *launcher_argv(str(env.venv / "bin" / "python")),
        "-f",
        "{connection_file}",
    ]
    path.write_text(json.dumps(data, indent=1))
    AS_USER_SPECS.append(path)


#: Every kernel.json as_user rewrote, for still_as_user().
AS_USER_SPECS: list[Path] = []


def still_as_user() -> list[str]:
    """The kernel.json files as_user rewrote that no longer start through the shim."""
    return [str(p) for p in AS_USER_SPECS if p.exists() and str(SHIM) not in p.read_text()]


def user_runtime_base(user: str = HOSTILE_USER) -> Path:
    """The runtime base of a broker variant's launcher (the shim gives it TMPDIR=/tmp):
    where its kept logs are."""
    return Path("/tmp", f"jupyter-docker-kernel-{pwd.getpwnam(user).pw_uid}")


def broker_kernel_uid(user: str = HOSTILE_USER) -> int:
    """The uid a broker variant's kernel runs as: its user's."""
    return pwd.getpwnam(user).pw_uid


def user_spec(spec_dir: Path, env: BrokerEnv, user: str = HOSTILE_USER) -> Path:
    """A copy of the kernelspec in spec_dir (written by `setup` as root) in user's own
    Jupyter data dir, its argv the launcher from the users' venv: for a client that runs
    as the user (their nbclient, whose provisioner then reaches the engine only through
    the broker). Removed with the user."""
    entry = pwd.getpwnam(user)
    target = Path(entry.pw_dir, ".local/share/jupyter/kernels", spec_dir.name)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(spec_dir, target)
    data = json.loads((target / "kernel.json").read_text())
    data["argv"] = [*launcher_argv(str(env.venv / "bin" / "python")), "-f", "{connection_file}"]
    (target / "kernel.json").write_text(json.dumps(data, indent=1))
    subprocess.run(
        ["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(Path(entry.pw_dir, ".local"))],
        check=True,
    )
    return target
