"""Hostile notebooks against the host's network, files and privileges, under runc and gVisor.

Each test runs one attack of the catalogue whose ids docs/security.md cites (B network, C
filesystem, D privileges and leaks, G runtime) as a cell through a real Jupyter client, and
asserts the safe outcome from the host side where the host can see it: its files, its
listening sockets, the launcher's log, the engine's view of the container. Read-only probes
share one kernel per runtime (`probe`); attacks that break or end their kernel get their own.
Where runsc legitimately behaves differently, the expectation says so and why.

No test sends a packet off this machine: addresses outside loopback are only tried after the
cell has checked that the kernel has no interface but `lo`, so the connect fails locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli
from jupyter_docker_kernel.hardening import RUNTIME_TARGET
from tests.broker_env import Runtime, broker_kernel_uid
from tests.conftest import HOSTILE_LIMITS, inspect, install_hostile
from tests.kernels import (
    containers_of,
    docker_argv,
    execute,
    free_port,
    kernel_key,
    launcher_process,
    running_kernel,
    stream_text,
    wait_until,
)

# Timing-sensitive attacks on a shared machine: rerun a failure before calling it one.
pytestmark = [pytest.mark.docker, pytest.mark.flaky(reruns=2, reruns_delay=2)]

#: A variable in the host's environment when the probe kernel starts (D08).
CANARY_ENV = "JDK_CANARY_SECRET"
CANARY_TEXT = "host-canary-7f3a9c"
#: Files the host puts in a mounted work dir or a --copy-workdir source.
GRADEBOOK_BYTES = b"SQLite format 3\x00" + bytes(range(256)) * 16
#: File names that have broken host tools before: control characters, a maximal name,
#: bytes that are not UTF-8 (as str, via the file system encoding's surrogateescape).
HOSTILE_NAMES = (
    "evil\n\x1b[2J\x1b]0;owned\x07.txt",
    "n" * 255,
    os.fsdecode(b"latin1-\xff\xfe.txt"),
)
#: /dev entries of a --network none container; gVisor adds its own virtual fuse and net/tun,
#: which the Sentry implements (no host device behind them).
MINIMAL_DEV = {
    "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
    "stderr", "stdin", "stdout", "tty", "urandom", "zero",
}  # fmt: skip
GVISOR_DEV = {"fuse", "net"}
#: Refuses to go on unless the kernel has only a loopback interface: then a connect to any
#: other address fails inside the kernel and no packet can leave the machine.
NO_ROUTE_GUARD = """\
import socket
_interfaces = [name for _, name in socket.if_nameindex()]
if _interfaces != ['lo']:
    raise RuntimeError(f'refusing to probe: the kernel has interfaces {_interfaces}')
"""


def guarded(code: str) -> str:
    """`code` (indented or not) run only after NO_ROUTE_GUARD has passed."""
    return NO_ROUTE_GUARD + textwrap.dedent(code)


# -- helpers ------------------------------------------------------------------------------------


@dataclass
class Session:
    """A kernel started the way Jupyter does, with the launcher's stderr kept in `log`."""

    km: KernelManager
    kc: BlockingKernelClient
    log: Path
    #: Holds tests.kernels.running_kernel open for the session's life; closing it shuts
    #: the kernel down and checks that nothing of it is left.
    stack: contextlib.ExitStack
    started_in: float

    def run(self, code: str, timeout: float = 60) -> str:
        """Run a cell that must succeed; returns its stdout."""
        reply, outputs = execute(self.kc, textwrap.dedent(code), timeout=timeout)
        tracebacks = [
            "\n".join(m["content"]["traceback"]) for m in outputs if m["msg_type"] == "error"
        ]
        assert reply["status"] == "ok", f"the probe cell failed:\n{''.join(tracebacks)}"
        return stream_text(outputs)

    def ask(self, code: str, timeout: float = 60) -> Any:
        """Run a cell whose last stdout line is one JSON value; returns the value."""
        return json.loads(self.run(code, timeout).splitlines()[-1])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def open_session(kernel: str, workdir: Path, log: Path, timeout: float = 60) -> Session:
    """Start `kernel` in `workdir` (tests.kernels.running_kernel, the launcher's stderr in
    `log`); fails (rather than hangs) if it is not ready in time."""
    started = time.monotonic()
    stack = contextlib.ExitStack()
    kernel_cm = running_kernel(kernel, workdir, log=log, ready_timeout=timeout, gone_within=15)
    km, kc = stack.enter_context(kernel_cm)
    return Session(km, kc, log, stack, time.monotonic() - started)


def close_session(session: Session) -> None:
    """Shut the kernel down (or clean up after a dead one); its container and runtime dir
    must go within 15 s."""
    session.stack.close()


@contextlib.contextmanager
def session_of(kernel: str, workdir: Path, log: Path) -> Iterator[Session]:
    session = open_session(kernel, workdir, log)
    try:
        yield session
    finally:
        close_session(session)


def private_dir(path: Path) -> Path:
    """A directory the kernel's uid can use (65534 when the tests run as root)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under root (not following links) -> a digest of its type and content."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[path] = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                out[path] = "file:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                out[path] = f"mode:{stat.S_IFMT(st.st_mode):o}"
    return out


def container_of(session: Session) -> str:
    [cid] = containers_of(kernel_key(session.km), running_only=True)
    return cid


def runtime_dir_of(session: Session) -> str:
    """The host dir mounted as the kernel's socket dir, from the engine's view."""
    mounts = inspect(container_of(session))["Mounts"]
    assert isinstance(mounts, list)
    [source] = [m["Source"] for m in mounts if m["Destination"] == RUNTIME_TARGET]
    assert isinstance(source, str)
    return source


def kernel_uid(runtime: Runtime) -> int:
    """The uid our kernels get: the launching user's, 65534 when that is root; through
    the broker, the test user's who asked for the kernel."""
    if runtime.via_broker:
        return broker_kernel_uid()
    return 65534 if os.getuid() == 0 else os.getuid()


# -- fixtures -----------------------------------------------------------------------------------


@dataclass
class Host:
    """Host-side files around a kernel's work dir, which the kernel must not reach."""

    workdir: Path
    canary: Path  # a sibling of the work dir: outside every mount


@pytest.fixture(scope="module")
def probe_host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    """A work dir with a gradebook, a planted symlink and a root-only file; a canary beside it."""
    base = tmp_path_factory.mktemp("probe")
    canary = base / "canary.txt"
    canary.write_text(CANARY_TEXT)
    workdir = private_dir(base / "work")
    (workdir / "gradebook.db").write_bytes(GRADEBOOK_BYTES)
    (workdir / "answers.csv").symlink_to(canary)
    protected = workdir / "protected.txt"
    protected.write_text(CANARY_TEXT)
    protected.chmod(0o600)
    return Host(workdir, canary)


@pytest.fixture(scope="module")
def probe(
    hostile_kernel: str,
    runtime: Runtime,
    probe_host: Host,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Session]:
    """One kernel per runtime for the probes that leave it usable; a canary in the host env."""
    log = tmp_path_factory.mktemp(f"probe-log-{runtime}") / "launcher.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CANARY_ENV, CANARY_TEXT)
        session = open_session(hostile_kernel, probe_host.workdir, log)
    try:
        yield session
    finally:
        close_session(session)


@pytest.fixture(scope="module")
def copy_kernel(kernel_image: str, runtime: Runtime) -> str:
    """The recommended grading setup: --copy-workdir with the hostile limits."""
    return install_hostile(
        "jdk-test-hostile-copy", kernel_image, runtime, "--copy-workdir", *HOSTILE_LIMITS
    )


