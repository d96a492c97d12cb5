"""settings.py: parsing --mount and --env, validating KernelSettings, the kernel.json dict."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import (
    DEFAULT_IMAGE,
    KernelSettings,
    Mount,
    option,
    parse_env,
    size_bytes,
)

BASE = "/home/u/course"


# -- Mount.parse ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data:/data", Mount("/data", "/data", read_only=False)),
        ("/data:/mnt/d:ro", Mount("/data", "/mnt/d", read_only=True)),
        ("/data:/mnt/d:rw", Mount("/data", "/mnt/d", read_only=False)),
        ("data:/data", Mount(f"{BASE}/data", "/data")),
        ("./data/../shared:/shared:ro", Mount(f"{BASE}/shared", "/shared", read_only=True)),
        ("../up:/up", Mount("/home/u/up", "/up")),
        ("/a//b/./c/../d:/x/../y/", Mount("/a/b/d", "/y")),
        ("/weird name=é:/w", Mount("/weird name=é", "/w")),
    ],
)
def test_mount_parse_accepts_host_dest_and_mode(text: str, expected: Mount) -> None:
    """HOST:DEST[:ro|:rw] parses; relative HOST is resolved on base_dir; '..' is collapsed."""
    assert Mount.parse(text, BASE) == expected


@pytest.mark.parametrize("text", ["a", "a:b:c:d", ":x", "x:", "/a:/b:xx", "/a:/b:", "/a:/b:RO"])
def test_mount_parse_refuses_malformed_forms(text: str) -> None:
    """Anything but HOST:DEST[:ro|:rw] is refused with a message quoting it and an example."""
    with pytest.raises(SettingsError, match="is not HOST:DEST") as info:
        Mount.parse(text, BASE)
    assert f"'{text}'" in str(info.value)


def test_mount_parse_refuses_relative_container_path() -> None:
    """A DEST that is not absolute is refused and named."""
    with pytest.raises(SettingsError, match=r"container path 'data' must be absolute"):
        Mount.parse("/data:data", BASE)


@pytest.mark.parametrize(
    ("text", "bad"),
    [("/a,b:/data", "/a,b"), ("/data:/d,e", "/d,e"), ("x,y:/data", f"{BASE}/x,y")],
)
def test_mount_parse_refuses_paths_with_commas(text: str, bad: str) -> None:
    """A ',' in either path cannot be carried by --mount and is refused, naming the path."""
    with pytest.raises(SettingsError, match="contains ','") as info:
        Mount.parse(text, BASE)
    assert f"'{bad}'" in str(info.value)


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/run/jupyter-docker-kernel",
        "/run/jupyter-docker-kernel/",
        "/run/jupyter-docker-kernel/kernel.json",
        "/opt/jupyter-docker-kernel",
        "/opt/jupyter-docker-kernel/supervise.py",
        "/tmp/../run/jupyter-docker-kernel",
        "/x/..",
    ],
)
def test_mount_parse_refuses_reserved_targets(target: str) -> None:
    """The container's root and our own directories (after normalising) cannot be mounted on."""
    with pytest.raises(SettingsError, match="is reserved"):
        Mount.parse(f"/data:{target}", BASE)


@pytest.mark.parametrize("target", ["/run/jupyter-docker-kernelX", "/opt/jupyter-docker", "/run"])
def test_mount_parse_allows_targets_next_to_reserved_ones(target: str) -> None:
    """Only the reserved directories and their contents are refused, not prefix look-alikes."""
    assert Mount.parse(f"/data:{target}", BASE).target == target


def test_mount_to_spec_round_trips_through_parse() -> None:
    """to_spec() prints the HOST:DEST[:ro] form that parse() reads back to the same mount."""
    for mount in (Mount("/a", "/b"), Mount("/a", "/b", read_only=True)):
        assert Mount.parse(mount.to_spec(), BASE) == mount


# -- parse_env ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], ()),
        (["A=1"], (("A", "1"),)),
        (["A=1", "B=2"], (("A", "1"), ("B", "2"))),
        (["A=1", "B=2", "A=3"], (("A", "3"), ("B", "2"))),
        (["URL=a=b=c"], (("URL", "a=b=c"),)),
        (["EMPTY="], (("EMPTY", ""),)),
    ],
)
def test_parse_env_keeps_order_last_duplicate_and_equals_in_values(
    items: list[str], expected: tuple[tuple[str, str], ...]
) -> None:
    """NAME=VALUE pairs keep first-seen order, the last value of a duplicate, '=' in values."""
    assert parse_env(items) == expected


def test_parse_env_refuses_item_without_equals() -> None:
    """An item without '=' is refused with a message quoting it and the right form."""
    with pytest.raises(SettingsError, match=r"--env 'NOEQUALS' has no '='.*NAME=VALUE"):
        parse_env(["A=1", "NOEQUALS"])


