"""A mounted work dir on a remote node (issue 13): only below a declared shared path.

Pure and setup-level here (no node: every refusal comes before any ssh call); a kernel
on a real node mounting a declared shared dir is in tests/test_node_kernels.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, hardening, node_workdir
from jupyter_docker_kernel.errors import LaunchError, SettingsError
from jupyter_docker_kernel.kernelspec import settings_from_kernel_json
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import Connection

NODE = "ssh://ann@node1.invalid"


def installed(data_dir: Path) -> KernelSettings:
    """The settings setup wrote for the kernelspec "n"."""
    path = data_dir / "kernels" / "n" / "kernel.json"
    return settings_from_kernel_json(json.loads(path.read_text()))


def launch(workdir: str, project_root: str = "") -> hardening.Launch:
    return hardening.Launch(
        kernel_id="k",
        container_name="jdk-k-1",
        runtime_dir="/run/x",
        connection_file="/run/x/c.json",
        supervisor_path="/run/x/s.py",
        host_uid=1000,
        host_gid=1000,
        workdir=workdir,
        project_root=project_root,
    )


@pytest.mark.parametrize(
    ("path", "shared", "inside"),
    [
        ("/srv/course", ("/srv/course",), True),
        ("/srv/course/ann/hw1", ("/srv/course",), True),
        ("/srv/course2/ann", ("/srv/course",), False),
        ("/srv", ("/srv/course",), False),
        ("/home/ann", ("/srv/course", "/home"), True),
        ("/home/ann", (), False),
    ],
)
def test_a_path_is_below_a_declared_shared_path_only_inside_it(
    path: str, shared: tuple[str, ...], inside: bool
) -> None:
    assert node_workdir.below(path, shared) is inside


def test_a_mounted_work_dir_without_a_declaration_is_refused_naming_the_option(
    tmp_path: Path,
) -> None:
    settings = KernelSettings(engine_host=NODE)
    with pytest.raises(LaunchError) as caught:
        node_workdir.check(settings, launch(str(tmp_path)), Connection.to(NODE))
    said = str(caught.value)
    assert f"cannot mount this host's directory {tmp_path}" in said
    assert "(none is declared)" in said
    assert "No container was started" in said
    assert "--node-shared-path DIR" in said


def test_a_work_dir_outside_the_declared_paths_is_refused(tmp_path: Path) -> None:
    settings = KernelSettings(engine_host=NODE, node_shared_paths=("/srv/course",))
    with pytest.raises(LaunchError, match=r"\(declared shared: /srv/course\)"):
        node_workdir.check(settings, launch(str(tmp_path)), Connection.to(NODE))


def test_a_symlink_in_the_shared_dir_to_elsewhere_is_refused(tmp_path: Path) -> None:
    """The node's engine would follow the link on its side: judged by where it leads."""
    shared, outside = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir()
    outside.mkdir()
    (shared / "hw").symlink_to(outside)
    settings = KernelSettings(engine_host=NODE, node_shared_paths=(str(shared),))
    with pytest.raises(LaunchError, match=f"directory {outside}:"):
        node_workdir.check(settings, launch(str(shared / "hw")), Connection.to(NODE))


def test_a_project_root_outside_the_declared_paths_is_refused(tmp_path: Path) -> None:
    """With --workdir-root the project root is mounted: it is what must be shared."""
    shared = tmp_path / "shared"
    (shared / "hw").mkdir(parents=True)
    settings = KernelSettings(engine_host=NODE, node_shared_paths=(str(shared),))
    there = launch(str(shared / "hw"), project_root=str(tmp_path))
    with pytest.raises(LaunchError, match=f"directory {tmp_path}:"):
        node_workdir.check(settings, there, Connection.to(NODE))


@pytest.mark.parametrize("path", ["srv/course", "/srv/../etc", "/", "/srv/course/"])
def test_a_shared_path_must_be_a_normalized_absolute_directory(path: str) -> None:
    with pytest.raises(SettingsError, match="is not a normalized absolute directory"):
        KernelSettings(node_shared_paths=(path,))


def test_setup_refuses_a_mounted_work_dir_on_a_node_and_names_the_declaration(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["setup", "--name", "n", "--user", "--skip-checks", "--engine-host", NODE]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "cannot mount this host's notebook directory" in err
    assert "--node-shared-path DIR" in err
    assert not (data_dir / "kernels" / "n").exists()


def test_setup_with_a_declared_shared_path_writes_it_into_the_kernelspec(
    data_dir: Path,
) -> None:
    argv = ["setup", "--name", "n", "--user", "--skip-checks", "--node", NODE]
    assert cli.main([*argv, "--node-shared-path", "/srv/course"]) == 0
    settings = installed(data_dir)
    assert settings.node_shared_paths == ("/srv/course",)
    assert settings.workdir == "mount"


def test_the_config_file_declares_shared_paths_as_setup_does(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_docker_kernel_config.py").write_text(
        f'c.DockerKernel.nodes = ["{NODE}"]\n'
        'c.DockerKernel.node_shared_paths = ["/srv/course", "/home"]\n'
    )
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    assert cli.main(["setup", "--name", "n", "--user", "--skip-checks"]) == 0
    assert installed(data_dir).node_shared_paths == ("/srv/course", "/home")