@pytest.fixture(scope="module")
def copy_host(tmp_path_factory: pytest.TempPathFactory) -> Host:
    """A --copy-workdir source dir full of traps for the copy; a canary outside it."""
    base = tmp_path_factory.mktemp("copysrc")
    canary = base / "canary.txt"
    canary.write_text(CANARY_TEXT)
    source = private_dir(base / "submission")
    (source / "notes.txt").write_text("the student's notes\n")
    (source / "gradebook.db").write_bytes(GRADEBOOK_BYTES)
    (source / "answers.csv").symlink_to(canary)
    (source / "relative.csv").symlink_to(Path("..") / canary.name)
    (source / "rootlink").symlink_to("/")
    os.mkfifo(source / "results.fifo")
    for name in HOSTILE_NAMES:
        (source / name).write_text("hostile name\n")
    return Host(source, canary)


@pytest.fixture(scope="module")
def copied(
    copy_kernel: str, copy_host: Host, runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    """A --copy-workdir kernel over copy_host's source dir (one per runtime)."""
    log = tmp_path_factory.mktemp(f"copy-log-{runtime}") / "launcher.log"
    with session_of(copy_kernel, copy_host.workdir, log) as session:
        yield session


@pytest.fixture(scope="module")
def spawner(
    kernel_image: str, runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    """A kernel for probes that start processes (find, su, a fresh Python): the hostile
    limits with --pids-limit 512. Under gVisor the Sentry's own ~100 host threads count
    against the pids limit, and at 128 running `su` can crash the whole sandbox (exit 2);
    that is a pids-limit matter (catalogue A), not what these probes test."""
    name = install_hostile(
        "jdk-test-hostile-spawn", kernel_image, runtime, *HOSTILE_LIMITS, "--pids-limit", "512"
    )
    base = tmp_path_factory.mktemp(f"spawner-{runtime}")
    with session_of(name, private_dir(base / "work"), base / "log") as session:
        yield session


# -- B. Network ---------------------------------------------------------------------------------


def test_b01_dns_lookups_fail(probe: Session) -> None:
    """B01: no resolver is reachable, so a name lookup fails with socket.gaierror."""
    outcome = probe.ask(
        guarded(
            """
            import json
            try:
                socket.getaddrinfo('example.com', 443)
                outcome = 'resolved'
            except socket.gaierror:
                outcome = 'gaierror'
            print(json.dumps(outcome))
            """
        )
    )

    assert outcome == "gaierror"


def test_b02_the_kernel_has_only_a_loopback_interface_and_no_route(probe: Session) -> None:
    """B02: --network none: `lo` is the only interface and the IPv4 routing table is empty."""
    found = probe.ask(
        """
        import json, socket
        routes = open('/proc/net/route').read().splitlines()[1:]
        print(json.dumps([[n for _, n in socket.if_nameindex()], routes]))
        """
    )

    assert found == [["lo"], []]


@pytest.mark.parametrize(
    ("address", "port"),
    [
        pytest.param("192.0.2.1", 443, id="B02-egress"),
        pytest.param("169.254.169.254", 80, id="B04-metadata"),
    ],
)
def test_b02_b04_connecting_outside_fails_at_once(probe: Session, address: str, port: int) -> None:
    """B02 egress, B04 cloud metadata: a connect fails immediately with no route to it.

    The cell checks first that `lo` is the only interface, so nothing is sent anywhere.
    """
    result = probe.ask(
        guarded(
            f"""
            import errno, json, time
            s = socket.socket()
            s.settimeout(3)
            t = time.monotonic()
            try:
                s.connect(({address!r}, {port}))
                code = 'connected'
            except OSError as exc:
                code = errno.errorcode.get(exc.errno, str(exc))
            print(json.dumps([code, time.monotonic() - t]))
            """
        )
    )
    code, seconds = result

    assert code in ("ENETUNREACH", "EHOSTUNREACH")
    assert seconds < 1


def test_b03_a_service_on_the_hosts_loopback_is_unreachable(probe: Session) -> None:
    """B03: 127.0.0.1 in the kernel is its own loopback: a host service there is refused."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        code = probe.ask(
            f"""
            import errno, json, socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=3)
                code = 'connected'
            except OSError as exc:
                code = errno.errorcode.get(exc.errno, str(exc))
            print(json.dumps(code))
            """
        )
        with pytest.raises(BlockingIOError):
            server.accept()  # the host's server saw no connection

    assert code == "ECONNREFUSED"


def test_b03_the_jupyter_ports_on_the_host_are_unreachable(probe: Session) -> None:
    """B03: the kernel cannot reach the host ports its own client connects to."""
    connection = json.loads(Path(probe.km.connection_file).read_text())
    ports = [connection[f"{c}_port"] for c in ("shell", "iopub", "stdin", "control", "hb")]
    with socket.create_connection(("127.0.0.1", connection["hb_port"]), timeout=3):
        pass  # they do listen on the host

    codes = probe.ask(
        f"""
        import errno, json, socket
        codes = []
        for port in {ports!r}:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=3)
                codes.append('connected')
            except OSError as exc:
                codes.append(errno.errorcode.get(exc.errno, str(exc)))
        print(json.dumps(codes))
        """
    )

    assert codes == ["ECONNREFUSED"] * 5


def test_b05_the_docker_api_is_not_in_the_container(probe: Session) -> None:
    """B05: no engine socket at the usual paths and no DOCKER_HOST: no way to the engine."""
    found = probe.ask(
        """
        import json, os
        paths = [p for p in ('/var/run/docker.sock', '/run/docker.sock') if os.path.lexists(p)]
        print(json.dumps([paths, os.environ.get('DOCKER_HOST')]))
        """
    )

    assert found == [[], None]


#: What a kernel finds of kernel sockets: its socket dir's entries, whether the other
#: kernel's host socket dir exists, and unix sockets anywhere else it can write.
LIST_SOCKETS = """
import json, os, stat
elsewhere = []
for top in ('/tmp', '/home', '/var/tmp', '/dev/shm', os.getcwd()):
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                elsewhere.append(path)
mark = os.readlink(os.path.join(SOCKET_DIR, 'claim'))
print(json.dumps([sorted(os.listdir(SOCKET_DIR)), mark, os.path.exists(OTHER), elsewhere]))
"""


def test_b06_a_kernel_sees_only_its_own_socket_dir(
    probe: Session, hostile_kernel: str, tmp_path: Path
) -> None:
    """B06: two kernels at once. The host marks each one's socket dir with a link named
    like a socket (a file there would be taken for an attack, A18), its target naming the
    kernel: each kernel finds its own five sockets and its own mark, never the other's,
    the other's host dir does not exist for it, and no socket of another kernel is
    anywhere else."""
    sockets = ["claim", *(f"k-{i}" for i in range(1, 6))]
    marks = {"probe": "marker-probe", "other": "marker-other"}
    with session_of(hostile_kernel, private_dir(tmp_path / "work"), tmp_path / "log") as other:
        dirs = {"probe": runtime_dir_of(probe), "other": runtime_dir_of(other)}
        for label, path in dirs.items():
            (Path(path) / "claim").symlink_to(marks[label])
        prelude = f"SOCKET_DIR = {RUNTIME_TARGET!r}\n"
        seen_by_probe = probe.ask(prelude + f"OTHER = {dirs['other']!r}\n" + LIST_SOCKETS)
        seen_by_other = other.ask(prelude + f"OTHER = {dirs['probe']!r}\n" + LIST_SOCKETS)

    assert seen_by_probe == [sockets, marks["probe"], False, []]
    assert seen_by_other == [sockets, marks["other"], False, []]


@pytest.mark.parametrize(
    ("family", "kind", "proto"),
    [
        pytest.param(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, id="raw-inet"),
        pytest.param(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, id="raw-inet6"),
        pytest.param(socket.AF_PACKET, socket.SOCK_RAW, 0, id="packet"),
    ],
)
def test_b07_raw_and_packet_sockets_are_refused(
    probe: Session, family: int, kind: int, proto: int
) -> None:
    """B07: NET_RAW is dropped: raw and packet sockets fail with PermissionError."""
    outcome = probe.ask(
        f"""
        import json, socket
        try:
            socket.socket({int(family)}, {int(kind)}, {proto}).close()
            outcome = 'allowed'
        except OSError as exc:
            outcome = type(exc).__name__
        print(json.dumps(outcome))
        """
    )

    assert outcome == "PermissionError"


def test_b07_vsock_sockets_are_refused(probe: Session) -> None:
    """B07: no AF_VSOCK socket: vsock is not network-namespaced, and on a VM host CID 2
    reaches the hypervisor's services whatever --network says. Only socket() is tried.
    Under runc our seccomp profile refuses it (the engine's own may predate moby#44562)."""
    outcome = probe.ask(
        """
        import json, socket
        try:
            socket.socket(40, socket.SOCK_STREAM).close()   # AF_VSOCK
            outcome = 'allowed'
        except OSError as exc:
            outcome = type(exc).__name__
        print(json.dumps(outcome))
        """
    )

    assert outcome != "allowed"


I386_VSOCK = """
import ctypes, mmap, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
page = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)  # 32-bit
ctypes.memmove(page + 512, struct.pack('<III', 40, 1, 0), 12)  # AF_VSOCK, SOCK_STREAM, 0
# socketcall(SYS_SOCKET, args) through the i386 ABI (int 0x80), then return eax:
# push rbx; mov eax, 102; mov ebx, 1; mov ecx, args; int 0x80; pop rbx; movsxd rax, eax; ret
code = (bytes.fromhex('53b8') + struct.pack('<I', 102) + bytes.fromhex('bb')
        + struct.pack('<I', 1) + bytes.fromhex('b9') + struct.pack('<I', page + 512)
        + bytes.fromhex('cd805b4863c0c3'))
ctypes.memmove(page, code, len(code))
fd = ctypes.CFUNCTYPE(ctypes.c_long)(page)()
# gVisor takes int 0x80 for a 64-bit call (102: getuid); only a vsock descriptor counts.
try:
    print('vsock' if socket.socket(fileno=fd).family == 40 else 'other socket')
except OSError:
    print('no socket')
"""


def test_b07_no_vsock_socket_through_the_i386_abi(spawner: Session) -> None:
    """B07: an x86_64 process can make i386 calls (int 0x80), where socket() may go
    through socketcall(SYS_SOCKET, args) with the family in memory, out of seccomp's
    sight. Our profile admits no i386 calls at all (the process is killed, SIGSYS); gVisor
    implements none. Either way no vsock descriptor comes back. Run in a child process."""
    if platform.machine() != "x86_64":
        pytest.skip("the i386 ABI exists on x86_64 only")
    outcome = spawner.ask(
        f"""
        import json, subprocess, sys
        child = subprocess.run([sys.executable, '-c', {I386_VSOCK!r}],
                               capture_output=True, text=True, timeout=60)
        print(json.dumps([child.returncode, child.stdout.strip()]))
        """
    )
    _, printed = outcome

    assert printed != "vsock", outcome


def test_b08_a_listening_backdoor_is_unreachable_from_the_host(probe: Session) -> None:
    """B08: the kernel may listen on 0.0.0.0, but nothing is published and the host's
    connect to that port is refused."""
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    probe.run(
        f"""
        import socket
        backdoor = socket.socket()
        backdoor.bind(('0.0.0.0', {port}))
        backdoor.listen()
        """
    )
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=3).close()
        network = inspect(container_of(probe))["NetworkSettings"]
        assert isinstance(network, dict)
        assert not network.get("Ports")
    finally:
        accepted = probe.ask(
            """
            import json
            backdoor.setblocking(False)
            try:
                backdoor.accept()
                accepted = True
            except BlockingIOError:
                accepted = False
            backdoor.close()
            print(json.dumps(accepted))
            """
        )
    assert accepted is False


