"""A kernel pod's channels: fixed TCP ports, CurveZMQ keys, the Secret's connection file,
the client's connection info, and waiting until the kernel answers over them.

The Kubernetes backend calls this module; nothing here talks to the API server. Per kernel
start it calls `KernelKeys.generate()`, puts `pod_connection(keys)` in the kernel's Secret
as the connection file (kube_manifests mounts it read-only at hardening.CONNECTION_TARGET),
adds `supervisor_args()` to the supervisor's options and runs `kernel_command(settings)`
after them, and once the pod is Running and its IP known, calls `wait_until_ready(
client_connection(keys, pod_ip), timeout=...)` before it hands `client_connection(...)` to
jupyter_client. docs/kubernetes.md ("The channels") says what was run against what.

How the channels are encrypted (jupyter_client 8.9+, ipykernel 7; the default image has
ipykernel 7.4.0, pyzmq 27.3 on libzmq 4.3.5 with CURVE):

- The connection file carries the kernel's Curve server key pair as two Z85 strings,
  `curve_publickey` and `curve_secretkey`, next to `key` (the HMAC key). ipykernel loads
  both (IPKernelApp.load_connection_file) and makes its shell, stdin, control, iopub and
  heartbeat sockets Curve servers (`_apply_curve_server_options`). Nothing else enables
  it: no command-line flag, no kernelspec field (ipykernel's own kernelspec declares
  `metadata.supported_encryption: ["curve"]`, which only KernelManager's
  `transport_encryption` reads, to generate keys for a local kernel).
- jupyter_client's client (ConnectionFileMixin._create_connected_socket) uses the same
  pair as its own client pair and the public key as the server key; its heartbeat uses a
  fresh client pair. So the connection info a jupyter_client client gets must carry the
  kernel's secret key too (`client_connection`). The kernel authenticates no client key
  (no ZAP handler): Curve hides the traffic and proves the kernel's identity; the HMAC
  key still decides whose messages the kernel executes. Anyone who knows the kernel's
  public key may complete the handshake and SUBSCRIBE to iopub without the HMAC key, so
  the public key is kept as secret as the rest (only in the Secret and the server's 0600
  connection file), and the NetworkPolicy admits only the server's pods.
  `connect_channel` is the product's own client: the server's public key and a fresh
  client key pair, nothing else.

Why `BlockingKernelClient.wait_for_ready()` right after launch failed within about 1 s
with Curve on and not without (issue 15), found by running the pod's container:

1. ipykernel 7.4 rewrites its connection file at every start when it holds Curve keys:
   `write_connection_file` merges its info into the file's and writes unless they are
   equal, and it compares the file's `curve_publickey` (a str from JSON) with its own
   (bytes), so they never are (it converts only `key`). On a read-only file (our mounted
   connection file, a Secret) that is `OSError: [Errno 30] Read-only file system`, raised
   after the sockets were bound: the kernel exits, its heartbeat stops answering, and
   wait_for_ready says "Kernel died before replying to kernel_info" at about 1 s. Without
   Curve keys the file compares equal and is not written. Fix: the supervisor copies the
   Secret's file to a private 0600 copy on the pod's tmpfs (`--connection-copy`), and the
   kernel reads the copy.
2. Independently of Curve: a client made without a KernelManager judges the kernel's life
   by its heartbeat, whose first window (HBChannel.time_to_dead, 1 s) starts at
   start_channels, not when the kernel listens. A kernel that is not serving within about
   1 s of that is declared dead, with and without Curve alike. Measured here, the client
   started right after `docker run` returned: a bare kernel delayed by 0.8 s failed in 3
   of 6 runs, by 0.9 s in 5 of 6; the pod's own container (supervisor, usage hook, first
   reply 2.0 s after `docker run`, median of 5) failed in 4 of 6, 2 of 3 with Curve and 2
   of 3 without. A pod that is Running is not yet a kernel that listens, and a SYN dropped
   before a NetworkPolicy is in place would cost a 1 s retransmission. Fix:
   `wait_until_ready` waits for the kernel itself, with no heartbeat verdict: one
   kernel_info_request at a time, at most one per READY_INTERVAL, sent only over a
   connection whose Curve handshake has completed (ZMQ_IMMEDIATE, so nothing queues
   before it), until a signed kernel_info_reply comes back or the timeout passes; only
   then does a client see the connection info, and its wait_for_ready answers at once.

Signals (interrupt_mode "signal"): the server's Role has no pods/exec and nothing may
connect out of the pod, so the supervisor serves signal requests on one more fixed port,
SIGNAL_PORT, protected as the channels are: CurveZMQ with the kernel's key pair (no
handshake without its public key) and, per request, an HMAC of the kernel's key over a
nonce the supervisor has just issued (no request without the HMAC key, none replayed).
`send_signal` is the client; _supervise.SignalGate the check; the NetworkPolicy admits
the server's pods on this port as on the five.

No message is dropped by the handshake itself: libzmq queues on a pipe that exists from
connect() on and delivers after the handshake; with CURVE, a connection to a port not
yet bound is retried every 100 ms (ZMQ_RECONNECT_IVL) as without it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils import monitor

from jupyter_docker_kernel import hardening
from jupyter_docker_kernel._supervise import signal_mac
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.settings import CONNECTION_FILE_PLACEHOLDER, KernelSettings

#: The five channels in the launcher's order (hardening numbers them 1..5 the same way).
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
#: Fixed ports in the pod's own network namespace: the same numbers the local tcp bridge
#: uses on a container's loopback. A NetworkPolicy and a client need to know them in
#: advance; each pod has its own IP, so fixed ports never collide.
PORTS: Mapping[str, int] = {
    name: hardening.BRIDGE_PORT_BASE + index for index, name in enumerate(CHANNELS, start=1)
}
#: The supervisor's signal port (--signal-port), right after the channels' (40006).
SIGNAL_PORT = hardening.BRIDGE_PORT_BASE + len(CHANNELS) + 1
#: How long send_signal waits for the handshake and each answer.
SIGNAL_TIMEOUT = 5.0
#: The kernel binds every interface of its pod (its own network namespace).
BIND_IP = "0.0.0.0"  # noqa: S104 - the pod's own namespace; the NetworkPolicy admits the server
#: The connection file the kernel reads: the supervisor's private copy on the pod's /tmp
#: (ipykernel 7 rewrites a file holding Curve keys; see the module docstring).
KERNEL_CONNECTION = "/tmp/.jupyter-docker-kernel/kernel.json"  # noqa: S108 - the pod's tmpfs
SIGNATURE_SCHEME = "hmac-sha256"
#: wait_until_ready: at most one kernel_info_request per this many seconds.
READY_INTERVAL = 0.5


@dataclass(frozen=True)
class KernelKeys:
    """One kernel's secrets: the HMAC key and its Curve server key pair (Z85 text).

    repr shows none of them: they end up in logs otherwise.
    """

    key: str = field(repr=False)
    curve_public: str = field(repr=False)
    curve_secret: str = field(repr=False)

    @classmethod
    def generate(cls) -> KernelKeys:
        """Fresh keys for one kernel (per start: a restart gets new ones with a new Secret)."""
        public, secret = zmq.curve_keypair()
        return cls(
            key=secrets.token_hex(32), curve_public=public.decode(), curve_secret=secret.decode()
        )

    def curve_fields(self) -> dict[str, str]:
        """The connection file's Curve fields (what ipykernel 7 and jupyter_client 8.9+ read)."""
        return {"curve_publickey": self.curve_public, "curve_secretkey": self.curve_secret}


