"""errors.DockerKernelError's fields (what / not_done / fix / detail) and how they read.

Pure: no Docker. doctor and the config loader read the fields instead of re-parsing text,
so the rendering must keep today's messages byte for byte.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from jupyter_docker_kernel import config, doctor
from jupyter_docker_kernel.engine import Engine, explain_run_failure
from jupyter_docker_kernel.errors import DockerKernelError, EngineError, LaunchError, SettingsError
from jupyter_docker_kernel.settings import KernelSettings


@pytest.mark.parametrize(
    ("fields", "reads"),
    [
        (("It failed.",), "It failed."),
        (("no period here",), "no period here"),
        (("X does not exist", "No kernelspec was written", "Create it"),
         "X does not exist. No kernelspec was written. Create it."),
        (("X (see y)", "Nothing was done"), "X (see y). Nothing was done."),
        (("Is it X?", "Nothing was done", "Try y."), "Is it X? Nothing was done. Try y."),
        (("X", "No kernelspec was written", "fix the file"),
         "X. No kernelspec was written; fix the file."),
        (("X", "", "Do y"), "X. Do y."),
    ],
)  # fmt: skip
def test_fields_read_as_the_messages_always_did(fields: tuple[str, ...], reads: str) -> None:
    """what. not_done. fix.; a lower-case fix continues after ';'; one field is verbatim."""
    assert str(DockerKernelError(*fields)) == reads


def test_detail_follows_what() -> None:
    exc = SettingsError("X", "No kernelspec was written", "fix it", detail="Use y.")
    assert str(exc) == "X. Use y. No kernelspec was written; fix it."
    assert (exc.what, exc.not_done, exc.fix, exc.detail) == (
        "X",
        "No kernelspec was written",
        "fix it",
        "Use y.",
    )


def test_instead_restates_what_was_not_done_and_keeps_the_rest() -> None:
    exc = LaunchError("The runtime dir is taken", "No kernel was started", "Set XDG_RUNTIME_DIR")
    other = exc.instead("No kernelspec was written")
    assert type(other) is LaunchError
    assert str(other) == (
        "The runtime dir is taken. No kernelspec was written. Set XDG_RUNTIME_DIR."
    )
    assert other.args == (str(other),)
    assert str(exc).startswith("The runtime dir is taken. No kernel was started.")


def test_an_error_pickles_with_its_message() -> None:
    exc = EngineError("No socket", "Nothing was done", "Start it")
    # Our own bytes, just made: multiprocessing and pytest-xdist pickle errors like this.
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)  # noqa: S301


def test_settings_errors_carry_fields() -> None:
    """A refused setting says what, what was not done and what to do as fields."""
    with pytest.raises(SettingsError) as info:
        KernelSettings(kernel_user="0")
    assert info.value.what == "--kernel-user 0 would run hostile code as root in the container"
    assert info.value.not_done == "No kernelspec was written"
    assert info.value.fix == "Pick an unprivileged uid such as 1000."


def test_the_config_file_keeps_the_settings_advice_as_detail(tmp_path: Path) -> None:
    """The config loader says 'Config file PATH: what', keeps the option's advice, adds its own."""
    path = tmp_path / "jupyter_docker_kernel_config.py"
    path.write_text('c.DockerKernel.mounts = ["nocolon"]\n')
    with pytest.raises(SettingsError) as info:
        config.load_defaults([str(tmp_path)])
    assert (
        info.value.what == f"Config file {path}: --mount 'nocolon' is not HOST:DEST or HOST:DEST:ro"
    )
    assert info.value.detail.startswith("Example: --mount ./data:/data:ro")
    assert (info.value.not_done, info.value.fix) == (
        "No kernelspec was written",
        "fix the file or remove it",
    )


def test_explain_run_failure_unpacks_and_becomes_an_error() -> None:
    failure = explain_run_failure(
        "docker: unknown runtime specified foo.", 125, KernelSettings(runtime="foo")
    )
    what, fix = failure
    exc = failure.error("No kernel was started", LaunchError)
    assert (exc.what, exc.not_done, exc.fix) == (what, "No kernel was started", fix)


class _Refusing(Engine):
    def info(self, timeout: float = 20) -> dict[str, object]:
        raise EngineError(
            "Permission denied (x)", "Nothing was done", "Add your user to the 'docker' group"
        )


def test_doctor_shows_the_engine_errors_what_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor's engine check takes the detail and the fix from the error's fields."""
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/docker")
    checks: list[tuple[object, ...]] = []
    assert doctor._check_engine(_Refusing(), lambda *a: checks.append(a)) is None
    assert checks[-1] == (
        "engine",
        "FAIL",
        "Permission denied (x)",
        "Add your user to the 'docker' group",
    )
