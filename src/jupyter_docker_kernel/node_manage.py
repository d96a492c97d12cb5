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
from typing import TypeVar

from jupyter_docker_kernel import engine as engine_mod
from jupyter_docker_kernel import reaper
from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import DockerKernelError
from jupyter_docker_kernel.rundir import runtime_base
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


#: Runs on the node ($0 the node user's runtime base, $1 "1" for a dry run): prints and
#: (unless dry) removes each kernel dir (KEY-NONCE) that no container of that kernel on
#: the node's engine goes with, once it is a minute old (a start makes the dir before its
#: container). Such dirs are left when the SSH session around `docker run` was cut (the
#: shell that would remove the dir dies with it); they hold the kernel's HMAC key.
_SWEEP_SCRIPT = r"""
b=$0; dry=$1
[ -d "$b" ] || exit 0
names=$(docker ps -a --format '{{.Names}}') || exit 1
for d in "$b"/*; do
  [ -d "$d" ] && [ ! -L "$d" ] || continue
  n=${d##*/}; key=${n%-*}
  [ "$key" != "$n" ] || continue
  case "$names" in *"jdk-$key-"*) continue;; esac
  [ -z "$(find "$d" -maxdepth 0 -mmin -1)" ] || continue
  echo "$d"
  [ "$dry" = 1 ] || rm -rf -- "$d"
done
"""


def sweep_dirs(url: str, *, dry_run: bool, environ: Mapping[str, str] | None) -> list[str]:
    """The node's kernel dirs without a container (see _SWEEP_SCRIPT), removed unless
    dry_run; their paths on the node."""
    from jupyter_docker_kernel.ssh import Connection  # only for nodes

    connection = Connection.to(url, environ)
    base = connection.facts().base
    proc = connection.run(["sh", "-c", _SWEEP_SCRIPT, base, "1" if dry_run else "0"])
    return proc.stdout.decode(errors="replace").split()


def gc(
    urls: Iterable[str],
    *,
    dry_run: bool,
    command: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[reaper.GcResult, list[str]]:
    """Remove the node containers whose launcher (on this host) is gone, by reaper's
    rules, then the node's kernel dirs no container goes with (sweep_dirs: "NODE:PATH"
    in `dirs`); returns what went and one warning per node that did not answer. The
    nodes are asked at once (at_once)."""
    base = runtime_base()

    def collect(url: str) -> reaper.GcResult | str:
        result = reaper.GcResult()
        try:
            reaper.reap_containers(
                node_engine(url, command, environ),
                result,
                base,
                dry_run=dry_run,
                swept=lambda key: False,  # no warm pools on nodes
            )
            result.dirs += [
                f"{url}:{path}" for path in sweep_dirs(url, dry_run=dry_run, environ=environ)
            ]
        except DockerKernelError as exc:
            return f"warning: node {url} not collected: {exc}"
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