# -- C. Filesystem ------------------------------------------------------------------------------


def test_c01_a_host_file_outside_the_mounts_does_not_exist_inside(
    probe: Session, probe_host: Host
) -> None:
    """C01: a canary the host wrote next to the work dir is not there for the kernel."""
    exists = probe.ask(
        f"import json, os; print(json.dumps(os.path.exists({str(probe_host.canary)!r})))"
    )

    assert probe_host.canary.read_text() == CANARY_TEXT
    assert exists is False


def test_c02_path_traversal_from_the_work_dir_stays_in_the_container(
    probe: Session, probe_host: Host
) -> None:
    """C02: '../canary.txt' from the work dir names the host's canary on the host, but in
    the kernel the work dir's parent is the container's, and the canary is not there."""
    assert (probe_host.workdir / ".." / probe_host.canary.name).read_text() == CANARY_TEXT
    outcome = probe.ask(
        f"""
        import json, os
        try:
            outcome = open(os.path.join(os.getcwd(), '..', {probe_host.canary.name!r})).read()
        except OSError as exc:
            outcome = type(exc).__name__
        print(json.dumps(outcome))
        """
    )

    assert outcome == "FileNotFoundError"


def test_c03_writing_outside_the_mounts_fails(probe: Session) -> None:
    """C03: the root file system is read-only: writes to /etc, /usr, site-packages and /opt
    fail with EROFS (EACCES under gVisor), and the engine records no change."""
    results = probe.ask(
        """
        import errno, json, sysconfig
        targets = ['/etc/pwned', '/usr/pwned', '/usr/local/pwned', '/pwned',
                   sysconfig.get_paths()['purelib'] + '/pwned.pth',
                   '/opt/jupyter-docker-kernel/pwned']
        results = {}
        for path in targets:
            try:
                with open(path, 'w') as fh:
                    fh.write('import os')
                results[path] = 'written'
            except OSError as exc:
                results[path] = errno.errorcode.get(exc.errno, str(exc))
        print(json.dumps(results))
        """
    )
    diff = subprocess.run(
        docker_argv(["diff", container_of(probe)]), capture_output=True, text=True, check=True
    ).stdout

    assert set(results.values()) <= {"EROFS", "EACCES"}, results
    assert "pwned" not in diff


def test_c04_files_left_in_tmp_and_home_are_gone_after_a_restart(
    hostile_kernel: str, tmp_path: Path
) -> None:
    """C04: /tmp, $HOME, an IPython startup file and usercustomize do not survive into the
    next kernel: each start is a fresh container with fresh tmpfs."""
    plant = """
        import json, os, site
        startup = os.path.expanduser('~/.ipython/profile_default/startup/00-pwn.py')
        custom = os.path.join(site.getusersitepackages(), 'usercustomize.py')
        planted = []
        for path, text in (('/tmp/PWNED', 'x'), (os.path.expanduser('~/PWNED'), 'x'),
                           (startup, "open('/tmp/PWNED-startup', 'w').close()"),
                           (custom, "open('/tmp/PWNED-custom', 'w').close()")):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as fh:
                fh.write(text)
            planted.append(path)
        print(json.dumps(planted))
        """
    with session_of(hostile_kernel, private_dir(tmp_path / "work"), tmp_path / "log") as session:
        planted = session.ask(plant)
        session.km.restart_kernel(now=False)
        session.kc.wait_for_ready(timeout=60)
        left = session.ask(
            f"""
            import json, os
            paths = {planted!r} + ['/tmp/PWNED-startup', '/tmp/PWNED-custom']
            print(json.dumps([p for p in paths if os.path.exists(p)]))
            """
        )

    assert len(planted) == 4
    assert left == []


