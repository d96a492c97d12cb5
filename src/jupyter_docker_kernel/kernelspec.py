"""Settings <-> kernel.json, and installing a kernelspec where Jupyter looks for it.

cli.py's `setup` calls `build_kernel_json()` then `install()`; `settings_from_kernel_json()`
is how `show`/`list`, the provisioner and the tests get the settings back. The settings
travel inside kernel.json (not a side file) so the spec works in every client, VS Code
included, and can be copied whole: in its `env`, which every client passes to the argv it
runs, not in the argv itself, which `ps` shows every local user (/proc/PID/environ is
readable by the owner only). Specs of earlier versions carry them as `--settings JSON` in
argv and start Python without isolation from the notebook's directory; `upgrade()`
rewrites those, and the launcher still reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import __version__, hostpython, thin_client
from jupyter_docker_kernel.errors import KernelSpecError
from jupyter_docker_kernel.settings import KernelSettings

#: kernel.json metadata key that marks a kernelspec as ours.
METADATA_KEY = "jupyter_docker_kernel"
LAUNCHER_MODULE = "jupyter_docker_kernel.launcher"
#: Written next to kernel.json by install(): how `list` and `remove` still know a spec dir
#: is ours when its kernel.json no longer parses (a hand edit, a disk that filled up).
MARKER_FILE = "jupyter-docker-kernel.txt"
#: The kernel name Jupyter gives its own Python kernel (ipykernel's built-in spec).
NATIVE_KERNEL_NAME = "python3"
#: kernel.json `env` entry that carries the settings JSON to the launcher.
SETTINGS_ENV = "JUPYTER_DOCKER_KERNEL_SETTINGS"
#: Our entry point in the `jupyter_client.kernel_provisioners` group (pyproject.toml).
PROVISIONER_NAME = "docker-provisioner"
INTERRUPT_MODES = ("signal", "message")
_NAME = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


def validate_name(name: str) -> str:
    """Jupyter's rule for kernel names (letters, digits, . _ -), lower-cased as Jupyter does."""
    if not _NAME.match(name):
        raise KernelSpecError(
            f"Kernel name '{name}' may only contain letters, digits, '.', '_' and '-'",
            "No kernelspec was written",
            "Example: --name course-py",
        )
    return name.lower()


def build_kernel_json(
    settings: KernelSettings,
    *,
    display_name: str,
    interrupt_mode: str = "signal",
    python: str | None = None,
    provisioner: bool = False,
    language: str | None = None,
    isolated: bool = True,
    client: Path | None = None,
) -> dict[str, Any]:
    """The kernel.json dict: argv runs our launcher, `env` carries the settings as JSON.

    client: the compiled thin client (thin_client.ensure()), which argv then starts with
    (it execs the launcher command whenever it cannot serve the kernel itself).

    isolated: start the launcher with `python -I` (setup passes
    hostpython.isolated_import_works(python)); else in hostpython's safe-path form, for a
    package that only the user's site-packages or PYTHONPATH provide. Either way nothing
    is imported from the notebook's directory, the launcher's cwd.

    provisioner: also name our kernel provisioner, which clients that honour provisioners
    use instead of the argv (the argv stays, for clients that do not, such as VS Code).
    `language` is the kernel's (Jupyter matches notebooks to kernels by it); by default
    python for ipykernel and empty for a --kernel-cmd whose language we cannot know.
    """
    if interrupt_mode not in INTERRUPT_MODES:
        raise KernelSpecError(
            f"interrupt mode '{interrupt_mode}' is not one of {', '.join(INTERRUPT_MODES)}."
        )
    data: dict[str, Any] = {
        "argv": thin_client.kernel_argv(
            launcher_argv(python or sys.executable, isolated=isolated),
            ["-f", "{connection_file}"],
            client,
        ),
        "env": {SETTINGS_ENV: settings_argument(settings)},
        "display_name": display_name,
        "language": language if language is not None else "" if settings.kernel_cmd else "python",
        "interrupt_mode": interrupt_mode,
        "metadata": {
            METADATA_KEY: {"version": __version__, "image": settings.image},
            # The debugger needs more than bytes relayed on five channels; not offered yet.
            "debugger": False,
        },
    }
    if provisioner:
        # jupyter_client passes "config" to the provisioner as keyword arguments; the
        # settings stay in `env`, the one copy both paths read.
        data["metadata"]["kernel_provisioner"] = {
            "provisioner_name": PROVISIONER_NAME,
            "config": {},
        }
    return data


