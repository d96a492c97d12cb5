"""Running kernels and their kept logs as data: `ps` and `logs` (cli.py prints them).

`ps` asks each engine our kernelspecs name (Docker's, Podman's) for our running
containers: list (by label) and inspect (limits, labels, start time), one call each,
then one usage sample per container, in parallel (engine.Engine.stats). The labels
(hardening.labels) say which kernelspec, client pid and notebook directory a container
serves; a warm container claimed from the pool carries its starter's labels, so the
record its claiming launcher keeps (kernel_log.py) takes precedence where there is one.

`logs` reads what the launcher kept (kernel_log.py): the engine has nothing, since the
containers run with --log-driver none and are removed when they exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import kernel_log, kernelspec, manage, node_manage
from jupyter_docker_kernel.engine import Engine, short_id
from jupyter_docker_kernel.errors import DockerKernelError, KernelSpecError
from jupyter_docker_kernel.kernel_log import printable
from jupyter_docker_kernel.rundir import NAME_PREFIX, POOL_NAME_PREFIX, alive, runtime_base

#: What the in-container supervisor prefixes its lines with (_supervise.PREFIX).
SUPERVISOR_PREFIX = "jupyter-docker-kernel:"


@dataclass(frozen=True)
class RunningKernel:
    """One of our running containers, as `ps` shows it."""

    #: The engine's DOCKER_HOST address ("": the CLI's default, Docker's socket).
    engine: str
    container: str
    container_id: str
    #: "kernel", or "warm" for an unclaimed warm-pool container (no kernel of anyone's yet).
    kind: str
    kernel_id: str
    kernelspec: str
    image: str
    uptime: float | None
    memory_used: int | None
    memory_limit: int | None
    pids: int | None
    pids_limit: int | None
    cpus: float | None
    client_pid: int | None
    workdir: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _started(text: str) -> float | None:
    """Docker's State.StartedAt (RFC 3339, nanoseconds) -> epoch seconds."""
    found = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", text or "")
    if not found or found.group(1).startswith("0001"):
        return None
    zone = found.group(3) or "Z"
    stamp = datetime.fromisoformat(found.group(1) + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float(found.group(2) or 0)


def engines_in_use(given: Engine | None) -> list[Engine]:
    """The engine asked for, else the default one plus every engine a kernelspec of ours
    names (engine_host: Podman's, say) and every remote node of every kernelspec
    (--node: node_manage.node_urls, as `list` and `gc` cover them), each once."""
    if given is not None and given.host:
        return [given]
    found = [given or Engine()]
    seen = {found[0].address()}
    specs, _ = manage.list_specs(None)
    settings = [spec.settings for spec in specs if spec.settings]
    hosts = [s.engine_host for s in settings if s.engine_host]
    for host in [*hosts, *node_manage.node_urls(settings)]:
        if host not in seen:
            seen.add(host)
            found.append(Engine(found[0].command, host=host))
    return found


def running_kernels(engines: list[Engine]) -> tuple[list[RunningKernel], list[str]]:
    """Our running kernel containers in these engines; plus a note per engine that did not
    answer (one line: a silent node is a note, never a failed `ps`). The engines are asked
    at once, so a node that does not answer costs its timeout once. Non-root users see
    their own kernels only (as gc treats them)."""
    records = {str(r.get("container")): r for r in kernel_log.records(runtime_base())}

    def ask(eng: Engine) -> list[RunningKernel] | str:
        address = eng.address()
        try:
            return _from_engine(eng, address, records)
        except DockerKernelError as exc:
            if address.startswith("ssh://"):
                return f"node {address} not listed: {exc.what}"
            return f"{address or 'the default engine'} did not answer: {exc}"

    out: list[RunningKernel] = []
    notes: list[str] = []
    with ThreadPoolExecutor(max_workers=min(len(engines), 16) or 1) as pool:
        answers = list(pool.map(ask, engines))
    for answer in answers:
        if isinstance(answer, str):
            notes.append(answer)
        else:
            out += answer
    return out, notes


def _from_engine(eng: Engine, where: str, records: dict[str, Any]) -> list[RunningKernel]:
    uid = str(os.getuid())
    listed = eng.list_containers({engine_mod.LABEL_KERNEL_ID: None})
    ids = [
        str(item.get("ID") or item.get("Id"))
        for item in listed
        if str(item.get("State", "")).lower() == "running"
    ]
    infos = eng.inspect_containers(ids)
    # A node's kernels carry the node user's uid (the one we log in as there, whose
    # engine they are): only this host's uid says whose a local kernel is.
    if uid != "0" and not where.startswith("ssh://"):
        infos = [
            i
            for i in infos
            if ((i.get("Config") or {}).get("Labels") or {}).get(engine_mod.LABEL_OWNER_UID) == uid
        ]
    stats = eng.stats([str(i.get("Id")) for i in infos])
    now = time.time()
    out = []
    for info in infos:
        cid = str(info.get("Id", ""))
        name = str(info.get("Name", "")).lstrip("/")
        if name.startswith(f"{NAME_PREFIX}-probe-"):
            continue  # setup's or doctor's probe, gone in a moment
        labels = (info.get("Config") or {}).get("Labels") or {}
        host = info.get("HostConfig") or {}
        sample = stats.get(cid) or {}
        record = records.get(name) or {}
        warm = name.startswith(POOL_NAME_PREFIX)
        started = record.get("started") or _started(str((info.get("State") or {}).get("StartedAt")))
        client = str(record.get("client_pid") or labels.get(engine_mod.LABEL_CLIENT_PID) or "")
        out.append(
            RunningKernel(
                engine=where,
                container=name,
                container_id=short_id(cid),
                kind="warm" if warm else "kernel",
                kernel_id="" if warm else str(record.get("kernel_id") or _kernel_id(name)),
                kernelspec=""
                if warm
                else str(record.get("kernelspec") or labels.get(engine_mod.LABEL_KERNELSPEC, "")),
                image=str((info.get("Config") or {}).get("Image", "")),
                uptime=round(now - float(started), 1) if started else None,
                memory_used=sample.get("memory_used"),
                memory_limit=int(host.get("Memory") or 0) or sample.get("memory_limit"),
                pids=sample.get("pids"),
                pids_limit=int(host.get("PidsLimit") or 0) or None,
                cpus=(int(host.get("NanoCpus") or 0) / 1e9) or None,
                client_pid=int(client) if client.isdigit() and int(client) > 0 else None,
                workdir=""
                if warm
                else str(record.get("workdir") or labels.get(engine_mod.LABEL_WORKDIR, "")),
            )
        )
    return sorted(out, key=lambda k: (k.kind != "kernel", -(k.uptime or 0)))


def _kernel_id(name: str) -> str:
    """The kernel id in a container name jdk-<kernel id>-<nonce>."""
    return name.removeprefix(f"{NAME_PREFIX}-").rpartition("-")[0]


@dataclass(frozen=True)
class KernelLogs:
    """What `logs` shows: the launcher's record, its verdict and the kept output."""

    record: dict[str, Any]
    #: "running", or why it ended (the launcher's facts, then the supervisor's words).
    status: str
    output: bytes

    def to_json(self) -> dict[str, Any]:
        record = {k: v for k, v in self.record.items() if k != "output_path"}
        return {
            "record": record,
            "status": self.status,
            "output": printable(self.output).decode(errors="replace"),
        }


def find_logs(query: str, base: Path | None = None) -> KernelLogs:
    """The kept log of the kernel `query` names: its container's name or id (a prefix of
    either, with or without jdk-), or its kernel id (or a prefix). Newest first; more than
    one kernel matching is an error that lists them."""
    query = query.strip()
    if not query:
        raise KernelSpecError("logs needs a kernel: a container name or id, or a kernel id.")
    found = kernel_log.records(base or runtime_base())
    exact = [r for r in found if query in _names(r)]
    matches = exact or [r for r in found if any(n.startswith(query) for n in _names(r))]
    if not matches:
        hint = (
            f" '{query}' is a kernelspec; logs takes one of its kernels."
            if query.lower() in spec_names()
            else ""
        )
        raise KernelSpecError(
            f"No kept log for a kernel '{query}'. Nothing was shown.{hint} "
            "'jupyter-docker-kernel ps' lists the running kernels; a log is kept on the host "
            "that ran the kernel, for the user who ran it, for a day after it ended."
        )
    if len({str(r.get("container")) for r in matches}) > 1:
        listed = ", ".join(str(r.get("container")) for r in matches[:5])
        raise KernelSpecError(
            f"'{query}' matches {len(matches)} kernels ({listed}). Nothing was shown. "
            "Give more of the container name or kernel id."
        )
    record = matches[0]
    output = kernel_log.read_tail(Path(str(record["output_path"])))
    return KernelLogs(record, status(record, output), output)


def _names(record: dict[str, Any]) -> list[str]:
    container = str(record.get("container", ""))
    return [
        n
        for n in (
            container,
            container.removeprefix(f"{NAME_PREFIX}-"),
            str(record.get("kernel_id") or ""),
            str(record.get("container_id") or ""),
        )
        if n
    ]


def status(record: dict[str, Any], output: bytes) -> str:
    """'running', or how the kernel ended: the launcher's exit code and reason (facts from
    the host), then what the in-container supervisor said (out of memory, lifetime, pids),
    which is marked as such: the kernel shares that stream and could forge it."""
    if record.get("ended") is None:
        if alive(str(record.get("launcher_pid", "")), str(record.get("launcher_start", ""))):
            return "running"
        return "ended without a recorded exit: its launcher is gone (killed, or the host restarted)"
    code = record.get("exit_code")
    text = f"exited with code {code}"
    if record.get("ran") is not None:
        text += f" after {float(record['ran']):.1f} s"
    reason = str(record.get("exit_reason") or "")
    if reason:
        text += f": {reason}"
    elif code == 0:
        text += ": ended normally (a shutdown)"
    said = [
        line.strip().removeprefix(SUPERVISOR_PREFIX).strip()
        for line in output.decode(errors="replace").splitlines()
        if line.strip().startswith(SUPERVISOR_PREFIX)
    ]
    ends = [s for s in said if s.startswith(("kernel ", "the pids limit"))]
    if ends:
        text += f"; inside the container: {'; '.join(ends[-2:])}"
    elif code == 137 and not reason:
        text += f"; SIGKILL, most likely out of memory (limit {record.get('memory', '?')})"
    return text


def spec_names() -> set[str]:
    """Names of our installed kernelspecs (for a hint when `logs` is given one)."""
    with contextlib.suppress(DockerKernelError, OSError):
        return {f.name for f in kernelspec.scan_ours()}
    return set()
