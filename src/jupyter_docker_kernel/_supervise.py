"""In-container supervisor: runs the kernel, forwards signals, dies with the host launcher.

This file is bind-mounted read-only into every kernel container and run by the image's
own Python as the only child of the container's init (tini). The host never imports it.
It keeps to the standard library and Python 3.6 syntax, because it runs in users' images.

It ends the kernel (and so the container, since tini exits with its child) when:
- its stdin reaches EOF: the host launcher is gone, even by SIGKILL (the engine closes a
  `docker run -i` container's stdin when its client disconnects);
- SIGTERM/SIGHUP arrive (`docker stop`, the launcher's terminate);
- the maximum lifetime passes (it holds even with the whole host side gone).
With --bridge PORT=PATH (a kernel that binds only tcp), it listens on the unix socket PATH
in the runtime dir and splices each connection to 127.0.0.1:PORT, the kernel's port on
the container's own loopback: the host side sees the same unix sockets as with ipc.
SIGINT and SIGQUIT/SIGUSR* are forwarded to the kernel's process group, as a local
jupyter_client does with killpg. On the kernel's exit it prints one line saying why
(exit code, signal, out of memory, pids limit), which reaches the launcher's log.

With --receive-workdir PATH (--copy-workdir), it first unpacks the notebook's files,
streamed by the host launcher (workcopy.py), into PATH, a capped tmpfs: from its stdin, or
after the claim line on a warm container's claim socket. The kernel starts after that.

With --pool-wait SOCKET (a warm pooled container) it imports ipykernel and forks the
kernel ahead of time; the kernel initialises (binds its sockets at --pool-ip, builds its
shell) with a placeholder key, then blocks until the one launcher that claims the
container connects to SOCKET: that connection carries the real key and the cwd, which the
kernel takes before it starts serving, and is from then on the lifeline. So what is left
to pay at a claim is handing over a few bytes. An unclaimed container ends after
--pool-ttl seconds, or as soon as its kernel dies.

With --lifeline PATH [--lifeline-wait SECONDS] (a cold container started detached, its
lifeline held by whoever started it through the engine's API), it binds the unix socket
PATH (0600, or 0660 with --umask 0007) before starting the kernel and accepts exactly one
connection within SECONDS (default 4) of its own start. The bytes on that connection are
the pooled claim's: one line of JSON (b"{}\n" or b"\n" at least; a "cwd" key, if any,
is the kernel's working directory), then with --receive-workdir the work dir's copy
(workcopy.py's stream), then nothing the supervisor reads: from then on the connection
is the lifeline, and the supervisor's and the kernel's stdout/stderr come back over it
(the holder must read them). EOF on it ends the kernel (TERM, KILL after GRACE_SECONDS),
and so the container. Nobody connecting in time, or EOF before the claim line, ends the
container with exit code NO_LIFELINE_EXIT, the kernel never started. The socket is
unlinked once accepted: nobody else can connect. stdin is not read then.

With --site DIR (the directory holding _usage.py as sitecustomize.py), the kernel's
command gets DIR first on PYTHONPATH, so ipykernel's usage_reply tells the container's
limits (see _usage.py); a pooled kernel, forked from us, installs that hook directly.

With --connection-copy SRC=DST (a kernel pod: kube_channels.supervisor_args) the
supervisor copies the connection file SRC (a read-only mount: the pod's Secret) to DST,
a new 0600 file in a 0700 directory on the container's tmpfs, before the kernel starts;
the kernel's command names DST. ipykernel 7 rewrites a connection file that carries
Curve keys at every start (it compares the file's text keys with the bytes it holds, so
they never match) and exits on a read-only one: kube_channels.py says more.

With --signal-port PORT=FILE (a kernel pod: kube_channels.supervisor_args; off unless
given) the supervisor serves signal requests for the kernel on TCP PORT, so a server whose
Role has no pods/exec can still interrupt by signal. FILE is the kernel's connection file:
the socket is a CurveZMQ server with the kernel's own key pair (a client must know the
kernel's public key; a plaintext or wrong-key client completes no handshake) bound at the
file's "ip", and a request must carry an HMAC of the kernel's key over a nonce this
supervisor issued for it (SignalGate: one use each, so a request replayed is refused). An
accepted request sends its signal (SIGNAL_NAMES) to the kernel's process group, as the
local engine's SIGINT does through us. It needs pyzmq with CURVE, as the kernel's Curve
channels do; without it the port stays closed and that is said. The host imports this
module only for SignalGate and signal_mac (kube_channels, tests).
"""

import collections
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

PREFIX = "jupyter-docker-kernel:"
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
#: The kernel's channels, numbered 1..5 in the socket names (as the launcher numbers them).
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
GRACE_SECONDS = 2.0
#: --lifeline-wait's default: how long after its start the supervisor waits for the holder.
LIFELINE_WAIT_SECONDS = 4.0
#: The exit code when nobody held the lifeline (no connection in time, or EOF before the
#: claim line): the kernel never ran. sysexits' EX_TEMPFAIL: starting again may work.
NO_LIFELINE_EXIT = 75
#: How long a bridged connection waits for the kernel to listen on its tcp port.
BRIDGE_WAIT_SECONDS = 300.0


#: The signal requests --signal-port accepts, by the names Container.signal uses.
SIGNAL_NAMES = {"INT": signal.SIGINT, "QUIT": signal.SIGQUIT, "USR1": signal.SIGUSR1,
                "USR2": signal.SIGUSR2}  # fmt: skip
