"""Argument parsing for `jupyter-docker-kernel`; the only module that prints for humans.

`main(argv) -> int` is what tests call; `run()` is the console script. Every subcommand
builds settings, calls one module that does the job, and prints what happened. Errors of
our family become one line on stderr and exit code 1 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import (
    __version__,
    config,
    doctor,
    grading,
    hardening,
    image_kernels,
    kernelspec,
    manage,
    reaper,
)
from jupyter_docker_kernel.engine import Engine, podman_socket
from jupyter_docker_kernel.errors import (
    DockerKernelError,
    ImageError,
    KernelSpecError,
    SettingsError,
)
from jupyter_docker_kernel.launcher import NBGRADER_MARKERS
from jupyter_docker_kernel.settings import (
    DEFAULT_IMAGE,
    KernelSettings,
    Mount,
    parse_env,
)

DEFAULTS = KernelSettings()  # built-in values, for the help text
#: Setting fields that `setup` exposes one to one as options: (flag, field, type, help).
LIMIT_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--network", "network", str, "container network"),
    ("--memory", "memory", str, "memory limit, swap included"),
    ("--cpus", "cpus", float, "CPU limit"),
    ("--pids-limit", "pids_limit", int, "processes and threads"),
    ("--tmp-size", "tmp_size", str, "size of each tmpfs (/tmp, HOME)"),
    ("--tmp-inodes", "tmp_inodes", int, "files per tmpfs"),
    ("--nofile", "nofile", int, "open files per process"),
    ("--fsize", "fsize", str, "largest file the kernel may write"),
    ("--max-lifetime", "max_lifetime", float, "seconds before the kernel is ended"),
    ("--max-message", "max_message", str, "largest message accepted from the kernel"),
    ("--output-budget", "output_budget", str, "bytes the kernel may send in all"),
    ("--copy-limit", "copy_limit", str, "largest work dir --copy-workdir copies"),
    ("--pool", "pool", int, "warm containers kept ready (needs --copy-workdir or --no-workdir)"),
    ("--pool-ttl", "pool_ttl", float, "seconds an unclaimed warm container waits"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter-docker-kernel",
        description="Run Jupyter kernels in hardened containers while Jupyter stays on the host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and engine calls")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    setup = sub.add_parser(
        "setup",
        help="write a kernelspec whose kernel runs in a container",
        description="Write a kernelspec whose kernel runs in a container. Checks the engine "
        "and the image first; writes nothing if either is not usable.",
    )
    setup.add_argument("--name", required=True, help="kernel name (letters, digits, . _ -)")
    setup.add_argument("--display-name", help="name shown in Jupyter (default: from --name)")
    setup.add_argument("--image", help=f"image (default {DEFAULT_IMAGE})")
    where = setup.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into sys.prefix")
    where.add_argument("--prefix", metavar="PATH", help="install into PATH/share/jupyter")
    setup.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="HOST:DEST[:ro]",
        help="also mount HOST at DEST (repeatable; relative HOST is resolved now)",
    )
    workdir = setup.add_mutually_exclusive_group()
    workdir.add_argument(
        "--copy-workdir",
        action="store_true",
        help="give the kernel a private copy of the notebook's directory",
    )
    workdir.add_argument("--no-workdir", action="store_true", help="mount no work directory at all")
    setup.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set in the kernel"
    )
    setup.add_argument("--python", help="the image's Python (default python3)")
    setup.add_argument(
        "--kernel-cmd",
        nargs=argparse.REMAINDER,
        help="the in-container kernel command (must contain {connection_file}); takes the "
        "rest of the line",
    )
    setup.add_argument(
        "--kernel-spec-in-image",
        metavar="NAME",
        help="run the image's own kernelspec NAME (e.g. ir for IRkernel) instead of ipykernel",
    )
    setup.add_argument(
        "--kernel-transport",
        choices=("ipc", "tcp"),
        help="tcp for a kernel that cannot bind unix sockets: it listens on the container's "
        "loopback and the supervisor bridges [ipc]",
    )
    setup.add_argument(
        "--docker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="pass ARG verbatim to docker run (repeatable; use --docker-arg=--flag)",
    )
    setup.add_argument(
        "--workdir-readonly", action="store_true", help="mount the notebook's directory read-only"
    )
    setup.add_argument(
        "--kernel-user",
        metavar="UID[:GID]",
        help="run the kernel as this dedicated uid (default: yours; 65534 under root)",
    )
    setup.add_argument("--runtime", help="OCI runtime, e.g. runsc for gVisor (checked now)")
    add_engine_options(setup)
    limits = setup.add_argument_group(
        "limits (built-in defaults in brackets; jupyter_docker_kernel_config.py may change them)"
    )
    for flag, field, kind, text in LIMIT_OPTIONS:
        limits.add_argument(
            flag,
            dest=field,
            type=kind,
            help=f"{text} [{getattr(DEFAULTS, field)}]",
        )
    nbgrader = setup.add_argument_group("grading with nbgrader")
    nbgrader.add_argument(
        "--for-nbgrader",
        action="store_true",
        help="grading profile (network none, --copy-workdir, --max-lifetime "
        f"{grading.PROFILE['max_lifetime']:g}) and print the nbgrader_config.py lines",
    )
    nbgrader.add_argument(
        "--write-nbgrader-config",
        metavar="PATH",
        type=Path,
        help="also add those lines to PATH (a marked block; implies --for-nbgrader)",
    )
    nbgrader.add_argument(
        "--cell-timeout",
        type=int,
        metavar="SECONDS",
        help=f"ExecutePreprocessor.timeout in those lines [{grading.DEFAULT_TIMEOUT}]",
    )
    setup.add_argument(
        "--interrupt-mode",
        choices=kernelspec.INTERRUPT_MODES,
        help="how Jupyter interrupts the kernel [signal, or the image kernelspec's]",
    )
    setup.add_argument(
        "--provisioner",
        action="store_true",
        help="also name our kernel provisioner: Jupyter Server and nbclient then manage the "
        "container directly, with no relay (VS Code keeps using the launcher)",
    )
    setup.add_argument("--replace", action="store_true", help="overwrite an existing kernelspec")
    setup.add_argument(
        "--skip-checks", action="store_true", help="do not check the engine and image first"
    )
    setup.set_defaults(func=cmd_setup)

    image = sub.add_parser("image", help="build the default kernel image offline")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION")
    build = image_sub.add_parser(
        "build", help="build an image from Debian packages and PyPI wheels (no registry needed)"
    )
    build.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    build.add_argument(
        "--packages", nargs="*", default=[], metavar="PKG", help="extra PyPI packages"
    )
    build.add_argument(
        "--apt-packages", nargs="*", default=[], metavar="PKG", help="extra Debian packages"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(func=cmd_image_build)
    kernels = image_sub.add_parser(
        "kernels", help="list the kernelspecs inside an image (for setup --kernel-spec-in-image)"
    )
    kernels.add_argument("image", help="the image to look into")
    kernels.add_argument("--python", default="python3", help="the image's Python")
    kernels.set_defaults(func=cmd_image_kernels)

    gc = sub.add_parser("gc", help="remove containers and files of launchers that are gone")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument(
        "--pools", action="store_true", help="also remove warm-pool containers nobody claimed"
    )
    gc.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_engine_options(gc)
    gc.set_defaults(func=cmd_gc)
    add_manage_commands(sub)
    return parser


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """--engine-host / --podman: which engine API to use (default: DOCKER_HOST or Docker's)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--engine-host",
        metavar="URL",
        help="engine API address, as DOCKER_HOST (e.g. unix:///run/podman/podman.sock); "
        "setup stores it in the kernelspec",
    )
    group.add_argument(
        "--podman",
        action="store_true",
        help="use Podman's Docker-compatible API socket (root's, or your rootless one)",
    )


