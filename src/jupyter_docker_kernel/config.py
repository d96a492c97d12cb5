"""Defaults for `setup` from `jupyter_docker_kernel_config.py` (or .json) in Jupyter's config path.

cli.py calls `load_defaults()` once per `setup`; the values it returns sit between the
built-in KernelSettings defaults and the command-line options. Only setup reads the file:
the settings are frozen into kernel.json, so the launcher (and a kernel start) never pays
for traitlets or sees a config file that changed since.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, TraitType, Unicode
from traitlets.config import Config, Configurable
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from jupyter_docker_kernel.errors import SettingsError
from jupyter_docker_kernel.settings import (
    ENGINE_KINDS,
    KERNEL_TRANSPORTS,
    WORKDIR_MODES,
    KernelSettings,
    Mount,
)

#: The file's base name; `.py` and `.json` are both read (the .py wins where both set a key).
CONFIG_NAME = "jupyter_docker_kernel_config"
#: The section users write: `c.DockerKernel.memory = "1g"`.
SECTION = "DockerKernel"

#: Fields whose config form differs from a plain scalar: the list/dict users write.
_SPECIAL: dict[str, TraitType[Any, Any]] = {
    "workdir": Enum(WORKDIR_MODES, default_value="mount", help="mount, copy or none"),
    "kernel_transport": Enum(
        KERNEL_TRANSPORTS, default_value="ipc", help="ipc, or tcp bridged (--kernel-transport)"
    ),
    "mounts": List(Unicode(), help="'HOST:DEST[:ro]' (--mount); HOST relative to this file"),
    "env": Dict(value_trait=Unicode(), help="variables set in the kernel (--env)"),
    "kernel_cmd": List(Unicode(), help="in-container kernel command (--kernel-cmd)"),
    "docker_args": List(Unicode(), help="extra `docker run` arguments (--docker-arg)"),
    "nodes": List(Unicode(), help="remote nodes, ssh://user@host[:port] (--node)"),
    "node_shared_paths": List(
        Unicode(), help="directories the nodes see at the same path (--node-shared-path)"
    ),
    "engine": Enum(ENGINE_KINDS, default_value="docker", help="docker or podman (--podman)"),
}


def _trait_for(field: dataclasses.Field[Any], hint: Any) -> TraitType[Any, Any]:
    """One trait per KernelSettings field, typed from the field's annotation."""
    if field.name in _SPECIAL:
        return _SPECIAL[field.name]
    default = field.default
    flag = "--" + field.name.replace("_", "-")
    text = f"default for setup's {flag}"
    optional = type(None) in typing.get_args(hint)
    kind = next(t for t in (bool, int, float, str) if hint is t or t in typing.get_args(hint))
    trait: type[TraitType[Any, Any]] = {bool: Bool, int: Int, float: Float, str: Unicode}[kind]
    return trait(default_value=default, allow_none=optional, help=text)


def _traits() -> dict[str, TraitType[Any, Any]]:
    hints = typing.get_type_hints(KernelSettings)
    fields = dataclasses.fields(KernelSettings)
    return {f.name: _trait_for(f, hints[f.name]).tag(config=True) for f in fields}


#: A traitlets Configurable whose traits mirror KernelSettings field for field, built from
#: the dataclass so a new setting is configurable without touching this module.
DockerKernel: type[Configurable] = type(
    SECTION,
    (Configurable,),
    {"__doc__": "Defaults for `jupyter-docker-kernel setup`.", **_traits()},
)


@dataclass(frozen=True)
class ConfigDefaults:
    """What the config files set: KernelSettings keyword arguments, and the files read."""

    values: dict[str, Any]
    files: tuple[str, ...]


def config_dirs() -> list[str]:
    """Jupyter's config path in `jupyter --paths` order, highest priority first."""
    from jupyter_core.paths import jupyter_config_path

    return list(jupyter_config_path())


def load_defaults(dirs: Sequence[str] | None = None) -> ConfigDefaults:
    """Read every config file found in dirs (default: Jupyter's config path) and validate.

    Raises SettingsError naming the file for a syntax error, an unknown section or trait,
    or a value KernelSettings refuses. Files in earlier dirs override later ones.
    """
    values: dict[str, Any] = {}
    used: list[str] = []
    for directory in reversed(list(config_dirs() if dirs is None else dirs)):
        for suffix, loader in ((".json", JSONFileConfigLoader), (".py", PyFileConfigLoader)):
            path = Path(directory) / (CONFIG_NAME + suffix)
            if not path.is_file():
                continue
            values.update(_load_file(path, loader))
            used.append(str(path))
    return ConfigDefaults(values=values, files=tuple(reversed(used)))


def _load_file(
    path: Path, loader: type[PyFileConfigLoader | JSONFileConfigLoader]
) -> dict[str, Any]:
    """The KernelSettings keyword arguments one file sets; errors name the file."""
    # A lower-case fix continues the sentence: "No kernelspec was written; fix the file ..."
    not_done, fix = "No kernelspec was written", "fix the file or remove it"
    try:
        cfg: Config = loader(path.name, path=str(path.parent)).load_config()
    except Exception as exc:  # SyntaxError, NameError, JSON errors: anything the file raises
        raise SettingsError(
            f"Config file {path} could not be read ({_describe(exc)})", not_done, fix
        ) from exc
    unknown_sections = sorted(set(cfg) - {SECTION})
    if unknown_sections:
        raise SettingsError(
            f"Config file {path} sets {', '.join(unknown_sections)}, but only "
            f"c.{SECTION}.<setting> is read there",
            not_done,
            fix,
        )
    section = cfg.get(SECTION, Config())
    names = DockerKernel.class_trait_names(config=True)
    for key in section:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {SECTION}.{close[0]}?)" if close else ""
            raise SettingsError(
                f"Config file {path} sets unknown {SECTION}.{key}{hint}", not_done, fix
            )
    try:
        configured = DockerKernel(config=cfg)
    except TraitError as exc:
        raise SettingsError(
            f"Config file {path} has a bad value: {_describe(exc)}", not_done, fix
        ) from exc
    values = {key: getattr(configured, key) for key in section}
    if "mounts" in values:
        try:
            values["mounts"] = tuple(Mount.parse(m, str(path.parent)) for m in values["mounts"])
        except SettingsError as exc:
            raise _in_file(path, exc, not_done, fix) from exc
    for key in ("kernel_cmd", "docker_args", "nodes", "node_shared_paths"):
        if key in values:
            values[key] = tuple(values[key])
    if "env" in values:
        values["env"] = tuple(values["env"].items())
    try:
        # A neutral workdir: "pool needs a workdir other than mount" may be met by another
        # file or the command line; cli checks the merged settings again.
        KernelSettings(**{"workdir": "copy", **values})
    except SettingsError as exc:
        raise _in_file(path, exc, not_done, fix) from exc
    return values


def _describe(exc: BaseException) -> str:
    """A one-line description of an exception, with a line number when it has one."""
    text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"syntax error on line {exc.lineno}: {exc.msg}"
    return f"{type(exc).__name__}: {text}"


def _in_file(path: Path, exc: SettingsError, not_done: str, fix: str) -> SettingsError:
    """A value KernelSettings refused, said of the file: "Config file PATH: what happened."
    Its own advice (written for the command line) stays as detail; ours comes last."""
    return SettingsError(f"Config file {path}: {exc.what}", not_done, fix, detail=exc.fix)
