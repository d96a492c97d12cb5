"""Project directories (setup --workdir-root, --mount templates): the pure resolution and
refusal tables, without an engine; test_project_layout.py runs the layout with real clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_docker_kernel import cli, config, hardening, kernelspec, manage, readiness, workdir
from jupyter_docker_kernel.errors import LaunchError, SettingsError
from jupyter_docker_kernel.settings import KernelSettings, Mount

NB = "/srv/proj/notebooks"
#: The directories holding .git in the table's fake filesystem.
GIT = {"/srv/proj/.git", "/srv/other/.git"}


def root_of(notebook_dir: str, root: str | None) -> tuple[str, str]:
    settings = KernelSettings(workdir_root=root)
    return workdir.project_root(notebook_dir, settings, exists=GIT.__contains__)


@pytest.mark.parametrize(
    ("notebook_dir", "how", "expected"),
    [
        (NB, None, NB),
        (NB, "git", "/srv/proj"),
        ("/srv/proj", "git", "/srv/proj"),
        ("/srv/proj/a/b/c", "git", "/srv/proj"),
        ("/opt/loose/notebooks", "git", "/opt/loose/notebooks"),  # no .git: its own dir
        (NB, "..1", "/srv/proj"),
        (NB, "..2", "/srv"),
        (NB, "..5", "/"),  # refused by check_project, not here
        (NB, "/srv/proj", "/srv/proj"),
        (NB, "/srv/proj/notebooks", NB),
        (NB + "/", "..1", "/srv/proj"),
    ],
)
def test_project_root_table(notebook_dir: str, how: str | None, expected: str) -> None:
    """(root, cwd): the root each --workdir-root names; the cwd is always the notebook's dir."""
    assert root_of(notebook_dir, how) == (
        expected,
        NB if notebook_dir.startswith(NB) else notebook_dir.rstrip("/"),
    )


def test_git_outside_any_work_tree_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="jupyter_docker_kernel.workdir")
    root_of("/opt/loose", "git")
    assert [r.getMessage() for r in caplog.records] == [
        "--workdir-root git: /opt/loose is in no git work tree (no .git above it); only that "
        "directory is mounted"
    ]


@pytest.mark.parametrize("path", ["/srv/other", "/srv/pro"])
def test_a_fixed_root_that_does_not_hold_the_notebook_refuses_the_start(path: str) -> None:
    with pytest.raises(LaunchError, match=f"not inside the project root {path} .*No container"):
        root_of(NB, path)


HOME = "/home/ana"
SOCKETS = ("/var/run/docker.sock", "/run/user/1000/docker.sock")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/", "host's root directory"),
        (HOME, "your home directory itself"),
        ("/usr", "covers /usr"),
        ("/usr/local/proj", "covers /usr"),
        ("/etc", "covers /etc"),
        ("/home", "covers /home/kernel"),  # mounted at its own path, above the kernel's HOME
        ("/tmp", "covers /tmp"),
        ("/run", "container engine's API (/run/user/1000/docker.sock)"),
        ("/run/user/1000", "container engine's API"),
        ("/var", "container engine's API (/var/run/docker.sock)"),
        (HOME + "/proj", ""),
        ("/srv/proj", ""),
        ("/tmp/proj", ""),
    ],
)
def test_refusal_table(path: str, why: str) -> None:
    """What may never be a project root or a template mount's source; "" where it may."""
    found = workdir.refusal(path, home=HOME, sockets=SOCKETS)
    assert (why in found) if why else found == "", found


def check(root: str, cwd: str, *mounts: Mount, realpath: dict[str, str] | None = None) -> None:
    real = realpath or {}
    workdir.check_project(
        root, cwd, mounts, home=HOME, sockets=SOCKETS, realpath=lambda p: real.get(p, p)
    )


@pytest.mark.parametrize(
    ("root", "cwd", "real", "message"),
    [
        ("/", "/srv", {}, "project root / .* host.s root directory.*No container was started"),
        (HOME, HOME + "/nb", {}, f"project root {HOME} .*home directory itself"),
        ("/usr", "/usr/nb", {}, "covers /usr"),
        ("/", "/", {}, "host's root directory"),
        # A symlinked project root is judged by where it leads too.
        ("/srv/link", "/srv/link/nb", {"/srv/link": "/"}, "project root / "),
    ],
)
def test_check_project_refuses_roots(
    root: str, cwd: str, real: dict[str, str], message: str
) -> None:
    with pytest.raises(LaunchError, match=message):
        check(root, cwd, realpath=real)


