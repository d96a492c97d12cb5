"""`image push NODE...`: copy an image from this host's engine to nodes, no registry needed.

`docker save IMAGE | ssh NODE docker load`, through the node's multiplexed connection
(ssh.Connection), only to nodes whose image ID differs from ours: an image ID is the hash
of its config, so equal IDs are the same image whatever its tags. Nodes go one after the
other (the bytes cross this host's one uplink anyway). Called by cli (`image push`) and by
the tests' pushed_node fixture; returns data, the CLI prints.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from jupyter_docker_kernel.engine import Engine
from jupyter_docker_kernel.errors import EngineError, ImageError
from jupyter_docker_kernel.ssh import Connection

#: A progress line at most this often per node.
PROGRESS_EVERY = 2.0
CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Pushed:
    """One node's outcome: whether the image was copied (False: it had the same ID) and
    how long it took."""

    node: str
    image_id: str
    copied: bool
    seconds: float
    size: int = 0


def node_image_id(conn: Connection, image: str) -> str:
    """The image's ID on the node; "" when the node's engine does not have it. EngineError
    when the node's engine does not answer (or ssh fails: unknown host, key, host key)."""
    proc = conn.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", image], check=False, timeout=60
    )
    if proc.returncode == 0:
        return proc.stdout.decode().strip()
    said = proc.stderr.decode(errors="replace").strip()
    if "no such image" in said.lower():
        return ""
    last = said.splitlines()[-1] if said else str(proc.returncode)
    raise EngineError(
        f"the engine on the node {conn.node.url} does not answer: {last}",
        "Nothing was copied to it",
        "Start its Docker engine, and check that the node's user may use it (its group).",
    )


def push(
    engine: Engine,
    image: str,
    nodes: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Pushed]:
    """Copy image to every node whose image ID differs; the first failure raises (nodes
    done before it keep their copy; a half-sent image is discarded by the node's
    `docker load`)."""
    say = progress or (lambda line: None)
    local = engine.image_inspect(image)
    if local is None:
        raise ImageError(
            f"Image '{image}' is not in this host's engine",
            "Nothing was pushed",
            "Build it (jupyter-docker-kernel image build) or pull it here first.",
        )
    image_id = str(local["Id"])
    size = int(local.get("Size") or 0)
    done: list[Pushed] = []
    for url in nodes:
        began = time.monotonic()
        conn = Connection.to(url, environ)
        if node_image_id(conn, image) == image_id:
            say(f"{url}: {image} is there already ({image_id[7:19]})")
            done.append(Pushed(url, image_id, False, time.monotonic() - began))
            continue
        say(f"{url}: copying {image} ({size / 1e6:.0f} MB uncompressed)")
        sent = copy_image(engine, conn, image, size, say)
        there = node_image_id(conn, image)
        if there != image_id:
            raise ImageError(
                f"the node {url} has {image} as {there[7:19] or 'nothing'} after the copy, "
                f"not {image_id[7:19]}",
                "The image there is not the one here",
                "Run image push again; if it persists, check the node's disk space.",
            )
        took = time.monotonic() - began
        say(f"{url}: {image} copied in {took:.0f} s ({sent / 1e6:.0f} MB)")
        done.append(Pushed(url, image_id, True, took, sent))
    return done


def copy_image(
    engine: Engine, conn: Connection, image: str, size: int, say: Callable[[str], None]
) -> int:
    """`docker save` here piped into `docker load` on the node; returns the bytes sent."""
    save = subprocess.Popen(
        [engine.executable(), "save", image],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=engine.env(),
        start_new_session=True,
    )
    load = conn.popen(["docker", "load", "--quiet"])
    with save, load:  # closes every pipe, whatever happens
        sent, save_words, load_words = pump(conn, save, load, size, say)
    save_code, load_code = save.returncode, load.returncode
    if save_code != 0:
        raise ImageError(
            f"docker save {image} failed here: {save_words}",
            f"Nothing was copied to {conn.node.url}",
            "Check this host's engine (docker info).",
        )
    if load_code != 0:
        raise ImageError(
            f"docker load on the node {conn.node.url} failed: {load_words or load_code}",
            "The image was not copied there",
            "Check the node's engine and its free disk space.",
        )
    return sent


def pump(
    conn: Connection,
    save: subprocess.Popen[bytes],
    load: subprocess.Popen[bytes],
    size: int,
    say: Callable[[str], None],
) -> tuple[int, str, str]:
    """Move save's stdout into load's stdin with a progress line every PROGRESS_EVERY s;
    returns the bytes sent and what each said on stderr, once both have exited."""
    assert save.stdout is not None
    assert save.stderr is not None
    assert load.stdin is not None
    assert load.stdout is not None
    assert load.stderr is not None
    said: dict[str, bytes] = {}
    # Drained meanwhile: a full pipe would stall the process writing it.
    readers = [
        threading.Thread(target=lambda n=name, s=stream: said.update({n: s.read()}), daemon=True)
        for name, stream in (("save", save.stderr), ("load", load.stderr), ("out", load.stdout))
    ]
    for reader in readers:
        reader.start()
    sent = 0
    last = time.monotonic()
    try:
        while chunk := save.stdout.read(CHUNK):
            load.stdin.write(chunk)
            sent += len(chunk)
            if time.monotonic() - last > PROGRESS_EVERY:
                last = time.monotonic()
                share = f" ({100 * sent / size:.0f}%)" if size else ""
                say(f"{conn.node.url}: {sent / 1e6:.0f} MB sent{share}")
    except BrokenPipeError:
        pass  # the loader ended early: its exit code and words say why
    finally:
        load.stdin.close()
    save.wait()
    load.wait()
    for reader in readers:
        reader.join(timeout=10)
    words = {k: v.decode(errors="replace").strip() for k, v in said.items()}
    return sent, words.get("save", ""), words.get("load", "")
