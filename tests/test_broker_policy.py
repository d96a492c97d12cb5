"""The broker's policy file and request format, without the engine (broker_policy.py).

A table of requests the broker must refuse (with one line each), the policy file's own
checks, the frames after a start, and a fuzz of the start line: whatever bytes arrive,
the answer is a Refusal, never another exception.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from jupyter_docker_kernel import broker_policy as bp
from jupyter_docker_kernel.broker_policy import Policy, PolicyError, Refusal
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings, Mount

POLICY = Policy(images=(DEFAULT_IMAGE, "course/py:2024"), memory="2g", cpus=2.0)


def request(**changes: Any) -> dict[str, Any]:
    """A start the policy allows, with changes (a value None removes the field)."""
    settings = changes.pop("settings", {"image": DEFAULT_IMAGE})
    base: dict[str, Any] = {
        "op": "start",
        "v": bp.PROTOCOL,
        "name": "jdk-abc-123456",
        "kernel_id": "abc",
        "kernelspec": "python3-docker",
        "workdir": "/home/alice/course/week1",
        "project": "/home/alice/course",
        "connection": {"key": "k" * 36, "signature_scheme": "hmac-sha256", "kernel_name": "x"},
        "settings": settings,
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    return base


def line(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_an_allowed_start_becomes_the_settings_within_the_policy() -> None:
    start = bp.parse_start(line(request(settings={"memory": "1g", "cpus": 1})), POLICY)
    assert start.settings.memory == "1g"
    assert start.settings.cpus == 1.0
    assert start.settings.docker_args == ()
    assert start.settings.network == "none"
    assert start.mount_sources() == ["/home/alice/course"]


def test_a_limit_not_asked_for_is_the_policys() -> None:
    start = bp.parse_start(line(request()), POLICY)
    assert (start.settings.memory, start.settings.cpus) == ("2g", 2.0)


def test_the_policys_runtime_is_forced() -> None:
    policy = Policy(runtime="runsc")
    assert bp.parse_start(line(request()), policy).settings.runtime == "runsc"


def test_the_client_request_round_trips_through_the_parser() -> None:
    settings = KernelSettings(
        memory="1g", mounts=(Mount("{project}/data", "/data", True),), workdir_root="git"
    )
    sent = bp.start_request(
        "jdk-k-000000",
        "k",
        "spec",
        "/home/a/p/nb",
        "/home/a/p",
        {"key": "secret", "signature_scheme": "hmac-sha256", "kernel_name": "spec"},
        settings,
    )
    start = bp.parse_start(sent.rstrip(b"\n"), POLICY)
    assert start.settings.memory == "1g"
    assert start.mount_sources() == ["/home/a/p", "/home/a/p/data"]
    assert start.connection["key"] == "secret"


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("foreign image", request(settings={"image": "evil/root:latest"}), "is not allowed"),
    ("docker arg", request(settings={"docker_args": ["--privileged"]}), "--docker-arg"),
    ("root user", request(settings={"kernel_user": "0"}), "caller's own uid"),
    ("other uid", request(settings={"kernel_user": "1002"}), "caller's own uid"),
    ("network", request(settings={"network": "bridge"}), "network is refused"),
    ("host network", request(settings={"network": "host"}), "network is refused"),
    ("gpus", request(settings={"gpus": "all"}), "GPUs"),
    ("engine host", request(settings={"engine_host": "tcp://1.2.3.4:2375"}), "its own engine"),
    ("runtime", request(settings={"runtime": "runc"}), "runtime"),
    ("memory", request(settings={"memory": "64g"}), "above the allowed"),
    ("cpus", request(settings={"cpus": 64}), "above the allowed"),
    ("pids", request(settings={"pids_limit": 100000}), "above the allowed"),
    ("lifetime", request(settings={"max_lifetime": 1e12}), "above the allowed"),
    ("unknown setting", request(settings={"privileged": True}), "Unknown settings field"),
    ("unknown field", request(extra=1), "Unknown request field"),
    ("relative workdir", request(workdir="home/alice"), "absolute, normal path"),
    ("dotdot workdir", request(workdir="/home/alice/../bob"), "absolute, normal path"),
    ("root workdir", request(workdir="/", project=""), "never mounted"),
    ("project outside", request(project="/home/bob"), "does not hold"),
    ("comma", request(workdir="/home/a,b", project=""), "absolute, normal path"),
    ("colon", request(workdir="/home/a:exec", project=""), "absolute, normal path"),
    ("mount dotdot", request(settings={"mounts": [{"source": "/a/../etc", "target": "/x"}]}), ""),
    ("mount root", request(settings={"mounts": [{"source": "/", "target": "/x"}]}), "never"),
    ("mount extra", request(settings={"mounts": [{"source": "/a", "target": "/x", "o": 1}]}), ""),
    ("mount type", request(settings={"mounts": ["/etc:/etc"]}), "wrong type"),
    (
        "reserved target",
        request(settings={"mounts": [{"source": "/a", "target": "/opt/jupyter-docker-kernel"}]}),
        "reserved",
    ),
    (
        "too many mounts",
        request(settings={"mounts": [{"source": f"/a/{i}", "target": f"/{i}"} for i in range(9)]}),
        "At most",
    ),
    ("wrong type", request(settings={"memory": 2}), "wrong type"),
    ("bool for int", request(settings={"pids_limit": True}), "wrong type"),
    ("string for bool", request(settings={"workdir_readonly": "yes"}), "wrong type"),
    ("env value", request(settings={"env": {"A": 1}}), "wrong type"),
    ("env name", request(settings={"env": {"A B": "1"}}), "valid variable name"),
    ("workdir mode", request(settings={"workdir": "bind"}), "not allowed"),
    ("bad name", request(name="other-container"), "is not jdk-"),
    ("long name", request(name="jdk-" + "a" * 200), "is not jdk-"),
    ("kernel id", request(kernel_id="../x"), "kernel id"),
    ("no key", request(connection={"signature_scheme": "hmac-sha256", "kernel_name": ""}), ""),
    ("key type", request(connection={"key": 1, "signature_scheme": "x", "kernel_name": ""}), ""),
    ("scheme", request(connection={"key": "k", "signature_scheme": "md5", "kernel_name": ""}), ""),
    ("op", request(op="exec"), "Unknown request op"),
    ("version", request(v=2), "Protocol version"),
    ("missing", request(kernel_id=None), "lacks kernel_id"),
]


@pytest.mark.parametrize(("data", "words"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_a_request_outside_the_policy_is_refused_with_one_line(
    data: dict[str, Any], words: str
) -> None:
    with pytest.raises(Refusal) as caught:
        bp.parse_start(line(data), POLICY)
    assert words in caught.value.line
    assert "\n" not in caught.value.line


def test_mounts_are_refused_when_the_policy_says_so() -> None:
    policy = Policy(mounts=False)
    data = request(settings={"mounts": [{"source": "/home/alice/d", "target": "/d"}]})
    with pytest.raises(Refusal, match="Mounts are not allowed"):
        bp.parse_start(line(data), policy)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"start"',
        b"\xff\xfe",
        b"[" * 100000,
        b"{}" + b" " * (bp.MAX_REQUEST + 1),
        line({"op": "start"}),
        line(request(settings=[])),
        line(request(connection="k")),
    ],
)
def test_malformed_start_lines_are_refused(raw: bytes) -> None:
    with pytest.raises(Refusal):
        bp.parse_start(raw, POLICY)


def test_random_start_lines_are_refused_and_nothing_else_is_raised() -> None:
    """A small fuzz: random bytes, and valid requests with random values swapped in."""
    rng = random.Random(16)
    junk: list[Any] = [None, True, 0, -1, 1e308, "", "x" * 5000, [], {}, [1], {"a": None}]
    for _ in range(400):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        with pytest.raises(Refusal):
            bp.parse_start(raw, POLICY)
    accepted = 0
    refusals: list[str] = []
    for _ in range(400):
        data = request()
        target = data if rng.random() < 0.5 else data["settings"]
        key = rng.choice([*bp.REQUEST_FIELDS, *bp.SETTINGS_FIELDS, "docker_args"])
        target[key] = rng.choice(junk)
        try:
            start = bp.parse_start(line(data), POLICY)
        except Refusal as exc:
            refusals.append(exc.line)
            continue
        accepted += 1
        assert start.settings.docker_args == ()
        assert start.settings.network == "none"
        assert start.settings.image in POLICY.images
    assert accepted < 400
    assert all("\n" not in refusal for refusal in refusals)


def test_random_frames_after_a_start_are_refused_or_parsed_and_nothing_else_is_raised() -> None:
    """A small fuzz of what a client sends while its kernel runs: random headers and
    random control messages (valid ones with junk swapped in). Each frame is a Refusal or
    one of the three known controls; a stop's reason is one printable line (audit)."""
    rng = random.Random(1616)
    junk: list[Any] = [None, True, 0, -1, "", "x" * 300, "INT\n", "\x1b[2J", [], {}, "KILL"]
    for _ in range(300):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        try:
            frames = bp.FrameReader(bp.WRITE + bp.CONTROL).feed(raw)
        except Refusal:
            continue
        assert all(kind in (bp.WRITE, bp.CONTROL) for kind, _ in frames)
    parsed = set()
    refusals: list[str] = []
    for _ in range(400):
        data: dict[str, Any] = rng.choice(
            [{"op": "signal", "sig": "INT"}, {"op": "stop", "why": "x"}, {"op": "kill"}]
        )
        data = dict(data)
        data[rng.choice(["op", "sig", "why", "cmd"])] = rng.choice(junk)
        try:
            op, arg = bp.parse_control(json.dumps(data).encode())
        except Refusal as exc:
            refusals.append(exc.line)
            continue
        parsed.add(op)
        assert op in ("signal", "stop", "kill")
        if op == "signal":
            assert arg in bp.SIGNALS
        else:
            assert arg.isprintable()
            assert len(arg) <= bp.MAX_WHY
    assert parsed  # the fuzz reached the accepting paths too
    assert all("\n" not in refusal for refusal in refusals)


