"""config.load_defaults and `setup`: defaults from jupyter_docker_kernel_config.py, no Docker.

Each test points JUPYTER_CONFIG_DIR at its own directory, writes a config file there and
either loads it directly or runs `setup --skip-checks` through cli.main, as a user would.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, config
from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.kernelspec import settings_from_kernel_json
from jupyter_docker_kernel.settings import KernelSettings, Mount


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's JUPYTER_CONFIG_DIR (first in Jupyter's config path); starts empty."""
    path = tmp_path / "config"
    path.mkdir()
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(path))
    return path


def write_config(config_dir: Path, *lines: str) -> Path:
    path = config_dir / "jupyter_docker_kernel_config.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def setup(name: str, *extra: str) -> int:
    return cli.main(["setup", "--name", name, "--user", "--skip-checks", *extra])


def installed(data_dir: Path, name: str) -> KernelSettings:
    return settings_from_kernel_json(
        json.loads((data_dir / "kernels" / name / "kernel.json").read_text())
    )


# -- the loader ------------------------------------------------------------------------------


def test_every_kernel_setting_is_a_config_trait() -> None:
    """DockerKernel's traits are KernelSettings' fields, one for one: they cannot drift."""
    fields = {f.name for f in dataclasses.fields(KernelSettings)}
    assert set(config.DockerKernel.class_trait_names(config=True)) == fields


def test_no_config_file_means_no_defaults(config_dir: Path) -> None:
    """Without a config file the loader sets nothing and names no file."""
    loaded = config.load_defaults([str(config_dir)])
    assert loaded == config.ConfigDefaults(values={}, files=())


def test_config_file_values_become_settings_arguments(config_dir: Path) -> None:
    """Scalars, env, mounts and lists come back as KernelSettings keyword arguments."""
    (config_dir / "data").mkdir()
    path = write_config(
        config_dir,
        'c.DockerKernel.memory = "1g"',
        "c.DockerKernel.cpus = 0.5",
        'c.DockerKernel.env = {"MPLBACKEND": "Agg"}',
        'c.DockerKernel.mounts = ["data:/data:ro"]',
        'c.DockerKernel.docker_args = ["--shm-size=64m"]',
    )
    loaded = config.load_defaults([str(config_dir)])
    assert loaded.files == (str(path),)
    assert loaded.values == {
        "memory": "1g",
        "cpus": 0.5,
        "env": (("MPLBACKEND", "Agg"),),
        "mounts": (Mount(str(config_dir / "data"), "/data", read_only=True),),
        "docker_args": ("--shm-size=64m",),
    }


def test_earlier_config_dir_overrides_a_later_one(tmp_path: Path) -> None:
    """Jupyter's path order: the first dir (JUPYTER_CONFIG_DIR) wins where both set a key."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_config(first, 'c.DockerKernel.memory = "1g"')
    write_config(second, 'c.DockerKernel.memory = "4g"', "c.DockerKernel.pids_limit = 99")
    loaded = config.load_defaults([str(first), str(second)])
    assert loaded.values == {"memory": "1g", "pids_limit": 99}


def test_a_json_config_file_is_read_too(config_dir: Path) -> None:
    """jupyter_docker_kernel_config.json sets defaults like the .py file."""
    (config_dir / "jupyter_docker_kernel_config.json").write_text(
        json.dumps({"DockerKernel": {"network": "bridge"}})
    )
    assert config.load_defaults([str(config_dir)]).values == {"network": "bridge"}


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (["c.DockerKernel.memory = "], "syntax error on line 1"),
        (
            ['c.DockerKernel.memry = "1g"'],
            "unknown DockerKernel.memry (did you mean DockerKernel.memory?)",
        ),
        (['c.DockerKernal.memory = "1g"'], "sets DockerKernal, but only c.DockerKernel"),
        (["c.DockerKernel.memory = 5"], "expected a unicode string"),
        (['c.DockerKernel.memory = "lots"'], "memory 'lots' is not a size"),
        (['c.DockerKernel.workdir = "tmp"'], "bad value"),
        (['c.DockerKernel.mounts = ["nocolon"]'], "is not HOST:DEST"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_the_file(
    config_dir: Path, lines: list[str], says: str
) -> None:
    """Syntax errors, unknown names and refused values fail with the file's path and why."""
    path = write_config(config_dir, *lines)
    with pytest.raises(SettingsError) as info:
        config.load_defaults([str(config_dir)])
    assert str(path) in str(info.value)
    assert says in str(info.value)
    assert str(info.value).endswith("No kernelspec was written; fix the file or remove it.")


# -- setup with a config file ------------------------------------------------------------------


def test_setup_writes_the_config_files_defaults(
    config_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """memory and network from the config file end up in the kernelspec; setup names the file."""
    path = write_config(
        config_dir, 'c.DockerKernel.memory = "1g"', 'c.DockerKernel.network = "bridge"'
    )
    assert setup("k") == 0
    settings = installed(data_dir, "k")
    assert (settings.memory, settings.network) == ("1g", "bridge")
    assert f"  defaults from {path}\n" in capsys.readouterr().out


def test_setup_options_override_the_config_file(config_dir: Path, data_dir: Path) -> None:
    """--memory on the line beats the config file; what the line leaves out still comes from it."""
    write_config(config_dir, 'c.DockerKernel.memory = "1g"', 'c.DockerKernel.network = "bridge"')
    assert setup("k", "--memory", "3g") == 0
    settings = installed(data_dir, "k")
    assert (settings.memory, settings.network) == ("3g", "bridge")


def test_setup_env_adds_to_the_config_files_env(config_dir: Path, data_dir: Path) -> None:
    """--env merges with the config file's env; a name given on both takes the line's value."""
    write_config(config_dir, 'c.DockerKernel.env = {"A": "file", "B": "file"}')
    assert setup("k", "--env", "B=line", "--env", "C=line") == 0
    assert installed(data_dir, "k").env == (("A", "file"), ("B", "line"), ("C", "line"))


def test_setup_with_a_bad_config_file_writes_no_kernelspec(
    config_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file with a bad value: exit 1, one error line naming the file, no spec."""
    path = write_config(config_dir, "c.DockerKernel.pids_limit = 'many'")
    assert setup("k") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: Config file {path} has a bad value")
    assert not (data_dir / "kernels").exists()


def test_the_launcher_does_not_import_traitlets() -> None:
    """A kernel start never reads the config file: the launcher imports no traitlets."""
    code = "import sys, jupyter_docker_kernel.launcher; print('traitlets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_pool_in_the_config_file_combines_with_copy_workdir_on_the_line(
    config_dir: Path, data_dir: Path
) -> None:
    """pool needs a copied work dir; the line may supply it: the file is not judged alone."""
    write_config(config_dir, "c.DockerKernel.pool = 2")
    assert setup("k", "--copy-workdir") == 0
    assert (installed(data_dir, "k").pool, installed(data_dir, "k").workdir) == (2, "copy")


def test_a_conflict_between_file_and_line_names_the_file(
    config_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pool from the file and a mounted work dir: the error says where the defaults came from."""
    path = write_config(config_dir, "c.DockerKernel.pool = 2")
    assert setup("k") == 1
    err = capsys.readouterr().err
    assert "--pool needs --copy-workdir" in err
    assert f"(Defaults came from {path}.)" in err
    assert not (data_dir / "kernels").exists()
