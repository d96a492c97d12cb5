"""`image check IMAGE`: what an image of the user's own lacks to run our kernels.

cli.py's `image check` calls check() and prints one line per Verdict, with a fix under each
FAIL. Three throw-away containers, each shaped like a kernel's in one more way, so that a
failure points at one property: the image's content (python3, ipykernel), running as a uid
the image does not know, and running with a read-only root filesystem. The entrypoint is
cleared as run_args clears it, unless the user keeps it (setup --keep-entrypoint).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.settings import KernelSettings

Status = Literal["OK", "FAIL", "SKIP", "INFO"]

#: A uid:gid no image has in /etc/passwd: kernels run as the launching user's uid.
ARBITRARY_USER = "54321:54321"

#: Python 3.6 syntax: the image's Python may be old, and the check must say so, not crash.
CONTENT_CODE = r"""
import json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import ipykernel
    out["ipykernel"] = ipykernel.__version__
except Exception as exc:
    out["ipykernel_error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(out))
"""

#: Initialise a real IPKernelApp (sockets, shell, history) and report on a saved copy of
#: fd 1: ipykernel redirects stdout to its own streams during initialize().
KERNEL_CODE = r"""
import os, sys
fd = os.dup(1)
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp.instance()
app.initialize(["-f", "/tmp/jdk-image-check.json"])
os.write(fd, b"kernel-initialised\n")
os._exit(0)
"""
KERNEL_OK = "kernel-initialised"
#: A Python exception line, or a shell's "cannot"/"denied"/"not found" line.
_ERROR_LINE = re.compile(r"^([\w.]+(Error|Exception)\b|.*(cannot|denied|not found))")


@dataclass(frozen=True)
class Verdict:
    """One check: its name, status, what was found, and what to do when it failed."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def check(
    engine: Engine, image: str, *, python: str = "python3", keep_entrypoint: bool = False
) -> list[Verdict]:
    """Run the three containers for `image` and return the verdicts, informational first.

    Raises ImageError (via require_image) when the image is not present; engine errors
    pass through as our EngineError. Never pulls.
    """
    data = engine.require_image(image)
    config = data.get("Config") or {}
    settings = KernelSettings(image=image, python=python, keep_entrypoint=keep_entrypoint)
    entry = config.get("Entrypoint") or []
    verdicts = [_entrypoint_verdict(entry, keep_entrypoint)]
    user = str(config.get("User") or "")
    verdicts.append(
        Verdict(
            "user",
            "INFO",
            f"image USER {user or 'root (none set)'}; kernels run as the launching user's uid "
            "(65534 under root, or setup --kernel-user), never as the image's USER",
        )
    )

    base = ["run", "--rm", "--pull=never", "--network", "none", "--cap-drop", "ALL"]
    base += ["--security-opt", "no-new-privileges", *hardening.entrypoint_args(settings)]
    proc = engine.run([*base, image, python, "-c", CONTENT_CODE], check=False, timeout=120)
    content = _last_json(proc.stdout)
    if proc.returncode != 0 or content is None:
        why = _last_line(proc.stderr) or f"exit {proc.returncode}, no output"
        low = proc.stderr.lower()
        if proc.returncode in (126, 127) or "executable file not found" in low:
            why = "not found: not on the image's PATH, or no such file"
        verdicts.append(
            Verdict(
                "python3",
                "FAIL",
                f"`{python}` did not run in {image} ({why})",
                "install python3 in the image (the supervisor of every kernel runs with it), "
                "or name the image's Python with --python PATH here and in setup",
            )
        )
        verdicts += [
            Verdict(name, "SKIP", f"needs {python}")
            for name in ("ipykernel", "arbitrary uid", "read-only root")
        ]
        return verdicts
    verdicts.append(
        Verdict("python3", "OK", f"Python {content.get('python')} ({content.get('executable')})")
    )
    if "ipykernel" not in content:
        verdicts.append(
            Verdict(
                "ipykernel",
                "FAIL",
                f"{python} cannot import ipykernel ({content.get('ipykernel_error', '?')})",
                f"add it: jupyter-docker-kernel image build --from {image} --tag NEW:TAG "
                "--packages ipykernel; or, for a kernel of another language that the image "
                "provides, setup --kernel-spec-in-image NAME (see image kernels)",
            )
        )
        verdicts += [
            Verdict(name, "SKIP", "needs ipykernel") for name in ("arbitrary uid", "read-only root")
        ]
        return verdicts
    verdicts.append(Verdict("ipykernel", "OK", f"ipykernel {content['ipykernel']}"))

    kept_hint = "; or clear the image's ENTRYPOINT (leave out --keep-entrypoint), which ran first"
    uid, gid = ARBITRARY_USER.split(":")
    tmpfs = f"rw,nosuid,nodev,size=64m,uid={uid},gid={gid},mode=0700"
    # The kernel's HOME: an empty tmpfs owned by its uid. The image needs no home of its own.
    shaped = [*base, "--user", ARBITRARY_USER, "--env", f"HOME={hardening.HOME}"]
    shaped += ["--tmpfs", f"{hardening.HOME}:{tmpfs}"]
    proc = engine.run([*shaped, image, python, "-c", KERNEL_CODE], check=False, timeout=120)
    if KERNEL_OK not in proc.stdout:
        verdicts.append(
            Verdict(
                "arbitrary uid",
                "FAIL",
                f"ipykernel did not start as uid {uid}, a user the image does not know "
                f"({_last_line(proc.stderr) or f'exit {proc.returncode}'})",
                "kernels run as the launching user's uid, not the image's USER: make the "
                "Python environment readable by every user (chmod -R a+rX on it when building "
                "the image), or run kernels as the image's uid with setup --kernel-user UID"
                + (kept_hint if keep_entrypoint and entry else ""),
            )
        )
        verdicts.append(Verdict("read-only root", "SKIP", "needs the arbitrary uid check"))
        return verdicts
    verdicts.append(
        Verdict("arbitrary uid", "OK", f"ipykernel starts as uid {uid} with an empty HOME")
    )

    read_only = [*shaped, "--read-only", "--tmpfs", f"/tmp:{tmpfs.replace('0700', '1777')}"]  # noqa: S108
    proc = engine.run([*read_only, image, python, "-c", KERNEL_CODE], check=False, timeout=120)
    if KERNEL_OK not in proc.stdout:
        verdicts.append(
            Verdict(
                "read-only root",
                "FAIL",
                "ipykernel did not start with a read-only root filesystem "
                f"({_last_line(proc.stderr) or f'exit {proc.returncode}'})",
                "a kernel may write only to /tmp and HOME (empty tmpfs): point what the image "
                "writes at start (caches, IPYTHONDIR, logs) there, e.g. with ENV lines in "
                "its Dockerfile" + (kept_hint if keep_entrypoint and entry else ""),
            )
        )
    else:
        verdicts.append(
            Verdict("read-only root", "OK", "ipykernel starts with only /tmp and HOME writable")
        )
    return verdicts


