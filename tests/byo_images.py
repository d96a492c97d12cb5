"""Look-alikes of images users bring, built FROM the default image (no registry needed).

tests/test_byo_image.py's `byo_images` fixture builds each once per session with
`docker build --pull=false` and removes them at the end. Each adds one small layer that
reproduces one trait of a real image family:

- stacks: Jupyter Docker Stacks' ENTRYPOINT ["tini", "-g", "--", "start.sh"], whose
  start.sh logs to stdout, tries to fix /etc/passwd for an unknown uid, then exec "$@".
- repo2docker: repo2docker's python entrypoint, which opens a log file in $REPO_DIR (owned
  by the image's user) before it runs its arguments, so it dies under a read-only root.
- no-ipykernel: python3 on PATH is Debian's, which has no ipykernel.
- private-env: the venv is readable by the image's user only (uid 1000).
- writes-at-start: the image's Python writes outside /tmp and HOME when it starts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from jupyter_docker_kernel.settings import DEFAULT_IMAGE

PREFIX = "jdk-test-byo"

START_SH = r"""#!/bin/bash
set -e
_log () {
    if [[ "$*" == "ERROR:"* ]] || [[ "$*" == "WARNING:"* ]] \
            || [[ -z "${JUPYTER_DOCKER_STACKS_QUIET}" ]]; then
        echo "$@"
    fi
}
_log "Entered start.sh with args:" "$@"
if ! whoami &> /dev/null; then
    _log "There is no entry in /etc/passwd for our UID=$(id -u). Attempting to fix..."
    if [[ -w /etc/passwd ]]; then
        echo "jovyan:x:$(id -u):$(id -g):,,,:/home/jovyan:/bin/bash" >> /etc/passwd
    else
        _log "WARNING: unable to fix missing /etc/passwd entry (no write permission)."
    fi
fi
exec "$@"
"""

R2D_ENTRYPOINT = r"""#!/usr/bin/env python3
# Like repo2docker's: tee the child's output to a log file in REPO_DIR.
import os, subprocess, sys
log = open(os.path.join(os.environ.get("REPO_DIR", "."), ".jupyter-server-log.txt"), "ab")
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
for chunk in iter(lambda: child.stdout.read1(1024), b""):
    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    log.write(chunk)
sys.exit(child.wait())
"""

#: Imported by a .pth file at every start (Debian's own sitecustomize would shadow one).
COURSE_START = r"""import sys
try:
    open("/var/tmp/course-stamp", "w").close()
except OSError as exc:
    sys.stderr.write("course setup: cannot write /var/tmp/course-stamp: %s\n" % exc)
    raise SystemExit(1)
"""

SITE_PACKAGES = "/opt/kernel/lib/python3.11/site-packages"

#: name -> (Dockerfile body after FROM, {context file: (text, mode)})
IMAGES: dict[str, tuple[str, dict[str, tuple[str, int]]]] = {
    "stacks": (
        'COPY start.sh /usr/local/bin/start.sh\nENTRYPOINT ["tini", "-g", "--", "start.sh"]\n'
        'CMD ["start-notebook.sh"]\n',
        {"start.sh": (START_SH, 0o755)},
    ),
    "repo2docker": (
        "ENV REPO_DIR=/srv/repo\nCOPY --chown=1000:1000 repo/ /srv/repo/\n"
        "COPY repo2docker-entrypoint /usr/local/bin/repo2docker-entrypoint\n"
        'ENTRYPOINT ["/usr/local/bin/repo2docker-entrypoint"]\n'
        'CMD ["jupyter", "notebook", "--ip", "0.0.0.0"]\n',
        {"repo2docker-entrypoint": (R2D_ENTRYPOINT, 0o755), "repo/README": ("course\n", 0o644)},
    ),
    "no-ipykernel": ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n", {}),
    "private-env": (
        "USER root\nRUN chgrp 1000 /opt/kernel && chmod 0750 /opt/kernel\nUSER 1000:1000\n",
        {},
    ),
    "writes-at-start": (
        f"COPY course_start.py course.pth {SITE_PACKAGES}/\n",
        {"course_start.py": (COURSE_START, 0o644), "course.pth": ("import course_start\n", 0o644)},
    ),
}


def tag(name: str) -> str:
    return f"{PREFIX}/{name}:test"


def build(name: str, workdir: Path, base: str = DEFAULT_IMAGE) -> str:
    """Build one look-alike FROM the default image (never pulled); returns its tag."""
    body, files = IMAGES[name]
    context = workdir / name
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {base}\n{body}")
    for rel, (text, mode) in files.items():
        path = context / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    subprocess.run(
        ["docker", "build", "--pull=false", "--quiet", "--tag", tag(name), str(context)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return tag(name)


def remove(tags: list[str]) -> None:
    """Remove the look-alikes (ours only, by tag); an image already gone is fine."""
    if tags:
        subprocess.run(["docker", "image", "rm", *tags], capture_output=True, check=False)
