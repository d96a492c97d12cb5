"""setup.plan / setup.write and readiness.verdict without an engine (pure, no Docker).

The Docker-backed stories (setup against a real image, the probe's refusals) stay in
test_cli.py and test_readiness.py; here the decisions are data a test can read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import cli, config, readiness, setup
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import ImageError, SettingsError
from jupyter_docker_kernel.settings import KernelSettings, Mount


@pytest.fixture(autouse=True)
def no_config_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """No jupyter_docker_kernel_config.py of the machine's leaks into these plans."""
    monkeypatch.setattr(config, "config_dirs", list)


class NoEngine(Engine):
    """An engine that must not be asked (--skip-checks)."""

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the engine was asked: {args}")


def request(name: str = "k", **changes: Any) -> setup.SetupRequest:
    settings = changes.pop("settings", KernelSettings(image="img:1", memory="1g"))
    fields: dict[str, Any] = {"user": True, "skip_checks": True, **changes}
    return setup.SetupRequest(name=name, settings=lambda defaults, previous: settings, **fields)


def test_a_plan_is_data_and_writes_nothing(data_dir: Path) -> None:
    """plan decides (settings, kernel.json, nbgrader lines) without writing or asking the
    engine; write installs what plan decided."""
    planned = setup.plan(request(for_nbgrader=True, cell_timeout=60), NoEngine())
    assert planned.settings.memory == "1g"
    assert planned.kernel_json["display_name"] == "k (container)"
    assert any("timeout = 60" in line for line in planned.nbgrader_lines)
    assert (planned.versions, planned.replaced, planned.findings) == ("", None, [])
    assert not (data_dir / "kernels").exists()
    done = setup.write(planned)
    assert done.path == data_dir / "kernels" / "k"
    assert json.loads((done.path / "kernel.json").read_text()) == planned.kernel_json
    assert done.changes is None


def test_replacing_reports_the_changes(data_dir: Path) -> None:
    """--replace keeps the old spec's settings as `replaced` and write says what changed."""
    setup.write(setup.plan(request(), NoEngine()))
    bigger = KernelSettings(image="img:1", memory="2g")
    done = setup.write(setup.plan(request(replace=True, settings=bigger), NoEngine()))
    assert done.changes == ["--memory 1g -> 2g"]


def test_plan_stops_before_writing_and_says_so(data_dir: Path) -> None:
    """A refusal is our error with what was not done as a field; nothing is written."""
    with pytest.raises(SettingsError) as info:
        setup.plan(request(cell_timeout=60), NoEngine())
    assert info.value.not_done == setup.NOT_WRITTEN
    assert str(info.value) == (
        "--cell-timeout only sets the nbgrader_config.py lines. No kernelspec was written. "
        "Add --for-nbgrader, or leave it out."
    )
    assert not (data_dir / "kernels").exists()


def test_loosenings_are_warnings_in_the_plan(data_dir: Path) -> None:
    """A forced refusal and a plain loosening become the plan's warning lines."""
    loose = KernelSettings(image="img:1", network="bridge")
    planned = setup.plan(request(settings=loose), NoEngine())
    assert planned.warnings == [f.message for f in planned.findings]
    assert any("network bridge" in w for w in planned.warnings)


def test_cli_keeps_no_setup_decisions() -> None:
    """cli.py only parses and prints: setup's checks live in setup.py."""
    for moved in (
        "check_image",
        "check_loosenings",
        "engine_settings",
        "replaced_spec",
        "root_note",
    ):
        assert not hasattr(cli, moved)
        assert hasattr(setup, moved)


# -- readiness.verdict with a scripted engine -----------------------------------------------


class Scripted(Engine):
    """An engine with these runtimes and images; the probe is never reached in these tests."""

    def __init__(self, runtimes: set[str], images: dict[str, dict[str, Any]]):
        super().__init__("docker", host="unix:///nonexistent.sock")
        self._runtimes, self._images = runtimes, images

    def runtimes(self) -> set[str]:
        return self._runtimes

    def image_inspect(self, ref: str) -> dict[str, Any] | None:
        return self._images.get(ref)


IMAGE = {"Config": {"Env": ["PATH=/opt/kernel/bin:/usr/bin"]}}


def test_verdict_fails_on_an_unregistered_runtime_first(tmp_path: Path) -> None:
    found = readiness.verdict(
        Scripted({"runc"}, {}), KernelSettings(image="img:1", runtime="runsc"), tmp_path
    )
    failure = found.failure
    assert failure is not None
    assert failure.name == "runtime"
    assert failure.error is not None
    assert str(failure.error.instead(setup.NOT_WRITTEN)) == (
        "The engine has no runtime 'runsc' (it has: runc). No kernelspec was written. Register "
        "it in /etc/docker/daemon.json (scripts/bootstrap-engine --runsc does this for "
        "gVisor) and restart the engine."
    )
    assert found.probe is None


def test_verdict_fails_on_a_missing_image(tmp_path: Path) -> None:
    found = readiness.verdict(Scripted({"runc"}, {}), KernelSettings(image="gone:1"), tmp_path)
    assert found.failure is not None
    assert isinstance(found.failure.error, ImageError)
    assert "Image 'gone:1' is not present" in found.failure.detail


def test_verdict_refuses_a_mount_setup_needs_force_for_unless_forced(tmp_path: Path) -> None:
    """setup stops at the refused mount (first_fail); forced, it is a WARN."""
    settings = KernelSettings(image="img:1", mounts=(Mount.parse("/var/run/docker.sock:/s", "/"),))
    engine = Scripted({"runc"}, {"img:1": IMAGE})
    refused = readiness.verdict(engine, settings, tmp_path, first_fail=True)
    assert refused.failure is not None
    assert refused.failure.name == "hardening"
    assert refused.failure.fix == "Add --force if you mean it"
    assert refused.probe is None
    forced = readiness.verdict(engine, settings, tmp_path, force=True, run_probe=False)
    assert [r.status for r in forced.results] == ["WARN"]
    assert forced.findings
    assert forced.findings[0].refused
