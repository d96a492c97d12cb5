"""Tells the notebook why its kernel was stopped: a kill notice on iopub.

When the kernel is killed for a reason its user should act on (out of memory, the maximum
lifetime, the output budget, the pids limit, a protocol the relay refused), the Jupyter
client would otherwise only see a dead kernel, and only the server's log would say why.
The launcher (and, through the same calls, the provisioner) builds the notice here and
publishes it with relay.Relay.announce() to every iopub subscriber, addressed to the last
execute_request the relay saw, so that the cell that was running shows it:

    text = kill_notice(code, exit_reason, supervisor_said, ...)   # "" for a normal end
    if text:
        await relay.announce(notice_messages(connection, relay.last_execute(), text))

Only called once a kernel has ended: jupyter_client (for Session's signing) is imported
then, never on a kernel's start path.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["as_execute_header", "execute_header", "kill_notice", "kill_words", "notice_messages"]

#: How the supervisor inside the container starts its lines (_supervise.PREFIX).
SUPERVISOR = "jupyter-docker-kernel:"
#: The delimiter frame between a Jupyter message's routing ids and its signature.
DELIM = b"<IDS|MSG>"

_OOM = re.compile(r"out of memory \(limit (\d+) MiB\)")
_LIFETIME = re.compile(r"maximum lifetime of [\d.]+ s reached")


def _mib(text: str) -> str:
    """'2048' (MiB) -> '2 GiB'; '256' -> '256 MiB'."""
    mib = int(text)
    return f"{mib >> 10} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def kill_notice(
    code: int,
    reason: str,
    said: str,
    *,
    output_budget: str = "",
    max_message: str = "",
    stopping: bool = False,
) -> str:
    """The one line to show in the notebook about a kernel's end, or "" when the end is
    one the user caused or expects (a shutdown, a restart, an interrupt, a client gone).

    `reason` is the launcher's exit reason (budget exceeded / protocol refused, its own
    lifetime stop, the engine's OOM verdict); `said` the end of the container's stderr,
    where the supervisor reports an OOM kill, its lifetime stop and the pids limit. The
    kernel could forge those lines, but it holds the HMAC key and could publish any
    message anyway: the notice is for the user, not a security verdict.
    """
    lines = [
        line.partition(SUPERVISOR)[2].strip()
        for line in said.splitlines()
        if line.startswith(SUPERVISOR)
    ]
    told = " ".join(lines)
    if reason.startswith("budget exceeded"):
        if "a message of more than" in reason or "a protocol command of" in reason:
            limit = f" ({max_message})" if max_message else ""
            return (
                f"Kernel stopped: it sent a message larger than the --max-message limit{limit}."
                " Restart the kernel; send smaller outputs or ask for a larger --max-message."
            )
        limit = f" of {output_budget}" if output_budget else ""
        return (
            f"Kernel stopped: output budget{limit} exceeded (the kernel sent more output than "
            "it may in its lifetime). Restart the kernel; print less or ask for a larger "
            "--output-budget."
        )
    if reason.startswith("protocol refused"):
        return (
            "Kernel stopped: its sockets spoke a protocol the relay cannot check (not ZMTP 3)."
            " Restart the kernel; if this repeats, the image needs a libzmq of version 4 or "
            "later."
        )
    oom = _OOM.search(told) or _OOM.search(reason)
    if oom:
        return (
            f"Kernel stopped: out of memory (limit {_mib(oom.group(1))}). Restart the "
            "kernel; use less memory or ask for a larger --memory."
        )
    lifetime = _LIFETIME.search(reason) or _LIFETIME.search(told)
    if lifetime:
        return (
            f"Kernel stopped: {lifetime.group(0)}. Restart the kernel to go on, or ask for a "
            "longer --max-lifetime."
        )
    if "the pids limit was hit" in told and code != 0 and not stopping:
        return (
            "Kernel stopped after hitting the pids limit (processes or threads could not be "
            "created). Restart the kernel; start fewer processes or threads, or ask for a "
            "larger --pids-limit."
        )
    return ""


#: kill_notice's texts -> a few words for a table (`grade`'s per-student reason).
_WORDS = (
    (re.compile(r"out of memory \(limit ([^)]+)\)"), "out of memory at {0}"),
    (re.compile(r"output budget(?: of (\S+))? exceeded"), "output budget exceeded"),
    (re.compile(r"larger than the --max-message limit(?: \(([^)]+)\))?"), "message too large"),
    (re.compile(r"maximum lifetime of ([\d.]+) s reached"), "lifetime of {0} s reached"),
    (re.compile(r"pids limit"), "pids limit hit"),
    (re.compile(r"protocol the relay cannot check"), "protocol refused"),
)


def kill_words(notice: str) -> str:
    """kill_notice's text in a few words ("out of memory at 2 GiB"), or "" for none: what
    `grade` shows per student. The kept kernel log records the notice (Container.finish)."""
    for pattern, words in _WORDS:
        found = pattern.search(notice)
        if found:
            return words.format(*found.groups())
    return ""


def _frame(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The ZMTP 3 frame body at `pos` and the position after it; None if cut off."""
    if pos >= len(data):
        return None
    if data[pos] & 0x02:
        size, pos = int.from_bytes(data[pos + 1 : pos + 9], "big"), pos + 9
    else:
        size, pos = (data[pos + 1] if pos + 1 < len(data) else 0), pos + 2
    end = pos + size
    return (data[pos:end], end) if end <= len(data) else None


