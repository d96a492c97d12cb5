"""The compiled thin client (thin_client.c): thin.py's protocol, byte for byte, in C.

The pure tests build the binary with this machine's compiler and run it against a fake
helper (a listening unix socket at the path thin.paths names) next to thin.py's own
client with the same argv and environment. The docker tests start real kernels through
jupyter_client with the kernelspec `setup` wrote, whose argv starts with the binary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from jupyter_docker_kernel import cli, helper, kernelspec, thin, thin_client
from tests.conftest import end_helpers, install_kernel
from tests.kernels import (
    containers_of,
    execute,
    kernel_key,
    launcher_process,
    stream_text,
    wait_for_execute_input,
    wait_until,
)

#: A request's values that thin._dumps escapes, and some it leaves alone.
AWKWARD = 'a "quoted" \\ back\tslash\nnew\x7fline é ü 中 \x01'


@pytest.fixture(scope="module")
def binary() -> Path:
    built, why = thin_client.ensure()
    assert built is not None, why
    return built


@pytest.fixture
def fake_helper_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose runtime base is tmp_path's own (as thin.private_base finds it)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(runtime),
        "LANG": "C.UTF-8",
        "JUPYTER_DOCKER_KERNEL_SETTINGS": json.dumps({"image": "x", "engine_host": None}),
        "JUPYTER_AWKWARD": AWKWARD,
        "JPY_SESSION_NAME": "/notebooks/a b.ipynb",
        "DOCKER_CONFIG": "/somewhere/else",
        "NOT_SENT": "secret",
        "JUPYTER_DOCKER_KERNEL_DEBUG": "1",
    }


class FakeHelper:
    """Listens where the helper for `engine` would; answers each client with `reply` and
    records each request line and the signal bytes that follow it."""

    def __init__(self, base: Path, engine: str, reply: bytes) -> None:
        self.path = thin.paths(str(base), engine)[0]
        self.listener = helper.bind(self.path)  # a long tmp path: bound as the helper does
        self.reply = reply
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @classmethod
    def for_env(cls, env: dict[str, str], reply: bytes) -> FakeHelper:
        """Listening where a client with `env` looks for its helper (its runtime base
        made first, as the helper would)."""
        base = Path(env["XDG_RUNTIME_DIR"]) / "jupyter-docker-kernel"
        base.mkdir(mode=0o700)
        return cls(base, thin.engine_key(env["JUPYTER_DOCKER_KERNEL_SETTINGS"], env), reply)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.partition(b"\n")[0])
                conn.sendall(self.reply)

    def close(self) -> None:
        self.listener.close()


def thin_py_argv(*args: str) -> list[str]:
    """thin.py's client as the launcher runs it, without the in-process fallback."""
    code = "import sys; from jupyter_docker_kernel import thin; sys.exit(thin.main(sys.argv[1:]))"
    return [sys.executable, "-I", "-c", code, *args]


