"""kube_proxy.ChannelProxy against a stand-in pod: five CurveZMQ server sockets in this
process (what ipykernel 7 binds in a pod with Curve keys), and plain clients on the
proxy's loopback endpoints (what jupyter_client connects from an argv kernel's connection
file). The whole story with a real kernel in a simulated pod: tests/test_kube_argv_story.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from jupyter_docker_kernel import kube_channels
from jupyter_docker_kernel.endpoints import Endpoint, listen
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.kube_proxy import DROP_GRACE, ChannelProxy
from jupyter_docker_kernel.notice import notice_messages

POD_TYPES = {"shell": zmq.ROUTER, "iopub": zmq.XPUB, "stdin": zmq.ROUTER,
             "control": zmq.ROUTER, "hb": zmq.ROUTER}  # fmt: skip
HOST_CLIENT_TYPES = {"shell": zmq.DEALER, "iopub": zmq.SUB, "stdin": zmq.DEALER,
                     "control": zmq.DEALER, "hb": zmq.REQ}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Pod:
    """A stand-in kernel pod: Curve server sockets on loopback."""

    def __init__(self, context: Any) -> None:
        public, secret = zmq.curve_keypair()
        self.info: dict[str, Any] = {"ip": "127.0.0.1", "curve_publickey": public.decode()}
        self.socks: dict[str, Any] = {}
        for channel, kind in POD_TYPES.items():
            sock = context.socket(kind)
            sock.linger = 0
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            self.info[f"{channel}_port"] = sock.bind_to_random_port("tcp://127.0.0.1")
            self.socks[channel] = sock

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=0)


class Setup:
    def __init__(self, **meters: Any) -> None:
        self.context: Any = zmq.Context()
        self.pod = Pod(self.context)
        self.violations: list[str] = []
        self.connection: dict[str, Any] = {"transport": "tcp", "ip": "127.0.0.1", "key": "k"}
        for channel in kube_channels.CHANNELS:
            self.connection[f"{channel}_port"] = free_port()
        self.proxy = ChannelProxy(on_violation=self.violations.append, **meters)
        self.proxy.bind(self.connection)
        self.proxy.connect(self.pod.info)
        self.clients: dict[str, Any] = {}

    def client(self, channel: str, identity: bytes = b"") -> Any:
        """A plain client on the proxy's endpoint (identity: jupyter_client sets its
        session id on shell and stdin)."""
        sock = self.context.socket(HOST_CLIENT_TYPES[channel])
        sock.linger = 0
        if identity:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.rcvtimeo = 5000
        if channel == "iopub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(f"tcp://127.0.0.1:{self.connection[f'{channel}_port']}")
        self.clients[channel] = sock
        return sock

    def close(self) -> None:
        self.proxy.close()
        for sock in self.clients.values():
            sock.close(linger=0)
        self.pod.close()
        self.context.term()


@pytest.fixture
def setup() -> Iterator[Setup]:
    made = Setup()
    yield made
    made.close()


def recv(sock: Any) -> list[bytes]:
    assert sock.poll(5000), "nothing came"
    frames: list[bytes] = sock.recv_multipart()
    return frames


def test_a_shell_request_and_its_reply_pass_unchanged_with_the_clients_identity(
    setup: Setup,
) -> None:
    client = setup.client("shell", b"client-1")
    client.send_multipart([b"<IDS|MSG>", b"sig", b"header"])
    proxy_id, client_id, *message = recv(setup.pod.socks["shell"])
    assert (client_id, message) == (b"client-1", [b"<IDS|MSG>", b"sig", b"header"])
    setup.pod.socks["shell"].send_multipart([proxy_id, client_id, b"<IDS|MSG>", b"reply"])
    assert recv(client) == [b"<IDS|MSG>", b"reply"]


def test_stdin_reaches_the_client_through_the_shell_requests_identity(setup: Setup) -> None:
    """ipykernel sends input_request to the identity its shell request came from: the
    proxy's shell and stdin DEALERs must be one identity to the pod."""
    shell, stdin = setup.client("shell", b"session"), setup.client("stdin", b"session")
    stdin.send_multipart([b"hello"])  # connects the stdin path, as a client's first reply
    shell.send_multipart([b"<IDS|MSG>", b"execute"])
    proxy_id, *_ = recv(setup.pod.socks["shell"])
    pod_stdin = setup.pod.socks["stdin"]
    recv(pod_stdin)
    pod_stdin.send_multipart([proxy_id, b"session", b"<IDS|MSG>", b"input_request"])
    assert recv(stdin) == [b"<IDS|MSG>", b"input_request"]


