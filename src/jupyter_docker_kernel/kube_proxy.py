"""The argv launcher's way to a kernel pod: a ZeroMQ proxy per kernel, plain on the host's
loopback endpoints, CurveZMQ to the pod.

session.run uses it for a --kubernetes kernelspec started through its argv (a client that
ignores provisioners): the relay (relay.py) moves raw bytes between the client and a
kernel's unix sockets, which cannot reach a pod that speaks only CurveZMQ, and the client's
connection file has no Curve keys. So the proxy works at the message level:

- `ChannelProxy.bind(connection, relative_to, listening)` binds the five endpoints of the
  Jupyter client's connection file (a loopback address or ipc only), plain, before the pod
  starts, adopting the sockets the thin client listened on first thing: the client's
  first requests wait in the host sockets' queues meanwhile;
- `ChannelProxy.connect(pod_info)` connects to the pod (kube_channels.connect_channel:
  the pod's Curve public key, a fresh client key pair) and starts the proxy's thread;
- `ChannelProxy.close()` stops the thread and closes every socket (idempotent).

Messages pass through unchanged: the pod's Secret holds the Jupyter client's own HMAC key
(KubeBackend.start_cold), so the client's signatures are the kernel's. Per channel:
shell, stdin, control and hb are ROUTER (host) <-> DEALER (pod), the broker pattern that
keeps the client's routing identity on the envelope (ipykernel's hb echoes the envelope it
got, so REQ/REP passes too); the shell and stdin DEALERs share one routing identity,
because ipykernel sends an input_request to the identity its shell request came from.
iopub is XPUB (host, verbose: every client's subscription goes up, so each gets the
kernel's iopub welcome) <-> XSUB (pod). A restart (KernelManager.restart_kernel starts a
new launcher on the same connection file) binds the same host ports with the same HMAC key,
so clients that stay connected (a notebook's websocket) reconnect as to a local kernel.

The meters are the relay's, counted per whole message here: a message from the pod of
more than --max-message bytes, or more than --output-budget bytes sent towards the host in
all, ends the kernel through `on_violation` (Container.stop, with the relay's reason
"budget exceeded: the kernel sent ...", the exit line's) and the proxy forwards nothing
more. Output is what the pod sends: an iopub message counts once however many clients
subscribe (the proxy receives it once), and hb only what it sends beyond what it was sent
(it echoes).

A single FRAME over --max-message never reaches this process's memory: ZMQ_MAXMSGSIZE
(per frame in libzmq) makes libzmq drop the pod's connection at its header. Metering it
here frame by frame (RCVMORE) instead is not possible: libzmq's pipe makes no frame of a
multipart message readable before its last frame is in (checked with libzmq 4.3.5: a
first frame sent with SNDMORE does not poll readable until the last one is sent), so the
whole message would be buffered first. libzmq does not say why it dropped a connection
(a monitor gets EVENT_DISCONNECTED, as when the kernel exits), but what it does next
tells: after a connection error (the kernel closed its socket, or its pod went) it
schedules a reconnect at once (EVENT_CONNECT_RETRIED, in the same millisecond here), and
after a protocol error (a frame over ZMQ_MAXMSGSIZE, or one failing Curve's
authentication: both the kernel's doing) it gives the connection up for good, with no
such event (both checked with libzmq 4.3.5). So a pod socket's disconnect with no
reconnect scheduled within DROP_GRACE ends the kernel with the relay's max-message reason;
without that the channel would stay dead with the kernel running.

The host side has the relay's cap of MAX_CONNECTIONS live connections per channel: each
costs a descriptor in this process (the resident helper serves every kernel of its user),
and a local user opening a thousand bare connections would take them all. libzmq has no
option for it, so a monitor on each host socket counts accepted connections (EVENT_ACCEPTED
and EVENT_DISCONNECTED carry the descriptor), and one over the cap is shut down at once
(shutdown(2) on a duplicate of its descriptor: libzmq sees the end and closes its own) and
warned about once, in the relay's words.

After a kill (a meter above, the pod's out-of-memory kill, its lifetime, ...), the notebook
is told why as on the local path: session.serve_pod builds notice.py's messages from
Container.wait's Ending (the same kill_notice words) and `ChannelProxy.announce` publishes
them on the host's iopub socket, addressed to the last execute_request a client sent on
shell (`last_execute`), once the proxy's thread has stopped. Unlike the relay, which must
greet each subscriber afresh (the kernel's end cut their connections), the host XPUB's
subscribers are still connected: the pod's end never reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from jupyter_docker_kernel import kube_channels
from jupyter_docker_kernel.endpoints import Endpoint, adopt_listening, host_endpoints
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.relay import ECHO_SLACK, MAX_CONNECTIONS, warn_refused

log = logging.getLogger("jupyter_docker_kernel.launcher")

#: How long after a pod socket's disconnect libzmq must have scheduled a reconnect for the
#: drop to be the kernel's end rather than libzmq's refusal (it does so in the same
#: millisecond; this leaves room for a loaded machine).
DROP_GRACE = 2.0

#: The delimiter frame between a Jupyter message's routing ids and its signature.
DELIM = b"<IDS|MSG>"
#: How long close() gives a published kill notice to leave the host's iopub socket (ms).
NOTICE_FLUSH_MS = 1000

#: The host side's socket type per channel, and the pod side's.
HOST_TYPES: Mapping[str, int] = {
    "shell": zmq.ROUTER,
    "iopub": zmq.XPUB,
    "stdin": zmq.ROUTER,
    "control": zmq.ROUTER,
    "hb": zmq.ROUTER,
}
POD_TYPES: Mapping[str, int] = {
    "shell": zmq.DEALER,
    "iopub": zmq.XSUB,
    "stdin": zmq.DEALER,
    "control": zmq.DEALER,
    "hb": zmq.DEALER,
}


def zmq_url(endpoint: Endpoint) -> str:
    """The zmq address of a host endpoint; refuses a tcp address that is not loopback (the
    host side is plain: only this machine's clients may reach it)."""
    if endpoint.transport == "ipc":
        return f"ipc://{endpoint.address}"
    if not ipaddress.ip_address(endpoint.address).is_loopback:
        raise LaunchError(
            f"The connection file asks for the kernel's channels on {endpoint.address}, "
            "which is not a loopback address; an argv kernel pod's channels are plain on "
            "the host side",
            "No pod was started",
            "Let the Jupyter client use 127.0.0.1 (its default), or use the provisioner "
            "(setup --kubernetes --provisioner), whose clients speak CurveZMQ to the pod",
        )
    return f"tcp://{endpoint.address}:{endpoint.port}"


class ChannelProxy:
    """One kernel's five channels, host (plain) to pod (Curve); see the module docstring."""

    def __init__(
        self,
        *,
        max_message: int = 64 << 20,
        output_budget: int = 1 << 30,
        on_violation: Callable[[str], None] | None = None,
    ) -> None:
        """max_message, output_budget: the settings' (bytes); on_violation: called once,
        from the proxy's thread, with the reason ("budget exceeded: ...")."""
        self.max_message = max_message
        self.output_budget = output_budget
        self.on_violation = on_violation
        #: Output counted against output_budget, and why the proxy stopped ("" while not).
        self.output_charged = 0
        self.violation = ""
        self.context: Any = zmq.Context()
        self.host: dict[str, Any] = {}
        self.pod: dict[str, Any] = {}
        #: Bytes of the messages moved to the host and to the kernel (the exit line's).
        self.bytes_to_host = 0
        self.bytes_to_kernel = 0
        self._stop_url = f"inproc://stop-{secrets.token_hex(4)}"
        self._stop: Any = None
        self._stopped: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Monitors (PAIR sockets) of the host and pod sockets, to the channel they watch.
        self._host_monitors: dict[Any, str] = {}
        self._pod_monitors: dict[Any, str] = {}
        #: Live accepted host connections per channel (their descriptors), and how many
        #: were shut down over MAX_CONNECTIONS.
        self.accepted: dict[str, set[int]] = {}
        self.refusals = 0
        #: Pod channels disconnected with no reconnect scheduled yet: by when one must be.
        self._dropped: dict[str, float] = {}
        #: The header frame of the last execute_request a client sent on shell (raw JSON,
        #: parsed only at a kill: last_execute), and iopub subscriptions seen (for ipc,
        #: whose connections are not counted).
        self._last_execute = b""
        self._subscriptions = 0
        self._announced = False

    def bind(
        self,
        connection: Mapping[str, Any],
        relative_to: str | None = None,
        listening: Mapping[str, socket.socket] | None = None,
    ) -> None:
        """Bind the client's five endpoints (its connection file's), plain. `listening`:
        sockets a thin client bound on them first thing (thin.listen_early, by channel),
        adopted as they are (ZMQ_USE_FD), never closed and bound again: the thin client
        holds its own copies until the helper has accepted, so a new bind could find the
        port still taken (EADDRINUSE), and the client's connections already waiting in
        their backlog would be refused."""
        for channel, endpoint in host_endpoints(dict(connection), relative_to).items():
            url = zmq_url(endpoint)
            early = adopt_listening((listening or {}).get(channel), endpoint)
            sock = self.context.socket(HOST_TYPES[channel])
            sock.linger = 0
            if channel == "iopub":
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            else:
                sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a gone client's reply is dropped
            self.host[channel] = sock
            if endpoint.transport == "tcp":  # ipc's is a file of the user's: no stranger's
                self._host_monitors[
                    sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
                ] = channel
                self.accepted[channel] = set()
            if early is not None:
                # libzmq owns (and closes) the descriptor from here; the url is not bound.
                sock.setsockopt(zmq.USE_FD, early.detach())
            sock.bind(url)

    def connect(self, pod_info: Mapping[str, Any]) -> None:
        """Connect to the pod as a Curve client (pod_info: kube_channels.client_connection)
        and start moving messages."""
        identity = secrets.token_bytes(8)
        for channel in kube_channels.CHANNELS:
            sock = kube_channels.connect_channel(
                self.context,
                pod_info,
                channel,
                immediate=False,  # queue what the client sent until the handshake completes
                connect=False,
                socket_type=POD_TYPES[channel],
            )
            # libzmq drops the pod's connection on a larger frame before buffering it;
            # the monitor tells the drop from the kernel's end (module docstring).
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message)
            if channel in ("shell", "stdin"):
                sock.setsockopt(zmq.ROUTING_ID, identity)
            self.pod[channel] = sock
            self._pod_monitors[
                sock.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED)
            ] = channel
            sock.connect(kube_channels.channel_url(pod_info, channel))
        self._stop = self.context.socket(zmq.PAIR)
        self._stop.bind(self._stop_url)
        # The thread's end, connected here: a close() right after this reaches the thread.
        self._stopped = self.context.socket(zmq.PAIR)
        self._stopped.connect(self._stop_url)
        # In our context: the resident helper routes a thread's log lines (the cap's
        # warning, a violation) to its kernel's launcher by it (helper.CURRENT).
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), name="kube-proxy", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        """The proxy's thread: move whole messages both ways until told to stop."""
        stop = self._stopped
        hb_in = hb_out = 0
        poller = zmq.Poller()
        poller.register(stop, zmq.POLLIN)
        peer: dict[Any, tuple[Any, str | None]] = {}
        for channel in kube_channels.CHANNELS:
            host, pod = self.host[channel], self.pod[channel]
            peer[host] = (pod, None)
            peer[pod] = (host, channel)
            poller.register(host, zmq.POLLIN)
            poller.register(pod, zmq.POLLIN)
        for monitor in [*self._host_monitors, *self._pod_monitors]:
            poller.register(monitor, zmq.POLLIN)
        try:
            while True:
                wait = None
                if self._dropped:
                    wait = max(0, int(1000 * (min(self._dropped.values()) - time.monotonic())))
                ready = dict(poller.poll(wait))
                if stop in ready:
                    return
                why = self._given_up()
                if why:
                    self._violated(why)
                    return
                for sock in ready:
                    if sock in self._host_monitors:
                        self._host_event(
                            self._host_monitors[sock], parse_monitor_message(sock.recv_multipart())
                        )
                        continue
                    if sock in self._pod_monitors:
                        self._pod_event(
                            self._pod_monitors[sock], parse_monitor_message(sock.recv_multipart())
                        )
                        continue
                    other, from_pod = peer[sock]
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        size = sum(len(frame.buffer) for frame in frames)
                        if from_pod is None:
                            self.bytes_to_kernel += size
                            if sock is self.host["hb"]:
                                hb_in += size
                            elif sock is self.host["shell"]:
                                self._note_execute(frames)
                            elif sock is self.host["iopub"] and frames[0].bytes[:1] == b"\x01":
                                self._subscriptions += 1
                        else:
                            self.bytes_to_host += size
                            if from_pod == "hb":
                                hb_out += size
                                self.output_charged += max(0, hb_out - hb_in - ECHO_SLACK)
                                hb_out = min(hb_out, hb_in + ECHO_SLACK)  # charged once
                            else:
                                self.output_charged += size
                            why = self._exceeded(size, from_pod)
                            if why:
                                self._violated(why)
                                return
                        with contextlib.suppress(zmq.Again):
                            # The host's ROUTERs drop a message for a gone client, the
                            # XPUB one nobody subscribed to; never block the other channels.
                            other.send_multipart(frames, zmq.NOBLOCK, copy=False)
        finally:
            stop.close(linger=0)

    def _host_event(self, channel: str, event: Mapping[str, Any]) -> None:
        """A host socket's monitor event: count its live connections, and shut one over
        MAX_CONNECTIONS down at once (the relay's cap; module docstring)."""
        live = self.accepted[channel]
        fd = int(event["value"])
        if event["event"] == zmq.EVENT_DISCONNECTED:
            live.discard(fd)
            return
        if len(live) < MAX_CONNECTIONS:
            live.add(fd)
            return
        # A duplicate, so libzmq's descriptor stays libzmq's to close. The monitor's events
        # trail the socket: only a connection on this channel's port is shut down (the
        # number may have been reused once libzmq closed it).
        with contextlib.suppress(OSError):  # closed already, or not a socket any more
            dup = os.dup(fd)
            try:
                conn = socket.socket(fileno=dup)
            except OSError:
                os.close(dup)
                raise
            with conn:
                if conn.getsockname()[1:2] == (self.connection_port(channel),):
                    conn.shutdown(socket.SHUT_RDWR)
        self.refusals += 1
        if self.refusals == 1:
            warn_refused(log, channel)

    def connection_port(self, channel: str) -> int:
        """The tcp port the host socket of `channel` is bound to."""
        endpoint: str = self.host[channel].getsockopt(zmq.LAST_ENDPOINT).decode()
        return int(endpoint.rpartition(":")[2])

    def _pod_event(self, channel: str, event: Mapping[str, Any]) -> None:
        """A pod socket's monitor event: a disconnect starts DROP_GRACE, a scheduled
        reconnect (the kernel's end, not libzmq's refusal) ends it."""
        if event["event"] == zmq.EVENT_DISCONNECTED:
            self._dropped[channel] = time.monotonic() + DROP_GRACE
        else:
            self._dropped.pop(channel, None)

    def _given_up(self) -> str:
        """The max-message reason when libzmq gave a pod connection up (no reconnect within
        DROP_GRACE of its disconnect: a protocol error; module docstring), else ""."""
        now = time.monotonic()
        for channel, deadline in self._dropped.items():
            if deadline <= now:
                return (
                    f"a message of more than {self.max_message} bytes on {channel} (libzmq "
                    "refused a frame over it and gave the pod's connection up)"
                )
        return ""

    def _exceeded(self, size: int, channel: str) -> str:
        """Why the pod's latest message ends the kernel ("" if it does not)."""
        if size > self.max_message:
            return f"a message of more than {self.max_message} bytes (at least {size}) on {channel}"
        if self.output_charged > self.output_budget:
            return f"more than {self.output_budget} bytes of output in all (on {channel})"
        return ""

    def _violated(self, why: str) -> None:
        """The pod exceeded a meter: forward nothing more, and say so once."""
        self.violation = f"budget exceeded: the kernel sent {why}"
        log.error("%s; stopping the kernel", self.violation)
        if self.on_violation is not None:
            self.on_violation(self.violation)

    def _note_execute(self, frames: list[Any]) -> None:
        """Keep the header of a client's shell message if it is an execute_request (the
        kill notice's parent: the cell that was running). Only its frame is copied."""
        for at, frame in enumerate(frames[:-2]):
            if len(frame) == len(DELIM) and frame.bytes == DELIM:
                header: bytes = frames[at + 2].bytes
                if b"execute_request" in header:
                    self._last_execute = header
                return

    def last_execute(self) -> dict[str, Any] | None:
        """The header of the last execute_request a client sent on shell, or None (as
        relay.Relay.last_execute: notice.notice_messages' parent)."""
        from jupyter_docker_kernel.notice import as_execute_header

        return as_execute_header(self._last_execute)  # b"" (none kept) is not JSON: None

    async def announce(self, messages: list[list[bytes]]) -> int:
        """Publish `messages` (frames, topic first: notice.notice_messages) to every client
        subscribed to the host's iopub; returns how many clients are connected there (for
        ipc: subscriptions seen). Called by session.serve_pod once the pod has ended; the
        proxy forwards nothing more. The blocking part (the thread's stop) runs in a thread."""
        return await asyncio.to_thread(self.publish, messages)

    def publish(self, messages: list[list[bytes]]) -> int:
        """announce()'s blocking part: stop the proxy's thread, then send on host iopub."""
        self._halt()
        iopub = self.host.get("iopub")
        if iopub is None or self._closed:
            return 0
        for frames in messages:
            with contextlib.suppress(zmq.Again):  # an XPUB never blocks; a full pipe drops
                iopub.send_multipart(frames, zmq.NOBLOCK)
        self._announced = True
        if "iopub" in self.accepted:
            return len(self.accepted["iopub"])
        return self._subscriptions

    def _halt(self) -> None:
        """Stop the proxy's thread (idempotent); the sockets stay open."""
        if self._thread is not None:
            with contextlib.suppress(zmq.Again):  # Again: the thread ended (a violation)
                self._stop.send(b"", zmq.NOBLOCK)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the thread, close every socket and the context (idempotent). A published
        kill notice gets NOTICE_FLUSH_MS to leave first."""
        if self._closed:
            return
        self._closed = True
        self._halt()
        if self._stop is not None:
            self._stop.close(linger=0)
        for sock in [*self.host.values(), *self.pod.values()]:
            with contextlib.suppress(zmq.ZMQError):  # never monitored (bind failed)
                sock.disable_monitor()
        notice = self.host.get("iopub") if self._announced else None
        for sock in [*self._host_monitors, *self._pod_monitors, *self.host.values(),
                     *self.pod.values()]:  # fmt: skip
            sock.close(linger=NOTICE_FLUSH_MS if sock is notice else 0)
        self.context.term()
