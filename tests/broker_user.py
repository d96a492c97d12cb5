"""What the broker tests' unprivileged users run (tests/test_broker.py), in their own venv.

Run as `python broker_user.py COMMAND ...` by a test user (runuser), never imported by
the tests: it imports jupyter_client and the package from the users' venv. Each command
prints one JSON object on stdout.

    autograde COURSE A      `nbgrader autograde A` in COURSE with a kernelspec of ours
    notebook PROJECT        a two-cell notebook through nbclient: the uid it printed
    kernel MODE PROJECT     a kernel through jupyter_client (MODE: provisioner or argv):
                            its uid and gid, an interrupt of a sleep, a restart, a shutdown
    hold PROJECT            start a kernel (provisioner), print its container's name,
                            socket dir and our pid, then wait to be killed
    connect PATH            try to connect to a unix socket; print what happened
    read PATH               try to read a file or list a dir; print what happened
    flood N                 hold N idle connections to the broker, then ask on one more
    cells FILE              a kernel (provisioner) with FILE's settings runs FILE's cells
                            in turn (FILE: {"settings": {...}, "cells": [...]}): each
                            cell's status and output tail, or that the kernel died
    raw FILE                send each line of FILE (a JSON list of base64 strings) on a
                            fresh connection to the broker; print each first answer
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def isolated_spec(provisioner: bool) -> str:
    """A kernelspec in a private Jupyter dir (as `setup --user` would write it)."""
    from jupyter_docker_kernel.kernelspec import build_kernel_json
    from jupyter_docker_kernel.settings import KernelSettings

    home = tempfile.mkdtemp(prefix="jdkt-")
    for name in ("JUPYTER_DATA_DIR", "JUPYTER_PATH"):
        os.environ[name] = f"{home}/data"
    os.environ["JUPYTER_RUNTIME_DIR"] = f"{home}/runtime"
    os.environ["JUPYTER_CONFIG_DIR"] = f"{home}/config"
    spec = json.loads(os.environ.get("JDKT_SETTINGS", "{}"))
    kernel_json = build_kernel_json(
        KernelSettings.from_dict(spec),
        display_name="broker test",
        python=sys.executable,
        provisioner=provisioner,
    )
    path = Path(home, "data/kernels/brokertest")
    path.mkdir(parents=True)
    (path / "kernel.json").write_text(json.dumps(kernel_json))
    return "brokertest"


def execute(kc: Any, code: str, timeout: float = 30) -> dict[str, Any]:
    """Run code; its stdout and the reply's status (and ename on error)."""
    msg_id = kc.execute(code)
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = reply_to(kc, msg_id, timeout)
    return {"out": "".join(out), "status": reply["status"], "ename": reply.get("ename", "")}


def settled(kc: Any, code: str) -> str:
    """The status of code run once the kernel has settled: ipykernel aborts requests that
    arrive while it is still flushing its queue after an error (the interrupt's), which
    is the client's race, not the kernel's state."""
    for _ in range(5):
        status = str(execute(kc, code)["status"])
        if status != "aborted":
            return status
        time.sleep(0.5)
    return "aborted"


def reply_to(kc: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    """The shell reply to msg_id (skipping others: wait_for_ready can leave a second
    kernel_info_reply behind)."""
    while True:
        msg = kc.get_shell_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") == msg_id:
            content = msg["content"]
            assert isinstance(content, dict)
            return content


def cmd_kernel(mode: str, project: str) -> dict[str, Any]:
    from jupyter_client.manager import start_new_kernel

    name = isolated_spec(mode == "provisioner")
    os.chdir(project)
    started = time.monotonic()
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=60)
    result: dict[str, Any] = {"start_seconds": time.monotonic() - started}
    try:
        ids = execute(kc, "import os; print(os.getuid(), os.getgid(), os.getcwd())")
        result["ids"] = ids["out"].split()
        result["listing"] = execute(kc, "print(*sorted(os.listdir('.')))")["out"].split()
        result["write"] = execute(kc, "open('from-kernel.txt', 'w').write('hi')")["status"]
        result["home"] = execute(kc, "print(*sorted(os.listdir('/home')))")["out"].split()
        sleeping = kc.execute("import time; time.sleep(60)")
        time.sleep(1.0)
        km.interrupt_kernel()
        result["interrupted"] = reply_to(kc, sleeping, 20).get("ename", "")
        result["after_interrupt"] = settled(kc, "x = 1")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        result["after_restart"] = settled(kc, "import os; print(os.getuid())")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    result["alive_after_shutdown"] = km.is_alive()
    return result


def cmd_notebook(project: str) -> dict[str, Any]:
    """A notebook run by nbclient (as nbconvert --execute and papermill do)."""
    import nbformat
    from nbclient import NotebookClient

    name = isolated_spec(True)
    os.chdir(project)
    new_nb, new_cell = nbformat.v4.new_notebook, nbformat.v4.new_code_cell
    nb = new_nb()  # type: ignore[no-untyped-call]
    nb.cells = [
        new_cell("import os; print(os.getuid())"),  # type: ignore[no-untyped-call]
        new_cell("open('from-notebook.txt', 'w').write('hi')"),  # type: ignore[no-untyped-call]
    ]
    resources = {"metadata": {"path": project}}
    NotebookClient(nb, kernel_name=name, timeout=60, resources=resources).execute()
    return {"uid": nb.cells[0].outputs[0]["text"].strip()}


