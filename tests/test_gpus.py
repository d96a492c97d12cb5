"""GPUs (`setup --gpus`): Docker's syntax checked at the edge, carried by the settings to
`docker run --gpus`, refused at setup by an engine without GPU support, and refused for
Podman (whose Docker-compatible API drops GPU requests silently).

These machines have no GPU: the kernel that really uses one is the `gpu`-marked test.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, config, engine, kernelspec, manage, readiness
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import KernelSettings, parse_gpus
from tests.conftest import install_kernel, not_here
from tests.kernels import execute, running_kernel, stream_text
from tests.test_hardening import LAUNCH, run_opts, values

# -- the syntax, as `docker run --gpus` reads it ----------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored", "count", "devices"),
    [
        ("all", "all", -1, ()),
        ("2", "2", 2, ()),
        ("count=all", "all", -1, ()),
        ("device=0", "device=0", None, ("0",)),
        # Unquoted, Docker would read "1" as a count next to the device (refused by the
        # engine): we read it as the second device and store the quoted form.
        ("device=0,1", '"device=0,1"', None, ("0", "1")),
        ('"device=0,1"', '"device=0,1"', None, ("0", "1")),
        ("device=GPU-3a8f2c1e-9b7d", "device=GPU-3a8f2c1e-9b7d", None, ("GPU-3a8f2c1e-9b7d",)),
        ("all,capabilities=compute,utility", 'all,"capabilities=compute,utility"', -1, ()),
        ("driver=nvidia", "driver=nvidia", None, ()),
    ],
)
def test_gpus_accepts_dockers_syntax_and_stores_what_docker_reads_back(
    given: str, stored: str, count: int | None, devices: tuple[str, ...]
) -> None:
    request = parse_gpus(given)
    assert (request.value, request.count, request.devices) == (stored, count, devices)
    assert KernelSettings(gpus=given).gpus == stored


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "empty"),
        ("bogus", "not 'all' or a whole number"),
        ("-1", "not 'all' or a whole number"),
        ("0", "asks for no GPU"),
        ("all,all", "given twice"),
        ("foo=1", "unexpected key 'foo'"),
        ("count=2,device=0", "both by count and by device"),
        ("device=a b", "not a GPU index or UUID"),
        ("device=", "not a GPU index or UUID"),
    ],
)
def test_gpus_refuses_what_docker_would_refuse_naming_the_option(given: str, says: str) -> None:
    with pytest.raises(SettingsError, match="--gpus") as caught:
        KernelSettings(gpus=given)
    assert says in str(caught.value)
    assert "No kernelspec was written" in str(caught.value)


def test_gpus_with_podman_is_refused_because_its_api_drops_them() -> None:
    with pytest.raises(SettingsError, match="--gpus all cannot be used with Podman"):
        KernelSettings(gpus="all", engine="podman")


# -- the argument table -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "passed"),
    [
        (None, []),
        ("all", ["all"]),
        ("2", ["2"]),
        ("device=0,1", ['"device=0,1"']),
        ("device=GPU-3a8f", ["device=GPU-3a8f"]),
    ],
)
def test_run_args_pass_gpus_once_as_docker_spells_them(gpus: str | None, passed: list[str]) -> None:
    opts = run_opts(KernelSettings(gpus=gpus))
    assert values(opts, "--gpus") == passed
    assert opts.count("--gpus") == len(passed)


def test_gpus_do_not_loosen_the_rest_of_the_hardening() -> None:
    plain = run_opts()
    with_gpus = run_opts(KernelSettings(gpus="all"))
    assert [a for a in with_gpus if a not in ("--gpus", "all")] == plain


def test_the_probe_asks_for_the_gpus_the_kernel_will_get() -> None:
    """setup's check is the kernel's own container: a GPU it cannot get fails setup."""
    settings = KernelSettings(gpus="all")
    args = readiness.probe_args(settings, LAUNCH)
    assert ("--gpus", "all") in itertools.pairwise(args)


# -- carried everywhere the settings go ---------------------------------------------------------


def test_gpus_survive_kernel_json_config_traits_and_show_as_command(tmp_path: Path) -> None:
    settings = KernelSettings(gpus="device=0,1")
    data = kernelspec.build_kernel_json(settings, display_name="g")
    assert kernelspec.settings_from_kernel_json(json.loads(json.dumps(data))).gpus == (
        '"device=0,1"'
    )
    assert "gpus" in config.DockerKernel.class_trait_names(config=True)
    spec = tmp_path / "g"
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps(data))
    argv = manage.setup_argv(manage.read_spec("g", spec), {})
    assert argv[argv.index("--gpus") + 1] == '"device=0,1"'
    assert cli.build_parser().parse_args(argv).gpus == '"device=0,1"'


def test_docker_arg_gpus_is_pointed_to_the_gpus_option() -> None:
    for docker_args in (("--gpus=all",), ("--gpus", "all")):
        found = readiness.loosenings(KernelSettings(docker_args=docker_args))
        assert len(found) == 1, found
        assert "use setup --gpus all instead" in found[0].message
        assert not found[0].refused


def test_engine_words_for_a_missing_gpu_driver_name_the_fix() -> None:
    text = (
        'docker: Error response from daemon: could not select device driver "" with '
        "capabilities: [[gpu]].\n\nRun 'docker run --help' for more information\n"
    )
    what, fix = engine.explain_run_failure(text, 125, KernelSettings(gpus="all"))
    assert what.startswith("--gpus all: the engine has no GPU support")
    assert "NVIDIA Container Toolkit" in fix
    assert "docker info" in fix


# -- against the real engines (no GPU here) ------------------------------------------------------


@pytest.mark.docker
def test_setup_gpus_is_refused_in_one_line_by_an_engine_without_gpu_support(
    data_dir: Path, engine: Engine, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if {"nvidia"} & engine.runtimes():
        pytest.skip("this engine has the nvidia runtime: the gpu-marked test covers it")
    code = cli.main(["setup", "--name", "jdk-test-gpu", "--user", "--gpus", "all"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "--gpus all: the engine has no GPU support" in err
    assert "No kernelspec was written" in err
    assert "NVIDIA Container Toolkit" in err
    assert not (data_dir / "kernels" / "jdk-test-gpu").exists()


@pytest.mark.docker
def test_doctor_fails_a_gpu_spec_the_engine_cannot_serve(
    data_dir: Path, engine: Engine, kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spec written with --skip-checks is checked by doctor the same way."""
    if {"nvidia"} & engine.runtimes():
        pytest.skip("this engine has the nvidia runtime: the gpu-marked test covers it")
    argv = ["setup", "--name", "jdk-test-gpu", "--user", "--gpus", "device=0,1", "--skip-checks"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["doctor", "jdk-test-gpu"]) == 1
    out = capsys.readouterr().out
    assert 'FAIL  jdk-test-gpu: kernel: --gpus "device=0,1": the engine has no GPU support' in out
    assert "NVIDIA Container Toolkit" in out


