"""The baseline: another source tree measured in the same run, in a worker process.

`scripts/bench --baseline PATH_OR_REV` compares the tree under test ("new") with another
("base": a directory holding a checkout, or a git revision that is checked out into a
temporary `git worktree`). A Jupyter client can import only one `jupyter_docker_kernel`,
and the provisioner runs inside the client, so each tree gets a process of its own: the
new tree is this process; the base tree is a worker, `python -m benchmarks.run --worker`
started with the base tree's own Python (its `.venv`, made with its `scripts/dev-env` when
missing). run.py sends it one operation at a time (a JSON line: an OPS name and its
arguments) and interleaves them with its own, so both trees see the same machine load.

The base tree's kernelspecs are written by the base tree's `setup` (run in the worker), so
their argv names the base venv's Python and their provisioner resolves to the base tree's
module: the launcher, the provisioner and all their children run the base tree's code.
Both trees use the same image (the recipe is shared) and the same runtime directory; run.py
gives every spec an env value naming its tree, which keeps their warm pools apart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: This checkout: the worker imports `benchmarks` from here and the package from its tree.
REPO = Path(__file__).resolve().parent.parent


class OpError(RuntimeError):
    """One operation failed in its tree (a kernel that did not start, ...); run.py leaves
    that sample out, says so, and goes on."""


@dataclass
class Baseline:
    """A source tree to compare with: where it is, which commit, and its Python."""

    source: Path
    commit: str
    python: str
    temporary: bool  # a worktree made for this run, removed by cleanup()

    def cleanup(self) -> None:
        if self.temporary:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(self.source)],
                check=False,
                capture_output=True,
            )
            shutil.rmtree(self.source.parent, ignore_errors=True)


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def prepare_baseline(spec: str, python: str | None) -> Baseline:
    """The tree named by `spec` (a directory, else a git revision of this repository),
    with a Python that imports that tree's package. Raises SystemExit with what to do."""
    temporary = False
    if Path(spec).is_dir():
        source = Path(spec).resolve()
    else:
        try:
            commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
        except subprocess.CalledProcessError:
            raise SystemExit(
                f"--baseline {spec!r} is neither a directory nor a git revision of {REPO}. "
                "Nothing was measured. Pass a checkout's path or a commit."
            ) from None
        source = Path(tempfile.mkdtemp(prefix="jdk-bench-base-")) / "tree"
        _git("worktree", "add", "--detach", str(source), commit)
        temporary = True
    if not (source / "src" / "jupyter_docker_kernel").is_dir():
        raise SystemExit(
            f"--baseline {source} holds no src/jupyter_docker_kernel. Nothing was measured. "
            "Pass a checkout of this project."
        )
    if python is None:
        python = str(source / ".venv" / "bin" / "python")
        if not Path(python).exists():
            print(f"bench: making the baseline's venv ({source}/scripts/dev-env)", file=sys.stderr)
            subprocess.run([str(source / "scripts" / "dev-env")], cwd=source, check=True)
    # Asked from "/" so that no checkout in the cwd can answer for the real one.
    found = subprocess.run(
        [python, "-c", "import jupyter_docker_kernel as m; print(m.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(source):
        raise SystemExit(
            f"The baseline's Python {python} imports jupyter_docker_kernel from {found!r}, "
            f"not from {source}. Nothing was measured. Run {source}/scripts/dev-env, or pass "
            "--baseline-python with a Python that has that tree installed (pip install -e)."
        )
    try:
        commit = _git("rev-parse", "HEAD", cwd=source)
    except subprocess.CalledProcessError:
        commit = "unknown"
    return Baseline(source, commit, python, temporary)


class Tree:
    """One source tree's measuring process: this one (worker None) or a worker."""

    def __init__(self, name: str, worker: subprocess.Popen[str] | None = None) -> None:
        self.name = name
        self.worker = worker

    @property
    def suffix(self) -> str:
        """What the table appends to a kernel's label: "" for the tree under test."""
        return "" if self.worker is None else f"@{self.name}"

    @classmethod
    def spawn(cls, name: str, python: str, env: dict[str, str]) -> Tree:
        """Start a worker with `python`, which must import its tree's package."""
        proc = subprocess.Popen(
            [python, "-m", "benchmarks.run", "--worker"],
            cwd=REPO,  # `-m` puts the cwd first on sys.path: benchmarks from this checkout
            env=os.environ | env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return cls(name, proc)

    def call(self, op: str, **kwargs: Any) -> Any:
        """Run OPS[op](**kwargs) in this tree's process; its result. Raises OpError when
        the operation failed (the worker still serves) and RuntimeError when the worker
        died."""
        if self.worker is None:
            from benchmarks.run import OPS

            try:
                return OPS[op](**kwargs)
            except Exception as exc:
                traceback.print_exc()
                raise OpError(f"{op} failed in the {self.name} tree: {exc!r}") from exc
        assert self.worker.stdin is not None
        assert self.worker.stdout is not None
        self.worker.stdin.write(json.dumps({"op": op, "kwargs": kwargs}) + "\n")
        self.worker.stdin.flush()
        line = self.worker.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} tree's worker died during {op} (see above)")
        reply = json.loads(line)
        if "error" in reply:
            raise OpError(f"{op} failed in the {self.name} tree: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.worker is not None:
            assert self.worker.stdin is not None
            self.worker.stdin.close()  # the worker's loop ends at EOF
            try:
                self.worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
            if self.worker.stdout is not None:
                self.worker.stdout.close()


def serve() -> int:
    """The worker's loop: one JSON request per line in, one JSON reply per line out.

    The protocol gets private copies of stdin and stdout; fd 0 becomes /dev/null and fd 1
    stderr, so that nothing the kernels' processes inherit can read or write the protocol.
    """
    from benchmarks.run import OPS

    requests: IO[str] = os.fdopen(os.dup(0), "r")
    replies: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    for line in requests:
        request = json.loads(line)
        try:
            reply = {"result": OPS[request["op"]](**request["kwargs"])}
        except Exception as exc:  # reported to run.py, which stops the run
            traceback.print_exc()
            reply = {"error": repr(exc)}
        replies.write(json.dumps(reply) + "\n")
    return 0
