"""rundir.py is the one place that names a kernel's runtime files (issue 11, item 2)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

import jupyter_docker_kernel
from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.rundir import RunDir, alive, process_start_time, remove_tree

PACKAGE = Path(jupyter_docker_kernel.__file__).parent

#: How the runtime dir's names were spelled before rundir.py: as string literals, or joined
#: onto a dir path. A kernelspec dir's own kernel.json is another file and not matched.
SPELLINGS = re.compile(
    r'"(rt|cid|work|pinned|client|launcher)"'
    r'|/ "(pool|env)"'
    r'|/(rt|cid|env)"'
    r'|-pool-"'
)


def test_no_module_but_rundir_spells_the_runtime_dirs_names() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "rundir.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SPELLINGS.search(line)
    ]
    assert not found, "use rundir.RunDir instead:\n" + "\n".join(found)


def test_the_pattern_catches_what_it_is_for() -> None:
    """A check that cannot fail is none: the old spellings match."""
    for old in ('base / "rt"', '(entry / "pool").read_text()', 'f"{kernel_dir}/cid"', '"work"'):
        assert SPELLINGS.search(old), old
    assert not SPELLINGS.search('(path / "kernel.json").is_file()')


def test_a_rundir_names_every_file_below_its_path(tmp_path: Path) -> None:
    rundir = RunDir.new(tmp_path, "abc", "123456")
    assert rundir.path == tmp_path / "abc-123456"
    assert rundir.container_name() == "jdk-abc-123456"
    names = {
        rundir.sockets: "rt",
        rundir.cid: "cid",
        rundir.connection: "kernel.json",
        rundir.env_file: "env",
        rundir.owner: "launcher",
        rundir.pool_note: "pool",
        rundir.client: "client",
        rundir.pins: "pinned",
        rundir.work: "work",
    }
    for path, name in names.items():
        assert path == rundir.path / name
    assert rundir.socket(3) == rundir.path / "rt" / f"{hardening.SOCKET_PREFIX}-3"
    assert rundir.claim_socket() == rundir.path / "rt" / hardening.CLAIM_SOCKET


def test_two_new_rundirs_differ_and_a_warm_one_is_named_for_its_pool(tmp_path: Path) -> None:
    assert RunDir.new(tmp_path, "k") != RunDir.new(tmp_path, "k")
    assert RunDir.warm(tmp_path, "key", "n").path.name == "pool-key-n"


def test_create_mark_read_and_remove(tmp_path: Path) -> None:
    rundir = RunDir.new(tmp_path, "k")
    rundir.create()
    assert oct(rundir.path.stat().st_mode & 0o777) == oct(0o700)
    assert oct(rundir.sockets.stat().st_mode & 0o777) == oct(0o700)
    assert rundir.read_owner() is None
    rundir.mark_owner()
    owner = rundir.read_owner()
    assert owner == (str(os.getpid()), process_start_time(os.getpid()))
    assert alive(*owner)
    assert rundir.read_cid() == ""
    rundir.cid.write_text("abc\n")
    assert rundir.read_cid() == "abc"
    rundir.remove()
    assert not rundir.path.exists()
    with pytest.raises(FileExistsError):
        RunDir(tmp_path).create()


def test_remove_tree_survives_a_deep_tree_and_links(tmp_path: Path) -> None:
    deep = tmp_path / "d"
    path = deep
    for _ in range(300):
        path = path / "x"
    path.mkdir(parents=True)
    (deep / "link").symlink_to(tmp_path)
    remove_tree(deep)
    assert not deep.exists()
    assert tmp_path.exists()


def test_a_zombie_is_not_alive() -> None:
    """A killed process nobody reaped yet (an orphan under an init that does not reap) no
    longer serves anything: gc and the helper's janitor take its dirs."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    try:
        start = process_start_time(pid)
        deadline = time.monotonic() + 5
        while alive(str(pid), start) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(str(pid), start)
        assert Path(f"/proc/{pid}").exists()  # still there, as a zombie
    finally:
        os.waitpid(pid, 0)
