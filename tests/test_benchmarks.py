"""The benchmark's own machinery (benchmarks/): table, process accounting, baseline worker.

No engine: these check what scripts/bench computes, not what it measures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from benchmarks import memory, run, worker


def test_p90_and_summary() -> None:
    series = run.Series([float(x) for x in range(1, 11)])
    assert series.median == 5.5
    assert series.p90 == pytest.approx(9.1)
    assert run.Series([2.0]).p90 == 2.0
    assert run.Series([1.0, 3.0]).summary()["p90"] == pytest.approx(2.8)


def test_counts() -> None:
    assert run.counts("1,10,50") == [1, 10, 50]
    assert run.counts("0") == []
    assert run.counts("") == []
    with pytest.raises(Exception, match="1,10,50"):
        run.counts("ten")


def test_table_puts_the_baseline_under_its_kernel_with_the_ratio() -> None:
    def s(median: float) -> dict[str, float]:
        return {"min": median, "median": median, "p90": median, "max": median, "n": 1}

    result = {
        "rows": {
            "b2b": {
                "metric": "back to back",
                "unit": "s",
                "series": {"pooled@base": s(0.4), "native": s(0.5), "pooled": s(0.2)},
            }
        }
    }
    lines = run.table(result).splitlines()[2:]
    assert [line[51:74].strip() for line in lines] == ["native", "pooled", "pooled@base"]
    pooled = next(line for line in lines if " pooled " in line)
    assert "x0.50" in pooled  # new/base: 0.2 / 0.4
    assert "x0.40 (p90 x0.40)" in pooled  # vs native, median and p90


@pytest.mark.parametrize(
    ("text", "inside"),
    [
        ("12:memory:/docker/" + "a" * 64 + "\n1:name=systemd:/docker/" + "a" * 64, True),
        ("0::/system.slice/docker-" + "b" * 64 + ".scope", True),
        ("0::/machine.slice/libpod-" + "c" * 64 + ".scope/container", True),
        ("0::/user.slice/user-1000.slice/session-2.scope", False),
        ("9:name=systemd:/\n8:pids:/", False),
        ("0::/system.slice/docker.service", False),  # dockerd itself: not a container
    ],
)
def test_container_cgroup(text: str, inside: bool) -> None:
    assert memory.container_cgroup(text) is inside


@pytest.fixture
def tagged_sleep() -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | {memory.TAG_VAR: f"test-{os.getpid()}"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    time.sleep(0.3)  # exec'd: its environ is the new one
    yield proc
    proc.kill()
    proc.wait()


def test_tagged_host_processes_are_found_with_rss_and_pss(
    tagged_sleep: subprocess.Popen[bytes],
) -> None:
    tag = f"test-{os.getpid()}"
    # helpers=False: this run's own resident helpers (of earlier tests) are not the point.
    found = memory.host_processes(tag, exclude={os.getpid()}, helpers=False)
    assert [p.pid for p in found] == [tagged_sleep.pid]
    assert found[0].rss_kib > 1000
    assert 0 < found[0].pss_kib <= found[0].rss_kib
    assert memory.host_processes(tag, exclude={tagged_sleep.pid}, helpers=False) == []
    assert memory.host_processes(tag + "-other", exclude=set(), helpers=False) == []


SPAWN_UNTAGGED = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env={}); "
    "time.sleep(60)"
)


def test_an_untagged_child_of_a_tagged_process_is_counted() -> None:
    """As the resident helper's pool refills are: they get the kernel's client's filtered
    environment (no tag), but they exist for our kernels."""
    tag = f"test-child-{os.getpid()}"
    env = os.environ | {memory.TAG_VAR: tag}
    parent = subprocess.Popen([sys.executable, "-c", SPAWN_UNTAGGED], env=env)
    try:
        time.sleep(0.5)
        found = memory.host_processes(tag, exclude={os.getpid()}, helpers=False)
        assert len(found) == 2
        assert parent.pid in {p.pid for p in found}
    finally:
        for child in memory.ours(tag, {os.getpid(), parent.pid}, helpers=False):
            os.kill(child[0], 9)
        parent.kill()
        parent.wait()


def test_a_resident_helper_of_this_tree_and_base_is_counted_untagged() -> None:
    """One started before the tag was (an earlier run's, still idle) hosts our kernels."""
    from jupyter_docker_kernel.rundir import runtime_base

    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    argv += ["jupyter_docker_kernel.helper", "--base", str(runtime_base())]
    proc = subprocess.Popen(argv, env={})
    try:
        time.sleep(0.3)
        found = memory.host_processes(f"test-none-{os.getpid()}", exclude={os.getpid()})
        assert [(p.pid, p.argv0) for p in found if p.pid == proc.pid] == [(proc.pid, "helper")]
    finally:
        proc.kill()
        proc.wait()


def test_worker_runs_operations_and_reports_their_errors() -> None:
    tree = worker.Tree.spawn("base", sys.executable, {})
    try:
        assert tree.suffix == "@base"
        assert tree.call("drain_pools", kernels=[]) == 0
        with pytest.raises(RuntimeError, match="drain_pools failed in the base tree: TypeError"):
            tree.call("drain_pools", bogus=1)
        assert tree.call("drain_pools", kernels=[]) == 0  # still serving after an error
    finally:
        tree.close()
    assert tree.worker is not None
    assert tree.worker.returncode == 0


def test_baseline_that_is_neither_a_path_nor_a_revision() -> None:
    with pytest.raises(SystemExit, match="neither a directory nor a git revision"):
        worker.prepare_baseline("no-such-revision-or-dir", None)


def test_a_native_row_counts_no_helper_even_a_tagged_one() -> None:
    """An earlier row's client spawned it, so it inherited the tag; native kernels do not
    use it."""
    tag = f"test-tagged-helper-{os.getpid()}"
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "jupyter_docker_kernel.helper"]
    proc = subprocess.Popen(argv, env=os.environ | {memory.TAG_VAR: tag})
    try:
        time.sleep(0.3)
        assert memory.host_processes(tag, exclude={os.getpid()}, helpers=False) == []
        found = memory.host_processes(tag, exclude={os.getpid()}, helpers=True)
        assert [p.argv0 for p in found if p.pid == proc.pid] == ["helper"]
    finally:
        proc.kill()
        proc.wait()


