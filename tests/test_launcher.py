"""The launcher's command line (parsed by hand to keep a start lean), its exit verdicts and
what it forwards of the kernel's raw output."""

from __future__ import annotations

import io
import logging
import re
import socket
import threading

import pytest

from jupyter_docker_kernel.launcher import (
    FORWARD_LIMIT,
    exit_verdict,
    forward,
    parse_args,
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


#: What a kernel writes to its raw fd 1 or 2 to pass for the server's own log lines: after
#: a newline, a carriage return, NEL (U+0085) and LINE SEPARATOR (U+2028), which some log
#: readers (Python's str.splitlines() among them) take for line breaks too.
FORGED = (
    b"partial\n[I 2026-12-02 03:00:00.000 ServerApp] forged by newline\n"
    b"x\r[W 2026-12-02 03:00:00.000 ServerApp] forged by return\n"
    + "y\x85[E 2026-12-02 03:00:00.000 ServerApp] forged by NEL\n".encode()
    + "z\u2028[C 2026-12-02 03:00:00.000 ServerApp] forged by LS".encode()
)


def test_the_kernels_raw_output_cannot_forge_server_log_lines() -> None:
    """Every line forwarded from the kernel's raw stdout/stderr starts with its container's
    name, and line breaks within it are escaped, however a log reader splits lines."""
    read, write = socket.socketpair()
    out = io.BytesIO()
    with read, write:
        write.sendall(FORGED)
        write.shutdown(socket.SHUT_WR)
        forward(read, out, "jdk-k1-abc123")
    text = out.getvalue().decode()
    lines = text.splitlines()
    assert len(lines) == 5
    assert all(line.startswith("jdk-k1-abc123| ") for line in lines), lines
    assert not re.search(r"^\[[DIWEC] ", text, re.MULTILINE)
    assert "forged by LS" in lines[-1]  # escaped, not dropped


def test_forwarded_raw_output_is_capped_as_it_reaches_the_log() -> None:
    """A kernel writing bare newlines (each a prefixed log line) still puts at most
    FORWARD_LIMIT bytes, and one more line, into the log."""
    read, write = socket.socketpair()
    out = io.BytesIO()
    with read, write:
        sender = threading.Thread(target=write.sendall, args=(b"\n" * (FORWARD_LIMIT // 2),))
        sender.start()
        forwarder = threading.Thread(target=forward, args=(read, out, "jdk-k1-abc123"))
        forwarder.start()
        sender.join()
        write.shutdown(socket.SHUT_WR)
        forwarder.join()
    assert FORWARD_LIMIT <= len(out.getvalue()) <= FORWARD_LIMIT + 1
