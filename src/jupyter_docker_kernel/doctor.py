"""`doctor`: checks that a kernel can start here, each with a verdict and the fix.

cli.py calls run_checks() and prints the Report (or its JSON). The checks go from the
bottom up (engine CLI, engine, runtimes, the private runtime dir) and then per kernelspec
(launcher Python, mounts, image, and one real probe container). A check that cannot run
because an earlier one failed is SKIP, not FAIL, so the first FAIL is the one to fix.

The probe is setup's (readiness.probe): the kernel's container created from its real
`docker run` arguments, every limit, mount, env, network and docker arg included, with a
few lines of Python as its kernel that import ipykernel, report uid, capabilities and
network, and bind a unix socket the host connects to, the path every kernel's five
channels take. The hardening WARN lists readiness.loosenings, the warnings setup prints.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jupyter_docker_kernel import manage, readiness
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.hostpython import SAFE_PATH_PREFIX
from jupyter_docker_kernel.rundir import runtime_base_choice
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
#: A probe's verdicts: (check, status, detail, fix, seconds) for 'kernel' and 'sockets'.
ProbeResult = list[tuple[str, Status, str, str, float]]


@dataclass(frozen=True)
class Check:
    """One verdict: what was checked, what was found, and how to fix a FAIL or WARN."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix or None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Report:
    """All checks of one doctor run, in the order they ran."""

    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in ("OK", "WARN", "FAIL", "SKIP")}
        for c in self.checks:
            out[c.status] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "seconds": round(self.seconds, 3),
            "checks": [c.to_json() for c in self.checks],
        }


def format_report(report: Report) -> list[str]:
    """Human lines: 'STATUS  name: detail', a 'fix:' line under FAIL/WARN, a summary."""
    lines: list[str] = []
    for c in report.checks:
        lines.append(f"{c.status:<4}  {c.name}: {c.detail}")
        if c.fix and c.status in ("FAIL", "WARN"):
            lines.append(f"      fix: {c.fix}")
    counts = report.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = "ready" if report.ok else "NOT ready"
    lines.append(f"{verdict}: {summary} ({len(report.checks)} checks in {report.seconds:.1f} s)")
    return lines


@contextlib.contextmanager
def _timed(out: list[Check]) -> Iterator[Callable[..., None]]:
    """Collect checks, stamping each with the time since the previous one."""
    start = time.monotonic()

    def add(name: str, status: Status, detail: str, fix: str = "") -> None:
        nonlocal start
        now = time.monotonic()
        out.append(Check(name, status, detail, fix, now - start))
        start = now

    yield add


def run_checks(engine: Engine, name: str | None = None, *, probe: bool = True) -> Report:
    """Run every check (for one kernelspec if named, else all of ours); never raises ours.

    A named spec that does not exist or is not ours is the caller's error: manage.find
    raises, and nothing is checked.
    """
    started = time.monotonic()
    _launcher_problem.cache_clear()
    specs = [manage.find(name)] if name else manage.list_specs(None)[0]
    report = Report()
    with _timed(report.checks) as add:
        if _check_path(engine, add) == "broker":
            if probe and report.ok:
                _probe_through_broker(specs, add)
            report.seconds = time.monotonic() - started
            return report
        info = _check_engine(engine, add)
        runtimes = _check_runtimes(info, specs, add)
        base = _check_runtime_dir(add)
        if not specs:
            add(
                "kernelspecs",
                "WARN",
                "none of ours is installed",
                "jupyter-docker-kernel setup --name NAME --user",
            )
        # Probe containers start as soon as a spec needs one and run side by side (one per
        # distinct key); their two lines are slotted in after the spec's other checks.
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures: dict[tuple[Any, ...], Future[ProbeResult]] = {}
            slots: list[tuple[int, str, tuple[Any, ...], bool]] = []
            for spec in specs:
                wanted = _check_spec(engine, spec, info, runtimes, base, probe, add)
                if wanted is None or base is None:
                    continue
                key, settings = wanted
                first = key not in futures
                if first:
                    futures[key] = pool.submit(_probe_safely, engine, settings, base)
                slots.append((len(report.checks), spec.name, key, first))
            for index, label, key, first in reversed(slots):
                result = futures[key].result()
                note = "" if first else " (same probe as above)"
                report.checks[index:index] = [
                    Check(f"{label}: {name}", status, detail + note, fix, seconds if first else 0)
                    for name, status, detail, fix, seconds in result
                ]
    report.seconds = time.monotonic() - started
    return report


