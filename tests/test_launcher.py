"""The launcher's command line (parsed by hand to keep a start lean) and its exit verdicts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.launcher import (
    exit_verdict,
    nbgrader_layout,
    parse_args,
    refuse_grading_mount,
    wait_exit_code,
)


@pytest.mark.parametrize(
    "argv",
    [
        ["--settings", "{}", "-f", "/run/k.json"],
        ["--settings={}", "--connection-file=/run/k.json"],
        ["-f", "/run/k.json", "--settings", "{}"],
    ],
)
def test_the_kernelspec_argv_forms_parse_to_settings_and_connection_file(argv: list[str]) -> None:
    """Separate and `=` forms, in any order, give the same two values."""
    args = parse_args(argv)
    assert (args.settings, args.connection_file, args.debug) == ("{}", "/run/k.json", False)


def test_debug_flag_is_read() -> None:
    """--debug turns the start timeline and engine calls on."""
    assert parse_args(["--settings", "{}", "-f", "k.json", "--debug"]).debug


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--settings", "{}"], "--settings and -f are required"),
        (["--settings", "{}", "-f"], "--settings and -f are required"),
        (["--settings", "{}", "-f", "k.json", "--bogus"], "unexpected argument '--bogus'"),
    ],
)
def test_bad_command_lines_exit_2_with_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing option or an unknown one exits 2 and says which, like argparse did."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m jupyter_docker_kernel.launcher" in err
    assert message in err


@pytest.mark.parametrize(
    ("code", "stopping", "interrupted", "level"),
    [
        (0, False, False, logging.INFO),
        (137, True, False, logging.INFO),
        (130, False, True, logging.INFO),
        (130, False, False, logging.WARNING),
        (1, False, True, logging.WARNING),
    ],
    ids=["clean", "we stopped it", "sigint after interrupt", "sigint unasked", "crash"],
)
def test_a_kernel_exit_warns_only_when_nobody_asked_for_it(
    code: int, stopping: bool, interrupted: bool, level: int
) -> None:
    """Exit 130 right after an interrupt (Jupyter interrupts before each shutdown) is
    expected and says why; an exit nobody asked for is a warning."""
    got, reason = exit_verdict(code, "", stopping=stopping, interrupted=interrupted)
    assert got == level
    assert ("before a shutdown" in reason) == (code == 130 and interrupted)


@pytest.mark.parametrize(
    ("output", "code"), [("0\n", 0), ("137\n", 137), ("-1", -1), ("", 1), ("Error: x", 1)]
)
def test_docker_wait_output_gives_the_exit_code_or_1(output: str, code: int) -> None:
    """What `docker wait` printed is the container's code; nothing (an engine error) is 1."""
    assert wait_exit_code(output) == code


@pytest.mark.parametrize(
    ("marker", "workdir", "refused"),
    [
        ("gradebook.db", "autograded/mallory/ps1", True),
        ("gradebook.db", "autograded/mallory/ps1/data", True),
        (None, "autograded/mallory/ps1", True),  # the name alone is enough
        ("nbgrader_config.py", "graded/mallory/ps1", True),  # a renamed autograded step
        ("gradebook.db", "submitted/mallory/ps1", True),
        ("gradebook.db", "source/ps1", False),  # the instructor's own assignment
        ("gradebook.db", "source/ps1/data", False),
        ("gradebook.db", "release/ps1/data", False),
        ("gradebook.db", ".", False),  # the course root: warned about, not refused
        (None, "notebooks/week1/lab", False),
    ],
)
def test_a_writable_mount_where_nbgrader_grades_is_refused(
    tmp_path: Path, marker: str | None, workdir: str, refused: bool
) -> None:
    """nbgrader's per-student dirs (<course>/<step>/<student>/<assignment>) are refused as a
    writable mount; the instructor's source/ and release/ and other dirs are not."""
    if marker:
        (tmp_path / marker).write_text("")
    path = tmp_path / workdir
    path.mkdir(parents=True, exist_ok=True)
    assert bool(nbgrader_layout(str(path))) is refused
    if refused:
        with pytest.raises(LaunchError, match=r"No container was started.*--for-nbgrader"):
            refuse_grading_mount(str(path))
    else:
        refuse_grading_mount(str(path))
