"""kernelspec.py: settings <-> kernel.json, names, and installing where Jupyter looks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import __version__, hostpython
from jupyter_docker_kernel.errors import KernelSpecError
from jupyter_docker_kernel.kernelspec import (
    LAUNCHER_MODULE,
    METADATA_KEY,
    SETTINGS_ENV,
    build_kernel_json,
    find_ours,
    install,
    needs_upgrade,
    settings_from_kernel_json,
    upgrade,
    upgraded,
    validate_name,
)
from jupyter_docker_kernel.settings import KernelSettings, Mount

SETTINGS = KernelSettings(
    image="course/py:1",
    mounts=(Mount("/data", "/data", read_only=True),),
    env=(("A", "1 2"),),
    memory="1g",
    docker_args=("--shm-size", "1g"),
)


# -- build_kernel_json ----------------------------------------------------------------------


def test_argv_runs_our_launcher_isolated_with_the_connection_file() -> None:
    """argv is `PYTHON -I -m launcher -f {connection_file}`: -I keeps the notebook's
    directory (the cwd) off sys.path; the settings are not in argv, where `ps` shows them."""
    argv = build_kernel_json(SETTINGS, display_name="D")["argv"]
    assert argv == [sys.executable, "-I", "-m", LAUNCHER_MODULE, "-f", "{connection_file}"]


def test_argv_without_isolation_drops_the_cwd_instead() -> None:
    """For a package only the user's site-packages provide (-I would hide it), argv runs
    the launcher through hostpython's safe-path form."""
    argv = build_kernel_json(SETTINGS, display_name="D", isolated=False)["argv"]
    assert argv[1] == "-c"
    assert argv[2].startswith(hostpython.SAFE_PATH_PREFIX)
    assert LAUNCHER_MODULE in argv[2]
    assert argv[3:] == ["-f", "{connection_file}"]
    assert hostpython.argv_is_isolated(argv)


def test_argv_python_can_be_chosen() -> None:
    """python= replaces the host interpreter in argv[0]."""
    assert build_kernel_json(SETTINGS, display_name="D", python="/opt/py")["argv"][0] == "/opt/py"


def test_embedded_settings_are_to_dict_as_json() -> None:
    """The settings in env are exactly settings.to_dict() as JSON."""
    env = build_kernel_json(SETTINGS, display_name="D")["env"]
    assert json.loads(env[SETTINGS_ENV]) == SETTINGS.to_dict()


def test_embedded_settings_hide_dollars_and_placeholders_from_clients() -> None:
    """Clients substitute $NAME in env values and {name} in argv items: the JSON text
    holds neither, and decodes back to the very values."""
    settings = KernelSettings(env=(("A", "$HOME ${PATH} {connection_file}"),))
    text = build_kernel_json(settings, display_name="D")["env"][SETTINGS_ENV]
    assert "$" not in text
    assert "{connection_file}" not in text
    assert (
        settings_from_kernel_json({"env": {SETTINGS_ENV: text}, "metadata": {METADATA_KEY: {}}})
        == settings
    )


def test_settings_round_trip_through_kernel_json_file() -> None:
    """Settings written into kernel.json (through JSON on disk) read back equal."""
    data = json.loads(json.dumps(build_kernel_json(SETTINGS, display_name="D")))
    assert settings_from_kernel_json(data) == SETTINGS


def test_kernel_json_fields() -> None:
    """display name, interrupt mode, python language, our metadata and no debugger."""
    data = build_kernel_json(SETTINGS, display_name="Course", interrupt_mode="message")
    assert {k: v for k, v in data.items() if k not in ("argv", "env")} == {
        "display_name": "Course",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            METADATA_KEY: {"version": __version__, "image": "course/py:1"},
            "debugger": False,
        },
    }


def test_custom_kernel_cmd_claims_no_language() -> None:
    """With a custom kernel command the language is unknown, so it is left empty."""
    settings = KernelSettings(kernel_cmd=("irkernel", "{connection_file}"))
    assert build_kernel_json(settings, display_name="R")["language"] == ""


@pytest.mark.parametrize("mode", ["signal", "message"])
def test_interrupt_mode_accepted(mode: str) -> None:
    """Jupyter's two interrupt modes are accepted and written."""
    assert (
        build_kernel_json(SETTINGS, display_name="D", interrupt_mode=mode)["interrupt_mode"] == mode
    )


def test_interrupt_mode_other_is_refused() -> None:
    """Any other interrupt mode is a KernelSpecError naming it and the valid ones."""
    with pytest.raises(KernelSpecError, match="'sigint' is not one of signal, message"):
        build_kernel_json(SETTINGS, display_name="D", interrupt_mode="sigint")


