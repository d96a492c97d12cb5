"""The launcher's command line (parsed by hand to keep a start lean) and its exit verdicts."""

from __future__ import annotations

import logging

import pytest

from jupyter_docker_kernel.launcher import exit_verdict, parse_args, wait_exit_code


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


def test_extra_positional_arguments_from_the_client_are_accepted() -> None:
    """`jupyter run --kernel NAME file.py` appends file.py to the kernelspec's argv
    (jupyter_client's extra_arguments): the launcher takes it and ignores it."""
    args = parse_args(["--settings", "{}", "-f", "k.json", "file.py", "other.py"])
    assert (args.settings, args.connection_file, args.extra) == (
        "{}",
        "k.json",
        ["file.py", "other.py"],
    )


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


def test_a_clean_exit_right_after_an_interrupt_says_the_interrupt_was_the_shutdowns() -> None:
    """jupyter_client interrupts before every shutdown, so an 'interrupt' line precedes
    every stop in the log; the exit line says it was part of the shutdown."""
    level, reason = exit_verdict(0, "", stopping=False, interrupted=True)
    assert level == logging.INFO
    assert "the interrupt just before was part of the shutdown" in reason
    assert exit_verdict(0, "", stopping=False, interrupted=False) == (logging.INFO, "")


@pytest.mark.parametrize(
    ("output", "code"), [("0\n", 0), ("137\n", 137), ("-1", -1), ("", 1), ("Error: x", 1)]
)
def test_docker_wait_output_gives_the_exit_code_or_1(output: str, code: int) -> None:
    """What `docker wait` printed is the container's code; nothing (an engine error) is 1."""
    assert wait_exit_code(output) == code
