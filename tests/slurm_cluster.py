"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd on this
machine, configured from a temporary directory, stopped and removed at the end.

conftest's session fixture `slurm_cluster` calls `OneNodeCluster.start()` once and `stop()`
at the end of the session, also after a failure. Every path the daemons use (MUNGE's
socket and key, Slurm's state, spool, pid and log files) lies under that directory and
the ports are free ones picked at start, so the host's own Slurm or MUNGE (if any) is
never read or touched; commands find this cluster through the SLURM_CONF variable, which
`env()` returns and the fixture sets for the session.

Configuration choices, from trying them on this host (cgroup v1, tests as root):
- ProctrackType=proctrack/linuxproc, TaskPlugin=task/none. proctrack/cgroup with
  task/cgroup also works here, but it creates `slurm_<node>` directories in the host's
  cgroup hierarchies, shared with any other cluster of the same node name, and buys us
  nothing: a task's kernel container is dockerd's child, not the task's, so no Slurm cgroup
  ever holds or limits it (the container's own limits do). linuxproc finds a task's
  processes by their parent chain, which is what scancel needs to signal the worker.
- SelectType=select/cons_tres with CR_Core: one CPU per task, so an array runs as many
  tasks at once as the node has CPUs (the node is described by `slurmd -C`, this
  machine's own CPUs and memory).
- No accounting (AccountingStorageType=accounting_storage/none): no slurmdbd and database
  to run. sacct then answers "accounting storage is disabled"; jupyter_docker_kernel.slurm
  watches squeue and its own per-task result files instead.
- SlurmUser and SlurmdUser are the user running the tests: as root, jobs run as whoever
  submitted them (Slurm's normal rule); as another user, slurmd can run only that user's
  jobs, which is all the tests submit.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: The programs the cluster needs; scripts/bootstrap-slurm installs them.
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
PARTITION = "jdk"
#: Seconds to wait for the node to report idle after the daemons start.
START_TIMEOUT = 60.0


def missing_programs() -> list[str]:
    """The cluster's programs that are not on PATH (empty when it can start)."""
    return [name for name in PROGRAMS if shutil.which(name) is None]


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel picks it; a race is unlikely here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_line() -> str:
    """`slurmd -C`'s NodeName line: this machine's name, CPUs and memory as slurmd sees
    them, so the node offers every CPU and slurmd never drains it for a mismatch."""
    out = subprocess.run(
        ["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    [line] = [line for line in out.splitlines() if line.startswith("NodeName=")]
    return line


@dataclass
class OneNodeCluster:
    """One slurmctld and one slurmd (and their munged) configured under `root`."""

    root: Path
    node: str = ""
    cpus: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.sock"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    def env(self) -> dict[str, str]:
        """The variables a Slurm command needs to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    @classmethod
    def start(cls, parent: Path | None = None) -> OneNodeCluster:
        """Write the configuration, start the three daemons, wait for an idle node.

        On any failure everything started so far is stopped and the error names the log
        to read."""
        # MUNGE refuses a socket whose parent directories are not searchable by all.
        root = Path(tempfile.mkdtemp(prefix="jdk-slurm-", dir=parent))
        root.chmod(0o755)
        cluster = cls(root=root)
        began = time.monotonic()
        try:
            cluster._write_config()
            cluster._start_munged()
            cluster._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            cluster._spawn("slurmd", ["slurmd", "-D", "-N", cluster.node])
            cluster._wait_idle()
        except BaseException:
            cluster.stop()
            raise
        cluster.started_in = time.monotonic() - began
        return cluster

    def _write_config(self) -> None:
        for sub, mode in (("munge", 0o755), ("key", 0o700), ("state", 0o700), ("log", 0o755)):
            (self.root / sub).mkdir(mode=mode)
        (self.root / "spool").mkdir(mode=0o755)
        key = self.root / "key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        node = node_line()
        fields = dict(part.split("=", 1) for part in node.split())
        self.node = fields["NodeName"]
        self.cpus = int(fields["CPUs"])
        user = getpass.getuser()
        root = self.root
        lines = [
            "# Written by tests/slurm_cluster.py; see its docstring for the choices.",
            "ClusterName=jdktest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs / 'slurmctld.log'}",
            f"SlurmdLogFile={self.logs / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # A task's processes get KillWait seconds between SIGTERM and SIGKILL on
            # scancel: the worker's time to remove its container.
            "KillWait=10",
            # Start the next tasks as soon as others end, not on the next periodic pass:
            # trivial tasks took 1.45 s each at two at a time with the defaults, 0.5 s so.
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # Read only by the cgroup plugins, which this configuration does not load; written
        # so that switching ProctrackType to proctrack/cgroup is a one-line change.
        (root / "cgroup.conf").write_text(
            "# Unused with proctrack/linuxproc and task/none (see slurm.conf).\n"
            "CgroupPlugin=autodetect\nConstrainCores=no\nConstrainRAMSpace=no\n"
        )

    def _start_munged(self) -> None:
        argv = [
            "munged",
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={self.root / 'key' / 'munge.key'}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--log-file={self.logs / 'munged.log'}",
            f"--seed-file={self.root / 'key' / 'munged.seed'}",
        ]
        self._spawn("munged", argv)
        self._wait(lambda: self.munge_socket.exists(), "munged", "munged.log", 10)

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = (self.logs / f"{name}.stderr").open("wb")
        with out:
            # Own session: a Ctrl-C at the terminal reaches pytest, which stops us in order.
            self.procs[name] = subprocess.Popen(
                argv,
                env={**os.environ, **self.env()},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait(self, ready: Callable[[], bool], name: str, log: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; {self.tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s; {self.tail(log)}")
            time.sleep(0.1)

    def _wait_idle(self) -> None:
        def idle() -> bool:
            proc = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"],
                env={**os.environ, **self.env()},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            for name in ("slurmctld", "slurmd"):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {self.procs[name].returncode}; "
                        f"{self.tail(name + '.log')} {self.tail(name + '.stderr')}"
                    )
            return proc.stdout.strip() == "idle"

        self._wait(idle, "slurmd", "slurmd.log", START_TIMEOUT)

    def squeue_lines(self) -> list[str]:
        """This cluster's queue, one line per job still known to the controller and not
        finished (empty when it does not answer)."""
        try:
            proc = subprocess.run(
                ["squeue", "-h", "-o", "%i %T"],
                env={**os.environ, **self.env()},
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return []
        return proc.stdout.splitlines()

    def tail(self, log: str, lines: int = 15) -> str:
        """The last lines of one of the daemons' logs, for an error message."""
        path = self.logs / log
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no {path})"
        return f"{path}:\n" + "\n".join(text)

    def stop(self) -> None:
        """Stop the daemons (slurmd, slurmctld, munged: the reverse of start), end what is
        left of the jobs they ran, and remove the directory. Idempotent."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # Jobs still queued or running would outlive slurmd under linuxproc.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["scancel", "--full", f"--partition={PARTITION}"],
                    env={**os.environ, **self.env()},
                    capture_output=True,
                    timeout=15,
                    check=False,
                )
            # slurmstepd outlives slurmd by design: wait for the jobs to end first.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.squeue_lines():
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)