# -- KernelSettings validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", "", "--image ''"),
        ("image", "my image", "--image 'my image'"),
        ("workdir", "home", "workdir must be one of mount, copy, none, not 'home'"),
        ("env", (("1BAD", "x"),), "--env name '1BAD'"),
        ("env", (("A-B", "x"),), "--env name 'A-B'"),
        ("memory", "2 G B", "--memory '2 G B'"),
        ("memory", "lots", "--memory 'lots'"),
        ("memory", "1.5.2g", "--memory '1.5.2g'"),
        ("memory", "2x", "--memory '2x'"),
        ("tmp_size", "-1m", "--tmp-size '-1m'"),
        ("cpus", 0.0, "--cpus must be positive, not 0.0"),
        ("cpus", -1.0, "--cpus must be positive, not -1.0"),
        ("pids_limit", 15, "--pids-limit 15"),
        ("pids_limit", 0, "--pids-limit 0"),
        ("kernel_user", "kernel", "--kernel-user 'kernel'"),
        ("kernel_user", "1000:", "--kernel-user '1000:'"),
        ("kernel_user", "0", "--kernel-user 0"),
        ("kernel_user", "0:1000", "--kernel-user 0"),
        ("kernel_cmd", ("python3", "-m", "foo"), "--kernel-cmd must contain {connection_file}"),
    ],
)
def test_invalid_setting_is_refused_naming_field_and_value(
    field: str, value: Any, message: str
) -> None:
    """Each invalid field raises SettingsError whose message names the value and the setup
    option that sets it (--pids-limit, not the field pids_limit)."""
    with pytest.raises(SettingsError) as info:
        KernelSettings(**{field: value})
    assert message in str(info.value)


def test_pids_limit_of_16_is_the_smallest_accepted() -> None:
    """16 is the floor: the boundary value is accepted."""
    assert KernelSettings(pids_limit=16).pids_limit == 16


@pytest.mark.parametrize("user", ["00", "000:1000"])
def test_kernel_user_zero_with_leading_zeros_is_refused(user: str) -> None:
    """Any spelling of uid 0 is refused, not only the literal '0'."""
    with pytest.raises(SettingsError, match="root"):
        KernelSettings(kernel_user=user)


@pytest.mark.parametrize(("field", "value"), [("memory", "0"), ("memory", "0g"), ("tmp_size", "0")])
def test_zero_size_is_refused(field: str, value: Any) -> None:
    """A zero memory or tmpfs size, which the engine treats as unlimited, is refused."""
    with pytest.raises(SettingsError, match=option(field)):
        KernelSettings(**{field: value})


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2g", "2g"),
        ("2G", "2G"),
        ("512m", "512m"),
        ("2048m", "2048m"),
        ("2gb", "2g"),
        ("2GB", "2g"),
        ("512MB", "512m"),
        ("512mb", "512m"),
        ("2GiB", "2g"),
        ("2 GB", "2g"),
        ("1.5g", "1536m"),
        ("0.5gb", "512m"),
        ("1t", "1024g"),
        ("1536kb", "1536k"),
        ("100b", "100b"),
        ("1.5k", "1536"),
    ],
)
def test_sizes_take_dockers_spellings_and_store_ours(given: str, stored: str) -> None:
    """What docker run --memory takes (go-units: b/k/m/g/t/p, optional b or ib, a decimal,
    any case, one space) is accepted; a spelling other than ours becomes ours, since the
    tmpfs size= option and the relay's budgets read only digits with k, m or g."""
    settings = KernelSettings(memory=given, tmp_size=given, max_message=given)
    assert (settings.memory, settings.tmp_size, settings.max_message) == (stored,) * 3
    assert size_bytes(settings.memory) == size_bytes(stored)


def test_a_malformed_number_in_kernel_json_names_the_field_and_its_option() -> None:
    """from_dict: a value of the wrong type names the kernel.json field and the option."""
    with pytest.raises(SettingsError, match=r"setting pids_limit \(--pids-limit\) is malformed"):
        KernelSettings.from_dict({"pids_limit": "many"})


@pytest.mark.parametrize("cpus", [float("nan"), float("inf")])
def test_cpus_not_finite_is_refused(cpus: float) -> None:
    """cpus must be finite (docker run rejects nan and inf), so they are refused at the edge."""
    with pytest.raises(SettingsError, match="cpus"):
        KernelSettings(cpus=cpus)


# -- to_dict / from_dict --------------------------------------------------------------------

