"""Can this kernelspec's kernel start here, and what does it loosen? The verdicts that
`setup` and `doctor` share (cli.py and doctor.py only print what this module returns).

- `loosenings(settings)`: pure. Every way the settings weaken the hardened defaults, as
  warnings, and the mounts setup refuses unless forced (the engine's socket, paths the
  kernel needs). Tested as a table in tests/test_readiness.py.
- `probe(engine, settings, base)`: one container created from the kernel's real `docker
  run` arguments (hardening.run_args: every limit, mount, env, network, runtime and docker
  arg, the kernel's user, the supervisor), whose kernel command is replaced by a few lines
  of Python. They report what a kernel would see (versions, uid, capabilities, network
  interfaces), bind a unix socket in the runtime dir and serve the host one connection,
  the path every kernel's five channels take. A container the engine refuses is explained
  by engine.explain_run_failure, which names the option at fault.
- `verdict(engine, settings, base)`: the one answer to "can this kernelspec start here",
  from the kernel's real `docker run` arguments: runtime, image, loosenings, then the
  probe. setup stops at its first FAIL (`first_fail=True`) and raises it; doctor lists them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jupyter_docker_kernel import hardening, workcopy
from jupyter_docker_kernel.engine import Engine, explain_run_failure, first_line
from jupyter_docker_kernel.errors import DockerKernelError, ImageError, SettingsError
from jupyter_docker_kernel.hardening import SUPERVISOR_PATH
from jupyter_docker_kernel.rundir import NAME_PREFIX, RunDir, process_start_time, remove_tree
from jupyter_docker_kernel.settings import KernelSettings
from jupyter_docker_kernel.workdir import (  # the rules, kept once with the project root's
    ENGINE_SOCKETS,
    OWN_PATHS,
    SYSTEM_TREES,
    on_or_above,
    owner_of,
    socket_in,
)
from jupyter_docker_kernel.workdir import engine_sockets as engine_sockets  # for setup, doctor

Status = Literal["OK", "WARN", "FAIL", "SKIP"]
#: Seconds the probe's kernel waits for the host to connect (it is removed sooner).
PROBE_WAIT = 30.0
#: Seconds we give a probe container to start and bind (gVisor's first start is slowest).
PROBE_TIMEOUT = 60.0
#: A name the supervisor's socket-dir guard allows (it stops a kernel that binds anything
#: but its own sockets there) and that nothing else binds in a probe: a warm kernel's claim
#: socket (the kernel's own k-N names are taken by the tcp bridge of --kernel-transport tcp).
SOCKET_NAME = hardening.CLAIM_SOCKET


@dataclass(frozen=True)
class Finding:
    """One loosening of the defaults: a warning, or (refused) one setup needs --force for."""

    message: str
    refused: bool = False


def _mount_source(flag: str, value: str) -> str:
    """The host path of a `-v SRC:DST` or `--mount type=bind,source=SRC,...` docker arg."""
    if flag in ("-v", "--volume"):
        return value.split(":")[0]
    for item in next(csv.reader(io.StringIO(value)), []):
        key, _, val = item.partition("=")
        if key in ("source", "src"):
            return val
    return ""


#: --docker-arg flags that undo a default: flag -> what it does (value filled in).
_RISKY_FLAGS = {
    "--privileged": "gives the kernel every capability and the host's devices: root in "
    "the container can take over the host",
    "--cap-add": "gives the kernel capability {value} back (the default drops them all)",
    "--device": "gives the kernel the host device {value}",
    "--user": "replaces the kernel's unprivileged uid with {value}",
    "-u": "replaces the kernel's unprivileged uid with {value}",
    "--group-add": "adds group {value} to the kernel",
    "--network": "replaces --network with {value}",
    "--net": "replaces --network with {value}",
    "--runtime": "replaces the runtime with {value}",
    "--volume": "mounts {value}, which setup does not check",
    "-v": "mounts {value}, which setup does not check",
    "--mount": "mounts {value}, which setup does not check",
    "--read-only": "makes the image's filesystem writable",
}
#: Flags whose value "host" shares one of the host's namespaces with the kernel.
_NAMESPACE_FLAGS = ("--pid", "--ipc", "--uts", "--userns", "--cgroupns")
#: Flags that replace one of our limits (the engine keeps the last of a repeated flag).
_LIMIT_FLAGS = (
    "--memory",
    "-m",
    "--memory-swap",
    "--cpus",
    "--pids-limit",
    "--ulimit",
    "--shm-size",
    "--oom-score-adj",
    "--oom-kill-disable",
)
_UNCONFINED = (
    "seccomp=unconfined",
    "seccomp:unconfined",
    "apparmor=unconfined",
    "apparmor:unconfined",
    "label=disable",
    "label:disable",
    "no-new-privileges=false",
    "no-new-privileges:false",
    "systempaths=unconfined",
)
_TAKES_VALUE = {
    *(f for f in _RISKY_FLAGS if f not in ("--privileged", "--read-only")),
    *_NAMESPACE_FLAGS,
    *_LIMIT_FLAGS,
    "--security-opt",
    "--gpus",
}


def _docker_arg_findings(docker_args: Sequence[str], sockets: Sequence[str]) -> list[Finding]:
    """What each --docker-arg loosens; anything we do not model is still named."""
    found: list[Finding] = []
    i = 0
    while i < len(docker_args):
        arg = docker_args[i]
        i += 1
        flag, eq, value = arg.partition("=")
        if not flag.startswith("-"):
            continue
        if flag[:2] in ("-v", "-u", "-m") and len(flag) > 2 and not flag.startswith("--"):
            flag, eq, value = flag[:2], "=", arg[2:]  # the short form's value attached: -vSRC:DST
        if not eq and flag in _TAKES_VALUE and i < len(docker_args):
            value = docker_args[i]
            i += 1
        shown = f"--docker-arg={arg}" + (f" {value}" if not eq and value else "")
        if flag == "--ulimit" and value.startswith("nproc="):
            continue  # setup's own pin for Podman (cli.engine_settings)
        if flag in ("--volume", "-v", "--mount"):
            engine_socket = socket_in(_mount_source(flag, value), sockets)
            if engine_socket:
                found.append(
                    Finding(
                        f"{shown} gives the kernel the container engine's API "
                        f"({engine_socket}): code in the kernel could start a privileged "
                        "container and take over the host",
                        refused=True,
                    )
                )
                continue
        if flag == "--read-only" and value.lower() not in ("false", "0"):
            continue
        if flag == "--gpus":
            found.append(
                Finding(
                    f"{shown}: use setup --gpus {value or 'all'} instead, which setup checks "
                    "against the engine and show and kernel.json carry"
                )
            )
            continue
        if flag == "--security-opt":
            if value.replace(" ", "") in _UNCONFINED:
                found.append(Finding(f"{shown} turns off {value.split('=')[0].split(':')[0]}"))
            else:
                found.append(Finding(f"{shown} changes the kernel's security options"))
        elif flag in _NAMESPACE_FLAGS:
            what = "shares the host's" if value == "host" else "changes the kernel's"
            found.append(Finding(f"{shown} {what} {flag.lstrip('-')} namespace"))
        elif flag in _LIMIT_FLAGS:
            found.append(Finding(f"{shown} replaces the kernel's own {flag} limit"))
        elif flag in _RISKY_FLAGS:
            found.append(Finding(f"{shown} {_RISKY_FLAGS[flag].format(value=value)}"))
        else:
            found.append(Finding(f"{shown} is passed verbatim to docker run, unchecked"))
    return found


def loosenings(
    settings: KernelSettings,
    *,
    for_nbgrader: bool = False,
    engine_sockets: Sequence[str] = ENGINE_SOCKETS,
    image_path: Sequence[str] = (),
    resolve: Callable[[str], str] | None = None,
) -> list[Finding]:
    """Every way `settings` loosen the defaults; pure (no engine, no filesystem).

    setup prints the warnings and refuses (unless --force) the findings marked refused;
    doctor shows them all as WARN. engine_sockets are host paths of engine API sockets;
    image_path the image's PATH directories (a mount over one hides its Python); resolve
    maps a mount's host path to its real path (setup passes os.path.realpath).
    """
    found: list[Finding] = []
    if settings.network == "host":
        found.append(
            Finding(
                "--network host: the kernel shares the host's network, so it reaches every "
                "service listening on the host (on localhost too: Jupyter's own ports, an "
                "engine API on TCP, databases) and the internet"
            )
        )
    elif settings.network != "none":
        found.append(
            Finding(
                f"--network {settings.network}: the kernel can reach the network (the "
                "internet, and the hosts and containers on it); the default is none"
            )
        )
    if for_nbgrader and settings.network != "none":
        found.append(
            Finding(
                f"--for-nbgrader with --network {settings.network}: graded code can send "
                "what it reads (the tests, the other files in the course) anywhere; the "
                "grading profile uses --network none"
            )
        )
    sockets = list(engine_sockets)
    for m in settings.mounts:
        sources = [m.source, resolve(m.source)] if resolve else [m.source]
        engine_socket = next(filter(None, (socket_in(s, sockets) for s in sources)), "")
        if engine_socket:
            found.append(
                Finding(
                    f"--mount {m.to_spec()} gives the kernel the container engine's API "
                    f"({engine_socket}): code in the kernel could start a privileged "
                    "container and take over the host",
                    refused=True,
                )
            )
        needed = [p for p in SYSTEM_TREES if on_or_above(m.target, p) or on_or_above(p, m.target)]
        ours = [p for p in OWN_PATHS if on_or_above(m.target, p)]
        python = [p for p in image_path if on_or_above(m.target, p)]
        why = ""
        if needed:
            why = f"covers {needed[0]}, which the kernel needs (Python, its libraries, the system)"
        elif ours:
            why = f"covers {ours[0]}, which jupyter-docker-kernel mounts there itself"
        elif python:
            why = f"hides {python[0]}, where the image keeps its Python"
        if why:
            found.append(
                Finding(f"--mount {m.to_spec()} {why}; mount it at another path", refused=True)
            )
    found += _docker_arg_findings(settings.docker_args, sockets)
    return found


def image_path(image: dict[str, Any], settings: KernelSettings) -> tuple[str, ...]:
    """The directories the image's Python is looked up in: its PATH, or --python's dir."""
    if settings.python.startswith("/"):
        return (os.path.dirname(settings.python),)
    env = (image.get("Config") or {}).get("Env") or []
    path = next((e.split("=", 1)[1] for e in env if e.startswith("PATH=")), "")
    return tuple(p for p in path.split(":") if p.startswith("/") and p != "/")


# -- the probe container --------------------------------------------------------------------

#: The probe's kernel command, run by the image's Python as the kernel's uid through our
#: supervisor: report what a kernel would see, then serve one connection on a unix socket
#: in the bind-mounted runtime dir. Python 3.6-compatible, like the supervisor.
PROBE_CODE = """\
import os, platform, socket, sys
try:
    import ipykernel
    ipk = ipykernel.__version__
