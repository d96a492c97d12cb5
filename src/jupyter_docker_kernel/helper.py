"""The resident helper: one process per user and engine address that runs kernel sessions.

`python -I -m jupyter_docker_kernel.helper --base DIR --engine KEY` is started on demand by
the first thin client (thin.connect_or_spawn) and exits when idle. It listens on
`DIR/helper-<hash>.sock` (thin.paths), 0600 inside the 0700 runtime base, and serves only
peers of its own uid (SO_PEERCRED). Each session runs a pluggable *runner* in a thread of
its own; all client sockets are served by one asyncio loop in one thread, which runners
share for their relays (`Control.loop`). A runner that raises ends its own session with
exit code 1 and a log line; the helper and the other sessions go on.

The protocol (unix stream socket; every line is UTF-8 ending in "\\n"):

client -> helper
  1. One JSON object on one line (at most 1 MiB), the request. Common fields:
     ``v`` (thin.PROTOCOL), ``version`` (the package's), ``kind``, ``engine`` (the engine
     address, thin.engine_key). ``kind: "kernel"`` adds ``settings`` (the kernelspec's
     raw settings JSON text), ``connection_file`` (absolute), ``cwd``, ``client_pid`` (the
     thin client's parent: the Jupyter server or nbclient), ``env`` (the variables named
     by thin.ENV_PREFIXES/ENV_NAMES), ``debug``, and ``listening`` when the client sends
     sockets with it: the channel names of the SCM_RIGHTS descriptors that come with the
     line's first byte, in their order, each a socket listening on that channel's
     endpoint (thin.listen_early; checked by endpoints.adopt_listening before use).
     ``kind: "janitor"`` adds ``pid`` and ``start`` (the process to sweep after) and
     ``env`` (as a kernel's).
  2. Then single bytes, each a signal number the client received: 2 (SIGINT),
     15 (SIGTERM), 1 (SIGHUP), in the order they arrived.
  3. EOF (or a reset): the client is gone. A kernel session's runner must stop the kernel;
     a janitor's pid is swept.

helper -> client
  ``A <helper pid>``   accepted: the runner is starting the kernel (Control.accept). Sent
                       once, before any other line.
  ``R <reason>``       refused, nothing started; the helper closes. ``R retiring`` means
                       the helper speaks another protocol or version and has stopped
                       listening: connect again (a new helper starts). Any other reason:
                       the client falls back to running the kernel in-process.
  ``E <text>``         a line for the client's stderr (which Jupyter puts in its log).
  ``X <code>``         the session's exit code, last; the helper closes.
  ``H <n>``            the hand-over (Control.hand_over; docs/design/issue17/c-relay.md,
                       "Build plan"): n bytes of ``key=value`` lines follow, and the
                       kernel's descriptors come with the line's first byte (SCM_RIGHTS).
                       Only to a client that asked (``"handover": true``). From then on
                       the client relays and watches the kernel itself; it sends one byte
                       ``R`` once it relayed the first reply; the helper closes without
                       ``X`` (at ``R``, the client's EOF or FIRST_REPLY_WAIT).
  EOF before ``X`` after ``A`` (and no ``H``): the helper died; the client exits with
  thin.LOST_EXIT.

Who calls what: thin.run() is the client. A runner (`Runner`: `(Request, Control) -> int`)
is named by --runner MODULE:FUNCTION; `--janitor MODULE:FUNCTION` names the sweep
(`(pid, start, env) -> None`: env is the janitor client's, its engine variables pointed at
ours, see client_env), which also runs once when the helper starts, with pid 0 (what a
previous helper left) and env None (this process's). They default to hosting.run_kernel
(an argv kernel's session: session.run) and reaper.sweep_after (gc's rules); `refuse` and
`log_janitor` are the placeholders (a runner that makes every client fall back, a janitor
that only logs).

The helper's environment is that of the client that spawned it; at start it points its
engine variables (JUPYTER_DOCKER_KERNEL_ENGINE, DOCKER_HOST) at the engine it serves (its
--engine), so that what runs here without a request (the start's sweep) reaches that
engine. Everything done for a request uses that request's env instead: a later client may
have another DOCKER_CONTEXT, DOCKER_CONFIG, PATH or HOME than the first.
`JUPYTER_DOCKER_KERNEL_HELPER_IDLE` (seconds) overrides the idle timeout.

How a runner uses Control (hosting.run_kernel is the real one): it raises RefusedError
while nothing exists (the client falls back), calls `accept()` once it starts something,
wires `on_gone` (stop and remove) and `on_signal` (interrupt / stop), runs its relay on
`loop` with `asyncio.run_coroutine_threadsafe` and blocks its own thread on the wait, and
returns the exit code. Log records reach its client when they name the session
(`SESSION_ATTR`, a LoggerAdapter's extra), come from code running in its context
(`CURRENT`, which the tasks it starts on the loop inherit) or from a bound thread.

The engine CLI and anything else run for a session (its pool refill: the Engine made with
environ=request.env hands it on, see local_backend's fill) must get `request.env` (the
client's DOCKER_HOST, PATH, HOME, JUPYTER_*), not this process's environment, which is
whichever client came first. Threads the runner starts call `control.bind_thread()` to have their
log records reach the client.
"""

