"""Build the default kernel image offline: Debian packages + PyPI wheels, no registry pull.

cli.py (`image build`) calls build_image; the tests' kernel_image fixture calls ensure_image.
Four steps: pip downloads wheels for the image's Python, mmdebstrap makes a Debian root
filesystem, `docker import` turns it into a base image, and `docker build --network none`
installs the wheels into a venv on top. The image carries the hash of its Recipe as a
label, so an unchanged recipe is reused in about a second. images/default/Dockerfile is
the same image for machines that can pull `python:3.11-slim-bookworm`; keep both in sync.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from jupyter_docker_kernel import __version__, hostpython
from jupyter_docker_kernel.engine import LABEL_PREFIX, LABEL_RECIPE, Engine, first_line
from jupyter_docker_kernel.errors import ImageError, SettingsError
from jupyter_docker_kernel.settings import DEFAULT_IMAGE

log = logging.getLogger(__name__)

#: Bump when the build changes in a way the Recipe's fields do not show (mmdebstrap
#: options, step order): every existing image then counts as stale and is rebuilt.
RECIPE_VERSION = 1

SUITE = "bookworm"
#: The python3 each supported Debian suite ships, and its glibc (the newest manylinux tag).
PYTHON_FOR_SUITE = {"bookworm": "3.11"}
GLIBC_FOR_SUITE = {"bookworm": (2, 36)}

DEFAULT_APT_PACKAGES = ("python3", "python3-venv", "tini", "ca-certificates")
DEFAULT_PIP_PACKAGES = ("ipykernel>=6.29", "numpy", "pandas", "matplotlib")

#: Repository of the `docker import`ed root filesystems, tagged by the apt part's hash.
BASE_REPOSITORY = "jupyter-docker-kernel/base"
#: Marks the throw-away wheel-install stage so the legacy builder's leftover can be pruned.
LABEL_STAGE = f"{LABEL_PREFIX}.build-stage"

KERNEL_UID = 1000
VENV = "/opt/kernel"
#: Written in full: an imported image has no ENV, so `$PATH` would expand to nothing.
IMAGE_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Docs, man pages and translations are dead weight in a kernel image; licences stay.
_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)

_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# A PEP 508 name, optional extras and version clauses; no URLs, paths or pip options,
# because the spec lands on a pip command line and in a Dockerfile RUN line.
_PIP_SPEC = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"
    r"(?:(?:===|==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+"
    r"(?:,(?:===|==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+)*)?$"
)

_ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


#: The in-image script that makes pip say "no network" at once (_pip_guard.py); every
#: image we build runs it, so `pip install` and `%pip install` in a kernel fail fast.
PIP_GUARD = Path(__file__).with_name("_pip_guard.py")
#: What an origin of a conda dependency starts with (see read_environment and _pip_error).
CONDA_ORIGIN = "the conda dependencies"


class WheelRecipe(Protocol):
    """What fetch_wheels needs: the target Python and platform, and the packages."""

    @property
    def python_version(self) -> str: ...
    @property
    def arch(self) -> str: ...
    @property
    def glibc(self) -> tuple[int, int]: ...
    @property
    def pip_packages(self) -> tuple[str, ...]: ...
    def pip_digest(self) -> str: ...


def _pip_digest(recipe: WheelRecipe) -> str:
    return _sha256(
        {
            "version": RECIPE_VERSION,
            "python": recipe.python_version,
            "platforms": platform_tags(recipe.arch, recipe.glibc),
            "pip": recipe.pip_packages,
        }
    )


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the image's content; its digest labels the built image.

    Made by default_recipe (cli.py, ensure_image); build_image only reads it.
    """

    apt_packages: tuple[str, ...]
    pip_packages: tuple[str, ...]
    suite: str = SUITE
    python_version: str = PYTHON_FOR_SUITE[SUITE]
    arch: str = field(default_factory=lambda: host_arch())
    version: int = RECIPE_VERSION

    def apt_digest(self) -> str:
        """Hash of what goes into the root filesystem; keys the rootfs cache and base tag."""
        return _sha256(
            {
                "version": self.version,
                "suite": self.suite,
                "arch": self.arch,
                "apt": self.apt_packages,
                "dpkg": _DPKG_OPTIONS,
            }
        )

    @property
    def glibc(self) -> tuple[int, int]:
        """The suite's glibc: the newest manylinux tag its wheels may carry."""
        return GLIBC_FOR_SUITE[self.suite]

    def pip_digest(self) -> str:
        """Hash of what pip downloads; keys the wheel cache."""
        return _pip_digest(self)

    def digest(self) -> str:
        """sha256 of the whole recipe, Dockerfile text included: the image's LABEL_RECIPE."""
        return _sha256(
            {
                "version": self.version,
                "apt": self.apt_digest(),
                "pip": self.pip_digest(),
                "dockerfile": self.dockerfile,
                "pip_guard": _file_digest(PIP_GUARD),
            }
        )

    @property
    def base_tag(self) -> str:
        """The imported root filesystem this recipe builds on."""
        return f"{BASE_REPOSITORY}:{self.apt_digest()[:12]}"

    @property
    def dockerfile(self) -> str:
        """The generated Dockerfile; built with the wheels in ./wheels and no network."""
        pip_args = " ".join(shlex.quote(spec) for spec in self.pip_packages)
        py = self.python_version
        major, minor = py.split(".")
        return f"""\
# Generated by jupyter_docker_kernel.image (recipe version {self.version}); do not edit.
# images/default/Dockerfile is the same image built online: change both together.

# Stage 1 installs the wheels, so that the final image has no layer holding them.
# debugpy goes: kernel.json offers no debugger, and importing it costs every kernel start.
FROM {self.base_tag} AS wheels
LABEL {LABEL_STAGE}=wheels
COPY wheels /tmp/wheels
COPY pip_guard.py /tmp/pip_guard.py
# The pip guard: `pip install` in a kernel says at once that there is no network.
RUN set -eu; \\
    python3 -c 'import sys; assert sys.version_info[:2] == ({major}, {minor}), sys.version'; \\
    python3 -m venv {VENV}; \\
    {VENV}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \\
        --find-links /tmp/wheels {pip_args}; \\
    {VENV}/bin/pip uninstall --yes --quiet debugpy; \\
    {VENV}/bin/python /tmp/pip_guard.py; \\
    {VENV}/bin/python -m compileall -q {VENV}

FROM {self.base_tag}
COPY --from=wheels {VENV} {VENV}
# The root filesystem is read-only at run time: compile now, and never write .pyc later.
# No setuid/setgid files: nothing in a kernel container should gain privileges.
RUN set -eu; \\
    python3 -m compileall -q /usr/lib/python{py}; \\
    groupadd --gid {KERNEL_UID} kernel; \\
    useradd --uid {KERNEL_UID} --gid {KERNEL_UID} --home-dir /home/kernel --create-home \\
        --shell /bin/sh kernel; \\
    find / -xdev -perm /6000 -type f -exec chmod ug-s {{}} +
ENV PATH={IMAGE_PATH} \\
    LANG=C.UTF-8 \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1
USER {KERNEL_UID}:{KERNEL_UID}
WORKDIR /home/kernel
# Last, so that a new digest does not invalidate the layers above.
ARG RECIPE_DIGEST
LABEL {LABEL_RECIPE}=$RECIPE_DIGEST \\
    org.opencontainers.image.title="jupyter-docker-kernel default kernel" \\
    org.opencontainers.image.version="{__version__}" \\
    org.opencontainers.image.description="Jupyter kernel image: Debian {self.suite}, \
Python {py} venv at {VENV} with ipykernel; user {KERNEL_UID}, no setuid files"
CMD ["python3", "-m", "ipykernel_launcher", "--help"]
"""