def test_a_root_that_is_the_notebooks_own_dir_is_what_every_kernel_mounts() -> None:
    """No widening, no new refusal: home as its own notebook dir stays allowed (but not /)."""
    check(HOME, HOME)


def test_check_project_refuses_a_template_mount_that_leads_to_a_refused_path(
    tmp_path: Path,
) -> None:
    """{project}/data is judged by where it leads: a symlink to /etc is /etc."""
    project = tmp_path / "proj"
    (project / "nb").mkdir(parents=True)
    (project / "data").symlink_to("/etc")
    data = Mount.parse("{project}/data:/data:ro", "/").resolved(str(project), str(project / "nb"))
    with pytest.raises(
        LaunchError, match=r"--mount .*: /etc covers /etc.*No container was started"
    ):
        workdir.check_project(str(project), str(project / "nb"), [data], home=HOME, sockets=())
    missing = Mount.parse("{project}/nothing:/n", "/").resolved(str(project), str(project))
    with pytest.raises(LaunchError, match="nothing does not exist for the notebook"):
        workdir.check_project(str(project), str(project), [missing], home=HOME, sockets=())


# -- templates: parsing (setup) and resolution (each start) ---------------------------------


@pytest.mark.parametrize(
    ("text", "source", "resolved"),
    [
        ("{project}/data:/data:ro", "{project}/data", "/srv/proj/data"),
        ("{project}:/project", "{project}", "/srv/proj"),
        ("{notebook_dir}/in:/in", "{notebook_dir}/in", NB + "/in"),
        ("{project}/a/../b/:/b", "{project}/b", "/srv/proj/b"),
        ("{project}/../../etc:/x", "{project}/etc", "/srv/proj/etc"),  # cannot climb out
    ],
)
def test_mount_templates_parse_and_resolve(text: str, source: str, resolved: str) -> None:
    m = Mount.parse(text, "/elsewhere")
    assert m.source == source
    assert m.resolved("/srv/proj", NB).source == resolved
    assert Mount.parse(m.to_spec(), "/elsewhere") == m


@pytest.mark.parametrize("text", ["{home}/x:/x", "{project}x:/x", "{projects}/a:/a", "{:/a"])
def test_unknown_or_malformed_templates_are_refused(text: str) -> None:
    with pytest.raises(SettingsError, match=r"unknown placeholder|not HOST:DEST"):
        Mount.parse(text, "/elsewhere")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workdir_root": "src"}, "--workdir-root 'src' is not git, ..N or an absolute path"),
        ({"workdir_root": "..0"}, r"--workdir-root \.\.0: \.\.N climbs 1 to 16"),
        ({"workdir_root": "..17"}, "climbs 1 to 16"),
        ({"workdir_root": "/a,b"}, "cannot hold ','"),
        ({"workdir_root": "git", "workdir": "none"}, "--no-workdir mounts nothing"),
        ({"mounts": (Mount("{project}/d", "/d"),)}, "needs --workdir-root"),
        (
            {"mounts": (Mount("{notebook_dir}/d", "/d"),), "workdir": "copy", "pool": 1},
            "--pool",
        ),
    ],
)
def test_settings_refuse_bad_roots_and_template_combinations(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        KernelSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("given", "stored"), [("git", "git"), ("..01", "..1"), ("/a/b/", "/a/b")])
def test_workdir_root_is_stored_in_its_normal_form(given: str, stored: str) -> None:
    assert KernelSettings(workdir_root=given).workdir_root == stored


# -- hardening: the root at its own path, the notebook's dir as cwd -------------------------


def launch(**kw: str) -> hardening.Launch:
    base = {
        "kernel_id": "k",
        "container_name": "c",
        "runtime_dir": "/rt",
        "connection_file": "/rt/k.json",
        "supervisor_path": "/opt/s.py",
        "host_uid": 1000,
        "host_gid": 1000,
        "workdir": NB,
    }
    return hardening.Launch(**{**base, **kw})  # type: ignore[arg-type]


def mounts_and_workdir(settings: KernelSettings, the_launch: hardening.Launch) -> list[str]:
    args = hardening.run_args(settings, the_launch)
    out = [args[i + 1] for i, a in enumerate(args) if a == "--mount" and "/rt" not in args[i + 1]]
    out = [m for m in out if "/opt/" not in m]
    return [*out, args[args.index("--workdir") + 1]]


def test_run_args_mount_the_project_root_and_start_in_the_notebooks_dir() -> None:
    settings = KernelSettings(workdir_root="git", mounts=(Mount("{project}/data", "/data", True),))
    assert mounts_and_workdir(settings, launch(project_root="/srv/proj")) == [
        "type=bind,source=/srv/proj,target=/srv/proj",
        "type=bind,source=/srv/proj/data,target=/data,readonly",
        NB,
    ]