def _entrypoint_verdict(entry: list[str], keep: bool) -> Verdict:
    if not entry:
        return Verdict("entrypoint", "INFO", "none; the supervisor is the container's command")
    shown = " ".join(entry)
    if keep:
        return Verdict(
            "entrypoint",
            "INFO",
            f"{shown}: kept (--keep-entrypoint); it gets the supervisor's command as its "
            'arguments and must end in exec "$@"',
        )
    return Verdict(
        "entrypoint",
        "INFO",
        f"{shown}: cleared for kernels (the supervisor is the command); setup "
        "--keep-entrypoint keeps it",
    )


def _last_json(text: str) -> dict[str, Any] | None:
    """The last line of `text` that is a JSON object: an entrypoint may print before it."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _last_line(text: str) -> str:
    """The telling line of a failed run's stderr: its last error line (`OSError: ...`), not
    the `SystemExit: 1` or traceback frames after it; else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line
    return lines[-1] if lines else ""


def format_verdicts(image: str, verdicts: list[Verdict]) -> list[str]:
    """`STATUS  check: detail` lines, a `fix:` line under each FAIL, and a summary line."""
    lines = [f"{v.status:<5} {v.name}: {v.detail}" for v in verdicts]
    out: list[str] = []
    for line, v in zip(lines, verdicts, strict=True):
        out.append(line)
        if v.status == "FAIL" and v.fix:
            out.append(f"      fix: {v.fix}")
    failed = [v.name for v in verdicts if v.status == "FAIL"]
    if failed:
        out.append(f"{image}: cannot run kernels yet ({', '.join(failed)} failed).")
    else:
        out.append(f"{image}: can run kernels (setup --image {image}).")
    return out
