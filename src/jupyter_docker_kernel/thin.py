"""The argv launcher's thin client of the resident helper (issue 17): one request, then wait.

A kernel.json argv process that only connects to the user's resident helper
(`helper.py`), sends one request line, forwards SIGINT/SIGTERM/SIGHUP and exits with the
kernel's exit code. It imports nothing beyond what the interpreter has loaded at start but
the C modules `_socket` and `_signal`: `socket` and `signal` would pull in `enum` and
`selectors` (5 ms), and `json` pulls in `re` (8 ms), which together would double the cost
of a `python -I` start. So the request line is encoded by `_dumps` here, and the helper
checks what the client could only guess cheaply (the engine address, `engine_key`). The
wire protocol is described in helper.py.

Who calls what:

- `main(argv)` is what the launcher's entry calls first, with its own argv: the kernel's
  exit code, or FALLBACK (None) for "run the in-process launcher as before".
- `run(request, base)` is main's second half. It returns the kernel's
  exit code, or `FALLBACK` (None) when no helper could be reached or started (or
  JUPYTER_DOCKER_KERNEL_NO_HELPER=1): the caller then runs the kernel in-process as today.
- `connect_or_spawn(base, engine)` connects to the helper for this engine address, starting
  it first when nobody listens (under a lock file, so racing clients start one helper).
- `listen_early(connection_file)` binds the connection file's tcp endpoints first thing, and
  run() hands the listening sockets to the helper with the request (SCM_RIGHTS): the
  Jupyter client connects right after it started us, and a connection refused then is
  retried by its ZeroMQ only 100-200 ms later (reconnect_ivl plus jitter), which was most
  of a pooled start; accepted into our backlog, it waits for the relay instead. (From the
  second start on, the helper has usually bound them already when the client wrote the
  file, early_listen.py; our binds then fail and nothing is sent.)
- `register_janitor(base, engine, pid, start)`: a process keeps one connection open for
  its lifetime, and the helper sweeps what it left behind when the connection closes.
  The provisioner used it until issue 17's decision (b); it starts no helper now
  (provisioner.ensure_janitor sweeps at a start instead), so nothing in the package
  registers any more; the helper still serves such clients.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; `signal` costs enum
import _socket
import os
import sys

from jupyter_docker_kernel import __version__

#: Bumped when the bytes on the wire change; a helper that speaks another one retires.
PROTOCOL = 1
#: Set to 1: never use the helper (the launcher runs the kernel in its own process).
NO_HELPER_ENV = "JUPYTER_DOCKER_KERNEL_NO_HELPER"
#: Unless set to 0 (in the client's environment, so in its request's env), a helper hands a
#: local engine's kernel over to the compiled client that asked ("handover": true), which
#: then relays and watches by itself while the helper may exit (issue 17; docs/design/
#: issue17/c-relay.md, "Build plan"). On by default since the hostile suites and the whole
#: suite pass with it; 0 keeps every kernel relayed by the helper (the path before).
HANDOVER_ENV = "JUPYTER_DOCKER_KERNEL_HANDOVER"
#: What run() returns when the caller must run the kernel in-process instead.
FALLBACK = None
#: The exit code when the helper went away in the middle of a session (killed, crashed).
LOST_EXIT = 1
#: How long a client waits for a helper it started to listen (the design's 2 s).
SPAWN_WAIT = 2.0
#: Environment variables a request (kernel or janitor) carries to the helper, which was
#: started by whichever client came first and so must not use its own environment for a
#: kernel, its pool refill or its sweep: names with these prefixes, and these names exactly.
#: What picks and configures the engine: JUPYTER_DOCKER_KERNEL_ENGINE, DOCKER_HOST, and
#: what the helper's key leaves out: DOCKER_CONTEXT, DOCKER_CONFIG (contexts, credential
#: helpers, the proxies `docker run` puts into containers), DOCKER_CERT_PATH,
#: CONTAINER_HOST (Podman); the CLI's PATH and HOME (~/.docker, ~/.ssh).
#: KUBE: a --kubernetes kernel's KUBECONFIG (and the in-cluster KUBERNETES_SERVICE_*).
ENV_PREFIXES = ("JUPYTER", "JPY_", "DOCKER_", "CONTAINER_", "CONTAINERS_", "KUBE")
#: SSH_AUTH_SOCK: an ssh:// DOCKER_HOST's CLI asks the client's agent. XDG_RUNTIME_DIR:
#: Podman's rootless socket. The runtime base (XDG_RUNTIME_DIR, TMPDIR) is not taken from
#: a request: it names the helper's socket, so a client with another base has its own.
ENV_NAMES = (
    *("PATH", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "TMPDIR"),
    *("SSH_AUTH_SOCK", "LANG", "LC_ALL"),
)
#: Signals forwarded to the helper, each as one byte holding the signal number.
FORWARDED: tuple[int, ...] = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)


def handover_on(value: str | None) -> bool:
    """Whether HANDOVER_ENV's value (None: unset) leaves the hand-over on: anything but "0".
    Called by helper.Control.wants_handover; thin_client.c reads the variable the same way."""
    return value != "0"


def engine_key(settings_text: str = "", environ: dict[str, str] | None = None) -> str:
    """The engine address a kernel with these settings (raw JSON) talks to: the helper is
    one per user and engine address, so this names its socket. "" settings: the
    environment's engine (a Jupyter server registering as a janitor).

    The settings' engine_host is found by a scan, not json (see the module doc): the
    helper computes this again with json from the same text and refuses a mismatch, so a
    wrong guess costs a fallback to the in-process launcher, never the wrong engine.
    """
    env = os.environ if environ is None else environ
    host = engine_host(settings_text) if settings_text else ""
    command = env.get("JUPYTER_DOCKER_KERNEL_ENGINE", "docker")
    return f"{command} {host or env.get('DOCKER_HOST', '')}"


def engine_host(settings_text: str) -> str:
    """The top-level "engine_host" string of the settings JSON text, "" when absent or
    null (a scan for `"engine_host" : "..."`; its values are DOCKER_HOST addresses, which
    have no quotes or backslashes, so the first closing quote ends it)."""
    rest = _after_key(settings_text, "engine_host")
    if not rest.startswith('"'):
        return ""  # absent or null
    end = rest.find('"', 1)
    return rest[1:end] if end > 0 else ""


def _after_key(text: str, key: str) -> str:
    """What follows `"key" :` in JSON text (found by a scan, see engine_host), "" if the
    key is absent."""
    quoted = f'"{key}"'
    at = text.find(quoted)
    while at > 0 and text[at - 1] == "\\":  # inside another string: look on
        at = text.find(quoted, at + 1)
    if at < 0:
        return ""
    rest = text[at + len(quoted) :].lstrip()
    return rest[1:].lstrip() if rest.startswith(":") else ""


def _dumps(value: object) -> str:
    """JSON text of a request: dicts with str keys, lists, str, int, bool, None (json's
    output for them, byte for byte apart from non-ASCII, which stays UTF-8)."""
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            if ch == '"' or ch == "\\":
                out.append("\\" + ch)
            elif ch < " " or ch == "\x7f":
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_dumps(str(k))}: {_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dumps(v) for v in value) + "]"
    raise TypeError(f"a request holds no {type(value).__name__}")


#: The names of the helper's files in the runtime base (socket, lock, log) start so.
HELPER_PREFIX = "helper-"
#: Where this package is installed: part of the helper's name, so that two installs of one
#: version (two venvs, two checkouts under test) never run each other's code.
INSTALL = os.path.dirname(__file__)


def socket_name(engine: str) -> str:
    """`helper-<hash>.sock`: a fixed-length name per engine address and install. The
    request repeats the address, so a hash collision is refused by the helper, not served
    by the wrong engine."""
    digest = 0xCBF29CE484222325  # FNV-1a, 64 bit: no hashlib/zlib import for one name
    for byte in f"{engine}\0{INSTALL}".encode():
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{HELPER_PREFIX}{digest:016x}.sock"


def paths(base: str, engine: str) -> tuple[str, str]:
    """(socket path, lock file path) of the helper for `engine` in the runtime base."""
    sock = os.path.join(base, socket_name(engine))
    return sock, sock[: -len(".sock")] + ".lock"


def private_base() -> str | None:
    """The runtime base dir as rundir.runtime_base() finds it in the usual case (made
    0700 here when missing), or None when that dir is not ours and private: then the
    caller falls back to the in-process launcher, which knows the fallback dirs."""
    uid = os.getuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        base = os.path.join(xdg, "jupyter-docker-kernel")
    else:
        tmp = os.environ.get("TMPDIR") or os.environ.get("TEMP") or os.environ.get("TMP")
        base = os.path.join(tmp or "/tmp", f"jupyter-docker-kernel-{uid}")  # noqa: S108
    try:  # noqa: SIM105 - contextlib is one more import on every kernel start
        os.mkdir(base, 0o700)
    except OSError:
        pass  # there already (ours or not: checked next), or cannot be made
    try:
        st = os.lstat(base)
    except OSError:
        return None
    private = (st.st_mode & 0o170777) == 0o040700 and st.st_uid == uid  # a dir, 0700
    return base if private else None


def spawn_argv(base: str, engine: str) -> list[str]:
    """argv of the helper process, isolated like the launcher that starts it (see
    hostpython.module_argv, which this mirrors without importing subprocess)."""
    args = ["--base", base, "--engine", engine]
    if sys.flags.isolated:
        return [sys.executable, "-I", "-m", "jupyter_docker_kernel.helper", *args]
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if p]; import runpy; "
        "runpy.run_module('jupyter_docker_kernel.helper', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code, *args]


def spawn_detached(argv: list[str]) -> None:
    """Start argv in a new session, fully detached (double fork: no zombie here, no
    controlling terminal there), with stdio on /dev/null and no inherited descriptors (the
    lock file's among them: the helper must not hold the spawn lock)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)
            os.chdir("/")
            os.umask(0o077)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("JPY_") and k != "JUPYTER_DOCKER_KERNEL_SETTINGS"
            }
            os.execve(argv[0], argv, env)  # noqa: S606 - our own argv, no shell wanted
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def _peer_uid(sock: _socket.socket) -> int:
    """The uid of the process at the other end (Linux SO_PEERCRED: pid, uid, gid)."""
    if not hasattr(_socket, "SO_PEERCRED"):
        return os.getuid()  # no such check here: the 0700 base dir is the only guard
    data = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(data[4:8], sys.byteorder)