from __future__ import annotations

# isort: off
# First, before asyncio: in the helper process, keeps ssl and friends out (see _lean).
from jupyter_docker_kernel import _lean

# isort: on
import asyncio
import contextlib
import contextvars
import fcntl
import importlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any

from jupyter_docker_kernel import __version__, thin

#: Named, not __name__: run with -m this module is __main__ (see the end of the file).
log = logging.getLogger("jupyter_docker_kernel.helper")

#: Seconds without sessions or janitor clients after which the helper exits.
IDLE_SECONDS = 120.0
#: The longest request line accepted, and how long a client may take to send it.
MAX_REQUEST = 1 << 20
REQUEST_TIMEOUT = 10.0
#: How long a stopping helper (SIGTERM) waits for its runners to stop their kernels.
STOP_WAIT = 10.0
#: Our log file is cut back to nothing at start when it grew beyond this.
LOG_CAP = 1 << 20
#: Seconds of idleness before the helper exits, when set (tests use a short one).
IDLE_ENV = "JUPYTER_DOCKER_KERNEL_HELPER_IDLE"
#: The most descriptors a request brings (a kernel's five listening sockets); more are
#: closed by the kernel's socket layer as they arrive.
MAX_FDS = 8
#: How long the helper waits before accepting again after accept() failed (EMFILE).
ACCEPT_RETRY = 1.0
#: How long a hand-over (`H` and its descriptors) may wait for the client to read.
HANDOVER_TIMEOUT = 10.0
#: The byte a client that took the kernel over sends once it relayed the first reply.
READY_BYTE = ord("R")


@dataclass(frozen=True)
class Request:
    """One kernel session's request, as the thin client sent it (see the module doc)."""

    settings: str
    connection_file: str
    cwd: str
    client_pid: int
    env: dict[str, str]
    debug: bool
    #: The thin client's own pid, from SO_PEERCRED (not from the request: it cannot lie).
    peer_pid: int
    #: The whole request, for fields a later client adds.
    raw: dict[str, Any] = field(repr=False)
    #: Sockets the client bound on its connection file's endpoints, by channel (the
    #: request's "listening"); the helper closes them when the runner returns.
    listening: dict[str, socket.socket] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(
        cls, raw: dict[str, Any], peer_pid: int, received: Sequence[socket.socket] = ()
    ) -> Request:
        """Raises ValueError naming the first field that is missing or of the wrong type.
        received: the sockets that came with the request, named by its "listening"."""
        env = raw.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError("env must be an object of strings")
        for name, kind in (("settings", str), ("connection_file", str), ("cwd", str)):
            if not isinstance(raw.get(name), kind):
                raise ValueError(f"{name} must be a string")
        client_pid = raw.get("client_pid", 0)
        if not isinstance(client_pid, int):
            raise ValueError("client_pid must be an integer")
        return cls(
            settings=raw["settings"],
            connection_file=raw["connection_file"],
            cwd=raw["cwd"],
            client_pid=client_pid,
            env=env,
            debug=bool(raw.get("debug", False)),
            peer_pid=peer_pid,
            raw=raw,
            listening=named_sockets(raw.get("listening"), received),
        )


def named_sockets(names: object, received: Sequence[socket.socket]) -> dict[str, socket.socket]:
    """The received sockets by the names the request gives them, in order; none when the
    names do not match them one to one (the runner then binds its own)."""
    if not isinstance(names, list) or len(names) != len(received) or len(set(names)) != len(names):
        return {}
    if not all(isinstance(name, str) for name in names):
        return {}
    return dict(zip(names, received, strict=True))


_Callback = Callable[..., None]