#: What the MAC of a signal request covers first: a MAC made for anything else (a Jupyter
#: message signed with the same key) is never a signal request's.
SIGNAL_PROTOCOL = b"jupyter-docker-kernel-signal/1"
#: Nonces a gate holds at once (the oldest goes first) and how long one stays good.
SIGNAL_NONCES = 16
SIGNAL_NONCE_SECONDS = 30.0


def signal_mac(key: bytes, name: bytes, nonce: bytes) -> bytes:
    """The hex HMAC-SHA256, under the kernel's key, of a request for signal `name` with
    the supervisor's `nonce` (kube_channels.send_signal makes it, SignalGate checks it)."""
    message = b"\0".join((SIGNAL_PROTOCOL, name, nonce))
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode()


class SignalGate:
    """The check of --signal-port's requests (pure: no sockets). Two messages:

    [b"challenge"] -> [b"nonce", NONCE]: a fresh nonce, good for one request within
        SIGNAL_NONCE_SECONDS;
    [b"signal", NAME, NONCE, MAC] -> [b"ok"] when NAME is one of SIGNAL_NAMES, NONCE was
        issued here and not used or expired, and MAC is signal_mac(key, NAME, NONCE);
        else [b"refused"]. The nonce is spent either way: one guess per challenge.
    check() returns (reply frames, the signal to send or None, why it was refused or "").
    """

    def __init__(self, key: bytes, clock: "Callable[[], float]" = time.monotonic) -> None:
        self.key = key
        self.clock = clock
        self.nonces = collections.OrderedDict()  # type: collections.OrderedDict[bytes, float]

    def check(self, frames: "List[bytes]") -> "Tuple[List[bytes], Optional[int], str]":
        if frames == [b"challenge"]:
            nonce = os.urandom(16).hex().encode()
            self.nonces[nonce] = self.clock()
            while len(self.nonces) > SIGNAL_NONCES:
                self.nonces.popitem(last=False)
            return [b"nonce", nonce], None, ""
        if len(frames) != 4 or frames[0] != b"signal":
            return [b"refused"], None, "not a signal request"
        _, name, nonce, mac = frames
        issued = self.nonces.pop(nonce, None)
        if issued is None or self.clock() - issued > SIGNAL_NONCE_SECONDS:
            return [b"refused"], None, "its nonce was not issued, used already, or expired"
        if not self.key or not hmac.compare_digest(mac, signal_mac(self.key, name, nonce)):
            return [b"refused"], None, "its signature is not the kernel key's"
        number = SIGNAL_NAMES.get(name.decode("ascii", "replace"))
        if number is None:
            return [b"refused"], None, "it names a signal that is not sent this way"
        return [b"ok"], number, ""


def serve_signals(
    port: int, path: str, send: "Callable[[int], None]", running: "Callable[[], bool]"
) -> None:
    """--signal-port's loop (a thread of the supervisor): a CurveZMQ ROUTER on the
    connection file's ip and `port`, with the kernel's key pair; each accepted request
    calls send(signal). Returns when running() is False or it cannot serve (said why)."""
    try:
        import zmq  # the kernel's own pyzmq: imported only with --signal-port

        with open(path) as fh:
            info = json.load(fh)
        public = str(info.get("curve_publickey") or "").encode()
        secret = str(info.get("curve_secretkey") or "").encode()
        key = str(info.get("key") or "").encode()
        if not public or not secret or not key:
            say("--signal-port needs the connection file's Curve keys and HMAC key; not serving")
            return
        context = zmq.Context(1)
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.maxmsgsize = 1024  # a request is ~130 bytes: drop a peer that sends more
        sock.curve_server = True
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.bind(f"tcp://{info.get('ip') or '0.0.0.0'}:{port}")  # noqa: S104 - the pod's own
    except Exception as exc:  # no pyzmq, no CURVE, the port taken: the kernel runs anyway
        say(f"signal requests on port {port} are off: {exc}")
        return
    gate = SignalGate(key)
    refusals = 0
    while running():
        try:
            if not sock.poll(500):
                continue
            frames = sock.recv_multipart()
        except zmq.ZMQError:
            continue
        reply, number, why = gate.check(frames[1:])
        if number is not None:
            send(number)
        elif why:
            refusals += 1
            if refusals <= 3:  # said, but a peer cannot fill the log with it
                say(f"refused a signal request on port {port}: {why}")
        with contextlib.suppress(zmq.ZMQError):
            sock.send_multipart([frames[0], *reply], zmq.NOBLOCK)
    sock.close(0)
    context.term()


#: workcopy.HEADER: kind, mode, mtime, data size, name size.
COPY_HEADER = struct.Struct("!cIdQI")
COPY_CHUNK = 1 << 20


class CopyError(Exception):
    """The work dir's copy could not be received; the kernel is not started."""


def read_exact(read: "Callable[[int], bytes]", size: int) -> bytes:
    """Exactly `size` bytes from `read` (a buffered reader's read); CopyError at EOF."""
    data = read(size) if size else b""
    if len(data) != size:
        raise CopyError("the host launcher's stream ended early")
    return data