def _connect(path: str) -> _socket.socket | None:
    """Connect through /proc/self/fd: a socket path is limited to 107 bytes and a runtime
    base under a long TMPDIR can exceed that; the opened inode is also not a symlink."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(f"/proc/self/fd/{fd}")
    except OSError:
        sock.close()
        return None
    finally:
        os.close(fd)
    if _peer_uid(sock) != os.getuid():  # the base is 0700 and ours: only root could
        sock.close()
        return None
    return sock


def connect_or_spawn(
    base: str, engine: str, argv: list[str] | None = None, wait: float = SPAWN_WAIT
) -> _socket.socket | None:
    """A connection to the helper for `engine`, started (detached) when nobody listens.

    Clients that find no helper take an exclusive flock on the lock file, connect again
    (another client may just have started one) and only then spawn, so racing clients
    start one helper. The lock is held until the new helper answers or `wait` seconds
    pass. None: no helper could be reached; the caller falls back to running in-process.
    """
    path, lock = paths(base, engine)
    sock = _connect(path)
    if sock is not None:
        return sock
    import fcntl  # only on the slow path: a C module, but why pay it on every start
    import time

    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        sock = _connect(path)
        if sock is not None:
            return sock
        spawn_detached(argv or spawn_argv(base, engine))
        deadline = time.monotonic() + wait
        delay = 0.002
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            sock = _connect(path)
            if sock is not None:
                return sock
        return None
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the flock


def client_env() -> dict[str, str]:
    """The environment a request carries (ENV_PREFIXES, ENV_NAMES): what the helper uses
    for this client's engine CLI calls, pool refills and janitor sweep, never its own."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    env.pop("JUPYTER_DOCKER_KERNEL_SETTINGS", None)  # a kernel's is `settings`, sent once
    return env


