"""`grade ASSIGNMENT --node ssh://a --node ssh://b`: a class's kernels spread over remote nodes.

What runs where. Every worker (grade_worker: nbgrader's own autograde of one submission)
runs on THIS host, as without nodes, so nbgrader, the course and the one gradebook writer
stay here and a node needs nothing but its engine, the image and an sshd (issue 13's
nodes). Only the worker's kernel runs on a node: its container is started there by
node_backend.SshBackend, the same way as any kernel of a node kernelspec. To send one
submission's kernel to one chosen node, the worker is given a private copy of the course's
kernelspec whose settings name only that node (engine_host and nodes), first on its
JUPYTER_PATH (`shadow_kernelspecs`): nbclient finds the kernel by name as always, and
both adapters (argv launcher, provisioner) read the settings from that kernel.json.

Who calls what: cli.cmd_grade, after grade.plan, calls `prepare(plan, urls, make_runner)`
(make_runner: grade.LocalRunner with an environment for its workers). It finds
the course's kernels (`course_kernels`: nbgrader's configured kernel_name, else each
notebook's kernelspec as the gradebook keeps it, which nbgrader's OverwriteKernelspec
uses), takes the nodes given or, without --node, those of the course's node kernelspec,
asks every node at once how many CPUs its engine has (`ask_nodes`: `docker info`'s NCPU,
and whether the image is there), skips a node that does not answer (cli prints one line
each) and raises a DockerKernelError when none does (before anything is written). The
NodeRunner it returns is a grade.Runner: `start` gives each submission to the node whose
slots are the least taken (a node's slots: its CPUs), through that node's own local
runner (make_runner with the node's JUPYTER_PATH for its workers). A slot is
free again once grade_class has seen its worker end (`poll`), which is when grade_class
frees its own place, so the sum of the slots is the `jobs` grade_class is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import kernelspec
from jupyter_docker_kernel.errors import DockerKernelError, EngineError
from jupyter_docker_kernel.grade import Job, Plan, Runner
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.ssh import Connection

#: Seconds the question to a node may take once connected; then it is skipped for the run.
ASK_TIMEOUT = 15.0
#: Asked of every node: its engine's CPUs, then each of the kernels' images ("$@") it lacks.
_ASK_SCRIPT = (
    'docker info --format "{{.NCPU}}" || exit 1; for i in "$@"; do '
    'docker image inspect --format "{{.Id}}" "$i" >/dev/null 2>&1 || echo "$i"; done'
)


@dataclass(frozen=True)
class NodeAnswer:
    """What one node said: its CPUs (its slots), or why it is skipped (error)."""

    url: str
    cpus: int = 0
    error: str = ""

    @property
    def why(self) -> str:
        """The error, naming the node once (ssh's own errors name it already)."""
        return self.error if self.url in self.error else f"{self.url}: {self.error}"


def parse_answer(url: str, code: int, stdout: str, stderr: str) -> NodeAnswer:
    """_ASK_SCRIPT's output as a NodeAnswer (pure): the CPUs, then the missing images."""
    lines = stdout.split()
    if code != 0 or not lines or not lines[0].isdigit() or int(lines[0]) < 1:
        said = stderr.strip().splitlines()
        return NodeAnswer(url, error=f"its engine does not answer ({said[-1] if said else code})")
    if lines[1:]:
        return NodeAnswer(
            url,
            error=f"it has no image {lines[1]} (run `jupyter-docker-kernel image push {url} "
            f"--tag {lines[1]}`)",
        )
    return NodeAnswer(url, int(lines[0]))


def ask_node(url: str, images: Sequence[str], environ: Mapping[str, str] | None) -> NodeAnswer:
    """Ask one node through its SSH connection (the master its kernels then reuse)."""
    try:
        proc = Connection.to(url, environ).run(
            ["sh", "-c", _ASK_SCRIPT, "sh", *images], timeout=ASK_TIMEOUT, check=False
        )
    except DockerKernelError as exc:
        return NodeAnswer(url, error=exc.what)
    except (OSError, subprocess.SubprocessError) as exc:
        return NodeAnswer(url, error=str(exc) or type(exc).__name__)
    return parse_answer(
        url, proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")
    )


def ask_nodes(
    urls: Sequence[str],
    images: Sequence[str],
    environ: Mapping[str, str] | None = None,
    ask: Callable[[str, Sequence[str], Mapping[str, str] | None], NodeAnswer] = ask_node,
) -> list[NodeAnswer]:
    """Every node asked at once. Each ask is bounded by ssh's own timeouts (connect
    ssh.CONNECT_TIMEOUT, the command ASK_TIMEOUT), and every thread is joined before this
    returns: the parent forks its workers next, which must not happen while a thread of
    ours still runs (ForkRunner)."""
    results: dict[str, NodeAnswer] = {}

    def one(url: str) -> None:
        results[url] = ask(url, images, environ)

    threads = [threading.Thread(target=one, args=(url,), daemon=True) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results.get(url) or NodeAnswer(url, error="no answer") for url in urls]


# -- the course's kernels and their copies per node --------------------------------------------


def course_kernels(plan: Plan) -> list[str]:
    """The kernel names nbgrader's autograde will start for this assignment: the
    configured ExecutePreprocessor/Execute kernel_name, else each notebook's kernelspec as
    the gradebook keeps it (what nbgrader's OverwriteKernelspec puts in the submission)."""
    from nbgrader.api import Gradebook
    from nbgrader.apps.autogradeapp import AutogradeApp
    from nbgrader.preprocessors import Execute

    app = AutogradeApp()
    app.initialize([plan.assignment, *plan.nbgrader_args])
    configured = str(Execute(config=app.config).kernel_name or "")
    if configured:
        return [configured]
    names: list[str] = []
    with Gradebook(plan.db_url, plan.course_id) as gb:
        for notebook in gb.find_assignment(plan.assignment).notebooks:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                name = str(json.loads(notebook.kernelspec or "{}").get("name") or "")
                if name and name not in names:
                    names.append(name)
    return names


def our_spec(name: str) -> tuple[Path, KernelSettings] | None:
    """The spec dir Jupyter uses for `name` and its settings, when it is one of ours."""
    path = kernelspec.find_ours().get(name.lower())
    if path is None:
        return None
    data = json.loads((path / "kernel.json").read_text())
    return path, kernelspec.settings_from_kernel_json(data)


def spec_nodes(settings: KernelSettings) -> list[str]:
    """The nodes a kernelspec runs its kernels on ([] for a kernelspec of this host)."""
    if settings.nodes:
        return list(settings.nodes)
    host = settings.engine_host or ""
    return [host] if host.startswith("ssh://") else []


def for_node(settings: KernelSettings, url: str, name: str) -> KernelSettings:
    """The settings of `name` with its kernels pinned to the node at url; a DockerKernelError
    for what a node cannot do (this host's directories mounted)."""
    if settings.workdir == "mount" or settings.mounts:
        raise DockerKernelError(
            f"the kernel {name} mounts directories of this host, which a node does not see",
            "Nothing was graded",
            f"Run `jupyter-docker-kernel setup --name {name} --for-nbgrader` (it copies the "
            "submission's directory to the kernel) without --mount, then grade again.",
        )
    try:
        return replace(settings, engine_host=url, nodes=(url,))
    except DockerKernelError as exc:  # the address (the settings' own check says how)
        raise exc.instead("Nothing was graded") from None


def shadow_kernelspecs(
    specs: Mapping[str, tuple[Path, KernelSettings]], url: str, into: Path
) -> Path:
    """A Jupyter data dir at `into` whose kernels/NAME is each spec copied with its settings
    pinned to the node at url; put first on a worker's JUPYTER_PATH, Jupyter finds these
    before the user's own."""
    for name, (path, settings) in specs.items():
        target = into / "kernels" / name
        shutil.copytree(path, target, symlinks=True)
        data: dict[str, Any] = json.loads((target / "kernel.json").read_text())
        if not isinstance(data.get("env"), dict):
            raise DockerKernelError(
                f"the kernelspec {name} ({path}) is of an earlier version",
                "Nothing was graded",
                "Run `jupyter-docker-kernel upgrade`, then grade again.",
            )
        pinned = for_node(settings, url, name)
        data["env"][kernelspec.SETTINGS_ENV] = kernelspec.settings_argument(pinned)
        (target / "kernel.json").write_text(json.dumps(data, indent=1))
    return into


# -- the runner -------------------------------------------------------------------------------


class SlotJob:
    """A worker holding one of its node's slots until grade_class sees it end."""

    def __init__(self, job: Job, free: Callable[[], None]) -> None:
        self.job = job
        self._free: Callable[[], None] | None = free

    def poll(self) -> int | None:
        code = self.job.poll()
        if code is not None and self._free is not None:
            self._free()
            self._free = None
        return code

    def stop(self) -> None:
        self.job.stop()

    def kill(self) -> None:
        self.job.kill()


@dataclass
class NodeRunner:
    """Workers of this host whose kernels run on nodes (see the module docstring)."""

    #: Per node: its slots (CPUs) and the runner whose workers' kernels go there.
    slots: dict[str, int]
    runners: dict[str, Runner]
    busy: dict[str, int] = field(default_factory=dict)
    #: Where each student's kernel was sent (for --json).
    placed: dict[str, str] = field(default_factory=dict)

    @property
    def capacity(self) -> int:
        return sum(self.slots.values())

    def pick(self) -> str:
        """The node whose slots are the least taken (as a share of its CPUs), then the one
        with the most free, then the first given: a class spreads over all nodes at once."""
        free = [url for url, n in self.slots.items() if self.busy.get(url, 0) < n]
        if not free:
            raise RuntimeError("every node's slots are taken")  # grade_class asks no more
        return min(
            free,
            key=lambda u: (
                self.busy.get(u, 0) / self.slots[u],
                self.busy.get(u, 0) - self.slots[u],
            ),
        )

    def start(self, student: str, into: Path) -> Job:
        url = self.pick()
        job = self.runners[url].start(student, into)
        self.busy[url] = self.busy.get(url, 0) + 1
        self.placed[student] = url

        def free() -> None:
            self.busy[url] -= 1

        return SlotJob(job, free)


@dataclass
class Prepared:
    """What prepare() found: the runner, the nodes used, the ones skipped (and why)."""

    runner: NodeRunner
    used: list[NodeAnswer]
    skipped: list[NodeAnswer]
    #: The private dir of the kernelspec copies; cleanup() removes it.
    scratch: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def prepare(
    plan: Plan,
    urls: Sequence[str],
    make_runner: Callable[[Plan, dict[str, str]], Runner],
    environ: Mapping[str, str] | None = None,
) -> Prepared | None:
    """The NodeRunner for this class, or None when it is graded on this host alone (no
    --node and the course's kernel is not a node kernelspec). make_runner(plan, env) is
    the local runner whose workers get env (grade.LocalRunner). DockerKernelError, with
    nothing written, when the course's kernel cannot go to a node or no node answers."""
    specs: dict[str, tuple[Path, KernelSettings]] = {}
    for name in course_kernels(plan):
        found = our_spec(name)
        if found is not None:
            specs[name] = found
    urls = list(dict.fromkeys(urls or [u for _, s in specs.values() for u in spec_nodes(s)]))
    if not urls:
        return None
    if not specs:
        raise DockerKernelError(
            f"{plan.assignment}'s kernel is not a jupyter-docker-kernel kernelspec, so it "
            "cannot run on a node",
            "Nothing was graded",
            "Set c.ExecutePreprocessor.kernel_name in nbgrader_config.py to a kernelspec of "
            "ours (`jupyter-docker-kernel setup --for-nbgrader`).",
        )
    for name, (_, settings) in specs.items():
        for url in urls:  # a bad address, or what no node can do, before asking any
            for_node(settings, url, name)
    images = sorted({s.image for _, s in specs.values()})
    answers = ask_nodes(urls, images, environ)
    used = [a for a in answers if not a.error]
    skipped = [a for a in answers if a.error]
    if not used:
        raise EngineError(
            "none of the nodes answers: " + "; ".join(a.why for a in skipped),
            "Nothing was graded",
            "`jupyter-docker-kernel doctor` checks each node; or grade here without --node.",
        )
    scratch = Path(tempfile.mkdtemp(prefix="jdk-grade-nodes-"))
    try:
        runners: dict[str, Runner] = {}
        for index, answer in enumerate(used):
            data = shadow_kernelspecs(specs, answer.url, scratch / str(index))
            path = os.pathsep.join(p for p in (str(data), os.environ.get("JUPYTER_PATH")) if p)
            runners[answer.url] = make_runner(plan, {"JUPYTER_PATH": path})
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    runner = NodeRunner({a.url: a.cpus for a in used}, runners)
    return Prepared(runner, used, skipped, scratch)