#: What jupyter_client's format_kernel_cmd substitutes in every argv item, JSON included.
_CLIENT_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")


def launcher_argv(python: str, *, isolated: bool = True) -> list[str]:
    """The start of kernel.json's argv: python running our launcher, isolated from the cwd."""
    if isolated:
        return hostpython.isolated_argv(python, LAUNCHER_MODULE)
    return hostpython.safe_path_argv(python, LAUNCHER_MODULE)


def settings_argument(settings: KernelSettings) -> str:
    """The settings as JSON text, with `{name}` written `\\u007bname}` and `$` `\\u0024`.

    jupyter_client replaces `{connection_file}` (and `{prefix}`, `{resource_dir}`) in every
    argv item, and `$NAME`/`${NAME}` of its own environment in every `env` value
    (string.Template), before it starts the launcher: a kernel_cmd's placeholder or an
    --env value's `$HOME` would arrive changed. The JSON escapes decode back to `{` and `$`,
    and cannot match anything else: outside strings, JSON has no `{` followed by a bare word.
    """
    text = json.dumps(settings.to_dict(), sort_keys=True, separators=(",", ":"))
    text = text.replace("$", "\\u0024")
    return _CLIENT_PLACEHOLDER.sub(lambda m: "\\u007b" + m.group(1) + "}", text)


def settings_text(data: dict[str, Any]) -> str | None:
    """The settings JSON text of one of our kernel.json dicts: from `env`, else from an
    earlier version's `--settings JSON` argv item; None when there is none."""
    env = data.get("env") or {}
    if isinstance(env, dict) and isinstance(env.get(SETTINGS_ENV), str):
        return str(env[SETTINGS_ENV])
    argv = data.get("argv") or []
    if "--settings" in argv:
        index = argv.index("--settings") + 1
        return str(argv[index]) if index < len(argv) else ""
    return None


def settings_from_kernel_json(data: dict[str, Any]) -> KernelSettings:
    """The settings embedded in one of our kernel.json dicts (env, or an old spec's argv)."""
    text = settings_text(data)
    if METADATA_KEY not in (data.get("metadata") or {}) or text is None:
        raise KernelSpecError("This kernelspec was not written by jupyter-docker-kernel.")
    try:
        raw = json.loads(text) if text else None
    except ValueError as exc:
        raise KernelSpecError(f"The kernelspec's embedded settings are not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise KernelSpecError(
            "The kernelspec's embedded settings are missing or not a JSON object. "
            "Run setup again with --replace to rewrite it."
        )
    return KernelSettings.from_dict(raw)


def destination(name: str, *, user: bool, prefix: str | None) -> Path:
    """Where install() would put the spec (for the --replace check and messages)."""
    from jupyter_client.kernelspec import KernelSpecManager

    return Path(KernelSpecManager()._get_destination_dir(name, user=user, prefix=prefix))


