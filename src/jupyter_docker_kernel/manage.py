"""Our installed kernelspecs as data: `list`, `show` and `remove` (cli.py prints them).

kernelspec.scan_ours() finds the specs (broken and shadowed ones too, so they can be
listed and removed); this module reads each one back into settings,
asks the engine (once per image) whether its image is present, and builds the exact
`docker run` argument list the launcher would use, with placeholders for what only a
real start knows (kernel id, connection file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import hardening, hostpython, kernelspec, pool, thin, thin_client
from jupyter_docker_kernel.engine import LABEL_POOL, Engine
from jupyter_docker_kernel.errors import DockerKernelError, KernelSpecError
from jupyter_docker_kernel.hardening import SUPERVISOR_PATH
from jupyter_docker_kernel.rundir import RunDir, runtime_base
from jupyter_docker_kernel.settings import KernelSettings, option
from jupyter_docker_kernel.workdir import owner_of, project_root

#: What `show` puts where a real start has a value of its own.
PLACEHOLDER_KERNEL_ID = "KERNEL-ID"
PLACEHOLDER_NONCE = "NONCE"


@dataclass(frozen=True)
class SpecInfo:
    """One of our kernelspecs as `list` and `show` report it."""

    name: str
    path: str
    display_name: str
    #: argv[0] of kernel.json: the host Python that runs the launcher.
    launcher_python: str
    settings: KernelSettings | None
    #: Why the settings could not be read ("" when they could).
    error: str = ""
    #: True/False from the engine; None when it was not asked or did not answer.
    image_present: bool | None = None
    #: The spec dir Jupyter uses for this name instead of ours ("" when ours is used).
    shadowed_by: str = ""
    #: The ID the image reference has now ("" when unknown or missing).
    current_id: str = ""
    #: kernel.json's argv without the compiled client (its form tells an earlier
    #: version's spec): the Python launcher command and its arguments.
    launcher_argv: tuple[str, ...] = ()
    #: The compiled thin client argv starts with ("": the Python launcher directly).
    client: str = ""
    #: kernel.json's env value of thin.HANDOVER_ENV (None: not set, the default: on).
    handover_env: str | None = None

    @property
    def client_problem(self) -> str:
        """Why the compiled client cannot serve this spec's starts ("" when it can or
        there is none): then every start runs the Python launcher (thin_client.problem)."""
        return thin_client.problem(self.client) if self.client else ""

    @property
    def image_moved(self) -> bool:
        """True when the tag now names another image than the one setup checked."""
        return bool(self.settings and moved_warning(self.settings, self.current_id))

    @property
    def launcher_isolated(self) -> bool:
        """Whether argv starts Python isolated from the notebook's directory (hostpython)."""
        return hostpython.argv_is_isolated(list(self.launcher_argv))

    @property
    def settings_in_argv(self) -> bool:
        """Whether the settings are in argv (an earlier version's spec), where `ps` shows them."""
        return "--settings" in self.launcher_argv

    @property
    def image(self) -> str:
        return self.settings.image if self.settings else ""

    def limits(self) -> dict[str, Any]:
        """The limits people compare between specs (the full set is in `show`)."""
        s = self.settings
        if s is None:
            return {}
        return {
            "network": s.network,
            "runtime": s.runtime or "default",
            "gpus": s.gpus,
            "memory": s.memory,
            "cpus": s.cpus,
            "pids_limit": s.pids_limit,
            "workdir": s.workdir + (" (read-only)" if s.workdir_readonly else ""),
            "max_lifetime": s.max_lifetime,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "path": self.path,
            "launcher_python": self.launcher_python,
            "image": self.image,
            "image_present": self.image_present,
            "image_id": self.current_id or None,
            "image_moved": self.image_moved,
            "limits": self.limits(),
            "settings": self.settings.to_dict() if self.settings else None,
            "error": self.error or None,
            "shadowed_by": self.shadowed_by or None,
            "thin_client": self.client or None,
        }


