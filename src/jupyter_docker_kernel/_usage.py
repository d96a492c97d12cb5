"""In-container: ipykernel's `usage_reply` tells the container's limits, not the host's.

JupyterLab's Kernel Usage panel (jupyter-resource-usage) sends `usage_request` on the
control channel; ipykernel answers with psutil's view of the machine, which inside a
container is the host's (24 GiB free while the kernel dies at its --memory). This module
rewrites that reply from the container's cgroup (v1 or v2): `host_virtual_memory` becomes
the memory limit and the container's usage, `cpu_count` the --cpus quota,
`host_cpu_percent` the share of that quota used, and a `container` field adds pids
current/limit. ipykernel's fields and shape are kept, so the panel renders it unchanged.

How it gets into the kernel: hardening.py bind-mounts this file read-only as
`sitecustomize.py` in a directory of its own; the supervisor (_supervise.py) puts that
directory on PYTHONPATH for the kernel's command only, so Python's `site` imports it at the
kernel's start. It then waits, at no cost, for `ipykernel.kernelbase` to be imported and
wraps `Kernel.usage_request`; then it runs the image's own sitecustomize, which it
shadows. A pooled kernel (forked from the supervisor, ipykernel already imported) gets
`install()` called by the supervisor instead. The host imports this module only in tests.

It fails safe: anything unexpected (no cgroup files, as under gVisor; another ipykernel;
a kernel that is not ipykernel) leaves ipykernel's reply as it was. It runs in users'
images, so it keeps to the standard library and Python 3.7.
"""

import contextlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

CGROUP_ROOT = "/sys/fs/cgroup"
#: cgroup v1 writes a page-rounded 2**63-1 for "no limit"; anything this big is none.
UNLIMITED = 1 << 60
#: The hook wraps this module's Kernel class when it is imported.
KERNELBASE = "ipykernel.kernelbase"

Numbers = Dict[str, int]