@pytest.mark.docker
def test_setup_gpus_with_podman_is_refused_and_writes_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not os.path.exists("/run/podman/podman.sock") and os.getuid() == 0:
        not_here("no Podman API socket at /run/podman/podman.sock", "Podman")
    code = cli.main(
        ["setup", "--name", "jdk-test-gpu", "--user", "--podman", "--gpus", "all", "--skip-checks"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot be used with Podman" in err
    assert not (data_dir / "kernels" / "jdk-test-gpu").exists()


# -- on a machine with a GPU ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.docker
def test_a_gpu_kernel_sees_its_gpu(
    engine: Engine, kernel_image: str, workdir: Path, gpu_image: str
) -> None:
    """A kernel set up with --gpus all sees the GPU: nvidia-smi lists it, and torch (when
    the image has it) says CUDA is available."""
    name = "jdk-test-gpu"
    install_kernel(name, gpu_image, "--gpus", "all")
    with running_kernel(name, str(workdir)) as (_km, kc):
        code = (
            "import shutil, subprocess\n"
            "smi = shutil.which('nvidia-smi')\n"
            "print('smi', subprocess.run([smi, '-L'], capture_output=True, text=True).stdout "
            "if smi else 'missing')\n"
            "try:\n    import torch\n    print('cuda', torch.cuda.is_available())\n"
            "except ImportError:\n    print('cuda', 'no torch')\n"
        )
        out = stream_text(execute(kc, code)[1])
    assert "GPU 0" in out, out
    assert "cuda False" not in out, out


@pytest.fixture
def gpu_image(kernel_image: str) -> str:
    """The image for the GPU test (JDK_GPU_IMAGE, e.g. one with torch), else the default.

    Skipped, with the reason, where the machine has no GPU for Docker."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU on this machine (nvidia-smi not found): the gpu test needs one")
    return os.environ.get("JDK_GPU_IMAGE", kernel_image)