def test_iopub_subscriptions_go_up_to_the_pod_and_its_messages_come_down(setup: Setup) -> None:
    """A client's SUBSCRIBE reaches the kernel's XPUB (which answers it with its welcome)."""
    sub = setup.client("iopub")
    assert recv(setup.pod.socks["iopub"]) == [b"\x01"]
    setup.pod.socks["iopub"].send_multipart([b"kernel.status", b"<IDS|MSG>", b"busy"])
    assert recv(sub) == [b"kernel.status", b"<IDS|MSG>", b"busy"]


def test_heartbeat_echoes_through_the_proxy(setup: Setup) -> None:
    req = setup.client("hb")
    req.send(b"ping")
    pod_hb = setup.pod.socks["hb"]
    pod_hb.send_multipart(recv(pod_hb))  # ipykernel's hb: the envelope echoed back
    assert recv(req) == [b"ping"]


def test_a_pod_message_over_max_message_stops_the_kernel_and_nothing_more_passes() -> None:
    made = Setup(max_message=1000)
    try:
        sub = made.client("iopub")
        recv(made.pod.socks["iopub"])
        made.pod.socks["iopub"].send_multipart([b"topic", b"x" * 600, b"y" * 600])
        kernel_wait(lambda: made.violations)
        assert made.violations == [
            "budget exceeded: the kernel sent a message of more than 1000 bytes (at least 1205) "
            "on iopub"
        ]
        assert not sub.poll(200)
    finally:
        made.close()


def test_a_pod_frame_over_max_message_stops_the_kernel_with_the_relays_reason() -> None:
    """One frame over the limit: libzmq drops the pod's connection before buffering it and
    gives it up (a protocol error: no reconnect); the proxy stops the kernel for it."""
    made = Setup(max_message=1000)
    try:
        sub = made.client("iopub")
        recv(made.pod.socks["iopub"])
        made.pod.socks["iopub"].send_multipart([b"topic", b"x" * 2000])
        kernel_wait(lambda: made.violations)
        assert made.violations[0].startswith(
            "budget exceeded: the kernel sent a message of more than 1000 bytes on iopub"
        )
        assert not sub.poll(200)
    finally:
        made.close()


def test_a_pod_whose_kernel_ended_is_no_violation() -> None:
    """The kernel closing its sockets also drops the proxy's connections, but libzmq
    schedules a reconnect (a connection error): nothing is blamed on the kernel."""
    made = Setup(max_message=1000)
    try:
        made.client("iopub")
        recv(made.pod.socks["iopub"])
        made.pod.close()
        threading.Event().wait(DROP_GRACE + 1)
        assert made.violations == []
    finally:
        made.close()