def engine_host(args: argparse.Namespace) -> str | None:
    """The engine address the options ask for; None leaves DOCKER_HOST to the environment."""
    if getattr(args, "podman", False):
        return podman_socket()
    host: str | None = getattr(args, "engine_host", None)
    return host


def add_manage_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """list / show / remove / doctor: our installed kernelspecs (manage.py, doctor.py)."""
    listing = sub.add_parser("list", help="our kernelspecs: image (present or not) and limits")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a kernelspec's settings and its exact docker run command")
    show.add_argument("name", help="kernel name")
    show.set_defaults(func=cmd_show)
    remove = sub.add_parser("remove", help="delete one of our kernelspecs")
    remove.add_argument("name", help="kernel name")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    remove.set_defaults(func=cmd_remove)
    doctor = sub.add_parser(
        "doctor",
        help="check the engine, runtimes, runtime dir and kernelspecs; exit 1 on any FAIL",
    )
    doctor.add_argument("name", nargs="?", help="check only this kernelspec")
    doctor.add_argument(
        "--no-probe", action="store_true", help="do not start a probe container per image"
    )
    doctor.set_defaults(func=cmd_doctor)
    for command in (listing, show, remove, doctor):
        command.add_argument("--json", action="store_true", help="print JSON instead of text")