@dataclass(frozen=True)
class BuildResult:
    """What build_image did; cli.py prints it."""

    tag: str
    image_id: str
    digest: str
    reused: bool
    seconds: float


def default_recipe(pip_packages: Sequence[str] = (), apt_packages: Sequence[str] = ()) -> Recipe:
    """The default packages plus the user's extras (cli's --packages / --apt-packages).

    Raises SettingsError for a name that could not be a Debian package or a pip
    requirement, before anything is downloaded.
    """
    for name in apt_packages:
        if not _APT_NAME.match(name):
            raise SettingsError(
                f"'{name}' is not a Debian package name (lowercase letters, digits, "
                "'+', '-', '.'). No image was built. Check it with 'apt-cache search'."
            )
    _check_pip_specs(pip_packages, "--packages")
    return Recipe(
        apt_packages=_unique(DEFAULT_APT_PACKAGES, apt_packages),
        pip_packages=_unique(DEFAULT_PIP_PACKAGES, pip_packages),
        arch=host_arch(),
    )


def check_tag(tag: str, *, adds_packages: bool, layered: bool = False) -> None:
    """Refuse to build packages (or a --from layer) into the shared default tag.

    Every kernelspec set up without --image runs DEFAULT_IMAGE: rebuilding it with a
    course's packages would change all of those kernels at once, mid-course.
    """
    if tag == DEFAULT_IMAGE and (adds_packages or layered):
        what = "--from" if layered and not adds_packages else "added packages"
        raise SettingsError(
            f"An image with {what} needs a tag of its own: {DEFAULT_IMAGE} is the shared "
            "default, and rebuilding it would change every kernel that uses it. No image "
            "was built. Pass --tag, e.g. --tag course/NAME:1, then setup --image course/NAME:1."
        )


# -- course files: requirements.txt, apt.txt, environment.yml --------------------------------


