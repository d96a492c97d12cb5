"""The compiled thin client (thin_client.c): build it, find it, put it in kernel.json's argv.

A Python thin client (thin.py) costs a kernel about 9 MiB of host RSS for as long as the
kernel runs, most of it the interpreter itself; thin_client.c speaks the same protocol
with the resident helper in about 2 MiB and starts in a millisecond. `setup` calls
`ensure()`: when a C compiler is found it builds the client once per package version,
install and source (the key of `binary_path()`), into the user's cache, and
kernelspec.build_kernel_json writes

    [BINARY, N, *PYTHON_ARGV (N items), "-f", "{connection_file}"]

where PYTHON_ARGV is the launcher command written without the client (`python -I -m
jupyter_docker_kernel.launcher`): the binary starts the helper with its interpreter when
none listens (as thin.py does), and execs it whenever it cannot serve the kernel through
a helper (then the launcher runs it in-process as before). Without a compiler the argv
is the Python one, exactly as before. `split()` reads either form back
(manage's `show`, doctor, kernelspec's upgrade); `problem()` is doctor's check.

What the binary must agree on with thin.py (PROTOCOL, the version, thin.INSTALL, the
environment names) is compiled in from thin.py's own constants (`config_header`), so a
helper of another release retires for it as for a Python client. It also records the
size and mtime of the package's __init__.py: after an upgrade in place it execs the
Python launcher instead of asking a helper as the old version.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from jupyter_docker_kernel import __version__, hostpython, thin

#: The C source, shipped in the package (the wheel holds every file of it).
SOURCE = Path(__file__).with_name("thin_client.c")
#: What SOURCE #includes from the package (one compilation unit): the hand-over's relay
#: and loop (issue 17). binary_path's key covers them; a missing one fails the build.
INCLUDED = tuple(
    Path(__file__).with_name(name) for name in ("thin_relay.h", "thin_relay.c", "thin_handover.c")
)
#: Every built binary's name starts so (`split` recognises kernel.json's argv by it).
BINARY_PREFIX = "thin-client-"
#: The stamp the binary compares at every start (see the module doc).
STAMP = Path(__file__).with_name("__init__.py")
#: Set to a compiler (a path or a name on PATH) to use instead of cc; to one that does
#: not exist to write the Python argv.
CC_ENV = "CC"
#: What the binary starts when no helper listens (thin.spawn_argv's module).
HELPER_MODULE = "jupyter_docker_kernel.helper"
#: What a handed-over client execs when its kernel's container exited (the end's Python).
FINISH_MODULE = "jupyter_docker_kernel.finish"


def _c_string(text: str) -> str:
    """A C string literal of text's UTF-8 bytes (octal escapes beyond a safe set)."""
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 /._-+,:=@"
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03o}" for b in text.encode()) + '"'


def config_header() -> str:
    """thin_client_config.h: what the binary must share with thin.py, taken from it."""
    from jupyter_docker_kernel.kernelspec import SETTINGS_ENV

    stamp = STAMP.stat()
    lines = {
        "JDK_PROTOCOL": str(thin.PROTOCOL),
        "JDK_VERSION": _c_string(__version__),
        "JDK_INSTALL": _c_string(thin.INSTALL),
        "JDK_LOST_EXIT": str(thin.LOST_EXIT),
        "JDK_HELPER_PREFIX": _c_string(thin.HELPER_PREFIX),
        "JDK_NO_HELPER_ENV": _c_string(thin.NO_HELPER_ENV),
        "JDK_SETTINGS_ENV": _c_string(SETTINGS_ENV),
        "JDK_ENV_PREFIXES": ", ".join(_c_string(p) for p in thin.ENV_PREFIXES),
        "JDK_ENV_NAMES": ", ".join(_c_string(n) for n in thin.ENV_NAMES),
        "JDK_FORWARDED": ", ".join(str(int(s)) for s in thin.FORWARDED),
        "JDK_HELPER_MODULE": _c_string(HELPER_MODULE),
        "JDK_HELPER_CODE": _c_string(hostpython.safe_path_argv("", HELPER_MODULE)[2]),
        "JDK_FINISH_MODULE": _c_string(FINISH_MODULE),
        "JDK_FINISH_CODE": _c_string(hostpython.safe_path_argv("", FINISH_MODULE)[2]),
        "JDK_HANDOVER_ENV": _c_string(thin.HANDOVER_ENV),
        "JDK_SPAWN_WAIT": repr(float(thin.SPAWN_WAIT)),
        "JDK_STAMP_PATH": _c_string(str(STAMP)),
        "JDK_STAMP_SIZE": f"{stamp.st_size}LL",
        "JDK_STAMP_MTIME_NS": f"{stamp.st_mtime_ns}LL",
    }
    return "".join(f"#define {name} {value}\n" for name, value in lines.items())


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/jupyter-docker-kernel (~/.cache/... when unset or relative)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return root / "jupyter-docker-kernel"