def _probe_through_broker(specs: list[manage.SpecInfo], add: Callable[..., None]) -> None:
    """On the broker path the engine is not ours to ask: each kernelspec's probe is a real
    kernel started through the broker (broker_client.probe), which checks the policy and
    the image together. Kubernetes and node kernelspecs do not go through the broker."""
    from jupyter_docker_kernel import broker_client

    for spec in specs:
        settings = spec.settings
        if settings is None:
            add(f"{spec.name}: kernelspec", "FAIL", f"{spec.path}: {spec.error}")
            continue
        add(f"{spec.name}: kernelspec", "OK", f"{spec.path} (image {settings.image})")
        if settings.kube_namespace is not None or settings.nodes:
            continue
        found = broker_client.probe(settings)
        add(f"{spec.name}: kernel", "OK" if found.ok else "FAIL", found.detail, found.fix)


def _check_path(engine: Engine, add: Callable[..., None]) -> str:
    """Which path this user's kernels take (the engine, or the root broker) and why; for
    the broker, whether it answers (the engine's checks are the broker admin's:
    doctor --broker)."""
    from jupyter_docker_kernel import broker_client

    path, why = broker_client.choice(engine)
    add("kernel path", "OK", f"{path}: {why}")
    if path == "broker":
        socket_path = broker_client.broker_socket()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(socket_path)
            add("broker", "OK", f"{socket_path} answers")
        except OSError as exc:
            add(
                "broker",
                "FAIL",
                f"cannot connect to {socket_path}: {exc.strerror or exc}",
                "ask the admin to start the broker and add you to its group "
                "(jupyter-kernels); 'jupyter-docker-kernel doctor --broker' as root checks it",
            )
    return path


def broker_checks(engine: Engine, policy_path: str | None = None) -> Report:
    """`doctor --broker` (the admin's): the policy file, its images and runtime in the
    engine, the group, the socket and the kernels' state dir."""
    import grp

    from jupyter_docker_kernel import broker, broker_client, broker_policy

    started = time.monotonic()
    report = Report()
    path = policy_path or broker_policy.DEFAULT_POLICY
    with _timed(report.checks) as add:
        try:
            policy = broker.load_policy(path)
        except DockerKernelError as exc:
            add("broker policy", "FAIL", exc.what, exc.fix or "fix the file")
            report.seconds = time.monotonic() - started
            return report
        add("broker policy", "OK", f"{path}: {policy.describe()}")
        info = _check_engine(engine, add)
        if info is not None:
            for image in policy.images:
                found = engine.image_inspect(image)
                add(
                    f"image {image}",
                    "OK" if found else "FAIL",
                    "present" if found else "not in the engine",
                    f"build or load it as root ('{engine.command} images' lists them)",
                )
            if policy.runtime:
                known = set((info.get("Runtimes") or {}).keys())
                ok = policy.runtime in known
                add(
                    f"runtime {policy.runtime}",
                    "OK" if ok else "FAIL",
                    "registered" if ok else f"not registered (known: {', '.join(sorted(known))})",
                    "scripts/bootstrap-engine --runsc registers gVisor",
                )
        group = broker_policy.DEFAULT_GROUP
        try:
            members = grp.getgrnam(group).gr_mem
            add("group", "OK", f"{group}: {', '.join(members) or 'no members'}")
        except KeyError:
            add(
                "group",
                "FAIL",
                f"{group} does not exist",
                f"groupadd {group}; usermod -aG {group} USER",
            )
        socket_path = broker_client.broker_socket()
        try:
            st = os.stat(socket_path)
            mode = st.st_mode & 0o777
            status: Status = "OK" if st.st_uid == 0 and not mode & 0o007 else "FAIL"
            add(
                "broker socket",
                status,
                f"{socket_path} (mode {mode:o}, uid {st.st_uid}, gid {st.st_gid})",
                "restart the broker: it makes the socket root's, 0660, its group's",
            )
        except OSError:
            add(
                "broker socket",
                "WARN",
                f"no socket at {socket_path}: the broker is not running",
                "systemctl enable --now jupyter-docker-kernel-broker.socket, or scripts/broker",
            )
    report.seconds = time.monotonic() - started
    return report


