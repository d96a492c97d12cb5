"""The test suite's own helpers: running_kernel's leftover check and the failure report.

A check that cannot fail proves nothing: these tests make each one fail on purpose.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any, Literal

import pytest

from jupyter_docker_kernel.launcher import runtime_base
from tests import conftest, kernels


class _Outcome:
    """What pytest hands a hookwrapper after the wrapped hooks ran."""

    def __init__(self, report: pytest.TestReport) -> None:
        self.report = report

    def get_result(self) -> pytest.TestReport:
        return self.report


def report_of(
    when: Literal["setup", "call", "teardown"], outcome: Literal["passed", "failed"]
) -> pytest.TestReport:
    return pytest.TestReport("t.py::t", ("t.py", 0, "t"), {}, outcome, None, when, [])


def run_hook(report: pytest.TestReport) -> None:
    """Drive conftest's hookwrapper around a report, as pluggy does."""
    hook: Any = conftest.pytest_runtest_makereport
    gen: Generator[None, _Outcome, None] = hook(None, None)
    next(gen)
    with pytest.raises(StopIteration):
        gen.send(_Outcome(report))


def test_a_failed_test_reports_each_kernels_launcher_log_and_inspect(tmp_path: Path) -> None:
    """On a failure the report gains the launcher log and the `docker inspect` that
    running_kernel kept; a passing test's report gains nothing; teardown forgets them."""
    log = tmp_path / "launcher.log"
    log.write_text("kernel k1 started in container jdk-k1-abc\n")
    kernels.STARTED.append(
        kernels.StartedKernel("jdk-test", "k1", log, None, inspect='[{"Id": "abc"}]')
    )
    try:
        passed = report_of("call", "passed")
        run_hook(passed)
        assert passed.sections == []

        failed = report_of("call", "failed")
        run_hook(failed)
        sections = dict(failed.sections)
        assert sections[f"kernel jdk-test (k1): launcher log {log}"] == log.read_text()
        assert sections["kernel jdk-test (k1): docker inspect"] == '[{"Id": "abc"}]'

        run_hook(report_of("teardown", "passed"))
        assert kernels.STARTED == []
        assert log.exists()  # the test's own log: not running_kernel's to remove
    finally:
        kernels.STARTED.clear()


@pytest.mark.docker
def test_running_kernel_fails_when_something_of_the_kernel_is_left(
    kernel_name: str, workdir: Path
) -> None:
    """A runtime dir of the kernel still there after shutdown fails running_kernel's
    check (it names what was left); the container itself is gone."""
    planted: list[Path] = []

    def leave_a_runtime_dir() -> None:
        with kernels.running_kernel(kernel_name, workdir, gone_within=1) as (km, _kc):
            planted.append(runtime_base() / f"{kernels.key_of(km)}-planted")
            planted[0].mkdir()

    with pytest.raises(AssertionError, match=r"left: containers \[\], runtime dirs \[.*-planted"):
        leave_a_runtime_dir()
    planted[0].rmdir()
    assert kernels.containers_of(planted[0].name.removesuffix("-planted")) == []