# -- validate_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("course-py", "course-py"), ("py3.11_x", "py3.11_x"), ("Course-PY", "course-py")],
)
def test_valid_name_is_lower_cased(name: str, expected: str) -> None:
    """Letters, digits, '.', '_' and '-' are valid; the name is lower-cased as Jupyter does."""
    assert validate_name(name) == expected


@pytest.mark.parametrize("name", ["my kernel", "a/b", "", "ké", "x;rm", "../up"])
def test_invalid_name_is_refused_with_example(name: str) -> None:
    """Other characters (or none) are refused; the message quotes the name, gives an example."""
    with pytest.raises(KernelSpecError, match="--name course-py") as info:
        validate_name(name)
    assert f"'{name}'" in str(info.value)


# -- install / find_ours --------------------------------------------------------------------


def test_install_into_prefix_writes_kernel_json(tmp_path: Path) -> None:
    """install(prefix=P) writes P/share/jupyter/kernels/NAME/kernel.json with our dict."""
    data = build_kernel_json(SETTINGS, display_name="D")
    path = install("Course", data, user=False, prefix=str(tmp_path), replace=False)
    assert path == tmp_path / "share" / "jupyter" / "kernels" / "course"
    assert json.loads((path / "kernel.json").read_text()) == data


def test_install_over_existing_needs_replace(tmp_path: Path) -> None:
    """A second install of the same name fails, says '--replace', and leaves the first intact."""
    first = build_kernel_json(SETTINGS, display_name="first")
    path = install("k", first, user=False, prefix=str(tmp_path), replace=False)
    with pytest.raises(KernelSpecError, match=r"already exists.*--replace"):
        install("k", build_kernel_json(SETTINGS, display_name="second"), user=False,
                prefix=str(tmp_path), replace=False)  # fmt: skip
    assert json.loads((path / "kernel.json").read_text()) == first


def test_install_with_replace_overwrites(tmp_path: Path) -> None:
    """With replace=True the existing spec is overwritten."""
    install("k", build_kernel_json(SETTINGS, display_name="first"), user=False,
            prefix=str(tmp_path), replace=False)  # fmt: skip
    second = build_kernel_json(SETTINGS, display_name="second")
    path = install("k", second, user=False, prefix=str(tmp_path), replace=True)
    assert json.loads((path / "kernel.json").read_text()) == second


def test_install_refuses_invalid_name_before_writing(tmp_path: Path) -> None:
    """An invalid name writes nothing at all."""
    with pytest.raises(KernelSpecError):
        install("a b", {}, user=False, prefix=str(tmp_path), replace=False)
    assert list(tmp_path.iterdir()) == []


def test_user_install_lands_in_the_jupyter_data_dir(data_dir: Path) -> None:
    """user=True installs under JUPYTER_DATA_DIR/kernels."""
    path = install("k", build_kernel_json(SETTINGS, display_name="D"), user=True, prefix=None,
                   replace=False)  # fmt: skip
    assert path == data_dir / "kernels" / "k"


def test_find_ours_finds_our_spec_and_not_foreign_ones(data_dir: Path) -> None:
    """find_ours() lists the specs we wrote, by name, and skips other kernels' specs."""
    ours = install("ours", build_kernel_json(SETTINGS, display_name="D"), user=True, prefix=None,
                   replace=False)  # fmt: skip
    foreign = data_dir / "kernels" / "foreign"
    foreign.mkdir()
    (foreign / "kernel.json").write_text(json.dumps({"argv": ["python"], "display_name": "F"}))
    found = find_ours()
    assert found.get("ours") == ours
    assert "foreign" not in found


def test_find_ours_skips_unreadable_kernel_json(data_dir: Path) -> None:
    """A spec dir whose kernel.json is not JSON is skipped, not an error."""
    broken = data_dir / "kernels" / "broken"
    broken.mkdir(parents=True)
    (broken / "kernel.json").write_text("{not json")
    assert "broken" not in find_ours()


# -- settings_from_kernel_json --------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]},
        {"argv": ["python", "--settings", "{}"], "metadata": {}},
        {"argv": ["python"], "metadata": {METADATA_KEY: {}}},
        {},
    ],
    ids=["ipykernel", "no-metadata", "no-settings", "empty"],
)
def test_foreign_kernel_json_is_refused(data: dict[str, Any]) -> None:
    """A kernel.json we did not write raises KernelSpecError saying so."""
    with pytest.raises(KernelSpecError, match="not written by jupyter-docker-kernel"):
        settings_from_kernel_json(data)


def test_embedded_settings_that_are_not_json_are_refused() -> None:
    """Hand-broken settings JSON is a KernelSpecError, not a traceback."""
    data = build_kernel_json(SETTINGS, display_name="D")
    data["env"][SETTINGS_ENV] = "{broken"
    with pytest.raises(KernelSpecError, match="not JSON"):
        settings_from_kernel_json(data)