def execute_header(chunks: tuple[bytes, ...]) -> dict[str, Any] | None:
    """The header of the last execute_request in `chunks` (raw ZMTP bytes a client sent on
    shell, kept by the relay), or None. Parsed only now, at a kill: the relay's hot path
    only keeps a reference to the last chunk that named execute_request."""
    data = b"".join(chunks)
    end = len(data)
    while (at := data.rfind(DELIM, 0, end)) >= 0:
        end = at
        signature = _frame(data, at + len(DELIM))
        header = signature and _frame(data, signature[1])
        parsed = as_execute_header(header[0]) if header else None
        if parsed is not None:
            return parsed
    return None


def as_execute_header(frame: bytes) -> dict[str, Any] | None:
    """A message's header frame as a dict if it is an execute_request's, else None (not
    JSON, not an object, another msg_type). execute_header (the relay's raw bytes) and
    kube_proxy.ChannelProxy.last_execute (the header frame it kept) end with it."""
    try:
        parsed = json.loads(frame)
    except ValueError:
        return None
    if isinstance(parsed, dict) and parsed.get("msg_type") == "execute_request":
        return parsed
    return None


def notice_messages(
    connection: dict[str, Any], parent: dict[str, Any] | None, text: str
) -> list[list[bytes]]:
    """Signed iopub messages (each a list of frames, topic first): a `stream` on stderr
    with `text`, then `status: idle`, both with `parent` as their parent header.

    A stream rather than an `error`: every client shows a stream in the cell's output,
    while an error's ename/evalue/traceback would suggest an exception in the user's
    code. The idle lets nbclient and JupyterLab stop waiting for that cell's output (they
    then see the kernel gone through their own checks). `connection` is the client's
    connection info: its key and signature scheme sign the messages.
    """
    from jupyter_client.session import Session  # only now: the kill path, not the start

    session = Session(
        key=str(connection.get("key", "")).encode(),
        signature_scheme=str(connection.get("signature_scheme") or "hmac-sha256"),
        username="jupyter-docker-kernel",
    )
    header = parent or {}
    stream = session.msg("stream", {"name": "stderr", "text": text + "\n"}, parent=header)
    idle = session.msg("status", {"execution_state": "idle"}, parent=header)
    return [
        session.serialize(stream, ident=b"stream.stderr"),
        session.serialize(idle, ident=b"status"),
    ]
