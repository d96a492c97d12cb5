"""Stable entry points (issue 11, item 5): kernel.json files already written keep working.

The fixtures (tests/data/release-9a2f214) are kernel.json files exactly as release
0.1.0.dev0 (commit 9a2f214) wrote them with `setup --name old-argv --no-workdir` (and
`--provisioner`), byte for byte but the interpreter's path, which setup took from the
environment it ran in. Each is installed as
it is and started with jupyter_client on today's code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from jupyter_docker_kernel.provisioner import DockerProvisioner
from tests.kernels import containers_of, execute, kernel_key, start, stop, stream_text, wait_until

#: kernel.json as `setup --name old-argv --no-workdir` (and `--name old-prov --provisioner`)
#: wrote them at 9a2f214; "{python}" stands for that venv's interpreter.
RELEASE = Path(__file__).parent / "data" / "release-9a2f214"
OLD_ARGV_SPEC = (RELEASE / "old-argv" / "kernel.json").read_text()
OLD_PROVISIONER_SPEC = (RELEASE / "old-prov" / "kernel.json").read_text()

#: The safe-path form that release wrote when `python -I` could not import the package
#: (hostpython.safe_path_argv at 9a2f214).
OLD_SAFE_PATH_CODE = (
    "import sys; sys.path[:] = [p for p in sys.path if p]; "
    "import runpy; runpy.run_module('jupyter_docker_kernel.launcher', run_name='__main__', "
    "alter_sys=True)"
)


def old_spec(form: str) -> str:
    if form == "provisioner":
        return OLD_PROVISIONER_SPEC
    if form == "safe-path":
        argv = json.dumps(
            ["{python}", "-c", OLD_SAFE_PATH_CODE, "-f", "{connection_file}"], indent=1
        ).replace("\n", "\n ")
        start = OLD_ARGV_SPEC.index('"argv": [')
        end = OLD_ARGV_SPEC.index("],", start) + 1
        return OLD_ARGV_SPEC[:start] + '"argv": ' + argv + OLD_ARGV_SPEC[end:]
    return OLD_ARGV_SPEC


def install_old(name: str, text: str, image: str) -> Path:
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    text = text.replace("{python}", sys.executable)
    text = text.replace("jupyter-docker-kernel/default:latest", image)
    (spec / "kernel.json").write_text(text)
    return spec


def test_the_fixtures_are_what_that_release_wrote() -> None:
    """The literal parses, and the argv it runs is the module path we keep."""
    data = json.loads(OLD_ARGV_SPEC)
    assert data["argv"][1:4] == ["-I", "-m", "jupyter_docker_kernel.launcher"]
    prov = json.loads(OLD_PROVISIONER_SPEC)
    assert prov["metadata"]["kernel_provisioner"]["provisioner_name"] == "docker-provisioner"
    safe = json.loads(old_spec("safe-path"))
    assert safe["argv"][1:3] == ["-c", OLD_SAFE_PATH_CODE]


@pytest.mark.docker
@pytest.mark.parametrize("form", ["argv", "safe-path", "provisioner"])
def test_a_kernelspec_of_the_previous_release_starts(
    form: str, kernel_image: str, workdir: Path
) -> None:
    name = f"jdk-test-old-{form}"
    install_old(name, old_spec(form), kernel_image)
    assert KernelSpecManager().get_kernel_spec(name).argv[0] == sys.executable
    km, kc = start(name, str(workdir))
    prov = km.provisioner
    key = prov.key if isinstance(prov, DockerProvisioner) else kernel_key(km)
    try:
        if form == "provisioner":
            assert isinstance(km.provisioner, DockerProvisioner)
        else:
            assert not isinstance(km.provisioner, DockerProvisioner)
        reply, out = execute(kc, "print(6 * 7)")
        assert reply["status"] == "ok"
        assert stream_text(out) == "42\n"
        assert containers_of(key, running_only=True)
    finally:
        stop(km, kc)
    wait_until(lambda: not containers_of(key), 10)
