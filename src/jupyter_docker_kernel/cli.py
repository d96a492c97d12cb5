"""Argument parsing for `jupyter-docker-kernel`; the only module that prints for humans.

`main(argv) -> int` is what tests call; `run()` is the console script. Every subcommand
builds settings, calls one module that does the job, and prints what happened. Errors of
our family become one line on stderr and exit code 1 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

from jupyter_docker_kernel import __version__, hardening, image_kernels, kernelspec, reaper
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError, ImageError, SettingsError
from jupyter_docker_kernel.launcher import NBGRADER_MARKERS
from jupyter_docker_kernel.settings import (
    DEFAULT_IMAGE,
    KernelSettings,
    Mount,
    WorkdirMode,
    parse_env,
)

DEFAULTS = KernelSettings()
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
    setup.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
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
    setup.add_argument("--python", default="python3", help="the image's Python (default python3)")
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
        default="ipc",
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
    limits = setup.add_argument_group("limits (defaults in brackets)")
    for flag, field, kind, text in LIMIT_OPTIONS:
        limits.add_argument(
            flag,
            dest=field,
            type=kind,
            default=getattr(DEFAULTS, field),
            help=f"{text} [{getattr(DEFAULTS, field)}]",
        )
    setup.add_argument(
        "--interrupt-mode",
        choices=kernelspec.INTERRUPT_MODES,
        help="how Jupyter interrupts the kernel [signal, or the image kernelspec's]",
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
    gc.set_defaults(func=cmd_gc)
    return parser


def settings_from_args(args: argparse.Namespace) -> KernelSettings:
    cwd = os.getcwd()
    mounts = tuple(Mount.parse(m, cwd) for m in args.mount)
    for m in mounts:
        if not os.path.exists(m.source):
            raise SettingsError(
                f"--mount source {m.source} does not exist. No kernelspec was written. "
                "Create it first, or fix the path."
            )
    workdir: WorkdirMode = "copy" if args.copy_workdir else "none" if args.no_workdir else "mount"
    return KernelSettings(
        image=args.image,
        workdir=workdir,
        mounts=mounts,
        env=parse_env(args.env),
        kernel_cmd=tuple(args.kernel_cmd or ()),
        python=args.python,
        docker_args=tuple(args.docker_arg),
        runtime=args.runtime,
        kernel_user=args.kernel_user,
        workdir_readonly=args.workdir_readonly,
        kernel_transport=args.kernel_transport,
        **{field: getattr(args, field) for _, field, _, _ in LIMIT_OPTIONS},
    )


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
    if proc.returncode != 0:
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


def cmd_setup(args: argparse.Namespace, engine: Engine) -> int:
    settings = settings_from_args(args)
    name = kernelspec.validate_name(args.name)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    versions = ""
    in_image = None
    if args.kernel_spec_in_image:
        # Even with --skip-checks: the command can only come from the image.
        settings, in_image = with_image_kernel(engine, settings, args.kernel_spec_in_image)
    if not args.skip_checks:
        versions = check_image(engine, settings)
    default_display = f"{in_image.display_name if in_image else name} (container)"
    data = kernelspec.build_kernel_json(
        settings,
        display_name=args.display_name or default_display,
        interrupt_mode=args.interrupt_mode or (in_image.interrupt_mode if in_image else "signal"),
        language=in_image.language if in_image else None,
    )
    path = kernelspec.install(name, data, user=args.user, prefix=prefix, replace=args.replace)
    print(f"Installed kernelspec {name} in {path}")
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
            "owns (such as nbgrader's autograded/); for grading, --copy-workdir is safer."
        )
    print("Use it with:")
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
        return int(args.func(args, Engine()))
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
