"""The launcher's command line (parsed by hand to keep a start lean), its exit verdicts and
what it forwards of the kernel's raw output."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.launcher import (
    FORWARD_LIMIT,
    exit_verdict,
    forward,
    nbgrader_layout,
    parse_args,
    refuse_grading_mount,
    runtime_base,
    runtime_base_choice,
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


def test_extra_positional_arguments_from_the_client_are_accepted() -> None:
    """`jupyter run --kernel NAME file.py` appends file.py to the kernelspec's argv
    (jupyter_client's extra_arguments): the launcher takes it and ignores it."""
    args = parse_args(["--settings", "{}", "-f", "k.json", "file.py", "other.py"])
    assert (args.settings, args.connection_file, args.extra) == (
        "{}",
        "k.json",
        ["file.py", "other.py"],
    )


def test_settings_come_from_the_environment_and_leave_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Current kernelspecs pass the settings in env (not argv, which `ps` shows); the
    launcher takes them out of its environment, so its children do not inherit them."""
    monkeypatch.setenv("JUPYTER_DOCKER_KERNEL_SETTINGS", '{"image": "x"}')
    args = parse_args(["-f", "k.json"])
    assert args.settings == '{"image": "x"}'
    assert "JUPYTER_DOCKER_KERNEL_SETTINGS" not in os.environ


def test_inline_settings_of_earlier_kernelspecs_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kernel.json files of earlier versions pass `--settings JSON`: it wins over env."""
    monkeypatch.setenv("JUPYTER_DOCKER_KERNEL_SETTINGS", '{"image": "env"}')
    assert parse_args(["--settings", '{"image": "argv"}', "-f", "k"]).settings == (
        '{"image": "argv"}'
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--settings", "{}"], "-f and the settings"),
        (["--settings", "{}", "-f"], "-f and the settings"),
        (["-f", "k.json"], "-f and the settings (JUPYTER_DOCKER_KERNEL_SETTINGS or --settings)"),
        (["--settings", "{}", "-f", "k.json", "--bogus"], "unexpected argument '--bogus'"),
    ],
)
def test_bad_command_lines_exit_2_with_usage(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing option or an unknown one exits 2 and says which, like argparse did."""
    monkeypatch.delenv("JUPYTER_DOCKER_KERNEL_SETTINGS", raising=False)
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -I -m jupyter_docker_kernel.launcher" in err
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


# -- the runtime base when someone else took its place (H07) ---------------------------------


@pytest.fixture
def tmp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short, sticky, world-writable temp dir standing in for /tmp (and no XDG dir)."""
    root = Path(tempfile.mkdtemp(prefix="jh", dir="/tmp"))  # short: socket paths go below
    root.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


OTHER_UID = 4242


def taken(usual: Path, how: str) -> None:
    """Put something that is not ours, or not private, where the usual runtime base goes."""
    if how == "other owner":
        usual.mkdir(mode=0o700)
        os.chown(usual, OTHER_UID, OTHER_UID)
    elif how == "file":
        usual.write_text("")
    elif how == "symlink":
        target = usual.with_name("elsewhere")
        target.mkdir(mode=0o700)
        usual.symlink_to(target)
    elif how == "mode 0777":
        usual.mkdir()
        usual.chmod(0o777)


TAKEN = ("other owner", "file", "symlink", "mode 0777")


@pytest.mark.parametrize("how", TAKEN)
def test_h07_a_taken_runtime_base_falls_back_to_a_private_dir(tmp_root: Path, how: str) -> None:
    """A pre-created <tmp>/jupyter-docker-kernel-<uid> does not deny service: kernels use
    a fresh 0700 dir of ours instead, the same one on every call (gc and pool find it)."""
    if how == "other owner" and os.getuid() != 0:
        pytest.skip("needs root to give a directory to another uid")
    usual = tmp_root / f"jupyter-docker-kernel-{os.getuid()}"
    taken(usual, how)

    base, why = runtime_base_choice()

    assert base != usual
    assert base.parent == tmp_root
    assert str(usual) in why
    st = os.lstat(base)
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert runtime_base() == base


def test_h07_the_usual_runtime_base_is_used_when_it_is_ours(tmp_root: Path) -> None:
    base, why = runtime_base_choice()
    assert (base, why) == (tmp_root / f"jupyter-docker-kernel-{os.getuid()}", "")


def test_h07_the_oldest_private_fallback_of_ours_wins(tmp_root: Path) -> None:
    """Processes agree on one fallback: the oldest (by name) that is ours and private;
    look-alikes of other owners, with other modes, or of another shape are skipped."""
    taken(tmp_root / f"jupyter-docker-kernel-{os.getuid()}", "mode 0777")
    uid = os.getuid()
    for name, mode in (
        (f"jdk-{uid}-00000000000000", 0o755),  # ours, not private
        (f"jdk-{uid}-0000000000001", 0o700),  # not our name shape
        (f"jdk-{uid}-00000000000002", 0o700),  # the one
        (f"jdk-{uid}-00000000000003", 0o700),  # younger
    ):
        (tmp_root / name).mkdir()
        (tmp_root / name).chmod(mode)
    if uid == 0:
        (tmp_root / f"jdk-{uid}-00000000000001").mkdir(mode=0o700)
        os.chown(tmp_root / f"jdk-{uid}-00000000000001", OTHER_UID, OTHER_UID)

    assert runtime_base() == tmp_root / f"jdk-{uid}-00000000000002"


def test_h07_no_private_dir_at_all_is_an_error_that_says_what_to_do(
    tmp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nowhere to make one (a temp dir that is gone): a LaunchError that says what to do."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root / "gone"))
    with pytest.raises(LaunchError, match=r"No kernel was started\. Set XDG_RUNTIME_DIR"):
        runtime_base()


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


def test_a_client_that_died_while_the_kernel_started_still_stops_it() -> None:
    """The launcher watches the Jupyter client that started it only once the kernel runs;
    a client gone before that (killed during a start of some seconds) left us under init,
    and a watch that took init for the client never ended: kernel and container ran on
    for --max-lifetime. The watch compares against the client the launcher started under
    (session.main captures getppid() first; the helper checks the request's client pid)."""
    import asyncio
    import logging
    import subprocess
    from typing import cast

    from jupyter_docker_kernel.container import Container
    from jupyter_docker_kernel.session import process_alive, watch_client

    gone = subprocess.Popen(["true"])
    gone.wait()

    class Starting:
        def __init__(self) -> None:
            self.client_pid = gone.pid  # the client we started under: ended, not our parent
            self.stopped: list[str] = []
            self.log = logging.getLogger("test")

        def stop(self, reason: str = "") -> None:
            self.stopped.append(reason)

    ending = subprocess.Popen(["sleep", "0.5"])  # alive when the helper looks, then gone
    for client_alive in (lambda: os.getppid() == gone.pid, process_alive(ending.pid)):
        container = Starting()
        asyncio.run(asyncio.wait_for(watch_client(cast(Container, container), client_alive), 5))
        assert container.stopped == ["the Jupyter client went away"]
    ending.wait()