def read_requirements(path: Path, origins: dict[str, str] | None = None) -> list[str]:
    """A requirements.txt's requirements, checked like --packages; `-r FILE` is followed.

    `origins` (if given) gets normalised name -> "FILE:LINE", so that a package pip cannot
    find is reported with the line it came from. Options (--index-url, -e, hashes) and
    URLs are refused: the image installs wheels from the host pip's index, offline.
    """
    requirements: list[str] = []
    for number, line in _lines(path):
        if line.startswith(("-r ", "--requirement ", "-r", "--requirement=")):
            included = re.sub(r"^(-r|--requirement)[= ]?", "", line).strip()
            requirements += read_requirements(path.parent / included, origins)
            continue
        spec = "".join(line.split())
        where = f"{path}:{number}"
        if spec.startswith("-") or not _PIP_SPEC.match(spec):
            raise SettingsError(
                f"{where}: '{line}' is not a requirement this build accepts (a name, optional "
                "[extras] and version clauses such as 'scipy>=1.11'; no pip options, URLs, "
                "paths or ';' markers). No image was built. Fix or drop that line."
            )
        requirements.append(spec)
        if origins is not None:
            origins.setdefault(_normal_name(spec), where)
    return requirements


def read_apt_file(path: Path) -> list[str]:
    """An apt.txt (repo2docker's format): Debian package names, one or more a line."""
    names: list[str] = []
    for number, line in _lines(path):
        for name in line.split():
            if not _APT_NAME.match(name):
                raise SettingsError(
                    f"{path}:{number}: '{name}' is not a Debian package name (lowercase "
                    "letters, digits, '+', '-', '.'). No image was built. Fix or drop it."
                )
            names.append(name)
    return names


def read_environment(
    path: Path, origins: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """environment.yml -> (pip requirements, notes): its `pip:` section, and its conda
    dependencies as PyPI requirements (conda's `numpy=1.26` becomes `numpy==1.26.*`).

    python and pip themselves are left out (the image has them); a conda dependency that
    PyPI has no wheel of fails the build's pip step, naming the package (see _pip_error).
    """
    try:
        import yaml
    except ImportError as exc:  # PyYAML comes with Jupyter Server, not with us
        raise SettingsError(
            "Reading environment.yml needs PyYAML, which is not installed for "
            f"{sys.executable}. No image was built. Install it (pip install pyyaml), or "
            "list the packages in a requirements.txt and pass --requirements."
        ) from exc
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(
            f"Cannot read {path}: {exc.strerror or exc}. No image was built."
        ) from exc
    except yaml.YAMLError as exc:
        raise SettingsError(
            f"{path} is not valid YAML ({str(exc).splitlines()[0]}). No image was built."
        ) from exc
    deps = data.get("dependencies") if isinstance(data, dict) else None
    if not isinstance(deps, list):
        raise SettingsError(
            f"{path} has no 'dependencies:' list, so there is nothing to install. "
            "No image was built."
        )
    requirements: list[str] = []
    notes: list[str] = []
    for item in deps:
        if isinstance(item, dict) and isinstance(item.get("pip"), list):
            for entry in item["pip"]:
                text = str(entry).strip()
                if text.startswith(("-r", "--requirement")):
                    included = re.sub(r"^(-r|--requirement)[= ]?", "", text).strip()
                    requirements += read_requirements(path.parent / included, origins)
                    continue
                spec = "".join(text.split())
                if not _PIP_SPEC.match(spec):
                    raise SettingsError(
                        f"{path}: pip entry '{text}' is not a requirement this build accepts "
                        "(a name, optional [extras] and version clauses). No image was built."
                    )
                requirements.append(spec)
                if origins is not None:
                    origins.setdefault(_normal_name(spec), f"{path}'s pip section")
            continue
        converted = conda_to_pip(str(item), path)
        if converted is None:
            notes.append(f"{item}: left out (the image has its own python and pip)")
            continue
        requirements.append(converted)
        if origins is not None:
            origins.setdefault(_normal_name(converted), f"{CONDA_ORIGIN} of {path}")
    return requirements, notes


_CONDA_SPEC = re.compile(r"^(?:[A-Za-z0-9_.-]+::)?([A-Za-z0-9_.-]+)\s*(.*)$")


def conda_to_pip(item: str, path: Path) -> str | None:
    """One conda dependency as a pip requirement; None for python and pip themselves."""
    match = _CONDA_SPEC.match(item.strip())
    if not match:
        raise SettingsError(
            f"{path}: conda dependency '{item}' is not 'name', 'name=version' or "
            "'name>=version'. No image was built."
        )
    name, constraint = match.group(1), "".join(match.group(2).split())
    if name.lower() in ("python", "pip"):
        return None
    if constraint and (constraint[0].isdigit() or re.match(r"^=[^=]", constraint)):
        # conda's "=1.26" and "1.26" mean 1.26.*; a third field is a build string.
        version = constraint.lstrip("=").split("=")[0]
        constraint = f"=={version}" if version.endswith("*") else f"=={version}.*"
    spec = f"{name}{constraint}"
    if not _PIP_SPEC.match(spec):
        raise SettingsError(
            f"{path}: conda dependency '{item}' cannot be read as a PyPI requirement "
            f"('{spec}'). No image was built. Write it as name, name=1.2 or name>=1.2."
        )
    return spec


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-empty lines of a course file, comments removed."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(
            f"Cannot read {path}: {exc.strerror or exc}. No image was built."
        ) from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            yield number, line


# -- layering onto an existing image (--from) ------------------------------------------------

