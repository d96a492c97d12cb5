"""hostpython.py: each way we start host-side Python never imports from the cwd (H01).

Real interpreters, no engine: a json.py planted in the cwd leaves a marker if imported.
The docker tests in test_hostile_host.py play the same attack through real clients.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_docker_kernel import hostpython
from jupyter_docker_kernel.kernelspec import LAUNCHER_MODULE

PLANTED = "open({marker!r}, 'w').close()\nfrom os import *  # enough for what runs here\n"


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A cwd holding json.py and logging.py that leave a marker; the marker's path."""
    cwd = tmp_path / "nb"
    cwd.mkdir()
    marker = tmp_path / "imported"
    for name in ("json.py", "logging.py"):
        (cwd / name).write_text(PLANTED.format(marker=str(marker)))
    return cwd, marker


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "argv",
    [
        hostpython.isolated_argv(sys.executable, LAUNCHER_MODULE),
        hostpython.safe_path_argv(sys.executable, LAUNCHER_MODULE),
        hostpython.module_argv(LAUNCHER_MODULE),
    ],
    ids=["isolated", "safe-path", "module_argv"],
)
def test_the_launcher_forms_run_it_without_the_cwds_modules(
    argv: list[str], planted: tuple[Path, Path]
) -> None:
    """`launcher --help` imports json and logging: from the stdlib, not the cwd."""
    cwd, marker = planted
    proc = run([*argv, "--help"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -I -m jupyter_docker_kernel.launcher" in proc.stdout
    assert not marker.exists()


def test_code_argv_runs_code_without_the_cwds_modules(planted: tuple[Path, Path]) -> None:
    cwd, marker = planted
    proc = run(hostpython.code_argv("import json, sys; print(json.dumps(sys.argv[1:]))", "a"), cwd)
    assert proc.stdout == '["a"]\n', proc.stderr
    assert not marker.exists()


def test_the_form_of_earlier_versions_did_import_them(planted: tuple[Path, Path]) -> None:
    """The control: `python -m launcher`, as kernel.json had it, imports the planted json.py."""
    cwd, marker = planted
    run([sys.executable, "-m", LAUNCHER_MODULE, "--help"], cwd)
    assert marker.exists()


def test_isolated_import_works_for_this_install_and_not_for_a_missing_module() -> None:
    assert hostpython.isolated_import_works(sys.executable)
    assert not hostpython.isolated_import_works(sys.executable, "no_such_module_here")
    assert not hostpython.isolated_import_works("/nonexistent/python")