def settings_from_args(
    args: argparse.Namespace, defaults: config.ConfigDefaults | None = None
) -> KernelSettings:
    """Built-in defaults < config file < --for-nbgrader profile < options given on the line.

    An option given replaces the config file's value; --env adds to (and overrides by name)
    the config file's env.
    """
    values: dict[str, Any] = dict(defaults.values) if defaults else {}
    if args.for_nbgrader or args.write_nbgrader_config:
        values.update(grading.PROFILE)
    cwd = os.getcwd()
    mounts = tuple(Mount.parse(m, cwd) for m in args.mount)
    for m in mounts:
        if not os.path.exists(m.source):
            raise SettingsError(
                f"--mount source {m.source} does not exist. No kernelspec was written. "
                "Create it first, or fix the path."
            )
    if args.copy_workdir or args.no_workdir:
        values["workdir"] = "copy" if args.copy_workdir else "none"
    if args.workdir_readonly:
        values["workdir_readonly"] = True
    if args.env:
        values["env"] = tuple({**dict(values.get("env", ())), **dict(parse_env(args.env))}.items())
    given: dict[str, Any] = {
        "image": args.image,
        "mounts": mounts or None,
        "kernel_cmd": tuple(args.kernel_cmd) if args.kernel_cmd else None,
        "python": args.python,
        "docker_args": tuple(args.docker_arg) or None,
        "runtime": args.runtime,
        "kernel_user": args.kernel_user,
        "engine_host": engine_host(args),
        "kernel_transport": args.kernel_transport,
        **{field: getattr(args, field) for _, field, _, _ in LIMIT_OPTIONS},
    }
    values.update({k: v for k, v in given.items() if v is not None})
    return KernelSettings(**values)


def probe_user() -> str:
    """The uid:gid probe containers run as: the caller's, never root."""
    return "65534:65534" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"


def with_image_kernel(
    engine: Engine, settings: KernelSettings, name: str
) -> tuple[KernelSettings, image_kernels.ImageKernelSpec]:
    """Settings whose kernel is the image's own kernelspec `name` (--kernel-spec-in-image).

    Its argv becomes kernel_cmd; its env comes first, so the user's --env wins.
    """
    if settings.kernel_cmd:
        raise SettingsError(
            "--kernel-spec-in-image and --kernel-cmd both name the kernel's command. "
            "No kernelspec was written. Pass only one of them."
        )
    prefix, specs = image_kernels.find_in_image(engine, settings, probe_user())
    spec = image_kernels.pick(specs, name, settings.image)
    env = dict(spec.env)
    env.update(settings.env)
    changed = dataclasses.replace(
        settings,
        kernel_cmd=image_kernels.command_for(spec, prefix),
        kernel_spec_in_image=spec.name,
        env=tuple(env.items()),
    )
    return changed, spec


