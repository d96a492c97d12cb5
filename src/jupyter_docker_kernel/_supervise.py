"""In-container supervisor: runs the kernel, forwards signals, dies with the host launcher.

This file is bind-mounted read-only into every kernel container and run by the image's
own Python as the only child of the container's init (tini). The host never imports it.
It keeps to the standard library and Python 3.6 syntax, because it runs in users' images.

It ends the kernel (and so the container, since tini exits with its child) when:
- its stdin reaches EOF: the host launcher is gone, even by SIGKILL (the engine closes a
  `docker run -i` container's stdin when its client disconnects);
- SIGTERM/SIGHUP arrive (`docker stop`, the launcher's terminate);
- the maximum lifetime passes (it holds even with the whole host side gone).
SIGINT and SIGQUIT/SIGUSR* are forwarded to the kernel's process group, as a local
jupyter_client does with killpg. On the kernel's exit it prints one line saying why
(exit code, signal, out of memory, pids limit), which reaches the launcher's log.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

PREFIX = "jupyter-docker-kernel:"
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
GRACE_SECONDS = 2.0


def say(text: str) -> None:
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


class Supervisor:
    def __init__(self, argv: List[str]) -> None:
        self.lifetime = 0.0
        self.cleanup_dir: Optional[str] = None
        self.umask: Optional[int] = None
        while argv and argv[0] != "--":
            opt = argv.pop(0)
            if opt == "--lifetime":
                self.lifetime = float(argv.pop(0))
            elif opt == "--cleanup":
                self.cleanup_dir = argv.pop(0)
            elif opt == "--umask":
                self.umask = int(argv.pop(0), 8)
            else:
                say(f"unknown supervisor option {opt!r}")
                sys.exit(2)
        self.cmd = argv[1:]
        self.child: Optional[subprocess.Popen[bytes]] = None
        self.reason: Optional[str] = None
        self.started = time.time()
        self.oom_before = oom_kills()
        self.pids_before = pids_max_hits()

    def signal_group(self, sig: int) -> None:
        if self.child is None or self.child.returncode is not None:
            return
        with contextlib.suppress(OSError):
            os.killpg(self.child.pid, sig)

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
        if signum in FORWARDED:
            self.signal_group(signum)
        elif signum == signal.SIGALRM:
            self.reason = f"maximum lifetime of {self.lifetime:.0f} s reached"
            self.signal_group(signal.SIGKILL)
        else:
            self.end(f"stopped by signal {signum}")

    def watch_stdin(self) -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        # EOF: the launcher (our only client) is gone; a kernel must not outlive it.
        self.end("the host launcher went away")

    def run(self) -> int:
        if not self.cmd:
            say("no kernel command given")
            return 2
        for sig in (*FORWARDED, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
            signal.signal(sig, self.on_signal)
        try:
            # Own session: the kernel leads its process group, as under a local launcher,
            # so message-mode interrupts and our killpg reach its subprocesses too.
            # JPY_PARENT_PID: ipykernel then exits if we die (it watches for reparenting)
            # and skips its interactive banner, as under a local Jupyter.
            env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))
            if self.umask is not None:
                # A dedicated uid sharing the launcher's group: its sockets must be
                # group-accessible for the launcher to connect.
                os.umask(self.umask)
            self.child = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
        except OSError as exc:
            say(f"cannot start the kernel command {self.cmd[0]!r}: {exc}")
            return 127
        threading.Thread(target=self.watch_stdin, daemon=True).start()
        if self.lifetime > 0:
            signal.alarm(max(1, int(self.lifetime)))
        while True:
            try:
                code = self.child.wait()
                break
            except InterruptedError:
                continue
        signal.alarm(0)
        self.report(code)
        self.signal_group_all()
        self.clean()
        return code if code >= 0 else 128 - code

    def signal_group_all(self) -> None:
        # Lingering background processes of the kernel's group die with it.
        if self.child is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.child.pid, signal.SIGKILL)

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


if __name__ == "__main__":
    sys.exit(Supervisor(sys.argv[1:]).run())
