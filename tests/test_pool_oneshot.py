"""The warm pool serves one-shot clients (issue 11): nbconvert run twice in a row through
the provisioner, the second run's kernel is a warm container.

The provisioner used to refill with a threading.Timer inside the client's process, which
nbconvert ended before it fired: no warm container was ever started for the next run.
Now Container spawns the detached, gated refill at its start, and the client's exit (EOF
on the gate) lets it go.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import cli, kernelspec, pool
from tests.conftest import install_kernel
from tests.kernels import wait_until
from tests.test_pool import warm_ready


def nbconvert(name: str, notebook: Path) -> subprocess.CompletedProcess[str]:
    """One `jupyter nbconvert --execute` run, a process of its own, as a user runs it."""
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("jupyter-nbconvert")),
            "--execute",
            "--to",
            "notebook",
            "--stdout",
            f"--ExecutePreprocessor.kernel_name={name}",
            str(notebook),
        ],
        cwd=notebook.parent,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.docker
def test_nbconvert_twice_the_second_run_gets_a_warm_container(
    kernel_image: str, workdir: Path
) -> None:
    name = "jdk-test-pool-oneshot"
    spec = install_kernel(
        name, kernel_image, "--provisioner", "--no-workdir", "--pool", "1", "--pool-ttl", "120"
    )
    settings = kernelspec.settings_from_kernel_json(json.loads((spec / "kernel.json").read_text()))
    key = pool.pool_key(settings, os.getuid())
    notebook = workdir / "nb.ipynb"
    cell: dict[str, Any] = {"cell_type": "code", "execution_count": None, "metadata": {}}
    cell.update(outputs=[], source="print(6 * 7)")
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}
    notebook.write_text(json.dumps(nb))
    try:
        assert not warm_ready(key), "a warm container of this spec ran before the test"
        first = nbconvert(name, notebook)
        assert first.returncode == 0, first.stderr
        assert "started in container" in first.stderr, first.stderr
        # The refill began when the first client exited; its container gets ready on its own.
        wait_until(lambda: bool(warm_ready(key)), 90)
        second = nbconvert(name, notebook)
        assert second.returncode == 0, second.stderr
        assert "started in warm container" in second.stderr, second.stderr
        assert '"42\\n"' in second.stdout, second.stdout
    finally:
        assert cli.main(["gc", "--pools"]) == 0
        wait_until(lambda: not warm_ready(key), 30)
