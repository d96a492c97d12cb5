"""pip in a kernel has no network: say so at once, and how to add packages instead.

Runs inside images, never on the host. image.py's Dockerfiles run this file once at build
time with the image's Python (`python3 _pip_guard.py`, as root): it copies itself next to
pip as `_jupyter_docker_kernel_pip_guard.py` and adds one import line to pip/__init__.py.
From then on every `pip ...`, `python -m pip ...` and `%pip ...` imports it first; for an
install, download or wheel that would reach an index it prints MESSAGE and exits 1, instead
of pip retrying an unreachable index for 12 s and ending in a connection error. Installs
that need no index (`--no-index`, as our image builds use) go ahead. Not a security
control: the kernel has no network whatever pip does; this only makes that plain.

Python 3.7 syntax on purpose (as _supervise.py): it runs with whatever Python an image has.
"""

import os
import sys
from typing import List

GUARD_MODULE = "_jupyter_docker_kernel_pip_guard"
IMPORT_LINE = "import " + GUARD_MODULE + "  # added by jupyter-docker-kernel: no network\n"
BLOCKED = ("install", "download", "wheel")

MESSAGE = """\
pip: this kernel has no network, by design (jupyter-docker-kernel starts kernels with
--network none), so pip cannot download {what}. Nothing was installed.
Add packages to the kernel's image instead, on the host:
  jupyter-docker-kernel image build --from IMAGE --tag course/NAME:1 --requirements requirements.txt
  jupyter-docker-kernel setup --name NAME --image course/NAME:1 --replace
(IMAGE is the kernel's image: 'jupyter-docker-kernel list' shows it. A wheel file that is
already in the notebook's folder installs with: pip install --no-index FILE.whl)
"""


def blocked(argv: List[str]) -> bool:
    """True when argv is a pip command that would reach a package index."""
    prog = os.path.basename(argv[0]) if argv else ""
    # `python -m pip` imports pip while sys.argv[0] is still "-m"; the console scripts
    # are pip, pip3, pip3.11. Anything else importing pip (a library, the kernel) is not
    # running pip's command line.
    if not (prog == "-m" or prog.startswith("pip") or prog == "__main__.py"):
        return False
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    if not words or words[0] not in BLOCKED:
        return False
    return "--no-index" not in argv


def check() -> None:
    """Called on import (from pip/__init__.py): exit 1 with MESSAGE when blocked."""
    if blocked(sys.argv):
        names = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
        what = "'" + " ".join(names[1:]) + "'" if len(names) > 1 else "packages"
        sys.stderr.write(MESSAGE.format(what=what))
        sys.stderr.flush()
        sys.exit(1)


def install() -> None:
    """Build time: copy this file next to pip and make pip import it (idempotent)."""
    import shutil

    import pip

    init = pip.__file__
    site = os.path.dirname(os.path.dirname(init))
    shutil.copyfile(__file__, os.path.join(site, GUARD_MODULE + ".py"))
    with open(init) as fh:
        text = fh.read()
    if IMPORT_LINE not in text:
        with open(init, "a") as fh:
            fh.write("\n" + IMPORT_LINE)
    print("pip guard installed in " + site)


if __name__ == "__main__":
    install()
else:
    check()
