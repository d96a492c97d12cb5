"""The broker's policy file and wire format (pure: no sockets, no engine, no files but the
policy's text): what a user may ask the root broker (broker.py) for, and in which bytes.

The broker starts kernels for users who cannot reach the container engine. Everything a
caller sends is checked here before anything exists, and refused with one line
(`Refusal`) unless the admin's `Policy` allows it. The request names a kernelspec-level
start, never engine arguments: the broker builds the container's arguments itself, with
hardening.run_args, from the `KernelSettings` this module returns.

The conversation on one connection to the broker's socket (BrokerBackend in
broker_client.py is the client; tests/test_broker_policy.py the table of refusals):

1. client -> broker: one line of JSON, at most MAX_REQUEST bytes, the start (`parse_start`):
       {"op": "start", "v": 1, "name": "jdk-<kernel id>-<nonce>", "kernel_id": "...",
        "kernelspec": "...", "workdir": "/abs/notebook/dir", "project": "/abs/root" or "",
        "connection": {"key": "...", "signature_scheme": "hmac-sha256", "kernel_name": "..."},
        "settings": {"image": "...", "memory": "2g", ...}}
   Unknown fields anywhere are refused, not ignored; so are settings that would reach the
   engine unchecked (docker_args, kernel_user, gpus, engine_host, ...), wrong types, a
   network, an image the policy does not list and limits above the policy's.
2. broker -> client: one line of JSON: {"ok": true, "sockets": DIR} (the kernel's socket
   dir, made by the broker, owned by the caller, 0700) or {"ok": false, "error": LINE}
   (the connection then ends).
3. Then frames both ways (`frame`, `FrameReader`): a kind byte, a 4-byte big-endian
   length, the payload (at most MAX_FRAME bytes).
       broker -> client: b"i" the container's id; b"o" the supervisor's and the kernel's
       output, raw; b"x" the exit, JSON {"code": N, "oom": bool}, last.
       client -> broker: b"w" bytes for the supervisor (the --copy-workdir stream); b"c" a
       control message, JSON {"op": "signal", "sig": "INT"} | {"op": "stop", "why": TEXT}
       | {"op": "kill", "why": TEXT} (`parse_control`; "why" is optional: the client's
       reason, e.g. its relay's "budget exceeded: ...", for the audit line).
4. The connection is the kernel's life: when the client's end closes (its process ended,
   however), the broker lets go of the supervisor's lifeline and removes the container.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from jupyter_docker_kernel.errors import DockerKernelError, SettingsError
from jupyter_docker_kernel.rundir import NAME_PREFIX
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings, size_bytes

#: Where the admin's policy lives (broker --policy, doctor --broker).
DEFAULT_POLICY = "/etc/jupyter-docker-kernel/broker.toml"
#: The broker's socket (broker --socket; the clients' JUPYTER_DOCKER_KERNEL_BROKER).
DEFAULT_SOCKET = "/run/jupyter-docker-kernel/broker.sock"
#: The unix group whose members may connect (broker --group).
DEFAULT_GROUP = "jupyter-kernels"
#: The wire format's version ("v" in a start).
PROTOCOL = 1
#: The longest start line: a kernelspec's settings fit in a few KiB.
MAX_REQUEST = 16 * 1024
#: The largest frame payload either side sends or accepts.
MAX_FRAME = 64 * 1024
#: At most this many --mount entries per request.
MAX_MOUNTS = 8
#: The longest reason a client may give with a stop or a kill (it goes into one audit line).
MAX_WHY = 200
#: A frame's header: kind (1 byte), payload length (4 bytes, big-endian).
HEADER = struct.Struct(">cI")
#: Frame kinds (see the module docstring).
ID, OUTPUT, EXIT, WRITE, CONTROL = b"i", b"o", b"x", b"w", b"c"
#: Signals a client may send its kernel through the broker.
SIGNALS = ("INT", "TERM", "HUP", "QUIT", "USR1", "USR2", "KILL")
SIGNATURE_SCHEMES = ("hmac-sha256", "hmac-sha384", "hmac-sha512")

_NAME = re.compile(rf"^{NAME_PREFIX}-[A-Za-z0-9_.-]{{1,80}}$")
_KERNEL_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KERNELSPEC = re.compile(r"^[A-Za-z0-9_.+-]{0,128}$")
_KEY = re.compile(r"^[\x21-\x7e]{0,256}$")


class Refusal(DockerKernelError):  # noqa: N818 - a refusal, not a failure
    """A request the broker will not serve; str() is the one line the client gets."""

    def __init__(self, what: str) -> None:
        super().__init__(what, "No container was started")

    @property
    def line(self) -> str:
        """What the caller reads: one line, without the 'not done' part (it is implied)."""
        return " ".join(self.what.split())


class PolicyError(DockerKernelError):
    """The admin's policy file is missing, malformed or unsafe."""


