"""JupyterLab on localhost, driven by a real headless Chromium through Playwright.

The user's story: a notebook whose kernelspec is ours opens in JupyterLab, its cells run in
the container, a long cell is interrupted from the toolbar, the kernel is restarted from the
toolbar (a new container, the old state gone) and a matplotlib plot renders as an image.
The Kernel Usage panel (jupyter-resource-usage) shows the container's limits.
Screenshots of each step land in the artifacts directory (ARTIFACTS, printed by the test).

The browser is the system Chromium (scripts/bootstrap-browser installs it; JDK_CHROMIUM
overrides the path); Playwright's own browser downloads are not used.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from jupyter_docker_kernel.settings import KernelSettings, size_bytes
from tests.conftest import install_kernel, not_here
from tests.courses import containers_for
from tests.kernels import free_port, wait_until
from tests.test_notebooks import assert_no_container_left

pytestmark = pytest.mark.docker

#: Screenshots go here (ignored by git); CI keeps the directory as the run's artifacts.
ARTIFACTS = Path(
    os.environ.get("JDK_TEST_ARTIFACTS") or Path(__file__).parents[1] / "test-artifacts"
)
CHROMIUM = os.environ.get("JDK_CHROMIUM", "/usr/bin/chromium")
#: --disable-background-networking and friends: this machine's network refuses outgoing
#: connections, and a browser in a test has no business making them anyway.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Generous: two shared cores, a cold JupyterLab bundle and a container start per kernel.
UI_TIMEOUT_MS = 60_000

CELLS = [
    'import os, socket\nmarker = "set before the restart"\n'
    'print(f"host={socket.gethostname()} uid={os.getuid()}")',
    "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
    'print("marker" in globals())',
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 2, 3, 4], [1, 4, 9, 16], marker='o')\n"
    "plt.title('plotted in the container')\nplt.show()",
]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab server: where it listens and the token it wants."""

    url: str
    token: str

    def api(self, path: str, method: str = "GET") -> object:
        """Call the server's REST API (`/api/<path>`) with the token; the decoded JSON reply."""
        # S310: the URL is always our own http://127.0.0.1 server, never user input.
        headers = {"Authorization": f"token {self.token}"}
        url = f"{self.url}/api/{path}"
        request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = response.read()
        return json.loads(body) if body else None


def session_alive(sid: int) -> bool:
    """Whether any process still belongs to session `sid`."""
    try:
        os.killpg(sid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def chromium() -> str:
    """The system Chromium; fails under CI, skips elsewhere, when it is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        not_here(f"no Chromium at {CHROMIUM} (scripts/bootstrap-browser installs it)", "browser")
    return CHROMIUM


@pytest.fixture
def lab(workdir: Path, kernel_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """`jupyter lab` serving workdir on a free loopback port; stopped (kernels too) after."""
    # A config dir of its own: the news prompt's plugin is off, so no toast covers the
    # screenshots and no news request is ever offered.
    config = tmp_path_factory.mktemp("lab-config")
    (config / "labconfig").mkdir()
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    token = secrets.token_hex(16)
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("jupyter")),
        "lab",
        "--no-browser",
        f"--ServerApp.token={token}",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={workdir}",
        # No news or update checks: the test must not reach beyond loopback.
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (config / "jupyter-lab.log").open("w")
    # A session of its own: teardown signals the server and nothing else.
    server = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(config)},
        start_new_session=True,
    )
    found = Lab(url=f"http://127.0.0.1:{port}", token=token)
    try:

        def answers() -> bool:
            assert server.poll() is None, f"jupyter lab exited with {server.returncode}"
            try:
                found.api("status")
            except OSError:
                return False
            return True

        wait_until(answers, timeout=60, interval=0.25)
        yield found
    finally:
        # SIGTERM: the server shuts its kernels down (our launchers remove the containers).
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        # Nothing of the server's session is left (kernel launchers included).
        wait_until(lambda: not session_alive(server.pid), timeout=30)
        log.close()
        print(f"jupyter lab log: {log.name}")
        print(Path(log.name).read_text()[-4000:])


@pytest.fixture
def page(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A page in a headless system Chromium with a fresh profile; the browser is closed after."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
    # Every Chromium process names its profile dir on its command line.
    wait_until(lambda: not processes_mentioning(str(profile)), timeout=10)


def processes_mentioning(text: str) -> list[int]:
    """Pids of processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def write_notebook(path: Path, kernel_name: str, cells: list[str] = CELLS) -> None:
    """A notebook with `cells` whose metadata names our kernelspec, as `setup` users get."""
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    nb = new_nb(  # type: ignore[no-untyped-call]
        cells=[new_cell(source) for source in cells],  # type: ignore[no-untyped-call]
        metadata={
            "kernelspec": {"name": kernel_name, "display_name": kernel_name, "language": "python"}
        },
    )
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]


def shot(page: Page, name: str) -> Path:
    """Save a screenshot of the whole page as an artifact; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"jupyterlab-{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def run_cell(page: Page, index: int) -> None:
    """Select cell `index` in command mode and run it with Shift+Enter, as a user would."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")


def output_of(page: Page, index: int) -> Locator:
    """The output area of cell `index`."""
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output")


def wait_idle(page: Page) -> None:
    """The notebook's kernel is connected and idle: the status bar's kernel item reads
    "| Idle", and so does the toolbar's execution indicator.

    Not the indicator alone: it starts at data-status="idle" before the notebook has a
    kernel (JupyterLab 4.6 seeds its state with "idle" and updates it only on status
    events), so it read idle before the server had even started the kernel in 3 of 4 runs
    under load. A Shift+Enter then finds no kernel and JupyterLab silently clears the run:
    the cell's output never appears. The status bar item shows the session's
    kernelDisplayStatus, which is "idle" only once the kernel's websocket is connected and
    the kernel said idle.
    """
    kernel = page.locator(".jp-StatusBar-TextItem[title^='Change kernel for']")
    expect(kernel).to_contain_text("| Idle", timeout=UI_TIMEOUT_MS)
    expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
        "data-status", "idle", timeout=UI_TIMEOUT_MS
    )


