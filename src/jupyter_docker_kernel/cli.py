"""Argument parsing for `jupyter-docker-kernel`; the only module that prints for humans.

`main(argv) -> int` is what tests call; `run()` is the console script. Every subcommand
builds settings, calls one module that does the job, and prints what happened. Errors of
our family become one line on stderr and exit code 1 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from jupyter_docker_kernel import (
    __version__,
    config,
    doctor,
    grading,
    hardening,
    image_kernels,
    kernelspec,
    manage,
    node_manage,
    pool,
    reaper,
    running,
    thin,
)
from jupyter_docker_kernel import setup as setup_mod
from jupyter_docker_kernel.engine import Engine, podman_socket
from jupyter_docker_kernel.errors import (
    DockerKernelError,
    KernelSpecError,
    SettingsError,
)
from jupyter_docker_kernel.kernel_log import printable as launcher_printable
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


class UsageError(Exception):
    """A command line argparse refuses; main() prints it as one line and returns 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the --help to read, not the usage
    wall (setup's usage alone is 20 lines, and the error was at its end)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def help_command(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """The `... --help` that documents what argv tried: the deepest subcommand named in it
    (argparse reports unknown options from the top parser, whose help lists none)."""
    words = [parser.prog]
    current = parser
    for arg in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and arg in subs[0].choices:
            current = subs[0].choices[arg]
            words.append(arg)
    return " ".join([*words, "--help"])


def add_debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept --debug after the subcommand too (`setup ... --debug`), as people type it.

    SUPPRESS: a subcommand that is not given --debug must not reset the top-level one.
    """
    for action in parser._actions:  # argparse has no public walk over its subcommands
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument(
                    "--debug", action="store_true", default=argparse.SUPPRESS, help="as above"
                )
                add_debug_everywhere(child)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="jupyter-docker-kernel",
        description="Run Jupyter kernels in hardened containers while Jupyter stays on the host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and engine calls")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_setup_command(sub)
    add_image_commands(sub)
    add_gc_command(sub)
    add_manage_commands(sub)
    add_grade_command(sub)
    add_debug_everywhere(parser)
    return parser


def add_setup_command(sub: argparse._SubParsersAction[Parser]) -> None:
    """setup: write a kernelspec (setup.py does the checks, cmd_setup prints)."""
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
        help="also mount HOST at DEST (repeatable; relative HOST is resolved now, "
        "{project}/PATH and {notebook_dir}/PATH at each start)",
    )
    setup.add_argument(
        "--workdir-root",
        metavar="git|PATH|..N",
        help="mount the notebook's project root, not just its directory (which stays the "
        "cwd): its git work tree, the directory PATH, or N levels up",
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
        metavar="UID[:GID]|owner",
        help="run the kernel as this dedicated uid (default: yours; 65534 under root); "
        "'owner': as root, the uid:gid owning the notebook's directory (never 0)",
    )
    setup.add_argument("--runtime", help="OCI runtime, e.g. runsc for gVisor (checked now)")
    setup.add_argument(
        "--keep-entrypoint",
        action="store_true",
        help="run the image's ENTRYPOINT before the kernel (it must exec its arguments); by "
        "default it is cleared and the supervisor is the command",
    )
    setup.add_argument(
        "--pin",
        action="store_true",
        help="refer to the image by the ID it has now (sha256:...), so rebuilding or "
        "retagging it does not change this kernel",
    )
    setup.add_argument(
        "--gpus",
        metavar="all|N|device=IDS",
        help="GPUs for the kernel, as docker run --gpus takes them (Docker with the NVIDIA "
        "Container Toolkit; checked now)",
    )
    add_engine_options(setup)
    add_kube_options(setup)
    setup.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="ssh://USER@HOST[:PORT]",
        help="run the kernels on remote nodes over SSH, each start on the least-loaded one "
        "that answers (repeatable; docs/nodes.md)",
    )
    setup.add_argument(
        "--node-shared-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory every node sees at the same path (a shared filesystem): a work "
        "dir below it may be mounted on a node (repeatable; docs/nodes.md)",
    )
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
        f"{grading.PROFILE['max_lifetime']:g}, --output-budget "
        f"{grading.PROFILE['output_budget']}, --max-message {grading.PROFILE['max_message']}) "
        "and print the nbgrader_config.py lines",
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
        "container themselves, with no launcher process (VS Code keeps using the launcher)",
    )
    setup.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing kernelspec, keeping its settings but those given",
    )
    setup.add_argument(
        "--reset",
        action="store_true",
        help="with --replace: start from the defaults, not the existing spec's settings",
    )
    setup.add_argument(
        "--skip-checks", action="store_true", help="do not check the engine and image first"
    )
    setup.add_argument(
        "--force",
        action="store_true",
        help="accept what setup otherwise refuses: a mount of the engine's socket or over "
        "a path the kernel needs (each still printed as a warning)",
    )
    setup.set_defaults(func=cmd_setup)


def add_kube_options(setup: argparse.ArgumentParser) -> None:
    """--kubernetes and its options: each kernel a pod (docs/kubernetes.md)."""
    kube = setup.add_argument_group("Kubernetes (pip install 'jupyter-docker-kernel[kubernetes]')")
    kube.add_argument(
        "--kubernetes",
        action="store_true",
        help="run each kernel as a hardened pod (checks the API, RBAC and RuntimeClass now)",
    )
    kube.add_argument("--namespace", metavar="NS", help="the kernel pods' namespace [default]")
    kube.add_argument("--kube-context", metavar="CTX", help="kubeconfig context [current]")
    kube.add_argument(
        "--kube-pull",
        choices=("Never", "IfNotPresent", "Always"),
        help="the pods' imagePullPolicy [Never: the image is on the nodes]",
    )
    kube.add_argument(
        "--kube-pvc",
        metavar="CLAIM:PATH[:ro]",
        help="mount this PersistentVolumeClaim at PATH (the notebook's directory is below it)",
    )