def test_the_policy_file_is_read_strictly() -> None:
    policy = Policy.from_toml(
        'images = ["a/b:1"]\nmemory = "1g"\ncpus = 2\nruntime = "runsc"\nkernels_per_user = 2\n'
    )
    assert policy.images == ("a/b:1",)
    assert policy.cpus == 2.0
    assert policy.runtime == "runsc"
    assert "kernels per user" in policy.describe()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("images = [", "not valid TOML"),
        ("image = ['a']", "unknown key"),
        ("images = 'a'", "a list of strings"),
        ("cpus = 'two'", "a number"),
        ("pids_limit = 1.5", "a whole number"),
        ("mounts = 1", "true or false"),
        ("images = []", "allows no image"),
        ("memory = 'lots'", "invalid"),
        ("kernels_per_user = 0", ">= 1"),
        ("workdir_modes = ['bind']", "workdir_modes"),
    ],
)
def test_a_bad_policy_file_says_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_toml(text, "/etc/x.toml")
    assert words in str(caught.value)


def test_frames_split_anywhere_come_out_whole() -> None:
    data = bp.frame(bp.ID, b"abc") + bp.frame(bp.OUTPUT, b"x" * 1000) + bp.frame(bp.EXIT, b"{}")
    reader = bp.FrameReader(bp.ID + bp.OUTPUT + bp.EXIT)
    out = []
    for i in range(0, len(data), 7):
        out += reader.feed(data[i : i + 7])
    assert out == [(bp.ID, b"abc"), (bp.OUTPUT, b"x" * 1000), (bp.EXIT, b"{}")]