def _connection(keys: KernelKeys, ip: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "transport": "tcp",
        "ip": ip,
        "key": keys.key,
        "signature_scheme": SIGNATURE_SCHEME,
        **keys.curve_fields(),
    }
    for name, port in PORTS.items():
        info[f"{name}_port"] = port
    return info


def pod_connection(keys: KernelKeys) -> dict[str, Any]:
    """The connection file the kernel reads in its pod (the Secret's kernel.json): TCP on
    every address of its own pod at PORTS, the HMAC key and its Curve server key pair."""
    return _connection(keys, BIND_IP)


def client_connection(keys: KernelKeys, ip: str) -> dict[str, Any]:
    """The connection info for jupyter_client clients of the kernel at `ip` (the pod's IP).

    It carries the kernel's key pair, which jupyter_client 8.9+ clients use as their own
    client pair (see the module docstring); the provisioner returns it from launch_kernel,
    and KernelManager writes it to the server's 0600 connection file as for any kernel.
    """
    return _connection(keys, ip)


def supervisor_args() -> list[str]:
    """The supervisor's options a kernel pod needs for its channels (kube_manifests'
    pod_command puts them before `--`): copy the Secret's connection file, mounted
    read-only at hardening.CONNECTION_TARGET, to KERNEL_CONNECTION before the kernel
    starts (ipykernel 7 rewrites a file holding Curve keys; see the module docstring), and
    serve signal requests on SIGNAL_PORT with that file's keys (send_signal)."""
    return [
        "--connection-copy",
        f"{hardening.CONNECTION_TARGET}={KERNEL_CONNECTION}",
        "--signal-port",
        f"{SIGNAL_PORT}={hardening.CONNECTION_TARGET}",
    ]


