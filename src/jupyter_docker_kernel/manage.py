"""Our installed kernelspecs as data: `list`, `show` and `remove` (cli.py prints them).

kernelspec.find_ours() finds the specs; this module reads each one back into settings,
asks the engine (once per image) whether its image is present, and builds the exact
`docker run` argument list the launcher would use, with placeholders for what only a
real start knows (kernel id, connection file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import hardening, kernelspec
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError, KernelSpecError
from jupyter_docker_kernel.launcher import NAME_PREFIX, SUPERVISOR_PATH, runtime_base
from jupyter_docker_kernel.settings import KernelSettings

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
            "limits": self.limits(),
            "settings": self.settings.to_dict() if self.settings else None,
            "error": self.error or None,
        }


def read_spec(name: str, path: Path) -> SpecInfo:
    """Read one spec dir; a spec whose settings do not parse comes back with `error` set."""
    try:
        data = json.loads((path / "kernel.json").read_text())
    except (OSError, ValueError) as exc:
        return SpecInfo(name, str(path), "", "", None, error=f"cannot read kernel.json: {exc}")
    argv = data.get("argv") or [""]
    display = str(data.get("display_name", ""))
    try:
        settings = kernelspec.settings_from_kernel_json(data)
    except DockerKernelError as exc:
        return SpecInfo(name, str(path), display, str(argv[0]), None, error=str(exc))
    return SpecInfo(name, str(path), display, str(argv[0]), settings)


def image_presence(engine: Engine, images: set[str]) -> dict[str, bool] | None:
    """Which of these images the engine has; None when the engine cannot be asked."""
    try:
        return {ref: engine.image_inspect(ref) is not None for ref in sorted(images)}
    except DockerKernelError:
        return None


def list_specs(engine: Engine | None) -> tuple[list[SpecInfo], str]:
    """Our kernelspecs by name, with image presence; plus why presence is unknown ("")."""
    specs = [read_spec(name, path) for name, path in sorted(kernelspec.find_ours().items())]
    if engine is None or not specs:
        return specs, ""
    # Each kernelspec's image is looked up in its own engine (engine_host: Podman's, say).
    hosts = {s.settings.engine_host for s in specs if s.settings}
    by_host: dict[str | None, dict[str, bool]] = {}
    silent: list[str] = []
    for host in sorted(hosts, key=str):
        asked = Engine(engine.command, host=host) if host else engine
        images = {s.image for s in specs if s.settings and s.settings.engine_host == host}
        presence = image_presence(asked, images)
        if presence is None:
            silent.append(host or "the default engine")
        by_host[host] = presence or {}
    why = ""
    if silent:
        why = f"{', '.join(silent)} did not answer; image presence is unknown there"
        if silent == ["the default engine"]:
            why = "the container engine did not answer; image presence is unknown"
    return [
        dataclasses.replace(s, image_present=by_host[s.settings.engine_host].get(s.image))
        if s.settings
        else s
        for s in specs
    ], why


def find(name: str) -> SpecInfo:
    """One of our kernelspecs by name, or a KernelSpecError saying what to do instead."""
    from jupyter_client.kernelspec import KernelSpecManager

    ours = kernelspec.find_ours()
    key = name.lower()
    if key in ours:
        return read_spec(key, ours[key])
    other = KernelSpecManager().find_kernel_specs().get(key)
    if other is not None:
        raise KernelSpecError(
            f"Kernelspec '{name}' in {other} was not written by jupyter-docker-kernel. "
            f"Nothing was done. Use 'jupyter kernelspec' to manage it."
        )
    known = ", ".join(sorted(ours)) or "none"
    raise KernelSpecError(
        f"No kernelspec named '{name}' (ours: {known}). Nothing was done. "
        "'jupyter-docker-kernel list' shows them."
    )


def placeholder_launch(settings: KernelSettings, workdir: str | None = None) -> hardening.Launch:
    """A Launch like launcher.launch_facts() builds, with placeholders for the per-start parts."""
    try:
        base = str(runtime_base())
    except DockerKernelError:
        base = "$RUNTIME_BASE"  # show still works; doctor says what is wrong with it
    kernel_dir = f"{base}/{PLACEHOLDER_KERNEL_ID}-{PLACEHOLDER_NONCE}"
    return hardening.Launch(
        kernel_id=PLACEHOLDER_KERNEL_ID,
        container_name=f"{NAME_PREFIX}-{PLACEHOLDER_KERNEL_ID}-{PLACEHOLDER_NONCE}",
        runtime_dir=f"{kernel_dir}/rt",
        connection_file=f"{kernel_dir}/kernel.json",
        supervisor_path=SUPERVISOR_PATH,
        host_uid=os.getuid(),
        host_gid=os.getgid(),
        workdir=workdir or os.getcwd(),
        launcher_pid=0,
        launcher_start="START",
        hostname="HOST",
    )


def effective_args(settings: KernelSettings, workdir: str | None = None) -> list[str]:
    """The `docker run` arguments the launcher would use (launcher.start_container's list)."""
    launch = placeholder_launch(settings, workdir)
    args = hardening.run_args(settings, launch)
    kernel_dir = launch.runtime_dir.rsplit("/", 1)[0]
    args.insert(1, f"--cidfile={kernel_dir}/cid")
    return args


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