def test_host_connections_over_64_per_channel_are_closed_and_the_log_says_so(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's cap (MAX_CONNECTIONS) on the proxy's plain side: 70 bare connections to
    shell, the last 6 are shut down, the first 64 stay, and a client still gets through."""
    port = setup.connection["shell_port"]
    bare = [socket.create_connection(("127.0.0.1", port), 5) for _ in range(70)]
    try:
        closed = 0
        for sock in bare:
            sock.settimeout(0.2 if closed < 6 else 0.05)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(64 << 10) == b"" or sock.recv(1) == b""
        # The first 64 got libzmq's greeting and wait; the rest read an end.
        assert closed == 6
        assert setup.proxy.refusals == 6
        assert "shell: more than 64 connections at once" in caplog.text
    finally:
        for sock in bare:
            sock.close()


def test_output_past_the_budget_stops_the_kernel_once() -> None:
    made = Setup(output_budget=2000)
    try:
        shell = made.client("shell")
        shell.send_multipart([b"<IDS|MSG>", b"execute"])
        proxy_id, client_id, *_ = recv(made.pod.socks["shell"])
        for _ in range(5):
            made.pod.socks["shell"].send_multipart([proxy_id, client_id, b"z" * 500])
        kernel_wait(lambda: made.violations)
        assert made.violations == [
            "budget exceeded: the kernel sent more than 2000 bytes of output in all (on shell)"
        ]
    finally:
        made.close()


def kernel_wait(predicate: Any) -> None:
    for _ in range(250):
        if predicate():
            return
        threading.Event().wait(0.02)
    raise AssertionError("not within 5 s")


def test_close_ends_the_thread_and_frees_the_host_ports() -> None:
    made = Setup()
    made.client("shell")
    made.close()
    assert not [t for t in threading.enumerate() if t.name == "kube-proxy"]
    for channel in kube_channels.CHANNELS:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", made.connection[f"{channel}_port"]))


def test_a_connection_file_on_a_non_loopback_address_is_refused() -> None:
    proxy = ChannelProxy()
    conn: dict[str, Any] = {"transport": "tcp", "ip": "0.0.0.0"}  # noqa: S104 - the refusal
    for channel in kube_channels.CHANNELS:
        conn[f"{channel}_port"] = free_port()
    try:
        with pytest.raises(LaunchError, match="not a loopback address"):
            proxy.bind(conn)
    finally:
        proxy.close()


def test_a_kill_notice_reaches_iopub_subscribers_for_the_cell_that_was_running(
    setup: Setup,
) -> None:
    """After the pod's end, session.serve_pod has the proxy publish notice.py's messages:
    on the host's iopub (the pod is gone), with the last execute_request a client sent on
    shell as their parent, so nbclient shows them in that cell."""
    from jupyter_client.session import Session

    session = Session(key=b"k")
    sub = setup.client("iopub")
    recv(setup.pod.socks["iopub"])  # the subscription reached the pod: the client is on
    shell = setup.client("shell", b"client-1")
    request = session.msg("execute_request", {"code": "while True: pass"})
    shell.send_multipart(session.serialize(request))
    recv(setup.pod.socks["shell"])
    setup.pod.close()  # the pod ended

    text = "Kernel stopped: out of memory (limit 256 MiB)."
    messages = notice_messages(setup.connection, setup.proxy.last_execute(), text)
    assert asyncio.run(setup.proxy.announce(messages)) == 1
    got = [session.deserialize(session.feed_identities(recv(sub))[1]) for _ in range(2)]
    assert [(m["msg_type"], m["parent_header"]["msg_id"]) for m in got] == [
        ("stream", request["header"]["msg_id"]),
        ("status", request["header"]["msg_id"]),
    ]
    assert (got[0]["content"]["text"], got[1]["content"]) == (
        text + "\n",
        {"execution_state": "idle"},
    )


def test_the_thin_clients_early_listeners_are_adopted_while_it_still_holds_them() -> None:
    """thin.listen_early binds the client's ports first thing and hands the sockets to the
    helper, closing its own copies only once the helper accepted; session.run_pod may bind
    before that. Binding the port again failed then (EADDRINUSE: the kernel never started,
    seen under load); adopted, the proxy serves on them, and a connection made before
    the proxy existed (waiting in the backlog) gets through."""
    context: Any = zmq.Context()
    pod = Pod(context)
    connection: dict[str, Any] = {"transport": "tcp", "ip": "127.0.0.1", "key": "k"}
    for channel in kube_channels.CHANNELS:
        connection[f"{channel}_port"] = free_port()
    early = {"shell": listen(Endpoint("tcp", "127.0.0.1", connection["shell_port"]), "shell")}
    thin_copy = early["shell"].dup()  # the thin client's, still open
    client = context.socket(zmq.DEALER)
    client.linger = 0
    client.connect(f"tcp://127.0.0.1:{connection['shell_port']}")  # before the proxy binds
    client.send_multipart([b"<IDS|MSG>", b"early"])
    proxy = ChannelProxy()
    try:
        proxy.bind(connection, listening=early)
        proxy.connect(pod.info)
        assert recv(pod.socks["shell"])[-2:] == [b"<IDS|MSG>", b"early"]
    finally:
        proxy.close()
        thin_copy.close()
        client.close(linger=0)
        pod.close()
        context.term()