def receive_tree(read: "Callable[[int], bytes]", root: str) -> int:
    """Unpack workcopy.send()'s stream into `root`; returns how many entries it made.

    Runs before any notebook code, as the kernel's uid. The host built the stream from
    lstat, but it is checked anyway: a name must be relative, without "." or "..", and its
    parent a directory made here, so nothing lands outside `root` or through a link.
    Files are created exclusively, without following links. Modes lose setuid, setgid and
    sticky bits (the tmpfs is nosuid too); directories get theirs last, so a read-only one
    is still filled first.
    """
    made = set([b""])
    dirs = []
    count = 0
    base = os.fsencode(root)
    while True:
        kind, mode, mtime, size, name_size = COPY_HEADER.unpack(read_exact(read, COPY_HEADER.size))
        if kind == b".":
            break
        name = read_exact(read, name_size)
        parts = name.split(b"/")
        if name.startswith(b"/") or any(p in (b"", b".", b"..") for p in parts):
            raise CopyError(f"refusing the entry {name!r}: not a plain relative name")
        if b"/".join(parts[:-1]) not in made:
            raise CopyError(f"refusing the entry {name!r}: its parent was not sent first")
        path = os.path.join(base, name)
        if kind == b"d":
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                # The engine made the --workdir (the notebook's dir, below a project root's
                # copy) in the fresh tmpfs before we ran; anything else there is refused.
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise
            made.add(name)
            dirs.append((path, mode & 0o777, mtime))
        elif kind == b"l":
            os.symlink(read_exact(read, size), path)
        elif kind == b"f":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                left = size
                while left:
                    view = memoryview(read_exact(read, min(COPY_CHUNK, left)))
                    left -= len(view)
                    while view:  # a full tmpfs: a short write, then ENOSPC
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, mode & 0o777)
            finally:
                os.close(fd)
            os.utime(path, (mtime, mtime))
        else:
            raise CopyError(f"unknown entry kind {kind!r}")
        count += 1
    for path, mode, mtime in reversed(dirs):
        os.chmod(path, mode | stat.S_IRUSR | stat.S_IXUSR)
        os.utime(path, (mtime, mtime))
    return count


def say(text: str) -> None:
    # stderr may be the lifeline, whose holder is gone (that is often why we speak).
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PREFIX} {text}\n")
        sys.stderr.flush()


def read_first(paths: List[str]) -> str:
    for path in paths:
        try:
            with open(path) as fh:
                return fh.read()
        except OSError:
            continue
    return ""


def cgroup_counter(paths: List[str], key: str) -> int:
    """A counter such as `oom_kill` or `max` from a cgroup events file (v1 or v2)."""
    for line in read_first(paths).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            try:
                return int(parts[1])
            except ValueError:
                return 0
    return 0


def oom_kills() -> int:
    return cgroup_counter(
        ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"], "oom_kill"
    )


def pids_max_hits() -> int:
    return cgroup_counter(["/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"], "max")


def memory_limit() -> str:
    text = read_first(
        ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    ).strip()
    if not text.isdigit() or int(text) > 1 << 60:
        return "unlimited"
    return f"{int(text) // (1 << 20)} MiB"


#: S_ISUID | S_ISGID. A kernel must not mint set-id files: in a mounted work dir the host
#: would see a setuid binary owned by the launching user that another local user can run.
SET_ID_BITS = 0o6000
AF_VSOCK = 40
SYS_SOCKET = 1  # socketcall's first argument for socket(); its other arguments are in memory


def _denials(
    set_id: "List[Tuple[int, int]]", socket_nr: int, io_uring: "Tuple[int, ...]"
) -> "List[Tuple[int, int, str, int]]":
    return (
        [(n, i, "bits", SET_ID_BITS) for n, i in set_id]
        + [(socket_nr, 0, "eq", AF_VSOCK)]
        + [(n, 0, "all", 0) for n in io_uring]
    )


#: What refuse_in_container() refuses, per machine: (AUDIT_ARCH_*, rules) per ABI, a rule
#: being (syscall number, argument index, test, value): EPERM when the argument has any of
#: the value's bits ("bits"), equals it ("eq"), or always ("all"). The set-id rules cover
#: every call that sets a file's mode (chmod, fchmod, fchmodat, fchmodat2, creat, open,
#: openat, mknod, mknodat); then socket(AF_VSOCK) and io_uring_setup/enter/register. An
#: x86_64 process can make i386 calls (int 0x80), so that ABI is covered too, and there
#: socketcall(SYS_SOCKET), whose family seccomp cannot read.
DENIALS = {
    "x86_64": [
        (0xC000003E, _denials(
            [(90, 1), (91, 1), (268, 2), (452, 2), (85, 1), (2, 2), (257, 3), (133, 1), (259, 2)],
            41, (425, 426, 427))),
        (0x40000003, [*_denials(
            [(15, 1), (94, 1), (306, 2), (452, 2), (8, 1), (5, 2), (295, 3), (14, 1), (297, 2)],
            359, (425, 426, 427)), (102, 0, "eq", SYS_SOCKET)]),
    ],
    "aarch64": [
        (0xC00000B7, _denials(
            [(52, 1), (53, 2), (452, 2), (56, 3), (33, 2)], 198, (425, 426, 427))),
    ],
}  # fmt: skip


