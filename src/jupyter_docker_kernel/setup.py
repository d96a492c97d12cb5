"""`setup` as data: what it checks and decides (`plan`), then what it writes (`write`).

cli.cmd_setup parses the command line into a `SetupRequest`, calls `plan(request, engine)`
(every check and decision; raises our error on the first thing that stops it, and writes
nothing), then `write(plan)` (the kernelspec, the upgrades of older specs, the
nbgrader_config.py lines), and prints both results. Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import (
    config,
    grading,
    hardening,
    hostpython,
    image_kernels,
    kernelspec,
    manage,
    readiness,
    thin_client,
    workdir,
)
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError, KernelSpecError, SettingsError
from jupyter_docker_kernel.rundir import runtime_base
from jupyter_docker_kernel.settings import OWNER_USER, KernelSettings, option
from jupyter_docker_kernel.workdir import NBGRADER_MARKERS

#: What setup did not do when it stops: said once, here.
NOT_WRITTEN = "No kernelspec was written"


@dataclass(frozen=True)
class SetupRequest:
    """What `setup` was asked, as cli.py parsed it.

    `settings(defaults, previous)` is the command line's settings over the config files'
    defaults, or over the replaced spec's settings (previous); plan calls it once it knows
    which (cli.settings_from_args, bound to the parsed options).
    """

    name: str
    settings: Callable[[config.ConfigDefaults, KernelSettings | None], KernelSettings]
    user: bool = False
    prefix: str | None = None
    replace: bool = False
    reset: bool = False
    for_nbgrader: bool = False
    write_nbgrader_config: Path | None = None
    cell_timeout: int | None = None
    kernel_spec_in_image: str | None = None
    new_kernel_cmd: bool = False  # --kernel-cmd given: the replaced spec's language goes
    skip_checks: bool = False
    force: bool = False
    pin: bool = False
    podman: bool = False
    display_name: str | None = None
    interrupt_mode: str | None = None
    provisioner: bool = False


@dataclass(frozen=True)
class SetupPlan:
    """What setup found and decided; `write` writes it, cli prints it."""

    request: SetupRequest
    settings: KernelSettings
    kernel_json: dict[str, Any]
    #: The settings of the spec --replace overwrites (None: a new spec, or --reset).
    replaced: KernelSettings | None
    config_files: tuple[str, ...]
    #: "python ipykernel release" from the probe; "" with --skip-checks.
    versions: str
    in_image: image_kernels.ImageKernelSpec | None
    findings: list[readiness.Finding]
    #: One line each, in the order cli prints them after "warning: ".
    warnings: list[str]
    #: What a kernel started by root runs as ("" unless setup runs as root).
    root_note: str
    #: Why argv starts the Python launcher, not the compiled thin client ("": it does not).
    no_client: str = ""
    #: The nbgrader_config.py lines (empty unless --for-nbgrader).
    nbgrader_lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SetupResult:
    """What `write` did: where the spec went, older specs rewritten, what --replace changed."""

    path: Path
    upgrades: list[tuple[str, Path, str]]
    #: '--memory 2g -> 1g' per changed setting; None when no spec of ours was replaced.
    changes: list[str] | None
    #: "Wrote" / "Updated" ... for --write-nbgrader-config ("" when not asked).
    nbgrader_written: str = ""


def plan(request: SetupRequest, engine: Engine) -> SetupPlan:
    """Every check and decision of `setup`, in order; raises our error on the first thing
    that stops it (nothing is written then). The engine is asked unless --skip-checks."""
    name = request.name
    replaced = replaced_spec(request)
    old_settings, old_json = replaced if replaced else (None, {})
    previous = None if request.reset else old_settings
    if request.reset:
        old_json = {}
    # The replaced spec's settings already hold what the config files said then.
    defaults = config.ConfigDefaults({}, ()) if previous else config.load_defaults()
    try:
        settings = request.settings(defaults, previous)
        check_workdir_root(settings)
    except SettingsError as exc:
        if not defaults.files:
            raise
        raise SettingsError(f"{exc} (Defaults came from {', '.join(defaults.files)}.)") from exc
    for_nbgrader = request.for_nbgrader
    timeout = grading.DEFAULT_TIMEOUT if request.cell_timeout is None else request.cell_timeout
    if for_nbgrader:
        grading.check_timeout(timeout, settings.max_lifetime)
    elif request.cell_timeout is not None:
        raise SettingsError(
            "--cell-timeout only sets the nbgrader_config.py lines",
            NOT_WRITTEN,
            "Add --for-nbgrader, or leave it out.",
        )
    if request.write_nbgrader_config:
        grading.check_config_file(request.write_nbgrader_config)
    versions = ""
    if settings.engine_host and settings.engine_host != engine.host:
        engine = Engine(engine.command, host=settings.engine_host)  # from a config file
    in_image = None
    if request.kernel_spec_in_image:
        # Even with --skip-checks: the command can only come from the image.
        settings, in_image = with_image_kernel(engine, settings, request.kernel_spec_in_image)
    on_node = (settings.engine_host or "").startswith("ssh://")
    if on_node:
        check_node_settings(settings)
    kube_warnings: list[str] = []
    node_warnings: list[str] = []
    if settings.kube_namespace is not None and request.pin:
        raise SettingsError(
            "--pin records the image's ID from the local engine, and a --kubernetes kernel "
            "runs the image on the cluster's nodes",
            NOT_WRITTEN,
            "Name the image by its digest in --image instead.",
        )
    provisioner = request.provisioner or "kernel_provisioner" in (old_json.get("metadata") or {})
    # Without --provisioner a --kubernetes kernel's argv launcher proxies the client's plain
    # loopback channels to the pod over CurveZMQ (kube_proxy.py).
    skip_checks, broker_note = request.skip_checks, []
    if not skip_checks and settings.kube_namespace is None and not on_node:
        from jupyter_docker_kernel import broker_client

        path, why = broker_client.choice(engine)
        if path == "broker":  # the engine is not ours to ask: a kernel through the broker is
            skip_checks = True
            probed = broker_client.probe(settings)
            if not probed.ok:
                raise SettingsError(
                    f"The kernel broker did not start a kernel of these settings: {probed.detail}",
                    NOT_WRITTEN,
                    probed.fix
                    or "Change the settings within the broker's policy, or ask the "
                    "admin (docs/multi-user.md).",
                )
            broker_note = [
                f"the engine was not checked ({why}): kernels start through the kernel "
                f"broker, which refuses what its policy does not allow; {probed.detail} "
                "(docs/multi-user.md)"
            ]
    if settings.kube_namespace is not None:
        # The image runs on the cluster's nodes, not here: the cluster is what is checked.
        if not skip_checks:
            from jupyter_docker_kernel import kube_manage
            from jupyter_docker_kernel.kube_backend import KubeApi

            kube_warnings = kube_manage.check_setup(KubeApi.for_settings(settings), settings)
        findings = check_loosenings(settings, engine, for_nbgrader, request.force)
    elif not skip_checks and on_node:
        # A remote node: its engine, runtimes and the image's ID are asked there (through
        # ssh), then the probe container runs on each node that answered, through its own
        # engine, as it runs here (node_probe).
        settings = engine_settings(engine, settings)
        findings = check_loosenings(settings, engine, for_nbgrader, request.force)
        first, answered, node_warnings = check_nodes(engine, settings)
        settings = with_image_id(first, settings, pin=request.pin)
        if settings.node_shared_paths:
            check_shared_paths(settings, engine, answered)
        versions = probe_nodes(engine, settings, answered)
    elif not skip_checks:
        settings = engine_settings(engine, settings)
        found, findings = check_image(
            engine, settings, for_nbgrader=for_nbgrader, force=request.force
        )
        versions = " ".join((found.python, found.ipykernel, found.release))
        settings = with_image_id(engine, settings, pin=request.pin)
    elif request.pin:
        raise SettingsError(
            "--pin records the image's ID, which needs the engine that --skip-checks does not ask",
            NOT_WRITTEN,
            "Leave out one of them.",
        )
    else:
        # Unchecked: no ID to record (one kept from a replaced spec would be stale).
        settings = dataclasses.replace(settings, image_id="")
        findings = check_loosenings(settings, engine, for_nbgrader, request.force)
        if request.podman:
            settings = dataclasses.replace(settings, engine="podman")
    default_display = f"{in_image.display_name if in_image else name} (container)"
    # What kernel.json holds beyond the settings is kept on --replace as well.
    kept_language = None if request.new_kernel_cmd else old_json.get("language")
    # The compiled thin client when a C compiler is here (the Python argv otherwise); a
    # --user spec is ours alone, another only when it is under our home.
    client, no_client = thin_client.ensure(
        None if request.user else kernelspec.destination(name, user=False, prefix=request.prefix)
    )
    data = kernelspec.build_kernel_json(
        settings,
        display_name=request.display_name or old_json.get("display_name") or default_display,
        interrupt_mode=request.interrupt_mode
        or (in_image.interrupt_mode if in_image else old_json.get("interrupt_mode"))
        # A pod is signalled only through pods/exec, which the Role does not grant.
        or ("message" if settings.kube_namespace is not None else "signal"),
        language=in_image.language if in_image else kept_language,
        provisioner=provisioner,
        isolated=hostpython.isolated_import_works(sys.executable),
        client=client,
    )
    return SetupPlan(
        request=request,
        settings=settings,
        kernel_json=data,
        replaced=old_settings,
        config_files=defaults.files,
        versions=versions,
        in_image=in_image,
        findings=findings,
        warnings=[
            *broker_note,
            *exposure_warnings(settings),
            *finding_warnings(findings),
            *kube_warnings,
            *node_warnings,
        ],
        # On a node the kernel runs as the node user, whoever runs setup here.
        root_note=root_note(settings) if os.getuid() == 0 and not on_node else "",
        no_client=no_client,
        nbgrader_lines=grading.config_lines(name, timeout) if for_nbgrader else [],
    )


def write(planned: SetupPlan) -> SetupResult:
    """Install the planned kernelspec, rewrite older specs of ours in the current form, and
    write the nbgrader_config.py lines when asked."""
    request = planned.request
    path = kernelspec.install(
        request.name,
        planned.kernel_json,
        user=request.user,
        prefix=request.prefix,
        replace=request.replace,
    )
    upgrades = kernelspec.upgrade_all()
    changed = None if planned.replaced is None else changes(planned.replaced, planned.settings)
    written = ""
    if request.write_nbgrader_config:
        written = grading.write_config_file(request.write_nbgrader_config, planned.nbgrader_lines)
    return SetupResult(path, upgrades, changed, written)


def check_workdir_root(settings: KernelSettings) -> None:
    """A fixed --workdir-root PATH is known now: refuse it as a kernel start would
    (workdir.refusal), and when it is not a directory. git and ..N depend on the notebook."""
    root = settings.workdir_root
    if not root or not root.startswith("/"):
        return
    if not os.path.isdir(root):
        raise SettingsError(
            f"--workdir-root {root} is not a directory",
            NOT_WRITTEN,
            "Create it, or give the project's directory.",
        )
    for path in dict.fromkeys((root, os.path.realpath(root))):
        why = workdir.refusal(
            path,
            home=os.path.expanduser("~"),
            sockets=workdir.engine_sockets(Engine(host=settings.engine_host)),
        )
        if why:
            raise SettingsError(
                f"--workdir-root {path} {why}",
                NOT_WRITTEN,
                "Give the project's own directory (one that holds your notebooks and their data).",
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
            "--kernel-spec-in-image and --kernel-cmd both name the kernel's command",
            NOT_WRITTEN,
            "Pass only one of them.",
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


def check_image(
    engine: Engine, settings: KernelSettings, *, for_nbgrader: bool = False, force: bool = False
) -> tuple[readiness.Probe, list[readiness.Finding]]:
    """Fail unless the engine answers and readiness.verdict (runtime, image, loosenings
    setup refuses unless forced, the kernel's real container) finds nothing that FAILs;
    setup stops at the first FAIL and says no kernelspec was written."""
    engine.info()
    found = readiness.verdict(
        engine, settings, runtime_base(), for_nbgrader=for_nbgrader, force=force, first_fail=True
    )
    failure = found.failure
    if failure is not None and failure.error is not None:
        raise failure.error.instead(NOT_WRITTEN)
    assert found.probe is not None  # no FAIL: the probe ran
    return found.probe, found.findings


def check_node_settings(settings: KernelSettings) -> None:
    """A kernel on a remote node cannot mount this host's directories (the node does not
    see them) unless the admin declared paths the nodes share (--node-shared-path): its
    work dir is then mounted when below one (node_workdir.check, at each start)."""
    if settings.workdir == "mount" and not settings.node_shared_paths:
        raise SettingsError(
            f"A kernel on the node {settings.engine_host} cannot mount this host's notebook "
            "directory",
            NOT_WRITTEN,
            "Add --copy-workdir (the directory is copied to the node at each start) or "
            "--no-workdir; or, if the nodes see the notebooks at the same path (a shared "
            "filesystem), declare it with --node-shared-path DIR.",
        )


def check_nodes(engine: Engine, settings: KernelSettings) -> tuple[Engine, list[str], list[str]]:
    """Ask every node of the kernelspec (its pool, or its one engine_host), at once: its
    engine answers, it has the runtime asked for, and the image, with the same ID on each
    (a start may land on any of them). Returns the first node's engine (whose image ID
    setup records; it must answer), the nodes that answered, and one warning per other
    node that did not (a start skips a silent node too). What a node lacks is one line
    naming the node and what to run."""
    from concurrent.futures import ThreadPoolExecutor

    urls = settings.nodes or (settings.engine_host or "",)
    nodes = [Engine(engine.command, host=url, environ=engine.environ) for url in urls]

    def ask(node: Engine) -> tuple[set[str], str] | DockerKernelError:
        try:
            runtimes = node.runtimes() if settings.runtime else set()
            image = node.image_inspect(settings.image)
        except DockerKernelError as exc:
            if node is nodes[0]:
                raise
            return exc
        return runtimes, str((image or {}).get("Id", ""))

    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        answers = list(pool.map(ask, nodes))
    push = f"Run 'jupyter-docker-kernel image push {{}} --tag {settings.image}'"
    first_id = ""
    answered, warnings = [], []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, DockerKernelError):
            warnings.append(f"node {url} was not checked (it did not answer: {answer.what})")
            continue
        runtimes, image_id = answer
        first_id = first_id or image_id
        if settings.runtime and settings.runtime not in runtimes:
            raise SettingsError(
                f"The node {url} has no runtime '{settings.runtime}' (it has: "
                f"{', '.join(sorted(runtimes))})",
                NOT_WRITTEN,
                "Register it in the node's /etc/docker/daemon.json and restart its engine, "
                "or run setup without --runtime.",
            )
        if not image_id:
            raise SettingsError(
                f"The image {settings.image} is not present on the node {url}",
                NOT_WRITTEN,
                push.format(url) + " first (kernels never pull).",
            )
        if image_id != first_id:
            raise SettingsError(
                f"The image {settings.image} on the node {url} ({image_id[7:19]}) is not the "
                f"one on {urls[0]} ({first_id[7:19]}): a kernel's image would depend on its node",
                NOT_WRITTEN,
                push.format(" ".join(urls))
                + " (it copies this host's image where a copy differs).",
            )
        answered.append(url)
    return nodes[0], answered, warnings


def probe_nodes(engine: Engine, settings: KernelSettings, urls: Sequence[str]) -> str:
    """The probe container on each node that answered (node_probe.probe_nodes, at once):
    the first that cannot start the kernel stops setup with one line naming the node.
    Returns the first node's "python ipykernel release" for setup's summary."""
    from jupyter_docker_kernel import node_probe  # only for nodes

    try:
        found = node_probe.probe_nodes(engine, settings, urls, runtime_base())
    except DockerKernelError as exc:
        raise exc.instead(NOT_WRITTEN) from exc
    if found is None:
        return ""
    return " ".join((found.python, found.ipykernel, found.release))


def check_shared_paths(settings: KernelSettings, engine: Engine, urls: Sequence[str]) -> None:
    """Each declared shared path is a directory on each node that answered (asked over
    ssh): a typo or an unmounted filesystem is one line now, not a refused start later."""
    from jupyter_docker_kernel.ssh import Connection  # only for nodes

    for url in urls:
        connection = Connection.to(url, engine.environ)
        for path in settings.node_shared_paths:
            if connection.run(["test", "-d", path], check=False).returncode != 0:
                raise SettingsError(
                    f"--node-shared-path {path} is not a directory on the node {url}",
                    NOT_WRITTEN,
                    "Mount the shared filesystem on every node at the same path as here, "
                    "or leave that --node-shared-path out.",
                )


def check_loosenings(
    settings: KernelSettings, engine: Engine, for_nbgrader: bool, force: bool
) -> list[readiness.Finding]:
    """readiness.loosenings without the engine (--skip-checks); the first refused one is
    an error unless --force."""
    findings = readiness.loosenings(
        settings,
        for_nbgrader=for_nbgrader,
        engine_sockets=readiness.engine_sockets(engine),
        resolve=os.path.realpath,
    )
    refused = [f for f in findings if f.refused]
    if refused and not force:
        raise SettingsError(refused[0].message, NOT_WRITTEN, "Add --force if you mean it.")
    return findings


def with_image_id(engine: Engine, settings: KernelSettings, *, pin: bool) -> KernelSettings:
    """Record the ID the image has now (list and doctor warn when the tag moves); with
    --pin, also refer to the image by that ID, so no rebuild or retag changes the kernel."""
    image_id = str(engine.require_image(settings.image).get("Id", ""))
    if not image_id.startswith("sha256:"):
        return settings  # an engine that reports no content ID: nothing to record
    image = image_id if pin else settings.image
    return dataclasses.replace(settings, image=image, image_id=image_id)


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
            "rootless systems')",
            NOT_WRITTEN,
            "Use rootful Podman (scripts/bootstrap-podman as root), Docker, or a host with "
            "cgroup v2.",
        )
    host = settings.engine_host or os.environ.get("DOCKER_HOST") or None
    docker_args = settings.docker_args
    if not any("nproc" in arg for arg in docker_args):
        engine.require_image(settings.image)
        nproc = engine.default_nproc(settings.image, settings.python)
        if nproc is not None:
            docker_args = (*docker_args, f"--ulimit=nproc={nproc}:{nproc}")
    return dataclasses.replace(settings, engine="podman", engine_host=host, docker_args=docker_args)


def replaced_spec(request: SetupRequest) -> tuple[KernelSettings, dict[str, Any]] | None:
    """The settings and kernel.json of the spec `setup --replace` overwrites, so that it
    keeps them (unless --reset) and can say what changed; None: nothing of ours there. A
    spec of ours too broken to read is an error without --reset: silently starting from
    the defaults is what --replace used to do."""
    if request.reset and not request.replace:
        raise SettingsError(
            "--reset only applies with --replace (it drops the replaced spec's settings)",
            NOT_WRITTEN,
            "Add --replace, or leave --reset out.",
        )
    if not request.replace:
        return None
    target = kernelspec.destination(request.name, user=request.user, prefix=request.prefix)
    if not (target / "kernel.json").exists() or not kernelspec.is_ours(target):
        return None
    info = manage.read_spec(request.name, target)
    if info.settings is None:
        if request.reset:
            return None
        error = info.error.strip()
        error = error if error.endswith((".", "!", "?")) else f"{error}."
        raise KernelSpecError(
            f"The kernelspec being replaced ({target}) is broken: {error} "
            "Its settings cannot be kept",
            NOT_WRITTEN,
            "Add --reset to write it from the options given (and the defaults) alone.",
        )
    return info.settings, json.loads((target / "kernel.json").read_text())


def changes(old: KernelSettings, new: KernelSettings) -> list[str]:
    """'--memory 2g -> 1g' for each setting that differs (env: names only; its values may
    be secrets)."""
    out = []
    for f in dataclasses.fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        if f.name == "env":
            names = sorted({k for k, _ in set(before) ^ set(after)})
            out.append(f"--env {', '.join(names)}")
        elif f.name == "mounts":
            out.append(
                f"--mount {' '.join(m.to_spec() for m in before) or '(none)'} -> "
                f"{' '.join(m.to_spec() for m in after) or '(none)'}"
            )
        else:
            out.append(f"{option(f.name)} {show_value(before)} -> {show_value(after)}")
    return out


def show_value(value: Any) -> str:
    """A setting's value as the command line spells it ("(none)" when unset)."""
    if isinstance(value, tuple):
        return shlex.join(value) or "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return "(none)" if value is None else str(value)


