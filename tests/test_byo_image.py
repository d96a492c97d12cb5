"""Images users bring and course images, with Docker: the user's story for each.

Look-alikes of Jupyter Docker Stacks and repo2docker images (tests/byo_images.py) are set
up and run a real kernel; `image check` names what each broken look-alike lacks; a course
layer is built with `image build --from` (no registry, FROM the test image), set up with
its ID recorded, moved by a rebuild (list and doctor warn), and pinned; `%pip install` in
a kernel of an image we built says at once that there is no network.
Every image here is tagged jdk-test-* and removed at the end of the session.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.kernelspec import settings_from_kernel_json
from tests import byo_images, kernels
from tests.conftest import install_kernel

pytestmark = pytest.mark.docker

COURSE = "jdk-test-byo/course:1"


@pytest.fixture(scope="session")
def byo(kernel_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every look-alike, built once FROM the test image; removed at the end."""
    workdir = tmp_path_factory.mktemp("byo")
    tags = {name: byo_images.build(name, workdir, kernel_image) for name in byo_images.IMAGES}
    yield tags
    byo_images.remove(list(tags.values()))


@pytest.fixture(scope="session")
def course(kernel_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A course image layered onto the test image with a requirements.txt (one small
    wheel, six); removed at the end with anything else under its name."""
    folder = tmp_path_factory.mktemp("course")
    (folder / "requirements.txt").write_text("six  # for the course\n")
    argv = ["image", "build", "--from", kernel_image, "--tag", COURSE]
    assert cli.main([*argv, "--requirements", str(folder / "requirements.txt")]) == 0
    yield COURSE
    subprocess.run(["docker", "image", "rm", COURSE], capture_output=True, check=False)


def run_code(name: str, cwd: Path, code: str) -> tuple[str, str, float]:
    """Start the kernel `name`, run one cell; returns (stdout, status, seconds)."""
    with kernels.running_kernel(name, str(cwd)) as (_km, kc):
        started = time.monotonic()
        reply, outputs = kernels.execute(kc, code)
        return kernels.stream_text(outputs), reply["status"], time.monotonic() - started


# -- bring your own image -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("look_alike", "extra"),
    [("stacks", ()), ("repo2docker", ()), ("repo2docker", ("--docker-arg=--entrypoint=",))],
    ids=["stacks", "repo2docker", "repo2docker-entrypoint-arg"],
)
def test_images_with_an_entrypoint_set_up_and_run_a_kernel(
    byo: dict[str, str], workdir: Path, look_alike: str, extra: tuple[str, ...]
) -> None:
    """Before: repo2docker's was refused ("cannot run ipykernel"), also with
    --docker-arg=--entrypoint=; Docker Stacks' set up as "Python Entered"."""
    name = f"jdk-test-byo-{look_alike}"
    spec_dir = install_kernel(name, byo[look_alike], *extra)
    settings = settings_from_kernel_json(json.loads((spec_dir / "kernel.json").read_text()))
    assert settings.image_id.startswith("sha256:")
    out, status, _ = run_code(name, workdir, "import os; print('uid', os.getuid(), 6 * 7)")
    assert status == "ok"
    assert "42" in out


def test_setup_prints_the_probes_versions_past_an_entrypoints_output(
    byo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    install_kernel("jdk-test-byo-keep", byo["stacks"], "--keep-entrypoint")
    out = capsys.readouterr().out
    assert "Python 3." in out
    assert "Entered" not in out
    assert "ENTRYPOINT is kept" in out


def test_kept_entrypoint_that_execs_runs_the_kernel_and_passes_interrupts(
    byo: dict[str, str], workdir: Path
) -> None:
    """--keep-entrypoint: tini + start.sh run first and exec the supervisor; the kernel
    answers and an interrupt reaches it through them."""
    install_kernel("jdk-test-byo-keep-run", byo["stacks"], "--keep-entrypoint")
    with kernels.running_kernel("jdk-test-byo-keep-run", str(workdir)) as (km, kc):
        reply, outputs = kernels.execute(kc, "print(6 * 7)")
        assert "42" in kernels.stream_text(outputs)
        msg_id = kc.execute("import time; print('sleeping', flush=True); time.sleep(60)")
        kernels.wait_for_stream(kc, msg_id, "sleeping")
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["content"]["ename"] == "KeyboardInterrupt"


def test_kept_entrypoint_that_fails_is_named(
    byo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["setup", "--name", "jdk-test-byo-r2d-keep", "--image", byo["repo2docker"], "--user"]
    assert cli.main([*argv, "--keep-entrypoint"]) == 1
    err = capsys.readouterr().err
    assert "ENTRYPOINT" in err
    assert "ran first (--keep-entrypoint)" in err
    assert "image check" in err


@pytest.mark.parametrize(
    ("look_alike", "options", "failed", "detail"),
    [
        ("stacks", (), None, ""),
        ("repo2docker", (), None, ""),
        ("no-ipykernel", (), "ipykernel", "No module named 'ipykernel'"),
        ("private-env", (), "arbitrary uid", "as uid 54321"),
        ("writes-at-start", (), "read-only root", "Read-only file system"),
        ("repo2docker", ("--keep-entrypoint",), "arbitrary uid", ".jupyter-server-log.txt"),
        ("stacks", ("--python", "/nope/python3"), "python3", "not found"),
    ],
)
def test_image_check_names_what_an_image_lacks(
    byo: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    look_alike: str,
    options: tuple[str, ...],
    failed: str | None,
    detail: str,
) -> None:
    code = cli.main(["image", "check", byo[look_alike], *options, "--json"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    fails = [name for name, c in checks.items() if c["status"] == "FAIL"]
    assert code == (1 if failed else 0)
    assert fails == ([failed] if failed else [])
    if failed:
        assert detail in checks[failed]["detail"]
        assert checks[failed]["fix"]


def test_image_check_text_has_a_fix_line_per_failure(
    byo: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["image", "check", byo["no-ipykernel"]]) == 1
    out = capsys.readouterr().out.splitlines()
    fail = next(i for i, line in enumerate(out) if line.startswith("FAIL"))
    assert out[fail + 1].strip().startswith("fix: add it: jupyter-docker-kernel image build --from")


# -- course images --------------------------------------------------------------------------


def test_course_layer_has_the_packages_and_runs_a_kernel(
    course: str, workdir: Path, engine: Engine
) -> None:
    install_kernel("jdk-test-course", course)
    out, status, _ = run_code("jdk-test-course", workdir, "import six; print(six.__name__)")
    assert status == "ok"
    assert "six" in out
    config = (engine.image_inspect(course) or {})["Config"]
    assert config["User"] == "1000:1000"  # the base's user is restored after the install


def test_rebuilt_tag_warns_in_list_and_doctor_and_pin_keeps_the_old_image(
    kernel_image: str, engine: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Before: specs recorded only the tag, so nothing noticed that it moved."""
    tag = "jdk-test-byo/moving:1"
    try:
        assert cli.main(["image", "build", "--from", kernel_image, "--tag", tag]) == 0
        first = str((engine.image_inspect(tag) or {})["Id"])
        install_kernel("jdk-test-moving", tag)
        install_kernel("jdk-test-pinned", tag, "--pin")
        capsys.readouterr()
        (tmp_path / "r.txt").write_text("six\n")
        argv = ["image", "build", "--from", kernel_image, "--tag", tag]
        assert cli.main([*argv, "--requirements", str(tmp_path / "r.txt")]) == 0
        assert str((engine.image_inspect(tag) or {})["Id"]) != first
        assert engine.image_inspect(first) is not None  # the pinned spec still needs it

        assert cli.main(["list"]) == 0
        out = capsys.readouterr().out
        assert "warning: jdk-test-moving: jdk-test-byo/moving:1 now points to another" in out
        assert "jdk-test-pinned" in out
        assert "warning: jdk-test-pinned" not in out
        cli.main(["doctor", "jdk-test-moving", "--no-probe", "--json"])
        checks = json.loads(capsys.readouterr().out)["checks"]
        image_check = next(c for c in checks if c["name"].endswith(": image"))
        assert image_check["status"] == "WARN"
        assert "now points to another" in image_check["detail"]
    finally:
        for name in ("jdk-test-moving", "jdk-test-pinned"):
            cli.main(["remove", name, "-y"])
        subprocess.run(["docker", "image", "rm", tag], capture_output=True, check=False)
        subprocess.run(["docker", "image", "rm", first], capture_output=True, check=False)


def test_unknown_requirement_names_its_line(
    kernel_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("six\njdk-test-no-such-package-h6\n")
    argv = ["image", "build", "--from", kernel_image, "--tag", "jdk-test-byo/never:1"]
    assert cli.main([*argv, "--requirements", str(req)]) == 1
    err = capsys.readouterr().err
    assert f"'jdk-test-no-such-package-h6' ({req}:2)" in err
    assert "No image was built" in err


def test_conda_only_dependency_is_named(
    kernel_image: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "environment.yml"
    env.write_text("dependencies:\n  - python=3.11\n  - jdk-test-conda-only-h6=1.0\n")
    argv = ["image", "build", "--from", kernel_image, "--tag", "jdk-test-byo/never:1"]
    assert cli.main([*argv, "--environment", str(env)]) == 1
    captured = capsys.readouterr()
    assert "python=3.11: left out" in captured.out
    assert "'jdk-test-conda-only-h6==1.0.*' from the conda dependencies of" in captured.err
    assert "conda-only" in captured.err


# -- pip in a kernel has no network ----------------------------------------------------------


def test_pip_install_in_a_kernel_says_no_network_at_once(kernel_name: str, workdir: Path) -> None:
    """Before: pip retried the unreachable index for about 12 s and ended in a
    connection error that never said the kernel has no network by design."""
    out, _status, seconds = run_code(kernel_name, workdir, "%pip install requests")
    assert "no network, by design" in out
    assert "image build --from IMAGE --tag course/NAME:1 --requirements" in out
    assert seconds < 2