def denial_filter(machine: str) -> bytes:
    """A classic-BPF seccomp program for DENIALS[machine]: EPERM for those, else allow.

    The engine's profile (seccomp.json) refuses the same and more under runc; this holds
    where it does not apply: gVisor ignores the OCI profile but honours filters its
    processes install, and a Podman service keeps its own default profile. Calls of other
    ABIs (none on these machines but the ones listed) pass.
    """
    import struct

    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JSET|K, RET|K
    allow, eperm = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO|EPERM

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    # struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 * i (low word first:
    # these ABIs are little-endian; modes and address families fit in it).
    prog = [op(ld, 0, 0, 4)]
    for audit_arch, rules in DENIALS[machine]:
        block = [op(ld, 0, 0, 0)]
        for number, index, test, value in rules:
            if test == "all":
                block += [op(jeq, 0, 1, number), op(ret, 0, 0, eperm)]
                continue
            check = jset if test == "bits" else jeq
            block += [
                op(jeq, 0, 4, number),
                op(ld, 0, 0, 16 + 8 * index),
                op(check, 0, 1, value),
                op(ret, 0, 0, eperm),
                op(ret, 0, 0, allow),
            ]
        block.append(op(ret, 0, 0, allow))
        prog += [op(jeq, 0, len(block), audit_arch), *block]  # another ABI: skip the block
    prog.append(op(ret, 0, 0, allow))
    return b"".join(prog)


def refuse_in_container() -> None:
    """Install denial_filter in this process; the kernel and its children inherit it.

    Supervisor.run calls it first. Failing is said, not fatal: under runc the engine's
    profile holds the same line.
    """
    machine = os.uname().machine
    if machine not in DENIALS:
        say(f"no in-container seccomp filter on {machine} (the engine's profile still applies)")
        return
    try:
        import ctypes

        program = denial_filter(machine)
        buf = ctypes.create_string_buffer(program, len(program))

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
        libc = ctypes.CDLL(None, use_errno=True)
        # PR_SET_NO_NEW_PRIVS (38) is a precondition (Docker's no-new-privileges set it
        # already); PR_SET_SECCOMP (22) with SECCOMP_MODE_FILTER (2).
        if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (ImportError, OSError, AttributeError) as exc:
        say(f"could not install the in-container seccomp filter: {exc}")


