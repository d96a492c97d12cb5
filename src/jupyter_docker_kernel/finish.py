"""The end of a kernel handed over to the compiled client: exit code, notice, exit line, removal.

`python -I -m jupyter_docker_kernel.finish --state <base>/handover.json --end
<base>/handover-end` is what the compiled client (thin_handover.c) execs when the kernel's
container has exited, in its own process: Jupyter's kernel process becomes this one, and
its exit code is the kernel's (docs/design/issue17/c-relay.md, "Build plan", part 3). What
needs Python, the engine or Jupyter's message signing happens here, as Container.wait,
session.serve and Container.finish do it for a kernel the helper relays itself:

- the exit code from the exit watch the helper armed (`exit_fd`: the engine's HTTP response
  to POST /containers/ID/wait, whose headers the helper read; its body, chunked JSON
  `{"StatusCode": N}`, came at the exit);
- the Ending (Container.ending: verdict, the engine's OOM reason, the kill notice) from the
  client's counters and first stop reason (`handover-end`), the supervisor's last words
  (<base>/said) and the shell's last execute_request (<base>/execute);
- the notice on iopub (`iopub_fd`, the listener the client kept): a Relay over the iopub
  route alone announces it as session.serve does (iopub_lost: the subscribers the client
  cut off, who come back for it);
- Container.finish (the exit line on stderr, the kept log's end) and Container.close (the
  container's removal, the runtime dir's).

hosting.hand_over_kernel wrote the state; the client wrote the end (key=value lines). A
failure on the way is said in one line, and the container and runtime dir are removed all
the same. SIGINT is ignored: Jupyter interrupts before a shutdown, and this process is
already the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jupyter_docker_kernel import kernel_log, session
from jupyter_docker_kernel.container import Container, Relayed
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.rundir import remove_tree
from jupyter_docker_kernel.settings import KernelSettings, size_bytes

log = logging.getLogger("jupyter_docker_kernel.launcher")

#: How long the exit code may take to arrive on the watch (the client execs us once it is
#: readable, so it is normally there at once).
EXIT_WAIT = 30.0
#: The exit code when the kernel's own is unknown (the watch failed).
UNKNOWN_EXIT = 1

USAGE = (
    "usage: python -I -m jupyter_docker_kernel.finish --state HANDOVER_JSON "
    "(--end HANDOVER_END | --lost)\n"
    "Run by the compiled kernel client when a kernel it was handed has ended (--end), or by\n"
    "its watcher when the client was killed (--lost)."
)
#: The exit reason kept for `logs` when the compiled client was killed.
LOST_REASON = "its kernel client was killed"


class FinishError(Exception):
    """The end could not be read (what, and what was done anyway, in the message)."""


def read_end(path: str) -> dict[str, str]:
    """The client's `handover-end`: key=value lines (unknown keys are kept, not used)."""
    fields = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            key, eq, value = line.rstrip("\n").partition("=")
            if eq:
                fields[key] = value
    return fields


