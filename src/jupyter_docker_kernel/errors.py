"""The one error family the package raises; cli.main turns it into one line and exit 1."""

from __future__ import annotations


class DockerKernelError(Exception):
    """Base error: its message says what happened, what was not done, and what to do next."""


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