class Control:
    """A session's link to its client, handed to the runner.

    - `loop`: the helper's one asyncio loop (its own thread). Run the kernel's relay there
      (`asyncio.run_coroutine_threadsafe(coro, control.loop)`); never block it.
    - `on_signal(fn)`: fn(signum) for each signal the client forwards (SIGINT -> interrupt,
      SIGTERM/SIGHUP -> stop), in arrival order, on this session's dispatcher thread (so
      fn may block briefly, e.g. on an engine API call). Signals that arrived before the
      first on_signal() are delivered to it, so a SIGTERM during start-up is not lost.
    - `gone` / `on_gone(fn)`: set / called once when the client went away (EOF: killed,
      killpg'd by its kernel manager) or the helper is stopping. The runner must then stop
      and remove the kernel and return; what it returns goes nowhere after an EOF.
    - `accept()`: tells the client the kernel is being started (`A`): from then on it
      forwards signals and waits for the exit code. Until then the runner may raise
      `RefusedError` and the client falls back to the in-process launcher. write() and
      returning accept too; call it first unless refusing is possible.
    - `write(text)`: lines to the client's stderr. Log records of the runner's thread and
      the dispatcher's go there too (and to the helper's log); `bind_thread()` adds others.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        request: Request,
        send: _Callback,
        fileno: int = -1,
        pending: Callable[[], int] = lambda: 0,
    ):
        self.loop = loop
        self.request = request
        #: The client's connection (its transport's descriptor: hand_over sends on a dup
        #: of it once `pending()`, the bytes the transport still holds, is 0); -1: none.
        self._fileno = fileno
        self._pending = pending
        #: Set by hand_over once `H` went out: the client holds the kernel from then on.
        self.handed_over = False
        #: Set after `H` when the client sent `R` (it relayed the first reply) or went
        #: away (EOF), or the helper is stopping: the refill's gate may open.
        self.ready = threading.Event()
        self.gone = threading.Event()
        #: Why `gone` was set: "client gone" or "helper stopping".
        self.gone_reason = ""
        self._send = send
        self.accepted = False
        self._events: SimpleQueue[object] = SimpleQueue()
        self._lock = threading.Lock()
        self._signal_fns: list[Callable[[int], None]] = []
        self._gone_fns: list[Callable[[], None]] = []
        self._handler_ready = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatch", daemon=True)

    def on_signal(self, fn: Callable[[int], None]) -> None:
        with self._lock:
            self._signal_fns.append(fn)
        self._handler_ready.set()

    def on_gone(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._gone_fns.append(fn)
            already = self.gone.is_set()
        if already:
            self._events.put(("gone", fn))

    def accept(self) -> None:
        """Send `A` (once, thread-safe): the client now waits for the exit code."""
        with self._lock:
            if self.accepted:
                return
            self.accepted = True
        with contextlib.suppress(RuntimeError):  # loop closed: helper exiting
            self.loop.call_soon_threadsafe(self._send, f"A {os.getpid()}\n".encode())

    def write(self, text: str) -> None:
        """Send text to the client's stderr, line by line (thread-safe, never blocks)."""
        self.accept()
        for line in text.splitlines() or [""]:
            data = b"E " + line.encode(errors="replace") + b"\n"
            with contextlib.suppress(RuntimeError):  # loop closed: helper exiting
                self.loop.call_soon_threadsafe(self._send, data)

    def bind_thread(self) -> None:
        """Route the calling thread's log records to this client too."""
        _ROUTES[threading.get_ident()] = self

    def wants_handover(self) -> bool:
        """Whether the client asked to take the kernel over (`"handover": true`, sent
        only by the compiled client) and its environment does not switch it off
        (thin.HANDOVER_ENV=0, thin.handover_on). The runner still decides whether the
        kernel qualifies (hosting.qualifies)."""
        return self.request.raw.get("handover") is True and thin.handover_on(
            self.request.env.get(thin.HANDOVER_ENV)
        )

    def hand_over(
        self, fields: dict[str, str], fds: Sequence[int], timeout: float = HANDOVER_TIMEOUT
    ) -> None:
        """Send `H <n>` and the `key=value` lines of `fields` with `fds` (SCM_RIGHTS, in
        the design's table order) in one sendmsg, after everything written before it
        (the `A` and `E` lines) has left; from then on the client's signals and its going
        away are its own business: this session's on_signal and on_gone handlers are
        dropped. Called by the runner's thread once (hosting.hand_over_kernel); the caller
        still owns `fds` (it closes its copies after). Raises OSError when the client is
        gone or the bytes could not be sent in `timeout`: then nothing was handed over
        and the handlers still hold (the caller stops the kernel itself), ValueError for
        a field that cannot be a key=value line."""
        body = []
        for key, value in fields.items():
            if not key or "=" in key or "\n" in key or "\n" in value:
                raise ValueError(f"the hand-over field {key!r} is not one key=value line")
            body.append(f"{key}={value}\n")
        data = "".join(body).encode()
        data = f"H {len(data)}\n".encode() + data
        if self._fileno < 0:
            raise OSError("this session's connection cannot carry descriptors")
        self.accept()
        future = asyncio.run_coroutine_threadsafe(
            self._send_handover(data, fds, timeout), self.loop
        )
        try:
            future.result(timeout + 1.0)
        except TimeoutError as exc:
            future.cancel()
            raise OSError(f"the hand-over was not sent in {timeout:g} s") from exc

    async def _send_handover(self, data: bytes, fds: Sequence[int], timeout: float) -> None:
        """hand_over's sending, on the loop: nothing else writes to the client meanwhile."""
        deadline = time.monotonic() + timeout
        while self._pending():  # the A and E lines queued before: they come first
            if time.monotonic() > deadline:
                raise OSError("the client does not read its connection")
            await asyncio.sleep(0.005)
        with self._lock:
            if self.gone.is_set():
                raise OSError("the client went away before the hand-over")
        # A dup: the transport's socket stays the transport's; this one is blocking-free
        # all the same (one open file), so a full buffer is waited for with poll.
        sock = socket.socket(fileno=os.dup(self._fileno))
        try:
            sent = await self._sendmsg(sock, data, fds, deadline)
            while sent < len(data):
                sent += await self._sendmsg(sock, data[sent:], (), deadline)
        finally:
            sock.close()
        with self._lock:
            self.handed_over = True
            self._signal_fns.clear()
            self._gone_fns.clear()
            if self.gone.is_set():
                self.ready.set()

    async def _sendmsg(
        self, sock: socket.socket, data: bytes, fds: Sequence[int], deadline: float
    ) -> int:
        while True:
            try:
                return socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
            except (BlockingIOError, InterruptedError):
                if time.monotonic() > deadline:
                    raise OSError("the client does not read its connection") from None
                await asyncio.sleep(0.005)

    # -- called by the helper ------------------------------------------------------------

    def _start(self) -> None:
        self._dispatcher.start()

    def _signal(self, signum: int) -> None:
        self._events.put(signum)

    def _set_gone(self, reason: str) -> None:
        with self._lock:
            if self.handed_over:
                self.ready.set()  # its EOF after H: the kernel is the client's, not gone
            if self.gone.is_set():
                return
            self.gone_reason = reason
            self.gone.set()
            fns = list(self._gone_fns)
        self._handler_ready.set()  # signals still waiting for a handler no longer matter
        for fn in fns:
            self._events.put(("gone", fn))

    def _close(self) -> None:
        self._handler_ready.set()
        self._events.put(None)

    def _dispatch(self) -> None:
        self.bind_thread()
        try:
            while (event := self._events.get()) is not None:
                if isinstance(event, tuple):
                    _call(event[1])
                    continue
                assert isinstance(event, int)
                self._handler_ready.wait()
                with self._lock:
                    fns = [] if self.gone.is_set() else list(self._signal_fns)
                for fn in fns:
                    _call(fn, event)
        finally:
            _ROUTES.pop(threading.get_ident(), None)


