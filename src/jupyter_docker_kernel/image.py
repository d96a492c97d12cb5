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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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

    def pip_digest(self) -> str:
        """Hash of what pip downloads; keys the wheel cache."""
        return _sha256(
            {
                "version": self.version,
                "python": self.python_version,
                "platforms": platform_tags(self.arch, GLIBC_FOR_SUITE[self.suite]),
                "pip": self.pip_packages,
            }
        )

    def digest(self) -> str:
        """sha256 of the whole recipe, Dockerfile text included: the image's LABEL_RECIPE."""
        return _sha256(
            {
                "version": self.version,
                "apt": self.apt_digest(),
                "pip": self.pip_digest(),
                "dockerfile": self.dockerfile,
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
RUN set -eu; \\
    python3 -c 'import sys; assert sys.version_info[:2] == ({major}, {minor}), sys.version'; \\
    python3 -m venv {VENV}; \\
    {VENV}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \\
        --find-links /tmp/wheels {pip_args}; \\
    {VENV}/bin/pip uninstall --yes --quiet debugpy; \\
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
    for spec in pip_packages:
        if not _PIP_SPEC.match(spec):
            raise SettingsError(
                f"'{spec}' is not a pip requirement this build accepts (a name, optional "
                "[extras] and version clauses such as 'scipy>=1.11', no spaces, URLs or "
                "options). No image was built. Fix or drop it from --packages."
            )
    return Recipe(
        apt_packages=_unique(DEFAULT_APT_PACKAGES, apt_packages),
        pip_packages=_unique(DEFAULT_PIP_PACKAGES, pip_packages),
        arch=host_arch(),
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
        wheels, fetched = fetch_wheels(recipe, cache, force=force)
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
        image_id = _docker_build(engine, recipe, wheels, cache, tag, digest, force=force)
        note(_size_of(engine, image_id))

    # Best effort, without --force: an image still tagged elsewhere or used by a container
    # stays, which is what the user wants.
    for old in (previous, old_base):
        if old is not None and old["Id"] != image_id:
            engine.run(["image", "rm", old["Id"]], check=False, timeout=120)
    return BuildResult(tag, image_id, digest, False, time.monotonic() - start)


# -- steps ----------------------------------------------------------------------------------


def fetch_wheels(recipe: Recipe, cache: Path, *, force: bool = False) -> tuple[Path, bool]:
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
            raise _pip_error(recipe, proc.stderr + proc.stdout)
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
) -> str:
    """Step 4: `docker build` in a scratch context of hard links to the cached wheels."""
    with tempfile.TemporaryDirectory(prefix=".context-", dir=cache) as tmp:
        context = Path(tmp)
        (context / "Dockerfile").write_text(recipe.dockerfile)
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
        if force:
            args.append("--no-cache")
        try:
            proc = engine.run([*args, str(context)], timeout=1800, check=False, own_session=False)
            image_id = iidfile.read_text().strip() if iidfile.is_file() else ""
        finally:
            iidfile.unlink(missing_ok=True)
            # The legacy builder keeps the wheel stage as an untagged image; BuildKit does not.
            engine.run(
                ["image", "prune", "--force", "--filter", f"label={LABEL_STAGE}"],
                check=False,
                timeout=120,
            )
    log.debug("docker build output:\n%s\n%s", proc.stdout, proc.stderr)
    if proc.returncode != 0 or not image_id:
        raise _build_error(engine, proc.stdout + proc.stderr, tag)
    return image_id


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


def pip_download_args(recipe: Recipe, dest: Path) -> list[str]:
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
    for tag in platform_tags(recipe.arch, GLIBC_FOR_SUITE[recipe.suite]):
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


def _pip_error(recipe: Recipe, output: str) -> ImageError:
    """Turn a failed `pip download` into an error naming the package at fault."""
    missing = re.search(r"No matching distribution found for (\S+)", output)
    target = f"CPython {recipe.python_version} on manylinux {recipe.arch}"
    if missing:
        name = missing.group(1)
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
    progress: Callable[[str], None], number: int, title: str
) -> Iterator[Callable[[str], None]]:
    """Time one step and report it as `[n/4] title (notes) ... 12.3 s` when it finishes."""
    notes: list[str] = []
    start = time.monotonic()
    yield notes.append
    detail = f", {', '.join(notes)}" if notes else ""
    progress(f"[{number}/4] {title}{detail} ... {time.monotonic() - start:.1f} s")


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


def _sha256(data: object) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
