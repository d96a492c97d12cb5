"""SIGKILL of the lifeline's holder -> container exit (engine's wait returns), N per runtime."""
from __future__ import annotations
import os, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from jupyter_docker_kernel import hardening, lifeline
from jupyter_docker_kernel.engine import Engine, podman_socket
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings
from tests.test_lifeline import hold, launch, lifeline_create_args, podman_settings, wait_in_thread

N = int(sys.argv[1])
root = Path(tempfile.mkdtemp(prefix="h4k-"))
targets = [("runc", Engine(), KernelSettings(image=DEFAULT_IMAGE, workdir="none")),
           ("runsc", Engine(), KernelSettings(image=DEFAULT_IMAGE, workdir="none", runtime="runsc"))]
pe = Engine(host=podman_socket()); targets.append(("podman", pe, podman_settings(pe)))
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
        api.start(cid)
        holder = hold(rt / lifeline.LIFELINE_SOCKET)
        thread, result = wait_in_thread(api, cid)
        killed = time.monotonic(); holder.kill(); holder.wait()
        thread.join(15)
        res[name].append(result[1] - killed)
        api.remove(cid)
for name, xs in res.items():
    print(f"{name}: median {statistics.median(xs)*1000:.0f} ms, max {max(xs)*1000:.0f} ms (n={len(xs)})")
