"""`setup --for-nbgrader` and the nbgrader_config.py block it prints or writes; no Docker.

The end-to-end proof that nbgrader autograde uses the written file is in
test_nbgrader_config.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, grading
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.kernelspec import settings_from_kernel_json
from jupyter_docker_kernel.settings import KernelSettings, size_bytes


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's Jupyter data and config dirs; `setup --user` writes under data."""
    for name in ("data", "config"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "data"


def setup(*extra: str) -> int:
    return cli.main(["setup", "--name", "grader", "--user", "--skip-checks", *extra])


def installed(data_dir: Path) -> KernelSettings:
    spec = json.loads((data_dir / "kernels" / "grader" / "kernel.json").read_text())
    return settings_from_kernel_json(spec)


EXPECTED_LINES = [
    "c.ExecutePreprocessor.kernel_name = 'grader'",
    "c.ExecutePreprocessor.timeout = 120  # seconds per cell",
    "c.ExecutePreprocessor.interrupt_on_timeout = True  # a slow cell fails, grading goes on",
]


def test_for_nbgrader_picks_the_grading_profile(data_dir: Path) -> None:
    """--for-nbgrader: no network, a private copy of the work dir, a 30-minute lifetime."""
    assert setup("--for-nbgrader") == 0
    settings = installed(data_dir)
    assert (settings.network, settings.workdir, settings.max_lifetime) == ("none", "copy", 1800)


def test_for_nbgrader_gives_each_notebook_a_small_output_budget(data_dir: Path) -> None:
    """--for-nbgrader: 64 MiB of output per notebook and 16 MiB per message, not the
    interactive 1 GiB / 64 MiB: what a grader's nbclient holds and writes stays small."""
    assert setup("--for-nbgrader") == 0
    settings = installed(data_dir)
    assert size_bytes(settings.output_budget) == 64 << 20
    assert size_bytes(settings.max_message) == 16 << 20


def test_explicit_budgets_beat_the_grading_profile(data_dir: Path) -> None:
    """--output-budget and --max-message given on the line replace the profile's budgets."""
    assert setup("--for-nbgrader", "--output-budget", "1g", "--max-message", "64m") == 0
    settings = installed(data_dir)
    assert (settings.output_budget, settings.max_message) == ("1g", "64m")


def test_for_nbgrader_prints_the_nbgrader_config_lines(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed lines name the kernel, a 120 s cell timeout and interrupt-on-timeout."""
    assert setup("--for-nbgrader") == 0
    out = capsys.readouterr().out
    assert "\n".join(f"  {line}" for line in EXPECTED_LINES) in out
    assert "Add to nbgrader_config.py" in out


def test_explicit_options_beat_the_profile(data_dir: Path) -> None:
    """--max-lifetime and --cell-timeout given on the line replace the profile's values."""
    assert setup("--for-nbgrader", "--max-lifetime", "600", "--cell-timeout", "30") == 0
    assert installed(data_dir).max_lifetime == 600


def test_profile_beats_the_config_file(data_dir: Path) -> None:
    """A config file's network = bridge (for interactive kernels) does not reach the grader."""
    config = data_dir.parent / "config" / "jupyter_docker_kernel_config.py"
    config.write_text('c.DockerKernel.network = "bridge"\nc.DockerKernel.memory = "1g"\n')
    assert setup("--for-nbgrader") == 0
    settings = installed(data_dir)
    assert (settings.network, settings.memory) == ("none", "1g")


def test_cell_timeout_not_below_the_lifetime_is_refused(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell timeout the kernel's lifetime would cut short: exit 1, nothing written."""
    assert setup("--for-nbgrader", "--max-lifetime", "60", "--cell-timeout", "60") == 1
    assert "is not below --max-lifetime 60 s" in capsys.readouterr().err
    assert not (data_dir / "kernels").exists()


def test_cell_timeout_without_for_nbgrader_is_refused(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cell-timeout alone would do nothing, so it is an error rather than ignored."""
    assert setup("--cell-timeout", "30") == 1
    assert "--cell-timeout only sets the nbgrader_config.py lines" in capsys.readouterr().err


def test_write_nbgrader_config_creates_a_loadable_file(data_dir: Path, tmp_path: Path) -> None:
    """A new file gets get_config() and the block; traitlets loads the three values from it."""
    from traitlets.config.loader import PyFileConfigLoader

    path = tmp_path / "nbgrader_config.py"
    assert setup("--write-nbgrader-config", str(path)) == 0
    loaded = PyFileConfigLoader(path.name, path=str(tmp_path)).load_config()
    assert dict(loaded["ExecutePreprocessor"]) == {
        "kernel_name": "grader",
        "timeout": 120,
        "interrupt_on_timeout": True,
    }
    assert installed(data_dir).workdir == "copy"  # implies --for-nbgrader


def test_write_nbgrader_config_keeps_the_files_other_lines(tmp_path: Path) -> None:
    """An existing file keeps every line; our marked block is appended after them."""
    path = tmp_path / "nbgrader_config.py"
    mine = "c = get_config()\nc.CourseDirectory.course_id = 'course101'\n"
    path.write_text(mine)
    grading.check_config_file(path)
    assert grading.write_config_file(path, EXPECTED_LINES) == "Appended to"
    text = path.read_text()
    assert text.startswith(mine)
    assert text.endswith("\n".join([grading.BEGIN, *EXPECTED_LINES, grading.END]) + "\n")


def test_rewriting_replaces_our_block_only(tmp_path: Path) -> None:
    """Running setup again replaces the earlier block instead of adding a second one."""
    path = tmp_path / "nbgrader_config.py"
    path.write_text("c.CourseDirectory.course_id = 'x'\n")
    grading.write_config_file(path, grading.config_lines("old", 60))
    path.write_text(path.read_text() + "c.Exchange.root = '/srv'\n")
    grading.check_config_file(path)  # our own block is not a clash
    assert grading.write_config_file(path, EXPECTED_LINES) == "Updated"
    text = path.read_text()
    assert text.count(grading.BEGIN) == 1
    assert "'old'" not in text
    assert text.startswith("c.CourseDirectory.course_id = 'x'\nc.Exchange.root = '/srv'\n")


def test_a_file_that_already_sets_the_kernel_is_refused_unchanged(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kernel_name set by hand: exit 1 naming the line; no spec written, file untouched."""
    path = tmp_path / "nbgrader_config.py"
    path.write_text("c = get_config()\nc.ExecutePreprocessor.kernel_name = 'python3'\n")
    before = path.read_text()
    assert setup("--write-nbgrader-config", str(path)) == 1
    err = capsys.readouterr().err
    assert "line 2: c.ExecutePreprocessor.kernel_name = 'python3'" in err
    assert path.read_text() == before
    assert not (data_dir / "kernels").exists()


def test_write_nbgrader_config_into_a_missing_dir_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    """A path whose directory does not exist is refused before anything is written."""
    with pytest.raises(SettingsError, match="does not exist"):
        grading.check_config_file(tmp_path / "nope" / "nbgrader_config.py")
    assert setup("--write-nbgrader-config", str(tmp_path / "nope" / "nbgrader_config.py")) == 1
    assert not (data_dir / "kernels").exists()