#: Run in the --from image by its Python as root: version, libc, pip, site dir, user.
BASE_PROBE_CODE = r"""
import json, platform, sys
try:
    import pip
    has_pip = True
except Exception:
    has_pip = False
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "libc": list(platform.libc_ver()),
                  "pip": has_pip, "executable": sys.executable}))
"""


@dataclass(frozen=True)
class LayerRecipe:
    """Packages layered onto an image the engine already has (`image build --from`).

    Made by layer_recipe() from a probe of that image; build_layer only reads it. Its
    digest covers the base's ID, so a rebuilt base makes the layer stale.
    """

    base: str
    base_id: str
    base_user: str
    python: str
    python_version: str
    glibc: tuple[int, int]
    pip_packages: tuple[str, ...]
    arch: str = field(default_factory=lambda: host_arch())

    def pip_digest(self) -> str:
        return _pip_digest(self)

    def digest(self) -> str:
        return _sha256(
            {
                "layer": self.base_id,
                "pip": self.pip_digest(),
                "dockerfile": self.dockerfile,
                "pip_guard": _file_digest(PIP_GUARD),
            }
        )

    @property
    def dockerfile(self) -> str:
        """Install the wheels with the base's own Python, as root; then its USER again.

        One stage: the legacy builder cannot mount the wheels for a RUN, so their COPY
        layer stays in the image (the size of the added wheels).
        """
        pip_args = " ".join(shlex.quote(spec) for spec in self.pip_packages)
        py = shlex.quote(self.python)
        install = (
            f"{py} -m pip install --no-index --no-cache-dir --disable-pip-version-check "
            f"--find-links /tmp/wheels {pip_args}; \\\n    "
            if self.pip_packages
            else ""
        )
        user = f"USER {self.base_user}\n" if self.base_user else ""
        return f"""\
# Generated by jupyter_docker_kernel.image (image build --from); do not edit.
FROM {self.base_id}
USER root
COPY wheels /tmp/wheels
COPY pip_guard.py /tmp/pip_guard.py
RUN set -eu; \\
    {install}{py} /tmp/pip_guard.py; \\
    {py} -m compileall -q "$({py} -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
{user}ARG RECIPE_DIGEST
LABEL {LABEL_RECIPE}=$RECIPE_DIGEST \\
    org.opencontainers.image.base.name="{self.base}"
"""


def layer_recipe(
    engine: Engine, base: str, pip_packages: Sequence[str], python: str = "python3"
) -> LayerRecipe:
    """Probe the --from image (its Python's version, glibc and pip) and make the recipe.

    Raises ImageError when the image is missing, has no such Python or no pip, or is not
    glibc-based (PyPI's manylinux wheels need glibc).
    """
    _check_pip_specs(pip_packages, "--packages/--requirements")
    inspect = engine.require_image(base)
    config = inspect.get("Config") or {}
    args = ["run", "--rm", "--pull=never", "--network", "none", "--entrypoint=", "--user", "0"]
    proc = engine.run([*args, base, python, "-c", BASE_PROBE_CODE], check=False, timeout=120)
    lines = proc.stdout.strip().splitlines()
    try:
        facts = json.loads(lines[-1])
    except (IndexError, ValueError):
        errors = [
            line.strip()
            for line in proc.stderr.splitlines()
            if line.strip() and not line.startswith("Run '")  # the CLI's "see --help"
        ]
        last = (errors or ["no output"])[-1]
        if proc.returncode in (126, 127) or "executable file not found" in proc.stderr:
            last = "not found: not on the image's PATH, or no such file"
        raise ImageError(
            f"Image '{base}' cannot run {python} ({last}). No image was built. --from needs "
            "an image with Python; name it with --python PATH if it is not python3."
        ) from None
    libc, libc_version = facts["libc"]
    if libc != "glibc":
        raise ImageError(
            f"Image '{base}' is not glibc-based ({libc or 'unknown libc'}, e.g. Alpine), so "
            "PyPI's manylinux wheels do not fit it. No image was built. Layer onto a "
            "Debian or Ubuntu based image instead."
        )
    if not facts["pip"]:
        raise ImageError(
            f"{facts['executable']} in '{base}' has no pip, which installs the wheels. No "
            "image was built. Use an image whose Python has pip (python3 -m ensurepip)."
        )
    major, minor = (int(part) for part in libc_version.split(".")[:2])
    return LayerRecipe(
        base=base,
        base_id=str(inspect["Id"]),
        base_user=str(config.get("User") or ""),
        python=python,
        python_version=str(facts["python"]),
        glibc=(major, minor),
        pip_packages=tuple(dict.fromkeys(pip_packages)),
    )