def check_image(engine: Engine, settings: KernelSettings) -> str:
    """Fail unless the engine answers, the image exists and can run the kernel's Python."""
    engine.info()
    if settings.runtime and settings.runtime not in engine.runtimes():
        raise SettingsError(
            f"The engine has no runtime '{settings.runtime}' (it has: "
            f"{', '.join(sorted(engine.runtimes()))}). No kernelspec was written. Register "
            "it in /etc/docker/daemon.json (scripts/bootstrap-engine --runsc does this for "
            "gVisor) and restart the engine."
        )
    engine.require_image(settings.image)
    proc = engine.run(hardening.probe_args(settings, probe_user()), check=False, timeout=120)
    # No output is failure too: Podman 4.3 reports exit code 0 for any `run --rm`.
    if proc.returncode != 0 or not proc.stdout.strip():
        what = "ipykernel" if not settings.kernel_cmd else settings.python
        raise ImageError(
            f"Image '{settings.image}' cannot run {what} as an unprivileged user "
            f"(`{settings.python} -c 'import ipykernel'` exited {proc.returncode}: "
            f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}). "
            "No kernelspec was written. Use an image with Python and ipykernel installed "
            "(jupyter-docker-kernel image build), or pass --python PATH."
        )
    versions = proc.stdout.strip()
    release = versions.rsplit(" ", 1)[-1]
    if settings.runtime and "runsc" in settings.runtime and release == os.uname().release:
        raise SettingsError(
            f"Runtime '{settings.runtime}' was asked for, but the probe container saw the "
            f"host's own kernel ({release}), so it is not sandboxing. No kernelspec was "
            "written. Check the runtime's entry in /etc/docker/daemon.json."
        )
    return versions


def engine_settings(engine: Engine, settings: KernelSettings) -> KernelSettings:
    """Record which engine setup checked: Podman's API takes some options differently, and
    the kernel must start where the image was found (DOCKER_HOST included)."""
    if engine.kind() != "podman":
        return settings
    facts = engine.podman_host()
    if facts.get("security", {}).get("rootless") and facts.get("cgroupVersion") == "v1":
        raise SettingsError(
            "Podman runs rootless on cgroup v1 here, where it ignores memory, CPU and "
            "process limits ('Resource limits are not supported and ignored on cgroups V1 "
            "rootless systems'). No kernelspec was written. Use rootful Podman "
            "(scripts/bootstrap-podman as root), Docker, or a host with cgroup v2."
        )
    host = settings.engine_host or os.environ.get("DOCKER_HOST") or None
    docker_args = settings.docker_args
    if not any("nproc" in arg for arg in docker_args):
        engine.require_image(settings.image)
        nproc = engine.default_nproc(settings.image, settings.python)
        if nproc is not None:
            docker_args = (*docker_args, f"--ulimit=nproc={nproc}:{nproc}")
    return dataclasses.replace(settings, engine="podman", engine_host=host, docker_args=docker_args)


