"""The broker for multi-user hosts (issue 16), with real users and the real engine.

The session fixture `broker` (tests/broker_env.py) creates two unprivileged users
(useradd; neither in the docker group) and a venv from /usr/bin/python3 they can run,
with this worktree's package in it, and starts a root broker on a socket of its own
(group: a test group both users are in). The users run tests/broker_user.py through
runuser: kernels through jupyter_client, hand-made requests to the broker's socket,
connections to each other's sockets. At the end the broker stops, and the users, the
group and the venv are removed.
Needs root, the engine and /usr/bin/python3 with venv (scripts/bootstrap-broker).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import broker_policy as bp
from jupyter_docker_kernel.broker import LABEL_BROKER
from jupyter_docker_kernel.rundir import RunDir
from jupyter_docker_kernel.settings import size_bytes
from tests.broker_env import (
    KERNELS_PER_USER,
    USERS,
    BrokerEnv,
    broker_containers,
    end_client,
    project_of,
    wait_gone,
)

pytestmark = pytest.mark.docker


def test_the_test_users_cannot_reach_the_engine(broker: BrokerEnv) -> None:
    proc = subprocess.run(
        broker.argv(USERS[0], "-c", "import os; print(os.access('/var/run/docker.sock', 6))"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("mode", ["provisioner", "argv"])
def test_each_user_runs_a_kernel_as_themselves_through_jupyter_client(
    broker: BrokerEnv, mode: str
) -> None:
    """Start, run code, write a file, interrupt, restart, shut down: for both users."""
    for user in USERS:
        project = project_of(user)
        result = broker.run(user, "kernel", mode, project)
        uid = broker.uids[user]
        assert result["ids"][:2] == [str(uid), str(pwd.getpwnam(user).pw_gid)]
        assert result["ids"][0] != "0"
        assert result["ids"][2] == project
        assert result["write"] == "ok"
        # Of the host's homes only the caller's project is there (mounted at its own path).
        assert result["home"] == sorted([user, "kernel"])
        assert os.stat(Path(project, "from-kernel.txt")).st_uid == uid
        assert result["interrupted"] == "KeyboardInterrupt"
        assert result["after_interrupt"] == "ok"
        assert result["after_restart"] == "ok"
        assert result["alive_after_shutdown"] is False
    assert not broker_containers(broker)
    audit = broker.audit.read_text()
    assert f"start uid={broker.uids[USERS[1]]}({USERS[1]})" in audit
    assert "stop uid=" in audit


def test_a_copied_work_dir_reaches_the_kernel_through_the_broker(broker: BrokerEnv) -> None:
    """--copy-workdir: the client streams the directory over its broker connection; the
    kernel works in its copy, and what it writes stays in the container."""
    user = USERS[1]
    project = Path(project_of(user)) / "copied"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir()
    (project / "data.txt").write_text("from the host")
    entry = pwd.getpwnam(user)
    subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(project)], check=True)
    result = broker.run(
        user, "kernel", "provisioner", str(project), JDKT_SETTINGS='{"workdir": "copy"}'
    )
    assert result["ids"][2] == str(project)
    assert result["listing"] == ["data.txt"]
    assert result["write"] == "ok"
    assert not (project / "from-kernel.txt").exists()
    last_start = broker.audit.read_text().rsplit("start uid=", 1)[1]
    assert "workdir=copy mounts=-" in last_start


def test_a_notebook_runs_through_nbclient_as_its_user(broker: BrokerEnv) -> None:
    user = USERS[0]
    project = project_of(user)
    assert broker.run(user, "notebook", project) == {"uid": str(broker.uids[user])}
    assert os.stat(Path(project, "from-notebook.txt")).st_uid == broker.uids[user]
    assert not broker_containers(broker)


def test_a_user_cannot_reach_another_users_kernel_sockets(broker: BrokerEnv) -> None:
    ann, bob = USERS
    proc, held = broker.hold(ann, project_of(ann))
    try:
        sockets = Path(held["sockets"])
        assert sockets.stat().st_uid == broker.uids[ann]
        assert sockets.stat().st_mode & 0o777 == 0o700
        kernel_socket = sockets / "k-1"
        assert broker.run(ann, "connect", str(kernel_socket))["connected"] is True
        assert broker.run(bob, "connect", str(kernel_socket)) == {
            "connected": False,
            "error": "PermissionError",
        }
    finally:
        end_client(proc, held)
    wait_gone(held["container"], 10)


def test_killing_the_client_ends_its_container_within_5_seconds(broker: BrokerEnv) -> None:
    user = USERS[1]
    proc, held = broker.hold(user, project_of(user))
    end_client(proc, held)
    seconds = wait_gone(held["container"], 5)
    print(f"container gone {seconds:.2f} s after its client's SIGKILL")
    assert seconds < 5
    assert "reason=the client went away" in broker.audit.read_text()


def test_requests_outside_the_policy_are_refused_with_one_line(
    broker: BrokerEnv, kernel_image: str, tmp_path: Path
) -> None:
    ann, bob = USERS
    bob_dir = Path(f"/tmp/jdkt-bob-{os.getpid()}")
    bob_dir.mkdir(mode=0o755)
    os.chown(bob_dir, broker.uids[bob], pwd.getpwnam(bob).pw_gid)
    link = Path(f"/tmp/jdkt-ann-link-{os.getpid()}")
    os.symlink(bob_dir, link)
    os.lchown(link, broker.uids[ann], pwd.getpwnam(ann).pw_gid)
    ann_project = project_of(ann)

    def start(workdir: str = ann_project, **settings: Any) -> bytes:
        request = {
            "op": "start",
            "v": bp.PROTOCOL,
            "name": "jdk-raw-000000",
            "kernel_id": "raw",
            "kernelspec": "",
            "workdir": workdir,
            "project": "",
            "connection": {"key": "k", "signature_scheme": "hmac-sha256", "kernel_name": ""},
            "settings": {"image": kernel_image, **settings},
        }
        return json.dumps(request).encode() + b"\n"

    cases = {
        "foreign image": (start(image="busybox:latest"), "is not allowed"),
        "mount of /etc": (start("/etc"), "not yours"),
        "mount of another user's dir": (start(str(bob_dir)), "not yours"),
        "mount of a link to it": (start(str(link)), "a link is never followed"),
        "a --mount of /etc": (start(mounts=[{"source": "/etc", "target": "/x"}]), "not yours"),
        "privileged": (start(docker_args=["--privileged"]), "--docker-arg"),
        "root in the container": (start(kernel_user="0:0"), "own uid"),
        "a network": (start(network="bridge"), "network is refused"),
        "too much memory": (start(memory="64g"), "above the allowed"),
        "a line break in --env": (start(env={"A": "x\ny"}), "line break"),
    }
    try:
        answers = broker.raw(ann, [data for data, _ in cases.values()])
    finally:
        link.unlink()
        bob_dir.rmdir()
    for (what, (_, words)), answer in zip(cases.items(), answers, strict=True):
        assert answer.count("\n") == 1, what
        reply = json.loads(answer)
        assert reply["ok"] is False, what
        assert words in reply["error"], (what, reply["error"])
    assert not broker_containers(broker)


def test_malformed_requests_are_refused_and_the_broker_stays_up(
    broker: BrokerEnv, kernel_image: str
) -> None:
    """A small fuzz of the wire: junk, cut lines, oversized lines, wrong types."""
    import random

    rng = random.Random(1616)
    lines = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(20)]
    lines += [
        b"\n",
        b"{}\n",
        b"[1, 2]\n",
        b'{"op": "start"',  # no newline: the client closes
        b"x" * (bp.MAX_REQUEST + 10) + b"\n",
        b"{" * 50000 + b"\n",
        json.dumps({"op": "start", "v": "1"}).encode() + b"\n",
        json.dumps({"op": "start", "v": 1, "settings": []}).encode() + b"\n",
    ]
    answers = broker.raw(USERS[0], lines)
    for answer in answers:
        reply = json.loads(answer)
        assert reply["ok"] is False
        assert reply["error"]
    assert broker.proc is not None
    assert broker.proc.poll() is None
    # Still serving: a start goes through.
    result = broker.run(USERS[0], "kernel", "provisioner", project_of(USERS[0]))
    assert result["ids"][0] == str(broker.uids[USERS[0]])


def test_a_user_cannot_tie_up_the_broker_with_idle_connections(broker: BrokerEnv) -> None:
    """Each connection is a thread of the broker's: a user gets kernels_per_user + 4."""
    answer = json.loads(broker.run(USERS[1], "flood", str(KERNELS_PER_USER + 4))["answer"])
    assert answer == {"ok": False, "error": "You have too many connections to the broker open."}
    # The other user is not affected.
    assert "lacks" in json.loads(broker.raw(USERS[0], [b"{}\n"])[0])["error"]


