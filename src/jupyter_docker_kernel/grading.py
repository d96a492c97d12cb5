"""`setup --for-nbgrader`: the grading profile and the nbgrader_config.py lines that use it.

cli.py layers PROFILE over the config file's defaults (explicit options still win), prints
`config_lines()` and, with --write-nbgrader-config, calls `check_config_file()` before the
kernelspec is written and `write_config_file()` after. Pure: no Docker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jupyter_docker_kernel.errors import SettingsError

#: What autograding untrusted submissions needs. workdir "copy": the kernel gets a private
#: copy of autograded/<student>/<assignment> (it can read the submission's files and write
#: next to them, even as uid 65534 under root) and nothing it writes reaches the course.
#: The lifetime bounds one notebook's whole run, well above DEFAULT_TIMEOUT per cell.
#: The output budget bounds what one notebook can make nbclient hold and nbgrader write
#: (1 GiB of output took nbclient to 3.1 GiB RSS and wrote a 1 GiB notebook): 64 MiB is
#: far above what a graded notebook shows, and a grader runs several at once. One message
#: may be a quarter of that: more than any plot or table a notebook shows, and what
#: libzmq allocates on the client from one frame header stays small.
PROFILE: dict[str, Any] = {
    "network": "none",
    "workdir": "copy",
    "max_lifetime": 1800.0,
    "output_budget": "64m",
    "max_message": "16m",
}
#: Seconds a cell may run before nbclient interrupts it (nbgrader's own default is 30).
DEFAULT_TIMEOUT = 120
BEGIN = "# BEGIN jupyter-docker-kernel (written by `jupyter-docker-kernel setup`)"
END = "# END jupyter-docker-kernel"
#: Keys we set; an existing file that sets one of them outside our block is not changed.
_KEYS = re.compile(
    r"^\s*c\.(ExecutePreprocessor|Execute)\.(kernel_name|timeout|interrupt_on_timeout)\b"
)


def check_timeout(timeout: int, max_lifetime: float) -> None:
    """Refuse a cell timeout the kernel's lifetime would cut short."""
    if timeout < 1:
        raise SettingsError(f"--cell-timeout must be at least 1 second, not {timeout}.")
    if timeout >= max_lifetime:
        raise SettingsError(
            f"--cell-timeout {timeout} s is not below --max-lifetime {max_lifetime:g} s: the "
            "kernel would be ended before a slow cell is interrupted. No kernelspec was "
            "written. Lower --cell-timeout or raise --max-lifetime."
        )


def config_lines(kernel_name: str, timeout: int) -> list[str]:
    """The nbgrader_config.py lines that make autograde run submissions in this kernel."""
    return [
        f"c.ExecutePreprocessor.kernel_name = {kernel_name!r}",
        f"c.ExecutePreprocessor.timeout = {timeout}  # seconds per cell",
        "c.ExecutePreprocessor.interrupt_on_timeout = True  # a slow cell fails, grading goes on",
    ]


def check_config_file(path: Path) -> None:
    """Fail unless write_config_file(path) can add our lines without changing the user's."""
    if path.is_dir():
        raise SettingsError(
            f"--write-nbgrader-config {path} is a directory",
            "No kernelspec was written",
            "Name the file, e.g. nbgrader_config.py.",
        )
    if not path.exists():
        if not path.parent.is_dir():
            raise SettingsError(
                f"--write-nbgrader-config: directory {path.parent} does not exist",
                "No kernelspec was written",
                "Create it first, or fix the path.",
            )
        return
    clashes = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(_outside_our_block(path.read_text()), 1)
        if line is not None and _KEYS.match(line)
    ]
    if clashes:
        raise SettingsError(
            f"{path} already sets what setup would write ({'; '.join(clashes)})",
            "No kernelspec was written and the file was not changed",
            "Remove those lines and run setup again, or leave out "
            "--write-nbgrader-config and edit the file by hand.",
        )


def write_config_file(path: Path, lines: list[str]) -> str:
    """Add our marked block to path (replacing an earlier one); return what was done."""
    block = [BEGIN, *lines, END]
    if not path.exists():
        text = "c = get_config()  # noqa: F821\n\n" + "\n".join(block) + "\n"
        path.write_text(text)
        return "Wrote"
    old = path.read_text()
    kept = [line for line in _outside_our_block(old) if line is not None]
    replaced = len(kept) != len(old.splitlines())
    body = "\n".join(kept).rstrip("\n")
    path.write_text((body + "\n\n" if body else "") + "\n".join(block) + "\n")
    return "Updated" if replaced else "Appended to"


def _outside_our_block(text: str) -> list[str | None]:
    """text's lines, with our marked block (markers and the blank line before) as None."""
    out: list[str | None] = []
    inside = False
    for line in text.splitlines():
        if line.strip() == BEGIN:
            inside = True
            if out and out[-1] == "":
                out[-1] = None  # the separator write_config_file put before the block
        out.append(None if inside else line)
        if inside and line.strip() == END:
            inside = False
    return out