def _check_engine(engine: Engine, add: Callable[..., None]) -> dict[str, Any] | None:
    """The engine CLI on PATH, then the engine answering; returns `docker info` or None."""
    path = shutil.which(engine.command)
    if path is None:
        add(
            "engine CLI",
            "FAIL",
            f"'{engine.command}' is not on PATH",
            "install Docker (on Debian as root: scripts/bootstrap-engine), or set "
            "JUPYTER_DOCKER_KERNEL_ENGINE to a Docker-compatible CLI",
        )
        add("engine", "SKIP", "no engine CLI")
        return None
    add("engine CLI", "OK", path)
    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        info = engine.info(timeout=30)
    except DockerKernelError as exc:
        add(
            "engine",
            "FAIL",
            exc.what,
            exc.fix
            or f"start the engine (as root: scripts/bootstrap-engine) or point DOCKER_HOST at "
            f"one that runs; '{engine.command} info' shows what is wrong",
        )
        return None
    add(
        "engine",
        "OK",
        f"{engine.command} {info.get('ServerVersion', '?')} at {where} "
        f"(cgroup v{info.get('CgroupVersion', '?')}, {info.get('NCPU', '?')} CPUs)",
    )
    return info


def _check_runtimes(
    info: dict[str, Any] | None, specs: list[manage.SpecInfo], add: Callable[..., None]
) -> set[str]:
    """The engine's default runtime plus every runtime one of the specs asks for."""
    if info is None:
        add("runtimes", "SKIP", "engine unreachable")
        return set()
    known = set((info.get("Runtimes") or {}).keys())
    default = str(info.get("DefaultRuntime") or "runc")
    wanted: dict[str, list[str]] = {default: []}
    for spec in specs:
        if spec.settings and spec.settings.runtime:
            wanted.setdefault(spec.settings.runtime, []).append(spec.name)
    for runtime, users in wanted.items():
        by = f"asked for by {', '.join(users)}" if users else "the engine's default"
        if runtime in known:
            add(f"runtime {runtime}", "OK", f"registered ({by})")
        else:
            add(
                f"runtime {runtime}",
                "FAIL",
                f"not registered, but {by} (the engine has: {', '.join(sorted(known))})",
                "register it in /etc/docker/daemon.json and restart the engine "
                "(scripts/bootstrap-engine --runsc does this for gVisor)",
            )
    return known


def _check_runtime_dir(add: Callable[..., None]) -> Path | None:
    """The launcher's private dir for kernel sockets: creatable, ours, mode 0700; WARN when
    the usual place is taken and kernels use a fallback (rundir.runtime_base_choice)."""
    try:
        base, why = runtime_base_choice()
    except DockerKernelError as exc:
        add(
            "runtime dir",
            "FAIL",
            exc.what,
            exc.fix or "remove it, or set XDG_RUNTIME_DIR to a private directory of yours",
        )
        return None
    mode = base.stat().st_mode & 0o777
    detail = f"{base} (owner uid {os.getuid()}, mode {mode:04o})"
    if why:
        add(
            "runtime dir",
            "WARN",
            f"{why}; kernels use {detail}",
            "kernels still start; to use the usual place, have its owner (or root) remove "
            "it, or set XDG_RUNTIME_DIR to a private directory of yours",
        )
        return base
    add("runtime dir", "OK", detail)
    return base


def engine_of(engine: Engine, settings: KernelSettings) -> Engine:
    """The engine a kernelspec's kernels run in: its own engine_host (Podman's, say),
    else the one doctor was started with."""
    if settings.engine_host and settings.engine_host != engine.host:
        return Engine(engine.command, host=settings.engine_host)
    return engine