def kernel_ids(lab: Lab) -> list[str]:
    kernels = lab.api("kernels")
    assert isinstance(kernels, list)
    return [str(k["id"]) for k in kernels]


def test_jupyterlab_runs_interrupts_restarts_and_plots_in_the_container(
    page: Page, lab: Lab, workdir: Path, kernel_name: str
) -> None:
    """In JupyterLab in Chromium: a cell runs in the container, sleep(60) is interrupted,
    a restart gives a fresh container without the old state, and a plot renders as <img>."""
    started = time.monotonic()
    write_notebook(workdir / "clients.ipynb", kernel_name)

    page.goto(f"{lab.url}/lab/tree/clients.ipynb?token={lab.token}")
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(len(CELLS))
    wait_idle(page)
    (kernel_id,) = kernel_ids(lab)  # idle means the kernel is there, not about to be
    (first_container,) = containers_for(workdir)

    run_cell(page, 0)
    expect(output_of(page, 0)).to_contain_text("host=kernel uid=")
    shot(page, "1-ran-in-container")

    run_cell(page, 1)
    expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute("data-status", "busy")
    expect(output_of(page, 1).first).to_contain_text("sleeping")  # interrupting sooner aborts it
    interrupt_at = time.monotonic()
    page.locator("[data-command='notebook:interrupt-kernel']").first.click()
    expect(output_of(page, 1).last).to_contain_text("KeyboardInterrupt")  # after "sleeping"
    wait_idle(page)
    interrupted_in = time.monotonic() - interrupt_at
    shot(page, "2-interrupted")
    assert interrupted_in < 30, f"the interrupt took {interrupted_in:.1f} s"
    print(f"interrupt click to KeyboardInterrupt shown and idle: {interrupted_in:.1f} s")

    restart_at = time.monotonic()
    page.locator("[data-command='notebook:restart-kernel']").first.click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    wait_until(lambda: set(containers_for(workdir)) - {first_container}, timeout=60)
    wait_idle(page)
    wait_until(lambda: first_container not in containers_for(workdir), timeout=30)
    print(f"restart click to idle in a new container: {time.monotonic() - restart_at:.1f} s")
    run_cell(page, 2)
    expect(output_of(page, 2)).to_have_text("False")
    assert kernel_ids(lab) == [kernel_id], "a restart keeps the kernel, in a new container"
    shot(page, "3-restarted")

    run_cell(page, 3)
    image = output_of(page, 3).locator("img")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.naturalWidth") > 100
    image.scroll_into_view_if_needed()
    print(f"screenshot of the plot: {shot(page, '4-plot')}")

    lab.api(f"kernels/{kernel_id}", method="DELETE")
    assert_no_container_left(workdir, within=30)
    print(f"browser story took {time.monotonic() - started:.1f} s")


def test_kernel_usage_panel_shows_the_containers_memory_limit_and_cpus(
    page: Page, lab: Lab, workdir: Path, kernel_name: str
) -> None:
    """The Kernel Usage side panel (jupyter-resource-usage, fed by usage_request) shows the
    container's --memory as total and its --cpus, not the host's 24 GiB and cores."""
    defaults = KernelSettings()  # kernel_name's spec has the default limits
    total = f"{size_bytes(defaults.memory) / (1 << 30):.2f} GB"  # the panel's format
    cpus = f"{defaults.cpus:g} CPU" + ("" if defaults.cpus == 1 else "s")
    write_notebook(workdir / "usage.ipynb", kernel_name)

    page.goto(f"{lab.url}/lab/tree/usage.ipynb?token={lab.token}")
    wait_idle(page)
    page.locator(".jp-SideBar [data-id='kernelusage-panel-id']").click()
    panel = page.locator("#kernelusage-panel-id")
    # Its first reply has no CPU share (nothing sampled yet); it asks again every 5 s.
    expect(panel).to_contain_text(f"used on {cpus}")
    expect(panel.locator(".jp-KernelUsage-separator", has_text="Total:")).to_have_text(
        f"Total: {total}"
    )
    print(f"Kernel Usage panel:\n{panel.inner_text()}")
    shot(page, "usage-panel")


def test_an_oom_kill_says_why_in_the_notebook(
    page: Page, lab: Lab, workdir: Path, kernel_image: str
) -> None:
    """A cell that allocates past --memory 256m: the kernel is killed, and the cell's
    output in JupyterLab says so, with the limit, before the server restarts the kernel
    (the server's log alone used to say why)."""
    install_kernel("jdk-test-lab-oom", kernel_image, "--memory", "256m")
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))"
    write_notebook(workdir / "oom.ipynb", "jdk-test-lab-oom", [bomb])

    page.goto(f"{lab.url}/lab/tree/oom.ipynb?token={lab.token}")
    wait_idle(page)
    prompt = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt")
    for _ in range(3):  # a Shift+Enter right after the page settles is sometimes lost
        run_cell(page, 0)
        try:
            expect(prompt).to_contain_text("[*]", timeout=10_000)
            break
        except AssertionError:
            continue
    expect(output_of(page, 0)).to_contain_text("Kernel stopped: out of memory (limit 256 MiB)")
    print(f"the cell's output: {output_of(page, 0).first.inner_text()}")
    shot(page, "oom-notice")