def read_spec(name: str, path: Path, shadowed_by: Path | None = None) -> SpecInfo:
    """Read one spec dir; a spec whose settings do not parse comes back with `error` set."""
    shadow = str(shadowed_by) if shadowed_by else ""
    try:
        data = json.loads((path / "kernel.json").read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except OSError as exc:
        why = f"cannot read kernel.json: {exc.strerror or exc}"
        return SpecInfo(name, str(path), "", "", None, error=why, shadowed_by=shadow)
    except ValueError as exc:
        why = f"kernel.json is not valid JSON ({exc})"
        return SpecInfo(name, str(path), "", "", None, error=why, shadowed_by=shadow)
    client, argv = thin_client.split([str(a) for a in data.get("argv") or [""]])
    display = str(data.get("display_name", ""))
    env = data.get("env")
    switch = env.get(thin.HANDOVER_ENV) if isinstance(env, dict) else None
    handover_env = switch if isinstance(switch, str) else None
    try:
        settings = kernelspec.settings_from_kernel_json(data)
    except DockerKernelError as exc:
        return SpecInfo(
            name,
            str(path),
            display,
            argv[0],
            None,
            error=str(exc),
            shadowed_by=shadow,
            launcher_argv=tuple(argv),
            client=client,
        )
    return SpecInfo(
        name,
        str(path),
        display,
        argv[0],
        settings,
        shadowed_by=shadow,
        launcher_argv=tuple(argv),
        client=client,
        handover_env=handover_env,
    )


def image_presence(engine: Engine, images: set[str]) -> dict[str, bool] | None:
    """Which of these images the engine has; None when the engine cannot be asked."""
    ids = image_ids(engine, images)
    return None if ids is None else {ref: bool(found) for ref, found in ids.items()}


def image_ids(engine: Engine, images: set[str]) -> dict[str, str] | None:
    """The ID each image reference names now ("" when missing); None when the engine
    cannot be asked."""
    try:
        found = {ref: engine.image_inspect(ref) for ref in sorted(images)}
    except DockerKernelError:
        return None
    return {ref: str(data.get("Id", "")) if data else "" for ref, data in found.items()}


def moved_warning(settings: KernelSettings, current_id: str) -> tuple[str, str] | None:
    """(what, what to do) when the image's tag now names another image than the one setup
    recorded (a rebuild or retag since); None when it does not, or nothing was recorded.

    `list` prints it under the table and `doctor` as a WARN: the kernels already run the
    new image, which setup never checked.
    """
    if not settings.image_id or not current_id or current_id == settings.image_id:
        return None
    return (
        f"{settings.image} now points to another image ({current_id[7:19]}) than the one "
        f"setup checked ({settings.image_id[7:19]}); new kernels start the new one",
        "check it and record it with setup --replace (same options), or set up with "
        "--image and --pin to choose one image ID for good",
    )


def list_specs(engine: Engine | None) -> tuple[list[SpecInfo], str]:
    """Our kernelspecs by name, with image presence; plus why presence is unknown ("")."""
    specs = [
        read_spec(f.name, f.path, f.shadowed_by)
        for f in sorted(kernelspec.scan_ours(), key=lambda f: f.name)
    ]
    if engine is None or not specs:
        return specs, ""
    # Each kernelspec's image is looked up in its own engine (engine_host: Podman's, say).
    hosts = {s.settings.engine_host for s in specs if s.settings}
    by_host: dict[str | None, dict[str, str]] = {}
    silent: list[str] = []
    for host in sorted(hosts, key=str):
        asked = Engine(engine.command, host=host) if host else engine
        images = {s.image for s in specs if s.settings and s.settings.engine_host == host}
        ids = image_ids(asked, images)
        if ids is None:
            silent.append(host or "the default engine")
        by_host[host] = ids or {}
    why = ""
    if silent:
        why = f"{', '.join(silent)} did not answer; image presence is unknown there"
        if silent == ["the default engine"]:
            why = "the container engine did not answer; image presence is unknown"
    out: list[SpecInfo] = []
    for s in specs:
        if s.settings is None:
            out.append(s)
            continue
        ids = by_host[s.settings.engine_host]
        now = ids.get(s.image)
        present = None if now is None else bool(now)
        out.append(dataclasses.replace(s, image_present=present, current_id=now or ""))
    return out, why


def find(name: str) -> SpecInfo:
    """One of our kernelspecs by name, or a KernelSpecError saying what to do instead."""
    from jupyter_client.kernelspec import KernelSpecManager

    key = name.lower()
    found = kernelspec.scan_ours()
    # In search order: the one Jupyter uses comes first when there are two of ours.
    for spec in found:
        if spec.name == key:
            return read_spec(key, spec.path, spec.shadowed_by)
    ours = {spec.name for spec in found}
    other = KernelSpecManager().find_kernel_specs().get(key)
    if other is not None:
        raise KernelSpecError(
            f"Kernelspec '{name}' in {other} was not written by jupyter-docker-kernel",
            "Nothing was done",
            "Use 'jupyter kernelspec' to manage it.",
        )
    known = ", ".join(sorted(ours)) or "none"
    raise KernelSpecError(
        f"No kernelspec named '{name}' (ours: {known})",
        "Nothing was done",
        "'jupyter-docker-kernel list' shows them.",
    )


def find_or_none(name: str) -> SpecInfo | None:
    """Like find(), but None when no spec of ours has this name."""
    key = name.lower()
    for spec in kernelspec.scan_ours():
        if spec.name == key:
            return read_spec(key, spec.path, spec.shadowed_by)
    return None


def location_options(path: str) -> list[str]:
    """The setup option that installs where `path` (a spec dir) is: --user, --sys-prefix,
    --prefix P, or none for the system-wide dir setup uses by default."""
    from jupyter_core.paths import jupyter_data_dir

    kernels = os.path.realpath(os.path.dirname(path))
    if kernels == os.path.realpath(os.path.join(jupyter_data_dir(), "kernels")):
        return ["--user"]
    if kernels == os.path.realpath(os.path.join(sys.prefix, "share", "jupyter", "kernels")):
        return ["--sys-prefix"]
    prefix, tail = kernels, list[str]()
    for _ in range(3):
        prefix, part = os.path.split(prefix)
        tail.insert(0, part)
    if tail == ["share", "jupyter", "kernels"] and kernelspec.destination(
        "x", user=False, prefix=None
    ).parent != Path(kernels):
        return ["--prefix", prefix]
    return []


def setup_argv(info: SpecInfo, configured: dict[str, Any]) -> list[str]:
    """`setup` arguments that recreate this spec: `show --as-command`.

    Every setting that differs from the built-in default is written out, and so is every
    one the config files set (`configured`), so that the line gives the same spec even
    when it runs where the config says otherwise. --kernel-cmd goes last: it takes the
    rest of the line. No --replace and no --skip-checks: the line is the user's to adapt.
    """
    s = info.settings
    assert s is not None
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((Path(info.path) / "kernel.json").read_text())
    defaults = KernelSettings()
    argv = ["setup", "--name", info.name]
    if info.display_name and info.display_name != f"{info.name} (container)":
        argv += ["--display-name", info.display_name]
    argv += location_options(info.path)
    argv += ["--image", s.image]
    if s.workdir != "mount":
        argv.append("--copy-workdir" if s.workdir == "copy" else "--no-workdir")
    if s.workdir_readonly:
        argv.append("--workdir-readonly")
    for m in s.mounts:
        argv += ["--mount", m.to_spec()]
    for name, value in s.env:
        argv += ["--env", f"{name}={value}"]
    for field in ("python", "runtime", "gpus", "workdir_root", "kernel_user", "engine_host"):
        value = getattr(s, field)
        if value is not None and (value != getattr(defaults, field) or field in configured):
            argv += [option(field), str(value)]
    if s.kernel_transport != "ipc":
        argv += ["--kernel-transport", s.kernel_transport]
    if s.kube_namespace is not None:
        argv += ["--kubernetes", "--namespace", s.kube_namespace]
        for field in ("kube_context", "kube_pull", "kube_pvc"):
            value = getattr(s, field)
            if value is not None and (value != getattr(defaults, field) or field in configured):
                argv += [option(field), str(value)]
    if s.keep_entrypoint:
        argv.append("--keep-entrypoint")
    for arg in s.docker_args:
        argv.append(f"--docker-arg={arg}")  # one item: a value starting with - stays a value
    for field in LIMIT_FIELDS:
        value = getattr(s, field)
        if value != getattr(defaults, field) or field in configured:
            argv += [option(field), f"{value:g}" if isinstance(value, float) else str(value)]
    mode = str(data.get("interrupt_mode", "signal"))
    if mode != "signal" or s.kernel_spec_in_image:
        argv += ["--interrupt-mode", mode]
    if "kernel_provisioner" in (data.get("metadata") or {}):
        argv.append("--provisioner")
    if s.kernel_spec_in_image:
        # The command and the image kernel's env come from the image again, as they did.
        argv += ["--kernel-spec-in-image", s.kernel_spec_in_image]
    elif s.kernel_cmd:
        argv += ["--kernel-cmd", *s.kernel_cmd]
    return argv


#: Settings setup sets with one option of the same name (cli.LIMIT_OPTIONS' fields).
LIMIT_FIELDS = (
    "network",
    "memory",
    "cpus",
    "pids_limit",
    "tmp_size",
    "tmp_inodes",
    "nofile",
    "fsize",
    "max_lifetime",
    "max_message",
    "output_budget",
    "copy_limit",
    "pool",
    "pool_ttl",
)


def placeholder_launch(settings: KernelSettings, workdir: str | None = None) -> hardening.Launch:
    """A Launch like Container.launch_facts() builds, with placeholders for the per-start parts."""
    try:
        base = str(runtime_base())
    except DockerKernelError:
        base = "$RUNTIME_BASE"  # show still works; doctor says what is wrong with it
    rundir = RunDir.placeholder(base, PLACEHOLDER_KERNEL_ID, PLACEHOLDER_NONCE)
    notebook_dir = workdir or os.getcwd()
    project = notebook_dir
    if settings.workdir_root and settings.workdir != "none":
        # The root a notebook in this directory would get (as the launcher resolves it).
        with contextlib.suppress(DockerKernelError):
            project, _ = project_root(notebook_dir, settings)
    return hardening.Launch(
        kernel_id=PLACEHOLDER_KERNEL_ID,
        container_name=rundir.container_name(),
        runtime_dir=str(rundir.sockets),
        connection_file=str(rundir.connection),
        supervisor_path=SUPERVISOR_PATH,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        workdir=workdir or os.getcwd(),
        project_root=project if project != notebook_dir else "",
        env_file=str(rundir.env_file) if settings.env else None,
        launcher_pid=0,
        launcher_start="START",
        hostname="HOST",
        workdir_owner=owner_of(workdir or os.getcwd(), settings),
    )


def effective_args(settings: KernelSettings, workdir: str | None = None) -> list[str]:
    """The `docker run` arguments the launcher would use (Container.start's list)."""
    launch = placeholder_launch(settings, workdir)
    cidfile = RunDir(Path(launch.runtime_dir).parent).cid
    return hardening.run_args(settings, launch, cidfile=str(cidfile))


def remove(name: str) -> SpecInfo:
    """Delete one of our kernelspecs; anything else (or a missing one) is refused."""
    info = find(name)
    try:
        shutil.rmtree(info.path)
    except OSError as exc:
        raise KernelSpecError(
            f"Cannot remove {info.path}: {exc.strerror or exc}. It may be partly removed; "
            "check its permissions (a system-wide spec needs root) and run remove again."
        ) from exc
    return info


def warm_containers(engine: Engine, settings: KernelSettings) -> list[str]:
    """Names of the warm containers (unclaimed, this user's) for these settings.

    `remove` reports them: they outlive their kernelspec until their pool time ends.
    Raises our EngineError when the engine cannot be asked.
    """
    key = pool.pool_key(settings, os.getuid())
    names = [str(item.get("Names", "")) for item in engine.list_containers({LABEL_POOL: key})]
    return [name for name in names if name.startswith(pool.POOL_NAME_PREFIX)]
