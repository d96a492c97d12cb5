"""`list` and `gc` over the remote nodes of every kernelspec (issue 13).

cli.cmd_list and cli.cmd_gc call this after this host's own part: the nodes are those of
the installed kernelspecs (setup --engine-host ssh://... and --node), each asked once
through its own engine CLI over SSH (ssh.py's multiplexed connection). A node that does
not answer is one warning line, never a failed command: the others are still covered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import reaper
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.rundir import (
    POOL_DIR_PREFIX,
    POOL_NAME_PREFIX,
    remove_tree,
    runtime_base,
)
from jupyter_docker_kernel.settings import KernelSettings

T = TypeVar("T")


@dataclass(frozen=True)
class NodeKernel:
    """One kernel container on a node, as `list` shows it."""

    node: str
    name: str
    state: str
    since: str


def node_urls(settings: Iterable[KernelSettings]) -> list[str]:
    """Every node the kernelspecs name, each once, in the order first named."""
    urls: dict[str, None] = {}
    for s in settings:
        for url in (s.engine_host or "", *s.nodes):
            if url.startswith("ssh://"):
                urls.setdefault(url, None)
    return list(urls)


def node_engine(url: str, command: str | None, environ: Mapping[str, str] | None) -> Engine:
    """The node's engine CLI, reached over SSH (Engine.command_line)."""
    return Engine(command, host=url, environ=environ)


def kernels(
    urls: Iterable[str], command: str | None = None, environ: Mapping[str, str] | None = None
) -> list[tuple[str, list[NodeKernel] | DockerKernelError]]:
    """Our kernel containers on each node (any state), or why that node was not listed.
    The nodes are asked at once: one that does not answer costs its timeout once."""

    def ask(url: str) -> tuple[str, list[NodeKernel] | DockerKernelError]:
        try:
            items = node_engine(url, command, environ).list_containers(
                {engine_mod.LABEL_KERNEL_ID: None}
            )
        except DockerKernelError as exc:
            return url, exc
        return url, [
            NodeKernel(
                url,
                str(i.get("Names") or i.get("ID")),
                str(i.get("State", "")),
                str(i.get("CreatedAt", "")),
            )
            for i in items
        ]

    return at_once(ask, list(urls))


def at_once(ask: Callable[[str], T], urls: list[str]) -> list[T]:
    """ask(url) for every node in threads of its own; the answers in the nodes' order."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
        return list(pool.map(ask, urls))


def gc(
    urls: Iterable[str],
    *,
    dry_run: bool,
    command: str | None = None,
    environ: Mapping[str, str] | None = None,
    pools: bool = False,
    pool_keys: set[str] | None = None,
) -> tuple[reaper.GcResult, list[str]]:
    """Remove the node containers whose launcher (on this host) is gone, by reaper's
    rules; returns what went and one warning per node that did not answer. The nodes are
    asked at once (at_once). pools, pool_keys: as reaper.collect's (`gc --pools`): also
    the unclaimed warm containers on the nodes, and their dirs there (their dirs here go
    with this host's collect, which leaves another engine's warm dirs alone otherwise)."""
    base = runtime_base()

    def swept(key: str) -> bool:
        return pools and (pool_keys is None or key in pool_keys)

    def collect(url: str) -> reaper.GcResult | str:
        result = reaper.GcResult()
        engine = node_engine(url, command, environ)
        try:
            # Each warm container's dir on the node is named as its dir here (its label).
            warm_dirs = {
                str(item.get("Names")): Path(labels.get(engine_mod.LABEL_POOL_DIR, "/"))
                for item in engine.list_containers({engine_mod.LABEL_POOL: None})
                for labels in [reaper.parse_labels(item.get("Labels", ""))]
            }
            reaper.reap_containers(engine, result, base, dry_run=dry_run, swept=swept)
        except DockerKernelError as exc:
            return f"warning: node {url} not collected: {exc}"
        gone = [
            warm_dirs[name]
            for name in result.containers
            if name.startswith(POOL_NAME_PREFIX) and name in warm_dirs
        ]
        if gone and not dry_run:
            from jupyter_docker_kernel.node_backend import remove_warm_dirs

            remove_warm_dirs(engine, [path.name for path in gone])
            for path in gone:
                # Its dir here, unless claimed meanwhile (renamed: then it is not there).
                if path.parent == base and path.name.startswith(POOL_DIR_PREFIX):
                    remove_tree(path)
                    result.dirs.append(str(path))
        try:
            result.dirs += [f"{url}:{d}" for d in sweep_node_dirs(url, environ, dry_run=dry_run)]
        except DockerKernelError as exc:
            return f"warning: node {url}: its kernels' dirs not collected: {exc}"
        return result

    total, warnings = reaper.GcResult(), []
    for done in at_once(collect, list(urls)):
        if isinstance(done, str):
            warnings.append(done)
            continue
        total.containers += done.containers
        total.dirs += done.dirs
        total.kept += done.kept
    return total, warnings


#: Runs on the node in the node user's runtime base ($0): lists (and unless $1 is "dry")
#: removes the dirs older than a minute that are not named in the rest of the arguments
#: (the dirs some container of ours still mounts). A minute: a start makes its dir before
#: its `docker create`.
_SWEEP_SCRIPT = """
base=$0; mode=$1; shift
find "$base" -mindepth 1 -maxdepth 1 -type d -mmin +1 | while read -r d; do
  n=${d##*/}; keep=0
  for l in "$@"; do [ "$n" = "$l" ] && keep=1; done
  [ $keep = 1 ] && continue
  [ "$mode" = dry ] || rm -rf -- "$d"
  printf '%s\\n' "$d"
done
"""


def sweep_node_dirs(url: str, environ: Mapping[str, str] | None, *, dry_run: bool) -> list[str]:
    """Remove the node's kernel dirs (in the node user's runtime base there) that no
    container of ours mounts any more; returns their paths. A kernel's own end removes
    its dir (node_backend.SshBackend.remove); a launcher or Jupyter server killed outright
    leaves it (its container ends with its lifeline, but nobody of ours is left to tidy
    up), as a killed launcher here leaves its runtime dir: gc takes both."""
    from jupyter_docker_kernel import hardening
    from jupyter_docker_kernel.ssh import Connection, NodeTransport

    connection = Connection.to(url, environ)
    api = engine_mod.EngineApi(transport=NodeTransport(connection))
    live = {
        Path(str(mount.get("Source", "/"))).parent.name
        for item in api.containers({engine_mod.LABEL_KERNEL_ID: None}, all=True)
        for mount in item.get("Mounts") or []
        if mount.get("Destination") == hardening.RUNTIME_TARGET
    }
    base = connection.facts().base
    proc = connection.run(
        ["sh", "-c", _SWEEP_SCRIPT, base, "dry" if dry_run else "rm", *sorted(live)], timeout=60
    )
    return proc.stdout.decode(errors="replace").split()