def _check_spec(
    engine: Engine,
    spec: manage.SpecInfo,
    info: dict[str, Any] | None,
    runtimes: set[str],
    base: Path | None,
    probe: bool,
    add: Callable[..., None],
) -> tuple[tuple[Any, ...], KernelSettings] | None:
    """Per kernelspec: settings, launcher, mounts, image; returns (probe key, settings)
    when a probe container should run for it (run_checks runs it)."""
    label = spec.name
    settings = spec.settings
    if settings is None:
        add(
            f"{label}: kernelspec",
            "FAIL",
            f"{spec.path}: {spec.error}",
            f"jupyter-docker-kernel setup --name {label} --replace --reset ... (rewrite it), "
            f"or jupyter-docker-kernel remove {label}",
        )
        return None
    add(f"{label}: kernelspec", "OK", f"{spec.path} (image {settings.image})")
    if settings.kube_namespace is not None:
        _check_kube(label, settings, add)
        return None  # its image runs on the cluster's nodes: no local probe
    engine = engine_of(engine, settings)
    _check_launcher(spec, add)
    _check_client(spec, add)
    # The image's PATH (when the engine answers) names a mount that hides its Python, as
    # setup's check does; the image check below reports the lookup's own failure.
    image: dict[str, Any] | None = None
    lookup: DockerKernelError | None = None
    if info is not None:
        try:
            image = engine.image_inspect(settings.image)
        except DockerKernelError as exc:
            lookup = exc
    loosened = readiness.loosenings(
        settings,
        engine_sockets=readiness.engine_sockets(engine),
        image_path=readiness.image_path(image or {}, settings) if image else (),
        resolve=os.path.realpath,
    )
    if loosened:
        forced = any(f.refused for f in loosened)
        add(
            f"{label}: hardening",
            "WARN",
            "; ".join(f.message for f in loosened),
            f"only if intended: `show {label} --as-command` prints the setup line; rerun it "
            "without them, adding --replace --reset"
            + ("; setup refuses some of these without --force" if forced else ""),
        )
    missing = [m.source for m in settings.mounts if not os.path.exists(m.source)]
    if missing:
        add(
            f"{label}: mounts",
            "FAIL",
            f"host path(s) missing: {', '.join(missing)}",
            "create them, or run setup again without that --mount",
        )
    else:
        count = len(settings.mounts)
        add(
            f"{label}: mounts",
            "OK",
            f"{count} extra mount(s), host paths exist" if count else "no extra mounts",
        )
    if (settings.engine_host or "").startswith("ssh://"):
        for url in settings.nodes or (settings.engine_host,):
            node = Engine(engine.command, host=url, environ=engine.environ)
            where = label if len(settings.nodes) < 2 else f"{label} {url}"
            _check_node(node, settings, where, add, base if probe else None)
        return None
    if info is None:
        add(f"{label}: image", "SKIP", "engine unreachable")
        return None
    if lookup is not None:
        add(f"{label}: image", "FAIL", str(lookup), f"'{engine.command} info' shows what is wrong")
        return None
    if image is None:
        build = (
            "jupyter-docker-kernel image build"
            if settings.image == DEFAULT_IMAGE
            else f"jupyter-docker-kernel image build --tag {settings.image}, or "
            f"'{engine.command} load'/'{engine.command} pull {settings.image}'"
        )
        add(
            f"{label}: image",
            "FAIL",
            f"{settings.image} is not present (kernels never pull)",
            f"{build}; or point the spec at another image with setup --replace",
        )
        return None
    size = int(image.get("Size") or 0) / 1e6
    moved = manage.moved_warning(settings, str(image.get("Id", "")))
    if moved:
        add(f"{label}: image", "WARN", moved[0], moved[1])
    else:
        add(
            f"{label}: image",
            "OK",
            f"{settings.image} present ({str(image.get('Id', ''))[7:19]}, {size:.0f} MB)",
        )
    if not probe:
        return None
    if settings.runtime and settings.runtime not in runtimes:
        add(f"{label}: kernel", "SKIP", f"runtime {settings.runtime} not registered")
        return None
    if base is None:
        add(f"{label}: kernel", "SKIP", "runtime dir unusable")
        return None
    # The probe runs the spec's whole docker run line: specs share one when it is the same.
    key = (settings.engine_host, *manage.effective_args(settings))
    return key, settings


