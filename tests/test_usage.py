"""usage_reply tells the container's limits (memory, CPUs, pids), not the host's.

Pure tests read fake cgroup trees (v1 and v2) and a fake ipykernel; the Docker tests send
`usage_request` on the control channel of a real kernel, started through jupyter_client
(cold and pooled), and compare the reply with the limits given at setup.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest

from jupyter_docker_kernel import _usage, cli, hardening
from jupyter_docker_kernel.settings import KernelSettings
from tests.conftest import install_kernel
from tests.kernels import execute, running_kernel, stream_text, wait_until
from tests.test_pool import warm_ready

GIB = 1 << 30
MIB = 1 << 20
#: What ipykernel 7 answers inside a container on this host (psutil sees the host).
HOST_REPLY: dict[str, Any] = {
    "hostname": "kernel",
    "pid": 7,
    "kernel_cpu": 0.0,
    "kernel_memory": 60 * MIB,
    "host_cpu_percent": 3.5,
    "cpu_count": 2,
    "host_virtual_memory": {
        "total": 24 * GIB,
        "available": 20 * GIB,
        "percent": 16.7,
        "used": 4 * GIB,
        "free": 18 * GIB,
        "active": 2 * GIB,
        "inactive": 1 * GIB,
        "buffers": 1 * MIB,
        "cached": 1 * GIB,
        "shared": 1 * MIB,
        "slab": 1 * MIB,
    },
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def v2_tree(root: Path, memory_max: str = str(GIB), cpu_max: str = "150000 100000") -> Path:
    return write_tree(
        root,
        {
            "cgroup.controllers": "cpuset cpu io memory pids\n",
            "memory.max": memory_max + "\n",
            "memory.current": f"{300 * MIB}\n",
            "memory.stat": f"anon {200 * MIB}\nfile {100 * MIB}\nactive_anon {150 * MIB}\n"
            f"inactive_anon {50 * MIB}\nactive_file {40 * MIB}\ninactive_file {60 * MIB}\n"
            f"shmem {1 * MIB}\n",
            "cpu.max": cpu_max + "\n",
            "cpu.stat": "usage_usec 2000000\nuser_usec 1500000\n",
            "cpuset.cpus.effective": "0-1\n",
            "pids.current": "9\n",
            "pids.max": "256\n",
        },
    )


def v1_tree(root: Path) -> Path:
    return write_tree(
        root,
        {
            "memory/memory.limit_in_bytes": f"{512 * MIB}\n",
            "memory/memory.usage_in_bytes": f"{200 * MIB}\n",
            "memory/memory.stat": f"cache {10 * MIB}\ntotal_cache {50 * MIB}\n"
            f"total_active_anon {100 * MIB}\ntotal_inactive_anon {10 * MIB}\n"
            f"total_active_file {20 * MIB}\ntotal_inactive_file {40 * MIB}\n",
            "cpu/cpu.cfs_quota_us": "100000\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "cpuacct/cpuacct.usage": "5000000000\n",
            "cpuset/cpuset.effective_cpus": "0-1\n",
            "pids/pids.current": "12\n",
            "pids/pids.max": "128\n",
        },
    )


def no_proc(tmp_path: Path) -> str:
    return str(tmp_path / "no-proc-self-cgroup")


def test_v2_reply_has_the_containers_memory_cpus_and_pids(tmp_path: Path) -> None:
    usage = _usage.Usage(_usage.Cgroup(str(v2_tree(tmp_path)), no_proc(tmp_path)))
    reply = usage.rewrite(HOST_REPLY)
    memory = reply["host_virtual_memory"]
    assert memory["total"] == GIB
    assert memory["used"] == 240 * MIB  # memory.current minus inactive_file, as docker stats
    assert memory["available"] == GIB - 240 * MIB
    assert memory["free"] == GIB - 300 * MIB
    assert memory["percent"] == pytest.approx(23.4, abs=0.1)
    assert memory["active"] == 190 * MIB
    assert "buffers" not in memory, "no host figure is left in the container's memory"
    assert reply["cpu_count"] == 1.5
    assert reply["container"] == {
        "cgroup": "v2",
        "memory_limit": GIB,
        "memory_used": 240 * MIB,
        "cpus": 1.5,
        "pids_current": 9,
        "pids_limit": 256,
    }
    # ipykernel's own fields stay (the panel renders them), the host's CPU figure goes
    # until a second sample of the container's CPU time exists.
    assert reply["kernel_memory"] == HOST_REPLY["kernel_memory"]
    assert reply["hostname"] == "kernel"
    assert HOST_REPLY["host_virtual_memory"]["total"] == 24 * GIB, "the input is not changed"


def test_v1_reply_has_the_containers_memory_cpus_and_pids(tmp_path: Path) -> None:
    usage = _usage.Usage(_usage.Cgroup(str(v1_tree(tmp_path)), no_proc(tmp_path)))
    reply = usage.rewrite(HOST_REPLY)
    assert reply["host_virtual_memory"]["total"] == 512 * MIB
    assert reply["host_virtual_memory"]["used"] == 160 * MIB
    assert reply["host_virtual_memory"]["cached"] == 50 * MIB
    assert reply["cpu_count"] == 1
    assert isinstance(reply["cpu_count"], int)
    assert reply["container"]["cgroup"] == "v1"
    assert (reply["container"]["pids_current"], reply["container"]["pids_limit"]) == (12, 128)


def test_cpu_percent_is_the_share_of_the_quota_used_since_the_last_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = v2_tree(tmp_path)
    clock = iter([100.0, 110.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    usage = _usage.Usage(_usage.Cgroup(str(root), no_proc(tmp_path)))  # samples 2 s at 100
    (root / "cpu.stat").write_text("usage_usec 9500000\n")  # 7.5 CPU-seconds in 10 s
    assert usage.rewrite(HOST_REPLY)["host_cpu_percent"] == 50.0  # of --cpus 1.5


def test_no_limits_and_no_cgroup_leave_the_reply_as_it_was(tmp_path: Path) -> None:
    unlimited = v2_tree(tmp_path / "v2", memory_max="max", cpu_max="max 100000")
    (unlimited / "pids.max").write_text("max\n")
    for root in (unlimited, tmp_path / "nothing"):
        usage = _usage.Usage(_usage.Cgroup(str(root), no_proc(tmp_path)))
        reply = usage.rewrite(HOST_REPLY)
        assert reply["host_virtual_memory"] == HOST_REPLY["host_virtual_memory"]
    assert _usage.Usage(_usage.Cgroup(str(tmp_path / "nothing"))).rewrite(HOST_REPLY) is HOST_REPLY


def test_the_containers_cgroup_is_found_below_the_mount_with_the_hosts_namespace(
    tmp_path: Path,
) -> None:
    """cgroupns=host: /sys/fs/cgroup is the host's whole tree; /proc/self/cgroup says where."""
    v2_tree(tmp_path / "system.slice" / "docker-abc.scope")
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "memory.max").write_text("max\n")  # the host's root: no limit
    proc = write_tree(tmp_path, {"self-cgroup": "0::/system.slice/docker-abc.scope\n"})
    usage = _usage.Usage(_usage.Cgroup(str(tmp_path), str(proc / "self-cgroup")))
    assert usage.rewrite(HOST_REPLY)["host_virtual_memory"]["total"] == GIB