@pytest.mark.parametrize(
    "data",
    [bp.HEADER.pack(b"z", 1) + b"x", bp.HEADER.pack(b"w", bp.MAX_FRAME + 1)],
    ids=["unknown kind", "oversized"],
)
def test_a_malformed_frame_is_refused(data: bytes) -> None:
    with pytest.raises(Refusal):
        bp.FrameReader(bp.WRITE + bp.CONTROL).feed(data)


@pytest.mark.parametrize(
    ("payload", "parsed"),
    [
        (b'{"op": "signal", "sig": "INT"}', ("signal", "INT")),
        (b'{"op": "stop"}', ("stop", "")),
        (b'{"op": "kill"}', ("kill", "")),
        (b'{"op": "stop", "why": "budget exceeded: x"}', ("stop", "budget exceeded: x")),
        (
            b'{"op": "kill", "why": "its socket dir was misused"}',
            ("kill", "its socket dir was misused"),
        ),
    ],
)
def test_control_messages_are_parsed(payload: bytes, parsed: tuple[str, str]) -> None:
    assert bp.parse_control(payload) == parsed


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b'{"op": "exec"}',
        b'{"op": "signal", "sig": "STOP"}',
        b'{"op": "stop", "x": 1}',
        b'{"op": "stop", "why": 1}',
        b'{"op": "signal", "sig": "INT", "why": "x"}',
        # The reason goes into one audit line: no line break, no escape, not too long.
        b'{"op": "stop", "why": "x\\nstart uid=0(root)"}',
        b'{"op": "stop", "why": "\\u001b[2J"}',
        json.dumps({"op": "stop", "why": "x" * (bp.MAX_WHY + 1)}).encode(),
    ],
)
def test_other_control_messages_are_refused(payload: bytes) -> None:
    with pytest.raises(Refusal):
        bp.parse_control(payload)


