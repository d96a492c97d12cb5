"""A researcher's project reaches the kernel whole (setup --workdir-root, issue 18 item 1).

The layout people keep: project/notebooks/analysis.ipynb next to project/data/x.csv. Each
test runs it with a real client against the real engine: nbconvert started from another
directory, jupyter_client's KernelManager started in the notebook's directory (the argv
launcher and the provisioner), and checks `open('../data/x.csv')`, the cwd and `..`; then
the starts that must be refused, with one line and no container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.connect import write_connection_file
from playwright.sync_api import Page, expect

from jupyter_docker_kernel import cli
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.settings import KernelSettings
from tests.conftest import OUR_LABEL, install_kernel
from tests.kernels import execute, running_kernel, start, stop, stream_text, wait_until
from tests.test_jupyterlab import (  # noqa: F401 - fixtures the browser test uses
    Lab,
    chromium,
    kernel_ids,
    lab,
    output_of,
    page,
    run_cell,
    shot,
    wait_idle,
)
from tests.test_pool import key_of, warm_ready

pytestmark = pytest.mark.docker

#: What the notebook prints: the data one level up, its cwd, what `..` holds, and a file
#: mounted by a {project} template.
PROBE = """\
import os
print(open('../data/x.csv').read().strip())
print(os.getcwd())
print(sorted(os.listdir('..')))
"""


def project(tmp_path: Path, *, git: bool = True) -> Path:
    """tmp/proj/{notebooks/analysis.ipynb, data/x.csv}, readable by the kernel's uid
    (65534 when the tests run as root); returns the notebooks directory."""
    proj = tmp_path / "proj"
    notebooks = proj / "notebooks"
    notebooks.mkdir(parents=True)
    (proj / "data").mkdir()
    (proj / "data" / "x.csv").write_text("a,b\n1,2\n")
    for path in (tmp_path, proj, notebooks, proj / "data"):
        path.chmod(0o777)
    if git:
        subprocess.run(["git", "init", "-q", str(proj)], check=True)
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    nb = new_nb(cells=[new_cell(PROBE)])  # type: ignore[no-untyped-call]
    nbformat.write(nb, notebooks / "analysis.ipynb")  # type: ignore[no-untyped-call]
    return notebooks


def expected(notebooks: Path, *more: str) -> str:
    names = sorted(["data", "notebooks", *more])
    return f"a,b\n1,2\n{notebooks}\n{names}\n"


def run_in_kernel(kernel: str, cwd: Path, code: str = PROBE) -> str:
    with running_kernel(kernel, str(cwd)) as (_km, kc):
        _, outputs = execute(kc, code)
    return stream_text(outputs)


def test_nbconvert_from_another_directory_reads_the_projects_data(
    kernel_image: str, tmp_path: Path
) -> None:
    """--workdir-root git: nbconvert run elsewhere; the kernel starts in the notebook's dir
    with the git work tree mounted, so ../data/x.csv reads."""
    install_kernel("jdk-test-root-git", kernel_image, "--workdir-root", "git")
    notebooks = project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = [
        str(Path(sys.executable).with_name("jupyter")),
        *("nbconvert", "--to", "notebook", "--execute"),
        "--ExecutePreprocessor.kernel_name=jdk-test-root-git",
        str(notebooks / "analysis.ipynb"),
        *("--output-dir", str(elsewhere), "--output", "out.ipynb"),
    ]

    proc = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, timeout=240)

    assert proc.returncode == 0, proc.stderr[-2000:]
    out = nbformat.read(elsewhere / "out.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    text = "".join(o.get("text", "") for o in out.cells[0].outputs)
    assert text == expected(notebooks, ".git")


def test_kernel_manager_in_the_notebooks_dir_sees_the_git_work_tree(
    kernel_image: str, tmp_path: Path
) -> None:
    """The argv launcher (kernel.json's argv, as VS Code runs it) with --workdir-root git."""
    install_kernel("jdk-test-root-git", kernel_image, "--workdir-root", "git")
    notebooks = project(tmp_path)
    assert run_in_kernel("jdk-test-root-git", notebooks) == expected(notebooks, ".git")


def test_provisioner_with_one_level_up_and_a_project_template_mount(
    kernel_image: str, tmp_path: Path
) -> None:
    """The provisioner (Jupyter Server, nbclient) with ..1 and --mount {project}/data:/data:ro:
    the template is filled in at this start, read-only."""
    install_kernel(
        "jdk-test-root-up",
        kernel_image,
        *("--workdir-root", "..1", "--mount", "{project}/data:/data:ro", "--provisioner"),
    )
    notebooks = project(tmp_path, git=False)
    code = PROBE + (
        "print(open('/data/x.csv').read().strip())\n"
        "try:\n    open('/data/new', 'w')\nexcept OSError as exc:\n    print(type(exc).__name__)\n"
    )
    out = run_in_kernel("jdk-test-root-up", notebooks, code)
    assert out == expected(notebooks) + "a,b\n1,2\nOSError\n"


def test_copy_workdir_with_a_fixed_root_copies_the_project(
    kernel_image: str, tmp_path: Path
) -> None:
    """--workdir-root PATH with --copy-workdir: the whole project is copied, the notebook's
    dir is the cwd inside the copy, and a write stays in the container."""
    notebooks = project(tmp_path, git=False)
    install_kernel(
        "jdk-test-root-path",
        kernel_image,
        *("--workdir-root", str(notebooks.parent), "--copy-workdir"),
    )
    code = PROBE + "open('../data/new.csv', 'w').write('x')\nprint('wrote')\n"
    assert run_in_kernel("jdk-test-root-path", notebooks, code) == expected(notebooks) + "wrote\n"
    assert not (notebooks.parent / "data" / "new.csv").exists()


def test_a_warm_kernel_gets_the_project_copied_and_starts_in_the_notebooks_dir(
    kernel_image: str, tmp_path: Path
) -> None:
    """--pool with --copy-workdir --workdir-root ..1: the claimed container gets the root's
    copy at its work dir and the notebook's directory below it as the cwd."""
    spec = install_kernel(
        "jdk-test-root-pool",
        kernel_image,
        *("--copy-workdir", "--workdir-root", "..1", "--pool", "1", "--pool-ttl", "120"),
    )
    notebooks = project(tmp_path, git=False)
    try:
        run_in_kernel("jdk-test-root-pool", notebooks, "1")  # starts the pool's refill
        wait_until(lambda: bool(warm_ready(key_of(spec))), 90)
        log = tmp_path / "launcher.log"
        with log.open("w") as stderr:
            km, kc = start("jdk-test-root-pool", str(notebooks), stderr=stderr)
        try:
            _, outputs = execute(kc, PROBE)
        finally:
            stop(km, kc)
        assert "started in warm container" in log.read_text()
        assert stream_text(outputs) == "a,b\n1,2\n/work/notebooks\n['data', 'notebooks']\n"
    finally:
        assert cli.main(["gc", "--pools"]) == 0
        wait_until(lambda: not warm_ready(key_of(spec)), 10)


# -- JupyterLab in Chromium: the server's root holds the project ----------------------------


@pytest.fixture
def kernel_name(kernel_image: str) -> str:
    """The kernelspec the `lab` fixture (test_jupyterlab.py) runs: --workdir-root git."""
    install_kernel("jdk-test-root-git", kernel_image, "--workdir-root", "git")
    return "jdk-test-root-git"


def test_jupyterlab_opens_a_notebook_in_a_project_and_reads_its_data(
    page: Page,  # noqa: F811 - test_jupyterlab's fixture, imported above
    lab: Lab,  # noqa: F811 - as page
    workdir: Path,
    kernel_name: str,
) -> None:
    """JupyterLab serving the directory above the project: the notebook in
    proj/notebooks runs in the container with the git work tree mounted."""
    notebooks = project(workdir)
    nb = nbformat.read(notebooks / "analysis.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "p", "language": "python"}
    nbformat.write(nb, notebooks / "analysis.ipynb")  # type: ignore[no-untyped-call]

    page.goto(f"{lab.url}/lab/tree/proj/notebooks/analysis.ipynb?token={lab.token}")
    wait_idle(page)
    assert len(kernel_ids(lab)) == 1, "idle before the server has the notebook's kernel"
    run_cell(page, 0)
    expect(output_of(page, 0)).to_contain_text("['.git', 'data', 'notebooks']")
    assert output_of(page, 0).inner_text().split("\n")[:3] == ["a,b", "1,2", str(notebooks)]
    shot(page, "project-layout")


# -- refusals: one line, no container -------------------------------------------------------


def containers_in(directory: Path) -> list[str]:
    """Our containers (any state) whose notebook dir is `directory`."""
    proc = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={OUR_LABEL}",
         "--filter", f"label=jupyter-docker-kernel.workdir={directory}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.split()


def launch(kernel_image: str, cwd: Path, tmp_path: Path, home: Path, **settings: str) -> str:
    """Run kernel.json's argv launcher as a client would; returns its stderr (it must fail)."""
    spec = KernelSettings(image=kernel_image, **settings)  # type: ignore[arg-type]
    connection, _ = write_connection_file(str(tmp_path / "kernel-x.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_docker_kernel.launcher",
         "--settings", json.dumps(spec.to_dict()), "-f", connection],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    return proc.stderr


def test_a_root_that_would_be_slash_is_refused_at_start(kernel_image: str, tmp_path: Path) -> None:
    notebooks = project(tmp_path, git=False)
    levels = f"..{len(notebooks.parts) - 1}"
    err = launch(kernel_image, notebooks, tmp_path, tmp_path, workdir_root=levels)
    assert (
        f"The project root / for the notebook in {notebooks} (--workdir-root) is the host's "
        "root directory: the kernel would see everything. No container was started."
    ) in err
    assert containers_in(notebooks) == []


def test_a_git_root_that_is_the_home_directory_is_refused_at_start(
    kernel_image: str, tmp_path: Path
) -> None:
    """A dotfiles repository: the home directory is a git work tree, the notebook is in it."""
    home = tmp_path / "home"
    notebooks = home / "analysis"
    notebooks.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(home)], check=True)
    err = launch(kernel_image, notebooks, tmp_path, home, workdir_root="git")
    assert (
        f"The project root {home} for the notebook in {notebooks} (--workdir-root) is your "
        "home directory itself"
    ) in err
    assert "No container was started" in err
    assert containers_in(notebooks) == []


def test_a_fixed_root_that_does_not_hold_the_notebook_is_refused_by_the_provisioner(
    kernel_image: str, tmp_path: Path
) -> None:
    notebooks = project(tmp_path, git=False)
    other = tmp_path / "other"
    other.mkdir()
    install_kernel(
        "jdk-test-root-other", kernel_image, "--workdir-root", str(other), "--provisioner"
    )
    with pytest.raises(LaunchError, match=f"{notebooks} is not inside the project root {other}"):
        start("jdk-test-root-other", str(notebooks))
    assert containers_in(notebooks) == []


@pytest.mark.parametrize(
    ("root", "why"),
    [("/usr", "covers /usr"), ("/", "is the host's root"), ("HOME", "is your home directory")],
)
def test_setup_refuses_a_fixed_root_it_can_judge_and_writes_nothing(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root: str,
    why: str,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    root = str(tmp_path) if root == "HOME" else root
    code = cli.main(["setup", "--name", "jdk-test-bad-root", "--user", "--workdir-root", root])
    err = capsys.readouterr().err
    assert code == 1
    assert f"--workdir-root {root} {why}" in err
    assert "No kernelspec was written" in err
    assert not (data_dir / "kernels" / "jdk-test-bad-root").exists()
