"""The kill notice without Docker: its text, the parent it answers, and its way to a real
libzmq subscriber through the relay after the kernel's stream was cut mid-message."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client.session import Session

from jupyter_docker_kernel.notice import (
    as_execute_header,
    execute_header,
    kill_notice,
    notice_messages,
)
from jupyter_docker_kernel.relay import Endpoint, Relay, Route, zmtp_message
from tests.kernels import free_port
from tests.test_relay import EchoKernel, PubKernel

KEY = "a0b1c2d3-secret"
CONNECTION = {"key": KEY, "signature_scheme": "hmac-sha256"}


@pytest.mark.parametrize(
    ("code", "reason", "said", "expected"),
    [
        (
            137,
            "",
            "some output\njupyter-docker-kernel: kernel killed: out of memory (limit 2048 MiB)"
            " after 3.0 s\n",
            "Kernel stopped: out of memory (limit 2 GiB). Restart the kernel; use less memory "
            "or ask for a larger --memory.",
        ),
        (137, "out of memory (limit 256 MiB), as the engine reports", "", "limit 256 MiB"),
        (
            137,
            "budget exceeded: the kernel sent more than 8388608 bytes of output in all on iopub",
            "",
            "output budget of 8m exceeded",
        ),
        (137, "budget exceeded: the kernel sent a message of more than 9", "", "--max-message"),
        (137, "protocol refused: the kernel sent a greeting", "", "not ZMTP 3"),
        (137, "maximum lifetime of 60 s reached", "", "maximum lifetime of 60 s reached"),
        (
            137,
            "",
            "jupyter-docker-kernel: kernel ended: maximum lifetime of 5 s reached (exit -9)",
            "maximum lifetime of 5 s reached",
        ),
        (1, "", "jupyter-docker-kernel: the pids limit was hit: ...", "--pids-limit"),
        # What the user did or expects: no notice.
        (0, "", "", ""),
        (130, "", "", ""),
        (137, "stopped by the Jupyter client", "", ""),
        (0, "", "jupyter-docker-kernel: the pids limit was hit: ...", ""),
        (1, "", "kernel killed: out of memory (limit 9 MiB)  (not the supervisor's line)", ""),
    ],
)
def test_kill_notice_says_why_only_for_kills_the_user_should_know_of(
    code: int, reason: str, said: str, expected: str
) -> None:
    text = kill_notice(code, reason, said, output_budget="8m", max_message="64m")
    if expected:
        assert expected in text
        assert text.startswith("Kernel stopped")
        assert "\n" not in text
    else:
        assert text == ""


def shell_bytes(session: Session, msg_type: str, code: str = "pass") -> tuple[bytes, str]:
    """A client's request as it crosses the relay on shell, and its msg_id."""
    msg = session.msg(msg_type, {"code": code})
    return zmtp_message(session.serialize(msg)), msg["header"]["msg_id"]


def test_execute_header_is_the_last_execute_request_even_across_chunks() -> None:
    session = Session(key=KEY.encode())
    first, _ = shell_bytes(session, "execute_request")
    second, wanted = shell_bytes(session, "execute_request", "x = 1  # execute_request")
    info, _ = shell_bytes(session, "kernel_info_request")
    data = first + second + info
    header = execute_header((data[:100], data[100:]))
    assert header is not None
    assert header["msg_id"] == wanted
    assert execute_header((info,)) is None
    assert execute_header((b"",)) is None


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"execute_request"',
        b'{"msg_type": "kernel_info_request"}',
    ],
)
def test_a_header_frame_that_is_no_execute_requests_object_is_none(frame: bytes) -> None:
    """The relay's raw bytes and the kube proxy's kept frame end in this one check: a
    kill notice's parent is only ever an execute_request's header, never an error."""
    assert as_execute_header(frame) is None
    assert as_execute_header(b'{"msg_type": "execute_request", "msg_id": "m"}') == {
        "msg_type": "execute_request",
        "msg_id": "m",
    }


@pytest.mark.parametrize("reconnected", [False, True])
def test_announce_reaches_a_real_subscriber_cut_off_mid_message(
    tmp_path: Path, reconnected: bool
) -> None:
    """The kernel dies in the middle of a message; the subscriber (pyzmq, as every Jupyter
    client) reconnects and receives the signed notice and an idle status, both with the
    last execute_request as parent, and verifies them with the connection's key. Whether
    the subscriber is still relayed at the announcement, or already back and waiting for
    a kernel that is gone."""
    iopub = PubKernel(tmp_path / "k-iopub")
    shell = EchoKernel(tmp_path / "k-shell")
    iopub_host = Endpoint("tcp", "127.0.0.1", free_port())
    shell_host = Endpoint("tcp", "127.0.0.1", free_port())
    session = Session(key=KEY.encode())
    request, msg_id = shell_bytes(session, "execute_request", "x = bytearray(10**10)")
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.connect(f"tcp://127.0.0.1:{iopub_host.port}")
    got: list[int] = []

    async def main() -> None:
        await iopub.start()
        await shell.start()
        relay = Relay(
            [
                Route("iopub", iopub_host, str(iopub.path)),
                Route("shell", shell_host, str(shell.path)),
            ]
        )
        try:
            await relay.start()
            _, writer = await asyncio.open_connection(shell_host.address, shell_host.port)
            writer.write(request)
            while len(iopub.writers) < 1 or relay.bytes_to_kernel < len(request):
                await asyncio.sleep(0.01)
            # Half a message (MORE set, a 1000-byte frame with 10 bytes of it), then death.
            for kernel_side in iopub.writers:
                kernel_side.write(b"\x03" + (1000).to_bytes(8, "big") + b"x" * 10)
            await asyncio.sleep(0.1)
            await iopub.stop()
            if reconnected:
                while relay.iopub_lost < 1 or not any(
                    half.peer is None for half in relay.hosts["iopub"]
                ):
                    await asyncio.sleep(0.01)
            text = "Kernel stopped: out of memory (limit 256 MiB)."
            got.append(
                await relay.announce(notice_messages(CONNECTION, relay.last_execute(), text))
            )
            writer.close()
        finally:
            await relay.close()
            await shell.stop()
            await asyncio.sleep(0.02)

    try:
        asyncio.run(main())
        received: list[dict[str, Any]] = []
        with contextlib.suppress(zmq.Again):
            while len(received) < 2:
                _, frames = session.feed_identities(sub.recv_multipart())
                received.append(session.deserialize(frames))  # raises on a bad signature
    finally:
        sub.close(linger=0)
        context.term()
    assert got == [1]
    assert [m["msg_type"] for m in received] == ["stream", "status"]
    assert received[0]["content"] == {
        "name": "stderr",
        "text": "Kernel stopped: out of memory (limit 256 MiB).\n",
    }
    assert received[1]["content"] == {"execution_state": "idle"}
    assert {m["parent_header"]["msg_id"] for m in received} == {msg_id}