def test_the_clients_stop_reason_is_sent_as_one_printable_line_the_broker_takes() -> None:
    """control() cuts and cleans what Container.stop was told, so a reason with a line
    break (a relay's message quoting the kernel) still reaches the audit, as one line."""
    sent = bp.control("stop", why="budget exceeded:\nmore" + "x" * 500)
    [(_, payload)] = bp.FrameReader(bp.CONTROL).feed(sent)
    op, why = bp.parse_control(payload)
    assert (op, why[:21], len(why)) == ("stop", "budget exceeded: more", bp.MAX_WHY)


def test_audit_lines_say_who_what_and_why() -> None:
    caller = bp.Caller(pid=10, uid=1001, gid=1001, user="alice")
    start = bp.parse_start(line(request()), POLICY)
    started = bp.audit_start(caller, start, "0123456789abcdef")
    assert "uid=1001(alice)" in started
    assert f"image={DEFAULT_IMAGE}" in started
    assert "memory=2g" in started
    assert "id=0123456789ab " in started
    stopped = bp.audit_stop(caller, start.name, 137, "the client went away", 3.0)
    assert "code=137" in stopped
    assert "reason=the client went away" in stopped


def test_the_shipped_example_policy_is_the_default_policy() -> None:
    from importlib.resources import files

    text = files("jupyter_docker_kernel").joinpath("data/broker.toml").read_text()
    assert Policy.from_toml(text) == Policy()


def test_the_shipped_systemd_socket_is_where_clients_look() -> None:
    from importlib.resources import files

    unit = files("jupyter_docker_kernel").joinpath("data/jupyter-docker-kernel-broker.socket")
    text = unit.read_text()
    assert f"ListenStream={bp.DEFAULT_SOCKET}\n" in text
    assert f"SocketGroup={bp.DEFAULT_GROUP}\n" in text
    assert "SocketMode=0660\n" in text


def test_the_client_sends_every_limit_so_a_default_above_the_policy_is_refused() -> None:
    """A kernelspec with the default 2g under a 1g policy: refused, not quietly lowered
    (the client's log would say 2g for a 1g container)."""
    sent = bp.start_request(
        "jdk-k-000000", "k", "", "/home/a/p", "", {"key": "k"}, KernelSettings()
    )
    assert json.loads(sent)["settings"]["memory"] == "2g"
    with pytest.raises(Refusal, match="memory 2g is above the allowed 1g"):
        bp.parse_start(sent.rstrip(b"\n"), Policy(memory="1g"))