def test_c05_a_planted_symlink_in_a_mounted_work_dir_resolves_inside_the_container(
    probe: Session,
) -> None:
    """C05: answers.csv -> the host canary (planted in the mounted work dir) does not lead
    to the host file: the link is resolved in the container, where no such path exists."""
    outcome = probe.ask(
        """
        import json
        try:
            outcome = open('answers.csv').read()
        except OSError as exc:
            outcome = type(exc).__name__
        print(json.dumps(outcome))
        """
    )

    assert outcome == "FileNotFoundError"


def test_c05_copy_workdir_copies_symlinks_as_links_never_their_targets(
    copied: Session, copy_host: Host
) -> None:
    """C05: with --copy-workdir, links to the host canary (absolute, relative) and to / are
    copied as links, not followed: through none of them does the canary's content show."""
    via_root = os.path.join("rootlink", str(copy_host.canary).lstrip("/"))
    found = copied.ask(
        f"""
        import json, os
        found = {{}}
        for link, path in (('answers.csv', 'answers.csv'), ('relative.csv', 'relative.csv'),
                           ('rootlink', {via_root!r})):
            try:
                with open(path) as fh:
                    content = fh.read()
            except OSError as exc:
                content = type(exc).__name__
            found[link] = [os.path.islink(link), content]
        print(json.dumps(found))
        """
    )

    # Only errors: FileNotFoundError, or under this gVisor IsADirectoryError, since it
    # resolves a path through a link to / as / itself (no escape either way).
    assert {link: islink for link, (islink, _) in found.items()} == dict.fromkeys(found, True)
    assert all(content.endswith("Error") for _, content in found.values()), found
    assert len(found) == 3


def test_c05_nothing_the_kernel_writes_in_its_copy_reaches_the_source(
    copied: Session, copy_host: Host
) -> None:
    """C05: --copy-workdir copies in, never back: new, changed and replaced files, and a
    link swapped for the canary's path, stay in the kernel's copy."""
    before = tree_digest(copy_host.workdir)
    copied.run(
        f"""
        import os
        open('new-file.txt', 'w').write('pwned')
        open('notes.txt', 'a').write('pwned')
        os.remove('answers.csv')
        open('answers.csv', 'w').write('pwned')
        os.symlink({str(copy_host.canary)!r}, 'planted-link')
        """
    )

    assert tree_digest(copy_host.workdir) == before
    assert copy_host.canary.read_text() == CANARY_TEXT


def test_c06_renames_and_link_swaps_in_the_copy_leave_the_host_unchanged(
    copy_kernel: str, copy_host: Host, tmp_path: Path
) -> None:
    """C06: a racer swapping a directory for a link to a host dir while the kernel runs, and
    still there at shutdown: no copy-out exists to race, and the cleanup (rmtree of the
    copy) does not follow the link into the host dir."""
    victim = tmp_path / "host-dir"
    victim.mkdir()
    (victim / "keep.txt").write_text(CANARY_TEXT)
    before_source = tree_digest(copy_host.workdir)
    before_victim = tree_digest(victim)
    with session_of(copy_kernel, copy_host.workdir, tmp_path / "log") as session:
        swaps = session.ask(
            f"""
            import json, os, time
            os.makedirs('out/d', exist_ok=True)
            open('out/d/result.txt', 'w').write('x')
            swaps, deadline = 0, time.monotonic() + 1
            while time.monotonic() < deadline:
                os.rename('out/d', 'out/d.real')
                os.symlink({str(victim)!r}, 'out/d')
                os.unlink('out/d')
                os.rename('out/d.real', 'out/d')
                swaps += 1
            os.rename('out/d', 'out/d.real')
            os.symlink({str(victim)!r}, 'out/d')   # left in place for the cleanup
            os.symlink({str(victim)!r}, 'victim')
            print(json.dumps(swaps))
            """
        )

    assert swaps > 0
    assert tree_digest(copy_host.workdir) == before_source
    assert tree_digest(victim) == before_victim


def test_c07_device_nodes_for_host_memory_and_disks_cannot_be_made_or_opened(
    probe: Session, runtime: Runtime
) -> None:
    """C07: no CAP_MKNOD: mknod fails under runc. gVisor lets mknod succeed in its tmpfs, but
    a node only names the Sentry's own devices: opening host memory or a disk fails."""
    results = probe.ask(
        """
        import errno, json, os, stat
        results = {}
        for name, kind, major, minor in (('mem', stat.S_IFCHR, 1, 1), ('sda', stat.S_IFBLK, 8, 0),
                                         ('vda', stat.S_IFBLK, 254, 0)):
            path = '/tmp/node-' + name
            try:
                os.mknod(path, kind | 0o666, os.makedev(major, minor))
            except OSError as exc:
                results[name] = 'mknod ' + errno.errorcode.get(exc.errno, str(exc))
                continue
            try:
                with open(path, 'rb') as fh:
                    fh.read(1)
                results[name] = 'opened'
            except OSError as exc:
                results[name] = 'open ' + errno.errorcode.get(exc.errno, str(exc))
            os.unlink(path)
        print(json.dumps(results))
        """
    )

    expected = "mknod EPERM" if runtime == "runc" else "open ENXIO"
    assert results == {"mem": expected, "sda": expected, "vda": expected}


def test_c07_a_fifo_in_the_source_dir_does_not_hang_copy_workdir(copied: Session) -> None:
    """C07: results.fifo in the source dir is skipped by the copy (a reader would block on
    it forever): the kernel starts in normal time and has no fifo in its copy."""
    exists = copied.ask("import json, os; print(json.dumps(os.path.lexists('results.fifo')))")

    assert exists is False
    assert copied.started_in < 30


@pytest.mark.parametrize(
    "target",
    [pytest.param("/etc/shadow", id="image-file"), pytest.param("protected.txt", id="host-file")],
)
def test_c08_hard_links_to_files_the_kernel_does_not_own_fail(probe: Session, target: str) -> None:
    """C08: a hard link to /etc/shadow fails (another file system), and one to a root-only
    host file in the work dir fails (protected_hardlinks)."""
    if target == "protected.txt" and os.getuid() != 0:
        pytest.skip("the kernel owns every file in its work dir unless the tests run as root")
    outcome = probe.ask(
        f"""
        import errno, json, os
        try:
            os.link({target!r}, 'hard-link')
            outcome = 'linked'
            os.unlink('hard-link')
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc))
        print(json.dumps(outcome))
        """
    )

    assert outcome in ("EXDEV", "EPERM")


def test_c09_c12_hostile_files_in_a_mounted_work_dir_do_not_break_the_host_side(
    hostile_kernel: str, tmp_path: Path
) -> None:
    """C09, C12: control characters, 255-byte and non-UTF-8 names, 200 nested dirs and a
    pickle that runs a command when loaded: the kernel keeps answering, the host lists the
    dir, the launcher shuts down cleanly and nothing unpickled the bomb."""
    workdir = private_dir(tmp_path / "work")
    marker = tmp_path / "HOST_PWNED"
    with session_of(hostile_kernel, workdir, tmp_path / "log") as session:
        session.run(
            f"""
            import os, pickle
            for name in {list(HOSTILE_NAMES)!r}:
                open(name, 'w').write('x')
            class Bomb:
                def __reduce__(self):
                    return (os.system, ('touch {marker}',))
            for name in ('results.pkl', 'results.pickle', '.otter_log'):
                pickle.dump(Bomb(), open(name, 'wb'))
            os.mkdir('deep')
            os.chdir('deep')
            for _ in range(200):
                os.mkdir('d')
                os.chdir('d')
            os.chdir({str(workdir)!r})
            """
        )
        answer = session.run("print(6 * 7)")
        names = set(os.listdir(workdir))
        launcher = launcher_process(session.km)

    assert answer == "42\n"
    assert set(HOSTILE_NAMES) <= names
    assert launcher.returncode == 0
    assert not marker.exists()


