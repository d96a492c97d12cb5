"""`doctor`: checks that a kernel can start here, each with a verdict and the fix.

cli.py calls run_checks() and prints the Report (or its JSON). The checks go from the
bottom up (engine CLI, engine, runtimes, the private runtime dir) and then per kernelspec
(launcher Python, mounts, image, and one real probe container). A check that cannot run
because an earlier one failed is SKIP, not FAIL, so the first FAIL is the one to fix.

The probe is the setup probe (hardening.probe_args: no network, no capabilities, the
kernel's unprivileged uid, the spec's runtime) plus the runtime dir bind-mounted where the
kernel binds its sockets: the container imports ipykernel, binds a unix socket there, and
the host connects to it, which is exactly the path every kernel's five channels take.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jupyter_docker_kernel import hardening, manage
from jupyter_docker_kernel.engine import Engine, first_line
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.hostpython import SAFE_PATH_PREFIX
from jupyter_docker_kernel.launcher import NAME_PREFIX, remove_tree, runtime_base_choice
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
#: Seconds the probe container waits for the host to connect (it is removed sooner).
PROBE_WAIT = 30.0
#: Seconds we give a probe container to start and bind (gVisor's first start is slowest).
PROBE_TIMEOUT = 60.0
SOCKET_NAME = "doctor"
#: A probe's verdicts: (check, status, detail, fix, seconds) for 'kernel' and 'sockets'.
ProbeResult = list[tuple[str, Status, str, str, float]]

#: Runs in the image as the kernel's uid: report versions, then serve one connection on a
#: unix socket in the bind-mounted runtime dir. Python 3.7-compatible, no f-strings needed.
PROBE_CODE = """\
import os, platform, socket, sys
try:
    import ipykernel
    ipk = ipykernel.__version__
except Exception as exc:
    ipk = "-"
    sys.stderr.write("cannot import ipykernel: %s\\n" % exc)
sys.stdout.write("%s %s %s %d:%d\\n" % (sys.version.split()[0], ipk, platform.release(),
                                      os.getuid(), os.getgid()))
