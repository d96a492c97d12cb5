"""Kernels the image provides: `setup --kernel-spec-in-image NAME` runs IRkernel, not ipykernel.

The pure tests cover reading an image's kernelspec listing and turning a spec's argv into
the in-container command. The Docker tests are an R user's story with Debian's IRkernel:
setup -> a real KernelManager runs R code -> interrupt -> shutdown leaves nothing ->
nbclient runs an R notebook; and a name the image lacks is refused, listing what it has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_docker_kernel import cli, kernelspec
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import ImageError, KernelSpecError, SettingsError
from jupyter_docker_kernel.image_kernels import (
    ImageKernelSpec,
    command_for,
    parse_listing,
    pick,
)
from jupyter_docker_kernel.settings import KernelSettings
from tests import kernels
from tests.conftest import inspect, install_kernel, not_here
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    running_kernel,
    stream_text,
    wait_for_stream,
)

#: The first test to use `r_image` on a fresh machine builds it (about 3 minutes, more on
#: a loaded one), inside that test's timeout.
pytestmark = pytest.mark.timeout(900)

IR_SPEC = {
    "argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
    "display_name": "R",
    "language": "R",
}
R_KERNEL = "jdk-test-r"


def listing(**kernels: object) -> str:
    return json.dumps({"prefix": "/usr", "kernels": kernels})


def ir_spec(**changes: object) -> ImageKernelSpec:
    fields: dict[str, object] = {
        "name": "ir",
        "resource_dir": "/usr/share/jupyter/kernels/ir",
        "argv": tuple(IR_SPEC["argv"]),
        "display_name": "R",
        "language": "R",
    }
    fields.update(changes)
    return ImageKernelSpec(**fields)  # type: ignore[arg-type]


# -- pure -------------------------------------------------------------------------------------


def test_listing_reads_argv_language_and_interrupt_mode() -> None:
    """parse_listing keeps each spec's argv, display name, language, interrupt mode, env."""
    text = listing(
        ir={"resource_dir": "/usr/share/jupyter/kernels/ir", "spec": IR_SPEC},
        bash={
            "resource_dir": "/k/bash",
            "spec": {
                "argv": ["bash-kernel", "-f", "{connection_file}"],
                "interrupt_mode": "message",
                "env": {"PS1": "$ "},
            },
        },
    )
    prefix, specs = parse_listing("a warning line\n" + text)
    assert prefix == "/usr"
    assert specs["ir"] == ir_spec()
    assert specs["bash"].interrupt_mode == "message"
    assert specs["bash"].env == (("PS1", "$ "),)
    assert specs["bash"].display_name == "bash"


def test_listing_skips_specs_without_an_argv_list() -> None:
    """A malformed kernel.json in the image is left out, not fatal to the others."""
    text = listing(
        ir={"resource_dir": "/x", "spec": IR_SPEC},
        broken={"resource_dir": "/y", "spec": {"argv": "R -e main"}},
        empty={"resource_dir": "/z", "spec": {"argv": []}},
    )
    assert list(parse_listing(text)[1]) == ["ir"]


def test_listing_that_is_not_json_is_an_image_error() -> None:
    """Output the probe should not print gives a clear error, not a traceback."""
    with pytest.raises(ImageError, match="No kernelspec was written"):
        parse_listing("Traceback (most recent call last):")


def test_command_fills_resource_dir_and_prefix_and_keeps_connection_file() -> None:
    """{resource_dir} and {prefix} become image paths; {connection_file} stays for the launch."""
    spec = ir_spec(argv=("{prefix}/bin/k", "--res", "{resource_dir}/x", "-f", "{connection_file}"))
    assert command_for(spec, "/opt/kernel") == (
        "/opt/kernel/bin/k",
        "--res",
        "/usr/share/jupyter/kernels/ir/x",
        "-f",
        "{connection_file}",
    )


def test_command_without_connection_file_is_refused() -> None:
    """A spec whose kernel could not find its sockets is refused at setup."""
    with pytest.raises(KernelSpecError, match=r"no \{connection_file\}"):
        command_for(ir_spec(argv=("R", "-e", "IRkernel::main()")), "/usr")