except Exception as exc:
    ipk = "-"
    sys.stderr.write("cannot import ipykernel: %s\\n" % exc)
caps = "?"
try:
    with open("/proc/self/status") as fh:
        caps = [l.split()[1] for l in fh if l.startswith("CapEff:")][0]
except Exception:
    pass
try:
    nets = ",".join(sorted(os.listdir("/sys/class/net"))) or "-"
except OSError:
    nets = "?"
sys.stdout.write("%s %s %s %d:%d %s %s\\n" % (sys.version.split()[0], ipk, platform.release(),
                                            os.getuid(), os.getgid(), caps, nets))
sys.stdout.flush()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1)
s.settimeout(float(sys.argv[2]))
c, _ = s.accept()
c.sendall(b"ok")
c.close()
"""


@dataclass(frozen=True)
class Result:
    """One verdict of the probe: 'kernel' (it runs, as whom, how confined) or 'sockets'."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    seconds: float = 0.0
    #: A FAIL as the error setup raises (what and what to do; setup says what was not done).
    error: DockerKernelError | None = field(default=None, compare=False)


@dataclass
class Probe:
    """What the probe found: its verdicts, and the versions setup's summary prints."""

    results: list[Result] = field(default_factory=list)
    python: str = ""
    ipykernel: str = ""
    release: str = ""

    @property
    def failure(self) -> Result | None:
        """The first FAIL (the one to fix), or None when the kernel can start."""
        return next((r for r in self.results if r.status == "FAIL"), None)