# -- the policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What the broker may start: the admin's /etc/jupyter-docker-kernel/broker.toml.

    The limits are maxima: a request may ask for less, never more. Absent keys take the
    product's defaults (KernelSettings), which are also what a request gets when it does
    not name a limit.
    """

    #: Images users may run, exactly as tagged (no patterns: a tag is the admin's choice).
    images: tuple[str, ...] = (DEFAULT_IMAGE,)
    memory: str = "2g"
    cpus: float = 1.0
    pids_limit: int = 512
    max_lifetime: float = 24 * 3600.0
    tmp_size: str = "512m"
    copy_limit: str = "1g"
    fsize: str = "1g"
    nofile: int = 1024
    tmp_inodes: int = 65536
    #: A runtime every kernel gets whatever it asks ("runsc": gVisor); None: the engine's.
    runtime: str | None = None
    #: Work dir modes users may ask for ("mount" mounts a directory the caller owns).
    workdir_modes: tuple[str, ...] = ("mount", "copy", "none")
    #: Whether --mount of directories the caller owns is allowed at all.
    mounts: bool = True
    #: Kernels one user may have at once.
    kernels_per_user: int = 8
    #: Where audit lines go besides the broker's stderr ("": stderr only).
    audit_log: str = ""

    @classmethod
    def from_toml(cls, text: str, source: str = DEFAULT_POLICY) -> Policy:
        """Parse and check a policy file's text; unknown keys and bad values are errors."""
        try:
            # The broker runs on Python 3.11+ (tomllib); clients may be on 3.10.
            tomllib: Any = importlib.import_module("tomllib")
        except ImportError:
            raise PolicyError(
                "The broker needs Python 3.11 or newer (tomllib reads its policy)",
                "The broker did not start",
            ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(
                f"The broker's policy {source} is not valid TOML: {exc}",
                "The broker did not start",
                "Fix the file (doctor --broker checks it).",
            ) from exc
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = DEFAULT_POLICY) -> Policy:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise PolicyError(
                f"The broker's policy {source} has unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(fields)}",
                "The broker did not start",
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            default = getattr(cls(), name)
            if isinstance(default, tuple):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise _policy_type(source, name, "a list of strings")
                value = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise _policy_type(source, name, "true or false")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise _policy_type(source, name, "a number")
                value = float(value)
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise _policy_type(source, name, "a whole number")
            elif not isinstance(value, str):
                raise _policy_type(source, name, "a string")
            kwargs[name] = value
        policy = cls(**kwargs)
        policy.check(source)
        return policy

    def check(self, source: str = DEFAULT_POLICY) -> None:
        """The policy's own limits must make a valid kernel (KernelSettings checks them)."""
        if not self.images:
            raise PolicyError(f"The broker's policy {source} allows no image", "")
        if not set(self.workdir_modes) <= {"mount", "copy", "none"}:
            raise PolicyError(
                f"The broker's policy {source}: workdir_modes takes mount, copy and none", ""
            )
        if self.kernels_per_user < 1:
            raise PolicyError(f"The broker's policy {source}: kernels_per_user must be >= 1", "")
        try:
            self.ceiling()
        except SettingsError as exc:
            raise PolicyError(f"The broker's policy {source} is invalid: {exc.what}", "") from exc

    def ceiling(self) -> KernelSettings:
        """The policy's maxima as settings (also what an empty request gets)."""
        return KernelSettings(
            image=self.images[0],
            memory=self.memory,
            cpus=self.cpus,
            pids_limit=self.pids_limit,
            max_lifetime=self.max_lifetime,
            tmp_size=self.tmp_size,
            copy_limit=self.copy_limit,
            fsize=self.fsize,
            nofile=self.nofile,
            tmp_inodes=self.tmp_inodes,
            runtime=self.runtime,
        )

    def describe(self) -> str:
        """One paragraph for doctor --broker and the broker's first log line."""
        runtime = self.runtime or "the engine's default"
        return (
            f"images {', '.join(self.images)}; at most memory {self.memory}, cpus "
            f"{self.cpus:g}, pids {self.pids_limit}, lifetime {self.max_lifetime:g} s, "
            f"{self.kernels_per_user} kernels per user; runtime {runtime}; work dir "
            f"{'/'.join(self.workdir_modes)}; mounts {'allowed' if self.mounts else 'refused'}"
        )


def _policy_type(source: str, name: str, want: str) -> PolicyError:
    return PolicyError(f"The broker's policy {source}: {name} must be {want}", "")


# -- the start request -----------------------------------------------------------------------

#: Request fields, each with its JSON type.
REQUEST_FIELDS: dict[str, type] = {
    "op": str,
    "v": int,
    "name": str,
    "kernel_id": str,
    "kernelspec": str,
    "workdir": str,
    "project": str,
    "connection": dict,
    "settings": dict,
}
CONNECTION_FIELDS = ("key", "signature_scheme", "kernel_name")
#: Settings a request may carry, with their JSON types (int accepted for float).
SETTINGS_FIELDS: dict[str, Any] = {
    "image": str,
    "image_id": str,
    "workdir": str,
    "workdir_readonly": bool,
    "mounts": list,
    "env": dict,
    "kernel_cmd": list,
    "kernel_spec_in_image": str,
    "kernel_transport": str,
    "python": str,
    "network": str,
    "runtime": (str, type(None)),
    "memory": str,
    "cpus": (int, float),
    "pids_limit": int,
    "tmp_size": str,
    "max_lifetime": (int, float),
    "nofile": int,
    "fsize": str,
    "tmp_inodes": int,
    "max_message": str,
    "output_budget": str,
    "copy_limit": str,
}
#: Settings the broker never takes from a caller, and why (the refusal's words).
REFUSED_SETTINGS = {
    "docker_args": "--docker-arg reaches the engine unchecked",
    "kernel_user": "the kernel always runs as the caller's own uid",
    "gpus": "GPUs are not offered through the broker",
    "pool": "the warm pool is not offered through the broker",
    "pool_ttl": "the warm pool is not offered through the broker",
    "engine_host": "the broker uses its own engine",
    "engine": "the broker uses its own engine",
    "keep_entrypoint": "the image's entrypoint is not run through the broker",
    "workdir_root": "send the resolved project directory instead",
}
#: Limits compared with the policy's: (field, how to compare).
SIZE_LIMITS = ("memory", "tmp_size", "copy_limit", "fsize")
COUNT_LIMITS = ("cpus", "pids_limit", "max_lifetime", "nofile", "tmp_inodes")


@dataclass(frozen=True)
class StartRequest:
    """A start the policy allows: the settings to build the container from, and the facts
    only the caller knows (its notebook's directory, the client's key)."""

    name: str
    kernel_id: str
    kernelspec: str
    workdir: str
    #: The project root mounted with workdir inside it; "" for the notebook dir alone.
    project: str
    connection: dict[str, str]
    settings: KernelSettings

    def mount_sources(self) -> list[str]:
        """Host directories the container would mount (each must be the caller's)."""
        s = self.settings
        paths = [self.project or self.workdir] if s.workdir == "mount" else []
        base = self.project or self.workdir
        return [*paths, *(m.resolved(base, self.workdir).source for m in s.mounts)]


def parse_start(line: bytes, policy: Policy) -> StartRequest:
    """A start line -> the StartRequest the policy allows, or Refusal (one line)."""
    if len(line) > MAX_REQUEST:
        raise Refusal(f"The request is longer than {MAX_REQUEST} bytes.")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal("The request is not one line of JSON.") from None
    if not isinstance(data, dict):
        raise Refusal("The request is not a JSON object.")
    _check_fields(data, REQUEST_FIELDS, "request")
    missing = sorted(set(REQUEST_FIELDS) - set(data))
    if missing:
        raise Refusal(f"The request lacks {', '.join(missing)}.")
    if data["op"] != "start":
        raise Refusal(f"Unknown request op {data['op']!r}; the first request is a start.")
    if data["v"] != PROTOCOL:
        raise Refusal(f"Protocol version {data['v']} is not {PROTOCOL}; upgrade the client.")
    name, kernel_id, kernelspec = data["name"], data["kernel_id"], data["kernelspec"]
    if not _NAME.match(name):
        raise Refusal(f"The container name {name[:100]!r} is not {NAME_PREFIX}-<id>.")
    if not _KERNEL_ID.match(kernel_id):
        raise Refusal("The kernel id is not 1-64 letters, digits, '.', '_' or '-'.")
    if not _KERNELSPEC.match(kernelspec):
        raise Refusal("The kernelspec name has characters a kernelspec's name cannot have.")
    workdir = _host_dir(data["workdir"], "workdir")
    project = _host_dir(data["project"], "project") if data["project"] else ""
    if project and not (workdir == project or workdir.startswith(project.rstrip("/") + "/")):
        raise Refusal(f"The project {project} does not hold the work dir {workdir}.")
    connection = _connection(data["connection"])
    settings = _settings(data["settings"], policy)
    start = StartRequest(name, kernel_id, kernelspec, workdir, project, connection, settings)
    for source in start.mount_sources():
        _host_dir(source, "mount")
    return start


def _check_fields(data: Mapping[str, Any], types: Mapping[str, Any], what: str) -> None:
    for key, value in data.items():
        if key not in types:
            raise Refusal(f"Unknown {what} field {str(key)[:40]!r}.")
        want = types[key]
        if isinstance(value, bool) and want is not bool and bool not in _tuple(want):
            raise Refusal(f"The {what} field {key} has the wrong type.")
        if not isinstance(value, want):
            raise Refusal(f"The {what} field {key} has the wrong type.")


def _tuple(want: Any) -> tuple[Any, ...]:
    return want if isinstance(want, tuple) else (want,)


def _host_dir(path: str, what: str) -> str:
    """An absolute, normal host path the engine's --mount can carry; else Refusal."""
    if (
        not path.startswith("/")
        or len(path) > 1024
        # ',' ends a --mount field, ':' a --tmpfs path (--copy-workdir): never carried.
        or any(c in path for c in ",:\n\r\0")
        or str(PurePosixPath(path)) != path
        or ".." in PurePosixPath(path).parts
    ):
        raise Refusal(f"The {what} path {path[:100]!r} is not an absolute, normal path.")
    if path == "/":
        raise Refusal(f"The {what} path is '/', which is never mounted.")
    return path


def _connection(data: dict[str, Any]) -> dict[str, str]:
    _check_fields(data, dict.fromkeys(CONNECTION_FIELDS, str), "connection")
    if set(data) != set(CONNECTION_FIELDS):
        raise Refusal(f"The connection must have exactly {', '.join(CONNECTION_FIELDS)}.")
    if not _KEY.match(data["key"]):
        raise Refusal("The connection key is not up to 256 printable ASCII characters.")
    if data["signature_scheme"] not in SIGNATURE_SCHEMES:
        raise Refusal(f"The signature scheme is not one of {', '.join(SIGNATURE_SCHEMES)}.")
    if not _KERNELSPEC.match(data["kernel_name"]):
        raise Refusal("The connection's kernel_name has characters a kernelspec's cannot have.")
    return {k: str(data[k]) for k in CONNECTION_FIELDS}


def _settings(data: dict[str, Any], policy: Policy) -> KernelSettings:
    """The request's settings -> KernelSettings within the policy; Refusal otherwise."""
    for key in data:
        if key in REFUSED_SETTINGS and data[key] not in (None, [], 0, False, ""):
            raise Refusal(f"The setting {key} is refused: {REFUSED_SETTINGS[key]}.")
    data = {k: v for k, v in data.items() if k not in REFUSED_SETTINGS}
    _check_fields(data, SETTINGS_FIELDS, "settings")
    for key in ("mounts", "kernel_cmd"):
        if not all(isinstance(v, dict if key == "mounts" else str) for v in data.get(key, [])):
            raise Refusal(f"The settings field {key} has the wrong type.")
    if len(data.get("mounts", [])) > MAX_MOUNTS:
        raise Refusal(f"At most {MAX_MOUNTS} mounts may be asked for.")
    for mount in data.get("mounts", []):
        _check_fields(mount, {"source": str, "target": str, "read_only": bool}, "mount")
    env = data.get("env", {})
    if not all(isinstance(v, str) for v in env.values()):
        raise Refusal("The settings field env has the wrong type.")
    if data.get("network", "none") != "none":
        raise Refusal("A network is refused: kernels started by the broker have none.")
    image = data.get("image", policy.images[0])
    if image not in policy.images:
        allowed = ", ".join(policy.images)
        raise Refusal(f"The image {image[:100]!r} is not allowed; allowed: {allowed}.")
    asked_runtime = data.get("runtime")
    if asked_runtime is not None and asked_runtime != policy.runtime:
        raise Refusal(f"The runtime {asked_runtime[:40]!r} is not allowed.")
    ceiling = policy.ceiling()
    given = {k: getattr(ceiling, k) for k in (*SIZE_LIMITS, *COUNT_LIMITS)}
    given.update(data)
    given["image"] = image
    given["runtime"] = policy.runtime
    workdir = given.get("workdir", "mount")
    if workdir not in policy.workdir_modes:
        raise Refusal(f"The work dir mode {str(workdir)[:20]!r} is not allowed here.")
    if given.get("mounts") and not policy.mounts:
        raise Refusal("Mounts are not allowed here.")
    try:
        settings = KernelSettings.from_dict(given)
    except (SettingsError, TypeError) as exc:
        raise Refusal(_first_line(exc)) from None
    for name in SIZE_LIMITS:
        if size_bytes(getattr(settings, name)) > size_bytes(getattr(ceiling, name)):
            asked, most = getattr(settings, name), getattr(ceiling, name)
            raise Refusal(f"{name} {asked} is above the allowed {most}.")
    for name in COUNT_LIMITS:
        value = getattr(settings, name)
        if not math.isfinite(value) or value > getattr(ceiling, name):
            raise Refusal(f"{name} {value:g} is above the allowed {getattr(ceiling, name):g}.")
    return settings


def _first_line(exc: BaseException) -> str:
    text = exc.what if isinstance(exc, DockerKernelError) else str(exc)
    return " ".join(text.split())[:300]


def start_request(
    name: str,
    kernel_id: str,
    kernelspec: str,
    workdir: str,
    project: str,
    connection: Mapping[str, Any],
    settings: KernelSettings,
) -> bytes:
    """The start line the client sends (BrokerBackend.start_cold): the inverse of parse_start."""
    # Templates filled in here ({project}/data -> /home/a/p/data): the broker gets paths,
    # and the project itself instead of --workdir-root.
    base = project or workdir
    mounts = tuple(m.resolved(base, workdir) for m in settings.mounts)
    wanted = dataclasses.replace(settings, mounts=mounts, workdir_root=None).to_dict()
    sent = {k: v for k, v in wanted.items() if k in SETTINGS_FIELDS or k in REFUSED_SETTINGS}
    # Every limit, defaults too: the broker refuses what is above its policy rather than
    # lower it, so the limits the client logs are the container's.
    for limit in (*SIZE_LIMITS, *COUNT_LIMITS):
        sent[limit] = getattr(settings, limit)
    sent_connection = {k: str(connection.get(k, "")) for k in CONNECTION_FIELDS}
    sent_connection["signature_scheme"] = sent_connection["signature_scheme"] or "hmac-sha256"
    request = {
        "op": "start",
        "v": PROTOCOL,
        "name": name,
        "kernel_id": kernel_id,
        "kernelspec": kernelspec,
        "workdir": workdir,
        "project": project,
        "connection": sent_connection,
        "settings": sent,
    }
    return json.dumps(request).encode() + b"\n"


# -- after the start: frames -----------------------------------------------------------------


def frame(kind: bytes, payload: bytes) -> bytes:
    """One frame (see the module docstring); payloads above MAX_FRAME are the caller's bug."""
    assert len(payload) <= MAX_FRAME, "split output into MAX_FRAME pieces"
    return HEADER.pack(kind, len(payload)) + payload


class FrameReader:
    """Frames from a byte stream fed in pieces (feed); a bad header is a Refusal."""

    def __init__(self, kinds: bytes) -> None:
        self.kinds = kinds
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.buffer += data
        out: list[tuple[bytes, bytes]] = []
        while len(self.buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self.buffer)
            if kind not in [bytes([k]) for k in self.kinds] or length > MAX_FRAME:
                raise Refusal("A malformed frame after the start.")
            if len(self.buffer) < HEADER.size + length:
                break
            out.append((kind, bytes(self.buffer[HEADER.size : HEADER.size + length])))
            del self.buffer[: HEADER.size + length]
        return out


def parse_control(payload: bytes) -> tuple[str, str]:
    """A control frame's (op, signal name) for a signal, (op, the client's reason) for a
    stop or a kill; Refusal for anything else. The reason is one line of printable text
    (at most MAX_WHY characters): it lands in the admin's audit log, where a line break or
    an escape sequence would forge or hide a record."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal("A control message is not JSON.") from None
    if not isinstance(data, dict):
        raise Refusal("A control message is not a JSON object.")
    _check_fields(data, {"op": str, "sig": str, "why": str}, "control")
    op = data.get("op")
    if op == "signal" and "why" not in data:
        sig = data.get("sig", "")
        if sig not in SIGNALS:
            raise Refusal(f"The signal {str(sig)[:20]!r} is not one of {', '.join(SIGNALS)}.")
        return op, sig
    if op in ("stop", "kill") and "sig" not in data:
        why = data.get("why", "")
        if len(why) > MAX_WHY or not why.isprintable():
            raise Refusal(f"A {op}'s reason is not one printable line of at most {MAX_WHY}.")
        return op, why
    raise Refusal(f"Unknown control op {str(op)[:20]!r}.")


def control(op: str, sig: str = "", why: str = "") -> bytes:
    """A control frame (the client's signal, stop and kill; why: a stop's or a kill's
    reason, cut to one printable line of MAX_WHY characters)."""
    body: dict[str, str] = {"op": op, **({"sig": sig} if sig else {})}
    if why:
        body["why"] = "".join(c if c.isprintable() else " " for c in why)[:MAX_WHY]
    return frame(CONTROL, json.dumps(body).encode())


# -- the audit log ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of a connection (SO_PEERCRED), and their user name."""

    pid: int
    uid: int
    gid: int
    user: str = ""

    def who(self) -> str:
        return f"uid={self.uid}({self.user or '?'}) pid={self.pid}"


def audit_start(caller: Caller, start: StartRequest, container_id: str) -> str:
    """The audit line for a start: who, which image, which limits, which mounts."""
    s = start.settings
    mounts = ",".join(start.mount_sources()) or "-"
    return (
        f"start {caller.who()} container={start.name} id={container_id[:12] or '-'} "
        f"image={s.image} memory={s.memory} cpus={s.cpus:g} pids={s.pids_limit} "
        f"lifetime={s.max_lifetime:g} runtime={s.runtime or 'default'} workdir={s.workdir} "
        f"mounts={mounts}"
    )


def audit_stop(caller: Caller, name: str, code: int, reason: str, ran: float) -> str:
    """The audit line for a stop: who, which container, its exit code and why."""
    return f"stop {caller.who()} container={name} code={code} after={ran:.1f}s reason={reason}"


def audit_refusal(caller: Caller, refusal: Refusal) -> str:
    return f"refuse {caller.who()} reason={refusal.line}"