def test_unknown_name_lists_the_kernelspecs_the_image_has() -> None:
    """pick() names every kernelspec the image does have, so the user can choose one."""
    specs = {"ir": ir_spec(), "python3": ir_spec(name="python3", display_name="Python 3")}
    with pytest.raises(KernelSpecError) as info:
        pick(specs, "julia", "img:1")
    assert "has no kernelspec 'julia'" in str(info.value)
    assert "ir (R), python3 (Python 3)" in str(info.value)
    assert pick(specs, "IR", "img:1").name == "ir"


def test_settings_with_an_image_kernel_need_its_command() -> None:
    """kernel_spec_in_image without kernel_cmd (a hand-edited kernel.json) is an error."""
    with pytest.raises(SettingsError, match="needs the kernel_cmd"):
        KernelSettings(kernel_spec_in_image="ir")
    settings = KernelSettings(kernel_spec_in_image="ir", kernel_cmd=tuple(IR_SPEC["argv"]))
    assert KernelSettings.from_dict(settings.to_dict()) == settings


def test_kernel_json_carries_the_image_kernels_language() -> None:
    """Jupyter matches notebooks to kernels by language: the R spec says R."""
    settings = KernelSettings(kernel_spec_in_image="ir", kernel_cmd=tuple(IR_SPEC["argv"]))
    data = kernelspec.build_kernel_json(settings, display_name="R (container)", language="R")
    assert data["language"] == "R"
    assert kernelspec.settings_from_kernel_json(data) == settings


def test_kernel_cmd_placeholder_survives_jupyter_clients_substitution() -> None:
    """jupyter_client fills {connection_file} in every argv item and $NAME of its own
    environment in every env value; the settings JSON (in env) must reach the launcher
    unchanged, `{connection_file}` and `$HOME` included (the real KernelManager does it)."""
    from jupyter_client.manager import KernelManager

    settings = KernelSettings(
        kernel_spec_in_image="ir",
        kernel_cmd=tuple(IR_SPEC["argv"]),
        env=(("A", "$HOME and ${PATH}"),),
    )
    data = kernelspec.build_kernel_json(settings, display_name="R (container)", language="R")
    kernelspec.install("jdk-test-format", data, user=True, prefix=None, replace=True)
    km = KernelManager(kernel_name="jdk-test-format")
    try:
        argv, kw = km.pre_start_kernel()
    finally:
        km.cleanup_connection_file()
    assert argv[-2:] == ["-f", km.connection_file]
    assert "--settings" not in argv
    launched = KernelSettings.from_dict(json.loads(kw["env"][kernelspec.SETTINGS_ENV]))
    assert launched == settings


def test_tcp_transport_makes_the_supervisor_bridge_each_channel() -> None:
    """kernel_transport tcp: five --bridge PORT=SOCKET options, ports above the base."""
    from jupyter_docker_kernel import hardening

    args = hardening.supervisor_command(KernelSettings(kernel_transport="tcp"))
    bridges = [args[i + 1] for i, a in enumerate(args) if a == "--bridge"]
    assert bridges == [f"4000{n}=/run/jupyter-docker-kernel/k-{n}" for n in range(1, 6)]
    assert "--bridge" not in hardening.supervisor_command(KernelSettings())


@pytest.mark.parametrize("other", [{"network": "host"}, {"pool": 1, "workdir": "copy"}])
def test_tcp_transport_refuses_host_network_and_pool(other: dict[str, object]) -> None:
    """The kernel's tcp ports must be on the container's own loopback, and a pooled
    kernel binds ipc before it is claimed."""
    with pytest.raises(SettingsError, match="--kernel-transport tcp"):
        KernelSettings(kernel_transport="tcp", **other)  # type: ignore[arg-type]


# -- with Docker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r_kernel(r_image: str) -> str:
    """`setup --kernel-spec-in-image ir` for the IRkernel test image."""
    install_kernel(R_KERNEL, r_image, "--kernel-spec-in-image", "ir")
    return R_KERNEL