def request_for(
    settings: str,
    connection_file: str,
    *,
    debug: bool = False,
    kind: str = "kernel",
    handover: bool = False,
) -> dict[str, object]:
    """The one JSON line a kernel session starts with (see helper.py's protocol).
    handover: the compiled client's ask to be handed the session (HANDOVER_ENV not 0 in
    its environment), as its last field; thin_client.c writes the same bytes."""
    request: dict[str, object] = {
        "v": PROTOCOL,
        "version": __version__,
        "kind": kind,
        "engine": engine_key(settings),
        "settings": settings,
        "connection_file": os.path.abspath(connection_file) if connection_file else "",
        "cwd": os.getcwd(),
        "client_pid": os.getppid(),
        "env": client_env(),
        "debug": debug,
    }
    if handover:
        request["handover"] = True
    return request


#: The channels in the order of the kernel's socket numbers (endpoints.CHANNELS, which
#: is not imported here: endpoints imports socket and dataclasses).
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
#: The longest connection file listen_early reads (jupyter_client's are about 300 bytes).
MAX_CONNECTION_FILE = 1 << 16


def endpoints_of(text: str) -> tuple[str, list[int]] | None:
    """(ip, the five ports in CHANNELS order) of a connection file's JSON text whose
    transport is tcp and whose ip is a numeric address; None for anything else (ipc, a
    host name, a value the scan cannot read): then the helper binds as it always did. A
    scan, not json (see the module doc); the helper checks what it is handed
    (endpoints.adopt_listening), so a wrong reading costs only the early start."""
    transport = _after_key(text, "transport")
    ip = _after_key(text, "ip")
    if not transport.startswith('"tcp"') or not ip.startswith('"'):
        return None
    ip = ip[1 : ip.find('"', 1)]
    if not ip or not all(ch in "0123456789abcdefABCDEF.:" for ch in ip):
        return None  # a name, or a value with escapes: resolving it is not for this process
    ports = []
    for channel in CHANNELS:
        digits = _after_key(text, f"{channel}_port")
        end = 0
        while end < len(digits) and digits[end].isdigit():
            end += 1
        if not 0 < end <= 5 or not 0 < int(digits[:end]) < 65536:
            return None
        ports.append(int(digits[:end]))
    return ip, ports