def cmd_autograde(course: str, assignment: str) -> dict[str, Any]:
    """`nbgrader autograde` in course with a kernelspec of ours (JDKT_SETTINGS)."""
    import subprocess

    name = isolated_spec(True)
    nbgrader = str(Path(sys.executable).with_name("nbgrader"))
    args = ["autograde", assignment, f"--ExecutePreprocessor.kernel_name={name}", "--force"]
    proc = subprocess.run(
        [nbgrader, *args], cwd=course, capture_output=True, text=True, timeout=300, check=False
    )
    return {"code": proc.returncode, "output": (proc.stdout + proc.stderr)[-4000:]}


def cmd_hold(project: str) -> None:
    from jupyter_client.manager import start_new_kernel

    name = isolated_spec(True)
    os.chdir(project)
    km, _kc = start_new_kernel(kernel_name=name, startup_timeout=60)
    container = km.provisioner.container  # type: ignore[union-attr]
    assert container is not None
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "container": container.name,
                "sockets": os.path.realpath(container.runtime_dir),
                "connection": km.connection_file,
            }
        ),
        flush=True,
    )
    time.sleep(3600)


def run_until_idle_or_dead(km: Any, kc: Any, code: str, timeout: float) -> dict[str, Any]:
    """Run code, draining iopub as a client must; its status, or "died" when the kernel
    ends first (a limit's stop), or "timeout". Output is kept only at its tail."""
    import queue

    msg_id = kc.execute(code)
    out = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            if not km.is_alive():  # what came before the end (the kill notice) is in
                return {"status": "died", "out": out}
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out = (out + msg["content"]["text"])[-2000:]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while time.monotonic() < deadline:  # an idle can come from a kernel about to die
        try:
            reply = reply_to(kc, msg_id, 0.5)
        except queue.Empty:
            if not km.is_alive():
                return {"status": "died", "out": out}
            continue
        return {"status": reply["status"], "out": out, "ename": reply.get("ename", "")}
    return {"status": "timeout", "out": out}


def cmd_cells(path: str) -> dict[str, Any]:
    """Hostile cells (tests/test_hostile_*.py's own code) in one kernel, in turn, until one
    ends the kernel; then the kernel is shut down as a client would."""
    from jupyter_client.manager import start_new_kernel

    job = json.loads(Path(path).read_text())
    os.environ["JDKT_SETTINGS"] = json.dumps(job["settings"])
    name = isolated_spec(True)
    os.chdir(job["workdir"])
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=60)
    results = []
    try:
        for code in job["cells"]:
            results.append(run_until_idle_or_dead(km, kc, code, job.get("timeout", 120)))
            if results[-1]["status"] in ("died", "timeout"):
                break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    return {"cells": results, "alive_after_shutdown": km.is_alive()}


def cmd_connect(path: str) -> dict[str, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        return {"connected": False, "error": type(exc).__name__}
    return {"connected": True, "error": ""}


def cmd_read(path: str) -> dict[str, Any]:
    """Try to read a file (or list a dir); print what happened."""
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            Path(path).read_bytes()
    except OSError as exc:
        return {"error": type(exc).__name__}
    return {"error": ""}


def cmd_raw(path: str) -> dict[str, Any]:
    broker = os.environ["JUPYTER_DOCKER_KERNEL_BROKER"]
    answers = []
    for encoded in json.loads(Path(path).read_text()):
        data = base64.b64decode(encoded)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(broker)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # a line cut short ends here
        except OSError:
            pass
        got = b""
        try:
            while b"\n" not in got:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError as exc:
            got = f"{type(exc).__name__}".encode()
        sock.close()
        answers.append(got.decode(errors="replace"))
    return {"answers": answers}


def cmd_flood(count: str) -> dict[str, Any]:
    """Hold `count` connections open without a request, then ask on one more."""
    broker = os.environ["JUPYTER_DOCKER_KERNEL_BROKER"]
    held = []
    for _ in range(int(count)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(broker)
        held.append(sock)
    time.sleep(0.5)  # the broker has counted them
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(broker)
    sock.sendall(b"{}\n")
    answer = sock.recv(4096).decode(errors="replace")
    for other in [*held, sock]:
        other.close()
    return {"answer": answer}


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "hold":
        cmd_hold(*args)
        return
    handlers: dict[str, Callable[..., dict[str, Any]]] = {
        "kernel": cmd_kernel,
        "notebook": cmd_notebook,
        "autograde": cmd_autograde,
        "connect": cmd_connect,
        "raw": cmd_raw,
        "cells": cmd_cells,
        "read": cmd_read,
        "flood": cmd_flood,
    }
    print(json.dumps(handlers[command](*args)), flush=True)


if __name__ == "__main__":
    main()