def cmd_setup(args: argparse.Namespace, engine: Engine) -> int:
    defaults = config.load_defaults()
    try:
        settings = settings_from_args(args, defaults)
    except SettingsError as exc:
        if not defaults.files:
            raise
        raise SettingsError(f"{exc} (Defaults came from {', '.join(defaults.files)}.)") from exc
    name = kernelspec.validate_name(args.name)
    for_nbgrader = bool(args.for_nbgrader or args.write_nbgrader_config)
    timeout = grading.DEFAULT_TIMEOUT if args.cell_timeout is None else args.cell_timeout
    if for_nbgrader:
        grading.check_timeout(timeout, settings.max_lifetime)
    elif args.cell_timeout is not None:
        raise SettingsError(
            "--cell-timeout only sets the nbgrader_config.py lines. No kernelspec was written. "
            "Add --for-nbgrader, or leave it out."
        )
    if args.write_nbgrader_config:
        grading.check_config_file(args.write_nbgrader_config)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    versions = ""
    if settings.engine_host and settings.engine_host != engine.host:
        engine = Engine(engine.command, host=settings.engine_host)  # from a config file
    in_image = None
    if args.kernel_spec_in_image:
        # Even with --skip-checks: the command can only come from the image.
        settings, in_image = with_image_kernel(engine, settings, args.kernel_spec_in_image)
    if not args.skip_checks:
        settings = engine_settings(engine, settings)
        versions = check_image(engine, settings)
    elif args.podman:
        settings = dataclasses.replace(settings, engine="podman")
    default_display = f"{in_image.display_name if in_image else name} (container)"
    data = kernelspec.build_kernel_json(
        settings,
        display_name=args.display_name or default_display,
        interrupt_mode=args.interrupt_mode or (in_image.interrupt_mode if in_image else "signal"),
        language=in_image.language if in_image else None,
        provisioner=args.provisioner,
    )
    path = kernelspec.install(name, data, user=args.user, prefix=prefix, replace=args.replace)
    print(f"Installed kernelspec {name} in {path}")
    for used in defaults.files:
        print(f"  defaults from {used}")
    if versions:
        py, ipk, release = [*versions.split(), "?", "?"][:3]
        runtime = f", runtime {settings.runtime} (kernel {release})" if settings.runtime else ""
        if in_image is None:
            print(f"  image {settings.image}: Python {py}, ipykernel {ipk}{runtime}")
        else:
            print(f"  image {settings.image}: Python {py} (for the supervisor){runtime}")
    if in_image is not None:
        command = " ".join(settings.kernel_cmd)
        print(f"  kernel '{in_image.name}' from the image ({in_image.language}): {command}")
    print(
        f"  network {settings.network}, memory {settings.memory}, cpus {settings.cpus:g}, "
        f"pids {settings.pids_limit}, workdir {settings.workdir}"
        f"{' (read-only)' if settings.workdir_readonly else ''}, "
        f"lifetime {settings.max_lifetime:g} s"
    )
    if settings.engine_host or settings.engine != "docker":
        print(f"  engine {settings.engine} at {settings.engine_host or 'the default socket'}")
    if args.provisioner:
        print(
            "  warning: clients that use the provisioner (Jupyter Server, nbclient) talk to "
            "the kernel's sockets directly: --max-message and --output-budget apply only "
            "to clients that run the launcher (VS Code)."
        )
    if settings.kernel_transport == "tcp":
        print("  transport tcp on the container's loopback, bridged to unix sockets")
    for m in settings.mounts:
        exposed = [n for n in NBGRADER_MARKERS if os.path.lexists(os.path.join(m.source, n))]
        if exposed and not m.read_only:
            print(
                f"  warning: --mount {m.to_spec()} exposes {', '.join(exposed)} writable "
                "to the kernel; add :ro, or mount a directory without nbgrader's files."
            )
    if os.getuid() == 0 and settings.workdir == "mount":
        print(
            "  note: as root, kernels run as uid 65534 and cannot write directories root "
            "owns (such as nbgrader's autograded/); for grading, use --for-nbgrader."
        )
    if for_nbgrader:
        lines = grading.config_lines(name, timeout)
        target = args.write_nbgrader_config
        if target:
            done = grading.write_config_file(target, lines)
            print(f"{done} {target}:")
        else:
            print("Add to nbgrader_config.py (or rerun with --write-nbgrader-config PATH):")
        print("\n".join(f"  {line}" for line in lines))
        print("Then: nbgrader autograde ASSIGNMENT")
        return 0
    print("Use it with:")
    if settings.workdir == "mount":
        # Never suggest grading with a kernel that can write the directory nbgrader writes
        # back into: it can leave links there that nbgrader follows (the launcher refuses
        # such a start anyway, see launcher.refuse_grading_mount).
        print(
            "  not with nbgrader: this kernel mounts the notebook's directory, so submitted "
            "code could leave links there that nbgrader follows when it writes grades back. "
            f"For grading, run: jupyter-docker-kernel setup --for-nbgrader --name {name}-grading"
        )
    else:
        print(f"  nbgrader autograde ASSIGNMENT --ExecutePreprocessor.kernel_name={name}")
    # nbconvert has no --kernel option: the kernel name is the preprocessor's setting.
    print(
        "  jupyter nbconvert --execute --to notebook NB.ipynb "
        f"--ExecutePreprocessor.kernel_name={name}"
    )
    return 0