def build_layer(
    engine: Engine,
    recipe: LayerRecipe,
    *,
    tag: str,
    force: bool = False,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = lambda s: None,
    origins: Mapping[str, str] | None = None,
    keep: Collection[str] = (),
) -> BuildResult:
    """Build `recipe` as `tag` in two steps (wheels, docker build), or reuse `tag` when it
    already carries the recipe's digest. Raises ImageError or EngineError."""
    start = time.monotonic()
    digest = recipe.digest()
    previous = engine.image_inspect(tag)
    if previous is not None and not force and _labels(previous).get(LABEL_RECIPE) == digest:
        return BuildResult(tag, previous["Id"], digest, True, time.monotonic() - start)
    cache = cache_dir or default_cache_dir()
    progress(
        f"building {tag} from {recipe.base} ({recipe.base_id[7:19]}, Python "
        f"{recipe.python_version}, glibc {recipe.glibc[0]}.{recipe.glibc[1]})"
    )
    with _step(progress, 1, "wheels (pip download)", total=2) as note:
        if recipe.pip_packages:
            wheels, fetched = fetch_wheels(recipe, cache, force=force, origins=origins)
            note(f"{len(list(wheels.glob('*.whl')))} wheels, {_megabytes(wheels)}")
            if not fetched:
                note("cached")
        else:
            wheels = cache / "wheels" / "none"
            wheels.mkdir(parents=True, exist_ok=True)
            note("none to add")
    with _step(progress, 2, "layer (docker build --network none)", total=2) as note:
        image_id = _build_in_context(
            engine, recipe.dockerfile, wheels, cache, tag, digest, force=force, progress=progress
        )
        note(_size_of(engine, image_id))
    if previous is not None and previous["Id"] != image_id and previous["Id"] not in keep:
        engine.run(["image", "rm", previous["Id"]], check=False, timeout=120)
    return BuildResult(tag, image_id, digest, False, time.monotonic() - start)


def _check_pip_specs(specs: Sequence[str], option: str) -> None:
    for spec in specs:
        if not _PIP_SPEC.match(spec):
            raise SettingsError(
                f"'{spec}' is not a pip requirement this build accepts (a name, optional "
                "[extras] and version clauses such as 'scipy>=1.11', no spaces, URLs or "
                f"options). No image was built. Fix or drop it from {option}."
            )


def ensure_image(
    engine: Engine,
    tag: str = DEFAULT_IMAGE,
    progress: Callable[[str], None] = lambda s: None,
) -> BuildResult:
    """Build the default recipe as `tag` unless an up-to-date image is already there.

    Called by the tests' kernel_image fixture, and by anything that needs the default
    image present without a user asking for a build. An image under `tag` without our
    recipe label was built another way (images/default/Dockerfile, a pull) and is kept:
    replacing what the user made is not ours to do; `image build` does it on request.
    """
    existing = engine.image_inspect(tag)
    if existing is not None and LABEL_RECIPE not in _labels(existing):
        return BuildResult(tag, existing["Id"], "", True, 0.0)
    return build_image(engine, default_recipe(), tag=tag, progress=progress)


def build_image(
    engine: Engine,
    recipe: Recipe,
    *,
    tag: str = DEFAULT_IMAGE,
    force: bool = False,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = lambda s: None,
    origins: Mapping[str, str] | None = None,
    keep: Collection[str] = (),
) -> BuildResult:
    """Build `recipe` as `tag`, or reuse `tag` when it already carries the recipe's digest.

    `progress` gets one line per finished step. `force` refetches wheels and Debian
    packages and rebuilds without the builder's cache. Raises ImageError or EngineError.
    """
    start = time.monotonic()
    digest = recipe.digest()
    previous = engine.image_inspect(tag)
    if previous is not None and not force and _labels(previous).get(LABEL_RECIPE) == digest:
        return BuildResult(tag, previous["Id"], digest, True, time.monotonic() - start)

    cache = cache_dir or default_cache_dir()
    base = None if force else engine.image_inspect(recipe.base_tag)
    if base is None:
        _mmdebstrap_executable()  # fail before spending a minute on wheels
    progress(f"building {tag} (recipe {digest[:12]}); a first build takes a few minutes")

    with _step(progress, 1, "wheels (pip download)") as note:
        wheels, fetched = fetch_wheels(recipe, cache, force=force, origins=origins)
        note(f"{len(list(wheels.glob('*.whl')))} wheels, {_megabytes(wheels)}")
        if not fetched:
            note("cached")

    with _step(progress, 2, f"debian rootfs (mmdebstrap {recipe.suite})") as note:
        if base is None:
            rootfs, made = make_rootfs(recipe, cache, force=force)
            note(_megabytes(rootfs) if made else "cached")
        else:
            rootfs = None
            note(f"skipped: {recipe.base_tag} is present")

    with _step(progress, 3, f"base image (docker import {recipe.base_tag})") as note:
        if base is None:
            assert rootfs is not None
            old_base = engine.image_inspect(recipe.base_tag)
            message = f"mmdebstrap {recipe.suite} for jupyter-docker-kernel"
            engine.run(
                ["import", "--message", message, str(rootfs), recipe.base_tag],
                timeout=900,
                own_session=False,
            )
        else:
            old_base = None
            note("present")

    with _step(progress, 4, "kernel image (docker build --network none)") as note:
        image_id = _docker_build(
            engine, recipe, wheels, cache, tag, digest, force=force, progress=progress
        )
        note(_size_of(engine, image_id))

    # Best effort, without --force: an image still tagged elsewhere or used by a container
    # stays, which is what the user wants; so does one a kernelspec names by ID (`keep`).
    for old in (previous, old_base):
        if old is not None and old["Id"] != image_id and old["Id"] not in keep:
            engine.run(["image", "rm", old["Id"]], check=False, timeout=120)
    return BuildResult(tag, image_id, digest, False, time.monotonic() - start)