def test_run_args_copy_mode_streams_the_root_into_a_tmpfs_at_the_roots_path() -> None:
    """With --copy-workdir the root's copy goes into a capped tmpfs at the root's own path
    (the supervisor unpacks it there), and the notebook's directory below it is the cwd."""
    settings = KernelSettings(workdir="copy", workdir_root="..1")
    args = hardening.run_args(settings, launch(project_root="/srv/proj"))
    tmpfs = args[args.index("--tmpfs", args.index("--workdir") - 2) + 1]
    assert tmpfs.startswith("/srv/proj:")
    # The engine starts in the tmpfs; the supervisor enters the notebook's dir once the
    # copy is there (an engine-made --workdir below the root would be root's).
    assert args[args.index("--workdir") + 1] == "/srv/proj"
    assert args[args.index("--receive-workdir") + 1] == "/srv/proj"
    assert args[args.index("--chdir") + 1] == NB


def test_run_args_without_a_root_are_as_before() -> None:
    settings = KernelSettings(mounts=(Mount("{notebook_dir}/in", "/in"),))
    assert mounts_and_workdir(settings, launch()) == [
        f"type=bind,source={NB},target={NB}",
        f"type=bind,source={NB}/in,target=/in",
        NB,
    ]


# -- carried everywhere the settings go -------------------------------------------------------


def test_root_and_templates_survive_kernel_json_config_traits_and_show_as_command(
    tmp_path: Path,
) -> None:
    settings = KernelSettings(
        workdir_root="..1", mounts=(Mount.parse("{project}/data:/data:ro", "/x"),)
    )
    data = kernelspec.build_kernel_json(settings, display_name="p")
    assert kernelspec.settings_from_kernel_json(json.loads(json.dumps(data))) == settings
    assert "workdir_root" in config.DockerKernel.class_trait_names(config=True)
    spec = tmp_path / "p"
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps(data))
    argv = manage.setup_argv(manage.read_spec("p", spec), {})
    parsed = cli.build_parser().parse_args(argv)
    assert (parsed.workdir_root, parsed.mount) == ("..1", ["{project}/data:/data:ro"])


def test_config_file_sets_the_root_and_a_template(tmp_path: Path) -> None:
    (tmp_path / "jupyter_docker_kernel_config.py").write_text(
        'c.DockerKernel.workdir_root = "git"\nc.DockerKernel.mounts = ["{project}/data:/data:ro"]\n'
    )
    values = config.load_defaults([str(tmp_path)]).values
    assert values["workdir_root"] == "git"
    assert values["mounts"] == (Mount("{project}/data", "/data", read_only=True),)


def test_show_resolves_the_root_for_a_notebook_in_the_current_directory(tmp_path: Path) -> None:
    notebooks = tmp_path / "proj" / "nb"
    notebooks.mkdir(parents=True)
    settings = KernelSettings(workdir_root="..1", mounts=(Mount("{project}/d", "/d"),))
    args = manage.effective_args(settings, str(notebooks))
    root = str(tmp_path / "proj")
    assert f"type=bind,source={root},target={root}" in args
    assert f"type=bind,source={root}/d,target=/d" in args
    assert args[args.index("--workdir") + 1] == str(notebooks)


def test_setups_probe_leaves_templates_out() -> None:
    """setup's probe container has no notebook: a template has nothing to be filled in with."""
    settings = KernelSettings(
        workdir_root="git", mounts=(Mount("/srv/d", "/d"), Mount("{project}/data", "/data"))
    )
    args = readiness.probe_args(settings, launch())
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "--mount"]
    assert "type=bind,source=/srv/d,target=/d" in mounts
    assert not [m for m in mounts if "target=/data" in m]


def test_a_notebook_dir_template_is_checked_with_no_workdir_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-workdir --mount {notebook_dir}:/nb from the home directory itself: refused."""
    from jupyter_client.connect import write_connection_file

    from jupyter_docker_kernel.launcher import Launcher

    monkeypatch.setenv("HOME", str(tmp_path))
    connection, _ = write_connection_file(str(tmp_path / "kernel-x.json"))
    settings = KernelSettings(workdir="none", mounts=(Mount.parse("{notebook_dir}:/nb", "/"),))
    with pytest.raises(LaunchError, match=f"{tmp_path} is your home directory itself"):
        Launcher(settings, connection, workdir=str(tmp_path), base=tmp_path / "b")