def _call(fn: _Callback, *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("a session's signal or gone handler failed")


#: Runner: run one kernel session to its end and return the exit code for the client.
Runner = Callable[[Request, Control], int]
#: Janitor: sweep what process `pid` (started at `start`) left behind; it has just gone.
#: The third argument: the environment for its engine calls (None: this process's).
Janitor = Callable[[int, str, dict[str, str] | None], None]


class RefusedError(Exception):
    """Raised by a runner before it started anything: the client is sent `R <reason>`
    (instead of `A`) and falls back to running the kernel in-process."""


def refuse(request: Request, control: Control) -> int:
    """The default runner until the lifecycle is plugged in: clients fall back."""
    raise RefusedError("no kernel runner in this helper")


def log_janitor(pid: int, start: str, env: dict[str, str] | None = None) -> None:
    """The default janitor: only says that it would sweep."""
    who = f"process {pid} (start {start}) went away" if pid else "the helper started"
    log.info("janitor: %s; no sweep is plugged in", who)


#: Checks that keep an idle helper alive while any returns True (see keep_alive).
_BUSY: list[Callable[[], bool]] = []


def keep_alive(busy: Callable[[], bool]) -> None:
    """Register a check the idle timer asks (on the loop thread: it must be quick): the
    helper does not exit while it returns True, e.g. while the KernelHost has refills
    queued. Sessions and janitor clients count already."""
    _BUSY.append(busy)


def _busy() -> bool:
    for check in _BUSY:
        try:
            if check():
                return True
        except Exception:
            log.exception("an idle check failed; taken as busy")
            return True
    return False


# -- routing log records to sessions ------------------------------------------------------

#: thread ident -> the session whose client gets that thread's log records.
_ROUTES: dict[int, Control] = {}
#: The session of the running code, set in each runner's thread: it reaches the tasks the
#: runner starts on the shared loop (a task copies its creator's context), and so the log
#: records of its relay's callbacks, which run on the loop thread.
CURRENT: contextvars.ContextVar[Control | None] = contextvars.ContextVar("session", default=None)
#: A log record's attribute naming its session (a runner's LoggerAdapter extra): such a
#: record reaches that client from any thread.
SESSION_ATTR = "jdk_session"


def session_of(record: logging.LogRecord) -> Control | None:
    """The session whose client gets this record: named by the record, by the running
    context, or by the thread it was made in; None: the helper's own (its log file only)."""
    control = getattr(record, SESSION_ATTR, None)
    if isinstance(control, Control):
        return control
    return CURRENT.get() or _ROUTES.get(record.thread or 0)


class _SessionHandler(logging.Handler):
    """Sends a record to the client of the session its thread is bound to, if any."""

    def emit(self, record: logging.LogRecord) -> None:
        control = session_of(record)
        if control is None:
            return
        if record.levelno >= logging.INFO or control.request.debug:
            with contextlib.suppress(Exception):
                control.write(self.format(record))


LOG_FORMAT = "[%(levelname).1s %(asctime)s.%(msecs)03d DockerKernel] %(message)s"


# -- the server ---------------------------------------------------------------------------


def engine_of(raw: dict[str, Any]) -> str:
    """thin.engine_key of a kernel request, computed with json from what it sent: the
    client only scanned for engine_host (see thin's module doc)."""
    env = raw.get("env") if isinstance(raw.get("env"), dict) else {}
    assert isinstance(env, dict)
    host = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        host = json.loads(raw.get("settings") or "{}").get("engine_host") or ""
    command = env.get("JUPYTER_DOCKER_KERNEL_ENGINE", "docker")
    return f"{command} {host or env.get('DOCKER_HOST', '')}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected (Linux SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def peer_allowed(peer_uid: int, own_uid: int) -> bool:
    """Only our own uid may run kernels as us. Root is refused too: a root peer reaching
    our 0700 dir is not a client of ours, and our kernels must not serve it."""
    return peer_uid == own_uid


class Helper:
    """The server: accepts connections on `listener`, runs sessions, exits when idle."""

    def __init__(
        self,
        listener: socket.socket,
        path: str,
        engine: str,
        runner: Runner,
        janitor: Janitor = log_janitor,
        idle: float = IDLE_SECONDS,
    ) -> None:
        self.listener = listener
        self.path = path
        self.lock_path = thin.paths(os.path.dirname(path), engine)[1]
        self.engine = engine
        self.runner = runner
        self.janitor = janitor
        self.idle = idle
        self.sessions: set[Control] = set()
        self.janitors = 0
        self.last_busy = time.monotonic()
        self.listening = True
        self.stopping = False
        self.uid = os.getuid()
        self.inode = os.stat(path).st_ino
        self.loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        #: The tasks serving connections (the loop keeps only weak references).
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Run until idle (or SIGTERM and the runners stopped)."""
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        # Our own accept, not asyncio.start_unix_server: a request's first bytes must be
        # read with recvmsg, for the sockets that come with them (a transport's recv
        # would drop them).
        self.listener.setblocking(False)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        watch = asyncio.create_task(self._watch_idle())
        log.info("helper %d serving %s (engine %s)", os.getpid(), self.path, self.engine)
        # What a previous helper left (it was killed, or the host rebooted): pid 0.
        sweep = asyncio.create_task(self._sweep(0, ""))
        try:
            await self._done
        finally:
            watch.cancel()
            sweep.cancel()
            self._stop_listening()

    def stop(self) -> None:
        """SIGTERM: every session's runner is told to stop (gone), then the helper exits."""
        if self.stopping:
            return
        self.stopping = True
        log.info("helper stopping: %d session(s) to end", len(self.sessions))
        self._stop_listening()
        for control in list(self.sessions):
            control._set_gone("helper stopping")
        assert self.loop is not None
        self.loop.call_later(STOP_WAIT, self._finish)
        self._maybe_finish()

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _maybe_finish(self) -> None:
        if (self.stopping or not self.listening) and not self.sessions and not self.janitors:
            self._finish()

    def _stop_listening(self) -> None:
        """Unlink our socket (if still ours: a newer helper may have replaced it) and close."""
        if not self.listening:
            return
        self.listening = False
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        if self.loop is not None:
            self.loop.remove_reader(self.listener.fileno())
        self.listener.close()

    async def _watch_idle(self) -> None:
        tick = max(0.05, min(1.0, self.idle / 4))
        while True:
            await asyncio.sleep(tick)
            if self.sessions or self.janitors or not self.listening or _busy():
                self.last_busy = time.monotonic()
                continue
            due = not self._still_ours() or time.monotonic() - self.last_busy >= self.idle
            if due and self._retire_if_quiet():
                log.info("helper idle (or replaced): exiting")
                self._finish()
                return

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _retire_if_quiet(self) -> bool:
        """Stop listening unless a client is connecting. Under the spawn lock, so that a
        client that found no socket spawns a new helper only after we unlinked ours."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            fd = -1
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            pending, _, _ = select.select([self.listener], [], [], 0)
            if pending:
                return False  # asyncio accepts it next; then we are busy again
            self._stop_listening()
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    def _accept(self) -> None:
        """The listener is readable (on the loop): serve every client that is waiting."""
        assert self.loop is not None
        while self.listening:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the clients wait in the backlog
                log.warning("could not accept a client: %s; again in %g s", exc, ACCEPT_RETRY)
                self.loop.remove_reader(self.listener.fileno())
                self.loop.call_later(ACCEPT_RETRY, self._accept_again)
                return
            task = self.loop.create_task(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _accept_again(self) -> None:
        if self.listening and self.loop is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)

    async def _connection(self, conn: socket.socket) -> None:
        received: list[socket.socket] = []
        writer: asyncio.StreamWriter | None = None
        try:
            conn.setblocking(False)
            peer_pid, peer_uid, _ = peer_credentials(conn)
            if not peer_allowed(peer_uid, self.uid):
                log.warning("refused a connection from uid %d (pid %d)", peer_uid, peer_pid)
                conn.send(b"R not your helper\n")
                return
            first = await self._first_bytes(conn)
            if first is None:
                log.warning("refused a malformed request from pid %d: nothing sent", peer_pid)
                conn.send(b"R malformed request\n")
                return
            data, received = first
            reader, writer = await self._streams(conn, data)
            await self._handle(reader, writer, peer_pid, received)
        except Exception:
            log.exception("a connection to the helper failed")
        finally:
            for sock in received:
                sock.close()
            if writer is not None:
                writer.close()
            else:
                conn.close()

    async def _first_bytes(self, conn: socket.socket) -> tuple[bytes, list[socket.socket]] | None:
        """The connection's first bytes and the sockets that came with them (recvmsg,
        SCM_RIGHTS), once it is readable; None when nothing came in REQUEST_TIMEOUT."""
        assert self.loop is not None
        readable: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(conn.fileno(), _settle, readable)
        try:
            await asyncio.wait_for(readable, REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            return None
        finally:
            self.loop.remove_reader(conn.fileno())
        try:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return b"", []
        received = []
        for fd in fds:
            try:
                received.append(socket.socket(fileno=fd))
            except OSError:  # not a socket: not ours to keep
                os.close(fd)
        return data, received

    async def _streams(
        self, conn: socket.socket, data: bytes
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A stream reader and writer on an accepted connection whose first bytes (`data`)
        were read already (what asyncio.start_unix_server would have made)."""
        assert self.loop is not None
        reader = asyncio.StreamReader(limit=MAX_REQUEST)
        if data:
            reader.feed_data(data)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await self.loop.connect_accepted_socket(lambda: protocol, sock=conn)
        return reader, asyncio.StreamWriter(transport, protocol, reader, self.loop)

    async def _handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_pid: int,
        received: list[socket.socket],
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise ValueError("the request is not a JSON object")
        except (ValueError, asyncio.TimeoutError, asyncio.LimitOverrunError) as exc:
            log.warning("refused a malformed request from pid %d: %s", peer_pid, exc)
            writer.write(b"R malformed request\n")
            return
        if raw.get("v") != thin.PROTOCOL or raw.get("version") != __version__:
            # Another release's client (an upgrade): let it start a helper of its own.
            log.info("a client of version %s came: retiring", raw.get("version"))
            self._stop_listening()
            writer.write(b"R retiring\n")
            self._maybe_finish()
            return
        if raw.get("engine") != self.engine or (
            raw.get("kind") == "kernel" and engine_of(raw) != self.engine
        ):
            writer.write(b"R another engine\n")
            return
        if raw.get("kind") == "janitor":
            await self._janitor(reader, writer, raw)
        elif raw.get("kind") == "kernel":
            try:
                request = Request.parse(raw, peer_pid, received)
            except ValueError as exc:
                writer.write(f"R malformed request: {exc}\n".encode())
                return
            await self._session(reader, writer, request)
        else:
            writer.write(b"R unknown kind\n")

    async def _janitor(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: dict[str, Any]
    ) -> None:
        pid, start = int(raw.get("pid", 0)), str(raw.get("start", ""))
        env = client_env(raw, self.engine)
        self.janitors += 1
        try:
            writer.write(f"A {os.getpid()}\n".encode())
            while await _read_some(reader):
                pass  # a janitor client sends nothing more; only its EOF matters
        finally:
            self.janitors -= 1
            self.last_busy = time.monotonic()
        await self._sweep(pid, start, env)
        self._maybe_finish()

    async def _sweep(self, pid: int, start: str, env: dict[str, str] | None = None) -> None:
        """Run the janitor off the loop (it calls the engine), counted as busy."""
        assert self.loop is not None
        self.janitors += 1
        try:
            await self.loop.run_in_executor(None, self.janitor, pid, start, env)
        except Exception:
            log.exception("the janitor's sweep after pid %d failed", pid)
        finally:
            self.janitors -= 1
            self.last_busy = time.monotonic()

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request
    ) -> None:
        assert self.loop is not None
        loop = self.loop
        done: asyncio.Future[int | str] = loop.create_future()
        transport = writer.transport
        control = Control(
            loop,
            request,
            lambda data: _write(writer, data),
            fileno=writer.get_extra_info("socket").fileno(),
            pending=transport.get_write_buffer_size,
        )

        def finished(result: int | str) -> None:
            if not done.done():
                done.set_result(result)

        def run() -> None:
            control.bind_thread()
            CURRENT.set(control)
            result: int | str
            try:
                result = self.runner(request, control)
            except RefusedError as exc:
                result = str(exc) or "refused"
            except SystemExit as exc:
                result = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("the session of pid %d failed in the helper", request.peer_pid)
                result = 1
            finally:
                _ROUTES.pop(threading.get_ident(), None)
            with contextlib.suppress(RuntimeError):  # the loop closed: helper exiting
                loop.call_soon_threadsafe(finished, result)

        self.sessions.add(control)
        if request.debug:
            _debug_session(+1)
        control._start()
        threading.Thread(target=run, name=f"session-{request.peer_pid}", daemon=True).start()
        reading = asyncio.create_task(self._forward_signals(reader, control))
        try:
            result = await done
        finally:
            # Before any answer: a client that falls back binds these addresses itself.
            for sock in request.listening.values():
                sock.close()
            reading.cancel()
            self.sessions.discard(control)
            if request.debug:
                _debug_session(-1)
            self.last_busy = time.monotonic()
            control._close()
        if isinstance(result, str):
            if not control.accepted:  # nothing started: the client runs it in-process
                writer.write(f"R {result}\n".encode())
                with contextlib.suppress(OSError):
                    await writer.drain()
                self._maybe_finish()
                return
            control.write(f"jupyter-docker-kernel: the helper refused this kernel: {result}")
            result = 1
        control.accept()
        if control.handed_over:
            # The client holds the kernel now and exits with what the finish says; the
            # start line (E) went before: nothing more to say.
            with contextlib.suppress(OSError):
                await writer.drain()
        elif control.gone_reason != "client gone":
            writer.write(f"X {result}\n".encode())
            with contextlib.suppress(OSError):
                await writer.drain()
        self._maybe_finish()

    async def _forward_signals(self, reader: asyncio.StreamReader, control: Control) -> None:
        while data := await _read_some(reader):
            if control.handed_over:
                # Its signals are its own now; only R (the first reply relayed) matters.
                if READY_BYTE in data:
                    control.ready.set()
                continue
            for signum in data:
                control._signal(signum)
        control._set_gone("client gone")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(256)
    except OSError:
        return b""  # a reset is a close


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