def probe_launch(settings: KernelSettings, directory: Path) -> hardening.Launch:
    """The Launch of a probe: a kernel's, with its dirs under `directory` and its own
    name; labelled with our pid so gc keeps it while we live and removes it after."""
    token = secrets.token_hex(3)
    rundir = RunDir(directory)
    workdir = str(rundir.work)
    return hardening.Launch(
        kernel_id=f"probe-{token}",
        container_name=f"{NAME_PREFIX}-probe-{token}",
        runtime_dir=str(rundir.sockets),
        connection_file=str(rundir.connection),
        supervisor_path=SUPERVISOR_PATH,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        workdir=workdir,
        launcher_pid=os.getpid(),
        launcher_start=process_start_time(os.getpid()),
        hostname=socket.gethostname(),
        workdir_owner=owner_of(workdir, settings),
    )


def probe_args(settings: KernelSettings, launch: hardening.Launch) -> list[str]:
    """hardening.run_args for this launch, with the kernel command (after the supervisor's
    `--`) replaced by PROBE_CODE: everything else is exactly what a kernel start runs,
    but the --mount templates ({project}/data), which only a notebook's start fills in."""
    plain = tuple(m for m in settings.mounts if not m.template)
    args = hardening.run_args(dataclasses.replace(settings, mounts=plain), launch)
    kernel = hardening.kernel_command(settings)
    cut = len(args) - len(kernel)
    assert args[cut - 1] == "--", args
    assert args[cut:] == kernel, args
    socket_path = f"{hardening.RUNTIME_TARGET}/{SOCKET_NAME}"
    return [*args[:cut], settings.python, "-c", PROBE_CODE, socket_path, f"{PROBE_WAIT:g}"]


