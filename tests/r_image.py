"""A second real kernel for the tests: an image with Debian's IRkernel (r-cran-irkernel).

conftest.py's `r_image` fixture calls ensure_r_image once per session. The image is built
offline from Debian packages the way image.py builds the default one (mmdebstrap, then
`docker import`), and tagged by the hash of its package list, so it is built once per
machine and reused after (a CI runner starts fresh and pays the build).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from jupyter_docker_kernel import image
from jupyter_docker_kernel.engine import LABEL_RECIPE, Engine

REPOSITORY = "jupyter-docker-kernel/test-r"
#: python3 runs our supervisor; r-cran-irkernel brings R and the `ir` kernelspec in
#: /usr/share/jupyter/kernels/ir; tini is the container's init (--init finds its own).
APT_PACKAGES = ("python3", "tini", "r-cran-irkernel")
#: As in the default image: HOME's mount point exists, and no file is setuid/setgid.
HOOKS = (
    'mkdir -p "$1/home/kernel"',
    'find "$1" -xdev -perm /6000 -type f -exec chmod ug-s {} +',
)


def recipe() -> image.Recipe:
    return image.Recipe(apt_packages=APT_PACKAGES, pip_packages=())


def tag() -> str:
    return f"{REPOSITORY}:{recipe().apt_digest()[:12]}"


def ensure_r_image(engine: Engine, progress: bool = True) -> str:
    """The R test image's tag; builds it (a few minutes) unless it is already there."""
    wanted = tag()
    if engine.image_inspect(wanted) is not None:
        return wanted
    start = time.monotonic()
    exe = image._mmdebstrap_executable()
    with tempfile.TemporaryDirectory(prefix="jdk-r-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        argv = image.mmdebstrap_args(
            recipe(),
            rootfs,
            sources=image.host_apt_sources(image.SUITE),
            root=os.geteuid() == 0,
            exe=exe,
        )
        hooks = [f"--customize-hook={hook}" for hook in HOOKS]
        argv = [argv[0], *hooks, *argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
            raise RuntimeError(f"mmdebstrap failed ({proc.returncode}) for {wanted}:\n{tail}")
        built = time.monotonic() - start
        engine.run(
            [
                "import",
                "--change", f"ENV PATH={image.IMAGE_PATH}",
                "--change", "ENV LANG=C.UTF-8",
                "--change", "USER 1000:1000",
                "--change", "WORKDIR /home/kernel",
                "--change", f"LABEL {LABEL_RECIPE}={recipe().digest()}",
                "--message", "jupyter-docker-kernel test image with IRkernel",
                str(rootfs),
                wanted,
            ],
            timeout=900,
            own_session=False,
        )  # fmt: skip
    if progress:
        size = (engine.image_inspect(wanted) or {}).get("Size", 0)
        print(
            f"built {wanted}: mmdebstrap {built:.0f} s, total {time.monotonic() - start:.0f} s, "
            f"{int(size) / 1e6:.0f} MB"
        )
    return wanted