@pytest.mark.docker
def test_setup_writes_a_kernelspec_for_the_images_r_kernel(r_kernel: str) -> None:
    """The written kernel.json is an R kernel whose command is the image's IRkernel argv."""
    spec_dir = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / r_kernel
    data = json.loads((spec_dir / "kernel.json").read_text())
    settings = kernelspec.settings_from_kernel_json(data)
    assert data["language"] == "R"
    assert data["display_name"] == "R (container)"
    assert settings.kernel_spec_in_image == "ir"
    assert settings.kernel_cmd == tuple(IR_SPEC["argv"])


@pytest.mark.docker
def test_r_kernel_runs_code_interrupts_and_leaves_nothing(r_kernel: str, workdir: Path) -> None:
    """R code runs in the container (cat(6*7) prints 42), Sys.sleep is interrupted, and
    shutdown removes the container."""
    with running_kernel(r_kernel, workdir, gone_within=30) as (km, kc):
        kernel_id = kernel_key(km)
        info = kc.kernel_info(reply=True, timeout=60)["content"]
        assert info["language_info"]["name"] == "R"
        reply, outputs = execute(kc, "cat(6*7)")
        assert reply["status"] == "ok"
        assert stream_text(outputs) == "42"

        msg_id = kc.execute('cat("sleeping\\n"); Sys.sleep(120); cat("not interrupted")')
        wait_for_stream(kc, msg_id, "sleeping")
        km.interrupt_kernel()
        interrupted = kc.get_shell_msg(timeout=30)
        assert interrupted["parent_header"]["msg_id"] == msg_id
        reply, outputs = execute(kc, "cat(R.version$language)")
        assert stream_text(outputs) == "R"
        assert len(containers_of(kernel_id, running_only=True)) == 1


@pytest.mark.docker
def test_r_kernel_container_is_hardened_like_ipykernels(r_kernel: str, workdir: Path) -> None:
    """The image's kernel gets the same container: no network, read-only root, no
    capabilities, not root, and R itself sees no network interface but loopback."""
    with running_kernel(r_kernel, workdir, gone_within=30) as (km, kc):
        kernel_id = kernel_key(km)
        (container,) = containers_of(kernel_id, running_only=True)
        host = inspect(container)["HostConfig"]
        assert isinstance(host, dict)
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        _, outputs = execute(kc, 'cat(Sys.getenv("HOME"), system("id -u", intern = TRUE))')
        home, uid = stream_text(outputs).split()
        assert home == "/home/kernel"
        assert uid != "0"
        _, outputs = execute(kc, 'cat(list.files("/sys/class/net"))')
        assert stream_text(outputs) == "lo"


@pytest.mark.docker
def test_r_kernel_over_the_tcp_bridge_runs_code(r_image: str, workdir: Path) -> None:
    """--kernel-transport tcp: IRkernel binds 127.0.0.1 in the container, the supervisor
    bridges it to the runtime dir's unix sockets, and cat(6*7) still prints 42."""
    name = "jdk-test-r-tcp"
    install_kernel(name, r_image, "--kernel-spec-in-image", "ir", "--kernel-transport", "tcp")
    with running_kernel(name, workdir, gone_within=30) as (_km, kc):
        _, outputs = execute(kc, "cat(6*7)")
        assert stream_text(outputs) == "42"


@pytest.mark.docker
def test_r_kernel_runs_under_gvisor(r_image: str, engine: Engine, workdir: Path) -> None:
    """With --runtime runsc the R kernel runs on gVisor's kernel (release 4.4.0), not ours."""
    if "runsc" not in engine.runtimes():
        not_here(
            "runtime runsc is not registered (scripts/bootstrap-engine --runsc does it)", "gVisor"
        )
    name = "jdk-test-r-gvisor"
    install_kernel(name, r_image, "--kernel-spec-in-image", "ir", "--runtime", "runsc")
    with running_kernel(name, workdir, gone_within=30) as (_km, kc):
        _, outputs = execute(
            kc, 'cat(6*7, Sys.info()[["release"]] != "' + os.uname().release + '")'
        )
        assert stream_text(outputs) == "42 TRUE"


@pytest.mark.docker
def test_nbclient_runs_an_r_notebook(r_kernel: str, workdir: Path) -> None:
    """A two-cell R notebook runs headless through nbclient; outputs land in the notebook."""
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    cells = [new_cell("x <- c(1, 2, 39)"), new_cell("cat(sum(x))")]  # type: ignore[no-untyped-call]
    nb = new_nb(cells=cells)  # type: ignore[no-untyped-call]
    NotebookClient(
        nb, kernel_name=r_kernel, timeout=120, resources={"metadata": {"path": str(workdir)}}
    ).execute()
    assert nb.cells[1].outputs[0]["text"] == "42"