def install(
    name: str,
    kernel_json: dict[str, Any],
    *,
    user: bool,
    prefix: str | None,
    replace: bool,
) -> Path:
    """Write the kernelspec; refuses to overwrite an existing one unless replace is set."""
    from jupyter_client.kernelspec import KernelSpecManager

    name = validate_name(name)
    target = destination(name, user=user, prefix=prefix)
    if target.exists() and not replace:
        raise KernelSpecError(
            f"A kernelspec named '{name}' already exists in {target}. Nothing was written. "
            "Pass --replace to overwrite it, or choose another --name."
        )
    if target.exists() and not is_ours(target):
        # --replace is for our own specs: over ipykernel's python3 it would take away the
        # host's Python kernel, and `remove` could not give it back.
        raise KernelSpecError(
            f"The kernelspec '{name}' in {target} was not written by jupyter-docker-kernel; "
            "--replace only replaces our own. Nothing was written. Choose another --name."
        )
    shadow = shadowed_by(name, target)
    if shadow is not None:
        # Suggest a place only where nothing would shadow the spec (in a virtualenv,
        # jupyter_core searches the env's dir before the user's).
        places = [
            flag
            for flag, other in (
                ("--user", destination(name, user=True, prefix=None)),
                ("--sys-prefix", destination(name, user=False, prefix=sys.prefix)),
            )
            if other != target and not other.exists() and shadowed_by(name, other) is None
        ]
        where = f", or install with {places[0]}, where nothing shadows it" if places else ""
        raise KernelSpecError(
            f"A kernelspec named '{name}' in {shadow} comes first in Jupyter's search path, "
            f"so one written to {target} would never be used (Jupyter takes the first spec "
            f"of a name). Nothing was written. Choose another --name (e.g. {name}-docker)"
            f"{where}."
        )
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / name
        src.mkdir()
        (src / "kernel.json").write_text(json.dumps(kernel_json, indent=1) + "\n")
        (src / MARKER_FILE).write_text(
            f"Written by jupyter-docker-kernel {__version__}. "
            f"'jupyter-docker-kernel remove {name}' removes this directory.\n"
        )
        try:
            return Path(
                KernelSpecManager().install_kernel_spec(str(src), name, user=user, prefix=prefix)
            )
        except OSError as exc:
            hint = "" if user else " Perhaps you want --user?"
            raise KernelSpecError(
                f"Cannot write the kernelspec to {target}: {exc.strerror or exc}. "
                f"Nothing was written.{hint}"
            ) from exc


def is_ours(path: Path) -> bool:
    """Whether the spec dir at `path` was written by us (so list/remove may manage it).

    Our marker file says so; for specs written before the marker existed, kernel.json's
    text naming our launcher module does (the text, not the parsed JSON, so that a
    kernel.json broken by an edit still counts: it can only have run our launcher).
    """
    if (path / MARKER_FILE).is_file():
        return True
    try:
        text = (path / "kernel.json").read_text(errors="replace")
    except OSError:
        return False
    return LAUNCHER_MODULE in text


@dataclass(frozen=True)
class Found:
    """One spec dir of ours in Jupyter's kernel dirs (kernelspec.scan_ours)."""

    name: str
    path: Path
    #: The spec dir Jupyter uses for this name instead (None: ours is the one it uses).
    shadowed_by: Path | None = None


def kernel_dirs() -> list[Path]:
    """Jupyter's kernel dirs in its search order, each once (JUPYTER_PATH may repeat one)."""
    from jupyter_client.kernelspec import KernelSpecManager

    seen: set[str] = set()
    out: list[Path] = []
    for directory in KernelSpecManager().kernel_dirs:
        key = os.path.realpath(directory)
        if key not in seen:
            seen.add(key)
            out.append(Path(directory))
    return out