# -- steps ----------------------------------------------------------------------------------


def fetch_wheels(
    recipe: WheelRecipe,
    cache: Path,
    *,
    force: bool = False,
    origins: Mapping[str, str] | None = None,
) -> tuple[Path, bool]:
    """Step 1: every wheel the venv needs, in the cache; returns (directory, downloaded).

    A finished directory is renamed into place whole, so a present one is complete and
    the build can run without reaching the package index again.
    """
    dest = cache / "wheels" / recipe.pip_digest()[:12]
    if dest.is_dir() and not force:
        return dest, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        argv = pip_download_args(recipe, tmp)
        log.debug("running %s", " ".join(argv))
        proc = _run_tool(argv, "pip", timeout=1800)
        if proc.returncode != 0:
            raise _pip_error(recipe, proc.stderr + proc.stdout, origins or {})
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, True


def make_rootfs(recipe: Recipe, cache: Path, *, force: bool = False) -> tuple[Path, bool]:
    """Step 2: a Debian root filesystem tarball in the cache; returns (tarball, made)."""
    out = cache / f"rootfs-{recipe.apt_digest()[:12]}.tar"
    if out.is_file() and not force:
        return out, False
    cache.mkdir(parents=True, exist_ok=True)
    # mmdebstrap picks the output format from the name, so the partial file ends in .tar.
    partial = out.with_name(f".{out.stem}-{os.getpid()}.partial.tar")
    root = os.geteuid() == 0
    sources = host_apt_sources(recipe.suite)
    exe = _mmdebstrap_executable()
    argv = mmdebstrap_args(recipe, partial, sources=sources, root=root, exe=exe)
    log.debug("running %s", " ".join(argv))
    try:
        proc = _run_tool(argv, "mmdebstrap", timeout=1800)
        if proc.returncode != 0:
            raise _mmdebstrap_error(recipe, proc.stderr + proc.stdout, root=root)
        partial.rename(out)
    finally:
        partial.unlink(missing_ok=True)
    return out, True


def _docker_build(
    engine: Engine,
    recipe: Recipe,
    wheels: Path,
    cache: Path,
    tag: str,
    digest: str,
    *,
    force: bool,
    progress: Callable[[str], None] = lambda s: None,
) -> str:
    """Step 4: `docker build` of the recipe's Dockerfile (see _build_in_context)."""
    return _build_in_context(
        engine, recipe.dockerfile, wheels, cache, tag, digest, force=force, progress=progress
    )


def _build_in_context(
    engine: Engine,
    dockerfile: str,
    wheels: Path,
    cache: Path,
    tag: str,
    digest: str,
    *,
    force: bool,
    progress: Callable[[str], None],
) -> str:
    """`docker build --network none` in a scratch context of hard links to the cached
    wheels plus the pip guard; each build step the engine starts goes to `progress`."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".context-", dir=cache) as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(dockerfile)
        shutil.copyfile(PIP_GUARD, context / "pip_guard.py")
        (context / "wheels").mkdir()
        for wheel in wheels.glob("*.whl"):
            _link_or_copy(wheel, context / "wheels" / wheel.name)
        iidfile = context.parent / f"{context.name}.iid"
        args = [
            "build",
            "--network", "none",
            "--pull=false",
            "--force-rm",
            "--build-arg", f"RECIPE_DIGEST={digest}",
            "--iidfile", str(iidfile),
            "--tag", tag,
        ]  # fmt: skip
        if os.environ.get("DOCKER_BUILDKIT") == "1":
            args.append("--progress=plain")  # BuildKit's tty display would not stream
        if force:
            args.append("--no-cache")
        ticker = _Ticker(progress)
        try:
            proc = engine.stream(
                [*args, str(context)],
                on_line=lambda line: _build_progress(line, ticker.say),
                timeout=1800,
            )
            image_id = iidfile.read_text().strip() if iidfile.is_file() else ""
        finally:
            ticker.stop()
            iidfile.unlink(missing_ok=True)
            # The legacy builder keeps the wheel stage as an untagged image; BuildKit does not.
            engine.run(
                ["image", "prune", "--force", "--filter", f"label={LABEL_STAGE}"],
                check=False,
                timeout=120,
            )
    log.debug("docker build output:\n%s", proc.stdout)
    if proc.returncode != 0 or not image_id:
        raise _build_error(engine, proc.stdout, tag)
    return image_id


#: The engine's line for each build step: the legacy builder's `Step 3/12 : RUN ...` and
#: BuildKit's plain `#7 [wheels 3/5] RUN ...`.
_BUILD_STEP = re.compile(r"^(Step \d+/\d+ : .*|#\d+ \[[^\]]+\] .*)$")


class _Ticker:
    """Says `... still running (45 s)` when a build step has printed nothing for
    HEARTBEAT seconds: the venv's RUN step alone takes a minute or more."""

    HEARTBEAT = 15.0

    def __init__(self, progress: Callable[[str], None]) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="build-ticker", daemon=True)
        self._thread.start()

    def say(self, line: str) -> None:
        with self._lock:
            self._since = time.monotonic()
            self._progress(line)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.HEARTBEAT):
            with self._lock:
                quiet = time.monotonic() - self._since
                if quiet >= self.HEARTBEAT:
                    self._progress(f"      ... still running ({quiet:.0f} s in this step)")


