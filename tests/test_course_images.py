"""Course images and images users bring, without Docker: the parts that are pure.

Course files (requirements.txt, apt.txt, environment.yml) -> packages, the default tag
guard, the --from layer's Dockerfile, the pip guard's decision, the entrypoint options,
and how `list` shows a tag that moved. The Docker halves are in tests/test_byo_image.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jupyter_docker_kernel import _pip_guard, cli, hardening, image, manage
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings

OLD_ID = "sha256:" + "a" * 64
NEW_ID = "sha256:" + "b" * 64


# -- course files ---------------------------------------------------------------------------


def test_requirements_file_comments_spaces_and_includes(tmp_path: Path) -> None:
    (tmp_path / "more.txt").write_text("tomli\n")
    req = tmp_path / "requirements.txt"
    req.write_text("# course 101\nscipy >= 1.11  # for week 3\n\n-r more.txt\nsix==1.17.0\n")
    origins: dict[str, str] = {}
    assert image.read_requirements(req, origins) == ["scipy>=1.11", "tomli", "six==1.17.0"]
    assert origins["scipy"] == f"{req}:2"
    assert origins["tomli"] == f"{tmp_path / 'more.txt'}:1"


@pytest.mark.parametrize(
    "line",
    [
        "--index-url https://example.org/simple",
        "-e git+https://example.org/x.git#egg=x",
        "https://example.org/x.whl",
        "./local/pkg",
        "numpy; python_version < '3.12'",
        "numpy; rm -rf /",
    ],
)
def test_requirements_file_refuses_options_urls_paths_and_markers(
    tmp_path: Path, line: str
) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text(f"six\n{line}\n")
    with pytest.raises(SettingsError, match=r"requirements.txt:2: .*No image was built"):
        image.read_requirements(req)


def test_missing_course_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"Cannot read .*nope.txt: No such file"):
        image.read_requirements(tmp_path / "nope.txt")


def test_apt_file_names_and_bad_line(tmp_path: Path) -> None:
    apt = tmp_path / "apt.txt"
    apt.write_text("# tools\ngraphviz\nlibgeos-dev  gdal-bin\n")
    assert image.read_apt_file(apt) == ["graphviz", "libgeos-dev", "gdal-bin"]
    apt.write_text("graphviz\nGraphViz;reboot\n")
    with pytest.raises(SettingsError, match=r"apt.txt:2: 'GraphViz;reboot' is not a Debian"):
        image.read_apt_file(apt)


def test_environment_yml_pip_section_and_conda_dependencies(tmp_path: Path) -> None:
    env = tmp_path / "environment.yml"
    env.write_text(
        "name: course\nchannels: [conda-forge]\ndependencies:\n"
        "  - python=3.11\n  - pip\n  - numpy=1.26\n  - conda-forge::scipy>=1.11\n"
        "  - pandas 2.1.*\n  - six=1.17.0=pyhd8ed1ab_0\n  - pip:\n    - tomli>=2\n"
    )
    origins: dict[str, str] = {}
    specs, notes = image.read_environment(env, origins)
    assert specs == ["numpy==1.26.*", "scipy>=1.11", "pandas==2.1.*", "six==1.17.0.*", "tomli>=2"]
    assert len(notes) == 2  # python and pip are the image's own
    assert origins["numpy"].startswith(image.CONDA_ORIGIN)
    assert "pip section" in origins["tomli"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "no 'dependencies:' list"),
        ("dependencies: [\n", "not valid YAML"),
        ("dependencies:\n  - 'numpy;reboot'\n", "cannot be read as a PyPI requirement"),
    ],
)
def test_environment_yml_errors(tmp_path: Path, text: str, message: str) -> None:
    env = tmp_path / "environment.yml"
    env.write_text(text)
    with pytest.raises(SettingsError, match=message):
        image.read_environment(env)


def test_conda_only_package_is_named_with_where_it_came_from() -> None:
    recipe = image.default_recipe(pip_packages=["cudatoolkit==11.8.*"])
    origins = {"cudatoolkit": f"{image.CONDA_ORIGIN} of environment.yml"}
    out = "ERROR: No matching distribution found for cudatoolkit==11.8.*\n"
    message = str(image._pip_error(recipe, out, origins))
    assert "'cudatoolkit==11.8.*' from the conda dependencies of environment.yml" in message
    assert "conda-only" in message
    assert "No image was built" in message


def test_unknown_requirement_is_named_with_its_file_and_line() -> None:
    recipe = image.default_recipe(pip_packages=["nosuchpkg"])
    out = "ERROR: No matching distribution found for nosuchpkg\n"
    message = str(image._pip_error(recipe, out, {"nosuchpkg": "requirements.txt:4"}))
    assert "'nosuchpkg' (requirements.txt:4)" in message


# -- the default tag is shared --------------------------------------------------------------


@pytest.mark.parametrize(
    ("adds", "layered"), [(True, False), (False, True), (True, True)], ids=["pkgs", "from", "both"]
)
def test_packages_or_a_layer_need_a_tag_of_their_own(adds: bool, layered: bool) -> None:
    with pytest.raises(SettingsError, match=r"needs a tag of its own.*--tag course/NAME:1"):
        image.check_tag(DEFAULT_IMAGE, adds_packages=adds, layered=layered)
    image.check_tag("course/py:1", adds_packages=adds, layered=layered)
    image.check_tag(DEFAULT_IMAGE, adds_packages=False)  # the plain default build


def test_cli_build_with_packages_into_the_default_tag_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: `image build --packages X` rebuilt the shared default tag in place."""
    req = tmp_path / "requirements.txt"
    req.write_text("six\n")
    assert cli.main(["image", "build", "--requirements", str(req)]) == 1
    assert "needs a tag of its own" in capsys.readouterr().err
    assert cli.main(["image", "build", "--packages", "six"]) == 1


