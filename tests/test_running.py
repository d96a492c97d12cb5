"""`ps` and `logs`: running kernels as the engine reports them, and the output and exit
reason the launcher keeps for each kernel (kernel_log.py).

The pure parts (the kept log's size cap and permissions, the exit verdict, pruning) run
without an engine; the story runs two real kernels through jupyter_client.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import cli, kernel_log, reaper, running
from jupyter_docker_kernel.engine import Engine, cli_size
from jupyter_docker_kernel.launcher import alive, process_start_time, runtime_base
from jupyter_docker_kernel.provisioner import DockerProvisioner
from tests.conftest import TEST_KERNEL, install_kernel
from tests.kernels import (
    execute,
    kernel_key,
    launcher_process,
    running_kernel,
    wait_until,
)

ME = {"launcher_pid": os.getpid(), "launcher_start": process_start_time(os.getpid())}


def kept(base: Path, name: str, **record: Any) -> kernel_log.KernelLog:
    log = kernel_log.KernelLog.create(base, name, {"kernel_id": name[4:], **ME, **record})
    assert log is not None
    return log


# -- the kept log -------------------------------------------------------------------------------


def test_kept_output_is_private_and_keeps_only_its_end(tmp_path: Path) -> None:
    log = kept(tmp_path, "jdk-k1-abc")
    for i in range(40):
        log.write(f"{i:04d}".encode() * (1 << 10))  # 4 KiB a chunk, 160 KiB in all
    output = kernel_log.read_tail(log.output_path, 1 << 30)
    assert len(output) <= 2 * kernel_log.TAIL_KEEP
    assert output.endswith(b"0039" * 1024)
    assert b"0000" not in output
    assert stat.S_IMODE(os.stat(tmp_path / kernel_log.LOG_DIR).st_mode) == 0o700
    for path in (log.output_path, log.record_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_unwritable_log_dir_does_not_stop_a_kernel(tmp_path: Path) -> None:
    (tmp_path / kernel_log.LOG_DIR).write_text("not a directory")
    assert kernel_log.KernelLog.create(tmp_path, "jdk-k1-abc", {}) is None


@pytest.mark.parametrize(
    ("record", "output", "says"),
    [
        ({**ME}, b"", "running"),
        ({"launcher_pid": 1, "launcher_start": "1"}, b"", "ended without a recorded exit"),
        (
            {"ended": 1.0, "exit_code": 0, "exit_reason": "", "ran": 3.0},
            b"",
            "exited with code 0 after 3.0 s: ended normally",
        ),
        (
            {"ended": 1.0, "exit_code": 137, "exit_reason": "", "ran": 9.0},
            b"jupyter-docker-kernel: kernel killed: out of memory (limit 268435456) after 9 s\n",
            "inside the container: kernel killed: out of memory (limit 268435456)",
        ),
        (
            {"ended": 1.0, "exit_code": 137, "exit_reason": "", "memory": "256m"},
            b"",
            "SIGKILL, most likely out of memory (limit 256m)",
        ),
        (
            {"ended": 1.0, "exit_code": 0, "exit_reason": "stopped by the Jupyter client"},
            b"",
            "exited with code 0: stopped by the Jupyter client",
        ),
    ],
)
def test_status_says_how_the_kernel_ended(record: dict[str, Any], output: bytes, says: str) -> None:
    assert says in running.status(record, output)


def test_prune_removes_old_ended_and_orphaned_logs_and_keeps_the_rest(tmp_path: Path) -> None:
    old_ended = kept(tmp_path, "jdk-old-1")
    old_ended.finish(0, "", 1.0)
    fresh_ended = kept(tmp_path, "jdk-new-1")
    fresh_ended.finish(0, "", 1.0)
    live = kept(tmp_path, "jdk-live-1")
    orphan = kept(tmp_path, "jdk-orphan-1", launcher_pid=1, launcher_start="1")
    later = time.time() + 10
    removed = kernel_log.prune(tmp_path, alive, keep=60, now=later)
    assert sorted(Path(p).name for p in removed) == []  # nothing is a minute old yet
    old_ended.update(ended=later - 100)
    os.utime(orphan.record_path, (later - 100, later - 100))
    os.utime(orphan.output_path, (later - 100, later - 100))
    removed = kernel_log.prune(tmp_path, alive, keep=60, now=later)
    assert sorted(Path(p).name for p in removed) == ["jdk-old-1.json", "jdk-orphan-1.json"]
    left = sorted(p.name for p in (tmp_path / kernel_log.LOG_DIR).iterdir())
    assert left == ["jdk-live-1.json", "jdk-live-1.log", "jdk-new-1.json", "jdk-new-1.log"]
    assert live.record_path.exists()


def test_a_kernels_end_prunes_the_kept_logs_at_most_once_per_interval(tmp_path: Path) -> None:
    """Container.finish prunes through prune_now_and_then: a second end within PRUNE_EVERY
    reads no records (a day of grading keeps thousands); once the interval passed it does."""
    long_ago = time.time() - 2 * kernel_log.KEEP_AFTER_EXIT
    first = kept(tmp_path, "jdk-first-1")
    first.finish(0, "", 1.0)
    first.update(ended=long_ago)
    assert [Path(p).name for p in kernel_log.prune_now_and_then(tmp_path, alive)] == [
        "jdk-first-1.json"
    ]
    second = kept(tmp_path, "jdk-second-1")
    second.finish(0, "", 1.0)
    second.update(ended=long_ago)
    assert kernel_log.prune_now_and_then(tmp_path, alive) == []
    assert second.record_path.exists()
    stamp = tmp_path / kernel_log.LOG_DIR / kernel_log.PRUNED_STAMP
    os.utime(stamp, (time.time() - kernel_log.PRUNE_EVERY - 1,) * 2)
    assert [Path(p).name for p in kernel_log.prune_now_and_then(tmp_path, alive)] == [
        "jdk-second-1.json"
    ]


def test_logs_finds_a_kernel_by_container_kernel_id_or_prefix_and_refuses_ambiguity(
    tmp_path: Path,
) -> None:
    kept(tmp_path, "jdk-6c1a2b-aaa111", container_id="0123456789abcdef").write(b"hello\n")
    kept(tmp_path, "jdk-6c1a9f-bbb222")
    for query in ("jdk-6c1a2b-aaa111", "6c1a2b", "6c1a2", "0123456789"):
        assert running.find_logs(query, tmp_path).output == b"hello\n", query
    with pytest.raises(Exception, match="matches 2 kernels"):
        running.find_logs("6c1a", tmp_path)
    with pytest.raises(Exception, match="No kept log"):
        running.find_logs("nosuch", tmp_path)


@pytest.mark.parametrize(
    ("text", "size"), [("42.5MiB", 44564480), ("2GiB", 2 << 30), ("512kB", 512 << 10), ("?", None)]
)
def test_stats_sizes_are_read_as_bytes(text: str, size: int | None) -> None:
    assert cli_size(text) == size


def test_ps_table_marks_warm_containers_and_shows_usage_against_limits() -> None:
    common: dict[str, Any] = {
        "engine": "",
        "image": "img",
        "cpus": 1.0,
        "pids_limit": 512,
        "memory_limit": 2 << 30,
    }
    kernel = running.RunningKernel(
        container="jdk-k1-abc",
        container_id="0123456789ab",
        kind="kernel",
        kernel_id="k1",
        kernelspec="course-py",
        uptime=3725.0,
        memory_used=36 << 20,
        pids=16,
        client_pid=4242,
        workdir="/home/u/project/notebooks",
        **common,
    )
    warm = running.RunningKernel(
        container="jdk-pool-1234-abcd",
        container_id="ba9876543210",
        kind="warm",
        kernel_id="",
        kernelspec="",
        uptime=5.0,
        memory_used=None,
        pids=None,
        client_pid=None,
        workdir="",
        **common,
    )
    header, first, second = cli.format_ps([kernel, warm], [])
    assert header.split() == [
        "KERNELSPEC",
        "CONTAINER",
        "ID",
        "UP",
        "MEMORY",
        "PIDS",
        "CLIENT",
        "NOTEBOOK",
        "DIR",
    ]
    assert first.split() == [
        "course-py",
        "jdk-k1-abc",
        "0123456789ab",
        "1h02m",
        "36M/2.0G",
        "16/512",
        "4242",
        "/home/u/project/notebooks",
    ]
    assert second.split()[:2] == ["(warm", "pool)"]
    assert "?/2.0G" in second
    assert cli.format_ps([], ["x did not answer"]) == [
        "No kernels of jupyter-docker-kernel are running.",
        "note: x did not answer",
    ]


def test_ps_table_names_each_kernels_node_in_a_node_column() -> None:
    """Once a kernel runs on a remote node, a NODE column says where each one runs ("-":
    this host); no per-engine lines are added for nodes."""
    common: dict[str, Any] = {
        "image": "img",
        "cpus": 1.0,
        "pids_limit": 512,
        "memory_limit": 2 << 30,
        "kind": "kernel",
        "uptime": 5.0,
        "memory_used": None,
        "pids": None,
        "client_pid": None,
        "workdir": "",
    }
    here = running.RunningKernel(
        engine="", container="jdk-k1-a", container_id="1", kernel_id="k1", kernelspec="py", **common
    )
    there = running.RunningKernel(
        engine="ssh://u@node1",
        container="jdk-k2-b",
        container_id="2",
        kernel_id="k2",
        kernelspec="py",
        **common,
    )
    header, first, second = cli.format_ps([here, there], [])
    assert header.split()[:3] == ["KERNELSPEC", "CONTAINER", "NODE"]
    assert first.split()[:3] == ["py", "jdk-k1-a", "-"]
    assert second.split()[:3] == ["py", "jdk-k2-b", "ssh://u@node1"]


# -- against the real engine ---------------------------------------------------------------------


@pytest.mark.docker
def test_gc_keeps_the_logs_of_running_and_recent_kernels(engine: Engine) -> None:
    """gc removes runtime dirs without a live launcher; the logs dir is not one of them."""
    base = runtime_base()
    log = kept(base, "jdk-gc-test-1")
    try:
        log.record_path.parent.touch()
        os.utime(base / kernel_log.LOG_DIR, (0, 0))  # older than gc's grace for new dirs
        result = reaper.collect(engine, dry_run=True)
        assert str(base / kernel_log.LOG_DIR) not in result.dirs
        assert str(log.record_path) not in result.logs
    finally:
        log.record_path.unlink()
        log.output_path.unlink()


@pytest.mark.docker
def test_ps_shows_two_running_kernels_with_their_limits_memory_and_client(
    kernel_name: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The story: two kernels start through jupyter_client; `ps --json` lists both with the
    kernelspec, memory used under the 2 GiB limit, pids, this process as the client and
    the notebook directory; `ps` shows the same as a table; one prints to fd 1 and `logs`
    shows it; after a normal shutdown `logs` says so."""
    with (
        running_kernel(kernel_name, workdir) as first,
        running_kernel(kernel_name, workdir) as second,
    ):
        execute(first[1], "import os; os.write(1, b'written-to-fd-1 by the kernel\\n')")
        assert cli.main(["ps", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["kernels"]
        ours = {k["kernel_id"]: k for k in listed if k["workdir"] == str(workdir)}
        ids = {kernel_key(first[0]), kernel_key(second[0])}
        assert set(ours) == ids, listed
        for k in ours.values():
            assert k["kernelspec"] == TEST_KERNEL
            assert k["kind"] == "kernel"
            assert k["memory_limit"] == 2 << 30
            assert 10 << 20 < k["memory_used"] < k["memory_limit"]
            assert 0 < k["pids"] <= k["pids_limit"] == 512
            assert k["client_pid"] == os.getpid()
            assert k["uptime"] is not None
            assert k["uptime"] >= 0
        assert cli.main(["ps"]) == 0
        table = capsys.readouterr().out
        for k in ours.values():
            assert k["container"] in table
        assert "/2.0G" in table
        assert str(workdir) in table
        key = kernel_key(first[0])
        wait_until(lambda: b"written-to-fd-1" in running.find_logs(key).output, 10)
        assert cli.main(["logs", key]) == 0
        shown = capsys.readouterr().out
        assert "written-to-fd-1 by the kernel" in shown
        assert f"({TEST_KERNEL})" in shown
        assert ": running" in shown.splitlines()[0]
    launcher_gone = running.find_logs(kernel_key(first[0]))
    wait_until(lambda: running.find_logs(kernel_key(first[0])).status != "running", 10)
    assert cli.main(["logs", kernel_key(first[0])]) == 0
    shown = capsys.readouterr().out.splitlines()[0]
    assert "exited with code 0" in shown, shown
    assert "shut down" in shown, shown
    assert launcher_gone.record["workdir"] == str(workdir)


@pytest.mark.docker
def test_logs_says_a_kernel_was_killed_out_of_memory(
    kernel_image: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install_kernel("jdk-test-oom", kernel_image, "--memory", "256m")
    capsys.readouterr()
    with running_kernel("jdk-test-oom", workdir) as (km, kc):
        launcher = launcher_process(km)
        kc.execute("x = bytearray(1 << 30)")
        wait_until(lambda: launcher.poll() is not None, 60)
    assert cli.main(["logs", kernel_key(km)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "exited with code 137" in first, first
    assert "inside the container: kernel killed: out of memory (limit 256 MiB)" in first, first


@pytest.mark.docker
def test_ps_and_logs_cover_kernels_the_provisioner_runs(
    kernel_image: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --provisioner the server itself runs the container: ps names this process as
    the client, and logs has the kernel's fd-1 output and its exit."""
    install_kernel("jdk-test-provisioner", kernel_image, "--provisioner")
    with running_kernel("jdk-test-provisioner", workdir) as (km, kc):
        assert isinstance(km.provisioner, DockerProvisioner)
        key = km.provisioner.key
        execute(kc, "import os; os.write(1, b'provisioned fd-1 output\\n')")
        capsys.readouterr()
        assert cli.main(["ps", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["kernels"]
        mine = next((k for k in listed if k["kernel_id"] == key), None)
        assert mine is not None, (key, listed)
        assert mine["kernelspec"] == "jdk-test-provisioner"
        assert mine["client_pid"] == os.getpid()
        wait_until(lambda: b"provisioned fd-1" in running.find_logs(key).output, 10)
    wait_until(lambda: running.find_logs(key).status != "running", 10)
    assert "exited with code" in running.find_logs(key).status


def test_logs_shows_the_kernels_control_bytes_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kernel's raw output may hold terminal escapes (retitle, clear, fake colours):
    `logs` prints them as \\xNN, as the server log does, never raw."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    log = kept(runtime_base(), "jdk-esc-abc123")
    log.write(b"before\x1b]0;pwned\x07\x1b[2Jafter\n")
    assert cli.main(["logs", "esc"]) == 0
    out = capsys.readouterr().out
    assert "before\\x1b]0;pwned\\x07\\x1b[2Jafter" in out
    assert "\x1b" not in out
    assert cli.main(["logs", "esc", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "\x1b" not in data["output"]
    assert data["status"] == "running"
