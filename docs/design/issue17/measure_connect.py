"""API start returned -> lifeline connected (the supervisor has started and bound it), N per
runtime, hardened kernel args, interleaved."""
from __future__ import annotations
import os, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from jupyter_docker_kernel import hardening, lifeline
from jupyter_docker_kernel.engine import Engine, podman_socket
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings
from tests.test_lifeline import launch, lifeline_create_args, podman_settings

N = int(sys.argv[1])
root = Path(tempfile.mkdtemp(prefix="h4c-"))
pe = Engine(host=podman_socket())
targets = [("runc", Engine(), KernelSettings(image=DEFAULT_IMAGE, workdir="none")),
           ("runsc", Engine(), KernelSettings(image=DEFAULT_IMAGE, workdir="none", runtime="runsc")),
           ("podman", pe, podman_settings(pe))]
res = {name: [] for name, _, _ in targets}
k = 0
for i in range(N):
    for name, eng, settings in targets:
        k += 1
        rt = root / f"rt{k}"; rt.mkdir(mode=0o700)
        uid, gid = (int(x) for x in hardening.kernel_user(settings, launch(rt)).split(":"))
        os.chown(rt, uid, gid)
        api = eng.api()
        cid = eng.run(lifeline_create_args(settings, rt, 10.0)).stdout.strip()
        a = time.perf_counter(); api.start(cid); b = time.perf_counter()
        sock = lifeline.connect(str(rt / lifeline.LIFELINE_SOCKET)); c = time.perf_counter()
        sock.close()
        res[name].append((b - a, c - b))
        api.remove(cid)
for name, xs in res.items():
    print(f"{name}: API start {statistics.median(x[0] for x in xs)*1000:.0f} ms, then lifeline "
          f"connected after {statistics.median(x[1] for x in xs)*1000:.0f} ms (max {max(x[1] for x in xs)*1000:.0f}; n={len(xs)})")
