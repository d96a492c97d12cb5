"""How the broker checks a directory before it is mounted (broker.open_owned_dir, stage),
on the real filesystem, as root (the broker's own position), without the engine.

The caller is a uid nobody uses; directories are chowned to it or to another one.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel.broker import open_owned_dir, stage, unstage
from jupyter_docker_kernel.broker_policy import Caller, Refusal
from tests.conftest import not_here

CALLER = Caller(pid=1, uid=54321, gid=54321)
OTHER = 54322


@pytest.fixture
def tree() -> Iterator[Path]:
    """/tmp/X/{mine, theirs, closed/mine-inside, link-to-theirs, mine/link-up}; in /tmp,
    not pytest's tmp_path, whose 0700 parents the caller could not pass."""
    if os.geteuid() != 0:
        not_here("the mount checks run as root, as the broker does", "root")
    tmp_path = Path(tempfile.mkdtemp(prefix="jdkt-mounts-", dir="/tmp"))
    tmp_path.chmod(0o755)
    mine = tmp_path / "mine"
    theirs = tmp_path / "theirs"
    closed = tmp_path / "closed"
    for path, uid in ((mine, CALLER.uid), (theirs, OTHER), (closed, OTHER)):
        path.mkdir(mode=0o755)
        os.chown(path, uid, uid)
    closed.chmod(0o700)
    inside = closed / "mine-inside"
    inside.mkdir()
    os.chown(inside, CALLER.uid, CALLER.gid)
    (tmp_path / "link-to-theirs").symlink_to(theirs)
    (mine / "link-up").symlink_to(tmp_path)
    yield tmp_path
    shutil.rmtree(tmp_path)


def test_a_directory_of_the_callers_is_opened(tree: Path) -> None:
    fd = open_owned_dir(str(tree / "mine"), CALLER)
    try:
        assert os.fstat(fd).st_ino == os.stat(tree / "mine").st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("relative", "words"),
    [
        ("theirs", "not yours (owned by uid 54322)"),
        ("link-to-theirs", "a link is never followed"),
        ("mine/link-up/mine", "a link is never followed"),
        ("closed/mine-inside", "you cannot reach it"),
        ("absent", "not a directory"),
    ],
)
def test_other_directories_are_refused(tree: Path, relative: str, words: str) -> None:
    with pytest.raises(Refusal) as caught:
        open_owned_dir(str(tree / relative), CALLER)
    assert words in caught.value.line


def test_what_is_mounted_is_the_directory_checked_not_what_the_path_names_later(
    tree: Path,
) -> None:
    """The rename race: after the check the caller swaps the path for a link to another
    user's directory; the staged mount (what the engine gets) is still the checked one."""
    mine = tree / "mine"
    (mine / "note").write_text("mine")
    (tree / "theirs" / "note").write_text("theirs")
    fd = open_owned_dir(str(mine), CALLER)
    staged = tree / "staged"
    staged.mkdir(mode=0o700)
    try:
        mine.rename(tree / "moved")
        mine.symlink_to(tree / "theirs")  # the path now names their directory
        stage(fd, staged)
        assert (staged / "note").read_text() == "mine"
    finally:
        os.close(fd)
        unstage(staged)
    assert not staged.exists()


def test_a_proc_dir_of_the_callers_own_process_is_refused() -> None:
    """/proc/PID of the caller's own process is the caller's, but its magic links (root,
    cwd) would lead a kernel out of its container to the host's files."""
    if os.geteuid() != 0:
        not_here("the mount checks run as root, as the broker does", "root")
    child = os.fork()
    if child == 0:  # the caller's process
        os.setgid(CALLER.gid)
        os.setuid(CALLER.uid)
        time.sleep(30)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{child}").st_uid != CALLER.uid:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(Refusal) as caught:
            open_owned_dir(f"/proc/{child}", CALLER)
        assert "proc filesystem" in caught.value.line
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