class Cgroup:
    """The container's own cgroup files, v2 (one tree) or v1 (one tree per controller).

    `root` is where the cgroup filesystem is mounted; tests point it at a fake tree.
    """

    def __init__(self, root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> None:
        self.root = root
        self.v2 = os.path.isfile(os.path.join(root, "cgroup.controllers"))
        self.paths = own_paths(read(proc_cgroup) or "")

    def file(self, controller: str, name: str) -> Optional[str]:
        """The text of a cgroup file, or None. The container's cgroup is either the mount's
        root (a private cgroup namespace, v1's bind mounts) or, with the host's namespace,
        its path from /proc/self/cgroup below the mount: both are tried."""
        if self.v2:
            bases = [os.path.join(self.root, self.paths.get("", "/").lstrip("/")), self.root]
        else:
            top = os.path.join(self.root, controller)
            bases = [os.path.join(top, self.paths.get(controller, "/").lstrip("/")), top]
        for base in bases:
            text = read(os.path.join(base, name))
            if text is not None:
                return text
        return None

    def number(self, controller: str, name: str) -> Optional[int]:
        """A file holding one integer; None when absent, "max" or unlimited."""
        text = (self.file(controller, name) or "").strip()
        try:
            value = int(text)
        except ValueError:
            return None
        return value if 0 <= value < UNLIMITED else None

    def stat(self, controller: str, name: str) -> Numbers:
        """A flat `key value` file such as memory.stat or cpu.stat."""
        out: Numbers = {}
        for line in (self.file(controller, name) or "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def memory(self) -> Optional[Dict[str, Any]]:
        """psutil.virtual_memory()'s fields for the container; None without a limit."""
        if self.v2:
            limit = self.number("memory", "memory.max")
            usage = self.number("memory", "memory.current")
            stat = self.stat("memory", "memory.stat")
            inactive_file = stat.get("inactive_file", 0)
            active = stat.get("active_anon", 0) + stat.get("active_file", 0)
            inactive = stat.get("inactive_anon", 0) + inactive_file
            cached, shared = stat.get("file", 0), stat.get("shmem", 0)
        else:
            limit = self.number("memory", "memory.limit_in_bytes")
            usage = self.number("memory", "memory.usage_in_bytes")
            stat = self.stat("memory", "memory.stat")
            inactive_file = stat.get("total_inactive_file", 0)
            active = stat.get("total_active_anon", 0) + stat.get("total_active_file", 0)
            inactive = stat.get("total_inactive_anon", 0) + inactive_file
            cached, shared = stat.get("total_cache", 0), stat.get("total_shmem", 0)
        if limit is None or usage is None or limit == 0:
            return None
        # "used" as `docker stats` counts it: reclaimable page cache is not what kills.
        used = max(0, min(usage - inactive_file, limit))
        return {
            "total": limit,
            "available": limit - used,
            "percent": round(100.0 * used / limit, 1),
            "used": used,
            "free": max(0, limit - usage),
            "active": active,
            "inactive": inactive,
            "cached": cached,
            "shared": shared,
        }

    def cpus(self) -> Optional[float]:
        """The CPU quota in CPUs (--cpus), or None when there is none."""
        if self.v2:
            parts = (self.file("cpu", "cpu.max") or "").split()
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                return None
            quota, period = int(parts[0]), int(parts[1])
        else:
            quota = self.number("cpu", "cpu.cfs_quota_us") or 0  # -1: no quota
            period = self.number("cpu", "cpu.cfs_period_us") or 0
        if quota <= 0 or period <= 0:
            return None
        return quota / period

    def cpu_seconds(self) -> Optional[float]:
        """CPU time the whole container has used, in seconds."""
        if self.v2:
            usec = self.stat("cpu", "cpu.stat").get("usage_usec")
            return None if usec is None else usec / 1e6
        nsec = self.number("cpuacct", "cpuacct.usage")
        return None if nsec is None else nsec / 1e9

    def pids(self) -> Tuple[Optional[int], Optional[int]]:
        """(current, limit) of the pids controller; None where unknown or unlimited."""
        return self.number("pids", "pids.current"), self.number("pids", "pids.max")


def read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read()
    except (OSError, ValueError):
        return None


def own_paths(text: str) -> Dict[str, str]:
    """/proc/self/cgroup -> {controller: path}; v2's single line is under ""."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


def cpuset_count(text: str) -> Optional[int]:
    """The number of CPUs in a cpuset list such as "0-3,6"."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return None
        count += int(high or low) - int(low) + 1
    return count or None


class Usage:
    """Rewrites one `usage_reply` content; keeps the CPU sample between replies."""

    def __init__(self, cgroup: Optional[Cgroup] = None) -> None:
        self.cgroup = cgroup or Cgroup()
        self.last: Optional[Tuple[float, float]] = self.cpu_sample()

    def cpu_sample(self) -> Optional[Tuple[float, float]]:
        used = self.cgroup.cpu_seconds()
        return None if used is None else (time.monotonic(), used)

    def cpu_count(self, host_count: Any) -> Any:
        """What the container may use: the quota, else its cpuset, never above the host's."""
        candidates: List[float] = []
        quota = self.cgroup.cpus()
        if quota is not None:
            candidates.append(quota)
        listed = cpuset_count(
            self.cgroup.file("cpuset", "cpuset.cpus.effective")
            or self.cgroup.file("cpuset", "cpuset.effective_cpus")
            or ""
        )
        if listed is not None:
            candidates.append(listed)
        if isinstance(host_count, (int, float)) and host_count > 0:
            candidates.append(host_count)
        if not candidates:
            return host_count
        count = min(candidates)
        # An int when whole (psutil's type); 1.5 when --cpus 1.5, which is the truth.
        return int(count) if float(count).is_integer() else round(count, 2)

    def cpu_percent(self, cpus: Any) -> Optional[float]:
        """The share of the CPU quota the container used since the last reply (0-100)."""
        now, before = self.cpu_sample(), self.last
        self.last = now or before
        if now is None or before is None or not isinstance(cpus, (int, float)) or cpus <= 0:
            return None
        elapsed = now[0] - before[0]
        if elapsed <= 0:
            return None
        return round(min(100.0, 100.0 * (now[1] - before[1]) / elapsed / cpus), 1)

    def rewrite(self, content: Dict[str, Any]) -> Dict[str, Any]:
        """ipykernel's reply with the host's totals replaced by the container's."""
        memory = self.cgroup.memory()
        cpus = self.cgroup.cpus()
        pids_current, pids_limit = self.cgroup.pids()
        if memory is None and cpus is None and pids_limit is None:
            return content  # no cgroup to read (gVisor, say): nothing truer to say
        out = dict(content)
        out["cpu_count"] = self.cpu_count(content.get("cpu_count"))
        percent = self.cpu_percent(out["cpu_count"])
        if percent is not None:
            out["host_cpu_percent"] = percent
        else:
            out.pop("host_cpu_percent", None)  # the host's figure would mislead
        if memory is not None:
            # Only the fields the container has (no buffers, slab or wired of its own).
            out["host_virtual_memory"] = memory
        out["container"] = {
            "cgroup": "v2" if self.cgroup.v2 else "v1",
            "memory_limit": memory["total"] if memory else None,
            "memory_used": memory["used"] if memory else None,
            "cpus": cpus,
            "pids_current": pids_current,
            "pids_limit": pids_limit,
        }
        return out


def patch_kernel_class(module: Any, usage: Optional[Usage] = None) -> bool:
    """Wrap module.Kernel.usage_request so its `usage_reply` is rewritten; True if done.

    ipykernel's handler builds the reply and sends it itself, so the wrapper catches that
    one send (by message type) for the handler's duration; every other message passes.
    """
    kernel = getattr(module, "Kernel", None)
    original = getattr(kernel, "usage_request", None)
    if original is None or getattr(original, "_jdk_usage", False):
        return False
    rewriter = usage or Usage()

    async def usage_request(self: Any, stream: Any, ident: Any, parent: Any) -> None:
        session = getattr(self, "session", None)
        if session is None:
            result = original(self, stream, ident, parent)
            if inspect.isawaitable(result):
                await result
            return
        send = session.send
        had_own = "send" in vars(session)

        def rewriting_send(
            stream: Any, msg_or_type: Any, content: Any = None, *a: Any, **kw: Any
        ) -> Any:
            if msg_or_type == "usage_reply" and isinstance(content, dict):
                with contextlib.suppress(Exception):  # fail safe: ipykernel's own reply
                    content = rewriter.rewrite(content)
            return send(stream, msg_or_type, content, *a, **kw)

        session.send = rewriting_send
        try:
            result = original(self, stream, ident, parent)
            if inspect.isawaitable(result):
                await result
        finally:
            if had_own:
                session.send = send
            else:
                vars(session).pop("send", None)

    usage_request._jdk_usage = True  # type: ignore[attr-defined]
    usage_request.__doc__ = original.__doc__
    kernel.usage_request = usage_request  # type: ignore[union-attr]
    return True


class _Finder:
    """A meta path finder that patches ipykernel.kernelbase right after it is executed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != KERNELBASE:
            return None
        # Once is enough. A new list: the import in progress iterates the old one.
        sys.meta_path = [f for f in sys.meta_path if f is not self]
        spec = None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec  # None: the normal import machinery carries on

        def exec_and_patch(module: Any) -> None:
            exec_module(module)
            with contextlib.suppress(Exception):  # fail safe: the kernel runs unpatched
                patch_kernel_class(module)

        # The loader instance is this module's own: its type (and get_source) stay.
        loader.exec_module = exec_and_patch  # type: ignore[union-attr]
        return spec


def install() -> None:
    """Patch ipykernel now if it is imported, else as soon as it is; never raises."""
    with contextlib.suppress(Exception):  # fail safe: the kernel runs unpatched
        module = sys.modules.get(KERNELBASE)
        if module is not None:
            patch_kernel_class(module)
        else:
            sys.meta_path.insert(0, _Finder())


def run_shadowed_sitecustomize(here: str) -> None:
    """Run the image's own sitecustomize (Debian's, say), which ours shadows on sys.path."""
    others = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def main() -> None:
    """As sitecustomize: install the hook, leave sys.path as the image had it, chain."""
    here = os.path.dirname(os.path.abspath(__file__))
    install()
    # The kernel's sys.path shows only the image's entries; PYTHONPATH keeps ours for
    # Python subprocesses (a nested kernel gets the hook too).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        run_shadowed_sitecustomize(here)
    except Exception:
        # As site.py does with a failing sitecustomize: say so, carry on.
        sys.stderr.write("Error in the image's sitecustomize (run after jupyter-docker-kernel's)\n")


if __name__ == "sitecustomize":
    main()
