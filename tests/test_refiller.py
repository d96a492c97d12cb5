"""The refiller: the pool refills of a parent's forked children run in one resident
process (refiller.py), gated as a refill process is. No engine: pool.fill_from is replaced
before the refiller is forked, so the refiller runs the replacement, which records where
and when it ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import manage, pool, refiller
from jupyter_docker_kernel.settings import KernelSettings


def wait_for(path: Path, timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return [json.loads(line) for line in path.read_text().splitlines()]
        time.sleep(0.02)
    return []


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The file each refill the refiller runs appends to: its pid, its payload."""
    record = tmp_path / "ran.jsonl"

    def fill_from(payload: str) -> int:
        with record.open("a") as out:
            out.write(json.dumps({"pid": os.getpid(), "payload": payload}) + "\n")
        return 0

    monkeypatch.setattr(pool, "fill_from", fill_from)
    assert refiller.hold()
    try:
        yield record
    finally:
        refiller.release()
    assert pool.REFILLS is None


def test_a_refill_runs_in_the_refiller_only_once_its_gate_opens(ran: Path) -> None:
    assert pool.REFILLS is not None
    sent = pool.REFILLS("payload-1")
    assert wait_for(ran, 0.5) == []  # gated: a claimed kernel is still starting
    sent.open()
    [record] = wait_for(ran, 5)
    assert record["payload"] == "payload-1"
    assert record["pid"] != os.getpid()


def test_a_forked_childs_refills_reach_the_same_refiller(ran: Path) -> None:
    pid = os.fork()
    if pid == 0:  # a grade worker, as ForkRunner forks it
        code = 1
        try:
            assert pool.REFILLS is not None
            pool.REFILLS("from-the-child").open()
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert pool.REFILLS is not None
    pool.REFILLS("from-the-parent").open()
    deadline = time.monotonic() + 5
    records: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(records) < 2:
        records = wait_for(ran, 0.1)
    assert sorted(str(r["payload"]) for r in records) == ["from-the-child", "from-the-parent"]
    assert len({r["pid"] for r in records}) == 1


def test_the_refiller_runs_what_is_gated_and_exits_once_its_holders_are_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    record = tmp_path / "ran.jsonl"

    def fill_from(payload: str) -> int:
        record.write_text(json.dumps({"pid": os.getpid(), "payload": payload}) + "\n")
        return 0

    monkeypatch.setattr(pool, "fill_from", fill_from)
    assert refiller.hold()
    assert pool.REFILLS is not None
    pool.REFILLS("never-opened")
    began = time.monotonic()
    refiller.release()
    [ran] = wait_for(record, pool.GATE_WAIT)  # at its holders' end, not after GATE_WAIT
    assert time.monotonic() - began < pool.GATE_WAIT
    pid = int(str(ran["pid"]))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)
    assert not Path(f"/proc/{pid}").exists()


def test_fill_in_background_sends_to_the_refiller_instead_of_starting_a_process(
    ran: Path,
) -> None:
    settings = KernelSettings(image="jdk-test-none/none:1", workdir="none", pool=1)
    sent = pool.fill_in_background(
        settings, Path("/nonexistent"), manage.placeholder_launch(settings), gated=True
    )
    assert isinstance(sent, refiller.SentRefill)
    sent.close()
    [record] = wait_for(ran, 5)
    payload = json.loads(str(record["payload"]))
    assert payload["settings"]["image"] == "jdk-test-none/none:1"


#: A parent that sends one refill (a slow one) and exits: its stderr is a pipe.
SLOW_PARENT = """\
import sys, time
from jupyter_docker_kernel import pool, refiller
pool.fill_from = lambda payload: time.sleep(5) or 0
assert refiller.hold()
pool.REFILLS("slow").open()
time.sleep(0.2)
refiller.release()
print("parent done", file=sys.stderr)
"""


def test_a_parents_stderr_pipe_ends_with_it_while_a_refill_still_runs() -> None:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SLOW_PARENT], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert "parent done" in proc.stderr
    assert time.monotonic() - began < 4  # not the refill's 5 s