def client_env(raw: dict[str, Any], engine: str) -> dict[str, str] | None:
    """A janitor request's env with its engine variables pointed at `engine` (ours, a
    thin.engine_key), as use_engine does to this process's: a Jupyter server registers
    with the engine address of its kernelspecs' engine_host, not of its DOCKER_HOST.
    None when it sent none or a malformed one (this process's environment is used)."""
    env = raw.get("env")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        return None
    env = dict(env)
    command, _, address = engine.rpartition(" ")
    if command:
        env["JUPYTER_DOCKER_KERNEL_ENGINE"] = command
    if address:
        env["DOCKER_HOST"] = address
    else:
        env.pop("DOCKER_HOST", None)
    return env


def use_engine(engine: str) -> None:
    """Point this process's engine variables at `engine` (a thin.engine_key: "COMMAND
    ADDRESS"): the environment we inherited is the first client's, whose DOCKER_HOST need
    not be the address we serve (a kernelspec's engine_host names it)."""
    if not engine:
        return
    command, _, address = engine.rpartition(" ")
    if command:
        os.environ["JUPYTER_DOCKER_KERNEL_ENGINE"] = command
    if address:
        os.environ["DOCKER_HOST"] = address
    else:
        os.environ.pop("DOCKER_HOST", None)


def load(spec: str) -> Any:
    """MODULE:NAME -> the object (--runner, --janitor)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def bind(path: str) -> socket.socket:
    """A listening socket at `path`, 0600, put in place atomically: bound under a temporary
    name and renamed over the path, so a stale socket of a dead helper is replaced and a
    client never finds a path that refuses connections because it is half made. Bound
    through /proc/self/fd/DIR/NAME: a socket path is limited to 107 bytes, a base is not."""
    folder, name = os.path.split(path)
    tmp = f"{name}.{os.getpid()}"
    dirfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dirfd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(f"/proc/self/fd/{dirfd}/{tmp}")
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600, dir_fd=dirfd)
        listener.listen(128)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    finally:
        os.close(dirfd)
    return listener


def configure_logging(base: str, engine: str, debug: bool) -> None:
    """The helper's own log file (helper-<hash>.log, 0600) gets every record; a session's
    client gets its own session's (see _SessionHandler)."""
    path = thin.paths(base, engine)[0][: -len(".sock")] + ".log"
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > LOG_CAP:
            os.truncate(path, 0)
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    root = logging.getLogger("jupyter_docker_kernel")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        file_handler: logging.Handler = logging.StreamHandler(open(fd, "a", buffering=1))  # noqa: SIM115
    except OSError:
        file_handler = logging.StreamHandler(sys.stderr)
    file_handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(threadName)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
        )
    )
    session_handler = _SessionHandler()
    session_handler.setFormatter(formatter)
    file_handler.setLevel(logging.DEBUG if debug else logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(session_handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    global _LEVEL
    _LEVEL = root.level


#: The level the helper was started with; DEBUG while a session asked for --debug.
_LEVEL = logging.INFO
_DEBUG_SESSIONS = [0]


def _debug_session(delta: int) -> None:
    """Count sessions started with --debug (on the loop thread): only while there is one
    do DEBUG records get made at all (the relay's traffic lines are DEBUG)."""
    _DEBUG_SESSIONS[0] += delta
    level = logging.DEBUG if _DEBUG_SESSIONS[0] > 0 else _LEVEL
    logging.getLogger("jupyter_docker_kernel").setLevel(level)


USAGE = (
    "usage: python -I -m jupyter_docker_kernel.helper --base DIR --engine KEY "
    "[--idle SECONDS] [--runner MODULE:NAME] [--janitor MODULE:NAME]\n"
    "Started by a kernel's launcher when no helper serves this user and engine yet."
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the helper process (spawned detached by thin.connect_or_spawn)."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {"--base": "", "--engine": "", "--idle": os.environ.get(IDLE_ENV, str(IDLE_SECONDS))}
    hosting = "jupyter_docker_kernel.hosting"
    opts |= {
        "--runner": f"{hosting}:run_kernel",
        "--janitor": "jupyter_docker_kernel.reaper:sweep_after",
    }
    while args:
        name = args.pop(0)
        if name not in opts or not args:
            print(f"{USAGE}\nerror: unexpected argument {name!r}", file=sys.stderr)
            return 2
        opts[name] = args.pop(0)
    base, engine = opts["--base"], opts["--engine"]
    if not base:
        print(f"{USAGE}\nerror: --base is required", file=sys.stderr)
        return 2
    configure_logging(base, engine, bool(os.environ.get("JUPYTER_DOCKER_KERNEL_DEBUG")))
    use_engine(engine)
    try:
        runner, janitor = load(opts["--runner"]), load(opts["--janitor"])
        path = thin.paths(base, engine)[0]
        listener = bind(path)
    except (ImportError, AttributeError, OSError) as exc:
        log.error("the helper could not start: %s", exc)
        return 1
    finally:
        # What the runner needs is imported (without ssl, OpenSSL's hashlib, bz2, lzma);
        # from here on an import of those loads them (a Kubernetes client's ssl).
        _lean.release(_lean.MARKED)
    helper = Helper(listener, path, engine, runner, janitor, float(opts["--idle"]))
    asyncio.run(helper.serve())
    # Runner threads still stopping their kernels after STOP_WAIT: their lifelines close
    # with this process, and the engine side ends those kernels.
    return 0


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy of it: a runner that raises
    # jupyter_docker_kernel.helper.RefusedError must meet the same class here.
    from jupyter_docker_kernel import helper

    sys.exit(helper.main())