class Supervisor:
    def __init__(self, argv: List[str]) -> None:
        self.lifetime = 0.0
        self.cleanup_dir: Optional[str] = None
        self.umask: Optional[int] = None
        self.pool_socket: Optional[str] = None
        self.pool_ip = ""
        self.pool_ttl = 600.0
        self.claimed = False
        self.bridges: List[str] = []
        self.site_dir: Optional[str] = None
        self.receive_dir: Optional[str] = None
        #: The kernel's cwd when it is not the container's: the notebook's dir inside a
        #: project root's copy, which exists only once the copy is unpacked.
        self.chdir: Optional[str] = None
        self.only_sockets: List[str] = []
        #: --lifeline: the socket a cold, detached container's holder connects to.
        self.lifeline_path: Optional[str] = None
        self.lifeline_wait = LIFELINE_WAIT_SECONDS
        #: --receive-from: a file holding the copy's stream (a Kubernetes pod's Secret)
        #: instead of stdin, which stays the lifeline.
        self.receive_from: Optional[str] = None
        #: --rlimit NAME=N: limits the engine cannot set (a pod spec has no ulimits),
        #: soft = hard, set in the kernel's process before it runs.
        self.rlimits: List[Tuple[str, int]] = []
        #: --connection-copy: (the read-only connection file, its private writable copy).
        self.connection_copy: Optional[Tuple[str, str]] = None
        #: --signal-port: (the TCP port, the connection file with the keys).
        self.signal_port: Optional[Tuple[int, str]] = None
        while argv and argv[0] != "--":
            opt = argv.pop(0)
            if opt == "--lifetime":
                self.lifetime = float(argv.pop(0))
            elif opt == "--cleanup":
                self.cleanup_dir = argv.pop(0)
            elif opt == "--umask":
                self.umask = int(argv.pop(0), 8)
            elif opt == "--pool-wait":
                self.pool_socket = argv.pop(0)
            elif opt == "--pool-ip":
                self.pool_ip = argv.pop(0)
            elif opt == "--pool-ttl":
                self.pool_ttl = float(argv.pop(0))
            elif opt == "--bridge":
                self.bridges.append(argv.pop(0))
            elif opt == "--site":
                self.site_dir = argv.pop(0)
            elif opt == "--receive-workdir":
                self.receive_dir = argv.pop(0)
            elif opt == "--chdir":
                self.chdir = argv.pop(0)
            elif opt == "--only-sockets":
                self.only_sockets = argv.pop(0).split(",")
            elif opt == "--lifeline":
                self.lifeline_path = argv.pop(0)
            elif opt == "--lifeline-wait":
                self.lifeline_wait = float(argv.pop(0))
            elif opt == "--receive-from":
                self.receive_from = argv.pop(0)
            elif opt == "--rlimit":
                name, _, value = argv.pop(0).partition("=")
                self.rlimits.append((name, int(value)))
            elif opt == "--connection-copy":
                source, _, target = argv.pop(0).partition("=")
                if not source or not target:
                    say("--connection-copy takes SOURCE=TARGET")
                    sys.exit(2)
                self.connection_copy = (source, target)
            elif opt == "--signal-port":
                port, _, path = argv.pop(0).partition("=")
                if not port.isdigit() or not path:
                    say("--signal-port takes PORT=CONNECTION_FILE")
                    sys.exit(2)
                self.signal_port = (int(port), path)
            else:
                say(f"unknown supervisor option {opt!r}")
                sys.exit(2)
        if self.lifeline_path and self.pool_socket:
            say("--lifeline and --pool-wait exclude each other (a claim socket is a lifeline)")
            sys.exit(2)
        self.cmd = argv[1:]
        self.pid = 0
        self.returncode: Optional[int] = None
        self.lifeline: Optional[socket.socket] = None
        self.reason: Optional[str] = None
        self.started = time.time()
        self.oom_before = oom_kills()
        self.pids_before = pids_max_hits()

    def signal_group(self, sig: int) -> None:
        if not self.pid or self.returncode is not None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)

    def end(self, reason: str) -> None:
        """Stop the kernel: TERM to its group, KILL after a grace period."""
        if self.reason is None:
            self.reason = reason
        self.signal_group(signal.SIGTERM)

        def hard_kill() -> None:
            time.sleep(GRACE_SECONDS)
            self.signal_group(signal.SIGKILL)

        threading.Thread(target=hard_kill, daemon=True).start()

    def on_signal(self, signum: int, frame: object) -> None:
        if self.pool_socket and not self.claimed:
            # Waiting for a claim: leave accept() and end the warm container, unclaimed.
            if signum == signal.SIGALRM:
                self.reason = f"the pool's time of {self.pool_ttl:.0f} s ran out"
            elif signum == signal.SIGCHLD:
                self.reason = "the pre-started kernel ended"
            elif signum not in FORWARDED:
                self.reason = f"stopped by signal {signum}"
            else:
                return
            raise InterruptedError
        if signum in FORWARDED:
            self.signal_group(signum)
        elif signum == signal.SIGCHLD:
            pass  # wait_child() reaps it
        elif signum == signal.SIGALRM:
            self.reason = f"maximum lifetime of {self.lifetime:.0f} s reached"
            self.signal_group(signal.SIGKILL)
        elif not self.pid:
            self.reason = f"stopped by signal {signum}"
            raise InterruptedError
        else:
            self.end(f"stopped by signal {signum}")

    def watch_lifeline(self) -> None:
        """Block reading the lifeline (stdin, or the claim connection) until EOF."""
        try:
            if self.lifeline is not None:
                while self.lifeline.recv(4096):
                    pass
            else:
                while os.read(0, 4096):
                    pass
        except OSError:
            pass
        # EOF: the launcher (our only client) is gone; a kernel must not outlive it.
        self.end("the host launcher went away")

    def child_setup(self) -> None:
        """In the kernel's process, before it runs: own session, env, umask."""
        # Own session: the kernel leads its process group, as under a local launcher, so
        # message-mode interrupts and our killpg reach its subprocesses too. JPY_PARENT_PID:
        # ipykernel exits if we die, and skips its interactive banner, as under Jupyter.
        os.setsid()
        os.environ["JPY_PARENT_PID"] = str(os.getppid())
        if self.site_dir:
            # The kernel only (we set it after the fork): its Python imports our
            # sitecustomize, which makes usage_reply tell the container's limits.
            paths = [self.site_dir, os.environ.get("PYTHONPATH", "")]
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        if self.umask is not None:
            # A dedicated uid sharing the launcher's group: its sockets must be
            # group-accessible for the launcher to connect.
            os.umask(self.umask)
        if self.rlimits:
            import resource

            for name, value in self.rlimits:
                number = getattr(resource, "RLIMIT_" + name.upper())
                resource.setrlimit(number, (value, value))

    def start_command(self) -> int:
        """Start the kernel command as our child; returns 0, or an exit code on failure."""
        try:
            child = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, preexec_fn=self.child_setup, cwd=self.chdir
            )
        except OSError as exc:
            say(f"cannot start the kernel command {self.cmd[0]!r}: {exc}")
            return 127
        self.pid = child.pid
        return 0

    def wait_for_claim(self) -> int:
        """Pooled: fork the kernel and let it initialise, then wait for the claiming launcher."""
        assert self.pool_socket is not None
        # Paid now, while nobody waits: the forked kernel inherits these modules.
        import ipykernel.kernelapp  # noqa: F401

        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        claim_r, claim_w = os.pipe()
        ready_r, ready_w = os.pipe()
        # The kernel's own stdout/stderr: through us, so that after the claim they reach
        # the launcher over the lifeline (no `docker run` client is attached to us).
        out_r, out_w = os.pipe()
        signal.signal(signal.SIGCHLD, self.on_signal)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                server.close()
                os.close(claim_w)
                os.close(ready_r)
                os.close(out_r)
                os.dup2(out_w, 1)
                os.dup2(out_w, 2)
                os.close(out_w)
                install_usage_hook(self.site_dir)
                code = run_pooled_kernel(claim_r, ready_w, self.pool_ip, self.child_setup)
            finally:
                os._exit(code)
        self.pid = pid
        os.close(claim_r)
        os.close(ready_w)
        os.close(out_w)
        threading.Thread(target=copy_fd, args=(out_r, 1), daemon=True).start()
        try:
            signal.alarm(max(1, int(self.pool_ttl)))
            # The claim socket appears only once the kernel is ready: a claimer then
            # waits for nothing but the hand-over.
            ready = os.read(ready_r, 1)
            os.close(ready_r)
            if not ready:
                self.reason = "the pre-started kernel ended before it was ready"
                raise InterruptedError
            server.bind(self.pool_socket)
            server.listen(1)
            conn, _ = server.accept()
        except InterruptedError:
            os.close(claim_w)
            return self.unclaimed()
        finally:
            server.close()
        signal.alarm(0)
        self.claimed = True
        if self.reason:  # the pool's time ran out, or the kernel died, as we accepted
            conn.close()
            os.close(claim_w)
            return self.unclaimed()
        reader = conn.makefile("rb")
        line = reader.readline()
        self.lifeline = conn
        # What we say from now on goes to the launcher over the lifeline too.
        sys.stderr.flush()
        os.dup2(conn.fileno(), 1)
        os.dup2(conn.fileno(), 2)
        # The work dir's copy follows the claim line; the kernel waits for the line.
        if self.receive_dir is not None and not self.receive(reader.read):
            os.close(claim_w)
            self.unclaimed()
            return 1
        with contextlib.suppress(OSError), os.fdopen(claim_w, "wb") as fh:
            fh.write(line)  # a kernel that died meanwhile is reported by wait_child()
        return 0

    def accept_lifeline(self) -> int:
        """--lifeline: wait for the holder's connection, its claim line and the copy.

        Run before the kernel starts, so a holder that died between the engine's start
        and its connect leaves nothing running: the container ends within --lifeline-wait
        of our start. Returns 0 with self.lifeline set, or the exit code (said why).
        """
        path = self.lifeline_path or ""
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):
            os.unlink(path)
        # Only the holder may connect: the launching user (0600), or with --umask 0007 (a
        # dedicated kernel uid) the group the launching user shares with it (0660).
        old = os.umask(0o177 if self.umask is None else self.umask | 0o117)
        try:
            server.bind(path)
        finally:
            os.umask(old)
        server.listen(1)
        deadline = self.started + self.lifeline_wait
        try:
            server.settimeout(max(0.001, deadline - time.time()))
            conn, _ = server.accept()
        except socket.timeout:
            say(
                f"nobody connected to the lifeline {path} within {self.lifeline_wait:g} s of "
                "the container's start (its holder is gone?); the kernel was not started"
            )
            return NO_LIFELINE_EXIT
        except InterruptedError:
            say(f"kernel not started: {self.reason}")
            return 1
        finally:
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        try:
            # The claim line is due at once; the copy after it may take long (its size is
            # capped by --copy-limit, and EOF still ends us).
            conn.settimeout(max(0.001, deadline - time.time()))
            reader = conn.makefile("rb")
            line = reader.readline()
            conn.settimeout(None)
        except (socket.timeout, OSError):
            line = b""
        if not line.endswith(b"\n"):
            conn.close()
            say("the lifeline's holder went away before its claim line; the kernel was not started")
            return NO_LIFELINE_EXIT
        try:
            claim = json.loads(line.decode() or "{}") if line.strip() else {}
            if not isinstance(claim, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            conn.close()
            say(f"the lifeline's claim line is not valid ({exc}); the kernel was not started")
            return 1
        if claim.get("cwd"):
            self.chdir = str(claim["cwd"])
        self.lifeline = conn
        # What we and the kernel say goes to the holder: no `docker run` client is attached.
        sys.stderr.flush()
        os.dup2(conn.fileno(), 1)
        os.dup2(conn.fileno(), 2)
        if self.receive_dir is not None and not self.receive(reader.read):
            return 1
        return 0

    def receive_copy(self) -> bool:
        """The cold start's copy: from --receive-from's file, else from stdin."""
        if self.receive_from is None:
            return self.receive(sys.stdin.buffer.read)
        try:
            with open(self.receive_from, "rb") as stream:
                return self.receive(stream.read)
        except OSError as exc:
            say(f"the work directory's copy was not received ({exc}); the kernel was not started")
            return False

    def copy_connection(self) -> bool:
        """--connection-copy: the read-only connection file into a private writable copy.

        The copy is made exclusively (O_EXCL, no links followed) in a directory made 0700
        here: nothing in the container runs before us, and nothing may swap the file the
        kernel reads. False (said why) when it cannot be made: the kernel is not started.
        """
        assert self.connection_copy is not None
        source, target = self.connection_copy
        try:
            with open(source, "rb") as fh:
                data = fh.read()
            parent = os.path.dirname(target)
            if parent and not os.path.isdir(parent):
                os.mkdir(parent, 0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        except OSError as exc:
            say(f"the connection file was not copied ({exc}); the kernel was not started")
            return False
        return True

    def receive(self, read: "Callable[[int], bytes]") -> bool:
        """Unpack the work dir's copy into --receive-workdir; False (said why) on failure."""
        assert self.receive_dir is not None
        try:
            receive_tree(read, self.receive_dir)
        except (CopyError, OSError, struct.error) as exc:
            say(
                f"the work directory's copy was not received ({exc}); the kernel was not "
                "started. It must fit --copy-limit bytes and --tmp-inodes entries."
            )
            return False
        return True

    def guard_socket_dir(self) -> None:
        """Kill the kernel the moment anything but its sockets is written in the socket dir
        (--cleanup), a host directory. The host launcher watches it too and removes the
        container (the kernel, our uid, could stop us first); this only makes the common
        case faster: a signal here, before the host's kill travels through the engine."""
        fd = inotify_watch(self.cleanup_dir or "", INOTIFY_WATCHED)
        if fd < 0:
            return
        allowed = set(self.only_sockets)
        created = 0
        while self.returncode is None:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            for mask, name in inotify_events(data):
                if not name:
                    continue
                kind = entry_kind(self.cleanup_dir, name)
                # "unknown": gVisor refuses lstat on a socket just bound (EPERM); its
                # creations are counted all the same, and a write to it is an event too.
                if mask & IN_CREATE and name in allowed and kind != "other":
                    created += 1  # counted: bind-and-rename in a loop would fill the inodes
                    if created <= 4 * len(allowed):
                        continue
                elif mask & IN_MOVED_TO and kind in ("socket", "link", "gone"):
                    continue  # one of its sockets renamed: no new inode
                elif not mask & (IN_CREATE | IN_MOVED_TO) and kind == "socket":
                    continue  # gVisor reports a bind as a write too; a socket holds no data
                self.reason = (
                    f"the kernel wrote {name!r} in its socket dir (only its sockets belong there)"
                )
                self.signal_group(signal.SIGKILL)
                return

    def unclaimed(self) -> int:
        """End the pre-started kernel of a warm container nobody claimed."""
        self.signal_group_all()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = 0
        return 0

    def start_bridges(self) -> None:
        """Listen on each bridge's unix socket; every connection is spliced to its port."""
        old = os.umask(self.umask) if self.umask is not None else None
        try:
            for spec in self.bridges:
                port, _, path = spec.partition("=")
                with contextlib.suppress(OSError):
                    os.unlink(path)
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.bind(path)
                server.listen(16)
                threading.Thread(
                    target=self.accept_loop, args=(server, int(port)), daemon=True
                ).start()
        finally:
            if old is not None:
                os.umask(old)

    def accept_loop(self, server: socket.socket, port: int) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self.splice, args=(conn, port), daemon=True).start()

    def splice(self, conn: socket.socket, port: int) -> None:
        """Connect to the kernel's port (it may still be starting) and pump both ways."""
        deadline = time.time() + BRIDGE_WAIT_SECONDS
        while True:
            try:
                kernel = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.time() > deadline or self.returncode is not None:
                    conn.close()
                    return
                time.sleep(0.01)
        kernel.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=pump, args=(kernel, conn), daemon=True)
        back.start()
        pump(conn, kernel)
        back.join()
        conn.close()
        kernel.close()

    def wait_child(self) -> int:
        """Wait for the kernel; returns its code (negative: killed by that signal)."""
        # PID 1 (a Kubernetes pod has no --init): orphans are ours to reap, or their
        # zombies would hold the kernel's process budget until it ends.
        reap_all = os.getpid() == 1
        while True:
            try:
                pid, status = os.waitpid(-1 if reap_all else self.pid, 0)
            except InterruptedError:
                continue
            if pid == self.pid:
                break
        if os.WIFSIGNALED(status):
            self.returncode = -os.WTERMSIG(status)
        else:
            self.returncode = os.WEXITSTATUS(status)
        return self.returncode

    def run(self) -> int:
        if not self.cmd and not self.pool_socket:
            say("no kernel command given")
            return 2
        refuse_in_container()
        for sig in (*FORWARDED, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
            signal.signal(sig, self.on_signal)
        if self.bridges:
            self.start_bridges()
        if self.lifeline_path:
            # The claim line and the copy come over the lifeline socket, before the kernel.
            failed = self.accept_lifeline()
            if failed:
                self.clean()
                return failed
        # Pooled, the copy comes after the claim (wait_for_claim); else first, on stdin.
        elif self.receive_dir and not self.pool_socket and not self.receive_copy():
            self.clean()
            return 1
        if self.connection_copy and not self.copy_connection():
            self.clean()
            return 1
        failed = self.wait_for_claim() if self.pool_socket else self.start_command()
        if failed or not self.pid:
            if self.reason:
                say(f"pooled kernel not claimed: {self.reason}")
            self.clean()
            return failed
        threading.Thread(target=self.watch_lifeline, daemon=True).start()
        if self.signal_port:
            # After the kernel's start: no fork while zmq's threads run.
            threading.Thread(
                target=serve_signals,
                args=(*self.signal_port, self.signal_group, lambda: self.returncode is None),
                daemon=True,
            ).start()
        if self.only_sockets and self.cleanup_dir:
            threading.Thread(target=self.guard_socket_dir, daemon=True).start()
        if self.lifetime > 0:
            signal.alarm(max(1, int(self.lifetime)))
        code = self.wait_child()
        signal.alarm(0)
        self.report(code)
        self.signal_group_all()
        self.clean()
        return code if code >= 0 else 128 - code

    def signal_group_all(self) -> None:
        # Lingering background processes of the kernel's group die with it.
        if self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)

    def report(self, code: int) -> None:
        ran = time.time() - self.started
        if oom_kills() > self.oom_before:
            say(f"kernel killed: out of memory (limit {memory_limit()}) after {ran:.1f} s")
        elif self.reason:
            say(f"kernel ended: {self.reason} (exit {code}) after {ran:.1f} s")
        elif code < 0:
            say(f"kernel killed by signal {-code} after {ran:.1f} s")
        elif code != 0:
            say(f"kernel exited with code {code} after {ran:.1f} s")
        if pids_max_hits() > self.pids_before:
            say("the pids limit was hit: processes or threads could not be created")

    def clean(self) -> None:
        # The runtime dir holds the HMAC key and sockets; empty it even if the host cannot.
        if not self.cleanup_dir:
            return
        try:
            names = os.listdir(self.cleanup_dir)
        except OSError:
            return
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.cleanup_dir, name))


