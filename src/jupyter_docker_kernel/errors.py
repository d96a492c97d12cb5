"""The one error family the package raises; cli.main turns it into one line and exit 1.

Every error carries three fields, so that callers that present it another way (doctor's
check table, the config loader's "in this file" message) read the parts instead of
re-parsing prose:

    what      what happened ("--mount source /x does not exist")
    not_done  what was therefore not done ("No kernelspec was written")
    fix       what to do next ("Create it, or fix the path")
    detail    optional: more about what happened, printed right after `what`

`str(exc)` joins them as sentences: "what. [detail.] not_done. fix." A fix that starts
with a lower-case letter continues the not_done sentence after a semicolon ("No kernelspec
was written; fix the file or remove it."). A plain `Error("whole message")` keeps its text
exactly (then `what` is the whole message and the other fields are empty).
"""

from __future__ import annotations

import copy
from typing import TypeVar

_E = TypeVar("_E", bound="DockerKernelError")


def _sentence(text: str) -> str:
    """text ending in a full stop (or the ?/! it already has)."""
    return text if text.endswith((".", "?", "!")) else text + "."


class DockerKernelError(Exception):
    """Base error: says what happened, what was not done, and what to do next."""

    def __init__(self, what: str, not_done: str = "", fix: str = "", *, detail: str = ""):
        self.what = what
        self.not_done = not_done
        self.fix = fix
        self.detail = detail
        # args holds the rendered message, so pickling and repr keep the text.
        super().__init__(self._render())

    def _render(self) -> str:
        if not (self.not_done or self.fix or self.detail):
            return self.what
        parts = [_sentence(self.what)]
        if self.detail:
            parts.append(_sentence(self.detail))
        if self.not_done and self.fix[:1].islower():
            parts.append(f"{self.not_done.rstrip('.')}; {_sentence(self.fix)}")
        else:
            parts += [_sentence(p) for p in (self.not_done, self.fix) if p]
        return " ".join(parts)

    def __str__(self) -> str:
        return self._render()

    def instead(self: _E, not_done: str) -> _E:
        """The same error (class, what, detail, fix) said in another context: a caller that
        knows better what was not done (config: no kernelspec was written) restates it."""
        other = copy.copy(self)
        other.not_done = not_done
        other.args = (other._render(),)
        return other


class EngineError(DockerKernelError):
    """The container engine is missing, does not answer, or refused a request."""


class ImageError(DockerKernelError):
    """An image is missing, cannot run a kernel, or could not be built."""


class SettingsError(DockerKernelError):
    """A setting or command-line value is invalid; nothing was written or started."""


class KernelSpecError(DockerKernelError):
    """A kernelspec could not be written, found, or read."""


class LaunchError(DockerKernelError):
    """The launcher could not start or keep the kernel's container."""