def kernel_command(settings: KernelSettings) -> list[str]:
    """The kernel's argv in a pod: settings.command() reading the supervisor's copy of
    the connection file (hardening.kernel_command names the read-only original)."""
    return [a.replace(CONNECTION_FILE_PLACEHOLDER, KERNEL_CONNECTION) for a in settings.command()]


def channel_url(info: Mapping[str, Any], channel: str) -> str:
    """tcp://IP:PORT of one channel."""
    return f"tcp://{info['ip']}:{int(info[f'{channel}_port'])}"


#: The socket type a client uses on each channel (jupyter_client's channel_socket_types).
CLIENT_SOCKET_TYPES: Mapping[str, int] = {
    "shell": zmq.DEALER,
    "iopub": zmq.SUB,
    "stdin": zmq.DEALER,
    "control": zmq.DEALER,
    "hb": zmq.REQ,
}


def connect_channel(
    context: Any,
    info: Mapping[str, Any],
    channel: str,
    *,
    immediate: bool = True,
    connect: bool = True,
    socket_type: int | None = None,
) -> Any:
    """A zmq socket connected to one channel as a Curve client: the kernel's public key
    from `info` and a fresh client key pair; the kernel's secret key is not used.

    immediate (ZMQ_IMMEDIATE): nothing is queued for a connection whose handshake has
    not completed, so a send with no kernel behind it fails at once (zmq.Again with a
    zero send timeout) instead of piling up requests to deliver later. connect=False:
    the caller connects (to channel_url), after attaching a monitor, say. socket_type:
    another type than a client's (kube_proxy's DEALER for hb, XSUB for iopub).
    """
    sock = context.socket(CLIENT_SOCKET_TYPES[channel] if socket_type is None else socket_type)
    sock.linger = 0
    sock.immediate = int(immediate)
    public, secret = zmq.curve_keypair()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = str(info["curve_publickey"]).encode()
    if sock.type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    if connect:
        sock.connect(channel_url(info, channel))
    return sock


class _Progress:
    """What a channel's monitor saw: TCP connections, completed handshakes, failures.

    Only for the error message: it tells an unreachable pod from a key that does not match
    (connections without handshakes) from an HMAC key that does not (handshakes, no reply).
    """

    def __init__(self, sock: Any) -> None:
        self.events = sock.get_monitor_socket()
        self.connected = 0
        self.handshakes = 0
        self.failures = 0

    def drain(self) -> None:
        while self.events.poll(0):
            event = monitor.recv_monitor_message(self.events)["event"]
            if event == zmq.EVENT_CONNECTED:
                self.connected += 1
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshakes += 1
            elif event in (
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            ):
                self.failures += 1

    def seen(self) -> str:
        self.drain()
        if not self.connected:
            return "No TCP connection to it was accepted"
        if not self.handshakes:
            return (
                f"{self.connected} TCP connections, but no Curve handshake completed (the "
                "kernel's Curve public key is not the one in its Secret?)"
            )
        return (
            "The Curve handshake completed, but no signed kernel_info_reply came back (the "
            "kernel is still starting, or its HMAC key differs?)"
        )