def test_c10_the_connection_file_cannot_be_rewritten(probe: Session) -> None:
    """C10: the in-container connection file is a read-only mount."""
    outcome = probe.ask(
        """
        import errno, json
        try:
            with open('/opt/jupyter-docker-kernel/kernel.json', 'w') as fh:
                fh.write('{"transport": "tcp", "ip": "203.0.113.7"}')
            outcome = 'written'
        except OSError as exc:
            outcome = errno.errorcode.get(exc.errno, str(exc))
        print(json.dumps(outcome))
        """
    )

    assert outcome == "EROFS"


#: What the launcher's log says of a socket the kernel replaced (the relay's refusal);
#: None on a node, where the relay connects to forwards of the sockets' pinned inodes,
#: never to what the kernel puts at their names (tests/node_suites.py).
REPLACED_SOCKET_SAID: str | None = "is not a socket"


def test_c10_a_replaced_kernel_socket_does_not_redirect_the_relay(
    hostile_kernel: str, tmp_path: Path
) -> None:
    """C10: the kernel swaps its shell socket for a link to a host socket; a new client
    connection is not relayed there (the relay refuses anything but a socket). gVisor does
    not even let the kernel delete the socket."""
    with (
        tempfile.TemporaryDirectory(prefix="jdk-") as short,  # AF_UNIX paths are short
        socket.socket(socket.AF_UNIX) as server,
        session_of(hostile_kernel, private_dir(tmp_path / "work"), tmp_path / "log") as session,
    ):
        host_socket = Path(short) / "host.sock"
        server.bind(str(host_socket))
        server.listen()
        server.setblocking(False)
        replaced = session.ask(
            f"""
            import json, os
            try:
                os.unlink('/run/jupyter-docker-kernel/k-1')
                os.symlink({str(host_socket)!r}, '/run/jupyter-docker-kernel/k-1')
                replaced = True
            except OSError:
                replaced = False
            print(json.dumps(replaced))
            """
        )
        shell_port = json.loads(Path(session.km.connection_file).read_text())["shell_port"]
        with socket.create_connection(("127.0.0.1", shell_port), timeout=5) as client:
            client.settimeout(5)
            with contextlib.suppress(OSError):
                client.recv(1)  # the relay closes it (runc) or the kernel greets (runsc)
        with pytest.raises(BlockingIOError):
            server.accept()
        log = session.log_text()

    if replaced and REPLACED_SOCKET_SAID:
        assert REPLACED_SOCKET_SAID in log


def test_c11_a_gradebook_in_a_mounted_work_dir_is_warned_about(probe: Session) -> None:
    """C11: the launcher logs that the kernel can change gradebook.db, and says what to use."""
    wait_until(lambda: "holds gradebook.db" in probe.log_text(), 5)

    assert "--copy-workdir" in probe.log_text()


def test_c11_with_copy_workdir_the_gradebook_is_untouched_by_the_kernel(
    copied: Session, copy_host: Host
) -> None:
    """C11: the kernel overwrites, truncates and deletes its copy of gradebook.db; the
    original is byte-identical."""
    copied.run(
        """
        import os
        open('gradebook.db', 'wb').write(b'pwned')
        os.truncate('gradebook.db', 0)
        os.remove('gradebook.db')
        """
    )

    assert (copy_host.workdir / "gradebook.db").read_bytes() == GRADEBOOK_BYTES


def test_c13_a_writable_mount_in_nbgraders_autograded_tree_is_refused(
    hostile_kernel: str, tmp_path: Path
) -> None:
    """C13: nbgrader runs a submission in autograded/<student>/<assignment> and then writes
    the graded notebook back there, following any link the kernel left in its place (to
    ../../../gradebook.db, say). A mount-mode kernel started there is refused before any
    container exists, with a message naming the safe set-ups; nothing in the course changes."""
    course = tmp_path / "course"
    (course / "gradebook.db").parent.mkdir()
    (course / "gradebook.db").write_bytes(GRADEBOOK_BYTES)
    submission = private_dir(course / "autograded" / "mallory" / "ps1")
    (submission / "ps1.ipynb").write_text("{}")
    before = tree_digest(course)
    log = tmp_path / "launcher.log"
    km = KernelManager(kernel_name=hostile_kernel)
    with log.open("w") as log_file:
        km.start_kernel(cwd=str(submission), stderr=log_file)
    try:
        launcher = launcher_process(km)
        code = launcher.wait(timeout=30)
        text = log.read_text(errors="replace")
        started = containers_of(kernel_key(km))
    finally:
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=True)
        km.cleanup_resources()

    assert code == 1, text
    assert started == []
    assert "Refusing to mount the work directory" in text, text
    assert "No container was started" in text
    assert "--for-nbgrader" in text
    assert "--copy-workdir" in text
    assert tree_digest(course) == before


def test_c12_hostile_names_in_the_source_dir_are_copied_intact(copied: Session) -> None:
    """C12: names with control characters, 255 bytes or invalid UTF-8 in a --copy-workdir
    source dir neither break the copy nor get mangled."""
    names = copied.ask(
        """
        import json, os
        print(json.dumps(sorted(os.fsencode(n).hex() for n in os.listdir('.'))))
        """
    )

    assert {os.fsencode(n).hex() for n in HOSTILE_NAMES} <= set(names)


DEEP = 1200


def remove_tree(root: Path) -> None:
    """Remove a tree without recursion (shutil.rmtree recurses once per level before 3.13)."""
    found: list[str] = []
    pending = [str(root)]
    while pending:
        path = pending.pop()
        found.append(path)
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            else:
                os.unlink(entry.path)
    for path in reversed(found):
        os.rmdir(path)


def rmtree_recurses(tmp: Path) -> bool:
    """Whether this Python's shutil.rmtree fails on a tree DEEP levels deep."""
    path = tmp / "deep-probe"
    path.mkdir()
    leaf = path
    for _ in range(DEEP):  # not os.makedirs: it recurses per level too
        leaf = leaf / "d"
        leaf.mkdir()
    try:
        shutil.rmtree(path)
    except RecursionError:
        remove_tree(path)
        return True
    return False