def unchunk(data: bytes) -> bytes:
    """An HTTP/1.1 chunked body's data as far as it has arrived (data unchanged when it
    does not start with a chunk's size line: a body with a Content-Length)."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out) if out or pos else data
        size_text = data[pos:end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out) if pos else data
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
        if pos > len(data):
            return bytes(out)


def exit_code_in(data: bytes) -> int | None:
    """The StatusCode of the wait's body once it is all there; None while it is not.
    FinishError when the body is whole but says no code (the engine's Error)."""
    body = unchunk(data)
    start = body.find(b"{")
    if start < 0:
        return None
    try:
        parsed, _ = json.JSONDecoder().raw_decode(body[start:].decode(errors="replace"))
    except ValueError:
        return None  # not all of it yet
    if not isinstance(parsed, dict) or not isinstance(parsed.get("StatusCode"), int):
        raise FinishError(f"the engine reported no exit code: {str(parsed)[:200]}")
    return int(parsed["StatusCode"])


def read_exit_code(fd: int, timeout: float = EXIT_WAIT) -> int:
    """The container's exit code from the exit watch's connection (closed after)."""
    data = b""
    deadline = time.monotonic() + timeout
    with socket.socket(fileno=fd) as sock:
        while (code := exit_code_in(data)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FinishError(f"the engine reported no exit in {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                raise FinishError("the engine closed the exit watch without an exit code")
            data += chunk
    return code


def revive(state: dict[str, Any]) -> Container:
    """The handed-over kernel's Container, made again from the helper's state."""
    settings = KernelSettings.from_dict(state["settings"])
    from jupyter_docker_kernel.local_backend import LocalBackend

    env = state.get("env") or {}
    backend = LocalBackend(Engine(host=settings.engine_host or None, environ=env))
    container = Container(
        settings,
        state["connection_file"],
        backend,
        kernel_id=state["kernel_id"],
        base=Path(state["base"]),
        workdir=state["workdir"],
        client_pid=state["client_pid"],
        home=env.get("HOME") or None,
        launcher_pid=state["launcher_pid"],
        revived=state,
    )
    if state.get("log_dir"):
        container.kernel_log = kernel_log.KernelLog.reopen(Path(state["log_dir"]), container.name)
    return container


def read_private(path: Path) -> bytes:
    """A file the client wrote in the runtime dir; b"" when it did not."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


async def announce(
    container: Container, state: dict[str, Any], end: dict[str, str], text: str
) -> None:
    """The kill notice on iopub, as session.serve gives it: a Relay over the iopub route
    alone, on the listener the client kept, whose subscribers it cut off come back."""
    from jupyter_docker_kernel.relay import Relay

    fd = int(end.get("iopub_fd", "-1") or -1)
    if fd < 0:
        container.log.warning("could not tell the notebook why the kernel ended: no iopub")
        return
    listener = socket.socket(fileno=fd)
    routes = [r for r in session.routes(container, state.get("client_cwd")) if r.channel == "iopub"]
    relay = Relay(
        routes,
        max_message=size_bytes(container.settings.max_message),
        output_budget=size_bytes(container.settings.output_budget),
    )
    relay.requests = (read_private(container.base / "execute"),)
    relay.iopub_lost = int(end.get("iopub_lost", "0") or 0)
    try:
        await relay.start(listening={"iopub": listener})
    except OSError as exc:
        listener.close()
        container.log.warning("could not tell the notebook why the kernel ended: %s", exc)
        return
    try:
        await session.announce(relay, container, text)
    finally:
        await relay.close()


def finish(state_path: str, end_path: str) -> int:
    """The end (see the module doc); returns the kernel's exit code (1 when unknown)."""
    container: Container | None = None
    state: dict[str, Any] = {}
    end: dict[str, str] = {}
    code = UNKNOWN_EXIT
    try:
        with open(state_path, encoding="utf-8") as fh:
            state = json.load(fh)
        end = read_end(end_path)
        container = revive(state)
        container.stopping = end.get("stopping") == "1"
        container.exit_reason = end.get("reason", "")
        ago = float(end.get("interrupted_ago", "-1") or -1)
        if ago >= 0:
            container.last_interrupt = time.monotonic() - ago
        code = read_exit_code(int(end["exit_fd"]))
        said = read_private(container.base / "said").decode(errors="replace")
        ending = container.ending(code, said, cold=bool(state.get("cold")))
        if ending.notice:
            asyncio.run(announce(container, state, end, ending.notice))
        relayed = Relayed(
            int(end.get("bytes_to_host", "0") or 0),
            int(end.get("bytes_to_kernel", "0") or 0),
            int(end.get("output_charged", "0") or 0),
        )
        return container.finish(ending, relayed)
    except (OSError, ValueError, KeyError, TypeError, FinishError, DockerKernelError) as exc:
        name = state.get("name") or "of this kernel"
        log.error(
            "could not report the end of kernel container %s: %s; it is removed all the same",
            name,
            exc,
        )
        return code
    finally:
        if container is not None:
            container.close()
        else:
            remove_remains(state)


def lost(state_path: str) -> int:
    """The watcher's end (thin_handover.c's jdk_watch_main) for a kernel whose compiled
    client died without its own end (a SIGKILL): the lifeline closed with the client, so
    the supervisor is ending the kernel; this removes the container now (gVisor and Podman
    keep theirs) and the runtime dir, and ends the kept log's record, instead of leaving
    them to the next start's sweep or `gc`. Nobody reads this exit code or announces on
    iopub: the client that would have is gone."""
    state: dict[str, Any] = {}
    try:
        with open(state_path, encoding="utf-8") as fh:
            state = json.load(fh)
        container = revive(state)
    except (OSError, ValueError, KeyError, TypeError, DockerKernelError) as exc:
        log.error("could not clean up after a killed kernel client (%s): %s", state_path, exc)
        remove_remains(state)
        return UNKNOWN_EXIT
    container.log.warning(
        "the client of kernel container %s was killed; removing the container and its runtime dir",
        container.name,
    )
    try:
        if container.kernel_log is not None:
            ran = time.monotonic() - container.started if container.started else 0.0
            container.kernel_log.finish(UNKNOWN_EXIT, LOST_REASON, ran)
    except OSError as exc:
        log.warning("could not end the kept log of %s: %s", container.name, exc)
    finally:
        container.close()
    return 0


def remove_remains(state: dict[str, Any]) -> None:
    """What a state names when no Container could be made of it: its container and dir."""
    if not state.get("base"):
        return
    with contextlib.suppress(Exception):
        from jupyter_docker_kernel.local_backend import LocalBackend

        env = state.get("env") or {}
        host = (state.get("settings") or {}).get("engine_host") or None
        LocalBackend(Engine(host=host, environ=env)).remove(state.get("id") or state["name"])
    remove_tree(state["base"])


def main(argv: list[str] | None = None) -> int:
    """Entry point (the compiled client's exec)."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {"--state": "", "--end": ""}
    was_lost = False
    while args:
        name = args.pop(0)
        if name == "--lost":
            was_lost = True
            continue
        if name not in opts or not args:
            print(f"{USAGE}\nerror: unexpected argument {name!r}", file=sys.stderr)
            return 2
        opts[name] = args.pop(0)
    if not opts["--state"] or bool(opts["--end"]) == was_lost:
        print(f"{USAGE}\nerror: --state and one of --end or --lost are required", file=sys.stderr)
        return 2
    # Only once the arguments are good: a caller's bad call changes nothing of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    session.configure_logging(bool(os.environ.get("JUPYTER_DOCKER_KERNEL_DEBUG")))
    if was_lost:
        return lost(opts["--state"])
    return finish(opts["--state"], opts["--end"])


if __name__ == "__main__":
    sys.exit(main())
