"""image.py: the recipe and its Dockerfile without Docker; the built default image with it."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import __version__, hostpython, image
from jupyter_docker_kernel.engine import LABEL_RECIPE, Engine
from jupyter_docker_kernel.errors import ImageError, SettingsError
from jupyter_docker_kernel.image import (
    DEFAULT_APT_PACKAGES,
    DEFAULT_PIP_PACKAGES,
    Recipe,
    build_image,
    default_recipe,
    ensure_image,
)
from tests.conftest import TEST_IMAGE

ONLINE_DOCKERFILE = Path(__file__).parents[1] / "images" / "default" / "Dockerfile"
#: Builds that must fail are tagged here, and the tag is removed whatever happens.
TEST_TAG = "jupyter-docker-kernel/test-image:must-not-exist"


def recipe(**changes: Any) -> Recipe:
    base = Recipe(apt_packages=DEFAULT_APT_PACKAGES, pip_packages=DEFAULT_PIP_PACKAGES)
    return dataclasses.replace(base, **{"arch": "x86_64", **changes})


# -- recipe ---------------------------------------------------------------------------------


def test_digest_is_stable_and_hex() -> None:
    assert recipe().digest() == recipe().digest()
    assert re.fullmatch(r"[0-9a-f]{64}", recipe().digest())


@pytest.mark.parametrize(
    "change",
    [
        {"apt_packages": (*DEFAULT_APT_PACKAGES, "git")},
        {"pip_packages": (*DEFAULT_PIP_PACKAGES, "scipy")},
        {"pip_packages": ("ipykernel>=6.30", *DEFAULT_PIP_PACKAGES[1:])},
        {"python_version": "3.12"},
        {"arch": "aarch64"},
        {"version": image.RECIPE_VERSION + 1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_digest_changes_with_every_input(change: dict[str, object]) -> None:
    assert recipe(**change).digest() != recipe().digest()


def test_digest_changes_with_the_dockerfile_text(monkeypatch: pytest.MonkeyPatch) -> None:
    before = recipe().digest()
    monkeypatch.setattr(image, "KERNEL_UID", 1001)
    assert recipe().digest() != before


def test_apt_and_pip_parts_key_their_own_caches() -> None:
    more_apt = recipe(apt_packages=(*DEFAULT_APT_PACKAGES, "git"))
    more_pip = recipe(pip_packages=(*DEFAULT_PIP_PACKAGES, "scipy"))
    assert more_apt.pip_digest() == recipe().pip_digest()
    assert more_apt.base_tag != recipe().base_tag
    assert more_pip.apt_digest() == recipe().apt_digest()
    assert more_pip.base_tag == recipe().base_tag


def test_default_recipe_adds_extras_after_the_defaults_once() -> None:
    r = default_recipe(pip_packages=["scipy", "numpy"], apt_packages=["git", "tini"])
    assert r.pip_packages == (*DEFAULT_PIP_PACKAGES, "scipy")
    assert r.apt_packages == (*DEFAULT_APT_PACKAGES, "git")
    assert r.suite == "bookworm"
    assert r.python_version == "3.11"


@pytest.mark.parametrize("spec", ["scipy", "scipy>=1.11", "pandas[excel]", "a.b-c_d==1.0,!=1.1"])
def test_default_recipe_accepts_pip_requirements(spec: str) -> None:
    assert spec in default_recipe(pip_packages=[spec]).pip_packages


@pytest.mark.parametrize(
    "spec", ["--index-url=x", "-e .", "scipy; echo", "http://x/y.whl", "./pkg", "a b", ""]
)
def test_default_recipe_refuses_what_is_not_a_requirement(spec: str) -> None:
    with pytest.raises(SettingsError, match="--packages"):
        default_recipe(pip_packages=[spec])


@pytest.mark.parametrize("name", ["Git", "-x", "git;rm", "a b", "g"])
def test_default_recipe_refuses_what_is_not_a_debian_package(name: str) -> None:
    with pytest.raises(SettingsError, match="Debian package name"):
        default_recipe(apt_packages=[name])


# -- generated Dockerfile -------------------------------------------------------------------


def test_dockerfile_installs_offline_from_the_base_as_user_1000() -> None:
    text = recipe().dockerfile
    assert f"FROM {recipe().base_tag} AS wheels" in text
    assert "--no-index" in text
    assert "'ipykernel>=6.29' numpy pandas matplotlib" in text
    assert "python -m compileall -q /opt/kernel" in text
    assert "find / -xdev -perm /6000 -type f -exec chmod ug-s {} +" in text
    assert "useradd --uid 1000 --gid 1000 --home-dir /home/kernel" in text
    assert "\nUSER 1000:1000\n" in text
    assert "\nWORKDIR /home/kernel\n" in text
    assert f"{LABEL_RECIPE}=$RECIPE_DIGEST" in text
    assert f'org.opencontainers.image.version="{__version__}"' in text


def test_dockerfile_environment() -> None:
    env = _env(recipe().dockerfile)
    assert env["PATH"].startswith("/opt/kernel/bin:")
    assert "$" not in env["PATH"]  # an imported base has no PATH to extend
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # No MPLBACKEND: ipykernel picks its inline backend only when none is set, and
    # matplotlib already falls back to Agg when there is no display.
    assert "MPLBACKEND" not in env


def test_dockerfile_quotes_extra_requirements_for_the_shell() -> None:
    text = default_recipe(pip_packages=["scipy<2,>=1.11"]).dockerfile
    assert "'scipy<2,>=1.11'" in text


def test_setuid_strip_runs_after_everything_is_installed() -> None:
    text = recipe().dockerfile
    last_stage = text[text.rindex("\nFROM ") :]
    assert last_stage.index("COPY --from=wheels") < last_stage.index("chmod ug-s")
    assert "apt-get" not in text


def test_online_dockerfile_matches_the_generated_one() -> None:
    online = ONLINE_DOCKERFILE.read_text()
    generated = recipe().dockerfile
    assert "FROM python:3.11-slim-bookworm" in online
    assert " ".join(shlex.quote(spec) for spec in DEFAULT_PIP_PACKAGES) in online
    assert _env(online) == _env(generated)
    assert _labels(online) == {
        key: value for key, value in _labels(generated).items() if key != LABEL_RECIPE
    }
    assert "tini" in online
    assert "/opt/kernel/bin/python /tmp/pip_guard.py" in online
    assert (ONLINE_DOCKERFILE.parent / "pip_guard.py").read_bytes() == image.PIP_GUARD.read_bytes()
    for line in ("USER 1000:1000", "WORKDIR /home/kernel", "chmod ug-s {} +", "CMD ["):
        assert line in online
        assert line in generated


# -- pip, mmdebstrap and their errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "newest", "legacy"),
    [
        ("x86_64", "manylinux_2_36_x86_64", ["2014", "2010", "1"]),
        ("aarch64", "manylinux_2_36_aarch64", ["2014"]),
    ],
)
def test_platform_tags(arch: str, newest: str, legacy: list[str]) -> None:
    tags = image.platform_tags(arch)
    assert tags[0] == newest
    assert f"manylinux_2_5_{arch}" in tags
    assert f"manylinux_2_17_{arch}" in tags
    assert "manylinux_2_37" not in " ".join(tags)
    assert len(tags) == (36 - 5 + 1) + len(legacy)
    assert tags[-len(legacy) :] == [f"manylinux{name}_{arch}" for name in legacy]


def test_platform_tags_refuse_other_architectures() -> None:
    with pytest.raises(ImageError, match="'riscv64' is not supported"):
        image.platform_tags("riscv64")


def test_pip_download_args(tmp_path: Path) -> None:
    argv = image.pip_download_args(recipe(), tmp_path)
    # pip runs from the cwd of whoever builds the image: never importing from it.
    assert argv[:3] == hostpython.module_argv("pip")
    assert argv[3] == "download"
    text = " ".join(argv)
    assert "--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311" in text
    assert argv.count("--platform") == len(image.platform_tags("x86_64"))
    assert argv[-len(DEFAULT_PIP_PACKAGES) :] == list(DEFAULT_PIP_PACKAGES)


def test_mmdebstrap_args(tmp_path: Path) -> None:
    out, sources = tmp_path / "r.tar", tmp_path / "debian.sources"
    argv = image.mmdebstrap_args(recipe(), out, sources=sources, root=True)
    assert argv[:3] == [
        "mmdebstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,tini,ca-certificates",
    ]
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in argv
    assert "--dpkgopt=path-exclude=/usr/share/locale/*" in argv
    assert argv[-3:] == ["bookworm", str(out), str(sources)]
    assert "--mode=unshare" not in argv
    rootless = image.mmdebstrap_args(recipe(), out, sources=None, root=False)
    assert "--mode=unshare" in rootless
    assert rootless[-2:] == ["bookworm", str(out)]


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("debian.sources", "Types: deb\nSuites: bookworm bookworm-updates\n", True),
        ("debian.sources", "Types: deb\nSuites: trixie trixie-updates\n", False),
        ("debian.sources", "Suites: bookworm-updates\n", False),
        ("../sources.list", "deb [signed-by=/k.gpg] http://m/debian bookworm main\n", True),
        ("../sources.list", "# deb http://m/debian bookworm main\n", False),
    ],
)
def test_host_apt_sources_only_when_they_list_the_suite(
    tmp_path: Path, name: str, text: str, found: bool
) -> None:
    (tmp_path / "sources.list.d").mkdir()
    path = tmp_path / "sources.list.d" / name
    path.write_text(text)
    assert (image.host_apt_sources("bookworm", etc=tmp_path) is not None) is found


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image.default_cache_dir() == tmp_path / "jupyter-docker-kernel"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert image.default_cache_dir() == tmp_path / ".cache" / "jupyter-docker-kernel"


def test_pip_error_names_the_unknown_package() -> None:
    output = (
        "ERROR: Could not find a version that satisfies the requirement nosuchpkg "
        "(from versions: none)\nERROR: No matching distribution found for nosuchpkg\n"
    )
    message = str(image._pip_error(recipe(), output))
    assert "pip could not find 'nosuchpkg'" in message
    assert "No image was built" in message
    assert "drop it from --packages" in message


def test_mmdebstrap_error_names_the_unknown_package() -> None:
    output = "I: running apt-get update...\nE: Unable to locate package nosuchpkg\nE: setup failed"
    message = str(image._mmdebstrap_error(recipe(), output, root=True))
    assert "no package 'nosuchpkg' in Debian bookworm" in message
    assert "--apt-packages" in message


def test_mmdebstrap_error_mentions_unshare_when_not_root() -> None:
    message = str(image._mmdebstrap_error(recipe(), "E: unshare failed", root=False))
    assert "--mode=unshare" in message
    assert "/etc/subuid" in message


def test_missing_mmdebstrap_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ImageError, match="apt-get install mmdebstrap"):
        image._mmdebstrap_executable()


# -- the real image (Docker) ----------------------------------------------------------------


@pytest.fixture
def doomed_tag(engine: Engine) -> Iterator[str]:
    """A tag for builds that must fail; removed afterwards whatever happened."""
    yield TEST_TAG
    engine.run(["image", "rm", "--force", TEST_TAG], check=False)


def _docker(engine: Engine, *args: str) -> subprocess.CompletedProcess[str]:
    return engine.run(["run", "--rm", "--pull", "never", *args], check=False, timeout=120)


@pytest.mark.docker
def test_kernel_starts_as_user_1000(engine: Engine, kernel_image: str) -> None:
    proc = _docker(
        engine, "--user", "1000:1000", kernel_image, "python3", "-m", "ipykernel_launcher", "--help"
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.docker
def test_image_has_no_setuid_files(engine: Engine, kernel_image: str) -> None:
    # As root, so that find sees every directory.
    proc = _docker(
        engine, "--user", "0:0", kernel_image, "find", "/", "-xdev", "-perm", "/6000", "-type", "f"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


@pytest.mark.docker
def test_image_runs_the_scientific_stack(engine: Engine, kernel_image: str) -> None:
    code = (
        "import json, numpy, pandas, matplotlib, ipykernel, os\n"
        "print(json.dumps({'ipykernel': ipykernel.__version__, 'uid': os.getuid(),"
        " 'backend': matplotlib.get_backend().lower(), 'sum': int(numpy.arange(4).sum()),"
        " 'rows': len(pandas.DataFrame({'a': [1, 2]}))}))"
    )
    proc = _docker(engine, kernel_image, "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert tuple(int(part) for part in found["ipykernel"].split(".")[:2]) >= (6, 29)
    assert found == {**found, "uid": 1000, "backend": "agg", "sum": 6, "rows": 2}


@pytest.mark.docker
def test_image_labels(engine: Engine, kernel_image: str) -> None:
    labels = engine.require_image(kernel_image)["Config"]["Labels"]
    assert labels[LABEL_RECIPE] == default_recipe().digest()
    assert labels["org.opencontainers.image.version"] == __version__


@pytest.mark.docker
def test_second_ensure_reuses_the_image(engine: Engine, kernel_image: str) -> None:
    result = ensure_image(engine, kernel_image)
    assert result.reused
    assert result.tag == kernel_image == TEST_IMAGE
    assert result.seconds < 5


@pytest.mark.docker
def test_unknown_pip_package_is_named(engine: Engine, doomed_tag: str, tmp_path: Path) -> None:
    bad = default_recipe(pip_packages=["nosuchpkg-jupyter-docker-kernel-test"])
    with pytest.raises(ImageError, match=r"'nosuchpkg-jupyter-docker-kernel-test'.*--packages"):
        build_image(engine, bad, tag=doomed_tag, cache_dir=tmp_path)
    assert engine.image_inspect(doomed_tag) is None
    assert not list((tmp_path / "wheels").iterdir())


@pytest.mark.docker
def test_unknown_apt_package_is_named(engine: Engine, doomed_tag: str, tmp_path: Path) -> None:
    # About 25 s: mmdebstrap installs the essential packages before it meets the bad name.
    bad = default_recipe(apt_packages=["nosuchpkg-jupyter-docker-kernel-test"])
    with pytest.raises(ImageError, match=r"'nosuchpkg-jupyter-docker-kernel-test'.*--apt-packages"):
        build_image(engine, bad, tag=doomed_tag, cache_dir=tmp_path)
    assert engine.image_inspect(doomed_tag) is None
    assert engine.image_inspect(bad.base_tag) is None
    assert not list(tmp_path.glob("*.tar"))


def _env(dockerfile: str) -> dict[str, str]:
    """The variables set by the Dockerfile's ENV instructions."""
    return _instruction(dockerfile, "ENV")


def _labels(dockerfile: str) -> dict[str, str]:
    """The labels of the Dockerfile's last stage."""
    return _instruction(dockerfile[dockerfile.rindex("\nFROM ") :], "LABEL")


def _instruction(dockerfile: str, name: str) -> dict[str, str]:
    """The key=value pairs of every `name` instruction, continuation lines joined."""
    pairs: dict[str, str] = {}
    for block in re.findall(rf"^{name} (.*?)(?<!\\)$", dockerfile, re.M | re.S):
        for word in shlex.split(block.replace("\\\n", " ")):
            key, _, value = word.partition("=")
            pairs[key] = value
    return pairs


def test_dockerfile_drops_debugpy_which_no_kernel_of_ours_uses() -> None:
    """debugpy is uninstalled after the wheels: importing it costs every kernel start."""
    text = recipe().dockerfile
    assert "pip uninstall --yes --quiet debugpy" in text
    assert text.index("pip uninstall --yes --quiet debugpy") > text.index("pip install")