def _check_kube(label: str, settings: KernelSettings, add: Callable[..., None]) -> None:
    """A --kubernetes kernelspec: its namespace's API, RBAC verbs, RuntimeClass and
    NetworkPolicy (kube_manage.checks); FAIL without the optional client."""
    try:
        from jupyter_docker_kernel import kube_manage
        from jupyter_docker_kernel.kube_backend import KubeApi

        api = KubeApi.for_settings(settings)
    except DockerKernelError as exc:
        add(f"{label}: kubernetes", "FAIL", exc.what, exc.fix)
        return
    for name, status, detail, fix in kube_manage.checks(api, settings):
        add(f"{label}: {name}", status, detail, fix)


def _check_node(
    node: Engine,
    settings: KernelSettings,
    label: str,
    add: Callable[..., None],
    base: Path | None = None,
) -> None:
    """A kernelspec whose kernels run on a remote node (ssh://): its engine answers there,
    it has the image setup recorded (and this host's, if here too), the runtime asked for,
    a unix socket forwarded from it answers (the path the kernel's channels take), and,
    given `base` (doctor without --no-probe), setup's probe container runs there
    (node_probe.probe: the kernel's real docker run on the node, its sockets through SSH)."""
    from jupyter_docker_kernel.ssh import Connection, socket_round_trip

    where = node.address()
    try:
        info = node.info(timeout=30)
    except DockerKernelError as exc:
        add(f"{label}: node", "FAIL", exc.what, exc.fix or f"check the node {where}")
        return
    running = info.get("ContainersRunning", "?")
    memory = int(info.get("MemTotal") or 0) >> 20
    add(
        f"{label}: node",
        "OK",
        f"{node.command} {info.get('ServerVersion', '?')} at {where} ({running} containers "
        f"running, {info.get('NCPU', '?')} CPUs, {memory} MiB)",
    )
    try:
        image = node.image_inspect(settings.image)
    except DockerKernelError as exc:
        add(f"{label}: image", "FAIL", str(exc), f"check the node {where}")
        return
    push = f"jupyter-docker-kernel image push {where} --tag {settings.image}"
    if image is None:
        add(f"{label}: image", "FAIL", f"{settings.image} is not on the node {where}", push)
        return
    there = str(image.get("Id", ""))
    here: dict[str, Any] | None = None
    with contextlib.suppress(DockerKernelError):
        here = Engine(node.command).image_inspect(settings.image)
    moved = manage.moved_warning(settings, there)
    if moved:
        add(f"{label}: image", "WARN", moved[0], moved[1])
    elif here is not None and str(here.get("Id", "")) != there:
        add(
            f"{label}: image",
            "WARN",
            f"the node has {settings.image} as {there[7:19]}, this host as "
            f"{str(here.get('Id', ''))[7:19]}",
            push,
        )
    else:
        add(f"{label}: image", "OK", f"{settings.image} on the node ({there[7:19]})")
    if settings.runtime:
        if settings.runtime in (info.get("Runtimes") or {}):
            add(f"{label}: runtime", "OK", f"{settings.runtime} registered on the node")
        else:
            add(
                f"{label}: runtime",
                "FAIL",
                f"{settings.runtime} is not registered in the node's engine",
                "register it there (gVisor: with --host-uds=create in its runtimeArgs)",
            )
    try:
        took = socket_round_trip(Connection.to(where or "", node.environ))
    except DockerKernelError as exc:
        add(f"{label}: sockets", "FAIL", exc.what, exc.fix)
        return
    if base is None:
        add(f"{label}: sockets", "OK", f"a unix socket forwarded from the node answered "
            f"({took * 1000:.0f} ms); no probe container (--no-probe)")  # fmt: skip
        return
    from jupyter_docker_kernel import node_probe  # only for nodes

    try:
        found = node_probe.probe(node, settings, base)
    except (DockerKernelError, OSError) as exc:
        add(f"{label}: kernel", "FAIL", f"the probe container could not be run on the node "
            f"{where}: {exc}")  # fmt: skip
        return
    for result in found.results:
        if result.name != "hardening":
            add(f"{label}: {result.name}", result.status, result.detail, result.fix)