def _prepare(settings: KernelSettings, launch: hardening.Launch, uid: int, gid: int) -> None:
    """The dirs and files a launcher would have made, owned as the launcher makes them."""
    runtime_dir = Path(launch.runtime_dir)
    runtime_dir.mkdir(mode=0o700)
    # A notebook dir as people have them: readable, writable by its owner.
    Path(launch.workdir).mkdir(mode=0o755)
    Path(launch.connection_file).write_text("{}")
    group_only = hardening.shares_group_only(settings, launch)
    chown = uid != os.getuid() and not group_only
    if group_only:
        os.chmod(runtime_dir, 0o770)  # noqa: S103 - inside our 0700 base dir (as launcher.py)
        os.chmod(launch.connection_file, 0o640)
    elif chown:
        os.chown(runtime_dir, uid, gid)
        os.chown(launch.connection_file, uid, gid)


def probe(
    engine: Engine, settings: KernelSettings, base: Path, image_path: Sequence[str] = ()
) -> Probe:
    """Create and run one probe container in `engine`; its dir under `base` (the launcher's
    runtime base) and the container are removed whatever happens. Raises only what the
    engine CLI's absence or the filesystem raise (DockerKernelError, OSError)."""
    directory = Path(tempfile.mkdtemp(prefix="probe-", dir=base))
    launch = probe_launch(settings, directory)
    user = hardening.kernel_user(settings, launch)
    uid, gid = (int(x) for x in user.split(":"))
    try:
        _prepare(settings, launch, uid, gid)
        started = time.monotonic()
        # stdin is the supervisor's lifeline, as for a kernel: open until we are done.
        proc = subprocess.Popen(
            [engine.executable(), *probe_args(settings, launch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=engine.env(),
        )
        if settings.workdir == "copy":
            # With --copy-workdir the supervisor unpacks the notebook's copy before anything
            # else (workcopy): the probe's is empty, or it would wait for one.
            assert proc.stdin is not None
            stdin = proc.stdin.fileno()  # a few bytes, nothing buffered in the text layer yet
            workcopy.send(launch.workdir, [], lambda data: os.write(stdin, data))
    except BaseException:
        remove_tree(directory)
        raise
    name = launch.container_name
    socket_path = Path(launch.runtime_dir) / SOCKET_NAME
    try:
        reached, error = _connect(proc, socket_path, started + PROBE_TIMEOUT)
        connected = time.monotonic() - started
        if reached != "ok" and proc.poll() is None:
            engine.remove(name)  # it would wait PROBE_WAIT for a connection in vain
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            engine.remove(name)
            out, err = proc.communicate(timeout=15)
    finally:
        try:
            if proc.poll() is None:
                try:
                    engine.remove(name)
                finally:  # an engine that refused the removal: still no probe left here
                    proc.kill()
                    proc.communicate()  # its end, and our pipes to it closed
            if settings.engine == "podman" or hardening.is_gvisor(settings):
                # Attached Podman and gVisor runs go without --rm (hardening.run_args: the
                # exit code, the OOM verdict): the probe's container stays unless removed.
                engine.remove(name)
        finally:
            remove_tree(directory)
    spent = time.monotonic() - started
    result = Probe()
    kernel = kernel_verdict(settings, user, proc.returncode, out, err, image_path, result)
    sockets = sockets_verdict(
        bool(out.strip()),
        reached == "ok",
        f"the kernel's uid bound a unix socket in the bind-mounted runtime dir and the "
        f"host connected to it ({connected:.1f} s after docker run)",
        f"the host could not reach a unix socket the container bound: "
        f"{error or first_line(err) or 'no socket appeared'}",
        "gVisor needs '--host-uds=create' in runsc's runtimeArgs (scripts/bootstrap-engine "
        "--runsc sets it)"
        if hardening.is_gvisor(settings)
        else "put the runtime dir on a local filesystem (set XDG_RUNTIME_DIR), and check "
        "the runtime supports unix sockets on bind mounts",
    )
    result.results = [Result("kernel", *kernel, spent), Result("sockets", *sockets)]
    return result


def sockets_verdict(
    ran: bool, reached: bool, ok: str, failed: str, fix: str
) -> tuple[Status, str, str]:
    """The probe's 'sockets' check (this host's probe above, node_probe's on a node): SKIP
    when the probe's kernel did not run, else OK or FAIL in the caller's words."""
    if not ran:
        return ("SKIP", "the probe's kernel did not run", "")
    if reached:
        return ("OK", ok, "")
    return ("FAIL", failed, fix)


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


def kernel_verdict(
    settings: KernelSettings,
    user: str,
    code: int | None,
    out: str,
    err: str,
    image_path: Sequence[str],
    result: Probe,
) -> tuple[Status, str, str]:
    """The probe's 'kernel' check, from its exit `code`, stdout (`out`: the report line)
    and stderr (`err`): it ran, has ipykernel, is not root, has no capabilities or network
    it should not have, and gVisor shows its own kernel. Fills `result`'s versions. Called
    by this host's probe above and node_probe.probe's on a node (as sockets_verdict)."""
    # The last line: an entrypoint kept with --keep-entrypoint may print before it
    # (Docker Stacks' start.sh logs to stdout).
    words = (out.strip().splitlines() or [""])[-1].split()
    if len(words) != 6:
        if "out of memory" in err:
            return (
                "FAIL",
                f"{settings.python} was killed for lack of memory under --memory {settings.memory}",
                "raise --memory (a kernel needs about 100m; e.g. --memory 2g)",
            )
        detail, fix = explain_run_failure(err, code, settings, image_path)
        if settings.keep_entrypoint:
            fix = (
                "the image's ENTRYPOINT ran first (--keep-entrypoint): leave that option out "
                f"to clear it, or see 'jupyter-docker-kernel image check --keep-entrypoint "
                f"{settings.image}'; else {fix}"
            )
        return "FAIL", detail, fix
    py, ipk, release, ids, caps, nets = words
    result.python, result.ipykernel, result.release = py, ipk, release
    if ipk == "-" and not settings.kernel_cmd:
        hidden = [
            m.to_spec()
            for m in settings.mounts
            if any(on_or_above(m.target, p) for p in image_path)
        ]
        if hidden:
            return (
                "FAIL",
                f"{settings.image} has Python {py} but no ipykernel (--mount {hidden[0]} "
                "hides the image's own)",
                "mount it at another container path (run setup again with --replace)",
            )
        return (
            "FAIL",
            f"{settings.image} has Python {py} but no ipykernel",
            "use an image with Python and ipykernel installed (jupyter-docker-kernel image "
            "build), or run setup again with --python PATH",
        )
    if ids.split(":")[0] == "0":
        return (
            "FAIL",
            f"the kernel would run as root ({ids})",
            "remove the --docker-arg that sets the user"
            if settings.docker_args
            else "run setup again with --kernel-user UID",
        )
    if settings.runtime and "runsc" in settings.runtime and release == os.uname().release:
        return (
            "FAIL",
            f"runtime {settings.runtime} shows the host's kernel {release}: not sandboxing",
            "check the runtime's entry in /etc/docker/daemon.json",
        )
    notes: list[str] = []
    status: Status = "OK"
    if caps not in ("0000000000000000", "?"):
        notes.append(f"capabilities {caps}")
        status = "WARN" if settings.docker_args else "FAIL"
    else:
        notes.append("no capabilities")
    interfaces = [n for n in nets.split(",") if n not in ("lo", "-", "?")]
    if settings.network == "none" and interfaces:
        notes.append(f"network interfaces {', '.join(interfaces)} despite network none")
        status = "WARN" if settings.docker_args else "FAIL"
    else:
        notes.append("no network" if settings.network == "none" else f"network {settings.network}")
    runtime = f", runtime {settings.runtime}" if settings.runtime else ""
    what = f"ipykernel {ipk}" if ipk != "-" else "a custom kernel command"
    return (
        status,
        f"Python {py}, {what}, as uid:gid {ids}, {', '.join(notes)}{runtime} (kernel {release}), "
        f"with the kernel's limits, mounts and options",
        ""
        if status == "OK"
        else "the kernelspec's --docker-arg gives these back; remove it unless intended"
        if status == "WARN"
        else "the engine does not apply the hardening; check its configuration",
    )


@dataclass
class Verdict:
    """Can a kernel with these settings start here: each check in order (runtime, image,
    hardening, then the probe's kernel and sockets), the loosenings found, and the probe
    (its versions) when it ran."""

    results: list[Result] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    probe: Probe | None = None

    @property
    def failure(self) -> Result | None:
        """The first FAIL (the one to fix), or None when the kernel can start."""
        return next((r for r in self.results if r.status == "FAIL"), None)


def verdict(
    engine: Engine,
    settings: KernelSettings,
    base: Path,
    *,
    for_nbgrader: bool = False,
    force: bool = False,
    first_fail: bool = False,
    run_probe: bool = True,
) -> Verdict:
    """The one verdict setup and doctor share, from the kernel's real `docker run`.

    Checks, in order: the runtime is registered, the image is present, the settings loosen
    nothing refused (unless `force`: then a refused one is a WARN), and the probe container
    (`probe`) runs the kernel's command with every limit, mount and option. With
    `first_fail` (setup) it returns at the first FAIL, whose `error` setup raises; without
    (doctor) it goes on where it can. Raises only what the engine's absence or the
    filesystem raise (DockerKernelError, OSError).
    """
    out = Verdict()
    runtimes = engine.runtimes() if settings.runtime else set()
    if settings.runtime and settings.runtime not in runtimes:
        error = SettingsError(
            f"The engine has no runtime '{settings.runtime}' (it has: "
            f"{', '.join(sorted(runtimes))})",
            fix="Register it in /etc/docker/daemon.json (scripts/bootstrap-engine --runsc does "
            "this for gVisor) and restart the engine",
        )
        out.results.append(Result("runtime", "FAIL", error.what, error.fix, error=error))
        return out  # no probe can run without its runtime
    try:
        image = engine.require_image(settings.image)
    except ImageError as exc:
        out.results.append(Result("image", "FAIL", exc.what, exc.fix, error=exc))
        return out
    path = image_path(image, settings)
    out.findings = loosenings(
        settings,
        for_nbgrader=for_nbgrader,
        engine_sockets=engine_sockets(engine),
        image_path=path,
        resolve=os.path.realpath,
    )
    refused = [f for f in out.findings if f.refused]
    if refused and not force:
        error = SettingsError(refused[0].message, fix="Add --force if you mean it")
        out.results.append(Result("hardening", "FAIL", error.what, error.fix, error=error))
        if first_fail:
            return out
    elif out.findings:
        out.results.append(Result("hardening", "WARN", "; ".join(f.message for f in out.findings)))
    if not run_probe:
        return out
    out.probe = probe(engine, settings, base, path)
    for result in out.probe.results:
        if result.status == "FAIL":
            result = dataclasses.replace(
                result,
                error=ImageError(
                    f"A kernel could not start with these settings: {result.detail}",
                    fix=f"To fix: {result.fix}" if result.fix else "",
                ),
            )
        out.results.append(result)
    return out
