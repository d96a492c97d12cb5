"""The argv launcher's way to a kernel pod: a ZeroMQ proxy per kernel, plain on the host's
loopback endpoints, CurveZMQ to the pod.

session.run uses it for a --kubernetes kernelspec started through its argv (a client that
ignores provisioners): the relay (relay.py) moves raw bytes between the client and a
kernel's unix sockets, which cannot reach a pod that speaks only CurveZMQ, and the client's
connection file has no Curve keys. So the proxy works at the message level:

- `ChannelProxy.bind(connection, relative_to)` binds the five endpoints of the Jupyter
  client's connection file (a loopback address or ipc only), plain, before the pod starts:
  the client's first requests wait in the host sockets' queues meanwhile;
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
more than --max-message bytes (or a frame: ZMQ_MAXMSGSIZE makes libzmq drop the pod's
connection before it buffers one), or more than --output-budget bytes sent towards the
host in all, ends the kernel through `on_violation` (Container.stop, with the reason) and
the proxy forwards nothing more. Output is what the pod sends: an iopub message counts
once however many clients subscribe (the proxy receives it once), and hb only what it sends
beyond what it was sent (it echoes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from jupyter_docker_kernel import kube_channels
from jupyter_docker_kernel.endpoints import Endpoint, host_endpoints
from jupyter_docker_kernel.errors import LaunchError
from jupyter_docker_kernel.relay import ECHO_SLACK

log = logging.getLogger("jupyter_docker_kernel.launcher")

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

    def bind(self, connection: Mapping[str, Any], relative_to: str | None = None) -> None:
        """Bind the client's five endpoints (its connection file's), plain."""
        for channel, endpoint in host_endpoints(dict(connection), relative_to).items():
            sock = self.context.socket(HOST_TYPES[channel])
            sock.linger = 0
            if channel == "iopub":
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            else:
                sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a gone client's reply is dropped
            self.host[channel] = sock
            sock.bind(zmq_url(endpoint))

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
            # libzmq drops the pod's connection on a larger frame before buffering it.
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message)
            if channel in ("shell", "stdin"):
                sock.setsockopt(zmq.ROUTING_ID, identity)
            self.pod[channel] = sock
            sock.connect(kube_channels.channel_url(pod_info, channel))
        self._stop = self.context.socket(zmq.PAIR)
        self._stop.bind(self._stop_url)
        # The thread's end, connected here: a close() right after this reaches the thread.
        self._stopped = self.context.socket(zmq.PAIR)
        self._stopped.connect(self._stop_url)
        self._thread = threading.Thread(target=self._run, name="kube-proxy", daemon=True)
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
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                for sock in ready:
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

    def _exceeded(self, size: int, channel: str) -> str:
        """Why the pod's latest message ends the kernel ("" if it does not)."""
        if size > self.max_message:
            return f"a message of {size} bytes (more than {self.max_message}) on {channel}"
        if self.output_charged > self.output_budget:
            return f"more than {self.output_budget} bytes of output in all (on {channel})"
        return ""

    def _violated(self, why: str) -> None:
        """The pod exceeded a meter: forward nothing more, and say so once."""
        self.violation = f"budget exceeded: the kernel sent {why}"
        log.error("%s; stopping the kernel", self.violation)
        if self.on_violation is not None:
            self.on_violation(self.violation)

    def close(self) -> None:
        """Stop the thread, close every socket and the context (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            with contextlib.suppress(zmq.Again):  # Again: the thread ended (a violation)
                self._stop.send(b"", zmq.NOBLOCK)
            self._thread.join()
        if self._stop is not None:
            self._stop.close(linger=0)
        for sock in [*self.host.values(), *self.pod.values()]:
            sock.close(linger=0)
        self.context.term()