@functools.cache
def _launcher_problem(python: str, isolated: bool) -> str:
    """Why this Python cannot import our launcher the way the spec starts it ("" when it
    can); run_checks clears the cache, so each distinct argv[0] costs one interpreter start
    per doctor run. From "/" and never from doctor's own cwd (see hostpython)."""
    code = "import jupyter_docker_kernel.launcher"
    argv = [python, "-I", "-c", code] if isolated else [python, "-c", SAFE_PATH_PREFIX + code]
    try:
        proc = subprocess.run(
            argv, cwd="/", capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"did not run: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"cannot import the launcher: {last}"
    return ""


#: doctor's advice for a kernelspec written by an earlier version.
UPGRADE_FIX = (
    "jupyter-docker-kernel doctor --fix rewrites it in place (settings unchanged; so does "
    "every setup run)"
)


def _check_launcher(spec: manage.SpecInfo, add: Callable[..., None]) -> None:
    """argv[0] of kernel.json exists and can import our launcher, isolated from the cwd,
    with the settings out of argv."""
    python = spec.launcher_python
    fix = (
        f"run 'jupyter-docker-kernel setup --name {spec.name} --replace ...' from the "
        "environment where jupyter-docker-kernel is installed"
    )
    if not (os.path.isabs(python) and os.access(python, os.X_OK)):
        add(f"{spec.name}: launcher", "FAIL", f"{python} does not exist or is not executable", fix)
        return
    if not spec.launcher_isolated:
        # An earlier version's `python -m ...launcher`: run in the notebook's directory, a
        # json.py handed in there runs on the host before any container exists.
        add(
            f"{spec.name}: launcher",
            "FAIL",
            f"{python} starts the launcher without isolation: it imports modules from the "
            "notebook's directory (a submitted json.py would run on the host)",
            UPGRADE_FIX,
        )
        return
    if spec.settings_in_argv:
        add(
            f"{spec.name}: launcher",
            "FAIL",
            "the settings (--env values included) are in argv, where `ps` shows them to "
            "every local user",
            UPGRADE_FIX,
        )
        return
    problem = _launcher_problem(python, "-I" in spec.launcher_argv[1:3])
    if problem:
        add(f"{spec.name}: launcher", "FAIL", f"{python} {problem}", fix)
        return
    add(f"{spec.name}: launcher", "OK", f"{python} imports jupyter_docker_kernel.launcher")


def _check_client(spec: manage.SpecInfo, add: Callable[..., None]) -> None:
    """The compiled thin client argv starts with (if any) exists, is only ours to write,
    and is the one built for this install and version: a stale one still works (it execs
    the Python launcher) but costs every start a Python process."""
    if not spec.client:
        return
    problem = spec.client_problem
    if problem:
        detail = f"{problem}; kernels start through Python"
        add(f"{spec.name}: thin client", "WARN", detail, UPGRADE_FIX)
        return
    add(f"{spec.name}: thin client", "OK", f"{spec.client} (compiled, built for this install)")


def _probe_safely(engine: Engine, settings: KernelSettings, base: Path) -> ProbeResult:
    """readiness.verdict (setup's verdict: runtime, image, the probe of the kernel's real
    docker run), every check listed, with an engine or filesystem error as the kernel
    check's FAIL. The spec is written, so loosenings setup refuses were forced: WARN, and
    listed once already by _check_spec (as "hardening", with doctor's own advice)."""
    started = time.monotonic()
    try:
        engine = engine_of(engine, settings)
        found = readiness.verdict(engine, settings, base, force=True)
    except (DockerKernelError, OSError) as exc:
        spent = time.monotonic() - started
        return [
            ("kernel", "FAIL", f"the probe container could not be run: {exc}", "", spent),
            ("sockets", "SKIP", "the probe container did not run", "", 0.0),
        ]
    return [
        (r.name, r.status, r.detail, r.fix, r.seconds)
        for r in found.results
        if r.name != "hardening"
    ]