def test_killing_the_broker_leaves_nothing_running(broker: BrokerEnv) -> None:
    """SIGKILL: the supervisor's lifeline (the broker held it) ends the kernel; the next
    broker removes what is left (its dirs; containers an engine keeps)."""
    user = USERS[0]
    proc, held = broker.hold(user, project_of(user))
    try:
        broker.stop_broker(signal.SIGKILL)
        wait_gone(held["container"], 10)
    finally:
        end_client(proc, held)
        broker.start_broker()
    kernels = Path(broker.socket).parent / "kernels"
    assert not any(kernels.iterdir())
    assert not broker_containers(broker)


def test_setup_and_doctor_check_a_kernelspec_with_a_kernel_through_the_broker(
    broker: BrokerEnv, kernel_image: str
) -> None:
    """A user who reaches the engine only through the broker: `setup --user` checks the
    image and limits by starting a kernel through the broker (the probe), doctor says
    which path and why and probes each kernelspec the same way; settings the policy
    refuses stop setup with the broker's line, and nothing is written or left running."""
    user = USERS[0]
    home = pwd.getpwnam(user).pw_dir

    def cli(*args: str) -> tuple[int, str]:
        proc = subprocess.run(
            broker.argv(user, "-m", "jupyter_docker_kernel", *args),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=home,
        )
        return proc.returncode, proc.stdout + proc.stderr

    code, out = cli("setup", "--name", "viabroker", "--user", "--image", kernel_image)
    assert code == 0, out
    assert "started through the broker and bound its sockets" in out
    code, out = cli("doctor", "viabroker")
    assert code == 0, out
    assert "kernel path: broker: the engine's socket" in out
    assert "viabroker: kernel: a kernel of " in out
    assert "started through the broker and bound its sockets" in out
    code, out = cli(
        "setup", "--name", "toobig", "--user", "--image", kernel_image, "--memory", "64g"
    )
    assert code == 1, out
    assert "The kernel broker did not start a kernel of these settings" in out
    assert "above the allowed" in out
    assert not Path(home, ".local/share/jupyter/kernels/toobig").exists()
    assert not broker_containers(broker)