FULL = KernelSettings(
    image="course/py:2024",
    workdir="copy",
    workdir_root="git",
    mounts=(
        Mount("/data", "/data", read_only=True),
        Mount("/scratch", "/scratch"),
        Mount("{project}/data", "/pdata", read_only=True),
    ),
    env=(("A", "1"), ("B", "x=y")),
    kernel_cmd=("python3.12", "-m", "mykernel", "-f", "{connection_file}"),
    kernel_spec_in_image="mykernel",
    kernel_transport="tcp",
    python="python3.12",
    docker_args=("--gpus", "all"),
    network="bridge",
    runtime="runsc",
    memory="1g",
    cpus=0.5,
    pids_limit=64,
    tmp_size="64m",
    kernel_user="1000:1000",
    workdir_readonly=True,
    max_lifetime=600.0,
    nofile=256,
    fsize="10m",
    tmp_inodes=1000,
    max_message="8m",
    output_budget="100m",
    copy_limit="10m",
    engine_host="unix:///run/podman/podman.sock",
    engine="podman",
    keep_entrypoint=True,
    image_id="sha256:" + "ab" * 32,
)


def test_to_dict_of_defaults_is_only_the_image() -> None:
    """Default settings serialise to the image alone."""
    assert KernelSettings().to_dict() == {"image": DEFAULT_IMAGE}


def test_to_dict_holds_only_non_default_fields_plus_image() -> None:
    """A changed field appears (in JSON-ready form) next to the image; defaults do not."""
    settings = KernelSettings(memory="1g", mounts=(Mount("/a", "/b", read_only=True),))
    assert settings.to_dict() == {
        "image": DEFAULT_IMAGE,
        "memory": "1g",
        "mounts": [{"source": "/a", "target": "/b", "read_only": True}],
    }


#: The pool fields (a pool cannot go with FULL's custom kernel command), gpus (Podman,
#: FULL's engine, cannot have them) and nodes and their shared paths (FULL's engine is
#: Podman's socket): POOLED has these.
POOL_FIELDS = {"pool", "pool_ttl", "gpus", "nodes", "node_shared_paths"}
POOLED = KernelSettings(
    workdir="copy",
    pool=3,
    pool_ttl=60.0,
    gpus="device=0,1",
    nodes=("ssh://ann@node1", "ssh://ann@node2:2222"),
    node_shared_paths=("/srv/course", "/home"),
)
#: The Kubernetes fields (a pod cannot honour FULL's engine options): KUBED has these.
KUBE_FIELDS = {"kube_namespace", "kube_context", "kube_pull", "kube_pvc"}
KUBED = KernelSettings(
    kube_namespace="kernels",
    kube_context="prod",
    kube_pull="Always",
    kube_pvc="claim-alice:/home/jovyan",
)


def test_full_settings_differ_from_defaults_in_every_field() -> None:
    """FULL, POOLED and KUBED are non-default everywhere: round trips cover every field."""
    fields = set(KernelSettings.__dataclass_fields__)
    assert set(FULL.to_dict()) == fields - POOL_FIELDS - KUBE_FIELDS
    assert set(POOLED.to_dict()) >= POOL_FIELDS
    assert set(KUBED.to_dict()) >= KUBE_FIELDS


@pytest.mark.parametrize("settings", [FULL, POOLED, KUBED], ids=["full", "pooled", "kube"])
def test_from_dict_of_to_dict_is_identity(settings: KernelSettings) -> None:
    """from_dict(to_dict(s)) == s for settings that differ from the defaults everywhere."""
    assert KernelSettings.from_dict(settings.to_dict()) == settings


def test_from_dict_refuses_unknown_keys_naming_them() -> None:
    """Unknown keys are an error that names each of them, not silently ignored."""
    with pytest.raises(SettingsError, match=r"Unknown setting.*gpu, shm_size"):
        KernelSettings.from_dict({"image": "x", "shm_size": "1g", "gpu": True})


@pytest.mark.parametrize(
    "data",
    [
        {"mounts": [{"source": "/a"}]},
        {"mounts": [{"source": "/a", "target": "/b", "mode": "ro"}]},
        {"cpus": "fast"},
        {"pids_limit": "many"},
    ],
)
def test_from_dict_refuses_malformed_values(data: dict[str, Any]) -> None:
    """A hand-edited, ill-typed value becomes a SettingsError, not a TypeError/ValueError."""
    with pytest.raises(SettingsError, match="malformed"):
        KernelSettings.from_dict(data)


def test_from_dict_validates_mounts_like_parse() -> None:
    """A reserved mount target in kernel.json is refused just like on the command line."""
    with pytest.raises(SettingsError, match="is reserved"):
        KernelSettings.from_dict({"mounts": [{"source": "/a", "target": "/"}]})


# -- command --------------------------------------------------------------------------------


def test_command_default_runs_ipykernel_with_the_images_python() -> None:
    """Without kernel_cmd the command is `PYTHON -m ipykernel_launcher -f {connection_file}`."""
    assert KernelSettings(python="python3.11").command() == (
        "python3.11",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    )


def test_command_custom_is_kernel_cmd_verbatim() -> None:
    """A kernel_cmd is returned as given, placeholder untouched."""
    cmd = ("R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}")
    assert KernelSettings(kernel_cmd=cmd).command() == cmd