def binary_path(header: str | None = None) -> Path:
    """Where this install's binary is: keyed by the version and a hash of the source and
    the header (which holds the install path and the stamp), so two installs, an upgrade
    or an edited source each get their own, and a built one is never rebuilt."""
    text = b"".join(path.read_bytes() if path.exists() else b"" for path in (SOURCE, *INCLUDED))
    text += (header or config_header()).encode()
    key = hashlib.sha256(text).hexdigest()[:16]
    return cache_dir() / f"{BINARY_PREFIX}{__version__}-{key}"


def compiler() -> str | None:
    """The C compiler to use: $CC, else cc, gcc or clang on PATH; None when there is none."""
    wanted = os.environ.get(CC_ENV)
    for name in [wanted] if wanted else ["cc", "gcc", "clang"]:
        found = shutil.which(name)
        if found:
            return found
    return None


def _private_dir(path: Path) -> bool:
    """Made if missing; True when it is ours and nobody else can write to it (a binary in
    it runs as us for every kernel start)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def ensure(spec_dir: Path | None = None) -> tuple[Path | None, str]:
    """(the binary, "") built or found in the cache, or (None, why not): no compiler, it
    failed, the cache dir is not private, or spec_dir (None: a --user spec) is not under
    our home (a spec in a system or shared prefix serves other users too, who cannot run
    the binary in our cache).
    Called by `setup` and by kernelspec.upgraded; blocking (a compile takes about 0.2 s,
    once per version and install)."""
    if spec_dir is not None and not _under_home(spec_dir):
        return None, f"{spec_dir} is not under {Path.home()}: other users may use it"
    header = config_header()
    target = binary_path(header)
    if not problem(str(target)):
        return target, ""
    missing = [path.name for path in INCLUDED if not path.exists()]
    if missing:
        return None, f"{SOURCE.name} cannot be built: {', '.join(missing)} missing next to it"
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc, gcc, clang or $CC) was found"
    if not _private_dir(target.parent):
        return None, f"{target.parent} is not a directory only we can write to"
    with tempfile.TemporaryDirectory(prefix="thin-client-") as tmp:
        Path(tmp, "thin_client_config.h").write_text(header)
        out = Path(tmp, "thin-client")
        base = [cc, "-O2", "-std=gnu11", "-I", tmp, "-o", str(out), str(SOURCE)]
        why = ""
        # Static when libc.a is there: 0.7 MiB RSS instead of 2 (no ld.so, no libc.so map).
        for argv in ([*base, "-static", "-s"], [*base, "-s"]):
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=120, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                why = str(exc)
                continue
            if proc.returncode == 0:
                break
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        else:
            return None, f"{cc} could not build {SOURCE.name}: {why}"
        # Into place atomically, 0755: a half-written binary never starts a kernel.
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(out.read_bytes())
            os.chmod(partial, 0o755)  # noqa: S103 - an executable nobody else can write
            os.replace(partial, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            return None, f"cannot write {target}: {exc.strerror or exc}"
    return target, ""


def _under_home(path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(Path.home().resolve())
    except (OSError, RuntimeError):
        return False


def kernel_argv(python_argv: list[str], launcher_args: list[str], binary: Path | None) -> list[str]:
    """kernel.json's argv: through the binary when there is one, else the Python one."""
    if binary is None:
        return [*python_argv, *launcher_args]
    return [str(binary), str(len(python_argv)), *python_argv, *launcher_args]


def split(argv: list[str]) -> tuple[str, list[str]]:
    """(the binary, the argv without it) of a kernel.json argv; ("", argv) for the Python
    form. The Python part is what the binary execs: the launcher command and its args."""
    if len(argv) >= 3 and os.path.basename(argv[0]).startswith(BINARY_PREFIX):
        count = argv[1]
        if count.isdigit() and 0 < int(count) <= len(argv) - 2:
            return argv[0], argv[2:]
    return "", list(argv)


def python_count(argv: list[str]) -> int:
    """How many leading items of a client-form argv's Python part are the Python command."""
    return int(argv[1]) if split(argv)[0] else 0


def problem(binary: str) -> str:
    """Why kernel starts cannot use this binary as built for this install ("" when they
    can): missing, not ours, writable by others, or built for another version, install or
    source (it then execs the Python launcher on every start: correct, but slower)."""
    try:
        st = os.stat(binary)
    except OSError as exc:
        return f"{binary} is missing ({exc.strerror or exc})"
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or not os.access(binary, os.X_OK):
        return f"{binary} is not an executable of ours that only we can write"
    try:
        current = binary_path()
    except OSError as exc:
        return f"cannot read {SOURCE}: {exc.strerror or exc}"
    if Path(binary) != current:
        return f"{binary} was built for another version or install (this one's: {current.name})"
    return ""