def _build_progress(line: str, progress: Callable[[str], None]) -> None:
    """Pass the engine's step lines on (shortened), so a long build shows where it is."""
    log.debug("build: %s", line)
    line = " ".join(line.split())
    if _BUILD_STEP.match(line):
        short = line if len(line) <= 96 else line[:93] + "..."
        progress(f"      {short}")


# -- pure helpers (tested without Docker) ---------------------------------------------------


def host_arch() -> str:
    """This machine's architecture in manylinux spelling (x86_64, aarch64)."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def platform_tags(arch: str, glibc: tuple[int, int] = GLIBC_FOR_SUITE[SUITE]) -> list[str]:
    """pip --platform values for `arch` up to `glibc`, newest first (pip's preference order)."""
    if arch not in ("x86_64", "aarch64"):
        raise ImageError(
            f"Building the default image on '{arch}' is not supported (x86_64 and aarch64 "
            "are). No image was built. Build images/default/Dockerfile with your engine, "
            "or pass --image to use an image of your own."
        )
    major, newest = glibc
    tags = [f"manylinux_{major}_{minor}_{arch}" for minor in range(newest, 4, -1)]
    # The legacy names; manylinux1 and 2010 were only ever defined for x86 (PEP 513, 571).
    legacy = ("2014", "2010", "1") if arch == "x86_64" else ("2014",)
    return tags + [f"manylinux{name}_{arch}" for name in legacy]


def pip_download_args(recipe: WheelRecipe, dest: Path) -> list[str]:
    """The pip command for step 1; runs with this interpreter's pip and its configuration,
    never importing from the cwd (see hostpython)."""
    major, minor = recipe.python_version.split(".")
    argv = [
        *hostpython.module_argv("pip"), "download",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--only-binary=:all:",
        "--python-version", recipe.python_version,
        "--implementation", "cp",
        "--abi", f"cp{major}{minor}",
    ]  # fmt: skip
    for tag in platform_tags(recipe.arch, recipe.glibc):
        argv += ["--platform", tag]
    return [*argv, "--dest", str(dest), *recipe.pip_packages]


def mmdebstrap_args(
    recipe: Recipe,
    out: Path,
    *,
    sources: Path | None,
    root: bool,
    exe: str = "mmdebstrap",
) -> list[str]:
    """The mmdebstrap command for step 2; `sources` is the host's apt sources file, if any."""
    argv = [exe, "--variant=minbase", f"--include={','.join(recipe.apt_packages)}"]
    argv += [f"--dpkgopt={option}" for option in _DPKG_OPTIONS]
    if not root:
        argv.append("--mode=unshare")
    argv += [recipe.suite, str(out)]
    if sources is not None:
        argv.append(str(sources))
    return argv


def host_apt_sources(suite: str, etc: Path = Path("/etc/apt")) -> Path | None:
    """The host's apt sources file when it lists `suite`, so the build uses its mirror.

    None otherwise (mmdebstrap then uses its default mirror): a trixie host's sources
    would silently give a trixie root filesystem with the wrong Python.
    """
    for candidate in (etc / "sources.list.d" / "debian.sources", etc / "sources.list"):
        try:
            text = candidate.read_text()
        except OSError:
            continue
        if re.search(rf"(?m)^\s*(?:Suites:.*\s|deb\s.*\s){re.escape(suite)}(?:\s|$)", text):
            return candidate
    return None


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/jupyter-docker-kernel (~/.cache/... when unset or relative)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return root / "jupyter-docker-kernel"


# -- errors ---------------------------------------------------------------------------------


def _pip_error(
    recipe: WheelRecipe, output: str, origins: Mapping[str, str] | None = None
) -> ImageError:
    """Turn a failed `pip download` into an error naming the package at fault, and the
    file and line it came from (`origins`: normalised name -> "requirements.txt:3")."""
    missing = re.search(r"No matching distribution found for (\S+)", output)
    target = f"CPython {recipe.python_version} on manylinux {recipe.arch}"
    if missing:
        name = missing.group(1)
        origin = (origins or {}).get(_normal_name(name), "")
        if origin.startswith(CONDA_ORIGIN):
            return ImageError(
                f"'{name}' from {origin} has no wheel on PyPI for {target}: it is probably "
                "a conda-only package (or PyPI knows it by another name). No image was "
                "built. Drop it from the conda dependencies, or list its PyPI name under "
                "'- pip:' in that file."
            )
        if origin:
            return ImageError(
                f"pip could not find '{name}' ({origin}) as a wheel for {target}. No image "
                "was built. Check the name on PyPI or drop it from that file (the image "
                "installs wheels only, so a package published only as source cannot be added)."
            )
        return ImageError(
            f"pip could not find '{name}' as a wheel for {target}. No image was built. "
            "Check the name on PyPI or drop it from --packages (the image installs wheels "
            "only, so a package published only as source cannot be added)."
        )
    low = output.lower()
    if any(m in low for m in ("could not fetch url", "connection", "network is unreachable")):
        return ImageError(
            f"pip could not reach the package index ({_last_error(output)}). No image was "
            "built. Check the network or pip's index configuration (pip config list), "
            "then run the build again."
        )
    if "no module named pip" in low:
        return ImageError(
            f"pip is not installed for {sys.executable}, which downloads the image's wheels. "
            "No image was built. Install pip there (python -m ensurepip) and try again."
        )
    return ImageError(
        f"pip download failed for {target}: {_last_error(output)}. No image was built. "
        "Run with --debug for pip's full output."
    )


def _mmdebstrap_error(recipe: Recipe, output: str, *, root: bool) -> ImageError:
    """Turn a failed mmdebstrap run into an error naming the package or the mode at fault."""
    missing = re.search(
        r"Unable to locate package (\S+)|Package '?([^' ]+)'? has no installation candidate",
        output,
    )
    if missing:
        name = missing.group(1) or missing.group(2)
        return ImageError(
            f"apt found no package '{name}' in Debian {recipe.suite}. No image was built. "
            f"Check the name with 'apt-cache search' (or packages.debian.org, suite "
            f"{recipe.suite}) or drop it from --apt-packages."
        )
    hint = (
        "Run the build as root, or allow unprivileged user namespaces with ranges for "
        "this user in /etc/subuid and /etc/subgid (mmdebstrap ran with --mode=unshare "
        "because this user is not root)."
        if not root
        else "Run with --debug for mmdebstrap's full output."
    )
    return ImageError(
        f"mmdebstrap could not build the Debian {recipe.suite} root filesystem: "
        f"{_last_error(output)}. No image was built. {hint}"
    )


def _build_error(engine: Engine, output: str, tag: str) -> ImageError:
    """Turn a failed `docker build` into an error; the CLI's first line is often a warning."""
    if "buildx component is missing" in output:
        return ImageError(
            f"'{engine.command} build' wants BuildKit, but the buildx plugin is missing. "
            f"Image '{tag}' was not built. Unset DOCKER_BUILDKIT (the legacy builder works "
            "for this image) or install the buildx plugin."
        )
    if "unknown flag" in output:
        return ImageError(
            f"'{engine.command} build' rejected an option ({_last_error(output)}). Image "
            f"'{tag}' was not built. This needs a Docker-compatible CLI that supports "
            "--network, --pull=false and --iidfile."
        )
    return ImageError(
        f"'{engine.command} build' failed for '{tag}': {_last_error(output)}. The image was "
        "not built or tagged. Run with --debug for the build's full output."
    )


def _last_error(output: str) -> str:
    """The most telling line of a tool's output: its last error line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"(ERROR|E):|error|The command .* returned a non-zero code", line):
            return line
    return lines[-1] if lines else first_line(output) or "no message"


# -- plumbing -------------------------------------------------------------------------------


@contextmanager
def _step(
    progress: Callable[[str], None], number: int, title: str, total: int = 4
) -> Iterator[Callable[[str], None]]:
    """Say `[n/4] title ...` when a step starts (pip and mmdebstrap can take minutes), and
    `[n/4] title (notes) ... 12.3 s` when it finishes."""
    notes: list[str] = []
    start = time.monotonic()
    progress(f"[{number}/{total}] {title} ...")
    yield notes.append
    detail = f", {', '.join(notes)}" if notes else ""
    progress(f"[{number}/{total}] {title}{detail} ... {time.monotonic() - start:.1f} s")


def _run_tool(argv: list[str], name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run pip or mmdebstrap, turning a timeout into an ImageError."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(
            f"{name} did not finish within {timeout:.0f} s. No image was built. Check the "
            "network and the package mirrors, then run the build again."
        ) from exc


def _mmdebstrap_executable() -> str:
    path = shutil.which("mmdebstrap")
    if path is None:
        raise ImageError(
            "mmdebstrap was not found on PATH; it makes the image's Debian root filesystem "
            "without a registry. No image was built. Install it (as root: apt-get install "
            "mmdebstrap, or scripts/bootstrap-engine) and try again."
        )
    return path


def _labels(inspect: dict[str, object]) -> dict[str, str]:
    config = inspect.get("Config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    return labels if isinstance(labels, dict) else {}


def _size_of(engine: Engine, image_id: str) -> str:
    data = engine.image_inspect(image_id)
    size = data.get("Size") if data else None
    return f"{size / 1e6:.0f} MB" if isinstance(size, int) else "size unknown"


def _megabytes(path: Path) -> str:
    files = path.rglob("*") if path.is_dir() else [path]
    return f"{sum(f.stat().st_size for f in files if f.is_file()) / 1e6:.0f} MB"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def _unique(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _normal_name(spec: str) -> str:
    """A requirement's project name, normalised as PyPI does (PEP 503)."""
    name = re.split(r"[\[<>=!~;@ ]", spec, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256(data: object) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
