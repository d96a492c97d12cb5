"""Cold start of a detached container, interleaved: (a) docker run -d CLI, (b) docker create
CLI + API start, (c) API create + start; minimal container and the hardened kernel one
(with the supervisor's --lifeline; time until the lifeline connects too)."""
from __future__ import annotations
import os, statistics, subprocess, sys, time, tempfile, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from jupyter_docker_kernel import engine as engine_mod, hardening, lifeline
from jupyter_docker_kernel.engine import Engine, EngineApi
from jupyter_docker_kernel.settings import DEFAULT_IMAGE, KernelSettings
from tests.test_lifeline import lifeline_create_args, launch

N = int(sys.argv[1]) if len(sys.argv) > 1 else 12
eng, api = Engine(), EngineApi()
LABEL = {engine_mod.LABEL_KERNEL_ID: "h4-measure", engine_mod.LABEL_LAUNCHER_PID: str(os.getpid())}
lab = [x for k, v in LABEL.items() for x in ("--label", f"{k}={v}")]
MIN_ARGS = ["--rm", "--network", "none", "--entrypoint=", *lab, DEFAULT_IMAGE, "sleep", "600"]
BODY = {"Image": DEFAULT_IMAGE, "Entrypoint": [], "Cmd": ["sleep", "600"], "Labels": LABEL,
        "HostConfig": {"NetworkMode": "none", "AutoRemove": True}}
root = Path(tempfile.mkdtemp(prefix="h4m-"))
settings = KernelSettings(image=DEFAULT_IMAGE, workdir="none")

def t(): return time.perf_counter()

def min_run():
    a = t(); cid = eng.run(["run", "-d", *MIN_ARGS]).stdout.strip(); b = t()
    return cid, {"total": b - a}

def min_create_cli():
    a = t(); cid = eng.run(["create", *MIN_ARGS]).stdout.strip(); b = t(); api.start(cid); c = t()
    return cid, {"create": b - a, "start": c - b, "total": c - a}

def min_create_api():
    a = t(); cid = api.create(BODY); b = t(); api.start(cid); c = t()
    return cid, {"create": b - a, "start": c - b, "total": c - a}

k = [0]
def hard_args():
    k[0] += 1
    rt = root / f"rt{k[0]}"; rt.mkdir(mode=0o700)
    uid, gid = (int(x) for x in hardening.kernel_user(settings, launch(rt)).split(":"))
    os.chown(rt, uid, gid)
    return rt, lifeline_create_args(settings, rt, 10.0)

def hold(rt, a):
    sock = lifeline.connect(str(rt / lifeline.LIFELINE_SOCKET), 10)
    sock.sendall(lifeline.claim_line()); c = t(); sock.close(); return c - a

def hard_run():
    rt, args = hard_args()
    args = ["run", "--detach", *args[1:]]
    a = t(); cid = eng.run(args).stdout.strip(); b = t()
    return cid, {"total": b - a, "lifeline": hold(rt, a)}

def hard_create_cli():
    rt, args = hard_args()
    a = t(); cid = eng.run(args).stdout.strip(); b = t(); api.start(cid); c = t()
    return cid, {"create": b - a, "start": c - b, "total": c - a, "lifeline": hold(rt, a)}

cases = {"min: (a) docker run -d": min_run, "min: (b) docker create + API start": min_create_cli,
         "min: (c) API create + start": min_create_api, "kernel: (a) docker run -d": hard_run,
         "kernel: (b) docker create + API start": hard_create_cli}
res = {name: [] for name in cases}
for f in cases.values(): api.remove(f()[0])  # warm up
for i in range(N):
    for name, f in cases.items():
        cid, r = f(); res[name].append(r); api.remove(cid)
        time.sleep(0.3)
for name, rows in res.items():
    keys = rows[0].keys()
    print(f"{name:40s} " + "  ".join(f"{key} {statistics.median(r[key] for r in rows)*1000:6.0f} ms" for key in keys))