@pytest.mark.parametrize(
    ("text", "count"), [("0-3\n", 4), ("0,2,4-5", 4), ("7", 1), ("", None), ("x-1", None)]
)
def test_cpuset_count(text: str, count: int | None) -> None:
    assert _usage.cpuset_count(text) == count


class FakeSession:
    """What the patched handler needs of ipykernel's Session: send(stream, type, content)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, stream: object, msg_type: str, content: dict[str, Any], *a: Any) -> None:
        self.sent.append((msg_type, content))


def fake_kernelbase() -> types.ModuleType:
    """A module shaped like ipykernel.kernelbase whose handler sends the host's reply."""

    class Kernel:
        session: FakeSession | None = None

        async def usage_request(self, stream: object, ident: object, parent: object) -> None:
            assert self.session is not None
            self.session.send(stream, "status", {"execution_state": "busy"})
            self.session.send(stream, "usage_reply", dict(HOST_REPLY), parent, ident)

    module = types.ModuleType("ipykernel.kernelbase")
    module.Kernel = Kernel  # type: ignore[attr-defined]
    return module


def test_patched_handler_rewrites_only_the_usage_reply_and_restores_send(tmp_path: Path) -> None:
    module = fake_kernelbase()
    usage = _usage.Usage(_usage.Cgroup(str(v2_tree(tmp_path)), no_proc(tmp_path)))
    assert _usage.patch_kernel_class(module, usage)
    assert not _usage.patch_kernel_class(module, usage), "patching twice does nothing"
    kernel = module.Kernel()
    kernel.session = FakeSession()
    asyncio.run(kernel.usage_request(None, [], {}))
    (_, status), (_, reply) = kernel.session.sent
    assert status == {"execution_state": "busy"}
    assert reply["host_virtual_memory"]["total"] == GIB
    assert "send" not in vars(kernel.session), "the session's own send is back"