def cmd_image_build(args: argparse.Namespace, engine: Engine) -> int:
    from jupyter_docker_kernel import image

    recipe = image.default_recipe(pip_packages=args.packages, apt_packages=args.apt_packages)
    started = time.monotonic()
    result = image.build_image(
        engine,
        recipe,
        tag=args.tag,
        force=args.force,
        progress=lambda line: print(line, flush=True),
    )
    verb = "Reused" if result.reused else "Built"
    print(
        f"{verb} {result.tag} ({result.image_id[:19]}, recipe {result.digest[:12]}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0


def cmd_image_kernels(args: argparse.Namespace, engine: Engine) -> int:
    settings = KernelSettings(image=args.image, python=args.python)
    _, specs = image_kernels.find_in_image(engine, settings, probe_user())
    if not specs:
        print(f"Image {args.image} has no kernelspecs in Jupyter's data paths.")
    for spec in specs.values():
        language = f" (language {spec.language})" if spec.language else ""
        print(f'{spec.name}: "{spec.display_name}"{language}: {" ".join(spec.argv)}')
    return 0


def cmd_gc(args: argparse.Namespace, engine: Engine) -> int:
    result = reaper.collect(engine, dry_run=args.dry_run, pools=args.pools)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **dataclasses.asdict(result)}, indent=1))
        return 0
    verb = "Would remove" if args.dry_run else "Removed"
    for name in result.containers:
        print(f"{verb} container {name}")
    for path in result.dirs:
        print(f"{verb} {path}")
    print(
        f"{verb} {len(result.containers)} container(s) and {len(result.dirs)} runtime dir(s); "
        f"{result.kept} kernel(s) still running were kept."
    )
    return 0


def format_list(specs: list[manage.SpecInfo], note: str = "") -> list[str]:
    """`list` as a table: name, image, present?, limits, path; unreadable specs say why."""
    present = {True: "yes", False: "MISSING", None: "?"}
    rows = [("NAME", "IMAGE", "PRESENT", "LIMITS", "PATH")]
    for s in specs:
        if s.settings is None:
            rows.append((s.name, "-", "-", f"unreadable: {s.error}", s.path))
            continue
        lim = s.limits()
        limits = (
            f"net {lim['network']}, mem {lim['memory']}, cpus {lim['cpus']:g}, "
            f"pids {lim['pids_limit']}, runtime {lim['runtime']}, workdir {lim['workdir']}"
        )
        rows.append((s.name, s.image, present[s.image_present], limits, s.path))
    if not specs:
        return ["No jupyter-docker-kernel kernelspecs installed; add one with setup."]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    if note:
        lines.append(f"note: {note}")
    return [line.rstrip() for line in lines]


def cmd_list(args: argparse.Namespace, engine: Engine) -> int:
    specs, note = manage.list_specs(engine)
    if args.json:
        print(
            json.dumps(
                {"kernelspecs": [s.to_json() for s in specs], "note": note or None}, indent=1
            )
        )
        return 0
    print("\n".join(format_list(specs, note)))
    return 0


