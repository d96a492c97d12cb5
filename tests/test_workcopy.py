"""--copy-workdir's stream: workcopy.scan/send on the host, _supervise.receive_tree inside.

Pure (no engine): the stream goes through memory, and through the real supervisor as a
subprocess, which must unpack it before it starts the kernel command.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_docker_kernel import _supervise, workcopy
from jupyter_docker_kernel.errors import LaunchError

SUPERVISOR = Path(_supervise.__file__)


def source_tree(root: Path) -> Path:
    """Files, a nested and a read-only dir, links (absolute, relative, to /), a fifo, and
    names that have broken host tools before."""
    root.mkdir()
    (root / "notes.txt").write_text("the student's notes\n")
    (root / "data").mkdir()
    (root / "data" / "deep").mkdir()
    (root / "data" / "deep" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "data" / "script.sh").write_text("#!/bin/sh\n")
    (root / "data" / "script.sh").chmod(0o4755)  # setuid: must not survive the copy
    (root / "answers.csv").symlink_to("/etc/passwd")
    (root / "relative").symlink_to("../outside")
    (root / "frozen").mkdir()
    (root / "frozen" / "f.txt").write_text("x")
    (root / "frozen").chmod(0o555)
    os.mkfifo(root / "results.fifo")
    for name in ("evil\n\x1b[2J.txt", "n" * 255, os.fsdecode(b"latin1-\xff.txt")):
        (root / name).write_text("hostile name\n")
    return root


def stream_of(source: Path, **caps: int) -> bytes:
    buf = io.BytesIO()
    limits = {"limit": 1 << 30, "max_entries": 1000, **caps}
    workcopy.send(str(source), workcopy.scan(str(source), **limits), buf.write)
    return buf.getvalue()


def listing(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under root -> (kind, permission bits, content or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes().hex())
            else:
                out[rel] = ("special", 0, "")
    return out


def test_the_stream_recreates_the_tree_with_links_as_links_and_no_special_files(
    tmp_path: Path,
) -> None:
    """Files (content, mode without setuid), dirs (a read-only one filled first), links as
    links, hostile names intact; the fifo is skipped rather than hanging the copy."""
    source = source_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    data = io.BytesIO(stream_of(source))

    count = _supervise.receive_tree(data.read, str(dest))

    expected = listing(source)
    del expected["results.fifo"]
    expected["data/script.sh"] = ("file", 0o755, expected["data/script.sh"][2])
    assert listing(dest) == expected
    assert count == len(expected)
    assert (dest / "notes.txt").stat().st_mtime == (source / "notes.txt").stat().st_mtime


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        ({"limit": 1 << 20}, "the --copy-workdir limit"),
        ({"max_entries": 5}, "(--tmp-inodes)"),
    ],
)
def test_a_source_over_the_caps_is_refused_before_anything_starts(
    tmp_path: Path, caps: dict[str, int], message: str
) -> None:
    """More bytes than copy_limit or more entries than tmp_inodes: LaunchError, which says
    nothing was started and what to raise."""
    source = source_tree(tmp_path / "src")
    with pytest.raises(LaunchError, match=r"No container was started") as info:
        stream_of(source, **caps)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "name", [b"../escape", b"/abs", b"a/../../b", b"missing-parent/f", b"./x", b""]
)
def test_the_supervisor_refuses_names_that_leave_its_directory(tmp_path: Path, name: bytes) -> None:
    """Whatever the stream says, nothing is made outside the target dir or under a parent
    that was not sent as a directory (a link, say)."""
    header = workcopy.HEADER.pack(workcopy.FILE, 0o644, 0.0, 1, len(name))
    data = io.BytesIO(header + name + b"x" + workcopy.HEADER.pack(workcopy.END, 0, 0.0, 0, 0))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(_supervise.CopyError):
        _supervise.receive_tree(data.read, str(dest))
    assert list(tmp_path.iterdir()) == [dest]
    assert list(dest.iterdir()) == []


def test_the_supervisor_unpacks_stdin_then_starts_the_kernel_there(tmp_path: Path) -> None:
    """--receive-workdir: the kernel command starts only after the copy is in place (it
    reads a file of it); a stream cut short starts no kernel and says why."""
    source = source_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    argv = [sys.executable, str(SUPERVISOR), "--receive-workdir", str(dest), "--"]
    kernel = [sys.executable, "-c", f"print(open({str(dest / 'notes.txt')!r}).read())"]
    # stdin stays open after the stream: it is the supervisor's lifeline from then on.
    with subprocess.Popen(
        [*argv, *kernel], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as sup:
        assert sup.stdin is not None
        assert sup.stdout is not None
        sup.stdin.write(stream_of(source))
        sup.stdin.flush()
        assert sup.stdout.readline() == b"the student's notes\n"
        assert sup.wait(timeout=60) == 0
        sup.stdin.close()

    cut = tmp_path / "cut"
    cut.mkdir()
    argv[3] = str(cut)
    short = subprocess.run(
        [*argv, *kernel], input=stream_of(source)[:5000], capture_output=True, timeout=60
    )
    assert short.returncode == 1
    assert b"the kernel was not started" in short.stderr
    assert short.stdout == b""


def test_the_supervisor_kills_a_kernel_that_writes_into_its_socket_dir(tmp_path: Path) -> None:
    """--only-sockets: a file written in the socket dir (--cleanup) ends the kernel at once,
    by SIGKILL, and the supervisor says why; before, the kernel ran on."""
    rundir = tmp_path / "rt"
    rundir.mkdir()
    kernel = (
        "import socket, time\n"
        f"socket.socket(socket.AF_UNIX).bind({str(rundir / 'k-1')!r})\n"  # allowed
        "time.sleep(0.5)\n"
        f"open({str(rundir / 'junk')!r}, 'w').write('x')\n"
        "time.sleep(30)\n"
    )
    argv = [sys.executable, str(SUPERVISOR), "--cleanup", str(rundir)]
    argv += ["--only-sockets", "k-1,k-2,claim", "--", sys.executable, "-c", kernel]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as sup:
        assert sup.stderr is not None
        code = sup.wait(timeout=20)
        said = sup.stderr.read().decode()
    assert code == 128 + 9, said
    assert "the kernel wrote 'junk' in its socket dir" in said