def listen_early(connection_file: str) -> dict[str, _socket.socket]:
    """Sockets listening on the connection file's tcp endpoints (see endpoints_of), by
    channel, bound as endpoints.listen binds them; a channel whose address is taken (a
    restart whose previous relay has not let go yet) is left out: the helper binds it,
    retrying. Empty when the file cannot be read or is not tcp on a numeric address."""
    try:
        fd = os.open(connection_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        text = os.read(fd, MAX_CONNECTION_FILE).decode(errors="replace")
    except OSError:
        return {}
    finally:
        os.close(fd)
    found = endpoints_of(text)
    if found is None:
        return {}
    ip, ports = found
    family = _socket.AF_INET6 if ":" in ip else _socket.AF_INET
    listening = {}
    for channel, port in zip(CHANNELS, ports, strict=True):
        # IPPROTO_TCP, not 0, as endpoints.listen: asyncio turns Nagle off only for that.
        sock = _socket.socket(family, _socket.SOCK_STREAM, _socket.IPPROTO_TCP)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(64)
        except OSError:
            sock.close()
            continue
        listening[channel] = sock
    return listening


def _send_request(
    sock: _socket.socket, request: dict[str, object], fds: list[int] | None = None
) -> None:
    """The request line, with `fds` attached to its first byte (SCM_RIGHTS)."""
    data = (_dumps(request) + "\n").encode()
    if fds:
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        data = data[sent:]
    sock.sendall(data)


def _first_line(
    sock: _socket.socket, request: dict[str, object], fds: list[int] | None = None
) -> tuple[bytes, bytes]:
    """Send the request (with `fds`); return the helper's first line and what followed."""
    _send_request(sock, request, fds)
    buf = b""
    while b"\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return b"", b""
        buf += data
    line, _, rest = buf.partition(b"\n")
    return line, rest


def run(
    request: dict[str, object], base: str | None = None, argv: list[str] | None = None
) -> int | None:
    """Run one kernel session through the helper and return its exit code, or FALLBACK
    (None) when the caller must run the kernel in-process: helper disabled, not
    startable, refusing (another protocol), or the runtime base is not the usual one.

    Before the helper accepted, nothing of the kernel exists, so falling back is safe.
    After it accepted, this returns only with the session's exit code, or LOST_EXIT with
    a message on stderr when the helper went away (its kernel ends with it: the
    engine-side lifeline does not depend on the helper).
    """
    if os.environ.get(NO_HELPER_ENV) == "1":
        return FALLBACK
    base = base or private_base()
    if base is None:
        return FALLBACK
    # As in the in-process launcher: until a kernel exists, an interrupt has nothing to
    # reach and must not kill us halfway through starting one (_session forwards it).
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # First of all, before the helper is even reached: the client is connecting already.
    listening = listen_early(str(request.get("connection_file") or ""))
    if listening:
        request = {**request, "listening": list(listening)}
    try:
        fds = [sock.fileno() for sock in listening.values()]
        accepted = _accepted(base, str(request["engine"]), request, argv, fds)
    finally:
        # The helper has its own copies now (or none, and binds itself; or we fall back).
        for sock in listening.values():
            sock.close()
    if accepted is None:
        return FALLBACK  # no helper, or refused for good (engine or uid): run in-process
    sock, line, rest = accepted
    return _session(sock, rest, line[2:].decode(errors="replace"))


def _accepted(
    base: str,
    engine: str,
    request: dict[str, object],
    argv: list[str] | None,
    fds: list[int] | None = None,
) -> tuple[_socket.socket, bytes, bytes] | None:
    """Send the request (with `fds`, the request's "listening" sockets) to the helper
    (spawned if need be) until it accepts: (socket, its "A" line, what came after it), or
    None when no helper can start or it refused."""
    for _attempt in range(3):
        sock = connect_or_spawn(base, engine, argv)
        if sock is None:
            return None
        try:
            line, rest = _first_line(sock, request, fds)
        except OSError:
            line, rest = b"", b""
        if line.startswith(b"A"):
            return sock, line, rest
        sock.close()
        # EOF before an answer: the helper was retiring as we connected. "R retiring":
        # it speaks another version and has stopped listening. Both: connect again.
        if line and line != b"R retiring":
            return None  # refused for good (engine or uid)
    return None


def _session(sock: _socket.socket, buf: bytes, helper_pid: str) -> int:
    """Forward signals and the helper's stderr lines until its exit code line arrives."""
    # The C-level signal handler writes each signal's number to the wakeup fd, in the
    # order they arrive, even while we block in recv: exactly our one-byte messages.
    # The fd must be non-blocking; a timeout makes recv wait with poll() instead.
    sock.settimeout(86400.0)
    _signal.set_wakeup_fd(sock.fileno(), warn_on_full_buffer=False)
    for signum in FORWARDED:
        _signal.signal(signum, _ignore)
    err = sys.stderr
    while True:
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            if line.startswith(b"X"):
                code = line[2:].strip()
                return int(code) if code.lstrip(b"-").isdigit() else LOST_EXIT
            if line.startswith(b"E"):
                try:
                    err.write(line[2:].decode(errors="replace") + "\n")
                    err.flush()
                except (OSError, ValueError):
                    pass  # nobody reads our stderr any more: the kernel still runs
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            data = b""
        if not data:
            err.write(
                f"jupyter-docker-kernel: the resident helper (pid {helper_pid}) went away "
                "before this kernel ended; its container ends with it. Restart the kernel; "
                "the helper's log is helper-*.log in the runtime directory "
                "(`jupyter-docker-kernel doctor` shows where).\n"
            )
            err.flush()
            return LOST_EXIT
        buf += data


def _ignore(signum: int, frame: object) -> None:
    """A Python-level handler must exist for the wakeup fd to receive the signal."""


def register_janitor(
    base: str, engine: str, pid: int, start: str, argv: list[str] | None = None
) -> _socket.socket | None:
    """Ask the helper to sweep after process `pid` (started at `start`, as
    rundir.process_start_time spells it) once the returned connection closes: keep it open
    for the process's lifetime (a Jupyter server calls this once). None: no helper."""
    if os.environ.get(NO_HELPER_ENV) == "1":
        return None
    request = {
        "v": PROTOCOL,
        "version": __version__,
        "kind": "janitor",
        "engine": engine,
        "pid": pid,
        "start": start,
        "env": client_env(),
    }
    accepted = _accepted(base, engine, request, argv)
    return accepted[0] if accepted is not None else None


def parse_argv(argv: list[str]) -> tuple[str, str, bool] | None:
    """(settings JSON text, connection file, debug) from the launcher's argv, for the
    usual forms only: -f FILE / --connection-file[=]FILE, --debug, --settings[=]JSON,
    extra positional arguments (ignored, as the launcher does). None for anything else
    (--help, an unknown option, a missing value): the full launcher parses it and prints
    its usage. The settings may come from $JUPYTER_DOCKER_KERNEL_SETTINGS, which is left
    in place (the fallback launcher reads it; request_for never sends it twice)."""
    settings = connection = ""
    debug = False
    rest = list(argv)
    while rest:
        opt = rest.pop(0)
        name, eq, value = opt.partition("=")
        if name in ("--settings", "-f", "--connection-file"):
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            if name == "--settings":
                settings = value
            else:
                connection = value
        elif opt == "--debug":
            debug = True
        elif opt.startswith("-"):
            return None
    settings = settings or os.environ.get("JUPYTER_DOCKER_KERNEL_SETTINGS", "")
    if not settings or not connection:
        return None
    return settings, connection, debug or bool(os.environ.get("JUPYTER_DOCKER_KERNEL_DEBUG"))


def main(argv: list[str]) -> int | None:
    """The launcher's first step: run this kernel through the helper and return its exit
    code, or FALLBACK (None): then the caller runs the in-process launcher with the same
    argv and environment (nothing was started, nothing consumed)."""
    parsed = parse_argv(argv)
    if parsed is None or os.environ.get(NO_HELPER_ENV) == "1":
        return FALLBACK
    settings, connection, debug = parsed
    try:
        request = request_for(settings, connection, debug=debug)
    except OSError:  # no cwd (removed under us): the launcher says what is wrong
        return FALLBACK
    return run(request)