def test_a_failing_rewrite_sends_ipykernels_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = fake_kernelbase()
    usage = _usage.Usage(_usage.Cgroup(str(v2_tree(tmp_path)), no_proc(tmp_path)))

    def broken(content: dict[str, Any]) -> dict[str, Any]:
        raise ZeroDivisionError

    monkeypatch.setattr(usage, "rewrite", broken)
    _usage.patch_kernel_class(module, usage)
    kernel = module.Kernel()
    kernel.session = FakeSession()
    asyncio.run(kernel.usage_request(None, [], {}))
    assert kernel.session.sent[-1] == ("usage_reply", HOST_REPLY)


def test_the_hook_is_mounted_read_only_and_named_to_the_supervisor() -> None:
    launch = hardening.Launch(
        kernel_id="k",
        container_name="c",
        runtime_dir="/rt",
        connection_file="/c.json",
        supervisor_path="/venv/jupyter_docker_kernel/_supervise.py",
        host_uid=1000,
        host_gid=1000,
        workdir="/work",
    )
    args = hardening.run_args(KernelSettings(), launch)
    mount = (
        "type=bind,source=/venv/jupyter_docker_kernel/_usage.py,"
        f"target={hardening.USAGE_HOOK_TARGET},readonly"
    )
    assert mount in args
    command = args[args.index(hardening.SUPERVISOR_TARGET) :]
    assert command[command.index("--site") + 1] == hardening.USAGE_SITE_TARGET
    assert command.index("--site") < command.index("--")


def usage_reply(kc: Any) -> dict[str, Any]:
    """Send usage_request on control, as jupyter-resource-usage does; the reply's content."""
    msg = kc.session.msg("usage_request", {})
    kc.control_channel.send(msg)
    while True:
        reply = kc.control_channel.get_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["msg_type"] == "usage_reply"
            content: dict[str, Any] = reply["content"]
            return content


LIMITS = ("--memory", "1g", "--cpus", "1.5", "--pids-limit", "200")


def assert_container_limits(content: dict[str, Any]) -> None:
    assert content["host_virtual_memory"]["total"] == GIB, "--memory 1g, not the host's"
    assert 0 < content["host_virtual_memory"]["used"] < GIB
    assert content["cpu_count"] == 1.5
    assert content["container"]["pids_limit"] == 200
    assert 0 < content["container"]["pids_current"] < 200
    assert content["kernel_memory"] > 0, "ipykernel's own fields are still there"


@pytest.mark.docker
def test_usage_request_answers_with_the_containers_limits(kernel_image: str, workdir: Path) -> None:
    """A real kernel, started through jupyter_client, answers usage_request on control with
    its container's limits: --memory 1g is 1 GiB total, --cpus 1.5 is 1.5 CPUs."""
    name = "jdk-test-usage"
    install_kernel(name, kernel_image, *LIMITS)
    with running_kernel(name, str(workdir)) as (_km, kc):
        first = usage_reply(kc)
        print(f"usage_reply: {first}")
        assert_container_limits(first)
        later = usage_reply(kc)
        assert 0 <= later["host_cpu_percent"] <= 100, "the share of --cpus, sampled"
        # The hook hides itself: the kernel's sys.path is the image's, and the image's own
        # sitecustomize (Debian's, which ours shadows) still ran.
        code = (
            "import sys, sitecustomize\n"
            "print(sitecustomize.__file__, [p for p in sys.path if 'docker-kernel' in p])"
        )
        reply, outputs = execute(kc, code)
        assert reply["status"] == "ok", reply
        image_site, ours_on_path = stream_text(outputs).split()
        assert image_site.startswith("/usr/lib/python3"), image_site
        assert ours_on_path == "[]"


@pytest.mark.docker
def test_a_pooled_kernel_answers_usage_request_with_the_containers_limits(
    kernel_image: str, workdir: Path
) -> None:
    """A warm container's kernel is forked from the supervisor, not started by a new
    Python: the supervisor installs the hook itself."""
    name = "jdk-test-usage-pool"
    install_kernel(name, kernel_image, *LIMITS, "--no-workdir", "--pool", "1", "--pool-ttl", "120")
    try:
        with running_kernel(name, str(workdir)) as (_km, kc):
            assert_container_limits(usage_reply(kc))
    finally:
        assert cli.main(["gc", "--pools"]) == 0
        wait_until(lambda: not warm_ready(), 10)
