"""One frozen dataclass of everything a kernel needs; the CLI builds it, kernel.json stores it.

`KernelSettings.to_dict()` is what kernelspec.py embeds in kernel.json, and
`KernelSettings.from_dict()` is how the launcher reads it back: validation happens once,
here, so a kernel.json edited by hand fails with the same clear message as a bad flag.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from jupyter_docker_kernel.errors import SettingsError

#: The image `setup` uses when no --image is given; `image build` makes it offline.
DEFAULT_IMAGE = "jupyter-docker-kernel/default:latest"

#: The placeholder in kernel_cmd that becomes the in-container connection file.
CONNECTION_FILE_PLACEHOLDER = "{connection_file}"

WorkdirMode = Literal["mount", "copy", "none"]
EngineKind = Literal["docker", "podman"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("docker", "podman")
#: How the kernel binds its sockets: "ipc" (unix sockets in the runtime dir) or "tcp" on
#: the container's loopback, bridged to those unix sockets by the supervisor.
KernelTransport = Literal["ipc", "tcp"]
KERNEL_TRANSPORTS: tuple[KernelTransport, ...] = ("ipc", "tcp")
WORKDIR_MODES: tuple[WorkdirMode, ...] = ("mount", "copy", "none")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENGINE_HOST = re.compile(r"^(unix:///\S+|(tcp|ssh)://\S+)$")
_IMAGE_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_MEMORY = re.compile(r"^[0-9]+[bkmg]?$", re.IGNORECASE)
#: What Docker's own size options take (go-units RAMInBytes): 2g, 2gb, 2GiB, 1.5g, "512 MB".
_DOCKER_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?) ?([kmgtp]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
#: kernel_user meaning "the uid:gid that owns the notebook's directory", resolved per start.
OWNER_USER = "owner"
#: Container paths we own; a --mount onto them would break the kernel or the supervisor.
RESERVED_TARGETS = ("/run/jupyter-docker-kernel", "/opt/jupyter-docker-kernel")
#: --workdir-root values besides an absolute path: the enclosing git work tree, N levels up.
ROOT_GIT = "git"
ROOT_UP = r"\.\.([0-9]+)"
#: The most levels --workdir-root ..N may climb (a deeper project is better named by PATH).
ROOT_UP_MAX = 16
#: Placeholders a --mount HOST may start with, filled in at each kernel start (workdir.py):
#: the project root (--workdir-root) and the notebook's own directory.
MOUNT_TEMPLATES = ("{project}", "{notebook_dir}")

#: The setup option that sets each field: errors name what people type (--pids-limit), not
#: the field (pids_limit); `show --as-command` and `setup --replace` speak in options too.
OPTIONS: dict[str, str] = {
    "image": "--image",
    "workdir": "--copy-workdir/--no-workdir",
    "workdir_root": "--workdir-root",
    "mounts": "--mount",
    "env": "--env",
    "kernel_cmd": "--kernel-cmd",
    "kernel_spec_in_image": "--kernel-spec-in-image",
    "kernel_transport": "--kernel-transport",
    "python": "--python",
    "docker_args": "--docker-arg",
    "network": "--network",
    "runtime": "--runtime",
    "gpus": "--gpus",
    "memory": "--memory",
    "cpus": "--cpus",
    "pids_limit": "--pids-limit",
    "tmp_size": "--tmp-size",
    "kernel_user": "--kernel-user",
    "workdir_readonly": "--workdir-readonly",
    "max_lifetime": "--max-lifetime",
    "nofile": "--nofile",
    "fsize": "--fsize",
    "tmp_inodes": "--tmp-inodes",
    "max_message": "--max-message",
    "output_budget": "--output-budget",
    "copy_limit": "--copy-limit",
    "pool": "--pool",
    "pool_ttl": "--pool-ttl",
    "engine_host": "--engine-host",
    "nodes": "--node",
    "node_shared_paths": "--node-shared-path",
    "engine": "--podman",
    "kube_namespace": "--namespace",
    "kube_context": "--kube-context",
    "kube_pull": "--kube-pull",
    "kube_pvc": "--kube-pvc",
}


def option(field: str) -> str:
    """The setup option for a settings field ('pids_limit' -> '--pids-limit')."""
    return OPTIONS.get(field, field)


def normalise_size(value: str, field: str) -> str:
    """A size as Docker spells it (2gb, 512MB, 1.5g, 2GiB) -> our form (2g, 512m, 1536m).

    Docker's size options accept all of those (binary multiples, case-insensitive, an
    optional 'b' or 'ib'), but the tmpfs size= mount option and our byte budgets take only
    digits with k, m or g; so anything else becomes the largest whole unit. A size already
    in that form is kept as written (so existing kernelspecs read back unchanged).
    """
    text = str(value).strip()
    if _MEMORY.match(text):
        return text
    found = _DOCKER_SIZE.match(text)
    if not found:
        raise SettingsError(
            f"{option(field)} '{value}' is not a size such as 512m, 2g or 2gb",
            "No kernelspec was written",
        )
    number = int(float(found.group(1)) * _UNITS[found.group(2).lower()])
    for unit in ("g", "m", "k"):
        if number and number % _UNITS[unit] == 0:
            return f"{number // _UNITS[unit]}{unit}"
    return str(number)


@dataclass(frozen=True)
class Mount:
    """A host directory or file made visible in the container (`--mount HOST:DEST[:ro]`)."""

    source: str
    target: str
    read_only: bool = False

    @property
    def template(self) -> str:
        """The placeholder the source starts with ({project}, {notebook_dir}), else ""."""
        return next((t for t in MOUNT_TEMPLATES if self.source.startswith(t)), "")

    def resolved(self, project: str, notebook_dir: str) -> Mount:
        """This mount with its placeholder filled in for one start (self if it has none).

        validated() normalised the rest of the path, so '..' cannot climb out of it.
        """
        template = self.template
        if not template:
            return self
        base = project if template == "{project}" else notebook_dir
        rest = self.source[len(template) :]
        return dataclasses.replace(self, source=base.rstrip("/") + rest if rest else base)

    @classmethod
    def parse(cls, text: str, base_dir: str) -> Mount:
        """Parse `HOST:DEST[:ro|:rw]`; a relative HOST is resolved against base_dir, now;
        a HOST starting with {project} or {notebook_dir} at each start (resolved())."""
        parts = text.split(":")
        mode = "rw"
        if len(parts) == 3 and parts[2] in ("ro", "rw"):
            mode = parts.pop()
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise SettingsError(
                f"--mount '{text}' is not HOST:DEST or HOST:DEST:ro",
                "No kernelspec was written",
                "Example: --mount ./data:/data:ro (paths containing ':' cannot be mounted).",
            )
        host, dest = parts
        if host.startswith("{"):
            return cls(source=host, target=dest, read_only=mode == "ro").validated()
        source = str(PurePosixPath(base_dir, host)) if not host.startswith("/") else host
        return cls(source=_normalise(source), target=dest, read_only=mode == "ro").validated()

    def validated(self) -> Mount:
        """Return self after checking both paths are absolute (or a template) and the
        target is not ours; a template's rest is normalised ({project}/a/../b -> {project}/b)."""
        source = self.source
        if source.startswith("{"):
            template = next((t for t in MOUNT_TEMPLATES if source.partition("}")[0] + "}" == t), "")
            rest = source[len(template) :]
            if not template or (rest and not rest.startswith("/")):
                raise SettingsError(
                    f"--mount host path '{source}' starts with an unknown placeholder",
                    "No kernelspec was written",
                    "Use {project}/PATH or {notebook_dir}/PATH "
                    "(filled in at each start), or an absolute path.",
                )
            rest = _normalise(rest) if rest else ""
            source = template + ("" if rest == "/" else rest)
        for what, path in (("host path", source), ("container path", self.target)):
            if what == "host path" and path.startswith("{"):
                path = path[path.index("}") + 1 :] or "/"
            if not path.startswith("/"):
                raise SettingsError(
                    f"Mount {what} '{path}' must be absolute",
                    "No kernelspec was written",
                )
            if "," in path or "\n" in path:
                raise SettingsError(
                    f"Mount {what} '{path}' contains ',' or a newline, which the engine's "
                    "--mount syntax cannot carry",
                    "No kernelspec was written",
                    "rename the path.",
                )
        target = _normalise(self.target)
        if target == "/" or any(
            target == t or target.startswith(t + "/") for t in RESERVED_TARGETS
        ):
            raise SettingsError(
                f"Mount target '{self.target}' is reserved for the container's own use",
                "No kernelspec was written",
                "Choose another container path.",
            )
        return dataclasses.replace(self, source=source, target=target)

    def to_spec(self) -> str:
        """The `HOST:DEST[:ro]` form users type, for `show` and error messages."""
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class KernelSettings:
    """Everything one dockerized kernel needs, shared by setup, launcher and provisioner."""

    image: str = DEFAULT_IMAGE
    #: "mount": the notebook's directory at the same path, writable; "copy": a private copy
    #: that never reaches the host; "none": nothing mounted, the kernel starts in HOME.
    workdir: WorkdirMode = "mount"
    #: What is mounted (or copied) besides the notebook's directory, resolved at each start
    #: (workdir.project_root): "git" (its git work tree), "..N" (N levels up), an absolute
    #: path holding it; None: the notebook's directory alone.
    workdir_root: str | None = None
    mounts: tuple[Mount, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: The in-container command; empty means `python -m ipykernel_launcher -f {connection_file}`.
    kernel_cmd: tuple[str, ...] = ()
    #: The image's own kernelspec that kernel_cmd came from (setup --kernel-spec-in-image).
    kernel_spec_in_image: str = ""
    #: "tcp" for a kernel that cannot bind ipc sockets (costs a hop in the supervisor).
    kernel_transport: KernelTransport = "ipc"
    python: str = "python3"
    #: Passed verbatim to `docker run`, after ours: the escape hatch for what we do not model.
    docker_args: tuple[str, ...] = ()
    network: str = "none"
    runtime: str | None = None
    #: GPUs for the kernel in Docker's --gpus syntax (all, a count, device=0,1), kept in
    #: the form parse_gpus() writes; None: no GPU.
    gpus: str | None = None
    memory: str = "2g"
    cpus: float = 1.0
    pids_limit: int = 512
    #: Size of the writable tmpfs mounted at /tmp and at HOME.
    tmp_size: str = "512m"
    #: The container runs as this uid:gid; None means the launching user's (or 65534 for
    #: root); "owner" the notebook directory's owner when root launches (never uid 0).
    kernel_user: str | None = None
    #: Mount the notebook's directory read-only (workdir mode "mount").
    workdir_readonly: bool = False
    #: Hard cap on the kernel's life, enforced inside the container (holds without the host).
    max_lifetime: float = 24 * 3600.0
    #: Per-process limits: open files and the largest file it may write.
    nofile: int = 1024
    fsize: str = "1g"
    #: Files and directories each tmpfs (/tmp, HOME) may hold.
    tmp_inodes: int = 65536
    #: Host-side budgets, enforced by the relay while bytes flow from the kernel.
    max_message: str = "64m"
    output_budget: str = "1g"
    #: Largest work directory --copy-workdir will copy.
    copy_limit: str = "1g"
    #: Warm containers to keep ready (0: none), and how long an unclaimed one waits.
    pool: int = 0
    pool_ttl: float = 600.0
    #: The engine's API (DOCKER_HOST form, e.g. unix:///run/podman/podman.sock for Podman);
    #: None: the launcher's DOCKER_HOST, else the Docker default. Setup checked the image there.
    engine_host: str | None = None
    #: Whose Docker-compatible API that is: Podman's takes a few options differently.
    engine: EngineKind = "docker"
    #: Keep the image's ENTRYPOINT (setup --keep-entrypoint): it then runs our supervisor
    #: command as its arguments, so it must end in `exec "$@"`. Off by default: the
    #: supervisor is the command, and an entrypoint such as Docker Stacks' start.sh expects
    #: root or a writable HOME that a kernel container does not have.
    keep_entrypoint: bool = False
    #: The image ID (sha256:...) `image` named when setup checked it; list and doctor warn
    #: when the tag has moved to another image since. "" when setup did not ask the engine.
    image_id: str = ""
    #: Kubernetes (setup --kubernetes): the namespace each kernel's pod runs in; None: the
    #: local engine. kube_context: the kubeconfig context (None: current, or in-cluster).
    kube_namespace: str | None = None
    kube_context: str | None = None
    #: The kernel pod's imagePullPolicy: Never (the image is on the nodes) unless asked.
    kube_pull: str = "Never"
    #: A PersistentVolumeClaim mounted in the pod, CLAIM:PATH[:ro] (interactive use: the
    #: notebook's directory is below PATH); None: the work dir is copied or not given.
    kube_pvc: str | None = None
    #: Remote nodes (ssh://user@host[:port], setup --node): each start runs on the
    #: least-loaded one that answers (node_backend.pick). engine_host is the first: the
    #: address the resident helper, doctor and list key on.
    nodes: tuple[str, ...] = ()
    #: Directories every node sees at the same path as this host (a shared filesystem,
    #: setup --node-shared-path): a kernel on a node may mount a work dir below one of
    #: them (node_shared.check); any other mounted work dir is refused for a node.
    node_shared_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.image or any(c.isspace() for c in self.image):
            raise SettingsError(f"--image '{self.image}' is empty or contains spaces.")
        if self.workdir not in WORKDIR_MODES:
            raise SettingsError(
                f"workdir must be one of {', '.join(WORKDIR_MODES)}, not '{self.workdir}'."
            )
        self._check_workdir_root()
        for name, _ in self.env:
            if not _ENV_NAME.match(name):
                raise SettingsError(
                    f"--env name '{name}' is not a valid variable name",
                    "No kernelspec was written",
                )
        for size_name in (
            "memory",
            "tmp_size",
            "fsize",
            "max_message",
            "output_budget",
            "copy_limit",
        ):
            given = getattr(self, size_name)
            size = normalise_size(given, size_name)
            # Frozen: the normalised spelling is what kernel.json stores and docker gets.
            object.__setattr__(self, size_name, size)
            if size_bytes(size) == 0:
                raise SettingsError(
                    f"{option(size_name)} '{given}' must be more than 0 (the engine reads 0 "
                    "as unlimited)."
                )
        if not math.isfinite(self.max_lifetime) or self.max_lifetime < 1:
            raise SettingsError(
                f"--max-lifetime must be at least 1 second, not {self.max_lifetime}; "
                "there is no unlimited lifetime (a kernel must not outlive its purpose)."
            )
        for count_name, floor in (("nofile", 64), ("tmp_inodes", 64)):
            if getattr(self, count_name) < floor:
                raise SettingsError(
                    f"{option(count_name)} {getattr(self, count_name)} is too small; "
                    f"use {floor} or more."
                )
        if self.pool < 0 or self.pool > 32:
            raise SettingsError(f"--pool must be between 0 and 32 containers, not {self.pool}.")
        if self.pool and (self.workdir == "mount" or self.kernel_cmd):
            raise SettingsError(
                "--pool needs --copy-workdir or --no-workdir and the default ipykernel command: "
                "a running container cannot gain the notebook's directory as a mount, and a "
                "pooled kernel is ipykernel started ahead of time",
                "No kernelspec was written",
            )
        if not math.isfinite(self.pool_ttl) or self.pool_ttl < 10:
            raise SettingsError(f"--pool-ttl must be at least 10 seconds, not {self.pool_ttl}.")
        if not math.isfinite(self.cpus) or self.cpus <= 0:
            raise SettingsError(f"--cpus must be positive, not {self.cpus}.")
        if self.pids_limit < 16:
            raise SettingsError(
                f"--pids-limit {self.pids_limit} is too small for a kernel (it needs about 16 "
                "threads of its own); use 64 or more."
            )
        if self.kernel_user == OWNER_USER:
            if self.pool:
                raise SettingsError(
                    "--kernel-user owner is looked up at each start, from the notebook's "
                    "directory, so it cannot go with --pool (warm containers start before "
                    "that directory is known)",
                    "No kernelspec was written",
                    "Drop one of them.",
                )
        elif self.kernel_user is not None and not re.match(r"^[0-9]+(:[0-9]+)?$", self.kernel_user):
            raise SettingsError(
                f"--kernel-user '{self.kernel_user}' is not UID, UID:GID or {OWNER_USER}."
            )
        elif self.kernel_user is not None and int(self.kernel_user.split(":")[0]) == 0:
            raise SettingsError(
                "--kernel-user 0 would run hostile code as root in the container",
                "No kernelspec was written",
                "Pick an unprivileged uid such as 1000.",
            )
        if self.engine not in ENGINE_KINDS:
            raise SettingsError(
                f"engine must be one of {', '.join(ENGINE_KINDS)}, not '{self.engine}'."
            )
        for node in self.nodes:
            if not node.startswith("ssh://") or not _ENGINE_HOST.match(node):
                raise SettingsError(
                    f"--node '{node}' is not a node address such as ssh://user@host[:port]",
                    "No kernelspec was written",
                )
        for shared in self.node_shared_paths:
            if not shared.startswith("/") or posixpath.normpath(shared) != shared or shared == "/":
                raise SettingsError(
                    f"--node-shared-path '{shared}' is not a normalized absolute directory "
                    "other than /",
                    "No kernelspec was written",
                    "Give the directory every node sees at the same path, such as /srv/course.",
                )
        if self.nodes and self.engine_host is None:
            # Set once here (a frozen dataclass): the first node is the kernelspec's engine.
            object.__setattr__(self, "engine_host", self.nodes[0])
        if self.nodes and self.engine_host not in self.nodes:
            raise SettingsError(
                f"--engine-host {self.engine_host} is not one of the --node addresses",
                "No kernelspec was written",
                "Give the nodes with --node alone.",
            )
        if self.engine_host is not None and not _ENGINE_HOST.match(self.engine_host):
            raise SettingsError(
                f"--engine-host '{self.engine_host}' is not a DOCKER_HOST address such as "
                "unix:///run/podman/podman.sock (unix://, tcp:// or ssh://)",
                "No kernelspec was written",
            )
        if self.image_id and not _IMAGE_ID.match(self.image_id):
            raise SettingsError(
                f"image_id '{self.image_id}' is not an image ID (sha256: and 64 hex digits). "
                "Run setup again to record it."
            )
        if self.gpus is not None:
            # Frozen: the canonical spelling is what kernel.json stores and docker gets.
            object.__setattr__(self, "gpus", parse_gpus(self.gpus).value)
            if self.engine == "podman":
                raise SettingsError(
                    f"--gpus {self.gpus} cannot be used with Podman: its Docker-compatible API "
                    "(which jupyter-docker-kernel drives) accepts GPU requests, --gpus and CDI "
                    "--device nvidia.com/gpu=... alike, and silently drops them, so the kernel "
                    "would run without a GPU",
                    "No kernelspec was written",
                    "Use Docker with the NVIDIA Container Toolkit for GPU kernels.",
                )
        if self.kernel_transport not in KERNEL_TRANSPORTS:
            raise SettingsError(
                f"--kernel-transport must be ipc or tcp, not '{self.kernel_transport}'."
            )
        if self.kernel_transport == "tcp" and (self.network == "host" or self.pool):
            raise SettingsError(
                "--kernel-transport tcp needs the container's own loopback, so it cannot go "
                "with --network host (the kernel's ports would open on the host) or --pool",
                "No kernelspec was written",
                "Drop one of them.",
            )
        if self.kernel_spec_in_image and not self.kernel_cmd:
            raise SettingsError(
                f"--kernel-spec-in-image '{self.kernel_spec_in_image}' needs the kernel_cmd "
                "read from it. Run setup again with --kernel-spec-in-image to rewrite it."
            )
        if self.kube_namespace is not None or self.kube_context or self.kube_pvc:
            # Here (not in kube_manifests): kernel.json and the config file are read once.
            from jupyter_docker_kernel.kube_manifests import check_settings

            check_settings(self)
        if self.kernel_cmd and not any(CONNECTION_FILE_PLACEHOLDER in a for a in self.kernel_cmd):
            raise SettingsError(
                f"--kernel-cmd must contain {CONNECTION_FILE_PLACEHOLDER} so the kernel finds "
                "its sockets",
                "No kernelspec was written",
            )

    def _check_workdir_root(self) -> None:
        """--workdir-root is git, ..N or an absolute path, and goes with a work directory;
        a {project} mount needs it; templates cannot go with --pool. Stores the normal form."""
        root = self.workdir_root
        example = "Use --workdir-root git, ..1 (the notebook's parent) or an absolute path."
        if root is not None:
            up = re.fullmatch(ROOT_UP, root)
            if root == ROOT_GIT:
                pass
            elif up:
                if not 1 <= int(up.group(1)) <= ROOT_UP_MAX:
                    raise SettingsError(
                        f"--workdir-root {root}: ..N climbs 1 to {ROOT_UP_MAX} levels",
                        "No kernelspec was written",
                        f"{example}",
                    )
                object.__setattr__(self, "workdir_root", f"..{int(up.group(1))}")
            elif root.startswith("/") and "," not in root and "\n" not in root:
                object.__setattr__(self, "workdir_root", _normalise(root))
            else:
                raise SettingsError(
                    f"--workdir-root '{root}' is not git, ..N or an absolute path (a path "
                    f"cannot hold ',' or a newline)",
                    "No kernelspec was written",
                    f"{example}",
                )
            if self.workdir == "none":
                raise SettingsError(
                    "--workdir-root names what is mounted besides the notebook's directory, "
                    "and --no-workdir mounts nothing",
                    "No kernelspec was written",
                    "Drop one of them.",
                )
        templates = [m for m in self.mounts if m.template]
        if any(m.template == "{project}" for m in templates) and root is None:
            raise SettingsError(
                "--mount {project}/... needs --workdir-root (which directory is the project)",
                "No kernelspec was written",
                "Add --workdir-root git, or use {notebook_dir}/...",
            )
        if templates and self.pool:
            raise SettingsError(
                f"--mount {templates[0].to_spec()} is filled in at each start, and a warm "
                "container (--pool) is started before the notebook is known",
                "No kernelspec was written",
                "Drop one of them.",
            )

    def command(self) -> tuple[str, ...]:
        """The kernel's command inside the container, with the placeholder still in it."""
        if self.kernel_cmd:
            return self.kernel_cmd
        return (self.python, "-m", "ipykernel_launcher", "-f", CONNECTION_FILE_PLACEHOLDER)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields that differ from the defaults (plus the image)."""
        out: dict[str, Any] = {}
        defaults = KernelSettings()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name) and f.name != "image":
                continue
            if f.name == "mounts":
                value = [dataclasses.asdict(m) for m in value]
            elif f.name == "env":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelSettings:
        """Rebuild settings from to_dict() output; unknown keys are an error, not ignored."""
        if not isinstance(data, Mapping):
            raise SettingsError(
                "The kernelspec's settings are malformed: not a JSON object. "
                "Run setup again to rewrite the kernelspec."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(
                f"Unknown setting(s) {', '.join(unknown)} in the kernelspec. It was probably "
                "written by a newer jupyter-docker-kernel; upgrade, or run setup again."
            )
        kwargs: dict[str, Any] = dict(data)
        converters: dict[str, Any] = {
            "mounts": lambda v: tuple(Mount(**m).validated() for m in v),
            "env": lambda v: tuple((str(k), str(x)) for k, x in dict(v).items()),
            "kernel_cmd": lambda v: tuple(str(a) for a in v),
            "docker_args": lambda v: tuple(str(a) for a in v),
            "nodes": lambda v: tuple(str(a) for a in v),
            "node_shared_paths": lambda v: tuple(str(a) for a in v),
            "cpus": float,
            **dict.fromkeys(("pids_limit", "nofile", "tmp_inodes", "pool"), int),
            **dict.fromkeys(("max_lifetime", "pool_ttl"), float),
        }
        for name, convert in converters.items():
            if name not in kwargs:
                continue
            try:
                kwargs[name] = convert(kwargs[name])
            except (TypeError, ValueError) as exc:
                # Name the field as kernel.json spells it and the option that sets it.
                raise SettingsError(
                    f"The kernelspec's setting {name} ({option(name)}) is malformed: {exc}. "
                    "Run setup again with --replace to rewrite it."
                ) from exc
        return cls(**kwargs)


@dataclass(frozen=True)
class GpuRequest:
    """A --gpus value read the way Docker's CLI reads it (opts/gpus.go), for one request.

    count: -1 for all, else how many; devices: indexes or UUIDs (then no count).
    """

    value: str
    count: int | None = None
    devices: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    driver: str = ""


_GPU_KEYS = ("count", "device", "capabilities", "driver")


def parse_gpus(text: str) -> GpuRequest:
    """Check a --gpus value as `docker run --gpus` does, and spell it so Docker reads it back.

    Docker's value is one CSV record: `all` or a count, or key=value fields (count, device,
    capabilities, driver). `device=0,1` unquoted would be read by Docker as device 0 plus a
    count of 1 (which the engine then refuses): a bare field after device= or capabilities=
    is taken as another id of that list, and the list is quoted in the stored form
    ('"device=0,1"'). Raises SettingsError naming --gpus.
    """
    where = f"--gpus '{text}'"
    example = "Examples: --gpus all, --gpus 2, --gpus device=0,1, --gpus device=GPU-<uuid>."
    try:
        fields = next(csv.reader([text.strip()]), [])
    except csv.Error as exc:
        raise SettingsError(
            f"{where} is not valid: {exc}", "No kernelspec was written", f"{example}"
        ) from exc
    if not fields or not all(f.strip() for f in fields):
        raise SettingsError(
            f"{where} is empty or has an empty field", "No kernelspec was written", f"{example}"
        )
    values: dict[str, list[str]] = {}
    last = ""
    for raw in fields:
        field = raw.strip()
        key, eq, value = field.partition("=")
        if not eq and last in ("device", "capabilities") and key != "all":
            values[last] += [key]  # device=0,1 unquoted: 1 is another device, not a count
            continue
        if not eq:
            key, value = "count", key
        if key not in _GPU_KEYS:
            raise SettingsError(
                f"{where}: unexpected key '{key}' (Docker's --gpus takes all, a count, or "
                f"{', '.join(k + '=' for k in _GPU_KEYS)})",
                "No kernelspec was written",
                f"{example}",
            )
        if key in values:
            raise SettingsError(
                f"{where}: {key} is given twice", "No kernelspec was written", f"{example}"
            )
        values[key] = [v.strip() for v in value.split(",")] if key != "count" else [value]
        last = key
    count: int | None = None
    if "count" in values:
        word = values["count"][0]
        if word != "all" and not re.fullmatch(r"[0-9]+", word):
            raise SettingsError(
                f"{where}: the count '{word}' is not 'all' or a whole number",
                "No kernelspec was written",
                f"{example}",
            )
        count = -1 if word == "all" else int(word)
        if count == 0:
            raise SettingsError(
                f"{where} asks for no GPU",
                "No kernelspec was written",
                "Leave --gpus out for a kernel without one.",
            )
    devices = tuple(values.get("device", ()))
    if count is not None and devices:
        raise SettingsError(
            f"{where} names GPUs both by count and by device, which the engine refuses",
            "No kernelspec was written",
            "Give one: --gpus 2 or --gpus device=0,1.",
        )
    bad = [d for d in devices if not re.fullmatch(r"[A-Za-z0-9_.:-]+", d)]
    if bad or "" in devices:
        raise SettingsError(
            f"{where}: '{bad[0] if bad else ''}' is not a GPU index or UUID",
            "No kernelspec was written",
            f"{example}",
        )
    out: list[str] = []
    if count is not None:
        out.append("all" if count < 0 else str(count))
    for key in ("device", "capabilities", "driver"):
        if key in values:
            out.append(f"{key}={','.join(values[key])}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(out)
    return GpuRequest(
        value=buf.getvalue(),
        count=count,
        devices=devices,
        capabilities=tuple(values.get("capabilities", ())),
        driver=values.get("driver", [""])[0],
    )


def size_bytes(size: str) -> int:
    """'512m' -> 536870912: the engine's size syntax (b, k, m, g; binary multiples)."""
    unit = size[-1].lower()
    if unit.isdigit():
        return int(size)
    return int(size[:-1]) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def parse_env(items: list[str]) -> tuple[tuple[str, str], ...]:
    """Parse repeated `--env NAME=VALUE` options, keeping order and the last of duplicates."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(
                f"--env '{item}' has no '='", "No kernelspec was written", "Use --env NAME=VALUE."
            )
        env[name] = value
    return tuple(env.items())


def _normalise(path: str) -> str:
    """Collapse '.', '..' and duplicate slashes without touching the filesystem."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)