def kube_given(args: argparse.Namespace) -> dict[str, Any]:
    """setup's Kubernetes options as KernelSettings fields (None: not given)."""
    kube = bool(getattr(args, "kubernetes", False))
    extra = [
        o for o in ("namespace", "kube_context", "kube_pull", "kube_pvc") if getattr(args, o, None)
    ]
    if extra and not kube:
        raise SettingsError(
            f"--{extra[0].replace('_', '-')} goes with --kubernetes",
            "No kernelspec was written",
            "Add --kubernetes.",
        )
    if not kube:
        return {}
    return {
        "kube_namespace": args.namespace or "default",
        "kube_context": args.kube_context,
        "kube_pull": args.kube_pull,
        "kube_pvc": args.kube_pvc,
    }


def add_image_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    """image build / kernels / check: the kernel image (image.py, image_kernels.py,
    image_check.py)."""
    image = sub.add_parser("image", help="build the default kernel image offline")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION")
    build = image_sub.add_parser(
        "build",
        help="build an image from Debian packages and PyPI wheels (no registry needed), or "
        "add a course's packages to an image you have",
        description="Without --from: the default recipe (Debian root filesystem + a venv "
        "with ipykernel) plus your packages. With --from IMAGE: your pip packages layered "
        "onto IMAGE. Adding packages needs a --tag of its own: the default tag is shared by "
        "every kernel set up without --image.",
    )
    build.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    build.add_argument(
        "--packages", nargs="*", default=[], metavar="PKG", help="extra PyPI packages"
    )
    build.add_argument(
        "--apt-packages", nargs="*", default=[], metavar="PKG", help="extra Debian packages"
    )
    build.add_argument(
        "--requirements",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a requirements.txt of PyPI packages (repeatable; -r lines are followed)",
    )
    build.add_argument(
        "--apt-file", type=Path, metavar="FILE", help="an apt.txt of Debian packages"
    )
    build.add_argument(
        "--environment",
        type=Path,
        metavar="FILE",
        help="an environment.yml: its pip section and the conda dependencies PyPI has",
    )
    build.add_argument(
        "--from",
        dest="from_image",
        metavar="IMAGE",
        help="layer the pip packages onto IMAGE (local, never pulled) instead of building "
        "the default recipe",
    )
    build.add_argument(
        "--python", default="python3", help="with --from: the image's Python [python3]"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.set_defaults(func=cmd_image_build)
    kernels = image_sub.add_parser(
        "kernels", help="list the kernelspecs inside an image (for setup --kernel-spec-in-image)"
    )
    kernels.add_argument("image", help="the image to look into")
    kernels.add_argument("--python", default="python3", help="the image's Python")
    kernels.set_defaults(func=cmd_image_kernels)
    checking = image_sub.add_parser(
        "check",
        help="say what an image of your own lacks to run kernels (python3, ipykernel, any "
        "uid, read-only root)",
    )
    checking.add_argument("image", help="the image to check (never pulled)")
    checking.add_argument("--python", default="python3", help="the image's Python")
    checking.add_argument(
        "--keep-entrypoint",
        action="store_true",
        help="check with the image's ENTRYPOINT kept, as setup --keep-entrypoint runs it",
    )
    checking.add_argument("--json", action="store_true", help="print JSON instead of text")
    checking.set_defaults(func=cmd_image_check)
    pushing = image_sub.add_parser(
        "push",
        help="copy an image to remote nodes over SSH (docker save | docker load), only "
        "where the node's image ID differs",
    )
    pushing.add_argument("nodes", nargs="+", metavar="NODE", help="ssh://user@host[:port]")
    pushing.add_argument(
        "--tag", default=DEFAULT_IMAGE, help=f"the image (default {DEFAULT_IMAGE})"
    )
    pushing.set_defaults(func=cmd_image_push)


def add_gc_command(sub: argparse._SubParsersAction[Parser]) -> None:
    """gc: remove what launchers that are gone left behind (reaper.py)."""
    gc = sub.add_parser("gc", help="remove containers and files of launchers that are gone")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument(
        "--pools",
        nargs="*",
        metavar="NAME",
        help="also remove warm-pool containers nobody claimed: all, or only those of the "
        "kernelspecs NAME (or the pool keys `remove` printed)",
    )
    gc.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_engine_options(gc)
    gc.set_defaults(func=cmd_gc)


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


def add_manage_commands(sub: argparse._SubParsersAction[Parser]) -> None:
    """list / show / remove / doctor: our installed kernelspecs (manage.py, doctor.py)."""
    listing = sub.add_parser("list", help="our kernelspecs: image (present or not) and limits")
    listing.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a kernelspec's settings and its exact docker run command")
    show.add_argument("name", help="kernel name")
    show.add_argument(
        "--as-command",
        action="store_true",
        help="print the setup command line that recreates this kernelspec",
    )
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
    doctor.add_argument(
        "--fix",
        action="store_true",
        help="first rewrite kernelspecs of earlier versions in the current, isolated form",
    )
    doctor.add_argument(
        "--broker",
        action="store_true",
        help="check the kernel broker instead: its policy, group, socket and engine (admins)",
    )
    doctor.add_argument("--policy", default=None, help="the broker's policy file to check")
    doctor.set_defaults(func=cmd_doctor)
    broker = sub.add_parser(
        "broker",
        help="(root) start hardened kernels for users who cannot reach the engine",
    )
    broker.add_argument("--socket", default=None, help="the socket users connect to")
    broker.add_argument("--policy", default=None, help="the policy file (TOML)")
    broker.add_argument("--group", default=None, help="the group whose members may connect")
    broker.set_defaults(func=cmd_broker)
    ps = sub.add_parser(
        "ps",
        help="running kernels: kernelspec, container, uptime, memory, pids, client, notebook dir",
    )
    add_engine_options(ps)
    ps.set_defaults(func=cmd_ps)
    logs = sub.add_parser("logs", help="a kernel's own output (its last 64 KiB) and exit reason")
    logs.add_argument("kernel", help="container name or id, or kernel id (a prefix will do)")
    logs.set_defaults(func=cmd_logs)
    for command in (listing, show, remove, doctor, ps, logs):
        command.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_grade_command(sub: argparse._SubParsersAction[Parser]) -> None:
    """grade: nbgrader's autograde of a class, N at a time (grade.py; the worker step
    --one/--into is grade_worker.py)."""
    grade = sub.add_parser(
        "grade",
        help="autograde a whole nbgrader assignment, several submissions at a time",
        description="In an nbgrader course directory: the same result as `nbgrader autograde "
        "ASSIGNMENT`, N submissions at a time, one consistent gradebook.db. nbgrader options "
        "(--Class.trait=value) pass through to every submission's autograde.",
    )
    grade.add_argument("assignment", help="the assignment id, as for nbgrader autograde")
    grade.add_argument(
        "--jobs", "-j", type=int, default=None, help="submissions at a time (default: CPUs)"
    )
    grade.add_argument(
        "--student", action="append", default=None, help="only this student (id or glob; repeat)"
    )
    grade.add_argument("--force", action="store_true", help="regrade what is graded already")
    grade.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    on_slurm = grade.add_argument_group("as a Slurm job array (slurm.py)")
    on_slurm.add_argument(
        "--slurm",
        action="store_true",
        help="one sbatch array task per submission; the results come back into gradebook.db",
    )
    on_slurm.add_argument(
        "--partition", metavar="P", help="Slurm partition (default: the cluster's)"
    )
    on_slurm.add_argument(
        "--array-limit",
        metavar="K",
        type=int,
        help="at most K tasks at once (sbatch --array=...%%K; default: as Slurm allows)",
    )
    on_nodes = grade.add_argument_group("across remote nodes (grade_nodes.py)")
    on_nodes.add_argument(
        "--node",
        metavar="ssh://USER@HOST[:PORT]",
        action="append",
        default=None,
        help="run the kernels on this node, as many at a time as it has CPUs (repeat; "
        "default: the nodes of the course's kernelspec, if it has any)",
    )
    grade.add_argument("--one", metavar="STUDENT", help=argparse.SUPPRESS)
    grade.add_argument("--into", metavar="DIR", help=argparse.SUPPRESS)
    grade.add_argument("--gradebook", metavar="SNAPSHOT", help=argparse.SUPPRESS)
    grade.set_defaults(func=cmd_grade, nbgrader_args=[])


#: An nbgrader (traitlets) option `grade` passes through: --Class.trait=value.
_TRAIT_OPTION = re.compile(r"--[A-Za-z_]\w*\.[A-Za-z_]\w*=.*")


def split_nbgrader_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`grade`'s argv without the nbgrader options, and those options (in order)."""
    commands = [i for i, a in enumerate(argv) if not a.startswith("-")]
    if not commands or argv[commands[0]] != "grade":
        return argv, []
    at = commands[0]
    passed = [a for a in argv[at + 1 :] if _TRAIT_OPTION.fullmatch(a)]
    return [*argv[: at + 1], *(a for a in argv[at + 1 :] if a not in passed)], passed


def cmd_grade(args: argparse.Namespace, engine: Engine) -> int:
    """Grade a class (the parent), or with --one, one submission (a worker)."""
    from jupyter_docker_kernel import grade, grade_display, grade_nodes, grade_worker, slurm

    if args.one or args.into:
        if not (args.one and args.into):
            raise DockerKernelError(
                "--one STUDENT and --into DIR go together", "Nothing was graded", "Give both."
            )
        gradebook = Path(args.gradebook) if args.gradebook else None
        return grade_worker.main(
            args.assignment, args.one, Path(args.into), gradebook, args.nbgrader_args
        )
    jobs = args.jobs or len(os.sched_getaffinity(0))
    if jobs < 1:
        raise DockerKernelError(
            f"--jobs must be at least 1, not {jobs}", "Nothing was graded", "Give --jobs 1 or more."
        )
    plan = grade.plan(
        args.assignment,
        students=args.student,
        force=args.force,
        nbgrader_args=tuple(args.nbgrader_args),
    )
    if args.slurm and args.node:
        raise DockerKernelError(
            "--slurm and --node do not go together",
            "Nothing was graded",
            "Give --slurm (Slurm's compute nodes) or --node (SSH nodes), not both.",
        )
    nodes = (
        None
        if args.slurm or not plan.students
        else grade_nodes.prepare(
            plan, args.node or [], lambda p, env: grade.LocalRunner(p, env=env)
        )
    )
    runner: grade.Runner
    array: slurm.ArrayRunner | None = None
    if nodes is not None:
        runner = nodes.runner
        # Each node takes as many as it has CPUs; --jobs, if given, caps the total.
        jobs = min(jobs, nodes.runner.capacity) if args.jobs else nodes.runner.capacity
    if args.slurm:
        # No local runner: its engine sweep and resident refiller would serve nobody here.
        slurm.preflight(args.partition)
        array = slurm.ArrayRunner(
            lambda student, into: grade.worker_argv(plan, student, into),
            plan.spool.with_name(f"{plan.assignment}.slurm"),
            partition=args.partition,
            limit=args.array_limit,
            chdir=plan.root,
            job_name=f"grade-{plan.assignment}",
        )
        runner, jobs = array, max(1, len(plan.students))
    elif nodes is None:
        runner = grade.LocalRunner(plan)
    out = sys.stderr if args.json == "-" else sys.stdout
    for skipped in nodes.skipped if nodes is not None else []:
        print(f"node skipped: {skipped.why}", file=out)
    if plan.skipped:
        print(
            f"{len(plan.skipped)} submission(s) already graded, skipped (--force regrades)",
            file=out,
        )
    where = (
        f"as Slurm array tasks, {args.array_limit or 'as many as Slurm allows'} at a time"
        if args.slurm
        else f"{jobs} at a time"
    )
    if nodes is not None:
        where += " on " + ", ".join(f"{a.url} ({a.cpus} CPUs)" for a in nodes.used)
    print(f"grading {len(plan.students)} submission(s) of {plan.assignment}, {where}", file=out)
    began = time.monotonic()
    interrupted = False
    with grade_display.Display.for_stream(len(plan.students), out) as display:
        try:
            outcomes = grade.grade_class(plan, runner, jobs, display)
        except grade.GradingInterrupted as exc:
            outcomes, interrupted = exc.outcomes, True
        finally:
            if array is not None:
                array.close()
                with contextlib.suppress(OSError):
                    plan.spool.parent.rmdir()
            if nodes is not None:
                nodes.cleanup()
    grade_display.table(outcomes, out)
    data = grade.summary(plan, outcomes, time.monotonic() - began)
    if nodes is not None:
        for row in data["students"]:
            row["node"] = nodes.runner.placed.get(row["student"])
    if args.json == "-":
        print(json.dumps(data, indent=1))
    elif args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    if interrupted:
        print(
            "interrupted: finished students are in the gradebook; run grade again for the rest",
            file=sys.stderr,
        )
        return 130
    return 0 if all(o.status == "graded" for o in outcomes) else 1


def settings_from_args(
    args: argparse.Namespace,
    defaults: config.ConfigDefaults | None = None,
    previous: KernelSettings | None = None,
) -> KernelSettings:
    """Built-in defaults < config file < --for-nbgrader profile < options given on the line.

    An option given replaces the config file's value; --env adds to (and overrides by name)
    the config file's env. With `previous` (setup --replace: the settings of the spec being
    replaced) those take the place of the defaults and the config file, so only the
    options given change.
    """
    values: dict[str, Any] = dict(defaults.values) if defaults else {}
    if previous is not None:
        values = {f.name: getattr(previous, f.name) for f in dataclasses.fields(previous)}
        if args.kernel_cmd or args.kernel_spec_in_image:
            # A new kernel command: the old one (and the image kernel it came from) goes.
            values.pop("kernel_cmd", None)
            values.pop("kernel_spec_in_image", None)
    if args.for_nbgrader or args.write_nbgrader_config:
        values.update(grading.PROFILE)
    cwd = os.getcwd()
    mounts = tuple(Mount.parse(m, cwd) for m in args.mount)
    for m in mounts:
        if not m.template and not os.path.exists(m.source):
            raise SettingsError(
                f"--mount source {m.source} does not exist",
                "No kernelspec was written",
                "Create it first, or fix the path.",
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
        "gpus": args.gpus,
        "workdir_root": args.workdir_root,
        "kernel_user": args.kernel_user,
        "engine_host": engine_host(args) or (args.node[0] if args.node else None),
        "nodes": tuple(args.node) or None,
        "node_shared_paths": tuple(args.node_shared_path) or None,
        "kernel_transport": args.kernel_transport,
        "keep_entrypoint": args.keep_entrypoint or None,
        **{field: getattr(args, field) for _, field, _, _ in LIMIT_OPTIONS},
        **kube_given(args),
    }
    values.update({k: v for k, v in given.items() if v is not None})
    return KernelSettings(**values)


def setup_request(args: argparse.Namespace) -> setup_mod.SetupRequest:
    """The parsed `setup` options as setup.plan takes them."""
    return setup_mod.SetupRequest(
        name=kernelspec.validate_name(args.name),
        settings=lambda defaults, previous: settings_from_args(args, defaults, previous),
        user=args.user,
        prefix=sys.prefix if args.sys_prefix else args.prefix,
        replace=args.replace,
        reset=args.reset,
        for_nbgrader=bool(args.for_nbgrader or args.write_nbgrader_config),
        write_nbgrader_config=args.write_nbgrader_config,
        cell_timeout=args.cell_timeout,
        kernel_spec_in_image=args.kernel_spec_in_image,
        new_kernel_cmd=bool(args.kernel_cmd),
        skip_checks=args.skip_checks,
        force=args.force,
        pin=args.pin,
        podman=args.podman,
        display_name=args.display_name,
        interrupt_mode=args.interrupt_mode,
        provisioner=bool(args.provisioner),
    )


def cmd_setup(args: argparse.Namespace, engine: Engine) -> int:
    planned = setup_mod.plan(setup_request(args), engine)
    done = setup_mod.write(planned)
    name, settings, in_image = planned.request.name, planned.settings, planned.in_image
    print(f"Installed kernelspec {name} in {done.path}")
    print_upgrades(done.upgrades)
    if done.changes is not None:
        print(
            f"  changed: {'; '.join(done.changes)}"
            if done.changes
            else "  settings unchanged (--replace keeps what is not given; --reset does not)"
        )
    if name == kernelspec.NATIVE_KERNEL_NAME:
        print(
            f"  warning: '{name}' is the name of Jupyter's own Python kernel: every notebook "
            "that asks for python3 now runs in this container. Pick another --name to keep "
            "both."
        )
    for used in planned.config_files:
        print(f"  defaults from {used}")
    if planned.versions:
        py, ipk, release = [*planned.versions.split(), "?", "?"][:3]
        runtime = f", runtime {settings.runtime} (kernel {release})" if settings.runtime else ""
        if in_image is None:
            print(f"  image {settings.image}: Python {py}, ipykernel {ipk}{runtime}")
        else:
            print(f"  image {settings.image}: Python {py} (for the supervisor){runtime}")
    if args.pin:
        print(f"  pinned: image {settings.image} (the ID {args.image or DEFAULT_IMAGE} has now)")
    elif settings.image_id:
        short = settings.image_id[7:19]
        print(f"  image ID {short} recorded; list and doctor warn if the tag moves")
    if settings.keep_entrypoint:
        print("  the image's ENTRYPOINT is kept and runs the supervisor (--keep-entrypoint)")
    if in_image is not None:
        command = " ".join(settings.kernel_cmd)
        print(f"  kernel '{in_image.name}' from the image ({in_image.language}): {command}")
    if settings.workdir_root:
        print(
            f"  project root {settings.workdir_root} mounted at each start (--workdir-root), "
            "the notebook's directory the cwd"
        )
    print(
        f"  network {settings.network}, memory {settings.memory}, cpus {settings.cpus:g}, "
        f"pids {settings.pids_limit}, workdir {settings.workdir}"
        f"{' (read-only)' if settings.workdir_readonly else ''}, "
        f"lifetime {settings.max_lifetime:g} s"
    )
    if settings.gpus:
        checked = (
            "" if args.skip_checks else " (the engine started the kernel's container with them)"
        )
        print(f"  gpus {settings.gpus}{checked}")
    if len(settings.nodes) > 1:
        print(f"  nodes {', '.join(settings.nodes)} (each start on the least-loaded)")
    elif settings.engine_host or settings.engine != "docker":
        print(f"  engine {settings.engine} at {settings.engine_host or 'the default socket'}")
    if settings.kernel_transport == "tcp":
        print("  transport tcp on the container's loopback, bridged to unix sockets")
    if settings.kube_namespace is not None:
        context = f" (context {settings.kube_context})" if settings.kube_context else ""
        print(
            f"  kubernetes: each kernel a pod in namespace {settings.kube_namespace}{context}, "
            f"imagePullPolicy {settings.kube_pull}; see docs/kubernetes.md"
        )
    for warning in planned.warnings:
        print(f"  warning: {warning}")
    if planned.root_note:
        print(f"  {planned.root_note}")
    if planned.no_client:
        print(f"  thin client: python ({planned.no_client})")
    if planned.nbgrader_lines:
        target = args.write_nbgrader_config
        if target:
            print(f"{done.nbgrader_written} {target}:")
        else:
            print("Add to nbgrader_config.py (or rerun with --write-nbgrader-config PATH):")
        print("\n".join(f"  {line}" for line in planned.nbgrader_lines))
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

    origins: dict[str, str] = {}
    pip = list(args.packages)
    for path in args.requirements:
        pip += image.read_requirements(path, origins)
    if args.environment:
        found, notes = image.read_environment(args.environment, origins)
        pip += found
        for note in notes:
            print(f"note: {args.environment}: {note}")
    apt = list(args.apt_packages)
    if args.apt_file:
        apt += image.read_apt_file(args.apt_file)
    image.check_tag(args.tag, adds_packages=bool(pip or apt), layered=bool(args.from_image))
    if args.from_image and apt:
        raise SettingsError(
            "--apt-packages/--apt-file cannot go with --from: Debian packages go into the "
            "root filesystem, which only the default recipe's build makes (builds have no "
            "network). No image was built. Leave out --from to build the default recipe "
            "with them under --tag, or install them in the --from image."
        )
    started = time.monotonic()
    say = lambda line: print(line, flush=True)  # noqa: E731 - one-line progress sink
    # An image a kernelspec names by ID (setup --pin) is not removed when its tag moves
    # to the new build: that kernel still runs it.
    keep = {
        spec.settings.image
        for spec in manage.list_specs(None)[0]
        if spec.settings and spec.settings.image.startswith("sha256:")
    }
    if args.from_image:
        layer = image.layer_recipe(engine, args.from_image, pip, args.python)
        result = image.build_layer(
            engine, layer, tag=args.tag, force=args.force, progress=say, origins=origins, keep=keep
        )
    else:
        recipe = image.default_recipe(pip_packages=pip, apt_packages=apt)
        result = image.build_image(
            engine, recipe, tag=args.tag, force=args.force, progress=say, origins=origins, keep=keep
        )
    verb = "Reused" if result.reused else "Built"
    print(
        f"{verb} {result.tag} ({result.image_id[:19]}, recipe {result.digest[:12]}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    if result.tag != DEFAULT_IMAGE:
        print(f"Use it: jupyter-docker-kernel setup --name NAME --image {result.tag}")
    return 0


def cmd_image_push(args: argparse.Namespace, engine: Engine) -> int:
    from jupyter_docker_kernel import push

    say = lambda line: print(line, flush=True)  # noqa: E731 - one-line progress sink
    pushed = push.push(engine, args.tag, args.nodes, progress=say)
    copied = sum(p.copied for p in pushed)
    print(f"{args.tag}: copied to {copied} node(s), {len(pushed) - copied} had it already")
    return 0


def cmd_image_check(args: argparse.Namespace, engine: Engine) -> int:
    from jupyter_docker_kernel import image_check

    verdicts = image_check.check(
        engine, args.image, python=args.python, keep_entrypoint=args.keep_entrypoint
    )
    if args.json:
        print(json.dumps({"image": args.image, "checks": [v.to_json() for v in verdicts]}))
    else:
        print("\n".join(image_check.format_verdicts(args.image, verdicts)))
    return 1 if any(v.status == "FAIL" for v in verdicts) else 0


def cmd_image_kernels(args: argparse.Namespace, engine: Engine) -> int:
    settings = KernelSettings(image=args.image, python=args.python)
    _, specs = image_kernels.find_in_image(engine, settings, setup_mod.probe_user())
    if not specs:
        print(f"Image {args.image} has no kernelspecs in Jupyter's data paths.")
    for spec in specs.values():
        language = f" (language {spec.language})" if spec.language else ""
        print(f'{spec.name}: "{spec.display_name}"{language}: {" ".join(spec.argv)}')
    return 0


def pool_keys(names: list[str]) -> set[str] | None:
    """`gc --pools NAME...` -> those kernelspecs' pool keys (None: every pool).

    A pool key (what `remove` prints) is taken as is: after `remove` the spec that
    would give it is gone, while its warm containers wait out their pool time.
    """
    if not names:
        return None
    keys = set()
    for name in names:
        if re.fullmatch(r"[0-9a-f]{16}", name):
            keys.add(name)
            continue
        try:
            info = manage.find(name)
        except KernelSpecError as exc:
            raise KernelSpecError(
                f"{exc} (After remove, name the pool by the key that remove printed.)"
            ) from exc
        if info.settings is None:
            raise KernelSpecError(
                f"Kernelspec '{info.name}' in {info.path} is broken ({info.error}), so its "
                "warm containers cannot be told apart. Nothing was removed. Run gc --pools "
                "without a name to remove every unclaimed warm container of yours."
            )
        keys.add(pool.pool_key(info.settings, os.getuid()))
    return keys


def cmd_gc(args: argparse.Namespace, engine: Engine) -> int:
    keys = pool_keys(args.pools or [])
    result = reaper.collect(
        engine, dry_run=args.dry_run, pools=args.pools is not None, pool_keys=keys
    )
    on_nodes, node_warnings = node_manage.gc(
        node_manage.node_urls(spec_settings()),
        dry_run=args.dry_run,
        command=engine.command,
        pools=args.pools is not None,
        pool_keys=keys,
    )
    if args.json:
        data = {"dry_run": args.dry_run, **dataclasses.asdict(result)}
        data["node_containers"] = on_nodes.containers
        data["node_dirs"] = on_nodes.dirs
        print(json.dumps(data, indent=1))
        return 0
    verb = "Would remove" if args.dry_run else "Removed"
    for name in result.containers:
        print(f"{verb} container {name}")
    for name in on_nodes.containers:
        print(f"{verb} container {name} on its node (its launcher here is gone)")
    for place in on_nodes.dirs:
        print(f"{verb} {place} on its node (no container of its kernel there)")
    print(*node_warnings, sep="\n", end="\n" if node_warnings else "")
    for path in [*result.dirs, *on_nodes.dirs]:
        print(f"{verb} {path}")
    if result.logs:
        print(f"{verb} {len(result.logs)} kept kernel log(s) older than a day")
    print(
        f"{verb} {len(result.containers)} container(s) and {len(result.dirs)} runtime dir(s); "
        f"{result.kept} kernel(s) still running were kept."
    )
    print("\n".join(kube_gc_lines(verb, dry_run=args.dry_run)))
    return 0


def spec_settings() -> list[KernelSettings]:
    """The settings of every readable kernelspec of ours (gc and list cover their nodes)."""
    specs, _ = manage.list_specs(None)
    return [s.settings for s in specs if s.settings]


def node_list_lines(command: str) -> list[str]:
    """list's lines for the kernelspecs' remote nodes: each node's kernel containers."""
    lines = []
    for url, rows in node_manage.kernels(node_manage.node_urls(spec_settings()), command):
        if isinstance(rows, DockerKernelError):
            lines.append(f"warning: node {url} not listed: {rows}")
            continue
        lines.append(f"kernels on node {url}: {len(rows)}")
        lines += [f"  {r.name}  {r.state}  {url}  since {r.since}" for r in rows]
    return lines


def node_list_json(command: str) -> dict[str, Any]:
    """list --json's part for the kernelspecs' remote nodes (nothing without such specs):
    each node's kernel containers, and the nodes that did not answer, with why."""
    urls = node_manage.node_urls(spec_settings())
    if not urls:
        return {}
    found: list[dict[str, str]] = []
    unanswered: dict[str, str] = {}
    for url, rows in node_manage.kernels(urls, command):
        if isinstance(rows, DockerKernelError):
            unanswered[url] = str(rows)
            continue
        found += [dataclasses.asdict(r) for r in rows]
    return {"node_kernels": found, "nodes_not_listed": unanswered}


def kube_settings() -> list[KernelSettings]:
    """The settings of our --kubernetes kernelspecs (gc and list cover their namespaces)."""
    specs, _ = manage.list_specs(None)
    return [s.settings for s in specs if s.settings and s.settings.kube_namespace is not None]


def kube_gc_lines(verb: str, *, dry_run: bool) -> list[str]:
    """gc's lines for the kernelspecs' Kubernetes namespaces (none without such specs)."""
    wanted = kube_settings()
    if not wanted:
        return []
    from jupyter_docker_kernel import kube_manage

    lines = []
    for namespace, done in kube_manage.collect_all(wanted, dry_run=dry_run):
        if isinstance(done, DockerKernelError):
            lines.append(f"warning: namespace {namespace} not collected: {done}")
            continue
        lines += [f"{verb} pod {name} in namespace {namespace}" for name in done.pods]
        lines += [f"{verb} secret {name} in namespace {namespace}" for name in done.secrets]
        lines.append(
            f"{verb} {len(done.pods)} pod(s) and {len(done.secrets)} secret(s) in namespace "
            f"{namespace}; {done.kept} kernel pod(s) still running were kept."
        )
        if done.note:
            lines.append(f"note: {done.note}")
    return lines


def kube_list_lines() -> list[str]:
    """list's lines for the kernelspecs' Kubernetes namespaces: their kernel pods."""
    wanted = kube_settings()
    if not wanted:
        return []
    from jupyter_docker_kernel import kube_manage

    lines = []
    for namespace, rows in kube_manage.pods_all(wanted):
        if isinstance(rows, DockerKernelError):
            lines.append(f"warning: namespace {namespace} not listed: {rows}")
            continue
        lines.append(f"kernel pods in namespace {namespace}: {len(rows)}")
        lines += [
            f"  {r.name}  {r.phase}  {r.ip or '-'}  server {r.server or '-'}  since {r.created}"
            for r in rows
        ]
    return lines


def format_list(specs: list[manage.SpecInfo], note: str = "") -> list[str]:
    """`list` as a table: name, image, present?, limits, path; unreadable specs say why."""
    present = {True: "yes", False: "MISSING", None: "?"}
    moved_state = "MOVED"  # present, but not the image setup checked (a warning says more)
    rows = [("NAME", "IMAGE", "PRESENT", "LIMITS", "PATH")]
    for s in specs:
        if s.settings is None:
            rows.append((s.name, "-", "-", "BROKEN (see below)", s.path))
            continue
        lim = s.limits()
        limits = (
            f"net {lim['network']}, mem {lim['memory']}, cpus {lim['cpus']:g}, "
            f"pids {lim['pids_limit']}, runtime {lim['runtime']}, workdir {lim['workdir']}"
            + (f", gpus {lim['gpus']}" if lim["gpus"] else "")
        )
        state = moved_state if s.image_moved else present[s.image_present]
        rows.append((s.name, s.image, state, limits, s.path))
    if not specs:
        return ["No jupyter-docker-kernel kernelspecs installed; add one with setup."]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    lines += spec_warnings(specs)
    if note:
        lines.append(f"note: {note}")
    for s in specs:
        moved = manage.moved_warning(s.settings, s.current_id) if s.settings else None
        if moved:
            lines.append(f"warning: {s.name}: {moved[0]}; {moved[1]}.")
    return [line.rstrip() for line in lines]


def sentence(text: str) -> str:
    """text ending in a full stop, so a message can go on after it."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def spec_warnings(specs: list[manage.SpecInfo]) -> list[str]:
    """One warning per broken or shadowed spec of ours: what is wrong and what to do."""
    out = []
    for s in specs:
        if s.settings is None:
            out.append(
                f"warning: {s.name} ({s.path}) is broken: {sentence(s.error)} Jupyter cannot "
                "start it. "
                f"Rewrite it with setup --name {s.name} --replace --reset ..., or remove it "
                f"with: jupyter-docker-kernel remove {s.name}"
            )
        if s.shadowed_by:
            out.append(
                f"warning: {s.name} ({s.path}) is shadowed by {s.shadowed_by}: Jupyter "
                f"uses that one for the name {s.name}. Remove ours (jupyter-docker-kernel "
                f"remove {s.name}) and set it up again under another --name."
            )
    return out


def cmd_list(args: argparse.Namespace, engine: Engine) -> int:
    specs, note = manage.list_specs(engine)
    if args.json:
        data: dict[str, Any] = {"kernelspecs": [s.to_json() for s in specs], "note": note or None}
        data.update(node_list_json(engine.command))
        print(json.dumps(data, indent=1))
        return 0
    print(
        "\n".join([*format_list(specs, note), *kube_list_lines(), *node_list_lines(engine.command)])
    )
    return 0


def format_show(info: manage.SpecInfo, args: list[str], program: str) -> list[str]:
    """`show`: where the spec is, every setting (defaults included), the docker run command."""
    assert info.settings is not None
    lines = [f"{info.name}: {info.display_name}", f"  path      {info.path}"]
    launcher = hardening.quote_command(info.launcher_python, info.launcher_argv[1:3])
    old = info.settings_in_argv or not info.launcher_isolated
    note = "  (an earlier version's form: doctor --fix rewrites it)" if old else ""
    lines.append(f"  launcher  {launcher}{note}")
    lines.append(f"  client    {client_line(info)}")
    lines.append(f"  relay     {relay_line(info)}")
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


def client_line(info: manage.SpecInfo) -> str:
    """`show`'s client line: which thin client a kernel start runs first."""
    if not info.client:
        return "python (the launcher is the thin client; no compiled client in argv)"
    problem = info.client_problem
    if problem:
        return f"compiled {info.client}, unusable: {problem}; doctor --fix rebuilds it"
    return f"compiled {info.client} (execs the launcher when no helper can serve)"


def relay_line(info: manage.SpecInfo) -> str:
    """`show`'s relay line: who relays a running kernel's channels, the resident helper or
    the compiled client it hands the kernel to (hosting.qualifies; issue 17), so that a
    user sees which path the switch and the spec's settings leave."""
    assert info.settings is not None
    off = "the resident helper"
    if not info.client or info.client_problem:
        return f"{off} (no usable compiled client to hand the kernel to)"
    if not thin.handover_on(info.handover_env):
        return f"{off} ({thin.HANDOVER_ENV}=0 in kernel.json's env)"
    if info.settings.kube_namespace is not None:
        return f"{off} (a Kubernetes pod's encrypted channels)"
    if (info.settings.engine_host or "").startswith("ssh://"):
        return f"{off} (a remote node's kernel, through SSH)"
    return (
        "the compiled client: the helper hands it the running kernel and exits when idle "
        f"(a local engine's API; {thin.HANDOVER_ENV}=0 keeps the helper relaying)"
    )


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
        raise KernelSpecError(
            f"Kernelspec '{info.name}' in {info.path} is ours but broken: {sentence(info.error)} "
            f"Nothing can be shown. Rewrite it with setup --name {info.name} --replace "
            f"--reset ..., or remove it with: jupyter-docker-kernel remove {info.name}"
        )
    if args.as_command:
        argv = manage.setup_argv(info, config.load_defaults().values)
        print(shlex.join(["jupyter-docker-kernel", *argv]))
        return 0
    run_args = manage.effective_args(info.settings)
    if args.json:
        data = info.to_json()
        data["settings_effective"] = dataclasses.asdict(info.settings)
        data["docker_argv"] = [engine.command, *run_args]
        print(json.dumps(data, indent=1))
        return 0
    print("\n".join(format_show(info, run_args, engine.command)))
    for line in spec_warnings([info]):
        print(line)
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
    warm: list[str] | None = []
    key = ""
    if info.settings is not None:
        key = pool.pool_key(info.settings, os.getuid())
    if info.settings is not None and info.settings.pool:  # no pool, no engine call
        try:
            warm = manage.warm_containers(engine, info.settings)
        except DockerKernelError:
            warm = None  # no engine: nothing to count, and nothing for gc to do now either
    left = manage.find_or_none(info.name)
    if args.json:
        print(
            json.dumps(
                {
                    "removed": info.name,
                    "path": info.path,
                    "warm_containers": warm,
                    "pool_key": key or None,
                }
            )
        )
        return 0
    print(f"Removed kernelspec {info.name} ({info.path})")
    if warm:
        print(
            f"  {len(warm)} warm container(s) of it still run, until their pool time "
            f"({info.settings.pool_ttl if info.settings else 0:g} s) ends. Remove them now "
            f"with: jupyter-docker-kernel gc --pools {key}"
        )
    elif warm is None and info.settings is not None and info.settings.pool:
        print(
            "  note: the engine did not answer, so its warm containers were not counted; "
            f"once it does: jupyter-docker-kernel gc --pools {key}"
        )
    if left is not None:
        where = f"shadowed by {left.shadowed_by}" if left.shadowed_by else "Jupyter uses it now"
        print(f"  Another '{info.name}' of ours remains in {left.path} ({where}).")
    return 0


def print_upgrades(done: list[tuple[str, Path, str]], file: Any = None) -> None:
    """What kernelspec.upgrade_all() rewrote (setup, doctor --fix) or could not."""
    for name, path, why in done:
        if why:
            print(
                f"  warning: kernelspec {name} in {path} is of an earlier version (its "
                "launcher may import from the notebook's directory; `ps` shows its settings) "
                f"and could not be rewritten: {why}. "
                f"Rewrite it as its owner (root for a system-wide one) with "
                f"'jupyter-docker-kernel doctor --fix'.",
                file=file,
            )
        else:
            print(
                f"  rewrote kernelspec {name} ({path}) of an earlier version: its launcher now "
                "starts isolated from the notebook's directory, settings out of argv",
                file=file,
            )


def cmd_broker(args: argparse.Namespace, engine: Engine) -> int:
    from jupyter_docker_kernel import broker, broker_policy

    return broker.run(
        args.policy or broker_policy.DEFAULT_POLICY,
        args.socket or broker_policy.DEFAULT_SOCKET,
        args.group or broker_policy.DEFAULT_GROUP,
    )


def cmd_doctor(args: argparse.Namespace, engine: Engine) -> int:
    if args.broker:
        report = doctor.broker_checks(engine, args.policy)
        if args.json:
            print(json.dumps(report.to_json(), indent=1))
        else:
            print("\n".join(doctor.format_report(report)))
        return 0 if report.ok else 1
    if args.fix:
        done = kernelspec.upgrade_all()
        out = sys.stderr if args.json else sys.stdout  # stdout is the JSON report's
        print_upgrades(done, file=out)
        if not done:
            print("doctor --fix: every kernelspec of ours is in the current form", file=out)
    report = doctor.run_checks(engine, args.name, probe=not args.no_probe)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print("\n".join(doctor.format_report(report)))
    return 0 if report.ok else 1


def cmd_ps(args: argparse.Namespace, engine: Engine) -> int:
    given = engine if (args.engine_host or args.podman) else None
    kernels, notes = running.running_kernels(running.engines_in_use(given))
    if args.json:
        print(json.dumps({"kernels": [k.to_json() for k in kernels], "notes": notes}, indent=1))
        return 0
    print("\n".join(format_ps(kernels, notes)))
    return 0


def human_size(size: int | None) -> str:
    """1536 MiB -> '1.5G', as `ps` shows memory; '?' when unknown."""
    if size is None:
        return "?"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{size}B"


def human_time(seconds: float | None) -> str:
    """3725 -> '1h02m'."""
    if seconds is None:
        return "?"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_ps(kernels: list[running.RunningKernel], notes: list[str]) -> list[str]:
    """`ps` as a table; the notebook directory last (it is the longest)."""
    if not kernels:
        lines = ["No kernels of jupyter-docker-kernel are running."]
    else:
        # A NODE column once any kernel runs on a remote node ("-": on this host).
        on_nodes = any(k.engine.startswith("ssh://") for k in kernels)
        rows: list[tuple[str, ...]] = [
            ("KERNELSPEC", "CONTAINER", "ID", "UP", "MEMORY", "PIDS", "CLIENT", "NOTEBOOK DIR")
        ]
        if on_nodes:
            rows[0] = (*rows[0][:2], "NODE", *rows[0][2:])
        for k in kernels:
            pids = f"{k.pids if k.pids is not None else '?'}/{k.pids_limit or '-'}"
            node = (k.engine if k.engine.startswith("ssh://") else "-",) if on_nodes else ()
            rows.append(
                (
                    "(warm pool)" if k.kind == "warm" else k.kernelspec or "?",
                    k.container,
                    *node,
                    k.container_id,
                    human_time(k.uptime),
                    f"{human_size(k.memory_used)}/{human_size(k.memory_limit)}",
                    pids,
                    str(k.client_pid or "-"),
                    k.workdir or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = [
            "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
            for row in rows
        ]
        here = [k for k in kernels if not k.engine.startswith("ssh://")]
        if len({k.engine for k in here}) > 1:
            lines += [f"{k.container}: engine {k.engine or 'default'}" for k in here]
    lines += [f"note: {note}" for note in notes]
    return [line.rstrip() for line in lines]


def cmd_logs(args: argparse.Namespace, engine: Engine) -> int:
    found = running.find_logs(args.kernel)
    if args.json:
        print(json.dumps(found.to_json(), indent=1))
        return 0
    record = found.record
    spec = record.get("kernelspec") or "?"
    print(
        f"kernel {record.get('kernel_id')} ({spec}) in container {record.get('container')}: "
        f"{found.status}"
    )
    if found.output:
        print(f"--- its own stdout/stderr (the last {len(found.output)} bytes kept) ---")
        # Escaped as in the server's log: the kernel's bytes must not drive the terminal.
        sys.stdout.flush()
        sys.stdout.buffer.write(launcher_printable(found.output))
        if not found.output.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.buffer.flush()
    else:
        print("(the kernel wrote nothing to its stdout or stderr)")
    return 0


def quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader went away (`show | head`), and Python's
    flush at exit would print a BrokenPipeError traceback (the recipe in Python's docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # not a real file (a test's capture): nothing will be flushed to a pipe


def main(argv: list[str] | None = None) -> int:
    """Parse argv, run one subcommand, return its exit code (0 ok, 1 our error, 2 usage,
    141 when stdout's reader went away, as a shell reports SIGPIPE)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        quiet_stdout()
        return 141


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv, nbgrader_args = split_nbgrader_args(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
        if nbgrader_args:
            args.nbgrader_args = nbgrader_args
    except UsageError as exc:
        given = sys.argv[1:] if argv is None else argv
        print(f"error: {exc}. See '{help_command(parser, given)}'.", file=sys.stderr)
        return 2
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
    code = main()
    try:
        sys.stdout.flush()  # here, not at exit, where a closed pipe cannot be caught
    except BrokenPipeError:
        quiet_stdout()
        code = 141
    sys.exit(code)
