"""Keep OpenSSL and the compression libraries out of the resident helper (issue 17).

The helper (helper.py, run as `python -m jupyter_docker_kernel.helper` or thin.spawn_argv's
`-c` form) is the one process per user that hosts every argv kernel, so its resident
memory is a kernel's whole plumbing cost when one kernel runs. Of its ~26 MiB RSS, about
5 MiB came from modules it imports without ever using them:

- `ssl` (its Python module and libssl/libcrypto): asyncio imports it at its own import,
  for TLS transports, and http.client for HTTPSConnection. The helper speaks only over
  unix sockets: its engine API is the local socket (engine.EngineApi; a tcp:// engine
  with TLS goes through the docker CLI, another process).
- `_hashlib` (libcrypto again): rundir's `secrets` imports hmac, which imports hashlib;
  without `_hashlib`, hashlib uses its built-in sha256/sha512/blake2, all we hash with.
- `bz2`, `lzma`: shutil imports them at its own import for its archive formats, which
  nothing here uses; tarfile imports them when asked for such a stream.

So when this module is imported first by the helper's own `__main__` (helper.py), it
marks them missing in sys.modules (`None`: an import of them raises ImportError, which
asyncio, http.client, hashlib and shutil all handle by leaving the feature out) until
helper.main has imported everything it runs (`release()`). After that an import of them
loads the real module: a Kubernetes kernel's client (urllib3) gets its ssl. Imported
anywhere else (a test, hosting.py in a Jupyter server), this does nothing.
"""

from __future__ import annotations

import sys

#: The modules kept out while the helper imports what it runs.
KEPT_OUT = ("ssl", "_hashlib", "bz2", "lzma")
#: The helper's module name, as runpy gives it to the running __main__.
HELPER_MODULE = "jupyter_docker_kernel.helper"


def in_helper() -> bool:
    """Whether this process is the resident helper starting: __main__ runs helper.py (both
    `-m` and runpy.run_module set its __spec__ before they run its code)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == HELPER_MODULE


def keep_out(names: tuple[str, ...] = KEPT_OUT) -> list[str]:
    """Mark `names` missing (sys.modules[name] = None) where none is imported yet; returns
    the ones marked, for release()."""
    marked = [name for name in names if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]  # None: "import raises"
    return marked


def release(marked: list[str]) -> None:
    """Undo keep_out(): later imports of those names load the real modules."""
    for name in marked:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


#: What keep_out() marked at this module's import in the helper (helper.main releases it).
MARKED: list[str] = keep_out() if in_helper() else []
