"""Kernels the image itself provides: list its kernelspecs, turn one into the kernel command.

cli.py's `setup --kernel-spec-in-image NAME` calls find_in_image() (one probe container
that prints the image's kernelspecs as JSON), then command_for() to get the argv stored in
KernelSettings.kernel_cmd. The supervisor still runs with the image's python3, so an image
without Python fails here, at setup, with a message saying so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import ImageError, KernelSpecError
from jupyter_docker_kernel.settings import CONNECTION_FILE_PLACEHOLDER, KernelSettings

#: Run by the image's Python (3.6 syntax): every kernelspec in Jupyter's data paths, in
#: jupyter_core's order (JUPYTER_PATH, sys.prefix, /usr/local, /usr), the first name wins.
#: HOME is left out: at run time it is an empty tmpfs, so a spec there would not be seen.
LIST_CODE = r"""
import json, os, sys
dirs = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
dirs += [os.path.join(sys.prefix, "share", "jupyter"), "/usr/local/share/jupyter",
         "/usr/share/jupyter", "/opt/conda/share/jupyter"]
found = {}
for base in dirs:
    kernels = os.path.join(base, "kernels")
    try:
        names = sorted(os.listdir(kernels))
    except OSError:
        continue
    for name in names:
        resource_dir = os.path.join(kernels, name)
        if name.lower() in found:
            continue
        try:
            with open(os.path.join(resource_dir, "kernel.json")) as fh:
                spec = json.load(fh)
        except (OSError, ValueError):
            continue
        found[name.lower()] = {"resource_dir": resource_dir, "spec": spec}
print(json.dumps({"prefix": sys.prefix, "kernels": found}))
"""


@dataclass(frozen=True)
class ImageKernelSpec:
    """One kernelspec found inside an image (its kernel.json, and where it lives there)."""

    name: str
    resource_dir: str
    argv: tuple[str, ...]
    display_name: str
    language: str
    interrupt_mode: str = "signal"
    env: tuple[tuple[str, str], ...] = ()


def parse_listing(text: str) -> tuple[str, dict[str, ImageKernelSpec]]:
    """LIST_CODE's output -> (the image Python's sys.prefix, specs by name).

    A spec whose kernel.json is not shaped like one (argv not a list of strings) is left
    out rather than failing the whole listing: the user may want another one.
    """
    try:
        data = json.loads(text.strip().splitlines()[-1])
        prefix = str(data["prefix"])
        kernels = data["kernels"]
        if not isinstance(kernels, dict):
            raise TypeError("kernels is not an object")
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise ImageError(
            f"Could not read the image's kernelspec listing ({exc}). No kernelspec was "
            "written. Run with --debug to see the probe's output."
        ) from exc
    specs: dict[str, ImageKernelSpec] = {}
    for name, entry in sorted(kernels.items()):
        spec = _spec_from(str(name), entry)
        if spec is not None:
            specs[spec.name] = spec
    return prefix, specs


def _spec_from(name: str, entry: Any) -> ImageKernelSpec | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("spec"), Mapping):
        return None
    spec = entry["spec"]
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return None
    env = spec.get("env") if isinstance(spec.get("env"), Mapping) else {}
    mode = spec.get("interrupt_mode")
    return ImageKernelSpec(
        name=name,
        resource_dir=str(entry.get("resource_dir", "")),
        argv=tuple(argv),
        display_name=str(spec.get("display_name") or name),
        language=str(spec.get("language") or ""),
        interrupt_mode=mode if mode in ("signal", "message") else "signal",
        env=tuple((str(k), str(v)) for k, v in env.items()),
    )


def command_for(spec: ImageKernelSpec, prefix: str) -> tuple[str, ...]:
    """The spec's argv as KernelSettings.kernel_cmd: {resource_dir} and {prefix} filled in
    with the image's paths, {connection_file} kept for hardening.kernel_command().

    These are the three names jupyter_client substitutes in a kernelspec's argv.
    """
    if not any(CONNECTION_FILE_PLACEHOLDER in arg for arg in spec.argv):
        raise KernelSpecError(
            f"The image's kernelspec '{spec.name}' has no {CONNECTION_FILE_PLACEHOLDER} in "
            f"its argv ({' '.join(spec.argv)}), so its kernel could not find its sockets",
            "No kernelspec was written",
            "Fix the kernel.json in the image, or pass --kernel-cmd with the command spelled out.",
        )
    return tuple(
        arg.replace("{resource_dir}", spec.resource_dir).replace("{prefix}", prefix)
        for arg in spec.argv
    )


def pick(specs: Mapping[str, ImageKernelSpec], name: str, image: str) -> ImageKernelSpec:
    """The spec called `name` (case-insensitive, as Jupyter), or an error listing the others."""
    spec = specs.get(name.lower())
    if spec is not None:
        return spec
    have = ", ".join(f"{s.name} ({s.display_name})" for s in specs.values()) or "none"
    raise KernelSpecError(
        f"Image '{image}' has no kernelspec '{name}'; it has: {have}. No kernelspec was "
        "written. Pass one of those names to --kernel-spec-in-image, or install the kernel "
        "in the image."
    )


def find_in_image(
    engine: Engine, settings: KernelSettings, user: str
) -> tuple[str, dict[str, ImageKernelSpec]]:
    """Run LIST_CODE in a throw-away container of the image; returns parse_listing's result.

    Called by cli.py's setup. The container has no network and no capabilities, like the
    image probe; it needs the image's Python, which the supervisor needs anyway.
    """
    engine.require_image(settings.image)
    args = hardening.probe_args(settings, user, code=LIST_CODE)
    proc = engine.run(args, check=False, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ImageError(
            f"Image '{settings.image}' cannot run {settings.python} to list its kernelspecs "
            f"(exit {proc.returncode}: {last})",
            "No kernelspec was written",
            "The supervisor "
            "that runs every kernel needs Python 3 in the image: install python3 there, or "
            "pass --python PATH.",
        )
    return parse_listing(proc.stdout)