def exposure_warnings(settings: KernelSettings) -> list[str]:
    """A writable --mount that holds nbgrader's files: the kernel could change them."""
    out = []
    for m in settings.mounts:
        exposed = [n for n in NBGRADER_MARKERS if os.path.lexists(os.path.join(m.source, n))]
        if exposed and not m.read_only:
            out.append(
                f"--mount {m.to_spec()} exposes {', '.join(exposed)} writable "
                "to the kernel; add :ro, or mount a directory without nbgrader's files."
            )
    return out


def finding_warnings(findings: list[readiness.Finding]) -> list[str]:
    """The loosenings setup goes ahead with (refused ones only with --force)."""
    return [f"{f.message}{' (forced)' if f.refused else ''}" for f in findings]


def root_note(settings: KernelSettings) -> str:
    """What a kernel started by root runs as, and what it can write, in plain words."""
    if settings.kernel_user == OWNER_USER:
        return (
            "as root: each kernel runs as the uid:gid that owns the notebook's directory "
            "(looked up at each start), so it writes there as that user; a directory root "
            f"owns gets uid {hardening.ROOT_FALLBACK_USER} instead, never root."
        )
    if settings.kernel_user:
        return f"as root: kernels run as {settings.kernel_user}, never as root."
    where = {
        "mount": "cannot write the notebook's directory unless that uid may (root's "
        "directories, nbgrader's autograded/ included, it may not)",
        "copy": "write a private copy of the notebook's directory",
        "none": "have no notebook directory, only their private /tmp and HOME",
    }[settings.workdir]
    return (
        f"note: as root, kernels run as uid:gid {hardening.ROOT_FALLBACK_USER} (never root) "
        f"and {where}. To write next to the notebook as its owner, use --kernel-user owner."
    )
