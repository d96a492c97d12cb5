"""How every host-side Python we start is kept from importing the notebook's directory.

`python -m mod` and `python -c code` put the current directory first on sys.path, so a
`json.py` or a `jupyter_docker_kernel/` handed in next to a notebook would run on the host,
as whoever starts the kernel (nbgrader's grader included), before any container exists.
Two forms avoid it, both only ever started through this module:

- isolated: `python -I -m MODULE`. Also drops PYTHONPATH and the user's site-packages, so it
  is used when the package is importable without them (a venv, a system install).
- safe path: `python -c "<drop '' from sys.path>; runpy.run_module(MODULE)"` for a package
  found only through `pip install --user` or PYTHONPATH. With -c the cwd enters sys.path as
  '' (and only so; with -m it is the full path), and nothing is imported before the filter
  but `sys`, which is built in. Python 3.10 has no -P, so this is the portable form.

kernelspec.build_kernel_json() asks `isolated_import_works()` once at setup; our own child
processes (the lifeline watchdog, the pool refill, doctor's import check, image.py's pip)
use `module_argv()`, which keeps the isolation of the process that starts them.
"""

from __future__ import annotations

import subprocess
import sys

#: Removes the cwd ('') from sys.path before anything else is imported, then runs {module}.
SAFE_PATH_PREFIX = "import sys; sys.path[:] = [p for p in sys.path if p]; "
_SAFE_RUN = (
    SAFE_PATH_PREFIX
    + "import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
)


def isolated_argv(python: str, module: str) -> list[str]:
    """`python -I -m module`: no cwd, no PYTHONPATH, no user site-packages."""
    return [python, "-I", "-m", module]


def safe_path_argv(python: str, module: str) -> list[str]:
    """`python -c ...` that drops the cwd from sys.path, then runs module as __main__."""
    return [python, "-c", _SAFE_RUN.format(module=module)]


def isolated_import_works(python: str, module: str = "jupyter_docker_kernel.launcher") -> bool:
    """Whether `python -I` can import module (setup asks once per kernelspec it writes).

    Run from "/" so that a module in the caller's cwd cannot answer for the real one.
    """
    try:
        proc = subprocess.run(
            [python, "-I", "-c", f"import {module}"],
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def module_argv(module: str, *args: str) -> list[str]:
    """argv that runs `module` with this interpreter, never importing from the cwd.

    Isolated when this process is (a launcher started by a current kernel.json): what
    imported us then imports the child too. Otherwise (a Jupyter server running the
    provisioner, the CLI) the safe-path form, which keeps the PYTHONPATH and user
    site-packages this process may have found us through.
    """
    if sys.flags.isolated:
        return [*isolated_argv(sys.executable, module), *args]
    return [*safe_path_argv(sys.executable, module), *args]


def code_argv(code: str, *args: str) -> list[str]:
    """argv that runs `code` with this interpreter, never importing from the cwd."""
    if sys.flags.isolated:
        return [sys.executable, "-I", "-c", code, *args]
    return [sys.executable, "-c", SAFE_PATH_PREFIX + code, *args]


def argv_is_isolated(argv: list[str]) -> bool:
    """Whether a kernel.json argv starts Python in one of the two forms above (or with -P,
    Python 3.11's safe-path flag); doctor and setup use it to find specs of older versions.

    Only the options before the first -m/-c count; a combined flag such as -IB counts.
    """
    for arg in argv[1:]:
        if arg == "-c":
            index = argv.index(arg)
            code = argv[index + 1] if index + 1 < len(argv) else ""
            return code.startswith(SAFE_PATH_PREFIX)
        if arg == "-m" or not arg.startswith("-") or arg.startswith("--"):
            return False
        if "I" in arg or "P" in arg:
            return True
    return False