def test_a_provisioner_row_counts_only_a_helper_that_started_during_it() -> None:
    """The provisioner starts no helper (issue 17); an argv row's may still idle, tagged,
    and is not its cost. One that comes up during the row is counted all the same."""
    from jupyter_docker_kernel.rundir import runtime_base

    tag = f"test-since-{os.getpid()}"
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "jupyter_docker_kernel.helper"]
    argv += ["--base", str(runtime_base())]
    earlier = subprocess.Popen(argv, env=os.environ | {memory.TAG_VAR: tag})
    try:
        time.sleep(0.3)
        since = memory.boot_ticks() + 1
        time.sleep(0.05)
        later = subprocess.Popen(argv, env=os.environ | {memory.TAG_VAR: tag})
        try:
            time.sleep(0.3)
            found = memory.host_processes(tag, {os.getpid()}, helpers=False, helpers_since=since)
            assert [p.pid for p in found if p.argv0 == "helper"] == [later.pid]
        finally:
            later.kill()
            later.wait()
    finally:
        earlier.kill()
        earlier.wait()


def test_the_node_rows_skip_cleanly_where_no_node_can_be_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No sshd (or not root): benchmarks.nodes says why and starts nothing (scripts/bench
    --nodes still writes its other rows)."""
    import shutil

    from benchmarks import nodes

    def no_node(name: str) -> None:
        raise AssertionError(f"a node {name} was started")

    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr("tests.nodes.start_node", no_node)
    assert set(nodes.measure(1, 1, 1)) == {"skipped"}


def test_the_helper_floor_is_the_bare_interpreter_then_its_imports_without_ssl() -> None:
    """benchmarks/memory_floor.py (issue 17): the bare interpreter first, then the helper's
    imports step by step, with _lean holding ssl out as it does in the helper."""
    from benchmarks import memory_floor

    result = memory_floor.floor()
    assert result["python -I -S"][0][1] > 0
    rows = result["helper's imports"]
    assert [row[0] for row in rows[1:-1]] == [label for label, _ in memory_floor.STEPS]
    assert rows[-1] == ("ssl loaded", 0, 0)
    assert rows[-2][1] > rows[0][1] > 0  # the imports cost something over the interpreter
