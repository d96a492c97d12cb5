"""cli.main(argv): exit codes and what users read, for what needs no container engine."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from jupyter_docker_kernel import __version__, cli
from jupyter_docker_kernel.kernelspec import settings_from_kernel_json
from jupyter_docker_kernel.settings import KernelSettings, Mount
from tests.conftest import needs_docker_cli


def spec_dirs(data_dir: Path) -> list[str]:
    kernels = data_dir / "kernels"
    return sorted(p.name for p in kernels.iterdir()) if kernels.exists() else []


def one_error_line(err: str) -> str:
    """stderr must be exactly one 'error: ...' line; returns it."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# -- the top level --------------------------------------------------------------------------


def test_version_prints_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the program name and version and exits 0."""
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"jupyter-docker-kernel {__version__}"


def test_no_command_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a subcommand main prints the help (listing the commands) and returns 2."""
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: jupyter-docker-kernel")
    assert all(command in out for command in ("setup", "image", "gc"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["setup", "--name", "x", "--bogus"], "unrecognized arguments: --bogus. "
         "See 'jupyter-docker-kernel setup --help'."),
        (["setup"], "the following arguments are required: --name. "
         "See 'jupyter-docker-kernel setup --help'."),
        (["setup", "--name", "x", "--cpus", "two"], "argument --cpus: invalid float value: "
         "'two'. See 'jupyter-docker-kernel setup --help'."),
        (["image", "build", "--bogus"], "See 'jupyter-docker-kernel image build --help'."),
        (["nosuch"], "invalid choice: 'nosuch'"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line_naming_the_help_to_read(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command line argparse refuses: exit 2, one 'error:' line that names the option and
    the --help to read, no usage wall."""
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in one_error_line(captured.err)
    assert captured.out == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_and_after_the_subcommand(
    where: str, data_dir: Path, no_engine: None
) -> None:
    """--debug works where people type it, after the subcommand too: our error then comes
    as a traceback."""
    from jupyter_docker_kernel.errors import KernelSpecError

    argv = ["remove", "nosuch", "-y"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(KernelSpecError, match="No kernelspec named 'nosuch'"):
        cli.main(argv)


def test_without_debug_a_subcommand_keeps_errors_to_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The subcommand's --debug default must not switch the top-level --debug on or off."""
    assert cli.main(["remove", "nosuch", "-y"]) == 1
    one_error_line(capsys.readouterr().err)


# -- setup: refused before anything is checked or written -----------------------------------


def test_setup_invalid_name_fails_with_one_line_and_writes_nothing(
    data_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --name: exit 1, one 'error:' line naming it, no kernelspec directory."""
    assert cli.main(["setup", "--name", "my kernel", "--image", "y", "--user"]) == 1
    assert "'my kernel'" in one_error_line(capsys.readouterr().err)
    assert spec_dirs(data_dir) == []


def test_setup_missing_mount_source_fails_naming_the_path(
    data_dir: Path,
    tmp_path: Path,
    no_engine: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--mount of a host path that does not exist: exit 1 naming the resolved path."""
    monkeypatch.chdir(tmp_path)
    argv = ["setup", "--name", "x", "--image", "y", "--user", "--mount", "nonexistent:/x"]
    assert cli.main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path}/nonexistent does not exist" in line
    assert spec_dirs(data_dir) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "NOEQUALS"], "--env 'NOEQUALS' has no '='"),
        (["--env", "1X=2"], "--env name '1X'"),
        (["--mount", "a:b:c:d"], "--mount 'a:b:c:d' is not HOST:DEST"),
        (["--memory", "lots"], "--memory 'lots' is not a size such as 512m, 2g or 2gb"),
        (["--memory", "0gb"], "--memory '0gb' must be more than 0"),
        (["--pids-limit", "8"], "--pids-limit 8 is too small"),
        (["--nofile", "8"], "--nofile 8 is too small"),
        (["--tmp-size", "1.5.2g"], "--tmp-size '1.5.2g' is not a size"),
        (["--cpus", "0"], "--cpus must be positive"),
        (["--max-lifetime", "0"], "--max-lifetime must be at least 1 second"),
        (["--pool", "40"], "--pool must be between 0 and 32"),
        (["--kernel-user", "abc"], "--kernel-user 'abc' is not UID, UID:GID or owner"),
        (["--engine-host", "/var/run/docker.sock"], "--engine-host '/var/run/docker.sock'"),
        (["--kernel-cmd", "python3", "-m", "foo"], "--kernel-cmd must contain {connection_file}"),
    ],
)
def test_setup_invalid_option_fails_with_one_line_and_writes_nothing(
    data_dir: Path,
    no_engine: None,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    """Each invalid setting: exit 1, one 'error:' line saying what is wrong, nothing written."""
    assert cli.main(["setup", "--name", "x", "--image", "y", "--user", *extra]) == 1
    assert message in one_error_line(capsys.readouterr().err)
    assert spec_dirs(data_dir) == []


@needs_docker_cli
def test_setup_with_unreachable_engine_fails_and_writes_nothing(
    data_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No engine: exit 1, one line saying it cannot be reached and nothing was done."""
    assert cli.main(["setup", "--name", "x", "--image", "y", "--user"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "Cannot reach the container engine at unix:///nonexistent.sock" in line
    assert "Nothing was done" in line
    assert spec_dirs(data_dir) == []


@needs_docker_cli
def test_setup_debug_shows_the_traceback(data_dir: Path, no_engine: None) -> None:
    """With --debug our error propagates (a traceback) instead of becoming one line."""
    from jupyter_docker_kernel.errors import EngineError

    with pytest.raises(EngineError, match="Cannot reach the container engine"):
        cli.main(["--debug", "setup", "--name", "x", "--image", "y", "--user"])


# -- setup --skip-checks: writes a spec ----------------------------------------------------


def test_setup_skip_checks_writes_spec_and_prints_how_to_use_it(
    data_dir: Path, no_engine: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-checks needs no engine; it installs the spec and prints the nbgrader line."""
    argv = ["setup", "--name", "Course", "--image", "course/py:1", "--user", "--skip-checks"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"Installed kernelspec course in {data_dir / 'kernels' / 'course'}" in out
    assert re.search(r"--ExecutePreprocessor\.kernel_name=course$", out, re.MULTILINE)
    assert spec_dirs(data_dir) == ["course"]


@pytest.mark.parametrize(
    ("extra", "suggests_grading"),
    [
        ([], False),
        (["--workdir-readonly"], False),
        (["--copy-workdir"], True),
        (["--no-workdir"], True),
    ],
)
def test_setup_suggests_nbgrader_only_for_a_spec_that_does_not_mount_the_work_dir(
    data_dir: Path,
    no_engine: None,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    suggests_grading: bool,
) -> None:
    """A mount-mode spec gets the --for-nbgrader advice instead of the autograde line: a
    kernel that can write the directory nbgrader writes back into must not grade."""
    argv = ["setup", "--name", "course", "--image", "course/py:1", "--user", "--skip-checks"]
    assert cli.main([*argv, *extra]) == 0
    out = capsys.readouterr().out
    autograde = "nbgrader autograde ASSIGNMENT --ExecutePreprocessor.kernel_name=course"
    assert (autograde in out) is suggests_grading, out
    advice = "jupyter-docker-kernel setup --for-nbgrader --name course-grading"
    assert (advice in out) is not suggests_grading, out


def test_setup_options_become_the_specs_settings(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What setup's options say is exactly what the written kernel.json's settings hold."""
    (tmp_path / "data").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    argv = [
        "setup", "--name", "k", "--image", "i:1", "--user", "--skip-checks",
        "--mount", "data:/data:ro", "--env", "A=1", "--env", "A=2", "--copy-workdir",
        "--python", "python3.12", "--docker-arg=--shm-size=1g", "--network", "bridge",
        "--runtime", "runsc", "--memory", "1g", "--cpus", "0.5", "--pids-limit", "64",
        "--kernel-cmd", "python3.12", "-m", "k", "-f", "{connection_file}",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    data = json.loads((data_dir / "kernels" / "k" / "kernel.json").read_text())
    assert settings_from_kernel_json(data) == KernelSettings(
        image="i:1",
        workdir="copy",
        mounts=(Mount(str(tmp_path / "data"), "/data", read_only=True),),
        env=(("A", "2"),),
        kernel_cmd=("python3.12", "-m", "k", "-f", "{connection_file}"),
        python="python3.12",
        docker_args=("--shm-size=1g",),
        network="bridge",
        runtime="runsc",
        memory="1g",
        cpus=0.5,
        pids_limit=64,
    )


def test_setup_interrupt_mode_and_display_name_reach_kernel_json(data_dir: Path) -> None:
    """--interrupt-mode and --display-name are written into kernel.json."""
    argv = ["setup", "--name", "k", "--user", "--skip-checks", "--interrupt-mode", "message",
            "--display-name", "Course (sandbox)"]  # fmt: skip
    assert cli.main(argv) == 0
    data = json.loads((data_dir / "kernels" / "k" / "kernel.json").read_text())
    assert (data["interrupt_mode"], data["display_name"]) == ("message", "Course (sandbox)")


def test_setup_existing_name_fails_without_replace(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second setup of the same name: exit 1, message says '--replace', first spec kept."""
    base = ["setup", "--name", "k", "--user", "--skip-checks"]
    assert cli.main([*base, "--image", "first"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--image", "second"]) == 1
    assert "--replace" in one_error_line(capsys.readouterr().err)
    data = json.loads((data_dir / "kernels" / "k" / "kernel.json").read_text())
    assert settings_from_kernel_json(data).image == "first"


def test_setup_replace_overwrites_existing_spec(data_dir: Path) -> None:
    """With --replace a second setup of the same name succeeds and its settings win."""
    base = ["setup", "--name", "k", "--user", "--skip-checks"]
    assert cli.main([*base, "--image", "first"]) == 0
    assert cli.main([*base, "--image", "second", "--replace"]) == 0
    data = json.loads((data_dir / "kernels" / "k" / "kernel.json").read_text())
    assert settings_from_kernel_json(data).image == "second"


def test_setup_prefix_installs_under_prefix(tmp_path: Path, data_dir: Path) -> None:
    """--prefix P installs into P/share/jupyter/kernels, not the user's data dir."""
    argv = ["setup", "--name", "k", "--prefix", str(tmp_path / "env"), "--skip-checks"]
    assert cli.main(argv) == 0
    assert (tmp_path / "env" / "share" / "jupyter" / "kernels" / "k" / "kernel.json").is_file()
    assert spec_dirs(data_dir) == []


def test_setup_user_and_prefix_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    """--user and --prefix together are a usage error naming both."""
    assert cli.main(["setup", "--name", "k", "--user", "--prefix", "/p"]) == 2
    assert "--prefix: not allowed with argument --user" in capsys.readouterr().err


def test_show_into_a_closed_pipe_ends_without_a_traceback(data_dir: Path) -> None:
    """`show NAME | head`: the reader goes away before show has written; the command ends
    quietly (exit 141, as a shell reports SIGPIPE) instead of a BrokenPipeError traceback."""
    import subprocess
    import sys

    assert cli.main(["setup", "--name", "piped", "--user", "--skip-checks"]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: always EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jupyter_docker_kernel", "show", "piped"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141