def format_show(info: manage.SpecInfo, args: list[str], program: str) -> list[str]:
    """`show`: where the spec is, every setting (defaults included), the docker run command."""
    assert info.settings is not None
    lines = [f"{info.name}: {info.display_name}", f"  path      {info.path}"]
    lines.append(f"  launcher  {info.launcher_python} -m {kernelspec.LAUNCHER_MODULE}")
    lines.append("settings (* = chosen at setup, the rest are defaults):")
    for key, value in dataclasses.asdict(info.settings).items():
        mark = "*" if getattr(info.settings, key) != getattr(DEFAULTS, key) else " "
        lines.append(f"  {mark} {key:<17} {json.dumps(value)}")
    lines.append(
        f"docker run command ({manage.PLACEHOLDER_KERNEL_ID}/{manage.PLACEHOLDER_NONCE}, "
        "START and HOST are filled in per start; the work dir is the notebook's):"
    )
    # The kernelspec's engine, so the pasted command reaches the same one (Podman's, say).
    host = f"DOCKER_HOST={info.settings.engine_host} " if info.settings.engine_host else ""
    lines.append(f"  {host}{program} {args[0]} \\")
    lines += [f"    {part} \\" for part in option_lines(args[1:], info.settings)]
    lines[-1] = lines[-1].removesuffix(" \\")
    if info.settings.pool:
        lines.append(
            f"note: with pool {info.settings.pool}, a start usually claims a warm container "
            "started ahead with these arguments (--detach, no connection file, a claim socket)."
        )
    return lines


def option_lines(args: list[str], settings: KernelSettings) -> list[str]:
    """Shell-quoted `docker run` options, one option and its value per line, then the
    image, then the container's command on one line (line breaks only: pasteable)."""
    tail = next(
        (
            i
            for i in range(len(args) - 2)
            if args[i] == settings.image
            and args[i + 1 : i + 3] == [settings.python, hardening.SUPERVISOR_TARGET]
        ),
        len(args),
    )
    out: list[str] = []
    i = 0
    while i < tail:
        arg = args[i]
        takes_value = arg.startswith("--") and "=" not in arg and i + 1 < tail
        if takes_value and not args[i + 1].startswith("-"):
            out.append(hardening.quote_command(arg, [args[i + 1]]))
            i += 2
        else:
            out.append(hardening.quote_command(arg, ()))
            i += 1
    if tail < len(args):
        out += [
            hardening.quote_command(args[tail], ()),
            hardening.quote_command(args[tail + 1], args[tail + 2 :]),
        ]
    return out


def cmd_show(args: argparse.Namespace, engine: Engine) -> int:
    info = manage.find(args.name)
    if info.settings is None:
        raise SettingsError(f"Kernelspec '{info.name}' in {info.path} cannot be read: {info.error}")
    run_args = manage.effective_args(info.settings)
    if args.json:
        data = info.to_json()
        data["settings_effective"] = dataclasses.asdict(info.settings)
        data["docker_argv"] = [engine.command, *run_args]
        print(json.dumps(data, indent=1))
        return 0
    print("\n".join(format_show(info, run_args, engine.command)))
    return 0


def cmd_remove(args: argparse.Namespace, engine: Engine) -> int:
    info = manage.find(args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise KernelSpecError(
                f"Not removing '{info.name}' ({info.path}) without confirmation. "
                "Nothing was removed. Pass -y to remove it."
            )
        answer = input(f"Remove kernelspec {info.name} ({info.path})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing was removed.")
            return 1
    manage.remove(info.name)
    if args.json:
        print(json.dumps({"removed": info.name, "path": info.path}))
    else:
        print(f"Removed kernelspec {info.name} ({info.path})")
    return 0


def cmd_doctor(args: argparse.Namespace, engine: Engine) -> int:
    report = doctor.run_checks(engine, args.name, probe=not args.no_probe)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print("\n".join(doctor.format_report(report)))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse argv, run one subcommand, return its exit code (0 ok, 1 our error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args, Engine(host=engine_host(args))))
    except DockerKernelError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing more was done", file=sys.stderr)
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