def _spec_dirs(directory: Path) -> list[tuple[str, Path]]:
    """(lower-cased name, path) of every subdirectory, as Jupyter names specs."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    return [(e.lower(), directory / e) for e in entries if (directory / e).is_dir()]


def scan_ours() -> list[Found]:
    """Every spec dir of ours, in Jupyter's search order, broken and shadowed ones too.

    Jupyter resolves a name to the first dir holding a kernel.json of that name
    (jupyter_client's find_kernel_specs), so ours may be hidden behind another spec of
    the same name; we walk the same dirs to say by which. A dir whose kernel.json does
    not parse is still listed here (manage.read_spec says why it is broken).
    """
    first: dict[str, Path] = {}
    found: list[tuple[str, Path]] = []
    for directory in kernel_dirs():
        for name, path in _spec_dirs(directory):
            if (path / "kernel.json").is_file():
                first.setdefault(name, path)
            if is_ours(path):
                found.append((name, path))
    return [
        Found(name, path, None if first.get(name, path) == path else first[name])
        for name, path in found
    ]


def shadowed_by(name: str, target: Path) -> Path | None:
    """The spec Jupyter would use instead of one installed at `target`, if any.

    Only dirs searched before target's count; a target outside Jupyter's path is not
    shadowed (nor found: --prefix for another environment's Jupyter).
    """
    name = name.lower()
    for directory in kernel_dirs():
        if os.path.realpath(directory) == os.path.realpath(target.parent):
            return None
        for key, path in _spec_dirs(directory):
            if key == name and (path / "kernel.json").is_file():
                return path
    return None


def find_ours() -> dict[str, Path]:
    """Our kernelspecs that Jupyter uses, by name (broken ones included; shadowed ones not)."""
    out: dict[str, Path] = {}
    for found in scan_ours():
        if found.shadowed_by is None:
            out.setdefault(found.name, found.path)
    return out


def needs_upgrade(data: dict[str, Any]) -> bool:
    """Whether one of our kernel.json dicts is of an earlier version: its Python may import
    from the notebook's directory, or its settings are in argv, where `ps` shows them."""
    client, argv = thin_client.split([str(a) for a in data.get("argv") or []])
    stale = bool(client) and bool(thin_client.problem(client))
    return not hostpython.argv_is_isolated(argv) or "--settings" in argv or stale


def upgraded(data: dict[str, Any], *, isolated: bool) -> dict[str, Any]:
    """The same kernel.json in the current form: argv isolated, the settings in `env`.

    Everything else (names, interrupt mode, metadata, other env entries, --debug) stays.
    The settings text is kept as written, with `$` escaped for `env` (see settings_argument).
    """
    settings_from_kernel_json(data)  # refuse to rewrite what we could not read back
    text = settings_text(data) or ""
    client, argv = thin_client.split([str(a) for a in data.get("argv") or []])
    extra = ["--debug"] if "--debug" in argv else []
    new = dict(data)
    # A spec that started through the compiled client keeps one: this install's, built
    # now if need be (after an upgrade the old one execs the launcher on every start).
    binary = thin_client.ensure()[0] if client else None
    new["argv"] = thin_client.kernel_argv(
        launcher_argv(argv[0], isolated=isolated), ["-f", "{connection_file}", *extra], binary
    )
    new["env"] = {**(data.get("env") or {}), SETTINGS_ENV: text.replace("$", "\\u0024")}
    return new


def upgrade(path: Path) -> bool:
    """Rewrite the spec dir's kernel.json in the current form if it needs it; True if done.

    Called by every `setup` run and by `doctor --fix` for each of our specs. The file is
    replaced atomically with its mode kept; an OSError (a system-wide spec without root)
    or KernelSpecError (unreadable settings) goes to the caller, and nothing is changed.
    """
    target = path / "kernel.json"
    data = json.loads(target.read_text())
    if METADATA_KEY not in (data.get("metadata") or {}) or not needs_upgrade(data):
        return False
    python = thin_client.split([str(a) for a in data.get("argv") or [sys.executable]])[1][0]
    new = upgraded(data, isolated=hostpython.isolated_import_works(python))
    mode = os.stat(target).st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".kernel.json.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(new, indent=1) + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def upgrade_all() -> list[tuple[str, Path, str]]:
    """Upgrade every kernelspec of ours that needs it: (name, path, "" or why not) each."""
    done: list[tuple[str, Path, str]] = []
    for name, path in sorted(find_ours().items()):
        try:
            if upgrade(path):
                done.append((name, path, ""))
        except (OSError, ValueError, KernelSpecError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            done.append((name, path, why))
    return done