@pytest.mark.docker
def test_image_kernels_lists_the_r_kernelspec(
    r_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`image kernels IMAGE` prints each kernelspec in the image with its argv."""
    assert cli.main(["image", "kernels", r_image]) == 0
    out = capsys.readouterr().out
    argv = "R --slave -e IRkernel::main() --args {connection_file}"
    assert out == f'ir: "R" (language R): {argv}\n'


@pytest.mark.docker
def test_default_images_python3_spec_runs_ipykernel_through_the_same_path(
    kernel_image: str, workdir: Path
) -> None:
    """--kernel-spec-in-image python3 on the default image: the image's own ipykernel
    kernelspec is run as a kernel_cmd, and Python code runs."""
    install_kernel("jdk-test-inimage-py", kernel_image, "--kernel-spec-in-image", "python3")
    with running_kernel("jdk-test-inimage-py", workdir, gone_within=30) as (_km, kc):
        _, outputs = execute(kc, "print(6 * 7)")
        assert stream_text(outputs) == "42\n"


@pytest.mark.docker
def test_unknown_kernelspec_lists_the_images_and_writes_nothing(
    r_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--kernel-spec-in-image julia on the R image: exit 1, the error names `ir`, no spec."""
    code = cli.main(
        ["setup", "--name", "jdk-test-julia", "--image", r_image, "--user",
         "--kernel-spec-in-image", "julia"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "has no kernelspec 'julia'; it has: ir (R)" in err
    assert not (Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / "jdk-test-julia").exists()


@pytest.mark.docker
def test_image_kernel_without_the_python_says_the_supervisor_needs_it(
    r_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supervisor runs with the image's Python: a missing one is named at setup."""
    code = cli.main(
        ["setup", "--name", "jdk-test-nopy", "--image", r_image, "--user",
         "--python", "/no/python3", "--kernel-spec-in-image", "ir"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "needs Python 3 in the image" in err
    assert not (Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / "jdk-test-nopy").exists()


@pytest.mark.docker
@pytest.mark.usefixtures("r_kernel")
class TestRKernelProtocol(kernels.ContainerKernelTests):
    """jupyter_kernel_test's message checks against IRkernel in the container: the relay
    carries a kernel that is not ipykernel frame for frame."""

    kernel_name = R_KERNEL

    language_name = "R"
    file_extension = ".r"
    code_hello_world = 'cat("hello, world")'
    code_stderr = 'message("test")'
    completion_samples: ClassVar[list[dict[str, Any]]] = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples: ClassVar[list[str]] = ["1", 'cat("x")', "f <- function(x) x * 2"]
    incomplete_code_samples: ClassVar[list[str]] = ['cat("x', "f <- function(x) {"]
    invalid_code_samples: ClassVar[list[str]] = ["1 +* 2"]
    code_generate_error = 'stop("boom")'
    code_inspect_sample = "paste"
    code_page_something = "?cat"
    code_clear_output = "IRdisplay::clear_output()"
    code_display_data: ClassVar[list[dict[str, str]]] = [
        {"code": 'IRdisplay::display_html("<b>test</b>")', "mime": "text/html"}
    ]

    # The suite's execute_result and history tests need code_execute_result, which IRkernel
    # cannot satisfy; these state what it does instead, so nothing here is skipped.
    def test_execute_result(self) -> None:
        """IRkernel 1.3 sends a value as display_data ([1] 42), not execute_result."""
        self.flush_channels()
        reply, outputs = self.execute_helper("6*7")
        assert reply["content"]["status"] == "ok"
        shown = [m["content"]["data"] for m in outputs if m["msg_type"] == "display_data"]
        assert [data["text/plain"] for data in shown] == ["[1] 42"]

    def test_history(self) -> None:
        """IRkernel answers history_request, with an empty history."""
        reply = self.history_helper(["6*7"], output=False, raw=True, hist_access_type="tail", n=1)
        assert reply["content"]["history"] == []