sys.stdout.flush()
os.umask(0o007)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
s.settimeout(float(sys.argv[2]))
c, _ = s.accept()
c.sendall(b"ok")
c.close()
"""


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


def split_advice(message: str, marker: str) -> tuple[str, str]:
    """Our errors read 'what happened. <marker> what to do.': (what happened, what to do)."""
    what, found, advice = message.partition(f" {marker}")
    return what.strip(), advice.strip() if found else ""


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
        detail, advice = split_advice(str(exc), "Nothing was done.")
        add(
            "engine",
            "FAIL",
            detail,
            advice
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
    the usual place is taken and kernels use a fallback (launcher.runtime_base_choice)."""
    try:
        base, why = runtime_base_choice()
    except DockerKernelError as exc:
        detail, advice = split_advice(str(exc), "No kernel was started.")
        add(
            "runtime dir",
            "FAIL",
            detail,
            advice or "remove it, or set XDG_RUNTIME_DIR to a private directory of yours",
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
            f"jupyter-docker-kernel setup --name {label} --replace ... (rewrite it)",
        )
        return None
    add(f"{label}: kernelspec", "OK", f"{spec.path} (image {settings.image})")
    engine = engine_of(engine, settings)
    _check_launcher(spec, add)
    loosened = []
    if settings.network != "none":
        loosened.append(f"network '{settings.network}' (the kernel can reach the network)")
    if settings.docker_args:
        loosened.append(f"docker args passed verbatim: {' '.join(settings.docker_args)}")
    if loosened:
        add(
            f"{label}: hardening",
            "WARN",
            "; ".join(loosened),
            "only if intended: setup --replace without them restores the defaults",
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
    if info is None:
        add(f"{label}: image", "SKIP", "engine unreachable")
        return None
    try:
        image = engine.image_inspect(settings.image)
    except DockerKernelError as exc:
        add(f"{label}: image", "FAIL", str(exc), f"'{engine.command} info' shows what is wrong")
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
    key = (settings.image, settings.runtime, settings.python, settings.kernel_user,
           bool(settings.kernel_cmd), settings.engine, settings.engine_host)  # fmt: skip
    return key, settings


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


def probe_args(settings: KernelSettings, user: str, runtime_dir: str, name: str) -> list[str]:
    """setup's probe (hardening.probe_args) with a name and the runtime dir mounted, running
    PROBE_CODE; pure, so its hardening is tested without an engine."""
    args = hardening.probe_args(settings, user)
    image_at = len(args) - 4  # probe_args ends: image, python, -c, code
    assert args[image_at] == settings.image, args
    socket_path = f"{hardening.RUNTIME_TARGET}/{SOCKET_NAME}"
    return [
        args[0],
        "--name",
        name,
        *args[1:image_at],
        "--mount",
        hardening.mount_arg(runtime_dir, hardening.RUNTIME_TARGET),
        settings.image,
        settings.python,
        "-c",
        PROBE_CODE,
        socket_path,
        f"{PROBE_WAIT:g}",
    ]


def _probe_safely(engine: Engine, settings: KernelSettings, base: Path) -> ProbeResult:
    """probe_container, with an engine or filesystem error as the kernel check's FAIL."""
    started = time.monotonic()
    try:
        return probe_container(engine_of(engine, settings), settings, base)
    except (DockerKernelError, OSError) as exc:
        spent = time.monotonic() - started
        return [
            ("kernel", "FAIL", f"the probe container could not be run: {exc}", "", spent),
            ("sockets", "SKIP", "the probe container did not run", "", 0.0),
        ]


def probe_container(engine: Engine, settings: KernelSettings, base: Path) -> ProbeResult:
    """Start one probe container; returns the 'kernel' and 'sockets' verdicts. The
    container and its dir are removed whatever happens."""
    launch = manage.placeholder_launch(settings)
    user = hardening.kernel_user(settings, launch)
    uid, gid = (int(x) for x in user.split(":"))
    directory = Path(tempfile.mkdtemp(prefix="doctor-", dir=base))
    runtime_dir = directory / "rt"
    name = f"{NAME_PREFIX}-doctor-{secrets.token_hex(3)}"
    try:
        runtime_dir.mkdir(mode=0o700)
        # The same ownership the launcher gives a kernel's runtime dir (launcher.py).
        if hardening.shares_group_only(settings, launch):
            os.chmod(runtime_dir, 0o770)  # noqa: S103 - inside our 0700 base dir
        elif uid != os.getuid():
            os.chown(runtime_dir, uid, gid)
        args = probe_args(settings, user, str(runtime_dir), name)
        started = time.monotonic()
        proc = subprocess.Popen(
            [engine.executable(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=engine.env(),
        )
    except BaseException:
        remove_tree(directory)
        raise
    try:
        reached, error = _connect(proc, runtime_dir / SOCKET_NAME, started + PROBE_TIMEOUT)
        connected = time.monotonic() - started
        if reached != "ok" and proc.poll() is None:
            engine.remove(name)  # it would wait PROBE_WAIT for a connection in vain
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            engine.remove(name)
            out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            engine.remove(name)
            proc.kill()
            proc.wait()
        remove_tree(directory)
    kernel = _kernel_verdict(settings, user, proc.returncode, out, err)
    if not out.strip():
        sockets: tuple[Status, str, str] = ("SKIP", "the probe container did not run", "")
    elif reached == "ok":
        sockets = (
            "OK",
            f"the kernel's uid bound a unix socket in the bind-mounted runtime dir and the "
            f"host connected to it ({connected:.1f} s after docker run)",
            "",
        )
    else:
        runsc = bool(settings.runtime and "runsc" in settings.runtime)
        sockets = (
            "FAIL",
            f"the host could not reach a unix socket the container bound: "
            f"{error or first_line(err) or 'no socket appeared'}",
            "gVisor needs '--host-uds=create' in runsc's runtimeArgs (scripts/bootstrap-engine "
            "--runsc sets it)"
            if runsc
            else "put the runtime dir on a local filesystem (set XDG_RUNTIME_DIR), and check "
            "the runtime supports unix sockets on bind mounts",
        )
    spent = time.monotonic() - started
    return [("kernel", *kernel, spent), ("sockets", *sockets, 0.0)]


def _connect(proc: subprocess.Popen[str], path: Path, deadline: float) -> tuple[str, str]:
    """Poll for the probe's socket and read its greeting; ('ok', '') or ('', why not)."""
    error, failed_at = "", 0.0
    while time.monotonic() < deadline and proc.poll() is None:
        if error and time.monotonic() > failed_at + 3:
            break  # the socket is there but refuses us: retrying will not help
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                try:
                    s.connect(str(path))
                    return s.recv(2).decode(errors="replace"), ""
                except OSError as exc:
                    if not error:
                        failed_at = time.monotonic()
                    error = f"{exc.strerror or exc} connecting to {path.name}"
        time.sleep(0.02)
    if proc.poll() is None and not error:
        error = f"no socket within {PROBE_TIMEOUT:.0f} s"
    return "", error


def _kernel_verdict(
    settings: KernelSettings, user: str, code: int | None, out: str, err: str
) -> tuple[Status, str, str]:
    """Read the probe's version line: Python and ipykernel present, not root, sandboxed."""
    words = (out.strip().splitlines() or [""])[0].split()
    fix = (
        "use an image with Python and ipykernel installed (jupyter-docker-kernel image "
        "build), or run setup again with --python PATH"
    )
    if len(words) != 4:
        # The engine's own reason, not the CLI's trailing "Run 'docker run --help'".
        said = [x for x in err.splitlines() if x.strip() and not x.startswith("Run '")]
        last = (said or [f"exit code {code}"])[-1]
        return "FAIL", f"{settings.image} did not run {settings.python} as {user}: {last}", fix
    py, ipk, release, ids = words
    if ipk == "-" and not settings.kernel_cmd:
        return "FAIL", f"{settings.image} has Python {py} but no ipykernel", fix
    if ids.split(":")[0] == "0":
        return (
            "FAIL",
            f"the kernel would run as root ({ids})",
            "run setup again with --kernel-user UID",
        )
    runtime = f", runtime {settings.runtime}" if settings.runtime else ""
    if settings.runtime and "runsc" in settings.runtime and release == os.uname().release:
        return (
            "FAIL",
            f"runtime {settings.runtime} shows the host's kernel {release}: not sandboxing",
            "check the runtime's entry in /etc/docker/daemon.json",
        )
    what = f"ipykernel {ipk}" if ipk != "-" else "a custom kernel command"
    return (
        "OK",
        f"Python {py}, {what}, as uid:gid {ids}, no network, no capabilities{runtime} "
        f"(kernel {release})",
        "",
    )