def test_a_restarted_broker_ends_the_containers_an_earlier_one_left(
    broker: BrokerEnv, kernel_image: str
) -> None:
    """A container the killed broker's kernel left running (an engine that keeps it, a
    lifeline that did not end it) is found by the broker's label and removed when the
    broker starts again, with an audit line. Stood in for by a plain container with the
    label: what the sweep goes by."""
    name = f"jdk-test-left-by-broker-{os.getpid()}"
    broker.stop_broker(signal.SIGKILL)
    try:
        label = f"{LABEL_BROKER}={broker.socket}"
        run = ["docker", "run", "-d", "--name", name, "--network", "none", "--label", label]
        subprocess.run([*run, kernel_image, "sleep", "300"], check=True, capture_output=True)
        assert broker_containers(broker)
    finally:
        broker.start_broker()
    try:
        assert not broker_containers(broker)
        assert "reason=left by an earlier broker" in broker.audit.read_text()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_a_policy_can_force_gvisor_on_every_kernel(broker: BrokerEnv) -> None:
    """runtime = "runsc": a kernelspec that asks for nothing gets gVisor, the staged mount
    of the notebook's directory works there too, and the container (kept by the engine
    under gVisor) is removed at the end."""
    original = broker.policy.read_text()
    broker.stop_broker()
    broker.policy.write_text(original + 'runtime = "runsc"\n')
    broker.start_broker()
    try:
        user = USERS[1]
        project = project_of(user)
        result = broker.run(user, "kernel", "provisioner", project)
        assert result["ids"][0] == str(broker.uids[user])
        assert os.stat(Path(project, "from-kernel.txt")).st_uid == broker.uids[user]
        last_start = broker.audit.read_text().rsplit("start uid=", 1)[1]
        assert "runtime=runsc" in last_start
        assert not broker_containers(broker)
    finally:
        broker.stop_broker()
        broker.policy.write_text(original)
        broker.start_broker()