def test_c12_a_deep_tree_in_the_copy_does_not_stop_the_launchers_cleanup(
    copy_kernel: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """C12: the kernel nests 1200 dirs in its --copy-workdir copy. At shutdown the launcher
    still exits with the kernel's code and removes its runtime dir, which holds the HMAC key
    and the copy."""
    session = open_session(copy_kernel, private_dir(tmp_path / "src"), tmp_path / "log")
    base = Path(runtime_dir_of(session)).parent
    try:
        session.run(
            f"""
            import os
            os.mkdir('deep')
            os.chdir('deep')
            for _ in range({DEEP}):
                os.mkdir('d')
                os.chdir('d')
            os.chdir({str(tmp_path / "src")!r})
            """
        )
        launcher = launcher_process(session.km)
    finally:
        close_session(session)
    try:
        with contextlib.suppress(AssertionError):
            wait_until(lambda: not base.exists(), 5)

        assert launcher.returncode == 0
        assert not base.exists()
    finally:
        if base.exists():
            remove_tree(base)


def test_c12_the_kernels_raw_output_reaches_the_server_log_without_terminal_escapes(
    probe: Session,
) -> None:
    """C12: what a kernel writes to fd 2 is forwarded to the Jupyter server's log; control
    characters must arrive escaped, not as live ESC/OSC sequences."""
    probe.run("import os; os.write(2, b'\\x1b]0;owned\\x07\\x1b[2JC12-ESCAPES\\n')")
    with contextlib.suppress(AssertionError):
        wait_until(lambda: "C12-ESCAPES" in probe.log_text(), 5)

    assert "\x1b" not in probe.log_text()


def test_c13_the_kernels_raw_output_cannot_forge_server_log_lines(probe: Session) -> None:
    """C13: a kernel writes what looks like the Jupyter server's own log lines to its raw
    fd 1 and 2, after a newline and after a carriage return. In the server's log each line
    of it starts with the kernel's container name: none starts with `[I ` or `[W `."""
    marker = f"C13-FORGED-{os.urandom(4).hex()}"  # this run's lines only, if it is rerun
    probe.run(
        "import os\n"
        f"os.write(1, b'\\n[I 2026-12-02 03:00:00.000 ServerApp] {marker}\\n')\n"
        f"os.write(2, b'x\\r[W 2026-12-02 03:00:00.000 ServerApp] {marker}\\n')\n"
    )
    with contextlib.suppress(AssertionError):
        wait_until(lambda: probe.log_text().count(marker) >= 2, 5)
    forged = [line for line in probe.log_text().splitlines() if marker in line]

    assert len(forged) == 2
    assert not [line for line in forged if line.startswith(("[I ", "[W "))], forged


# -- D. Privileges, kernel attack surface, leaks ---------------------------------------------------


#: D01, D03 probes (also run through the broker, tests/test_broker.py): each prints one
#: JSON value on its last line.
CAPABILITIES = """\
import json
caps = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()
            if l.startswith('Cap'))
print(json.dumps(caps))
"""
NO_NEW_PRIVS = """\
import ctypes, json
print(json.dumps(ctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0)))
"""
BECOME_ROOT = """\
import json, os
outcomes = []
for call in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0]),
             lambda: os.setresuid(0, 0, 0)):
    try:
        call()
        outcomes.append('allowed')
    except OSError as exc:
        outcomes.append(type(exc).__name__)
print(json.dumps(outcomes))
"""


def test_d01_the_kernel_is_not_root(probe: Session, runtime: Runtime) -> None:
    """D01: the kernel's uid is the unprivileged one the launcher chose, never 0."""
    ids = probe.ask("import json, os; print(json.dumps([os.getuid(), os.geteuid(), os.getgid()]))")

    assert 0 not in ids
    assert ids[0] == kernel_uid(runtime)


def test_d01_the_kernel_has_no_capabilities(probe: Session) -> None:
    """D01: every capability set in /proc/self/status is empty."""
    caps = probe.ask(CAPABILITIES)

    assert "CapEff" in caps
    assert set(caps.values()) == {"0000000000000000"}


def test_d01_no_new_privileges_is_set(probe: Session) -> None:
    """D01: no_new_privs is 1 (prctl PR_GET_NO_NEW_PRIVS; gVisor's status file lacks it)."""
    value = probe.ask(NO_NEW_PRIVS)

    assert value == 1


def test_d02_the_image_has_no_setuid_or_setgid_files(spawner: Session) -> None:
    """D02: no file in the image carries a setuid or setgid bit."""
    found = spawner.run(
        "import subprocess\n"
        "print(subprocess.run('find / -xdev -type f -perm /6000 2>/dev/null', shell=True,"
        " capture_output=True, text=True).stdout, end='')",
        timeout=120,
    )

    assert found == ""


def test_d02_su_and_sudo_do_not_make_root(spawner: Session) -> None:
    """D02: `su` and `sudo` fail: there is no way to root through a helper binary."""
    result = spawner.ask(
        """
        import json, subprocess
        runs = [subprocess.run(cmd, shell=True, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=30)
                for cmd in ('su -c id root', 'sudo -n id')]
        print(json.dumps([[r.returncode, r.stdout] for r in runs]))
        """
    )

    for code, stdout in result:
        assert code != 0
        assert "uid=0" not in stdout


def test_d03_becoming_root_fails(probe: Session) -> None:
    """D03: setuid(0), setgid(0), setgroups([0]) and setresuid(0, 0, 0) all fail with EPERM."""
    outcomes = probe.ask(BECOME_ROOT)

    assert outcomes == ["PermissionError"] * 4


#: Run in a fresh single-threaded Python: unshare(CLONE_NEWUSER) needs one thread.
NAMESPACE_PROBE = """
import ctypes, errno, json
libc = ctypes.CDLL(None, use_errno=True)
def result(value):
    return value if value == 0 else errno.errorcode.get(ctypes.get_errno(), str(value))
unshared = result(libc.unshare(0x10000000 | 0x00020000))   # CLONE_NEWUSER | CLONE_NEWNS
mounted = result(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))
print(json.dumps([unshared, mounted]))
"""


@pytest.fixture(scope="module")
def namespaces(spawner: Session) -> list[Any]:
    """[unshare result, mount result] from NAMESPACE_PROBE."""
    result: list[Any] = spawner.ask(
        f"""
        import subprocess, sys
        print(subprocess.run([sys.executable, '-c', {NAMESPACE_PROBE!r}], capture_output=True,
                             text=True, check=True).stdout, end="")
        """
    )
    return result


def test_d04_mounting_fails_even_after_unshare(namespaces: list[Any]) -> None:
    """D04: mount(2) fails (EPERM), even from a new user and mount namespace."""
    _, mounted = namespaces

    assert mounted == "EPERM"


def test_d04_unshare_is_refused_under_runc_and_virtual_under_runsc(
    namespaces: list[Any], runtime: Runtime
) -> None:
    """D04: under runc seccomp and the missing CAP_SYS_ADMIN refuse unshare (EPERM). Under
    gVisor it succeeds inside the Sentry: a virtual namespace that grants nothing on the
    host (the mount above still fails)."""
    unshared, _ = namespaces

    assert unshared == ("EPERM" if runtime == "runc" else 0)


def test_d05_tracing_pid1_and_the_supervisor_does_not_stop_shutdown(
    hostile_kernel: str, tmp_path: Path
) -> None:
    """D05: the kernel PTRACE_ATTACHes to PID 1 and the supervisor (runc allows it: same uid,
    its own namespace; gVisor refuses); shutdown still removes the container."""
    session = open_session(hostile_kernel, private_dir(tmp_path / "work"), tmp_path / "log")
    try:
        session.run(
            """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            print([libc.ptrace(16, pid, None, None) for pid in (1, os.getppid())])
            """
        )
        key = kernel_key(session.km)
        launcher = launcher_process(session.km)
    finally:
        close_session(session)  # waits for the container to go

    assert containers_of(key) == []
    assert launcher.poll() is not None


def _start_and_get_launcher(kernel: str, tmp_path: Path) -> tuple[Session, subprocess.Popen[bytes]]:
    session = open_session(kernel, private_dir(tmp_path / "work"), tmp_path / "log")
    return session, launcher_process(session.km)


KILLS = {
    "pid1": "os.kill(1, signal.SIGKILL)",
    "supervisor": """
        for pid in filter(str.isdigit, os.listdir('/proc')):
            argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
            if not argv[0].endswith(b'docker-init') and argv[1].endswith(b'supervise.py'):
                os.kill(int(pid), signal.SIGKILL)
        """,
    "everything": "os.kill(-1, signal.SIGKILL)",
}


@pytest.mark.parametrize("target", list(KILLS))
def test_d06_killing_pid1_the_supervisor_or_everything_ends_cleanly(
    probe: Session, hostile_kernel: str, runtime: Runtime, target: str, tmp_path: Path
) -> None:
    """D06: SIGKILL to PID 1 is ignored under runc (a namespace's init is immune) and ends
    the container under gVisor; SIGKILL to the supervisor or to -1 ends it under both. An
    ended container is gone and its launcher exited within 5 s; other kernels never notice."""
    session, launcher = _start_and_get_launcher(hostile_kernel, tmp_path)
    key = kernel_key(session.km)
    try:
        session.kc.execute("import os, signal\n" + textwrap.dedent(KILLS[target]))
        if target == "pid1" and runtime == "runc":
            time.sleep(1)
            cmdline = session.ask(
                "import json; print(json.dumps(open('/proc/1/cmdline').read().split('\\0')[0]))"
            )
            assert cmdline == "/sbin/docker-init"
            assert containers_of(key, running_only=True)
        else:
            wait_until(lambda: launcher.poll() is not None, 5)
            wait_until(lambda: not containers_of(key), 5)
    finally:
        close_session(session)

    assert probe.run("print(6 * 7)") == "42\n"


class OutlivedItsLifetimeError(Exception):
    """The kernel's container was still there after --max-lifetime (and the grace)."""


def test_d06_stopping_the_supervisor_does_not_lift_the_lifetime_limit(
    kernel_image: str, runtime: Runtime, tmp_path: Path
) -> None:
    """D06 (and D05: a tracer stops its tracee the same way): SIGSTOP to the supervisor
    must not keep a kernel alive past --max-lifetime."""
    lifetime = 15  # room for a slow gVisor start before the cell runs
    name = install_hostile(
        "jdk-test-hostile-lifetime",
        kernel_image,
        runtime,
        *HOSTILE_LIMITS,
        "--max-lifetime",
        str(lifetime),
    )
    started = time.monotonic()
    session = open_session(name, private_dir(tmp_path / "work"), tmp_path / "log")
    key = kernel_key(session.km)
    try:
        state = session.ask(
            """
            import json, os, signal, time
            os.kill(os.getppid(), signal.SIGSTOP)
            for _ in range(100):  # the signal arrives asynchronously
                status = open(f'/proc/{os.getppid()}/status').read().splitlines()
                state = [line.split()[1] for line in status if line.startswith('State:')][0]
                if state == 'T':
                    break
                time.sleep(0.02)
            print(json.dumps(state))
            """
        )
        assert state == "T"
        # The lifetime, the supervisor's 2 s grace, and 5 s for the engine.
        deadline = lifetime + 2 + 5 - (time.monotonic() - started)
        try:
            wait_until(lambda: not containers_of(key), max(deadline, 0.1))
        except AssertionError as exc:
            raise OutlivedItsLifetimeError(f"{key} outlived --max-lifetime {lifetime}") from exc
    finally:
        close_session(session)


def test_d07_only_the_containers_processes_are_visible(probe: Session) -> None:
    """D07: /proc shows docker-init as PID 1, the supervisor and the kernel (plus the probe's
    own children): no host process, no host init."""
    procs = probe.ask(
        """
        import json, os
        procs = {}
        for pid in filter(str.isdigit, os.listdir('/proc')):
            try:
                procs[pid] = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[0].decode()
            except OSError:
                pass
        print(json.dumps(procs))
        """
    )

    assert procs["1"] == "/sbin/docker-init"
    assert len(procs) <= 5, procs
    assert not {"systemd", "/sbin/init", "/lib/systemd/systemd", "dockerd"} & set(procs.values())


def test_d07_the_hostname_is_the_containers(probe: Session) -> None:
    """D07: the kernel's hostname is 'kernel', not the host's."""
    name = probe.ask("import json, socket; print(json.dumps(socket.gethostname()))")

    assert name == "kernel"
    assert socket.gethostname() != "kernel"


def test_d07_masked_proc_and_sys_paths_reveal_nothing(probe: Session) -> None:
    """D07: kcore, keys, timer_list, sched_debug, sysrq-trigger are absent or empty,
    /sys/firmware is empty, and kallsyms (if present) hides every address."""
    found = probe.ask(
        """
        import json, os
        found = {}
        for path in ('/proc/kcore', '/proc/keys', '/proc/timer_list', '/proc/sched_debug',
                     '/proc/sysrq-trigger'):
            try:
                with open(path, 'rb') as fh:
                    found[path] = len(fh.read(4096))
            except OSError:
                found[path] = 0
        found['/sys/firmware'] = len(os.listdir('/sys/firmware'))
        try:
            found['kallsyms'] = sum(line.split()[0].strip(b'0') != b''
                                    for line in open('/proc/kallsyms', 'rb'))
        except OSError:
            found['kallsyms'] = 0
        print(json.dumps(found))
        """
    )

    assert set(found.values()) == {0}, found


def test_d08_the_hosts_environment_does_not_reach_the_kernel(probe: Session) -> None:
    """D08: the canary set in the host's environment at start, Jupyter's and Docker's
    variables are absent; HOME is the container's. (JPY_PARENT_PID is the supervisor's
    in-container pid, set on purpose.)"""
    env = probe.ask("import json, os; print(json.dumps(dict(os.environ)))")
    leaked = [
        name
        for name in env
        if name == CANARY_ENV
        or CANARY_TEXT in env[name]
        or name.startswith(("JUPYTER", "DOCKER", "IPYTHON", "XDG_"))
        or (name.startswith("JPY_") and name != "JPY_PARENT_PID")
    ]

    assert leaked == []
    assert env["HOME"] == "/home/kernel"
    assert int(env["JPY_PARENT_PID"]) < 100


#: (name, x86_64 number, aarch64 number): syscalls that reach kernel state no namespace covers.
SYSCALLS = [
    ("keyctl", 250, 219),
    ("add_key", 248, 217),
    ("bpf", 321, 280),
    ("perf_event_open", 298, 241),
    ("userfaultfd", 323, 282),
    ("kexec_load", 246, 104),
    ("io_uring_setup", 425, 425),
    ("io_uring_enter", 426, 426),
    ("io_uring_register", 427, 427),
]


@pytest.mark.parametrize(("name", "x86_64", "aarch64"), SYSCALLS, ids=[s[0] for s in SYSCALLS])
def test_d09_syscalls_into_unnamespaced_kernel_state_are_blocked(
    probe: Session,
    runtime: Runtime,
    name: str,
    x86_64: int,
    aarch64: int,
) -> None:
    """D09: under runc seccomp answers EPERM (or ENOSYS) before the host kernel sees the call;
    under gVisor the Sentry implements or refuses it, and it must fail."""
    machine = platform.machine()
    if machine not in ("x86_64", "aarch64"):
        pytest.skip(f"no syscall numbers for {machine}")
    number = x86_64 if machine == "x86_64" else aarch64
    outcome = probe.ask(
        f"""
        import ctypes, errno, json
        libc = ctypes.CDLL(None, use_errno=True)
        value = libc.syscall({number}, 0, 0, 0, 0, 0)
        print(json.dumps([value, errno.errorcode.get(ctypes.get_errno(), '')]))
        """
    )
    value, code = outcome

    assert value == -1
    if runtime == "runc":
        assert code in ("EPERM", "ENOSYS")


def test_d10_only_the_minimal_devices_exist(probe: Session, runtime: Runtime) -> None:
    """D10: /dev holds the minimal set (plus gVisor's virtual fuse and net/tun under runsc)
    and no block device; the host's disks, memory, kmsg, kvm and vsock are absent."""
    found = probe.ask(
        """
        import json, os, stat
        blocks = [os.path.join(d, n) for d, _, ns in os.walk('/dev') for n in ns
                  if stat.S_ISBLK(os.lstat(os.path.join(d, n)).st_mode)]
        host = [p for p in ('/dev/mem', '/dev/kmsg', '/dev/sda', '/dev/vda', '/dev/kvm',
                            '/dev/vsock', '/dev/vhost-vsock') if os.path.exists(p)]
        print(json.dumps([sorted(os.listdir('/dev')), blocks, host]))
        """
    )
    listing, blocks, host = found

    allowed = MINIMAL_DEV | (GVISOR_DEV if runtime != "runc" else set())
    assert set(listing) <= allowed
    assert blocks == []
    assert host == []


def test_d11_writing_proc_sys_fails(probe: Session) -> None:
    """D11: /proc/sys and /proc/sysrq-trigger cannot be written; the host's values stay."""
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    results = probe.ask(
        """
        import errno, json
        results = {}
        for path in ('/proc/sys/kernel/core_pattern', '/proc/sys/kernel/hostname',
                     '/proc/sys/vm/drop_caches', '/proc/sysrq-trigger'):
            try:
                with open(path, 'w') as fh:
                    fh.write('|/tmp/pwn' if 'core' in path else '1')
                results[path] = 'written'
            except OSError as exc:
                results[path] = errno.errorcode.get(exc.errno, str(exc))
        print(json.dumps(results))
        """
    )

    assert "written" not in results.values(), results
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern


def test_d11_setting_the_clock_fails(probe: Session) -> None:
    """D11: clock_settime is refused (no CAP_SYS_TIME)."""
    outcome = probe.ask(
        """
        import json, time
        try:
            time.clock_settime(time.CLOCK_REALTIME, 0)
            outcome = 'set'
        except OSError as exc:
            outcome = type(exc).__name__
        print(json.dumps(outcome))
        """
    )

    assert outcome == "PermissionError"


SET_ID_ROUTES = """
import ctypes, json, os, platform, stat, subprocess
libc = ctypes.CDLL(None, use_errno=True)
os.umask(0)
os.makedirs('setid/hidden', exist_ok=True)
where = os.path.abspath('setid/hidden')
at = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
raw = {'x86_64': {'chmod': 90, 'creat': 85, 'open': 2, 'mknod': 133, 'fchmodat2': 452},
       'aarch64': {'fchmodat2': 452}}.get(platform.machine(), {})

def fresh(name):
    path = os.path.join(where, name)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o755))
    return path

def syscall(name, *args):
    value = libc.syscall(raw[name], *args)
    if value == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return value

def tmpfile(path, mode):
    fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, mode)
    os.link(f'/proc/self/fd/{fd}', path)

routes = {
    'chmod': lambda p, m: os.chmod(fresh(p), m),
    'fchmod': lambda p, m: os.fchmod(os.open(fresh(p), os.O_RDONLY), m),
    'fchmodat': lambda p, m: (fresh(p), os.chmod(os.path.basename(p), m, dir_fd=at)),
    'open': lambda p, m: os.close(os.open(os.path.join(where, p), os.O_CREAT | os.O_WRONLY, m)),
    'openat': lambda p, m: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, m, dir_fd=at)),
    'o_tmpfile': lambda p, m: tmpfile(os.path.join(where, p), m),
    'mknod': lambda p, m: os.mknod(os.path.join(where, p), stat.S_IFREG | m),
    'mknodat': lambda p, m: os.mknod(p, stat.S_IFREG | m, dir_fd=at),
    'shell chmod': lambda p, m: subprocess.run(
        ['chmod', f'{m:o}', fresh(p)], check=True, capture_output=True),
    'install -m': lambda p, m: subprocess.run(
        ['install', '-m', f'{m:o}', '/bin/true', os.path.join(where, p)],
        check=True, capture_output=True),
}
def path_of(p):
    return os.path.join(where, p).encode()

raw_routes = {
    'chmod': lambda p, m: syscall('chmod', fresh(p).encode(), m),
    'fchmodat2': lambda p, m: syscall('fchmodat2', at, fresh(p).encode(), m, 0),
    'creat': lambda p, m: os.close(syscall('creat', path_of(p), m)),
    'open': lambda p, m: os.close(syscall('open', path_of(p), os.O_CREAT | os.O_WRONLY, m)),
    'mknod': lambda p, m: syscall('mknod', path_of(p), stat.S_IFREG | m, 0),
}
routes.update(('raw ' + name, raw_routes[name]) for name in raw)
outcome = {}
for route, make in routes.items():
    for mode in (0o4755, 0o2755):
        name = f"{route.replace(' ', '_')}-{mode:o}"
        try:
            make(name, mode)
            outcome[name] = 'no error'
        except (OSError, subprocess.CalledProcessError) as exc:
            outcome[name] = type(exc).__name__
set_inside = sorted(
    n for n in os.listdir(where) if os.lstat(os.path.join(where, n)).st_mode & 0o6000)
# Hidden the way the attack hid it: a directory other users can enter but not list.
os.chmod(where, 0o311)
print(json.dumps([outcome, set_inside]))
"""


def test_d12_no_setuid_or_setgid_file_can_be_made_in_the_mounted_work_dir(
    probe: Session, probe_host: Host
) -> None:
    """D12: in mount mode the kernel tries every route to a set-id file in its work dir
    (chmod, fchmod, fchmodat, fchmodat2, creat, open, openat, O_TMPFILE + link, mknod,
    mknodat, the chmod and install tools), hidden in a 0311 directory. A file owned by the
    launching user with S_ISUID on the host would make any local user who runs it that user.
    The host sees no entry with mode & 0o6000: runc's seccomp profile refuses such modes,
    and under gVisor (which ignores the engine's profile) the supervisor's own filter does."""
    made = probe_host.workdir / "setid"
    try:
        outcome, set_inside = probe.ask(SET_ID_ROUTES, timeout=120)
        on_host = [
            os.path.join(dirpath, name)
            for dirpath, dirnames, filenames in os.walk(made, onerror=_raise)
            for name in [*dirnames, *filenames]
            if os.lstat(os.path.join(dirpath, name)).st_mode & 0o6000
        ]
    finally:
        shutil.rmtree(made, ignore_errors=True)

    assert len(outcome) >= 20, outcome
    assert on_host == [], outcome
    assert set_inside == []


def _raise(exc: OSError) -> None:
    raise exc


# -- G. Runtime ------------------------------------------------------------------------------------


def test_g01_the_kernel_runs_under_the_requested_runtime(probe: Session, runtime: Runtime) -> None:
    """G01: under runsc the kernel sees gVisor's kernel release, not the host's; under runc
    it sees the host's."""
    release = probe.ask("import json, platform; print(json.dumps(platform.release()))")

    if runtime == "runc":
        assert release == os.uname().release
    else:
        assert release != os.uname().release


def test_g01_setup_refuses_a_runtime_the_engine_does_not_have(
    kernel_image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """G01: `setup --runtime nonexistent` fails closed: exit 1 and no kernelspec."""
    name = "jdk-test-no-such-runtime"
    spec = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernels" / name

    code = cli.main(
        ["setup", "--name", name, "--image", kernel_image, "--user", "--runtime", "nonexistent"]
    )

    assert code == 1
    assert not spec.exists()
    assert "nonexistent" in capsys.readouterr().err