#: <sys/inotify.h>: what guard_socket_dir watches (socketdir.py on the host: the same).
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_ISDIR = 0x2, 0x8, 0x80, 0x100, 0x40000000
INOTIFY_WATCHED = IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO
INOTIFY_EVENT = struct.Struct("iIII")


def inotify_watch(path: str, mask: int) -> int:
    """A blocking inotify fd watching `path`; -1 where there is none (no ctypes, no libc)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(os.O_CLOEXEC))
        if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            os.close(fd)
            return -1
        return fd
    except (ImportError, OSError, AttributeError):
        return -1


def inotify_events(data: bytes) -> "List[Tuple[int, str]]":
    """(mask, name) of each event in one read of an inotify fd."""
    events = []
    offset = 0
    while offset + INOTIFY_EVENT.size <= len(data):
        _, mask, _, size = INOTIFY_EVENT.unpack_from(data, offset)
        start = offset + INOTIFY_EVENT.size
        events.append((mask, os.fsdecode(data[start : start + size].rstrip(b"\0"))))
        offset = start + size
    return events


def entry_kind(directory: "Optional[str]", name: str) -> str:
    """What `name` is: socket, link (the host refuses to follow it), gone, unknown (lstat
    failed) or other."""
    try:
        mode = os.lstat(os.path.join(directory or "/nonexistent", name)).st_mode
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "unknown"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "link" if stat.S_ISLNK(mode) else "other"


def copy_fd(source: int, target: int) -> None:
    """Copy bytes from one fd to another until EOF or an error (a forwarding thread)."""
    try:
        while True:
            data = os.read(source, 65536)
            if not data:
                return
            os.write(target, data)
    except OSError:
        return


def install_usage_hook(site_dir: Optional[str]) -> None:
    """In a pooled kernel (forked from us: no new Python, so no sitecustomize): load the
    usage hook from site_dir and install it; a failure only leaves usage_reply as it was."""
    if not site_dir:
        return
    try:
        import importlib.util

        path = os.path.join(site_dir, "sitecustomize.py")
        spec = importlib.util.spec_from_file_location("jupyter_docker_kernel_usage", path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.install()
    except Exception as exc:  # fail safe: the kernel runs unpatched
        say(f"usage hook not installed: {exc}")


def hold_iopub_welcomes(app: object) -> "Callable[[], None]":
    """Keep the greeting a warm kernel's IOPub thread sends each new iopub subscriber
    until the claim has brought the client's key; returns the release, which the kernel
    calls once it has set the key.

    ipykernel 7 greets each subscription (iopub_welcome) from its IOPub thread, which runs
    from initialize() on, so before the claim. A client that subscribed before the kernel
    took the key (the claim line reaches the kernel only after the work dir's copy; on a
    busy machine the relay may also just be quicker) got the greeting signed with the
    placeholder key: "Invalid Signature", which jupyter_client's wait_for_ready raises.
    Held and released on the IOPub thread itself (the release is queued on its loop, after
    the key was set), so no greeting is lost and none goes out with the placeholder key.
    An ipykernel that sends no greeting (6 and older) is left alone.
    """
    thread = getattr(app, "iopub_thread", None)
    send = getattr(type(thread), "_send_welcome_message", None)
    add_callback = getattr(getattr(thread, "io_loop", None), "add_callback", None)
    if thread is None or send is None or add_callback is None:
        return lambda: None  # greets nobody, or in a way we do not know: left alone
    held = []  # type: List[str]
    # An instance attribute shadows the method: _handle_subscription looks it up each time.
    thread._send_welcome_message = held.append

    def release_on_thread() -> None:
        del thread._send_welcome_message
        for subscription in held:
            send(thread, subscription)

    # tornado's add_callback may be called from any thread; the callback runs on the loop's.
    return lambda: add_callback(release_on_thread)


def run_pooled_kernel(claim_fd: int, ready_fd: int, ip: str, setup: "Callable[[], None]") -> int:
    """In the forked kernel of a warm container: initialise, wait for the claim, serve.

    The sockets are bound and the shell built before anyone claims the container; the
    claim line (from the supervisor) brings the client's key, signature scheme and cwd.
    """
    import ipykernel.kernelapp

    setup()
    for sig in (*FORWARDED, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path = "/tmp/.jupyter-docker-kernel.json"  # noqa: S108 - the container's own tmpfs
    connection: Dict[str, object] = {
        "transport": "ipc",
        "ip": ip,
        "key": os.urandom(16).hex(),  # a placeholder nobody knows: replaced at the claim
        "signature_scheme": "hmac-sha256",
    }
    for port, channel in enumerate(CHANNELS, start=1):
        connection[channel + "_port"] = port
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(connection, fh)
    app = ipykernel.kernelapp.IPKernelApp.instance()
    app.initialize(["-f", path])  # type: ignore[no-untyped-call]
    release_welcomes = hold_iopub_welcomes(app)
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    with os.fdopen(claim_fd, "rb") as fh:
        line = fh.readline()
    if not line:
        return 0  # not claimed: the supervisor is ending the container
    claim = json.loads(line.decode())
    given = claim["connection"]
    for name in ("transport", "ip", *(channel + "_port" for channel in CHANNELS)):
        if given.get(name) != connection[name]:
            say(f"claim refused: {name} {given.get(name)!r} is not {connection[name]!r}")
            return 1
    app.session.signature_scheme = given.get("signature_scheme") or "hmac-sha256"
    app.session.key = str(given.get("key", "")).encode()
    release_welcomes()
    app.write_connection_file()
    os.chdir(claim.get("cwd") or os.environ.get("HOME", "/"))
    app.start()  # type: ignore[no-untyped-call]
    return 0


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from src to dst until EOF or an error, then half-close dst."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        src.shutdown(socket.SHUT_RD)


if __name__ == "__main__":
    sys.exit(Supervisor(sys.argv[1:]).run())