def test_two_graders_autograde_their_courses_through_the_broker(
    broker: BrokerEnv, kernel_image: str
) -> None:
    """nbgrader with several graders: each grades a course of their own as themselves
    (the work dir mounted read-only, as nbgrader's grading needs); scores come out right
    and every kernel ran as its grader's uid (the audit log)."""
    from tests import courses

    venv_nbgrader = broker.venv / "bin" / "nbgrader"
    if not venv_nbgrader.exists():
        pip = [str(broker.venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "nbgrader"], check=True, capture_output=True, timeout=600)
    for grader in USERS:
        root = Path(project_of(grader)) / "course101"
        shutil.rmtree(root, ignore_errors=True)
        courses.new_course(root, courses.STUDENTS)
        ps1 = courses.release(
            root, "ps1", courses.source_notebook(courses.PS1_SOLUTION, courses.PS1_TESTS, 2)
        )
        for student in courses.STUDENTS:
            courses.submit(root, student, "ps1", ps1, courses.PS1_SUBMITTED[student])
        entry = pwd.getpwnam(grader)
        subprocess.run(["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(root)], check=True)
        result = broker.run(
            grader, "autograde", str(root), "ps1", JDKT_SETTINGS='{"workdir_readonly": true}'
        )
        assert result["code"] == 0, result["output"]
        assert courses.score(root, "alice") == 2.0
        assert courses.score(root, "bob") == 0.0
        starts = [
            line
            for line in broker.audit.read_text().splitlines()
            if f"start uid={entry.pw_uid}({grader})" in line and f"mounts={root}/" in line
        ]
        assert len(starts) == len(courses.STUDENTS)  # one kernel per submission, theirs
    assert not broker_containers(broker)


# -- the hostile suites through the broker ----------------------------------------------------
# The attacks that matter for a broker (privileges, limits, lifetime, the socket dir, other
# users), run once as an unprivileged user, with the hostile suites' own cells and limits.
# Each must end as it does direct, and the broker's audit line must say why it stopped.


def hostile_settings(**extra: Any) -> dict[str, Any]:
    """tests/conftest.py's HOSTILE_LIMITS as a kernelspec's settings."""
    from jupyter_docker_kernel.settings import OPTIONS
    from tests.conftest import HOSTILE_LIMITS

    limits = dict(zip(HOSTILE_LIMITS[::2], HOSTILE_LIMITS[1::2], strict=True))
    settings: dict[str, Any] = {f: limits[o] for f, o in OPTIONS.items() if o in limits}
    settings["pids_limit"] = int(settings["pids_limit"])
    settings["tmp_inodes"] = int(settings["tmp_inodes"])
    settings["max_lifetime"] = float(settings["max_lifetime"])
    return {**settings, **extra}


def run_cells(
    env: BrokerEnv, user: str, cells: list[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """broker_user.py's `cells` as user, in their project: each cell's end, then whether
    the kernel outlived its shutdown; and the broker's audit stop line for it."""
    fd, path = tempfile.mkstemp(prefix="jdkt-cells-", dir="/tmp")
    job = {"settings": settings, "cells": cells, "workdir": project_of(user), "timeout": 120}
    with os.fdopen(fd, "w") as fh:
        json.dump(job, fh)
    os.chmod(path, 0o644)
    stops_before = env.audit.read_text().count("stop uid=")
    try:
        result = env.run(user, "cells", path, timeout=300)
    finally:
        os.unlink(path)
    assert result["alive_after_shutdown"] is False
    assert not broker_containers(env)
    stops = [line for line in env.audit.read_text().splitlines() if "stop uid=" in line]
    assert len(stops) == stops_before + 1, stops[stops_before:]
    assert f"stop uid={env.uids[user]}({user})" in stops[-1]
    result["audit"] = stops[-1]
    return result


@pytest.mark.parametrize("attack", ["memory", "lifetime", "socket dir", "output", "shutdown"])
def test_through_the_broker_every_way_a_kernel_ends_is_in_the_audit_log(
    broker: BrokerEnv, attack: str
) -> None:
    """A07 memory bomb, E05 time bomb at --max-lifetime, A18 writes into the socket dir,
    A13 output flood, and a plain shutdown: nothing is left, and the audit line names the
    reason. The output budget is the client's relay's to count (the broker never sees the
    channels): its stop request carries the relay's reason, which the audit quotes as the
    client's word, and the notebook gets the kill notice. (A killed client: see
    test_killing_the_client_ends_its_container_within_5_seconds.)"""
    from jupyter_docker_kernel.hardening import RUNTIME_TARGET
    from tests import test_hostile_resources as resources

    cells = {
        "memory": (resources.MEMORY_BOMB, {}),
        "lifetime": (resources.TIME_BOMB % resources.LIFETIME, {"max_lifetime": 5.0}),
        "socket dir": (
            f"import os\nD = {RUNTIME_TARGET!r}\n" + resources.SOCKET_DIR_ATTACKS["files"],
            {},
        ),
        "output": (resources.FLOODS["stdout"][0], {}),
        "shutdown": ("print('bye')", {}),
    }
    budget = size_bytes(hostile_settings()["output_budget"])
    expected = {
        "memory": f"out of memory (limit {resources.MEMORY >> 20} MiB)",
        "lifetime": f"maximum lifetime of {resources.LIFETIME} s reached",
        "socket dir": "reason=its socket dir was misused",
        "output": "reason=stopped by the client (it said: budget exceeded: the kernel sent "
        f"more than {budget} bytes of output in all",
        "shutdown": "reason=the kernel exited with code 0",
    }
    code, extra = cells[attack]
    result = run_cells(broker, USERS[1], [code], hostile_settings(**extra))
    [end] = result["cells"]
    assert end["status"] == ("ok" if attack == "shutdown" else "died"), end
    assert expected[attack] in result["audit"], result["audit"]
    if attack == "output":
        assert "Kernel stopped: output budget of 64m exceeded" in end["out"], end


def test_while_both_users_run_kernels_neither_reaches_the_others(broker: BrokerEnv) -> None:
    """Each user's kernel sockets and connection files (the client's and the broker's
    copy) are out of the other's reach while both kernels run."""
    ann, bob = USERS
    held = {user: broker.hold(user, project_of(user)) for user in USERS}
    try:
        for user, other in ((ann, bob), (bob, ann)):
            info = held[other][1]
            kernel_socket = str(Path(info["sockets"], "k-1"))
            assert broker.run(other, "connect", kernel_socket)["connected"] is True
            assert broker.run(user, "connect", kernel_socket)["connected"] is False
            kernel_dir = Path(info["sockets"]).parent
            for path in (info["connection"], str(RunDir(kernel_dir).connection)):
                assert os.path.exists(path)
                assert broker.run(user, "read", path)["error"] == "PermissionError", path
    finally:
        for proc, info in held.values():
            end_client(proc, info)
    for _, info in held.values():
        wait_gone(info["container"], 10)
