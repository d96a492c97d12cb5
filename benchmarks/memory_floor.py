"""The resident helper's memory floor: what a Python process costs before it does anything.

    .venv/bin/python benchmarks/memory_floor.py [--python PATH]

Issue 17's goal is at most 5 MiB of host RSS per argv kernel beyond the kernel itself,
at one kernel too, where the one resident helper (helper.py) is the whole plumbing. This
says what of its RSS a Python helper can ever shed: the bare interpreter (`python -I -S`
and `python -I`), then the helper's imports in its own order and with its own `_lean`
exclusions (ssl, OpenSSL's hashlib, bz2, lzma), each step's RSS and PSS growth in KiB.
No engine, no kernel: the helper's RSS at one running kernel is memory.py's
(`scripts/bench --concurrency 1`); the difference to the last step here is the session.

Each measurement is a fresh child process that imports the steps and reports
/proc/self/status and smaps_rollup after each; called by main() and by
tests/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

#: The helper's imports in the order it makes them (helper.py: _lean first, then asyncio
#: and the standard library it names, thin; hosting as its --runner, reaper as its
#: --janitor), one step per row. Each is a statement run in the child.
STEPS: tuple[tuple[str, str], ...] = (
    ("_lean (keeps ssl, _hashlib, bz2, lzma out)", "_lean.keep_out()"),
    ("asyncio (without ssl)", "import asyncio"),
    (
        "json, logging, threading, queue, dataclasses, fcntl, struct, select",
        "import json, logging, threading, queue, dataclasses, contextvars, fcntl, struct, select",
    ),
    ("http.client and email (the engine API client)", "import http.client"),
    (
        "subprocess, shutil, tempfile, pathlib, re",
        "import subprocess, shutil, tempfile, pathlib, re",
    ),
    ("ours: thin, helper", "import jupyter_docker_kernel.thin, jupyter_docker_kernel.helper"),
    (
        "ours: hosting (session, container, engine, local_backend, pool, ...)",
        "import jupyter_docker_kernel.hosting",
    ),
    ("ours: relay, reaper", "import jupyter_docker_kernel.relay, jupyter_docker_kernel.reaper"),
)

#: (label, RSS KiB, PSS KiB), cumulative.
Row = tuple[str, int, int]

#: The child: measures itself before the steps and after each (KiB). It imports nothing
#: of its own (the steps come as argv pairs, the rows go out as tab-separated lines), so
#: the first row is the bare interpreter.
_CHILD = """
import sys
def memory():
    rss = pss = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss
rows = [("interpreter", *memory())]
steps = sys.argv[1:]
if steps:
    from jupyter_docker_kernel import _lean
for index in range(0, len(steps), 2):
    exec(steps[index + 1])
    rows.append((steps[index], *memory()))
rows.append(("ssl loaded", int(sys.modules.get("ssl") is not None), 0))
for label, rss, pss in rows:
    print(f"{label}\t{rss}\t{pss}")
"""


def measure(python: str, flags: list[str], steps: tuple[tuple[str, str], ...]) -> list[Row]:
    """Run the child with `python flags`; (label, rss_kib, pss_kib) cumulative per step,
    the bare interpreter first, then a last ("ssl loaded", 0 or 1, 0) row."""
    out = subprocess.run(
        [python, *flags, "-c", _CHILD, *(part for step in steps for part in step)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    return [(label, int(rss), int(pss)) for label, rss, pss in rows]


def floor(python: str = sys.executable) -> dict[str, list[Row]]:
    """The bare interpreters and the helper's import steps, as measure() returns them;
    no steps for an interpreter that cannot import this package."""
    result = {
        "python -I -S": measure(python, ["-I", "-S"], ()),
        "python -I": measure(python, ["-I"], ()),
    }
    try:
        result["helper's imports"] = measure(python, ["-I"], STEPS)
    except subprocess.CalledProcessError:
        result["helper's imports"] = []
    return result


def main() -> int:
    """Print the floor as a table (KiB; each step's growth)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter to measure")
    args = parser.parse_args()
    result = floor(args.python)
    print(f"{'KiB RSS':>9} {'KiB PSS':>9}  (growth per step; {args.python})")
    for name in ("python -I -S", "python -I"):
        _, rss, pss = result[name][0]
        print(f"{rss:9d} {pss:9d}  bare {name}")
    rows = result["helper's imports"]
    if not rows:
        print("(this interpreter cannot import jupyter_docker_kernel: no helper steps)")
        return 0
    _, before_rss, before_pss = rows[0]
    print(f"{before_rss:9d} {before_pss:9d}  the helper's interpreter (python -I)")
    for label, rss, pss in rows[1:-1]:
        print(f"{rss - before_rss:+9d} {pss - before_pss:+9d}  {label}")
        before_rss, before_pss = rss, pss
    print(f"{before_rss:9d} {before_pss:9d}  after the helper's imports")
    print(f"ssl loaded: {'yes' if rows[-1][1] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
