"""The host's end of a supervisor's lifeline socket (`_supervise.py --lifeline PATH`).

A container started detached through the engine's API has no `docker run -i` client whose
stdin ends with us. Its supervisor binds PATH in the runtime dir instead and waits (at most
--lifeline-wait seconds from its own start) for one connection: whoever holds it (a
launcher, the Jupyter server, a resident helper) keeps the kernel alive, and the kernel
ends within the supervisor's grace (2 s) once it closes, by SIGKILL too, since the host's
kernel closes a dead process's sockets. The engine is not involved, so this holds even
when the engine's attach streams misbehave (Podman's compat API) or the holder hangs.

Bytes on the wire (the warm pool's claim protocol, pool.hand_over, without "connection"):
1. holder -> supervisor: one line of JSON, at least b"{}\\n"; "cwd" (optional) is the
   kernel's working directory; unknown keys are ignored.
2. holder -> supervisor, with --receive-workdir only: workcopy.send's stream.
3. supervisor -> holder, from then on: its own and the kernel's stdout/stderr, raw.
   The holder must read them (a full socket buffer blocks the kernel's writes).
4. either way, EOF: the holder closing ends the kernel; the kernel's end closes it.

The container's exit code is _supervise.NO_LIFELINE_EXIT (75) when nobody connected in
time or the holder left before its claim line: the kernel never ran.

Callers: the lifecycle (container.py) connects right after the engine's start; the tests.
"""

from __future__ import annotations

import json
import socket
import time

from jupyter_docker_kernel.endpoints import connect_kernel_socket

#: The socket's name in the runtime dir (RUNTIME_TARGET inside the container).
LIFELINE_SOCKET = "life"
#: Mirrors _supervise.LIFELINE_WAIT_SECONDS and NO_LIFELINE_EXIT (that file is not imported
#: on the host: it runs in the image's Python).
LIFELINE_WAIT_SECONDS = 4.0
NO_LIFELINE_EXIT = 75
#: How long the host tries to connect by default. Generous on purpose: the supervisor's
#: own --lifeline-wait counts from its start, which comes seconds after the engine's start
#: under gVisor or a loaded host; that wait, not this one, bounds an orphaned container.
CONNECT_SECONDS = 60.0
#: Between connect attempts while the supervisor is still starting (its bind comes about
#: 50-100 ms after the engine's start returns; a few ms of polling cost nothing).
POLL_SECONDS = 0.005


def connect(path: str, wait: float = CONNECT_SECONDS) -> socket.socket:
    """Connect to the supervisor's lifeline socket at `path` (a host path), retrying until
    it is bound; a blocking socket. Raises TimeoutError after `wait` seconds (the caller
    then removes the container: its supervisor may have given up waiting, exit 75).

    Connects through endpoints.connect_kernel_socket: the runtime dir is writable by the
    kernel's uid, so the socket is opened without following links and checked to be one.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            sock = connect_kernel_socket(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the kernel's supervisor did not open its lifeline {path} within {wait:g} s"
                ) from None
            time.sleep(POLL_SECONDS)
            continue
        sock.setblocking(True)
        return sock


def claim_line(cwd: str | None = None) -> bytes:
    """The first bytes the holder sends: one line of JSON (see the module's docstring)."""
    claim: dict[str, object] = {}
    if cwd:
        claim["cwd"] = cwd
    return json.dumps(claim).encode() + b"\n"
