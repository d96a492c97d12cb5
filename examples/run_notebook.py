"""Execute a notebook with a given kernel through nbclient and print what each cell produced.

Used by scripts/demo: `python examples/run_notebook.py NOTEBOOK --kernel NAME`. The
notebook's directory is copied to a fresh temporary directory first, so the run writes
its results there and the repository stays clean. As root, that copy belongs to an
ordinary user (sudo's caller, else uid 1000); the kernelspec should use `--kernel-user
owner` (scripts/demo does) so the kernel writes there as that user.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def describe(output: dict[str, object]) -> str:
    """One readable block for an output: text as is, binary data by type and size."""
    kind = output["output_type"]
    if kind == "stream":
        return str(output["text"]).rstrip("\n")
    if kind == "error":
        return f"{output['ename']}: {output['evalue']}"
    data = output.get("data")
    assert isinstance(data, dict)
    if "image/png" in data:
        return f"[image/png, {len(str(data['image/png'])) * 3 // 4 // 1024} KiB]"
    return str(data.get("text/plain", f"[{', '.join(data)}]"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--kernel", required=True)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="jdk-demo-"))
    shutil.copytree(args.notebook.parent, workdir, dirs_exist_ok=True)
    if os.getuid() == 0:
        # Root's kernels never run as root: hand the copy to an ordinary user (sudo's
        # caller, else uid 1000), whose uid a `--kernel-user owner` kernel then runs as,
        # so it writes here without the directory being world-writable.
        uid = int(os.environ.get("SUDO_UID") or 1000)
        gid = int(os.environ.get("SUDO_GID") or uid)
        for path in [workdir, *workdir.rglob("*")]:
            os.lchown(path, uid, gid)
    path = workdir / args.notebook.name
    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]  # nbformat untyped
    started = time.monotonic()
    NotebookClient(
        nb, kernel_name=args.kernel, timeout=120, resources={"metadata": {"path": str(workdir)}}
    ).execute()
    for number, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        print(f"--- cell {number + 1}: {cell.source.splitlines()[0]}")
        for output in cell.outputs:
            print(describe(output))
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]  # nbformat is untyped
    print(
        f"--- ran {len(nb.cells)} cells in {time.monotonic() - started:.1f} s with "
        f"kernel '{args.kernel}'; results in {workdir}: "
        f"{', '.join(sorted(p.name for p in workdir.iterdir()))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