def test_the_request_line_is_byte_for_byte_thin_pys_and_the_exit_code_is_the_helpers(
    binary: Path, fake_helper_env: dict[str, str], tmp_path: Path
) -> None:
    # Switched off, the compiled client asks for no hand-over, as thin.py never does.
    env = {**fake_helper_env, thin.HANDOVER_ENV: "0"}
    fake = FakeHelper.for_env(env, b"A 42\nE one line\nE \xc3\xa9 two\nX 7\n")
    cwd = tmp_path / "note books"
    cwd.mkdir()
    args = ["-f", "./sub/../kernel-1.json", "extra"]
    try:
        ours = subprocess.run(
            [str(binary), "2", "/nonexistent/python", "-I", *args],
            env=env, cwd=cwd, capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        theirs = subprocess.run(
            thin_py_argv(*args), env=env, cwd=cwd, capture_output=True, timeout=10, check=False
        )
    finally:
        fake.close()
    assert (ours.returncode, theirs.returncode) == (7, 7), (ours.stderr, theirs.stderr)
    assert ours.stderr == theirs.stderr == "one line\né two\n".encode()
    mine, python = fake.requests
    assert mine == python
    sent = json.loads(mine)
    assert sent["env"]["JUPYTER_AWKWARD"] == AWKWARD
    assert "NOT_SENT" not in sent["env"]
    assert sent["connection_file"] == str(cwd / "kernel-1.json")
    assert sent["debug"] is True


@pytest.mark.parametrize(("switch", "asks"), [(None, True), ("1", True), ("0", False)])
def test_the_compiled_client_asks_for_the_hand_over_unless_switched_off(
    binary: Path, fake_helper_env: dict[str, str], switch: str | None, asks: bool
) -> None:
    env = {**fake_helper_env, **({thin.HANDOVER_ENV: switch} if switch else {})}
    fake = FakeHelper.for_env(env, b"A 1\nX 0\n")
    try:
        done = subprocess.run(
            [str(binary), "2", "/nonexistent/python", "-I", "-f", "k.json"],
            env=env, cwd=fake_helper_env["HOME"], capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert (json.loads(fake.requests[0]).get("handover") is True) is asks


def test_a_helper_gone_after_accepting_is_lost_exit_with_a_message(
    binary: Path, fake_helper_env: dict[str, str]
) -> None:
    env = fake_helper_env
    fake = FakeHelper.for_env(env, b"A 42\n")
    try:
        proc = subprocess.run(
            [str(binary), "1", "/nonexistent/python", "-f", "/k.json"],
            env=env, capture_output=True, timeout=10, check=False,
        )  # fmt: skip
    finally:
        fake.close()
    assert proc.returncode == thin.LOST_EXIT
    assert b"the resident helper (pid 42) went away" in proc.stderr


def test_with_the_helper_switched_off_it_execs_the_python_command_in_its_own_process(
    binary: Path, fake_helper_env: dict[str, str], tmp_path: Path
) -> None:
    code = "import os, sys; print(os.getpid(), sys.argv[1:])"
    proc = subprocess.Popen(
        [str(binary), "2", sys.executable, "-c", code, "-f", "k.json"],
        env={**fake_helper_env, thin.NO_HELPER_ENV: "1"}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=10)
    assert out.split(" ", 1) == [str(proc.pid), "['-f', 'k.json']\n"]


def test_an_argv_only_the_full_launcher_knows_goes_to_the_python_command(
    binary: Path, fake_helper_env: dict[str, str]
) -> None:
    env = fake_helper_env
    fake = FakeHelper.for_env(env, b"A 1\nX 0\n")
    try:
        proc = subprocess.run(
            [str(binary), "2", sys.executable, "-c", "print('python')", "--help"],
            env=env, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    finally:
        fake.close()
    assert proc.stdout == "python\n"
    assert fake.requests == []


def test_the_binary_starts_the_helper_with_thin_pys_command() -> None:
    """The non-isolated form's code is compiled in from hostpython; thin.spawn_argv has
    its own copy (this process is not isolated, so it returns that form)."""
    header = thin_client.config_header()
    code = thin.spawn_argv("B", "E")[2]
    assert thin.spawn_argv("B", "E") == [sys.executable, "-c", code, "--base", "B", "--engine", "E"]
    assert f"#define JDK_HELPER_CODE {thin_client._c_string(code)}\n" in header
    assert f"#define JDK_HELPER_MODULE {thin_client._c_string(thin_client.HELPER_MODULE)}" in header


def test_setup_without_a_compiler_writes_the_python_argv(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(thin_client.CC_ENV, "/nonexistent/cc")
    argv = ["setup", "--name", "nocc", "--image", "x", "--user", "--skip-checks"]
    assert cli.main(argv) == 0
    data = json.loads((data_dir / "kernels" / "nocc" / "kernel.json").read_text())
    assert data["argv"] == [*kernelspec.launcher_argv(sys.executable), "-f", "{connection_file}"]
    assert cli.main(["show", "nocc"]) == 0
    out = capsys.readouterr().out
    assert "client    python" in out
    assert "relay     the resident helper (no usable compiled client" in out


@pytest.mark.parametrize("switch", [None, "0"])
def test_show_says_whether_the_compiled_client_or_the_helper_relays(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    switch: str | None,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["setup", "--name", "cc", "--image", "x", "--user", "--skip-checks"]
    assert cli.main(argv) == 0
    if switch is not None:
        path = data_dir / "kernels" / "cc" / "kernel.json"
        data = json.loads(path.read_text())
        data["env"][thin.HANDOVER_ENV] = switch
        path.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli.main(["show", "cc"]) == 0
    relay = next(line for line in capsys.readouterr().out.splitlines() if "relay " in line)
    if switch is None:
        assert relay.startswith("  relay     the compiled client: the helper hands it")
    else:
        assert (
            relay == f"  relay     the resident helper ({thin.HANDOVER_ENV}=0 in kernel.json's env)"
        )


def test_setup_with_a_compiler_starts_argv_with_the_client_and_show_says_so(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["setup", "--name", "cc", "--image", "x", "--user", "--skip-checks"]
    assert cli.main(argv) == 0
    data = json.loads((data_dir / "kernels" / "cc" / "kernel.json").read_text())
    python = kernelspec.launcher_argv(sys.executable)
    binary = thin_client.binary_path()
    assert data["argv"] == [str(binary), "4", *python, "-f", "{connection_file}"]
    st = binary.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o755, os.getuid())
    assert cli.main(["show", "cc"]) == 0
    assert f"client    compiled {binary} (" in capsys.readouterr().out


def test_a_stale_client_is_reported_and_rebuilt_by_the_upgrade(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cli.main(["setup", "--name", "old", "--image", "x", "--user", "--skip-checks"]) == 0
    spec = data_dir / "kernels" / "old"
    data = json.loads((spec / "kernel.json").read_text())
    stale = Path(data["argv"][0]).with_name(f"{thin_client.BINARY_PREFIX}0.0.1-0000")
    stale.write_bytes(Path(data["argv"][0]).read_bytes())
    stale.chmod(0o755)
    data["argv"][0] = str(stale)
    (spec / "kernel.json").write_text(json.dumps(data))
    assert "another version" in thin_client.problem(str(stale))
    assert kernelspec.upgrade(spec)
    assert json.loads((spec / "kernel.json").read_text())["argv"][0] == str(
        thin_client.binary_path()
    )


# -- real kernels -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_kernel(kernel_image: str) -> str:
    """A kernelspec written by setup, through the compiled client (asserted)."""
    path = install_kernel("thin-client-test", kernel_image)
    argv = json.loads((path / "kernel.json").read_text())["argv"]
    assert os.path.basename(argv[0]).startswith(thin_client.BINARY_PREFIX)
    return "thin-client-test"


def start(kernel_name: str, cwd: Path) -> tuple[KernelManager, object]:
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def is_compiled(km: KernelManager) -> bool:
    exe = os.readlink(f"/proc/{launcher_process(km).pid}/exe")
    return os.path.basename(exe).startswith(thin_client.BINARY_PREFIX)


@pytest.mark.docker
def test_a_real_kernel_through_the_compiled_client_runs_interrupts_and_exits(
    client_kernel: str, workdir: Path
) -> None:
    end_helpers()  # the binary starts the helper itself, and stays the kernel's client
    first, kc1 = start(client_kernel, workdir)
    km, kc = start(client_kernel, workdir)
    try:
        assert is_compiled(first)
        assert is_compiled(km)
        reply, outputs = execute(kc, "print(6 * 7)")  # type: ignore[arg-type]
        assert reply["status"] == "ok"
        assert "42" in stream_text(outputs)
        msg_id = kc.execute("import time; time.sleep(60)")  # type: ignore[attr-defined]
        wait_for_execute_input(kc, msg_id)  # type: ignore[arg-type]
        km.interrupt_kernel()  # SIGINT to the binary, one byte to the helper
        reply = kc.get_shell_msg(timeout=30)  # type: ignore[attr-defined]
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        kc.execute("import os; os._exit(3)")  # type: ignore[attr-defined]
        process = launcher_process(km)
        assert process.wait(timeout=30) == 3  # the kernel's exit code, passed through
    finally:
        for manager, client in ((km, kc), (first, kc1)):
            client.stop_channels()  # type: ignore[attr-defined]
            manager.shutdown_kernel(now=False)
    assert not containers_of(kernel_key(km))


@pytest.mark.docker
def test_a_killed_compiled_client_has_its_container_gone_within_5s(
    client_kernel: str, workdir: Path
) -> None:
    warm, kc0 = start(client_kernel, workdir)  # another session: the helper serves on
    km, kc = start(client_kernel, workdir)
    try:
        assert is_compiled(km)
        client = launcher_process(km)
        os.killpg(client.pid, signal.SIGKILL)  # as jupyter_client's kill does
        client.wait(timeout=5)
        took = wait_until(lambda: not containers_of(kernel_key(km)), 5)
        print(f"container removed {took:.2f} s after the compiled client's SIGKILL")
    finally:
        for manager, client_ in ((km, kc), (warm, kc0)):
            client_.stop_channels()  # type: ignore[attr-defined]
            if manager.has_kernel:
                manager.shutdown_kernel(now=True)
            manager.cleanup_resources()


def test_doctor_checks_the_client_exists_and_matches(binary: Path, tmp_path: Path) -> None:
    from jupyter_docker_kernel import doctor, manage

    found: list[tuple[str, str, str]] = []

    def add(name: str, status: str, detail: str, fix: str = "") -> None:
        found.append((name, status, detail))

    for client in (str(binary), str(tmp_path / f"{thin_client.BINARY_PREFIX}gone")):
        spec = manage.SpecInfo("k", "/p", "K", sys.executable, None, client=client)
        doctor._check_client(spec, add)
    (current, missing) = found
    assert current[:2] == ("k: thin client", "OK")
    assert missing[1] == "WARN"
    assert "is missing" in missing[2]