@pytest.mark.parametrize(
    "argv",
    [["p", "--settings"], ["p", "--settings", "null"], ["p", "--settings", "[1]"],
     ["p", "--settings", '"x"']],
    ids=["missing", "null", "list", "string"],
)  # fmt: skip
def test_embedded_settings_that_are_not_an_object_are_refused(argv: list[str]) -> None:
    """A missing or non-object --settings value is a KernelSpecError saying so."""
    with pytest.raises(KernelSpecError, match="settings"):
        settings_from_kernel_json({"argv": argv, "metadata": {METADATA_KEY: {}}})


# -- kernelspecs of earlier versions -----------------------------------------------------------


def old_kernel_json(settings: KernelSettings, python: str = sys.executable) -> dict[str, Any]:
    """kernel.json exactly as versions before the isolation fix wrote it: settings in argv
    (only `{` escaped) and `python -m launcher`, which imports from the notebook's dir."""
    data = build_kernel_json(settings, display_name="Old", python=python)
    text = json.dumps(settings.to_dict(), sort_keys=True, separators=(",", ":"))
    text = text.replace("{connection_file}", "\\u007bconnection_file}")
    data["argv"] = [python, "-m", LAUNCHER_MODULE, "--settings", text, "-f", "{connection_file}"]
    del data["env"]
    return data


OLD_SETTINGS = KernelSettings(env=(("TOKEN", "$ecret {connection_file}"),), memory="1g")


def test_kernel_json_of_earlier_versions_still_reads_back() -> None:
    """The launcher and the provisioner still read settings from an old spec's argv."""
    assert settings_from_kernel_json(old_kernel_json(OLD_SETTINGS)) == OLD_SETTINGS


def test_earlier_versions_need_an_upgrade_and_current_ones_do_not() -> None:
    assert needs_upgrade(old_kernel_json(OLD_SETTINGS))
    assert not needs_upgrade(build_kernel_json(OLD_SETTINGS, display_name="D"))
    assert not needs_upgrade(build_kernel_json(OLD_SETTINGS, display_name="D", isolated=False))


def test_upgraded_spec_is_isolated_and_keeps_everything_else() -> None:
    """argv in the current form, settings (with `$` and `{`) moved to env unchanged; names,
    metadata, other env entries and --debug stay."""
    old = old_kernel_json(OLD_SETTINGS, python="/opt/venv/bin/python")
    old["argv"].append("--debug")
    old["env"] = {"OTHER": "1"}
    new = upgraded(old, isolated=True)
    assert new["argv"] == [
        *("/opt/venv/bin/python", "-I", "-m", LAUNCHER_MODULE),
        *("-f", "{connection_file}", "--debug"),
    ]
    assert new["env"]["OTHER"] == "1"
    assert "$" not in new["env"][SETTINGS_ENV]
    assert settings_from_kernel_json(new) == OLD_SETTINGS
    rest = {k: v for k, v in new.items() if k not in ("argv", "env")}
    assert rest == {k: v for k, v in old.items() if k not in ("argv", "env")}
    assert not needs_upgrade(new)


def test_upgrade_rewrites_the_file_in_place_once(tmp_path: Path) -> None:
    """upgrade() replaces kernel.json (its mode kept) and is a no-op the second time."""
    (tmp_path / "kernel.json").write_text(json.dumps(old_kernel_json(OLD_SETTINGS)))
    (tmp_path / "kernel.json").chmod(0o640)
    assert upgrade(tmp_path)
    data = json.loads((tmp_path / "kernel.json").read_text())
    assert data["argv"][1:3] == ["-I", "-m"]
    assert settings_from_kernel_json(data) == OLD_SETTINGS
    assert (tmp_path / "kernel.json").stat().st_mode & 0o777 == 0o640
    assert not upgrade(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernel.json"]


@pytest.mark.parametrize(
    ("argv", "isolated"),
    [
        (["p", "-m", "m"], False),
        (["p", "-I", "-m", "m"], True),
        (["p", "-P", "-m", "m"], True),
        (["p", "-IB", "-m", "m"], True),
        (["p", "-B", "-m", "m"], False),
        (["p", "-c", "import runpy"], False),
        (["p", "-c", hostpython.SAFE_PATH_PREFIX + "import runpy"], True),
        (["p", "m.py"], False),
        (["p"], False),
    ],
)
def test_argv_is_isolated(argv: list[str], isolated: bool) -> None:
    """Which kernel.json argv forms keep the cwd off sys.path (doctor and setup ask)."""
    assert hostpython.argv_is_isolated(argv) is isolated