def wait_until_ready(
    info: Mapping[str, Any],
    *,
    timeout: float,
    interval: float = READY_INTERVAL,
    alive: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Block until the kernel at info's IP answers kernel_info over its Curve shell
    channel; returns the reply's content.

    The Kubernetes backend calls it once the pod is Running, before the connection info
    reaches any client (the module docstring says why a client's own wait_for_ready is
    not enough). `alive`, if given, is asked between requests (the pod's phase): False
    ends the wait at once. Raises LaunchError on timeout, saying what the channel saw.
    """
    from jupyter_client.session import Session

    session = Session(key=str(info["key"]).encode(), signature_scheme=info["signature_scheme"])
    context = zmq.Context()
    sock = connect_channel(context, info, "shell", connect=False)
    sock.sndtimeo = 0
    progress = _Progress(sock)  # before connect(): a quick first connection is counted too
    sock.connect(channel_url(info, "shell"))
    deadline = time.monotonic() + timeout
    asked: set[str] = set()
    try:
        while True:
            try:
                msg = session.send(sock, "kernel_info_request")
                if msg is not None:
                    asked.add(msg["header"]["msg_id"])
            except zmq.Again:
                pass  # no connection with a completed handshake yet: nothing was queued
            next_ask = time.monotonic() + interval
            while (wait := min(next_ask, deadline) - time.monotonic()) > 0:
                if not sock.poll(int(wait * 1000) + 1):
                    continue
                try:
                    _, frames = session.feed_identities(sock.recv_multipart())
                    reply = session.deserialize(frames)
                except ValueError:
                    continue  # unsigned or badly signed: not the kernel's answer to us
                parent = reply["parent_header"].get("msg_id")
                if reply["msg_type"] == "kernel_info_reply" and parent in asked:
                    content: dict[str, Any] = reply["content"]
                    return content
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"The kernel at {info['ip']} did not answer kernel_info over its Curve "
                    f"shell channel (port {info['shell_port']}) within {timeout:g} s",
                    "Its connection info was not handed to a client",
                    "Check that the pod is Running, that the NetworkPolicy admits this "
                    "server on the kernel's ports, and the kernel's output (kubectl logs)",
                    detail=progress.seen(),
                )
            if alive is not None and not alive():
                raise LaunchError(
                    f"The kernel at {info['ip']} ended before it answered kernel_info",
                    "Its connection info was not handed to a client",
                    "See the kernel's output (kubectl logs) for why",
                    detail=progress.seen(),
                )
    finally:
        sock.disable_monitor()
        progress.events.close(linger=0)
        sock.close(linger=0)
        context.term()


def send_signal(
    info: Mapping[str, Any], name: str, *, timeout: float = SIGNAL_TIMEOUT, port: int | None = None
) -> None:
    """Ask the supervisor of the kernel at info's IP to send signal `name` ("INT") to the
    kernel's process group, over SIGNAL_PORT (or `port`): Curve with the kernel's public
    key, then a challenge and the request signed with the kernel's HMAC key (see the
    module docstring). KubeBackend.signal calls it for Container.interrupt. Raises
    LaunchError when the supervisor cannot be reached or refuses."""
    url = f"tcp://{info['ip']}:{port or SIGNAL_PORT}"
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.immediate = 1  # POLLOUT only once a Curve handshake has completed
    public, secret = zmq.curve_keypair()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = str(info["curve_publickey"]).encode()
    deadline = time.monotonic() + timeout

    def exchange(frames: list[bytes]) -> list[bytes]:
        for event in (zmq.POLLOUT, zmq.POLLIN):
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1, event):
                raise LaunchError(
                    f"The supervisor of the kernel at {info['ip']} did not answer a signal "
                    f"request on {url} within {timeout:g} s",
                    f"SIG{name} was not sent",
                    "Check that the NetworkPolicy admits this server on the kernel pod's "
                    f"port {port or SIGNAL_PORT}, or interrupt by message (setup "
                    "--interrupt-mode message)",
                )
            if event == zmq.POLLOUT:
                sock.send_multipart(frames)
        return list(sock.recv_multipart())

    try:
        sock.connect(url)
        challenge = exchange([b"challenge"])
        if len(challenge) != 2 or challenge[0] != b"nonce":
            raise LaunchError(f"The supervisor at {url} sent no nonce", f"SIG{name} was not sent")
        nonce = challenge[1]
        mac = signal_mac(str(info["key"]).encode(), name.encode(), nonce)
        answer = exchange([b"signal", name.encode(), nonce, mac])
        if answer != [b"ok"]:
            raise LaunchError(
                f"The supervisor at {url} refused the request for SIG{name}",
                "No signal was sent",
                "The kernel's HMAC key in this server's connection info is not the pod's?",
            )
    finally:
        sock.close(linger=0)
        context.term()