def test_cli_build_refuses_apt_packages_with_from(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["image", "build", "--from", "x:1", "--tag", "y:1", "--apt-packages", "graphviz"]
    assert cli.main(argv) == 1
    assert "cannot go with --from" in capsys.readouterr().err


# -- the --from layer -----------------------------------------------------------------------


def layer(**changes: object) -> image.LayerRecipe:
    base = image.LayerRecipe(
        base="course/base:1",
        base_id=OLD_ID,
        base_user="1000:1000",
        python="python3",
        python_version="3.11",
        glibc=(2, 36),
        pip_packages=("six", "scipy>=1.11"),
        arch="x86_64",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_layer_installs_offline_as_root_then_restores_the_user() -> None:
    text = layer().dockerfile
    assert f"FROM {OLD_ID}\nUSER root\n" in text
    assert "python3 -m pip install --no-index" in text
    assert "six 'scipy>=1.11'" in text
    assert "python3 /tmp/pip_guard.py" in text
    assert text.index("RUN") < text.index("\nUSER 1000:1000\n")
    assert layer(base_user="").dockerfile.count("USER") == 1  # root's image stays root's


def test_layer_digest_follows_the_base_id_and_packages() -> None:
    assert layer().digest() != layer(base_id=NEW_ID).digest()
    assert layer().digest() != layer(pip_packages=("six",)).digest()
    assert layer().pip_digest() != layer(glibc=(2, 31)).pip_digest()


def test_pip_download_targets_the_layer_base_glibc(tmp_path: Path) -> None:
    argv = image.pip_download_args(layer(glibc=(2, 31), python_version="3.9"), tmp_path)
    assert "manylinux_2_31_x86_64" in argv
    assert "manylinux_2_36_x86_64" not in argv
    assert argv[argv.index("--python-version") + 1] == "3.9"


def test_build_progress_passes_each_engine_step_on() -> None:
    seen: list[str] = []
    for line in [
        "Sending build context to Docker daemon  1.2MB",
        "Step 5/8 : RUN set -eu;     python3 -m pip install --no-index",
        " ---> Running in 3f2a",
        "#7 [wheels 3/5] RUN python3 -m venv /opt/kernel",
    ]:
        image._build_progress(line, seen.append)
    assert seen == [
        "      Step 5/8 : RUN set -eu; python3 -m pip install --no-index",
        "      #7 [wheels 3/5] RUN python3 -m venv /opt/kernel",
    ]


def test_a_quiet_build_step_still_says_it_is_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the engine's build printed nothing for about 50 s."""
    monkeypatch.setattr(image._Ticker, "HEARTBEAT", 0.05)
    seen: list[str] = []
    ticker = image._Ticker(seen.append)
    ticker.say("      Step 5/14 : RUN set -eu")
    time.sleep(0.3)
    ticker.stop()
    assert seen[0] == "      Step 5/14 : RUN set -eu"
    assert any("still running" in line for line in seen[1:])


def test_step_says_when_it_starts_and_when_it_ends() -> None:
    seen: list[str] = []
    with image._step(seen.append, 1, "wheels", total=2) as note:
        note("3 wheels")
    assert seen[0] == "[1/2] wheels ..."
    assert seen[1].startswith("[1/2] wheels, 3 wheels ... ")


def test_default_recipe_installs_the_pip_guard() -> None:
    text = image.default_recipe().dockerfile
    assert "COPY pip_guard.py /tmp/pip_guard.py" in text
    assert "/opt/kernel/bin/python /tmp/pip_guard.py" in text


# -- the pip guard (runs in images) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "blocked"),
    [
        (["-m", "install", "requests"], True),  # python -m pip install, as %pip runs it
        (["/opt/kernel/bin/pip", "install", "-U", "requests"], True),
        (["pip3", "download", "numpy"], True),
        (["pip3.11", "wheel", "."], True),
        (["-m", "install", "--no-index", "x.whl"], False),  # our builds, local wheels
        (["pip", "list"], False),
        (["pip", "uninstall", "-y", "debugpy"], False),
        (["pip", "--version"], False),
        (["/opt/kernel/lib/python3.11/site-packages/ipykernel_launcher.py", "install"], False),
        (["-c", "install"], False),
        ([], False),
    ],
)
def test_pip_guard_blocks_what_would_reach_an_index(argv: list[str], blocked: bool) -> None:
    assert _pip_guard.blocked(argv) is blocked


def test_pip_guard_message_says_why_and_how_to_add_packages(tmp_path: Path) -> None:
    """The guard, imported as pip imports it, exits 1 at once with the message."""
    code = (
        "import sys; sys.argv = ['-m', 'install', 'requests']; "
        f"sys.path.insert(0, {str(Path(_pip_guard.__file__).parent)!r}); import _pip_guard"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 1
    assert "no network, by design" in proc.stderr
    assert "cannot download 'requests'" in proc.stderr
    assert "image build --from IMAGE --tag course/NAME:1 --requirements" in proc.stderr


def test_pip_guard_install_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "site" / "pip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '24'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "pip", raising=False)
    _pip_guard.install()
    _pip_guard.install()
    text = (fake / "__init__.py").read_text()
    assert text.count(_pip_guard.IMPORT_LINE) == 1
    assert (tmp_path / "site" / f"{_pip_guard.GUARD_MODULE}.py").is_file()


# -- entrypoints ----------------------------------------------------------------------------


def launch() -> hardening.Launch:
    return manage.placeholder_launch(KernelSettings(), "/work")


def test_kernel_clears_the_image_entrypoint_before_the_users_docker_args() -> None:
    args = hardening.run_args(KernelSettings(docker_args=("--entrypoint=/bin/x",)), launch())
    assert args.index("--entrypoint=") < args.index("--entrypoint=/bin/x")  # the user's wins
    assert "--entrypoint=" not in hardening.run_args(KernelSettings(keep_entrypoint=True), launch())


@pytest.mark.parametrize(
    ("docker_args", "keep", "expected"),
    [
        ((), False, ["--entrypoint="]),
        ((), True, []),
        (("--entrypoint=",), False, ["--entrypoint=", "--entrypoint="]),
        (("--entrypoint", "/bin/tini", "--memory-reservation=1g"), True,
         ["--entrypoint", "/bin/tini"]),
    ],
)  # fmt: skip
def test_probe_uses_the_kernels_entrypoint(
    docker_args: tuple[str, ...], keep: bool, expected: list[str]
) -> None:
    """Before, the probe ran the image's ENTRYPOINT although the kernel would not (or the
    reverse with --docker-arg=--entrypoint=): it refused images that work."""
    settings = KernelSettings(docker_args=docker_args, keep_entrypoint=keep)
    args = hardening.probe_args(settings, "1000:1000")
    assert [a for i, a in enumerate(args) if a.startswith("--entrypoint") or (
        i and args[i - 1] == "--entrypoint")] == expected  # fmt: skip


# -- recorded image IDs ---------------------------------------------------------------------


def test_image_id_must_be_an_id() -> None:
    with pytest.raises(SettingsError, match="image_id 'latest' is not an image ID"):
        KernelSettings(image_id="latest")


def test_moved_tag_is_a_warning_with_what_to_do() -> None:
    settings = KernelSettings(image="course/py:1", image_id=OLD_ID)
    assert manage.moved_warning(settings, OLD_ID) is None
    assert manage.moved_warning(settings, "") is None  # missing: another check says so
    assert manage.moved_warning(KernelSettings(), NEW_ID) is None  # nothing recorded
    what, fix = manage.moved_warning(settings, NEW_ID) or ("", "")
    assert "course/py:1 now points to another image (bbbbbbbbbbbb)" in what
    assert "--pin" in fix
    assert "setup --replace" in fix


def test_list_marks_a_moved_tag_and_warns() -> None:
    settings = KernelSettings(image="course/py:1", image_id=OLD_ID)
    info = manage.SpecInfo(
        "c1", "/k/c1", "C1", "python", settings, image_present=True, current_id=NEW_ID
    )
    lines = cli.format_list([info])
    assert "MOVED" in lines[1]
    assert lines[-1].startswith("warning: c1: course/py:1 now points to another image")
    assert info.to_json()["image_moved"] is True


def test_pin_needs_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["setup", "--name", "x", "--image", "y:1", "--user", "--skip-checks", "--pin"]
    assert cli.main(argv) == 1
    assert "--pin records the image's ID" in capsys.readouterr().err


def test_layer_recipe_refuses_a_bad_requirement_before_the_engine() -> None:
    with pytest.raises(SettingsError, match="'a b' is not a pip requirement"):
        image.layer_recipe(None, "x:1", ["a b"])  # type: ignore[arg-type]
