"""One resident process that runs the warm pool's refills of a parent's forked children.

Who uses it: `grade`'s local runner (grade.ForkRunner, and so grade_nodes, whose workers
are ForkRunner's). hold() in the parent, before it forks its workers; they inherit the
channel, and pool.fill_in_background sends each refill there instead of starting a process
for it. release() when the parent is done with it.

Why: every pooled kernel start tops its pool up from a process of its own
(pool.fill_in_background: a Python interpreter that imports our package and exits), which
is right for one-shot clients (nbconvert, papermill: the refill must outlive them) but, in
a class being graded, means one interpreter's start and imports per submission, about
0.15-0.25 s of CPU each (process accounting of a 40-submission `grade --jobs 2` run: 45
refill processes, 11 s of the run's 62 s of CPU). On a CPU-bound machine that CPU comes
out of the grading. Here one process, forked from the parent (its imports done), runs
every refill in a thread of its own, with the same gate (pool.GATE_WAIT) and at the same
nice 10 as a refill process, so the kernels being claimed keep the CPU.

The channel is an AF_UNIX SOCK_SEQPACKET socketpair: each message is one record, whichever
of the parent's children sends it, and the refiller sees EOF once every holder of the
other end has closed it (the parent at release(), each worker at its end). Messages, JSON:
`{"id": ID, "payload": PAYLOAD}` (pool.fill_in_background's payload, its gate closed) and
`{"open": ID}` (open that gate; a refill whose gate never opens starts after GATE_WAIT, as
a refill process's does). At EOF the refiller lets go of its stderr (a pipe there would
keep its reader waiting), opens every gate, waits for its refills and exits: like the
refill processes it replaces it may outlive the parent, so the pool is full for the next
run. It runs in a session of its own (a Ctrl-C at the terminal is the
parent's to handle; the parent's children are told to stop, a refill is not a child's)
and is forked twice, so nobody has to wait for it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import threading

from jupyter_docker_kernel import pool

#: The largest message: a payload is the kernel's settings, a few KiB.
MESSAGE_LIMIT = 1 << 20
#: A refill's CPU priority, as pool.GATED_FILL sets it in a refill process.
REFILL_NICE = 10


class SentRefill:
    """A refill sent to the refiller, waiting at its gate (pool.Gate): open() and close()
    each open it, once."""

    def __init__(self, channel: socket.socket, ident: str) -> None:
        self.channel = channel
        self.ident = ident
        self.opened = False

    def open(self) -> None:
        if self.opened:
            return
        self.opened = True
        with contextlib.suppress(OSError):  # the refiller's gate wait ends it anyway
            self.channel.send(json.dumps({"open": self.ident}).encode())

    def close(self) -> None:
        self.open()


class Channel:
    """The sending end, as pool.REFILLS calls it in the parent and in its forked children."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.count = itertools.count(1)

    def __call__(self, payload: str) -> SentRefill:
        """Send one gated refill; OSError if the refiller is gone (the caller then starts
        a refill process, as without us)."""
        ident = f"{os.getpid()}-{next(self.count)}"
        self.sock.send(json.dumps({"id": ident, "payload": payload}).encode())
        return SentRefill(self.sock, ident)


_held: Channel | None = None
_holders = 0


def hold() -> bool:
    """Route this process's refills (and its future forked children's) to one refiller,
    starting it on the first hold; whether refills go there. Call it with no other thread
    running (it forks). A refiller that cannot start leaves refills to processes."""
    global _held, _holders
    if _held is None:
        try:
            _held = Channel(start())
        except OSError as exc:
            print(f"jupyter-docker-kernel: refills start a process each: {exc}", file=sys.stderr)
            return False
        pool.REFILLS = _held
    _holders += 1
    return True


def release() -> None:
    """Undo one hold(); the last closes our end: once the children that hold it end too,
    the refiller finishes its refills and exits."""
    global _held, _holders
    if _held is None:
        return
    _holders -= 1
    if _holders <= 0:
        pool.REFILLS = None
        with contextlib.suppress(OSError):
            _held.sock.close()
        _held, _holders = None, 0


def start() -> socket.socket:
    """Fork the refiller (twice: it is nobody's child to wait for); our end of its channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        ours.close()
        theirs.close()
        raise
    if pid:
        theirs.close()
        os.waitpid(pid, 0)
        return ours
    code = 1
    try:  # the child: never returns into the caller's code
        ours.close()
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            # stderr stays ours, as a refill process's did (its errors go there). Other
            # inherited descriptors are left open, not closed under the Python objects
            # that own them (their finalizers would close numbers reused by a refill):
            # hold() runs before any worker exists, so no worker's pipe is among them.
            serve(theirs)
        code = 0
    except BaseException:  # a forked child must not return: say why it ends
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def serve(channel: socket.socket) -> None:
    """The refiller: one thread per refill, each waiting at its gate; at EOF, open them
    all, wait for them, return."""
    with contextlib.suppress(OSError):
        os.nice(REFILL_NICE)  # before any thread: threads start at their creator's nice
    gates: dict[str, threading.Event] = {}
    refills: list[threading.Thread] = []
    while True:
        try:
            data = channel.recv(MESSAGE_LIMIT)
        except InterruptedError:
            continue
        if not data:
            break
        try:
            message = json.loads(data)
        except ValueError:
            continue
        if "payload" in message:
            gate = gates.setdefault(str(message["id"]), threading.Event())
            thread = threading.Thread(target=refill, args=(str(message["payload"]), gate))
            thread.start()
            refills = [t for t in refills if t.is_alive()] + [thread]
        elif "open" in message:
            gates.setdefault(str(message["open"]), threading.Event()).set()
    # Our holders are gone, and so, as a rule, is whoever reads our stderr: held by us, a
    # pipe there (`grade ... 2>&1 | tee`, a script's capture) would wait for the refills
    # still running. Their errors are lost with it; the next start's refill says them.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    for gate in gates.values():
        gate.set()
    for thread in refills:
        thread.join()


def refill(payload: str, gate: threading.Event) -> None:
    """One refill, as a refill process runs it: its gate (or GATE_WAIT s), then fill."""
    gate.wait(pool.GATE_WAIT)
    pool.fill_from(payload)
